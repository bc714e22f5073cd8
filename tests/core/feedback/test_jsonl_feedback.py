"""``feedback: {source: {jsonl: PATH-or-URI}}``: labels and ratings joined, by inference id (else
event id), to each variant's predictions from ``capture: {source: {jsonl: ...}}``; late labels
wait; broken lines are counted, never fatal; the readers keep what they read between looks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlrollout.clock import VirtualClock
from mlrollout.contracts import ProviderContext
from mlrollout.feedback import FeedbackQuery, feedback_query, feedback_source
from mlrollout.feedback.join import LabelReader, as_rating, as_text, parse_labels
from mlrollout.feedback.jsonl import JsonlFeedback, JsonlPredictions
from mlrollout.objects import open_objects
from mlrollout.plan.loader import parse_plan
from mlrollout.plan.model import Plan
from mlrollout.state.sqlite import SqliteStateStore

T0 = 1_700_000_000.0


def plan(labels: str, capture: str | None, provider: str = "local") -> Plan:
    capture_section = (
        f"capture: {{source: {{jsonl: '{capture}'}}, output: '$.predictions[0]'}}\n"
        if capture
        else ""
    )
    text = f"""
version: 1
name: quality
target: {{provider: {provider}, endpoint: churn}}
candidate: {{name: v7}}
strategy: {{type: canary, steps: [{{weight: 50}}, {{analyze: 10m}}]}}
analysis:
  gates:
    - {{name: acc, metric: accuracy, vs_baseline: {{max_decrease: 2pp}}}}
    - {{name: thumbs, metric: feedback, vs_baseline: {{max_decrease: 5%}}}}
{capture_section}feedback: {{source: {{jsonl: '{labels}'}}}}
sandbox:
  variants: {{v6: {{accuracy: 0.9}}, v7: {{accuracy: 0.8}}}}
