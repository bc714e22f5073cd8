"""The CloudWatch metrics source through the real boto3 client against the emulator:
one request per look whatever the gates, units normalized, no data never turned into zeros."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from mlrollout_aws._aws import RetryPolicy, make_client
from mlrollout_aws.cloudwatch import CloudWatchMetrics

from mlrollout.contracts import MetricsQuery
from mlrollout.errors import ProviderThrottled
from mlrollout.plan.model import Gate

GATES = (
    Gate(name="errors", metric="error_rate", vs_baseline={"max_increase": "25%"}),
    Gate(name="p50", metric="latency_p50", max="1s"),
    Gate(name="p90", metric="latency_p90", max="1s"),
    Gate(name="p99", metric="latency_p99", max="1s"),
)


def source(world, attempts: int = 8) -> CloudWatchMetrics:
    client = make_client("cloudwatch", region="us-east-1", endpoint_url=world.url)
    retry = RetryPolicy(attempts=attempts, sleep=world.clock.sleep)
    return CloudWatchMetrics("churn", client, world.clock, retry=retry)


def look(world, start: float, gates=GATES, variants=("v2", "v1")) -> MetricsQuery:
    return MetricsQuery(start=start, end=world.clock.now(), variants=variants, gates=gates, step=60)


def put(world, metric: str, at: float, dims: dict[str, str], namespace="AWS/SageMaker", **value):
    world.cloudwatch.put_metric_data(
        Namespace=namespace,
        MetricData=[
            {
                "MetricName": metric,
                "Timestamp": datetime.fromtimestamp(at, UTC),
                "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()],
                **value,
            }
        ],
    )


@pytest.fixture
def split(world):
    """churn: v1 90 %, v2 10 %, ten minutes of traffic (v2 worse)."""
    world.endpoint(variants=(("v1", "churn-v1"), ("v2", "churn-v2")))
    world.sagemaker.update_endpoint_weights_and_capacities(
        EndpointName="churn",
        DesiredWeightsAndCapacities=[
            {"VariantName": "v1", "DesiredWeight": 0.9, "DesiredInstanceCount": 2},
            {"VariantName": "v2", "DesiredWeight": 0.1, "DesiredInstanceCount": 2},
        ],
    )
    world.traffic(
        v1={"error_rate": 0.01, "latency_p50": "40ms", "latency_p99": "120ms"},
        v2={"error_rate": 0.05, "latency_p50": "80ms", "latency_p99": "400ms"},
    )
    start = world.clock.now()
    world.clock.sleep(600)
    world.emulator.calls.clear()
    return start


def test_one_look_is_one_request_for_every_gate_and_both_variants(world, split):
    windows = source(world).query(look(world, split))
    assert world.emulator.count("GetMetricData") == 1
    v1, v2 = windows["v1"], windows["v2"]
    assert v1.requests and v2.requests and v1.requests > 5 * v2.requests  # 90 / 10
    assert v2.errors / v2.requests == pytest.approx(0.05, abs=0.02)
    assert v1.errors / v1.requests == pytest.approx(0.01, abs=0.005)
    for window in (v1, v2):
        assert set(window.latency_percentiles) == {0.5, 0.9, 0.99}
        p = window.latency_percentiles
        assert 0 < p[0.5] < p[0.9] <= p[0.99] < 1.0  # seconds, not microseconds
    assert v1.latency_percentiles[0.5] == pytest.approx(0.040, rel=0.15)
    assert v2.latency_percentiles[0.99] == pytest.approx(0.400, rel=0.25)


def test_more_gates_still_make_one_request(world, split):
    many = GATES + tuple(Gate(name=f"e{i}", metric="error_rate", max="10%") for i in range(6))
    source(world).query(look(world, split, gates=many))
    assert world.emulator.count("GetMetricData") == 1


def test_only_whole_periods_are_asked_for(world, split):
    metrics = source(world)
    world.clock.sleep(30)  # mid-period: the running minute is not complete
    windows = metrics.query(look(world, world.clock.now() - 20))
    assert windows["v1"].requests is None  # no whole period yet: no data, and no call
    assert world.emulator.count("GetMetricData") == 0


def test_a_variant_without_traffic_has_no_data_not_zero(world, split):
    windows = source(world).query(look(world, split, variants=("v3", "v1")))
    assert windows["v3"].requests is None
    assert windows["v3"].errors is None
    assert windows["v3"].latency_percentiles == {}
    assert windows["v3"].error_rate is None
    assert windows["v1"].requests


def test_partial_data_is_no_data(world, split):
    world.emulator.partial = {"Invocation5XXErrors", "ModelLatency"}
    windows = source(world).query(look(world, split))
    assert windows["v1"].requests  # complete
    assert windows["v1"].errors is None
    assert windows["v1"].latency_percentiles == {}


def test_pages_are_followed(world, split):
    world.emulator.page_size = 7
    paged = source(world).query(look(world, split))
    calls = world.emulator.count("GetMetricData")
    world.emulator.page_size = 100_800
    whole = source(world).query(look(world, split))
    assert calls > 1
    assert paged == whole


def test_custom_metrics_by_query(world, split):
    base = split - split % 60
    for minute in range(5):
        for variant, ups in (("v1", 30), ("v2", 20)):
            values = [1.0, 0.0]
            put(
                world,
                "ThumbsUp",
                base + 60 * minute,
                {"Endpoint": "churn", "Variant": variant},
                namespace="ChurnApp",
                Values=values,
                Counts=[float(ups), float(40 - ups)],
            )
    gates = (
        Gate(
            name="thumbs",
            metric="custom",
            query={
                "namespace": "ChurnApp",
                "metric": "ThumbsUp",
                "dimensions": {"Endpoint": "{endpoint}", "Variant": "{variant}"},
            },
            direction="decrease",
            vs_baseline={"max_decrease": "5%"},
        ),
        Gate(
            name="overhead",
            metric="custom",
            query={"namespace": "AWS/SageMaker", "metric": "OverheadLatency", "stat": "Maximum"},
            max=1,
        ),
    )
    put(world, "OverheadLatency", base + 60, {"EndpointName": "churn", "VariantName": "v1"},
        Value=2500.0)  # fmt: skip
    windows = source(world).query(look(world, split, gates=gates))
    assert world.emulator.count("GetMetricData") == 1
    thumbs = windows["v1"].custom["thumbs"]
    assert (thumbs.total, thumbs.count) == (150.0, 200.0)
    assert windows["v2"].custom["thumbs"].mean == pytest.approx(0.5)
    assert windows["v1"].custom["overhead"].mean == pytest.approx(0.0025)  # µs → s
    assert "overhead" not in windows["v2"].custom  # nothing published: no data


def test_throttled_requests_are_retried_and_counted_once_as_a_look(world, split):
    world.emulator.fault("throttle", operations={"GetMetricData"}, times=2)
    windows = source(world).query(look(world, split))
    assert windows["v1"].requests
    assert world.emulator.count("GetMetricData") == 3
    assert world.emulator.count("GetMetricData", applied=True) == 1


def test_throttling_that_never_ends_is_a_provider_error(world, split):
    world.emulator.fault("throttle", operations={"GetMetricData"})
    with pytest.raises(ProviderThrottled, match=r"CloudWatch\.GetMetricData"):
        source(world, attempts=2).query(look(world, split))
