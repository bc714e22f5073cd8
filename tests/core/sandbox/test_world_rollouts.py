"""Whole rollouts in the sandbox's world (issue 13's "done when"): a regression that starts
late, a traffic gap, no traffic at all, a lagging metrics pipeline — each run by the real runner
on a SQLite store and a virtual clock, and read back from the journal and the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlrollout.engine.events import LOOK_KINDS, EventKind
from mlrollout.engine.runner import Runner
from mlrollout.errors import ProviderError
from mlrollout.plan.loader import load_plan, parse_plan
from mlrollout.plan.timeline import expand_steps
from mlrollout.report.markdown import markdown_report
from mlrollout.state.base import Event
from mlrollout.state.sqlite import SqliteStateStore

PLANS = Path(__file__).parents[3] / "plans"

#: Each example plan of a sandbox-world feature, and how its rollout ends.
WORLD_PLANS = {
    "local-late-regression.yaml": "rolled_back",
    "local-traffic-gap.yaml": "succeeded",
    "local-daily-traffic.yaml": "succeeded",
    "local-metrics-delay.yaml": "succeeded",
    "local-business-metrics.yaml": "succeeded",
    "local-users.yaml": "succeeded",
    "local-ab-test.yaml": "succeeded",
    "local-segments-flagd.yaml": "succeeded",
    "local-quality-gates.yaml": "rolled_back",
}


def run(tmp_path: Path, text: str, name: str = "plan.yaml") -> tuple[str, list[Event], str]:
    """Run a plan to its end; the phase, the journal and the Markdown report."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    store = SqliteStateStore(tmp_path / f"{name}.db")
    loaded = parse_plan(text, name)
    runner = Runner(store)
    record = runner.create(loaded)
    outcome = runner.drive(record.id)
    events = store.events(record.id)
    report = markdown_report(store.get_rollout(record.id), events, expand_steps(loaded.plan))
    store.close()
    return outcome.phase.value, events, report


def offsets(events: list[Event], kinds: frozenset[str] | set[str]) -> list[float]:
    start = events[0].at
    return [e.at - start for e in events if e.kind in kinds]


def looks(events: list[Event]) -> list[tuple[float, dict[str, Any]]]:
    start = events[0].at
    return [(e.at - start, e.data["verdict"]) for e in events if e.kind in LOOK_KINDS]


def plan_text(name: str) -> str:
    return (PLANS / name).read_text()


# ------------------------------------------------------------------------------ the examples


