"""False rollbacks and detection through the whole engine: real plans on the local sandbox.

``decisions.py`` measures the analysis alone on simulated windows. This drives complete rollouts
(plan, engine, sandbox traffic, SQLite journal) over many sandbox seeds, so what it measures
includes what the engine passes to the analysis: each look's number, the step's horizon
(window plus ``max_hold``), the approval waits' "no end", alpha split over judged stages.

Cells (100 req/s, 1 % baseline errors, looks every 10 s, alpha 5 % unless stated):

- ``canary 10/50 healthy``: analyze 10 m at 10 %, approval wait of 10 m (gates watching), analyze
  10 m at 50 %; errors, p99 vs baseline, p99 max; candidate = baseline.
- ``linear 50 % healthy``: linear 50 % every 5 m, errors vs baseline (looks every 60 s).
- ``canary 10/50, errors x2``: the first plan with a candidate at 2 % errors.
- ``canary 10/50 healthy, bursty errors (k=2)``: the first plan with each arm's errors in bursts
  (negative-binomial per 10 s, shape 2: the sandbox's ``error_bursts``); a healthy candidate.

Prints a table and a JSON line. Run:
``python benchmarks/engine_decisions.py [--seeds N] [--only SUBSTRING]``
(``make bench``; 1,000 seeds per cell take about 4 minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from decisions import clopper_pearson_upper  # the sibling script (needs numpy)

from mlrollout.clock import VirtualClock
from mlrollout.engine.runner import Runner
from mlrollout.plan.loader import parse_plan
from mlrollout.state.sqlite import SqliteStateStore

CANARY = """
version: 1
name: canary
target: {provider: local, endpoint: ep}
candidate: {name: v2}
strategy:
  type: canary
  steps:
    - weight: 10
    - analyze: 10m
    - approve: {timeout: 10m, on_timeout: continue}
    - weight: 50
    - analyze: 10m
analysis:
  interval: 10s
  min_requests: 100
  max_hold: 5m
  gates:
    - {name: errors, metric: error_rate, vs_baseline: {max_increase: 25%}}
    - {name: p99, metric: latency_p99, vs_baseline: {max_increase: 10%}}
    - {name: p99max, metric: latency_p99, max: 400ms}
sandbox:
  seed: SEED
  rps: 100
  variants:
    v1: {error_rate: 0.01, latency_p50: 40ms, latency_p99: 120ms}
    v2: {error_rate: CANDIDATE, latency_p50: 40ms, latency_p99: 120ms}
"""

LINEAR = """
version: 1
name: linear
target: {provider: local, endpoint: ep}
candidate: {name: v2}
strategy: {type: linear, step: 50, every: 5m}
analysis:
  min_requests: 50
  gates: [{name: errors, metric: error_rate, vs_baseline: {max_increase: 50%}}]
sandbox:
  seed: SEED
  rps: 100
  variants: {v1: {error_rate: 0.01}, v2: {error_rate: 0.01}}
"""

#: The canary with both arms' errors in bursts: negative-binomial per 10 s with shape 2 (the
#: sandbox's ``error_bursts``), as when an instance hiccups or a retry storm hits one fleet.
BURSTY = CANARY.replace(
    "v1: {error_rate: 0.01,", "v1: {error_rate: 0.01, error_bursts: 2,"
).replace("v2: {error_rate: CANDIDATE,", "v2: {error_rate: CANDIDATE, error_bursts: 2,")

CELLS = {
    "canary 10/50 healthy": (CANARY, 0.01),
    "linear 50% healthy": (LINEAR, 0.01),
    "canary 10/50, errors x2": (CANARY, 0.02),
    "canary 10/50 healthy, bursty errors (k=2)": (BURSTY, 0.01),
}


def run(template: str, candidate: float, seed: int, folder: Path) -> tuple[str, float | None]:
    text = template.replace("SEED", str(seed)).replace("CANDIDATE", str(candidate))
    store = SqliteStateStore(folder / f"{seed}.db")
    runner = Runner(store, holder="bench")
    record = runner.create(parse_plan(text, "bench.yaml"))
    outcome = runner.drive(record.id, clock=VirtualClock(1_800_000_000.0))
    events = store.events(record.id)
    started = next(e.at for e in events if e.kind == "set_traffic.applied")
    failed = next((e.at for e in events if e.kind == "analysis.failed"), None)
    store.close()
    return outcome.phase.value, None if failed is None else failed - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000, help="rollouts per cell")
    parser.add_argument("--only", default="", help="only the cells whose name contains this")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, (template, candidate) in CELLS.items():
            if args.only not in name:
                continue
            t0 = time.perf_counter()
            folder = Path(tmp) / name.replace(" ", "_").replace("/", "-")
            folder.mkdir()
            results = [run(template, candidate, s, folder) for s in range(args.seeds)]
            rolled = sum(1 for phase, _ in results if phase == "rolled_back")
            times = sorted(t for _, t in results if t is not None)
            rows.append(
                {
                    "cell": name,
                    "rollouts": args.seeds,
                    "rolled_back": rolled / args.seeds,
                    "rolled_back_upper95": clopper_pearson_upper(rolled, args.seeds),
                    "detect_mean_s": statistics.fmean(times) if times else None,
                    "detect_median_s": statistics.median(times) if times else None,
                    "seconds": time.perf_counter() - t0,
                }
            )
    print(f"{'cell':<44}{'rollouts':>9}{'rolled back':>13}{'up95':>7}{'detect mean':>13}{'med':>6}")
    for r in rows:
        mean = "-" if r["detect_mean_s"] is None else f"{r['detect_mean_s']:.0f}s"
        med = "-" if r["detect_median_s"] is None else f"{r['detect_median_s']:.0f}s"
        print(
            f"{r['cell']:<44}{r['rollouts']:>9}{r['rolled_back']:>13.2%}"
            f"{r['rolled_back_upper95']:>7.1%}{mean:>13}{med:>6}"
        )
    print(f"({time.perf_counter() - started:.0f}s)")
    print(json.dumps({"cells": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
