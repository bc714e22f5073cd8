"""Decision quality of the A/B winner test (:mod:`mlrollout.analysis.winner`): a seeded simulation.

Each cell simulates ``--runs`` A/B stages (default 2,000) looked at on cumulative windows, as the
engine looks: per look interval each arm gets ``rps × interval`` requests (a 50/50 split); a rate
metric's conversions are Binomial; a mean metric (revenue per request) is a conversion (1 %)
times a lognormal order value (σ = 1), summed exactly per interval. The winner test's statistic
is computed vectorized with numpy (the same formulas as the module: the log ratio, its
delta-method variance, batch means for a mean, Robbins' normal-mixture interval scaled to
``min_effect``); before the cells run, :func:`cross_check` feeds a few simulated paths through
the real :func:`mlrollout.analysis.winner.evaluate` and asserts that both agree look by look.

Per cell: the share of runs that declared a **winner** (with its exact upper 95 % bound), that
reached **no worthwhile lift**, that stayed undecided at the end; the time to decision (mean /
median / p95 over the decided runs); how often the interval at the decision covered the true
lift; and for lifts, the mean sample size at decision as a ratio to a fixed-horizon two-sided
z-test of the same power (a measured 100 % taken as ``1 - 0.5 / runs``) and of 80 %:
``N_fixed = (z_{1-α/2} + z_power)² V₁ / δ²`` per arm, ``V₁`` the log ratio's variance at one
request per arm, ``δ`` the true log ratio.

Run: ``nice python benchmarks/winner.py [--runs N] [--only SUBSTRING]``. Needs numpy.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from dataclasses import dataclass
from statistics import NormalDist

try:
    import numpy as np
except ImportError:  # pragma: no cover - a hint instead of a traceback
    sys.exit('the benchmark needs numpy: pip install -e ".[bench]"')

from mlrollout.analysis import winner
from mlrollout.analysis.rule import LookContext
from mlrollout.contracts import CustomValue, Window
from mlrollout.plan.model import Gate

DAY = 86400.0
GATE = Gate(name="conversion", metric="custom", direction="decrease", query={"metric": "x"})
MEAN_CONVERSION = 0.01  # revenue: this share of requests buy something ...
VALUE_SIGMA = 1.0  # ... for a lognormal order value (log-scale sd)


@dataclass(frozen=True)
class Cell:
    name: str
    kind: str  # "rate" | "mean"
    lift: float  # true relative lift of the candidate
    baseline: float = 0.01  # conversion rate (rates)
    rps: float = 100.0  # per arm
    interval: float = 60.0  # seconds between looks
    days: float = 7.0
    min_effect: float = 0.01
    alpha: float = 0.05
    min_requests: int = 200
    #: False: keep looking after "no worthwhile lift" (an A/A cell's false winner over the whole
    #: horizon, the harshest case: a real stage would have stopped there, baseline kept).
    stop_on_none: bool = True

    @property
    def looks(self) -> int:
        return int(self.days * DAY / self.interval)

    @property
    def per_look(self) -> int:
        return int(self.rps * self.interval)


CELLS = [
    Cell("A/A, rate 1 %, looks every minute for 7 days", "rate", 0.0, stop_on_none=False),
    Cell("+5 %, rate 1 %", "rate", 0.05),
    Cell("+2 % (twice min_effect), rate 1 %", "rate", 0.02),
    Cell("lift 0: time to 'no worthwhile lift' (min_effect 1 %)", "rate", 0.0),
    Cell("A/A, revenue per request (lognormal values)", "mean", 0.0, stop_on_none=False),
    Cell("+5 %, revenue per request", "mean", 0.05),
    # the cells: hourly looks for 14 days, 3 % conversion, 10 req/s at 50/50
    Cell("A/A, rate 3 %, 5 req/s per arm, hourly looks, 14 days", "rate", 0.0, 0.03, 5.0,
         3600.0, 14.0, stop_on_none=False),
    Cell("+5 %, rate 3 %, 5 req/s per arm, hourly looks, 14 days", "rate", 0.05, 0.03, 5.0,
         3600.0, 14.0),
]  # fmt: skip


def draw(cell: Cell, rng: np.random.Generator, rows: int, cols: int, lift: float) -> np.ndarray:
    """Per-interval totals of one arm (its counts are ``cell.per_look``)."""
    n = cell.per_look
    if cell.kind == "rate":
        return rng.binomial(n, cell.baseline * (1 + lift), size=(rows, cols)).astype(float)
    buyers = rng.binomial(n, MEAN_CONVERSION, size=(rows, cols))
    flat = buyers.ravel()
    values = rng.lognormal(math.log1p(lift), VALUE_SIGMA, size=int(flat.sum()))
    sums = np.concatenate(([0.0], np.cumsum(values)))
    ends = np.cumsum(flat)
    return (sums[ends] - sums[ends - flat]).reshape(rows, cols)


@dataclass
class Arms:
    """Cumulative sums of one arm over the looks so far (per run)."""

    total: np.ndarray
    count: np.ndarray
    square: np.ndarray  # Σ T_k² / n_k (batch means)
    looks: np.ndarray


def statistic(
    cell: Cell, c: Arms, b: Arms, events: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(log ratio, variance, radius, judged) at each look: the module's formulas, vectorized."""
    tau = winner.scale_of(cell.min_effect)
    t2 = tau * tau
    mc, mb = c.total / c.count, b.total / b.count
    with np.errstate(divide="ignore", invalid="ignore"):
        if cell.kind == "rate":
            vc, vb = mc * (1 - mc), mb * (1 - mb)
            judged = (np.minimum(c.total, c.count - c.total) >= winner.MIN_EVENTS) & (
                np.minimum(b.total, b.count - b.total) >= winner.MIN_EVENTS
            )
        else:
            vc = (c.square - c.total**2 / c.count) / (c.looks - 1)
            vb = (b.square - b.total**2 / b.count) / (b.looks - 1)
            judged = (c.looks >= winner.MIN_INTERVALS) & (vc > 0) & (vb > 0) & (mc > 0) & (mb > 0)
        judged &= (c.count >= cell.min_requests) & (b.count >= cell.min_requests)
        var = vc / (c.count * mc**2) + vb / (b.count * mb**2)
        est = np.log(mc / mb)
        radius = np.sqrt(
            var * (var + t2) / t2 * (2 * math.log(1 / cell.alpha) + np.log1p(t2 / var))
        )
    return est, var, radius, judged


