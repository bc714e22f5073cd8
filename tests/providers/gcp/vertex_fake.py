"""A project-owned Vertex AI fake that speaks the REST wire ``aiplatform_v1`` speaks.

A small HTTP server on 127.0.0.1 (port 0) in a thread, keeping state:

- ``GET /v1/projects/P/locations/L/endpoints/ID`` and ``GET .../endpoints?filter=display_name="x"``
  (paginated, ``page_size`` per page at most);
- ``POST .../endpoints/ID:deployModel`` and ``:undeployModel`` start long-running operations that
  finish ``op_seconds`` later on the injected clock (or fail, see ``fail_operations``); the change
  is applied when the operation finishes, and operations are polled at ``GET /ui/{operation}``;
  a done operation carries a typed ``response`` (``@type``);
- ``PATCH .../endpoints/ID?updateMask=...`` applies the masked fields at once, and only those
  (``traffic_split`` and/or ``labels``; any other field in the body is ignored, as a field mask
  says): a PATCH with ``updateMask=labels`` never changes the split;
- ``GET .../models/M`` answers for the models :meth:`add_model` made.

Validation as Vertex does it: a split is whole percents summing to 100 over deployed models; the
model to undeploy takes no traffic after the undeploy; a deployment names a machine type and a
``maxReplicaCount`` (default: the minimum) no lower than its ``minReplicaCount``, and the deployed
model keeps both in its ``dedicatedResources``; labels as GCP allows them (at most 64; keys
1-63 characters starting with a lowercase letter, values at most 63, both of lowercase letters,
digits, ``_`` and ``-``: ASCII only, stricter than GCP's international lowercase). Errors are
``{"error": {code, message, status}}`` with the HTTP code. Faults: ``fault_rate`` answers that
share of requests with 429 or 503 *before* doing anything (seeded); ``deny`` answers 403 for the
named calls. Every request is recorded in ``calls`` (call name, HTTP status) and every applied
change to what is deployed or served in ``applied`` (label changes go to ``label_writes``: they
serve nothing); the weight history per endpoint (by display name, on the injected clock) feeds the
Cloud Monitoring fake.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mlrollout.clock import Clock

TYPE = "type.googleapis.com/google.cloud.aiplatform.v1."
_ENDPOINT = re.compile(
    r"^/v1/(?P<ep>projects/(?P<p>[^/]+)/locations/(?P<l>[^/]+)/endpoints/(?P<id>[^/:]+))"
    r"(?::(?P<verb>\w+))?$"
)
_ENDPOINTS = re.compile(r"^/v1/projects/(?P<p>[^/]+)/locations/(?P<l>[^/]+)/endpoints$")
_MODEL = re.compile(r"^/v1/(?P<name>projects/[^/]+/locations/[^/]+/models/[^/]+)$")
_OPERATION = re.compile(r"^/ui/(?P<name>projects/.+/operations/[^/]+)$")
_OPERATIONS = re.compile(
    r"^/(?:ui|v1)/(?P<name>projects/[^/]+/locations/[^/]+/endpoints/[^/]+)/operations$"
)
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
MAX_LABELS = 64
#: Update mask paths the fake applies (either spelling: the REST transport sends camelCase).
_MASK = {"traffic_split": "traffic_split", "trafficSplit": "traffic_split", "labels": "labels"}
_STATUS = {
    400: "FAILED_PRECONDITION",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}


def _check_labels(labels: dict[str, Any]) -> None:
    if len(labels) > MAX_LABELS:
        raise ApiError(400, f"{len(labels)} labels: at most {MAX_LABELS}")
    for key, value in labels.items():
        if not _LABEL_KEY.match(str(key)):
            raise ApiError(400, f"label key {key!r} is not a valid label key")
        if not isinstance(value, str) or not _LABEL_VALUE.match(value):
            raise ApiError(400, f"label value {value!r} (of {key!r}) is not a valid label value")


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Operation:
    name: str
    kind: str  # DeployModel | UndeployModel
    done_at: float
    apply: Any  # () -> response dict
    fail: str | None = None
    done: bool = False
    response: dict[str, Any] | None = None


@dataclass
class Endpoint:
    name: str
    display_name: str
    deployed: list[dict[str, Any]] = field(default_factory=list)
    split: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    #: (at, {display name: percent}) after every change, on the injected clock.
    history: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "displayName": self.display_name,
            "deployedModels": [dict(d) for d in self.deployed],
            "trafficSplit": dict(self.split),
            "labels": dict(self.labels),
        }

    def weights(self) -> dict[str, float]:
        names = {d["id"]: d["displayName"] for d in self.deployed}
        return {names[i]: float(self.split.get(i, 0)) for i in names}


class VertexFake:
    def __init__(self, clock: Clock, *, project: str = "demo-proj", location: str = "us-central1"):
        self.clock = clock
        self.project = project
        self.location = location
        self.lock = threading.RLock()
        self.reset()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ------------------------------------------------------------------------------ control

    def reset(self, clock: Clock | None = None) -> None:
        with getattr(self, "lock", threading.RLock()):
            if clock is not None:
                self.clock = clock
            self.endpoints: dict[str, Endpoint] = {}
            self.models: set[str] = set()
            self.operations: dict[str, Operation] = {}
            self.ids = itertools.count(1001)
            self.ops = itertools.count(1)
            self.calls: list[tuple[str, int]] = []
            self.bodies: list[tuple[str, dict[str, Any], dict[str, list[str]]]] = []
            self.applied: list[tuple[str, dict[str, Any]]] = []
            #: (at, endpoint id, labels) after every change of an endpoint's labels.
            self.label_writes: list[tuple[float, str, dict[str, str]]] = []
            self.names: dict[str, str] = {}  # deployed model id -> display name, ever
            self.op_seconds = 0.0
            self.fail_operations: set[str] = set()
            self.fault_rate = 0.0
            self.fault_rng = random.Random(11)
            self.deny: set[str] = set()
            #: Calls whose next success is answered 503 after the change was made (lost response).
            self.lose: set[str] = set()
            self.page_size = 50

    def start(self) -> VertexFake:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def add_model(self, model_id: str) -> str:
        name = f"{self.parent}/models/{model_id}"
        self.models.add(name)
        return name

    def add_endpoint(
        self,
        endpoint_id: str,
        display_name: str,
        deployed: dict[str, str] | None = None,
        *,
        replicas: int = 1,
        machine: str = "n1-standard-4",
    ) -> Endpoint:
        """An endpoint with ``deployed`` ({display name: model id}), each on ``replicas`` machines
        of type ``machine``; the first takes 100 %."""
        with self.lock:
            ep = Endpoint(f"{self.parent}/endpoints/{endpoint_id}", display_name)
            for i, (name, model) in enumerate((deployed or {}).items()):
                model_name = self.add_model(model)
                dm_id = str(next(self.ids))
                ep.deployed.append(self._deployed(dm_id, name, model_name, machine, replicas))
                self.names[dm_id] = name
                if i == 0:
                    ep.split[dm_id] = 100
            ep.history.append((self.clock.now(), ep.weights()))
            self.endpoints[endpoint_id] = ep
            return ep

    def endpoint(self, endpoint_id: str) -> Endpoint:
        with self.lock:
            self._settle()
            return self.endpoints[endpoint_id]

    def count(self, call: str, status: int | None = 200) -> int:
        return sum(1 for c, s in self.calls if c == call and (status is None or s == status))

    def counts(self) -> Counter[str]:
        return Counter(c for c, s in self.calls if s == 200)

    # --------------------------------------------------------------------------------- state

    @staticmethod
    def _deployed(
        dm_id: str, name: str, model: str, machine: str, replicas: int, most: int | None = None
    ) -> dict[str, Any]:
        return {
            "id": dm_id,
            "displayName": name,
            "model": model,
            "dedicatedResources": {
                "machineSpec": {"machineType": machine},
                "minReplicaCount": replicas,
                "maxReplicaCount": replicas if most is None else most,
            },
        }

    def _settle(self) -> None:
        """Finish every operation whose time has come (in the order they were started)."""
        now = self.clock.now()
        for op in self.operations.values():
            if not op.done and op.done_at <= now:
                op.done = True
                if op.fail is None:
                    op.response = op.apply(op.done_at)

    def _record(self, ep: Endpoint, at: float, what: str, data: dict[str, Any]) -> None:
        ep.history.append((at, ep.weights()))
        self.applied.append((what, data))

    def _check_split(self, ep: Endpoint, split: dict[str, Any], new_id: str | None) -> None:
        known = {d["id"] for d in ep.deployed} | ({new_id} if new_id else set())
        for key, value in split.items():
            if key not in known:
                raise ApiError(400, f"traffic split names {key}, which is not deployed")
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ApiError(400, f"traffic split percent for {key} is not a whole number")
        if split and sum(split.values()) != 100:
            raise ApiError(400, f"traffic split sums to {sum(split.values())}, not 100")

    def _operation(self, ep: Endpoint, kind: str, apply: Any) -> dict[str, Any]:
        name = f"{ep.name}/operations/{next(self.ops)}"
        failing = kind in self.fail_operations
        fail = "the deployment failed: replicas did not start" if failing else None
        op = Operation(name, kind, self.clock.now() + self.op_seconds, apply, fail)
        self.operations[name] = op
        self._settle()
        return self._op_json(op)

    def _op_json(self, op: Operation) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": op.name,
            "metadata": {
                "@type": TYPE + f"{op.kind}OperationMetadata",
                "genericMetadata": {},
            },
            "done": op.done,
        }
        if op.done:
            if op.fail is not None:
                data["error"] = {"code": 9, "message": op.fail}
            else:
                data["response"] = {"@type": TYPE + f"{op.kind}Response", **(op.response or {})}
        return data

    def deploy(self, ep: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        dm = body.get("deployedModel") or {}
        model = dm.get("model", "")
        if model not in self.models:
            raise ApiError(404, f"Model {model} not found")
        split = {str(k): v for k, v in (body.get("trafficSplit") or {}).items()}
        self._check_split(ep, split, "0")
        resources = dm.get("dedicatedResources") or {}
        machine = (resources.get("machineSpec") or {}).get("machineType", "")
        if not machine:
            raise ApiError(400, "dedicatedResources.machineSpec.machineType is required")
        replicas = int(resources.get("minReplicaCount") or 1)
        most = int(resources.get("maxReplicaCount") or replicas)
        if most < replicas:
            raise ApiError(400, f"maxReplicaCount {most} is less than minReplicaCount {replicas}")

        def apply(at: float) -> dict[str, Any]:
            dm_id = str(next(self.ids))
            name = dm.get("displayName", "")
            record = self._deployed(dm_id, name, model, machine, replicas, most)
            ep.deployed.append(record)
            self.names[dm_id] = record["displayName"]
            if split:
                ep.split = {dm_id if k == "0" else k: v for k, v in split.items() if v > 0}
            self._record(ep, at, "DeployModel", {"id": dm_id, "split": dict(ep.split)})
            return {"deployedModel": {"id": dm_id, "model": model}}

        return self._operation(ep, "DeployModel", apply)

    def undeploy(self, ep: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        dm_id = str(body.get("deployedModelId", ""))
        if dm_id not in {d["id"] for d in ep.deployed}:
            raise ApiError(404, f"DeployedModel {dm_id} not found on {ep.name}")
        split = {str(k): v for k, v in (body.get("trafficSplit") or {}).items()}
        if split:
            self._check_split(ep, split, None)
            if split.get(dm_id, 0) > 0:
                raise ApiError(400, f"DeployedModel {dm_id} would still take traffic")
        elif ep.split.get(dm_id, 0) > 0:
            raise ApiError(400, f"DeployedModel {dm_id} takes traffic: give a new trafficSplit")

        def apply(at: float) -> dict[str, Any]:
            ep.deployed = [d for d in ep.deployed if d["id"] != dm_id]
            if split:
                ep.split = {k: v for k, v in split.items() if v > 0}
            ep.split.pop(dm_id, None)
            self._record(ep, at, "UndeployModel", {"id": dm_id, "split": dict(ep.split)})
            return {}

        return self._operation(ep, "UndeployModel", apply)

    def update(self, ep: Endpoint, body: dict[str, Any], mask: str) -> dict[str, Any]:
        given = [p.strip() for p in mask.split(",") if p.strip()]
        unknown = sorted(p for p in given if p not in _MASK)
        if not given or unknown:
            raise ApiError(
                400, f"the fake updates traffic_split and labels only, not {unknown or given}"
            )
        paths = {_MASK[p] for p in given}
        split = {str(k): v for k, v in (body.get("trafficSplit") or {}).items()}
        labels = dict(body.get("labels") or {})
        if "traffic_split" in paths:
            self._check_split(ep, split, None)
            if not split:
                raise ApiError(400, "an empty traffic split")
        if "labels" in paths:
            _check_labels(labels)
        # Validated: now apply what the mask names, and nothing else.
        if "traffic_split" in paths:
            ep.split = {k: v for k, v in split.items() if v > 0}
            self._record(ep, self.clock.now(), "UpdateEndpoint", {"split": dict(ep.split)})
        if "labels" in paths and labels != ep.labels:
            ep.labels = labels
            endpoint_id = ep.name.rsplit("/", 1)[-1]
            self.label_writes.append((self.clock.now(), endpoint_id, dict(labels)))
        return ep.json()

    # ------------------------------------------------------------------------------- serving

    def route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Any:
        """(call name, handler) for a request; raises ApiError(404) for unknown routes."""
        m = _OPERATION.match(path)
        if m and method == "GET":
            return "GetOperation", lambda: self._get_operation(m["name"])
        m = _OPERATIONS.match(path)
        if m and method == "GET":
            return "ListOperations", lambda: self._list_operations(m["name"])
        m = _MODEL.match(path)
        if m and method == "GET":
            return "GetModel", lambda: self._get_model(m["name"])
        m = _ENDPOINTS.match(path)
        if m and method == "GET":
            return "ListEndpoints", lambda: self._list(query)
        m = _ENDPOINT.match(path)
        if m:
            verb = m["verb"]
            if method == "GET" and verb is None:
                return "GetEndpoint", lambda: self._ep(m["id"], m["ep"]).json()
            if method == "PATCH" and verb is None:
                mask = (query.get("updateMask") or query.get("update_mask") or [""])[0]
                return "UpdateEndpoint", lambda: self.update(self._ep(m["id"], m["ep"]), body, mask)
            if method == "POST" and verb == "deployModel":
                return "DeployModel", lambda: self.deploy(self._ep(m["id"], m["ep"]), body)
            if method == "POST" and verb == "undeployModel":
                return "UndeployModel", lambda: self.undeploy(self._ep(m["id"], m["ep"]), body)
        return f"{method} {path}", lambda: (_ for _ in ()).throw(ApiError(404, "no such route"))

    def _ep(self, endpoint_id: str, name: str) -> Endpoint:
        ep = self.endpoints.get(endpoint_id)
        if ep is None or ep.name != name:
            raise ApiError(404, f"Endpoint {name} not found")
        return ep

    def _get_model(self, name: str) -> dict[str, Any]:
        if name not in self.models:
            raise ApiError(404, f"Model {name} not found")
        return {"name": name, "displayName": name.rsplit("/", 1)[-1]}

    def _get_operation(self, name: str) -> dict[str, Any]:
        op = self.operations.get(name)
        if op is None:
            raise ApiError(404, f"Operation {name} not found")
        return self._op_json(op)

    def _list_operations(self, endpoint: str) -> dict[str, Any]:
        return {
            "operations": [
                self._op_json(op)
                for name, op in self.operations.items()
                if name.startswith(endpoint + "/operations/")
            ]
        }

    def _list(self, query: dict[str, list[str]]) -> dict[str, Any]:
        flt = (query.get("filter") or [""])[0]
        m = re.fullmatch(r'\s*display_name\s*=\s*"(?P<v>(?:[^"\\]|\\.)*)"\s*', flt)
        wanted = m["v"].replace('\\"', '"').replace("\\\\", "\\") if m else None
        every = list(self.endpoints.values())
        start = int((query.get("pageToken") or query.get("page_token") or ["0"])[0] or 0)
        # The filter applies within a page, so a page may hold fewer matches (even none).
        page = [
            ep.json()
            for ep in every[start : start + self.page_size]
            if wanted is None or ep.display_name == wanted
        ]
        out: dict[str, Any] = {"endpoints": page}
        if start + self.page_size < len(every):
            out["nextPageToken"] = str(start + self.page_size)
        return out

    def handle(self, method: str, raw_path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(raw_path)
        query = parse_qs(parts.query)
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            payload = {}
        with self.lock:
            call, handler = self.route(method, parts.path, query, payload)
            try:
                if self.fault_rate and self.fault_rng.random() < self.fault_rate:
                    raise ApiError(self.fault_rng.choice((429, 503)), "injected fault")
                if call in self.deny:
                    raise ApiError(403, f"Permission denied on {call} (injected)")
                self._settle()
                result = handler()
                status = 200
                if call in self.lose:
                    self.lose.discard(call)
                    raise ApiError(503, "the connection was reset (injected, after the change)")
            except ApiError as exc:
                status = exc.code
                result = {
                    "error": {
                        "code": exc.code,
                        "message": exc.message,
                        "status": _STATUS.get(exc.code, "UNKNOWN"),
                    }
                }
            self.calls.append((call, status))
            self.bodies.append((call, payload, query))
            return status, result

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body go out in two writes: without this, Nagle's algorithm and the
                # client's delayed ACK add 40 ms to every response.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, result = fake.handle(self.command, self.path, body)
                data = json.dumps(result).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
