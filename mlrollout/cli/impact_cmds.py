"""``mlrollout impact ID``: did the rollout change its metrics? (see ``docs/impact.md``)

Reads each metric's history from the rollout's own metrics source — ``--before`` (7 days) up
to its first traffic change, ``--after`` (7 days) from its end — and estimates the change with
the interrupted-time-series regression of :mod:`mlrollout.analysis.impact`. Read-only: it
opens the state store to read the rollout and its journal, and the metrics source to read
history; it writes nothing anywhere.

On the sandbox (``provider: local``) the world is a pure function of time, so the after-period
is read in full at once, whatever the clock says (virtual time has no "not yet"); on a real
platform it ends now, and a shorter after-period than asked for is said so.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mlrollout.cli.common import Output, OutputOption, print_json, settings

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mlrollout.analysis.impact import Impact
    from mlrollout.plan.model import Gate, Plan
    from mlrollout.state.base import Event, RolloutRecord

#: The journal's events that move live traffic (the rollout's first one starts it).
CHANGES = (
    "set_traffic.applied",
    "set_shadow.applied",
    "set_flag.applied",
    "start_native.applied",
)
#: The journal's events that end a rollout.
ENDINGS = ("promoted", "rolled_back", "evaluated", "aborted")


def register(app: typer.Typer) -> None:
    app.command(name="impact")(impact)


@dataclass(frozen=True)
class Span:
    """When the rollout touched traffic: ``origin`` (the candidate added: the sandbox's world
    zero), ``start`` (the first traffic change) and ``end`` (its last event)."""

    origin: float
    start: float
    end: float
    outcome: str


def rollout_span(record: RolloutRecord, events: list[Event]) -> Span:
    from mlrollout.errors import UsageError

    start = next((e.at for e in events if e.kind in CHANGES), None)
    ended = next((e for e in reversed(events) if e.kind in ENDINGS), None)
    if start is None:
        raise UsageError(f"rollout {record.id} never changed traffic: there is no change to assess")
    if ended is None:
        raise UsageError(
            f"rollout {record.id} has not ended ({record.phase})",
            hint="assess it once it is promoted or rolled back",
        )
    prepared = next((e.at for e in events if e.kind == "prepare.applied"), start)
    return Span(min(prepared, start), start, ended.at, ended.kind)


def chosen_gates(plan: Plan, names: list[str]) -> list[Gate]:
    """The plan's gates ``--metric`` names (every gate a history can read by default)."""
    from mlrollout.errors import UsageError
    from mlrollout.plan.backtest import judged

    readable = judged(plan)
    by_name = {g.name: g for g in plan.analysis.gates}
    if not names:
        if not readable:
            raise UsageError("the plan has no gate whose metric history can be read")
        return [by_name[n] for n in readable]
    out = []
    for name in names:
        if name not in by_name:
            listed = ", ".join(by_name) or "none"
            raise UsageError(f"the plan has no gate {name!r} (its gates: {listed})")
        if name not in readable:
            raise UsageError(
                f"gate {name!r} ({by_name[name].metric}) has no metric history to read",
                hint="impact reads error_rate, latency, requests and custom gates",
            )
        out.append(by_name[name])
    return out