@dataclass
class Outcome:
    decided: str  # "won" | "none" | "undecided"
    look: int  # 1-based look of the decision (0: undecided)
    covered: bool


def advance(prev: Arms, x: np.ndarray, alive: np.ndarray, n: float) -> Arms:
    """The cumulative sums of the ``alive`` runs at each look of the block ``x``."""
    k = np.arange(1, x.shape[1] + 1)[None, :]
    return Arms(
        prev.total[alive][:, None] + np.cumsum(x, axis=1),
        prev.count[alive][:, None] + n * k,
        prev.square[alive][:, None] + np.cumsum(x * x / n, axis=1),
        prev.looks[alive][:, None] + k,
    )


def simulate(cell: Cell, runs: int, seed: int, block: int = 720, chunk: int = 250) -> list[Outcome]:
    rng = np.random.default_rng(seed)
    out: list[Outcome] = []
    truth = math.log1p(cell.lift)
    edge = math.log1p(cell.min_effect)
    n = float(cell.per_look)
    for start in range(0, runs, chunk):
        rows = min(chunk, runs - start)
        zero = np.zeros(rows)
        c = Arms(zero.copy(), zero.copy(), zero.copy(), zero.copy())
        b = Arms(zero.copy(), zero.copy(), zero.copy(), zero.copy())
        alive = np.arange(rows)
        results: dict[int, Outcome] = {}
        done = 0
        while done < cell.looks and alive.size:
            cols = min(block, cell.looks - done)
            m = alive.size
            xc, xb = draw(cell, rng, m, cols, cell.lift), draw(cell, rng, m, cols, 0.0)

            ca, ba = advance(c, xc, alive, n), advance(b, xb, alive, n)
            est, _, rad, judged = statistic(cell, ca, ba)
            win = judged & (est - rad > 0)
            none = judged & (est + rad < edge) & ~win
            if not cell.stop_on_none:
                none &= False
            hit = win | none
            first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
            for i, j in enumerate(first):
                if j < 0:
                    continue
                run = int(alive[i])
                covered = bool(est[i, j] - rad[i, j] <= truth <= est[i, j] + rad[i, j])
                results[run] = Outcome("won" if win[i, j] else "none", done + j + 1, covered)
            for prev, now in ((c, ca), (b, ba)):
                for name in ("total", "count", "square", "looks"):
                    getattr(prev, name)[alive] = getattr(now, name)[:, -1]
            alive = np.array([r for r in alive if r not in results], dtype=int)
            done += cols
        out += [results.get(r, Outcome("undecided", 0, True)) for r in range(rows)]
    return out


