"""Segments and feature flags through the real runner on the sandbox: each step's split is
written into a flagd flag definition (journalled before the step counts as applied), the
sandbox's users are routed by that file through the real flagd evaluator, and a promotion or a
rollback ends with the flag naming one variant for everyone — the flag first, then the
platform's split. A kill at any journal write leaves the same end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sandbox_run import SandboxRun
from test_kill_sweep import DyingStore, Killed, _finish

from mlrollout.clock import VirtualClock
from mlrollout.engine.events import EventKind
from mlrollout.engine.phases import Phase
from mlrollout.engine.runner import Runner
from mlrollout.errors import ExitCode
from mlrollout.plan.loader import parse_plan
from mlrollout.sandbox.users import UserBase
from mlrollout.state.sqlite import SqliteStateStore

pytest.importorskip(
    "openfeature.contrib.tools.flagd.core",
    reason="the flagd evaluator is missing: pip install 'mlrollout[flagd]'",
)

from mlrollout.flags import evaluate

PLAN = """
version: 1
name: segments
target: {provider: local, endpoint: ep}
candidate: {name: v2}
strategy:
  type: canary
  steps:
    - weight: 10
    - analyze: 5m
    - weight: 50
    - analyze: 5m
analysis:
  interval: 60s
  min_requests: 100
  gates:
    - {name: errors, metric: error_rate, vs_baseline: {max_increase: 50%}}
segments:
  - {name: staff, match: {user_type: employee}, weight: 100}
  - {name: eu, match: {region: [eu-west-1, eu-central-1]}}
flags: {provider: flagd, key: churn-model, file: FLAGFILE}
sandbox:
  seed: 5
  rps: 400
  users:
    count: 2000
    attributes:
      region: [eu-west-1, eu-central-1, us-east-1]
      user_type: [employee, customer]
  variants:
    v1: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}
    v2: {error_rate: CANDIDATE, latency_p50: 40ms, latency_p99: 120ms}
"""
START = 1_800_000_000.0


def plan_text(flag_file: Path, candidate_error: float) -> str:
    return PLAN.replace("FLAGFILE", str(flag_file)).replace("CANDIDATE", str(candidate_error))


class Watch:
    """After every flag write, which variant each of a sample of users gets from the file as
    the application's flagd would evaluate it."""

    def __init__(self, flag_file: Path, plan_text: str) -> None:
        self.flag_file = flag_file
        sandbox = parse_plan(plan_text, "p").plan.sandbox
        assert sandbox is not None and sandbox.users is not None
        self.users = UserBase(sandbox.users, sandbox.seed)
        self.sample = range(0, self.users.count, 7)
        self.seen: list[tuple[dict[str, float], dict[str, str]]] = []

    def __call__(self, event: Any, state: Any) -> None:
        if event.kind != EventKind.SET_FLAG_APPLIED:
            return
        definition = json.loads(self.flag_file.read_text())
        assigned = {}
        for i in self.sample:
            user_id, attributes = self.users.user(i)
            assigned[user_id] = evaluate(definition, "churn-model", user_id, attributes)
        self.seen.append((dict(event.data["weights"]), assigned))

    def attributes(self, user_id: str) -> dict[str, str]:
        return self.users.user(int(user_id.split("-")[1]))[1]


def _run(tmp_path: Path, candidate_error: float) -> tuple[SandboxRun, Watch, Path]:
    flag_file = tmp_path / "flags" / "churn.json"
    text = plan_text(flag_file, candidate_error)
    run = SandboxRun(tmp_path, text)
    watch = Watch(flag_file, text)
    run.runner.listeners.append(watch)
    return run, watch, flag_file


