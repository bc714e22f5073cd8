"""Seeded synthetic traffic for the ``local`` sandbox: pure Python, deterministic, cheap.

Time is cut into buckets of ``bucket`` seconds (the plan's :func:`grid_seconds`; 10 s when a
model is built without a plan) counted from ``origin``, the instant the rollout started (the
candidate was added to the simulated endpoint): bucket ``k`` covers
``[origin + k·B, origin + (k+1)·B)``, i.e. ``[k·B, (k+1)·B)`` of the sandbox's
:class:`~mlrollout.sandbox.world.World` time. For bucket ``k`` and variant ``v`` the numbers
are a pure function of ``(sandbox.seed, v, k)``, the world in that bucket and ``w``, the
time-weighted average of ``v``'s live weight over the bucket (with ``sandbox.users``: the share
of the sticky users the weights assign to ``v``, see :mod:`mlrollout.sandbox.users`):

- requests ~ Poisson(world.requests(bucket) · w / 100) — the traffic profile and ``rps`` events
  integrated exactly over the bucket,
- errors ~ Binomial(requests, error_rate) — with ``error_bursts`` (shape ``k``), the bucket's
  rate is first drawn from a gamma of mean ``error_rate``, so the errors of each 10 s are
  negative-binomial with shape ``k`` (over-dispersed, as bursts are),
- latencies ~ lognormal fitted to ``latency_p50`` / ``latency_p99``, counted on the fixed
  :data:`LATENCY_BOUNDS` by sequential binomials (a multinomial whose total is ``requests``),

with the variant's behaviour in effect at the bucket's start (events applied). Only for what the
variant defines (a plain variant costs what it always did), with ``responses = requests -
errors``:

- each ``custom`` rate: conversions ~ Binomial(requests, rate),
- ``accuracy``: true labels ``"1"``/``"0"`` with share 0.5 among the responses, each prediction
  right with probability ``accuracy`` (a confusion matrix),
- ``feedback``: positive ratings ~ Binomial(responses, feedback) out of ``responses`` rated.

Mirrored (shadow) traffic: a mirror history ``(at, {variant: percent})`` (the platform copying
``percent`` % of the endpoint's live requests to ``variant``, whose answers are dropped) gives the
mirrored variant, in bucket ``k``, a copy of ``m`` % of the live requests, ``m`` the
time-weighted mirrored percent over the bucket: requests ~ Poisson(world.requests(bucket) · m /
100) (a uniform thinning of the live arrivals is Poisson again), answered with the variant's own
behaviour in that bucket (errors with its bursts, latency, custom rates, accuracy) from a random
stream of their own (seeded by ``(seed, v, "mirror", k)``), so mirroring changes no live
variant's numbers. Nobody sees a mirrored answer, so none is rated (no ``feedback``), and the
users' sticky assignment, which only live weights decide, never includes a mirror. The mirrored
requests are published as the variant's metrics (added to whatever live traffic it serves) and
counted apart in :attr:`Records.mirrored`.

Feature flags: a flag history ``(at, {variant: percent})`` — from each instant a flag version
was written on, the share (percent) of the sticky users the real flagd evaluator assigns to each
variant (see :meth:`TrafficModel.flag_shares`) — routes the live traffic instead of the
platform's split: from the first flag version on, ``w`` is the variant's share of the users
under the flag in effect, whatever the weights say (the application sends each user's request
to the variant the flag names); before it, the weight history as above. Every user sends the
same share of the requests, so the users' shares are the requests' shares.

Everything is aggregated counts (:class:`Records`), never one object per request. Each bucket
draws from its own ``random.Random`` seeded with a blake2b hash of ``(seed, v, k)``, so the
same window gives the same numbers in every process, in any query order.

Alignment: a window ``[start, end)`` holds the whole buckets whose *start* lies in ``[start, end)``
(as CloudWatch stamps a period with its start). Windows on bucket boundaries are therefore exactly
additive. A bucket is generated once per effective weight and cached; a window that extends the
previous window of the same variant and start (the cumulative windows of successive looks) only
adds its new buckets, so a rollout's metrics cost is linear in its length (in buckets: the grid
is the coarsest one every wait of the plan falls on) and independent of its rps and its users.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from mlrollout.contracts import LatencyHistogram, Window
from mlrollout.plan.model import LinearStrategy, Plan, Sandbox, SandboxUsers, SandboxVariant
from mlrollout.sandbox.users import UserBase
from mlrollout.sandbox.world import World

#: Seconds per traffic bucket when no plan says otherwise (and the cap at a numeric speed).
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

#: Users a flag is evaluated for when the sandbox simulates none (anonymous, no attributes).
FLAG_USERS_DEFAULT = 10_000
#: Shares of the users by flag version, per user base: ``(digest, key, users) -> shares``;
#: evaluating every user costs about 15 µs each, so each version is evaluated once per process.
_FLAG_SHARES: dict[tuple[str, str, tuple[Any, ...]], dict[str, float]] = {}
_FLAG_SHARES_KEPT = 256


def grid_seconds(plan: Plan) -> float:
    """The traffic grid of ``plan``'s sandbox: the greatest common divisor, in whole seconds, of
    every duration the engine waits on (the analysis interval and delay, each analyze step's
    min and max, pauses, a linear strategy's ``every``, the sandbox events' ``at`` and ``for``),
    at most the interval and at least 1 s; at most :data:`BUCKET` at a numeric ``speed`` (the
    looks of a sped-up wall clock fall anywhere, and the grid is how fresh their data is)."""
    from mlrollout.plan.timeline import expand_steps

    analysis = plan.analysis
    durations = [analysis.interval]
    if analysis.delay > 0:
        durations.append(analysis.delay)
    for step in expand_steps(plan):
        if step.kind == "analyze" and step.window is not None:
            durations += [step.window.min, step.window.max]
        elif step.kind == "pause" and step.pause is not None:
            durations.append(step.pause)
    if isinstance(plan.strategy, LinearStrategy):
        durations.append(plan.strategy.every)
    sandbox = plan.sandbox
    if sandbox is not None:
        for event in sandbox.events:
            durations += [abs(event.at), event.for_ or 0.0]
    grid = 0
    for duration in durations:
        if math.isfinite(duration):
            grid = math.gcd(grid, round(duration))
    grid = max(1, min(grid, math.floor(analysis.interval)))
    if sandbox is not None and sandbox.speed != "max":
        grid = min(grid, int(BUCKET))
    return float(grid)


@dataclass
class Confusion:
    """Labelled responses by true label (``"1"`` positive) and prediction."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    @property
    def labelled(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def correct(self) -> int:
        return self.tp + self.tn

    def add(self, other: Confusion) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.tn += other.tn
        self.fn += other.fn


@dataclass
class Records:
    """What one variant's requests did over a window, as aggregated counts: ``latency`` counts
    on :data:`LATENCY_BOUNDS` (one more for the overflow); ``custom`` maps a custom metric to
    ``(events, requests)`` over the buckets where the variant defines it; ``confusion`` and
    ``feedback`` (``(positive, rated)``) are ``None`` when the variant never simulates them in
    the window. ``mirrored`` of the ``requests`` were mirrored copies (served to no one)."""

    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    custom: dict[str, tuple[int, int]] = field(default_factory=dict)
    confusion: Confusion | None = None
    feedback: tuple[int, int] | None = None
    mirrored: int = 0

    @property
    def responses(self) -> int:
        return self.requests - self.errors

    def copy(self) -> Records:
        return Records(
            self.requests,
            self.errors,
            list(self.latency),
            dict(self.custom),
            None if self.confusion is None else Confusion(**vars(self.confusion)),
            self.feedback,
            self.mirrored,
        )

    @property
    def live(self) -> int:
        """Requests of live traffic (served to users): ``requests`` less the mirrored copies."""
        return self.requests - self.mirrored

    def merge(self, other: Records) -> None:
        """Add ``other``'s counts (in place)."""
        self.requests += other.requests
        self.errors += other.errors
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]
        for name, (events, requests) in other.custom.items():
            old = self.custom.get(name, (0, 0))
            self.custom[name] = (old[0] + events, old[1] + requests)
        if other.confusion is not None:
            if self.confusion is None:
                self.confusion = Confusion()
            self.confusion.add(other.confusion)
        if other.feedback is not None:
            old = self.feedback or (0, 0)
            self.feedback = (old[0] + other.feedback[0], old[1] + other.feedback[1])
        self.mirrored += other.mirrored

    def add(self, bucket: _Bucket) -> None:
        """Add one generated bucket (in place)."""
        self.requests += bucket.requests
        self.errors += bucket.errors
        counts = self.latency
        for i, c in enumerate(bucket.counts, bucket.lo):
            counts[i] += c
        for name, events in bucket.custom:
            old = self.custom.get(name, (0, 0))
            self.custom[name] = (old[0] + events, old[1] + bucket.requests)
        if bucket.confusion is not None:
            if self.confusion is None:
                self.confusion = Confusion()
            self.confusion.add(bucket.confusion)
        if bucket.feedback is not None:
            old = self.feedback or (0, 0)
            self.feedback = (old[0] + bucket.feedback[0], old[1] + bucket.feedback[1])
        if bucket.mirrored:
            self.mirrored += bucket.requests

    def window(self) -> Window:
        """The normalized window (custom metrics are filled by the metrics source, by gate)."""
        return Window(
            requests=self.requests,
            errors=self.errors,
            latency=LatencyHistogram(LATENCY_BOUNDS, list(self.latency)),
        )


