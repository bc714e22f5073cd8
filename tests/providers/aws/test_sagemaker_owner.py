"""The ownership mark on a SageMaker endpoint (its tags), through the real boto3 client against
the emulator: what is written and read, that nothing else on the endpoint changes, and that
another runner's adapter sees it."""

from __future__ import annotations

import pytest
from mlrollout_aws._aws import RetryPolicy, make_client
from mlrollout_aws.sagemaker import SageMakerEndpoint
from test_sagemaker_endpoint import CANDIDATE, mutations

from mlrollout.contracts import OWNER_KEYS, OwnerMark
from mlrollout.errors import ExitCode, ProviderAuthError

MARK = OwnerMark("churn-v2-canary-3f2a1b", "ci@runner-7 pid 4242", 1_800_000_060.0)
OWNER_TAGS = [
    ("mlrollout-expires", "1800000060"),
    ("mlrollout-holder", "ci@runner-7 pid 4242"),
    ("mlrollout-rollout", "churn-v2-canary-3f2a1b"),
]


def adapter(world, attempts: int = 8) -> SageMakerEndpoint:
    """An adapter with its own client, as a runner (with its own state store) builds one."""
    client = make_client("sagemaker", region="us-east-1", endpoint_url=world.url)
    retry = RetryPolicy(attempts=attempts, sleep=world.clock.sleep)
    return SageMakerEndpoint("churn", client, world.clock, region="us-east-1", retry=retry)


def tagged_endpoint(world) -> str:
    """``churn`` with a tag of its own (the team's), as endpoints in real accounts have."""
    world.endpoint()
    arn = world.live()["EndpointArn"]
    world.sagemaker.add_tags(ResourceArn=arn, Tags=[{"Key": "team", "Value": "churn"}])
    world.emulator.calls.clear()
    world.emulator.applied.clear()
    return arn


def calls(world) -> dict[str, int]:
    return {op: n for (_, op), n in sorted(world.emulator.calls.items())}


def test_write_then_read_round_trips_through_the_endpoint_tags(world):
    tagged_endpoint(world)
    endpoint = adapter(world)
    assert endpoint.read_owner() is None
    endpoint.write_owner(MARK)
    assert endpoint.read_owner() == MARK
    assert world.emulator.endpoint_tags("churn") == [*OWNER_TAGS, ("team", "churn")]
    # The ARN is read once (DescribeEndpoint), then each read is one ListTags, each write one
    # AddTags.
    assert calls(world) == {"AddTags": 1, "DescribeEndpoint": 1, "ListTags": 2}


def test_the_arn_comes_free_with_any_describe(world):
    world.endpoint()
    endpoint = adapter(world)
    endpoint.describe()
    world.emulator.calls.clear()
    endpoint.write_owner(MARK)
    endpoint.read_owner()
    assert calls(world) == {"AddTags": 1, "ListTags": 1}


def test_none_removes_only_the_mark(world):
    tagged_endpoint(world)
    endpoint = adapter(world)
    endpoint.write_owner(MARK)
    endpoint.write_owner(None)
    assert endpoint.read_owner() is None
    assert world.emulator.endpoint_tags("churn") == [("team", "churn")]
    endpoint.write_owner(None)  # again: nothing to remove, no error
    assert world.emulator.endpoint_tags("churn") == [("team", "churn")]
    assert world.emulator.count("DeleteTags", applied=True) == 2


def test_writing_the_same_mark_twice_or_a_refreshed_one_leaves_one_mark(world):
    tagged_endpoint(world)
    endpoint = adapter(world)
    endpoint.write_owner(MARK)
    endpoint.write_owner(MARK)
    assert world.emulator.endpoint_tags("churn") == [*OWNER_TAGS, ("team", "churn")]
    refreshed = OwnerMark(MARK.rollout_id, MARK.holder, MARK.expires_at + 60)
    endpoint.write_owner(refreshed)
    assert endpoint.read_owner() == refreshed
    tags = world.emulator.endpoint_tags("churn")
    assert [k for k, _ in tags] == sorted([*OWNER_KEYS, "team"])  # every key once
    assert ("mlrollout-expires", "1800000120") in tags


def test_the_mark_changes_no_traffic_and_no_config(world):
    world.endpoint()
    endpoint = adapter(world)
    endpoint.prepare(CANDIDATE, "v1")
    endpoint.set_traffic({"v1": 90.0, "v2": 10.0})
    before, config = mutations(world), world.live()["EndpointConfigName"]
    endpoint.write_owner(MARK)
    endpoint.write_owner(None)
    live = world.live()
    assert live["EndpointStatus"] == "InService"  # not Updating: nothing redeploys
    assert live["EndpointConfigName"] == config
    assert endpoint.describe().weights() == {"v1": 90.0, "v2": 10.0}
    assert mutations(world) == before


