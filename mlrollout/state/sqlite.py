"""The embedded state store: one SQLite file (``.mlrollout/state.db`` by default).

Several processes may share the file: it runs in WAL mode with ``synchronous=FULL`` (an event that
was appended and returned survives a SIGKILL or power loss). Lease writes alone are not synced
(``synchronous=NORMAL`` for their transaction): they survive a SIGKILL, the next journal write's
sync makes them durable with it, and one lost to a power cut can only hand the lease back to an
earlier state — the fencing check (holder *and* token) still refuses every write of a runner that
no longer holds it. That halves the syncs of a `reconcile` pass (take and hand back a lease per
rollout). Every write is one short
``BEGIN IMMEDIATE`` transaction, so the fencing check and the write it guards are atomic (and so
is creating a rollout with the check that no other is active on its endpoint). A file locked by
another process is waited for up to ``busy_timeout`` seconds. Before each write the store checks
that its path still names the file it opened: a state directory deleted or replaced mid-run is
:class:`~mlrollout.errors.StateLost`, never a journal silently written into a deleted file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlrollout.engine.phases import TERMINAL
from mlrollout.errors import (
    LeaseHeld,
    LeaseLost,
    RolloutActive,
    StateCorrupt,
    StateLost,
    StateUnavailable,
    UsageError,
)
from mlrollout.state.base import Event, Lease, RolloutRecord

SCHEMA_VERSION = 1
TERMINAL_PHASES = frozenset(phase.value for phase in TERMINAL)
BUSY_TIMEOUT_S = 15.0

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE rollouts (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, endpoint_key TEXT NOT NULL,
        plan_json TEXT NOT NULL, plan_path TEXT NOT NULL, created_at REAL NOT NULL,
        phase TEXT NOT NULL, snapshot_json TEXT NOT NULL, updated_at REAL NOT NULL,
        last_seq INTEGER NOT NULL)""",
    "CREATE INDEX rollouts_created ON rollouts (created_at)",
    """CREATE TABLE events (
        rollout_id TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL,
        recorded_at REAL NOT NULL, kind TEXT NOT NULL, data_json TEXT NOT NULL,
        PRIMARY KEY (rollout_id, seq))""",
    """CREATE TABLE kv (
        namespace TEXT NOT NULL, key TEXT NOT NULL, value_json TEXT NOT NULL,
        PRIMARY KEY (namespace, key))""",
    """CREATE TABLE leases (
        endpoint_key TEXT PRIMARY KEY, holder TEXT NOT NULL, token INTEGER NOT NULL,
        expires_at REAL NOT NULL)""",
    f"INSERT INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}')",
)
_ROLLOUT_COLS = (
    "id, name, endpoint_key, plan_json, plan_path, created_at, phase, snapshot_json, updated_at,"
    " last_seq"
)
_CORRUPT_MARKERS = ("not a database", "malformed", "corrupt")


