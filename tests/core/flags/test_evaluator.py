"""The definitions through the real flagd evaluator (``openfeature-flagd-core``, in process):
sticky assignment as the weight rises, segment rules, a clean load, flagd's schema."""

from __future__ import annotations

import json
import logging

import pytest
from flag_plans import plan, users

from mlrollout.errors import ProviderError
from mlrollout.flags import FlagEvaluator, evaluate, flag_definition, flag_json

pytestmark = pytest.mark.usefixtures("flagd")

KEY = "churn-model"
STEPS = [0, 0.5, 1, 5, 10, 25, 33.33, 50, 75, 99.99, 100]


def assignments(definition: dict, count: int = 4000) -> dict[str, str]:
    base, evaluator = users(count), FlagEvaluator(definition)
    return {
        uid: evaluator.variant(KEY, uid, attributes)
        for uid, attributes in (base.user(i) for i in range(count))
    }


def test_raising_the_weight_never_moves_a_user_off_the_candidate() -> None:
    no_segments = plan(segments=None)
    before: set[str] = set()
    for weight in STEPS:
        doc = flag_definition(no_segments, {"v7": weight}, baseline="v6", candidate="v7")
        got = assignments(doc)
        on = {uid for uid, variant in got.items() if variant == "v7"}
        assert before <= on, f"{len(before - on)} users left the candidate at {weight} %"
        assert abs(len(on) / len(got) - weight / 100) < 0.03  # 4000 users: ±2.7 sd at 50 %
        before = on
    assert len(before) == 4000


def test_an_order_that_flipped_between_versions_would_move_users_off_the_candidate() -> None:
    """Why the order is fixed: the same weights with the order flipped reshuffle the users."""
    doc = flag_definition(plan(segments=None), {"v7": 25}, baseline="v6", candidate="v7")
    on_25 = {u for u, v in assignments(doc).items() if v == "v7"}
    doc = flag_definition(plan(segments=None), {"v7": 50}, baseline="v6", candidate="v7")
    rule = doc["flags"][KEY]["targeting"]["fractional"]
    rule.reverse()  # [["v6", 5000], ["v7", 5000]]
    on_50_flipped = {u for u, v in assignments(doc).items() if v == "v7"}
    assert len(on_25 - on_50_flipped) > 100  # users the flip took off the candidate


def test_segments_are_sticky_too() -> None:
    before: set[str] = set()
    for weight in STEPS[1:-1]:
        got = assignments(flag_definition(plan(), {"v7": weight}, baseline="v6", candidate="v7"))
        on = {uid for uid, variant in got.items() if variant == "v7"}
        assert before <= on
        before = on


def test_staff_get_the_candidate_at_every_step_and_outsiders_the_baseline() -> None:
    base = users()
    for weight in STEPS:
        doc = flag_definition(plan(), {"v7": weight}, baseline="v6", candidate="v7", everyone=False)
        got = assignments(doc)
        eu = {"eu-west-1", "eu-central-1"}
        for i in range(base.count):
            uid, attributes = base.user(i)
            if attributes["user_type"] == "employee":
                assert got[uid] == "v7", (weight, uid)
            elif attributes["region"] not in eu:
                assert got[uid] == "v6", (weight, uid)
        eu_customers = [
            got[uid]
            for uid, a in (base.user(i) for i in range(base.count))
            if a["user_type"] == "customer" and a["region"] in eu
        ]
        share = eu_customers.count("v7") / len(eu_customers)
        assert abs(share - weight / 100) < 0.05, (weight, share)  # ~1000 eu customers


def test_a_rollback_sends_staff_to_the_baseline_too_and_a_promotion_everyone_onward() -> None:
    doc = flag_definition(plan(), {"v6": 100}, baseline="v6", candidate="v7")
    assert set(assignments(doc).values()) == {"v6"}
    doc = flag_definition(plan(), {"v7": 100}, baseline="v6", candidate="v7")
    assert set(assignments(doc).values()) == {"v7"}


def test_attributes_the_application_does_not_send_fall_to_the_baseline() -> None:
    doc = flag_definition(plan(), {"v7": 100}, baseline="v6", candidate="v7", everyone=False)
    assert evaluate(doc, KEY, "user-1", {}) == "v6"
    assert evaluate(doc, KEY, "user-1", {"user_type": "employee"}) == "v7"
    assert evaluate(doc, KEY, "user-1", {"region": "eu-west-1"}) == "v7"


def test_the_file_loads_in_the_evaluator_without_a_warning(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="openfeature")
    for weight in STEPS:
        for p in (plan(), plan(segments=None)):
            text = flag_json(flag_definition(p, {"v7": weight}, baseline="v6", candidate="v7"))
            evaluator = FlagEvaluator(json.loads(text))
            for i in range(50):
                evaluator.variant(KEY, f"user-{i:06d}", {"region": "eu-west-1"})
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]


def test_the_evaluator_does_not_change_the_definition_it_is_given() -> None:
    doc = flag_definition(plan(), {"v7": 5}, baseline="v6", candidate="v7")
    before = flag_json(doc)
    FlagEvaluator(doc).variant(KEY, "user-000001", {})
    assert flag_json(doc) == before


def test_errors_name_the_flag_and_the_fix() -> None:
    doc = flag_definition(plan(), {"v7": 5}, baseline="v6", candidate="v7")
    with pytest.raises(ProviderError, match="flag 'other' cannot be evaluated") as err:
        evaluate(doc, "other", "user-1", {})
    assert "flags.key" in (err.value.hint or "")
    with pytest.raises(ProviderError, match="rejects the flag definition"):
        FlagEvaluator({"flags": {KEY: {"state": "MAYBE", "variants": {"a": "a"}}}})
