"""``target.provider: vertex`` — the declarations ``plan validate`` and ``plan preview`` read.

Importing this module must not import any Google library (``mlrollout --help``, ``plan validate``
and ``plan preview`` stay fast and work without the SDK): :meth:`VertexProvider.open` imports the
adapter and the metrics source.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from mlrollout.contracts import Capabilities, PlanProblem, ProviderSpec
from mlrollout.plan.model import CanaryStrategy, LinearStrategy, Plan

if TYPE_CHECKING:
    from mlrollout.contracts import EndpointAdapter, MetricsSource, ProviderContext

#: Vertex AI endpoints split live traffic by integer percents; they cannot mirror it.
CAPABILITIES = Capabilities(weights=True, shadow=False, native_blue_green=False)
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$|^\d{1,20}$")
_LOCATION = re.compile(r"^[a-z]+(-[a-z]+)*\d*$")
_MODEL = re.compile(
    r"^(projects/[^/]+/locations/[^/]+/models/)?[A-Za-z0-9][A-Za-z0-9_-]*(@[A-Za-z0-9_-]+)?$"
)
_ALIGNERS = frozenset(
    {"ALIGN_DELTA", "ALIGN_RATE", "ALIGN_SUM", "ALIGN_MEAN", "ALIGN_COUNT", "ALIGN_MAX"}
)
CUSTOM_QUERY_KEYS = frozenset({"metric_type", "filter", "aligner"})
#: Cloud Monitoring rejects alignment periods under a minute.
MIN_ALIGNMENT = 60.0


class VertexProvider:
    """Vertex AI online prediction endpoints; metrics from Cloud Monitoring."""

    name: str = "vertex"
    target_keys: frozenset[str] = frozenset({"project", "location"})
    required_keys: frozenset[str] = frozenset({"project", "location"})
    capabilities: Capabilities = CAPABILITIES
    strategies: frozenset[str] = frozenset({"canary", "linear", "blue_green", "ab_test"})
    install_hint: str = "pip install 'mlrollout[gcp]'"

    # ------------------------------------------------------------------------- validation

    def check_plan(self, plan: Plan) -> list[PlanProblem]:
        problems: list[PlanProblem] = []
        target, candidate = plan.target, plan.candidate
        project = target.setting("project")
        if project and not _PROJECT.match(str(project)):
            problems.append(
                PlanProblem(
                    ("target", "project"),
                    f"{project!r} is not a Google Cloud project id (6-30 lowercase letters, "
                    "digits and hyphens) or number",
                )
            )
        location = target.setting("location")
        if location and not _LOCATION.match(str(location)):
            problems.append(
                PlanProblem(
                    ("target", "location"), f"{location!r} is not a Vertex AI region (us-central1)"
                )
            )
        if not candidate.model:
            problems.append(
                PlanProblem(
                    ("candidate", "model"),
                    "Vertex AI needs the candidate's model (a model id, id@version or "
                    "projects/P/locations/L/models/ID)",
                )
            )
        elif not _MODEL.match(candidate.model):
            problems.append(
                PlanProblem(
                    ("candidate", "model"),
                    f"{candidate.model!r} is not a Vertex AI model reference (a model id, "
                    "id@version or projects/P/locations/L/models/ID)",
                )
            )
        # Without an instance_type the candidate takes the baseline's machine type.
        if candidate.instance_type and candidate.instance_type.startswith("ml."):
            problems.append(
                PlanProblem(
                    ("candidate", "instance_type"),
                    f"{candidate.instance_type!r} is a SageMaker instance type; Vertex AI takes "
                    "a Compute Engine machine type (e.g. n1-standard-4)",
                )
            )
        problems += _check_strategy(plan)
        for i, gate in enumerate(plan.analysis.gates):
            if gate.metric == "custom":
                path: tuple[str | int, ...] = ("analysis", "gates", i, "query")
                if gate.query is None:
                    problems.append(
                        PlanProblem(
                            path,
                            "a custom gate on Vertex AI needs query: {metric_type, filter, "
                            "aligner}",
                        )
                    )
                else:
                    problems += _check_query(gate.query, path)
        interval = plan.analysis.interval
        if interval < MIN_ALIGNMENT:
            problems.append(
                PlanProblem(
                    ("analysis", "interval"),
                    f"Cloud Monitoring aligns metrics to at least 60s; an interval of "
                    f"{interval:g}s would look at the same data twice (use 60s or more)",
                )
            )
        return problems

    # ---------------------------------------------------------------------------- preview

    def describe_calls(self, plan: Plan) -> dict[str, list[str]]:
        metrics = [
            "Monitoring.ListTimeSeries prediction_count (both deployed models)",
            "Monitoring.ListTimeSeries error_count",
        ]
        if any(g.metric.startswith("latency") for g in plan.analysis.gates):
            metrics.append("Monitoring.ListTimeSeries prediction_latencies (distribution)")
        customs = {
            str(g.query.get("metric_type"))
            for g in plan.analysis.gates
            if g.metric == "custom" and g.query
        }
        metrics += [f"Monitoring.ListTimeSeries {m} (custom)" for m in sorted(customs)]
        return {
            "describe": ["Vertex.GetEndpoint (ListEndpoints once to resolve a display name)"],
            "prepare": [
                "Vertex.GetModel (once, before any change)",
                "Vertex.ListOperations (an operation in flight is waited for, not repeated)",
                "Vertex.DeployModel (trafficSplit keeps 100% on the baseline)",
                "Vertex.GetOperation (polled until done)",
            ],
            "set_traffic": ["Vertex.UpdateEndpoint (updateMask traffic_split, integer percents)"],
            "finalize": [
                "Vertex.ListOperations",
                "Vertex.UndeployModel (with the final trafficSplit)",
                "Vertex.GetOperation (polled until done)",
            ],
            "metrics": metrics,
            "owner": [
                "Vertex.GetEndpoint (the endpoint's labels; before every change)",
                "Vertex.UpdateEndpoint (updateMask labels: mlrollout-rollout/-holder/-expires; "
                "before the first change, then when due for refresh)",
                "Vertex.UpdateEndpoint (updateMask labels, without them, when the rollout ends)",
            ],
        }

    # ------------------------------------------------------------------------------- open

    def open(self, context: ProviderContext) -> tuple[EndpointAdapter, MetricsSource]:
        from mlrollout_gcp.monitoring import CloudMonitoringMetrics
        from mlrollout_gcp.vertex import VertexEndpoint

        endpoint = VertexEndpoint.from_context(context)
        return endpoint, CloudMonitoringMetrics.from_context(context, endpoint)


def _check_strategy(plan: Plan) -> list[PlanProblem]:
    strategy = plan.strategy
    problems: list[PlanProblem] = []
    if strategy.type == "shadow":
        problems.append(
            PlanProblem(
                ("strategy", "type"),
                "Vertex AI endpoints cannot mirror (shadow) traffic: only a traffic split "
                "exists. Run a canary at a low weight instead (e.g. steps: [{weight: 1}, "
                "{analyze: 30m}, ...])",
            )
        )
    if isinstance(strategy, CanaryStrategy):
        for i, step in enumerate(strategy.steps):
            if step.weight is not None and step.weight != int(step.weight):
                problems.append(
                    PlanProblem(
                        ("strategy", "steps", i, "weight"),
                        f"Vertex AI splits traffic in whole percents, not {step.weight:g}%",
                    )
                )
    if isinstance(strategy, LinearStrategy) and strategy.step != int(strategy.step):
        problems.append(
            PlanProblem(
                ("strategy", "step"),
                f"Vertex AI splits traffic in whole percents, not {strategy.step:g}%",
            )
        )
    return problems


def _check_query(query: dict[str, Any], path: tuple[str | int, ...]) -> list[PlanProblem]:
    problems = [
        PlanProblem(
            (*path, key), f"unknown key {key!r}; allowed: {', '.join(sorted(CUSTOM_QUERY_KEYS))}"
        )
        for key in sorted(set(query) - CUSTOM_QUERY_KEYS)
    ]
    metric_type = query.get("metric_type")
    if not isinstance(metric_type, str) or "/" not in metric_type:
        problems.append(
            PlanProblem(
                (*path, "metric_type"),
                "a Cloud Monitoring query needs metric_type (e.g. custom.googleapis.com/thumbs_up)",
            )
        )
    flt = query.get("filter")
    if flt is not None and not isinstance(flt, str):
        problems.append(PlanProblem((*path, "filter"), "filter is a Cloud Monitoring filter"))
    aligner = query.get("aligner")
    if aligner is not None and aligner not in _ALIGNERS:
        problems.append(
            PlanProblem(
                (*path, "aligner"),
                f"{aligner!r} is not an aligner mlrollout can sum over a window "
                f"({', '.join(sorted(_ALIGNERS))})",
            )
        )
    return problems


#: The object the ``vertex`` entry point loads.
VertexProviderSpec: ProviderSpec = VertexProvider()
