"""The Azure tests' world: the ARM fake's state for one test on one virtual clock, a fake token
credential, the plan they run. Imported by name (``azure_world``), never as ``conftest``."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from arm_fake import ArmFake, Faults

from mlrollout.clock import VirtualClock
from mlrollout.engine.runner import RunOutcome

SUB = "00000000-1111-2222-3333-444444444444"
RG = "ml-rg"
WS = "ml-ws"
START = 1_700_000_040.0  # a whole minute
GOOD = {"error_rate": 0.01, "latency_p50": "40ms", "latency_p99": "120ms"}
BAD = {"error_rate": 0.08, "latency_p50": "60ms", "latency_p99": "400ms"}


class FakeCredential:
    """A token credential that hands out a fixed bearer token (the fake checks one is sent)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        if self.error is not None:
            raise self.error
        self.scopes.append(scopes)
        return AccessToken("fake-token", int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        from azure.core.credentials import AccessTokenInfo

        if self.error is not None:
            raise self.error
        self.scopes.append(scopes)
        return AccessTokenInfo("fake-token", int(time.time()) + 3600)


class World:
    """The fake's state for one test, on one virtual clock."""

    def __init__(self, fake: ArmFake, tmp_path: Path) -> None:
        self.fake = fake
        self.tmp_path = tmp_path
        self.clock = VirtualClock(START)
        fake.clock = self.clock
        fake.workspaces.clear()
        fake.operations.clear()
        fake.requests.clear()
        fake.applied.clear()
        fake.history.clear()
        fake.mirror_history.clear()
        fake.traffic_models.clear()
        fake.custom_metrics.clear()
        fake.metric_queries.clear()
        fake.tag_writes.clear()
        fake.hooks.clear()
        fake.faults = Faults()
        self.ws = fake.workspace(SUB, RG, WS)
        self.url = fake.url

    def endpoint(
        self,
        name: str = "churn",
        *,
        candidate: dict[str, Any] | None = None,
        rps: float = 20.0,
        capacity: int = 1,
        data_collector: bool = False,
    ) -> None:
        """``churn`` serving ``blue`` (churn-model:1, ``capacity`` instances) at 100 %; model
        churn-model:2 registered; traffic from the sandbox profiles (blue good, green =
        ``candidate``); ``data_collector``: blue collects ``model_outputs``."""
        self.fake.add_endpoint(
            self.ws,
            name,
            {"blue": "churn-model:1"},
            {"blue": 100},
            origin=START,
            profiles={"blue": GOOD, "green": candidate or GOOD},
            rps=rps,
            capacity=capacity,
            data_collector=data_collector,
        )
        self.ws.models.add(("churn-model", "2"))

    def live(self, name: str = "churn") -> dict[str, Any]:
        return self.fake.endpoint(self.ws, name)

    def deployments(self, name: str = "churn") -> list[str]:
        self.fake.settle()
        return sorted(self.ws.deployments[name])

    def assert_ended(self, outcome: RunOutcome, code: int, serving: str) -> None:
        """The run ended with ``code``, and ``serving`` is the one deployment left: it takes all
        the traffic, and nothing is mirrored."""
        assert outcome.exit_code == code, outcome.state.reason
        live = self.live()
        assert live["traffic"] == {serving: 100}
        assert live.get("mirrorTraffic", {}) == {}
        assert self.deployments() == [serving]

    def plan(self, text: str = "", **fill: Any) -> Path:
        path = self.tmp_path / "plan.yaml"
        body = text or PLAN
        path.write_text(textwrap.dedent(body).format(url=self.url, sub=SUB, **fill))
        return path


PLAN = """\
version: 1
name: churn-green
target:
  provider: azureml
  subscription_id: {sub}
  resource_group: ml-rg
  workspace: ml-ws
  endpoint: churn
  endpoint_url: {url}
  metrics_url: {url}
baseline: auto
candidate:
  name: green
  model: churn-model:2
  instance_type: Standard_DS3_v2
  instance_count: 1
strategy:
  type: canary
  steps:
    - weight: 10
    - analyze: 10m
    - weight: 50
    - analyze: 10m
    - weight: 100
analysis:
  interval: 60s
  delay: 1m
  min_requests: 200
  no_data: hold
  max_hold: 10m
  on_inconclusive: rollback
  gates:
    - name: errors
      metric: error_rate
      vs_baseline: {{max_increase: 50%}}
    - name: p99
      metric: latency_p99
      max: 300ms
rollback:
  automatic: true
  cleanup: true
"""


def rollout(world: Any, *, candidate: dict[str, Any], listeners=(), plan: str = "") -> RunOutcome:
    """A whole rollout of green beside blue on the fake ARM, with state in SQLite."""
    from mlrollout.engine.runner import Runner
    from mlrollout.plan.loader import load_plan
    from mlrollout.state.sqlite import open_sqlite_store

    world.endpoint(candidate=candidate)
    store = open_sqlite_store(str(world.tmp_path / "state"))
    runner = Runner(store, holder="runner-a", listeners=list(listeners))
    record = runner.create(load_plan(str(world.plan(plan))))
    return runner.drive(record.id, clock=world.clock)
