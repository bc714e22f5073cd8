"""The ``vertex`` spec: found through its entry point, light to import, and `plan validate`'s
platform checks (no network)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlrollout_gcp.spec import VertexProviderSpec

from mlrollout.errors import PlanError
from mlrollout.plan.checks import check_plan
from mlrollout.plan.loader import parse_plan
from mlrollout.plugins import provider_spec

REPO = Path(__file__).resolve().parents[3]

BASE = """\
version: 1
name: t
target: {provider: vertex, project: my-ml-project, location: us-central1, endpoint: churn}
candidate: {name: v2, model: churn-v2, instance_type: n1-standard-4}
strategy: {type: canary, steps: [{weight: 5}, {analyze: 10m}, {weight: 100}]}
analysis:
  interval: 60s
  gates: [{name: errors, metric: error_rate, max: 2%}]
"""


def findings(text: str) -> list[str]:
    """What `plan validate` says (the loader runs the provider's checks too)."""
    try:
        plan = parse_plan(textwrap.dedent(text), "plan.yaml").plan
    except PlanError as exc:
        return [f"{issue.path}: {issue.message}" for issue in exc.issues]
    return [f"{'.'.join(map(str, f.path))}: {f.message}" for f in check_plan(plan)]


def test_the_entry_point_gives_the_spec():
    spec = provider_spec("vertex")
    assert spec.plugin is VertexProviderSpec  # behind the core's PluginSpec
    assert spec.capabilities.weights and not spec.capabilities.shadow
    assert spec.required_keys == {"project", "location"}


def test_the_spec_imports_no_google_library():
    code = (
        "import sys, mlrollout_gcp.spec; "
        "heavy = ('google.cloud.', 'google.auth', 'google.api_core', 'google.protobuf', 'grpc'); "
        "bad = [m for m in sys.modules if m.startswith(heavy)]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", sorted(REPO.glob("plans/vertex-*.yaml")), ids=lambda p: p.name)
def test_the_example_plans_are_valid(path):
    assert findings(path.read_text()) == []


def test_a_plain_plan_is_valid():
    assert findings(BASE) == []


def test_project_and_location_are_required():
    text = BASE.replace("project: my-ml-project, location: us-central1, ", "")
    assert findings(text) == [
        "target: provider 'vertex' needs target.location",
        "target: provider 'vertex' needs target.project",
    ]


def test_shadow_is_refused_with_a_low_weight_canary_suggested():
    text = BASE.replace(
        "{type: canary, steps: [{weight: 5}, {analyze: 10m}, {weight: 100}]}",
        "{type: shadow, percent: 100, duration: 1h, then: promote}",
    )
    found = "\n".join(findings(text))
    assert "cannot mirror (shadow) traffic" in found
    assert "canary at a low weight" in found


def test_whole_percents_model_machine_type_and_interval_are_checked():
    text = (
        BASE.replace("{weight: 5}", "{weight: 2.5}")
        .replace("model: churn-v2, instance_type: n1-standard-4", "instance_type: ml.m5.large")
        .replace("interval: 60s", "interval: 30s")
    )
    found = "\n".join(findings(text))
    assert "whole percents, not 2.5%" in found
    assert "needs the candidate's model" in found
    assert "SageMaker instance type" in found
    assert "at least 60s" in found


def test_a_custom_gate_needs_a_cloud_monitoring_query():
    text = BASE.replace(
        "gates: [{name: errors, metric: error_rate, max: 2%}]",
        "gates: [{name: t, metric: custom, max: 1, query: {metric: x, aligner: ALIGN_P99}}]",
    )
    found = "\n".join(findings(text))
    assert "unknown key 'metric'" in found
    assert "needs metric_type" in found
    assert "'ALIGN_P99' is not an aligner" in found


def test_preview_lists_the_calls_and_one_metrics_call_per_metric_type():
    plan = parse_plan(BASE, "plan.yaml").plan
    calls = VertexProviderSpec.describe_calls(plan)
    assert calls["set_traffic"] == [
        "Vertex.UpdateEndpoint (updateMask traffic_split, integer percents)"
    ]
    assert len(calls["metrics"]) == 2  # no latency gate: counts and errors only
    assert any("DeployModel" in c for c in calls["prepare"])
    assert any("UndeployModel" in c for c in calls["finalize"])
    assert [c.split(" (")[0] for c in calls["owner"]] == [
        "Vertex.GetEndpoint",
        "Vertex.UpdateEndpoint",
        "Vertex.UpdateEndpoint",
    ]
    assert all("updateMask labels" in c for c in calls["owner"][1:])


def test_blue_green_without_a_preview_is_refused_and_no_instance_type_is_fine():
    """Vertex AI cannot mirror: a blue-green with preview 0 and a pre_promotion has nothing to
    judge green on before the switch. A candidate without instance_type takes the baseline's
    machine type (green at blue's capacity), so that is no finding."""
    blue_green = "strategy: {type: blue_green, preview: 0, pre_promotion: 10m}"
    text = BASE.replace(
        "strategy: {type: canary, steps: [{weight: 5}, {analyze: 10m}, {weight: 100}]}", blue_green
    )
    found = "\n".join(findings(text))
    assert "cannot mirror" in found and "preview" in found
    assert findings(text.replace("preview: 0", "preview: 5")) == []
    assert findings(BASE.replace(", instance_type: n1-standard-4", "")) == []
