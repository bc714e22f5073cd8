"""Calibrate the rollback boundaries of the mixture SPRTs for discrete looks and finite stages.

Ville's inequality bounds the chance that a mixture likelihood ratio *ever* reaches ``1/alpha``
under the null, and that bound is reached only when the ratio is watched continuously and for
ever. The engine looks every ``interval`` (the evidence jumps past the boundary, overshooting it)
for a bounded number of looks (a stage ends), so at the boundary ``log(1/alpha)`` the real
false-rollback rate is well under ``alpha`` (about 2 % at 5 % for a canary of 100 req/s). This
script measures how far the boundary can come down with the rate still at most ``alpha``:

- the model is the Gaussian limit of every test the rule runs: the score ``S`` is a Brownian
  motion in its information ``V``, and each alternative ``d`` of a mixture grid has the log
  likelihood ratio ``d S - d^2 V / 2``; the mixture is watched at looks ``V = u, 2u, 3u, ...``
  where ``u`` is the information one look adds (scaled by the grid's reference ``d``);
- for each per-look information ``u`` and number of looks ``K`` (plus "no end"), it simulates the
  running maximum of the mixture's log ratio and takes its ``1 - alpha`` quantile: the boundary
  ``b`` with ``P(max over K looks >= b) = alpha``; the table holds ``delta = log(1/alpha) - b``;
- the Gaussian limit has no lattice: binomial counts overshoot more than it does, so its boundary
  is conservative for them (the decision benchmark checks the real rates).

Run: ``python benchmarks/calibrate.py [--runs N] [--grids fail,rank,srm]`` (numpy; about 8 min
on 2 cores at the default 100,000 runs).
It prints the table as Python to paste into ``mlrollout/analysis/calibration.py``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from mlrollout.analysis.calibration import ALPHAS, HORIZONS, STEPS
from mlrollout.analysis.mixture import CALIBRATED_GRIDS

CHUNK = 4000  # runs simulated together


def long_looks(grid: tuple[tuple[float, float], ...], ref: float, u: float) -> int:
    """Looks that stand for "no end": 30 / d_min^2 of information (the smallest alternative's
    drift has then long overwhelmed its noise)."""
    d_min = min(abs(d) for d, _ in grid)
    return max(HORIZONS[-1] * 2, math.ceil(30.0 / d_min**2 * ref**2 / u))


def maxima(name: str, u: float, runs: int, seed: int) -> dict[int, np.ndarray]:
    """Per horizon (looks; 0 = no end), each run's running maximum of the mixture log ratio."""
    grid, ref = CALIBRATED_GRIDS[name]
    dv = u / ref**2  # information per look in the grid's own units
    total = long_looks(grid, ref, u)
    ds = np.array([d for d, _ in grid])
    logw = np.log(np.array([w for _, w in grid]))
    rng = np.random.default_rng(seed)
    out: dict[int, list[np.ndarray]] = {k: [] for k in (*HORIZONS, 0)}
    for start in range(0, runs, CHUNK):
        n = min(CHUNK, runs - start)
        s = np.zeros(n)
        best = np.full(n, -np.inf)
        for k in range(1, total + 1):
            s += rng.normal(0.0, math.sqrt(dv), n)
            v = k * dv
            llr = logw[:, None] + ds[:, None] * s[None, :] - (ds * ds * v / 2)[:, None]
            top = llr.max(0)
            mix = top + np.log(np.exp(llr - top).sum(0))
            np.maximum(best, mix, out=best)
            if k in out:
                out[k].append(best.copy())
        out[0].append(best.copy())
    return {k: np.concatenate(v) for k, v in out.items()}


def row(args: tuple[str, float, int, int]) -> tuple[str, float, list[list[float]]]:
    name, u, runs, seed = args
    m = maxima(name, u, runs, seed)
    table = []
    for alpha in ALPHAS:
        line = []
        for k in (*HORIZONS, 0):
            b = float(np.quantile(m[k], 1.0 - alpha))
            line.append(round(max(0.0, math.log(1.0 / alpha) - b), 2))
        table.append(line)
    return name, u, table


def monotone(table: dict[float, list[list[float]]]) -> None:
    """Smooth out simulation noise toward the safe side, in place: the correction may only fall
    as the horizon grows, and only rise as the step grows (each value the smallest of those
    that should be at least as large)."""
    for rows in table.values():
        for line in rows:
            for k in range(1, len(line)):
                line[k] = min(line[k], line[k - 1])
    steps = sorted(table)
    for i in reversed(range(len(steps) - 1)):
        here, there = table[steps[i]], table[steps[i + 1]]
        for a, line in enumerate(here):
            for k in range(len(line)):
                line[k] = min(line[k], there[a][k])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--grids", default=",".join(CALIBRATED_GRIDS), help="which grids (comma-separated)"
    )
    args = parser.parse_args(argv)
    names = [n for n in args.grids.split(",") if n]
    unknown = sorted(set(names) - set(CALIBRATED_GRIDS))
    if unknown:
        parser.error(
            f"unknown grid {', '.join(unknown)}: choose from {', '.join(CALIBRATED_GRIDS)}"
        )
    started = time.perf_counter()
    jobs = [
        (name, u, args.runs, 1000 * i + j)
        for i, name in enumerate(CALIBRATED_GRIDS)
        if name in names
        for j, u in enumerate(STEPS)
    ]
    results: dict[str, dict[float, list[list[float]]]] = {name: {} for name in names}
    with ProcessPoolExecutor(args.jobs) as pool:
        for name, u, table in pool.map(row, jobs):
            results[name][u] = table
            print(f"  {name} u={u:g}: {time.perf_counter() - started:.0f}s", file=sys.stderr)
    for name in names:
        monotone(results[name])
    print(f"# benchmarks/calibrate.py --runs {args.runs}: delta[grid][step][alpha][horizon]")
    print("DELTAS = {")
    for name in names:
        print(f"    {name!r}: (")
        for u in STEPS:
            lines = ", ".join(
                "(" + ", ".join(f"{x:.2f}" for x in a) + ")" for a in results[name][u]
            )
            print(f"        ({lines}),  # u={u:g}")
        print("    ),")
    print("}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
