"""The data collector capture source through ``azure-storage-blob`` against a real Azurite: how
records become pairs (``correlationid``, a row's own id, ``xrequestid``), what is counted as
unparsed, the calls per look with and without the cursor (the same summary either way), payload
logging, and errors that are measurements and never show the connection string."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from mlrollout_azure.collector import (
    CONNECTION_STRING_ENV,
    SETTLE,
    DataCollectorCapture,
    _reader,
)
from test_blob_state import ACCOUNT, DEV_KEY, azurite  # noqa: F401  (the Azurite fixture)

from mlrollout.capture import CaptureQuery
from mlrollout.errors import ProviderError
from mlrollout.retry import RetryPolicy

CONTAINER = "azureml-blobstore-collector-tests"
H0 = 1_700_002_800.0  # 2023-11-14T23:00:00Z, a whole hour
FAST = RetryPolicy(attempts=2, base=0.001, cap=0.01)


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rec(t: float, data: Any, cid: str | None = None, **extra: Any) -> str:
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": "x",
        "type": "azureml.inference.model_outputs",
        "datacontenttype": "application/json",
        "time": stamp(t),
        "data": data,
    }
    if cid is not None:
        body["correlationid"] = cid
    body.update(extra)
    return json.dumps(body)


def blob_name(deployment: str, t: float, instance: str = "i1", collection: str = "model_outputs"):
    hour = datetime.fromtimestamp(t, UTC).strftime("%Y/%m/%d/%H")
    return f"modelDataCollector/churn/{deployment}/{collection}/{hour}/{instance}.jsonl"


@pytest.fixture
def container(azurite: str, monkeypatch: pytest.MonkeyPatch) -> Any:  # noqa: F811
    from azure.storage.blob import BlobServiceClient

    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite)
    client = BlobServiceClient.from_connection_string(azurite).get_container_client(CONTAINER)
    if client.exists():
        client.delete_container()
    client.create_container()
    return client


def append(container: Any, name: str, lines: list[str]) -> None:
    blob = container.get_blob_client(name)
    if not blob.exists():
        blob.create_append_blob()
    blob.append_block(("\n".join(lines) + "\n").encode())


def source(collection: str = "model_outputs", *, cursor: bool = True) -> DataCollectorCapture:
    reader = _reader(ACCOUNT, CONTAINER, "core.windows.net", None, FAST)
    return DataCollectorCapture(reader, "churn", collection=collection, cursor=cursor)


def query(start: float, end: float, output: str = "$.label", bins: Any = None) -> CaptureQuery:
    return CaptureQuery(start, end, "blue", "green", output, bins=bins)


def test_records_pair_by_correlation_id_and_what_does_not_parse_is_counted(container):
    t = H0 + 60
    append(
        container,
        blob_name("blue", t),
        [
            rec(t, [{"label": "1"}], "a"),
            rec(t, [{"label": "0", "score": 0.2}], "b"),
            # batched: each row has its own correlationid column
            rec(t, [{"label": "1", "correlationid": "c"},
                    {"label": "0", "correlationid": "d"}], "c"),
            rec(t, [{"label": "1"}], None, xrequestid="x1"),  # pairs by xrequestid
            rec(t, [{"label": "1"}]),  # no id at all: parsed, pairs with nothing
            rec(t, [{"label": "1"}, {"label": "0"}], "e"),  # batched without row ids: unpaired
            '{"specversion":"1.0","id":"cut-short","data":[{"label"',  # broken JSON
            rec(t, base64.b64encode(b'{"label": "1"}').decode(), "f",
                datacontenttype="application/octet-stream"),  # a base64 body
            rec(t, "https://store/mdc/raw", "g", datainblob="true"),  # the body is elsewhere
            rec(t, [{"score": 0.5}], "h"),  # nothing at $.label
            json.dumps({"time": "yesterday", "data": [{"label": "1"}], "correlationid": "i"}),
            rec(H0 - 5, [{"label": "1"}], "early"),  # before the window: skipped
            "[1, 2, 3]",  # JSON, not a record
        ],
    )  # fmt: skip
    append(
        container,
        blob_name("green", t),
        [
            rec(t, [{"label": "1"}], "a"),
            rec(t, [{"label": "1"}], "b"),  # disagrees
            rec(t, [{"label": "1"}], "c"),
            rec(t, [{"label": "0"}], "d"),
            rec(t, [{"label": "1"}], None, xrequestid="x1"),
            rec(t, [{"label": "0"}], "h"),
        ],
    )
    summary = source().read(query(H0, H0 + 600))
    assert summary.error is None
    assert (summary.paired, summary.agreed) == (5, 4)  # a, b, c, d, x1; b disagrees
    assert [e.inference_id for e in summary.examples] == ["b"]
    assert summary.unparsed == {"blue": 6, "green": 0}  # broken, base64, inblob, h, time, list
    assert summary.unpaired == {"blue": 3, "green": 1}  # no id, e's two rows; green's h
    assert summary.records == {"blue": 14, "green": 6}
    assert summary.bins is not None and summary.bins.categories == ("0", "1")


def test_a_look_lists_each_open_hour_once_and_reads_only_the_new_bytes(container):
    """A window across an hour: each look lists, per deployment, the hours still open (once
    each) and GETs only the blobs that are new or grew; an hour well past its end is listed a
    last time and then never again. A fresh source (no cursor) gives the same summary."""
    start = H0 - 600  # 22:50
    cursor, fresh = source(), source(cursor=False)
    looks: list[dict[str, int]] = []
    n = 0
    bins: list[Any] = []  # the engine keeps the drift bins of the first look and passes them on

    def write(t: float, instance: str = "i1") -> None:
        nonlocal n
        for deployment in ("blue", "green"):
            label = "1" if deployment == "blue" or n % 10 else "0"
            append(
                container, blob_name(deployment, t, instance), [rec(t, [{"label": label}], f"r{n}")]
            )
        n += 1

    def look(end: float) -> None:
        before = dict(cursor.calls) if cursor._reader is not None else {}
        mine = cursor.read(query(start, end, bins=bins[0] if bins else None))
        bins[:] = bins or [mine.bins]
        looks.append(
            {k: v - before.get(k, 0) for k, v in cursor.calls.items() if v - before.get(k, 0)}
        )
        again = fresh.read(query(start, end, bins=bins[0]))
        assert (mine.paired, mine.agreed, mine.records, mine.unpaired) == (
            again.paired, again.agreed, again.records, again.unpaired
        )  # fmt: skip

    for i in range(5):
        write(start + 60 * i)
    look(H0 - 60)  # 22:59: one hour open
    write(H0 + 30)
    write(H0 + 40, "i2")
    look(H0 + 120)  # 23:02: two hours open; 22h's blobs unchanged, 23h's new
    write(H0 + 150)
    look(H0 + SETTLE + 60)  # 22h listed a last time
    write(H0 + SETTLE + 90, "i2")
    look(H0 + SETTLE + 180)  # only 23h now
    look(H0 + SETTLE + 240)  # nothing new: listings only
    assert looks == [
        {"list": 2, "get": 2},
        {"list": 4, "get": 4},  # 22h listed, unchanged; 23h: i1 and i2 new, per deployment
        {"list": 4, "get": 2},  # 23h's i1 grew
        {"list": 2, "get": 2},
        {"list": 2},
    ]
    final = cursor.read(query(start, H0 + SETTLE + 240, bins=bins[0]))
    assert final.paired == n and final.agreed == n - 1  # r0 only disagrees
    assert fresh.calls["get"] > cursor.calls["get"]


def test_a_blob_that_shrank_is_read_again_from_the_top(container):
    from azure.storage.blob import BlobClient

    t = H0 + 60
    name = blob_name("blue", t)
    lines = [rec(t + i, [{"label": "1"}], f"r{i}") for i in range(4)]
    append(container, blob_name("green", t), lines)
    container.upload_blob(name, ("\n".join(lines) + "\n").encode(), overwrite=True)
    capture = source()
    first = capture.read(query(H0, H0 + 300))
    assert first.paired == 4
    blob: BlobClient = container.get_blob_client(name)
    blob.upload_blob(("\n".join(lines[:2]) + "\n").encode(), overwrite=True)
    again = capture.read(query(H0, H0 + 360, bins=first.bins))
    assert (again.paired, again.unpaired) == (2, {"blue": 0, "green": 2})


def test_payload_logging_reads_the_response_body(container):
    t = H0 + 60
    append(
        container,
        blob_name("blue", t, collection="response"),
        [
            rec(t, {"predictions": [0.8]}, "a"),
            rec(t, json.dumps({"predictions": [0.3]}), "b"),  # a JSON string body
            rec(t, "0.5\n", "c", datacontenttype="text/csv"),
            rec(t, "AAEC", "d", datacontenttype="application/octet-stream"),  # binary
        ],
    )
    append(
        container,
        blob_name("green", t, collection="response"),
        [
            rec(t, {"predictions": [0.81]}, "a"),
            rec(t, {"predictions": [0.9]}, "b"),
        ],
    )
    capture = source("response")
    summary = capture.read(CaptureQuery(H0, H0 + 300, "blue", "green", "$.predictions[0]", 0.05))
    assert (summary.paired, summary.agreed) == (2, 1)
    assert summary.unparsed == {"blue": 2, "green": 0}  # the CSV has no .predictions; binary


def test_failures_are_error_measurements_without_the_secret(container, azurite, monkeypatch):  # noqa: F811
    missing = DataCollectorCapture(
        _reader(ACCOUNT, "no-such-container", "core.windows.net", None, FAST), "churn"
    )
    summary = missing.read(query(H0, H0 + 300))
    assert summary.error and "no-such-container" in summary.error
    assert DEV_KEY not in summary.error

    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite.replace(ACCOUNT, "otheraccount"))
    with pytest.raises(ProviderError) as raised:
        _reader(ACCOUNT, CONTAINER, "core.windows.net", None, FAST)
    assert "otheraccount" in raised.value.message and DEV_KEY not in str(raised.value)

    def broken() -> Any:
        return _reader(ACCOUNT, CONTAINER, "core.windows.net", None, FAST)

    monkeypatch.setenv(CONNECTION_STRING_ENV, "AccountKey=" + DEV_KEY + ";not a connection string")
    summary = DataCollectorCapture(broken, "churn").read(query(H0, H0 + 300))
    assert summary.error and CONNECTION_STRING_ENV in summary.error
    assert DEV_KEY not in summary.error
