"""Fixtures for the Azure provider tests: one ARM fake over HTTPS for the session (see
``arm_fake.py``), reset before each test, a fake token credential in place of
``DefaultAzureCredential``, and a :class:`~azure_world.World` that builds a workspace, an endpoint,
traffic and plans on one virtual clock. ``azure-ai-ml`` and ``azure-monitor-querymetrics`` talk to
the fake over real HTTPS; nothing is mocked."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from arm_fake import ArmFake
from azure_world import START, FakeCredential, World

from mlrollout.clock import VirtualClock


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """azure-ai-ml's marshmallow schemas warn about marshmallow 4 when first built (in any
    thread): not ours to fix, and the suite turns warnings into errors."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(
                pytest.mark.filterwarnings("ignore::marshmallow.warnings.Marshmallow4Warning")
            )


@pytest.fixture(scope="session")
def fake() -> Iterator[ArmFake]:
    arm = ArmFake(VirtualClock(START)).start()
    yield arm
    arm.stop()


@pytest.fixture
def credential(monkeypatch: pytest.MonkeyPatch) -> FakeCredential:
    import mlrollout_azure.auth

    cred = FakeCredential()
    monkeypatch.setattr(mlrollout_azure.auth, "default_credential", lambda: cred)
    return cred


@pytest.fixture(autouse=True)
def azure_env(monkeypatch: pytest.MonkeyPatch, fake: ArmFake) -> None:
    """Trust the fake's certificate; keep MLClient's process-wide cloud choice out of os.environ
    of other tests; no real Azure identity."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", fake.ca_file)
    monkeypatch.delenv("AZUREML_CURRENT_CLOUD", raising=False)
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def world(fake: ArmFake, tmp_path: Path, credential: FakeCredential) -> World:
    return World(fake, tmp_path)
