"""Runs in the Airflow venv (``.peers/airflow``), not under pytest: one DAG of mlrollout tasks
run with ``dag.test()``, then each task's state and result printed as one JSON line.

``python airflow_dag.py SPEC.json``: SPEC is ``{"dag_id", "deferrable": bool, "tasks":
[{"task_id", "kind": "run"|"fleet", "plan", "state", "wait_for_approval"?}, ...]}``.
AIRFLOW_HOME (with a migrated SQLite metadata database) comes from the environment. Also
checks that each trigger survives ``serialize()`` as the triggerer needs (its class path
imports, its kwargs rebuild it).
"""

from __future__ import annotations

import importlib
import json
import sys

import pendulum
from airflow import DAG
from mlrollout_airflow.operators import MlrolloutFleetOperator, MlrolloutRunOperator
from mlrollout_airflow.triggers import MlrolloutFleetTrigger, MlrolloutTrigger

RESULT = "AIRFLOW-DAG-RESULT "


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    with DAG(
        spec["dag_id"],
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
    ) as dag:
        for task in spec["tasks"]:
            common = {
                "task_id": task["task_id"],
                "plan": task["plan"],
                "state": task["state"],
                "deferrable": spec["deferrable"],
                "poll_interval": 0.05,
                "retries": 0,
            }
            if task["kind"] == "fleet":
                MlrolloutFleetOperator(**common)
            else:
                MlrolloutRunOperator(
                    **common, wait_for_approval=task.get("wait_for_approval", False)
                )
    run = dag.test()
    tasks = {}
    for ti in run.get_task_instances():
        tasks[ti.task_id] = {
            "state": str(ti.state),
            "result": ti.xcom_pull(task_ids=ti.task_id, key="return_value"),
            "rollout_id": ti.xcom_pull(task_ids=ti.task_id, key="rollout_id"),
            "fleet_id": ti.xcom_pull(task_ids=ti.task_id, key="fleet_id"),
            "tries": ti.try_number,
        }
    print(RESULT + json.dumps({"run": str(run.state), "tasks": tasks, "serialized": roundtrip()}))


def roundtrip() -> list[str]:
    """Rebuild each trigger from its serialize() as the triggerer does; its class path back."""
    out = []
    for trigger in (
        MlrolloutTrigger("r-1", "/tmp/state", poll_interval=2.0, wait_for_approval=True),
        MlrolloutFleetTrigger("f-1", "/tmp/state", poll_interval=3.0),
    ):
        path, kwargs = trigger.serialize()
        module, _, name = path.rpartition(".")
        again = getattr(importlib.import_module(module), name)(**kwargs)
        assert again.serialize() == (path, kwargs), (again.serialize(), path, kwargs)
        json.dumps(kwargs)  # the triggerer stores them as JSON
        out.append(path)
    return out


if __name__ == "__main__":
    main(sys.argv[1])
