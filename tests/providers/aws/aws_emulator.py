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
- **implements SageMaker's own blue/green deployment** (``UpdateEndpoint`` with
  ``DeploymentConfig``, :class:`BlueGreenDeployment`): blue and green fleets, green's
  provisioning, canary / linear / all-at-once traffic shifting with baking periods over virtual
  time, ``PendingDeploymentSummary`` and ``LastDeploymentConfig``, the termination wait, and the
  rollback (``RollingBack`` → ``InService`` on the old config) when an alarm of its
  ``AutoRollbackConfiguration`` is in ALARM; the alarms are moto's (``PutMetricAlarm``,
  ``SetAlarmState``...), evaluated here on the stored metrics (:func:`evaluate`);
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
            if service == "s3":
                em.s3_calls[(path.strip("/").split("/", 1)[0], operation)] += 1
            fault = next((f for f in em.faults if f.matches(service, operation)), None)
        if fault is not None and not fault.after:
            return self._send(start_response, *error_response(service, fault.kind, wire))
        answer = None
        if service == "sagemaker" and operation == "CreateEndpointConfig":
            answer = em.check_shadow_config(json.loads(body or b"{}"))
        if answer is not None:
            pass
        elif service == "sagemaker" and operation == "UpdateEndpoint":
            with em.lock:
                answer = em.update_endpoint(region, json.loads(body or b"{}"))
        elif service == "sagemaker" and operation in _TAG_OPERATIONS:
            with em.lock:
                answer = em.tags(region, operation, json.loads(body or b"{}"))
        status, headers, out = answer if answer is not None else self._moto(environ)
        ok = status.startswith("2")
        if ok and service == "sagemaker" and answer is None:
            with em.lock:
                out = em.shadow_layer(region, operation, json.loads(body or b"{}"), out)
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
        self.s3_calls: Counter[tuple[str, str]] = Counter()  # by (bucket, operation)
        self.applied: Counter[tuple[str, str]] = Counter()
        self.faults: list[Fault] = []
        self.update_seconds = 120.0
        self.weights_seconds = 20.0
        self.fail_updates: str | None = None  # "rollback" | "Failed" | "UpdateRollbackFailed"
        self.page_size = 100_800  # CloudWatch's MaxDatapoints default
        self.partial: set[str] = set()  # metric names GetMetricData reports as PartialData
        self._due: list[tuple[float, Callable[[], None]]] = []
        # Native blue/green deployments (UpdateEndpoint with DeploymentConfig), by endpoint.
        self.deployments: dict[str, BlueGreenDeployment] = {}
        self.rollbacks: list[dict[str, Any]] = []  # {endpoint, alarms, at, config}
        self.green_seconds = 120.0  # provisioning the green fleet
        self.rollback_seconds = 30.0  # RollingBack until InService on the old config
        # Shadow variants (moto drops ShadowProductionVariants): by config, live by endpoint.
        self.shadow_specs: dict[str, list[dict[str, Any]]] = {}
        self.endpoint_shadows: dict[str, list[dict[str, Any]]] = {}
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
            self.s3_calls.clear()
            self.applied.clear()
            self.faults.clear()
            self._due.clear()
            self.update_seconds, self.weights_seconds = 120.0, 20.0
            self.fail_updates = None
            self.page_size = 100_800
            self.partial.clear()
            self.deployments.clear()
            self.rollbacks.clear()
            self.green_seconds, self.rollback_seconds = 120.0, 30.0
            self.shadow_specs.clear()
            self.endpoint_shadows.clear()

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
        for deployment in list(self.deployments.values()):
            deployment.advance(now)

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
        policy = (request.get("DeploymentConfig") or {}).get("BlueGreenUpdatePolicy")
        if policy:
            return self._blue_green(region, endpoint, config, request["DeploymentConfig"])
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
            self.endpoint_shadows[endpoint.endpoint_name] = [
                {
                    "VariantName": spec["VariantName"],
                    "CurrentWeight": float(spec.get("InitialVariantWeight", 0.0)),
                    "DesiredWeight": float(spec.get("InitialVariantWeight", 0.0)),
                    "CurrentInstanceCount": spec.get("InitialInstanceCount"),
                    "DesiredInstanceCount": spec.get("InitialInstanceCount"),
                }
                for spec in self.shadow_specs.get(str(config_name), [])
            ]

        self._later(self.update_seconds, finish)
        return _json("200 OK", {"EndpointArn": endpoint.arn})

    # -- shadow variants and DataCapture (what moto drops) -----------------------------------

    def check_shadow_config(
        self, request: dict[str, Any]
    ) -> tuple[str, list[tuple[str, str]], bytes] | None:
        """SageMaker's rule for a config with shadows: one production variant, one shadow."""
        shadows = request.get("ShadowProductionVariants") or []
        if not shadows:
            return None
        production = request.get("ProductionVariants") or []
        if len(production) != 1 or len(shadows) != 1:
            return _validation(
                "With ShadowProductionVariants you can specify only one variant for "
                f"ProductionVariants and one for ShadowProductionVariants (got "
                f"{len(production)} and {len(shadows)})."
            )
        return None

    def shadow_layer(
        self, region: str, operation: str, request: dict[str, Any], out: bytes
    ) -> bytes:
        """Keep the shadows of CreateEndpointConfig; report them (and DataCapture) in the
        Describe answers."""
        if operation == "CreateEndpointConfig":
            shadows = request.get("ShadowProductionVariants") or []
            if shadows:
                self.shadow_specs[str(request["EndpointConfigName"])] = shadows
            return out
        if operation == "DeleteEndpointConfig":
            self.shadow_specs.pop(str(request.get("EndpointConfigName")), None)
            return out
        if operation == "DescribeEndpointConfig":
            shadows = self.shadow_specs.get(str(request.get("EndpointConfigName")))
            if not shadows:
                return out
            answer = json.loads(out)
            answer["ShadowProductionVariants"] = shadows
            return json.dumps(answer).encode()
        if operation == "DescribeEndpoint":
            name = str(request.get("EndpointName"))
            answer = json.loads(out)
            shadows = self.endpoint_shadows.get(name)
            if shadows:
                answer["ShadowProductionVariants"] = shadows
            else:
                answer.pop("ShadowProductionVariants", None)
            capture = self.capture_config(name, region)
            if capture:
                answer["DataCaptureConfig"] = {
                    "EnableCapture": bool(capture.get("EnableCapture", True)),
                    "CaptureStatus": "Started" if capture.get("EnableCapture", True) else "Stopped",
                    "CurrentSamplingPercentage": int(capture.get("InitialSamplingPercentage", 0)),
                    "DestinationS3Uri": capture["DestinationS3Uri"],
                }
            else:
                answer.pop("DataCaptureConfig", None)
            return json.dumps(answer, default=str).encode()
        return out

    def capture_config(self, name: str, region: str = "us-east-1") -> dict[str, Any] | None:
        """The DataCaptureConfig of the endpoint's live config (None: no capture)."""
        endpoint = self.endpoint(name, region)
        if endpoint is None:
            return None
        config = self.backend(region).endpoint_configs.get(endpoint.endpoint_config_name)
        capture = dict(getattr(config, "data_capture_config", None) or {})
        return capture if capture.get("DestinationS3Uri") else None

    def shadows(self, name: str, region: str = "us-east-1") -> dict[str, float]:
        """The shadow variants' sampling shares (percent of the production requests)."""
        endpoint = self.endpoint(name, region)
        if endpoint is None:
            return {}
        total = sum(float(v.get("CurrentWeight") or 0.0) for v in endpoint.production_variants)
        return {
            str(v["VariantName"]): min(100.0, 100.0 * float(v["CurrentWeight"]) / total)
            for v in self.endpoint_shadows.get(name, [])
            if total > 0
        }

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

    def _blue_green(
        self, region: str, endpoint: Any, config: Any, deployment: dict[str, Any]
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        """SageMaker's own blue/green deployment (validated as SageMaker does, then run on the
        injected clock by :class:`BlueGreenDeployment`)."""
        backend = self.backend(region)
        old = backend.endpoint_configs.get(endpoint.endpoint_config_name)
        names = {v["VariantName"] for v in config.production_variants}
        old_names = {v["VariantName"] for v in (old.production_variants if old else [])}
        if names != old_names:
            return _validation(
                "A blue/green deployment needs the same variant names in the new endpoint "
                f"configuration as in the old: {sorted(names)} vs {sorted(old_names)}."
            )
        policy = deployment["BlueGreenUpdatePolicy"]
        routing = policy.get("TrafficRoutingConfiguration") or {}
        kind = routing.get("Type", "ALL_AT_ONCE")
        size = (routing.get("CanarySize") or routing.get("LinearStepSize") or {}).get("Value")
        if kind == "CANARY" and not (size and 0 < size <= 50):
            return _validation(f"CanarySize must be at most 50% of the fleet, got {size}.")
        if kind == "LINEAR" and not (size and 10 <= size <= 50):
            return _validation(f"LinearStepSize must be 10-50% of the fleet, got {size}.")
        alarms = [
            a["AlarmName"]
            for a in (deployment.get("AutoRollbackConfiguration") or {}).get("Alarms") or []
        ]
        if len(alarms) > 10:
            return _validation(f"At most 10 alarms, got {len(alarms)}.")
        known = cw_models.cloudwatch_backends[DEFAULT_ACCOUNT_ID][region].alarms
        missing = [a for a in alarms if a not in known]
        if missing:
            return _validation(f"CloudWatch alarms {missing} do not exist.")
        if kind == "CANARY":
            steps = [float(size), 100.0]
        elif kind == "LINEAR":
            steps = [min(100.0, float(size) * i) for i in range(1, -(-100 // size) + 1)]
        else:
            steps = [100.0]
        old_models = {v["VariantName"]: v.get("ModelName") for v in old.production_variants}
        run = BlueGreenDeployment(
            emulator=self,
            region=region,
            endpoint=endpoint,
            config=config,
            old_config=endpoint.endpoint_config_name,
            old_models=old_models,
            steps=steps,
            wait=float(routing.get("WaitIntervalInSeconds", 0)),
            termination_wait=float(policy.get("TerminationWaitInSeconds", 0)),
            timeout=float(policy.get("MaximumExecutionTimeoutInSeconds", 3600)),
            alarms=alarms,
            started=self.now(),
        )
        endpoint.endpoint_status = "Updating"
        endpoint.last_deployment_config = deployment
        endpoint.failure_reason = None
        self.deployments[endpoint.endpoint_name] = run
        run.describe()
        return _json("200 OK", {"EndpointArn": endpoint.arn})

    def alarms_in_alarm(self, region: str, names: list[str], at: float) -> list[str]:
        """Evaluate ``names`` at instant ``at`` on the stored metrics (see :func:`evaluate`);
        the ones in ALARM."""
        backend = cw_models.cloudwatch_backends[DEFAULT_ACCOUNT_ID][region]
        fired = []
        for name in names:
            alarm = backend.alarms.get(name)
            if alarm is None:
                continue
            evaluate(backend, alarm, at)
            if alarm.state_value == "ALARM":
                fired.append(name)
        return fired

    def traffic_split(
        self, name: str, region: str = "us-east-1"
    ) -> list[tuple[str, str | None, float]]:
        """Who serves the endpoint's live traffic: ``(variant, model, percent)`` per fleet. During
        a native blue/green deployment each variant has two fleets, blue (the old config's
        model) and green (the new one's), both under the variant's name."""
        with self.lock:
            self.settle()  # a shift due by now has happened, request or not
        endpoint = self.endpoint(name, region)
        if endpoint is None:
            return []
        config = self.backend(region).endpoint_configs.get(endpoint.endpoint_config_name)
        models = {
            v["VariantName"]: v.get("ModelName")
            for v in (config.production_variants if config else [])
        }
        split: list[tuple[str, str | None, float]] = []
        run = self.deployments.get(name)
        for variant, percent in self.weights(name, region).items():
            if run is None or run.green <= 0:
                split.append((variant, models.get(variant), percent))
                continue
            green = percent * run.green / 100.0
            split.append((variant, run.old_models.get(variant), percent - green))
            split.append((variant, run.new_models().get(variant), green))
        return split

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


# ------------------------------------------------------------- native blue/green deployments


@dataclass
class BlueGreenDeployment:
    """One ``UpdateEndpoint`` with ``BlueGreenUpdatePolicy``, on the injected clock:

    ``provisioning`` (green's fleet, ``green_seconds``; variant status ``Creating``) → for each
    traffic step (CANARY: the canary, then 100 %; LINEAR: ``step`` more each time; ALL_AT_ONCE:
    100 %) green takes that share and bakes ``WaitIntervalInSeconds`` (``Baking``) →
    ``terminating`` (all traffic on green, blue kept ``TerminationWaitInSeconds``, still
    ``Baking``) → ``InService`` on the new config. Throughout, if any alarm of the
    ``AutoRollbackConfiguration`` is in ALARM (evaluated on the stored metrics at each instant a
    request arrives and at each transition), or the deployment exceeds
    ``MaximumExecutionTimeoutInSeconds``, it rolls back: all traffic back to blue at once,
    ``RollingBack`` for ``rollback_seconds``, then ``InService`` on the old config with a
    ``FailureReason`` naming the alarms (kept in ``AwsEmulator.rollbacks``).

    While it runs, ``DescribeEndpoint`` has ``PendingDeploymentSummary`` with the new config's
    variants: ``CurrentWeight`` = the variant's weight times green's share (``DesiredWeight``
    the variant's weight), ``CurrentInstanceCount`` the green instances taking traffic, and
    ``VariantStatus``. ``LastDeploymentConfig`` is the deployment config from the request on."""

    emulator: AwsEmulator
    region: str
    endpoint: Any
    config: Any
    old_config: str
    old_models: dict[str, str | None]
    steps: list[float]
    wait: float
    termination_wait: float
    timeout: float
    alarms: list[str]
    started: float
    phase: str = "provisioning"  # provisioning | baking | terminating | rolling_back | done
    step: int = 0
    green: float = 0.0
    next_at: float = 0.0
    phase_started: float = 0.0

    def __post_init__(self) -> None:
        self.next_at = self.started + self.emulator.green_seconds
        self.phase_started = self.started

    def new_models(self) -> dict[str, str | None]:
        return {v["VariantName"]: v.get("ModelName") for v in self.config.production_variants}

    def advance(self, now: float) -> None:
        while self.phase != "done":
            if self.phase == "rolling_back":
                if self.next_at <= now:
                    self._rolled_back()
                return
            at = min(self.next_at, now)
            fired = self.emulator.alarms_in_alarm(self.region, self.alarms, at)
            if fired:
                self._roll_back(at, fired, f"alarm(s) {', '.join(fired)} in ALARM")
                continue
            if at >= self.started + self.timeout:
                self._roll_back(at, [], "MaximumExecutionTimeoutInSeconds exceeded")
                continue
            if self.next_at > now:
                return
            self._transition(self.next_at)

    def _transition(self, at: float) -> None:
        if self.phase == "provisioning" or (
            self.phase == "baking" and self.step + 1 < len(self.steps)
        ):
            if self.phase == "baking":
                self.step += 1
            self.phase, self.green = "baking", self.steps[self.step]
            self.next_at, self.phase_started = at + self.wait, at
        elif self.phase == "baking":
            self.phase, self.green = "terminating", 100.0
            self.next_at, self.phase_started = at + self.termination_wait, at
        else:  # terminating: done, green serves alone
            self._succeeded()
            return
        self.describe()

    def _roll_back(self, at: float, fired: list[str], why: str) -> None:
        self.phase, self.green = "rolling_back", 0.0
        self.next_at, self.phase_started = at + self.emulator.rollback_seconds, at
        self.endpoint.endpoint_status = "RollingBack"
        self.endpoint.failure_reason = f"Blue/green deployment rolled back: {why}."
        self.emulator.rollbacks.append(
            {
                "endpoint": self.endpoint.endpoint_name,
                "alarms": fired,
                "at": at,
                "config": self.config.endpoint_config_name,
                "reason": why,
            }
        )
        self.describe()

    def _rolled_back(self) -> None:
        self.phase = "done"
        self.endpoint.endpoint_status = "InService"
        self.endpoint.pending_deployment_summary = None
        self.emulator.deployments.pop(self.endpoint.endpoint_name, None)

    def _succeeded(self) -> None:
        self.phase = "done"
        endpoint = self.endpoint
        endpoint.production_variants = [
            {
                "VariantName": spec["VariantName"],
                "CurrentWeight": float(spec.get("InitialVariantWeight", 1.0)),
                "DesiredWeight": float(spec.get("InitialVariantWeight", 1.0)),
                "CurrentInstanceCount": spec.get("InitialInstanceCount"),
                "DesiredInstanceCount": spec.get("InitialInstanceCount"),
            }
            for spec in self.config.production_variants
        ]
        endpoint.endpoint_config_name = self.config.endpoint_config_name
        endpoint.endpoint_status = "InService"
        endpoint.pending_deployment_summary = None
        endpoint.failure_reason = None
        self.emulator.deployments.pop(endpoint.endpoint_name, None)

    def describe(self) -> None:
        """The ``PendingDeploymentSummary`` of the current phase."""
        status, message = {
            "provisioning": ("Creating", "provisioning the new fleet"),
            "baking": ("Baking", f"{self.green:g}% of the traffic; baking {self.wait:g}s"),
            "terminating": (
                "Baking",
                f"all traffic on the new fleet; the old fleet terminates in "
                f"{self.termination_wait:g}s",
            ),
            "rolling_back": ("Updating", "rolling back to the old fleet"),
        }[self.phase]
        since = datetime.fromtimestamp(self.phase_started, UTC)
        variants = []
        for spec in self.config.production_variants:
            weight = float(spec.get("InitialVariantWeight", 1.0))
            count = int(spec.get("InitialInstanceCount") or 1)
            variants.append(
                {
                    "VariantName": spec["VariantName"],
                    "CurrentWeight": weight * self.green / 100.0,
                    "DesiredWeight": weight,
                    "CurrentInstanceCount": -(-count * round(self.green) // 100),
                    "DesiredInstanceCount": count,
                    "InstanceType": spec.get("InstanceType"),
                    "VariantStatus": [
                        {"Status": status, "StatusMessage": message, "StartTime": since}
                    ],
                }
            )
        self.endpoint.pending_deployment_summary = {
            "EndpointConfigName": self.config.endpoint_config_name,
            "ProductionVariants": variants,
            "StartTime": datetime.fromtimestamp(self.started, UTC),
        }


# ------------------------------------------------------------------------ CloudWatch alarms


def _dims_of(dimensions: Any) -> tuple[tuple[str, str], ...]:
    pairs = []
    for d in dimensions or []:
        if isinstance(d, dict):
            pairs.append((str(d.get("Name")), str(d.get("Value"))))
        else:
            pairs.append((str(d.name), str(d.value)))
    return tuple(sorted(pairs))


def _series_value(
    points: dict[Any, list[Any]],
    namespace: str,
    metric: str,
    dims: tuple[tuple[str, str], ...],
    stat: str,
    start: float,
    end: float,
) -> float | None:
    inside = [
        (vs, cs) for at, vs, cs in points.get((namespace, metric, dims), []) if start <= at < end
    ]
    if not inside:
        return None
    return _statistic(inside, stat)


def _expression(text: str, values: dict[str, float | None]) -> float | None:
    """Metric math with ids, numbers, + - * / and parentheses (what mlrollout's alarms use)."""
    import ast

    def walk(node: ast.AST) -> float | None:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Name):
            return values.get(node.id)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.BinOp):
            a, b = walk(node.left), walk(node.right)
            if a is None or b is None:
                return None
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if isinstance(node.op, ast.Div):
                return None if b == 0 else a / b
        raise ValueError(f"unsupported metric math: {text}")

    return walk(ast.parse(text, mode="eval"))


def alarm_value(backend: Any, alarm: Any, start: float, end: float) -> float | None:
    """The alarm's metric (or metric math) over ``[start, end)``; None without data."""
    points = getattr(backend, "_mlr_points", {})
    if alarm.metric_data_queries:
        values: dict[str, float | None] = {}
        for q in alarm.metric_data_queries:
            if q.metric_stat is not None:
                m = q.metric_stat.metric
                values[q.id] = _series_value(
                    points, m.namespace, m.metric_name, _dims_of(m.dimensions),
                    q.metric_stat.stat, start, end,
                )  # fmt: skip
        for q in alarm.metric_data_queries:
            if q.expression and str(q.return_data).lower() != "false":
                return _expression(q.expression, values)
        returned = [q for q in alarm.metric_data_queries if q.metric_stat is not None]
        return values.get(returned[0].id) if returned else None
    stat = alarm.extended_statistic or alarm.statistic
    return _series_value(
        points, alarm.namespace, alarm.metric_name, _dims_of(alarm.dimensions), stat, start, end
    )


def _breaches(alarm: Any, value: float) -> bool:
    threshold = float(alarm.threshold)
    return {
        "GreaterThanThreshold": value > threshold,
        "GreaterThanOrEqualToThreshold": value >= threshold,
        "LessThanThreshold": value < threshold,
        "LessThanOrEqualToThreshold": value <= threshold,
    }.get(alarm.comparison_operator, False)


def evaluate(backend: Any, alarm: Any, at: float) -> str:
    """CloudWatch's evaluation of one metric alarm at instant ``at``: the last
    ``EvaluationPeriods`` whole periods before it; ALARM when ``DatapointsToAlarm`` (default: all)
    of them breach. Missing periods follow ``TreatMissingData`` (``notBreaching``, ``breaching``;
    ``ignore`` keeps the state; ``missing`` with every period missing: INSUFFICIENT_DATA). A
    state set with ``SetAlarmState`` lasts until an evaluation that says otherwise: as in
    CloudWatch, it then goes back to what the data says."""
    period = float(alarm.period or 0) or max(
        (float(q.metric_stat.period) for q in alarm.metric_data_queries if q.metric_stat),
        default=60,
    )
    periods = int(alarm.evaluation_periods or 1)
    needed = int(alarm.datapoints_to_alarm or periods)
    end = (at // period) * period
    breaching = present = 0
    missing = alarm.treat_missing_data or "missing"
    for k in range(periods):
        start = end - (k + 1) * period
        value = alarm_value(backend, alarm, start, start + period)
        if value is None:
            if missing == "breaching":
                breaching += 1
                present += 1
            elif missing == "notBreaching":
                present += 1
            continue
        present += 1
        breaching += _breaches(alarm, value)
    if breaching >= needed:
        state = "ALARM"
    elif present:
        state = "OK"
    elif missing == "ignore":
        state = alarm.state_value
    else:
        state = "INSUFFICIENT_DATA"
    if state != alarm.state_value:
        alarm.update_state(f"emulator: {breaching} of {periods} periods breaching", "{}", state)
    return str(alarm.state_value)


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
