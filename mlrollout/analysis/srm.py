"""The sample-ratio-mismatch check: is the observed traffic split the configured one?

A two-sided mixture SPRT on ``candidate ~ Binomial(total, share)`` with its own small budget,
:data:`SRM_ALPHA` per stage, its boundary calibrated like the rollback tests' (see
:mod:`mlrollout.analysis.calibration`). A mismatch means the arms' numbers cannot be trusted
(routing, logging, a crashing variant): it holds every gate that compares with the baseline
(:func:`held_by_mismatch`) and never rolls back. :class:`~mlrollout.analysis.gateset.GateSet`
runs it when it is given the configured candidate share.
"""

from __future__ import annotations

import math

from mlrollout.analysis.calibration import Pace
from mlrollout.analysis.measures import Counts, confidence, nats, wilson
from mlrollout.analysis.mixture import SRM_GRID, bernoulli_log_lr_two_sided, normal_cs_z
from mlrollout.analysis.verdict import GateVerdict, Numbers, Outcome
from mlrollout.units import format_rate

#: The false-alarm budget of the sample-ratio-mismatch check, per stage. A mismatch only holds.
SRM_ALPHA = 0.005


def srm_verdict(
    candidate_requests: int,
    baseline_requests: int,
    share: float,
    alpha: float = SRM_ALPHA,
    pace: Pace | None = None,
) -> GateVerdict:
    """Sample-ratio mismatch: is the observed split consistent with the configured candidate
    ``share`` (a fraction)? A two-sided mixture SPRT on ``candidate ~ Binomial(total, share)``;
    a mismatch is HOLD (the arms' numbers cannot be trusted), otherwise PASS."""
    total = candidate_requests + baseline_requests
    observed = candidate_requests / total if total else math.nan
    evidence = bernoulli_log_lr_two_sided(candidate_requests, total, share, SRM_GRID)
    boundary, lowered = (pace or Pace()).boundary("srm", alpha, total * share * (1 - share))
    numbers: Numbers = {
        "candidate": observed,
        "estimate": observed,
        "threshold": share,
        "statistic": evidence,
        "boundary": boundary,
        "boundary_lowered": lowered,
        "alpha": alpha,
        "candidate_requests": candidate_requests,
        "baseline_requests": baseline_requests,
    }
    seen = f"{format_rate(observed)}" if total else "nothing"
    if total and evidence >= boundary:
        z = normal_cs_z(total * share * (1 - share), alpha)
        interval = wilson(Counts(candidate_requests, total), z)
        low, high = interval.lower, interval.upper
        numbers |= {"lower": low, "upper": high}
        reason = (
            f"sample-ratio mismatch: the candidate got {seen} of {total} requests "
            f"({confidence(alpha)} interval {format_rate(low)}–{format_rate(high)}), configured "
            f"{format_rate(share)} (evidence {nats(evidence)} ≥ {boundary:.1f}): the arms' "
            f"numbers cannot be trusted (routing, logging or a crashing variant?): hold"
        )
        return GateVerdict("sample-ratio", "traffic_share", Outcome.HOLD, reason, numbers)
    reason = (
        f"traffic split {seen} of {total} requests to the candidate, configured "
        f"{format_rate(share)} (mismatch evidence {nats(evidence)} < {boundary:.1f})"
    )
    return GateVerdict("sample-ratio", "traffic_share", Outcome.PASS, reason, numbers)


def held_by_mismatch(v: GateVerdict) -> GateVerdict:
    """A comparing gate's verdict, held by a mismatch (its own outcome kept in the reason)."""
    reason = f"held: sample-ratio mismatch (would be {v.outcome.value}: {v.reason})"
    return GateVerdict(v.gate, v.metric, Outcome.HOLD, reason, v.numbers, v.dry_run, v.error)
