"""What ``plan preview`` shows: the timeline, the gates and the API calls — without network."""

from __future__ import annotations

import math
from typing import Any

from mlrollout.contracts import ProviderSpec
from mlrollout.plan.loader import LoadedPlan
from mlrollout.plan.model import LATENCY_METRICS, QUALITY_METRICS, Gate, Plan
from mlrollout.plan.timeline import timeline
from mlrollout.plugins import provider_spec
from mlrollout.sandbox.world import mean_rps
from mlrollout.sandbox.world import summary as world_summary
from mlrollout.units import format_duration, format_latency, format_rate


def gate_rule(gate: Gate) -> str:
    """A gate's rule in words: ``error_rate <= baseline +25%``."""
    parts = []

    def bound(value: float) -> str:
        if gate.metric == "error_rate" or gate.metric in QUALITY_METRICS:
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
    if not parts:  # an A/B test's winner gate: no bound, better is the other way than worse
        better = "higher" if gate.worse_when == "decrease" else "lower"
        parts.append(f"compared both ways ({better} is better)")
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
    share = weight / 100
    mirror = next((r.mirror for r in analyze if r.mirror > 0), None)
    if mirror is not None and not any(0 < r.candidate_weight < 100 for r in analyze):
        # judged on a mirrored copy: the candidate answers mirror% of the baseline's requests
        weight, share = mirror, mirror / (100 + mirror)
    gates = plan.analysis.gates
    deciding = max(1, sum(1 for g in gates if not g.dry_run))
    alpha = plan.analysis.alpha / (stages * deciding)
    sandbox = plan.sandbox
    rps = mean_rps(sandbox) * weight / 100 if sandbox is not None else None
    baseline_rate = 0.01
    first = next(iter(sandbox.variants.values())) if sandbox and sandbox.variants else None
    if first is not None:
        baseline_rate = first.error_rate if first.error_rate > 0 else 0.01
    out = []
    from mlrollout.engine.strategies import strategy_for

    strategy = strategy_for(plan)
    winner = strategy.winner(plan) if strategy is not None else None
    for gate in gates:
        effect = winner[1] if winner is not None and gate.name == winner[0] else None
        rate = baseline_rate
        if effect is not None and first is not None:  # the winner: the sandbox's own rate
            simulated = first.custom.get(str((gate.query or {}).get("metric", "")))
            rate = float(simulated) if simulated else rate
        e = expect(gate, alpha, share, rate, min_effect=effect)
        out.append(
            {
                "method": e.method,
                "decides": e.text(rps),
                "at_weight": weight,
                "mirrored": mirror is not None and share != weight / 100,
                "fail_requests": _finite(e.fail_requests),
                "pass_requests": _finite(e.pass_requests),
            }
        )
    return out


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else math.ceil(value)


def _duration(seconds: float) -> str:
    return "until approved" if math.isinf(seconds) else format_duration(seconds)


def ending_text(plan: Plan) -> str:
    """How the rollout ends once every step is done, in words."""
    from mlrollout.engine.strategies import strategy_for

    strategy = strategy_for(plan)
    if strategy is not None and strategy.ending(plan) == "remove":
        return "end: remove the candidate (an evaluation); the baseline keeps serving"
    if getattr(plan.strategy, "native", False):
        return "promote: the platform has retired blue; remove what its deployment needed"
    return "promote: candidate to 100%, retire the baseline"


def _flags(plan: Plan) -> dict[str, Any] | None:
    """Who may get the candidate, and where the split is written (``flags``)."""
    if plan.flags is None:
        return None
    segments = []
    for segment in plan.segments:
        match = ", ".join(
            f"{k} in {', '.join(v)}" if isinstance(v, list) else f"{k} = {v}"
            for k, v in segment.match.items()
        )
        share = (
            "follows the steps" if segment.weight is None else f"{segment.weight:g}% at every step"
        )
        segments.append({"name": segment.name, "match": match, "candidate": share})
    return {
        "provider": plan.flags.provider,
        "key": plan.flags.key,
        "file": plan.flags.file,
        "segments": segments,
        "others": "the baseline" if plan.segments else "follow the steps",
    }


