"""The tail-latency test on several thresholds of the histogram (mlrollout/analysis/tail.py)."""

from __future__ import annotations

import bisect
import math
import random
from statistics import NormalDist, fmean
from typing import Any

from draws import binomial  # tests/core/analysis/draws.py, see conftest.py

from mlrollout.analysis import GateSet, Outcome, histogram
from mlrollout.analysis import tail as tail_module
from mlrollout.analysis.calibration import Pace
from mlrollout.analysis.expected import expect
from mlrollout.analysis.mixture import bernoulli_log_lr
from mlrollout.analysis.monitor import DEFAULT_BOUNDS
from mlrollout.analysis.sequential import conditional_evidence
from mlrollout.analysis.tail import LEVELS, TAIL_GRID, tail_evidence
from mlrollout.contracts import LatencyHistogram, Window
from mlrollout.plan.model import Analysis, Gate

P99_10 = {"name": "p99", "metric": "latency_p99", "vs_baseline": {"max_increase": "10%"}}
P90_10 = {"name": "p90", "metric": "latency_p90", "vs_baseline": {"max_increase": "10%"}}
MEDIAN, SIGMA = 0.040, 0.5
BODY = 0.95  # requests under the p95 are counted in one bucket (the tests look further out)
_NORMAL = NormalDist()


def gate_set(*gates: dict[str, Any]) -> GateSet:
    analysis = Analysis.model_validate({"alpha": 0.05, "min_requests": 100, "gates": list(gates)})
    return GateSet.from_plan(analysis)


def tail_counts(
    rng: random.Random, n: int, stretch: float = 1.0, tail_from: float = 0.98
) -> list[int]:
    """One interval's histogram of ``n`` lognormal requests: the body (under its p95) counted in
    the first bucket under the p95, each tail request drawn on its own; beyond ``tail_from`` the
    latencies are ``stretch`` times longer (p99 up, the median unchanged)."""
    bounds = DEFAULT_BOUNDS
    counts = [0] * (len(bounds) + 1)
    cut = MEDIAN * math.exp(SIGMA * _NORMAL.inv_cdf(tail_from))
    slow = binomial(rng, n, 1 - BODY)
    counts[bisect.bisect_left(bounds, MEDIAN * math.exp(SIGMA * 1.0))] += n - slow
    for _ in range(slow):
        u = BODY + (1 - BODY) * rng.random()
        value = MEDIAN * math.exp(SIGMA * _NORMAL.inv_cdf(min(u, 1 - 1e-12)))
        if value > cut:
            value *= stretch
        counts[bisect.bisect_left(bounds, value)] += 1
    return counts


def run_stage(
    rng: random.Random,
    gate: dict[str, Any],
    looks: int,
    stretch: float = 1.0,
    tail_from: float = 0.98,
    per_look: tuple[int, int] = (100, 900),
) -> tuple[int | None, int | None]:
    """One stage at a look every 10 s: the look at which the combined test rolls back and the
    look at which the single-threshold test (the gate's own quantile alone) would have."""
    gs = gate_set(gate)
    q = 0.99 if gate["metric"] == "latency_p99" else 0.90
    c_counts = [0] * (len(DEFAULT_BOUNDS) + 1)
    b_counts = [0] * (len(DEFAULT_BOUNDS) + 1)
    combined = single = None
    for look in range(1, looks + 1):
        for acc, n, s in ((c_counts, per_look[0], stretch), (b_counts, per_look[1], 1.0)):
            for i, k in enumerate(tail_counts(rng, n, s, tail_from)):
                acc[i] += k
        c = LatencyHistogram(DEFAULT_BOUNDS, list(c_counts))
        b = LatencyHistogram(DEFAULT_BOUNDS, list(b_counts))
        if combined is None:
            verdict = gs.look(
                Window(requests=c.total, latency=c),
                Window(requests=b.total, latency=b),
                candidate_share=per_look[0] / sum(per_look),
                look=look,
                horizon=looks,
            )
            if verdict.outcome is Outcome.FAIL:
                combined = look
        if single is None and b.total >= 10 / (1 - q):
            t = tail_module.bound_at_or_above(b, b.quantile(q))
            x_c, x_b = c.count_above(t), b.count_above(t)
            ev = conditional_evidence(
                x_c,
                c.total,
                x_b,
                b.total,
                1.0,
                "increase",
                gs.alpha_per_test,
                x_c,
                Pace(look, looks),
            )
            if ev.outcome is Outcome.FAIL:
                single = look
        if combined is not None and single is not None:
            break
    return combined, single


def test_the_combined_evidence_is_the_weighted_average_of_the_thresholds() -> None:
    rng = random.Random(4)
    c = LatencyHistogram(DEFAULT_BOUNDS, tail_counts(rng, 3000, 1.3))
    b = LatencyHistogram(DEFAULT_BOUNDS, tail_counts(rng, 27000, 1.0))
    ev = tail_evidence(c, b, 0.99)
    theta0 = c.total / (c.total + b.total)
    assert ev.waiting == 0 and abs(sum(lv.weight for lv in ev.levels) - 1) < 1e-12
    average = 0.0
    for level in ev.levels:
        assert level.x_c == c.count_above(level.seconds) and level.seconds in DEFAULT_BOUNDS
        own = bernoulli_log_lr(level.x_c, level.x_c + level.x_b, theta0, TAIL_GRID)
        assert abs(level.evidence - own) < 1e-12
        average += level.weight * math.exp(level.evidence)
    assert abs(ev.fail - math.log(average)) < 1e-9
    # never more than the best threshold, never less than its weighted share
    best = max(ev.levels, key=lambda lv: lv.evidence)
    assert math.log(best.weight) + best.evidence <= ev.fail <= best.evidence
    # the thresholds are the baseline's quantiles at fixed fractions of 1 - q, rounded up
    assert [lv.seconds for lv in ev.levels] == sorted({lv.seconds for lv in ev.levels})
    assert ev.primary.seconds == tail_module.bound_at_or_above(b, b.quantile(0.99))
    assert len(ev.levels) >= 3 and not ev.coarse


