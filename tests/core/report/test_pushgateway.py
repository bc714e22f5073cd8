"""``notify: [{pushgateway: URL}]``: the rollout's state as Prometheus metrics, against a real
Pushgateway (Debian ``prometheus-pushgateway``) started on loopback for this module, plus small
local HTTP peers for what the gateway cannot show (the bearer token, a slow or absent gateway).

Where the binary is missing the gateway tests skip; under ``MLROLLOUT_REQUIRE_PEERS=1`` (CI)
they fail instead."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mlrollout.cli.app import main
from mlrollout.engine.engine import RolloutState
from mlrollout.engine.runner import Runner
from mlrollout.errors import PlanError
from mlrollout.plan.loader import parse_plan
from mlrollout.report import webhook
from mlrollout.report.pushgateway import METRICS, PUSH_KINDS, PushgatewayNotifier, group_url
from mlrollout.state.base import Event
from mlrollout.state.sqlite import SqliteStateStore
from mlrollout.testing.peers import free_port, local_server, require_binary

REPO = Path(__file__).parents[3]
PLAN = REPO / "plans" / "local-canary-bad.yaml"
DASHBOARD = REPO / "docs" / "grafana-dashboard.json"


def with_notify(notify: str) -> str:
    return PLAN.read_text().replace("rollback:\n", f"notify:\n{notify}\nrollback:\n")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Pushgateway on 127.0.0.1 (a free port), ready (polled, bounded), stopped after."""
    path = require_binary("prometheus-pushgateway", package="prometheus-pushgateway")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("pushgateway") / "gateway.log"
    argv = [path, f"--web.listen-address=127.0.0.1:{port}"]
    with local_server(argv, f"{url}/-/ready", log=log, timeout=20):
        yield url


def run(tmp_path: Path, text: str, **runner: Any) -> tuple[str, RolloutState]:
    store = SqliteStateStore(tmp_path / "state.db")
    r = Runner(store, **runner)
    record = r.create(parse_plan(text, "plan.yaml"))
    outcome = r.drive(record.id)
    return record.id, outcome.state


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(url: str, rollout: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The gateway's ``/metrics`` (what Prometheus scrapes) for one rollout: name -> series."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or not match[1].startswith("mlrollout_"):
            continue
        labels = dict(_LABEL.findall(match[2] or ""))
        if labels.get("rollout") == rollout:
            found.setdefault(match[1], []).append((labels, float(match[3])))
    return found


def value(series: list[tuple[dict[str, str], float]], **labels: str) -> float:
    [hit] = [v for have, v in series if all(have.get(k) == w for k, w in labels.items())]
    return hit


# ---------------------------------------------------------------------- against the real gateway


def test_a_rollout_leaves_its_final_state_at_a_real_pushgateway(tmp_path, gateway):
    rid, state = run(tmp_path, with_notify(f"  - pushgateway: {gateway}"))
    assert state.phase == "rolled_back"
    metrics = scrape(gateway, rid)
    assert set(metrics) <= set(METRICS)
    phase = metrics["mlrollout_rollout_phase"]
    assert value(phase, phase="rolled_back") == 1
    assert sum(v for _, v in phase) == 1  # one current phase, the others 0
    assert all(
        labels["name"] == "churn-v7-canary"
        and labels["endpoint"] == "churn-scoring"
        and labels["job"] == "mlrollout"
        for labels, _ in phase
    )
    assert value(metrics["mlrollout_rollout_ended"]) == 1
    weights = metrics["mlrollout_variant_weight_ratio"]
    assert value(weights, variant="v6") == 1 and value(weights, variant="v7") == 0
    assert value(metrics["mlrollout_looks_total"]) == state.looks > 0
    # the errors gate failed: its outcome, its numbers, as the last verdict has them
    [errors] = [g for g in state.last_verdict["gates"] if g["gate"] == "errors"]
    outcome = metrics["mlrollout_gate_outcome"]
    assert value(outcome, gate="errors", outcome="fail") == 1
    assert value(outcome, gate="errors", outcome="pass") == 0
    assert value(outcome, gate="p99", outcome="pass") == 1
    estimate = metrics["mlrollout_gate_estimate"]
    candidate = value(estimate, gate="errors", side="candidate")
    baseline = value(estimate, gate="errors", side="baseline")
    assert candidate == pytest.approx(errors["numbers"]["candidate"])
    assert baseline == pytest.approx(errors["numbers"]["baseline"])
    assert candidate > 2 * baseline  # 3 % against 1 %
    evidence = value(metrics["mlrollout_gate_evidence"], gate="errors")
    boundary = value(metrics["mlrollout_gate_boundary"], gate="errors")
    assert evidence == pytest.approx(errors["numbers"]["statistic"])
    assert evidence >= boundary > 0  # why it failed
    assert value(metrics["mlrollout_gate_threshold"], gate="p99") == pytest.approx(0.3)
    # the JSON API shows the same group, and that the last push succeeded
    with urllib.request.urlopen(f"{gateway}/api/v1/metrics", timeout=5) as answer:
        groups = json.load(answer)["data"]
    [group] = [g for g in groups if g["labels"].get("rollout") == rid]
    assert group["labels"]["job"] == "mlrollout"
    assert float(group["push_failure_time_seconds"]["metrics"][0]["value"]) == 0


def test_label_values_and_an_awkward_id_arrive_unchanged(gateway):
    rid = 'odd/id "x"'
    name, endpoint = 'say "hi" \\ bye', "line\nbreak"
    notifier = PushgatewayNotifier([gateway], rid, name, endpoint)
    state = RolloutState(phase="progressing", candidate="v2", baseline="v1", looks=3)
    state.weights = {"v1": 75.0, "v2": 25.0}
    notifier(Event(rid, 1, 100.0, "look", {}, recorded_at=1.7e9), state)
    assert notifier.close(5.0) == 0
    assert "@base64/" in group_url(gateway, rid)
    with urllib.request.urlopen(f"{gateway}/api/v1/metrics", timeout=5) as answer:
        groups = json.load(answer)["data"]
    [group] = [g for g in groups if g["labels"].get("rollout") == rid]
    [current] = [m for m in group["mlrollout_rollout_phase"]["metrics"] if m["value"] == "1"]
    assert current["labels"]["name"] == name and current["labels"]["endpoint"] == endpoint
    weights = {
        m["labels"]["variant"]: float(m["value"])
        for m in group["mlrollout_variant_weight_ratio"]["metrics"]
    }
    assert weights == {"v1": 0.75, "v2": 0.25}


# ------------------------------------------------------------------------ small local peers


class Recorder:
    """A local HTTP server that keeps every request: method, path, headers, body. With
    ``hang``, it reads the request and never answers."""

    def __init__(self, hang: bool = False) -> None:
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                size = int(self.headers.get("Content-Length", "0"))
                recorder.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "auth": self.headers.get("Authorization"),
                        "type": self.headers.get("Content-Type"),
                        "body": self.rfile.read(size).decode(),
                    }
                )
                if hang:
                    recorder.release.wait(30)
                    return
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_POST = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.stop()


