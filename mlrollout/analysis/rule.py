"""The seam between the gate set and a decision rule, and what every rule shares.

:class:`DecisionRule` is one method: one gate at one look, candidate and baseline windows in, a
:class:`~mlrollout.analysis.verdict.GateVerdict` out; :class:`LookContext` carries the error
budgets and where the look stands in its stage. :class:`RuleBase` runs the checks that come
before any statistics, the same for every rule:

- **No data never passes.** A failed query (``Window.error``) is an error measurement: HOLD with
  the query's message. Fewer requests than ``min_requests`` (or none) in the candidate, or in the
  baseline when the gate compares with it: HOLD, saying how many more requests are needed.
- **requests**: the candidate's count, exactly (no statistics): above ``max`` FAILs at once, below
  ``min`` (or ``min_requests``) HOLDs while traffic accrues, otherwise PASS. ``vs_baseline`` on
  requests is not a meaningful comparison (the traffic split decides it): HOLD with an error.

The rules themselves: :class:`~mlrollout.analysis.sequential.MixtureSPRT` (the default) and
:class:`~mlrollout.analysis.fixed_horizon.FixedHorizonBonferroni` (v1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Protocol

from mlrollout.analysis.measures import Criteria, Result, confidence
from mlrollout.analysis.verdict import GateVerdict, Numbers, Outcome
from mlrollout.contracts import Window
from mlrollout.plan.model import Gate

_NORMAL = NormalDist()


@dataclass(frozen=True)
class LookContext:
    """What a rule needs besides the windows: the error budgets and the data minimum.

    ``alpha_per_look`` is v1's budget for one fixed-horizon test at one look; ``alpha_test`` is
    the budget of one always-valid test over a whole stage (``None``: use ``alpha_per_look``).
    ``look`` and ``horizon`` place the look in its stage; the default rule calibrates its
    rollback boundaries with them (unknown: Ville's boundary, valid for any number of looks).
    ``criteria`` is the gate's bounds and margin as the gate set parsed them (``None``, or
    another gate's: the rule parses the gate itself). ``intervals`` are this stage's per-look
    increments ``(candidate, baseline)``, oldest first, summing to the look's cumulative windows:
    the rate tests estimate from them how bursty the counts are
    (:mod:`~mlrollout.analysis.dispersion`); empty means unknown (the binomial model as it is).
    ``baseline_history`` are the baseline's own per-interval windows before the stage (the
    previous stages', oldest first): they tell sooner whether its counts are bursty.
    """

    alpha_per_look: float
    min_requests: int
    alpha_test: float | None = None
    look: int = 0  # this look's number in its stage (1-based; 0: unknown)
    horizon: int | None = None  # the most looks the stage can have (None: no planned end)
    criteria: Criteria | None = None
    intervals: tuple[tuple[Window, Window], ...] = ()
    baseline_history: tuple[Window, ...] = ()

    def z(self, split: int = 1) -> float:
        """The one-sided critical value at ``alpha_per_look / split``."""
        return _NORMAL.inv_cdf(1.0 - self.alpha_per_look / split)

    @property
    def confidence(self) -> str:
        """``1 - alpha_per_look`` in percent, rounded down (never overstated): ``'99.87%'``."""
        return confidence(self.alpha_per_look)

    def criteria_of(self, gate: Gate) -> Criteria:
        """``gate``'s parsed criteria: the gate set's, else parsed now."""
        parsed = self.criteria
        return parsed if parsed is not None and parsed.gate is gate else Criteria.of(gate)


class DecisionRule(Protocol):
    """The seam: how one gate decides at one look. Must not raise on bad data."""

    def evaluate(
        self, gate: Gate, candidate: Window, baseline: Window, ctx: LookContext
    ) -> GateVerdict: ...


class RuleBase:
    """What every rule shares: the checks before any statistics (a failed query, a ``requests``
    gate, data short of ``min_requests``) and the assembly of the :class:`GateVerdict`.
    Subclasses decide in :meth:`judge`, which only sees windows with enough data."""

    def evaluate(
        self, gate: Gate, candidate: Window, baseline: Window, ctx: LookContext
    ) -> GateVerdict:
        result = self._evaluate(gate, candidate, baseline, ctx)
        if candidate.requests is not None:
            result.numbers.setdefault("candidate_requests", candidate.requests)
        if gate.vs_baseline is not None and baseline.requests is not None:
            result.numbers.setdefault("baseline_requests", baseline.requests)
        return GateVerdict(
            gate.name,
            gate.metric,
            result.outcome,
            result.reason,
            result.numbers,
            gate.dry_run,
            result.error,
        )

    def _evaluate(
        self, gate: Gate, candidate: Window, baseline: Window, ctx: LookContext
    ) -> Result:
        variants = [("candidate", candidate)]
        if gate.vs_baseline is not None:
            variants.append(("baseline", baseline))
        need = max(1, ctx.min_requests)
        problem = _query_error(variants)
        if problem is None and gate.metric == "requests":
            if gate.vs_baseline is not None:
                message = "requests cannot be compared with the baseline (the split decides them)"
                return Result(Outcome.HOLD, message, {}, error=message)
            return _requests_gate(gate, candidate, need, ctx)
        problem = problem or _short(variants, need)
        if problem is not None:
            return problem
        return self.judge(ctx.criteria_of(gate), candidate, baseline, ctx)

    def judge(
        self, criteria: Criteria, candidate: Window, baseline: Window, ctx: LookContext
    ) -> Result:
        """Decide ``criteria.gate`` on windows that have enough data."""
        raise NotImplementedError


def combine(checks: list[Result]) -> Result:
    """A gate's criteria as one result: the worst outcome, every reason, the numbers of all
    (the worst criterion's last); no criterion at all only records the metric (PASS)."""
    if not checks:
        return Result(Outcome.PASS, "no bound set: the gate only records the metric")
    worst = max(checks, key=lambda r: r.outcome)
    numbers: Numbers = {}
    for r in [*checks, worst]:
        numbers.update(r.numbers)
    return Result(worst.outcome, "; ".join(r.reason for r in checks), numbers)


def _query_error(variants: list[tuple[str, Window]]) -> Result | None:
    for who, window in variants:
        if window.error:
            reason = f"metrics query failed for the {who}: {window.error} (no decision)"
            return Result(Outcome.HOLD, reason, {}, error=window.error)
    return None


def _short(variants: list[tuple[str, Window]], need: int) -> Result | None:
    parts, needed = [], 0
    for who, window in variants:
        if window.requests is None:
            parts.append(f"no data for the {who}")
            needed = max(needed, need)
        elif window.requests < need:
            parts.append(f"{who} has {window.requests} of {need} requests")
            needed = max(needed, need - window.requests)
    if not parts:
        return None
    reason = f"{'; '.join(parts)} ({needed} more needed before any decision)"
    return Result(Outcome.HOLD, reason, {"needed_requests": needed})


def _requests_gate(gate: Gate, window: Window, need: int, ctx: LookContext) -> Result:
    count = window.requests
    if count is None:
        return Result(Outcome.HOLD, "no data for the candidate", {"needed_requests": need})
    numbers: Numbers = {"candidate": count, "estimate": count, "lower": count, "upper": count}
    criteria = ctx.criteria_of(gate)
    high, low = criteria.max, criteria.min
    if high is not None and count > high:
        numbers["threshold"] = high
        reason = f"candidate served {count} requests: above the {high:.0f} maximum"
        return Result(Outcome.FAIL, reason, numbers)
    floor = max(need, math.ceil(low) if low is not None else 0)
    if count < floor:
        numbers |= {"threshold": low, "needed_requests": floor - count}
        reason = f"candidate has {count} of {floor} requests ({floor - count} more needed)"
        return Result(Outcome.HOLD, reason, numbers)
    numbers["threshold"] = high if high is not None else low
    return Result(Outcome.PASS, f"candidate served {count} requests: within bounds", numbers)
