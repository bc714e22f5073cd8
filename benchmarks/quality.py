"""Decision quality of the quality gates (:mod:`mlrollout.analysis.quality`) with late labels.

Each run simulates one analysis stage as the engine looks at it: a look every ``--interval``
seconds (60) over ``--minutes`` (30), on the stage's cumulative counts. Each second the
candidate makes ``cand_rps`` predictions and the baseline ``base_rps``; binary labels (class
``"1"`` 30 % of the time, errors symmetric at ``1 - accuracy``) are drawn per interval from a
multinomial (numpy), and the labels of an interval's predictions arrive ``--delay`` seconds
later (600: ten minutes); until then they count as waiting. A fifth of the responses are rated
(positive with probability ``feedback``), the ratings two minutes after the response. The counts
go through the real :meth:`mlrollout.analysis.GateSet.look` (``Window.quality``), with the
stage's look number and horizon, as the engine calls it.

Cells:

- **A/A**: both variants at accuracy 92 %, feedback 62 %, all five quality gates in one gate set
  (``alpha`` 5 %: 1 % each): accuracy, precision and F1 of class ``"1"``, macro recall (each
  ``vs_baseline: {max_decrease: 2pp}``) and feedback (``max_decrease: 5%``). Per gate: the share
  of runs it rolled back, with its exact (Clopper-Pearson) upper 95 % bound, against its share of
  ``alpha``; and how many runs it passed.
- **0.92 → 0.88**: the candidate at 88 % accuracy, 100 labelled predictions per second (the
  baseline 900: a 10 % canary), the same five gates: the share of runs rolled back (by any gate;
  by the accuracy gate; how often the accuracy gate wrongly passed) and the mean time to the
  rollback (from the stage's start and from the first labels); also the accuracy gate alone
  (all of ``alpha``), 10 and 1 candidate predictions per second, and labels without delay at a
  look every 10 s.

Run: ``nice python benchmarks/quality.py [--runs N] [--detect-runs N] [--delay S]``. Needs numpy.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass

try:
    import numpy as np
except ImportError:  # pragma: no cover - a hint instead of a traceback
    sys.exit('the benchmark needs numpy: pip install -e ".[bench]"')

from mlrollout.analysis import GateSet, Outcome
from mlrollout.contracts import Window
from mlrollout.feedback import QualityCounts
from mlrollout.plan.model import Analysis

TWO_PP = {"max_decrease": "2pp"}
GATES = [
    {"name": "accuracy", "metric": "accuracy", "vs_baseline": TWO_PP},
    {"name": "precision", "metric": "precision", "positive": "1", "vs_baseline": TWO_PP},
    {"name": "recall (macro)", "metric": "recall", "vs_baseline": TWO_PP},
    {"name": "f1", "metric": "f1", "positive": "1", "vs_baseline": TWO_PP},
    {"name": "feedback", "metric": "feedback", "vs_baseline": {"max_decrease": "5%"}},
]
POSITIVE = 0.30  # share of class "1" among the labels
RATED = 0.2  # share of responses rated
RATING_DELAY = 120.0  # seconds


@dataclass(frozen=True)
class Variant:
    rps: float
    accuracy: float = 0.92
    feedback: float = 0.62


def cells_of(accuracy: float) -> np.ndarray:
    """The multinomial's cells (label 1 predicted 1, 1→0, 0→0, 0→1)."""
    a = accuracy
    return np.array(
        [POSITIVE * a, POSITIVE * (1 - a), (1 - POSITIVE) * a, (1 - POSITIVE) * (1 - a)]
    )


