"""mlrollout.testing.peers: a missing peer skips a test, and fails it where CI requires peers;
a local server is polled until ready and stopped after."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mlrollout.testing.peers import free_port, local_server, require_binary


def test_a_missing_binary_skips_naming_the_package(monkeypatch):
    monkeypatch.delenv("MLROLLOUT_REQUIRE_PEERS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install no-such-package"):
        require_binary("no-such-binary-anywhere", package="no-such-package")


def test_a_missing_binary_fails_where_peers_are_required(monkeypatch):
    monkeypatch.setenv("MLROLLOUT_REQUIRE_PEERS", "1")
    with pytest.raises(pytest.fail.Exception, match="MLROLLOUT_REQUIRE_PEERS=1"):
        require_binary("no-such-binary-anywhere", package="no-such-package")


def test_a_present_binary_is_found():
    assert Path(require_binary("no-such-binary-anywhere", "sh", package="dash")).name == "sh"


def test_a_server_is_ready_when_it_answers_and_stopped_after(tmp_path):
    port = free_port()
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with local_server(argv, f"http://127.0.0.1:{port}/", log=tmp_path / "log") as proc:
        assert proc.poll() is None
    assert proc.poll() is not None


def test_a_server_that_exits_fails_the_test_with_its_log(tmp_path):
    argv = [sys.executable, "-c", "import sys; print('no such flag'); sys.exit(3)"]
    server = local_server(argv, f"http://127.0.0.1:{free_port()}/", log=tmp_path / "log")
    with pytest.raises(pytest.fail.Exception, match="no such flag"), server:
        pass
