"""The rollout engine: a persisted phase plus an idempotent :meth:`Engine.tick`.

A tick observes the live endpoint, reads commands from the journal (``promote``, ``abort``),
does at most one action, appends what happened, and says when the next tick is due. Mutations are
journalled twice — ``*.requested`` before the call (the intent) and ``*.applied`` after — so a
tick after a crash finds the intent and finishes it (every adapter mutation is idempotent).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from mlrollout.analysis import GateSet, Outcome, Verdict
from mlrollout.analysis.dispersion import HISTORY
from mlrollout.analysis.gateset import judged_stages
from mlrollout.capture import (
    Bins,
    CaptureSource,
    PredictionSummary,
    capture_query,
    capture_record,
)
from mlrollout.clock import Clock
from mlrollout.contracts import (
    CustomValue,
    EndpointAdapter,
    EndpointState,
    MetricsQuery,
    MetricsSource,
    NativeDeployment,
    OwnerMark,
    Window,
)
from mlrollout.engine.events import COMMANDS, EventKind
from mlrollout.engine.phases import Phase, can_move
from mlrollout.engine.strategies import ExecStep, Strategy, strategy_for
from mlrollout.errors import (
    EndpointDrifted,
    EndpointOwned,
    MlrolloutError,
    ProviderError,
    RollbackFailed,
    UsageError,
)
from mlrollout.feedback import FeedbackSource, QualityCounts, feedback_query
from mlrollout.plan.model import PREDICTION_METRICS, Gate, Plan
from mlrollout.plan.timeline import planned_looks
from mlrollout.state.base import Event, Lease, StateStore
from mlrollout.units import format_duration

if TYPE_CHECKING:
    from mlrollout.flags import FlagWriter

#: The platform's own deployment calls (``strategy.native``), journalled as mutations are.
NATIVE_ACTIONS = frozenset({"start_native", "roll_back_native", "end_native"})
#: What of the platform's deployment the journal shows.
NATIVE_SHOWN = ("status", "green_percent", "detail")
#: Seconds between reads of a platform's rollback in progress (at most).
NATIVE_POLL = 30.0
WEIGHT_TOLERANCE = 0.5  # percent: what counts as "the same weights" when comparing live state
#: Wall-clock seconds an ownership mark lasts when the runner has no lease (tests, the API).
OWNER_TTL = 60.0
#: Rewrite our own mark before a change once its expiry lags the lease's by this much.
OWNER_REFRESH = 20.0


@dataclass
class RolloutState:
    """The engine's state, stored as the rollout's snapshot after every event."""

    phase: str = Phase.PENDING.value
    baseline: str | None = None
    candidate: str = ""
    step: int = 0
    step_started_at: float | None = None
    next_look_at: float | None = None
    looks: int = 0
    hold_since: float | None = None
    weights: dict[str, float] = field(default_factory=dict)
    pending: dict[str, Any] | None = None  # the mutation in flight
    waiting: dict[str, Any] | None = None  # {"reason", "since", "timeout_at", "on_timeout"}
    last_verdict: dict[str, Any] | None = None
    reason: str | None = None  # why it ended / is rolling back
    commands_seen: int = 0  # journal seq up to which commands were read
    facts_seen: int = 0  # how many of the provider's world facts are journalled
    switched_at: float | None = None  # when the candidate took all live traffic (blue-green)
    capacity: dict[str, int] = field(default_factory=dict)  # instances per variant, last seen
    #: Live traffic mirrored to a variant (percent; its answers are dropped), as last applied.
    mirror: dict[str, float] = field(default_factory=dict)
    #: The platform's own deployment (``strategy.native``), as last seen: ``status``,
    #: ``green_percent``, ``detail``; ``ended`` once what it made is cleaned up.
    native: dict[str, Any] | None = None
    evaluated: bool = False  # it passed and ended with the candidate removed (shadow evaluation)
    #: ``flags``: the split written into the flag definition last (``None``: none written yet),
    #: and the sha256 of what was written. The platform's own split (``weights``) then stays
    #: on the baseline until the promotion.
    flag: dict[str, float] | None = None
    flag_digest: str | None = None
    #: A fleet's target: the fleet released it (its baseline may be retired).
    released: bool = False
    #: The bins ``prediction_drift`` uses, fixed from the baseline's outputs at the first look
    #: that had any (:meth:`mlrollout.capture.Bins.to_dict`).
    capture_bins: dict[str, Any] | None = None
    #: This stage's cumulative counts at each look, for the per-interval increments the
    #: analysis estimates burstiness from: ``[candidate, baseline]`` of ``[requests, errors,
    #: {custom gate: [total, count]}]`` per look.
    stage_counts: list[list[Any]] = field(default_factory=list)
    #: The baseline's per-look increments in the earlier stages (the latest
    #: :data:`~mlrollout.analysis.dispersion.HISTORY`), ``[requests, errors, {custom gate:
    #: [total, count]}]`` each: the rate tests read its bursts from them from a stage's first look.
    baseline_history: list[list[Any]] = field(default_factory=list)
    now: float = 0.0  # engine clock at the last event (virtual clocks resume from it)

    def to_dict(self) -> dict[str, Any]:
        # What asdict gives (a deep copy: the engine goes on changing its own containers), for
        # the plain values a state holds, without asdict's generic walk: a snapshot is taken at
        # every event, and asdict was a fifth of a look's time on a reconcile pass.
        return {name: _plain_copy(getattr(self, name)) for name in _STATE_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutState:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def phase_enum(self) -> Phase:
        return Phase(self.phase)


_STATE_FIELDS = tuple(f.name for f in fields(RolloutState))


def _plain_copy(value: Any) -> Any:
    """A deep copy of JSON-like data (dicts, lists, tuples of plain values)."""
    if isinstance(value, dict):
        return {k: _plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_copy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain_copy(v) for v in value)
    return value


@dataclass(frozen=True)
class TickResult:
    phase: Phase
    next_at: float | None  # when the next tick is due; None = waiting for a human
    event: Event | None = None

    @property
    def done(self) -> bool:
        return self.phase.terminal


Listener = Callable[[Event, RolloutState], None]


class Engine:
    def __init__(
        self,
        *,
        rollout_id: str,
        plan: Plan,
        adapter: EndpointAdapter,
        metrics: MetricsSource,
        store: StateStore,
        clock: Clock,
        lease: Callable[[], Lease | None] = lambda: None,
        listeners: list[Listener] | None = None,
        state: RolloutState | None = None,
        holder: str = "mlrollout",
        wall: Callable[[], float] = time.time,
        capture: CaptureSource | None = None,
        feedback: FeedbackSource | None = None,
        flags: FlagWriter | None = None,
        journal_seq: int | None = None,
    ) -> None:
        self.rollout_id = rollout_id
        #: The journal's last seq as read once the lease was taken, for a started rollout whose
        #: snapshot an engine event wrote (``Runner.open_engine``): when no later event can be a
        #: command, the first tick need not read the journal for one.
        self._journal_seq = journal_seq
        self.plan = plan
        self.adapter = adapter
        self.metrics = metrics
        self.store = store
        self.clock = clock
        self.lease = lease
        self.listeners = list(listeners or [])
        self.holder = holder
        self.wall = wall
        #: Where the prediction gates' paired predictions come from (None: no such gate).
        self.capture = capture
        #: Where the quality gates' labels and ratings come from (None: no such gate).
        self.feedback = feedback
        #: ``flags``: where each step's split is written (the application routes by it).
        self.flags = flags
        if plan.flags is not None and flags is None:
            raise MlrolloutError("the plan has flags but no flag writer was opened")
        self._labelled: dict[str, QualityCounts] | None = None  # the last look's, until journalled
        self._captured: PredictionSummary | None = None  # the last look's, until journalled
        self._failed_listeners: set[int] = set()
        strategy = strategy_for(plan)
        if strategy is None:  # `plan validate` refuses such a plan before anything is recorded
            raise MlrolloutError(f"the engine cannot run strategy {plan.strategy.type!r} yet")
        self.strategy: Strategy = strategy
        self.steps: list[ExecStep] = strategy.steps(plan)
        #: The platform moves the traffic itself (SageMaker blue/green): the engine starts,
        #: follows, judges and (if need be) forces back its deployment.
        self.native = any(step.kind == "native" for step in self.steps)
        self.state = state or RolloutState(candidate=plan.candidate.name)
        looks = planned_looks(plan)
        # Each analyze step (and each watched approval wait) is a stage with fresh cumulative
        # windows: the sequential rule spends the plan's alpha over them (and over the gates),
        # whatever the number of looks.
        stages = judged_stages(plan)
        #: ab_test: the gate whose verdict alone ends the judged stage (the winner test).
        self.winner = strategy.winner(plan)
        self.gates = GateSet.from_plan(
            plan.analysis, planned_looks=looks, stages=stages, winner=self.winner
        )
        # With no traffic on the baseline only the absolute bounds judge; the prediction gates
        # judge only while traffic is mirrored (they need requests both answered). Each subset
        # keeps each gate's share of alpha: it is a part of the same budget, not a new one.
        winner = self.winner[0] if self.winner else None
        self.absolute_gates = self._subset(
            lambda g: (
                g.vs_baseline is None and g.metric not in PREDICTION_METRICS and g.name != winner
            )
        )
        self.unmirrored_gates = self._subset(lambda g: g.metric not in PREDICTION_METRICS)

    def _subset(self, keep: Callable[[Gate], bool]) -> GateSet:
        gates = self.gates
        kept = tuple(g for g in gates.gates if keep(g))
        deciding = sum(1 for g in kept if not g.dry_run)
        share = deciding / gates.deciding if gates.deciding else 1.0
        return replace(gates, gates=kept, alpha=gates.alpha * share)

    # ------------------------------------------------------------------------------ recording

    def record(self, kind: EventKind, data: dict[str, Any] | None = None) -> Event:
        self.state.now = self.clock.now()
        event = self.store.append_event(
            self.rollout_id,
            kind,
            data or {},
            at=self.state.now,
            lease=self.lease(),
            phase=self.state.phase,
            snapshot=self.state.to_dict(),
        )
        if event.seq == self.state.commands_seen + 1:
            # Nothing came between the last event read and this one, which is the engine's own
            # (not a command): the next command read need not fetch it back (on object storage
            # each event read is a request).
            self.state.commands_seen = event.seq
        for listener in self.listeners:
            # What is shown or sent about an event never stops the rollout (a closed stdout, a
            # broken reporter): the event is recorded, and the engine goes on.
            try:
                listener(event, self.state)
            except Exception as exc:
                self._listener_failed(listener, exc)
        return event

    def _listener_failed(self, listener: Listener, exc: Exception) -> None:
        if id(listener) in self._failed_listeners:
            return
        self._failed_listeners.add(id(listener))
        name = getattr(listener, "__name__", type(listener).__name__)
        with contextlib.suppress(OSError, ValueError):  # stderr closed too: nothing to tell
            sys.stderr.write(
                f"warning: {name} failed ({type(exc).__name__}: {exc}); the rollout goes on\n"
            )

    def _move(self, phase: Phase) -> None:
        current = self.state.phase_enum
        if current != phase and not can_move(current, phase):
            raise AssertionError(f"illegal transition {current.value} -> {phase.value}")
        self.state.phase = phase.value

    # ----------------------------------------------------------------------------------- tick

    def tick(self) -> TickResult:
        """Observe, act at most once, record. Safe to call again at any time."""
        state = self.state
        if state.phase_enum.terminal:
            return TickResult(state.phase_enum, None)
        now = self.clock.now()
        self._record_facts(now)
        # A change in flight is finished first, before any command is read: a command read now
        # and then skipped would be marked seen and lost (an abort must never be). The next tick
        # reads it.
        if state.pending is not None:
            return self._finish_pending()
        command = self._read_command()
        if command is not None:
            handled = self._apply_command(command)
            if handled is not None:
                return handled
        live = self.adapter.describe()
        phase = state.phase_enum
        if phase in (Phase.PROGRESSING, Phase.WAITING):
            self._check_drift(live)
        handler = {
            Phase.PENDING: self._tick_pending,
            Phase.PREPARING: self._tick_preparing,
            Phase.PROGRESSING: self._tick_progressing,
            Phase.WAITING: self._tick_waiting,
            Phase.PROMOTING: self._tick_promoting,
            Phase.ROLLING_BACK: self._tick_rolling_back,
        }[phase]
        return handler(live, now)

    def _result(self, next_at: float | None, event: Event | None = None) -> TickResult:
        return TickResult(self.state.phase_enum, next_at, event)

    # ---------------------------------------------------------------------------------- facts

    def _record_facts(self, now: float) -> None:
        """Journal what changed in the endpoint's world since the last tick (the sandbox's
        events), so a rehearsal's record reads as what happened. A provider that reports facts
        has ``facts(until)``: every fact by ``until``, in order, the same list on every call."""
        facts = getattr(self.adapter, "facts", None)
        if facts is None or self.state.phase_enum in (Phase.PENDING, Phase.PREPARING):
            return  # the world's clock starts when the candidate is prepared
        happened: list[dict[str, Any]] = facts(now)
        for fact in happened[self.state.facts_seen :]:
            self.state.facts_seen += 1  # in the same snapshot as the event: never twice
            self.record(EventKind.FACT, fact)

    # ------------------------------------------------------------------------------- commands

    def _read_command(self) -> Event | None:
        """The newest unread command from the journal (abort wins over promote)."""
        return self._take_command(aborts_only=False)

    def _take_command(self, *, aborts_only: bool) -> Event | None:
        """The newest unread command (an abort first), marking the journal read; with
        ``aborts_only``, nothing is marked read unless there is an abort to act on (a promote
        read then and not acted on would be lost)."""
        known, self._journal_seq = self._journal_seq, None
        if known is not None and known <= self.state.commands_seen + 1:
            # The journal as read under the lease ends at most one event past what was seen:
            # that event is the one the snapshot was written with (the engine's own, whose
            # snapshot still says seq - 1), so there is no command to read.
            self.state.commands_seen = max(self.state.commands_seen, known)
            return None
        events = self.store.events(self.rollout_id, after=self.state.commands_seen)
        commands = [e for e in events if e.kind in COMMANDS]
        aborts = [e for e in commands if e.kind == EventKind.COMMAND_ABORT]
        if aborts_only and not aborts:
            return None
        if events:
            self.state.commands_seen = events[-1].seq
        if not commands:
            return None
        return aborts[-1] if aborts else commands[-1]

    def _apply_command(
        self, command: Event, abandoned: dict[str, Any] | None = None
    ) -> TickResult | None:
        """Act on a command; ``abandoned`` is the change in flight an abort gives up (it kept
        failing), recorded with the rollback's start."""
        phase = self.state.phase_enum
        who = command.data.get("by", "someone")
        if command.data.get("reason"):
            who = f"{who} ({command.data['reason']})"
        if command.kind == EventKind.COMMAND_ABORT:
            if phase == Phase.PENDING:
                self.state.reason = f"aborted by {who} before any change"
                self._move(Phase.ABORTED)
                return self._result(None, self.record(EventKind.ABORTED, {"by": who}))
            if phase == Phase.ROLLING_BACK:
                return None
            baseline = self.state.baseline
            if phase == Phase.PROMOTING and self.native:
                self.record(
                    EventKind.ABORT_REFUSED,
                    {"by": who, "reason": "too late: the platform's deployment has finished"},
                )
                return None
            if (
                phase == Phase.PROMOTING
                and baseline
                and not self.adapter.describe().variant(baseline)
            ):
                # The promotion already retired the baseline: there is nothing to go back to.
                self.record(
                    EventKind.ABORT_REFUSED,
                    {"by": who, "reason": f"too late: {baseline} was already retired"},
                )
                return None
            data: dict[str, Any] = {"by": who}
            if abandoned is not None:
                data["abandoned"] = abandoned
            return self._start_rollback(f"aborted by {who}", data)
        if command.kind == EventKind.COMMAND_PROMOTE and phase in (
            Phase.PROGRESSING,
            Phase.WAITING,
        ):
            if phase == Phase.WAITING and (self.state.waiting or {}).get("reason") == "fleet":
                # The fleet releases its held target: the baseline may now be retired.
                self.state.waiting = None
                self.state.released = True
                self._move(Phase.PROMOTING)
                return self._result(
                    self.clock.now(), self.record(EventKind.APPROVED, {"by": who, "fleet": True})
                )
            if command.data.get("full"):
                self.state.waiting = None
                self._move(Phase.PROMOTING)
                return self._result(
                    self.clock.now(), self.record(EventKind.PROMOTE_FORCED, {"by": who})
                )
            if phase == Phase.WAITING:
                self.state.waiting = None
                self._move(Phase.PROGRESSING)
                self._advance()
                return self._result(self.clock.now(), self.record(EventKind.APPROVED, {"by": who}))
        return None

    # --------------------------------------------------------------------------- mutations

    def _mutate(self, action: str, args: dict[str, Any]) -> Event:
        """Journal the intent, call the adapter, journal the result."""
        self.state.pending = {"action": action, **args}
        self.record(EventKind.requested(action), args)
        return self._finish_pending_call()

    def _finish_pending_call(self) -> Event:
        pending = self.state.pending
        assert pending is not None
        action = pending["action"]
        args = {k: v for k, v in pending.items() if k != "action"}
        self._claim()
        if action == "set_traffic":
            live = self.adapter.set_traffic(args["weights"])
            self.state.weights = live.weights()
        elif action == "prepare":
            live = self.adapter.prepare(self.strategy.candidate(self.plan), args["baseline"])
            self.state.weights = live.weights()
        elif action == "finalize":
            live = self.adapter.finalize(args["keep"], args["retire"])
            self.state.weights = live.weights()
        elif action == "set_shadow":
            live = self.adapter.set_shadow(args["variant"], float(args["percent"]))  # type: ignore[attr-defined]
            self.state.mirror = {
                v.name: v.shadow_percent for v in live.variants if v.shadow_percent > 0
            }
        elif action == "set_flag":
            return self._set_flag(args)
        elif action in NATIVE_ACTIONS:
            self._native_call(action, args)
            self.state.pending = None
            self._after_mutation(action, args)
            seen = {k: v for k, v in (self.state.native or {}).items() if k in NATIVE_SHOWN}
            return self.record(EventKind.applied(action), {**args, **seen})
        else:  # pragma: no cover - journal from a newer version
            raise MlrolloutError(f"unknown pending action {action!r} in the journal")
        self.state.pending = None
        self.state.capacity = {
            v.name: v.instance_count for v in live.variants if v.instance_count is not None
        }
        self._after_mutation(action, args)
        return self.record(EventKind.applied(action), {**args, "weights": self.state.weights})

    def _set_flag(self, args: dict[str, Any]) -> Event:
        """Write the split into the flag definition (idempotent: a replay after a crash writes
        the same bytes again). The step counts as applied only once the file is written."""
        from mlrollout.flags import flag_definition

        state = self.state
        assert self.flags is not None and state.baseline is not None
        weights = {k: float(v) for k, v in args["weights"].items()}
        definition = flag_definition(
            self.plan, weights, baseline=state.baseline, candidate=state.candidate
        )
        digest = self.flags.write(definition)
        state.flag, state.flag_digest = weights, digest
        state.pending = None
        self._after_mutation("set_flag", args)
        return self.record(
            EventKind.SET_FLAG_APPLIED,
            {**args, "file": self.flags.location, "sha256": digest, "platform": state.weights},
        )

    def _flag_to(self, target: dict[str, float]) -> Event | None:
        """With ``flags``, the mutation that makes the flag name ``target`` (everyone on the
        candidate on a promotion, on the baseline on a rollback) — before the platform's split
        moves; ``None`` when there is nothing to write."""
        if self.flags is None or self.state.baseline is None:
            return None
        current = self.state.flag
        if current is not None and _same(current, target):
            return None
        if current is None and target.get(self.state.candidate, 0.0) <= 0.0:
            return None  # a rollback before any flag was written: nothing routes to the candidate
        return self._mutate("set_flag", {"weights": target})

    def _split_now(self) -> dict[str, float]:
        """The live split users see: the flag's with ``flags`` (once written), else the
        platform's."""
        state = self.state
        if self.flags is not None and state.flag is not None:
            return state.flag
        return state.weights

    def _native_call(self, action: str, args: dict[str, Any]) -> None:
        """One of the platform's own deployment calls (each idempotent, keyed by the rollout's
        id, so a replay after a crash finds what the first attempt made)."""
        adapter: Any = self.adapter
        state = self.state
        if action == "start_native":
            seen = adapter.start_native(
                self.strategy.candidate(self.plan), args["baseline"], self.rollout_id
            )
        elif action == "roll_back_native":
            seen = adapter.roll_back_native(self.rollout_id, args.get("reason", ""))
        else:
            adapter.end_native(self.rollout_id)
            seen = None
        if seen is not None:
            self._native_seen(seen)
        if action == "end_native":
            state.native = {**(state.native or {}), "ended": True}
        elif action == "roll_back_native":
            state.native = {**(state.native or {}), "forced": True}

    def _native_seen(self, seen: NativeDeployment) -> None:
        state = self.state
        assert state.baseline is not None
        state.native = {
            **(state.native or {}),
            "status": seen.status,
            "green_percent": seen.green_percent,
            "detail": seen.detail,
        }
        capacity = {state.candidate: seen.green_instances, state.baseline: seen.blue_instances}
        state.capacity = {k: v for k, v in capacity.items() if v is not None}

    def _after_mutation(self, action: str, args: dict[str, Any]) -> None:
        """Advance the phase once a mutation is applied (also after a crash, on resume)."""
        phase = self.state.phase_enum
        if phase == Phase.PREPARING:
            self._move(Phase.PROGRESSING)
            self._enter_step(0)
        elif phase == Phase.PROGRESSING and action in ("set_traffic", "set_flag"):
            if float(args["weights"].get(self.state.candidate, 0.0)) >= 100.0:
                self.state.switched_at = self.clock.now()
            self._advance()
        elif phase == Phase.PROGRESSING and action == "set_shadow":
            self._advance()
        # PROMOTING and ROLLING_BACK end on the next tick, once the live endpoint shows it.

    def _finish_pending(self) -> TickResult:
        pending = self.state.pending
        assert pending is not None
        try:
            event = self._finish_pending_call()
        except ProviderError as exc:
            if self.state.phase_enum == Phase.ROLLING_BACK:
                raise RollbackFailed(
                    f"rollback could not {pending['action']}: {exc}",
                    hint=f"fix the cause, then `mlrollout resume {self.rollout_id}`",
                ) from exc
            # A forward change that keeps failing (a quota, a capacity the region lacks) is
            # given up when someone aborts: the rollback works from the live endpoint, so it
            # needs nothing the failed call would have done.
            command = self._take_command(aborts_only=True)
            if command is None:
                raise
            self.state.pending = None
            handled = self._apply_command(command, abandoned={**pending, "error": str(exc)})
            if handled is None:  # the abort was refused (too late): the change stays to do
                self.state.pending = pending
                raise
            return handled
        return self._result(self.clock.now(), event)

    # ----------------------------------------------------------------------------- phases

    def _tick_pending(self, live: EndpointState, now: float) -> TickResult:
        candidate = self.plan.candidate.name
        self._check_owner(self._read_owner())
        if live.serving_all() == candidate:
            # Re-running a plan that already went through: nothing to do, and nothing wrong.
            self.state.reason = (
                f"{candidate} already serves 100% on {live.name!r}: nothing to roll out"
            )
            self.state.weights = live.weights()
            self._move(Phase.SUCCEEDED)
            return self._result(
                None, self.record(EventKind.PROMOTED, {"weights": live.weights(), "already": True})
            )
        baseline = baseline_for(self.plan, live)
        self.state.baseline = baseline
        self.state.weights = live.weights()
        self._move(Phase.PREPARING)
        event = self.record(
            EventKind.STARTED,
            {
                "baseline": baseline,
                "candidate": candidate,
                "weights": live.weights(),
                # the model as resolved (a registry reference is never asked again on resume)
                "model": self.plan.candidate.model,
            },
        )
        return self._result(now, event)

    def _tick_preparing(self, live: EndpointState, now: float) -> TickResult:
        action = "start_native" if self.native else "prepare"
        event = self._mutate(action, {"baseline": self.state.baseline})
        return self._result(self.clock.now(), event)

    def _tick_progressing(self, live: EndpointState, now: float) -> TickResult:
        state = self.state
        if state.step >= len(self.steps):  # PROMOTING ends it as the strategy says
            self._move(Phase.PROMOTING)
            return self._result(now, self.record(EventKind.STEPS_COMPLETED, {}))
        step = self.steps[state.step]
        if step.kind == "weight":
            assert step.weight is not None
            action = "set_flag" if self.flags is not None else "set_traffic"
            event = self._mutate(action, {"weights": self._split(step.weight)})
            return self._result(self.clock.now(), event)
        if step.kind == "mirror":
            percent = step.weight
            if percent is None:  # the platform's largest share
                percent = float(getattr(self.adapter.capabilities, "max_mirror_percent", 100.0))
            variant = state.candidate if percent > 0 else None
            event = self._mutate("set_shadow", {"variant": variant, "percent": percent})
            return self._result(self.clock.now(), event)
        if step.kind == "native":
            return self._tick_native(step, now)
        if step.kind == "pause":
            assert step.pause is not None and state.step_started_at is not None
            done_at = state.step_started_at + step.pause
            if now < done_at:
                return self._result(done_at)
            self._advance()
            return self._result(now, self.record(EventKind.STEP_COMPLETED, {"step": step.index}))
        if step.kind == "approve":
            assert step.approve is not None
            timeout = step.approve.timeout
            # The gates keep watching the candidate's live traffic while a human decides: a
            # failure rolls back at once (a `pause` step, by contrast, does not judge).
            split = self._split_now()
            served = split.get(state.candidate, 0) or state.mirror.get(state.candidate, 0)
            watch = bool(self.plan.analysis.gates) and served > 0
            state.waiting = {
                "reason": "approval",
                "since": now,
                "timeout_at": None if timeout is None else now + timeout,
                "on_timeout": step.approve.on_timeout,
                "watch_from": now if watch else None,
            }
            state.next_look_at = now + self.plan.analysis.interval if watch else None
            self._move(Phase.WAITING)
            event = self.record(
                EventKind.WAITING,
                {
                    "reason": "approval",
                    "step": step.index,
                    "timeout_at": state.waiting["timeout_at"],
                },
            )
            due = [t for t in (state.waiting["timeout_at"], state.next_look_at) if t is not None]
            return self._result(min(due) if due else None, event)
        return self._tick_analyze(step, now)

    def _tick_analyze(self, step: ExecStep, now: float) -> TickResult:
        state = self.state
        analysis = self.plan.analysis
        window = step.window
        assert window is not None and state.step_started_at is not None
        start = state.step_started_at + analysis.delay
        if state.next_look_at is None:
            state.next_look_at = start + analysis.interval
        if now < state.next_look_at:
            return self._result(state.next_look_at)
        # The most looks this stage can have: its longest window, plus holding on for data
        # (no_data: hold) when its length is fixed; they let the rollback boundaries come down.
        longest = window.max if window.adaptive else window.max + analysis.max_hold
        verdict = self._look(start, now, horizon=math.ceil(longest / analysis.interval))
        state.looks += 1
        state.next_look_at = now + analysis.interval
        state.last_verdict = verdict.to_dict()
        elapsed = now - start
        outcome = verdict.outcome
        look = self._look_data(
            {"step": step.index, "elapsed": elapsed, "verdict": state.last_verdict}
        )
        if outcome == Outcome.FAIL:
            return self._on_failure(_why(verdict), look)
        decided = None
        if self.winner is not None:  # the winner test alone ends the stage; guardrails only fail
            won = any(g.gate == self.winner[0] and g.outcome == Outcome.PASS for g in verdict.gates)
            if won:
                decided = "passed"
            elif elapsed >= window.max:
                return self._on_failure(
                    f"no winner after {format_duration(elapsed)} (max_duration): " + _why(verdict),
                    look,
                )
        elif window.adaptive:
            if elapsed >= window.min and outcome == Outcome.PASS:
                decided = "passed"
            elif elapsed >= window.max:
                decided = "inconclusive"
        elif elapsed >= window.max:
            decided = {Outcome.HOLD: "hold", Outcome.PASS: "passed"}.get(outcome, "ended")
        if decided == "hold":
            if analysis.no_data == "rollback":
                return self._on_failure(
                    "not enough data at the end of the analysis (no_data: rollback): "
                    + _why(verdict),
                    look,
                )
            if state.hold_since is None:
                state.hold_since = now
            if now - state.hold_since >= analysis.max_hold:
                decided = "inconclusive"
        if decided == "inconclusive":
            return self._inconclusive(verdict, look)
        if decided == "passed":
            self._advance()
            return self._result(now, self.record(EventKind.ANALYSIS_PASSED, look))
        if decided == "ended":  # the bake is over, no gate failed, none has passed yet
            self._advance()
            return self._result(
                now, self.record(EventKind.ANALYSIS_ENDED, {**look, "undecided": True})
            )
        return self._result(state.next_look_at, self.record(EventKind.LOOK, look))

    def _tick_native(self, step: ExecStep, now: float) -> TickResult:
        """Follow the platform's deployment: at each interval read its status, then judge the
        absolute gates on the endpoint's metrics (the platform publishes one variant's numbers
        for both fleets). The platform ending it (done, or rolled back on its own alarms) ends
        the step; a failing gate forces the platform's rollback."""
        state = self.state
        analysis = self.plan.analysis
        assert step.window is not None and state.step_started_at is not None
        start = state.step_started_at + analysis.delay
        if state.next_look_at is None:
            state.next_look_at = start + analysis.interval
        if now < state.next_look_at:
            return self._result(state.next_look_at)
        self._follow_native()
        status = (state.native or {}).get("status")
        if status in ("rolling_back", "rolled_back"):
            detail = (state.native or {}).get("detail") or "its rollback alarm fired"
            return self._start_rollback(
                f"the platform rolled its deployment back: {detail}", {"native": status}
            )
        if status == "succeeded":
            self._advance()
            return self._result(now, self.record(EventKind.STEP_COMPLETED, {"step": step.index}))
        horizon = math.ceil(step.window.max / analysis.interval)
        verdict = self._look(start, now, horizon=horizon)
        state.looks += 1
        state.next_look_at = now + analysis.interval
        state.last_verdict = verdict.to_dict()
        look = {"step": step.index, "elapsed": now - start, "verdict": state.last_verdict}
        if verdict.outcome == Outcome.FAIL:
            return self._on_failure(_why(verdict), look)
        return self._result(state.next_look_at, self.record(EventKind.LOOK, look))

    def _follow_native(self) -> None:
        """Read the platform's deployment; journal it when its status or green's share moved."""
        before = dict(self.state.native or {})
        self._native_seen(self.adapter.native_status(self.rollout_id))  # type: ignore[attr-defined]
        after = self.state.native or {}
        if any(before.get(k) != after.get(k) for k in ("status", "green_percent")):
            self.record(EventKind.NATIVE, {k: after.get(k) for k in NATIVE_SHOWN})

    def _look(self, start: float, now: float, *, horizon: int | None) -> Verdict:
        state = self.state
        assert state.baseline is not None
        if self.native:
            return self._native_look(start, now, horizon=horizon)
        split = self._split_now()
        comparison = self.strategy.comparison(split, state.baseline)
        historical = comparison == "historical" and state.switched_at is not None
        # A historical look reads the baseline's past window itself: now it serves no one.
        variants = (state.candidate,) if historical else (state.candidate, state.baseline)
        query = MetricsQuery(
            start=start,
            end=now,
            variants=variants,
            gates=tuple(self.plan.analysis.gates),
            step=self.plan.analysis.interval,
        )
        try:
            windows = self.metrics.query(query)
        except ProviderError as exc:
            windows = {name: Window(error=str(exc)) for name in variants}
        candidate = windows.get(state.candidate, Window())
        baseline = windows.get(state.baseline, Window())
        candidate.predictions = self._predictions(start, now)
        self._quality(start, now, variants, windows)
        number = max(1, round((now - start) / self.plan.analysis.interval))
        if historical:
            return self._historical_look(start, now, candidate, number, horizon)
        intervals = self._intervals(candidate, baseline)
        if comparison != "concurrent":
            return self.absolute_gates.look(
                candidate, baseline, look=number, horizon=horizon, intervals=intervals
            )
        # The configured split, for the sample-ratio-mismatch check; a mirror copies its share
        # of the baseline's requests to the candidate.
        base_weight = split.get(state.baseline, 0.0)
        cand_weight = split.get(state.candidate, 0.0) or state.mirror.get(state.candidate, 0.0)
        # With segments the candidate's share of requests is not the step's weight (only the
        # segments' users may get it): no expected split to check the sample ratio against.
        share: float | None = cand_weight / (cand_weight + base_weight)
        if self.plan.segments and not state.mirror.get(state.candidate, 0.0):
            share = None
        mirrored = state.mirror.get(state.candidate, 0.0) > 0
        gates = self.gates if mirrored else self.unmirrored_gates
        history = [_difference(counts, [0, 0, {}]) for counts in state.baseline_history]
        return gates.look(
            candidate,
            baseline,
            candidate_share=share,
            look=number,
            horizon=horizon,
            intervals=intervals,
            baseline_history=history,
        )

    def _predictions(self, start: float, now: float) -> PredictionSummary | None:
        """The two variants' paired predictions over the window, for the prediction gates; the
        drift bins are fixed at the first look that sees the baseline's outputs."""
        gates = [g for g in self.plan.analysis.gates if g.metric in PREDICTION_METRICS]
        if not gates or self.capture is None:
            return None
        state = self.state
        assert state.baseline is not None
        bins = None if state.capture_bins is None else Bins.from_dict(state.capture_bins)
        query = capture_query(self.plan, start, now, state.baseline, state.candidate, bins)
        try:
            summary = self.capture.read(query)
        except ProviderError as exc:
            return PredictionSummary(error=str(exc))
        if state.capture_bins is None and summary.bins is not None:
            state.capture_bins = summary.bins.to_dict()  # in this look's snapshot
        self._captured = summary
        return summary

    def _quality(
        self, start: float, now: float, variants: tuple[str, ...], windows: dict[str, Window]
    ) -> None:
        """Each variant's predictions joined with the labels and ratings in by now, onto its
        window, for the quality gates."""
        if self.feedback is None:
            return
        query = feedback_query(self.plan, start, now, variants)
        try:
            counts = self.feedback.read(query)
        except ProviderError as exc:
            counts = {name: QualityCounts(error=str(exc)) for name in variants}
        labelled = {
            name: counts.get(name)
            or QualityCounts(error=f"the feedback source returned nothing for {name!r}")
            for name in variants
        }
        for name, quality in labelled.items():
            windows.setdefault(name, Window()).quality = quality
        self._labelled = labelled

    def _look_data(self, look: dict[str, Any]) -> dict[str, Any]:
        """A look's journal entry, with what the capture paired at it (counts, and at most
        :data:`~mlrollout.capture.MAX_EXAMPLES` disagreeing examples) and the labels joined at
        it, for the report."""
        summary, self._captured = self._captured, None
        if summary is not None:
            look["capture"] = capture_record(summary)
        labelled, self._labelled = self._labelled, None
        if labelled is not None:
            look["quality"] = {name: counts.to_dict() for name, counts in labelled.items()}
        return look

    def _native_look(self, start: float, now: float, *, horizon: int | None) -> Verdict:
        """The absolute gates on the baseline variant's metrics: during the platform's own
        deployment both fleets publish under that one variant name."""
        state = self.state
        assert state.baseline is not None
        query = MetricsQuery(
            start=start,
            end=now,
            variants=(state.baseline,),
            gates=tuple(self.plan.analysis.gates),
            step=self.plan.analysis.interval,
        )
        try:
            window = self.metrics.query(query).get(state.baseline, Window())
        except ProviderError as exc:
            window = Window(error=str(exc))
        number = max(1, round((now - start) / self.plan.analysis.interval))
        return self.absolute_gates.look(window, Window(), look=number, horizon=horizon)

    def _historical_look(
        self, start: float, now: float, candidate: Window, number: int, horizon: int | None
    ) -> Verdict:
        """Judge the candidate at 100 % against the baseline's own window of the same length just
        before the switch (blue-green: blue serves no one now). The verdicts of the gates that
        compare say so: a change between the two windows (the time of day, the traffic's mix)
        counts as the candidate's."""
        state = self.state
        assert state.baseline is not None and state.switched_at is not None
        end = state.switched_at
        query = MetricsQuery(
            start=end - (now - start),
            end=end,
            variants=(state.baseline,),
            gates=tuple(self.plan.analysis.gates),
            step=self.plan.analysis.interval,
        )
        try:
            baseline = self.metrics.query(query).get(state.baseline, Window())
        except ProviderError as exc:
            baseline = Window(error=str(exc))
        verdict = self.unmirrored_gates.look(candidate, baseline, look=number, horizon=horizon)
        note = (
            f" [historical baseline: {state.baseline}'s {format_duration(now - start)} before "
            "the switch; what changed since (time of day, traffic mix) counts as the candidate's]"
        )
        compared = {g.name for g in self.plan.analysis.gates if g.vs_baseline is not None}
        for gate in verdict.gates:
            if gate.gate in compared:
                gate.reason += note
                gate.numbers["historical"] = 1.0
        return verdict

    def _intervals(self, candidate: Window, baseline: Window) -> tuple[tuple[Window, Window], ...]:
        """This stage's per-look increments (what each look added to the cumulative windows),
        oldest first, for the analysis' burstiness estimate. A look whose windows are missing
        or failed adds none (the next usable look's increment spans both); windows that went
        backwards (a source that revised its data) start the increments over."""
        cand, base = _counts(candidate), _counts(baseline)
        history = self.state.stage_counts
        if cand is None or base is None:
            return _increments(history)
        counts = [cand, base]
        if history and not all(
            _not_below(new, old) for new, old in zip(counts, history[-1], strict=True)
        ):
            history.clear()
        history.append(counts)
        return _increments(history)

    def _inconclusive(self, verdict: Verdict, look: dict[str, Any]) -> TickResult:
        analysis = self.plan.analysis
        why = "undecided at the end of the analysis: " + _why(verdict)
        self.state.hold_since = None
        if analysis.on_inconclusive == "rollback":
            return self._on_failure(why + " (on_inconclusive: rollback)", look)
        if analysis.on_inconclusive == "continue":
            self._advance()
            return self._result(
                self.clock.now(),
                self.record(EventKind.ANALYSIS_INCONCLUSIVE, {**look, "then": "continue"}),
            )
        # The look that ended it is journalled as such, as it is for the other two policies.
        self.record(EventKind.ANALYSIS_INCONCLUSIVE, {**look, "then": "pause"})
        return self._pause(why + " (on_inconclusive: pause)", look)

    def _on_failure(self, reason: str, look: dict[str, Any]) -> TickResult:
        self.record(EventKind.ANALYSIS_FAILED, {**look, "reason": reason})
        if self.plan.rollback.automatic:
            return self._start_rollback(reason, {})
        return self._pause(reason + " (rollback.automatic is false)", look)

    def _pause(self, reason: str, look: dict[str, Any]) -> TickResult:
        self.state.waiting = {
            "reason": reason,
            "since": self.clock.now(),
            "timeout_at": None,
            "on_timeout": None,
        }
        self._move(Phase.WAITING)
        return self._result(None, self.record(EventKind.PAUSED, {"reason": reason}))

    def _tick_waiting(self, live: EndpointState, now: float) -> TickResult:
        state = self.state
        waiting = state.waiting or {}
        timeout_at = waiting.get("timeout_at")
        watch_from = waiting.get("watch_from")
        event = None
        if watch_from is not None and state.next_look_at is not None and now >= state.next_look_at:
            verdict = self._look(watch_from, now, horizon=None)  # a human decides when it ends
            state.looks += 1
            state.next_look_at = now + self.plan.analysis.interval
            state.last_verdict = verdict.to_dict()
            look = self._look_data(
                {
                    "step": state.step,
                    "elapsed": now - watch_from,
                    "verdict": state.last_verdict,
                    "waiting": True,
                }
            )
            if verdict.outcome == Outcome.FAIL:
                return self._on_failure(_why(verdict), look)
            event = self.record(EventKind.LOOK, look)
        if timeout_at is None or now < timeout_at:
            watching = state.next_look_at if watch_from is not None else None
            due = [t for t in (timeout_at, watching) if t is not None]
            return self._result(min(due) if due else None, event)
        waited = format_duration(now - waiting.get("since", now))
        if waiting.get("on_timeout") == "continue":
            self.state.waiting = None
            self._move(Phase.PROGRESSING)
            self._advance()
            return self._result(
                now, self.record(EventKind.APPROVAL_TIMED_OUT, {"then": "continue"})
            )
        return self._start_rollback(
            f"no approval after {waited} (on_timeout: rollback)", {"timed_out": True}
        )

    def _tick_promoting(self, live: EndpointState, now: float) -> TickResult:
        state = self.state
        assert state.baseline is not None
        if self.native:  # the platform switched and retired blue itself: clean up after it
            if not (state.native or {}).get("ended"):
                return self._result(now, self._mutate("end_native", {}))
            self._release_owner()
            self._move(Phase.SUCCEEDED)
            return self._result(None, self.record(EventKind.PROMOTED, {"weights": live.weights()}))
        if any(v.shadow_percent > 0 for v in live.variants):
            return self._result(now, self._mutate("set_shadow", {"variant": None, "percent": 0.0}))
        if self.strategy.ending(self.plan) == "remove":
            return self._tick_removing(live, now)
        # The flag names the candidate for everyone first; then the platform's split follows.
        flagged = self._flag_to({state.candidate: 100.0, state.baseline: 0.0})
        if flagged is not None:
            return self._result(self.clock.now(), flagged)
        target = {state.candidate: 100.0}
        if live.variant(state.baseline) is not None:
            target[state.baseline] = 0.0
        if not _same(live.weights(), target):
            return self._result(now, self._mutate("set_traffic", {"weights": target}))
        if live.variant(state.baseline) is not None:
            if self.plan.fleet is not None and not state.released:
                return self._hold_for_fleet(now)
            event = self._mutate("finalize", {"keep": state.candidate, "retire": state.baseline})
            return self._result(self.clock.now(), event)
        self._release_owner()
        self._move(Phase.SUCCEEDED)
        return self._result(None, self.record(EventKind.PROMOTED, {"weights": live.weights()}))

    def _hold_for_fleet(self, now: float) -> TickResult:
        """A fleet's target: the candidate serves all of it and the baseline is still deployed.
        It waits there until the fleet releases it (``promote``: every wave has passed) or
        rolls it back (``abort``: a target failed, ``rollback_all``)."""
        fleet = self.plan.fleet
        assert fleet is not None
        self.state.waiting = {
            "reason": "fleet",
            "since": now,
            "timeout_at": None,
            "on_timeout": None,
            "watch_from": None,
        }
        self.state.next_look_at = None
        self._move(Phase.WAITING)
        event = self.record(EventKind.WAITING, {"reason": "fleet", "fleet": fleet.id})
        return self._result(None, event)

    def _tick_removing(self, live: EndpointState, now: float) -> TickResult:
        """The rollout passed and ends with the candidate removed, the baseline serving as it
        was (a shadow evaluation)."""
        state = self.state
        assert state.baseline is not None
        flagged = self._flag_to({state.baseline: 100.0, state.candidate: 0.0})
        if flagged is not None:
            return self._result(self.clock.now(), flagged)
        target = {state.baseline: 100.0}
        if live.variant(state.candidate) is not None:
            target[state.candidate] = 0.0
        if not _same(live.weights(), target):
            return self._result(now, self._mutate("set_traffic", {"weights": target}))
        if live.variant(state.candidate) is not None:
            event = self._mutate("finalize", {"keep": state.baseline, "retire": state.candidate})
            return self._result(self.clock.now(), event)
        self._release_owner()
        undecided = [
            str(g.get("gate"))
            for g in (state.last_verdict or {}).get("gates") or []
            if g.get("outcome") not in ("pass", None) and not g.get("dry_run")
        ]
        judged = (
            f"no gate failed (undecided at the end: {', '.join(undecided)})"
            if undecided
            else "every gate passed"
        )
        state.reason = f"{judged}; {state.candidate} was an evaluation and is removed"
        state.evaluated = True
        self._move(Phase.SUCCEEDED)
        return self._result(
            None, self.record(EventKind.EVALUATED, {"weights": live.weights(), "passed": True})
        )

    def _start_rollback(self, reason: str, data: dict[str, Any]) -> TickResult:
        self.state.reason = reason
        self.state.waiting = None
        self._move(Phase.ROLLING_BACK)
        return self._result(
            self.clock.now(), self.record(EventKind.ROLLBACK_STARTED, {"reason": reason, **data})
        )

    def _tick_rolling_back(self, live: EndpointState, now: float) -> TickResult:
        state = self.state
        baseline = state.baseline
        if baseline is None:  # nothing was prepared
            self._release_owner()
            self._move(Phase.ROLLED_BACK)
            return self._result(None, self.record(EventKind.ROLLED_BACK, {"reason": state.reason}))
        if self.native and state.native is not None:
            return self._native_rolling_back(now)
        candidate = live.variant(state.candidate)
        target = {baseline: 100.0}
        if candidate is not None:
            target[state.candidate] = 0.0
        try:
            # Everyone back on the baseline: the flag first (it routes the users), then the rest.
            flagged = self._flag_to({baseline: 100.0, state.candidate: 0.0})
            if flagged is not None:
                return self._result(self.clock.now(), flagged)
            if any(v.shadow_percent > 0 for v in live.variants):  # the mirror stops first
                event = self._mutate("set_shadow", {"variant": None, "percent": 0.0})
                return self._result(self.clock.now(), event)
            if not _same(live.weights(), target):
                return self._result(now, self._mutate("set_traffic", {"weights": target}))
            if candidate is not None and self.plan.rollback.cleanup:
                event = self._mutate("finalize", {"keep": baseline, "retire": state.candidate})
                return self._result(self.clock.now(), event)
        except ProviderError as exc:
            raise RollbackFailed(
                f"rollback failed: {exc}",
                hint=f"fix the cause, then `mlrollout resume {self.rollout_id}`",
            ) from exc
        self._release_owner()
        self._move(Phase.ROLLED_BACK)
        return self._result(
            None,
            self.record(EventKind.ROLLED_BACK, {"reason": state.reason, "weights": live.weights()}),
        )

    def _native_rolling_back(self, now: float) -> TickResult:
        """Make the platform roll its deployment back (once), follow it until blue serves again,
        then remove what the deployment needed (alarms, the new config)."""
        state = self.state
        native = state.native or {}
        if native.get("ended"):
            self._release_owner()
            self._move(Phase.ROLLED_BACK)
            live = self.adapter.describe()
            return self._result(
                None,
                self.record(
                    EventKind.ROLLED_BACK, {"reason": state.reason, "weights": live.weights()}
                ),
            )
        try:
            self._follow_native()
            status = (state.native or {}).get("status")
            if status in ("deploying", "baking") and not native.get("forced"):
                event = self._mutate("roll_back_native", {"reason": state.reason or ""})
                return self._result(self.clock.now(), event)
            if status in ("deploying", "baking", "rolling_back"):
                return self._result(now + min(self.plan.analysis.interval, NATIVE_POLL))
            if status == "succeeded":
                raise RollbackFailed(
                    "the platform finished its deployment before the rollback took effect: "
                    f"green serves all traffic and blue is retired ({state.reason})",
                    hint="roll the previous model out again (a plan whose candidate is it)",
                )
            event = self._mutate("end_native", {})  # rolled back (or never started)
        except ProviderError as exc:
            raise RollbackFailed(
                f"rollback failed: {exc}",
                hint=f"fix the cause, then `mlrollout resume {self.rollout_id}`",
            ) from exc
        return self._result(self.clock.now(), event)

    # ---------------------------------------------------------------------------- ownership

    def _read_owner(self) -> OwnerMark | None:
        read = getattr(self.adapter, "read_owner", None)
        return None if read is None else read()

    def _check_owner(self, mark: OwnerMark | None) -> None:
        """Stop (exit 5) if another live rollout — one of another state store — owns the
        endpoint. A mark left by a rollout of this store that has ended is stale."""
        if mark is None or mark.rollout_id == self.rollout_id or not mark.live(self.wall()):
            return
        try:
            mine = self.store.get_rollout(mark.rollout_id)
        except UsageError:
            mine = None
        if mine is not None and mine.id == mark.rollout_id and Phase(mine.phase).terminal:
            return
        left = mark.expires_at - self.wall()
        raise EndpointOwned(
            f"endpoint {self.plan.target.endpoint!r} is driven by rollout {mark.rollout_id} "
            f"({mark.holder}), which is not in this state store ({self.store.location}); "
            f"its mark on the endpoint expires in {left:.0f}s",
            hint="run mlrollout with that runner's --state (then `mlrollout status "
            f"{mark.rollout_id}`), or stop that runner: its mark lapses if it stops renewing",
        )

    def _claim(self) -> None:
        """Before every change: check the endpoint's ownership mark, and write ours (with the
        lease's expiry) if it is missing, another's that lapsed, or ours and due for refresh."""
        if getattr(self.adapter, "write_owner", None) is None:
            return
        mark = self._read_owner()
        self._check_owner(mark)
        lease = self.lease()
        expires = lease.expires_at if lease is not None else self.wall() + OWNER_TTL
        holder = lease.holder if lease is not None else self.holder
        if (
            mark is not None
            and mark.rollout_id == self.rollout_id
            and mark.expires_at >= expires - OWNER_REFRESH
        ):
            return
        self.adapter.write_owner(OwnerMark(self.rollout_id, holder, expires))

    def _release_owner(self) -> None:
        """At the end: remove our mark (best effort; a mark left behind lapses by itself)."""
        write = getattr(self.adapter, "write_owner", None)
        if write is None:
            return
        try:
            mark = self._read_owner()
            if mark is not None and mark.rollout_id == self.rollout_id:
                write(None)
        except ProviderError:
            pass

    # ------------------------------------------------------------------------------ helpers

    def _split(self, candidate_weight: float) -> dict[str, float]:
        assert self.state.baseline is not None
        return self.strategy.weights(candidate_weight, self.state.candidate, self.state.baseline)

    def _enter_step(self, index: int) -> None:
        self.state.step = index
        self.state.step_started_at = self.clock.now()
        self.state.next_look_at = None
        self.state.hold_since = None
        if self.state.stage_counts:
            kept = self.state.baseline_history + [
                _counts(base) or [0, 0, {}] for _, base in _increments(self.state.stage_counts)
            ]
            self.state.baseline_history = kept[-HISTORY:]
        self.state.stage_counts = []

    def restart_step(self) -> None:
        """Start the current step over (after adopting a hand-made change)."""
        self._enter_step(self.state.step)

    def _advance(self) -> None:
        self._enter_step(self.state.step + 1)

    def _check_drift(self, live: EndpointState) -> None:
        expected = self.state.weights
        if expected and not _same(live.weights(), expected):
            raise EndpointDrifted(
                f"endpoint {live.name!r} changed outside this rollout: the journal expects "
                f"{_fmt(expected)}, the endpoint has {_fmt(live.weights())}",
                hint=f"`mlrollout abort {self.rollout_id}` restores the baseline; "
                f"`mlrollout resume --adopt {self.rollout_id}` continues from the live weights",
            )

    def current_step(self) -> ExecStep | None:
        if self.state.step < len(self.steps):
            return self.steps[self.state.step]
        return None


