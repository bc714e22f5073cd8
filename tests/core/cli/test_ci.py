"""On GitHub Actions a rollout folds its log per step, annotates a rollback, and writes its
report to the job summary; the composite action (action.yml) runs scripts/github-action.sh with
its inputs as INPUT_* variables, and the tests run that script exactly so."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import mlrollout

REPO = Path(mlrollout.__file__).resolve().parents[1]
PLANS = REPO / "plans"
SCRIPT = REPO / "scripts" / "github-action.sh"


def action_env(tmp_path: Path, **inputs: str) -> dict[str, str]:
    """The environment the composite action gives its script: every input, as GitHub passes
    them (INPUT_*), and the runner's own variables."""
    action = yaml.safe_load((REPO / "action.yml").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INPUT_", "GITHUB_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for name, spec in action["inputs"].items():
        env[f"INPUT_{name.upper().replace('-', '_')}"] = inputs.get(
            name.replace("-", "_"), str(spec.get("default", ""))
        )
    env.update(
        GITHUB_ACTIONS="true",
        GITHUB_ACTION_PATH=str(REPO),
        GITHUB_OUTPUT=str(tmp_path / "output"),
        GITHUB_STEP_SUMMARY=str(tmp_path / "summary.md"),
    )
    return env


def run_action(tmp_path: Path, **inputs: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT)],
        env=action_env(tmp_path, **inputs),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def outputs(tmp_path: Path) -> dict[str, str]:
    lines = (tmp_path / "output").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def test_the_action_passes_every_input_to_its_script_and_exposes_its_outputs():
    action = yaml.safe_load((REPO / "action.yml").read_text())
    [step] = action["runs"]["steps"]
    assert action["runs"]["using"] == "composite"
    assert "scripts/github-action.sh" in step["run"]
    expected = {f"INPUT_{n.upper().replace('-', '_')}" for n in action["inputs"]}
    assert set(step["env"]) == expected
    for name, value in step["env"].items():
        assert value == "${{ inputs." + name[6:].lower().replace("_", "-") + " }}"
    assert set(action["outputs"]) == {"rollout-id", "exit-code"}
    assert os.access(SCRIPT, os.X_OK)


def test_a_rollback_fails_the_step_annotates_it_and_fills_the_summary(tmp_path):
    done = run_action(tmp_path, plan=str(PLANS / "local-canary-bad.yaml"), state="state")
    assert done.returncode == 1, done.stderr
    out = done.stdout
    assert "::group::step 2/6: analyze 10m" in out
    assert out.count("::group::") == out.count("::endgroup::")
    [error] = [line for line in out.splitlines() if line.startswith("::error ")]
    assert "rolls back" in error and "errors: candidate error rate" in error
    assert "%25" in error and "\n" not in error  # escaped as workflow commands need
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("# churn-v7-canary") and "**Rolled back**" in summary
    found = outputs(tmp_path)
    assert found["exit-code"] == "1" and found["rollout-id"].startswith("churn-v7-canary-")


def test_a_promotion_passes_and_a_later_job_can_watch_it(tmp_path):
    done = run_action(tmp_path, plan=str(PLANS / "local-canary-good.yaml"), state="state")
    assert done.returncode == 0, done.stderr
    rid = outputs(tmp_path)["rollout-id"]
    (tmp_path / "output").unlink()
    watched = run_action(tmp_path, command="watch", rollout=rid, state="state")
    assert watched.returncode == 0, watched.stderr
    assert outputs(tmp_path)["exit-code"] == "0"
    assert "promoted" in watched.stdout


def test_a_rollout_waiting_for_approval_ends_the_step_with_a_notice_and_a_later_job_promotes(
    tmp_path,
):
    done = run_action(tmp_path, plan=str(PLANS / "local-approval.yaml"), state="state")
    assert done.returncode == 0, done.stderr
    assert "::notice title=mlrollout::" in done.stdout and "waits for a human" in done.stdout
    rid = outputs(tmp_path)["rollout-id"]
    assert outputs(tmp_path)["exit-code"] == "3"
    promoted = run_action(tmp_path, command="promote", rollout=rid, state="state")
    assert promoted.returncode == 0, promoted.stderr
    resumed = run_action(tmp_path, command="resume", rollout=rid, state="state")
    assert resumed.returncode == 0, resumed.stderr  # promoted to its end
    assert outputs(tmp_path)["exit-code"] == "0"


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"command": "run"}, "needs the plan input"),
        ({"command": "promote"}, "needs the rollout input"),
        ({"command": "deploy"}, "unknown command 'deploy'"),
    ],
)
def test_bad_inputs_are_an_error_annotation_and_exit_2(tmp_path, inputs, message):
    done = run_action(tmp_path, **inputs)
    assert done.returncode == 2
    assert re.search(rf"::error::.*{message}", done.stdout)


def test_off_github_actions_nothing_changes(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlrollout",
            "--state",
            str(tmp_path / "s"),
            "run",
            "--yes",
            str(PLANS / "local-canary-bad.yaml"),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "::" not in done.stdout
