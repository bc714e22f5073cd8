"""A state store on object storage with conditional writes: the layout and the algorithm of the
shared backends (Google Cloud Storage in ``mlrollout-gcp``, Azure Blob Storage in
``mlrollout-azure``), which differ only in how one object is read, written on a condition and
listed. No cloud library is imported here: a backend subclasses :class:`ObjectStateStore` and
implements :meth:`~ObjectStateStore._get_object`, :meth:`~ObjectStateStore._put_object` and
:meth:`~ObjectStateStore._list_keys` (a backend whose library calls go through the core's retry
loop also :meth:`~ObjectStateStore._retryable` and :meth:`~ObjectStateStore._failed`).

The layout and the semantics are the same on every cloud (S3 in ``mlrollout-aws``, GCS, Azure
Blob), so a rollout reads the same everywhere; they are those of the first of them, the S3 store,
and existing stores are read as they are. Under ``prefix/``::

    rollouts/<id>/record.json                 RolloutRecord + the journal's index (commit point)
    rollouts/<id>/events/<seq>-<nonce>.json   one event
    kv/<namespace>/<key>.json
    leases/<endpoint key, url-quoted>.json    {"holder", "token", "expires_at"}
    active/<endpoint key, url-quoted>.json    {"rollout", "at"}: the endpoint's newest rollout

Every object has a version the store reads with it (a GCS generation, a blob's ETag) and two
conditions it writes under: *only if absent* and *only if still at the version read*.

- **append**: the event is written under a fresh nonce, then ``record.json`` is replaced on the
  condition that it is still the version read — the commit point. The record lists the nonce of
  every committed event, so an event written by a writer that then lost the race is never read.
  The loser re-reads and retries (a bounded number of times).
- **create**: the endpoint's ``active/`` object is written first (only if absent, or only over
  the version read when its rollout has ended), so of two runs starting together exactly one
  creates a rollout on the endpoint; the other is :class:`~mlrollout.errors.RolloutActive`.
- **lease**: taken only-if-absent (no lease object yet) or over the version read (an expired or
  our own lease), renewed over the version read: two runners never both succeed.
- **fencing**: a write passing a lease first checks that the lease object still names it
  (holder and token, not expired), and the record keeps the highest token that ever wrote to it:
  a writer whose token is lower is refused (:class:`~mlrollout.errors.LeaseLost`) even if its
  check raced a takeover.
- **lost responses**: a retried conditional write whose first attempt succeeded but whose answer
  was lost fails its condition against its own write; the store re-reads and recognises it (same
  nonce, same lease), so no write is ever applied twice.
- **corrupt objects**: an object that is not JSON is :class:`~mlrollout.errors.StateCorrupt`
  ("state object LOCATION/KEY is not JSON", exit 5); nothing is overwritten, and the other
  rollouts stay readable.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from mlrollout.adapters import is_programming_error
from mlrollout.engine.phases import TERMINAL
from mlrollout.errors import (
    LeaseHeld,
    LeaseLost,
    MlrolloutError,
    RolloutActive,
    StateCorrupt,
    StateUnavailable,
    UsageError,
)
from mlrollout.retry import RetryPolicy
from mlrollout.state.base import Event, Lease, RolloutRecord

TERMINAL_PHASES = frozenset(phase.value for phase in TERMINAL)
MAX_RACES = 50
#: Seconds an endpoint's claim counts although its rollout's record is not written yet (a run
#: creating it right now); past it, a claim without a record is a crash's leftover.
CLAIM_GRACE = 60.0
LEASE_HINT = "another runner may be driving the endpoint; check `mlrollout status` before resuming"


def dumps(value: Any) -> bytes:
    """The bytes every backend writes: sorted, compact JSON (so equal values are equal bytes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class ObjectStateStore:
    """:class:`~mlrollout.state.base.StateStore` on a bucket-like namespace of objects.

    ``root`` is the URL of the bucket (or container) ending in ``/`` (``gs://bucket/``); the
    store's ``location`` is it + ``prefix/``, and object keys are ``prefix`` + a relative path.
    ``wall`` is the wall clock leases expire on (injected by tests); ``retry`` the policy of the
    backend's calls.
    """

    location: str
    #: the hint of a corrupt object's error (where its earlier versions are)
    restore_hint = "restore it from the bucket's versions, or remove it"

    def __init__(
        self,
        root: str,
        prefix: str,
        *,
        wall: Callable[[], float],
        retry: RetryPolicy | None = None,
    ) -> None:
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.location = root + self.prefix
        self._wall = wall
        self.retry = retry or RetryPolicy(base=0.2, cap=5.0)

    # ------------------------------------------------------------------ a backend's calls

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` (one call of the backend's library, ``what`` in words: "reading a blob")
        under ``retry``; an error that ends it is raised as :meth:`_failed` maps it, unless it is
        mlrollout's own or a bug."""

        def failed(exc: BaseException, attempts: int) -> BaseException:
            if isinstance(exc, MlrolloutError) or is_programming_error(exc):
                return exc
            return self._failed(what, exc, attempts)

        return self.retry.call(fn, retryable=self._retryable, failed=failed)

    def _retryable(self, exc: BaseException) -> bool:
        """Whether an error of a :meth:`_call` is worth another attempt."""
        raise NotImplementedError

    def _failed(self, what: str, exc: BaseException, attempts: int) -> BaseException:
        """The error to raise for the library's error ``exc`` that ended a :meth:`_call` (``exc``
        itself to raise it as it is)."""
        return exc

    def _missing(self, kind: str, name: str) -> StateUnavailable:
        """The error of a bucket (``kind``: "bucket", "container") that does not exist."""
        return StateUnavailable(
            f"state {kind} {name!r} does not exist ({self.location})",
            hint=f"create the {kind}, or point --state at another one",
        )

    def _unavailable(self, what: str, hint: str | None) -> StateUnavailable:
        """The error of a store that cannot be used: "state store LOCATION: ``what``"."""
        return StateUnavailable(f"state store {self.location}: {what}", hint=hint)

    # ------------------------------------------------------------------ a backend's objects

    def _get_object(self, key: str) -> tuple[bytes, str] | None:
        """The bytes at ``key`` and their version, or None if there is no such object."""
        raise NotImplementedError

    def _put_object(
        self, key: str, body: bytes, *, if_match: str | None, if_none_match: bool
    ) -> bool:
        """Write ``body`` at ``key`` (only if absent with ``if_none_match``; only over version
        ``if_match`` with that); False when the condition did not hold."""
        raise NotImplementedError

    def _list_keys(self, prefix: str, *, delimiter: str | None) -> list[str]:
        """The keys under ``prefix``; with ``delimiter``, the common prefixes (ending in it) of
        deeper keys instead of those keys."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------ objects

    def _key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def _get(self, key: str) -> tuple[dict[str, Any], str] | None:
        """The JSON object at ``key`` and its version, or None."""
        found = self._get_object(key)
        if found is None:
            return None
        body, version = found
        try:
            data = json.loads(body)
        except ValueError as exc:
            data = None
            cause: Exception | None = exc
        else:
            cause = None
        if not isinstance(data, dict):
            raise StateCorrupt(
                f"state object {self.location}{key[len(self.prefix) :]} is not JSON",
                hint=self.restore_hint,
            ) from cause
        return data, version

    def _put(
        self,
        key: str,
        value: Any,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        mine: Callable[[], bool] | None = None,
    ) -> bool:
        """Write ``value``; False when the condition failed (someone else wrote first).

        ``mine``: after a failed condition, whether the object already holds *this* write (its
        first attempt succeeded, the answer was lost): then it counts as done."""
        if self._put_object(key, dumps(value), if_match=if_match, if_none_match=if_none_match):
            return True
        return mine is not None and mine()

    def _is(self, key: str, data: dict[str, Any]) -> bool:
        found = self._get(key)
        return found is not None and found[0] == json.loads(dumps(data))

    def _holds(self, key: str, data: dict[str, Any]) -> Callable[[], bool]:
        return lambda: self._is(key, data)

    # ------------------------------------------------------------------------------ records

    def _record_key(self, rollout_id: str) -> str:
        return self._key("rollouts", rollout_id, "record.json")

    @staticmethod
    def _record(data: dict[str, Any]) -> RolloutRecord:
        return RolloutRecord(
            id=data["id"],
            name=data["name"],
            endpoint_key=data["endpoint_key"],
            plan=data["plan"],
            plan_path=data["plan_path"],
            created_at=data["created_at"],
            phase=data["phase"],
            snapshot=data["snapshot"],
            updated_at=data["updated_at"],
            last_seq=data["last_seq"],
        )

    def create_rollout(self, record: RolloutRecord) -> None:
        r = record
        data = {
            "id": r.id,
            "name": r.name,
            "endpoint_key": r.endpoint_key,
            "plan": r.plan,
            "plan_path": r.plan_path,
            "created_at": r.created_at,
            "phase": r.phase,
            "snapshot": r.snapshot,
            "updated_at": r.updated_at or r.created_at,
            "last_seq": r.last_seq,
            "events": [],
            "fence": 0,
            "nonce": secrets.token_hex(6),  # tells this write from an equal one by someone else
        }
        key = self._record_key(r.id)
        if self._get(key) is not None:
            raise UsageError(f"rollout {r.id!r} already exists in {self.location}")
        self._claim_endpoint(r)
        if not self._put(key, data, if_none_match=True, mine=lambda: self._is(key, data)):
            raise UsageError(f"rollout {r.id!r} already exists in {self.location}")

    def _claim_endpoint(self, record: RolloutRecord) -> None:
        """Make ``record`` the endpoint's active rollout, atomically, unless another is."""
        key = self._key("active", quote(record.endpoint_key, safe="") + ".json")
        claim = {"rollout": record.id, "at": self._wall()}
        for _ in range(MAX_RACES):
            found = self._get(key)
            if found is not None:
                other = str(found[0].get("rollout", ""))
                phase = self._active_phase(other, float(found[0].get("at") or 0))
                if other != record.id and phase is not None:
                    raise RolloutActive(
                        f"rollout {other} is still active on {record.endpoint_key} (phase {phase})",
                        hint=f"finish it with `mlrollout resume {other}` or "
                        f"`mlrollout abort {other}`",
                    )
            written = self._put(
                key,
                claim,
                if_match=found[1] if found is not None else None,
                if_none_match=found is None,
                mine=lambda: self._is(key, claim),
            )
            if written:
                return
        raise StateUnavailable(
            f"state store {self.location}: could not claim {record.endpoint_key} after "
            f"{MAX_RACES} races with other writers",
            hint="try again",
        )

    def _active_phase(self, rollout_id: str, claimed_at: float) -> str | None:
        """The phase of the rollout an endpoint's claim names, if it is still active."""
        found = self._get(self._record_key(rollout_id)) if rollout_id else None
        if found is None:
            return "being created" if self._wall() - claimed_at < CLAIM_GRACE else None
        phase = str(found[0].get("phase"))
        return None if phase in TERMINAL_PHASES else phase

    def get_rollout(self, rollout_id: str) -> RolloutRecord:
        found = self._get(self._record_key(rollout_id)) if rollout_id else None
        if found is not None:
            return self._record(found[0])
        base = self._key("rollouts") + "/"
        ids = sorted(
            k[len(base) :].rstrip("/")
            for k in self._list_keys(self._key("rollouts", rollout_id), delimiter="/")
        )
        hint = "`mlrollout list` shows the rollouts"
        matches = [i for i in ids if i.startswith(rollout_id)]
        if not matches:
            raise UsageError(f"no rollout {rollout_id!r} in {self.location}", hint=hint)
        if len(matches) > 1:
            names = ", ".join(matches[:10]) + (", ..." if len(matches) > 10 else "")
            raise UsageError(
                f"rollout id {rollout_id!r} is ambiguous: it matches {names}",
                hint="give more characters of the id",
            )
        found = self._get(self._record_key(matches[0]))
        if found is None:
            raise UsageError(f"no rollout {rollout_id!r} in {self.location}", hint=hint)
        return self._record(found[0])

    def list_rollouts(self, *, active_only: bool = False, limit: int = 100) -> list[RolloutRecord]:
        base = self._key("rollouts") + "/"
        records = []
        for prefix in self._list_keys(base, delimiter="/"):
            found = self._get(prefix + "record.json")
            if found is not None:
                record = self._record(found[0])
                if not active_only or record.phase not in TERMINAL_PHASES:
                    records.append(record)
        records.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return records[:limit]

    # ------------------------------------------------------------------------------ journal

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
        key = self._record_key(rollout_id)
        nonce = secrets.token_hex(6)
        data = json.loads(dumps(data))
        for _ in range(MAX_RACES):
            found = self._get(key)
            if found is None:
                raise UsageError(f"no rollout {rollout_id!r} in {self.location}")
            record, version = found
            if lease is not None:
                self._check_fence(lease)
                if int(record.get("fence", 0)) > lease.token:
                    raise LeaseLost(
                        f"lost the lease on endpoint {lease.endpoint_key} (token {lease.token}): "
                        f"a runner with token {record['fence']} has written since",
                        hint=LEASE_HINT,
                    )
            seq, now = int(record["last_seq"]) + 1, self._wall()
            event = {"seq": seq, "at": at, "recorded_at": now, "kind": kind, "data": data}
            self._put(self._key("rollouts", rollout_id, "events", f"{seq:08d}-{nonce}.json"), event)
            record["events"] = [*record.get("events", []), nonce]
            record["last_seq"], record["updated_at"] = seq, now
            if phase is not None:
                record["phase"] = phase
            if snapshot is not None:
                record["snapshot"] = snapshot
            if lease is not None:
                record["fence"] = max(int(record.get("fence", 0)), lease.token)

            def mine(seq: int = seq) -> bool:
                again = self._get(key)
                events = again[0].get("events", []) if again else []
                return len(events) >= seq and events[seq - 1] == nonce

            if self._put(key, record, if_match=version, mine=mine):
                return Event(rollout_id, seq, at, kind, data, recorded_at=now)
        raise StateUnavailable(
            f"could not append to rollout {rollout_id} in {self.location}: "
            f"{MAX_RACES} concurrent writers won in a row"
        )

    def events(self, rollout_id: str, *, after: int = 0) -> list[Event]:
        found = self._get(self._record_key(rollout_id))
        if found is None:
            raise UsageError(f"no rollout {rollout_id!r} in {self.location}")
        nonces: list[str] = found[0].get("events", [])
        out = []
        for seq in range(after + 1, len(nonces) + 1):
            key = self._key("rollouts", rollout_id, "events", f"{seq:08d}-{nonces[seq - 1]}.json")
            got = self._get(key)
            if got is None:
                raise StateCorrupt(
                    f"event {seq} of rollout {rollout_id} is missing from {self.location}",
                    hint=self.restore_hint.replace(", or remove it", ""),
                )
            e = got[0]
            out.append(Event(rollout_id, e["seq"], e["at"], e["kind"], e["data"], e["recorded_at"]))
        return out

    # ------------------------------------------------------------------------------ key/value

    def _value_key(self, namespace: str, key: str) -> str:
        return self._key("kv", quote(namespace, safe=""), quote(key, safe="") + ".json")

    def get_value(self, namespace: str, key: str) -> dict[str, Any] | None:
        found = self._get(self._value_key(namespace, key))
        return None if found is None else dict(found[0])

    def put_value(
        self, namespace: str, key: str, value: dict[str, Any], *, lease: Lease | None
    ) -> None:
        if lease is not None:
            self._check_fence(lease)
        self._put(self._value_key(namespace, key), value)

    # ------------------------------------------------------------------------------- leases

    def _lease_key(self, endpoint_key: str) -> str:
        return self._key("leases", quote(endpoint_key, safe="") + ".json")

    def _check_fence(self, lease: Lease, *, allow_expired: bool = False) -> dict[str, Any]:
        found = self._get(self._lease_key(lease.endpoint_key))
        row = found[0] if found else None
        if row is None or (row["holder"], row["token"]) != (lease.holder, lease.token):
            now_holder = f"{row['holder']} (token {row['token']})" if row else "nobody"
            raise LeaseLost(
                f"lost the lease on endpoint {lease.endpoint_key} (token {lease.token}):"
                f" it is now held by {now_holder}",
                hint=LEASE_HINT,
            )
        if not allow_expired and row["expires_at"] <= self._wall():
            raise LeaseLost(
                f"the lease on endpoint {lease.endpoint_key} (token {lease.token}) expired"
                f" {self._wall() - row['expires_at']:.0f}s ago; nobody holds it now",
                hint=LEASE_HINT,
            )
        return row

    def acquire_lease(self, endpoint_key: str, holder: str, ttl: float) -> Lease:
        key = self._lease_key(endpoint_key)
        found = self._get(key)
        now = self._wall()
        version: str | None
        if found is not None:
            row, version = found
            if row["expires_at"] > now and row["holder"] != holder:
                raise LeaseHeld(
                    f"endpoint {endpoint_key} is driven by {row['holder']}"
                    f" (lease expires in {row['expires_at'] - now:.0f}s)",
                    hint="wait for it, or stop that runner; its lease lapses if it stops renewing",
                )
            live_ours = row["expires_at"] > now
            token = int(row["token"]) if live_ours else int(row["token"]) + 1
        else:
            version, token = None, 1
        lease = Lease(endpoint_key, holder, token, now + ttl)
        value = {"holder": holder, "token": token, "expires_at": lease.expires_at}
        ok = self._put(
            key,
            value,
            if_match=version,
            if_none_match=version is None,
            mine=lambda: self._is(key, value),
        )
        if not ok:
            again = self._get(key)
            who = again[0]["holder"] if again else "another runner"
            raise LeaseHeld(
                f"endpoint {endpoint_key} was just taken by {who}",
                hint="wait for it, or stop that runner; its lease lapses if it stops renewing",
            )
        return lease

    def renew_lease(self, lease: Lease, ttl: float) -> Lease:
        key = self._lease_key(lease.endpoint_key)
        for _ in range(MAX_RACES):
            found = self._get(key)
            if found is None:
                self._check_fence(lease)  # raises LeaseLost (nobody holds it)
                continue
            self._check_fence(lease, allow_expired=True)
            renewed = Lease(lease.endpoint_key, lease.holder, lease.token, self._wall() + ttl)
            value = {"holder": lease.holder, "token": lease.token, "expires_at": renewed.expires_at}
            if self._put(key, value, if_match=found[1], mine=self._holds(key, value)):
                return renewed
        self._check_fence(lease, allow_expired=True)  # raises LeaseLost if taken over
        raise StateUnavailable(
            f"could not renew the lease on {lease.endpoint_key} in {self.location}: "
            f"{MAX_RACES} concurrent writers won in a row"
        )

    def release_lease(self, lease: Lease) -> None:
        key = self._lease_key(lease.endpoint_key)
        found = self._get(key)
        if found is None:
            return
        row, version = found
        if (row["holder"], row["token"]) != (lease.holder, lease.token):
            return
        self._put(key, {**row, "expires_at": 0}, if_match=version)

    def current_lease(self, endpoint_key: str) -> Lease | None:
        found = self._get(self._lease_key(endpoint_key))
        if found is None or found[0]["expires_at"] <= self._wall():
            return None
        row = found[0]
        return Lease(endpoint_key, row["holder"], int(row["token"]), float(row["expires_at"]))

    def close(self) -> None:
        pass
