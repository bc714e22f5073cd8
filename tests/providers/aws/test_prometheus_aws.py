"""A SageMaker canary judged from Prometheus: the endpoint is driven through boto3 against the
emulator, and every gate reads a real Prometheus server whose history (backfilled with
promtool) says how the variants behaved — the way an endpoint whose app exports Prometheus
metrics is rolled out. A bad candidate ends 1, a good one 0, as the CloudWatch run would."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlrollout.engine.runner import Runner
from mlrollout.errors import ExitCode
from mlrollout.plan.loader import load_plan
from mlrollout.state.sqlite import SqliteStateStore
from mlrollout.testing.peers import prometheus

#: A minute boundary two hours ago: the history spans T0 - 10 min to T0 + 20 min.
T0 = float((int(time.time()) - 7200) // 60 * 60)
#: Requests per second by code, and latency counts per bucket (not cumulative) per second.
RATES = {
    "v1": (79.9, 0.1, (10, 50, 15, 4, 1, 0)),  # the baseline
    "v2": (19.98, 0.02, (3, 12, 4, 1, 0, 0)),  # a good candidate
    "v3": (18.0, 2.0, (0, 2, 6, 6, 4, 2)),  # a bad one: 10 % errors, a slow tail
}
BOUNDS = ("0.05", "0.1", "0.25", "0.5", "1", "+Inf")


def history() -> str:
    times = range(int(T0) - 600, int(T0) + 1201, 5)
    lines = ["# TYPE model_requests counter"]
    for variant, (ok, err, _) in RATES.items():
        for code, rate in (("200", ok), ("500", err)):
            lines += [
                f'model_requests_total{{variant="{variant}",code="{code}"}} '
                f"{rate * (t - times[0]):.6f} {t}"
                for t in times
            ]
    lines.append("# TYPE model_latency_seconds histogram")
    for variant, (_, _, latency) in RATES.items():
        cumulative = 0.0
        for le, per_second in zip(BOUNDS, latency, strict=True):
            cumulative += per_second
            lines += [
                f'model_latency_seconds_bucket{{variant="{variant}",le="{le}"}} '
                f"{cumulative * (t - times[0]):.6f} {t}"
                for t in times
            ]
    return "\n".join([*lines, "# EOF"]) + "\n"


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with prometheus(tmp_path_factory.mktemp("prometheus"), history()) as url:
        yield url


PLAN = """\
    version: 1
    name: churn-canary-prometheus
    target:
      provider: sagemaker
      endpoint: churn
      region: us-east-1
      endpoint_url: {url}
    candidate:
      name: {candidate}
      model: churn-v2
      instance_type: ml.m5.large
      instance_count: 1
    strategy:
      type: canary
      steps: [{{weight: 20}}, {{analyze: 5m}}, {{weight: 100}}]
    analysis:
      source:
        prometheus:
          url: {prom}
          queries:
            requests: "sum by (variant) (increase(model_requests_total[{{window}}]))"
            errors: "sum by (variant) (increase(model_requests_total{{code=~'5..'}}[{{window}}]))"
            latency: "sum by (variant, le) (increase(model_latency_seconds_bucket[{{window}}]))"
      interval: 60s
      min_requests: 100
      gates:
        - {{name: errors, metric: error_rate, max: 2%}}
        - {{name: p99, metric: latency_p99, max: 900ms}}
"""


@pytest.mark.parametrize(("candidate", "code"), [("v3", 1), ("v2", 0)], ids=["bad", "good"])
def test_a_sagemaker_canary_is_judged_from_prometheus(world, prom, candidate, code):
    world.clock.set(T0)  # the rollout's time is the history's: every look reads it exactly
    world.endpoint()
    plan = world.plan(PLAN, prom=prom, candidate=candidate)
    runner = Runner(SqliteStateStore(Path(world.tmp_path) / "state.db"))
    record = runner.create(load_plan(str(plan)))
    outcome = runner.drive(record.id, clock=world.clock)
    assert outcome.exit_code == code, outcome.state.reason
    live = world.live()
    variants = [(v["VariantName"], v["CurrentWeight"]) for v in live["ProductionVariants"]]
    assert variants == ([("v1", 1.0)] if code == ExitCode.ROLLED_BACK else [(candidate, 1.0)])
    # the gates read Prometheus, never CloudWatch
    assert world.emulator.count("GetMetricData") == 0