def assess(
    plan: Plan,
    span: Span,
    gates: list[Gate],
    *,
    before: float,
    after: float,
    step: float,
    state: str,
    variants: tuple[str, ...],
    control: str | None = None,
    now: float | None = None,
    trend: bool | None = None,
    serving: Sequence[tuple[float, str]] = (),
) -> tuple[list[Impact], list[str]]:
    """Each gate's impact, and notes (a shortened after-period). ``serving``: on the sandbox,
    who serves everyone from when on (a promoted candidate after the rollout's end)."""
    from mlrollout.analysis.impact import estimate
    from mlrollout.errors import UsageError
    from mlrollout.history import history_source, read_history
    from mlrollout.units import format_duration

    notes: list[str] = []
    sandbox = plan.target.provider == "local" and plan.analysis.source == "default"
    first = span.start - before
    last = span.end + after
    if not sandbox:
        wall = time.time() if now is None else now
        if last > wall:
            notes.append(
                f"the after-period is {format_duration(max(0.0, wall - span.end))} so far "
                f"(of {format_duration(after)} asked for): it ends now"
            )
            last = wall
    source = history_source(plan, origin=span.origin, state=state, serving=serving)
    pre = read_history(
        source, start=first, end=span.start, step=step, variants=variants, gates=gates
    )
    post = read_history(source, start=span.end, end=last, step=step, variants=variants, gates=gates)
    control_pre = control_post = None
    control_variants = variants
    if control is not None:
        endpoint = control.removeprefix("endpoint=") if control.startswith("endpoint=") else None
        if endpoint is None and sandbox:
            raise UsageError(
                "on the sandbox a control is another simulated endpoint: --control endpoint=NAME"
            )
        if endpoint is None:
            other = source
            control_variants = (control,)
        else:
            other = history_source(
                plan, origin=span.origin, state=state, endpoint=endpoint, control=True
            )
        control_pre = read_history(
            other, start=first, end=span.start, step=step, variants=control_variants, gates=gates
        )
        control_post = read_history(
            other, start=span.end, end=last, step=step, variants=control_variants, gates=gates
        )
    out = []
    for gate in gates:
        before_points = pre.values(gate)
        rate = any(p.weight > 1 for p in before_points)
        out.append(
            estimate(
                before_points,
                post.values(gate),
                change=(span.start, span.end),
                metric=gate.name,
                rate=rate,
                step=step,
                control_before=None if control_pre is None else control_pre.values(gate),
                control_after=None if control_post is None else control_post.values(gate),
                control=control,
                trend=trend,
            )
        )
    return out, notes


def impact(
    ctx: typer.Context,
    rollout_id: Annotated[
        str, typer.Argument(help="Rollout id (a unique prefix is enough).", metavar="ID")
    ],
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric",
            "-m",
            help="A gate of the rollout's plan (error_rate, latency, custom query); repeat for "
            "more. Default: every gate whose history can be read.",
        ),
    ] = None,
    before: Annotated[
        str, typer.Option("--before", help="History before the first traffic change.")
    ] = "7d",
    after: Annotated[str, typer.Option("--after", help="History after the rollout ended.")] = "7d",
    step: Annotated[
        str, typer.Option("--step", help="One window of history per step (hourly by default).")
    ] = "1h",
    control: Annotated[
        str | None,
        typer.Option(
            "--control",
            help="A series the rollout did not touch, for a difference-in-differences: a "
            "variant of the same endpoint, or endpoint=NAME (another endpoint of the platform).",
        ),
    ] = None,
    trend: Annotated[
        bool | None,
        typer.Option(
            "--trend/--no-trend",
            help="Fit a linear trend, or not. [default: only when the before-period shows one]",
            show_default=False,
        ),
    ] = None,
    output: Output = OutputOption,
) -> int:
    """Did the rollout change its metrics? An interrupted-time-series estimate of each metric's
    level shift after the rollout (hour-of-week or hour-of-day seasonality, trend, Newey-West
    errors), with a 95 % interval, a placebo check and the assumptions it rests on.

    Read-only: reads the rollout's journal and its metrics source's history; changes nothing.
    Needs statsmodels (pip install "mlrollout[impact]")."""
    from mlrollout.engine.engine import RolloutState
    from mlrollout.engine.runner import plan_of
    from mlrollout.errors import UsageError
    from mlrollout.units import parse_duration

    try:
        seconds = {k: parse_duration(v) for k, v in (("before", before), ("after", after))}
        step_seconds = parse_duration(step)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    found = settings(ctx)
    store = found.store()
    record = store.get_rollout(rollout_id)
    events = store.events(record.id)
    plan = plan_of(record)
    span = rollout_span(record, events)
    gates = chosen_gates(plan, list(metric or []))
    snapshot = RolloutState.from_dict(record.snapshot) if record.snapshot else None
    names = [n for n in (getattr(snapshot, "baseline", None), plan.candidate.name) if n]
    serving: list[tuple[float, str]] = []
    if plan.target.provider == "local" and plan.sandbox is not None:
        # The simulated endpoint: its baseline before, and after a promotion its candidate.
        names = [next(iter(plan.sandbox.variants)), plan.candidate.name]
        if span.outcome == "promoted":
            serving = [(span.end, plan.candidate.name)]
    results, notes = assess(
        plan,
        span,
        gates,
        before=seconds["before"],
        after=seconds["after"],
        step=step_seconds,
        state=found.state,
        variants=tuple(dict.fromkeys(names)),
        control=control,
        trend=trend,
        serving=serving,
    )
    data = {
        "rollout": record.id,
        "plan": plan.name,
        "outcome": span.outcome,
        "first_change": span.start,
        "end": span.end,
        "before": seconds["before"],
        "after": seconds["after"],
        "step": step_seconds,
        "control": control,
        "notes": notes,
        "metrics": [r.to_dict() for r in results],
    }
    if output == Output.json:
        print_json(data)
    else:
        sys.stdout.write(render(data, results))
    return 0


