"""What the Azure ML adapter and the metrics source share: retries on the injected clock, the
mapping of Azure errors onto mlrollout's error tree, and the clients' wire settings.

Every call goes through :func:`call`, the core's one retry loop (``mlrollout.retry.RetryPolicy``,
as the AWS and GCP providers use it). The SDKs' own retry policies are switched off
(``retry_total=0``): :func:`call` retries timeouts (408), throttling (429), unavailability
(500/502/503/504) — the core's table, :func:`mlrollout.adapters.classify` — and connection
errors with exponential backoff and full jitter, sleeping on the rollout's clock, so a virtual
clock makes retries instant. For a mutation it asks ``applied()`` before each retry whether the
attempt whose answer was lost took effect after all (a DELETE answered 503 after it was applied,
a dropped connection): if so nothing is sent again. Given a :class:`~mlrollout.budget.Meter`, each
attempt first takes a token of the subscription's Resource Manager budget for its class (reads,
writes, deletes: :mod:`mlrollout.budget`), and a throttled answer slows that budget down.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from mlrollout.adapters import ErrorKind, call_mapped, classify, retryable_kind
from mlrollout.budget import Meter
from mlrollout.clock import Clock
from mlrollout.errors import MlrolloutError, ProviderAuthError, ProviderError, ProviderThrottled
from mlrollout.retry import RetryPolicy

T = TypeVar("T")
#: The built-in role that covers every call a rollout makes on the workspace.
ROLE = "AzureML Data Scientist"
PERMISSIONS = {
    "read": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/read",
    "write": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/write",
    "deploy": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments/write",
    "delete": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments/delete",
    "model": "Microsoft.MachineLearningServices/workspaces/models/read",
    "metrics": "Microsoft.Insights/metrics/read (role 'Monitoring Reader')",
    "capture": "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read on the "
    "data collector's container (role 'Storage Blob Data Reader')",
}


def retry_policy(clock: Clock) -> RetryPolicy:
    """The Azure clients' retry budget: 10 attempts as azure-core's own default (retry_total=10),
    waits from up to 1 s doubling to at most 30 s, on ``clock``."""
    return RetryPolicy(attempts=10, base=1.0, cap=30.0, sleep=clock.sleep)


def status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if status is None:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def transient(exc: BaseException) -> bool:
    if isinstance(exc, ServiceRequestError | ServiceResponseError | ConnectionError):
        return True
    if isinstance(exc, HttpResponseError):
        return retryable_kind(classify(status_of(exc), error_code(exc)))
    return False


def throttled(exc: BaseException) -> bool:
    return isinstance(exc, HttpResponseError) and (
        classify(status_of(exc), error_code(exc)) is ErrorKind.THROTTLED
    )


def budget_meter(clock: Clock, subscription_id: str) -> Meter:
    """The API budget of calls in ``subscription_id`` (Resource Manager counts per subscription)."""
    return Meter("azureml", subscription_id or "default", clock)


#: The Resource Manager class (mlrollout.budget) of each permission a call needs.
_CLASSES = {"write": "write", "deploy": "write", "delete": "delete"}


def error_code(exc: BaseException) -> str | None:
    """The service's error code (``TooManyRequests``, ``BadArgument``...), if it sent one."""
    code = getattr(getattr(exc, "error", None), "code", None)
    return str(code) if code else None


def call(
    retry: RetryPolicy,
    fn: Callable[[], T],
    *,
    action: str,
    what: str,
    permission: str,
    applied: Callable[[], bool] | None = None,
    meter: Meter | None = None,
) -> T | None:
    """``fn()`` through :func:`mlrollout.adapters.call_mapped`, retried on transient errors; an
    Azure error that ends it is raised as :func:`provider_error` (``action``, ``what``,
    ``permission``), anything else as it is (``applied`` as there; ``meter``: the API budget it
    spends, if any, in the class of ``permission``)."""

    def mapped(exc: BaseException, attempts: int) -> BaseException:
        if type(exc).__module__.startswith("azure.") or transient(exc):
            return provider_error(exc, action, what, permission)
        return exc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # azure-ai-ml's deprecation and experimental notices
        return call_mapped(
            fn,
            retry=retry,
            retryable=transient,
            map_error=mapped,
            applied=applied,
            spend=None if meter is None else meter.spend("arm", _CLASSES.get(permission, "read")),
            throttled=throttled,
        )


