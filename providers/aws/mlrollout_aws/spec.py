"""``target.provider: sagemaker`` — the declarations ``plan validate`` and ``plan preview`` read.

Importing this module must not import boto3 (``mlrollout --help``, ``plan validate`` and ``plan
preview`` stay fast and work without the SDK): :meth:`SageMakerProvider.open` imports the adapter.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from mlrollout.contracts import Capabilities, PlanProblem, ProviderSpec
from mlrollout.plan.model import (
    QUALITY_METRICS,
    BlueGreenStrategy,
    CanaryStrategy,
    LinearStrategy,
    Plan,
    ShadowStrategy,
)
from mlrollout_aws import naming

if TYPE_CHECKING:
    from mlrollout.capture import CaptureSource
    from mlrollout.contracts import EndpointAdapter, MetricsSource, ProviderContext
    from mlrollout_aws.groundtruth import GroundTruthFeedback

CAPABILITIES = Capabilities(weights=True, shadow=True, native_blue_green=True)
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$")
_STATS = re.compile(r"^(Sum|Average|Minimum|Maximum|SampleCount|p\d{1,2}(\.\d+)?)$")
CUSTOM_QUERY_KEYS = frozenset({"namespace", "metric", "dimensions", "stat"})


class SageMakerProvider:
    """SageMaker real-time endpoints; metrics from CloudWatch (``AWS/SageMaker``)."""

    name: str = "sagemaker"
    #: ``capture_s3_uri``: where DataCapture writes when mlrollout turns it on for a shadow.
    #: ``ground_truth_s3_uri``: where Model Monitor's ground-truth records are (feedback: default).
    target_keys: frozenset[str] = frozenset(
        {"region", "profile", "capture_s3_uri", "ground_truth_s3_uri"}
    )
    required_keys: frozenset[str] = frozenset({"region"})
    capabilities: Capabilities = CAPABILITIES
    strategies: frozenset[str] = frozenset({"canary", "linear", "blue_green", "shadow", "ab_test"})
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
        problems += _check_capture(plan)
        native = isinstance(plan.strategy, BlueGreenStrategy) and plan.strategy.native
        if native:
            problems += _check_native(plan)
        gates = plan.analysis.gates
        if not native and len(gates) > naming.MAX_ALARMS:
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
        if isinstance(plan.strategy, BlueGreenStrategy) and plan.strategy.native:
            return _native_calls(plan)
        calls = {
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
        if isinstance(plan.strategy, ShadowStrategy) or (
            isinstance(plan.strategy, BlueGreenStrategy) and plan.strategy.preview == 0
        ):
            calls["set_shadow"] = [
                "SageMaker.DescribeEndpointConfig + ListTags (the live config)",
                "SageMaker.CreateEndpointConfig (one production variant + the candidate in "
                "ShadowProductionVariants, sampling weight = percent x the production weight"
                + ("; DataCapture turned on if off" if needs_capture(plan) else "")
                + "; tagged mlrollout:managed)",
                "SageMaker.UpdateEndpoint",
                "SageMaker.DescribeEndpoint (until InService)",
                "the same to end it: the shadow back to a production variant at weight 0 "
                "(DataCapture as it was)",
            ]
        if needs_capture(plan):
            calls["metrics"] = calls["metrics"] + [
                "SageMaker.DescribeEndpoint (once: DataCaptureConfig.DestinationS3Uri)",
                "S3.ListObjectsV2 per variant per hour prefix of the window (an hour read "
                "after it closed is not listed again)",
                "S3.GetObject per capture file new since the last look",
            ]
        if any(g.metric in QUALITY_METRICS for g in plan.analysis.gates):
            calls["metrics"] = calls["metrics"] + [
                "S3.ListObjectsV2 on the labels' prefix (hour folders of the window; one call "
                "per 1,000 objects)",
                "S3.GetObject per label file new since the last look",
            ]
        return calls

    # ------------------------------------------------------------------------------- open

    def open(self, context: ProviderContext) -> tuple[EndpointAdapter, MetricsSource]:
        from mlrollout_aws.cloudwatch import CloudWatchMetrics
        from mlrollout_aws.sagemaker import SageMakerEndpoint

        endpoint = SageMakerEndpoint.from_context(context)
        endpoint.preflight(context.plan.candidate)  # unknown endpoint or model: exit 6 now
        return endpoint, CloudWatchMetrics.from_context(context)

    def open_metrics(self, context: ProviderContext) -> MetricsSource:
        """CloudWatch alone, for reading history (``impact``, ``plan backtest``): no SageMaker
        call, so an old rollout whose candidate model is gone can still be assessed."""
        from mlrollout_aws.cloudwatch import CloudWatchMetrics

        return CloudWatchMetrics.from_context(context)

    def open_capture(self, context: ProviderContext) -> CaptureSource:
        """The endpoint's DataCapture files in S3 (:mod:`mlrollout_aws.capture`)."""
        from mlrollout_aws.capture import DataCaptureSource

        return DataCaptureSource.from_context(context)

    def open_feedback(self, context: ProviderContext) -> GroundTruthFeedback:
        """Model Monitor's ground truth in S3 joined to the endpoint's DataCapture
        (:mod:`mlrollout_aws.groundtruth`); it also gives ``{jsonl: s3://...}`` feedback the
        DataCapture predictions to join to."""
        from mlrollout_aws.groundtruth import GroundTruthFeedback

        return GroundTruthFeedback.from_context(context)


