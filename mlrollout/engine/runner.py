"""Driving rollouts: create one from a plan, take the endpoint's lease, open the provider, and
loop ticks on the right clock until the rollout ends or waits for a human."""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mlrollout import budget
from mlrollout.clock import Clock, SystemClock
from mlrollout.contracts import ProviderContext, ProviderSpec, default_lease_key
from mlrollout.engine.engine import Engine, Listener, RolloutState, TickResult
from mlrollout.engine.events import EventKind
from mlrollout.engine.phases import Phase
from mlrollout.errors import (
    ExitCode,
    LeaseHeld,
    MlrolloutError,
    NeedsHuman,
    ProviderError,
    ProviderRefused,
    ProviderUnavailable,
    StateUnavailable,
    UsageError,
)
from mlrollout.plan.loader import LoadedPlan, parse_plan
from mlrollout.plan.model import Plan
from mlrollout.plugins import metrics_source_spec, provider_spec
from mlrollout.state.base import Lease, RolloutRecord, StateStore

if TYPE_CHECKING:
    from mlrollout.report.webhook import QueuedNotifier

LEASE_TTL = 60.0  # wall-clock seconds; renewed every third of it while running
MAX_REAL_SLEEP = 5.0  # wall-clock seconds between ticks at most: commands are noticed quickly
STOP_POLL = 0.2  # wall-clock seconds: how soon a requested stop is noticed while waiting

#: What a caller decides when a rollout waits for a human (an approve gate, a policy pause).
WaitDecision = Literal["promote", "abort", "detach", "wait"]


@dataclass(frozen=True)
class RunOutcome:
    rollout_id: str
    phase: Phase
    state: RolloutState
    interrupted: bool = False  # stopped by a signal between two ticks

    @property
    def exit_code(self) -> int:
        if self.phase == Phase.SUCCEEDED:
            return ExitCode.OK
        if self.phase in (Phase.ROLLED_BACK, Phase.ABORTED):
            return ExitCode.ROLLED_BACK
        return ExitCode.WAITING


def actor(environ: Mapping[str, str] | None = None) -> str:
    """Who gives a command: ``MLROLLOUT_ACTOR``, else the CI's user (``GITHUB_ACTOR``,
    ``GITLAB_USER_LOGIN``), else the login name."""
    env = os.environ if environ is None else environ
    for name in ("MLROLLOUT_ACTOR", "GITHUB_ACTOR", "GITLAB_USER_LOGIN"):
        if env.get(name):
            return env[name]
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (a container without a passwd entry)
        return "someone"


#: Exit codes from the least to the most alarming, for a pass over many rollouts (`reconcile`).
SEVERITY = (
    ExitCode.OK,
    ExitCode.WAITING,
    ExitCode.ROLLED_BACK,
    ExitCode.USAGE,
    ExitCode.INVALID_PLAN,
    ExitCode.PROVIDER,
    ExitCode.NEEDS_HUMAN,
    ExitCode.BUG,
)


def worse(a: int, b: int) -> int:
    """The more alarming of two exit codes (an unknown code counts as a bug)."""
    rank = {code: i for i, code in enumerate(SEVERITY)}
    return max(a, b, key=lambda code: rank.get(code, len(SEVERITY)))


