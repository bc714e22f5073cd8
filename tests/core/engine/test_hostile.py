"""Trying to break a rollout as a hostile user would (issue 11): an abort while a change is in
flight, a start that fails, a locked or deleted store, two starts at once, two state stores on one
endpoint, a re-run of a finished plan, a broken reporter. Each test fails on the main this issue
started from."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from mlrollout.clock import VirtualClock
from mlrollout.contracts import OwnerMark
from mlrollout.engine.engine import Engine, RolloutState
from mlrollout.engine.phases import Phase
from mlrollout.engine.runner import Runner
from mlrollout.errors import (
    EndpointOwned,
    NeedsHuman,
    ProviderAuthError,
    ProviderError,
    RolloutActive,
    StateLost,
)
from mlrollout.plan.loader import parse_plan
from mlrollout.sandbox.endpoint import LocalEndpoint
from mlrollout.sandbox.provider import LocalProvider
from mlrollout.state.base import Event
from mlrollout.state.sqlite import SqliteStateStore

START = 1_800_000_000.0
PLAN = """
version: 1
name: hostile
target: {provider: local, endpoint: ep WORLD}
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
    v2: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}
"""


def plan(world: Path | None = None) -> Any:
    where = f", endpoint_url: {world}" if world else ""
    return parse_plan(PLAN.replace(" WORLD", where), "hostile.yaml")


class Killed(BaseException):
    """The process died (not an Exception: nothing may catch it and carry on)."""


def die_after(kind: str) -> Any:
    """A listener that kills the runner right after the first event of ``kind`` is recorded."""

    def listener(event: Event, state: RolloutState) -> None:
        if event.kind == kind:
            raise Killed

    return listener


def sandbox_weights(store: SqliteStateStore) -> dict[str, float]:
    value = store.get_value("sandbox", "ep")
    assert value is not None
    return {n: v["weight"] for n, v in value["variants"].items()}


# ------------------------------------------------------------------------ 1: abort in flight


def test_an_abort_recorded_while_a_traffic_change_is_in_flight_rolls_back(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    runner = Runner(store, holder="runner-1")
    record = runner.create(plan())
    # the runner dies between `set_traffic.requested` and its `.applied` record
    engine = runner.open_engine(record, VirtualClock(START))
    engine.listeners.append(die_after("set_traffic.requested"))
    with pytest.raises(Killed):
        for _ in range(20):
            engine.tick()
    assert store.get_rollout(record.id).snapshot["pending"]["action"] == "set_traffic"
    runner.command(record.id, "abort", by="alice", reason="paged at 3am")
    outcome = Runner(store, holder="runner-2").drive(record.id, clock=VirtualClock(START))
    assert outcome.phase == Phase.ROLLED_BACK
    assert "aborted by alice (paged at 3am)" in (outcome.state.reason or "")
    assert sandbox_weights(store) == {"v1": 100.0}
    kinds = [e.kind for e in store.events(record.id)]
    assert "promoted" not in kinds
    assert kinds.count("set_traffic.requested") == kinds.count("set_traffic.applied")


def test_an_abort_gives_up_a_forward_change_that_keeps_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 50 % step fails for good (a quota the region lacks): every resume used to retry the
    change in flight before reading any command, so an abort never got past it."""
    store = SqliteStateStore(tmp_path / "state.db")
    runner = Runner(store, holder="runner-1")
    record = runner.create(plan())
    shift = LocalEndpoint.set_traffic

    def over_quota(self: LocalEndpoint, weights: Any) -> Any:
        if weights.get("v2", 0.0) > 10.0:
            raise ProviderError("ResourceLimitExceeded: no capacity for v2 at 50%")
        return shift(self, weights)

    monkeypatch.setattr(LocalEndpoint, "set_traffic", over_quota)
    with pytest.raises(NeedsHuman) as failed:
        runner.drive(record.id, clock=VirtualClock(START))
    assert f"`mlrollout abort {record.id}` rolls back" in (failed.value.hint or "")
    # resuming retries the change, and fails the same way: nothing else moves
    with pytest.raises(NeedsHuman):
        Runner(store, holder="runner-2").drive(record.id, clock=VirtualClock(START))
    assert store.get_rollout(record.id).snapshot["pending"]["weights"]["v2"] == 50.0
    assert sandbox_weights(store) == {"v1": 90.0, "v2": 10.0}
    runner.command(record.id, "abort", by="alice", reason="no quota this week")
    outcome = Runner(store, holder="runner-3").drive(record.id, clock=VirtualClock(START))
    assert outcome.phase == Phase.ROLLED_BACK
    assert "aborted by alice (no quota this week)" in (outcome.state.reason or "")
    assert sandbox_weights(store) == {"v1": 100.0}
    started = [e for e in store.events(record.id) if e.kind == "rollback.started"]
    assert len(started) == 1
    given_up = started[0].data["abandoned"]
    assert given_up["action"] == "set_traffic" and given_up["weights"]["v2"] == 50.0
    assert "ResourceLimitExceeded" in given_up["error"]
    assert store.get_rollout(record.id).snapshot["pending"] is None