@pytest.fixture
def hanging() -> Iterator[Recorder]:
    r = Recorder(hang=True)
    yield r
    r.stop()


def test_the_token_from_token_env_is_sent_as_bearer_and_the_shared_one_is_not(
    tmp_path, recorder, monkeypatch
):
    monkeypatch.setenv("PUSH_TOKEN", "pgw-s3cret")
    monkeypatch.setenv("MLROLLOUT_WEBHOOK_TOKEN", "webhook-only")
    notify = (
        f"  - {{pushgateway: '{recorder.url}/gw/', token_env: PUSH_TOKEN}}\n"
        f"  - {{pushgateway: '{recorder.url}/open'}}"
    )
    rid, _ = run(tmp_path, with_notify(notify))
    secured = [r for r in recorder.requests if r["path"].startswith("/gw/")]
    open_ = [r for r in recorder.requests if r["path"].startswith("/open/")]
    assert secured and open_
    assert {r["path"] for r in secured} == {f"/gw/metrics/job/mlrollout/rollout/{rid}"}
    assert all(r["method"] == "PUT" for r in recorder.requests)
    assert all(r["auth"] == "Bearer pgw-s3cret" for r in secured)
    assert all(r["auth"] is None for r in open_)  # the webhooks' shared token stays theirs
    assert all(r["type"].startswith("text/plain; version=0.0.4") for r in recorder.requests)
    # latest wins: never more pushes than events worth one, and the last is the final state
    last = secured[-1]["body"]
    assert f'mlrollout_rollout_ended{{rollout="{rid}"}} 1.0' in last
    assert "# TYPE mlrollout_looks_total counter" in last
    store = SqliteStateStore(tmp_path / "state.db")
    worth = [e for e in store.events(rid) if e.kind in PUSH_KINDS]
    assert 1 <= len(secured) <= len(worth)
    journal = json.dumps([e.data for e in store.events(rid)]) + json.dumps(
        store.get_rollout(rid).plan
    )
    assert "pgw-s3cret" not in journal


def test_a_down_or_slow_pushgateway_never_delays_or_stops_the_rollout(
    tmp_path, hanging, monkeypatch, capsys
):
    monkeypatch.setattr(webhook, "DEADLINE", 0.5)
    monkeypatch.setattr(webhook, "FLUSH_TIMEOUT", 1.0)
    decided: list[float] = []

    def when(event: Event, state: RolloutState) -> None:
        if event.kind == "rolled_back":
            decided.append(time.monotonic())

    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    notify = f"  - pushgateway: {down}\n  - pushgateway: {hanging.url}"
    _, alone = run(tmp_path / "alone", PLAN.read_text())
    start = time.monotonic()
    _, state = run(tmp_path / "with", with_notify(notify), listeners=[when])
    wall = time.monotonic() - start
    assert state.phase == alone.phase == "rolled_back"
    assert state.looks == alone.looks and state.reason == alone.reason
    assert decided[0] - start < 2.0  # the decision did not wait for any push
    assert wall < 1.0 + 2.0  # the flush at the end is bounded (FLUSH_TIMEOUT)
    assert hanging.requests  # it was tried
    err = capsys.readouterr().err
    assert err.count(f"pushgateway {down}/metrics/job/mlrollout/rollout/") == 2  # failed + summary
    assert err.count("failed (") == 2 and "the rollout goes on" in err  # once per gateway


