"""The plan's gates as one set, judged together at each look.

Error budget: the plan's ``alpha`` is the false-rollback budget for the whole rollout.

- The default rule, :class:`~mlrollout.analysis.sequential.MixtureSPRT`, is valid under continuous
  monitoring within a stage (an analyze step's cumulative windows), however many looks. The budget
  is split over stages and deciding (non-dry-run) gates only::

      alpha_test = alpha / (max(1, stages) * max(1, deciding gates))

  and a gate with several criteria (``max`` and ``vs_baseline``...) splits its share evenly.
- v1, :class:`~mlrollout.analysis.fixed_horizon.FixedHorizonBonferroni`, tests each look at a fixed
  horizon and so must also split over the planned looks::

      alpha_per_look = alpha / (max(1, deciding gates) * max(1, planned_looks))

By the union bound, the chance that any gate wrongly fails anywhere in the rollout is at most
``alpha``. When the configured candidate share is given to :meth:`GateSet.look`, a sample-ratio
mismatch check runs too (:mod:`mlrollout.analysis.srm`): a mismatch holds every comparing gate
(its own small budget, :data:`~mlrollout.analysis.srm.SRM_ALPHA` per stage: it never rolls back).

Each gate's bounds and margin are parsed once, when the gate set is built
(:class:`~mlrollout.analysis.measures.Criteria`), not at every look.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from mlrollout.analysis.calibration import Pace
from mlrollout.analysis.fixed_horizon import FixedHorizonBonferroni
from mlrollout.analysis.measures import Criteria, custom_counts
from mlrollout.analysis.prediction import PREDICTION_METRICS
from mlrollout.analysis.prediction import evaluate as evaluate_prediction
from mlrollout.analysis.quality import QUALITY_METRICS
from mlrollout.analysis.quality import evaluate as evaluate_quality
from mlrollout.analysis.rule import DecisionRule, LookContext
from mlrollout.analysis.sequential import MixtureSPRT
from mlrollout.analysis.srm import held_by_mismatch, srm_verdict
from mlrollout.analysis.verdict import GateVerdict, Outcome, Verdict
from mlrollout.analysis.winner import evaluate as evaluate_winner
from mlrollout.contracts import Window
from mlrollout.plan.model import Analysis, Gate, Plan
from mlrollout.plan.timeline import timeline

#: The decision rules by name (``GateSet.from_plan(..., rule=RULES["fixed-horizon"]())``).
RULES: dict[str, type[DecisionRule]] = {
    "mixture-sprt": MixtureSPRT,
    "fixed-horizon": FixedHorizonBonferroni,
}


@dataclass
class GateSet:
    """The gates of a plan, a decision rule, and the error budget.

    >>> from mlrollout.contracts import Window
    >>> from mlrollout.plan.model import Analysis
    >>> analysis = Analysis.model_validate({
    ...     "min_requests": 200, "alpha": 0.05,
    ...     "gates": [
    ...         {"name": "errors", "metric": "error_rate", "vs_baseline": {"max_increase": "25%"}},
    ...         {"name": "p99", "metric": "latency_p99", "max": "300ms", "dry_run": True},
    ...     ],
    ... })
    >>> gates = GateSet.from_plan(analysis, stages=2)
    >>> gates.alpha_per_test  # one deciding gate, two stages
    0.025
    >>> gates.look(Window(requests=57, errors=1), Window(requests=5000, errors=50)).reasons[0]
    'errors: candidate has 57 of 200 requests (143 more needed before any decision)'
    >>> verdict = gates.look(Window(requests=2000, errors=100), Window(requests=5000, errors=50))
    >>> verdict.outcome
    <Outcome.FAIL: 'fail'>
    >>> import textwrap
    >>> print(textwrap.fill(verdict.reasons[0], 80))
    errors: candidate error rate 5% vs baseline 1% (+400%; 97.5% always-valid lower
    bound +204%): worse than the baseline and beyond the +25% margin, evidence 44.0
    ≥ 3.7 needed, errors 100/2,000 vs 50/5,000, at 97.5%: roll back
    >>> verdict.reasons[1]  # dry run: recorded, never decides
    'p99 (dry run): no p99 latency data for the candidate'
    """

    gates: tuple[Gate, ...]
    alpha: float = 0.05
    planned_looks: int = 1
    min_requests: int = 100
    rule: DecisionRule = field(default_factory=MixtureSPRT)
    stages: int = 1
    #: ab_test: ``(gate name, min_effect)`` of the gate the winner test judges
    #: (:mod:`mlrollout.analysis.winner`); one deciding gate of the budget like any other.
    winner: tuple[str, float] | None = None
    _parsed: tuple[tuple[Gate, ...], tuple[Criteria | None, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self._parsed = (self.gates, _parse(self.gates))

    @classmethod
    def from_plan(
        cls,
        analysis: Analysis,
        planned_looks: int = 1,
        rule: DecisionRule | None = None,
        *,
        stages: int = 1,
        winner: tuple[str, float] | None = None,
    ) -> GateSet:
        """The plan's ``analysis`` section as a gate set. ``stages`` is how many analysis stages
        (each with fresh cumulative windows) share ``alpha``; ``planned_looks`` only matters to
        the fixed-horizon rule; ``winner`` (an A/B test's ``(metric gate name, min_effect)``)
        sends that gate to the winner test."""
        return cls(
            gates=tuple(analysis.gates),
            alpha=analysis.alpha,
            planned_looks=planned_looks,
            min_requests=analysis.min_requests,
            rule=rule if rule is not None else MixtureSPRT(),
            stages=stages,
            winner=winner,
        )

    @property
    def criteria(self) -> tuple[Criteria | None, ...]:
        """Each gate's parsed bounds and margin (``None``: it does not parse; the rule then fails
        on it at each look, which holds that gate with the error). Parsed again only when
        :attr:`gates` is replaced (or changed in place)."""
        gates, parsed = self._parsed
        if gates is not self.gates or len(parsed) != len(self.gates):
            self._parsed = gates, parsed = self.gates, _parse(self.gates)
        return parsed

    @property
    def deciding(self) -> int:
        return sum(1 for g in self.gates if not g.dry_run)

    @property
    def alpha_per_look(self) -> float:
        """v1's budget of one test at one look."""
        return self.alpha / (max(1, self.deciding) * max(1, self.planned_looks))

    @property
    def alpha_per_test(self) -> float:
        """The budget of one gate's always-valid test over one stage."""
        return self.alpha / (max(1, self.deciding) * max(1, self.stages))

    @property
    def sequential(self) -> bool:
        return not isinstance(self.rule, FixedHorizonBonferroni)

    @property
    def context(self) -> LookContext:
        return LookContext(
            alpha_per_look=self.alpha_per_look,
            min_requests=self.min_requests,
            alpha_test=self.alpha_per_test if self.sequential else None,
        )

    def look(
        self,
        candidate: Window | None,
        baseline: Window | None,
        *,
        candidate_share: float | None = None,
        look: int = 0,
        horizon: int | None = None,
        intervals: Sequence[tuple[Window, Window]] = (),
        baseline_history: Sequence[Window] = (),
    ) -> Verdict:
        """Judge every gate on the windows of one look (cumulative over the stage). ``None`` is
        no data (HOLD, never PASS). ``candidate_share`` (a fraction: 0.1 for a 10 % canary)
        turns on the sample-ratio-mismatch check. ``look`` (this look's number in the stage,
        from 1) and ``horizon`` (the most looks the stage can have; ``None``: no planned end)
        let the rollback boundaries be calibrated for discrete looks and the stage's end
        (:mod:`mlrollout.analysis.calibration`); without ``look`` they are Ville's, valid for
        any number of looks. ``intervals`` are the stage's per-look increments (candidate,
        baseline), oldest first, summing to ``candidate`` and ``baseline``: the rate tests
        discount their evidence by the bursts they show (:mod:`mlrollout.analysis.dispersion`;
        none: the binomial model as it is). ``baseline_history``: the baseline's per-interval
        windows before this stage (the previous stages' increments), oldest first; with
        ``intervals``, a baseline whose counts were clean before lifts the early guard of the
        stage's first looks. Never raises: a gate whose evaluation breaks is held with the error
        as its reason."""
        ctx = replace(
            self.context,
            look=max(0, look),
            horizon=horizon,
            intervals=tuple(intervals),
            baseline_history=tuple(baseline_history),
        )
        cand, base = candidate or Window(), baseline or Window()
        verdicts = []
        for gate, criteria in zip(self.gates, self.criteria, strict=True):
            try:
                gate_ctx = replace(ctx, criteria=criteria)
                if gate.metric in PREDICTION_METRICS:  # they judge the capture, in any rule
                    verdicts.append(evaluate_prediction(gate, cand, base, gate_ctx))
                elif gate.metric in QUALITY_METRICS:  # they judge the labels, in any rule
                    verdicts.append(evaluate_quality(gate, cand, base, gate_ctx))
                elif self.winner is not None and gate.name == self.winner[0]:  # an A/B test
                    verdicts.append(
                        evaluate_winner(gate, cand, base, gate_ctx, min_effect=self.winner[1])
                    )
                else:
                    verdict = self.rule.evaluate(gate, cand, base, gate_ctx)
                    if gate.metric == "custom" and verdict.outcome is not Outcome.HOLD:
                        compared = base if gate.vs_baseline is not None else None
                        verdict.reason = _with_counts(
                            verdict.reason, custom_counts(gate, cand, compared)
                        )
                    verdicts.append(verdict)
            except Exception as exc:  # a bad gate or a rule bug must not crash the rollout
                message = f"could not evaluate the gate: {type(exc).__name__}: {exc}"
                verdicts.append(
                    GateVerdict(
                        gate.name, gate.metric, Outcome.HOLD, message, {}, gate.dry_run, message
                    )
                )
        winner = self.winner[0] if self.winner is not None else None
        comparing = [g.vs_baseline is not None or g.name == winner for g in self.gates]
        if (
            candidate_share is not None
            and 0.0 < candidate_share < 1.0
            and any(comparing)
            and cand.requests
            and base.requests
            and not cand.error
            and not base.error
        ):
            pace = Pace(ctx.look, horizon) if self.sequential else None
            srm = srm_verdict(cand.requests, base.requests, candidate_share, pace=pace)
            if srm.outcome is Outcome.HOLD:
                verdicts = [
                    held_by_mismatch(v) if compares and v.outcome is not Outcome.HOLD else v
                    for v, compares in zip(verdicts, comparing, strict=True)
                ]
            verdicts.append(srm)
        alpha = ctx.alpha_test if ctx.alpha_test is not None else ctx.alpha_per_look
        return Verdict(verdicts, alpha_per_look=alpha)


