"""The quality gates: is the candidate *better at its job*, once labels and ratings arrive.

They read each variant's :class:`~mlrollout.feedback.QualityCounts` (``Window.quality``: a
confusion matrix over the stage's predictions whose label has arrived, the ratings, how many are
still waiting) and keep the other gates' discipline: always-valid decisions (valid however often
the stage is looked at), the gate's share of the plan's ``alpha`` (split evenly between ``min``
and ``vs_baseline`` when both are set), no data never passes.

Every metric is a ratio of counts, ``hits`` of ``trials``:

=============  ===============================  ============================================
metric         hits                             trials
=============  ===============================  ============================================
``accuracy``   correct predictions              labelled predictions
``precision``  true positives of class ``k``    predictions of ``k`` (TP + FP)
``recall``     true positives of class ``k``    labels ``k`` (TP + FN)
``f1``         true positives of class ``k``    predictions that involve ``k`` (TP + FP + FN)
``feedback``   positive ratings                 ratings
=============  ===============================  ============================================

**F1 is a function of two ratios, and one ratio exactly.** ``F1 = 2 TP / (2 TP + FP + FN)``
is ``g(J) = 2 J / (1 + J)`` of ``J = TP / (TP + FP + FN)`` (the Jaccard index of the class), both
for the counts and for the population (``F1 = 2 p_TP / (2 p_TP + p_FP + p_FN)``). The confusion
is a multinomial, so given how many predictions involve the class, ``TP`` is binomial with
probability ``J``: a ratio of counts like the others, with no delta method and no union of two
confidence sets. The tests and the intervals are made on ``J`` and mapped through ``g``, which
is increasing (a bound on ``J`` is a bound on ``F1``; a margin or bound on ``F1`` becomes one on
``J`` through ``g⁻¹(v) = v / (2 − v)``). ``tests/core/analysis/test_quality.py`` checks the
interval's coverage by simulation.

**With a positive class** (``accuracy``, ``feedback``, and ``precision``/``recall``/``f1`` with
``positive``) the test is the rate machinery of the error-rate gate
(:mod:`~mlrollout.analysis.sequential`), run on the *misses* (``trials − hits``: wrong
predictions, false positives, false negatives, ratings that are not positive), which a worse
candidate has more of:

- ``vs_baseline``: the mixture SPRT on the conditional binomial
  (:func:`~mlrollout.analysis.sequential.conditional_evidence`), its rollback test against "no
  more misses than the baseline" with the calibrated boundary, its pass test against the
  margin's limit. A margin on the quality (``2pp``; ``5%`` relative) becomes a ratio of miss
  rates at the baseline's current value (as the error gate's absolute margins do).
- ``min``: the one-sample mixture SPRT of the absolute rate bounds
  (:func:`~mlrollout.analysis.sequential._one_sample`) on the miss rate against ``1 − min``.

The ``±`` printed beside each variant's value is half its always-valid interval (a Wilson
interval at Robbins' normal-mixture quantile, as the rate bounds print).

**Macro averages** (``precision``/``recall``/``f1`` without ``positive``): the mean over the
classes (every label or prediction seen in either variant; a class with no trials counts 0, as
scikit-learn's default) of the per-class value. Its interval is made from each class's own
always-valid confidence sequence (the two one-sided Bernoulli mixture SPRTs inverted, Ville's
bound, :func:`~mlrollout.analysis.prediction.share_interval`), Bonferroni over the classes and
the variants: the mean of the class bounds bounds the mean. **fail** when the candidate's upper
bound is below the baseline's lower bound (``min``: below ``min``); **pass** when its lower bound
is within the margin of the baseline's upper bound (``min``: at or over it). Valid by the union
bound for a fixed set of classes; conservative (no calibration, Bonferroni, no use of the
correlation between the classes).

Before any decision, each variant needs ``min_labels`` labelled predictions (ratings for
``feedback``; default ``analysis.min_requests``): HOLD, saying how many are labelled and how
many still wait for a label. No counts (``quality`` is ``None``) or a source error is an error
measurement: HOLD, never PASS. Broken records are counted in the reason, never fatal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from mlrollout.analysis.calibration import Pace
from mlrollout.analysis.expected import (
    EXTRA_NATS,
    RATE_FAIL_EXTRA_NATS,
    Expectation,
    _conditional,
    _events_needed,
)
from mlrollout.analysis.measures import Counts, Criteria, Result, confidence, gate_label, wilson
from mlrollout.analysis.mixture import kl_bernoulli, normal_cs_z
from mlrollout.analysis.prediction import share_interval
from mlrollout.analysis.rule import LookContext, combine
from mlrollout.analysis.sequential import (
    _beyond,
    _Evidence,
    _needed_more,
    _one_sample,
    _ratio_edge,
    conditional_evidence,
)
from mlrollout.analysis.verdict import GateVerdict, Numbers, Outcome
from mlrollout.contracts import Window
from mlrollout.feedback import QualityCounts
from mlrollout.plan.model import LABEL_METRICS, QUALITY_METRICS, Gate, Margin

__all__ = [
    "BOUND_METHOD",
    "LABEL_METRICS",
    "MACRO_METHOD",
    "METHOD",
    "MISSES",
    "QUALITY_METRICS",
    "evaluate",
    "expectation",
    "f1_interval",
    "ratios",
]

#: What ``plan preview`` (and the docs) call the methods: the misses each test counts.
MISSES = {
    "accuracy": "wrong predictions",
    "precision": "false positives",
    "recall": "false negatives",
    "f1": "false positives and negatives (F1 through TP/(TP+FP+FN))",
    "feedback": "ratings that are not positive",
}
#: The method of a gate with one ratio (``vs_baseline``; ``min`` tests one sample).
METHOD = "mixture SPRT on the conditional binomial of the {misses} (always valid)"
BOUND_METHOD = "one-sample mixture SPRT on the share of {misses} (always valid)"
MACRO_METHOD = (
    "macro average bounded by per-class always-valid confidence sequences (Bernoulli mixture "
    "SPRTs inverted, Bonferroni over classes and variants; always valid, conservative)"
)
_VERDICT = {Outcome.FAIL: "roll back", Outcome.PASS: "pass", Outcome.CONTINUE: "keep watching"}


@dataclass(frozen=True)
class Ratio:
    """``hits`` of ``trials`` (one class's, or the whole metric's)."""

    hits: int
    trials: int

    @property
    def misses(self) -> int:
        return self.trials - self.hits

    @property
    def share(self) -> float:
        return self.hits / self.trials if self.trials > 0 else 0.0


def _f1(j: float) -> float:
    return 2.0 * j / (1.0 + j)


def _f1_inverse(v: float) -> float:
    return v / (2.0 - v)


def _same(v: float) -> float:
    return v


def _scales(metric: str) -> tuple[Callable[[float], float], Callable[[float], float]]:
    """The map from a ratio's share to the metric's value, and back (F1: ``g`` and ``g⁻¹``)."""
    return (_f1, _f1_inverse) if metric == "f1" else (_same, _same)


def _class_ratio(metric: str, k: str, confusion: dict[tuple[str, str], int]) -> Ratio:
    tp = confusion.get((k, k), 0)
    predicted = sum(n for (_, p), n in confusion.items() if p == k)
    actual = sum(n for (label, _), n in confusion.items() if label == k)
    if metric == "precision":
        return Ratio(tp, predicted)
    if metric == "recall":
        return Ratio(tp, actual)
    return Ratio(tp, predicted + actual - tp)  # f1's Jaccard ratio: TP of TP + FP + FN


def classes(*counts: QualityCounts | None) -> list[str]:
    """The classes a macro average runs over: every label and prediction seen, sorted."""
    seen: set[str] = set()
    for q in counts:
        if q is not None:
            for label, prediction in q.confusion:
                seen.update((label, prediction))
    return sorted(seen)


def ratios(gate: Gate, q: QualityCounts, over: list[str] | None = None) -> list[Ratio]:
    """The gate's ratio(s) in ``q``: one (accuracy, feedback, a positive class), or one per class
    of ``over`` (a macro average; default: the classes of ``q``)."""
    if gate.metric == "feedback":
        positive, rated = q.feedback if q.feedback is not None else (0, 0)
        return [Ratio(positive, rated)]
    if gate.metric == "accuracy":
        return [Ratio(q.correct, q.labelled)]
    keys = [gate.positive] if gate.positive is not None else (over or classes(q))
    return [_class_ratio(gate.metric, k, q.confusion) for k in keys]


def f1_interval(tp: int, fp: int, fn: int, alpha: float) -> tuple[float, float]:
    """An always-valid two-sided ``1 - alpha`` confidence sequence for a class's F1 from its
    counts: the Jaccard ratio's (:func:`~mlrollout.analysis.prediction.share_interval`) mapped
    through ``g(J) = 2J / (1 + J)``."""
    low, high = share_interval(tp, tp + fp + fn, alpha)
    return _f1(low), _f1(high)


# ------------------------------------------------------------------------------- evaluate


def evaluate(gate: Gate, candidate: Window, baseline: Window, ctx: LookContext) -> GateVerdict:
    """One quality gate at one look (``Window.quality`` carries the counts). Never raises on
    bad data."""
    result = _evaluate(gate, candidate.quality, baseline.quality, ctx)
    return GateVerdict(
        gate.name, gate.metric, result.outcome, result.reason, result.numbers, gate.dry_run,
        result.error,
    )  # fmt: skip


def _evaluate(
    gate: Gate, cq: QualityCounts | None, bq: QualityCounts | None, ctx: LookContext
) -> Result:
    criteria = ctx.criteria_of(gate)
    rated = gate.metric == "feedback"
    variants: list[tuple[str, QualityCounts | None]] = [("candidate", cq)]
    if criteria.margin is not None:
        variants.append(("baseline", bq))
    what = "ratings" if rated else "labels"
    for who, q in variants:
        if q is None:
            message = f"no {what} were read for the {who} (no feedback source answered)"
            return Result(Outcome.HOLD, f"{message}: no decision", {}, error=message)
        if q.error:
            reason = f"{what} could not be read for the {who}: {q.error} (no decision)"
            return Result(Outcome.HOLD, reason, {}, error=q.error)
    present = [(who, q) for who, q in variants if q is not None]
    if rated:
        missing = [who for who, q in present if q.feedback is None]
        if missing:
            reason = f"no feedback for the {' and '.join(missing)} yet (no ratings): no decision"
            return Result(Outcome.HOLD, reason, _tally(present, rated))
    need = max(1, gate.min_labels if gate.min_labels is not None else ctx.min_requests)
    short = [(who, q) for who, q in present if _seen(q, rated) < need]
    if short:
        more = max(need - _seen(q, rated) for _, q in short)
        reason = (
            f"{_waiting_text(short, rated, always=True)}: {more:,} more needed before any "
            f"decision ({need:,} per variant)"
        )
        numbers: Numbers = {"needed_labels": float(more), **_tally(present, rated)}
        return Result(Outcome.HOLD, reason, numbers)
    alpha = (ctx.alpha_test if ctx.alpha_test is not None else ctx.alpha_per_look) / criteria.split
    pace = Pace(ctx.look, ctx.horizon) if ctx.alpha_test is not None else None
    assert cq is not None
    over = classes(cq, bq if criteria.margin is not None else None)
    c = ratios(gate, cq, over)
    b = ratios(gate, bq, over) if bq is not None and criteria.margin is not None else None
    label = gate_label(gate)
    if len(c) == 1 and (c[0].trials == 0 or (b is not None and b[0].trials == 0)):
        who = "candidate" if c[0].trials == 0 else "baseline"
        reason = f"no {_trials_noun(gate)} for the {who} yet: {label} is not defined (no decision)"
        return Result(Outcome.HOLD, reason, _tally(present, rated))
    checks: list[Result] = []
    if criteria.min is not None:
        checks.append(_bound(gate, label, c, criteria.min, alpha, pace, over))
    if criteria.margin is not None and b is not None:
        checks.append(_versus(gate, label, c, b, criteria.margin, alpha, pace, over))
    if not checks:
        value = _value(gate, c)
        result = Result(
            Outcome.PASS,
            f"{label} {_pct(value)} (no bound set: the gate only records it)",
            {"candidate": value, "estimate": value},
        )
    else:
        result = combine(checks)
    notes = [text for text in (_waiting_text(present, rated), _broken_text(present)) if text]
    if notes:
        result.reason = _insert(result.reason, "; ".join(notes))
    result.numbers |= _tally(present, rated)
    return result


def _seen(q: QualityCounts, rated: bool) -> int:
    if rated:
        return q.feedback[1] if q.feedback is not None else 0
    return q.labelled


def _tally(present: list[tuple[str, QualityCounts]], rated: bool) -> Numbers:
    out: Numbers = {}
    for who, q in present:
        out[f"{who}_{'rated' if rated else 'labelled'}"] = float(_seen(q, rated))
        out[f"{who}_waiting"] = float(q.feedback_waiting if rated else q.waiting)
    out["broken"] = float(sum(q.broken for _, q in present))
    return out


def _waiting_text(
    present: list[tuple[str, QualityCounts]], rated: bool, always: bool = False
) -> str:
    """``candidate 412 labelled, 1,830 waiting for labels; baseline ...``: the variants with
    some waiting (``always``: every variant)."""
    parts = []
    done, what = ("rated", "ratings") if rated else ("labelled", "labels")
    for who, q in present:
        waiting = q.feedback_waiting if rated else q.waiting
        if waiting or always:
            text = f"{who} {_seen(q, rated):,} {done}"
            if waiting:
                text += f", {waiting:,} waiting for {what}"
            parts.append(text)
    return "; ".join(parts)


def _broken_text(present: list[tuple[str, QualityCounts]]) -> str:
    bad = [(who, q.broken) for who, q in present if q.broken]
    if not bad:
        return ""
    total = sum(k for _, k in bad)
    detail = ", ".join(f"{who} {k:,}" for who, k in bad)
    return f"{total:,} broken records skipped ({detail})"


def _insert(reason: str, note: str) -> str:
    """``note`` before the reason's confidence and verdict (``..., at 97.5%: roll back``)."""
    head, sep, tail = reason.rpartition(", at ")
    if sep:
        return f"{head}; {note}, at {tail}"
    return f"{reason}; {note}"


