"""The provider toolkit: one piece of code per job that every endpoint adapter and metrics source
shares (the local sandbox and the AWS, GCP and Azure providers use it instead of copies).

- :func:`check_weights` — a traffic split asked of ``set_traffic``: every name deployed, every
  weight finite and in 0..100, the weights summing to 100;
- :func:`check_finalize` — the preconditions of ``finalize(keep, retire)``: ``keep`` differs from
  ``retire`` and is deployed; ``retire`` absent is a no-op (already retired); ``retire`` still
  serving (live or mirrored traffic) is an error;
- :func:`whole_percents` — weights as whole percents summing to 100, by largest remainder with
  one deterministic tie-break (see its doc);
- :func:`wait_until` — the one wait-until-done loop on the injected clock (deadline, backoff,
  the last sleep cut to the deadline, a progress callback);
- :func:`complete_periods` — a metrics window cut to whole periods that are complete;
- :func:`call_mapped`, :func:`is_programming_error`, :func:`is_throttling`, :func:`classify`,
  :func:`answer_error` —
  the one shape of error mapping: a provider call is retried by the core's ``RetryPolicy``; what
  ends it is an mlrollout error already (raised as it is), a bug (re-raised as it is, never
  wrapped as a provider error, so it exits 70), or mapped by the provider; throttling is
  recognised by one table (HTTP 429/503, ``Throttling*``, ``TooManyRequests*``,
  ``ResourceExhausted``...) and becomes :class:`~mlrollout.errors.ProviderThrottled`; each
  attempt may take a token of an API budget first (:mod:`mlrollout.budget`).

Nothing here imports a cloud SDK.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from enum import Enum
from typing import TYPE_CHECKING, TypeVar

from mlrollout.budget import Spend, budgeted
from mlrollout.clock import Clock
from mlrollout.errors import ProviderAuthError, ProviderError, ProviderThrottled
from mlrollout.retry import RetryPolicy

if TYPE_CHECKING:
    from mlrollout.plan.model import Candidate

T = TypeVar("T")

#: How far (in percent) a weight may be from the asked one and still count as it: SageMaker's
#: weights are relative floats rounded to 6 places, read back as percents.
WEIGHT_TOLERANCE = 0.01
_SUM_TOLERANCE = 1e-6

# ------------------------------------------------------------------------------------ traffic


def candidate_capacity(candidate: Candidate, baseline: int | None) -> int:
    """How many instances the candidate gets: the plan's ``instance_count``, else the baseline's
    (green at full capacity beside blue), else 1."""
    return int(candidate.instance_count or baseline or 1)


def check_weights(
    weights: Mapping[str, float], deployed: Collection[str], *, where: str, kind: str = "variant"
) -> None:
    """Raise :class:`ProviderError` unless ``weights`` is a split ``set_traffic`` may send:
    every name in ``deployed`` (the ``kind``\\ s of the endpoint described by ``where``, such as
    ``"SageMaker endpoint 'shop'"``), every weight finite and in 0..100, their sum 100.
    Names of ``deployed`` missing from ``weights`` get 0."""
    unknown = [name for name in weights if name not in deployed]
    if unknown:
        raise ProviderError(
            f"cannot route traffic to {', '.join(map(repr, unknown))}: not deployed on {where} "
            f"(not a {kind} of it; deployed: {', '.join(deployed) or 'nothing'})"
        )
    bad = [f"{n}={w}" for n, w in weights.items() if not (math.isfinite(w) and 0 <= w <= 100)]
    total = sum(weights.values())
    if bad or abs(total - 100.0) > _SUM_TOLERANCE:
        detail = f"weights out of 0..100: {', '.join(bad)}" if bad else f"they sum to {total:g}"
        raise ProviderError(f"invalid traffic weights {dict(weights)}: {detail}")


def check_finalize(
    keep: str,
    retire: str,
    weights: Mapping[str, float],
    *,
    where: str,
    shadow: Mapping[str, float] | None = None,
    kind: str = "variant",
) -> bool:
    """The preconditions of ``finalize(keep, retire)`` on an endpoint whose deployed
    ``kind``\\ s take ``weights`` (percent of live traffic; ``shadow``: percent mirrored).

    Returns False when ``retire`` is not deployed (already retired: nothing to do), True when it
    is to be removed. Raises :class:`ProviderError` when ``keep`` is ``retire`` or not deployed,
    or when ``retire`` still serves: more than :data:`WEIGHT_TOLERANCE` of the live traffic, or
    of the mirrored traffic (no platform retires a mirror target; move the traffic first)."""
    if keep == retire or keep not in weights:
        raise ProviderError(
            f"cannot finalize {where}: keep {keep!r}, retire {retire!r} "
            f"(deployed: {', '.join(weights) or 'nothing'})"
        )
    if retire not in weights:
        return False
    live = float(weights[retire])
    mirrored = float((shadow or {}).get(retire, 0.0))
    if live > WEIGHT_TOLERANCE or mirrored > WEIGHT_TOLERANCE:
        also = f" ({mirrored:g}% mirrored)" if mirrored > WEIGHT_TOLERANCE else ""
        raise ProviderError(
            f"cannot retire {kind} {retire!r}: it still takes {live:g}% of the traffic{also}",
            hint="move its traffic away first (set_traffic, set_shadow)",
        )
    return True


def whole_percents(weights: Mapping[str, float]) -> dict[str, int]:
    """``weights`` (any non-negative finite numbers with a positive sum; percents summing to 100
    as a rule) as whole percents summing to 100, each within 1 of its exact share.

    Largest remainder: every share is floored, and the percents left go one each to the largest
    remainders. Ties go to the larger weight, then to the name first in alphabetical order, so the
    result never depends on the mapping's order."""
    values = dict(weights)
    total = sum(values.values())
    bad = [f"{n}={w}" for n, w in values.items() if not (math.isfinite(w) and w >= 0)]
    if not values or bad or not math.isfinite(total) or total <= 0:
        detail = f"weights out of 0..100: {', '.join(bad)}" if bad else f"they sum to {total:g}"
        raise ProviderError(f"invalid traffic weights {values}: {detail}")
    exact = {name: 100.0 * w / total for name, w in values.items()}
    floors = {name: math.floor(v + 1e-9) for name, v in exact.items()}
    left = 100 - sum(floors.values())
    order = sorted(exact, key=lambda n: (-(exact[n] - floors[n]), -exact[n], n))
    for name in order[: max(0, left)]:
        floors[name] += 1
    return floors


