"""API budgets: a token bucket per provider account (or project, or subscription), region, service
and class of call, so that a fleet's rollouts together stay under the platform's documented limits.

A provider's calls go through :func:`mlrollout.adapters.call_mapped`; given a :class:`Spend` it
takes a token before each attempt (waiting on the rollout's clock when the bucket is empty) and
tells the bucket how the call went: a throttled answer halves the bucket's rate (never below a
sixteenth of it), each call that succeeds gives back a thirty-second of the full rate (additive
increase, multiplicative decrease: several processes that share one account settle under its limit
without talking to each other).

The limits (:data:`LIMITS`) are the platforms' published defaults where there is one;
mlrollout takes :func:`current_share` of each (``MLROLLOUT_API_SHARE``, percent, default 50: the
rest is left to the account's other users, the console, other tools). The buckets live in the
process; a runner publishes what they did (:func:`publish`) to the state store at most once a
minute, and ``mlrollout status FLEET`` shows it (:func:`read`).

Nothing here imports a cloud SDK.
"""

from __future__ import annotations

import math
import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlrollout.clock import Clock, SystemClock
from mlrollout.errors import UsageError

if TYPE_CHECKING:
    from mlrollout.state.base import StateStore

#: The environment variable that sets :func:`share` (a percent in 1..100).
SHARE_ENV = "MLROLLOUT_API_SHARE"
#: The percent of each limit used when nothing says otherwise.
DEFAULT_SHARE = 50.0
#: The state store's key of the published figures (namespace, key).
KEY = ("api-budget", "runners")
#: How often (seconds of wall time) a runner publishes, and how long a runner's figures are shown.
PUBLISH_EVERY = 60.0
SHOWN_FOR = 3600.0


@dataclass(frozen=True)
class Limit:
    """A platform's limit for one class of calls: ``rate`` calls a second, ``burst`` at once."""

    rate: float
    burst: float
    source: str


_SAGEMAKER = "SageMaker publishes no control-plane rate; a conservative figure"
_CLOUDWATCH = "CloudWatch service quotas (per account and region)"
_S3 = "S3 request rate per prefix"
_VERTEX = "Vertex AI quota: resource management requests, 600 a minute per region"
_VERTEX_LRO = "Vertex AI quota: long-running operation reads, 60 a minute per region"
_MONITORING = "Cloud Monitoring: no per-second figure for reads; a conservative figure"
_ARM_READ = "Azure Resource Manager token bucket, subscription reads: 250, refilled 25 a second"
_ARM_WRITE = "Azure Resource Manager token bucket, subscription writes: 200, refilled 10 a second"
_ARM_DELETE = "Azure Resource Manager token bucket, subscription deletes: 200, refilled 10 a second"
_BLOB = "Azure Storage account request rate (20,000 a second)"

#: (service, class) -> Limit. A class is an API name for the services that limit each API on its
#: own (CloudWatch), else ``read``, ``write`` or ``delete`` (:func:`call_class`).
LIMITS: dict[tuple[str, str], Limit] = {
    ("sagemaker", "read"): Limit(10.0, 20.0, _SAGEMAKER),
    ("sagemaker", "write"): Limit(2.0, 10.0, _SAGEMAKER),
    ("cloudwatch", "GetMetricData"): Limit(50.0, 50.0, _CLOUDWATCH),
    ("cloudwatch", "GetMetricStatistics"): Limit(400.0, 400.0, _CLOUDWATCH),
    ("cloudwatch", "DescribeAlarms"): Limit(9.0, 9.0, _CLOUDWATCH),
    ("cloudwatch", "PutMetricAlarm"): Limit(3.0, 3.0, _CLOUDWATCH),
    ("cloudwatch", "DeleteAlarms"): Limit(3.0, 3.0, _CLOUDWATCH),
    ("cloudwatch", "PutMetricData"): Limit(500.0, 500.0, _CLOUDWATCH),
    ("cloudwatch", "read"): Limit(9.0, 9.0, _CLOUDWATCH),
    ("cloudwatch", "write"): Limit(3.0, 3.0, _CLOUDWATCH),
    ("s3", "read"): Limit(5500.0, 5500.0, _S3),
    ("s3", "write"): Limit(3500.0, 3500.0, _S3),
    ("s3", "delete"): Limit(3500.0, 3500.0, _S3),
    ("aiplatform", "read"): Limit(10.0, 20.0, _VERTEX),
    ("aiplatform", "write"): Limit(10.0, 20.0, _VERTEX),
    ("aiplatform", "delete"): Limit(10.0, 20.0, _VERTEX),
    ("aiplatform", "operation"): Limit(1.0, 5.0, _VERTEX_LRO),
    ("monitoring", "read"): Limit(10.0, 20.0, _MONITORING),
    ("arm", "read"): Limit(25.0, 250.0, _ARM_READ),
    ("arm", "write"): Limit(10.0, 200.0, _ARM_WRITE),
    ("arm", "delete"): Limit(10.0, 200.0, _ARM_DELETE),
    ("storage", "read"): Limit(20000.0, 20000.0, _BLOB),
    ("storage", "write"): Limit(20000.0, 20000.0, _BLOB),
}
_UNKNOWN = Limit(5.0, 10.0, "no published figure; a conservative one")

