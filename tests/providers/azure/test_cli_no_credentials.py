"""The real CLI in a subprocess, with the real ``DefaultAzureCredential`` and no Azure identity
anywhere (issue 13): mlrollout's one error line and its hint, not azure-identity's own log lines
about every credential it tried. The credential fails before any request, so the plan points at a
port where nothing listens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlrollout
from mlrollout.errors import ExitCode

PLAN = Path(mlrollout.__file__).resolve().parents[1] / "plans" / "azureml-canary.yaml"
#: Where a credential could come from besides the environment variables and the home directory.
IDENTITY_VARIABLES = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET")


def run_without_credentials(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    text = PLAN.read_text().replace(
        "  endpoint: churn-scoring\n",
        "  endpoint: churn-scoring\n  endpoint_url: https://127.0.0.1:9\n",
    )
    assert "endpoint_url" in text
    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    (tmp_path / "bin").mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AZURE_", "MLROLLOUT_")) and k not in IDENTITY_VARIABLES
    }
    # No az / azd / pwsh on PATH, no ~/.azure token cache: nothing for the chain to find.
    env.update(HOME=str(tmp_path), PATH=str(tmp_path / "bin"), PYTHONWARNINGS="ignore")
    state = str(tmp_path / "state")
    return subprocess.run(
        [sys.executable, "-m", "mlrollout", *options, "--state", state, "run", "--yes", str(plan)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_credentials_prints_one_error_and_a_hint_and_exits_6(tmp_path):
    done = run_without_credentials(tmp_path)
    assert done.returncode == ExitCode.PROVIDER, done.stderr
    started, *lines = done.stderr.splitlines()  # the progress line, then what went wrong
    assert started.startswith("rollout churn-v7-canary-") and "started" in started
    assert [line.split(":", 1)[0] for line in lines] == ["error", "hint"], done.stderr
    assert lines[0].startswith("error: no Azure credentials to read workspace 'ml-prod-ws'")
    assert "az login" in lines[1] and "AzureML Data Scientist" in lines[1]
    # azure-identity's own report of the chain stays out of it.
    assert "Attempted credentials" not in done.stderr
    assert "EnvironmentCredential" not in done.stderr


def test_with_debug_azure_identity_says_why_each_credential_failed(tmp_path):
    done = run_without_credentials(tmp_path, "--debug")
    assert done.returncode == ExitCode.PROVIDER, done.stderr
    # azure-identity's warning (its logger's line, not the traceback's exception line)
    logged = "DefaultAzureCredential failed to retrieve a token"
    assert any(line.startswith(logged) for line in done.stderr.splitlines()), done.stderr
    assert "error: no Azure credentials" in done.stderr