def simulate(
    rng: np.random.Generator, v: Variant, looks: int, interval: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-interval confusion cells (looks × 4) and ratings (looks × 2: positive, rated)."""
    n = rng.poisson(v.rps * interval, size=looks)
    cells = np.array([rng.multinomial(k, cells_of(v.accuracy)) for k in n])
    rated = rng.binomial(n, RATED)
    positive = rng.binomial(rated, v.feedback)
    return cells, np.stack([positive, rated], axis=1)


def counts_at(
    look: int, cells: np.ndarray, ratings: np.ndarray, lag_labels: int, lag_ratings: int
) -> QualityCounts:
    """What a source reports at ``look`` (1-based): the intervals whose labels arrived."""
    done = max(0, look - lag_labels)
    c = cells[:done].sum(axis=0) if done else np.zeros(4, dtype=int)
    waiting = int(cells[done:look].sum())
    rdone = max(0, look - lag_ratings)
    r = ratings[:rdone].sum(axis=0) if rdone else np.zeros(2, dtype=int)
    rwaiting = int(ratings[rdone:look, 1].sum())
    confusion = {("1", "1"): int(c[0]), ("1", "0"): int(c[1]), ("0", "0"): int(c[2]),
                 ("0", "1"): int(c[3])}  # fmt: skip
    return QualityCounts(confusion, waiting, (int(r[0]), int(r[1])), rwaiting)


def run_stage(
    gates: GateSet,
    rng: np.random.Generator,
    cand: Variant,
    base: Variant,
    looks: int,
    interval: float,
    delay: float,
) -> tuple[dict[str, tuple[Outcome, int]], int]:
    """One stage; per gate its first decisive outcome (FAIL or PASS) and the look, and the first
    look that had labels. The stage ends at the first rollback (the engine rolls back)."""
    cc, cr = simulate(rng, cand, looks, interval)
    bc, br = simulate(rng, base, looks, interval)
    lag = math.ceil(delay / interval)
    rlag = math.ceil(RATING_DELAY / interval)
    first: dict[str, tuple[Outcome, int]] = {}
    for look in range(1, looks + 1):
        c = counts_at(look, cc, cr, lag, rlag)
        b = counts_at(look, bc, br, lag, rlag)
        requests_c, requests_b = int(cc[:look].sum()), int(bc[:look].sum())
        verdict = gates.look(
            Window(requests=requests_c, errors=0, quality=c),
            Window(requests=requests_b, errors=0, quality=b),
            look=look,
            horizon=looks,
        )
        for g in verdict.gates:
            if g.outcome in (Outcome.FAIL, Outcome.PASS) and g.gate not in first:
                first[g.gate] = (g.outcome, look)
        if verdict.outcome is Outcome.FAIL:
            break
    return first, lag + 1


def upper95(k: int, n: int) -> float:
    """The exact one-sided upper 95 % (Clopper-Pearson) bound of a binomial share ``k / n``."""
    if k >= n:
        return 1.0

    def cdf(p: float) -> float:
        return sum(
            math.exp(
                math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                + (i * math.log(p) if i else 0.0) + (n - i) * math.log1p(-p)
            )
            for i in range(k + 1)
        )  # fmt: skip

    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > 0.05 else (lo, mid)
    return hi


def gate_set(gates: list[dict[str, object]], alpha: float, min_labels: int) -> GateSet:
    analysis = Analysis.model_validate({"alpha": alpha, "min_requests": min_labels, "gates": gates})
    return GateSet.from_plan(analysis)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="A/A runs (default 2,000)")
    parser.add_argument("--detect-runs", type=int, default=300, help="runs per detection cell")
    parser.add_argument("--delay", type=float, default=600.0, help="label delay, seconds")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between looks")
    parser.add_argument("--minutes", type=float, default=30.0, help="stage length")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument(
        "--aa-rps", type=float, nargs="+", default=[10.0, 100.0],
        help="candidate predictions per second of the A/A cells (the baseline 9x)",
    )  # fmt: skip
    args = parser.parse_args()
    looks = max(1, round(args.minutes * 60 / args.interval))
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    share = args.alpha / len(GATES)
    print(
        f"quality gates, labels {args.delay:g} s late, ratings {RATING_DELAY:g} s late, a look "
        f"every {args.interval:g} s over {args.minutes:g} min ({looks} looks), alpha "
        f"{args.alpha:g} over {len(GATES)} gates ({share:g} each)"
    )

    # A/A: a 10 % canary at 100 (and 1,000) predictions per second, min_labels 200
    gates = gate_set(GATES, args.alpha, 200)
    for rps in args.aa_rps:
        fails = dict.fromkeys((str(g["name"]) for g in GATES), 0)
        passes = dict.fromkeys(fails, 0)
        for _ in range(args.runs):
            first, _ = run_stage(
                gates, rng, Variant(rps), Variant(9 * rps), looks, args.interval, args.delay
            )
            for name, (outcome, _) in first.items():
                (fails if outcome is Outcome.FAIL else passes)[name] += 1
        print(
            f"\nA/A, accuracy 92 %, feedback 62 %, {rps:g} vs {9 * rps:g} predictions/s: "
            f"{args.runs:,} runs"
        )
        print(f"{'gate':<16}{'rolled back':>12}{'upper 95%':>11}{'share':>8}{'passed':>9}")
        for name in fails:
            k = fails[name]
            bound = upper95(k, args.runs)
            print(
                f"{name:<16}{k / args.runs:>12.4f}{bound:>11.4f}{share:>8.3g}"
                f"{passes[name] / args.runs:>9.3f}"
                f"{'' if bound <= share else '  (above its share)'}"
            )
    aa = time.perf_counter() - start

    # Detection: 0.92 -> 0.88 at 100 labelled predictions per second (a 10 % canary)
    print(f"\naccuracy 0.92 → 0.88 (10 % canary): {args.detect_runs} runs a cell")
    for label, chosen, rps, interval, delay in (
        ("five gates, 100 vs 900/s", GATES, 100.0, args.interval, args.delay),
        ("accuracy alone, 100/900/s", GATES[:1], 100.0, args.interval, args.delay),
        ("five gates, 10 vs 90/s", GATES, 10.0, args.interval, args.delay),
        ("five gates, 1 vs 9/s", GATES, 1.0, args.interval, args.delay),
        ("100 vs 900/s, no delay, 10 s looks", GATES, 100.0, 10.0, 0.0),
    ):
        gs = gate_set(chosen, args.alpha, 200)
        times, caught, by_accuracy, passed = [], 0, 0, 0
        labels_from = 0
        n_looks = max(1, round(args.minutes * 60 / interval))
        for _ in range(args.detect_runs):
            first, labels_from = run_stage(
                gs, rng, Variant(rps, 0.88), Variant(9 * rps, 0.92), n_looks, interval, delay
            )
            failed = [look for outcome, look in first.values() if outcome is Outcome.FAIL]
            if failed:
                caught += 1
                times.append(min(failed) * interval)
            outcome, _ = first.get("accuracy", (Outcome.CONTINUE, 0))
            by_accuracy += outcome is Outcome.FAIL
            passed += outcome is Outcome.PASS
        n = args.detect_runs
        mean = sum(times) / len(times) if times else math.nan
        since = mean - (labels_from - 1) * interval
        latest = max(times, default=math.nan)
        print(
            f"{label:<35} rolled back {caught / n:.3f} (by the accuracy gate "
            f"{by_accuracy / n:.3f}, accuracy passed {passed / n:.3f}), mean {mean:.0f} s "
            f"after the stage began ({since:.0f} s after the first labels), max {latest:.0f} s"
        )
    total = time.perf_counter() - start
    print(f"\nA/A {aa:.0f} s, all {total:.0f} s")


if __name__ == "__main__":
    main()
