"""mlrollout-airflow on a real Airflow: DAGs of the operators run with ``dag.test()``.

Airflow lives in its own venv (``.peers/airflow``: its pins would fight the dev venv's), with
``mlrollout`` and ``mlrollout-airflow`` installed editable into it. Each test writes a spec, runs
``airflow_dag.py`` there as a subprocess (AIRFLOW_HOME under tmp_path, a SQLite metadata
database made by ``airflow db migrate``), and reads back each task's state and result — and the
rollouts' phases from the mlrollout state stores, read here with mlrollout itself.

``dag.test()`` of Airflow 2.10 runs a deferred task's trigger in line (``run()`` until its first
event, then ``execute_complete``): the deferrable path is the real one minus the triggerer
process; the triggers' ``serialize()`` round trip is checked in the script.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from mlrollout.api import Rollouts
from mlrollout.engine.fleet import fleet_status
from mlrollout.testing.peers import PEERS, missing_peer

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).with_name("airflow_dag.py")
RESULT = "AIRFLOW-DAG-RESULT "
INSTALL = (
    "python3 -m venv .peers/airflow && .peers/airflow/bin/pip install apache-airflow==2.10.5 "
    "-e . -e providers/airflow"
)


def airflow_bin(name: str) -> Path:
    path = PEERS / "airflow" / "bin" / name
    if not path.exists():
        missing_peer(f"Airflow not installed (the test's own venv): {INSTALL}")
    return path


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite metadata database for the module's DAGs (each has its own dag_id)."""
    airflow = airflow_bin("airflow")
    python = airflow_bin("python")
    probe = subprocess.run(
        [str(python), "-c", "import mlrollout_airflow.operators"],
        capture_output=True,
        text=True,
        env=_env(tmp_path_factory.mktemp("probe")),
    )
    if probe.returncode != 0:
        missing_peer(
            f"mlrollout-airflow not importable in .peers/airflow ({INSTALL}): "
            f"{probe.stderr.strip().splitlines()[-1:]}"
        )
    home = tmp_path_factory.mktemp("airflow-home")
    migrated = subprocess.run(
        [str(airflow), "db", "migrate"], capture_output=True, text=True, env=_env(home), timeout=300
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    return home


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHON"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
    )
    return env


def run_dag(home: Path, tmp_path: Path, spec: dict[str, Any], *, background: bool = False) -> Any:
    """Run the spec's DAG with dag.test(); its parsed result and the whole log."""
    spec_file = tmp_path / f"{spec['dag_id']}.json"
    spec_file.write_text(json.dumps(spec))
    argv = [str(airflow_bin("python")), str(SCRIPT), str(spec_file)]
    if background:
        with (tmp_path / f"{spec['dag_id']}.log").open("w") as log:  # the child keeps its copy
            return subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, text=True, env=_env(home), cwd=tmp_path
            )
    done = subprocess.run(
        argv, capture_output=True, text=True, env=_env(home), cwd=tmp_path, timeout=300
    )
    return parse(done.returncode, done.stdout + done.stderr)


def parse(code: int, log: str) -> tuple[dict[str, Any], str]:
    lines = [line for line in log.splitlines() if line.startswith(RESULT)]
    assert code == 0 and lines, log[-4000:]
    return json.loads(lines[-1][len(RESULT) :]), log


