"""The least-privilege role definition a plan needs (``mlrollout providers azure role PLAN``).

No network and no azure library. The actions are those of the calls the adapters make
(:mod:`mlrollout_azure.azureml`, :mod:`mlrollout_azure.monitor`; ``plan preview`` lists them,
from :meth:`mlrollout_azure.spec.AzureMLProvider.describe_calls`). The JSON is a custom role
definition as ``az role definition create --role-definition role.json`` reads it, assignable at
the plan's workspace (and at the resources its custom gates read metrics of).
"""

from __future__ import annotations

from typing import Any

from mlrollout.plan.model import Plan

_ML = "Microsoft.MachineLearningServices/workspaces"

#: The Azure RBAC actions each call needs, by the SDK call the adapter makes (``MLClient``'s
#: operations; ``_online_operation``: the ARM client of online endpoints that writes the
#: ownership tags; ``query_resources``: Azure Monitor's ``metrics:getBatch``).
CALL_ACTIONS: dict[str, tuple[str, ...]] = {
    # the preflight, once
    "workspaces.get": (f"{_ML}/read",),
    "models.get": (f"{_ML}/models/read", f"{_ML}/models/versions/read"),
    # describe; traffic and mirror traffic
    "online_endpoints.get": (f"{_ML}/onlineEndpoints/read",),
    "online_endpoints.begin_create_or_update": (f"{_ML}/onlineEndpoints/write",),
    # the ownership mark (tags): GET and PATCH of the endpoint
    "_online_operation.get": (f"{_ML}/onlineEndpoints/read",),
    "_online_operation.begin_update": (f"{_ML}/onlineEndpoints/write",),
    # deployments: describe, prepare (a copy of the baseline at 0 %), finalize (the loser)
    "online_deployments.list": (f"{_ML}/onlineEndpoints/deployments/read",),
    "online_deployments.get": (f"{_ML}/onlineEndpoints/deployments/read",),
    "online_deployments.begin_create_or_update": (f"{_ML}/onlineEndpoints/deployments/write",),
    "online_deployments.begin_delete": (f"{_ML}/onlineEndpoints/deployments/delete",),
    # Azure Monitor metrics:getBatch: the endpoint's metrics, and custom gates' resources
    "query_resources": ("Microsoft.Insights/metrics/read",),
}
#: The long-running operations of the writes above, polled until done (Azure-AsyncOperation).
POLL_ACTIONS = (
    "Microsoft.MachineLearningServices/locations/mfeOperationResults/read",
    "Microsoft.MachineLearningServices/locations/mfeOperationsStatus/read",
)


def actions(plan: Plan) -> list[str]:
    """Every action a rollout of ``plan`` needs, sorted."""
    return sorted({a for needed in CALL_ACTIONS.values() for a in needed} | set(POLL_ACTIONS))


def workspace_scope(plan: Plan) -> str:
    target = plan.target
    subscription = target.setting("subscription_id") or "SUBSCRIPTION_ID"
    group = target.setting("resource_group") or "RESOURCE_GROUP"
    workspace = target.setting("workspace") or "WORKSPACE"
    return (
        f"/subscriptions/{subscription}/resourceGroups/{group}"
        f"/providers/Microsoft.MachineLearningServices/workspaces/{workspace}"
    )


def role_definition(plan: Plan) -> dict[str, Any]:
    """The role definition for running ``plan`` (``Name``, ``IsCustom``, ``Description``,
    ``Actions``, ``NotActions``, ``AssignableScopes``)."""
    scope = workspace_scope(plan)
    scopes = [scope]
    for gate in plan.analysis.gates:  # custom gates may read another resource's metrics
        resource = (gate.query or {}).get("resource_id") if gate.metric == "custom" else None
        if isinstance(resource, str) and resource.startswith("/") and resource not in scopes:
            scopes.append(resource)
    return {
        "Name": f"mlrollout {plan.name}"[:128],
        "IsCustom": True,
        "Description": (
            f"Staged rollouts of Azure ML online endpoint {plan.target.endpoint} by mlrollout: "
            "deployments, traffic and mirror traffic, ownership tags, Azure Monitor metrics."
        ),
        "Actions": actions(plan),
        "NotActions": [],
        "DataActions": [],
        "NotDataActions": [],
        "AssignableScopes": scopes,
    }
