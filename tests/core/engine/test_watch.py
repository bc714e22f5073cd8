"""`reconcile --watch --workers N` (issue 21, part 3): watchers that share one state store drive
every sandbox rollout to the end its plan says, never one rollout by two workers at once (checked
from what each worker wrote to the journal, and from who held each lease while it wrote); a
SIGTERM'd watcher hands its leases back and another watcher finishes its rollouts; new rollouts
and commands are picked up; the sleep between passes is the engine's next due time, capped.

The watchers run on virtual time (an injected clock): nothing here sleeps on the wall clock."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlrollout.clock import VirtualClock
from mlrollout.engine.runner import Runner
from mlrollout.engine.watch import PassReport, Watcher
from mlrollout.errors import LeaseHeld, StateUnavailable
from mlrollout.plan.loader import parse_plan
from mlrollout.state.sqlite import SqliteStateStore
from mlrollout.testing.witness import Witness, WitnessedStore, assert_one_driver_at_a_time

REPO = Path(__file__).resolve().parents[3]
GOOD = (REPO / "plans" / "local-canary-good.yaml").read_text()
BAD = (REPO / "plans" / "local-canary-bad.yaml").read_text()
APPROVAL = (REPO / "plans" / "local-approval.yaml").read_text()
START = 1_800_000_000.0


def plan_text(template: str, endpoint: str) -> str:
    for name in ("churn-scoring", "recsys"):
        template = template.replace(f"endpoint: {name}", f"endpoint: {endpoint}")
    assert f"endpoint: {endpoint}" in template
    return template


def create(store: SqliteStateStore, template: str, endpoint: str) -> str:
    return (
        Runner(store, holder="creator")
        .create(parse_plan(plan_text(template, endpoint), "p.yaml"))
        .id
    )


def create_mixed(path: Path, count: int, *, bad_every: int) -> dict[str, str]:
    """``count`` rollouts on endpoints of their own, every ``bad_every``-th with a bad candidate:
    {id: the phase its plan ends in}."""
    store = SqliteStateStore(path)
    try:
        return {
            create(store, BAD if i % bad_every == 0 else GOOD, f"ep{i}"): (
                "rolled_back" if i % bad_every == 0 else "succeeded"
            )
            for i in range(count)
        }
    finally:
        store.close()


@dataclass
class OnVirtualTime:
    """A state store whose wall clock is the test's virtual clock (as the watcher's is)."""

    clock: VirtualClock
    path: Path
    store: SqliteStateStore

    def open(self) -> SqliteStateStore:
        return SqliteStateStore(self.path, wall=self.clock.now)


@pytest.fixture
def vt(tmp_path: Path) -> Iterator[OnVirtualTime]:
    clock = VirtualClock(START)
    world = OnVirtualTime(
        clock, tmp_path / "state.db", SqliteStateStore(tmp_path / "state.db", wall=clock.now)
    )
    yield world
    world.store.close()


def phases(path: Path) -> dict[str, str]:
    store = SqliteStateStore(path)
    try:
        return {r.id: r.phase for r in store.list_rollouts(limit=1000)}
    finally:
        store.close()


# ----------------------------------------------------------- many watchers on one store


def test_three_watchers_with_two_workers_each_drive_every_rollout_once_at_a_time(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    witness = Witness()
    expected = create_mixed(path, 9, bad_every=3)

    def watch(name: str) -> None:
        watcher = Watcher(
            lambda: WitnessedStore(path, witness),
            workers=2,
            interval=30,
            clock=VirtualClock(START),
            # one as if on another machine; two in this process under its default holder name
            holder=f"{name}@host-{name} pid 1" if name == "a" else None,
        )
        codes[name] = watcher.run(max_passes=3, on_pass=reports.setdefault(name, []).append)

    codes: dict[str, int] = {}
    reports: dict[str, list[PassReport]] = {}
    threads = [threading.Thread(target=watch, args=(n,)) for n in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert phases(path) == expected
    assert witness.overlaps == []
    assert_one_driver_at_a_time(witness.writes)
    # each rollout's journal: started once, ended once
    store = SqliteStateStore(path)
    for rid, phase in expected.items():
        kinds = [e.kind for e in store.events(rid)]
        assert kinds.count("started") == 1
        assert kinds.count("promoted" if phase == "succeeded" else "rolled_back") == 1
    store.close()
    # every rollout ended in exactly one watcher's pass; a rolled-back one makes that exit 1
    ended = [d.record.id for rs in reports.values() for r in rs for d in r.ended]
    assert sorted(ended) == sorted(expected)
    for name, code in codes.items():
        rolled_back = any(
            d.result.phase.value == "rolled_back"  # type: ignore[union-attr]
            for r in reports[name]
            for d in r.ended
        )
        assert code == (1 if rolled_back else 0), (name, code)


def test_a_rollout_whose_lease_another_holds_is_skipped_then_taken_once_it_lapses(
    vt: OnVirtualTime,
) -> None:
    clock, store = vt.clock, vt.store
    rid = create(store, GOOD, "ep")
    endpoint = store.get_rollout(rid).endpoint_key
    store.acquire_lease(endpoint, "ci@elsewhere pid 7", 600)
    watcher = Watcher(
        vt.open,
        interval=60,
        clock=clock,
        holder="me@h pid 1",
    )
    first = watcher.run_pass()
    [done] = first.done
    assert isinstance(done.result, LeaseHeld) and "ci@elsewhere pid 7" in done.result.message
    assert first.worst == 0 and first.elsewhere == 1 and first.driven == 0
    assert store.get_rollout(rid).phase == "pending"  # not waited on, not touched
    assert first.next_in == 60  # looked at again at the next pass, not at once
    clock.advance(601)  # the other runner's lease lapses
    second = watcher.run_pass()
    assert [d.record.id for d in second.ended] == [rid]
    assert store.get_rollout(rid).phase == "succeeded"
    watcher.close()


# ------------------------------------------------------------ due times and new work


class TiedClock:
    """The engine's clock on the watcher's virtual timeline, but not "virtual" for the runner:
    a drive stops as soon as the next tick lies in the future (as on a real endpoint), and the
    watcher's sleep until then moves both."""

    virtual = False

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock

    def now(self) -> float:
        return self.clock.now()

    def sleep(self, seconds: float) -> None:
        raise AssertionError("the watcher, not the runner, sleeps between ticks")


