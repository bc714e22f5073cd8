"""The API budget of a Google Cloud project and region (mlrollout.budget), through the real
clients: every Vertex AI request (REST) and Cloud Monitoring request (gRPC) of a rollout takes a
token of its bucket, retries included, and the fakes' 429/503 answers slow the bucket down."""

from __future__ import annotations

from gcp_world import GOOD, LOCATION, PROJECT, rollout

from mlrollout import budget
from mlrollout.errors import ExitCode


def buckets(service: str) -> dict[str, dict]:
    return {
        row["class"]: row
        for row in budget.snapshot()
        if row["provider"] == "vertex" and row["service"] == service
    }


def test_every_request_of_a_rollout_takes_a_token_of_its_project_and_region(world):
    seen = {}

    def mark(event, state):  # the requests from here on are the rollout's, not the set-up's
        seen.setdefault("vertex", len(world.vertex.calls))
        seen.setdefault("monitoring", len(world.monitoring.calls))

    outcome = rollout(world, candidate=GOOD, listeners=[mark])
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    vertex = buckets("aiplatform")
    assert {"read", "write"} <= set(vertex)
    # the ones before the first journal event: the preflight's reads
    assert sum(row["calls"] for row in vertex.values()) >= len(world.vertex.calls) - seen["vertex"]
    # a long-running operation's poll may be answered by the client itself (done already): it
    # took a token all the same; everything else is a request the fake saw
    others = sum(row["calls"] for klass, row in vertex.items() if klass != "operation")
    assert others <= len(world.vertex.calls)
    assert vertex["operation"]["limit_per_s"] == 1.0
    assert vertex["read"]["limit_per_s"] == 10.0 and "600 a minute" in vertex["read"]["source"]
    [monitoring] = buckets("monitoring").values()
    assert monitoring["calls"] == len(world.monitoring.calls)
    assert {row["scope"] for row in budget.snapshot()} == {f"{PROJECT}/{LOCATION}"}


def test_throttled_answers_are_counted_and_every_attempt_took_a_token(world):
    first: list[int] = []

    def faults_from_the_start(event, state):
        if not first:
            first.append(len(world.vertex.calls))
            world.vertex.fault_rate = 0.2

    outcome = rollout(world, candidate=GOOD, listeners=[faults_from_the_start])
    world.vertex.fault_rate = 0.0
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    faulted = [s for _, s in world.vertex.calls[first[0] :] if s in (429, 503)]
    vertex = buckets("aiplatform")
    assert len(faulted) >= 3
    assert sum(row["throttled"] for row in vertex.values()) == len(faulted)
