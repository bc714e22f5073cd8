"""The engine driving a platform's own blue/green deployment (``strategy.native``): it starts
the deployment once, follows it, judges the absolute gates on the endpoint's metrics, forces the
platform's rollback when a gate fails or someone aborts, and cleans up after either end — also
when its runner dies between any two journal writes.

The platform here is a small in-memory one on the engine's virtual clock (SageMaker's, through
boto3 against the emulator, is in ``tests/providers/aws/test_native_blue_green.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from mlrollout.clock import VirtualClock
from mlrollout.contracts import (
    Capabilities,
    EndpointState,
    MetricsQuery,
    NativeDeployment,
    VariantState,
    Window,
)
from mlrollout.engine.engine import Engine, RolloutState
from mlrollout.engine.events import EventKind
from mlrollout.engine.phases import Phase
from mlrollout.errors import ProviderRefused
from mlrollout.plan.loader import parse_plan
from mlrollout.plan.model import Plan
from mlrollout.plan.timeline import expand_steps
from mlrollout.state.base import RolloutRecord
from mlrollout.state.sqlite import SqliteStateStore

START = 1_800_000_000.0
PLAN = """
version: 1
name: native
target: {provider: local, endpoint: ep}
candidate: {name: v2}
strategy:
  type: blue_green
  preview: 10
  pre_promotion: 5m
  post_promotion: 5m
  keep_previous: 2m
analysis:
  interval: 60s
  min_requests: 100
  gates:
    - {name: errors, metric: error_rate, max: 2%}
sandbox:
  variants:
    v1: {error_rate: 0.01}
    v2: {error_rate: 0.01}
"""


def native_plan() -> Plan:
    plan = parse_plan(PLAN, "plan.yaml").plan
    strategy = plan.strategy.model_copy(update={"native": True})
    return plan.model_copy(update={"strategy": strategy})


class Platform:
    """A platform running its own blue/green deployment on a virtual clock: green provisions
    for a minute, takes 10 % for five, then all, bakes, and the deployment ends after the plan's
    waits; a forced (or its own) rollback takes 30 s. Its state outlives any runner."""

    capabilities = Capabilities(native_blue_green=True)

    def __init__(self, clock: VirtualClock, green_errors: float = 0.01) -> None:
        self.clock = clock
        self.green_errors = green_errors
        self.started_at: float | None = None
        self.rollback_at: float | None = None  # when the rollback began
        self.own_rollback_at: float | None = None  # the platform's own alarm fires then
        self.deployments = 0
        self.forced = 0
        self.ended = 0
        self.calls: list[str] = []

    # the platform's view --------------------------------------------------------------------

    def green_share(self, t: float) -> float:
        if self.started_at is None or self._rolling_back(t) is not None:
            return 0.0
        elapsed = t - self.started_at
        if elapsed < 60:
            return 0.0
        return 10.0 if elapsed < 360 else 100.0

    def _rolling_back(self, t: float) -> float | None:
        began = [x for x in (self.rollback_at, self.own_rollback_at) if x is not None and x <= t]
        return min(began) if began else None

    def status(self, t: float) -> NativeDeployment:
        if self.started_at is None:
            return NativeDeployment("not_started")
        began = self._rolling_back(t)
        if began is not None:
            done = t - began >= 30
            return NativeDeployment("rolled_back" if done else "rolling_back", 0.0, "alarm")
        elapsed = t - self.started_at
        share = self.green_share(t)
        if elapsed < 360:
            return NativeDeployment("deploying", share, "shifting", 2, 2)
        if elapsed < 60 + 300 + 300 + 120:
            return NativeDeployment("baking", share, "baking", 2, 2)
        return NativeDeployment("succeeded", 100.0, "done", 2, None)

    # the adapter -----------------------------------------------------------------------------

    def describe(self) -> EndpointState:
        self.calls.append("describe")
        return EndpointState("ep", "ready", (VariantState("v1", 100.0),))

    def start_native(self, candidate: Any, baseline: str, rollout_id: str) -> NativeDeployment:
        self.calls.append("start_native")
        assert baseline == "v1"
        if self.started_at is None:  # idempotent: a replay reports what is under way
            self.started_at = self.clock.now()
            self.deployments += 1
        return self.status(self.clock.now())

    def native_status(self, rollout_id: str) -> NativeDeployment:
        self.calls.append("native_status")
        return self.status(self.clock.now())

    def roll_back_native(self, rollout_id: str, reason: str) -> NativeDeployment:
        self.calls.append("roll_back_native")
        now = self.clock.now()
        if self.status(now).status == "succeeded":
            raise ProviderRefused("too late: the deployment finished")
        if self.rollback_at is None:
            self.rollback_at = now
            self.forced += 1
        return self.status(now)

    def end_native(self, rollout_id: str) -> EndpointState:
        self.calls.append("end_native")
        self.ended += 1
        return self.describe()

    # the metrics ------------------------------------------------------------------------------

    def query(self, query: MetricsQuery) -> dict[str, Window]:
        """The variant's numbers for both fleets, 100 req/s, each fleet's error rate on its
        share of the traffic (second by second)."""
        requests = errors = 0.0
        t = query.start
        while t < query.end:
            share = self.green_share(t) / 100.0
            requests += 100
            errors += 100 * (0.01 * (1 - share) + self.green_errors * share)
            t += 1.0
        return {"v1": Window(requests=int(requests), errors=round(errors))}

    # what the engine calls unused here
    def prepare(self, *a: Any) -> EndpointState:  # pragma: no cover - native never prepares
        raise AssertionError("a native rollout does not prepare a variant")

    def set_traffic(self, weights: Mapping[str, float]) -> EndpointState:  # pragma: no cover
        raise AssertionError("a native rollout does not move traffic itself")

    def finalize(self, keep: str, retire: str) -> EndpointState:  # pragma: no cover
        raise AssertionError("a native rollout does not finalize variants")


class Killed(BaseException):
    """The runner's process died."""


