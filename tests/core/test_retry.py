"""The retry loop the AWS and GCP providers share."""

from __future__ import annotations

import pytest

from mlrollout.retry import RetryPolicy


class Flaky(Exception):
    pass


class Mapped(Exception):
    pass


def policy(slept: list[float], attempts: int = 4) -> RetryPolicy:
    return RetryPolicy(attempts=attempts, sleep=slept.append)


def test_retries_what_is_retryable_then_returns() -> None:
    slept: list[float] = []
    calls = iter([Flaky(), Flaky(), "ok"])

    def fn() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    result = policy(slept).call(
        fn, retryable=lambda e: isinstance(e, Flaky), failed=lambda e, n: Mapped(n)
    )
    assert result == "ok" and len(slept) == 2
    assert all(0 <= s <= 20 for s in slept)


def test_out_of_attempts_raises_the_mapped_error_with_the_count() -> None:
    slept: list[float] = []

    def fn() -> None:
        raise Flaky("down")

    with pytest.raises(Mapped) as caught:
        policy(slept, attempts=3).call(
            fn, retryable=lambda e: True, failed=lambda e, n: Mapped(f"after {n}")
        )
    assert str(caught.value) == "after 3" and isinstance(caught.value.__cause__, Flaky)
    assert len(slept) == 2


def test_an_error_mapped_to_itself_is_raised_as_it_is_without_retrying() -> None:
    slept: list[float] = []
    error = ValueError("bad request")

    def fn() -> None:
        raise error

    with pytest.raises(ValueError) as caught:
        policy(slept).call(fn, retryable=lambda e: False, failed=lambda e, n: e)
    assert caught.value is error and slept == []


def test_a_mutation_already_applied_is_not_sent_again() -> None:
    sent: list[int] = []

    def fn() -> str:
        sent.append(1)
        raise Flaky("response lost")

    result = policy([]).call(
        fn, retryable=lambda e: True, failed=lambda e, n: Mapped(), applied=lambda: True
    )
    assert result is None and len(sent) == 1
