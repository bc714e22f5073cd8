"""``canary``: the plan's own steps (``weight``, ``analyze``, ``pause``, ``approve``), in order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlrollout.engine.strategies.base import ExecStep, SplitStrategy

if TYPE_CHECKING:
    from mlrollout.plan.model import Plan, Step


class Canary(SplitStrategy):
    name = "canary"

    def steps(self, plan: Plan) -> list[ExecStep]:
        from mlrollout.plan.model import CanaryStrategy

        strategy = plan.strategy
        if not isinstance(strategy, CanaryStrategy):  # a partial plan (validation goes on)
            return []
        return plan_steps(strategy.steps)


def plan_steps(steps: list[Step], *, first: int = 0, phase: str | None = None) -> list[ExecStep]:
    """A plan's ``steps`` list as executable steps, numbered from ``first``."""
    return [
        ExecStep(
            index=first + i,
            kind=step.kind,  # type: ignore[arg-type]
            weight=step.weight,
            window=step.analyze,
            pause=step.pause,
            approve=step.approve,
            phase=phase,
        )
        for i, step in enumerate(steps)
    ]
