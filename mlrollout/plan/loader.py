"""Load a plan file: read safely, parse YAML with locations, validate, check; report every problem
with file:line:column and the key path."""

from __future__ import annotations

import copy
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from mlrollout.errors import PlanError, PlanIssue
from mlrollout.plan.checks import Finding, InvalidPart, check_plan
from mlrollout.plan.model import STRATEGY_TYPES, Plan
from mlrollout.plan.yamlsafe import MAX_BYTES, Located, YamlProblem, load_located

KeyPath = tuple[str | int, ...]


@dataclass
class LoadedPlan:
    plan: Plan
    path: str
    text: str
    warnings: list[PlanIssue] = field(default_factory=list)


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def load_plan(path: str | os.PathLike[str]) -> LoadedPlan:
    """Read and validate a plan file. Raises :class:`PlanError` listing every problem."""
    name = str(path)
    file = Path(path)
    try:
        if file.is_dir():
            raise PlanError([PlanIssue(name, 0, 0, "", "is a directory, not a plan file")])
        size = file.stat().st_size
        if size > MAX_BYTES:
            raise PlanError(
                [
                    PlanIssue(
                        name,
                        0,
                        0,
                        "",
                        f"the file is {size // 1024} KiB; "
                        f"a plan is at most {MAX_BYTES // 1024} KiB",
                    )
                ]
            )
        raw = file.read_bytes()
    except FileNotFoundError:
        raise PlanError([PlanIssue(name, 0, 0, "", "no such file")]) from None
    except PermissionError:
        raise PlanError(
            [PlanIssue(name, 0, 0, "", "cannot read the file (permission denied)")]
        ) from None
    except OSError as exc:
        raise PlanError(
            [PlanIssue(name, 0, 0, "", f"cannot read the file: {exc.strerror}")]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlanError(
            [PlanIssue(name, 0, 0, "", f"not UTF-8 text (bad byte at offset {exc.start})")]
        ) from None
    return parse_plan(text, name, by_hand=True)


def parse_plan(text: str, filename: str = "<plan>", *, by_hand: bool = False) -> LoadedPlan:
    """Validate a plan's text. ``by_hand``: a plan a user wrote (a file), which may not set
    what only mlrollout sets (``fleet``, on the rollouts of a fleet's targets)."""
    try:
        located = load_located(text)
    except YamlProblem as exc:
        raise PlanError([PlanIssue(filename, exc.line, exc.column, "", exc.message)]) from None
    issues: list[PlanIssue] = []
    for dup_path, line, column in located.duplicates:
        issues.append(
            PlanIssue(filename, line, column, format_path(dup_path), "the key appears twice")
        )
    data = located.data
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a single value ({data!r:.40})"
        raise PlanError(
            [
                PlanIssue(
                    filename,
                    1,
                    1,
                    "",
                    f"a plan is a mapping of keys (version, name, target, ...), not {kind}",
                )
            ]
        )
    dropped: list[KeyPath] = []  # mappings an unknown key was dropped from (see _salvage)
    data, fleet = _fleet_target(data)
    if fleet and "target" in located.data:
        line, column = located.mark(("target",), key=True)
        issues.append(
            PlanIssue(
                filename,
                line,
                column,
                "target",
                "a fleet plan lists its endpoints under targets: remove target (or targets)",
            )
        )
    try:
        plan = Plan.model_validate(data)
        plan._source = data
    except ValidationError as exc:
        # A fleet's `target` stands in for its first target: its errors are reported there.
        errors = [e for e in exc.errors() if not (fleet and e["loc"][:1] == ("target",))]
        issues += [_issue(filename, located, err) for err in errors]
        # Every problem in one pass: the checks that can run on the valid parts run too.
        plan, dropped = _salvage(data, errors)
    if by_hand and "fleet" in data:
        line, column = located.mark(("fleet",), key=True)
        issues.append(
            PlanIssue(
                filename,
                line,
                column,
                "fleet",
                "fleet is set by mlrollout on the rollouts of a fleet's targets, never by hand: "
                "remove it (a fleet lists its endpoints under targets:)",
            )
        )
    warnings: list[PlanIssue] = []
    for finding in check_plan(plan):
        if finding.path in dropped:
            continue  # about a mapping whose unknown key is reported: may follow from it
        issue = _finding_issue(filename, located, finding)
        (issues if finding.severity == "error" else warnings).append(issue)
    if issues:
        raise PlanError(_dedupe(issues))
    return LoadedPlan(plan=plan, path=filename, text=text, warnings=warnings)


def _fleet_target(data: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """A fleet plan (``targets:``) validates as a plan whose ``target`` is its first target (the
    fleet's checks then check every target's plan); other plans as they are."""
    targets = data.get("targets")
    if not targets:
        return data, False
    first = targets[0] if isinstance(targets, list) else None
    if not isinstance(first, dict):
        return data, "target" not in data
    stand_in = {k: v for k, v in first.items() if k not in ("wave", "sandbox")}
    return {**data, "target": stand_in}, True


def _salvage(data: dict[str, Any], errors: list[Any]) -> tuple[Plan, list[KeyPath]]:
    """What of an invalid plan the checks can still read, and where unknown keys were dropped.

    Unknown keys are dropped (they are reported already); each top-level section that still
    does not validate becomes an :class:`~mlrollout.plan.checks.InvalidPart`, which a check
    reading it stops on. A strategy's ``type`` stays known when it is one of the types."""
    cleaned = copy.deepcopy(data)
    dropped: list[KeyPath] = []
    for err in errors:
        if err["type"] == "extra_forbidden":
            path = _data_path(tuple(err["loc"]), data)
            if path and _drop(cleaned, path) and len(path) > 1:
                dropped.append(path[:-1])  # a top-level unknown key hides nothing else
    try:
        return Plan.model_validate(cleaned), dropped
    except ValidationError:
        pass
    values: dict[str, Any] = {}
    for name, info in Plan.model_fields.items():
        if name not in cleaned:
            values[name] = (
                InvalidPart(name)
                if info.is_required()
                else info.get_default(call_default_factory=True)
            )
            continue
        raw = cleaned[name]
        section: Any = Annotated[info.annotation, info]  # the field's type with its constraints
        try:
            values[name] = TypeAdapter(section).validate_python(raw)
        except ValidationError:
            kind = raw.get("type") if name == "strategy" and isinstance(raw, dict) else None
            values[name] = InvalidPart(name, {"type": kind} if kind in STRATEGY_TYPES else None)
    return Plan.model_construct(**values), dropped


def _drop(data: Any, path: KeyPath) -> bool:
    node = data
    for part in path[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return False
    if isinstance(node, dict) and path[-1] in node:
        del node[path[-1]]
        return True
    return False


def _dedupe(issues: list[PlanIssue]) -> list[PlanIssue]:
    seen: set[tuple[int, int, str, str]] = set()
    out = []
    for issue in sorted(issues, key=lambda i: (i.line, i.column)):
        key = (issue.line, issue.column, issue.path, issue.message)
        if key not in seen:
            seen.add(key)
            out.append(issue)
    return out


def _finding_issue(filename: str, located: Located, finding: Finding) -> PlanIssue:
    line, column = located.mark(finding.path, key=finding.at_key)
    prefix = "warning: " if finding.severity == "warning" else ""
    return PlanIssue(filename, line, column, format_path(finding.path), prefix + finding.message)


# ------------------------------------------------------------------ pydantic errors → plan issues


def _data_path(loc: tuple[int | str, ...], data: Any) -> KeyPath:
    """Drop pydantic's union/tag members from ``loc`` by walking the real data alongside it."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            path.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str):
            # a missing key, an extra key not in the data, or a union tag: keep only real keys
            if not _is_tag(part):
                path.append(part)
                node = None
        else:
            continue
    return tuple(path)


_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "none", "bytes"})


def _is_tag(part: str) -> bool:
    """Is this ``loc`` element a pydantic union member/tag rather than a key of the plan?"""
    return (
        part in STRATEGY_TYPES  # discriminated union tags
        or part in _TYPE_NAMES
        or part[:1].isupper()  # model classes
        or "[" in part  # literal[...], function-after[...], dict[...], list[...]
        or part.startswith("constrained-")
    )


def _model_at(path: KeyPath, data: Any) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``path`` (for did-you-mean hints)."""
    model: type[BaseModel] | None = Plan
    node = data
    for part in path:
        if model is None:
            return None
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        info = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        node = node.get(part) if isinstance(node, dict) else None
        if info is None:
            return None
        model = _pick_model(info.annotation, node)
    return model


def _pick_model(annotation: Any, node: Any) -> type[BaseModel] | None:
    candidates: list[type[BaseModel]] = []

    def collect(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            candidates.append(tp)
            return
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType, list, typing.Annotated):
            for arg in typing.get_args(tp):
                collect(arg)

    collect(annotation)
    if len(candidates) > 1 and isinstance(node, dict):
        for model in candidates:
            tag = model.model_fields.get("type")
            if tag is not None and node.get("type") in typing.get_args(tag.annotation):
                return model
        return None
    return candidates[0] if candidates else None


def _issue(filename: str, located: Located, err: Any) -> PlanIssue:
    kind = err["type"]
    path = _data_path(tuple(err["loc"]), located.data)
    message = str(err["msg"])
    if message.startswith(("Value error, ", "Assertion failed, ")):
        message = message.split(", ", 1)[1]
    if kind == "extra_forbidden":
        key = path[-1] if path else "?"
        model = _model_at(path[:-1], located.data)
        allowed = sorted(f.alias or n for n, f in model.model_fields.items()) if model else []
        close = difflib.get_close_matches(str(key), allowed, n=1)
        message = f"unknown key {key!r}"
        if close:
            message += f" (did you mean {close[0]!r}?)"
        elif allowed:
            message += f"; allowed here: {', '.join(allowed)}"
        line, column = located.mark(path, key=True)
        return PlanIssue(filename, line, column, format_path(path), message)
    if kind == "missing":
        key = path[-1] if path else "?"
        message = f"missing required key {key!r}"
        line, column = located.mark(path[:-1])
        return PlanIssue(filename, line, column, format_path(path), message)
    if kind == "union_tag_not_found":
        message = f"the strategy needs a type: one of {', '.join(STRATEGY_TYPES)}"
    elif kind == "union_tag_invalid":
        tag = str(err.get("ctx", {}).get("tag", ""))
        close = difflib.get_close_matches(tag, STRATEGY_TYPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        message = f"unknown strategy type {tag!r}{hint}; one of {', '.join(STRATEGY_TYPES)}"
        path = (*path, "type") if path and path[-1] != "type" else path
    elif kind == "literal_error":
        expected = str(err.get("ctx", {}).get("expected", ""))
        options = [o.strip().strip("'") for o in expected.replace(" or ", ",").split(",")]
        got = err.get("input")
        close = difflib.get_close_matches(str(got), options, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        message = f"got {got!r}, expected {expected}{hint}"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = f"expected a mapping of keys, got {_type_name(err.get('input'))}"
    elif kind == "list_type":
        message = f"expected a list, got {_type_name(err.get('input'))}"
    elif kind.endswith(("_parsing", "_type")) and "input" in err:
        message = f"{message}, got {_type_name(err['input'])}"
    line, column = located.mark(path)
    return PlanIssue(filename, line, column, format_path(path), message)


def _type_name(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{type(value).__name__} {value!r:.40}"
