"""Robust rate tests: how much extra-binomial variation the per-interval counts show.

The rate tests (:mod:`~mlrollout.analysis.sequential`) treat requests as independent. When errors
come in bursts (each arm's rate jumps from one interval to the next), the counts are
over-dispersed and a binomial test reads the noise as a difference. From the stage's per-look
increments (:attr:`~mlrollout.analysis.rule.LookContext.intervals`) this module estimates a
quasi-likelihood dispersion factor ``phi``; the rule divides every log likelihood ratio by it and
widens its intervals by ``sqrt(phi)`` (the effective information is ``I / phi``).

- **Two arms** (``vs_baseline``): given the events of interval ``i``, ``m_i = x_ci + x_bi``, the
  candidate's share is binomial with ``theta_i = n_ci r / (n_ci r + n_bi)`` at the pooled rate
  ratio ``r``. The Pearson estimate is ``sum (x_ci - m_i theta_i)^2 / sum m_i theta_i (1 -
  theta_i)``, corrected for the fitted ``r`` (``1 - 1/K_eff``, ``K_eff`` the effective number of
  intervals). Shocks that hit both arms alike (an incident) leave it at 1.
- **One arm** (an absolute ``max``/``min`` on a rate): the candidate's per-interval counts around
  its pooled rate, ``sum (x_i - n_i p)^2 / sum n_i p (1 - p)``.

The factor used is the largest of these, never below 1:

- the **split's own estimate, shrunk toward 1 and inflated for its few degrees of freedom**: the
  estimate's null noise (its standard deviation under binomial counts, ``sd0``, large while few
  intervals are in) is taken off first, so clean traffic pays almost nothing, and what is left
  is inflated by ``T(df)``, the squared ratio of the t and normal quantiles at the far tail the
  rollback tests work in (a variance estimated from ``K_eff - 1`` intervals has Student tails):
  ``1 + T(df) max(0, estimate - 1 - NOISE_SD sd0)``;
- the **baseline's bursts carried over to the split**: the same shrunk, inflated excess of the
  baseline's own counts around its pooled rate, read as a burst shape (``(phi_b - 1) / v_b =
  1/k``) and turned into the split's ``1 + 2 v 1/k``. The baseline holds most of the events, so
  its bursts show much sooner than the split's, and its noise reaches the split only scaled down
  (by about twice the candidate's share);
- an **early guard** while only a handful of intervals are in (one interval says nothing about
  bursts, and with two or three a burst cannot be told from a regression):
  ``1 + 2 v / (GUARD_SHAPE K_eff^GUARD_POWER)``, weighted by how likely bursts of shape
  ``GUARD_TEST_SHAPE`` still are given the baseline's counts (even prior odds; a clean baseline
  rules them out within a few intervals at high traffic). ``v`` is the split's binomial variance
  per interval, so the guard is about 1 where intervals hold few events.

The **baseline's history** (its per-interval counts in the earlier stages of a rollout,
:attr:`~mlrollout.analysis.rule.LookContext.baseline_history`) is read with the stage's for the
baseline's own estimate and the guard's weight, each group of intervals around a rate of its own
(the rate may have moved between them). A baseline that was clean for many intervals lifts the
guard from a stage's first look; one that was bursty keeps it and carries its shape over at
once. What this assumes: the baseline's bursts are now as they were (a change shows in the
stage's own counts, more slowly).

One arm (``max``/``min``) uses its own estimate and its own guard (``1 + v / ...``).

The price, measured by ``benchmarks/decisions.py``: the first few looks of a stage need more
evidence (a doubling of errors is caught later, a hard failure a look or two later); see
``docs/analysis.md``.

No intervals (API callers, old journals): ``phi = 1``, exactly as before.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from mlrollout.analysis.verdict import Numbers
from mlrollout.contracts import Window
from mlrollout.plan.model import Gate

#: How many standard deviations of an estimate's null noise are taken off before it counts: the
#: baseline's own counts (carried over to the split) ...
NOISE_SD = 0.5
#: ... and the split's own estimate (noisier where it matters: few events per interval; the
#: baseline's bursts show sooner, so the split's own estimate can wait for more evidence).
SPLIT_NOISE_SD = 0.5
#: The early guard: bursts this strong (shape ``k``; per interval, the dispersion they would give
#: at these counts is ``1 + 2 v / k``) are assumed while few intervals are in ...
GUARD_SHAPE = 0.01
#: ... fading as ``1 / K_eff^GUARD_POWER`` ...
GUARD_POWER = 3.0
#: ... and as the baseline's own counts rule out bursts of this shape (its likelihood ratio
#: against no bursts, with even prior odds).
GUARD_TEST_SHAPE = 1.0
#: Below this the verdict does not mention the discount (it still applies).
NOTE_AT = 1.05
#: How many of the baseline's intervals before a stage the engine and :class:`Monitor` keep
#: for it (the latest; read with the stage's for the baseline's own bursts).
HISTORY = 60

# (t_{df} / z)^2 at the one-sided 0.05 % quantile: how much a variance estimated with ``df``
# degrees of freedom must be inflated to keep the normal tail probability there.
_T_DF = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0)
_T_Q = (636.62, 31.599, 12.924, 8.610, 6.869, 5.959, 5.041, 4.587, 4.073, 3.850, 3.646, 3.460,
        3.373)  # fmt: skip
_Z = 3.291
_T_FACTOR = tuple((t / _Z) ** 2 for t in _T_Q)


def t_factor(df: float) -> float:
    """``(t_df / z)^2`` at the far tail, interpolated in ``log df`` (1 beyond the table)."""
    if df <= _T_DF[0]:
        return _T_FACTOR[0]
    if df >= _T_DF[-1]:
        return 1.0 + (_T_FACTOR[-1] - 1.0) * _T_DF[-1] / df
    i = bisect.bisect_right(_T_DF, df) - 1
    t = math.log(df / _T_DF[i]) / math.log(_T_DF[i + 1] / _T_DF[i])
    return _T_FACTOR[i] + (_T_FACTOR[i + 1] - _T_FACTOR[i]) * t


@dataclass(frozen=True)
class Dispersion:
    """The dispersion factor a rate test uses, and what it came from.

    ``factor`` (at least 1) divides the evidence; ``estimate`` is the raw Pearson estimate
    (``None``: fewer than two intervals with events); ``intervals`` counts the intervals with
    events; ``known`` is False when no intervals were given (then ``factor`` is 1)."""

    factor: float = 1.0
    estimate: float | None = None
    intervals: int = 0
    known: bool = False
    #: True when the factor is the early guard's (too few intervals to rule bursts out), not
    #: bursts the counts show.
    guarded: bool = False
    #: How many of the baseline's intervals before the stage were read with the stage's.
    history: int = 0

    @property
    def discounted(self) -> bool:
        return self.factor >= NOTE_AT

    def note(self, noun: str) -> str:
        """``'errors arrive in bursts: evidence discounted ×1.8'`` (empty when not discounted);
        while the early guard sets it, ``'errors: too few intervals yet (3) to rule out bursts:
        evidence discounted ×4.1'`` (clean traffic says nothing of bursts at first)."""
        if not self.discounted:
            return ""
        if self.guarded:
            return (
                f"{noun}: too few intervals yet ({self.intervals}) to rule out bursts: "
                f"evidence discounted ×{self.factor:.2g}"
            )
        return f"{noun} arrive in bursts: evidence discounted ×{self.factor:.2g}"

    def numbers(self) -> Numbers:
        if not self.known:
            return {}
        out: Numbers = {
            "dispersion": self.factor,
            "dispersion_estimate": self.estimate,
            "dispersion_intervals": float(self.intervals),
        }
        if self.history:
            out["dispersion_history"] = float(self.history)
        return out


