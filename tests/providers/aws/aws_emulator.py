"""The AWS emulator the provider tests run against: moto's server, in this process, behind a thin
project-owned layer for what moto lacks. boto3 reaches it over real HTTP through ``endpoint_url``.

``ThreadedMotoServer(port=0)`` serves moto's WSGI app; :class:`AwsEmulator` wraps that app with
:class:`Layer`, a WSGI middleware that

- **counts** every call by ``(service, operation)`` (``calls``) and every successful one
  (``applied``) — service from the SigV4 credential scope, operation from ``X-Amz-Target`` (JSON),
  the Smithy RPCv2 path (CBOR) or the method (S3); errors are answered in the request's wire
  format (JSON, CBOR or S3's XML);
- **injects faults** on chosen calls (:meth:`AwsEmulator.fault`): throttling or a 500, before the
  request reaches moto (nothing applied) or after it (applied, response lost), by count or at a
  seeded random rate, in each protocol's own error format;
- **implements ``UpdateEndpoint``** (moto has none): the endpoint goes ``Updating`` (with a
  ``PendingDeploymentSummary``) and, ``update_seconds`` later on the injected clock, ``InService``
  on the new config — or fails (``fail_updates``: ``rollback`` = back to ``InService`` on the old
  config with a ``FailureReason``; or ``Failed`` / ``UpdateRollbackFailed``);
- **adds status transitions**: a weight change leaves the endpoint ``Updating`` for
  ``weights_seconds``;
- **fixes SageMaker's tagging** where moto differs (:meth:`AwsEmulator.tags`): ``AddTags``
  overwrites the value of a key the resource has (moto appends a second tag with the same key),
  refuses more than 50 tags and values outside SageMaker's pattern; ``AddTags``, ``ListTags`` and
  ``DeleteTags`` on an unknown resource answer ``ValidationException`` (moto: a 500).

:func:`extend_cloudwatch` replaces moto's metric storage for the test session (moto expands
``Values``/``Counts`` into one datum per count, has no percentile statistics, no pagination): points
are stored as distributions; ``GetMetricData`` computes ``Sum``, ``SampleCount``, ``Average``,
``Minimum``, ``Maximum`` and ``pNN``, pages with ``NextToken`` (``page_size``) and can report
chosen metrics as ``PartialData``.
"""

from __future__ import annotations

import io
import json
import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
from moto.cloudwatch import models as cw_models
from moto.cloudwatch import responses as cw_responses
from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.responses import ActionResult
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.sagemaker.models import sagemaker_backends
from werkzeug.serving import make_server

_SCOPE = re.compile(r"Credential=[^/]+/[^/]+/([^/]+)/([^/]+)/")
_RPC = re.compile(r"/service/[^/]+/operation/([A-Za-z]+)")
_TAG_OPERATIONS = frozenset({"AddTags", "ListTags", "DeleteTags"})
MAX_TAGS = 50  # per SageMaker resource
#: SageMaker's tag value pattern (``\p{L}\p{Z}\p{N}_.:/=+\-@``, at most 256), near enough.
_TAG_VALUE = re.compile(r"[\w .:/=+\-@]{0,256}")


# ---------------------------------------------------------------------------------- faults


