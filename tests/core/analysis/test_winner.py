"""The A/B winner test (:mod:`mlrollout.analysis.winner`): always valid under sequential looks,
finds a true lift, rules a worthwhile lift out when there is none, reads rates and means, and
says what it found in numbers. Simulations are seeded and pure Python (no sleeps, no numpy)."""

from __future__ import annotations

import math
import random
import re

import pytest
from draws import binomial

from mlrollout.analysis import winner
from mlrollout.analysis.expected import expect
from mlrollout.analysis.gateset import GateSet
from mlrollout.analysis.rule import LookContext
from mlrollout.analysis.verdict import GateVerdict, Outcome
from mlrollout.contracts import CustomValue, Window
from mlrollout.plan.model import Analysis, Gate

CONVERSION = Gate(name="conversion", metric="custom", direction="decrease", query={"m": "c"})
REVENUE = Gate(name="revenue", metric="custom", direction="decrease", query={"m": "r"})
COST = Gate(name="cost", metric="custom", direction="increase", query={"m": "k"})


def _ctx(alpha: float = 0.05, intervals: tuple[tuple[Window, Window], ...] = ()) -> LookContext:
    return LookContext(
        alpha_per_look=alpha, min_requests=200, alpha_test=alpha, intervals=intervals
    )


def _w(gate: Gate, total: float, count: float) -> Window:
    return Window(requests=int(count), errors=0, custom={gate.name: CustomValue(total, count)})


def _judge(
    gate: Gate,
    c: tuple[float, float],
    b: tuple[float, float],
    min_effect: float = 0.01,
    **kw: float,
) -> GateVerdict:
    return winner.evaluate(gate, _w(gate, *c), _w(gate, *b), _ctx(**kw), min_effect=min_effect)


def _rate_stage(
    rng: random.Random, p: float, lift: float, per_look: int, looks: int, min_effect: float
) -> tuple[str, int]:
    """One A/B stage of conversion counts, looked at after every interval: what the winner test
    decided first and at which look ("undecided", looks when nothing)."""
    xc = xb = n = 0
    for look in range(1, looks + 1):
        xc += binomial(rng, per_look, p * (1 + lift))
        xb += binomial(rng, per_look, p)
        n += per_look
        v = _judge(CONVERSION, (xc, n), (xb, n), min_effect)
        if v.outcome is Outcome.PASS:
            return "won", look
        if v.outcome is Outcome.FAIL:
            return "none", look
    return "undecided", looks


def test_aa_false_winner_rate_stays_within_alpha_over_sequential_looks() -> None:
    """No lift, 100 looks per stage, never stopping at "no worthwhile lift" (min_effect 0: the
    harshest case): a winner is declared in at most about alpha / 2 of the stages."""
    rng = random.Random(20261202)
    runs, wins = 200, 0
    for _ in range(runs):
        xc = xb = n = 0
        for _look in range(100):
            xc += binomial(rng, 2000, 0.02)
            xb += binomial(rng, 2000, 0.02)
            n += 2000
            if _judge(CONVERSION, (xc, n), (xb, n), 0.0).outcome is Outcome.PASS:
                wins += 1
                break
    # alpha 5 %: a false winner is the upper side only (about 2.5 %); 200 runs: allow 5 %
    assert wins / runs <= 0.05, wins


def test_a_true_lift_is_found_and_its_interval_covers_it() -> None:
    rng = random.Random(5)
    found = [_rate_stage(rng, 0.02, 0.10, 5000, 150, 0.01) for _ in range(20)]
    assert all(what == "won" for what, _ in found), found
    # one more, to read the numbers at the decision
    xc = xb = n = 0
    rng = random.Random(11)
    for _ in range(400):
        xc += binomial(rng, 5000, 0.022)
        xb += binomial(rng, 5000, 0.02)
        n += 5000
        v = _judge(CONVERSION, (xc, n), (xb, n))
        if v.outcome is Outcome.PASS:
            break
    assert v.outcome is Outcome.PASS
    low, high = v.numbers["lift_low"], v.numbers["lift_high"]
    assert low is not None and high is not None
    assert 0 < low < 0.10 < high


def test_no_worthwhile_lift_is_reached_when_there_is_none() -> None:
    rng = random.Random(8)
    outcomes = [_rate_stage(rng, 0.02, 0.0, 20000, 200, 0.05) for _ in range(10)]
    assert all(what == "none" for what, _ in outcomes), outcomes
    # a worse candidate is "no worthwhile lift" too, and says it is worse
    v = _judge(CONVERSION, (9000, 1_000_000), (10000, 1_000_000))
    assert v.outcome is Outcome.FAIL
    assert "(the candidate is worse)" in v.reason


