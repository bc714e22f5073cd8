"""``provider: toy`` — a third-party provider for the toy platform (``toy_server.py``), written only
against mlrollout's documented contract (``mlrollout.contracts``), its provider toolkit
(``mlrollout.adapters``) and errors: what docs/plugins.md asks of a plugin."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from mlrollout.adapters import check_finalize, check_weights, whole_percents
from mlrollout.contracts import (
    OWNER_KEYS,
    Capabilities,
    EndpointState,
    MetricsQuery,
    OwnerMark,
    PlanProblem,
    ProviderContext,
    VariantState,
    Window,
)
from mlrollout.errors import ProviderError


class ToyEndpoint:
    capabilities = Capabilities(weights=True)

    def __init__(self, url: str, name: str) -> None:
        self.base = f"{url.rstrip('/')}/endpoints/{name}"
        self.name = name

    def _call(self, method: str, path: str = "", body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except OSError as exc:
            raise ProviderError(
                f"toy platform {method} {self.base + path} failed: {exc}",
                hint="is the toy platform running? (target.endpoint_url)",
            ) from exc

    def _ok(self, method: str, path: str = "", body: Any = None, also: tuple[int, ...] = ()) -> Any:
        status, answer = self._call(method, path, body)
        if status >= 300 and status not in also:
            raise ProviderError(f"toy platform {method} {path or '/'}: {status} {answer}")
        return answer

    def _raw(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._ok("GET")
        return answer

    def describe(self) -> EndpointState:
        variants = self._raw()["variants"]
        return EndpointState(
            name=self.name,
            status="ready",
            variants=tuple(
                VariantState(name=n, weight=float(v["weight"]), model=v.get("model"))
                for n, v in variants.items()
            ),
        )

    def prepare(self, candidate: Any, baseline: str) -> EndpointState:
        self._ok("POST", "/variants", {"name": candidate.name, "model": candidate.model})
        return self.describe()

    def set_traffic(self, weights: Mapping[str, float]) -> EndpointState:
        live = self.describe()
        check_weights(weights, live.weights(), where=f"toy endpoint {self.name!r}")
        full = {**{n: 0.0 for n in live.weights()}, **weights}
        self._ok("PUT", "/traffic", {"weights": whole_percents(full)})
        return self.describe()

    def set_shadow(self, variant: str | None, percent: float) -> EndpointState:
        raise ProviderError("the toy platform cannot mirror traffic")

    def finalize(self, keep: str, retire: str) -> EndpointState:
        live = self.describe()
        if check_finalize(keep, retire, live.weights(), where=f"toy endpoint {self.name!r}"):
            self._ok("DELETE", f"/variants/{retire}", also=(404,))
        return self.describe()

    def wait_until_stable(self, timeout: float) -> EndpointState:
        return self.describe()

    def read_owner(self) -> OwnerMark | None:
        return OwnerMark.from_tags(self._raw()["tags"])

    def write_owner(self, mark: OwnerMark | None) -> None:
        tags = {k: v for k, v in self._raw()["tags"].items() if k not in OWNER_KEYS}
        if mark is not None:
            tags.update(mark.to_tags())
        self._ok("PUT", "/tags", {"tags": tags})


class ToyMetrics:
    def __init__(self, endpoint: ToyEndpoint) -> None:
        self.endpoint = endpoint

    def query(self, query: MetricsQuery) -> dict[str, Window]:
        served = self.endpoint._ok("GET", "/metrics")
        return {
            v: Window(requests=served[v]["requests"], errors=served[v]["errors"])
            if v in served
            else Window()
            for v in query.variants
        }


class ToyProvider:
    name = "toy"
    target_keys: frozenset[str] = frozenset()
    required_keys: frozenset[str] = frozenset()
    capabilities = ToyEndpoint.capabilities
    strategies = frozenset({"canary", "linear"})
    install_hint = "pip install mlrollout-toy"

    def check_plan(self, plan: Any) -> list[PlanProblem]:
        if not plan.target.endpoint_url:
            return [PlanProblem(("target", "endpoint_url"), "the toy platform's URL is needed")]
        return []

    def describe_calls(self, plan: Any) -> dict[str, list[str]]:
        return {"set_traffic": ["PUT /endpoints/NAME/traffic"], "metrics": ["GET .../metrics"]}

    def open(self, context: ProviderContext) -> tuple[ToyEndpoint, ToyMetrics]:
        target = context.plan.target
        endpoint = ToyEndpoint(str(target.endpoint_url), target.endpoint)
        return endpoint, ToyMetrics(endpoint)


SPEC = ToyProvider()
