"""Checks of the quality gates and the ``feedback`` section that need the whole plan (no
network): :func:`check_quality_gates`, called by :func:`mlrollout.plan.checks.check_plan`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlrollout.plan.model import QUALITY_METRICS, Plan

if TYPE_CHECKING:
    from mlrollout.plan.checks import Finding

#: The classes the sandbox predicts (see :mod:`mlrollout.sandbox.capture`).
_SANDBOX_CLASSES = ("0", "1")


def check_quality_gates(plan: Plan) -> list[Finding]:
    """Each quality gate against where its labels come from: a plan-given jsonl source, or a
    provider that has its own (the sandbox's simulated labels need ``accuracy`` / ``feedback``
    on every variant the gate reads)."""
    from mlrollout.plan.checks import Finding  # here: plan.checks imports this module
    from mlrollout.plugins import provider_spec

    found: list[Finding] = []
    gates = [(i, g) for i, g in enumerate(plan.analysis.gates) if g.metric in QUALITY_METRICS]
    if plan.feedback is not None and not gates:
        found.append(
            Finding(
                ("feedback",),
                "no quality gate reads the feedback: add one (metric: accuracy, precision, "
                "recall, f1 or feedback), or remove the section",
                "warning",
            )
        )
    if not gates:
        return found
    jsonl = plan.feedback.jsonl if plan.feedback is not None else None
    if jsonl is None:
        try:
            own = callable(getattr(provider_spec(plan.target.provider), "open_feedback", None))
        except Exception:  # an unknown provider is reported by the provider check
            return found
        if not own:
            i, gate = gates[0]
            found.append(
                Finding(
                    ("analysis", "gates", i, "metric"),
                    f"the {gate.metric} gate needs labels, and provider "
                    f"{plan.target.provider!r} has no feedback source of its own: add "
                    "feedback: {source: {jsonl: PATH-or-URI}} (lines {inference_id, label} or "
                    "{inference_id, value})",
                )
            )
    if plan.sandbox is not None and plan.target.provider == "local" and jsonl is None:
        for i, gate in gates:
            key = "feedback" if gate.metric == "feedback" else "accuracy"
            lacking = [n for n, v in plan.sandbox.variants.items() if getattr(v, key) is None]
            if lacking:
                found.append(
                    Finding(
                        ("analysis", "gates", i, "metric"),
                        f"the sandbox simulates no {'ratings' if key == 'feedback' else 'labels'} "
                        f"for {', '.join(lacking)}: give "
                        f"{'it' if len(lacking) == 1 else 'them'} {key}: (such as {key}: 0.9)",
                    )
                )
            if gate.positive is not None and gate.positive not in _SANDBOX_CLASSES:
                found.append(
                    Finding(
                        ("analysis", "gates", i, "positive"),
                        f"the sandbox predicts the classes {' and '.join(_SANDBOX_CLASSES)}, "
                        f"not {gate.positive!r}",
                    )
                )
    return found
