"""After-the-fact views of one rollout: a Markdown report (CI summaries, pull-request comments),
the JSON summary of ``mlrollout status --output json`` and its human rendering."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from mlrollout.capture import MAX_EXAMPLES
from mlrollout.engine.engine import RolloutState
from mlrollout.engine.events import EventKind
from mlrollout.engine.phases import Phase
from mlrollout.plan.timeline import ExecStep
from mlrollout.report.ab import ab_summary
from mlrollout.report.console import describe_event, gate_name, gates_of, iso, join, outcome, render
from mlrollout.report.shadow import shadow_summary
from mlrollout.state.base import Event, RolloutRecord
from mlrollout.units import format_duration


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def happened(event: Event) -> float:
    """When what ``event`` records happened: a world fact carries its own instant."""
    at = event.data.get("at") if event.kind == EventKind.FACT else None
    return float(at) if isinstance(at, int | float) else event.at


def timeline_rows(events: list[Event], state: RolloutState) -> list[tuple[float, str]]:
    """The report's timeline: (when, sentence) rows, only the looks that changed the verdict,
    and a world fact where it happened (it is journalled at the first tick after it)."""
    rows: list[tuple[float, str]] = []
    previous = None
    for event in events:
        if event.kind == EventKind.LOOK:
            verdict = (event.data.get("verdict") or {}).get("outcome")
            if verdict == previous:
                continue
            previous = verdict
        text = describe_event(event, state)
        if text is not None:
            rows.append((happened(event), text))
    rows.sort(key=lambda row: row[0])
    return rows


def report_state(record: RolloutRecord, events: list[Event]) -> RolloutState:
    """The rollout's last state, with its baseline from the journal if the state lacks it."""
    state = RolloutState.from_dict(record.snapshot)
    started = next((e for e in events if e.kind == EventKind.STARTED), None)
    if started is not None and state.baseline is None:
        state.baseline = started.data.get("baseline")
    return state


def next_steps(record: RolloutRecord, state: RolloutState) -> list[str]:
    """What a human can do now, as commands."""
    rid, plan = record.id, record.plan_path or "PLAN"
    phase = state.phase
    if phase in (Phase.ROLLED_BACK, Phase.ABORTED):
        return [
            f"Inspect the candidate `{state.candidate}`: its logs, and the gate numbers above.",
            f"Check what a new attempt would do: `mlrollout plan preview {plan}`.",
            f"Fix the model or the plan, then run again: `mlrollout run {plan}`.",
        ]
    if phase == "waiting":
        return [
            f"Go on: `mlrollout promote {rid}` (or `--full` to skip the remaining steps).",
            f"Give up and restore `{state.baseline}`: `mlrollout abort {rid}`.",
        ]
    if phase == Phase.SUCCEEDED and state.evaluated:
        return [
            f"The evaluation passed: roll `{state.candidate}` out when you want it serving, "
            f"e.g. with a canary (`mlrollout plan preview {plan}` after changing its strategy)."
        ]
    if phase == Phase.SUCCEEDED:
        return [f"Nothing: `{state.candidate}` serves all traffic. Watch its dashboards."]
    return [
        f"Follow it: `mlrollout status {rid}`; stop it: `mlrollout abort {rid}`.",
        f"If no runner drives it any more: `mlrollout resume {rid}`.",
    ]


def markdown_report(record: RolloutRecord, events: list[Event], steps: list[ExecStep]) -> str:
    """A Markdown summary of one rollout from its record and journal."""
    state = report_state(record, events)
    head, detail = outcome(state, steps)
    first = events[0].at if events else None
    end = events[-1] if events and Phase(state.phase).terminal else None
    last = events[-1].at if events else None
    duration = format_duration(last - first) if first is not None and last is not None else "-"
    headline = join(f"**{head.capitalize()}**", detail)
    lines = [f"# {record.name} — rollout `{record.id}`", "", headline + "."]
    facts = [
        ["Endpoint", f"`{record.endpoint_key}`"],
        ["Baseline → candidate", f"`{state.baseline or '?'}` → `{state.candidate or '?'}`"],
        ["Started", iso(first)],
        ["Ended", iso(end.at) if end else "not yet"],
        ["Duration (rollout time)", duration],
        ["Looks", str(state.looks or sum(e.kind == EventKind.LOOK for e in events))],
    ]
    lines += ["", *_table(["", ""], facts), "", "## Timeline", ""]
    origin = first if first is not None else 0.0
    rows = timeline_rows(events, state)
    lines += _table(
        ["Time", "Event"], [[f"+{format_duration(max(0.0, at - origin))}", t] for at, t in rows]
    )
    world = [e for e in events if e.kind == EventKind.FACT]
    if world:
        lines += ["", "## What changed in the world", ""]
        lines += _table(
            ["When", "Change"],
            [
                [
                    f"+{format_duration(float(e.data.get('offset') or 0.0))} of the rollout",
                    str(e.data.get("text", "")),
                ]
                for e in world
            ],
        )
    shadow = shadow_summary(events, steps)
    if shadow is not None:
        lines += ["", "## The shadow against the baseline", ""]
        lines += _table(
            ["Gate", "Metric", "Shadow", "Baseline", "Bound", "Outcome"],
            [list(row) for row in shadow.gates],
        )
        paired = shadow.paired_text()
        if paired:
            lines += ["", paired + "."]
        if shadow.examples:
            lines += ["", f"Requests on which they disagreed (at most {MAX_EXAMPLES}):", ""]
            examples = [list(e) for e in shadow.examples]
            lines += _table(["Inference id", "Baseline", "Shadow"], examples)
    lines += _ab_section(events, state)
    gates = gates_of(state.last_verdict)
    if gates:
        gate_rows = [
            [
                gate_name(g) + (" (dry run)" if g.get("dry_run") else ""),
                str(g.get("metric", "")),
                f"**{g.get('outcome', '?')}**",
                str(g.get("reason", "")),
            ]
            for g in gates
        ]
        lines += ["", "## Final gate verdicts", ""]
        lines += _table(["Gate", "Metric", "Outcome", "Reason"], gate_rows)
    lines += ["", "## What to do next", ""]
    lines += [f"- {item}" for item in next_steps(record, state)]
    return "\n".join(lines) + "\n"


