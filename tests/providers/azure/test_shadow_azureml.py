"""Shadow on Azure ML end to end: the real Runner and Engine on a virtual clock, azure-ai-ml and
azure-monitor-querymetrics over HTTPS to the ARM fake, and the prediction gates reading the data
collector's records through azure-storage-blob from a real Azurite, where the fake's traffic
writes them (``collector_fake.py``: blue's live requests, green's mirrored copies, and broken
records). The shadow never takes live traffic; every end state leaves one deployment, blue or
(promoted) green; calls are counted per stage, and the capture's per look."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from azure_world import GOOD, PLAN
from collector_fake import DataCollectorWriter, Outputs
from mlrollout_azure.collector import CONNECTION_STRING_ENV
from test_blob_state import ACCOUNT, DEV_KEY, azurite  # noqa: F401  (the Azurite fixture)
from test_blue_green_azureml import CallsPerStage

from mlrollout.errors import ExitCode, ProviderError

FAILS = {"error_rate": 0.08, "latency_p50": "40ms", "latency_p99": "120ms"}
SLOW = {"error_rate": 0.01, "latency_p50": "90ms", "latency_p99": "450ms"}
AGREES = Outputs(agree=0.995)
DISAGREES = Outputs(agree=0.85)
DRIFTS = Outputs(agree=1.0, shift=0.5)

SHADOW = """strategy:
  type: shadow
  percent: 50
  duration: 10m
  then: {then}
capture:
  source: default
  output: $.label
"""
GATES = """    - name: agree
      metric: agreement
      min: {agree}
    - name: drift
      metric: prediction_drift
      max: 0.2
rollback:"""


def shadow_plan(then: str = "rollback", agree: str = "95%") -> str:
    text = PLAN[: PLAN.index("strategy:")] + SHADOW.format(then=then)
    text += PLAN[PLAN.index("analysis:") :]
    return text.replace("rollback:", GATES.format(agree=agree), 1)


@pytest.fixture
def blobs(world: Any, azurite: str, monkeypatch: pytest.MonkeyPatch) -> Any:  # noqa: F811
    """The workspace's blob store is Azurite's account; a fresh container for the test."""
    from azure.storage.blob import BlobServiceClient

    store = world.ws.datastores["workspaceblobstore"]
    store["accountName"] = ACCOUNT
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite)
    client = BlobServiceClient.from_connection_string(azurite)
    container = client.get_container_client(store["containerName"])
    if container.exists():
        container.delete_container()
    container.create_container()
    return container


class CaptureCalls:
    """A listener: the capture's blob requests between journal events, per look."""

    def __init__(self) -> None:
        self.source: Any = None
        self.seen: Counter[str] = Counter()
        self.looks: list[Counter[str]] = []

    def __call__(self, event: Any, state: Any) -> None:
        if self.source is None:
            return
        now = Counter(self.source.calls)
        new = now - self.seen
        self.seen = now
        if event.kind == "look":
            self.looks.append(new)


