"""The Vertex AI adapter through the real ``aiplatform_v1`` REST client against the fake."""

from __future__ import annotations

import pytest
from gcp_world import World
from mlrollout_gcp._gcp import RetryPolicy
from mlrollout_gcp.spec import VertexProviderSpec
from mlrollout_gcp.vertex import VertexEndpoint

from mlrollout.adapters import whole_percents as integer_split
from mlrollout.contracts import ProviderContext
from mlrollout.errors import ExitCode, ProviderAuthError, ProviderError, ProviderThrottled
from mlrollout.plan.loader import load_plan


def open_endpoint(world: World, **fill) -> VertexEndpoint:
    plan = load_plan(str(world.plan(**fill))).plan
    endpoint, _ = VertexProviderSpec.open(ProviderContext(plan=plan, clock=world.clock, store=None))
    assert isinstance(endpoint, VertexEndpoint)
    endpoint.retry = RetryPolicy(sleep=world.clock.sleep, base=0.5)
    return endpoint


def candidate(world: World):
    return load_plan(str(world.plan())).plan.candidate


@pytest.mark.parametrize(
    "name",
    ["churn", "4242", "projects/demo-proj/locations/us-central1/endpoints/4242"],
    ids=["display-name", "id", "resource"],
)
def test_describe_names_deployed_models_by_display_name(world, name):
    world.endpoint({"v1": "churn-v1", "v0": "churn-v0"})
    state = open_endpoint(world, endpoint=name).describe()
    assert state.weights() == {"v1": 100.0, "v0": 0.0}
    v1 = state.variant("v1")
    assert v1 is not None and v1.instance_type == "n1-standard-4" and v1.instance_count == 1
    assert v1.model == "projects/demo-proj/locations/us-central1/models/churn-v1"
    assert state.serving_all() == "v1"
    listed = world.vertex.count("ListEndpoints")
    assert listed == (1 if name == "churn" else 0)


def test_a_display_name_is_resolved_across_pages(world):
    world.vertex.page_size = 1
    world.endpoint(display_name="other", endpoint_id="1")
    world.endpoint(display_name="churn", endpoint_id="2", deployed={"v9": "m9"})
    assert open_endpoint(world).describe().weights() == {"v9": 100.0}
    assert world.vertex.count("ListEndpoints") == 2


def test_an_unknown_endpoint_or_model_fails_before_any_change(world):
    world.endpoint(candidate_models=())
    with pytest.raises(ProviderError, match="'nope' does not exist") as info:
        open_endpoint(world, endpoint="nope").describe()
    assert info.value.exit_code == ExitCode.PROVIDER
    with pytest.raises(ProviderError, match="does not exist"):
        open_endpoint(world, endpoint="999").describe()
    with pytest.raises(ProviderError, match="model 'churn-v2' does not exist") as info:
        open_endpoint(world).describe()
    assert "aiplatform.models.get" in (info.value.hint or "")
    assert world.vertex.applied == []


@pytest.mark.parametrize(
    ("call", "permission"),
    [
        ("GetEndpoint", "aiplatform.endpoints.get"),
        ("DeployModel", "aiplatform.endpoints.deploy"),
        ("UpdateEndpoint", "aiplatform.endpoints.update"),
    ],
)
def test_permission_denied_names_the_iam_permission(world, call, permission):
    world.endpoint()
    endpoint = open_endpoint(world)
    world.vertex.deny = {call}
    with pytest.raises(ProviderAuthError) as info:
        endpoint.prepare(candidate(world), "v1")
        endpoint.set_traffic({"v2": 10, "v1": 90})
    assert info.value.exit_code == ExitCode.PROVIDER
    assert permission in (info.value.hint or "")
    assert world.vertex.count(call, status=403) == 1  # a denial is not retried


def test_without_credentials_the_provider_says_how_to_get_them(world):
    plan = load_plan(str(world.plan(url="https://127.0.0.1:9"))).plan
    with pytest.raises(ProviderAuthError, match="no Google Cloud credentials") as info:
        VertexProviderSpec.open(ProviderContext(plan=plan, clock=world.clock, store=None))
    assert info.value.exit_code == ExitCode.PROVIDER
    assert "application-default login" in (info.value.hint or "")


