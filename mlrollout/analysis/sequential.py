"""The default decision rule: always-valid mixture SPRTs, safe under continuous monitoring.

Every criterion of a gate is two one-sided tests on the *cumulative* windows of the current stage,
each a mixture likelihood ratio (see :mod:`mlrollout.analysis.mixture`) compared with
``log(1/alpha_test)``:

- the **rollback test** (FAIL): null "the candidate is no worse than the baseline (or within the
  absolute bound)"; it reaches its boundary with probability at most ``alpha_test`` over *all*
  looks of the stage, however many;
- the **pass test** (PASS): null "the candidate is worse than the margin's limit"; reaching its
  boundary rules out a regression beyond the margin (at most ``alpha_test`` false passes).

Between "no worse" and "the margin's limit" lies the indifference zone (``max_increase``): a
candidate there may go either way; a healthy one passes early. :class:`~mlrollout.analysis.GateSet`
spends the plan's ``alpha`` over stages and deciding gates (Bonferroni), so the whole rollout's
false-rollback rate stays at most ``alpha``.

Per metric:

- **Rates vs baseline** (``error_rate``, custom counts): the conditional binomial. Given the
  events seen, each one is the candidate's with probability ``n_c r / (n_c r + n_b)`` (``r`` the
  rate ratio, ``n`` the requests): the nuisance baseline rate drops out. An absolute margin
  (``0.5pp``) becomes a ratio at the baseline's current rate (an approximation).
- **Latency p50 vs baseline**: the Mann-Whitney rank statistic on the two histograms (bucket
  midpoints, ties counted half), as a Gaussian path in its information; the pass test compares
  the candidate with the baseline scaled by the margin (``x (1 + m)`` or ``x + m``).
- **Latency p90/p99 vs baseline**: the requests slower than a threshold (a bucket bound) are
  events; the rollback test is the conditional binomial on them at several thresholds at once
  (the baseline's quantiles around the gate's, :mod:`~mlrollout.analysis.tail`: the weighted
  average of their likelihood ratios, one always-valid test); the pass test counts
  the candidate's requests possibly slower than the limit (``threshold x (1 + m)``, whole buckets
  rounded against passing).
- **Absolute bounds**: the one-sample binomial (``errors / requests`` against ``max``; the share
  of requests beyond a latency bound against ``1 - q``), buckets rounded against each verdict.
- **Bursty counts** (rates only): when the look carries the stage's per-interval increments
  (``LookContext.intervals``), a quasi-likelihood dispersion factor ``phi`` is estimated from them
  (:mod:`~mlrollout.analysis.dispersion`); both tests' log likelihood ratios are divided by it
  (each alternative's before they are mixed), the information is ``I / phi`` (intervals about
  ``sqrt(phi)`` wider) and the calibrated lowering of the rollback boundary shrinks as
  ``1 / phi^2``. The reason says so ("errors arrive in bursts: evidence discounted ×1.8") and the
  numbers carry ``dispersion``. No intervals: ``phi = 1``, the verdicts as before.
- **Late onsets** (rates only, with intervals): the rollback test is also run again on the counts
  since each of a few restart points fixed in advance (:mod:`~mlrollout.analysis.onset`), each
  with its own calibrated boundary at a share of the budget (the whole-stage test keeps
  ``1 - onset.SHARE``); any crossing rolls back, and the reason says "a late onset".
- **Provider percentiles and custom means** carry no sample information: their point values are
  compared once ``min_requests`` (and, for a percentile, at least 10 requests in its tail) are in,
  and the verdict says that this guarantee is weaker.

No data, a failed query, or fewer than ``min_requests`` per variant: HOLD, never PASS (the checks
every rule shares, :class:`~mlrollout.analysis.rule.RuleBase`). Each verdict states the estimate,
an always-valid interval (Robbins' normal mixture), the evidence against the boundary, the
samples, and a sentence.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from mlrollout.analysis import onset
from mlrollout.analysis.calibration import Pace
from mlrollout.analysis.dispersion import (
    NONE,
    Dispersion,
    counts_of,
    one_sample,
    one_sample_rows,
    two_sample,
    two_sample_rows,
)
from mlrollout.analysis.measures import (
    MEAN_NOTE,
    PERCENTILE_NOTE,
    Counts,
    Criteria,
    Direction,
    Estimate,
    Kind,
    Result,
    confidence,
    describe_margin,
    formatter,
    gate_label,
    kind_of,
    measure,
    measure_both,
    nats,
    wilson,
)
from mlrollout.analysis.mixture import (
    FAIL_GRID,
    PASS_GRID,
    RANK_GRID,
    bernoulli_log_lr,
    gaussian_log_lr,
    kl_bernoulli,
    normal_cs_radius,
    normal_cs_z,
    pass_grid,
)
from mlrollout.analysis.rule import LookContext, RuleBase, combine
from mlrollout.analysis.tail import describe as describe_tail
from mlrollout.analysis.tail import tail_evidence, tail_numbers
from mlrollout.analysis.verdict import Numbers, Outcome
from mlrollout.contracts import LatencyHistogram, Window
from mlrollout.plan.model import LATENCY_METRICS, Gate, Margin
from mlrollout.units import format_rate

_PERCENTILE_TAIL = 10  # requests in a provider percentile's tail before its value means anything
_MIXTURE_COST = 1.0  # nats a mixture pays over a test told the effect (for "needed" estimates)
_VERDICT = {Outcome.FAIL: "roll back", Outcome.PASS: "pass", Outcome.CONTINUE: "keep watching"}


@dataclass(frozen=True)
class _Evidence:
    fail: float  # log mixture LR of the rollback test
    passing: float  # log mixture LR of the pass test
    boundary: float  # log(1 / alpha): the pass test's boundary
    fail_boundary: float | None = None  # the rollback test's, calibrated (None: ``boundary``)
    lowered: float = 0.0  # how far the rollback boundary came down from ``boundary``

    @property
    def fail_at(self) -> float:
        return self.boundary if self.fail_boundary is None else self.fail_boundary

    @property
    def outcome(self) -> Outcome:
        if self.fail >= self.fail_at:
            return Outcome.FAIL
        if self.passing >= self.boundary:
            return Outcome.PASS
        return Outcome.CONTINUE

    def text(self) -> str:
        if self.outcome is Outcome.FAIL:
            return f"evidence {nats(self.fail)} ≥ {self.fail_at:.1f} needed"
        if self.outcome is Outcome.PASS:
            return f"evidence {nats(self.passing)} ≥ {self.boundary:.1f} needed"
        if abs(self.fail_at - self.boundary) < 0.05:
            return (
                f"evidence of a regression {nats(self.fail)}, of staying within it "
                f"{nats(self.passing)}, {self.boundary:.1f} needed"
            )
        return (
            f"evidence of a regression {nats(self.fail)} ({self.fail_at:.1f} needed), of "
            f"staying within it {nats(self.passing)} ({self.boundary:.1f} needed)"
        )

    def numbers(self) -> Numbers:
        return {
            "statistic": self.fail,
            "evidence_fail": self.fail,
            "evidence_pass": self.passing,
            "boundary": self.fail_at,
            "boundary_pass": self.boundary,
            "boundary_lowered": self.lowered,
        }


def _evidence(
    fail: float,
    passing: float,
    alpha: float,
    grid: str,
    information: float,
    pace: Pace | None,
    dispersion: float = 1.0,
) -> _Evidence:
    """Both tests' evidence with their boundaries: the pass test's ``log(1/alpha)``, the rollback
    test's calibrated for the stage's looks (see :mod:`mlrollout.analysis.calibration`).
    ``information`` is the effective one (already divided by ``dispersion``); with bursty counts
    the calibration's Gaussian model holds less well, so its correction shrinks as
    ``1 / dispersion^2``."""
    top = math.log(1.0 / alpha)
    if pace is None:
        return _Evidence(fail, passing, top)
    at, down = pace.boundary(grid, alpha, information)
    if dispersion > 1.0:
        down /= dispersion * dispersion
        at = top - down
    return _Evidence(fail, passing, top, at, down)


def _pct(ratio: float) -> str:
    """A ratio as a signed change: ``1.1`` → ``+10%``."""
    if not math.isfinite(ratio):
        return "+∞%"
    change = (ratio - 1) * 100
    return f"{change:+.0f}%" if abs(change) >= 10 else f"{change:+.2g}%"


# ------------------------------------------------------------------------------- rates


def _limit_ratio(margin: Margin, worse: Direction, baseline_rate: float, trials: float) -> float:
    """The margin's limit as a rate ratio (candidate / baseline)."""
    sign = 1.0 if worse == "increase" else -1.0
    if margin.kind == "relative":
        return max(0.0, 1.0 + sign * margin.amount)
    rate = baseline_rate if baseline_rate > 0 else 0.5 / trials
    return max(0.0, (rate + sign * margin.amount) / rate)


