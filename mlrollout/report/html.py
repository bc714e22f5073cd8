"""The HTML report of one rollout: one self-contained page to attach to a CI run or a ticket.

Everything is inline: the CSS in a ``<style>`` element and the charts as ``<svg>`` elements
drawn by :mod:`mlrollout.report.svg` (no matplotlib, no JavaScript, no font, script or image
fetched from anywhere: the core stays dependency-light and the page opens offline). Every text
that comes from the journal (gate reasons, variant names, world facts, the plan's name) is
escaped with :func:`html.escape`.

The page: the outcome and its reason; the timeline (the rows of the Markdown report, world facts
included); the weights over time (a step chart per variant, from ``set_traffic.applied``); per
gate, its evidence against its boundary and the candidate's value with its interval against the
baseline and the limit, over the looks; the decision and its sentence; the final gate verdicts;
what to do next. A strategy may add sections of its own (:data:`STRATEGY_SECTIONS`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from typing import Any

from mlrollout.capture import MAX_EXAMPLES
from mlrollout.engine.engine import RolloutState
from mlrollout.engine.events import LOOK_KINDS, EventKind
from mlrollout.engine.phases import Phase
from mlrollout.plan.timeline import ExecStep
from mlrollout.report import svg
from mlrollout.report.ab import CHART_POINTS, ABSummary, ab_summary, confidence
from mlrollout.report.console import (
    describe_event,
    format_value,
    gate_name,
    gates_of,
    iso,
    join,
    ordered,
    outcome,
)
from mlrollout.report.markdown import happened, next_steps, report_state, timeline_rows
from mlrollout.report.shadow import shadow_summary
from mlrollout.state.base import Event, RolloutRecord
from mlrollout.units import format_duration


@dataclass
class ReportContext:
    """What a section is drawn from: the rollout, its journal and its expanded steps."""

    record: RolloutRecord
    events: list[Event]
    steps: list[ExecStep]
    state: RolloutState
    strategy: str | None
    start: float  # the first event's time: charts count from here

    def offset(self, at: float) -> float:
        return max(0.0, at - self.start)


#: A section of the page: its title (plain text, escaped when drawn) and its HTML body.
Section = tuple[str, str]
StrategySections = Callable[[ReportContext], list[Section]]

#: Extra sections per strategy type (the plan's ``strategy.type``), drawn after the gate charts.
#: canary and linear have none; blue_green shows the two fleets; shadow its comparison with the
#: baseline; ab_test the winner test's lift and its interval over the looks.
STRATEGY_SECTIONS: dict[str, StrategySections] = {}


def _fleets(context: ReportContext) -> list[Section]:
    """blue_green: what each fleet served, when; when green was provisioned and switched to,
    and when blue (or, on a rollback, green) was removed."""
    state = context.state
    blue, green = state.baseline or "blue", state.candidate or "green"
    rows: list[list[str]] = []
    for event in context.events:
        data = event.data
        when = escape(_elapsed(context.offset(event.at)))
        if event.kind == EventKind.PREPARE_APPLIED:
            rows.append([when, "serving", "provisioned, 0 %", "green created beside blue"])
        elif event.kind == EventKind.SET_TRAFFIC_APPLIED:
            weights = data.get("weights") or {}
            b, g = float(weights.get(blue, 0.0)), float(weights.get(green, 0.0))
            what = "switched to green" if g >= 100 else ("back to blue" if b >= 100 else "")
            rows.append([when, f"{b:g} %", f"{g:g} %", what])
        elif event.kind == EventKind.SET_SHADOW_APPLIED:
            mirrored = float(data.get("percent") or 0.0) if data.get("variant") else 0.0
            what = "mirror stopped" if not mirrored else "a copy of live requests, answers dropped"
            rows.append([when, "100 %", f"mirrored {mirrored:g} %", escape(what)])
        elif event.kind in (EventKind.START_NATIVE_APPLIED, EventKind.NATIVE):
            g = float(data.get("green_percent") or 0.0)
            status = str(data.get("status", "?"))
            what = f"platform: {status}" + (f" ({data['detail']})" if data.get("detail") else "")
            rows.append([when, f"{100 - g:g} %", f"{g:g} %", escape(what)])
        elif event.kind == EventKind.FINALIZE_APPLIED:
            retired = str(data.get("retire"))
            gone = "retired" if retired == blue else "serving"
            rows.append(
                [
                    when,
                    gone if retired == blue else "100 %",
                    "removed" if retired == green else "100 %",
                    escape(f"{retired} removed"),
                ]
            )
    if not rows:
        return []
    body = _table(["Time", escape(f"blue ({blue})"), escape(f"green ({green})"), ""], rows)
    return [("Blue and green", body)]


STRATEGY_SECTIONS["blue_green"] = _fleets


def _shadow(context: ReportContext) -> list[Section]:
    """shadow: each gate's shadow and baseline numbers side by side, what the capture paired,
    and the requests on which the two disagreed."""
    summary = shadow_summary(context.events, context.steps)
    if summary is None:
        return []
    rows = [[escape(c) for c in row[:5]] + [_badge(row[5])] for row in summary.gates]
    body = _table(["Gate", "Metric", "Shadow", "Baseline", "Bound", "Outcome"], rows)
    paired = summary.paired_text()
    if paired:
        body += f"<p>{escape(paired)}.</p>"
    if summary.examples:
        body += f"<p>Requests on which they disagreed (at most {MAX_EXAMPLES}):</p>"
        body += _table(
            ["Inference id", "Baseline", "Shadow"],
            [[f"<code>{escape(i)}</code>", escape(b), escape(c)] for i, b, c in summary.examples],
        )
    return [("The shadow against the baseline", body)]


STRATEGY_SECTIONS["shadow"] = _shadow


def _ab_test(context: ReportContext) -> list[Section]:
    """ab_test: the winner metric's lift with its always-valid interval, the two variants'
    numbers, the guardrails, the sample-ratio check, the time to decision, and the lift's
    interval over the looks (a chart)."""
    summary = ab_summary(context.events)
    if summary is None:
        return []
    state = context.state
    body = f'<p class="sentence">{escape(summary.headline())}.</p>'
    facts = [
        ["Primary metric", f"<code>{escape(summary.gate)}</code> ({escape(summary.metric)})"],
        ["Lift (relative)", escape(summary.lift_text())],
        ["Decision", escape(summary.decision)],
        ["Time to decision", escape(summary.time_to_decision())],
        ["Looks", escape(str(len(summary.looks)))],
    ]
    if summary.min_effect is not None:
        facts.insert(2, ["Smallest lift worth shipping", escape(f"{summary.min_effect * 100:g} %")])
    if summary.srm is not None:
        facts.append(["Sample-ratio check", f"{_badge(summary.srm[0])} {escape(summary.srm[1])}"])
    body += _table(["", ""], facts, "facts")
    variants = summary.variants(state.candidate or "candidate", state.baseline or "baseline")
    body += _table(
        ["Variant", "Role", escape(summary.gate), "Observations"],
        [[escape(c) for c in row] for row in variants],
    )
    if summary.guardrails:
        body += "<h3>Guardrails</h3>" + _table(
            ["Gate", "Metric", "Outcome", "Reason"],
            [
                [escape(name), escape(metric), _badge(outcome), escape(reason)]
                for name, metric, outcome, reason in summary.guardrails
            ],
        )
    body += lift_chart(summary, context)
    return [("The A/B test", body)]


def lift_chart(summary: ABSummary, context: ReportContext) -> str:
    """The lift with its always-valid interval over the looks, against no difference and the
    smallest lift worth shipping."""
    looks = summary.sampled(CHART_POINTS)

    def percent(v: float | None) -> float | None:
        return None if v is None else v * 100

    xs = [context.offset(look.time) for look in looks]
    lift = [(x, percent(look.lift)) for x, look in zip(xs, looks, strict=True)]
    band = [(x, percent(look.low), percent(look.high)) for x, look in zip(xs, looks, strict=True)]
    markers: list[str | None] | None = (
        [svg.OUTCOME_COLOUR.get(look.outcome, "#777777") for look in looks]
        if len(looks) <= 80
        else None
    )
    hlines = [(0.0, "no difference", "#444444")]
    if summary.min_effect:
        hlines.append((summary.min_effect * 100, "min_effect", "#2ca02c"))
    marks = []
    if summary.decided is not None:
        marks.append((context.offset(summary.decided.time), "decided"))
    core = [y for _, y in lift] + [y for y, _, _ in hlines]
    bounds = [b for _, low, high in band for b in (low, high)]
    level = "always-valid" if summary.alpha is None else f"always-valid {confidence(summary.alpha)}"
    return svg.render(
        svg.Chart(
            title=f"{summary.gate}: relative lift and its {level} interval",
            series=[svg.Series("lift", lift, "#1f77b4", markers=markers)],
            bands=[svg.Band("interval", band, "#1f77b4")],
            hlines=hlines,
            x_range=_x_range(context),
            y_range=svg.value_range(core, bounds, stretch=2.0),
            x_format=_elapsed,
            y_format=lambda v: f"{v:+.3g}%",
            vlines=_traffic_changes(context),
            marks=marks,
            width=1040,
            height=260,
            note=None if any(y is not None for _, y in lift) else "no lift recorded yet",
        )
    )


STRATEGY_SECTIONS["ab_test"] = _ab_test


def strategy_sections(context: ReportContext) -> list[Section]:
    sections = STRATEGY_SECTIONS.get(context.strategy or "")
    return sections(context) if sections is not None else []


def _code(text: str) -> str:
    """Escaped ``text`` with Markdown-style `code` spans (as :func:`next_steps` writes them)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A table of already-escaped cells."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    klass = f' class="{cls}"' if cls else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _badge(verdict: object) -> str:
    text = str(verdict if verdict is not None else "?")
    colour = svg.OUTCOME_COLOUR.get(text, "#777777")
    return f'<span class="badge" style="background:{colour}">{escape(text)}</span>'


