"""Kill at every step: crash the runner at each journal write of a rollout, then let a new runner
(`resume`, or `reconcile`) finish it. The end must be the one an uninterrupted run reaches, the
live endpoint must match the journal, and no change may be applied twice."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from mlrollout.clock import VirtualClock
from mlrollout.engine.phases import Phase
from mlrollout.engine.runner import Runner
from mlrollout.plan.loader import parse_plan
from mlrollout.state.sqlite import SqliteStateStore

PLAN = """
version: 1
name: sweep
target: {provider: local, endpoint: ep}
candidate: {name: v2}
strategy:
  type: canary
  steps:
    - weight: 10
    - analyze: 5m
    - weight: 50
    - analyze: 5m
analysis:
  interval: 60s
  min_requests: 100
  gates:
    - {name: errors, metric: error_rate, vs_baseline: {max_increase: 50%}}
sandbox:
  seed: 5
  rps: 200
  variants:
    v1: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}
    v2: {error_rate: CANDIDATE, latency_p50: 40ms, latency_p99: 120ms}
"""
START = 1_800_000_000.0


class Killed(BaseException):
    """The process died (not an Exception: nothing may catch and carry on)."""


class DyingStore(SqliteStateStore):
    """A store whose process dies at the N-th journal write: before it (the provider call it
    follows was made but not recorded) or right after it (recorded, nothing more)."""

    def __init__(self, path: Path, die_at: int, before: bool) -> None:
        super().__init__(path)
        self.die_at = die_at
        self.before = before
        self.writes = 0

    def append_event(self, *args: Any, **kwargs: Any) -> Any:
        self.writes += 1
        if self.before and self.writes == self.die_at:
            raise Killed
        event = super().append_event(*args, **kwargs)
        if not self.before and self.writes == self.die_at:
            raise Killed
        return event


def _finish(path: Path, rollout_id: str, how: str) -> Phase:
    store = SqliteStateStore(path)
    runner = Runner(store, holder="runner-2")
    # the dead runner's lease: as if its TTL had run out
    record = store.get_rollout(rollout_id)
    held = store.current_lease(record.endpoint_key)
    if held is not None:
        store.release_lease(held)
    last = store.events(rollout_id)[-1].at if store.events(rollout_id) else START
    clock = VirtualClock(last)
    if how == "resume":
        return runner.drive(rollout_id, clock=clock).phase
    for _ in range(50):
        results = runner.reconcile(
            clock_for_record=lambda r: VirtualClock(
                store.events(r.id)[-1].at if store.events(r.id) else START
            )
        )
        if not results:
            break
    return Phase(store.get_rollout(rollout_id).phase)


def _run(
    tmp_path: Path, candidate_error: float, die_at: int | None, before: bool
) -> tuple[Path, str, Phase | None]:
    path = tmp_path / "state.db"
    store: SqliteStateStore = DyingStore(path, die_at, before) if die_at else SqliteStateStore(path)
    runner = Runner(store, holder="runner-1")
    record = runner.create(parse_plan(PLAN.replace("CANDIDATE", str(candidate_error)), "p.yaml"))
    try:
        outcome = runner.drive(record.id, clock=VirtualClock(START))
    except Killed:
        return path, record.id, None
    return path, record.id, outcome.phase


def _endpoint(path: Path) -> dict[str, Any]:
    value = SqliteStateStore(path).get_value("sandbox", "ep")
    assert value is not None
    return value


def _check_consistent(path: Path, rollout_id: str, expected: Phase) -> None:
    store = SqliteStateStore(path)
    events = store.events(rollout_id)
    kinds = [e.kind for e in events]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert kinds.count("started") == 1
    assert kinds.count("promoted" if expected == Phase.SUCCEEDED else "rolled_back") == 1
    weights = {n: v["weight"] for n, v in _endpoint(path)["variants"].items()}
    assert weights == ({"v2": 100.0} if expected == Phase.SUCCEEDED else {"v1": 100.0})
    # the journal's last weights are the live ones
    assert {k: v for k, v in events[-1].data["weights"].items() if v > 0} == {
        k: v for k, v in weights.items() if v > 0
    }
    # no traffic change applied twice: consecutive history entries always differ
    history = [entry[1] for entry in _endpoint(path)["history"]]
    assert all(a != b for a, b in itertools.pairwise(history)), history


@pytest.mark.slow
@pytest.mark.parametrize(
    "candidate_error,expected",
    [(0.01, Phase.SUCCEEDED), (0.05, Phase.ROLLED_BACK)],
    ids=["good", "bad"],
)
@pytest.mark.parametrize("how", ["resume", "reconcile"])
def test_every_kill_point_recovers(
    tmp_path: Path, candidate_error: float, expected: Phase, how: str
) -> None:
    reference, rid, phase = _run(tmp_path / "ref", candidate_error, None, False)
    assert phase == expected
    total = len(SqliteStateStore(reference).events(rid))
    tried = recovered = 0
    for die_at in range(1, total + 1):
        for before in (True, False):
            folder = tmp_path / f"{die_at}-{'before' if before else 'after'}"
            path, rid, phase = _run(folder, candidate_error, die_at, before)
            assert phase is None, f"the runner should have died at write {die_at}"
            tried += 1
            assert _finish(path, rid, how) == expected, (die_at, before)
            _check_consistent(path, rid, expected)
            recovered += 1
    assert tried == recovered == 2 * total
    print(f"{how} {expected.value}: {tried} kill points tried, {recovered} recovered")
