"""The prediction gates: agreement and prediction_drift judged on the capture's counts, with the
operational gates' discipline (always valid under repeated looks, no data never passes)."""

from __future__ import annotations

import math
import random

import pytest
from draws import binomial

from mlrollout.analysis import GateSet, Outcome
from mlrollout.analysis.expected import expect
from mlrollout.analysis.prediction import AGREEMENT_METHOD, DRIFT_METHOD, psi, share_interval
from mlrollout.capture import Bins, PredictionSummary
from mlrollout.contracts import Window
from mlrollout.plan.model import Analysis, Gate

AGREE = {"name": "agree", "metric": "agreement", "min": "97%"}
DRIFT = {"name": "drift", "metric": "prediction_drift", "max": 0.2}
DECILES = Bins("numeric", edges=tuple(float(i) for i in range(1, 10)))


def gates(*specs: dict[str, object], alpha: float = 0.05, min_requests: int = 100) -> GateSet:
    analysis = Analysis.model_validate(
        {"alpha": alpha, "min_requests": min_requests, "gates": list(specs)}
    )
    return GateSet.from_plan(analysis)


def look(g: GateSet, summary: PredictionSummary | None, n: int = 0, **kw: object) -> Outcome:
    verdict = g.look(Window(requests=n, predictions=summary), Window(requests=n), **kw)  # type: ignore[arg-type]
    return verdict.gates[0].outcome


def summary(paired: int, agreed: int, **kw: object) -> PredictionSummary:
    return PredictionSummary(
        paired=paired,
        agreed=agreed,
        records={"v6": paired, "v7": paired},
        baseline="v6",
        candidate="v7",
        **kw,  # type: ignore[arg-type]
    )


def test_no_capture_a_failed_capture_and_too_few_pairs_hold() -> None:
    g = gates(AGREE, DRIFT)
    verdict = g.look(Window(requests=5000), Window(requests=5000))
    assert [v.outcome for v in verdict.gates] == [Outcome.HOLD, Outcome.HOLD]
    assert "no capture data" in verdict.gates[0].reason
    failed = PredictionSummary(error="could not list s3://bucket/capture")
    verdict = g.look(Window(requests=5000, predictions=failed), Window(requests=5000))
    assert verdict.gates[0].error and "s3://bucket" in verdict.gates[0].reason
    few = summary(40, 10)
    verdict = g.look(Window(requests=5000, predictions=few), Window(requests=5000))
    assert verdict.gates[0].outcome is Outcome.HOLD
    assert verdict.gates[0].numbers["needed_requests"] == 60
    assert verdict.gates[1].outcome is Outcome.HOLD and "no drift bins" in verdict.gates[1].reason


def test_the_agreement_verdict_says_its_numbers() -> None:
    g = gates(AGREE)
    s = summary(4210, 3920, unparsed={"v6": 3, "v7": 9}, unpaired={"v6": 0, "v7": 12})
    verdict = g.look(Window(requests=4210, predictions=s), Window(requests=4210))
    [v] = verdict.gates
    assert v.outcome is Outcome.FAIL
    assert v.reason.startswith("outputs agree on 93.11 % of 4,210 paired requests (")
    assert "below 97 %" in v.reason and v.reason.split(";")[0].endswith(": fail")
    assert "12 records did not parse (v6 3, v7 9)" in v.reason and "unpaired: v7 12" in v.reason
    n = v.numbers
    assert n["estimate"] == pytest.approx(3920 / 4210)
    assert n["lower"] is not None and n["upper"] is not None
    assert n["lower"] < n["estimate"] < n["upper"] < 0.97  # the bound the decision used
    assert n["unparsed"] == 12 and n["threshold"] == pytest.approx(0.97)


def test_agreements_bounds_are_its_test_inverted() -> None:
    # Wherever the decision falls, the interval is on the same side of the bound.
    g = gates(AGREE)
    for agreed in range(9600, 9800, 7):
        [v] = g.look(Window(requests=1, predictions=summary(10_000, agreed)), Window()).gates
        low, high = v.numbers["lower"], v.numbers["upper"]
        assert low is not None and high is not None
        if v.outcome is Outcome.FAIL:
            assert high < 0.97 + 1e-9
        elif v.outcome is Outcome.PASS:
            assert low > 0.97 - 1e-9
        else:
            assert low <= 0.97 + 1e-9 and high >= 0.97 - 1e-9


