"""Robust rate tests: the dispersion factor from per-interval counts, and what it does to verdicts.

Seeded and deterministic: binomial draws (``draws.binomial``) and negative-binomial ones (a Gamma
rate, then Poisson) from ``random.Random``; no wall clock.
"""

from __future__ import annotations

import math
import random

from draws import binomial  # tests/core/analysis/draws.py, see conftest.py

from mlrollout.analysis import GateSet, Monitor, Outcome
from mlrollout.analysis.dispersion import NONE, one_sample, t_factor, two_sample
from mlrollout.analysis.monitor import merge
from mlrollout.contracts import Window
from mlrollout.plan.model import Analysis

ERRORS_25 = {"name": "errors", "metric": "error_rate", "vs_baseline": {"max_increase": "25%"}}
ERRORS_MAX = {"name": "emax", "metric": "error_rate", "max": "2%"}


def poisson(rng: random.Random, lam: float) -> int:
    """Poisson draw (inversion for small means, a normal approximation for large ones)."""
    if lam <= 0:
        return 0
    if lam > 500:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    k, p, s, u = 0, math.exp(-lam), math.exp(-lam), rng.random()
    while u > s:
        k += 1
        p *= lam / k
        s += p
    return k


def bursty(rng: random.Random, n: int, p: float, k: float) -> int:
    """Negative-binomial errors of ``n`` requests: mean ``n p``, variance ``n p + (n p)^2 / k``."""
    return min(n, poisson(rng, rng.gammavariate(k, n * p / k)))


def intervals(
    seed: int, looks: int, k: float | None, n_c: int = 1000, n_b: int = 9000, p: float = 0.01
) -> list[tuple[Window, Window]]:
    rng = random.Random(seed)
    out = []
    for _ in range(looks):
        if k is None:
            x_c, x_b = binomial(rng, n_c, p), binomial(rng, n_b, p)
        else:
            x_c, x_b = bursty(rng, n_c, p, k), bursty(rng, n_b, p, k)
        out.append((Window(requests=n_c, errors=x_c), Window(requests=n_b, errors=x_b)))
    return out


def rows(parts: list[tuple[Window, Window]]) -> list[tuple[float, float, float, float]]:
    return [(c.errors or 0, c.requests or 0, b.errors or 0, b.requests or 0) for c, b in parts]


def totals(parts: list[tuple[Window, Window]]) -> tuple[Window, Window]:
    cand, base = Window(), Window()
    for c, b in parts:
        cand, base = merge(cand, c), merge(base, b)
    return cand, base


def gate_set(*gates: dict[str, object], stages: int = 1) -> GateSet:
    analysis = Analysis.model_validate({"alpha": 0.05, "min_requests": 100, "gates": list(gates)})
    return GateSet.from_plan(analysis, stages=stages)


def test_binomial_counts_give_a_factor_of_about_one() -> None:
    factors = [two_sample(rows(intervals(seed, 60, None))) for seed in range(20)]
    estimates = [f.estimate for f in factors if f.estimate is not None]
    assert len(estimates) == 20
    assert 0.8 < sum(estimates) / len(estimates) < 1.2  # the Pearson estimate is about 1
    assert all(f.factor < 1.3 for f in factors)  # and the factor used stays close to 1
    assert sum(f.factor for f in factors) / len(factors) < 1.1


def test_bursty_counts_give_a_large_factor() -> None:
    # per-arm bursts of shape 2 at 100 events per interval: phi = 1 + 2 theta (1 - theta) mu / k
    expected = 1 + 2 * 0.1 * 0.9 * 100 / 2
    for seed in range(5):
        d = two_sample(rows(intervals(seed, 60, 2.0)))
        assert d.estimate is not None and d.estimate > 0.5 * expected
        assert d.factor >= d.estimate * 0.9 and d.discounted


def test_one_sample_dispersion_of_the_candidates_counts() -> None:
    clean = [one_sample([(c.errors or 0, c.requests or 0) for c, _ in intervals(s, 60, None)])
             for s in range(10)]  # fmt: skip
    assert all(d.factor < 1.3 for d in clean)
    burst = one_sample([(c.errors or 0, c.requests or 0) for c, _ in intervals(1, 60, 2.0)])
    assert burst.factor > 3  # phi = 1 + mu / k = 6 for the candidate's 10 errors per interval