def test_the_mark_survives_the_rollout_s_own_changes(world):
    world.endpoint()
    endpoint = adapter(world)
    endpoint.write_owner(MARK)
    endpoint.prepare(CANDIDATE, "v1")  # a new endpoint config: tags stay on the endpoint
    endpoint.set_traffic({"v1": 0.0, "v2": 100.0})
    endpoint.finalize(keep="v2", retire="v1")
    assert endpoint.read_owner() == MARK


def test_a_second_runner_s_adapter_sees_the_first_one_s_mark(world):
    world.endpoint()
    first, second = adapter(world), adapter(world)
    assert second.read_owner() is None
    first.write_owner(MARK)
    assert second.read_owner() == MARK
    taken = OwnerMark("churn-v2-canary-9e8d7c", "ops@laptop pid 77", MARK.expires_at + 600)
    second.write_owner(taken)  # a takeover (the engine decides when) replaces the mark
    assert first.read_owner() == taken


def test_a_lost_add_tags_response_is_not_sent_again(world):
    world.endpoint()
    world.emulator.fault("500", operations={"AddTags"}, times=1, after=True)
    endpoint = adapter(world)
    endpoint.write_owner(MARK)
    assert world.emulator.count("AddTags") == 1  # the retry saw the tags in place
    assert endpoint.read_owner() == MARK


def test_throttled_tag_calls_are_retried_on_the_injected_clock(world):
    world.endpoint()
    world.emulator.fault("throttle", operations={"AddTags", "ListTags", "DeleteTags"}, times=3)
    endpoint = adapter(world)
    start = world.clock.now()
    endpoint.write_owner(MARK)
    assert endpoint.read_owner() == MARK
    endpoint.write_owner(None)
    assert endpoint.read_owner() is None
    assert world.clock.now() > start  # backed off in virtual time


def test_a_denied_tag_write_names_the_iam_action(world):
    world.endpoint()
    world.emulator.fault("denied", operations={"AddTags"})
    with pytest.raises(ProviderAuthError) as info:
        adapter(world).write_owner(MARK)
    assert "SageMaker.AddTags was denied" in info.value.message
    assert "sagemaker:AddTags" in (info.value.hint or "")
    assert info.value.exit_code == ExitCode.PROVIDER


def test_the_emulator_tags_as_sagemaker_does(world):
    """The project's layer over moto: AddTags overwrites a key's value, refuses a value outside
    SageMaker's pattern and a 51st tag, and an unknown resource is a ValidationException."""
    world.endpoint()
    arn = world.live()["EndpointArn"]
    world.sagemaker.add_tags(ResourceArn=arn, Tags=[{"Key": "a", "Value": "1"}])
    world.sagemaker.add_tags(ResourceArn=arn, Tags=[{"Key": "a", "Value": "2"}])
    assert world.sagemaker.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "a", "Value": "2"}]
    with pytest.raises(world.sagemaker.exceptions.ClientError, match="constraint"):
        world.sagemaker.add_tags(ResourceArn=arn, Tags=[{"Key": "b", "Value": "a<b"}])
    many = [{"Key": f"k{i}", "Value": "v"} for i in range(50)]
    with pytest.raises(world.sagemaker.exceptions.ClientError, match="at most 50 tags"):
        world.sagemaker.add_tags(ResourceArn=arn, Tags=many)
    unknown = arn.replace(":endpoint/churn", ":endpoint/nope")
    for call in (
        lambda: world.sagemaker.list_tags(ResourceArn=unknown),
        lambda: world.sagemaker.add_tags(ResourceArn=unknown, Tags=[{"Key": "a", "Value": "1"}]),
        lambda: world.sagemaker.delete_tags(ResourceArn=unknown, TagKeys=["a"]),
    ):
        with pytest.raises(world.sagemaker.exceptions.ClientError, match="ValidationException"):
            call()


def test_characters_sagemaker_refuses_in_a_tag_value_are_replaced(world):
    world.endpoint()
    endpoint = adapter(world)
    odd = OwnerMark(MARK.rollout_id, "CORP\\jdoe$<x>@host\tpid 9", MARK.expires_at)
    endpoint.write_owner(odd)
    assert endpoint.read_owner() == OwnerMark(
        MARK.rollout_id, "CORP_jdoe__x_@host_pid 9", MARK.expires_at
    )
