"""SqliteStateStore on real SQLite files in tmp_path; the wall clock is injected, nothing sleeps."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mlrollout.errors import LeaseHeld, LeaseLost, StateCorrupt, StateUnavailable, UsageError
from mlrollout.state.base import RolloutRecord
from mlrollout.state.sqlite import SqliteStateStore, open_sqlite_store


class FakeWall:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(
    rid: str, *, created_at: float = 1.0, phase: str = "pending", endpoint: str | None = None
) -> RolloutRecord:
    return RolloutRecord(
        id=rid,
        name=f"roll-{rid}",
        endpoint_key=endpoint or f"local/ep-{rid}",
        plan={"strategy": {"kind": "canary", "steps": [5, 25, 100]}, "ratio": 0.5},
        plan_path="plans/canary.yaml",
        created_at=created_at,
        phase=phase,
    )


@pytest.fixture
def wall() -> FakeWall:
    return FakeWall()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


@pytest.fixture
def store(db: Path, wall: FakeWall) -> Iterator[SqliteStateStore]:
    s = SqliteStateStore(db, wall=wall)
    yield s
    s.close()


def test_create_get_by_id_and_prefix(store: SqliteStateStore) -> None:
    store.create_rollout(record("r-abc123"))
    store.create_rollout(record("r-abd456"))
    got = store.get_rollout("r-abc123")
    assert got == replace(record("r-abc123"), updated_at=1.0)
    assert got.plan["strategy"]["steps"] == [5, 25, 100]
    assert store.get_rollout("r-abd").id == "r-abd456"
    with pytest.raises(UsageError, match="ambiguous"):
        store.get_rollout("r-ab")
    with pytest.raises(UsageError, match="no rollout 'nope'") as exc:
        store.get_rollout("nope")
    assert exc.value.hint is not None and "mlrollout list" in exc.value.hint
    with pytest.raises(UsageError, match="already exists"):
        store.create_rollout(record("r-abc123"))


def test_prefix_is_not_a_pattern(store: SqliteStateStore) -> None:
    store.create_rollout(record("r_1"))
    with pytest.raises(UsageError, match="no rollout"):
        store.get_rollout("r%")


def test_append_event_seq_and_snapshot(store: SqliteStateStore, wall: FakeWall) -> None:
    store.create_rollout(record("r1"))
    wall.now = 2_000_000.0
    e1 = store.append_event("r1", "started", {"x": 1}, at=10.0, lease=None, phase="running")
    e2 = store.append_event("r1", "look", {"p": 0.03}, at=11.0, lease=None, snapshot={"step": 1})
    e3 = store.append_event("r1", "note", {}, at=12.0, lease=None)
    assert [e.seq for e in (e1, e2, e3)] == [1, 2, 3]
    assert e1.recorded_at == 2_000_000.0 and e2.data == {"p": 0.03}
    got = store.get_rollout("r1")
    assert (got.phase, got.snapshot, got.last_seq, got.updated_at) == (
        "running",
        {"step": 1},
        3,
        2_000_000.0,
    )
    assert store.events("r1") == [e1, e2, e3]
    assert [e.seq for e in store.events("r1", after=1)] == [2, 3]
    assert store.events("r1", after=3) == []


def test_append_unknown_rollout_and_bad_data(store: SqliteStateStore) -> None:
    with pytest.raises(UsageError, match="no rollout 'ghost'"):
        store.append_event("ghost", "started", {}, at=0.0, lease=None)
    store.create_rollout(record("r1"))
    with pytest.raises(TypeError):
        store.append_event("r1", "bad", {"x": object()}, at=0.0, lease=None)
    assert store.events("r1") == [] and store.get_rollout("r1").last_seq == 0


def test_kv_roundtrip(store: SqliteStateStore) -> None:
    assert store.get_value("sandbox", "ep") is None
    store.put_value("sandbox", "ep", {"weights": {"a": 90, "b": 10}}, lease=None)
    store.put_value("sandbox", "ep", {"weights": {"a": 50, "b": 50}}, lease=None)
    assert store.get_value("sandbox", "ep") == {"weights": {"a": 50, "b": 50}}
    assert store.get_value("other", "ep") is None


def test_fencing_after_takeover(db: Path, wall: FakeWall) -> None:
    a, b = SqliteStateStore(db, wall=wall), SqliteStateStore(db, wall=wall)
    try:
        a.create_rollout(record("r1"))
        lease_a = a.acquire_lease("local/ep", "alice@h pid 1", ttl=30)
        assert lease_a.token == 1 and lease_a.expires_at == wall.now + 30
        a.append_event("r1", "started", {}, at=0.0, lease=lease_a, phase="running")
        a.put_value("sandbox", "ep", {"w": 1}, lease=lease_a)

        wall.now += 31  # A stalls past its lease
        lease_b = b.acquire_lease("local/ep", "bob@h pid 2", ttl=30)
        assert lease_b.token == 2

        with pytest.raises(LeaseLost, match="bob@h pid 2"):
            a.append_event("r1", "look", {}, at=1.0, lease=lease_a, phase="failed")
        with pytest.raises(LeaseLost, match="bob@h pid 2"):
            a.put_value("sandbox", "ep", {"w": 2}, lease=lease_a)
        with pytest.raises(LeaseLost):
            a.renew_lease(lease_a, ttl=30)
        a.release_lease(lease_a)  # no error, and no effect

        assert [e.kind for e in b.events("r1")] == ["started"]
        assert b.get_rollout("r1").phase == "running"
        assert b.get_value("sandbox", "ep") == {"w": 1}
        assert b.current_lease("local/ep") == lease_b
        b.append_event("r1", "look", {}, at=1.0, lease=lease_b)
    finally:
        a.close()
        b.close()


def test_expired_lease_cannot_write_but_can_renew(store: SqliteStateStore, wall: FakeWall) -> None:
    store.create_rollout(record("r1"))
    lease = store.acquire_lease("ep", "alice", ttl=10)
    wall.now += 11
    with pytest.raises(LeaseLost, match="expired"):
        store.append_event("r1", "look", {}, at=0.0, lease=lease)
    renewed = store.renew_lease(lease, ttl=10)
    assert renewed.token == lease.token and renewed.expires_at == wall.now + 10
    assert store.append_event("r1", "look", {}, at=0.0, lease=renewed).seq == 1


def test_lease_held_names_holder(store: SqliteStateStore, wall: FakeWall) -> None:
    store.acquire_lease("ep", "alice@laptop pid 7", ttl=60)
    wall.now += 15
    with pytest.raises(LeaseHeld, match=r"ep is driven by alice@laptop pid 7 .*expires in 45s"):
        store.acquire_lease("ep", "bob", ttl=60)


def test_same_holder_reacquires_live_lease(store: SqliteStateStore, wall: FakeWall) -> None:
    first = store.acquire_lease("ep", "alice", ttl=60)
    wall.now += 10
    again = store.acquire_lease("ep", "alice", ttl=60)
    assert again.token == first.token and again.expires_at == wall.now + 60


def test_release_then_reacquire(store: SqliteStateStore) -> None:
    first = store.acquire_lease("ep", "alice", ttl=60)
    store.release_lease(first)
    assert store.current_lease("ep") is None
    second = store.acquire_lease("ep", "bob", ttl=60)
    assert second.token == first.token + 1
    store.release_lease(second)
    third = store.acquire_lease("ep", "alice", ttl=60)
    assert third.token == second.token + 1  # tokens never go back
    assert store.acquire_lease("other", "alice", ttl=60).token == 1


def test_two_instances_share_the_file(db: Path, wall: FakeWall) -> None:
    a, b = SqliteStateStore(db, wall=wall), SqliteStateStore(db, wall=wall)
    try:
        a.create_rollout(record("r1"))
        assert b.get_rollout("r1").id == "r1"
        b.append_event("r1", "started", {}, at=0.0, lease=None, phase="running")
        assert a.get_rollout("r1").phase == "running"
        assert a.append_event("r1", "look", {}, at=1.0, lease=None).seq == 2
        lease = a.acquire_lease("ep", "alice", ttl=60)
        with pytest.raises(LeaseHeld, match="alice"):
            b.acquire_lease("ep", "bob", ttl=60)
        assert b.current_lease("ep") == lease
    finally:
        a.close()
        b.close()


def test_concurrent_appends_are_gapless(db: Path, wall: FakeWall) -> None:
    setup = SqliteStateStore(db, wall=wall)
    setup.create_rollout(record("r1"))
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        s = SqliteStateStore(db, wall=wall)
        try:
            for i in range(40):
                s.append_event("r1", name, {"i": i}, at=float(i), lease=None)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    events = setup.events("r1")
    assert [e.seq for e in events] == list(range(1, 81))
    assert sorted(e.data["i"] for e in events if e.kind == "a") == list(range(40))
    assert setup.get_rollout("r1").last_seq == 80
    setup.close()


def test_event_survives_sigkill(db: Path) -> None:
    SqliteStateStore(db).close()
    script = f"""
