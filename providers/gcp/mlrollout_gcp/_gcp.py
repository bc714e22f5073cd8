"""The one seam to the Google libraries: credentials, retries and error mapping.

Every call goes through :func:`call`, which

- retries 429, 503 (and 408/500/502/504: the core's table, :func:`mlrollout.adapters.classify`)
  and connection errors with exponential backoff and full jitter (the core's
  ``RetryPolicy.call``), sleeping on the injected clock. ``aiplatform_v1``
  clients do not retry them themselves, and mlrollout passes ``retry=None`` to the Monitoring
  client, so there is exactly one retry policy and call counts are what they look like;
- for a mutation, asks ``applied()`` before each retry whether the earlier attempt already took
  effect (the response may be lost after the change was made), so no mutation is applied twice;
- given a :class:`~mlrollout.budget.Meter`, takes a token of the project and region's API
  budget before each attempt (:mod:`mlrollout.budget`: the Vertex AI and Cloud Monitoring
  limits), and slows that budget down on a throttled answer;
- maps what is left to the mlrollout error tree at the boundary, by HTTP code only (the REST
  transport turns FAILED_PRECONDITION into ``BadRequest``), naming the call and the IAM
  permission it needs::

      google.auth DefaultCredentialsError     -> ProviderAuthError   (exit 6)
      401 / 403                               -> ProviderAuthError   (exit 6)
      429 / 503, retries exhausted            -> ProviderThrottled   (exit 6)
      5xx / connection, retries exhausted     -> ProviderError       (exit 6)
      TypeError, KeyError... (a bug)          -> raised as it is     (exit 70)
      any other API error                     -> GcpCallError        (exit 6; callers may look at
                                                 its HTTP code: 404 unknown endpoint or model)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import google.auth
import google.auth.exceptions
import requests.exceptions
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials, Credentials

from mlrollout.adapters import (
    ErrorKind,
    answer_error,
    call_mapped,
    classify,
    is_programming_error,
    retryable_kind,
)
from mlrollout.budget import Meter
from mlrollout.clock import Clock
from mlrollout.errors import ProviderAuthError, ProviderError
from mlrollout.retry import RetryPolicy

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)

#: The IAM permission each call needs, by the client method's name.
PERMISSIONS = {
    "get_endpoint": "aiplatform.endpoints.get",
    "list_endpoints": "aiplatform.endpoints.list",
    "deploy_model": "aiplatform.endpoints.deploy (and aiplatform.models.deploy on the model)",
    "undeploy_model": "aiplatform.endpoints.undeploy",
    "update_endpoint": "aiplatform.endpoints.update",
    "get_operation": "aiplatform.operations.get",
    "list_operations": "aiplatform.operations.list",
    "get_model": "aiplatform.models.get",
    "list_time_series": "monitoring.timeSeries.list",
}
#: The API name each call shows in messages.
API_NAMES = {
    "get_endpoint": "Vertex.GetEndpoint",
    "list_endpoints": "Vertex.ListEndpoints",
    "deploy_model": "Vertex.DeployModel",
    "undeploy_model": "Vertex.UndeployModel",
    "update_endpoint": "Vertex.UpdateEndpoint",
    "get_operation": "Vertex.GetOperation",
    "list_operations": "Vertex.ListOperations",
    "get_model": "Vertex.GetModel",
    "list_time_series": "Monitoring.ListTimeSeries",
}
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
)


class GcpCallError(ProviderError):
    """An API error the caller may handle by its HTTP code (404 unknown resource, 400...)."""

    def __init__(self, message: str, *, code: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


def is_plain_http(url: str | None) -> bool:
    return bool(url) and urlsplit(str(url)).scheme == "http"


def credentials_for(url: str | None, *, what: str) -> Credentials:
    """Application Default Credentials; anonymous ones for a plain-HTTP emulator (no token ever
    travels in clear text, and an emulator needs none)."""
    if is_plain_http(url):
        return AnonymousCredentials()  # type: ignore[no-untyped-call]
    try:
        credentials, _project = google.auth.default(scopes=SCOPES)
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise ProviderAuthError(
            f"no Google Cloud credentials for {what}: {exc}",
            hint="run `gcloud auth application-default login`, set "
            "GOOGLE_APPLICATION_CREDENTIALS, or run with a service account that has the "
            "Vertex AI User role (aiplatform.endpoints.* permissions)",
        ) from exc
    return credentials


def http_code(exc: BaseException) -> int:
    if isinstance(exc, gexc.GoogleAPICallError):
        return int(exc.code or 0)
    return 0


def throttled(exc: BaseException) -> bool:
    return isinstance(exc, gexc.GoogleAPICallError) and (
        classify(http_code(exc)) is ErrorKind.THROTTLED
    )


def budget_meter(clock: Clock, *, project: str, location: str) -> Meter:
    """The API budget of calls to ``project`` in ``location``."""
    return Meter("vertex", f"{project or 'default'}/{location or 'global'}", clock)


#: The service of a client method, where it is not Vertex AI's (the API budget's buckets).
_SERVICES = {"list_time_series": "monitoring"}


def retryable(exc: BaseException) -> bool:
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    if isinstance(exc, gexc.RetryError):
        return True
    return isinstance(exc, gexc.GoogleAPICallError) and retryable_kind(classify(http_code(exc)))


def call(
    method: Callable[..., Any],
    operation: str,
    *,
    retry: RetryPolicy,
    applied: Callable[[], bool] | None = None,
    meter: Meter | None = None,
    **params: Any,
) -> Any:
    """``method(**params)`` through :func:`mlrollout.adapters.call_mapped` (see the module doc;
    ``applied`` as there; ``meter``: the API budget it spends, if any)."""
    service = _SERVICES.get(operation, "aiplatform")
    return call_mapped(
        lambda: method(**params),
        retry=retry,
        retryable=retryable,
        map_error=lambda exc, attempts: map_error(operation, exc, attempts=attempts),
        applied=applied,
        spend=None if meter is None else meter.spend(service, operation),
        throttled=throttled,
    )


def map_error(operation: str, exc: BaseException, *, attempts: int = 1) -> BaseException:
    """The mlrollout error for a failed call (foreign exceptions never escape the provider),
    or ``exc`` itself for a bug (:func:`~mlrollout.adapters.is_programming_error`), which the
    caller raises as it is."""
    if is_programming_error(exc):
        return exc
    name = API_NAMES.get(operation, operation)
    permission = PERMISSIONS.get(operation, "the Vertex AI User role")
    if isinstance(exc, google.auth.exceptions.DefaultCredentialsError):
        return ProviderAuthError(
            f"no Google Cloud credentials for {name}: {exc}",
            hint="run `gcloud auth application-default login` or set "
            f"GOOGLE_APPLICATION_CREDENTIALS; the identity needs {permission}",
        )
    if isinstance(exc, google.auth.exceptions.GoogleAuthError):
        return ProviderAuthError(
            f"{name}: Google Cloud credentials could not be used: {exc}",
            hint=f"refresh the credentials; the identity needs {permission}",
        )
    if isinstance(exc, _CONNECTION_ERRORS):
        return ProviderError(
            f"{name} could not reach Google Cloud after {attempts} attempts: {exc}",
            hint="check the network, target.location and target.endpoint_url / metrics_url",
        )
    code = http_code(exc)
    message = getattr(exc, "message", None) or str(exc)
    kind = classify(code or None, type(exc).__name__)
    if isinstance(exc, gexc.RetryError):
        kind = ErrorKind.TRANSIENT  # the client's own deadline ran out
    mapped = answer_error(
        kind,
        call=name,
        attempts=attempts,
        code=code or type(exc).__name__,
        message=message,
        auth_hint=f"grant IAM permission {permission} (e.g. the Vertex AI User role, "
        "roles/aiplatform.user; Monitoring Viewer for metrics)",
        quota_hint="lower the call rate (a longer analysis.interval) or raise the project's quota",
        cloud="Google Cloud",
    )
    if mapped is not None:
        return mapped
    if isinstance(exc, gexc.GoogleAPICallError):
        return GcpCallError(f"{name} failed ({code}): {message}", code=code)
    return ProviderError(f"{name} failed: {type(exc).__name__}: {exc}")
