"""What the operators and triggers do, without Airflow: start, drive and read a rollout or a fleet.

Kept free of Airflow imports so that the same functions run in a worker (``deferrable=False``),
in the triggerer's threads (:mod:`mlrollout_airflow.triggers`) and anywhere else, and so that
their results are plain JSON (an XCom, a ``TriggerEvent`` payload).

Who drives a deferred rollout: each poll of the trigger runs one *pass* (:func:`rollout_pass`),
the same unit of work as ``mlrollout reconcile`` does for every active rollout: take the
endpoint's lease, tick until the next tick lies in the future (the whole rollout at once on the
sandbox's virtual time), hand the lease back. When another runner holds the lease (a
``mlrollout reconcile --watch`` next to Airflow), the pass only reads the journal — so either
model works, and both at once are safe.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from mlrollout.api import (
    LeaseHeld,
    LoadedPlan,
    MlrolloutError,
    Outcome,
    PlanError,
    Rollouts,
    UsageError,
    load_plan,
)
from mlrollout.engine.fleet import FLEET_ENDS, FleetRunner, fleet_status
from mlrollout.engine.runner import Runner
from mlrollout.state.base import StateStore

StatePath = str | os.PathLike[str]


class Failure(Exception):
    """Why a task fails, in one line for the task's log (its message is all a human needs)."""


def error_payload(error: MlrolloutError) -> dict[str, Any]:
    """An mlrollout error as plain data: a trigger hands it to the task, which fails with it."""
    return {"error": error_message(error), "exit_code": int(error.exit_code)}


def error_message(error: MlrolloutError) -> str:
    """The error's line, its hint and, for a plan, every problem with its file:line:col."""
    text = str(error)
    if isinstance(error, PlanError) and error.issues:
        text = "\n".join(str(issue) for issue in error.issues)  # each with its file:line:col
    hint = getattr(error, "hint", None)
    return f"{text} ({hint})" if hint else text


def load(plan: StatePath, *, fleet: bool) -> LoadedPlan:
    """Validate the plan before anything is recorded; the wrong operator for it is a usage error."""
    loaded = load_plan(plan)
    if fleet and not loaded.plan.targets:
        raise UsageError(
            f"{loaded.path}: the plan has no targets: it is a single rollout",
            hint="run it with MlrolloutRunOperator",
        )
    if not fleet and loaded.plan.targets:
        raise UsageError(
            f"{loaded.path}: the plan has targets: it is a fleet",
            hint="run it with MlrolloutFleetOperator",
        )
    return loaded


# ------------------------------------------------------------------------------------ rollouts


def start_rollout(plan: StatePath, state: StatePath) -> tuple[str, bool]:
    """Record the plan's rollout and return ``(id, resumed)``. An active rollout of the very same
    plan text in this store is taken up again instead (an Airflow retry, a cleared task): the
    journal is the state, so the task goes on where the last try stopped."""
    loaded = load(plan, fleet=False)
    with Rollouts(state) as rollouts:
        same = _active_same_plan(rollouts.store, loaded)
        if same is not None:
            return same, True
        return rollouts.create(loaded), False


def _active_same_plan(store: StateStore, loaded: LoadedPlan) -> str | None:
    for record in store.list_rollouts(active_only=True, limit=1000):
        if record.name == loaded.plan.name and record.plan.get("yaml") == loaded.text:
            return record.id
    return None


def rollout_pass(state: StatePath, rollout_id: str) -> dict[str, Any]:
    """One ``reconcile``-style pass over one rollout (see the module), then its status."""
    with Rollouts(state) as rollouts:
        with contextlib.suppress(LeaseHeld):  # another runner drives it: only read its journal
            Runner(rollouts.store).drive(
                rollout_id, on_wait=lambda engine: "detach", until_idle=True
            )
        return outcome_data(rollouts.status(rollout_id), state)


def drive_rollout(state: StatePath, rollout_id: str, *, wait_for_approval: bool) -> dict[str, Any]:
    """Drive the rollout to its end in this process (a worker: ``deferrable=False``)."""
    with Rollouts(state) as rollouts:
        outcome = rollouts.drive(rollout_id, on_wait="wait" if wait_for_approval else "detach")
        return outcome_data(outcome, state)


def outcome_data(outcome: Outcome, state: StatePath) -> dict[str, Any]:
    """The task's result (its XCom): what a downstream task or a human needs, as plain JSON."""
    return {
        "rollout": outcome.rollout_id,
        "name": outcome.name,
        "endpoint": outcome.endpoint,
        "state": os.fspath(state),
        "phase": str(outcome.phase),
        "exit_code": outcome.exit_code,
        "reason": outcome.reason,
        "weights": dict(outcome.weights),
        "candidate": outcome.candidate,
        "baseline": outcome.baseline,
        "waiting_for": outcome.waiting_for,
        "verdict": outcome.verdict,
        "gates": [
            {"name": g.name, "metric": g.metric, "outcome": g.outcome, "reason": g.reason}
            for g in outcome.gates
        ],
    }


