"""`mlrollout status ID --watch` in a second process follows a `run` to its end and exits with
the same code; off a terminal it prints the same timestamped lines `run` does."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mlrollout

PLANS = Path(mlrollout.__file__).resolve().parents[1] / "plans"

EXE = [sys.executable, "-m", "mlrollout"]


def sped_up(tmp_path: Path, name: str, speed: int) -> Path:
    """An example plan on a sped-up clock, so that its run lasts a few seconds of wall time."""
    path = tmp_path / name
    path.write_text((PLANS / name).read_text().replace("speed: max", f"speed: {speed}"))
    return path


def start_run(plan: Path, state: Path) -> tuple[subprocess.Popen[str], str]:
    run = subprocess.Popen(
        [*EXE, "--state", str(state), "run", "--yes", str(plan)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert run.stderr is not None
    line = run.stderr.readline()  # "rollout ID started (state: ...)"
    found = re.search(r"rollout (\S+) started", line)
    assert found, line
    return run, found.group(1)


def watch(state: Path, rid: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EXE, "--state", str(state), "status", rid, "--watch", "--interval", "0.1", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("name", "code", "last"),
    [("local-canary-good.yaml", 0, "promoted"), ("local-canary-bad.yaml", 1, "rolled back")],
)
def test_a_second_process_follows_a_run_to_its_end_with_the_same_exit_code(
    tmp_path, name, code, last
):
    plan = sped_up(tmp_path, name, 400)  # 27 simulated minutes: about 4 s
    run, rid = start_run(plan, tmp_path / "state")
    watched = watch(tmp_path / "state", rid)
    run_out, _ = run.communicate(timeout=120)
    assert run.returncode == code
    assert watched.returncode == code, watched.stderr
    lines = watched.stdout.splitlines()
    assert rid in lines[0] and "started" in lines[0]  # replayed from the start
    assert last in lines[-1] or last in watched.stderr
    # the same journal, line for line, as the run printed
    assert [line.split(None, 2)[2] for line in lines] == [
        line.split(None, 2)[2] for line in run_out.splitlines()
    ]


def test_watching_a_finished_rollout_replays_it_and_exits_at_once(tmp_path):
    state = tmp_path / "state"
    done = subprocess.run(
        [*EXE, "--state", str(state), "run", "--yes", str(PLANS / "local-canary-bad.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    rid = re.search(r"rollout (\S+) started", done.stderr).group(1)  # type: ignore[union-attr]
    started = time.monotonic()
    watched = watch(state, rid, "-o", "json")
    assert time.monotonic() - started < 30
    assert watched.returncode == 1
    kinds = [json.loads(line)["kind"] for line in watched.stdout.splitlines()]
    assert kinds[0] == "started" and kinds[-1] == "rolled_back"


def test_a_rollout_waiting_for_a_human_is_watched_until_the_timeout_then_exit_3(tmp_path):
    state = tmp_path / "state"
    waiting = subprocess.run(
        [*EXE, "--state", str(state), "run", "--yes", str(PLANS / "local-approval.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert waiting.returncode == 3
    rid = re.search(r"rollout (\S+) started", waiting.stderr).group(1)  # type: ignore[union-attr]
    watched = watch(state, rid, "--timeout", "1s")
    assert watched.returncode == 3
    assert "stopped watching" in watched.stderr and "it goes on" in watched.stderr
    bad = watch(state, rid, "--timeout", "soon")
    assert bad.returncode == 2 and "--timeout" in bad.stderr
