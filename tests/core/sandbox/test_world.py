"""The sandbox's world over time (mlrollout.sandbox.world) and what `plan validate` says about
its keys: events, traffic profiles, metrics delay, custom metrics, users."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mlrollout.errors import PlanError
from mlrollout.plan.loader import parse_plan
from mlrollout.plan.model import Sandbox
from mlrollout.sandbox.world import World

PLANS = Path(__file__).parents[3] / "plans"


def world(**sandbox: object) -> World:
    data = {"variants": {"v1": {"error_rate": 0.01}, "v2": {"error_rate": 0.01}}, **sandbox}
    return World(Sandbox.model_validate(data))


# ----------------------------------------------------------------------------- effective values


def test_an_event_changes_its_variant_from_at_for_its_duration_only():
    w = world(events=[{"at": "12m", "for": "10m", "variant": "v2", "error_rate": "5%"}])
    assert w.behaviour("v2", 719).error_rate == 0.01
    assert w.behaviour("v2", 720).error_rate == 0.05
    assert w.behaviour("v2", 1319).error_rate == 0.05
    assert w.behaviour("v2", 1320).error_rate == 0.01
    assert w.behaviour("v1", 800).error_rate == 0.01  # the other variant is untouched


def test_overlapping_events_the_latest_start_wins_and_the_earlier_resumes_after_it():
    w = world(
        events=[
            {"at": "10m", "variant": "v2", "error_rate": 0.02},
            {"at": "20m", "for": "5m", "variant": "v2", "error_rate": 0.08},
        ]
    )
    assert [w.behaviour("v2", t * 60).error_rate for t in (5, 15, 22, 26)] == [
        0.01,
        0.02,
        0.08,
        0.02,
    ]


def test_custom_metrics_change_one_name_at_a_time():
    w = world(
        variants={"v1": {}, "v2": {"custom": {"conversion": 0.03, "clicks": 0.2}}},
        events=[{"at": "1m", "variant": "v2", "custom": {"conversion": 0.01}}],
    )
    assert w.behaviour("v2", 120).custom == {"conversion": 0.01, "clicks": 0.2}
    assert w.behaviour("v2", 0).custom == {"conversion": 0.03, "clicks": 0.2}


# ---------------------------------------------------------------------------------- traffic


def test_a_daily_profile_swings_by_its_factor_and_averages_its_base():
    w = world(rps={"base": 100, "daily_swing": 3, "peak_at": "6h"})
    peak, trough = w.rate(6 * 3600), w.rate(18 * 3600)
    assert peak == pytest.approx(150) and trough == pytest.approx(50)
    assert peak / trough == pytest.approx(3)
    assert w.requests(0, 86400) == pytest.approx(100 * 86400)
    # the integral is exact: it agrees with a fine sum
    fine = sum(w.rate(t + 0.5) for t in range(3600, 7200))
    assert w.requests(3600, 7200) == pytest.approx(fine, rel=1e-6)


def test_an_rps_event_stops_traffic_for_its_span():
    w = world(rps=50, events=[{"at": "20m", "rps": 0, "for": "5m"}])
    assert w.requests(1200, 1500) == 0
    assert w.requests(1100, 1600) == pytest.approx(50 * 200)


# ---------------------------------------------------------------------------- metrics delay


def test_the_metrics_edge_lags_by_the_delay_and_never_moves_back():
    w = world(metrics_delay="1m", events=[{"at": "10m", "metrics_delay": "5m", "for": "10m"}])
    assert w.visible_until(300) == 240
    edges = [w.visible_until(t) for t in range(0, 3600, 10)]
    assert edges == sorted(edges)  # published data stays published
    assert w.visible_until(600) == 540
    assert w.visible_until(700) == 540  # the pipeline fell behind: nothing new yet
    assert w.visible_until(900) == 600  # catching up at a 5m lag
    assert w.visible_until(1200) == 1140  # back to 1m: the backlog arrives at once


# -------------------------------------------------------------------------------------- facts


def test_facts_name_what_changed_and_which_event_caused_it():
    w = world(
        rps=100,
        events=[
            {"at": "12m", "variant": "v2", "error_rate": 0.05},
            {"at": "20m", "rps": 0, "for": "5m"},
        ],
    )
    facts = w.facts()
    assert [(f.at, f.events, f.ended) for f in facts] == [
        (720, (0,), ()),
        (1200, (1,), ()),
        (1500, (), (1,)),
    ]
    assert facts[0].text() == "v2: error_rate 1% → 5% (event 1 starts)"
    assert facts[1].text() == "rps 100 req/s → 0 req/s (event 2 starts)"
    assert facts[2].text() == "rps 0 req/s → 100 req/s (event 2 ends)"
    assert [f.at for f in w.facts_until(1200)] == [720, 1200]


def test_an_event_that_changes_nothing_is_no_fact():
    w = world(events=[{"at": "5m", "variant": "v2", "error_rate": 0.01}])
    assert w.facts() == []


# --------------------------------------------------------------------------------- validation

PLAN = """
version: 1
name: world
target: {provider: local, endpoint: ep}
candidate: {name: v2}
strategy:
  type: canary
  steps: [{weight: 10}, {analyze: 10m}, {weight: 100}]