def _elapsed(seconds: float) -> str:
    return f"+{format_duration(max(0.0, seconds))}"


# -- charts ------------------------------------------------------------------------------------


def _x_range(context: ReportContext) -> tuple[float, float]:
    end = max((happened(e) for e in context.events), default=context.start)
    return 0.0, max(60.0, context.offset(end))


def _traffic_changes(context: ReportContext) -> list[float]:
    kinds = (EventKind.SET_TRAFFIC_APPLIED, EventKind.SET_FLAG_APPLIED)
    return [context.offset(e.at) for e in context.events if e.kind in kinds]


def _facts(context: ReportContext) -> list[tuple[float, str]]:
    return [
        (context.offset(happened(e)), "world") for e in context.events if e.kind == EventKind.FACT
    ]


def weights_chart(context: ReportContext) -> str:
    """Each variant's weight over time, a staircase from ``started`` and ``set_traffic.applied``
    (and ``adopted``: live weights taken over) to the end of the journal; with ``flags``, the
    split written into the flag (``set_flag.applied``), which is what routes the users."""
    changes: list[tuple[float, dict[str, Any]]] = []
    flagged = any(e.kind == EventKind.SET_FLAG_APPLIED for e in context.events)
    kinds: tuple[EventKind, ...] = (
        (EventKind.STARTED, EventKind.SET_FLAG_APPLIED)
        if flagged
        else (EventKind.STARTED, EventKind.SET_TRAFFIC_APPLIED, EventKind.ADOPTED)
    )
    for event in context.events:
        weights = event.data.get("weights")
        if event.kind in kinds and isinstance(weights, dict):
            changes.append((context.offset(event.at), weights))
    x_range = _x_range(context)
    names: list[str] = []
    for _, weights in changes:
        names += [str(n) for n in weights if str(n) not in names]
    names = ordered(dict.fromkeys(names, 0.0), context.state)
    series = []
    for i, name in enumerate(names):
        points: list[svg.Point] = []
        for at, weights in changes:
            points.append((at, svg.finite(weights.get(name, 0.0))))
        if points:
            points.append((x_range[1], points[-1][1]))
        role = (
            " (candidate)"
            if name == context.state.candidate
            else " (baseline)"
            if name == context.state.baseline
            else ""
        )
        series.append(
            svg.Series(name + role, points, svg.PALETTE[i % len(svg.PALETTE)], step=True, width=2.5)
        )
    return svg.render(
        svg.Chart(
            title="Traffic weight per variant (%)",
            series=series,
            x_range=x_range,
            y_range=(0.0, 105.0),
            x_format=_elapsed,
            y_format=lambda v: f"{v:g}%",
            vlines=_traffic_changes(context),
            marks=_facts(context),
            width=1040,
            height=240,
            note=None if series else "no traffic change recorded",
        )
    )


