"""The least-privilege role definition a plan needs (``mlrollout providers azure role PLAN``).

No network and no azure library. The actions are those of the calls the adapters make
(:mod:`mlrollout_azure.azureml`, :mod:`mlrollout_azure.monitor`; ``plan preview`` lists them,
from :meth:`mlrollout_azure.spec.AzureMLProvider.describe_calls`). The JSON is a custom role
definition as ``az role definition create --role-definition role.json`` reads it, assignable at
the plan's workspace (and at the resources its custom gates read metrics of; with prediction gates
on the data collector, its datastore's container, for reading blobs). With a Blob Storage
state URL (``az://ACCOUNT/CONTAINER/...`` or its ``https://`` blob URL), the data actions of the
state store (:mod:`mlrollout_azure.blobstate`) too, and the container as a scope.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

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
    # (a baseline with a data collector: the SDK registers the candidate's data assets too)
    "online_deployments.begin_create_or_update": (
        f"{_ML}/onlineEndpoints/deployments/write",
        f"{_ML}/data/versions/write",
    ),
    "online_deployments.begin_delete": (f"{_ML}/onlineEndpoints/deployments/delete",),
    # Azure Monitor metrics:getBatch: the endpoint's metrics, and custom gates' resources
    "query_resources": ("Microsoft.Insights/metrics/read",),
}
#: The long-running operations of the writes above, polled until done (Azure-AsyncOperation).
POLL_ACTIONS = (
    "Microsoft.MachineLearningServices/locations/mfeOperationResults/read",
    "Microsoft.MachineLearningServices/locations/mfeOperationsStatus/read",
)


_BLOBS = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs"
#: What the Blob Storage state store does in its container: read a blob, list, write (a create
#: is ``add/action``, a replacement ``write``). The built-in role with them: Storage Blob Data
#: Contributor.
STATE_DATA_ACTIONS = (f"{_BLOBS}/read", f"{_BLOBS}/write", f"{_BLOBS}/add/action")
_BLOB_HOST = ".blob.core.windows.net"
#: The prediction gates on the provider's own capture (:mod:`mlrollout_azure.collector`): the
#: datastore the data collector writes to (one GET), then its blobs (list and read: the data
#: action ``blobs/read``; the built-in role with it: Storage Blob Data Reader).
CAPTURE_ACTIONS = (f"{_ML}/datastores/read",)
CAPTURE_DATA_ACTIONS = (f"{_BLOBS}/read",)


def reads_capture(plan: Plan) -> bool:
    """Do the plan's prediction gates read the data collector's records?"""
    from mlrollout.plan.model import PREDICTION_METRICS

    if not any(g.metric in PREDICTION_METRICS for g in plan.analysis.gates):
        return False
    return plan.capture is None or plan.capture.jsonl is None


def state_container(state: str | None) -> tuple[str, str] | None:
    """``(account, container)`` of a Blob Storage state URL (None for any other state)."""
    if not state:
        return None
    parts = urlsplit(state)
    if parts.scheme == "az":
        account, path = parts.netloc, parts.path
    elif parts.scheme == "https" and parts.netloc.endswith(_BLOB_HOST):
        account, path = parts.netloc[: -len(_BLOB_HOST)], parts.path
    else:
        return None
    container = path.strip("/").split("/", 1)[0]
    return (account, container) if account and container else None


def state_scope(plan: Plan, state: str | None) -> str | None:
    """The ARM scope of the state container. The storage account's resource group is not in
    the URL: ``STORAGE_RESOURCE_GROUP`` stands for it (the plan's subscription is assumed)."""
    found = state_container(state)
    if found is None:
        return None
    account, container = found
    subscription = plan.target.setting("subscription_id") or "SUBSCRIPTION_ID"
    return (
        f"/subscriptions/{subscription}/resourceGroups/STORAGE_RESOURCE_GROUP/providers/"
        f"Microsoft.Storage/storageAccounts/{account}/blobServices/default/containers/{container}"
    )


def actions(plan: Plan) -> list[str]:
    """Every action a rollout of ``plan`` needs, sorted."""
    found = {a for needed in CALL_ACTIONS.values() for a in needed} | set(POLL_ACTIONS)
    if reads_capture(plan):
        found |= set(CAPTURE_ACTIONS)
    return sorted(found)


def capture_scope(plan: Plan) -> str:
    """The ARM scope of the data collector's container: the datastore's account and container
    are not in the plan (``DATASTORE_ACCOUNT``, ``DATASTORE_CONTAINER`` and
    ``STORAGE_RESOURCE_GROUP`` stand for them: ``az ml datastore show -n workspaceblobstore``)."""
    subscription = plan.target.setting("subscription_id") or "SUBSCRIPTION_ID"
    return (
        f"/subscriptions/{subscription}/resourceGroups/STORAGE_RESOURCE_GROUP/providers/"
        "Microsoft.Storage/storageAccounts/DATASTORE_ACCOUNT/blobServices/default/containers/"
        "DATASTORE_CONTAINER"
    )


def workspace_scope(plan: Plan) -> str:
    target = plan.target
    subscription = target.setting("subscription_id") or "SUBSCRIPTION_ID"
    group = target.setting("resource_group") or "RESOURCE_GROUP"
    workspace = target.setting("workspace") or "WORKSPACE"
    return (
        f"/subscriptions/{subscription}/resourceGroups/{group}"
        f"/providers/Microsoft.MachineLearningServices/workspaces/{workspace}"
    )


def role_definition(plan: Plan, state: str | None = None) -> dict[str, Any]:
    """The role definition for running ``plan`` (``Name``, ``IsCustom``, ``Description``,
    ``Actions``, ``NotActions``, ``DataActions``, ``AssignableScopes``); ``state``: the
    ``--state`` URL (on Blob Storage: its data actions, and its container as a scope)."""
    scope = workspace_scope(plan)
    scopes = [scope]
    container = state_scope(plan, state)
    if container is not None:
        scopes.append(container)
    capture = reads_capture(plan)
    if capture:
        scopes.append(capture_scope(plan))
    data_actions = set(STATE_DATA_ACTIONS) if container else set()
    if capture:
        data_actions |= set(CAPTURE_DATA_ACTIONS)
    for gate in plan.analysis.gates:  # custom gates may read another resource's metrics
        resource = (gate.query or {}).get("resource_id") if gate.metric == "custom" else None
        if isinstance(resource, str) and resource.startswith("/") and resource not in scopes:
            scopes.append(resource)
    return {
        "Name": f"mlrollout {plan.name}"[:128],
        "IsCustom": True,
        "Description": (
            f"Staged rollouts of Azure ML online endpoint {plan.target.endpoint} by mlrollout: "
            "deployments, traffic and mirror traffic, ownership tags, Azure Monitor metrics"
            + ("; the data collector's records" if capture else "")
            + ("; rollout state in Blob Storage." if container else ".")
        ),
        "Actions": actions(plan),
        "NotActions": [],
        "DataActions": sorted(data_actions),
        "NotDataActions": [],
        "AssignableScopes": scopes,
    }
