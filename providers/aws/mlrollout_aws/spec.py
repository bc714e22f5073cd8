"""``target.provider: sagemaker`` — the declarations ``plan validate`` and ``plan preview`` read.

Importing this module must not import boto3 (``mlrollout --help``, ``plan validate`` and ``plan
preview`` stay fast and work without the SDK): :meth:`SageMakerProvider.open` imports the adapter.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from mlrollout.contracts import Capabilities, PlanProblem, ProviderSpec
from mlrollout.plan.model import CanaryStrategy, LinearStrategy, Plan
from mlrollout_aws import naming

if TYPE_CHECKING:
    from mlrollout.contracts import EndpointAdapter, MetricsSource, ProviderContext

CAPABILITIES = Capabilities(weights=True, shadow=False, native_blue_green=False)
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_STATS = re.compile(r"^(Sum|Average|Minimum|Maximum|SampleCount|p\d{1,2}(\.\d+)?)$")
CUSTOM_QUERY_KEYS = frozenset({"namespace", "metric", "dimensions", "stat"})


class SageMakerProvider:
    """SageMaker real-time endpoints; metrics from CloudWatch (``AWS/SageMaker``)."""

    name: str = "sagemaker"
    target_keys: frozenset[str] = frozenset({"region", "profile"})
    required_keys: frozenset[str] = frozenset({"region"})
    capabilities: Capabilities = CAPABILITIES
    strategies: frozenset[str] = frozenset({"canary", "linear", "blue_green"})
    install_hint: str = "pip install 'mlrollout[aws]'"

    # ------------------------------------------------------------------------- validation

    def check_plan(self, plan: Plan) -> list[PlanProblem]:
        problems: list[PlanProblem] = []
        target, candidate = plan.target, plan.candidate
        region = target.setting("region")
        if region and not _REGION.match(str(region)):
            problems.append(
                PlanProblem(("target", "region"), f"{region!r} is not an AWS region (us-east-1)")
            )
        if not naming.NAME_PATTERN.match(target.endpoint):
            problems.append(PlanProblem(("target", "endpoint"), _bad_name("an endpoint")))
        if not naming.NAME_PATTERN.match(candidate.name):
            problems.append(PlanProblem(("candidate", "name"), _bad_name("a variant")))
        if plan.baseline != "auto" and not naming.NAME_PATTERN.match(plan.baseline):
            problems.append(PlanProblem(("baseline",), _bad_name("a variant")))
        if not candidate.model:
            problems.append(
                PlanProblem(
                    ("candidate", "model"), "SageMaker needs the candidate's model (a model name)"
                )
            )
        if not candidate.instance_type:
            problems.append(
                PlanProblem(
                    ("candidate", "instance_type"),
                    "SageMaker needs the candidate's instance_type (e.g. ml.m5.large)",
                )
            )
        problems += _check_strategy(plan)
        gates = plan.analysis.gates
        if len(gates) > naming.MAX_ALARMS:
            problems.append(
                PlanProblem(
                    ("analysis", "gates"),
                    f"{len(gates)} gates: SageMaker deployments watch at most "
                    f"{naming.MAX_ALARMS} alarms",
                )
            )
        for i, gate in enumerate(gates):
            if gate.metric == "custom" and gate.query is not None:
                problems += _check_query(gate.query, ("analysis", "gates", i, "query"))
        interval = plan.analysis.interval
        if not naming.valid_period(interval):
            problems.append(
                PlanProblem(
                    ("analysis", "interval"),
                    f"CloudWatch periods are 1, 5, 10, 30 s or a multiple of 60 s, "
                    f"not {interval:g}s",
                )
            )
        return problems

    # ---------------------------------------------------------------------------- preview

    def describe_calls(self, plan: Plan) -> dict[str, list[str]]:
        return {
            "describe": ["SageMaker.DescribeEndpoint"],
            "prepare": [
                "SageMaker.DescribeModel",
                "SageMaker.DescribeEndpointConfig",
                "SageMaker.CreateEndpointConfig (tagged mlrollout:managed)",
                "SageMaker.UpdateEndpoint",
                "SageMaker.DescribeEndpoint (until InService)",
            ],
            "set_traffic": [
                "SageMaker.UpdateEndpointWeightsAndCapacities",
                "SageMaker.DescribeEndpoint (until InService)",
            ],
            "finalize": [
                "SageMaker.DescribeEndpointConfig",
                "SageMaker.CreateEndpointConfig (unless the pre-rollout config fits)",
                "SageMaker.UpdateEndpoint",
                "SageMaker.DescribeEndpoint (until InService)",
                "SageMaker.ListEndpointConfigs + ListTags",
                "SageMaker.DeleteEndpointConfig (only configs mlrollout created)",
            ],
            "metrics": ["CloudWatch.GetMetricData (one call per look, all gates, both variants)"],
            "owner": [
                "SageMaker.ListTags on the endpoint (before every change)",
                "SageMaker.AddTags mlrollout-rollout/-holder/-expires (before the first change, "
                "then when due for refresh)",
                "SageMaker.DeleteTags of those keys (when the rollout ends)",
            ],
        }

    # ------------------------------------------------------------------------------- open

    def open(self, context: ProviderContext) -> tuple[EndpointAdapter, MetricsSource]:
        from mlrollout_aws.cloudwatch import CloudWatchMetrics
        from mlrollout_aws.sagemaker import SageMakerEndpoint

        endpoint = SageMakerEndpoint.from_context(context)
        endpoint.preflight(context.plan.candidate)  # unknown endpoint or model: exit 6 now
        return endpoint, CloudWatchMetrics.from_context(context)


def _bad_name(what: str) -> str:
    return (
        f"not {what} name SageMaker accepts: 1-63 letters, digits and hyphens, "
        "starting with a letter or digit"
    )


def _check_strategy(plan: Plan) -> list[PlanProblem]:
    strategy = plan.strategy
    if isinstance(strategy, CanaryStrategy):
        for i, step in enumerate(strategy.steps):
            if step.weight is not None and step.weight > 0:
                if step.weight > naming.MAX_CANARY_PERCENT and step.weight < 100:
                    return [
                        PlanProblem(
                            ("strategy", "steps", i, "weight"),
                            f"the first canary step is {step.weight:g}%: a SageMaker canary "
                            f"takes at most {naming.MAX_CANARY_PERCENT:g}% of the traffic",
                        )
                    ]
                return []
    if isinstance(strategy, LinearStrategy):
        low, high = naming.LINEAR_STEP_RANGE
        if not low <= strategy.step <= high:
            return [
                PlanProblem(
                    ("strategy", "step"),
                    f"a SageMaker linear step is {low:g}-{high:g}% of the traffic, "
                    f"not {strategy.step:g}%",
                )
            ]
    return []


def _check_query(query: dict[str, Any], path: tuple[str | int, ...]) -> list[PlanProblem]:
    problems = [
        PlanProblem(
            (*path, key), f"unknown key {key!r}; allowed: {', '.join(sorted(CUSTOM_QUERY_KEYS))}"
        )
        for key in sorted(set(query) - CUSTOM_QUERY_KEYS)
    ]
    for key in ("namespace", "metric"):
        if not isinstance(query.get(key), str) or not query[key]:
            problems.append(PlanProblem((*path, key), f"a CloudWatch query needs {key} (text)"))
    dims = query.get("dimensions")
    if dims is not None and not (
        isinstance(dims, dict) and all(isinstance(v, str | int | float) for v in dims.values())
    ):
        problems.append(
            PlanProblem((*path, "dimensions"), "dimensions map names to values ({Name: value})")
        )
    stat = query.get("stat")
    if stat is not None and not (isinstance(stat, str) and _STATS.match(stat)):
        problems.append(
            PlanProblem(
                (*path, "stat"),
                f"{stat!r} is not a CloudWatch statistic (Sum, Average, Minimum, Maximum, "
                "SampleCount, p99...)",
            )
        )
    return problems


#: The object the ``sagemaker`` entry point loads.
SageMakerProviderSpec: ProviderSpec = SageMakerProvider()
