"""The ownership mark on a Vertex AI endpoint (three of its labels), through the real
``aiplatform_v1`` REST client against the fake: what is written and read, that only labels change
(``updateMask=labels``), and that another runner's adapter sees it."""

from __future__ import annotations

import pytest
from google.api_core.exceptions import BadRequest
from google.cloud import aiplatform_v1
from google.protobuf import field_mask_pb2
from test_vertex_endpoint import candidate, open_endpoint

from mlrollout.contracts import OwnerMark
from mlrollout.errors import ProviderAuthError

MARK = OwnerMark("churn-v2-canary-3f2a1b", "ci@runner-7 pid 4242", 1_800_000_060.0)
#: The mark as labels: lowercase letters, digits, ``-`` and ``_`` only.
LABELS = {
    "mlrollout-rollout": "churn-v2-canary-3f2a1b",
    "mlrollout-holder": "ci_runner-7_pid_4242",
    "mlrollout-expires": "1800000060",
}
#: What reading the labels gives back (the holder as the labels could hold it).
READ = OwnerMark("churn-v2-canary-3f2a1b", "ci_runner-7_pid_4242", 1_800_000_060.0)


def labelled_endpoint(world):
    """``churn`` with labels of its own (the team's), as endpoints in real projects have."""
    ep = world.endpoint()
    ep.labels = {"team": "churn", "env": "prod"}
    return ep


def test_write_then_read_round_trips_through_the_endpoint_labels(world):
    ep = labelled_endpoint(world)
    endpoint = open_endpoint(world, endpoint="4242")
    opened = world.vertex.counts()
    assert endpoint.read_owner() is None
    endpoint.write_owner(MARK)
    assert endpoint.read_owner() == READ
    assert ep.labels == {"team": "churn", "env": "prod", **LABELS}
    [(_, body, query)] = [b for b in world.vertex.bodies if b[0] == "UpdateEndpoint"]
    assert query["updateMask"] == ["labels"]
    assert body["labels"] == {"team": "churn", "env": "prod", **LABELS}
    assert "trafficSplit" not in body  # the write sends no split at all
    # A read is one GetEndpoint; a write is one GetEndpoint (to merge) and one UpdateEndpoint.
    assert world.vertex.counts() - opened == {"GetEndpoint": 3, "UpdateEndpoint": 1}


def test_none_removes_only_the_mark(world):
    ep = labelled_endpoint(world)
    endpoint = open_endpoint(world, endpoint="4242")
    endpoint.write_owner(MARK)
    endpoint.write_owner(None)
    assert endpoint.read_owner() is None
    assert ep.labels == {"team": "churn", "env": "prod"}
    endpoint.write_owner(None)  # again: nothing to remove, nothing sent
    assert world.vertex.count("UpdateEndpoint") == 2
    assert [labels for _, _, labels in world.vertex.label_writes] == [
        {"team": "churn", "env": "prod", **LABELS},
        {"team": "churn", "env": "prod"},
    ]


def test_writing_the_same_mark_twice_sends_one_update(world):
    ep = labelled_endpoint(world)
    endpoint = open_endpoint(world, endpoint="4242")
    endpoint.write_owner(MARK)
    endpoint.write_owner(MARK)
    assert world.vertex.count("UpdateEndpoint") == 1
    refreshed = OwnerMark(MARK.rollout_id, MARK.holder, MARK.expires_at + 60)
    endpoint.write_owner(refreshed)
    assert ep.labels["mlrollout-expires"] == "1800000120"
    assert world.vertex.count("UpdateEndpoint") == 2


def test_the_mark_changes_no_traffic_and_deploys_nothing(world):
    world.endpoint()
    endpoint = open_endpoint(world, endpoint="4242")
    endpoint.prepare(candidate(world), "v1")
    endpoint.set_traffic({"v2": 10, "v1": 90})
    before = list(world.vertex.applied)
    history = list(world.vertex.endpoint("4242").history)
    endpoint.write_owner(MARK)
    endpoint.write_owner(None)
    assert world.live() == {"v1": 90.0, "v2": 10.0}
    assert world.vertex.applied == before  # no split change, no (un)deployment
    assert world.vertex.endpoint("4242").history == history
    assert world.vertex.count("DeployModel") == 1


