"""The S3 state store through boto3 against the emulator: the StateStore contract, conditional
writes for the lease, fencing, concurrent appends, lost responses."""

from __future__ import annotations

import pytest
from mlrollout_aws._aws import RetryPolicy
from mlrollout_aws.s3state import S3StateStore, open_s3_store

from mlrollout.errors import LeaseHeld, LeaseLost, StateUnavailable, UsageError
from mlrollout.state.base import RolloutRecord
from mlrollout.state.open import open_store

BUCKET = "rollouts"


class Wall:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


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


def record(
    rid: str = "churn-abc123", created: float = 1.0, endpoint: str | None = None
) -> RolloutRecord:
    return RolloutRecord(
        id=rid,
        name="churn",
        endpoint_key=endpoint or f"sagemaker:{rid}",
        plan={"yaml": "version: 1"},
        plan_path="plans/p.yaml",
        created_at=created,
        snapshot={"phase": "pending"},
    )


def test_rollouts_are_created_listed_and_found_by_prefix(store):
    store.create_rollout(record("churn-aaa111", 1.0))
    store.create_rollout(record("churn-bbb222", 2.0))
    store.create_rollout(record("fraud-ccc333", 3.0))
    assert [r.id for r in store.list_rollouts()] == ["fraud-ccc333", "churn-bbb222", "churn-aaa111"]
    assert store.get_rollout("fraud").id == "fraud-ccc333"
    assert store.get_rollout("churn-aaa111").plan == {"yaml": "version: 1"}
    with pytest.raises(UsageError, match="ambiguous"):
        store.get_rollout("churn")
    with pytest.raises(UsageError, match="no rollout"):
        store.get_rollout("nope")
    with pytest.raises(UsageError, match="already exists"):
        store.create_rollout(record("churn-aaa111"))


def test_events_append_in_order_with_phase_and_snapshot(store):
    store.create_rollout(record())
    for i in range(3):
        event = store.append_event(
            "churn-abc123", f"k{i}", {"i": i}, at=10.0 + i, lease=None,
            phase="progressing", snapshot={"step": i},
        )  # fmt: skip
        assert event.seq == i + 1
    assert [e.kind for e in store.events("churn-abc123")] == ["k0", "k1", "k2"]
    assert [e.seq for e in store.events("churn-abc123", after=1)] == [2, 3]
    got = store.get_rollout("churn-abc123")
    assert (got.phase, got.snapshot, got.last_seq) == ("progressing", {"step": 2}, 3)
    assert [r.id for r in store.list_rollouts(active_only=True)] == ["churn-abc123"]
    store.append_event("churn-abc123", "done", {}, at=20.0, lease=None, phase="succeeded")
    assert store.list_rollouts(active_only=True) == []


def test_values_round_trip(store):
    assert store.get_value("sandbox", "churn/x") is None
    store.put_value("sandbox", "churn/x", {"a": [1, 2]}, lease=None)
    assert store.get_value("sandbox", "churn/x") == {"a": [1, 2]}


def test_one_lease_per_endpoint_with_a_fencing_token(world, store, wall):
    other = make_store(world, wall)  # another machine, same bucket
    lease = store.acquire_lease("sagemaker:us-east-1/churn", "runner-a", ttl=60)
    assert lease.token == 1
    with pytest.raises(LeaseHeld, match="driven by runner-a"):
        other.acquire_lease("sagemaker:us-east-1/churn", "runner-b", ttl=60)
    assert other.current_lease("sagemaker:us-east-1/churn") == lease
    # Renewed by its holder; re-acquired by its holder under the same token.
    wall.now += 30
    lease = store.renew_lease(lease, ttl=60)
    assert store.acquire_lease("sagemaker:us-east-1/churn", "runner-a", ttl=60).token == 1
    # Expired: another runner takes it over with a higher token.
    wall.now += 120
    assert other.current_lease("sagemaker:us-east-1/churn") is None
    taken = other.acquire_lease("sagemaker:us-east-1/churn", "runner-b", ttl=60)
    assert taken.token == 2
    with pytest.raises(LeaseLost, match="now held by runner-b"):
        store.renew_lease(lease, ttl=60)
    # Released: free at once.
    other.release_lease(taken)
    assert store.current_lease("sagemaker:us-east-1/churn") is None