def test_prepare_deploys_at_zero_percent_and_waits_on_the_operation(world):
    world.endpoint()
    world.vertex.op_seconds = 300.0  # five (virtual) minutes
    endpoint = open_endpoint(world)
    start = world.clock.now()
    state = endpoint.prepare(candidate(world), "v1")
    assert state.weights() == {"v1": 100.0, "v2": 0.0}
    assert world.clock.now() - start >= 300.0
    assert world.vertex.count("GetOperation") >= 3
    [(_, body, _)] = [b for b in world.vertex.bodies if b[0] == "DeployModel"]
    assert body["trafficSplit"] == {"1001": 100, "0": 0}
    assert body["deployedModel"] == {
        "model": "projects/demo-proj/locations/us-central1/models/churn-v2",
        "displayName": "v2",
        "dedicatedResources": {
            "machineSpec": {"machineType": "n1-standard-4"},
            "minReplicaCount": 1,
            "maxReplicaCount": 1,
        },
    }
    # Idempotent: a second prepare finds the candidate and changes nothing.
    assert endpoint.prepare(candidate(world), "v1") == state
    assert world.vertex.count("DeployModel") == 1


def test_a_deployment_that_outlasts_the_timeout_is_an_error_naming_the_operation(world):
    world.endpoint()
    world.vertex.op_seconds = 7200.0
    endpoint = open_endpoint(world)
    endpoint.deploy_timeout = 600.0
    with pytest.raises(ProviderError, match=r"did not finish within 600s \(operation projects/"):
        endpoint.prepare(candidate(world), "v1")


def test_a_failed_deployment_is_reported(world):
    world.endpoint()
    world.vertex.op_seconds = 60.0
    world.vertex.fail_operations = {"DeployModel"}
    with pytest.raises(ProviderError, match="replicas did not start"):
        open_endpoint(world).prepare(candidate(world), "v1")
    assert world.live() == {"v1": 100.0}


def test_set_traffic_sends_whole_percents_summing_to_100(world):
    world.endpoint()
    endpoint = open_endpoint(world)
    endpoint.prepare(candidate(world), "v1")
    assert endpoint.set_traffic({"v2": 33.4, "v1": 66.6}).weights() == {"v1": 67.0, "v2": 33.0}
    [(_, body, query)] = [b for b in world.vertex.bodies if b[0] == "UpdateEndpoint"]
    assert body["trafficSplit"] == {"1002": 33, "1001": 67}
    assert query["updateMask"] == ["trafficSplit"]  # the REST transport's spelling
    # The same weights again: no call.
    endpoint.set_traffic({"v2": 33, "v1": 67})
    assert world.vertex.count("UpdateEndpoint") == 1
    with pytest.raises(ProviderError, match="not deployed"):
        endpoint.set_traffic({"v3": 100})


def test_finalize_undeploys_the_loser_with_the_final_split(world):
    world.endpoint()
    world.vertex.op_seconds = 30.0
    endpoint = open_endpoint(world)
    endpoint.prepare(candidate(world), "v1")
    endpoint.set_traffic({"v2": 100, "v1": 0})
    with pytest.raises(ProviderError, match="still takes 100%"):
        endpoint.finalize("v1", "v2")
    state = endpoint.finalize("v2", "v1")
    assert state.weights() == {"v2": 100.0}
    [(_, body, _)] = [b for b in world.vertex.bodies if b[0] == "UndeployModel"]
    assert body == {"deployedModelId": "1001", "trafficSplit": {"1002": 100}}
    assert endpoint.finalize("v2", "v1") == state  # already retired: nothing to do
    assert world.vertex.count("UndeployModel") == 1


def test_shadow_traffic_is_refused(world):
    world.endpoint()
    endpoint = open_endpoint(world)
    assert not endpoint.capabilities.shadow
    assert endpoint.set_shadow(None, 0).weights() == {"v1": 100.0}
    with pytest.raises(ProviderError, match="cannot mirror"):
        endpoint.set_shadow("v1", 10)


def test_throttling_and_unavailability_are_retried_on_the_injected_clock(world):
    world.endpoint()
    endpoint = open_endpoint(world)
    world.vertex.fault_rate = 0.3
    start = world.clock.now()
    endpoint.prepare(candidate(world), "v1")
    endpoint.set_traffic({"v2": 10, "v1": 90})
    assert world.live() == {"v1": 90.0, "v2": 10.0}
    assert sum(1 for _, s in world.vertex.calls if s in (429, 503)) >= 1
    assert world.clock.now() > start  # backoff slept on the virtual clock, not the wall
    assert [what for what, _ in world.vertex.applied] == ["DeployModel", "UpdateEndpoint"]