def plan_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "in-worker"])
def test_rollouts_and_fleets_in_a_dag(airflow_home: Path, tmp_path: Path, deferrable: bool) -> None:
    good_plan = (ROOT / "plans/local-canary-good.yaml").read_text()
    fleet_plan = (ROOT / "plans/local-fleet.yaml").read_text()
    invalid = plan_file(
        tmp_path, "invalid.yaml", good_plan.replace("weight: 50\n", "weight: 150\n")
    )
    healthy_fleet = plan_file(
        tmp_path,
        "fleet-good.yaml",
        fleet_plan.replace(", sandbox: {variants: {v7: {error_rate: 5%}}}", ""),
    )
    state = {
        name: str(tmp_path / f"state-{name}")
        for name in ("good", "bad", "invalid", "wrong", "fb", "fg")
    }
    spec = {
        "dag_id": f"mlrollout_{'deferred' if deferrable else 'worker'}",
        "deferrable": deferrable,
        "tasks": [
            {
                "task_id": "good",
                "kind": "run",
                "plan": str(ROOT / "plans/local-canary-good.yaml"),
                "state": state["good"],
            },
            {
                "task_id": "bad",
                "kind": "run",
                "plan": str(ROOT / "plans/local-canary-bad.yaml"),
                "state": state["bad"],
            },
            {"task_id": "invalid", "kind": "run", "plan": invalid, "state": state["invalid"]},
            {
                "task_id": "wrong_operator",
                "kind": "run",
                "plan": str(ROOT / "plans/local-fleet.yaml"),
                "state": state["wrong"],
            },
            {
                "task_id": "fleet_bad",
                "kind": "fleet",
                "plan": str(ROOT / "plans/local-fleet.yaml"),
                "state": state["fb"],
            },
            {"task_id": "fleet_good", "kind": "fleet", "plan": healthy_fleet, "state": state["fg"]},
        ],
    }
    started = time.monotonic()
    result, log = run_dag(airflow_home, tmp_path, spec)
    print(f"dag.test() of 6 tasks ({spec['dag_id']}): {time.monotonic() - started:.1f}s")
    tasks = result["tasks"]
    assert {k: v["state"] for k, v in tasks.items()} == {
        "good": "success",
        "bad": "failed",
        "invalid": "failed",
        "wrong_operator": "failed",
        "fleet_bad": "failed",
        "fleet_good": "success",
    }
    assert result["run"] == "failed"
    # deferred: the trigger ran (in line, as dag.test runs it); in the worker: no deferral at all
    assert ("running trigger in line" in log) is deferrable
    assert result["serialized"] == [
        "mlrollout_airflow.triggers.MlrolloutTrigger",
        "mlrollout_airflow.triggers.MlrolloutFleetTrigger",
    ]

    # a promotion: the task's result is the outcome, as the state store has it
    good = tasks["good"]["result"]
    assert good["phase"] == "succeeded" and good["exit_code"] == 0
    assert good["weights"] == {"v8": 100.0} and good["verdict"] == "pass"
    assert good["rollout"] == tasks["good"]["rollout_id"]
    with Rollouts(state["good"]) as rollouts:
        assert rollouts.status(good["rollout"]).phase == "succeeded"

    # a rollback: the task fails (no retry can help) with the verdict's reason
    bad_id = tasks["bad"]["rollout_id"]
    with Rollouts(state["bad"]) as rollouts:
        bad = rollouts.status(bad_id)
    assert bad.phase == "rolled_back" and bad.weights == {"v6": 100.0}
    assert f"AirflowFailException: rollout {bad_id} rolled back: {bad.reason}" in log
    assert bad.reason and bad.reason.startswith("errors: candidate error rate")
    assert "traffic now v6 100%" in log

    # an invalid plan: the problem at file:line:col, and nothing recorded anywhere
    assert (
        f"AirflowFailException: {invalid}:16:15: strategy.steps[2].weight: a weight is a "
        "percentage from 0 to 100, got 150" in log
    )
    assert tasks["invalid"]["rollout_id"] is None and not Path(state["invalid"]).exists()
    assert (
        "the plan has targets: it is a fleet (run it with MlrolloutFleetOperator)" in log
        and not Path(state["wrong"]).exists()
    )

    # a fleet with a bad wave 2: rolled back, wave 3 never started, the task fails saying so
    with Rollouts(state["fb"]) as rollouts:
        fleet = fleet_status(rollouts.store, tasks["fleet_bad"]["fleet_id"]).to_dict()
    assert fleet["phase"] == "rolled_back"
    assert [row["phase"] for row in fleet["targets"]] == ["rolled_back"] * 3 + ["not started"]
    assert f"fleet {fleet['fleet']} rolled back: churn-eu-west (wave 2): errors:" in log
    assert "wave 3 churn-sa-east not started" in log

    # a healthy fleet: the task's result is the fleet's table, every target promoted
    table = tasks["fleet_good"]["result"]
    assert table["phase"] == "succeeded" and table["fleet"] == tasks["fleet_good"]["fleet_id"]
    assert [(r["wave"], r["endpoint"], r["phase"], r["weights"]) for r in table["targets"]] == [
        (1, "churn-us-east", "succeeded", {"v7": 100.0}),
        (2, "churn-eu-west", "succeeded", {"v7": 100.0}),
        (2, "churn-ap-south", "succeeded", {"v7": 100.0}),
        (3, "churn-sa-east", "succeeded", {"v7": 100.0}),
    ]


