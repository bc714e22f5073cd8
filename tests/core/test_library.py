"""The library API (``mlrollout.api``, documented in docs/library.md): the documentation's examples
run and print what it says, a full sandbox rollout driven from Python imports neither the CLI's
libraries nor a cloud SDK, and each call does what its CLI command does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import mlrollout
from mlrollout.api import (
    Event,
    ExitCode,
    LeaseHeld,
    MlrolloutError,
    Outcome,
    Phase,
    PlanError,
    Rollouts,
    UsageError,
    load_plan,
    open_store,
    parse_plan,
)
from mlrollout.clock import VirtualClock
from mlrollout.errors import ProviderUnavailable, RolloutActive
from mlrollout.state.sqlite import SqliteStateStore

REPO = Path(mlrollout.__file__).resolve().parents[1]
DOC = REPO / "docs" / "library.md"
GOOD = REPO / "plans" / "local-canary-good.yaml"
BAD = REPO / "plans" / "local-canary-bad.yaml"
APPROVAL = REPO / "plans" / "local-approval.yaml"

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def doc_examples() -> list[tuple[str, str | None]]:
    """Each ```python block of docs/library.md, with the ```text block right after it (what it
    prints) if there is one."""
    blocks = [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(DOC.read_text())]
    text = DOC.read_text()
    examples: list[tuple[str, str | None]] = []
    for i, (lang, body, _, end) in enumerate(blocks):
        if lang != "python":
            continue
        following = blocks[i + 1] if i + 1 < len(blocks) else None
        printed = None
        if following and following[0] == "text" and not text[end : following[2]].strip():
            printed = following[1]
        examples.append((body, printed))
    return examples


# ---------------------------------------------------------------------------- the documentation


def test_the_documented_examples_run_and_print_what_the_page_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    examples = doc_examples()
    assert len(examples) >= 5
    assert all(printed is not None for _, printed in examples), "each example shows its output"
    monkeypatch.chdir(REPO)  # the examples name plans/... from the repository's root
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # their mkdtemp() lands here
    namespace: dict[str, object] = {"__name__": "docs_library"}
    for number, (code, printed) in enumerate(examples, 1):
        capsys.readouterr()
        exec(compile(code, f"{DOC.name} example {number}", "exec"), namespace)
        assert capsys.readouterr().out == printed, f"example {number}:\n{code}"
    namespace["rollouts"].close()  # type: ignore[attr-defined]


def test_the_readme_links_the_library_page() -> None:
    assert "docs/library.md" in (REPO / "README.md").read_text()


# ------------------------------------------------------------------------- what is not imported

PROBE = """
import sys, tempfile
before = set(sys.modules)
from mlrollout.api import Rollouts, load_plan
with Rollouts(tempfile.mkdtemp(dir={tmp!r})) as rollouts:
    good = rollouts.run(load_plan({good!r}))
    waiting = rollouts.run({approval!r})
    rollouts.promote(waiting.rollout_id)
    done = rollouts.resume(waiting.rollout_id)
    print(good.phase, waiting.phase, done.phase, rollouts.status().verdict)
FORBIDDEN = ("typer", "rich", "click", "boto3", "botocore", "s3transfer", "google", "azure",
             "grpc", "mlrollout_aws", "mlrollout_gcp", "mlrollout_azure", "mlrollout.cli")