def _trials_noun(gate: Gate) -> str:
    k = gate.positive
    return {
        "feedback": "ratings",
        "accuracy": "labelled predictions",
        "precision": f"predictions of class {k!r}",
        "recall": f"labels of class {k!r}",
        "f1": f"predictions or labels of class {k!r}",
    }[gate.metric]


def _samples(gate: Gate, c: Ratio, b: Ratio | None = None) -> str:
    """The counts a single-ratio test decided on: ``3,204 of 4,000 labelled predictions
    correct vs 33,120 of 36,000``."""
    k = gate.positive
    template = {
        "feedback": "{h} of {n} ratings positive",
        "accuracy": "{h} of {n} labelled predictions correct",
        "precision": f"{{h}} of {{n}} predictions of {k!r} right",
        "recall": f"{{h}} of {{n}} labels {k!r} found",
        "f1": f"{{h}} true positives of {{n}} predictions or labels {k!r}",
    }[gate.metric]
    text = template.format(h=f"{c.hits:,}", n=f"{c.trials:,}")
    return text if b is None else f"{text} vs {b.hits:,} of {b.trials:,}"


def _value(gate: Gate, rs: list[Ratio]) -> float:
    scale, _ = _scales(gate.metric)
    return sum(scale(r.share) for r in rs) / len(rs) if rs else 0.0


