"""The quality gates (accuracy, precision, recall, f1, feedback): decisions, labels, wording.

The counts come as the feedback sources hand them to the analysis (``Window.quality``); the
gates are judged through :class:`GateSet` as the engine judges them.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from mlrollout.analysis import FixedHorizonBonferroni, GateSet, GateVerdict, Monitor, Outcome
from mlrollout.analysis.expected import expect
from mlrollout.analysis.quality import MACRO_METHOD, f1_interval
from mlrollout.contracts import Window
from mlrollout.feedback import QualityCounts
from mlrollout.plan.model import Analysis, Gate

ACCURACY = {"name": "acc", "metric": "accuracy", "vs_baseline": {"max_decrease": "2pp"}}
THUMBS = {"name": "thumbs", "metric": "feedback", "vs_baseline": {"max_decrease": "5%"}}
#: 3 classes: (label, prediction) -> count
CONFUSION = {
    ("a", "a"): 500, ("a", "b"): 50, ("a", "c"): 30,
    ("b", "b"): 300, ("b", "a"): 40,
    ("c", "c"): 80, ("c", "a"): 60,
}  # fmt: skip


def gates(*gate: dict[str, Any], min_requests: int = 200, **kw: Any) -> GateSet:
    analysis = Analysis.model_validate(
        {"alpha": 0.05, "min_requests": min_requests, "gates": list(gate)}
    )
    return GateSet.from_plan(analysis, **kw)


def judged(
    gate_set: GateSet, candidate: QualityCounts | None, baseline: QualityCounts | None
) -> GateVerdict:
    verdict = gate_set.look(
        Window(requests=50_000, quality=candidate), Window(requests=50_000, quality=baseline)
    )
    assert len(verdict.gates) == 1
    return verdict.gates[0]


def accuracy(correct: int, labelled: int, waiting: int = 0) -> QualityCounts:
    """Binary labels: ``correct`` of ``labelled`` predictions right."""
    wrong = labelled - correct
    return QualityCounts(
        confusion={("1", "1"): correct // 2, ("0", "0"): correct - correct // 2, ("1", "0"): wrong},
        waiting=waiting,
    )


# ------------------------------------------------------------------------------ decisions


def test_a_candidate_at_80_percent_against_92_is_rolled_back_with_the_numbers() -> None:
    g = judged(gates(ACCURACY), accuracy(3204, 4000, waiting=1830), accuracy(33_120, 36_000))
    assert g.outcome is Outcome.FAIL and g.error is None
    assert g.reason.startswith("accuracy 80.1% (±")
    assert "vs 92.0% (±" in g.reason
    assert "on the baseline: 11.9 pp worse, beyond the 2 pp allowed" in g.reason
    assert "3,204 of 4,000 labelled predictions correct vs 33,120 of 36,000" in g.reason
    assert "candidate 4,000 labelled, 1,830 waiting for labels" in g.reason
    assert g.reason.endswith(": roll back")
    assert g.numbers["candidate"] == pytest.approx(0.801)
    assert g.numbers["baseline"] == pytest.approx(0.92)
    assert g.numbers["estimate"] == pytest.approx(-0.119)
    assert g.numbers["threshold"] == pytest.approx(0.90)
    assert g.numbers["candidate_waiting"] == 1830


def test_equal_accuracy_passes_once_enough_labels_are_in_and_not_before() -> None:
    gate_set = gates(ACCURACY)
    early = judged(gate_set, accuracy(460, 500), accuracy(4600, 5000))
    assert early.outcome is Outcome.CONTINUE  # not enough evidence either way yet
    assert "more candidate labelled predictions at these rates" in early.reason
    late = judged(gate_set, accuracy(18_400, 20_000), accuracy(36_800, 40_000))
    assert late.outcome is Outcome.PASS
    assert "no different, within the 2 pp allowed (limit 90.0%)" in late.reason


def test_a_clear_drop_inside_the_margin_says_it_is_not_shown_beyond_it() -> None:
    """As the error gate: the margin is an indifference zone, and the verdict says which side
    of it the evidence stands on."""
    g = judged(gates(ACCURACY), accuracy(18_100, 20_000), accuracy(460_000, 500_000))
    assert g.outcome is Outcome.FAIL
    assert "1.5 pp worse, a drop, not yet shown beyond the 2 pp allowed" in g.reason


def test_a_gate_holds_below_min_labels_and_says_how_many_wait() -> None:
    gate_set = gates({**ACCURACY, "min_labels": 1000})
    perfect = accuracy(412, 412, waiting=1830)
    g = judged(gate_set, perfect, accuracy(20_000, 20_000))
    assert g.outcome is Outcome.HOLD and g.error is None
    assert g.reason == (
        "candidate 412 labelled, 1,830 waiting for labels: 588 more needed before any decision "
        "(1,000 per variant)"
    )
    assert g.numbers["needed_labels"] == 588
    # min_labels defaults to analysis.min_requests
    default = judged(gates(ACCURACY, min_requests=500), perfect, accuracy(20_000, 20_000))
    assert default.outcome is Outcome.HOLD and "88 more needed" in default.reason
    assert "(500 per variant)" in default.reason


def test_no_counts_or_a_source_error_is_an_error_measurement_and_broken_records_are_counted() -> (
    None
):
    gate_set = gates(ACCURACY)
    none = judged(gate_set, None, accuracy(9000, 10_000))
    assert none.outcome is Outcome.HOLD and none.error is not None
    failed = judged(gate_set, QualityCounts(error="s3 GetObject: AccessDenied"), accuracy(9, 10))
    assert failed.outcome is Outcome.HOLD and failed.error == "s3 GetObject: AccessDenied"
    assert "could not be read for the candidate: s3 GetObject: AccessDenied" in failed.reason
    broken = accuracy(3204, 4000)
    broken.broken = 7
    g = judged(gate_set, broken, accuracy(33_120, 36_000))
    assert g.outcome is Outcome.FAIL  # broken records never stop a decision
    assert "7 broken records skipped (candidate 7)" in g.reason
    assert g.numbers["broken"] == 7


def test_an_absolute_minimum_and_the_fixed_horizon_rule_dispatch_the_same_gate() -> None:
    floor = {"name": "acc", "metric": "accuracy", "min": "90%"}
    low = judged(gates(floor), accuracy(801, 1000), None)
    assert low.outcome is Outcome.FAIL
    assert low.reason.startswith("accuracy 80.1% (±") and "below the 90.0% minimum" in low.reason
    high = judged(gates(floor), accuracy(9700, 10_000), None)
    assert high.outcome is Outcome.PASS and "at or over the 90.0% minimum" in high.reason
    v1 = gates(floor, rule=FixedHorizonBonferroni(), planned_looks=10)
    assert judged(v1, accuracy(801, 1000), None).outcome is Outcome.FAIL


def test_feedback_at_50_percent_against_62_is_rolled_back() -> None:
    g = judged(
        gates(THUMBS),
        QualityCounts(feedback=(1000, 2000)),
        QualityCounts(feedback=(12_400, 20_000)),
    )
    assert g.outcome is Outcome.FAIL
    assert g.reason.startswith("positive feedback 50.0% (±")
    assert "vs 62.0% (±" in g.reason
    assert "12.0 pp (19.4%) worse, beyond the 5% allowed" in g.reason
    assert "1,000 of 2,000 ratings positive vs 12,400 of 20,000" in g.reason
    same = judged(
        gates(THUMBS),
        QualityCounts(feedback=(12_400, 20_000)),
        QualityCounts(feedback=(12_400, 20_000)),
    )
    assert same.outcome is Outcome.PASS
    unrated = judged(gates(THUMBS), QualityCounts(feedback=None), QualityCounts(feedback=(9, 10)))
    assert unrated.outcome is Outcome.HOLD and "no ratings" in unrated.reason


# ------------------------------------------------------------------ classes and averages


def test_macro_and_positive_class_precision_on_a_three_class_confusion() -> None:
    big = QualityCounts(confusion={k: n * 100 for k, n in CONFUSION.items()})
    positive = judged(
        gates({"name": "p", "metric": "precision", "positive": "b", "min": "82%"}), big, None
    )
    macro = judged(gates({"name": "p", "metric": "precision", "min": "82%"}), big, None)
    # precision of b: 300 / (300 + 50); macro: the mean of a (500/600), b, c (80/110)
    assert positive.numbers["candidate"] == pytest.approx(300 / 350)
    assert macro.numbers["candidate"] == pytest.approx((500 / 600 + 300 / 350 + 80 / 110) / 3)
    assert positive.outcome is Outcome.PASS  # 85.7 % is clear of 82 %
    assert macro.outcome is Outcome.FAIL  # 80.6 %: below it
    assert "precision of 'b' 85.7%" in positive.reason
    assert "30,000 of 35,000 predictions of 'b' right" in positive.reason
    assert macro.reason.startswith("macro precision 80.6% (")
    assert (
        "over 3 classes (Bonferroni; 'a' 83.3% of 60,000, 'b' 85.7% of 35,000, 'c' 72.7% of 11,000)"
        in macro.reason
    )
    assert macro.numbers["lower"] <= macro.numbers["candidate"] <= macro.numbers["upper"]
    recall = judged(
        gates({"name": "r", "metric": "recall", "positive": "c", "min": "50%"}), big, None
    )
    assert recall.numbers["candidate"] == pytest.approx(80 / 140)


def test_f1_is_the_harmonic_mean_and_compares_against_the_baseline() -> None:
    tp, fp, fn = 500, 100, 80  # class a of CONFUSION
    f1 = {"name": "f1", "metric": "f1", "positive": "a", "vs_baseline": {"max_decrease": "2pp"}}
    worse = {("a", "a"): 3000, ("a", "b"): 1500, ("b", "a"): 1500, ("b", "b"): 4000}
    base = {("a", "a"): 5000, ("a", "b"): 500, ("b", "a"): 500, ("b", "b"): 4000}
    g = judged(gates(f1), QualityCounts(confusion=worse), QualityCounts(confusion=base))
    assert g.outcome is Outcome.FAIL
    assert g.numbers["candidate"] == pytest.approx(2 * 3000 / (2 * 3000 + 1500 + 1500))
    assert g.numbers["baseline"] == pytest.approx(2 * 5000 / (2 * 5000 + 500 + 500))
    assert g.reason.startswith("F1 of 'a' 66.7% (±") and "24.2 pp worse" in g.reason
    low, high = f1_interval(tp, fp, fn, 0.05)
    assert low < 2 * tp / (2 * tp + fp + fn) < high


def test_the_f1_interval_covers_the_true_f1_at_every_look() -> None:
    """Seeded simulation: confusion counts drawn from a multinomial, 12 looks per run; the
    always-valid interval must hold the true F1 at every look in at least 1 - alpha of the runs
    (it is conservative: Ville's bound), and it narrows as labels arrive."""
    rng = random.Random(18)
    p_tp, p_fp, p_fn = 0.30, 0.05, 0.10  # the rest true negatives
    truth = 2 * p_tp / (2 * p_tp + p_fp + p_fn)
    alpha, runs, looks, per_look = 0.1, 300, 12, 150
    missed, widths = 0, []
    for _ in range(runs):
        tp = fp = fn = 0
        covered = True
        for _ in range(looks):
            for _ in range(per_look):
                u = rng.random()
                if u < p_tp:
                    tp += 1
                elif u < p_tp + p_fp:
                    fp += 1
                elif u < p_tp + p_fp + p_fn:
                    fn += 1
            low, high = f1_interval(tp, fp, fn, alpha)
            covered = covered and low <= truth <= high
        missed += not covered
        widths.append(high - low)
    assert missed / runs <= alpha
    assert sum(widths) / runs < 0.12  # 1,800 predictions: a useful interval, not [0, 1]


# ---------------------------------------------------------------------- stages and preview


def test_late_labels_hold_then_decide_in_a_monitored_stage() -> None:
    """Labels of each minute's predictions arrive 10 minutes later: the first looks hold (no
    labels), then 80 % against 92 % rolls back."""
    analysis = Analysis.model_validate({"alpha": 0.05, "min_requests": 200, "gates": [ACCURACY]})
    monitor = Monitor.from_plan(analysis, horizon=30)
    rng = random.Random(7)
    outcomes = []
    for minute in range(30):
        labelled = minute >= 10  # this interval brings the labels of minute - 10
        windows = []
        for rate, n in ((0.80, 600), (0.92, 5400)):
            correct = sum(rng.random() < rate for _ in range(n)) if labelled else 0
            counts = accuracy(correct, n) if labelled else QualityCounts()
            counts.waiting = n * min(minute + 1, 10)
            windows.append(Window(requests=n, errors=0, quality=counts))
        outcomes.append(monitor.observe(windows[0], windows[1]).outcome)
        if outcomes[-1] is Outcome.FAIL:
            break
    assert outcomes[:10] == [Outcome.HOLD] * 10
    assert outcomes[-1] is Outcome.FAIL and len(outcomes) <= 13


def test_plan_preview_states_the_methods() -> None:
    single = expect(Gate.model_validate(ACCURACY), 0.025, 0.1)
    assert single.method == (
        "mixture SPRT on the conditional binomial of the wrong predictions (always valid)"
    )
    assert single.fail_requests and single.pass_requests
    assert "catches accuracy 90.0% → 80.0% after ~" in single.text(10.0)
    assert "counts labelled predictions" in single.text(10.0)
    macro = expect(Gate.model_validate({"name": "f", "metric": "f1", "min": "90%"}), 0.025, 0.1)
    assert macro.method == MACRO_METHOD


# --------------------------------------------------------------------- the custom gate's words


def test_a_custom_gate_says_what_its_value_is_made_of() -> None:
    """Part 4: conversions counted per request, revenue as a total over requests, in numbers."""
    from mlrollout.contracts import CustomValue

    conversion = {"name": "conversion", "metric": "custom", "query": {"metric": "conversion"},
                  "vs_baseline": {"max_decrease": "5%"}}  # fmt: skip
    rate = gates(conversion).look(
        Window(requests=20_000, custom={"conversion": CustomValue(500, 20_000)}),
        Window(requests=20_000, custom={"conversion": CustomValue(700, 20_000)}),
    )
    g = rate.gates[0]
    assert g.outcome is Outcome.FAIL
    assert (
        "conversion counted on 500 of 20,000 candidate requests vs 700 of 20,000 baseline "
        "requests, at 95%: roll back"
    ) in g.reason
    revenue = {"name": "revenue", "metric": "custom", "query": {"metric": "revenue"}, "min": 3.0}
    mean = gates(revenue).look(
        Window(requests=2000, custom={"revenue": CustomValue(5000.5, 2000)}), None
    )
    m = mean.gates[0]
    assert m.outcome is Outcome.FAIL and "weaker guarantee" in m.reason
    assert m.reason.endswith(
        "revenue 2.5 per request (5,000.5 in total over 2,000 candidate requests): roll back"
    )
    missing = gates(revenue).look(Window(requests=2000), None).gates[0]
    assert missing.outcome is Outcome.HOLD
    assert missing.reason == (
        "no value of 'revenue' for the candidate (its query returned no total and count)"
    )
