"""``mlrollout impact`` and ``mlrollout plan backtest`` on the sandbox: coverage and rates.

1. Impact coverage: ``--seeds`` (default 200) seeded sandbox histories, 7 days before and 7 days
   after a 30-minute rollout, hourly windows, 100 req/s on average with a x3 daily cycle, a
   conversion rate of 10 %: with a +3 % level shift at the rollout's start (an event), the share
   of runs whose 95 % interval holds the true shift (and that call it significant); with no
   shift, the share whose interval holds zero; the placebo's false flags; and with the
   conversion creeping up 0.2 % every 6 h before the rollout, the share the placebo flags.
2. Backtest vs the decision benchmark: the canary plans of ``benchmarks/engine_decisions.py``
   (healthy, and with both arms' errors in bursts of shape 2), replayed on 14 days of the
   sandbox's A/A history; compare with that benchmark's whole-engine rates for the same plans
   (``python benchmarks/engine_decisions.py --only "canary 10/50 healthy"``).

Prints a table and a JSON line. Run: ``python benchmarks/impact.py [--seeds N] [--days D]``.
Needs statsmodels (``pip install -e ".[impact]"``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from engine_decisions import BURSTY, CANARY  # the sibling script: the same plans

from mlrollout.analysis.impact import Impact, estimate
from mlrollout.history import read_history
from mlrollout.plan import backtest
from mlrollout.plan.loader import parse_plan
from mlrollout.plan.model import Gate, Sandbox
from mlrollout.sandbox.history import SandboxHistory

T0 = 1_800_000_000.0
END = T0 + 1800
DAY = 86400.0
RATE = 0.10
CONVERSION = Gate(name="conversion", metric="custom", query={"metric": "conversion"})


def world(seed: int, events: list[dict[str, Any]]) -> Sandbox:
    return Sandbox.model_validate(
        {
            "seed": seed,
            "rps": {"base": 100, "daily_swing": 3},
            "variants": {"v1": {"custom": {"conversion": RATE}}, "v2": {}},
            "events": events,
        }
    )


def impact(sandbox: Sandbox) -> Impact:
    source = SandboxHistory(sandbox, T0, "shop")
    pre = read_history(
        source, start=T0 - 7 * DAY, end=T0, step=3600, variants=["v1"], gates=[CONVERSION]
    )
    post = read_history(
        source, start=END, end=END + 7 * DAY, step=3600, variants=["v1"], gates=[CONVERSION]
    )
    return estimate(
        pre.values(CONVERSION),
        post.values(CONVERSION),
        change=(T0, END),
        metric="conversion",
        rate=True,
        step=3600,
    )


def coverage(seeds: int) -> dict[str, Any]:
    shift = [{"at": "0s", "variant": "v1", "custom": {"conversion": RATE * 1.03}}]
    ramp = [
        {"at": f"{-7 * DAY + i * 21600:.0f}s", "variant": "v1",
         "custom": {"conversion": RATE * (1 + 0.002 * i)}}
        for i in range(28)
    ]  # fmt: skip
    started = time.perf_counter()
    covered = significant = zero = placebo_false = placebo_trend = 0
    for seed in range(seeds):
        shifted = impact(world(seed, shift)).effect
        covered += shifted.lower <= RATE * 0.03 <= shifted.upper
        significant += shifted.lower > 0
        none = impact(world(seed, []))
        zero += none.effect.covers_zero
        placebo_false += bool(none.placebo and none.placebo.flagged)
        trended = impact(world(seed, ramp))
        placebo_trend += bool(trended.placebo and trended.placebo.flagged)
    return {
        "seeds": seeds,
        "shift_covered": covered / seeds,
        "shift_significant": significant / seeds,
        "no_shift_covers_zero": zero / seeds,
        "placebo_false_flags": placebo_false / seeds,
        "placebo_flags_trend": placebo_trend / seeds,
        "seconds": time.perf_counter() - started,
    }


def backtests(days: float) -> list[dict[str, Any]]:
    rows = []
    for name, template in (
        ("canary 10/50 healthy", CANARY),
        ("canary 10/50 healthy, bursty errors (k=2)", BURSTY),
    ):
        plan = parse_plan(template.replace("SEED", "0").replace("CANDIDATE", "0.01"), "b.yaml").plan
        assert plan.sandbox is not None
        started = time.perf_counter()
        history = read_history(
            SandboxHistory(plan.sandbox, T0, plan.target.endpoint),
            start=T0,
            end=T0 + days * DAY,
            step=plan.analysis.interval,
            variants=["v1"],
            gates=plan.analysis.gates,
        )
        read = time.perf_counter() - started
        result = backtest.run(plan, history, variant="v1")
        data = result.to_dict()
        rows.append(
            {
                "cell": name,
                "days": days,
                "rollouts": data["rollouts"],
                "rolled_back": data["rolled_back"],
                "rate": data["false_rollback_rate"],
                "interval95": data["false_rollback_interval95"],
                "reasons": data["reasons"]["rolled_back"],
                "read_seconds": read,
                "seconds": time.perf_counter() - started,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200, help="impact runs per cell")
    parser.add_argument("--days", type=float, default=14.0, help="backtest history, days")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cov = coverage(args.seeds)
    print(f"impact, {cov['seeds']} seeds ({cov['seconds']:.0f}s):")
    print(f"  +3% shift inside the 95% interval   {cov['shift_covered']:.1%}")
    print(f"  +3% shift significant                {cov['shift_significant']:.1%}")
    print(f"  no shift: interval holds zero        {cov['no_shift_covers_zero']:.1%}")
    print(f"  placebo false flags (stable)         {cov['placebo_false_flags']:.1%}")
    print(f"  placebo flags a pre-rollout trend    {cov['placebo_flags_trend']:.1%}")
    rows = backtests(args.days)
    print(f"backtest, {args.days:g} days of A/A history:")
    for r in rows:
        low, high = r["interval95"]
        print(
            f"  {r['cell']:<44} {r['rollouts']:>5} rollouts  {r['rate']:.2%} "
            f"({low:.2%}-{high:.2%})  {r['reasons']}  {r['seconds']:.0f}s"
        )
    print(f"({time.perf_counter() - started:.0f}s)")
    print(json.dumps({"impact": cov, "backtest": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
