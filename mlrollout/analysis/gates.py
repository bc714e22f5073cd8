"""Decision rules: one gate at one look, candidate and baseline windows in, a GateVerdict out.

The rule sits behind one seam, :class:`DecisionRule`, so that sequential tests can replace the v1
rule without touching the engine. :class:`FixedHorizonBonferroni` (v1) tests each look at
``alpha_per_look`` (the rollout's alpha split by Bonferroni, see :mod:`mlrollout.analysis.engine`):

- **No data never passes.** A failed query (``Window.error``) is an error measurement: HOLD with
  the query's message. Fewer requests than ``min_requests`` (or none) in the candidate, or in the
  baseline when the gate compares with it: HOLD, saying how many more requests are needed.
- **Absolute bounds** (``max``/``min``) on a confidence interval of the candidate, each side at
  ``1 - alpha_per_look``: Wilson score bounds for rates (``error_rate``, custom metrics whose
  total and count are event counts); distribution-free order-statistic bounds (ranks
  ``n q ± z sqrt(n q (1-q))``) for latency quantiles read from a histogram. FAIL when the whole
  interval is beyond the bound, PASS when it is all within, else CONTINUE. A provider percentile
  or a custom mean that is not a rate has no interval: its point value is compared (FAIL/PASS),
  and the reason says that the guarantee is weaker.
- **vs_baseline on rates**: a Farrington-Manning score test of the margin-shifted null
  ``p_c = p_b (1+m)`` (relative) or ``p_c = p_b + m`` (absolute), with the variance at the
  restricted maximum-likelihood estimate (never zero when the margin is positive). Evidence above
  the limit: FAIL; evidence below (non-inferiority shown): PASS; else CONTINUE. ``max_decrease``
  mirrors it. When neither variant saw a single event, a relative margin has nothing to scale
  (0 × 1.25 = 0): the gate passes, as there is nothing to regress from; bound rare events with an
  absolute margin (``0.1pp``) or a ``max`` instead.
- **vs_baseline on latency** (and non-rate custom means): both intervals at ``alpha_per_look/2``;
  FAIL when the candidate's lower bound is beyond the limit computed from the baseline's upper
  bound, PASS when the candidate's upper bound is within the limit from the baseline's lower bound.
- A gate with several criteria (``max`` and ``vs_baseline``...) splits ``alpha_per_look`` evenly
  between them; its outcome is the worst of theirs.
- **requests**: the candidate's count, exactly (no statistics): above ``max`` FAILs at once, below
  ``min`` (or ``min_requests``) HOLDs while traffic accrues, otherwise PASS. ``vs_baseline`` on
  requests is not a meaningful comparison (the traffic split decides it): HOLD with an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal, Protocol

from mlrollout.analysis.verdict import GateVerdict, Numbers, Outcome
from mlrollout.contracts import LatencyHistogram, Window
from mlrollout.plan.model import LATENCY_METRICS, Gate, Margin
from mlrollout.units import format_latency, format_rate

_NORMAL = NormalDist()
_PROVIDER_NOTE = "a provider percentile gives no confidence bound: a weaker guarantee"
_MEAN_NOTE = "a mean that is not a rate gives no confidence bound: a weaker guarantee"

Kind = Literal["rate", "latency", "value"]
Direction = Literal["increase", "decrease"]


@dataclass(frozen=True)
class LookContext:
    """What a rule needs besides the windows: the error budgets and the data minimum.

    ``alpha_per_look`` is v1's budget for one fixed-horizon test at one look; ``alpha_test`` is
    the budget of one always-valid test over a whole stage (``None``: use ``alpha_per_look``).
    ``look`` and ``horizon`` place the look in its stage; the default rule calibrates its
    rollback boundaries with them (unknown: Ville's boundary, valid for any number of looks).
    """

    alpha_per_look: float
    min_requests: int
    alpha_test: float | None = None
    look: int = 0  # this look's number in its stage (1-based; 0: unknown)
    horizon: int | None = None  # the most looks the stage can have (None: no planned end)

    def z(self, split: int = 1) -> float:
        """The one-sided critical value at ``alpha_per_look / split``."""
        return _NORMAL.inv_cdf(1.0 - self.alpha_per_look / split)

    @property
    def confidence(self) -> str:
        """``1 - alpha_per_look`` in percent, rounded down (never overstated): ``'99.87%'``."""
        return f"{math.floor((1.0 - self.alpha_per_look) * 10000) / 100:g}%"


class DecisionRule(Protocol):
    """The seam: how one gate decides at one look. Must not raise on bad data."""

    def evaluate(
        self, gate: Gate, candidate: Window, baseline: Window, ctx: LookContext
    ) -> GateVerdict: ...


# ---------------------------------------------------------------------------------- measures


@dataclass(frozen=True)
class _Counts:
    """``events`` out of ``trials``: a rate with a binomial model."""

    events: float
    trials: float

    @property
    def rate(self) -> float:
        return self.events / self.trials


@dataclass(frozen=True)
class _Estimate:
    """A value with confidence bounds; ``bounded=False`` is a bare point (lower = upper = value)."""

    value: float
    lower: float
    upper: float
    bounded: bool = True
    note: str = ""
    needed: int | None = None  # requests needed before an upper bound exists


@dataclass
class _Result:
    outcome: Outcome
    reason: str
    numbers: Numbers = field(default_factory=dict)
    error: str | None = None


def _wilson(c: _Counts, z: float) -> _Estimate:
    n, p = c.trials, c.rate
    centre, denom = p + z * z / (2 * n), 1 + z * z / n
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return _Estimate(p, max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom))


def _quantile(hist: LatencyHistogram, q: float, z: float, label: str) -> _Estimate:
    """Order-statistic bounds for the ``q`` quantile: ranks ``n q ± (z sqrt(n q (1-q)) + 1)``."""
    n = hist.total
    spread = z * math.sqrt(n * q * (1 - q)) + 1.0
    low_rank, high_rank = n * q - spread, n * q + spread
    lower = hist.value_at_rank(low_rank) if low_rank >= 0 else 0.0
    if high_rank < n - hist.counts[-1]:
        return _Estimate(hist.quantile(q), lower, hist.value_at_rank(high_rank))
    if high_rank < n:
        note = f"{label} may lie beyond the histogram's last bucket"
        return _Estimate(hist.quantile(q), lower, math.inf, note=note)
    # Smallest n with n q + z sqrt(n q (1-q)) + 1 < n, solved as a quadratic in sqrt(n).
    s = z * math.sqrt(q * (1 - q))
    needed = math.floor(((s + math.sqrt(s * s + 4 * (1 - q))) / (2 * (1 - q))) ** 2) + 1
    note = f"too few requests to bound {label} from above: {needed} needed"
    return _Estimate(hist.quantile(q), lower, math.inf, note=note, needed=needed)


def _measure(gate: Gate, window: Window, who: str, z: float) -> _Counts | _Estimate | str:
    """The gate's metric in one window, or why there is none (a no-data reason)."""
    if gate.metric == "error_rate":
        if window.errors is None or not window.requests:
            return f"no error count for the {who}"
        if not 0 <= window.errors <= window.requests:
            return f"the {who}'s errors ({window.errors}) exceed its requests ({window.requests})"
        return _Counts(window.errors, window.requests)
    if gate.metric in LATENCY_METRICS:
        q = LATENCY_METRICS[gate.metric]
        if window.latency is not None and window.latency.total > 0:
            return _quantile(window.latency, q, z, _label(gate))
        point = next((v for k, v in window.latency_percentiles.items() if abs(k - q) < 1e-9), None)
        if point is None or not math.isfinite(point):
            return f"no {_label(gate)} data for the {who}"
        return _Estimate(point, point, point, bounded=False, note=_PROVIDER_NOTE)
    value = window.custom.get(gate.name)
    if value is None or not value.count > 0 or not math.isfinite(value.mean):
        return f"no value of {gate.name!r} for the {who}"
    total, count = float(value.total), float(value.count)
    if total.is_integer() and count.is_integer() and 0 <= total <= count:
        return _Counts(total, count)
    return _Estimate(value.mean, value.mean, value.mean, bounded=False, note=_MEAN_NOTE)


def _as_estimate(m: _Counts | _Estimate, z: float) -> _Estimate:
    return _wilson(m, z) if isinstance(m, _Counts) else m


# -------------------------------------------------------------------------------- formatting


def _label(gate: Gate) -> str:
    if gate.metric == "error_rate":
        return "error rate"
    if gate.metric in LATENCY_METRICS:
        return f"{gate.metric.removeprefix('latency_')} latency"
    return gate.metric if gate.metric == "requests" else gate.name


def _formatter(kind: Kind) -> Callable[[float], str]:
    if kind == "rate":
        return format_rate
    if kind == "latency":
        return format_latency
    return lambda v: f"{v:.4g}"


def _signed(kind: Kind, amount: float) -> str:
    """An absolute difference in the metric's unit, with its sign: ``+0.5pp``, ``-20ms``."""
    sign = "-" if amount < 0 else "+"
    if kind == "rate":
        return f"{sign}{abs(amount) * 100:.3g}pp"
    if kind == "latency":
        return f"{sign}{format_latency(abs(amount))}"
    return f"{sign}{abs(amount):.4g}"


def _change(kind: Kind, margin: Margin, candidate: float, baseline: float) -> str:
    """`` (+110%)`` or `` (+0.5pp)``; empty for a relative change from 0."""
    if margin.kind == "absolute":
        return f" ({_signed(kind, candidate - baseline)})"
    if baseline <= 0:
        return ""
    change = (candidate / baseline - 1) * 100
    return f" ({change:+.0f}%)" if abs(change) >= 100 else f" ({change:+.3g}%)"


def _effect(margin: Margin, candidate: float, baseline: float) -> float | None:
    """The difference (absolute margin) or the relative change (relative margin)."""
    if margin.kind == "absolute":
        return candidate - baseline
    return candidate / baseline - 1 if baseline > 0 else None


def _margin_text(kind: Kind, margin: Margin, worse: Direction) -> str:
    sign = "+" if worse == "increase" else "-"
    if margin.kind == "relative":
        return f"{sign}{margin.amount * 100:g}%"
    return sign + _signed(kind, margin.amount)[1:]


def _bounds(est: _Estimate, fmt: Callable[[float], str]) -> str:
    if not est.bounded:
        return ""
    high = fmt(est.upper) if math.isfinite(est.upper) else "unbounded"
    return f" (bounds {fmt(est.lower)}–{high})"


def _basis(conf: str, *estimates: _Estimate) -> str:
    """``at 99.9% confidence`` plus any caveat (a point value, a missing upper bound)."""
    text = f" at {conf} confidence" if all(e.bounded for e in estimates) else ""
    notes = list(dict.fromkeys(e.note for e in estimates if e.note))
    return text + "".join(f" ({note})" for note in notes)


# ------------------------------------------------------------------------------------ checks

_VERBS = {
    Outcome.FAIL: "beyond",
    Outcome.PASS: "within",
    Outcome.CONTINUE: "not yet distinguishable from",
}


def _bound_check(
    label: str, kind: Kind, est: _Estimate, bound: float, is_max: bool, conf: str
) -> _Result:
    fmt = _formatter(kind)
    if is_max:
        fail, ok, words = est.lower > bound, est.upper <= bound, ("above", "at or under")
    else:
        fail, ok, words = est.upper < bound, est.lower >= bound, ("below", "at or over")
    outcome = Outcome.FAIL if fail else Outcome.PASS if ok else Outcome.CONTINUE
    where = words[0] if fail else words[1] if ok else "not yet clear of"
    name = "maximum" if is_max else "minimum"
    reason = (
        f"candidate {label} {fmt(est.value)}{_bounds(est, fmt)}: "
        f"{where} the {fmt(bound)} {name}{_basis(conf, est)}"
    )
    numbers: Numbers = {
        "candidate": est.value,
        "estimate": est.value,
        "lower": est.lower,
        "upper": est.upper,
        "threshold": bound,
    }
    if est.needed is not None and outcome is Outcome.CONTINUE:
        numbers["needed_requests"] = est.needed
    return _Result(outcome, reason, numbers)


def _fm_statistic(c: _Counts, b: _Counts, offset: float, slope: float) -> float:
    """Farrington-Manning z for ``p_c - (offset + slope p_b)``, variance at the restricted MLE
    (the most likely rates on the null's boundary ``p_c = offset + slope p_b``)."""
    x1, n1, x2, n2 = c.events, c.trials, b.events, b.trials
    left, right = max(0.0, -offset / slope), min(1.0, (1.0 - offset) / slope)

    def score(p: float) -> float:  # d loglik / d p_b; decreasing (the loglik is concave)
        q, s = offset + slope * p, 0.0
        s += x1 * slope / q if x1 else 0.0
        s -= (n1 - x1) * slope / (1 - q) if n1 > x1 else 0.0
        s += x2 / p if x2 else 0.0
        s -= (n2 - x2) / (1 - p) if n2 > x2 else 0.0
        return s

    if offset == 0:  # a relative margin: the score equation is a quadratic (smaller root)
        qa, qb, qc = slope * (n1 + n2), -(slope * (n1 + x2) + x1 + n2), x1 + x2
        p2 = (-qb - math.sqrt(max(0.0, qb * qb - 4 * qa * qc))) / (2 * qa)
    else:  # bisection; 45 halvings never reach a domain edge in floating point
        for _ in range(45):
            mid = (left + right) / 2
            left, right = (mid, right) if score(mid) > 0 else (left, mid)
        p2 = (left + right) / 2
    p1 = offset + slope * p2
    variance = p1 * (1 - p1) / n1 + slope * slope * p2 * (1 - p2) / n2
    diff = c.rate - offset - slope * b.rate
    if variance <= 1e-300:  # continuity guard: both rates on a domain edge
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / math.sqrt(variance)


def _rates_vs_baseline(
    label: str,
    kind: Kind,
    c: _Counts,
    b: _Counts,
    margin: Margin,
    worse: Direction,
    z: float,
    conf: str,
) -> _Result:
    sign = 1.0 if worse == "increase" else -1.0
    offset, slope = (
        (0.0, 1 + sign * margin.amount)
        if margin.kind == "relative"
        else (sign * margin.amount, 1.0)
    )
    limit = min(1.0, max(0.0, offset + slope * b.rate))
    fmt, est = _formatter(kind), _wilson(c, z)
    numbers: Numbers = {
        "candidate": c.rate,
        "baseline": b.rate,
        "estimate": _effect(margin, c.rate, b.rate),
        "lower": est.lower,
        "upper": est.upper,
        "threshold": limit,
        "critical": z,
    }
    head = (
        f"candidate {label} {fmt(c.rate)} vs baseline {fmt(b.rate)}"
        f"{_change(kind, margin, c.rate, b.rate)}"
    )
    margin_text = _margin_text(kind, margin, worse)
    trivial = offset >= 1 if worse == "increase" else offset + slope <= 0
    if trivial:
        return _Result(Outcome.PASS, f"{head}: the {margin_text} margin allows any rate", numbers)
    if offset == 0 and c.events == 0 and b.events == 0:
        reason = (
            f"{head}: neither variant had any event in {c.trials:.0f} and {b.trials:.0f} requests, "
            f"nothing to regress from (a relative margin cannot tell rates this small apart)"
        )
        return _Result(Outcome.PASS, reason, numbers)
    stat = sign * _fm_statistic(c, b, offset, slope)  # > 0: evidence of the worse direction
    numbers["statistic"] = stat
    outcome = Outcome.FAIL if stat > z else Outcome.PASS if stat < -z else Outcome.CONTINUE
    reason = (
        f"{head}: {_VERBS[outcome]} the {margin_text} margin (limit {fmt(limit)}) "
        f"at {conf} confidence"
    )
    return _Result(outcome, reason, numbers)


def _intervals_vs_baseline(
    label: str,
    kind: Kind,
    c: _Estimate,
    b: _Estimate,
    margin: Margin,
    worse: Direction,
    conf: str,
) -> _Result:
    sign, m = (1.0 if worse == "increase" else -1.0), margin.amount

    def limit(x: float) -> float:
        return x * (1 + sign * m) if margin.kind == "relative" else x + sign * m

    if worse == "increase":
        fail, ok = c.lower > limit(b.upper), c.upper <= limit(b.lower)
    else:
        fail, ok = c.upper < limit(b.lower), c.lower >= limit(b.upper)
    outcome = Outcome.FAIL if fail else Outcome.PASS if ok else Outcome.CONTINUE
    fmt = _formatter(kind)
    reason = (
        f"candidate {label} {fmt(c.value)}{_bounds(c, fmt)} vs baseline {fmt(b.value)}"
        f"{_bounds(b, fmt)}{_change(kind, margin, c.value, b.value)}: {_VERBS[outcome]} the "
        f"{_margin_text(kind, margin, worse)} margin (limit {fmt(limit(b.value))})"
        f"{_basis(conf, c, b)}"
    )
    numbers: Numbers = {
        "candidate": c.value,
        "baseline": b.value,
        "estimate": _effect(margin, c.value, b.value),
        "lower": c.lower,
        "upper": c.upper,
        "baseline_lower": b.lower,
        "baseline_upper": b.upper,
        "threshold": limit(b.value),
    }
    if c.needed is not None and outcome is Outcome.CONTINUE:
        numbers["needed_requests"] = c.needed
    return _Result(outcome, reason, numbers)


# -------------------------------------------------------------------------------- data checks


def _query_error(variants: list[tuple[str, Window]]) -> _Result | None:
    for who, window in variants:
        if window.error:
            reason = f"metrics query failed for the {who}: {window.error} (no decision)"
            return _Result(Outcome.HOLD, reason, {}, error=window.error)
    return None


def _short(variants: list[tuple[str, Window]], need: int) -> _Result | None:
    parts, needed = [], 0
    for who, window in variants:
        if window.requests is None:
            parts.append(f"no data for the {who}")
            needed = max(needed, need)
        elif window.requests < need:
            parts.append(f"{who} has {window.requests} of {need} requests")
            needed = max(needed, need - window.requests)
    if not parts:
        return None
    reason = f"{'; '.join(parts)} ({needed} more needed before any decision)"
    return _Result(Outcome.HOLD, reason, {"needed_requests": needed})


def _requests_gate(gate: Gate, window: Window, need: int) -> _Result:
    count = window.requests
    if count is None:
        return _Result(Outcome.HOLD, "no data for the candidate", {"needed_requests": need})
    numbers: Numbers = {"candidate": count, "estimate": count, "lower": count, "upper": count}
    high, low = gate.max_value, gate.min_value
    if high is not None and count > high:
        numbers["threshold"] = high
        reason = f"candidate served {count} requests: above the {high:.0f} maximum"
        return _Result(Outcome.FAIL, reason, numbers)
    floor = max(need, math.ceil(low) if low is not None else 0)
    if count < floor:
        numbers |= {"threshold": low, "needed_requests": floor - count}
        reason = f"candidate has {count} of {floor} requests ({floor - count} more needed)"
        return _Result(Outcome.HOLD, reason, numbers)
    numbers["threshold"] = high if high is not None else low
    return _Result(Outcome.PASS, f"candidate served {count} requests: within bounds", numbers)


# -------------------------------------------------------------------------------------- rule


class RuleBase:
    """What every rule shares: the checks before any statistics (a failed query, a ``requests``
    gate, data short of ``min_requests``) and the assembly of the :class:`GateVerdict`.
    Subclasses decide in :meth:`_judge`, which only sees windows with enough data."""

    def evaluate(
        self, gate: Gate, candidate: Window, baseline: Window, ctx: LookContext
    ) -> GateVerdict:
        result = self._evaluate(gate, candidate, baseline, ctx)
        if candidate.requests is not None:
            result.numbers.setdefault("candidate_requests", candidate.requests)
        if gate.vs_baseline is not None and baseline.requests is not None:
            result.numbers.setdefault("baseline_requests", baseline.requests)
        return GateVerdict(
            gate.name,
            gate.metric,
            result.outcome,
            result.reason,
            result.numbers,
            gate.dry_run,
            result.error,
        )

    def _evaluate(
        self, gate: Gate, candidate: Window, baseline: Window, ctx: LookContext
    ) -> _Result:
        variants = [("candidate", candidate)]
        if gate.vs_baseline is not None:
            variants.append(("baseline", baseline))
        need = max(1, ctx.min_requests)
        problem = _query_error(variants)
        if problem is None and gate.metric == "requests":
            if gate.vs_baseline is not None:
                message = "requests cannot be compared with the baseline (the split decides them)"
                return _Result(Outcome.HOLD, message, {}, error=message)
            return _requests_gate(gate, candidate, need)
        problem = problem or _short(variants, need)
        if problem is not None:
            return problem
        return self._judge(gate, candidate, baseline, ctx)

    def _judge(self, gate: Gate, candidate: Window, baseline: Window, ctx: LookContext) -> _Result:
        raise NotImplementedError


class FixedHorizonBonferroni(RuleBase):
    """v1: every look is a fixed-horizon test at ``ctx.alpha_per_look`` (see the module notes)."""

    def _judge(self, gate: Gate, candidate: Window, baseline: Window, ctx: LookContext) -> _Result:
        label, conf, checks = _label(gate), ctx.confidence, []
        # A gate with several criteria (max, min, vs_baseline) splits its share of alpha.
        split = max(1, sum(x is not None for x in (gate.max, gate.min, gate.vs_baseline)))
        z = ctx.z(split)
        for bound, is_max in ((gate.max_value, True), (gate.min_value, False)):
            if bound is None:
                continue
            m = _measure(gate, candidate, "candidate", z)
            if isinstance(m, str):
                return _Result(Outcome.HOLD, m)
            checks.append(
                _bound_check(label, _kind(gate, m), _as_estimate(m, z), bound, is_max, conf)
            )
        margin = gate.margin
        if margin is not None:
            z2 = ctx.z(2 * split)  # two intervals, one statement
            mc = _measure(gate, candidate, "candidate", z2)
            mb = _measure(gate, baseline, "baseline", z2)
            if isinstance(mc, str) or isinstance(mb, str):
                return _Result(Outcome.HOLD, mc if isinstance(mc, str) else str(mb))
            kind = _kind(gate, mc)
            if isinstance(mc, _Counts) and isinstance(mb, _Counts):
                checks.append(
                    _rates_vs_baseline(label, kind, mc, mb, margin, gate.worse_when, z, conf)
                )
            else:
                checks.append(
                    _intervals_vs_baseline(
                        label,
                        kind,
                        _as_estimate(mc, z2),
                        _as_estimate(mb, z2),
                        margin,
                        gate.worse_when,
                        conf,
                    )
                )
        if not checks:
            return _Result(Outcome.PASS, "no bound set: the gate only records the metric")
        worst = max(checks, key=lambda r: r.outcome)
        numbers: Numbers = {}
        for r in [*checks, worst]:
            numbers.update(r.numbers)
        return _Result(worst.outcome, "; ".join(r.reason for r in checks), numbers)


def _kind(gate: Gate, measure: _Counts | _Estimate) -> Kind:
    if gate.metric in LATENCY_METRICS:
        return "latency"
    return "rate" if isinstance(measure, _Counts) else "value"
