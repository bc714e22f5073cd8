"""Hostile plans: whatever the input, loading ends in a plan or a PlanError, nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlrollout.errors import PlanError
from mlrollout.plan.loader import parse_plan

PLANS = sorted((Path(__file__).parents[3] / "plans").glob("local-*.yaml"))
BASE: dict[str, Any] = yaml.safe_load(PLANS[0].read_text())

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["10m", "-5m", "0s", "300ms", "25%", "0.5pp", "max", "1e309", "∞", "canary"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=12), inner, max_size=4),
    ),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


ALL_PATHS = [p for p in _paths(BASE) if p]


def _set(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    import copy

    data = copy.deepcopy(data)
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return data


def _load(text: str) -> None:
    try:
        parse_plan(text, "fuzz.yaml")
    except PlanError as exc:
        assert exc.issues, "a PlanError lists at least one problem"
        for issue in exc.issues:
            assert issue.file == "fuzz.yaml"
            assert issue.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(ALL_PATHS), value=values)
def test_any_value_anywhere_is_a_plan_or_a_plan_error(path: tuple[Any, ...], value: Any) -> None:
    _load(yaml.safe_dump(_set(BASE, path, value), allow_unicode=True))


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))
def test_arbitrary_text_is_a_plan_error(text: str) -> None:
    _load(text)


@settings(max_examples=150, deadline=None)
@given(cut=st.integers(min_value=0, max_value=2000), junk=st.text(max_size=20))
def test_truncated_or_spliced_plans(cut: int, junk: str) -> None:
    source = PLANS[0].read_text()
    cut = cut % (len(source) + 1)
    _load(source[:cut] + junk + source[cut:][: len(source) // 3])


def test_deep_nesting_and_alias_bombs_are_refused_quickly() -> None:
    for text in (
        "a: " + "[" * 5000 + "]" * 5000,
        "a: " + "{b: " * 2000 + "1" + "}" * 2000,
        'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n'
        + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
            for i in range(9)
        ),
    ):
        try:
            parse_plan(text, "bomb.yaml")
        except PlanError as exc:
            assert "nested" in str(exc) or "expands" in str(exc) or "not valid YAML" in str(exc)
        else:
            raise AssertionError("a hostile document was accepted")
