"""Mirrored (shadow) traffic in the sandbox: a mirrored variant gets a copy of ``percent`` % of
the live requests, answered with its own behaviour and published as its metrics; the live
variants' numbers, the weight history and the users are untouched by it."""

from __future__ import annotations

import math
from typing import Any

import pytest
from sandbox_world import FakeStore

from mlrollout.clock import VirtualClock
from mlrollout.contracts import MetricsQuery, Window
from mlrollout.errors import ProviderError
from mlrollout.plan.model import Candidate, Gate, Sandbox
from mlrollout.sandbox.endpoint import LocalEndpoint, LocalMetrics
from mlrollout.sandbox.traffic import TrafficModel

T0 = 1_700_000_000.0
MIN = 60.0
BLUE = [(T0, {"v6": 100.0})]


def sandbox(**variants: dict[str, Any]) -> Sandbox:
    return Sandbox.model_validate(
        {
            "seed": 7,
            "rps": 100,
            "variants": variants
            or {
                "v6": {"error_rate": 0.01, "latency_p50": "40ms", "latency_p99": "120ms"},
                "v7": {"error_rate": 0.05, "latency_p50": "80ms", "latency_p99": "400ms"},
            },
        }
    )


def within(observed: float, expected: float, sd: float, k: float = 4.5) -> bool:
    return abs(observed - expected) <= k * sd


def test_a_mirror_copies_its_percent_of_live_requests_with_its_own_behaviour() -> None:
    model = TrafficModel(sandbox(), T0, 60)
    end = T0 + 60 * MIN
    mirror = [(T0, {"v7": 50.0})]
    shadow = model.records("v7", T0, end, BLUE, mirror=mirror)
    assert shadow is not None
    n = 100 * 3600 * 0.5
    assert within(shadow.requests, n, math.sqrt(n))
    assert shadow.mirrored == shadow.requests and shadow.live == 0
    assert within(shadow.errors, 0.05 * shadow.requests, math.sqrt(0.05 * shadow.requests))
    window = shadow.window()
    assert window.latency is not None and 0.07 < window.latency.quantile(0.5) < 0.09
    # The live variant's numbers are the same with or without the mirror.
    live = model.records("v6", T0, end, BLUE, mirror=mirror)
    alone = TrafficModel(sandbox(), T0, 60).records("v6", T0, end, BLUE)
    assert live is not None and alone is not None
    assert (live.requests, live.errors, live.latency, live.mirrored) == (
        alone.requests,
        alone.errors,
        alone.latency,
        0,
    )
    # Without a mirror the variant serves nothing (it takes no live weight).
    assert model.window("v7", T0, end, BLUE).requests == 0


def test_a_mirror_follows_its_history_and_the_worlds_events() -> None:
    box = Sandbox.model_validate(
        {
            "seed": 3,
            "rps": 100,
            "variants": {"v6": {}, "v7": {"error_rate": 0.0}},
            "events": [
                {"at": "20m", "variant": "v7", "error_rate": 0.5},
                {"at": "40m", "rps": 0, "for": "10m"},
            ],
        }
    )
    model = TrafficModel(box, T0, 60)
    mirror = [(T0 + 10 * MIN, {"v7": 100.0}), (T0 + 30 * MIN + 30, {})]

    def look(start: float, end: float) -> tuple[int, int]:
        r = model.records("v7", T0 + start * MIN, T0 + end * MIN, BLUE, mirror=mirror)
        assert r is not None
        return r.requests, r.errors

    assert look(0, 10) == (0, 0)  # before the mirror started
    requests, errors = look(10, 20)
    assert within(requests, 60_000, math.sqrt(60_000)) and errors == 0
    requests, errors = look(20, 30)
    assert within(errors, requests / 2, math.sqrt(requests / 4))  # the event applies to it
    requests, _ = look(30, 31)  # the mirror stopped half-way through the minute
    assert within(requests, 3000, math.sqrt(3000))
    assert look(31, 60) == (0, 0)
    # Cumulative windows (successive looks) give what one window over the span gives.
    parts = [look(10, e) for e in range(11, 31)]
    assert parts[-1] == look(10, 30)


