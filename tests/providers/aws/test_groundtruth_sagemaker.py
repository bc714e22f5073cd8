"""SageMaker Model Monitor's ground truth through boto3 against moto's S3: an endpoint capturing
to S3, DataCapture files and ground-truth files written in SageMaker's layouts (hourly folders;
ground truth keyed by ``eventMetadata.eventId`` = the inference id, else the event id), broken
lines in both, and the feedback source joining them per variant — directly, and as the runner
opens it for ``feedback: {source: {jsonl: s3://...}}`` with the provider's capture."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

from mlrollout_aws._aws import RetryPolicy
from mlrollout_aws.capture import DataCaptureSource, hour_prefix
from mlrollout_aws.groundtruth import DataCapturePredictions, GroundTruthFeedback
from mlrollout_aws.objects import S3Files

from mlrollout.clock import VirtualClock
from mlrollout.contracts import ProviderContext
from mlrollout.feedback import FeedbackQuery, feedback_query, feedback_source
from mlrollout.feedback.jsonl import JsonlFeedback
from mlrollout.plan.loader import parse_plan
from mlrollout.state.sqlite import SqliteStateStore

CAPTURE = "capture-bucket"
TRUTH = "truth-bucket"
H0 = 490_000 * 3600.0  # an hour boundary (2025-11-24 16:00 UTC)
FAST = RetryPolicy(base=0.001, cap=0.01)


def endpoint(world: Any) -> None:
    """churn: v1 and v2 serving half each, capturing to s3://capture-bucket/dc."""
    for model in ("churn-v1", "churn-v2"):
        world.model(model)
    base = {"InstanceType": "ml.m5.large", "InitialInstanceCount": 1, "InitialVariantWeight": 0.5}
    world.sagemaker.create_endpoint_config(
        EndpointConfigName="split",
        ProductionVariants=[
            {**base, "VariantName": "v1", "ModelName": "churn-v1"},
            {**base, "VariantName": "v2", "ModelName": "churn-v2"},
        ],
        DataCaptureConfig={
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": f"s3://{CAPTURE}/dc",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        },
    )
    world.sagemaker.create_endpoint(EndpointName="churn", EndpointConfigName="split")
    world.s3.create_bucket(Bucket=CAPTURE)
    world.s3.create_bucket(Bucket=TRUTH)


def capture_line(variant: str, n: int, t: float, prediction: str) -> tuple[str, str]:
    """One DataCapture record (CSV output); every third request has no inference id."""
    event = f"ev-{variant}-{n}"
    meta: dict[str, str] = {
        "eventId": event,
        "inferenceTime": datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }
    if n % 3:
        meta["inferenceId"] = f"req-{variant}-{n}"
    record = {
        "captureData": {
            "endpointInput": {"observedContentType": "text/csv", "mode": "INPUT",
                              "data": "5,2.5,1", "encoding": "CSV"},
            "endpointOutput": {"observedContentType": "text/csv", "mode": "OUTPUT",
                               "data": prediction, "encoding": "CSV"},
        },
        "eventMetadata": meta,
        "eventVersion": "0",
    }  # fmt: skip
    return json.dumps(record), meta.get("inferenceId", event)


def truth_line(key: str, label: str) -> str:
    return json.dumps(
        {
            "groundTruthData": {"data": label, "encoding": "CSV"},
            "eventMetadata": {"eventId": key},
            "eventVersion": "0",
        }
    )


def folder(hour: float) -> str:
    return datetime.fromtimestamp(hour, UTC).strftime("%Y/%m/%d/%H")


def traffic(world: Any, accuracy: dict[str, float], n: int = 300) -> dict[str, dict[Any, int]]:
    """``n`` requests per variant in the first hour, labels for the first 80 % uploaded in the
    next hour; broken lines in both. Returns the expected confusion per variant."""
    rng = random.Random(18)
    expected: dict[str, dict[Any, int]] = {}
    truth: list[str] = []
    for variant, acc in accuracy.items():
        lines, cells = [], expected.setdefault(variant, {"waiting": 0})
        for i in range(n):
            label = rng.choice("01")
            prediction = label if rng.random() < acc else ("1" if label == "0" else "0")
            line, key = capture_line(variant, i, H0 + 10 * i, prediction)
            lines.append(line)
            if i < 0.8 * n:
                truth.append(truth_line(key, label))
                cells[(label, prediction)] = cells.get((label, prediction), 0) + 1
            else:
                cells["waiting"] += 1
        lines.insert(5, '{"captureData": {"endpointOutput": {"da')  # broken JSON
        name = f"{hour_prefix('dc', 'churn', variant, int(H0 // 3600))}capture-000.jsonl"
        world.s3.put_object(Bucket=CAPTURE, Key=name, Body="\n".join(lines).encode())
    truth.insert(3, "not json")
    truth.insert(7, json.dumps({"groundTruthData": {"encoding": "CSV"}, "eventMetadata": {}}))
    world.s3.put_object(
        Bucket=TRUTH,
        Key=f"gt/churn/{folder(H0 + 3600)}/labels-1.jsonl",
        Body="\n".join(truth).encode(),
    )
    return expected


def source(world: Any) -> GroundTruthFeedback:
    retry = RetryPolicy(base=0.001, cap=0.01, sleep=world.clock.sleep)
    capture = DataCaptureSource("churn", world.s3, world.sagemaker, retry=retry)
    return GroundTruthFeedback(
        DataCapturePredictions(capture), world.s3, f"s3://{TRUTH}/gt/churn/", retry=retry
    )


def f1(cells: dict[Any, int], positive: str = "1") -> float:
    tp = cells.get((positive, positive), 0)
    fp = sum(n for (label, pred), n in cells.items() if pred == positive and label != positive)
    fn = sum(n for (label, pred), n in cells.items() if label == positive and pred != positive)
    return 2 * tp / (2 * tp + fp + fn)


def test_ground_truth_is_joined_to_each_variants_capture_by_inference_then_event_id(world):
    endpoint(world)
    expected = traffic(world, {"v1": 0.92, "v2": 0.70})
    counts = source(world).read(FeedbackQuery(H0, H0 + 2 * 3600, ("v1", "v2")))
    for variant in ("v1", "v2"):
        c = counts[variant]
        assert c.error is None, c.error
        cells = dict(expected[variant])
        assert c.waiting == cells.pop("waiting") == 60
        assert c.confusion == cells
        assert c.labelled == 240
        assert c.feedback is None  # ground truth has no ratings
    # The broken lines: one capture line per variant; the two ground-truth lines are the
    # source's, on the first variant.
    assert (counts["v1"].broken, counts["v2"].broken) == (1 + 2, 1)
    assert counts["v1"].unmatched == 0
    # What an F1 gate with positive "1" reads: the candidate is clearly worse.
    assert f1(counts["v2"].confusion) < f1(counts["v1"].confusion) - 0.1


def test_the_next_look_reads_only_new_files_and_gives_a_fresh_reads_counts(world):
    endpoint(world)
    traffic(world, {"v1": 0.9, "v2": 0.9}, n=30)
    feedback = source(world)
    query = FeedbackQuery(H0, H0 + 2 * 3600, ("v1", "v2"))
    first = feedback.read(query)
    assert first["v1"].waiting == 6
    labels = feedback._labels
    assert labels is not None and isinstance(labels.files, S3Files)
    capture = feedback._predictions.capture
    gets, label_reads = capture.gets, labels.reads
    late = [truth_line(f"req-v1-{i}", "1") for i in (25, 26)]
    world.s3.put_object(
        Bucket=TRUTH, Key=f"gt/churn/{folder(H0 + 3600)}/labels-2.jsonl", Body="\n".join(late)
    )
    second = feedback.read(query)
    assert capture.gets == gets  # no capture file is new
    assert labels.reads == label_reads + 1  # only the new ground-truth file
    assert second["v1"].waiting == 4 and second["v1"].labelled == first["v1"].labelled + 2
    fresh = source(world).read(query)
    assert {v: c.to_dict() for v, c in fresh.items()} == {v: c.to_dict() for v, c in second.items()}


def test_a_missing_ground_truth_location_is_an_error_that_names_the_key(world):
    endpoint(world)
    feedback = source(world)
    feedback.labels_uri = None
    counts = feedback.read(FeedbackQuery(H0, H0 + 60, ("v1", "v2")))
    error = counts["v1"].error
    assert error is not None and "feedback.source: {jsonl: s3://" in error


def test_a_missing_bucket_is_an_error_measurement_not_a_crash(world):
    endpoint(world)
    feedback = source(world)
    feedback.labels_uri = "s3://no-such-bucket/gt/"
    counts = feedback.read(FeedbackQuery(H0, H0 + 60, ("v1", "v2")))
    error = counts["v2"].error
    assert error is not None and "'no-such-bucket' does not exist" in error


PLAN = """
version: 1
name: churn-f1
target: {{provider: sagemaker, endpoint: churn, region: us-east-1, endpoint_url: "{url}"}}
candidate: {{name: v2, model: churn-v2, instance_type: ml.m5.large}}
strategy: {{type: canary, steps: [{{weight: 50}}, {{analyze: 10m}}]}}
analysis:
  gates: [{{name: f1, metric: f1, positive: "1", vs_baseline: {{max_decrease: 2pp}}}}]
feedback: {{source: {{jsonl: "s3://{bucket}/gt/churn/"}}}}
"""


def test_jsonl_feedback_on_s3_joins_the_providers_datacapture(world, tmp_path):
    endpoint(world)
    expected = traffic(world, {"v1": 0.92, "v2": 0.70})
    plan = parse_plan(PLAN.format(url=world.url, bucket=TRUTH), "plan.yaml").plan
    store = SqliteStateStore(tmp_path / "s.db")
    context = ProviderContext(plan, VirtualClock(H0 + 2 * 3600), store)
    feedback = feedback_source(plan, context)
    assert isinstance(feedback, JsonlFeedback)
    counts = feedback.read(feedback_query(plan, H0, H0 + 2 * 3600, ("v1", "v2")))
    for variant in ("v1", "v2"):
        cells = dict(expected[variant])
        assert counts[variant].error is None, counts[variant].error
        assert counts[variant].waiting == cells.pop("waiting")
        assert counts[variant].confusion == cells
    store.close()


E2E_PLAN = """\
version: 1
name: churn-v2-f1
target:
  provider: sagemaker
  endpoint: churn
  region: us-east-1
  endpoint_url: {url}
  capture_s3_uri: s3://capture-bucket/dc
candidate: {{name: v2, model: churn-v2, instance_type: ml.m5.large, instance_count: 1}}
strategy:
  type: canary
  steps: [{{weight: 50}}, {{analyze: {{min: 5m, max: 30m}}}}, {{weight: 100}}]
analysis:
  interval: 60s
  delay: 60s
  min_requests: 100
  max_hold: 5m
  gates:
    - {{name: errors, metric: error_rate, vs_baseline: {{max_increase: 0.5pp}}}}
    - {{name: f1, metric: f1, positive: "1", min_labels: 200, vs_baseline: {{max_decrease: 2pp}}}}
capture: {{source: default, output: $}}
feedback: {{source: {{jsonl: "s3://truth-bucket/gt/churn/"}}}}
"""


def test_a_rollout_on_the_emulator_is_rolled_back_by_its_f1_gate(world):
    """The real runner on the emulator: DataCapture and ground-truth files in SageMaker's
    layouts (one capture file per variant and hour, ground truth in its hour folders, broken
    lines in both) drive the F1 gate to a rollback; the looks journal the joined counts."""
    from aws_traffic import GOOD, START

    from mlrollout.engine.runner import Runner
    from mlrollout.errors import ExitCode
    from mlrollout.plan.loader import load_plan

    world.endpoint()
    world.traffic(v1=GOOD, v2=GOOD)
    world.s3.create_bucket(Bucket=CAPTURE)
    world.s3.create_bucket(Bucket=TRUTH)
    rng = random.Random(7)
    truth: dict[str, list[str]] = {}
    for variant, accuracy in (("v1", 0.92), ("v2", 0.70)):
        files: dict[str, list[str]] = {}
        for i in range(3600):  # one a second per variant, for an hour
            t = START + i
            label = rng.choice("01")
            prediction = label if rng.random() < accuracy else ("1" if label == "0" else "0")
            line, key = capture_line(variant, i, t, prediction)
            prefix = hour_prefix("dc", "churn", variant, int(t // 3600))
            files.setdefault(prefix, []).append(line)
            truth.setdefault(folder(t), []).append(truth_line(key, label))
        for prefix, lines in files.items():
            lines.insert(1, "{broken")
            world.s3.put_object(Bucket=CAPTURE, Key=f"{prefix}capture.jsonl", Body="\n".join(lines))
    for hour, lines in truth.items():
        lines.insert(2, '{"groundTruthData": 1}')
        world.s3.put_object(
            Bucket=TRUTH, Key=f"gt/churn/{hour}/labels.jsonl", Body="\n".join(lines).encode()
        )
    plan = world.tmp_path / "f1.yaml"
    plan.write_text(E2E_PLAN.format(url=world.url))
    store = SqliteStateStore(world.tmp_path / "state.db")
    runner = Runner(store)
    record = runner.create(load_plan(str(plan)))
    outcome = runner.drive(record.id, clock=world.clock)
    events = store.events(record.id)
    store.close()
    assert outcome.exit_code == ExitCode.ROLLED_BACK, outcome.state.reason
    [failed] = [e for e in events if e.kind == "analysis.failed"]
    assert "f1" in failed.data["reason"]
    quality = failed.data["quality"]
    assert quality["v1"]["labelled"] >= 200 and quality["v2"]["labelled"] >= 200
    # the broken lines, counted and reported: a capture line per variant, a ground-truth line
    # per hour file (the source's: on the first variant the engine asks for, the candidate)
    assert quality["v1"]["broken"] == 1 and quality["v2"]["broken"] == 1 + len(truth)
    assert f1({tuple(c[:2]): c[2] for c in quality["v2"]["confusion"]}) < 0.8
