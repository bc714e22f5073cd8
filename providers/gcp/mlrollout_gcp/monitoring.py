"""Vertex AI metrics from Cloud Monitoring as a :class:`~mlrollout.contracts.MetricsSource`.

One look is one ``ListTimeSeries`` call per metric type (plus one per further page), each filtered
to the endpoint and to both deployed models at once, aligned per minute with ``ALIGN_DELTA`` and
summed per ``deployed_model_id`` with ``REDUCE_SUM``:

- ``prediction/online/prediction_count`` → ``Window.requests``;
- ``prediction/online/error_count`` → ``Window.errors``. Cloud Monitoring writes no zero points: an
  absent error series beside a present ``prediction_count`` means 0 errors, not "no data";
- ``prediction/online/prediction_latencies`` (only when a latency gate exists), ``latency_type``
  ``total``: a distribution in milliseconds, kept as a :class:`~mlrollout.contracts.
  LatencyHistogram` in seconds so latency gates use the whole histogram;
- custom gates: ``query: {metric_type, filter, aligner}`` → ``Window.custom[gate]`` (the points'
  sum and count), one call per distinct query. The series must carry a ``deployed_model_id``
  metric label (as the app writing them knows which deployed model answered); ``filter`` narrows
  them further.

So a look costs 2 calls, 3 with a latency gate, plus one per distinct custom query — the same
however many gates there are. Cloud Monitoring rejects alignment periods under 60 s: the window
is cut to the whole minutes completed by now (:func:`mlrollout.adapters.complete_periods`), and
one without a complete minute shows no data. The Monitoring client has no
REST transport (2.32): it speaks gRPC — to ``monitoring.googleapis.com`` with the credentials, or,
when ``target.metrics_url`` is ``http://HOST:PORT``, on an insecure channel to that address.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from google.cloud import monitoring_v3
from google.protobuf import duration_pb2, timestamp_pb2

from mlrollout.adapters import complete_periods
from mlrollout.contracts import (
    CustomValue,
    LatencyHistogram,
    MetricsQuery,
    ProviderContext,
    Window,
)
from mlrollout.errors import ProviderError
from mlrollout.retry import RetryPolicy
from mlrollout_gcp._gcp import call, credentials_for, is_plain_http, map_error
from mlrollout_gcp.spec import MIN_ALIGNMENT

if TYPE_CHECKING:
    from mlrollout_gcp.vertex import VertexEndpoint

PREFIX = "aiplatform.googleapis.com/prediction/online/"
PREDICTIONS = PREFIX + "prediction_count"
ERRORS = PREFIX + "error_count"
LATENCIES = PREFIX + "prediction_latencies"
RESOURCE_TYPE = "aiplatform.googleapis.com/Endpoint"
CALL_TIMEOUT = 60.0
PAGE_SIZE = 10_000
_SAFE_LABEL = re.compile(r'^[^"\\]*$')

Reducer = monitoring_v3.Aggregation.Reducer
Aligner = monitoring_v3.Aggregation.Aligner


@dataclass
class _Series:
    """The points of one metric for one deployed model, summed over the window."""

    total: float = 0.0
    points: int = 0
    histogram: LatencyHistogram | None = None
    problems: list[str] = field(default_factory=list)


def histogram_from_distribution(dist: Any, unit: float = 1e-3) -> LatencyHistogram | None:
    """A :class:`LatencyHistogram` (seconds) from a ``google.api.Distribution`` whose values are
    in ``unit`` seconds (Vertex latencies are milliseconds). None when it has no buckets."""
    options = dist.bucket_options
    kind = options.WhichOneof("options")
    if kind == "explicit_buckets":
        bounds = [float(b) for b in options.explicit_buckets.bounds]
    elif kind == "exponential_buckets":
        e = options.exponential_buckets
        bounds = [e.scale * e.growth_factor**i for i in range(e.num_finite_buckets + 1)]
    elif kind == "linear_buckets":
        lin = options.linear_buckets
        bounds = [lin.offset + lin.width * i for i in range(lin.num_finite_buckets + 1)]
    else:
        return None
    if not bounds:
        return None
    counts = [int(c) for c in dist.bucket_counts][: len(bounds) + 1]
    counts += [0] * (len(bounds) + 1 - len(counts))  # trailing empty buckets may be left out
    return LatencyHistogram(tuple(b * unit for b in bounds), counts)


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    whole = math.floor(seconds)
    return timestamp_pb2.Timestamp(
        seconds=whole, nanos=min(999_999_999, round((seconds - whole) * 1e9))
    )


class CloudMonitoringMetrics:
    """Per-deployed-model windows of one Vertex AI endpoint."""

    def __init__(
        self,
        client: Any,
        endpoint: VertexEndpoint,
        *,
        project: str,
        retry: RetryPolicy | None = None,
        delay: float = 0.0,
    ) -> None:
        self.client = client
        self.delay = delay  # Cloud Monitoring's ingestion delay beyond the plan's (seconds)
        self.endpoint = endpoint
        self.project = project
        self.retry = retry or endpoint.retry

    @classmethod
    def from_context(
        cls, context: ProviderContext, endpoint: VertexEndpoint
    ) -> CloudMonitoringMetrics:
        target = context.plan.target
        url = target.metrics_url
        try:
            if url and is_plain_http(url):
                import grpc
                from google.cloud.monitoring_v3.services.metric_service.transports import (
                    MetricServiceGrpcTransport,
                )

                channel = grpc.insecure_channel(urlsplit(url).netloc)
                transport = MetricServiceGrpcTransport(channel=channel)
                client = monitoring_v3.MetricServiceClient(transport=transport)
            else:
                from google.api_core.client_options import ClientOptions

                options = ClientOptions(api_endpoint=urlsplit(url).netloc or url) if url else None
                client = monitoring_v3.MetricServiceClient(
                    credentials=credentials_for(url, what="Cloud Monitoring"),
                    client_options=options,
                )
        except ProviderError:
            raise
        except Exception as exc:
            mapped = map_error("list_time_series", exc)
            if mapped is exc:
                raise
            raise mapped from exc
        return cls(client, endpoint, project=str(target.setting("project") or endpoint.project))

    # --------------------------------------------------------------------------------- query

    def query(self, query: MetricsQuery) -> dict[str, Window]:
        ids = self._ids(query.variants)
        if not ids:
            return {v: Window() for v in query.variants}
        cut = complete_periods(
            query.start, query.end, MIN_ALIGNMENT, self.endpoint.clock.now(), self.delay
        )
        if cut is None:
            return {v: Window() for v in query.variants}  # no complete minute yet
        predictions = self._fetch(PREDICTIONS, cut, ids)
        errors = self._fetch(ERRORS, cut, ids)
        latency_gates = any(g.metric.startswith("latency") for g in query.gates)
        latencies = (
            self._fetch(LATENCIES, cut, ids, extra='metric.labels.latency_type = "total"')
            if latency_gates
            else {}
        )
        custom: dict[str, dict[str, _Series]] = {}
        fetched: dict[tuple[str, str, str], dict[str, _Series]] = {}
        for gate in query.gates:
            if gate.metric != "custom" or not gate.query:
                continue
            q = gate.query
            key = (str(q.get("metric_type")), str(q.get("filter") or ""), str(q.get("aligner")))
            if key not in fetched:
                fetched[key] = self._fetch(
                    key[0],
                    cut,
                    ids,
                    extra=key[1] or None,
                    aligner=str(q.get("aligner") or "ALIGN_DELTA"),
                    endpoint_scoped=False,
                )
            custom[gate.name] = fetched[key]

        windows: dict[str, Window] = {}
        for variant in query.variants:
            model_id = ids.get(variant)
            if model_id is None:
                windows[variant] = Window()
                continue
            p = predictions.get(model_id)
            e = errors.get(model_id)
            requests = int(p.total) if p is not None else None
            # No zero points: errors absent beside present predictions are 0 errors.
            err = int(e.total) if e is not None else (0 if requests is not None else None)
            lat = latencies.get(model_id)
            window = Window(
                requests=requests,
                errors=err,
                latency=lat.histogram if lat is not None else None,
            )
            for gate_name, series in custom.items():
                s = series.get(model_id)
                if s is not None and s.points:
                    window.custom[gate_name] = CustomValue(total=s.total, count=s.points)
            problems = [m for s in (p, e, lat) if s is not None for m in s.problems]
            if problems:
                window.error = "; ".join(problems)
            windows[variant] = window
        return windows

    def _ids(self, variants: tuple[str, ...]) -> dict[str, str]:
        """Deployed model ids of the variants (described again only for a name not yet seen)."""
        if any(v not in self.endpoint.ids for v in variants):
            self.endpoint.describe()
        return {v: self.endpoint.ids[v] for v in variants if v in self.endpoint.ids}

    def _fetch(
        self,
        metric_type: str,
        window: tuple[float, float],
        ids: dict[str, str],
        *,
        extra: str | None = None,
        aligner: str = "ALIGN_DELTA",
        endpoint_scoped: bool = True,
    ) -> dict[str, _Series]:
        """Every page of one ``ListTimeSeries``: series summed per deployed model id."""
        quoted = ", ".join(f'"{i}"' for i in sorted(set(ids.values())) if _SAFE_LABEL.match(i))
        parts = [f'metric.type = "{metric_type}"']
        if endpoint_scoped:
            parts += [
                f'resource.type = "{RESOURCE_TYPE}"',
                f'resource.labels.endpoint_id = "{self.endpoint.endpoint_id}"',
            ]
        parts.append(f"metric.labels.deployed_model_id = one_of({quoted})")
        if extra:
            parts.append(f"({extra})" if " OR " in extra else extra)
        # Per-minute points over whole minutes, summed here (the window is in whole minutes, not
        # in steps of the plan's interval).
        request: dict[str, Any] = {
            "name": f"projects/{self.project}",
            "filter": " AND ".join(parts),
            "interval": monitoring_v3.TimeInterval(
                start_time=_timestamp(window[0]), end_time=_timestamp(window[1])
            ),
            "aggregation": monitoring_v3.Aggregation(
                alignment_period=duration_pb2.Duration(seconds=int(MIN_ALIGNMENT)),
                per_series_aligner=Aligner.__members__[aligner],
                cross_series_reducer=Reducer.REDUCE_SUM,
                group_by_fields=["metric.labels.deployed_model_id"],
            ),
            "view": monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
            "page_size": PAGE_SIZE,
        }
        out: dict[str, _Series] = {}
        token = ""
        while True:
            request["page_token"] = token
            # retry=None: the client's own retry would sleep on the wall clock; ``call`` retries
            # on the injected clock (the core's RetryPolicy).
            method = functools.partial(
                self.client.list_time_series, retry=None, timeout=CALL_TIMEOUT
            )
            page = call(
                method,
                "list_time_series",
                retry=self.retry,
                meter=self.endpoint.meter,
                request=request,
            )
            for series in page.time_series:
                model_id = str(series.metric.labels.get("deployed_model_id", ""))
                if model_id not in ids.values():
                    continue
                acc = out.setdefault(model_id, _Series())
                _add(acc, series)
            token = page.next_page_token
            if not token:
                return out


def _add(acc: _Series, series: Any) -> None:
    for point in series.points:
        value = point.value
        kind = value._pb.WhichOneof("value")
        if kind == "distribution_value":
            dist = value.distribution_value
            acc.points += 1
            acc.total += float(dist.count)
            hist = histogram_from_distribution(dist)
            if hist is None:
                continue
            if acc.histogram is None:
                acc.histogram = hist
            elif acc.histogram.bounds == hist.bounds:
                acc.histogram = acc.histogram.merge(hist)
            else:
                acc.problems.append("latency distributions changed their buckets in the window")
        elif kind in ("int64_value", "double_value"):
            acc.points += 1
            acc.total += float(getattr(value, kind))
        elif kind == "bool_value":
            acc.points += 1
            acc.total += 1.0 if value.bool_value else 0.0
