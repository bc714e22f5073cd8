"""The Azure Monitor metrics source: azure-monitor-querymetrics' MetricsClient over HTTPS to the
fake's ``metrics:getBatch``, whose numbers come from the sandbox's traffic model."""

from __future__ import annotations

import pytest
from azure_world import BAD, PLAN, START, FakeCredential

from mlrollout.contracts import MetricsQuery, ProviderContext
from mlrollout.errors import ProviderError
from mlrollout.plan.loader import load_plan


def source(world, plan_text: str = ""):
    from mlrollout_azure.azureml import AzureMLEndpoint
    from mlrollout_azure.monitor import AzureMonitorMetrics

    plan = load_plan(str(world.plan(plan_text))).plan
    context = ProviderContext(plan=plan, clock=world.clock, store=None)  # type: ignore[arg-type]
    credential = FakeCredential()
    endpoint = AzureMLEndpoint.from_context(context, credential)
    return AzureMonitorMetrics.from_context(context, credential, endpoint), plan


def split(world, at: float, weights: dict[str, float]) -> None:
    world.fake.history["churn"].append((at, weights))


def test_one_look_reads_requests_errors_and_percentiles_per_deployment(world):
    world.endpoint(candidate=BAD, rps=50)
    split(world, START + 60, {"blue": 80.0, "green": 20.0})
    metrics, plan = source(world)
    world.clock.set(START + 11 * 60 + 30)  # minutes up to START + 11m are complete
    query = MetricsQuery(
        START + 60, world.clock.now(), ("green", "blue"), tuple(plan.analysis.gates), 60
    )
    windows = metrics.query(query)
    model = world.fake.traffic_models["churn"]
    history = world.fake.history["churn"]
    for name in ("green", "blue"):
        expected = model.window(name, START + 60, START + 11 * 60, history)
        assert windows[name].requests == expected.requests
        assert windows[name].errors == expected.errors
        assert windows[name].error is None
    green, blue = windows["green"], windows["blue"]
    assert green.error_rate > blue.error_rate
    # Pre-averaged per-minute percentiles, in seconds.
    assert set(green.latency_percentiles) == {0.5, 0.9, 0.95, 0.99}
    assert 0.2 < green.latency_percentiles[0.99] < 0.8
    assert 0.05 < blue.latency_percentiles[0.99] < 0.25
    assert green.latency is None
    # One call for the traffic split, one for the latency percentiles.
    queries = world.fake.metric_queries
    assert [q["metricnames"][0] for q in queries] == [
        "RequestsPerMinute",
        "RequestLatency_P50,RequestLatency_P90,RequestLatency_P95,RequestLatency_P99",
    ]
    assert queries[0]["filter"] == ["deployment eq '*' and statusCodeClass eq '*'"]
    assert queries[0]["interval"] == ["PT1M"]


def test_no_traffic_is_no_data_not_zero(world):
    world.endpoint()
    metrics, plan = source(world)
    world.clock.set(START + 5 * 60)
    windows = metrics.query(
        MetricsQuery(START, world.clock.now(), ("green", "blue"), tuple(plan.analysis.gates), 60)
    )
    assert windows["green"].requests is None and windows["green"].errors is None
    assert windows["green"].latency_percentiles == {}
    assert windows["blue"].requests and windows["blue"].requests > 0


def test_a_window_shorter_than_a_minute_makes_no_call(world):
    world.endpoint()
    metrics, plan = source(world)
    world.clock.set(START + 90)
    # Within one minute: the window begins at that minute's start and ends before its end (the
    # one rule of ``complete_periods``; a start at START + 30 no longer skips the minute).
    windows = metrics.query(
        MetricsQuery(START + 10, START + 50, ("green", "blue"), tuple(plan.analysis.gates), 60)
    )
    assert windows["blue"].requests is None
    assert world.fake.metric_queries == []


def test_calls_per_look_do_not_grow_with_the_gates(world):
    world.endpoint()
    gates = "".join(
        f"    - name: e{i}\n      metric: error_rate\n      max: 5%\n"
        f"    - name: l{i}\n      metric: latency_p90\n      max: 300ms\n"
        for i in range(8)
    )
    metrics, plan = source(world, PLAN.replace("  gates:\n", "  gates:\n" + gates))
    assert len(plan.analysis.gates) == 18
    world.clock.set(START + 600)
    metrics.query(
        MetricsQuery(START, START + 600, ("green", "blue"), tuple(plan.analysis.gates), 60)
    )
    assert len(world.fake.metric_queries) == 2