def needs_capture(plan: Plan | None) -> bool:
    """Does the plan read SageMaker's DataCapture (a capture section or a prediction gate, and
    no ``{jsonl: ...}`` source of its own)?"""
    from mlrollout.plan.model import LABEL_METRICS, PREDICTION_METRICS

    if plan is None:
        return False
    if plan.capture is not None:
        return plan.capture.jsonl is None
    # the quality gates join labels to each variant's captured predictions
    return any(
        g.metric in PREDICTION_METRICS or g.metric in LABEL_METRICS for g in plan.analysis.gates
    )


def capture_on(config: Any) -> bool:
    """Is a ``DataCaptureConfig`` (of a config or DescribeEndpoint's summary) capturing?"""
    if not isinstance(config, dict) or not config.get("DestinationS3Uri"):
        return False
    return bool(config.get("EnableCapture", True))


def capture_uri(plan: Plan | None) -> str | None:
    value = None if plan is None else plan.target.setting("capture_s3_uri")
    return str(value) if value else None


def _check_capture(plan: Plan) -> list[PlanProblem]:
    problems: list[PlanProblem] = []
    for key, what in (
        ("capture_s3_uri", "DataCapture writes to"),
        ("ground_truth_s3_uri", "Model Monitor's ground truth is under"),
    ):
        uri = plan.target.setting(key)
        if uri is not None and not _S3_URI.match(str(uri)):
            problems.append(
                PlanProblem(
                    ("target", key),
                    f"{uri!r} is not an S3 location {what} (s3://BUCKET/PREFIX)",
                )
            )
    strategy = plan.strategy
    if isinstance(strategy, ShadowStrategy) and not (
        0 < strategy.percent <= naming.MAX_SHADOW_PERCENT
    ):
        problems.append(
            PlanProblem(
                ("strategy", "percent"),
                f"a SageMaker shadow variant samples above 0 and at most "
                f"{naming.MAX_SHADOW_PERCENT:g}% of the production variant's requests, "
                f"not {strategy.percent:g}%",
            )
        )
    return problems


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


def _check_native(plan: Plan) -> list[PlanProblem]:
    """SageMaker's limits for its own blue/green deployment (``strategy.native: true``)."""
    from mlrollout_aws import deployment
    from mlrollout_aws.alarms import alarm_count

    strategy = plan.strategy
    assert isinstance(strategy, BlueGreenStrategy)
    problems: list[PlanProblem] = []
    low, high = naming.WAIT_RANGE
    stepped = not isinstance(strategy.switch, str)
    if strategy.preview > 0:
        if strategy.preview > naming.MAX_CANARY_PERCENT:
            problems.append(
                PlanProblem(
                    ("strategy", "preview"),
                    f"a SageMaker canary (CanarySize) is at most {naming.MAX_CANARY_PERCENT:g}% "
                    f"of green's capacity, not {strategy.preview:g}%",
                )
            )
        elif strategy.preview != round(strategy.preview):
            problems.append(
                PlanProblem(
                    ("strategy", "preview"),
                    f"SageMaker's CanarySize is a whole percent, not {strategy.preview:g}",
                )
            )
        if stepped:
            problems.append(
                PlanProblem(
                    ("strategy", "switch"),
                    "SageMaker's deployment is a canary (preview) or linear steps (switch), not "
                    "both: use switch: all_at_once with a preview, or preview: 0 with steps",
                )
            )
    if not isinstance(strategy.switch, str):
        step_low, step_high = naming.LINEAR_STEP_RANGE
        if not step_low <= strategy.switch.step <= step_high:
            problems.append(
                PlanProblem(
                    ("strategy", "switch", "step"),
                    f"a SageMaker linear step (LinearStepSize) is {step_low:g}-{step_high:g}% of "
                    f"green's capacity, not {strategy.switch.step:g}%",
                )
            )
        elif strategy.switch.step != round(strategy.switch.step):
            problems.append(
                PlanProblem(
                    ("strategy", "switch", "step"),
                    f"SageMaker's LinearStepSize is a whole percent, not {strategy.switch.step:g}",
                )
            )
    kind = deployment.routing_type(strategy)
    wait = deployment.wait_interval(strategy)
    wait_key = {"CANARY": "pre_promotion", "LINEAR": "switch", "ALL_AT_ONCE": "post_promotion"}
    wait_path: tuple[str | int, ...] = ("strategy", wait_key[kind])
    if kind == "LINEAR":
        wait_path = ("strategy", "switch", "every")
    if not low <= wait <= high:
        problems.append(
            PlanProblem(
                wait_path,
                f"SageMaker bakes each step for at most {high}s (WaitIntervalInSeconds), "
                f"not {wait:g}s",
            )
        )
    post = strategy.post_promotion
    if kind != "ALL_AT_ONCE" and post is not None and post.max != wait:
        problems.append(
            PlanProblem(
                ("strategy", "post_promotion"),
                f"with a native {kind.lower()} SageMaker bakes every step, the last one too, "
                f"for the same WaitIntervalInSeconds ({wait:g}s, from "
                f"{'.'.join(str(p) for p in wait_path[1:])}): remove post_promotion or make "
                "it equal",
            )
        )
    if kind == "CANARY" and strategy.pre_promotion is None:
        problems.append(
            PlanProblem(
                ("strategy", "pre_promotion"),
                "a native canary needs pre_promotion: SageMaker's baking period on the canary",
            )
        )
    if not low <= strategy.keep_previous <= high:
        problems.append(
            PlanProblem(
                ("strategy", "keep_previous"),
                f"SageMaker keeps blue at most {high}s after the deployment "
                f"(TerminationWaitInSeconds), not {strategy.keep_previous:g}s",
            )
        )
    own = deployment.sagemaker_seconds(strategy)
    if own > naming.EXECUTION_TIMEOUT_RANGE[1]:
        problems.append(
            PlanProblem(
                ("strategy",),
                f"SageMaker's deployment would take up to {own:g}s (provisioning, every bake, "
                f"keep_previous): more than its {naming.EXECUTION_TIMEOUT_RANGE[1]}s "
                "MaximumExecutionTimeoutInSeconds",
            )
        )
    for i, gate in enumerate(plan.analysis.gates):
        if gate.vs_baseline is not None:
            problems.append(
                PlanProblem(
                    ("analysis", "gates", i, "vs_baseline"),
                    f"gate {gate.name!r} compares with the baseline, which native blue/green "
                    "cannot: SageMaker publishes one variant's metrics for both fleets (green "
                    "keeps blue's variant name), so there is no baseline to compare with; use an "
                    "absolute bound (max/min), or native: false",
                )
            )
    alarms = alarm_count(plan)
    if alarms > naming.MAX_ALARMS:
        problems.append(
            PlanProblem(
                ("analysis", "gates"),
                f"the gates need {alarms - 1} CloudWatch alarms plus mlrollout's force-rollback "
                f"alarm: SageMaker's deployment watches at most {naming.MAX_ALARMS}",
            )
        )
    return problems