def render(data: dict[str, Any], results: list[Impact]) -> str:
    """The impact for people: each effect in words, then how it was estimated and on what."""
    from datetime import UTC, datetime

    from mlrollout.units import format_duration

    def when(at: float) -> str:
        return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")

    lines = [
        f"impact of {data['rollout']} ({data['plan']}, {data['outcome'].replace('_', ' ')}): "
        f"{format_duration(data['before'])} before its first traffic change "
        f"({when(data['first_change'])}) against {format_duration(data['after'])} after its "
        f"end ({when(data['end'])}), {format_duration(data['step'])} windows",
    ]
    lines += [f"note: {n}" for n in data["notes"]]
    for result in results:
        lines.append("")
        lines += _metric_lines(result, data["step"])
    if results:
        lines.append("")
        lines.append("assumptions:")
        lines += [f"  - {a}" for a in results[0].assumptions]
    return "\n".join(lines) + "\n"


def _metric_lines(result: Impact, step: float) -> list[str]:
    from mlrollout.units import format_duration

    effect = result.effect

    def show(value: float) -> str:
        if result.kind == "rate":
            return f"{value * 100:+.3g}pp"
        return f"{value:+.4g}"

    level = f"{result.level * 100:g}%"
    relative = ""
    if effect.relative is not None:
        low, high = effect.relative_lower, effect.relative_upper
        relative = f" ({effect.relative * 100:+.2f}%"
        if low is not None and high is not None:
            relative += f", {low * 100:+.2f}% to {high * 100:+.2f}%"
        relative += ")"
    if effect.covers_zero:
        verdict = (
            f"no change told apart from noise: the {level} interval holds zero, so any effect "
            f"is between {show(effect.lower)} and {show(effect.upper)}"
        )
    else:
        direction = "raised" if effect.absolute > 0 else "lowered"
        verdict = f"the rollout {direction} it (p = {effect.p_value:.2g})"
    season = {"none": "no seasonality"}.get(result.seasonality, f"{result.seasonality} seasonality")
    model = f"level shift, {season}" + (", linear trend" if result.trend else "")
    lines = [
        f"{result.metric}: {show(effect.absolute)}{relative}, {level} interval "
        f"{show(effect.lower)} to {show(effect.upper)}: {verdict}",
        f"  model: {model}; {result.before} windows before, {result.after} after; "
        f"Newey-West errors over {result.lags} lag(s) of {format_duration(step)}",
    ]
    placebo = result.placebo
    if placebo is None:
        lines.append("  placebo: too few windows before the rollout to run one")
    else:
        fake = show(placebo.effect.absolute)
        check = (
            "the before-period was not stable (a trend or an earlier change): read the "
            "estimate with care"
            if placebo.flagged
            else "nothing where nothing happened, as it should"
        )
        lines.append(
            f"  placebo: a made-up change {format_duration(result.change[0] - placebo.at)} "
            f"before the rollout gives {fake} ({show(placebo.effect.lower)} to "
            f"{show(placebo.effect.upper)}): {check}"
        )
        if placebo.trend_per_day is not None and placebo.trend_p_value is not None:
            lines.append(
                f"  trend before the rollout: {show(placebo.trend_per_day)} a day "
                f"(p = {placebo.trend_p_value:.2g})"
            )
    return lines
