"""A shared state store on Azure Blob Storage: ``--state az://account/container/prefix`` or the
blob URL ``--state https://account.blob.core.windows.net/container/prefix`` (or
``MLROLLOUT_STATE``).

The layout and the semantics are the S3 store's (journal objects committed through the record,
snapshots, leases with fencing tokens, atomic create, corrupt objects): see
:mod:`mlrollout.state.objects`. What is Azure's here is how one blob is written on a condition:
every blob has an ETag, read with its bytes; a create passes ``If-None-Match: *`` (409
``BlobAlreadyExists`` when there is one), a replacement passes ``If-Match: <etag read>`` (412
``ConditionNotMet`` when someone wrote since). Neither writes anything when it fails.

The endpoint's lease is a blob written on those conditions, not a native blob lease: a native
lease lasts 15–60 s or forever on the service's clock, names no holder and carries no fencing
token, while mlrollout's lease has the rollout's TTL on the runner's (injectable) clock, names its
holder in errors and hands out strictly increasing tokens; the ETag conditions make its
take-over as atomic as a native lease would.

Credentials: ``DefaultAzureCredential`` (as the rest of the provider, see
:mod:`mlrollout_azure.auth`), or a connection string from the environment variable
``MLROLLOUT_AZURE_STORAGE_CONNECTION_STRING`` (Azurite, tests, a SAS). The connection string is a
secret: it is never logged, stored in the state, or put into an error message. The identity needs
the *Storage Blob Data Contributor* data actions on the container
(``mlrollout providers azure role``).

Retries: 408, 429, 5xx and connection errors, by the core's one retry loop
(:class:`mlrollout.retry.RetryPolicy`); the SDK's own retry policy is off (``retry_total=0``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core import exceptions as aexc

from mlrollout.adapters import classify, retryable_kind
from mlrollout.errors import StateUnavailable
from mlrollout.retry import RetryPolicy
from mlrollout.state.objects import ObjectStateStore
from mlrollout_azure._azure import blob_service_from_secret

CONNECTION_STRING_ENV = "MLROLLOUT_AZURE_STORAGE_CONNECTION_STRING"
_BLOB_HOST = ".blob.core.windows.net"
_PERMISSION_HINT = (
    "the identity needs the blobs read, write and add data actions on the container (the "
    "Storage Blob Data Contributor role has them)"
)


class BlobStateStore(ObjectStateStore):
    """:class:`~mlrollout.state.base.StateStore` on one blob container and prefix."""

    restore_hint = (
        "restore it from the container's blob versions or soft-deleted blobs, or remove it"
    )

    def __init__(
        self,
        account: str,
        container: str,
        prefix: str = "",
        *,
        service: Any = None,
        account_url: str | None = None,
        connection_string: str | None = None,
        wall: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(f"az://{account}/{container}/", prefix, wall=wall, retry=retry)
        self.account, self.container_name = account, container
        self._owns_service = service is None
        self.service = service or _make_service(
            self.location, account, account_url, connection_string
        )
        self._container = self.service.get_container_client(container)

    def close(self) -> None:
        if self._owns_service:
            self.service.close()

    # ------------------------------------------------------------------------------ calls

    def _retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, aexc.ServiceRequestError | aexc.ServiceResponseError):
            return True
        if isinstance(exc, aexc.HttpResponseError) and exc.status_code:
            return retryable_kind(classify(int(exc.status_code)))
        return False

    def _failed(self, what: str, exc: BaseException, attempts: int) -> BaseException:
        code = error_code(exc)
        if code == "ContainerNotFound":
            return self._missing("container", self.container_name)
        status = getattr(exc, "status_code", None)
        if isinstance(exc, aexc.ClientAuthenticationError) or status in (401, 403):
            why = " ".join(str(part) for part in (status, code) if part) or "no access"
            return self._unavailable(f"{what} was denied ({why})", _PERMISSION_HINT)
        if isinstance(exc, aexc.ServiceRequestError | aexc.ServiceResponseError):
            return self._unavailable(
                f"could not reach Blob Storage for {what} after "
                f"{attempts} attempts ({type(exc).__name__})",
                "check the network and the account name",
            )
        if isinstance(exc, aexc.HttpResponseError):
            # only the status and the service's error code: a message could quote a request
            return self._unavailable(
                f"{what} failed after {attempts} attempts ({status} {code or 'error'})",
                "try again; if it persists, check the storage account in the Azure portal",
            )
        if isinstance(exc, aexc.AzureError):
            return self._unavailable(
                f"{what} failed ({type(exc).__name__})", "check the credentials and the account"
            )
        return exc

    # --------------------------------------------------------------------------- objects

    def _get_object(self, key: str) -> tuple[bytes, str] | None:
        blob = self._container.get_blob_client(key)

        def get() -> tuple[bytes, str] | None:
            try:
                downloader = blob.download_blob()
                return bytes(downloader.readall()), str(downloader.properties.etag)
            except aexc.ResourceNotFoundError as exc:
                if error_code(exc) == "ContainerNotFound":
                    raise
                return None

        found: tuple[bytes, str] | None = self._call("reading a blob", get)
        return found

    def _put_object(
        self, key: str, body: bytes, *, if_match: str | None, if_none_match: bool
    ) -> bool:
        blob = self._container.get_blob_client(key)
        conditions: dict[str, Any] = {}
        if if_none_match:
            conditions = {"overwrite": False, "match_condition": MatchConditions.IfMissing}
        elif if_match is not None:
            conditions = {
                "overwrite": True,
                "etag": if_match,
                "match_condition": MatchConditions.IfNotModified,
            }
        else:
            conditions = {"overwrite": True}

        def put() -> bool:
            try:
                blob.upload_blob(body, blob_type="BlockBlob", **conditions)
            except (aexc.ResourceExistsError, aexc.ResourceModifiedError) as exc:
                if error_code(exc) == "ContainerNotFound":
                    raise
                return False
            except aexc.HttpResponseError as exc:
                if exc.status_code in (409, 412) and error_code(exc) != "ContainerNotFound":
                    return False
                raise
            return True

        return bool(self._call("writing a blob", put))

    def _list_keys(self, prefix: str, *, delimiter: str | None) -> list[str]:
        def listed() -> list[str]:
            if delimiter:
                items = self._container.walk_blobs(name_starts_with=prefix, delimiter=delimiter)
            else:
                items = self._container.list_blobs(name_starts_with=prefix)
            return [str(item.name) for item in items]

        return list(self._call("listing blobs", listed))


def error_code(exc: BaseException) -> str | None:
    """The service's error code (``ContainerNotFound``), whether the SDK gives it as a string or
    as a ``StorageErrorCode`` member."""
    code = getattr(exc, "error_code", None)
    code = getattr(code, "value", code)
    return str(code) if code else None


def _make_service(
    location: str, account: str, account_url: str | None, connection_string: str | None
) -> Any:
    from azure.storage.blob import BlobServiceClient

    # the SDK retries nothing itself: the store's one retry loop does
    options: dict[str, Any] = {"retry_total": 0}
    secret = connection_string or os.environ.get(CONNECTION_STRING_ENV)
    if secret:
        return blob_service_from_secret(
            CONNECTION_STRING_ENV,
            secret,
            account,
            options,
            error=StateUnavailable,
            where=f" for {location}",
            of=location,
            fix="give the state URL of its account",
        )
    from mlrollout_azure.auth import default_credential

    url = account_url or f"https://{account}{_BLOB_HOST}"
    return BlobServiceClient(url, credential=default_credential(), **options)


def open_blob_store(location: str) -> BlobStateStore:
    """``az://account/container/prefix`` or ``https://account.blob.core.windows.net/container/
    prefix`` → a :class:`BlobStateStore` (no query options: a SAS goes into the connection string
    variable, never into the URL, which is shown in messages and stored with the rollouts)."""
    parts = urlsplit(location)
    usage = "use az://ACCOUNT/CONTAINER/PREFIX or https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX"
    if parts.query:
        raise StateUnavailable(
            f"a Blob Storage state location takes no query ({parts.scheme}://{parts.netloc}/...?…)",
            hint=f"a SAS or key goes into {CONNECTION_STRING_ENV}, not into the URL",
        )
    path = parts.path.strip("/").split("/", 1)
    if parts.scheme == "az" and parts.netloc:
        account, rest = parts.netloc, parts.path.strip("/")
        account_url = None
    elif parts.scheme == "https" and parts.netloc.endswith(_BLOB_HOST):
        account = parts.netloc[: -len(_BLOB_HOST)]
        rest, account_url = "/".join(path), f"https://{parts.netloc}"
    else:
        raise StateUnavailable(f"not a Blob Storage state location: {location!r}", hint=usage)
    container, _, prefix = rest.partition("/")
    if not account or not container:
        raise StateUnavailable(
            f"a Blob Storage state location names an account and a container: {location!r}",
            hint=usage,
        )
    return BlobStateStore(account, container, prefix, account_url=account_url)
