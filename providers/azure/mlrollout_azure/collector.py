"""``capture: {source: default}`` on Azure ML: the deployments' data collector records, read from
the workspace's blob store with ``azure-storage-blob``, for the prediction gates.

The layout (Azure ML's data collector for online endpoints, as its documentation gives it):

- blobs ``modelDataCollector/{endpoint}/{deployment}/{collection}/{yyyy}/{MM}/{dd}/{HH}/
  {instance_id}.jsonl`` in the container of the workspace's default datastore
  (``workspaceblobstore``; ``target.capture_datastore`` names another), hours in UTC (the
  default ``rolling_rate: hour``);
- ``collection``: ``model_outputs`` (custom logging of the scoring script, the default) or
  ``response`` (payload logging), by ``target.capture_collection``;
- one JSON object a line: ``correlationid`` (the pairing key), ``xrequestid`` (the fallback key),
  ``time`` (ISO 8601, UTC), ``datacontenttype``, ``data``; a body the collector put in a blob of
  its own says ``datainblob: "true"``.

How a record becomes predictions, fed to :class:`mlrollout.capture.pairing.Pairing` under the
deployment its blob path names:

- custom logging: ``data`` is the logged DataFrame, a list of row objects; each row is one
  prediction and ``capture.output`` (a JSONPath) is read from the row (``$.label``). A row's own
  ``correlationid`` column pairs it (what Azure's documentation advises when the collector
  batches requests into one record); otherwise the record's ``correlationid`` pairs a one-row
  record, and the rows of a batched record without such a column pair with nothing (they still
  count for ``prediction_drift``);
- payload logging: ``data`` is the response body (a JSON value, a JSON string, or CSV text by
  ``datacontenttype``) and ``capture.output`` is read from it;
- counted as unparsed, never fatal: a line that is not a JSON object, a bad ``time``, no
  ``data``, a body in another blob (``datainblob``: not fetched, that would be one GET per
  request), a body that is neither JSON nor CSV text (binary or base64: the collector stores
  those apart), no value at the JSONPath. A record with neither ``correlationid`` nor
  ``xrequestid`` is parsed but pairs with nothing (unpaired).
- records stamped before the window's start are skipped; after its end, held for the next look.

Calls per look (``calls`` counts the HTTP requests the client sends): per deployment, one listing
(``List Blobs``, ``name_starts_with`` the hour's prefix; one request per 5,000 blobs) for each
hour of the window that is still open, then one ranged GET (``Get Blob``, ``x-ms-range`` from the
bytes already read) per blob that is new or grew since the last look. The **cursor** (this
object's, between looks of one stage: same start, deployments, path, tolerance, bins) keeps the
bytes read of each blob, the pairing so far and the records ahead of the window; an hour whose
end lies more than :data:`SETTLE` before a look's end is listed one last time and then never
again. Without the cursor (a new process) the look lists every hour of the window and reads
every blob whole: the same summary, more calls. A blob that shrank starts the read again.

Credentials: the provider's (``DefaultAzureCredential``; the identity needs *Storage Blob Data
Reader* on the container), or a connection string in ``MLROLLOUT_AZURE_CAPTURE_CONNECTION_STRING``
(Azurite, tests, a SAS), which must name the datastore's account. The string is a secret: never
logged, stored or put into an error. One GET of the datastore (ARM) the first time, to find the
account and container.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mlrollout.capture import CaptureQuery, PredictionSummary
from mlrollout.capture.cursor import MAX_AHEAD, Ahead, Cursor, resume
from mlrollout.capture.jsonl import parse_time
from mlrollout.capture.jsonpath import MISSING, Path, compile_path
from mlrollout.capture.pairing import Pairing, Unparsable, decode_body
from mlrollout.contracts import ProviderContext
from mlrollout.errors import ProviderError
from mlrollout.retry import RetryPolicy

CONNECTION_STRING_ENV = "MLROLLOUT_AZURE_CAPTURE_CONNECTION_STRING"
ROOT = "modelDataCollector"
COLLECTIONS = ("model_outputs", "response")
DEFAULT_COLLECTION = "model_outputs"
HOUR = 3600.0
#: An hour's prefix is listed for the last time at the first look whose end is this long past
#: the hour's end (the collector's writes of that hour have landed by then).
SETTLE = 15 * 60.0
_TRUE = (True, "true", "True", "TRUE")
_SIG = re.compile(r"(sig|AccountKey|SharedAccessSignature)=[^&;\s'\"]+", re.IGNORECASE)


@dataclass(frozen=True)
class BlobInfo:
    name: str
    size: int


class BlobReader:
    """The three operations the source needs on one container, through ``azure-storage-blob``,
    with the rollout's retry loop; ``calls`` counts the HTTP requests sent (by kind)."""

    def __init__(self, container: Any, retry: RetryPolicy, where: str) -> None:
        self.container = container
        self.retry = retry
        self.where = where
        self.calls: Counter[str] = Counter()

    def count(self, request: Any) -> None:
        """azure-core's ``raw_request_hook``: one HTTP request about to be sent."""
        http = getattr(request, "http_request", request)
        url = str(getattr(http, "url", ""))
        method = str(getattr(http, "method", "GET"))
        self.calls["list" if "comp=list" in url else method.lower()] += 1

    def _call(self, fn: Callable[[], Any], action: str) -> Any:
        from mlrollout_azure import _azure

        try:
            return _azure.call(self.retry, fn, action=action, what=self.where, permission="capture")
        except ProviderError as exc:
            # a connection error quotes the request's URL, which carries a SAS signature when
            # the connection string has one: never let it out
            exc.message = _redact(exc.message)
            exc.args = (exc.message,)
            raise

    def list(self, prefix: str) -> list[BlobInfo]:
        def listed() -> list[BlobInfo]:
            return [
                BlobInfo(str(b.name), int(b.size or 0))
                for b in self.container.list_blobs(name_starts_with=prefix)
            ]

        found: list[BlobInfo] = self._call(listed, f"list the data collector blobs {prefix}")
        return found

    def read(self, name: str, offset: int, length: int) -> bytes:
        def get() -> bytes:
            return bytes(self.container.download_blob(name, offset=offset, length=length).readall())

        data: bytes = self._call(get, f"read the data collector blob {name}")
        return data


