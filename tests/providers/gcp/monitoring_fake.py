"""A project-owned Cloud Monitoring fake: ``MetricService/ListTimeSeries`` over gRPC.

``google-cloud-monitoring`` 2.32 has no REST transport, so the fake is a gRPC server with a generic
handler on an insecure port of 127.0.0.1. Its data is generated, not stored: Vertex AI traffic on
the injected clock from the sandbox's seeded :class:`~mlrollout.sandbox.traffic.TrafficModel`
(error rate, p50/p99 latency per deployed model's display name), split by the Vertex fake's weight
history — so whatever the adapter does to the split shows in the metrics, as on Vertex.

What it reproduces of Cloud Monitoring: alignment periods under 60 s are INVALID_ARGUMENT; points
are per-minute ``ALIGN_DELTA`` sums aligned to the interval's end, only for minutes completed by
the clock (less ``lag`` seconds of ingestion delay); no zero-valued points are written (a deployed
model without errors has no ``error_count`` series at all); ``prediction_latencies`` is one
distribution (milliseconds) per ``latency_type`` (``model``, ``overhead``, ``total``); results are
grouped by ``deployed_model_id`` and paginated (``max_series_per_page`` series a page at most).
Faults: ``fault_rate`` answers that share of calls UNAVAILABLE or RESOURCE_EXHAUSTED (seeded).
Every call is recorded in ``calls`` as (metric type, page token).
"""

from __future__ import annotations

import random
import re
import threading
from concurrent import futures
from typing import Any

import grpc
from google.api import distribution_pb2, metric_pb2
from google.cloud import monitoring_v3

from mlrollout.plan.model import Sandbox
from mlrollout.sandbox.traffic import LATENCY_BOUNDS, TrafficModel

METHOD = "/google.monitoring.v3.MetricService/ListTimeSeries"
PREFIX = "aiplatform.googleapis.com/prediction/online/"
PERIOD = 60


