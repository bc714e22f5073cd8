"""Strategy modules: the engine runs exactly the registered ones, and what validate, preview and
providers call "runs today" is the same set."""

from __future__ import annotations

from mlrollout.contracts import ENGINE_STRATEGIES
from mlrollout.engine.strategies import STRATEGIES, strategy_for
from mlrollout.plan.loader import parse_plan
from mlrollout.plan.timeline import expand_steps

PLAN = """
version: 1
name: s
target: {provider: local, endpoint: ep}
candidate: {name: v2}
strategy: STRATEGY
analysis:
  gates: [{name: errors, metric: error_rate, vs_baseline: {max_increase: 50%}}]
sandbox:
  variants:
    v1: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}
    v2: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}
"""


def plan(strategy: str):  # type: ignore[no-untyped-def]
    return parse_plan(PLAN.replace("STRATEGY", strategy), "s.yaml").plan


def test_the_engine_runs_the_registered_strategy_modules_and_nothing_else() -> None:
    assert frozenset(STRATEGIES) == ENGINE_STRATEGIES


def test_linear_walks_increments_below_100_each_judged() -> None:
    steps = expand_steps(plan("{type: linear, step: 30, every: 5m}"))
    assert [(s.kind, s.weight) for s in steps] == [
        ("weight", 30.0),
        ("analyze", None),
        ("weight", 60.0),
        ("analyze", None),
        ("weight", 90.0),
        ("analyze", None),
    ]
    assert all(s.window is not None and s.window.max == 300 for s in steps if s.kind == "analyze")


def test_a_split_strategy_judges_concurrently_only_while_the_baseline_serves() -> None:
    canary = strategy_for(plan("{type: canary, steps: [{weight: 10}, {analyze: 5m}]}"))
    assert canary is not None and canary.name == "canary"
    assert canary.weights(10, "v2", "v1") == {"v2": 10, "v1": 90}
    assert canary.comparison({"v1": 90.0, "v2": 10.0}, "v1") == "concurrent"
    assert canary.comparison({"v1": 0.0, "v2": 100.0}, "v1") == "absolute"


def test_every_strategy_of_the_format_has_its_module() -> None:
    from typing import get_args

    from mlrollout.contracts import ENGINE_STRATEGIES
    from mlrollout.plan.model import Strategy

    union = get_args(get_args(Strategy)[0])
    types = {get_args(model.model_fields["type"].annotation)[0] for model in union}
    assert types == set(STRATEGIES) == ENGINE_STRATEGIES
    canary = plan("{type: canary, steps: [{weight: 10}]}")
    assert strategy_for(canary) is STRATEGIES["canary"]


def test_blue_green_judges_against_history_once_blue_serves_no_one() -> None:
    blue_green = plan("{type: blue_green, preview: 10, pre_promotion: 5m, post_promotion: 5m}")
    strategy = strategy_for(blue_green)
    assert strategy is STRATEGIES["blue_green"]
    assert strategy.comparison({"v1": 90.0, "v2": 10.0}, "v1") == "concurrent"
    assert strategy.comparison({"v1": 0.0, "v2": 100.0}, "v1") == "historical"
    assert [s.phase for s in expand_steps(blue_green)] == [
        "pre-promotion",
        "pre-promotion",
        "switch",
        "post-promotion",
    ]
