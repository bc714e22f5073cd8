"""The SageMaker adapter through the real boto3 client against the emulator: what each method
does on the endpoint, that nothing is applied twice, and how failures surface."""

from __future__ import annotations

import pytest
from mlrollout_aws._aws import RetryPolicy, make_client
from mlrollout_aws.sagemaker import SageMakerEndpoint

from mlrollout.errors import ExitCode, ProviderAuthError, ProviderError, ProviderThrottled
from mlrollout.plan.model import Candidate

CANDIDATE = Candidate(name="v2", model="churn-v2", instance_type="ml.m5.large", instance_count=1)
MUTATIONS = (
    "CreateEndpointConfig",
    "UpdateEndpoint",
    "UpdateEndpointWeightsAndCapacities",
    "DeleteEndpointConfig",
)


def adapter(world, name: str = "churn", attempts: int = 8) -> SageMakerEndpoint:
    client = make_client("sagemaker", region="us-east-1", endpoint_url=world.url)
    retry = RetryPolicy(attempts=attempts, sleep=world.clock.sleep)
    return SageMakerEndpoint(name, client, world.clock, region="us-east-1", retry=retry)


def mutations(world) -> dict[str, int]:
    return {op: world.emulator.count(op, applied=True) for op in MUTATIONS}


def managed(world) -> list[str]:
    return [c for c in world.configs() if "-mlr-" in c]


def test_describe_reports_percent_weights_counts_and_status(world):
    world.endpoint(variants=(("v1", "churn-v1"), ("v0", "churn-v0")))
    state = adapter(world).describe()
    assert state.status == "ready"
    assert state.weights() == {"v1": 100.0, "v0": 0.0}
    assert state.serving_all() == "v1"
    assert state.variant("v1").instance_count == 2


def test_prepare_adds_the_candidate_at_zero_on_a_tagged_config(world):
    original = world.endpoint()
    endpoint = adapter(world)
    before = world.clock.now()
    state = endpoint.prepare(CANDIDATE, "v1")
    assert state.weights() == {"v1": 100.0, "v2": 0.0}
    assert state.variant("v2").instance_count == 1
    assert state.variant("v1").instance_count == 2  # the baseline's count is kept
    assert world.clock.now() - before >= world.emulator.update_seconds  # waited for InService
    [config] = managed(world)
    assert world.live()["EndpointConfigName"] == config
    arn = world.sagemaker.describe_endpoint_config(EndpointConfigName=config)["EndpointConfigArn"]
    tags = {t["Key"]: t["Value"] for t in world.sagemaker.list_tags(ResourceArn=arn)["Tags"]}
    assert tags == {
        "mlrollout:managed": "true",
        "mlrollout:endpoint": "churn",
        "mlrollout:base-config": original,
    }
    # Again: a no-op (the candidate is there), one DescribeEndpoint and nothing else.
    calls = sum(world.emulator.calls.values())
    endpoint.prepare(CANDIDATE, "v1")
    assert sum(world.emulator.calls.values()) - calls == 1
    assert mutations(world) == {
        "CreateEndpointConfig": 1,
        "UpdateEndpoint": 1,
        "UpdateEndpointWeightsAndCapacities": 0,
        "DeleteEndpointConfig": 0,
    }


def test_set_traffic_maps_percent_to_relative_weights_and_keeps_counts(world):
    world.endpoint()
    endpoint = adapter(world)
    endpoint.prepare(CANDIDATE, "v1")
    state = endpoint.set_traffic({"v2": 25.0, "v1": 75.0})
    assert state.weights() == {"v1": 75.0, "v2": 25.0}
    variants = {v["VariantName"]: v for v in world.live()["ProductionVariants"]}
    assert variants["v2"]["CurrentWeight"] == pytest.approx(0.25)
    assert variants["v1"]["CurrentInstanceCount"] == 2
    assert variants["v2"]["CurrentInstanceCount"] == 1
    endpoint.set_traffic({"v2": 25.0, "v1": 75.0})  # the same weights: no call
    assert world.emulator.count("UpdateEndpointWeightsAndCapacities") == 1


def test_invalid_weights_and_unknown_variants_are_refused_before_any_call(world):
    world.endpoint()
    endpoint = adapter(world)
    with pytest.raises(ProviderError, match="not a variant"):
        endpoint.set_traffic({"v9": 100.0})
    with pytest.raises(ProviderError, match="sum to 90"):
        endpoint.set_traffic({"v1": 90.0})
    assert world.emulator.count("UpdateEndpointWeightsAndCapacities") == 0


def test_rollback_finalize_returns_to_the_original_config_and_leaves_no_mlrollout_config(world):
    original = world.endpoint()
    endpoint = adapter(world)
    endpoint.prepare(CANDIDATE, "v1")
    endpoint.set_traffic({"v1": 90.0, "v2": 10.0})
    endpoint.set_traffic({"v1": 100.0, "v2": 0.0})
    state = endpoint.finalize(keep="v1", retire="v2")
    assert state.weights() == {"v1": 100.0}
    assert world.live()["EndpointConfigName"] == original
    assert world.configs() == [original]  # the user's config is never deleted
    assert world.live()["ProductionVariants"][0]["CurrentInstanceCount"] == 2


def test_promote_finalize_leaves_only_the_candidate_on_one_mlrollout_config(world):
    original = world.endpoint()
    endpoint = adapter(world)
    endpoint.prepare(CANDIDATE, "v1")
    endpoint.set_traffic({"v1": 0.0, "v2": 100.0})
    state = endpoint.finalize(keep="v2", retire="v1")
    assert state.weights() == {"v2": 100.0}
    [config] = managed(world)
    assert world.live()["EndpointConfigName"] == config
    assert world.configs() == sorted([original, config])
    # Again: nothing to do.
    before = mutations(world)
    endpoint.finalize(keep="v2", retire="v1")
    assert mutations(world) == before


