"""What an A/B test found: the primary metric's lift with its always-valid interval, the two
variants' numbers, the guardrails, the sample-ratio check, the time to decision, and the lift's
interval over the looks. The Markdown and HTML reports draw their A/B sections from
:func:`ab_summary`, which reads only the journal's look events (``data["verdict"]["gates"]``):
the winner gate is the one whose numbers carry ``lift_low`` and ``lift_high``
(:mod:`mlrollout.analysis.winner`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mlrollout.engine.events import LOOK_KINDS, EventKind
from mlrollout.report.console import gate_name, gates_of
from mlrollout.state.base import Event
from mlrollout.units import format_duration

#: The rows of the text table of the interval over the looks (evenly spaced, the last included).
TABLE_ROWS = 12
#: The points of the chart (evenly spaced looks; the decision look is always kept).
CHART_POINTS = 400

DECISIONS = {
    "pass": "the candidate wins",
    "fail": "no worthwhile lift: the baseline stays",
    "continue": "undecided",
    "hold": "not enough data yet",
}


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class ABLook:
    """The winner gate at one look."""

    at: float  # seconds since the split was set
    time: float  # the look's clock time
    outcome: str
    lift: float | None
    low: float | None
    high: float | None
    p_value: float | None
    candidate: float | None
    baseline: float | None
    n_candidate: float | None
    n_baseline: float | None
    reason: str


@dataclass
class ABSummary:
    gate: str
    metric: str
    looks: list[ABLook]
    min_effect: float | None
    alpha: float | None
    #: the first look at which the winner test decided (PASS or FAIL), if any
    decided: ABLook | None
    #: every other gate at the last look: (name, metric, outcome, reason)
    guardrails: list[tuple[str, str, str, str]] = field(default_factory=list)
    srm: tuple[str, str] | None = None  # (outcome, reason) of the sample-ratio check

    @property
    def last(self) -> ABLook:
        return self.looks[-1]

    @property
    def final(self) -> ABLook:
        """The look the result is read at: the decision, else the last look."""
        return self.decided or self.last

    @property
    def decision(self) -> str:
        return DECISIONS.get(self.final.outcome, self.final.outcome)

    def time_to_decision(self) -> str:
        if self.decided is None:
            return f"undecided after {format_duration(self.last.at)}"
        return format_duration(self.decided.at)

    def lift_text(self, look: ABLook | None = None) -> str:
        """``+3.1 % [+1.2 %, +5.0 %]``."""
        look = look or self.final
        return f"{pct(look.lift)} [{pct(look.low)}, {pct(look.high)}]"

    def headline(self) -> str:
        """``conversion +3.1 % [+1.2 %, +5.0 %] (always-valid 95 % interval), p = 0.004: the
        candidate wins (after 3h20m)``."""
        look = self.final
        level = f"always-valid {confidence(self.alpha)} interval" if self.alpha else "interval"
        p = f", p {p_text(look.p_value)}" if look.p_value is not None else ""
        when = f" after {self.time_to_decision()}" if self.decided else ""
        return f"{self.gate} {self.lift_text(look)} ({level}){p}: {self.decision}{when}"

    def variants(self, candidate: str, baseline: str) -> list[tuple[str, str, str, str]]:
        """(variant, role, value, observations) rows, formatted."""
        look = self.final
        return [
            (candidate, "candidate", value(look.candidate), count(look.n_candidate)),
            (baseline, "baseline", value(look.baseline), count(look.n_baseline)),
        ]

    def table(self, rows: int = TABLE_ROWS) -> list[tuple[str, str, str, str, str]]:
        """The interval over the looks, evenly spaced (the decision and the last look kept):
        (time, lift, interval, p, outcome)."""
        return [
            (
                f"+{format_duration(look.at)}",
                pct(look.lift),
                f"[{pct(look.low)}, {pct(look.high)}]",
                p_text(look.p_value) if look.p_value is not None else "-",
                look.outcome,
            )
            for look in self.sampled(rows)
        ]

    def sampled(self, count: int) -> list[ABLook]:
        """At most ``count`` looks, evenly spaced, with the first, the decision and the last."""
        looks = self.looks
        if len(looks) <= count:
            return list(looks)
        step = (len(looks) - 1) / (count - 1)
        keep = {round(i * step) for i in range(count)}
        if self.decided is not None:
            keep.add(looks.index(self.decided))
        return [looks[i] for i in sorted(keep)]


def pct(value: float | None) -> str:
    """A relative lift as the reports print it: ``+3.1 %``, ``−0.4 %``, ``-`` when unknown."""
    if value is None:
        return "-"
    p = abs(value) * 100
    text = f"{p:.2g}" if p < 1 else f"{p:.1f}" if p < 100 else f"{p:.3g}"
    return f"{'−' if value < 0 else '+'}{text} %"


def p_text(p: float | None) -> str:
    if p is None:
        return "-"
    return "< 0.0001" if p < 1e-4 else f"= {p:.1g}" if p < 0.01 else f"= {p:.2g}"


def confidence(alpha: float | None) -> str:
    return "?" if alpha is None else f"{math.floor((1.0 - alpha) * 10000) / 100:g} %"


def value(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def count(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _is_winner(gate: dict[str, Any]) -> bool:
    numbers = gate.get("numbers")
    return isinstance(numbers, dict) and "lift_low" in numbers and "lift_high" in numbers


def ab_summary(events: list[Event]) -> ABSummary | None:
    """The A/B test's result from the journal (None: no look judged a winner gate)."""
    looks: list[ABLook] = []
    name = metric = ""
    min_effect = alpha = None
    last_verdict: dict[str, Any] | None = None
    start: float | None = None
    split_at: float | None = None
    for event in events:
        if start is None:
            start = event.at
        if event.kind == EventKind.SET_TRAFFIC_APPLIED and not looks:
            split_at = event.at
        if event.kind not in LOOK_KINDS:
            continue
        verdict = event.data.get("verdict")
        gate = next((g for g in gates_of(verdict) if _is_winner(g)), None)
        if gate is None:
            if name:  # the gate is there but held (its numbers lack the lift): keep the look
                gate = next((g for g in gates_of(verdict) if gate_name(g) == name), None)
            if gate is None:
                continue
        name = name or gate_name(gate)
        metric = metric or str(gate.get("metric", ""))
        numbers = gate.get("numbers") or {}
        min_effect = _num(numbers.get("min_effect")) if min_effect is None else min_effect
        alpha = _num(numbers.get("alpha")) if alpha is None else alpha
        origin = split_at if split_at is not None else (start or event.at)
        looks.append(
            ABLook(
                at=max(0.0, event.at - origin),
                time=event.at,
                outcome=str(gate.get("outcome", "?")),
                lift=_num(numbers.get("lift")),
                low=_num(numbers.get("lift_low")),
                high=_num(numbers.get("lift_high")),
                p_value=_num(numbers.get("p_value")),
                candidate=_num(numbers.get("candidate")),
                baseline=_num(numbers.get("baseline")),
                n_candidate=_num(numbers.get("n_candidate")),
                n_baseline=_num(numbers.get("n_baseline")),
                reason=str(gate.get("reason", "")),
            )
        )
        last_verdict = verdict
    if not looks:
        return None
    decided = next((look for look in looks if look.outcome in ("pass", "fail")), None)
    summary = ABSummary(name, metric, looks, min_effect, alpha, decided)
    for gate in gates_of(last_verdict):
        gname = gate_name(gate)
        if gname == name:
            continue
        row = (gname, str(gate.get("metric", "")), str(gate.get("outcome", "?")))
        if gname == "sample-ratio":
            summary.srm = (row[2], str(gate.get("reason", "")))
        else:
            summary.guardrails.append((*row, str(gate.get("reason", ""))))
    return summary