def conditional_evidence(
    x_c: float,
    n_c: float,
    x_b: float,
    n_b: float,
    limit_ratio: float,
    worse: Direction,
    alpha: float,
    x_c_pass: float | None = None,
    pace: Pace | None = None,
    scale: float = 1.0,
) -> _Evidence:
    """Both tests on the conditional binomial: of ``x_c + x_b`` events, ``x_c`` are the
    candidate's (``x_c_pass`` for the pass test when it counts events differently). ``scale``
    (the dispersion factor) divides both tests' log likelihood ratios."""
    up = worse == "increase"

    def theta(r: float) -> float:
        return n_c * r / (n_c * r + n_b)

    fail = bernoulli_log_lr(x_c, x_c + x_b, theta(1.0), FAIL_GRID, up=up, scale=scale)
    xp = x_c if x_c_pass is None else x_c_pass
    if up:
        grid = pass_grid(limit_ratio) if x_c_pass is None else PASS_GRID
        passing = bernoulli_log_lr(xp, xp + x_b, theta(limit_ratio), grid, up=False, scale=scale)
    else:
        grid = pass_grid(1 / limit_ratio) if 0 < limit_ratio < 1 else PASS_GRID
        passing = (
            bernoulli_log_lr(xp, xp + x_b, theta(limit_ratio), grid, up=True, scale=scale)
            if limit_ratio > 0
            else math.inf
        )
    t0 = theta(1.0)
    info = (x_c + x_b) * t0 * (1 - t0) / scale
    return _evidence(fail, passing, alpha, "fail", info, pace, scale)


def _needed_more(
    x_c: float,
    n_c: float,
    x_b: float,
    n_b: float,
    limit_ratio: float,
    ev: _Evidence,
    scale: float = 1.0,
) -> int | None:
    """About how many more candidate requests the nearer test needs if the rates stay as seen."""
    events = x_c + x_b
    if events <= 0 or n_c <= 0:
        return None
    theta_hat = min(max(x_c / events, 0.5 / events), 1 - 0.5 / events)
    targets = [n_c / (n_c + n_b), n_c * limit_ratio / (n_c * limit_ratio + n_b)]
    best = None
    for theta0 in targets:
        kl = kl_bernoulli(theta_hat, theta0) / scale
        if kl <= 1e-12:
            continue
        total = (ev.fail_at + _MIXTURE_COST) / kl
        more = max(0.0, total - events) / (events / n_c)
        best = more if best is None else min(best, more)
    return None if best is None else math.ceil(best)


