"""The plan's notify webhooks, against a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from mlrollout.clock import VirtualClock
from mlrollout.engine.engine import RolloutState
from mlrollout.engine.phases import Phase
from mlrollout.engine.runner import Runner
from mlrollout.plan.loader import parse_plan
from mlrollout.report import webhook
from mlrollout.report.webhook import NOTIFY_KINDS, WebhookNotifier
from mlrollout.state.base import Event
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
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook?channel=ops"
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
    assert "s3cr3t" not in err and "channel=ops" not in err  # nor the query string


def test_a_webhook_url_with_credentials_is_a_plan_error(tmp_path: Path) -> None:
    from mlrollout.errors import PlanError

    with pytest.raises(PlanError, match="carries credentials"):
        parse_plan(PLAN.replace("URL", "https://bot:pw@hooks.example.com/x"), "p.yaml")


# ------------------------------------------------------------- slow receivers never hold it up

DRIBBLE = 0.05  # seconds between two bytes of the answer: far below any per-read timeout
ANSWER = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Dribbler(BaseHTTPRequestHandler):
    """Answers one byte at a time: each read gets data in time, the whole answer takes ~3 s."""

    stop: ClassVar[threading.Event] = threading.Event()
    requests: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Dribbler.requests.append(json.loads(body)["kind"])
        for i in range(len(ANSWER)):
            if Dribbler.stop.wait(DRIBBLE):
                return
            try:
                self.wfile.write(ANSWER[i : i + 1])
                self.wfile.flush()
            except OSError:
                return

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def dribbler() -> Iterator[str]:
    Dribbler.stop = threading.Event()
    Dribbler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Dribbler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/slow?channel=ops"
    Dribbler.stop.set()
    server.shutdown()
    server.server_close()


def _event(kind: str, seq: int) -> tuple[Event, RolloutState]:
    state = RolloutState(candidate="v2", phase="progressing", weights={"v1": 90.0, "v2": 10.0})
    return Event("r-1", seq, 1_800_000_000.0 + seq, kind, {"weights": state.weights}), state


def test_the_listener_only_queues_and_a_dribbling_hook_is_cut_off_at_its_deadline(
    dribbler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    notifier = WebhookNotifier([dribbler], "r-1", "hooks", deadline=0.3, flush_timeout=3.0)
    kinds = ["started", "set_traffic.applied", "promoted"]
    began = time.monotonic()
    for seq, kind in enumerate(kinds, 1):
        notifier(*_event(kind, seq))
    assert time.monotonic() - began < 0.1  # queued, not sent: the engine goes on at once
    began = time.monotonic()
    missing = notifier.close()
    took = time.monotonic() - began
    # three POSTs, each given up after 0.3 s in all, though every byte came within 0.05 s
    assert 0.8 < took < 2.0, took
    assert Dribbler.requests == kinds  # each was tried, in order
    assert missing == 3
    err = capsys.readouterr().err
    assert err.count("warning: webhook http://127.0.0.1:") == 2  # the failure, the summary
    assert err.count("/slow failed (no complete answer within 0.3s)") == 1
    assert "3 of 3 notifications not delivered (3 failed)" in err
    assert "channel=ops" not in err


def test_close_gives_up_after_its_timeout_and_counts_what_was_not_delivered(
    dribbler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    notifier = WebhookNotifier([dribbler], "r-1", "hooks", deadline=0.5, queue_size=3)
    for seq in range(1, 6):  # 5 events into a queue of 3: the 2 oldest waiting are dropped
        notifier(*_event("set_traffic.applied", seq))
    began = time.monotonic()
    missing = notifier.close(0.2)
    assert time.monotonic() - began < 0.4  # bounded by close's timeout, not the POST's deadline
    assert missing == 5
    err = capsys.readouterr().err
    assert "5 of 5 notifications not delivered" in err
    assert "still queued after 0.2s" in err and "dropped from a full queue" in err
    notifier(*_event("promoted", 9))  # after close: ignored, never sent
    assert notifier.close() == 0  # a second close does nothing


SLOW_PLAN = """
version: 1
name: slow-hook
target: {provider: local, endpoint: ep}
candidate: {name: v2}
strategy: {type: canary, steps: [{weight: 20}, {analyze: 5m}, {approve: true}, {weight: 100}]}
analysis:
  min_requests: 50
  gates: [{name: errors, metric: error_rate, vs_baseline: {max_increase: 50%}}]
