"""Drift (someone changed the endpoint by hand) and graceful stops, through the Runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlrollout.clock import VirtualClock
from mlrollout.engine.phases import Phase
from mlrollout.engine.runner import Runner
from mlrollout.errors import EndpointDrifted
from mlrollout.plan.loader import parse_plan
from mlrollout.state.base import Event
from mlrollout.state.sqlite import SqliteStateStore

PLAN = """
version: 1
name: drift
target: {provider: local, endpoint: ep}
candidate: {name: v2}
strategy:
  type: canary
  steps: [{weight: 10}, {analyze: 5m}, {weight: 50}, {analyze: 5m}]
analysis:
  min_requests: 100
  gates: [{name: errors, metric: error_rate, vs_baseline: {max_increase: 50%}}]
sandbox:
  seed: 2
  rps: 200
  variants:
    v1: {error_rate: 0.01}
    v2: {error_rate: 0.01}
"""


@pytest.fixture
def store(tmp_path: Path) -> SqliteStateStore:
    return SqliteStateStore(tmp_path / "state.db")


def _started(store: SqliteStateStore) -> tuple[Runner, str, VirtualClock]:
    runner = Runner(store)
    record = runner.create(parse_plan(PLAN, "p.yaml"))
    clock = VirtualClock(1_800_000_000.0)
    runner.drive(record.id, clock=clock, max_ticks=5)  # prepared, 10 %, into the analysis
    return runner, record.id, clock


def _set_by_hand(store: SqliteStateStore, weights: dict[str, float], at: float) -> None:
    """What someone editing the endpoint in the console does: the weights change from ``at``."""
    record = store.get_value("sandbox", "ep")
    assert record is not None
    for name, weight in weights.items():
        record["variants"][name]["weight"] = weight
    record["history"].append([at, dict(weights)])
    store.put_value("sandbox", "ep", record, lease=None)


def _live(store: SqliteStateStore) -> dict[str, float]:
    record = store.get_value("sandbox", "ep")
    assert record is not None
    return {name: v["weight"] for name, v in record["variants"].items()}


def test_drift_stops_and_names_what_changed(store: SqliteStateStore) -> None:
    runner, rid, clock = _started(store)
    _set_by_hand(store, {"v1": 70.0, "v2": 30.0}, clock.now())
    with pytest.raises(EndpointDrifted) as caught:
        runner.drive(rid, clock=clock)
    assert "v2 10%" in caught.value.message and "v2 30%" in caught.value.message
    assert "--adopt" in (caught.value.hint or "")
    assert _live(store) == {"v1": 70.0, "v2": 30.0}  # nothing was touched


def test_adopt_continues_from_the_live_weights(store: SqliteStateStore) -> None:
    runner, rid, clock = _started(store)
    _set_by_hand(store, {"v1": 70.0, "v2": 30.0}, clock.now())
    outcome = runner.drive(rid, clock=clock, adopt=True)
    assert outcome.phase == Phase.SUCCEEDED
    kinds = [e.kind for e in store.events(rid)]
    assert "adopted" in kinds
    assert _live(store) == {"v2": 100.0}


def test_abort_after_drift_still_restores_the_baseline(store: SqliteStateStore) -> None:
    runner, rid, clock = _started(store)
    _set_by_hand(store, {"v1": 40.0, "v2": 60.0}, clock.now())
    runner.command(rid, "abort")
    outcome = runner.drive(rid, clock=clock)
    assert outcome.phase == Phase.ROLLED_BACK
    assert _live(store) == {"v1": 100.0}


def test_a_requested_stop_ends_between_ticks_and_resume_continues(
    store: SqliteStateStore,
) -> None:
    runner = Runner(store)
    record = runner.create(parse_plan(PLAN, "p.yaml"))

    def stop_at_first_traffic_change(event: Event, state: object) -> None:
        if event.kind == "set_traffic.requested":
            runner.stop_requested = True  # as a SIGINT arriving during the provider call

    runner.listeners.append(stop_at_first_traffic_change)
    clock = VirtualClock(1_800_000_000.0)
    outcome = runner.drive(record.id, clock=clock)
    assert outcome.interrupted and outcome.exit_code == 3
    kinds = [e.kind for e in store.events(record.id)]
    assert kinds[-1] == "set_traffic.applied"  # the change in flight was finished and recorded
    assert store.current_lease(record.endpoint_key) is None  # released for whoever resumes
    resumed = Runner(store).drive(record.id, clock=clock)
    assert resumed.phase == Phase.SUCCEEDED


def test_a_provider_failure_mid_rollout_needs_a_human_and_resume_retries(
    store: SqliteStateStore,
) -> None:
    from mlrollout.errors import ExitCode, NeedsHuman, ProviderError

    runner, rid, clock = _started(store)
    original = runner.open_engine

    def failing_engine(record: object, clock: object = None) -> object:
        engine = original(record, clock)  # type: ignore[arg-type]

        def down(weights: object) -> object:
            raise ProviderError("set_traffic: service unavailable", hint="check the platform")

        engine.adapter.set_traffic = down  # type: ignore[method-assign]
        return engine

    runner.open_engine = failing_engine  # type: ignore[method-assign]
    with pytest.raises(NeedsHuman) as caught:
        runner.drive(rid, clock=clock)
    assert caught.value.exit_code == ExitCode.NEEDS_HUMAN
    assert f"mlrollout resume {rid}" in (caught.value.hint or "")
    assert [e.kind for e in store.events(rid)][-1] == "set_traffic.requested"
    assert store.current_lease(store.get_rollout(rid).endpoint_key) is None
    assert Runner(store).drive(rid, clock=clock).phase == Phase.SUCCEEDED
