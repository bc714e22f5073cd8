"""The default rule: always-valid mixture SPRTs, SRM, no data, explanations, the public API."""

from __future__ import annotations

import doctest
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest
from draws import binomial  # tests/core/analysis/draws.py, see conftest.py

import mlrollout.analysis.monitor
from mlrollout.analysis import (
    RULES,
    FixedHorizonBonferroni,
    GateSet,
    GateVerdict,
    MixtureSPRT,
    Monitor,
    Outcome,
    Verdict,
    histogram,
    merge,
)
from mlrollout.analysis.mixture import (
    FAIL_GRID,
    bernoulli_log_lr,
    gaussian_log_lr,
    normal_cs_radius,
)
from mlrollout.contracts import CustomValue, LatencyHistogram, Window
from mlrollout.plan.model import Analysis

ERRORS_25 = {"name": "errors", "metric": "error_rate", "vs_baseline": {"max_increase": "25%"}}
P50_5 = {"name": "p50", "metric": "latency_p50", "vs_baseline": {"max_increase": "5%"}}
P99_10 = {"name": "p99", "metric": "latency_p99", "vs_baseline": {"max_increase": "10%"}}
DOCS = Path(__file__).resolve().parents[3] / "docs" / "analysis.md"


def gate_set(*gates: dict[str, Any], stages: int = 1, min_requests: int = 100) -> GateSet:
    analysis = Analysis.model_validate(
        {"alpha": 0.05, "min_requests": min_requests, "gates": list(gates)}
    )
    return GateSet.from_plan(analysis, stages=stages)


def only(verdict: Verdict) -> GateVerdict:
    gates = [g for g in verdict.gates if g.gate != "sample-ratio"]
    assert len(gates) == 1
    return gates[0]


# ------------------------------------------------------------------------------- the default


def test_the_default_rule_is_the_sequential_one_and_v1_stays_available() -> None:
    analysis = Analysis.model_validate({"gates": [ERRORS_25]})
    assert isinstance(GateSet.from_plan(analysis).rule, MixtureSPRT)
    assert RULES["mixture-sprt"] is MixtureSPRT
    assert RULES["fixed-horizon"] is FixedHorizonBonferroni
    v1 = GateSet.from_plan(analysis, planned_looks=10, rule=FixedHorizonBonferroni())
    verdict = v1.look(Window(requests=2000, errors=100), Window(requests=5000, errors=50))
    assert verdict.outcome is Outcome.FAIL and verdict.alpha_per_look == pytest.approx(0.005)


def test_alpha_is_spent_over_stages_and_deciding_gates_not_looks() -> None:
    gs = gate_set(ERRORS_25, P99_10, {**P99_10, "name": "dry", "dry_run": True}, stages=4)
    assert gs.alpha_per_test == pytest.approx(0.05 / (4 * 2))
    verdict = gs.look(Window(requests=2000, errors=100), Window(requests=5000, errors=50))
    assert verdict.alpha_per_look == pytest.approx(0.05 / 8)
    assert "at 99.37%" in verdict.gates[0].reason  # 1 - 0.05/8, rounded down
    # a gate with two criteria splits its share again
    both = gate_set({**ERRORS_25, "max": "10%"})
    g = only(both.look(Window(requests=2000, errors=100), Window(requests=5000, errors=50)))
    assert g.numbers["alpha"] == pytest.approx(0.025)


# --------------------------------------------------------------------------- false rollbacks


def simulate(
    candidate_rate: float, runs: int, looks: int, seed: int, gs: GateSet, stop_at_pass: bool
) -> tuple[float, float, list[int]]:
    """Shares of runs failed / passed looking at cumulative windows every look; fail looks."""
    rng, failures, passes, when = random.Random(seed), 0, 0, []
    for _ in range(runs):
        n_c = x_c = n_b = x_b = 0
        passed = False
        for look in range(looks):
            n_c, x_c = n_c + 100, x_c + binomial(rng, 100, candidate_rate)
            n_b, x_b = n_b + 900, x_b + binomial(rng, 900, 0.02)
            outcome = gs.look(
                Window(requests=n_c, errors=x_c),
                Window(requests=n_b, errors=x_b),
                candidate_share=0.1,
            ).outcome
            passed = passed or outcome is Outcome.PASS
            if outcome is Outcome.FAIL:
                failures += 1
                when.append(look + 1)
                break
            if passed and stop_at_pass:
                break
        passes += passed
    return failures / runs, passes / runs, when


