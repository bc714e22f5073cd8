"""Tail latency against the baseline on several thresholds of the histogram, as one test.

A ``latency_p99`` (or ``latency_p90``) gate asks whether the candidate's tail is heavier than the
baseline's. One threshold (the baseline's own quantile) uses little of what the histogram holds:
a tail that grows only on its last 2 % shows far more plainly further out (about 4× the
baseline's share beyond its p99.5 where the share beyond its p99 is 2×). So the rollback test
looks at several thresholds at once, the baseline's quantiles at fixed fractions of the gate's
tail share ``1 - q`` (:data:`LEVELS`; for ``p99``: its p98, p99, p99.3, p99.5 and p99.8), each
**rounded up to a bucket bound**, so that a request counts as slower only when its whole bucket
is.

At threshold ``t`` the requests slower than ``t`` are events; given the events seen, each is the
candidate's with probability ``n_c r / (n_c r + n_b)`` (``r`` the ratio of the arms' shares
beyond ``t``), so the baseline's unknown tail drops out: the conditional binomial, a mixture
likelihood ratio over :data:`TAIL_GRID` (a test supermartingale when ``r <= 1``). The combined
evidence is the **weighted average** of the thresholds' likelihood ratios (weights fixed in
advance, summing to 1): an average of test supermartingales is again one, so by Ville's
inequality the combined test reaches ``1/alpha`` with probability at most ``alpha`` when the
candidate's tail is no heavier than the baseline's at any of the thresholds. It costs at most
``log(1/w)`` nats against the best single threshold told in advance, and gains whenever a
further threshold sees a larger ratio. A threshold the baseline cannot place yet (fewer than
:data:`TAIL_EVENTS` of its requests expected beyond it) keeps its weight with a likelihood ratio
of 1. Coarse buckets that round several thresholds to one bound merge them (the same events, the
weights added): with one bound left the test is the single-threshold one, and the verdict says so.

The thresholds move with the baseline's histogram from look to look, as the single threshold
did; ``benchmarks/decisions.py`` measures the false-rollback rate that results (A/A cells). The
latency tests carry no dispersion factor (that is the rate tests'), so there is none to keep
here. The pass test and the absolute bounds stay on the gate's own quantile (see
:mod:`~mlrollout.analysis.sequential`): an absolute ``max`` has one threshold, the bound itself.
Pure Python.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass

from mlrollout.analysis.mixture import bernoulli_log_lr
from mlrollout.contracts import LatencyHistogram


def _log_ratios(pairs: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """``(ratio, weight)`` pairs as ``(log ratio, normalized weight)``: a mixture's grid."""
    total = sum(w for _, w in pairs)
    return tuple((math.log(r), w / total) for r, w in pairs)


#: ``(fraction of the gate's tail share 1 - q, weight)``: the thresholds the rollback test
#: combines. For ``latency_p99``: the baseline's p98, p99, p99.3, p99.5 and p99.8; for
#: ``latency_p90``: its p80, p90, p93, p95 and p98. Tuned on ``benchmarks/decisions.py``'s tail
#: cells (a tail stretched beyond p95 and beyond p98); the weights only move speed, never alpha.
LEVELS: tuple[tuple[float, float], ...] = (
    (2.0, 0.15), (1.0, 0.25), (0.7, 0.2), (0.5, 0.25), (0.2, 0.15),
)  # fmt: skip

#: Baseline requests expected beyond a further threshold before its quantile is used (the gate's
#: own quantile waits for ``_PERCENTILE_TAIL``, 10, as before).
TAIL_EVENTS = 5

#: The alternatives of each threshold's mixture, as ratios of the candidate's share beyond it to
#: the baseline's: further out in the tail a regression shows as a larger ratio than on a rate,
#: so the weight sits on 2×–5× (:data:`~mlrollout.analysis.mixture.FAIL_GRID`: 1.3×–2.7×).
TAIL_GRID = _log_ratios([(1.5, 0.15), (2.0, 0.25), (3.0, 0.25), (5.0, 0.2), (10, 0.1), (50, 0.05)])

