"""``plan backtest``'s replay (:mod:`mlrollout.plan.backtest`): the plan's gates on the
sandbox's A/A history, split into pseudo-arms, judged by the plan's real gate set."""

from __future__ import annotations

import random

import pytest

from mlrollout.contracts import CustomValue, LatencyHistogram, Window
from mlrollout.errors import UsageError
from mlrollout.history import read_history
from mlrollout.plan import backtest
from mlrollout.plan.loader import parse_plan
from mlrollout.plan.model import Plan
from mlrollout.sandbox.history import SandboxHistory

T0 = 1_800_000_000.0
DAY = 86400.0

#: The decision benchmark's linear plan (benchmarks/engine_decisions.py), errors in bursts or not.
LINEAR = """
version: 1
name: linear
target: {provider: local, endpoint: ep}
candidate: {name: v2}
strategy: {type: linear, step: 50, every: 5m}
analysis:
  min_requests: 50
  alpha: ALPHA
  gates: [{name: errors, metric: error_rate, vs_baseline: {max_increase: 50%}}]
sandbox:
  seed: 0
  rps: 100
  variants: {v1: {error_rate: 0.01BURSTS}, v2: {error_rate: 0.01}}
"""

CANARY = """
version: 1
name: canary
target: {provider: local, endpoint: ep}
candidate: {name: v2}
strategy:
  type: canary
  steps:
    - weight: 10
    - analyze: 10m
    - approve: {timeout: 10m, on_timeout: continue}
    - pause: 1m
    - weight: 50
    - analyze: {min: 2m, max: 10m}
    - weight: 100
    - analyze: 5m
analysis:
  interval: 10s
  max_hold: 5m
  gates:
    - {name: errors, metric: error_rate, vs_baseline: {max_increase: 25%}}
    - {name: p99max, metric: latency_p99, max: 400ms}
    - {name: drift, metric: prediction_drift, max: 0.2}
capture: {source: default}
sandbox:
  variants: {v1: {accuracy: 0.9}, v2: {accuracy: 0.9}}
"""


def plan(text: str = LINEAR, *, alpha: float = 0.05, bursts: float | None = None) -> Plan:
    text = text.replace("ALPHA", str(alpha))
    text = text.replace("BURSTS", "" if bursts is None else f", error_bursts: {bursts:g}")
    return parse_plan(text, "plan.yaml").plan


def replay(p: Plan, days: float, **kwargs: float) -> backtest.Backtest:
    assert p.sandbox is not None
    history = read_history(
        SandboxHistory(p.sandbox, T0, p.target.endpoint),
        start=T0,
        end=T0 + days * DAY,
        step=p.analysis.interval,
        variants=["v1"],
        gates=p.analysis.gates,
    )
    return backtest.run(p, history, variant="v1", **kwargs)


def test_a_split_is_two_consistent_parts_of_the_window() -> None:
    window = Window(
        requests=1000,
        errors=37,
        latency=LatencyHistogram((0.1, 0.2), [600, 390, 10]),
        custom={"conversion": CustomValue(120, 1000), "score": CustomValue(3.5, 7.0)},
    )
    part, rest = backtest.split(window, 0.1, random.Random(1))
    assert part.requests is not None and rest.requests is not None
    assert part.requests + rest.requests == 1000 and 60 < part.requests < 140
    assert part.latency is not None and rest.latency is not None
    assert part.latency.total == part.requests and rest.latency.total == rest.requests
    assert part.errors is not None and rest.errors is not None
    assert part.errors + rest.errors == 37 and part.errors <= part.requests
    conversion = part.custom["conversion"]
    assert conversion.count == part.requests  # counted over the part's own requests
    assert conversion.total + rest.custom["conversion"].total == 120
    assert part.custom["score"] == CustomValue(3.5 * 0.1, 7.0 * 0.1)  # a mean: scaled
    assert backtest.split(Window(), 0.5, random.Random(1)) == (Window(), Window())
    failed = backtest.split(Window(error="throttled"), 0.5, random.Random(1))
    assert failed[0].error == failed[1].error == "throttled"


