"""Seeded synthetic traffic for the ``local`` sandbox: pure Python, deterministic, cheap.

Time is cut into fixed :data:`BUCKET` (10 s) buckets counted from ``origin`` (the simulated
endpoint's creation time): bucket ``k`` covers ``[origin + 10k, origin + 10k + 10)``. For bucket
``k`` and variant ``v`` the numbers are a pure function of ``(sandbox.seed, v, k)``, the variant's
behaviour and ``w``, the time-weighted average of ``v``'s live weight over the bucket:

- requests ~ Poisson(rps · 10 · w / 100),
- errors ~ Binomial(requests, error_rate),
- latencies ~ lognormal fitted to ``latency_p50`` / ``latency_p99``, counted on the fixed
  :data:`LATENCY_BOUNDS` by sequential binomials (a multinomial whose total is ``requests``).

Each bucket draws from its own ``random.Random`` seeded with a blake2b hash of
``(seed, v, k)``, so the same window gives the same numbers in every process, in any query order.

Alignment: a window ``[start, end)`` holds the whole buckets whose *start* lies in ``[start, end)``
(as CloudWatch stamps a period with its start). Windows on bucket boundaries are therefore exactly
additive. A bucket is generated once per effective weight and cached; a window that extends the
previous window of the same variant and start (the cumulative windows of successive looks) only
adds its new buckets, so a rollout's metrics cost is linear in its length.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from statistics import NormalDist

from mlrollout.contracts import LatencyHistogram, Window
from mlrollout.plan.model import Sandbox, SandboxVariant

#: Seconds per traffic bucket.
BUCKET = 10.0
_N_BOUNDS = 80
#: Histogram upper bounds (seconds), log-spaced from 1 ms to 60 s, shared by every sandbox window.
LATENCY_BOUNDS: tuple[float, ...] = tuple(
    float(f"{0.001 * 60_000 ** (i / (_N_BOUNDS - 1)):.4g}") for i in range(_N_BOUNDS)
)
_TAIL = 1e-12  # latency mass below/above this is lumped into the edge bins
_Z99 = NormalDist().inv_cdf(0.99)

#: A weight history: ``(at, {variant: percent})`` entries sorted by ``at``; an entry holds until
#: the next one; before the first every variant has weight 0.
History = Sequence[tuple[float, Mapping[str, float]]]
# One generated bucket: requests, errors, first histogram bin, counts from that bin on.
_Bucket = tuple[int, int, int, list[int]]


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:  # Knuth
        k += 1
        p *= rng.random()
    return k


def _binomial(rng: random.Random, n: int, p: float) -> int:
    if n <= 0 or p <= 0:
        return 0
    if p >= 1:
        return n
    if n <= 30:
        return sum(rng.random() < p for _ in range(n))
    if p > 0.5:
        return n - _binomial(rng, n, 1.0 - p)
    mean = n * p
    if mean < 10:
        return min(n, _poisson(rng, mean))
    return min(n, max(0, round(rng.gauss(mean, math.sqrt(mean * (1.0 - p))))))


def _latency_conditionals(behaviour: SandboxVariant) -> tuple[int, list[float]]:
    """First bin and, per bin from there, P(bin | not in an earlier bin) of the fitted lognormal;
    the last one is 1 (it takes what remains)."""
    p50, p99 = behaviour.latency_p50, behaviour.latency_p99
    if p50 <= 0 or p99 <= p50:  # degenerate: every request takes p50
        return bisect.bisect_left(LATENCY_BOUNDS, p50), [1.0]
    mu, sigma, unit = math.log(p50), (math.log(p99) - math.log(p50)) / _Z99, NormalDist()
    survival = [unit.cdf(-(math.log(b) - mu) / sigma) for b in LATENCY_BOUNDS]  # P(X > b)
    lo = next((i for i, s in enumerate(survival) if s < 1 - _TAIL), len(survival))
    hi = next((i for i, s in enumerate(survival) if s < _TAIL), len(survival))
    conds, above = [], 1.0
    for i in range(lo, hi):
        conds.append(1.0 - survival[i] / above)
        above = survival[i]
    conds.append(1.0)
    return lo, conds


def _seed(seed: int, variant: str, k: int) -> int:
    digest = hashlib.blake2b(f"{seed}\x1f{variant}\x1f{k}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class TrafficModel:
    """Synthetic per-variant traffic of one simulated endpoint created at ``origin``."""

    def __init__(self, sandbox: Sandbox, origin: float) -> None:
        self.sandbox = sandbox
        self.origin = origin
        self._latency = {v: _latency_conditionals(b) for v, b in sandbox.variants.items()}
        self._buckets: dict[tuple[str, int, float], _Bucket] = {}
        # (variant, first bucket) -> (weights used, requests, errors, histogram counts)
        self._runs: dict[tuple[str, int], tuple[list[float], int, int, list[int]]] = {}

    @property
    def generated(self) -> int:
        """How many buckets were generated (not served from the cache) so far."""
        return len(self._buckets)

    def bucket_start(self, k: int) -> float:
        return self.origin + k * BUCKET

    def _first_at_or_after(self, t: float) -> int:
        """The first bucket index ``k >= 0`` whose start is at or after ``t``."""
        k = max(0, math.ceil((t - self.origin) / BUCKET))
        while k > 0 and self.bucket_start(k - 1) >= t:
            k -= 1
        while self.bucket_start(k) < t:
            k += 1
        return k

    def boundary_before(self, t: float) -> float:
        """The last bucket boundary at or before ``t`` (``origin`` if ``t`` precedes it): every
        bucket that starts before it has ended by ``t``."""
        k = self._first_at_or_after(t)
        return self.bucket_start(k if k == 0 or self.bucket_start(k) == t else k - 1)

    def buckets(self, start: float, end: float) -> range:
        """Indices of the buckets a window ``[start, end)`` holds."""
        return range(self._first_at_or_after(start), self._first_at_or_after(end))

    def weights(self, variant: str, start: float, end: float, history: History) -> list[float]:
        """The time-weighted live weight (percent) of ``variant`` in each bucket of the window."""
        times = [at for at, _ in history]
        values = [float(ws.get(variant, 0.0)) for _, ws in history]
        out: list[float] = []
        ks = self.buckets(start, end)
        i = bisect.bisect_right(times, self.bucket_start(ks.start)) - 1 if ks else -1
        for k in ks:
            s = self.bucket_start(k)
            e = s + BUCKET
            while i + 1 < len(times) and times[i + 1] <= s:
                i += 1
            if i + 1 >= len(times) or times[i + 1] >= e:
                out.append(values[i] if i >= 0 else 0.0)
                continue
            acc, t, j = 0.0, s, i
            while j + 1 < len(times) and times[j + 1] < e:
                acc += (values[j] if j >= 0 else 0.0) * (times[j + 1] - t)
                t, j = times[j + 1], j + 1
            out.append((acc + values[j] * (e - t)) / BUCKET)
        return out

    def _bucket(self, variant: str, k: int, weight: float) -> _Bucket:
        key = (variant, k, weight)
        cached = self._buckets.get(key)
        if cached is not None:
            return cached
        behaviour = self.sandbox.variants[variant]
        rng = random.Random(_seed(self.sandbox.seed, variant, k))
        requests = _poisson(rng, self.sandbox.rps * BUCKET * weight / 100.0)
        errors = _binomial(rng, requests, behaviour.error_rate)
        lo, conds = self._latency[variant]
        counts, remaining = [0] * len(conds), requests
        for i, p in enumerate(conds):
            if not remaining:
                break
            counts[i] = drawn = _binomial(rng, remaining, p)
            remaining -= drawn
        self._buckets[key] = result = (requests, errors, lo, counts)
        return result

    def window(self, variant: str, start: float, end: float, history: History) -> Window:
        """Requests, errors and latency histogram of ``variant`` over ``[start, end)`` (whole
        buckets whose start lies in it). A variant the sandbox does not describe has no data."""
        if variant not in self.sandbox.variants:
            return Window()
        ks = self.buckets(start, end)
        ws = self.weights(variant, start, end, history)
        run = self._runs.get((variant, ks.start))
        if run is not None and ws[: len(run[0])] == run[0]:
            done, requests, errors, counts = len(run[0]), run[1], run[2], list(run[3])
        else:
            done, requests, errors, counts = 0, 0, 0, [0] * (len(LATENCY_BOUNDS) + 1)
        for k, w in zip(ks[done:], ws[done:], strict=True):
            r, e, lo, part = self._bucket(variant, k, w)
            requests, errors = requests + r, errors + e
            for i, c in enumerate(part, lo):
                counts[i] += c
        if ks and (run is None or len(ws) >= len(run[0])):
            self._runs[(variant, ks.start)] = (ws, requests, errors, list(counts))
        return Window(
            requests=requests, errors=errors, latency=LatencyHistogram(LATENCY_BOUNDS, counts)
        )
