"""The API budget of an Azure subscription (mlrollout.budget), through azure-ai-ml over HTTP to
the fake Resource Manager: a rollout's reads, writes and deletes each take a token of the
subscription's bucket for their class, and a throttled answer is counted and slows it down."""

from __future__ import annotations

from azure_world import GOOD, SUB, rollout

from mlrollout import budget
from mlrollout.errors import ExitCode


def buckets() -> dict[str, dict]:
    return {
        row["class"]: row
        for row in budget.snapshot()
        if row["provider"] == "azureml" and row["service"] == "arm"
    }


def test_reads_writes_and_deletes_take_tokens_of_the_subscriptions_buckets(world):
    outcome = rollout(world, candidate=GOOD)
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    arm = buckets()
    assert set(arm) == {"read", "write", "delete"}
    assert {row["scope"] for row in arm.values()} == {SUB}
    # Resource Manager's token bucket: reads 250 refilled 25/s, writes and deletes 200 at 10/s
    assert (arm["read"]["limit_per_s"], arm["read"]["burst"]) == (25.0, 250.0)
    assert (arm["write"]["limit_per_s"], arm["delete"]["limit_per_s"]) == (10.0, 10.0)
    changes = [r for r in world.fake.requests if r[0] in ("PUT", "PATCH", "DELETE")]
    # every change mlrollout asked for took a token (the SDK's own polls of a long-running
    # operation are GETs it makes by itself)
    assert 1 <= arm["write"]["calls"] + arm["delete"]["calls"] <= len(changes)
    assert arm["read"]["calls"] >= 1
    assert all(row["throttled"] == 0 for row in arm.values())


def test_a_throttled_read_is_counted_in_the_read_bucket_alone(world):
    def throttle_one_read(event, state):
        if event.kind == "started":
            world.fake.faults.once.append(("GET", r"/onlineEndpoints/[^/]+$", 429))

    outcome = rollout(world, candidate=GOOD, listeners=[throttle_one_read])
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    arm = buckets()
    assert arm["read"]["throttled"] == 1
    assert arm["write"]["throttled"] == arm["delete"]["throttled"] == 0