def test_the_mark_survives_the_rollout_s_own_changes(world):
    world.endpoint()
    world.vertex.op_seconds = 30.0
    endpoint = open_endpoint(world, endpoint="4242")
    endpoint.write_owner(MARK)
    endpoint.prepare(candidate(world), "v1")
    endpoint.set_traffic({"v2": 100, "v1": 0})  # updateMask traffic_split: labels untouched
    endpoint.finalize("v2", "v1")
    assert endpoint.read_owner() == READ


def test_a_second_runner_s_adapter_sees_the_first_one_s_mark(world):
    world.endpoint()
    first, second = open_endpoint(world), open_endpoint(world)  # by display name
    assert second.read_owner() is None
    first.write_owner(MARK)
    assert second.read_owner() == READ
    taken = OwnerMark("churn-v2-canary-9e8d7c", "ops@laptop pid 77", MARK.expires_at + 600)
    second.write_owner(taken)
    assert first.read_owner() == OwnerMark(taken.rollout_id, "ops_laptop_pid_77", 1_800_000_660.0)


def test_long_or_odd_values_are_made_label_safe(world):
    ep = world.endpoint()
    endpoint = open_endpoint(world, endpoint="4242")
    odd = OwnerMark("Churn.V2/Canary", "runner " + "x" * 80, 1_800_000_060.9)
    endpoint.write_owner(odd)  # the fake refuses what GCP would refuse
    assert ep.labels == {
        "mlrollout-rollout": "churn_v2_canary",
        "mlrollout-holder": ("runner_" + "x" * 80)[:63],
        "mlrollout-expires": "1800000060",
    }


def test_a_lost_update_response_is_not_sent_again(world):
    ep = world.endpoint()
    world.vertex.lose = {"UpdateEndpoint"}
    endpoint = open_endpoint(world, endpoint="4242")
    endpoint.write_owner(MARK)
    assert world.vertex.count("UpdateEndpoint", status=503) == 1
    assert world.vertex.count("UpdateEndpoint", status=None) == 1  # the retry saw it applied
    assert ep.labels == LABELS


def test_throttling_is_retried_on_the_injected_clock(world):
    ep = world.endpoint()
    endpoint = open_endpoint(world, endpoint="4242")
    world.vertex.fault_rate = 0.5
    start = world.clock.now()
    endpoint.write_owner(MARK)
    assert endpoint.read_owner() == READ
    endpoint.write_owner(None)
    world.vertex.fault_rate = 0.0
    assert ep.labels == {}
    assert sum(1 for _, s in world.vertex.calls if s in (429, 503)) >= 1
    assert world.clock.now() > start


def test_a_denied_update_names_the_permission(world):
    world.endpoint()
    endpoint = open_endpoint(world, endpoint="4242")
    world.vertex.deny = {"UpdateEndpoint"}
    with pytest.raises(ProviderAuthError) as info:
        endpoint.write_owner(MARK)
    assert "aiplatform.endpoints.update" in (info.value.hint or "")


def test_the_fake_applies_only_what_the_mask_names(world):
    """A PATCH with ``updateMask=labels`` and another split in its body changes the labels only
    (and one with ``traffic_split`` leaves the labels): a write that moved traffic as a side
    effect would show here."""
    ep = world.endpoint({"v1": "churn-v1", "v0": "churn-v0"})
    client = open_endpoint(world, endpoint="4242").client
    name = "projects/demo-proj/locations/us-central1/endpoints/4242"
    client.update_endpoint(
        endpoint=aiplatform_v1.Endpoint(
            name=name, labels={"team": "churn"}, traffic_split={"1001": 50, "1002": 50}
        ),
        update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
    )
    assert ep.labels == {"team": "churn"}
    assert world.live() == {"v1": 100.0, "v0": 0.0}
    client.update_endpoint(
        endpoint=aiplatform_v1.Endpoint(name=name, traffic_split={"1001": 50, "1002": 50}),
        update_mask=field_mask_pb2.FieldMask(paths=["traffic_split"]),
    )
    assert ep.labels == {"team": "churn"}
    assert world.live() == {"v1": 50.0, "v0": 50.0}
    with pytest.raises(BadRequest, match="not a valid label"):
        client.update_endpoint(
            endpoint=aiplatform_v1.Endpoint(name=name, labels={"Team": "churn"}),
            update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
        )
