"""What both decision rules measure and how they word it: a gate's parsed criteria, the gate's
metric in one window (event counts or an estimate with bounds), and the shared formatting.

- :class:`Criteria`: a gate's ``max``/``min`` and ``vs_baseline`` margin parsed into the metric's
  unit once (:class:`~mlrollout.analysis.gateset.GateSet` does it when it is built), the worse
  direction, and how many criteria share the gate's alpha.
- :func:`measure`: the metric in one window: :class:`Counts` (a rate with a binomial model:
  ``error_rate``, custom metrics whose total and count are event counts), an :class:`Estimate`
  with order-statistic bounds (a latency quantile read from a histogram), a bare point
  (a provider percentile, a custom mean that is not a rate: no confidence bound, the weaker
  guarantee of :data:`PERCENTILE_NOTE` / :data:`MEAN_NOTE`), or why there is none (a string).
- :func:`wilson`: the Wilson score interval of a rate.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from mlrollout.analysis.verdict import Numbers, Outcome
from mlrollout.contracts import LatencyHistogram, Window
from mlrollout.plan.model import (
    LATENCY_METRICS,
    QUALITY_METRICS,
    Gate,
    Margin,
    parse_margin,
    parse_metric_value,
)
from mlrollout.units import format_latency, format_rate

#: Why a provider percentile's verdict is a weaker guarantee (it says so in its reason).
PERCENTILE_NOTE = "a provider percentile gives no confidence bound: a weaker guarantee"
#: Why a custom mean's verdict is a weaker guarantee.
MEAN_NOTE = "a mean that is not a rate gives no confidence bound: a weaker guarantee"

Kind = Literal["rate", "latency", "value"]
Direction = Literal["increase", "decrease"]


@dataclass(frozen=True)
class Criteria:
    """A gate's bounds and margin in the metric's unit, parsed once.

    ``max``/``min`` are the absolute bounds, ``margin`` the parsed ``vs_baseline`` (``None``:
    not set), ``worse`` the direction that is a regression, and ``split`` how many criteria share
    the gate's alpha evenly (at least 1).
    """

    gate: Gate
    max: float | None
    min: float | None
    margin: Margin | None
    worse: Direction
    split: int

    @classmethod
    def of(cls, gate: Gate) -> Criteria:
        """Parse ``gate`` (raises ``ValueError`` on a bound or margin that does not parse)."""
        comparison = gate.vs_baseline
        return cls(
            gate=gate,
            max=None if gate.max is None else parse_metric_value(gate.metric, gate.max),
            min=None if gate.min is None else parse_metric_value(gate.metric, gate.min),
            margin=None if comparison is None else parse_margin(gate.metric, comparison.raw),
            worse=gate.worse_when,
            split=max(1, sum(x is not None for x in (gate.max, gate.min, comparison))),
        )


@dataclass(frozen=True)
class Counts:
    """``events`` out of ``trials``: a rate with a binomial model."""

    events: float
    trials: float

    @property
    def rate(self) -> float:
        return self.events / self.trials


@dataclass(frozen=True)
class Estimate:
    """A value with confidence bounds; ``bounded=False`` is a bare point (lower = upper = value)."""

    value: float
    lower: float
    upper: float
    bounded: bool = True
    note: str = ""
    needed: int | None = None  # requests needed before an upper bound exists


@dataclass
class Result:
    """One criterion's (or a whole gate's) outcome, before it becomes a ``GateVerdict``."""

    outcome: Outcome
    reason: str
    numbers: Numbers = field(default_factory=dict)
    error: str | None = None


def wilson(c: Counts, z: float) -> Estimate:
    """The Wilson score interval of ``c``'s rate at the normal quantile ``z``."""
    n, p = c.trials, c.rate
    centre, denom = p + z * z / (2 * n), 1 + z * z / n
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Estimate(p, max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom))


def _quantile(hist: LatencyHistogram, q: float, z: float, label: str) -> Estimate:
    """Order-statistic bounds for the ``q`` quantile: ranks ``n q ± (z sqrt(n q (1-q)) + 1)``."""
    n = hist.total
    spread = z * math.sqrt(n * q * (1 - q)) + 1.0
    low_rank, high_rank = n * q - spread, n * q + spread
    lower = hist.value_at_rank(low_rank) if low_rank >= 0 else 0.0
    if high_rank < n - hist.counts[-1]:
        return Estimate(hist.quantile(q), lower, hist.value_at_rank(high_rank))
    if high_rank < n:
        note = f"{label} may lie beyond the histogram's last bucket"
        return Estimate(hist.quantile(q), lower, math.inf, note=note)
    # Smallest n with n q + z sqrt(n q (1-q)) + 1 < n, solved as a quadratic in sqrt(n).
    s = z * math.sqrt(q * (1 - q))
    needed = math.floor(((s + math.sqrt(s * s + 4 * (1 - q))) / (2 * (1 - q))) ** 2) + 1
    note = f"too few requests to bound {label} from above: {needed} needed"
    return Estimate(hist.quantile(q), lower, math.inf, note=note, needed=needed)


