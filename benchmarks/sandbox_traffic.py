"""Speed of the local sandbox's synthetic traffic (prints figures; not a timed test).

A 30-minute canary at 100 rps (10 % / 25 % / 50 % for 10 minutes each) with a look every 60 s,
each look one ``LocalMetrics.query`` for both variants over a cumulative window, through the real
``LocalEndpoint`` on an in-memory store and a virtual clock. Variants:

- ``stage``: windows from the stage start (what the engine asks);
- ``rollout``: windows from the rollout start (the worst case for cumulative windows);
- ``rollout, new process per look``: no cache survives between looks (quadratic work);
- ``rollout, 10k rps``: the same at 100x the traffic;
- ``rollout, 100 % mirrored``: v7 serves no one and gets a mirrored copy of all of v6's
  requests for the 30 minutes (blue-green's ``preview: 0``; the mirror's own buckets).

Then a week-long rehearsal end to end: a canary at 50 % analyzed for 7 days with a look every
hour, 1,000 req/s on a daily profile, 50,000 sticky users, events (a traffic gap, a late
latency regression, a metrics backlog) and a custom conversion gate, driven by
:class:`~mlrollout.engine.runner.Runner` on a ``SqliteStateStore`` in a temporary directory. The
traffic grid is the plan's (one hour here), so its cost is 168 buckets per variant, whatever the
traffic and the users.

Run: ``.venv/bin/python benchmarks/sandbox_traffic.py``
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from mlrollout.clock import VirtualClock
from mlrollout.contracts import MetricsQuery
from mlrollout.plan.model import Candidate, Sandbox
from mlrollout.sandbox.endpoint import LocalEndpoint, LocalMetrics
from mlrollout.state.base import Lease

T0 = 1_700_000_000.0
STAGES = ((10.0, 600.0), (25.0, 600.0), (50.0, 600.0))


class MemoryStore:
    def __init__(self) -> None:
        self.values: dict[tuple[str, str], dict[str, Any]] = {}

    def get_value(self, namespace: str, key: str) -> dict[str, Any] | None:
        return self.values.get((namespace, key))

    def put_value(
        self, namespace: str, key: str, value: dict[str, Any], *, lease: Lease | None
    ) -> None:
        self.values[(namespace, key)] = value


def run(
    *, rps: float, from_rollout_start: bool, fresh: bool, mirror: float = 0.0
) -> tuple[float, int, int, int]:
    sandbox = Sandbox.model_validate(
        {
            "seed": 7,
            "rps": rps,
            "variants": {
                "v6": {"error_rate": 0.01, "latency_p50": "40ms", "latency_p99": "120ms"},
                "v7": {"error_rate": 0.03, "latency_p50": "42ms", "latency_p99": "130ms"},
            },
        }
    )
    clock = VirtualClock(T0)
    endpoint = LocalEndpoint("bench", sandbox, MemoryStore(), clock)
    metrics = LocalMetrics(endpoint)
    endpoint.prepare(Candidate(name="v7"), "v6")
    if mirror:
        endpoint.set_shadow("v7", mirror)
    looks = requests = generated = 0
    started = time.perf_counter()
    for weight, duration in STAGES:
        weight = 0.0 if mirror else weight
        endpoint.set_traffic({"v6": 100.0 - weight, "v7": weight})
        stage_start = clock.now()
        for _ in range(int(duration // 60)):
            clock.advance(60)
            if fresh:
                generated += metrics.model(T0).generated
                metrics = LocalMetrics(endpoint)
            start = T0 if from_rollout_start else stage_start
            windows = metrics.query(MetricsQuery(start, clock.now(), ("v6", "v7"), (), 60))
            requests = sum(w.requests or 0 for w in windows.values())
            looks += 1
    elapsed = time.perf_counter() - started
    return elapsed, looks, requests, generated + metrics.model(T0).generated


WEEK_PLAN = """
version: 1
name: week-long canary
target: {provider: local, endpoint: week}
candidate: {name: v7}
strategy:
  type: canary
  steps: [{weight: 50}, {analyze: 7d}]