def test_retries_run_out_as_a_provider_error(world):
    world.endpoint()
    endpoint = open_endpoint(world)
    endpoint.retry = RetryPolicy(attempts=3, sleep=world.clock.sleep)
    world.vertex.fault_rate = 1.0
    with pytest.raises(ProviderError, match="after 3 attempts") as info:
        endpoint.describe()
    assert info.value.exit_code == ExitCode.PROVIDER
    assert isinstance(info.value, ProviderThrottled) or "server-side" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({"a": 10, "b": 90}, {"a": 10, "b": 90}),
        ({"a": 33.4, "b": 66.6}, {"a": 33, "b": 67}),
        ({"a": 50.5, "b": 49.5}, {"a": 51, "b": 49}),
        ({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, {"a": 34, "b": 33, "c": 33}),
        ({"a": 0.4, "b": 99.6}, {"a": 0, "b": 100}),
        ({"a": 100, "b": 0}, {"a": 100, "b": 0}),
    ],
)
def test_integer_split_rounds_to_whole_percents_summing_to_100(weights, expected):
    split = integer_split(weights)
    assert split == expected
    assert sum(split.values()) == 100
    total = sum(weights.values())
    assert all(abs(split[k] - 100 * w / total) < 1 for k, w in weights.items())


@pytest.mark.parametrize("call", ["DeployModel", "UndeployModel", "UpdateEndpoint"])
def test_a_lost_response_never_applies_a_change_twice(world, call):
    """The change was made but its response was lost (503): the retry finds it — the running
    operation is waited for — and sends nothing again."""
    world.endpoint()
    world.vertex.op_seconds = 120.0
    endpoint = open_endpoint(world)
    world.vertex.lose = {call}
    endpoint.prepare(candidate(world), "v1")
    endpoint.set_traffic({"v2": 100, "v1": 0})
    assert endpoint.finalize("v2", "v1").weights() == {"v2": 100.0}
    assert world.vertex.count(call, status=503) == 1
    assert [what for what, _ in world.vertex.applied] == [
        "DeployModel",
        "UpdateEndpoint",
        "UndeployModel",
    ]


def test_a_deployment_left_running_by_a_crashed_runner_is_waited_for(world):
    world.endpoint()
    world.vertex.op_seconds = 600.0
    first = open_endpoint(world)
    first.deploy_timeout = 60.0  # gives up (as a crash would) while the operation runs on
    with pytest.raises(ProviderError, match="did not finish"):
        first.prepare(candidate(world), "v1")
    state = open_endpoint(world).prepare(candidate(world), "v1")  # `mlrollout resume`
    assert state.weights() == {"v1": 100.0, "v2": 0.0}
    assert world.vertex.count("DeployModel") == 1


def test_the_fake_keeps_min_and_max_replicas_and_the_adapter_reports_the_minimum(world):
    """A deployed model's dedicatedResources keep minReplicaCount and maxReplicaCount as sent
    (here through the real client, autoscaling 2..5); instance_count is the minimum, the
    capacity always running."""
    from google.cloud import aiplatform_v1

    world.endpoint()
    endpoint = open_endpoint(world)
    endpoint.describe()
    operation = endpoint.client.deploy_model(
        endpoint=endpoint.resource(),
        deployed_model=aiplatform_v1.DeployedModel(
            model=endpoint.model_resource("churn-v2"),
            display_name="v2",
            dedicated_resources=aiplatform_v1.DedicatedResources(
                machine_spec=aiplatform_v1.MachineSpec(machine_type="n1-standard-8"),
                min_replica_count=2,
                max_replica_count=5,
            ),
        ),
        traffic_split={"1001": 100, "0": 0},
    )
    operation.result(timeout=5)
    raw = endpoint.client.get_endpoint(name=endpoint.resource())
    [v2] = [dm for dm in raw.deployed_models if dm.display_name == "v2"]
    assert (v2.dedicated_resources.min_replica_count, v2.dedicated_resources.max_replica_count) == (
        2,
        5,
    )
    models, _ = endpoint.deployed(raw)
    assert [(m.name, m.replicas, m.max_replicas) for m in models] == [("v1", 1, 1), ("v2", 2, 5)]
    green = endpoint.describe().variant("v2")
    assert green is not None and (green.instance_type, green.instance_count) == ("n1-standard-8", 2)
