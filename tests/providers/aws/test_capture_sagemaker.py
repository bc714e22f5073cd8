"""The DataCapture capture source through boto3 against the emulator's S3: an endpoint with a
shadow variant and DataCapture on, the traffic generator writing capture files in SageMaker's
layout (fixtures included: broken JSON, a record without ids, an undecodable base64 body), and
the source pairing them by inference id, then event id, with the calls of each look counted."""

from __future__ import annotations

from typing import Any

import pytest
from aws_traffic import FIXTURES_PER_FILE, GOOD
from mlrollout_aws._aws import RetryPolicy
from mlrollout_aws.capture import LATE, DataCaptureSource, hour_prefix

from mlrollout.capture import CaptureQuery

BUCKET = "capture-bucket"
URI = f"s3://{BUCKET}/dc"


def shadow_endpoint(world: Any, agreement: float) -> Any:
    """churn: v1 production, v2 its shadow at 50 %, capturing to URI; traffic on."""
    for model in ("churn-v1", "churn-v2"):
        world.model(model)
    variant = {"ModelName": "churn-v1", "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}
    world.sagemaker.create_endpoint_config(
        EndpointConfigName="plain",
        ProductionVariants=[{**variant, "VariantName": "v1", "InitialVariantWeight": 1.0}],
    )
    world.sagemaker.create_endpoint(EndpointName="churn", EndpointConfigName="plain")
    world.sagemaker.create_endpoint_config(
        EndpointConfigName="shadowed",
        ProductionVariants=[{**variant, "VariantName": "v1", "InitialVariantWeight": 1.0}],
        ShadowProductionVariants=[
            {**variant, "VariantName": "v2", "ModelName": "churn-v2", "InitialVariantWeight": 0.5}
        ],
        DataCaptureConfig={
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": URI,
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        },
    )
    world.sagemaker.update_endpoint(EndpointName="churn", EndpointConfigName="shadowed")
    world.s3.create_bucket(Bucket=BUCKET)
    traffic = world.traffic(agreement={"v2": agreement}, v1=GOOD, v2=GOOD)
    world.clock.sleep(world.emulator.update_seconds)
    return traffic


def source(world: Any, *, cursor: bool = True) -> DataCaptureSource:
    return DataCaptureSource(
        "churn",
        world.s3,
        world.sagemaker,
        retry=RetryPolicy(base=0.001, cap=0.01, sleep=world.clock.sleep),
        cursor=cursor,
    )


def query(start: float, end: float, bins: Any = None) -> CaptureQuery:
    """A look's query; ``bins`` those of the stage's first look (the engine keeps them)."""
    return CaptureQuery(start, end, "v1", "v2", "$.predictions[0]", bins=bins)


def test_the_emulator_keeps_shadow_variants_and_reports_them(world):
    shadow_endpoint(world, 1.0)
    live = world.live()
    assert [v["VariantName"] for v in live["ProductionVariants"]] == ["v1"]
    [shadow] = live["ShadowProductionVariants"]
    assert (shadow["VariantName"], shadow["CurrentWeight"]) == ("v2", 0.5)
    assert live["DataCaptureConfig"]["DestinationS3Uri"] == URI
    config = world.sagemaker.describe_endpoint_config(EndpointConfigName="shadowed")
    assert [v["VariantName"] for v in config["ShadowProductionVariants"]] == ["v2"]
    assert world.emulator.shadows("churn") == {"v2": 50.0}
    assert world.emulator.weights("churn") == {"v1": 100.0}  # a shadow takes no live weight


def test_a_config_with_two_production_variants_and_a_shadow_is_refused(world):
    world.model("m")
    variant = {"ModelName": "m", "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}
    with pytest.raises(Exception, match="only one variant"):
        world.sagemaker.create_endpoint_config(
            EndpointConfigName="bad",
            ProductionVariants=[{**variant, "VariantName": "a"}, {**variant, "VariantName": "b"}],
            ShadowProductionVariants=[{**variant, "VariantName": "c"}],
        )


def test_capture_files_are_paired_and_the_fixtures_counted_never_fatal(world):
    traffic = shadow_endpoint(world, 1.0)
    start = world.clock.now() - world.emulator.update_seconds  # from the first capture file on
    world.clock.sleep(600)
    end = world.clock.now()
    summary = source(world).read(query(start, end))
    assert summary.error is None
    keys = world.s3.list_objects_v2(Bucket=BUCKET, Prefix="dc/churn/")["Contents"]
    assert all(
        k["Key"].startswith(hour_prefix("dc", "churn", k["Key"].split("/")[2], int(start // 3600)))
        or k["Key"].startswith("dc/churn/")
        for k in keys
    )
    # the fixtures: broken JSON and an undecodable base64 body per variant are unparsed; the
    # record without ids is parsed but pairs with nothing
    assert summary.unparsed == {"v1": 2, "v2": 2}
    assert summary.paired > 2000  # 50 % of ~20 rps over 10 minutes, less errors
    assert summary.agreement == 1.0
    # its id-less fixture, and the copies of requests the baseline failed (it captured no answer)
    assert 1 <= summary.unpaired["v2"] < 0.05 * summary.paired
    assert summary.records["v2"] < summary.records["v1"]
    assert sum(traffic.captured.values()) >= summary.records["v1"] + summary.records["v2"]
    assert FIXTURES_PER_FILE == 3


def test_a_disagreeing_shadow_shows_in_the_agreement(world):
    shadow_endpoint(world, 0.8)
    start = world.clock.now()
    world.clock.sleep(600)
    summary = source(world).read(query(start, world.clock.now()))
    assert summary.agreement is not None and 0.75 < summary.agreement < 0.85
    assert summary.examples  # the disagreeing pairs, with their ids


def test_a_look_lists_each_hour_once_per_variant_and_gets_only_new_files(world):
    traffic = shadow_endpoint(world, 1.0)
    start = world.clock.now() - world.emulator.update_seconds
    capture = source(world)
    per_look = []
    summaries = []
    for _ in range(12):
        world.clock.sleep(60)
        before = (capture.listings, capture.gets, capture.describes)
        bins = summaries[0].bins if summaries else None
        summaries.append(capture.read(query(start, world.clock.now(), bins)))
        per_look.append(
            tuple(
                now - was
                for now, was in zip(
                    (capture.listings, capture.gets, capture.describes), before, strict=True
                )
            )
        )
    hours = {int(start // 3600), int(world.clock.now() // 3600)}
    for listings, _, _ in per_look:
        assert listings <= 2 * len(hours)  # one per variant per hour prefix of the window
    for _, gets, _ in per_look[1:]:
        assert gets <= 2  # the one new file per variant of the minute since the last look
    # each capture file is read once, whatever the number of looks
    assert sum(g for _, g, _ in per_look) == sum(traffic.capture_files.values())
    assert sum(d for _, _, d in per_look) == 1  # DescribeEndpoint once, for the location
    print(f"\ncapture calls per look (listings, gets, describes): {per_look}")
    # the same summary without the cursor (a new process)
    fresh = source(world, cursor=False).read(query(start, world.clock.now(), summaries[0].bins))
    last = summaries[-1]
    assert (fresh.paired, fresh.agreed, fresh.records, fresh.unparsed, fresh.unpaired) == (
        last.paired,
        last.agreed,
        last.records,
        last.unparsed,
        last.unpaired,
    )
    assert fresh.counts == last.counts


def test_an_hour_done_is_not_listed_again(world):
    shadow_endpoint(world, 1.0)
    start = world.clock.now()
    capture = source(world)
    world.clock.sleep(3600 + LATE + 60)
    first = capture.read(query(start, world.clock.now()))
    listed = capture.listings
    world.clock.sleep(60)
    capture.read(query(start, world.clock.now(), first.bins))
    # the closed hours of the window are skipped: only the current hour, once per variant
    assert capture.listings - listed == 2


def test_unreadable_capture_is_an_error_measurement(world):
    shadow_endpoint(world, 1.0)
    world.emulator.fault("denied", service="s3", operations={"ListObjectsV2"})
    summary = source(world).read(query(world.clock.now() - 60, world.clock.now()))
    assert summary.error is not None and "DataCapture" in summary.error
