"""Checks that need the whole plan or the provider's declarations (no network)."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from mlrollout.contracts import runnable_strategies
from mlrollout.errors import ProviderUnavailable
from mlrollout.plan.model import (
    COMMON_TARGET_KEYS,
    LATENCY_METRICS,
    ABTestStrategy,
    BlueGreenStrategy,
    CanaryStrategy,
    Plan,
    parse_margin,
)
from mlrollout.plan.timeline import expand_steps
from mlrollout.plugins import METRICS_GROUP, metrics_source_spec, names, provider_spec

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Finding:
    path: Path
    message: str
    severity: Literal["error", "warning"] = "error"
    at_key: bool = False  # point at the key itself (an unknown key), not its value


# ------------------------------------------------------------------- partially valid plans


class PartInvalid(Exception):
    """A check read a part of the plan that did not validate: that check cannot run."""


class InvalidPart:
    """Stands, in a partially valid plan, for a section that did not validate (its problems are
    reported already). Reading it raises :class:`PartInvalid`, so a check that needs it is
    skipped while the checks that read only valid parts still run. ``known`` holds values of it
    that are valid all the same (a strategy's ``type``)."""

    __slots__ = ("_known", "_part")  # underscored: never one of the plan's own keys

    def __init__(self, part: str, known: dict[str, Any] | None = None) -> None:
        self._part = part
        self._known = known or {}

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        if key in self._known:
            return self._known[key]
        raise PartInvalid(self._part)

    def _invalid(self, *args: object) -> Any:
        raise PartInvalid(self._part)

    __iter__ = __len__ = __bool__ = __contains__ = __getitem__ = _invalid
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _invalid
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"InvalidPart({self._part!r})"


def is_partial(plan: Plan) -> bool:
    """Does ``plan`` stand in for an invalid one (some section is an :class:`InvalidPart`)?"""
    return any(isinstance(value, InvalidPart) for value in vars(plan).values())


def _guarded(check: Callable[..., list[Finding]], *args: Any) -> list[Finding]:
    try:
        return check(*args)
    except PartInvalid:
        return []


# --------------------------------------------------------------------------------- the checks


def check_plan(plan: Plan) -> list[Finding]:
    """Every problem the plan's parts show together and against the provider. On a partially
    valid plan (see :class:`InvalidPart`) each check runs if the parts it reads are valid. A
    fleet plan is checked target by target (:func:`mlrollout.plan.fleet.check_fleet`)."""
    from mlrollout.plan.fleet import check_fleet

    try:
        fleet = bool(plan.targets)
    except PartInvalid:  # reported by the loader: the targets cannot be checked one by one
        return []
    if fleet:
        return _guarded(check_fleet, plan)
    found: list[Finding] = _guarded(check_fleet, plan)  # a plain plan: "waves without targets"
    provider_problems = _guarded(_check_provider, plan)
    found += provider_problems
    provider_known = not any(f.path == ("target", "provider") for f in provider_problems)
    from mlrollout.capture.checks import check_prediction_gates
    from mlrollout.feedback.checks import check_quality_gates

    for check in (
        _check_secrets,
        _check_steps,
        _check_blue_green,
        _check_ab_test,
        check_prediction_gates,
        check_quality_gates,
        _check_flags,
        _check_gates,
        _check_analysis,
        _check_baseline,
    ):
        found += _guarded(check, plan)
    if provider_known:
        found += _guarded(_check_sandbox, plan)
    return found


def _check_flags(plan: Plan) -> list[Finding]:
    from mlrollout.flags.checks import check_flags

    return [Finding(p.path, p.message) for p in check_flags(plan)]


def _check_baseline(plan: Plan) -> list[Finding]:
    if plan.baseline != "auto" and plan.baseline == plan.candidate.name:
        return [Finding(("candidate", "name"), "the candidate has the baseline's name")]
    return []


def _check_sandbox(plan: Plan) -> list[Finding]:
    if plan.sandbox is not None and plan.target.provider != "local":
        return [
            Finding(("sandbox",), "a sandbox section only applies to provider: local; remove it")
        ]
    if plan.sandbox is None:
        return []
    from mlrollout.plan.timeline import timeline
    from mlrollout.sandbox.checks import world_warnings

    rows = timeline(plan)
    worst = sum(row.max_seconds for row in rows) if rows else math.inf
    longest = max((row.max_seconds for row in rows if row.step.kind == "analyze"), default=0.0)
    return [
        Finding(path, message, "warning")
        for path, message in world_warnings(plan.sandbox, worst, longest)
    ]


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
        if note.pushgateway is not None:  # it takes its own token_env only (no shared one)
            key, url, instead = "pushgateway", note.pushgateway, ("token_env instead", "token_env")
        elif note.webhook is not None:
            key, url = "webhook", note.webhook
            instead = (
                f"token_env (or {WEBHOOK_TOKEN_ENV}) instead, or the whole URL through url_env",
                f"token_env (or {WEBHOOK_TOKEN_ENV}), or the whole URL through url_env",
            )
        else:
            continue  # the URL comes from the environment (url_env): never in the plan
        if _userinfo(url, user_alone=True):  # a token rides as a user name too
            found.append(
                Finding(
                    ("notify", i, key),
                    f"this URL carries credentials (user:password@ or token@): give the {key} "
                    f"a bearer token through {instead[0]}",
                )
            )
        elif (param := _credential_param(url)) is not None:
            found.append(
                Finding(
                    ("notify", i, key),
                    f"this URL carries a credential in its query string ({param}=...), and a "
                    f"plan is recorded and shown: give the {key} a bearer token through "
                    f"{instead[1]}",
                )
            )
    # Locations of records the rollout reads or writes: their credentials come from the
    # environment too (MLFLOW_TRACKING_TOKEN, the cloud's chain), never a SAS or a password.
    where: list[tuple[tuple[str | int, ...], str | None, str]] = [
        (
            ("mlflow", "tracking_uri"),
            plan.mlflow.tracking_uri if plan.mlflow else None,
            "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN",
        ),
        (("flags", "file"), plan.flags.file if plan.flags else None, _CHAIN),
        (("feedback", "source", "jsonl"), plan.feedback.jsonl if plan.feedback else None, _CHAIN),
        (("capture", "source", "jsonl"), plan.capture.jsonl if plan.capture else None, _CHAIN),
    ]
    for path, location, use in where:
        if location is None:
            continue
        if _userinfo(location, user_alone=True):
            what = "credentials (user:password@ or token@)"
        elif (param := _credential_param(location)) is not None:
            what = f"a credential in its query string ({param}=...)"
        else:
            continue
        found.append(
            Finding(
                path,
                f"this location carries {what}, and a plan is recorded and shown: use {use}",
            )
        )
    return found


_CHAIN = "the environment or the cloud's credential chain"

#: The environment variable the webhook notifier sends as ``Authorization: Bearer``.
WEBHOOK_TOKEN_ENV = "MLROLLOUT_WEBHOOK_TOKEN"
#: Query parameters that are credentials by their whole name (compared in lower case, - as _)...
_CREDENTIAL_PARAMS = frozenset(
    {"key", "apikey", "sig", "signature", "code", "auth", "authorization", "pass", "pwd", "jwt"}
    | {"bearer", "hmac", "sas", "session", "sessionid", "sid", "ticket", "otp"}
)
#: ... or by a word in it (``access_token``, ``client_secret``, ``X-Amz-Credential``, ``apiKey``)
_CREDENTIAL_WORDS = (*_SECRET_WORDS, "apikey", "signature", "passphrase", "auth_")
#: ... or by how it ends (``private_key``, ``subscription-key``, ``hook_sig``).
_CREDENTIAL_ENDINGS = ("_key", "_sig", "_pass", "_pwd", "_auth", "_session")


def _credential_param(url: str) -> str | None:
    """The name of the first query parameter of ``url`` that looks like a credential."""
    from urllib.parse import parse_qsl, urlsplit

    try:
        query = urlsplit(url).query
    except ValueError:
        return None
    for name, _ in parse_qsl(query, keep_blank_values=True):
        word = name.strip().lower().replace("-", "_")
        if (
            word in _CREDENTIAL_PARAMS
            or any(part in word for part in _CREDENTIAL_WORDS)
            or word.endswith(_CREDENTIAL_ENDINGS)
        ):
            return name if len(name) <= 32 else name[:32] + "..."
    return None


def _userinfo(url: str, *, user_alone: bool = False) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    secret = parts.password if not user_alone else parts.password or parts.username
    return bool(parts.scheme and parts.netloc and secret)


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
    found += _guarded(_check_strategy_runs, spec, plan)
    found += _guarded(_check_blue_green_on, spec, plan)
    found += _guarded(_check_provider_limits, spec, plan)
    return found


def _check_strategy_runs(spec: Any, plan: Plan) -> list[Finding]:
    kind = plan.strategy.type
    runnable = runnable_strategies(spec)
    if kind in runnable:
        return []
    capable = _capable(spec.capabilities, kind)
    why = (
        f"provider {spec.name!r} cannot run a {kind} rollout"
        if not capable
        else f"the {kind} strategy on provider {spec.name!r} is not supported yet"
    )
    if kind == "shadow" and not capable:
        why += (
            " (it cannot mirror traffic: a canary judges the candidate on a small share of live "
            "traffic instead, and an ab_test compares the two on a split)"
        )
    now = ", ".join(sorted(runnable)) or "none"
    return [Finding(("strategy", "type"), f"{why}; supported now: {now}")]


def _check_blue_green_on(spec: Any, plan: Plan) -> list[Finding]:
    """What of a blue-green plan the platform must be able to do: run its own blue/green
    deployment (``native``), or mirror traffic (a ``pre_promotion`` with ``preview: 0``)."""
    strategy = plan.strategy
    if not isinstance(strategy, BlueGreenStrategy):
        return []
    capabilities = spec.capabilities
    if strategy.native:
        if getattr(capabilities, "native_blue_green", False):
            return []
        return [
            Finding(
                ("strategy", "native"),
                f"provider {spec.name!r} has no blue/green deployment of its own (native is "
                "for sagemaker); with native: false mlrollout provisions green, moves the "
                "traffic and judges it itself",
            )
        ]
    if strategy.pre_promotion is not None and strategy.preview == 0:
        if getattr(capabilities, "shadow", False):
            return []
        return [
            Finding(
                ("strategy", "pre_promotion"),
                f"with preview: 0 green is judged on mirrored traffic, and provider "
                f"{spec.name!r} cannot mirror: give green some live traffic before the switch "
                "(e.g. preview: 5, percent)",
            )
        ]
    return []


def _check_provider_limits(spec: Any, plan: Plan) -> list[Finding]:
    try:
        problems = spec.check_plan(plan)
    except Exception:
        if is_partial(plan):  # the provider's checks need what did not validate: fix that first
            return []
        raise
    return [Finding(problem.path, problem.message) for problem in problems]


def _capable(capabilities: object, kind: str) -> bool:
    if kind == "shadow":
        return bool(getattr(capabilities, "shadow", False))
    return bool(getattr(capabilities, "weights", True))


def _check_blue_green(plan: Plan) -> list[Finding]:
    strategy = plan.strategy
    if not isinstance(strategy, BlueGreenStrategy):
        return []
    found: list[Finding] = []
    unjudged = strategy.post_promotion is None and strategy.pre_promotion is None
    if unjudged and isinstance(strategy.switch, str) and plan.analysis.gates:
        found.append(
            Finding(
                ("strategy",),
                "no pre_promotion, post_promotion or stepped switch: the gates never judge "
                "green; add post_promotion: 10m (or pre_promotion with a preview)",
                "warning",
            )
        )
    return found


def _check_ab_test(plan: Plan) -> list[Finding]:
    """The winner gate of an A/B test: named, a custom metric, no bound, a direction."""
    strategy = plan.strategy
    if not isinstance(strategy, ABTestStrategy):
        return []
    gates = {g.name: (i, g) for i, g in enumerate(plan.analysis.gates)}
    if strategy.metric not in gates:
        names = ", ".join(gates) or "none"
        return [
            Finding(
                ("strategy", "metric"),
                f"no gate is named {strategy.metric!r} (the gates: {names}); the winner test "
                "reads that gate, e.g. {name: conversion, metric: custom, query: {...}, "
                "direction: decrease}",
            )
        ]
    i, gate = gates[strategy.metric]
    path: Path = ("analysis", "gates", i)
    found: list[Finding] = []
    if gate.metric != "custom":
        found.append(
            Finding(
                (*path, "metric"),
                f"the winner test compares a business metric (a custom gate: conversions or "
                f"revenue per request), not {gate.metric}; keep {gate.metric} as a guardrail",
            )
        )
    if gate.max is not None or gate.min is not None or gate.vs_baseline is not None:
        found.append(
            Finding(
                path,
                "the winner gate takes no max, min or vs_baseline: the test asks which variant "
                "is better, with strategy.min_effect as the smallest lift worth shipping",
            )
        )
    if gate.direction is None:
        found.append(
            Finding(
                (*path, "direction"),
                "say which way is worse, so that better is the other: direction: decrease "
                "(more is better, as for conversion) or increase (less is better)",
            )
        )
    return found


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
    winner = plan.strategy.metric if isinstance(plan.strategy, ABTestStrategy) else None
    for i, gate in enumerate(plan.analysis.gates):
        path: Path = ("analysis", "gates", i)
        if gate.name in seen:
            found.append(Finding((*path, "name"), f"two gates are named {gate.name!r}"))
        seen.add(gate.name)
        unbounded = gate.max is None and gate.min is None and gate.vs_baseline is None
        if unbounded and gate.name != winner:
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


def _check_metrics_source(source: str | dict[str, dict[str, Any]]) -> list[Finding]:
    """``analysis.source: {NAME: CONFIG}`` names an installed ``mlrollout.metrics`` plugin, whose
    ``check_config`` then checks CONFIG (no network)."""
    if isinstance(source, str):
        return []
    [(name, config)] = source.items()
    path: Path = ("analysis", "source", name)
    if name == "default":
        return [Finding(path, "source: default takes no settings", at_key=True)]
    try:
        spec = metrics_source_spec(name)
    except ProviderUnavailable as exc:
        if name in names(METRICS_GROUP):  # installed, but broken or claimed twice
            return [Finding(path, exc.message + (f" ({exc.hint})" if exc.hint else ""))]
        installed = ", ".join(names(METRICS_GROUP)) or "none"
        close = difflib.get_close_matches(name, names(METRICS_GROUP), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return [
            Finding(
                path,
                f"metrics source {name!r} is not installed; {hint}installed metrics sources: "
                f"{installed}; "
                "or use source: default (the provider's own metrics)",
                at_key=True,
            )
        ]
    return [Finding((*path, *p.path), p.message) for p in spec.check_config(config)]


def _check_analysis(plan: Plan) -> list[Finding]:
    analysis = plan.analysis
    found: list[Finding] = []
    found += _check_metrics_source(analysis.source)
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
