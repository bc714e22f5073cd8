"""The A/B winner test: is the candidate *better* than the baseline on the ``metric`` gate, by
how much, and can a lift worth shipping (``min_effect``) still be there?

Two-sided and always valid (safe however often it is looked at), in the spirit of Optimizely's
and Netflix's sequential tests: a **mixture SPRT on the log ratio** of the two arms' rates or
means, ``θ = log(m_c / m_b)``, with Robbins' normal mixture over ``θ`` (prior ``N(0, τ²)``).
With the estimate ``L = log(m̂_c / m̂_b)`` and its variance ``V`` (delta method), the mixture
likelihood ratio against a null value ``θ0`` is::

    Λ(θ0) = sqrt(V / (V + τ²)) · exp((L - θ0)² τ² / (2 V (V + τ²)))

a non-negative (super)martingale under ``θ = θ0`` in the Gaussian limit of the estimate's path;
by Ville's inequality it ever reaches ``1/alpha`` with probability at most ``alpha``. Inverted,
the values it does not reject form the always-valid interval::

    L ± sqrt(V (V + τ²) / τ² · (2 log(1/alpha) + log((V + τ²) / V)))

which covers the true log ratio at every look at once with probability ``1 - alpha``, and
``p = min(1, 1/Λ(0))`` is an always-valid p-value (``P(p_T ≤ alpha) ≤ alpha`` at any stopping
time ``T``, by optional stopping). The relative lift is ``exp(θ) - 1`` (or ``1 - exp(θ)`` when
better is lower), so its interval is the interval of ``θ`` mapped through a monotone function.
``τ`` is the mixture's scale, set from ``min_effect`` (``τ = 2 log(1 + min_effect)``): the
interval is then tightest about where a lift of that size is told from none, and larger lifts
are found sooner than with ``τ = log(1 + min_effect)``.

Decisions (``alpha``: the gate's share of the budget, ``alpha / (gates × stages)`` as for any
deciding gate, :class:`~mlrollout.analysis.gateset.GateSet`):

- **won** (PASS): the interval of the lift lies above 0;
- **no worthwhile lift** (FAIL, the baseline is kept): its upper end is below ``min_effect``
  (which includes "worse"); a lift established above 0 is a win even when it is small;
- otherwise undecided (CONTINUE); fewer than ``min_requests`` per arm, too few conversions, or
  too few intervals to estimate a mean's variance: HOLD. No data never passes.

A false winner needs the interval's lower end to cross 0 under no lift: at most about
``alpha / 2``; a missed worthwhile lift needs its upper end to cross under ``min_effect``: at
most about ``alpha / 2`` too.

What it reads (a ``custom`` gate's :class:`~mlrollout.contracts.CustomValue` per variant):

- **rates** (``total`` conversions of ``count`` requests, both whole, ``total ≤ count``; also an
  ``error_rate`` gate): the binomial variance, ``V = (1 - p_c) / (n_c p_c) + (1 - p_b) / (n_b
  p_b)``; it waits for :data:`MIN_EVENTS` conversions (and non-conversions) per arm;
- **means** (revenue per request: ``total`` over ``count``): the variance of one observation is
  not in ``CustomValue``, so it is estimated by **batch means** from the stage's per-look
  increments (:attr:`~mlrollout.analysis.rule.LookContext.intervals`): with interval ``k``'s
  count ``n_k`` and mean ``m_k``, ``s² = Σ n_k (m_k - m̄)² / (K - 1)`` per arm, unbiased for the
  per-request variance when requests are independent and their distribution does not change
  over the stage; ``V = s_c² / (n_c m_c²) + s_b² / (n_b m_b²)``. A mean that drifts over the
  stage (a daily cycle) inflates ``s²``: the test gets slower, not looser. It waits for
  :data:`MIN_INTERVALS` intervals with data per arm, and both means must be positive (a
  relative lift of a mean at or below 0 is undefined). Without intervals a mean holds.

The Gaussian limit is what the "always valid" rests on (as in Optimizely's Stats Engine and the
asymptotic confidence sequences of Waudby-Smith et al.); the minimums keep the plug-in variance
out of its smallest samples, and ``benchmarks/winner.py`` measures the false-winner rate.
Pure Python (no numpy at a look).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlrollout.analysis.expected import Expectation
from mlrollout.analysis.rule import LookContext
from mlrollout.analysis.verdict import GateVerdict, Numbers, Outcome
from mlrollout.contracts import Window
from mlrollout.plan.model import Gate
from mlrollout.units import format_duration

#: What ``plan preview`` (and the docs) call the method.
METHOD = (
    "two-sided mixture SPRT on the log ratio of the arms' rates or means "
    "(Robbins' normal mixture, scaled to min_effect; always valid)"
)
#: Conversions (and non-conversions) per arm before a rate is judged.
MIN_EVENTS = 10
#: Intervals with data per arm before a mean's variance is estimated (batch means).
MIN_INTERVALS = 20
#: The mixture's scale in units of ``log(1 + min_effect)`` (tuned by ``benchmarks/winner.py``:
#: against 1x, twice finds +5 % and +2 % lifts 30 % and 13 % sooner, and rules out a lift of
#: ``min_effect`` about as soon).
SCALE_FACTOR = 2.0
#: The mixture's scale when ``min_effect`` is 0 (as for a relative lift of 1 %).
DEFAULT_SCALE = SCALE_FACTOR * math.log(1.01)


@dataclass(frozen=True)
class Arm:
    """One variant's metric: its ``value`` (a rate or a mean), ``n`` observations, and the
    variance of one observation."""

    value: float
    n: float
    variance: float
    events: float | None = None  # a rate's conversions


@dataclass(frozen=True)
class Interval:
    """The always-valid estimate of the log ratio ``θ = log(m_c / m_b)`` at one look."""

    estimate: float
    variance: float
    radius: float
    log_lr: float  # log Λ(0): the evidence against "no difference"

    @property
    def low(self) -> float:
        return self.estimate - self.radius

    @property
    def high(self) -> float:
        return self.estimate + self.radius

    @property
    def p_value(self) -> float:
        return min(1.0, math.exp(-self.log_lr)) if self.log_lr > 0 else 1.0


def scale_of(min_effect: float) -> float:
    """The mixture's prior scale ``τ`` on the log ratio for ``min_effect`` (a relative lift)."""
    return SCALE_FACTOR * math.log1p(min_effect) if min_effect > 0 else DEFAULT_SCALE