def _pct(v: float) -> str:
    """``0.8012`` → ``80.1%``; more digits near 100 % (``99.95%``)."""
    text = f"{v * 100:.1f}"
    if text == "100.0" and v < 1:
        text = f"{v * 100:.2f}"
    return f"{text}%"


def _pp(v: float) -> str:
    """A half-width or a difference of shares in percentage points: ``1.2``, ``0.05``."""
    points = abs(v) * 100
    return f"{points:.1f}" if points >= 0.1 or points == 0 else f"{points:.2g}"


def _band(r: Ratio, alpha: float, metric: str) -> tuple[float, float]:
    """A variant's always-valid interval for display (Wilson at Robbins' normal-mixture
    quantile, as the rate bounds print it), on the metric's scale."""
    scale, _ = _scales(metric)
    n = r.trials
    info = n * max(r.share * (1 - r.share), 1 / n)
    interval = wilson(Counts(r.hits, n), normal_cs_z(info, alpha))
    return scale(interval.lower), scale(interval.upper)


def _margin_text(margin: Margin) -> str:
    return f"{margin.amount * 100:g}{' pp' if margin.kind == 'absolute' else '%'} allowed"


def _limit(margin: Margin, base: float) -> float:
    """The least quality the margin allows beside the baseline's ``base``."""
    if margin.kind == "relative":
        return base * (1.0 - margin.amount)
    return base - margin.amount


