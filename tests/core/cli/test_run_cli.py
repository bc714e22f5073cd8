"""`mlrollout run|status|report|list|promote|abort|resume|demo` on the local sandbox, end to end,
with the exit codes CI relies on (DESIGN.md): 0 promoted, 1 rolled back, 2 usage, 3 waiting,
4 invalid plan, 5 needs a human, 6 state/provider unavailable before any change."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from mlrollout.state.sqlite import open_sqlite_store

STARTED = re.compile(r"rollout (\S+) started")


def endpoint_record(state: str, endpoint: str) -> dict:
    store = open_sqlite_store(state)
    try:
        record = store.get_value("sandbox", endpoint)
    finally:
        store.close()
    assert record is not None, f"no sandbox endpoint {endpoint!r} in {state}"
    return record


def weights(state: str, endpoint: str) -> dict[str, float]:
    record = endpoint_record(state, endpoint)
    return {name: float(v["weight"]) for name, v in record["variants"].items()}


def started_id(result) -> str:
    match = STARTED.search(result.err)
    assert match, result.err
    return match.group(1)


def no_traceback(result) -> None:
    assert "Traceback" not in result.both
    assert "internal error" not in result.both


def status_json(cli, state: str, rollout_id: str) -> dict:
    result = cli("--state", state, "status", rollout_id, "--output", "json")
    assert result.code == 0, result.both
    return json.loads(result.out)


# ------------------------------------------------------------------------- run to the end


def test_bad_candidate_is_rolled_back(cli, state, plans):
    result = cli("--state", state, "run", "--yes", plans / "local-canary-bad.yaml")
    assert result.code == 1, result.both
    no_traceback(result)
    rid = started_id(result)

    status = status_json(cli, state, rid)
    assert status["id"] == rid
    assert status["phase"] == "rolled_back"
    assert status["reason"].startswith("errors"), status["reason"]  # names the failing gate
    failing = [g for g in status["gates"] if g["outcome"] == "fail"]
    assert [g["name"] for g in failing] == ["errors"]
    assert status["weights"] == {"v6": 100.0}

    report = cli("--state", state, "report", rid)
    assert report.code == 0, report.both
    assert report.out.startswith("# ")
    assert "rolled back" in report.out.lower()
    assert status["reason"] in report.out
    assert rid in report.out

    # the endpoint is left as it was: baseline alone at 100 %, candidate removed
    assert weights(state, "churn-scoring") == {"v6": 100.0}
    assert endpoint_record(state, "churn-scoring")["order"] == ["v6"]


def test_good_candidate_is_promoted(cli, state, plans):
    result = cli("--state", state, "run", "--yes", plans / "local-canary-good.yaml")
    assert result.code == 0, result.both
    no_traceback(result)
    rid = started_id(result)
    status = status_json(cli, state, rid)
    assert status["phase"] == "succeeded"
    assert weights(state, "churn-scoring") == {"v8": 100.0}
    report = cli("--state", state, "report", rid)
    assert report.code == 0
    assert "promoted" in report.out.lower() or "succeeded" in report.out.lower()


def test_list_shows_every_rollout_newest_first(cli, state, plans):
    bad = started_id(cli("--state", state, "run", "--yes", plans / "local-canary-bad.yaml"))
    good = started_id(cli("--state", state, "run", "--yes", plans / "local-canary-good.yaml"))

    text = cli("--state", state, "list")
    assert text.code == 0, text.both
    assert bad in text.out and good in text.out  # whole ids: a user copies them from here
    assert "rolled_back" in text.out and "succeeded" in text.out

    rows = json.loads(cli("--state", state, "list", "--output", "json").out)
    assert [(r["id"], r["phase"]) for r in rows] == [(good, "succeeded"), (bad, "rolled_back")]
    assert json.loads(cli("--state", state, "list", "--active", "-o", "json").out) == []


def test_list_of_an_empty_state(cli, state):
    result = cli("--state", state, "list")
    assert result.code == 0
    assert "no rollouts" in result.out
    assert json.loads(cli("--state", state, "list", "-o", "json").out) == []


def test_run_json_is_one_object_per_line(cli, state, plans):
    result = cli(
        "--state", state, "run", "--yes", "--output", "json", plans / "local-canary-bad.yaml"
    )
    assert result.code == 1, result.both
    lines = result.out.splitlines()
    assert len(lines) >= 5
    events = [json.loads(line) for line in lines]  # every line parses, nothing else on stdout
    assert all(isinstance(e, dict) for e in events)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs)), seqs
    assert len({e["rollout"] for e in events}) == 1
    assert events[0]["kind"] == "started"
    assert events[-1]["kind"] == "rolled_back"
    for e in events:
        assert {"rollout", "seq", "at", "kind", "phase", "data"} <= set(e), e
    # the stream is the journal
    journal = json.loads(cli("--state", state, "report", events[0]["rollout"], "-o", "json").out)
    assert [e["seq"] for e in journal["events"]] == seqs


def test_run_without_yes_and_without_a_terminal_is_a_usage_error(cli, state, plans):
    result = cli("--state", state, "run", plans / "local-canary-good.yaml")
    assert result.code == 2, result.both
    no_traceback(result)
    assert "--yes" in result.err
    assert json.loads(cli("--state", state, "list", "-o", "json").out) == []  # nothing started


def test_run_of_an_invalid_plan_exits_4_and_starts_nothing(cli, state, tmp_path, plans):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        (plans / "local-canary-good.yaml").read_text().replace("weight: 50", "weight: 150")
    )
    result = cli("--state", state, "run", "--yes", bad)
    assert result.code == 4, result.both
    no_traceback(result)
    assert re.search(
        rf"^{re.escape(str(bad))}:\d+:\d+: strategy\.steps\[2\]\.weight: ", result.err, re.M
    ), result.err
    assert json.loads(cli("--state", state, "list", "-o", "json").out) == []


def test_run_of_a_missing_plan_exits_4(cli, state, tmp_path):
    result = cli("--state", state, "run", "--yes", tmp_path / "nope.yaml")
    assert result.code == 4, result.both
    no_traceback(result)


# -------------------------------------------------------------------- humans in the loop


def start_waiting(cli, state: str, plans: Path) -> str:
    result = cli("--state", state, "run", "--yes", plans / "local-approval.yaml")
    assert result.code == 3, result.both  # stopped at the approve step: --yes never approves
    rid = started_id(result)
    assert rid in result.err and "promote" in result.err  # tells what to do next
    status = status_json(cli, state, rid)
    assert status["phase"] == "waiting"
    assert status["weights"] == {"v11": 80.0, "v12": 20.0}
    return rid


def test_second_run_on_an_active_endpoint_needs_a_human(cli, state, plans):
    rid = start_waiting(cli, state, plans)
    result = cli("--state", state, "run", "--yes", plans / "local-approval.yaml")
    assert result.code == 5, result.both
    no_traceback(result)
    assert rid in result.err
    # nothing changed on the endpoint, and no second rollout was recorded
    assert weights(state, "recsys") == {"v11": 80.0, "v12": 20.0}
    assert [r["id"] for r in json.loads(cli("--state", state, "list", "-o", "json").out)] == [rid]


def test_another_endpoint_is_not_blocked(cli, state, plans):
    start_waiting(cli, state, plans)
    result = cli("--state", state, "run", "--yes", plans / "local-linear.yaml")
    assert result.code == 0, result.both


def test_approval_promote_then_resume(cli, state, plans):
    rid = start_waiting(cli, state, plans)
    promote = cli("--state", state, "promote", rid)
    assert promote.code == 0, promote.both
    assert status_json(cli, state, rid)["phase"] != "succeeded"  # promote only records the answer
    resume = cli("--state", state, "resume", rid)
    assert resume.code == 0, resume.both
    assert status_json(cli, state, rid)["phase"] == "succeeded"
    assert weights(state, "recsys") == {"v12": 100.0}
    # resuming an ended rollout reports its outcome again
    again = cli("--state", state, "resume", rid)
    assert again.code == 0, again.both


def test_approval_by_unique_prefix(cli, state, plans):
    rid = start_waiting(cli, state, plans)
    assert cli("--state", state, "promote", rid[:-3]).code == 0
    assert cli("--state", state, "resume", rid[:-3]).code == 0
    assert weights(state, "recsys") == {"v12": 100.0}


def test_abort_restores_the_baseline(cli, state, plans):
    rid = start_waiting(cli, state, plans)
    result = cli("--state", state, "abort", rid)
    assert result.code == 0, result.both
    no_traceback(result)
    status = status_json(cli, state, rid)
    assert status["phase"] == "rolled_back"
    assert "abort" in status["reason"]
    assert weights(state, "recsys") == {"v11": 100.0}
    assert endpoint_record(state, "recsys")["order"] == ["v11"]
    # an ended rollout: resume tells its outcome (1 = rolled back), promote/abort are usage errors
    assert cli("--state", state, "resume", rid).code == 1
    for command in ("promote", "abort"):
        late = cli("--state", state, command, rid)
        assert late.code == 2, late.both
        assert "already ended" in late.err
    # and the endpoint is free again
    assert cli("--state", state, "run", "--yes", plans / "local-approval.yaml").code == 3


@pytest.mark.parametrize(
    "args",
    [
        ("status", "no-such-rollout"),
        ("status", "no-such-rollout", "-o", "json"),
        ("report", "no-such-rollout"),
        ("resume", "no-such-rollout"),
        ("promote", "no-such-rollout"),
        ("abort", "no-such-rollout"),
    ],
    ids=lambda a: " ".join(a),
)
def test_unknown_rollout_id_is_a_usage_error(cli, state, plans, args):
    cli("--state", state, "run", "--yes", plans / "local-canary-bad.yaml")
    result = cli("--state", state, *args)
    assert result.code == 2, result.both
    no_traceback(result)
    assert "no-such-rollout" in result.err


def test_status_without_any_rollout_is_a_usage_error(cli, state):
    result = cli("--state", state, "status")
    assert result.code == 2, result.both
    no_traceback(result)


def test_status_defaults_to_the_newest(cli, state, plans):
    cli("--state", state, "run", "--yes", plans / "local-canary-bad.yaml")
    good = started_id(cli("--state", state, "run", "--yes", plans / "local-canary-good.yaml"))
    result = cli("--state", state, "status", "-o", "json")
    assert result.code == 0
    assert json.loads(result.out)["id"] == good


# ------------------------------------------------------------------------- broken state


@pytest.mark.parametrize(
    "args",
    [("list",), ("status",), ("run", "--yes", "PLAN"), ("reconcile",)],
    ids=lambda a: a[0],
)
def test_corrupt_state_needs_a_human_and_is_left_untouched(cli, tmp_path, plans, args):
    folder = tmp_path / "state"
    folder.mkdir()
    db = folder / "state.db"
    garbage = bytes(range(256)) * 64
    db.write_bytes(garbage)
    argv = [str(plans / "local-canary-good.yaml") if a == "PLAN" else a for a in args]
    result = cli("--state", folder, *argv)
    assert result.code == 5, result.both
    no_traceback(result)
    assert str(db) in result.err
    assert db.read_bytes() == garbage
    assert sorted(p.name for p in folder.iterdir()) == ["state.db"]


def test_foreign_sqlite_file_is_refused_and_left_untouched(cli, tmp_path, plans):
    folder = tmp_path / "state"
    folder.mkdir()
    db = folder / "state.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE mine (x)")
    conn.execute("INSERT INTO mine VALUES (1)")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    result = cli("--state", folder, "run", "--yes", plans / "local-canary-good.yaml")
    assert result.code in (5, 6), result.both
    no_traceback(result)
    assert db.read_bytes() == before


@pytest.mark.parametrize("args", [("list",), ("run", "--yes", "PLAN")], ids=lambda a: a[0])
def test_state_under_a_regular_file_is_unavailable(cli, tmp_path, plans, args):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    argv = [str(plans / "local-canary-good.yaml") if a == "PLAN" else a for a in args]
    result = cli("--state", blocker / "state", *argv)
    assert result.code == 6, result.both
    no_traceback(result)
    assert "--state" in result.err  # the hint says how to fix it
    assert blocker.read_text() == "not a directory\n"


def test_state_as_a_db_file_path(cli, tmp_path, plans):
    db = tmp_path / "rollouts.db"
    assert cli("--state", db, "run", "--yes", plans / "local-canary-good.yaml").code == 0
    assert db.is_file()
    assert weights(str(db), "churn-scoring") == {"v8": 100.0}


# --------------------------------------------------------------------------------- demo


def test_demo_shows_both_outcomes(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = str(tmp_path / "state")
    result = cli("--state", state, "demo")
    assert result.code == 0, result.both
    no_traceback(result)
    assert "rolled back (exit code 1)" in result.out
    assert "promoted (exit code 0)" in result.out
    # the ids it suggests to look at are real
    ids = re.findall(r"(?:status|report) (\S+)", result.out)
    assert len(ids) == 3, result.out
    demo_state = str(Path(state) / "demo")
    for rid in ids:
        assert cli("--state", demo_state, "status", rid, "-o", "json").code == 0
    # run twice: starts fresh, same outcome
    assert cli("--state", state, "demo").code == 0


def test_demo_json(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("--state", tmp_path / "state", "demo", "--output", "json")
    assert result.code == 0, result.both
    lines = [json.loads(line) for line in result.out.splitlines()]
    summary = lines[-1]["demo"]
    assert [r["exit_code"] for r in summary] == [1, 1, 0]
    assert [r["phase"] for r in summary] == ["rolled_back", "rolled_back", "succeeded"]


def test_demo_with_a_db_file_state(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "rollouts.db"
    assert cli("--state", db, "list").code == 0  # the file exists and is valid state
    result = cli("--state", db, "demo")
    assert result.code == 0, result.both


def test_state_from_the_environment(cli, tmp_path, plans, monkeypatch):
    monkeypatch.setenv("MLROLLOUT_STATE", str(tmp_path / "from-env"))
    monkeypatch.chdir(tmp_path)
    assert cli("run", "--yes", plans / "local-canary-good.yaml").code == 0
    assert (tmp_path / "from-env" / "state.db").is_file()
    assert not (tmp_path / ".mlrollout").exists()


def test_status_text_for_people(cli, state, plans):
    rid = started_id(cli("--state", state, "run", "--yes", plans / "local-canary-bad.yaml"))
    result = cli("--state", state, "status", rid)
    assert result.code == 0, result.both
    assert rid in result.out
    assert "rolled_back" in result.out or "rolled back" in result.out
    assert "errors" in result.out and "fail" in result.out


def test_resume_without_an_answer_keeps_waiting(cli, state, plans):
    rid = start_waiting(cli, state, plans)
    result = cli("--state", state, "resume", rid)
    assert result.code == 3, result.both
    assert status_json(cli, state, rid)["phase"] == "waiting"
    assert weights(state, "recsys") == {"v11": 80.0, "v12": 20.0}


def test_promote_full_then_reconcile(cli, state, plans):
    rid = start_waiting(cli, state, plans)
    assert cli("--state", state, "promote", "--full", rid).code == 0
    result = cli("--state", state, "reconcile", "-o", "json")
    assert result.code == 0, result.both
    assert json.loads(result.out) == {
        "rollouts": [{"id": rid, "phase": "succeeded", "exit_code": 0}]
    }
    assert weights(state, "recsys") == {"v12": 100.0}
    assert json.loads(cli("--state", state, "reconcile", "-o", "json").out) == {"rollouts": []}


# ------------------------------------------ the root's options after the command (issue 11)

STORE_COMMANDS = [
    "run", "resume", "status", "list", "promote", "abort", "reconcile", "report", "demo",
]  # fmt: skip


@pytest.mark.parametrize("command", STORE_COMMANDS)
def test_every_command_of_the_store_shows_state_and_debug_in_its_help(cli, command):
    result = cli(command, "--help")
    assert result.code == 0, result.both
    assert "--state" in result.out and "MLROLLOUT_STATE" in result.out
    assert "--debug" in result.out


def test_state_after_the_command_is_the_store_every_command_uses(cli, tmp_path, plans, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLROLLOUT_STATE", str(tmp_path / "from-env"))
    after = str(tmp_path / "after")
    waiting = cli("run", plans / "local-approval.yaml", "--yes", "--state", after)
    assert waiting.code == 3, waiting.both
    rid = started_id(waiting)
    assert (tmp_path / "after" / "state.db").is_file()
    # given after the command, --state wins over the environment and over the root's --state
    listed = cli("--state", tmp_path / "root", "list", "-o", "json", "--state", after)
    assert [r["id"] for r in json.loads(listed.out)] == [rid], listed.both
    assert cli("status", rid, "-o", "json", "--state", after).code == 0
    assert cli("promote", rid, "--state", after).code == 0
    assert cli("resume", rid, "--state", after).code == 0
    report = cli("report", rid, "--state", after)
    assert report.code == 0 and rid in report.out, report.both
    reconcile = cli("reconcile", "-o", "json", "--state", after)
    assert reconcile.code == 0 and json.loads(reconcile.out)["rollouts"] == [], reconcile.both
    other = tmp_path / "other-endpoint.yaml"
    other.write_text(edit_endpoint((plans / "local-approval.yaml").read_text(), "recsys-2"))
    second = started_id(cli("run", "--yes", other, "--state", after))
    assert cli("abort", second, "--state", after).code == 0
    assert weights(after, "recsys-2") == {"v11": 100.0}
    assert cli("demo", "-o", "json", "--state", after).code == 0
    assert (tmp_path / "after" / "demo").is_dir()  # the demo keeps beside the state it was given
    for unused in ("from-env", "root", ".mlrollout"):
        assert not (tmp_path / unused).exists(), unused


def edit_endpoint(text: str, endpoint: str) -> str:
    assert "endpoint: recsys\n" in text
    return text.replace("endpoint: recsys\n", f"endpoint: {endpoint}\n")


def test_debug_after_the_command_is_accepted(cli, tmp_path, plans):
    assert cli("plan", "validate", plans / "local-canary-good.yaml", "--debug").code == 0
    assert cli("providers", "--debug").code == 0
    assert cli("list", "--state", tmp_path / "s", "--debug").code == 0
    failing = cli("status", "--debug", "--state", tmp_path / "s")
    assert failing.code == 2, failing.both  # no rollouts: a usage error, with its traceback
    assert "Traceback" in failing.err and "no rollouts" in failing.err


# ----------------------------------------------------------------------- report formats


def test_report_refuses_a_format_it_cannot_write(cli, state, plans):
    rid = started_id(cli("--state", state, "run", "--yes", plans / "local-canary-good.yaml"))
    result = cli("--state", state, "report", rid, "-o", "pdf")
    assert result.code == 2, result.both
    assert result.out == ""  # no Markdown in its place
    named = [line for line in result.err.splitlines() if "pdf" in line]
    assert len(named) == 1 and "'md'" in named[0] and "'html'" in named[0], result.err
    assert "<md|markdown|html|junit|json>" in cli("report", "--help").out
    assert json.loads(cli("--state", state, "report", rid, "-o", "json").out)["rollout"] == rid


# ----------------------------------------------------------------------------- providers


def test_providers_lists_only_the_strategies_that_run(cli, monkeypatch):
    from mlrollout.contracts import ENGINE_STRATEGIES
    from mlrollout.sandbox.provider import LocalProviderSpec

    # a platform that declares more than the engine runs (a strategy of a newer release)
    declared = frozenset({"canary", "linear", "shadow", "blue_green", "ab_test", "interleaving"})
    monkeypatch.setattr(LocalProviderSpec, "strategies", declared, raising=False)
    rows = json.loads(cli("providers", "-o", "json").out)
    endpoints = {row["name"]: row for row in rows if row["kind"] == "endpoint"}
    assert endpoints["local"]["strategies"] == sorted(declared - {"interleaving"})
    for row in endpoints.values():
        assert set(row.get("strategies", [])) <= ENGINE_STRATEGIES, row
    text = cli("providers").out
    assert not any("interleaving" in line for line in text.splitlines())


AB_PLAN = """\
version: 1
name: s
target: {provider: local, endpoint: ep}
candidate: {name: v2}
strategy: {type: ab_test, metric: conversion, max_duration: 7d}
analysis:
  gates: [{name: conversion, metric: custom, query: {metric: conversion}, direction: decrease}]