def shadow_run(
    world: Any,
    blobs: Any,
    *,
    candidate: dict[str, Any],
    outputs: Outputs,
    then: str = "rollback",
    agree: str = "95%",
) -> tuple[Any, list[Any], DataCollectorWriter, CaptureCalls]:
    from mlrollout.engine.runner import Runner
    from mlrollout.plan.loader import load_plan
    from mlrollout.state.sqlite import open_sqlite_store

    world.endpoint(candidate=candidate, rps=40, data_collector=True)
    writer = DataCollectorWriter(
        world.fake,
        world.ws,
        "churn",
        blobs,
        {"blue": Outputs(), "green": outputs},
        origin=world.clock.now(),
    )
    world.fake.hooks.append(writer)
    store = open_sqlite_store(str(world.tmp_path / "state"))
    stages, capture = CallsPerStage(world.fake), CaptureCalls()
    runner = Runner(store, holder="runner-a", listeners=[stages, capture])
    record = runner.create(load_plan(str(world.plan(shadow_plan(then, agree)))))
    opened = runner.open_engine  # the capture source is made with the engine

    def open_engine(*args: Any, **kwargs: Any) -> Any:
        engine = opened(*args, **kwargs)
        capture.source = engine.capture
        return engine

    runner.open_engine = open_engine  # type: ignore[method-assign]
    outcome = runner.drive(record.id, clock=world.clock)
    if then == "stop":  # waiting for a human, still mirroring: promote it
        assert outcome.exit_code == ExitCode.WAITING, outcome.state.reason
        assert world.live()["mirrorTraffic"] == {"green": 50}
        assert world.live()["traffic"] == {"blue": 100}
        runner.command(record.id, "promote", by="test")
        outcome = runner.drive(record.id, clock=world.clock)
    print(f"\nAzure ML calls per stage (shadow, then: {then}, {outcome.phase.value}):")
    for kind, calls in stages.by_kind.items():
        if calls:
            print(f"  {kind:22} {dict(sorted(calls.items()))}")
    print(f"  capture calls per look: {[dict(c) for c in capture.looks]}")
    # Each mirror change is one PUT of the endpoint (its mirror_traffic), nothing else written;
    # the data collector's datastore is read once (the first look).
    mirror_writes = stages.by_kind["set_shadow.applied"]
    assert mirror_writes["PUT endpoint"] == 2 and mirror_writes["PUT deployment"] == 0
    assert sum(c["GET datastore"] for c in stages.by_kind.values()) == 1
    return outcome, store.events(record.id), writer, capture


def _shadow_never_served(world: Any, events: list[Any]) -> None:
    """Green never had live weight while it was mirrored, nor before."""
    mirrored = world.fake.mirror_history["churn"]
    stopped = next(at for at, m in mirrored if not m.get("green"))
    # (a promotion's traffic change may share the instant the mirror stopped, after it)
    assert all(not w.get("green") for at, w in world.fake.history["churn"] if at < stopped)
    for e in events:
        if e.kind.endswith(".applied") and e.at < stopped:
            assert e.data.get("weights", {}).get("green", 0.0) == 0.0


def _verdict(events: list[Any], gate: str) -> dict[str, Any]:
    looks = [e for e in events if e.kind == "look"]
    return next(g for g in looks[-1].data["verdict"]["gates"] if g["gate"] == gate)


def test_a_shadow_that_agrees_is_an_evaluation_that_passes_and_is_removed(world, blobs, caplog):
    caplog.set_level("DEBUG")
    outcome, events, writer, capture = shadow_run(world, blobs, candidate=GOOD, outputs=AGREES)
    # the capture's connection string is a secret: not in the logs, the journal or the state
    assert DEV_KEY not in caplog.text
    assert DEV_KEY not in json.dumps([e.data for e in events])
    for path in (world.tmp_path / "state").rglob("*"):
        if path.is_file():
            assert DEV_KEY.encode() not in path.read_bytes(), path
    world.assert_ended(outcome, ExitCode.OK, "blue")
    assert world.fake.applied == [
        ("deployment.put", "churn", "green", "Succeeded"),
        ("mirror", "churn", {"green": 50}),
        ("mirror", "churn", {}),
        ("deployment.delete", "churn", "green"),
    ]
    _shadow_never_served(world, events)
    # green was created with blue's data collector (else it would write nothing), under its
    # own data asset, which the SDK registers
    assert ("churn-green-model_outputs", "1") in world.ws.data
    assert writer.mirrored["green"] > 0
    agree = _verdict(events, "agree")
    print(agree)
    assert agree["outcome"] == "pass", agree
    assert _verdict(events, "drift")["outcome"] == "pass"
    # The capture: one listing per deployment per look (one hour open), then the new bytes.
    looks = [c for c in capture.looks if c]
    assert looks
    for calls in looks:
        assert calls["list"] <= 2, calls
        assert calls["get"] <= 4, calls  # two instance blobs per deployment at most
    assert writer.unparsable["green"] >= 3