def test_the_verdicts_numbers_and_reason() -> None:
    v = _judge(CONVERSION, (33000, 1_000_000), (30000, 1_000_000))
    assert v.outcome is Outcome.PASS, v.reason
    n = v.numbers
    assert n["candidate"] == pytest.approx(0.033) and n["baseline"] == pytest.approx(0.03)
    assert n["n_candidate"] == 1_000_000 and n["n_baseline"] == 1_000_000
    assert n["lift"] == pytest.approx(0.10)
    # the interval is the mixture's, on the log ratio: recompute it
    var = 0.967 / (1_000_000 * 0.033) + 0.97 / (1_000_000 * 0.03)
    tau = 2 * math.log(1.01)
    r = math.sqrt(var * (var + tau**2) / tau**2 * (2 * math.log(20) + math.log1p(tau**2 / var)))
    assert n["lift_low"] == pytest.approx(math.expm1(math.log(1.1) - r))
    assert n["lift_high"] == pytest.approx(math.expm1(math.log(1.1) + r))
    lo, hi, p = n["lift_low"], n["lift_high"], n["p_value"]
    assert lo is not None and hi is not None and p is not None
    assert 0 < lo < 0.1 < hi and 0 < p < 0.05
    assert re.fullmatch(
        r"conversion \+10\.0 % \[\+\d\.\d %, \+\d\d\.\d %\] \(always-valid 95 % interval\), "
        r"p < 0\.0001: the candidate wins "
        r"\(3\.3% vs 3%, conversions 33000/1000000 vs 30000/1000000\)",
        v.reason,
    ), v.reason
    # no worthwhile lift: the reason names the smallest lift worth shipping
    v = _judge(CONVERSION, (996_000, 100_000_000), (1_000_000, 100_000_000))
    assert v.outcome is Outcome.FAIL, v.reason
    assert re.match(r"no lift of at least 1 %: lift −0\.4 % \[−\d\.\d+ %, \+0\.\d+ %\]", v.reason)
    assert "the baseline stays" in v.reason
    # undecided: it says what would decide, and about how much more it needs
    v = _judge(CONVERSION, (1020, 100_000), (1000, 100_000))
    assert v.outcome is Outcome.CONTINUE
    assert "undecided" in v.reason and (v.numbers["needed_requests"] or 0) > 0


def test_hold_until_enough_data() -> None:
    v = _judge(CONVERSION, (5, 150), (4, 150))
    assert v.outcome is Outcome.HOLD and "50 more needed" in v.reason
    v = _judge(CONVERSION, (5, 1000), (40, 1000))
    assert v.outcome is Outcome.HOLD and "conversions" in v.reason
    failed = winner.evaluate(
        CONVERSION, Window(error="throttled"), _w(CONVERSION, 1, 2), _ctx(), min_effect=0.01
    )
    assert failed.outcome is Outcome.HOLD and failed.error == "throttled"
    none = winner.evaluate(CONVERSION, Window(requests=500), Window(), _ctx(), min_effect=0.01)
    assert none.outcome is Outcome.HOLD and "no value" in none.reason


def test_lower_is_better_when_the_direction_is_increase() -> None:
    v = _judge(COST, (9000, 1_000_000), (10000, 1_000_000))  # 10 % fewer: better
    assert v.outcome is Outcome.PASS
    assert v.numbers["lift"] == pytest.approx(0.10)


def _revenue_stage(
    rng: random.Random, lift: float, looks: int, per_look: int = 2000, buy: float = 0.1
) -> tuple[list[GateVerdict], list[tuple[Window, Window]]]:
    """Revenue per request: a share ``buy`` of requests buys, for a lognormal amount."""
    tc = tb = n = 0.0
    verdicts, intervals = [], []
    for _ in range(looks):
        c = sum(
            rng.lognormvariate(math.log1p(lift), 1.0) for _ in range(binomial(rng, per_look, buy))
        )
        b = sum(rng.lognormvariate(0.0, 1.0) for _ in range(binomial(rng, per_look, buy)))
        tc, tb, n = tc + c, tb + b, n + per_look
        intervals.append((_w(REVENUE, c, per_look), _w(REVENUE, b, per_look)))
        verdicts.append(
            winner.evaluate(
                REVENUE,
                _w(REVENUE, tc, n),
                _w(REVENUE, tb, n),
                _ctx(intervals=tuple(intervals)),
                min_effect=0.05,
            )
        )
    return verdicts, intervals


def test_a_mean_metric_uses_batch_means_from_the_intervals() -> None:
    rng = random.Random(3)
    verdicts, _ = _revenue_stage(rng, 0.30, 120)
    # the first looks hold: too few intervals to estimate the variance
    assert verdicts[0].outcome is Outcome.HOLD and "intervals" in verdicts[0].reason
    assert verdicts[winner.MIN_INTERVALS - 1].outcome is not Outcome.HOLD
    decided = next(v for v in verdicts if v.outcome in (Outcome.PASS, Outcome.FAIL))
    assert decided.outcome is Outcome.PASS, decided.reason
    assert "batch means" in decided.reason
    sd = decided.numbers["sd_baseline"]
    # revenue per request: 10 % buy a lognormal(0, 1) amount -> sd sqrt(0.1 e^2 - (0.1 e^.5)^2)
    assert sd == pytest.approx(math.sqrt(0.1 * math.e**2 - 0.01 * math.e), rel=0.25)
    # without intervals a mean cannot be judged
    v = winner.evaluate(
        REVENUE, _w(REVENUE, 330.5, 2000), _w(REVENUE, 300.25, 2000), _ctx(), min_effect=0.05
    )
    assert v.outcome is Outcome.HOLD and "per-look increments" in v.reason