class DyingStore(SqliteStateStore):
    def __init__(self, path: Path, die_at: int | None = None, before: bool = True) -> None:
        super().__init__(path)
        self.die_at, self.before, self.writes = die_at, before, 0

    def append_event(self, *args: Any, **kwargs: Any) -> Any:
        self.writes += 1
        if self.before and self.writes == self.die_at:
            raise Killed
        event = super().append_event(*args, **kwargs)
        if not self.before and self.writes == self.die_at:
            raise Killed
        return event


class Run:
    def __init__(self, tmp_path: Path, green_errors: float = 0.01) -> None:
        self.path = tmp_path / "state.db"
        self.clock = VirtualClock(START)
        self.platform = Platform(self.clock, green_errors)
        self.plan = native_plan()
        self.store = SqliteStateStore(self.path)
        self.store.create_rollout(
            RolloutRecord(
                id="r1",
                name="native",
                endpoint_key="local/ep",
                plan={"yaml": PLAN},
                plan_path="plan.yaml",
                created_at=START,
                phase=Phase.PENDING.value,
                snapshot=RolloutState(candidate="v2").to_dict(),
            )
        )

    def engine(self, store: SqliteStateStore | None = None) -> Engine:
        store = store or SqliteStateStore(self.path)
        snapshot = store.get_rollout("r1").snapshot
        return Engine(
            rollout_id="r1",
            plan=self.plan,
            adapter=self.platform,  # type: ignore[arg-type]
            metrics=self.platform,
            store=store,
            clock=self.clock,
            state=RolloutState.from_dict(snapshot),
            wall=lambda: START,
        )

    def drive(self, engine: Engine | None = None, until: float = START + 7200) -> Phase:
        engine = engine or self.engine()
        for _ in range(500):
            result = engine.tick()
            if result.done:
                return result.phase
            if result.next_at is None or self.clock.now() > until:
                return result.phase
            self.clock.set(max(self.clock.now(), result.next_at))
        raise AssertionError("did not end")

    def kinds(self) -> list[str]:
        return [e.kind for e in SqliteStateStore(self.path).events("r1")]

    def events(self) -> list[Any]:
        return SqliteStateStore(self.path).events("r1")


def test_the_strategy_is_one_step_the_platform_runs_while_the_gates_watch():
    [step] = expand_steps(native_plan())
    assert step.kind == "native"
    assert step.window is not None and step.window.max == 5 * 60 + 5 * 60 + 2 * 60
    assert "platform's own blue/green deployment" in step.describe()


def test_a_healthy_deployment_is_started_once_followed_and_cleaned_up(tmp_path):
    run = Run(tmp_path)
    assert run.drive() == Phase.SUCCEEDED
    assert (run.platform.deployments, run.platform.forced, run.platform.ended) == (1, 0, 1)
    seen = [
        (e.data["status"], e.data["green_percent"])
        for e in run.events()
        if e.kind == EventKind.NATIVE
    ]
    # journalled as the platform moves (it was "deploying" at 0 % when it started)
    assert seen == [("deploying", 10.0), ("baking", 100.0), ("succeeded", 100.0)]
    kinds = run.kinds()
    assert kinds.index("start_native.applied") < kinds.index("look") < kinds.index("promoted")
    assert kinds.index("end_native.applied") < kinds.index("promoted")
    assert "set_traffic.requested" not in kinds and "prepare.requested" not in kinds