def test_the_stages_are_the_plans_steps_in_windows_of_its_interval() -> None:
    stages = backtest.stages(plan(CANARY))
    assert [(s.kind, s.share) for s in stages] == [
        ("analyze", 0.1),
        ("approve", 0.1),
        ("pause", 0.1),
        ("analyze", 0.5),
        ("analyze", 1.0),
    ]
    first, watch, pause, adaptive, last = stages
    assert (first.max_looks, first.horizon, first.adaptive) == (60, 90, False)
    assert (watch.max_looks, watch.horizon) == (60, None)  # a human decides when a wait ends
    assert pause.wait == 6
    assert (adaptive.min_looks, adaptive.max_looks, adaptive.horizon) == (12, 60, 60)
    assert last.share == 1.0


def test_gates_without_history_are_skipped_and_the_rest_keep_their_budget() -> None:
    p = plan(CANARY)
    gates, absolute = backtest.gate_sets(p)
    assert [g.name for g in gates.gates] == ["errors", "p99max"]
    assert [g.name for g in absolute.gates] == ["p99max"]
    from mlrollout.analysis.gateset import GateSet, judged_stages

    full = GateSet.from_plan(p.analysis, stages=judged_stages(p))
    assert gates.alpha_per_test == pytest.approx(full.alpha_per_test)
    assert absolute.alpha_per_test == pytest.approx(full.alpha_per_test)


def test_a_plan_that_does_not_split_traffic_is_refused() -> None:
    text = LINEAR.replace(
        "strategy: {type: linear, step: 50, every: 5m}",
        "strategy: {type: blue_green, preview: 0, pre_promotion: 5m, post_promotion: 5m}",
    )
    with pytest.raises(UsageError, match="replays strategies that split live traffic"):
        backtest.check_plan(plan(text))


def test_a_history_too_short_for_one_rollout_is_refused() -> None:
    with pytest.raises(UsageError, match="one simulated rollout needs"):
        replay(plan(), 1.0)  # everything is inside the one-day shift


def test_the_aa_history_rarely_rolls_back_and_bursts_raise_the_rate() -> None:
    healthy = replay(plan(), 3.0)
    bursty = replay(plan(bursts=1), 3.0)
    assert len(healthy.rollouts) > 500  # 2 days after the shift, about 6 minutes each
    rate, interval = healthy.false_rollback_rate, healthy.rate_interval()
    assert rate is not None and interval is not None
    assert rate <= 0.05 and interval[0] <= 0.01  # within the plan's alpha
    assert bursty.count("rolled_back") > healthy.count("rolled_back")
    assert bursty.reasons("rolled_back")[0][0] == "errors"
    data = bursty.to_dict()
    assert data["rollouts"] == data["rolled_back"] + data["inconclusive"] + data["passed"]
    failed = next(r for r in data["simulated"] if r["outcome"] == "rolled_back")
    assert failed["gates"] == ["errors"] and "errors:" in failed["reason"]


def test_the_replay_is_deterministic_and_the_split_arm_shares_bursts() -> None:
    again = replay(plan(bursts=1), 3.0)
    assert again.to_dict() == replay(plan(bursts=1), 3.0).to_dict()
    # One window split in two: a burst hits both arms, as an incident of the whole endpoint.
    together = replay(plan(bursts=1), 3.0, shift=0.0)
    assert together.count("rolled_back") < again.count("rolled_back")


@pytest.mark.slow
def test_fourteen_days_match_the_engine_on_the_same_plan() -> None:
    """The backtest's rate against whole engine rollouts of the same plan on the sandbox (the
    decision benchmark's method, benchmarks/engine_decisions.py): a loose plan (alpha 0.5)
    rolls back often enough for the two rates to be compared."""
    import tempfile
    from pathlib import Path

    from mlrollout.clock import VirtualClock
    from mlrollout.engine.runner import Runner
    from mlrollout.state.sqlite import SqliteStateStore

    loose = LINEAR.replace("ALPHA", "0.5").replace("BURSTS", "")
    result = replay(plan(alpha=0.5), 14.0)
    rolled, seeds = 0, 300
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            text = loose.replace("seed: 0", f"seed: {seed}")
            store = SqliteStateStore(Path(tmp) / f"{seed}.db")
            runner = Runner(store, holder="test")
            record = runner.create(parse_plan(text, "plan.yaml"))
            outcome = runner.drive(record.id, clock=VirtualClock(T0))
            rolled += outcome.phase.value == "rolled_back"
            store.close()
    engine = rolled / seeds
    rate = result.false_rollback_rate
    assert rate is not None
    se = (rate * (1 - rate) / len(result.rollouts) + engine * (1 - engine) / seeds) ** 0.5
    assert abs(rate - engine) <= 3 * se + 0.005