notify:
  - webhook: URL
sandbox:
  rps: 100
  variants: {v1: {error_rate: 0.01}, v2: {error_rate: CAND_ERR}}
"""


class WallTimes:
    """A listener noting when (wall clock) the engine recorded each event."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def __call__(self, event: Event, state: RolloutState) -> None:
        self.at.setdefault(event.kind, time.monotonic())


def test_a_slow_hook_holds_up_neither_the_rollback_nor_the_end_of_the_run(
    tmp_path: Path,
    dribbler: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(webhook, "DEADLINE", 0.3)
    monkeypatch.setattr(webhook, "FLUSH_TIMEOUT", 0.6)
    store = SqliteStateStore(tmp_path / "s.db")
    times = WallTimes()
    runner = Runner(store, listeners=[times])
    text = SLOW_PLAN.replace("URL", dribbler).replace("CAND_ERR", "0.2")
    record = runner.create(parse_plan(text, "p.yaml"))
    began = time.monotonic()
    outcome = runner.drive(record.id, clock=VirtualClock(1_800_000_000.0))
    took = time.monotonic() - began
    assert outcome.phase == Phase.ROLLED_BACK
    # the decision and the rollback were not held for the hook (each POST of it takes 0.3 s)
    assert times.at["rolled_back"] - began < 0.25, times.at["rolled_back"] - began
    assert took < 0.6 + 1.0, took  # the run's end waits for the hook only FLUSH_TIMEOUT
    err = capsys.readouterr().err
    assert err.count("/slow failed (no complete answer within 0.3s)") == 1
    assert "notifications not delivered" in err and "channel=ops" not in err


def test_abort_is_not_held_up_by_a_slow_hook(
    tmp_path: Path,
    dribbler: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(webhook, "DEADLINE", 0.3)
    monkeypatch.setattr(webhook, "FLUSH_TIMEOUT", 0.3)
    store = SqliteStateStore(tmp_path / "s.db")
    text = SLOW_PLAN.replace("URL", dribbler).replace("CAND_ERR", "0.01")
    record = Runner(store).create(parse_plan(text, "p.yaml"))
    clock = VirtualClock(1_800_000_000.0)
    assert Runner(store).drive(record.id, clock=clock).phase == Phase.WAITING  # at the approve
    times = WallTimes()
    aborting = Runner(store, listeners=[times])
    aborting.command(record.id, "abort")
    began = time.monotonic()
    outcome = aborting.drive(record.id, clock=clock)
    took = time.monotonic() - began
    assert outcome.phase == Phase.ROLLED_BACK and outcome.state.weights == {"v1": 100.0}
    # the rollback was done before the first POST of it (0.3 s) could have been given up on
    assert times.at["rolled_back"] - began < 0.25, times.at["rolled_back"] - began
    assert took < 0.3 + 1.0, took
    err = capsys.readouterr().err
    assert err.count("/slow failed (no complete answer within 0.3s)") == 2  # once per run


def test_a_healthy_receiver_hears_every_event_in_order(tmp_path: Path, receiver: str) -> None:
    store = SqliteStateStore(tmp_path / "s.db")
    runner = Runner(store)
    text = SLOW_PLAN.replace("URL", receiver).replace("CAND_ERR", "0.01")
    record = runner.create(parse_plan(text, "p.yaml"))
    clock = VirtualClock(1_800_000_000.0)
    assert runner.drive(record.id, clock=clock).phase == Phase.WAITING
    runner.command(record.id, "promote")
    assert runner.drive(record.id, clock=clock).phase == Phase.SUCCEEDED
    journal = [e.kind for e in store.events(record.id) if e.kind in NOTIFY_KINDS]
    heard = [payload["kind"] for _, payload in Receiver.received]
    assert heard == journal
    assert heard[0] == "started" and "waiting" in heard and heard[-1] == "promoted"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://bot:pw@hooks.example.com/x?token=abc#frag", "https://hooks.example.com/x"),
        ("https://tok123@hooks.example.com:8443/x?sig=1", "https://hooks.example.com:8443/x"),
        ("http://[::1]:9/h?api_key=k", "http://[::1]:9/h"),
        ("http://h:notaport/x?token=abc", "(an unreadable URL)"),
    ],
)
def test_a_webhook_url_is_shown_without_credentials_or_query(url: str, shown: str) -> None:
    assert webhook._safe(url) == shown
