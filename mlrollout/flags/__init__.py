"""Feature-flag routing: the OpenFeature flagd flag definition a rollout writes in lockstep with
each step, where it is written, and how the real flagd evaluator reads it.

With ``flags`` in the plan the live split is the flag's, not the platform's: the application
evaluates the flag for each request (the user's id as ``targetingKey``, plus its attributes) and
sends the request to the variant it names (SageMaker ``TargetVariant``, Azure ML's
``azureml-model-deployment`` header). mlrollout writes one flag, ``plan.flags.key``, whose
variants are the baseline and the candidate (each variant's value is its own name)::

    {"$schema": "https://flagd.dev/schema/v0/flags.json",
     "flags": {"churn-model": {
        "state": "ENABLED", "defaultVariant": "v6", "variants": {"v6": "v6", "v7": "v7"},
        "targeting": {"if": [
            {"==": [{"var": "user_type"}, "employee"]}, "v7",                 # staff, weight 100
            {"in": [{"var": "region"}, ["eu-central-1", "eu-west-1"]]},      # eu, the step's 25 %
                {"fractional": [["v7", 2500], ["v6", 7500]]},
            "v6"]}}}}                                                          # everyone else

- **Segments** become the ``if`` branches, in the plan's order (the first match wins): one
  attribute is ``==`` (a value) or ``in`` (a list), several are ``and``-ed. A segment with a
  fixed ``weight`` splits its users by it; one without follows the step's weight. Users outside
  every segment get the baseline. Without segments the step's split applies to everyone.
- **The split** is flagd's ``fractional`` with integer weights in basis points (0.01 %), summing
  to :data:`BASIS` at every step, the candidate listed first. flagd puts a user in bucket
  ``⌊hash(flag key, targetingKey) · total / 2³²⌋`` and serves the first variant whose cumulative
  weight exceeds it: with the candidate first in every version, its users are always the
  lowest buckets ``[0, weight)``, so raising its weight only moves users onto it, never off it
  (sticky across steps; an order that changed between versions would reshuffle them). A split
  that rounds to 0 or to all of :data:`BASIS` is written as the plain variant (no degenerate
  ``fractional``).
- **0 % and 100 % are nobody and everyone**, segments aside: the engine writes them at the end
  of a rollout, and a rollback must send every user to the baseline, staff at a fixed weight
  of 100 included (a promotion: every user to the candidate). Between them the segments hold.
  ``everyone=False`` keeps the segments at 0 % and 100 % too (a step of 0 % where only the
  fixed-weight segments get the candidate); ``everyone=True`` drops them at any weight.
- **A flag that names one variant for everyone** (0 % or 100 % for everyone, or a split that
  rounds to it) is static, without targeting: ``defaultVariant`` names that variant (after a
  promotion the baseline is retired, and no rule may fall back to it).

The output is deterministic: the same plan and weights give byte-identical JSON through
:func:`flag_json` (sorted keys, two-space indent, a trailing newline), whose sha256 is the
flag version's digest.

Cheap to import: the flagd evaluator (``openfeature-flagd-core``, the ``mlrollout[flagd]``
extra) is imported only by :func:`evaluate` and :class:`FlagEvaluator`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from mlrollout.errors import ProviderError, ProviderUnavailable

if TYPE_CHECKING:
    from mlrollout.contracts import ProviderContext
    from mlrollout.objects import ObjectFiles
    from mlrollout.plan.model import Plan, Segment

#: The fractional weights' total: basis points, a resolution of 0.01 %.
BASIS = 10_000
#: flagd's flag-definition schema (editors validate the file against it).
SCHEMA_URL = "https://flagd.dev/schema/v0/flags.json"
#: How to install the evaluator.
INSTALL_HINT = "pip install 'mlrollout[flagd]'"

__all__ = [
    "BASIS",
    "FlagEvaluator",
    "FlagWriter",
    "ObjectFlagWriter",
    "digest",
    "evaluate",
    "flag_definition",
    "flag_json",
    "flag_writer",
]


# ----------------------------------------------------------------------------- the definition


def flag_definition(
    plan: Plan,
    weights: Mapping[str, float],
    *,
    baseline: str,
    candidate: str,
    everyone: bool | None = None,
) -> dict[str, Any]:
    """The flagd flag-definition document (JSON-able) for the logical split ``weights``
    (``{variant: percent}``; the candidate's percent is the step's weight; 100 for everyone,
    0 for nobody) and the plan's segments (see the module's doc). ``everyone``: whether the
    split applies to every user, segments aside — by default (``None``) exactly at 0 % and
    100 % (a rollback, a promotion: a fixed-weight segment must not keep the candidate after a
    rollback), and at no other weight; ``False`` keeps the segments at 0 % and 100 % too."""
    flags = plan.flags
    if flags is None:
        raise ValueError("the plan has no flags section: nothing routes by a flag")
    if not baseline or not candidate or baseline == candidate:
        raise ValueError(
            f"a flag routes between two variants, got baseline {baseline!r} and candidate "
            f"{candidate!r}"
        )
    step = _candidate_percent(weights, baseline, candidate)
    flag: dict[str, Any] = {
        "state": "ENABLED",
        "variants": {baseline: baseline, candidate: candidate},
        "defaultVariant": baseline,
    }
    if everyone is None:
        everyone = step <= 0.0 or step >= 100.0
    targeting = _targeting([] if everyone else plan.segments, step, baseline, candidate)
    if isinstance(targeting, str):  # everyone gets one variant: a static flag, no rule
        flag["defaultVariant"] = targeting
    else:
        flag["targeting"] = targeting
    return {"$schema": SCHEMA_URL, "flags": {flags.key: flag}}


def _candidate_percent(weights: Mapping[str, float], baseline: str, candidate: str) -> float:
    for name, weight in weights.items():
        if not (isinstance(weight, int | float) and math.isfinite(weight) and 0 <= weight <= 100):
            raise ValueError(f"weight of {name!r} is a percentage from 0 to 100, got {weight!r}")
        if name not in (baseline, candidate) and weight > 0:
            raise ValueError(
                f"a flag routes between the baseline {baseline!r} and the candidate "
                f"{candidate!r} only, not to {name!r}"
            )
    if candidate in weights:
        return float(weights[candidate])
    return 100.0 - float(weights.get(baseline, 100.0))


def _targeting(
    segments: list[Segment], step: float, baseline: str, candidate: str
) -> str | dict[str, Any]:
    """The rule, or the one variant everyone gets."""
    if not segments:
        return _split(step, baseline, candidate)
    branches: list[Any] = []
    for segment in segments:
        weight = step if segment.weight is None else float(segment.weight)
        branches += [_condition(segment), _split(weight, baseline, candidate)]
    if all(result == baseline for result in branches[1::2]):
        return baseline  # no segment gets the candidate at this weight
    return {"if": [*branches, baseline]}


def _split(percent: float, baseline: str, candidate: str) -> str | dict[str, Any]:
    """The candidate's ``percent`` of the users: the candidate first, weights summing to
    :data:`BASIS`; the plain variant when it rounds to none or all of them."""
    points = round(percent * BASIS / 100.0)
    if points <= 0:
        return baseline
    if points >= BASIS:
        return candidate
    return {"fractional": [[candidate, points], [baseline, BASIS - points]]}


def _condition(segment: Segment) -> dict[str, Any]:
    tests: list[dict[str, Any]] = []
    for attribute in sorted(segment.match):
        wanted = segment.match[attribute]
        if isinstance(wanted, str):
            tests.append({"==": [{"var": attribute}, wanted]})
        else:
            tests.append({"in": [{"var": attribute}, sorted(wanted)]})
    return tests[0] if len(tests) == 1 else {"and": tests}


def flag_json(definition: dict[str, Any]) -> bytes:
    """The canonical bytes of a definition: sorted keys, two-space indent, a trailing newline
    (the same definition always gives the same bytes, hence the same :func:`digest`)."""
    text = json.dumps(definition, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def digest(definition: dict[str, Any]) -> str:
    """The sha256 (hex) of the definition's :func:`flag_json` bytes: its version."""
    return hashlib.sha256(flag_json(definition)).hexdigest()