def radius(variance: float, alpha: float, tau: float) -> float:
    """Half-width of the always-valid interval of the log ratio (Robbins' normal mixture)."""
    if not variance > 0:
        return math.inf
    t2 = tau * tau
    return math.sqrt(
        variance * (variance + t2) / t2 * (2 * math.log(1 / alpha) + math.log1p(t2 / variance))
    )


def interval(estimate: float, variance: float, alpha: float, tau: float) -> Interval:
    """The look's interval and its evidence against no difference."""
    t2 = tau * tau
    log_lr = 0.5 * math.log(variance / (variance + t2)) + estimate * estimate * t2 / (
        2 * variance * (variance + t2)
    )
    return Interval(estimate, variance, radius(variance, alpha, tau), log_lr)


def information_needed(target: float, alpha: float, tau: float) -> float:
    """The information ``1/V`` at which the interval's radius comes down to ``target``."""
    if target <= 0:
        return math.inf
    low, high = 1e-12, 1e18
    for _ in range(200):
        mid = math.sqrt(low * high)
        if radius(1 / mid, alpha, tau) > target:
            low = mid
        else:
            high = mid
        if high / low < 1 + 1e-9:
            break
    return high


# ------------------------------------------------------------------------------------ reading


def _custom(window: Window, name: str) -> tuple[float, float] | None:
    value = window.custom.get(name)
    if value is None:
        return None
    total, count = float(value.total), float(value.count)
    if not (math.isfinite(total) and math.isfinite(count)) or count <= 0:
        return None
    return total, count


def _pair(gate: Gate, window: Window) -> tuple[float, float] | None:
    """(total, count) of the gate's metric in one window."""
    if gate.metric == "error_rate":
        if window.errors is None or not window.requests:
            return None
        return float(window.errors), float(window.requests)
    return _custom(window, gate.name)


