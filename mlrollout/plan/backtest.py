"""Would these gates have rolled back a healthy release? ``mlrollout plan backtest`` replays a
plan's gates on the baseline's own history (see ``docs/impact.md``).

The history is the baseline variant's windows at the plan's ``analysis.interval``
(:func:`mlrollout.history.read_history`, through the plan's metrics source). It is cut into
simulated rollouts, back to back: each walks the plan's steps (:func:`~mlrollout.plan.timeline.
timeline`) as the engine does — a weight step sets the split, a pause lets windows pass, an
analyze step (and an approval wait while the candidate takes traffic: the gates watch it until
its timeout) looks at every interval on the stage's cumulative windows — and each look is judged
by the real :class:`~mlrollout.analysis.GateSet` of the plan (``GateSet.from_plan`` with
:func:`~mlrollout.plan.timeline.planned_looks` and :func:`~mlrollout.analysis.gateset.
judged_stages`, the look's number, the stage's horizon and its per-look increments), fed
through :class:`~mlrollout.analysis.Monitor`. A stage ends as the engine ends it: a FAIL rolls
back; an adaptive stage passes once every gate passes after its ``min`` and is inconclusive at
its ``max``; a fixed one ends at its ``max`` (holding on for data up to ``max_hold`` when it is
short of it); an inconclusive stage then does what ``on_inconclusive`` says.

Pseudo-arms in the plan's proportions: at candidate share ``w``, a look's candidate increment is
the window ``shift`` later (default one day: the same hour of the day) with each of its requests
kept with probability ``w`` (binomial thinning of requests, errors, latency buckets, custom
counts), and the baseline's is the window itself thinned to ``1 - w``: two independent arms of
the same unchanged model, as two variants of it would be, with each its own bursts. With
``shift: 0`` one window is split in two (a request goes to one arm or the other): bursts then
hit both arms at once, as an incident of the whole endpoint does. Time-shifted arms also carry
whatever differs between two windows a day apart, which two concurrent variants never see: on
the sandbox's canary of ``benchmarks/engine_decisions.py`` a one-day shift read 2.5 % false
rollbacks (mostly its p99 gate) where a split of one window read 1.2 %, the engine's own rate.

Every rollback is false here (both arms are the same model): the rate of rollbacks is the
plan's empirical false-rollback rate on this endpoint's traffic, given with its Wilson 95 %
interval. Only the gates history can judge take part (the prediction and quality gates need
captured predictions and labels: they are listed as skipped); each keeps its share of
``alpha``, as the engine's subsets do.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mlrollout.analysis.gateset import GateSet, judged_stages
from mlrollout.analysis.measures import Counts, wilson
from mlrollout.analysis.monitor import Monitor
from mlrollout.analysis.verdict import Outcome
from mlrollout.contracts import CustomValue, LatencyHistogram, Window
from mlrollout.engine.engine import _why
from mlrollout.errors import UsageError
from mlrollout.history import History
from mlrollout.plan.model import PREDICTION_METRICS, QUALITY_METRICS, Gate, Plan
from mlrollout.plan.timeline import planned_looks, timeline
from mlrollout.sandbox.traffic import _binomial
from mlrollout.units import format_duration

#: Strategies whose stages split live traffic between the two arms.
SPLIT_STRATEGIES = ("canary", "linear", "ab_test")


@dataclass(frozen=True)
class Stage:
    """One part of a simulated rollout: ``looks`` judged looks at ``share`` (a fraction), or
    ``wait`` windows that pass unjudged."""

    share: float
    step: int
    kind: str  # "analyze" | "approve" | "pause"
    wait: int = 0
    min_looks: int = 0
    max_looks: int = 0
    adaptive: bool = False
    horizon: int | None = None


@dataclass
class Simulated:
    start: float
    outcome: str  # "rolled_back" | "inconclusive" | "passed"
    seconds: float
    step: int | None = None
    reason: str = ""
    gates: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "outcome": self.outcome,
            "seconds": self.seconds,
            "step": self.step,
            "reason": self.reason,
            "gates": list(self.gates),
        }


@dataclass
class Backtest:
    plan: str
    variant: str
    start: float
    end: float
    interval: float
    shift: float
    gates: tuple[str, ...]
    skipped: tuple[str, ...]
    rollouts: list[Simulated] = field(default_factory=list)
    windows: int = 0
    calls: int = 0

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.rollouts if r.outcome == outcome)

    @property
    def false_rollback_rate(self) -> float | None:
        return self.count("rolled_back") / len(self.rollouts) if self.rollouts else None

    def rate_interval(self) -> tuple[float, float] | None:
        """Wilson's 95 % interval of the false-rollback rate."""
        if not self.rollouts:
            return None
        found = wilson(Counts(self.count("rolled_back"), len(self.rollouts)), 1.959964)
        return found.lower, found.upper

    def reasons(self, outcome: str) -> list[tuple[str, int]]:
        """Which gates ended the rollouts of ``outcome``, most often first."""
        tally = Counter(
            gate for r in self.rollouts if r.outcome == outcome for gate in r.gates or ("-",)
        )
        return tally.most_common()

    def to_dict(self) -> dict[str, Any]:
        interval = self.rate_interval()
        return {
            "plan": self.plan,
            "variant": self.variant,
            "from": self.start,
            "to": self.end,
            "interval": self.interval,
            "shift": self.shift,
            "gates": list(self.gates),
            "skipped_gates": list(self.skipped),
            "windows": self.windows,
            "metrics_calls": self.calls,
            "rollouts": len(self.rollouts),
            "rolled_back": self.count("rolled_back"),
            "inconclusive": self.count("inconclusive"),
            "passed": self.count("passed"),
            "false_rollback_rate": self.false_rollback_rate,
            "false_rollback_interval95": None if interval is None else list(interval),
            "reasons": {
                outcome: dict(self.reasons(outcome)) for outcome in ("rolled_back", "inconclusive")
            },
            "simulated": [r.to_dict() for r in self.rollouts],
        }


