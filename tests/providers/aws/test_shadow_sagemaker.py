"""Shadow rollouts on SageMaker, through boto3 against the emulator and the whole engine: the
candidate becomes a shadow variant (``ShadowProductionVariants`` of a new endpoint config) that
answers a copy of ``percent`` of the requests, DataCapture is turned on for it (and off after),
the gates judge its own CloudWatch metrics and its captured predictions (paired with the
baseline's by request), and it never takes live weight."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aws_plans import ANALYSIS_SETTINGS, GATES
from aws_traffic import GOOD
from test_rollouts_e2e import BUCKET, MUTATIONS, CallsPerStage, s3_store

from mlrollout.engine.events import LOOK_KINDS
from mlrollout.engine.runner import Runner, RunOutcome
from mlrollout.errors import ExitCode
from mlrollout.plan.loader import load_plan

CAPTURE_BUCKET = "capture-bucket"
SLOW = {"error_rate": 0.01, "latency_p50": "90ms", "latency_p99": "450ms"}
ERRORS = {"error_rate": 0.09, "latency_p50": "40ms", "latency_p99": "120ms"}

SHADOW_PLAN = (
    """\
version: 1
name: churn-v2-shadow
target:
  provider: sagemaker
  endpoint: churn
  region: us-east-1
  endpoint_url: {url}
  capture_s3_uri: s3://capture-bucket/datacapture
candidate:
  name: v2
  model: churn-v2
  instance_type: ml.m5.large
  instance_count: 1
strategy:
  type: shadow
  percent: 50
  duration: 10m
  then: {then}
capture:
  output: $.predictions[0]
"""
    + ANALYSIS_SETTINGS
    + GATES
    + """\
    - name: agree
      metric: agreement
      min: 97%
"""
)


def _original_with_capture(world: Any) -> str:
    """The endpoint on a config that captures already (to a place of its own)."""
    for model in ("churn-v1", "churn-v2"):
        world.model(model)
    config = "churn-config-captured"
    world.sagemaker.create_endpoint_config(
        EndpointConfigName=config,
        ProductionVariants=[
            {
                "VariantName": "v1",
                "ModelName": "churn-v1",
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 2,
                "InitialVariantWeight": 1.0,
            }
        ],
        DataCaptureConfig={
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": "s3://capture-bucket/own",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        },
    )
    world.sagemaker.create_endpoint(EndpointName="churn", EndpointConfigName=config)
    world.emulator.calls.clear()
    world.emulator.applied.clear()
    return config


def shadow(
    world: Any,
    *,
    candidate: dict[str, Any],
    agreement: float = 0.995,
    then: str = "rollback",
    captured: bool = False,
    listeners: list[Any] | None = None,
) -> tuple[RunOutcome, Any]:
    world.original = _original_with_capture(world) if captured else world.endpoint()
    world.s3.create_bucket(Bucket=CAPTURE_BUCKET)
    world.s3.create_bucket(Bucket=BUCKET)
    traffic = world.traffic(agreement={"v2": agreement}, v1=GOOD, v2=candidate)
    path = world.tmp_path / "shadow.yaml"
    path.write_text(SHADOW_PLAN.format(url=world.url, then=then))
    runner = Runner(s3_store(world), holder="runner-a", listeners=list(listeners or []))
    record = runner.create(load_plan(str(path)))
    outcome = runner.drive(record.id, clock=world.clock)
    world.runner = runner
    return outcome, traffic


def never_live(traffic: Any) -> None:
    """The shadow never served a user: v2's live weight stayed 0 while it mirrored."""
    mirrored = [at for at, m in traffic.mirror_history if m.get("v2", 0) > 0]
    assert mirrored, "the shadow never mirrored"
    start = mirrored[0]
    end = min((at for at, m in traffic.mirror_history if not m and at > start), default=start)
    assert end > start
    for at, weights in traffic.history:
        if start <= at < end:
            assert weights.get("v2", 0.0) == 0.0, (at, weights, traffic.mirror_history)


def journal_never_live(world: Any, outcome: RunOutcome) -> None:
    """Nor did the journal ever record live weight on v2 while it was a shadow."""
    mirroring = False
    for event in world.runner.store.events(outcome.rollout_id):
        data = event.data or {}
        if event.kind == "set_shadow.applied":
            mirroring = data.get("variant") == "v2"
        if mirroring:
            assert float((data.get("weights") or {}).get("v2", 0.0)) == 0.0, (event.kind, data)


