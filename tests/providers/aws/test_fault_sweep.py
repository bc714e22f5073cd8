"""Transient faults at 10 %, 30 % and 50 % of all calls (SageMaker, CloudWatch and the S3 state):
the rollout reaches the end a fault-free run reaches, with no mutation applied twice. Where the
retries run out, the runner stops with exit 5, the endpoint as its journal says, and a `resume`
finishes the rollout.

Run with ``-s`` to print the API calls with and without faults."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from aws_traffic import BAD, GOOD
from test_rollouts_e2e import BUCKET, mutations, s3_store

from mlrollout.engine.runner import Runner
from mlrollout.errors import ExitCode, NeedsHuman, ProviderError, StateUnavailable
from mlrollout.plan.loader import load_plan


def _run(
    world: Any, emulator: Any, candidate: dict[str, Any], fault: dict[str, Any] | None
) -> tuple[int, int, int]:
    world.original = world.endpoint()
    world.traffic(v1=GOOD, v2=candidate)
    world.s3.create_bucket(Bucket=BUCKET)
    store = s3_store(world)
    runner = Runner(store, holder="runner-a")
    record = runner.create(load_plan(str(world.plan())))
    if fault:
        emulator.fault(**fault)
    stops = 0
    for _ in range(20):
        try:
            outcome = runner.drive(record.id, clock=world.clock)
            break
        except NeedsHuman as exc:
            # retries ran out mid-rollout: the journal says where the endpoint is; a human resumes
            assert exc.exit_code == ExitCode.NEEDS_HUMAN
            assert "resume" in (exc.hint or "")
            stops += 1
        except (ProviderError, StateUnavailable) as exc:
            # retries ran out before this runner changed anything (reading its state): exit 6
            assert exc.exit_code == ExitCode.PROVIDER
            stops += 1
            runner = Runner(s3_store(world), holder="runner-a")
    else:
        raise AssertionError("the rollout never finished")
    hits = sum(f.hits for f in emulator.faults)
    emulator.faults.clear()  # the test's own look at the endpoint is not faulted
    return outcome.exit_code, hits, stops


@pytest.mark.slow
@pytest.mark.parametrize("candidate", [GOOD, BAD], ids=["good", "bad"])
@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
@pytest.mark.parametrize(
    "kind,after",
    [("throttle", False), ("500", False), ("500", True)],
    ids=["throttle", "500", "500-after-apply"],
)
def test_faulty_calls_reach_the_same_end_with_nothing_applied_twice(
    world: Any,
    emulator: Any,
    new_world: Any,
    candidate: dict[str, Any],
    rate: float,
    kind: str,
    after: bool,
) -> None:
    clean_code, _, _ = _run(world, emulator, candidate, None)
    clean_mutations = mutations(world)
    clean_live = world.live()
    clean_calls = sum(Counter(emulator.calls).values())

    faulty = new_world("faulty")
    fault = {"kind": kind, "rate": rate, "after": after, "spare": {"PutMetricData"}}
    code, hits, stops = _run(faulty, emulator, candidate, fault)
    calls = sum(Counter(emulator.calls).values())
    assert hits > 0
    assert code == clean_code
    assert mutations(faulty) == clean_mutations
    live = faulty.live()
    assert [(v["VariantName"], v["CurrentWeight"]) for v in live["ProductionVariants"]] == [
        (v["VariantName"], v["CurrentWeight"]) for v in clean_live["ProductionVariants"]
    ]
    assert faulty.configs() == world.configs()  # no orphan config left behind
    print(
        f"\n{kind}{' after apply' if after else ''} {rate:.0%}: {clean_calls} calls without "
        f"faults, {calls} with {hits} faults, {stops} stop(s) for a human, exit {code}"
    )