# ------------------------------------------------------------------------------ the writers


class FlagWriter(Protocol):
    """Where the flag file lives. Writes are idempotent (the engine replays a journalled write
    after a crash) and replace the file as a whole (a reader sees the old flag or the new)."""

    #: The flag file as the plan gives it (for messages; URL options dropped).
    location: str

    def write(self, definition: dict[str, Any]) -> str:
        """Write ``definition``; the sha256 hex of the bytes written."""
        ...

    def read(self) -> dict[str, Any] | None:
        """The definition there now (``None``: no file)."""
        ...


class ObjectFlagWriter:
    """A :class:`FlagWriter` on one object of :mod:`mlrollout.objects` (a local file replaced
    atomically, or an object of a plugin such as ``s3://``)."""

    def __init__(self, files: ObjectFiles) -> None:
        self.files = files
        self.location = files.location

    def write(self, definition: dict[str, Any]) -> str:
        data = flag_json(definition)
        try:
            self.files.write(data, content_type="application/json")
        except ProviderError as exc:
            raise _about(exc, f"cannot write the flag file {self.location}", "write") from exc
        return hashlib.sha256(data).hexdigest()

    def read(self) -> dict[str, Any] | None:
        try:
            data = self.files.read()
        except ProviderError as exc:
            raise _about(exc, f"cannot read the flag file {self.location}", "read") from exc
        if data is None:
            return None
        try:
            value = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProviderError(
                f"the flag file {self.location} is not JSON ({exc})",
                hint="mlrollout rewrites it at the next step; if something else writes there, "
                "give flags.file a path of its own",
            ) from exc
        if not isinstance(value, dict):
            raise ProviderError(
                f"the flag file {self.location} holds a JSON {type(value).__name__}, not a flag "
                "definition",
                hint="give flags.file a path of its own: mlrollout rewrites it at every step",
            )
        return value