"""
    return parse_plan(text, "plan.yaml").plan


def prediction(variant: str, iid: str | None, output: object, t: float, **kw: object) -> str:
    record: dict[str, object] = {"variant": variant, "output": {"predictions": [output]}}
    record["time"] = t
    if iid is not None:
        record["inference_id"] = iid
    record.update(kw)
    return json.dumps(record) + "\n"


def label(iid: str, value: object = None, *, key: str = "label", t: float | None = None) -> str:
    record: dict[str, object] = {"inference_id": iid, key: value}
    if t is not None:
        record["time"] = t
    return json.dumps(record) + "\n"


def query(end: float, start: float = T0) -> FeedbackQuery:
    return FeedbackQuery(start, end, ("v6", "v7"), "$.predictions[0]")


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    capture = tmp_path / "capture.jsonl"
    capture.write_text(
        "".join(
            [
                prediction("v6", "a", 1, T0 + 1),
                prediction("v6", "b", 0, T0 + 2),
                prediction("v6", "c", 1, T0 + 3),
                prediction("v7", "d", 1, T0 + 1),
                prediction("v7", "e", 1, T0 + 2),
                prediction("v7", None, 1, T0 + 3, event_id="ev-f"),  # joined by event id
                prediction("v7", None, 0, T0 + 4),  # no id: can never be joined
                prediction("v7", "g", 0, T0 - 100),  # before the window
                prediction("v8", "h", 0, T0 + 5),  # another variant
                '{"variant": "v7", "inference_id": "i", "output": {"predictions": []}}\n',
            ]
        )
    )
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "2023-11-14.jsonl").write_text(
        "".join(
            [
                label("a", 1),  # right
                label("b", "1"),  # wrong: label 1, predicted 0
                label("d", 1.0),  # right (1.0 is "1")
                label("e", 0),  # wrong
                label("ev-f", 1),  # right, by event id
                label("a", "up", key="value"),
                label("d", False, key="value"),
                label("e", "DOWN", key="value"),
                label("zzz", 1),  # matches no prediction
                label("c", 1, t=T0 + 500),  # arrives later
                "not json\n",
                json.dumps({"label": 1}) + "\n",  # no id
                label("q", "five stars", key="value"),  # not a rating
            ]
        )
    )
    (labels / "ignored.csv").write_text("a,1\n")
    return capture, labels


def test_labels_and_ratings_are_joined_to_each_variants_predictions(
    files: tuple[Path, Path],
) -> None:
    capture, labels = files
    source = JsonlFeedback(plan(str(labels), str(capture)))
    counts = source.read(query(T0 + 60))
    base, cand = counts["v6"], counts["v7"]
    assert base.error is None and cand.error is None
    assert base.confusion == {("1", "1"): 1, ("1", "0"): 1}
    assert base.waiting == 1  # c: its label arrives at T0 + 500
    assert cand.confusion == {("1", "1"): 2, ("0", "1"): 1}
    assert cand.waiting == 0
    assert (base.labelled, base.correct, cand.labelled, cand.correct) == (2, 1, 3, 2)
    assert base.feedback == (1, 1) and base.feedback_waiting == 2
    assert cand.feedback == (0, 2) and cand.feedback_waiting == 1
    # v7's record without an id and the one with no output at the path
    assert cand.broken == 2
    # the source's own, on the first variant only: three broken label lines, one label that
    # matched nothing
    assert base.broken == 3 and base.unmatched == 1 and cand.unmatched == 0
    later = source.read(query(T0 + 600))
    assert later["v6"].waiting == 0 and later["v6"].confusion[("1", "1")] == 2


def test_a_late_label_waits_then_counts_and_a_new_file_is_read_at_the_next_look(
    files: tuple[Path, Path],
) -> None:
    capture, labels = files
    source = JsonlFeedback(plan(str(labels), str(capture)))
    first = source.read(query(T0 + 60))
    assert first["v6"].waiting == 1
    with capture.open("a") as out:
        out.write(prediction("v7", "j", 1, T0 + 30))
        out.write(prediction("v7", "k", 1, T0 + 900))  # after this look's end
    (labels / "2023-11-15.jsonl").write_text(label("j", 0) + label("k", 1))
    second = source.read(query(T0 + 60))
    assert second["v7"].confusion[("0", "1")] == 2 and second["v7"].labelled == 4
    # the same counts as a fresh source's
    fresh = JsonlFeedback(plan(str(labels), str(capture))).read(query(T0 + 60))
    assert {v: c.to_dict() for v, c in fresh.items()} == {v: c.to_dict() for v, c in second.items()}
    third = source.read(query(T0 + 1000))
    assert third["v7"].confusion[("1", "1")] == 3  # k is in this window


def test_the_prediction_reader_reads_only_what_was_appended(files: tuple[Path, Path]) -> None:
    capture, _ = files
    reader = JsonlPredictions(str(capture))
    size = capture.stat().st_size
    reader.predictions(query(T0 + 60))
    assert reader.bytes_read == size
    extra = prediction("v6", "x", 1, T0 + 40)
    with capture.open("a") as out:
        out.write(extra)
    index = reader.predictions(query(T0 + 60))
    assert reader.bytes_read == size + len(extra)
    assert [p[0] for p in index.predictions["v6"]] == ["a", "b", "c", "x"]
    # a new stage (another start) reads from the top
    index = reader.predictions(query(T0 + 60, start=T0 + 2))
    assert [p[0] for p in index.predictions["v6"]] == ["b", "c", "x"]


def test_the_label_reader_reads_an_object_again_only_when_it_changed(
    files: tuple[Path, Path],
) -> None:
    _, labels = files
    reader = LabelReader(open_objects(f"file://{labels}"))
    reader.refresh()
    reader.refresh()
    assert reader.reads == 1
    (labels / "2023-11-14.jsonl").write_text(label("a", 0) + label("a", 1))
    reader.refresh()
    assert reader.reads == 2
    found, _, _ = reader.arrived(T0)
    assert found == {"a": "1"}  # the last label of an id wins (a correction)
    assert reader.broken == 0


def test_model_monitor_ground_truth_lines_are_labels_by_event_id() -> None:
    record = {
        "groundTruthData": {"data": "1", "encoding": "CSV"},
        "eventMetadata": {"eventId": "ev-1"},
        "eventVersion": "0",
    }
    broken = {"groundTruthData": {"encoding": "CSV"}, "eventMetadata": {"eventId": "ev-2"}}
    parsed = parse_labels((json.dumps(record) + "\n" + json.dumps(broken) + "\n").encode())
    assert parsed.labels == {"ev-1": ("1", None)} and parsed.broken == 1


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1, "1"),
        (1.0, "1"),
        ("1", "1"),
        (" cat ", "cat"),
        (True, "true"),
        (0.25, "0.25"),
        ([1, 2], "[1,2]"),
    ],
)
def test_labels_and_predictions_compare_as_text(value: object, text: str) -> None:
    assert as_text(value) == text


@pytest.mark.parametrize(
    ("value", "positive"),
    [
        (1, True),
        (0, False),
        (True, True),
        (False, False),
        ("up", True),
        ("Down", False),
        ("true", True),
        ("0", False),
        (1.0, True),
    ],
)
def test_ratings(value: object, positive: bool) -> None:
    assert as_rating(value) is positive


@pytest.mark.parametrize("value", [2, "meh", None, [1], 0.5])
def test_other_ratings_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="1/0, true/false or up/down"):
        as_rating(value)


def test_without_a_capture_of_its_own_the_sandbox_says_what_to_add(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    _, labels = files
    p = plan(str(labels), None)
    store = SqliteStateStore(tmp_path / "s.db")
    context = ProviderContext(p, VirtualClock(T0), store)
    source = feedback_source(p, context)
    assert isinstance(source, JsonlFeedback)
    counts = source.read(feedback_query(p, T0, T0 + 60, ("v6", "v7")))
    error = counts["v7"].error
    assert error is not None and "capture: {source: {jsonl: PATH}}" in error
    store.close()


def test_a_bad_path_or_a_missing_location_is_an_error_measurement(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    capture, labels = files
    source = JsonlFeedback(plan(str(labels), str(capture)))
    bad = source.read(FeedbackQuery(T0, T0 + 60, ("v6", "v7"), "$.predictions["))
    assert bad["v6"].error is not None
    missing = JsonlFeedback(plan(str(tmp_path / "nowhere"), str(capture)))
    counts = missing.read(query(T0 + 60))
    assert counts["v6"].error is None and counts["v6"].labelled == 0
    assert counts["v6"].waiting == 3  # nothing arrived: every prediction waits


def test_an_unknown_scheme_is_an_error_that_names_the_fix(files: tuple[Path, Path]) -> None:
    capture, _ = files
    source = JsonlFeedback(plan("gs://bucket/labels/", str(capture)))
    counts = source.read(query(T0 + 60))
    error = counts["v6"].error
    assert error is not None and "gs" in error


def test_a_look_at_one_variant_or_three_counts_each_as_a_look_at_two(
    files: tuple[Path, Path],
) -> None:
    """A historical look asks for the candidate alone; an A/B/n plan could ask for more."""
    capture, labels = files
    both = JsonlFeedback(plan(str(labels), str(capture))).read(query(T0 + 60))
    alone = JsonlFeedback(plan(str(labels), str(capture))).read(
        FeedbackQuery(T0, T0 + 60, ("v7",), "$.predictions[0]")
    )
    assert alone["v7"].confusion == both["v7"].confusion
    assert alone["v7"].waiting == both["v7"].waiting
    three = JsonlFeedback(plan(str(labels), str(capture))).read(
        FeedbackQuery(T0, T0 + 60, ("v6", "v7", "v8"), "$.predictions[0]")
    )
    assert three["v7"].confusion == both["v7"].confusion
    assert three["v6"].confusion == both["v6"].confusion
    assert three["v8"].waiting == 1 and three["v8"].labelled == 0  # h: no label


def test_hour_folders_that_ended_before_the_window_are_not_read(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    """A ground-truth prefix keeps months of hourly folders: only those from the window's
    start hour on can hold its labels."""
    capture, _ = files
    root = tmp_path / "truth"
    old = root / "2023" / "11" / "14" / "20"  # the hour before T0's (2023-11-14 22:13 UTC)
    same = root / "2023" / "11" / "14" / "22"
    for folder in (old, same):
        folder.mkdir(parents=True)
    (old / "labels.jsonl").write_text(label("a", 0) + "broken\n")
    (same / "labels.jsonl").write_text(label("b", 0))
    (root / "2023" / "13" / "01" / "00").mkdir(parents=True)  # not a date: read
    (root / "2023" / "13" / "01" / "00" / "x.jsonl").write_text(label("c", 0))
    source = JsonlFeedback(plan(str(root), str(capture)))
    counts = source.read(query(T0 + 60))
    assert counts["v6"].confusion == {("0", "0"): 1, ("0", "1"): 1}  # b and c; not a
    assert counts["v6"].broken == 0  # the old file was never read
    assert source._labels is not None and source._labels.reads == 2
