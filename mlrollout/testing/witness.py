"""Who drove which rollout, seen from the state store: for the tests and benchmarks that run many
runners at once (threads, watchers, processes sharing one SQLite file).

:class:`WitnessedStore` is a SQLite store that tells a shared :class:`Witness` every lease it
grants and hands back, and every journal write with the lease that fenced it and the thread that
made it. :meth:`Witness.overlaps` lists the grants made while another holder still drove the
endpoint (a hand-over never counts: the mark is set after a grant and cleared before a release);
:func:`assert_one_driver_at_a_time` checks the journals themselves: along each one the fencing
tokens only grow, and each token has one holder and one thread.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

from mlrollout.state.base import Event, Lease
from mlrollout.state.sqlite import SqliteStateStore

#: One journal write: rollout, seq, holder, token, thread.
Write = tuple[str, int, str, int, int]


class Witness:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.driving: dict[str, str] = {}
        self.overlaps: list[str] = []
        self.writes: list[Write] = []


class WitnessedStore(SqliteStateStore):
    def __init__(self, path: Path, witness: Witness, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.witness = witness

    def acquire_lease(self, endpoint_key: str, holder: str, ttl: float) -> Lease:
        lease = super().acquire_lease(endpoint_key, holder, ttl)
        w = self.witness
        with w.lock:
            other = w.driving.get(endpoint_key)
            if other is not None and other != f"{holder}/{threading.get_ident()}":
                w.overlaps.append(f"{endpoint_key}: {holder} while {other}")
            w.driving[endpoint_key] = f"{holder}/{threading.get_ident()}"
        return lease

    def release_lease(self, lease: Lease) -> None:
        with self.witness.lock:
            if self.witness.driving.get(lease.endpoint_key, "").startswith(f"{lease.holder}/"):
                del self.witness.driving[lease.endpoint_key]
        super().release_lease(lease)

    def append_event(self, rollout_id: str, kind: str, data: dict[str, Any], **kw: Any) -> Event:
        event = super().append_event(rollout_id, kind, data, **kw)
        lease: Lease | None = kw.get("lease")
        if lease is not None:
            with self.witness.lock:
                self.witness.writes.append(
                    (rollout_id, event.seq, lease.holder, lease.token, threading.get_ident())
                )
        return event


def assert_one_driver_at_a_time(writes: list[Write]) -> int:
    """Per rollout, the fencing tokens only grow along the journal and each token has one holder
    and one thread: the segments two drivers wrote never interleave. Returns how many journals
    were checked."""
    by_rollout: dict[str, list[tuple[int, str, int, int]]] = {}
    for rollout, seq, holder, token, thread in writes:
        by_rollout.setdefault(rollout, []).append((seq, holder, token, thread))
    for rollout, rows in by_rollout.items():
        rows.sort()
        tokens = [token for _, _, token, _ in rows]
        assert tokens == sorted(tokens), (rollout, rows)
        for token, group in itertools.groupby(rows, key=lambda row: row[2]):
            drivers = {(holder, thread) for _, holder, _, thread in group}
            assert len(drivers) == 1, (rollout, token, drivers)
    return len(by_rollout)
