"""Simulated time never runs backwards on one sandbox endpoint."""

from __future__ import annotations

from pathlib import Path

from mlrollout.clock import ScaledClock, VirtualClock
from mlrollout.engine.events import LOOK_KINDS
from mlrollout.engine.runner import Runner
from mlrollout.plan.loader import parse_plan
from mlrollout.state.sqlite import SqliteStateStore

PLAN = """
version: 1
name: NAME
target: {provider: local, endpoint: shared}
candidate: {name: CANDIDATE}
strategy:
  type: canary
  steps: [{weight: 10}, {analyze: 10m}]
analysis:
  interval: 60s
  delay: 1m
  min_requests: 200
  gates: [{name: errors, metric: error_rate, vs_baseline: {max_increase: 25%}}]
sandbox:
  seed: 7
  rps: 100
  speed: max
  variants:
    v1: {error_rate: 0.01}
    v2: {error_rate: 0.01}
    v3: {error_rate: 0.01}
"""


def test_a_second_rollout_right_after_the_first_starts_after_its_last_change(
    tmp_path: Path,
) -> None:
    # Each `speed: max` rollout's virtual clock starts at the wall clock; the first one's ran
    # 11 minutes ahead. The second must not shift traffic "before" the first one's last change,
    # or its analysis window would start before its traffic did (a sample-ratio mismatch).
    store = SqliteStateStore(tmp_path / "state.db")
    runner = Runner(store)
    first = runner.create(parse_plan(PLAN.replace("NAME", "a").replace("CANDIDATE", "v2"), "a"))
    runner.drive(first.id)
    first_end = store.events(first.id)[-1].at
    second = runner.create(parse_plan(PLAN.replace("NAME", "b").replace("CANDIDATE", "v3"), "b"))
    outcome = runner.drive(second.id)
    events = store.events(second.id)
    assert events[0].at >= first_end
    looks = [e.data["verdict"] for e in events if e.kind in LOOK_KINDS]
    srm = [g for v in looks for g in v["gates"] if g["gate"] == "sample-ratio"]
    assert srm and all(g["outcome"] == "pass" for g in srm)
    assert all(abs(g["numbers"]["candidate"] - 0.10) < 0.02 for g in srm)
    assert outcome.phase.value == "succeeded"


def test_clocks_only_move_forward() -> None:
    virtual = VirtualClock(100.0)
    virtual.set(50.0)
    assert virtual.now() == 100.0
    scaled = ScaledClock(1000.0, start=100.0)
    scaled.set(10_000.0)
    assert 10_000.0 <= scaled.now() < 10_100.0
    before = scaled.now()
    scaled.set(0.0)
    assert scaled.now() >= before