# (namespace packages such as ``google`` may be set up at start-up by a .pth file of an installed
# SDK: only what was imported after the start counts, and neither typer nor rich at all)
new = set(sys.modules) - before
bad = sorted(m for m in new if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
bad += sorted(m for m in ("typer", "rich") if m in sys.modules)
print("imported:", bad)
"""


def test_a_full_sandbox_rollout_imports_no_cli_library_and_no_cloud_sdk(tmp_path: Path) -> None:
    code = PROBE.format(tmp=str(tmp_path), good=str(GOOD), approval=str(APPROVAL))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLROLLOUT_")}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["succeeded waiting succeeded pass", "imported: []"]


# ----------------------------------------------------------------------------- driving


@pytest.fixture
def rollouts(tmp_path: Path) -> Iterator[Rollouts]:
    with Rollouts(tmp_path / "state") as opened:
        yield opened


def test_run_promotes_a_good_candidate_and_rolls_back_a_bad_one(tmp_path: Path) -> None:
    with Rollouts(tmp_path / "a") as first:
        bad = first.run(BAD)
    with Rollouts(tmp_path / "b.db") as second:
        good = second.run(load_plan(GOOD))
    assert (bad.phase, bad.exit_code, bad.ended) == (Phase.ROLLED_BACK, ExitCode.ROLLED_BACK, True)
    assert bad.reason and bad.verdict == "fail"
    assert any(g.outcome == "fail" for g in bad.gates)
    assert sum(bad.weights.values()) == 100 and bad.weights.get(bad.candidate, 0) == 0
    assert (good.phase, good.exit_code, good.reason) == ("succeeded", 0, None)
    assert good.weights == {"v8": 100.0} and good.baseline == "v6" and good.candidate == "v8"
    assert (tmp_path / "b.db").is_file() and (tmp_path / "a" / "state.db").is_file()


def test_create_records_and_drive_drives(rollouts: Rollouts) -> None:
    rollout_id = rollouts.create(GOOD)
    pending = rollouts.status(rollout_id)
    assert (pending.phase, pending.exit_code, pending.weights) == ("pending", 3, {})
    assert not pending.ended and not pending.waiting
    done = rollouts.drive(rollout_id[:12])  # a unique prefix is enough
    assert done.rollout_id == rollout_id and done.phase == "succeeded"
    again = rollouts.drive(rollout_id)  # an ended rollout is returned as recorded
    assert again == rollouts.status(rollout_id) and again.exit_code == 0


def test_a_second_rollout_on_the_same_endpoint_is_refused_while_one_is_active(
    rollouts: Rollouts,
) -> None:
    waiting = rollouts.run(APPROVAL)
    with pytest.raises(RolloutActive) as caught:
        rollouts.create(APPROVAL)
    assert caught.value.exit_code == ExitCode.NEEDS_HUMAN
    assert rollouts.status().rollout_id == waiting.rollout_id


def test_approval_waits_then_promote_and_resume_go_on(rollouts: Rollouts) -> None:
    waiting = rollouts.run(APPROVAL)
    assert (waiting.phase, waiting.exit_code, waiting.waiting_for) == ("waiting", 3, "approval")
    assert waiting.waiting and not waiting.ended
    recorded = rollouts.promote(waiting.rollout_id)
    assert recorded.phase == "waiting"  # recorded only: the next drive acts on it
    done = rollouts.resume(waiting.rollout_id)
    assert (done.phase, done.weights) == ("succeeded", {"v12": 100.0})
    kinds = [e.kind for e in rollouts.events(done.rollout_id)]
    assert "command.promote" in kinds
    with pytest.raises(UsageError, match="already ended"):
        rollouts.promote(done.rollout_id)
    with pytest.raises(UsageError, match="already ended"):
        rollouts.abort(done.rollout_id)


def test_on_wait_answers_the_wait(rollouts: Rollouts, tmp_path: Path) -> None:
    seen: list[Outcome] = []

    def decide(so_far: Outcome) -> str:
        seen.append(so_far)
        return "abort"

    aborted = rollouts.run(APPROVAL, on_wait=decide)  # type: ignore[arg-type]
    assert [o.phase for o in seen] == ["waiting"] and seen[0].waiting_for == "approval"
    assert aborted.phase == "rolled_back" and aborted.weights == {"v11": 100.0}
    with Rollouts(tmp_path / "other") as other:
        promoted = other.run(APPROVAL, on_wait="promote")
    assert promoted.phase == "succeeded"


def test_abort_rolls_back_at_once(rollouts: Rollouts) -> None:
    waiting = rollouts.run(APPROVAL)
    rolled_back = rollouts.abort(waiting.rollout_id)
    assert (rolled_back.phase, rolled_back.exit_code) == ("rolled_back", 1)
    assert rolled_back.weights == {"v11": 100.0} and "abort" in (rolled_back.reason or "")


def test_abort_while_another_runner_drives_leaves_the_rollback_to_it(tmp_path: Path) -> None:
    store = open_store(tmp_path / "state")
    with Rollouts(store, holder="here") as here:
        waiting = here.run(APPROVAL)
        record = store.get_rollout(waiting.rollout_id)
        lease = store.acquire_lease(record.endpoint_key, "someone@else pid 1", 600)
        with pytest.raises(LeaseHeld):
            here.drive(waiting.rollout_id)
        recorded = here.abort(waiting.rollout_id)
        assert recorded.phase == "waiting" and not recorded.ended
        store.release_lease(lease)
        done = here.resume(waiting.rollout_id)
        assert done.phase == "rolled_back"
    store.get_rollout(waiting.rollout_id)  # a store it was given stays open
    store.close()


def test_stop_interrupts_between_two_ticks_and_resume_continues(rollouts: Rollouts) -> None:
    events: list[Event] = []
    driving: list[Rollouts] = []

    def on_event(event: Event) -> None:
        events.append(event)
        if event.kind == "look" and len(driving) == 1:
            driving.pop().stop()  # once

    with Rollouts(rollouts.store, on_event=on_event) as watched:
        driving.append(watched)
        stopped = watched.run(GOOD)
        assert stopped.interrupted and stopped.exit_code == 3 and not stopped.ended
        done = watched.resume(stopped.rollout_id)
    assert done.phase == "succeeded" and not done.interrupted
    assert events and events[0].kind == "started"


def test_a_clock_given_is_the_one_used(rollouts: Rollouts) -> None:
    clock = VirtualClock(2_000_000_000.0)
    done = rollouts.run(GOOD, clock=clock)
    assert done.phase == "succeeded"
    events = rollouts.events(done.rollout_id)
    assert events[0].at >= 2_000_000_000.0 and events[-1].at == clock.now()
    assert clock.now() - 2_000_000_000.0 > 20 * 60  # the plan's steps, simulated


def test_status_and_list(rollouts: Rollouts) -> None:
    with pytest.raises(UsageError, match="no rollouts"):
        rollouts.status()
    first = rollouts.run(GOOD)
    second = rollouts.run(APPROVAL)
    assert rollouts.status() == rollouts.status(second.rollout_id)
    assert [o.rollout_id for o in rollouts.list_rollouts()] == [
        second.rollout_id,
        first.rollout_id,
    ]
    assert [o.rollout_id for o in rollouts.list_rollouts(active_only=True)] == [second.rollout_id]
    status = rollouts.status(first.rollout_id)
    assert status.verdict == "pass" and status.last_verdict["outcome"] == "pass"
    assert {g.name for g in status.gates} >= {"errors", "p99"}
    with pytest.raises(UsageError) as caught:
        rollouts.status("no-such-rollout")
    assert caught.value.exit_code == ExitCode.USAGE


# ------------------------------------------------------------------------------ errors, stores


def test_plans_load_from_a_file_or_a_string_and_errors_carry_exit_codes(
    rollouts: Rollouts,
) -> None:
    assert load_plan(GOOD).plan.name == parse_plan(GOOD.read_text(), "g.yaml").plan.name
    with pytest.raises(PlanError) as caught:
        parse_plan("version: 1\nname: x\n", "x.yaml")
    assert isinstance(caught.value, MlrolloutError) and caught.value.exit_code == 4
    assert str(caught.value).startswith("x.yaml:")
    with pytest.raises(PlanError):
        rollouts.create("no/such/plan.yaml")


def test_open_store_by_directory_file_or_url(tmp_path: Path) -> None:
    by_dir = open_store(str(tmp_path / "dir"))
    by_file = open_store(tmp_path / "x.sqlite")
    assert isinstance(by_dir, SqliteStateStore) and isinstance(by_file, SqliteStateStore)
    assert (tmp_path / "dir" / "state.db").is_file() and (tmp_path / "x.sqlite").is_file()
    by_dir.close()
    by_file.close()
    with pytest.raises(ProviderUnavailable) as caught:
        open_store("nosuch://bucket/prefix")
    assert caught.value.exit_code == ExitCode.PROVIDER and "sqlite" in (caught.value.hint or "")


def test_the_cli_opens_stores_the_same_way(tmp_path: Path) -> None:
    from mlrollout.cli.common import Settings

    store = Settings(state=str(tmp_path / "cli.db")).store()
    assert isinstance(store, SqliteStateStore) and (tmp_path / "cli.db").is_file()
    store.close()


def test_the_api_module_says_what_it_exports() -> None:
    import mlrollout.api as api

    missing = [name for name in api.__all__ if not hasattr(api, name)]
    assert missing == []
    assert "Rollouts" in textwrap.dedent(api.__doc__ or "")