def _dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _loads(text: str, what: str, location: str) -> Any:
    """A stored JSON document; :class:`StateCorrupt` naming the record and the file if it does
    not parse as the JSON object it should be (nothing is rewritten)."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        problem = f"is not valid JSON ({exc})"
    else:
        if isinstance(value, dict):
            return value
        problem = f"holds a JSON {type(value).__name__}, not an object"
    raise StateCorrupt(
        f"state database {location}: {what} {problem}",
        hint=f"keep a copy of {location}; mlrollout never rewrites it — restore the record from "
        "a backup, or move the file aside to start afresh",
    )


class SqliteStateStore:
    """:class:`~mlrollout.state.base.StateStore` on one SQLite file. Thread-safe per instance."""

    def __init__(
        self,
        path: Path,
        *,
        wall: Callable[[], float] = time.time,
        busy_timeout: float = BUSY_TIMEOUT_S,
    ) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self._wall = wall
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unavailable(f"cannot create directory {self.path.parent}: {exc}") from exc
        if self.path.is_dir():
            raise self._unavailable(f"state path {self.location} is a directory, not a file")
        try:
            conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._unavailable(f"cannot open state database {self.location}: {exc}") from exc
        self._conn = conn
        try:
            with self._guard():
                self._setup()
                self._identity = self._file_identity()
        except BaseException:
            conn.close()
            raise

    # -- plumbing ---------------------------------------------------------------------------------

    def _unavailable(self, message: str) -> StateUnavailable:
        return StateUnavailable(
            message,
            hint=f"make {self.location} and its directory writable,"
            " or pass --state PATH to a writable location",
        )

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn SQLite/OS failures into StateCorrupt / StateUnavailable naming the file."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if any(marker in text for marker in _CORRUPT_MARKERS):
                raise StateCorrupt(
                    f"state database {self.location} is corrupt: {text}",
                    hint=f"keep a copy of it, then try `sqlite3 {self.location} .recover`;"
                    " mlrollout never overwrites it",
                ) from exc
            if "locked" in text or "busy" in text:
                raise StateUnavailable(
                    f"state database {self.location} stayed locked for {self.busy_timeout:g}s:"
                    f" {text}",
                    hint="another mlrollout process holds it; try again",
                ) from exc
            if isinstance(exc, sqlite3.OperationalError):
                raise self._unavailable(
                    f"cannot use state database {self.location}: {text}"
                ) from exc
            raise StateCorrupt(
                f"state database {self.location} is unusable: {text}",
                hint=f"keep a copy of it, then try `sqlite3 {self.location} .recover`",
            ) from exc
        except OSError as exc:
            raise self._unavailable(f"cannot use state database {self.location}: {exc}") from exc

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._guard():
            yield self._conn

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def _check_same_file(self) -> None:
        if self._file_identity() != self._identity:
            gone = "deleted" if self._file_identity() is None else "replaced by another file"
            raise StateLost(
                f"state database {self.location} was {gone} while this runner used it: the "
                "journal of its rollouts is lost; nothing more was written",
                hint="check the endpoint by hand (its live traffic is the truth) and restore the "
                "state from a backup, or `mlrollout abort` with the restored state",
            )

    @contextmanager
    def _write(self, *, synced: bool = True) -> Iterator[sqlite3.Connection]:
        """One short write transaction; everything inside commits together or not at all.
        ``synced=False`` (lease writes, see the module's docstring): not fsynced on its own."""
        with self._lock, self._guard():
            self._check_same_file()
            conn = self._conn
            if not synced:
                conn.execute("PRAGMA synchronous = NORMAL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.rollback()
                    raise
            finally:
                if not synced:
                    conn.execute("PRAGMA synchronous = FULL")

    def _setup(self) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        # Look before writing anything: a foreign or corrupt file must stay byte-for-byte intact.
        self._check_schema()
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not self._check_schema():  # re-check: another process may have just created it
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute("COMMIT")
            else:  # fail now, not mid-rollout, if the file is read-only (BEGIN alone won't tell)
                conn.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
                conn.execute("ROLLBACK")
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise

    def _check_schema(self) -> bool:
        """True if the file holds mlrollout state of our schema; False if it is empty."""
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master")}
        if not tables:
            return False
        if "meta" not in tables:
            raise StateUnavailable(
                f"{self.location} is an SQLite database but not mlrollout state",
                hint="point --state at an mlrollout state directory (or a new file)",
            )
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version != SCHEMA_VERSION:
            raise StateUnavailable(
                f"state database {self.location} has schema version {version};"
                f" this mlrollout reads version {SCHEMA_VERSION}",
                hint="use the mlrollout version that wrote it (or a newer one)",
            )
        return True

    def _check_fence(
        self, conn: sqlite3.Connection, lease: Lease | None, *, allow_expired: bool = False
    ) -> None:
        if lease is None:
            return
        row = conn.execute(
            "SELECT holder, token, expires_at FROM leases WHERE endpoint_key = ?",
            (lease.endpoint_key,),
        ).fetchone()
        hint = (
            "another runner may be driving the endpoint; check `mlrollout status` before resuming"
        )
        if row is None or (row[0], row[1]) != (lease.holder, lease.token):
            now_holder = f"{row[0]} (token {row[1]})" if row else "nobody"
            raise LeaseLost(
                f"lost the lease on endpoint {lease.endpoint_key} (token {lease.token}):"
                f" it is now held by {now_holder}",
                hint=hint,
            )
        if not allow_expired and row[2] <= self._wall():
            raise LeaseLost(
                f"the lease on endpoint {lease.endpoint_key} (token {lease.token}) expired"
                f" {self._wall() - row[2]:.0f}s ago; nobody holds it now",
                hint=hint,
            )

    # -- rollouts ---------------------------------------------------------------------------------

    def create_rollout(self, record: RolloutRecord) -> None:
        r = record
        plan, snapshot = _dumps(r.plan), _dumps(r.snapshot)
        updated = r.updated_at or r.created_at
        row = (r.id, r.name, r.endpoint_key, plan, r.plan_path, r.created_at, r.phase, snapshot)
        terminal = sorted(TERMINAL_PHASES)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM rollouts WHERE id = ?", (record.id,)).fetchone():
                raise UsageError(f"rollout {record.id!r} already exists in {self.location}")
            # The check and the insert are one transaction: two runs starting together cannot
            # both create a rollout on one endpoint.
            other = conn.execute(
                "SELECT id, phase FROM rollouts WHERE endpoint_key = ? AND phase NOT IN"
                f" ({', '.join('?' * len(terminal))}) LIMIT 1",
                (record.endpoint_key, *terminal),
            ).fetchone()
            if other is not None:
                raise RolloutActive(
                    f"rollout {other[0]} is still active on {record.endpoint_key}"
                    f" (phase {other[1]})",
                    hint=f"finish it with `mlrollout resume {other[0]}` or "
                    f"`mlrollout abort {other[0]}`",
                )
            conn.execute(
                f"INSERT INTO rollouts ({_ROLLOUT_COLS}) VALUES ({', '.join('?' * 10)})",
                (*row, updated, r.last_seq),
            )

    def get_rollout(self, rollout_id: str) -> RolloutRecord:
        sql = f"SELECT {_ROLLOUT_COLS} FROM rollouts"
        with self._read() as conn:
            row = conn.execute(f"{sql} WHERE id = ?", (rollout_id,)).fetchone()
            rows = [row] if row else []
            if not rows and rollout_id:
                rows = conn.execute(
                    f"{sql} WHERE substr(id, 1, ?) = ? ORDER BY created_at DESC LIMIT 11",
                    (len(rollout_id), rollout_id),
                ).fetchall()
        if len(rows) == 1:
            return self._record(rows[0])
        hint = "`mlrollout list` shows the rollouts"
        if not rows:
            raise UsageError(f"no rollout {rollout_id!r} in {self.location}", hint=hint)
        names = ", ".join(str(r[0]) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
        raise UsageError(
            f"rollout id {rollout_id!r} is ambiguous: it matches {names}",
            hint="give more characters of the id",
        )

    def list_rollouts(self, *, active_only: bool = False, limit: int = 100) -> list[RolloutRecord]:
        where, params = "", list[object]([limit])
        if active_only:
            where = f"WHERE phase NOT IN ({', '.join('?' * len(TERMINAL_PHASES))})"
            params = [*sorted(TERMINAL_PHASES), limit]
        order = "ORDER BY created_at DESC, id DESC LIMIT ?"
        sql = f"SELECT {_ROLLOUT_COLS} FROM rollouts {where} {order}"
        with self._read() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [self._record(r) for r in rows]

    # -- journal ----------------------------------------------------------------------------------

    def append_event(
        self,
        rollout_id: str,
        kind: str,
        data: dict[str, Any],
        *,
        at: float,
        lease: Lease | None,
        phase: str | None = None,
        snapshot: dict[str, Any] | None = None,
    ) -> Event:
        data_json = _dumps(data)
        snapshot_json = None if snapshot is None else _dumps(snapshot)
        with self._write() as conn:
            self._check_fence(conn, lease)
            row = conn.execute(
                "SELECT last_seq FROM rollouts WHERE id = ?", (rollout_id,)
            ).fetchone()
            if row is None:
                raise UsageError(f"no rollout {rollout_id!r} in {self.location}")
            seq, now = int(row[0]) + 1, self._wall()
            conn.execute(
                "INSERT INTO events (rollout_id, seq, at, recorded_at, kind, data_json)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (rollout_id, seq, at, now, kind, data_json),
            )
            conn.execute(
                "UPDATE rollouts SET last_seq = ?, updated_at = ?, phase = coalesce(?, phase),"
                " snapshot_json = coalesce(?, snapshot_json) WHERE id = ?",
                (seq, now, phase, snapshot_json, rollout_id),
            )
        return Event(rollout_id, seq, at, kind, json.loads(data_json), recorded_at=now)

    def events(self, rollout_id: str, *, after: int = 0) -> list[Event]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT seq, at, kind, data_json, recorded_at FROM events"
                " WHERE rollout_id = ? AND seq > ? ORDER BY seq",
                (rollout_id, after),
            ).fetchall()
        return [
            Event(
                rollout_id,
                s,
                a,
                k,
                _loads(d, f"event {s} of rollout {rollout_id}", self.location),
                recorded_at=r,
            )
            for s, a, k, d, r in rows
        ]

    # -- key/value --------------------------------------------------------------------------------

    def get_value(self, namespace: str, key: str) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT value_json FROM kv WHERE namespace = ? AND key = ?", (namespace, key)
            ).fetchone()
        return None if row is None else _loads(row[0], f"value {namespace}/{key}", self.location)

    def put_value(
        self, namespace: str, key: str, value: dict[str, Any], *, lease: Lease | None
    ) -> None:
        value_json = _dumps(value)
        with self._write() as conn:
            self._check_fence(conn, lease)
            conn.execute(
                "INSERT INTO kv (namespace, key, value_json) VALUES (?, ?, ?)"
                " ON CONFLICT (namespace, key) DO UPDATE SET value_json = excluded.value_json",
                (namespace, key, value_json),
            )

    # -- leases -----------------------------------------------------------------------------------

    def acquire_lease(self, endpoint_key: str, holder: str, ttl: float) -> Lease:
        with self._write(synced=False) as conn:
            now = self._wall()
            row = conn.execute(
                "SELECT holder, token, expires_at FROM leases WHERE endpoint_key = ?",
                (endpoint_key,),
            ).fetchone()
            if row is not None and row[2] > now and row[0] != holder:
                raise LeaseHeld(
                    f"endpoint {endpoint_key} is driven by {row[0]}"
                    f" (lease expires in {row[2] - now:.0f}s)",
                    hint="wait for it, or stop that runner; its lease lapses if it stops renewing",
                )
            # A live lease of ours is renewed under the same token; anything else changes hands.
            token = row[1] if row is not None and row[2] > now else (row[1] + 1 if row else 1)
            lease = Lease(endpoint_key, holder, token, now + ttl)
            conn.execute(
                "INSERT INTO leases (endpoint_key, holder, token, expires_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (endpoint_key) DO UPDATE SET holder = excluded.holder,"
                " token = excluded.token, expires_at = excluded.expires_at",
                (endpoint_key, holder, token, lease.expires_at),
            )
        return lease

    def renew_lease(self, lease: Lease, ttl: float) -> Lease:
        with self._write(synced=False) as conn:
            # Expired but not taken over is still ours: the token proves nobody else wrote.
            self._check_fence(conn, lease, allow_expired=True)
            renewed = Lease(lease.endpoint_key, lease.holder, lease.token, self._wall() + ttl)
            conn.execute(
                "UPDATE leases SET expires_at = ? WHERE endpoint_key = ?",
                (renewed.expires_at, lease.endpoint_key),
            )
        return renewed

    def release_lease(self, lease: Lease) -> None:
        with self._write(synced=False) as conn:
            conn.execute(
                "UPDATE leases SET expires_at = 0"
                " WHERE endpoint_key = ? AND holder = ? AND token = ?",
                (lease.endpoint_key, lease.holder, lease.token),
            )

    def current_lease(self, endpoint_key: str) -> Lease | None:
        """The endpoint's live lease; None if it is free (never taken, released or expired)."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT holder, token, expires_at FROM leases WHERE endpoint_key = ?",
                (endpoint_key,),
            ).fetchone()
        if row is None or row[2] <= self._wall():
            return None
        return Lease(endpoint_key, row[0], row[1], row[2])

    def _record(self, row: tuple[Any, ...]) -> RolloutRecord:
        rid, name, endpoint, plan, plan_path, created, phase, snapshot, updated, last_seq = row
        plan = _loads(plan, f"the plan of rollout {rid}", self.location)
        snapshot = _loads(snapshot, f"the snapshot of rollout {rid}", self.location)
        return RolloutRecord(
            rid, name, endpoint, plan, plan_path, created, phase, snapshot, updated, last_seq
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_sqlite_store(location: str) -> SqliteStateStore:
    """``location``: a directory (the file is ``<dir>/state.db``) or a ``.db``/``.sqlite`` file."""
    path = Path(location).expanduser()
    if path.suffix not in (".db", ".sqlite"):
        path = path / "state.db"
    return SqliteStateStore(path)
