"""One sandbox rollout driven through the real runner on a virtual clock, for the strategy
tests: create it from a plan's text, drive it, read its journal and the sandbox endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlrollout.clock import VirtualClock
from mlrollout.engine.runner import Runner, RunOutcome
from mlrollout.plan.loader import parse_plan
from mlrollout.state.base import Event
from mlrollout.state.sqlite import SqliteStateStore

START = 1_800_000_000.0


class SandboxRun:
    endpoint_name = "ep"  # the plan's target.endpoint

    def __init__(self, tmp_path: Path, text: str) -> None:
        self.store = SqliteStateStore(tmp_path / "state.db")
        self.runner = Runner(self.store)
        self.record = self.runner.create(parse_plan(text, "plan.yaml"))
        self.clock = VirtualClock(START)  # one clock across drives: time goes on between them

    def drive(self) -> RunOutcome:
        return self.runner.drive(self.record.id, clock=self.clock)

    def events(self) -> list[Event]:
        return self.store.events(self.record.id)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events()]

    def endpoint(self) -> dict[str, Any]:
        value = self.store.get_value("sandbox", self.endpoint_name)
        assert value is not None
        return value