def test_staff_get_the_candidate_from_the_first_step_and_everyone_stays_on_one_variant(tmp_path):
    run, watch, flag_file = _run(tmp_path, 0.01)
    outcome = run.drive()
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    splits = [weights.get("v2", 0.0) for weights, _ in watch.seen]
    assert splits == [10.0, 50.0, 100.0]  # each step, then everyone at the promotion
    for weights, assigned in watch.seen[:-1]:
        for user_id, variant in assigned.items():
            attributes = watch.attributes(user_id)
            if attributes["user_type"] == "employee":
                assert variant == "v2", (weights, user_id)  # staff: the candidate at every step
            elif attributes["region"] == "us-east-1":
                assert variant == "v1", (weights, user_id)  # outside every segment: baseline
    # sticky: a user given the candidate keeps it as the weight grows
    (_, first), (_, second) = watch.seen[0], watch.seen[1]
    assert all(second[u] == "v2" for u, v in first.items() if v == "v2")
    eu = [u for u in first if watch.attributes(u)["region"] != "us-east-1"]
    eu_customers = [u for u in eu if watch.attributes(u)["user_type"] == "customer"]
    share = sum(second[u] == "v2" for u in eu_customers) / len(eu_customers)
    assert 0.35 < share < 0.65  # eu customers follow the step's 50 %
    # at the end the flag names the candidate for everyone, and the platform serves it alone
    assert set(watch.seen[-1][1].values()) == {"v2"}
    assert set(run.endpoint()["variants"]) == {"v2"}
    kinds = run.kinds()
    assert kinds.index("set_flag.applied") < kinds.index("set_traffic.applied")
    # the journal says what was written, and where
    applied = [e for e in run.events() if e.kind == EventKind.SET_FLAG_APPLIED]
    assert all(e.data["file"] == str(flag_file) and len(e.data["sha256"]) == 64 for e in applied)


def test_a_bad_candidate_is_rolled_back_and_the_flag_sends_everyone_to_the_baseline(tmp_path):
    run, watch, _ = _run(tmp_path, 0.06)
    outcome = run.drive()
    assert outcome.exit_code == ExitCode.ROLLED_BACK, outcome.state.reason
    weights, assigned = watch.seen[-1]
    assert weights == {"v1": 100.0, "v2": 0.0}
    assert set(assigned.values()) == {"v1"}
    kinds = run.kinds()
    rollback = kinds.index("rollback.started")
    # the flag is restored before the platform's split or the candidate is touched
    assert kinds[rollback + 1 : rollback + 3] == ["set_flag.requested", "set_flag.applied"]
    assert set(run.endpoint()["variants"]) == {"v1"}


def test_the_sandbox_routes_by_the_flag_not_by_the_platform_split(tmp_path):
    """The platform's own split stays on the baseline while the flag moves: the candidate's
    requests come from the users the flag gives it (staff, a third of the users, plus half of
    the eu customers at 50 %)."""
    run, _, _ = _run(tmp_path, 0.01)
    seen: list[tuple[float, float]] = []

    def look(event: Any, state: Any) -> None:
        if event.kind == EventKind.LOOK and state.flag:
            requests = event.data["verdict"]["gates"][0]["numbers"]
            seen.append((state.weights.get("v2", 0.0), requests.get("candidate_requests", 0)))

    run.runner.listeners.append(look)
    run.drive()
    assert seen and all(platform == 0.0 for platform, _ in seen)
    assert all(requests > 0 for _, requests in seen)


def _kill_run(tmp_path: Path, candidate_error: float, die_at: int | None, before: bool):
    path = tmp_path / "state.db"
    flag_file = tmp_path / "churn.json"
    store = DyingStore(path, die_at, before) if die_at else SqliteStateStore(path)
    runner = Runner(store, holder="runner-1")
    record = runner.create(parse_plan(plan_text(flag_file, candidate_error), "p.yaml"))
    try:
        phase = runner.drive(record.id, clock=VirtualClock(START)).phase
    except Killed:
        phase = None
    return path, flag_file, record.id, phase


@pytest.mark.slow
@pytest.mark.parametrize(
    "candidate_error,expected",
    [(0.01, Phase.SUCCEEDED), (0.06, Phase.ROLLED_BACK)],
    ids=["good", "bad"],
)
def test_every_kill_point_recovers_with_the_flag_in_step(tmp_path, candidate_error, expected):
    path, flag_file, rid, phase = _kill_run(tmp_path / "ref", candidate_error, None, False)
    assert phase == expected
    final = json.loads(flag_file.read_text())
    total = len(SqliteStateStore(path).events(rid))
    for die_at in range(1, total + 1):
        for before in (True, False):
            folder = tmp_path / f"{die_at}-{before}"
            path, flag_file, rid, phase = _kill_run(folder, candidate_error, die_at, before)
            assert phase is None
            assert _finish(path, rid, "resume") == expected, (die_at, before)
            # the flag ends as an uninterrupted run leaves it (paths aside: same split)
            assert json.loads(flag_file.read_text()) == final, (die_at, before)
            events = SqliteStateStore(path).events(rid)
            kinds = [e.kind for e in events]
            assert kinds.count("promoted" if expected == Phase.SUCCEEDED else "rolled_back") == 1
            # each split written once per step (a replayed write is the same intent, not new)
            splits = [e.data["weights"]["v2"] for e in events if e.kind == "set_flag.applied"]
            assert splits == sorted(set(splits), key=splits.index), splits
