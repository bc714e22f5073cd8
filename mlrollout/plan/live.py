"""``plan preview --live``: read the live endpoint once and show what ``run`` would change.

The provider is opened as a rollout opens it (:func:`~mlrollout.engine.runner.clock_for`, a
:class:`~mlrollout.contracts.ProviderContext`, ``spec.open(context)``), then ``describe()`` is
called once. Nothing is written: the state store the provider sees is :class:`ReadOnlyStore`
(records the sandbox would create on a first read stay in memory; any other write is refused),
no lease is taken and no ownership mark is read or written.

The result is a JSON mapping (the ``live`` object of ``plan preview --live --output json``)::

    {"endpoint": ..., "status": ..., "baseline": "v6" | None, "problem": None | {message, hint},
     "note": None | str,
     "stages": [{"stage": "now", "change": ..., "variants": [...]},
                {"stage": "first change", ...}, {"stage": "end", ...}],
     "overlap": None | {"fleets": [...], "min_hours": ..., "max_hours": ...,
                        "instance_hours": {TYPE: {"min": ..., "max": ...}}}}
"""

from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlrollout.adapters import candidate_capacity
from mlrollout.contracts import EndpointState, ProviderContext, VariantState
from mlrollout.errors import MlrolloutError, StateUnavailable
from mlrollout.units import format_duration

if TYPE_CHECKING:
    from mlrollout.plan.loader import LoadedPlan
    from mlrollout.plan.model import Plan
    from mlrollout.state.base import Event, Lease, RolloutRecord, StateStore

#: The instance-hours key of a fleet whose type the platform does not report (the sandbox has
#: none unless the plan names one).
UNNAMED_TYPE = "unknown type"


class ReadOnlyStore:
    """A state store for a live preview: reads go to the store at ``location`` (opened on the
    first read, and only if it exists: a preview never creates one); ``put_value`` is kept in
    memory (the sandbox writes its endpoint record on the first read of an endpoint it has not
    seen); every other write is refused."""

    def __init__(self, location: str) -> None:
        self.location = location
        self._base: StateStore | None = None
        self._opened = False
        self.overlay: dict[tuple[str, str], dict[str, Any]] = {}

    def _store(self) -> StateStore | None:
        if not self._opened:
            self._opened = True
            if "://" in self.location or _sqlite_exists(self.location):
                from mlrollout.state.open import open_store

                self._base = open_store(self.location)
        return self._base

    @staticmethod
    def _refuse(what: str) -> MlrolloutError:
        return StateUnavailable(
            f"plan preview --live would have to {what}: it writes nothing",
            hint="this is a bug in the provider's describe(); run without --live",
        )

    # rollouts
    def create_rollout(self, record: RolloutRecord) -> None:
        raise self._refuse("record a rollout")

    def get_rollout(self, rollout_id: str) -> RolloutRecord:
        store = self._store()
        if store is None:
            from mlrollout.errors import UsageError

            raise UsageError(f"no rollout {rollout_id!r} in {self.location}")
        return store.get_rollout(rollout_id)

    def list_rollouts(self, *, active_only: bool = False, limit: int = 100) -> list[RolloutRecord]:
        store = self._store()
        return [] if store is None else store.list_rollouts(active_only=active_only, limit=limit)

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
        raise self._refuse("journal an event")

    def events(self, rollout_id: str, *, after: int = 0) -> list[Event]:
        store = self._store()
        return [] if store is None else store.events(rollout_id, after=after)

    # key/value
    def get_value(self, namespace: str, key: str) -> dict[str, Any] | None:
        if (namespace, key) in self.overlay:
            return copy.deepcopy(self.overlay[namespace, key])
        store = self._store()
        return None if store is None else store.get_value(namespace, key)

    def put_value(
        self, namespace: str, key: str, value: dict[str, Any], *, lease: Lease | None
    ) -> None:
        self.overlay[namespace, key] = copy.deepcopy(value)

    # leases
    def acquire_lease(self, endpoint_key: str, holder: str, ttl: float) -> Lease:
        raise self._refuse("take the endpoint's lease")

    def renew_lease(self, lease: Lease, ttl: float) -> Lease:
        raise self._refuse("renew a lease")

    def release_lease(self, lease: Lease) -> None:
        raise self._refuse("release a lease")

    def current_lease(self, endpoint_key: str) -> Lease | None:
        store = self._store()
        return None if store is None else store.current_lease(endpoint_key)

    def close(self) -> None:
        if self._base is not None:
            self._base.close()


def _sqlite_exists(location: str) -> bool:
    path = Path(os.path.expanduser(location))
    if path.suffix not in (".db", ".sqlite"):
        path = path / "state.db"
    return path.is_file()


def read_live(plan: Plan, state: str) -> tuple[EndpointState, str | None]:
    """Open the plan's provider as a rollout does and describe its endpoint once. Returns the
    state and a note when the endpoint had to be made up on this read (a sandbox endpoint the
    store has not seen: ``run`` creates it so). Raises the provider's
    :class:`~mlrollout.errors.MlrolloutError` when it cannot be read."""
    from mlrollout.engine.runner import clock_for
    from mlrollout.plugins import provider_spec

    store = ReadOnlyStore(state)
    try:
        spec = provider_spec(plan.target.provider)
        clock = clock_for(plan, None, wall=time.time())
        context = ProviderContext(plan=plan, clock=clock, store=store)  # no lease: none taken
        adapter, _metrics = spec.open(context)
        _read_only_sandbox(adapter)
        live = adapter.describe()
    finally:
        store.close()
    note = None
    written = [key for ns, key in store.overlay if ns == "sandbox"] + _sandbox_writes(adapter)
    if written:
        first = live.serving_all() or ", ".join(live.weights())
        note = (
            f"sandbox endpoint {plan.target.endpoint!r} is not in {state} yet: `run` creates it "
            f"with {first} serving 100%"
        )
    return live, note


