"""What a shadow compared: each gate's shadow and baseline numbers side by side, what the capture
paired, and the requests on which the two models disagreed. The Markdown and HTML reports draw
their shadow sections from :func:`shadow_summary`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlrollout.engine.events import LOOK_KINDS
from mlrollout.plan.timeline import ExecStep
from mlrollout.report.console import format_value, gate_name, gates_of
from mlrollout.state.base import Event


@dataclass
class ShadowSummary:
    #: (gate, metric, shadow's value, baseline's value, bound, outcome), already formatted
    gates: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)
    capture: dict[str, Any] | None = None  # the last look's capture record
    examples: list[tuple[str, str, str]] = field(default_factory=list)  # id, baseline, shadow

    def paired_text(self) -> str | None:
        """``4,210 paired requests, 93.1 % agreeing; unparsed: v6 3, v7 0; ...``"""
        capture = self.capture
        if not capture:
            return None
        paired, agreed = int(capture.get("paired") or 0), int(capture.get("agreed") or 0)
        text = f"{paired:,} paired requests"
        if paired:
            text += f", {100 * agreed / paired:.1f} % agreeing"
        for what in ("unparsed", "unpaired"):
            counts = capture.get(what) or {}
            if any(counts.values()):
                text += f"; {what}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
        if capture.get("error"):
            text += f"; the capture could not be read: {capture['error']}"
        return text


def is_shadow(steps: list[ExecStep]) -> bool:
    return any(step.phase == "shadow" for step in steps)


def shadow_summary(events: list[Event], steps: list[ExecStep]) -> ShadowSummary | None:
    """The shadow's comparison at its last look (None when the rollout is no shadow, or no look
    judged it yet)."""
    if not is_shadow(steps):
        return None
    shadow_steps = {s.index for s in steps if s.phase == "shadow"}
    looks = [e for e in events if e.kind in LOOK_KINDS and e.data.get("step") in shadow_steps]
    if not looks:
        return None
    last = looks[-1].data
    summary = ShadowSummary(capture=last.get("capture"))
    for gate in gates_of(last.get("verdict")):
        metric, numbers = str(gate.get("metric", "")), gate.get("numbers") or {}
        summary.gates.append(
            (
                gate_name(gate),
                metric,
                format_value(metric, numbers.get("candidate")),
                format_value(metric, numbers.get("baseline")),
                format_value(metric, numbers.get("threshold")),
                str(gate.get("outcome", "?")),
            )
        )
    for example in (summary.capture or {}).get("examples") or []:
        summary.examples.append(
            (
                str(example.get("inference_id", "")),
                str(example.get("baseline")),
                str(example.get("candidate")),
            )
        )
    return summary
