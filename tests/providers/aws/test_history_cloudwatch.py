"""History through CloudWatch (:func:`mlrollout.history.read_history`) with the real boto3
client against the emulator: an hour the traffic generator wrote, read back window by window,
one GetMetricData per window (``mlrollout impact`` and ``plan backtest`` read it so)."""

from __future__ import annotations

import pytest
from mlrollout_aws._aws import RetryPolicy, make_client
from mlrollout_aws.cloudwatch import CloudWatchMetrics

from mlrollout.history import read_history
from mlrollout.plan.model import Gate

ERRORS = Gate(name="errors", metric="error_rate", vs_baseline={"max_increase": "25%"})


def test_an_hour_of_cloudwatch_history_in_windows(world) -> None:
    world.endpoint(variants=(("v1", "churn-v1"), ("v2", "churn-v2")))
    world.sagemaker.update_endpoint_weights_and_capacities(
        EndpointName="churn",
        DesiredWeightsAndCapacities=[
            {"VariantName": "v1", "DesiredWeight": 0.9, "DesiredInstanceCount": 1},
            {"VariantName": "v2", "DesiredWeight": 0.1, "DesiredInstanceCount": 1},
        ],
    )
    world.traffic(v1={"error_rate": 0.01}, v2={"error_rate": 0.05})
    start = world.clock.now()
    world.clock.sleep(3600)
    world.emulator.calls.clear()
    client = make_client("cloudwatch", region="us-east-1", endpoint_url=world.url)
    source = CloudWatchMetrics(
        "churn", client, world.clock, retry=RetryPolicy(attempts=4, sleep=world.clock.sleep)
    )
    history = read_history(
        source, start=start, end=start + 3600, step=600, variants=["v1", "v2"], gates=[ERRORS]
    )
    assert len(history.samples) == 6 and history.calls == 6
    assert world.emulator.count("GetMetricData") == 6  # one per window, every variant in it
    for sample in history.samples:
        v1, v2 = sample.windows["v1"], sample.windows["v2"]
        assert v1.requests and v2.requests and v1.requests > 5 * v2.requests  # 90 / 10
    v2_rates = [p.value for p in history.values(ERRORS, ["v2"])]
    assert all(r is not None and r == pytest.approx(0.05, abs=0.03) for r in v2_rates)
