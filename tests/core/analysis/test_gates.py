"""The v1 gate framework: outcomes, reasons with numbers, no-data rules, error budget.

These pin v1's rule (:class:`FixedHorizonBonferroni`), still available by name; the default rule
is tested in ``test_sequential.py``.
"""

from __future__ import annotations

import doctest
import json
import math
import random
from typing import Any

import pytest
from draws import binomial  # tests/core/analysis/draws.py, see conftest.py

import mlrollout.analysis.gateset
from mlrollout.analysis import (
    RULES,
    DecisionRule,
    FixedHorizonBonferroni,
    GateSet,
    GateVerdict,
    LookContext,
    MixtureSPRT,
    Outcome,
    Verdict,
)
from mlrollout.contracts import CustomValue, LatencyHistogram, Window
from mlrollout.plan.model import Analysis, Gate

ERRORS_25 = {"name": "errors", "metric": "error_rate", "vs_baseline": {"max_increase": "25%"}}
P99_300 = {"name": "p99", "metric": "latency_p99", "max": "300ms"}
BOUNDS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


def gate_set(*gates: dict[str, Any], looks: int = 20, min_requests: int = 200) -> GateSet:
    analysis = Analysis.model_validate(
        {"alpha": 0.05, "min_requests": min_requests, "gates": list(gates)}
    )
    return GateSet.from_plan(analysis, planned_looks=looks, rule=FixedHorizonBonferroni())


def only(verdict: Verdict) -> GateVerdict:
    assert len(verdict.gates) == 1
    return verdict.gates[0]


# ----------------------------------------------------------------------------- error rate


def test_clearly_bad_candidate_fails_with_numbers_in_the_reason() -> None:
    verdict = gate_set(ERRORS_25).look(
        Window(requests=2000, errors=100), Window(requests=5000, errors=50)
    )
    assert verdict.outcome is Outcome.FAIL
    g = only(verdict)
    assert "5% vs baseline 1% (+400%)" in g.reason
    assert "beyond the +25% margin (limit 1.25%)" in g.reason
    assert "99.75% confidence" in g.reason
    assert g.numbers["candidate"] == pytest.approx(0.05)
    assert g.numbers["baseline"] == pytest.approx(0.01)
    assert g.numbers["threshold"] == pytest.approx(0.0125)
    assert g.numbers["candidate_requests"] == 2000
    assert g.numbers["baseline_requests"] == 5000
    assert g.numbers["statistic"] is not None and g.numbers["critical"] is not None
    assert g.numbers["statistic"] > g.numbers["critical"]


def test_clearly_good_candidate_passes() -> None:
    verdict = gate_set(ERRORS_25).look(
        Window(requests=50_000, errors=500), Window(requests=50_000, errors=500)
    )
    assert verdict.outcome is Outcome.PASS
    assert "within the +25% margin" in only(verdict).reason


def test_same_rates_with_little_data_are_undecided() -> None:
    verdict = gate_set(ERRORS_25).look(
        Window(requests=400, errors=4), Window(requests=400, errors=4)
    )
    assert verdict.outcome is Outcome.CONTINUE
    assert "not yet distinguishable" in only(verdict).reason


def test_max_decrease_mirrors_the_test() -> None:
    thumbs = {"name": "e", "metric": "error_rate", "vs_baseline": {"max_decrease": "25%"}}
    low = gate_set(thumbs).look(Window(requests=5000, errors=10), Window(requests=5000, errors=50))
    assert low.outcome is Outcome.FAIL
    same = gate_set(thumbs).look(
        Window(requests=50_000, errors=500), Window(requests=50_000, errors=500)
    )
    assert same.outcome is Outcome.PASS


@pytest.mark.parametrize("margin", ["25%", "0.5pp"])
def test_no_errors_on_either_side_passes(margin: str) -> None:
    gate = {"name": "errors", "metric": "error_rate", "vs_baseline": {"max_increase": margin}}
    verdict = gate_set(gate).look(Window(requests=5000, errors=0), Window(requests=5000, errors=0))
    assert verdict.outcome is Outcome.PASS, only(verdict).reason
    assert all(v is None or math.isfinite(v) for v in only(verdict).numbers.values())


def test_errors_against_an_error_free_baseline_fail() -> None:
    verdict = gate_set(ERRORS_25).look(
        Window(requests=2000, errors=30), Window(requests=2000, errors=0)
    )
    assert verdict.outcome is Outcome.FAIL


