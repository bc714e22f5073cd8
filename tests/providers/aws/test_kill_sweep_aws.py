"""Kill at every step on the AWS emulator: the runner dies at each journal write (S3 state) of a
SageMaker canary, and of a self-driven blue-green (preview, pre-promotion, a stepped switch,
post-promotion, keep_previous); a new runner's `resume` must finish it as an uninterrupted run
does, with the live endpoint matching the journal, no mutation applied twice and no endpoint
config left over."""

from __future__ import annotations

from typing import Any

import pytest
from aws_traffic import BAD, GOOD
from mlrollout_aws.s3state import S3StateStore
from test_rollouts_e2e import BUCKET, mutations, s3_store

from mlrollout.engine.phases import Phase
from mlrollout.engine.runner import Runner
from mlrollout.plan.loader import load_plan


class Killed(BaseException):
    """The process died: nothing may catch this and carry on."""


def dying(store: S3StateStore, die_at: int, before: bool) -> S3StateStore:
    """``store`` whose process dies at its ``die_at``-th journal write (before or after it)."""
    original = store.append_event
    writes = 0

    def append_event(*args: Any, **kwargs: Any) -> Any:
        nonlocal writes
        writes += 1
        if before and writes == die_at:
            raise Killed
        event = original(*args, **kwargs)
        if not before and writes == die_at:
            raise Killed
        return event

    store.append_event = append_event  # type: ignore[method-assign]
    return store


BLUE_GREEN = """\
strategy:
  type: blue_green
  preview: 10
  pre_promotion: 5m
  switch: {step: 45, every: 2m}
  post_promotion: 3m
  keep_previous: 5m
"""
PLANS = ("canary", "blue_green")


def plan_path(world: Any, strategy: str) -> Any:
    path = world.plan()
    if strategy == "blue_green":
        text = path.read_text()
        head, tail = text[: text.index("strategy:")], text[text.index("analysis:") :]
        path.write_text(head + BLUE_GREEN + tail)
    return path


def run(
    world: Any,
    candidate: dict[str, Any],
    die_at: int | None,
    before: bool = False,
    strategy: str = "canary",
) -> tuple[str, Phase | None]:
    world.original = world.endpoint()
    world.traffic(v1=GOOD, v2=candidate)
    world.s3.create_bucket(Bucket=BUCKET)
    store = s3_store(world)
    if die_at is not None:
        store = dying(store, die_at, before)
    runner = Runner(store, holder="ci-job")
    record = runner.create(load_plan(str(plan_path(world, strategy))))
    try:
        return record.id, runner.drive(record.id, clock=world.clock).phase
    except Killed:
        return record.id, None


@pytest.mark.slow
@pytest.mark.parametrize("strategy", PLANS)
@pytest.mark.parametrize(
    "candidate,expected", [(GOOD, Phase.SUCCEEDED), (BAD, Phase.ROLLED_BACK)], ids=["good", "bad"]
)
def test_every_kill_point_on_sagemaker_recovers(
    world: Any, new_world: Any, candidate: dict[str, Any], expected: Phase, strategy: str
) -> None:
    rid, phase = run(world, candidate, None, strategy=strategy)
    assert phase == expected
    events = len(s3_store(world).events(rid))
    clean_mutations = mutations(world)
    clean_weights = [
        (v["VariantName"], v["CurrentWeight"]) for v in world.live()["ProductionVariants"]
    ]
    tried = recovered = 0
    for die_at in range(1, events + 1):
        for before in (False, True) if die_at % 4 == 0 else (False,):
            w = new_world(f"kill-{die_at}-{'before' if before else 'after'}")
            rid, phase = run(w, candidate, die_at, before, strategy)
            assert phase is None, f"the runner should have died at write {die_at}"
            tried += 1
            # the same CI job, restarted: `mlrollout resume ID`
            resumed = Runner(s3_store(w), holder="ci-job").drive(rid, clock=w.clock)
            assert resumed.phase == expected, (die_at, before, resumed.state.reason)
            live = [(v["VariantName"], v["CurrentWeight"]) for v in w.live()["ProductionVariants"]]
            assert live == clean_weights, (die_at, before)
            assert mutations(w) == clean_mutations, (die_at, before)
            assert w.configs() == world.configs() or expected == Phase.ROLLED_BACK
            assert w.live()["EndpointConfigName"] == world.live()["EndpointConfigName"]
            if strategy == "blue_green":  # no leftover config, whatever the end
                assert w.configs() == world.configs(), (die_at, before)
            journal = s3_store(w).events(rid)
            assert [e.seq for e in journal] == list(range(1, len(journal) + 1))
            recovered += 1
    print(
        f"\nsagemaker {strategy} {expected.value}: {tried} kill points tried, {recovered} recovered"
    )


# ------------------------------------------ native blue/green (SageMaker's own deployment)

NATIVE_MUTATIONS = (
    "CreateEndpointConfig",
    "UpdateEndpoint",
    "DeleteEndpointConfig",
    "PutMetricAlarm",
    "DeleteAlarms",
)


def run_native(
    world: Any, candidate: dict[str, Any], die_at: int | None, before: bool = False
) -> tuple[str, Phase | None]:
    from test_native_blue_green import ALL_AT_ONCE, NATIVE, setup

    world.original = setup(world, candidate)
    world.s3.create_bucket(Bucket=BUCKET)
    store = s3_store(world)
    if die_at is not None:
        store = dying(store, die_at, before)
    runner = Runner(store, holder="ci-job")
    path = world.plan(NATIVE, strategy=ALL_AT_ONCE.rstrip("\n"))
    record = runner.create(load_plan(str(path)))
    try:
        return record.id, runner.drive(record.id, clock=world.clock).phase
    except Killed:
        return record.id, None


