"""Checks of the prediction gates and the ``capture`` section that need the whole plan (no
network): :func:`check_prediction_gates`, called by :func:`mlrollout.plan.checks.check_plan`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlrollout.capture.jsonl import local_path
from mlrollout.capture.jsonpath import PathError, compile_path
from mlrollout.plan.model import (
    PREDICTION_METRICS,
    BlueGreenStrategy,
    Plan,
    ShadowStrategy,
)

if TYPE_CHECKING:
    from mlrollout.plan.checks import Finding


def mirrors(plan: Plan) -> bool:
    """Does the plan's strategy judge the candidate on mirrored (paired) requests?"""
    strategy = plan.strategy
    return isinstance(strategy, ShadowStrategy) or (
        isinstance(strategy, BlueGreenStrategy) and strategy.preview == 0
    )


def check_prediction_gates(plan: Plan) -> list[Finding]:
    """The prediction gates against the strategy and the capture source; the capture section
    on its own (its JSONPath, its location)."""
    from mlrollout.plan.checks import Finding  # here: plan.checks imports this module

    found: list[Finding] = []
    capture = plan.capture
    if capture is not None:
        try:
            compile_path(capture.output)
        except PathError as exc:
            found.append(
                Finding(
                    ("capture", "output"),
                    f"not a JSONPath mlrollout reads: {exc}; the subset is $, .key, [n] and "
                    "['key'], such as $.predictions[0]",
                )
            )
        if capture.jsonl is not None:
            try:
                local_path(capture.jsonl)
            except ValueError as exc:
                found.append(Finding(("capture", "source", "jsonl"), str(exc)))
    gates = [
        (i, gate) for i, gate in enumerate(plan.analysis.gates) if gate.metric in PREDICTION_METRICS
    ]
    if not gates:
        return found
    strategy = plan.strategy.type
    for i, gate in gates:
        if gate.metric == "agreement" and not mirrors(plan):
            why = (
                "blue_green with preview > 0 splits live traffic, so no request is answered by both"
                if strategy == "blue_green"
                else f"a {strategy} splits live traffic, so no request is answered by both"
            )
            found.append(
                Finding(
                    ("analysis", "gates", i, "metric"),
                    f"agreement compares both variants' answers to the same requests, which "
                    f"only mirrored traffic gives ({why}): use strategy type shadow (or "
                    "blue_green with preview: 0), or gate this strategy on prediction_drift, "
                    "which compares the output distributions and needs no pairs",
                )
            )
    tolerances = {gate.tolerance or 0.0 for _, gate in gates if gate.metric == "agreement"}
    if len(tolerances) > 1:
        i = next(i for i, g in gates if g.metric == "agreement" and g.tolerance)
        found.append(
            Finding(
                ("analysis", "gates", i, "tolerance"),
                "the agreement gates read one pairing of the capture: give them one tolerance "
                f"(they give {', '.join(f'{t:g}' for t in sorted(tolerances))})",
            )
        )
    if capture is None or capture.jsonl is None:
        found += _default_capture(plan, gates[0][0])
    return found


def _default_capture(plan: Plan, first: int) -> list[Finding]:
    """Prediction gates read the provider's own capture: it must have one."""
    from mlrollout.errors import ProviderUnavailable
    from mlrollout.plugins import provider_spec

    try:
        spec = provider_spec(plan.target.provider)
    except ProviderUnavailable:
        return []  # the provider check says so already
    if callable(getattr(spec, "open_capture", None)):
        return []
    from mlrollout.plan.checks import Finding

    return [
        Finding(
            ("analysis", "gates", first, "metric"),
            f"the prediction gates read each variant's captured predictions, and provider "
            f"{plan.target.provider!r} captures none of its own: add capture: {{source: "
            "{jsonl: PATH}} with the records your application writes",
        )
    ]
