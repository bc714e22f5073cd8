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
#: The same endpoint and traffic driven blue-green: a preview at 10 %, the switch, a judged
#: post-promotion against blue's window before it, then blue kept two minutes.
BLUE_GREEN = PLAN.replace(
    """strategy:
  type: canary
  steps:
    - weight: 10
    - analyze: 5m
    - weight: 50
    - analyze: 5m
""",
    """strategy:
  type: blue_green
  preview: 10
  pre_promotion: 5m
  post_promotion: 3m
  keep_previous: 2m
""",
)
#: Blue-green with ``preview: 0``: green judged on a mirrored copy of live traffic (the sandbox
#: mirrors 100 %) during pre-promotion, the mirror stopped before the switch.
MIRRORED = BLUE_GREEN.replace("  preview: 10\n", "  preview: 0\n")
#: A shadow of all live requests judged for five minutes, then promoted straight to 100 %.
SHADOW = PLAN.replace(
    """strategy:
  type: canary
  steps:
    - weight: 10
    - analyze: 5m
    - weight: 50
    - analyze: 5m
""",
    """strategy:
  type: shadow
  percent: 100
  duration: 5m
  then: promote
""",
)
PLANS = {
    "canary": PLAN,
    "blue_green": BLUE_GREEN,
    "blue_green_mirror": MIRRORED,
    "shadow": SHADOW,
}
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
    tmp_path: Path,
    candidate_error: float,
    die_at: int | None,
    before: bool,
    plan: str = PLAN,
) -> tuple[Path, str, Phase | None]:
    path = tmp_path / "state.db"
    store: SqliteStateStore = DyingStore(path, die_at, before) if die_at else SqliteStateStore(path)
    runner = Runner(store, holder="runner-1")
    record = runner.create(parse_plan(plan.replace("CANDIDATE", str(candidate_error)), "p.yaml"))
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
    # nor a mirror change, and no mirror is left running
    mirrors = [entry[1] for entry in _endpoint(path).get("shadow_history", [])]
    assert all(a != b for a, b in itertools.pairwise(mirrors)), mirrors
    assert _endpoint(path)["shadow"] == {}
    if "set_shadow.applied" in kinds:  # mirrored: it served no one before the switch
        first_live = next((i for i, ws in enumerate(history) if ws.get("v2", 0.0) > 0), None)
        if first_live is not None:
            assert history[first_live]["v2"] == 100.0, history
        assert mirrors and mirrors[0] == {"v2": 100.0} and mirrors[-1] == {}


@pytest.mark.slow
@pytest.mark.parametrize(
    "candidate_error,expected",
    [(0.01, Phase.SUCCEEDED), (0.05, Phase.ROLLED_BACK)],
    ids=["good", "bad"],
)
@pytest.mark.parametrize("how", ["resume", "reconcile"])
@pytest.mark.parametrize("strategy", sorted(PLANS))
def test_every_kill_point_recovers(
    tmp_path: Path, candidate_error: float, expected: Phase, how: str, strategy: str
) -> None:
    plan = PLANS[strategy]
    reference, rid, phase = _run(tmp_path / "ref", candidate_error, None, False, plan)
    assert phase == expected
    total = len(SqliteStateStore(reference).events(rid))
    tried = recovered = 0
    for die_at in range(1, total + 1):
        for before in (True, False):
            folder = tmp_path / f"{die_at}-{'before' if before else 'after'}"
            path, rid, phase = _run(folder, candidate_error, die_at, before, plan)
            assert phase is None, f"the runner should have died at write {die_at}"
            tried += 1
            assert _finish(path, rid, how) == expected, (die_at, before)
            _check_consistent(path, rid, expected)
            recovered += 1
    assert tried == recovered == 2 * total
    print(f"{strategy} {how} {expected.value}: {tried} kill points tried, {recovered} recovered")