def holder_name() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user database entry (containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


_HOLDER = re.compile(r"@(?P<host>\S+) pid (?P<pid>\d+)$")


def _dead_local_holder(holder: str) -> bool:
    """True when ``holder`` names a process on this host that is not running any more."""
    match = _HOLDER.search(holder)
    if match is None or match["host"] != socket.gethostname():
        return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by someone else
        return False
    return False


def plan_endpoint_key(plan: Plan) -> str:
    """The key of the plan's endpoint lease: the provider's ``lease_key(plan)`` if it declares
    one, else :func:`~mlrollout.contracts.default_lease_key` (the keys recorded so far)."""
    custom = getattr(provider_spec(plan.target.provider), "lease_key", None)
    if custom is None:
        return default_lease_key(plan)
    key = custom(plan)
    if not isinstance(key, str) or not key:
        raise ProviderUnavailable(
            f"provider {plan.target.provider!r} gave no lease key for endpoint "
            f"{plan.target.endpoint!r} (lease_key returned {key!r})",
            hint="a problem of the provider's distribution: upgrade or reinstall it",
        )
    return key


def new_rollout_id(plan: Plan) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", plan.name.lower()).strip("-")[:40] or "rollout"
    return f"{slug}-{secrets.token_hex(3)}"


def plan_of(record: RolloutRecord) -> Plan:
    """The plan a rollout was started with (stored verbatim, re-validated; parsed once per
    process for each text: a reconcile pass over a thousand rollouts would spend nearly all of
    its time parsing YAML)."""
    return PLANS.get(str(record.plan["yaml"]), record.plan_path)


class PlanCache:
    """Stored plans parsed once per process, by their text (frozen models: safe to share), the
    least recently used dropped beyond ``limit``. A watcher keeps the limit at what its passes
    see active (:meth:`keep`), so a long watch over a stream of rollouts stays flat in memory
    instead of holding every plan it ever drove."""

    #: Plans kept beyond the active ones (a few just ended, a report being written).
    SPARE = 16

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._plans: OrderedDict[tuple[str, str], Plan] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, text: str, path: str) -> Plan:
        key = (text, path)
        with self._lock:
            found = self._plans.get(key)
            if found is not None:
                self._plans.move_to_end(key)
                return found
        plan = parse_plan(text, path).plan
        with self._lock:
            self._plans[key] = plan
            self._trim()
        return plan

    def keep(self, active: int) -> None:
        """Keep the plans of ``active`` rollouts (and :data:`SPARE` more)."""
        with self._lock:
            self.limit = active + self.SPARE
            self._trim()

    def __len__(self) -> int:
        return len(self._plans)

    def _trim(self) -> None:
        while len(self._plans) > self.limit:
            self._plans.popitem(last=False)


PLANS = PlanCache()


def clock_for(
    plan: Plan,
    resume_at: float | None,
    *,
    idle_since: float | None = None,
    wall: float | None = None,
) -> Clock:
    """The clock a rollout of ``plan`` runs on: the provider's ``clock(plan, resume_at,
    idle_since, wall)`` if it declares one, real time otherwise. The sandbox (``local``) runs
    virtual time at ``speed: max`` and sped-up time for a numeric speed, continuing a resumed
    rollout from the journal's last instant (``resume_at``), plus, sped up, the wall time since
    its last event (``idle_since``) — see :meth:`mlrollout.sandbox.provider.LocalProvider.clock`."""
    custom = getattr(provider_spec(plan.target.provider), "clock", None)
    if custom is None:
        return SystemClock()
    clock: Clock = custom(plan, resume_at, idle_since, time.time() if wall is None else wall)
    return clock


