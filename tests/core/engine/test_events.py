"""One vocabulary: every event a rollout journals is an EventKind, and what reporters describe,
webhooks send and the CLI reads are named from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlrollout.engine.events import COMMANDS, LOOK_KINDS, NOTIFY_KINDS, EventKind
from mlrollout.engine.runner import Runner
from mlrollout.plan.loader import load_plan
from mlrollout.report.console import event_line
from mlrollout.state.sqlite import SqliteStateStore

PLANS = Path(__file__).resolve().parents[3] / "plans"


@pytest.mark.parametrize(
    "plan", ["local-canary-good.yaml", "local-canary-bad.yaml", "local-approval.yaml"]
)
def test_every_journalled_kind_is_in_the_vocabulary_and_described(
    tmp_path: Path, plan: str
) -> None:
    store = SqliteStateStore(tmp_path / "state.db")
    runner = Runner(store)
    record = runner.create(load_plan(str(PLANS / plan)))
    outcome = runner.drive(record.id)
    if outcome.phase == "waiting":
        runner.command(record.id, "abort")
        runner.drive(record.id)
    kinds = [e.kind for e in store.events(record.id)]
    assert kinds and all(EventKind(kind) for kind in kinds)
    for event in store.events(record.id):
        if not event.kind.endswith(".requested"):
            described = event_line(event, outcome.state)
            assert described is not None and described != (event.kind, ""), event.kind


def test_the_kind_sets_are_drawn_from_the_vocabulary() -> None:
    for kinds in (LOOK_KINDS, COMMANDS, NOTIFY_KINDS):
        assert all(isinstance(kind, EventKind) for kind in kinds)
    assert EventKind.requested("set_traffic") is EventKind.SET_TRAFFIC_REQUESTED
    assert EventKind.applied("finalize") is EventKind.FINALIZE_APPLIED


def test_every_kind_of_the_vocabulary_reads_as_a_sentence() -> None:
    from mlrollout.engine.engine import RolloutState
    from mlrollout.state.base import Event

    state = RolloutState(candidate="v2", baseline="v1", weights={"v1": 90.0, "v2": 10.0})
    for kind in EventKind:
        event = Event("r", 1, 0.0, kind, {"by": "ci", "weights": {"v1": 90.0}, "reason": "x"})
        line = event_line(event, state)
        if kind.endswith(".requested"):
            assert line is None
        else:
            assert line is not None and line[1], kind
