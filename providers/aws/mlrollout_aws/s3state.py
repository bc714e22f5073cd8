"""A shared state store on S3: ``--state s3://bucket/prefix`` (or ``MLROLLOUT_STATE``).

The layout and the semantics (journal objects committed through the record, snapshots, leases
with fencing tokens, atomic create, lost responses, corrupt objects) are the object stores' own:
see :mod:`mlrollout.state.objects`. What is S3's here is how one object is written on a
condition: ``If-None-Match: *`` creates only if absent, ``If-Match: <etag>`` replaces only what
was read; a condition that does not hold is ``412 PreconditionFailed`` (or ``409
ConditionalRequestConflict`` when two conditional writes race) and writes nothing.

Options in the URL's query: ``?region=eu-west-1&profile=ops&endpoint_url=http://...`` (boto3's
own ``AWS_ENDPOINT_URL_S3`` and ``AWS_REGION`` work too).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mlrollout.errors import LeaseHeld, LeaseLost, MlrolloutError, StateUnavailable
from mlrollout.state.objects import ObjectStateStore
from mlrollout_aws._aws import AwsCallError, RetryPolicy, call, make_client

#: the error codes of a conditional write whose condition did not hold (moto answers some as
#: bare status codes)
_CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


class S3StateStore(ObjectStateStore):
    """:class:`~mlrollout.state.base.StateStore` on one S3 bucket and prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        region: str | None = None,
        profile: str | None = None,
        endpoint_url: str | None = None,
        wall: Callable[[], float] = time.time,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(f"s3://{bucket}/", prefix, wall=wall, retry=retry)
        self.bucket = bucket
        self.client = client or make_client(
            "s3", region=region, profile=profile, endpoint_url=endpoint_url
        )

    # ------------------------------------------------------------------------------ calls

    def _request(self, operation: str, **params: Any) -> Any:
        """One S3 call on the bucket, through the provider's boto3 seam (its retries, its error
        mapping)."""
        try:
            return call(self.client, operation, retry=self.retry, Bucket=self.bucket, **params)
        except AwsCallError as exc:
            if exc.code in ("NoSuchBucket",):
                raise self._missing("bucket", self.bucket) from exc
            raise
        except StateUnavailable:
            raise
        except Exception as exc:
            if isinstance(exc, MlrolloutError) and not isinstance(exc, LeaseLost | LeaseHeld):
                raise self._unavailable(exc.message, exc.hint) from exc
            raise

    # --------------------------------------------------------------------------- objects

    def _get_object(self, key: str) -> tuple[bytes, str] | None:
        try:
            response = self._request("get_object", Key=key)
        except AwsCallError as exc:
            if exc.code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return bytes(response["Body"].read()), str(response["ETag"])

    def _put_object(
        self, key: str, body: bytes, *, if_match: str | None, if_none_match: bool
    ) -> bool:
        params: dict[str, Any] = {"Key": key, "Body": body, "ContentType": "application/json"}
        if if_match is not None:
            params["IfMatch"] = if_match
        if if_none_match:
            params["IfNoneMatch"] = "*"
        try:
            self._request("put_object", **params)
        except AwsCallError as exc:
            if exc.code in _CONDITION_FAILED:
                return False
            raise
        return True

    def _list_keys(self, prefix: str, *, delimiter: str | None) -> list[str]:
        keys: list[str] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Prefix": prefix}
            if delimiter:
                params["Delimiter"] = delimiter
            if token:
                params["ContinuationToken"] = token
            page = self._request("list_objects_v2", **params)
            keys += [o["Key"] for o in page.get("Contents", [])]
            keys += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return keys


def open_s3_store(location: str) -> S3StateStore:
    """``s3://bucket/prefix?region=...&profile=...&endpoint_url=...`` → an :class:`S3StateStore`."""
    parts = urlsplit(location)
    if parts.scheme != "s3" or not parts.netloc:
        raise StateUnavailable(
            f"not an S3 state location: {location!r}", hint="use s3://BUCKET/PREFIX"
        )
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(options) - {"region", "profile", "endpoint_url"}
    if unknown:
        raise StateUnavailable(
            f"unknown option {sorted(unknown)[0]!r} in {location!r}",
            hint="allowed: region, profile, endpoint_url",
        )
    return S3StateStore(
        parts.netloc,
        parts.path,
        region=options.get("region"),
        profile=options.get("profile"),
        endpoint_url=options.get("endpoint_url"),
    )