def test_the_watcher_sleeps_until_the_engines_next_due_time_capped_by_the_interval(
    vt: OnVirtualTime,
) -> None:
    clock, store = vt.clock, vt.store
    rid = create(store, GOOD, "ep")
    reports: list[PassReport] = []
    watcher = Watcher(
        vt.open,
        interval=45,
        clock=clock,
        clock_for_record=lambda record: TiedClock(clock),
    )
    code = watcher.run(max_passes=200, on_pass=reports.append)
    assert code == 0
    assert store.get_rollout(rid).phase == "succeeded"
    ends = [i for i, r in enumerate(reports) if r.ended]
    assert len(ends) == 1
    going = reports[: ends[0] + 1]
    assert all(0 < r.next_in <= 45 for r in reports)  # never a hot loop, never past the cap
    for previous, current in itertools.pairwise(going):
        if previous.next_in < 45:  # woken for due work: the rollout's tick, exactly then
            assert current.driven == 1, (previous, current)
        if current.driven == 0:  # nothing due: only the cap woke it
            assert previous.next_in == 45, (previous, current)
    # it was driven on the analysis interval's grid (60 s), every look of the plan
    driven_at = [r.at - START for r in going if r.driven]
    assert all(at % 60 == 0 for at in driven_at), driven_at
    assert len(driven_at) >= 20  # 2 x 10-minute analyses at 60 s, then the pause
    # simulated time passed (the sleeps jumped), and once it ended nothing was due
    assert clock.now() - START >= 25 * 60
    assert all(r.active == 0 and r.next_in == 45 for r in reports[ends[0] + 1 :])


def test_new_rollouts_are_picked_up_and_a_waiting_one_costs_nothing_until_a_command(
    vt: OnVirtualTime,
) -> None:
    clock, store = vt.clock, vt.store
    waiting = create(store, APPROVAL, "recsys")
    watcher = Watcher(vt.open, interval=30, clock=clock)
    first = watcher.run_pass()
    assert store.get_rollout(waiting).phase == "waiting"
    assert first.worst == 3  # waits for a human
    again = watcher.run_pass()
    assert again.active == 1 and again.done == []  # not driven again: nothing changed
    new = create(store, GOOD, "fresh")
    third = watcher.run_pass()
    assert [d.record.id for d in third.done] == [new]
    assert store.get_rollout(new).phase == "succeeded"
    Runner(store, holder="a human").command(waiting, "promote")
    fourth = watcher.run_pass()
    assert [d.record.id for d in fourth.done] == [waiting]
    assert store.get_rollout(waiting).phase == "succeeded"
    watcher.close()


