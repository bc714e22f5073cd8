"""The operators: a rollout (``MlrolloutRunOperator``) or a fleet (``MlrolloutFleetOperator``) as
one Airflow task that succeeds when it is promoted and fails with the verdict when it is not.

``execute`` validates the plan and records the rollout through the library API
(:mod:`mlrollout.api`) — a bad plan fails the task with its file:line:col problems, and nothing
is recorded or changed — then, by default, defers to a trigger that drives it pass after pass in
the triggerer (:mod:`mlrollout_airflow.triggers`); ``deferrable=False`` drives it in the worker.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from airflow.exceptions import AirflowException, AirflowFailException
from airflow.models.baseoperator import BaseOperator

from mlrollout.api import MlrolloutError, PlanError, UsageError
from mlrollout_airflow.rollout import (
    Failure,
    drive_fleet,
    drive_rollout,
    error_message,
    error_payload,
    fleet_result,
    rollout_result,
    start_fleet,
    start_rollout,
)
from mlrollout_airflow.triggers import MlrolloutFleetTrigger, MlrolloutTrigger

#: Phases after which trying the task again cannot help (it would start the same candidate again).
_FINAL = ("rolled_back", "aborted", "stopped")


class MlrolloutRunOperator(BaseOperator):
    """Run the rollout of ``plan`` (a plan file's path) recorded in ``state`` (what ``--state``
    takes: a directory, a ``.db`` file, ``s3://...``). The result (XCom ``return_value``) is
    the outcome: ``rollout``, ``phase``, ``reason``, ``weights``, ``verdict``, ``gates``...; the
    rollout's id is also pushed as XCom ``rollout_id`` as soon as it is recorded.

    ``deferrable``: wait in the triggerer, which drives the rollout with a pass every
    ``poll_interval`` seconds (False: drive it in the worker). ``wait_for_approval``: at an
    ``approve`` step, keep waiting for ``mlrollout promote|abort`` (False: fail the task saying
    what to run; clearing it afterwards takes the same rollout up again)."""

    template_fields: Sequence[str] = ("plan", "state")
    ui_color = "#dbeafe"

    def __init__(
        self,
        *,
        plan: str | os.PathLike[str],
        state: str | os.PathLike[str] = ".mlrollout",
        deferrable: bool = True,
        poll_interval: float = 30.0,
        wait_for_approval: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.plan = os.fspath(plan)
        self.state = os.fspath(state)
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.wait_for_approval = wait_for_approval

    def execute(self, context: Any) -> dict[str, Any]:
        try:
            rollout_id, resumed = start_rollout(self.plan, self.state)
        except MlrolloutError as error:
            raise _failure(error) from None
        self.log.info(
            "mlrollout: %s rollout %s (state: %s)",
            "taking up" if resumed else "started",
            rollout_id,
            self.state,
        )
        context["ti"].xcom_push(key="rollout_id", value=rollout_id)
        if self.deferrable:
            self.defer(
                trigger=MlrolloutTrigger(
                    rollout_id=rollout_id,
                    state=self.state,
                    poll_interval=self.poll_interval,
                    wait_for_approval=self.wait_for_approval,
                ),
                method_name="execute_complete",
            )
        try:
            data = drive_rollout(self.state, rollout_id, wait_for_approval=self.wait_for_approval)
        except MlrolloutError as error:
            data = error_payload(error)
        return self.execute_complete(context, data)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """The rollout's end (the trigger's event): its outcome, or the task fails with why."""
        try:
            return rollout_result(event)
        except Failure as failure:
            raise _fail(failure, event) from None


class MlrolloutFleetOperator(BaseOperator):
    """Run the fleet of ``plan`` (a plan with ``targets:``) recorded in ``state``. The result is
    the fleet's table (``mlrollout status FLEET --output json``: ``fleet``, ``phase``,
    ``reason``, ``targets`` with each target's wave, endpoint, rollout, phase, weights and
    reason); the fleet's id is pushed as XCom ``fleet_id`` as soon as it is recorded. The task
    fails unless every target was promoted. ``deferrable``/``poll_interval``: as
    :class:`MlrolloutRunOperator`."""

    template_fields: Sequence[str] = ("plan", "state")
    ui_color = "#dbeafe"

    def __init__(
        self,
        *,
        plan: str | os.PathLike[str],
        state: str | os.PathLike[str] = ".mlrollout",
        deferrable: bool = True,
        poll_interval: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.plan = os.fspath(plan)
        self.state = os.fspath(state)
        self.deferrable = deferrable
        self.poll_interval = poll_interval

    def execute(self, context: Any) -> dict[str, Any]:
        try:
            fleet_id, resumed = start_fleet(self.plan, self.state)
        except MlrolloutError as error:
            raise _failure(error) from None
        self.log.info(
            "mlrollout: %s fleet %s (state: %s)",
            "taking up" if resumed else "started",
            fleet_id,
            self.state,
        )
        context["ti"].xcom_push(key="fleet_id", value=fleet_id)
        if self.deferrable:
            self.defer(
                trigger=MlrolloutFleetTrigger(
                    fleet_id=fleet_id, state=self.state, poll_interval=self.poll_interval
                ),
                method_name="execute_complete",
            )
        try:
            data = drive_fleet(self.state, fleet_id)
        except MlrolloutError as error:
            data = error_payload(error)
        return self.execute_complete(context, data)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        try:
            return fleet_result(event)
        except Failure as failure:
            raise _fail(failure, event) from None


def _failure(error: MlrolloutError) -> AirflowException:
    """An error before anything was recorded: an invalid plan or the wrong operator cannot pass
    on a retry; others (a state store out of reach) may."""
    final = isinstance(error, PlanError | UsageError)
    return (AirflowFailException if final else AirflowException)(error_message(error))


def _fail(failure: Failure, event: dict[str, Any]) -> AirflowException:
    final = event.get("phase") in _FINAL or event.get("exit_code") in (2, 4)
    return (AirflowFailException if final else AirflowException)(str(failure))
