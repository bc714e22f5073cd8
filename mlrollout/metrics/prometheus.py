"""The live ``prometheus`` metrics source: PromQL instant queries over the HTTP API.

One ``GET /api/v1/query`` per query per look, evaluated at the look's end (``time=``): a
template with ``{variant}`` is sent once per variant, a template without it (one that groups
``by (variant)``) once for all variants and split by the variant label. ``{window}`` is the
look's window in whole seconds (``600s``). The standard library's ``urllib`` speaks HTTP, so the
core needs no HTTP client dependency; throttling (429), 5xx and refused connections are retried
by :class:`mlrollout.retry.RetryPolicy`.

What comes back, per variant (``None``: no data, never zero):

- ``requests`` / ``errors``: the sum of the samples, rounded to whole requests; an empty result,
  a NaN or infinite sample, or a negative value (a counter reset seen by a query that subtracts
  raw counter values) is no data;
- ``latency``: cumulative ``le`` buckets become a :class:`~mlrollout.contracts.LatencyHistogram`
  (counts between bounds, ``+Inf`` the overflow); a histogram without ``+Inf`` or with a
  non-finite bucket is no data;
- custom gates (``metric: custom``, ``query: {promql: ..., count_promql: ...}``): ``total`` from
  ``promql``, ``count`` from ``count_promql`` (1 without it: the value is read as it is).

A query that fails (HTTP 4xx/5xx, ``status: error``, a timeout, a refused connection, a TLS
failure) makes every variant's window ``Window(error=...)``: an error measurement naming the
query and what to fix, never a crash, never a secret.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlrollout.contracts import CustomValue, LatencyHistogram, MetricsQuery, Window
from mlrollout.errors import ProviderAuthError, ProviderError
from mlrollout.metrics.prometheus_spec import DEFAULT_TIMEOUT, parse_timeout
from mlrollout.retry import RetryPolicy

if TYPE_CHECKING:
    from mlrollout.plan.model import Gate

CONFIG_PATH = "analysis.source.prometheus"
LATENCY_GATES = frozenset({"latency_p50", "latency_p90", "latency_p99"})
#: Of an error response, at most this much of Prometheus's own message is shown.
MAX_DETAIL = 300

Labels = dict[str, str]
Sample = tuple[Labels, float]


class QueryFailed(Exception):
    """A query that gave no answer: the message is the error measurement (no secret in it)."""


class _Status(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"HTTP {code}")
        self.code = code
        self.detail = detail


class _Unreachable(Exception):
    pass


@dataclass(frozen=True)
class Template:
    """One PromQL template and where it is in the plan (for the messages)."""

    name: str  # 'requests', or "custom gate 'conversion'"
    promql: str
    where: str  # the plan key to fix

    @property
    def per_variant(self) -> bool:
        return "{variant}" in self.promql

    def render(self, window: str, variant: str | None = None) -> str:
        text = self.promql.replace("{window}", window)
        if variant is not None:
            text = text.replace("{variant}", _promql_string(variant))
        return text


def _promql_string(value: str) -> str:
    """``value`` escaped for the inside of a double-quoted PromQL string."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class PrometheusSource:
    """A :class:`~mlrollout.contracts.MetricsSource` reading a Prometheus server."""

    url: str
    queries: dict[str, str]
    authorization: str | None = None  # the header's value, never shown
    auth_hint: str = ""  # where the credentials come from, for a 401/403 message
    ssl_context: ssl.SSLContext | None = None
    timeout: float = DEFAULT_TIMEOUT
    variant_label: str = "variant"
    retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(attempts=3, base=0.25, cap=2.0, sleep=time.sleep)
    )
    #: HTTP requests sent (each attempt), for tests and ``--debug``.
    calls: int = 0

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> PrometheusSource:
        """The source of checked settings; credentials come from ``environ`` (the process
        environment by default). A variable that is not set is a
        :class:`~mlrollout.errors.ProviderAuthError` before any change (exit 6)."""
        env = os.environ if environ is None else environ
        authorization: str | None = None
        hint = ""

        def need(key: str) -> str:
            name = str(config[key])
            value = env.get(name)
            if not value:
                raise ProviderAuthError(
                    f"{CONFIG_PATH}.{key} names the environment variable {name}, which is not set",
                    hint=f"export {name}=... before running (its value is never recorded)",
                )
            return value

        if config.get("token_env"):
            authorization = f"Bearer {need('token_env')}"
            hint = f"check the bearer token in ${config['token_env']} (token_env)"
        elif config.get("username_env"):
            pair = f"{need('username_env')}:{need('password_env')}".encode()
            authorization = f"Basic {base64.b64encode(pair).decode('ascii')}"
            hint = (
                f"check the user and password in ${config['username_env']} and "
                f"${config['password_env']} (username_env, password_env)"
            )
        context: ssl.SSLContext | None = None
        url = str(config["url"]).rstrip("/")
        if url.startswith("https:"):
            ca_file = config.get("ca_file")
            if ca_file and not os.path.isfile(str(ca_file)):
                raise ProviderError(
                    f"{CONFIG_PATH}.ca_file: {ca_file} is not a file",
                    hint="give the path of a PEM file of CA certificates",
                )
            try:
                context = ssl.create_default_context()  # the system's trust store
                if ca_file:
                    context.load_verify_locations(cafile=str(ca_file))
            except (ssl.SSLError, OSError) as exc:
                raise ProviderError(
                    f"{CONFIG_PATH}.ca_file: cannot read {ca_file}: {exc}",
                    hint="give the path of a PEM file of CA certificates",
                ) from exc
        return cls(
            url=url,
            queries={k: str(v) for k, v in dict(config.get("queries") or {}).items()},
            authorization=authorization,
            auth_hint=hint,
            ssl_context=context,
            timeout=parse_timeout(config.get("timeout", DEFAULT_TIMEOUT)),
            variant_label=str(config.get("variant_label", "variant")),
        )

    # ------------------------------------------------------------------------------ a look

    def query(self, query: MetricsQuery) -> dict[str, Window]:
        window = f"{max(1, round(query.end - query.start))}s"
        variants = tuple(query.variants)
        try:
            plan = self._templates(query.gates)
            values = {key: self._run(t, variants, window, query.end) for key, t in plan.items()}
        except QueryFailed as exc:
            return {v: Window(error=str(exc)) for v in variants}
        out: dict[str, Window] = {}
        for variant in variants:
            win = Window()
            try:
                if "requests" in values:
                    win.requests = _count(values["requests"].get(variant))
                if "errors" in values:
                    win.errors = _count(values["errors"].get(variant))
                if "latency" in values:
                    win.latency = _histogram(values["latency"].get(variant), plan["latency"])
            except QueryFailed as exc:
                return {v: Window(error=str(exc)) for v in variants}
            for gate in query.gates:
                if gate.metric != "custom":
                    continue
                total = _number(values[f"custom:{gate.name}"].get(variant))
                count: float | None = 1.0
                if f"count:{gate.name}" in values:
                    count = _number(values[f"count:{gate.name}"].get(variant))
                if total is not None and count is not None:
                    win.custom[gate.name] = CustomValue(total, count)
            out[variant] = win
        return out

    def _templates(self, gates: tuple[Gate, ...]) -> dict[str, Template]:
        """The queries this look needs (``requests`` always; the others when a gate reads
        them), or :class:`QueryFailed` naming a query a gate needs that the plan lacks."""
        needs = {"requests"}
        for gate in gates:
            if gate.metric == "error_rate":
                needs.add("errors")
            elif gate.metric in LATENCY_GATES:
                needs.add("latency")
        plan: dict[str, Template] = {}
        for key in ("requests", "errors", "latency"):
            if key not in needs:
                continue
            if key not in self.queries:
                raise QueryFailed(
                    f"a gate needs the {key} query, which {CONFIG_PATH}.queries lacks: add "
                    f"queries.{key} (PromQL)"
                )
            plan[key] = Template(key, self.queries[key], f"{CONFIG_PATH}.queries.{key}")
        for i, gate in enumerate(gates):
            if gate.metric != "custom":
                continue
            spec = gate.query or {}
            where = f"analysis.gates[{i}].query"
            promql = spec.get("promql")
            if not isinstance(promql, str) or not promql.strip():
                raise QueryFailed(
                    f"custom gate {gate.name!r} read from Prometheus needs query: "
                    f"{{promql: PROMQL}} (optionally count_promql): fix {where}"
                )
            plan[f"custom:{gate.name}"] = Template(
                f"custom gate {gate.name!r}", promql, f"{where}.promql"
            )
            count = spec.get("count_promql")
            if count is not None:
                if not isinstance(count, str) or not count.strip():
                    raise QueryFailed(
                        f"custom gate {gate.name!r}: count_promql is a PromQL string: fix "
                        f"{where}.count_promql"
                    )
                plan[f"count:{gate.name}"] = Template(
                    f"custom gate {gate.name!r} (count)", count, f"{where}.count_promql"
                )
        return plan

    def _run(
        self, template: Template, variants: tuple[str, ...], window: str, at: float
    ) -> dict[str, list[Sample]]:
        """The samples of ``template`` by variant: one call per variant for a ``{variant}``
        template, one call for all of them otherwise (split by the variant label)."""
        if template.per_variant:
            return {v: self._instant(template, template.render(window, v), at) for v in variants}
        by: dict[str, list[Sample]] = {}
        for labels, value in self._instant(template, template.render(window), at):
            variant = labels.get(self.variant_label)
            if variant is None:
                raise QueryFailed(
                    f"the {template.name} query has no {{variant}} and its result has no "
                    f"{self.variant_label!r} label to split by: keep it with "
                    f"`sum by ({self.variant_label}) (...)` or select {self.variant_label}="
                    f'"{{variant}}" in {template.where}'
                )
            by.setdefault(variant, []).append((labels, value))
        return by

    # ----------------------------------------------------------------------------- the wire

    def _instant(self, template: Template, promql: str, at: float) -> list[Sample]:
        params = urllib.parse.urlencode(
            {"query": promql, "time": f"{at:.3f}", "timeout": f"{self.timeout:g}s"}
        )
        request = urllib.request.Request(
            f"{self.url}/api/v1/query?{params}",
            headers={"Accept": "application/json", "User-Agent": "mlrollout"},
        )
        if self.authorization:
            request.add_unredirected_header("Authorization", self.authorization)

        def send() -> Any:
            self.calls += 1
            try:
                with urllib.request.urlopen(
                    request, timeout=self.timeout, context=self.ssl_context
                ) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as exc:
                raise _Status(exc.code, _detail(exc)) from None
            except TimeoutError:
                raise
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, TimeoutError):
                    raise TimeoutError() from None
                if isinstance(exc.reason, ssl.SSLError):
                    raise
                raise _Unreachable(_reason(exc.reason)) from None
            except (ConnectionError, http.client.HTTPException) as exc:
                raise _Unreachable(_reason(exc)) from None

        def retryable(exc: BaseException) -> bool:
            return isinstance(exc, _Unreachable) or (
                isinstance(exc, _Status) and (exc.code == 429 or exc.code >= 500)
            )

        def failed(exc: BaseException, attempts: int) -> BaseException:
            return QueryFailed(self._message(template, promql, exc, attempts))

        body = self.retry.call(send, retryable=retryable, failed=failed)
        return self._samples(template, promql, body)

    def _message(self, template: Template, promql: str, exc: BaseException, attempts: int) -> str:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        what = f"Prometheus query {template.name} at {self.url}"
        shown = promql if len(promql) <= 200 else promql[:200] + "..."
        if isinstance(exc, _Status):
            detail = f": {exc.detail}" if exc.detail else ""
            if exc.code in (401, 403):
                fix = self.auth_hint or (
                    "the server wants credentials: give token_env, or username_env and "
                    f"password_env, in {CONFIG_PATH}"
                )
                return f"{what} was refused (HTTP {exc.code}){detail}: {fix}"
            if exc.code == 429 or exc.code >= 500:
                return (
                    f"{what} failed (HTTP {exc.code}{tries}){detail}: Prometheus is overloaded "
                    "or failing; the next look tries again"
                )
            if exc.code == 404:
                return (
                    f"{what} failed (HTTP 404): {CONFIG_PATH}.url must point at the Prometheus "
                    "server (its /api/v1/query is not there)"
                )
            return f"{what} failed (HTTP {exc.code}){detail}: fix {template.where} (sent: {shown})"
        if isinstance(exc, TimeoutError):
            return (
                f"{what} timed out after {self.timeout:g}s: make the query cheaper or raise "
                f"{CONFIG_PATH}.timeout"
            )
        if isinstance(exc, _Unreachable):
            return (
                f"cannot reach Prometheus at {self.url} for the {template.name} query "
                f"({exc}{tries}): check {CONFIG_PATH}.url and that the server runs"
            )
        if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, ssl.SSLError):
            return (
                f"TLS with {self.url} failed for the {template.name} query "
                f"({_reason(exc.reason)}): give {CONFIG_PATH}.ca_file the CA that signed its "
                "certificate"
            )
        if isinstance(exc, ValueError):  # the body was not JSON
            return f"{what}: the answer is not JSON: is {CONFIG_PATH}.url a Prometheus server?"
        return f"{what} failed: {type(exc).__name__}: {_reason(exc)}"

    def _samples(self, template: Template, promql: str, body: Any) -> list[Sample]:
        shown = promql if len(promql) <= 200 else promql[:200] + "..."
        if not isinstance(body, dict):
            raise QueryFailed(f"Prometheus query {template.name}: the answer is not an API object")
        if body.get("status") != "success":
            detail = _clip(f"{body.get('errorType', 'error')}: {body.get('error', '')}")
            raise QueryFailed(
                f"Prometheus query {template.name} failed ({detail}): fix {template.where} "
                f"(sent: {shown})"
            )
        data = body.get("data") or {}
        kind = data.get("resultType")
        try:
            if kind == "scalar":
                return [({}, float(data["result"][1]))]
            if kind == "vector":
                return [
                    (
                        {str(k): str(v) for k, v in (item.get("metric") or {}).items()},
                        float(item["value"][1]),
                    )
                    for item in data.get("result") or []
                ]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise QueryFailed(
                f"Prometheus query {template.name}: an unreadable answer ({exc})"
            ) from exc
        raise QueryFailed(
            f"Prometheus query {template.name} gives a {kind}, not an instant vector: fix "
            f"{template.where} (no range selector outside a function such as increase)"
        )