def _fail_share(
    ev: _Evidence, alpha: float, information: float, pace: Pace | None, scale: float
) -> _Evidence:
    """``ev`` with its rollback boundary for the whole-stage test's share of ``alpha`` when
    restarted tests take the rest (:mod:`~mlrollout.analysis.onset`); the pass test keeps
    ``alpha``."""
    return replace(ev, **_fail_boundary(alpha * (1.0 - onset.SHARE), information, pace, scale))


def _fail_boundary(
    alpha: float, information: float, pace: Pace | None, scale: float
) -> dict[str, float]:
    """A rollback test's calibrated boundary at ``alpha`` (as :func:`_evidence` makes it)."""
    top = math.log(1.0 / alpha)
    if pace is None:
        return {"fail_boundary": top, "lowered": 0.0}
    at, down = pace.boundary("fail", alpha, information)
    if scale > 1.0:
        down /= scale * scale
        at = top - down
    return {"fail_boundary": at, "lowered": down}


@dataclass(frozen=True)
class _Restart:
    """The strongest of the restarted rollback tests (late onsets): it judges the counts of the
    last ``looks`` intervals (``c``, and ``b`` vs the baseline), ``fail`` its evidence against
    ``fail_at`` (its own calibrated boundary, ``lowered`` below Ville's)."""

    looks: int
    c: Counts
    b: Counts | None
    fail: float
    fail_at: float
    lowered: float

    @property
    def crossed(self) -> bool:
        return self.fail >= self.fail_at

    def evidence(self, whole: _Evidence) -> _Evidence:
        """The deciding evidence when this test rolls back (the pass side stays the stage's)."""
        return replace(whole, fail=self.fail, fail_boundary=self.fail_at, lowered=self.lowered)

    def numbers(self) -> Numbers:
        return {
            "evidence_onset": self.fail,
            "boundary_onset": self.fail_at,
            "onset_looks": float(self.looks),
        }

    def text(self, fmt: Callable[[float], str], noun: str) -> str:
        c = self.c
        if self.b is None:
            what = f"{fmt(c.rate)} ({c.events:,.0f} of {c.trials:,.0f})"
        else:
            b = self.b
            what = (
                f"{fmt(c.rate)} vs {fmt(b.rate)} ({noun} {c.events:,.0f}/{c.trials:,.0f} vs "
                f"{b.events:,.0f}/{b.trials:,.0f})"
            )
        return (
            f"a late onset: over the last {self.looks} looks {what}, evidence {nats(self.fail)} "
            f"≥ {self.fail_at:.1f} needed (restarted test)"
        )


def _restarted(
    rows: Sequence[Sequence[float]],
    worse: Direction,
    alpha: float,
    pace: Pace | None,
    scale: float,
    theta0: float | None = None,
) -> _Restart | None:
    """The restarted rollback tests at this look (:mod:`~mlrollout.analysis.onset`), each at its
    share of ``alpha``: the conditional binomial on ``(x_c, n_c, x_b, n_b)`` rows, or (with
    ``theta0``, one sample) ``(x, n)`` rows against ``theta0``. The one closest to (or furthest
    past) its boundary, ``None`` when none has begun."""
    horizon = pace.horizon if pace is not None else None
    look = pace.look if pace is not None else 0
    points = onset.restarts(horizon, len(rows))
    if not points:
        return None
    sums = onset.suffixes(rows, [start for start, _ in points])
    up = worse == "increase"
    best: _Restart | None = None
    for (start, weight), counts in zip(points, sums, strict=True):
        looks = len(rows) - start
        own = Pace(looks if look > 0 else 0, horizon - start if horizon else None)
        budget = alpha * onset.SHARE * weight
        if theta0 is None:
            x_c, n_c, x_b, n_b = counts
            events = x_c + x_b
            if events <= 0 or n_c <= 0 or n_b <= 0:
                continue
            t0 = n_c / (n_c + n_b)
            fail = bernoulli_log_lr(x_c, events, t0, FAIL_GRID, up=up, scale=scale)
            info = events * t0 * (1.0 - t0) / scale
            c, b = Counts(x_c, n_c), Counts(x_b, n_b)
        else:
            x, n = counts
            if n <= 0:
                continue
            fail = bernoulli_log_lr(x, n, theta0, FAIL_GRID, up=up, scale=scale)
            info = n * theta0 * (1.0 - theta0) / scale
            c, b = Counts(x, n), None
        edge = _fail_boundary(budget, info, own, scale)
        found = _Restart(looks, c, b, fail, edge["fail_boundary"], edge["lowered"])
        if best is None or found.fail - found.fail_at > best.fail - best.fail_at:
            best = found
    return best