import os, signal
from pathlib import Path
from mlrollout.state.base import RolloutRecord
from mlrollout.state.sqlite import SqliteStateStore
s = SqliteStateStore(Path({str(db)!r}))
s.create_rollout(RolloutRecord("r1", "n", "ep", {{}}, "p.yaml", 1.0))
e = s.append_event("r1", "started", {{"ok": True}}, at=0.0, lease=None, phase="running")
print(e.seq, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.strip() == "1"
    s = SqliteStateStore(db)
    try:
        assert [e.data for e in s.events("r1")] == [{"ok": True}]
        assert s.get_rollout("r1").phase == "running"
    finally:
        s.close()


def test_list_rollouts_newest_first_and_active(store: SqliteStateStore) -> None:
    store.create_rollout(record("old", created_at=1.0, phase="succeeded"))
    store.create_rollout(record("mid", created_at=2.0, phase="running"))
    store.create_rollout(record("new", created_at=3.0, phase="rolled_back"))
    store.create_rollout(record("newest", created_at=4.0, phase="pending"))
    assert [r.id for r in store.list_rollouts()] == ["newest", "new", "mid", "old"]
    assert [r.id for r in store.list_rollouts(limit=2)] == ["newest", "new"]
    assert [r.id for r in store.list_rollouts(active_only=True)] == ["newest", "mid"]
    store.append_event("mid", "done", {}, at=0.0, lease=None, phase="aborted")
    assert [r.id for r in store.list_rollouts(active_only=True)] == ["newest"]


def test_open_sqlite_store_locations(tmp_path: Path) -> None:
    s = open_sqlite_store(str(tmp_path / ".mlrollout"))
    assert s.location == str(tmp_path / ".mlrollout" / "state.db")
    s.close()
    for name in ("custom.db", "custom.sqlite"):
        s = open_sqlite_store(str(tmp_path / "nested" / name))
        assert s.location == str(tmp_path / "nested" / name)
        assert Path(s.location).is_file()
        s.close()


def test_garbage_file_is_corrupt_and_untouched(db: Path) -> None:
    db.parent.mkdir(parents=True)
    garbage = bytes(range(256)) * 32
    db.write_bytes(garbage)
    with pytest.raises(StateCorrupt) as exc:
        SqliteStateStore(db)
    assert str(db) in str(exc.value)
    assert exc.value.hint is not None and ".recover" in exc.value.hint
    assert db.read_bytes() == garbage


def test_truncated_db_is_corrupt_or_readable(db: Path) -> None:
    s = SqliteStateStore(db)
    for n in range(20):
        s.create_rollout(record(f"r{n:02d}", created_at=float(n)))
        for i in range(10):
            s.append_event(f"r{n:02d}", "look", {"pad": "x" * 400, "i": i}, at=0.0, lease=None)
    s.close()  # checkpoints the WAL into the main file
    size = db.stat().st_size
    assert size > 100_000
    with db.open("r+b") as fh:
        fh.truncate(size // 2)
    try:
        s = SqliteStateStore(db)
        try:
            for r in s.list_rollouts():
                s.events(r.id)
        finally:
            s.close()
    except StateCorrupt as exc:
        assert str(db) in str(exc)


def test_sqlite_db_of_another_app_is_refused(db: Path) -> None:
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE things (x)")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    with pytest.raises(StateUnavailable, match="not mlrollout state"):
        SqliteStateStore(db)
    assert db.read_bytes() == before


def test_parent_is_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("not a dir")
    with pytest.raises(StateUnavailable, match="blocker") as exc:
        open_sqlite_store(str(blocker / "sub"))
    assert exc.value.hint is not None and "--state" in exc.value.hint
    assert blocker.read_text() == "not a dir"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StateUnavailable, match="locked"):
            open_sqlite_store(str(locked))
        with pytest.raises(StateUnavailable, match="locked"):
            open_sqlite_store(str(locked / "deeper" / "x.db"))
    finally:
        locked.chmod(0o700)


def test_read_only_file_fails_on_open(db: Path) -> None:
    SqliteStateStore(db).close()
    # chattr +i blocks writes even for root; skip where the filesystem or capabilities refuse it.
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(db)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        with pytest.raises(StateUnavailable, match="readonly") as exc:
            SqliteStateStore(db)
        assert exc.value.hint is not None and str(db) in exc.value.hint
    finally:
        subprocess.run([chattr, "-i", str(db)], check=True)
