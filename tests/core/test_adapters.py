"""The provider toolkit (``mlrollout.adapters``): checks, splitting, waiting, periods, errors."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlrollout.adapters import (
    WEIGHT_TOLERANCE,
    ErrorKind,
    answer_error,
    call_mapped,
    check_finalize,
    check_weights,
    classify,
    complete_periods,
    is_programming_error,
    is_throttling,
    retryable_kind,
    wait_until,
    whole_percents,
)
from mlrollout.clock import VirtualClock
from mlrollout.errors import ProviderAuthError, ProviderError, ProviderThrottled
from mlrollout.retry import RetryPolicy

WHERE = "test endpoint 'shop'"

# ------------------------------------------------------------------------------ check_weights


def test_check_weights_accepts_a_split_of_deployed_variants_summing_to_100() -> None:
    check_weights({"a": 90.0, "b": 10.0}, ["a", "b"], where=WHERE)
    check_weights({"a": 100.0}, ["a", "b"], where=WHERE)  # unnamed variants get 0
    check_weights({"a": 33.3333333, "b": 66.6666667}, ["a", "b"], where=WHERE)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ({"a": 90.0, "c": 10.0}, r"'c': not deployed on test endpoint 'shop' \(not a variant"),
        ({"a": 90.0, "b": 5.0}, "they sum to 95"),
        ({"a": 110.0, "b": -10.0}, "weights out of 0..100: a=110.0, b=-10.0"),
        ({"a": math.nan, "b": 100.0}, "out of 0..100: a=nan"),
        ({"a": math.inf}, "out of 0..100: a=inf"),
    ],
)
def test_check_weights_refuses(weights: dict[str, float], match: str) -> None:
    with pytest.raises(ProviderError, match=match):
        check_weights(weights, ["a", "b"], where=WHERE)


def test_unknown_variants_are_reported_before_bad_numbers() -> None:
    with pytest.raises(ProviderError, match="not a deployment of it; deployed: a, b"):
        check_weights({"x": 500.0}, ["a", "b"], where=WHERE, kind="deployment")


# ----------------------------------------------------------------------------- check_finalize


def test_finalize_retires_a_deployed_variant_without_traffic() -> None:
    assert check_finalize("a", "b", {"a": 100.0, "b": 0.0}, where=WHERE) is True
    # SageMaker reads relative weights back as percents: a hair above 0 is still 0.
    assert check_finalize("a", "b", {"a": 100.0, "b": WEIGHT_TOLERANCE / 2}, where=WHERE)


def test_finalize_of_an_absent_variant_is_a_no_op() -> None:
    assert check_finalize("a", "b", {"a": 100.0}, where=WHERE) is False


@pytest.mark.parametrize(
    ("keep", "retire", "weights", "shadow", "match"),
    [
        (
            "a",
            "a",
            {"a": 100.0},
            None,
            "cannot finalize test endpoint 'shop': keep 'a', retire 'a'",
        ),
        ("c", "b", {"a": 100.0, "b": 0.0}, None, r"keep 'c'.*deployed: a, b"),
        ("a", "b", {"a": 90.0, "b": 10.0}, None, "cannot retire variant 'b': it still takes 10%"),
        ("a", "b", {"a": 100.0, "b": 0.0}, {"b": 20.0}, r"takes 0% of the traffic \(20% mirror"),
    ],
)
def test_finalize_refuses(
    keep: str,
    retire: str,
    weights: dict[str, float],
    shadow: dict[str, float] | None,
    match: str,
) -> None:
    with pytest.raises(ProviderError, match=match):
        check_finalize(keep, retire, weights, where=WHERE, shadow=shadow)


# ----------------------------------------------------------------------------- whole_percents


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({"a": 10, "b": 90}, {"a": 10, "b": 90}),
        ({"a": 33.4, "b": 66.6}, {"a": 33, "b": 67}),
        ({"a": 33.3, "b": 33.3, "c": 33.4}, {"a": 33, "b": 33, "c": 34}),
        # A tie of remainders goes to the larger weight...
        ({"a": 50.5, "b": 49.5}, {"a": 51, "b": 49}),
        ({"b": 49.5, "a": 50.5}, {"a": 51, "b": 49}),
        # ...then to the first name in alphabetical order, whatever the mapping's order.
        ({"b": 12.5, "a": 12.5, "c": 75.0}, {"a": 13, "b": 12, "c": 75}),
        ({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, {"a": 34, "b": 33, "c": 33}),  # scaled to 100
        ({"a": 0.4, "b": 99.6}, {"a": 0, "b": 100}),
        ({"a": 100, "b": 0}, {"a": 100, "b": 0}),
    ],
)
def test_whole_percents(weights: dict[str, float], expected: dict[str, int]) -> None:
    assert whole_percents(weights) == expected


@pytest.mark.parametrize("weights", [{}, {"a": 0.0}, {"a": -1.0, "b": 101.0}, {"a": math.nan}])
def test_whole_percents_refuses_what_cannot_be_split(weights: dict[str, float]) -> None:
    with pytest.raises(ProviderError, match="invalid traffic weights"):
        whole_percents(weights)


@given(
    st.dictionaries(
        st.text("abcdefgh", min_size=1, max_size=3),
        st.floats(min_value=0, max_value=1e6, allow_nan=False),
        min_size=1,
        max_size=8,
    ).filter(lambda w: sum(w.values()) > 1e-3)
)
def test_whole_percents_sum_to_100_each_within_1_of_its_share(weights: dict[str, float]) -> None:
    split = whole_percents(weights)
    assert set(split) == set(weights)
    assert sum(split.values()) == 100
    total = sum(weights.values())
    for name, weight in weights.items():
        assert abs(split[name] - 100 * weight / total) < 1 + 1e-6
    # Deterministic: the same weights in another order give the same split.
    assert whole_percents(dict(reversed(list(weights.items())))) == split


# --------------------------------------------------------------------------------- wait_until


def test_wait_until_returns_the_first_result_and_backs_off() -> None:
    clock = VirtualClock(1000.0)
    answers = iter([None, None, None, "done"])
    seen: list[tuple[float, float]] = []

    def poll() -> str | None:
        return next(answers)

    result = wait_until(
        poll,
        clock,
        timeout=100.0,
        every=5.0,
        backoff=2.0,
        cap=15.0,
        on_timeout=lambda: "late",
        progress=lambda elapsed, wait: seen.append((elapsed, wait)),
    )
    assert result == "done"
    assert seen == [(0.0, 5.0), (5.0, 10.0), (15.0, 15.0)]  # 5, 10, then capped at 15
    assert clock.now() == 1030.0


def test_wait_until_cuts_the_last_wait_to_the_deadline_then_times_out() -> None:
    clock = VirtualClock(0.0)
    polls: list[float] = []

    def poll() -> None:
        polls.append(clock.now())
        return None

    def timed_out() -> str:
        raise ProviderError("still busy")

    with pytest.raises(ProviderError, match="still busy"):
        wait_until(poll, clock, timeout=25.0, every=10.0, on_timeout=timed_out)
    assert polls == [0.0, 10.0, 20.0, 25.0]  # the last poll is at the deadline, not after


def test_wait_until_may_return_a_value_on_timeout_and_polls_once_with_no_time() -> None:
    clock = VirtualClock(0.0)
    calls = []
    assert wait_until(lambda: calls.append(1), clock, timeout=0, every=5, on_timeout=lambda: 7) == 7
    assert calls == [1] and clock.now() == 0.0


def test_a_failing_poll_ends_the_wait() -> None:
    clock = VirtualClock(0.0)

    def poll() -> None:
        raise ProviderError("deployment failed")

    with pytest.raises(ProviderError, match="deployment failed"):
        wait_until(poll, clock, timeout=60, every=5, on_timeout=lambda: None)
    assert clock.now() == 0.0


# --------------------------------------------------------------------------- complete_periods


@pytest.mark.parametrize(
    ("start", "end", "period", "now", "delay", "expected"),
    [
        (0, 600, 60, 600, 0, (0, 600)),  # aligned and complete
        (10, 600, 60, 1000, 0, (0, 600)),  # begins at the boundary before start
        (0, 590, 60, 1000, 0, (0, 540)),  # the period cut by end is left out
        (0, 600, 60, 450, 0, (0, 420)),  # and the one still running
        (0, 600, 60, 600, 150, (0, 420)),  # and the ones not ingested yet
        (30, 100, 60, 100, 0, (0, 60)),
        (30, 100, 60, 59, 0, None),  # not one whole period
        (0, 59, 60, 1000, 0, None),
        (1_700_000_010.0, 1_700_000_070.0, 60, 1e10, 0, (1_699_999_980, 1_700_000_040)),
    ],
)
def test_complete_periods(
    start: float,
    end: float,
    period: float,
    now: float,
    delay: float,
    expected: tuple[float, float] | None,
) -> None:
    assert complete_periods(start, end, period, now, delay) == expected


@given(
    st.floats(min_value=0, max_value=1e9),
    st.floats(min_value=0, max_value=1e5),
    st.sampled_from([1, 10, 60, 300]),
    st.floats(min_value=0, max_value=1e5),
    st.floats(min_value=0, max_value=600),
)
def test_complete_periods_are_whole_and_complete(
    start: float, length: float, period: int, ahead: float, delay: float
) -> None:
    end = start + length
    now = start + ahead
    cut = complete_periods(start, end, period, now, delay)
    if cut is None:
        return
    first, last = cut
    assert first % period == 0 and last % period == 0
    # the boundary at or before start (a start a hair below a boundary snaps up to it)
    assert first <= start + 1e-6 and start < first + period
    assert last <= end + 1e-6 and last <= now - delay + 1e-6  # complete periods only
    assert min(end, now - delay) < last + period  # and all of those
    assert last - first >= period


def test_complete_periods_needs_a_positive_period() -> None:
    with pytest.raises(ValueError, match="positive"):
        complete_periods(0, 100, 0, 100)


# ------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "exc",
    [TypeError("x"), AttributeError("x"), KeyError("x"), IndexError(1), AssertionError()],
)
def test_bugs_are_programming_errors(exc: BaseException) -> None:
    assert is_programming_error(exc)


@pytest.mark.parametrize(
    "exc", [ProviderError("x"), ProviderThrottled("x"), ConnectionError(), TimeoutError()]
)
def test_provider_and_network_errors_are_not(exc: BaseException) -> None:
    assert not is_programming_error(exc)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, None),
        (503, None),
        (400, "Throttling"),
        (400, "ThrottlingException"),
        (None, "TooManyRequests"),
        (None, "TooManyRequestsException"),
        (None, "ResourceExhausted"),
        (400, "SlowDown"),
    ],
)
def test_throttling_is_one_table(status: int | None, code: str | None) -> None:
    assert is_throttling(status, code)
    assert classify(status, code) is ErrorKind.THROTTLED
    assert retryable_kind(classify(status, code))


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (401, None, ErrorKind.AUTH),
        (403, "Throttling", ErrorKind.AUTH),  # a refusal is not slowed down by waiting
        (500, None, ErrorKind.TRANSIENT),
        (502, None, ErrorKind.TRANSIENT),
        (504, None, ErrorKind.TRANSIENT),
        (408, None, ErrorKind.TRANSIENT),
        (404, None, ErrorKind.NOT_FOUND),
        (400, "ValidationException", ErrorKind.REJECTED),
        (None, None, ErrorKind.REJECTED),
    ],
)
def test_classify(status: int | None, code: str | None, kind: ErrorKind) -> None:
    assert classify(status, code) is kind
    assert retryable_kind(kind) == (kind is ErrorKind.TRANSIENT)


class _Busy(Exception):
    """A foreign (SDK) error that says "try again"."""


def _policy(clock: VirtualClock) -> RetryPolicy:
    return RetryPolicy(attempts=3, base=1.0, cap=4.0, sleep=clock.sleep)


def _failing(exc: BaseException, calls: list[int]):  # type: ignore[no-untyped-def]
    def fn() -> str:
        calls.append(1)
        raise exc

    return fn


def test_call_mapped_retries_then_maps_what_ends_it() -> None:
    clock = VirtualClock(0.0)
    calls: list[int] = []
    with pytest.raises(ProviderThrottled, match="busy after 3") as info:
        call_mapped(
            _failing(_Busy(), calls),
            retry=_policy(clock),
            retryable=lambda e: isinstance(e, _Busy),
            map_error=lambda e, n: ProviderThrottled(f"busy after {n}"),
        )
    assert isinstance(info.value.__cause__, _Busy)
    assert len(calls) == 3 and clock.now() <= 1.0 + 2.0  # slept on the injected clock only


@pytest.mark.parametrize("exc", [TypeError("bug"), KeyError("bug"), ProviderError("mapped")])
def test_call_mapped_raises_bugs_and_mlrollout_errors_as_they_are(exc: BaseException) -> None:
    calls: list[int] = []
    mapped: list[BaseException] = []
    with pytest.raises(type(exc)) as info:
        call_mapped(
            _failing(exc, calls),
            retry=_policy(VirtualClock()),
            retryable=lambda e: False,
            map_error=lambda e, n: mapped.append(e) or ProviderError("wrapped"),
        )
    assert info.value is exc and mapped == [] and len(calls) == 1


def test_call_mapped_asks_applied_before_a_retry() -> None:
    answers = iter([_Busy(), None])

    def fn() -> str:
        error = next(answers)
        if error is not None:
            raise error
        return "sent again"

    result = call_mapped(
        fn,
        retry=_policy(VirtualClock()),
        retryable=lambda e: isinstance(e, _Busy),
        map_error=lambda e, n: ProviderError("x"),
        applied=lambda: True,
    )
    assert result is None  # the lost attempt had applied: nothing sent again


@pytest.mark.parametrize(
    ("kind", "cls", "text", "hint"),
    [
        (ErrorKind.AUTH, ProviderAuthError, "Svc.Op was denied (E): no", "grant it"),
        (
            ErrorKind.THROTTLED,
            ProviderThrottled,
            "Svc.Op stayed throttled after 8 attempts",
            "quota",
        ),
        (ErrorKind.TRANSIENT, ProviderError, "Svc.Op kept failing after 8 attempts (E): no", "Sky"),
    ],
)
def test_answer_error_words_every_provider_uses(
    kind: ErrorKind, cls: type[ProviderError], text: str, hint: str
) -> None:
    error = answer_error(
        kind,
        call="Svc.Op",
        attempts=8,
        code="E",
        message="no",
        auth_hint="grant it",
        quota_hint="raise the quota",
        cloud="Sky",
    )
    assert type(error) is cls and text in str(error) and hint in (error.hint or "")


@pytest.mark.parametrize("kind", [ErrorKind.NOT_FOUND, ErrorKind.REJECTED])
def test_answer_error_leaves_the_rest_to_the_provider(kind: ErrorKind) -> None:
    words = {"auth_hint": "", "quota_hint": "", "cloud": ""}
    assert answer_error(kind, call="x", attempts=1, code=404, message="", **words) is None
