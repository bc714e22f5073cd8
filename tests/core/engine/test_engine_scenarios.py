"""Scenario tests: a rollout walked tick by tick on the local sandbox with a virtual clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlrollout.clock import VirtualClock
from mlrollout.engine.engine import Engine, RolloutState
from mlrollout.engine.events import LOOK_KINDS
from mlrollout.engine.phases import Phase
from mlrollout.engine.runner import Runner
from mlrollout.errors import EndpointDrifted, LeaseHeld, ProviderError
from mlrollout.plan.loader import parse_plan
from mlrollout.state.sqlite import SqliteStateStore

BASE = """
version: 1
name: scenario
target: {provider: local, endpoint: ep}
candidate: {name: v2}
strategy:
  type: canary
  steps:
    - weight: 10
    - analyze: 10m
    - weight: 50
    - analyze: 10m
analysis:
  interval: 60s
  min_requests: 200
  max_hold: 5m
  gates:
    - {name: errors, metric: error_rate, vs_baseline: {max_increase: 25%}}
    - {name: p99, metric: latency_p99, max: 300ms}
sandbox:
  seed: 1
  rps: 100
  variants:
    v1: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}
    v2: {error_rate: CAND_ERR, latency_p50: 40ms, latency_p99: 120ms}
"""


def plan_text(candidate_error: float = 0.01, **replace: str) -> str:
    text = BASE.replace("CAND_ERR", str(candidate_error))
    for old, new in replace.items():
        text = text.replace(old.replace("_", " "), new)
    return text


class World:
    """Given a store, a virtual clock and a plan; when ticking; then look at the endpoint."""

    def __init__(self, tmp_path: Path, text: str) -> None:
        self.store = SqliteStateStore(tmp_path / "state.db")
        self.clock = VirtualClock(1_800_000_000.0)
        self.loaded = parse_plan(text, "plan.yaml")
        self.runner = Runner(self.store)
        self.record = self.runner.create(self.loaded)
        self.engine = self.open()

    def open(self) -> Engine:
        record = self.store.get_rollout(self.record.id)
        return self.runner.open_engine(record, self.clock)

    def tick_until(self, phase: Phase, limit: int = 500) -> None:
        for _ in range(limit):
            if self.engine.state.phase_enum == phase:
                return
            result = self.engine.tick()
            if result.next_at is not None and result.next_at > self.clock.now():
                self.clock.set(result.next_at)
        raise AssertionError(f"never reached {phase}; at {self.engine.state.phase}")

    def run_to_end(self) -> Phase:
        for _ in range(1000):
            result = self.engine.tick()
            if result.done or result.phase == Phase.WAITING:
                return result.phase
            self.clock.set(result.next_at)
        raise AssertionError("did not end")

    def endpoint(self) -> dict[str, float]:
        record = self.store.get_value("sandbox", "ep")
        assert record is not None
        return {name: v["weight"] for name, v in record["variants"].items()}

    def kinds(self) -> list[str]:
        return [e.kind for e in self.store.events(self.record.id)]

    def command(self, kind: Any, **kw: Any) -> None:
        self.runner.command(self.record.id, kind, **kw)


def test_bad_candidate_rolls_back_traffic_first_then_removes_it(tmp_path: Path) -> None:
    world = World(tmp_path, plan_text(candidate_error=0.05))
    assert world.run_to_end() == Phase.ROLLED_BACK
    assert world.endpoint() == {"v1": 100.0}
    kinds = world.kinds()
    failed = kinds.index("analysis.failed")
    restore = kinds.index("set_traffic.applied", failed)
    cleanup = kinds.index("finalize.applied", failed)
    assert restore < cleanup < kinds.index("rolled_back")
    assert "errors" in (world.engine.state.reason or "")
    # caught during the first analysis at 10 %: the 50 % step never happened
    assert world.engine.state.step == 1


def test_good_candidate_is_promoted_and_baseline_retired(tmp_path: Path) -> None:
    world = World(tmp_path, plan_text(candidate_error=0.01))
    assert world.run_to_end() == Phase.SUCCEEDED
    assert world.endpoint() == {"v2": 100.0}
    assert world.kinds()[-1] == "promoted"
    looks = [e for e in world.store.events(world.record.id) if e.kind in LOOK_KINDS]
    assert len(looks) == 20  # one per minute over two 10-minute analyses


def test_a_later_stage_reads_the_baselines_bursts_from_the_earlier_ones(tmp_path: Path) -> None:
    """The baseline's per-look increments of the first analysis are kept (in the snapshot, so a
    resumed runner has them) and passed to the second's looks from its first: the early guard
    is then lifted by what the baseline showed before."""
    world = World(tmp_path, plan_text(candidate_error=0.01))
    assert world.run_to_end() == Phase.SUCCEEDED
    looks = [e for e in world.store.events(world.record.id) if e.kind in LOOK_KINDS]

    def errors(event: Any) -> dict[str, float]:
        [gate] = [g for g in event.data["verdict"]["gates"] if g["gate"] == "errors"]
        return dict(gate["numbers"])

    first = [errors(e) for e in looks if e.data["step"] == 1]
    second = [errors(e) for e in looks if e.data["step"] == 3]
    assert len(first) == len(second) == 10
    assert all("dispersion_history" not in n for n in first)
    assert [n["dispersion_history"] for n in second] == [10.0] * 10
    snapshot = world.store.get_rollout(world.record.id).snapshot
    history = snapshot["baseline_history"]
    assert len(history) == 20  # both stages' ten looks, oldest first
    assert sum(h[0] for h in history[:10]) == first[-1]["baseline_requests"]


def test_tick_by_tick_each_tick_does_at_most_one_thing(tmp_path: Path) -> None:
    world = World(tmp_path, plan_text())
    engine = world.engine
    engine.tick()
    assert engine.state.phase == "preparing" and engine.state.baseline == "v1"
    assert world.endpoint() == {"v1": 100.0}
    engine.tick()
    assert engine.state.phase == "progressing" and world.endpoint() == {"v1": 100.0, "v2": 0.0}
    engine.tick()
    assert world.endpoint() == {"v1": 90.0, "v2": 10.0}
    assert engine.state.step == 1
    result = engine.tick()  # analysis: the first look is one interval away
    assert result.next_at == world.clock.now() + 60
    assert world.kinds()[-1] == "set_traffic.applied"


def test_crash_between_intent_and_call_is_finished_on_resume(tmp_path: Path) -> None:
    world = World(tmp_path, plan_text())
    world.tick_until(Phase.PROGRESSING)
    adapter = world.engine.adapter
    original = adapter.set_traffic

    def crash(weights: Any) -> Any:
        raise ProviderError("connection reset")

    adapter.set_traffic = crash  # type: ignore[method-assign]
    with pytest.raises(ProviderError):
        world.engine.tick()
    adapter.set_traffic = original  # type: ignore[method-assign]
    assert world.kinds()[-1] == "set_traffic.requested"
    assert world.endpoint() == {"v1": 100.0, "v2": 0.0}
    # a new runner process: rebuild everything from the store
    world.engine = world.open()
    assert world.engine.state.pending is not None
    world.engine.tick()
    assert world.endpoint() == {"v1": 90.0, "v2": 10.0}
    assert world.kinds()[-2:] == ["set_traffic.requested", "set_traffic.applied"]
    assert world.run_to_end() == Phase.SUCCEEDED


def test_crash_after_the_call_is_not_applied_twice(tmp_path: Path) -> None:
    world = World(tmp_path, plan_text())
    world.tick_until(Phase.PROGRESSING)
    adapter = world.engine.adapter
    original = adapter.set_traffic

    def applied_then_crash(weights: Any) -> Any:
        original(weights)
        raise ProviderError("timeout reading the response")

    adapter.set_traffic = applied_then_crash  # type: ignore[method-assign]
    with pytest.raises(ProviderError):
        world.engine.tick()
    world.engine = world.open()
    world.engine.tick()
    record = world.store.get_value("sandbox", "ep")
    assert record is not None
    # the weight history has one entry for the 10 % shift, not two
    shifts = [h for h in record["history"] if h[1].get("v2") == 10.0]
    assert len(shifts) == 1


def test_abort_mid_analysis_restores_the_baseline(tmp_path: Path) -> None:
    world = World(tmp_path, plan_text())
    world.tick_until(Phase.PROGRESSING)
    world.engine.tick()
    world.engine.tick()
    world.command("abort")
    assert world.run_to_end() == Phase.ROLLED_BACK
    assert world.endpoint() == {"v1": 100.0}
    assert "aborted by" in (world.engine.state.reason or "")


def test_approval_waits_then_promote_continues(tmp_path: Path) -> None:
    text = plan_text().replace(
        "    - weight: 50\n", "    - approve: {timeout: 1h}\n    - weight: 50\n"
    )
    world = World(tmp_path, text)
    assert world.run_to_end() == Phase.WAITING
    assert world.engine.state.waiting is not None
    assert world.endpoint() == {"v1": 90.0, "v2": 10.0}
    world.command("promote")
    assert world.run_to_end() == Phase.SUCCEEDED
    assert "approved" in world.kinds()


def test_approval_timeout_rolls_back(tmp_path: Path) -> None:
    text = plan_text().replace(
        "    - weight: 50\n", "    - approve: {timeout: 1h}\n    - weight: 50\n"
    )
    world = World(tmp_path, text)
    result = None
    for _ in range(200):
        result = world.engine.tick()
        if world.engine.state.phase == "waiting":
            break
        if result.next_at:
            world.clock.set(result.next_at)
    waiting = world.engine.state.waiting
    assert waiting is not None and waiting["timeout_at"] == world.clock.now() + 3600
    looks_before = world.kinds().count("look")
    # an hour passes with nobody answering; the gates keep watching meanwhile
    for _ in range(200):
        result = world.engine.tick()
        if result.phase != Phase.WAITING:
            break
        assert result.next_at is not None
        world.clock.set(result.next_at)
    assert world.run_to_end() == Phase.ROLLED_BACK
    assert "no approval" in (world.engine.state.reason or "")
    assert world.kinds().count("look") >= looks_before + 59


def test_a_failure_while_waiting_for_approval_rolls_back_at_once(tmp_path: Path) -> None:
    # A regression the first analysis cannot see yet (too few errors at 10 % in 2 minutes)
    # shows while the rollout waits hours for a human: the gates still watch.
    text = (
        plan_text(candidate_error=0.03)
        .replace(
            "    - analyze: 10m\n    - weight: 50\n",
            "    - analyze: 2m\n    - approve: {timeout: 8h}\n    - weight: 50\n",
        )
        .replace("min_requests: 200", "min_requests: 20")
        .replace("rps: 100", "rps: 20")
        # on the plan's 60 s traffic grid, seed 1 happens to draw enough errors in the first
        # 2 minutes to fail there; seed 2 shows the regression only later, as this test needs
        .replace("seed: 1", "seed: 2")
    )
    text = text.replace("  max_hold: 5m\n", "  max_hold: 5m\n  on_inconclusive: continue\n")
    world = World(tmp_path, text)
    for _ in range(2000):
        result = world.engine.tick()
        if result.done:
            break
        if result.next_at is not None:
            world.clock.set(result.next_at)
    assert world.engine.state.phase == "rolled_back"
    kinds = world.kinds()
    assert "waiting" in kinds and "approval.timed_out" not in kinds
    failed = next(e for e in world.store.events(world.record.id) if e.kind == "analysis.failed")
    assert failed.data.get("waiting") is True
    assert world.endpoint() == {"v1": 100.0}


def test_promote_full_skips_remaining_steps(tmp_path: Path) -> None:
    world = World(tmp_path, plan_text())
    world.tick_until(Phase.PROGRESSING)
    world.engine.tick()
    world.command("promote", full=True)
    assert world.run_to_end() == Phase.SUCCEEDED
    assert world.endpoint() == {"v2": 100.0}
    assert "promote.forced" in world.kinds()


def test_no_data_holds_then_applies_on_inconclusive(tmp_path: Path) -> None:
    # 1 request per second: 10 % of it never reaches 200 requests in 10 minutes
    world = World(tmp_path, plan_text().replace("rps: 100", "rps: 1"))
    assert world.run_to_end() == Phase.ROLLED_BACK
    kinds = world.kinds()
    assert "analysis.passed" not in kinds
    assert "on_inconclusive: rollback" in (world.engine.state.reason or "")
    failed = next(e for e in world.store.events(world.record.id) if e.kind == "analysis.failed")
    # held for max_hold (5m) after the 10-minute window
    assert failed.data["elapsed"] >= 15 * 60


def test_no_data_continue_policy_goes_on(tmp_path: Path) -> None:
    text = (
        plan_text()
        .replace("rps: 100", "rps: 1")
        .replace("  max_hold: 5m\n", "  max_hold: 5m\n  on_inconclusive: continue\n")
    )
    world = World(tmp_path, text)
    assert world.run_to_end() == Phase.SUCCEEDED


def test_manual_rollback_policy_pauses_instead(tmp_path: Path) -> None:
    text = plan_text(candidate_error=0.05) + "rollback: {automatic: false}\n"
    world = World(tmp_path, text)
    assert world.run_to_end() == Phase.WAITING
    assert world.endpoint() == {"v1": 90.0, "v2": 10.0}
    world.command("abort")
    assert world.run_to_end() == Phase.ROLLED_BACK
    assert world.endpoint() == {"v1": 100.0}


def test_hand_made_change_is_drift(tmp_path: Path) -> None:
    world = World(tmp_path, plan_text())
    world.tick_until(Phase.PROGRESSING)
    world.engine.tick()
    record = world.store.get_value("sandbox", "ep")
    assert record is not None
    record["variants"]["v2"]["weight"] = 60.0
    record["variants"]["v1"]["weight"] = 40.0
    world.store.put_value("sandbox", "ep", record, lease=None)
    with pytest.raises(EndpointDrifted, match="v2 60%"):
        world.engine.tick()


def test_adaptive_analysis_moves_on_once_every_gate_passed(tmp_path: Path) -> None:
    text = plan_text().replace("- analyze: 10m", "- analyze: {min: 2m, max: 30m}")
    world = World(tmp_path, text.replace("rps: 100", "rps: 1000"))
    assert world.run_to_end() == Phase.SUCCEEDED
    passed = [e for e in world.store.events(world.record.id) if e.kind == "analysis.passed"]
    assert len(passed) == 2
    assert all(e.data["elapsed"] < 30 * 60 for e in passed)


def test_linear_strategy_walks_the_increments(tmp_path: Path) -> None:
    text = plan_text().replace(
        """strategy:
  type: canary
  steps:
    - weight: 10
    - analyze: 10m
    - weight: 50
    - analyze: 10m