def test_writes_of_a_runner_that_lost_its_lease_are_refused(world, store, wall):
    store.create_rollout(record())
    key = "sagemaker:e"
    old = store.acquire_lease(key, "runner-a", ttl=60)
    store.append_event("churn-abc123", "a", {}, at=1.0, lease=old)
    wall.now += 120
    other = make_store(world, wall)
    new = other.acquire_lease(key, "runner-b", ttl=60)
    other.append_event("churn-abc123", "b", {}, at=2.0, lease=new)
    with pytest.raises(LeaseLost):
        store.append_event("churn-abc123", "stale", {}, at=3.0, lease=old)
    with pytest.raises(LeaseLost):
        store.put_value("sandbox", "x", {}, lease=old)
    assert [e.kind for e in other.events("churn-abc123")] == ["a", "b"]


def test_the_record_refuses_a_lower_token_even_when_the_lease_check_raced(world, store, wall):
    """Fencing in the record itself: token 2 wrote, so token 1 can no longer write there."""
    store.create_rollout(record())
    key = "sagemaker:e"
    first = store.acquire_lease(key, "runner-a", ttl=60)
    wall.now += 120
    second = store.acquire_lease(key, "runner-b", ttl=60)
    store.append_event("churn-abc123", "b", {}, at=1.0, lease=second)
    # Pretend runner-a's lease check passed (its lease object says so), then it writes.
    store._put(
        store._lease_key(key), {"holder": "runner-a", "token": 1, "expires_at": wall.now + 60}
    )
    with pytest.raises(LeaseLost, match="token 2 has written since"):
        store.append_event("churn-abc123", "stale", {}, at=2.0, lease=first)


def test_concurrent_appends_from_two_stores_never_lose_or_duplicate_events(world, store, wall):
    store.create_rollout(record())
    other = make_store(world, wall)
    original_put = store._put
    raced = []

    def racing_put(key, value, **kw):
        # Just before runner A commits its record, runner B appends (a command from elsewhere).
        if key.endswith("record.json") and not raced:
            raced.append(True)
            other.append_event("churn-abc123", "command.abort", {"by": "b"}, at=1.0, lease=None)
        return original_put(key, value, **kw)

    store._put = racing_put
    event = store.append_event("churn-abc123", "look", {}, at=1.0, lease=None)
    assert event.seq == 2
    assert [(e.seq, e.kind) for e in store.events("churn-abc123")] == [
        (1, "command.abort"),
        (2, "look"),
    ]


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


def test_a_corrupt_object_is_a_clear_error_and_the_rest_stays_readable(world, store):
    from mlrollout.errors import ExitCode, StateCorrupt

    store.create_rollout(record("churn-aaa111", 1.0))
    store.create_rollout(record("fraud-bbb222", 2.0))
    for rid in ("churn-aaa111", "fraud-bbb222"):
        for kind in ("started", "look"):
            store.append_event(rid, kind, {"n": 1}, at=1.0, lease=None)
    keys = [o["Key"] for o in world.s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    broken = next(k for k in keys if "churn-aaa111" in k and "/events/" in k)
    world.s3.put_object(Bucket=BUCKET, Key=broken, Body=b"\x00{truncated")

    with pytest.raises(StateCorrupt) as caught:
        store.events("churn-aaa111")
    assert caught.value.exit_code == ExitCode.NEEDS_HUMAN
    assert "not JSON" in caught.value.message and caught.value.hint
    # nothing was overwritten, and the other rollout's history is intact
    body = world.s3.get_object(Bucket=BUCKET, Key=broken)["Body"].read()
    assert body == b"\x00{truncated"
    assert [e.kind for e in store.events("fraud-bbb222")] == ["started", "look"]
    assert {r.id for r in store.list_rollouts()} == {"churn-aaa111", "fraud-bbb222"}


def test_two_runs_starting_together_create_one_rollout_per_endpoint(world, store, wall):
    import threading

    from mlrollout.errors import RolloutActive

    barrier = threading.Barrier(4)
    created, refused = [], []

    def start(n: int) -> None:
        mine = make_store(world, wall)
        barrier.wait()
        try:
            mine.create_rollout(record(f"churn-{n:06d}", endpoint="sagemaker:e"))
            created.append(n)
        except RolloutActive as exc:
            refused.append(exc)

    threads = [threading.Thread(target=start, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(created) == 1 and len(refused) == 3
    # another endpoint is not blocked; once the active rollout ends, the endpoint is free again
    store.create_rollout(record("other-000001", endpoint="sagemaker:other"))
    winner = f"churn-{created[0]:06d}"
    with pytest.raises(RolloutActive, match=winner):
        store.create_rollout(record("churn-later1", endpoint="sagemaker:e"))
    store.append_event(winner, "rolled_back", {}, at=2.0, lease=None, phase="rolled_back")
    store.create_rollout(record("churn-later2", endpoint="sagemaker:e"))
    assert store.get_rollout("churn-later2").phase == "pending"
