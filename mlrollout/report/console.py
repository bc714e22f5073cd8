"""Console reporters: plain timestamped lines (CI logs), JSON lines, and a live ``rich`` display.

All three are engine listeners (``reporter(event, state)``) and share :func:`describe_event`, the
one place where a journal event becomes a human sentence.
"""

from __future__ import annotations

import json
import math
from collections import deque
from datetime import UTC, datetime
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from mlrollout.engine.engine import RolloutState
from mlrollout.engine.events import EventKind
from mlrollout.engine.phases import Phase
from mlrollout.plan.model import QUALITY_METRICS
from mlrollout.plan.timeline import ExecStep
from mlrollout.state.base import Event
from mlrollout.units import format_duration, format_latency, format_rate

OUTCOME_STYLE = {"pass": "green", "continue": "cyan", "hold": "yellow", "fail": "red"}


def iso(at: float | None) -> str:
    """Seconds since the epoch as ``2026-11-26T13:04:05Z``; ``-`` for None."""
    if at is None or not math.isfinite(at):
        return "-"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ordered(weights: dict[str, float], state: RolloutState) -> list[str]:
    """Variant names: the candidate first, then the baseline, then any other."""
    first = [n for n in (state.candidate, state.baseline) if n and n in weights]
    return first + [n for n in weights if n not in first]


def format_weights(weights: dict[str, float], state: RolloutState) -> str:
    """``v7 10% / v6 90%``."""
    names = ordered(weights, state)
    return " / ".join(f"{n} {float(weights[n]):g}%" for n in names) or "no variants"