class CapturePerLook:
    """A listener: the capture bucket's reads (ListObjectsV2, GetObject) between journal events,
    kept for each look."""

    def __init__(self, emulator: Any) -> None:
        self.emulator = emulator
        self.seen = (0, 0)
        self.looks: list[tuple[int, int]] = []

    def __call__(self, event: Any, state: Any) -> None:
        calls = self.emulator.s3_calls
        now = (calls[(CAPTURE_BUCKET, "ListObjectsV2")], calls[(CAPTURE_BUCKET, "GetObject")])
        delta = (now[0] - self.seen[0], now[1] - self.seen[1])
        self.seen = now
        if event.kind in LOOK_KINDS:
            self.looks.append(delta)


def mutations(world: Any) -> dict[str, int]:
    return {op: world.emulator.count(op, applied=True) for op in MUTATIONS}


def test_an_agreeing_shadow_evaluated_with_then_rollback_ends_0_and_is_removed(world):
    stages = CallsPerStage(world.emulator)
    reads = CapturePerLook(world.emulator)
    outcome, traffic = shadow(world, candidate=GOOD, listeners=[stages, reads])
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    # Capture per look: one listing per variant (the window is inside one hour) plus the files
    # new since the last look (one a minute per variant); every file read once.
    assert reads.looks and all(listings <= 4 for listings, _ in reads.looks)
    assert all(gets <= 2 for _, gets in reads.looks[1:])
    assert sum(g for _, g in reads.looks) <= sum(traffic.capture_files.values())
    print(f"\ncapture reads per look (ListObjectsV2, GetObject): {reads.looks}")
    live = world.live()
    assert [(v["VariantName"], v["CurrentWeight"]) for v in live["ProductionVariants"]] == [
        ("v1", 1.0)
    ]
    assert live["EndpointConfigName"] == world.original  # back on the config it had
    assert world.configs() == [world.original]
    assert "DataCaptureConfig" not in live  # capture off again, as it was
    never_live(traffic)
    journal_never_live(world, outcome)
    verdict = outcome.state.last_verdict or {}
    assert "agree" in str(verdict)
    assert mutations(world) == {
        # the candidate at 0; the shadow; the candidate back at 0 (the name of the first: moto
        # overwrites it, SageMaker answers "already exists" and the first is used)
        "CreateEndpointConfig": 3,
        "UpdateEndpoint": 4,  # prepare, shadow on, shadow off, back to the original
        "UpdateEndpointWeightsAndCapacities": 0,  # no live weight ever moved
        "DeleteEndpointConfig": 2,
    }
    looks = sum(stages.by_kind.get(k, Counter())["GetMetricData"] for k in LOOK_KINDS)
    assert looks == outcome.state.looks >= 9
    stages.report("shadow evaluated")


def test_an_agreeing_shadow_with_then_promote_is_promoted_to_100(world):
    outcome, traffic = shadow(world, candidate=GOOD, then="promote")
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    live = world.live()
    assert [(v["VariantName"], v["CurrentWeight"]) for v in live["ProductionVariants"]] == [
        ("v2", 1.0)
    ]
    assert "ShadowProductionVariants" not in live
    assert "DataCaptureConfig" not in live
    assert [c for c in world.configs() if "-mlr-" in c] == [live["EndpointConfigName"]]
    never_live(traffic)


@pytest.mark.parametrize(
    ("candidate", "agreement", "gate"),
    [(GOOD, 0.85, "agree"), (ERRORS, 0.995, "errors"), (SLOW, 0.995, "p99")],
    ids=["disagrees", "errors", "slower"],
)
def test_a_bad_shadow_fails_with_exit_1_and_is_removed(world, candidate, agreement, gate):
    outcome, traffic = shadow(world, candidate=candidate, agreement=agreement, then="promote")
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    assert gate in (outcome.state.reason or ""), outcome.state.reason
    live = world.live()
    assert [(v["VariantName"], v["CurrentWeight"]) for v in live["ProductionVariants"]] == [
        ("v1", 1.0)
    ]
    assert "ShadowProductionVariants" not in live
    assert live["EndpointConfigName"] == world.original
    assert world.configs() == [world.original]
    never_live(traffic)
    assert world.emulator.count("UpdateEndpointWeightsAndCapacities", applied=True) == 0


def test_a_shadow_on_an_endpoint_that_captures_keeps_its_capture(world):
    outcome, _ = shadow(world, candidate=GOOD, captured=True)
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    live = world.live()
    assert live["EndpointConfigName"] == world.original
    assert live["DataCaptureConfig"]["DestinationS3Uri"] == "s3://capture-bucket/own"
    assert world.configs() == [world.original]
    listed = world.s3.list_objects_v2(Bucket=CAPTURE_BUCKET, Prefix="own/churn/v2/")
    assert listed.get("KeyCount", 0) > 0  # the shadow's records went where the endpoint's go