#: How the tail method is named (``plan preview``, the docs).
METHOD = (
    "mixture SPRT on requests slower than several of the baseline's tail quantiles, combined "
    "(always valid)"
)


@dataclass(frozen=True)
class Level:
    """One threshold of the combined test."""

    quantile: float  # the baseline quantile it stands for (0.995)
    seconds: float  # the bucket bound it is rounded up to
    weight: float  # its share of the mixture (merged levels add up)
    x_c: int  # the candidate's requests certainly slower than ``seconds``
    x_b: int  # the baseline's
    evidence: float  # log mixture likelihood ratio of this threshold alone
    primary: bool  # holds the gate's own quantile

    def ratio(self, n_c: int, n_b: int) -> float:
        """The candidate's share beyond the threshold over the baseline's."""
        if n_c <= 0:
            return math.nan
        if self.x_b <= 0:
            return math.inf if self.x_c > 0 else math.nan
        return (self.x_c / n_c) / (self.x_b / n_b)


@dataclass(frozen=True)
class TailEvidence:
    levels: tuple[Level, ...]  # the distinct thresholds in use, fastest first
    fail: float  # log of the weighted average of the thresholds' likelihood ratios
    asked: int  # how many thresholds the baseline could place (before merging)
    waiting: float  # the weight of thresholds the baseline cannot place yet (ratio 1)

    @property
    def coarse(self) -> bool:
        """Coarse buckets merged most of the thresholds the baseline's quantiles told apart
        (neighbours such as p99.3 and p99.5 often share a bound of 15 % buckets: not coarse)."""
        return self.asked > 1 and len(self.levels) <= self.asked // 2

    @property
    def primary(self) -> Level:
        return next(level for level in self.levels if level.primary)

    def information(self, n_c: int, n_b: int) -> float:
        """What the calibrated rollback boundary is read at (see
        :mod:`~mlrollout.analysis.calibration`): the information of the gate's own threshold,
        ``events x theta0 (1 - theta0)``, as for the single-threshold test."""
        t0 = n_c / (n_c + n_b) if n_c + n_b > 0 else 0.0
        level = self.primary
        return (level.x_c + level.x_b) * t0 * (1 - t0)


def bound_at_or_above(hist: LatencyHistogram, seconds: float) -> float:
    """The smallest bucket bound at or above ``seconds`` (the last bound beyond them all)."""
    i = min(bisect.bisect_left(hist.bounds, seconds), len(hist.bounds) - 1)
    return hist.bounds[i]


def _quantiles(hist: LatencyHistogram, total: int, qs: list[float]) -> list[float]:
    """``hist.quantile(q)`` for each of the increasing ``qs``, in one pass over the buckets."""
    out: list[float] = []
    bounds, counts = hist.bounds, hist.counts
    i, cumulative = 0, 0
    for q in qs:
        rank = min(max(q * total, 0.0), total - 1e-9)
        while i < len(counts) and not (counts[i] and rank < cumulative + counts[i]):
            cumulative += counts[i]
            i += 1
        if i >= len(bounds):
            out.append(bounds[-1])
            continue
        low = bounds[i - 1] if i > 0 else 0.0
        out.append(low + (bounds[i] - low) * (rank - cumulative + 0.5) / counts[i])
    return out


def _above(counts: list[int]) -> list[int]:
    """``above[i]``: the requests in buckets ``i`` and later (``count_above(bounds[j])`` is
    ``above[j + 1]``)."""
    out = [0] * (len(counts) + 1)
    for i in range(len(counts) - 1, -1, -1):
        out[i] = out[i + 1] + counts[i]
    return out


