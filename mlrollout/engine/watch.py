"""``reconcile --watch``: keep doing the due work of every active rollout, with N workers.

A :class:`Watcher` runs passes. Each pass lists the active rollouts once, picks those that are
due, and hands them to a pool of worker threads (the work is I/O: provider calls and state
writes). Every worker has a :class:`~mlrollout.engine.runner.Runner` (and a state store) of its
own, under a holder name of its own, so the endpoint leases — not anything in this process —
decide who drives a rollout: one worker at a time, whether the others are threads here or
watchers on other machines sharing the store. A rollout whose lease is held elsewhere is
skipped (it is that holder's work), never waited on.

When a rollout is due: it has not been driven by this watcher yet, its journal moved since (a
``promote``/``abort`` command, another runner's work), or the time its engine said the next tick
is due has come. Between passes the watcher sleeps until the earliest of those times, at most
``interval`` (new rollouts and commands are noticed within it). Nothing grows from pass to pass:
the only memory kept is one small entry per active rollout, pruned every pass.

A stop (SIGTERM/SIGINT through :meth:`Watcher.stop`) finishes each worker's tick in flight,
records it, hands the lease back, starts nothing new and ends the watch (``exit 0``).

The clock is injected: with a virtual clock the sleeps between passes jump, so tests drive many
passes without waiting on the wall clock.

Fleets (later) are one more :class:`WorkSource`: what is due and how a worker does it.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from mlrollout.clock import Clock, SystemClock
from mlrollout.engine.engine import Engine, Listener, RolloutState, TickResult
from mlrollout.engine.runner import (
    LEASE_TTL,
    PLANS,
    Runner,
    RunOutcome,
    _not_due,
    _read_due_index,
    holder_name,
    worse,
)
from mlrollout.errors import ExitCode, LeaseHeld, MlrolloutError
from mlrollout.state.base import Event, RolloutRecord, StateStore

#: Wall-clock seconds between passes at most: how soon a new rollout or a command is noticed.
DEFAULT_INTERVAL = 30.0
#: Rollouts listed per pass at most (a store holds far fewer active ones).
MAX_ACTIVE = 100_000
#: Exit codes after which trying again changes nothing until someone acts on the rollout (its
#: journal then moves): a stored plan that is no longer valid, a rollout that needs a human.
_UNTIL_ACTED_ON = frozenset({ExitCode.INVALID_PLAN, ExitCode.NEEDS_HUMAN})


# ------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Done:
    """What one worker did with one piece of work."""

    record: RolloutRecord
    result: RunOutcome | Exception  # LeaseHeld: another runner drives it
    holder: str

    @property
    def exit_code(self) -> int | None:
        """The outcome's exit code; None when another runner drives it (not a failure)."""
        result = self.result
        if isinstance(result, LeaseHeld):
            return None
        if isinstance(result, MlrolloutError):
            return result.exit_code
        if isinstance(result, Exception):
            return ExitCode.BUG
        return result.exit_code


@dataclass(frozen=True)
class PassReport:
    """One pass, for the heartbeat line."""

    number: int
    at: float  # wall clock at its start
    seconds: float  # how long it took (wall clock)
    active: int  # active rollouts listed
    done: list[Done]  # what was due, and what came of it
    next_in: float  # seconds until the next pass
    error: MlrolloutError | None = None  # the store could not list the work (nothing was done)

    @property
    def driven(self) -> int:
        return sum(1 for d in self.done if not isinstance(d.result, LeaseHeld))

    @property
    def elsewhere(self) -> int:
        return sum(1 for d in self.done if isinstance(d.result, LeaseHeld))

    @property
    def ended(self) -> list[Done]:
        return [
            d for d in self.done if isinstance(d.result, RunOutcome) and d.result.phase.terminal
        ]

    @property
    def errors(self) -> list[Done]:
        return [d for d in self.done if isinstance(d.result, Exception) and d.exit_code is not None]

    @property
    def worst(self) -> int:
        code = 0 if self.error is None else self.error.exit_code
        for d in self.done:
            if d.exit_code is not None:
                code = worse(code, d.exit_code)
        return code


# ---------------------------------------------------------------------------------- the workers


