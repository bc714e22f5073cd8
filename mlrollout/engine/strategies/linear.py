"""``linear``: the candidate's share grows by ``step`` percent every ``every``, judged all along,
until the next increment would reach 100 % (then the promotion takes it there)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlrollout.engine.strategies.base import ExecStep, SplitStrategy

if TYPE_CHECKING:
    from mlrollout.plan.model import Plan


class Linear(SplitStrategy):
    name = "linear"

    def steps(self, plan: Plan) -> list[ExecStep]:
        from mlrollout.plan.model import AnalyzeWindow, LinearStrategy

        strategy = plan.strategy
        if not isinstance(strategy, LinearStrategy):  # a partial plan (validation goes on)
            return []
        window = AnalyzeWindow(min=strategy.every, max=strategy.every, adaptive=False)
        steps: list[ExecStep] = []
        weight = 0.0
        while True:
            weight = min(100.0, weight + strategy.step)
            if weight >= 100.0:
                return steps
            steps.append(ExecStep(index=len(steps), kind="weight", weight=weight))
            steps.append(ExecStep(index=len(steps), kind="analyze", window=window))