def rollout_result(data: dict[str, Any]) -> dict[str, Any]:
    """The task's result on a promotion; :class:`Failure` for anything else, saying what next."""
    if "error" in data:
        raise Failure(str(data["error"]))
    rid, phase, state = data["rollout"], data["phase"], data["state"]
    if phase == "succeeded":
        return data
    if phase in ("rolled_back", "aborted"):
        reason = str(data["reason"] or "no reason recorded")
        failing = [
            f"{g['name']}: {g['reason']}"
            for g in data["gates"]
            if g["outcome"] == "fail" and g["reason"] not in reason
        ]
        more = f" (failing gates: {'; '.join(failing)})" if failing else ""
        raise Failure(
            f"rollout {rid} {phase.replace('_', ' ')}: {reason}{more}; "
            f"traffic now {_weights(data['weights'])}"
        )
    if phase == "waiting":
        raise Failure(
            f"rollout {rid} waits for {data.get('waiting_for') or 'a human'} at "
            f"{_weights(data['weights'])}: run `mlrollout promote {rid} --state {state}` (or "
            f"`mlrollout abort {rid} --state {state}`), then clear this task: it takes the "
            "rollout up again (or set wait_for_approval=True to have the task wait)"
        )
    raise Failure(
        f"rollout {rid} stopped while {phase}: `mlrollout resume {rid} --state {state}` goes "
        "on, or clear this task"
    )


def _weights(weights: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}%" for k, v in weights.items()) or "no traffic set"


def rollout_done(data: dict[str, Any], *, wait_for_approval: bool) -> bool:
    """Should the trigger fire now? At an error, at the end, or at a wait nobody waits for."""
    if "error" in data:
        return True
    if data["phase"] in ("succeeded", "rolled_back", "aborted"):
        return True
    return data["phase"] == "waiting" and not wait_for_approval


# -------------------------------------------------------------------------------------- fleets


class _Idle(Exception):
    """Raised from the fleet driver's sleep: every target waits on real time, the pass is over."""


def start_fleet(plan: StatePath, state: StatePath) -> tuple[str, bool]:
    """Record the fleet (nothing changes anywhere yet) and return ``(id, resumed)``; a fleet of
    the same plan text that has not ended is taken up again (a retry, a cleared task)."""
    loaded = load(plan, fleet=True)
    with Rollouts(state) as rollouts:
        same = _unfinished_fleet(rollouts.store, loaded)
        if same is not None:
            return same, True
        return FleetRunner(rollouts.store).create(loaded).id, False


def _unfinished_fleet(store: StateStore, loaded: LoadedPlan) -> str | None:
    """A fleet's targets' rollouts carry the fleet's id: find the fleet through them."""
    for record in store.list_rollouts(active_only=True, limit=1000):
        fleet_id = record.id.rsplit("-t", 1)[0]
        if fleet_id == record.id:
            continue
        try:
            status = fleet_status(store, fleet_id)
        except UsageError:
            continue
        if status.record.plan == loaded.text and status.record.phase not in FLEET_ENDS:
            return fleet_id
    return None


def fleet_pass(state: StatePath, fleet_id: str) -> dict[str, Any]:
    """Passes of the fleet's driver until nothing moves (every target waits on real time) or it
    ends, then its status. Another driver holding the fleet's lease: only read."""
    with Rollouts(state) as rollouts:
        runner = FleetRunner(rollouts.store, real_sleep=_raise_idle)
        with contextlib.suppress(LeaseHeld, _Idle):
            runner.drive(fleet_id)
        return fleet_data(rollouts.store, fleet_id, state)


def _raise_idle(seconds: float) -> None:
    raise _Idle


def drive_fleet(state: StatePath, fleet_id: str) -> dict[str, Any]:
    """Drive the fleet to its end in this process (a worker: ``deferrable=False``)."""
    with Rollouts(state) as rollouts:
        FleetRunner(rollouts.store).drive(fleet_id)
        return fleet_data(rollouts.store, fleet_id, state)


def fleet_data(store: StateStore, fleet_id: str, state: StatePath) -> dict[str, Any]:
    """The fleet's table of targets (``mlrollout status FLEET --output json``) and its state."""
    return {**fleet_status(store, fleet_id).to_dict(), "state": os.fspath(state)}


def fleet_done(data: dict[str, Any]) -> bool:
    return "error" in data or data["phase"] in FLEET_ENDS


def fleet_result(data: dict[str, Any]) -> dict[str, Any]:
    """The fleet's table on success; :class:`Failure` with its reason otherwise."""
    if "error" in data:
        raise Failure(str(data["error"]))
    if data["phase"] == "succeeded":
        return data
    rows = [f"wave {row['wave']} {row['endpoint']} {row['phase']}" for row in data["targets"]]
    raise Failure(
        f"fleet {data['fleet']} {data['phase'].replace('_', ' ')}: {data['reason']}; "
        f"targets: {', '.join(rows)}"
    )
