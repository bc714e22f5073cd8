"""The triggers a deferred operator waits on, in Airflow's triggerer (one asyncio loop for many).

Every poll runs one pass of :mod:`mlrollout_airflow.rollout` in a thread
(``asyncio.to_thread``): the engine and the state store are blocking code and must never hold up
the triggerer's event loop. Between polls the trigger sleeps on the loop (``poll_interval``), so
a rollout that lasts hours costs no worker slot and no thread while it waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from mlrollout.api import MlrolloutError
from mlrollout_airflow.rollout import (
    error_payload,
    fleet_done,
    fleet_pass,
    rollout_done,
    rollout_pass,
)


class MlrolloutTrigger(BaseTrigger):
    """Drives (or, when another runner holds its lease, watches) one rollout until it ends, or
    until it waits for a human and ``wait_for_approval`` is false; the event's payload is the
    rollout's outcome (:func:`~mlrollout_airflow.rollout.outcome_data`) or ``{"error": ...}``."""

    def __init__(
        self,
        rollout_id: str,
        state: str,
        poll_interval: float = 30.0,
        wait_for_approval: bool = False,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Airflow's own is untyped
        self.rollout_id = rollout_id
        self.state = state
        self.poll_interval = poll_interval
        self.wait_for_approval = wait_for_approval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "rollout_id": self.rollout_id,
                "state": self.state,
                "poll_interval": self.poll_interval,
                "wait_for_approval": self.wait_for_approval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        def done(data: dict[str, Any]) -> bool:
            return rollout_done(data, wait_for_approval=self.wait_for_approval)

        async for event in _poll(
            lambda: rollout_pass(self.state, self.rollout_id), done, self.poll_interval, self.log
        ):
            yield event


class MlrolloutFleetTrigger(BaseTrigger):
    """Drives (or watches, when another driver holds the fleet's lease) one fleet to its end;
    the event's payload is the fleet's table (:func:`~mlrollout_airflow.rollout.fleet_data`)."""

    def __init__(self, fleet_id: str, state: str, poll_interval: float = 30.0) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Airflow's own is untyped
        self.fleet_id = fleet_id
        self.state = state
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"fleet_id": self.fleet_id, "state": self.state, "poll_interval": self.poll_interval},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        async for event in _poll(
            lambda: fleet_pass(self.state, self.fleet_id), fleet_done, self.poll_interval, self.log
        ):
            yield event


async def _poll(
    one_pass: Callable[[], dict[str, Any]],
    done: Callable[[dict[str, Any]], bool],
    interval: float,
    log: Any,
) -> AsyncIterator[TriggerEvent]:
    """A pass in a thread, then a sleep on the loop, until ``done``: then one event."""
    last = None
    while True:
        try:
            data = await asyncio.to_thread(one_pass)
        except MlrolloutError as error:  # a usage, provider or state error: the task fails with it
            data = error_payload(error)
        phase = data.get("phase")
        if phase != last:
            log.info("mlrollout: %s %s", data.get("rollout") or data.get("fleet"), phase)
            last = phase
        if done(data):
            yield TriggerEvent(data)
            return
        await asyncio.sleep(interval)