_READS = ("describe", "list", "get", "head", "read", "search", "query", "lookup", "batch_get")
_DELETES = ("delete", "remove")


def call_class(service: str, operation: str) -> str:
    """The class of ``operation`` (an SDK method or API name such as ``describe_endpoint``,
    ``GetMetricData``, ``begin_create_or_update``) on ``service``: its API name where the service
    limits that API on its own (CloudWatch), else ``read``, ``write`` or ``delete``."""
    api = "".join(part[:1].upper() + part[1:] for part in operation.split("_"))
    if (service, api) in LIMITS:
        return api
    if service == "aiplatform" and operation == "get_operation":
        return "operation"
    name = operation.lower().removeprefix("begin_")
    if name.startswith(_DELETES):
        return "delete"
    if name.startswith(_READS):
        return "read"
    return "write"


def limit_of(service: str, klass: str) -> Limit:
    found = LIMITS.get((service, klass))
    if found is None and klass == "delete":
        found = LIMITS.get((service, "write"))
    return found or _UNKNOWN


# ----------------------------------------------------------------------------------- share

_share: float | None = None


def parse_share(text: str, *, where: str) -> float:
    """A share written as a percent in 1..100 (``50`` or ``50%``); a :class:`UsageError` naming
    ``where`` (the option or the variable) otherwise."""
    raw = text.strip().removesuffix("%").strip()
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 1.0 <= value <= 100.0):
        raise UsageError(
            f"{where}: {text!r} is not a percent in 1..100",
            hint="the part of each platform limit mlrollout may use, e.g. 50 (the default)",
        )
    return value


def current_share() -> float:
    """The percent of each limit this process uses: :func:`configure`'s, else
    ``MLROLLOUT_API_SHARE``'s, else 50."""
    if _share is not None:
        return _share
    text = os.environ.get(SHARE_ENV)
    return parse_share(text, where=SHARE_ENV) if text else DEFAULT_SHARE


def configure(*, share: float | None) -> None:
    """Set the share (percent, 1..100; None: back to the environment's) for the buckets made from
    now on and for the ones there are (their rate is scaled at once)."""
    global _share
    if share is not None and not (1.0 <= share <= 100.0):
        raise UsageError(f"an API share is a percent in 1..100, got {share!r}")
    _share = share
    with _LOCK:
        for each in _BUCKETS.values():
            each.rescale(current_share())


# ---------------------------------------------------------------------------------- bucket


