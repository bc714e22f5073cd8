"""The built-in ``local`` provider: a simulated endpoint with seeded synthetic traffic.

The ``mlrollout.endpoints`` entry point ``local = "mlrollout.sandbox.provider:LocalProviderSpec"``
loads :data:`LocalProviderSpec`, the one instance of :class:`LocalProvider` (entry points load an
object, and the registry expects a :class:`~mlrollout.contracts.ProviderSpec` instance).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlrollout.clock import Clock, ScaledClock, SystemClock, VirtualClock
from mlrollout.contracts import (
    Capabilities,
    EndpointAdapter,
    MetricsSource,
    PlanProblem,
    ProviderContext,
    ProviderSpec,
)
from mlrollout.errors import ProviderError
from mlrollout.plan.model import Plan
from mlrollout.sandbox.checks import world_problems
from mlrollout.sandbox.endpoint import CAPABILITIES, LocalEndpoint, LocalMetrics
from mlrollout.sandbox.traffic import grid_seconds

if TYPE_CHECKING:
    from mlrollout.capture import CaptureSource
    from mlrollout.feedback import FeedbackSource
    from mlrollout.flags import FlagWriter


class LocalProvider:
    """``target.provider: local`` — needs the plan's ``sandbox`` section, nothing else."""

    name: str = "local"
    target_keys: frozenset[str] = frozenset()
    required_keys: frozenset[str] = frozenset()
    capabilities: Capabilities = CAPABILITIES
    strategies: frozenset[str] = frozenset({"canary", "linear", "blue_green", "shadow", "ab_test"})
    install_hint: str = "built in"

    def check_plan(self, plan: Plan) -> list[PlanProblem]:
        sandbox = plan.sandbox
        if sandbox is None:
            return [
                PlanProblem(
                    ("sandbox",),
                    "the local provider simulates the endpoint from a sandbox section: add "
                    "sandbox.variants with the baseline first, then the candidate",
                )
            ]
        names = list(sandbox.variants)
        listed = ", ".join(names)
        problems = []
        world = plan.target.endpoint_url
        if world and "://" in world:
            problems.append(
                PlanProblem(
                    ("target", "endpoint_url"),
                    "for the local sandbox, endpoint_url is a directory or .db file where the "
                    "simulated endpoint lives (shared by runners with different --state), not "
                    "a URL",
                )
            )
        candidate = plan.candidate.name
        if candidate not in sandbox.variants:
            problems.append(
                PlanProblem(
                    ("candidate", "name"),
                    f"candidate {candidate!r} is not a sandbox variant (the sandbox lists "
                    f"{listed})",
                )
            )
        elif candidate == names[0]:
            problems.append(
                PlanProblem(
                    ("candidate", "name"),
                    f"candidate {candidate!r} is the first sandbox variant, which serves 100 % "
                    "at the start (it is the baseline): list the baseline first, then the "
                    "candidate",
                )
            )
        if plan.baseline != "auto" and plan.baseline not in sandbox.variants:
            problems.append(
                PlanProblem(
                    ("baseline",),
                    f"baseline {plan.baseline!r} is not a sandbox variant (the sandbox lists "
                    f"{listed})",
                )
            )
        return problems + world_problems(plan)

    def describe_calls(self, plan: Plan) -> dict[str, list[str]]:
        return {
            "describe": ["sandbox: read endpoint record"],
            "prepare": [f"sandbox: add variant {plan.candidate.name} at 0%"],
            "set_traffic": ["sandbox: set weights"],
            "set_shadow": ["sandbox: set the mirrored share"],
            "finalize": ["sandbox: remove variant"],
            "owner": ["sandbox: read/write the endpoint's owner mark"],
            "metrics": ["sandbox: synthesize windows (seeded)"],
        }

    def clock(
        self, plan: Plan, resume_at: float | None, idle_since: float | None, wall: float
    ) -> Clock:
        """Virtual time at ``speed: max``, sped-up time for a numeric speed (real time without a
        sandbox section, which ``plan validate`` refuses). A resumed virtual clock continues from
        the journal's last instant (``resume_at``); a resumed sped-up clock also counts the wall
        time that passed since the last event (``idle_since``), sped up: simulated time passes
        while nobody drives, so a cron-style ``reconcile`` finds the next look due, as it would
        on a real endpoint."""
        sandbox = plan.sandbox
        if sandbox is None:
            return SystemClock()
        start = resume_at if resume_at else wall
        if sandbox.speed == "max":
            return VirtualClock(start)
        factor = float(sandbox.speed)
        if resume_at and idle_since:
            start += max(0.0, wall - idle_since) * factor
        return ScaledClock(factor, start)

    def open(self, context: ProviderContext) -> tuple[EndpointAdapter, MetricsSource]:
        plan = context.plan
        if plan.sandbox is None:
            raise ProviderError(
                "the local provider needs the plan's sandbox section",
                hint="run `mlrollout plan validate` for details",
            )
        grid = grid_seconds(plan)  # the coarsest traffic grid every wait of the plan falls on
        world = plan.target.endpoint_url
        if world:
            # The simulated endpoint lives in a store of its own that runners with different
            # state stores share, as they would share a cloud endpoint. That store's writes are
            # not fenced by this state store's lease: the ownership mark keeps runners apart.
            from mlrollout.state.sqlite import open_sqlite_store

            endpoint = LocalEndpoint(
                plan.target.endpoint,
                plan.sandbox,
                open_sqlite_store(world),
                context.clock,
                grid=grid,
            )
        else:
            endpoint = LocalEndpoint(
                plan.target.endpoint,
                plan.sandbox,
                context.store,
                context.clock,
                context.lease,
                grid=grid,
            )
        # Simulated time never runs backwards on one sandbox endpoint: a rollout whose clock
        # starts before the endpoint's last traffic change (a second `speed: max` rollout
        # started right after the first, whose virtual time ran ahead) starts after it. Its
        # traffic would otherwise be recorded at the later instant while it analyzed from the
        # earlier one, and the first minutes of its windows would miss the candidate's traffic.
        record = endpoint.record()
        if record and record.get("history"):
            _catch_up(context.clock, float(record["history"][-1][0]))
        return endpoint, LocalMetrics(endpoint, grid)

    def open_capture(self, context: ProviderContext) -> CaptureSource:
        """The sandbox's capture source: simulated predictions of the mirrored requests, from
        the variants' ``accuracy`` (see :mod:`mlrollout.sandbox.capture`)."""
        from mlrollout.sandbox.capture import SandboxCapture

        _, metrics = self.open(context)
        assert isinstance(metrics, LocalMetrics)
        return SandboxCapture(metrics)

    def open_flags(self, context: ProviderContext, writer: FlagWriter) -> FlagWriter:
        """The flag writer ``writer`` (the plan's flag file), which also notes each version
        written in the simulated endpoint's flag history: from the first one on, the sandbox's
        users are routed by the flag through the real flagd evaluator, not by the weights (see
        :class:`~mlrollout.sandbox.endpoint.RecordingFlagWriter`)."""
        from mlrollout.sandbox.endpoint import RecordingFlagWriter

        flags = context.plan.flags
        if flags is None:
            return writer
        endpoint, _ = self.open(context)
        assert isinstance(endpoint, LocalEndpoint)
        return RecordingFlagWriter(writer, endpoint, flags.key)

    def open_feedback(self, context: ProviderContext) -> FeedbackSource:
        """The sandbox's feedback source: the simulated labels and ratings of each variant's
        traffic, arriving ``sandbox.label_delay`` after their bucket (see
        :mod:`mlrollout.sandbox.feedback`)."""
        from mlrollout.sandbox.feedback import SandboxFeedback

        _, metrics = self.open(context)
        assert isinstance(metrics, LocalMetrics)
        return SandboxFeedback(metrics)


def _catch_up(clock: object, instant: float) -> None:
    """Move a simulated clock forward to ``instant`` if it is behind (real clocks are left)."""
    if isinstance(clock, VirtualClock | ScaledClock) and clock.now() < instant:
        clock.set(instant)


#: The object the ``local`` entry point loads.
LocalProviderSpec: ProviderSpec = LocalProvider()
