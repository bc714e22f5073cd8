"""``shadow``: a copy of ``percent`` of live requests goes to the candidate, whose answers are
dropped — it serves no one — while the gates compare it with the baseline on those requests for
``duration`` (``{min, max}``: adaptive, as an analyze). Then, as ``then`` says:

- ``promote``: the mirror stops and the plan's ``steps`` follow as a canary's (default: straight
  to 100 %);
- ``rollback``: an evaluation — the mirror stops and the shadow is removed either way; the
  rollout succeeds (exit 0) when every gate passed, and rolls back (exit 1) when one failed;
- ``stop``: the mirror goes on, the gates keep judging, and the rollout waits for ``mlrollout
  promote`` (then as ``promote``) or ``abort`` (exit 3 while it waits).

A failing gate at any point rolls back as a canary's does: the mirror stops, and the candidate
is removed (``rollback.cleanup``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlrollout.engine.strategies.base import Ending, ExecStep, SplitStrategy
from mlrollout.engine.strategies.canary import plan_steps

if TYPE_CHECKING:
    from mlrollout.plan.model import Plan

SHADOW, AFTER = "shadow", "after the shadow"


class Shadow(SplitStrategy):
    name = "shadow"

    def steps(self, plan: Plan) -> list[ExecStep]:
        from mlrollout.plan.model import Approve, ShadowStrategy, Step

        strategy = plan.strategy
        if not isinstance(strategy, ShadowStrategy):  # a partial plan (validation goes on)
            return []
        steps = [
            ExecStep(index=0, kind="mirror", weight=strategy.percent, phase=SHADOW),
            ExecStep(index=1, kind="analyze", window=strategy.duration, phase=SHADOW),
        ]
        if strategy.then == "stop":  # the gates keep judging the mirrored requests meanwhile
            steps.append(ExecStep(index=2, kind="approve", approve=Approve(), phase=SHADOW))
        steps.append(ExecStep(index=len(steps), kind="mirror", weight=0.0, phase=SHADOW))
        if strategy.then != "rollback":
            after = strategy.steps or [Step(weight=100.0)]
            steps += plan_steps(after, first=len(steps), phase=AFTER)
        return steps

    def ending(self, plan: Plan) -> Ending:
        then = getattr(plan.strategy, "then", "promote")
        return "remove" if then == "rollback" else "promote"
