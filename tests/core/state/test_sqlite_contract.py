"""The shared state-store contract (``mlrollout.testing.state_contract``) on SQLite files: the same
suite the S3, GCS and Azure Blob stores pass. SQLite checks a lease and writes in one transaction
and serialises appends, so the checks of racing commits and of a forged lease do not apply."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from mlrollout.state.sqlite import SqliteStateStore
from mlrollout.testing.state_contract import Corrupted, StateStoreContract, Wall


class TestSqliteStateContract(StateStoreContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path, wall: Wall) -> Callable[[], SqliteStateStore]:
        return lambda: SqliteStateStore(tmp_path / "state.db", wall=wall)

    @pytest.fixture
    def corrupt_event(self, tmp_path: Path) -> Callable[[SqliteStateStore, str], Corrupted]:
        def corrupt(store: SqliteStateStore, rollout_id: str) -> Corrupted:
            def read_back() -> bytes:
                with sqlite3.connect(tmp_path / "state.db") as conn:
                    row = conn.execute(
                        "SELECT data_json FROM events WHERE rollout_id = ? AND seq = 1",
                        (rollout_id,),
                    ).fetchone()
                return str(row[0]).encode()

            broken = Corrupted(None, read_back)
            conn = sqlite3.connect(tmp_path / "state.db")
            with conn:
                conn.execute(
                    "UPDATE events SET data_json = ? WHERE rollout_id = ? AND seq = 1",
                    (broken.garbage.decode(), rollout_id),
                )
            conn.close()
            return broken

        return corrupt
