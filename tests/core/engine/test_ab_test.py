"""The A/B test on the sandbox, through the real runner: the split is set, the winner test on
the business metric decides (guardrails judged all along), and the winner is promoted — or the
baseline is kept when the candidate does not win, when no lift worth shipping is left, when a
guardrail fails, or when the test is still undecided at max_duration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sandbox_run import SandboxRun

from mlrollout.engine.events import LOOK_KINDS, EventKind
from mlrollout.errors import ExitCode, PlanError
from mlrollout.plan.loader import parse_plan
from mlrollout.plan.timeline import expand_steps

PLAN = (Path(__file__).parents[3] / "plans" / "local-ab-test.yaml").read_text()


def variant(**changes: str) -> str:
    text = PLAN
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


class Run(SandboxRun):
    endpoint_name = "churn-scoring"

    def winner_numbers(self) -> dict[str, Any]:
        looks = [e for e in self.store.events(self.record.id) if e.kind in LOOK_KINDS]
        gates = looks[-1].data["verdict"]["gates"]
        return next(g for g in gates if g["gate"] == "conversion")["numbers"]


def test_the_steps_set_the_split_judge_and_promote_the_winner():
    steps = expand_steps(parse_plan(PLAN, "p").plan)
    assert [s.describe() for s in steps] == [
        "a/b test: set candidate weight to 50%",
        "a/b test: analyze 0s-7d (adaptive)",
        "winner: set candidate weight to 100%",
    ]
    stop = expand_steps(parse_plan(variant(**{"then: promote_winner": "then: stop"}), "p").plan)
    assert [s.kind for s in stop] == ["weight", "analyze", "approve", "weight"]


def test_a_candidate_that_converts_better_wins_and_is_promoted(tmp_path):
    run = Run(tmp_path, PLAN)
    outcome = run.drive()
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    assert set(run.endpoint()["variants"]) == {"v8"}
    numbers = run.winner_numbers()
    assert numbers["lift_low"] > 0  # the always-valid interval of the lift is above 0
    # it stopped early: well before the week
    passed = next(e for e in run.store.events(run.record.id) if e.kind == EventKind.ANALYSIS_PASSED)
    assert passed.data["elapsed"] < 2 * 86400


def test_no_lift_worth_shipping_keeps_the_baseline(tmp_path):
    same = "custom: {conversion: 0.030}}"
    text = variant(**{"custom: {conversion: 0.033}}": same})
    run = Run(tmp_path, text)
    outcome = run.drive()
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    assert (outcome.state.reason or "").startswith("conversion:")
    assert set(run.endpoint()["variants"]) == {"v6"}
    assert run.winner_numbers()["lift_high"] < 0.02


def test_a_guardrail_failure_ends_the_test_with_the_baseline_kept(tmp_path):
    worse = "v8: {error_rate: 0.05,"
    run = Run(tmp_path, variant(**{"v8: {error_rate: 0.01,": worse}))
    outcome = run.drive()
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    assert (outcome.state.reason or "").startswith("errors:")
    assert set(run.endpoint()["variants"]) == {"v6"}


def test_undecided_at_max_duration_is_no_winner(tmp_path):
    short = variant(
        **{
            "max_duration: 7d": "max_duration: 20m",
            "custom: {conversion: 0.033}}": ("custom: {conversion: 0.0305}}"),
        }
    )
    run = Run(tmp_path, short)
    outcome = run.drive()
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    assert (outcome.state.reason or "").startswith("no winner after 20m")


def test_stop_keeps_the_split_for_a_human_after_a_win(tmp_path):
    run = Run(tmp_path, variant(**{"then: promote_winner": "then: stop"}))
    assert run.drive().exit_code == ExitCode.WAITING
    weights = {n: v["weight"] for n, v in run.endpoint()["variants"].items()}
    assert weights == {"v6": 50.0, "v8": 50.0}
    run.runner.command(run.record.id, "promote")
    assert run.drive().exit_code == ExitCode.OK
    assert set(run.endpoint()["variants"]) == {"v8"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metric: conversion\n": "metric: revenue\n"}, "no gate is named 'revenue'"),
        ({"      direction: decrease          # more conversions is better\n": ""}, "direction"),
        (
            {
                "      direction: decrease          # more conversions is better\n": (
                    "      direction: decrease\n      min: 0.01\n"
                )
            },
            "takes no max, min or vs_baseline",
        ),
        ({"min_effect: 2%": "min_effect: 0%"}, "above 0"),
        ({"split: 50": "split: 100"}, "below 100"),
    ],
)
def test_plan_validate_refuses_a_test_it_cannot_run(change, message):
    with pytest.raises(PlanError, match=message):
        parse_plan(variant(**change), "plan.yaml")
