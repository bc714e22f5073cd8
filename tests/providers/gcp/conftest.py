"""Fixtures for the Google Cloud provider tests: the Vertex AI REST fake and the Cloud Monitoring
gRPC fake for the session (reset before each test), and a :class:`World` that builds endpoints,
traffic and plans on them. The real clients talk to them over HTTP and gRPC; nothing is mocked."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before google.auth is imported: never probe a metadata server (nothing leaves this machine).
os.environ["NO_GCE_CHECK"] = "true"
os.environ["GCE_METADATA_HOST"] = "127.0.0.1:9"
os.environ["GCE_METADATA_IP"] = "127.0.0.1:9"

# Appended, not inserted: another provider's tests import their own `conftest` by name.
sys.path.append(str(Path(__file__).parent))

from gcp_world import LOCATION, PROJECT, START, World
from monitoring_fake import MonitoringFake
from vertex_fake import VertexFake

from mlrollout.clock import VirtualClock


@pytest.fixture(scope="session")
def fakes() -> Iterator[tuple[VertexFake, MonitoringFake]]:
    vertex = VertexFake(VirtualClock(START), project=PROJECT, location=LOCATION).start()
    monitoring = MonitoringFake(vertex).start()
    yield vertex, monitoring
    monitoring.stop()
    vertex.stop()


@pytest.fixture(autouse=True)
def gcp_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No Application Default Credentials anywhere: nothing reaches real Google Cloud."""
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud-config"))


@pytest.fixture
def world(fakes: tuple[VertexFake, MonitoringFake], tmp_path: Path) -> World:
    return World(fakes, tmp_path)
