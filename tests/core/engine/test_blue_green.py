"""Blue-green on the sandbox, through the real runner: green provisioned at full capacity,
judged on a preview, switched to, judged against blue's window before the switch, blue kept warm
for an instant switch back, then retired."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlrollout.clock import VirtualClock
from mlrollout.engine.events import LOOK_KINDS, EventKind
from mlrollout.engine.phases import Phase
from mlrollout.engine.runner import Runner
from mlrollout.errors import PlanError
from mlrollout.plan.loader import parse_plan
from mlrollout.plan.timeline import expand_steps
from mlrollout.state.base import Event
from mlrollout.state.sqlite import SqliteStateStore

PLAN = (Path(__file__).parents[3] / "plans" / "local-blue-green.yaml").read_text()
START = 1_800_000_000.0


def variant(text: str, **sandbox: str) -> str:
    for old, new in sandbox.items():
        text = text.replace(old, new)
    return text


class Run:
    def __init__(self, tmp_path: Path, text: str) -> None:
        self.store = SqliteStateStore(tmp_path / "state.db")
        self.runner = Runner(self.store)
        self.record = self.runner.create(parse_plan(text, "plan.yaml"))
        self.clock = VirtualClock(START)  # one clock across drives: time goes on between them

    def drive(self, **kw: Any) -> Phase:
        return self.runner.drive(self.record.id, clock=self.clock, **kw).phase

    def events(self) -> list[Event]:
        return self.store.events(self.record.id)

    def at(self, kind: str) -> list[float]:
        return [e.at - START for e in self.events() if e.kind == kind]

    def endpoint(self) -> dict[str, Any]:
        value = self.store.get_value("sandbox", "churn-scoring")
        assert value is not None
        return value

    def weights(self) -> dict[str, float]:
        return {n: v["weight"] for n, v in self.endpoint()["variants"].items()}


def test_the_steps_are_the_phases_of_a_blue_green_release():
    steps = expand_steps(parse_plan(PLAN, "plan.yaml").plan)
    assert [s.describe() for s in steps] == [
        "pre-promotion: set candidate weight to 10%",
        "pre-promotion: analyze 10m",
        "switch: set candidate weight to 100%",
        "post-promotion: analyze 10m",
        "keep blue: pause 30m",
    ]
    stepped = PLAN.replace("switch: all_at_once", "switch: {step: 30, every: 2m}")
    weights = [s.weight for s in expand_steps(parse_plan(stepped, "p.yaml").plan) if s.weight]
    assert weights == [10, 40, 70, 100]


def test_a_healthy_green_is_promoted_and_blue_retired_only_after_keep_previous(tmp_path):
    run = Run(tmp_path, PLAN)
    assert run.drive() == Phase.SUCCEEDED
    assert run.weights() == {"v7": 100.0}
    # green was created at full capacity before it took any traffic
    applied = [e for e in run.events() if e.kind == EventKind.SET_TRAFFIC_APPLIED]
    assert [e.data["weights"]["v7"] for e in applied] == [10.0, 100.0]
    switch = applied[1].at - START
    [retired] = run.at(EventKind.FINALIZE_APPLIED)
    assert retired >= switch + 60 + 600 + 1800  # delay + post_promotion + keep_previous
    # after the switch the vs_baseline gate compares with blue's window before it, and says so
    post = [e for e in run.events() if e.kind in LOOK_KINDS and e.at - START > switch]
    assert post
    for event in post:
        errors = next(g for g in event.data["verdict"]["gates"] if g["gate"] == "errors")
        assert "historical baseline" in errors["reason"]
        assert errors["numbers"]["baseline_requests"] > 0  # blue's past traffic, not none
        p99 = next(g for g in event.data["verdict"]["gates"] if g["gate"] == "p99")
        assert "historical" not in p99["reason"]  # an absolute bound needs no baseline


def test_the_sandbox_provisions_green_at_its_own_capacity(tmp_path):
    run = Run(tmp_path, PLAN)
    run.drive(max_ticks=3)  # started, prepared, preview traffic
    assert run.endpoint()["variants"]["v7"]["instance_count"] == 2


def test_a_green_that_fails_pre_promotion_never_takes_over(tmp_path):
    text = variant(PLAN, **{"v7: {error_rate: 0.01": "v7: {error_rate: 0.05"})
    run = Run(tmp_path, text)
    assert run.drive() == Phase.ROLLED_BACK
    assert run.weights() == {"v6": 100.0}  # green removed
    weights = [e.data["weights"] for e in run.events() if e.kind == EventKind.SET_TRAFFIC_APPLIED]
    assert all(w.get("v7", 0.0) < 100.0 for w in weights)


def test_a_green_that_degrades_after_the_switch_is_switched_back_at_once(tmp_path):
    text = PLAN + "  events:\n    - {at: 14m, variant: v7, error_rate: 8%}\n"
    run = Run(tmp_path, text)
    assert run.drive() == Phase.ROLLED_BACK
    assert run.weights() == {"v6": 100.0}
    [failed] = run.at(EventKind.ANALYSIS_FAILED)
    switch = run.at(EventKind.SET_TRAFFIC_APPLIED)[1]
    assert failed > 14 * 60 > switch
    back = [
        e.at - START
        for e in run.events()
        if e.kind == EventKind.SET_TRAFFIC_APPLIED and e.data["weights"].get("v6") == 100.0
    ]
    assert back and back[0] - failed <= 60  # within one look (here: the same instant)
    assert not run.at(EventKind.FINALIZE_APPLIED) or run.weights() == {"v6": 100.0}


def test_an_abort_while_blue_is_kept_warm_switches_back_at_once(tmp_path):
    run = Run(tmp_path, PLAN)
    engine = run.runner.open_engine(run.record, run.clock)
    for _ in range(200):  # tick by tick until ten minutes into the keep_previous pause
        result = engine.tick()
        if engine.state.step == 4 and run.clock.now() - (engine.state.step_started_at or 0) > 600:
            break
        if result.next_at is not None and result.next_at > run.clock.now():
            run.clock.set(min(result.next_at, run.clock.now() + 600))
    assert run.weights() == {"v6": 0.0, "v7": 100.0}  # blue still provisioned, serving no one
    run.runner.command(run.record.id, "abort", by="oncall", reason="conversion dropped")
    before = run.clock.now()
    for _ in range(10):
        if engine.tick().done:
            break
    assert engine.state.phase_enum == Phase.ROLLED_BACK
    assert run.weights() == {"v6": 100.0}
    back = next(
        e.at
        for e in run.events()
        if e.kind == EventKind.SET_TRAFFIC_APPLIED and e.data["weights"].get("v6") == 100.0
    )
    assert back - before < 1.0  # instant: no re-provisioning, no waiting
    assert "aborted by oncall (conversion dropped)" in (
        run.store.get_rollout(run.record.id).snapshot["reason"] or ""
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"  keep_previous: 30m": "  keep_previous: 30m\n  native: true"},
            "no blue/green deployment of its own",
        ),
        ({"  preview: 10\n": "  preview: 100\n"}, "below 100"),
        ({"  switch: all_at_once": "  switch: {step: 0, every: 2m}"}, "above 0"),
        ({"  switch: all_at_once": "  switch: gradually"}, "all_at_once"),
    ],
)
def test_plan_validate_refuses_what_blue_green_cannot_do(change, message):
    with pytest.raises(PlanError, match=message):
        parse_plan(variant(PLAN, **change), "plan.yaml")


def test_the_html_report_shows_both_fleets_over_time(tmp_path):
    from mlrollout.report.html import html_report

    run = Run(tmp_path, PLAN)
    assert run.drive() == Phase.SUCCEEDED
    record = run.store.get_rollout(run.record.id)
    steps = expand_steps(parse_plan(PLAN, "plan.yaml").plan)
    page = html_report(record, run.events(), steps, strategy="blue_green")
    section = page.split("Blue and green", 1)[1]
    assert "green created beside blue" in section
    assert section.index("90 %") < section.index("switched to green") < section.index("v6 removed")


def test_the_live_view_shows_both_fleets_their_capacity_and_the_time_left(tmp_path):
    from rich.console import Console

    from mlrollout.report.console import render

    run = Run(tmp_path, PLAN)
    engine = run.runner.open_engine(run.record, run.clock)
    for _ in range(200):  # into the keep_previous pause, ten minutes in
        result = engine.tick()
        if engine.state.step == 4 and run.clock.now() - (engine.state.step_started_at or 0) > 600:
            break
        if result.next_at is not None and result.next_at > run.clock.now():
            run.clock.set(min(result.next_at, run.clock.now() + 600))
    steps = expand_steps(parse_plan(PLAN, "plan.yaml").plan)
    engine.state.now = run.clock.now()
    console = Console(width=120, record=True)
    console.print(render(engine.state, rollout_id="r", plan_name="p", steps=steps))
    text = console.export_text()
    assert "v6 (blue)" in text and "v7 (green)" in text
    assert "2 instances" in text  # green at its own capacity; blue as the sandbox made it
    assert "left in keep blue" in text


# ------------------------------------------------------------------ preview 0: mirrored traffic

MIRROR = (Path(__file__).parents[3] / "plans" / "local-blue-green-mirror.yaml").read_text()


def live_weights_of(run: Run, name: str) -> list[float]:
    """Every live weight ``name`` was given: the journal's applied changes and the sandbox's
    own weight history."""
    journal = [
        float(e.data["weights"].get(name, 0.0))
        for e in run.events()
        if e.kind.endswith(".applied") and "weights" in e.data
    ]
    history = [float(ws.get(name, 0.0)) for _, ws in run.endpoint()["history"]]
    return journal + history


def test_a_healthy_mirrored_green_passes_pre_promotion_and_is_switched_to(tmp_path):
    run = Run(tmp_path, MIRROR)
    assert run.drive() == Phase.SUCCEEDED
    assert run.weights() == {"v7": 100.0}
    shadows = [
        (e.at - START, e.data["variant"], e.data["percent"])
        for e in run.events()
        if e.kind == EventKind.SET_SHADOW_APPLIED
    ]
    [(started, green, percent), (stopped, none, zero)] = shadows
    assert (green, percent, none, zero) == ("v7", 100.0, None, 0.0)  # the sandbox mirrors 100 %
    switch = run.at(EventKind.SET_TRAFFIC_APPLIED)[0]
    assert started < stopped <= switch  # the mirror stops before the switch
    assert stopped - started >= 600  # pre_promotion judged on the mirror
    # Before the switch green served no user: its only live weight is the switch's 100 %.
    assert [w for w in live_weights_of(run, "v7") if w > 0] == [100.0, 100.0, 100.0]
    looks = [e for e in run.events() if e.kind in LOOK_KINDS and started < e.at - START < stopped]
    assert looks
    for look in looks:  # judged on the mirrored requests against blue's live ones
        errors = next(g for g in look.data["verdict"]["gates"] if g["gate"] == "errors")
        assert errors["numbers"]["candidate_requests"] > 0
        assert "historical" not in errors["reason"]
    assert run.endpoint()["shadow"] == {}
    # green took blue's capacity (the plan names no instance_count)
    assert run.endpoint()["variants"]["v7"]["instance_count"] == 1


def test_a_bad_green_fails_on_mirrored_traffic_without_ever_serving_a_user(tmp_path):
    text = variant(MIRROR, **{"v7: {error_rate: 0.01": "v7: {error_rate: 0.06"})
    run = Run(tmp_path, text)
    assert run.drive() == Phase.ROLLED_BACK
    assert run.weights() == {"v6": 100.0}  # green removed
    assert all(w == 0.0 for w in live_weights_of(run, "v7"))  # never one live request
    [failed] = run.at(EventKind.ANALYSIS_FAILED)
    shadows = [
        (e.at - START, e.data["variant"])
        for e in run.events()
        if e.kind == EventKind.SET_SHADOW_APPLIED
    ]
    assert shadows[0][1] == "v7" and shadows[0][0] < failed
    assert shadows[-1][1] is None and shadows[-1][0] >= failed  # the mirror stopped first
    finalized = run.at(EventKind.FINALIZE_APPLIED)
    assert finalized and finalized[0] >= shadows[-1][0]
    assert run.endpoint()["shadow"] == {}
    history = run.endpoint()["shadow_history"]
    assert history[-1][1] == {}


def test_the_mirrored_steps_frame_pre_promotion():
    steps = expand_steps(parse_plan(MIRROR, "plan.yaml").plan)
    assert [(s.kind, s.phase) for s in steps] == [
        ("mirror", "pre-promotion"),
        ("analyze", "pre-promotion"),
        ("mirror", "pre-promotion"),
        ("weight", "switch"),
        ("analyze", "post-promotion"),
        ("pause", "keep blue"),
    ]
    assert "mirror" in steps[0].describe() and "stop mirroring" in steps[2].describe()
