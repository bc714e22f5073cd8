"""``mlrollout providers azure role PLAN``: the least-privilege role definition an Azure ML plan
needs, with every action of the calls the adapters make, assignable at the plan's workspace (no
network, no azure library)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlrollout_azure import roles

from mlrollout.plan.loader import load_plan, parse_plan

REPO = Path(__file__).resolve().parents[3]
PACKAGE = REPO / "providers" / "azure" / "mlrollout_azure"
PLAN = REPO / "plans" / "azureml-canary.yaml"
WORKSPACE = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/ml-prod"
    "/providers/Microsoft.MachineLearningServices/workspaces/ml-prod-ws"
)


def adapter_calls() -> set[str]:
    """The SDK calls the adapters make: ``self.client.online_deployments.begin_delete(``, the
    ARM client's ``operations.begin_update(`` (``_online_operation``), Azure Monitor's
    ``self.client.query_resources(``."""
    azureml = (PACKAGE / "azureml.py").read_text()
    monitor = (PACKAGE / "monitor.py").read_text()
    found = {f"{a}.{b}" for a, b in re.findall(r"self\.client\.(\w+)\.(\w+)\(", azureml)}
    found |= {f"_online_operation.{m}" for m in re.findall(r"\boperations\.(\w+)\(", azureml)}
    found |= set(re.findall(r"self\.client\.(\w+)\(", monitor))
    return found


def test_the_adapters_calls_are_found() -> None:
    calls = adapter_calls()
    assert {"online_deployments.begin_create_or_update", "online_deployments.begin_delete"} <= calls
    assert {"_online_operation.begin_update", "query_resources", "workspaces.get"} <= calls


def test_every_call_the_adapters_make_has_its_actions_listed() -> None:
    role = roles.role_definition(load_plan(str(PLAN)).plan)
    unknown = adapter_calls() - set(roles.CALL_ACTIONS)
    assert not unknown, f"calls with no action in roles.CALL_ACTIONS: {unknown}"
    for call in adapter_calls():
        for action in roles.CALL_ACTIONS[call]:
            assert action in role["Actions"], (call, action)


def test_the_actions_the_adapters_name_in_their_errors_are_listed() -> None:
    from mlrollout_azure import _azure  # the adapters' own map (for an AuthorizationFailed hint)

    # a shadow judged on predictions: every call, the data collector's blobs included
    role = roles.role_definition(load_plan(str(REPO / "plans" / "azureml-shadow.yaml")).plan)
    granted = set(role["Actions"]) | set(role["DataActions"])
    named = {a for text in _azure.PERMISSIONS.values() for a in re.findall(r"Microsoft\.\S+", text)}
    assert named and named <= granted, named - granted


def test_prediction_gates_on_the_data_collector_need_its_container() -> None:
    canary = roles.role_definition(load_plan(str(PLAN)).plan)
    assert canary["DataActions"] == [] and len(canary["AssignableScopes"]) == 1
    role = roles.role_definition(load_plan(str(REPO / "plans" / "azureml-shadow.yaml")).plan)
    assert "Microsoft.MachineLearningServices/workspaces/datastores/read" in role["Actions"]
    assert role["DataActions"] == [
        "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read"
    ]
    assert role["AssignableScopes"][1].endswith("/containers/DATASTORE_CONTAINER")


def test_the_role_is_a_role_definition_on_the_workspace() -> None:
    role = roles.role_definition(load_plan(str(PLAN)).plan)
    assert set(role) >= {"Name", "IsCustom", "Description", "Actions", "NotActions"}
    assert role["IsCustom"] is True and role["NotActions"] == []
    assert role["AssignableScopes"] == [WORKSPACE]
    assert role["Actions"] == sorted(set(role["Actions"]))
    assert not any("*" in a for a in role["Actions"])  # least privilege: no wildcards
    assert all(
        a.startswith("Microsoft.") and a.endswith(("/read", "/write", "/delete"))
        for a in role["Actions"]
    )
    assert "churn-scoring" in role["Description"]


def test_a_custom_gate_on_another_resource_adds_its_scope() -> None:
    other = "/subscriptions/s/resourceGroups/app/providers/microsoft.insights/components/churn-ai"
    text = PLAN.read_text().replace(
        "  gates:\n",
        "  gates:\n    - {name: thumbs, metric: custom, min: 0.5, "
        f"query: {{metric: ThumbsUp, namespace: ChurnApp, resource_id: {other}}}}}\n",
        1,
    )
    role = roles.role_definition(parse_plan(text, "p.yaml").plan)
    assert role["AssignableScopes"] == [WORKSPACE, other]


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    from mlrollout.cli.app import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_the_role_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main(capsys, "providers", "azure", "role", str(PLAN))
    assert code == 0, err
    assert json.loads(out) == roles.role_definition(load_plan(str(PLAN)).plan)
    local = str(REPO / "plans" / "local-linear.yaml")
    code, _, err = _main(capsys, "providers", "azure", "role", local)
    assert code == 2 and "not azureml" in err, err


def test_the_role_command_adds_an_az_state_stores_data_actions(capsys) -> None:
    state = "az://acct/rollouts/prod"
    code, out, err = _main(capsys, "--state", state, "providers", "azure", "role", str(PLAN))
    assert code == 0, err
    assert json.loads(out) == roles.role_definition(load_plan(str(PLAN)).plan, state)
    assert json.loads(out) != roles.role_definition(load_plan(str(PLAN)).plan)


LIGHT = textwrap.dedent(
    """
    import sys
    from mlrollout.cli.app import main
    try:
        main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("azure", "msal"))
    assert not leaked, leaked
    sys.exit(code)
    """
)


def test_the_role_command_imports_no_azure_library() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LIGHT, "providers", "azure", "role", str(PLAN)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