def describe_error(exc: BaseException, *, first_line: bool = False) -> str:
    """The error's message on one line of at most 300 characters (only its first line with
    ``first_line``), led by the service's error code."""
    message = str(getattr(exc, "message", None) or exc)
    if first_line:
        message = (message.strip().splitlines() or [""])[0]
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    text = " ".join(message.split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{code}: {text}" if code and code not in text else text


def provider_error(exc: BaseException, action: str, what: str, permission: str) -> ProviderError:
    """An Azure exception as mlrollout's error: auth (exit 6 naming the role), not found,
    throttled after retries, or any other provider error."""
    detail = describe_error(exc)
    status = status_of(exc)
    grant = (
        f"grant the identity the '{ROLE}' role on the workspace (or the permission "
        f"{PERMISSIONS.get(permission, permission)})"
    )
    if isinstance(exc, ClientAuthenticationError) and status is None:
        # DefaultAzureCredential's message has a line per credential it tried: keep the first.
        return ProviderAuthError(
            f"no Azure credentials to {action}: {describe_error(exc, first_line=True)} "
            "(--debug shows why each credential failed)",
            hint="sign in with `az login`, or set AZURE_TENANT_ID/AZURE_CLIENT_ID/"
            "AZURE_CLIENT_SECRET (or a workload/managed identity); " + grant,
        )
    if status == 401:
        return ProviderAuthError(
            f"Azure rejected the credentials (401) to {action}: {detail}",
            hint="refresh the sign-in (`az login`) or check AZURE_TENANT_ID; " + grant,
        )
    if status == 403:
        return ProviderAuthError(
            f"the identity may not {action} (403 forbidden): {detail}", hint=grant
        )
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return ProviderError(f"{what} not found ({action}): {detail}")
    if classify(status, error_code(exc)) is ErrorKind.THROTTLED:
        return ProviderThrottled(
            f"Azure kept answering {status or error_code(exc)} to {action} after retries: {detail}",
            hint="try again later; other tools may be calling the same workspace",
        )
    if isinstance(exc, ServiceRequestError | ServiceResponseError | ConnectionError):
        return ProviderError(
            f"cannot reach Azure to {action}: {detail}",
            hint="check the network (and target.endpoint_url / metrics_url if set)",
        )
    return ProviderError(f"Azure failed to {action}: {detail}")


class _NoPollerDots:
    """``sys.stdout`` minus the progress dots azure-ai-ml's operation pollers print from their
    own threads (``LROPoller(...)``), which may outlive the call that began the operation."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if text == "." and threading.current_thread().name.startswith("LROPoller"):
            return len(text)
        return int(self._stream.write(text))

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """azure-ai-ml prints a progress dot to stdout on every poll of a deployment operation: keep
    stdout clean (``--output json``). The filter stays in place (the poller thread may print after
    the operation is confirmed) and only drops the pollers' dots."""
    if not isinstance(sys.stdout, _NoPollerDots):
        sys.stdout = _NoPollerDots(sys.stdout)  # type: ignore[assignment,unused-ignore]
    yield


def quiet_sdk_loggers() -> None:
    """azure-ai-ml's modules log progress ("Check: endpoint exists") at INFO on their own
    handlers (so the level of the ``azure`` logger does not reach them); a rollout reports
    progress itself. They are kept at least as quiet as the ``azure`` logger (which the CLI
    silences unless ``--debug``)."""
    parent = logging.getLogger("azure").level
    for name in ["azure.ai.ml", *logging.Logger.manager.loggerDict]:
        if name.startswith("azure.ai.ml"):
            logger = logging.getLogger(name)
            # Its activity telemetry logs an expected 404 (a probe) at ERROR: not an error here.
            # Its notices that a class (DataCollector) is experimental are not the user's.
            noisy = "_telemetry" in name or "_experimental" in name
            floor = max(parent, logging.CRITICAL if noisy else logging.WARNING)
            if logger.level < floor:
                logger.setLevel(floor)


def client_kwargs(endpoint_url: str | None) -> dict[str, Any]:
    """MLClient settings: the public cloud, or a cloud named after ``endpoint_url`` whose resource
    manager is that URL (an emulator). MLClient caches clouds by name for the whole process, so
    the name includes the URL."""
    common: dict[str, Any] = {"show_progress": False, "enable_telemetry": False, "retry_total": 0}
    if not endpoint_url:
        return {**common, "cloud": "AzureCloud"}
    base = endpoint_url.rstrip("/") + "/"
    metadata = {
        "resource_manager": base,
        "azure_portal": base,
        "active_directory": base,
        "aml_resource_id": base,
        "storage_endpoint": "core.windows.net",
        "registry_discovery_endpoint": base,
    }
    return {
        **common,
        "cloud": f"mlrollout-emulator-{base}",
        "cloud_metadata": metadata,
        "polling_interval": 0,
    }


def ml_client(target: Any, credential: Any) -> Any:
    """The ``MLClient`` of the workspace that ``target`` (an
    :class:`~mlrollout_azure.azureml.AzureTarget`) names; azure-ai-ml's import and construction
    warn (deprecations, experimental notices): quietly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from azure.ai.ml import MLClient

        return MLClient(
            credential,
            target.subscription_id,
            target.resource_group,
            target.workspace,
            **client_kwargs(target.endpoint_url),
        )


def blob_service_from_secret(
    env: str,
    secret: str,
    account: str,
    options: dict[str, Any],
    *,
    error: type[MlrolloutError],
    where: str,
    of: str,
    fix: str,
) -> Any:
    """A ``BlobServiceClient`` from the connection string ``secret`` (read from the variable
    ``env``), which must be for the storage account ``account``, else ``error``. The string is a
    secret: neither it nor the SDK's message (which may quote it) is ever put into an error.
    In the errors: ``where`` follows "is not valid" (" for az://..." or nothing), ``of`` says whose
    account ``account`` is, ``fix`` what to give instead of the string."""
    from azure.core.exceptions import AzureError
    from azure.storage.blob import BlobServiceClient

    try:
        service = BlobServiceClient.from_connection_string(secret, **options)
    except (ValueError, AzureError):
        # never the string itself, nor the SDK's message (which may quote it): no chain
        raise error(
            f"the connection string in {env} is not valid{where}",
            hint="copy it again from the storage account's access keys (or Azurite's docs)",
        ) from None
    if service.account_name != account:
        service.close()
        raise error(
            f"the connection string in {env} is for account "
            f"{service.account_name!r}, not {account!r} of {of}",
            hint=f"unset {env}, or {fix}",
        )
    return service
