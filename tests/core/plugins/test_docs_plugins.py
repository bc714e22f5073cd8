"""docs/plugins.md's worked metrics-source example runs as written: installed through a real
dist-info, it is checked by `plan validate` and it decides a sandbox rollout."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mlrollout.errors import PlanError
from mlrollout.plan.loader import parse_plan

from .conftest import SOURCE_PLAN

if TYPE_CHECKING:
    from .conftest import Cli, PluginSite

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "plugins.md"


def example() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### Worked example: counts from a CSV file") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL)[1]  # type: ignore[index]


@pytest.fixture
def csv_plugin(plugin_site: PluginSite) -> PluginSite:
    plugin_site.module("mlrollout_csvmetrics.source", example())
    plugin_site.dist(
        "mlrollout-csvmetrics", "[mlrollout.metrics]\ncsv = mlrollout_csvmetrics.source:SPEC\n"
    )
    return plugin_site


def test_the_example_validates_its_settings(csv_plugin: PluginSite) -> None:
    parse_plan(SOURCE_PLAN.format(source="{csv: {path: m.csv}}"), "plan.yaml")
    with pytest.raises(PlanError) as caught:
        parse_plan(SOURCE_PLAN.format(source="{csv: {}}"), "plan.yaml")
    [issue] = [str(i) for i in caught.value.issues]
    assert "analysis.source.csv: the csv source needs path: FILE" in issue
    with pytest.raises(PlanError) as caught:
        parse_plan(SOURCE_PLAN.format(source="{cvs: {path: m.csv}}"), "plan.yaml")
    [issue] = [str(i) for i in caught.value.issues]
    assert issue.startswith("plan.yaml:9:12: analysis.source.cvs: metrics source 'cvs' is not")
    assert "did you mean 'csv'? installed metrics sources: csv" in issue


def test_the_example_decides_a_sandbox_rollout(
    csv_plugin: PluginSite, tmp_path: Path, cli: Cli
) -> None:
    metrics = tmp_path / "metrics.csv"
    now = int(time.time())
    rows = ["time,variant,requests,errors"]
    for minute in range(-5, 240):  # the sandbox's virtual time starts now
        at = now + 60 * minute
        rows += [f"{at},v1,1000,1", f"{at},v2,250,40"]  # the CSV says: the candidate fails
    metrics.write_text("\n".join(rows) + "\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text(SOURCE_PLAN.format(source=f"{{csv: {{path: '{metrics}'}}}}"))
    code, _, err = cli("--state", tmp_path / "state", "run", plan, "--yes")
    assert code == 1, err  # rolled back (the sandbox is healthy)
    from mlrollout.state.sqlite import open_sqlite_store

    [record] = open_sqlite_store(str(tmp_path / "state")).list_rollouts()
    assert "errors" in str(record.snapshot.get("reason")), record.snapshot.get("reason")