def judged_stages(plan: Plan) -> int:
    """How many stages of ``plan`` the gates judge, each on fresh cumulative windows (and so
    each spending a share of ``alpha``): every analyze step, and every approval wait while the
    candidate takes traffic (the gates keep watching then)."""
    watching = bool(plan.analysis.gates)
    count = sum(
        1
        for row in timeline(plan)
        if row.step.kind in ("analyze", "native")
        or (row.step.kind == "approve" and watching and row.candidate_weight + row.mirror > 0)
    )
    return max(1, count)


def _with_counts(reason: str, counts: str) -> str:
    """A custom gate's reason with what its value is made of, before the confidence and the
    verdict (``..., at 95%: roll back``), else before the final verdict, else at the end."""
    if not counts:
        return reason
    head, sep, tail = reason.rpartition(", at ")
    if sep:
        return f"{head}; {counts}, at {tail}"
    head, sep, tail = reason.rpartition(": ")
    if sep and tail in ("roll back", "pass", "keep watching"):
        return f"{head}; {counts}: {tail}"
    return f"{reason}; {counts}"


def _parse(gates: tuple[Gate, ...]) -> tuple[Criteria | None, ...]:
    parsed: list[Criteria | None] = []
    for gate in gates:
        try:
            parsed.append(Criteria.of(gate))
        except Exception:  # the rule fails on it at each look: that gate is held with the error
            parsed.append(None)
    return tuple(parsed)