def _rates_vs_baseline(
    label: str,
    kind: Kind,
    c: Counts,
    b: Counts,
    margin: Margin,
    worse: Direction,
    alpha: float,
    pace: Pace | None = None,
    disp: Dispersion = NONE,
    rows: Sequence[tuple[float, float, float, float]] = (),
) -> Result:
    """A rate vs the baseline's; ``rows`` (the stage's per-interval counts, ``(x_c, n_c, x_b,
    n_b)``) turn on the restarted tests for late onsets (:mod:`~mlrollout.analysis.onset`)."""
    fmt = formatter(kind)
    phi = disp.factor
    limit_ratio = _limit_ratio(margin, worse, b.rate, b.trials)
    limit_rate = b.rate * limit_ratio if b.rate > 0 else (limit_ratio * 0.5 / b.trials)
    margin_text = describe_margin(kind, margin, worse)
    ratio = c.rate / b.rate if b.rate > 0 else math.inf if c.rate > 0 else 1.0
    info = 1.0 / (1.0 / (c.events + 0.5) + 1.0 / (b.events + 0.5))
    radius = min(normal_cs_radius(info / phi, alpha), 700.0)  # about sqrt(phi) wider
    r_mid = ((c.events + 0.5) / c.trials) / ((b.events + 0.5) / b.trials)
    r_low, r_high = r_mid * math.exp(-radius), r_mid * math.exp(radius)
    numbers: Numbers = {
        "candidate": c.rate,
        "baseline": b.rate,
        "estimate": ratio - 1 if margin.kind == "relative" else c.rate - b.rate,
        "ratio": ratio,
        "ratio_lower": r_low,
        "ratio_upper": r_high,
        "lower": b.rate * r_low,
        "upper": b.rate * r_high,
        "threshold": min(1.0, limit_rate),
        "alpha": alpha,
        **disp.numbers(),
    }
    head = f"candidate {label} {fmt(c.rate)} vs baseline {fmt(b.rate)}"
    interval = f"{confidence(alpha)} interval {_pct(r_low)} to {_pct(r_high)}"
    if worse == "increase" and margin.kind == "absolute" and b.rate + margin.amount >= 1:
        return Result(Outcome.PASS, f"{head}: the {margin_text} margin allows any rate", numbers)
    if c.events == 0 and b.events == 0:
        # No event yet: no evidence either way (v1 passed here; a 10x regression of a 0.1 %
        # rate often shows no event in the first few hundred requests, so that is unsafe).
        reason = (
            f"{head}: no event in either variant yet ({c.trials:.0f} and {b.trials:.0f} "
            f"requests), nothing to compare: keep watching (bound rare events with a max)"
        )
        return Result(Outcome.CONTINUE, reason, numbers)
    ev = conditional_evidence(
        c.events, c.trials, b.events, b.trials, limit_ratio, worse, alpha, pace=pace, scale=phi
    )
    late: _Restart | None = None
    if rows:  # the whole-stage test's share; the restarted tests have the rest
        t0 = c.trials / (c.trials + b.trials)
        ev = _fail_share(ev, alpha, (c.events + b.events) * t0 * (1 - t0) / phi, pace, phi)
        late = _restarted(rows, worse, alpha, pace, phi)
    numbers |= ev.numbers()
    outcome = ev.outcome
    on_c, on_b = c, b  # the counts of the deciding test
    if late is not None:
        numbers |= late.numbers()
        if late.crossed and outcome is not Outcome.FAIL:
            ev = late.evidence(ev)
            numbers |= ev.numbers()
            outcome = Outcome.FAIL
            assert late.b is not None
            on_c, on_b = late.c, late.b
        else:
            late = None
    if outcome is not Outcome.CONTINUE:  # the decided side's bound, from the test itself
        boundary = ev.fail_at if outcome is Outcome.FAIL else ev.boundary
        edge = _ratio_edge(on_c, on_b, limit_ratio, worse, outcome, boundary, phi)
        high_side = (outcome is Outcome.PASS) == (worse == "increase")
        side = "upper" if high_side else "lower"
        r_low, r_high = (r_low, edge) if high_side else (edge, r_high)
        numbers |= {"ratio_lower": r_low, "ratio_upper": r_high}
        numbers |= {"lower": b.rate * r_low, "upper": b.rate * r_high}
        how = "stage-calibrated" if outcome is Outcome.FAIL and ev.lowered > 0 else "always-valid"
        interval = f"{confidence(alpha)} {how} {side} bound {_pct(edge)}"
    samples = f"{c.events:,.0f}/{c.trials:,.0f} vs {b.events:,.0f}/{b.trials:,.0f}"
    change = _pct(ratio) if b.rate > 0 else "from none"
    if outcome is Outcome.FAIL:
        word = "worse than" if worse == "increase" else "below"
        beyond = (
            " and beyond the " + margin_text + " margin"
            if _beyond(r_low, r_high, limit_ratio, worse)
            else ""
        )
        verdict = f"{word} the baseline{beyond}"
    elif outcome is Outcome.PASS:
        verdict = f"within the {margin_text} margin (limit {fmt(min(1.0, limit_rate))})"
    else:
        verdict = (
            f"not yet decided against the {margin_text} margin (limit {fmt(min(1.0, limit_rate))})"
        )
        more = _needed_more(c.events, c.trials, b.events, b.trials, limit_ratio, ev, phi)
        if more is not None:
            numbers["needed_requests"] = more
            verdict += f"; about {more} more candidate requests at these rates"
    noun = "errors" if label == "error rate" else label
    bursts = f" ({disp.note(noun)})" if disp.discounted else ""
    found = late.text(fmt, noun) if late is not None else ev.text()
    reason = (
        f"{head} ({change}; {interval}): {verdict}, {found}{bursts}, {noun} {samples}, "
        f"at {confidence(alpha)}: {_VERDICT[outcome]}"
    )
    return Result(outcome, reason, numbers)


