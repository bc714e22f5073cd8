"""The Cloud Monitoring source through the real ``monitoring_v3`` gRPC client against the fake."""

from __future__ import annotations

import grpc
import pytest
from gcp_world import BAD, GOOD, World
from google.api import distribution_pb2
from google.api_core import exceptions as gexc
from google.cloud import monitoring_v3
from google.cloud.monitoring_v3.services.metric_service.transports import (
    MetricServiceGrpcTransport,
)
from mlrollout_gcp.monitoring import ERRORS, PREDICTIONS, histogram_from_distribution
from mlrollout_gcp.spec import VertexProviderSpec

from mlrollout.contracts import MetricsQuery, ProviderContext
from mlrollout.plan.loader import load_plan
from mlrollout.sandbox.traffic import LATENCY_BOUNDS

LATENCY_GATE = "    - {name: p99, metric: latency_p99, max: 300ms}\n"
ERROR_GATE = "    - {name: errors, metric: error_rate, max: 5%}\n"


def open_provider(world: World, gates: str = LATENCY_GATE):
    plan = load_plan(str(world.plan(gates=gates))).plan
    endpoint, metrics = VertexProviderSpec.open(
        ProviderContext(plan=plan, clock=world.clock, store=None)
    )
    return plan, endpoint, metrics


def look(plan, metrics, start: float, end: float):
    query = MetricsQuery(
        start=start,
        end=end,
        variants=("v2", "v1"),
        gates=tuple(plan.analysis.gates),
        step=plan.analysis.interval,
    )
    return metrics.query(query)


def canary(world: World, candidate=BAD, gates: str = LATENCY_GATE, weight: float = 20):
    world.endpoint()
    world.traffic(v1=GOOD, v2=candidate)
    plan, endpoint, metrics = open_provider(world, gates)
    endpoint.prepare(plan.candidate, "v1")
    endpoint.set_traffic({"v2": weight, "v1": 100 - weight})
    return plan, endpoint, metrics


def test_a_look_reads_requests_errors_and_the_latency_histogram_per_deployed_model(world):
    plan, _, metrics = canary(world)
    start = world.clock.now()
    world.clock.advance(600)
    windows = look(plan, metrics, start, world.clock.now())
    v1, v2 = windows["v1"], windows["v2"]
    # 20 rps for 10 minutes, split 80/20.
    assert 9000 < v1.requests < 10_200 and 2000 < v2.requests < 2800
    assert v1.error_rate < 0.02 and 0.05 < v2.error_rate < 0.11
    assert v2.latency is not None and v2.latency.total == v2.requests
    assert v2.latency.bounds == pytest.approx(LATENCY_BOUNDS)  # ms back to seconds
    assert 0.25 < v2.latency.quantile(0.99) < 0.6
    assert 0.08 < v1.latency.quantile(0.99) < 0.17
    # One call per metric type, both deployed models in each.
    assert [metric.rsplit("/", 1)[-1] for metric, _ in world.monitoring.calls] == [
        "prediction_count",
        "error_count",
        "prediction_latencies",
    ]


def test_no_error_series_beside_predictions_means_zero_errors_not_no_data(world):
    perfect = {"error_rate": 0.0, "latency_p50": "40ms", "latency_p99": "120ms"}
    plan, _, metrics = canary(world, candidate=perfect, gates=ERROR_GATE)
    start = world.clock.now()
    world.clock.advance(300)
    windows = look(plan, metrics, start, world.clock.now())
    assert windows["v2"].requests > 0 and windows["v2"].errors == 0
    assert windows["v2"].error_rate == 0.0
    assert windows["v1"].latency is None  # no latency gate: not fetched
    assert len(world.monitoring.calls) == 2


def test_a_model_without_traffic_or_a_window_under_a_minute_has_no_data(world):
    plan, _, metrics = canary(world, weight=0)
    start = world.clock.now()
    world.clock.advance(30)
    windows = look(plan, metrics, start, world.clock.now())
    assert windows["v2"].requests is None and windows["v1"].requests is None
    assert world.monitoring.calls == []  # nothing complete to ask for
    world.clock.advance(270)
    windows = look(plan, metrics, start, world.clock.now())
    assert windows["v2"].requests is None and windows["v2"].errors is None  # no data, not 0
    assert windows["v1"].requests > 0