def _difference(c: float, b: float, margin: Margin) -> str:
    """``11.9 pp worse`` (relative margins: ``11.9 pp (12.9%) worse``)."""
    d = c - b
    if abs(d) < 5e-5:
        return "no different"
    word = "worse" if d < 0 else "better"
    rel = f" ({abs(d) / b * 100:.1f}%)" if margin.kind == "relative" and b > 0 else ""
    return f"{_pp(d)} pp{rel} {word}"


# ------------------------------------------------------------------------------- one ratio


def _versus(
    gate: Gate,
    label: str,
    c: list[Ratio],
    b: list[Ratio],
    margin: Margin,
    alpha: float,
    pace: Pace | None,
    names: list[str],
) -> Result:
    if len(c) > 1:
        return _macro_versus(gate, label, c, b, margin, alpha, names)
    rc, rb = c[0], b[0]
    scale, inverse = _scales(gate.metric)
    vc, vb = scale(rc.share), scale(rb.share)
    low_c, high_c = _band(rc, alpha, gate.metric)
    low_b, high_b = _band(rb, alpha, gate.metric)
    limit = _limit(margin, vb)
    head = (
        f"{label} {_pct(vc)} (±{_pp((high_c - low_c) / 2)}) vs {_pct(vb)} "
        f"(±{_pp((high_b - low_b) / 2)}) on the baseline: {_difference(vc, vb, margin)}"
    )
    numbers = _compared(vc, vb, margin, (low_c, high_c), (low_b, high_b), limit, alpha)
    if limit <= 0:
        return Result(Outcome.PASS, f"{head}, the {_margin_text(margin)} allows any value", numbers)
    # The misses' rate ratio (candidate / baseline) the margin allows, at the baseline's value.
    base_miss = max(1.0 - rb.share, 0.5 / rb.trials)
    limit_ratio = max(1.0, (1.0 - inverse(limit)) / base_miss)
    mc, mb = Counts(rc.misses, rc.trials), Counts(rb.misses, rb.trials)
    samples = _samples(gate, rc, rb)
    if rc.misses == 0 and rb.misses == 0:
        reason = f"{head}, no miss in either variant yet ({samples}): keep watching"
        return Result(Outcome.CONTINUE, reason, numbers)
    ev = conditional_evidence(
        mc.events, mc.trials, mb.events, mb.trials, limit_ratio, "increase", alpha, pace=pace
    )
    numbers |= ev.numbers()
    outcome = ev.outcome
    allowed = _margin_text(margin)
    if outcome is Outcome.FAIL:
        edge = _ratio_edge(mc, mb, limit_ratio, "increase", outcome, ev.fail_at)
        verdict = (
            f"beyond the {allowed}"
            if _beyond(edge, math.inf, limit_ratio, "increase")
            else f"a drop, not yet shown beyond the {allowed}"
        )
    elif outcome is Outcome.PASS:
        verdict = f"within the {allowed} (limit {_pct(limit)})"
    else:
        verdict = f"not yet clear of the {allowed} (limit {_pct(limit)})"
        more = _needed_more(mc.events, mc.trials, mb.events, mb.trials, limit_ratio, ev)
        if more is not None:
            numbers["needed_labels"] = float(more)
            noun = "ratings" if gate.metric == "feedback" else "labelled predictions"
            verdict += f"; about {more:,} more candidate {noun} at these rates"
    reason = (
        f"{head}, {verdict}, {ev.text()}, {samples}, at {confidence(alpha)}: {_VERDICT[outcome]}"
    )
    return Result(outcome, reason, numbers)