def test_an_approval_fails_the_task_then_a_cleared_task_takes_it_up(
    airflow_home: Path, tmp_path: Path
) -> None:
    state = str(tmp_path / "state")
    spec = {
        "dag_id": "mlrollout_approval",
        "deferrable": True,
        "tasks": [
            {
                "task_id": "canary",
                "kind": "run",
                "state": state,
                "plan": str(ROOT / "plans/local-approval.yaml"),
            }
        ],
    }
    first, log = run_dag(airflow_home, tmp_path, spec)
    rollout_id = first["tasks"]["canary"]["rollout_id"]
    assert first["tasks"]["canary"]["state"] == "failed"
    assert f"mlrollout promote {rollout_id} --state {state}" in log  # says what to run
    with Rollouts(state) as rollouts:
        assert rollouts.status(rollout_id).phase == "waiting"
        rollouts.promote(rollout_id)  # what `mlrollout promote ID --state STATE` records

    again, log = run_dag(airflow_home, tmp_path, spec)  # the task run again (cleared)
    assert again["tasks"]["canary"]["state"] == "success"
    assert again["tasks"]["canary"]["rollout_id"] == rollout_id  # the same rollout, not a new one
    assert f"taking up rollout {rollout_id}" in log
    with Rollouts(state) as rollouts:
        assert [o.rollout_id for o in rollouts.list_rollouts()] == [rollout_id]
        assert rollouts.status(rollout_id).phase == "succeeded"


def test_a_deferred_task_waits_for_the_approval(airflow_home: Path, tmp_path: Path) -> None:
    """wait_for_approval: the trigger keeps polling while the rollout waits; a promote recorded
    from elsewhere (here, this test) lets its next pass go on to the end."""
    state = str(tmp_path / "state")
    spec = {
        "dag_id": "mlrollout_waiting",
        "deferrable": True,
        "tasks": [
            {
                "task_id": "canary",
                "kind": "run",
                "state": state,
                "wait_for_approval": True,
                "plan": str(ROOT / "plans/local-approval.yaml"),
            }
        ],
    }
    process = run_dag(airflow_home, tmp_path, spec, background=True)
    try:
        deadline = time.monotonic() + 120  # a real process on a shared machine
        waiting = None
        while waiting is None and process.poll() is None and time.monotonic() < deadline:
            if Path(state).exists():
                with Rollouts(state) as rollouts:
                    found = rollouts.list_rollouts()
                    if found and found[0].phase == "waiting":
                        waiting = found[0]
            time.sleep(0.1)  # waiting on another process, not on the engine's time
        assert waiting is not None, (tmp_path / "mlrollout_waiting.log").read_text()[-3000:]
        time.sleep(0.3)  # a few more polls: the task is still deferred, not failed
        assert process.poll() is None
        with Rollouts(state) as rollouts:
            rollouts.promote(waiting.rollout_id)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    result, _ = parse(code, (tmp_path / "mlrollout_waiting.log").read_text())
    assert result["tasks"]["canary"]["state"] == "success"
    assert result["tasks"]["canary"]["result"]["phase"] == "succeeded"
    assert result["tasks"]["canary"]["result"]["weights"] == {"v12": 100.0}