def test_ingestion_lag_shows_as_no_data_until_the_points_arrive(world):
    plan, _, metrics = canary(world)
    world.monitoring.lag = 180.0
    start = world.clock.now()
    world.clock.advance(120)
    assert look(plan, metrics, start, world.clock.now())["v2"].requests is None
    world.clock.advance(240)
    assert look(plan, metrics, start, world.clock.now())["v2"].requests > 0


def test_every_page_is_read(world):
    plan, _, metrics = canary(world)
    world.monitoring.max_series_per_page = 1
    start = world.clock.now()
    world.clock.advance(300)
    windows = look(plan, metrics, start, world.clock.now())
    assert windows["v1"].requests > 0 and windows["v2"].requests > 0
    tokens = [token for metric, token in world.monitoring.calls if metric == PREDICTIONS]
    assert tokens == ["", "1"]


def test_unavailable_and_exhausted_are_retried(world):
    plan, _, metrics = canary(world)
    start = world.clock.now()
    world.clock.advance(300)
    end = world.clock.now()
    clean = look(plan, metrics, start, end)
    world.monitoring.calls.clear()
    world.monitoring.fault_rate = 0.5
    for _ in range(4):
        faulty = look(plan, metrics, start, end)  # backoff sleeps move the clock, not the window
        for v in ("v1", "v2"):
            assert (faulty[v].requests, faulty[v].errors) == (clean[v].requests, clean[v].errors)
    assert len(world.monitoring.calls) > 4 * 3  # some were answered UNAVAILABLE/EXHAUSTED


def test_the_fake_rejects_alignment_under_a_minute_as_cloud_monitoring_does(world):
    client = monitoring_v3.MetricServiceClient(
        transport=MetricServiceGrpcTransport(
            channel=grpc.insecure_channel(world.monitoring.url.removeprefix("http://"))
        )
    )
    with pytest.raises(gexc.InvalidArgument, match="at least 60 seconds"):
        client.list_time_series(
            request={
                "name": "projects/demo-proj",
                "filter": f'metric.type = "{ERRORS}"',
                "interval": {"start_time": {"seconds": 0}, "end_time": {"seconds": 600}},
                "aggregation": {"alignment_period": {"seconds": 30}},
            },
            retry=None,
        )


def test_distributions_become_histograms_in_seconds():
    Options = distribution_pb2.Distribution.BucketOptions
    exponential = distribution_pb2.Distribution(
        count=6,
        bucket_options=Options(
            exponential_buckets=Options.Exponential(
                num_finite_buckets=3, growth_factor=2.0, scale=10.0
            )
        ),
        bucket_counts=[1, 2, 3],  # trailing empty buckets left out
    )
    hist = histogram_from_distribution(exponential)
    assert hist is not None
    assert hist.bounds == pytest.approx((0.01, 0.02, 0.04, 0.08))
    assert hist.counts == [1, 2, 3, 0, 0]
    linear = distribution_pb2.Distribution(
        count=2,
        bucket_options=Options(
            linear_buckets=Options.Linear(num_finite_buckets=2, width=100.0, offset=0.0)
        ),
        bucket_counts=[0, 1, 0, 1],
    )
    hist = histogram_from_distribution(linear)
    assert hist is not None
    assert hist.bounds == pytest.approx((0.0, 0.1, 0.2)) and hist.counts == [0, 1, 0, 1]
    assert histogram_from_distribution(distribution_pb2.Distribution(count=3)) is None


def test_a_custom_gate_reads_its_own_metric_in_the_same_look(world):
    gates = (
        ERROR_GATE + "    - {name: thumbs, metric: custom, min: 0.5, query: "
        "{metric_type: custom.googleapis.com/thumbs_up, aligner: ALIGN_MEAN}}\n"
        "    - {name: thumbs-again, metric: custom, max: 0.99, query: "
        "{metric_type: custom.googleapis.com/thumbs_up, aligner: ALIGN_MEAN}}\n"
    )
    world.monitoring.custom["custom.googleapis.com/thumbs_up"] = {"v1": 0.8, "v2": 0.6}
    plan, _, metrics = canary(world, gates=gates)
    start = world.clock.now()
    world.clock.advance(300)
    windows = look(plan, metrics, start, world.clock.now())
    assert windows["v2"].custom["thumbs"].mean == pytest.approx(0.6)
    assert windows["v1"].custom["thumbs-again"].mean == pytest.approx(0.8)
    assert windows["v1"].custom["thumbs"].count == 5
    # counts, errors, and one call for the two gates sharing a query
    assert len(world.monitoring.calls) == 3
