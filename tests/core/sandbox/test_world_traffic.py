"""The sandbox's world in its traffic: the daily profile, events, the metrics delay, business
and quality signals, sticky users, and the plan's traffic grid."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from typing import Any

import pytest
from sandbox_world import FakeStore

from mlrollout.clock import VirtualClock
from mlrollout.contracts import CustomValue, MetricsQuery, Window
from mlrollout.plan.model import Candidate, Gate, Plan, Sandbox
from mlrollout.sandbox.endpoint import LocalEndpoint, LocalMetrics
from mlrollout.sandbox.traffic import History, Records, TrafficModel, grid_seconds

T0 = 1_700_000_000.0
MIN, HOUR, DAY = 60.0, 3600.0, 86400.0
HALF = [(T0, {"v6": 50.0, "v7": 50.0})]


def sandbox(**changes: Any) -> Sandbox:
    data: dict[str, Any] = {
        "seed": 7,
        "rps": 100,
        "variants": {
            "v6": {"error_rate": 0.01, "latency_p50": "40ms", "latency_p99": "120ms"},
            "v7": {"error_rate": 0.01, "latency_p50": "42ms", "latency_p99": "130ms"},
        },
    }
    data.update(changes)
    return Sandbox.model_validate(data)


def within(observed: float, expected: float, sd: float, k: float = 4.5) -> bool:
    return abs(observed - expected) <= k * sd


def requests(
    model: TrafficModel, variant: str, start: float, end: float, history: History = HALF
) -> int:
    w = model.window(variant, start, end, history)
    assert w.requests is not None
    return w.requests


# --------------------------------------------------------------------------------- determinism

BUSINESS = {
    "v6": {"error_rate": 0.01, "accuracy": 0.91, "feedback": 0.62, "custom": {"conversion": 0.03}},
    "v7": {"error_rate": 0.02, "accuracy": 0.93, "feedback": 0.64, "custom": {"conversion": 0.04}},
}
EVENTS = [
    {"at": "12m", "variant": "v7", "error_rate": 0.05},
    {"at": "20m", "rps": 0, "for": "5m"},
    {"at": "30m", "variant": "v6", "custom": {"signup": 0.2}},
]


def summary(records: Records | None) -> list[Any]:
    assert records is not None
    confusion = None if records.confusion is None else vars(records.confusion)
    return [
        records.requests,
        records.errors,
        records.latency,
        {k: list(v) for k, v in records.custom.items()},
        confusion,
        None if records.feedback is None else list(records.feedback),
    ]


SCRIPT = """
import json, sys
from mlrollout.plan.model import Sandbox
from mlrollout.sandbox.traffic import TrafficModel
spec = json.loads(sys.argv[1])
model = TrafficModel(Sandbox.model_validate(spec["sandbox"]), spec["t0"], spec["grid"])
out = []
for variant, start, end in spec["windows"]:
    r = model.records(variant, start, end, [(spec["t0"], {"v6": 50.0, "v7": 50.0})])
    c = None if r.confusion is None else vars(r.confusion)
    f = None if r.feedback is None else list(r.feedback)
    out.append([r.requests, r.errors, r.latency, {k: list(v) for k, v in r.custom.items()}, c, f])
