"""`mlrollout plan preview PLAN --live` against the emulated SageMaker: the provider is opened as a
rollout opens it and the endpoint read once — only Describe*/List* calls, no Create/Update/Delete,
no tag (ownership mark) written — and the diff shows the real variants (instance type, count):
DescribeEndpoint reports counts, the type comes from the live endpoint config (read once)."""

from __future__ import annotations

import json

import pytest

BLUE_GREEN = """\
strategy:
  type: blue_green
  preview: 10
  pre_promotion: 5m
  switch: all_at_once
  post_promotion: 5m
  keep_previous: 10m
"""

READ_ONLY = ("Describe", "List", "Get")


@pytest.fixture
def cli(capsys):
    from mlrollout.cli.app import main

    def run(*args):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        return exc.value.code, captured.out, captured.err

    return run


def blue_green_plan(world):
    path = world.plan()
    text = path.read_text().replace("instance_count: 1", "instance_count: 2")
    path.write_text(text[: text.index("strategy:")] + BLUE_GREEN + text[text.index("analysis:") :])
    return path


def sagemaker_calls(world) -> dict[str, int]:
    return {op: n for (service, op), n in world.emulator.calls.items() if n}


def test_live_preview_reads_only(world, cli, tmp_path):
    world.endpoint()
    plan = blue_green_plan(world)
    state = tmp_path / "state"
    code, out, err = cli("plan", "preview", "--live", "-o", "json", plan, "--state", state)
    assert code == 0, err
    calls = sagemaker_calls(world)
    assert calls, "the live preview made no call"
    assert all(op.startswith(READ_ONLY) for op in calls), calls
    assert calls.get("DescribeEndpoint") == 2  # the provider's preflight, then describe()
    assert not any(op.startswith(("Create", "Update", "Delete", "AddTags")) for op in calls)
    assert not world.emulator.endpoint_tags("churn")  # no ownership mark
    assert not state.exists()  # no state store made

    data = json.loads(out)
    assert data["live_error"] is None
    live = data["live"]
    assert live["baseline"] == "v1"
    now, first, end = live["stages"]
    # DescribeEndpoint reports each variant's instance count; its config names the type.
    assert [
        (v["name"], v["weight"], v["instance_type"], v["instance_count"]) for v in now["variants"]
    ] == [("v1", 100.0, "ml.m5.large", 2)]
    assert calls.get("DescribeEndpointConfig") == 1
    assert [
        (v["name"], v["weight"], v["instance_type"], v["instance_count"]) for v in first["variants"]
    ] == [("v1", 100.0, "ml.m5.large", 2), ("v2", 0.0, "ml.m5.large", 2)]
    assert [(v["name"], v["weight"]) for v in end["variants"]] == [("v2", 100.0)]
    overlap = live["overlap"]
    assert overlap["instances"] == 4
    hours = overlap["instance_hours"]
    assert set(hours) == {"ml.m5.large"}  # both fleets' types are known
    assert hours["ml.m5.large"]["max"] == pytest.approx(4 * data["max_seconds"] / 3600)
    print("calls:", calls)


def test_live_preview_shows_green_at_blues_count_when_the_plan_names_none(world, cli, tmp_path):
    world.endpoint(instance_count=3)
    plan = blue_green_plan(world)
    plan.write_text(plan.read_text().replace("  instance_count: 2\n", ""))
    assert "instance_count" not in plan.read_text()
    code, out, err = cli("plan", "preview", "--live", "-o", "json", plan, "--state", tmp_path / "s")
    assert code == 0, err
    live = json.loads(out)["live"]
    _, first, _ = live["stages"]
    assert [(v["name"], v["instance_type"], v["instance_count"]) for v in first["variants"]] == [
        ("v1", "ml.m5.large", 3),
        ("v2", "ml.m5.large", 3),
    ]
    assert "create v2 at 0% (3 instances of ml.m5.large)" in first["change"]
    assert live["overlap"]["instances"] == 6
    code, out, err = cli("plan", "preview", "--live", plan, "--state", tmp_path / "s")
    assert code == 0, err
    assert "ml.m5.large" in out and "unknown type" not in out


def test_a_missing_endpoint_is_one_line_and_the_offline_preview(world, cli):
    plan = world.plan()  # no endpoint created
    code, out, err = cli("plan", "preview", "--live", plan)
    assert code == 0, err
    assert "Traceback" not in out + err
    [line] = err.strip().splitlines()
    assert line.startswith("live: could not read sagemaker endpoint 'churn': ")
    assert "does not exist" in line and "hint:" in line
    assert "API calls `run` would make:" in out
    calls = sagemaker_calls(world)
    assert all(op.startswith(READ_ONLY) for op in calls), calls
