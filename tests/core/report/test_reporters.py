"""Reporters on hand-built events and states: no engine, no terminal."""

from __future__ import annotations

import io
import json
from dataclasses import replace

from rich.console import Console

from mlrollout.engine.engine import RolloutState
from mlrollout.plan.model import AnalyzeWindow, Approve
from mlrollout.plan.timeline import ExecStep
from mlrollout.report.console import (
    JsonReporter,
    LiveReporter,
    PlainReporter,
    describe_event,
    render,
)
from mlrollout.report.markdown import markdown_report, render_status, status_summary
from mlrollout.state.base import Event, RolloutRecord

RID = "churn-v7-canary-3f9a1c"
T0 = 1_795_698_245.0  # 2026-11-26T13:04:05Z
STEPS = [
    ExecStep(0, "weight", weight=10),
    ExecStep(1, "analyze", window=AnalyzeWindow(min=600, max=600, adaptive=False)),
    ExecStep(2, "approve", approve=Approve(timeout="2h")),
    ExecStep(3, "weight", weight=100),
]
FAILING = "errors: candidate error rate 3.1% exceeds 1.25% (baseline 1.0% +25%)"


def gate(name: str, metric: str, outcome: str, **numbers: float) -> dict[str, object]:
    return {
        "gate": name,
        "metric": metric,
        "outcome": outcome,
        "reason": f"{name} is {outcome}",
        "numbers": numbers,
        "dry_run": False,
        "error": None,
    }


VERDICT = {
    "outcome": "continue",
    "gates": [
        gate("errors", "error_rate", "continue", candidate=0.011, baseline=0.010, threshold=0.0125),
        gate("p99", "latency_p99", "pass", candidate=0.12, threshold=0.3),
    ],
}
FAILED = {
    "outcome": "fail",
    "gates": [
        {**gate("errors", "error_rate", "fail", candidate=0.031, baseline=0.01), "reason": FAILING},
        gate("p99", "latency_p99", "pass", candidate=0.12, threshold=0.3),
    ],
}


def ev(seq: int, offset: float, kind: str, **data: object) -> Event:
    return Event(RID, seq, T0 + offset, kind, dict(data))


def state(**changes: object) -> RolloutState:
    base = RolloutState(
        phase="progressing",
        baseline="v6",
        candidate="v7",
        step=1,
        step_started_at=T0 + 10,
        weights={"v7": 10.0, "v6": 90.0},
        last_verdict=VERDICT,
        looks=3,
        now=T0 + 250,
    )
    return replace(base, **changes)


def rolled_back_journal() -> list[Event]:
    look = {"step": 1, "elapsed": 120.0}
    return [
        ev(1, 0, "started", baseline="v6", candidate="v7", weights={"v6": 100.0}),
        ev(2, 1, "prepare.requested", baseline="v6"),
        ev(3, 5, "prepare.applied", baseline="v6", weights={"v6": 100.0, "v7": 0.0}),
        ev(4, 6, "set_traffic.requested", weights={"v7": 10.0, "v6": 90.0}),
        ev(5, 10, "set_traffic.applied", weights={"v7": 10.0, "v6": 90.0}),
        ev(6, 190, "look", **look, verdict=VERDICT),
        ev(7, 250, "look", **look, verdict=VERDICT),
        ev(8, 310, "analysis.failed", **look, verdict=FAILED, reason=FAILING),
        ev(9, 311, "rollback.started", reason=FAILING),
        ev(10, 315, "set_traffic.applied", weights={"v6": 100.0, "v7": 0.0}),
        ev(11, 320, "rolled_back", reason=FAILING, weights={"v6": 100.0}),
    ]


def record(phase: str, st: RolloutState) -> RolloutRecord:
    return RolloutRecord(
        id=RID,
        name="churn-v7-canary",
        endpoint_key="sagemaker/us-east-1/churn",
        plan={},
        plan_path="plans/churn.yaml",
        created_at=T0,
        phase=phase,
        snapshot=st.to_dict(),
    )


def test_plain_lines_have_time_id_kind_and_sentence() -> None:
    out = io.StringIO()
    reporter = PlainReporter(out, RID, STEPS)
    st = state(phase="rolled_back", reason=FAILING, weights={"v6": 100.0, "v7": 0.0})
    for event in rolled_back_journal():
        reporter(event, st)
    reporter.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 9  # the two *.requested events are skipped
    assert lines[2] == f"2026-11-26T13:04:15Z {RID}  traffic     v7 10% / v6 90%"
    assert "errors: continue (candidate 1.1% vs 1%)" in lines[3]
    assert "p99: pass (candidate 120ms, limit 300ms)" in lines[3]
    assert lines[6].endswith(f"rollback    {FAILING}")
    assert lines[-1].endswith(f"rolled back v6 serves 100% — {FAILING}")


