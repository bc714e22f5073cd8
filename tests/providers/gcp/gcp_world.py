"""The faked Google Cloud project of one test (see ``conftest.py``): endpoints, traffic, plans."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from monitoring_fake import MonitoringFake
from vertex_fake import VertexFake

from mlrollout.clock import VirtualClock
from mlrollout.engine.runner import RunOutcome

START = 1_700_000_040.0  # a whole minute
PROJECT, LOCATION = "demo-proj", "us-central1"
ENDPOINT_ID = "4242"
GOOD = {"error_rate": 0.01, "latency_p50": "40ms", "latency_p99": "120ms"}
BAD = {"error_rate": 0.08, "latency_p50": "60ms", "latency_p99": "400ms"}


class World:
    """The faked project of one test, on one virtual clock."""

    def __init__(self, fakes: tuple[VertexFake, MonitoringFake], tmp_path: Path) -> None:
        self.vertex, self.monitoring = fakes
        self.tmp_path = tmp_path
        self.clock = VirtualClock(START)
        self.vertex.reset(self.clock)
        self.monitoring.reset()

    def endpoint(
        self,
        deployed: dict[str, str] | None = None,
        *,
        display_name: str = "churn",
        endpoint_id: str = ENDPOINT_ID,
        candidate_models: tuple[str, ...] = ("churn-v2",),
        replicas: int = 1,
        machine: str = "n1-standard-4",
    ) -> Any:
        """An endpoint whose first deployed model takes all traffic (each deployed model on
        ``replicas`` machines of type ``machine``)."""
        ep = self.vertex.add_endpoint(
            endpoint_id,
            display_name,
            deployed or {"v1": "churn-v1"},
            replicas=replicas,
            machine=machine,
        )
        for model in candidate_models:
            self.vertex.add_model(model)
        return ep

    def traffic(self, endpoint_id: str = ENDPOINT_ID, **profiles: dict[str, Any]) -> None:
        self.monitoring.traffic(endpoint_id, profiles or {"v1": GOOD}, self.clock.now())

    def plan(self, text: str = "", **fill: Any) -> Path:
        path = self.tmp_path / f"plan-{len(list(self.tmp_path.glob('plan-*.yaml')))}.yaml"
        values = {
            "url": self.vertex.url,
            "metrics_url": self.monitoring.url,
            "endpoint": "churn",
            "gates": GATES,
            **fill,
        }
        path.write_text(textwrap.dedent(text or PLAN).format(**values))
        return path

    def live(self, endpoint_id: str = ENDPOINT_ID) -> dict[str, float]:
        """Display name → percent of the live endpoint."""
        return self.vertex.endpoint(endpoint_id).weights()


GATES = """\
    - name: errors
      metric: error_rate
      vs_baseline: {max_increase: 0.5pp}
    - name: p99
      metric: latency_p99
      max: 300ms
"""

PLAN = """\
    version: 1
    name: churn-v2-canary
    target:
      provider: vertex
      endpoint: "{endpoint}"
      project: demo-proj
      location: us-central1
      endpoint_url: {url}
      metrics_url: {metrics_url}
    candidate:
      name: v2
      model: churn-v2
      instance_type: n1-standard-4
      instance_count: 1
    strategy:
      type: canary
      steps:
        - weight: 10
        - analyze: 5m
        - weight: 50
        - analyze: 5m
        - weight: 100
    analysis:
      interval: 60s
      delay: 60s
      min_requests: 100
      max_hold: 5m
      gates:
    {gates}"""


def rollout(world: World, *, candidate: dict[str, Any], listeners=(), plan=None) -> RunOutcome:
    """A whole rollout of v2 beside v1 (GOOD) on the fakes, with state in SQLite."""
    from mlrollout.engine.runner import Runner
    from mlrollout.plan.loader import load_plan
    from mlrollout.state.sqlite import SqliteStateStore

    world.endpoint()
    world.traffic(v1=GOOD, v2=candidate)
    store = SqliteStateStore(world.tmp_path / "state.db")
    runner = Runner(store, holder="runner-a", listeners=list(listeners))
    record = runner.create(load_plan(str(plan or world.plan())))
    return runner.drive(record.id, clock=world.clock)


def applied(world: World) -> list[tuple[str, dict[str, Any]]]:
    return list(world.vertex.applied)
