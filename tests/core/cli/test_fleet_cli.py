"""A fleet through the command line: `run` drives it wave after wave and exits with its end,
`status` and `report` show it as a table of targets, `abort` and `resume` take its id."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Cli = Callable[..., Any]


def fleet_id(cli: Cli, state: str) -> str:
    """The fleet the store's rollouts belong to, as `list` names it."""
    [found] = {row["fleet"] for row in json.loads(cli("--state", state, "list", "-o", "json").out)}
    return str(found)


def test_a_fleet_with_a_bad_region_is_rolled_back_and_reported_as_a_table(
    cli: Cli, state: str, plans: Path
) -> None:
    plan = plans / "local-fleet.yaml"
    preview = cli("plan", "preview", plan)
    assert preview.code == 0, preview.both
    assert "fleet: 4 targets in 3 wave(s), at most 2 at a time" in preview.out
    assert "decision budget: alpha 0.05 for each target's rollout" in preview.out
    result = cli("--state", state, "run", "--yes", plan)
    assert result.code == 1, result.both
    assert "churn-eu-west: rolled_back" in result.out
    fid = fleet_id(cli, state)
    status = cli("--state", state, "status", fid, "-o", "json")
    data = json.loads(status.out)
    assert data["phase"] == "rolled_back" and "churn-eu-west (wave 2)" in data["reason"]
    phases = {row["endpoint"]: row["phase"] for row in data["targets"]}
    assert phases == {
        "churn-us-east": "rolled_back",
        "churn-eu-west": "rolled_back",
        "churn-ap-south": "rolled_back",
        "churn-sa-east": "not started",
    }
    # `list` names each target's fleet, and the fleets after the rollouts
    listed = json.loads(cli("--state", state, "list", "-o", "json").out)
    assert {row["fleet"] for row in listed} == {fid} and len(listed) == 3
    assert f"fleets: {fid} (rolled_back, 4 targets)" in cli("--state", state, "list").out
    report = cli("--state", state, "report", fid)
    assert report.code == 0
    assert report.out.startswith(f"# Fleet {fid}: rolled back")
    assert "| 3 | churn-sa-east (local) | - | not started |" in report.out
    # a fleet that ended: nothing to abort, resume says how it ended
    assert cli("--state", state, "abort", fid).code == 2
    resumed = cli("--state", state, "resume", fid)
    assert resumed.code == 1 and "already ended: rolled_back" in resumed.err
    # each target's rollout is an ordinary rollout
    target = data["targets"][0]["rollout"]
    assert cli("--state", state, "report", target).code == 0


def test_a_fleet_plan_validates_as_a_fleet(cli: Cli, plans: Path) -> None:
    result = cli("plan", "validate", plans / "local-fleet.yaml")
    assert result.code == 0, result.both
    assert "valid (canary on a fleet of 4 targets in 3 wave(s))" in result.out
