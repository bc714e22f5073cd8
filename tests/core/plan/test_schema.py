"""The JSON Schema that `mlrollout plan schema` prints is what editors check plans with: it must
be a valid schema, accept every example plan, and flag the mistakes the loader flags."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from mlrollout.plan.model import Plan

PLANS = sorted((Path(__file__).parents[3] / "plans").glob("*.yaml"))


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = Plan.model_json_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.mark.parametrize("path", PLANS, ids=[p.name for p in PLANS])
def test_every_example_plan_matches_the_schema(validator: Draft202012Validator, path: Path) -> None:
    errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []


def _broken(change: str) -> dict[str, Any]:
    plan: dict[str, Any] = copy.deepcopy(
        yaml.safe_load((Path(__file__).parents[3] / "plans" / "local-canary-bad.yaml").read_text())
    )
    if change == "unit-less duration":
        plan["strategy"]["steps"][1] = {"analyze": 10}
    elif change == "unknown key":
        plan["analysis"]["intervall"] = "60s"
    elif change == "unknown strategy":
        plan["strategy"]["type"] = "canry"
    elif change == "weight as text":
        plan["strategy"]["steps"][0] = {"weight": "ten"}
    elif change == "latency without unit":
        plan["analysis"]["gates"][1]["max"] = []
    elif change == "no version":
        del plan["version"]
    return plan


@pytest.mark.parametrize(
    "change",
    ["unit-less duration", "unknown key", "unknown strategy", "weight as text", "no version"],
)
def test_the_schema_flags_common_mistakes(validator: Draft202012Validator, change: str) -> None:
    assert list(validator.iter_errors(_broken(change))), f"the schema accepts: {change}"
