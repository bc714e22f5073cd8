"""The real CLI, tried as a hostile user would (issue 11): a closed stdout, a real `abort`
SIGKILLed mid-way, `reconcile`'s exit codes, a malformed state record, a re-run of a finished
plan. Every exit code here is one CI scripts depend on (README, "Exit codes")."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mlrollout.engine.runner import Runner
from mlrollout.plan.loader import load_plan, parse_plan
from mlrollout.state.base import RolloutRecord
from mlrollout.state.sqlite import SqliteStateStore, open_sqlite_store

REPO = Path(__file__).resolve().parents[3]
GOOD = REPO / "plans" / "local-canary-good.yaml"
APPROVAL = REPO / "plans" / "local-approval.yaml"

#: Kills its own process (SIGKILL) right after the N-th journal write of this process.
DIE_AFTER_WRITE = """
import os, signal
from mlrollout.state import sqlite as _sqlite

_die_at = int(os.environ["MLROLLOUT_TEST_DIE_AT"])
_append = _sqlite.SqliteStateStore.append_event
_writes = 0


def append_event(self, *args, **kwargs):
    global _writes
    _writes += 1
    event = _append(self, *args, **kwargs)
    if _writes == _die_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return event


_sqlite.SqliteStateStore.append_event = append_event
"""


def mlrollout(
    state: Path,
    *args: str | os.PathLike[str],
    stdout: int | None = subprocess.PIPE,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MLROLLOUT_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "mlrollout", "--state", str(state), *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        timeout=60,
        check=False,
        cwd=REPO,
    )


def only_rollout(state: Path) -> RolloutRecord:
    store = open_sqlite_store(str(state))
    try:
        (record,) = store.list_rollouts()
        return record
    finally:
        store.close()


def live_weights(state: Path, endpoint: str) -> dict[str, float]:
    store = open_sqlite_store(str(state))
    try:
        value = store.get_value("sandbox", endpoint)
    finally:
        store.close()
    assert value is not None
    return {n: v["weight"] for n, v in value["variants"].items() if v["weight"] > 0}


# ----------------------------------------------------------------------- 3: a closed stdout


@pytest.mark.parametrize("output", ["json", "text"])
def test_a_closed_stdout_never_turns_into_rolled_back(tmp_path: Path, output: str) -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line (as `| head -0` would leave it)
    try:
        done = mlrollout(tmp_path / "state", "run", "--yes", GOOD, "-o", output, stdout=write)
    finally:
        os.close(write)
    # the rollout went on to its end: promoted, exit 0 (never 1, which means "rolled back")
    assert done.returncode == 0, done.stderr
    assert "stdout was closed" in done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    assert only_rollout(tmp_path / "state").phase == "succeeded"


def test_head_dash_1_reads_the_first_event_and_the_rollout_still_ends(tmp_path: Path) -> None:
    state = tmp_path / "state"
    command = (
        f"{sys.executable} -m mlrollout --state {state} run --yes {GOOD} -o json | head -1; "
        'echo "exit=${PIPESTATUS[0]}" >&2'
    )
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=60, check=False, cwd=REPO
    )
    assert json.loads(done.stdout.splitlines()[0])["kind"] in ("started", "prepare.requested")
    assert "exit=0" in done.stderr, done.stderr
    assert only_rollout(state).phase == "succeeded"


# ------------------------------------------------------------ a real abort, SIGKILLed mid-way


@pytest.mark.parametrize("die_at", [2, 3, 4, 5])
def test_a_sigkilled_abort_is_finished_by_resume(tmp_path: Path, die_at: int) -> None:
    state = tmp_path / "state"
    waiting = mlrollout(state, "run", "--yes", "--detach", APPROVAL)
    assert waiting.returncode == 3, waiting.stderr
    rid = only_rollout(state).id
    assert live_weights(state, "recsys") == {"v11": 80.0, "v12": 20.0}
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(DIE_AFTER_WRITE)
    # the abort's writes: command.abort, rollback.started, set_traffic.requested, .applied, ...
    killed = mlrollout(
        state,
        "abort",
        rid,
        env={"PYTHONPATH": str(hook), "MLROLLOUT_TEST_DIE_AT": str(die_at)},
    )
    assert killed.returncode == -9, killed.stderr
    assert only_rollout(state).phase != "rolled_back"
    done = mlrollout(state, "resume", rid)
    assert done.returncode == 1, done.stderr
    assert only_rollout(state).phase == "rolled_back"
    assert live_weights(state, "recsys") == {"v11": 100.0}


# ------------------------------------------------------------------ 9: reconcile's exit codes


def test_reconcile_exits_4_when_a_stored_plan_no_longer_validates(tmp_path: Path) -> None:
    state = tmp_path / "state"
    waiting = mlrollout(state, "run", "--yes", "--detach", APPROVAL)
    assert waiting.returncode == 3
    rid = only_rollout(state).id
    conn = sqlite3.connect(state / "state.db")
    with conn:  # the plan as stored names a provider that is not installed any more
        conn.execute(
            "UPDATE rollouts SET plan_json = replace(plan_json, 'provider: local', "
            "'provider: gone') WHERE id = ?",
            (rid,),
        )
    conn.close()
    done = mlrollout(state, "reconcile")
    assert done.returncode == 4, done.stdout + done.stderr
    assert f"{rid}: error" in done.stdout


def test_reconcile_exits_0_when_another_runner_drives_a_rollout(tmp_path: Path) -> None:
    state = tmp_path / "state"
    waiting = mlrollout(state, "run", "--yes", "--detach", APPROVAL)
    assert waiting.returncode == 3
    record = only_rollout(state)
    store = open_sqlite_store(str(state))
    try:  # a live runner on another machine holds the endpoint's lease
        store.acquire_lease(record.endpoint_key, "ci@elsewhere pid 7", 600)
    finally:
        store.close()
    done = mlrollout(state, "reconcile")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "driven by ci@elsewhere pid 7" in done.stdout


def test_reconcile_exits_1_when_its_pass_rolls_a_rollout_back(tmp_path: Path) -> None:
    state = tmp_path / "state"
    waiting = mlrollout(state, "run", "--yes", "--detach", APPROVAL)
    assert waiting.returncode == 3
    rid = only_rollout(state).id
    assert mlrollout(state, "abort", rid).returncode == 0
    store = open_sqlite_store(str(state))
    try:
        assert store.get_rollout(rid).phase == "rolled_back"
    finally:
        store.close()
    bad = REPO / "plans" / "local-canary-bad.yaml"
    loaded = load_plan(str(bad))
    store = SqliteStateStore(state / "state.db")
    try:
        Runner(store).create(loaded)  # recorded, not yet driven: the cron pass drives it
    finally:
        store.close()
    done = mlrollout(state, "reconcile")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "rolled_back" in done.stdout


def test_reconcile_advances_a_scaled_time_sandbox_rollout_pass_after_pass(tmp_path: Path) -> None:
    text = GOOD.read_text().replace("speed: max", "speed: 60")
    wall = [1_800_000_000.0]
    store = SqliteStateStore(tmp_path / "state.db", wall=lambda: wall[0])
    runner = Runner(store, wall=lambda: wall[0])
    record = runner.create(parse_plan(text, "scaled.yaml"))
    seen: list[float] = []
    for _ in range(30):
        runner.reconcile()
        now = store.get_rollout(record.id).snapshot["now"]
        seen.append(now)
        if store.get_rollout(record.id).phase == "succeeded":
            break
        wall[0] += 60  # a cron job every minute: an hour of simulated time at speed 60
    assert store.get_rollout(record.id).phase == "succeeded", seen
    assert all(b > a for a, b in itertools.pairwise(seen))


# ---------------------------------------------------------------- 10: a malformed state record


@pytest.mark.parametrize("column", ["snapshot_json", "plan_json"])
def test_malformed_json_in_a_state_record_is_exit_5_and_left_as_it_is(
    tmp_path: Path, column: str
) -> None:
    state = tmp_path / "state"
    assert mlrollout(state, "run", "--yes", GOOD).returncode == 0
    rid = only_rollout(state).id
    db = state / "state.db"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(f"UPDATE rollouts SET {column} = '{{\"phase\": ' WHERE id = ?", (rid,))
    conn.close()
    before = db.read_bytes()
    for args in (("status", rid), ("list",), ("report", rid)):
        done = mlrollout(state, *args)
        assert done.returncode == 5, (args, done.stderr)
        assert f"rollout {rid}" in done.stderr and str(db) in done.stderr
        assert "not valid JSON" in done.stderr
        assert "internal error" not in done.stderr
    assert db.read_bytes() == before


# ------------------------------------------------------------------------------ papercuts


def test_re_running_a_finished_plan_says_so_and_exits_0(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert mlrollout(state, "run", "--yes", GOOD).returncode == 0
    again = mlrollout(state, "run", "--yes", GOOD)
    assert again.returncode == 0, again.stderr
    assert "already serves 100%" in again.stderr and "nothing to roll out" in again.stderr
