"""`mlrollout plan preview PLAN --live` on the sandbox: it reads the endpoint in the --state store
once and shows what `run` would change — and writes nothing (no journal, no lease, no ownership
mark, the sandbox record byte for byte as it was)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest

from mlrollout.state.sqlite import open_sqlite_store

SPLIT_PLAN = """\
version: 1
name: split
target:
  provider: local
  endpoint: split-ep
baseline: auto
candidate:
  name: v8
strategy:
  type: canary
  steps:
    - weight: 10
    - analyze: 10m
    - weight: 100
analysis:
  interval: 60s
  min_requests: 100
  gates:
    - name: errors
      metric: error_rate
      vs_baseline: {max_increase: 25%}
sandbox:
  seed: 1
  rps: 100
  speed: max
  variants:
    v6: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}
    v7: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}
    v8: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}
"""


def snapshot(state: str) -> dict[str, object]:
    """Everything a preview could have written: the sandbox record (as bytes), the rollouts,
    the endpoint's lease, and every row of every table of the database (read-only)."""
    db = Path(state) / "state.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = list(conn.iterdump())
    store = open_sqlite_store(state)
    try:
        record = store.get_value("sandbox", "churn-scoring")
        return {
            "record": json.dumps(record, sort_keys=True).encode(),
            "rollouts": [(r.id, r.phase, r.last_seq) for r in store.list_rollouts(limit=1000)],
            "lease": store.current_lease("local:churn-scoring"),
            "rows": rows,
        }
    finally:
        store.close()


@pytest.fixture
def rolled_back(cli, plans, state) -> str:
    """A state store whose sandbox endpoint exists: a bad canary ran and rolled back (v6 serves
    100 %, the candidate was removed)."""
    result = cli("run", plans / "local-canary-bad.yaml", "--yes", "--state", state)
    assert result.code == 1, result.both  # rolled back
    return state


def live_json(cli, plan, state) -> dict:
    result = cli("plan", "preview", "--live", "-o", "json", plan, "--state", state)
    assert result.code == 0, result.both
    return json.loads(result.out)


def test_live_preview_shows_the_baseline_and_the_candidate_at_0_then_100(cli, plans, rolled_back):
    result = cli(
        "plan", "preview", "--live", plans / "local-canary-good.yaml", "--state", rolled_back
    )
    assert result.code == 0, result.both
    assert "Traceback" not in result.both
    out = result.out
    assert "live endpoint churn-scoring" in out
    assert "baseline: v6" in out
    assert "first change: create v8 at 0% (1 instance)" in out
    assert "end: v8 to 100%, v6 removed" in out
    assert "not in" not in out  # the endpoint exists: nothing made up
    # the offline preview is still all there
    assert "API calls `run` would make:" in out

    data = live_json(cli, plans / "local-canary-good.yaml", rolled_back)
    live = data["live"]
    assert data["live_error"] is None
    assert live["baseline"] == "v6"
    assert live["problem"] is None
    assert live["overlap"] is None  # a canary: no blue-green overlap
    now, first, end = live["stages"]
    assert [(v["name"], v["weight"]) for v in now["variants"]] == [("v6", 100.0)]
    assert [(v["name"], v["weight"], v["instance_count"]) for v in first["variants"]] == [
        ("v6", 100.0, 1),
        ("v8", 0.0, 1),
    ]
    assert first["variants"][1]["model"] == "churn-model-v8"
    assert [(v["name"], v["weight"]) for v in end["variants"]] == [("v8", 100.0)]
    for row in now["variants"]:
        assert set(row) >= {"weight", "model", "instance_type", "instance_count", "shadow_percent"}


def test_live_preview_writes_nothing(cli, plans, rolled_back):
    before = snapshot(rolled_back)
    assert before["lease"] is None
    for plan in ("local-canary-good.yaml", "local-blue-green.yaml", "local-linear.yaml"):
        assert cli("plan", "preview", "--live", plans / plan, "--state", rolled_back).code == 0
        live_json(cli, plans / plan, rolled_back)
    after = snapshot(rolled_back)
    assert after["record"] == before["record"]  # the sandbox record, byte for byte
    assert after["rollouts"] == before["rollouts"]  # no rollout recorded, no event journaled
    assert after["lease"] is None  # no lease taken
    assert after["rows"] == before["rows"]  # and no row of any table changed
    record = json.loads(after["record"])
    assert "owner" not in record or not record["owner"]  # no ownership mark


def test_live_preview_calls_describe_once_and_nothing_else(cli, plans, rolled_back, monkeypatch):
    from mlrollout.sandbox.endpoint import LocalEndpoint

    calls: list[str] = []
    describe = LocalEndpoint.describe

    def counted(self):
        calls.append("describe")
        return describe(self)

    monkeypatch.setattr(LocalEndpoint, "describe", counted)
    for name in ("prepare", "set_traffic", "finalize", "set_shadow", "read_owner", "write_owner"):

        def refuse(self, *args, _name=name, **kwargs):
            calls.append(_name)
            raise AssertionError(f"plan preview --live called {_name}")

        monkeypatch.setattr(LocalEndpoint, name, refuse)
    data = live_json(cli, plans / "local-blue-green.yaml", rolled_back)
    assert data["live_error"] is None, data["live_error"]
    assert calls == ["describe"]


