"""The prediction gates: what the candidate *predicted* against the baseline, on paired requests.

They read the :class:`~mlrollout.capture.PredictionSummary` the engine puts on the candidate's
window (``Window.predictions``: counts of the stage's cumulative window, see
:mod:`mlrollout.capture`) and keep the operational gates' discipline: always-valid decisions
(valid however often the stage is looked at), the gate's share of the plan's ``alpha``, no data
never passes.

- ``agreement`` with ``min`` (a share): of ``n`` paired requests, ``d`` disagree. The one-sample
  mixture SPRT of the operational rate bounds (:func:`~mlrollout.analysis.sequential._one_sample`,
  with its calibrated rollback boundary) tests the disagreement rate against ``1 - min``. Its
  always-valid bounds on the agreement are that test *inverted* (the agreement values it would
  not reject, found by bisection: the mixture is monotone in the null), so the verdict and the
  interval agree exactly: **fail** when the upper bound is below ``min``, **pass** when the
  lower bound is above it.
- ``prediction_drift`` with ``max`` (a PSI): the population stability index
  ``sum_i (c_i - b_i) ln(c_i / b_i)`` of the candidate's (``c``) and the baseline's (``b``)
  shares of outputs per bin (bins fixed from the baseline's first window; shares floored at
  :data:`PSI_FLOOR`). Each bin's share, per variant, gets an always-valid confidence sequence
  (the two one-sided Bernoulli mixture SPRTs of :mod:`~mlrollout.analysis.mixture` inverted, at
  ``alpha / (2 bins)`` each: Bonferroni over the bins and the two variants), so with probability
  ``1 - alpha`` every true share is inside its interval at every look. The PSI is then bounded by
  its least and greatest values over those boxes, bin by bin (each term is convex with its
  minimum on the diagonal: the closest corners give the least, the farthest corner the
  greatest; the shares' sum-to-one is dropped, which only widens the bounds). **fail** when the
  lower bound is above ``max``, **pass** when the upper bound is at or under it. Ville's
  boundary, not calibrated: conservative.

Both hold (never pass) with no capture yet, a capture that failed (the source's error), or fewer
than ``min_requests`` paired requests (agreement) / binned outputs per variant (drift). Records
that did not parse, or found no partner, are reported in the reason and the numbers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from mlrollout.analysis.calibration import Pace
from mlrollout.analysis.expected import FAIL_EXTRA_NATS, Expectation, _events_needed
from mlrollout.analysis.measures import Criteria, Result, confidence
from mlrollout.analysis.mixture import FAIL_GRID, PASS_GRID, bernoulli_log_lr, kl_bernoulli
from mlrollout.analysis.rule import LookContext
from mlrollout.analysis.sequential import _one_sample
from mlrollout.analysis.verdict import GateVerdict, Numbers, Outcome
from mlrollout.capture import PredictionSummary
from mlrollout.contracts import Window
from mlrollout.plan.model import PREDICTION_METRICS, Gate

__all__ = [
    "AGREEMENT_METHOD",
    "DRIFT_METHOD",
    "PREDICTION_METRICS",
    "PSI_FLOOR",
    "evaluate",
    "expectation",
    "psi",
]

#: What ``plan preview`` (and the docs) call the methods.
AGREEMENT_METHOD = (
    "one-sample mixture SPRT on the share of paired requests that agree, inverted for its "
    "bounds (always valid)"
)
DRIFT_METHOD = (
    "PSI bounded over always-valid per-bin confidence sequences (Bernoulli mixture SPRTs, "
    "Bonferroni over bins; always valid)"
)
#: Shares below this count as this in a PSI (an empty bin would make it infinite).
PSI_FLOOR = 1e-4
#: The alternatives of the per-bin confidence sequences: log-odds shifts from small to large
#: (tight intervals once many outputs are in), equal weights.
_CS_GRID = tuple((d, 1 / 9) for d in (0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5))
_WORDS = {Outcome.FAIL: "fail", Outcome.PASS: "pass", Outcome.CONTINUE: "keep watching"}


def evaluate(gate: Gate, candidate: Window, baseline: Window, ctx: LookContext) -> GateVerdict:
    """One prediction gate at one look (``candidate.predictions`` carries the pairs). Never
    raises on bad data."""
    result = _evaluate(gate, candidate.predictions, ctx)
    return GateVerdict(
        gate.name, gate.metric, result.outcome, result.reason, result.numbers, gate.dry_run,
        result.error,
    )  # fmt: skip


def _evaluate(gate: Gate, summary: PredictionSummary | None, ctx: LookContext) -> Result:
    if summary is None:
        return Result(Outcome.HOLD, "no capture data yet (no paired predictions)")
    if summary.error:
        reason = f"capture could not be read: {summary.error} (no decision)"
        return Result(Outcome.HOLD, reason, {}, error=summary.error)
    criteria = ctx.criteria_of(gate)
    alpha = (ctx.alpha_test if ctx.alpha_test is not None else ctx.alpha_per_look) / criteria.split
    pace = Pace(ctx.look, ctx.horizon) if ctx.alpha_test is not None else None
    need = max(1, ctx.min_requests)
    if gate.metric == "agreement":
        result = _agreement(criteria, summary, alpha, pace, need)
    else:
        result = _drift(criteria, summary, alpha, need)
    note = _record_note(summary)
    if note:
        result.reason += f"; {note}"
    result.numbers |= _record_numbers(summary)
    return result


# --------------------------------------------------------------------------------- agreement


def _bisect(test: Callable[[float], bool], rising: bool) -> float:
    """The edge in ``(0, 1)`` where ``test(theta)`` changes, ``test`` monotone in ``theta``
    (``rising``: false then true). Works in log-odds; returns 0 or 1 when it never changes."""
    lo, hi = -40.0, 40.0

    def at(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-x))

    if rising:
        if not test(at(hi)):
            return 1.0
        if test(at(lo)):
            return 0.0
    else:
        if not test(at(lo)):
            return 0.0
        if test(at(hi)):
            return 1.0
    for _ in range(34):
        mid = (lo + hi) / 2
        if test(at(mid)) == rising:
            hi = mid
        else:
            lo = mid
    return at(lo if rising else hi)


def _agreement(
    criteria: Criteria, s: PredictionSummary, alpha: float, pace: Pace | None, need: int
) -> Result:
    n, agreed = s.paired, s.agreed
    if n < need:
        more = need - n
        reason = f"{n} of {need} paired requests so far ({more} more needed before any decision)"
        return Result(Outcome.HOLD, reason, {"needed_requests": float(more), "paired": float(n)})
    bound = criteria.min
    share = agreed / n
    d = n - agreed
    if bound is None:
        reason = f"outputs agree on {_share(share)} of {n:,} paired requests (no bound set)"
        return Result(Outcome.PASS, reason, {"candidate": share, "estimate": share})
    theta0 = 1.0 - bound
    ev = _one_sample(d, d, n, theta0, True, alpha, pace)
    fail_at, pass_at = ev.fail_at, ev.boundary
    # Disagreement rates the rollback test rejects lie below its edge; those the pass test
    # rejects lie above its edge: the agreement's bounds are those edges, mirrored.
    low_d = _bisect(lambda t: bernoulli_log_lr(d, n, t, FAIL_GRID, up=True) < fail_at, True)
    high_d = _bisect(lambda t: bernoulli_log_lr(d, n, t, PASS_GRID, up=False) >= pass_at, True)
    upper, lower = 1.0 - low_d, 1.0 - high_d
    outcome = ev.outcome
    where = {Outcome.FAIL: "below", Outcome.PASS: "above", Outcome.CONTINUE: "not yet clear of"}
    reason = (
        f"outputs agree on {_share(share)} of {n:,} paired requests ({confidence(alpha)} "
        f"always-valid interval {_share(lower)}–{_share(upper)}), {where[outcome]} "
        f"{_share(bound)}, {ev.text()}: {_WORDS[outcome]}"
    )
    numbers: Numbers = {
        "candidate": share,
        "estimate": share,
        "lower": lower,
        "upper": upper,
        "threshold": bound,
        "alpha": alpha,
        "paired": float(n),
        "agreed": float(agreed),
        **ev.numbers(),
    }
    if outcome is Outcome.CONTINUE:
        numbers["needed_requests"] = _needed(share, bound, alpha, n)
    return Result(outcome, reason, numbers)


def _needed(share: float, bound: float, alpha: float, n: int) -> float:
    """About how many more paired requests a decision needs at the current share (Wald)."""
    p, q = min(max(1 - share, 1e-6), 1 - 1e-6), min(max(1 - bound, 1e-6), 1 - 1e-6)
    kl = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    if kl <= 0:
        return math.inf
    return max(0.0, math.ceil((math.log(1 / alpha) + 1.0) / kl) - n)


# ------------------------------------------------------------------------------------ drift


def psi(candidate: list[int], baseline: list[int], floor: float = PSI_FLOOR) -> float:
    """The PSI of two binned counts (shares floored at ``floor``)."""
    nc, nb = sum(candidate), sum(baseline)
    if not nc or not nb:
        return math.nan
    return sum(
        _term(max(c / nc, floor), max(b / nb, floor))
        for c, b in zip(candidate, baseline, strict=True)
    )


def _term(p: float, q: float) -> float:
    return (p - q) * math.log(p / q)


@functools.lru_cache(maxsize=4096)
def share_interval(x: int, n: int, alpha: float) -> tuple[float, float]:
    """An always-valid two-sided ``1 - alpha`` confidence sequence for a Bernoulli share, from
    ``x`` of ``n``: the two one-sided mixture SPRTs (``alpha / 2`` each) inverted."""
    if n <= 0:
        return 0.0, 1.0
    edge = math.log(2.0 / alpha)
    # ``up`` rejects shares below the truth: its evidence falls as theta rises.
    lower = _bisect(lambda t: bernoulli_log_lr(x, n, t, _CS_GRID, up=True) < edge, True)
    upper = _bisect(lambda t: bernoulli_log_lr(x, n, t, _CS_GRID, up=False) >= edge, True)
    return lower, upper


def _term_bounds(
    c: tuple[float, float], b: tuple[float, float], floor: float
) -> tuple[float, float]:
    (cl, ch), (bl, bh) = (max(c[0], floor), max(c[1], floor)), (max(b[0], floor), max(b[1], floor))
    if ch < bl:
        least = _term(ch, bl)
    elif bh < cl:
        least = _term(cl, bh)
    else:
        least = 0.0
    greatest = max(_term(p, q) for p in (cl, ch) for q in (bl, bh))
    return least, greatest


def _drift(criteria: Criteria, s: PredictionSummary, alpha: float, need: int) -> Result:
    bins = s.bins
    names = [s.baseline, s.candidate] if s.baseline and s.candidate else list(s.counts)
    if bins is None or len(names) != 2 or any(name not in s.counts for name in names):
        return Result(
            Outcome.HOLD, "no drift bins yet: no baseline outputs parsed so far (no decision)"
        )
    base, cand = s.counts[names[0]], s.counts[names[1]]  # without names: baseline first
    nb, nc = sum(base), sum(cand)
    if nc < need or nb < need:
        short = [
            f"{who} has {k} of {need} binned outputs"
            for who, k in (("candidate", nc), ("baseline", nb))
            if k < need
        ]
        more = need - min(nc, nb)
        reason = f"{'; '.join(short)} ({more} more needed before any decision)"
        return Result(Outcome.HOLD, reason, {"needed_requests": float(more)})
    value = psi(cand, base)
    k = len(cand)
    what = (
        f"{k} bins (baseline's deciles)"
        if bins.kind == "numeric"
        else f"{k} bins ({len(bins.categories)} categories and other)"
    )
    bound = criteria.max
    if bound is None:
        reason = f"prediction drift PSI {value:.3g} over {what} (no bound set)"
        return Result(Outcome.PASS, reason, {"candidate": value, "estimate": value})
    per = alpha / (2 * k)
    lower = upper = 0.0
    for x_c, x_b in zip(cand, base, strict=True):
        least, greatest = _term_bounds(
            share_interval(x_c, nc, per), share_interval(x_b, nb, per), PSI_FLOOR
        )
        lower += least
        upper += greatest
    if lower > bound:
        outcome, where = Outcome.FAIL, "above"
    elif upper <= bound:
        outcome, where = Outcome.PASS, "at or under"
    else:
        outcome, where = Outcome.CONTINUE, "not yet clear of"
    reason = (
        f"prediction drift PSI {value:.3g} over {what} ({confidence(alpha)} always-valid "
        f"bounds {lower:.3g}–{upper:.3g}), {where} {bound:g}, {nc:,} candidate and {nb:,} "
        f"baseline outputs: {_WORDS[outcome]}"
    )
    numbers: Numbers = {
        "candidate": value,
        "estimate": value,
        "lower": lower,
        "upper": upper,
        "threshold": bound,
        "alpha": alpha,
        "bins": float(k),
        "candidate_outputs": float(nc),
        "baseline_outputs": float(nb),
    }
    return Result(outcome, reason, numbers)


# ------------------------------------------------------------------------------ formatting


def _share(x: float) -> str:
    """``0.931`` → ``93.1 %``; more digits near 100 % (``99.95 %``)."""
    text = f"{x * 100:.2f}".rstrip("0").rstrip(".")
    if text == "100" and x < 1:
        text = f"{x * 100:.3f}".rstrip("0").rstrip(".")
    return f"{text} %"


def _record_note(s: PredictionSummary) -> str:
    parts = []
    bad = {who: k for who, k in s.unparsed.items() if k}
    if bad:
        total = sum(bad.values())
        detail = ", ".join(f"{who} {k:,}" for who, k in bad.items())
        parts.append(f"{total:,} records did not parse ({detail})")
    lone = {who: k for who, k in s.unpaired.items() if k}
    if lone:
        detail = ", ".join(f"{who} {k:,}" for who, k in lone.items())
        parts.append(f"unpaired: {detail}")
    return "; ".join(parts)


def _record_numbers(s: PredictionSummary) -> Numbers:
    return {
        "unparsed": float(sum(s.unparsed.values())),
        "unpaired": float(sum(s.unpaired.values())),
        "records": float(sum(s.records.values())),
    }


# ------------------------------------------------------------------------------- preview


def expectation(gate: Gate, alpha: float) -> Expectation:
    """What ``plan preview`` says of a prediction gate: its method and, for ``agreement``, the
    paired requests to catch twice the disagreement the bound allows and to pass a shadow that
    disagrees half as often (Wald's approximation, as the operational gates')."""
    criteria = Criteria.of(gate)
    alpha /= criteria.split
    if gate.metric == "prediction_drift":
        bound = criteria.max
        note = (
            f"passes identical outputs after ~{math.ceil(66 / bound)} outputs per bin and variant"
            if bound
            else ""
        )
        return Expectation(DRIFT_METHOD, None, None, note=note)
    if criteria.min is None:
        return Expectation(AGREEMENT_METHOD, None, None)
    theta0 = min(max(1.0 - criteria.min, 1e-6), 0.999)
    fail = _events_needed(kl_bernoulli(min(0.999, 2 * theta0), theta0), alpha, FAIL_EXTRA_NATS)
    passing = _events_needed(kl_bernoulli(theta0 / 2, theta0), alpha)
    what = f"outputs agreeing on {_share(1 - min(1.0, 2 * theta0))} (paired requests)"
    return Expectation(AGREEMENT_METHOD, fail, passing, what)
