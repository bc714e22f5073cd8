"""A shared state store on Google Cloud Storage: ``--state gs://bucket/prefix`` (or
``MLROLLOUT_STATE``).

The layout and the semantics are the S3 store's (journal objects committed through the record,
snapshots, leases with fencing tokens, atomic create, corrupt objects): see
:mod:`mlrollout.state.objects`. What is GCS's here is how one object is written on a condition:
every object has a *generation* (a number that changes on every write), read with its bytes
(``X-Goog-Generation``), and a write passes ``ifGenerationMatch``: ``0`` creates only if there
is no object yet, the generation read replaces only what was read. A condition that does not
hold is ``412 Precondition Failed`` and writes nothing.

Retries: 408, 429, 5xx and connection errors, by the core's one retry loop
(:class:`mlrollout.retry.RetryPolicy`); the library's own retries are off (``retry=None``), so a
lost answer to a conditional write is recognised by the store (see the core module), never
applied twice.

Options in the URL's query: ``?project=my-project&endpoint_url=http://127.0.0.1:PORT`` (an
emulator: plain HTTP gets anonymous credentials; ``STORAGE_EMULATOR_HOST`` works too).
Elsewhere the credentials are Application Default Credentials; the identity needs
``storage.objects.get``, ``.create``, ``.delete`` (a write over an object replaces it) and
``.list`` on the bucket (``roles/storage.objectUser``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import google.auth
import google.auth.exceptions
import requests.exceptions
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage  # type: ignore[import-untyped]

from mlrollout.adapters import classify, retryable_kind
from mlrollout.errors import StateUnavailable
from mlrollout.retry import RetryPolicy
from mlrollout.state.objects import ObjectStateStore

_CONNECTION_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    google.auth.exceptions.TransportError,
    ConnectionError,
)
_PERMISSION_HINT = (
    "the identity needs storage.objects.get, .create, .delete and .list on the bucket "
    "(roles/storage.objectUser has them)"
)


class GcsStateStore(ObjectStateStore):
    """:class:`~mlrollout.state.base.StateStore` on one GCS bucket and prefix."""

    restore_hint = "restore it from the bucket's object versions, or remove it"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        project: str | None = None,
        endpoint_url: str | None = None,
        wall: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(f"gs://{bucket}/", prefix, wall=wall, retry=retry)
        self.bucket_name = bucket
        self._owns_client = client is None
        self.client = client or _make_client(self.location, project, endpoint_url)
        self._bucket = self.client.bucket(bucket)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    # ------------------------------------------------------------------------------ calls

    def _retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, _CONNECTION_ERRORS):
            return True
        return isinstance(exc, gexc.GoogleAPICallError) and retryable_kind(
            classify(int(exc.code or 0))
        )

    def _failed(self, what: str, exc: BaseException, attempts: int) -> BaseException:
        if isinstance(exc, gexc.NotFound) and _bucket_missing(exc):
            return self._missing("bucket", self.bucket_name)
        if isinstance(exc, gexc.Unauthorized | gexc.Forbidden):
            return self._unavailable(f"{what} was denied ({exc.code})", _PERMISSION_HINT)
        if isinstance(exc, google.auth.exceptions.GoogleAuthError):
            return self._unavailable(
                f"Google Cloud credentials could not be used ({type(exc).__name__})",
                "refresh them: `gcloud auth application-default login`",
            )
        if isinstance(exc, _CONNECTION_ERRORS):
            return self._unavailable(
                f"could not reach Cloud Storage for {what} after {attempts} attempts",
                "check the network (and ?endpoint_url= if you gave one)",
            )
        if isinstance(exc, gexc.GoogleAPICallError):
            return self._unavailable(
                f"{what} failed after {attempts} attempts ({exc.code}: {exc.message})",
                "try again; if it persists, check the bucket in the Cloud console",
            )
        return exc

    # --------------------------------------------------------------------------- objects

    def _get_object(self, key: str) -> tuple[bytes, str] | None:
        blob = self._bucket.blob(key)

        def get() -> bytes | None:
            try:
                return bytes(blob.download_as_bytes(retry=None))
            except gexc.NotFound as exc:
                if _bucket_missing(exc):
                    raise
                return None

        body = self._call("reading an object", get)
        if body is None:
            return None
        return body, str(blob.generation)

    def _put_object(
        self, key: str, body: bytes, *, if_match: str | None, if_none_match: bool
    ) -> bool:
        generation = 0 if if_none_match else (int(if_match) if if_match is not None else None)

        def put() -> bool:
            try:
                self._bucket.blob(key).upload_from_string(
                    body,
                    content_type="application/json",
                    if_generation_match=generation,
                    retry=None,
                )
            except gexc.PreconditionFailed:
                return False
            return True

        return bool(self._call("writing an object", put))

    def _list_keys(self, prefix: str, *, delimiter: str | None) -> list[str]:
        def listed() -> list[str]:
            pages = self._bucket.list_blobs(prefix=prefix, delimiter=delimiter, retry=None)
            names = [blob.name for blob in pages]
            return names + sorted(pages.prefixes)

        return list(self._call("listing objects", listed))


def _bucket_missing(exc: gexc.GoogleAPICallError) -> bool:
    return "bucket does not exist" in str(exc.message).lower()


def _make_client(location: str, project: str | None, endpoint_url: str | None) -> Any:
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")  # the library's own variable
    if not endpoint_url and emulator:
        endpoint_url = emulator if "://" in emulator else f"http://{emulator}"
    options = {"api_endpoint": endpoint_url} if endpoint_url else None
    if endpoint_url and urlsplit(endpoint_url).scheme == "http":
        # an emulator: no token ever travels in clear text, and an emulator needs none
        credentials: Any = AnonymousCredentials()  # type: ignore[no-untyped-call]
        return storage.Client(
            project=project or "mlrollout-emulator",
            credentials=credentials,
            client_options=options,
        )
    try:
        credentials, found_project = google.auth.default(
            scopes=("https://www.googleapis.com/auth/devstorage.read_write",)
        )
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise StateUnavailable(
            f"no Google Cloud credentials for the state store {location}",
            hint="run `gcloud auth application-default login`, set "
            "GOOGLE_APPLICATION_CREDENTIALS, or run as a service account; " + _PERMISSION_HINT,
        ) from exc
    return storage.Client(
        project=project or found_project or None,
        credentials=credentials,
        client_options=options,
    )


def open_gcs_store(location: str) -> GcsStateStore:
    """``gs://bucket/prefix?project=...&endpoint_url=...`` → a :class:`GcsStateStore`."""
    parts = urlsplit(location)
    if parts.scheme != "gs" or not parts.netloc:
        raise StateUnavailable(
            f"not a Cloud Storage state location: {location!r}", hint="use gs://BUCKET/PREFIX"
        )
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(options) - {"project", "endpoint_url"}
    if unknown:
        raise StateUnavailable(
            f"unknown option {sorted(unknown)[0]!r} in {location!r}",
            hint="allowed: project, endpoint_url",
        )
    return GcsStateStore(
        parts.netloc,
        parts.path,
        project=options.get("project"),
        endpoint_url=options.get("endpoint_url"),
    )
