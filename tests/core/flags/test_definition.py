"""The flagd flag definition a step writes: its shape, its determinism, its refusals."""

from __future__ import annotations

import hashlib
import json

import pytest
from flag_plans import plan

from mlrollout.flags import BASIS, digest, flag_definition, flag_json

STAFF = {"==": [{"var": "user_type"}, "employee"]}
EU = {"in": [{"var": "region"}, ["eu-central-1", "eu-west-1"]]}


def flag(doc: dict) -> dict:
    (only,) = doc["flags"].values()
    return only


def test_one_flag_named_by_the_plan_with_the_two_variants() -> None:
    doc = flag_definition(plan(), {"v6": 75, "v7": 25}, baseline="v6", candidate="v7")
    assert doc["$schema"] == "https://flagd.dev/schema/v0/flags.json"
    assert list(doc["flags"]) == ["churn-model"]
    f = flag(doc)
    assert f["state"] == "ENABLED"
    assert f["variants"] == {"v6": "v6", "v7": "v7"}  # each variant's value is its name
    assert f["defaultVariant"] == "v6"


def test_segments_become_if_branches_in_order_then_the_baseline() -> None:
    f = flag(flag_definition(plan(), {"v6": 75, "v7": 25}, baseline="v6", candidate="v7"))
    assert f["targeting"] == {
        "if": [
            STAFF,
            "v7",  # weight 100: plain, not a degenerate fractional
            EU,
            {"fractional": [["v7", 2500], ["v6", 7500]]},  # the step's 25 %, candidate first
            "v6",  # outside every segment
        ]
    }


def test_fractional_weights_are_basis_points_summing_to_the_same_total() -> None:
    for weight, points in [(0.01, 1), (1.5, 150), (33.333, 3333), (99.99, 9999)]:
        f = flag(
            flag_definition(plan(segments=None), {"v7": weight}, baseline="v6", candidate="v7")
        )
        assert f["targeting"] == {"fractional": [["v7", points], ["v6", BASIS - points]]}


def test_a_fixed_weight_segment_splits_by_its_own_weight() -> None:
    segments = [
        {"name": "beta", "match": {"tier": ["pro", "team"], "region": "eu-west-1"}, "weight": 50}
    ]
    f = flag(flag_definition(plan(segments=segments), {"v7": 5}, baseline="v6", candidate="v7"))
    condition = {
        "and": [
            {"==": [{"var": "region"}, "eu-west-1"]},
            {"in": [{"var": "tier"}, ["pro", "team"]]},
        ]
    }
    assert f["targeting"] == {"if": [condition, {"fractional": [["v7", 5000], ["v6", 5000]]}, "v6"]}


@pytest.mark.parametrize("weights", [{"v7": 0}, {"v6": 100}, {"v6": 100, "v7": 0}, {"v7": 0.00001}])
def test_nobody_without_segments_is_a_static_flag_on_the_baseline(weights) -> None:
    f = flag(flag_definition(plan(segments=None), weights, baseline="v6", candidate="v7"))
    assert f["defaultVariant"] == "v6" and "targeting" not in f


def test_everyone_without_segments_is_a_static_flag_on_the_candidate() -> None:
    f = flag(flag_definition(plan(segments=None), {"v7": 100}, baseline="v6", candidate="v7"))
    assert f["defaultVariant"] == "v7" and "targeting" not in f


def test_segments_hold_at_zero_and_at_one_hundred_when_asked() -> None:
    def at(weight: float) -> dict:
        return flag(
            flag_definition(plan(), {"v7": weight}, baseline="v6", candidate="v7", everyone=False)
        )

    assert at(0)["targeting"] == {"if": [STAFF, "v7", EU, "v6", "v6"]}
    assert at(100)["targeting"] == {"if": [STAFF, "v7", EU, "v7", "v6"]}


def test_segments_that_all_keep_the_baseline_are_a_static_flag() -> None:
    segments = [{"name": "eu", "match": {"region": "eu-west-1"}}]
    f = flag(flag_definition(plan(segments=segments), {"v7": 0.001}, baseline="v6", candidate="v7"))
    assert f["defaultVariant"] == "v6" and "targeting" not in f


def test_everyone_drops_the_segments_at_any_weight() -> None:
    f = flag(flag_definition(plan(), {"v7": 25}, baseline="v6", candidate="v7", everyone=True))
    assert f["targeting"] == {"fractional": [["v7", 2500], ["v6", 7500]]}


def test_zero_and_one_hundred_are_nobody_and_everyone_segments_aside() -> None:
    # the end of a rollout: a rollback must not leave staff (weight 100) on the candidate
    rolled_back = flag(flag_definition(plan(), {"v6": 100}, baseline="v6", candidate="v7"))
    assert rolled_back["defaultVariant"] == "v6" and "targeting" not in rolled_back
    promoted = flag(flag_definition(plan(), {"v7": 100}, baseline="v6", candidate="v7"))
    assert promoted["defaultVariant"] == "v7" and "targeting" not in promoted


def test_same_input_gives_byte_identical_json() -> None:
    a = flag_json(flag_definition(plan(), {"v7": 12.5}, baseline="v6", candidate="v7"))
    b = flag_json(flag_definition(plan(), {"v6": 87.5, "v7": 12.5}, baseline="v6", candidate="v7"))
    assert a == b and a.endswith(b"}\n")
    assert json.loads(a) == flag_definition(plan(), {"v7": 12.5}, baseline="v6", candidate="v7")
    assert a.index(b'"$schema"') < a.index(b'"flags"')  # sorted keys
    doc = json.loads(a)
    assert digest(doc) == hashlib.sha256(a).hexdigest()
    other = flag_definition(plan(), {"v7": 12.6}, baseline="v6", candidate="v7")
    assert digest(other) != digest(doc)


@pytest.mark.parametrize(
    ("weights", "baseline", "candidate", "message"),
    [
        ({"v7": 101}, "v6", "v7", "from 0 to 100"),
        ({"v7": float("nan")}, "v6", "v7", "from 0 to 100"),
        ({"v8": 10, "v7": 10}, "v6", "v7", "not to 'v8'"),
        ({"v7": 10}, "v7", "v7", "two variants"),
    ],
)
def test_bad_weights_are_refused(weights, baseline, candidate, message) -> None:
    with pytest.raises(ValueError, match=message):
        flag_definition(plan(), weights, baseline=baseline, candidate=candidate)


def test_a_plan_without_flags_has_no_definition() -> None:
    with pytest.raises(ValueError, match="no flags section"):
        flag_definition(plan(flags=None, segments=None), {"v7": 5}, baseline="v6", candidate="v7")