def test_a_deferred_task_watches_a_rollout_another_runner_drives(
    airflow_home: Path, tmp_path: Path
) -> None:
    """While another runner (a `reconcile --watch` beside Airflow) holds the endpoint's lease,
    the trigger's passes only read the journal — the task neither fails nor drives it; once the
    lease is free, the next pass drives the rollout to its end."""
    state = str(tmp_path / "state")
    with Rollouts(state) as rollouts:
        held = rollouts.store.acquire_lease("local:churn-scoring", "reconcile on ci-2", 600.0)
    spec = {
        "dag_id": "mlrollout_watching",
        "deferrable": True,
        "tasks": [
            {
                "task_id": "canary",
                "kind": "run",
                "state": state,
                "plan": str(ROOT / "plans/local-canary-good.yaml"),
            }
        ],
    }
    process = run_dag(airflow_home, tmp_path, spec, background=True)
    log = tmp_path / "mlrollout_watching.log"
    try:
        deadline = time.monotonic() + 120
        while "running trigger in line" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            time.sleep(0.1)  # waiting on another process, not on the engine's time
        time.sleep(0.5)  # ten polls of the trigger, each refused the lease
        assert process.poll() is None
        with Rollouts(state) as rollouts:
            [pending] = rollouts.list_rollouts()
            assert pending.phase == "pending"  # nothing driven while the lease is held
            rollouts.store.release_lease(held)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    result, _ = parse(code, log.read_text())
    assert result["tasks"]["canary"]["state"] == "success"
    assert result["tasks"]["canary"]["result"]["rollout"] == pending.rollout_id
    with Rollouts(state) as rollouts:
        assert rollouts.status(pending.rollout_id).phase == "succeeded"


def test_without_the_airflow_venv_the_test_names_how_to_make_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(globals(), "PEERS", tmp_path)  # a checkout without .peers/airflow
    monkeypatch.delenv("MLROLLOUT_REQUIRE_PEERS", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"python3 -m venv \.peers/airflow"):
        airflow_bin("python")
    monkeypatch.setenv("MLROLLOUT_REQUIRE_PEERS", "1")
    with pytest.raises(pytest.fail.Exception, match=r"apache-airflow==2\.10\.5"):
        airflow_bin("python")


def test_airflow_finds_the_provider(airflow_home: Path) -> None:
    """The `apache_airflow_provider` entry point: Airflow lists the provider and its triggers."""
    env = _env(airflow_home)
    airflow = str(airflow_bin("airflow"))
    listed = subprocess.run(
        [airflow, "providers", "list", "--output", "json"], capture_output=True, text=True, env=env
    )
    ours = [p for p in json.loads(listed.stdout) if p["package_name"] == "mlrollout-airflow"]
    assert [p["version"] for p in ours] == ["0.1.0.dev0"], listed.stdout + listed.stderr
    triggers = subprocess.run(
        [airflow, "providers", "triggers", "--output", "json"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert {
        "package_name": "mlrollout-airflow",
        "class": "mlrollout_airflow.triggers",
        "integration_name": "mlrollout",
    } in json.loads(triggers.stdout)


def test_the_readmes_example_dag_loads(airflow_home: Path, tmp_path: Path) -> None:
    """The README's example DAG imports in Airflow and has the two tasks in order."""
    readme = (ROOT / "providers/airflow/README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    dag_file = tmp_path / "example_dag.py"
    dag_file.write_text(example)
    check = (
        "from airflow.models.dagbag import DagBag\n"
        f"bag = DagBag({str(tmp_path)!r}, include_examples=False)\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "dag = bag.get_dag('churn_release')\n"
        "print(sorted(dag.task_ids), sorted(dag.get_task('canary').downstream_task_ids))\n"
    )
    done = subprocess.run(
        [str(airflow_bin("python")), "-c", check],
        capture_output=True,
        text=True,
        env=_env(airflow_home),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "['canary', 'regions'] ['regions']" in done.stdout