class _Restart(Exception):
    """A blob shrank: read the window again from the top."""


def hour_prefixes(root: str, start: float, end: float) -> list[tuple[str, float]]:
    """The hour parts (``yyyy/MM/dd/HH/``) of a window, each with the instant its hour ends."""
    out: list[tuple[str, float]] = []
    t = HOUR * (start // HOUR)
    while t <= end:
        stamp = dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y/%m/%d/%H/")
        out.append((f"{root}{stamp}", t + HOUR))
        t += HOUR
    return out


class DataCollectorCapture:
    """A :class:`~mlrollout.capture.CaptureSource` over Azure ML's data collector blobs."""

    def __init__(
        self,
        reader: BlobReader | Callable[[], BlobReader],
        endpoint: str,
        *,
        collection: str = DEFAULT_COLLECTION,
        root: str = ROOT,
        cursor: bool = True,
    ) -> None:
        self._reader = reader if isinstance(reader, BlobReader) else None
        self._factory = None if isinstance(reader, BlobReader) else reader
        self.endpoint = endpoint
        self.collection = collection
        self.root = root.strip("/")
        self.use_cursor = cursor
        self.records_read = 0  # lines fed over this source's life
        self._cursor: Cursor | None = None

    @property
    def reader(self) -> BlobReader:
        if self._reader is None:
            assert self._factory is not None
            self._reader = self._factory()
        return self._reader

    @property
    def calls(self) -> Counter[str]:
        return self.reader.calls if self._reader is not None else Counter()

    def prefix(self, deployment: str) -> str:
        return f"{self.root}/{self.endpoint}/{deployment}/{self.collection}/"

    def read(self, query: CaptureQuery) -> PredictionSummary:
        try:
            path = compile_path(query.output)
        except ValueError as exc:
            return PredictionSummary(error=str(exc))
        try:
            try:
                return self._read(query, path, self._cursor if self.use_cursor else None)
            except _Restart:
                return self._read(query, path, None)
        except ProviderError as exc:
            self._cursor = None
            why = f" ({exc.hint})" if exc.hint else ""
            return PredictionSummary(error=f"{exc.message}{why}")

    def _read(self, query: CaptureQuery, path: Path, cursor: Cursor | None) -> PredictionSummary:
        cursor = resume(cursor, query)
        self._cursor = None  # until this look is done: a failure half-way leaves none
        pairing = cursor.pairing
        reader = self.reader
        for i, deployment in enumerate((query.baseline, query.candidate)):
            for prefix, ends in hour_prefixes(self.prefix(deployment), query.start, query.end):
                if prefix in cursor.closed:
                    continue
                final = query.end >= ends + SETTLE
                for blob in sorted(reader.list(prefix), key=lambda b: b.name):
                    done = cursor.offsets.get(blob.name, 0)
                    if blob.size < done:
                        raise _Restart
                    if blob.size == done:
                        continue
                    data = reader.read(blob.name, done, blob.size - done)
                    used = self._feed(data, final, i, pairing, path, query, cursor.ahead)
                    cursor.offsets[blob.name] = done + used
                if final:
                    cursor.closed.add(prefix)
        if self.use_cursor:
            self._cursor = cursor
        return pairing.summary()

    def _feed(
        self,
        data: bytes,
        final: bool,
        i: int,
        pairing: Pairing,
        path: Path,
        query: CaptureQuery,
        ahead: list[Ahead],
    ) -> int:
        """Feed the complete lines of ``data`` (and a last one without its newline when the
        hour is final); returns the bytes used."""
        cut = data.rfind(b"\n")
        used = len(data) if final else cut + 1
        lines = data[:used].decode("utf-8", errors="replace").split("\n")
        variant = pairing.names[i]
        start, end = query.start, query.end
        payload = self.collection == "response"
        last_stamp: object = MISSING
        last_t: float | None = None
        add_at, loads = pairing.add_at, json.loads
        for line in lines:
            line = line.strip()
            if not line:
                continue
            self.records_read += 1
            try:
                rec = loads(line)
            except ValueError:
                pairing.add_unparsed(variant)
                continue
            if not isinstance(rec, dict):
                pairing.add_unparsed(variant)
                continue
            stamp = rec.get("time")
            if stamp != last_stamp:  # records of one second share it: parse it once
                try:
                    last_t = parse_time(stamp)
                except (ValueError, TypeError):
                    pairing.add_unparsed(variant)
                    continue
                last_stamp = stamp
            t = last_t
            if t is not None and t < start:
                continue
            data_ = rec.get("data", MISSING)
            if data_ is MISSING or rec.get("datainblob") in _TRUE:
                pairing.add_unparsed(variant)
                continue
            cid = _text(rec.get("correlationid"))
            xid = _text(rec.get("xrequestid"))
            if (
                not payload
                and type(data_) is list
                and len(data_) == 1
                and type(data_[0]) is dict
                and "correlationid" not in data_[0]
            ):  # the common case: one row, paired by the record's id
                output = path.find(data_[0])
                if t is not None and t > end and len(ahead) < MAX_AHEAD:
                    ahead.append((t, i, output, cid, xid))
                else:
                    add_at(i, output, cid, xid)
                continue
            if payload:
                try:
                    items = [(path.find(_body(data_, rec.get("datacontenttype"))), cid, xid)]
                except Unparsable:
                    pairing.add_unparsed(variant)
                    continue
            else:
                items = list(_rows(data_, path, cid, xid))
                if not items:
                    pairing.add_unparsed(variant)
                    continue
            for output, iid, eid in items:
                if t is not None and t > end and len(ahead) < MAX_AHEAD:
                    ahead.append((t, i, output, iid, eid))
                else:
                    add_at(i, output, iid, eid)
        return used


def _redact(text: str) -> str:
    return _SIG.sub(r"\1=REDACTED", text)


def _text(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def _rows(
    data: object, path: Path, cid: str | None, xid: str | None
) -> Iterable[tuple[object, str | None, str | None]]:
    """A custom-logging record's predictions: one per row of the logged DataFrame."""
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        return  # a string (base64, binary): not a DataFrame
    single = len(data) == 1
    for row in data:
        own = _text(row.get("correlationid")) if isinstance(row, dict) else None
        if own is not None:
            yield path.find(row), own, None
        elif single:
            yield path.find(row), cid, xid
        else:
            yield path.find(row), None, None  # batched without its own id: pairs with nothing


def _body(data: object, content_type: object) -> object:
    """A payload-logging response body as a JSON value; raises :class:`Unparsable`."""
    if not isinstance(data, str):
        return data
    kind = str(content_type or "application/json").lower()
    if "json" in kind:
        return decode_body(data, "JSON")
    if "csv" in kind:
        return decode_body(data, "CSV")
    raise Unparsable(f"a {kind} body")


# ------------------------------------------------------------------------------------- opening


def open_data_collector(context: ProviderContext, credential: Any) -> DataCollectorCapture:
    """The source of ``context``'s plan: the datastore is looked up (one ARM GET) and the blob
    client made at the first look, not before."""
    from mlrollout_azure.azureml import target_of

    plan = context.plan
    target = target_of(context)
    collection = str(plan.target.setting("capture_collection") or DEFAULT_COLLECTION)
    datastore = plan.target.setting("capture_datastore")

    def factory() -> BlobReader:
        from mlrollout_azure import _azure

        retry = _azure.retry_policy(context.clock)
        account, container, suffix = _datastore(context, credential, datastore, retry)
        return _reader(account, container, suffix, credential, retry)

    return DataCollectorCapture(factory, target.endpoint, collection=collection)


def _datastore(
    context: ProviderContext, credential: Any, name: object, retry: RetryPolicy
) -> tuple[str, str, str]:
    """(account, container, endpoint suffix) of the datastore the data collector writes to."""
    from mlrollout_azure import _azure
    from mlrollout_azure.azureml import target_of

    target = target_of(context)
    client = _azure.ml_client(target, credential)
    which = f"datastore {name!r}" if name else "the default datastore"
    store = _azure.call(
        retry,
        lambda: client.datastores.get(str(name)) if name else client.datastores.get_default(),
        action=f"read {which} of workspace {target.workspace!r}",
        what=f"{which} in {target.where}",
        permission="read",
    )
    account = getattr(store, "account_name", None)
    container = getattr(store, "container_name", None)
    if not account or not container:
        raise ProviderError(
            f"{which} of workspace {target.workspace!r} is not a blob container "
            f"({type(store).__name__}): the data collector writes to Azure Blob Storage",
            hint="set target.capture_datastore to the blob datastore the data collector uses",
        )
    return str(account), str(container), str(getattr(store, "endpoint", None) or "core.windows.net")


def _reader(
    account: str, container: str, suffix: str, credential: Any, retry: RetryPolicy
) -> BlobReader:
    from azure.storage.blob import BlobServiceClient

    from mlrollout_azure import _azure

    where = f"data collector container {container!r} of storage account {account!r}"
    counter: list[BlobReader] = []

    def hook(request: Any) -> None:
        if counter:
            counter[0].count(request)

    options: dict[str, Any] = {"retry_total": 0, "raw_request_hook": hook}
    secret = os.environ.get(CONNECTION_STRING_ENV)
    if secret:
        service = _azure.blob_service_from_secret(
            CONNECTION_STRING_ENV,
            secret,
            account,
            options,
            error=ProviderError,
            where="",
            of="the data collector's datastore",
            fix=f"give the connection string of {account!r}",
        )
    else:
        url = f"https://{account}.blob.{suffix}"
        service = BlobServiceClient(url, credential=credential, **options)
    reader = BlobReader(service.get_container_client(container), retry, where)
    counter.append(reader)
    return reader
