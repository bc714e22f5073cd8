"""The sandbox's late labels and ratings: a look counts the buckets whose labels are in (they
arrive ``label_delay`` after the bucket ends) and the rest as waiting; mirrored copies are
labelled but never rated; a variant that simulates nothing says what to add."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from sandbox_world import FakeStore

from mlrollout.clock import VirtualClock
from mlrollout.engine.runner import Runner
from mlrollout.feedback import FeedbackQuery, QualityCounts
from mlrollout.plan.loader import parse_plan
from mlrollout.plan.model import Candidate, Sandbox
from mlrollout.sandbox.endpoint import LocalEndpoint, LocalMetrics
from mlrollout.sandbox.feedback import SandboxFeedback
from mlrollout.state.sqlite import SqliteStateStore

T0 = 1_700_000_000.0
MIN = 60.0


def world(label_delay: str = "10m", **variants: dict[str, Any]) -> Sandbox:
    return Sandbox.model_validate(
        {
            "seed": 11,
            "rps": 100,
            "label_delay": label_delay,
            "variants": variants
            or {
                "v6": {"error_rate": 0.01, "accuracy": 0.92, "feedback": 0.62},
                "v7": {"error_rate": 0.01, "accuracy": 0.80, "feedback": 0.50},
            },
        }
    )


def rollout(box: Sandbox, candidate_weight: float = 50.0) -> tuple[VirtualClock, SandboxFeedback]:
    """An endpoint whose candidate v7 takes ``candidate_weight`` % from T0 on."""
    clock = VirtualClock(T0)
    endpoint = LocalEndpoint("shop", box, FakeStore(), clock, grid=60.0)
    endpoint.describe()
    endpoint.prepare(Candidate(name="v7"), "v6")
    endpoint.set_traffic({"v6": 100.0 - candidate_weight, "v7": candidate_weight})
    return clock, SandboxFeedback(LocalMetrics(endpoint))


def look(clock: VirtualClock, source: SandboxFeedback, minute: float) -> dict[str, QualityCounts]:
    clock.set(T0 + minute * MIN)
    return source.read(FeedbackQuery(T0, T0 + minute * MIN, ("v6", "v7")))


def test_a_look_before_the_label_delay_has_every_prediction_waiting() -> None:
    clock, source = rollout(world())
    counts = look(clock, source, 5)
    for name in ("v6", "v7"):
        c = counts[name]
        assert c.error is None
        assert c.labelled == 0 and c.confusion == {}
        # 5 minutes at 50 rps, less the errors: all predicted, none labelled yet
        assert 0.9 * 15_000 < c.waiting < 1.1 * 15_000
        assert c.feedback == (0, 0) and c.feedback_waiting == c.waiting


def test_at_minute_15_the_first_five_minutes_are_labelled_and_the_rest_wait() -> None:
    clock, source = rollout(world())
    early = look(clock, source, 5)
    counts = look(clock, source, 15)
    for name, accuracy, rate in (("v6", 0.92, 0.62), ("v7", 0.80, 0.50)):
        c = counts[name]
        # The labelled predictions are exactly those the look at minute 5 saw waiting.
        assert c.labelled == early[name].waiting
        assert 0.9 * 30_000 < c.waiting < 1.1 * 30_000  # minutes 5 to 15, at 50 rps
        n = c.labelled
        assert abs(c.correct / n - accuracy) < 4.5 * math.sqrt(accuracy * (1 - accuracy) / n)
        assert set(c.confusion) <= {("1", "1"), ("1", "0"), ("0", "1"), ("0", "0")}
        assert c.feedback is not None
        positive, rated = c.feedback
        assert rated == n and c.feedback_waiting == c.waiting
        assert abs(positive / rated - rate) < 4.5 * math.sqrt(rate * (1 - rate) / rated)


def test_looks_are_cumulative_and_the_same_in_a_fresh_process() -> None:
    clock, source = rollout(world())
    seen = [look(clock, source, m) for m in (11, 12, 13, 20)]
    labelled = [c["v7"].labelled for c in seen]
    assert labelled == sorted(labelled) and labelled[0] > 0
    clock2, fresh = rollout(world())
    again = look(clock2, fresh, 20)
    assert again["v7"].to_dict() == seen[-1]["v7"].to_dict()
    assert again["v6"].to_dict() == seen[-1]["v6"].to_dict()


def test_without_a_delay_every_finished_bucket_is_labelled() -> None:
    clock, source = rollout(world("0s"))
    counts = look(clock, source, 10)
    assert counts["v7"].waiting == 0 and counts["v7"].labelled > 0


def test_a_look_never_counts_a_bucket_that_has_not_ended_by_now() -> None:
    clock, source = rollout(world("0s"))
    clock.set(T0 + 5.5 * MIN)
    counts = source.read(FeedbackQuery(T0, T0 + 5.5 * MIN, ("v7",)))
    # A fresh source with the clock on the boundary: the same five buckets.
    clock2, fresh = rollout(world("0s"))
    five = look(clock2, fresh, 5)
    assert counts["v7"].labelled == five["v7"].labelled


def test_mirrored_copies_are_labelled_but_not_rated() -> None:
    box = world("0s")
    clock = VirtualClock(T0)
    endpoint = LocalEndpoint("shop", box, FakeStore(), clock, grid=60.0)
    endpoint.describe()
    endpoint.prepare(Candidate(name="v7"), "v6")
    endpoint.set_shadow("v7", 100)
    source = SandboxFeedback(LocalMetrics(endpoint))
    counts = look(clock, source, 10)
    shadow, live = counts["v7"], counts["v6"]
    assert shadow.labelled > 50_000 and shadow.waiting == 0
    assert shadow.feedback is None  # nobody saw a mirrored answer
    assert live.feedback is not None and live.feedback[1] == live.labelled


def test_a_variant_without_labels_or_ratings_is_an_error_that_names_the_key() -> None:
    box = world("0s", v6={"accuracy": 0.9}, v7={"error_rate": 0.01})
    clock, source = rollout(box)
    counts = look(clock, source, 5)
    assert counts["v6"].error is None and counts["v6"].labelled > 0
    assert counts["v6"].feedback is None  # it simulates no ratings: no data, not an error
    error = counts["v7"].error
    assert error is not None and "accuracy" in error and "feedback" in error


def test_before_the_endpoint_exists_there_is_nothing_to_count() -> None:
    clock = VirtualClock(T0)
    endpoint = LocalEndpoint("shop", world(), FakeStore(), clock, grid=60.0)
    source = SandboxFeedback(LocalMetrics(endpoint))
    counts = source.read(FeedbackQuery(T0, T0 + 60, ("v6", "v7")))
    assert all(c.labelled == 0 and c.waiting == 0 and c.error is None for c in counts.values())


PLANS = Path(__file__).parents[3] / "plans"


def run_plan(tmp_path: Path, text: str) -> tuple[str, list[Any]]:
    store = SqliteStateStore(tmp_path / "state.db")
    runner = Runner(store)
    record = runner.create(parse_plan(text, "plan.yaml"))
    outcome = runner.drive(record.id)
    events = store.events(record.id)
    store.close()
    return outcome.phase.value, events


def test_the_example_plan_holds_while_labels_wait_then_rolls_back_on_accuracy(
    tmp_path: Path,
) -> None:
    """plans/local-quality-gates.yaml through the real runner: the looks of the first 10
    minutes journal every prediction as waiting (the quality gates hold); once labels arrive,
    the candidate's accuracy 0.80 against 0.92 rolls it back."""
    phase, events = run_plan(tmp_path, (PLANS / "local-quality-gates.yaml").read_text())
    assert phase == "rolled_back"
    start = next(e.at for e in events if e.kind == "set_traffic.applied")
    looks = [e for e in events if "quality" in e.data]
    early = [e.data["quality"] for e in looks if e.at - start <= 10 * MIN]
    assert len(early) == 10
    for quality in early:
        assert quality["v7"]["labelled"] == 0 and quality["v7"]["waiting"] > 0
    [failed] = [e for e in events if e.kind == "analysis.failed"]
    assert failed.at - start > 10 * MIN  # not before any label arrived
    assert "accuracy" in failed.data["reason"]
    q = failed.data["quality"]
    for name, accuracy in (("v6", 0.92), ("v7", 0.80)):
        n = q[name]["labelled"]
        assert n > 1000 and q[name]["waiting"] > 0
        sd = math.sqrt(accuracy * (1 - accuracy) / n)
        assert abs(q[name]["correct"] / n - accuracy) < 4.5 * sd


