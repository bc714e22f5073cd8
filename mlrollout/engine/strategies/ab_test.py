"""``ab_test``: the candidate takes ``split`` percent of live traffic, and one judged stage of at
most ``max_duration`` runs until the winner test on the ``metric`` gate decides: a two-sided,
always-valid test of the relative lift (:mod:`mlrollout.analysis.winner`). Every other gate is a
guardrail, judged all along as in a canary: a guardrail failure ends the test with the baseline
kept (exit 1), as does a test that finds no lift of at least ``min_effect`` or that is still
undecided at ``max_duration`` (no winner).

When the candidate wins: ``then: promote_winner`` moves it to 100 % and retires the baseline
(exit 0); ``then: stop`` keeps the split and waits for a human (``mlrollout promote``: the
candidate goes to 100 %; ``abort``: the baseline is kept; exit 3 while it waits).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlrollout.engine.strategies.base import ExecStep, SplitStrategy

if TYPE_CHECKING:
    from mlrollout.plan.model import Plan

TEST, WINNER = "a/b test", "winner"


class ABTest(SplitStrategy):
    name = "ab_test"

    def steps(self, plan: Plan) -> list[ExecStep]:
        from mlrollout.plan.model import ABTestStrategy, AnalyzeWindow, Approve

        strategy = plan.strategy
        if not isinstance(strategy, ABTestStrategy):  # a partial plan (validation goes on)
            return []
        window = AnalyzeWindow(min=0.0, max=strategy.max_duration, adaptive=True)
        steps = [
            ExecStep(index=0, kind="weight", weight=strategy.split, phase=TEST),
            ExecStep(index=1, kind="analyze", window=window, phase=TEST),
        ]
        if strategy.then == "stop":  # the split stays, the guardrails keep watching
            steps.append(ExecStep(index=2, kind="approve", approve=Approve(), phase=WINNER))
        steps.append(ExecStep(index=len(steps), kind="weight", weight=100.0, phase=WINNER))
        return steps

    def winner(self, plan: Plan) -> tuple[str, float] | None:
        """The gate whose verdict decides the test, and the smallest lift worth shipping (a
        fraction)."""
        strategy = plan.strategy
        metric = getattr(strategy, "metric", None)
        if not metric:
            return None
        return str(metric), float(getattr(strategy, "min_effect", 1.0)) / 100.0