def test_a_failing_gate_forces_the_platforms_rollback_then_cleans_up(tmp_path):
    run = Run(tmp_path, green_errors=0.2)
    assert run.drive() == Phase.ROLLED_BACK
    assert (run.platform.deployments, run.platform.forced, run.platform.ended) == (1, 1, 1)
    kinds = run.kinds()
    order = ["analysis.failed", "roll_back_native.applied", "end_native.applied", "rolled_back"]
    assert [kinds.index(k) for k in order] == sorted(kinds.index(k) for k in order)
    state = SqliteStateStore(run.path).get_rollout("r1").snapshot
    assert "errors" in state["reason"]
    # caught once green had its 10 %: before the platform moved everything to it
    failed = next(e for e in run.events() if e.kind == EventKind.ANALYSIS_FAILED)
    assert failed.at - START < 360


def test_the_platform_rolling_back_on_its_own_ends_the_rollout_rolled_back(tmp_path):
    run = Run(tmp_path)
    run.platform.own_rollback_at = START + 200
    assert run.drive() == Phase.ROLLED_BACK
    assert run.platform.forced == 0 and run.platform.ended == 1
    reason = SqliteStateStore(run.path).get_rollout("r1").snapshot["reason"]
    assert reason.startswith("the platform rolled its deployment back")


def test_an_abort_during_the_deployment_forces_the_rollback(tmp_path):
    run = Run(tmp_path)
    assert run.drive(until=START + 120) == Phase.PROGRESSING
    SqliteStateStore(run.path).append_event(
        "r1", EventKind.COMMAND_ABORT, {"by": "oncall"}, at=run.clock.now(), lease=None
    )
    assert run.drive() == Phase.ROLLED_BACK
    assert run.platform.forced == 1
    reason = SqliteStateStore(run.path).get_rollout("r1").snapshot["reason"]
    assert reason == "aborted by oncall"


@pytest.mark.parametrize(
    ("green_errors", "expected"), [(0.01, Phase.SUCCEEDED), (0.2, Phase.ROLLED_BACK)]
)
def test_every_kill_point_recovers_to_the_same_end(tmp_path, green_errors, expected):
    reference = Run(tmp_path / "ref", green_errors)
    assert reference.drive() == expected
    total = len(reference.kinds())
    for die_at in range(1, total + 1):
        for before in (True, False):
            run = Run(tmp_path / f"{die_at}-{before}", green_errors)
            with pytest.raises(Killed):
                run.drive(run.engine(DyingStore(run.path, die_at, before)))
            assert run.drive() == expected, (die_at, before)  # a new runner finishes it
            platform = run.platform
            forced = 1 if expected == Phase.ROLLED_BACK else 0
            assert (platform.deployments, platform.forced) == (1, forced), (die_at, before)
            assert platform.ended >= 1
            kinds = run.kinds()
            assert kinds.count("started") == 1
            assert kinds.count("promoted" if expected == Phase.SUCCEEDED else "rolled_back") == 1


def test_the_live_view_shows_both_fleets_and_the_platforms_status(tmp_path):
    from rich.console import Console

    from mlrollout.report.console import render

    run = Run(tmp_path)
    engine = run.engine()
    assert run.drive(engine, until=START + 400) == Phase.PROGRESSING  # green took all: baking
    engine.state.now = run.clock.now()
    console = Console(width=120, record=True)
    steps = expand_steps(run.plan)
    console.print(render(engine.state, rollout_id="r1", plan_name="native", steps=steps))
    text = console.export_text()
    assert "v1 (blue)" in text and "v2 (green)" in text
    assert "platform deployment: baking" in text
    assert "left in the platform's deployment" in text
    green = next(line for line in text.splitlines() if "v2 (green)" in line)
    assert "100%" in green and "2 instances" in green


def test_the_html_report_shows_what_the_platform_did(tmp_path):
    from mlrollout.report.html import html_report

    run = Run(tmp_path, green_errors=0.2)
    assert run.drive() == Phase.ROLLED_BACK
    record = SqliteStateStore(run.path).get_rollout("r1")
    page = html_report(record, run.events(), expand_steps(run.plan), strategy="blue_green")
    section = page.split("Blue and green", 1)[1]
    assert "platform: deploying" in section and "platform: rolled_back" in section