def check_plan(plan: Plan) -> None:
    """Refuse a plan whose stages a backtest cannot split into two arms."""
    if plan.strategy.type not in SPLIT_STRATEGIES:
        raise UsageError(
            f"plan backtest replays strategies that split live traffic "
            f"({', '.join(SPLIT_STRATEGIES)}); this plan is {plan.strategy.type}",
        )
    if not judged(plan):
        raise UsageError(
            "the plan has no gate a history can judge (error_rate, latency, requests, custom)",
            hint="the prediction and quality gates need captured predictions and labels",
        )


def judged(plan: Plan) -> list[str]:
    return [
        g.name
        for g in plan.analysis.gates
        if g.metric not in PREDICTION_METRICS and g.metric not in QUALITY_METRICS
    ]


def stages(plan: Plan) -> list[Stage]:
    """The plan's steps as the backtest walks them, in windows of ``analysis.interval``."""
    analysis = plan.analysis
    interval = analysis.interval
    delay = math.ceil(analysis.delay / interval - 1e-9)
    watching = bool(plan.analysis.gates)
    out: list[Stage] = []
    share = 0.0
    for row in timeline(plan):
        step = row.step
        share = row.candidate_weight / 100.0
        if step.kind == "pause" and step.pause is not None:
            out.append(Stage(share, step.index, "pause", wait=math.ceil(step.pause / interval)))
        elif step.kind == "analyze" and step.window is not None:
            window = step.window
            longest = window.max if window.adaptive else window.max + analysis.max_hold
            out.append(
                Stage(
                    share,
                    step.index,
                    "analyze",
                    wait=delay,
                    min_looks=math.ceil(window.min / interval - 1e-9),
                    max_looks=math.ceil(window.max / interval - 1e-9),
                    adaptive=window.adaptive,
                    horizon=math.ceil(longest / interval),
                )
            )
        elif step.kind == "approve" and step.approve is not None:
            timeout = step.approve.timeout
            looks = 0 if timeout is None else math.ceil(timeout / interval - 1e-9)
            # A wait with no timeout ends when a human approves: at once, here.
            if watching and share > 0 and looks:
                out.append(Stage(share, step.index, "approve", wait=delay, max_looks=looks))
            elif looks:
                out.append(Stage(share, step.index, "pause", wait=looks))
    return out


