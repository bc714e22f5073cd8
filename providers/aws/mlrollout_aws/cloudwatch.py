"""CloudWatch metrics for SageMaker variants: one ``GetMetricData`` request per look.

One look asks, in a single request (followed by ``NextToken`` pages only if CloudWatch splits the
answer), for every variant of the look (``EndpointName`` + ``VariantName`` in ``AWS/SageMaker``):

- ``Invocations`` and ``Invocation5XXErrors`` (``Sum`` at the plan's interval, added up) →
  ``Window.requests`` / ``Window.errors``;
- ``ModelLatency`` ``p50``/``p90``/``p99`` (only those the gates use) over one period spanning
  the whole window (percentiles of parts cannot be combined), microseconds → seconds →
  ``Window.latency_percentiles``;
- each custom gate's ``query: {namespace, metric, dimensions, stat}``: without ``stat``, ``Sum``
  and ``SampleCount`` (→ ``CustomValue(total, count)``, a rate when the metric counts events);
  with ``stat``, that statistic over the window (→ ``CustomValue(value, 1)``). Dimensions default
  to the variant's when the namespace is ``AWS/SageMaker``; ``{endpoint}`` and ``{variant}`` in a
  dimension value are replaced. ``AWS/SageMaker`` ``*Latency`` metrics are converted to seconds.

The window is cut to whole periods of the plan's interval (``MetricsQuery.step``) by
:func:`mlrollout.adapters.complete_periods`: from the period boundary at or before the look's
start (as CloudWatch itself rounds ``StartTime``; the engine's start already includes the
ingestion ``delay``) to the last boundary at or before now, so the running period is never read
half-full.

An empty series, or one CloudWatch still reports as ``PartialData`` (or ``InternalError``,
``Forbidden``) after the last page, is *no data* (``None``), never zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlrollout.adapters import complete_periods
from mlrollout.budget import Meter
from mlrollout.clock import Clock
from mlrollout.contracts import CustomValue, MetricsQuery, ProviderContext, Window
from mlrollout.plan.model import LATENCY_METRICS, Gate
from mlrollout.retry import RetryPolicy
from mlrollout_aws import naming
from mlrollout_aws._aws import budget_meter, call, make_client
from mlrollout_aws.alarms import metric_stat

MICROSECONDS = naming.MICROSECONDS


@dataclass
class _Series:
    values: list[float] = field(default_factory=list)
    status: str = "Complete"

    def total(self) -> float | None:
        if not self.values or self.status != "Complete":
            return None
        return float(sum(self.values))

    def point(self) -> float | None:
        """The value of a one-period series (the mean of several, if CloudWatch cut it)."""
        if not self.values or self.status != "Complete":
            return None
        return float(sum(self.values) / len(self.values))


class CloudWatchMetrics:
    def __init__(
        self,
        endpoint: str,
        client: Any,
        clock: Clock,
        *,
        retry: RetryPolicy | None = None,
        delay: float = 0.0,
        meter: Meter | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.delay = delay  # CloudWatch's ingestion delay beyond the plan's (seconds)
        self.client = client
        self.clock = clock
        self.retry = retry or RetryPolicy(sleep=clock.sleep)
        self.meter = meter  # the API budget of the account and region, if any

    @classmethod
    def from_context(cls, context: ProviderContext) -> CloudWatchMetrics:
        target = context.plan.target
        client = make_client(
            "cloudwatch",
            region=target.setting("region"),
            profile=target.setting("profile"),
            endpoint_url=target.metrics_url or target.endpoint_url,
        )
        budget = budget_meter(
            context.clock, region=target.setting("region"), profile=target.setting("profile")
        )
        return cls(target.endpoint, client, context.clock, meter=budget)

    # ------------------------------------------------------------------------------- query

    def query(self, query: MetricsQuery) -> dict[str, Window]:
        step = max(1, round(query.step))
        cut = complete_periods(query.start, query.end, step, self.clock.now(), self.delay)
        if cut is None:  # not one whole period yet: nothing to ask
            return {v: Window() for v in query.variants}
        start, end = int(cut[0]), int(cut[1])
        whole = _whole_period(end - start)
        queries: list[dict[str, Any]] = []
        for i, variant in enumerate(query.variants):
            dims = self._dims(variant)
            queries.append(
                metric_stat(f"inv{i}", naming.NAMESPACE, naming.METRIC_REQUESTS, dims, "Sum", step)
            )
            queries.append(
                metric_stat(f"err{i}", naming.NAMESPACE, naming.METRIC_ERRORS, dims, "Sum", step)
            )
            for q in _quantiles(query.gates):
                queries.append(
                    metric_stat(
                        f"lat{i}q{_qid(q)}",
                        naming.NAMESPACE,
                        naming.METRIC_LATENCY,
                        dims,
                        f"p{_qname(q)}",
                        whole,
                    )
                )
            for j, gate in enumerate(query.gates):
                if gate.metric != "custom" or not gate.query:
                    continue
                spec = gate.query
                ns, metric = str(spec["namespace"]), str(spec["metric"])
                cdims = naming.custom_dimensions(spec, self.endpoint, variant)
                if spec.get("stat"):
                    queries.append(
                        metric_stat(f"c{j}v{i}s", ns, metric, cdims, str(spec["stat"]), whole)
                    )
                else:
                    queries.append(metric_stat(f"c{j}v{i}t", ns, metric, cdims, "Sum", step))
                    queries.append(
                        metric_stat(f"c{j}v{i}n", ns, metric, cdims, "SampleCount", step)
                    )
        series = self._fetch(queries, start, end)

        windows: dict[str, Window] = {}
        for i, variant in enumerate(query.variants):
            requests = series[f"inv{i}"].total()
            errors = series[f"err{i}"].total()
            window = Window(
                requests=None if requests is None else round(requests),
                errors=None if errors is None else round(errors),
            )
            for q in _quantiles(query.gates):
                value = series[f"lat{i}q{_qid(q)}"].point()
                if value is not None:
                    window.latency_percentiles[q] = value * MICROSECONDS
            for j, gate in enumerate(query.gates):
                if gate.metric != "custom" or not gate.query:
                    continue
                scale = naming.custom_scale(gate.query)
                if gate.query.get("stat"):
                    point = series[f"c{j}v{i}s"].point()
                    if point is not None:
                        window.custom[gate.name] = CustomValue(point * scale, 1.0)
                else:
                    total = series[f"c{j}v{i}t"].total()
                    count = series[f"c{j}v{i}n"].total()
                    if total is not None and count is not None:
                        window.custom[gate.name] = CustomValue(total * scale, count)
            windows[variant] = window
        return windows

    def _fetch(self, queries: list[dict[str, Any]], start: int, end: int) -> dict[str, _Series]:
        series = {q["Id"]: _Series() for q in queries}
        token: str | None = None
        while True:
            params: dict[str, Any] = {
                "MetricDataQueries": queries,
                "StartTime": datetime.fromtimestamp(start, UTC),
                "EndTime": datetime.fromtimestamp(end, UTC),
                "ScanBy": "TimestampAscending",
            }
            if token:
                params["NextToken"] = token
            page = call(
                self.client, "get_metric_data", retry=self.retry, meter=self.meter, **params
            )
            for result in page.get("MetricDataResults", []):
                found = series.setdefault(result["Id"], _Series())
                found.values += [float(v) for v in result.get("Values", [])]
                found.status = str(result.get("StatusCode", "Complete"))
            token = page.get("NextToken")
            if not token:
                return series

    def _dims(self, variant: str) -> list[dict[str, str]]:
        return naming.variant_dimensions(self.endpoint, variant)


def _quantiles(gates: tuple[Gate, ...]) -> list[float]:
    return sorted({LATENCY_METRICS[g.metric] for g in gates if g.metric in LATENCY_METRICS})


def _qname(q: float) -> str:
    return f"{q * 100:g}"


def _qid(q: float) -> str:
    return _qname(q).replace(".", "_")


def _whole_period(length: int) -> int:
    """The longest valid CloudWatch period not above ``length`` (the whole window if valid)."""
    if naming.valid_period(length):
        return length
    if length > 60:
        return length - length % 60
    return max(p for p in naming.HIGH_RES_PERIODS if p <= length)