def _ratio_edge(
    c: Counts,
    b: Counts,
    limit: float,
    worse: Direction,
    outcome: Outcome,
    boundary: float,
    scale: float = 1.0,
) -> float:
    """The rate ratio where the deciding test stops rejecting (inverting the same mixture): the
    always-valid bound that agrees with the verdict (lower after a rollback on an increase...)."""
    x, n = c.events, c.events + b.events

    def theta(log_r: float) -> float:
        r = math.exp(log_r)
        return c.trials * r / (c.trials * r + b.trials)

    up = worse == "increase"
    if outcome is Outcome.FAIL:  # alternatives beyond r0 on the worse side; rejected at r0 = 1

        def rejects(log_r: float) -> bool:
            return bernoulli_log_lr(x, n, theta(log_r), FAIL_GRID, up=up, scale=scale) >= boundary

        start, far = 0.0, (4.0 if up else -4.0)
    else:  # alternatives on the better side of r0; rejected at the limit

        def rejects(log_r: float) -> bool:
            r0 = math.exp(log_r)
            grid = pass_grid(r0) if up else pass_grid(1 / r0)
            ev = bernoulli_log_lr(x, n, theta(log_r), grid, up=not up, scale=scale)
            return ev >= boundary

        start = math.log(max(limit, 1e-9))
        far = start + (-4.0 if up else 4.0)
    if rejects(far):  # beyond the searched range: the range's end is a conservative bound
        return math.exp(far)
    for _ in range(10):  # to within e^(4/1024): 0.4 %
        mid = (start + far) / 2
        start, far = (mid, far) if rejects(mid) else (start, mid)
    return math.exp(far)  # the first ratio not rejected: conservative


def _beyond(low: float, high: float, limit: float, worse: Direction) -> bool:
    return low > limit if worse == "increase" else high < limit


# ---------------------------------------------------------------------------- one sample


def _one_sample(
    x_fail: float,
    x_pass: float,
    n: float,
    theta0: float,
    up: bool,
    alpha: float,
    pace: Pace | None = None,
    scale: float = 1.0,
) -> _Evidence:
    """Against ``theta0``: the rollback test sees ``x_fail`` events (rounded toward passing), the
    pass test ``x_pass`` (rounded toward failing); ``up`` = more events is worse. ``scale`` (the
    dispersion factor) divides both tests' log likelihood ratios."""
    fail = bernoulli_log_lr(x_fail, n, theta0, FAIL_GRID, up=up, scale=scale)
    passing = bernoulli_log_lr(x_pass, n, theta0, PASS_GRID, up=not up, scale=scale)
    info = n * theta0 * (1 - theta0) / scale
    return _evidence(fail, passing, alpha, "fail", info, pace, scale)


def _rate_bound(
    label: str,
    kind: Kind,
    c: Counts,
    bound: float,
    is_max: bool,
    alpha: float,
    pace: Pace | None = None,
    disp: Dispersion = NONE,
    rows: Sequence[tuple[float, float]] = (),
) -> Result:
    """A rate against a bound; ``rows`` (the stage's per-interval ``(x, n)``) turn on the
    restarted tests for late onsets (:mod:`~mlrollout.analysis.onset`)."""
    fmt = formatter(kind)
    phi = disp.factor
    ev = _one_sample(c.events, c.events, c.trials, bound, is_max, alpha, pace, phi)
    late: _Restart | None = None
    if rows and 0.0 < bound < 1.0:  # the whole-stage test's share; the restarts have the rest
        ev = _fail_share(ev, alpha, c.trials * bound * (1 - bound) / phi, pace, phi)
        worse: Direction = "increase" if is_max else "decrease"
        late = _restarted(rows, worse, alpha, pace, phi, theta0=bound)
    noun = "errors" if label == "error rate" else label
    info = c.trials * max(c.rate * (1 - c.rate), 1 / c.trials)
    z = normal_cs_z(info / phi, alpha) * math.sqrt(phi)  # the interval sqrt(phi) wider
    interval = wilson(c, z)
    samples = f"{c.events:,.0f} of {c.trials:,.0f}"
    if disp.discounted:
        samples += f" ({disp.note(noun)})"
    if late is not None and late.crossed and ev.outcome is not Outcome.FAIL:
        ev = late.evidence(ev)
        samples += f"; {late.text(fmt, noun)}"
    result = _bound_result(
        label, fmt, c.rate, interval.lower, interval.upper, bound, is_max, ev, alpha, samples
    )
    result.numbers |= disp.numbers()
    if late is not None:
        result.numbers |= late.numbers()
    return result


def _bound_result(
    label: str,
    fmt: Callable[[float], str],
    value: float,
    low: float,
    high: float,
    bound: float,
    is_max: bool,
    ev: _Evidence,
    alpha: float,
    samples: str,
) -> Result:
    outcome = ev.outcome
    name = "maximum" if is_max else "minimum"
    where = {
        Outcome.FAIL: "above" if is_max else "below",
        Outcome.PASS: "at or under" if is_max else "at or over",
        Outcome.CONTINUE: "not yet clear of",
    }[outcome]
    high_text = fmt(high) if math.isfinite(high) else "unbounded"
    reason = (
        f"candidate {label} {fmt(value)} ({confidence(alpha)} interval {fmt(low)}–{high_text}): "
        f"{where} the {fmt(bound)} {name}, {ev.text()}, {samples}, at {confidence(alpha)}: "
        f"{_VERDICT[outcome]}"
    )
    numbers: Numbers = {
        "candidate": value,
        "estimate": value,
        "lower": low,
        "upper": high,
        "threshold": bound,
        "alpha": alpha,
        **ev.numbers(),
    }
    return Result(outcome, reason, numbers)


# ------------------------------------------------------------------------------ latency