@dataclass
class GateLook:
    at: float  # seconds since the start
    outcome: str
    numbers: dict[str, Any]


def gate_looks(context: ReportContext) -> dict[str, tuple[str, list[GateLook]]]:
    """Per gate name: its metric and its numbers at each look, in order."""
    gates: dict[str, tuple[str, list[GateLook]]] = {}
    for event in context.events:
        if event.kind not in LOOK_KINDS:
            continue
        for gate in gates_of(event.data.get("verdict")):
            name = gate_name(gate)
            numbers = gate.get("numbers")
            _, looks = gates.setdefault(name, (str(gate.get("metric", "")), []))
            looks.append(
                GateLook(
                    context.offset(event.at),
                    str(gate.get("outcome", "?")),
                    numbers if isinstance(numbers, dict) else {},
                )
            )
    return gates


def _column(looks: list[GateLook], key: str) -> list[svg.Point]:
    return [(look.at, svg.finite(look.numbers.get(key))) for look in looks]


def _values(points: list[svg.Point]) -> list[float | None]:
    return [y for _, y in points]


def evidence_chart(name: str, looks: list[GateLook], context: ReportContext) -> str:
    """The gate's evidence of a regression against the boundary that decides a failure (and, where
    the rule has one, its evidence of staying within the margin against the pass boundary)."""
    fail = _column(looks, "evidence_fail")
    if all(y is None for _, y in fail):
        fail = _column(looks, "statistic")
    boundary = _column(looks, "boundary")
    passing = _column(looks, "evidence_pass")
    pass_boundary = _column(looks, "boundary_pass")
    series = [
        svg.Series(
            "evidence of a regression",
            fail,
            "#d62728",
            markers=[svg.OUTCOME_COLOUR.get(look.outcome, "#777777") for look in looks],
        ),
        svg.Series("fail boundary", boundary, "#444444", step=True, dash="6 4"),
    ]
    if any(y is not None for _, y in passing):
        series.append(svg.Series("evidence of staying within", passing, "#2ca02c"))
    if any(y is not None for _, y in pass_boundary):
        series.append(svg.Series("pass boundary", pass_boundary, "#8fd18f", step=True, dash="3 3"))
    core = _values(boundary) + _values(pass_boundary)
    extra = _values(fail) + _values(passing)
    empty = all(v is None for v in core + extra)
    return svg.render(
        svg.Chart(
            title=f"{name}: evidence vs boundary",
            series=series,
            x_range=_x_range(context),
            y_range=svg.value_range(core, extra, floor=0.0, stretch=5.0),
            x_format=_elapsed,
            y_format=lambda v: f"{v:.3g}",
            vlines=_traffic_changes(context),
            marks=_facts(context),
            note="no evidence recorded" if empty else None,
        )
    )


