"""A real Prometheus server for the metrics-source tests, and the small HTTP peers around it.

The module-scoped ``prom`` fixture:

1. writes a deterministic history as OpenMetrics text (:func:`history_text`: constant rates per
   variant, a sample every 5 s, around the instant :data:`T0` two hours ago) and backfills it
   with ``promtool tsdb create-blocks-from openmetrics`` into a fresh data directory;
2. starts an :class:`Exporter` (``model_requests_total{variant,code}``,
   ``model_latency_seconds_bucket{variant,le}`` whose rates follow the weights a test sets);
3. starts ``prometheus`` on 127.0.0.1 (a free port) scraping the exporter every second, and
   waits (bounded) until ``/-/ready``;
4. stops it after the module.

Where ``prometheus``/``promtool`` are missing the tests skip (``apt-get install prometheus``);
under ``MLROLLOUT_REQUIRE_PEERS=1`` (CI) they fail instead.

:class:`Proxy` sits between a source and the server: it counts the ``/api/v1/query`` calls,
can demand a bearer or basic credential (Prometheus itself has none) and can inject faults.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mlrollout.testing.peers import prometheus

#: The start of the backfilled analysis: a minute boundary two hours ago (the history spans
#: T0 - 10 min to T0 + 20 min).
T0 = float((int(time.time()) - 7200) // 60 * 60)
HISTORY_START = T0 - 600
HISTORY_END = T0 + 1200
STEP = 5  # seconds between backfilled samples
RESET_AT = T0 + 30  # the counter of variant "vr" restarts from zero here

BOUNDS = ("0.05", "0.1", "0.25", "0.5", "1", "+Inf")

#: Per-second rates of the history: requests by code, and latency counts between the bounds
#: (not cumulative; they add up to the variant's requests).
RATES: dict[str, dict[str, Any]] = {
    "v1": {"ok": 79.9, "err": 0.1, "latency": [10, 50, 15, 4, 1, 0]},  # the baseline
    "v2": {"ok": 19.98, "err": 0.02, "latency": [3, 12, 4, 1, 0, 0]},  # a good candidate
    "v3": {"ok": 18.0, "err": 2.0, "latency": [0, 2, 6, 6, 4, 2]},  # a bad one
}
RESET_RATE = 10.0  # variant "vr": code 200 only, no histogram
#: The live exporter's split (percent) of its 200 req/s, set when the server starts.
LIVE_WEIGHTS = {"live1": 70.0, "live2": 30.0}


def history_text() -> str:
    """The backfilled history, as OpenMetrics (a family's samples together, each series in
    time order, timestamps in seconds)."""
    times = range(int(HISTORY_START), int(HISTORY_END) + 1, STEP)
    lines = ["# TYPE model_requests counter"]
    for variant, rates in RATES.items():
        for code, key in (("200", "ok"), ("500", "err")):
            for t in times:
                value = rates[key] * (t - HISTORY_START)
                lines.append(
                    f'model_requests_total{{variant="{variant}",code="{code}"}} {value:.6f} {t}'
                )
    for t in times:
        since = t - RESET_AT if t >= RESET_AT else t - HISTORY_START
        value = RESET_RATE * since
        lines.append(f'model_requests_total{{variant="vr",code="200"}} {value:.6f} {t}')
    lines.append("# TYPE model_latency_seconds histogram")
    for variant, rates in RATES.items():
        cumulative = 0.0
        for le, per_second in zip(BOUNDS, rates["latency"], strict=True):
            cumulative += per_second
            for t in times:
                value = cumulative * (t - HISTORY_START)
                lines.append(
                    f'model_latency_seconds_bucket{{variant="{variant}",le="{le}"}} {value:.6f} {t}'
                )
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------- exporter


class Exporter:
    """Live counters whose rates follow weights a test sets: ``rps`` requests per second split
    by ``weights`` (percent), each variant with its error rate; latency all in one bucket."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.totals: dict[tuple[str, str], float] = {}
        self.latency: dict[str, float] = {}
        self.rates: dict[str, tuple[float, float]] = {}  # variant -> (requests/s, error share)
        self.since = time.monotonic()
        self.scrapes = 0
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def _advance(self) -> None:
        now = time.monotonic()
        elapsed, self.since = now - self.since, now
        for variant, (rps, error_share) in self.rates.items():
            for code, share in (("200", 1 - error_share), ("500", error_share)):
                key = (variant, code)
                self.totals[key] = self.totals.get(key, 0.0) + rps * share * elapsed
            self.latency[variant] = self.latency.get(variant, 0.0) + rps * elapsed

    def set(self, rps: float, weights: dict[str, float], error_rates: dict[str, float]) -> None:
        with self.lock:
            self._advance()
            self.rates = {v: (rps * w / 100.0, error_rates.get(v, 0.0)) for v, w in weights.items()}
            for variant in weights:  # the series exist from now on
                for code in ("200", "500"):
                    self.totals.setdefault((variant, code), 0.0)
                self.latency.setdefault(variant, 0.0)

    def render(self) -> str:
        with self.lock:
            self._advance()
            self.scrapes += 1
            lines = ["# TYPE model_requests_total counter"]
            for (variant, code), value in sorted(self.totals.items()):
                lines.append(f'model_requests_total{{variant="{variant}",code="{code}"}} {value}')
            lines.append("# TYPE model_latency_seconds histogram")
            for variant, value in sorted(self.latency.items()):
                for le in ("0.05", "0.1", "+Inf"):
                    shown = 0.0 if le == "0.05" else value
                    lines.append(
                        f'model_latency_seconds_bucket{{variant="{variant}",le="{le}"}} {shown}'
                    )
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -------------------------------------------------------------------------------------- proxy


