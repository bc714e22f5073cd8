"""Fleets on the sandbox through the real runners: one rollout per target, in waves, each
holding with the candidate at 100 % until every wave has passed; a bad candidate in a later
wave rolls back every target already shifted and never starts the next wave."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlrollout.clock import VirtualClock
from mlrollout.engine.fleet import FleetRunner, fleet_status, member_id
from mlrollout.errors import PlanError, UsageError
from mlrollout.plan.loader import parse_plan
from mlrollout.state.sqlite import SqliteStateStore

START = 1_800_000_000.0
FLEET = """
version: 1
name: churn-fleet
targets:
  - {provider: local, endpoint: us, wave: 1}
  - {provider: local, endpoint: eu, wave: 2, sandbox: {variants: {v2: {error_rate: EU}}}}
  - {provider: local, endpoint: ap, wave: 2}
  - {provider: local, endpoint: sa, wave: 3}
waves: {max_parallel: 2, on_failure: POLICY}
candidate: {name: v2}
strategy:
  type: canary
  steps: [{weight: 10}, {analyze: 5m}, {weight: 50}, {analyze: 5m}]
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
    v2: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}
"""


def fleet_text(eu: float = 0.01, policy: str = "rollback_all") -> str:
    return FLEET.replace("EU", str(eu)).replace("POLICY", policy)


class Fleet:
    def __init__(self, tmp_path: Path, text: str, store: Any = None) -> None:
        self.path = tmp_path / "state.db"
        self.store = store or SqliteStateStore(self.path)
        self.passes: list[list[tuple[int, str]]] = []
        self.journal: list[tuple[str, str]] = []  # (rollout, event kind), in the order written
        self.runner = self.new_runner()
        self.record = self.runner.create(parse_plan(text, "fleet.yaml"))

    def clock_for(self, rollout_id: str) -> VirtualClock:
        events = self.store.events(rollout_id)
        return VirtualClock(events[-1].at if events else START)

    def new_runner(self, store: Any = None) -> FleetRunner:
        def seen(record: Any, views: Any) -> None:
            self.passes.append([(v.row.index, v.phase) for v in views])

        def listen(event: Any, state: Any) -> None:
            self.journal.append((event.rollout_id, str(event.kind)))

        return FleetRunner(
            store or self.store, clock_for=self.clock_for, on_pass=seen, listeners=[listen]
        )

    def drive(self) -> Any:
        return self.runner.drive(self.record.id)

    def endpoint(self, name: str) -> dict[str, float]:
        value = self.store.get_value("sandbox", name)
        assert value is not None
        return {n: v["weight"] for n, v in value["variants"].items()}


def test_a_healthy_fleet_promotes_every_target_wave_after_wave(tmp_path):
    fleet = Fleet(tmp_path, fleet_text())
    record = fleet.drive()
    assert record.phase == "succeeded", record.reason
    for name in ("us", "eu", "ap", "sa"):
        assert fleet.endpoint(name) == {"v2": 100.0}  # each baseline retired at the release
    # no target of wave 2 started before wave 1's held, nor wave 3's before wave 2's
    for seen in fleet.passes:
        phases = dict(seen)
        if phases[1] != "not started" or phases[2] != "not started":
            assert phases[0] in ("waiting", "succeeded"), seen
        if phases[3] != "not started":
            assert phases[1] in ("waiting", "succeeded") and phases[2] in ("waiting", "succeeded")
    # the baselines were retired only after every target had passed
    releases = [
        e.at
        for i in range(4)
        for e in fleet.store.events(member_id(record.id, i))
        if e.kind == "finalize.applied"
    ]
    holds = [
        e.at
        for i in range(4)
        for e in fleet.store.events(member_id(record.id, i))
        if e.kind == "waiting"
    ]
    assert len(releases) == 4 and len(holds) == 4
    status = fleet_status(fleet.store, record.id).to_dict()
    assert [r["phase"] for r in status["targets"]] == ["succeeded"] * 4


def test_a_bad_candidate_in_wave_2_rolls_back_waves_1_and_2_and_never_starts_wave_3(tmp_path):
    fleet = Fleet(tmp_path, fleet_text(eu=0.06))
    record = fleet.drive()
    assert record.phase == "rolled_back"
    assert record.failed == 1 and "eu (wave 2)" in (record.reason or "")
    for name in ("us", "eu", "ap"):
        assert fleet.endpoint(name) == {"v1": 100.0}  # traffic back, the candidate removed
    assert fleet.store.get_value("sandbox", "sa") is None  # wave 3 never touched
    rows = fleet_status(fleet.store, record.id).to_dict()["targets"]
    assert [r["phase"] for r in rows] == [
        "rolled_back",
        "rolled_back",
        "rolled_back",
        "not started",
    ]
    # rolled back latest wave first: wave 2's other target before wave 1's
    order = [rid for rid, kind in fleet.journal if kind == "rolled_back"]
    ids = [member_id(record.id, i) for i in range(3)]
    assert order == [ids[1], ids[2], ids[0]]  # eu rolled itself back; then ap, then us


def test_stop_keeps_the_finished_targets_and_starts_nothing_new(tmp_path):
    fleet = Fleet(tmp_path, fleet_text(eu=0.06, policy="stop"))
    record = fleet.drive()
    assert record.phase == "stopped"
    assert fleet.endpoint("us") == {"v2": 100.0}  # wave 1 finished: released
    assert fleet.endpoint("eu") == {"v1": 100.0}  # the failed target rolled itself back
    assert fleet.endpoint("ap") == {"v2": 100.0}  # wave 2's other target finished, released
    assert fleet.store.get_value("sandbox", "sa") is None


def test_abort_rolls_back_every_target_already_shifted(tmp_path):
    fleet = Fleet(tmp_path, fleet_text())
    fleet.runner.drive(fleet.record.id, max_passes=3)  # wave 1 held, wave 2 started
    fleet.runner.abort(fleet.record.id, by="ops")
    record = fleet.drive()
    assert record.phase == "rolled_back" and record.reason == "aborted by ops"
    assert fleet.endpoint("us") == {"v1": 100.0}
    with pytest.raises(UsageError, match="has ended"):
        fleet.runner.abort(fleet.record.id, by="ops")


def test_fleet_plans_are_checked_target_by_target():
    bad = fleet_text(eu=5).replace("wave: 3}", "wave: 3, regoin: x}")
    with pytest.raises(PlanError) as err:
        parse_plan(bad, "fleet.yaml")
    found = {i.path: i.message for i in err.value.issues}
    assert found["targets[1].sandbox.variants.v2.error_rate"].startswith("an error rate is between")
    assert found["targets[3].regoin"].startswith("unknown key 'regoin' for provider 'local'")
    both = fleet_text().replace("targets:", "target: {provider: local, endpoint: x}\ntargets:")
    with pytest.raises(PlanError, match="a fleet plan lists its endpoints under targets"):
        parse_plan(both, "fleet.yaml")
    dup = fleet_text().replace("endpoint: sa", "endpoint: us")
    with pytest.raises(PlanError, match=r"targets\[3\]: the same endpoint as targets\[0\]"):
        parse_plan(dup, "fleet.yaml")


# ------------------------------------------------------------------------------ kill sweep


def small(eu: float) -> str:
    """Three targets in three waves, one at a time."""
    return (
        fleet_text(eu=eu)
        .replace("  - {provider: local, endpoint: ap, wave: 2}\n", "")
        .replace("max_parallel: 2", "max_parallel: 1")
    )


class Killed(BaseException):
    """The process died (nothing may catch it and carry on)."""


class DyingStore(SqliteStateStore):
    """Dies at the N-th write of any kind (a journal event or the fleet's record), before or
    after it."""

    def __init__(self, path: Path, die_at: int, before: bool) -> None:
        super().__init__(path)
        self.die_at, self.before, self.writes = die_at, before, 0

    def _count(self) -> None:
        self.writes += 1
        if self.before and self.writes == self.die_at:
            raise Killed

    def _after(self) -> None:
        if not self.before and self.writes == self.die_at:
            raise Killed

    def append_event(self, *args: Any, **kwargs: Any) -> Any:
        self._count()
        event = super().append_event(*args, **kwargs)
        self._after()
        return event

    def put_value(self, *args: Any, **kwargs: Any) -> None:
        self._count()
        super().put_value(*args, **kwargs)
        self._after()


def _ends(fleet: Fleet, fleet_id: str) -> dict[str, Any]:
    from mlrollout.engine.fleet import find_fleet

    record = find_fleet(fleet.store, fleet_id)
    assert record is not None
    out: dict[str, Any] = {"phase": record.phase}
    for row in record.targets:
        value = fleet.store.get_value("sandbox", row.endpoint)
        out[row.endpoint] = None if value is None else sorted(value["variants"])
    return out


def _check_journals(store: SqliteStateStore, fleet_id: str, targets: int) -> None:
    import itertools

    for i in range(targets):
        try:
            events = store.events(member_id(fleet_id, i))
        except UsageError:
            continue
        kinds = [e.kind for e in events]
        assert kinds.count("started") <= 1
        assert kinds.count("rolled_back") + kinds.count("promoted") <= 1
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
    for name in ("us", "eu", "sa"):
        value = store.get_value("sandbox", name)
        if value is not None:  # no traffic change applied twice
            history = [entry[1] for entry in value["history"]]
            assert all(a != b for a, b in itertools.pairwise(history)), (name, history)


@pytest.mark.slow
@pytest.mark.parametrize(
    "eu,end", [(0.06, "rolled_back"), (0.01, "succeeded")], ids=["bad-wave-2", "good"]
)
def test_a_fleet_killed_at_every_write_is_finished_by_the_next_driver(tmp_path, eu, end):
    plan = small(eu)
    reference = Fleet(tmp_path / "ref", plan)
    reference.drive()
    expected = _ends(reference, reference.record.id)
    assert expected["phase"] == end
    assert expected["sa"] == (None if end == "rolled_back" else ["v2"])
    counting = DyingStore(tmp_path / "count.db", 10**9, False)
    probe = Fleet(tmp_path / "count", plan, store=counting)
    probe.drive()
    total = counting.writes
    assert total > 20
    tried = 0
    # the first two writes note the fleet active and record it (a kill between them leaves a
    # note that names no fleet: see test_reconcile_finds_a_fleet_whose_run_died_...)
    for die_at in range(3, total + 1):
        for before in (True, False):
            folder = tmp_path / f"{die_at}-{before}"
            folder.mkdir()
            dying = DyingStore(folder / "state.db", die_at, before)
            fleet = Fleet(folder, plan, store=dying)
            with pytest.raises(Killed):
                fleet.drive()
            tried += 1
            store = SqliteStateStore(folder / "state.db")
            keys = [f"fleet:{fleet.record.id}"] + [
                r.endpoint_key for r in store.list_rollouts(limit=100)
            ]
            for key in keys:
                held = store.current_lease(key)
                if held is not None:
                    store.release_lease(held)  # the dead driver's leases: as if they lapsed
            again = Fleet.__new__(Fleet)
            again.store, again.path, again.passes, again.journal = store, folder, [], []
            again.record = fleet.record
            again.runner = again.new_runner(store)
            again.drive()
            assert _ends(again, fleet.record.id) == expected, (die_at, before)
            _check_journals(store, fleet.record.id, 3)
    assert tried == 2 * (total - 2)
    print(f"fleet kill sweep: {tried} kill points, every one finished as the uninterrupted run")


def test_reconcile_passes_finish_a_fleet_its_driver_left(tmp_path):
    """cron's `reconcile` does a fleet's due work too: the fleets of the active rollouts are
    advanced once a pass, so a fleet whose `run` went away is finished pass by pass."""
    from mlrollout.engine.fleet import find_fleet, reconcile_fleets
    from mlrollout.engine.runner import Runner

    fleet = Fleet(tmp_path, small(0.01))
    fleet.runner.drive(fleet.record.id, max_passes=2)  # wave 1 started and held, then gone
    passes = 0
    while passes < 40:
        passes += 1
        Runner(fleet.store).reconcile()
        reconcile_fleets(fleet.store)
        record = find_fleet(fleet.store, fleet.record.id)
        assert record is not None
        if record.done:
            break
    assert record.phase == "succeeded", (passes, record.reason)
    for name in ("us", "eu", "sa"):
        assert fleet.endpoint(name) == {"v2": 100.0}


def test_a_hand_written_plan_may_not_set_fleet(tmp_path):
    """`fleet:` makes a rollout hold at 100 % until its fleet releases it: in a plan a user
    wrote, with no fleet to release it, it would hold for ever, so the file is refused where
    the key is; the rollouts mlrollout makes for a fleet's targets still carry it."""
    from mlrollout.plan.loader import load_plan

    plain = "\n".join(
        line
        for line in fleet_text().splitlines()
        if not line.startswith(("  - {provider", "waves:"))
    ).replace("targets:", "target: {provider: local, endpoint: x}")
    plain = plain.lstrip("\n") + "\n"
    path = tmp_path / "plan.yaml"
    path.write_text(plain + "fleet: {id: f-1, index: 0}\n")
    with pytest.raises(PlanError) as err:
        load_plan(path)
    [issue] = err.value.issues
    assert (issue.path, issue.line, issue.column) == ("fleet", plain.count("\n") + 1, 1)
    assert "set by mlrollout" in issue.message
    assert parse_plan(plain + "fleet: {id: f-1, index: 0}\n").plan.fleet is not None


def test_reconcile_finds_a_fleet_whose_run_died_before_its_first_target(tmp_path):
    """A fleet recorded, then its `run` killed before any target's rollout existed: no active
    rollout leads to it, and yet the next `reconcile` passes start it and finish it."""
    from mlrollout.engine.fleet import find_fleet, reconcile_fleets
    from mlrollout.engine.runner import Runner

    fleet = Fleet(tmp_path, small(0.01))  # created, never driven
    assert fleet.store.list_rollouts() == []
    # and one whose `run` was killed between noting it and recording it: nothing to drive
    fleet.store.put_value(
        "fleets", "_active", {"v": 1, "ids": ["fleet-gone-000000", fleet.record.id]}, lease=None
    )
    seen = []
    for _ in range(40):
        Runner(fleet.store).reconcile()
        seen += [fid for fid, _ in reconcile_fleets(fleet.store)]
        record = find_fleet(fleet.store, fleet.record.id)
        assert record is not None
        if record.done:
            break
    assert record.phase == "succeeded"
    assert seen.count(fleet.record.id) >= 2
    # once it has ended and been reported, later passes leave it (and the hint) alone
    assert reconcile_fleets(fleet.store) == []
    assert fleet.store.get_value("fleets", "_active") == {"v": 1, "ids": []}