def value_chart(name: str, metric: str, looks: list[GateLook], context: ReportContext) -> str:
    """The candidate's value with its interval at each look, against the baseline's value and
    the limit (the baseline plus its margin, or the plan's absolute threshold)."""
    candidate = _column(looks, "candidate")
    if all(y is None for _, y in candidate):
        candidate = _column(looks, "estimate")
    baseline = _column(looks, "baseline")
    limit = _column(looks, "threshold")
    bars = [
        (
            look.at,
            svg.finite(look.numbers.get("lower")),
            svg.finite(look.numbers.get("upper")),
            y,
        )
        for look, (_, y) in zip(looks, candidate, strict=True)
    ]
    has_bars = any(low is not None or high is not None for _, low, high, _ in bars)
    series = [
        svg.Series(
            "candidate",
            candidate,
            "#1f77b4",
            markers=[svg.OUTCOME_COLOUR.get(look.outcome, "#777777") for look in looks],
        )
    ]
    if any(y is not None for _, y in baseline):
        series.append(svg.Series("baseline", baseline, "#ff7f0e"))
    word = "configured" if metric == "traffic_share" else "limit"
    if any(y is not None for _, y in limit):
        series.append(svg.Series(word, limit, "#d62728", step=True, dash="6 4"))
    whiskers = [svg.Whiskers("interval", bars, "#1f77b4")] if has_bars else []
    core = _values(candidate) + _values(baseline) + _values(limit)
    bounds = [b for _, low, high, _ in bars for b in (low, high)]
    empty = all(v is None for v in core)
    return svg.render(
        svg.Chart(
            title=f"{name}: {metric or 'value'}, candidate vs baseline",
            series=series,
            whiskers=whiskers,
            x_range=_x_range(context),
            y_range=svg.value_range(core, bounds, floor=0.0, stretch=1.0),
            x_format=_elapsed,
            y_format=lambda v: format_value(metric, v),
            vlines=_traffic_changes(context),
            marks=_facts(context),
            note="no numbers recorded (no data)" if empty else None,
        )
    )


