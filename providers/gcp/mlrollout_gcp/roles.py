"""The least-privilege custom role a plan needs (``mlrollout providers gcp role PLAN``).

No network and no Google library. The permissions are those of the calls the adapters make
(:mod:`mlrollout_gcp.vertex`, :mod:`mlrollout_gcp.monitoring`; ``plan preview`` lists them,
from :meth:`mlrollout_gcp.spec.VertexProvider.describe_calls`), by the client method that makes
each call. The JSON is a custom-role definition as ``gcloud iam roles create ID
--project PROJECT --file role.json`` reads it. With a ``gs://`` state URL, the permissions of the
Cloud Storage state store (:mod:`mlrollout_gcp.gcsstate`) too.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from mlrollout.plan.model import Plan

#: The IAM permissions each client call needs, by the client method's name.
CALL_PERMISSIONS: dict[str, tuple[str, ...]] = {
    # Vertex AI (EndpointServiceClient, ModelServiceClient)
    "get_endpoint": ("aiplatform.endpoints.get",),  # describe; the ownership labels
    "list_endpoints": ("aiplatform.endpoints.list",),  # a display name resolved once
    "get_model": ("aiplatform.models.get",),  # the candidate's model, before any change
    "deploy_model": ("aiplatform.endpoints.deploy", "aiplatform.models.deploy"),  # prepare
    "update_endpoint": ("aiplatform.endpoints.update",),  # traffic split; ownership labels
    "undeploy_model": ("aiplatform.endpoints.undeploy",),  # finalize
    "list_operations": ("aiplatform.operations.list",),  # an operation in flight is awaited
    "get_operation": ("aiplatform.operations.get",),  # deploy/undeploy polled until done
    # Cloud Monitoring (MetricServiceClient): every metric, custom ones included
    "list_time_series": ("monitoring.timeSeries.list",),
}

#: What the ``gs://`` state store does on its bucket: read an object, write one (a create, or a
#: conditional replacement, which needs ``delete`` as well as ``create``), list a prefix.
STATE_PERMISSIONS = (
    "storage.objects.create",
    "storage.objects.delete",
    "storage.objects.get",
    "storage.objects.list",
)

_TITLE_MAX = 100
_DESCRIPTION_MAX = 256


def state_bucket(state: str | None) -> str | None:
    """The bucket of a ``gs://`` state URL (None for any other state)."""
    if not state or not state.startswith("gs://"):
        return None
    return urlsplit(state).netloc or None


def permissions(plan: Plan, state: str | None = None) -> list[str]:
    """Every permission a rollout of ``plan`` needs, sorted. An endpoint given by its id or
    resource name needs no ``list_endpoints`` (only a display name is looked up). With
    ``state`` on Cloud Storage, the state store's object permissions too."""
    endpoint = plan.target.endpoint
    calls = dict(CALL_PERMISSIONS)
    if endpoint.startswith("projects/") or endpoint.isdigit():
        del calls["list_endpoints"]
    needed = {p for needed in calls.values() for p in needed}
    if state_bucket(state):
        needed |= set(STATE_PERMISSIONS)
    return sorted(needed)


def custom_role(plan: Plan, state: str | None = None) -> dict[str, Any]:
    """The custom-role definition for running ``plan`` (``title``, ``description``,
    ``includedPermissions``, ``stage``). IAM conditions can narrow it further to the plan's
    endpoint (``resource.name``), and the storage permissions to the state bucket
    (``resource.name.startsWith("projects/_/buckets/BUCKET")``); a custom role itself is
    project-wide. ``state``: the ``--state`` URL (a ``gs://`` one adds its bucket's needs)."""
    target = plan.target
    project = str(target.setting("project") or "PROJECT")
    location = str(target.setting("location") or "LOCATION")
    title = f"mlrollout {plan.name}"[:_TITLE_MAX]
    description = (
        f"Staged rollouts of Vertex AI endpoint {target.endpoint} ({project}, {location}) by "
        "mlrollout: deploy/undeploy models, split traffic, label ownership, read Cloud "
        "Monitoring metrics"
        + (f"; state in gs://{state_bucket(state)}." if state_bucket(state) else ".")
    )[:_DESCRIPTION_MAX]
    return {
        "title": title,
        "description": description,
        "includedPermissions": permissions(plan, state),
        "stage": "GA",
    }
