"""API budgets (mlrollout.budget): the token buckets that keep a fleet's calls under a platform's
limits, paced on the rollout's clock, slowed by throttled answers, published for `status`."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mlrollout import budget
from mlrollout.adapters import call_mapped
from mlrollout.clock import VirtualClock
from mlrollout.errors import ProviderThrottled, UsageError
from mlrollout.retry import RetryPolicy
from mlrollout.state.sqlite import SqliteStateStore


class Throttled(Exception):
    pass


def spend(clock: VirtualClock, service: str = "sagemaker", operation: str = "describe_endpoint"):
    return budget.Meter("aws", "default@eu-west-1", clock).spend(service, operation)


@pytest.mark.parametrize(
    ("service", "operation", "klass"),
    [
        ("sagemaker", "describe_endpoint", "read"),
        ("sagemaker", "DescribeEndpoint", "read"),
        ("sagemaker", "list_endpoint_configs", "read"),
        ("sagemaker", "update_endpoint", "write"),
        ("sagemaker", "create_endpoint_config", "write"),
        ("sagemaker", "DeleteEndpointConfig", "delete"),
        ("cloudwatch", "get_metric_data", "GetMetricData"),
        ("cloudwatch", "DescribeAlarms", "DescribeAlarms"),
        ("cloudwatch", "put_metric_alarm", "PutMetricAlarm"),
        ("aiplatform", "get_operation", "operation"),
        ("aiplatform", "deploy_model", "write"),
        ("aiplatform", "undeploy_model", "write"),
        ("monitoring", "list_time_series", "read"),
        ("arm", "begin_delete", "delete"),
    ],
)
def test_each_call_falls_in_the_class_its_platform_limits(
    service: str, operation: str, klass: str
) -> None:
    assert budget.call_class(service, operation) == klass


def test_a_burst_goes_at_once_then_calls_are_paced_at_the_share_of_the_rate() -> None:
    clock = VirtualClock(1000.0)
    s = spend(clock)  # SageMaker reads: 10/s, burst 20; half of it by default: 5/s, burst 10
    for _ in range(10):
        s.take()
    assert clock.now() == 1000.0
    s.take()
    assert clock.now() == pytest.approx(1000.2)
    for _ in range(19):
        s.take()
    assert clock.now() == pytest.approx(1004.0)  # 20 calls past the burst at 5 a second
    row = budget.snapshot()[0]
    assert row["calls"] == 30 and row["waits"] == 20 and row["throttled"] == 0
    assert row["rate_per_s"] == 5.0 and row["share_percent"] == 50.0
    assert "SageMaker" in row["source"]


def test_time_that_passes_refills_the_bucket_up_to_its_burst() -> None:
    clock = VirtualClock(0.0)
    s = spend(clock)
    for _ in range(10):
        s.take()
    clock.advance(3600.0)  # an hour of waiting does not buy more than one burst
    for _ in range(10):
        s.take()
    assert clock.now() == 3600.0
    s.take()
    assert clock.now() == pytest.approx(3600.2)


def test_the_share_comes_from_the_environment_and_configure_rescales_live_buckets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(budget.SHARE_ENV, "20%")
    clock = VirtualClock(0.0)
    s = spend(clock, "sagemaker", "update_endpoint")  # writes: 2/s, burst 10 -> 0.4/s, burst 2
    assert s.bucket.full_rate == pytest.approx(0.4) and s.bucket.capacity == 2.0
    budget.configure(share=100.0)
    assert s.bucket.full_rate == pytest.approx(2.0) and s.bucket.rate == pytest.approx(2.0)
    budget.configure(share=None)
    assert s.bucket.full_rate == pytest.approx(0.4)


@pytest.mark.parametrize("text", ["0", "150", "half", "", "nan"])
def test_a_share_that_is_not_a_percent_is_refused_naming_where_it_came_from(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv(budget.SHARE_ENV, text or " ")
    with pytest.raises(UsageError, match=budget.SHARE_ENV):
        budget.current_share()


def test_throttled_answers_halve_the_rate_down_to_a_sixteenth_and_successes_win_it_back() -> None:
    clock = VirtualClock(0.0)
    bucket = spend(clock).bucket
    bucket.slow_down()
    assert bucket.rate == pytest.approx(2.5) and bucket.tokens <= 0
    for _ in range(10):
        bucket.slow_down()
    assert bucket.rate == pytest.approx(5.0 / 16)
    for _ in range(100):
        bucket.succeeded()
    assert bucket.rate == pytest.approx(5.0)
    assert bucket.row()["throttled"] == 11


def test_call_mapped_takes_a_token_per_attempt_and_slows_down_on_throttling() -> None:
    clock = VirtualClock(0.0)
    s = spend(clock)
    answers: list[object] = [Throttled(), Throttled(), "ok"]

    def fn() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    result = call_mapped(
        fn,
        retry=RetryPolicy(attempts=5, sleep=clock.sleep),
        retryable=lambda exc: isinstance(exc, Throttled),
        map_error=lambda exc, n: ProviderThrottled(f"throttled after {n}"),
        spend=s,
        throttled=lambda exc: isinstance(exc, Throttled),
    )
    row = s.bucket.row()
    assert result == "ok" and row["calls"] == 3 and row["throttled"] == 2
    assert s.bucket.rate == pytest.approx(5.0 / 4 + 5.0 / 32)  # halved twice, one success back


def test_an_error_that_is_not_throttling_does_not_slow_the_budget() -> None:
    clock = VirtualClock(0.0)
    s = spend(clock)

    def fn() -> None:
        raise ValueError("bad request")

    with pytest.raises(ProviderThrottled):
        call_mapped(
            fn,
            retry=RetryPolicy(attempts=1, sleep=clock.sleep),
            retryable=lambda exc: False,
            map_error=lambda exc, n: ProviderThrottled("mapped"),
            spend=s,
            throttled=lambda exc: isinstance(exc, Throttled),
        )
    assert s.bucket.rate == 5.0 and s.bucket.row()["calls"] == 1


def test_buckets_are_per_scope_service_and_class() -> None:
    clock = VirtualClock(0.0)
    a = budget.Meter("aws", "default@eu-west-1", clock)
    b = budget.Meter("aws", "default@us-east-1", clock)
    assert a.spend("sagemaker", "describe_endpoint").bucket is (
        a.spend("sagemaker", "list_endpoints").bucket
    )
    assert a.spend("sagemaker", "describe_endpoint").bucket is not (
        b.spend("sagemaker", "describe_endpoint").bucket
    )
    assert a.spend("sagemaker", "describe_endpoint").bucket is not (
        a.spend("sagemaker", "update_endpoint").bucket
    )
    assert [r["scope"] for r in budget.snapshot()] == [
        "default@eu-west-1",
        "default@eu-west-1",
        "default@us-east-1",
    ]


def test_threads_sharing_a_bucket_lose_no_call() -> None:
    clock = VirtualClock(0.0)
    s = spend(clock, "s3", "get_object")

    def work() -> None:
        for _ in range(500):
            s.bucket.reserve(0.0)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert s.bucket.calls == 4000
    assert s.bucket.tokens == pytest.approx(s.bucket.capacity - 4000)


def test_runners_publish_at_most_once_a_minute_and_status_sums_them(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    assert budget.publish(store, now=1000.0) is False  # no bucket: nothing to say
    clock = VirtualClock(0.0)
    for _ in range(3):
        spend(clock).take()
    assert budget.publish(store, now=1000.0, runner="runner-a") is True
    spend(clock).take()
    assert budget.publish(store, now=1030.0, runner="runner-a") is False  # within the minute
    assert budget.publish(store, now=1031.0, force=True, runner="runner-b") is True
    rows = budget.read(store, now=1040.0)
    assert len(rows) == 1
    assert rows[0]["calls"] == 3 + 4 and rows[0]["runners"] == ["runner-a", "runner-b"]
    # an hour later runner-a's figures are gone, runner-b's stay until theirs age too
    assert [r["runners"] for r in budget.read(store, now=1000.0 + budget.SHOWN_FOR)] == [
        ["runner-b"]
    ]
    assert budget.read(store, now=1031.0 + budget.SHOWN_FOR) == []


def test_rollouts_on_the_wall_clock_share_a_bucket_and_each_own_timeline_has_its_own() -> None:
    from mlrollout.clock import SystemClock

    one, two = SystemClock(), SystemClock()
    a = budget.Meter("sagemaker", "p@r", one).spend("sagemaker", "describe_endpoint")
    b = budget.Meter("sagemaker", "p@r", two).spend("sagemaker", "describe_endpoint")
    assert a.bucket is b.bucket  # one process, one account: one budget
    early, late = VirtualClock(0.0), VirtualClock(10_000.0)
    c = budget.Meter("sagemaker", "p@r", early).spend("sagemaker", "describe_endpoint")
    d = budget.Meter("sagemaker", "p@r", late).spend("sagemaker", "describe_endpoint")
    assert c.bucket is not d.bucket and c.bucket is not a.bucket
    for _ in range(30):
        d.take()  # the late timeline's waits are its own ...
    c.take()
    assert early.now() == 0.0  # ... and never the early one's
    [row] = budget.snapshot()  # one row for the account's reads, whatever the timelines
    assert row["calls"] == 31


def test_a_damaged_published_object_is_read_as_what_is_whole_in_it(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    whole = {
        "at": 1000.0,
        "buckets": [
            dict(
                budget.Bucket(
                    "sagemaker",
                    "p@r",
                    "sagemaker",
                    "read",
                    budget.limit_of("sagemaker", "read"),
                    50.0,
                ).row()
            )
        ],
    }
    store.put_value(
        *budget.KEY,
        {
            "v": 1,
            "runners": {
                "good": whole,
                "bad-at": {"at": "yesterday", "buckets": whole["buckets"]},
                "bad-rows": {"at": 1000.0, "buckets": [{"provider": 1}, "x", None]},
                "not-a-map": [1, 2],
            },
        },
        lease=None,
    )
    rows = budget.read(store, now=1010.0)
    assert [(r["service"], r["runners"]) for r in rows] == [("sagemaker", ["good"])]
    store.put_value(*budget.KEY, {"runners": "garbage"}, lease=None)
    assert budget.read(store, now=1010.0) == []
    spend(VirtualClock(0.0)).take()
    assert budget.publish(store, now=1010.0, runner="me")  # and a runner writes over it
    assert [r["runners"] for r in budget.read(store, now=1010.0)] == [["me"]]
