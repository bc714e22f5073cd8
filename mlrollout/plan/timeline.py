"""A plan's strategy expanded into the steps the engine executes, and their timing.

The engine and ``plan preview`` both read this, so what the preview promises is what ``run`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlrollout.engine.strategies.base import ExecStep, StepKind
from mlrollout.plan.model import Plan

__all__ = ["ExecStep", "StepKind", "TimedStep", "expand_steps", "planned_looks", "timeline"]


def expand_steps(plan: Plan) -> list[ExecStep]:
    """The executable steps of the plan's strategy module (empty for a strategy the engine
    cannot run yet: ``plan validate`` refuses those)."""
    from mlrollout.engine.strategies import strategy_for

    strategy = strategy_for(plan)
    return [] if strategy is None else strategy.steps(plan)


@dataclass(frozen=True)
class TimedStep:
    step: ExecStep
    candidate_weight: float  # after this step
    min_seconds: float
    max_seconds: float  # math.inf when it can wait forever
    looks: int  # planned looks in the worst case
    #: Percent of live traffic mirrored to the candidate during this step (100 stands for "the
    #: platform's largest share", which only the platform knows).
    mirror: float = 0.0


def timeline(plan: Plan) -> list[TimedStep]:
    """Each step with its candidate weight and its shortest and longest duration."""
    analysis = plan.analysis
    rows: list[TimedStep] = []
    weight = 0.0
    mirror = 0.0
    for step in expand_steps(plan):
        low = high = 0.0
        looks = 0
        if step.kind == "weight":
            assert step.weight is not None
            weight = step.weight
        elif step.kind == "mirror":
            mirror = 100.0 if step.weight is None else step.weight
        elif step.kind in ("analyze", "native"):
            assert step.window is not None
            low = analysis.delay + step.window.min
            high = analysis.delay + step.window.max
            if analysis.no_data == "hold" and step.kind == "analyze" and not step.window.adaptive:
                high += analysis.max_hold  # short of data at the end: hold up to max_hold
            looks = math.ceil((high - analysis.delay) / analysis.interval)
            if step.kind == "native":
                weight = 100.0  # the platform moves all traffic to the candidate by its end
        elif step.kind == "pause":
            assert step.pause is not None
            low = high = step.pause
        elif step.kind == "approve":
            assert step.approve is not None
            high = step.approve.timeout if step.approve.timeout is not None else math.inf
        rows.append(TimedStep(step, weight, low, high, looks, mirror))
    return rows


def planned_looks(plan: Plan) -> int:
    """Worst-case number of looks over the whole rollout: the analysis' alpha is spent over it."""
    return max(1, sum(row.looks for row in timeline(plan)))