def _bound(
    gate: Gate,
    label: str,
    c: list[Ratio],
    bound: float,
    alpha: float,
    pace: Pace | None,
    names: list[str],
) -> Result:
    if len(c) > 1:
        return _macro_bound(gate, label, c, bound, alpha, names)
    rc = c[0]
    scale, inverse = _scales(gate.metric)
    vc = scale(rc.share)
    low, high = _band(rc, alpha, gate.metric)
    ev: _Evidence = _one_sample(
        rc.misses, rc.misses, rc.trials, 1.0 - inverse(bound), True, alpha, pace
    )
    outcome = ev.outcome
    where = {
        Outcome.FAIL: "below",
        Outcome.PASS: "at or over",
        Outcome.CONTINUE: "not yet clear of",
    }[outcome]
    reason = (
        f"{label} {_pct(vc)} (±{_pp((high - low) / 2)}): {where} the {_pct(bound)} minimum, "
        f"{ev.text()}, {_samples(gate, rc)}, at {confidence(alpha)}: {_VERDICT[outcome]}"
    )
    numbers: Numbers = {
        "candidate": vc,
        "estimate": vc,
        "lower": low,
        "upper": high,
        "threshold": bound,
        "alpha": alpha,
        **ev.numbers(),
    }
    return Result(outcome, reason, numbers)


