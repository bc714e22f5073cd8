"""Files on Azure Blob Storage for :func:`mlrollout.objects.open_objects`: the ``az`` and
``https`` schemes of the ``mlrollout.objects`` entry-point group (the feedback and capture
readers' labels, the flag writer's flag file).

Locations: ``az://ACCOUNT/CONTAINER/PREFIX`` or the blob URL
``https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX`` (any other ``https`` host is refused,
as the state store refuses it: these schemes are Azure's only). The root is one blob when a
blob has exactly the name ``PREFIX``, else the "folder" ``PREFIX/`` (keys are relative to it).
A query is refused except ``?endpoint_url=URL`` (the account's blob endpoint, for Azurite or a
private endpoint). The factory's ``endpoint_url`` argument (the plan's ``target.endpoint_url``) is
not used: on Azure it points at the control plane (ARM), another host than Blob Storage. A SAS or
key never goes into the URL (which is shown in messages): it goes into
``MLROLLOUT_AZURE_STORAGE_CONNECTION_STRING``, as for the state store; without it,
``DefaultAzureCredential``. Neither the string nor the SDK's message (which may quote a request)
is ever put into an error.

Calls: one ``List Blobs`` (paged by the SDK) per :meth:`BlobFiles.list`, one ``Get Blob`` per
read, one ``Put Blob`` per write (a whole blob: readers never see half of it). Retries: 408, 429,
5xx and connection errors (the provider's :func:`~mlrollout_azure._azure.transient`) by the
core's one retry loop (the SDK's own is off). Errors are
:class:`~mlrollout.errors.ProviderError` naming the call and the fix; a missing blob reads as
``None``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from azure.core import exceptions as aexc

from mlrollout.errors import ProviderError
from mlrollout.objects import ObjectInfo
from mlrollout.retry import RetryPolicy
from mlrollout_azure._azure import blob_service_from_secret, transient
from mlrollout_azure.blobstate import CONNECTION_STRING_ENV, error_code

T = TypeVar("T")
_BLOB_HOST = ".blob.core.windows.net"
_USAGE = (
    "use az://ACCOUNT/CONTAINER/PREFIX or https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX"
)
_PERMISSION_HINT = (
    "the identity needs the blobs read (and, to write, write) data actions on the container "
    "(the Storage Blob Data Reader or Contributor role)"
)


class BlobFiles:
    """:class:`~mlrollout.objects.ObjectFiles` under one container and prefix."""

    def __init__(
        self,
        location: str,
        account: str,
        container: str,
        prefix: str,
        *,
        service: Any = None,
        account_url: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.location = location
        self.account, self.container_name, self.prefix = account, container, prefix.strip("/")
        self.retry = retry or RetryPolicy()
        self.service = service or _make_service(location, account, account_url)
        self._container = self.service.get_container_client(container)
        self._single: bool | None = None  # is the root one blob? (known after a listing)
        self.calls: list[str] = []  # the operations sent, for the tests' call counts

    # -------------------------------------------------------------------------------- keys

    def _folder(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def _name(self, key: str) -> str:
        if not key:
            return self.prefix
        return self._folder() + key

    # --------------------------------------------------------------------------- interface

    def read(self, key: str = "") -> bytes | None:
        blob = self._container.get_blob_client(self._name(key))

        def get() -> bytes | None:
            self.calls.append("get_blob")
            try:
                return bytes(blob.download_blob().readall())
            except aexc.ResourceNotFoundError as exc:
                if error_code(exc) == "ContainerNotFound":
                    raise
                return None

        found: bytes | None = self._call(f"reading {self._url(key)}", get)
        return found

    def write(self, data: bytes, key: str = "", *, content_type: str = "application/json") -> None:
        from azure.storage.blob import ContentSettings

        blob = self._container.get_blob_client(self._name(key))

        def put() -> None:
            self.calls.append("put_blob")
            blob.upload_blob(
                data,
                blob_type="BlockBlob",
                overwrite=True,
                content_settings=ContentSettings(content_type=content_type),
            )

        self._call(f"writing {self._url(key)}", put)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        def listed() -> list[ObjectInfo]:
            self.calls.append("list_blobs")
            out: list[ObjectInfo] = []
            single: ObjectInfo | None = None
            folder = self._folder()
            start = self.prefix if not prefix else folder + prefix
            for item in self._container.list_blobs(name_starts_with=start):
                name = str(item.name)
                info = ObjectInfo(
                    name[len(folder) :] if name.startswith(folder) else "",
                    int(item.size or 0),
                    item.last_modified.timestamp() if item.last_modified else 0.0,
                )
                if self.prefix and name == self.prefix:
                    single = ObjectInfo("", info.size, info.modified)
                elif name.startswith(folder):
                    out.append(info)
            if single is not None and not prefix:
                return [single]  # the root names one blob
            return sorted(out, key=lambda o: o.key)

        found: list[ObjectInfo] = self._call(f"listing {self._url(prefix)}", listed)
        return found

    # ------------------------------------------------------------------------------ calls

    def _url(self, key: str) -> str:
        name = self._name(key)
        return f"az://{self.account}/{self.container_name}/{name}"

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        result = self.retry.call(
            fn,
            retryable=transient,
            failed=lambda exc, attempts: self._failed(what, exc, attempts),
        )
        return result  # type: ignore[return-value]

    def _failed(self, what: str, exc: BaseException, attempts: int) -> BaseException:
        code = error_code(exc)
        if code == "ContainerNotFound":
            return ProviderError(
                f"{what} failed: container {self.container_name!r} does not exist in storage "
                f"account {self.account!r}",
                hint="create the container, or correct the URL",
            )
        status = getattr(exc, "status_code", None)
        if isinstance(exc, aexc.ClientAuthenticationError) or status in (401, 403):
            why = " ".join(str(part) for part in (status, code) if part) or "no access"
            return ProviderError(f"{what} was denied ({why})", hint=_PERMISSION_HINT)
        if isinstance(exc, aexc.ServiceRequestError | aexc.ServiceResponseError):
            return ProviderError(
                f"could not reach Blob Storage for {what} after {attempts} attempts "
                f"({type(exc).__name__})",
                hint="check the network and the account name (or endpoint_url)",
            )
        if isinstance(exc, aexc.HttpResponseError):
            return ProviderError(
                f"{what} failed after {attempts} attempts ({status} {code or 'error'})",
                hint="try again; if it persists, check the storage account in the Azure portal",
            )
        if isinstance(exc, aexc.AzureError):
            return ProviderError(
                f"{what} failed ({type(exc).__name__})",
                hint="check the credentials and the account",
            )
        return exc


def _make_service(location: str, account: str, account_url: str | None) -> Any:
    from azure.storage.blob import BlobServiceClient

    options: dict[str, Any] = {"retry_total": 0}  # the one retry loop is the core's
    secret = os.environ.get(CONNECTION_STRING_ENV)
    if secret:
        service = blob_service_from_secret(
            CONNECTION_STRING_ENV,
            secret,
            account,
            options,
            error=ProviderError,
            where="",
            of=location,
            fix="give a location in its account",
        )
        if account_url is not None and account_url.rstrip("/") != service.url.rstrip("/"):
            service.close()
            raise ProviderError(
                f"{location}: endpoint_url={account_url} is not the blob endpoint of the "
                f"connection string in {CONNECTION_STRING_ENV}",
                hint="drop endpoint_url (the connection string's BlobEndpoint is used), or "
                "give the string of that endpoint",
            )
        return service
    from mlrollout_azure.auth import default_credential

    url = account_url or f"https://{account}{_BLOB_HOST}"
    return BlobServiceClient(url, credential=default_credential(), **options)


def open_blob_objects(location: str, endpoint_url: str | None = None) -> BlobFiles:
    """The ``mlrollout.objects`` factory for ``az://`` and blob URLs (see the module: the
    plan's ``endpoint_url`` is ARM's, not used here)."""
    del endpoint_url
    parts = urlsplit(location)
    options = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(options) - {"endpoint_url"})
    if unknown:
        raise ProviderError(
            f"a Blob Storage location takes no {', '.join(unknown)} option "
            f"({parts.scheme}://{parts.netloc}/...?…)",
            hint=f"a SAS or key goes into {CONNECTION_STRING_ENV}, not into the URL",
        )
    blob_url = options["endpoint_url"][-1] if options.get("endpoint_url") else None
    shown = f"{parts.scheme}://{parts.netloc}{parts.path}"
    if parts.scheme == "az" and parts.netloc:
        account, rest = parts.netloc, parts.path.strip("/")
        account_url = blob_url
    elif parts.scheme == "https" and parts.netloc.endswith(_BLOB_HOST):
        account, rest = parts.netloc[: -len(_BLOB_HOST)], parts.path.strip("/")
        account_url = blob_url
    else:
        raise ProviderError(f"not a Blob Storage location: {shown!r}", hint=_USAGE)
    container, _, prefix = rest.partition("/")
    if not account or not container:
        raise ProviderError(
            f"a Blob Storage location names an account and a container: {shown!r}", hint=_USAGE
        )
    return BlobFiles(shown, account, container, prefix, account_url=account_url)
