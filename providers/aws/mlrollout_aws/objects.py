"""Files in S3 for :mod:`mlrollout.objects`: ``s3://bucket/key`` (the ``mlrollout.objects``
entry point ``s3``): the flag file a rollout writes in lockstep with each step, and the files
the feedback and capture readers read.

Options in the URL's query, as the state URL takes them: ``?region=eu-west-1&profile=ops&
endpoint_url=http://...`` (boto3's own ``AWS_REGION``, ``AWS_ENDPOINT_URL_S3`` and the credential
chain work too). Without ``endpoint_url`` in the URL, the plan's ``target.endpoint_url`` (an
emulator) is used. A ``PutObject`` replaces the object as a whole, so a reader (the
application's flagd) sees the old file or the new one, never half of it; writing the same bytes
twice is harmless. A missing object reads as ``None``; a missing bucket, or a call S3 refuses,
is a :class:`~mlrollout.errors.ProviderError` naming the object and the fix (the IAM action for
a refusal).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

from mlrollout.errors import ProviderError
from mlrollout.objects import ObjectInfo
from mlrollout.retry import RetryPolicy
from mlrollout_aws._aws import AwsCallError, call, make_client

_MISSING_KEY = ("NoSuchKey", "404", "NotFound")
_OPTIONS = ("region", "profile", "endpoint_url")


class S3Files:
    """:class:`~mlrollout.objects.ObjectFiles` under ``s3://bucket/root`` (one object, or a
    prefix when ``root`` ends with ``/`` or is empty)."""

    def __init__(
        self,
        bucket: str,
        root: str = "",
        *,
        client: Any = None,
        region: str | None = None,
        profile: str | None = None,
        endpoint_url: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.bucket = bucket
        self.root = root.lstrip("/")
        self.location = f"s3://{bucket}/{self.root}"
        self.retry = retry or RetryPolicy()
        self.client = client or make_client(
            "s3", region=region, profile=profile, endpoint_url=endpoint_url
        )

    def _key(self, key: str) -> str:
        if not key:
            return self.root
        base = self.root.rstrip("/")
        return f"{base}/{key}" if base else key

    def _call(self, operation: str, what: str, **params: Any) -> Any:
        try:
            return call(self.client, operation, retry=self.retry, Bucket=self.bucket, **params)
        except AwsCallError as exc:
            if exc.code == "NoSuchBucket":
                raise ProviderError(
                    f"cannot {what}: S3 bucket {self.bucket!r} does not exist",
                    hint="create the bucket, or point the location at one that exists",
                ) from exc
            raise

    def read(self, key: str = "") -> bytes | None:
        full = self._key(key)
        try:
            response = self._call("get_object", f"read s3://{self.bucket}/{full}", Key=full)
        except AwsCallError as exc:
            if exc.code in _MISSING_KEY:
                return None
            raise
        return bytes(response["Body"].read())

    def write(self, data: bytes, key: str = "", *, content_type: str = "application/json") -> None:
        full = self._key(key)
        if not full or full.endswith("/"):
            raise ProviderError(
                f"cannot write {self.location}{key}: it names a prefix, not an object",
                hint="name the object, such as s3://bucket/flags/churn.json",
            )
        self._call(
            "put_object",
            f"write s3://{self.bucket}/{full}",
            Key=full,
            Body=data,
            ContentType=content_type,
        )

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self.root.rstrip("/")
        wanted = self._key(prefix)
        out: list[ObjectInfo] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Prefix": wanted}
            if token:
                params["ContinuationToken"] = token
            page = self._call("list_objects_v2", f"list {self.location}", **params)
            for item in page.get("Contents", []):
                name = str(item["Key"])
                if name == self.root and not self.root.endswith("/"):
                    relative = ""
                elif not base:
                    relative = name
                elif name.startswith(base + "/"):
                    relative = name[len(base) + 1 :]
                else:
                    continue  # shares the root's letters, not its folder (root.json.bak)
                if relative.startswith(prefix):
                    modified = item.get("LastModified")
                    out.append(
                        ObjectInfo(
                            relative,
                            int(item.get("Size", 0)),
                            modified.timestamp() if modified is not None else 0.0,
                        )
                    )
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return sorted(out, key=lambda info: info.key)


def open_s3_files(location: str, endpoint_url: str | None = None) -> S3Files:
    """``s3://bucket/key?region=...&profile=...&endpoint_url=...`` → :class:`S3Files`
    (``endpoint_url``: the plan's ``target.endpoint_url``, unless the URL names one)."""
    parts = urlsplit(location)
    if parts.scheme != "s3" or not parts.netloc:
        raise ProviderError(
            f"not an S3 location: {location!r}",
            hint="use s3://BUCKET/KEY, such as s3://my-bucket/flags/churn.json",
        )
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ProviderError(
            f"unknown option {unknown[0]!r} in {parts.scheme}://{parts.netloc}{parts.path}",
            hint=f"allowed: {', '.join(_OPTIONS)}",
        )
    return S3Files(
        parts.netloc,
        parts.path,
        region=options.get("region"),
        profile=options.get("profile"),
        endpoint_url=options.get("endpoint_url") or endpoint_url,
    )