# ---------------------------------------------------------------------------------- macro


def _macro_bounds(gate: Gate, rs: list[Ratio], level: float) -> tuple[float, float]:
    """The macro average's bounds from each class's always-valid interval at ``level``
    (two-sided, ``level / 2`` a side)."""
    scale, _ = _scales(gate.metric)
    lows, highs = [], []
    for r in rs:
        low, high = share_interval(r.hits, r.trials, level)
        lows.append(scale(low))
        highs.append(scale(high))
    return sum(lows) / len(rs), sum(highs) / len(rs)


def _macro_versus(
    gate: Gate,
    label: str,
    c: list[Ratio],
    b: list[Ratio],
    margin: Margin,
    alpha: float,
    names: list[str],
) -> Result:
    k = len(c)
    # 2k one-sided events per decision (each class, each variant): alpha / (2k) a side.
    low_c, high_c = _macro_bounds(gate, c, alpha / k)
    low_b, high_b = _macro_bounds(gate, b, alpha / k)
    vc, vb = _value(gate, c), _value(gate, b)
    limit_high = _limit(margin, high_b)  # the least the margin allows at the baseline's upper bound
    if high_c < low_b:
        outcome = Outcome.FAIL
        verdict = (
            f"beyond the {_margin_text(margin)}"
            if high_c < _limit(margin, low_b)
            else f"a drop, not yet shown beyond the {_margin_text(margin)}"
        )
    elif low_c >= limit_high:
        outcome = Outcome.PASS
        verdict = f"within the {_margin_text(margin)} (limit {_pct(_limit(margin, vb))})"
    else:
        outcome = Outcome.CONTINUE
        verdict = f"not yet clear of the {_margin_text(margin)} (limit {_pct(_limit(margin, vb))})"
    reason = (
        f"{label} {_pct(vc)} ({confidence(alpha)} always-valid {_pct(low_c)}–{_pct(high_c)}) vs "
        f"{_pct(vb)} ({_pct(low_b)}–{_pct(high_b)}) on the baseline: "
        f"{_difference(vc, vb, margin)}, {verdict}, over {k} classes (Bonferroni; "
        f"{_per_class(gate, names, c, b)}), at {confidence(alpha)}: {_VERDICT[outcome]}"
    )
    numbers = _compared(vc, vb, margin, (low_c, high_c), (low_b, high_b), _limit(margin, vb), alpha)
    numbers["classes"] = float(k)
    return Result(outcome, reason, numbers)


def _compared(
    vc: float,
    vb: float,
    margin: Margin,
    candidate: tuple[float, float],
    baseline: tuple[float, float],
    limit: float,
    alpha: float,
) -> Numbers:
    """A comparing verdict's numbers: both values, the change, both intervals, the limit."""
    change = (vc / vb - 1 if vb > 0 else 0.0) if margin.kind == "relative" else vc - vb
    return {
        "candidate": vc,
        "baseline": vb,
        "estimate": change,
        "lower": candidate[0],
        "upper": candidate[1],
        "baseline_lower": baseline[0],
        "baseline_upper": baseline[1],
        "threshold": max(0.0, limit),
        "alpha": alpha,
    }