def test_the_shadow_config_holds_one_production_variant_and_the_shadow(world):
    seen: list[dict[str, Any]] = []

    def listener(event: Any, state: Any) -> None:
        if event.kind == "set_shadow.applied" and (event.data or {}).get("variant") == "v2":
            live = world.live()
            seen.append(
                {
                    "live": live,
                    "config": world.sagemaker.describe_endpoint_config(
                        EndpointConfigName=live["EndpointConfigName"]
                    ),
                }
            )

    outcome, _ = shadow(world, candidate=GOOD, listeners=[listener])
    assert outcome.exit_code == ExitCode.OK
    [first] = seen
    config = first["config"]
    assert [v["VariantName"] for v in config["ProductionVariants"]] == ["v1"]
    [shadow_spec] = config["ShadowProductionVariants"]
    assert shadow_spec["VariantName"] == "v2"
    assert shadow_spec["InitialVariantWeight"] == pytest.approx(0.5)  # 50 % of v1's weight 1
    assert config["DataCaptureConfig"]["DestinationS3Uri"] == "s3://capture-bucket/datacapture"
    live = first["live"]
    assert [v["VariantName"] for v in live["ShadowProductionVariants"]] == ["v2"]


# ----------------------------------------------------------------- validation, IAM, preflight

REPO = Path(__file__).resolve().parents[3]


def test_the_example_plan_validates_and_its_limits_are_checked_offline():
    from mlrollout.plan.checks import check_plan

    plan = load_plan(str(REPO / "plans" / "sagemaker-shadow.yaml")).plan
    assert check_plan(plan) == []
    bad = plan.model_copy(
        update={"target": plan.target.model_copy(update={"capture_s3_uri": "ftp://x"})}
    )
    found = [f.message for f in check_plan(bad)]
    assert any("S3 location" in m for m in found), found


def test_the_iam_policy_reads_the_capture_files():
    from mlrollout_aws.iam import iam_policy

    policy = iam_policy(load_plan(str(REPO / "plans" / "sagemaker-shadow.yaml")).plan)
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["ReadDataCapture"]["Action"] == ["s3:GetObject"]
    assert by_sid["ReadDataCapture"]["Resource"] == (
        "arn:aws:s3:::churn-ml-capture/datacapture/churn-scoring/*"
    )
    assert by_sid["ListDataCapture"]["Resource"] == "arn:aws:s3:::churn-ml-capture"


def test_describe_calls_name_the_shadow_and_capture_calls():
    from mlrollout_aws.spec import SageMakerProviderSpec

    calls = SageMakerProviderSpec.describe_calls(
        load_plan(str(REPO / "plans" / "sagemaker-shadow.yaml")).plan
    )
    assert any("ShadowProductionVariants" in c for c in calls["set_shadow"])
    assert any("ListObjectsV2" in c for c in calls["metrics"])


def test_capture_off_and_no_place_for_it_stops_with_exit_6_before_any_change(world):
    from mlrollout.errors import ProviderError

    world.original = world.endpoint()
    world.s3.create_bucket(Bucket=BUCKET)
    path = world.tmp_path / "shadow.yaml"
    text = SHADOW_PLAN.format(url=world.url, then="rollback")
    path.write_text(text.replace("  capture_s3_uri: s3://capture-bucket/datacapture\n", ""))
    runner = Runner(s3_store(world), holder="runner-a")
    record = runner.create(load_plan(str(path)))
    with pytest.raises(ProviderError, match="DataCapture") as info:
        runner.drive(record.id, clock=world.clock)
    assert info.value.exit_code == ExitCode.PROVIDER
    assert sum(mutations(world).values()) == 0


def test_with_a_fifth_of_all_calls_throttled_a_shadow_ends_the_same(world, emulator, new_world):
    clean, _ = shadow(world, candidate=GOOD, then="promote")
    clean_mutations = mutations(world)
    clean_configs = world.configs()
    throttled_world = new_world("throttled")
    emulator.fault("throttle", rate=0.2, spare={"PutMetricData"})
    throttled, traffic = shadow(throttled_world, candidate=GOOD, then="promote")
    assert emulator.faults[0].hits > 20
    assert throttled.exit_code == clean.exit_code == ExitCode.OK
    # Throttling never makes it change more. Whether the baseline's old config is deleted
    # before the shadow is switched off (and made again) or after depends on which calls were
    # throttled; a second create of a config that still exists is refused, not applied.
    done = mutations(throttled_world)
    assert done.keys() == clean_mutations.keys()
    assert all(done[op] <= clean_mutations[op] for op in done), (done, clean_mutations)
    assert done["CreateEndpointConfig"] >= clean_mutations["CreateEndpointConfig"] - 1
    assert throttled_world.configs() == clean_configs
    assert throttled_world.live()["EndpointConfigName"] == world.live()["EndpointConfigName"]
    never_live(traffic)
