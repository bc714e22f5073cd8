"""What ``plan validate`` checks in a sandbox's world beyond single values (no network, no
clock): the names its events and custom gates use, and what the events make of the variants.
The warnings that need the plan's timeline (events that never happen) are in
:func:`world_warnings`."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable

from mlrollout.contracts import PlanProblem
from mlrollout.plan.model import SANDBOX_BUILTIN_METRICS, Plan, Sandbox
from mlrollout.sandbox.world import World
from mlrollout.units import format_duration


def _unknown(name: str, known: Iterable[str], what: str) -> str:
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listed = f"defined: {', '.join(names)}" if names else "none is defined"
    return f"{what} {name!r} is not defined{hint}; {listed}"


def custom_metric(gate_name: str, query: dict[str, object] | None) -> str:
    """The sandbox metric a ``custom`` gate reads: ``query.metric``, else the gate's name."""
    if query and isinstance(query.get("metric"), str):
        return str(query["metric"])
    return gate_name


def world_problems(plan: Plan) -> list[PlanProblem]:
    sandbox = plan.sandbox
    if sandbox is None:
        return []
    problems = _event_problems(sandbox)
    if plan.analysis.source != "default":
        return problems  # another metrics source reads the gates: its own checks apply
    customs = {name for v in sandbox.variants.values() for name in v.custom}
    for i, gate in enumerate(plan.analysis.gates):
        if gate.metric != "custom":
            continue
        path: tuple[str | int, ...] = ("analysis", "gates", i)
        query = gate.query or {}
        extra = sorted(set(query) - {"metric"})
        if extra:
            problems.append(
                PlanProblem(
                    (*path, "query"),
                    f"the sandbox reads only query.metric (a sandbox custom metric, accuracy or "
                    f"feedback), not {', '.join(extra)}",
                )
            )
        name = custom_metric(gate.name, query)
        where = (*path, "query", "metric") if "metric" in query else (*path, "name")
        if name in SANDBOX_BUILTIN_METRICS:
            if not any(getattr(v, name) is not None for v in sandbox.variants.values()):
                problems.append(
                    PlanProblem(
                        where,
                        f"no sandbox variant simulates {name}: give the variants "
                        f"`{name}: 0.9` (a probability)",
                    )
                )
        elif name not in customs:
            message = _unknown(name, customs, "sandbox custom metric")
            problems.append(
                PlanProblem(
                    where,
                    f"{message}; a custom gate reads a variant's `custom: {{{name}: RATE}}` "
                    f"(or {' / '.join(SANDBOX_BUILTIN_METRICS)}) with query: {{metric: NAME}}",
                )
            )
    return problems


def _event_problems(sandbox: Sandbox) -> list[PlanProblem]:
    problems: list[PlanProblem] = []
    world = World(sandbox)
    for i, event in enumerate(sandbox.events):
        path: tuple[str | int, ...] = ("sandbox", "events", i)
        variant = event.variant
        if variant is None:
            continue
        if variant not in sandbox.variants:
            problems.append(
                PlanProblem((*path, "variant"), _unknown(variant, sandbox.variants, "variant"))
            )
            continue
        for name in event.custom or {}:
            known = sandbox.variants[variant].custom
            if name not in known:
                problems.append(
                    PlanProblem(
                        (*path, "custom", name),
                        _unknown(name, known, f"custom metric of {variant}")
                        + f": declare it under sandbox.variants.{variant}.custom first",
                    )
                )
        behaviour = world.behaviour(variant, event.at)
        sets_latency = event.latency_p50 is not None or event.latency_p99 is not None
        if sets_latency and behaviour.latency_p99 < behaviour.latency_p50:
            problems.append(
                PlanProblem(
                    path,
                    f"from {_at(event.at)} {variant}'s latency_p99 "
                    f"({behaviour.latency_p99 * 1000:g}ms) would be below its latency_p50 "
                    f"({behaviour.latency_p50 * 1000:g}ms): change both",
                )
            )
    return problems


def world_warnings(
    sandbox: Sandbox, worst_case: float, longest_analysis: float
) -> list[tuple[tuple[str | int, ...], str]]:
    """Events that never happen or happened before the start, and a world that can never give
    the gates data: (path, message) pairs ``plan validate`` shows as warnings."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    for i, event in enumerate(sandbox.events):
        path: tuple[str | int, ...] = ("sandbox", "events", i, "at")
        if event.at < 0:
            found.append(
                (
                    path,
                    f"at {_at(event.at)} is before the rollout starts: the change is in "
                    "effect from the start",
                )
            )
        elif math.isfinite(worst_case) and event.at >= worst_case:
            found.append(
                (
                    path,
                    f"at {_at(event.at)} is after the rollout's worst case "
                    f"({format_duration(worst_case)}): it never happens",
                )
            )
    if sandbox.rps == 0 and not any(e.rps not in (None, 0) for e in sandbox.events):
        found.append(
            (
                ("sandbox", "rps"),
                "no traffic at all: no gate can pass, every analysis holds "
                "and ends by on_inconclusive",
            )
        )
    if longest_analysis > 0 and sandbox.metrics_delay >= longest_analysis:
        found.append(
            (
                ("sandbox", "metrics_delay"),
                f"metrics arrive {format_duration(sandbox.metrics_delay)} "
                f"late, after the longest analysis ({format_duration(longest_analysis)}) ends: "
                "its looks see no data",
            )
        )
    return found


def _at(seconds: float) -> str:
    return ("-" if seconds < 0 else "") + (format_duration(abs(seconds)) or "0s")
