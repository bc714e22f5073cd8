"""One runner drives an endpoint at a time; a stale runner that lost its lease can write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlrollout.clock import VirtualClock
from mlrollout.engine.phases import Phase
from mlrollout.engine.runner import Runner
from mlrollout.errors import LeaseHeld, LeaseLost, NeedsHuman
from mlrollout.plan.loader import parse_plan
from mlrollout.state.base import Event
from mlrollout.state.sqlite import SqliteStateStore

PLAN = """
version: 1
name: leases
target: {provider: local, endpoint: ep}
candidate: {name: v2}
strategy: {type: linear, step: 50, every: 5m}
analysis:
  alpha: 0.001  # these tests are about leases: a false rollback of the healthy v2 is negligible
  min_requests: 50
  gates: [{name: errors, metric: error_rate, vs_baseline: {max_increase: 50%}}]
sandbox:
  rps: 100
  variants: {v1: {error_rate: 0.01}, v2: {error_rate: 0.01}}
"""


class Wall:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_a_second_runner_is_refused_while_the_first_drives(tmp_path: Path) -> None:
    wall = Wall()
    first = Runner(SqliteStateStore(tmp_path / "s.db", wall=wall), holder="ci-1@a pid 1", wall=wall)
    second = Runner(
        SqliteStateStore(tmp_path / "s.db", wall=wall), holder="ci-2@b pid 2", wall=wall
    )
    record = first.create(parse_plan(PLAN, "p.yaml"))
    refusals: list[str] = []

    def try_to_cut_in(event: Event, state: object) -> None:
        if event.kind == "set_traffic.applied" and not refusals:
            with pytest.raises(LeaseHeld) as caught:
                second.drive(record.id, clock=VirtualClock(event.at))
            refusals.append(caught.value.message)

    first.listeners.append(try_to_cut_in)
    outcome = first.drive(record.id, clock=VirtualClock(1_800_000_000.0))
    assert outcome.phase == Phase.SUCCEEDED
    assert refusals and "ci-1@a pid 1" in refusals[0]


def test_a_stale_runner_that_lost_its_lease_can_write_nothing(tmp_path: Path) -> None:
    wall = Wall()
    store_a = SqliteStateStore(tmp_path / "s.db", wall=wall)
    runner_a = Runner(store_a, holder="stalled@a pid 1", wall=wall)
    record = runner_a.create(parse_plan(PLAN, "p.yaml"))
    clock = VirtualClock(1_800_000_000.0)
    runner_a._take_lease(record.endpoint_key)
    engine_a = runner_a.open_engine(store_a.get_rollout(record.id), clock)
    engine_a.tick()  # started
    engine_a.tick()  # candidate prepared

    wall.now += 3600  # runner A stalls (a paused VM, a long GC) well past its lease
    runner_b = Runner(
        SqliteStateStore(tmp_path / "s.db", wall=wall), holder="fresh@b pid 2", wall=wall
    )
    assert runner_b.drive(record.id, clock=VirtualClock(clock.now())).phase == Phase.SUCCEEDED
    endpoint = store_a.get_value("sandbox", "ep")
    journal = len(store_a.events(record.id))

    # A wakes up and carries on where it was. Its next tick sees the endpoint moved on and stops
    # (needs a human); its runner's lease renewal fails; and every write it could still attempt
    # is refused by the fencing token.
    with pytest.raises(NeedsHuman):
        engine_a.tick()
    with pytest.raises(LeaseLost):
        runner_a._renew_lease()
    with pytest.raises(LeaseLost):
        engine_a.record("look", {"late": True})
    with pytest.raises(LeaseLost):
        engine_a.adapter.set_shadow("v2", 10.0)
    with pytest.raises(LeaseLost):
        store_a.put_value("sandbox", "ep", {"variants": {}}, lease=runner_a.lease())
    assert store_a.get_value("sandbox", "ep") == endpoint
    assert len(store_a.events(record.id)) == journal
