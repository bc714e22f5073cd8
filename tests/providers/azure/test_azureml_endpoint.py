"""The Azure ML adapter on its own: azure-ai-ml's MLClient over HTTPS to the ARM fake."""

from __future__ import annotations

import pytest
from arm_fake import DROPPED
from azure_world import FakeCredential

from mlrollout.contracts import ProviderContext
from mlrollout.engine.runner import Runner
from mlrollout.errors import ExitCode, ProviderAuthError, ProviderError
from mlrollout.plan.loader import load_plan
from mlrollout.state.sqlite import open_sqlite_store


def adapter(world, credential=None, **settings):
    from mlrollout_azure.azureml import AzureMLEndpoint

    plan = load_plan(str(world.plan())).plan
    context = ProviderContext(plan=plan, clock=world.clock, store=None)  # type: ignore[arg-type]
    endpoint = AzureMLEndpoint.from_context(context, credential or FakeCredential())
    for key, value in settings.items():
        setattr(endpoint, key, value)
    return endpoint, plan


def writes(world):
    """The writes to endpoints and deployments (not the data assets the SDK registers for a
    deployment's data collector collections, as it creates the deployment)."""
    return [
        (m, p.rsplit("/", 1)[-1])
        for m, p, s in world.fake.requests
        if m != "GET" and s < 400 and "/data/" not in p
    ]


def test_describe_reads_deployments_traffic_mirror_and_states(world):
    world.endpoint()
    world.fake.add_endpoint(
        world.ws, "other", {"a": "churn-model:1", "b": "churn-model:1"}, {"a": 100}
    )
    world.ws.endpoints["churn"]["mirrorTraffic"] = {}
    endpoint, _ = adapter(world)
    state = endpoint.describe()
    assert state.name == "churn" and state.status == "ready"
    assert state.weights() == {"blue": 100.0}
    blue = state.variant("blue")
    assert blue is not None
    assert (blue.model, blue.instance_type, blue.instance_count, blue.status) == (
        "churn-model:1",
        "Standard_DS3_v2",
        1,
        "ready",
    )
    assert endpoint.location == "westeurope"


def test_prepare_creates_the_candidate_at_zero_percent_once(world):
    world.endpoint(data_collector=True)
    endpoint, plan = adapter(world)
    endpoint.describe()
    state = endpoint.prepare(plan.candidate, "blue")
    assert state.weights() == {"blue": 100.0, "green": 0.0}
    green = state.variant("green")
    assert green is not None and green.status == "ready" and green.model == "churn-model:2"
    # The candidate reuses the baseline's environment and scoring code.
    record = world.ws.deployments["churn"]["green"]
    assert record["environmentId"].endswith("/environments/serve/versions/3")
    assert record["codeConfiguration"]["scoringScript"] == "score.py"
    # ... and its data collector, under a data asset of its own (registered by the SDK)
    assert record["dataCollector"]["collections"]["model_outputs"]["dataId"].endswith(
        "/data/churn-green-model_outputs/versions/1"
    )
    assert world.ws.data[("churn-green-model_outputs", "1")]["dataUri"].endswith(
        "modelDataCollector/churn/green/model_outputs"
    )
    assert world.live()["traffic"] == {"blue": 100}
    endpoint.prepare(plan.candidate, "blue")  # again: nothing more happens
    assert writes(world) == [("PUT", "green")]


def test_prepare_waits_for_slow_provisioning_on_the_clock(world):
    world.endpoint()
    world.fake.faults.slow["green"] = 600.0
    endpoint, plan = adapter(world)
    before = world.clock.now()
    state = endpoint.prepare(plan.candidate, "blue")
    assert state.variant("green").status == "ready"
    assert 600.0 <= world.clock.now() - before <= 700.0


def test_prepare_gives_up_after_its_timeout(world):
    world.endpoint()
    world.fake.faults.slow["green"] = 3600.0
    endpoint, plan = adapter(world, lro_timeout=900.0)
    with pytest.raises(ProviderError, match="did not finish within 15m"):
        endpoint.prepare(plan.candidate, "blue")
    assert world.ws.deployments["churn"]["green"]["provisioningState"] == "Creating"
    assert world.live()["traffic"] == {"blue": 100}


def test_failed_provisioning_stops_with_a_clear_error_and_the_state_shows_it(world):
    world.endpoint()
    world.fake.faults.fail_provisioning["green"] = "Container crashed: ImportError in score.py"
    endpoint, plan = adapter(world)
    with pytest.raises(ProviderError) as caught:
        endpoint.prepare(plan.candidate, "blue")
    message = str(caught.value)
    assert "provisioning deployment 'green'" in message
    assert "ImportError in score.py" in message and "Failed" in message
    assert "get-logs" in (caught.value.hint or "")
    assert endpoint.describe().variant("green").status == "failed"
    assert world.live()["traffic"] == {"blue": 100}


