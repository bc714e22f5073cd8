"""The local provider: the simulated endpoint in the state store, its metrics, its plan checks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from sandbox_world import FakeStore

from mlrollout.clock import VirtualClock
from mlrollout.contracts import MetricsQuery, ProviderContext, ProviderSpec, Window
from mlrollout.errors import ProviderError
from mlrollout.plan.model import Candidate, Plan
from mlrollout.sandbox.endpoint import LocalEndpoint, LocalMetrics
from mlrollout.sandbox.provider import LocalProvider, LocalProviderSpec
from mlrollout.sandbox.traffic import LATENCY_BOUNDS
from mlrollout.state.base import Lease

T0 = 1_700_000_000.0
LEASE = Lease("local:shop", "me", 3, T0 + 1e6)


PLAN: dict[str, Any] = {
    "version": 1,
    "name": "shop v7",
    "target": {"provider": "local", "endpoint": "shop"},
    "candidate": {"name": "v7", "model": "models/v7"},
    "strategy": {"type": "canary", "steps": [{"weight": 10}, {"analyze": "5m"}]},
    "sandbox": {
        "seed": 7,
        "variants": {
            "v6": {"error_rate": 0.01, "latency_p50": "40ms", "latency_p99": "120ms"},
            "v7": {"error_rate": 0.03},
            "v8": {},
        },
    },
}


def plan(**changes: Any) -> Plan:
    data = copy.deepcopy(PLAN)
    data.update(changes)
    return Plan.model_validate(data)


@pytest.fixture
def world() -> tuple[FakeStore, VirtualClock, LocalEndpoint, LocalMetrics]:
    store, clock = FakeStore(), VirtualClock(T0)
    context = ProviderContext(plan(), clock, store, lease=lambda: LEASE)  # type: ignore[arg-type]
    endpoint, metrics = LocalProviderSpec.open(context)
    assert isinstance(endpoint, LocalEndpoint) and isinstance(metrics, LocalMetrics)
    return store, clock, endpoint, metrics


V7 = Candidate(name="v7", model="models/v7", instance_type="ml.m5.large", instance_count=2)


def test_first_describe_creates_the_endpoint_with_the_first_variant_serving(world) -> None:
    store, _, endpoint, _ = world
    state = endpoint.describe()
    assert state.status == "ready" and state.weights() == {"v6": 100.0}
    assert state.serving_all() == "v6"
    record = store.get_value("sandbox", "shop")
    assert record["origin"] == T0 and record["history"] == [[T0, {"v6": 100.0}]]
    assert endpoint.wait_until_stable(60) == state
    assert store.leases == [LEASE]  # described twice, created once, fenced


def test_lifecycle(world) -> None:
    store, clock, endpoint, _ = world
    state = endpoint.prepare(V7, "v6")
    assert state.weights() == {"v6": 100.0, "v7": 0.0}
    assert state.variant("v7").instance_count == 2 and state.variant("v7").model == "models/v7"
    writes = len(store.leases)
    assert endpoint.prepare(V7, "v6") == state and len(store.leases) == writes  # no-op
    clock.advance(30)
    assert endpoint.set_traffic({"v6": 90, "v7": 10}).weights() == {"v6": 90.0, "v7": 10.0}
    clock.advance(30)
    endpoint.set_traffic({"v6": 90.0, "v7": 10.0})  # same weights: no new history entry
    record = store.get_value("sandbox", "shop")
    assert record["history"] == [[T0, {"v6": 100.0}], [T0 + 30, {"v6": 90.0, "v7": 10.0}]]
    with pytest.raises(ProviderError, match="still takes 10%"):
        endpoint.finalize("v6", "v7")
    assert endpoint.set_shadow("v7", 50).variant("v7").shadow_percent == 50.0
    endpoint.set_traffic({"v7": 100})  # unnamed deployed variants get 0
    state = endpoint.finalize("v7", "v6")
    assert state.weights() == {"v7": 100.0} and state.variant("v7").shadow_percent == 50.0
    assert endpoint.finalize("v7", "v6") == state  # already retired
    assert set(store.leases) == {LEASE}


def test_a_candidate_without_a_capacity_gets_the_baselines(world) -> None:
    """Green is provisioned at full capacity: a plan naming no instance_count (or type) gets
    the baseline's, here v7 at 3 instances of ml.m5.large left serving by an earlier rollout."""
    _, _, endpoint, _ = world
    endpoint.describe()
    three = Candidate(name="v7", model="models/v7", instance_type="ml.m5.large", instance_count=3)
    endpoint.prepare(three, "v6")
    endpoint.set_traffic({"v7": 100})
    endpoint.finalize("v7", "v6")
    green = endpoint.prepare(Candidate.model_validate({"name": "v8"}), "v7").variant("v8")
    assert green is not None
    assert (green.instance_count, green.instance_type) == (3, "ml.m5.large")
    endpoint.set_traffic({"v8": 100})
    endpoint.finalize("v8", "v7")
    named = Candidate(name="v7", instance_type="ml.c5.xlarge", instance_count=1)
    again = endpoint.prepare(named, "v8").variant("v7")
    assert again is not None and (again.instance_count, again.instance_type) == (1, "ml.c5.xlarge")


