"""The S3 state store through boto3 against the emulator: the shared state-store contract
(``mlrollout.testing.state_contract``: races, fencing, corrupt objects), then what is S3's own
(lost responses, throttling, the URL, a missing bucket, the CLI)."""

from __future__ import annotations

import pytest
from mlrollout_aws._aws import RetryPolicy
from mlrollout_aws.s3state import S3StateStore, open_s3_store

from mlrollout.errors import StateUnavailable
from mlrollout.state.open import open_store
from mlrollout.testing.state_contract import (
    Corrupted,
    ObjectStoreContract,
    Wall,
    record,
)

BUCKET = "rollouts"


@pytest.fixture
def wall() -> Wall:
    return Wall()


@pytest.fixture
def store(world, wall) -> S3StateStore:
    world.s3.create_bucket(Bucket=BUCKET)
    return make_store(world, wall)


def make_store(world, wall, prefix: str = "team/prod") -> S3StateStore:
    return S3StateStore(
        BUCKET,
        prefix,
        region="us-east-1",
        endpoint_url=world.url,
        wall=wall,
        retry=RetryPolicy(base=0.001, cap=0.01),
    )


class TestS3StateContract(ObjectStoreContract):
    @pytest.fixture
    def make_store(self, world, wall):
        world.s3.create_bucket(Bucket=BUCKET)
        return lambda: make_store(world, wall)

    @pytest.fixture
    def corrupt_event(self, world):
        def corrupt(store, rollout_id):
            keys = [o["Key"] for o in world.s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
            key = next(k for k in keys if rollout_id in k and "/events/" in k)
            broken = Corrupted(
                key[len(store.prefix) :],
                lambda: world.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read(),
            )
            world.s3.put_object(Bucket=BUCKET, Key=key, Body=broken.garbage)
            return broken

        return corrupt


def test_a_lost_put_response_is_not_applied_twice(world, store):
    store.create_rollout(record())
    world.emulator.fault("500", operations={"PutObject"}, times=2, after=True)
    store.append_event("churn-abc123", "a", {}, at=1.0, lease=None)
    lease = store.acquire_lease("sagemaker:e", "runner-a", ttl=60)
    world.emulator.fault("500", operations={"PutObject"}, times=1, after=True)
    assert store.renew_lease(lease, ttl=60).token == 1
    assert [e.kind for e in store.events("churn-abc123")] == ["a"]
    assert store.get_rollout("churn-abc123").last_seq == 1


def test_throttled_calls_are_retried(world, store):
    world.emulator.fault("throttle", service="s3", times=3)
    store.create_rollout(record())
    assert store.get_rollout("churn-abc123").id == "churn-abc123"


def test_opened_from_a_url_through_the_state_entry_point(world, store):
    url = f"s3://{BUCKET}/team/prod?region=us-east-1&endpoint_url={world.url}"
    opened = open_store(url)
    assert isinstance(opened, S3StateStore)
    assert opened.location == f"s3://{BUCKET}/team/prod/"
    store.create_rollout(record())
    assert opened.get_rollout("churn").id == "churn-abc123"
    with pytest.raises(StateUnavailable, match="unknown option 'colour'"):
        open_s3_store("s3://b/p?colour=red")


def test_a_missing_bucket_is_state_unavailable(world, wall):
    store = S3StateStore("no-such-bucket", region="us-east-1", endpoint_url=world.url, wall=wall)
    with pytest.raises(StateUnavailable, match="does not exist"):
        store.list_rollouts()


def test_the_cli_reads_rollouts_from_s3_state(world, store, capsys):
    import json

    from mlrollout.cli.app import main

    store.create_rollout(record("churn-aaa111", 1.0))
    url = f"s3://{BUCKET}/team/prod?region=us-east-1&endpoint_url={world.url}"
    with pytest.raises(SystemExit) as exit_:
        main(["--state", url, "list", "--output", "json"])
    assert exit_.value.code == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == ["churn-aaa111"]