@dataclass(slots=True)
class _Bucket:
    requests: int
    errors: int
    lo: int  # first histogram bin
    counts: list[int]  # histogram counts from ``lo`` on
    custom: tuple[tuple[str, int], ...] = ()
    confusion: Confusion | None = None
    feedback: tuple[int, int] | None = None
    mirrored: bool = False  # mirrored copies, not live traffic


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
    if n <= 30:  # one uniform per trial (a plain loop: this is the sandbox's inner loop)
        draw, hits = rng.random, 0
        for _ in range(n):
            if draw() < p:
                hits += 1
        return hits
    if p > 0.5:
        return n - _binomial(rng, n, 1.0 - p)
    mean = n * p
    if mean < 10:
        return min(n, _poisson(rng, mean))
    return min(n, max(0, round(rng.gauss(mean, math.sqrt(mean * (1.0 - p))))))


def _latency_conditionals(p50: float, p99: float) -> tuple[int, list[float]]:
    """First bin and, per bin from there, P(bin | not in an earlier bin) of the fitted lognormal;
    the last one is 1 (it takes what remains)."""
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
    """Synthetic per-variant traffic of one simulated endpoint whose rollout started at
    ``origin``, on a grid of ``bucket`` seconds."""

    def __init__(self, sandbox: Sandbox, origin: float, bucket: float = BUCKET) -> None:
        if not bucket > 0:
            raise ValueError(f"a traffic bucket lasts more than 0 s, got {bucket!r}")
        self.sandbox = sandbox
        self.origin = origin
        self.bucket = float(bucket)
        self.world = World(sandbox)
        self.users = None if sandbox.users is None else UserBase(sandbox.users, sandbox.seed)
        self._flag_users: UserBase | None = self.users
        self._latency: dict[tuple[float, float], tuple[int, list[float]]] = {}
        self._buckets: dict[tuple[str, int, float, bool], _Bucket] = {}
        # (variant, first bucket) -> (weights used, records so far); live and mirrored apart
        self._runs: dict[tuple[str, int], tuple[list[float], Records]] = {}
        self._mirror_runs: dict[tuple[str, int], tuple[list[float], Records]] = {}

    @property
    def generated(self) -> int:
        """How many buckets were generated (not served from the cache) so far."""
        return len(self._buckets)

    def bucket_start(self, k: int) -> float:
        return self.origin + k * self.bucket

    def _first_at_or_after(self, t: float) -> int:
        """The first bucket index ``k >= 0`` whose start is at or after ``t``."""
        k = max(0, math.ceil((t - self.origin) / self.bucket))
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

    def user_weights(self, history: History, order: Sequence[str] = ()) -> History:
        """``history`` with each entry's weights replaced by the share (percent) of the sticky
        users they assign to each variant (cumulative in ``order``, then in the entry's own
        order); ``history`` itself without ``sandbox.users``."""
        users = self.users
        if users is None:
            return history
        out: list[tuple[float, Mapping[str, float]]] = []
        for at, weights in history:
            names = [n for n in order if n in weights]
            names += [n for n in weights if n not in names]
            shares = users.shares({n: float(weights[n]) for n in names})
            out.append((at, {n: 100.0 * s for n, s in shares.items()}))
        return out

    def flag_users(self) -> UserBase:
        """The users a flag routes: ``sandbox.users``, else :data:`FLAG_USERS_DEFAULT` anonymous
        ones (a flag needs a ``targetingKey`` per request)."""
        if self._flag_users is None:
            users = SandboxUsers(count=FLAG_USERS_DEFAULT)
            self._flag_users = UserBase(users, self.sandbox.seed)
        return self._flag_users

    def flag_shares(
        self, digest: str, key: str, definition: Callable[[], dict[str, Any]]
    ) -> dict[str, float]:
        """Each variant's share (percent) of the users under flag version ``digest`` (flag
        ``key`` of the definition ``definition()`` returns, read only when the version is not
        cached): every user (or the seeded sample, see
        :meth:`~mlrollout.sandbox.users.UserBase.flag_sample`) evaluated by the real flagd
        evaluator, once per version per process."""
        users = self.flag_users()
        identity = (
            users.count,
            users.seed,
            tuple((k, tuple(v)) for k, v in users.attributes.items()),
        )
        cache_key = (digest, key, identity)
        cached = _FLAG_SHARES.get(cache_key)
        if cached is None:
            from mlrollout.flags import FlagEvaluator

            evaluator = FlagEvaluator(definition())
            shares = users.flag_shares(lambda uid, attrs: evaluator.variant(key, uid, attrs))
            cached = {name: 100.0 * share for name, share in shares.items()}
            if len(_FLAG_SHARES) >= _FLAG_SHARES_KEPT:
                _FLAG_SHARES.pop(next(iter(_FLAG_SHARES)))
            _FLAG_SHARES[cache_key] = cached
        return dict(cached)

    def routed(self, history: History, order: Sequence[str] = (), flags: History = ()) -> History:
        """What routes the live traffic over time, as ``(at, {variant: percent})``: the weight
        history (as the users' shares, see :meth:`user_weights`) until the first flag version,
        then the flag history (each version's shares of the users)."""
        shared = self.user_weights(history, order)
        if not flags:
            return shared
        first = flags[0][0]
        return [*((at, ws) for at, ws in shared if at < first), *flags]

    def weights(
        self,
        variant: str,
        start: float,
        end: float,
        history: History,
        order: Sequence[str] = (),
        flags: History = (),
    ) -> list[float]:
        """The time-weighted live weight (percent) of ``variant`` in each bucket of the window
        (with ``sandbox.users``: its share of the users, see :meth:`user_weights`; under a flag
        history, its share of the users the flag assigns it, see :meth:`routed`)."""
        return self._per_bucket(
            variant, self.buckets(start, end), self.routed(history, order, flags)
        )

    def mirror_weights(
        self, variant: str, start: float, end: float, mirror: History
    ) -> list[float]:
        """The time-weighted mirrored percent of ``variant`` in each bucket of the window: the
        share of the endpoint's live requests copied to it (whoever sent them: no users)."""
        return self._per_bucket(variant, self.buckets(start, end), mirror)

    def _per_bucket(self, variant: str, ks: range, history: History) -> list[float]:
        """``variant``'s value in ``history``, time-weighted over each bucket of ``ks``."""
        times = [at for at, _ in history]
        values = [float(ws.get(variant, 0.0)) for _, ws in history]
        out: list[float] = []
        size = self.bucket
        i = bisect.bisect_right(times, self.bucket_start(ks.start)) - 1 if ks else -1
        for k in ks:
            s = self.bucket_start(k)
            e = s + size
            while i + 1 < len(times) and times[i + 1] <= s:
                i += 1
            if i + 1 >= len(times) or times[i + 1] >= e:
                out.append(values[i] if i >= 0 else 0.0)
                continue
            acc, t, j = 0.0, s, i
            while j + 1 < len(times) and times[j + 1] < e:
                acc += (values[j] if j >= 0 else 0.0) * (times[j + 1] - t)
                t, j = times[j + 1], j + 1
            out.append((acc + values[j] * (e - t)) / size)
        return out

    def _conditionals(self, behaviour: SandboxVariant) -> tuple[int, list[float]]:
        key = (behaviour.latency_p50, behaviour.latency_p99)
        cached = self._latency.get(key)
        if cached is None:
            cached = self._latency[key] = _latency_conditionals(*key)
        return cached

    def _bucket(self, variant: str, k: int, weight: float, mirrored: bool = False) -> _Bucket:
        key = (variant, k, weight, mirrored)
        cached = self._buckets.get(key)
        if cached is not None:
            return cached
        t = k * self.bucket  # world time: seconds since the rollout started
        behaviour = self.world.behaviour(variant, t)
        stream = f"{variant}\x1fmirror" if mirrored else variant
        rng = random.Random(_seed(self.sandbox.seed, stream, k))
        expected = self.world.requests(t, t + self.bucket) * weight / 100.0 if weight else 0.0
        requests = _poisson(rng, expected)
        rate = behaviour.error_rate
        if behaviour.error_bursts is not None and rate > 0:
            # Bursts: the error rate of this bucket is gamma-distributed around its mean, so
            # the errors of each 10 s are negative-binomial with shape error_bursts (a bucket of
            # m ten-second pieces sums them: shape m times as large).
            shape = behaviour.error_bursts * self.bucket / BUCKET
            rate = min(1.0, rate * rng.gammavariate(shape, 1.0 / shape))
        errors = _binomial(rng, requests, rate)
        lo, conds = self._conditionals(behaviour)
        counts, remaining = [0] * len(conds), requests
        for i, p in enumerate(conds):
            if not remaining:
                break
            counts[i] = drawn = _binomial(rng, remaining, p)
            remaining -= drawn
        custom: tuple[tuple[str, int], ...] = ()
        confusion = feedback = None
        if behaviour.custom or behaviour.accuracy is not None or behaviour.feedback is not None:
            responses = requests - errors
            custom = tuple(
                (name, _binomial(rng, requests, rate))
                for name, rate in sorted(behaviour.custom.items())
            )
            if behaviour.accuracy is not None:
                positives = _binomial(rng, responses, 0.5)
                negatives = responses - positives
                tp = _binomial(rng, positives, behaviour.accuracy)
                tn = _binomial(rng, negatives, behaviour.accuracy)
                confusion = Confusion(tp=tp, fp=negatives - tn, tn=tn, fn=positives - tp)
            if behaviour.feedback is not None and not mirrored:  # nobody rates a mirror
                feedback = (_binomial(rng, responses, behaviour.feedback), responses)
        self._buckets[key] = result = _Bucket(
            requests, errors, lo, counts, custom, confusion, feedback, mirrored
        )
        return result

    def records(
        self,
        variant: str,
        start: float,
        end: float,
        history: History,
        order: Sequence[str] = (),
        mirror: History = (),
        flags: History = (),
    ) -> Records | None:
        """What ``variant``'s requests did over ``[start, end)`` (whole buckets whose start lies
        in it): its live traffic by the weight ``history`` (or, from its first version on, the
        ``flags`` history), plus its mirrored copies by the ``mirror`` history; ``None`` for a
        variant the sandbox does not describe (no data)."""
        if variant not in self.sandbox.variants:
            return None
        ks = self.buckets(start, end)
        ws = self.weights(variant, start, end, history, order, flags)
        records = self._accumulate(self._runs, variant, ks, ws, mirrored=False)
        if mirror:
            ms = self.mirror_weights(variant, start, end, mirror)
            if any(ms):
                records.merge(self._accumulate(self._mirror_runs, variant, ks, ms, mirrored=True))
        return records

    def _accumulate(
        self,
        runs: dict[tuple[str, int], tuple[list[float], Records]],
        variant: str,
        ks: range,
        ws: list[float],
        *,
        mirrored: bool,
    ) -> Records:
        """The buckets ``ks`` at weights ``ws`` added up, extending the cached run of the same
        variant and first bucket when its weights are a prefix of ``ws``."""
        run = runs.get((variant, ks.start))
        if run is not None and ws[: len(run[0])] == run[0]:
            done, records = len(run[0]), run[1].copy()
        else:
            done, records = 0, Records()
        for k, w in zip(ks[done:], ws[done:], strict=True):
            if w or not mirrored:  # a bucket nothing was mirrored in adds nothing
                records.add(self._bucket(variant, k, w, mirrored))
        if ks and (run is None or len(ws) >= len(run[0])):
            runs[(variant, ks.start)] = (ws, records.copy())
        return records

    def window(
        self,
        variant: str,
        start: float,
        end: float,
        history: History,
        order: Sequence[str] = (),
        mirror: History = (),
        flags: History = (),
    ) -> Window:
        """Requests, errors and latency histogram of ``variant`` over ``[start, end)`` (whole
        buckets whose start lies in it), mirrored copies included. A variant the sandbox does not
        describe has no data."""
        records = self.records(variant, start, end, history, order, mirror, flags)
        return Window() if records is None else records.window()
