"""The state-store contract: the behaviour every :class:`~mlrollout.state.base.StateStore` has,
as one suite that each backend's tests run against its real peer (SQLite files, S3 on moto,
GCS on the project's JSON-API fake, Azure Blob on Azurite — or a third party's backend).

A backend's tests subclass :class:`StateStoreContract` and define ``make_store``: a callable that
opens *another* store on the same backing (another runner on another machine), on the wall clock
``wall`` (a :class:`Wall` the checks move; nothing sleeps)::

    class TestMyStoreContract(StateStoreContract):
        @pytest.fixture
        def make_store(self, my_peer, wall):
            return lambda: MyStore(my_peer.url, wall=wall)

Optional fixtures (each check that needs one skips without it):

- ``corrupt_event`` — ``(store, rollout_id) -> Corrupted``: overwrites one committed journal
  entry of the rollout with bytes that are not JSON, through the backend's own client (not the
  store), and says how to read those bytes back;
- ``interleave`` — ``(store, action) -> list[bool]``: arranges that ``action()`` (another
  runner's append) runs once just before ``store`` commits its next append, and returns the
  outcomes of that store's commit attempts (False: its conditional write was refused). For object
  stores :func:`object_store_interleave` is the implementation;
- ``forge_lease`` — ``(store, endpoint_key, holder, token, expires_at) -> None``: rewrites the
  endpoint's lease record as if a stale holder's lease check had just passed
  (:func:`object_store_forge_lease` for object stores).

A store on :class:`~mlrollout.state.objects.ObjectStateStore` subclasses
:class:`ObjectStoreContract` instead, which has ``interleave`` and ``forge_lease`` already.

What the checks hold every store to: rollouts are created once, found by id or unique prefix and
listed newest first; events append gapless in order with the phase and snapshot, never lost or
duplicated when writers race (the loser of a race is refused by the store's condition, re-reads
and lands after the winner); one lease per endpoint with a fencing token that strictly increases
when the lease changes hands; a writer whose lease is stale or expired is refused
(:class:`~mlrollout.errors.LeaseLost`), even when its lease check raced a takeover; of racing
lease takers and racing runs on one endpoint exactly one wins (``LeaseHeld``/``RolloutActive``
for the others); a corrupt journal entry is :class:`~mlrollout.errors.StateCorrupt` (exit 5)
naming it, overwrites nothing, and leaves the other rollouts readable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from mlrollout.errors import (
    ExitCode,
    LeaseHeld,
    LeaseLost,
    RolloutActive,
    StateCorrupt,
    UsageError,
)
from mlrollout.state.base import RolloutRecord, StateStore

__all__ = [
    "Corrupted",
    "ObjectStoreContract",
    "StateStoreContract",
    "Wall",
    "object_store_forge_lease",
    "object_store_interleave",
    "record",
]


class Wall:
    """A wall clock the checks move by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Corrupted:
    """What ``corrupt_event`` broke: the object's key relative to the store's location (None for
    a store that is not made of objects) and how to read its bytes back."""

    name: str | None
    read_back: Callable[[], bytes]
    garbage: bytes = b"\x00{truncated"


def record(
    rid: str = "churn-abc123", created: float = 1.0, endpoint: str | None = None
) -> RolloutRecord:
    return RolloutRecord(
        id=rid,
        name="churn",
        endpoint_key=endpoint or f"contract:{rid}",
        plan={"yaml": "version: 1"},
        plan_path="plans/p.yaml",
        created_at=created,
        snapshot={"phase": "pending"},
    )


def object_store_interleave(store: Any, action: Callable[[], None]) -> list[bool]:
    """``interleave`` for the object stores (S3, GCS, Azure Blob): ``action`` runs just before
    ``store``'s next conditional write of a ``record.json`` (its append's commit point)."""
    outcomes: list[bool] = []
    original = store._put

    def racing_put(key: str, value: Any, **kw: Any) -> bool:
        if key.endswith("record.json") and kw.get("if_match") is not None:
            if not outcomes:
                action()
            ok = bool(original(key, value, **kw))
            outcomes.append(ok)
            return ok
        return bool(original(key, value, **kw))

    store._put = racing_put
    return outcomes


def object_store_forge_lease(
    store: Any, endpoint_key: str, holder: str, token: int, expires_at: float
) -> None:
    """``forge_lease`` for the object stores: an unconditional write of the lease object."""
    value = {"holder": holder, "token": token, "expires_at": expires_at}
    store._put(store._lease_key(endpoint_key), value)