# -- sections ----------------------------------------------------------------------------------


def _decision(context: ReportContext) -> str:
    """The decision that ended (or holds) the rollout, and its sentence."""
    state, events = context.state, context.events
    phase = state.phase
    deciding = {
        EventKind.ANALYSIS_FAILED,
        EventKind.ANALYSIS_PASSED,
        EventKind.ANALYSIS_ENDED,
        EventKind.ANALYSIS_INCONCLUSIVE,
        EventKind.APPROVED,
        EventKind.APPROVAL_TIMED_OUT,
        EventKind.PROMOTE_FORCED,
        EventKind.COMMAND_ABORT,
        EventKind.STEPS_COMPLETED,
    }
    if phase in (Phase.ROLLED_BACK, Phase.ROLLING_BACK):
        word = "roll back"
        start = next((e for e in events if e.kind == EventKind.ROLLBACK_STARTED), None)
        before = [e for e in events if start is None or e.seq < start.seq]
        cause = next((e for e in reversed(before) if e.kind in deciding), start)
    elif phase == Phase.SUCCEEDED:
        word = "promote"
        cause = next((e for e in reversed(events) if e.kind in deciding), None)
    elif phase == Phase.ABORTED:
        word = "abort"
        cause = next((e for e in reversed(events) if e.kind == EventKind.ABORTED), None)
    else:
        head, detail = outcome(state, context.steps)
        return f"<p>No decision yet: {escape(join(head, detail))}.</p>"
    sentence = state.reason if phase != Phase.SUCCEEDED else None
    parts = [f"<p><strong>{escape(word.capitalize())}</strong>"]
    if cause is not None:
        step = cause.data.get("step")
        where = ""
        if isinstance(step, int) and 0 <= step < len(context.steps):
            where = f", step {step + 1} ({context.steps[step].describe()})"
        parts.append(f" at {escape(_elapsed(context.offset(cause.at)) + where)}")
        text = describe_event(cause, state)
        if sentence is None and text is not None:
            sentence = text
    parts.append(".</p>")
    if sentence:
        parts.append(f'<p class="sentence">{escape(sentence)}</p>')
    return "".join(parts)


def _gate_table(state: RolloutState) -> str:
    rows = []
    for gate in gates_of(state.last_verdict):
        dry = " (dry run)" if gate.get("dry_run") else ""
        rows.append(
            [
                escape(gate_name(gate) + dry),
                escape(str(gate.get("metric", ""))),
                _badge(gate.get("outcome")),
                escape(str(gate.get("reason", ""))),
            ]
        )
    if not rows:
        return "<p>No gate was evaluated.</p>"
    return _table(["Gate", "Metric", "Outcome", "Reason"], rows)


def _gate_charts(context: ReportContext) -> str:
    looks = gate_looks(context)
    if not looks:
        return "<p>No look at the metrics was recorded.</p>"
    blocks = []
    for name, (metric, gate) in looks.items():
        blocks.append(
            f'<div class="gate"><h3>{escape(name)} <small>{escape(metric)}, '
            f"{len(gate)} looks, last {_badge(gate[-1].outcome)}</small></h3>"
            f'<div class="pair">{evidence_chart(name, gate, context)}'
            f"{value_chart(name, metric, gate, context)}</div></div>"
        )
    legend = (
        '<p class="hint">Dots are the gate\'s verdict at each look: '
        + " ".join(_badge(o) for o in svg.OUTCOME_COLOUR)
        + ". Grey dotted vertical lines: traffic changes; purple dashed: a change in the world"
        " (a sandbox event). Values beyond a chart's range are drawn at its edge.</p>"
    )
    return legend + "".join(blocks)


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
  margin: 24px auto; max-width: 1100px; color: #1b1b1b; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px;
  border-bottom: 1px solid #ddd; padding-bottom: 4px; } h3 { font-size: 14px; margin: 14px 0 4px; }
