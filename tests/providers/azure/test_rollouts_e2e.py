"""Whole rollouts: the real Runner and Engine on a virtual clock, the azureml provider through its
entry point, azure-ai-ml and azure-monitor-querymetrics over HTTPS to the ARM fake.

Given an endpoint whose ``blue`` deployment serves 100 % and traffic from the sandbox's profiles,
when a canary of ``green`` runs, then the endpoint ends as issue 7 says, with the calls counted
per stage."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from arm_fake import DROPPED
from azure_world import BAD, GOOD, PLAN, rollout

from mlrollout.engine.events import LOOK_KINDS
from mlrollout.errors import ExitCode

#: The changes a promotion of ``green`` makes, each once, in this order.
PROMOTED = [
    ("deployment.put", "churn", "green", "Succeeded"),
    ("traffic", "churn", {"blue": 90, "green": 10}),
    ("traffic", "churn", {"blue": 50, "green": 50}),
    ("traffic", "churn", {"green": 100}),
    ("deployment.delete", "churn", "blue"),
]


def _kind(method: str, path: str) -> str:
    """A request as an operation name: ``PUT deployment``, ``GET operation``, ``POST metrics``."""
    if "/fake/operations/" in path:
        return f"{method} operation"
    if path.endswith("metrics:getBatch"):
        return f"{method} metrics"
    tail = path.split("/workspaces/", 1)[-1].split("/")[1:]
    if not tail:
        return f"{method} workspace"
    if tail[0] == "models":
        return f"{method} model"
    if tail[0] in ("data", "datastores"):
        return f"{method} {'data asset' if tail[0] == 'data' else 'datastore'}"
    if len(tail) == 2:
        return f"{method} endpoint"
    return f"{method} {'deployment' if len(tail) == 4 else 'deployments'}"


class CallsPerStage:
    """A listener: the fake's requests between one journal event and the next, by event kind.
    Operation polls are counted apart (their number depends on the poller's pace)."""

    def __init__(self, fake: Any) -> None:
        self.fake = fake
        self.seen = 0
        self.by_kind: dict[str, Counter[str]] = {}
        self.per_event: list[tuple[str, Counter[str]]] = []
        self.events: list[str] = []

    def __call__(self, event: Any, state: Any) -> None:
        new = self.fake.requests[self.seen :]
        self.seen += len(new)
        calls = Counter(
            _kind(method, path)
            for method, path, status in new
            if status < 400 and not path.startswith("/fake/operations/")
        )
        self.by_kind.setdefault(event.kind, Counter()).update(calls)
        self.per_event.append((event.kind, calls))
        self.events.append(event.kind)


def metric_calls(world) -> int:
    return world.fake.count("POST", r"metrics:getBatch$")


def metric_calls_per_look(stages: CallsPerStage) -> set[int]:
    """Batch calls made by each look (0 while not one whole minute is in the window yet)."""
    return {calls["POST metrics"] for kind, calls in stages.per_event if kind in LOOK_KINDS}


def test_a_bad_candidate_is_rolled_back_and_its_deployment_deleted(world, capsys):
    stages = CallsPerStage(world.fake)
    outcome = rollout(world, candidate=BAD, listeners=[stages])
    assert outcome.exit_code == ExitCode.ROLLED_BACK, outcome.state.reason
    assert "analysis.failed" in stages.events
    live = world.live()
    assert live["traffic"] == {"blue": 100}
    assert live["mirrorTraffic"] == {}
    assert world.deployments() == ["blue"]
    assert world.fake.applied == [
        ("deployment.put", "churn", "green", "Succeeded"),
        ("traffic", "churn", {"blue": 90, "green": 10}),
        ("traffic", "churn", {"blue": 100}),
        ("deployment.delete", "churn", "green"),
    ]
    # The ownership mark (tags, by PATCH): written before the first change, removed at the end.
    [(_, _, marked), (_, _, removed)] = world.fake.tag_writes
    assert marked["mlrollout-rollout"] == outcome.rollout_id and removed == {}
    assert world.fake.count("PATCH") == 2
    # Two batch calls per look (traffic split; latency percentiles), whatever the gates.
    assert metric_calls_per_look(stages) <= {0, 2}
    assert 2 <= metric_calls(world) <= 2 * outcome.state.looks
    # azure-ai-ml's progress dots stay out of stdout.
    assert capsys.readouterr().out == ""


def test_a_good_candidate_is_promoted_and_serves_alone(world):
    stages = CallsPerStage(world.fake)
    outcome = rollout(world, candidate=GOOD, listeners=[stages])
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    live = world.live()
    assert live["traffic"] == {"green": 100}
    assert world.deployments() == ["green"]
    assert world.fake.applied == PROMOTED
    assert metric_calls_per_look(stages) <= {0, 2}
    assert 4 <= metric_calls(world) <= 2 * outcome.state.looks
    by = stages.by_kind
    # Calls per stage (operation polls aside): the numbers the report gives.
    assert by["started"] == {
        "GET workspace": 1,
        "GET model": 1,
        "GET endpoint": 2,  # describe's, and the ownership mark's (read_owner: one GET)
        "GET deployments": 2,
    }
    # describe (every tick): GET endpoint + GET deployments (inside the SDK's get), GET deployments
    prepare = by["prepare.applied"]
    # the one write is exact; the reads around it depend on when the SDK's poller thread looks
    assert prepare["PUT deployment"] == 1
    # baseline (environment, code), the SDK's checks, and a confirming read when it gets there
    assert 2 <= prepare["GET deployment"] <= 3
    assert {k: v for k, v in prepare.items() if k not in ("PUT deployment", "GET deployment")} == {
        # 2 the SDK's; 3 the ownership mark's, before the first change: read it, read the tags
        # to merge, PATCH them, read to confirm
        "GET endpoint": 5,
        "PATCH endpoint": 1,
        "GET deployments": 2,
        "GET workspace": 1,  # the SDK reads the workspace's region
    }
    shifts, finalize = by["set_traffic.applied"], by["finalize.applied"]
    assert shifts["PUT endpoint"] == 3 and finalize["DELETE deployment"] == 1  # writes: exact
    # reads (as measured; an SDK poller thread may add a confirming read now and then), one GET
    # endpoint of them per change the ownership mark's (read before every change)
    assert 15 <= shifts["GET endpoint"] <= 18 and 12 <= shifts["GET deployments"] <= 15
    assert 3 <= finalize["GET endpoint"] <= 4 and 4 <= finalize["GET deployments"] <= 5
    assert "PATCH endpoint" not in shifts and "PATCH endpoint" not in finalize  # mark fresh
    # the end: read the mark, read the tags to merge, PATCH them without it, read to confirm
    assert by["promoted"]["PATCH endpoint"] == 1
    last_look = [calls for kind, calls in stages.per_event if kind == "look"][-1]
    assert last_look == {"GET endpoint": 1, "GET deployments": 2, "POST metrics": 2}


def test_metric_calls_per_look_do_not_grow_with_the_gates(world):
    many = PLAN.replace(
        "  gates:\n",
        "  gates:\n"
        + "".join(
            f"    - name: errors{i}\n      metric: error_rate\n      max: {i + 5}%\n"
            f"    - name: p50x{i}\n      metric: latency_p50\n      max: {200 + i}ms\n"
            f"    - name: p90x{i}\n      metric: latency_p90\n      max: {250 + i}ms\n"
            for i in range(4)
        ),
    )
    stages = CallsPerStage(world.fake)
    outcome = rollout(world, candidate=GOOD, plan=many, listeners=[stages])
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    assert metric_calls_per_look(stages) <= {0, 2}


def test_throttling_and_unavailability_on_a_fifth_of_the_calls_change_nothing(world):
    world.fake.faults.rate = 0.2
    world.fake.faults.rng.seed(11)
    outcome = rollout(world, candidate=GOOD)
    world.assert_ended(outcome, ExitCode.OK, "green")
    injected = [r for r in world.fake.requests if r[2] in (429, 503)]
    assert len(injected) >= 20
    # Nothing applied twice: the same changes, once each, as without faults.
    assert world.fake.applied == PROMOTED
    puts = [p for m, p, s in world.fake.requests if m == "PUT" and s < 400]
    assert len([p for p in puts if re.search(r"/deployments/green$", p)]) == 1


def test_throttling_on_a_bad_candidate_still_rolls_back(world):
    world.fake.faults.rate = 0.2
    world.fake.faults.rng.seed(5)
    outcome = rollout(world, candidate=BAD)
    world.assert_ended(outcome, ExitCode.ROLLED_BACK, "blue")
    assert [a[0] for a in world.fake.applied] == [
        "deployment.put",
        "traffic",
        "traffic",
        "deployment.delete",
    ]


def test_answers_lost_after_every_kind_of_change_still_apply_each_change_once(world):
    # The fake applies each of these, then answers 503 or drops the connection (issue 12).
    world.fake.faults.lost += [
        ("PUT", r"/deployments/green$", 503),
        ("PUT", r"/onlineEndpoints/churn$", DROPPED),
        ("PUT", r"/onlineEndpoints/churn$", 503),
        ("DELETE", r"/deployments/blue$", 503),
    ]
    outcome = rollout(world, candidate=GOOD)
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    assert world.fake.faults.lost == []  # every one was hit
    assert world.live()["traffic"] == {"green": 100}
    assert world.deployments() == ["green"]
    assert world.fake.applied == PROMOTED
    # Each write sent once: the retries asked first whether the lost attempt had applied.
    writes = Counter(_kind(m, p) for m, p, _ in world.fake.requests if m in ("PUT", "DELETE"))
    assert writes == {"PUT deployment": 1, "PUT endpoint": 3, "DELETE deployment": 1}