def native_end(world: Any) -> tuple[Any, ...]:
    """What a native rollout leaves: the live variant's model, our configs, every alarm."""
    live = world.live()
    config = world.sagemaker.describe_endpoint_config(EndpointConfigName=live["EndpointConfigName"])
    models = [(v["VariantName"], v["ModelName"]) for v in config["ProductionVariants"]]
    managed = len([c for c in world.configs() if "-mlr-" in c])
    alarms = world.cloudwatch.describe_alarms()["MetricAlarms"]
    return live["EndpointStatus"], models, managed, alarms


@pytest.mark.slow
@pytest.mark.parametrize(
    "candidate,expected", [(GOOD, Phase.SUCCEEDED), (BAD, Phase.ROLLED_BACK)], ids=["good", "bad"]
)
def test_every_kill_point_of_a_native_blue_green_recovers(
    world: Any, new_world: Any, candidate: dict[str, Any], expected: Phase
) -> None:
    rid, phase = run_native(world, candidate, None)
    assert phase == expected
    events = len(s3_store(world).events(rid))
    clean = {op: world.emulator.count(op, applied=True) for op in NATIVE_MUTATIONS}
    clean_end = native_end(world)
    assert clean_end[3] == []  # no alarm left
    tried = 0
    for die_at in range(1, events + 1):
        for before in (False, True) if die_at % 4 == 0 else (False,):
            w = new_world(f"native-kill-{die_at}-{'before' if before else 'after'}")
            rid, phase = run_native(w, candidate, die_at, before)
            assert phase is None, f"the runner should have died at write {die_at}"
            tried += 1
            resumed = Runner(s3_store(w), holder="ci-job").drive(rid, clock=w.clock)
            assert resumed.phase == expected, (die_at, before, resumed.state.reason)
            assert native_end(w) == clean_end, (die_at, before)
            # started once, never twice; each alarm made once and removed once
            done = {op: w.emulator.count(op, applied=True) for op in NATIVE_MUTATIONS}
            assert done == clean, (die_at, before)
            assert w.emulator.count("SetAlarmState", applied=True) <= 1
            assert len(w.emulator.rollbacks) == (expected == Phase.ROLLED_BACK)
            journal = s3_store(w).events(rid)
            assert [e.seq for e in journal] == list(range(1, len(journal) + 1))
    print(f"\nsagemaker native blue_green {expected.value}: {tried} kill points recovered")


# ------------------------------------------------------- shadow (ShadowProductionVariants)


def run_shadow(
    world: Any, agreement: float, die_at: int | None, before: bool = False
) -> tuple[str, Phase | None]:
    from test_shadow_sagemaker import CAPTURE_BUCKET, SHADOW_PLAN

    world.original = world.endpoint()
    world.traffic(agreement={"v2": agreement}, v1=GOOD, v2=GOOD)
    world.s3.create_bucket(Bucket=BUCKET)
    world.s3.create_bucket(Bucket=CAPTURE_BUCKET)
    store = s3_store(world)
    if die_at is not None:
        store = dying(store, die_at, before)
    runner = Runner(store, holder="ci-job")
    path = world.tmp_path / "shadow.yaml"
    path.write_text(SHADOW_PLAN.format(url=world.url, then="promote"))
    record = runner.create(load_plan(str(path)))
    try:
        return record.id, runner.drive(record.id, clock=world.clock).phase
    except Killed:
        return record.id, None


@pytest.mark.slow
@pytest.mark.parametrize(
    "agreement,expected",
    [(0.995, Phase.SUCCEEDED), (0.85, Phase.ROLLED_BACK)],
    ids=["agrees", "disagrees"],
)
def test_every_kill_point_of_a_sagemaker_shadow_recovers(
    world: Any, new_world: Any, agreement: float, expected: Phase
) -> None:
    rid, phase = run_shadow(world, agreement, None)
    assert phase == expected
    events = len(s3_store(world).events(rid))
    clean_mutations = mutations(world)
    clean_live = world.live()
    clean_configs = world.configs()
    assert "ShadowProductionVariants" not in clean_live
    tried = 0
    for die_at in range(1, events + 1):
        for before in (False, True) if die_at % 4 == 0 else (False,):
            w = new_world(f"shadow-kill-{die_at}-{'before' if before else 'after'}")
            rid, phase = run_shadow(w, agreement, die_at, before)
            assert phase is None, f"the runner should have died at write {die_at}"
            tried += 1
            resumed = Runner(s3_store(w), holder="ci-job").drive(rid, clock=w.clock)
            assert resumed.phase == expected, (die_at, before, resumed.state.reason)
            live = w.live()
            assert [(v["VariantName"], v["CurrentWeight"]) for v in live["ProductionVariants"]] == [
                (v["VariantName"], v["CurrentWeight"]) for v in clean_live["ProductionVariants"]
            ], (die_at, before)
            assert "ShadowProductionVariants" not in live, (die_at, before)
            assert "DataCaptureConfig" not in live, (die_at, before)
            assert mutations(w) == clean_mutations, (die_at, before)
            assert w.configs() == clean_configs, (die_at, before)
            assert (
                w.emulator.count("UpdateEndpointWeightsAndCapacities", applied=True)
                == (clean_mutations["UpdateEndpointWeightsAndCapacities"])
            )
    print(f"\nsagemaker shadow {expected.value}: {tried} kill points recovered")