@functools.lru_cache(maxsize=64)
def _midpoints(bounds: tuple[float, ...]) -> tuple[float, ...]:
    """A representative latency per bucket (geometric middle; the overflow at 1.5× the last)."""
    b = bounds
    inner = [math.sqrt(b[i - 1] * b[i]) for i in range(1, len(b))]
    return (b[0] / 2, *inner, b[-1] * 1.5)


def _rank(
    c: LatencyHistogram, b: LatencyHistogram, shift: Callable[[float], float] | None
) -> tuple[float, float]:
    """``P(candidate > shift(baseline)) + P(tie)/2`` from two histograms and its information
    (1 / null variance, ties corrected). ``shift`` must be increasing (``None``: identity)."""
    if shift is None and c.bounds == b.bounds:  # the same buckets: a single pass
        n_c, n_b = sum(c.counts), sum(b.counts)
        u, below, ties = 0.0, 0, 0.0
        for kc, kb in zip(c.counts, b.counts, strict=True):
            if kc or kb:
                u += kc * (below + kb / 2)
                below += kb
                t = kc + kb
                ties += t * t * t - t
        return _rank_result(u, ties, n_c, n_b)
    mc, mb = _midpoints(c.bounds), _midpoints(b.bounds)
    cv = [(mc[i], k) for i, k in enumerate(c.counts) if k]
    bv = [(mb[i] if shift is None else shift(mb[i]), k) for i, k in enumerate(b.counts) if k]
    n_c, n_b = sum(k for _, k in cv), sum(k for _, k in bv)
    u, below, ties, i, j = 0.0, 0, 0.0, 0, 0
    while i < len(cv) or j < len(bv):  # merge the two sorted value lists
        vc = cv[i][0] if i < len(cv) else math.inf
        vb = bv[j][0] if j < len(bv) else math.inf
        kc = kb = 0
        if vc <= vb:
            kc = cv[i][1]
            i += 1
        if vb <= vc:
            kb = bv[j][1]
            j += 1
        u += kc * (below + kb / 2)
        below += kb
        t = kc + kb
        ties += t * t * t - t
    return _rank_result(u, ties, n_c, n_b)


def _rank_result(u: float, ties: float, n_c: int, n_b: int) -> tuple[float, float]:
    n = n_c + n_b
    if n_c == 0 or n_b == 0 or n < 2:
        return 0.5, 0.0
    var = ((n + 1) - ties / (n * (n - 1))) / (12.0 * n_c * n_b)
    return u / (n_c * n_b), (1.0 / var if var > 0 else 0.0)


def _limit_fn(margin: Margin, worse: Direction) -> Callable[[float], float]:
    sign, m = (1.0 if worse == "increase" else -1.0), margin.amount
    if margin.kind == "relative":
        return lambda x: x * (1 + sign * m)
    return lambda x: x + sign * m


def _median_vs_baseline(
    label: str,
    c: LatencyHistogram,
    b: LatencyHistogram,
    margin: Margin,
    worse: Direction,
    alpha: float,
    q: float,
    pace: Pace | None = None,
) -> Result:
    fmt = formatter("latency")
    limit = _limit_fn(margin, worse)
    up = worse == "increase"
    a, info = _rank(c, b, None)
    a_lim, info_lim = _rank(c, b, limit)
    fail = gaussian_log_lr(a - 0.5, info, RANK_GRID, up=up)
    passing = gaussian_log_lr(a_lim - 0.5, info_lim, RANK_GRID, up=not up)
    ev = _evidence(fail, passing, alpha, "rank", info, pace)
    qc, qb = c.quantile(q), b.quantile(q)
    radius = normal_cs_radius(info, alpha)
    low, high = max(0.0, a - radius), min(1.0, a + radius)
    numbers: Numbers = {
        "candidate": qc,
        "baseline": qb,
        "estimate": qc / qb - 1 if margin.kind == "relative" and qb > 0 else qc - qb,
        "lower": None,
        "upper": None,
        "threshold": limit(qb),
        "p_slower": a,
        "p_slower_lower": low,
        "p_slower_upper": high,
        "alpha": alpha,
        **ev.numbers(),
    }
    outcome = ev.outcome
    verdict = _latency_words(outcome, margin, worse, fmt(limit(qb)))
    change = f"{(qc / qb - 1) * 100:+.3g}%" if qb > 0 else "n/a"
    reason = (
        f"candidate {label} {fmt(qc)} vs baseline {fmt(qb)} ({change}; P(candidate slower) "
        f"{a:.3f}, {confidence(alpha)} interval {low:.3f}–{high:.3f}, "
        f"rank test on {c.total} vs {b.total} requests): {verdict}, {ev.text()}, "
        f"at {confidence(alpha)}: {_VERDICT[outcome]}"
    )
    return Result(outcome, reason, numbers)


def _latency_words(outcome: Outcome, margin: Margin, worse: Direction, limit: str) -> str:
    margin_text = describe_margin("latency", margin, worse)
    if outcome is Outcome.FAIL:
        return "slower than the baseline" if worse == "increase" else "faster than the baseline"
    if outcome is Outcome.PASS:
        return f"within the {margin_text} margin (limit {limit})"
    return f"not yet decided against the {margin_text} margin (limit {limit})"


def _possibly_above(hist: LatencyHistogram, t: float) -> int:
    """Requests that may have been slower than ``t``: the whole buckets above it and the bucket
    that holds it (:meth:`LatencyHistogram.count_above` counts those certainly slower)."""
    i = bisect.bisect_left(hist.bounds, t)  # bucket i holds (bounds[i-1], bounds[i]]
    if i < len(hist.bounds) and hist.bounds[i] == t:
        return hist.count_above(t)
    return sum(hist.counts[i:])


