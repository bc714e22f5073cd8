"""The provider test kit can fail: run it (in a pytest of its own) on adapters that each break one
promise of the contract, and check that the kit names the broken promise."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BROKEN = {
    # set_traffic that accepts a split summing to 60 % (no weight checks)
    "accepts_a_bad_split": """
        def set_traffic(self, weights):
            record = self._load()
            for name, weight in weights.items():
                record["variants"][name]["weight"] = float(weight)
            self._save(record)
            return self._state(record)
    """,
    # finalize that retires a variant still serving
    "retires_a_serving_variant": """
        def finalize(self, keep, retire):
            record = self._load()
            record["variants"].pop(retire, None)
            if retire in record["order"]:
                record["order"].remove(retire)
            self._save(record)
            return self._state(record)
    """,
    # an ownership mark that moves traffic
    "marking_moves_traffic": """
        def write_owner(self, mark):
            super().write_owner(mark)
            record = self._load()
            for name in record["order"]:
                record["variants"][name]["weight"] = 100.0 if name == record["order"][0] else 0.0
            self._save(record)
    """,
}
EXPECTED = {
    "accepts_a_bad_split": "test_set_traffic_refuses_invalid_weights_and_changes_nothing",
    "retires_a_serving_variant": "test_finalize_refuses_to_retire_a_variant_that_still_serves",
    "marking_moves_traffic": "test_the_ownership_mark_round_trips_and_never_moves_traffic",
}

MODULE = '''
import pytest
from mlrollout.clock import VirtualClock
from mlrollout.plan.loader import parse_plan
from mlrollout.sandbox.endpoint import LocalEndpoint, LocalMetrics
from mlrollout.state.sqlite import SqliteStateStore
from mlrollout.testing import ContractSubject, EndpointContract

PLAN = """
version: 1
name: kit
target: {provider: local, endpoint: ep}
candidate: {name: v2}
strategy: {type: canary, steps: [{weight: 10}]}
sandbox:
  variants: {v1: {error_rate: 0.01}, v2: {error_rate: 0.01}}
"""


class Broken(LocalEndpoint):
BODY


class TestBrokenContract(EndpointContract):
    @pytest.fixture
    def subject(self, tmp_path):
        plan = parse_plan(PLAN, "kit.yaml").plan
        clock = VirtualClock(1_800_000_000.0)
        endpoint = Broken("ep", plan.sandbox, SqliteStateStore(tmp_path / "s.db"), clock)
        endpoint.describe()
        return ContractSubject(endpoint, LocalMetrics(endpoint), "v1", plan.candidate, clock.now())
'''


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_the_kit_catches_an_adapter_that_breaks_the_contract(tmp_path: Path, broken: str) -> None:
    body = textwrap.indent(textwrap.dedent(BROKEN[broken]).strip(), "    ")
    (tmp_path / "test_broken_kit.py").write_text(MODULE.replace("BODY", body))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout[-3000:]
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    assert failed and all(EXPECTED[broken] in line for line in failed), done.stdout[-3000:]
