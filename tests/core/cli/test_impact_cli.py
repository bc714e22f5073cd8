"""``mlrollout impact ID`` and ``mlrollout plan backtest PLAN`` end to end on the sandbox: a real
rollout recorded in a SQLite state store, then the read-only commands on it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Cli = Callable[..., Any]  # conftest's ``cli`` fixture: cli(*args) -> Result(code, out, err)

PLAN = """
version: 1
name: conversion lift
target: {provider: local, endpoint: shop}
candidate: {name: v2}
strategy:
  type: canary
  steps:
    - weight: 10
    - analyze: 5m
    - weight: 50
    - analyze: 5m
analysis:
  interval: 30s
  gates:
    - {name: errors, metric: error_rate, vs_baseline: {max_increase: 50%}}
    - name: conversion
      metric: custom
      query: {metric: conversion}
      vs_baseline: {max_decrease: 10%}
sandbox:
  seed: 7
  rps: {base: 50, daily_swing: 3}
  variants:
    v1: {error_rate: 0.01, custom: {conversion: 0.10}}
    v2: {error_rate: 0.01, custom: {conversion: 0.103}}  # the release converts 3 % better
"""


@pytest.fixture
def rollout(tmp_path: Path, state: str) -> tuple[str, Path]:
    """The plan run to its end in ``state`` on a virtual clock from a fixed instant (the
    history's hours then fall on the same hours of the day in every run)."""
    from mlrollout.clock import VirtualClock
    from mlrollout.engine.runner import Runner
    from mlrollout.plan.loader import parse_plan
    from mlrollout.state.open import open_store

    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    store = open_store(state)
    try:
        runner = Runner(store, holder="test")
        record = runner.create(parse_plan(PLAN, str(plan)))
        outcome = runner.drive(record.id, clock=VirtualClock(1_800_000_000.0))
        assert outcome.phase.value == "succeeded", outcome
    finally:
        store.close()
    return record.id, plan


def test_impact_finds_the_known_shift_and_reports_json(
    cli: Cli, state: str, rollout: tuple[str, Path]
) -> None:
    rollout_id, _ = rollout
    result = cli("--state", state, "impact", rollout_id[:12], "-m", "conversion", "-o", "json")
    assert result.code == 0, result.both
    data = json.loads(result.out)
    assert data["outcome"] == "promoted" and data["rollout"] == rollout_id
    [conversion] = data["metrics"]
    effect = conversion["effect"]
    assert effect["lower"] <= 0.003 <= effect["upper"] and conversion["significant"]
    assert conversion["seasonality"] == "hour-of-day"
    assert conversion["before"] == conversion["after"] == 168
    assert conversion["placebo"]["flagged"] is False
    assert any(a.startswith("observational") for a in conversion["assumptions"])


def test_impact_text_teaches_what_it_found_and_assumed(
    cli: Cli, state: str, rollout: tuple[str, Path]
) -> None:
    rollout_id, _ = rollout
    result = cli("--state", state, "impact", rollout_id, "--before", "3d", "--after", "3d")
    assert result.code == 0, result.both
    out = result.out
    assert "conversion: +0.2" in out or "conversion: +0.3" in out
    assert "the rollout raised it" in out
    assert "errors:" in out and "no change told apart from noise" in out
    assert "placebo: a made-up change" in out and "assumptions:" in out
    assert "observational: a concurrent change elsewhere" in out


def test_impact_with_a_control_endpoint_is_a_difference_in_differences(
    cli: Cli, state: str, rollout: tuple[str, Path]
) -> None:
    rollout_id, _ = rollout
    args = ("--state", state, "impact", rollout_id, "-m", "conversion", "--after", "3d")
    result = cli(*args, "--control", "endpoint=shop-eu", "-o", "json")
    assert result.code == 0, result.both
    [conversion] = json.loads(result.out)["metrics"]
    assert conversion["control"] == "endpoint=shop-eu"
    assert conversion["effect"]["lower"] <= 0.003 <= conversion["effect"]["upper"]
    bad = cli(*args, "--control", "v1")
    assert bad.code == 2 and "--control endpoint=NAME" in bad.err


def test_impact_refuses_what_it_cannot_read_with_a_clear_line(
    cli: Cli, state: str, rollout: tuple[str, Path]
) -> None:
    rollout_id, _ = rollout
    unknown = cli("--state", state, "impact", rollout_id, "-m", "nope")
    assert unknown.code == 2
    assert "no gate 'nope' (its gates: errors, conversion)" in unknown.err
    assert "Traceback" not in unknown.both
    missing = cli("--state", state, "impact", "no-such-rollout")
    assert missing.code == 2 and "no-such-rollout" in missing.err
    bad = cli("--state", state, "impact", rollout_id, "--before", "7")
    assert bad.code == 2 and "duration" in bad.err


def test_plan_backtest_reports_the_false_rollback_rate(
    cli: Cli, tmp_path: Path, state: str
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    result = cli(
        "--state", state, "plan", "backtest", plan, "--from", "now-2d", "--to", "now", "-o", "json"
    )
    assert result.code == 0, result.both
    data = json.loads(result.out)
    assert data["variant"] == "v1" and data["gates"] == ["errors", "conversion"]
    assert data["rollouts"] == data["rolled_back"] + data["inconclusive"] + data["passed"] > 50
    low, high = data["false_rollback_interval95"]
    assert low <= data["false_rollback_rate"] <= high and data["false_rollback_rate"] <= 0.05
    text = cli("plan", "backtest", plan, "--from", "now-2d", "--to", "now")
    assert text.code == 0, text.both
    assert "simulated rollouts:" in text.out and "false-rollback rate" in text.out
    assert "every rollback here is false" in text.out
    assert not (tmp_path / "state").exists()  # read-only: no state store created
    # the plan's preview cites the saved backtest, and notices when the plan has changed since
    saved = tmp_path / "backtest.json"
    saved.write_text(result.out)
    cited = cli("plan", "preview", plan, "--backtest", saved)
    assert cited.code == 0, cited.both
    rate = f"{data['false_rollback_rate']:.2%}"
    runs = data["rollouts"]
    assert f"backtest: {rate} of {runs} simulated rollouts on 2d of v1's own" in cited.out
    assert "another version" not in cited.out
    plan.write_text(PLAN.replace("max_increase: 50%", "max_increase: 60%"))
    changed = cli("plan", "preview", plan, "--backtest", saved)
    assert "it was run on another version of this plan" in changed.out
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    refused = cli("plan", "preview", plan, "--backtest", broken)
    assert refused.code == 2 and "not a backtest's JSON" in refused.err


def test_plan_backtest_refuses_bad_instants_and_short_spans(cli: Cli, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    bad = cli("plan", "backtest", plan, "--from", "last tuesday")
    assert bad.code == 2 and "cannot read the instant 'last tuesday'" in bad.err
    short = cli("plan", "backtest", plan, "--from", "now-1d", "--to", "now")
    assert short.code == 2 and "one simulated rollout needs" in short.err
    backwards = cli("plan", "backtest", plan, "--from", "now", "--to", "now-1d")
    assert backwards.code == 2 and "is not after" in backwards.err
