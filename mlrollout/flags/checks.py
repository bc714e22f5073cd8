"""Checks of ``segments`` and ``flags`` that need the whole plan (no network):
:func:`check_flags`, called by :func:`mlrollout.plan.checks.check_plan`."""

from __future__ import annotations

import difflib
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlrollout.contracts import PlanProblem
from mlrollout.plan.model import BlueGreenStrategy, Plan

#: The clouds whose distribution registers an object-storage scheme (for the install hint).
_SCHEME_CLOUD = {"s3": "aws", "gs": "gcp", "az": "azure", "abfs": "azure", "abfss": "azure"}


def check_flags(plan: Plan) -> list[PlanProblem]:
    """Segments need flags and unique names; on the sandbox their attributes and values must be
    its users'; the flag file must be a path or a URI an installed plugin writes; a native
    blue/green deployment cannot be routed by a flag."""
    problems: list[PlanProblem] = []
    if plan.segments and plan.flags is None:
        problems.append(
            PlanProblem(
                ("segments",),
                "segments route users by a feature flag, and the plan has none: add flags: "
                "{provider: flagd, key: KEY, file: PATH} (the application evaluates the flag "
                "and sends each request to the variant it names), or remove segments",
            )
        )
    seen: dict[str, int] = {}
    for i, segment in enumerate(plan.segments):
        if segment.name in seen:
            problems.append(
                PlanProblem(
                    ("segments", i, "name"),
                    f"segment {segment.name!r} is named twice (also segments[{seen[segment.name]}])"
                    ": give each segment a name of its own",
                )
            )
        else:
            seen[segment.name] = i
    if plan.target.provider == "local" and plan.segments:
        problems += _sandbox_users(plan)
    if plan.flags is not None:
        problems += _flag_file(plan.flags.file)
        strategy = plan.strategy
        if isinstance(strategy, BlueGreenStrategy) and strategy.native:
            problems.append(
                PlanProblem(
                    ("strategy", "native"),
                    "a native blue/green deployment moves the platform's own traffic, which a "
                    "flag cannot route: use native: false with flags (mlrollout then writes each "
                    "step into the flag), or remove flags",
                )
            )
    return problems


def _sandbox_users(plan: Plan) -> list[PlanProblem]:
    """Every segment's attributes and values are ones the sandbox's users have."""
    sandbox = plan.sandbox
    if sandbox is None:
        return []  # the provider's own check asks for the sandbox section
    users = sandbox.users
    if users is None or not users.attributes:
        return [
            PlanProblem(
                ("sandbox", "users") if users is not None else ("sandbox",),
                "segments match the attributes of the sandbox's users, and it simulates none: "
                "add sandbox.users: {count: 50000, attributes: {ATTRIBUTE: [VALUES]}} with "
                "the attributes the segments match",
            )
        ]
    problems: list[PlanProblem] = []
    known = users.attributes
    for i, segment in enumerate(plan.segments):
        for attribute, wanted in segment.match.items():
            path: tuple[str | int, ...] = ("segments", i, "match", attribute)
            if attribute not in known:
                close = difflib.get_close_matches(attribute, list(known), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                problems.append(
                    PlanProblem(
                        path,
                        f"the sandbox's users have no attribute {attribute!r} ({hint}they have "
                        f"{', '.join(known)}): add it to sandbox.users.attributes, or match one "
                        "of those",
                    )
                )
                continue
            values = [wanted] if isinstance(wanted, str) else wanted
            missing = [v for v in values if v not in known[attribute]]
            if missing:
                problems.append(
                    PlanProblem(
                        path,
                        f"no sandbox user has {attribute} {', '.join(map(repr, missing))} (the "
                        f"users' values: {', '.join(known[attribute])}): add it to "
                        f"sandbox.users.attributes.{attribute}, or match one of those",
                    )
                )
    return problems


def _flag_file(location: str) -> list[PlanProblem]:
    path: tuple[str | int, ...] = ("flags", "file")
    if "://" in location:
        scheme = urlparse(location).scheme.lower()
        if scheme == "file":
            return _local_file(Path(unquote(urlparse(location).path)), location)
        from mlrollout.plugins import OBJECTS_GROUP, install_command, names

        if scheme in names(OBJECTS_GROUP):
            return []
        cloud = _SCHEME_CLOUD.get(scheme)
        how = (
            f"install the plugin that writes {scheme}:// objects: {install_command(cloud)}"
            if cloud
            else "install a plugin that registers the scheme in the mlrollout.objects "
            "entry-point group, or write the file locally"
        )
        installed = ", ".join(f"{n}://" for n in names(OBJECTS_GROUP))
        return [
            PlanProblem(
                path,
                f"no installed plugin writes {scheme}:// objects ({how}); flags.file is a local "
                f"path, a file:// URI{', or ' + installed if installed else ''}",
            )
        ]
    return _local_file(Path(location).expanduser(), location)


def _local_file(path: Path, location: str) -> list[PlanProblem]:
    if location.endswith("/") or path.is_dir():
        return [
            PlanProblem(
                ("flags", "file"),
                f"flags.file names a directory ({location}): name the file the application's "
                "flagd reads, such as .mlrollout/flags/churn.json",
            )
        ]
    return []