h3 small { font-weight: normal; color: #555; }
.headline { font-size: 16px; padding: 10px 14px; border-left: 6px solid #777; background: #f6f6f6; }
.headline.good { border-color: #2ca02c; } .headline.bad { border-color: #d62728; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td:first-child { white-space: nowrap; }
.badge { color: #fff; border-radius: 3px; padding: 1px 6px; font-size: 12px; }
.pair { display: flex; flex-wrap: wrap; gap: 8px; }
.sentence { background: #fff7f7; border: 1px solid #f0c8c8; padding: 8px 12px; }
code { background: #f2f2f2; padding: 1px 4px; border-radius: 3px; }
.hint { color: #555; font-size: 12px; } svg.chart { background: #fff; }
"""


def html_report(
    record: RolloutRecord,
    events: list[Event],
    steps: list[ExecStep],
    *,
    strategy: str | None = None,
) -> str:
    """The HTML page of one rollout from its record and journal (``strategy``: the plan's
    ``strategy.type``, for the strategy's own sections)."""
    state = report_state(record, events)
    start = events[0].at if events else record.created_at
    context = ReportContext(record, events, steps, state, strategy, start)
    head, detail = outcome(state, steps)
    tones = {"promoted": "good", "evaluated": "good", "rolled back": "bad", "rolling back": "bad"}
    tone = tones.get(head, "")
    end = events[-1] if events and Phase(state.phase).terminal else None
    last = events[-1].at if events else None
    facts = [
        ["Endpoint", f"<code>{escape(record.endpoint_key)}</code>"],
        [
            "Baseline → candidate",
            f"<code>{escape(str(state.baseline or '?'))}</code> → "
            f"<code>{escape(str(state.candidate or '?'))}</code>",
        ],
        ["Strategy", escape(strategy or "?")],
        ["Started", escape(iso(start if events else None))],
        ["Ended", escape(iso(end.at)) if end else "not yet"],
        [
            "Duration (rollout time)",
            escape(format_duration(last - start)) if last is not None else "-",
        ],
        ["Looks", escape(str(state.looks or sum(e.kind == EventKind.LOOK for e in events)))],
    ]
    timeline = [
        [escape(_elapsed(at - start)), escape(text)] for at, text in timeline_rows(events, state)
    ]
    world = [e for e in events if e.kind == EventKind.FACT]
    sections: list[Section] = [
        ("Timeline", _table(["Time", "Event"], timeline, "timeline")),
    ]
    if world:
        rows = [
            [
                escape(f"+{format_duration(float(svg.finite(e.data.get('offset')) or 0.0))}"),
                escape(str(e.data.get("text", ""))),
            ]
            for e in world
        ]
        sections.append(("What changed in the world", _table(["When", "Change"], rows)))
    sections += [
        ("Weights over time", weights_chart(context)),
        ("Gates over the looks", _gate_charts(context)),
        *strategy_sections(context),
        ("Decision", _decision(context)),
        ("Final gate verdicts", _gate_table(state)),
        (
            "What to do next",
            "<ul>" + "".join(f"<li>{_code(s)}</li>" for s in next_steps(record, state)) + "</ul>",
        ),
    ]
    title = f"{record.name} — rollout {record.id}"
    body = "".join(f"<section><h2>{escape(t)}</h2>{b}</section>" for t, b in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{escape(record.name)} <small>rollout <code>{escape(record.id)}</code></small></h1>"
        f'<p class="headline {tone}"><strong>{escape(head.capitalize())}</strong>'
        f"{escape(join('', detail))}.</p>"
        f"{_table(['', ''], facts, 'facts')}{body}"
        "</body></html>\n"
    )