class StateStoreContract:
    """The checks. Subclass it in a test module (named ``Test...``) and define ``make_store``."""

    @pytest.fixture
    def wall(self) -> Wall:
        return Wall()

    @pytest.fixture
    def make_store(self) -> Callable[[], StateStore]:  # pragma: no cover - each backend has one
        raise NotImplementedError("define a `make_store` fixture: () -> a store on one backing")

    @pytest.fixture
    def corrupt_event(self) -> Callable[[StateStore, str], Corrupted] | None:
        return None

    @pytest.fixture
    def interleave(self) -> Callable[[StateStore, Callable[[], None]], list[bool]] | None:
        return None

    @pytest.fixture
    def forge_lease(self) -> Callable[..., None] | None:
        return None

    @pytest.fixture
    def store(self, make_store: Callable[[], StateStore]) -> Any:
        opened = make_store()
        yield opened
        opened.close()

    @pytest.fixture
    def other(self, make_store: Callable[[], StateStore]) -> Any:
        """Another runner's store on the same backing."""
        opened = make_store()
        yield opened
        opened.close()

    # ---------------------------------------------------------------------------- rollouts

    def test_rollouts_are_created_listed_and_found_by_prefix(self, store: StateStore) -> None:
        store.create_rollout(record("churn-aaa111", 1.0))
        store.create_rollout(record("churn-bbb222", 2.0))
        store.create_rollout(record("fraud-ccc333", 3.0))
        assert [r.id for r in store.list_rollouts()] == [
            "fraud-ccc333",
            "churn-bbb222",
            "churn-aaa111",
        ]
        assert [r.id for r in store.list_rollouts(limit=2)] == ["fraud-ccc333", "churn-bbb222"]
        assert store.get_rollout("fraud").id == "fraud-ccc333"
        got = store.get_rollout("churn-aaa111")
        assert (got.plan, got.phase, got.last_seq) == ({"yaml": "version: 1"}, "pending", 0)
        with pytest.raises(UsageError, match="ambiguous"):
            store.get_rollout("churn")
        with pytest.raises(UsageError, match="no rollout"):
            store.get_rollout("nope")
        with pytest.raises(UsageError, match="already exists"):
            store.create_rollout(record("churn-aaa111"))

    def test_events_append_in_order_with_phase_and_snapshot(self, store: StateStore) -> None:
        store.create_rollout(record())
        for i in range(3):
            event = store.append_event(
                "churn-abc123", f"k{i}", {"i": i}, at=10.0 + i, lease=None,
                phase="progressing", snapshot={"step": i},
            )  # fmt: skip
            assert (event.seq, event.data) == (i + 1, {"i": i})
        assert [e.kind for e in store.events("churn-abc123")] == ["k0", "k1", "k2"]
        assert [e.seq for e in store.events("churn-abc123", after=1)] == [2, 3]
        assert store.events("churn-abc123", after=3) == []
        got = store.get_rollout("churn-abc123")
        assert (got.phase, got.snapshot, got.last_seq) == ("progressing", {"step": 2}, 3)
        assert [r.id for r in store.list_rollouts(active_only=True)] == ["churn-abc123"]
        store.append_event("churn-abc123", "done", {}, at=20.0, lease=None, phase="succeeded")
        assert store.list_rollouts(active_only=True) == []

    def test_appending_to_an_unknown_rollout_is_a_usage_error(self, store: StateStore) -> None:
        with pytest.raises(UsageError, match="no rollout 'ghost'"):
            store.append_event("ghost", "started", {}, at=0.0, lease=None)

    def test_values_round_trip(self, store: StateStore, other: StateStore) -> None:
        assert store.get_value("sandbox", "churn/x") is None
        store.put_value("sandbox", "churn/x", {"a": [1, 2]}, lease=None)
        other.put_value("sandbox", "churn/x", {"a": [3]}, lease=None)
        assert store.get_value("sandbox", "churn/x") == {"a": [3]}
        assert store.get_value("other", "churn/x") is None

    # ------------------------------------------------------------------------------ leases

    def test_one_lease_per_endpoint_with_a_fencing_token(
        self, store: StateStore, other: StateStore, wall: Wall
    ) -> None:
        key = "contract:us-east-1/churn"
        lease = store.acquire_lease(key, "runner-a", ttl=60)
        assert lease.token == 1 and lease.expires_at == wall.now + 60
        with pytest.raises(LeaseHeld, match="driven by runner-a"):
            other.acquire_lease(key, "runner-b", ttl=60)
        assert other.current_lease(key) == lease
        # renewed by its holder; re-acquired by its holder under the same token
        wall.now += 30
        lease = store.renew_lease(lease, ttl=60)
        assert lease.expires_at == wall.now + 60
        assert store.acquire_lease(key, "runner-a", ttl=60).token == 1
        # expired: another runner takes it over with a higher token
        wall.now += 120
        assert other.current_lease(key) is None
        taken = other.acquire_lease(key, "runner-b", ttl=60)
        assert taken.token == 2
        with pytest.raises(LeaseLost, match="runner-b"):
            store.renew_lease(lease, ttl=60)
        store.release_lease(lease)  # no error, and no effect
        assert store.current_lease(key) == taken
        # released: free at once, and tokens never go back
        other.release_lease(taken)
        assert store.current_lease(key) is None
        assert store.acquire_lease(key, "runner-a", ttl=60).token == 3
        assert store.acquire_lease("contract:other", "runner-a", ttl=60).token == 1

    def test_writes_of_a_runner_that_lost_its_lease_are_refused(
        self, store: StateStore, other: StateStore, wall: Wall
    ) -> None:
        store.create_rollout(record())
        key = "contract:e"
        old = store.acquire_lease(key, "runner-a", ttl=60)
        store.append_event("churn-abc123", "a", {}, at=1.0, lease=old)
        store.put_value("sandbox", "x", {"w": 1}, lease=old)
        wall.now += 120
        new = other.acquire_lease(key, "runner-b", ttl=60)
        other.append_event("churn-abc123", "b", {}, at=2.0, lease=new)
        with pytest.raises(LeaseLost):
            store.append_event("churn-abc123", "stale", {}, at=3.0, lease=old, phase="rolled_back")
        with pytest.raises(LeaseLost):
            store.put_value("sandbox", "x", {"w": 2}, lease=old)
        with pytest.raises(LeaseLost):
            store.renew_lease(old, ttl=60)
        assert [e.kind for e in other.events("churn-abc123")] == ["a", "b"]
        assert other.get_rollout("churn-abc123").phase == "pending"
        assert other.get_value("sandbox", "x") == {"w": 1}

    def test_an_expired_lease_cannot_write_but_can_renew(
        self, store: StateStore, wall: Wall
    ) -> None:
        store.create_rollout(record())
        lease = store.acquire_lease("contract:e", "alice", ttl=10)
        wall.now += 11
        with pytest.raises(LeaseLost, match="expired"):
            store.append_event("churn-abc123", "look", {}, at=0.0, lease=lease)
        renewed = store.renew_lease(lease, ttl=10)
        assert renewed.token == lease.token and renewed.expires_at == wall.now + 10
        assert store.append_event("churn-abc123", "look", {}, at=0.0, lease=renewed).seq == 1

    def test_the_record_refuses_a_lower_token_even_when_the_lease_check_raced(
        self, store: StateStore, wall: Wall, forge_lease: Callable[..., None] | None
    ) -> None:
        """Fencing in the record itself: token 2 wrote, so token 1 can no longer write there."""
        if forge_lease is None:
            pytest.skip("this store checks the lease and writes in one transaction")
        store.create_rollout(record())
        key = "contract:e"
        first = store.acquire_lease(key, "runner-a", ttl=60)
        wall.now += 120
        second = store.acquire_lease(key, "runner-b", ttl=60)
        store.append_event("churn-abc123", "b", {}, at=1.0, lease=second)
        # runner-a's lease check passes (its lease object says so), then it writes
        forge_lease(store, key, "runner-a", 1, wall.now + 60)
        with pytest.raises(LeaseLost, match="token 2 has written since"):
            store.append_event("churn-abc123", "stale", {}, at=2.0, lease=first)

    def test_of_runners_racing_for_a_lease_exactly_one_wins(
        self, make_store: Callable[[], StateStore]
    ) -> None:
        won, refused = self._race(
            make_store, 4, lambda s, n: s.acquire_lease("contract:e", f"runner-{n}", ttl=60)
        )
        assert len(won) == 1 and len(refused) == 3
        assert all(isinstance(exc, LeaseHeld) for exc in refused)

    # --------------------------------------------------------------------------- races

    def test_two_runs_starting_together_create_one_rollout_per_endpoint(
        self, store: StateStore, make_store: Callable[[], StateStore]
    ) -> None:
        won, refused = self._race(
            make_store,
            4,
            lambda s, n: s.create_rollout(record(f"churn-{n:06d}", endpoint="contract:e")),
        )
        assert len(won) == 1 and len(refused) == 3
        assert all(isinstance(exc, RolloutActive) for exc in refused)
        winner = f"churn-{won[0]:06d}"
        assert [r.id for r in store.list_rollouts()] == [winner]
        # another endpoint is not blocked; once the active rollout ends, the endpoint is free
        store.create_rollout(record("other-000001", endpoint="contract:other"))
        with pytest.raises(RolloutActive, match=winner):
            store.create_rollout(record("churn-later1", endpoint="contract:e"))
        store.append_event(winner, "rolled_back", {}, at=2.0, lease=None, phase="rolled_back")
        store.create_rollout(record("churn-later2", endpoint="contract:e"))
        assert store.get_rollout("churn-later2").phase == "pending"

    def test_an_append_racing_another_loses_its_commit_then_lands_after_it(
        self,
        store: StateStore,
        other: StateStore,
        interleave: Callable[[StateStore, Callable[[], None]], list[bool]] | None,
    ) -> None:
        if interleave is None:
            pytest.skip("this store serialises appends in transactions (no commit to race)")
        store.create_rollout(record())
        store.append_event("churn-abc123", "started", {}, at=0.0, lease=None)

        def abort_from_elsewhere() -> None:
            other.append_event("churn-abc123", "command.abort", {"by": "b"}, at=1.0, lease=None)

        outcomes = interleave(store, abort_from_elsewhere)
        event = store.append_event("churn-abc123", "look", {}, at=1.0, lease=None)
        # both wrote seq 2 on the same read: exactly one commit won, the other was refused
        assert outcomes == [False, True]
        assert event.seq == 3
        assert [(e.seq, e.kind) for e in other.events("churn-abc123")] == [
            (1, "started"),
            (2, "command.abort"),
            (3, "look"),
        ]

    def test_concurrent_appends_never_lose_or_duplicate_events(
        self, store: StateStore, make_store: Callable[[], StateStore]
    ) -> None:
        store.create_rollout(record())
        per_writer = 6

        def append(s: StateStore, n: int) -> None:
            for i in range(per_writer):
                s.append_event("churn-abc123", f"w{n}", {"i": i}, at=float(i), lease=None)

        won, failed = self._race(make_store, 3, append)
        assert failed == [] and len(won) == 3
        events = store.events("churn-abc123")
        assert [e.seq for e in events] == list(range(1, 3 * per_writer + 1))
        for n in range(3):
            assert [e.data["i"] for e in events if e.kind == f"w{n}"] == list(range(per_writer))
        assert store.get_rollout("churn-abc123").last_seq == 3 * per_writer

    # --------------------------------------------------------------------------- corrupt

    def test_a_corrupt_journal_entry_is_a_clear_error_and_the_rest_stays_readable(
        self,
        store: StateStore,
        corrupt_event: Callable[[StateStore, str], Corrupted] | None,
    ) -> None:
        if corrupt_event is None:
            pytest.skip("no way to corrupt this store's journal from outside given")
        store.create_rollout(record("churn-aaa111", 1.0))
        store.create_rollout(record("fraud-bbb222", 2.0))
        for rid in ("churn-aaa111", "fraud-bbb222"):
            for kind in ("started", "look"):
                store.append_event(rid, kind, {"n": 1}, at=1.0, lease=None)
        broken = corrupt_event(store, "churn-aaa111")

        with pytest.raises(StateCorrupt) as caught:
            store.events("churn-aaa111")
        assert caught.value.exit_code == ExitCode.NEEDS_HUMAN
        assert caught.value.hint
        if broken.name is not None:  # an object store: the same words on every cloud
            assert caught.value.message == f"state object {store.location}{broken.name} is not JSON"
        else:
            assert store.location in caught.value.message and "JSON" in caught.value.message
        # nothing was overwritten, and the other rollout's history is intact
        assert broken.read_back() == broken.garbage
        assert [e.kind for e in store.events("fraud-bbb222")] == ["started", "look"]
        assert {r.id for r in store.list_rollouts()} == {"churn-aaa111", "fraud-bbb222"}

    # --------------------------------------------------------------------------- helpers

    @staticmethod
    def _race(
        make_store: Callable[[], StateStore], n: int, action: Callable[[StateStore, int], Any]
    ) -> tuple[list[int], list[BaseException]]:
        """``action(store, i)`` for i in 0..n-1, each on its own store in its own thread, all
        released together; the indexes that returned and the errors of the others."""
        stores = [make_store() for _ in range(n)]
        barrier = threading.Barrier(n)
        won: list[int] = []
        refused: list[BaseException] = []

        def run(i: int) -> None:
            barrier.wait()
            try:
                action(stores[i], i)
                won.append(i)
            except Exception as exc:
                refused.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        for s in stores:
            s.close()
        return won, refused


class ObjectStoreContract(StateStoreContract):
    """The checks for a store on :class:`~mlrollout.state.objects.ObjectStateStore` (S3, GCS,
    Azure Blob): ``interleave`` and ``forge_lease`` are the object stores'; define
    ``make_store`` (and ``corrupt_event``)."""

    @pytest.fixture
    def interleave(self) -> Callable[[StateStore, Callable[[], None]], list[bool]] | None:
        return object_store_interleave

    @pytest.fixture
    def forge_lease(self) -> Callable[..., None] | None:
        return object_store_forge_lease