@dataclass
class Fault:
    kind: str  # "throttle" | "500" | "denied"
    service: str | None = None
    operations: frozenset[str] | None = None
    spare: frozenset[str] = frozenset()  # operations never faulted
    times: int | None = None  # this many matching calls fail, then the rule is spent
    rate: float = 1.0  # else: this share of matching calls fail (seeded)
    after: bool = False  # let the call apply, then lose the response
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    hits: int = 0

    def matches(self, service: str, operation: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.service is not None and service != self.service:
            return False
        if self.operations is not None and operation not in self.operations:
            return False
        if operation in self.spare:
            return False
        if self.times is None and self.rng.random() >= self.rate:
            return False
        self.hits += 1
        return True


def _cbor_text(text: str) -> bytes:
    data = text.encode()
    n = len(data)
    head = (
        bytes([0x60 + n])
        if n < 24
        else bytes([0x78, n])
        if n < 256
        else bytes([0x79]) + n.to_bytes(2, "big")
    )
    return head + data


def _cbor_map(items: dict[str, str]) -> bytes:
    out = bytes([0xA0 + len(items)])
    for k, v in items.items():
        out += _cbor_text(k) + _cbor_text(v)
    return out


_CBOR = [("Content-Type", "application/cbor"), ("smithy-protocol", "rpc-v2-cbor")]
_JSON = [("Content-Type", "application/x-amz-json-1.1")]


def error_response(
    service: str, kind: str, wire: str = "json"
) -> tuple[str, list[tuple[str, str]], bytes]:
    """An error in the wire format of the request (``wire``: json, cbor; S3 speaks XML)."""
    throttle = kind == "throttle"
    if kind == "denied":
        code = "AccessDenied" if service == "s3" else "AccessDeniedException"
        if service == "s3":
            body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
            return "403 Forbidden", [("Content-Type", "application/xml")], body
        if wire == "cbor":
            body = _cbor_map({"__type": code, "message": "injected"})
            return (
                "400 Bad Request",
                [("Content-Type", "application/cbor"), ("smithy-protocol", "rpc-v2-cbor")],
                body,
            )
        body = json.dumps({"__type": code, "message": "injected"}).encode()
        return (
            "400 Bad Request",
            [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-ErrorType", code)],
            body,
        )
    if service == "s3":
        code, status = (
            ("SlowDown", "503 Slow Down")
            if throttle
            else (
                "InternalError",
                "500 Internal Server Error",
            )
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{code}</Code><Message>injected</Message></Error>"
        ).encode()
        return status, [("Content-Type", "application/xml")], body
    code = "ThrottlingException" if throttle else "InternalFailure"
    status = "400 Bad Request" if throttle else "500 Internal Server Error"
    if wire == "cbor":  # Smithy RPCv2 CBOR
        body = _cbor_map({"__type": code, "message": "injected"})
        return (
            status,
            [("Content-Type", "application/cbor"), ("smithy-protocol", "rpc-v2-cbor")],
            body,
        )
    body = json.dumps({"__type": code, "message": "injected"}).encode()
    return (
        status,
        [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-ErrorType", code)],
        body,
    )


# ---------------------------------------------------------------------------------- layer


def _json(status: str, payload: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    return status, [("Content-Type", "application/x-amz-json-1.1")], json.dumps(payload).encode()


def _validation(message: str) -> tuple[str, list[tuple[str, str]], bytes]:
    status, headers, body = _json(
        "400 Bad Request", {"__type": "ValidationException", "message": message}
    )
    return status, [*headers, ("x-amzn-ErrorType", "ValidationException")], body


class Layer:
    """The WSGI middleware in front of moto (see the module doc)."""

    def __init__(self, app: Callable[..., Iterable[bytes]], emulator: AwsEmulator) -> None:
        self.app = app
        self.emulator = emulator

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        em = self.emulator
        path = environ.get("PATH_INFO", "")
        if path.startswith("/moto-api"):
            return self.app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        scope = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
        region, service = (scope.group(1), scope.group(2)) if scope else ("us-east-1", "?")
        operation = self._operation(service, environ, path)
        wire = "cbor" if "cbor" in environ.get("CONTENT_TYPE", "") else "json"
        with em.lock:
            em.settle()
            em.calls[(service, operation)] += 1
            fault = next((f for f in em.faults if f.matches(service, operation)), None)
        if fault is not None and not fault.after:
            return self._send(start_response, *error_response(service, fault.kind, wire))
        answer = None
        if service == "sagemaker" and operation == "UpdateEndpoint":
            with em.lock:
                answer = em.update_endpoint(region, json.loads(body or b"{}"))
        elif service == "sagemaker" and operation in _TAG_OPERATIONS:
            with em.lock:
                answer = em.tags(region, operation, json.loads(body or b"{}"))
        status, headers, out = answer if answer is not None else self._moto(environ)
        ok = status.startswith("2")
        if ok:
            with em.lock:
                em.applied[(service, operation)] += 1
                if service == "sagemaker" and operation == "UpdateEndpointWeightsAndCapacities":
                    em.weights_changed(region, json.loads(body)["EndpointName"])
        if fault is not None:  # after: the change is made, the response is lost
            return self._send(start_response, *error_response(service, fault.kind, wire))
        return self._send(start_response, status, headers, out)

    @staticmethod
    def _operation(service: str, environ: dict[str, Any], path: str) -> str:
        target = environ.get("HTTP_X_AMZ_TARGET")
        if target:
            return target.rsplit(".", 1)[-1]
        rpc = _RPC.search(path)
        if rpc:
            return rpc.group(1)
        if service == "s3":
            method = environ.get("REQUEST_METHOD", "GET")
            query = environ.get("QUERY_STRING", "")
            if method == "GET" and "list-type=2" in query:
                return "ListObjectsV2"
            return {
                "GET": "GetObject",
                "PUT": "PutObject",
                "HEAD": "HeadObject",
                "DELETE": "DeleteObject",
            }.get(method, method)
        return "?"

    def _moto(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        captured: dict[str, Any] = {}

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            captured["status"], captured["headers"] = status, headers

        chunks = self.app(environ, start)
        try:
            out = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()
        return captured["status"], captured["headers"], out

    @staticmethod
    def _send(
        start_response: Callable[..., Any], status: str, headers: list[Any], body: bytes
    ) -> Any:
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [body]


# ------------------------------------------------------------------------------- emulator


class _Server(ThreadedMotoServer):
    """ThreadedMotoServer with the layer around moto's app."""

    def __init__(self, emulator: AwsEmulator) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.emulator = emulator

    def _server_entry(self) -> None:
        from moto.moto_server.threaded_moto_server import MotoRequestHandler

        app = Layer(DomainDispatcherApplication(create_backend_app), self.emulator)
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


class AwsEmulator:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.clock: Any = None  # the injected clock; set per test
        self.calls: Counter[tuple[str, str]] = Counter()
        self.applied: Counter[tuple[str, str]] = Counter()
        self.faults: list[Fault] = []
        self.update_seconds = 120.0
        self.weights_seconds = 20.0
        self.fail_updates: str | None = None  # "rollback" | "Failed" | "UpdateRollbackFailed"
        self.page_size = 100_800  # CloudWatch's MaxDatapoints default
        self.partial: set[str] = set()  # metric names GetMetricData reports as PartialData
        self._due: list[tuple[float, Callable[[], None]]] = []
        self._server = _Server(self)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> AwsEmulator:
        extend_cloudwatch(self)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def reset(self, clock: Any = None) -> None:
        requests.post(f"{self.url}/moto-api/reset", timeout=10)
        with self.lock:
            self.clock = clock
            self.calls.clear()
            self.applied.clear()
            self.faults.clear()
            self._due.clear()
            self.update_seconds, self.weights_seconds = 120.0, 20.0
            self.fail_updates = None
            self.page_size = 100_800
            self.partial.clear()

    def count(self, operation: str, *, applied: bool = False) -> int:
        counter = self.applied if applied else self.calls
        return sum(n for (_, op), n in counter.items() if op == operation)

    def fault(self, kind: str = "throttle", **rule: Any) -> Fault:
        ops = rule.pop("operations", None)
        spare = frozenset(rule.pop("spare", ()))
        f = Fault(kind, operations=frozenset(ops) if ops else None, spare=spare, **rule)
        with self.lock:
            self.faults.append(f)
        return f

    # -- virtual time ------------------------------------------------------------------------

    def now(self) -> float:
        return float(self.clock.now()) if self.clock is not None else 0.0

    def settle(self) -> None:
        """Apply the status transitions that are due on the injected clock."""
        now = self.now()
        due = [action for at, action in self._due if at <= now]
        self._due = [(at, action) for at, action in self._due if at > now]
        for action in due:
            action()

    def _later(self, seconds: float, action: Callable[[], None]) -> None:
        if seconds <= 0:
            action()
        else:
            self._due.append((self.now() + seconds, action))

    # -- SageMaker ---------------------------------------------------------------------------

    @staticmethod
    def backend(region: str = "us-east-1") -> Any:
        return sagemaker_backends[DEFAULT_ACCOUNT_ID][region]

    def endpoint(self, name: str, region: str = "us-east-1") -> Any:
        return self.backend(region).endpoints.get(name)

    def update_endpoint(
        self, region: str, request: dict[str, Any]
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        backend = self.backend(region)
        name, config_name = request.get("EndpointName"), request.get("EndpointConfigName")
        endpoint = backend.endpoints.get(name)
        if endpoint is None:
            return _validation(f'Could not find endpoint "{name}".')
        config = backend.endpoint_configs.get(config_name)
        if config is None:
            return _validation(f'Could not find endpoint configuration "{config_name}".')
        if endpoint.endpoint_status != "InService":
            return _validation(f'Cannot update in-progress endpoint "{endpoint.arn}".')
        retain = bool(request.get("RetainAllVariantProperties"))
        endpoint.endpoint_status = "Updating"
        endpoint.pending_deployment_summary = {
            "EndpointConfigName": config_name,
            "StartTime": datetime.fromtimestamp(self.now(), UTC),
        }
        failure = self.fail_updates

        def finish() -> None:
            endpoint.pending_deployment_summary = None
            if failure == "rollback":
                endpoint.endpoint_status = "InService"
                endpoint.failure_reason = "injected: the new variant failed its health check"
                return
            if failure:
                endpoint.endpoint_status = failure
                endpoint.failure_reason = f"injected: update ended {failure}"
                return
            old = {v["VariantName"]: v for v in endpoint.production_variants}
            variants = []
            for spec in config.production_variants:
                kept = old.get(spec["VariantName"]) if retain else None
                weight = float(spec.get("InitialVariantWeight", 1.0))
                count = spec.get("InitialInstanceCount")
                variants.append(
                    {
                        "VariantName": spec["VariantName"],
                        "CurrentWeight": kept["CurrentWeight"] if kept else weight,
                        "DesiredWeight": kept["DesiredWeight"] if kept else weight,
                        "CurrentInstanceCount": kept.get("CurrentInstanceCount") if kept else count,
                        "DesiredInstanceCount": kept.get("DesiredInstanceCount") if kept else count,
                    }
                )
            endpoint.production_variants = variants
            endpoint.endpoint_config_name = config_name
            endpoint.endpoint_status = "InService"
            endpoint.failure_reason = None

        self._later(self.update_seconds, finish)
        return _json("200 OK", {"EndpointArn": endpoint.arn})

    def tags(
        self, region: str, operation: str, request: dict[str, Any]
    ) -> tuple[str, list[tuple[str, str]], bytes] | None:
        """SageMaker's AddTags (all of it) and the unknown-resource answer of ListTags and
        DeleteTags; None leaves the request to moto."""
        arn = str(request.get("ResourceArn", ""))
        try:
            resource = self.backend(region)._get_resource_from_arn(arn)
        except Exception:  # moto's lookup fails on an ARN of a kind it does not know
            resource = None
        if resource is None:
            return _validation(f"Could not find resource {arn}.")
        if operation != "AddTags":
            return None
        tags = {t["Key"]: t["Value"] for t in resource.tags}
        added = list(request.get("Tags") or [])
        bad = [t["Value"] for t in added if not _TAG_VALUE.fullmatch(str(t.get("Value", "")))]
        if bad:
            return _validation(
                f"Tag values {bad} fail to satisfy the constraint {_TAG_VALUE.pattern}"
            )
        tags.update({t["Key"]: t["Value"] for t in added})
        if len(tags) > MAX_TAGS:
            return _validation(
                f"A resource has at most {MAX_TAGS} tags; {arn} would have {len(tags)}."
            )
        resource.tags = [{"Key": k, "Value": v} for k, v in tags.items()]
        return _json("200 OK", {"Tags": added})

    def endpoint_tags(self, name: str, region: str = "us-east-1") -> list[tuple[str, str]]:
        """The endpoint's tags as the emulator holds them, sorted (a key twice shows twice)."""
        endpoint = self.endpoint(name, region)
        return sorted((t["Key"], t["Value"]) for t in (endpoint.tags if endpoint else []))

    def weights_changed(self, region: str, name: str) -> None:
        endpoint = self.endpoint(name, region)
        if endpoint is None or self.weights_seconds <= 0:
            return
        endpoint.endpoint_status = "Updating"

        def finish() -> None:
            endpoint.endpoint_status = "InService"

        self._later(self.weights_seconds, finish)

    def weights(self, name: str, region: str = "us-east-1") -> dict[str, float]:
        """The endpoint's live weights in percent (for the traffic generator)."""
        endpoint = self.endpoint(name, region)
        if endpoint is None:
            return {}
        raw = {
            v["VariantName"]: float(v.get("CurrentWeight") or 0.0)
            for v in endpoint.production_variants
        }
        total = sum(raw.values())
        return {k: (100.0 * w / total if total else 0.0) for k, w in raw.items()}


# ----------------------------------------------------------------------------- CloudWatch


def _percentile(values: list[float], counts: list[float], q: float) -> float:
    pairs = sorted(zip(values, counts, strict=True))
    total = sum(c for _, c in pairs)
    rank, seen = q * total, 0.0
    for value, count in pairs:
        seen += count
        if seen >= rank:
            return value
    return pairs[-1][0]


def _statistic(points: list[tuple[list[float], list[float]]], stat: str) -> float:
    values = [v for vs, _ in points for v in vs]
    counts = [c for _, cs in points for c in cs]
    if stat == "Sum":
        return sum(v * c for v, c in zip(values, counts, strict=True))
    if stat == "SampleCount":
        return sum(counts)
    if stat == "Average":
        return sum(v * c for v, c in zip(values, counts, strict=True)) / sum(counts)
    if stat == "Minimum":
        return min(values)
    if stat == "Maximum":
        return max(values)
    if stat.startswith("p"):
        return _percentile(values, counts, float(stat[1:]) / 100.0)
    raise ValueError(f"unsupported statistic {stat}")


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.replace(tzinfo=value.tzinfo or UTC).timestamp()
    return float(value)


def extend_cloudwatch(emulator: AwsEmulator) -> None:
    """Replace moto's metric storage and GetMetricData (see the module doc). Idempotent."""
    backend_cls = cw_models.CloudWatchBackend
    if getattr(backend_cls, "_mlrollout_extended", False):
        backend_cls._mlrollout_emulator = emulator
        return

    def store(self: Any) -> dict[tuple[str, str, tuple[tuple[str, str], ...]], list[Any]]:
        if not hasattr(self, "_mlr_points"):
            self._mlr_points = {}
        return self._mlr_points

    def put_metric_data(self: Any, namespace: str, metric_data: list[dict[str, Any]]) -> None:
        points = store(self)
        for m in metric_data:
            dims = tuple(sorted((d["Name"], d["Value"]) for d in m.get("Dimensions") or []))
            at = _epoch(m.get("Timestamp") or emulator.now())
            if m.get("Values"):
                values = [float(v) for v in m["Values"]]
                counts = [float(c) for c in (m.get("Counts") or [1] * len(values))]
            elif m.get("StatisticValues"):
                s = m["StatisticValues"]
                n = float(s["SampleCount"])
                values, counts = [float(s["Sum"]) / n if n else 0.0], [n]
            else:
                values, counts = [float(m.get("Value", 0))], [1.0]
            points.setdefault((namespace, m["MetricName"], dims), []).append((at, values, counts))

    def get_metric_data_response(self: Any) -> ActionResult:
        params = self._get_params()
        start, end = _epoch(params["StartTime"]), _epoch(params["EndTime"])
        points = store(self.cloudwatch_backend)
        em = backend_cls._mlrollout_emulator
        datapoints: list[tuple[str, float, float]] = []  # (id, timestamp, value)
        labels: dict[str, str] = {}
        for query in params.get("MetricDataQueries", []):
            stat = query["MetricStat"]
            metric = stat["Metric"]
            dims = tuple(sorted((d["Name"], d["Value"]) for d in metric.get("Dimensions") or []))
            series = points.get((metric["Namespace"], metric["MetricName"], dims), [])
            period = float(stat["Period"])
            labels[query["Id"]] = query.get("Label") or metric["MetricName"]
            t = start
            while t < end:
                inside = [(vs, cs) for at, vs, cs in series if t <= at < t + period]
                if inside:
                    datapoints.append((query["Id"], t, _statistic(inside, stat["Stat"])))
                t += period
        offset = int(params.get("NextToken") or 0)
        page = datapoints[offset : offset + em.page_size]
        more = offset + em.page_size < len(datapoints)
        remaining = {qid for qid, _, _ in datapoints[offset + em.page_size :]}
        results = []
        for query in params.get("MetricDataQueries", []):
            qid = query["Id"]
            mine = [(ts, v) for i, ts, v in page if i == qid]
            partial = qid in remaining or query["MetricStat"]["Metric"]["MetricName"] in em.partial
            results.append(
                {
                    "Id": qid,
                    "Label": labels[qid],
                    "Timestamps": [datetime.fromtimestamp(ts, UTC) for ts, _ in mine],
                    "Values": [v for _, v in mine],
                    "StatusCode": "PartialData" if partial else "Complete",
                }
            )
        body: dict[str, Any] = {"MetricDataResults": results, "Messages": []}
        if more:
            body["NextToken"] = str(offset + em.page_size)
        return ActionResult(body)

    backend_cls.put_metric_data = put_metric_data
    cw_responses.CloudWatchResponse.get_metric_data = get_metric_data_response
    backend_cls._mlrollout_extended = True
    backend_cls._mlrollout_emulator = emulator