@pytest.mark.parametrize("name", sorted(WORLD_PLANS))
def test_each_world_example_validates_cleanly_and_ends_as_documented(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # what a plan writes where it runs (a flag file) stays there
    loaded = load_plan(str(PLANS / name))
    assert loaded.warnings == []
    phase, events, _ = run(tmp_path, plan_text(name), name)
    assert phase == WORLD_PLANS[name], [e.kind for e in events]


def test_every_local_plan_that_uses_the_world_is_listed_here():
    uses = {
        p.name
        for p in PLANS.glob("local-*.yaml")
        if any(
            key in p.read_text()
            for key in (
                "events:",
                "users:",
                "metrics_delay",
                "custom:",
                "daily_swing",
                "label_delay",
            )
        )
    }
    assert uses == set(WORLD_PLANS)


# ------------------------------------------------------------------ a regression that starts late


def test_a_regression_from_minute_20_is_rolled_back_after_minute_20_and_the_report_names_it(
    tmp_path,
):
    phase, events, report = run(tmp_path, plan_text("local-late-regression.yaml"))
    assert phase == "rolled_back"
    failed = offsets(events, {EventKind.ANALYSIS_FAILED})
    assert len(failed) == 1 and failed[0] > 20 * 60
    # before the regression the candidate was healthy: the first stage passed or ended, none failed
    passed = offsets(events, {EventKind.ANALYSIS_PASSED, EventKind.ANALYSIS_ENDED})
    assert passed and passed[0] < 20 * 60
    facts = [e for e in events if e.kind == EventKind.FACT]
    assert len(facts) == 1
    fact = facts[0].data
    assert fact["source"] == "sandbox" and fact["offset"] == 20 * 60
    assert fact["events"] == [1]
    assert {"subject": "v9", "key": "error_rate", "from": 0.009, "to": 0.05} in fact["changes"]
    # journalled at the first tick at or after the change, before the look that failed
    assert 20 * 60 <= facts[0].at - events[0].at <= failed[0]
    assert "## What changed in the world" in report
    assert "+20m of the rollout" in report and "event 1 starts" in report
    timeline = report.split("## Timeline", 1)[1].split("## What changed", 1)[0]
    world_row = next(line for line in timeline.splitlines() if "world: sandbox" in line)
    failed_row = next(line for line in timeline.splitlines() if "| failed:" in line)
    assert world_row.startswith("| +20m |")
    assert timeline.index(world_row) < timeline.index(failed_row)


def test_without_the_event_the_same_candidate_is_promoted(tmp_path):
    text = plan_text("local-late-regression.yaml")
    head, _ = text.split("  events:", 1)
    phase, events, report = run(tmp_path, head)
    assert phase == "succeeded"
    assert not [e for e in events if e.kind == EventKind.FACT]
    assert "What changed in the world" not in report


def test_an_event_for_a_while_is_two_facts_its_start_and_its_end(tmp_path):
    _, events, report = run(tmp_path, plan_text("local-traffic-gap.yaml"))
    facts = [e.data for e in events if e.kind == EventKind.FACT]
    assert [(f["offset"], f["events"], f["ended"]) for f in facts] == [
        (120.0, [1], []),
        (420.0, [], [1]),
    ]
    assert facts[0]["changes"] == [{"subject": "endpoint", "key": "rps", "from": 100, "to": 0}]
    assert facts[1]["changes"] == [{"subject": "endpoint", "key": "rps", "from": 0, "to": 100}]
    assert "event 1 ends" in report


# ----------------------------------------------------------------------------- traffic gaps


def test_a_five_minute_traffic_gap_holds_then_continues_without_rolling_back(tmp_path):
    phase, events, _ = run(tmp_path, plan_text("local-traffic-gap.yaml"))
    assert phase == "succeeded"
    seen = looks(events)
    in_gap = [(t, v) for t, v in seen if 2 * 60 < t <= 7 * 60]
    assert len(in_gap) == 5
    assert all(v["outcome"] == "hold" for _, v in in_gap), in_gap
    # no new request is counted in the gap: the candidate's count stands still
    counts = {
        json.dumps([g.get("numbers", {}).get("candidate_requests") for g in v["gates"]])
        for _, v in in_gap
    }
    assert len(counts) == 1
    passed = offsets(events, {EventKind.ANALYSIS_PASSED})
    assert passed and passed[0] > 7 * 60
    assert not offsets(events, {EventKind.ANALYSIS_FAILED, EventKind.ROLLBACK_STARTED})


ZERO = """
version: 1
name: no-traffic
target: {provider: local, endpoint: quiet}
candidate: {name: v2}
strategy:
  type: canary
  steps: [{weight: 20}, {analyze: 5m}, {weight: 100}]
analysis:
  interval: 60s
  max_hold: 5m
  on_inconclusive: ON_INCONCLUSIVE
  gates:
    - {name: errors, metric: error_rate, vs_baseline: {max_increase: 25%}}
sandbox:
  seed: 2
  rps: 100
  variants:
    v1: {error_rate: 0.0}
    v2: {error_rate: 0.0}
  events:
    - {at: 0s, rps: 0}
"""


@pytest.mark.parametrize(
    ("policy", "phase", "then"),
    [("rollback", "rolled_back", "rollback"), ("pause", "waiting", "pause")],
)
def test_no_traffic_for_the_whole_rollout_never_passes_and_ends_by_on_inconclusive(
    tmp_path, policy, phase, then
):
    ended, events, _ = run(tmp_path, ZERO.replace("ON_INCONCLUSIVE", policy))
    assert ended == phase
    verdicts = looks(events)
    assert len(verdicts) == 10  # 5m of analysis, then 5m of holding on for data
    assert all(v["outcome"] == "hold" for _, v in verdicts)
    assert not offsets(events, {EventKind.ANALYSIS_PASSED, EventKind.ANALYSIS_ENDED})
    last = events[-1]
    reason = str(last.data.get("reason"))
    assert f"on_inconclusive: {then}" in reason and "undecided" in reason


# --------------------------------------------------------------------------- metrics delay


def test_a_three_minute_metrics_delay_holds_for_no_data_instead_of_judging_empty_windows(
    tmp_path,
):
    phase, events, _ = run(tmp_path, plan_text("local-metrics-delay.yaml"))
    assert phase == "succeeded"
    seen = looks(events)
    first = seen[:3]
    assert [round(t) for t, _ in first] == [60, 120, 180]
    for _, verdict in first:
        assert verdict["outcome"] == "hold"
        assert all("no data" in g["reason"] for g in verdict["gates"]), verdict
    # from the fourth minute on the data has arrived: the looks judge it
    assert "no data" not in json.dumps(seen[3][1])


def test_without_the_delay_the_first_look_already_has_data(tmp_path):
    text = plan_text("local-metrics-delay.yaml").replace("metrics_delay: 3m", "metrics_delay: 0s")
    head, _ = text.split("  events:", 1)
    phase, events, _ = run(tmp_path, head)
    assert phase == "succeeded"
    assert "no data" not in json.dumps(looks(events)[0][1])


# ------------------------------------------------------------------------------ determinism


def _normalized(events: list[Event]) -> list[tuple[str, float, str]]:
    start = events[0].at

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: (round(v - start, 6) if k in ("at", "timeout_at", "since") and v else clean(v))
                for k, v in value.items()
                if k not in ("by", "holder")
            }
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return [
        (e.kind, round(e.at - start, 6), json.dumps(clean(e.data), sort_keys=True)) for e in events
    ]