def test_a_disagreeing_shadow_fails_fast_and_an_agreeing_one_passes() -> None:
    for rate, expected, within_looks in ((0.90, Outcome.FAIL, 3), (0.995, Outcome.PASS, 8)):
        g = gates(AGREE, alpha=0.05)
        rng = random.Random(3)
        paired = agreed = 0
        for k in range(1, 31):
            paired += 100
            agreed += 100 - binomial(rng, 100, 1 - rate)
            outcome = look(g, summary(paired, agreed), paired, look=k, horizon=30)
            if outcome is not Outcome.CONTINUE and outcome is not Outcome.HOLD:
                break
        assert outcome is expected and k <= within_looks, (rate, k)


def test_agreement_false_alarms_stay_within_alpha_at_the_bound() -> None:
    # The worst healthy case: a shadow that agrees exactly as often as the bound allows,
    # looked at 30 times a stage. Rolled back in at most alpha of the stages.
    runs, alpha = 200, 0.05
    rng = random.Random(11)
    g = gates(AGREE, alpha=alpha)
    fails = 0
    for _ in range(runs):
        paired = agreed = 0
        for k in range(1, 31):
            paired += 200
            agreed += 200 - binomial(rng, 200, 0.03)
            if look(g, summary(paired, agreed), paired, look=k, horizon=30) is Outcome.FAIL:
                fails += 1
                break
    assert fails / runs <= alpha + 2.5 * math.sqrt(alpha * (1 - alpha) / runs)


def drift_summary(base: list[int], cand: list[int]) -> PredictionSummary:
    return PredictionSummary(
        bins=DECILES, counts={"v6": base, "v7": cand}, baseline="v6", candidate="v7"
    )


def draw_bins(rng: random.Random, shares: list[float], n: int) -> list[int]:
    counts = [0] * len(shares)
    for i in rng.choices(range(len(shares)), weights=shares, k=n):
        counts[i] += 1
    return counts


def test_the_drift_verdict_says_its_numbers_and_a_clear_drift_fails() -> None:
    g = gates(DRIFT)
    base = [1000] * 10
    cand = [200, 200, 400, 600, 1000, 1000, 1400, 1600, 1800, 1800]
    value = psi(cand, base)
    [v] = g.look(Window(requests=1, predictions=drift_summary(base, cand)), Window()).gates
    assert v.outcome is Outcome.FAIL and value > 0.2
    assert v.reason.startswith(
        f"prediction drift PSI {value:.3g} over 10 bins (baseline's deciles)"
    )
    assert "above 0.2" in v.reason and v.reason.endswith(": fail")
    low = v.numbers["lower"]
    assert low is not None and 0.2 < low < value


def test_drift_false_alarms_stay_within_alpha_and_the_same_outputs_pass() -> None:
    rng = random.Random(5)
    shares = [0.1] * 10
    g = gates(DRIFT, alpha=0.05)
    fails = passes = 0
    runs = 20
    for _ in range(runs):
        base, cand = [0] * 10, [0] * 10
        for k in range(1, 13):
            base = [a + b for a, b in zip(base, draw_bins(rng, shares, 1000), strict=True)]
            cand = [a + b for a, b in zip(cand, draw_bins(rng, shares, 1000), strict=True)]
            outcome = look(g, drift_summary(base, cand), sum(cand), look=k, horizon=12)
            if outcome is Outcome.FAIL:
                fails += 1
                break
            if outcome is Outcome.PASS:
                passes += 1
                break
    assert fails == 0 and passes == runs  # the bounds are conservative: well within alpha


def test_psi_floors_empty_bins_and_share_intervals_cover() -> None:
    assert psi([0, 10], [10, 0]) == pytest.approx(2 * (1 - 1e-4) * math.log(1 / 1e-4))
    assert math.isnan(psi([0, 0], [1, 1]))
    low, high = share_interval(100, 1000, 0.05)
    assert low < 0.1 < high and high - low < 0.07
    assert share_interval(0, 1000, 0.05)[0] == 0.0


def test_preview_states_each_methods() -> None:
    agree = expect(Gate.model_validate(AGREE), 0.05, 1.0)
    assert agree.method == AGREEMENT_METHOD and agree.fail_requests and agree.pass_requests
    drift = expect(Gate.model_validate(DRIFT), 0.05, 1.0)
    assert drift.method == DRIFT_METHOD