def test_absolute_max_uses_wilson_bounds() -> None:
    gs = gate_set({"name": "e", "metric": "error_rate", "max": "1%"})
    assert gs.look(Window(requests=5000, errors=150), None).outcome is Outcome.FAIL
    assert gs.look(Window(requests=5000, errors=10), None).outcome is Outcome.PASS
    g = only(gs.look(Window(requests=5000, errors=45), None))
    assert g.outcome is Outcome.CONTINUE
    assert g.numbers["lower"] is not None and g.numbers["upper"] is not None
    assert g.numbers["lower"] < 0.01 < g.numbers["upper"]


# ------------------------------------------------------------------------------- no data


def test_small_samples_hold_and_say_how_many_more() -> None:
    g = only(gate_set(ERRORS_25).look(Window(requests=57, errors=1), Window(requests=5000)))
    assert g.outcome is Outcome.HOLD
    assert "candidate has 57 of 200 requests" in g.reason
    assert g.numbers["needed_requests"] == 143


def test_short_baseline_holds_a_comparing_gate_only() -> None:
    gs = gate_set(ERRORS_25, {"name": "e", "metric": "error_rate", "max": "50%"})
    verdict = gs.look(Window(requests=5000, errors=5), Window(requests=57, errors=0))
    assert [g.outcome for g in verdict.gates] == [Outcome.HOLD, Outcome.PASS]
    assert "baseline has 57 of 200 requests" in verdict.gates[0].reason


def test_none_windows_hold_and_never_pass() -> None:
    gs = gate_set(ERRORS_25, P99_300, {"name": "r", "metric": "requests", "max": 10**6})
    verdict = gs.look(None, None)
    assert verdict.outcome is Outcome.HOLD
    assert all(g.outcome is Outcome.HOLD for g in verdict.gates)
    assert all("no data" in g.reason for g in verdict.gates)


def test_zero_requests_with_min_requests_zero_still_hold() -> None:
    gs = gate_set({"name": "e", "metric": "error_rate", "max": "1%"}, min_requests=0)
    assert gs.look(Window(requests=0, errors=0), None).outcome is Outcome.HOLD


@pytest.mark.parametrize("who", ["candidate", "baseline"])
def test_failed_query_is_an_error_measurement(who: str) -> None:
    broken = Window(requests=5000, errors=5, error="ThrottlingException: Rate exceeded")
    fine = Window(requests=5000, errors=5)
    cand, base = (broken, fine) if who == "candidate" else (fine, broken)
    g = only(gate_set(ERRORS_25).look(cand, base))
    assert g.outcome is Outcome.HOLD
    assert g.error == "ThrottlingException: Rate exceeded"
    assert f"metrics query failed for the {who}: ThrottlingException" in g.reason


def test_missing_metric_holds() -> None:
    g = only(gate_set(P99_300).look(Window(requests=5000, errors=0), None))
    assert g.outcome is Outcome.HOLD
    assert "no p99 latency data for the candidate" in g.reason


# ------------------------------------------------------------------------------- latency


def histogram(counts: list[int]) -> LatencyHistogram:
    return LatencyHistogram(BOUNDS, counts)


def test_latency_p99_above_max_fails() -> None:
    slow = histogram([3000, 1000, 700, 100, 100, 100, 0])  # 4% above 300ms
    g = only(gate_set(P99_300).look(Window(requests=5000, latency=slow), None))
    assert g.outcome is Outcome.FAIL, g.reason
    assert g.numbers["lower"] is not None and g.numbers["lower"] > 0.3
    assert "above the 300ms maximum" in g.reason


def test_latency_p99_below_max_passes() -> None:
    fast = histogram([3000, 1500, 495, 5, 0, 0, 0])
    g = only(gate_set(P99_300).look(Window(requests=5000, latency=fast), None))
    assert g.outcome is Outcome.PASS, g.reason
    assert g.numbers["upper"] is not None and g.numbers["upper"] <= 0.3
    assert "ms (bounds " in g.reason


def test_latency_p99_needs_enough_requests_for_an_upper_bound() -> None:
    fast = histogram([300, 100, 100, 0, 0, 0, 0])
    g = only(gate_set(P99_300).look(Window(requests=500, latency=fast), None))
    assert g.outcome is Outcome.CONTINUE
    assert g.numbers["upper"] is None
    needed = g.numbers["needed_requests"]
    assert needed is not None and needed > 500
    assert f"{needed:.0f} needed" in g.reason


def test_provider_percentiles_compare_the_point_with_a_weaker_guarantee() -> None:
    gs = gate_set(P99_300)
    ok = only(gs.look(Window(requests=5000, latency_percentiles={0.99: 0.25}), None))
    bad = only(gs.look(Window(requests=5000, latency_percentiles={0.99: 0.31}), None))
    assert (ok.outcome, bad.outcome) == (Outcome.PASS, Outcome.FAIL)
    for g in (ok, bad):
        assert "weaker guarantee" in g.reason
        assert "confidence" not in g.reason.replace("no confidence bound", "")


