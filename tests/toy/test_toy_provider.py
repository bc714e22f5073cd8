"""A fourth provider, written by "a third party" only against the documented contract, the
toolkit and the test kit, plugs in through the `mlrollout.endpoints` entry point group and passes
the whole provider test kit against its own platform (a small HTTP server on 127.0.0.1)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlrollout import plugins
from mlrollout.clock import VirtualClock
from mlrollout.plan.loader import parse_plan
from mlrollout.state.sqlite import SqliteStateStore
from mlrollout.testing import ContractSubject, EndpointContract, open_subject

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from toy_server import ToyPlatform  # noqa: E402

PLAN = """
version: 1
name: toy
target: {{provider: toy, endpoint: shop, endpoint_url: "{url}"}}
candidate: {{name: v2, model: shop-model-2}}
strategy: {{type: canary, steps: [{{weight: 10}}, {{analyze: 5m}}]}}
analysis:
  gates: [{{name: errors, metric: error_rate, vs_baseline: {{max_increase: 50%}}}}]
"""


@pytest.fixture(scope="module")
def platform() -> Iterator[ToyPlatform]:
    toy = ToyPlatform().start()
    yield toy
    toy.stop()


@pytest.fixture
def toy_installed(tmp_path: Path) -> Iterator[None]:
    """Installs the toy provider the way a user would: a distribution with an entry point."""
    site = tmp_path / "site"
    info = site / "mlrollout_toy-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mlrollout-toy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [mlrollout.endpoints]
            toy = mlrollout_toy:SPEC
            """
        )
    )
    sys.path.insert(0, str(site))
    plugins._refs.cache_clear()
    yield
    sys.path.remove(str(site))
    plugins._refs.cache_clear()


class TestToyProviderContract(EndpointContract):
    @pytest.fixture
    def subject(
        self, platform: ToyPlatform, toy_installed: None, tmp_path: Path
    ) -> ContractSubject:
        platform.add_endpoint("shop", "v1", "shop-model-1")
        plan = parse_plan(PLAN.format(url=platform.url), "toy.yaml").plan
        store = SqliteStateStore(tmp_path / "s.db")
        return open_subject(plan, clock=VirtualClock(), store=store, baseline="v1")


def test_the_toy_provider_is_found_through_its_entry_point(toy_installed: None) -> None:
    assert "toy" in plugins.names(plugins.ENDPOINTS_GROUP)
    assert plugins.refs(plugins.ENDPOINTS_GROUP)["toy"][0].dist == "mlrollout-toy"
