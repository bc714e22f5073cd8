"""The ``prometheus`` metrics source against a real Prometheus server (see conftest.py): exact
windows from backfilled history, the calls per look (counted at a proxy), no data, errors,
credentials, live scraping, and sandbox rollouts judged from Prometheus."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from mlrollout.contracts import LatencyHistogram, MetricsQuery, Window
from mlrollout.errors import PlanError, ProviderAuthError
from mlrollout.metrics.prometheus import PrometheusSource
from mlrollout.metrics.prometheus_spec import SPEC
from mlrollout.plan.model import Gate
from mlrollout.retry import RetryPolicy
from mlrollout.testing.peers import free_port

from .conftest import LIVE_WEIGHTS, RATES, T0, Prom, Proxy, basic

BY_VARIANT = {
    "requests": "sum by (variant) (increase(model_requests_total[{window}]))",
    "errors": 'sum by (variant) (increase(model_requests_total{code=~"5.."}[{window}]))',
    "latency": "sum by (variant, le) (increase(model_latency_seconds_bucket[{window}]))",
}
PER_VARIANT = {
    "requests": 'sum(increase(model_requests_total{variant="{variant}"}[{window}]))',
    "errors": 'sum(increase(model_requests_total{variant="{variant}",code=~"5.."}[{window}]))',
    "latency": (
        'sum by (le) (increase(model_latency_seconds_bucket{variant="{variant}"}[{window}]))'
    ),
}
GATES = (
    Gate(name="errors", metric="error_rate", max="2%"),
    Gate(name="p99", metric="latency_p99", max="900ms"),
)


def source(url: str, queries: dict[str, str] | None = None, **settings: Any) -> PrometheusSource:
    config = {"url": url, "queries": queries or BY_VARIANT, **settings}
    assert SPEC.check_config(config) == []
    opened = SPEC.open(config, None)  # type: ignore[arg-type]
    assert isinstance(opened, PrometheusSource)
    opened.retry = RetryPolicy(attempts=3, sleep=lambda seconds: None)  # no real waits
    return opened


def look(
    src: PrometheusSource,
    seconds: float = 300,
    variants: tuple[str, ...] = ("v2", "v1"),
    gates: tuple[Gate, ...] = GATES,
    end: float = T0 + 300,
) -> dict[str, Window]:
    return src.query(MetricsQuery(end - seconds, end, variants, gates, step=60))


def expected(variant: str, seconds: float) -> tuple[int, int, list[int]]:
    rates = RATES[variant]
    return (
        round((rates["ok"] + rates["err"]) * seconds),
        round(rates["err"] * seconds),
        [round(r * seconds) for r in rates["latency"]],
    )


# ------------------------------------------------------------------------------ exact windows


def test_windows_equal_the_backfilled_numbers_in_one_call_per_query(proxy: Proxy) -> None:
    windows = look(source(proxy.url))
    for variant in ("v1", "v2"):
        requests, errors, latency = expected(variant, 300)
        window = windows[variant]
        assert window.error is None, window.error
        assert (window.requests, window.errors) == (requests, errors)
        assert window.latency == LatencyHistogram((0.05, 0.1, 0.25, 0.5, 1.0), latency)
    assert windows["v1"].requests == 24_000 and windows["v2"].errors == 6
    calls = proxy.queries()
    assert len(calls) == 3  # requests, errors, latency: every variant in each
    assert all(c["time"] == f"{T0 + 300:.3f}" and "[300s]" in c["query"] for c in calls)


def test_a_template_with_variant_is_sent_once_per_variant(proxy: Proxy) -> None:
    windows = look(source(proxy.url, PER_VARIANT))
    for variant in ("v1", "v2"):
        requests, errors, latency = expected(variant, 300)
        assert (windows[variant].requests, windows[variant].errors) == (requests, errors)
        assert windows[variant].latency is not None
        assert windows[variant].latency.counts == latency
    calls = proxy.queries()
    assert len(calls) == 6  # 3 queries x 2 variants
    assert sum('variant="v1"' in c["query"] for c in calls) == 3


def test_the_window_is_the_looks_length_in_whole_seconds(proxy: Proxy) -> None:
    windows = look(source(proxy.url), seconds=599.6, end=T0 + 600, gates=())
    [call] = proxy.queries()  # no gate reads errors or latency: requests only
    assert "[600s]" in call["query"]
    assert windows["v1"].requests == 80 * 600


def test_only_the_queries_the_gates_read_are_sent(proxy: Proxy) -> None:
    look(source(proxy.url), gates=(GATES[0],))
    assert [c["query"] for c in proxy.queries()] == [
        BY_VARIANT["requests"].replace("{window}", "300s"),
        BY_VARIANT["errors"].replace("{window}", "300s"),
    ]


def test_a_custom_gate_reads_its_own_promql(proxy: Proxy) -> None:
    gates = (
        Gate(
            name="server_errors",
            metric="custom",
            max=0.05,
            query={
                "promql": 'sum by (variant) (increase(model_requests_total{code="500"}[{window}]))',
                "count_promql": PER_VARIANT["requests"],
            },
        ),
        Gate(
            name="bare",
            metric="custom",
            max=1,
            query={"promql": 'label_replace(vector(0.5), "variant", "{variant}", "", "")'},
        ),
    )
    windows = look(source(proxy.url), gates=gates)
    assert windows["v1"].custom["server_errors"].total == pytest.approx(30)
    assert windows["v1"].custom["server_errors"].count == pytest.approx(24_000)
    assert windows["v2"].custom["bare"].mean == 0.5  # no count_promql: the value as it is
    assert len(proxy.queries()) == 1 + 1 + 2 + 2  # requests, custom (split), count x 2, bare x 2


# -------------------------------------------------------------------------------- no data


def test_a_counter_reset_seen_by_a_subtracting_query_is_no_data(proxy: Proxy) -> None:
    raw = (
        'sum(model_requests_total{variant="{variant}"})'
        ' - sum(model_requests_total{variant="{variant}"} offset {window})'
    )
    windows = look(source(proxy.url, {"requests": raw}), 60, ("vr", "v1"), (), end=T0 + 60)
    assert windows["vr"].requests is None  # negative: the counter restarted, never zero
    assert windows["v1"].requests == 80 * 60
    # increase() compensates a reset itself (Prometheus's own counter semantics): data
    windows = look(source(proxy.url), 60, ("vr",), (), end=T0 + 60)
    assert windows["vr"].requests == 550  # 10/s, less the interval cut by the restart


def test_missing_series_are_no_data_never_zero(proxy: Proxy) -> None:
    windows = look(source(proxy.url), variants=("nobody", "v1"))
    assert windows["nobody"] == Window()  # requests, errors and latency all None
    assert windows["v1"].requests == 24_000
    # "vr" has requests but never a 5xx series: its errors are no data too...
    assert look(source(proxy.url), variants=("vr",))["vr"].errors is None
    # ... unless the query says what absence means
    zero = dict(PER_VARIANT, errors=PER_VARIANT["errors"] + " or vector(0)")
    assert look(source(proxy.url, zero), variants=("vr",))["vr"].errors == 0


@pytest.mark.parametrize("suffix", [" / 0", " * 0 / 0"], ids=["inf", "nan"])
def test_nan_and_infinite_samples_are_no_data(proxy: Proxy, suffix: str) -> None:
    queries = {k: f"({v}){suffix}" for k, v in PER_VARIANT.items() if k != "latency"}
    windows = look(source(proxy.url, queries), gates=(GATES[0],))
    assert windows["v1"].requests is None and windows["v1"].errors is None
    assert windows["v1"].error is None


# ------------------------------------------------------------------------------------ errors


def test_a_server_that_is_down_is_an_error_window_not_an_exception() -> None:
    src = source(f"http://127.0.0.1:{free_port()}")
    windows = look(src)
    assert set(windows) == {"v1", "v2"}
    message = windows["v1"].error or ""
    assert "cannot reach Prometheus" in message and "requests query" in message
    assert "connection refused" in message and "after 3 attempts" in message
    assert "analysis.source.prometheus.url" in message
    assert src.calls == 3  # retried, then given up: the next look tries again


def test_a_bad_query_names_itself_and_the_fix(proxy: Proxy) -> None:
    broken = dict(BY_VARIANT, errors="sum by (variant) (increase(model_requests_total[{window}])")
    windows = look(source(proxy.url, broken))
    message = windows["v2"].error or ""
    assert "Prometheus query errors" in message and "HTTP 400" in message, message
    assert "bad_data" in message and "fix analysis.source.prometheus.queries.errors" in message
    assert len(proxy.queries()) == 2  # requests, then errors once (a 400 is not retried)


@pytest.mark.parametrize("code", [429, 500, 503])
def test_throttling_and_5xx_are_retried(proxy: Proxy, code: int) -> None:
    proxy.faults = [code]
    windows = look(source(proxy.url))
    assert windows["v1"].requests == 24_000
    assert len(proxy.queries()) == 4  # one retry, then one call per query
    proxy.faults = [code] * 3
    windows = look(source(proxy.url))
    assert f"HTTP {code} after 3 attempts" in (windows["v1"].error or "")
    assert "upstream trouble" not in (windows["v1"].error or "")  # a proxy's page is not shown


def test_a_timeout_is_an_error_window(proxy: Proxy) -> None:
    proxy.delay = 1.0
    src = source(proxy.url, timeout="300ms")
    began = time.monotonic()
    message = look(src)["v1"].error or ""
    assert "timed out after 0.3s" in message and "analysis.source.prometheus.timeout" in message
    assert time.monotonic() - began < 1.0  # a timeout is not retried


@pytest.mark.parametrize(
    ("body", "expected_message"),
    [
        (
            b'{"status":"error","errorType":"execution","error":"query processing would load too '
            b'many samples"}',
            "execution: query processing would load too many samples",
        ),
        (b"<html>not prometheus</html>", "is not JSON"),
        (b'{"status":"success","data":{"resultType":"matrix","result":[]}}', "not an instant"),
    ],
    ids=["status-error", "not-json", "matrix"],
)
def test_an_answer_that_is_not_a_vector_is_an_error(
    proxy: Proxy, body: bytes, expected_message: str
) -> None:
    proxy.body = body
    assert expected_message in (look(source(proxy.url))["v1"].error or "")


def test_results_the_source_cannot_split_are_errors(proxy: Proxy) -> None:
    src = source(proxy.url)
    src.queries = {**BY_VARIANT, "requests": "sum(increase(model_requests_total[{window}]))"}
    assert "no 'variant' label to split by" in (look(src)["v1"].error or "")
    src.queries = {**PER_VARIANT, "latency": PER_VARIANT["requests"]}
    assert "no 'le' label" in (look(src)["v1"].error or "")
    src.queries = {"requests": BY_VARIANT["requests"]}
    assert "lacks: add queries.errors" in (look(src)["v1"].error or "")


# ------------------------------------------------------------------------------- credentials


def test_a_bearer_token_comes_from_the_environment(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy.require = "Bearer s3cret-token"
    monkeypatch.setenv("PROM_TOKEN", "s3cret-token")
    windows = look(source(proxy.url, token_env="PROM_TOKEN"))
    assert windows["v1"].requests == 24_000
    assert {c["authorization"] for c in proxy.queries()} == {"Bearer s3cret-token"}
    monkeypatch.setenv("PROM_TOKEN", "wrong-token")
    message = look(source(proxy.url, token_env="PROM_TOKEN"))["v1"].error or ""
    assert "HTTP 401" in message and "$PROM_TOKEN" in message
    assert "wrong-token" not in message and "s3cret" not in message
    monkeypatch.delenv("PROM_TOKEN")
    with pytest.raises(ProviderAuthError, match="PROM_TOKEN, which is not set") as caught:
        source(proxy.url, token_env="PROM_TOKEN")
    assert caught.value.exit_code == 6


def test_basic_auth_comes_from_the_environment(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy.require = basic("grafana", "pa55")
    monkeypatch.setenv("PROM_USER", "grafana")
    monkeypatch.setenv("PROM_PASSWORD", "pa55")
    src = source(proxy.url, username_env="PROM_USER", password_env="PROM_PASSWORD")
    assert look(src)["v1"].requests == 24_000


def test_unauthenticated_401_says_how_to_give_credentials(proxy: Proxy) -> None:
    proxy.require = "Bearer x"
    assert "give token_env" in (look(source(proxy.url))["v1"].error or "")


# ------------------------------------------------------------------------------------- TLS


def test_https_trusts_the_ca_file(tls_proxy: tuple[Proxy, Path]) -> None:
    proxy, cert = tls_proxy
    assert look(source(proxy.url, ca_file=str(cert)))["v1"].requests == 24_000
    message = look(source(proxy.url))["v1"].error or ""  # the system's trust store alone
    assert "TLS with" in message and "ca_file" in message, message


# --------------------------------------------------------------------------------- the plan


PLAN = """\
version: 1
name: prom
target: {{provider: local, endpoint: churn}}
candidate: {{name: {candidate}}}
strategy:
  type: canary
  steps: [{{weight: 20}}, {{analyze: 5m}}, {{weight: 100}}]