def test_latency_vs_baseline() -> None:
    gate = {"name": "p99", "metric": "latency_p99", "vs_baseline": {"max_increase": "20%"}}
    base = Window(requests=5000, latency=histogram([3000, 1000, 900, 100, 0, 0, 0]))
    slow = Window(requests=5000, latency=histogram([2000, 1000, 1000, 500, 400, 100, 0]))
    assert gate_set(gate).look(slow, base).outcome is Outcome.FAIL
    assert gate_set(gate).look(base, base).outcome is not Outcome.FAIL


# ------------------------------------------------------------------------- requests, custom


def test_requests_gate() -> None:
    gs = gate_set({"name": "r", "metric": "requests", "min": 1000, "max": 10_000})
    held = only(gs.look(Window(requests=500), None))
    assert held.outcome is Outcome.HOLD and held.numbers["needed_requests"] == 500
    assert gs.look(Window(requests=5000), None).outcome is Outcome.PASS
    assert gs.look(Window(requests=20_000), None).outcome is Outcome.FAIL


def test_custom_rate_and_custom_mean() -> None:
    thumbs = {
        "name": "thumbs-up",
        "metric": "custom",
        "query": {"metric": "ThumbsUp"},
        "vs_baseline": {"max_decrease": "5%"},
    }
    worse = gate_set(thumbs).look(
        Window(requests=20_000, custom={"thumbs-up": CustomValue(10_000, 20_000)}),
        Window(requests=20_000, custom={"thumbs-up": CustomValue(13_000, 20_000)}),
    )
    assert worse.outcome is Outcome.FAIL
    assert "thumbs-up 50% vs baseline 65%" in only(worse).reason
    score = {"name": "score", "metric": "custom", "query": {"m": "s"}, "max": 4.0}
    mean = only(
        gate_set(score).look(Window(requests=500, custom={"score": CustomValue(1500.5, 500)}), None)
    )
    assert mean.outcome is Outcome.PASS and "weaker guarantee" in mean.reason
    missing = only(gate_set(score).look(Window(requests=500), None))
    assert missing.outcome is Outcome.HOLD


# ------------------------------------------------------------------------------ combining


def test_outcomes_are_ordered_worst_of() -> None:
    assert Outcome.PASS < Outcome.CONTINUE < Outcome.HOLD < Outcome.FAIL
    assert [o.value for o in Outcome] == ["pass", "continue", "hold", "fail"]
    assert Outcome.worst([]) is Outcome.PASS
    assert Outcome.worst([Outcome.HOLD, Outcome.CONTINUE]) is Outcome.HOLD


def verdict_of(*outcomes: Outcome, dry: tuple[bool, ...] = ()) -> Verdict:
    flags = dry or (False,) * len(outcomes)
    return Verdict(
        [
            GateVerdict(f"g{i}", "error_rate", o, "r", {}, d)
            for i, (o, d) in enumerate(zip(outcomes, flags, strict=True))
        ]
    )


def test_worst_of_combination() -> None:
    assert verdict_of().outcome is Outcome.PASS
    assert verdict_of(Outcome.PASS, Outcome.CONTINUE).outcome is Outcome.CONTINUE
    assert verdict_of(Outcome.CONTINUE, Outcome.HOLD, Outcome.PASS).outcome is Outcome.HOLD
    assert verdict_of(Outcome.HOLD, Outcome.FAIL).outcome is Outcome.FAIL
    assert verdict_of(Outcome.PASS, Outcome.FAIL, dry=(False, True)).outcome is Outcome.PASS


def test_dry_run_gate_failing_does_not_fail_the_look() -> None:
    gs = gate_set(ERRORS_25, {**P99_300, "dry_run": True})
    slow = histogram([3000, 1000, 700, 100, 100, 100, 0])
    verdict = gs.look(
        Window(requests=50_000, errors=500, latency=slow), Window(requests=50_000, errors=500)
    )
    assert [g.outcome for g in verdict.gates] == [Outcome.PASS, Outcome.FAIL]
    assert verdict.outcome is Outcome.PASS
    assert verdict.reasons[1].startswith("p99 (dry run): ")


def test_bonferroni_spends_alpha_over_deciding_gates_and_looks() -> None:
    gs = gate_set(ERRORS_25, P99_300, {**P99_300, "name": "shadow", "dry_run": True}, looks=10)
    assert gs.alpha_per_look == pytest.approx(0.05 / (2 * 10))
    assert gate_set(looks=0).alpha_per_look == pytest.approx(0.05)


