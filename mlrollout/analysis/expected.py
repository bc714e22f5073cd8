"""What ``plan preview`` says about each gate: its method and about how long it takes to decide.

The estimates are Wald's approximation for the default rule: a test decides once its evidence
(the log mixture likelihood ratio) reaches ``log(1/alpha_test)``; the evidence grows by the
Kullback-Leibler information per request, and the mixture plus the overshoot at discrete looks
cost about :data:`EXTRA_NATS` more (:data:`FAIL_EXTRA_NATS` for rolling back, whose boundary is
calibrated lower; both measured by ``benchmarks/decisions.py``). Reference effects:
a doubling of the baseline's rate (rates, tail latency), a median +2× the margin at lognormal
sigma 0.5 (median latency), twice / half the bound (absolute bounds); a healthy candidate (no
change) for passing. Pure Python, cheap: no import of the scientific stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from mlrollout.analysis.measures import Criteria
from mlrollout.analysis.mixture import kl_bernoulli
from mlrollout.analysis.onset import METHOD as ONSET_METHOD
from mlrollout.analysis.tail import METHOD as TAIL_METHOD
from mlrollout.plan.model import LATENCY_METRICS, PREDICTION_METRICS, QUALITY_METRICS, Gate
from mlrollout.units import format_duration, format_rate

#: Nats a mixture and the overshoot at 10 s looks cost over a test told the effect (passing).
EXTRA_NATS = 1.5
#: The same for rolling back, net of the calibrated boundary's correction (measured on a
#: doubling at 100 req/s by ``benchmarks/decisions.py``).
FAIL_EXTRA_NATS = 0.5
#: The same for the rate tests, with their robustness' costs (the early guard against bursts, the
#: restarted tests' share of the budget): a doubling at 100 req/s in 134 s, 104 s before them.
RATE_FAIL_EXTRA_NATS = 1.5


@dataclass(frozen=True)
class Expectation:
    method: str
    fail_requests: float | None  # candidate requests to catch the reference regression
    pass_requests: float | None  # candidate requests to pass a healthy candidate
    fail_effect: str = ""
    note: str = ""

    def text(self, candidate_rps: float | None) -> str:
        """``catches <effect> after ~N requests (~2m at 10 rps); passes a healthy one ~...``."""
        parts = []
        for label, n in (
            (f"catches {self.fail_effect}", self.fail_requests),
            ("passes a healthy candidate", self.pass_requests),
        ):
            if n is None or not math.isfinite(n):
                continue
            when = f"~{_requests(n)} candidate requests"
            if candidate_rps:
                when += f", ~{format_duration(max(1.0, n / candidate_rps))}"
            parts.append(f"{label} after {when}")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)


def _requests(n: float) -> str:
    return f"{n / 1000:.3g}k" if n >= 10_000 else f"{math.ceil(n)}"


def _events_needed(kl: float, alpha: float, extra: float = EXTRA_NATS) -> float:
    return (math.log(1 / alpha) + extra) / kl if kl > 0 else math.inf


def _conditional(
    p0: float, ratio: float, share: float, null_ratio: float, alpha: float, extra: float
) -> float:
    """Candidate requests for the conditional binomial test (true ``ratio``, null ``null``)."""
    w = share
    theta = w * ratio / (w * ratio + 1 - w)
    theta0 = w * null_ratio / (w * null_ratio + 1 - w)
    events_per_request = p0 * (ratio + (1 - w) / w)
    return _events_needed(kl_bernoulli(theta, theta0), alpha, extra) / events_per_request


def expect(
    gate: Gate,
    alpha: float,
    share: float,
    baseline_rate: float = 0.01,
    *,
    min_effect: float | None = None,
) -> Expectation:
    """The method of ``gate`` and its reference decision sizes at candidate ``share`` (0-1);
    ``min_effect`` given: ``gate`` is an A/B test's winner gate (:mod:`~.winner`)."""
    if min_effect is not None:
        from mlrollout.analysis.winner import expectation as winner_expectation

        return winner_expectation(gate, alpha, share, min_effect, baseline_rate)
    share = min(max(share, 1e-3), 0.999)
    q = LATENCY_METRICS.get(gate.metric)
    if gate.metric == "requests":
        return Expectation("request count (exact)", None, None, note="decides on the count")
    if gate.metric in PREDICTION_METRICS:
        from mlrollout.analysis.prediction import expectation

        return expectation(gate, alpha)
    if gate.metric in QUALITY_METRICS:
        from mlrollout.analysis.quality import expectation as quality_expectation

        return quality_expectation(gate, alpha, share)
    criteria = Criteria.of(gate)
    margin = criteria.margin
    alpha /= criteria.split
    if margin is not None:
        limit = 1 + margin.amount if margin.kind == "relative" else None
        if q == 0.5:
            rel = margin.amount if margin.kind == "relative" else 0.05
            shift = math.log(1 + 2 * max(rel, 0.025))
            delta = NormalDist().cdf(shift / (0.5 * math.sqrt(2))) - 0.5
            per_request = 12 * (1 - share) * delta * delta / 2
            fail = (math.log(1 / alpha) + FAIL_EXTRA_NATS) / per_request
            shift_pass = math.log(1 + max(rel, 0.025))
            delta_pass = NormalDist().cdf(shift_pass / (0.5 * math.sqrt(2))) - 0.5
            passing = (math.log(1 / alpha) + EXTRA_NATS) / (
                12 * (1 - share) * delta_pass * delta_pass / 2
            )
            return Expectation(
                "mixture SPRT on the Mann-Whitney rank statistic (always valid)",
                fail,
                passing,
                f"median +{(math.exp(shift) - 1) * 100:.3g}% (σ 0.5)",
            )
        if q is not None:
            p0, what = 1 - q, f"twice the baseline's requests slower than its p{q * 100:g}"
            method = TAIL_METHOD
        else:
            method = f"mixture SPRT on the conditional binomial, {ONSET_METHOD} (always valid)"
            if criteria.worse == "decrease":  # a custom rate such as thumbs-up
                p0 = 0.5
                low = 1 - margin.amount if margin.kind == "relative" else 1 - margin.amount / p0
                fail = _conditional(p0, 0.5, share, 1.0, alpha, RATE_FAIL_EXTRA_NATS)
                healthy = (
                    _conditional(p0, 1.0, share, low, alpha, EXTRA_NATS) if 0 < low < 1 else None
                )
                return Expectation(method, fail, healthy, "a halving of a 50% rate")
            p0, what = baseline_rate, f"a doubling of {format_rate(baseline_rate)}"
            if limit is None:
                limit = (baseline_rate + margin.amount) / baseline_rate
        limit = limit or 1.1
        extra = FAIL_EXTRA_NATS if q is not None else RATE_FAIL_EXTRA_NATS
        fail = _conditional(p0, 2.0, share, 1.0, alpha, extra)
        healthy = _conditional(p0, 1.0, share, limit, alpha, EXTRA_NATS) if limit > 1 else None
        return Expectation(method, fail, healthy, what)
    bound = criteria.max if criteria.max is not None else criteria.min
    if bound is None:
        return Expectation("records only", None, None)
    if q is not None:
        theta0 = 1 - q
        method = "one-sample mixture SPRT on requests beyond the bound (always valid)"
        what = f"twice {format_rate(theta0)} of requests beyond the bound"
    elif gate.metric == "error_rate":
        theta0 = min(max(bound, 1e-6), 0.999)
        method = f"one-sample mixture SPRT on the rate, {ONSET_METHOD} (always valid)"
        what = f"a rate of {format_rate(min(1.0, 2 * theta0))}"
    else:
        return Expectation("point comparison (a weaker guarantee)", None, None)
    extra = FAIL_EXTRA_NATS if q is not None else RATE_FAIL_EXTRA_NATS
    fail = _events_needed(kl_bernoulli(min(0.999, 2 * theta0), theta0), alpha, extra)
    passing = _events_needed(kl_bernoulli(theta0 / 2, theta0), alpha)
    return Expectation(method, fail, passing, what)