def _about(exc: ProviderError, what: str, verb: str) -> ProviderError:
    """``exc`` with ``what`` (the flag file) in front, of the same class where it can be (the
    exit code and the retry policy depend on it)."""
    message = f"{what}: {exc.message}"
    hint = exc.hint or f"check flags.file and that mlrollout may {verb} there"
    try:
        return type(exc)(message, hint=hint)
    except TypeError:  # a subclass with a constructor of its own
        return ProviderError(message, hint=hint)


def flag_writer(plan: Plan, context: ProviderContext) -> FlagWriter:
    """The writer of ``plan.flags.file``: a local path or ``file://`` URI (an atomic replace), or
    any URI an installed ``mlrollout.objects`` plugin opens (``s3://`` in ``mlrollout-aws``),
    pointed at ``target.endpoint_url`` when that is a URL. A provider spec that offers
    ``open_flags(context, writer) -> FlagWriter`` wraps it (the sandbox records each write in
    its simulated endpoint, whose users are then routed by the flag)."""
    flags = plan.flags
    if flags is None:
        raise ValueError("the plan has no flags section: there is no flag file to write")
    from mlrollout.objects import open_objects
    from mlrollout.plugins import provider_spec

    endpoint_url = plan.target.endpoint_url
    files = open_objects(
        flags.file, endpoint_url=endpoint_url if endpoint_url and "://" in endpoint_url else None
    )
    writer: FlagWriter = ObjectFlagWriter(files)
    wrap = getattr(provider_spec(plan.target.provider), "open_flags", None)
    if callable(wrap):
        wrapped: FlagWriter = wrap(context, writer)
        return wrapped
    return writer


# ---------------------------------------------------------------------------- the evaluator


class FlagEvaluator:
    """One flag definition loaded in the real flagd evaluator (``openfeature-flagd-core``'s
    ``FlagdCore``, in process), evaluated per user."""

    def __init__(self, definition: dict[str, Any]) -> None:
        try:
            from openfeature.contrib.tools.flagd.core import FlagdCore
            from openfeature.evaluation_context import EvaluationContext
            from openfeature.exception import OpenFeatureError
        except ImportError as exc:
            raise ProviderUnavailable(
                "the flagd evaluator (openfeature-flagd-core) is not installed",
                hint=f"install it: {INSTALL_HINT}",
            ) from exc
        self._context = EvaluationContext
        self._error = OpenFeatureError
        self._core = FlagdCore()
        try:
            # the store takes the dict apart as it parses it: give it a copy
            self._core.set_flags(copy.deepcopy(definition))
        except (OpenFeatureError, ValueError, TypeError) as exc:
            raise ProviderError(
                f"the flagd evaluator rejects the flag definition: {exc}",
                hint="the flag file must be a flagd flag definition "
                "(https://flagd.dev/reference/flag-definitions/)",
            ) from exc

    def variant(self, key: str, targeting_key: str, attributes: Mapping[str, str]) -> str:
        """The variant the flag ``key`` gives the user ``targeting_key`` with ``attributes``."""
        context = self._context(targeting_key, dict(attributes))
        try:
            details = self._core.resolve_string_value(key, "", context)
        except self._error as exc:
            raise ProviderError(
                f"flag {key!r} cannot be evaluated: {exc}",
                hint="is flags.key the flag the file defines?",
            ) from exc
        if details.variant is None:
            raise ProviderError(
                f"flag {key!r} names no variant for user {targeting_key!r}",
                hint="the flag needs a defaultVariant",
            )
        return str(details.variant)


def evaluate(
    definition: dict[str, Any], key: str, targeting_key: str, attributes: Mapping[str, str]
) -> str:
    """The variant the real flagd evaluator gives one user (for many users, build one
    :class:`FlagEvaluator` and ask it for each)."""
    return FlagEvaluator(definition).variant(key, targeting_key, attributes)