""",
        "strategy: {type: linear, step: 25, every: 5m}\n",
    )
    world = World(tmp_path, text)
    assert world.run_to_end() == Phase.SUCCEEDED
    weights = [
        e.data["weights"].get("v2")
        for e in world.store.events(world.record.id)
        if e.kind == "set_traffic.applied"
    ]
    assert weights == [25.0, 50.0, 75.0, 100.0]


def test_dry_run_gate_records_but_never_rolls_back(tmp_path: Path) -> None:
    text = plan_text(candidate_error=0.05).replace(
        "vs_baseline: {max_increase: 25%}}", "vs_baseline: {max_increase: 25%}, dry_run: true}"
    )
    world = World(tmp_path, text)
    assert world.run_to_end() == Phase.SUCCEEDED
    looks = [e for e in world.store.events(world.record.id) if e.kind == "look"]
    outcomes = {
        g["outcome"] for e in looks for g in e.data["verdict"]["gates"] if g["gate"] == "errors"
    }
    assert "fail" in outcomes


def test_second_runner_cannot_drive_the_same_endpoint(tmp_path: Path) -> None:
    world = World(tmp_path, plan_text())
    other = Runner(SqliteStateStore(tmp_path / "state.db"), holder="ci@elsewhere pid 7")
    other._take_lease(world.record.endpoint_key)
    with pytest.raises(LeaseHeld, match="ci@elsewhere"):
        world.runner.drive(world.record.id, clock=world.clock)


def test_snapshot_roundtrip_keeps_every_field() -> None:
    state = RolloutState(
        phase="waiting",
        baseline="a",
        candidate="b",
        step=3,
        looks=7,
        weights={"a": 90.0, "b": 10.0},
        waiting={"reason": "approval"},
    )
    assert RolloutState.from_dict(state.to_dict()) == state