def baseline_for(plan: Plan, live: EndpointState) -> str:
    """The variant a rollout of ``plan`` compares its candidate with on ``live`` (``baseline:
    auto``: the one taking all traffic); :class:`EndpointDrifted` when there is none to compare
    with or the candidate is already serving. ``plan preview --live`` asks the same."""
    candidate = plan.candidate.name
    if plan.baseline == "auto":
        found = live.serving_all()
        if found is None:
            raise EndpointDrifted(
                f"endpoint {live.name!r} splits traffic {_fmt(live.weights())}: "
                "no variant takes all of it, so the baseline is ambiguous",
                hint="set `baseline:` in the plan to the variant to compare against",
            )
        baseline = found
    else:
        baseline = plan.baseline
        if live.variant(baseline) is None:
            raise EndpointDrifted(
                f"the baseline {baseline!r} is not on endpoint {live.name!r} "
                f"(it has {', '.join(live.weights()) or 'no variants'})"
            )
    if baseline == candidate:
        raise EndpointDrifted(
            f"the baseline and the candidate are both {candidate!r}: nothing to compare",
            hint="name the candidate after the new model's variant",
        )
    existing = live.variant(candidate)
    if existing is not None and existing.weight > 0:
        raise EndpointDrifted(
            f"the candidate {candidate!r} already takes {existing.weight:g}% on "
            f"{live.name!r}; bring it to 0% or pick another name"
        )
    return baseline