def split(window: Window, share: float, rng: random.Random) -> tuple[Window, Window]:
    """``window`` cut in two by sending each request to the first part with probability
    ``share``. The requests are split first (bucket by bucket of the latency histogram when it
    counts every request, so each part's histogram counts its requests); the errors and each
    custom count over the requests then fall into a part as a draw without replacement from
    the requests each part holds (hypergeometric), so every part stays a consistent sample. A
    custom value that is not a count is scaled; a provider percentile is kept for both."""
    if window.error:
        return Window(error=window.error), Window(error=window.error)
    if window.requests is None:
        return Window(), Window()
    total = window.requests
    part, rest = Window(), Window()
    histogram = window.latency
    if histogram is not None and histogram.total == total:
        counts = [_binomial(rng, c, share) for c in histogram.counts]
        taken = sum(counts)
    else:
        counts, taken = [], _binomial(rng, total, share)
    part.requests, rest.requests = taken, total - taken
    if histogram is not None:
        if not counts:
            counts = [_binomial(rng, c, share) for c in histogram.counts]
        left = [c - k for c, k in zip(histogram.counts, counts, strict=True)]
        part.latency = LatencyHistogram(histogram.bounds, counts)
        rest.latency = LatencyHistogram(histogram.bounds, left)
    if window.errors is not None:
        e = _draw(rng, total, window.errors, taken)
        part.errors, rest.errors = e, window.errors - e
    part.latency_percentiles = dict(window.latency_percentiles)
    rest.latency_percentiles = dict(window.latency_percentiles)
    for name, value in window.custom.items():
        hits, count = float(value.total), float(value.count)
        if hits.is_integer() and count.is_integer() and 0 <= hits <= count:
            n = taken if count == total else _binomial(rng, int(count), share)
            k = _draw(rng, int(count), int(hits), n)
            part.custom[name] = CustomValue(k, n)
            rest.custom[name] = CustomValue(hits - k, count - n)
        else:
            part.custom[name] = CustomValue(hits * share, count * share)
            rest.custom[name] = CustomValue(hits * (1 - share), count * (1 - share))
    return part, rest


def _draw(rng: random.Random, population: int, marked: int, sample: int) -> int:
    """How many of ``marked`` items out of ``population`` a sample of ``sample`` holds
    (hypergeometric): exact item by item up to 2,000 marked items, a normal approximation
    beyond (a window with that many errors is far from where a test is close)."""
    if population <= 0 or marked <= 0 or sample <= 0:
        return 0
    marked, sample = min(marked, population), min(sample, population)
    if marked <= 2000:
        got = 0
        for j in range(marked):  # each marked item falls in the sample with the odds left
            if rng.random() * (population - j) < sample - got:
                got += 1
        return got
    mean = marked * sample / population
    var = mean * (1 - sample / population) * (population - marked) / max(1, population - 1)
    drawn = round(rng.gauss(mean, math.sqrt(max(var, 0.0))))
    return min(marked, sample, max(0, drawn, sample - (population - marked)))


