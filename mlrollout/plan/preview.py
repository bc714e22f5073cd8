"""What ``plan preview`` shows: the timeline, the gates and the API calls — without network."""

from __future__ import annotations

import math
from typing import Any

from mlrollout.contracts import ProviderSpec
from mlrollout.plan.loader import LoadedPlan
from mlrollout.plan.model import LATENCY_METRICS, Gate, Plan
from mlrollout.plan.timeline import timeline
from mlrollout.plugins import provider_spec
from mlrollout.sandbox.world import mean_rps
from mlrollout.sandbox.world import summary as world_summary
from mlrollout.units import format_duration, format_latency, format_rate


def gate_rule(gate: Gate) -> str:
    """A gate's rule in words: ``error_rate <= baseline +25%``."""
    parts = []

    def bound(value: float) -> str:
        if gate.metric == "error_rate":
            return format_rate(value)
        if gate.metric in LATENCY_METRICS:
            return format_latency(value)
        return f"{value:g}"

    if gate.max_value is not None:
        parts.append(f"<= {bound(gate.max_value)}")
    if gate.min_value is not None:
        parts.append(f">= {bound(gate.min_value)}")
    margin = gate.margin
    if margin is not None:
        sign = "+" if gate.worse_when == "increase" else "-"
        if margin.kind == "relative":
            amount = f"{margin.amount * 100:g}%"
        elif gate.metric in LATENCY_METRICS:
            amount = format_latency(margin.amount)
        else:
            amount = f"{margin.amount * 100:g}pp"
        op = "<=" if gate.worse_when == "increase" else ">="
        parts.append(f"{op} baseline {sign}{amount}")
    rule = f"{gate.metric} " + " and ".join(parts)
    return rule + (" (dry run)" if gate.dry_run else "")


def gate_methods(plan: Plan) -> list[dict[str, Any]]:
    """Each gate's decision method and about how long it takes to decide, at the first analyze
    step's candidate weight (and the sandbox's traffic when the plan has one)."""
    from mlrollout.analysis.expected import expect
    from mlrollout.analysis.gateset import judged_stages

    rows = timeline(plan)
    analyze = [r for r in rows if r.step.kind == "analyze"]
    stages = judged_stages(plan)
    weight = next((r.candidate_weight for r in analyze if 0 < r.candidate_weight < 100), 10.0)
    gates = plan.analysis.gates
    deciding = max(1, sum(1 for g in gates if not g.dry_run))
    alpha = plan.analysis.alpha / (stages * deciding)
    sandbox = plan.sandbox
    rps = mean_rps(sandbox) * weight / 100 if sandbox is not None else None
    baseline_rate = 0.01
    if sandbox is not None and sandbox.variants:
        first = next(iter(sandbox.variants.values()))
        baseline_rate = first.error_rate if first.error_rate > 0 else 0.01
    out = []
    for gate in gates:
        e = expect(gate, alpha, weight / 100, baseline_rate)
        out.append(
            {
                "method": e.method,
                "decides": e.text(rps),
                "at_weight": weight,
                "fail_requests": _finite(e.fail_requests),
                "pass_requests": _finite(e.pass_requests),
            }
        )
    return out


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else math.ceil(value)


def _duration(seconds: float) -> str:
    return "until approved" if math.isinf(seconds) else format_duration(seconds)


def build_preview(loaded: LoadedPlan) -> dict[str, Any]:
    plan: Plan = loaded.plan
    spec: ProviderSpec = provider_spec(plan.target.provider)
    calls = spec.describe_calls(plan)
    source = plan.analysis.source
    if not isinstance(source, str):  # a metrics-source plugin reads the metrics, not the provider
        [name] = list(source)
        calls = {**calls, "metrics": [f"metrics source {name!r}: its queries at each look"]}
    rows = timeline(plan)
    steps: list[dict[str, Any]] = []
    elapsed_min = elapsed_max = 0.0
    for row in rows:
        elapsed_min += row.min_seconds
        elapsed_max += row.max_seconds
        kind = row.step.kind
        api = {
            "weight": calls.get("set_traffic", []),
            "analyze": [
                f"{c} (every {format_duration(plan.analysis.interval)})"
                for c in calls.get("metrics", [])
            ],
        }.get(kind, [])
        steps.append(
            {
                "index": row.step.index,
                "kind": kind,
                "step": row.step.describe(),
                "candidate_weight": row.candidate_weight,
                "min_seconds": row.min_seconds,
                "max_seconds": None if math.isinf(row.max_seconds) else row.max_seconds,
                "min": format_duration(row.min_seconds),
                "max": _duration(row.max_seconds),
                "gates": [g.name for g in plan.analysis.gates] if kind == "analyze" else [],
                "api_calls": api,
            }
        )
    return {
        "plan": loaded.path,
        "name": plan.name,
        "provider": plan.target.provider,
        "endpoint": plan.target.endpoint,
        "baseline": plan.baseline,
        "candidate": plan.candidate.name,
        "strategy": plan.strategy.type,
        "steps": steps,
        "promotion": {
            "step": "promote: candidate to 100%, retire the baseline",
            "api_calls": calls.get("set_traffic", []) + calls.get("finalize", []),
        },
        "rollback": {
            "automatic": plan.rollback.automatic,
            "cleanup": plan.rollback.cleanup,
            "api_calls": calls.get("set_traffic", [])
            + (calls.get("finalize", []) if plan.rollback.cleanup else []),
        },
        "before": {"api_calls": calls.get("describe", []) + calls.get("prepare", [])},
        # read before every change; written before the first one and removed at the end
        "ownership": {"api_calls": calls.get("owner", [])},
        "min_seconds": elapsed_min,
        "max_seconds": None if math.isinf(elapsed_max) else elapsed_max,
        "min": format_duration(elapsed_min),
        "max": _duration(elapsed_max),
        "gates": [
            {
                "name": g.name,
                "metric": g.metric,
                # the CLI prints the rule: it carries the method and the time to decide
                "rule": f"{gate_rule(g)} · {m['method']}"
                + (f"; at {m['at_weight']:g}%: {m['decides']}" if m["decides"] else ""),
                "dry_run": g.dry_run,
                **m,
            }
            for g, m in zip(plan.analysis.gates, gate_methods(plan), strict=True)
        ],
        "analysis": {
            "interval": format_duration(plan.analysis.interval),
            "delay": format_duration(plan.analysis.delay),
            "min_requests": plan.analysis.min_requests,
            "no_data": plan.analysis.no_data,
            "max_hold": format_duration(plan.analysis.max_hold),
            "on_inconclusive": plan.analysis.on_inconclusive,
            "alpha": plan.analysis.alpha,
        },
        "world": None if plan.sandbox is None else world_summary(plan.sandbox),
        "warnings": [str(w) for w in loaded.warnings],
    }