def test_bad_changes_are_refused(world) -> None:
    _, _, endpoint, _ = world
    with pytest.raises(ProviderError, match="not a sandbox variant"):
        endpoint.prepare(Candidate(name="v9"), "v6")
    with pytest.raises(ProviderError, match="baseline 'v8' is not deployed"):
        endpoint.prepare(V7, "v8")
    endpoint.prepare(V7, "v6")
    for weights, message in (
        ({"v6": 90, "v7": 5}, "sum to 95"),
        ({"v6": 110, "v7": -10}, "out of 0..100"),
        ({"v6": 90, "v8": 10}, "'v8': not deployed"),
    ):
        with pytest.raises(ProviderError, match=message):
            endpoint.set_traffic(weights)
    with pytest.raises(ProviderError, match="not deployed"):
        endpoint.set_shadow("v8", 10)
    with pytest.raises(ProviderError):
        endpoint.finalize("v6", "v6")
    assert endpoint.describe().weights() == {"v6": 100.0, "v7": 0.0}


def test_describe_sees_changes_made_by_another_runner(world) -> None:
    store, clock, endpoint, _ = world
    endpoint.prepare(V7, "v6")
    other = LocalEndpoint("shop", endpoint.sandbox, store, clock)
    other.set_traffic({"v6": 50, "v7": 50})
    assert endpoint.describe().weights() == {"v6": 50.0, "v7": 50.0}


def query(start: float, end: float, *variants: str) -> MetricsQuery:
    return MetricsQuery(start=start, end=end, variants=variants, gates=(), step=60)


def test_metrics_follow_the_stored_weights(world) -> None:
    _, clock, endpoint, metrics = world
    assert metrics.query(query(T0, T0 + 60, "v6")) == {"v6": Window()}  # no endpoint yet
    endpoint.prepare(V7, "v6")
    clock.advance(60)
    endpoint.set_traffic({"v6": 90, "v7": 10})
    clock.advance(600)
    before = metrics.query(query(T0, T0 + 60, "v6", "v7", "v8"))
    assert before["v7"].requests == 0 and before["v6"].requests > 0
    assert before["v8"] == Window()  # never deployed: no data
    after = metrics.query(query(T0 + 60, T0 + 660, "v6", "v7"))
    assert after["v7"].requests == pytest.approx(6000, rel=0.1)
    assert after["v6"].requests == pytest.approx(54000, rel=0.05)
    assert after["v7"].latency.bounds == LATENCY_BOUNDS
    assert after["v7"].custom == {}  # no custom gate asked for one
    # The same window again, or from a new process, gives the same numbers.
    fresh = LocalMetrics(endpoint).query(query(T0 + 60, T0 + 660, "v6", "v7"))
    assert metrics.query(query(T0 + 60, T0 + 660, "v6", "v7")) == after == fresh


def test_only_completed_buckets_are_visible(world) -> None:
    _, clock, endpoint, metrics = world
    endpoint.describe()
    clock.advance(65)
    seen = metrics.query(query(T0, T0 + 120, "v6"))["v6"]
    assert seen == metrics.query(query(T0, T0 + 60, "v6"))["v6"]  # six buckets, not seven
    clock.advance(60)
    later = metrics.query(query(T0, T0 + 120, "v6"))["v6"]
    assert later.requests > seen.requests


def test_provider_declarations() -> None:
    assert isinstance(LocalProviderSpec, ProviderSpec) and isinstance(
        LocalProviderSpec, LocalProvider
    )
    assert LocalProviderSpec.name == "local"
    assert LocalProviderSpec.capabilities.weights and LocalProviderSpec.capabilities.shadow
    assert not LocalProviderSpec.capabilities.native_blue_green
    assert LocalProviderSpec.strategies == {"canary", "linear", "blue_green", "shadow", "ab_test"}
    calls = LocalProviderSpec.describe_calls(plan())
    assert calls["prepare"] == ["sandbox: add variant v7 at 0%"]
    assert set(calls) == {
        "describe",
        "prepare",
        "set_traffic",
        "set_shadow",
        "finalize",
        "metrics",
        "owner",
    }


def test_check_plan() -> None:
    check = LocalProviderSpec.check_plan
    assert check(plan()) == []
    assert check(plan(baseline="v6")) == []
    (problem,) = check(plan(sandbox=None))
    assert problem.path == ("sandbox",)
    (problem,) = check(plan(candidate={"name": "v9"}))
    assert problem.path == ("candidate", "name") and "v6, v7, v8" in problem.message
    (problem,) = check(plan(candidate={"name": "v6"}))
    assert problem.path == ("candidate", "name") and "serves 100 %" in problem.message
    (problem,) = check(plan(baseline="v5"))
    assert problem.path == ("baseline",)


def test_open_needs_a_sandbox() -> None:
    store = FakeStore()
    context = ProviderContext(plan(sandbox=None), VirtualClock(), store)  # type: ignore[arg-type]
    with pytest.raises(ProviderError, match="sandbox"):
        LocalProviderSpec.open(context)