def cross_check(seed: int = 3) -> None:
    """A few paths through the real module: the vectorized statistic must match it."""
    for kind, lift in (("rate", 0.05), ("mean", 0.05)):
        cell = Cell("check", kind, lift, rps=20.0, alpha=0.025)
        rng = np.random.default_rng(seed)
        looks = 40
        xc, xb = draw(cell, rng, 1, looks, lift)[0], draw(cell, rng, 1, looks, 0.0)[0]
        n = float(cell.per_look)
        k = np.arange(1, looks + 1)
        ca = Arms(np.cumsum(xc), n * k, np.cumsum(xc * xc / n), k.astype(float))
        ba = Arms(np.cumsum(xb), n * k, np.cumsum(xb * xb / n), k.astype(float))
        est, _, rad, judged = statistic(cell, ca, ba)
        ctx = LookContext(alpha_per_look=cell.alpha, min_requests=cell.min_requests,
                          alpha_test=cell.alpha)  # fmt: skip
        intervals: list[tuple[Window, Window]] = []
        for j in range(looks):
            intervals.append(
                (
                    Window(requests=int(n), custom={"conversion": CustomValue(xc[j], n)}),
                    Window(requests=int(n), custom={"conversion": CustomValue(xb[j], n)}),
                )
            )
            cand = Window(
                requests=int(n * (j + 1)),
                custom={"conversion": CustomValue(ca.total[j], n * (j + 1))},
            )
            base = Window(requests=int(n * (j + 1)),
                          custom={"conversion": CustomValue(ba.total[j], n * (j + 1))})  # fmt: skip
            ctx_j = LookContext(ctx.alpha_per_look, ctx.min_requests, ctx.alpha_test,
                                intervals=tuple(intervals))  # fmt: skip
            v = winner.evaluate(GATE, cand, base, ctx_j, min_effect=cell.min_effect)
            has = "lift_low" in v.numbers
            assert has == bool(judged[j]), (kind, j, v.reason)
            if has:
                low = math.expm1(est[j] - rad[j])
                assert abs((v.numbers["lift_low"] or 0.0) - low) < 1e-9 * max(1.0, abs(low)), (
                    kind,
                    j,
                    v.numbers["lift_low"],
                    low,
                )


def clopper_pearson_upper(k: int, n: int, conf: float = 0.95) -> float:
    """Exact one-sided upper bound of a binomial proportion (bisection on its CDF)."""
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        cdf = sum(
            math.exp(
                math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                + i * math.log(mid) + (n - i) * math.log1p(-mid)
            )
            for i in range(k + 1)
        )  # fmt: skip
        lo, hi = (mid, hi) if cdf > 1 - conf else (lo, mid)
    return hi


def fixed_horizon(cell: Cell, power: float) -> float:
    """Requests per arm of a fixed-horizon two-sided z-test on the log ratio at ``power``."""
    if cell.kind == "rate":
        p_c, p_b = cell.baseline * (1 + cell.lift), cell.baseline
        v1 = (1 - p_c) / p_c + (1 - p_b) / p_b
    else:  # per-request revenue: a conversion q times a lognormal value of (mean 1 per unit)
        q, s2 = MEAN_CONVERSION, VALUE_SIGMA**2
        cv2 = math.exp(s2) / q - 1  # E[X²] / E[X]² - 1
        v1 = 2 * cv2
    z = NormalDist().inv_cdf
    delta = math.log1p(cell.lift)
    return (z(1 - cell.alpha / 2) + z(power)) ** 2 * v1 / delta**2


def report(cell: Cell, outcomes: list[Outcome], seconds: float) -> list[str]:
    runs = len(outcomes)
    won = sum(o.decided == "won" for o in outcomes)
    none = sum(o.decided == "none" for o in outcomes)
    times = sorted(o.look * cell.interval for o in outcomes if o.look)
    decided = [o for o in outcomes if o.look]
    cover = sum(o.covered for o in decided) / len(decided) if decided else math.nan

    def fmt_t(t: float) -> str:
        return f"{t / 3600:.1f} h" if t < 2 * DAY else f"{t / DAY:.2f} d"

    row = [
        cell.name,
        f"{100 * won / runs:.2f} % (≤ {100 * clopper_pearson_upper(won, runs):.2f} %)",
        f"{100 * none / runs:.1f} %",
        f"{100 * (runs - won - none) / runs:.1f} %",
    ]
    if times:
        p95 = times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)]
        mean = sum(times) / len(times)
        row.append(f"{fmt_t(mean)} / {fmt_t(times[len(times) // 2])} / {fmt_t(p95)}")
        row.append(f"{100 * cover:.1f} %")
    else:
        row += ["-", "-"]
    if cell.lift > 0 and won:
        power = min(won / runs, 1 - 0.5 / runs)
        n_seq = sum(o.look * cell.per_look for o in decided) / len(decided)
        same, eighty = fixed_horizon(cell, power), fixed_horizon(cell, 0.8)
        row.append(f"{n_seq / same:.2f} ({power:.2%}); {n_seq / eighty:.2f} (80 %)")
    else:
        row.append("-")
    row.append(f"{seconds:.0f} s")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--only", default="")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args(argv)
    cross_check()
    print("cross-check against mlrollout.analysis.winner.evaluate: ok")
    header = [
        "cell",
        "winner (upper 95 %)",
        "no worthwhile lift",
        "undecided",
        "time to decision mean / median / p95",
        "covers true lift",
        "N / N_fixed at the same power; at 80 %",
        "took",
    ]
    rows = []
    for cell in CELLS:
        if args.only and args.only not in cell.name:
            continue
        began = time.perf_counter()
        outcomes = simulate(cell, args.runs, args.seed + zlib.crc32(cell.name.encode()))
        rows.append(report(cell, outcomes, time.perf_counter() - began))
        print(" | ".join(rows[-1]), flush=True)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\n{args.runs} runs per cell, alpha {CELLS[0].alpha} for the winner test alone, "
          f"min_effect {CELLS[0].min_effect:.0%}, seed {args.seed}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