def _native_calls(plan: Plan) -> dict[str, list[str]]:
    from mlrollout_aws import deployment
    from mlrollout_aws.alarms import alarm_count

    strategy = plan.strategy
    assert isinstance(strategy, BlueGreenStrategy)
    kind = deployment.routing_type(strategy)
    worst = deployment.worst_case(plan)
    timeout = deployment.execution_timeout(plan)
    clamped = f", clamped from {worst:.0f}s" if round(worst) != timeout else ""
    calls = {
        "describe": ["SageMaker.DescribeEndpoint"],
        "start_native": [
            "SageMaker.DescribeEndpoint",
            "SageMaker.DescribeModel",
            f"CloudWatch.DescribeAlarms + PutMetricAlarm x{alarm_count(plan)} (tagged "
            "mlrollout-rollout; one per absolute gate bound, plus the force-rollback alarm)",
            "SageMaker.DescribeEndpointConfig + CreateEndpointConfig (the candidate's model on "
            "the baseline's variant name, tagged mlrollout:managed)",
            f"SageMaker.UpdateEndpoint with DeploymentConfig ({kind}, "
            f"WaitIntervalInSeconds={round(deployment.wait_interval(strategy))}, "
            f"TerminationWaitInSeconds={round(strategy.keep_previous)}, "
            f"MaximumExecutionTimeoutInSeconds={timeout}{clamped}; "
            "AutoRollbackConfiguration: the alarms)",
            "SageMaker.AddTags (the started mark on the new config)",
        ],
        "native_status": [
            "SageMaker.DescribeEndpoint (PendingDeploymentSummary, "
            "LastDeploymentConfig), once per analysis interval"
        ],
        "roll_back_native": [
            "CloudWatch.SetAlarmState ALARM on mlrollout's force-rollback alarm "
            "(SageMaker then rolls back to blue)"
        ],
        "end_native": [
            "CloudWatch.DescribeAlarms + ListTagsForResource per alarm + DeleteAlarms (only "
            "alarms named and tagged as this rollout's)",
            "SageMaker.ListEndpointConfigs + ListTags + DeleteEndpointConfig (only configs "
            "mlrollout created that the endpoint no longer uses)",
        ],
        "metrics": [
            "CloudWatch.GetMetricData (one call per look, all gates, the baseline's variant: "
            "both fleets)"
        ],
        "owner": [
            "SageMaker.ListTags on the endpoint (before every change)",
            "SageMaker.AddTags / DeleteTags mlrollout-rollout/-holder/-expires",
        ],
    }
    return calls


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
