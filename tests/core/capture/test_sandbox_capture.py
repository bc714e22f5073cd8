"""The sandbox's capture: simulated predictions of the mirrored requests, paired as many as the
metrics say the candidate was mirrored, agreeing as the variants' accuracies imply, drifting
with ``output_shift``; reproducible, and counted per bucket (never per request)."""

from __future__ import annotations

import math
from typing import Any

from sandbox_world import FakeStore

from mlrollout.analysis import GateSet, Outcome
from mlrollout.capture import CaptureQuery, capture_source
from mlrollout.capture.jsonl import JsonlCapture
from mlrollout.clock import VirtualClock
from mlrollout.contracts import MetricsQuery, ProviderContext, Window
from mlrollout.plan.model import Analysis, Candidate, Gate, Plan, Sandbox
from mlrollout.sandbox.capture import SandboxCapture
from mlrollout.sandbox.endpoint import LocalEndpoint, LocalMetrics
from mlrollout.sandbox.provider import LocalProviderSpec

T0 = 1_700_000_000.0
MIN = 60.0


def shadow(v7: dict[str, Any], percent: float = 50, minutes: float = 20) -> LocalMetrics:
    box = Sandbox.model_validate(
        {"seed": 7, "rps": 100, "variants": {"v6": {"accuracy": 0.95}, "v7": v7}}
    )
    clock = VirtualClock(T0)
    ep = LocalEndpoint("shop", box, FakeStore(), clock, grid=60.0)
    ep.describe()
    ep.prepare(Candidate(name="v7"), "v6")
    ep.set_shadow("v7", percent)
    clock.advance(minutes * MIN)
    return LocalMetrics(ep)


def query(end: float = T0 + 20 * MIN) -> CaptureQuery:
    return CaptureQuery(T0, end, "v6", "v7", "$")


GATE = (Gate.model_validate({"name": "e", "metric": "error_rate", "max": 0.5}),)


def test_pairs_are_the_mirrored_requests_and_agree_as_the_accuracies_imply() -> None:
    metrics = shadow({"accuracy": 0.95, "error_rate": 0.02})
    s = SandboxCapture(metrics).read(query())
    window = metrics.query(MetricsQuery(T0, T0 + 20 * MIN, ("v7",), GATE, 60))["v7"]
    assert window.requests is not None and window.errors is not None
    answered = window.requests - window.errors
    assert s.records["v7"] == answered  # every mirrored answer is a record
    assert s.paired <= answered and s.paired > 0.97 * answered  # the baseline fails ~0 %
    expected = 0.95 * 0.95 + 0.05 * 0.05
    sd = math.sqrt(expected * (1 - expected) / s.paired)
    assert abs(s.agreed / s.paired - expected) < 5 * sd
    assert s.bins is not None and s.bins.categories == ("0", "1")
    assert sum(s.counts["v7"]) == s.records["v7"]
    # The same window gives the same summary in another process (a fresh source).
    again = SandboxCapture(shadow({"accuracy": 0.95, "error_rate": 0.02})).read(query())
    assert (again.paired, again.agreed, again.counts) == (s.paired, s.agreed, s.counts)


def test_each_bucket_is_drawn_once_over_the_looks() -> None:
    metrics = shadow({"accuracy": 0.9})
    source = SandboxCapture(metrics)
    first = source.read(query(T0 + 10 * MIN))
    assert source.drawn == 10
    second = source.read(query(T0 + 20 * MIN))
    assert source.drawn == 20 and second.paired > first.paired


def test_an_output_shift_makes_the_shadow_drift_and_the_drift_gate_fail() -> None:
    metrics = shadow({"accuracy": 0.95, "output_shift": 0.6}, percent=100, minutes=20)
    s = SandboxCapture(metrics).read(query())
    ones = s.counts["v7"][1] / sum(s.counts["v7"])
    assert abs(ones - (0.6 + 0.4 * 0.5)) < 0.02
    analysis = Analysis.model_validate(
        {
            "gates": [
                {"name": "drift", "metric": "prediction_drift", "max": 0.2},
                {"name": "agree", "metric": "agreement", "min": "97%"},
            ]
        }
    )
    verdict = GateSet.from_plan(analysis).look(Window(requests=1, predictions=s), Window())
    assert [v.outcome for v in verdict.gates] == [Outcome.FAIL, Outcome.FAIL]


def test_a_variant_without_accuracy_simulates_no_predictions() -> None:
    s = SandboxCapture(shadow({})).read(query())
    assert s.error is not None and "accuracy" in s.error


def test_the_local_provider_gives_its_capture_through_capture_source() -> None:
    data: dict[str, Any] = {
        "version": 1,
        "name": "s",
        "target": {"provider": "local", "endpoint": "shop"},
        "candidate": {"name": "v7"},
        "strategy": {"type": "shadow", "percent": 50, "duration": "10m"},
        "analysis": {"gates": [{"name": "a", "metric": "agreement", "min": "97%"}]},
        "sandbox": {"variants": {"v6": {"accuracy": 0.9}, "v7": {"accuracy": 0.9}}},
    }
    plan = Plan.model_validate(data)
    context = ProviderContext(plan=plan, clock=VirtualClock(T0), store=FakeStore())  # type: ignore[arg-type]
    source = capture_source(plan, context)
    assert isinstance(source, SandboxCapture)
    assert callable(LocalProviderSpec.open_capture)  # type: ignore[attr-defined]
    data["capture"] = {"source": {"jsonl": "/tmp/x"}}
    assert isinstance(capture_source(Plan.model_validate(data), context), JsonlCapture)


def test_looks_over_a_shadow_as_the_engine_makes_them() -> None:
    # Each look reads the stage's cumulative window with the bins fixed at its first look;
    # an agreeing shadow passes both gates, one whose outputs drift fails both.
    analysis = Analysis.model_validate(
        {
            "min_requests": 200,
            "gates": [
                {"name": "agree", "metric": "agreement", "min": "95%"},
                {"name": "drift", "metric": "prediction_drift", "max": 0.2},
            ],
        }
    )
    for v7, expected in (
        ({"accuracy": 0.99}, Outcome.PASS),
        ({"accuracy": 0.99, "output_shift": 0.5}, Outcome.FAIL),
    ):
        box = Sandbox.model_validate(
            {"seed": 9, "rps": 20, "variants": {"v6": {"accuracy": 0.99}, "v7": v7}}
        )
        clock = VirtualClock(T0)
        ep = LocalEndpoint("shop", box, FakeStore(), clock, grid=60.0)
        ep.describe()
        ep.prepare(Candidate(name="v7"), "v6")
        ep.set_shadow("v7", 100)
        source, gates = SandboxCapture(LocalMetrics(ep)), GateSet.from_plan(analysis)
        bins = None
        outcomes: list[Outcome] = []
        for k in range(1, 31):
            clock.advance(MIN)
            s = source.read(CaptureQuery(T0, clock.now(), "v6", "v7", "$", 0.0, bins))
            bins = bins or s.bins
            verdict = gates.look(
                Window(requests=s.paired, predictions=s), Window(), look=k, horizon=30
            )
            outcomes = [v.outcome for v in verdict.gates]
            if all(o is expected for o in outcomes):
                break
        assert outcomes == [expected, expected], (v7, k, verdict.reasons)