# --------------------------------------------------------------------------------------- wait


def wait_until(
    poll: Callable[[], T | None],
    clock: Clock,
    *,
    timeout: float,
    every: float,
    backoff: float = 1.0,
    cap: float | None = None,
    on_timeout: Callable[[], T],
    progress: Callable[[float, float], None] | None = None,
) -> T:
    """Call ``poll()`` until it returns something other than None, and return that.

    Between polls it sleeps on ``clock``: ``every`` seconds first, then each wait ``backoff``
    times the last (at most ``cap``), the last one cut to the deadline, so the final poll is made
    at ``timeout`` seconds after the start. When a poll at or past the deadline is still None,
    the result is ``on_timeout()`` (which usually raises). ``poll`` raises to stop on a failure.
    ``progress(elapsed, next_wait)`` is told before each sleep (for a status line)."""
    start = clock.now()
    deadline = start + timeout
    delay = every
    while True:
        outcome = poll()
        if outcome is not None:
            return outcome
        now = clock.now()
        if now >= deadline:
            return on_timeout()
        wait = min(delay, deadline - now)
        if progress is not None:
            progress(now - start, wait)
        clock.sleep(wait)
        delay = delay * backoff if cap is None else min(cap, delay * backoff)


# ------------------------------------------------------------------------------------ metrics


def complete_periods(
    start: float, end: float, period: float, now: float, delay: float = 0.0
) -> tuple[float, float] | None:
    """The window ``[start, end)`` as whole ``period``-second periods (aligned on multiples of
    ``period`` since the epoch, as every metrics backend aligns them) that are complete: ended by
    ``now - delay`` (``delay``: how long the backend takes to ingest a point beyond what the
    caller's ``start`` already allows for).

    It begins at the boundary at or before ``start`` — as CloudWatch and Azure Monitor snap a
    start themselves; the plan's ``analysis.delay`` (already in ``start``) keeps the previous
    stage's traffic out when it is at least one period — and ends at the last boundary at or
    before both ``end`` and ``now - delay``, so a period still running is never read half-full.
    None when not one whole period is left."""
    if not period > 0:
        raise ValueError(f"a metrics period is positive, got {period!r}")
    first = math.floor(start / period + 1e-9) * period
    last = math.floor(min(end, now - delay) / period + 1e-9) * period
    if last <= first:
        return None
    return first, last


# ------------------------------------------------------------------------------------- errors

#: Exceptions that are bugs (in mlrollout, a plugin or an SDK), never a provider's answer: they
#: are re-raised as they are, so the CLI shows them as a bug (exit 70), not as exit 6.
PROGRAMMING_ERRORS: tuple[type[BaseException], ...] = (
    TypeError,
    AttributeError,
    LookupError,  # KeyError, IndexError
    AssertionError,
    NameError,
    NotImplementedError,
    RecursionError,
)

