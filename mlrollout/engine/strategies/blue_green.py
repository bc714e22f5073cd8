"""``blue_green``: green (the candidate) is provisioned at full capacity beside blue (the
baseline) before it takes any traffic, judged on ``preview`` percent of live traffic
(``pre_promotion``), switched to all at once or in judged steps (``switch``), judged again at
100 % (``post_promotion``) against blue's own window before the switch — a *historical*
baseline, since blue then serves no one — and blue stays provisioned for ``keep_previous``, so
that a failure or an ``abort`` until then is an instant switch back (blue never scaled down).
After that the promotion retires blue.

The steps are the engine's ordinary ones, labelled with their phase for the live view and the
report; a failing gate at any point rolls back as a canary's does: traffic to blue first, then
green removed (``rollback.cleanup``). With ``preview: 0`` and a ``pre_promotion``, green is
judged on a mirrored copy of live requests (the platform's largest share), never serving a user.

With ``native: true`` (SageMaker) the platform runs these phases itself: the strategy is one
``native`` step, which the engine follows through the adapter's native calls while the absolute
gates watch (see :class:`mlrollout.contracts.EndpointAdapter`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlrollout.engine.strategies.base import Comparison, ExecStep, SplitStrategy

if TYPE_CHECKING:
    from mlrollout.plan.model import Plan

PRE, SWITCH, POST, KEEP = "pre-promotion", "switch", "post-promotion", "keep blue"
NATIVE = "native deployment"


class BlueGreen(SplitStrategy):
    name = "blue_green"

    def steps(self, plan: Plan) -> list[ExecStep]:
        from mlrollout.plan.model import AnalyzeWindow, BlueGreenStrategy

        strategy = plan.strategy
        if not isinstance(strategy, BlueGreenStrategy):  # a partial plan (validation goes on)
            return []
        steps: list[ExecStep] = []

        def add(kind: str, phase: str, **kw: object) -> None:
            steps.append(ExecStep(index=len(steps), kind=kind, phase=phase, **kw))  # type: ignore[arg-type]

        if strategy.preview > 0:
            add("weight", PRE, weight=strategy.preview)
        mirrored = strategy.preview == 0 and strategy.pre_promotion is not None
        if mirrored:  # judged on a copy of live requests, where the platform mirrors
            add("mirror", PRE, weight=None)
        if strategy.pre_promotion is not None:
            add("analyze", PRE, window=strategy.pre_promotion)
        if mirrored:
            add("mirror", PRE, weight=0.0)
        switch = strategy.switch
        if switch != "all_at_once":
            every = AnalyzeWindow(min=switch.every, max=switch.every, adaptive=False)
            weight = strategy.preview
            while weight + switch.step < 100.0:
                weight += switch.step
                add("weight", SWITCH, weight=weight)
                add("analyze", SWITCH, window=every)
        add("weight", SWITCH, weight=100.0)
        if strategy.post_promotion is not None:
            add("analyze", POST, window=strategy.post_promotion)
        if strategy.keep_previous > 0:
            add("pause", KEEP, pause=strategy.keep_previous)
        if strategy.native:
            # The platform runs the same phases itself; the gates watch it all as one stage.
            length = sum(
                (s.window.max if s.window is not None else 0.0) + (s.pause or 0.0) for s in steps
            )
            window = AnalyzeWindow(min=length, max=length, adaptive=False)
            return [ExecStep(index=0, kind="native", phase=NATIVE, window=window)]
        return steps

    def comparison(self, weights: dict[str, float], baseline: str) -> Comparison:
        # After the switch blue serves no one: green is compared with blue's window before it.
        return "concurrent" if weights.get(baseline, 0.0) > 0 else "historical"
