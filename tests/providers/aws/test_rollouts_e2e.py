"""Whole rollouts: the real Runner and Engine on a virtual clock, the sagemaker provider through
its entry point, boto3 over HTTP to the emulator, shared state in (emulated) S3.

Given an endpoint serving v1 and traffic from the sandbox's profiles, when a canary of v2 runs,
then the endpoint ends as the issue says, with the API calls counted per stage."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from aws_traffic import BAD, GOOD
from mlrollout_aws._aws import RetryPolicy
from mlrollout_aws.s3state import S3StateStore

from mlrollout.engine.events import LOOK_KINDS
from mlrollout.engine.runner import Runner, RunOutcome
from mlrollout.errors import ExitCode, LeaseHeld, NeedsHuman
from mlrollout.plan.loader import load_plan

BUCKET = "rollout-state"
MUTATIONS = (
    "CreateEndpointConfig",
    "UpdateEndpoint",
    "UpdateEndpointWeightsAndCapacities",
    "DeleteEndpointConfig",
)


class CallsPerStage:
    """A listener: the emulator's calls between one journal event and the next, by event kind."""

    def __init__(self, emulator: Any) -> None:
        self.emulator = emulator
        self.seen: Counter[tuple[str, str]] = Counter()
        self.by_kind: dict[str, Counter[str]] = {}
        self.events: list[str] = []

    def __call__(self, event: Any, state: Any) -> None:
        now = Counter(self.emulator.calls)
        delta = now - self.seen
        self.seen = now
        bucket = self.by_kind.setdefault(event.kind, Counter())
        for (service, operation), n in delta.items():
            if service in ("sagemaker", "monitoring") and operation != "PutMetricData":
                bucket[operation] += n
        self.events.append(event.kind)

    def report(self, title: str) -> None:
        """Printed with ``pytest -s``: the figures quoted in providers/aws/README.md."""
        print(f"\nSageMaker + CloudWatch calls per stage ({title}):")
        total: Counter[str] = Counter()
        for kind, calls in self.by_kind.items():
            total += calls
            if calls:
                print(f"  {kind:22} {dict(sorted(calls.items()))}")
        print(f"  whole rollout          {dict(sorted(total.items()))}")
        s3 = {op: n for (service, op), n in self.emulator.calls.items() if service == "s3"}
        print(f"  S3 state, whole run    {dict(sorted(s3.items()))} over {len(self.events)} events")


def s3_store(world) -> S3StateStore:
    return S3StateStore(
        BUCKET,
        "state",
        region="us-east-1",
        endpoint_url=world.url,
        retry=RetryPolicy(base=0.001, cap=0.01),
    )


def rollout(world, *, candidate: dict[str, Any], listeners=(), store=None) -> RunOutcome:
    world.original = world.endpoint()
    world.traffic(v1=GOOD, v2=candidate)
    if store is None:
        world.s3.create_bucket(Bucket=BUCKET)
        store = s3_store(world)
    runner = Runner(store, holder="runner-a", listeners=list(listeners))
    record = runner.create(load_plan(str(world.plan())))
    return runner.drive(record.id, clock=world.clock)


def mutations(world) -> dict[str, int]:
    return {op: world.emulator.count(op, applied=True) for op in MUTATIONS}


def test_a_bad_candidate_is_rolled_back_and_leaves_nothing_behind(world):
    stages = CallsPerStage(world.emulator)
    outcome = rollout(world, candidate=BAD, listeners=[stages])
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    live = world.live()
    assert [(v["VariantName"], v["CurrentWeight"]) for v in live["ProductionVariants"]] == [
        ("v1", 1.0)
    ]
    assert live["EndpointConfigName"] == world.original
    assert world.configs() == [world.original]
    assert "analysis.failed" in stages.events
    stages.report("rolled back")
    # One CloudWatch request per look.
    assert world.emulator.count("GetMetricData") == outcome.state.looks >= 1
    assert mutations(world) == {
        "CreateEndpointConfig": 1,  # the candidate's config; the rollback reuses the original
        "UpdateEndpoint": 2,
        "UpdateEndpointWeightsAndCapacities": 2,  # 10 %, then back to 0 %
        "DeleteEndpointConfig": 1,
    }
    # The ownership mark (endpoint tags): read before every change and at the start and the end
    # (6 ListTags; finalize reads 2 more for its configs), written once, removed at the end.
    owner = {op: world.emulator.count(op) for op in ("ListTags", "AddTags", "DeleteTags")}
    assert owner == {"ListTags": 8, "AddTags": 1, "DeleteTags": 1}
    assert world.emulator.endpoint_tags("churn") == []


