"""Azure Monitor metrics of a managed online endpoint, through
``azure.monitor.querymetrics.MetricsClient`` (``POST .../metrics:getBatch``).

Per look, on the online endpoint resource, at one-minute granularity over the look's cumulative
window cut to the whole minutes completed by now
(:func:`mlrollout.adapters.complete_periods`):

- ``RequestsPerMinute`` (Total) split by ``deployment`` and ``statusCodeClass``: requests are the
  sum over classes, errors the ``5xx`` class (Azure has no error-count metric). A deployment with
  request points but no ``5xx`` series had no errors; one with no points has no data.
- ``RequestLatency_P50/P90/P95/P99`` (Average) by ``deployment``, only when a latency gate exists:
  Azure publishes percentiles per minute, so the window's value is the request-weighted mean of
  the minutes' percentiles — pre-averaged, not a percentile of the window. They land in
  ``Window.latency_percentiles`` (seconds), which the gates treat as point values and say so
  (a weaker guarantee than a histogram).
- custom gates: ``{metric, namespace?, resource_id?, aggregation?, dimension?}``, Total and Count
  split by ``dimension`` (default ``deployment``), one call per (resource, namespace, dimension).

The two built-in groups are separate calls because Azure Monitor applies one ``filter`` to every
metric of a call and rejects a dimension that a metric lacks (latency has no ``statusCodeClass``):
so a look costs 1 call (no latency gate) or 2, whatever the number of gates, plus one per custom
group.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlrollout.adapters import complete_periods
from mlrollout.budget import Meter
from mlrollout.clock import Clock
from mlrollout.contracts import CustomValue, MetricsQuery, ProviderContext, Window
from mlrollout.errors import ProviderError
from mlrollout.plan.model import LATENCY_METRICS, Gate
from mlrollout.retry import RetryPolicy
from mlrollout_azure import _azure
from mlrollout_azure.azureml import AzureMLEndpoint, AzureTarget, target_of
from mlrollout_azure.spec import ENDPOINT_NAMESPACE

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from azure.monitor.querymetrics import MetricsClient

MINUTE = 60.0
TRAFFIC_METRIC = "RequestsPerMinute"
LATENCY = {
    "RequestLatency_P50": 0.5,
    "RequestLatency_P90": 0.9,
    "RequestLatency_P95": 0.95,
    "RequestLatency_P99": 0.99,
}


@dataclass(frozen=True)
class _Group:
    """One batch call: metrics sharing a resource, a namespace and a split."""

    resource_id: str
    namespace: str
    metrics: tuple[str, ...]
    filter: str
    aggregations: tuple[str, ...]
    custom: bool = False


class AzureMonitorMetrics:
    """The :class:`~mlrollout.contracts.MetricsSource` of one online endpoint."""

    def __init__(
        self,
        client_factory: Callable[[], Any],
        target: AzureTarget,
        clock: Clock,
        *,
        retry: RetryPolicy | None = None,
        delay: float = 0.0,
        meter: Meter | None = None,
    ) -> None:
        self._factory = client_factory
        self.delay = delay  # Azure Monitor's ingestion delay beyond the plan's (seconds)
        self._client: Any = None
        self.target = target
        self.clock = clock
        self.retry = retry or _azure.retry_policy(clock)
        self.meter = meter  # the subscription's API budget, if any
        self.calls = 0

    @classmethod
    def from_context(
        cls, context: ProviderContext, credential: Any, endpoint: AzureMLEndpoint
    ) -> AzureMonitorMetrics:
        target = target_of(context)
        url = context.plan.target.metrics_url

        def factory() -> Any:
            base = url
            if not base:
                if endpoint.location is None:
                    endpoint.describe()
                if not endpoint.location:
                    raise ProviderError(
                        "cannot tell the workspace's region for Azure Monitor",
                        hint="set target.metrics_url (https://REGION.metrics.monitor.azure.com)",
                    )
                base = f"https://{endpoint.location}.metrics.monitor.azure.com"
            return MetricsClient(base, credential, retry_total=0)

        return cls(factory, target, context.clock, meter=endpoint.meter)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._factory()
        return self._client

    # ------------------------------------------------------------------------------ query

    def query(self, query: MetricsQuery) -> dict[str, Window]:
        windows = {v: Window() for v in query.variants}
        cut = complete_periods(query.start, query.end, MINUTE, self.clock.now(), self.delay)
        if cut is None:
            return windows  # not one whole minute yet: no data
        start, end = cut
        results: list[tuple[_Group, dict[str, list[Any]]]] = []
        for group in self.groups(query.gates):
            try:
                results.append((group, self._fetch(group, start, end)))
            except ProviderError:
                if group.custom:
                    continue  # that custom gate sees no data; the built-in ones still judge
                raise
        traffic: dict[str, dict[str, dict[float, float]]] = {}
        for group, metrics in results:
            if group.metrics[0] == TRAFFIC_METRIC and group.resource_id == self.target.endpoint_id:
                traffic = _traffic(metrics)
        per_minute = {d: _by_minute(series) for d, series in traffic.items()}
        for variant in query.variants:
            classes = traffic.get(variant)
            if classes:
                window = windows[variant]
                window.requests = round(sum(sum(s.values()) for s in classes.values()))
                window.errors = round(sum(classes.get("5xx", {}).values()))
        for group, metrics in results:
            if group.metrics[0] in LATENCY:
                for name, q in LATENCY.items():
                    for variant, points in _split(metrics.get(name, []), "average").items():
                        if variant in windows:
                            value = _weighted(points, per_minute.get(variant, {}))
                            if value is not None:
                                windows[variant].latency_percentiles[q] = value / 1000.0
        for gate in query.gates:
            if gate.metric != "custom" or gate.query is None:
                continue
            group = _custom_group(gate, self.target)
            metrics = dict(results).get(group, {})
            series = metrics.get(str(gate.query["metric"]), [])
            totals = _split(series, "total")
            counts = _split(series, "count")
            for variant in query.variants:
                if variant in totals or variant in counts:
                    windows[variant].custom[gate.name] = CustomValue(
                        total=sum(totals.get(variant, {}).values()),
                        count=sum(counts.get(variant, {}).values()),
                    )
        return windows

    def groups(self, gates: tuple[Gate, ...]) -> list[_Group]:
        """The batch calls one look makes (constant in the number of built-in gates)."""
        ep = self.target.endpoint_id
        groups = [
            _Group(
                ep,
                ENDPOINT_NAMESPACE,
                (TRAFFIC_METRIC,),
                "deployment eq '*' and statusCodeClass eq '*'",
                ("Total",),
            )
        ]
        if any(g.metric in LATENCY_METRICS for g in gates):
            groups.append(
                _Group(ep, ENDPOINT_NAMESPACE, tuple(LATENCY), "deployment eq '*'", ("Average",))
            )
        custom: dict[_Group, list[str]] = {}
        for gate in gates:
            if gate.metric == "custom" and gate.query is not None:
                group = _custom_group(gate, self.target)
                custom.setdefault(group, [])
        groups += list(custom)
        return groups

    def _fetch(self, group: _Group, start: float, end: float) -> dict[str, list[Any]]:
        """One ``metrics:getBatch`` call: metric name -> its time series."""
        timespan = (
            dt.datetime.fromtimestamp(start, dt.UTC),
            dt.datetime.fromtimestamp(end, dt.UTC),
        )

        def run() -> Any:
            self.calls += 1
            return self.client.query_resources(
                resource_ids=[group.resource_id],
                metric_namespace=group.namespace,
                metric_names=list(group.metrics),
                timespan=timespan,
                granularity=dt.timedelta(minutes=1),
                aggregations=list(group.aggregations),
                filter=group.filter,
            )

        results = _azure.call(
            self.retry,
            run,
            action=f"read Azure Monitor metrics {', '.join(group.metrics)}",
            what=f"metrics of {group.resource_id}",
            permission="metrics",
            meter=self.meter,
        )
        out: dict[str, list[Any]] = defaultdict(list)
        for result in results or ():
            for metric in result.metrics:
                out[metric.name] += list(metric.timeseries)
        return out


# ------------------------------------------------------------------------------------ helpers


def _custom_group(gate: Gate, target: AzureTarget) -> _Group:
    query = gate.query or {}
    dimension = str(query.get("dimension") or "deployment")
    aggregation = str(query.get("aggregation") or "Total")
    aggregations = ("Total", "Count") if aggregation == "Total" else (aggregation, "Count")
    return _Group(
        str(query.get("resource_id") or target.endpoint_id),
        str(query.get("namespace") or ENDPOINT_NAMESPACE),
        (str(query["metric"]),),
        f"{dimension} eq '*'",
        aggregations,
        custom=True,
    )


def _meta(series: Any, name: str) -> str | None:
    values = getattr(series, "metadata_values", None) or {}
    for key, value in values.items():
        if str(key).lower() == name.lower():
            return str(value)
    return None


def _stamp(point: Any) -> float:
    at = point.timestamp
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    return float(at.timestamp())


def _split(series_list: list[Any], field: str) -> dict[str, dict[float, float]]:
    """deployment -> {minute: value of ``field``} (points without the value are skipped)."""
    out: dict[str, dict[float, float]] = defaultdict(dict)
    for series in series_list:
        name = _meta(series, "deployment") or next(
            iter((getattr(series, "metadata_values", None) or {}).values()), None
        )
        if name is None:
            continue
        for point in series.data:
            value = getattr(point, field, None)
            if value is not None and math.isfinite(value):
                minute = _stamp(point)
                out[str(name)][minute] = out[str(name)].get(minute, 0.0) + float(value)
    return dict(out)


def _traffic(metrics: dict[str, list[Any]]) -> dict[str, dict[str, dict[float, float]]]:
    """deployment -> status code class -> {minute: requests}."""
    out: dict[str, dict[str, dict[float, float]]] = defaultdict(dict)
    for series in metrics.get(TRAFFIC_METRIC, []):
        deployment = _meta(series, "deployment")
        if deployment is None:
            continue
        cls = (_meta(series, "statusCodeClass") or "unknown").lower()
        points = out[deployment].setdefault(cls, {})
        for point in series.data:
            if point.total is not None:
                minute = _stamp(point)
                points[minute] = points.get(minute, 0.0) + float(point.total)
    return dict(out)


def _by_minute(classes: dict[str, dict[float, float]]) -> dict[float, float]:
    total: dict[float, float] = defaultdict(float)
    for points in classes.values():
        for minute, value in points.items():
            total[minute] += value
    return dict(total)


def _weighted(points: dict[float, float], weights: dict[float, float]) -> float | None:
    """The request-weighted mean of per-minute values (plain mean without request counts)."""
    if not points:
        return None
    if weights and any(weights.get(m, 0.0) > 0 for m in points):
        total = sum(weights.get(m, 0.0) for m in points)
        return sum(v * weights.get(m, 0.0) for m, v in points.items()) / total
    return sum(points.values()) / len(points)