def test_a_promote_recorded_while_a_change_keeps_failing_is_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only an abort gives the failing change up; a promote stays unread until it can act."""
    store = SqliteStateStore(tmp_path / "state.db")
    runner = Runner(store)
    record = runner.create(plan())
    shift = LocalEndpoint.set_traffic
    broken = {"on": True}

    def flaky(self: LocalEndpoint, weights: Any) -> Any:
        if broken["on"] and weights.get("v2", 0.0) > 10.0:
            raise ProviderError("ThrottlingException: rate exceeded")
        return shift(self, weights)

    monkeypatch.setattr(LocalEndpoint, "set_traffic", flaky)
    with pytest.raises(NeedsHuman):
        runner.drive(record.id, clock=VirtualClock(START))
    runner.command(record.id, "promote", full=True)
    with pytest.raises(NeedsHuman):
        runner.drive(record.id, clock=VirtualClock(START))
    broken["on"] = False
    outcome = runner.drive(record.id, clock=VirtualClock(START))
    assert outcome.phase == Phase.SUCCEEDED
    assert "promote.forced" in [e.kind for e in store.events(record.id)]


# ----------------------------------------------------------------------- 2: a failed start


def test_a_start_that_fails_before_any_change_frees_the_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    opened = LocalProvider.open

    def no_credentials(self: LocalProvider, context: Any) -> Any:
        raise ProviderAuthError("no credentials found", hint="log in")

    monkeypatch.setattr(LocalProvider, "open", no_credentials)
    runner = Runner(store)
    first = runner.create(plan())
    with pytest.raises(ProviderAuthError):
        runner.drive(first.id, clock=VirtualClock(START))
    ended = store.get_rollout(first.id)
    assert ended.phase == "aborted"
    assert "could not start: no credentials found" in ended.snapshot["reason"]
    # the credentials are fixed: the retry just works (no "still active", exit 5)
    monkeypatch.setattr(LocalProvider, "open", opened)
    second = runner.create(plan())
    assert runner.drive(second.id, clock=VirtualClock(START)).phase == Phase.SUCCEEDED


def test_abort_of_a_rollout_that_never_started_needs_no_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    runner = Runner(store, holder="ci")
    record = runner.create(plan())

    def unreachable(self: LocalProvider, context: Any) -> Any:
        raise AssertionError("abort of an unstarted rollout must not open the provider")

    monkeypatch.setattr(LocalProvider, "open", unreachable)
    runner.command(record.id, "abort")
    outcome = runner.drive(record.id)
    assert outcome.phase == Phase.ABORTED
    assert outcome.exit_code == 1
    assert store.get_rollout(record.id).phase == "aborted"


# ------------------------------------------------------- 5: a locked store, the first error wins


def test_a_store_locked_mid_rollout_is_exit_5_not_6(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStateStore(path, busy_timeout=0.2)
    runner = Runner(store)
    record = runner.create(plan())
    locker = sqlite3.connect(path, isolation_level=None)

    def lock_after_first_change(event: Event, state: RolloutState) -> None:
        if event.kind == "set_traffic.applied" and not locker.in_transaction:
            locker.execute("BEGIN EXCLUSIVE")  # another process holds the file

    runner.listeners.append(lock_after_first_change)
    try:
        with pytest.raises(NeedsHuman) as caught:
            runner.drive(record.id, clock=VirtualClock(START))
    finally:
        locker.rollback()
        locker.close()
    # traffic moved: never "a provider error before any change" (exit 6), even though releasing
    # the lease in the same locked store failed too
    assert caught.value.exit_code == 5
    assert "locked" in caught.value.message
    assert sandbox_weights(store) == {"v1": 90.0, "v2": 10.0}


# ---------------------------------------------------------------- 7: two starts at one moment


def test_two_runs_starting_together_create_one_rollout(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SqliteStateStore(path).close()
    barrier = threading.Barrier(8)
    created: list[str] = []
    refused: list[Exception] = []

    def start() -> None:
        runner = Runner(SqliteStateStore(path))
        barrier.wait()
        try:
            created.append(runner.create(plan()).id)
        except RolloutActive as exc:
            refused.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(created) == 1
    assert len(refused) == 7
    assert all(created[0] in str(exc) for exc in refused)


# ----------------------------------------------------------- 8: the state deleted mid-run


def test_deleting_the_state_directory_mid_run_is_exit_5(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    store = SqliteStateStore(folder / "state.db")
    runner = Runner(store)
    record = runner.create(plan())

    def delete_after_first_change(event: Event, state: RolloutState) -> None:
        if event.kind == "set_traffic.applied" and folder.exists():
            shutil.rmtree(folder)

    runner.listeners.append(delete_after_first_change)
    with pytest.raises(StateLost, match="was deleted while this runner used it") as caught:
        runner.drive(record.id, clock=VirtualClock(START))
    assert caught.value.exit_code == 5


def test_a_state_file_replaced_mid_run_is_lost_too(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SqliteStateStore(path)
    runner = Runner(store)
    record = runner.create(plan())

    def replace_after_first_change(event: Event, state: RolloutState) -> None:
        if event.kind == "set_traffic.applied":
            copy = tmp_path / "copy.db"
            shutil.copy(path, copy)
            copy.replace(path)  # restored from a backup by someone, under the runner's feet

    runner.listeners.append(replace_after_first_change)
    with pytest.raises(StateLost, match="replaced by another file"):
        runner.drive(record.id, clock=VirtualClock(START))


# ------------------------------------------------------------ 6: one endpoint, two stores


def test_a_runner_with_another_state_store_is_refused_by_the_endpoints_mark(
    tmp_path: Path,
) -> None:
    world = tmp_path / "world.db"
    wall = [START]
    store_a = SqliteStateStore(tmp_path / "a.db", wall=lambda: wall[0])
    store_b = SqliteStateStore(tmp_path / "b.db", wall=lambda: wall[0])
    a = Runner(store_a, holder="ci-a", wall=lambda: wall[0])
    b = Runner(store_b, holder="ci-b", wall=lambda: wall[0])
    record_a = a.create(plan(world))
    engine = a.open_engine(record_a, VirtualClock(START))
    engine.listeners.append(die_after("set_traffic.applied"))  # A dies mid-way, marked
    a._take_lease(record_a.endpoint_key)
    with pytest.raises(Killed):
        for _ in range(20):
            engine.tick()
    shared = SqliteStateStore(world)
    mark = OwnerMark.from_tags((shared.get_value("sandbox", "ep") or {}).get("owner"))
    assert mark is not None and mark.rollout_id == record_a.id and mark.holder == "ci-a"
    record_b = b.create(plan(world))
    with pytest.raises(EndpointOwned, match=record_a.id) as caught:
        b.drive(record_b.id, clock=VirtualClock(START))
    assert caught.value.exit_code == 5
    assert store_b.get_rollout(record_b.id).phase == "aborted"  # changed nothing, frees B
    assert sandbox_weights(shared) == {"v1": 90.0, "v2": 10.0}  # B changed nothing
    # A's own store resumes it (same rollout id: the mark is its own) and ends the mark
    outcome = a.drive(record_a.id, clock=VirtualClock(START))
    assert outcome.phase == Phase.SUCCEEDED
    assert (shared.get_value("sandbox", "ep") or {}).get("owner") is None


def test_a_mark_that_lapsed_is_taken_over_and_checked_before_every_change(tmp_path: Path) -> None:
    world = tmp_path / "world.db"
    wall = [START]
    shared = SqliteStateStore(world)
    stale = OwnerMark("gone-123456", "old@host pid 1", START - 1)  # expired a second ago
    shared.put_value("sandbox", "ep", _fresh_world(stale), lease=None)
    store = SqliteStateStore(tmp_path / "a.db", wall=lambda: wall[0])
    runner = Runner(store, holder="ci-a", wall=lambda: wall[0])
    record = runner.create(plan(world))
    engine = runner.open_engine(record, VirtualClock(START))
    for _ in range(4):  # started, prepare (claims the endpoint), set_traffic
        engine.tick()
    mark = OwnerMark.from_tags((shared.get_value("sandbox", "ep") or {}).get("owner"))
    assert mark is not None and mark.rollout_id == record.id
    # someone of another store claims it meanwhile: the next change is refused
    intruder = OwnerMark("other-abcdef", "ci-b", START + 600)
    value = shared.get_value("sandbox", "ep") or {}
    value["owner"] = intruder.to_tags()
    shared.put_value("sandbox", "ep", value, lease=None)
    with pytest.raises(EndpointOwned, match="other-abcdef"):
        _tick_until_change(engine)


def _fresh_world(owner: OwnerMark) -> dict[str, Any]:
    return {
        "origin": START,
        "order": ["v1"],
        "variants": {
            "v1": {"weight": 100.0, "model": None, "instance_type": None, "instance_count": 1}
        },
        "history": [[START, {"v1": 100.0}]],
        "shadow": {},
        "owner": owner.to_tags(),
    }


def _tick_until_change(engine: Engine) -> None:
    assert isinstance(engine.clock, VirtualClock)
    for _ in range(50):
        result = engine.tick()
        if result.next_at is not None:
            engine.clock.set(result.next_at)


# ------------------------------------------------------------------------------ papercuts


def test_re_running_a_plan_that_already_went_through_is_a_no_op(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    runner = Runner(store)
    first = runner.create(plan())
    assert runner.drive(first.id, clock=VirtualClock(START)).phase == Phase.SUCCEEDED
    again = runner.create(plan())
    outcome = runner.drive(again.id, clock=VirtualClock(START + 3600))
    assert outcome.phase == Phase.SUCCEEDED
    assert outcome.exit_code == 0
    assert "v2 already serves 100%" in (outcome.state.reason or "")
    assert [e.kind for e in store.events(again.id)] == ["promoted"]


def test_a_reporter_that_raises_never_stops_the_rollout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = SqliteStateStore(tmp_path / "state.db")

    def broken(event: Event, state: RolloutState) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    runner = Runner(store, listeners=[broken])
    record = runner.create(plan())
    assert runner.drive(record.id, clock=VirtualClock(START)).phase == Phase.SUCCEEDED
    assert capsys.readouterr().err.count("the rollout goes on") == 1