analysis:
  interval: 60s
  gates:
    - {name: errors, metric: error_rate, vs_baseline: {max_increase: 25%}}
GATES
sandbox:
  seed: 1
  rps: RPS
  variants:
    v1: {error_rate: 0.01, custom: {conversion: 0.03}}
    v2: {error_rate: 0.01, custom: {conversion: 0.03}}
  events:
EVENTS
"""


def load(
    events: str = "    - {at: 5m, variant: v2, error_rate: 5%}",
    *,
    gates: str = "",
    rps: str = "100",
):
    text = PLAN.replace("EVENTS", events).replace("GATES", gates).replace("RPS", rps)
    return parse_plan(text, "plan.yaml")


def problems(**kw: str) -> str:
    with pytest.raises(PlanError) as caught:
        load(**kw)
    return str(caught.value)


def test_a_valid_world_loads_without_warnings():
    assert load().warnings == []


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ("    - {at: 5m, variant: v3, error_rate: 5%}", "variant 'v3' is not defined"),
        ("    - {at: 5m, varaint: v2, error_rate: 5%}", "did you mean 'variant'?"),
        ("    - {at: 5m, variant: v2, error_rate: 5}", "between 0 and 1"),
        ("    - {at: 5m, variant: v2, accuracy: 1.5}", "between 0 and 1"),
        ("    - {at: 5m, error_rate: 5%}", "names the variant it changes"),
        ("    - {at: 5m, variant: v2}", "changes none of its keys"),
        ("    - {at: 5m}", "an event changes something"),
        ("    - {at: 5, rps: 0}", "a duration with a unit"),
        ("    - {at: 5m, rps: 0, for: 0s}", "positive"),
        ("    - {at: 5m, metrics_delay: 3}", "a duration with a unit"),
        ("    - {at: 5m, variant: v2, custom: {conversoin: 0.1}}", "did you mean 'conversion'?"),
        ("    - {at: 5m, variant: v2, latency_p99: 1ms}", "below its latency_p50"),
        ("    - {at: 5m, rps: -1}", "greater than or equal to 0"),
        ("    - {at: 5m, rps: {base: 10, daily_swing: 0.5}}", "greater than or equal to 1"),
    ],
)
def test_bad_events_are_refused_with_the_line_and_the_key(events, expected):
    message = problems(events=events)
    assert expected in message
    assert "plan.yaml:2" in message  # the events are on lines 20+ of the plan


def test_a_custom_gate_must_read_a_metric_the_sandbox_simulates():
    gate = "    - {name: conv, metric: custom, query: {metric: convertion}, min: 0.01}"
    assert "did you mean 'conversion'?" in problems(gates=gate)
    gate = "    - {name: thumbs, metric: custom, query: {metric: feedback}, min: 0.5}"
    assert "no sandbox variant simulates feedback" in problems(gates=gate)
    gate = "    - {name: conv, metric: custom, query: {namespace: X, metric: conversion}, min: 0}"
    assert "reads only query.metric" in problems(gates=gate)
    gate = "    - {name: conversion, metric: custom, direction: decrease, min: 0.01}"
    assert "a custom gate needs a query" in problems(gates=gate)


def test_events_that_never_happen_or_start_before_the_rollout_are_warnings():
    loaded = load("    - {at: 3h, variant: v2, error_rate: 5%}\n    - {at: -5m, rps: 50}")
    messages = [str(w) for w in loaded.warnings]
    assert any("after the rollout's worst case" in m and "never happens" in m for m in messages)
    assert any("before the rollout starts" in m for m in messages)
    assert all("plan.yaml:" in m for m in messages)


def test_no_traffic_at_all_is_allowed_and_warned_about():
    loaded = load("    - {at: 1m, metrics_delay: 1m}", rps="0")
    assert any("no traffic at all" in str(w) for w in loaded.warnings)
    assert not math.isnan(loaded.plan.sandbox.metrics_delay)


def test_users_need_distinct_values_and_a_positive_count():
    users = "  users: {count: 0}\n"
    text = PLAN.replace("EVENTS", "    - {at: 5m, rps: 10}").replace("GATES", "")
    text = text.replace("RPS", "100").replace("  events:\n", users + "  events:\n")
    with pytest.raises(PlanError, match="greater than or equal to 1"):
        parse_plan(text, "plan.yaml")
    users = "  users: {count: 10, attributes: {region: [eu, eu]}}\n"
    text2 = text.replace("  users: {count: 0}\n", users)
    with pytest.raises(PlanError, match="lists a value twice"):
        parse_plan(text2, "plan.yaml")


def test_custom_gates_read_by_another_metrics_source_are_that_sources_business():
    gate = "    - {name: conv, metric: custom, query: {promql: 'sum(x)'}, min: 0.01}"
    text = PLAN.replace("EVENTS", "    - {at: 5m, rps: 10}").replace("GATES", gate)
    text = text.replace("RPS", "100").replace(
        "analysis:\n",
        "analysis:\n  source: {prometheus: {url: 'http://127.0.0.1:9090', "
        "queries: {requests: 'sum(increase(r[{window}])) by (variant)'}}}\n",
    )
    assert parse_plan(text, "plan.yaml").plan.analysis.gates[1].name == "conv"
