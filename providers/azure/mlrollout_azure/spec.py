"""``target.provider: azureml`` — the declarations ``plan validate`` and ``plan preview`` read.

Importing this module imports no azure library (``mlrollout --help``, ``plan validate`` and ``plan
preview`` stay fast and work without the SDK): :meth:`AzureMLProvider.open` imports the adapter and
the metrics source, which import ``azure-ai-ml`` and ``azure-monitor-querymetrics``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from mlrollout.contracts import Capabilities, PlanProblem, ProviderSpec
from mlrollout.plan.model import CanaryStrategy, LinearStrategy, Plan, ShadowStrategy

if TYPE_CHECKING:
    from mlrollout.capture import CaptureSource
    from mlrollout.contracts import EndpointAdapter, MetricsSource, ProviderContext

#: Azure ML mirrors at most this share of live traffic, to one deployment.
MAX_MIRROR_PERCENT = 50.0
CAPABILITIES = Capabilities(
    weights=True, shadow=True, native_blue_green=False, max_mirror_percent=MAX_MIRROR_PERCENT
)
#: Online endpoint names: 3-32 characters, a letter first, letters, digits and hyphens.
ENDPOINT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")
#: Deployment names: 3-32 characters, a letter first, letters, digits and hyphens.
DEPLOYMENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
#: A model in the workspace: ``name:version`` (``azureml:`` prefix allowed), or a registry asset.
MODEL_REF = re.compile(r"^(azureml:)?(?P<name>[A-Za-z0-9_.-]{1,255}):(?P<version>[A-Za-z0-9_.-]+)$")
REGISTRY_REF = re.compile(r"^azureml://registries/[^/]+/models/[^/]+/versions/[^/]+$")
CUSTOM_QUERY_KEYS = frozenset({"metric", "namespace", "resource_id", "aggregation", "dimension"})
AGGREGATIONS = ("Total", "Average", "Count", "Maximum", "Minimum")
ENDPOINT_NAMESPACE = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"


class AzureMLProvider:
    """Azure ML managed online endpoints; metrics from Azure Monitor."""

    name: str = "azureml"
    target_keys: frozenset[str] = frozenset(
        {
            "subscription_id",
            "resource_group",
            "workspace",
            "capture_datastore",
            "capture_collection",
        }
    )
    required_keys: frozenset[str] = frozenset({"subscription_id", "resource_group", "workspace"})
    capabilities: Capabilities = CAPABILITIES
    #: ``shadow``: mirror traffic (``mirror_traffic``), judged with the data collector's records.
    strategies: frozenset[str] = frozenset({"canary", "linear", "blue_green", "shadow", "ab_test"})
    install_hint: str = "pip install 'mlrollout[azure]'"

    # ------------------------------------------------------------------------- validation

    def check_plan(self, plan: Plan) -> list[PlanProblem]:
        problems: list[PlanProblem] = []
        target, candidate = plan.target, plan.candidate
        sub = target.setting("subscription_id")
        if sub and not _GUID.match(str(sub)):
            problems.append(
                PlanProblem(
                    ("target", "subscription_id"),
                    f"{sub!r} is not an Azure subscription id (a GUID such as "
                    "00000000-0000-0000-0000-000000000000)",
                )
            )
        if not ENDPOINT_NAME.match(target.endpoint):
            problems.append(PlanProblem(("target", "endpoint"), _bad_name("an online endpoint")))
        if not DEPLOYMENT_NAME.match(candidate.name):
            problems.append(PlanProblem(("candidate", "name"), _bad_name("a deployment")))
        if plan.baseline != "auto" and not DEPLOYMENT_NAME.match(plan.baseline):
            problems.append(PlanProblem(("baseline",), _bad_name("a deployment")))
        model = candidate.model
        if not model:
            problems.append(
                PlanProblem(
                    ("candidate", "model"),
                    "Azure ML needs the candidate's model: name:version of a workspace model "
                    "(e.g. churn-model:7) or azureml://registries/REG/models/NAME/versions/V",
                )
            )
        elif not (MODEL_REF.match(model) or REGISTRY_REF.match(model)):
            problems.append(
                PlanProblem(
                    ("candidate", "model"),
                    f"{model!r} is not an Azure ML model reference: name:version (e.g. "
                    "churn-model:7) or azureml://registries/REG/models/NAME/versions/V",
                )
            )
        problems += _check_strategy(plan)
        problems += _check_capture(plan)
        if plan.analysis.interval < 60:
            problems.append(
                PlanProblem(
                    ("analysis", "interval"),
                    f"Azure Monitor's finest granularity is one minute: an interval of "
                    f"{plan.analysis.interval:g}s would read the same minutes again (use 60s+)",
                )
            )
        for i, gate in enumerate(plan.analysis.gates):
            if gate.metric == "custom":
                path = ("analysis", "gates", i, "query")
                if gate.query is None:
                    problems.append(
                        PlanProblem(path, "a custom gate on Azure Monitor needs query.metric")
                    )
                else:
                    problems += check_query(gate.query, path)
        return problems

    # ---------------------------------------------------------------------------- preview

    def describe_calls(self, plan: Plan) -> dict[str, list[str]]:
        return {
            "describe": [
                "AzureML GET onlineEndpoint + GET deployments (x2)",
                "first time: GET workspace, GET model version",
            ],
            "prepare": [
                "AzureML GET baseline deployment",
                f"AzureML PUT deployment {plan.candidate.name} (0 %) + poll its operation",
            ],
            "set_traffic": ["AzureML PUT onlineEndpoint traffic (whole %) + poll its operation"],
            "set_shadow": [
                "AzureML PUT onlineEndpoint mirror_traffic (one deployment, whole %, at most "
                f"{MAX_MIRROR_PERCENT:g} %) + poll its operation"
            ],
            "finalize": ["AzureML DELETE deployment (the loser, at 0 %) + poll its operation"],
            "metrics": [
                "Azure Monitor metrics:getBatch RequestsPerMinute by deployment, statusCodeClass",
                "Azure Monitor metrics:getBatch RequestLatency_P50/P90/P95/P99 (latency gates)",
                "Azure Monitor metrics:getBatch per custom metric group (custom gates)",
            ],
            "capture": [
                "AzureML GET the data collector's datastore (the first look only)",
                "Blob List Blobs per deployment per open hour (modelDataCollector/ENDPOINT/"
                "DEPLOYMENT/COLLECTION/yyyy/MM/dd/HH/), at most one each per look",
                "Blob Get Blob (ranged: the new bytes) per blob new or grown since the last look",
            ],
            "owner": [
                "AzureML GET onlineEndpoint (its tags; before every change)",
                "AzureML PATCH onlineEndpoint tags mlrollout-rollout/-holder/-expires + poll its "
                "operation (before the first change, then when due for refresh)",
                "AzureML PATCH onlineEndpoint tags without them (when the rollout ends)",
            ],
        }

    # ------------------------------------------------------------------------------- open

    def open_capture(self, context: ProviderContext) -> CaptureSource:
        """The deployments' data collector records (``capture: {source: default}``): see
        :mod:`mlrollout_azure.collector`. Nothing is called before the first look."""
        from mlrollout_azure import auth
        from mlrollout_azure.collector import open_data_collector

        return open_data_collector(context, auth.default_credential())

    def open(self, context: ProviderContext) -> tuple[EndpointAdapter, MetricsSource]:
        from mlrollout_azure import auth
        from mlrollout_azure.azureml import AzureMLEndpoint
        from mlrollout_azure.monitor import AzureMonitorMetrics

        credential = auth.default_credential()
        endpoint = AzureMLEndpoint.from_context(context, credential)
        return endpoint, AzureMonitorMetrics.from_context(context, credential, endpoint)


def _bad_name(what: str) -> str:
    return (
        f"not {what} name Azure ML accepts: 3-32 letters, digits and hyphens, starting with a "
        "letter and not ending with a hyphen"
    )


def _whole(value: float) -> bool:
    return float(value).is_integer()


def _check_strategy(plan: Plan) -> list[PlanProblem]:
    strategy = plan.strategy
    problems: list[PlanProblem] = []
    if isinstance(strategy, CanaryStrategy):
        for i, step in enumerate(strategy.steps):
            if step.weight is not None and not _whole(step.weight):
                problems.append(
                    PlanProblem(
                        ("strategy", "steps", i, "weight"),
                        f"Azure ML routes traffic in whole percents, not {step.weight:g}%",
                    )
                )
    elif isinstance(strategy, LinearStrategy):
        if not _whole(strategy.step):
            problems.append(
                PlanProblem(
                    ("strategy", "step"),
                    f"Azure ML routes traffic in whole percents, not {strategy.step:g}%",
                )
            )
    elif isinstance(strategy, ShadowStrategy) and (
        strategy.percent > MAX_MIRROR_PERCENT or not _whole(strategy.percent)
    ):
        problems.append(
            PlanProblem(
                ("strategy", "percent"),
                f"Azure ML mirrors at most {MAX_MIRROR_PERCENT:g}% of live traffic (whole "
                f"percents) to one deployment, not {strategy.percent:g}%",
            )
        )
    return problems


#: The data collector's collections mlrollout reads predictions from.
CAPTURE_COLLECTIONS = ("model_outputs", "response")


def _check_capture(plan: Plan) -> list[PlanProblem]:
    problems: list[PlanProblem] = []
    target = plan.target
    collection = target.setting("capture_collection")
    if collection is not None and collection not in CAPTURE_COLLECTIONS:
        problems.append(
            PlanProblem(
                ("target", "capture_collection"),
                f"{collection!r} is not a data collector collection mlrollout reads: "
                "model_outputs (custom logging, the default) or response (payload logging)",
            )
        )
    datastore = target.setting("capture_datastore")
    if datastore is not None and (not isinstance(datastore, str) or not datastore.strip()):
        problems.append(
            PlanProblem(("target", "capture_datastore"), "the name of a workspace datastore")
        )
    return problems


def check_query(query: dict[str, Any], path: tuple[str | int, ...]) -> list[PlanProblem]:
    """A custom gate's Azure Monitor query: ``{metric, namespace?, resource_id?, aggregation?,
    dimension?}``; by default on the online endpoint, split by ``deployment``."""
    problems = [
        PlanProblem(
            (*path, key), f"unknown key {key!r}; allowed: {', '.join(sorted(CUSTOM_QUERY_KEYS))}"
        )
        for key in sorted(set(query) - CUSTOM_QUERY_KEYS)
    ]
    if not isinstance(query.get("metric"), str) or not query["metric"]:
        problems.append(PlanProblem((*path, "metric"), "an Azure Monitor query needs metric"))
    for key in ("namespace", "resource_id", "dimension"):
        if key in query and (not isinstance(query[key], str) or not query[key]):
            problems.append(PlanProblem((*path, key), f"{key} is text"))
    aggregation = query.get("aggregation")
    if aggregation is not None and aggregation not in AGGREGATIONS:
        problems.append(
            PlanProblem(
                (*path, "aggregation"),
                f"{aggregation!r} is not an Azure Monitor aggregation ({', '.join(AGGREGATIONS)})",
            )
        )
    return problems


#: The object the ``azureml`` entry point loads.
AzureMLProviderSpec: ProviderSpec = AzureMLProvider()
