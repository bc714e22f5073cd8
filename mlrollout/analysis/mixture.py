"""Always-valid evidence: discrete mixtures of likelihood ratios (mixture SPRTs), pure Python.

A likelihood ratio ``LR_t = L(alternative) / L(null)`` computed on the data seen up to time ``t``
is a non-negative martingale under the null, and so is any weighted average of such ratios
(weights summing to 1). Ville's inequality then bounds the chance that it *ever* reaches
``1/alpha``, however often it is looked at::

    P_null( sup_t  sum_k w_k LR_t(alt_k)  >=  1/alpha )  <=  alpha

That is what makes these tests valid under continuous monitoring: the engine may look every
10 seconds for hours and the false-alarm rate stays at ``alpha``. The mixture (the grid of
alternatives and its weights) only decides how fast an effect of a given size is found, never the
error rate. Evidence is reported as ``log LR`` (nats); the boundary is ``log(1/alpha)``.

Two families are used:

- :func:`bernoulli_log_lr` — ``x`` successes in ``n`` Bernoulli trials against ``theta0``, the
  alternatives being shifts of the log-odds. The rate tests of :mod:`~mlrollout.analysis.sequential`
  reduce to it: given the errors seen, each error belongs to the candidate with probability
  ``n_c r / (n_c r + n_b)`` where ``r`` is the candidate/baseline rate ratio, so a shift of the
  log-odds is exactly ``log r``.
- :func:`gaussian_log_lr` — an (asymptotically) Gaussian statistic with known information, the
  alternatives being drifts (used for the Mann-Whitney rank statistic on latency).

:func:`normal_cs_radius` is Robbins' normal-mixture confidence sequence, used to print an
always-valid interval next to each estimate (:func:`normal_cs_z`: the same in standard errors).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

#: ``(shift, weight)`` pairs: the mixture's alternatives and their prior weights (sum to 1).
Grid = Sequence[tuple[float, float]]


def _ratio_grid(pairs: Sequence[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    total = sum(w for _, w in pairs)
    return tuple((math.log(r), w / total) for r, w in pairs)


#: Rollback side: regressions as rate (or odds) ratios, weighted toward 1.3×–2.7× (the size of
#: regression a canary exists to catch); large effects need little weight, they pile up evidence
#: fast. A regression under ~1.2× is in the indifference zone of any usual margin.
FAIL_GRID = _ratio_grid(
    [(1.3, 0.2), (1.6, 0.3), (2.0, 0.25), (2.7, 0.13), (5.0, 0.07), (20, 0.03), (100, 0.02)]
)

#: Pass side, as ratios *below the margin's limit* (1.25 = the alternative is the limit / 1.25).
#: Relative margins place a heavy extra weight on "no change at all" (see ``pass_grid``).
PASS_GRID = _ratio_grid(
    [(1.25, 0.15), (1.5, 0.2), (2.0, 0.3), (4.0, 0.2), (10.0, 0.1), (100, 0.05)]
)

#: Sample-ratio mismatch: small shifts of the split's log-odds matter (10 % seen as 8 % is -0.25).
SRM_GRID = tuple(
    (sign * d, w / 2)
    for sign in (1.0, -1.0)
    for d, w in ((0.05, 0.1), (0.1, 0.15), (0.2, 0.25), (0.35, 0.2), (0.6, 0.15), (1.2, 0.1),
                 (3.0, 0.05))
)  # fmt: skip

#: Mann-Whitney drifts, as ``P(candidate slower) - 1/2``.
RANK_GRID = (
    (0.02, 0.1), (0.035, 0.2), (0.05, 0.25), (0.075, 0.2), (0.11, 0.12), (0.17, 0.08),
    (0.27, 0.05),
)  # fmt: skip


#: The grids whose rollback boundaries are calibrated (``benchmarks/calibrate.py``), each with the
#: reference shift that scales its per-look information into the calibration's step ``u``.
CALIBRATED_GRIDS: dict[str, tuple[Grid, float]] = {
    "fail": (FAIL_GRID, math.log(2.0)),
    "rank": (RANK_GRID, 0.05),
    "srm": (SRM_GRID, 0.25),
}


def pass_grid(limit_ratio: float) -> tuple[tuple[float, float], ...]:
    """The pass side for a relative margin whose limit is ``limit_ratio`` (1.25 for +25 %): half
    the weight on "no change" (ratio 1, what a healthy candidate is), half on :data:`PASS_GRID`."""
    if limit_ratio <= 1.0 + 1e-9:
        return PASS_GRID
    no_change = math.log(limit_ratio)
    return ((no_change, 0.5), *((d, w * 0.5) for d, w in PASS_GRID))


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if math.isinf(top):
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf


def bernoulli_log_lr(
    x: float, n: float, theta0: float, grid: Grid, up: bool = True, scale: float = 1.0
) -> float:
    """``log`` of the mixture likelihood ratio for ``x`` successes in ``n`` trials: alternatives
    ``logit(theta) = logit(theta0) ± shift`` (``+`` when ``up``), against ``theta = theta0``.
    ``scale`` (a dispersion factor, at least 1) divides each alternative's log ratio before they
    are mixed (a quasi-likelihood: over-dispersed counts carry ``1/scale`` of the evidence).

    Valid for any ``theta`` on the null's side (a one-sided test): for ``theta < theta0`` each
    ratio with an upward alternative is a super-martingale. Returns ``inf`` when the null is
    impossible (a success with ``theta0 = 0``) and ``0`` with no trials."""
    if n <= 0:
        return 0.0
    if theta0 <= 0.0:
        return math.inf if x > 0 and up else 0.0
    if theta0 >= 1.0:
        return math.inf if x < n and not up else 0.0
    return _mixture(x, n, math.log(theta0 / (1.0 - theta0)), grid, 1.0 if up else -1.0, scale)


def bernoulli_log_lr_two_sided(x: float, n: float, theta0: float, grid: Grid) -> float:
    """As :func:`bernoulli_log_lr` with signed shifts (both directions in one mixture)."""
    if n <= 0:
        return 0.0
    if not 0.0 < theta0 < 1.0:
        return math.inf if (theta0 <= 0 < x) or (theta0 >= 1 and x < n) else 0.0
    return _mixture(x, n, math.log(theta0 / (1.0 - theta0)), grid, 1.0)


def _mixture(x: float, n: float, base: float, grid: Grid, sign: float, scale: float = 1.0) -> float:
    # log L(theta) = x logit(theta) - n softplus(logit(theta)): one softplus per alternative.
    sp0 = _softplus(base)
    if scale == 1.0:
        terms = [
            _log_weight(w) + x * sign * d - n * (_softplus(base + sign * d) - sp0) for d, w in grid
        ]
    else:
        terms = [
            _log_weight(w) + (x * sign * d - n * (_softplus(base + sign * d) - sp0)) / scale
            for d, w in grid
        ]
    top = max(terms)
    if math.isinf(top):
        return top
    exp = math.exp
    return top + math.log(sum([exp(v - top) for v in terms]))


@functools.lru_cache(maxsize=256)
def _log_weight(w: float) -> float:
    return math.log(w)


def _softplus(v: float) -> float:
    """``log(1 + e^v)`` without overflow."""
    return v + math.log1p(math.exp(-v)) if v > 0 else math.log1p(math.exp(v))


def gaussian_log_lr(estimate: float, information: float, grid: Grid, up: bool = True) -> float:
    """``log`` mixture likelihood ratio for an estimate ``~ N(drift, 1/information)`` against
    drift 0, alternatives ``±shift`` (``+`` when ``up``): ``I (d est - d^2/2)`` per drift ``d``.
    Valid in the Brownian (large-sample) approximation of the statistic's path."""
    if information <= 0:
        return 0.0
    sign = 1.0 if up else -1.0
    return _logsumexp(
        [math.log(w) + information * (sign * d * estimate - d * d / 2.0) for d, w in grid]
    )


def normal_cs_radius(information: float, alpha: float, rho: float = 20.0) -> float:
    """Half-width of Robbins' two-sided normal-mixture confidence sequence for an estimate with
    ``information`` (1/variance): valid at every look at once with probability ``1 - alpha``.
    ``rho`` (in units of information) sets where it is tightest."""
    if information <= 0:
        return math.inf
    v = information + rho
    return math.sqrt(v * math.log(v / (rho * alpha * alpha))) / information


def normal_cs_z(information: float, alpha: float) -> float:
    """The normal quantile an always-valid interval uses at this much information (the radius of
    :func:`normal_cs_radius` in standard errors)."""
    return normal_cs_radius(max(information, 1e-9), alpha) * math.sqrt(max(information, 1e-9))


def kl_bernoulli(p: float, q: float) -> float:
    """``KL(Bernoulli(p) || Bernoulli(q))`` in nats (the evidence per trial when ``p`` is true)."""
    out = 0.0
    if p > 0:
        out += p * (math.log(p) - _log(q))
    if p < 1:
        out += (1 - p) * (math.log1p(-p) - _log(1 - q))
    return out
