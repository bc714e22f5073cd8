"""Whole rollouts: the real Runner and Engine on a virtual clock, the ``vertex`` provider through
its entry point, ``aiplatform_v1`` over REST to the Vertex fake and ``monitoring_v3`` over gRPC to
the Cloud Monitoring fake, state in SQLite.

Given an endpoint serving v1 and traffic from the sandbox's profiles, when a canary of v2 runs,
then the endpoint ends as the issue says, with the API calls counted per stage."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from gcp_world import BAD, GOOD, World, applied, rollout

from mlrollout.engine.events import LOOK_KINDS
from mlrollout.errors import ExitCode

MUTATIONS = ("DeployModel", "UpdateEndpoint", "UndeployModel")


class CallsPerStage:
    """A listener: the fakes' calls between one journal event and the next, by event kind."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.seen_vertex = 0
        self.seen_metrics = 0
        self.by_kind: dict[str, Counter[str]] = {}
        self.events: list[str] = []

    def __call__(self, event: Any, state: Any) -> None:
        vertex = self.world.vertex.calls[self.seen_vertex :]
        metrics = self.world.monitoring.calls[self.seen_metrics :]
        self.seen_vertex += len(vertex)
        self.seen_metrics += len(metrics)
        bucket = self.by_kind.setdefault(event.kind, Counter())
        bucket.update(call for call, status in vertex if status == 200)
        bucket.update("ListTimeSeries" for _ in metrics)
        self.events.append(event.kind)


def test_a_bad_candidate_is_rolled_back_and_undeployed(world):
    stages = CallsPerStage(world)
    outcome = rollout(world, candidate=BAD, listeners=[stages])
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    assert outcome.phase.value == "rolled_back"
    assert world.live() == {"v1": 100.0}  # the candidate is undeployed, the baseline serves all
    assert "analysis.failed" in stages.events
    kinds = [what for what, _ in applied(world)]
    assert kinds == ["DeployModel", "UpdateEndpoint", "UpdateEndpoint", "UndeployModel"]
    # The deployment kept 100 % on the baseline; "0" named the model being deployed.
    [(_, deploy, _)] = [b for b in world.vertex.bodies if b[0] == "DeployModel"]
    assert deploy["trafficSplit"] == {"1001": 100, "0": 0}
    assert deploy["deployedModel"]["displayName"] == "v2"
    # The rollback restored traffic first, then undeployed the candidate with the final split.
    assert applied(world)[2][1]["split"] == {"1001": 100}
    [(_, undeploy, _)] = [b for b in world.vertex.bodies if b[0] == "UndeployModel"]
    assert undeploy["trafficSplit"] == {"1001": 100}
    # The ownership mark: written (labels) before the first change, removed at the end.
    [(_, _, marked), (_, _, removed)] = world.vertex.label_writes
    assert marked["mlrollout-rollout"] == outcome.rollout_id and removed == {}
    masks = [q["updateMask"] for c, _, q in world.vertex.bodies if c == "UpdateEndpoint"]
    assert masks == [["labels"], ["trafficSplit"], ["trafficSplit"], ["labels"]]


def test_a_good_candidate_is_promoted_and_serves_alone(world, capsys):
    stages = CallsPerStage(world)
    outcome = rollout(world, candidate=GOOD, listeners=[stages])
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    assert world.live() == {"v2": 100.0}
    assert [what for what, _ in applied(world)] == [
        "DeployModel",
        "UpdateEndpoint",  # 10 %
        "UpdateEndpoint",  # 50 %
        "UpdateEndpoint",  # 100 %
        "UndeployModel",  # the baseline
    ]
    # Metrics: one ListTimeSeries per metric type per look (counts, errors, latency).
    looks = outcome.state.looks
    assert looks >= 4
    assert len(world.monitoring.calls) == 3 * looks
    assert sum(stages.by_kind.get(k, Counter())["ListTimeSeries"] for k in LOOK_KINDS) == 3 * looks
    assert stages.by_kind["prepare.applied"]["DeployModel"] == 1
    assert stages.by_kind["finalize.applied"]["UndeployModel"] == 1
    with capsys.disabled():
        print("\nVertex + Monitoring calls per stage (good canary 10 % → 50 % → 100 %):")
        for kind, calls in stages.by_kind.items():
            if calls:
                print(f"  {kind:22} {dict(sorted(calls.items()))}")
        total = world.vertex.counts()
        total["ListTimeSeries"] = len(world.monitoring.calls)
        print(f"  whole rollout          {dict(sorted(total.items()))} ({looks} looks)")


def test_metric_calls_per_look_do_not_grow_with_the_gates(world):
    many = """\
    - name: errors
      metric: error_rate
      vs_baseline: {max_increase: 0.5pp}
    - name: errors-abs
      metric: error_rate
      max: 5%
    - name: p50
      metric: latency_p50
      max: 200ms
    - name: p90
      metric: latency_p90
      max: 250ms
    - name: p99
      metric: latency_p99
      max: 300ms
    - name: p99-rel
      metric: latency_p99
      vs_baseline: {max_increase: 50%}
"""
    outcome = rollout(world, candidate=GOOD, plan=world.plan(gates=many))
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    assert len(world.monitoring.calls) == 3 * outcome.state.looks


@pytest.mark.parametrize("candidate", [GOOD, BAD], ids=["good", "bad"])
def test_with_a_fifth_of_all_calls_failing_the_end_is_the_same_and_nothing_is_applied_twice(
    fakes, tmp_path: Path, candidate
):
    clean_world = World(fakes, tmp_path / "clean")
    (tmp_path / "clean").mkdir()
    clean = rollout(clean_world, candidate=candidate)
    clean_applied = applied(clean_world)
    clean_live = clean_world.live()

    faulty_world = World(fakes, tmp_path / "faulty")
    (tmp_path / "faulty").mkdir()
    faulty_world.vertex.fault_rate = 0.2
    faulty_world.monitoring.fault_rate = 0.2
    faulty = rollout(faulty_world, candidate=candidate)
    injected = sum(1 for _, status in faulty_world.vertex.calls if status in (429, 503))
    assert injected >= 5
    assert len(faulty_world.monitoring.calls) > 2 * faulty.state.looks  # some failed, retried
    assert faulty.exit_code == clean.exit_code
    assert faulty_world.live() == clean_live
    # The same changes in the same order, none twice (ids and splits alike).
    assert applied(faulty_world) == clean_applied


def run_cli(*args: Any) -> tuple[int, str]:
    """``mlrollout ARGS`` in-process: (exit code, what it printed)."""
    import contextlib
    import io

    from mlrollout.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            return int(exc.code or 0), out.getvalue() + err.getvalue()
    raise AssertionError("main returned instead of exiting")


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda w: w.vertex.deny.add("GetEndpoint"), "aiplatform.endpoints.get"),
        (lambda w: w.vertex.deny.add("ListEndpoints"), "aiplatform.endpoints.list"),
        (lambda w: w.vertex.models.clear(), "model 'churn-v2' does not exist"),
        (lambda w: w.vertex.endpoints.clear(), "'churn' does not exist"),
    ],
    ids=["denied", "denied-list", "unknown-model", "unknown-endpoint"],
)
def test_mlrollout_run_exits_6_before_any_change(world, setup, expected):
    world.endpoint()
    world.traffic(v1=GOOD, v2=GOOD)
    setup(world)
    code, printed = run_cli(
        "--state", world.tmp_path / "state", "run", "--yes", world.plan(endpoint="churn")
    )
    assert code == ExitCode.PROVIDER, printed
    assert expected in printed
    assert "Traceback" not in printed
    assert world.vertex.applied == []
