"""A project-owned fake of the Azure Resource Manager wire that ``azure-ai-ml`` and
``azure-monitor-querymetrics`` speak, served over HTTPS on 127.0.0.1 (Azure's clients refuse bearer
tokens over plain HTTP). The certificate (a throwaway CA and a leaf for 127.0.0.1/localhost) is made
with ``cryptography`` when the fake starts; clients trust it through ``REQUESTS_CA_BUNDLE``.

What it keeps (per subscription/resource group/workspace): the workspace, its models, its managed
online endpoints (``traffic``, ``mirrorTraffic``, ``tags``) and their deployments. Writes answer
the way ARM does: ``201``/``202`` with an ``Azure-AsyncOperation`` header; the operation reports
``InProgress`` until the fake's (virtual) clock passes its ``done_at``, then ``Succeeded`` or
``Failed`` and the change takes effect. Rules checked like the service: traffic is whole percents
summing to 100 on existing deployments, mirror traffic goes to one deployment at most 50 % and not
to one serving live traffic, a deployment that takes traffic cannot be deleted. A PUT of an
endpoint replaces it whole, as ARM's PUT does: a PUT that leaves out the traffic (or the tags) sets
none, and shows in ``applied`` as a traffic change. A PATCH of an endpoint
(``OnlineEndpoints_Update``) takes only ``tags`` and ``identity`` — anything else is refused — and
replaces the tags; tag changes are recorded in ``tag_writes``, not ``applied`` (they serve
nothing).

Faults: a seeded share of requests answered 429/503 before anything is applied, one-shot faults
on matching requests (``once``: answered instead of applied; ``lost``: applied, then answered 503
or with a dropped connection, the answer the client never gets), ``deny`` (401/403), slow or
failing provisioning per deployment (or endpoint) name. Everything is recorded: ``requests``
(method, path, status; :data:`DROPPED` for a connection closed without an answer) and ``applied``
(each change that took effect), so tests count calls per stage and check that nothing was applied
twice.

``POST /subscriptions/{s}/metrics:getBatch`` serves Azure Monitor metrics from a
:class:`~mlrollout.sandbox.traffic.TrafficModel` driven by the traffic history the fake recorded
on the same clock (one-minute points; only minutes completed by ``now`` are returned). A deployment
that ``mirrorTraffic`` names gets its copy of that share of the endpoint's requests (answered with
its own profile, the answers dropped), published under its own ``deployment`` dimension as Azure
Monitor does, so gates can judge a mirrored deployment; the live deployments' points are the same
with or without the mirror.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import random
import re
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mlrollout.plan.model import Sandbox
from mlrollout.sandbox.traffic import TrafficModel

MINUTE = 60.0
WS_PATH = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"Microsoft\.MachineLearningServices/workspaces/(?P<ws>[^/]+)(?P<rest>/.*)?$",
    re.IGNORECASE,
)
OP_PATH = re.compile(r"^/fake/operations/(?P<id>[0-9a-f-]+)$")
BATCH_PATH = re.compile(r"^/subscriptions/(?P<sub>[^/]+)/metrics:getBatch$", re.IGNORECASE)
LATENCY_METRICS = {
    "RequestLatency_P50": 0.5,
    "RequestLatency_P90": 0.9,
    "RequestLatency_P95": 0.95,
    "RequestLatency_P99": 0.99,
}
DIMENSIONS = {
    "RequestsPerMinute": {"deployment", "statuscodeclass", "statuscode", "modelstatuscode"},
    **{name: {"deployment"} for name in LATENCY_METRICS},
}
#: The status recorded for a request whose connection was closed without an answer (``lost``).
DROPPED = 444


# --------------------------------------------------------------------------------- certificate


def make_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a leaf for 127.0.0.1 / localhost signed by it: (ca.pem, leaf.pem, leaf.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlrollout test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path, leaf_path, key_path = (directory / n for n in ("ca.pem", "leaf.pem", "leaf.key"))
    ca_path.write_bytes(ca.public_bytes(pem))
    leaf_path.write_bytes(leaf.public_bytes(pem))
    key_path.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca_path, leaf_path, key_path


# ---------------------------------------------------------------------------------- the state


@dataclass
class Operation:
    id: str
    done_at: float
    finish: Any  # () -> None, applies the change
    fail: str | None = None  # error message when the operation ends Failed
    status: str = "InProgress"


@dataclass
class Faults:
    rate: float = 0.0  # share of requests answered 429/503 (seeded)
    seed: int = 1
    deny: int | None = None  # 401 or 403 on every ARM request
    deny_writes: int | None = None  # ... on writes only
    once: list[tuple[str, str, int]] = field(default_factory=list)  # (METHOD, path regex, status)
    #: (METHOD, path regex, status or DROPPED): the first matching request that succeeds is
    #: applied, then answered ``status`` (or its connection closed): its answer is lost.
    lost: list[tuple[str, str, int]] = field(default_factory=list)
    slow: dict[str, float] = field(default_factory=dict)  # deployment/endpoint -> seconds to apply
    fail_provisioning: dict[str, str] = field(default_factory=dict)  # deployment -> message
    rng: random.Random = field(default_factory=random.Random)


class Workspace:
    def __init__(self, sub: str, rg: str, name: str, location: str) -> None:
        self.sub, self.rg, self.name, self.location = sub, rg, name, location
        self.models: set[tuple[str, str]] = set()
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.deployments: dict[str, dict[str, dict[str, Any]]] = {}
        #: (name, version) -> properties of the data assets registered
        self.data: dict[tuple[str, str], dict[str, Any]] = {}
        #: name -> {accountName, containerName, endpoint, isDefault}: the workspace's blob store
        self.datastores: dict[str, dict[str, Any]] = {
            "workspaceblobstore": {
                "accountName": "mlwsstorage",
                "containerName": "azureml-blobstore-00000000-0000-0000-0000-000000000001",
                "endpoint": "core.windows.net",
                "isDefault": True,
            }
        }

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.sub}/resourceGroups/{self.rg}/providers/"
            f"Microsoft.MachineLearningServices/workspaces/{self.name}"
        )


class ArmFake:
    """The fake ARM (and Azure Monitor batch metrics) on one virtual clock."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        self.workspaces: dict[tuple[str, str, str], Workspace] = {}
        self.operations: dict[str, Operation] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.applied: list[tuple[Any, ...]] = []
        self.faults = Faults()
        #: (at, {deployment: percent}) per endpoint, as the change took effect.
        self.history: dict[str, list[tuple[float, dict[str, float]]]] = {}
        #: (at, {deployment: percent mirrored}) per endpoint, as the change took effect.
        self.mirror_history: dict[str, list[tuple[float, dict[str, float]]]] = {}
        self.traffic_models: dict[str, TrafficModel] = {}
        #: custom metric name -> window -> (total, count) per deployment and minute
        self.custom_metrics: dict[str, Any] = {}
        #: the query strings of every metrics:getBatch call
        self.metric_queries: list[dict[str, list[str]]] = []
        #: (at, endpoint, tags) after every change of an endpoint's tags.
        self.tag_writes: list[tuple[float, str, dict[str, str]]] = []
        #: called (under the lock) before every request is answered: the data collector's writer
        #: catches up with the clock there (see ``collector_fake.py``)
        self.hooks: list[Any] = []
        self._server: ThreadingHTTPServer | None = None
        self.url = ""
        self.ca_file = ""
        self._dir = tempfile.TemporaryDirectory(prefix="arm-fake-")

    # ------------------------------------------------------------------------------- server

    def start(self) -> ArmFake:
        ca, leaf, key = make_certificate(Path(self._dir.name))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(leaf, key)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, payload = fake.handle(
                    self.command, self.path, dict(self.headers), body
                )
                if status == DROPPED:
                    self.close_connection = True  # the change is made; no answer goes out
                    return
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server
        self.url = f"https://127.0.0.1:{server.server_address[1]}"
        self.ca_file = str(ca)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._dir.cleanup()

    # ---------------------------------------------------------------------------- test API

    def workspace(self, sub: str, rg: str, name: str, location: str = "westeurope") -> Workspace:
        ws = Workspace(sub, rg, name, location)
        self.workspaces[(sub.lower(), rg.lower(), name.lower())] = ws
        return ws

    def add_endpoint(
        self,
        ws: Workspace,
        name: str,
        deployments: dict[str, str],
        traffic: dict[str, int],
        *,
        instance_type: str = "Standard_DS3_v2",
        capacity: int = 1,
        origin: float | None = None,
        profiles: dict[str, dict[str, Any]] | None = None,
        rps: float = 20.0,
        seed: int = 7,
        data_collector: bool = False,
    ) -> None:
        """An endpoint with ``deployments`` (name -> "model:version") already Succeeded (with the
        data collector's ``model_outputs`` collection on, with ``data_collector``)."""
        ws.endpoints[name] = {
            "name": name,
            "traffic": dict(traffic),
            "mirrorTraffic": {},
            "provisioningState": "Succeeded",
            "authMode": "Key",
            "tags": {},
        }
        ws.deployments[name] = {}
        for dep, model in deployments.items():
            model_name, version = model.split(":")
            ws.models.add((model_name, version))
            ws.deployments[name][dep] = {
                "name": dep,
                "model": f"{ws.id}/models/{model_name}/versions/{version}",
                "instanceType": instance_type,
                "capacity": capacity,
                "provisioningState": "Succeeded",
                "environmentId": f"{ws.id}/environments/serve/versions/3",
                "codeConfiguration": {
                    "codeId": f"{ws.id}/codes/score-code/versions/1",
                    "scoringScript": "score.py",
                },
                # custom logging of the scoring script's outputs (collector_fake.py writes them)
                "dataCollector": {
                    "collections": {
                        "model_outputs": {"dataCollectionMode": "Enabled", "samplingRate": 1.0}
                    },
                    "rollingRate": "Hour",
                }
                if data_collector
                else None,
            }
        at = self.clock.now() if origin is None else origin
        self.history[name] = [(at, {k: float(v) for k, v in traffic.items()})]
        self.mirror_history[name] = []
        if profiles is not None:
            sandbox = Sandbox.model_validate({"seed": seed, "rps": rps, "variants": profiles})
            self.traffic_models[name] = TrafficModel(sandbox, at)

    def count(self, method: str | None = None, pattern: str = "") -> int:
        with self.lock:
            return sum(
                1
                for m, path, _ in self.requests
                if (method is None or m == method) and re.search(pattern, path)
            )

    def endpoint(self, ws: Workspace, name: str) -> dict[str, Any]:
        self.settle()
        return ws.endpoints[name]

    def settle(self) -> None:
        """Finish every operation whose time has come."""
        with self.lock:
            now = self.clock.now()
            for op in self.operations.values():
                if op.status == "InProgress" and now >= op.done_at:
                    op.status = "Failed" if op.fail else "Succeeded"
                    op.finish()

    # ------------------------------------------------------------------------------ handler

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(raw_path)
        path, query = parts.path, parse_qs(parts.query)
        with self.lock:
            self.settle()
            for hook in self.hooks:
                hook()
            status, out_headers, payload = self._fault(method, path, headers)
            if status == 0:
                try:
                    status, out_headers, payload = self._route(method, path, query, body)
                except _Reply as reply:
                    status, out_headers, payload = reply.status, {}, _error(*reply.args)
                if status < 400:
                    status, out_headers, payload = self._lose(
                        method, path, status, out_headers, payload
                    )
            self.requests.append((method, path, status))
        polling = method == "GET" and OP_PATH.match(path) and isinstance(payload, dict)
        if polling and payload.get("status") == "InProgress":
            time.sleep(0.002)  # a poller spinning at polling_interval=0 must not hog the CPU
        return status, out_headers, payload

    def _fault(
        self, method: str, path: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], Any]:
        auth = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        if not auth.startswith("Bearer "):
            return 401, {}, _error("AuthenticationFailed", "no bearer token")
        faults = self.faults
        deny = faults.deny or (faults.deny_writes if method != "GET" else None)
        if deny and not BATCH_PATH.match(path):
            code = "AuthenticationFailed" if deny == 401 else "AuthorizationFailed"
            return deny, {}, _error(code, f"The client does not have authorization ({method})")
        for i, (m, pattern, status) in enumerate(faults.once):
            if m == method and re.search(pattern, path):
                del faults.once[i]
                return status, {"Retry-After": "0"}, _error("Injected", f"injected {status}")
        if faults.rate and faults.rng.random() < faults.rate:
            status = faults.rng.choice((429, 503))
            return status, {"Retry-After": "0"}, _error("Injected", f"injected {status}")
        return 0, {}, None

    def _lose(
        self, method: str, path: str, status: int, headers: dict[str, str], payload: Any
    ) -> tuple[int, dict[str, str], Any]:
        """The answer to a request that was applied: itself, or lost as a ``lost`` fault says."""
        for i, (m, pattern, lost) in enumerate(self.faults.lost):
            if m == method and re.search(pattern, path):
                del self.faults.lost[i]
                if lost == DROPPED:
                    return DROPPED, {}, None
                return lost, {"Retry-After": "0"}, _error("Injected", f"injected {lost} (applied)")
        return status, headers, payload

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: bytes
    ) -> tuple[int, dict[str, str], Any]:
        match = OP_PATH.match(path)
        if match:
            op = self.operations.get(match["id"])
            if op is None:
                raise _Reply(404, "NotFound", "no such operation")
            payload: dict[str, Any] = {"id": op.id, "name": op.id, "status": op.status}
            if op.status == "Failed":
                payload["error"] = {"code": "DeploymentFailed", "message": op.fail}
            return 200, {}, payload
        match = BATCH_PATH.match(path)
        if match and method == "POST":
            return 200, {}, self._metrics(match["sub"], query, json.loads(body or b"{}"))
        match = WS_PATH.match(path)
        if not match:
            raise _Reply(404, "NotFound", f"no route for {method} {path}")
        ws = self.workspaces.get((match["sub"].lower(), match["rg"].lower(), match["ws"].lower()))
        if ws is None:
            raise _Reply(
                404, "ResourceNotFound", f"The Resource 'workspaces/{match['ws']}' was not found."
            )
        rest = (match["rest"] or "").rstrip("/")
        data = json.loads(body) if body else {}
        if rest == "":
            if method != "GET":
                raise _Reply(405, "MethodNotAllowed", "read only")
            return 200, {}, _workspace_json(ws)
        m = re.match(r"^/data/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", rest)
        if m:  # data assets: the SDK registers one per data collector collection
            key = (m["name"], m["version"])
            if method == "PUT":
                ws.data[key] = dict(data.get("properties") or {})
            elif key not in ws.data:
                raise _Reply(404, "UserError", f"Data {m['name']}:{m['version']} not found.")
            return 200, {}, _data_json(ws, *key, ws.data[key])
        m = re.match(r"^/datastores(?:/(?P<name>[^/]+))?$", rest)
        if m:
            if method != "GET":
                raise _Reply(405, "MethodNotAllowed", "read only")
            if m["name"] is None:
                wanted = query.get("isDefault", [""])[0].lower() == "true"
                stores = [(n, d) for n, d in ws.datastores.items() if d["isDefault"] or not wanted]
                return 200, {}, {"value": [_datastore_json(ws, n, d) for n, d in stores]}
            if m["name"] not in ws.datastores:
                raise _Reply(404, "UserError", f"Datastore {m['name']} not found.")
            return 200, {}, _datastore_json(ws, m["name"], ws.datastores[m["name"]])
        m = re.match(r"^/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$", rest)
        if m:
            if (m["name"], m["version"]) not in ws.models:
                raise _Reply(
                    404,
                    "UserError",
                    f"Model container with name: {m['name']} version: {m['version']} not found.",
                )
            return 200, {}, _model_json(ws, m["name"], m["version"])
        m = re.match(
            r"^/onlineEndpoints/(?P<ep>[^/]+)(?:/deployments(?:/(?P<dep>[^/]+))?)?(?P<tail>/.*)?$",
            rest,
            re.IGNORECASE,
        )
        if not m or m["tail"]:
            raise _Reply(404, "NotFound", f"no route for {method} {path}")
        ep_name = m["ep"]
        endpoint = ws.endpoints.get(ep_name)
        if endpoint is None:
            raise _Reply(404, "UserError", f"Endpoint {ep_name} not found.")
        if "/deployments" not in rest:
            if method == "GET":
                return 200, {}, _endpoint_json(ws, endpoint)
            if method == "PUT":
                return self._put_endpoint(ws, endpoint, data)
            if method == "PATCH":
                return self._patch_endpoint(ws, endpoint, data)
            raise _Reply(405, "MethodNotAllowed", method)
        deployments = ws.deployments[ep_name]
        dep_name = m["dep"]
        if dep_name is None:
            if method != "GET":
                raise _Reply(405, "MethodNotAllowed", method)
            return (
                200,
                {},
                {"value": [_deployment_json(ws, ep_name, d) for d in deployments.values()]},
            )
        if method == "GET":
            if dep_name not in deployments:
                raise _Reply(404, "UserError", f"Deployment {dep_name} not found.")
            return 200, {}, _deployment_json(ws, ep_name, deployments[dep_name])
        if method == "PUT":
            return self._put_deployment(ws, ep_name, dep_name, data)
        if method == "DELETE":
            return self._delete_deployment(ws, ep_name, dep_name)
        raise _Reply(405, "MethodNotAllowed", method)

    # ----------------------------------------------------------------------------- writes

    def _operation(self, done_in: float, finish: Any, fail: str | None = None) -> dict[str, str]:
        op = Operation(str(uuid.uuid4()), self.clock.now() + done_in, finish, fail)
        self.operations[op.id] = op
        url = f"{self.url}/fake/operations/{op.id}?api-version=2023-04-01-preview"
        return {"Azure-AsyncOperation": url}

    def _put_endpoint(
        self, ws: Workspace, endpoint: dict[str, Any], data: dict[str, Any]
    ) -> tuple[int, dict[str, str], Any]:
        props = data.get("properties") or {}
        deployments = ws.deployments[endpoint["name"]]
        traffic = {k: v for k, v in (props.get("traffic") or {}).items()}
        mirror = {k: v for k, v in (props.get("mirrorTraffic") or {}).items()}
        for name, value in {**traffic, **mirror}.items():
            if name not in deployments:
                raise _Reply(400, "BadArgument", f"Deployment {name} does not exist.")
            if not isinstance(value, int) or not 0 <= value <= 100:
                raise _Reply(400, "BadArgument", f"Traffic for {name} must be an integer 0-100.")
        if traffic and sum(traffic.values()) != 100:
            raise _Reply(400, "BadArgument", "Traffic values need to sum to 100.")
        if len([v for v in mirror.values() if v]) > 1 or any(v > 50 for v in mirror.values()):
            raise _Reply(400, "BadArgument", "Mirror traffic: one deployment, at most 50 %.")
        if any(v and traffic.get(k) for k, v in mirror.items()):
            raise _Reply(400, "BadArgument", "A deployment with live traffic cannot be mirrored.")
        name = endpoint["name"]
        tags = {str(k): str(v) for k, v in (data.get("tags") or {}).items()}
        endpoint["provisioningState"] = "Updating"

        def finish() -> None:
            self._set_tags(endpoint, tags)
            new_traffic = {k: v for k, v in traffic.items() if v}
            new_mirror = {k: v for k, v in mirror.items() if v}
            if new_traffic != {k: v for k, v in endpoint["traffic"].items() if v}:
                self.applied.append(("traffic", name, new_traffic))
                self.history[name].append(
                    (self.clock.now(), {k: float(v) for k, v in new_traffic.items()})
                )
            if new_mirror != {k: v for k, v in endpoint["mirrorTraffic"].items() if v}:
                self.applied.append(("mirror", name, new_mirror))
                self.mirror_history.setdefault(name, []).append(
                    (self.clock.now(), {k: float(v) for k, v in new_mirror.items()})
                )
            endpoint["traffic"], endpoint["mirrorTraffic"] = new_traffic, new_mirror
            endpoint["provisioningState"] = "Succeeded"

        headers = self._operation(self.faults.slow.get(name, 0.0), finish)
        return 201, headers, _endpoint_json(ws, endpoint)

    def _patch_endpoint(
        self, ws: Workspace, endpoint: dict[str, Any], data: dict[str, Any]
    ) -> tuple[int, dict[str, str], Any]:
        """ARM's OnlineEndpoints_Update: a PartialMinimalTrackedResourceWithIdentity (tags and
        identity, nothing else), applied as a long-running operation."""
        other = sorted(set(data) - {"tags", "identity"})
        if other:
            raise _Reply(
                400,
                "BadArgument",
                f"A PATCH of an online endpoint takes tags and identity only, not "
                f"{', '.join(other)}.",
            )
        tags = data.get("tags")
        if tags is not None and (
            not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values())
        ):
            raise _Reply(400, "BadArgument", "Tags are a map of strings.")
        endpoint["provisioningState"] = "Updating"

        def finish() -> None:
            if tags is not None:
                self._set_tags(endpoint, tags)
            endpoint["provisioningState"] = "Succeeded"

        headers = self._operation(self.faults.slow.get(endpoint["name"], 0.0), finish)
        headers["Location"] = headers["Azure-AsyncOperation"]
        return 202, headers, None

    def _set_tags(self, endpoint: dict[str, Any], tags: dict[str, str]) -> None:
        if tags != endpoint.get("tags", {}):
            endpoint["tags"] = dict(tags)
            self.tag_writes.append((self.clock.now(), endpoint["name"], dict(tags)))

    def _put_deployment(
        self, ws: Workspace, ep: str, name: str, data: dict[str, Any]
    ) -> tuple[int, dict[str, str], Any]:
        props = data.get("properties") or {}
        model = str(props.get("model") or "")
        m = re.search(r"/models/([^/]+)/versions/([^/]+)$", model)
        if not m or (m[1], m[2]) not in ws.models:
            raise _Reply(404, "UserError", f"Model {model or '(none)'} not found.")
        deployments = ws.deployments[ep]
        existing = deployments.get(name)
        record = {
            "name": name,
            "model": model,
            "instanceType": props.get("instanceType"),
            "capacity": (data.get("sku") or {}).get("capacity", 1),
            "provisioningState": "Updating" if existing else "Creating",
            "environmentId": props.get("environmentId"),
            "codeConfiguration": props.get("codeConfiguration"),
            "dataCollector": props.get("dataCollector"),
        }
        deployments[name] = record
        fail = self.faults.fail_provisioning.get(name)

        def finish() -> None:
            record["provisioningState"] = "Failed" if fail else "Succeeded"
            self.applied.append(("deployment.put", ep, name, record["provisioningState"]))

        headers = self._operation(self.faults.slow.get(name, 0.0), finish, fail)
        return 201, headers, _deployment_json(ws, ep, record)

    def _delete_deployment(
        self, ws: Workspace, ep: str, name: str
    ) -> tuple[int, dict[str, str], Any]:
        deployments = ws.deployments[ep]
        if name not in deployments:  # a DELETE sent again after the first one applied
            raise _Reply(404, "UserError", f"Deployment {name} not found.")
        endpoint = ws.endpoints[ep]
        if endpoint["traffic"].get(name) or endpoint["mirrorTraffic"].get(name):
            raise _Reply(400, "BadArgument", f"Deployment {name} takes traffic: cannot delete.")
        deployments[name]["provisioningState"] = "Deleting"

        def finish() -> None:
            if deployments.pop(name, None) is not None:
                self.applied.append(("deployment.delete", ep, name))

        headers = self._operation(0.0, finish)
        headers["Location"] = headers["Azure-AsyncOperation"]
        return 202, headers, None

    # ---------------------------------------------------------------------------- metrics

    def _metrics(
        self, sub: str, query: dict[str, list[str]], body: dict[str, Any]
    ) -> dict[str, Any]:
        self.metric_queries.append(query)
        names = [n for raw in query.get("metricnames", [""]) for n in raw.split(",") if n]
        start = _parse_time(query["starttime"][0])
        end = _parse_time(query["endtime"][0])
        filter_ = query.get("filter", [""])[0]
        dims = [d.lower() for d in re.findall(r"(\w+) eq '\*'", filter_)]
        for name in names:
            if name in self.custom_metrics:
                continue
            if name not in DIMENSIONS:
                raise _Reply(400, "BadRequest", f"Failed to find metric configuration for {name}")
            unsupported = [d for d in dims if d not in DIMENSIONS[name]]
            if unsupported:
                raise _Reply(
                    400,
                    "BadRequest",
                    f"Metric: {name} does not support requested "
                    f"dimension combination: {','.join(dims)}",
                )
        values = []
        for resource_id in body.get("resourceids", []):
            ep = resource_id.rstrip("/").split("/")[-1]
            values.append(
                {
                    "starttime": query["starttime"][0],
                    "endtime": query["endtime"][0],
                    "interval": "PT1M",
                    "resourceid": resource_id,
                    "namespace": query.get("metricnamespace", [""])[0],
                    "resourceregion": "westeurope",
                    "value": [self._series(ep, name, dims, start, end) for name in names],
                }
            )
        return {"values": values}

    def _series(
        self, ep: str, metric: str, dims: list[str], start: float, end: float
    ) -> dict[str, Any]:
        model = self.traffic_models.get(ep)
        history = self.history.get(ep, [])
        mirror = self.mirror_history.get(ep, [])
        timeseries: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        now = self.clock.now()
        t = MINUTE * -(-start // MINUTE)  # points stamped at whole minutes in [start, end)
        while model is not None and t < end and t + MINUTE <= now:
            for variant in model.sandbox.variants:
                # A mirrored deployment's copies are published as its own metrics.
                window = model.window(variant, t, t + MINUTE, history, mirror=mirror)
                if not window.requests:
                    continue  # no traffic, no point (as Azure Monitor)
                stamp = dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                if metric in self.custom_metrics:
                    total, count = self.custom_metrics[metric](window)
                    timeseries.setdefault((variant,), []).append(
                        {"timeStamp": stamp, "total": float(total), "count": float(count)}
                    )
                elif metric == "RequestsPerMinute":
                    errors = window.errors or 0
                    for cls, count in (("2xx", window.requests - errors), ("5xx", errors)):
                        key = (variant, cls) if "statuscodeclass" in dims else (variant,)
                        points = timeseries.setdefault(key, [])
                        if points and points[-1]["timeStamp"] == stamp:
                            points[-1]["total"] += count
                        else:
                            points.append({"timeStamp": stamp, "total": float(count)})
                else:
                    assert window.latency is not None
                    ms = window.latency.quantile(LATENCY_METRICS[metric]) * 1000.0
                    timeseries.setdefault((variant,), []).append(
                        {"timeStamp": stamp, "average": round(ms, 3)}
                    )
            t += MINUTE
        series = []
        for key, data in timeseries.items():
            meta = [
                {"name": {"value": "deployment", "localizedValue": "deployment"}, "value": key[0]}
            ]
            if len(key) > 1:
                meta.append(
                    {
                        "name": {"value": "statusCodeClass", "localizedValue": "statusCodeClass"},
                        "value": key[1],
                    }
                )
            series.append({"metadatavalues": meta, "data": data})
        unit = "Count" if metric == "RequestsPerMinute" else "Milliseconds"
        return {
            "id": f"{metric}",
            "type": "Microsoft.Insights/metrics",
            "name": {"value": metric, "localizedValue": metric},
            "displayDescription": "",
            "unit": unit,
            "timeseries": series,
            "errorCode": "Success",
        }


class _Reply(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.status = status


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _system_data() -> dict[str, Any]:
    return {
        "createdAt": "2024-01-01T00:00:00Z",
        "createdBy": "fake",
        "createdByType": "User",
        "lastModifiedAt": "2024-01-01T00:00:00Z",
        "lastModifiedBy": "fake",
        "lastModifiedByType": "User",
    }


def _workspace_json(ws: Workspace) -> dict[str, Any]:
    return {
        "id": ws.id,
        "name": ws.name,
        "type": "Microsoft.MachineLearningServices/workspaces",
        "location": ws.location,
        "identity": {"type": "SystemAssigned"},
        "kind": "Default",
        "properties": {
            "friendlyName": ws.name,
            "workspaceId": "00000000-0000-0000-0000-000000000001",
            "discoveryUrl": "",
            "mlFlowTrackingUri": "",
        },
        "systemData": _system_data(),
    }


def _data_json(ws: Workspace, name: str, version: str, props: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"{ws.id}/data/{name}/versions/{version}",
        "name": version,
        "type": "Microsoft.MachineLearningServices/workspaces/data/versions",
        "properties": {"dataType": "uri_folder", **props},
        "systemData": _system_data(),
    }


def _datastore_json(ws: Workspace, name: str, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"{ws.id}/datastores/{name}",
        "name": name,
        "type": "Microsoft.MachineLearningServices/workspaces/datastores",
        "properties": {
            "datastoreType": "AzureBlob",
            "accountName": record["accountName"],
            "containerName": record["containerName"],
            "endpoint": record["endpoint"],
            "protocol": "https",
            "credentials": {"credentialsType": "None"},
            "isDefault": record["isDefault"],
            "serviceDataAccessAuthIdentity": "WorkspaceSystemAssignedIdentity",
            "description": "",
            "properties": {},
            "tags": {},
        },
        "systemData": _system_data(),
    }


def _model_json(ws: Workspace, name: str, version: str) -> dict[str, Any]:
    return {
        "id": f"{ws.id}/models/{name}/versions/{version}",
        "name": version,
        "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
        "properties": {
            "modelType": "custom_model",
            "modelUri": "azureml://x",
            "properties": {},
            "flavors": {},
            "tags": {},
        },
        "systemData": _system_data(),
    }


def _endpoint_json(ws: Workspace, endpoint: dict[str, Any]) -> dict[str, Any]:
    name = endpoint["name"]
    return {
        "id": f"{ws.id}/onlineEndpoints/{name}",
        "name": name,
        "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints",
        "location": ws.location,
        "kind": "Managed",
        "identity": {"type": "SystemAssigned"},
        "tags": dict(endpoint.get("tags", {})),
        "properties": {
            "authMode": endpoint["authMode"],
            "scoringUri": f"https://{name}.{ws.location}.inference.ml.azure.com/score",
            "provisioningState": endpoint["provisioningState"],
            "traffic": dict(endpoint["traffic"]),
            "mirrorTraffic": dict(endpoint["mirrorTraffic"]),
            "publicNetworkAccess": "Enabled",
            "properties": {},
        },
        "systemData": _system_data(),
    }


def _deployment_json(ws: Workspace, ep: str, record: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {
        "endpointComputeType": "Managed",
        "model": record["model"],
        "instanceType": record["instanceType"],
        "provisioningState": record["provisioningState"],
        "scaleSettings": {"scaleType": "Default"},
        "properties": {},
    }
    if record.get("environmentId"):
        props["environmentId"] = record["environmentId"]
    if record.get("codeConfiguration"):
        props["codeConfiguration"] = record["codeConfiguration"]
    if record.get("dataCollector"):
        props["dataCollector"] = record["dataCollector"]
    return {
        "id": f"{ws.id}/onlineEndpoints/{ep}/deployments/{record['name']}",
        "name": record["name"],
        "type": "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments",
        "location": ws.location,
        "kind": "Managed",
        "sku": {"name": "Default", "tier": "Standard", "capacity": record["capacity"]},
        "properties": props,
        "systemData": _system_data(),
    }
