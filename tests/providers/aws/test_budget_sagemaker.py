"""The API budget of an AWS account and region (mlrollout.budget), through the real SDK: a
rollout's SageMaker and CloudWatch calls each take a token of their bucket (retries included),
a small share paces the rollout on its own clock, and throttled answers slow the bucket down."""

from __future__ import annotations

import time

from aws_traffic import GOOD
from test_rollouts_e2e import rollout

from mlrollout import budget
from mlrollout.errors import ExitCode


def buckets(service: str) -> dict[str, dict]:
    return {
        row["class"]: row
        for row in budget.snapshot()
        if row["provider"] == "sagemaker" and row["service"] == service
    }


def sent(world, service: str) -> int:
    return sum(n for (svc, op), n in world.emulator.calls.items() if svc == service)


def test_every_call_of_a_rollout_takes_a_token_of_its_account_and_region(world):
    outcome = rollout(world, candidate=GOOD)
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    sagemaker = buckets("sagemaker")
    assert set(sagemaker) == {"read", "write", "delete"}
    # the emulator counts what reached it: one token per request, none spent on anything else
    assert sum(row["calls"] for row in sagemaker.values()) == sent(world, "sagemaker")
    deletes = world.emulator.count("DeleteEndpointConfig") + world.emulator.count("DeleteTags")
    assert sagemaker["delete"]["calls"] == deletes
    cloudwatch = buckets("cloudwatch")
    assert cloudwatch["GetMetricData"]["calls"] == world.emulator.count("GetMetricData")
    assert cloudwatch["GetMetricData"]["limit_per_s"] == 50.0
    assert {row["scope"] for row in budget.snapshot()} == {"default@us-east-1"}
    assert all(row["throttled"] == 0 for row in budget.snapshot())


def test_a_small_share_paces_the_writes_on_the_rollouts_clock(world, new_world, monkeypatch):
    start = world.clock.now()
    clean = rollout(world, candidate=GOOD)
    clean_took = world.clock.now() - start
    budget.reset()

    monkeypatch.setenv(budget.SHARE_ENV, "1")  # SageMaker writes: 2/s -> one each 50 s
    paced_world = new_world("paced")
    start = paced_world.clock.now()
    paced = rollout(paced_world, candidate=GOOD)
    paced_took = paced_world.clock.now() - start
    writes = buckets("sagemaker")["write"]
    assert paced.exit_code == clean.exit_code == ExitCode.OK
    assert writes["share_percent"] == 1.0 and writes["waits"] >= 1
    assert writes["waited_s"] >= 49.9  # a config created, then the update right behind it
    assert paced_took >= clean_took + writes["waited_s"] * 0.5
    # the same changes were made, only later
    assert len(paced_world.configs()) == len(world.configs())


def test_throttled_answers_slow_the_bucket_and_are_counted(world, emulator):
    faults = []

    def throttle_from_the_start(event, state):  # not the test's own set-up calls before it
        if not faults:
            faults.append(emulator.fault("throttle", service="sagemaker", rate=0.25))

    outcome = rollout(world, candidate=GOOD, listeners=[throttle_from_the_start])
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    sagemaker = buckets("sagemaker")
    [fault] = faults
    assert fault.hits >= 3
    assert sum(row["throttled"] for row in sagemaker.values()) == fault.hits
    # each throttled attempt took a token too: the buckets saw every attempt
    assert sum(row["calls"] for row in sagemaker.values()) == sent(world, "sagemaker")


def test_the_figures_reach_the_state_store_for_status(world):
    rollout(world, candidate=GOOD)
    from test_rollouts_e2e import s3_store

    store = s3_store(world)
    assert budget.publish(store, now=time.time(), force=True)
    rows = budget.read(store, now=time.time())
    assert {(r["service"], r["class"]) for r in rows} >= {
        ("sagemaker", "read"),
        ("sagemaker", "write"),
        ("cloudwatch", "GetMetricData"),
    }
    assert rows[0]["runners"] == [budget.process_name()]