sandbox: {variants: {v1: {custom: {conversion: 0.03}}, v2: {custom: {conversion: 0.03}}}}
"""


def test_providers_and_validate_share_what_the_engine_runs(cli, tmp_path, monkeypatch):
    from mlrollout import contracts
    from mlrollout.sandbox.provider import LocalProviderSpec

    declared = frozenset({"canary", "linear", "ab_test"})
    monkeypatch.setattr(LocalProviderSpec, "strategies", declared, raising=False)
    # as if this release's engine did not run ab_test yet
    monkeypatch.setattr(contracts, "ENGINE_STRATEGIES", contracts.ENGINE_STRATEGIES - {"ab_test"})
    plan = tmp_path / "ab.yaml"
    plan.write_text(AB_PLAN)
    refused = cli("plan", "validate", plan)
    assert refused.code == 4 and "supported now: canary, linear" in refused.err, refused.both

    # the day the engine runs it, both say so: one source of truth
    monkeypatch.setattr(contracts, "ENGINE_STRATEGIES", contracts.ENGINE_STRATEGIES | {"ab_test"})
    rows = json.loads(cli("providers", "-o", "json").out)
    local = next(row for row in rows if row["name"] == "local")
    assert local["strategies"] == ["ab_test", "canary", "linear"]
    assert cli("plan", "validate", plan).code == 0


@pytest.mark.parametrize("share", ["150", "0", "most"])
def test_an_api_share_that_is_not_a_percent_is_refused_before_anything_starts(
    cli, state, plans, share
):
    result = cli(
        "--state", state, "run", "--yes", plans / "local-canary-good.yaml", "--api-share", share
    )
    assert result.code == 2, result.both
    assert f"--api-share: {share!r} is not a percent in 1..100" in result.err
    no_traceback(result)
    assert cli("--state", state, "list", "-o", "json").out.strip() in ("[]", "")


def test_the_api_share_given_is_the_share_of_every_budget_of_the_run(cli, state, plans):
    from mlrollout import budget

    result = cli(
        "--state", state, "run", "--yes", plans / "local-canary-good.yaml", "--api-share", "30%"
    )
    assert result.code == 0, result.both
    assert budget.current_share() == 30.0
    assert budget.bucket("sagemaker", "p@r", "sagemaker", "read").full_rate == 3.0


def test_status_shows_what_the_runners_spent_of_the_rollouts_platform_budget(cli, state, plans):
    import time

    from mlrollout import budget
    from mlrollout.clock import VirtualClock

    result = cli("--state", state, "run", "--yes", plans / "local-canary-good.yaml")
    rid = started_id(result)
    assert status_json(cli, state, rid)["api_budget"] == []  # the sandbox has no API limits
    # a runner of the same store, say on another machine, published its figures
    meter = budget.Meter("local", "acct@region", VirtualClock(0.0))
    for _ in range(3):
        meter.spend("sagemaker", "describe_endpoint").take()
    store = open_sqlite_store(state)
    assert budget.publish(store, now=time.time(), runner="other-host:42")
    [row] = status_json(cli, state, rid)["api_budget"]
    assert (row["scope"], row["calls"], row["runners"]) == ("acct@region", 3, ["other-host:42"])
    text = cli("--state", state, "status", rid).out
    assert "## API budget" in text and "| local | acct@region | sagemaker | read |" in text