def gate_sets(plan: Plan) -> tuple[GateSet, GateSet]:
    """The plan's gate set as the engine builds it, less the gates history cannot judge, and
    its absolute part (what judges a stage where the candidate takes all traffic). Each gate
    left keeps its share of alpha, as the engine's subsets do."""
    from mlrollout.engine.strategies import strategy_for

    strategy = strategy_for(plan)
    winner = strategy.winner(plan) if strategy is not None else None
    full = GateSet.from_plan(
        plan.analysis, planned_looks=planned_looks(plan), stages=judged_stages(plan), winner=winner
    )
    names = set(judged(plan))

    def subset(keep: Callable[[Gate], bool]) -> GateSet:
        kept = tuple(g for g in full.gates if keep(g))
        deciding = sum(1 for g in kept if not g.dry_run)
        share = deciding / full.deciding if full.deciding else 1.0
        return replace(full, gates=kept, alpha=full.alpha * share)

    split_gates = subset(lambda g: g.name in names)
    absolute = subset(
        lambda g: (
            g.name in names and g.vs_baseline is None and (winner is None or g.name != winner[0])
        )
    )
    return split_gates, absolute


def run(
    plan: Plan,
    history: History,
    *,
    variant: str,
    shift: float = 86400.0,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Backtest:
    """Replay ``plan``'s gates on ``variant``'s ``history`` (windows of the plan's interval)."""
    check_plan(plan)
    interval = plan.analysis.interval
    if abs(history.step - interval) > 1e-9:
        raise UsageError(
            f"the history's step ({format_duration(history.step)}) is not the plan's interval "
            f"({format_duration(interval)})"
        )
    offset = round(shift / interval)
    windows = [s.window([variant]) for s in history.samples]
    usable = len(windows) - offset
    plan_stages = stages(plan)
    needed = sum(s.wait + s.max_looks for s in plan_stages)
    if usable < max(1, needed):
        raise UsageError(
            f"the history holds {len(windows)} windows of {format_duration(interval)}; one "
            f"simulated rollout needs {needed} after the {format_duration(shift)} shift",
            hint="backtest a longer span (--from/--to) or give a shorter --shift",
        )
    gates, absolute = gate_sets(plan)
    result = Backtest(
        plan=plan.name,
        variant=variant,
        start=history.start,
        end=history.end,
        interval=interval,
        shift=shift,
        gates=tuple(g.name for g in gates.gates),
        skipped=tuple(g.name for g in plan.analysis.gates if g.name not in judged(plan)),
        windows=len(windows),
        calls=history.calls,
    )
    rng = random.Random(seed)

    def arms(i: int, share: float) -> tuple[Window, Window]:
        if offset == 0:
            return split(windows[i], share, rng)
        candidate, _ = split(windows[i + offset], share, rng)
        _, baseline = split(windows[i], share, rng)
        return candidate, baseline

    i = 0
    while i + needed <= usable:
        first = i
        simulated, i = _one(plan, plan_stages, (gates, absolute), arms, i, usable)
        if simulated is None:
            break
        simulated.start = history.samples[first].start
        simulated.seconds = (i - first) * interval
        result.rollouts.append(simulated)
        if progress is not None:
            progress(i, usable)
    return result


def _one(
    plan: Plan,
    plan_stages: Sequence[Stage],
    judges: tuple[GateSet, GateSet],
    arms: Callable[[int, float], tuple[Window, Window]],
    i: int,
    usable: int,
) -> tuple[Simulated | None, int]:
    """One simulated rollout from window ``i``: its outcome and the window after its end
    (None when the history ran out before it ended). ``judges``: the gates of a split stage
    and those of a stage where the candidate takes all traffic (no baseline to compare)."""
    analysis = plan.analysis
    monitor = Monitor(judges[0])
    for stage in plan_stages:
        i += stage.wait
        if stage.kind == "pause":
            continue
        gates = monitor.gates = judges[1] if stage.share >= 1 else judges[0]
        monitor.new_stage(stage.share if 0 < stage.share < 1 else None)
        monitor.horizon = stage.horizon
        hold_since: int | None = None
        looks = 0
        while True:
            if i >= usable:
                return None, i
            candidate, baseline = arms(i, stage.share)
            verdict = monitor.observe(candidate, baseline)
            i += 1
            looks += 1
            outcome = verdict.outcome
            if outcome is Outcome.FAIL:
                failing = tuple(
                    g.gate for g in verdict.gates if g.outcome is Outcome.FAIL and not g.dry_run
                )
                return Simulated(0.0, "rolled_back", 0.0, stage.step, _why(verdict), failing), i
            if stage.kind == "approve":
                if looks >= stage.max_looks:
                    break
                continue
            decided = None
            if gates.winner is not None:
                won = any(
                    g.gate == gates.winner[0] and g.outcome is Outcome.PASS for g in verdict.gates
                )
                if won:
                    decided = "passed"
                elif looks >= stage.max_looks:  # the engine rolls back: no winner
                    why = "no winner by the end of the test: " + _why(verdict)
                    deciding = tuple(g.gate for g in verdict.deciding)
                    return Simulated(0.0, "rolled_back", 0.0, stage.step, why, deciding), i
            elif stage.adaptive:
                if looks >= stage.min_looks and outcome is Outcome.PASS:
                    decided = "passed"
                elif looks >= stage.max_looks:
                    decided = "inconclusive"
            elif looks >= stage.max_looks:
                decided = "hold" if outcome is Outcome.HOLD else "passed"
            if decided == "hold":
                if analysis.no_data == "rollback":
                    why = "not enough data at the end of the analysis: " + _why(verdict)
                    return Simulated(0.0, "rolled_back", 0.0, stage.step, why, ("no data",)), i
                hold_since = looks if hold_since is None else hold_since
                if (looks - hold_since) * analysis.interval >= analysis.max_hold:
                    decided = "inconclusive"
            if decided == "inconclusive":
                deciding = tuple(g.gate for g in verdict.deciding)
                why = "undecided at the end of the analysis: " + _why(verdict)
                if analysis.on_inconclusive == "rollback":
                    return Simulated(0.0, "rolled_back", 0.0, stage.step, why, deciding), i
                if analysis.on_inconclusive == "pause":
                    return Simulated(0.0, "inconclusive", 0.0, stage.step, why, deciding), i
                break  # continue: the next step
            if decided == "passed":
                break
    return Simulated(0.0, "passed", 0.0), i


def render(result: Backtest) -> str:
    """The backtest for people: what the simulated rollouts did, and what the rate means."""
    from datetime import UTC, datetime

    def when(at: float) -> str:
        return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M UTC")

    total = len(result.rollouts)
    lines = [
        f"backtest of {result.plan!r} on {result.variant}'s history, {when(result.start)} to "
        f"{when(result.end)}: {result.windows} windows of {format_duration(result.interval)} "
        f"({result.calls} metrics call{'s' if result.calls != 1 else ''})",
        "pseudo-arms: the candidate is the window "
        + (
            f"{format_duration(result.shift)} later"
            if result.shift
            else "itself, split request by request"
        )
        + ", in the plan's proportions; both arms are the same model",
        f"gates replayed: {', '.join(result.gates)}"
        + (f" (skipped, no history: {', '.join(result.skipped)})" if result.skipped else ""),
        "",
        f"{total} simulated rollouts: {result.count('rolled_back')} rolled back, "
        f"{result.count('inconclusive')} held (inconclusive), {result.count('passed')} passed",
    ]
    rate, interval = result.false_rollback_rate, result.rate_interval()
    if rate is not None and interval is not None:
        lines.append(
            f"false-rollback rate {rate:.2%} (95% interval {interval[0]:.2%} to "
            f"{interval[1]:.2%}): every rollback here is false, the candidate being the "
            "baseline itself"
        )
    for outcome, label in (("rolled_back", "rolled back by"), ("inconclusive", "held by")):
        reasons = result.reasons(outcome)
        if reasons:
            lines.append(f"{label}: " + ", ".join(f"{gate} {n}" for gate, n in reasons))
    examples = [r for r in result.rollouts if r.outcome != "passed"][:3]
    for r in examples:
        lines.append(f"  e.g. from {when(r.start)}, step {r.step}: {r.reason[:200]}")
    return "\n".join(lines) + "\n"
