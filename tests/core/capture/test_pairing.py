"""The pairing core every capture source shares, and the JSONPath subset of ``capture.output``."""

from __future__ import annotations

import base64
import json

import pytest

from mlrollout.capture import MAX_EXAMPLES, Bins
from mlrollout.capture.jsonpath import MISSING, PathError, compile_path
from mlrollout.capture.pairing import (
    Pairing,
    Unparsable,
    agree,
    decode_body,
    fix_bins,
    read_output,
)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("$", 3, 3),
        ("$.predictions[0]", {"predictions": [0.7, 0.2]}, 0.7),
        ("$['label']", {"label": "cat"}, "cat"),
        ('$["a b"][-1]', {"a b": [1, 2, 3]}, 3),
        ("$.a.b", {"a": {"b": None}}, None),
        ("$.missing", {"a": 1}, MISSING),
        ("$[5]", [1], MISSING),
        ("$.a[0]", {"a": "not a list"}, MISSING),
    ],
)
def test_the_jsonpath_subset_finds_one_value(path: str, value: object, expected: object) -> None:
    assert compile_path(path).find(value) == expected


@pytest.mark.parametrize(
    ("path", "column"),
    [("predictions[0]", 1), ("$.", 3), ("$[abc]", 3), ("$[0", 2), ("$x", 2), ("$.a[*]", 5)],
)
def test_a_path_that_does_not_parse_says_where(path: str, column: int) -> None:
    with pytest.raises(PathError) as caught:
        compile_path(path)
    assert caught.value.column == column
    assert f"column {column}" in str(caught.value)


def test_bodies_decode_from_base64_json_and_csv() -> None:
    body = base64.b64encode(json.dumps({"predictions": [0.9]}).encode()).decode()
    path = compile_path("$.predictions[0]")
    assert read_output({"data": body, "encoding": "BASE64"}, path) == 0.9
    csv_body = base64.b64encode(b"0.25\n").decode()
    captured = {"data": csv_body, "encoding": "BASE64", "observedContentType": "text/csv"}
    assert read_output(captured, compile_path("$")) == 0.25
    assert decode_body("1,cat,3", "CSV") == [1.0, "cat", 3.0]
    assert read_output('{"label": "dog"}', compile_path("$.label")) == "dog"
    with pytest.raises(Unparsable):
        read_output({"data": "%%% not base64", "encoding": "BASE64"}, path)
    with pytest.raises(Unparsable):
        read_output("{broken", compile_path("$.label"))


def test_outputs_agree_within_tolerance_for_numbers_and_by_equality_otherwise() -> None:
    assert agree(0.50, 0.505, 0.01) and not agree(0.50, 0.52, 0.01)
    assert agree([0.1, 0.9], [0.1, 0.905], 0.01) and not agree([0.1, 0.9], [0.2, 0.8], 0.01)
    assert agree("cat", "cat", 0.5) and not agree("cat", "dog", 0.5)
    assert not agree(True, 1.0, 0.5)  # a boolean is a class, not a number
    assert agree(1, 1.0, 0.0)


def test_records_pair_by_inference_id_then_event_id_and_count_what_did_not() -> None:
    p = Pairing("v6", "v7", tolerance=0.0)
    p.add("v6", "a", inference_id="1")
    p.add("v7", "a", inference_id="1")  # agree
    p.add("v7", "b", inference_id="2")
    p.add("v6", "c", inference_id="2")  # disagree
    p.add("v6", "a", event_id="e9")
    p.add("v7", "a", event_id="e9")  # paired by the event id
    p.add("v6", "a")  # no id at all: never paired
    p.add("v7", "a", inference_id="3")  # its partner never comes
    p.add("v7", "a", inference_id="3")  # the same variant twice: the second is unpaired
    p.add_unparsed("v6")
    p.add_unparsed(None)  # broken JSON: whose, nobody knows
    p.add("v8", "a", inference_id="1")  # another variant: ignored
    s = p.summary()
    assert (s.paired, s.agreed) == (3, 2)
    assert s.records == {"v6": 5, "v7": 5}
    assert s.unparsed == {"v6": 1, "v7": 0, "unknown": 1}
    assert s.unpaired == {"v6": 1, "v7": 2}
    assert [(e.inference_id, e.baseline, e.candidate) for e in s.examples] == [("2", "c", "b")]
    assert (s.baseline, s.candidate) == ("v6", "v7")


def test_examples_stop_at_the_maximum() -> None:
    p = Pairing("b", "c")
    for i in range(3 * MAX_EXAMPLES):
        p.add("b", 0, str(i))
        p.add("c", 1, str(i))
    s = p.summary()
    assert s.paired == 3 * MAX_EXAMPLES and s.agreed == 0 and len(s.examples) == MAX_EXAMPLES


def test_the_pending_table_is_bounded_and_gives_up_the_oldest() -> None:
    p = Pairing("b", "c", max_pending=10)
    for i in range(100):
        p.add("b", 0, str(i))  # partners far apart in the stream
    for i in range(100):
        p.add("c", 0, str(i))
    s = p.summary()
    assert len(p.pending) <= 10
    assert s.paired == 0  # the first 90 baseline ids were given up before their partners came
    assert s.unpaired["b"] + s.unpaired["c"] == 200 - 2 * s.paired


def test_numeric_bins_are_the_baselines_deciles_deduplicated() -> None:
    bins = fix_bins(list(range(1, 101)))
    assert bins is not None and bins.kind == "numeric"
    assert bins.edges == (10, 20, 30, 40, 50, 60, 70, 80, 90) and bins.size == 10
    binary = fix_bins([0] * 50 + [1] * 50)
    assert binary is not None and binary.edges == (0.0,) and binary.size == 2
    assert fix_bins([]) is None


def test_categorical_bins_are_the_categories_seen_plus_other() -> None:
    bins = fix_bins(["cat", "dog", "cat", 3])
    assert bins == Bins("categorical", categories=("3", "cat", "dog"))
    p = Pairing("b", "c", bins=bins)
    for value in ("cat", "dog", "emu", 3):
        p.add("c", value, None)
    assert p.summary().counts["c"] == [1, 1, 1, 1]  # "emu" in other


def test_bins_are_fixed_from_the_first_baseline_outputs_and_count_every_record() -> None:
    p = Pairing("b", "c")
    for i in range(2000):
        p.add("c", float(i % 100) + 50, f"c{i}")  # the candidate runs ahead: buffered
        p.add("b", float(i % 100), f"b{i}")
    s = p.summary()
    assert s.bins is not None and s.bins.kind == "numeric" and s.bins.size == 10
    assert sum(s.counts["b"]) == 2000 and sum(s.counts["c"]) == 2000
    assert s.counts["b"] == [200] * 10  # deciles of the baseline
    assert s.counts["c"][-1] == 1200  # 90..149: 60 % of the candidate lies above them
    # The same bins given to a fresh pairing give the same counts.
    q = Pairing("b", "c", bins=s.bins)
    for i in range(2000):
        q.add("c", float(i % 100) + 50, f"c{i}")
        q.add("b", float(i % 100), f"b{i}")
    assert q.summary().counts == s.counts
