"""Synthetic SageMaker traffic on the injected clock, published to the emulator's CloudWatch.

The same seeded profiles as the ``local`` sandbox (:class:`mlrollout.sandbox.traffic.TrafficModel`:
error rate, p50/p99 latency per variant, requests split by the live weights) are cut into one-minute
periods and published with ``PutMetricData`` through boto3, as SageMaker would: ``Invocations``,
``Invocation5XXErrors`` and ``ModelLatency`` (microseconds, as a ``Values``/``Counts`` distribution
over the histogram's buckets), per ``EndpointName`` + ``VariantName``. A variant without traffic in
a period publishes nothing (as SageMaker).

:class:`TrafficClock` is a :class:`~mlrollout.clock.VirtualClock` whose ``sleep`` first notes the
live weights (read from the emulator, every ten virtual seconds of a longer sleep) and then
publishes every period completed by the new time, so the engine, the adapter's waits and the
retries all move simulated traffic along.

During a native blue/green deployment the emulator reports two fleets per variant
(:meth:`AwsEmulator.traffic_split`); with ``models`` (model name → profile) each fleet behaves as
its model's profile, and both publish under the variant's own name, as SageMaker does: one
variant's metrics for both fleets, blue's behaviour on blue's share, green's on green's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mlrollout.clock import VirtualClock
from mlrollout.plan.model import Sandbox
from mlrollout.sandbox.traffic import LATENCY_BOUNDS, TrafficModel

PERIOD = 60.0
STEP = 10.0  # the traffic model's bucket: the clock notes the live weights this often
START = 1_700_000_040.0  # a whole minute, so periods and the model's 10 s buckets align

GOOD = {"error_rate": 0.01, "latency_p50": "40ms", "latency_p99": "120ms"}
BAD = {"error_rate": 0.08, "latency_p50": "60ms", "latency_p99": "400ms"}


class SageMakerTraffic:
    def __init__(
        self,
        emulator: Any,
        cloudwatch: Any,
        endpoint: str,
        profiles: dict[str, dict[str, Any]],
        *,
        rps: float = 20.0,
        seed: int = 7,
        origin: float = START,
        models: dict[str, str] | None = None,
    ) -> None:
        self.emulator = emulator
        self.cloudwatch = cloudwatch
        self.endpoint = endpoint
        sandbox = Sandbox.model_validate({"seed": seed, "rps": rps, "variants": profiles})
        self.model = TrafficModel(sandbox, origin)
        self.history: list[tuple[float, dict[str, float]]] = []
        self.published_until = origin
        #: model name -> profile: who behaves how when a fleet runs that model (native blue/green:
        #: blue and green share a variant name, and a promoted green keeps it).
        self.models = dict(models or {})
        self.publish_as: dict[str, str] = {}  # profile -> the variant name its metrics carry

    def note_weights(self, at: float) -> None:
        weights: dict[str, float] = {}
        for variant, model, percent in self.emulator.traffic_split(self.endpoint):
            profile = self.models.get(model or "", variant)
            weights[profile] = weights.get(profile, 0.0) + percent
            if percent > 0 or profile not in self.publish_as:
                self.publish_as[profile] = variant
        if not self.history or self.history[-1][1] != weights:
            self.history.append((at, weights))

    def publish_until(self, now: float) -> None:
        while self.published_until + PERIOD <= now:
            start = self.published_until
            data = []
            for variant in self.model.sandbox.variants:
                window = self.model.window(variant, start, start + PERIOD, self.history)
                if not window.requests:
                    continue
                dims = [
                    {"Name": "EndpointName", "Value": self.endpoint},
                    {"Name": "VariantName", "Value": self.publish_as.get(variant, variant)},
                ]
                at = datetime.fromtimestamp(start, UTC)
                assert window.latency is not None
                values, counts = [], []
                for i, count in enumerate(window.latency.counts):
                    if count:
                        low = LATENCY_BOUNDS[i - 1] if i > 0 else 0.0
                        high = LATENCY_BOUNDS[i] if i < len(LATENCY_BOUNDS) else low * 1.5
                        values.append(round((low + high) / 2 * 1e6, 1))  # microseconds
                        counts.append(float(count))
                data += [
                    {"MetricName": "Invocations", "Dimensions": dims, "Timestamp": at,
                     "Value": float(window.requests), "Unit": "Count"},
                    {"MetricName": "Invocation5XXErrors", "Dimensions": dims, "Timestamp": at,
                     "Value": float(window.errors or 0), "Unit": "Count"},
                    {"MetricName": "ModelLatency", "Dimensions": dims, "Timestamp": at,
                     "Values": values, "Counts": counts, "Unit": "Microseconds"},
                ]  # fmt: skip
            if data:
                self.cloudwatch.put_metric_data(Namespace="AWS/SageMaker", MetricData=data)
            self.published_until = start + PERIOD


class TrafficClock(VirtualClock):
    """Virtual time that moves the simulated traffic along (see the module doc)."""

    def __init__(self, start: float = START) -> None:
        super().__init__(start)
        self.traffic: list[SageMakerTraffic] = []

    def sleep(self, seconds: float) -> None:
        # In steps of at most STEP: the platform may move traffic by itself meanwhile (a native
        # blue/green deployment), and the traffic follows it within one step.
        while seconds > 0:
            step = min(seconds, STEP)
            for t in self.traffic:
                t.note_weights(self.now())
            super().sleep(step)
            seconds -= step
            for t in self.traffic:
                t.publish_until(self.now())