def format_value(metric: str, value: Any) -> str:
    """A gate number in its metric's unit (rates are fractions, latencies seconds)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    if metric in ("error_rate", "traffic_share", "agreement") or metric in QUALITY_METRICS:
        return format_rate(value)  # traffic_share: the sample ratio
    if metric.startswith("latency"):
        return format_latency(value)
    return f"{value:.0f}" if metric == "requests" else f"{value:.4g}"


def gate_name(gate: dict[str, Any]) -> str:
    return str(gate.get("gate") or gate.get("name") or "?")


def gates_of(verdict: dict[str, Any] | None) -> list[dict[str, Any]]:
    gates = (verdict or {}).get("gates")
    return [g for g in gates if isinstance(g, dict)] if isinstance(gates, list) else []


def describe_gate(gate: dict[str, Any]) -> str:
    """``errors: continue (candidate 1.1% vs 1.0%)``."""
    metric, numbers = str(gate.get("metric", "")), gate.get("numbers") or {}
    cand, base, limit = (numbers.get(k) for k in ("candidate", "baseline", "threshold"))
    if cand is not None:
        detail = f"candidate {format_value(metric, cand)}"
        if base is not None:
            detail += f" vs {format_value(metric, base)}"
        elif limit is not None:
            word = "configured" if metric == "traffic_share" else "limit"
            detail += f", {word} {format_value(metric, limit)}"
    elif numbers.get("needed_requests") is not None:
        detail = f"needs {numbers['needed_requests']:.0f} requests"
    else:
        detail = "query failed" if gate.get("error") else str(gate.get("reason", "no data"))
    dry = " (dry run)" if gate.get("dry_run") else ""
    return f"{gate_name(gate)}{dry}: {gate.get('outcome', '?')} ({detail})"


def event_line(event: Event, state: RolloutState) -> tuple[str, str] | None:
    """A short kind label and a sentence for ``event``; None when not worth a line."""
    kind, data = event.kind, event.data
    if kind.endswith(".requested"):
        return None
    who = str(data.get("by", "someone")) + (f" ({data['reason']})" if data.get("reason") else "")
    weights = data.get("weights") or {}
    if kind == EventKind.STARTED:
        return "started", (
            f"baseline {data.get('baseline')} ({format_weights(weights, state)}), "
            f"candidate {data.get('candidate')}"
        )
    if kind == EventKind.PREPARE_APPLIED:
        return "prepared", f"candidate {state.candidate} created at 0% traffic"
    if kind == EventKind.SET_TRAFFIC_APPLIED:
        return "traffic", format_weights(weights, state)
    if kind == EventKind.SET_FLAG_APPLIED:
        return "flag", f"{format_weights(weights, state)} written to {data.get('file', 'the flag')}"
    if kind == EventKind.FINALIZE_APPLIED:
        return "finalized", f"kept {data.get('keep')}, retired {data.get('retire')}"
    if kind == EventKind.SET_SHADOW_APPLIED:
        if not data.get("variant"):
            return "mirror", "mirroring stopped"
        return "mirror", (
            f"{data.get('percent', 0):g}% of live traffic mirrored to {data['variant']} "
            "(its answers are dropped)"
        )
    if kind == EventKind.START_NATIVE_APPLIED:
        return "deploying", (
            f"the platform's blue/green deployment of {state.candidate} started "
            f"({data.get('status', '?')})"
        )
    if kind == EventKind.NATIVE:
        detail = f": {data['detail']}" if data.get("detail") else ""
        return "platform", (
            f"deployment {data.get('status', '?')}, green at "
            f"{float(data.get('green_percent') or 0):g}%{detail}"
        )
    if kind == EventKind.ROLL_BACK_NATIVE_APPLIED:
        return "forcing", "the platform was told to roll its deployment back"
    if kind == EventKind.END_NATIVE_APPLIED:
        return "cleaned", "removed what the platform's deployment needed (alarms, config)"
    if kind == EventKind.LOOK or kind.startswith("analysis."):
        gates = "; ".join(describe_gate(g) for g in gates_of(data.get("verdict")))
        when = format_duration(float(data.get("elapsed") or 0))
        if kind == EventKind.LOOK:
            return "look", f"{when} in: {gates or 'no gates'}"
        if kind == EventKind.ANALYSIS_FAILED:
            return "failed", str(data.get("reason", "a gate failed"))
        if kind == EventKind.ANALYSIS_INCONCLUSIVE:
            return "undecided", f"after {when}, then {data.get('then', '?')}: {gates}"
        if kind == EventKind.ANALYSIS_ENDED:
            return "ended", f"ended undecided after {when} (no gate failed): {gates}"
        return "passed", f"analysis passed after {when}: {gates}"
    if kind == EventKind.WAITING:
        timeout_at = data.get("timeout_at")
        within = (
            "no timeout"
            if timeout_at is None
            else f"times out in {format_duration(timeout_at - event.at)}"
        )
        return "waiting", f"for approval ({within})"
    if kind == EventKind.PAUSED:
        return "paused", str(data.get("reason", ""))
    if kind == EventKind.FACT:
        offset = data.get("offset")
        when = f" (at +{format_duration(float(offset))})" if isinstance(offset, int | float) else ""
        return "world", f"{data.get('source', 'provider')}: {data.get('text', '')}{when}"
    simple: dict[str, tuple[str, str]] = {
        EventKind.APPROVED: ("approved", f"approved by {who}"),
        EventKind.APPROVAL_TIMED_OUT: (
            "timed out",
            f"no approval in time, then {data.get('then')}",
        ),
        EventKind.PROMOTE_FORCED: ("promote", f"full promotion forced by {who}"),
        EventKind.COMMAND_PROMOTE: ("command", f"promote requested by {who}"),
        EventKind.COMMAND_ABORT: ("command", f"abort requested by {who}"),
        EventKind.ABORT_REFUSED: ("abort", f"abort by {who} refused: {data.get('reason')}"),
        EventKind.ADOPTED: ("adopted", f"live weights {format_weights(weights, state)} taken"),
        EventKind.ADOPTED_APPLIED: ("adopted", "the current step starts over from them"),
        EventKind.STEP_COMPLETED: ("step", f"step {int(data.get('step', 0)) + 1} done"),
        EventKind.STEPS_COMPLETED: ("steps", "all steps done"),
        EventKind.ROLLBACK_STARTED: ("rollback", str(data.get("reason") or state.reason or "")),
        EventKind.PROMOTED: ("promoted", f"{state.candidate} serves 100%"),
        EventKind.EVALUATED: (
            "evaluated",
            f"{state.reason or 'passed'}; {state.baseline} serves 100%",
        ),
        EventKind.ABORTED: ("aborted", f"aborted by {who} before any change"),
    }
    if kind in simple:
        return simple[kind]
    if kind == EventKind.ROLLED_BACK:
        reason = data.get("reason") or state.reason
        return "rolled back", f"{state.baseline or 'baseline'} serves 100%" + (
            f" — {reason}" if reason else ""
        )
    return kind, ""


def describe_event(event: Event, state: RolloutState) -> str | None:
    """One human sentence for ``event`` (``traffic: v7 10% / v6 90%``); None = not worth a line."""
    line = event_line(event, state)
    return None if line is None else f"{line[0]}: {line[1]}" if line[1] else line[0]


def outcome(state: RolloutState, steps: list[ExecStep]) -> tuple[str, str]:
    """Where a rollout stands: a headline and its detail (``rolled back``, ``because …``)."""
    phase, reason = state.phase, state.reason or "no reason recorded"
    if phase == Phase.SUCCEEDED and state.evaluated:
        return "evaluated", f"{reason}; {state.baseline or 'the baseline'} serves 100%"
    if phase == Phase.SUCCEEDED:
        return "promoted", f"{state.candidate} serves 100% of traffic"
    if phase == Phase.ROLLED_BACK:
        return "rolled back", f"because {reason}; {state.baseline or 'the baseline'} serves 100%"
    if phase == Phase.ABORTED:
        return "aborted", reason
    if phase == "rolling_back":
        return "rolling back", f"because {reason}"
    waiting = state.waiting or {}
    if phase == "waiting" and waiting.get("reason") == "approval":
        timeout_at = waiting.get("timeout_at")
        return "waiting for approval", (
            "no timeout" if timeout_at is None else f"times out at {iso(timeout_at)}"
        )
    if phase == "waiting":
        return "paused", str(waiting.get("reason", reason))
    where = (
        f"step {state.step + 1} of {len(steps)}: {steps[state.step].describe()}"
        if state.step < len(steps)
        else "all steps done"
    )
    return "in progress", f"{phase}, {where}"


def join(head: str, detail: str) -> str:
    """``rolled back because …`` / ``promoted: v7 serves 100% of traffic``."""
    return f"{head} {detail}" if detail.startswith("because") else f"{head}: {detail}"


class PlainReporter:
    """One timestamped line per interesting event, for logs that are not a terminal."""

    def __init__(self, stream: TextIO, rollout_id: str, steps: list[ExecStep]) -> None:
        self.stream, self.rollout_id, self.steps = stream, rollout_id, steps

    def __call__(self, event: Event, state: RolloutState) -> None:
        line = event_line(event, state)
        if line is not None:
            self.stream.write(f"{iso(event.at)} {self.rollout_id}  {line[0]:<11} {line[1]}\n")
            self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class JsonReporter:
    """One JSON object per event and line: rollout, seq, at, kind, phase, data (and message)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: Event, state: RolloutState) -> None:
        line = {
            "rollout": event.rollout_id,
            "seq": event.seq,
            "at": iso(event.at),
            "kind": event.kind,
            "phase": state.phase,
            "data": event.data,
            "message": describe_event(event, state),
        }
        self.stream.write(json.dumps(line, default=str) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


def _bar(percent: float, width: int = 30) -> str:
    full = round(max(0.0, min(100.0, percent)) / 100 * width)
    return "█" * full + "░" * (width - full)


def render(
    state: RolloutState,
    *,
    rollout_id: str,
    plan_name: str,
    steps: list[ExecStep],
    recent: list[str] | None = None,
    total_worst_case_seconds: float | None = None,
    started_at: float | None = None,
) -> RenderableType:
    """The live view of one rollout (also the body of the human ``status`` output)."""
    parts: list[RenderableType] = []
    step_list = Text()
    for step in steps:
        if step.index < state.step or state.phase == Phase.SUCCEEDED:
            step_list.append(f"  ✓ {step.describe()}\n", style="green")
        elif step.index == state.step and state.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK):
            step_list.append(f"  ✗ {step.describe()}\n", style="red")
        elif step.index == state.step and state.phase in (Phase.PROGRESSING, Phase.WAITING):
            step_list.append(f"  ▶ {step.describe()}\n", style="bold")
        else:
            step_list.append(f"  · {step.describe()}\n", style="dim")
    parts.append(step_list)
    weights = Table.grid(padding=(0, 2))
    # blue-green names its fleets (its steps are labelled with their phase)
    labelled = any(s.phase for s in steps)
    fleets = {state.baseline: "blue", state.candidate: "green"} if labelled else {}
    shares = dict(state.weights)
    if state.native is not None and state.baseline and not state.native.get("ended"):
        # the platform moves traffic between two fleets under one variant name
        green = float(state.native.get("green_percent") or 0.0)
        shares = {state.baseline: 100.0 - green, state.candidate: green}
    for name in ordered(shares, state):
        pct = float(shares[name])
        label = f"{name} ({fleets[name]})" if name in fleets else name
        count = state.capacity.get(name)
        size = "" if count is None else f"{count} instance{'s' if count != 1 else ''}"
        mirrored = state.mirror.get(name)
        if mirrored:
            size = ", ".join(x for x in (size, f"mirrored {mirrored:g}% (serves no one)") if x)
        weights.add_row(label, Text(_bar(pct), style="blue"), f"{pct:g}%", size)
    if state.native is not None and state.native.get("status"):
        detail = state.native.get("detail")
        words = f"platform deployment: {state.native['status']}"
        parts.append(Text(words + (f" ({detail})" if detail else ""), style="dim"))
    parts.append(weights)
    gates = gates_of(state.last_verdict)
    if gates:
        table = Table("gate", "candidate", "baseline", "threshold", "verdict", box=None)
        for gate in gates:
            metric, nums = str(gate.get("metric", "")), gate.get("numbers") or {}
            verdict = str(gate.get("outcome", "?"))
            table.add_row(
                gate_name(gate) + (" (dry run)" if gate.get("dry_run") else ""),
                *(
                    format_value(metric, nums.get(k))
                    for k in ("candidate", "baseline", "threshold")
                ),
                Text(verdict, style=OUTCOME_STYLE.get(verdict, "")),
            )
        parts.append(table)
    timing = []
    current = steps[state.step] if state.step < len(steps) else None
    active = state.phase in (Phase.PROGRESSING, Phase.WAITING)
    if active and current is not None and state.step_started_at is not None:
        in_step = max(0.0, state.now - state.step_started_at)
        timing.append(f"{format_duration(in_step)} in step")
        if current.kind == "analyze" and current.window is not None:
            left = max(0.0, current.window.max - in_step)
            timing.append(f"up to {format_duration(left)} left in this analysis")
        elif current.kind == "native" and current.window is not None:
            left = max(0.0, current.window.max - in_step)
            timing.append(f"about {format_duration(left)} left in the platform's deployment")
        elif current.kind == "pause" and current.pause is not None:
            left = max(0.0, current.pause - in_step)
            timing.append(f"{format_duration(left)} left in {current.phase or 'this pause'}")
    if started_at is not None:
        timing.append(f"{format_duration(max(0.0, state.now - started_at))} since start")
    if total_worst_case_seconds is not None:
        worst = total_worst_case_seconds
        timing.append(
            f"worst case {format_duration(worst)}" if math.isfinite(worst) else "no time limit"
        )
    if timing:
        parts.append(Text(" · ".join(timing), style="dim"))
    if recent:
        parts.append(Text("\n".join(recent[-5:])))
    title = f"{rollout_id} · {plan_name} · {state.phase}"
    return Panel(Group(*parts), title=title, title_align="left")