#: No intervals known: the binomial model as it is.
NONE = Dispersion()


@dataclass(frozen=True)
class _Fit:
    """Pearson residuals of one model summed over intervals: ``squares`` (residuals squared),
    ``v`` and ``v2`` (binomial variances and their squares), ``noise`` (the terms of the
    estimate's null variance), how many intervals had any, and ``expected`` (the squares'
    expectation without bursts: ``v - v2 / v`` per group of intervals, each group's rate
    fitted) over ``groups`` such groups."""

    squares: float = 0.0
    v: float = 0.0
    v2: float = 0.0
    noise: float = 0.0
    used: int = 0
    expected: float = 0.0
    groups: int = 1

    def __add__(self, other: _Fit) -> _Fit:
        """Two groups of intervals, each around its own rate (the baseline before the stage
        and during it: its rate may have moved between them)."""
        if other.used == 0:
            return self
        if self.used == 0:
            return other
        return _Fit(
            self.squares + other.squares,
            self.v + other.v,
            self.v2 + other.v2,
            self.noise + other.noise,
            self.used + other.used,
            self.expected + other.expected,
            self.groups + other.groups,
        )

    @property
    def k_eff(self) -> float:
        """The effective number of intervals, ``(sum v)^2 / sum v^2``."""
        return self.v * self.v / self.v2 if self.v2 > 0 else 0.0

    @property
    def df(self) -> float:
        return max(0.0, self.k_eff - self.groups)

    @property
    def per_interval(self) -> float:
        """The binomial variance of an (effective) interval."""
        return self.v / max(1.0, self.k_eff)

    @property
    def estimate(self) -> float | None:
        """The Pearson estimate, corrected for the fitted rate (``None``: under two intervals)."""
        if self.df <= 0 or self.v <= 0 or self.expected <= 0:
            return None
        return self.squares / self.expected

    def excess(self, noise_sd: float) -> float:
        """The estimate's excess over 1 after ``noise_sd`` standard deviations of its null noise
        are taken off, inflated for its degrees of freedom:
        ``T(df) max(0, estimate - 1 - noise_sd sd0)``."""
        estimate = self.estimate
        if estimate is None:
            return 0.0
        sd0 = math.sqrt(max(self.noise, 0.0)) / self.expected
        return t_factor(self.df) * max(0.0, estimate - 1.0 - noise_sd * sd0)

    def bursts_weight(self) -> float:
        """How likely, against no bursts (even prior odds), bursts of ``GUARD_TEST_SHAPE`` are in
        these counts (1 with no degrees of freedom: nothing is ruled out yet)."""
        estimate = self.estimate
        if estimate is None:
            return 1.0
        alt = 1.0 + self.per_interval / GUARD_TEST_SHAPE
        log_lr = -(self.df / 2.0) * math.log(alt) - self.df * estimate / 2.0 * (1.0 / alt - 1.0)
        lr = math.exp(min(log_lr, 50.0))
        return lr / (lr + 1.0)

    def guard(self, extra: float, weight: float) -> float:
        """The early guard: ``1 + weight extra v / (GUARD_SHAPE K_eff^GUARD_POWER)``."""
        k = max(1.0, self.k_eff)
        return 1.0 + weight * extra * self.per_interval / GUARD_SHAPE / math.pow(k, GUARD_POWER)


