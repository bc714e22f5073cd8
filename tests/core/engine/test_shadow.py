"""The shadow strategy on the sandbox, through the real runner: a copy of live requests goes to
the candidate, which serves no one, while the gates compare it with the baseline; then the plan's
``then`` decides (an evaluation, a promotion, or a wait for a human)."""

from __future__ import annotations

import pytest
from sandbox_run import SandboxRun

from mlrollout.engine.events import LOOK_KINDS, EventKind
from mlrollout.engine.phases import Phase
from mlrollout.errors import ExitCode
from mlrollout.plan.loader import parse_plan
from mlrollout.plan.timeline import expand_steps

PLAN = """
version: 1
name: shadow
target: {provider: local, endpoint: ep}
candidate: {name: v2}
strategy:
  type: shadow
  percent: 50
  duration: 10m
  then: THEN
analysis:
  interval: 60s
  min_requests: 100
  gates:
    - {name: errors, metric: error_rate, vs_baseline: {max_increase: 50%}}
    - {name: p99, metric: latency_p99, vs_baseline: {max_increase: 30%}}
sandbox:
  seed: 4
  rps: 100
  variants:
    v1: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}
    v2: {error_rate: ERRORS, latency_p50: 40ms, latency_p99: P99}
"""


def plan(then: str = "rollback", errors: float = 0.01, p99: str = "120ms", **more: str) -> str:
    text = PLAN.replace("THEN", then).replace("ERRORS", str(errors)).replace("P99", p99)
    for old, new in more.items():
        text = text.replace(old, new)
    return text


class Run(SandboxRun):
    def never_served(self) -> bool:
        """No live weight ever went to the shadow: in the journal, or on the endpoint."""
        applied = [e.data["weights"] for e in self.events() if e.kind in TRAFFIC]
        on_endpoint = [entry[1] for entry in self.endpoint()["history"]]
        return all(w.get("v2", 0.0) == 0.0 for w in applied + on_endpoint)


TRAFFIC = (EventKind.SET_TRAFFIC_APPLIED, EventKind.PREPARE_APPLIED)


def test_the_steps_follow_then():
    def described(then: str, **more: str) -> list[str]:
        return [s.describe() for s in expand_steps(parse_plan(plan(then, **more), "p").plan)]

    mirror = "shadow: mirror 50% of live traffic to the candidate (its answers are dropped)"
    stop = "shadow: stop mirroring traffic to the candidate"
    assert described("rollback") == [mirror, "shadow: analyze 10m", stop]
    assert described("promote") == [
        mirror,
        "shadow: analyze 10m",
        stop,
        "after the shadow: set candidate weight to 100%",
    ]
    assert described("stop", **{"  duration: 10m": "  duration: {min: 5m, max: 20m}"}) == [
        mirror,
        "shadow: analyze 5m-20m (adaptive)",
        "shadow: wait for approval (no timeout)",
        stop,
        "after the shadow: set candidate weight to 100%",
    ]
    steps = "  then: promote\n  steps: [{weight: 20}, {analyze: 5m}]"
    assert described("promote", **{"  then: promote": steps})[3:] == [
        "after the shadow: set candidate weight to 20%",
        "after the shadow: analyze 5m",
    ]


def test_an_evaluation_that_passes_removes_the_shadow_and_exits_0(tmp_path):
    run = Run(tmp_path, plan("rollback"))
    outcome = run.drive()
    assert outcome.exit_code == ExitCode.OK and outcome.state.evaluated
    assert set(run.endpoint()["variants"]) == {"v1"}
    kinds = run.kinds()
    assert kinds.index("analysis.passed") < kinds.index("set_shadow.applied", 5)
    assert kinds[-1] == "evaluated"
    mirrored = [
        (e.data["variant"], e.data["percent"])
        for e in run.events()
        if e.kind == EventKind.SET_SHADOW_APPLIED
    ]
    assert mirrored == [("v2", 50.0), (None, 0.0)]
    assert run.never_served()
    # the gates judged the shadow's copy: about half the baseline's requests
    look = next(e for e in run.events() if e.kind in LOOK_KINDS)
    srm = next(g for g in look.data["verdict"]["gates"] if g["gate"] == "sample-ratio")
    assert srm["outcome"] == "pass"


@pytest.mark.parametrize(
    ("errors", "p99", "gate"),
    [(0.05, "120ms", "errors"), (0.01, "300ms", "p99")],
    ids=["errors", "slower"],
)
def test_a_shadow_that_errors_or_is_slower_fails_is_removed_and_never_served(
    tmp_path, errors, p99, gate
):
    run = Run(tmp_path, plan("promote", errors=errors, p99=p99))
    outcome = run.drive()
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    assert (outcome.state.reason or "").startswith(gate)
    kinds = run.kinds()
    failed = kinds.index("analysis.failed")
    # the mirror stops, then the shadow is removed
    assert failed < kinds.index("set_shadow.applied", failed) < kinds.index("finalize.applied")
    assert set(run.endpoint()["variants"]) == {"v1"}
    assert not run.endpoint().get("shadow")
    assert run.never_served()


