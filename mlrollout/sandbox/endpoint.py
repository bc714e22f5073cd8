"""The ``local`` sandbox's simulated endpoint and its metrics.

The endpoint lives in the state store (namespace ``sandbox``, key = endpoint name) so that every
runner sharing the store sees the same endpoint, and a new process resumes it::

    {"origin": t0, "started": t1, "order": ["v6", "v7"],
     "variants": {"v6": {"weight": 100.0, "model": null, "instance_type": null,
                         "instance_count": 1}, ...},
     "history": [[t0, {"v6": 100.0}], [t1, {"v6": 90.0, "v7": 10.0}], ...],
     "shadow": {"v7": 100.0},
     "shadow_history": [[t2, {"v7": 100.0}], ...],
     "owner": {"mlrollout-rollout": "churn-3f2a1b", "mlrollout-holder": "...",
               "mlrollout-expires": "1800000060"}}

With feature flags (the plan's ``flags``) the record also holds ``"flag_key"`` and a flag
history, ``"flag_history": [[t2, "<sha256>"], ...]``: each time the rollout writes a new flag
version (through :class:`RecordingFlagWriter`, which the local provider's ``open_flags`` wraps
around the real writer), when and which; a new rollout (``prepare`` adding a candidate) starts
without it, routed by the weights until it writes a flag of its own. The definitions
themselves are kept by digest in the store (namespace ``sandbox-flags``), so any process can
replay the history. From the first version on, the metrics route the simulated users by the
flag (see :mod:`mlrollout.sandbox.traffic`), not by the weights.

The first ``describe()`` creates it from the plan's ``sandbox`` section: the first listed variant
serves 100 %; the others are only behaviours a candidate may take. Every write passes the runner's
lease, so a runner that lost its lease cannot move the simulated traffic. ``started`` is the
instant ``prepare`` added the candidate: the rollout's time zero, from which the sandbox's
:class:`~mlrollout.sandbox.world.World` (its events) runs and the traffic grid is counted (a
record without it counts from ``origin``).

:class:`LocalMetrics` reads windows from :class:`~mlrollout.sandbox.traffic.TrafficModel` with the
stored weight history. Only buckets that have *completed* and been *published* by the clock's
``now`` are visible — a bucket ends at or before the world's publishing edge
(:meth:`~mlrollout.sandbox.world.World.visible_until`, ``now`` less the metrics delay) — as a real
metrics backend shows only finished, ingested periods, so a window's numbers never change once
seen. A window with no visible bucket has no data (``Window()``); a visible window without
traffic has ``requests == 0``. A ``custom`` gate reads the sandbox metric its ``query.metric``
names (else its own name): a variant's custom rate as (events, requests), ``feedback`` as
(positive, rated), ``accuracy`` as (correct, labelled); a metric the variant does not simulate
has no data.

Mirrored (shadow) traffic: ``set_shadow(variant, percent)`` records ``shadow`` (what mirrors now)
and appends to ``shadow_history`` when it changes, as ``set_traffic`` does to ``history``. A
mirrored variant's windows then hold its copy of ``percent`` % of the live requests, answered with
its own behaviour (see :mod:`mlrollout.sandbox.traffic`); the live variants' windows and the
weight history are untouched by it (a mirror serves no one).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from mlrollout.adapters import candidate_capacity, check_finalize, check_weights
from mlrollout.clock import Clock
from mlrollout.contracts import (
    Capabilities,
    CustomValue,
    EndpointState,
    MetricsQuery,
    OwnerMark,
    VariantState,
    Window,
)
from mlrollout.errors import ProviderError, ProviderRefused
from mlrollout.flags import FlagWriter
from mlrollout.plan.model import Candidate, Sandbox
from mlrollout.sandbox.checks import custom_metric
from mlrollout.sandbox.traffic import BUCKET, History, Records, TrafficModel
from mlrollout.sandbox.world import World
from mlrollout.state.base import Lease

NAMESPACE = "sandbox"
#: Where the flag definitions the sandbox was routed by are kept, by digest.
FLAGS_NAMESPACE = "sandbox-flags"
CAPABILITIES = Capabilities(
    weights=True, shadow=True, native_blue_green=False, segment_routing=False
)


class ValueStore(Protocol):
    """The part of :class:`~mlrollout.state.base.StateStore` the sandbox uses."""

    def get_value(self, namespace: str, key: str) -> dict[str, Any] | None: ...

    def put_value(
        self, namespace: str, key: str, value: dict[str, Any], *, lease: Lease | None
    ) -> None: ...


class LocalEndpoint:
    """A simulated endpoint named ``name`` whose variants behave as ``sandbox`` describes."""

    capabilities: Capabilities = CAPABILITIES

    def __init__(
        self,
        name: str,
        sandbox: Sandbox,
        store: ValueStore,
        clock: Clock,
        lease: Callable[[], Lease | None] = lambda: None,
        grid: float = BUCKET,
    ) -> None:
        self.name = name
        self.sandbox = sandbox
        self.store = store
        self.clock = clock
        self.lease = lease
        #: Seconds per traffic bucket (the plan's :func:`~mlrollout.sandbox.traffic.grid_seconds`).
        self.grid = grid
        self.world = World(sandbox)

    # ----------------------------------------------------------------------------- record

    def record(self) -> dict[str, Any] | None:
        """The stored record, re-read on every call (another runner may have changed it)."""
        return self.store.get_value(NAMESPACE, self.name)

    def _load(self) -> dict[str, Any]:
        record = self.record()
        if record is None:
            first = next(iter(self.sandbox.variants))
            now = self.clock.now()
            record = {
                "origin": now,
                "order": [first],
                "variants": {first: _variant(100.0, None, None, 1)},
                "history": [[now, {first: 100.0}]],
                "shadow": {},
                "shadow_history": [],
            }
            self._save(record)
        return record

    def _save(self, record: dict[str, Any]) -> None:
        self.store.put_value(NAMESPACE, self.name, record, lease=self.lease())

    def _state(self, record: Mapping[str, Any]) -> EndpointState:
        shadow: Mapping[str, float] = record.get("shadow", {})
        variants = tuple(
            VariantState(
                name=name,
                weight=float(v["weight"]),
                model=v.get("model"),
                instance_type=v.get("instance_type"),
                instance_count=v.get("instance_count"),
                shadow_percent=float(shadow.get(name, 0.0)),
            )
            for name in record["order"]
            for v in (record["variants"][name],)
        )
        return EndpointState(name=self.name, status="ready", variants=variants)

    # ---------------------------------------------------------------------------- adapter

    def describe(self) -> EndpointState:
        return self._state(self._load())

    def prepare(self, candidate: Candidate, baseline: str) -> EndpointState:
        if candidate.name not in self.sandbox.variants:
            raise ProviderError(
                f"candidate {candidate.name!r} is not a sandbox variant "
                f"(the sandbox lists {', '.join(self.sandbox.variants)})",
                hint="name the candidate after one of the plan's sandbox.variants",
            )
        if baseline not in self.sandbox.variants:
            raise ProviderRefused(
                f"sandbox endpoint {self.name!r} is served by {baseline!r}, which this plan's "
                f"sandbox does not describe (it lists {', '.join(self.sandbox.variants)}): its "
                "traffic could not be simulated",
                hint=f"an earlier rollout left {baseline!r} serving: list it first under "
                "sandbox.variants, or use another target.endpoint or --state",
            )
        record = self._load()
        if candidate.name in record["variants"]:
            return self._state(record)
        if baseline not in record["variants"]:
            raise ProviderError(
                f"baseline {baseline!r} is not deployed on sandbox endpoint {self.name!r} "
                f"(deployed: {', '.join(record['order'])})"
            )
        base = record["variants"][baseline]
        count = candidate_capacity(candidate, base.get("instance_count"))
        record["variants"][candidate.name] = _variant(
            0.0, candidate.model, candidate.instance_type or base.get("instance_type"), count
        )
        record["order"].append(candidate.name)
        record["started"] = self.clock.now()
        # A new rollout: an earlier rollout's flag no longer routes (this one writes its own)
        record.pop("flag_history", None)
        record.pop("flag_key", None)
        self._save(record)
        return self._state(record)

    def set_traffic(self, weights: Mapping[str, float]) -> EndpointState:
        record = self._load()
        deployed: dict[str, Any] = record["variants"]
        check_weights(weights, record["order"], where=f"sandbox endpoint {self.name!r}")
        new = {name: float(weights.get(name, 0.0)) for name in record["order"]}
        if all(abs(deployed[n]["weight"] - w) <= 1e-9 for n, w in new.items()):
            return self._state(record)
        for name, weight in new.items():
            deployed[name]["weight"] = weight
        history: list[list[Any]] = record["history"]
        at = max(self.clock.now(), history[-1][0]) if history else self.clock.now()
        history.append([at, new])
        self._save(record)
        return self._state(record)

    def set_shadow(self, variant: str | None, percent: float) -> EndpointState:
        record = self._load()
        if variant is not None and variant not in record["variants"]:
            raise ProviderError(
                f"cannot mirror traffic to {variant!r}: not deployed on sandbox endpoint "
                f"{self.name!r}"
            )
        if not (math.isfinite(percent) and 0 <= percent <= 100):
            raise ProviderError(f"a shadow percent is from 0 to 100, got {percent:g}")
        shadow = {variant: float(percent)} if variant is not None and percent > 0 else {}
        if shadow != record.get("shadow", {}):
            self._mirror(record, shadow)
            self._save(record)
        return self._state(record)

    def _mirror(self, record: dict[str, Any], shadow: dict[str, float]) -> None:
        """Set what mirrors now, and when it started (the metrics simulate it from then on)."""
        history: list[list[Any]] = record.setdefault("shadow_history", [])
        last = record["history"][-1][0] if record.get("history") else self.clock.now()
        if history:
            last = max(last, history[-1][0])
        at = max(self.clock.now(), last)
        record["shadow"] = shadow
        history.append([at, dict(shadow)])

    def finalize(self, keep: str, retire: str) -> EndpointState:
        record = self._load()
        deployed: dict[str, Any] = record["variants"]
        live = {name: float(deployed[name]["weight"]) for name in record["order"]}
        if not check_finalize(
            keep, retire, live, where=f"sandbox endpoint {self.name!r}", shadow=record.get("shadow")
        ):
            return self._state(record)  # already retired
        del deployed[retire]
        record["order"].remove(retire)
        shadow = record.get("shadow", {})
        if retire in shadow:
            self._mirror(record, {n: p for n, p in shadow.items() if n != retire})
        self._save(record)
        return self._state(record)

    def wait_until_stable(self, timeout: float) -> EndpointState:
        return self.describe()  # a simulated endpoint is always ready

    def facts(self, until: float) -> list[dict[str, Any]]:
        """What changed in the simulated world (the plan's ``sandbox.events``) by the instant
        ``until``, in order, each with its absolute instant ``at``; none before the rollout
        started (the candidate was added)."""
        record = self.record()
        if record is None or record.get("started") is None:
            return []
        started = float(record["started"])
        return [
            {"at": started + fact.at, **fact.to_dict()}
            for fact in self.world.facts_until(until - started)
        ]

    # ------------------------------------------------------------------------------ flags

    def record_flag(self, definition: dict[str, Any], digest: str, key: str) -> None:
        """Note that flag version ``digest`` (of flag ``key``) routes the users from now on.
        Replay-safe: the definition is stored once by digest, and a version already in effect
        is not recorded again."""
        if self.store.get_value(FLAGS_NAMESPACE, digest) is None:
            value = {"key": key, "definition": definition}
            self.store.put_value(FLAGS_NAMESPACE, digest, value, lease=self.lease())
        record = self._load()
        history: list[list[Any]] = record.setdefault("flag_history", [])
        if history and history[-1][1] == digest and record.get("flag_key") == key:
            return
        at = max(self.clock.now(), history[-1][0]) if history else self.clock.now()
        history.append([at, digest])
        record["flag_key"] = key
        self._save(record)

    def flag_version(self, digest: str) -> tuple[str, dict[str, Any]]:
        """The flag key and definition of a recorded version."""
        value = self.store.get_value(FLAGS_NAMESPACE, digest)
        if value is None:
            raise ProviderError(
                f"sandbox endpoint {self.name!r} was routed by flag version {digest[:12]}, "
                "whose definition is not in the store",
                hint="the store was changed under the sandbox: start the sandbox anew (another "
                "target.endpoint or --state)",
            )
        return str(value["key"]), dict(value["definition"])

    def read_owner(self) -> OwnerMark | None:
        record = self.record()
        return OwnerMark.from_tags(None if record is None else record.get("owner"))

    def write_owner(self, mark: OwnerMark | None) -> None:
        record = self._load()
        value = None if mark is None else mark.to_tags()
        if record.get("owner") == value:
            return
        if value is None:
            del record["owner"]
        else:
            record["owner"] = value
        self._save(record)


class LocalMetrics:
    """Seeded synthetic windows for a :class:`LocalEndpoint` (one call per look)."""

    def __init__(self, endpoint: LocalEndpoint, grid: float | None = None) -> None:
        self.endpoint = endpoint
        self.grid = endpoint.grid if grid is None else grid
        self._model: TrafficModel | None = None

    def model(self, started: float) -> TrafficModel:
        """The traffic model of the rollout started at ``started`` (kept between looks)."""
        if self._model is None or self._model.origin != started:
            self._model = TrafficModel(self.endpoint.sandbox, started, self.grid)
        return self._model

    def query(self, query: MetricsQuery) -> dict[str, Window]:
        record = self.endpoint.record()
        if record is None:
            return {v: Window() for v in query.variants}
        started = float(record.get("started", record["origin"]))
        model = self.model(started)
        history: History = [(float(at), ws) for at, ws in record["history"]]
        mirror = _mirror_history(record, started)
        flags = self._flag_history(record, model)
        order: list[str] = record["order"]
        seen = set(record["variants"]).union(
            *(ws for _, ws in history), *(ms for _, ms in mirror), *(fs for _, fs in flags)
        )
        # Only completed, published buckets are visible: cut the window at the last bucket
        # boundary at or before the publishing edge.
        edge = started + model.world.visible_until(self.endpoint.clock.now() - started)
        end = min(query.end, model.boundary_before(edge))
        if not model.buckets(query.start, end):
            return {v: Window() for v in query.variants}
        names = {
            gate.name: custom_metric(gate.name, gate.query)
            for gate in query.gates
            if gate.metric == "custom"
        }
        out: dict[str, Window] = {}
        for v in query.variants:
            records = (
                model.records(v, query.start, end, history, order, mirror, flags)
                if v in seen
                else None
            )
            out[v] = Window() if records is None else _window(records, names)
        return out

    def _flag_history(self, record: Mapping[str, Any], model: TrafficModel) -> History:
        """When which flag version routed the users, as each version's shares of them."""
        entries = record.get("flag_history") or []
        if not entries:
            return []
        key = str(record.get("flag_key", ""))
        version = self.endpoint.flag_version
        return [
            (float(at), model.flag_shares(str(d), key, functools.partial(_definition, version, d)))
            for at, d in entries
        ]


class RecordingFlagWriter:
    """The local provider's flag writer: the real one (the flag file the application would
    read), and, after each write, the version noted in the sandbox endpoint's flag history, so
    that the simulated users are routed by the flag from then on."""

    def __init__(self, writer: FlagWriter, endpoint: LocalEndpoint, key: str) -> None:
        self.writer = writer
        self.endpoint = endpoint
        self.key = key
        self.location = writer.location

    def write(self, definition: dict[str, Any]) -> str:
        digest = self.writer.write(definition)  # the file first: a replay rewrites it
        self.endpoint.record_flag(definition, digest, self.key)
        return digest

    def read(self) -> dict[str, Any] | None:
        return self.writer.read()


def _definition(
    version: Callable[[str], tuple[str, dict[str, Any]]], digest: str
) -> dict[str, Any]:
    return version(digest)[1]


def _mirror_history(record: Mapping[str, Any], started: float) -> History:
    """When what mirrored to which variant (a record written before mirroring was simulated
    has only the current mirror: from the rollout's start)."""
    if "shadow_history" in record:
        return [(float(at), ms) for at, ms in record["shadow_history"]]
    shadow = record.get("shadow") or {}
    return [(started, shadow)] if shadow else []


def _window(records: Records, customs: Mapping[str, str]) -> Window:
    """The window of ``records``, with each custom gate's value (by gate name) when the
    variant simulates the sandbox metric it reads."""
    window = records.window()
    for gate, metric in customs.items():
        value: CustomValue | None = None
        if metric == "feedback":
            if records.feedback is not None:
                value = CustomValue(*records.feedback)
        elif metric == "accuracy":
            if records.confusion is not None:
                value = CustomValue(records.confusion.correct, records.confusion.labelled)
        elif metric in records.custom:
            value = CustomValue(*records.custom[metric])
        if value is not None:
            window.custom[gate] = value
    return window


def _variant(
    weight: float, model: str | None, instance_type: str | None, count: int
) -> dict[str, Any]:
    return {
        "weight": weight,
        "model": model,
        "instance_type": instance_type,
        "instance_count": count,
    }