def _fit_counts(rows: Sequence[tuple[float, float]]) -> _Fit:
    """One arm's per-interval counts ``(x, n)`` around its pooled rate."""
    x_all = n_all = 0.0
    for x, n in rows:
        if n > 0:
            x_all += x
            n_all += n
    if n_all <= 0:
        return _Fit()
    p = min(max(x_all / n_all, 0.5 / n_all), 1.0 - 0.5 / n_all)
    q = p * (1.0 - p)
    kurt = 1.0 - 6.0 * q
    sq = v = v2 = noise = 0.0
    used = 0
    for x, n in rows:
        if n <= 0:
            continue
        var = n * q
        res = x - n * p
        sq += res * res
        v += var
        v2 += var * var
        noise += 2.0 * var * var + var * kurt
        used += 1
    return _Fit(sq, v, v2, noise, used, v - v2 / v if v > 0 else 0.0)


def two_sample(
    rows: Sequence[tuple[float, float, float, float]],
    history: Sequence[tuple[float, float]] = (),
) -> Dispersion:
    """The dispersion of the candidate's share of each interval's events, ``rows`` of
    ``(x_c, n_c, x_b, n_b)`` (see the module notes). ``history``: the baseline's own counts
    ``(x_b, n_b)`` in intervals before the stage, read with the stage's for the baseline's
    bursts (around a rate of their own)."""
    if not rows:
        return NONE
    xc = nc = xb = nb = 0.0
    for x_c, n_c, x_b, n_b in rows:
        xc += x_c
        nc += n_c
        xb += x_b
        nb += n_b
    if nc <= 0 or nb <= 0:
        return Dispersion(known=True)
    ratio = ((xc + 0.5) / nc) / ((xb + 0.5) / nb)
    # the split's residuals; the baseline's own around its pooled rate (before the stage too)
    s_sq = s_v = s_v2 = s_noise = 0.0
    s_used = 0
    for x_c, n_c, x_b, n_b in rows:
        m = x_c + x_b
        if n_b <= 0 or m <= 0 or n_c <= 0:
            continue
        theta = n_c * ratio / (n_c * ratio + n_b)
        q = theta * (1.0 - theta)
        var = m * q
        res = x_c - m * theta
        s_sq += res * res
        s_v += var
        s_v2 += var * var
        s_noise += 2.0 * var * var + var * (1.0 - 6.0 * q)
        s_used += 1
    split = _Fit(s_sq, s_v, s_v2, s_noise, s_used, s_v - s_v2 / s_v if s_v > 0 else 0.0)
    before = _fit_counts(history)
    alone = _fit_counts([(x_b, n_b) for _, _, x_b, n_b in rows]) + before
    if split.used == 0 or split.v <= 0:
        return Dispersion(1.0, None, split.used, True, history=before.used)
    # the baseline's own bursts, as a shape, carried over to the split: 1 + 2 v / k
    shape = alone.excess(NOISE_SD) / alone.per_interval if alone.per_interval > 0 else 0.0
    shown = max(1.0, 1.0 + split.excess(SPLIT_NOISE_SD), 1.0 + 2.0 * split.per_interval * shape)
    guard = split.guard(2.0, alone.bursts_weight())
    return Dispersion(
        max(shown, guard), split.estimate, split.used, True, guard > shown, history=before.used
    )


