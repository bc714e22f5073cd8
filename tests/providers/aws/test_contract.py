"""The provider test kit (mlrollout.testing) on SageMaker, through boto3 against the emulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlrollout.contracts import ProviderContext
from mlrollout.plan.loader import load_plan
from mlrollout.plugins import provider_spec
from mlrollout.state.sqlite import SqliteStateStore
from mlrollout.testing import ContractSubject, EndpointContract


class TestSageMakerContract(EndpointContract):
    @pytest.fixture
    def subject(self, world, tmp_path: Path) -> ContractSubject:  # type: ignore[no-untyped-def]
        world.endpoint()
        plan = load_plan(str(world.plan())).plan
        context = ProviderContext(
            plan=plan, clock=world.clock, store=SqliteStateStore(tmp_path / "s.db")
        )
        adapter, metrics = provider_spec("sagemaker").open(context)
        return ContractSubject(adapter, metrics, "v1", plan.candidate, world.clock.now())