def test_a_mirror_simulates_accuracy_and_custom_rates_but_no_feedback() -> None:
    box = sandbox(
        v6={"accuracy": 0.9, "feedback": 0.6, "custom": {"conversion": 0.03}},
        v7={"accuracy": 0.7, "feedback": 0.6, "custom": {"conversion": 0.03}, "error_bursts": 2},
    )
    model = TrafficModel(box, T0, 60)
    shadow = model.records("v7", T0, T0 + 30 * MIN, BLUE, mirror=[(T0, {"v7": 25.0})])
    assert shadow is not None and shadow.confusion is not None
    assert within(shadow.confusion.correct / shadow.confusion.labelled, 0.7, 0.01)
    events, count = shadow.custom["conversion"]
    assert count == shadow.requests and within(events, 0.03 * count, math.sqrt(0.03 * count))
    assert (shadow.feedback or (0, 0))[1] == 0  # nobody sees (or rates) a mirrored answer


GATES = (Gate.model_validate({"name": "errors", "metric": "error_rate", "max": 0.02}),)


def test_the_endpoint_publishes_a_mirror_as_the_variants_metrics_from_when_it_was_set() -> None:
    clock = VirtualClock(T0)
    store = FakeStore()
    ep = LocalEndpoint("shop", sandbox(), store, clock, grid=60.0)
    metrics = LocalMetrics(ep)
    ep.describe()
    ep.prepare(Candidate(name="v7"), "v6")
    clock.advance(5 * MIN)
    ep.set_shadow("v7", 50)
    ep.set_shadow("v7", 50)  # the same mirror: no new entry
    clock.advance(10 * MIN)
    ep.set_shadow(None, 0)
    clock.advance(5 * MIN)
    record = store.get_value("sandbox", "shop")
    assert record is not None
    assert record["shadow_history"] == [[T0 + 5 * MIN, {"v7": 50.0}], [T0 + 15 * MIN, {}]]
    assert record["history"] == [[T0, {"v6": 100.0}]]  # the live split never changed

    def look(start: float, end: float) -> dict[str, Window]:
        return metrics.query(
            MetricsQuery(T0 + start * MIN, T0 + end * MIN, ("v6", "v7"), GATES, 60)
        )

    before, during, after = look(0, 5), look(5, 15), look(15, 20)
    assert before["v7"].requests == 0 and after["v7"].requests == 0
    n = during["v7"].requests
    assert n is not None and within(n, 100 * 600 * 0.5, math.sqrt(30_000))
    rate = during["v7"].error_rate
    assert rate is not None and 0.04 < rate < 0.06
    # Blue's numbers are what they would be without any mirror.
    plain = LocalMetrics(
        LocalEndpoint("other", sandbox(), FakeStore(), VirtualClock(T0), grid=60.0)
    )
    plain.endpoint.describe()
    plain.endpoint.prepare(Candidate(name="v7"), "v6")
    plain.endpoint.clock.advance(20 * MIN)  # type: ignore[attr-defined]
    alone = plain.query(MetricsQuery(T0 + 5 * MIN, T0 + 15 * MIN, ("v6", "v7"), GATES, 60))
    assert alone["v6"] == during["v6"] and alone["v7"].requests == 0


def mirroring(percent: float) -> tuple[VirtualClock, FakeStore, LocalEndpoint]:
    """The sandbox's endpoint with v7 prepared beside v6 and mirrored ``percent``."""
    clock = VirtualClock(T0)
    store = FakeStore()
    ep = LocalEndpoint("shop", sandbox(), store, clock, grid=60.0)
    ep.describe()
    ep.prepare(Candidate(name="v7"), "v6")
    ep.set_shadow("v7", percent)
    return clock, store, ep


def test_a_mirrored_variant_is_retired_only_once_its_mirror_stopped() -> None:
    clock, store, ep = mirroring(100)
    clock.advance(MIN)
    with pytest.raises(ProviderError, match="100% mirrored"):
        ep.finalize("v6", "v7")
    ep.set_shadow(None, 0)
    assert ep.finalize("v6", "v7").variant("v7") is None
    record = store.get_value("sandbox", "shop")
    assert record is not None and record["shadow"] == {}
    assert record["shadow_history"] == [[T0, {"v7": 100.0}], [T0 + MIN, {}]]


def test_an_old_record_without_a_mirror_history_mirrors_from_the_start() -> None:
    clock, store, ep = mirroring(20)
    record = store.get_value("sandbox", "shop")
    assert record is not None
    del record["shadow_history"]
    store.put_value("sandbox", "shop", record, lease=None)
    clock.advance(10 * MIN)
    window = LocalMetrics(ep).query(MetricsQuery(T0, T0 + 10 * MIN, ("v7",), GATES, 60))["v7"]
    assert window.requests is not None and within(window.requests, 12_000, math.sqrt(12_000))