def tail_evidence(c: LatencyHistogram, b: LatencyHistogram, q: float) -> TailEvidence:
    """The combined rollback evidence of ``c`` against ``b`` (same bounds) for a ``q`` gate."""
    n_c, n_b = c.total, b.total
    theta0 = n_c / (n_c + n_b) if n_c + n_b > 0 else 0.0
    tail = 1.0 - q
    placed: list[tuple[float, float, bool]] = []  # (share beyond, weight, primary)
    waiting = 0.0
    for fraction, weight in LEVELS:
        share = min(tail * fraction, 0.5)
        primary = fraction == 1.0
        if not primary and n_b * share < TAIL_EVENTS:
            waiting += weight  # not placed yet: a likelihood ratio of 1
            continue
        placed.append((share, weight, primary))
    placed.sort(key=lambda p: -p[0])  # increasing quantiles
    values = _quantiles(b, n_b, [1.0 - share for share, _, _ in placed])
    by_bound: dict[int, list[tuple[float, float, bool]]] = {}
    last = len(b.bounds) - 1
    for (share, weight, primary), value in zip(placed, values, strict=True):
        j = min(bisect.bisect_left(b.bounds, value), last)  # rounded up to a bucket bound
        by_bound.setdefault(j, []).append((1.0 - share, weight, primary))
    above_c, above_b = _above(c.counts), _above(b.counts)
    levels = []
    for j in sorted(by_bound):
        members = by_bound[j]
        t = b.bounds[j]
        x_c, x_b = above_c[j + 1], above_b[j + 1]
        ev = bernoulli_log_lr(x_c, x_c + x_b, theta0, TAIL_GRID, up=True)
        primary = any(p for _, _, p in members)
        quantile = next((qq for qq, _, p in members if p), members[0][0])
        weight = sum(w for _, w, _ in members)
        levels.append(Level(quantile, t, weight, x_c, x_b, ev, primary))
    terms = [math.log(level.weight) + level.evidence for level in levels]
    if waiting > 0:
        terms.append(math.log(waiting))
    top = max(terms)
    fail = top if math.isinf(top) else top + math.log(sum(math.exp(v - top) for v in terms))
    return TailEvidence(tuple(levels), fail, len(placed), waiting)


def describe(ev: TailEvidence, n_c: int, n_b: int, fmt: Callable[[float], str]) -> str:
    """``slower than 180/250/400ms: 2.1×/2.4×/3.0× the baseline's share``."""
    texts = [fmt(level.seconds) for level in ev.levels]
    units = {_unit(t) for t in texts}
    if len(units) == 1:
        unit = units.pop()
        bounds = "/".join(t[: len(t) - len(unit)] for t in texts) + unit
    else:
        bounds = "/".join(texts)
    ratios = "/".join(_times(level.ratio(n_c, n_b)) for level in ev.levels)
    return f"slower than {bounds}: {ratios} the baseline's share"


def _times(ratio: float) -> str:
    if math.isnan(ratio):
        return "n/a"
    if math.isinf(ratio):
        return "∞×"
    return f"{ratio:.2g}×" if ratio < 10 else f"{ratio:.0f}×"


def _unit(text: str) -> str:
    return text[len(text.rstrip("abcdefghijklmnopqrstuvwxyzµ")) :]


def tail_numbers(ev: TailEvidence, n_c: int, n_b: int) -> dict[str, float | None]:
    """The verdict's numbers for the thresholds: ``tail_thresholds`` (how many), and per
    threshold ``k`` (fastest first, from 1) ``tail_threshold_k`` (seconds), ``tail_ratio_k`` (the
    candidate's share beyond it over the baseline's) and ``tail_evidence_k`` (its own log LR)."""
    out: dict[str, float | None] = {"tail_thresholds": float(len(ev.levels))}
    for k, level in enumerate(ev.levels, 1):
        out[f"tail_threshold_{k}"] = level.seconds
        out[f"tail_ratio_{k}"] = level.ratio(n_c, n_b)
        out[f"tail_evidence_{k}"] = level.evidence
    return out