def test_a_good_candidate_is_promoted_and_serves_alone(world):
    stages = CallsPerStage(world.emulator)
    outcome = rollout(world, candidate=GOOD, listeners=[stages])
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    live = world.live()
    assert [(v["VariantName"], v["CurrentWeight"]) for v in live["ProductionVariants"]] == [
        ("v2", 1.0)
    ]
    managed = [c for c in world.configs() if "-mlr-" in c]
    assert managed == [live["EndpointConfigName"]]
    assert world.emulator.count("GetMetricData") == outcome.state.looks >= 4
    assert mutations(world) == {
        "CreateEndpointConfig": 2,  # with the candidate; then the candidate alone
        "UpdateEndpoint": 2,
        "UpdateEndpointWeightsAndCapacities": 3,  # 10 %, 50 %, 100 %
        "DeleteEndpointConfig": 1,
    }
    # Calls per stage (SageMaker and CloudWatch), as the journal saw them.
    looks = sum(stages.by_kind.get(k, Counter())["GetMetricData"] for k in LOOK_KINDS)
    assert looks == outcome.state.looks
    assert stages.by_kind["prepare.applied"]["UpdateEndpoint"] == 1
    assert stages.by_kind["finalize.applied"]["DeleteEndpointConfig"] == 1
    stages.report("promoted")


@pytest.mark.parametrize("candidate", [GOOD, BAD], ids=["good", "bad"])
def test_with_a_fifth_of_all_calls_throttled_the_end_is_the_same_and_nothing_is_applied_twice(
    world, emulator, new_world, candidate
):
    clean = rollout(world, candidate=candidate)
    clean_mutations = mutations(world)
    clean_live = world.live()
    clean_configs = world.configs()

    throttled_world = new_world("throttled")
    emulator.fault("throttle", rate=0.2, spare={"PutMetricData"})
    throttled = rollout(throttled_world, candidate=candidate)
    faults = emulator.faults[0].hits
    assert faults > 20  # a fifth of some hundred calls, S3 included
    assert throttled.exit_code == clean.exit_code
    assert mutations(throttled_world) == clean_mutations
    live = throttled_world.live()
    assert [(v["VariantName"], v["CurrentWeight"]) for v in live["ProductionVariants"]] == [
        (v["VariantName"], v["CurrentWeight"]) for v in clean_live["ProductionVariants"]
    ]
    assert live["EndpointConfigName"] == clean_live["EndpointConfigName"]
    assert throttled_world.configs() == clean_configs
    assert emulator.count("GetMetricData", applied=True) == throttled.state.looks


def test_two_runners_sharing_s3_state_never_both_drive_one_endpoint(world):
    world.s3.create_bucket(Bucket=BUCKET)
    a_store, b_store = s3_store(world), s3_store(world)  # two machines, one bucket
    b = Runner(b_store, holder="runner-b")
    seen: list[Exception] = []

    def meanwhile(event: Any, state: Any) -> None:
        if event.kind == "started":
            with pytest.raises(LeaseHeld, match="driven by runner-a") as info:
                b.drive(event.rollout_id, clock=world.clock)
            seen.append(info.value)
            [(_, result)] = b.reconcile(clock_for_record=lambda record: world.clock)
            assert isinstance(result, LeaseHeld)
            with pytest.raises(NeedsHuman, match="still active"):
                b.create(load_plan(str(world.plan())))

    outcome = rollout(world, candidate=GOOD, listeners=[meanwhile], store=a_store)
    assert outcome.exit_code == ExitCode.OK
    assert seen and seen[0].exit_code == ExitCode.NEEDS_HUMAN
    # Once A is done, B sees the finished rollout in the shared state.
    [record] = b_store.list_rollouts()
    assert record.phase == "succeeded"
    assert b_store.current_lease(record.endpoint_key) is None  # released


def test_a_missing_model_stops_with_exit_6_before_any_change(world):
    from mlrollout.errors import ProviderError

    original = world.endpoint(candidate_models=())
    world.s3.create_bucket(Bucket=BUCKET)
    runner = Runner(s3_store(world), holder="runner-a")
    record = runner.create(load_plan(str(world.plan())))
    with pytest.raises(ProviderError, match="model 'churn-v2' does not exist") as info:
        runner.drive(record.id, clock=world.clock)
    assert info.value.exit_code == ExitCode.PROVIDER
    assert sum(mutations(world).values()) == 0
    assert world.configs() == [original]
    # it changed nothing: it ends aborted, and does not block the retry once the model exists
    assert runner.store.get_rollout(record.id).phase == "aborted"
    assert runner.create(load_plan(str(world.plan()))).phase == "pending"


def test_a_failed_update_stops_recorded_and_resume_finishes_it(world):
    world.endpoint()
    world.traffic(v1=GOOD, v2=GOOD)
    world.s3.create_bucket(Bucket=BUCKET)
    runner = Runner(s3_store(world), holder="runner-a")
    record = runner.create(load_plan(str(world.plan())))
    world.emulator.fail_updates = "rollback"
    with pytest.raises(NeedsHuman, match="health check") as info:
        runner.drive(record.id, clock=world.clock)
    assert info.value.exit_code == ExitCode.NEEDS_HUMAN
    kinds = [e.kind for e in runner.store.events(record.id)]
    assert kinds[-1] == "prepare.requested"  # the intent is recorded, the result is not
    assert [c for c in world.configs() if "-mlr-" in c] == []  # its config is cleaned up
    assert [v["VariantName"] for v in world.live()["ProductionVariants"]] == ["v1"]
    world.emulator.fail_updates = None  # the cause is fixed: resume finishes the rollout
    outcome = Runner(s3_store(world), holder="runner-a").drive(record.id, clock=world.clock)
    assert outcome.exit_code == ExitCode.OK
    assert [v["VariantName"] for v in world.live()["ProductionVariants"]] == ["v2"]