def test_with_equal_quality_the_same_plan_is_promoted(tmp_path: Path) -> None:
    text = (PLANS / "local-quality-gates.yaml").read_text()
    text = text.replace("accuracy: 0.80, feedback: 0.50", "accuracy: 0.92, feedback: 0.62")
    phase, events = run_plan(tmp_path, text)
    assert phase == "succeeded", [e.data.get("reason") for e in events if "reason" in e.data]


def test_the_predictions_are_the_metrics_responses_with_users_and_a_mirror() -> None:
    """The feedback windows are the metrics' windows: the same history, sticky users and
    mirror, so every response of a variant (requests less errors) is a prediction, labelled
    or waiting."""
    from mlrollout.contracts import MetricsQuery
    from mlrollout.plan.model import Gate

    box = Sandbox.model_validate(
        {
            "seed": 5,
            "rps": 200,
            "label_delay": "3m",
            "users": {"count": 5000, "attributes": {"region": ["eu", "us"]}},
            "variants": {
                "v6": {"error_rate": 0.02, "accuracy": 0.9, "feedback": 0.6},
                "v7": {"error_rate": 0.05, "accuracy": 0.8, "feedback": 0.5},
                "v8": {"error_rate": 0.01, "accuracy": 0.85},
            },
        }
    )
    clock = VirtualClock(T0)
    endpoint = LocalEndpoint("shop", box, FakeStore(), clock, grid=60.0)
    endpoint.describe()
    endpoint.prepare(Candidate(name="v7"), "v6")
    endpoint.prepare(Candidate(name="v8"), "v6")
    endpoint.set_traffic({"v6": 70.0, "v7": 30.0, "v8": 0.0})
    clock.advance(4 * MIN)
    endpoint.set_shadow("v8", 50)
    clock.advance(6 * MIN)
    metrics = LocalMetrics(endpoint)
    gate = Gate.model_validate({"name": "errors", "metric": "error_rate", "max": 0.1})
    windows = metrics.query(MetricsQuery(T0, T0 + 10 * MIN, ("v6", "v7", "v8"), (gate,), 60))
    counts = SandboxFeedback(metrics).read(FeedbackQuery(T0, T0 + 10 * MIN, ("v6", "v7", "v8")))
    for name in ("v6", "v7", "v8"):
        window, c = windows[name], counts[name]
        assert window.requests is not None and window.errors is not None
        assert c.labelled + c.waiting == window.requests - window.errors > 0
        assert c.labelled > 0 and c.waiting > 0  # 3 minutes of labels still out
    assert counts["v8"].feedback is None  # a mirror alone is rated by nobody
    assert counts["v7"].feedback is not None
    assert counts["v7"].feedback[1] == counts["v7"].labelled