def test_set_traffic_sends_whole_percents_and_skips_what_is_already_live(world):
    world.endpoint()
    endpoint, plan = adapter(world)
    endpoint.prepare(plan.candidate, "blue")
    state = endpoint.set_traffic({"green": 33.4, "blue": 66.6})
    assert state.weights() == {"blue": 67.0, "green": 33.0}
    assert world.live()["traffic"] == {"blue": 67, "green": 33}
    endpoint.set_traffic({"green": 33.0, "blue": 67.0})
    assert writes(world) == [("PUT", "green"), ("PUT", "churn")]
    with pytest.raises(ProviderError, match="sum to 90"):
        endpoint.set_traffic({"green": 40.0, "blue": 50.0})
    with pytest.raises(ProviderError, match="not a deployment"):
        endpoint.set_traffic({"red": 100.0})


def test_set_shadow_mirrors_at_most_half_to_one_deployment(world):
    world.endpoint()
    endpoint, plan = adapter(world)
    endpoint.prepare(plan.candidate, "blue")
    state = endpoint.set_shadow("green", 20)
    assert state.variant("green").shadow_percent == 20.0
    assert world.live()["mirrorTraffic"] == {"green": 20}
    with pytest.raises(ProviderError, match="at most 50%"):
        endpoint.set_shadow("green", 60)
    with pytest.raises(ProviderError, match="takes live traffic"):
        endpoint.set_shadow("blue", 10)
    assert endpoint.set_shadow(None, 0).variant("green").shadow_percent == 0.0
    assert world.live()["mirrorTraffic"] == {}


def test_finalize_deletes_only_a_deployment_without_traffic(world):
    world.endpoint()
    endpoint, plan = adapter(world)
    endpoint.prepare(plan.candidate, "blue")
    with pytest.raises(ProviderError, match="still takes 100%"):
        endpoint.finalize("green", "blue")
    state = endpoint.finalize("blue", "green")
    assert [v.name for v in state.variants] == ["blue"]
    assert world.deployments() == ["blue"]
    endpoint.finalize("blue", "green")  # already gone: nothing more happens
    assert writes(world) == [("PUT", "green"), ("DELETE", "green")]


def test_a_throttled_operation_poll_is_confirmed_by_reading_the_resource(world):
    world.endpoint()
    world.fake.faults.once.append(("GET", r"^/fake/operations/", 503))
    endpoint, plan = adapter(world)
    state = endpoint.prepare(plan.candidate, "blue")
    assert state.variant("green").status == "ready"
    assert writes(world) == [("PUT", "green")]


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda w: w.fake.workspaces.clear(), "workspace 'ml-ws' in resource group 'ml-rg'"),
        (lambda w: w.ws.endpoints.clear(), "online endpoint 'churn'"),
        (lambda w: w.ws.models.discard(("churn-model", "2")), "model 'churn-model' version '2'"),
    ],
)
def test_unknown_names_stop_before_any_change(world, setup, match):
    world.endpoint()
    setup(world)
    endpoint, _ = adapter(world)
    with pytest.raises(ProviderError, match=match) as caught:
        endpoint.describe()
    assert caught.value.exit_code == ExitCode.PROVIDER
    assert writes(world) == []


@pytest.mark.parametrize(("status", "words"), [(401, "rejected the credentials"), (403, "403")])
def test_denied_access_names_the_role_needed(world, status, words):
    world.endpoint()
    world.fake.faults.deny = status
    endpoint, _ = adapter(world)
    with pytest.raises(ProviderAuthError, match=words) as caught:
        endpoint.describe()
    assert "AzureML Data Scientist" in (caught.value.hint or "")


def test_no_credentials_is_an_auth_error_naming_what_to_do(world):
    from azure.core.exceptions import ClientAuthenticationError

    world.endpoint()
    endpoint, _ = adapter(
        world, credential=FakeCredential(ClientAuthenticationError("DefaultAzureCredential failed"))
    )
    with pytest.raises(ProviderAuthError, match="no Azure credentials") as caught:
        endpoint.describe()
    assert "az login" in (caught.value.hint or "")
    assert "AzureML Data Scientist" in (caught.value.hint or "")


def test_a_run_without_write_permission_exits_6_before_any_change(world):
    world.endpoint()
    world.fake.faults.deny_writes = 403
    store = open_sqlite_store(str(world.tmp_path / "state"))
    runner = Runner(store, holder="runner-a")
    record = runner.create(load_plan(str(world.plan())))
    world.fake.faults.deny = 403
    with pytest.raises(ProviderAuthError) as caught:
        runner.drive(record.id, clock=world.clock)
    assert caught.value.exit_code == ExitCode.PROVIDER
    assert world.fake.applied == []
    assert world.live()["traffic"] == {"blue": 100}


def test_whole_percents_keep_the_sum_at_100():
    from mlrollout_azure.azureml import whole_percents

    assert whole_percents({"a": 10.0, "b": 90.0}) == {"a": 10, "b": 90}
    assert whole_percents({"a": 33.3, "b": 33.3, "c": 33.4}) == {"a": 33, "b": 33, "c": 34}
    assert sum(whole_percents({"a": 12.5, "b": 87.5}).values()) == 100
    with pytest.raises(ProviderError):
        whole_percents({"a": 101.0, "b": -1.0})


