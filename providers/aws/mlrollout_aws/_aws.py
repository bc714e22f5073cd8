"""The one seam to boto3: clients, retries and error mapping, for every AWS call mlrollout makes.

Every call goes through :func:`call`, which

- retries throttling, 5xx and connection errors with exponential backoff and full jitter
  (the core's ``RetryPolicy.call``), sleeping on the injected clock (botocore's own retries are
  off, so there is exactly one retry policy and call counts are what they look like);
- for a mutation, asks ``applied()`` before each retry whether the earlier attempt already took
  effect (the response may be lost after the change was made), so no mutation is applied twice;
- given a :class:`~mlrollout.budget.Meter`, takes a token of the API budget of the account
  (profile) and region before each attempt (:mod:`mlrollout.budget`: SageMaker, CloudWatch and
  S3 limits), and slows that budget down on a throttled answer;
- maps what is left to the mlrollout error tree at the boundary, classified by the core's table
  (:func:`mlrollout.adapters.classify`, AWS's auth and transient codes first), naming the call
  and the IAM action it needs::

      botocore NoCredentialsError            -> ProviderAuthError   (exit 6)
      ClientError AccessDenied*, bad token   -> ProviderAuthError   (exit 6)
      throttling (429/503, Throttling*...),  -> ProviderThrottled   (exit 6)
        retries exhausted
      5xx / connection, retries exhausted    -> ProviderError       (exit 6)
      TypeError, KeyError... (a bug)         -> raised as it is     (exit 70)
      any other ClientError                  -> ProviderError       (exit 6), or raised as
                                                AwsCallError for callers that handle a code
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import botocore.exceptions as bex
import botocore.session
from botocore.config import Config

from mlrollout.adapters import (
    ErrorKind,
    answer_error,
    call_mapped,
    classify,
    is_programming_error,
    is_throttling,
    retryable_kind,
)
from mlrollout.budget import Meter
from mlrollout.clock import Clock
from mlrollout.errors import ProviderAuthError, ProviderError
from mlrollout.retry import RetryPolicy

TRANSIENT_CODES = frozenset(
    {
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "InternalServiceError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidAccessKeyId",
        "ExpiredToken",
        "ExpiredTokenException",
        "SignatureDoesNotMatch",
        "AuthFailure",
        "MissingAuthenticationToken",
    }
)
_CONNECTION_ERRORS = (
    bex.EndpointConnectionError,
    bex.ConnectionClosedError,
    bex.ReadTimeoutError,
    bex.ConnectTimeoutError,
)
#: IAM service prefix by botocore service name, where they differ.
_IAM_PREFIX = {"monitoring": "cloudwatch"}
#: IAM action by (service, operation), where it is not ``prefix:Operation``.
_IAM_ACTION = {
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "HeadObject"): "s3:GetObject",
    ("s3", "HeadBucket"): "s3:ListBucket",
}


class AwsCallError(ProviderError):
    """A ClientError the caller may handle by its code (``ValidationException``...)."""

    def __init__(self, message: str, *, code: str, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.status = status


def client_config() -> Config:
    return Config(
        retries={"total_max_attempts": 1, "mode": "standard"},  # our retries, not botocore
        connect_timeout=5,
        read_timeout=30,
        user_agent_extra="mlrollout",
    )


_LOADER: Any = None


def _loader() -> Any:
    """One botocore data loader per process: service models are parsed once, not per client."""
    global _LOADER
    if _LOADER is None:
        import botocore.loaders

        _LOADER = botocore.loaders.create_loader()
    return _LOADER


def make_client(
    service: str,
    *,
    region: str | None,
    profile: str | None = None,
    endpoint_url: str | None = None,
) -> Any:
    """A client with its own session (credentials resolved afresh), sharing parsed models."""
    try:
        core = botocore.session.Session()
        core.register_component("data_loader", _loader())
        session = boto3.session.Session(
            profile_name=profile, region_name=region, botocore_session=core
        )
    except bex.ProfileNotFound as exc:
        raise ProviderAuthError(
            f"AWS profile {profile!r} is not configured",
            hint="set target.profile to a profile in ~/.aws/config, or remove it",
        ) from exc
    return session.client(service, endpoint_url=endpoint_url or None, config=client_config())


def iam_action(client: Any, operation: str) -> str:
    service = client.meta.service_model.service_name
    api = api_of(client, operation)
    return _IAM_ACTION.get((service, api)) or f"{_IAM_PREFIX.get(service, service)}:{api}"


def api_name(client: Any, operation: str) -> str:
    service = client.meta.service_model.service_id
    api = api_of(client, operation)
    return f"{service.replace(' ', '')}.{api}"


def error_code(exc: BaseException) -> str:
    if isinstance(exc, bex.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _status(exc: bex.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def kind_of(exc: bex.ClientError) -> ErrorKind:
    """The shared classification of a ClientError (AWS's own auth and transient codes first:
    most of them come with status 400)."""
    code = error_code(exc)
    if code in AUTH_CODES:
        return ErrorKind.AUTH
    if code in TRANSIENT_CODES and not is_throttling(_status(exc), code):
        return ErrorKind.TRANSIENT
    return classify(_status(exc), code)


def throttled(exc: BaseException) -> bool:
    return isinstance(exc, bex.ClientError) and kind_of(exc) is ErrorKind.THROTTLED


def budget_meter(clock: Clock, *, region: str | None, profile: str | None = None) -> Meter:
    """The API budget of calls made with ``profile`` (the account behind it) in ``region``."""
    return Meter("sagemaker", f"{profile or 'default'}@{region or 'default'}", clock)


def retryable(exc: BaseException) -> bool:
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    return isinstance(exc, bex.ClientError) and retryable_kind(kind_of(exc))


def call(
    client: Any,
    operation: str,
    *,
    retry: RetryPolicy,
    applied: Callable[[], bool] | None = None,
    meter: Meter | None = None,
    **params: Any,
) -> Any:
    """``client.<operation>(**params)`` through :func:`mlrollout.adapters.call_mapped` (see the
    module doc; ``applied`` as there; ``meter``: the API budget it spends, if any)."""
    method = getattr(client, operation)
    service = client.meta.service_model.service_name
    return call_mapped(
        lambda: method(**params),
        retry=retry,
        retryable=retryable,
        map_error=lambda exc, attempts: map_error(client, operation, exc, attempts=attempts),
        applied=applied,
        spend=None if meter is None else meter.spend(service, api_of(client, operation)),
        throttled=throttled,
    )


def api_of(client: Any, operation: str) -> str:
    """The API name of a client method (``get_metric_data`` -> ``GetMetricData``)."""
    return str(client.meta.method_to_api_mapping.get(operation, operation))


def map_error(client: Any, operation: str, exc: BaseException, *, attempts: int) -> BaseException:
    """The mlrollout error for a failed call (foreign exceptions never escape the provider)."""
    if is_programming_error(exc):
        return exc  # a bug: raised as it is
    name = api_name(client, operation)
    action = iam_action(client, operation)
    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
        return ProviderAuthError(
            f"no AWS credentials for {name}: {exc}",
            hint="configure credentials (AWS_PROFILE, target.profile, environment variables or "
            f"an instance role) with {action} allowed",
        )
    if isinstance(exc, _CONNECTION_ERRORS):
        return ProviderError(
            f"{name} could not reach AWS after {attempts} attempts: {exc}",
            hint="check the network, target.region and target.endpoint_url",
        )
    if isinstance(exc, bex.ClientError):
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "") or str(exc)
        kind = kind_of(exc)
        mapped = answer_error(
            kind,
            call=name,
            attempts=attempts,
            code=code if kind is ErrorKind.AUTH else code or _status(exc),
            message=message,
            auth_hint=f"allow IAM action {action}; `mlrollout providers aws iam-policy PLAN` "
            "prints the whole least-privilege policy",
            quota_hint="lower the call rate (a longer analysis.interval) or raise the account "
            "quota",
            cloud="AWS",
        )
        if mapped is not None:
            return mapped
        return AwsCallError(f"{name} failed ({code}): {message}", code=code, status=_status(exc))
    if isinstance(exc, bex.BotoCoreError):
        return ProviderError(f"{name} failed: {exc}")
    return exc