def test_describe_event_sentences() -> None:
    st = state(phase="succeeded")
    assert describe_event(ev(1, 0, "set_traffic.requested", weights={}), st) is None
    assert describe_event(ev(2, 0, "promoted", weights={"v7": 100.0}), st) == (
        "promoted: v7 serves 100%"
    )
    assert describe_event(ev(3, 0, "waiting", step=2, timeout_at=T0 + 7200), st) == (
        "waiting: for approval (times out in 2h)"
    )
    odd = ev(4, 0, "look", verdict={"gates": [{"name": "x", "numbers": None}, "junk"]})
    assert describe_event(odd, st) == "look: 0s in: x: ? (no data)"


def test_json_lines_parse_in_seq_order() -> None:
    out = io.StringIO()
    reporter = JsonReporter(out)
    for event in rolled_back_journal():
        reporter(event, state())
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["seq"] for r in rows] == list(range(1, 12))
    assert rows[0] == {
        "rollout": RID,
        "seq": 1,
        "at": "2026-11-26T13:04:05Z",
        "kind": "started",
        "phase": "progressing",
        "data": {"baseline": "v6", "candidate": "v7", "weights": {"v6": 100.0}},
        "message": "started: baseline v6 (v6 100%), candidate v7",
    }
    assert rows[5]["data"]["verdict"]["gates"][0]["gate"] == "errors"


def test_markdown_for_a_rolled_back_rollout() -> None:
    st = state(phase="rolled_back", reason=FAILING, weights={"v6": 100.0}, last_verdict=FAILED)
    text = markdown_report(record("rolled_back", st), rolled_back_journal(), STEPS)
    assert text.startswith(f"# churn-v7-canary — rollout `{RID}`")
    assert f"**Rolled back** because {FAILING}; v6 serves 100%." in text
    assert "| Baseline → candidate | `v6` → `v7` |" in text
    assert "| Duration (rollout time) | 5m20s |" in text
    assert "| +5m10s | failed: " + FAILING in text
    assert text.count("| look: ") == 1  # the unchanged second look is folded
    assert f"| errors | error_rate | **fail** | {FAILING} |" in text
    assert "`mlrollout plan preview plans/churn.yaml`" in text
    assert "`mlrollout run plans/churn.yaml`" in text


def test_markdown_waiting_suggests_promote_or_abort() -> None:
    st = state(
        phase="waiting",
        step=2,
        waiting={"reason": "approval", "since": T0, "timeout_at": T0 + 7200, "on_timeout": "x"},
    )
    text = markdown_report(record("waiting", st), rolled_back_journal()[:7], STEPS)
    assert "**Waiting for approval**: times out at 2026-11-26T15:04:05Z" in text
    assert f"`mlrollout promote {RID}`" in text and f"`mlrollout abort {RID}`" in text


def test_status_summary_is_json_able() -> None:
    st = state(
        phase="waiting",
        step=2,
        waiting={"reason": "approval", "since": T0, "timeout_at": None, "on_timeout": "rollback"},
    )
    summary = json.loads(json.dumps(status_summary(record("waiting", st), st, STEPS)))
    assert summary["step"] == {
        "index": 2,
        "count": 4,
        "description": "wait for approval (timeout 2h, then rollback)",
    }
    assert summary["weights"] == {"v7": 10.0, "v6": 90.0}
    assert summary["gates"][0] == {
        "name": "errors",
        "metric": "error_rate",
        "outcome": "continue",
        "reason": "errors is continue",
        "dry_run": False,
    }
    assert summary["waiting"]["timeout_at"] == "-"
    assert summary["summary"] == "waiting for approval: no timeout"


def screen(renderable: object) -> str:
    console = Console(record=True, width=100, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def test_live_render_shows_steps_gates_and_weights() -> None:
    text = screen(
        render(
            state(),
            rollout_id=RID,
            plan_name="churn-v7-canary",
            steps=STEPS,
            recent=["13:04:15 traffic: v7 10% / v6 90%"],
            total_worst_case_seconds=float("inf"),
            started_at=T0,
        )
    )
    assert RID in text and "progressing" in text
    assert "✓ set candidate weight to 10%" in text
    assert "▶ analyze 10m" in text and "· set candidate weight to 100%" in text
    for cell in ("errors", "1.1%", "1.25%", "continue", "p99", "120ms", "300ms", "pass"):
        assert cell in text
    assert "v7" in text and "10%" in text and "90%" in text and "█" in text
    assert "4m in step" in text and "up to 6m left in this analysis" in text
    assert "traffic: v7 10% / v6 90%" in text


def test_live_reporter_lifecycle_and_status_view() -> None:
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=False)
    live = LiveReporter(console, RID, "churn-v7-canary", STEPS, 3600.0)
    live.start()
    final = state(phase="succeeded", step=4, weights={"v7": 100.0})
    for event in [*rolled_back_journal()[:5], ev(12, 900, "promoted", weights={"v7": 100.0})]:
        live(event, final)
    live.close()
    assert out.getvalue().rstrip().endswith(f"{RID} promoted: v7 serves 100% of traffic")
    text = screen(render_status(record("succeeded", final), final, STEPS))
    assert "✓ set candidate weight to 100%" in text and "Watch its dashboards" in text
