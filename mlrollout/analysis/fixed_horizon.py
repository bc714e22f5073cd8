"""v1's decision rule, :class:`FixedHorizonBonferroni`: every look a fixed-horizon test.

It tests each look at ``alpha_per_look`` (the rollout's alpha split by Bonferroni over deciding
gates and planned looks, see :mod:`mlrollout.analysis.gateset`). The checks before any statistics
(no data, a failed query, ``requests`` gates) are :class:`~mlrollout.analysis.rule.RuleBase`'s.

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
"""

from __future__ import annotations

import math
from collections.abc import Callable

from mlrollout.analysis.measures import (
    Counts,
    Criteria,
    Direction,
    Estimate,
    Kind,
    Result,
    as_estimate,
    describe_margin,
    formatter,
    gate_label,
    kind_of,
    measure,
    measure_both,
    signed,
    wilson,
)
from mlrollout.analysis.rule import LookContext, RuleBase, combine
from mlrollout.analysis.verdict import Numbers, Outcome
from mlrollout.contracts import Window
from mlrollout.plan.model import Margin


def _change(kind: Kind, margin: Margin, candidate: float, baseline: float) -> str:
    """`` (+110%)`` or `` (+0.5pp)``; empty for a relative change from 0."""
    if margin.kind == "absolute":
        return f" ({signed(kind, candidate - baseline)})"
    if baseline <= 0:
        return ""
    change = (candidate / baseline - 1) * 100
    return f" ({change:+.0f}%)" if abs(change) >= 100 else f" ({change:+.3g}%)"


def _effect(margin: Margin, candidate: float, baseline: float) -> float | None:
    """The difference (absolute margin) or the relative change (relative margin)."""
    if margin.kind == "absolute":
        return candidate - baseline
    return candidate / baseline - 1 if baseline > 0 else None


def _bounds(est: Estimate, fmt: Callable[[float], str]) -> str:
    if not est.bounded:
        return ""
    high = fmt(est.upper) if math.isfinite(est.upper) else "unbounded"
    return f" (bounds {fmt(est.lower)}–{high})"


def _basis(conf: str, *estimates: Estimate) -> str:
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
    label: str, kind: Kind, est: Estimate, bound: float, is_max: bool, conf: str
) -> Result:
    fmt = formatter(kind)
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
    return Result(outcome, reason, numbers)


def _fm_statistic(c: Counts, b: Counts, offset: float, slope: float) -> float:
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
    c: Counts,
    b: Counts,
    margin: Margin,
    worse: Direction,
    z: float,
    conf: str,
) -> Result:
    sign = 1.0 if worse == "increase" else -1.0
    offset, slope = (
        (0.0, 1 + sign * margin.amount)
        if margin.kind == "relative"
        else (sign * margin.amount, 1.0)
    )
    limit = min(1.0, max(0.0, offset + slope * b.rate))
    fmt, est = formatter(kind), wilson(c, z)
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
    margin_text = describe_margin(kind, margin, worse)
    trivial = offset >= 1 if worse == "increase" else offset + slope <= 0
    if trivial:
        return Result(Outcome.PASS, f"{head}: the {margin_text} margin allows any rate", numbers)
    if offset == 0 and c.events == 0 and b.events == 0:
        reason = (
            f"{head}: neither variant had any event in {c.trials:.0f} and {b.trials:.0f} requests, "
            f"nothing to regress from (a relative margin cannot tell rates this small apart)"
        )
        return Result(Outcome.PASS, reason, numbers)
    stat = sign * _fm_statistic(c, b, offset, slope)  # > 0: evidence of the worse direction
    numbers["statistic"] = stat
    outcome = Outcome.FAIL if stat > z else Outcome.PASS if stat < -z else Outcome.CONTINUE
    reason = (
        f"{head}: {_VERBS[outcome]} the {margin_text} margin (limit {fmt(limit)}) "
        f"at {conf} confidence"
    )
    return Result(outcome, reason, numbers)


def _intervals_vs_baseline(
    label: str,
    kind: Kind,
    c: Estimate,
    b: Estimate,
    margin: Margin,
    worse: Direction,
    conf: str,
) -> Result:
    sign, m = (1.0 if worse == "increase" else -1.0), margin.amount

    def limit(x: float) -> float:
        return x * (1 + sign * m) if margin.kind == "relative" else x + sign * m

    if worse == "increase":
        fail, ok = c.lower > limit(b.upper), c.upper <= limit(b.lower)
    else:
        fail, ok = c.upper < limit(b.lower), c.lower >= limit(b.upper)
    outcome = Outcome.FAIL if fail else Outcome.PASS if ok else Outcome.CONTINUE
    fmt = formatter(kind)
    reason = (
        f"candidate {label} {fmt(c.value)}{_bounds(c, fmt)} vs baseline {fmt(b.value)}"
        f"{_bounds(b, fmt)}{_change(kind, margin, c.value, b.value)}: {_VERBS[outcome]} the "
        f"{describe_margin(kind, margin, worse)} margin (limit {fmt(limit(b.value))})"
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
    return Result(outcome, reason, numbers)


# -------------------------------------------------------------------------------------- rule


class FixedHorizonBonferroni(RuleBase):
    """v1: every look is a fixed-horizon test at ``ctx.alpha_per_look`` (see the module notes)."""

    def judge(
        self, criteria: Criteria, candidate: Window, baseline: Window, ctx: LookContext
    ) -> Result:
        gate = criteria.gate
        label, conf, checks = gate_label(gate), ctx.confidence, []
        # A gate with several criteria (max, min, vs_baseline) splits its share of alpha.
        split = criteria.split
        z = ctx.z(split)
        for bound, is_max in ((criteria.max, True), (criteria.min, False)):
            if bound is None:
                continue
            m = measure(gate, candidate, "candidate", z)
            if isinstance(m, str):
                return Result(Outcome.HOLD, m)
            checks.append(
                _bound_check(label, kind_of(gate, m), as_estimate(m, z), bound, is_max, conf)
            )
        margin = criteria.margin
        if margin is not None:
            z2 = ctx.z(2 * split)  # two intervals, one statement
            pair = measure_both(gate, candidate, baseline, z2)
            if isinstance(pair, str):
                return Result(Outcome.HOLD, pair)
            mc, mb = pair
            kind = kind_of(gate, mc)
            if isinstance(mc, Counts) and isinstance(mb, Counts):
                checks.append(
                    _rates_vs_baseline(label, kind, mc, mb, margin, criteria.worse, z, conf)
                )
            else:
                checks.append(
                    _intervals_vs_baseline(
                        label,
                        kind,
                        as_estimate(mc, z2),
                        as_estimate(mb, z2),
                        margin,
                        criteria.worse,
                        conf,
                    )
                )
        return combine(checks)