@pytest.mark.parametrize("rule", sorted(RULES))
def test_bounds_and_margins_are_parsed_once_when_the_gate_set_is_built(
    rule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlrollout.plan.model import parse_margin, parse_metric_value

    calls: list[object] = []

    def counted(parse: Any) -> Any:
        def wrapper(metric: str, raw: Any) -> Any:
            calls.append(raw)
            return parse(metric, raw)

        return wrapper

    where = "mlrollout.analysis.measures."
    monkeypatch.setattr(where + "parse_metric_value", counted(parse_metric_value))
    monkeypatch.setattr(where + "parse_margin", counted(parse_margin))
    both = {**ERRORS_25, "max": "5%"}
    analysis = Analysis.model_validate({"gates": [both, P99_300]})
    gs = GateSet.from_plan(analysis, 5, rule=RULES[rule]())
    assert sorted(map(str, calls)) == ["25%", "300ms", "5%"]
    for _ in range(5):
        verdict = gs.look(Window(requests=5000, errors=50), Window(requests=5000, errors=50))
        assert verdict.gates[0].outcome is not Outcome.HOLD
    assert len(calls) == 3


class Exploding:
    def evaluate(
        self, gate: Gate, candidate: Window, baseline: Window, ctx: LookContext
    ) -> GateVerdict:
        raise ZeroDivisionError("boom")


def test_a_rule_that_breaks_holds_instead_of_crashing() -> None:
    rule: DecisionRule = Exploding()
    analysis = Analysis.model_validate({"gates": [ERRORS_25]})
    g = only(GateSet.from_plan(analysis, 5, rule=rule).look(Window(requests=5000), None))
    assert g.outcome is Outcome.HOLD and g.error and "ZeroDivisionError: boom" in g.reason
    assert isinstance(GateSet.from_plan(analysis, 5).rule, MixtureSPRT)  # the default now
    assert isinstance(RULES["fixed-horizon"](), FixedHorizonBonferroni)


def test_verdict_roundtrips_through_json() -> None:
    gs = gate_set(ERRORS_25, P99_300)
    verdict = gs.look(
        Window(requests=500, errors=5, latency=histogram([300, 100, 100, 0, 0, 0, 0])),
        Window(requests=5000, errors=50),
    )
    assert only(Verdict([verdict.gates[1]])).numbers["upper"] is None  # inf is stored as None
    data = json.loads(json.dumps(verdict.to_dict(), allow_nan=False))
    assert data["outcome"] == verdict.outcome.value and data["reasons"] == verdict.reasons
    again = Verdict.from_dict(data)
    assert again == verdict
    assert again.to_dict() == verdict.to_dict()


def test_doctest_example_runs() -> None:
    result = doctest.testmod(mlrollout.analysis.gateset)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------- simulation


def fail_rate(candidate_rate: float, runs: int = 300, looks: int = 20, seed: int = 7) -> float:
    """Share of rollouts failed by the +25% gate, looking at cumulative windows each look."""
    gs = gate_set(ERRORS_25, looks=looks)
    rng, failures = random.Random(seed), 0
    for _ in range(runs):
        n_c = x_c = n_b = x_b = 0
        for _ in range(looks):
            n_c, x_c = n_c + 150, x_c + binomial(rng, 150, candidate_rate)
            n_b, x_b = n_b + 600, x_b + binomial(rng, 600, 0.02)
            outcome = gs.look(
                Window(requests=n_c, errors=x_c), Window(requests=n_b, errors=x_b)
            ).outcome
            if outcome is Outcome.FAIL:
                failures += 1
            if outcome in (Outcome.FAIL, Outcome.PASS):
                break
    return failures / runs


def test_simulated_false_fail_rate_stays_within_alpha() -> None:
    assert fail_rate(0.02) <= 0.05  # healthy: same rate as the baseline
    assert fail_rate(0.025) <= 0.05  # worst case: exactly at the +25% margin
    assert fail_rate(0.06, runs=50) >= 0.9  # and the gate does catch a real regression


def test_a_gate_with_several_criteria_takes_the_worst() -> None:
    gate = {**ERRORS_25, "max": "2%"}
    g = only(
        gate_set(gate).look(
            Window(requests=50_000, errors=2500), Window(requests=50_000, errors=500)
        )
    )
    assert g.outcome is Outcome.FAIL
    assert "above the 2% maximum" in g.reason and "beyond the +25% margin" in g.reason