print(json.dumps(out))
"""


def test_same_seed_gives_the_same_world_in_a_new_process_in_any_order() -> None:
    spec = {"seed": 7, "rps": {"base": 100, "daily_swing": 3}, "variants": BUSINESS}
    spec["events"] = EVENTS
    windows = [("v7", T0 + 600, T0 + 2400), ("v6", T0, T0 + 3600), ("v7", T0, T0 + 60)]
    model = TrafficModel(Sandbox.model_validate(spec), T0, 60)
    here = [summary(model.records(v, s, e, HALF)) for v, s, e in reversed(windows)][::-1]
    again = TrafficModel(Sandbox.model_validate(spec), T0, 60)
    assert [summary(again.records(v, s, e, HALF)) for v, s, e in windows] == here
    arg = json.dumps({"sandbox": spec, "t0": T0, "grid": 60, "windows": windows})
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, arg], capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == here
    other = TrafficModel(Sandbox.model_validate({**spec, "seed": 8}), T0, 60)
    assert summary(other.records("v7", T0 + 600, T0 + 2400, HALF)) != here[0]


def test_windows_on_the_grid_add_up_records_and_all() -> None:
    box = sandbox(variants=BUSINESS, events=EVENTS, rps={"base": 100, "daily_swing": 2})
    grid = 90.0
    model = TrafficModel(box, T0, grid)
    whole = model.records("v7", T0, T0 + 40 * grid, HALF)
    parts = [
        TrafficModel(box, T0, grid).records("v7", T0 + a * grid, T0 + b * grid, HALF)
        for a, b in ((0, 7), (7, 13), (13, 40))
    ]
    assert whole is not None and all(p is not None for p in parts)
    total = Records()
    for part in parts:
        assert part is not None
        total.requests += part.requests
        total.errors += part.errors
        total.latency = [a + b for a, b in zip(total.latency, part.latency, strict=True)]
        for name, (e, r) in part.custom.items():
            old = total.custom.get(name, (0, 0))
            total.custom[name] = (old[0] + e, old[1] + r)
    assert (total.requests, total.errors, total.latency) == (
        whole.requests,
        whole.errors,
        whole.latency,
    )
    assert total.custom == whole.custom
    assert sum(whole.latency) == whole.requests
    assert model.buckets(T0, T0 + 40 * grid) == range(40)
    assert model.buckets(T0 + 1, T0 + 91) == range(1, 2)  # by their start, on the 90 s grid


# --------------------------------------------------------------------------------- the world


def test_the_daily_profile_has_fewer_requests_at_night_in_the_right_ratio() -> None:
    box = sandbox(rps={"base": 100, "daily_swing": 3, "peak_at": "6h"})
    model = TrafficModel(box, T0, 600)
    peak = requests(model, "v6", T0 + 5 * HOUR, T0 + 7 * HOUR)
    night = requests(model, "v6", T0 + 17 * HOUR, T0 + 19 * HOUR)
    want_peak = model.world.requests(5 * HOUR, 7 * HOUR) * 0.5
    want_night = model.world.requests(17 * HOUR, 19 * HOUR) * 0.5
    assert within(peak, want_peak, math.sqrt(want_peak))
    assert within(night, want_night, math.sqrt(want_night))
    assert want_peak / want_night == pytest.approx(2.94, abs=0.02)  # x3 at the instants
    assert peak / night == pytest.approx(want_peak / want_night, rel=0.03)
    # A whole day has its average.
    day = requests(model, "v6", T0, T0 + DAY)
    assert within(day, 100 * DAY * 0.5, math.sqrt(100 * DAY * 0.5))


def test_an_rps_0_event_stops_traffic_in_its_span_only() -> None:
    model = TrafficModel(sandbox(events=[{"at": "20m", "rps": 0, "for": "5m"}]), T0, 60)
    for k in range(20, 25):
        assert requests(model, "v7", T0 + k * MIN, T0 + (k + 1) * MIN) == 0
    assert requests(model, "v7", T0 + 19 * MIN, T0 + 20 * MIN) > 2000
    assert requests(model, "v7", T0 + 25 * MIN, T0 + 26 * MIN) > 2000
    gap = model.window("v7", T0 + 20 * MIN, T0 + 25 * MIN, HALF)
    assert gap.requests == 0 and gap.errors == 0  # data that says nothing happened


def test_an_error_rate_event_changes_only_the_buckets_from_its_start() -> None:
    late = sandbox(events=[{"at": "12m", "variant": "v7", "error_rate": 0.05}])
    before, after = TrafficModel(sandbox(), T0, 60), TrafficModel(late, T0, 60)
    for k in range(30):
        a = before.window("v7", T0 + k * MIN, T0 + (k + 1) * MIN, HALF)
        b = after.window("v7", T0 + k * MIN, T0 + (k + 1) * MIN, HALF)
        assert a.requests == b.requests  # the same draws up to the errors
        if k < 12:
            assert a == b
    assert before.window("v6", T0, T0 + 30 * MIN, HALF) == after.window(
        "v6", T0, T0 + 30 * MIN, HALF
    )
    w = after.window("v7", T0 + 12 * MIN, T0 + 2 * HOUR, HALF)
    assert w.requests is not None and w.errors is not None
    assert within(w.errors / w.requests, 0.05, math.sqrt(0.05 * 0.95 / w.requests))


def test_business_and_quality_signals_follow_their_rates() -> None:
    model = TrafficModel(sandbox(variants=BUSINESS), T0, 60)
    for variant, spec in BUSINESS.items():
        r = model.records(variant, T0, T0 + 2 * HOUR, HALF)
        assert r is not None and r.confusion is not None and r.feedback is not None
        n = r.requests
        events, counted = r.custom["conversion"]
        rate = spec["custom"]["conversion"]  # type: ignore[index]
        assert counted == n and within(events / n, rate, math.sqrt(rate * (1 - rate) / n))
        positive, rated = r.feedback
        fb = float(spec["feedback"])  # type: ignore[arg-type]
        assert rated == r.responses and within(positive / rated, fb, math.sqrt(fb / rated))
        c = r.confusion
        acc = float(spec["accuracy"])  # type: ignore[arg-type]
        assert c.labelled == r.responses
        assert within(c.correct / c.labelled, acc, math.sqrt(acc * (1 - acc) / c.labelled))
        assert within((c.tp + c.fn) / c.labelled, 0.5, math.sqrt(0.25 / c.labelled))
    plain = TrafficModel(sandbox(), T0, 60).records("v6", T0, T0 + HOUR, HALF)
    assert plain is not None
    assert (plain.custom, plain.confusion, plain.feedback) == ({}, None, None)


def test_a_custom_metric_an_event_adds_counts_only_its_buckets() -> None:
    box = sandbox(variants=BUSINESS, events=[EVENTS[2]])
    model = TrafficModel(box, T0, 60)
    r = model.records("v6", T0, T0 + HOUR, HALF)
    later = model.records("v6", T0 + 30 * MIN, T0 + HOUR, HALF)
    assert r is not None and later is not None
    assert r.custom["signup"][1] == later.requests < r.requests
    assert within(r.custom["signup"][0] / later.requests, 0.2, math.sqrt(0.16 / later.requests))


# ------------------------------------------------------------------------------------- users


def test_requests_follow_the_sticky_users_assigned_to_a_variant() -> None:
    few = sandbox(users={"count": 3})
    model = TrafficModel(few, T0, 60)
    assert model.weights("v7", T0, T0 + 120, HALF) == pytest.approx([100 / 3, 100 / 3])
    w = requests(model, "v7", T0, T0 + HOUR)
    assert within(w, 100 * HOUR / 3, math.sqrt(100 * HOUR / 3))
    seven = TrafficModel(sandbox(users={"count": 7}), T0, 60)
    ten = [(T0, {"v6": 90.0, "v7": 10.0})]
    assert requests(seven, "v7", T0, T0 + HOUR, ten) == 0  # 10 % of 7 users is nobody
    many = TrafficModel(sandbox(users={"count": 50_000}), T0, 60)
    assert many.weights("v7", T0, T0 + 60, ten) == [10.0]
    # The endpoint record's order says which slice is whose.
    assert model.weights("v6", T0, T0 + 60, HALF, order=["v7", "v6"]) == pytest.approx([100 / 3])


# ------------------------------------------------------------------------------------- costs


def test_cost_is_counted_in_buckets_not_in_requests_or_users() -> None:
    generated = []
    for rps, users in ((1.0, None), (1e6, None), (1e6, {"count": 100_000_000})):
        model = TrafficModel(sandbox(rps=rps, users=users, variants=BUSINESS), T0, HOUR)
        for look in range(1, 7 * 24 + 1):
            model.records("v7", T0, T0 + look * HOUR, HALF)
            model.records("v6", T0, T0 + look * HOUR, HALF)
        generated.append(model.generated)
    assert generated == [2 * 168] * 3  # a week of hourly looks: one bucket per hour and variant


# -------------------------------------------------------------------------------------- grid

BASE: dict[str, Any] = {
    "version": 1,
    "name": "grid",
    "target": {"provider": "local", "endpoint": "shop"},
    "candidate": {"name": "v7"},
    "strategy": {"type": "canary", "steps": [{"weight": 10}, {"analyze": "5m"}]},
    "sandbox": {"variants": {"v6": {}, "v7": {}}},
}


def plan(
    steps: list[Any] | None = None, strategy: Any = None, sandbox_: Any = None, **analysis: Any
) -> Plan:
    data = copy.deepcopy(BASE)
    if steps is not None:
        data["strategy"]["steps"] = steps
    if strategy is not None:
        data["strategy"] = strategy
    if sandbox_ is not None:
        data["sandbox"].update(sandbox_)
    data["analysis"] = analysis
    return Plan.model_validate(data)


@pytest.mark.parametrize(
    ("the_plan", "grid"),
    [
        (lambda: plan(interval="60s"), 60.0),
        (lambda: plan([{"weight": 50}, {"analyze": "7d"}], interval="1h"), 3600.0),
        (lambda: plan(interval="60s", delay="90s"), 30.0),
        (lambda: plan(interval="60s", delay="0s"), 60.0),
        (
            lambda: plan([{"weight": 5}, {"analyze": {"min": "3m", "max": "9m"}}], interval="90s"),
            90,
        ),
        (lambda: plan([{"weight": 5}, {"pause": "7s"}, {"analyze": "5m"}], interval="60s"), 1.0),
        (lambda: plan(strategy={"type": "linear", "step": 10, "every": "5m"}, interval="2m"), 60),
        (lambda: plan(interval="10m"), 300.0),  # never more than a step's window
        (lambda: plan(interval="1s"), 1.0),
        (lambda: plan(sandbox_={"events": [{"at": "12m", "rps": 0, "for": "45s"}]}), 15.0),
        (lambda: plan(sandbox_={"events": [{"at": "-5m", "rps": 0}, {"at": "0s", "rps": 5}]}), 60),
        (
            lambda: plan(
                [{"weight": 50}, {"analyze": "7d"}], interval="1h", sandbox_={"speed": 100}
            ),
            10,
        ),
        (lambda: plan([{"weight": 5}, {"analyze": "7m"}], interval="7s", sandbox_={"speed": 9}), 7),
    ],
)
def test_grid_seconds(the_plan: Any, grid: float) -> None:
    assert grid_seconds(the_plan()) == grid


# ----------------------------------------------------------------------- through the endpoint


def endpoint(box: Sandbox, grid: float = 60.0) -> tuple[VirtualClock, LocalEndpoint, LocalMetrics]:
    clock = VirtualClock(T0)
    ep = LocalEndpoint("shop", box, FakeStore(), clock, grid=grid)
    ep.describe()
    clock.advance(30)  # the rollout starts after the endpoint was created
    ep.prepare(Candidate(name="v7"), "v6")
    ep.set_traffic({"v6": 50, "v7": 50})
    return clock, ep, LocalMetrics(ep)


def look(metrics: LocalMetrics, start: float, end: float, *gates: Gate) -> dict[str, Window]:
    return metrics.query(MetricsQuery(start, end, ("v7", "v6"), gates, 60))


def test_a_metrics_delay_hides_the_first_looks_and_never_shrinks_a_window() -> None:
    clock, _, metrics = endpoint(sandbox(metrics_delay="3m"))
    started = T0 + 30
    for _ in range(3):
        clock.advance(60)
        assert look(metrics, started, clock.now()) == {"v7": Window(), "v6": Window()}
    clock.advance(60)  # 4 minutes in: the first minute is published
    first = look(metrics, started, clock.now())["v7"]
    assert first == look(metrics, started, started + 60)["v7"] and first.requests
    # The delay grows to 10 minutes at 10m: published data stays, nothing new for a while.
    clock, _ep, metrics = endpoint(sandbox(events=[{"at": "10m", "metrics_delay": "10m"}]))
    seen, counts = 0, []
    for _ in range(40):
        clock.advance(60)
        w = look(metrics, started, clock.now())["v7"]
        assert w.requests is not None and w.requests >= seen
        seen = w.requests
        counts.append(seen)
    assert counts[9] == counts[10] == counts[19] < counts[20] < counts[39]


def test_custom_gates_read_the_variants_signals_by_gate_name() -> None:
    box = sandbox(variants={**BUSINESS, "v7": {"custom": {"conversion": 0.04}}})
    clock, _ep, metrics = endpoint(box)
    clock.advance(HOUR)
    gates = (
        Gate(name="conversion", metric="custom"),
        Gate(name="buys", metric="custom", query={"metric": "conversion"}),
        Gate(name="thumbs", metric="custom", query={"metric": "feedback"}),
        Gate(name="right", metric="custom", query={"metric": "accuracy"}),
        Gate(name="nothing", metric="custom", query={"metric": "refunds"}),
        Gate(name="errors", metric="error_rate", max="5%"),
    )
    windows = look(metrics, T0 + 30, clock.now(), *gates)
    model = metrics.model(T0 + 30)
    records = {
        v: model.records(v, T0 + 30, clock.now(), [(T0 + 30, {"v6": 50.0, "v7": 50.0})])
        for v in ("v6", "v7")
    }
    v6, v7 = records["v6"], records["v7"]
    assert v6 is not None and v6.confusion is not None and v6.feedback is not None
    assert v7 is not None
    assert windows["v6"].custom == {
        "conversion": CustomValue(*v6.custom["conversion"]),
        "buys": CustomValue(*v6.custom["conversion"]),
        "thumbs": CustomValue(*v6.feedback),
        "right": CustomValue(v6.confusion.correct, v6.confusion.labelled),
    }
    assert windows["v7"].custom == {
        "conversion": CustomValue(*v7.custom["conversion"]),
        "buys": CustomValue(*v7.custom["conversion"]),
    }  # v7 simulates no feedback or labels: those gates have no data for it
    assert windows["v7"].custom["buys"].count == windows["v7"].requests


def test_facts_are_the_worlds_changes_at_their_absolute_instants() -> None:
    box = sandbox(events=EVENTS[:2])
    clock = VirtualClock(T0)
    ep = LocalEndpoint("shop", box, FakeStore(), clock)
    ep.describe()
    assert ep.facts(T0 + DAY) == []  # not started
    clock.advance(30)
    ep.prepare(Candidate(name="v7"), "v6")
    clock.advance(600)
    ep.prepare(Candidate(name="v7"), "v6")  # a no-op keeps the start
    record = ep.record()
    assert record is not None and record["started"] == T0 + 30
    assert ep.facts(T0 + 30 + 12 * MIN - 1) == []
    (fact,) = ep.facts(T0 + 30 + 12 * MIN)
    assert fact["at"] == T0 + 30 + 12 * MIN and fact["offset"] == 12 * MIN
    assert fact["changes"] == [{"subject": "v7", "key": "error_rate", "from": 0.01, "to": 0.05}]
    facts = ep.facts(T0 + DAY)
    assert [f["at"] - (T0 + 30) for f in facts] == [12 * MIN, 20 * MIN, 25 * MIN]
    assert facts == ep.facts(T0 + 2 * DAY)  # the same list on every call


def test_an_old_record_without_a_start_counts_from_its_origin() -> None:
    clock, ep, _metrics = endpoint(sandbox())
    record = ep.record()
    assert record is not None
    del record["started"]
    ep.store.put_value("sandbox", "shop", record, lease=None)
    clock.advance(600)
    fresh = LocalMetrics(ep)
    fresh.query(MetricsQuery(T0, clock.now(), ("v6",), (), 60))
    assert fresh._model is not None and fresh._model.origin == T0
    assert ep.facts(clock.now()) == []


@pytest.mark.parametrize("bucket", [10.0, 60.0])
def test_bursty_errors_are_negative_binomial_per_ten_seconds(bucket: float) -> None:
    """With ``error_bursts: k`` the errors of each 10 s have variance mu + mu^2/k (over-dispersed)
    where independent requests give about mu; the mean stays the error rate."""
    variants = {"v6": {"error_rate": 0.02, "error_bursts": 2}, "v7": {"error_rate": 0.02}}
    model = TrafficModel(sandbox(rps=1000, variants=variants), T0, bucket)
    buckets = 600
    full = [(T0, {"v6": 100.0, "v7": 100.0})]  # both at full traffic, for the comparison
    per = {
        v: [
            model.window(v, T0 + i * bucket, T0 + (i + 1) * bucket, full).errors or 0
            for i in range(buckets)
        ]
        for v in ("v6", "v7")
    }
    mu = 1000 * bucket * 0.02
    for v, shape in (("v6", 2 * bucket / 10), ("v7", math.inf)):
        mean = sum(per[v]) / buckets
        variance = sum((x - mean) ** 2 for x in per[v]) / (buckets - 1)
        expected = mu + (mu * mu / shape if math.isfinite(shape) else 0.0)
        assert mean == pytest.approx(mu, rel=0.12 if v == "v6" else 0.02)
        assert variance == pytest.approx(expected, rel=0.3), (v, variance, expected)