def _macro_bound(
    gate: Gate, label: str, c: list[Ratio], bound: float, alpha: float, names: list[str]
) -> Result:
    k = len(c)
    low, high = _macro_bounds(gate, c, 2 * alpha / k)  # k one-sided events a decision
    value = _value(gate, c)
    if high < bound:
        outcome, where = Outcome.FAIL, "below"
    elif low >= bound:
        outcome, where = Outcome.PASS, "at or over"
    else:
        outcome, where = Outcome.CONTINUE, "not yet clear of"
    reason = (
        f"{label} {_pct(value)} ({confidence(alpha)} always-valid {_pct(low)}–{_pct(high)}): "
        f"{where} the {_pct(bound)} minimum, over {k} classes (Bonferroni; "
        f"{_per_class(gate, names, c)}), at {confidence(alpha)}: {_VERDICT[outcome]}"
    )
    numbers: Numbers = {
        "candidate": value,
        "estimate": value,
        "lower": low,
        "upper": high,
        "threshold": bound,
        "alpha": alpha,
        "classes": float(k),
    }
    return Result(outcome, reason, numbers)


def _per_class(gate: Gate, names: list[str], c: list[Ratio], b: list[Ratio] | None = None) -> str:
    """Each class's value, the candidate's (``vs`` the baseline's): ``'a' 83.3% vs 84.1%, 'b'
    88.2% vs 88.0%``; beyond 5 classes, the candidate's 5 lowest."""
    scale, _ = _scales(gate.metric)
    rows = sorted(range(len(c)), key=lambda i: scale(c[i].share))
    shown = rows if len(rows) <= 5 else rows[:5]
    parts = []
    for i in sorted(shown):
        text = f"{names[i]!r} {_pct(scale(c[i].share))} of {c[i].trials:,}"
        if b is not None:
            text += f" vs {_pct(scale(b[i].share))} of {b[i].trials:,}"
        parts.append(text)
    lead = "" if len(rows) <= 5 else "lowest: "
    return lead + ", ".join(parts)


# -------------------------------------------------------------------------------- preview


def expectation(gate: Gate, alpha: float, share: float) -> Expectation:
    """What ``plan preview`` says of a quality gate: its method and, with one ratio, the
    candidate's labelled predictions (ratings) to catch a reference drop and to pass an
    unchanged candidate (Wald's approximation, as the operational gates'). The drop: from 90 %
    to 80 % (the misses doubled; a ``min``: twice the misses it allows); feedback from 60 % to
    50 %. The labels' own delay comes on top."""
    criteria = Criteria.of(gate)
    alpha /= criteria.split
    macro = gate.metric in ("precision", "recall", "f1") and gate.positive is None
    need = "ratings" if gate.metric == "feedback" else "labelled predictions"
    note = f"counts {need} (once they arrive)"
    if macro:
        return Expectation(MACRO_METHOD, None, None, note=note)
    misses = MISSES[gate.metric]
    scale, inverse = _scales(gate.metric)
    base, worse = (0.6, 1.25) if gate.metric == "feedback" else (0.9, 2.0)
    miss = 1.0 - inverse(base)
    effect = f"{gate_label(gate)} {_pct(base)} → {_pct(scale(1 - worse * miss))}"
    margin = criteria.margin
    if margin is not None:
        share = min(max(share, 1e-3), 0.999)
        fail = _conditional(miss, worse, share, 1.0, alpha, RATE_FAIL_EXTRA_NATS)
        limit = _limit(margin, base)
        ratio = (1.0 - inverse(limit)) / miss if limit > 0 else math.inf
        healthy = (
            _conditional(miss, 1.0, share, ratio, alpha, EXTRA_NATS)
            if 1.0 < ratio < math.inf
            else None
        )
        return Expectation(METHOD.format(misses=misses), fail, healthy, effect, note=note)
    if criteria.min is None:
        return Expectation("records only", None, None)
    theta0 = min(max(1.0 - inverse(criteria.min), 1e-6), 0.999)
    fail = _events_needed(kl_bernoulli(min(0.999, 2 * theta0), theta0), alpha, RATE_FAIL_EXTRA_NATS)
    passing = _events_needed(kl_bernoulli(theta0 / 2, theta0), alpha)
    effect = f"twice the {misses} {_pct(criteria.min)} allows"
    return Expectation(BOUND_METHOD.format(misses=misses), fail, passing, effect, note=note)
