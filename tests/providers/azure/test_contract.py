"""The provider test kit (mlrollout.testing) on Azure ML: azure-ai-ml against the ARM fake."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlrollout.contracts import ProviderContext
from mlrollout.plan.loader import load_plan
from mlrollout.plugins import provider_spec
from mlrollout.state.sqlite import SqliteStateStore
from mlrollout.testing import ContractSubject, EndpointContract


class TestAzureMLContract(EndpointContract):
    @pytest.fixture
    def subject(self, world, tmp_path: Path) -> ContractSubject:  # type: ignore[no-untyped-def]
        world.endpoint()
        plan = load_plan(str(world.plan())).plan
        context = ProviderContext(
            plan=plan, clock=world.clock, store=SqliteStateStore(tmp_path / "s.db")
        )
        adapter, metrics = provider_spec("azureml").open(context)
        return ContractSubject(adapter, metrics, "blue", plan.candidate, world.clock.now())
