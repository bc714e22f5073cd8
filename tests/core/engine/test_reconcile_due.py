"""`reconcile` (one pass, as cron runs it) remembers when each active rollout is next due, so a
pass where nothing is due costs the store one listing and one read, not a lease and a journal
per rollout, and anything written to a rollout's journal makes it due at once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from mlrollout.clock import VirtualClock
from mlrollout.engine.phases import Phase
from mlrollout.engine.runner import DUE_INDEX, Runner
from mlrollout.plan.loader import parse_plan
from mlrollout.state.sqlite import SqliteStateStore

START = 1_800_000_000.0
PLAN = """
version: 1
name: due
target: {provider: local, endpoint: ENDPOINT}
candidate: {name: v2}
strategy:
  type: canary
  steps:
    - weight: 10
    - analyze: 10m
    - weight: 100
analysis:
  interval: 60s
  gates:
    - {name: errors, metric: error_rate, vs_baseline: {max_increase: 50%}}
sandbox:
  seed: 3
  speed: 1
  rps: 50
  variants:
    v1: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}
    v2: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}
"""


class CountingStore(SqliteStateStore):
    """SQLite, with the calls a pass makes counted by name."""

    def __init__(self, path: Path, wall: VirtualClock) -> None:
        super().__init__(path, wall=wall.now)
        self.calls: Counter[str] = Counter()

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name in ("acquire_lease", "events", "list_rollouts", "get_value", "put_value"):
            super().__getattribute__("calls")[name] += 1
        return attr


def _fleet(tmp_path: Path, n: int = 3) -> tuple[CountingStore, Runner, VirtualClock, list[str]]:
    wall = VirtualClock(START)
    store = CountingStore(tmp_path / "state.db", wall)
    runner = Runner(store, wall=wall.now, holder="cron@host pid 1")
    ids = [
        runner.create(parse_plan(PLAN.replace("ENDPOINT", f"ep{i}"), "p.yaml")).id for i in range(n)
    ]
    return store, runner, wall, ids


def test_a_pass_with_nothing_due_takes_no_lease_and_reads_no_journal(tmp_path: Path) -> None:
    store, runner, wall, ids = _fleet(tmp_path)
    started = runner.reconcile()  # prepares each candidate, shifts 10 %
    assert [r.phase for _, r in started] == [Phase.PROGRESSING] * 3  # type: ignore[union-attr]
    seqs = {rid: store.get_rollout(rid).last_seq for rid in ids}
    store.calls.clear()
    idle = runner.reconcile()
    assert sorted(record.id for record, _ in idle) == sorted(ids)
    assert all(getattr(r, "phase", None) == Phase.PROGRESSING for _, r in idle)
    assert store.calls["acquire_lease"] == 0 and store.calls["events"] == 0
    assert store.calls["put_value"] == 0  # nothing changed: the index is not rewritten
    assert {rid: store.get_rollout(rid).last_seq for rid in ids} == seqs  # nothing written

    wall.advance(120.0)  # the first look of every rollout is due
    store.calls.clear()
    runner.reconcile()
    assert store.calls["acquire_lease"] == 3
    assert all(store.get_rollout(rid).last_seq > seqs[rid] for rid in ids)  # each looked


def test_a_command_makes_its_rollout_due_at_once(tmp_path: Path) -> None:
    store, runner, _, ids = _fleet(tmp_path)
    runner.reconcile()
    runner.command(ids[1], "abort", by="alice")
    store.calls.clear()
    results = dict((record.id, outcome) for record, outcome in runner.reconcile())
    assert store.calls["acquire_lease"] == 1  # only the aborted one was driven
    assert getattr(results[ids[1]], "phase", None) in (Phase.ROLLED_BACK, Phase.ABORTED)
    assert store.get_rollout(ids[1]).phase in ("rolled_back", "aborted")
    assert store.get_rollout(ids[0]).phase == "progressing"


def test_a_broken_or_stale_index_only_costs_a_drive(tmp_path: Path) -> None:
    store, runner, _, ids = _fleet(tmp_path)
    runner.reconcile()
    for broken in ({"v": 1, "rollouts": "garbage"}, {"v": 99}, {"v": 1, "rollouts": {ids[0]: 5}}):
        store.put_value(*DUE_INDEX, broken, lease=None)
        store.calls.clear()
        runner.reconcile()
        assert store.calls["acquire_lease"] >= 1  # driven, not skipped on a broken hint
        assert all(store.get_rollout(rid).phase == "progressing" for rid in ids)
    # an entry from an older journal position is not trusted
    index = store.get_value(*DUE_INDEX)
    assert index is not None
    stale = {rid: [entry[0] - 1, entry[1]] for rid, entry in index["rollouts"].items()}
    store.put_value(*DUE_INDEX, {"v": 1, "rollouts": stale}, lease=None)
    store.calls.clear()
    runner.reconcile()
    assert store.calls["acquire_lease"] == 3


def test_the_rollouts_finish_as_without_the_index(tmp_path: Path) -> None:
    """Passes a minute apart, as cron runs them, take each rollout to its end."""
    store, runner, wall, ids = _fleet(tmp_path, n=2)
    for _ in range(40):
        if not runner.reconcile():
            break
        wall.advance(60.0)
    assert [store.get_rollout(rid).phase for rid in ids] == ["succeeded", "succeeded"]


def test_a_rollout_waiting_for_a_human_is_still_looked_at_now_and_then(tmp_path: Path) -> None:
    """A wait has no next tick, but its ticks notice a change made to the endpoint by hand: a
    pass drives it again after RECHECK seconds, and at once after `promote`."""
    from mlrollout.engine.runner import RECHECK

    wall = VirtualClock(START)
    store = CountingStore(tmp_path / "state.db", wall)
    runner = Runner(store, wall=wall.now, holder="cron@host pid 1")
    text = PLAN.replace("ENDPOINT", "ep").replace("    - analyze: 10m\n", "    - approve: {}\n")
    rid = runner.create(parse_plan(text, "p.yaml")).id
    runner.reconcile()
    assert store.get_rollout(rid).phase == "waiting"
    store.calls.clear()
    runner.reconcile()
    assert store.calls["acquire_lease"] == 0
    wall.advance(RECHECK + 1)
    runner.reconcile()
    assert store.calls["acquire_lease"] == 1
    runner.command(rid, "promote", by="alice")
    runner.reconcile()
    assert store.get_rollout(rid).phase == "succeeded"


def test_a_new_watcher_takes_the_due_index_as_seen_and_drives_only_what_is_due(
    tmp_path: Path,
) -> None:
    from mlrollout.engine.watch import Watcher

    store, runner, wall, ids = _fleet(tmp_path)
    runner.reconcile()  # cron's pass: every rollout started, the index written
    seqs = {rid: store.get_rollout(rid).last_seq for rid in ids}
    store.calls.clear()
    watcher = Watcher(lambda: store, clock=wall, holder="pod@host pid 2")
    first = watcher.run_pass()  # a restarted pod: nothing is due yet
    assert first.done == [] and store.calls["acquire_lease"] == 0
    assert {rid: store.get_rollout(rid).last_seq for rid in ids} == seqs
    assert 0 < first.next_in <= 120.0  # it wakes for the first look, not after the interval

    wall.advance(120.0)
    second = watcher.run_pass()
    assert sorted(d.record.id for d in second.done) == sorted(ids)
    assert all(store.get_rollout(rid).last_seq > seqs[rid] for rid in ids)


def test_the_plan_cache_keeps_the_active_plans_and_drops_the_least_recently_used() -> None:
    from mlrollout.engine.runner import PlanCache

    cache = PlanCache(limit=4096)
    texts = [PLAN.replace("ENDPOINT", f"ep{i}") for i in range(30)]
    first = cache.get(texts[0], "p.yaml")
    assert cache.get(texts[0], "p.yaml") is first  # parsed once
    for text in texts[1:]:
        cache.get(text, "p.yaml")
    cache.get(texts[0], "p.yaml")  # used again: the most recent
    cache.keep(active=2)  # a watcher sees 2 rollouts active: those and SPARE more are kept
    assert len(cache) == 2 + PlanCache.SPARE
    assert cache.get(texts[0], "p.yaml") is first  # kept: recently used
    assert cache.get(texts[1], "p.yaml").target.endpoint == "ep1"  # dropped, parsed again


def test_a_long_watch_holds_the_plans_of_its_active_rollouts_only(tmp_path: Path) -> None:
    from mlrollout.engine.runner import PLANS
    from mlrollout.engine.watch import Watcher

    store, _, wall, _ = _fleet(tmp_path, n=3)
    watcher = Watcher(lambda: store, clock=wall, holder="pod@host pid 3")
    before = PLANS.limit
    try:
        watcher.run_pass()
        assert PLANS.limit == 3 + PLANS.SPARE and len(PLANS) <= PLANS.limit
    finally:
        PLANS.limit = before
