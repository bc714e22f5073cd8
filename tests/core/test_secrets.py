"""Secrets never leave: credentials in the environment or in a plan end up in no output, no
state record, no report and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE1234",
    "AWS_SECRET_ACCESS_KEY": "fakeSecretKeyZZZZ9999yyyyXXXX",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEFAKESESSIONTOKEN",
    "AZURE_CLIENT_SECRET": "azure~fake~client~secret~777",
    "GOOGLE_OAUTH_ACCESS_TOKEN": "ya29.fake-google-token-abc",
    "MLROLLOUT_WEBHOOK_TOKEN": "xoxb-fake-webhook-token-42",
}


def _mlrollout(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **SECRETS}
    return subprocess.run(
        [sys.executable, "-m", "mlrollout", "--state", str(tmp_path / "state"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_no_secret_from_the_environment_appears_anywhere(tmp_path: Path) -> None:
    outputs = []
    bad = str(ROOT / "plans" / "local-canary-bad.yaml")
    good = str(ROOT / "plans" / "local-canary-good.yaml")
    for args in (
        ("run", "--yes", bad),
        ("run", "--yes", "--output", "json", good),
        ("list", "--output", "json"),
        ("status",),
        ("status", "--output", "json"),
        ("plan", "preview", bad),
        ("plan", "preview", "--output", "json", bad),
        ("--debug", "status", "no-such-rollout"),
        ("--debug", "run", "--yes", str(tmp_path / "missing.yaml")),
        ("demo", "--output", "json"),
    ):
        done = _mlrollout(tmp_path, *args)
        outputs.append(done.stdout + done.stderr)
    rid = _mlrollout(tmp_path, "list", "--output", "json").stdout.split('"id": "')[1].split('"')[0]
    for args in (("report", rid), ("report", rid, "--output", "json")):
        done = _mlrollout(tmp_path, *args)
        outputs.append(done.stdout + done.stderr)
    state_bytes = b"".join(p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file())
    for name, secret in SECRETS.items():
        for text in outputs:
            assert secret not in text, f"{name} leaked into the output"
        assert secret.encode() not in state_bytes, f"{name} leaked into the state store"


@pytest.mark.parametrize(
    "extra, where",
    [
        ("  api_token: abc123\n", "target.api_token"),
        ("  endpoint_url: https://admin:hunter2@127.0.0.1:9000\n", "target.endpoint_url"),
    ],
)
def test_a_plan_carrying_credentials_is_refused_before_it_is_recorded(
    tmp_path: Path, extra: str, where: str
) -> None:
    plan = (ROOT / "plans" / "local-canary-good.yaml").read_text()
    plan = plan.replace("  endpoint: churn-scoring\n", "  endpoint: churn-scoring\n" + extra)
    path = tmp_path / "plan.yaml"
    path.write_text(plan)
    done = _mlrollout(tmp_path, "run", "--yes", str(path))
    assert done.returncode == 4, done.stderr
    assert where in done.stderr and "credentials" in done.stderr
    assert not (tmp_path / "state").exists()  # nothing recorded


#: Query parameters that carry a credential, as webhook URLs are handed out with them.
CREDENTIAL_QUERIES = [
    "token",
    "api_key",
    "apiKey",
    "sig",
    "access_token",
    "password",
    "secret",
    "key",
    "code",
    "X-Amz-Signature",
    "subscription-key",
]


def test_a_webhook_url_with_a_credential_in_its_query_is_refused_where_it_stands(
    tmp_path: Path,
) -> None:
    plan = (ROOT / "plans" / "local-canary-good.yaml").read_text()
    first = plan.count("\n") + 2  # the line of notify[0]
    hooks = [
        f"https://hooks.example.com/x?channel=ops&{q}=hook-secret-{i}"
        for i, q in enumerate(CREDENTIAL_QUERIES)
    ]
    hooks += ["https://hooks.example.com/x?api_key=", "https://hooks.example.com/x?channel=ops"]
    plan += "notify:\n" + "".join(f"  - webhook: {url}\n" for url in hooks)
    path = tmp_path / "plan.yaml"
    path.write_text(plan)
    done = _mlrollout(tmp_path, "plan", "validate", str(path))
    assert done.returncode == 4, done.stderr
    names = [*CREDENTIAL_QUERIES, "api_key"]
    for i, name in enumerate(names):  # FILE:LINE:COLUMN: key.path: message, like any problem
        assert (
            f"{path}:{first + i}:14: notify[{i}].webhook: this URL carries a credential in its "
            f"query string ({name}=...)"
        ) in done.stderr, done.stderr
    assert f"notify[{len(names)}]" not in done.stderr  # a query without a credential is fine
    assert done.stderr.count("MLROLLOUT_WEBHOOK_TOKEN") == len(names)
    assert "hook-secret" not in done.stderr + done.stdout
    done = _mlrollout(tmp_path, "run", "--yes", str(path))
    assert done.returncode == 4, done.stderr
    assert not (tmp_path / "state").exists()  # nothing recorded