# ---------------------------------------------------------------------------- the plan format


@pytest.mark.parametrize(
    ("notify", "expected"),
    [
        ("  - {pushgateway: 'http://gw:9091', format: slack}", "format does not apply"),
        ("  - {pushgateway: 'http://gw:9091', on: [rollback]}", "on does not apply"),
        ("  - {pushgateway: 'http://gw:9091', webhook: 'http://x'}", "exactly one of webhook"),
        ("  - {pushgateway: 'ftp://gw'}", "pushgateway"),
        ("  - {pushgateway: 'http://user:pw@gw:9091'}", "carries credentials"),
        ("  - {pushgateway: 'http://tok@gw:9091'}", "carries credentials"),
        ("  - {pushgateway: 'http://gw:9091/?api_key=1'}", r"query string \(api_key=\.\.\.\)"),
    ],
)
def test_bad_pushgateway_entries_are_plan_errors(notify, expected):
    with pytest.raises(PlanError, match=expected):
        parse_plan(with_notify(notify), "plan.yaml")


def test_plan_validate_refuses_a_credential_in_a_pushgateway_url(tmp_path, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(with_notify("  - pushgateway: 'http://ops:hunter2@gw.example:9091'"))
    with pytest.raises(SystemExit) as done:
        main(["plan", "validate", str(plan)])
    assert done.value.code == 4  # invalid plan
    out = capsys.readouterr()
    text = out.out + out.err
    assert "notify[0].pushgateway: this URL carries credentials" in text and "token_env" in text
    assert "hunter2" not in text


def test_a_pushgateway_whose_token_variable_is_missing_is_skipped(tmp_path, recorder, capsys):
    notify = f"  - {{pushgateway: '{recorder.url}', token_env: NOT_SET_ANYWHERE_TOKEN}}"
    _, state = run(tmp_path, with_notify(notify))
    assert state.phase == "rolled_back" and recorder.requests == []
    err = capsys.readouterr().err
    assert "NOT_SET_ANYWHERE_TOKEN is not set: this pushgateway is skipped" in err


def test_a_pushgateway_with_its_token_from_the_environment_validates():
    plan = parse_plan(
        with_notify("  - {pushgateway: 'https://gw.example:9091', token_env: PGW_TOKEN}"), "p"
    ).plan
    [note] = plan.notify
    assert note.pushgateway == "https://gw.example:9091" and note.webhook is None


# -------------------------------------------------------------------------------- the dashboard

_PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "inf", "nan"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions,
    keywords, label names (inside ``{}``, ``by ()``...), strings, ranges or ``$variables``."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, subqueries
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text
    )  # grouping labels
    text = re.sub(r"\$\{?\w+\}?", "", text)  # dashboard variables
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match[0]
        after = text[match.end() :].lstrip()
        if after.startswith("(") or word.lower() in _PROMQL_WORDS:
            continue
        if match.start() > 0 and text[match.start() - 1].isdigit():
            continue  # a unit such as 5m in an offset
        names.add(word)
    return names


def panels(model: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in model.get("panels", []):
        yield panel
        yield from panels(panel)  # a row's collapsed panels


def test_the_dashboard_reads_only_metrics_the_pusher_writes():
    model = json.loads(DASHBOARD.read_text())
    assert metric_names('sum by (rollout) (rate(a_total{x="y"}[5m])) / on(rollout) b') == {
        "a_total",
        "b",
    }
    templating = {v["name"]: v for v in model["templating"]["list"]}
    assert templating["DS_PROMETHEUS"]["type"] == "datasource"
    assert templating["DS_PROMETHEUS"]["query"] == "prometheus"
    rollout = templating["rollout"]
    query = rollout["query"]["query"] if isinstance(rollout["query"], dict) else rollout["query"]
    assert query == "label_values(mlrollout_rollout_phase, rollout)"
    used: set[str] = set()
    titles = []
    for panel in panels(model):
        if panel.get("type") == "row":
            continue
        titles.append(panel["title"])
        exprs = [t["expr"] for t in panel.get("targets", [])]
        assert exprs, f"panel {panel['title']!r} has no query"
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        for expr in exprs:
            assert "$rollout" in expr, f"{panel['title']!r}: {expr} is not for the chosen rollout"
            names = metric_names(expr)
            assert names, expr
            assert names <= set(METRICS), f"{panel['title']!r} reads {names - set(METRICS)}"
            used |= names
    assert {p["type"] for p in panels(model)} >= {"stat", "timeseries"}
    assert {
        "mlrollout_rollout_phase",
        "mlrollout_variant_weight_ratio",
        "mlrollout_gate_estimate",
        "mlrollout_gate_evidence",
        "mlrollout_gate_boundary",
        "mlrollout_looks_total",
    } <= used
    assert len(titles) == len(set(titles))