def test_custom_metrics_come_by_query_split_by_deployment(world):
    world.endpoint()
    world.fake.custom_metrics["ThumbsUp"] = lambda w: (w.requests // 2, w.requests)
    text = PLAN.replace(
        "  gates:\n",
        "  gates:\n    - name: thumbs\n      metric: custom\n"
        "      query: {{metric: ThumbsUp, namespace: ChurnApp}}\n"
        "      vs_baseline: {{max_decrease: 5%}}\n",
    )
    metrics, plan = source(world, text)
    world.clock.set(START + 300)
    windows = metrics.query(
        MetricsQuery(START, START + 300, ("green", "blue"), tuple(plan.analysis.gates), 60)
    )
    thumbs = windows["blue"].custom["thumbs"]
    assert thumbs.count == windows["blue"].requests
    assert 0.45 < thumbs.mean < 0.55
    assert "thumbs" not in windows["green"].custom
    assert [q["metricnamespace"][0] for q in world.fake.metric_queries][-1] == "ChurnApp"
    assert len(world.fake.metric_queries) == 3


def test_a_failing_query_is_a_provider_error_after_retries(world):
    world.endpoint()
    metrics, plan = source(world)
    world.fake.faults.once += [("POST", r"metrics:getBatch$", 503)] * 2
    world.clock.set(START + 300)
    windows = metrics.query(
        MetricsQuery(START, START + 300, ("green", "blue"), tuple(plan.analysis.gates), 60)
    )
    assert windows["blue"].requests  # retried through two 503s
    world.fake.faults.deny = None
    world.fake.faults.once += [("POST", r"metrics:getBatch$", 400)]
    with pytest.raises(ProviderError, match="RequestsPerMinute"):
        metrics.query(
            MetricsQuery(START, START + 300, ("green", "blue"), tuple(plan.analysis.gates), 60)
        )


def test_an_unreachable_metrics_host_is_a_provider_error_after_retries(world):
    world.endpoint()
    text = PLAN.replace("  metrics_url: {url}\n", "  metrics_url: https://127.0.0.1:9\n")
    metrics, plan = source(world, text)
    world.clock.set(START + 300)
    before = world.clock.now()
    with pytest.raises(ProviderError, match="cannot reach Azure"):
        metrics.query(
            MetricsQuery(START, START + 300, ("green", "blue"), tuple(plan.analysis.gates), 60)
        )
    assert world.clock.now() > before  # the retries slept on the rollout's clock


def test_a_mirrored_deployment_publishes_its_copy_of_the_requests(world):
    """mirror_traffic set through azure-ai-ml: green's per-deployment metrics hold its copy of
    50 % of the endpoint's requests, answered with its own (bad) profile; blue's are unchanged."""
    world.endpoint(candidate=BAD, rps=50)
    from mlrollout_azure.azureml import AzureMLEndpoint

    metrics, plan = source(world)
    context = ProviderContext(plan=plan, clock=world.clock, store=None)  # type: ignore[arg-type]
    endpoint = AzureMLEndpoint.from_context(context, FakeCredential())
    endpoint.prepare(plan.candidate, "blue")
    world.clock.set(START + 60)
    endpoint.set_shadow("green", 50)
    assert world.live()["mirrorTraffic"] == {"green": 50}
    world.clock.set(START + 11 * 60)
    endpoint.set_shadow(None, 0)
    world.clock.set(START + 21 * 60)
    gates = tuple(plan.analysis.gates)
    during = metrics.query(MetricsQuery(START + 60, START + 11 * 60, ("green", "blue"), gates, 60))
    after = metrics.query(MetricsQuery(START + 11 * 60, START + 21 * 60, ("green",), gates, 60))
    green, blue = during["green"], during["blue"]
    assert green.requests is not None and blue.requests is not None
    assert 0.4 * blue.requests < green.requests < 0.6 * blue.requests
    assert green.error_rate > 0.05 > blue.error_rate  # green's own behaviour
    assert green.latency_percentiles[0.99] > 0.25 > blue.latency_percentiles[0.99]
    assert after["green"].requests is None  # the mirror stopped: no point, no data
    # Blue's numbers are those of an endpoint without any mirror; green serves no live request.
    model, history = world.fake.traffic_models["churn"], world.fake.history["churn"]
    assert blue.requests == model.window("blue", START + 60, START + 11 * 60, history).requests
    assert all(w.get("green", 0) == 0 for _, w in history)
    assert world.fake.mirror_history["churn"] == [(START + 60, {"green": 50.0}), (START + 660, {})]
