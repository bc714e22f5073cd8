"""The plan's gates as one set, judged together at each look.

Error budget (Bonferroni): the plan's ``alpha`` is the false-rollback budget for the whole rollout.
Each deciding (non-dry-run) gate at each planned look gets an equal share::

    alpha_per_look = alpha / (max(1, deciding gates) * max(1, planned_looks))

By the union bound, the chance that any gate wrongly fails at any look is at most ``alpha``,
whatever the correlation between gates and between looks (cumulative windows are highly
correlated). It is therefore valid under continuous monitoring ("peeking" at every look), but
conservative: it needs more data to decide than a sequential test would. Looks beyond
``planned_looks`` (long holds) spend beyond the budget; count looks generously when planning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlrollout.analysis.gates import DecisionRule, FixedHorizonBonferroni, LookContext
from mlrollout.analysis.verdict import GateVerdict, Outcome, Verdict
from mlrollout.contracts import Window
from mlrollout.plan.model import Analysis, Gate


@dataclass
class GateSet:
    """The gates of a plan, a decision rule, and the per-look error budget.

    >>> from mlrollout.contracts import Window
    >>> from mlrollout.plan.model import Analysis
    >>> analysis = Analysis.model_validate({
    ...     "min_requests": 200, "alpha": 0.05,
    ...     "gates": [
    ...         {"name": "errors", "metric": "error_rate", "vs_baseline": {"max_increase": "25%"}},
    ...         {"name": "p99", "metric": "latency_p99", "max": "300ms", "dry_run": True},
    ...     ],
    ... })
    >>> gates = GateSet.from_plan(analysis, planned_looks=20)
    >>> round(gates.alpha_per_look, 6)  # one deciding gate, 20 looks
    0.0025
    >>> gates.look(Window(requests=57, errors=1), Window(requests=5000, errors=50)).reasons[0]
    'errors: candidate has 57 of 200 requests (143 more needed before any decision)'
    >>> verdict = gates.look(Window(requests=2000, errors=100), Window(requests=5000, errors=50))
    >>> verdict.outcome
    <Outcome.FAIL: 'fail'>
    >>> import textwrap
    >>> print(textwrap.fill(verdict.reasons[0], 80))
    errors: candidate error rate 5% vs baseline 1% (+400%): beyond the +25% margin
    (limit 1.25%) at 99.75% confidence
    >>> verdict.reasons[1]  # dry run: recorded, never decides
    'p99 (dry run): no p99 latency data for the candidate'
    """

    gates: tuple[Gate, ...]
    alpha: float = 0.05
    planned_looks: int = 1
    min_requests: int = 100
    rule: DecisionRule = field(default_factory=FixedHorizonBonferroni)

    @classmethod
    def from_plan(
        cls, analysis: Analysis, planned_looks: int, rule: DecisionRule | None = None
    ) -> GateSet:
        return cls(
            gates=tuple(analysis.gates),
            alpha=analysis.alpha,
            planned_looks=planned_looks,
            min_requests=analysis.min_requests,
            rule=rule if rule is not None else FixedHorizonBonferroni(),
        )

    @property
    def alpha_per_look(self) -> float:
        deciding = sum(1 for g in self.gates if not g.dry_run)
        return self.alpha / (max(1, deciding) * max(1, self.planned_looks))

    @property
    def context(self) -> LookContext:
        return LookContext(alpha_per_look=self.alpha_per_look, min_requests=self.min_requests)

    def look(self, candidate: Window | None, baseline: Window | None) -> Verdict:
        """Judge every gate on the windows of one look. ``None`` is no data (HOLD, never PASS).
        Never raises: a gate whose evaluation breaks is held with the error as its reason."""
        ctx = self.context
        cand, base = candidate or Window(), baseline or Window()
        verdicts = []
        for gate in self.gates:
            try:
                verdicts.append(self.rule.evaluate(gate, cand, base, ctx))
            except Exception as exc:  # a bad gate or a rule bug must not crash the rollout
                message = f"could not evaluate the gate: {type(exc).__name__}: {exc}"
                verdicts.append(
                    GateVerdict(
                        gate.name, gate.metric, Outcome.HOLD, message, {}, gate.dry_run, message
                    )
                )
        return Verdict(verdicts, alpha_per_look=ctx.alpha_per_look)