def test_a_prepare_resumed_after_a_timeout_waits_again_without_a_second_create(world):
    world.endpoint()
    world.fake.faults.slow["green"] = 1500.0
    endpoint, plan = adapter(world, lro_timeout=900.0)
    with pytest.raises(ProviderError, match="did not finish"):
        endpoint.prepare(plan.candidate, "blue")
    state = endpoint.prepare(plan.candidate, "blue")  # `mlrollout resume`: the same call again
    assert state.variant("green").status == "ready"
    assert writes(world) == [("PUT", "green")]


# ------------------------------------------------- a mutation whose answer is lost (issue 12)

#: The fake applies the request, then the answer never arrives: a 503, or a dropped connection.
LOST = [pytest.param(503, id="503-after-applying"), pytest.param(DROPPED, id="connection-dropped")]


@pytest.mark.parametrize("lost", LOST)
def test_a_delete_whose_answer_is_lost_ends_as_success(world, lost):
    world.endpoint()
    endpoint, plan = adapter(world)
    endpoint.prepare(plan.candidate, "blue")
    world.fake.faults.lost.append(("DELETE", r"/deployments/green$", lost))
    state = endpoint.finalize("blue", "green")  # not "deployment 'green' not found"
    assert [v.name for v in state.variants] == ["blue"]
    assert world.deployments() == ["blue"]
    assert world.fake.count("DELETE") == 1  # asked whether it applied, not sent again
    assert world.fake.applied[-1] == ("deployment.delete", "churn", "green")


@pytest.mark.parametrize("lost", LOST)
def test_a_traffic_update_whose_answer_is_lost_is_not_sent_again(world, lost):
    world.endpoint()
    endpoint, plan = adapter(world)
    endpoint.prepare(plan.candidate, "blue")
    world.fake.faults.slow["churn"] = 120.0  # still updating when the retry asks
    world.fake.faults.lost.append(("PUT", r"/onlineEndpoints/churn$", lost))
    before = world.clock.now()
    state = endpoint.set_traffic({"blue": 90.0, "green": 10.0})
    assert state.weights() == {"blue": 90.0, "green": 10.0}
    assert world.live()["traffic"] == {"blue": 90, "green": 10}
    assert world.fake.count("PUT", r"/onlineEndpoints/churn$") == 1
    assert world.fake.applied[-1] == ("traffic", "churn", {"blue": 90, "green": 10})
    assert world.clock.now() - before >= 120.0  # it waited for the update, on the clock


def test_a_mirror_update_whose_answer_is_lost_is_not_sent_again(world):
    world.endpoint()
    endpoint, plan = adapter(world)
    endpoint.prepare(plan.candidate, "blue")
    world.fake.faults.lost.append(("PUT", r"/onlineEndpoints/churn$", 503))
    state = endpoint.set_shadow("green", 20)
    assert state.variant("green").shadow_percent == 20.0
    assert world.fake.count("PUT", r"/onlineEndpoints/churn$") == 1
    assert world.fake.applied[-1] == ("mirror", "churn", {"green": 20})


@pytest.mark.parametrize("lost", LOST)
def test_a_deployment_create_whose_answer_is_lost_is_not_sent_again(world, lost):
    world.endpoint()
    world.fake.faults.slow["green"] = 300.0  # still creating when the retry asks
    world.fake.faults.lost.append(("PUT", r"/deployments/green$", lost))
    endpoint, plan = adapter(world)
    state = endpoint.prepare(plan.candidate, "blue")
    assert state.variant("green").status == "ready"
    assert world.fake.count("PUT", r"/deployments/green$") == 1
    assert [a for a in world.fake.applied if a[0] == "deployment.put"] == [
        ("deployment.put", "churn", "green", "Succeeded")
    ]


def test_a_traffic_update_refused_before_it_applied_is_sent_again(world):
    world.endpoint()
    endpoint, plan = adapter(world)
    endpoint.prepare(plan.candidate, "blue")
    world.fake.faults.once.append(("PUT", r"/onlineEndpoints/churn$", 503))  # nothing applied
    state = endpoint.set_traffic({"blue": 90.0, "green": 10.0})
    assert state.weights() == {"blue": 90.0, "green": 10.0}
    sent = [s for m, p, s in world.fake.requests if m == "PUT" and p.endswith("/churn")]
    assert sent == [503, 201]


def test_instance_counts_are_reported_and_a_candidate_without_one_gets_the_baselines(world):
    """The deployment's ``sku.capacity`` is its instance count (azure-ai-ml's instance_count);
    a candidate whose plan names none is deployed at the baseline's (green at full capacity)."""
    from mlrollout.plan.model import Candidate

    world.endpoint(capacity=3)
    endpoint, _ = adapter(world)
    blue = endpoint.describe().variant("blue")
    assert blue is not None and blue.instance_count == 3
    green = Candidate.model_validate({"name": "green", "model": "churn-model:2"})
    state = endpoint.prepare(green, "blue")
    assert [(v.name, v.instance_type, v.instance_count) for v in state.variants] == [
        ("blue", "Standard_DS3_v2", 3),
        ("green", "Standard_DS3_v2", 3),
    ]
    assert world.ws.deployments["churn"]["green"]["capacity"] == 3