def test_memory_stays_flat_over_many_passes(vt: OnVirtualTime) -> None:
    clock, store = vt.clock, vt.store
    for i in range(5):
        create(store, APPROVAL, f"ep{i}")
    watcher = Watcher(vt.open, interval=1, clock=clock)
    for _ in range(50):  # warm up: every rollout driven to its approval, caches filled
        watcher.run_pass()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(1000):
            watcher.run_pass()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown < 64 * 1024, grown  # a leak of 64 bytes a pass would show as 64 kB
    watcher.close()


class FlakyStore(SqliteStateStore):
    """Lists nothing but an error on the passes named in ``fail_on`` (a throttled bucket)."""

    def __init__(self, path: Path, fail_on: set[int], **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.fail_on = fail_on
        self.lists = 0

    def list_rollouts(self, **kwargs: Any) -> Any:
        self.lists += 1
        if self.lists in self.fail_on:
            raise StateUnavailable("state store said 503 Slow Down", hint="try again")
        return super().list_rollouts(**kwargs)


@pytest.mark.parametrize("fail_on,raises", [({1}, True), ({2}, False)])
def test_a_store_that_fails_later_in_a_watch_is_tried_again_but_not_at_the_start(
    tmp_path: Path, fail_on: set[int], raises: bool
) -> None:
    clock = VirtualClock(START)
    path = tmp_path / "state.db"
    rid = create(SqliteStateStore(path), APPROVAL, "recsys")
    stores: list[FlakyStore] = []

    def open_store() -> FlakyStore:
        stores.append(FlakyStore(path, fail_on if not stores else set(), wall=clock.now))
        return stores[-1]

    reports: list[PassReport] = []
    watcher = Watcher(open_store, interval=30, clock=clock)
    if raises:  # a wrong --state or missing credentials: say so at once (exit 6), no watch
        with pytest.raises(StateUnavailable):
            watcher.run(max_passes=3, on_pass=reports.append)
        assert reports == []
        return
    code = watcher.run(max_passes=3, on_pass=reports.append)
    assert [r.error is not None for r in reports] == [False, True, False]
    assert reports[1].next_in == 30 and reports[1].worst == 6
    assert code == 3  # still waiting for a human at the end; the failed pass did no harm
    assert phases(path) == {rid: "waiting"}


# -------------------------------------------------------------------- through the CLI


def mlrollout(
    state: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLROLLOUT_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mlrollout", "--state", str(state), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )


@pytest.mark.parametrize(
    "args,named",
    [
        (["--workers", "4"], "--workers"),
        (["--interval", "5"], "--interval"),
        (["--max-passes", "2", "--workers", "2"], "--workers, --max-passes"),
    ],
)
def test_watch_options_without_watch_are_a_usage_error_that_says_so(
    tmp_path: Path, args: list[str], named: str
) -> None:
    done = mlrollout(tmp_path / "state", "reconcile", *args)
    assert done.returncode == 2, done.stderr
    assert f"{named} only applies to `reconcile --watch`" in done.stderr
    assert "Traceback" not in done.stderr


def test_watch_prints_a_heartbeat_per_pass_and_exits_with_the_worst_outcome(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    store = SqliteStateStore(state / "state.db")
    good, bad = create(store, GOOD, "ep1"), create(store, BAD, "ep2")
    store.close()
    done = mlrollout(state, "reconcile", "--watch", "--max-passes", "2", "--interval", "0.01")
    assert done.returncode == 1, done.stderr  # one rolled back on the way
    lines = done.stdout.splitlines()
    beats = [line for line in lines if " pass " in line]
    assert len(beats) == 2
    assert "pass 1: 2 active, 2 driven, 0 driven elsewhere, 2 ended, 0 errors" in beats[0]
    assert "pass 2: 0 active, 0 driven" in beats[1]
    assert f"{good}: succeeded" in lines and f"{bad}: rolled_back" in lines
    assert phases(state / "state.db") == {good: "succeeded", bad: "rolled_back"}


def test_workers_must_be_at_least_one(tmp_path: Path) -> None:
    done = mlrollout(tmp_path / "state", "reconcile", "--watch", "--workers", "0")
    assert done.returncode == 2 and "--workers" in done.stderr and "Traceback" not in done.stderr


#: Sends this process a SIGTERM right after its N-th journal write (a watcher mid-rollout), and
#: logs every fenced write (rollout, seq, holder, token, thread) to MLROLLOUT_TEST_WRITES.
SIGTERM_AFTER_WRITE = """
import json, os, signal, threading
from mlrollout.state import sqlite as _sqlite

_term_at = int(os.environ.get("MLROLLOUT_TEST_TERM_AT", "0"))
_log = os.environ["MLROLLOUT_TEST_WRITES"]
_append = _sqlite.SqliteStateStore.append_event
_writes = 0
_lock = threading.Lock()


def append_event(self, rollout_id, kind, data, **kwargs):
    global _writes
    event = _append(self, rollout_id, kind, data, **kwargs)
    lease = kwargs.get("lease")
    with _lock:
        _writes += 1
        if lease is not None:
            with open(_log, "a") as f:
                row = [rollout_id, event.seq, lease.holder, lease.token, threading.get_ident()]
                f.write(json.dumps(row) + "\\n")
        if _writes == _term_at:
            os.kill(os.getpid(), signal.SIGTERM)
    return event


_sqlite.SqliteStateStore.append_event = append_event
"""


def hook(tmp_path: Path, term_at: int = 0) -> tuple[dict[str, str], Path]:
    folder = tmp_path / "hook"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SIGTERM_AFTER_WRITE)
    log = tmp_path / f"writes-{term_at}.jsonl"
    env = {
        "PYTHONPATH": str(folder),
        "MLROLLOUT_TEST_TERM_AT": str(term_at),
        "MLROLLOUT_TEST_WRITES": str(log),
    }
    return env, log


def read_writes(*logs: Path) -> list[tuple[str, int, str, int, int]]:
    rows = []
    for i, log in enumerate(logs):
        if log.exists():  # threads of two processes are two drivers even if the ids match
            for line in log.read_text().splitlines():
                r, seq, holder, token, thread = json.loads(line)
                rows.append((r, seq, holder, token, thread * 10 + i))
    return rows


def test_a_sigtermed_watcher_hands_its_leases_back_and_another_finishes_its_rollouts(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    store = SqliteStateStore(state / "state.db")
    ids = [create(store, GOOD, f"ep{i}") for i in range(4)]
    keys = [store.get_rollout(rid).endpoint_key for rid in ids]
    store.close()
    env, log = hook(tmp_path, term_at=5)  # mid-way through the first rollout a worker drives
    done = mlrollout(
        state, "reconcile", "--watch", "--workers", "2", "--interval", "0.05", "-o", "json", env=env
    )
    assert done.returncode == 0, done.stderr
    assert "leases handed back" in done.stderr and "Traceback" not in done.stderr
    beats = [json.loads(line) for line in done.stdout.splitlines()]
    assert [b["pass"] for b in beats] == [1]  # the pass in flight finished; no new one began
    store = SqliteStateStore(state / "state.db")
    assert all(store.current_lease(key) is None for key in keys)  # handed back, not left to lapse
    unfinished = [rid for rid in ids if store.get_rollout(rid).phase != "succeeded"]
    assert unfinished  # it stopped mid-way, and started nothing after the signal
    store.close()
    # another watcher (another machine: its own holder name) finishes them
    watcher = Watcher(
        lambda: SqliteStateStore(state / "state.db"),
        clock=VirtualClock(START),
        holder="other@elsewhere pid 2",
    )
    assert watcher.run(max_passes=2) == 0
    assert set(phases(state / "state.db").values()) == {"succeeded"}
    assert_one_driver_at_a_time(read_writes(log))
    store = SqliteStateStore(state / "state.db")
    for rid in ids:
        assert [e.kind for e in store.events(rid)].count("started") == 1
    store.close()


def test_three_watcher_processes_on_one_store_never_drive_a_rollout_twice_at_once(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    expected = create_mixed(state / "state.db", 12, bad_every=4)
    logs = []
    procs = []
    for n in range(3):
        env, log = hook(tmp_path / f"w{n}")
        logs.append(log)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MLROLLOUT_")}
        environ.update(env)
        argv = [sys.executable, "-m", "mlrollout", "--state", str(state), "reconcile", "--watch"]
        argv += ["--workers", "3", "--interval", "0.05", "--max-passes", "4", "-o", "json"]
        procs.append(
            subprocess.Popen(
                argv,
                env=environ,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode in (0, 1) for p in procs), outs
    assert phases(state / "state.db") == expected
    assert_one_driver_at_a_time(read_writes(*logs))
    ended: list[str] = []
    for out, _ in outs:
        for line in out.splitlines():
            ended += [
                r["id"]
                for r in json.loads(line)["rollouts"]
                if "exit_code" in r and r.get("phase") in ("succeeded", "rolled_back")
            ]
    assert sorted(ended) == sorted(expected)  # each ended once, in one of the watchers
