"""The interface the engine drives a strategy through, and the steps strategies are made of.

A strategy says what the candidate needs provisioned, the sequence of steps, what each weight
step sets, which gates judge a look against which baseline, and how the rollout ends once the
steps are done. It is declarative and cheap to import: ``plan validate`` and ``plan preview`` read
the same steps ``run`` executes, without network, scipy or a cloud SDK.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from mlrollout.plan.model import AnalyzeWindow, Approve, Candidate, Plan

#: ``mirror``: copy ``weight`` percent of live traffic to the candidate (its answers are
#: dropped; None = the platform's largest share, 0 = stop mirroring). ``native``: the platform
#: runs its own deployment (SageMaker blue/green) while the gates watch, ``window`` long at most.
StepKind = Literal["weight", "analyze", "pause", "approve", "mirror", "native"]
#: Which gates judge a look: every gate against the live baseline (``concurrent``); only the
#: absolute gates when the baseline takes no traffic (``absolute``); or every gate, the
#: ``vs_baseline`` ones against the baseline's own window before the switch (``historical``:
#: blue-green after the switch, while blue is still provisioned).
Comparison = Literal["concurrent", "absolute", "historical"]
#: What happens once every step is done: the candidate takes all traffic and the baseline is
#: retired (``promote``), or the candidate is removed and the baseline keeps serving, the
#: rollout having passed (``remove``: a shadow evaluation, ``then: rollback``).
Ending = Literal["promote", "remove"]


@dataclass(frozen=True)
class ExecStep:
    index: int
    kind: StepKind
    weight: float | None = None  # for "weight": the candidate's new share, percent
    window: AnalyzeWindow | None = None  # for "analyze"
    pause: float | None = None  # for "pause", seconds
    approve: Approve | None = None  # for "approve"
    phase: str | None = None  # the strategy's name for this part ("pre-promotion", ...)

    def describe(self) -> str:
        text = self._describe()
        return f"{self.phase}: {text}" if self.phase else text

    def _describe(self) -> str:
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
        if self.kind == "mirror":
            if self.weight == 0:
                return "stop mirroring traffic to the candidate"
            share = "the platform's largest share" if self.weight is None else f"{self.weight:g}%"
            return f"mirror {share} of live traffic to the candidate (its answers are dropped)"
        if self.kind == "native":
            assert self.window is not None
            return (
                "the platform's own blue/green deployment moves the traffic, gates watching "
                f"(about {format_duration(self.window.max)})"
            )
        assert self.approve is not None
        timeout = self.approve.timeout
        if timeout is None:
            return "wait for approval (no timeout)"
        return (
            f"wait for approval (timeout {format_duration(timeout)}, "
            f"then {self.approve.on_timeout})"
        )


class Strategy(Protocol):
    """One strategy module (``canary``, ``linear``; later ``blue_green``, ``shadow``, ...)."""

    name: str

    def candidate(self, plan: Plan) -> Candidate:
        """What to provision for the candidate (at 0 % traffic) before the first step."""
        ...

    def steps(self, plan: Plan) -> list[ExecStep]:
        """The steps the engine executes, in order."""
        ...

    def weights(self, candidate_weight: float, candidate: str, baseline: str) -> dict[str, float]:
        """The live traffic split a weight step of ``candidate_weight`` percent sets."""
        ...

    def comparison(self, weights: dict[str, float], baseline: str) -> Comparison:
        """Which gates judge a look taken while the endpoint serves ``weights``."""
        ...

    def ending(self, plan: Plan) -> Ending:
        """How the rollout ends once the steps are done."""
        ...

    def winner(self, plan: Plan) -> tuple[str, float] | None:
        """The gate whose pass alone ends a judged stage, and the smallest lift worth shipping
        (``ab_test``'s winner test); None for the others."""
        ...


class SplitStrategy:
    """Strategies that shift live traffic between the baseline and the candidate in steps, and
    promote the candidate at the end (canary, linear). Subclasses say only what the steps are."""

    name: str = ""

    def candidate(self, plan: Plan) -> Candidate:
        return plan.candidate

    def steps(self, plan: Plan) -> list[ExecStep]:  # pragma: no cover - abstract
        raise NotImplementedError

    def weights(self, candidate_weight: float, candidate: str, baseline: str) -> dict[str, float]:
        return {candidate: candidate_weight, baseline: 100.0 - candidate_weight}

    def comparison(self, weights: dict[str, float], baseline: str) -> Comparison:
        # With no traffic on the baseline there is nothing to compare with (a bake at 100 %).
        return "concurrent" if weights.get(baseline, 0.0) > 0 else "absolute"

    def ending(self, plan: Plan) -> Ending:
        return "promote"

    def winner(self, plan: Plan) -> tuple[str, float] | None:
        """The gate whose verdict alone ends the judged stage, with the smallest relative lift
        worth shipping (``ab_test``); None: every gate must pass, as usual."""
        return None
