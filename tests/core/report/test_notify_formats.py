"""Per-hook notifications: Slack and Teams bodies, event filters, a token and a URL from named
environment variables, and who gave a command — against a local receiver over real HTTP."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mlrollout.cli.app import main
from mlrollout.engine.runner import Runner, actor
from mlrollout.errors import PlanError
from mlrollout.plan.loader import parse_plan
from mlrollout.state.sqlite import SqliteStateStore

PLAN = Path(__file__).parents[3] / "plans" / "local-canary-bad.yaml"


class Receiver:
    """A local HTTP server that keeps every POST: path, headers, JSON body."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", "0"))
                posts.append(
                    {
                        "path": self.path,
                        "auth": self.headers.get("Authorization"),
                        "body": json.loads(self.rfile.read(size)),
                    }
                )
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[dict[str, Any]]:
        return [p for p in self.posts if p["path"] == path]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def with_notify(notify: str) -> str:
    return PLAN.read_text().replace("rollback:\n", f"notify:\n{notify}\nrollback:\n")


def run(tmp_path: Path, text: str) -> str:
    store = SqliteStateStore(tmp_path / "state.db")
    runner = Runner(store)
    record = runner.create(parse_plan(text, "plan.yaml"))
    runner.drive(record.id)
    return record.id


def test_slack_teams_and_json_hooks_each_get_their_own_body(tmp_path, receiver, monkeypatch):
    monkeypatch.setenv("TEAMS_URL", f"{receiver.url}/teams")
    monkeypatch.setenv("SLACK_TOKEN", "xoxb-secret")
    notify = (
        f"  - {{webhook: '{receiver.url}/slack', format: slack, token_env: SLACK_TOKEN}}\n"
        "  - {url_env: TEAMS_URL, format: teams, on: [rollback]}\n"
        f"  - {{webhook: '{receiver.url}/json', on: [started, promoted]}}"
    )
    rid = run(tmp_path, with_notify(notify))
    slack = receiver.at("/slack")
    assert slack and all(p["auth"] == "Bearer xoxb-secret" for p in slack)
    first = slack[0]["body"]
    assert set(first) == {"text", "blocks"} and rid in first["text"]
    assert first["blocks"][0]["type"] == "section"
    teams = receiver.at("/teams")
    # only the rollback: its start and its end, red
    assert [p["body"]["title"].split(": ")[-1] for p in teams] == [
        "rollback.started",
        "rolled_back",
    ]
    assert all(
        p["body"]["@type"] == "MessageCard" and p["body"]["themeColor"] == "D13438" for p in teams
    )
    assert all(p["auth"] is None for p in teams)
    plain = receiver.at("/json")
    assert [p["body"]["kind"] for p in plain] == ["started"]  # rolled back: never promoted
    # the token and the environment URL are in no record
    store = SqliteStateStore(tmp_path / "state.db")
    journal = json.dumps([e.data for e in store.events(rid)]) + json.dumps(
        store.get_rollout(rid).plan
    )
    assert "xoxb-secret" not in journal and "/teams" not in journal


def test_a_hook_whose_variable_is_missing_is_skipped_with_a_warning(tmp_path, receiver, capsys):
    notify = "  - {url_env: NOT_SET_ANYWHERE_URL}\n" + f"  - {{webhook: '{receiver.url}/ok'}}"
    run(tmp_path, with_notify(notify))
    err = capsys.readouterr().err
    assert "NOT_SET_ANYWHERE_URL is not set" in err and "skipped" in err
    assert receiver.at("/ok")  # the other hook still works


@pytest.mark.parametrize(
    ("notify", "expected"),
    [
        ("  - {format: slack}", "exactly one of webhook"),
        ("  - {webhook: 'https://x.example', url_env: X}", "exactly one of webhook"),
        ("  - {webhook: 'https://x.example', on: [rolback]}", "did you mean 'rollback'"),
        ("  - {webhook: 'https://x.example', format: discord}", "expected 'json', 'slack'"),
        ("  - {url_env: 'not a name'}", "url_env"),
    ],
)
def test_bad_notify_entries_are_plan_errors(notify, expected):
    with pytest.raises(PlanError, match=expected):
        parse_plan(with_notify(notify), "plan.yaml")


def test_who_aborted_and_why_is_recorded_and_sent(tmp_path, receiver, monkeypatch, capsys):
    monkeypatch.setenv("MLROLLOUT_ACTOR", "alice")
    approval = Path(__file__).parents[3] / "plans" / "local-approval.yaml"
    text = approval.read_text().replace(
        "analysis:\n",
        f"notify:\n  - {{webhook: '{receiver.url}/hook', on: [rollback]}}\nanalysis:\n",
    )
    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    state = str(tmp_path / "state")
    with pytest.raises(SystemExit) as done:
        main(["--state", state, "run", "--yes", str(plan)])
    assert done.value.code == 3  # waiting for approval
    store = SqliteStateStore(tmp_path / "state" / "state.db")
    [record] = store.list_rollouts()
    with pytest.raises(SystemExit) as done:
        main(["--state", state, "abort", record.id, "--reason", "conversion dropped"])
    assert done.value.code == 0
    events = store.events(record.id)
    [command] = [e for e in events if e.kind == "command.abort"]
    assert command.data["by"] == "alice" and command.data["reason"] == "conversion dropped"
    assert (
        "aborted by alice (conversion dropped)" in store.get_rollout(record.id).snapshot["reason"]
    )
    messages = [p["body"]["message"] for p in receiver.at("/hook")]
    assert any("aborted by alice (conversion dropped)" in m for m in messages), messages


def test_the_actor_comes_from_mlrollout_then_the_ci_then_the_login():
    assert actor({"MLROLLOUT_ACTOR": "a", "GITHUB_ACTOR": "b"}) == "a"
    assert actor({"GITHUB_ACTOR": "b"}) == "b"
    assert actor({"GITLAB_USER_LOGIN": "c"}) == "c"
    assert actor({}) != ""