def _tail_vs_baseline(
    label: str,
    c: LatencyHistogram,
    b: LatencyHistogram,
    margin: Margin,
    worse: Direction,
    alpha: float,
    q: float,
    pace: Pace | None = None,
) -> Result:
    fmt = formatter("latency")
    limit = _limit_fn(margin, worse)
    qb, qc = b.quantile(q), c.quantile(q)
    i = min(bisect.bisect_left(b.bounds, qb), len(b.bounds) - 1)
    t = b.bounds[i]  # the baseline's quantile, rounded up to a bucket bound
    x_b = b.count_above(t)
    x_c = c.count_above(t)
    x_c_pass = _possibly_above(c, limit(t))
    n_c, n_b = c.total, b.total
    need = math.ceil(_PERCENTILE_TAIL / (1 - q))
    numbers: Numbers = {
        "candidate": qc,
        "baseline": qb,
        "estimate": qc / qb - 1 if margin.kind == "relative" and qb > 0 else qc - qb,
        "threshold": limit(qb),
        "alpha": alpha,
        "slow_threshold": t,
        "candidate_slow": x_c,
        "baseline_slow": x_b,
    }
    if n_b < need:
        numbers["needed_requests"] = need - n_b
        reason = (
            f"candidate {label} {fmt(qc)} vs baseline {fmt(qb)}: the baseline has {n_b} requests, "
            f"{need} are needed to see {_PERCENTILE_TAIL} in its tail ({need - n_b} more)"
        )
        return Result(Outcome.CONTINUE, reason, numbers)
    ratio = limit(t) / t if t > 0 else 1.0
    ev = conditional_evidence(x_c, n_c, x_b, n_b, 1.0, worse, alpha, x_c_pass, pace)
    share_c, share_b = x_c / n_c, x_b / n_b
    samples = f"{format_rate(share_c)} of {n_c} vs {format_rate(share_b)} of {n_b} requests"
    tested = f"slower than {fmt(t)}: {samples}"
    tail = tail_evidence(c, b, q) if worse == "increase" else None
    if tail is not None:  # several thresholds, one test (mlrollout/analysis/tail.py)
        info = tail.information(n_c, n_b)
        ev = _evidence(tail.fail, ev.passing, alpha, "fail", info, pace)
        numbers |= tail_numbers(tail, n_c, n_b)
        tested = f"{describe_tail(tail, n_c, n_b, fmt)}, {c.total} vs {b.total} requests"
    tested += f", {x_c_pass} beyond {fmt(t * ratio)}"
    if tail is not None and tail.coarse:
        tested += (
            "; coarse buckets: only the gate's own quantile can be tested"
            if len(tail.levels) == 1
            else f"; coarse buckets: {len(tail.levels)} of {tail.asked} thresholds apart"
        )
    if tail is not None and tail.waiting > 0:
        tested += "; further thresholds once the baseline has more requests"
    numbers |= ev.numbers()
    outcome = ev.outcome
    verdict = _latency_words(outcome, margin, worse, fmt(limit(qb)))
    change = f"{(qc / qb - 1) * 100:+.3g}%" if qb > 0 else "n/a"
    reason = (
        f"candidate {label} {fmt(qc)} vs baseline {fmt(qb)} ({change}; {tested}): {verdict}, "
        f"{ev.text()}, at {confidence(alpha)}: {_VERDICT[outcome]}"
    )
    return Result(outcome, reason, numbers)


def _latency_bound(
    label: str,
    hist: LatencyHistogram,
    q: float,
    bound: float,
    is_max: bool,
    alpha: float,
    pace: Pace | None = None,
) -> Result:
    fmt = formatter("latency")
    n = hist.total
    if is_max:  # worse: more than 1 - q of the requests slower than the bound
        x_fail = hist.count_above(bound)
        x_pass = _possibly_above(hist, bound)
        ev = _one_sample(x_fail, x_pass, n, 1.0 - q, True, alpha, pace)
    else:  # worse: more than q of the requests faster than the bound
        x_fail = n - _possibly_above(hist, bound)
        x_pass = n - hist.count_above(bound)
        ev = _one_sample(x_fail, x_pass, n, q, True, alpha, pace)
    z = normal_cs_z(n * q * (1 - q), alpha)
    spread = z * math.sqrt(n * q * (1 - q)) + 1.0
    low = hist.value_at_rank(n * q - spread) if n * q - spread >= 0 else 0.0
    high = hist.value_at_rank(n * q + spread) if n * q + spread < n - hist.counts[-1] else math.inf
    share = x_fail / n
    samples = (
        f"{format_rate(share)} of {n} requests {'slower' if is_max else 'faster'} than {fmt(bound)}"
    )
    return _bound_result(label, fmt, hist.quantile(q), low, high, bound, is_max, ev, alpha, samples)


# ---------------------------------------------------------------------------------- points


def _point(
    label: str,
    kind: Kind,
    est: Estimate,
    bound: float,
    is_max: bool,
    note: str,
) -> Result:
    fmt = formatter(kind)
    fail = est.value > bound if is_max else est.value < bound
    outcome = Outcome.FAIL if fail else Outcome.PASS
    name = "maximum" if is_max else "minimum"
    where = (
        ("above" if is_max else "below") if fail else ("at or under" if is_max else "at or over")
    )
    reason = (
        f"candidate {label} {fmt(est.value)}: {where} the {fmt(bound)} {name} ({note}): "
        f"{_VERDICT[outcome]}"
    )
    return Result(
        outcome, reason, {"candidate": est.value, "estimate": est.value, "threshold": bound}
    )


