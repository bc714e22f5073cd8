"""``mlrollout providers gcp role PLAN``: the least-privilege custom role a Vertex AI plan needs,
with every permission of the calls the adapters make (no network, no Google library)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlrollout_gcp import roles

from mlrollout.plan.loader import load_plan, parse_plan
from mlrollout.plugins import provider_spec

REPO = Path(__file__).resolve().parents[3]
PACKAGE = REPO / "providers" / "gcp" / "mlrollout_gcp"
PLAN = REPO / "plans" / "vertex-canary.yaml"


def adapter_calls() -> set[str]:
    """The client methods the adapters call: ``self._call("deploy_model", ...)``, the operations
    polled (``call(op.done, "get_operation", ...)``), ``self.client.list_time_series``."""
    vertex = (PACKAGE / "vertex.py").read_text()
    monitoring = (PACKAGE / "monitoring.py").read_text()
    found = set(re.findall(r'_call\(\s*"(\w+)"', vertex))
    found |= set(re.findall(r'\bcall\([^,()]+,\s*"(\w+)"', vertex))
    found |= set(re.findall(r"self\.\w*client\.(\w+)", vertex + monitoring))
    return found


def test_the_adapters_calls_are_found() -> None:
    calls = adapter_calls()
    assert {"deploy_model", "undeploy_model", "update_endpoint", "list_time_series"} <= calls
    assert {"get_model", "get_operation", "list_operations", "get_endpoint"} <= calls


def test_every_call_the_adapters_make_has_its_permissions_listed() -> None:
    role = roles.custom_role(load_plan(str(PLAN)).plan)
    unknown = adapter_calls() - set(roles.CALL_PERMISSIONS)
    assert not unknown, f"calls with no permission in roles.CALL_PERMISSIONS: {unknown}"
    for call in adapter_calls():
        for permission in roles.CALL_PERMISSIONS[call]:
            assert permission in role["includedPermissions"], (call, permission)


def test_the_permissions_the_adapters_name_in_their_errors_are_listed() -> None:
    from mlrollout_gcp import _gcp  # the adapters' own map (for a PermissionDenied's hint)

    role = roles.custom_role(load_plan(str(PLAN)).plan)
    named = {p for text in _gcp.PERMISSIONS.values() for p in re.findall(r"[a-z]+\.\w+\.\w+", text)}
    assert named and named <= set(role["includedPermissions"]), named


def test_every_call_plan_preview_names_is_covered() -> None:
    plan = load_plan(str(PLAN)).plan
    calls = provider_spec("vertex").describe_calls(plan)
    named = {
        m
        for lines in calls.values()
        for line in lines
        for m in re.findall(r"(?:Vertex|Monitoring)\.(\w+)", line)
    }
    snake = {re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower() for name in named}
    assert snake <= set(roles.CALL_PERMISSIONS), snake - set(roles.CALL_PERMISSIONS)


def test_the_role_is_a_custom_role_definition() -> None:
    role = roles.custom_role(load_plan(str(PLAN)).plan)
    assert set(role) == {"title", "description", "includedPermissions", "stage"}
    assert role["stage"] == "GA"
    assert 0 < len(role["title"]) <= 100 and len(role["description"]) <= 256
    assert "churn-scoring" in role["description"]
    permissions = role["includedPermissions"]
    assert permissions == sorted(set(permissions))
    assert not any("*" in p for p in permissions)  # least privilege: no wildcards
    assert all(re.fullmatch(r"[a-z]+\.[A-Za-z]+\.[A-Za-z]+", p) for p in permissions)


def test_an_endpoint_given_by_id_needs_no_listing() -> None:
    text = PLAN.read_text().replace("endpoint: churn-scoring", "endpoint: '1234567890'")
    assert "'1234567890'" in text
    by_id = roles.permissions(parse_plan(text, "p.yaml").plan)
    assert "aiplatform.endpoints.list" not in by_id
    assert "aiplatform.endpoints.list" in roles.permissions(load_plan(str(PLAN)).plan)


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from mlrollout.cli.app import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_the_role_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main(capsys, "providers", "gcp", "role", str(PLAN))
    assert code == 0, err
    assert json.loads(out) == roles.custom_role(load_plan(str(PLAN)).plan)
    code, _, err = _main(
        capsys, "providers", "gcp", "role", str(REPO / "plans" / "local-linear.yaml")
    )
    assert code == 2 and "not vertex" in err, err


def test_the_role_command_adds_a_gs_state_buckets_permissions(capsys) -> None:
    code, out, err = _main(capsys, "--state", "gs://team/p", "providers", "gcp", "role", str(PLAN))
    assert code == 0, err
    role = json.loads(out)
    assert role == roles.custom_role(load_plan(str(PLAN)).plan, "gs://team/p")
    assert any(p.startswith("storage.") for p in role["includedPermissions"])


LIGHT = textwrap.dedent(
    """
    import sys
    from mlrollout.cli.app import main
    try:
        main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
    # (google.cloud itself may be set up at start-up by a namespace .pth file)
    heavy = ("google.cloud.", "grpc", "google.api_core", "google.auth")
    leaked = sorted(m for m in sys.modules if m.startswith(heavy))
    assert not leaked, leaked
    sys.exit(code)
    """
)


def test_the_role_command_imports_no_google_library() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LIGHT, "providers", "gcp", "role", str(PLAN)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