def test_the_same_seed_gives_the_same_rollout_event_for_event(tmp_path):
    text = plan_text("local-late-regression.yaml")
    _, first, _ = run(tmp_path / "a", text)
    _, second, _ = run(tmp_path / "b", text)
    assert _normalized(first) == _normalized(second)
    # and in another process (no cache, another hash seed)
    script = (
        "import json, sys; from pathlib import Path;"
        "from mlrollout.engine.runner import Runner;"
        "from mlrollout.plan.loader import load_plan;"
        "from mlrollout.state.sqlite import SqliteStateStore;"
        "s = SqliteStateStore(Path(sys.argv[2]));"
        "r = Runner(s); rec = r.create(load_plan(sys.argv[1])); r.drive(rec.id);"
        "print(json.dumps([[e.kind, e.at, e.data] for e in s.events(rec.id)]))"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(PLANS / "local-late-regression.yaml"),
            str(tmp_path / "c.db"),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"},
    )
    third = [Event("x", i, at, k, d) for i, (k, at, d) in enumerate(json.loads(out.stdout))]
    assert _normalized(third) == _normalized(first)


def test_another_seed_gives_other_numbers(tmp_path):
    text = plan_text("local-late-regression.yaml")
    _, first, _ = run(tmp_path / "a", text)
    _, other, _ = run(tmp_path / "b", text.replace("seed: 11", "seed: 12"))
    assert _normalized(first) != _normalized(other)


# ---------------------------------------------------------------------- facts across a kill


def test_a_fact_is_journalled_once_when_the_runner_is_killed_and_resumed(tmp_path):
    store = SqliteStateStore(tmp_path / "state.db")
    loaded = parse_plan(plan_text("local-late-regression.yaml"), "plan.yaml")
    runner = Runner(store)
    record = runner.create(loaded)
    # stop at every few ticks (a new runner each time, as after a kill), until it ends
    for _ in range(400):
        outcome = Runner(store).drive(record.id, max_ticks=3)
        if outcome.phase.terminal:
            break
    events = store.events(record.id)
    assert outcome.phase.value == "rolled_back"
    assert [e.kind for e in events].count(EventKind.FACT) == 1


# ------------------------------------------------------------- one endpoint, several rollouts


def test_a_later_rollout_on_the_same_endpoint_counts_its_events_from_its_own_start(tmp_path):
    store = SqliteStateStore(tmp_path / "state.db")
    runner = Runner(store)
    first = runner.create(load_plan(str(PLANS / "local-canary-bad.yaml")))
    assert runner.drive(first.id).phase.value == "rolled_back"  # v6 serves again
    second = runner.create(load_plan(str(PLANS / "local-late-regression.yaml")))
    assert runner.drive(second.id).phase.value == "rolled_back"
    events = store.events(second.id)
    prepared = next(e.at for e in events if e.kind == EventKind.PREPARE_APPLIED)
    [fact] = [e for e in events if e.kind == EventKind.FACT]
    assert fact.data["at"] == prepared + 20 * 60
    assert fact.at >= fact.data["at"]  # journalled when it has happened, not before


def test_a_baseline_the_plan_does_not_simulate_is_refused_before_any_traffic_change(tmp_path):
    store = SqliteStateStore(tmp_path / "state.db")
    runner = Runner(store)
    good = runner.create(load_plan(str(PLANS / "local-canary-good.yaml")))
    assert runner.drive(good.id).phase.value == "succeeded"  # v8 now serves churn-scoring
    late = runner.create(load_plan(str(PLANS / "local-late-regression.yaml")))
    with pytest.raises(ProviderError, match="'v8', which this plan's sandbox does not describe"):
        runner.drive(late.id)
    # a start refused before any change ends the rollout: it does not hold the endpoint
    assert store.get_rollout(late.id).phase == "aborted"
    kinds = [e.kind for e in store.events(late.id)]
    assert EventKind.SET_TRAFFIC_REQUESTED not in kinds
    assert store.get_value("sandbox", "churn-scoring")["variants"].keys() == {"v8"}