analysis:
  interval: 1h
  min_requests: 1000
  max_hold: 1h
  on_inconclusive: continue
  gates:
    - {name: errors, metric: error_rate, vs_baseline: {max_increase: 50%}}
    - name: conversion
      metric: custom
      query: {metric: conversion}
      direction: decrease
      vs_baseline: {max_decrease: 50%}
sandbox:
  seed: 7
  rps: {base: 1000, daily_swing: 3}
  users: {count: 50000, attributes: {region: [eu-west-1, us-east-1], tier: [free, pro, team]}}
  variants:
    v6: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms, custom: {conversion: 0.031}}
    v7: {error_rate: 0.01, latency_p50: 42ms, latency_p99: 130ms, custom: {conversion: 0.032}}
  events:
    - {at: 1d, rps: 0, for: 2h}
    - {at: 3d, variant: v7, latency_p99: 150ms}
    - {at: 5d, metrics_delay: 2h, for: 6h}
"""


def week() -> tuple[float, int, str, int]:
    """Wall seconds, looks, final phase, buckets generated of the week-long rehearsal."""
    from mlrollout.engine.events import LOOK_KINDS
    from mlrollout.engine.runner import Runner
    from mlrollout.plan.loader import parse_plan
    from mlrollout.sandbox.endpoint import LocalMetrics as Metrics
    from mlrollout.state.sqlite import SqliteStateStore

    generated: list[int] = []
    query = Metrics.query

    def counting(self: Metrics, q: MetricsQuery) -> Any:
        out = query(self, q)
        generated.append(self._model.generated if self._model is not None else 0)
        return out

    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStateStore(Path(tmp) / "state.db")
        runner = Runner(store)
        record = runner.create(parse_plan(WEEK_PLAN, "week.yaml"))
        Metrics.query = counting  # type: ignore[method-assign, assignment]
        try:
            started = time.perf_counter()
            outcome = runner.drive(record.id)
            elapsed = time.perf_counter() - started
        finally:
            Metrics.query = query  # type: ignore[method-assign]
        looks = sum(1 for e in store.events(record.id) if e.kind in LOOK_KINDS)
        store.close()
    return elapsed, looks, outcome.phase.value, max(generated, default=0)


def main() -> None:
    print("30-minute canary, a look every 60 s, 2 variants, cumulative windows")
    print(f"{'scenario':<36}{'total ms':>10}{'ms/look':>10}{'buckets':>10}{'last window':>14}")
    for label, rps, whole, fresh, mirror in (
        ("stage windows, 100 rps", 100.0, False, False, 0.0),
        ("rollout windows, 100 rps", 100.0, True, False, 0.0),
        ("rollout, new process per look", 100.0, True, True, 0.0),
        ("rollout windows, 10k rps", 10_000.0, True, False, 0.0),
        ("rollout, 100 % mirrored, 100 rps", 100.0, True, False, 100.0),
    ):
        best = min(
            run(rps=rps, from_rollout_start=whole, fresh=fresh, mirror=mirror) for _ in range(3)
        )
        elapsed, looks, requests, generated = best
        print(
            f"{label:<36}{elapsed * 1e3:>10.1f}{elapsed * 1e3 / looks:>10.2f}"
            f"{generated:>10}{requests:>14,}"
        )
    print()
    print("7-day canary, a look every hour, 1,000 req/s daily profile, 50,000 users, 3 events,")
    print("custom conversion gate, end to end through Runner on SQLite (target < 2 s)")
    elapsed, looks, phase, generated = week()
    print(f"{'wall s':>8}{'looks':>8}{'buckets':>10}  outcome")
    print(f"{elapsed:>8.2f}{looks:>8}{generated:>10}  {phase}")


if __name__ == "__main__":
    main()