def test_a_mean_metric_aa_declares_few_winners() -> None:
    rng = random.Random(99)
    wins = 0
    for _ in range(40):
        verdicts, _ = _revenue_stage(rng, 0.0, 60, per_look=500)
        wins += any(v.outcome is Outcome.PASS for v in verdicts)
    assert wins <= 3


def test_gate_set_dispatches_the_winner_gate_and_splits_alpha_with_the_guardrails() -> None:
    analysis = Analysis.model_validate(
        {
            "alpha": 0.05,
            "min_requests": 200,
            "gates": [
                {"name": "conversion", "metric": "custom", "direction": "decrease",
                 "query": {"m": "c"}},
                {"name": "errors", "metric": "error_rate", "vs_baseline": {"max_increase": "25%"}},
            ],
        }
    )  # fmt: skip
    gates = GateSet.from_plan(analysis, winner=("conversion", 0.01))
    assert gates.alpha_per_test == 0.025
    cand = Window(requests=10**6, errors=10**4, custom={"conversion": CustomValue(33000, 10**6)})
    base = Window(requests=10**6, errors=10**4, custom={"conversion": CustomValue(30000, 10**6)})
    verdict = gates.look(cand, base, candidate_share=0.5)
    first = verdict.gates[0]
    assert first.outcome is Outcome.PASS and first.numbers["alpha"] == 0.025
    assert "97.5 % interval" in first.reason
    assert verdict.gates[-1].gate == "sample-ratio"  # the SRM check runs beside it
    # a sample-ratio mismatch holds the winner gate too
    skewed = Window(
        requests=800_000, errors=8000, custom={"conversion": CustomValue(26400, 800_000)}
    )
    held = gates.look(skewed, base, candidate_share=0.5)
    assert held.gates[0].outcome is Outcome.HOLD
    # without ``winner`` the custom gate with no bound only records the metric
    plain = GateSet.from_plan(analysis).look(cand, base, candidate_share=0.5)
    assert "lift" not in plain.gates[0].numbers


def test_the_library_monitor_runs_the_winner_test_look_by_look() -> None:
    """``Monitor.from_plan(..., winner=...)``: the A/B test's decision outside the engine, one
    interval per look, as a notebook or another scheduler would drive it."""
    from mlrollout.analysis import Monitor

    analysis = Analysis.model_validate(
        {
            "alpha": 0.05,
            "min_requests": 200,
            "gates": [
                {"name": "conversion", "metric": "custom", "direction": "decrease",
                 "query": {"m": "c"}},
                {"name": "errors", "metric": "error_rate", "vs_baseline": {"max_increase": "25%"}},
            ],
        }
    )  # fmt: skip
    monitor = Monitor.from_plan(analysis, candidate_share=0.5, winner=("conversion", 0.02))
    rng = random.Random(3)
    outcome, looks = None, 0
    while outcome is not Outcome.PASS and looks < 200:
        looks += 1
        n = 20_000
        cand = Window(
            requests=n,
            errors=binomial(rng, n, 0.01),
            custom={"conversion": CustomValue(binomial(rng, n, 0.036), n)},
        )
        base = Window(requests=n, errors=binomial(rng, n, 0.01),
                      custom={"conversion": CustomValue(binomial(rng, n, 0.030), n)})  # fmt: skip
        verdict = monitor.observe(cand, base)
        outcome = verdict.gates[0].outcome
    assert outcome is Outcome.PASS, looks  # a +20 % lift is found, well before 200 looks
    assert verdict.gates[0].numbers["lift_low"] > 0
    # without the winner the same gate only records the metric
    plain = Monitor.from_plan(analysis, candidate_share=0.5).observe(cand, base)
    assert "lift" not in plain.gates[0].numbers


def test_preview_states_the_method_and_the_time_to_decide() -> None:
    e = expect(CONVERSION, 0.025, 0.5, 0.01, min_effect=0.01)
    assert e.method == winner.METHOD
    text = e.text(100.0)
    assert "finds a +2 % lift after" in text and "rules out +1 % when there is no lift" in text
    assert e.pass_requests is not None and e.fail_requests is not None
    assert e.pass_requests < e.fail_requests


def test_information_needed_inverts_the_radius() -> None:
    info = winner.information_needed(0.01, 0.05, math.log(1.01))
    assert winner.radius(1 / info, 0.05, math.log(1.01)) == pytest.approx(0.01, rel=1e-6)