def _ab_section(events: list[Event], state: RolloutState) -> list[str]:
    """An A/B test's result: the lift with its interval, the variants, the guardrails, the
    sample-ratio check, the time to decision, and the interval over the looks (a text table)."""
    summary = ab_summary(events)
    if summary is None:
        return []
    lines = ["", "## The A/B test", "", summary.headline() + "."]
    facts = [
        ["Primary metric", f"`{summary.gate}` ({summary.metric})"],
        ["Lift (relative)", summary.lift_text()],
        ["Decision", summary.decision],
        ["Time to decision", summary.time_to_decision()],
        ["Looks", str(len(summary.looks))],
    ]
    if summary.min_effect is not None:
        facts.insert(2, ["Smallest lift worth shipping", f"{summary.min_effect * 100:g} %"])
    if summary.srm is not None:
        facts.append(["Sample-ratio check", f"{summary.srm[0]}: {summary.srm[1]}"])
    lines += ["", *_table(["", ""], facts), ""]
    variants = summary.variants(state.candidate or "candidate", state.baseline or "baseline")
    lines += _table(
        ["Variant", "Role", summary.gate, "Observations"], [list(row) for row in variants]
    )
    if summary.guardrails:
        lines += ["", "Guardrails:", ""]
        lines += _table(
            ["Gate", "Metric", "Outcome", "Reason"],
            [[name, metric, f"**{o}**", reason] for name, metric, o, reason in summary.guardrails],
        )
    lines += ["", "The lift's always-valid interval over the looks:", ""]
    lines += _table(
        ["Since the split", "Lift", "Interval", "p", "Outcome"],
        [list(row) for row in summary.table()],
    )
    return lines


def status_summary(
    record: RolloutRecord, state: RolloutState, steps: list[ExecStep]
) -> dict[str, Any]:
    """The JSON of ``mlrollout status --output json``."""
    head, detail = outcome(state, steps)
    current = steps[state.step] if state.step < len(steps) else None
    waiting = state.waiting
    return {
        "id": record.id,
        "name": record.name,
        "endpoint": record.endpoint_key,
        "phase": state.phase,
        "summary": join(head, detail),
        "baseline": state.baseline,
        "candidate": state.candidate,
        "step": {
            "index": state.step,
            "count": len(steps),
            "description": current.describe() if current else None,
        },
        "weights": dict(state.weights),
        "looks": state.looks,
        "verdict": (state.last_verdict or {}).get("outcome"),
        "gates": [
            {
                "name": gate_name(g),
                "metric": g.get("metric"),
                "outcome": g.get("outcome"),
                "reason": g.get("reason"),
                "dry_run": bool(g.get("dry_run")),
            }
            for g in gates_of(state.last_verdict)
        ],
        "reason": state.reason,
        "waiting": None
        if waiting is None
        else {
            "reason": waiting.get("reason"),
            "since": iso(waiting.get("since")),
            "timeout_at": iso(waiting.get("timeout_at")),
            "on_timeout": waiting.get("on_timeout"),
            "commands": [f"mlrollout promote {record.id}", f"mlrollout abort {record.id}"],
        },
        "updated_at": iso(state.now or None),
    }


def render_status(
    record: RolloutRecord, state: RolloutState, steps: list[ExecStep]
) -> RenderableType:
    """The human ``mlrollout status ID`` output: the live view, then what to do next."""
    body = render(state, rollout_id=record.id, plan_name=record.name, steps=steps)
    hints = Text("\n".join(f"→ {s}" for s in next_steps(record, state)), style="dim")
    return Group(body, hints)