class Runner:
    """Runs rollouts kept in one state store, on behalf of one holder."""

    def __init__(
        self,
        store: StateStore,
        *,
        listeners: list[Listener] | None = None,
        holder: str | None = None,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        lease_ttl: float = LEASE_TTL,
    ) -> None:
        self.store = store
        self.listeners = list(listeners or [])
        self.holder = holder or holder_name()
        self.wall = wall
        self.real_sleep = sleep
        self.lease_ttl = lease_ttl
        self._lease: Lease | None = None
        self._renewed_at = 0.0
        #: Set (e.g. by a signal handler) to stop between two ticks: the change in flight is
        #: finished and recorded first, so `resume` continues exactly there.
        self.stop_requested = False
        #: Notifiers (webhooks, pushgateways) of the engines opened; drive() closes them (a
        #: bounded flush).
        self._notifiers: list[QueuedNotifier] = []

    # ------------------------------------------------------------------------------- create

    def create(self, loaded: LoadedPlan, *, rollout_id: str | None = None) -> RolloutRecord:
        """Record a new rollout (nothing changes on the endpoint yet). The store refuses it
        (:class:`~mlrollout.errors.RolloutActive`) if another is active on the same endpoint.
        ``rollout_id``: a given id (a fleet's targets have ids derived from the fleet's)."""
        plan = loaded.plan
        if plan.targets:
            raise UsageError(
                "a fleet plan (targets:) runs as a fleet, one rollout per target",
                hint="`mlrollout run PLAN` starts it (mlrollout.engine.fleet.FleetRunner)",
            )
        key = plan_endpoint_key(plan)
        record = RolloutRecord(
            id=rollout_id or new_rollout_id(plan),
            name=plan.name,
            endpoint_key=key,
            plan={"yaml": loaded.text},
            plan_path=loaded.path,
            created_at=self.wall(),
            phase=Phase.PENDING.value,
            snapshot=RolloutState(candidate=plan.candidate.name).to_dict(),
        )
        self.store.create_rollout(record)
        return record

    # -------------------------------------------------------------------------------- drive

    def open_engine(self, record: RolloutRecord, clock: Clock | None = None) -> Engine:
        plan = written = plan_of(record)
        registry = (plan.candidate.model or "").startswith("models:/")
        if registry:
            # A Model Registry reference: the platform's model, from the journal once started
            # (a resumed rollout never asks the registry again), else from MLflow.
            from mlrollout.report.mlflow import resolved_candidate

            plan = resolved_candidate(written, self.store.events(record.id))
        started = record.phase != Phase.PENDING.value
        state = RolloutState.from_dict(record.snapshot) if record.snapshot else None
        if state is None:
            state = RolloutState(candidate=plan.candidate.name)
        clock = clock or clock_for(
            plan, state.now or None, idle_since=record.updated_at or None, wall=self.wall()
        )
        spec: ProviderSpec = provider_spec(plan.target.provider)
        context = ProviderContext(plan=plan, clock=clock, store=self.store, lease=self.lease)
        adapter, metrics = spec.open(context)
        source = plan.analysis.source
        if not isinstance(source, str):  # {NAME: CONFIG}: a mlrollout.metrics plugin decides
            [(name, config)] = source.items()
            metrics = metrics_source_spec(name).open(config, context)
        listeners = list(self.listeners)
        if plan.notify:
            from mlrollout.report.webhook import notifiers_from_plan

            for notifier in notifiers_from_plan(plan, record.id):
                listeners.append(notifier)
                # delivered off the critical path; drive() closes it (a bounded flush) at the end
                self._notifiers.append(notifier)
        if plan.mlflow is not None or registry:
            from mlrollout.report.mlflow import recorder_from_plan

            # the plan as written: the recorder tags the registry version it names
            recorder = recorder_from_plan(written, record, self.store)
            if recorder is not None:
                listeners.append(recorder)
                self._notifiers.append(recorder)  # drive() closes it (a bounded flush)
        from mlrollout.capture import capture_source
        from mlrollout.feedback import feedback_source

        flags = None
        if plan.flags is not None:
            from mlrollout.flags import flag_writer

            flags = flag_writer(plan, context)
        return Engine(
            flags=flags,
            capture=capture_source(plan, context),
            feedback=feedback_source(plan, context),
            rollout_id=record.id,
            plan=plan,
            adapter=adapter,
            metrics=metrics,
            store=self.store,
            clock=clock,
            lease=self.lease,
            listeners=listeners,
            state=state,
            holder=self.holder,
            wall=self.wall,
            # a started rollout's snapshot is always its last engine event's (never a create's)
            journal_seq=record.last_seq if started and self._lease is not None else None,
        )

    def lease(self) -> Lease | None:
        return self._lease

    def _take_lease(self, key: str) -> None:
        try:
            self._lease = self.store.acquire_lease(key, self.holder, self.lease_ttl)
        except LeaseHeld:
            held = self.store.current_lease(key)
            if held is None or not _dead_local_holder(held.holder):
                raise
            # The holder was a process on this machine that no longer exists (killed): its
            # lease would only expire after the TTL. Release it in its name (the store checks
            # the token, so a lease that changed hands meanwhile is left alone) and take it.
            self.store.release_lease(held)
            self._lease = self.store.acquire_lease(key, self.holder, self.lease_ttl)
        self._renewed_at = self.wall()

    def _renew_lease(self) -> None:
        if self._lease is not None and self.wall() - self._renewed_at >= self.lease_ttl / 3:
            try:
                self._lease = self.store.renew_lease(self._lease, self.lease_ttl)
            except StateUnavailable:
                # A store locked for a while: the lease runs for two more thirds of its TTL, so
                # try again after the next tick; a write after it expired is refused (fenced).
                return
            self._renewed_at = self.wall()

    def _release_lease(self, *, quiet: bool = False) -> None:
        """Give the lease up. ``quiet`` (an error is already on its way): a failure here must not
        replace it — the lease then lapses by itself after its TTL."""
        lease, self._lease = self._lease, None
        if lease is None:
            return
        try:
            self.store.release_lease(lease)
        except MlrolloutError:
            if not quiet:
                raise

    def _end_unstarted(self, record: RolloutRecord, reason: str, data: dict[str, object]) -> None:
        """Record that a rollout which changed nothing is over (``aborted``), without the
        provider, so that the endpoint is free for the next ``run``."""
        record = self.store.get_rollout(record.id)
        state = RolloutState.from_dict(record.snapshot)
        if Phase(state.phase).terminal:
            return
        state.phase = Phase.ABORTED.value
        state.reason = reason
        state.pending = None
        state.commands_seen = record.last_seq + 1  # this event: nothing is left unread
        self.store.append_event(
            record.id,
            EventKind.ABORTED,
            {"reason": reason, **data},
            at=float(state.now or self.wall()),
            lease=self._lease,
            phase=state.phase,
            snapshot=state.to_dict(),
        )

    def _abort_requested(self, record: RolloutRecord) -> str | None:
        """Who asked to abort, if an abort command is recorded and not yet read."""
        seen = int(record.snapshot.get("commands_seen") or 0)
        aborts = [
            e for e in self.store.events(record.id, after=seen) if e.kind == EventKind.COMMAND_ABORT
        ]
        return str(aborts[-1].data.get("by", "someone")) if aborts else None

    def drive(
        self,
        rollout_id: str,
        *,
        on_wait: Callable[[Engine], WaitDecision] = lambda engine: "detach",
        clock: Clock | None = None,
        max_ticks: int | None = None,
        until_idle: bool = False,
        adopt: bool = False,
        listed: RolloutRecord | None = None,
    ) -> RunOutcome:
        """Tick the rollout until it ends, or waits for a human and ``on_wait`` says detach.

        ``on_wait`` is asked each time the rollout waits for a human: ``promote``/``abort`` answer
        it (an interactive prompt), ``wait`` keeps waiting (polling the journal for a
        ``mlrollout promote|abort`` from elsewhere), ``detach`` returns (exit code 3).
        With ``until_idle`` it returns as soon as the next tick lies in the future (for
        ``reconcile``); virtual clocks have no future to wait for and run on. With ``adopt``, the
        live endpoint's weights are taken as the journal's (after a change made by hand).
        ``listed``: the rollout's record as a listing just read it (saves reading it twice: it
        is read again once the lease is taken).
        """
        record = listed if listed is not None else self.store.get_rollout(rollout_id)
        self._take_lease(record.endpoint_key)
        engine: Engine | None = None
        try:
            record = self.store.get_rollout(rollout_id)  # as it is now that the lease is ours
            if record.phase == Phase.PENDING.value:
                who = self._abort_requested(record)
                if who is not None:  # nothing changed: no need for the provider (or credentials)
                    self._end_unstarted(record, f"aborted by {who} before any change", {"by": who})
                    ended = self.store.get_rollout(record.id)
                    return RunOutcome(
                        record.id, Phase.ABORTED, RolloutState.from_dict(ended.snapshot)
                    )
            engine = self.open_engine(record, clock)
            if adopt:
                live = engine.adapter.describe()
                engine.record(
                    EventKind.ADOPTED,
                    {"weights": live.weights(), "journal": dict(engine.state.weights)},
                )
                engine.state.weights = live.weights()
                if engine.state.phase_enum == Phase.PROGRESSING:
                    # the current step starts over: its windows must not mix the two splits
                    engine.restart_step()
                engine.record(EventKind.ADOPTED_APPLIED, {"weights": live.weights()})
            ticks = 0
            while True:
                result = self._tick(engine)
                ticks += 1
                self._renew_lease()
                budget.publish_quietly(self.store, now=self.wall())
                if result.done or (max_ticks is not None and ticks >= max_ticks):
                    break
                if self.stop_requested:
                    return RunOutcome(
                        record.id, engine.state.phase_enum, engine.state, interrupted=True
                    )
                if result.phase == Phase.WAITING:
                    decision = on_wait(engine)
                    if decision == "detach":
                        break
                    if decision in ("promote", "abort"):
                        self.command(record.id, decision)
                        continue
                    if engine.clock.virtual:
                        # Virtual time cannot pass while a human decides: wait on the wall clock.
                        self.real_sleep(STOP_POLL)
                        continue
                idle = result.next_at is None or result.next_at > engine.clock.now()
                if until_idle and idle and not engine.clock.virtual:
                    break
                self._sleep_until(engine.clock, result.next_at)
            return RunOutcome(record.id, engine.state.phase_enum, engine.state)
        except BaseException as exc:
            self._after_failure(record, engine, exc)
            self._release_lease(quiet=True)
            raise
        finally:
            notifiers, self._notifiers = self._notifiers, []
            for notifier in notifiers:  # a bounded flush; none after a stop (do not hold it up)
                with contextlib.suppress(Exception):  # never mask the error in flight
                    notifier.close(0.0 if self.stop_requested else None)
            budget.publish_quietly(self.store, now=self.wall())
            self._release_lease()

    def _after_failure(
        self, record: RolloutRecord, engine: Engine | None, exc: BaseException
    ) -> None:
        """A run that failed before it changed anything (no credentials, an unreachable or
        busy endpoint, a plugin that does not import) ends ``aborted``: it must not keep the
        endpoint from the next run. Anything else stays as recorded, for `resume`."""
        if not isinstance(exc, Exception):
            return  # interrupted or killed: `resume` continues exactly there
        phase = Phase(record.phase) if engine is None else engine.state.phase_enum
        pending = None if engine is None else engine.state.pending
        refused_prepare = (
            phase == Phase.PREPARING
            and isinstance(exc, ProviderRefused)
            and pending is not None
            and pending.get("action") == "prepare"
        )
        if phase != Phase.PENDING and not refused_prepare:
            return
        message = exc.message if isinstance(exc, MlrolloutError) else f"{type(exc).__name__}"
        with contextlib.suppress(MlrolloutError):  # the store failed: the error says why
            self._end_unstarted(record, f"could not start: {message}", {"error": message})

    @staticmethod
    def _tick(engine: Engine) -> TickResult:
        """One tick. A provider error once the endpoint has begun to change (a failed or timed-out
        candidate creation included) is no longer "before any change" (exit 6): the endpoint is
        in a recorded state and a human decides whether to resume (which retries) or abort
        (exit 5). A refusal while preparing (:class:`ProviderRefused`) changed nothing: exit 6."""
        try:
            return engine.tick()
        except (ProviderError, StateUnavailable) as exc:
            phase = engine.state.phase_enum
            if phase == Phase.PENDING or (
                phase == Phase.PREPARING and isinstance(exc, ProviderRefused)
            ):
                raise  # refused before anything changed (a permission, a precondition): exit 6
            rid = engine.rollout_id
            raise NeedsHuman(
                f"rollout {rid} stopped in phase {engine.state.phase}: {exc.message}; the "
                "endpoint is as the journal's last event says",
                hint=f"{exc.hint + '; then ' if exc.hint else ''}`mlrollout resume {rid}` retries,"
                f" `mlrollout abort {rid}` rolls back",
            ) from exc

    def _sleep_until(self, clock: Clock, next_at: float | None) -> None:
        """Sleep until the next tick is due (at most MAX_REAL_SLEEP of wall time, so commands
        and lease renewals keep flowing), waking early when a stop is requested."""
        if next_at is None:
            self.real_sleep(STOP_POLL)
            return
        delay = next_at - clock.now()
        if delay <= 0:
            return
        if clock.virtual:
            clock.sleep(delay)
            return
        factor = float(getattr(clock, "factor", 1.0))
        remaining = min(delay, MAX_REAL_SLEEP * factor)
        while remaining > 0 and not self.stop_requested:
            chunk = min(remaining, STOP_POLL * factor)
            clock.sleep(chunk)
            remaining -= chunk

    # ----------------------------------------------------------------------------- commands

    def command(
        self,
        rollout_id: str,
        kind: Literal["promote", "abort"],
        *,
        full: bool = False,
        reason: str | None = None,
        by: str | None = None,
    ) -> None:
        """Record ``mlrollout promote|abort`` in the journal; the driving runner acts on it.
        ``by`` (default :func:`actor`) and ``reason`` are recorded with it, for the report and
        the notifications."""
        record = self.store.get_rollout(rollout_id)
        data: dict[str, object] = {"by": by or actor(), "runner": self.holder}
        if reason:
            data["reason"] = reason
        if full:
            data["full"] = True
        at = float(record.snapshot.get("now") or self.wall())
        self.store.append_event(record.id, EventKind(f"command.{kind}"), data, at=at, lease=None)

    def reconcile(
        self, *, clock_for_record: Callable[[RolloutRecord], Clock | None] | None = None
    ) -> list[tuple[RolloutRecord, RunOutcome | Exception]]:
        """One pass over every active rollout: do whatever work is due, then move on.

        A pass remembers, in the store (:data:`DUE_INDEX`), each rollout's journal position and
        when its next tick is due; the next pass skips a rollout whose journal has not moved
        and whose work is not yet due, without its lease or its journal (a cron job's pass is
        mostly that: on object storage one read per rollout instead of a dozen). A command
        (`promote`, `abort`), a `resume` elsewhere or any other write moves the journal, and
        the rollout is driven at once. What is remembered is only a hint: a lost or stale
        index costs a drive, never a missed one."""
        from mlrollout.engine.watch import WorkerRunner

        worker = WorkerRunner(
            self.store,
            listeners=self.listeners,
            holder=self.holder,
            wall=self.wall,
            lease_ttl=self.lease_ttl,
        )
        worker.real_sleep = self.real_sleep
        known = _read_due_index(self.store)
        remembered: dict[str, list[float | None]] = {}
        results: list[tuple[RolloutRecord, RunOutcome | Exception]] = []
        for record in self.store.list_rollouts(active_only=True, limit=1000):
            entry = known.get(record.id)
            if entry is not None and _not_due(entry, record, self.wall()):
                remembered[record.id] = entry
                state = RolloutState.from_dict(record.snapshot)
                results.append((record, RunOutcome(record.id, Phase(record.phase), state)))
                continue
            try:
                outcome = worker.drive_due(record, clock_for_record or (lambda r: None))
                results.append((record, outcome))
                if not outcome.phase.terminal and not outcome.interrupted:
                    # waiting for a human: still looked at now and then (a change made to the
                    # endpoint by hand meanwhile is noticed, as the wait's own ticks do)
                    due = worker.due_at if worker.due_at is not None else self.wall() + RECHECK
                    remembered[record.id] = [float(worker.last_seq), due]
            except Exception as exc:  # one stuck rollout must not stop the others
                results.append((record, exc))
        if remembered != known:
            with contextlib.suppress(MlrolloutError):  # a hint: the next pass drives them all
                self.store.put_value(*DUE_INDEX, {"v": 1, "rollouts": remembered}, lease=None)
        return results


