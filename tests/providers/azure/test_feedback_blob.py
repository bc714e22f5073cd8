"""Labels on Azure Blob Storage: the ``az`` / ``https`` plugin of ``mlrollout.objects`` through
``azure-storage-blob`` against a real Azurite (started by ``test_blob_state``'s fixture, skipped
naming the npm package when it is missing), then ``feedback: {source: {jsonl: az://...}}``
joined to a local capture, read again only where a blob changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlrollout_azure.blobstate import CONNECTION_STRING_ENV
from mlrollout_azure.objects import BlobFiles, open_blob_objects
from test_blob_state import (  # noqa: F401  (Azurite and a fresh container: the fixtures)
    ACCOUNT,
    CONTAINER,
    DEV_KEY,
    azurite,
    service,
)

from mlrollout.errors import ProviderError
from mlrollout.feedback import FeedbackQuery
from mlrollout.feedback.jsonl import JsonlFeedback
from mlrollout.objects import open_objects
from mlrollout.plan.loader import parse_plan
from mlrollout.retry import RetryPolicy

T0 = 1_700_000_000.0


@pytest.fixture
def blobs(service: Any, azurite: str, monkeypatch: pytest.MonkeyPatch) -> Any:  # noqa: F811
    """``test_blob_state``'s fresh container; the plugin finds Azurite through the connection
    string variable."""
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite)
    return service.get_container_client(CONTAINER)


def lines(*records: dict[str, object]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def test_the_plugin_lists_reads_and_writes_blobs_under_a_prefix(blobs: Any) -> None:
    files = open_objects(f"az://{ACCOUNT}/{CONTAINER}/churn/labels")
    assert isinstance(files, BlobFiles)
    files.write(b'{"inference_id": "a", "label": 1}\n', "2026/12/02/04/a.jsonl")
    files.write(b"{}", "2026/12/02/05/b.jsonl", content_type="application/x-ndjson")
    blobs.upload_blob("churn/labels-elsewhere.jsonl", b"{}")  # same start, not under the folder
    listed = files.list()
    assert [o.key for o in listed] == ["2026/12/02/04/a.jsonl", "2026/12/02/05/b.jsonl"]
    assert listed[0].size == 34 and listed[0].modified > 0
    assert [o.key for o in files.list("2026/12/02/05")] == ["2026/12/02/05/b.jsonl"]
    assert files.read("2026/12/02/04/a.jsonl") == b'{"inference_id": "a", "label": 1}\n'
    assert files.read("nothing-here.jsonl") is None
    props = blobs.get_blob_client("churn/labels/2026/12/02/05/b.jsonl").get_blob_properties()
    assert props.content_settings.content_type == "application/x-ndjson"
    # A root that names one blob is that blob.
    one = open_objects(
        f"https://{ACCOUNT}.blob.core.windows.net/{CONTAINER}/churn/labels-elsewhere.jsonl"
    )
    assert [(o.key, o.size) for o in one.list()] == [("", 2)]
    assert one.read() == b"{}"


def test_a_missing_container_names_it_and_the_fix_without_the_secret(
    blobs: Any,
    azurite: str,  # noqa: F811
) -> None:
    files = BlobFiles("az://x", ACCOUNT, "no-such-container", "p", retry=RetryPolicy(attempts=1))
    with pytest.raises(ProviderError) as err:
        files.list()
    assert "no-such-container" in str(err.value) and "create the container" in (
        err.value.hint or ""
    )
    assert DEV_KEY not in str(err.value) and azurite not in str(err.value)


@pytest.mark.parametrize(
    ("location", "why"),
    [
        ("https://example.com/c/p", "not a Blob Storage location"),
        (f"az://{ACCOUNT}", "names an account and a container"),
        (f"az://{ACCOUNT}/c/p?sig=SECRET", "takes no sig option"),
    ],
)
def test_locations_that_are_not_blob_storage_are_refused(location: str, why: str) -> None:
    with pytest.raises(ProviderError, match=why) as err:
        open_blob_objects(location)
    assert "SECRET" not in str(err.value)


def test_labels_in_blob_storage_are_joined_to_the_captured_predictions(
    blobs: Any, tmp_path: Path
) -> None:
    capture = tmp_path / "capture.jsonl"
    capture.write_text(
        "".join(
            json.dumps({"variant": v, "inference_id": i, "output": o, "time": T0 + n}) + "\n"
            for n, (v, i, o) in enumerate(
                [("v6", "a", 1), ("v6", "b", 0), ("v7", "c", 1), ("v7", "d", 0), ("v7", "e", 1)]
            )
        )
    )
    blobs.upload_blob(
        "churn/2026/12/02/04/part-1.jsonl",
        lines(
            {"inference_id": "a", "label": 1},
            {"inference_id": "b", "label": 1},
            {"inference_id": "c", "label": "1", "value": True},
            {"inference_id": "d", "value": "down"},
        )
        + b'{"inference_id": "e", "lab\n',  # a broken line: counted, never fatal
    )
    text = f"""
version: 1
name: quality
target: {{provider: local, endpoint: churn}}
candidate: {{name: v7}}
strategy: {{type: canary, steps: [{{weight: 50}}, {{analyze: 10m}}]}}
analysis:
  gates: [{{name: acc, metric: accuracy, vs_baseline: {{max_decrease: 2pp}}}}]
capture: {{source: {{jsonl: '{capture}'}}}}
feedback: {{source: {{jsonl: 'az://{ACCOUNT}/{CONTAINER}/churn/'}}}}
sandbox: {{variants: {{v6: {{}}, v7: {{}}}}}}
"""
    source = JsonlFeedback(parse_plan(text, "plan.yaml").plan)
    query = FeedbackQuery(T0, T0 + 60, ("v6", "v7"))
    counts = source.read(query)
    base, cand = counts["v6"], counts["v7"]
    assert base.error is None, base.error
    assert base.confusion == {("1", "1"): 1, ("1", "0"): 1} and base.waiting == 0
    assert cand.confusion == {("1", "1"): 1} and cand.waiting == 2
    assert cand.feedback == (1, 2) and cand.feedback_waiting == 1
    assert (base.broken, cand.broken) == (1, 0)  # the source's own: on the first variant
    # The next look lists once and reads only the new blob.
    labels = source._labels
    assert labels is not None and isinstance(labels.files, BlobFiles)
    labels.files.calls.clear()
    blobs.upload_blob("churn/2026/12/02/05/part-2.jsonl", lines({"inference_id": "e", "label": 0}))
    later = source.read(query)
    assert labels.files.calls == ["list_blobs", "get_blob"]
    assert later["v7"].confusion == {("1", "1"): 1, ("0", "1"): 1} and later["v7"].waiting == 1