def _is_count(total: float, count: float) -> bool:
    return total.is_integer() and count.is_integer() and 0 <= total <= count


def batch_variance(increments: list[tuple[float, float]]) -> tuple[float, int]:
    """The per-observation variance from per-interval (total, count) pairs (batch means):
    ``Σ n_k (m_k - m̄)² / (K - 1)``, and ``K`` (the intervals with data)."""
    rows = [(t, n) for t, n in increments if n > 0 and math.isfinite(t)]
    k = len(rows)
    if k < 2:
        return math.nan, k
    total, count = sum(t for t, _ in rows), sum(n for _, n in rows)
    mean = total / count
    ss = sum(n * (t / n - mean) ** 2 for t, n in rows)
    return ss / (k - 1), k


@dataclass(frozen=True)
class Arms:
    """Both arms, the metric's kind (``rate`` or ``mean``) and the intervals a mean used."""

    candidate: Arm
    baseline: Arm
    kind: str
    intervals: int | None = None


@dataclass(frozen=True)
class Short:
    """Why the arms cannot be judged yet (HOLD), and how many more requests it needs."""

    reason: str
    needed: int | None = None


def read_arms(gate: Gate, candidate: Window, baseline: Window, ctx: LookContext) -> Arms | Short:
    """The two arms of ``gate`` at one look, or why they cannot be judged yet."""
    need = max(1, ctx.min_requests)
    for who, window in (("candidate", candidate), ("baseline", baseline)):
        if window.error:
            return Short(f"metrics query failed for the {who}: {window.error} (no decision)")
    pc, pb = _pair(gate, candidate), _pair(gate, baseline)
    short = []
    for who, pair in (("candidate", pc), ("baseline", pb)):
        if pair is None:
            short.append(f"no value of {gate.name!r} for the {who}")
        elif pair[1] < need:
            short.append(f"{who} has {pair[1]:.0f} of {need} requests")
    if short or pc is None or pb is None:
        more = need - min(p[1] if p is not None else 0.0 for p in (pc, pb))
        needed = math.ceil(more)
        return Short(f"{'; '.join(short)} ({needed} more needed before any decision)", needed)
    rate = gate.metric == "error_rate" or (_is_count(*pc) and _is_count(*pb))
    if rate:
        arms = []
        for who, (x, n) in (("candidate", pc), ("baseline", pb)):
            if min(x, n - x) < MIN_EVENTS:
                return Short(
                    f"the {who} has {x:.0f} conversions of {n:.0f} requests: at least "
                    f"{MIN_EVENTS} (and {MIN_EVENTS} requests without) before the rates are judged"
                )
            p = x / n
            arms.append(Arm(p, n, p * (1 - p), x))
        return Arms(arms[0], arms[1], "rate")
    arms = []
    used = []
    for who, (t, n), side in (("candidate", pc, 0), ("baseline", pb, 1)):
        mean = t / n
        if not mean > 0:
            return Short(f"the {who}'s mean {mean:.4g} is not positive: no relative lift")
        rows = [p for p in (_pair(gate, iv[side]) for iv in ctx.intervals) if p is not None]
        var, k = batch_variance(rows)
        used.append(k)
        if k < MIN_INTERVALS or not var > 0:
            why = (
                "no per-look increments (the mean's variance is estimated from them)"
                if not ctx.intervals
                else f"{k} of {MIN_INTERVALS} intervals with data for the {who}"
            )
            return Short(f"{why}: the mean's variance is not known yet (no decision)")
        arms.append(Arm(mean, n, var))
    return Arms(arms[0], arms[1], "mean", min(used))


# ----------------------------------------------------------------------------------- judging


def _pct(value: float) -> str:
    """A relative lift in percent with its sign: ``+3.1 %``, ``−0.4 %``."""
    if not math.isfinite(value):
        return "+∞ %" if value > 0 else "−∞ %"
    pct = abs(value) * 100
    text = f"{pct:.2g}" if pct < 1 else f"{pct:.1f}" if pct < 100 else f"{pct:.3g}"
    return f"{'−' if value < 0 else '+'}{text} %"


