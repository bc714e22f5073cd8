"""SageMaker DataCapture as a capture source: the request/response records each variant wrote to
S3, paired by request, as counts (:class:`mlrollout.capture.pairing.Pairing`).

Where: the endpoint's ``DataCaptureConfig.DestinationS3Uri`` (``DescribeEndpoint``, once per
source; the plan's ``target.capture_s3_uri`` when the endpoint reports none yet). DataCapture
writes ``{prefix}/{endpoint}/{variant}/yyyy/mm/dd/hh/*.jsonl`` (UTC hours), one JSON record a
line::

    {"captureData": {"endpointInput": {...},
                     "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                        "data": "{\\"predictions\\": [1]}", "encoding": "JSON"}},
     "eventMetadata": {"eventId": "...", "inferenceId": "...", "inferenceTime": "...Z"},
     "eventVersion": "0"}

The output body (``JSON``, ``CSV`` or ``BASE64``) is decoded and the plan's ``capture.output``
JSONPath applied (:func:`mlrollout.capture.pairing.read_output`). A record pairs with the other
variant's by ``inferenceId`` (the caller's, on both copies of a request) or else ``eventId``
(SageMaker's id of the request; the copy a shadow variant answers carries the production
request's). Records stamped before the window's start are skipped; a line that is not JSON, has
no output or whose output is not at the path is counted as unparsed for the variant whose
folder holds it, never fatal.

One look costs at most one ``ListObjectsV2`` per variant per hour prefix the window touches
(more pages only past 1,000 files an hour) plus one ``GetObject`` per file not read before.
The **cursor** (the pairing so far, the keys already fed, the hours listed after they closed)
lets the next look of the same stage skip the files it has read and the hours that are done:
an hour listed :data:`LATE` seconds after its end is never listed again. Without the cursor
(a new process) the summary is the same: every file of the window is read once.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from mlrollout.budget import Meter
from mlrollout.capture import CaptureQuery, PredictionSummary
from mlrollout.capture.cursor import MAX_AHEAD, Cursor, catch_up, resume
from mlrollout.capture.jsonl import parse_time
from mlrollout.capture.jsonpath import MISSING, Path, PathError, compile_path
from mlrollout.capture.pairing import Unparsable, read_output
from mlrollout.contracts import ProviderContext
from mlrollout.errors import ProviderError
from mlrollout.retry import RetryPolicy
from mlrollout_aws._aws import budget_meter, call, make_client
from mlrollout_aws.spec import capture_uri

HOUR = 3600.0
#: DataCapture may still write a file into an hour's folder this long after the hour ended.
LATE = 600.0


def hour_prefix(prefix: str, endpoint: str, variant: str, hour: int) -> str:
    """The folder DataCapture writes ``variant``'s records of the UTC hour ``hour`` (hours since
    the epoch) to."""
    moment = datetime.fromtimestamp(hour * HOUR, UTC)
    head = f"{prefix}/" if prefix else ""
    return f"{head}{endpoint}/{variant}/{moment:%Y/%m/%d/%H}/"


def split_uri(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    if parts.scheme not in ("s3", "https") or not parts.netloc:
        raise ProviderError(f"{uri!r} is not an S3 location (s3://BUCKET/PREFIX)")
    return parts.netloc, parts.path.strip("/")


class DataCaptureSource:
    """A :class:`~mlrollout.capture.CaptureSource` over an endpoint's DataCapture files."""

    def __init__(
        self,
        endpoint: str,
        s3: Any,
        sagemaker: Any,
        *,
        retry: RetryPolicy | None = None,
        uri: str | None = None,
        cursor: bool = True,
        meter: Meter | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.s3 = s3
        self.sagemaker = sagemaker
        self.retry = retry or RetryPolicy()
        self.meter = meter  # the API budget of the account and region, if any
        self.fallback_uri = uri
        self.use_cursor = cursor
        self._destination: tuple[str, str] | None = None
        self._cursor: Cursor | None = None
        # The work, over the source's life (what the cursor saves shows here).
        self.listings = 0
        self.gets = 0
        self.describes = 0
        self.lines = 0

    @classmethod
    def from_context(cls, context: ProviderContext) -> DataCaptureSource:
        target = context.plan.target
        region = str(target.setting("region") or "") or None
        profile = target.setting("profile")

        def client(service: str) -> Any:
            return make_client(
                service, region=region, profile=profile, endpoint_url=target.endpoint_url
            )

        return cls(
            target.endpoint,
            client("s3"),
            client("sagemaker"),
            retry=RetryPolicy(sleep=context.clock.sleep),
            uri=capture_uri(context.plan),
            meter=budget_meter(context.clock, region=region, profile=profile),
        )

    # ------------------------------------------------------------------------------ reading

    def destination(self) -> tuple[str, str]:
        """``(bucket, prefix)`` DataCapture writes to (DescribeEndpoint once it is known)."""
        if self._destination is None:
            self.describes += 1
            raw = call(
                self.sagemaker,
                "describe_endpoint",
                retry=self.retry,
                meter=self.meter,
                EndpointName=self.endpoint,
            )
            uri = (raw.get("DataCaptureConfig") or {}).get("DestinationS3Uri")
            uri = uri or self.fallback_uri
            if not uri:
                raise ProviderError(
                    f"SageMaker endpoint {self.endpoint!r} captures no data (no DataCaptureConfig)",
                    hint="turn DataCapture on, or set target.capture_s3_uri for mlrollout to",
                )
            self._destination = split_uri(str(uri))
        return self._destination

    def read(self, query: CaptureQuery) -> PredictionSummary:
        try:
            compile_path(query.output)
            bucket, prefix = self.destination()
        except (PathError, ProviderError) as exc:
            return PredictionSummary(error=str(exc))
        cursor = resume(self._cursor if self.use_cursor else None, query, bucket, prefix)
        error = self._feed_window(cursor, query)
        if error is not None:
            self._cursor = None
            return PredictionSummary(error=error)
        self._cursor = cursor if self.use_cursor else None
        return cursor.pairing.summary()

    def read_into(self, cursor: Cursor, query: CaptureQuery) -> str | None:
        """One look's new records of the window fed to ``cursor``'s pairing (whatever it
        counts: the prediction gates' pairs, or the quality gates' predictions by id), after the
        records it held back that the look reaches; the hour folders and files it already saw
        are skipped. The error, if the look failed (the cursor is then half-fed: start anew)."""
        catch_up(cursor, query.end)
        return self._feed_window(cursor, query)

    def _feed_window(self, cursor: Cursor, query: CaptureQuery) -> str | None:
        try:
            path = compile_path(query.output)
            bucket, prefix = self.destination()
        except (PathError, ProviderError) as exc:
            return str(exc)
        first = int(query.start // HOUR)
        last = int(query.end // HOUR)
        try:
            for i, variant in enumerate((query.baseline, query.candidate)):
                for hour in range(first, last + 1):
                    folder = hour_prefix(prefix, self.endpoint, variant, hour)
                    if folder in cursor.closed:
                        continue
                    keys = self._list(bucket, folder)
                    if query.end >= (hour + 1) * HOUR + LATE:
                        cursor.closed.add(folder)
                    for name in keys:
                        if name in cursor.read or not name.endswith(".jsonl"):
                            continue
                        self._feed(bucket, name, i, cursor, path, query)
                        cursor.read.add(name)
        except ProviderError as exc:
            return f"could not read DataCapture of {self.endpoint}: {exc}"
        return None

    def _list(self, bucket: str, folder: str) -> list[str]:
        keys: list[str] = []
        token: str | None = None
        while True:
            self.listings += 1
            page = call(
                self.s3,
                "list_objects_v2",
                retry=self.retry,
                meter=self.meter,
                Bucket=bucket,
                Prefix=folder,
                **({"ContinuationToken": token} if token else {}),
            )
            keys += [str(o["Key"]) for o in page.get("Contents") or []]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return sorted(keys)

    def _feed(
        self, bucket: str, name: str, i: int, cursor: Cursor, path: Path, query: CaptureQuery
    ) -> None:
        """Stream one capture file into the cursor's pairing, line by line."""
        self.gets += 1
        body = call(
            self.s3, "get_object", retry=self.retry, meter=self.meter, Bucket=bucket, Key=name
        )["Body"]
        try:
            for raw in body.iter_lines():
                if not raw.strip():
                    continue
                self.lines += 1
                self._record(raw, i, cursor, path, query)
        except (OSError, ValueError) as exc:  # a connection lost mid-body
            raise ProviderError(f"reading s3://{bucket}/{name} failed: {exc}") from None
        finally:
            body.close()

    @staticmethod
    def _record(raw: bytes, i: int, cursor: Cursor, path: Path, query: CaptureQuery) -> None:
        pairing, ahead = cursor.pairing, cursor.ahead
        variant = pairing.names[i]
        try:
            rec = json.loads(raw)
        except ValueError:
            pairing.add_unparsed(variant)
            return
        if not isinstance(rec, dict):
            pairing.add_unparsed(variant)
            return
        meta = rec.get("eventMetadata")
        meta = meta if isinstance(meta, dict) else {}
        try:
            t = parse_time(meta.get("inferenceTime"))
        except (ValueError, TypeError):
            pairing.add_unparsed(variant)
            return
        if t is not None and t < query.start:
            return
        data = rec.get("captureData")
        body = data.get("endpointOutput") if isinstance(data, dict) else None
        output: object = MISSING
        if body is not None:
            try:
                output = read_output(body, path)
            except Unparsable:
                output = MISSING
        iid, eid = meta.get("inferenceId"), meta.get("eventId")
        iid = None if iid is None else str(iid)
        eid = None if eid is None else str(eid)
        if t is not None and t > query.end and len(ahead) < MAX_AHEAD:
            ahead.append((t, i, output, iid, eid))
            return
        pairing.add_at(i, output, iid, eid)
