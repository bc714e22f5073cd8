"""The public Python API for running an analysis on your own data: :class:`Monitor`.

Build it from a plan's ``analysis`` section, feed it per-interval per-variant observations
(requests, errors, a latency histogram or samples, custom counts), read a :class:`Verdict` after
each one. It keeps the stage's cumulative totals (what the engine queries at each look) and judges
them with the :class:`~mlrollout.analysis.GateSet`'s rule. See ``docs/analysis.md``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from mlrollout.analysis.dispersion import HISTORY
from mlrollout.analysis.gateset import GateSet
from mlrollout.analysis.rule import DecisionRule
from mlrollout.analysis.verdict import Verdict
from mlrollout.contracts import CustomValue, LatencyHistogram, Window
from mlrollout.feedback import QualityCounts
from mlrollout.plan.model import Analysis

#: Default histogram bounds for :func:`histogram`: 80 log-spaced bounds from 1 ms to 60 s (the
#: local sandbox's).
DEFAULT_BOUNDS: tuple[float, ...] = tuple(
    float(f"{0.001 * 60_000 ** (i / 79):.4g}") for i in range(80)
)


def histogram(
    samples: Iterable[float], bounds: tuple[float, ...] = DEFAULT_BOUNDS
) -> LatencyHistogram:
    """Latency samples (seconds) counted into a histogram with ``bounds``."""
    counts = [0] * (len(bounds) + 1)
    for value in samples:
        counts[bisect.bisect_left(bounds, value)] += 1
    return LatencyHistogram(bounds, counts)


def merge(total: Window, part: Window) -> Window:
    """``total`` plus one more interval ``part`` (counts, histograms and custom sums add; a
    provider percentile cannot be added up, so the newest interval's percentiles are kept).
    Quality counts: the labels and ratings that arrived in ``part`` add; how many still wait is
    the newest interval's (a state, not a flow), as is a source error."""

    def add(a: int | None, b: int | None) -> int | None:
        return b if a is None else a if b is None else a + b

    latency = total.latency
    if part.latency is not None:
        latency = part.latency if latency is None else latency.merge(part.latency)
    custom = dict(total.custom)
    for name, value in part.custom.items():
        old = custom.get(name)
        custom[name] = (
            value if old is None else CustomValue(old.total + value.total, old.count + value.count)
        )
    return Window(
        requests=add(total.requests, part.requests),
        errors=add(total.errors, part.errors),
        latency=latency,
        latency_percentiles=dict(part.latency_percentiles or total.latency_percentiles),
        custom=custom,
        quality=_merge_quality(total.quality, part.quality),
    )


def _merge_quality(total: QualityCounts | None, part: QualityCounts | None) -> QualityCounts | None:
    if part is None or total is None:
        return part if total is None else total
    if part.error:  # nothing from this interval counts; the look holds on the error
        return QualityCounts(
            dict(total.confusion), total.waiting, total.feedback, total.feedback_waiting,
            total.broken, total.unmatched, part.error,
        )  # fmt: skip
    confusion = dict(total.confusion)
    for key, n in part.confusion.items():
        confusion[key] = confusion.get(key, 0) + n
    feedback = total.feedback
    if part.feedback is not None:
        old = feedback or (0, 0)
        feedback = (old[0] + part.feedback[0], old[1] + part.feedback[1])
    return QualityCounts(
        confusion, part.waiting, feedback, part.feedback_waiting,
        total.broken + part.broken, total.unmatched + part.unmatched,
    )  # fmt: skip


@dataclass
class Monitor:
    """An analysis you feed interval by interval.

    >>> from mlrollout.plan.model import Analysis
    >>> analysis = Analysis.model_validate({"alpha": 0.05, "min_requests": 100, "gates": [
    ...     {"name": "errors", "metric": "error_rate", "vs_baseline": {"max_increase": "25%"}}]})
    >>> monitor = Monitor.from_plan(analysis, candidate_share=0.1)
    >>> verdict = monitor.observe(Window(requests=100, errors=1), Window(requests=900, errors=9))
    >>> verdict.outcome.value
    'continue'
    >>> bad, good = Window(requests=100, errors=6), Window(requests=900, errors=9)
    >>> for _ in range(5):
    ...     verdict = monitor.observe(bad, good)
    >>> verdict.outcome.value, monitor.candidate.requests, monitor.candidate.errors
    ('fail', 600, 31)
    """

    gates: GateSet
    candidate_share: float | None = None
    candidate: Window = field(default_factory=lambda: Window())
    baseline: Window = field(default_factory=lambda: Window())
    looks: int = 0
    horizon: int | None = None
    intervals: list[tuple[Window, Window]] = field(default_factory=list)
    #: The baseline's intervals in earlier stages (the latest :data:`HISTORY` of them).
    baseline_history: list[Window] = field(default_factory=list)

    @classmethod
    def from_plan(
        cls,
        analysis: Analysis,
        *,
        stages: int = 1,
        candidate_share: float | None = None,
        rule: DecisionRule | None = None,
        horizon: int | None = None,
        winner: tuple[str, float] | None = None,
    ) -> Monitor:
        """``stages``: how many stages share the plan's ``alpha`` (the engine uses the number of
        analyze steps); ``candidate_share``: the configured split (a fraction), for the
        sample-ratio-mismatch check; ``rule``: another :class:`DecisionRule` (v1's
        :class:`~mlrollout.analysis.FixedHorizonBonferroni`, say); ``horizon``: the most looks a
        stage can have (``None``: no planned end), which lets the rollback boundaries come down
        for a stage that ends (:mod:`~mlrollout.analysis.calibration`); ``winner``: an A/B
        test's ``(metric gate name, min_effect)`` — that gate then runs the two-sided winner
        test (:mod:`~mlrollout.analysis.winner`), the others stay guardrails."""
        gates = GateSet.from_plan(analysis, rule=rule, stages=stages, winner=winner)
        return cls(gates, candidate_share, horizon=horizon)

    def observe(self, candidate: Window | None, baseline: Window | None) -> Verdict:
        """Add one interval per variant and judge the stage's totals. ``None`` (the source
        returned nothing) or a window with ``error`` set adds nothing, for either variant; that
        look judges the totals so far with the missing variant as no data (its failed query as
        an error measurement), so every gate that needs it HOLDs. The stage's intervals are
        kept (:attr:`intervals`) and passed on: the rate tests discount bursty counts."""
        self.looks += 1
        usable = [w is not None and not w.error for w in (candidate, baseline)]
        if all(usable):
            assert candidate is not None and baseline is not None
            self.candidate = merge(self.candidate, candidate)
            self.baseline = merge(self.baseline, baseline)
            self.intervals.append((candidate, baseline))
        return self.gates.look(
            self.candidate if usable[0] else candidate,
            self.baseline if usable[1] else baseline,
            candidate_share=self.candidate_share,
            look=self.looks,
            horizon=self.horizon,
            intervals=self.intervals,
            baseline_history=self.baseline_history,
        )

    def new_stage(self, candidate_share: float | None = None) -> None:
        """Start a new stage (a new traffic split): the totals start again from zero; the
        baseline's intervals so far are kept as its history (the rate tests read its bursts
        from them)."""
        kept = self.baseline_history + [base for _, base in self.intervals]
        self.baseline_history = kept[-HISTORY:]
        self.candidate, self.baseline, self.looks = Window(), Window(), 0
        self.intervals = []
        self.candidate_share = candidate_share