def _points_vs_baseline(
    label: str, kind: Kind, c: Estimate, b: Estimate, margin: Margin, worse: Direction, note: str
) -> Result:
    fmt = formatter(kind)
    limit = _limit_fn(margin, worse)(b.value)
    fail = c.value > limit if worse == "increase" else c.value < limit
    outcome = Outcome.FAIL if fail else Outcome.PASS
    change = f"{(c.value / b.value - 1) * 100:+.3g}%" if b.value else "n/a"
    where = "beyond" if fail else "within"
    reason = (
        f"candidate {label} {fmt(c.value)} vs baseline {fmt(b.value)} ({change}): {where} the "
        f"{describe_margin(kind, margin, worse)} margin (limit {fmt(limit)}) ({note}): "
        f"{_VERDICT[outcome]}"
    )
    numbers: Numbers = {
        "candidate": c.value,
        "baseline": b.value,
        "estimate": c.value / b.value - 1
        if margin.kind == "relative" and b.value
        else c.value - b.value,
        "threshold": limit,
    }
    return Result(outcome, reason, numbers)


def _tail_short(gate: Gate, *windows: Window) -> int | None:
    """Requests still needed before a provider percentile has ``_PERCENTILE_TAIL`` in its tail."""
    q = LATENCY_METRICS.get(gate.metric)
    if q is None:
        return None
    need = math.ceil(_PERCENTILE_TAIL / (1 - q))
    short = max((need - (w.requests or 0) for w in windows), default=0)
    return short if short > 0 else None


# ------------------------------------------------------------------------------------ rule


class MixtureSPRT(RuleBase):
    """The default rule: always-valid mixture SPRTs (see the module notes). Stateless: each look
    judges the stage's cumulative windows, so a resumed engine decides exactly as before."""

    name = "mixture-sprt"

    def judge(
        self, criteria: Criteria, candidate: Window, baseline: Window, ctx: LookContext
    ) -> Result:
        gate = criteria.gate
        label = gate_label(gate)
        margin, worse = criteria.margin, criteria.worse
        split = criteria.split
        alpha = (ctx.alpha_test if ctx.alpha_test is not None else ctx.alpha_per_look) / split
        q = LATENCY_METRICS.get(gate.metric)
        weak = PERCENTILE_NOTE if q is not None else MEAN_NOTE  # a point comparison's caveat
        pace = Pace(ctx.look, ctx.horizon)
        checks: list[Result] = []
        for bound, is_max in ((criteria.max, True), (criteria.min, False)):
            if bound is None:
                continue
            if q is not None and candidate.latency is not None and candidate.latency.total > 0:
                checks.append(
                    _latency_bound(label, candidate.latency, q, bound, is_max, alpha, pace)
                )
                continue
            m = measure(gate, candidate, "candidate", 0.0)
            if isinstance(m, str):
                return Result(Outcome.HOLD, m)
            kind = kind_of(gate, m)
            if isinstance(m, Counts):
                one = one_sample_rows(gate, ctx.intervals) if ctx.intervals else []
                disp = one_sample(one) if ctx.intervals else NONE
                checks.append(_rate_bound(label, kind, m, bound, is_max, alpha, pace, disp, one))
                continue
            short = _tail_short(gate, candidate)
            if short is not None:
                reason = (
                    f"candidate {label} {formatter(kind)(m.value)}: {short} more requests needed "
                    f"before a provider percentile means anything"
                )
                return Result(Outcome.HOLD, reason, {"needed_requests": short})
            checks.append(_point(label, kind, m, bound, is_max, weak))
        if margin is not None:
            ch, bh = candidate.latency, baseline.latency
            if q is not None and ch is not None and bh is not None and ch.total and bh.total:
                if ch.bounds != bh.bounds:
                    ch = _rebucket(ch, bh.bounds)
                if q == 0.5:
                    checks.append(_median_vs_baseline(label, ch, bh, margin, worse, alpha, q, pace))
                else:
                    checks.append(_tail_vs_baseline(label, ch, bh, margin, worse, alpha, q, pace))
            else:
                pair = measure_both(gate, candidate, baseline, 0.0)
                if isinstance(pair, str):
                    return Result(Outcome.HOLD, pair)
                mc, mb = pair
                kind = kind_of(gate, mc)
                if isinstance(mc, Counts) and isinstance(mb, Counts):
                    rows = two_sample_rows(gate, ctx.intervals) if ctx.intervals else []
                    before = counts_of(gate, ctx.baseline_history) if rows else []
                    disp = two_sample(rows, before) if ctx.intervals else NONE
                    checks.append(
                        _rates_vs_baseline(
                            label, kind, mc, mb, margin, worse, alpha, pace, disp, rows
                        )
                    )
                else:
                    assert isinstance(mc, Estimate) and isinstance(mb, Estimate)
                    short = _tail_short(gate, candidate, baseline)
                    if short is not None:
                        reason = (
                            f"{short} more requests needed before provider percentiles of "
                            f"{label} mean anything"
                        )
                        return Result(Outcome.HOLD, reason, {"needed_requests": short})
                    checks.append(_points_vs_baseline(label, kind, mc, mb, margin, worse, weak))
        return combine(checks)


def _rebucket(hist: LatencyHistogram, bounds: tuple[float, ...]) -> LatencyHistogram:
    """``hist`` moved onto ``bounds`` (each bucket's count to the bucket holding its midpoint)."""
    counts = [0] * (len(bounds) + 1)
    for v, k in zip(_midpoints(hist.bounds), hist.counts, strict=True):
        if k:
            counts[bisect.bisect_left(bounds, v)] += k
    return LatencyHistogram(bounds, counts)