def test_a_passing_shadow_is_promoted_through_the_plans_steps(tmp_path):
    steps = "  then: promote\n  steps: [{weight: 20}, {analyze: 5m}]"
    run = Run(tmp_path, plan("promote", **{"  then: promote": steps}))
    assert run.drive().exit_code == ExitCode.OK
    weights = [e.data["weights"] for e in run.events() if e.kind == EventKind.SET_TRAFFIC_APPLIED]
    assert [w["v2"] for w in weights] == [20.0, 100.0]
    # no weight before the mirror stopped
    kinds = run.kinds()
    assert kinds.index("set_shadow.applied", 5) < kinds.index("set_traffic.applied")
    assert set(run.endpoint()["variants"]) == {"v2"}


def test_stop_keeps_mirroring_and_judging_until_a_human_decides(tmp_path):
    run = Run(tmp_path, plan("stop"))
    outcome = run.drive()
    assert outcome.exit_code == ExitCode.WAITING
    assert run.endpoint()["shadow"] == {"v2": 50.0}
    before = sum(1 for k in run.kinds() if k in LOOK_KINDS)
    run.clock.set(run.clock.now() + 600)  # ten minutes of waiting: the gates keep looking
    run.drive()
    assert sum(1 for k in run.kinds() if k in LOOK_KINDS) > before
    run.runner.command(run.record.id, "promote")
    assert run.drive().exit_code == ExitCode.OK
    assert set(run.endpoint()["variants"]) == {"v2"}
    assert run.never_served() is False  # promoted: now it serves


def test_stop_then_abort_removes_the_shadow(tmp_path):
    run = Run(tmp_path, plan("stop"))
    assert run.drive().exit_code == ExitCode.WAITING
    run.runner.command(run.record.id, "abort")
    outcome = run.drive()
    assert outcome.phase == Phase.ROLLED_BACK
    assert set(run.endpoint()["variants"]) == {"v1"} and not run.endpoint().get("shadow")
    assert run.never_served()


def predicting(accuracy: float) -> str:
    """The evaluation plan, the two models predicting (the sandbox's ``accuracy``) and judged
    on what they predicted too."""
    text = plan("rollback").replace(
        "    - {name: p99, metric: latency_p99, vs_baseline: {max_increase: 30%}}\n",
        "    - {name: p99, metric: latency_p99, vs_baseline: {max_increase: 30%}}\n"
        "    - {name: agree, metric: agreement, min: 80%}\n"
        "    - {name: drift, metric: prediction_drift, max: 0.2}\n",
    )
    v1 = "    v1: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms"
    v2 = "    v2: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms"
    text = text.replace(v1 + "}", v1 + ", accuracy: 0.95}")
    return text.replace(v2 + "}", v2 + f", accuracy: {accuracy}}}")


def test_a_shadow_that_disagrees_fails_on_its_predictions_and_the_report_shows_them(tmp_path):
    from mlrollout.report.html import html_report
    from mlrollout.report.markdown import markdown_report

    run = Run(tmp_path, predicting(0.6))
    outcome = run.drive()
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    assert (outcome.state.reason or "").startswith("agree: outputs agree on")
    assert run.never_served()
    record = run.store.get_rollout(run.record.id)
    steps = expand_steps(parse_plan(predicting(0.6), "p").plan)
    text = markdown_report(record, run.events(), steps)
    section = text.split("## The shadow against the baseline", 1)[1]
    assert "| agree | agreement |" in section and "paired requests" in section
    assert "Requests on which they disagreed" in section
    examples = section.split("Requests on which they disagreed", 1)[1].split("\n## ", 1)[0]
    rows = [
        line for line in examples.splitlines() if line.startswith("| ") and "Inference" not in line
    ]
    assert 0 < len(rows) <= 20
    page = html_report(record, run.events(), steps, strategy="shadow")
    assert "The shadow against the baseline" in page and "<code>" in page


def test_a_shadow_that_agrees_passes_its_prediction_gates(tmp_path):
    run = Run(tmp_path, predicting(0.95))
    outcome = run.drive()
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    look = [e for e in run.events() if e.kind in LOOK_KINDS][-1]
    gates = {g["gate"]: g["outcome"] for g in look.data["verdict"]["gates"]}
    assert gates["agree"] == "pass" and gates["drift"] == "pass"
    assert look.data["capture"]["paired"] > 1000


def test_a_shadow_whose_predictions_drift_fails_on_the_drift_gate(tmp_path):
    # the same accuracy, but half of its answers pushed to one class: the outputs' mix moves
    text = predicting(0.95)
    v2 = "    v2: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms, accuracy: 0.95"
    text = text.replace(v2 + "}", v2 + ", output_shift: 0.5}")  # PSI about 0.27
    text = text.replace("agreement, min: 80%", "agreement, min: 50%")
    text = text.replace("prediction_drift, max: 0.2", "prediction_drift, max: 0.05")
    assert "output_shift: 0.5" in text and "max: 0.05" in text
    run = Run(tmp_path, text)
    outcome = run.drive()
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    assert (outcome.state.reason or "").startswith("drift:"), outcome.state.reason
    assert set(run.endpoint()["variants"]) == {"v1"} and run.never_served()