#: HTTP statuses that mean "too many requests, slow down".
THROTTLING_STATUS = frozenset({429, 503})
#: Service error codes that mean the same (AWS, Google, Azure spellings).
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "ProvisionedThroughputExceededException",
        "SlowDown",
        "ResourceExhausted",
        "RESOURCE_EXHAUSTED",
    }
)
AUTH_STATUS = frozenset({401, 403})
#: Statuses worth a retry: a timeout, throttling, a server-side failure.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class ErrorKind(Enum):
    """What a failed provider call means, whatever the cloud."""

    AUTH = "auth"  # the identity is unknown or not allowed (ProviderAuthError)
    THROTTLED = "throttled"  # too many requests (ProviderThrottled once retries run out)
    TRANSIENT = "transient"  # a server-side failure worth a retry (ProviderError after them)
    NOT_FOUND = "not found"  # the resource does not exist
    REJECTED = "rejected"  # any other answer: the request itself is wrong


def is_programming_error(exc: BaseException) -> bool:
    """True for a bug (``TypeError``, ``AttributeError``, ``KeyError``, ``AssertionError``...),
    which a provider re-raises instead of wrapping it as a provider error."""
    return isinstance(exc, PROGRAMMING_ERRORS)


def is_throttling(status: int | None = None, code: str | None = None) -> bool:
    """True when an HTTP ``status`` or a service error ``code`` says the caller is throttled."""
    if status in THROTTLING_STATUS:
        return True
    text = code or ""
    return text in THROTTLING_CODES or text.startswith(("Throttl", "TooManyRequests"))


def classify(status: int | None = None, code: str | None = None) -> ErrorKind:
    """The :class:`ErrorKind` of an answer by its HTTP ``status`` and service error ``code``
    (a provider checks its own auth and transient codes first: AWS answers most of them 400).
    Throttling and transient answers are the ones to retry (:func:`retryable_kind`)."""
    if status in AUTH_STATUS:
        return ErrorKind.AUTH
    if is_throttling(status, code):
        return ErrorKind.THROTTLED
    if status in TRANSIENT_STATUS:
        return ErrorKind.TRANSIENT
    if status == 404:
        return ErrorKind.NOT_FOUND
    return ErrorKind.REJECTED


def retryable_kind(kind: ErrorKind) -> bool:
    """True for the kinds a provider retries (throttling and transient failures)."""
    return kind in (ErrorKind.THROTTLED, ErrorKind.TRANSIENT)


def call_mapped(
    fn: Callable[[], T],
    *,
    retry: RetryPolicy,
    retryable: Callable[[BaseException], bool],
    map_error: Callable[[BaseException, int], BaseException],
    applied: Callable[[], bool] | None = None,
    spend: Spend | None = None,
    throttled: Callable[[BaseException], bool] | None = None,
) -> T | None:
    """``fn()`` retried by ``retry`` while it raises an error ``retryable`` accepts. The error
    that ends it is raised as it is when it is an mlrollout error or a bug
    (:func:`is_programming_error`), else as ``map_error(error, attempts)`` (chained to it).

    ``applied``: for a mutation, returns True when the change is already in effect; asked before
    each retry, and a True ends the call without sending it again (the result is then None).
    ``spend``: the API budget (:mod:`mlrollout.budget`) each attempt takes a token of; an error
    ``throttled`` accepts slows that bucket down."""
    if spend is not None:
        fn = budgeted(fn, spend, throttled or (lambda exc: False))

    def failed(exc: BaseException, attempts: int) -> BaseException:
        if isinstance(exc, ProviderError) or is_programming_error(exc):
            return exc
        return map_error(exc, attempts)

    return retry.call(fn, retryable=retryable, failed=failed, applied=applied)


def answer_error(
    kind: ErrorKind,
    *,
    call: str,
    attempts: int,
    code: object,
    message: str,
    auth_hint: str,
    quota_hint: str,
    cloud: str,
) -> ProviderError | None:
    """The mlrollout error for a service's answer of ``kind`` that ended ``call`` (an API name
    such as ``SageMaker.UpdateEndpoint``) after ``attempts``, in the words every provider uses:
    denied (:class:`ProviderAuthError`, ``auth_hint``), stayed throttled
    (:class:`ProviderThrottled`, ``quota_hint``), kept failing (a server-side problem of
    ``cloud``). None for the other kinds, which the provider maps itself (not found, rejected)."""
    if kind is ErrorKind.AUTH:
        return ProviderAuthError(f"{call} was denied ({code}): {message}", hint=auth_hint)
    if kind is ErrorKind.THROTTLED:
        return ProviderThrottled(
            f"{call} stayed throttled after {attempts} attempts ({code}): {message}",
            hint=quota_hint,
        )
    if kind is ErrorKind.TRANSIENT:
        return ProviderError(
            f"{call} kept failing after {attempts} attempts ({code}): {message}",
            hint=f"{cloud} reports a server-side problem; try again later",
        )
    return None
