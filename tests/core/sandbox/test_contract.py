"""The provider test kit on its reference implementation: the ``local`` sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlrollout.clock import VirtualClock
from mlrollout.plan.loader import parse_plan
from mlrollout.sandbox.endpoint import LocalEndpoint, LocalMetrics
from mlrollout.state.sqlite import SqliteStateStore
from mlrollout.testing import ContractSubject, EndpointContract

PLAN = """
version: 1
name: contract
target: {provider: local, endpoint: ep}
candidate: {name: v2}
strategy: {type: canary, steps: [{weight: 10}]}
sandbox:
  variants:
    v1: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}
    v2: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}
"""
START = 1_800_000_000.0


class TestSandboxContract(EndpointContract):
    @pytest.fixture
    def subject(self, tmp_path: Path) -> ContractSubject:
        plan = parse_plan(PLAN, "contract.yaml").plan
        assert plan.sandbox is not None
        clock = VirtualClock(START)
        endpoint = LocalEndpoint("ep", plan.sandbox, SqliteStateStore(tmp_path / "s.db"), clock)
        endpoint.describe()  # the sandbox creates the endpoint on first sight
        clock.advance(900)
        return ContractSubject(endpoint, LocalMetrics(endpoint), "v1", plan.candidate, clock.now())
