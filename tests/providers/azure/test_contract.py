"""The provider test kit (mlrollout.testing) on Azure ML: azure-ai-ml against the ARM fake."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlrollout.plan.loader import load_plan
from mlrollout.state.sqlite import SqliteStateStore
from mlrollout.testing import ContractSubject, EndpointContract, open_subject


class TestAzureMLContract(EndpointContract):
    @pytest.fixture
    def subject(self, world, tmp_path: Path) -> ContractSubject:  # type: ignore[no-untyped-def]
        world.endpoint()
        plan = load_plan(str(world.plan())).plan
        store = SqliteStateStore(tmp_path / "s.db")
        return open_subject(
            plan, clock=world.clock, store=store, baseline="blue", now=world.clock.now()
        )
