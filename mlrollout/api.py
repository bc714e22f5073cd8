"""The library API: run rollouts from Python (an Airflow task, a notebook, a test).

A thin, typed facade over the engine's :class:`~mlrollout.engine.runner.Runner` and the state
store, doing what the CLI's ``run``, ``resume``, ``promote``, ``abort``, ``status`` and ``list`` do,
without the CLI: it imports neither typer nor rich, and no cloud SDK unless a plan's provider
(or the state URL's backend) needs one. See ``docs/library.md``.

::

    from mlrollout.api import Rollouts, load_plan

    rollouts = Rollouts("/tmp/state")                 # a directory, a .db file, or s3://...
    outcome = rollouts.run(load_plan("plans/local-canary-good.yaml"))
    outcome.phase, outcome.exit_code, outcome.weights  # 'succeeded', 0, {'v8': 100.0}

Errors are those of :mod:`mlrollout.errors`: every one is a :class:`MlrolloutError` with the
``exit_code`` the CLI would exit with (4 invalid plan, 5 needs a human, 6 provider or state
error before any change, ...). Any other exception is a bug of mlrollout (the CLI's exit 70).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlrollout.clock import Clock
from mlrollout.engine.engine import Engine, Listener, RolloutState
from mlrollout.engine.phases import Phase
from mlrollout.engine.runner import Runner, RunOutcome, WaitDecision
from mlrollout.errors import (
    ExitCode,
    LeaseHeld,
    MlrolloutError,
    NeedsHuman,
    PlanError,
    ProviderError,
    StateUnavailable,
    UsageError,
)
from mlrollout.plan.loader import LoadedPlan, load_plan, parse_plan
from mlrollout.state.base import Event, RolloutRecord, StateStore
from mlrollout.state.open import open_store

__all__ = [
    "Event",
    "ExitCode",
    "GateResult",
    "LeaseHeld",
    "LoadedPlan",
    "MlrolloutError",
    "NeedsHuman",
    "OnWait",
    "Outcome",
    "Phase",
    "PlanError",
    "ProviderError",
    "Rollouts",
    "StateUnavailable",
    "UsageError",
    "WaitDecision",
    "load_plan",
    "open_store",
    "parse_plan",
]

#: What to do when a rollout waits for a human (an ``approve`` step, a policy pause): a fixed
#: answer, or a function of the rollout's :class:`Outcome` so far that returns one.
#: ``"detach"`` returns (phase ``waiting``, exit code 3); ``"promote"``/``"abort"`` answer it;
#: ``"wait"`` keeps waiting for a ``promote``/``abort`` recorded by someone else (another
#: process's :meth:`Rollouts.promote`, or ``mlrollout promote ID``), polling the journal.
OnWait = WaitDecision | Callable[["Outcome"], WaitDecision]


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict at the last look."""

    name: str
    metric: str
    outcome: str  # "continue" | "hold" | "pass" | "fail"
    reason: str
    dry_run: bool = False


@dataclass(frozen=True)
class Outcome:
    """A rollout as it stands: what :meth:`Rollouts.drive` (and ``run``, ``resume``, ``abort``)
    returns when it stops, and what :meth:`Rollouts.status` reads from the journal."""

    rollout_id: str
    name: str  # the plan's name
    endpoint: str  # the endpoint's key: "provider:settings:endpoint"
    phase: Phase  # a StrEnum: ``outcome.phase == "succeeded"`` works
    #: What ``mlrollout run`` would exit with: 0 promoted, 1 rolled back or aborted, 3 not ended
    #: (waiting for a human, stopped between two ticks, or still being driven elsewhere).
    exit_code: int
    reason: str | None  # why it ended or is rolling back; None while it goes on, or promoted
    weights: dict[str, float]  # traffic per variant, in percent, as last set
    candidate: str
    baseline: str | None
    step: int  # index of the current step of the expanded plan
    waiting_for: str | None  # while phase is "waiting": "approval" or why it paused
    verdict: str | None  # the last look's verdict: "continue" | "hold" | "pass" | "fail"
    gates: tuple[GateResult, ...] = ()  # each gate's verdict at the last look
    interrupted: bool = False  # stopped between two ticks by Rollouts.stop()
    last_verdict: Mapping[str, Any] = field(default_factory=dict, repr=False)  # all the numbers

    @property
    def ended(self) -> bool:
        """Succeeded, rolled back or aborted: nothing more will happen to it."""
        return self.phase.terminal

    @property
    def waiting(self) -> bool:
        """It waits for a human: :meth:`Rollouts.promote` (then ``resume``) or ``abort``."""
        return self.phase == Phase.WAITING

    @classmethod
    def of(
        cls, record: RolloutRecord, state: RolloutState, *, interrupted: bool = False
    ) -> Outcome:
        phase = state.phase_enum
        code = RunOutcome(record.id, phase, state).exit_code  # the CLI's own mapping
        verdict = dict(state.last_verdict or {})
        gates = verdict.get("gates")
        waiting = state.waiting or {}
        return cls(
            rollout_id=record.id,
            name=record.name,
            endpoint=record.endpoint_key,
            phase=phase,
            exit_code=code,
            reason=state.reason,
            weights=dict(state.weights),
            candidate=state.candidate,
            baseline=state.baseline,
            step=state.step,
            waiting_for=str(waiting.get("reason", "approval")) if phase == Phase.WAITING else None,
            verdict=verdict.get("outcome"),
            gates=tuple(
                GateResult(
                    name=str(g.get("gate", "")),
                    metric=str(g.get("metric", "")),
                    outcome=str(g.get("outcome", "")),
                    reason=str(g.get("reason", "")),
                    dry_run=bool(g.get("dry_run", False)),
                )
                for g in (gates if isinstance(gates, list) else [])
                if isinstance(g, dict)
            ),
            interrupted=interrupted,
            last_verdict=verdict,
        )