@dataclass
class Bucket:
    """One token bucket: ``limit`` scaled by the share; thread-safe. Tokens are reserved (they
    may go below zero): a caller waits for its own token outside the lock."""

    provider: str
    scope: str
    service: str
    klass: str
    limit: Limit
    percent: float
    rate: float = 0.0
    tokens: float = 0.0
    last: float | None = None
    calls: int = 0
    waits: int = 0
    waited: float = 0.0
    throttled: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.rate = self.full_rate
        self.tokens = self.capacity

    @property
    def full_rate(self) -> float:
        return self.limit.rate * self.percent / 100.0

    @property
    def capacity(self) -> float:
        return max(1.0, self.limit.burst * self.percent / 100.0)

    def rescale(self, percent: float) -> None:
        with self._lock:
            ratio = self.rate / self.full_rate if self.full_rate > 0 else 1.0
            self.percent = percent
            self.rate = self.full_rate * ratio
            self.tokens = min(self.tokens, self.capacity)

    def reserve(self, now: float) -> float:
        """Take a token at ``now``; the seconds to wait before using it (0: at once)."""
        with self._lock:
            if self.last is not None and now > self.last:
                self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
            self.last = now if self.last is None else max(self.last, now)
            self.tokens -= 1.0
            self.calls += 1
            if self.tokens >= 0:
                return 0.0
            wait = -self.tokens / self.rate
            self.waits += 1
            self.waited += wait
            return wait

    def slow_down(self) -> None:
        """The platform throttled a call: halve the rate (at least a sixteenth of the full one)
        and drop what is left in the bucket."""
        with self._lock:
            self.throttled += 1
            self.rate = max(self.full_rate / 16.0, self.rate / 2.0)
            self.tokens = min(self.tokens, 0.0)

    def succeeded(self) -> None:
        with self._lock:
            if self.rate < self.full_rate:
                self.rate = min(self.full_rate, self.rate + self.full_rate / 32.0)

    def row(self) -> dict[str, Any]:
        with self._lock:
            return {
                "provider": self.provider,
                "scope": self.scope,
                "service": self.service,
                "class": self.klass,
                "limit_per_s": self.limit.rate,
                "burst": self.limit.burst,
                "share_percent": self.percent,
                "rate_per_s": round(self.rate, 4),
                "calls": self.calls,
                "waits": self.waits,
                "waited_s": round(self.waited, 3),
                "throttled": self.throttled,
                "source": self.limit.source,
            }


_LOCK = threading.Lock()
#: (provider, scope, service, class, timeline) -> Bucket; the timeline is None for the wall
#: clock, else the id of the clock (whose bucket keeps it alive, so the id is never reused).
_BUCKETS: dict[tuple[str, str, str, str, int | None], Bucket] = {}
_CLOCKS: dict[int, Clock] = {}


def bucket(
    provider: str, scope: str, service: str, klass: str, clock: Clock | None = None
) -> Bucket:
    """The process's bucket for calls of ``klass`` to ``service`` of ``provider`` in ``scope``
    (an account or project and a region), made on first use. Every rollout on the wall clock
    (:class:`~mlrollout.clock.SystemClock`) shares it; a rollout on a clock of its own (virtual
    or sped-up time: tests, rehearsals) gets its own, since a bucket refills on one timeline."""
    timeline = None if clock is None or isinstance(clock, SystemClock) else id(clock)
    key = (provider, scope, service, klass, timeline)
    with _LOCK:
        found = _BUCKETS.get(key)
        if found is None:
            found = _BUCKETS[key] = Bucket(
                provider, scope, service, klass, limit_of(service, klass), current_share()
            )
            if timeline is not None and clock is not None:
                _CLOCKS[timeline] = clock
        return found


def reset() -> None:
    """Forget every bucket, the configured share and the last publication (tests; a new process
    starts so)."""
    global _share, _published_at
    with _LOCK:
        _BUCKETS.clear()
        _CLOCKS.clear()
    _share = None
    _published_at = None


def snapshot() -> list[dict[str, Any]]:
    """What the buckets of the process have done, one row per provider, scope, service and
    class (the buckets of several timelines summed), in a stable order."""
    with _LOCK:
        buckets = list(_BUCKETS.values())
    return merge([b.row() for b in buckets])