def _effect(value: float) -> str:
    """A ``min_effect`` as the plan wrote it: ``1 %``, ``0.5 %``."""
    return f"{value * 100:.3g} %"


def _confidence(alpha: float) -> str:
    return f"{math.floor((1.0 - alpha) * 10000) / 100:g} %"


def _p(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else f"= {p:.1g}" if p < 0.01 else f"= {p:.2g}"


def lift_of(theta: float, better: str) -> float:
    """The relative lift (positive: the candidate is better) at log ratio ``theta``."""
    if better == "increase":
        return math.expm1(theta) if theta < 700 else math.inf
    return -math.expm1(theta) if theta < 700 else -math.inf


def evaluate(
    gate: Gate, candidate: Window, baseline: Window, ctx: LookContext, *, min_effect: float
) -> GateVerdict:
    """The winner test on ``gate`` at one look (cumulative windows of the stage)."""
    alpha = ctx.alpha_test if ctx.alpha_test is not None else ctx.alpha_per_look
    numbers: Numbers = {"alpha": alpha, "min_effect": min_effect}
    if candidate.requests is not None:
        numbers["candidate_requests"] = candidate.requests
    if baseline.requests is not None:
        numbers["baseline_requests"] = baseline.requests
    read = read_arms(gate, candidate, baseline, ctx)
    if isinstance(read, Short):
        if read.needed is not None:
            numbers["needed_requests"] = read.needed
        error = next((w.error for w in (candidate, baseline) if w.error), None)
        return GateVerdict(
            gate.name, gate.metric, Outcome.HOLD, read.reason, numbers, gate.dry_run, error
        )
    cand, base, kind, used = read.candidate, read.baseline, read.kind, read.intervals
    # better is the opposite of the way that is worse (conversion: direction decrease)
    better = "decrease" if gate.worse_when == "increase" else "increase"
    tau = scale_of(min_effect)
    variance = cand.variance / (cand.n * cand.value**2) + base.variance / (base.n * base.value**2)
    est = interval(math.log(cand.value / base.value), variance, alpha, tau)
    lift = lift_of(est.estimate, better)
    ends = sorted((lift_of(est.low, better), lift_of(est.high, better)))
    low, high = ends
    numbers |= {
        "lift": lift,
        "lift_low": low,
        "lift_high": high,
        "p_value": est.p_value,
        "candidate": cand.value,
        "baseline": base.value,
        "n_candidate": cand.n,
        "n_baseline": base.n,
        "statistic": est.log_lr,
        "boundary": math.log(1 / alpha),
        "log_ratio": est.estimate,
        "log_ratio_se": math.sqrt(variance),
    }
    if kind == "mean":
        numbers |= {
            "sd_candidate": math.sqrt(cand.variance),
            "sd_baseline": math.sqrt(base.variance),
            "intervals": used,
        }
    head = (
        f"{gate.name} {_pct(lift)} [{_pct(low)}, {_pct(high)}] (always-valid "
        f"{_confidence(alpha)} interval), p {_p(est.p_value)}"
    )
    what = "conversions" if kind == "rate" else "mean"
    detail = _detail(kind, cand, base, what)
    if low > 0:
        reason = f"{head}: the candidate wins ({detail})"
        outcome = Outcome.PASS
    elif high < min_effect:
        worse = " (the candidate is worse)" if high < 0 else ""
        reason = (
            f"no lift of at least {_effect(min_effect)}: lift {_pct(lift)} "
            f"[{_pct(low)}, {_pct(high)}]{worse}, always-valid {_confidence(alpha)} interval, "
            f"p {_p(est.p_value)} ({detail}): the baseline stays"
        )
        outcome = Outcome.FAIL
    else:
        more = _more_requests(est, lift, low, high, min_effect, better, alpha, tau, cand, base)
        if more is not None:
            numbers["needed_requests"] = more
        tail = f"; about {more:,} more requests per arm" if more else ""
        reason = (
            f"{head}: undecided (a winner once the interval is above 0, none once it is below "
            f"+{_effect(min_effect)}{tail}; {detail})"
        )
        outcome = Outcome.CONTINUE
    return GateVerdict(gate.name, gate.metric, outcome, reason, numbers, gate.dry_run)


def _detail(kind: str, cand: Arm, base: Arm, what: str) -> str:
    if kind == "rate":
        return (
            f"{cand.value * 100:.3g}% vs {base.value * 100:.3g}%, conversions "
            f"{cand.events:.0f}/{cand.n:.0f} vs {base.events:.0f}/{base.n:.0f}"
        )
    return (
        f"{what} {cand.value:.4g} vs {base.value:.4g} over {cand.n:.0f} vs {base.n:.0f}, "
        f"sd {math.sqrt(cand.variance):.3g} vs {math.sqrt(base.variance):.3g} (batch means)"
    )


def _more_requests(
    est: Interval,
    lift: float,
    low: float,
    high: float,
    min_effect: float,
    better: str,
    alpha: float,
    tau: float,
    cand: Arm,
    base: Arm,
) -> int | None:
    """About how many more requests per arm until the interval decides, if the estimate held:
    the radius must shrink below the distance to 0 or to ``min_effect``, whichever is nearer to
    being reached (on the log scale)."""
    to_zero = abs(est.estimate)
    edge = math.log1p(min_effect) if better == "increase" else math.log1p(-min(min_effect, 0.99))
    to_effect = edge - est.estimate if better == "increase" else est.estimate - edge
    target = max(to_zero if lift > 0 else 0.0, to_effect if lift < min_effect else 0.0)
    if not target > 0:
        return None
    info = information_needed(target, alpha, tau)
    n = max(cand.n, base.n)
    factor = info * est.variance
    if not math.isfinite(factor) or factor <= 1:
        return None
    return math.ceil(n * (factor - 1))


# ------------------------------------------------------------------------------------ preview


@dataclass(frozen=True)
class WinnerExpectation(Expectation):
    """What ``plan preview`` says about the winner gate: how long it takes to find a lift of
    ``2 × min_effect`` and to rule out ``min_effect`` when there is no lift."""

    min_effect: float = 0.01
    baseline_rate: float = 0.01

    def text(self, candidate_rps: float | None) -> str:
        parts = []
        for label, n in (
            (f"finds a +{_effect(2 * self.min_effect)} lift", self.pass_requests),
            (f"rules out +{_effect(self.min_effect)} when there is no lift", self.fail_requests),
        ):
            if n is None or not math.isfinite(n):
                continue
            when = f"~{_count(n)} candidate requests"
            if candidate_rps:
                when += f", ~{format_duration(max(1.0, n / candidate_rps))}"
            parts.append(f"{label} after {when}")
        parts.append(f"at a {self.baseline_rate * 100:.3g}% baseline conversion rate")
        return "; ".join(parts)


def _count(n: float) -> str:
    return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1000:.3g}k" if n >= 10_000 else f"{n:.0f}"


