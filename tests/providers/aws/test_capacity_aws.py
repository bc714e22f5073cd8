"""Green at full capacity on SageMaker, through boto3 against the emulator: a candidate whose plan
names no instance_count gets the baseline variant's count; the adapter reports every variant's
count and type (the type from the live endpoint config, read once per config)."""

from __future__ import annotations

from mlrollout_aws._aws import RetryPolicy, make_client
from mlrollout_aws.sagemaker import SageMakerEndpoint

from mlrollout.plan.model import Candidate


def adapter(world) -> SageMakerEndpoint:
    client = make_client("sagemaker", region="us-east-1", endpoint_url=world.url)
    retry = RetryPolicy(attempts=8, sleep=world.clock.sleep)
    return SageMakerEndpoint("churn", client, world.clock, region="us-east-1", retry=retry)


def test_a_candidate_without_an_instance_count_gets_the_baselines(world):
    world.endpoint(instance_count=3)
    endpoint = adapter(world)
    green = Candidate.model_validate(
        {"name": "v2", "model": "churn-v2", "instance_type": "ml.m5.large"}
    )
    state = endpoint.prepare(green, "v1")
    assert [(v.name, v.instance_count) for v in state.variants] == [("v1", 3), ("v2", 3)]
    config = world.sagemaker.describe_endpoint_config(
        EndpointConfigName=world.live()["EndpointConfigName"]
    )
    counts = {v["VariantName"]: v["InitialInstanceCount"] for v in config["ProductionVariants"]}
    assert counts == {"v1": 3, "v2": 3}
    described = endpoint.describe()
    assert [(v.name, v.instance_type, v.instance_count) for v in described.variants] == [
        ("v1", "ml.m5.large", 3),
        ("v2", "ml.m5.large", 3),
    ]


def test_a_named_instance_count_is_kept_and_types_are_read_once_per_config(world):
    world.endpoint(instance_count=3)
    endpoint = adapter(world)
    first = endpoint.describe()
    assert first.variant("v1").instance_type == "ml.m5.large"
    endpoint.describe()
    assert world.emulator.count("DescribeEndpointConfig") == 1  # the config never changes
    one = Candidate(name="v2", model="churn-v2", instance_type="ml.c5.xlarge", instance_count=1)
    state = endpoint.prepare(one, "v1")
    assert state.variant("v2").instance_count == 1
    assert endpoint.describe().variant("v2").instance_type == "ml.c5.xlarge"
