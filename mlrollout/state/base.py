"""The state store contract: an append-only journal of events per rollout, a snapshot per rollout
(the engine's state after the last event, for fast ``status``), small key/value records (the local
sandbox keeps its simulated endpoints there), and one lease per endpoint with a fencing token.

Fencing: every write made on behalf of a lease passes its :class:`Lease`; the store refuses it
(:class:`~mlrollout.errors.LeaseLost`) unless that lease is still the endpoint's current one, so a
runner that stalled and lost its lease can write nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Lease:
    endpoint_key: str
    holder: str  # "user@host pid 1234"
    token: int  # fencing token: strictly increases each time the lease changes hands
    expires_at: float  # wall-clock seconds since the epoch


@dataclass(frozen=True)
class Event:
    rollout_id: str
    seq: int  # 1, 2, 3... per rollout
    at: float  # the engine clock's time (virtual for the sandbox)
    kind: str  # a :class:`~mlrollout.engine.events.EventKind`: "started", "look", ...
    data: dict[str, Any]
    recorded_at: float = 0.0  # wall clock


@dataclass(frozen=True)
class RolloutRecord:
    id: str
    name: str
    endpoint_key: str
    plan: dict[str, Any]  # {"yaml": the plan file's text, verbatim}; re-validated when read
    plan_path: str
    created_at: float  # wall clock
    phase: str = "pending"
    snapshot: dict[str, Any] = field(default_factory=dict)
    updated_at: float = 0.0
    last_seq: int = 0


class StateStore(Protocol):
    """Where rollouts live. Implementations: SQLite (default), object storage (providers)."""

    location: str  # for messages: a path or URL

    # rollouts
    def create_rollout(self, record: RolloutRecord) -> None: ...

    def get_rollout(self, rollout_id: str) -> RolloutRecord:
        """By id or unique id prefix; :class:`~mlrollout.errors.UsageError` if none or several."""
        ...

    def list_rollouts(self, *, active_only: bool = False, limit: int = 100) -> list[RolloutRecord]:
        """Newest first."""
        ...

    # journal
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
        """Append one event (and, atomically, the new phase/snapshot). With ``lease``, fenced."""
        ...

    def events(self, rollout_id: str, *, after: int = 0) -> list[Event]: ...

    # key/value (sandbox endpoints, provider bookkeeping)
    def get_value(self, namespace: str, key: str) -> dict[str, Any] | None: ...

    def put_value(
        self, namespace: str, key: str, value: dict[str, Any], *, lease: Lease | None
    ) -> None: ...

    # leases
    def acquire_lease(self, endpoint_key: str, holder: str, ttl: float) -> Lease:
        """Take the endpoint's lease if free or expired; else :class:`~mlrollout.errors.LeaseHeld`
        naming the holder and when it expires."""
        ...

    def renew_lease(self, lease: Lease, ttl: float) -> Lease:
        """Extend it; :class:`~mlrollout.errors.LeaseLost` if it is no longer ours."""
        ...

    def release_lease(self, lease: Lease) -> None:
        """Give it up (no error if already lost)."""
        ...

    def current_lease(self, endpoint_key: str) -> Lease | None: ...

    def close(self) -> None: ...
