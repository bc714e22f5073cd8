"""Kill at every step on the AWS emulator: the runner dies at each journal write (S3 state) of a
SageMaker canary; a new runner's `resume` must finish it as an uninterrupted run does, with the
live endpoint matching the journal and no mutation applied twice."""

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


def run(
    world: Any, candidate: dict[str, Any], die_at: int | None, before: bool = False
) -> tuple[str, Phase | None]:
    world.original = world.endpoint()
    world.traffic(v1=GOOD, v2=candidate)
    world.s3.create_bucket(Bucket=BUCKET)
    store = s3_store(world)
    if die_at is not None:
        store = dying(store, die_at, before)
    runner = Runner(store, holder="ci-job")
    record = runner.create(load_plan(str(world.plan())))
    try:
        return record.id, runner.drive(record.id, clock=world.clock).phase
    except Killed:
        return record.id, None


@pytest.mark.slow
@pytest.mark.parametrize(
    "candidate,expected", [(GOOD, Phase.SUCCEEDED), (BAD, Phase.ROLLED_BACK)], ids=["good", "bad"]
)
def test_every_kill_point_on_sagemaker_recovers(
    world: Any, new_world: Any, candidate: dict[str, Any], expected: Phase
) -> None:
    rid, phase = run(world, candidate, None)
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
            rid, phase = run(w, candidate, die_at, before)
            assert phase is None, f"the runner should have died at write {die_at}"
            tried += 1
            # the same CI job, restarted: `mlrollout resume ID`
            resumed = Runner(s3_store(w), holder="ci-job").drive(rid, clock=w.clock)
            assert resumed.phase == expected, (die_at, before, resumed.state.reason)
            live = [(v["VariantName"], v["CurrentWeight"]) for v in w.live()["ProductionVariants"]]
            assert live == clean_weights, (die_at, before)
            assert mutations(w) == clean_mutations, (die_at, before)
            assert w.configs() == world.configs() or expected == Phase.ROLLED_BACK
            journal = s3_store(w).events(rid)
            assert [e.seq for e in journal] == list(range(1, len(journal) + 1))
            recovered += 1
    print(f"\nsagemaker {expected.value}: {tried} kill points tried, {recovered} recovered")