def test_a_healthy_candidate_watched_continuously_is_rarely_rolled_back() -> None:
    # 150 runs x 60 looks, never stopping at a pass (a fixed analyze step keeps looking)
    false_rate, pass_rate, _ = simulate(0.02, 150, 60, 7, gate_set(ERRORS_25), False)
    assert false_rate <= 0.03  # alpha is 0.05: well within, with margin for the seed
    assert pass_rate >= 0.5  # and it does pass healthy candidates


def test_a_doubling_is_caught_fast() -> None:
    fail_rate, _, when = simulate(0.04, 40, 60, 11, gate_set(ERRORS_25), False)
    assert fail_rate >= 0.95
    assert sorted(when)[len(when) // 2] <= 12  # median within 12 looks (1,200 candidate requests)


def test_mixture_is_a_martingale_under_the_null() -> None:
    # E[LR] = 1 under the null (exactly, summing over every outcome), smaller below it
    def expected(theta: float) -> float:
        return sum(
            math.comb(40, x)
            * theta**x
            * (1 - theta) ** (40 - x)
            * math.exp(bernoulli_log_lr(x, 40, 0.1, FAIL_GRID))
            for x in range(41)
        )

    assert expected(0.1) == pytest.approx(1.0, rel=1e-9)
    assert expected(0.05) < 1.0
    assert bernoulli_log_lr(0, 0, 0.1, FAIL_GRID) == 0.0
    assert bernoulli_log_lr(1, 5, 0.0, FAIL_GRID) == math.inf
    assert gaussian_log_lr(0.0, 0.0, ((0.1, 1.0),)) == 0.0
    assert normal_cs_radius(100, 0.05) < normal_cs_radius(10, 0.05)


# ------------------------------------------------------------------------- verdict contents


def test_a_rollback_verdict_says_everything_in_numbers_and_words() -> None:
    g = only(gate_set(ERRORS_25).look(Window(requests=3000, errors=63), Window(27000, 270)))
    assert g.outcome is Outcome.FAIL
    n = g.numbers
    assert n["candidate"] == pytest.approx(0.021) and n["baseline"] == pytest.approx(0.01)
    assert n["estimate"] == pytest.approx(1.1)
    assert n["ratio_lower"] is not None and 1.0 < n["ratio_lower"] < 2.1
    assert n["statistic"] is not None and n["boundary"] == pytest.approx(math.log(20))
    assert n["statistic"] >= n["boundary"]
    assert n["candidate_requests"] == 3000 and n["baseline_requests"] == 27000
    reason = g.reason
    assert reason.startswith("candidate error rate 2.1% vs baseline 1% (+110%")
    lower = f"{(n['ratio_lower'] - 1) * 100:+.0f}%"
    assert f"95% always-valid lower bound {lower}" in reason
    assert f"evidence {n['statistic']:.1f} ≥ 3.0 needed" in reason
    assert "errors 63/3,000 vs 270/27,000" in reason and reason.endswith("at 95%: roll back")


def test_a_passing_verdict_bounds_the_change_below_the_margin() -> None:
    g = only(gate_set(ERRORS_25).look(Window(30_000, 300), Window(270_000, 2700)))
    assert g.outcome is Outcome.PASS
    assert "within the +25% margin (limit 1.25%)" in g.reason
    upper = g.numbers["ratio_upper"]
    assert upper is not None and 1.0 < upper < 1.25
    assert f"upper bound {(upper - 1) * 100:+.0f}%" in g.reason


def test_an_undecided_verdict_says_how_many_more_requests_it_needs() -> None:
    g = only(gate_set(ERRORS_25).look(Window(1000, 11), Window(9000, 90)))
    assert g.outcome is Outcome.CONTINUE
    more = g.numbers["needed_requests"]
    assert more is not None and more > 0
    assert f"about {more:.0f} more candidate requests" in g.reason
    assert "keep watching" in g.reason


def test_inside_the_indifference_zone_a_big_sample_passes() -> None:
    # +10 % with a +25 % margin: passes (rules out +25 %) rather than rolling back
    g = only(gate_set(ERRORS_25).look(Window(200_000, 2200), Window(1_800_000, 18_000)))
    assert g.outcome is Outcome.PASS, g.reason


def test_max_decrease_mirrors() -> None:
    thumbs = {
        "name": "thumbs",
        "metric": "custom",
        "query": {"m": "t"},
        "vs_baseline": {"max_decrease": "5%"},
    }

    def window(up: int, n: int) -> Window:
        return Window(requests=n, custom={"thumbs": CustomValue(up, n)})

    worse = only(gate_set(thumbs).look(window(1000, 2000), window(11_700, 18_000)))
    assert worse.outcome is Outcome.FAIL and "thumbs 50% vs baseline 65%" in worse.reason
    same = only(gate_set(thumbs).look(window(13_000, 20_000), window(117_000, 180_000)))
    assert same.outcome is Outcome.PASS, same.reason


def test_absolute_max_on_errors_uses_the_one_sample_test() -> None:
    gs = gate_set({"name": "e", "metric": "error_rate", "max": "1%"})
    assert only(gs.look(Window(5000, 150), None)).outcome is Outcome.FAIL
    assert only(gs.look(Window(5000, 10), None)).outcome is Outcome.PASS
    g = only(gs.look(Window(5000, 45), None))
    assert g.outcome is Outcome.CONTINUE
    assert g.numbers["lower"] is not None and g.numbers["upper"] is not None
    assert g.numbers["lower"] < 0.01 < g.numbers["upper"]
    assert "not yet clear of the 1% maximum" in g.reason


# ---------------------------------------------------------------------------------- latency


def lognormal_hist(rng: random.Random, n: int, median: float, sigma: float) -> LatencyHistogram:
    return histogram(median * math.exp(rng.gauss(0, sigma)) for _ in range(n))


def test_median_latency_rank_test() -> None:
    rng = random.Random(5)
    base = Window(requests=9000, latency=lognormal_hist(rng, 9000, 0.040, 0.5))
    slow = Window(requests=1000, latency=lognormal_hist(rng, 1000, 0.046, 0.5))
    same = Window(requests=1000, latency=lognormal_hist(rng, 1000, 0.040, 0.5))
    failed = only(gate_set(P50_5).look(slow, base))
    assert failed.outcome is Outcome.FAIL, failed.reason
    assert "P(candidate slower)" in failed.reason and "rank test on 1000 vs 9000" in failed.reason
    assert only(gate_set(P50_5).look(same, base)).outcome is not Outcome.FAIL


def test_tail_latency_quantile_test() -> None:
    rng = random.Random(9)
    base = Window(requests=45_000, latency=lognormal_hist(rng, 45_000, 0.040, 0.5))
    slow = Window(requests=5000, latency=lognormal_hist(rng, 5000, 0.056, 0.5))
    same = Window(requests=5000, latency=lognormal_hist(rng, 5000, 0.040, 0.5))
    failed = only(gate_set(P99_10).look(slow, base))
    assert failed.outcome is Outcome.FAIL, failed.reason
    assert "slower than" in failed.reason
    assert only(gate_set(P99_10).look(same, base)).outcome is not Outcome.FAIL


def test_absolute_latency_bound() -> None:
    rng = random.Random(2)
    gs = gate_set({"name": "p99", "metric": "latency_p99", "max": "300ms"})
    fast = Window(requests=5000, latency=lognormal_hist(rng, 5000, 0.040, 0.5))
    slow = Window(requests=5000, latency=lognormal_hist(rng, 5000, 0.200, 0.5))
    assert only(gs.look(fast, None)).outcome is Outcome.PASS
    g = only(gs.look(slow, None))
    assert g.outcome is Outcome.FAIL and "above the 300ms maximum" in g.reason


def test_provider_percentiles_are_a_weaker_point_comparison() -> None:
    gs = gate_set({"name": "p99", "metric": "latency_p99", "max": "300ms"})
    ok = only(gs.look(Window(requests=5000, latency_percentiles={0.99: 0.25}), None))
    bad = only(gs.look(Window(requests=5000, latency_percentiles={0.99: 0.31}), None))
    assert (ok.outcome, bad.outcome) == (Outcome.PASS, Outcome.FAIL)
    assert all("weaker guarantee" in g.reason for g in (ok, bad))
    short = only(gs.look(Window(requests=500, latency_percentiles={0.99: 0.25}), None))
    assert short.outcome is Outcome.HOLD and short.numbers["needed_requests"] == 500


# ------------------------------------------------------------------------------ SRM, no data


def test_sample_ratio_mismatch_holds_the_comparing_gates() -> None:
    gs = gate_set(ERRORS_25, {"name": "e", "metric": "error_rate", "max": "50%"})
    verdict = gs.look(
        Window(requests=800, errors=40), Window(requests=9200, errors=92), candidate_share=0.1
    )
    srm = verdict.gates[-1]
    assert srm.gate == "sample-ratio" and srm.outcome is Outcome.HOLD
    assert "sample-ratio mismatch: the candidate got 8% of 10000 requests" in srm.reason
    assert "configured 10%" in srm.reason
    assert verdict.gates[0].outcome is Outcome.HOLD  # would have failed: numbers not trusted
    assert "sample-ratio mismatch (would be fail" in verdict.gates[0].reason
    assert verdict.gates[1].outcome is Outcome.PASS  # an absolute gate does not compare arms
    assert verdict.outcome is Outcome.HOLD
    fine = gs.look(Window(1000, 10), Window(9000, 90), candidate_share=0.1)
    assert fine.gates[-1].outcome is Outcome.PASS


def test_srm_is_flagged_within_a_minute_at_100_rps() -> None:
    rng = random.Random(1)
    gs = gate_set(ERRORS_25)
    flagged_at = []
    for _ in range(20):
        n_c = n_b = 0
        for look in range(1, 13):
            n = 1000
            c = binomial(rng, n, 0.08)
            n_c, n_b = n_c + c, n_b + n - c
            v = gs.look(Window(n_c, 0), Window(n_b, 0), candidate_share=0.1)
            if v.gates[-1].outcome is Outcome.HOLD:
                flagged_at.append(look)
                break
    assert len(flagged_at) >= 18 and sorted(flagged_at)[len(flagged_at) // 2] <= 6


@pytest.mark.parametrize(
    "candidate",
    [None, Window(), Window(requests=0, errors=0), Window(requests=50, errors=0)],
)
def test_no_data_never_passes(candidate: Window | None) -> None:
    gs = gate_set(
        ERRORS_25,
        P99_10,
        {"name": "e", "metric": "error_rate", "max": "5%"},
        {"name": "r", "metric": "requests", "max": 10**6},
        min_requests=0 if candidate is not None and candidate.requests == 0 else 100,
    )
    verdict = gs.look(candidate, Window(requests=9000, errors=0), candidate_share=0.1)
    assert verdict.outcome is Outcome.HOLD
    assert all(g.outcome is Outcome.HOLD for g in verdict.gates if g.gate != "sample-ratio")
    assert all(
        "needed" in g.reason or "no data" in g.reason
        for g in verdict.gates
        if g.gate != "sample-ratio"  # 50 of 9050 requests is also a mismatch (a HOLD too)
    )


def test_a_failed_query_is_an_error_measurement() -> None:
    g = only(gate_set(ERRORS_25).look(Window(5000, 5, error="Throttled"), Window(5000, 5)))
    assert g.outcome is Outcome.HOLD and g.error == "Throttled"


# ------------------------------------------------------------------------------ public API


def test_monitor_accumulates_intervals_and_starts_stages_afresh() -> None:
    analysis = Analysis.model_validate({"min_requests": 100, "gates": [ERRORS_25, P50_5]})
    monitor = Monitor.from_plan(analysis, stages=2, candidate_share=0.1)
    rng = random.Random(4)
    for _ in range(3):
        verdict = monitor.observe(
            Window(100, 1, latency=lognormal_hist(rng, 100, 0.04, 0.5)),
            Window(900, 9, latency=lognormal_hist(rng, 900, 0.04, 0.5)),
        )
    assert monitor.candidate.requests == 300 and monitor.baseline.errors == 27
    assert monitor.candidate.latency is not None and monitor.candidate.latency.total == 300
    assert verdict.alpha_per_look == pytest.approx(0.05 / 4)
    missing = monitor.observe(None, None)
    assert missing.outcome is Outcome.HOLD and monitor.candidate.requests == 300
    monitor.new_stage(candidate_share=0.5)
    assert monitor.candidate.requests is None and monitor.candidate_share == 0.5


def test_monitor_a_look_missing_a_variant_judges_the_totals_and_holds() -> None:
    cap = {"name": "cap", "metric": "error_rate", "max": "5%"}  # absolute: candidate only
    analysis = Analysis.model_validate({"min_requests": 100, "gates": [ERRORS_25, cap]})
    monitor = Monitor.from_plan(analysis, candidate_share=0.1)
    for _ in range(3):
        monitor.observe(Window(100, 1), Window(900, 9))
    totals = monitor.observe(Window(100, 1), Window(900, 9)).gates[1]
    # One interval at 50 % errors whose baseline the source did not return: it adds nothing,
    # and the look judges the stage's totals (400 requests, 4 errors), not that interval alone.
    for missing in (None, Window(900, 9, error="Throttled")):
        verdict = monitor.observe(Window(100, 50), missing)
        assert monitor.candidate.requests == 400 and monitor.candidate.errors == 4
        assert verdict.outcome is Outcome.HOLD
        errors, capped = verdict.gates
        assert errors.outcome is Outcome.HOLD
        assert capped.outcome is totals.outcome is not Outcome.FAIL
        assert capped.numbers["candidate_requests"] == 400 and capped.numbers["candidate"] == 0.01
    # A failed candidate query holds with its message, the totals unchanged.
    failed = monitor.observe(Window(100, 50, error="Throttled"), Window(900, 9))
    assert failed.outcome is Outcome.HOLD and all(g.error == "Throttled" for g in failed.gates)
    assert monitor.candidate.requests == 400


def test_merge_adds_counts_and_keeps_the_newest_percentiles() -> None:
    a = Window(10, 1, latency_percentiles={0.99: 0.2}, custom={"t": CustomValue(3, 10)})
    b = Window(20, 2, latency_percentiles={0.99: 0.3}, custom={"t": CustomValue(4, 20)})
    m = merge(merge(Window(), a), b)
    assert (m.requests, m.errors, m.latency_percentiles) == (30, 3, {0.99: 0.3})
    assert m.custom["t"].total == 7 and m.custom["t"].count == 30


def test_monitor_doctest_runs() -> None:
    result = doctest.testmod(mlrollout.analysis.monitor)
    assert result.attempted > 0 and result.failed == 0


def test_the_documented_example_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), {"__name__": "docs_example"})