def test_thresholds_the_baseline_cannot_place_yet_wait_at_a_ratio_of_one() -> None:
    rng = random.Random(5)
    c = LatencyHistogram(DEFAULT_BOUNDS, tail_counts(rng, 150, 1.3))
    b = LatencyHistogram(DEFAULT_BOUNDS, tail_counts(rng, 1200, 1.0))
    ev = tail_evidence(c, b, 0.99)  # 1200 x 0.2 % < 5 requests beyond the p99.8: not yet
    waiting = sum(w for f, w in LEVELS if 1200 * 0.01 * f < tail_module.TAIL_EVENTS)
    assert waiting > 0 and abs(ev.waiting - waiting) < 1e-12
    total = sum(lv.weight * math.exp(lv.evidence) for lv in ev.levels) + waiting
    assert abs(ev.fail - math.log(total)) < 1e-9


def test_the_verdict_names_the_thresholds_and_their_ratios() -> None:
    rng = random.Random(6)
    c = LatencyHistogram(DEFAULT_BOUNDS, tail_counts(rng, 3000, 1.3))
    b = LatencyHistogram(DEFAULT_BOUNDS, tail_counts(rng, 27000, 1.0))
    verdict = gate_set(P99_10).look(
        Window(requests=c.total, latency=c), Window(requests=b.total, latency=b)
    )
    g = next(g for g in verdict.gates if g.gate == "p99")
    assert g.outcome is Outcome.FAIL, g.reason
    n = int(g.numbers["tail_thresholds"] or 0)
    assert n >= 3
    bounds = [g.numbers[f"tail_threshold_{k}"] for k in range(1, n + 1)]
    ratios = [g.numbers[f"tail_ratio_{k}"] or 0.0 for k in range(1, n + 1)]
    ms = "/".join(f"{v * 1000:.4g}" for v in bounds if v is not None) + "ms"
    assert f"slower than {ms}: " in g.reason, g.reason
    assert "× the baseline's share" in g.reason and f"{c.total} vs {b.total} requests" in g.reason
    assert max(ratios) > 2.5  # the stretched tail shows further out
    assert "coarse" not in g.reason


def test_coarse_buckets_fall_back_to_the_gates_own_quantile_and_say_so() -> None:
    rng = random.Random(7)
    coarse = (0.01, 0.05, 0.1, 0.2, 1.0)  # few bounds above the median
    c = histogram((MEDIAN * 1.6 * math.exp(rng.gauss(0, SIGMA)) for _ in range(3000)), coarse)
    b = histogram((MEDIAN * math.exp(rng.gauss(0, SIGMA)) for _ in range(27000)), coarse)
    ev = tail_evidence(c, b, 0.99)
    assert len(ev.levels) == 1 and ev.coarse and ev.levels[0].primary
    verdict = gate_set(P99_10).look(
        Window(requests=c.total, latency=c), Window(requests=b.total, latency=b)
    )
    g = next(g for g in verdict.gates if g.gate == "p99")
    assert g.outcome is Outcome.FAIL, g.reason
    assert "coarse buckets: only the gate's own quantile can be tested" in g.reason
    # the whole bucket must be beyond a threshold: nothing counted in the bucket that holds it
    assert ev.levels[0].seconds in coarse
    assert ev.levels[0].x_b == b.count_above(ev.levels[0].seconds)


def test_a_healthy_candidate_stays_within_the_false_rollback_budget() -> None:
    # A/A, simulated histograms, looks every 10 s over 10 minutes, as the engine looks (the
    # calibrated boundary): the whole stage's false-rollback rate within the gate's 5 %.
    rng = random.Random(11)
    runs = 150
    for gate in (P99_10, P90_10):
        false = sum(run_stage(rng, gate, 60)[0] is not None for _ in range(runs))
        assert false / runs <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / runs), (gate["name"], false)


def test_a_tail_only_regression_is_found_sooner_than_at_one_threshold() -> None:
    # p99 +30 % with the median unchanged: the tail beyond p98 is 1.3 times longer.
    rng = random.Random(12)
    combined, single = [], []
    for _ in range(60):
        a, b = run_stage(rng, P99_10, 60, stretch=1.3)
        assert a is not None and b is not None
        combined.append(a)
        single.append(b)
    assert fmean(combined) < 0.85 * fmean(single), (fmean(combined), fmean(single))


def test_plan_preview_names_the_tail_method() -> None:
    for spec in (P99_10, P90_10):
        e = expect(Gate.model_validate(spec), 0.05, 0.1)
        assert e.method == tail_module.METHOD
        assert "several" in e.method and "tail quantiles" in e.method
