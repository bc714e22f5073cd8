"""Fleet plans (``targets:`` and ``waves:``): one plan, the same candidate to many endpoints.

A fleet plan is a plan whose ``targets`` list replaces ``target``. Each target becomes a plan of
its own — :func:`member_plan`: the fleet plan with that one target, its ``sandbox`` changes merged
in, and ``fleet: {id, index}`` set, which makes its rollout hold with the candidate at 100 % (the
baseline still deployed) until the fleet releases or rolls it back — and is checked as any plan
is (:func:`check_fleet`: its problems are reported at ``targets[i]``). The text of each member plan
is what its rollout records, so a member rollout reads like any other.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from mlrollout.plan.model import BlueGreenStrategy, Plan

if TYPE_CHECKING:
    from mlrollout.plan.checks import Finding


def is_fleet(plan: Plan) -> bool:
    return bool(plan.targets)


def waves_of(plan: Plan) -> list[int]:
    """The fleet's wave numbers, in the order they run."""
    return sorted({t.wave for t in plan.targets})


def member_data(data: dict[str, Any], index: int, fleet_id: str | None) -> dict[str, Any]:
    """The plan mapping of target ``index`` of the fleet plan mapping ``data``: ``target`` for
    ``targets``, the target's ``sandbox`` changes merged into the sandbox, ``fleet`` set. The
    fleet's ``sandbox`` is the world of its ``local`` targets: a target on a real platform (a
    fleet may mix them) gets none, but its own ``sandbox`` changes stay (and are refused)."""
    out = {k: copy.deepcopy(v) for k, v in data.items() if k not in ("targets", "waves")}
    raw = dict(data["targets"][index])
    changes = raw.pop("sandbox", None)
    raw.pop("wave", None)
    out["target"] = raw
    if raw.get("provider", "local") != "local":
        out.pop("sandbox", None)
    if isinstance(changes, dict):
        out["sandbox"] = _merged(out.get("sandbox") or {}, changes)
    name = str(data.get("name", "fleet"))
    out["name"] = f"{name} [{raw.get('endpoint', index)}]"[:128]
    if fleet_id is not None:
        out["fleet"] = {"id": fleet_id, "index": index}
    return out


def member_text(data: dict[str, Any], index: int, fleet_id: str) -> str:
    """The YAML of target ``index``'s plan: what its rollout records."""
    return yaml.safe_dump(member_data(data, index, fleet_id), sort_keys=False)


def member_plan(plan: Plan, index: int) -> Plan:
    """Target ``index``'s plan (without a fleet id): :func:`member_data` of the mapping the plan
    was loaded from, validated; a plan made in code (no such mapping) cannot change a target's
    sandbox."""
    target = plan.targets[index]
    source = plan._source
    if source is not None:
        return Plan.model_validate(member_data(source, index, None))
    if target.sandbox:
        raise ValueError("a target's sandbox changes need the plan as loaded (load_plan)")
    update: dict[str, Any] = {"target": target.target(), "targets": [], "waves": None}
    update["name"] = f"{plan.name} [{target.endpoint}]"[:128]
    return plan.model_copy(update=update)


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def check_fleet(plan: Plan) -> list[Finding]:
    """The fleet's own rules, and each target's plan checked as a plan (its findings about
    ``target`` reported at ``targets[i]``, the others once)."""
    from mlrollout.plan.checks import Finding, check_plan

    found: list[Finding] = []
    if not plan.targets:
        if plan.waves is not None:
            found.append(Finding(("waves",), "waves only apply to a fleet: list its targets"))
        return found
    if plan.sandbox is not None and all(t.provider != "local" for t in plan.targets):
        found.append(
            Finding(
                ("sandbox",),
                "a fleet's sandbox section is the world of its provider: local targets, and it "
                "has none; remove it",
            )
        )
    if plan.fleet is not None:
        found.append(Finding(("fleet",), "fleet is set by mlrollout on a fleet's targets"))
    strategy = plan.strategy
    if isinstance(strategy, BlueGreenStrategy) and strategy.native:
        found.append(
            Finding(
                ("strategy", "native"),
                "a fleet holds each target with the baseline still deployed until every wave "
                "has passed, and SageMaker's own blue/green retires blue by itself: use "
                "native: false in a fleet",
            )
        )
    seen: dict[tuple[str, str], int] = {}
    for i, target in enumerate(plan.targets):
        key = (target.provider, repr(sorted(target.target().settings().items())))
        if key in seen:
            found.append(
                Finding(("targets", i), f"the same endpoint as targets[{seen[key]}]", at_key=False)
            )
        seen.setdefault(key, i)
        if target.sandbox is not None and target.provider != "local":
            found.append(Finding(("targets", i, "sandbox"), "sandbox only applies to local"))
            continue
        try:
            member = member_plan(plan, i)
        except ValidationError as exc:  # the merged sandbox does not validate
            for err in exc.errors():
                where = tuple(err["loc"])
                path = ("targets", i, *where[1:]) if where[:1] == ("target",) else where
                if path[:1] == ("sandbox",):
                    path = ("targets", i, "sandbox", *path[1:])
                message = str(err["msg"]).removeprefix("Value error, ")
                found.append(Finding(path, message))
            continue
        for finding in check_plan(member):
            path = finding.path
            if path[:1] == ("target",):
                path = ("targets", i, *path[1:])
            elif path[:1] == ("sandbox",) and target.sandbox:
                path = ("targets", i, "sandbox", *path[1:])
            found.append(Finding(path, finding.message, finding.severity, finding.at_key))
    unique: dict[tuple[Any, ...], Finding] = {}
    for finding in found:
        unique.setdefault((finding.path, finding.message), finding)
    return list(unique.values())