class WorkerRunner(Runner):
    """A runner that also keeps when its last drive said the next tick is due (wall clock) and
    the journal position it left the rollout at, so the watcher knows when to come back."""

    def __init__(
        self,
        store: StateStore,
        *,
        listeners: list[Listener],
        holder: str,
        wall: Callable[[], float],
        lease_ttl: float,
    ) -> None:
        super().__init__(store, listeners=listeners, holder=holder, wall=wall, lease_ttl=lease_ttl)
        self.listeners.append(self._saw)
        self.due_at: float | None = None
        self.last_seq = 0
        self.written = 0  # events this drive recorded

    def _saw(self, event: Event, state: RolloutState) -> None:
        self.last_seq = event.seq
        self.written += 1

    def _tick(self, engine: Engine) -> TickResult:  # type: ignore[override]
        result = Runner._tick(engine)
        if result.next_at is None or result.done:
            self.due_at = None
        else:
            # the engine's time may be sped up (the sandbox's `speed: 60`): convert the delay
            factor = float(getattr(engine.clock, "factor", 1.0)) or 1.0
            delay = max(0.0, result.next_at - engine.clock.now()) / factor
            self.due_at = self.wall() + delay
        return result

    def drive_due(
        self, record: RolloutRecord, clock_for_record: Callable[[RolloutRecord], Clock | None]
    ) -> RunOutcome:
        self.due_at, self.last_seq, self.written = None, record.last_seq, 0
        return self.drive(
            record.id,
            on_wait=lambda engine: "detach",
            clock=clock_for_record(record),
            until_idle=True,
            listed=record,
        )


class WorkSource(Protocol):
    """One kind of due work (rollouts now; fleets later)."""

    def active(self, store: StateStore) -> list[RolloutRecord]: ...

    def do(
        self,
        runner: WorkerRunner,
        record: RolloutRecord,
        clock_for_record: Callable[[RolloutRecord], Clock | None],
    ) -> RunOutcome: ...


class Rollouts:
    """The active rollouts of the store, each driven until idle (as one ``reconcile`` does)."""

    def __init__(self, limit: int = MAX_ACTIVE) -> None:
        self.limit = limit

    def active(self, store: StateStore) -> list[RolloutRecord]:
        return store.list_rollouts(active_only=True, limit=self.limit)

    def do(
        self,
        runner: WorkerRunner,
        record: RolloutRecord,
        clock_for_record: Callable[[RolloutRecord], Clock | None],
    ) -> RunOutcome:
        return runner.drive_due(record, clock_for_record)


@dataclass
class _Seen:
    """What the watcher knows of one active rollout: the journal position it last saw and when
    it is next due (None: not until its journal moves — waiting for a human)."""

    seq: int
    due_at: float | None


@dataclass
class _Worker:
    runner: WorkerRunner
    store: StateStore


# --------------------------------------------------------------------------------- the watcher


