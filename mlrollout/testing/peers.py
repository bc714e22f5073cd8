"""Real local peers for tests: a binary that must be installed, a free port, and a server started
on 127.0.0.1 and polled until it is ready (bounded), stopped afterwards.

The rule the project's tests follow (and a plugin's may): where a peer's system package is
missing the test skips with a message naming the package; with ``MLROLLOUT_REQUIRE_PEERS=1`` (CI,
which installs every peer) it fails instead, so a missing install step is never a silent skip.
pytest is imported only when a peer is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

REQUIRE_PEERS = "MLROLLOUT_REQUIRE_PEERS"


def missing_peer(message: str) -> None:
    """Skip the test (``message`` names the package to install); fail it under
    ``MLROLLOUT_REQUIRE_PEERS=1``."""
    import pytest

    if os.environ.get(REQUIRE_PEERS) == "1":
        pytest.fail(f"{message} ({REQUIRE_PEERS}=1)")
    pytest.skip(message)


def require_binary(*names: str, package: str) -> str:
    """The path of the first of ``names`` on ``PATH`` (or ``/usr/bin``), else a missing peer:
    ``apt-get install PACKAGE``."""
    for name in names:
        found = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
        if found:
            return found
    missing_peer(f"{names[0]} not installed: apt-get install {package}")
    raise AssertionError("unreachable")  # pragma: no cover - missing_peer raises


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_server(
    argv: Sequence[str], ready_url: str, *, log: Path, timeout: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` (its output into ``log``), wait until ``ready_url`` answers 200 (polled
    every 50 ms for at most ``timeout`` seconds: a server that exits or never gets ready fails
    the test with its log's tail), yield the process, then stop it (terminate, then kill)."""
    import pytest

    with log.open("wb") as sink:
        proc = subprocess.Popen(
            list(argv), stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(ready_url, timeout=1) as answer:
                        if answer.status == 200:
                            break
                except (OSError, urllib.error.URLError):
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    sink.flush()
                    tail = log.read_text(errors="replace")[-2000:]
                    pytest.fail(f"{Path(argv[0]).name} did not get ready: {tail}")
                time.sleep(0.05)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextlib.contextmanager
def prometheus(
    root: Path, history: str | None = None, *, scrape: Sequence[str] = (), interval: str = "1s"
) -> Iterator[str]:
    """A real Prometheus on 127.0.0.1 (Debian package ``prometheus``), its data under ``root``:
    ``history`` (OpenMetrics text with timestamps) is backfilled first with ``promtool tsdb
    create-blocks-from openmetrics``, so queries of the past are exact; ``scrape`` targets
    (``host:port``) are scraped every ``interval``. Yields its URL; stopped afterwards."""
    server = require_binary("prometheus", package="prometheus")
    promtool = require_binary("promtool", package="prometheus")
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    if history is not None:
        (root / "history.om").write_text(history)
        subprocess.run(
            [promtool, "tsdb", "create-blocks-from", "openmetrics", str(root / "history.om"),
             str(data)],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
    targets = ", ".join(f"'{t}'" for t in scrape)
    (root / "prometheus.yml").write_text(
        f"global: {{scrape_interval: {interval}, evaluation_interval: {interval}}}\n"
        + (f"scrape_configs:\n  - job_name: model\n    static_configs: [{{targets: [{targets}]}}]\n"
           if scrape else "")
    )  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        server,
        f"--config.file={root / 'prometheus.yml'}",
        f"--storage.tsdb.path={data}",
        "--storage.tsdb.retention.time=30d",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with local_server(argv, f"{url}/-/ready", log=root / "prometheus.log"):
        yield url


#: The checkout's own peers (installed by ``.ci/run``, gitignored).
PEERS = Path(__file__).resolve().parents[2] / ".peers"


@contextlib.contextmanager
def mlflow_server(root: Path, *, timeout: float = 120.0) -> Iterator[str]:
    """A real MLflow tracking server with its Model Registry on 127.0.0.1 (the full ``mlflow``
    package, which is heavy: in its own venv ``.peers/mlflow``, else ``mlflow`` on ``PATH``):
    a SQLite backend and served artifacts under ``root``. Yields its URL; stopped afterwards.

    The ``mlflow`` script of the environment running the tests is not taken: it is the client's
    (``mlflow-skinny``), which cannot serve."""
    local = PEERS / "mlflow" / "bin" / "mlflow"
    found = str(local) if local.exists() else shutil.which("mlflow")
    if found is not None and not local.exists():
        import sys

        if Path(found).parent == Path(sys.prefix) / "bin":
            found = None
    if found is None:
        missing_peer(
            "mlflow (the tracking server) not installed: python3 -m venv .peers/mlflow && "
            ".peers/mlflow/bin/pip install mlflow"
        )
        raise AssertionError("unreachable")  # pragma: no cover - missing_peer raises
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        "env",  # the server's background job runner (three more processes) is not needed
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false",
        found,
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with local_server(argv, f"{url}/health", log=root / "mlflow.log", timeout=timeout):
        yield url