class LiveReporter:
    """A ``rich.live.Live`` display redrawn on each event; a summary line when closed."""

    def __init__(
        self,
        console: Console,
        rollout_id: str,
        plan_name: str,
        steps: list[ExecStep],
        total_worst_case_seconds: float,
    ) -> None:
        self.console, self.rollout_id, self.plan_name = console, rollout_id, plan_name
        self.steps, self.total = steps, total_worst_case_seconds
        self.state = RolloutState()
        self.recent: deque[str] = deque(maxlen=5)
        self.started_at: float | None = None
        self.live = Live(console=console, auto_refresh=False)

    def render(self) -> RenderableType:
        return render(
            self.state,
            rollout_id=self.rollout_id,
            plan_name=self.plan_name,
            steps=self.steps,
            recent=list(self.recent),
            total_worst_case_seconds=self.total,
            started_at=self.started_at,
        )

    def start(self) -> None:
        self.live.start()
        self.live.update(self.render(), refresh=True)

    def __call__(self, event: Event, state: RolloutState) -> None:
        self.state = RolloutState.from_dict(state.to_dict())
        if self.started_at is None or event.kind == EventKind.STARTED:
            self.started_at = event.at
        text = describe_event(event, state)
        if text is not None:
            self.recent.append(f"{iso(event.at)[11:19]} {text}")
        self.live.update(self.render(), refresh=True)

    def close(self) -> None:
        self.live.update(self.render(), refresh=True)
        self.live.stop()
        if not self.console.is_terminal:  # rich leaves the last frame unterminated in files
            self.console.line()
        head, detail = outcome(self.state, self.steps)
        styles = {"promoted": "bold green", "evaluated": "bold green", "rolled back": "bold red"}
        style = styles.get(head, "bold yellow")
        self.console.print(Text(f"{self.rollout_id} {join(head, detail)}", style=style))