def test_finalize_refuses_a_variant_that_still_takes_traffic(world):
    world.endpoint()
    endpoint = adapter(world)
    endpoint.prepare(CANDIDATE, "v1")
    endpoint.set_traffic({"v1": 50.0, "v2": 50.0})
    with pytest.raises(ProviderError, match="still takes 50%"):
        endpoint.finalize(keep="v1", retire="v2")


def test_configs_that_look_like_ours_but_are_not_tagged_are_never_deleted(world):
    world.endpoint()
    lookalike = "churn-mlr-0123456789"
    world.sagemaker.create_endpoint_config(
        EndpointConfigName=lookalike,
        ProductionVariants=[
            {
                "VariantName": "v1",
                "ModelName": "churn-v1",
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
            }
        ],
    )
    endpoint = adapter(world)
    endpoint.prepare(CANDIDATE, "v1")
    endpoint.set_traffic({"v1": 100.0, "v2": 0.0})
    endpoint.finalize(keep="v1", retire="v2")
    assert lookalike in world.configs()


def test_a_lost_update_endpoint_response_is_not_applied_twice(world):
    world.endpoint()
    world.emulator.fault("500", operations={"UpdateEndpoint"}, times=1, after=True)
    world.emulator.fault(
        "500", operations={"UpdateEndpointWeightsAndCapacities"}, times=1, after=True
    )
    endpoint = adapter(world)
    endpoint.prepare(CANDIDATE, "v1")
    endpoint.set_traffic({"v1": 80.0, "v2": 20.0})
    assert world.emulator.count("UpdateEndpoint") == 1  # the retry saw it in progress
    assert world.emulator.count("UpdateEndpointWeightsAndCapacities") == 1
    assert endpoint.describe().weights() == {"v1": 80.0, "v2": 20.0}


def test_throttling_is_retried_on_the_injected_clock(world):
    world.endpoint()
    world.emulator.fault("throttle", operations={"DescribeEndpoint"}, times=3)
    start = world.clock.now()
    assert adapter(world).describe().serving_all() == "v1"
    assert world.emulator.count("DescribeEndpoint") == 4
    assert world.clock.now() > start  # backed off in virtual time, not real time


def test_throttling_that_never_ends_is_exit_6_naming_the_call(world):
    world.endpoint()
    world.emulator.fault("throttle", operations={"DescribeEndpoint"})
    with pytest.raises(ProviderThrottled, match=r"SageMaker\.DescribeEndpoint") as info:
        adapter(world, attempts=3).describe()
    assert info.value.exit_code == ExitCode.PROVIDER
    assert world.emulator.count("DescribeEndpoint") == 3


def test_access_denied_names_the_iam_action(world):
    world.endpoint()
    world.emulator.fault("denied", operations={"UpdateEndpointWeightsAndCapacities"})
    endpoint = adapter(world)
    endpoint.prepare(CANDIDATE, "v1")
    with pytest.raises(ProviderAuthError) as info:
        endpoint.set_traffic({"v1": 90.0, "v2": 10.0})
    assert "SageMaker.UpdateEndpointWeightsAndCapacities was denied" in info.value.message
    assert "sagemaker:UpdateEndpointWeightsAndCapacities" in (info.value.hint or "")
    assert info.value.exit_code == ExitCode.PROVIDER


def test_missing_credentials_are_exit_6_before_any_call(world, monkeypatch):
    world.endpoint()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ProviderAuthError, match="no AWS credentials") as info:
        adapter(world).describe()
    assert "sagemaker:DescribeEndpoint" in (info.value.hint or "")
    assert world.emulator.count("DescribeEndpoint") == 0


def test_an_unknown_endpoint_or_model_is_exit_6_before_any_change(world):
    world.endpoint(candidate_models=())
    with pytest.raises(ProviderError, match="endpoint 'nope' does not exist in us-east-1"):
        adapter(world, "nope").describe()
    with pytest.raises(ProviderError, match="model 'churn-v2' does not exist") as info:
        adapter(world).prepare(CANDIDATE, "v1")
    assert info.value.exit_code == ExitCode.PROVIDER
    assert sum(mutations(world).values()) == 0


@pytest.mark.parametrize("failure", ["rollback", "Failed", "UpdateRollbackFailed"])
def test_a_failed_update_stops_with_the_reason_and_cleans_its_config(world, failure):
    original = world.endpoint()
    world.emulator.fail_updates = failure
    with pytest.raises(ProviderError, match="injected") as info:
        adapter(world).prepare(CANDIDATE, "v1")
    assert info.value.exit_code == ExitCode.PROVIDER
    assert world.configs() == [original]  # the config it made is gone; nothing half-done


def test_an_update_that_never_finishes_times_out_on_the_clock(world):
    world.endpoint()
    world.emulator.update_seconds = 10_000
    endpoint = adapter(world)
    endpoint.update_timeout = 600
    with pytest.raises(ProviderError, match="still Updating after 600s"):
        endpoint.prepare(CANDIDATE, "v1")


def test_an_unreachable_endpoint_is_retried_then_exit_6(world):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = make_client("sagemaker", region="us-east-1", endpoint_url=f"http://127.0.0.1:{port}")
    slept: list[float] = []
    retry = RetryPolicy(attempts=3, sleep=slept.append)
    endpoint = SageMakerEndpoint("churn", client, world.clock, retry=retry)
    with pytest.raises(ProviderError, match="could not reach AWS after 3 attempts") as info:
        endpoint.describe()
    assert info.value.exit_code == ExitCode.PROVIDER
    assert len(slept) == 2  # backed off between the attempts