class MonitoringFake:
    def __init__(self, vertex: Any, *, seed: int = 7, rps: float = 20.0) -> None:
        self.vertex = vertex  # the VertexFake whose endpoints' histories drive the traffic
        self.seed = seed
        self.rps = rps
        self.lock = threading.Lock()
        self.reset()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "google.monitoring.v3.MetricService",
            {
                "ListTimeSeries": grpc.unary_unary_rpc_method_handler(
                    self._list,
                    request_deserializer=monitoring_v3.ListTimeSeriesRequest.deserialize,
                    response_serializer=monitoring_v3.ListTimeSeriesResponse.serialize,
                )
            },
        )
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def reset(self) -> None:
        self.models: dict[str, TrafficModel] = {}  # endpoint id -> traffic
        self.calls: list[tuple[str, str]] = []
        self.fault_rate = 0.0
        self.fault_rng = random.Random(5)
        self.lag = 0.0
        self.max_series_per_page = 1000
        #: metric type -> {display name: value per minute}: a custom metric the app writes
        #: (DOUBLE gauge points labelled deployed_model_id), served for any endpoint.
        self.custom: dict[str, dict[str, float]] = {}

    def start(self) -> MonitoringFake:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def traffic(self, endpoint_id: str, profiles: dict[str, dict[str, Any]], origin: float) -> None:
        """Serve traffic on ``endpoint_id`` from ``origin`` with these profiles by display name."""
        sandbox = Sandbox.model_validate({"seed": self.seed, "rps": self.rps, "variants": profiles})
        self.models[endpoint_id] = TrafficModel(sandbox, origin)

    # ------------------------------------------------------------------------------- serving

    def _list(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            metric = _match(r'metric\.type\s*=\s*"([^"]+)"', request.filter) or "?"
            self.calls.append((metric, request.page_token))
            if self.fault_rate and self.fault_rng.random() < self.fault_rate:
                code = self.fault_rng.choice(
                    (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
                )
                context.abort(code, "injected fault")
            period = request.aggregation.alignment_period
            if period is None or period.total_seconds() < PERIOD:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "The alignment period must be at least 60 seconds",
                )
            series = self._series(request)
            start = int(request.page_token or 0)
            page = series[start : start + self.max_series_per_page]
            more = start + self.max_series_per_page < len(series)
            return monitoring_v3.ListTimeSeriesResponse(
                time_series=page,
                next_page_token=str(start + self.max_series_per_page) if more else "",
            )

    def _series(self, request: Any) -> list[Any]:
        flt = request.filter
        metric = _match(r'metric\.type\s*=\s*"([^"]+)"', flt) or ""
        endpoint_id = _match(r'resource\.labels\.endpoint_id\s*=\s*"([^"]+)"', flt)
        one_of = _match(r"metric\.labels\.deployed_model_id\s*=\s*one_of\(([^)]*)\)", flt)
        ids = re.findall(r'"([^"]+)"', one_of or "")
        latency_type = _match(r'metric\.labels\.latency_type\s*=\s*"([^"]+)"', flt)
        if metric in self.custom:
            return self._custom(metric, ids, request)
        if not metric.startswith(PREFIX) or endpoint_id not in self.vertex.endpoints:
            return []
        model = self.models.get(endpoint_id)
        if model is None:
            return []
        history = self.vertex.endpoints[endpoint_id].history
        start = request.interval.start_time.timestamp()
        end = request.interval.end_time.timestamp()
        visible = self.vertex.clock.now() - self.lag
        periods = []
        pe = end
        while pe - PERIOD >= start:
            if pe <= visible:
                periods.append((pe - PERIOD, pe))
            pe -= PERIOD
        kind = metric[len(PREFIX) :]
        out = []
        for dm_id in ids:
            name = self.vertex.names.get(dm_id)
            if name is None or name not in model.sandbox.variants:
                continue
            types = [latency_type] if latency_type else ["model", "overhead", "total"]
            for ltype in types if kind == "prediction_latencies" else [None]:
                points = []
                for ps, pe in periods:
                    window = model.window(name, ps, pe, history)
                    value = self._value(kind, window, ltype)
                    if value is None:
                        continue  # no zero points
                    points.append(
                        monitoring_v3.Point(
                            interval=monitoring_v3.TimeInterval(
                                start_time=_ts(ps), end_time=_ts(pe)
                            ),
                            value=value,
                        )
                    )
                if not points:
                    continue
                labels = {"deployed_model_id": dm_id}
                if ltype:
                    labels["latency_type"] = ltype
                distribution = kind == "prediction_latencies"
                out.append(
                    monitoring_v3.TimeSeries(
                        metric={"type": metric, "labels": labels},
                        resource={
                            "type": "aiplatform.googleapis.com/Endpoint",
                            "labels": {
                                "resource_container": self.vertex.project,
                                "location": self.vertex.location,
                                "endpoint_id": endpoint_id,
                            },
                        },
                        metric_kind=metric_pb2.MetricDescriptor.MetricKind.DELTA,
                        value_type=(
                            metric_pb2.MetricDescriptor.ValueType.DISTRIBUTION
                            if distribution
                            else metric_pb2.MetricDescriptor.ValueType.INT64
                        ),
                        points=points,
                    )
                )
        return out

    def _custom(self, metric: str, ids: list[str], request: Any) -> list[Any]:
        start = request.interval.start_time.timestamp()
        end = request.interval.end_time.timestamp()
        out = []
        for dm_id in ids:
            value = self.custom[metric].get(self.vertex.names.get(dm_id, ""))
            if value is None:
                continue
            points = []
            pe = end
            while pe - PERIOD >= start:
                points.append(
                    monitoring_v3.Point(
                        interval=monitoring_v3.TimeInterval(
                            start_time=_ts(pe - PERIOD), end_time=_ts(pe)
                        ),
                        value=monitoring_v3.TypedValue(double_value=value),
                    )
                )
                pe -= PERIOD
            out.append(
                monitoring_v3.TimeSeries(
                    metric={"type": metric, "labels": {"deployed_model_id": dm_id}},
                    resource={"type": "global", "labels": {}},
                    metric_kind=metric_pb2.MetricDescriptor.MetricKind.GAUGE,
                    value_type=metric_pb2.MetricDescriptor.ValueType.DOUBLE,
                    points=points,
                )
            )
        return out

    @staticmethod
    def _value(kind: str, window: Any, latency_type: str | None) -> Any:
        if kind in ("prediction_count", "error_count"):
            count = window.requests if kind == "prediction_count" else window.errors
            return monitoring_v3.TypedValue(int64_value=count) if count else None
        if kind == "prediction_latencies" and window.requests and window.latency is not None:
            counts = list(window.latency.counts)
            if latency_type == "overhead":  # a few milliseconds of routing, not the model
                counts = [0] * len(counts)
                counts[2] = window.requests
            scale = 1000.0  # seconds -> milliseconds
            dist = distribution_pb2.Distribution(
                count=sum(counts),
                bucket_options=distribution_pb2.Distribution.BucketOptions(
                    explicit_buckets=distribution_pb2.Distribution.BucketOptions.Explicit(
                        bounds=[b * scale for b in LATENCY_BOUNDS]
                    )
                ),
                bucket_counts=_trim(counts),
            )
            return monitoring_v3.TypedValue(distribution_value=dist)
        return None


def _trim(counts: list[int]) -> list[int]:
    while counts and counts[-1] == 0:
        counts = counts[:-1]
    return counts


def _ts(seconds: float) -> Any:
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def _match(pattern: str, text: str) -> str | None:
    m = re.search(pattern, text)
    return m.group(1) if m else None