def measure(gate: Gate, window: Window, who: str, z: float) -> Counts | Estimate | str:
    """The gate's metric in one window, or why there is none (a no-data reason). ``z`` sets the
    bounds of a latency quantile read from a histogram."""
    if gate.metric == "error_rate":
        if window.errors is None or not window.requests:
            return f"no error count for the {who}"
        if not 0 <= window.errors <= window.requests:
            return f"the {who}'s errors ({window.errors}) exceed its requests ({window.requests})"
        return Counts(window.errors, window.requests)
    if gate.metric in LATENCY_METRICS:
        q = LATENCY_METRICS[gate.metric]
        if window.latency is not None and window.latency.total > 0:
            return _quantile(window.latency, q, z, gate_label(gate))
        point = next((v for k, v in window.latency_percentiles.items() if abs(k - q) < 1e-9), None)
        if point is None or not math.isfinite(point):
            return f"no {gate_label(gate)} data for the {who}"
        return Estimate(point, point, point, bounded=False, note=PERCENTILE_NOTE)
    value = window.custom.get(gate.name)
    if value is None or not value.count > 0 or not math.isfinite(value.mean):
        return f"no value of {gate.name!r} for the {who} (its query returned no total and count)"
    total, count = float(value.total), float(value.count)
    if total.is_integer() and count.is_integer() and 0 <= total <= count:
        return Counts(total, count)
    return Estimate(value.mean, value.mean, value.mean, bounded=False, note=MEAN_NOTE)


def custom_counts(gate: Gate, candidate: Window, baseline: Window | None) -> str:
    """What a ``custom`` gate's value is made of, in words as plain as the error gate's: events
    counted per request (``conversion counted on 500 of 20,000 candidate requests vs 700 of
    20,000 baseline requests``) or a total over requests (``revenue 2.5 per request (5,000.5 in
    total over 2,000 candidate requests) vs ...``). Empty when the candidate has no value (the
    reason already says so)."""
    parts, rates = [], True
    for who, window in (("candidate", candidate), ("baseline", baseline)):
        value = window.custom.get(gate.name) if window is not None else None
        if value is None or not value.count > 0 or not math.isfinite(value.mean):
            if who == "candidate":
                return ""
            continue
        total, count = float(value.total), float(value.count)
        if total.is_integer() and count.is_integer() and 0 <= total <= count:
            parts.append(f"{total:,.0f} of {count:,.0f} {who} requests")
        else:
            rates = False
            parts.append(
                f"{_amount(value.mean)} per request ({_amount(total)} in total over "
                f"{count:,.0f} {who} requests)"
            )
    return f"{gate.name} {'counted on ' if rates else ''}{' vs '.join(parts)}"


def _amount(v: float) -> str:
    """A total or a mean as the custom wording prints it: ``7,000.25``, ``2.5``, ``0.0312``."""
    if abs(v) >= 1000:
        return f"{v:,.2f}".rstrip("0").rstrip(".")
    return f"{v:.4g}"


def measure_both(
    gate: Gate, candidate: Window, baseline: Window, z: float
) -> tuple[Counts | Estimate, Counts | Estimate] | str:
    """The gate's metric in the candidate's and the baseline's window, or why one of them has none
    (the candidate's reason first)."""
    mc = measure(gate, candidate, "candidate", z)
    mb = measure(gate, baseline, "baseline", z)
    if isinstance(mc, str):
        return mc
    if isinstance(mb, str):
        return mb
    return mc, mb


def as_estimate(m: Counts | Estimate, z: float) -> Estimate:
    """``m`` with bounds: a rate's Wilson interval at ``z``, an estimate as it is."""
    return wilson(m, z) if isinstance(m, Counts) else m


def kind_of(gate: Gate, m: Counts | Estimate) -> Kind:
    """How the gate's values read: a latency, a rate (event counts) or a bare value."""
    if gate.metric in LATENCY_METRICS:
        return "latency"
    return "rate" if isinstance(m, Counts) else "value"


# -------------------------------------------------------------------------------- formatting


def gate_label(gate: Gate) -> str:
    """What the reasons call the gate's metric: ``error rate``, ``p99 latency``..."""
    if gate.metric == "error_rate":
        return "error rate"
    if gate.metric in LATENCY_METRICS:
        return f"{gate.metric.removeprefix('latency_')} latency"
    if gate.metric in QUALITY_METRICS:
        return _QUALITY_LABELS[gate.metric](gate.positive)
    return gate.metric if gate.metric == "requests" else gate.name


#: The quality gates' labels, from the positive class (``None``: a macro average).
_QUALITY_LABELS: dict[str, Callable[[str | None], str]] = {
    "accuracy": lambda _: "accuracy",
    "feedback": lambda _: "positive feedback",
    "precision": lambda k: "macro precision" if k is None else f"precision of {k!r}",
    "recall": lambda k: "macro recall" if k is None else f"recall of {k!r}",
    "f1": lambda k: "macro F1" if k is None else f"F1 of {k!r}",
}


def formatter(kind: Kind) -> Callable[[float], str]:
    if kind == "rate":
        return format_rate
    if kind == "latency":
        return format_latency
    return lambda v: f"{v:.4g}"


def signed(kind: Kind, amount: float) -> str:
    """An absolute difference in the metric's unit, with its sign: ``+0.5pp``, ``-20ms``."""
    sign = "-" if amount < 0 else "+"
    if kind == "rate":
        return f"{sign}{abs(amount) * 100:.3g}pp"
    if kind == "latency":
        return f"{sign}{format_latency(abs(amount))}"
    return f"{sign}{abs(amount):.4g}"


def describe_margin(kind: Kind, margin: Margin, worse: Direction) -> str:
    """The margin as the reasons say it: ``+25%``, ``+0.5pp``, ``-10ms``."""
    sign = "+" if worse == "increase" else "-"
    if margin.kind == "relative":
        return f"{sign}{margin.amount * 100:g}%"
    return sign + signed(kind, margin.amount)[1:]


@functools.lru_cache(maxsize=256)
def confidence(alpha: float) -> str:
    """``1 - alpha`` in percent, rounded down (never overstated): ``'99.87%'``."""
    return f"{math.floor((1.0 - alpha) * 10000) / 100:g}%"


def nats(value: float) -> str:
    """Evidence (a log likelihood ratio) as the reasons print it: ``44.0``, ``∞``."""
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.1f}"