def one_sample(rows: Sequence[tuple[float, float]]) -> Dispersion:
    """The dispersion of one arm's per-interval counts, ``rows`` of ``(x, n)``, around its pooled
    rate (see the module notes)."""
    if not rows:
        return NONE
    fit = _fit_counts(rows)
    if fit.used == 0:
        return Dispersion(known=True)
    if fit.v <= 0:
        return Dispersion(1.0, None, fit.used, True)
    shown = max(1.0, 1.0 + fit.excess(NOISE_SD))
    guard = fit.guard(1.0, fit.bursts_weight())
    return Dispersion(max(shown, guard), fit.estimate, fit.used, True, guard > shown)


def _count(gate: Gate, window: Window) -> tuple[float, float] | None:
    """``(events, trials)`` of ``gate``'s rate in one interval, or ``None`` when it has none."""
    if gate.metric == "error_rate":
        if window.errors is None or window.requests is None:
            return None
        if not 0 <= window.errors <= window.requests:
            return None
        return float(window.errors), float(window.requests)
    value = window.custom.get(gate.name)
    if value is None:
        return None
    total, count = float(value.total), float(value.count)
    if not (math.isfinite(total) and math.isfinite(count)) or not 0 <= total <= count:
        return None
    return total, count


def two_sample_rows(
    gate: Gate, intervals: Sequence[tuple[Window, Window]]
) -> list[tuple[float, float, float, float]]:
    """``gate``'s counts ``(x_c, n_c, x_b, n_b)`` in each (candidate, baseline) interval (an
    interval that lacks them is left out)."""
    if gate.metric == "error_rate":  # the common case, inline
        return [
            (c.errors, c.requests, b.errors, b.requests)
            for c, b in intervals
            if c.errors is not None
            and c.requests is not None
            and b.errors is not None
            and b.requests is not None
            and 0 <= c.errors <= c.requests
            and 0 <= b.errors <= b.requests
        ]
    rows = []
    for cand, base in intervals:
        c, b = _count(gate, cand), _count(gate, base)
        if c is not None and b is not None:
            rows.append((c[0], c[1], b[0], b[1]))
    return rows


def counts_of(gate: Gate, windows: Sequence[Window]) -> list[tuple[float, float]]:
    """``gate``'s counts ``(x, n)`` in each window (one that lacks them is left out)."""
    return [c for c in (_count(gate, w) for w in windows) if c is not None]


def one_sample_rows(
    gate: Gate, intervals: Sequence[tuple[Window, Window]]
) -> list[tuple[float, float]]:
    """``gate``'s counts ``(x, n)`` in each interval of the candidate."""
    return counts_of(gate, [cand for cand, _ in intervals])


def two_sample_of(gate: Gate, intervals: Sequence[tuple[Window, Window]]) -> Dispersion:
    """:func:`two_sample` on ``gate``'s counts in each (candidate, baseline) interval (an
    interval that lacks them is left out; none at all: :data:`NONE`)."""
    return two_sample(two_sample_rows(gate, intervals))


def one_sample_of(gate: Gate, intervals: Sequence[tuple[Window, Window]]) -> Dispersion:
    """:func:`one_sample` on ``gate``'s counts in each interval of the candidate."""
    return one_sample(one_sample_rows(gate, intervals))