def _read_only_sandbox(adapter: object) -> None:
    """The sandbox endpoint of a plan with ``target.endpoint_url`` keeps its record in a store
    of its own, which ``describe()`` writes to on first sight: keep that write in memory too."""
    from mlrollout.sandbox.endpoint import LocalEndpoint

    if isinstance(adapter, LocalEndpoint) and not isinstance(adapter.store, ReadOnlyStore):
        wrapped = ReadOnlyStore(getattr(adapter.store, "location", "the sandbox world"))
        wrapped._base, wrapped._opened = adapter.store, True  # type: ignore[assignment]
        adapter.store = wrapped


def _sandbox_writes(adapter: object) -> list[str]:
    store = getattr(adapter, "store", None)
    if isinstance(store, ReadOnlyStore):
        return [key for ns, key in store.overlay if ns == "sandbox"]
    return []


# ------------------------------------------------------------------------------------ the diff


def variant_row(v: VariantState) -> dict[str, Any]:
    return {
        "name": v.name,
        "weight": v.weight,
        "model": v.model,
        "instance_type": v.instance_type,
        "instance_count": v.instance_count,
        "shadow_percent": v.shadow_percent,
        "status": v.status,
    }


def resolve_baseline(plan: Plan, live: EndpointState) -> tuple[str | None, MlrolloutError | None]:
    """The baseline ``run`` would compare against, or the error it would stop with (the
    engine's own check, :func:`~mlrollout.engine.engine.baseline_for`)."""
    from mlrollout.engine.engine import baseline_for
    from mlrollout.errors import EndpointDrifted

    try:
        return baseline_for(plan, live), None
    except EndpointDrifted as exc:
        return None, exc


def live_preview(
    loaded: LoadedPlan, live: EndpointState, note: str | None = None
) -> dict[str, Any]:
    """The ``live`` object of ``plan preview --live``: the endpoint now, after the strategy's
    first change and at its end, and blue-green's overlap in instance-hours."""
    from mlrollout.plan.timeline import timeline

    plan = loaded.plan
    candidate = plan.candidate
    now = [variant_row(v) for v in live.variants]
    result: dict[str, Any] = {
        "endpoint": live.name,
        "status": live.status,
        "baseline": None,
        "problem": None,
        "note": note,
        "stages": [{"stage": "now", "change": "as described", "variants": now}],
        "overlap": None,
    }
    if live.serving_all() == candidate.name:
        result["problem"] = {
            "message": f"{candidate.name} already serves 100% on {live.name!r}: "
            "nothing to roll out",
            "hint": None,
        }
        return result
    baseline, problem = resolve_baseline(plan, live)
    result["baseline"] = baseline
    if problem is not None:
        result["problem"] = {"message": problem.message, "hint": problem.hint}
        return result
    assert baseline is not None
    existing = live.variant(candidate.name)
    if existing is None:
        # What the plan leaves out the candidate takes from the baseline (green at full
        # capacity), as each adapter's prepare does.
        blue_now = live.variant(baseline)
        count = candidate_capacity(candidate, blue_now.instance_count if blue_now else None)
        kind = candidate.instance_type or (blue_now.instance_type if blue_now else None)
        created: dict[str, Any] = {
            "name": candidate.name,
            "weight": 0.0,
            "model": candidate.model,
            "instance_type": kind,
            "instance_count": count,
            "shadow_percent": 0.0,
            "status": "new",
        }
        first = [*now, created]
        change = (
            f"create {candidate.name} at 0% ({count} instance{'s' if count != 1 else ''}"
            f"{' of ' + kind if kind else ''})"
        )
    else:
        created = variant_row(existing)
        first = now
        change = f"none: {candidate.name} is already deployed at 0%"
    result["stages"].append({"stage": "first change", "change": change, "variants": first})
    end = [
        {**row, "weight": 100.0 if row["name"] == candidate.name else 0.0, "shadow_percent": 0.0}
        for row in first
        if row["name"] != baseline
    ]
    result["stages"].append(
        {
            "stage": "end",
            "change": f"{candidate.name} to 100%, {baseline} removed",
            "variants": end,
        }
    )
    if plan.strategy.type == "blue_green":
        rows = timeline(plan)
        low = sum(r.min_seconds for r in rows)
        high = sum(r.max_seconds for r in rows)
        blue = live.variant(baseline)
        assert blue is not None
        fleets: list[dict[str, Any]] = [
            {
                "name": blue.name,
                "role": "blue (baseline)",
                "instance_type": blue.instance_type,
                "instance_count": blue.instance_count if blue.instance_count is not None else 1,
            },
            {
                "name": candidate.name,
                "role": "green (candidate)",
                "instance_type": created["instance_type"],
                "instance_count": created["instance_count"] or 1,
            },
        ]
        hours: dict[str, dict[str, float | None]] = {}
        for fleet in fleets:
            kind = fleet["instance_type"] or UNNAMED_TYPE
            entry = hours.setdefault(kind, {"min": 0.0, "max": 0.0})
            entry["min"] = (entry["min"] or 0.0) + fleet["instance_count"] * low / 3600
            if math.isinf(high):
                entry["max"] = None
            elif entry["max"] is not None:
                entry["max"] += fleet["instance_count"] * high / 3600
        result["overlap"] = {
            "fleets": fleets,
            "instances": sum(f["instance_count"] for f in fleets),
            "min_seconds": low,
            "max_seconds": None if math.isinf(high) else high,
            "min": format_duration(low),
            "max": "until approved" if math.isinf(high) else format_duration(high),
            "instance_hours": hours,
        }
    return result