def test_blue_green_shows_the_overlap_in_instance_hours(cli, plans, rolled_back):
    data = live_json(cli, plans / "local-blue-green.yaml", rolled_back)
    live = data["live"]
    overlap = live["overlap"]
    assert [(f["name"], f["instance_count"]) for f in overlap["fleets"]] == [("v6", 1), ("v7", 2)]
    assert overlap["instances"] == 3
    # worst case of the timeline: both fleets run from the start until blue is retired
    assert overlap["max_seconds"] == data["max_seconds"]
    assert overlap["min_seconds"] == data["min_seconds"]
    hours = overlap["instance_hours"]["unknown type"]  # the sandbox names no instance type
    assert hours["max"] == pytest.approx(3 * data["max_seconds"] / 3600)
    assert hours["min"] == pytest.approx(3 * data["min_seconds"] / 3600)
    first = live["stages"][1]["variants"]
    assert [(v["name"], v["weight"], v["instance_count"]) for v in first] == [
        ("v6", 100.0, 1),
        ("v7", 0.0, 2),
    ]

    text = cli("plan", "preview", "--live", plans / "local-blue-green.yaml", "--state", rolled_back)
    assert text.code == 0, text.both
    assert "first change: create v7 at 0% (2 instances)" in text.out
    assert "blue-green overlap: v6 1×unknown type + v7 2×unknown type = 3 instances" in text.out
    assert f"unknown type: {hours['min']:.2f} to {hours['max']:.2f} instance-hours" in text.out


def test_a_split_endpoint_with_baseline_auto_says_the_baseline_is_ambiguous(cli, tmp_path, state):
    from mlrollout.clock import VirtualClock
    from mlrollout.plan.loader import load_plan
    from mlrollout.sandbox.endpoint import LocalEndpoint

    path = tmp_path / "split.yaml"
    path.write_text(SPLIT_PLAN)
    plan = load_plan(str(path)).plan
    assert plan.sandbox is not None
    store = open_sqlite_store(state)
    try:
        endpoint = LocalEndpoint("split-ep", plan.sandbox, store, VirtualClock(1_800_000_000.0))
        endpoint.describe()
        endpoint.prepare(plan.candidate.model_copy(update={"name": "v7"}), "v6")
        endpoint.set_traffic({"v6": 50.0, "v7": 50.0})
        before = json.dumps(store.get_value("sandbox", "split-ep"), sort_keys=True)
    finally:
        store.close()

    result = cli("plan", "preview", "--live", path, "--state", state)
    assert result.code == 0, result.both
    assert "Traceback" not in result.both
    assert "`run` would stop here" in result.out
    assert "splits traffic v6 50%, v7 50%" in result.out
    assert "the baseline is ambiguous" in result.out
    assert "hint: set `baseline:` in the plan" in result.out

    live = live_json(cli, path, state)["live"]
    assert live["baseline"] is None
    assert "ambiguous" in live["problem"]["message"]
    assert [s["stage"] for s in live["stages"]] == ["now"]  # no change shown: run would not start

    store = open_sqlite_store(state)
    try:
        assert json.dumps(store.get_value("sandbox", "split-ep"), sort_keys=True) == before
    finally:
        store.close()


def test_an_endpoint_the_store_has_not_seen_is_shown_as_run_would_create_it(cli, plans, tmp_path):
    state = tmp_path / "never"
    result = cli("plan", "preview", "--live", plans / "local-canary-good.yaml", "--state", state)
    assert result.code == 0, result.both
    assert "not in" in result.out and "`run` creates it with v6 serving 100%" in result.out
    assert "baseline: v6" in result.out
    assert not state.exists()  # a preview creates no state store


def test_an_unreachable_provider_is_one_line_and_the_offline_preview(cli, plans, monkeypatch):
    """No credentials: one line with the error and its hint, no traceback, exit 0, then the
    offline preview exactly as without --live."""
    from mlrollout.errors import ProviderAuthError

    def no_credentials(plan, state):
        raise ProviderAuthError(
            "no AWS credentials for SageMaker.DescribeEndpoint", hint="configure credentials"
        )

    monkeypatch.setattr("mlrollout.plan.live.read_live", no_credentials)
    plan = plans / "sagemaker-canary.yaml"
    offline = cli("plan", "preview", plan)
    result = cli("plan", "preview", "--live", plan)
    assert result.code == 0, result.both
    assert "Traceback" not in result.both
    lines = result.err.strip().splitlines()
    assert lines == [
        "live: could not read sagemaker endpoint 'churn-scoring': no AWS credentials for "
        "SageMaker.DescribeEndpoint (hint: configure credentials); showing the offline preview"
    ]
    assert result.out == offline.out

    data = json.loads(cli("plan", "preview", "--live", "-o", "json", plan).out)
    assert data["live"] is None
    assert data["live_error"]["message"].startswith("no AWS credentials")
    assert data["live_error"]["hint"] == "configure credentials"


def test_without_live_the_preview_is_as_before(cli, plans, rolled_back):
    plan = plans / "local-canary-good.yaml"
    plain = cli("plan", "preview", "-o", "json", plan)
    offline = cli("plan", "preview", "--offline", "-o", "json", plan)
    assert plain.code == offline.code == 0
    assert plain.out == offline.out
    assert "live" not in json.loads(plain.out)
    assert "live endpoint" not in cli("plan", "preview", plan).out
