"""Checks that need the whole plan or the provider's declarations (no network)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from mlrollout.errors import ProviderUnavailable
from mlrollout.plan.model import (
    COMMON_TARGET_KEYS,
    LATENCY_METRICS,
    CanaryStrategy,
    Plan,
    parse_margin,
)
from mlrollout.plan.timeline import expand_steps
from mlrollout.plugins import provider_spec

Path = tuple[str | int, ...]

#: Strategies the engine can execute today (others parse and validate but cannot run yet).
ENGINE_STRATEGIES = frozenset({"canary", "linear"})


@dataclass(frozen=True)
class Finding:
    path: Path
    message: str
    severity: Literal["error", "warning"] = "error"
    at_key: bool = False  # point at the key itself (an unknown key), not its value


def check_plan(plan: Plan) -> list[Finding]:
    found: list[Finding] = []
    provider_problems = _check_provider(plan)
    found += provider_problems
    provider_known = not any(f.path == ("target", "provider") for f in provider_problems)
    found += _check_secrets(plan)
    found += _check_steps(plan)
    found += _check_gates(plan)
    found += _check_analysis(plan)
    if plan.baseline != "auto" and plan.baseline == plan.candidate.name:
        found.append(Finding(("candidate", "name"), "the candidate has the baseline's name"))
    if plan.sandbox is not None and plan.target.provider != "local" and provider_known:
        found.append(
            Finding(("sandbox",), "a sandbox section only applies to provider: local; remove it")
        )
    return found


_SECRET_WORDS = ("password", "passwd", "secret", "token", "credential", "access_key", "api_key")


def _check_secrets(plan: Plan) -> list[Finding]:
    """A plan is recorded verbatim in the state store and shown in previews and reports: it must
    not carry credentials. They come from the environment (or the cloud's credential chain)."""
    found: list[Finding] = []
    for key, value in plan.target.settings().items():
        if any(word in key.lower() for word in _SECRET_WORDS):
            found.append(
                Finding(
                    ("target", key),
                    "credentials do not belong in a plan (it is "
                    "recorded and shown): use the environment or the provider's "
                    "credential chain",
                    at_key=True,
                )
            )
        elif isinstance(value, str) and _userinfo(value):
            found.append(
                Finding(
                    ("target", key),
                    "this URL carries credentials (user:password@):"
                    " use the environment or the provider's credential chain",
                )
            )
    for i, note in enumerate(plan.notify):
        if _userinfo(note.webhook):
            found.append(
                Finding(
                    ("notify", i, "webhook"),
                    "this URL carries credentials "
                    "(user:password@): pass them through the environment",
                )
            )
    return found


def _userinfo(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return bool(parts.scheme and parts.netloc and parts.password)


def _check_provider(plan: Plan) -> list[Finding]:
    target = plan.target
    try:
        spec = provider_spec(target.provider)
    except ProviderUnavailable as exc:
        message = exc.message + (f" ({exc.hint})" if exc.hint else "")
        return [Finding(("target", "provider"), message)]
    found: list[Finding] = []
    allowed = COMMON_TARGET_KEYS | spec.target_keys
    for key in sorted((target.model_extra or {}).keys()):
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            found.append(
                Finding(
                    ("target", key),
                    f"unknown key {key!r} for provider {spec.name!r}{hint}; "
                    f"allowed: {', '.join(sorted(allowed))}",
                    at_key=True,
                )
            )
    for key in sorted(spec.required_keys):
        if target.setting(key) in (None, ""):
            found.append(Finding(("target",), f"provider {spec.name!r} needs target.{key}"))
    kind = plan.strategy.type
    if kind not in spec.strategies or kind not in ENGINE_STRATEGIES:
        now = sorted(spec.strategies & ENGINE_STRATEGIES)
        capable = _capable(spec.capabilities, kind)
        why = (
            f"provider {spec.name!r} cannot run a {kind} rollout"
            if not capable
            else f"the {kind} strategy on provider {spec.name!r} is not supported yet"
        )
        found.append(
            Finding(("strategy", "type"), f"{why}; supported now: {', '.join(now) or 'none'}")
        )
    for problem in spec.check_plan(plan):
        found.append(Finding(problem.path, problem.message))
    return found


def _capable(capabilities: object, kind: str) -> bool:
    if kind == "shadow":
        return bool(getattr(capabilities, "shadow", False))
    return bool(getattr(capabilities, "weights", True))


def _check_steps(plan: Plan) -> list[Finding]:
    if not isinstance(plan.strategy, CanaryStrategy):
        return []
    found: list[Finding] = []
    steps = expand_steps(plan)
    weight = 0.0
    watched = False
    for step in steps:
        path: Path = ("strategy", "steps", step.index)
        if step.kind == "weight":
            assert step.weight is not None
            if step.weight < weight:
                found.append(
                    Finding(
                        (*path, "weight"),
                        f"the weight goes down from {weight:g}% to {step.weight:g}%",
                        "warning",
                    )
                )
            weight = step.weight
        elif step.kind == "analyze":
            watched = True
            if weight == 0:
                found.append(
                    Finding(
                        (*path, "analyze"),
                        "analyze before any weight step: the candidate takes no traffic yet",
                        "warning",
                    )
                )
    if not any(s.kind == "weight" and (s.weight or 0) > 0 for s in steps):
        found.append(
            Finding(
                ("strategy", "steps"),
                "no step gives the candidate traffic: add a step such as '- weight: 10'",
            )
        )
    elif not watched and plan.analysis.gates:
        found.append(
            Finding(
                ("strategy", "steps"),
                "no analyze step: the gates never judge; add '- analyze: 10m' after a weight",
                "warning",
            )
        )
    return found


def _check_gates(plan: Plan) -> list[Finding]:
    found: list[Finding] = []
    seen: set[str] = set()
    for i, gate in enumerate(plan.analysis.gates):
        path: Path = ("analysis", "gates", i)
        if gate.name in seen:
            found.append(Finding((*path, "name"), f"two gates are named {gate.name!r}"))
        seen.add(gate.name)
        if gate.max is None and gate.min is None and gate.vs_baseline is None:
            found.append(Finding(path, "the gate has no bound: give max, min or vs_baseline"))
        if gate.metric == "custom" and not gate.query:
            found.append(Finding((*path, "query"), "a custom gate needs a query"))
        if gate.metric != "custom" and gate.query is not None:
            found.append(Finding((*path, "query"), "query only applies to metric: custom"))
        if gate.metric != "custom" and gate.direction is not None:
            found.append(Finding((*path, "direction"), "direction only applies to metric: custom"))
        for key in ("max", "min"):
            raw = getattr(gate, key)
            if raw is not None:
                try:
                    gate.parse_bound(raw)
                except ValueError as exc:
                    found.append(Finding((*path, key), f"{exc} (for metric {gate.metric})"))
        if gate.max is not None and gate.min is not None:
            try:
                if gate.parse_bound(gate.min) > gate.parse_bound(gate.max):
                    found.append(Finding(path, "min is above max"))
            except ValueError:
                pass
        if gate.metric == "error_rate":
            for key in ("max", "min"):
                raw = getattr(gate, key)
                try:
                    if raw is not None and not 0 <= gate.parse_bound(raw) <= 1:
                        found.append(Finding((*path, key), "an error rate is between 0% and 100%"))
                except ValueError:
                    pass
        if gate.vs_baseline is not None:
            key = "max_increase" if gate.vs_baseline.max_increase is not None else "max_decrease"
            if gate.metric == "requests":
                found.append(
                    Finding((*path, "vs_baseline"), "requests cannot be compared to the baseline")
                )
            try:
                parse_margin(gate.metric, gate.vs_baseline.raw)
            except ValueError as exc:
                found.append(Finding((*path, "vs_baseline", key), str(exc)))
            if gate.metric in LATENCY_METRICS and key == "max_decrease":
                found.append(
                    Finding(
                        (*path, "vs_baseline", key),
                        "latency gets worse when it increases: use max_increase",
                    )
                )
    return found


def _check_analysis(plan: Plan) -> list[Finding]:
    analysis = plan.analysis
    found: list[Finding] = []
    if not isinstance(analysis.source, str):
        found.append(
            Finding(
                ("analysis", "source"),
                "the prometheus metrics source is not supported yet; use source: default",
            )
        )
    for step in expand_steps(plan):
        if step.window is not None and step.window.max < analysis.interval:
            where: Path = (
                ("strategy", "steps", step.index)
                if isinstance(plan.strategy, CanaryStrategy)
                else ("strategy", "every")
            )
            found.append(
                Finding(
                    where,
                    f"the analysis ({step.window.max:g}s) is shorter than one look interval "
                    f"({analysis.interval:g}s): no look would happen",
                )
            )
            break
    if analysis.max_hold < analysis.interval:
        found.append(
            Finding(("analysis", "max_hold"), "max_hold is shorter than one look interval")
        )
    return found
