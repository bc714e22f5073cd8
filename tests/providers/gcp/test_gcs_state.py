"""The Cloud Storage state store through ``google-cloud-storage`` against the project's JSON-API
fake (``gcs_fake.py``, real HTTP on 127.0.0.1, generation preconditions enforced): the shared
state-store contract, then what is GCS's own (the URL, lost answers, retries, a missing bucket,
the fake's preconditions themselves)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gcs_fake import GcsFake
from mlrollout_gcp.gcsstate import GcsStateStore, open_gcs_store

from mlrollout.errors import StateUnavailable
from mlrollout.retry import RetryPolicy
from mlrollout.state.open import open_store
from mlrollout.testing.state_contract import (
    Corrupted,
    ObjectStoreContract,
    Wall,
    record,
)

BUCKET = "rollouts"
FAST = RetryPolicy(base=0.001, cap=0.01)


@pytest.fixture(scope="module")
def gcs() -> Iterator[GcsFake]:
    fake = GcsFake().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake(gcs: GcsFake) -> GcsFake:
    gcs.reset()
    gcs.create_bucket(BUCKET)
    return gcs


def make(fake: GcsFake, wall: Callable[[], float], prefix: str = "team/prod") -> GcsStateStore:
    return GcsStateStore(BUCKET, prefix, endpoint_url=fake.url, wall=wall, retry=FAST)


class TestGcsStateContract(ObjectStoreContract):
    @pytest.fixture
    def make_store(self, fake: GcsFake, wall: Wall) -> Callable[[], GcsStateStore]:
        return lambda: make(fake, wall)

    @pytest.fixture
    def corrupt_event(self, fake: GcsFake) -> Callable[[Any, str], Corrupted]:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage  # type: ignore[import-untyped]

        client = storage.Client(
            project="test",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": fake.url},
        )
        bucket = client.bucket(BUCKET)

        def corrupt(store: Any, rollout_id: str) -> Corrupted:
            names = [b.name for b in client.list_blobs(BUCKET, prefix=store.prefix)]
            name = next(n for n in names if rollout_id in n and "/events/" in n)
            broken = Corrupted(
                name[len(store.prefix) :], lambda: bucket.blob(name).download_as_bytes()
            )
            bucket.blob(name).upload_from_string(broken.garbage)
            return broken

        return corrupt


# ------------------------------------------------------------------------------ GCS's own


def test_the_fake_enforces_generation_preconditions(fake: GcsFake) -> None:
    store = make(fake, Wall())
    key = store.prefix + "probe.json"
    assert store._put_object(key, b"{}", if_match=None, if_none_match=True)
    assert not store._put_object(key, b"{}", if_match=None, if_none_match=True)  # 0: create only
    found = store._get_object(key)
    assert found is not None
    _body, generation = found
    assert not store._put_object(
        key, b'{"a":1}', if_match=str(int(generation) - 1), if_none_match=False
    )
    assert store._put_object(key, b'{"a":1}', if_match=generation, if_none_match=False)
    assert store._get_object(key) == (b'{"a":1}', str(int(generation) + 1))
    conditions = [q for m, p, q in fake.requests if m == "POST"]
    assert [c.get("ifGenerationMatch") for c in conditions] == [
        "0",
        "0",
        str(int(generation) - 1),
        generation,
    ]


def test_a_lost_write_answer_is_not_applied_twice(fake: GcsFake) -> None:
    store = make(fake, Wall())
    store.create_rollout(record())
    fake.fault(503, methods={"POST"}, times=2, after=True)  # event, then the record's commit
    store.append_event("churn-abc123", "a", {}, at=1.0, lease=None)
    lease = store.acquire_lease("vertex:e", "runner-a", ttl=60)
    fake.fault(503, methods={"POST"}, times=1, after=True)
    assert store.renew_lease(lease, ttl=60).token == 1
    assert [e.kind for e in store.events("churn-abc123")] == ["a"]
    assert store.get_rollout("churn-abc123").last_seq == 1


def test_throttled_calls_are_retried(fake: GcsFake) -> None:
    store = make(fake, Wall())
    fake.fault(429, times=3)
    store.create_rollout(record())
    assert store.get_rollout("churn-abc123").id == "churn-abc123"


def test_a_server_that_keeps_failing_is_state_unavailable(fake: GcsFake) -> None:
    store = GcsStateStore(BUCKET, endpoint_url=fake.url, retry=RetryPolicy(attempts=2, base=0.001))
    fake.fault(500, times=10)  # the library may look at the bucket between two list attempts
    with pytest.raises(StateUnavailable, match="failed after 2 attempts"):
        store.list_rollouts()


def test_a_missing_bucket_is_state_unavailable(fake: GcsFake) -> None:
    store = GcsStateStore("no-such-bucket", endpoint_url=fake.url, retry=FAST)
    with pytest.raises(StateUnavailable, match="does not exist"):
        store.list_rollouts()
    with pytest.raises(StateUnavailable, match="does not exist"):
        store.get_value("a", "b")


def test_opened_from_a_url_through_the_state_entry_point(fake: GcsFake) -> None:
    opened = open_store(f"gs://{BUCKET}/team/prod?endpoint_url={fake.url}")
    assert isinstance(opened, GcsStateStore)
    assert opened.location == f"gs://{BUCKET}/team/prod/"
    make(fake, Wall()).create_rollout(record())
    assert opened.get_rollout("churn").id == "churn-abc123"
    with pytest.raises(StateUnavailable, match="unknown option 'colour'"):
        open_gcs_store("gs://b/p?colour=red")
    with pytest.raises(StateUnavailable, match="not a Cloud Storage state location"):
        open_gcs_store("gs:///p")


def test_without_credentials_the_store_says_how_to_get_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    with pytest.raises(StateUnavailable, match="no Google Cloud credentials") as caught:
        open_store("gs://b/p")
    assert caught.value.hint and "storage.objects" in caught.value.hint


def test_the_cli_reads_rollouts_from_gcs_state(fake: GcsFake, capsys: Any) -> None:
    import json

    from mlrollout.cli.app import main

    make(fake, Wall()).create_rollout(record("churn-aaa111", 1.0))
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "--state",
                f"gs://{BUCKET}/team/prod?endpoint_url={fake.url}",
                "list",
                "--output",
                "json",
            ]
        )
    assert exit_.value.code == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == ["churn-aaa111"]


def test_the_custom_role_adds_the_state_buckets_permissions() -> None:
    from pathlib import Path

    from mlrollout_gcp import roles

    from mlrollout.plan.loader import load_plan

    plan = load_plan(Path(__file__).resolve().parents[3] / "plans" / "vertex-canary.yaml").plan
    plain = roles.custom_role(plan)
    assert not any(p.startswith("storage.") for p in plain["includedPermissions"])
    for other in ("s3://b/p", ".mlrollout", None):
        assert roles.custom_role(plan, other) == plain
    role = roles.custom_role(plan, "gs://team-state/prod")
    assert set(role["includedPermissions"]) == set(plain["includedPermissions"]) | set(
        roles.STATE_PERMISSIONS
    )
    assert "gs://team-state" in role["description"]


def test_storage_emulator_host_points_the_store_at_an_emulator(
    fake: GcsFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    make(fake, Wall()).create_rollout(record())
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake.url.removeprefix("http://"))
    opened = open_store(f"gs://{BUCKET}/team/prod")
    assert opened.get_rollout("churn").id == "churn-abc123"
    opened.close()


def test_the_fake_answers_the_libraries_other_preconditions(fake: GcsFake) -> None:
    """Through the library's own parameters: a write on ``ifGenerationNotMatch`` and a
    metadata read on ``ifGenerationMatch`` are 412 when they do not hold."""
    from google.api_core.exceptions import NotModified, PreconditionFailed

    store = make(fake, Wall())
    blob = store._bucket.blob("probe")
    blob.upload_from_string(b"1", if_generation_match=0)
    generation = blob.generation
    with pytest.raises(PreconditionFailed):
        blob.upload_from_string(b"2", if_generation_not_match=generation)
    with pytest.raises(PreconditionFailed):
        blob.reload(if_generation_match=generation + 1)
    with pytest.raises(NotModified):
        blob.reload(if_generation_not_match=generation)
    blob.reload(if_generation_match=generation)
    assert blob.download_as_bytes() == b"1"
    blob.upload_from_string(b"2", if_generation_not_match=generation + 1)
    assert store._bucket.blob("probe").download_as_bytes() == b"2"
    store.close()


def test_an_unreachable_service_is_state_unavailable() -> None:
    from mlrollout.testing.peers import free_port

    store = GcsStateStore(
        BUCKET,
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        retry=RetryPolicy(attempts=2, base=0.001),
    )
    with pytest.raises(StateUnavailable, match="could not reach Cloud Storage"):
        store.list_rollouts()
    store.close()