@dataclass
class Proxy:
    """Forwards GETs to ``upstream``; records each ``/api/v1/query`` call; may demand an
    ``Authorization`` header (``require``), answer ``faults`` (HTTP codes) first, or wait
    ``delay`` seconds before answering."""

    upstream: str
    require: str | None = None
    faults: list[int] = field(default_factory=list)
    delay: float = 0.0
    calls: list[dict[str, Any]] = field(default_factory=list)
    body: bytes | None = None  # answer this instead of forwarding (status 200)
    tls: ssl.SSLContext | None = None  # serve HTTPS with this server context

    def __post_init__(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                params = dict(urllib.parse.parse_qsl(parts.query))
                proxy.calls.append(
                    {"path": parts.path, **params, "authorization": self.headers["Authorization"]}
                )
                if proxy.delay:
                    time.sleep(proxy.delay)
                if proxy.require is not None and self.headers["Authorization"] != proxy.require:
                    return self.answer(
                        401, b'{"status":"error","errorType":"auth","error":"unauthorized"}'
                    )
                if proxy.faults:
                    return self.answer(proxy.faults.pop(0), b"<html>upstream trouble</html>")
                if proxy.body is not None:
                    return self.answer(200, proxy.body)
                try:
                    with urllib.request.urlopen(proxy.upstream + self.path, timeout=10) as r:
                        return self.answer(r.status, r.read())
                except urllib.error.HTTPError as exc:
                    return self.answer(exc.code, exc.read())

            def answer(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client gave up (a timeout test)
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def queries(self) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["path"] == "/api/v1/query"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---------------------------------------------------------------------------------- prometheus


@dataclass
class Prom:
    url: str
    exporter: Exporter
    data: Path
    startup_seconds: float

    def query(self, promql: str, at: float | None = None) -> Any:
        params = {"query": promql, **({"time": str(at)} if at is not None else {})}
        with urllib.request.urlopen(
            f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10
        ) as r:
            return json.loads(r.read())["data"]


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prom]:
    began = time.monotonic()
    root = tmp_path_factory.mktemp("prometheus")
    exporter = Exporter()
    exporter.set(200, LIVE_WEIGHTS, {"live2": 0.1})  # scraped from the start
    try:
        with prometheus(root, history_text(), scrape=[f"127.0.0.1:{exporter.port}"]) as url:
            yield Prom(url, exporter, root / "data", time.monotonic() - began)
    finally:
        exporter.close()


@pytest.fixture
def proxy(prom: Prom) -> Iterator[Proxy]:
    p = Proxy(prom.url)
    yield p
    p.close()


def self_signed(root: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files), signed by itself."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlrollout test prometheus")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = root / "cert.pem", root / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture
def tls_proxy(prom: Prom, tmp_path: Path) -> Iterator[tuple[Proxy, Path]]:
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    p = Proxy(prom.url, tls=context)
    yield p, cert
    p.close()