class Rollouts:
    """The rollouts of one state store, driven on behalf of one holder (this process).

    ``state``: a directory (SQLite inside, as ``--state`` of the CLI), a ``.db``/``.sqlite``
    file, a backend URL (``s3://bucket/prefix``), or a :class:`~mlrollout.state.base.StateStore`
    already open. ``on_event`` is called with every journal event this object's drives record
    (progress for a log); its exceptions never change the rollout. ``holder`` names this runner
    in leases and on the endpoint (default ``user@host pid N``).

    Time: each drive runs on the plan's clock — virtual time for the sandbox at ``speed: max``
    (a 30-minute plan takes well under a second), sped-up time for a numeric ``speed``, the
    system clock for cloud providers — unless a ``clock`` is given to it.
    """

    def __init__(
        self,
        state: str | os.PathLike[str] | StateStore = ".mlrollout",
        *,
        on_event: Callable[[Event], None] | None = None,
        holder: str | None = None,
    ) -> None:
        self._owns_store = isinstance(state, str | os.PathLike)
        self.store: StateStore = (
            open_store(state) if isinstance(state, str | os.PathLike) else state
        )
        self._on_event = on_event
        self._holder = holder
        self._running: Runner | None = None

    # ------------------------------------------------------------------------------- driving

    def create(self, plan: LoadedPlan | str | os.PathLike[str]) -> str:
        """Record a new rollout of ``plan`` (a :func:`load_plan`/:func:`parse_plan` result, or
        a plan file's path) and return its id. Nothing changes on the endpoint yet.

        Raises :class:`PlanError` for an invalid plan file and
        :class:`~mlrollout.errors.RolloutActive` when a rollout of this store is active on the
        same endpoint."""
        loaded = plan if isinstance(plan, LoadedPlan) else load_plan(plan)
        return self._runner().create(loaded).id

    def run(
        self,
        plan: LoadedPlan | str | os.PathLike[str],
        *,
        on_wait: OnWait = "detach",
        clock: Clock | None = None,
    ) -> Outcome:
        """:meth:`create` then :meth:`drive`: the ``mlrollout run --yes`` of the library."""
        return self.drive(self.create(plan), on_wait=on_wait, clock=clock)

    def drive(
        self,
        rollout_id: str,
        *,
        on_wait: OnWait = "detach",
        clock: Clock | None = None,
        adopt: bool = False,
        max_ticks: int | None = None,
    ) -> Outcome:
        """Take the endpoint's lease and drive the rollout until it ends (promoted, rolled back)
        or waits for a human and ``on_wait`` says ``detach`` (the default): then the outcome's
        phase is ``waiting`` and its exit code 3. An ended rollout is returned as recorded.

        ``clock``: the plan's own unless given (see the class). ``adopt``: the endpoint was
        changed by hand (:class:`~mlrollout.errors.EndpointDrifted`); take its live weights as
        the rollout's. ``max_ticks``: stop after that many ticks (exit code 3 unless ended).

        Raises :class:`LeaseHeld` when another runner drives the endpoint, :class:`NeedsHuman`
        (exit 5) when it cannot go on by itself, :class:`ProviderError` (exit 6) when the
        provider refuses before any change."""
        record = self.store.get_rollout(rollout_id)
        if Phase(record.phase).terminal:
            return self._outcome(record)
        runner = self._runner()
        self._running = runner

        def ask(engine: Engine) -> WaitDecision:
            if isinstance(on_wait, str):
                return on_wait
            return on_wait(Outcome.of(record, engine.state))

        try:
            result = runner.drive(
                record.id, on_wait=ask, clock=clock, adopt=adopt, max_ticks=max_ticks
            )
        finally:
            self._running = None
        return Outcome.of(record, result.state, interrupted=result.interrupted)

    def resume(
        self,
        rollout_id: str,
        *,
        on_wait: OnWait = "detach",
        clock: Clock | None = None,
        adopt: bool = False,
    ) -> Outcome:
        """Continue a rollout from its journal (after :meth:`promote`, a detach, a crash or a
        killed process): ``mlrollout resume``. The same as :meth:`drive`."""
        return self.drive(rollout_id, on_wait=on_wait, clock=clock, adopt=adopt)

    def promote(self, rollout_id: str, *, full: bool = False) -> Outcome:
        """Record an approval (the answer to an ``approve`` step or a pause); with ``full``,
        skip the remaining steps. The runner driving the rollout acts on it — or, when none
        does, the next :meth:`resume`. Returns the rollout as recorded (still ``waiting``).

        Raises :class:`UsageError` if the rollout already ended."""
        record = self._active(rollout_id)
        self._runner().command(record.id, "promote", full=full)
        return self.status(record.id)

    def abort(self, rollout_id: str, *, clock: Clock | None = None) -> Outcome:
        """Record an abort and roll back now: traffic to the baseline first, then the candidate
        removed. When another runner drives the rollout (it holds the lease), that runner rolls
        back: the outcome returned is then the rollout as recorded, not ended yet.

        Raises :class:`UsageError` if the rollout already ended."""
        record = self._active(rollout_id)
        runner = self._runner()
        runner.command(record.id, "abort")
        try:
            return self.drive(record.id, on_wait="detach", clock=clock)
        except LeaseHeld:
            return self.status(record.id)

    # -------------------------------------------------------------------------------- fleets

    def create_fleet(self, plan: LoadedPlan | str | os.PathLike[str]) -> str:
        """Record a new fleet of a plan with ``targets:`` and return its id (nothing changes on
        any endpoint yet); see :mod:`mlrollout.engine.fleet`."""
        loaded = plan if isinstance(plan, LoadedPlan) else load_plan(plan)
        fleet_id: str = self._fleets().create(loaded).id
        return fleet_id

    def drive_fleet(self, fleet_id: str, *, max_passes: int | None = None) -> dict[str, Any]:
        """Drive the fleet wave after wave until it ends (``max_passes``: at most that many
        passes), and return :meth:`fleet_status`."""
        self._fleets().drive(fleet_id, max_passes=max_passes)
        return self.fleet_status(fleet_id)

    def run_fleet(self, plan: LoadedPlan | str | os.PathLike[str]) -> dict[str, Any]:
        """:meth:`create_fleet` then :meth:`drive_fleet`."""
        return self.drive_fleet(self.create_fleet(plan))

    def fleet_status(self, fleet_id: str) -> dict[str, Any]:
        """The fleet (``phase``: running, releasing, rolling_back, stopping, or its end
        succeeded, rolled_back, stopped; ``reason``) and a row per target, as ``mlrollout status
        FLEET -o json`` prints it."""
        from mlrollout.engine.fleet import fleet_status

        return fleet_status(self.store, fleet_id).to_dict()

    def abort_fleet(self, fleet_id: str) -> None:
        """Record an abort of the fleet: its driver rolls back every target already shifted."""
        from mlrollout.engine.runner import actor

        self._fleets().abort(fleet_id, by=self._holder or actor())

    def _fleets(self) -> Any:
        from mlrollout.engine.fleet import FleetRunner

        on_event = self._on_event
        listeners: list[Listener] = []
        if on_event is not None:
            listeners.append(lambda event, state: on_event(event))
        holder = self._runner().holder  # the same holder as this object's rollouts
        return FleetRunner(self.store, holder=holder, listeners=listeners)

    def stop(self) -> None:
        """Ask the drive in progress (from a signal handler, another thread) to stop after the
        change in flight is recorded; it returns with ``interrupted`` set, and :meth:`resume`
        continues exactly there."""
        running = self._running
        if running is not None:
            running.stop_requested = True

    # ------------------------------------------------------------------------------- reading

    def status(self, rollout_id: str | None = None) -> Outcome:
        """The rollout (by id or unique id prefix; the newest without one) as last recorded.

        Raises :class:`UsageError` for an unknown id or an empty store."""
        if rollout_id:
            return self._outcome(self.store.get_rollout(rollout_id))
        newest = self.store.list_rollouts(limit=1)
        if not newest:
            raise UsageError(f"no rollouts in {self.store.location}")
        return self._outcome(newest[0])

    def list_rollouts(self, *, active_only: bool = False, limit: int = 100) -> list[Outcome]:
        """The rollouts of the store, newest first (only those not ended with ``active_only``)."""
        return [
            self._outcome(r) for r in self.store.list_rollouts(active_only=active_only, limit=limit)
        ]

    def events(self, rollout_id: str) -> list[Event]:
        """The rollout's journal, oldest first: every action, look and verdict, with numbers."""
        return self.store.events(self.store.get_rollout(rollout_id).id)

    # ------------------------------------------------------------------------------ closing

    def close(self) -> None:
        """Close the state store if this object opened it (not one it was given)."""
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Rollouts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ private

    def _runner(self) -> Runner:
        listeners: list[Listener] = []
        on_event = self._on_event
        if on_event is not None:
            listeners.append(lambda event, state: on_event(event))
        return Runner(self.store, listeners=listeners, holder=self._holder)

    def _active(self, rollout_id: str) -> RolloutRecord:
        record = self.store.get_rollout(rollout_id)
        if Phase(record.phase).terminal:
            raise UsageError(f"rollout {record.id} already ended ({record.phase})")
        return record

    @staticmethod
    def _outcome(record: RolloutRecord) -> Outcome:
        return Outcome.of(record, RolloutState.from_dict(record.snapshot))
