"""A plan's strategy expanded into the steps the engine executes, and their timing.

The engine and ``plan preview`` both read this, so what the preview promises is what ``run`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mlrollout.plan.model import (
    AnalyzeWindow,
    Approve,
    CanaryStrategy,
    LinearStrategy,
    Plan,
)

StepKind = Literal["weight", "analyze", "pause", "approve"]


@dataclass(frozen=True)
class ExecStep:
    index: int
    kind: StepKind
    weight: float | None = None  # for "weight": the candidate's new share, percent
    window: AnalyzeWindow | None = None  # for "analyze"
    pause: float | None = None  # for "pause", seconds
    approve: Approve | None = None  # for "approve"

    def describe(self) -> str:
        from mlrollout.units import format_duration

        if self.kind == "weight":
            return f"set candidate weight to {self.weight:g}%"
        if self.kind == "analyze":
            assert self.window is not None
            if self.window.adaptive:
                return (
                    f"analyze {format_duration(self.window.min)}-{format_duration(self.window.max)}"
                    " (adaptive)"
                )
            return f"analyze {format_duration(self.window.max)}"
        if self.kind == "pause":
            assert self.pause is not None
            return f"pause {format_duration(self.pause)}"
        assert self.approve is not None
        timeout = self.approve.timeout
        if timeout is None:
            return "wait for approval (no timeout)"
        return (
            f"wait for approval (timeout {format_duration(timeout)}, "
            f"then {self.approve.on_timeout})"
        )


def expand_steps(plan: Plan) -> list[ExecStep]:
    """The executable steps of a canary or linear plan (other strategies: empty for now)."""
    strategy = plan.strategy
    steps: list[ExecStep] = []
    if isinstance(strategy, CanaryStrategy):
        for step in strategy.steps:
            steps.append(
                ExecStep(
                    index=len(steps),
                    kind=step.kind,  # type: ignore[arg-type]
                    weight=step.weight,
                    window=step.analyze,
                    pause=step.pause,
                    approve=step.approve,
                )
            )
    elif isinstance(strategy, LinearStrategy):
        weight = 0.0
        window = AnalyzeWindow(min=strategy.every, max=strategy.every, adaptive=False)
        while True:
            weight = min(100.0, weight + strategy.step)
            if weight >= 100.0:
                break
            steps.append(ExecStep(index=len(steps), kind="weight", weight=weight))
            steps.append(ExecStep(index=len(steps), kind="analyze", window=window))
    return steps


@dataclass(frozen=True)
class TimedStep:
    step: ExecStep
    candidate_weight: float  # after this step
    min_seconds: float
    max_seconds: float  # math.inf when it can wait forever
    looks: int  # planned looks in the worst case


def timeline(plan: Plan) -> list[TimedStep]:
    """Each step with its candidate weight and its shortest and longest duration."""
    analysis = plan.analysis
    rows: list[TimedStep] = []
    weight = 0.0
    for step in expand_steps(plan):
        low = high = 0.0
        looks = 0
        if step.kind == "weight":
            assert step.weight is not None
            weight = step.weight
        elif step.kind == "analyze":
            assert step.window is not None
            low = analysis.delay + step.window.min
            high = analysis.delay + step.window.max
            if analysis.no_data == "hold" and not step.window.adaptive:
                high += analysis.max_hold  # short of data at the end: hold up to max_hold
            looks = math.ceil((high - analysis.delay) / analysis.interval)
        elif step.kind == "pause":
            assert step.pause is not None
            low = high = step.pause
        else:
            assert step.approve is not None
            high = step.approve.timeout if step.approve.timeout is not None else math.inf
        rows.append(TimedStep(step, weight, low, high, looks))
    return rows


def planned_looks(plan: Plan) -> int:
    """Worst-case number of looks over the whole rollout: the analysis' alpha is spent over it."""
    return max(1, sum(row.looks for row in timeline(plan)))
