"""The plan's notify webhooks, against a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from mlrollout.clock import VirtualClock
from mlrollout.engine.phases import Phase
from mlrollout.engine.runner import Runner
from mlrollout.plan.loader import parse_plan
from mlrollout.state.sqlite import SqliteStateStore

PLAN = """
version: 1
name: hooks
target: {provider: local, endpoint: ep}
candidate: {name: v2}
strategy: {type: canary, steps: [{weight: 20}, {analyze: 5m}]}
analysis:
  min_requests: 50
  gates: [{name: errors, metric: error_rate, vs_baseline: {max_increase: 50%}}]
notify:
  - webhook: URL
  - webhook: http://127.0.0.1:9/closed
sandbox:
  rps: 100
  variants: {v1: {error_rate: 0.01}, v2: {error_rate: 0.01}}
"""


class Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], dict[str, Any]]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append((dict(self.headers), json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.received = []
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook?key=abc"
    server.shutdown()
    server.server_close()


def test_webhooks_hear_the_changes_and_a_dead_one_never_stops_the_rollout(
    tmp_path: Path,
    receiver: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MLROLLOUT_WEBHOOK_TOKEN", "s3cr3t-hook-token")
    store = SqliteStateStore(tmp_path / "s.db")
    runner = Runner(store)
    record = runner.create(parse_plan(PLAN.replace("URL", receiver), "p.yaml"))
    outcome = runner.drive(record.id, clock=VirtualClock(1_800_000_000.0))
    assert outcome.phase == Phase.SUCCEEDED
    kinds = [payload["kind"] for _, payload in Receiver.received]
    assert kinds[0] == "started" and kinds[-1] == "promoted"
    assert "set_traffic.applied" in kinds and "look" not in kinds
    headers, last = Receiver.received[-1]
    assert headers["Authorization"] == "Bearer s3cr3t-hook-token"
    assert last["rollout"] == record.id and last["phase"] == "succeeded"
    assert "v2 serves 100%" in last["message"]
    err = capsys.readouterr().err
    assert err.count("webhook http://127.0.0.1:9/closed failed") == 1  # once, not per event
    assert "s3cr3t" not in err and "key=abc" not in err


def test_a_webhook_url_with_credentials_is_a_plan_error(tmp_path: Path) -> None:
    from mlrollout.errors import PlanError

    with pytest.raises(PlanError, match="carries credentials"):
        parse_plan(PLAN.replace("URL", "https://bot:pw@hooks.example.com/x"), "p.yaml")
