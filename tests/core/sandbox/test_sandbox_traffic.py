"""The local sandbox's synthetic traffic: deterministic, additive, statistically sound."""

from __future__ import annotations

import itertools
import math

import pytest

from mlrollout.plan.model import Sandbox
from mlrollout.sandbox.traffic import LATENCY_BOUNDS, TrafficModel

T0 = 1_700_000_000.0
HOUR = 3600.0


def sandbox(seed: int = 7, rps: float = 100.0) -> Sandbox:
    return Sandbox.model_validate(
        {
            "seed": seed,
            "rps": rps,
            "variants": {
                "v6": {"error_rate": 0.01, "latency_p50": "40ms", "latency_p99": "120ms"},
                "v7": {"error_rate": 0.03, "latency_p50": "42ms", "latency_p99": "130ms"},
            },
        }
    )


SPLIT = [(T0, {"v6": 90.0, "v7": 10.0})]


def numbers(model: TrafficModel, variant: str, start: float, end: float, history=SPLIT):
    w = model.window(variant, start, end, history)
    assert w.latency is not None
    return w.requests, w.errors, w.latency.counts


def test_bounds_are_fixed_and_log_spaced() -> None:
    assert LATENCY_BOUNDS[0] == 0.001 and LATENCY_BOUNDS[-1] == 60.0
    assert 60 <= len(LATENCY_BOUNDS) <= 80
    assert all(b > a for a, b in itertools.pairwise(LATENCY_BOUNDS))


def test_same_seed_and_window_give_the_same_numbers_in_any_order() -> None:
    first = TrafficModel(sandbox(), T0)
    a = numbers(first, "v7", T0 + 600, T0 + 1200)
    assert numbers(first, "v7", T0 + 600, T0 + 1200) == a  # cached
    fresh = TrafficModel(sandbox(), T0)  # as a new process would
    numbers(fresh, "v7", T0, T0 + 3000)  # other windows first
    assert numbers(fresh, "v7", T0 + 600, T0 + 1200) == a
    assert numbers(TrafficModel(sandbox(seed=8), T0), "v7", T0 + 600, T0 + 1200) != a
    assert numbers(first, "v6", T0 + 600, T0 + 1200) != a


def test_windows_on_bucket_boundaries_add_up() -> None:
    model = TrafficModel(sandbox(), T0)
    a, b, c = T0, T0 + 370, T0 + 1800
    whole = model.window("v6", a, c, SPLIT)
    left = TrafficModel(sandbox(), T0).window("v6", a, b, SPLIT)
    right = model.window("v6", b, c, SPLIT)
    assert whole.requests == left.requests + right.requests  # type: ignore[operator]
    assert whole.errors == left.errors + right.errors  # type: ignore[operator]
    assert whole.latency == left.latency.merge(right.latency)  # type: ignore[union-attr, arg-type]
    assert whole.latency.total == whole.requests  # type: ignore[union-attr]


def test_alignment_counts_buckets_by_their_start() -> None:
    model = TrafficModel(sandbox(), T0)
    assert model.buckets(T0, T0 + 60) == range(0, 6)
    assert model.buckets(T0 + 0.5, T0 + 60.5) == range(1, 7)
    assert model.buckets(T0 - 100, T0 + 10) == range(0, 1)  # nothing before the origin
    assert model.buckets(T0 + 50, T0 + 50) == range(5, 5)
    assert model.boundary_before(T0 + 59.9) == T0 + 50
    assert model.boundary_before(T0 + 60) == T0 + 60
    assert model.boundary_before(T0 - 5) == T0
    empty = model.window("v6", T0 + 50, T0 + 50, SPLIT)
    assert (empty.requests, empty.errors) == (0, 0)


def test_cumulative_windows_reuse_earlier_work() -> None:
    model = TrafficModel(sandbox(), T0)
    for look in range(1, 31):
        model.window("v7", T0, T0 + 60 * look, SPLIT)
    assert model.generated == 180  # each bucket once
    assert numbers(model, "v7", T0, T0 + 1800) == numbers(
        TrafficModel(sandbox(), T0), "v7", T0, T0 + 1800
    )


def test_long_run_matches_the_configured_behaviour() -> None:
    history = [(T0, {"v6": 50.0, "v7": 50.0})]
    model = TrafficModel(sandbox(), T0)
    for variant, rate, p50, p99 in (("v6", 0.01, 0.040, 0.120), ("v7", 0.03, 0.042, 0.130)):
        w = model.window(variant, T0, T0 + 2 * HOUR, history)
        assert w.requests is not None and w.errors is not None and w.latency is not None
        expected = 100 * 2 * HOUR * 0.5
        assert abs(w.requests - expected) < 4 * math.sqrt(expected)
        se = math.sqrt(rate * (1 - rate) / w.requests)
        assert abs(w.errors / w.requests - rate) < 4 * se
        assert w.latency.total == w.requests
        assert w.latency.quantile(0.5) == pytest.approx(p50, rel=0.1)
        assert w.latency.quantile(0.99) == pytest.approx(p99, rel=0.1)


def test_weights_drive_the_request_counts() -> None:
    model = TrafficModel(sandbox(), T0)
    history = [(T0, {"v6": 100.0}), (T0 + HOUR, {"v6": 90.0, "v7": 10.0})]
    zero = model.window("v7", T0, T0 + HOUR, history)
    assert (zero.requests, zero.errors) == (0, 0)
    ten = model.window("v7", T0 + HOUR, T0 + 2 * HOUR, history)
    expected = 100 * HOUR * 0.10
    assert ten.requests is not None
    assert abs(ten.requests - expected) < 4 * math.sqrt(expected)


def test_a_change_inside_a_bucket_is_time_weighted() -> None:
    model = TrafficModel(sandbox(), T0)
    history = [
        (T0, {"v6": 100.0}),
        (T0 + 12.5, {"v6": 50.0, "v7": 50.0}),
        (T0 + 12.5, {"v6": 60.0, "v7": 40.0}),  # same instant: the later entry holds
        (T0 + 24, {"v6": 100.0}),
        (T0 + 26, {"v6": 20.0, "v7": 80.0}),
    ]
    weights = model.weights("v7", T0, T0 + 40, history)
    assert weights == pytest.approx([0.0, 30.0, 40 * 0.4 + 0 * 0.2 + 80 * 0.4, 80.0])
    # Statistically: a weight that alternates mid-bucket behaves like its time average.
    flip = [
        (T0 + 10 * k + 5, {"v6": 100.0 - 40 * (k % 2), "v7": 40.0 * (k % 2)}) for k in range(720)
    ]
    w = model.window("v7", T0, T0 + 2 * HOUR, [(T0, {"v6": 100.0}), *flip])
    expected = 100 * 2 * HOUR * 0.20
    assert w.requests is not None
    assert abs(w.requests - expected) < 4 * math.sqrt(expected)


def test_unknown_variant_has_no_data() -> None:
    w = TrafficModel(sandbox(), T0).window("v9", T0, T0 + 600, SPLIT)
    assert w.requests is None and w.latency is None