def _counts(window: Window) -> list[Any] | None:
    """A cumulative window's counts as stored in :attr:`RolloutState.stage_counts`."""
    if window.error or window.requests is None or window.errors is None:
        return None
    custom = {name: [v.total, v.count] for name, v in window.custom.items()}
    return [window.requests, window.errors, custom]


def _not_below(new: list[Any], old: list[Any]) -> bool:
    return bool(new[0] >= old[0] and new[1] >= old[1])


def _increments(history: list[list[Any]]) -> tuple[tuple[Window, Window], ...]:
    out: list[tuple[Window, Window]] = []
    previous: list[Any] = [[0, 0, {}], [0, 0, {}]]
    for counts in history:
        out.append((_difference(counts[0], previous[0]), _difference(counts[1], previous[1])))
        previous = counts
    return tuple(out)


def _difference(new: list[Any], old: list[Any]) -> Window:
    custom = {
        name: CustomValue(total - old[2].get(name, [0, 0])[0], count - old[2].get(name, [0, 0])[1])
        for name, (total, count) in new[2].items()
    }
    return Window(requests=new[0] - old[0], errors=new[1] - old[1], custom=custom)


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal weights within tolerance (a missing variant counts as 0 %)."""
    return all(
        abs(a.get(name, 0.0) - b.get(name, 0.0)) <= WEIGHT_TOLERANCE for name in set(a) | set(b)
    )


def _why(verdict: Verdict) -> str:
    """The reasons of the gates that decided this look (the failing ones, or the undecided)."""
    return "; ".join(f"{g.gate}: {g.reason}" for g in verdict.deciding) or "no gate decided"


def _fmt(weights: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}%" for k, v in weights.items()) or "no variants"
