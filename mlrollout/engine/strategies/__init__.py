"""Strategy modules, one per strategy, behind :class:`~.base.Strategy`. The engine runs those in
:data:`STRATEGIES`; a plan naming another is refused by ``plan validate``. A new strategy is a
new module registered here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlrollout.engine.strategies.ab_test import ABTest
from mlrollout.engine.strategies.base import Comparison, Ending, ExecStep, StepKind, Strategy
from mlrollout.engine.strategies.blue_green import BlueGreen
from mlrollout.engine.strategies.canary import Canary
from mlrollout.engine.strategies.linear import Linear
from mlrollout.engine.strategies.shadow import Shadow

if TYPE_CHECKING:
    from mlrollout.plan.model import Plan

STRATEGIES: dict[str, Strategy] = {
    s.name: s for s in (Canary(), Linear(), BlueGreen(), Shadow(), ABTest())
}


def strategy_for(plan: Plan) -> Strategy | None:
    """The module that runs ``plan``'s strategy; None if the engine cannot run it yet."""
    return STRATEGIES.get(plan.strategy.type)


__all__ = [
    "STRATEGIES",
    "Comparison",
    "Ending",
    "ExecStep",
    "StepKind",
    "Strategy",
    "strategy_for",
]