def expectation(
    gate: Gate, alpha: float, share: float, min_effect: float, baseline_rate: float = 0.01
) -> WinnerExpectation:
    """Candidate requests to decide: a true lift of ``2 × min_effect`` found (the interval's
    lower end above 0) and no lift told from ``min_effect`` (its upper end below), on the mean
    path of a rate of ``baseline_rate`` at candidate ``share``."""
    share = min(max(share, 1e-3), 0.999)
    tau = scale_of(min_effect)
    p = min(max(baseline_rate, 1e-6), 0.5)
    effect = min_effect if min_effect > 0 else 0.01
    target_win = math.log1p(2 * effect)
    p_c = min(0.999, p * (1 + 2 * effect))
    # information per candidate request: 1 / ((1-p_c)/p_c + (1-p)/p * share/(1-share))
    odds = share / (1 - share)
    win = information_needed(target_win, alpha, tau) * ((1 - p_c) / p_c + (1 - p) / p * odds)
    none = information_needed(math.log1p(effect), alpha, tau) * ((1 - p) / p * (1 + odds))
    return WinnerExpectation(
        METHOD,
        fail_requests=none,
        pass_requests=win,
        fail_effect=f"no lift of at least {_effect(effect)}",
        min_effect=effect,
        baseline_rate=p,
    )
