"""The ``azureml`` spec: loaded through its entry point without any azure library, Azure ML's
limits checked by ``plan validate`` without network, the example plans valid."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlrollout.errors import PlanError
from mlrollout.plan.loader import load_plan, parse_plan
from mlrollout.plugins import provider_spec

REPO = Path(__file__).resolve().parents[3]

BASE = """\
version: 1
name: t
target:
  provider: azureml
  subscription_id: {sub}
  resource_group: rg
  workspace: ws
  endpoint: churn
candidate: {{name: green, model: {model}, instance_type: Standard_DS3_v2}}
strategy: {strategy}
analysis:
  interval: {interval}
  gates:
    - {{name: errors, metric: error_rate, max: 5%}}
"""
SUB = "00000000-0000-0000-0000-000000000000"
CANARY = "{type: canary, steps: [{weight: 10}, {analyze: 10m}, {weight: 100}]}"


def problems(
    strategy: str = CANARY, interval: str = "60s", model: str = "churn-model:2", sub: str = SUB
) -> list[str]:
    text = BASE.format(strategy=strategy, interval=interval, model=model, sub=sub)
    try:
        parse_plan(text, "plan.yaml")
    except PlanError as exc:
        return [str(issue) for issue in exc.issues]
    return []


def test_the_spec_loads_through_its_entry_point_without_azure():
    code = textwrap.dedent(
        """
        import sys
        from mlrollout.plugins import provider_spec
        from mlrollout.plan.loader import load_plan
        spec = provider_spec("azureml")
        assert spec.name == "azureml" and spec.capabilities.shadow
        for path in sys.argv[1:]:
            spec.describe_calls(load_plan(path).plan)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] == "azure")
        assert not leaked, leaked
        """
    )
    plans = sorted(str(p) for p in (REPO / "plans").glob("azureml-*.yaml"))
    assert len(plans) == 5  # canary, linear, blue-green, blue-green on a mirror, shadow
    proc = subprocess.run(
        [sys.executable, "-c", code, *plans], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_the_example_plans_are_valid():
    for path in sorted((REPO / "plans").glob("azureml-*.yaml")):
        plan = load_plan(path).plan
        assert plan.target.provider == "azureml"


def test_a_valid_plan_has_no_problems():
    assert problems() == []


def test_the_workspace_keys_are_required():
    text = BASE.format(strategy=CANARY, interval="60s", model="m:1", sub=SUB).replace(
        "  workspace: ws\n", ""
    )
    with pytest.raises(PlanError, match=r"needs target\.workspace"):
        parse_plan(text, "plan.yaml")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"model": "churn-model"}, "not an Azure ML model reference"),
        ({"sub": "my-sub"}, "not an Azure subscription id"),
        ({"interval": "30s"}, "finest granularity is one minute"),
        (
            {"strategy": "{type: canary, steps: [{weight: 12.5}, {analyze: 10m}]}"},
            "whole percents",
        ),
        ({"strategy": "{type: linear, step: 7.5, every: 5m}"}, "whole percents"),
        ({"strategy": "{type: shadow, percent: 80, duration: 1h}"}, "mirrors at most 50%"),
    ],
)
def test_platform_limits_are_checked_without_network(kwargs, words):
    found = problems(**kwargs)
    assert any(words in p for p in found), found


def test_a_shadow_rollout_within_the_mirror_limit_is_accepted():
    found = problems(strategy="{type: shadow, percent: 50, duration: 1h}")
    assert all("mirrors at most" not in p for p in found), found
    assert not any("not supported yet" in p for p in found), found


def test_custom_queries_are_checked():
    spec = provider_spec("azureml")
    from mlrollout_azure.spec import check_query

    assert spec.name == "azureml"
    assert check_query({"metric": "ThumbsUp"}, ("q",)) == []
    messages = [p.message for p in check_query({"metrc": "x", "aggregation": "P99"}, ("q",))]
    assert any("unknown key 'metrc'" in m for m in messages)
    assert any("needs metric" in m for m in messages)
    assert any("not an Azure Monitor aggregation" in m for m in messages)


def test_preview_lists_the_ownership_calls():
    plan = parse_plan(BASE.format(strategy=CANARY, interval="60s", model="m:1", sub=SUB), "p").plan
    owner = provider_spec("azureml").describe_calls(plan)["owner"]
    assert owner[0].startswith("AzureML GET onlineEndpoint")
    assert all(c.startswith("AzureML PATCH onlineEndpoint tags") for c in owner[1:])
    assert not any("PUT" in c for c in owner)  # a PUT would carry the traffic as it was read


SHADOW_WITH_GATES = """\
version: 1
name: t
target:
  provider: azureml
  subscription_id: 00000000-0000-0000-0000-000000000000
  resource_group: rg
  workspace: ws
  endpoint: churn
{extra}candidate: {{name: green, model: churn-model:2}}
strategy: {{type: shadow, percent: {percent}, duration: 30m}}
capture: {{output: $.label}}
analysis:
  interval: 60s
  gates:
    - {{name: agree, metric: agreement, min: 97%}}
    - {{name: drift, metric: prediction_drift, max: 0.2}}
"""


def shadow_problems(percent: str = "50", extra: str = "") -> list[str]:
    try:
        parse_plan(SHADOW_WITH_GATES.format(percent=percent, extra=extra), "plan.yaml")
    except PlanError as exc:
        return [str(issue) for issue in exc.issues]
    return []


def test_prediction_gates_read_the_data_collector_on_azureml():
    """The provider's own capture: no jsonl source is asked for; the capture target keys are
    checked; more than Azure's mirror limit is refused."""
    assert shadow_problems() == []
    ok = "  capture_datastore: workspaceblobstore\n  capture_collection: response\n"
    assert shadow_problems(extra=ok) == []
    found = shadow_problems(extra="  capture_collection: inputs\n")
    assert any("model_outputs" in p and "capture_collection" in p for p in found), found
    found = shadow_problems(percent="60")
    assert any("mirrors at most 50%" in p for p in found), found


def test_preview_lists_the_capture_calls():
    plan = parse_plan(SHADOW_WITH_GATES.format(percent="50", extra=""), "p").plan
    capture = provider_spec("azureml").describe_calls(plan)["capture"]
    assert any("List Blobs" in c for c in capture) and any("Get Blob" in c for c in capture)