def test_verdicts_with_srm_roundtrip_through_json() -> None:
    gs = gate_set(ERRORS_25)
    verdict = gs.look(Window(800, 8), Window(9200, 92), candidate_share=0.1)
    again = Verdict.from_dict(verdict.to_dict())
    assert again == verdict


def test_no_events_on_either_side_is_no_evidence_to_pass() -> None:
    # v1 passed here; a 10x regression of a 0.1 % rate often shows no event this early
    g = only(gate_set(ERRORS_25).look(Window(200, 0), Window(1800, 0)))
    assert g.outcome is Outcome.CONTINUE
    assert "no event in either variant yet" in g.reason


def test_preview_shows_each_gates_method_and_time_to_decide() -> None:
    from mlrollout.analysis.expected import expect
    from mlrollout.plan.loader import load_plan
    from mlrollout.plan.preview import build_preview

    root = Path(__file__).resolve().parents[3]
    preview = build_preview(load_plan(root / "plans" / "local-canary-bad.yaml"))
    for gate in preview["gates"]:
        assert "always valid" in gate["method"]
        assert gate["method"] in gate["rule"] and "catches" in gate["decides"]
        assert re.search(r"~\d+m", gate["decides"])  # a time: the sandbox's traffic is known
    # the estimate scales with the budget: a smaller alpha needs more requests
    gate = Analysis.model_validate({"gates": [ERRORS_25]}).gates[0]
    loose, strict = expect(gate, 0.05, 0.1), expect(gate, 0.001, 0.1)
    assert loose.fail_requests is not None and strict.fail_requests is not None
    assert loose.fail_requests < strict.fail_requests
    assert "doubling of 1%" in loose.text(None) and "candidate requests" in loose.text(10.0)


def test_watched_approval_waits_are_stages_too() -> None:
    from mlrollout.analysis.gateset import judged_stages
    from mlrollout.plan.loader import load_plan

    root = Path(__file__).resolve().parents[3]
    plans = {p.name: load_plan(p).plan for p in (root / "plans").glob("local-*.yaml")}
    approval = plans["local-approval.yaml"]
    analyze = sum(1 for s in approval.strategy.steps if s.kind == "analyze")  # type: ignore[union-attr]
    approve = sum(1 for s in approval.strategy.steps if s.kind == "approve")  # type: ignore[union-attr]
    assert approve >= 1
    assert judged_stages(approval) == analyze + approve
