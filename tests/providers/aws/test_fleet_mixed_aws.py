"""A fleet may mix providers: a sandbox target in wave 1 rehearses the release, a SageMaker
endpoint (boto3 over HTTP to the emulator) follows in wave 2, with the fleet's state in
(emulated) S3. The fleet's `sandbox` section is the local target's world only."""

from __future__ import annotations

from typing import Any

from aws_traffic import BAD, GOOD
from mlrollout_aws._aws import RetryPolicy
from mlrollout_aws.s3state import S3StateStore

from mlrollout.cli.fleet_cmds import fleet_markdown
from mlrollout.clock import VirtualClock
from mlrollout.engine.fleet import FleetRunner, fleet_status, member_id
from mlrollout.plan.loader import load_plan

BUCKET = "fleet-state"
FLEET = """\
version: 1
name: churn-mixed
targets:
  - {{provider: local, endpoint: churn-rehearsal, wave: 1}}
  - {{provider: sagemaker, endpoint: churn, region: us-east-1, endpoint_url: "{url}", wave: 2}}
candidate:
  name: v2
  model: churn-v2
  instance_type: ml.m5.large
  instance_count: 1
strategy:
  type: canary
  steps:
    - weight: 10
    - analyze: 5m
    - weight: 100
analysis:
  interval: 60s
  delay: 60s
  min_requests: 100
  max_hold: 5m
  gates:
    - name: errors
      metric: error_rate
      vs_baseline: {{max_increase: 0.5pp}}
sandbox:
  seed: 4
  rps: 50
  variants:
    v1: {{error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}}
    v2: {{error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}}
"""


def _fleet(world: Any) -> tuple[FleetRunner, str]:
    world.s3.create_bucket(Bucket=BUCKET)
    store = S3StateStore(
        BUCKET,
        "state",
        region="us-east-1",
        endpoint_url=world.url,
        retry=RetryPolicy(base=0.001, cap=0.01),
    )
    local_clock = VirtualClock(world.clock.now())

    def clock_for(rollout_id: str) -> Any:
        return local_clock if rollout_id.endswith("-t000") else world.clock

    runner = FleetRunner(store, clock_for=clock_for)
    record = runner.create(load_plan(str(world.plan(FLEET))))
    return runner, record.id


def test_a_fleet_of_a_sandbox_and_a_sagemaker_endpoint_promotes_both(world: Any) -> None:
    world.endpoint()
    world.traffic(v1=GOOD, v2=GOOD)
    runner, fleet_id = _fleet(world)
    end = runner.drive(fleet_id)
    assert end.phase == "succeeded", end.reason
    live = world.live()
    assert [(v["VariantName"], v["CurrentWeight"]) for v in live["ProductionVariants"]] == [
        ("v2", 1.0)
    ]
    status = fleet_status(runner.store, fleet_id)
    rows = {row["endpoint"]: row for row in status.rows}
    assert {e: (r["provider"], r["phase"]) for e, r in rows.items()} == {
        "churn-rehearsal": ("local", "succeeded"),
        "churn": ("sagemaker", "succeeded"),
    }
    # the runner published its API budgets while it drove: the SageMaker account's are shown
    # (the sandbox has none)
    assert {b["provider"] for b in status.api_budget} == {"sagemaker"}
    assert {(b["service"], b["class"]) for b in status.api_budget} >= {("sagemaker", "read")}
    text = fleet_markdown(status.to_dict())
    assert (
        "## API budget" in text and "| sagemaker | default@us-east-1 | sagemaker | read |" in text
    )
    # the sagemaker target's plan carries no sandbox section: only the local target's does
    plans = {i: runner.store.get_rollout(member_id(fleet_id, i)).plan["yaml"] for i in (0, 1)}
    assert "sandbox:" in plans[0] and "sandbox:" not in plans[1]


def test_a_bad_candidate_on_sagemaker_rolls_the_rehearsal_back_too(world: Any) -> None:
    world.endpoint()
    world.traffic(v1=GOOD, v2=BAD)
    runner, fleet_id = _fleet(world)
    end = runner.drive(fleet_id)
    assert end.phase == "rolled_back"
    assert "churn (wave 2)" in (end.reason or "")
    live = world.live()
    assert [(v["VariantName"], v["CurrentWeight"]) for v in live["ProductionVariants"]] == [
        ("v1", 1.0)
    ]
    rehearsal = runner.store.get_value("sandbox", "churn-rehearsal")
    assert rehearsal is not None and sorted(rehearsal["variants"]) == ["v1"]


def test_the_preview_of_a_mixed_fleet_names_both_platforms(world: Any) -> None:
    from mlrollout.plan.preview import build_preview

    data = build_preview(load_plan(str(world.plan(FLEET))))
    assert data["provider"] == "local and sagemaker"
    assert [t["provider"] for t in data["fleet"]["targets"]] == ["local", "sagemaker"]
    # the API calls are each platform's (they used to be the first target's only)
    calls = data["api_calls_by_provider"]
    assert list(calls) == ["local", "sagemaker"]
    sagemaker = " ".join(calls["sagemaker"]["steps"]["weight"] + calls["sagemaker"]["rollback"])
    assert "UpdateEndpointWeightsAndCapacities" in sagemaker
    assert not any("UpdateEndpoint" in c for c in calls["local"]["steps"]["weight"])


def test_the_printed_preview_of_a_mixed_fleet_lists_each_platforms_calls(
    world: Any, capsys: Any
) -> None:
    from mlrollout.cli.plan_cmds import render_preview
    from mlrollout.plan.preview import build_preview

    render_preview(build_preview(load_plan(str(world.plan(FLEET)))))
    out = capsys.readouterr().out
    local = out.index("API calls `run` would make (for each local target):")
    sagemaker = out.index("API calls `run` would make (for each sagemaker target):")
    assert local < sagemaker
    assert "UpdateEndpointWeightsAndCapacities" in out[sagemaker:]
    assert "UpdateEndpointWeightsAndCapacities" not in out[local:sagemaker]
