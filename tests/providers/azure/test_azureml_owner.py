"""The ownership mark on an Azure ML online endpoint (three of its tags): azure-ai-ml over HTTPS
to the ARM fake. What is written and read, that the write is a PATCH of the tags alone (never a PUT
that carries traffic), and that another runner's adapter sees it."""

from __future__ import annotations

import pytest
from arm_fake import DROPPED
from azure.core.exceptions import HttpResponseError
from test_azureml_endpoint import adapter, writes

from mlrollout.contracts import OwnerMark
from mlrollout.errors import ExitCode, ProviderAuthError

MARK = OwnerMark("churn-green-3f2a1b", "ci@runner-7 pid 4242", 1_800_000_060.0)
TAGS = {
    "mlrollout-rollout": "churn-green-3f2a1b",
    "mlrollout-holder": "ci@runner-7 pid 4242",
    "mlrollout-expires": "1800000060",
}
ENDPOINT = r"/onlineEndpoints/churn$"


def tagged_endpoint(world) -> dict:
    """``churn`` with a tag of its own (the team's), as endpoints in real workspaces have."""
    world.endpoint()
    record = world.ws.endpoints["churn"]
    record["tags"] = {"team": "churn"}
    return record


def requests_since(world, start: int) -> list[tuple[str, str]]:
    """(method, what) of the ARM requests since ``start``, operation polls left out."""
    return [
        (m, p.rsplit("/", 1)[-1])
        for m, p, _ in world.fake.requests[start:]
        if "/fake/operations/" not in p
    ]


def test_write_then_read_round_trips_through_the_endpoint_tags(world):
    record = tagged_endpoint(world)
    endpoint, _ = adapter(world)
    start = len(world.fake.requests)
    assert endpoint.read_owner() is None
    assert requests_since(world, start) == [("GET", "churn")]  # one request
    endpoint.write_owner(MARK)
    assert endpoint.read_owner() == MARK
    assert record["tags"] == {"team": "churn", **TAGS}
    calls = requests_since(world, start)
    assert calls.count(("PATCH", "churn")) == 1
    assert {m for m, _ in calls} == {"GET", "PATCH"}  # no PUT: the traffic is never sent
    assert world.fake.applied == []  # no traffic, mirror or deployment change


def test_none_removes_only_the_mark(world):
    record = tagged_endpoint(world)
    endpoint, _ = adapter(world)
    endpoint.write_owner(MARK)
    endpoint.write_owner(None)
    assert endpoint.read_owner() is None
    assert record["tags"] == {"team": "churn"}
    endpoint.write_owner(None)  # again: nothing to remove, nothing sent
    assert writes(world) == [("PATCH", "churn"), ("PATCH", "churn")]
    assert [tags for _, _, tags in world.fake.tag_writes] == [
        {"team": "churn", **TAGS},
        {"team": "churn"},
    ]


def test_writing_the_same_mark_twice_sends_one_patch(world):
    record = tagged_endpoint(world)
    endpoint, _ = adapter(world)
    endpoint.write_owner(MARK)
    endpoint.write_owner(MARK)
    assert writes(world) == [("PATCH", "churn")]
    refreshed = OwnerMark(MARK.rollout_id, MARK.holder, MARK.expires_at + 60)
    endpoint.write_owner(refreshed)
    assert record["tags"]["mlrollout-expires"] == "1800000120"
    assert len(writes(world)) == 2


def test_the_mark_changes_neither_traffic_nor_mirror(world):
    world.endpoint()
    endpoint, plan = adapter(world)
    endpoint.prepare(plan.candidate, "blue")
    endpoint.set_shadow("green", 20)
    applied, history = list(world.fake.applied), list(world.fake.history["churn"])
    endpoint.write_owner(MARK)
    endpoint.write_owner(None)
    live = world.live()
    assert (live["traffic"], live["mirrorTraffic"]) == ({"blue": 100}, {"green": 20})
    assert world.fake.applied == applied
    assert world.fake.history["churn"] == history
    assert [w for w in writes(world) if w[0] == "PUT"] == [("PUT", "green"), ("PUT", "churn")]


def test_the_mark_survives_the_rollout_s_own_changes(world):
    world.endpoint()
    endpoint, plan = adapter(world)
    endpoint.write_owner(MARK)
    endpoint.prepare(plan.candidate, "blue")
    endpoint.set_traffic({"blue": 0, "green": 100})  # the SDK's PUT carries the tags it read
    endpoint.finalize(keep="green", retire="blue")
    assert endpoint.read_owner() == MARK
    assert world.live()["traffic"] == {"green": 100}


def test_a_second_runner_s_adapter_sees_the_first_one_s_mark(world):
    world.endpoint()
    (first, _), (second, _) = adapter(world), adapter(world)
    assert second.read_owner() is None
    first.write_owner(MARK)
    assert second.read_owner() == MARK
    taken = OwnerMark("churn-green-9e8d7c", "ops@laptop pid 77", MARK.expires_at + 600)
    second.write_owner(taken)
    assert first.read_owner() == taken


@pytest.mark.parametrize("lost", [503, DROPPED], ids=["503-after-applying", "connection-dropped"])
def test_a_lost_patch_answer_is_not_sent_again(world, lost):
    record = tagged_endpoint(world)
    endpoint, _ = adapter(world)
    world.fake.faults.lost.append(("PATCH", ENDPOINT, lost))
    endpoint.write_owner(MARK)
    assert world.fake.count("PATCH", ENDPOINT) == 1  # the retry found the tags in place
    assert record["tags"] == {"team": "churn", **TAGS}


def test_throttling_is_retried_on_the_injected_clock(world):
    record = tagged_endpoint(world)
    endpoint, _ = adapter(world)
    world.fake.faults.once += [("GET", ENDPOINT, 429), ("PATCH", ENDPOINT, 503)]
    start = world.clock.now()
    endpoint.write_owner(MARK)
    assert record["tags"] == {"team": "churn", **TAGS}
    assert world.clock.now() > start  # backed off in virtual time


def test_a_denied_write_names_the_permission(world):
    tagged_endpoint(world)
    endpoint, _ = adapter(world)
    world.fake.faults.deny_writes = 403
    with pytest.raises(ProviderAuthError) as info:
        endpoint.write_owner(MARK)
    assert "onlineEndpoints/write" in (info.value.hint or "")
    assert info.value.exit_code == ExitCode.PROVIDER


def test_the_fake_patches_tags_only(world):
    """ARM's PATCH of an online endpoint takes tags and identity: a body that carries traffic is
    refused, so a tag write that moved traffic as a side effect could not pass unseen."""
    world.endpoint()
    endpoint, _ = adapter(world)
    operations = endpoint._arm_operations()
    with pytest.raises(HttpResponseError, match="tags and identity only"):
        operations.begin_update(
            resource_group_name=world.ws.rg,
            workspace_name=world.ws.name,
            endpoint_name="churn",
            body={"tags": {}, "properties": {"traffic": {}}},
        )
    assert world.live()["traffic"] == {"blue": 100}