analysis:
  source:
    prometheus:
      url: {url}
      queries:
        requests: "sum by (variant) (increase(model_requests_total[{{window}}]))"
        errors: "sum by (variant) (increase(model_requests_total{{code=~'5..'}}[{{window}}]))"
        latency: "sum by (variant, le) (increase(model_latency_seconds_bucket[{{window}}]))"
{extra}
  interval: 60s
  min_requests: 100
  gates:
    - {{name: errors, metric: error_rate, max: 2%}}
    - {{name: p99, metric: latency_p99, max: 900ms}}
sandbox:
  seed: 3
  speed: max
  variants:
    v1: {{error_rate: 0.001}}
    {candidate}: {{error_rate: 0.001}}
"""


def plan_issues(url: str = "http://prometheus:9090", extra: str = "") -> list[str]:
    from mlrollout.plan.loader import parse_plan

    try:
        parse_plan(PLAN.format(candidate="v2", url=url, extra=extra), "p.yaml")
    except PlanError as exc:
        return [str(issue) for issue in exc.issues]
    return []


def test_a_valid_prometheus_source_validates() -> None:
    assert plan_issues() == []
    assert plan_issues(extra="      token_env: PROM_TOKEN\n      ca_file: /etc/ca.pem") == []


@pytest.mark.parametrize(
    ("url", "extra", "expected_message"),
    [
        (
            "http://admin:hunter2@prometheus:9090",
            "",
            "p.yaml:11:12: analysis.source.prometheus.url: this URL carries credentials",
        ),
        ("http://prometheus:9090/?access_token=abc", "", "a credential in its query string"),
        ("ftp://prometheus", "", "analysis.source.prometheus.url: the url is http://HOST:PORT"),
        (
            "http://p:9090",
            "      querys: {}",
            "p.yaml:16:15: analysis.source.prometheus.querys: unknown key 'querys'; did you mean "
            "'queries'?",
        ),
        (
            "http://p:9090",
            "      token: abc",
            "analysis.source.prometheus.token: credentials do not belong in a plan",
        ),
        (
            "http://p:9090",
            "      username_env: PROM_USER",
            "analysis.source.prometheus: basic auth needs password_env too",
        ),
        (
            "http://p:9090",
            "      timeout: forever",
            "analysis.source.prometheus.timeout: a timeout",
        ),
    ],
    ids=["userinfo", "query-credential", "scheme", "unknown-key", "secret", "basic", "timeout"],
)
def test_bad_settings_are_refused_at_their_place(
    url: str, extra: str, expected_message: str
) -> None:
    found = plan_issues(url, extra)
    assert any(expected_message in issue for issue in found), found
    assert "hunter2" not in " ".join(found[1:])


@pytest.mark.parametrize(
    ("queries", "expected_message"),
    [
        ({"errors": BY_VARIANT["errors"]}, "queries needs requests"),
        ({"requests": "sum by (variant) (increase(model_requests_total[5m]))"}, "needs {window}"),
        (
            {"requests": PER_VARIANT["requests"].replace("{variant}", "{varient}")},
            "unknown placeholder {varient} in the requests query; did you mean {variant}?",
        ),
        (
            {"requests": "sum(increase(model_requests_total[{window}]))"},
            'neither selects variant="{variant}" nor groups by (variant)',
        ),
        ({"requests": BY_VARIANT["requests"], "latncy": "x"}, "did you mean 'latency'?"),
        ({"requests": 7}, "the requests query is a PromQL string"),
    ],
    ids=["no-requests", "no-window", "typo", "no-variant", "unknown-query", "not-a-string"],
)
def test_bad_queries_are_refused(queries: dict[str, Any], expected_message: str) -> None:
    problems = SPEC.check_config({"url": "http://p:9090", "queries": queries})
    assert any(expected_message in p.message for p in problems), problems


def test_plan_validate_shows_file_line_column_and_exits_4(tmp_path: Path) -> None:
    import subprocess
    import sys

    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.format(candidate="v2", url="http://u:p@prom:9090", extra=""))
    proc = subprocess.run(
        [sys.executable, "-m", "mlrollout", "plan", "validate", str(plan)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 4, proc.stderr
    assert f"{plan}:11:12: analysis.source.prometheus.url" in proc.stdout + proc.stderr


def test_validating_a_prometheus_plan_loads_only_the_spec(tmp_path: Path) -> None:
    """``plan validate`` imports the spec module, never the live source or an HTTP client."""
    import subprocess
    import sys

    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.format(candidate="v2", url="http://prom:9090", extra=""))
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mlrollout", "plan", "validate", str(plan)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "mlrollout.metrics.prometheus_spec" in modules
    assert not modules & {"mlrollout.metrics.prometheus", "urllib.request", "http.client", "ssl"}


# ----------------------------------------------------------------------- end to end: sandbox


@pytest.mark.parametrize(("candidate", "code"), [("v3", 1), ("v2", 0)], ids=["bad", "good"])
def test_a_sandbox_canary_is_judged_from_prometheus(
    proxy: Proxy, tmp_path: Path, candidate: str, code: int
) -> None:
    """The sandbox simulates a healthy candidate either way; Prometheus's history (20 % of the
    traffic at the candidate from T0 on) decides. The rollout runs on virtual time from T0, so
    every look reads the backfilled past: exact, and in well under a second."""
    from mlrollout.api import Rollouts
    from mlrollout.clock import VirtualClock
    from mlrollout.plan.loader import load_plan

    path = tmp_path / "plan.yaml"
    path.write_text(PLAN.format(candidate=candidate, url=proxy.url, extra=""))
    with Rollouts(str(tmp_path / "state")) as rollouts:
        outcome = rollouts.run(load_plan(str(path)), clock=VirtualClock(T0))
    assert outcome.exit_code == code, outcome
    looks = proxy.queries()
    assert looks and len(looks) % 3 == 0  # three calls per look, every variant in each
    instants = sorted({float(c["time"]) for c in looks})
    assert len(looks) == 3 * len(instants)
    assert all(T0 < t <= T0 + 300 + 1e-6 for t in instants), (T0, instants)
    if code == 1:
        assert len(instants) == 1  # 10 % errors at 1200 requests: rolled back at the first look
    else:  # looks at T0 + 60 s ... T0 + 300 s (an early pass may end it sooner)
        assert outcome.weights == {candidate: 100.0} and 1 <= len(instants) <= 5


# ------------------------------------------------------------------- live scraping (last: it
# waits for Prometheus's first scrapes, which start about 5 s after the server does)


def test_live_counters_follow_the_weights(prom: Prom, proxy: Proxy) -> None:
    """The exporter serves 200 req/s split 70/30 (set when the server started); Prometheus
    scrapes it every second. Waits (bounded) only until two scrapes are in the window."""
    src = source(proxy.url)
    deadline = time.monotonic() + 10
    while True:
        windows = look(src, 3, ("live2", "live1"), (GATES[0],), end=time.time())
        if all((w.requests or 0) > 50 for w in windows.values()):
            break
        assert time.monotonic() < deadline, windows
        time.sleep(0.25)
    live1, live2 = windows["live1"], windows["live2"]
    assert live1.requests is not None and live2.requests is not None
    share = LIVE_WEIGHTS["live2"] / 100
    assert live2.requests / (live1.requests + live2.requests) == pytest.approx(share, abs=0.03)
    assert live2.error_rate == pytest.approx(0.1, abs=0.03) and live1.errors == 0