def _fleet_preview(loaded: LoadedPlan) -> dict[str, Any]:
    """A fleet's preview: each target's rollout as the first target's preview shows it, and the
    fleet's waves (``fleet``)."""
    from mlrollout.plan.fleet import member_plan, waves_of

    plan = loaded.plan
    first = LoadedPlan(plan=member_plan(plan, 0), path=loaded.path, text=loaded.text)
    data = build_preview(first)
    data["endpoint"] = (
        f"{len(plan.targets)} targets ({', '.join(t.endpoint for t in plan.targets)})"
    )
    providers = list(dict.fromkeys(t.provider for t in plan.targets))
    if len(providers) > 1:
        # A mixed fleet: the timeline is the first target's; the API calls are each platform's,
        # from its first target.
        data["provider"] = " and ".join(providers)
        by_provider: dict[str, Any] = {}
        for provider in providers:
            index = next(i for i, t in enumerate(plan.targets) if t.provider == provider)
            member = LoadedPlan(plan=member_plan(plan, index), path=loaded.path, text=loaded.text)
            by_provider[provider] = api_calls(data if index == 0 else build_preview(member))
        data["api_calls_by_provider"] = by_provider
    waves = plan.waves
    data["fleet"] = {
        "targets": [
            {"wave": t.wave, "provider": t.provider, "endpoint": t.endpoint, "changes": t.sandbox}
            for t in plan.targets
        ],
        "waves": waves_of(plan),
        "max_parallel": waves.max_parallel if waves else 1,
        "on_failure": waves.on_failure if waves else "rollback_all",
        "alpha_per_target": plan.analysis.alpha,
    }
    return data


def api_calls(preview: dict[str, Any]) -> dict[str, Any]:
    """The API calls a preview lists, by when they are made: ``before``, ``ownership``, each
    kind of step (``weight``, ``analyze``, ...: the first step of a kind), ``promotion`` and
    ``rollback``."""
    steps: dict[str, list[str]] = {}
    for step in preview["steps"]:
        if step["api_calls"]:
            steps.setdefault(step["kind"], step["api_calls"])
    return {
        "before": preview["before"]["api_calls"],
        "ownership": preview["ownership"]["api_calls"],
        "steps": steps,
        "promotion": preview["promotion"]["api_calls"],
        "rollback": preview["rollback"]["api_calls"],
    }


def build_preview(loaded: LoadedPlan) -> dict[str, Any]:
    plan: Plan = loaded.plan
    if plan.targets:
        return _fleet_preview(loaded)
    spec: ProviderSpec = provider_spec(plan.target.provider)
    calls = spec.describe_calls(plan)
    source = plan.analysis.source
    if not isinstance(source, str):  # a metrics-source plugin reads the metrics, not the provider
        [name] = list(source)
        calls = {**calls, "metrics": [f"metrics source {name!r}: its queries at each look"]}
    if plan.flags is not None:
        # The split is written into the flag file; the platform's own split moves only at the
        # promotion (everyone on the candidate) and stays on the baseline until then.
        flag = [f"write flag {plan.flags.key!r} (flagd) to {plan.flags.file}"]
        calls = {**calls, "set_flag": flag}
    rows = timeline(plan)
    steps: list[dict[str, Any]] = []
    elapsed_min = elapsed_max = 0.0
    for row in rows:
        elapsed_min += row.min_seconds
        elapsed_max += row.max_seconds
        kind = row.step.kind
        every = f" (every {format_duration(plan.analysis.interval)})"
        api = {
            "weight": calls.get("set_flag") or calls.get("set_traffic", []),
            "mirror": calls.get("set_shadow", []),
            "analyze": [c + every for c in calls.get("metrics", [])],
            "native": calls.get("native_status", [])
            + [c + every for c in calls.get("metrics", [])],
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
                "gates": (
                    [g.name for g in plan.analysis.gates] if kind in ("analyze", "native") else []
                ),
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
            "step": ending_text(plan),
            "api_calls": calls.get("end_native")
            or calls.get("set_flag", []) + calls.get("set_traffic", []) + calls.get("finalize", []),
        },
        "rollback": {
            "how": (
                "the platform rolls back to blue (forced through its alarm), then what its "
                "deployment needed is removed"
                if "roll_back_native" in calls
                else "traffic back to the baseline first, "
                + (
                    "then remove the candidate"
                    if plan.rollback.cleanup
                    else "keep the candidate at 0%"
                )
            ),
            "automatic": plan.rollback.automatic,
            "cleanup": plan.rollback.cleanup,
            "api_calls": (
                calls["roll_back_native"] + calls.get("end_native", [])
                if "roll_back_native" in calls
                else calls.get("set_flag", [])
                + calls.get("set_traffic", [])
                + (calls.get("finalize", []) if plan.rollback.cleanup else [])
            ),
        },
        "before": {
            "api_calls": list(
                dict.fromkeys(
                    calls.get("describe", [])
                    + (calls.get("start_native") or calls.get("prepare", []))
                )
            )
        },
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
                + (
                    f"; at {m['at_weight']:g}%{' mirrored' if m['mirrored'] else ''}: "
                    f"{m['decides']}"
                    if m["decides"]
                    else ""
                ),
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
        "flags": _flags(plan),
        "warnings": [str(w) for w in loaded.warnings],
    }
