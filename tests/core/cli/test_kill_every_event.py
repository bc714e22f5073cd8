"""Kill at every step, with the real CLI: `mlrollout run` is SIGKILLed (by itself, exactly) right
after journal event N — and, for every third N, right before it, i.e. after the provider call but
before its record — for every N of a rollout; then `mlrollout resume ID` (or `mlrollout reconcile`)
must finish it as an uninterrupted run does, with the live endpoint matching the journal.

The kill is injected without touching mlrollout's code: a `sitecustomize` module on the
subprocess's PYTHONPATH wraps the SQLite store's `append_event` and sends SIGKILL to its own
process at the chosen write. The plan runs on virtual time (`speed: max`), so each run is short.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlrollout.state.sqlite import open_sqlite_store

REPO = Path(__file__).resolve().parents[3]
PLANS = {
    "good": REPO / "plans" / "local-canary-good.yaml",
    "bad": REPO / "plans" / "local-canary-bad.yaml",
}
EXPECTED = {"good": ("succeeded", 0, {"v8": 100.0}), "bad": ("rolled_back", 1, {"v6": 100.0})}

SITECUSTOMIZE = """
import os, signal
from mlrollout.state import sqlite as _sqlite

_die_at = int(os.environ["MLROLLOUT_TEST_DIE_AT"])
_before = os.environ.get("MLROLLOUT_TEST_DIE_BEFORE") == "1"
_append = _sqlite.SqliteStateStore.append_event
_writes = 0


def append_event(self, *args, **kwargs):
    global _writes
    _writes += 1
    if _before and _writes == _die_at:
        os.kill(os.getpid(), signal.SIGKILL)
    event = _append(self, *args, **kwargs)
    if not _before and _writes == _die_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return event


_sqlite.SqliteStateStore.append_event = append_event
"""


def mlrollout(
    state: Path, *args: str, hook: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLROLLOUT_")}
    if hook is not None:
        environ["PYTHONPATH"] = os.pathsep.join(
            [str(hook), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mlrollout", "--state", str(state), *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        check=False,
        cwd=REPO,
    )


def rollout_events(state: Path) -> list[tuple[int, str]]:
    store = open_sqlite_store(str(state))
    try:
        records = store.list_rollouts()
        assert len(records) == 1
        return [(e.seq, e.kind) for e in store.events(records[0].id)]
    finally:
        store.close()


def finish_and_check(state: Path, which: str, how: str) -> None:
    phase, code, weights = EXPECTED[which]
    store = open_sqlite_store(str(state))
    try:
        rid = store.list_rollouts()[0].id
    finally:
        store.close()
    if how == "resume":
        done = mlrollout(state, "resume", rid)
        assert done.returncode == code, done.stderr[-2000:]
    else:  # on virtual time one reconcile pass runs the rollout to its end; its exit code is
        # the pass's worst outcome: 1 when it rolled the rollout back
        done = mlrollout(state, "reconcile")
        assert done.returncode == code, done.stderr[-2000:]
        assert f"{rid}: {phase}" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    store = open_sqlite_store(str(state))
    try:
        assert store.get_rollout(rid).phase == phase
        live = store.get_value("sandbox", "churn-scoring")
        events = store.events(rid)
    finally:
        store.close()
    assert live is not None
    assert {n: v["weight"] for n, v in live["variants"].items()} == weights
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = [e.kind for e in events]
    assert kinds.count("started") == 1
    assert kinds.count("set_traffic.requested") == kinds.count("set_traffic.applied")
    history = [entry[1] for entry in live["history"]]
    assert all(a != b for a, b in itertools.pairwise(history)), "applied twice"


@pytest.fixture
def hook(tmp_path: Path) -> Path:
    folder = tmp_path / "hook"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("which", ["good", "bad"])
def test_sigkill_at_every_journal_event_then_resume_or_reconcile(
    tmp_path: Path, hook: Path, which: str
) -> None:
    reference = tmp_path / "reference"
    done = mlrollout(reference, "run", "--yes", str(PLANS[which]))
    assert done.returncode == EXPECTED[which][1], done.stderr[-2000:]
    total = len(rollout_events(reference))
    tried = 0
    for n in range(1, total + 1):
        for before in (False, True) if n % 3 == 0 else (False,):
            state = tmp_path / f"kill-{n}-{int(before)}"
            env = {"MLROLLOUT_TEST_DIE_AT": str(n), "MLROLLOUT_TEST_DIE_BEFORE": str(int(before))}
            killed = mlrollout(state, "run", "--yes", str(PLANS[which]), hook=hook, env=env)
            assert killed.returncode == -9, (n, before, killed.stderr[-2000:])
            assert len(rollout_events(state)) == (n - 1 if before else n)
            # alternate the two ways back: the runner resumed by hand, or a cron reconcile
            finish_and_check(state, which, "resume" if tried % 2 == 0 else "reconcile")
            tried += 1
    print(f"\n{which}: {tried} SIGKILL points of {total} events tried, all recovered")


@pytest.mark.slow
def test_sigkill_at_every_journal_event_then_abort_rolls_back(tmp_path: Path, hook: Path) -> None:
    """The same kill points, answered by `mlrollout abort ID` (the operator gives up on the
    rollout): whatever was in flight, it ends rolled back, unless the promotion had already
    retired the baseline (then the abort is refused as too late, and says so)."""
    reference = tmp_path / "reference"
    assert mlrollout(reference, "run", "--yes", str(PLANS["good"])).returncode == 0
    total = len(rollout_events(reference))
    outcomes: dict[str, int] = {}
    for n in range(1, total):
        state = tmp_path / f"kill-{n}"
        env = {"MLROLLOUT_TEST_DIE_AT": str(n), "MLROLLOUT_TEST_DIE_BEFORE": "0"}
        killed = mlrollout(state, "run", "--yes", str(PLANS["good"]), hook=hook, env=env)
        assert killed.returncode == -9, (n, killed.stderr[-2000:])
        store = open_sqlite_store(str(state))
        try:
            rid = store.list_rollouts()[0].id
        finally:
            store.close()
        aborted = mlrollout(state, "abort", rid)
        assert aborted.returncode == 0, (n, aborted.stderr[-2000:])
        assert "Traceback" not in aborted.stderr
        store = open_sqlite_store(str(state))
        try:
            phase = store.get_rollout(rid).phase
            kinds = [e.kind for e in store.events(rid)]
            live = store.get_value("sandbox", "churn-scoring")
        finally:
            store.close()
        outcomes[phase] = outcomes.get(phase, 0) + 1
        serving = {k: v["weight"] for k, v in (live or {"variants": {}})["variants"].items()}
        if "abort.refused" in kinds:
            assert phase == "succeeded" and serving == {"v8": 100.0}, n
        elif phase == "aborted":
            assert "started" not in kinds, n  # only before any change
        else:
            assert phase == "rolled_back", (n, phase, kinds)
            assert {k: v for k, v in serving.items() if v} == {"v6": 100.0}, n
    assert outcomes.get("rolled_back", 0) > total // 2, outcomes
    print(f"\nabort after SIGKILL at {total - 1} points: {outcomes}")