@pytest.mark.parametrize("then", ["promote", "stop"])
def test_a_shadow_that_agrees_and_then_promote_goes_on_through_traffic(world, blobs, then):
    """``then: promote`` goes on by itself; ``then: stop`` keeps mirroring and waits (exit 3)
    for ``mlrollout promote``, then goes on the same way."""
    outcome, events, _, _ = shadow_run(world, blobs, candidate=GOOD, outputs=AGREES, then=then)
    world.assert_ended(outcome, ExitCode.OK, "green")
    assert world.fake.applied == [
        ("deployment.put", "churn", "green", "Succeeded"),
        ("mirror", "churn", {"green": 50}),
        ("mirror", "churn", {}),  # the mirror stops before green serves anyone
        ("traffic", "churn", {"green": 100}),
        ("deployment.delete", "churn", "blue"),
    ]
    _shadow_never_served(world, events)


@pytest.mark.parametrize(
    ("candidate", "outputs", "gate", "agree"),
    [
        (GOOD, DISAGREES, "agree", "95%"),
        # drifting outputs disagree too: a loose agreement bound, so that drift is what fails
        (GOOD, DRIFTS, "drift", "50%"),
        (FAILS, AGREES, "errors", "95%"),
        (SLOW, AGREES, "p99", "95%"),
    ],
    ids=["disagrees", "drifts", "errors", "slower"],
)
def test_a_shadow_that_fails_a_gate_is_removed_without_serving_anyone(
    world, blobs, candidate, outputs, gate, agree
):
    outcome, events, _, _ = shadow_run(
        world, blobs, candidate=candidate, outputs=outputs, agree=agree
    )
    assert outcome.exit_code == ExitCode.ROLLED_BACK, outcome.state.reason
    assert gate in outcome.state.reason
    assert world.live()["traffic"] == {"blue": 100}
    assert world.live()["mirrorTraffic"] == {}
    assert world.deployments() == ["blue"]
    assert world.fake.applied[-2:] == [
        ("mirror", "churn", {}),  # the mirror stops first, then green is deleted
        ("deployment.delete", "churn", "green"),
    ]
    _shadow_never_served(world, events)


def test_a_shadow_does_not_take_over_another_deployments_mirror(world, blobs):
    """Azure ML mirrors to one deployment: with red mirrored already, the shadow of green is
    refused before anything is mirrored to it, green is removed, and red keeps its mirror."""
    world.endpoint(candidate=GOOD, data_collector=True)
    world.ws.deployments["churn"]["red"] = dict(world.ws.deployments["churn"]["blue"], name="red")
    world.ws.endpoints["churn"]["mirrorTraffic"] = {"red": 10}
    from mlrollout.engine.runner import Runner
    from mlrollout.plan.loader import load_plan
    from mlrollout.state.sqlite import open_sqlite_store

    store = open_sqlite_store(str(world.tmp_path / "state"))
    runner = Runner(store, holder="runner-a")
    record = runner.create(load_plan(str(world.plan(shadow_plan()))))
    with pytest.raises(ProviderError, match="mirrors to one deployment") as raised:
        runner.drive(record.id, clock=world.clock)  # at the first tick, before any change
    assert raised.value.exit_code == ExitCode.PROVIDER
    assert world.live()["mirrorTraffic"] == {"red": 10}
    assert world.live()["traffic"] == {"blue": 100}
    assert world.deployments() == ["blue", "red"]
    assert world.fake.applied == []


def test_an_unreadable_capture_is_an_error_measurement_that_never_passes(world, blobs):
    """The data collector's container is gone: each look's capture is an error (the prediction
    gates hold: no data never passes), the rollout ends undecided as the plan says (rollback),
    the shadow is removed, nothing crashed."""
    blobs.delete_container()
    outcome, events, _, _ = shadow_run(world, blobs, candidate=GOOD, outputs=AGREES)
    assert outcome.exit_code == ExitCode.ROLLED_BACK, outcome.state.reason
    assert world.deployments() == ["blue"] and world.live()["mirrorTraffic"] == {}
    agree = _verdict(events, "agree")
    assert agree["outcome"] != "pass" and agree["error"], agree
    assert "not found" in agree["error"] and "azureml-blobstore" in agree["error"]
