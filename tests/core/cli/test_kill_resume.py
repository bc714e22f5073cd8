"""The durability promise: SIGKILL a `mlrollout run` mid-rollout, then `mlrollout resume` finishes
it from the journal, and the endpoint ends exactly as an uninterrupted run leaves it.

The sandbox runs on a scaled clock (`speed: 300`: the ~32-minute plan takes ~6 s of real time), so
the runner is really mid-step when it dies. The test only waits on the subprocess: it polls the
journal read-only until the kill point is reached.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mlrollout.state.sqlite import open_sqlite_store

REPO = Path(__file__).resolve().parents[3]
GOOD = REPO / "plans" / "local-canary-good.yaml"
SPEED = 300
POLL = 0.05


def scaled_plan(tmp_path: Path) -> Path:
    text = GOOD.read_text()
    assert text.count("speed: max") == 1
    plan = tmp_path / "plan.yaml"
    plan.write_text(text.replace("speed: max", f"speed: {SPEED}"))
    return plan


def journal(db: Path) -> list[tuple[int, str, dict]]:
    """(seq, kind, data) of every event, read-only; [] while the file is not set up yet."""
    if not db.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            rows = conn.execute("SELECT seq, kind, data_json FROM events ORDER BY seq").fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError:  # not created yet, or mid-setup
        return []
    return [(seq, kind, json.loads(data)) for seq, kind, data in rows]


def after_events(n: int) -> Callable[[list[tuple[int, str, dict]]], bool]:
    return lambda events: len(events) >= n


def after_kind(kind: str) -> Callable[[list[tuple[int, str, dict]]], bool]:
    return lambda events: any(k == kind for _, k, _ in events)


KILL_POINTS = {
    # mid-analysis at 10 %: the first look after the first traffic shift is recorded
    "mid-first-analysis": after_events(6),
    # right after the first traffic shift was applied (and journaled)
    "after-first-set-traffic": after_kind("set_traffic.applied"),
}


def start_and_kill(tmp_path: Path, state: Path, when) -> list[tuple[int, str, dict]]:
    plan = scaled_plan(tmp_path)
    db = state / "state.db"
    log = (tmp_path / "run.log").open("w")
    env = {k: v for k, v in os.environ.items() if k != "MLROLLOUT_DEBUG"}
    runner = subprocess.Popen(
        [sys.executable, "-m", "mlrollout", "--state", str(state), "run", "--yes", str(plan)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            events = journal(db)
            if when(events):
                runner.send_signal(signal.SIGKILL)
                break
            if runner.poll() is not None:
                pytest.fail(
                    f"the run ended (exit {runner.returncode}) before the kill point; journal: "
                    f"{[k for _, k, _ in events]}\n{(tmp_path / 'run.log').read_text()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"kill point not reached in 15 s: {[k for _, k, _ in events]}")
            time.sleep(POLL)
    finally:
        if runner.poll() is None:
            runner.kill()
        runner.wait(timeout=10)
        log.close()
    assert runner.returncode == -signal.SIGKILL
    return journal(db)


def mlrollout(*args: str | os.PathLike[str], timeout: float = 30) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLROLLOUT_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "mlrollout", *map(str, args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def only_rollout(state: Path) -> str:
    store = open_sqlite_store(str(state))
    try:
        rows = store.list_rollouts()
    finally:
        store.close()
    assert len(rows) == 1
    return rows[0].id


def candidate_weights_applied(events: list[tuple[int, str, dict]]) -> list[float]:
    out: list[float] = []
    for _, kind, data in events:
        if kind == "set_traffic.applied":
            weight = data["weights"].get("v8", 0.0)
            if not out or out[-1] != weight:
                out.append(weight)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kill_point", list(KILL_POINTS), ids=list(KILL_POINTS))
def test_sigkill_then_resume_finishes_the_rollout(cli, tmp_path, kill_point):
    state = tmp_path / "state"
    at_kill = start_and_kill(tmp_path, state, KILL_POINTS[kill_point])
    kinds_at_kill = [k for _, k, _ in at_kill]
    assert "set_traffic.applied" in kinds_at_kill
    assert "promoted" not in kinds_at_kill and "finalize.requested" not in kinds_at_kill
    rid = only_rollout(state)

    # the killed rollout still owns the endpoint: nobody may start another one on it
    status = json.loads(cli("--state", state, "status", rid, "-o", "json").out)
    assert status["phase"] not in ("succeeded", "rolled_back", "aborted")
    again = cli("--state", state, "run", "--yes", GOOD)
    assert again.code == 5, again.both
    assert rid in again.err

    # the killed runner's lease has not expired, but its process is gone: resume takes over
    resumed = mlrollout("--state", state, "resume", rid)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
    assert "Traceback" not in resumed.stdout + resumed.stderr

    status = json.loads(cli("--state", state, "status", rid, "-o", "json").out)
    assert status["phase"] == "succeeded", status
    store = open_sqlite_store(str(state))
    try:
        record = store.get_value("sandbox", "churn-scoring")
    finally:
        store.close()
    assert record is not None
    assert {k: v["weight"] for k, v in record["variants"].items()} == {"v8": 100.0}
    assert record["order"] == ["v8"]

    # the journal continues the killed run's: one story, no step done twice or skipped
    events = journal(state / "state.db")
    assert events[: len(at_kill)] == at_kill
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
    kinds = [k for _, k, _ in events]
    assert kinds.count("started") == 1
    assert kinds.count("promoted") == 1 and kinds[-1] == "promoted"
    assert not any(k.startswith("rollback") for k in kinds), kinds
    assert candidate_weights_applied(events) == [10.0, 50.0, 100.0]


@pytest.mark.slow
def test_resume_right_after_sigkill(tmp_path):
    state = tmp_path / "state"
    start_and_kill(tmp_path, state, KILL_POINTS["mid-first-analysis"])
    rid = only_rollout(state)
    resumed = mlrollout("--state", state, "resume", rid, timeout=20)
    assert resumed.returncode == 0, resumed.stderr


def interrupt_run(tmp_path: Path, state: Path, sig: int, *flags: str) -> tuple[int, str]:
    """Start `run --yes` on the real-time plan, send ``sig`` once a look is recorded, and return
    the exit code and stderr."""
    plan = scaled_plan(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "MLROLLOUT_DEBUG"}
    runner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlrollout",
            "--state",
            str(state),
            "run",
            "--yes",
            *flags,
            str(plan),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 15
        while not after_events(6)(journal(state / "state.db")):
            assert runner.poll() is None, "the run ended before the interrupt"
            assert time.monotonic() < deadline, "no look recorded in 15 s"
            time.sleep(POLL)
        runner.send_signal(sig)
        _, err = runner.communicate(timeout=15)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    return runner.returncode, err


@pytest.mark.slow
def test_ctrl_c_leaves_a_resumable_rollout_that_abort_rolls_back(cli, tmp_path):
    """SIGINT (Ctrl-C, or CI cancelling the job): exit 3 with the next steps, the lease is released
    so `abort` works at once, and abort restores the baseline."""
    state = tmp_path / "state"
    returncode, err = interrupt_run(tmp_path, state, signal.SIGINT)
    assert returncode == 3, err
    assert "Traceback" not in err
    rid = only_rollout(state)
    assert f"mlrollout resume {rid}" in err and f"mlrollout abort {rid}" in err

    aborted = cli("--state", state, "abort", rid)
    assert aborted.code == 0, aborted.both
    status = json.loads(cli("--state", state, "status", rid, "-o", "json").out)
    assert status["phase"] == "rolled_back"
    store = open_sqlite_store(str(state))
    try:
        record = store.get_value("sandbox", "churn-scoring")
    finally:
        store.close()
    assert record is not None
    assert {k: v["weight"] for k, v in record["variants"].items()} == {"v6": 100.0}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_with_on_interrupt_rollback_restores_the_baseline(cli, tmp_path, sig):
    """`--on-interrupt rollback`: the change in flight is finished and recorded, then the
    rollout is rolled back by the same process, which exits 1."""
    state = tmp_path / "state"
    returncode, err = interrupt_run(tmp_path, state, sig, "--on-interrupt", "rollback")
    assert returncode == 1, err
    assert "Traceback" not in err
    rid = only_rollout(state)
    kinds = [kind for _, kind, _ in journal(state / "state.db")]
    # every change that was asked for was also recorded as applied
    assert kinds.count("set_traffic.requested") == kinds.count("set_traffic.applied")
    assert "command.abort" in kinds and kinds[-1] == "rolled_back"
    status = json.loads(cli("--state", state, "status", rid, "-o", "json").out)
    assert status["phase"] == "rolled_back"