#: Where `reconcile` keeps when each active rollout is next due (namespace, key).
DUE_INDEX = ("reconcile", "due")
#: Wall seconds after which `reconcile` drives a rollout that waits for a human again.
RECHECK = 300.0


def _read_due_index(store: StateStore) -> dict[str, list[float | None]]:
    """The due index's entries (``{rollout id: [journal seq, due at or None]}``); anything
    unreadable or of another shape reads as empty (every rollout is driven)."""
    try:
        value = store.get_value(*DUE_INDEX)
    except MlrolloutError:
        return {}
    rollouts = value.get("rollouts") if isinstance(value, dict) and value.get("v") == 1 else None
    if not isinstance(rollouts, dict):
        return {}
    return {
        str(rid): [entry[0], entry[1]]
        for rid, entry in rollouts.items()
        if isinstance(entry, list)
        and len(entry) == 2
        and isinstance(entry[0], int | float)
        and (entry[1] is None or isinstance(entry[1], int | float))
    }


def _not_due(entry: list[float | None], record: RolloutRecord, now: float) -> bool:
    """True when the index says the rollout has nothing to do now: its journal is where the
    last drive left it and its next tick lies ahead (or it waits for a human)."""
    seq, due_at = entry
    if seq != record.last_seq:
        return False
    return due_at is None or due_at > now