def _reason(exc: object) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return _clip(str(text))


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "..."


def _detail(exc: urllib.error.HTTPError) -> str:
    """Prometheus's own error (``errorType: error``) from an error response, if it sent one;
    nothing else of the body (a proxy's page may echo the request)."""
    try:
        body = json.loads(exc.read(65536))
    except (ValueError, OSError):
        return ""
    if isinstance(body, dict) and body.get("status") == "error":
        return _clip(f"{body.get('errorType', 'error')}: {body.get('error', '')}")
    return ""


def _number(samples: list[Sample] | None) -> float | None:
    """The samples' sum, or None (no data) when there are none or one is not finite."""
    if not samples:
        return None
    total = 0.0
    for _, value in samples:
        if not math.isfinite(value):
            return None
        total += value
    return total


def _count(samples: list[Sample] | None) -> int | None:
    """Whole requests; a negative total (a counter reset seen by a query that subtracts raw
    counter values) is no data, never zero."""
    total = _number(samples)
    if total is None or total < -0.5:
        return None
    return max(0, round(total))


def _histogram(samples: list[Sample] | None, template: Template) -> LatencyHistogram | None:
    """Cumulative ``le`` buckets (summed per bound) as counts between bounds; None without data,
    without ``+Inf`` or with a bucket that is not finite."""
    if not samples:
        return None
    cumulative: dict[float, float] = {}
    for labels, value in samples:
        le = labels.get("le")
        if le is None:
            raise QueryFailed(
                f"the latency query's result has no 'le' label: keep the buckets with "
                f"`sum by (le) (...)` in {template.where}"
            )
        try:
            bound = float(le)
        except ValueError:
            raise QueryFailed(f"the latency query gives a bucket le={le!r}") from None
        if not math.isfinite(value) or math.isnan(bound):
            return None
        cumulative[bound] = cumulative.get(bound, 0.0) + value
    if math.inf not in cumulative:
        return None
    bounds = sorted(b for b in cumulative if b != math.inf)
    counts: list[int] = []
    below = 0
    for bound in [*bounds, math.inf]:
        at_most = max(below, round(cumulative[bound]))  # cumulative: never decreasing
        counts.append(at_most - below)
        below = at_most
    return LatencyHistogram(tuple(bounds), counts)