def test_few_intervals_are_guarded_and_the_t_factor_falls_to_one() -> None:
    assert two_sample([]) is NONE and NONE.factor == 1.0 and not NONE.numbers()
    one = two_sample([(10, 1000, 90, 9000)])
    assert one.estimate is None and one.factor > 1  # one interval says nothing about bursts
    assert t_factor(1) > t_factor(5) > t_factor(30) > t_factor(1000) > 1.0
    assert t_factor(1e9) < 1.001


def test_the_verdict_says_when_it_widened_for_bursts() -> None:
    parts = intervals(3, 40, 2.0)
    cand, base = totals(parts)
    gates = gate_set(ERRORS_25, ERRORS_MAX)
    verdict = gates.look(cand, base, look=40, horizon=180, intervals=parts)
    rate, bound = verdict.gates[0], verdict.gates[1]
    for gate in (rate, bound):
        phi = gate.numbers["dispersion"]
        assert phi is not None and phi > 1.5
        assert "errors arrive in bursts: evidence discounted ×" in gate.reason
        assert gate.numbers["dispersion_estimate"] is not None
        assert gate.numbers["dispersion_intervals"] == 40
    # wider than without the intervals (about sqrt(phi))
    naive = gates.look(cand, base, look=40, horizon=180).gates[0].numbers
    assert rate.numbers["ratio_upper"] is not None and naive["ratio_upper"] is not None
    if rate.outcome is Outcome.CONTINUE and naive["ratio_lower"] is not None:
        width = math.log(rate.numbers["ratio_upper"] / (rate.numbers["ratio_lower"] or 1e-9))
        width0 = math.log(naive["ratio_upper"] / naive["ratio_lower"])
        assert width > width0


def test_without_intervals_the_verdicts_are_exactly_todays() -> None:
    parts = intervals(4, 30, None)
    cand, base = totals(parts)
    gates = gate_set(ERRORS_25, ERRORS_MAX)
    plain = gates.look(cand, base, look=30, horizon=180)
    empty = gates.look(cand, base, look=30, horizon=180, intervals=())
    assert plain.to_dict() == empty.to_dict()
    assert all("dispersion" not in g.numbers for g in plain.gates)
    assert all("bursts" not in g.reason for g in plain.gates)


def test_clean_intervals_cost_almost_nothing() -> None:
    parts = intervals(5, 60, None)
    cand, base = totals(parts)
    gates = gate_set(ERRORS_25)
    with_parts = gates.look(cand, base, look=60, horizon=180, intervals=parts).gates[0]
    without = gates.look(cand, base, look=60, horizon=180).gates[0]
    phi = with_parts.numbers["dispersion"]
    assert phi is not None and phi < 1.1
    assert with_parts.outcome is without.outcome
    fail, fail0 = with_parts.numbers["evidence_fail"], without.numbers["evidence_fail"]
    assert fail is not None and fail0 is not None
    assert fail == fail0 or abs(fail - fail0 / phi) < 0.5


def test_a_monitor_fed_bursty_aa_intervals_does_not_fail_where_the_naive_test_does() -> None:
    analysis = Analysis.model_validate({"alpha": 0.05, "min_requests": 100, "gates": [ERRORS_25]})
    naive_failed = robust_failed = 0
    for seed in range(12):
        parts = intervals(100 + seed, 60, 1.0, n_c=1000, n_b=9000)
        monitor = Monitor.from_plan(analysis, candidate_share=0.1, horizon=60)
        naive = GateSet.from_plan(analysis)
        cand, base = Window(), Window()
        robust_fail = naive_fail = False
        for look, (c, b) in enumerate(parts, 1):
            verdict = monitor.observe(c, b)
            robust_fail = robust_fail or verdict.outcome is Outcome.FAIL
            cand, base = merge(cand, c), merge(base, b)
            judged = naive.look(cand, base, candidate_share=0.1, look=look, horizon=60)
            naive_fail = naive_fail or judged.outcome is Outcome.FAIL
        assert len(monitor.intervals) == 60
        naive_failed += naive_fail
        robust_failed += robust_fail
    assert naive_failed >= 4  # the binomial test reads the bursts as a difference
    assert robust_failed <= 1
    monitor.new_stage(0.25)
    assert monitor.intervals == [] and monitor.looks == 0