def merge(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` summed per provider, scope, service and class: calls, waits, throttled answers,
    the lowest current rate, and the ``runners`` they came from (when they name them)."""
    merged: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["provider"], row["scope"], row["service"], row["class"])
        seen = merged.get(key)
        if seen is None:
            merged[key] = {**row, **({"runners": list(row["runners"])} if "runners" in row else {})}
            continue
        for total in ("calls", "waits", "throttled"):
            seen[total] = seen[total] + row[total]
        seen["waited_s"] = round(seen["waited_s"] + row["waited_s"], 3)
        seen["rate_per_s"] = min(seen["rate_per_s"], row["rate_per_s"])
        for name in row.get("runners", ()):
            if name not in seen.setdefault("runners", []):
                seen["runners"].append(name)
    return [merged[key] for key in sorted(merged)]


# ----------------------------------------------------------------------------------- spend


@dataclass(frozen=True)
class Spend:
    """A bucket and the clock a caller waits on (the rollout's: virtual in tests)."""

    bucket: Bucket
    clock: Clock

    def take(self) -> None:
        wait = self.bucket.reserve(self.clock.now())
        if wait > 0:
            self.clock.sleep(wait)


@dataclass(frozen=True)
class Meter:
    """What an adapter holds: its provider, scope (account or project and region) and clock;
    :meth:`spend` picks the bucket of one call."""

    provider: str
    scope: str
    clock: Clock

    def spend(self, service: str, operation: str) -> Spend:
        klass = call_class(service, operation)
        return Spend(bucket(self.provider, self.scope, service, klass, self.clock), self.clock)


def budgeted(
    fn: Callable[[], Any], spend: Spend, throttled: Callable[[BaseException], bool]
) -> Callable[[], Any]:
    """``fn`` taking a token of ``spend`` before each call, and telling the bucket how it went."""

    def call() -> Any:
        spend.take()
        try:
            result = fn()
        except Exception as exc:
            if throttled(exc):
                spend.bucket.slow_down()
            raise
        spend.bucket.succeeded()
        return result

    return call


# ------------------------------------------------------------------------------- published

_published_at: float | None = None
_publish_lock = threading.Lock()


def process_name() -> str:
    """This process, as its published figures name it (``host:pid``: the buckets are the
    process's, whichever worker of it spent them)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def publish(
    store: StateStore, *, now: float, force: bool = False, runner: str | None = None
) -> bool:
    """Write this process's rows to the state store under ``runner`` (default
    :func:`process_name`), at most once a :data:`PUBLISH_EVERY` unless ``force``, never when the
    process has no bucket. Other runners' rows are kept (those older than :data:`SHOWN_FOR`
    dropped). True when it wrote."""
    global _published_at
    with _publish_lock:
        if not force and _published_at is not None and now - _published_at < PUBLISH_EVERY:
            return False
        rows = snapshot()
        if not rows:
            return False
        _published_at = now
    value = store.get_value(*KEY) or {}
    kept = value.get("runners")
    runners = {
        name: entry
        for name, entry in (kept.items() if isinstance(kept, Mapping) else ())
        if isinstance(entry, Mapping) and _fresh(entry.get("at"), now)
    }
    runners[runner or process_name()] = {"at": now, "buckets": rows}
    store.put_value(*KEY, {"v": 1, "runners": runners}, lease=None)
    return True


def read(store: StateStore, *, now: float) -> list[dict[str, Any]]:
    """The published rows of every runner seen in the last :data:`SHOWN_FOR`, summed per bucket
    (:func:`merge`), each with the runners it came from."""
    value = store.get_value(*KEY) or {}
    kept = value.get("runners")
    rows: list[dict[str, Any]] = []
    for name, entry in sorted(kept.items() if isinstance(kept, Mapping) else ()):
        if isinstance(entry, Mapping) and _fresh(entry.get("at"), now):
            rows += [{**row, "runners": [name]} for row in entry.get("buckets") or [] if _row(row)]
    return merge(rows)


_TEXTS = ("provider", "scope", "service", "class")
_NUMBERS = ("calls", "waits", "waited_s", "throttled", "rate_per_s")


def _fresh(at: object, now: float) -> bool:
    return isinstance(at, int | float) and now - float(at) < SHOWN_FOR


def _row(row: object) -> bool:
    """A published row of the shape :meth:`Bucket.row` writes (anything else, from a damaged or
    foreign object, is left out: the figures are a display)."""
    return (
        isinstance(row, Mapping)
        and all(isinstance(row.get(k), str) for k in _TEXTS)
        and all(isinstance(row.get(k), int | float) for k in _NUMBERS)
    )


def publish_quietly(store: StateStore, *, now: float, force: bool = False) -> None:
    """:func:`publish`, whose failure (a store that cannot be written just now) never stops or
    masks a rollout's work: the figures are a display, published again a minute later."""
    try:
        publish(store, now=now, force=force)
    except Exception:  # a display: never the rollout's error
        return
