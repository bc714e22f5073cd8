"""The provider test kit (mlrollout.testing) on Vertex AI: the real clients against the fakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlrollout.plan.loader import load_plan
from mlrollout.state.sqlite import SqliteStateStore
from mlrollout.testing import ContractSubject, EndpointContract, open_subject


class TestVertexContract(EndpointContract):
    @pytest.fixture
    def subject(self, world, tmp_path: Path) -> ContractSubject:  # type: ignore[no-untyped-def]
        world.endpoint()
        plan = load_plan(str(world.plan())).plan
        store = SqliteStateStore(tmp_path / "s.db")
        return open_subject(
            plan, clock=world.clock, store=store, baseline="v1", now=world.clock.now()
        )