def test_a_monitor_still_catches_a_bursty_regression() -> None:
    analysis = Analysis.model_validate({"alpha": 0.05, "min_requests": 100, "gates": [ERRORS_25]})
    rng = random.Random(9)
    monitor = Monitor.from_plan(analysis, candidate_share=0.1, horizon=180)
    verdict = None
    for _ in range(180):
        c = Window(requests=100, errors=bursty(rng, 100, 0.03, 2.0))
        b = Window(requests=900, errors=bursty(rng, 900, 0.01, 2.0))
        verdict = monitor.observe(c, b)
        if verdict.outcome is Outcome.FAIL:
            break
    assert verdict is not None and verdict.outcome is Outcome.FAIL


def test_a_discount_from_the_early_guard_does_not_claim_bursts() -> None:
    clean = two_sample([(10, 1000, 90, 9000), (12, 1000, 88, 9000)])  # two even intervals
    assert clean.guarded and clean.discounted
    note = clean.note("errors")
    assert note.startswith("errors: too few intervals yet (2) to rule out bursts: evidence")
    assert "arrive in bursts" not in note
    parts = intervals(3, 40, 2.0)
    shown = two_sample([(c.errors, c.requests, b.errors, b.requests) for c, b in parts])
    assert not shown.guarded and shown.note("errors").startswith("errors arrive in bursts")


def test_a_clean_baseline_history_lifts_the_early_guard() -> None:
    """The baseline's intervals before the stage (an earlier stage's) show that its counts are
    not bursty, so the stage's first looks need no extra evidence; bursty ones show bursts from
    the first look."""
    first = rows(intervals(5, 2, None))
    guarded = two_sample(first)
    assert guarded.guarded and guarded.factor > 1.5
    clean = [(b.errors or 0, b.requests or 0) for _, b in intervals(6, 60, None)]
    lifted = two_sample(first, clean)
    assert not lifted.guarded and lifted.factor < 1.05
    assert lifted.history == 60 and lifted.numbers()["dispersion_history"] == 60.0
    assert "dispersion_history" not in guarded.numbers()
    bursts = [(b.errors or 0, b.requests or 0) for _, b in intervals(7, 60, 2.0)]
    kept = two_sample(first, bursts)
    assert kept.guarded and kept.factor >= guarded.factor  # bursts are likely: the guard stays


def test_a_history_at_another_rate_does_not_read_as_bursts() -> None:
    """Each group is read around its own rate: a baseline at 2 % before the stage and 1 %
    during it (the time of day moved) is not bursty."""
    first = rows(intervals(8, 3, None))
    before = [(b.errors or 0, b.requests or 0) for _, b in intervals(9, 60, None, p=0.02)]
    assert two_sample(first, before).factor < 1.05


def test_a_monitor_keeps_the_baselines_intervals_across_stages() -> None:
    analysis = Analysis.model_validate({"alpha": 0.05, "min_requests": 100, "gates": [ERRORS_25]})
    monitor = Monitor.from_plan(analysis, stages=2, candidate_share=0.1, horizon=60)
    for c, b in intervals(10, 30, None):
        monitor.observe(c, b)
    monitor.new_stage(0.5)
    assert len(monitor.baseline_history) == 30 and monitor.intervals == []
    c, b = intervals(11, 1, None, n_c=5000, n_b=5000)[0]
    verdict = monitor.observe(c, b)
    [errors] = [g for g in verdict.gates if g.gate == "errors"]
    assert errors.numbers["dispersion_history"] == 30.0
    assert errors.numbers["dispersion"] < 1.05  # the second stage's first look: no guard
