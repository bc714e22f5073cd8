"""The provider test kit (mlrollout.testing) on SageMaker, through boto3 against the emulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlrollout.plan.loader import load_plan
from mlrollout.state.sqlite import SqliteStateStore
from mlrollout.testing import ContractSubject, EndpointContract, open_subject


class TestSageMakerContract(EndpointContract):
    @pytest.fixture
    def subject(self, world, tmp_path: Path) -> ContractSubject:  # type: ignore[no-untyped-def]
        world.endpoint()
        plan = load_plan(str(world.plan())).plan
        store = SqliteStateStore(tmp_path / "s.db")
        return open_subject(
            plan, clock=world.clock, store=store, baseline="v1", now=world.clock.now()
        )
