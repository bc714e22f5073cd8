"""The plan keys of capture and the prediction gates: what the model refuses, what
``check_prediction_gates`` finds in the whole plan, and the JSON Schema."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from mlrollout.capture import capture_query
from mlrollout.capture.checks import check_prediction_gates
from mlrollout.plan.model import Gate, Plan

SHADOW = Path(__file__).parents[3] / "plans" / "local-shadow.yaml"


def plan_data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = copy.deepcopy(yaml.safe_load(SHADOW.read_text()))
    data.pop("capture", None)  # the example's own prediction gates make way for these
    data["analysis"]["gates"] = [
        g for g in data["analysis"]["gates"] if g["metric"] not in ("agreement", "prediction_drift")
    ]
    data["analysis"]["gates"] += [
        {"name": "agree", "metric": "agreement", "min": "97%", "tolerance": 0.01},
        {"name": "drift", "metric": "prediction_drift", "max": 0.2},
    ]
    for variant in data["sandbox"]["variants"].values():
        variant["accuracy"] = 0.9
    data.update(changes)
    return data


def test_the_gates_parse_their_bounds_in_their_unit() -> None:
    gate = Gate.model_validate({"name": "a", "metric": "agreement", "min": "97%"})
    assert gate.min_value == pytest.approx(0.97) and gate.tolerance is None
    assert Gate.model_validate({"name": "a", "metric": "agreement", "min": 0.9}).min_value == 0.9
    drift = Gate.model_validate({"name": "d", "metric": "prediction_drift", "max": 0.2})
    assert drift.max_value == 0.2


@pytest.mark.parametrize(
    ("gate", "words"),
    [
        (
            {"metric": "agreement", "min": "97%", "vs_baseline": {"max_decrease": "1pp"}},
            "instead of vs_baseline",
        ),
        ({"metric": "prediction_drift", "vs_baseline": {"max_increase": "5%"}}, "vs_baseline"),
        ({"metric": "agreement", "max": "97%"}, "takes min"),
        ({"metric": "prediction_drift", "min": 0.1}, "takes max"),
        ({"metric": "error_rate", "max": 0.01, "tolerance": 0.1}, "tolerance only applies"),
        ({"metric": "agreement", "min": "97%", "tolerance": -1}, "greater than or equal"),
    ],
)
def test_the_model_refuses_what_does_not_apply(gate: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        Gate.model_validate({"name": "g", **gate})


def test_a_shadow_with_prediction_gates_and_the_sandboxs_capture_is_fine() -> None:
    plan = Plan.model_validate(plan_data())
    assert check_prediction_gates(plan) == []
    q = capture_query(plan, 1.0, 2.0, "v6", "v7", None)
    assert (q.output, q.tolerance, q.bins) == ("$", 0.01, None)


def test_agreement_needs_mirrored_traffic_and_names_what_to_use() -> None:
    data = plan_data(strategy={"type": "canary", "steps": [{"weight": 10}, {"analyze": "10m"}]})
    [finding] = check_prediction_gates(Plan.model_validate(data))
    assert finding.path == ("analysis", "gates", 2, "metric")
    assert "shadow" in finding.message and "preview: 0" in finding.message
    assert "prediction_drift" in finding.message
    green = plan_data(strategy={"type": "blue_green", "preview": 0, "pre_promotion": "10m"})
    assert check_prediction_gates(Plan.model_validate(green)) == []
    previewed = plan_data(strategy={"type": "blue_green", "preview": 10, "pre_promotion": "10m"})
    assert len(check_prediction_gates(Plan.model_validate(previewed))) == 1


def test_a_jsonpath_that_does_not_parse_is_an_error_at_capture_output() -> None:
    plan = Plan.model_validate(plan_data(capture={"output": "$.predictions[first]"}))
    [finding] = check_prediction_gates(plan)
    assert finding.path == ("capture", "output") and "column 15" in finding.message


def test_the_loader_points_at_the_line_and_column() -> None:
    from mlrollout.errors import PlanError
    from mlrollout.plan.loader import _finding_issue, parse_plan
    from mlrollout.plan.yamlsafe import load_located

    text = yaml.safe_dump(plan_data(capture={"output": "$.predictions[first]"}), sort_keys=False)
    plan = Plan.model_validate(yaml.safe_load(text))
    [finding] = check_prediction_gates(plan)
    issue = _finding_issue("plan.yaml", load_located(text), finding)
    lines = text.splitlines()
    assert "$.predictions[first]" in lines[issue.line - 1]
    assert issue.column > 1
    data = plan_data()
    data["analysis"]["gates"][-1]["vs_baseline"] = {"max_increase": "10%"}
    with pytest.raises(PlanError) as caught:
        parse_plan(yaml.safe_dump(data, sort_keys=False), "plan.yaml")
    [bad] = [i for i in caught.value.issues if "vs_baseline" in i.message]
    assert bad.line > 0 and "absolute bound" in bad.message


def test_a_provider_without_capture_needs_a_jsonl_source() -> None:
    data = plan_data()
    data["target"] = {"provider": "vertex", "endpoint": "e", "project": "p", "region": "r"}
    del data["sandbox"]
    plan = Plan.model_validate(data)
    found = [f for f in check_prediction_gates(plan) if "captures none" in f.message]
    if found:  # the vertex provider is installed: it has no capture of its own
        assert "jsonl" in found[0].message
    data["capture"] = {"source": {"jsonl": "/var/capture/"}}
    assert not [
        f for f in check_prediction_gates(Plan.model_validate(data)) if "captures" in f.message
    ]


def test_one_tolerance_for_every_agreement_gate() -> None:
    data = plan_data()
    data["analysis"]["gates"].append({"name": "a2", "metric": "agreement", "min": "90%"})
    [finding] = check_prediction_gates(Plan.model_validate(data))
    assert finding.path[-1] == "tolerance"


@pytest.mark.parametrize(
    "source",
    ["jsonl", {"jsonl": ""}, {"jsonl": "a", "other": 1}, {"prometheus": {}}],
)
def test_a_capture_source_is_default_or_jsonl(source: object) -> None:
    with pytest.raises(ValidationError, match=r"capture source|jsonl"):
        Plan.model_validate(plan_data(capture={"source": source}))


def test_a_jsonl_source_on_another_scheme_is_refused() -> None:
    plan = Plan.model_validate(plan_data(capture={"source": {"jsonl": "s3://b/capture/"}}))
    [finding] = check_prediction_gates(plan)
    assert finding.path == ("capture", "source", "jsonl") and "file://" in finding.message


def test_the_schema_knows_the_capture_section_and_the_gates() -> None:
    schema = Plan.model_json_schema()
    validator = Draft202012Validator(schema)
    good = plan_data(capture={"source": {"jsonl": "file:///tmp/c/"}, "output": "$.p[0]"})
    assert [e.message for e in validator.iter_errors(good)] == []
    bad = plan_data(capture={"source": {"jsonl": "x", "extra": 1}})
    assert list(validator.iter_errors(bad))
    typo = plan_data()
    typo["analysis"]["gates"][-1]["metric"] = "prediction_drfit"
    assert list(validator.iter_errors(typo))