class Watcher:
    """Passes over the active rollouts of one state store, with ``workers`` threads."""

    def __init__(
        self,
        open_store: Callable[[], StateStore],
        *,
        workers: int = 1,
        interval: float = DEFAULT_INTERVAL,
        clock: Clock | None = None,
        holder: str | None = None,
        clock_for_record: Callable[[RolloutRecord], Clock | None] | None = None,
        listeners: list[Listener] | None = None,
        lease_ttl: float = LEASE_TTL,
        sources: list[WorkSource] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.open_store = open_store
        self.workers = workers
        self.interval = interval
        self.clock: Clock = clock or SystemClock()
        self.holder = holder or holder_name()
        self.clock_for_record = clock_for_record or (lambda record: None)
        self.listeners = list(listeners or [])
        self.lease_ttl = lease_ttl
        self.sources: list[WorkSource] = sources or [Rollouts()]
        self.stop_requested = False
        self.passes = 0
        self._seen: dict[str, _Seen] = {}
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._all: list[_Worker] = []
        self._store: StateStore | None = None
        self._tag = secrets.token_hex(2)

    # ----------------------------------------------------------------------------- control

    def stop(self) -> None:
        """Finish each tick in flight (recorded, lease handed back), start nothing new, end the
        watch. Safe from a signal handler and from any thread."""
        self.stop_requested = True
        for worker in list(self._all):
            worker.runner.stop_requested = True
        self._wake.set()

    def _worker_holder(self, index: int) -> str:
        # Unique per worker of this watcher, and per watcher (two in one process never share a
        # lease, which a holder renews as its own). A prefix keeps "user@host pid N" last: a
        # killed watcher's leases are recognised as a dead local process's (see
        # runner._dead_local_holder) and taken over at once.
        return f"w{index}.{self._tag}:{self.holder}"

    def _take_worker(self) -> _Worker:
        """A free worker (its runner and store), made on first need; one per thread at a time."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
            store = self.open_store()
            runner = WorkerRunner(
                store,
                listeners=self.listeners,
                holder=self._worker_holder(len(self._all) + 1),
                wall=self.clock.now,
                lease_ttl=self.lease_ttl,
            )
            runner.stop_requested = self.stop_requested
            worker = _Worker(runner, store)
            self._all.append(worker)
            return worker

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def _due(self, record: RolloutRecord, now: float) -> bool:
        seen = self._seen.get(record.id)
        if seen is None or seen.seq != record.last_seq:
            return True
        return seen.due_at is not None and seen.due_at <= now

    def _work(self, source: WorkSource, record: RolloutRecord) -> Done:
        try:
            worker = self._take_worker()
        except MlrolloutError as exc:  # no store for a new worker (unreachable): next pass
            with self._lock:
                self._remember(record, None, exc, self.clock.now())
            return Done(record, exc, self.holder)
        try:
            runner = worker.runner
            if self.stop_requested:  # a stop came while this waited for a worker
                return Done(record, _Skipped(), runner.holder)
            try:
                outcome: RunOutcome | Exception = source.do(runner, record, self.clock_for_record)
            except Exception as exc:  # one stuck rollout must not stop the others
                outcome = exc
            with self._lock:
                self._remember(record, runner, outcome, self.clock.now())
            if isinstance(outcome, RunOutcome) and outcome.phase.terminal and not runner.written:
                # another runner ended it after this pass listed it: not this watcher's to report
                return Done(record, _Skipped(), runner.holder)
            return Done(record, outcome, runner.holder)
        finally:
            self._give_back(worker)

    def _remember(
        self,
        record: RolloutRecord,
        runner: WorkerRunner | None,
        outcome: RunOutcome | Exception,
        now: float,
    ) -> None:
        if isinstance(outcome, RunOutcome) and runner is not None:
            if outcome.phase.terminal:
                self._seen.pop(record.id, None)
            elif not outcome.interrupted:
                self._seen[record.id] = _Seen(runner.last_seq, runner.due_at)
            return
        code = outcome.exit_code if isinstance(outcome, MlrolloutError) else ExitCode.BUG
        if isinstance(outcome, LeaseHeld):
            # its holder's work: look again after the interval (sooner if its journal moves)
            self._seen[record.id] = _Seen(record.last_seq, now + self.interval)
        elif code in _UNTIL_ACTED_ON:
            self._seen[record.id] = _Seen(record.last_seq, None)
        else:  # a provider or store failure: retry at the interval, not at once
            self._seen[record.id] = _Seen(record.last_seq, now + self.interval)

    def run_pass(self, pool: ThreadPoolExecutor | None = None) -> PassReport:
        """One pass: list the active work, do what is due with the workers, and say when the
        next pass should come."""
        self.passes += 1
        start = self.clock.now()
        wall_start = time.perf_counter()
        jobs: list[tuple[WorkSource, RolloutRecord]] = []
        active: set[str] = set()
        listed: list[RolloutRecord] = []
        try:
            if self._store is None:
                self._store = self.open_store()
            found = [(s, r) for s in self.sources for r in s.active(self._store)]
            if self.passes == 1:
                self._seed([record for _, record in found], start)
            for source, record in found:
                active.add(record.id)
                listed.append(record)
                if self._due(record, start):
                    jobs.append((source, record))
        except MlrolloutError as exc:
            if self.passes == 1:
                raise  # a store that never answered: a wrong --state, missing credentials
            # a store that failed once in a long watch (throttled, locked): try at the interval
            return PassReport(
                number=self.passes,
                at=start,
                seconds=time.perf_counter() - wall_start,
                active=len(self._seen),
                done=[],
                next_in=self.interval,
                error=exc,
            )
        with self._lock:  # bounded memory: forget what is no longer active
            for rid in [rid for rid in self._seen if rid not in active]:
                del self._seen[rid]
        PLANS.keep(len(active))  # ... and the plans of the rollouts that ended
        done: list[Done]
        if pool is None or self.workers == 1:
            done = [self._work(source, record) for source, record in jobs]
        else:
            futures = [pool.submit(self._work, source, record) for source, record in jobs]
            done = [future.result() for future in futures]
        done = [d for d in done if not isinstance(d.result, _Skipped)]
        self._fleets(listed)
        now = self.clock.now()
        return PassReport(
            number=self.passes,
            at=start,
            seconds=time.perf_counter() - wall_start,
            active=len(active),
            done=done,
            next_in=self._next_in(now),
        )

    def _seed(self, listed: list[RolloutRecord], now: float) -> None:
        """A new watcher's first pass: what the last runs left in the due index (``reconcile``'s,
        another watcher's) is taken as seen, so the rollouts with nothing due are not driven
        again at once (a restarted pod costs one pass of listing, not a drive of everything)."""
        index = _read_due_index(self._store) if self._store is not None else {}
        with self._lock:
            for record in listed:
                entry = index.get(record.id)
                known = record.id in self._seen
                if not known and entry is not None and _not_due(entry, record, now):
                    self._seen[record.id] = _Seen(record.last_seq, entry[1])

    def _fleets(self, listed: list[RolloutRecord]) -> None:
        """The fleets the active rollouts belong to, advanced once each (a wave started, a
        release or a rollback moved on) under a holder of their own: a fleet's driver never
        shares a holder name with a worker, so the leases still keep one driver per rollout."""
        from mlrollout.engine.fleet import reconcile_fleets

        if self._store is None:
            return
        with contextlib.suppress(MlrolloutError):  # a failing fleet is seen again next pass
            reconcile_fleets(
                self._store, holder=f"fleets.{self._tag}:{self.holder}", records=listed
            )

    def _next_in(self, now: float) -> float:
        with self._lock:
            dues = [s.due_at for s in self._seen.values() if s.due_at is not None]
        earliest = min([now + self.interval, *dues])
        return max(0.0, earliest - now)

    def _sleep(self, seconds: float) -> None:
        if seconds <= 0 or self.stop_requested:
            return
        if self.clock.virtual:
            self.clock.sleep(seconds)
        else:
            self._wake.wait(seconds)  # a stop wakes it at once

    def run(
        self,
        *,
        max_passes: int | None = None,
        on_pass: Callable[[PassReport], None] = lambda report: None,
    ) -> int:
        """Pass after pass until stopped (or ``max_passes``). Returns the exit code: 0 after a
        stop; after ``max_passes``, the worst outcome of the rollouts that ended or failed on the
        way (a rollout still waiting for a human in the last pass counts as 3)."""
        worst = 0
        pool = ThreadPoolExecutor(self.workers, "mlrollout-worker") if self.workers > 1 else None
        try:
            while not self.stop_requested:
                report = self.run_pass(pool)
                on_pass(report)
                last = max_passes is not None and report.number >= max_passes
                for d in report.done:
                    code = d.exit_code
                    if code is None or (code == ExitCode.WAITING and not last):
                        continue
                    worst = worse(worst, code)
                if last:
                    break
                self._sleep(report.next_in)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            self.close()
        return 0 if self.stop_requested else worst

    def close(self) -> None:
        stores = [w.store for w in self._all] + ([self._store] if self._store else [])
        self._all, self._idle, self._store = [], [], None
        for store in stores:
            with contextlib.suppress(MlrolloutError):
                store.close()


class _Skipped(Exception):
    """Not started: a stop came first."""


__all__ = [
    "DEFAULT_INTERVAL",
    "Done",
    "PassReport",
    "Rollouts",
    "Watcher",
    "WorkSource",
    "WorkerRunner",
]
