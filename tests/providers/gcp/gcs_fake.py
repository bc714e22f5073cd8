"""A Google Cloud Storage JSON-API fake: a real HTTP server on 127.0.0.1 that
``google-cloud-storage`` talks to (``client_options={"api_endpoint": fake.url}``, anonymous
credentials).

It speaks what the state store uses, the way the service does:

- ``GET  /storage/v1/b/B/o?prefix=&delimiter=&pageToken=&maxResults=`` — list (``items``,
  ``prefixes``, ``nextPageToken``);
- ``GET  /storage/v1/b/B/o/NAME`` — an object's metadata; ``DELETE`` the same path;
- ``GET  /download/storage/v1/b/B/o/NAME?alt=media`` — its bytes, with ``X-Goog-Generation``,
  ``X-Goog-Metageneration``, ``X-Goog-Hash`` (crc32c and md5) and ``ETag``;
- ``POST /upload/storage/v1/b/B/o?uploadType=multipart`` — write (``multipart/related``: the
  metadata JSON, then the bytes); each write gets a new, strictly increasing generation;
- ``POST /storage/v1/b?project=P`` and ``GET /storage/v1/b/B`` — buckets.

**Preconditions are enforced** (the pip ``gcp-storage-emulator`` ignores them): on every object
request, ``ifGenerationMatch`` (``0``: only if there is no live object), ``ifGenerationNotMatch``
and ``ifMetagenerationMatch`` answer ``412 conditionNotMet`` when they do not hold, and nothing
is written (a read whose ``ifGenerationNotMatch`` fails is ``304 Not Modified``, as the service
answers). A missing bucket is ``404 "The specified bucket does not exist."``, a missing object
``404 "No such object: B/NAME"``. Writes to one bucket are serialised, so a precondition is checked
and the write applied as one step, as the service does.

Faults for tests: :meth:`GcsFake.fault` answers the next requests with an HTTP status, before the
request is handled or after it (``after=True``: the write is applied, the answer is lost).
Every request is recorded in :attr:`GcsFake.requests` (method, path without the query, query).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import google_crc32c


@dataclass
class StoredObject:
    data: bytes
    generation: int
    metageneration: int = 1
    content_type: str = "application/octet-stream"
    updated: str = "2026-01-01T00:00:00.000Z"

    def resource(self, bucket: str, name: str) -> dict[str, Any]:
        return {
            "kind": "storage#object",
            "id": f"{bucket}/{name}/{self.generation}",
            "name": name,
            "bucket": bucket,
            "generation": str(self.generation),
            "metageneration": str(self.metageneration),
            "contentType": self.content_type,
            "size": str(len(self.data)),
            "md5Hash": base64.b64encode(hashlib.md5(self.data).digest()).decode(),
            "crc32c": base64.b64encode(google_crc32c.Checksum(self.data).digest()).decode(),
            "etag": f"CL{self.generation}=",
            "updated": self.updated,
            "timeCreated": self.updated,
            "storageClass": "STANDARD",
        }


@dataclass
class Fault:
    status: int
    times: int
    after: bool
    methods: frozenset[str] | None


@dataclass
class Bucket:
    name: str
    objects: dict[str, StoredObject] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class PreconditionFailed(Exception):
    pass


class NotModified(Exception):
    """A read whose ``ifGenerationNotMatch`` names the live generation: 304, as the service."""


class GcsFake:
    """Start with :meth:`start`; :attr:`url` is the ``api_endpoint``."""

    def __init__(self) -> None:
        self.buckets: dict[str, Bucket] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._faults: list[Fault] = []
        self._generation = 1_700_000_000_000_000
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    # ------------------------------------------------------------------------------- control

    def start(self) -> GcsFake:
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.buckets.clear()
            self.requests.clear()
            self._faults.clear()

    def create_bucket(self, name: str) -> None:
        with self._lock:
            self.buckets.setdefault(name, Bucket(name))

    def fault(
        self,
        status: int,
        *,
        times: int = 1,
        after: bool = False,
        methods: set[str] | None = None,
    ) -> None:
        """Answer the next ``times`` requests (of ``methods``, e.g. ``{"POST"}``) with ``status``;
        ``after``: handle each first (a write is applied), then answer ``status``."""
        with self._lock:
            self._faults.append(
                Fault(status, times, after, frozenset(methods) if methods else None)
            )

    def objects(self, bucket: str) -> Iterator[tuple[str, StoredObject]]:
        yield from sorted(self.buckets[bucket].objects.items())

    def _take_fault(self, method: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.methods is None or method in fault.methods:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _next_generation(self) -> int:
        with self._lock:
            self._generation += 1
            return self._generation

    # ------------------------------------------------------------------------------- objects

    @staticmethod
    def check_preconditions(
        current: StoredObject | None, query: dict[str, str], *, read: bool = False
    ) -> None:
        """412 (:class:`PreconditionFailed`) when a condition does not hold; for a read whose
        ``ifGenerationNotMatch`` fails, 304 (:class:`NotModified`)."""
        generation = current.generation if current is not None else 0
        if "ifGenerationMatch" in query and int(query["ifGenerationMatch"]) != generation:
            raise PreconditionFailed
        if "ifGenerationNotMatch" in query and int(query["ifGenerationNotMatch"]) == generation:
            raise NotModified if read else PreconditionFailed
        wanted = query.get("ifMetagenerationMatch")
        if wanted is not None and (current is None or int(wanted) != current.metageneration):
            raise PreconditionFailed

    def write(
        self, bucket: Bucket, name: str, data: bytes, content_type: str, query: dict[str, str]
    ) -> StoredObject:
        with bucket.lock:
            self.check_preconditions(bucket.objects.get(name), query)
            stored = StoredObject(data, self._next_generation(), content_type=content_type)
            bucket.objects[name] = stored
            return stored


_ERRORS = {
    400: "invalid",
    404: "notFound",
    409: "conflict",
    412: "conditionNotMet",
    429: "rateLimitExceeded",
    500: "backendError",
    503: "backendError",
}


class _Handler(BaseHTTPRequestHandler):
    fake: GcsFake
    protocol_version = "HTTP/1.1"
    # one write per answer, no Nagle: otherwise each request waits for a delayed ACK
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # ------------------------------------------------------------------------------ answers

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, message: str) -> None:
        reason = _ERRORS.get(status, "error")
        self._json(
            status,
            {
                "error": {
                    "code": status,
                    "message": message,
                    "errors": [{"message": message, "domain": "global", "reason": reason}],
                }
            },
        )

    # ------------------------------------------------------------------------------ routing

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.fake.requests.append((method, parts.path, query))
        fault = self.fake._take_fault(method)
        if fault is not None and not fault.after:
            self._error(fault.status, f"injected fault {fault.status}")
            return
        try:
            status, payload, headers = self._route(method, parts.path, query, body)
        except PreconditionFailed:
            status, payload, headers = 412, None, {}
            message = "At least one of the pre-conditions you specified did not hold."
            if fault is None:
                self._error(412, message)
                return
        except NotModified:
            self._send(304, b"")
            return
        except _NotFound as exc:
            if fault is None:
                self._error(404, str(exc))
                return
            status, payload, headers = 404, None, {}
        except _BadRequest as exc:
            self._error(400, str(exc))
            return
        if fault is not None:  # applied, but the answer is lost
            self._error(fault.status, f"injected fault {fault.status} (after the request)")
            return
        if isinstance(payload, bytes):
            self._send(status, payload, headers)
        elif payload is None:
            self._send(status, b"", headers)
        else:
            self._json(status, payload)

    def _bucket(self, name: str) -> Bucket:
        bucket = self.fake.buckets.get(name)
        if bucket is None:
            raise _NotFound("The specified bucket does not exist.")
        return bucket

    def _route(
        self, method: str, path: str, query: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        if m := re.fullmatch(r"/download/storage/v1/b/([^/]+)/o/(.+)", path):
            if method != "GET":
                raise _BadRequest(f"{method} not supported on {path}")
            return self._download(unquote(m[1]), unquote(m[2]), query)
        if m := re.fullmatch(r"/upload/storage/v1/b/([^/]+)/o", path):
            if method != "POST" or query.get("uploadType") != "multipart":
                raise _BadRequest("only uploadType=multipart is supported")
            return self._upload(unquote(m[1]), query, body)
        if m := re.fullmatch(r"/storage/v1/b/([^/]+)/o/(.+)", path):
            bucket, name = self._bucket(unquote(m[1])), unquote(m[2])
            with bucket.lock:
                current = bucket.objects.get(name)
                if current is None:
                    raise _NotFound(f"No such object: {bucket.name}/{name}")
                GcsFake.check_preconditions(current, query, read=method == "GET")
                if method == "GET":
                    return 200, current.resource(bucket.name, name), {}
                if method == "DELETE":
                    del bucket.objects[name]
                    return 204, None, {}
            raise _BadRequest(f"{method} not supported on {path}")
        if m := re.fullmatch(r"/storage/v1/b/([^/]+)/o", path):
            if method != "GET":
                raise _BadRequest(f"{method} not supported on {path}")
            return self._list(unquote(m[1]), query)
        if path == "/storage/v1/b" and method == "POST":
            name = json.loads(body or b"{}").get("name", "")
            if name in self.fake.buckets:
                return 409, {"error": {"code": 409, "message": "bucket exists"}}, {}
            self.fake.create_bucket(name)
            return 200, {"kind": "storage#bucket", "name": name, "id": name}, {}
        if m := re.fullmatch(r"/storage/v1/b/([^/]+)", path):
            bucket = self._bucket(unquote(m[1]))
            return 200, {"kind": "storage#bucket", "name": bucket.name, "id": bucket.name}, {}
        raise _NotFound(f"no route for {method} {path}")

    def _download(
        self, bucket_name: str, name: str, query: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        bucket = self._bucket(bucket_name)
        with bucket.lock:
            current = bucket.objects.get(name)
            if current is None:
                raise _NotFound(f"No such object: {bucket_name}/{name}")
            GcsFake.check_preconditions(current, query, read=True)
        resource = current.resource(bucket_name, name)
        headers = {
            "Content-Type": current.content_type,
            "X-Goog-Generation": str(current.generation),
            "X-Goog-Metageneration": str(current.metageneration),
            "X-Goog-Hash": f"crc32c={resource['crc32c']},md5={resource['md5Hash']}",
            "X-Goog-Stored-Content-Length": str(len(current.data)),
            "X-Goog-Storage-Class": "STANDARD",
            "ETag": resource["etag"],
        }
        return 200, current.data, headers

    def _upload(
        self, bucket_name: str, query: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        bucket = self._bucket(bucket_name)
        metadata, data, media_type = _parse_multipart(self.headers.get("Content-Type", ""), body)
        name = metadata.get("name") or query.get("name")
        if not name:
            raise _BadRequest("an upload needs the object's name")
        content_type = str(metadata.get("contentType") or media_type)
        stored = self.fake.write(bucket, name, data, content_type, query)
        return 200, stored.resource(bucket_name, name), {}

    def _list(self, bucket_name: str, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        bucket = self._bucket(bucket_name)
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        limit = int(query.get("maxResults") or 1000)
        start = query.get("pageToken", "")
        with bucket.lock:
            names = sorted(n for n in bucket.objects if n.startswith(prefix))
            entries: list[tuple[str, bool]] = []  # (name or prefix, is a prefix)
            seen: set[str] = set()
            for name in names:
                rest = name[len(prefix) :]
                if delimiter and delimiter in rest:
                    common = prefix + rest[: rest.index(delimiter) + len(delimiter)]
                    if common not in seen:
                        seen.add(common)
                        entries.append((common, True))
                else:
                    entries.append((name, False))
            entries = [e for e in entries if e[0] > start] if start else entries
            page, more = entries[:limit], len(entries) > limit
            items = [bucket.objects[n].resource(bucket_name, n) for n, p in page if not p]
        out: dict[str, Any] = {"kind": "storage#objects", "items": items}
        prefixes = [n for n, p in page if p]
        if prefixes:
            out["prefixes"] = prefixes
        if more:
            out["nextPageToken"] = page[-1][0]
        return 200, out, {}


class _NotFound(Exception):
    pass


class _BadRequest(Exception):
    pass


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes, str]:
    """The metadata JSON, the media bytes and the media's content type of a
    ``multipart/related`` upload body."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/related") or m is None:
        raise _BadRequest("an upload is multipart/related")
    delimiter = b"--" + m[1].encode()
    parts = [p for p in body.split(delimiter)[1:] if not p.startswith(b"--")]
    if len(parts) != 2:
        raise _BadRequest("a multipart upload has two parts: metadata, then media")
    sections = []
    for part in parts:
        head, _, content = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        headers = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(":") for line in head.decode().split("\r\n") if line)
        )
        sections.append((headers, content))
    metadata = json.loads(sections[0][1] or b"{}")
    media_type = sections[1][0].get("content-type", "application/octet-stream")
    return metadata, sections[1][1], media_type


def object_url(fake: GcsFake, bucket: str, name: str) -> str:
    return f"{fake.url}/storage/v1/b/{bucket}/o/{quote(name, safe='')}"
