"""A tiny model-serving "toy platform" speaking JSON over HTTP on 127.0.0.1, so that the provider
test kit can be shown to work for a provider written by a third party (``mlrollout_toy.py``).

    GET    /endpoints/NAME                       {"variants": {V: {"weight", "model"}}, "tags"}
    POST   /endpoints/NAME/variants              {"name", "model"}: 201 (200 if it exists)
    PUT    /endpoints/NAME/traffic               {"weights": {V: percent}}: whole percents, sum 100
    DELETE /endpoints/NAME/variants/V            409 while V takes traffic, 404 if absent
    PUT    /endpoints/NAME/tags                  {"tags": {...}}: replaces them
    POST   /endpoints/NAME/invoke?variant=V&error=0|1    one request served (for metrics)
    GET    /endpoints/NAME/metrics               {V: {"requests", "errors"}} (no key: no data)
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class ToyPlatform:
    def __init__(self) -> None:
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) received
        self.lock = threading.Lock()
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _answer(self, status: int, body: Any = None) -> None:
                data = json.dumps(body if body is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with platform.lock:
                    platform.requests.append((method, url.path))
                    status, answer = platform.handle(method, url.path, parse_qs(url.query), body)
                self._answer(status, answer)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> ToyPlatform:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_endpoint(self, name: str, variant: str, model: str) -> None:
        self.endpoints[name] = {
            "variants": {variant: {"weight": 100, "model": model}},
            "tags": {},
            "served": {},
        }

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: dict[str, Any]
    ) -> tuple[int, Any]:
        match = re.fullmatch(r"/endpoints/([^/]+)(/.*)?", path)
        if match is None or match[1] not in self.endpoints:
            return 404, {"error": "no such endpoint"}
        ep, rest = self.endpoints[match[1]], match[2] or ""
        variants: dict[str, dict[str, Any]] = ep["variants"]
        if method == "GET" and rest == "":
            return 200, {"variants": variants, "tags": ep["tags"]}
        if method == "POST" and rest == "/variants":
            if body["name"] in variants:
                return 200, {}
            variants[body["name"]] = {"weight": 0, "model": body.get("model")}
            return 201, {}
        if method == "PUT" and rest == "/traffic":
            weights = body["weights"]
            if set(weights) - set(variants) or sum(weights.values()) != 100:
                return 400, {"error": "weights must name deployed variants and sum to 100"}
            if any(not isinstance(w, int) or w < 0 for w in weights.values()):
                return 400, {"error": "weights are whole non-negative percents"}
            for name, variant in variants.items():
                variant["weight"] = weights.get(name, 0)
            return 200, {}
        deleting = re.fullmatch(r"/variants/([^/]+)", rest)
        if method == "DELETE" and deleting:
            variant = variants.get(deleting[1])
            if variant is None:
                return 404, {"error": "no such variant"}
            if variant["weight"] > 0:
                return 409, {"error": "the variant takes traffic"}
            del variants[deleting[1]]
            return 200, {}
        if method == "PUT" and rest == "/tags":
            ep["tags"] = dict(body["tags"])
            return 200, {}
        if method == "POST" and rest == "/invoke":
            served = ep["served"].setdefault(query["variant"][0], [0, 0])
            served[0] += 1
            served[1] += int(query.get("error", ["0"])[0])
            return 200, {}
        if method == "GET" and rest == "/metrics":
            return 200, {v: {"requests": r, "errors": e} for v, (r, e) in ep["served"].items()}
        return 405, {"error": f"{method} {rest} is not supported"}
