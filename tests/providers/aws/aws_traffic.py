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

Shadow variants: the emulator's ``ShadowProductionVariants`` give the shadow a copy of its
sampling share of the live requests (the traffic model's mirror history: its own error rate and
latency), published under the shadow's variant name. When the endpoint's live config has
DataCapture on, each period also writes one capture file per variant that answered requests, in
SageMaker's layout (``{prefix}/{endpoint}/{variant}/yyyy/mm/dd/hh/MM-SS-mmm-<id>.jsonl``) into the
emulator's S3: the baseline's answers, and the shadow's answers to the copies (the same event id;
every third request also carries the caller's inference id). Outputs are ``{"predictions":
[label]}``: the baseline's label is a fair coin, the shadow's agrees with it with probability
``agreement[variant]`` (default 1); every seventh body is base64. With ``fixtures`` the first
file of each variant also holds a line of broken JSON, a record without ids and a base64 body
that does not decode (:data:`FIXTURES_PER_FILE` records that cannot pair).
"""

from __future__ import annotations

import base64
import json
import random
from datetime import UTC, datetime
from typing import Any

from mlrollout.clock import VirtualClock
from mlrollout.plan.model import Sandbox
from mlrollout.sandbox.traffic import LATENCY_BOUNDS, TrafficModel

PERIOD = 60.0
STEP = 10.0  # the traffic model's bucket: the clock notes the live weights this often
START = 1_700_000_040.0  # a whole minute, so periods and the model's 10 s buckets align

#: The records of the fixtures in each variant's first capture file: broken JSON, no ids (parsed,
#: never paired), an undecodable base64 body.
FIXTURES_PER_FILE = 3

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
        s3: Any = None,
        agreement: dict[str, float] | None = None,
        fixtures: bool = True,
        routes: Any = None,
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
        self.mirror_history: list[tuple[float, dict[str, float]]] = []
        self.s3 = s3
        self.seed = seed
        self.agreement = dict(agreement or {})
        self.fixtures = fixtures
        #: The application's own routing (a feature flag it evaluates per request): a callable
        #: giving ``{variant: percent}`` or ``None`` (then the endpoint's split routes).
        self.routes = routes
        self.captured: dict[str, int] = {}  # variant -> records written (fixtures included)
        self.capture_files: dict[str, int] = {}

    def note_weights(self, at: float) -> None:
        weights: dict[str, float] = {}
        routed = self.routes() if self.routes is not None else None
        split = (
            [(v, None, p) for v, p in routed.items()]
            if routed is not None
            else self.emulator.traffic_split(self.endpoint)
        )
        for variant, model, percent in split:
            profile = self.models.get(model or "", variant)
            weights[profile] = weights.get(profile, 0.0) + percent
            if percent > 0 or profile not in self.publish_as:
                self.publish_as[profile] = variant
        if not self.history or self.history[-1][1] != weights:
            self.history.append((at, weights))
        mirror = self.emulator.shadows(self.endpoint)
        last = self.mirror_history[-1][1] if self.mirror_history else {}
        if mirror != last:
            self.mirror_history.append((at, mirror))

    def publish_until(self, now: float) -> None:
        while self.published_until + PERIOD <= now:
            start = self.published_until
            data = []
            answered: dict[str, tuple[int, int]] = {}
            for variant in self.model.sandbox.variants:
                window = self.model.window(
                    variant, start, start + PERIOD, self.history, mirror=self.mirror_history
                )
                if not window.requests:
                    continue
                answered[variant] = (window.requests, window.errors or 0)
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
            self.capture(start, answered)
            self.published_until = start + PERIOD

    # ---------------------------------------------------------------------------- capture

    def capture(self, start: float, answered: dict[str, tuple[int, int]]) -> None:
        """DataCapture files of the period starting at ``start`` (see the module doc)."""
        if self.s3 is None or not answered:
            return
        config = self.emulator.capture_config(self.endpoint)
        if not config or not config.get("EnableCapture", True):
            return
        uri = str(config["DestinationS3Uri"])
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        prefix = prefix.strip("/")
        shadows = self.emulator.shadows(self.endpoint)
        live = [v for v in answered if v not in shadows]
        if not live:
            return
        baseline = live[0]
        n, errors = answered[baseline]
        rng = random.Random(f"{self.seed}:{start}")
        ok = [j for j in range(n) if rng.random() >= errors / n] if n else []
        labels = {j: rng.randint(0, 1) for j in range(n)}
        period = int(start // PERIOD)
        self._write(bucket, prefix, baseline, start, [(j, labels[j]) for j in ok], n, period)
        for shadow in shadows:
            if shadow not in answered:
                continue
            m, shadow_errors = answered[shadow]
            m = min(m, n)
            p = self.agreement.get(shadow, 1.0)
            rows = []
            for j in range(m):
                if rng.random() < shadow_errors / max(1, m):
                    continue  # the shadow failed on this copy: nothing captured
                label = labels[j] if rng.random() < p else 1 - labels[j]
                rows.append((j, label))
            self._write(bucket, prefix, shadow, start, rows, n, period)

    def _write(
        self,
        bucket: str,
        prefix: str,
        variant: str,
        start: float,
        rows: list[tuple[int, int]],
        n: int,
        period: int,
    ) -> None:
        lines = []
        for j, label in rows:
            at = datetime.fromtimestamp(start + j * PERIOD / max(1, n), UTC)
            body = json.dumps({"predictions": [label]})
            output = {"observedContentType": "application/json", "mode": "OUTPUT"}
            if j % 7 == 3:
                output |= {"data": base64.b64encode(body.encode()).decode(), "encoding": "BASE64"}
            else:
                output |= {"data": body, "encoding": "JSON"}
            meta = {
                "eventId": f"ev-{period}-{j}",
                "inferenceTime": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z",
            }
            if j % 3 == 0:
                meta["inferenceId"] = f"req-{period}-{j}"
            record = {
                "captureData": {
                    "endpointInput": {
                        "observedContentType": "text/csv",
                        "mode": "INPUT",
                        "data": f"{j},{period}",
                        "encoding": "CSV",
                    },
                    "endpointOutput": output,
                },
                "eventMetadata": meta,
                "eventVersion": "0",
            }
            lines.append(json.dumps(record))
        first = variant not in self.capture_files
        if self.fixtures and first:
            at = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            lines.append('{"captureData": {"endpointOutput": {"data": "{"predictions"')
            lines.append(
                json.dumps(
                    {
                        "captureData": {
                            "endpointOutput": {"data": '{"predictions": [1]}', "encoding": "JSON"}
                        },
                        "eventMetadata": {"inferenceTime": at},
                    }
                )
            )
            lines.append(
                json.dumps(
                    {
                        "captureData": {"endpointOutput": {"data": "%%%", "encoding": "BASE64"}},
                        "eventMetadata": {"eventId": f"broken-{variant}", "inferenceTime": at},
                    }
                )
            )
        if not lines:
            return
        moment = datetime.fromtimestamp(start, UTC)
        folder = f"{prefix + '/' if prefix else ''}{self.endpoint}/{variant}/{moment:%Y/%m/%d/%H}"
        key = f"{folder}/{moment:%M-%S}-000-{period:08x}{variant}.jsonl"
        self.s3.put_object(Bucket=bucket, Key=key, Body=("\n".join(lines) + "\n").encode())
        self.captured[variant] = self.captured.get(variant, 0) + len(lines)
        self.capture_files[variant] = self.capture_files.get(variant, 0) + 1


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