@pytest.mark.slow
@pytest.mark.parametrize("candidate_error", [0.01, 0.05], ids=["good", "bad"])
def test_an_abort_recorded_at_every_kill_point_ends_rolled_back(
    tmp_path: Path, candidate_error: float
) -> None:
    reference, rid, _ = _run(tmp_path / "ref", candidate_error, None, False)
    total = len(SqliteStateStore(reference).events(rid))
    tried = too_late = 0
    for die_at in range(1, total):  # the last write ends the rollout: nothing left to abort
        for before in (True, False):
            path, rid, phase = _run(
                tmp_path / f"{die_at}-{before}", candidate_error, die_at, before
            )
            assert phase is None
            store = SqliteStateStore(path)
            Runner(store, holder="operator").command(rid, "abort")
            ended = _finish(path, rid, "resume")
            # whatever was in flight, the abort wins: rolled back (or, if nothing had changed
            # yet, aborted), and the baseline serves everything
            kinds = [e.kind for e in store.events(rid)]
            if "abort.refused" in kinds:
                # too late: the promotion had begun retiring the baseline before the abort
                assert kinds.index("finalize.requested") < kinds.index("command.abort")
                assert ended == Phase.SUCCEEDED
                too_late += 1
            elif "started" in kinds:
                assert ended == Phase.ROLLED_BACK, (die_at, before, kinds)
            else:
                assert ended == Phase.ABORTED, (die_at, before, kinds)
            weights = {n: v["weight"] for n, v in _endpoint(path)["variants"].items()}
            if "abort.refused" not in kinds:
                assert {k: v for k, v in weights.items() if v} == {"v1": 100.0}, (die_at, before)
                assert "promoted" not in kinds
            tried += 1
    assert tried == 2 * (total - 1)
    assert too_late <= 3  # only kills between finalize.requested and the end


@pytest.mark.slow
def test_a_second_state_store_on_the_same_endpoint_is_refused_at_every_kill_point(
    tmp_path: Path,
) -> None:
    from mlrollout.contracts import OwnerMark
    from mlrollout.errors import EndpointOwned

    def run_a(folder: Path, die_at: int | None, before: bool) -> tuple[Path, str, Phase | None]:
        folder.mkdir(parents=True)
        world = folder / "world.db"
        text = PLAN.replace("CANDIDATE", "0.01").replace(
            "endpoint: ep}", f"endpoint: ep, endpoint_url: {world}}}"
        )
        path = folder / "a.db"
        store: SqliteStateStore = (
            DyingStore(path, die_at, before) if die_at else SqliteStateStore(path)
        )
        runner = Runner(store, holder="runner-a")
        record = runner.create(parse_plan(text, "p.yaml"))
        try:
            return world, record.id, runner.drive(record.id, clock=VirtualClock(START)).phase
        except Killed:
            return world, record.id, None

    world, rid, phase = run_a(tmp_path / "ref", None, False)
    assert phase == Phase.SUCCEEDED
    total = len(SqliteStateStore(tmp_path / "ref" / "a.db").events(rid))
    refused = unmarked = 0
    for die_at in range(1, total):
        for before in (True, False):
            folder = tmp_path / f"{die_at}-{before}"
            world, rid, phase = run_a(folder, die_at, before)
            assert phase is None
            shared = SqliteStateStore(world)
            live = shared.get_value("sandbox", "ep")
            mark = OwnerMark.from_tags((live or {}).get("owner"))
            before_b = live
            # runner B keeps its state elsewhere (another CI machine) and starts the same plan
            b_store = SqliteStateStore(folder / "b.db")
            b = Runner(b_store, holder="runner-b")
            text = PLAN.replace("CANDIDATE", "0.01").replace(
                "endpoint: ep}", f"endpoint: ep, endpoint_url: {world}}}"
            )
            b_record = b.create(parse_plan(text, "p.yaml"))
            if mark is None:
                # A had not begun to change the endpoint: B may go; A then finds B's work done
                unmarked += 1
                assert live is None or list(live["variants"]) == ["v1"], (die_at, before)
                continue
            with pytest.raises(EndpointOwned, match=rid):
                b.drive(b_record.id, clock=VirtualClock(START))
            assert shared.get_value("sandbox", "ep") == before_b  # B changed nothing
            assert b_store.get_rollout(b_record.id).phase == "aborted"
            refused += 1
    assert refused > 0
    print(f"second store: refused at {refused} kill points, {unmarked} before any change")
