"""Fleets: one plan rolled out to many endpoints, in waves (``targets:`` and ``waves:``).

A fleet is a record of its own (the key-value namespace ``fleets`` of the state store) and one
ordinary rollout per target, created when its wave starts, with the id ``<fleet id>-tNNN`` and
the target's own plan (:func:`mlrollout.plan.fleet.member_text`). Each target's rollout runs its
strategy as any rollout does, with its own decision budget, and then *holds* with the candidate
at 100 % and the baseline still deployed (``fleet:`` in its plan). The fleet decides what
happens next, pass after pass (:meth:`FleetRunner.advance`):

- **running**: the first wave with a target not yet held starts its targets, at most
  ``waves.max_parallel`` at a time, and drives them; once every target of every wave holds,
  **releasing**: each target is released (``promote``) and retires its baseline → **succeeded**.
- A target that ends rolled back (or aborted) fails the fleet. ``on_failure: rollback_all`` →
  **rolling_back**: every target already shifted is rolled back (``abort``: traffic first, then
  the candidate removed), the latest wave first → **rolled_back**; ``stop`` → **stopping**: the
  targets already going finish and are released, nothing new starts → **stopped**. No later
  wave ever starts.
- ``mlrollout abort FLEET`` (:meth:`FleetRunner.abort`) rolls back as ``rollback_all`` does.

Everything the fleet does is journalled by the rollouts it drives (their commands, their
mutations) or written to the fleet's record before it is acted on, so a fleet driver killed
between any two writes is finished by the next one (a target's rollout is found again by its id;
a command given twice is read once). The fleet's own lease keeps two drivers off one fleet; each
target's rollout keeps its endpoint's lease as always.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from mlrollout import budget
from mlrollout.clock import Clock
from mlrollout.engine.events import COMMANDS, EventKind
from mlrollout.engine.phases import TERMINAL, Phase
from mlrollout.engine.runner import Runner
from mlrollout.errors import LeaseHeld, MlrolloutError, UsageError
from mlrollout.plan.fleet import member_text, waves_of
from mlrollout.plan.loader import LoadedPlan, parse_plan
from mlrollout.plan.model import Plan
from mlrollout.plan.yamlsafe import load_located
from mlrollout.state.base import Lease, RolloutRecord, StateStore

#: The key-value namespace of the fleets' records.
FLEETS = "fleets"
#: ``mlrollout abort FLEET`` from another process: a key of its own, written without the lease.
ABORTS = "fleet-aborts"
LEASE_TTL = 60.0
#: The fleet's phases; the last three are its ends.
FLEET_PHASES = (
    "running",
    "releasing",
    "rolling_back",
    "stopping",
    "succeeded",
    "rolled_back",
    "stopped",
)
FLEET_ENDS = frozenset({"succeeded", "rolled_back", "stopped"})


@dataclass
class FleetTargetRow:
    index: int
    wave: int
    provider: str
    endpoint: str
    rollout: str | None = None  # its rollout's id, once its wave started it


@dataclass
class FleetRecord:
    id: str
    name: str
    plan: str  # the fleet plan's text, as given
    plan_path: str
    created_at: float
    targets: list[FleetTargetRow]
    max_parallel: int = 1
    on_failure: str = "rollback_all"
    phase: str = "running"
    reason: str | None = None
    failed: int | None = None  # the target whose failure ended the fleet

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FleetRecord:
        rows = [FleetTargetRow(**row) for row in data.get("targets", [])]
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "targets"}
        return cls(targets=rows, **known)

    @property
    def done(self) -> bool:
        return self.phase in FLEET_ENDS

    def waves(self) -> list[int]:
        return sorted({row.wave for row in self.targets})


def member_id(fleet_id: str, index: int) -> str:
    """Target ``index``'s rollout id: fixed width, so no target's id is a prefix of another's."""
    return f"{fleet_id}-t{index:03d}"


def new_fleet_id(plan: Plan) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", plan.name.lower()).strip("-")[:32] or "fleet"
    return f"fleet-{slug}-{secrets.token_hex(3)}"


#: The fleets not yet ended (``{"v": 1, "ids": [...]}``): the key/value space cannot be listed,
#: and a fleet none of whose targets is active (its `run` killed before the first target was
#: created, or after the last one ended but before the fleet recorded its end) would otherwise
#: never be seen by `reconcile` again. A hint, rewritten without a lock: a fleet lost from it by
#: a race is still found through its active targets.
ACTIVE = "_active"


def _active_fleets(store: StateStore) -> list[str]:
    try:
        value = store.get_value(FLEETS, ACTIVE)
    except MlrolloutError:
        return []
    ids = value.get("ids") if isinstance(value, dict) and value.get("v") == 1 else None
    return [str(i) for i in ids] if isinstance(ids, list) else []


def _note_active(store: StateStore, *, add: str | None = None, drop: Iterable[str] = ()) -> None:
    ids = _active_fleets(store)
    new = [i for i in ids if i not in set(drop)] + ([add] if add and add not in ids else [])
    if new != ids:
        with contextlib.suppress(MlrolloutError):  # a hint (see ACTIVE)
            store.put_value(FLEETS, ACTIVE, {"v": 1, "ids": new}, lease=None)


def find_fleet(store: StateStore, fleet_id: str) -> FleetRecord | None:
    """The fleet with this id (exactly), or None."""
    data = store.get_value(FLEETS, fleet_id)
    return None if data is None else FleetRecord.from_dict(data)


@dataclass
class TargetView:
    """What one target's rollout is doing now, for a pass and for ``status``."""

    row: FleetTargetRow
    record: RolloutRecord | None

    @property
    def phase(self) -> str:
        return "not started" if self.record is None else self.record.phase

    @property
    def held(self) -> bool:
        """Waiting for the fleet with the candidate at 100 % (or already released and done)."""
        if self.record is None:
            return False
        if self.record.phase == Phase.SUCCEEDED.value:
            return True
        waiting = (self.record.snapshot or {}).get("waiting") or {}
        return self.record.phase == Phase.WAITING.value and waiting.get("reason") == "fleet"

    @property
    def ended(self) -> bool:
        return self.record is not None and Phase(self.record.phase) in TERMINAL

    @property
    def failed(self) -> bool:
        return self.record is not None and self.record.phase in (
            Phase.ROLLED_BACK.value,
            Phase.ABORTED.value,
        )

    @property
    def reason(self) -> str | None:
        if self.record is None:
            return None
        return (self.record.snapshot or {}).get("reason")

    def row_dict(self) -> dict[str, Any]:
        snapshot = (self.record.snapshot or {}) if self.record else {}
        return {
            "target": self.row.index,
            "wave": self.row.wave,
            "provider": self.row.provider,
            "endpoint": self.row.endpoint,
            "rollout": self.row.rollout,
            "phase": "held (waiting for the fleet)" if self.held and not self.ended else self.phase,
            "weights": snapshot.get("weights") or {},
            "reason": self.reason,
        }


class FleetRunner:
    """Creates, drives and aborts fleets on one state store. ``clock_for(rollout_id)`` gives a
    target's rollout its clock (``None``: the provider's own, as ``run`` uses)."""

    def __init__(
        self,
        store: StateStore,
        *,
        holder: str = "mlrollout",
        clock_for: Callable[[str], Clock | None] | None = None,
        listeners: Iterable[Any] = (),
        wall: Callable[[], float] = time.time,
        real_sleep: Callable[[float], None] = time.sleep,
        on_pass: Callable[[FleetRecord, list[TargetView]], None] | None = None,
    ) -> None:
        self.store = store
        self.holder = holder
        self.clock_for = clock_for or (lambda rollout_id: None)
        self.listeners = list(listeners)
        self.wall = wall
        self.real_sleep = real_sleep
        self.on_pass = on_pass
        self._lease: Lease | None = None

    def _runner(self) -> Runner:
        return Runner(self.store, holder=self.holder, listeners=self.listeners, wall=self.wall)

    # ------------------------------------------------------------------------------ create

    def create(self, loaded: LoadedPlan) -> FleetRecord:
        """Record a new fleet (nothing changes anywhere yet). Each target's plan is checked to
        load as its rollout will load it."""
        plan = loaded.plan
        if not plan.targets:
            raise UsageError("the plan has no targets: it is a single rollout (`mlrollout run`)")
        fleet_id = new_fleet_id(plan)
        source = load_located(loaded.text).data
        for i in range(len(plan.targets)):
            parse_plan(member_text(source, i, fleet_id), f"{loaded.path}#targets[{i}]")
        waves = plan.waves
        record = FleetRecord(
            id=fleet_id,
            name=plan.name,
            plan=loaded.text,
            plan_path=loaded.path,
            created_at=self.wall(),
            targets=[
                FleetTargetRow(i, t.wave, t.provider, t.endpoint)
                for i, t in enumerate(plan.targets)
            ],
            max_parallel=waves.max_parallel if waves else 1,
            on_failure=waves.on_failure if waves else "rollback_all",
        )
        assert waves_of(plan) == record.waves()
        # noted first: killed between the two writes, the note names no fleet and is dropped
        _note_active(self.store, add=fleet_id)
        self.store.put_value(FLEETS, fleet_id, record.to_dict(), lease=None)
        return record

    # ------------------------------------------------------------------------------- drive

    def drive(self, fleet_id: str, *, max_passes: int | None = None) -> FleetRecord:
        """Pass after pass until the fleet ends (``max_passes``: at most that many)."""
        self._take_lease(fleet_id)
        try:
            passes = 0
            while True:
                record = self._load(fleet_id)
                if record.done or (max_passes is not None and passes >= max_passes):
                    return record
                progressed = self.advance(record)
                passes += 1
                self._renew_lease()
                if not progressed:  # every target waits on real time: come back shortly
                    self.real_sleep(1.0)
        finally:
            self._release_lease()

    def _load(self, fleet_id: str) -> FleetRecord:
        record = find_fleet(self.store, fleet_id)
        if record is None:
            raise UsageError(f"no fleet {fleet_id!r}", hint="`mlrollout list` shows the fleets")
        return record

    def _save(self, record: FleetRecord) -> None:
        self.store.put_value(FLEETS, record.id, record.to_dict(), lease=self._lease)

    def views(self, record: FleetRecord) -> list[TargetView]:
        out = []
        for row in record.targets:
            rollout = None
            if row.rollout is not None:
                rollout = self._rollout(row.rollout)
            out.append(TargetView(row, rollout))
        return out

    def _rollout(self, rollout_id: str) -> RolloutRecord | None:
        try:
            found = self.store.get_rollout(rollout_id)
        except UsageError:
            return None
        return found if found.id == rollout_id else None

    def advance(self, record: FleetRecord) -> bool:
        """One pass: decide, write the decision, act on it. True when something moved."""
        views = self.views(record)
        if self.on_pass is not None:
            self.on_pass(record, views)
        aborted = self.store.get_value(ABORTS, record.id)
        if aborted is not None and record.phase in ("running", "releasing", "stopping"):
            record.phase, record.reason = "rolling_back", f"aborted by {aborted.get('by')}"
            self._save(record)
            return True
        if record.phase == "running":
            return self._running(record, views)
        if record.phase == "releasing":
            return self._settle(record, views, "promote", "succeeded")
        if record.phase == "rolling_back":
            return self._settle(record, views, "abort", "rolled_back")
        if record.phase == "stopping":
            return self._settle(record, views, "promote", "stopped")
        return False

    def _running(self, record: FleetRecord, views: list[TargetView]) -> bool:
        failed = next((v for v in views if v.failed), None)
        if failed is not None:
            where = f"{failed.row.endpoint} (wave {failed.row.wave})"
            record.failed = failed.row.index
            record.reason = f"{where}: {failed.reason or failed.phase}"
            record.phase = "rolling_back" if record.on_failure == "rollback_all" else "stopping"
            self._save(record)
            return True
        wave = next((w for w in record.waves() if any(not v.held for v in _in(views, w))), None)
        if wave is None:  # every target of every wave holds: release them all
            record.phase = "releasing"
            self._save(record)
            return True
        current = _in(views, wave)
        going = [v for v in current if v.record is not None and not v.held and not v.ended]
        room = record.max_parallel - len(going)
        moved = False
        for view in [v for v in current if v.record is None][: max(0, room)]:
            self._start(record, view)
            moved = True
        for view in self.views(record):
            active = view.record is not None and not view.held and not view.ended
            if view.row.wave == wave and active:
                assert view.record is not None
                moved = self._drive(view.record.id) or moved
        return moved

    def _start(self, record: FleetRecord, view: TargetView) -> None:
        """Create the target's rollout (found again if a killed pass created it already), then
        note its id in the fleet's record."""
        row = view.row
        rollout_id = member_id(record.id, row.index)
        if self._rollout(rollout_id) is None:
            source = load_located(record.plan).data
            text = member_text(source, row.index, record.id)
            loaded = parse_plan(text, f"{record.plan_path}#targets[{row.index}]")
            self._runner().create(loaded, rollout_id=rollout_id)
        row.rollout = rollout_id
        self._save(record)

    def _drive(self, rollout_id: str) -> bool:
        """Drive one target's rollout until it ends, holds, or waits on real time; True when
        its journal moved."""
        before = self._rollout(rollout_id)
        try:
            self._runner().drive(
                rollout_id,
                on_wait=lambda engine: "detach",
                clock=self.clock_for(rollout_id),
                until_idle=True,
            )
        except LeaseHeld:  # another runner drives it now (a reconcile, a second driver)
            return False
        after = self._rollout(rollout_id)
        return before is None or after is None or after.last_seq != before.last_seq

    def _settle(
        self,
        record: FleetRecord,
        views: list[TargetView],
        command: Literal["promote", "abort"],
        end: str,
    ) -> bool:
        """Give every started target that has not ended ``command`` (once) and drive it; the
        fleet ends as ``end`` once they all have. A release commands every target at once (the
        watchers' workers then drive them side by side); a rollback goes wave by wave, the
        latest first, the next wave only once every target of the later one has ended."""
        moved = False
        waves = sorted({v.row.wave for v in views}, reverse=command == "abort")
        if command == "promote":  # one group: every target commanded before any is driven
            waves = [0]
            views = [replace(v, row=replace(v.row, wave=0)) for v in views]
        for wave in waves:
            going = [v for v in _in(views, wave) if v.record is not None and not v.ended]
            commanded = []
            for view in going:
                assert view.record is not None
                if command == "promote" and not view.held:
                    commanded.append(view)  # stopping: let it reach its hold first
                    continue
                if not self._commanded(view.record, command):
                    self._runner().command(
                        view.record.id, command, by=f"fleet {record.id}", reason=record.reason
                    )
                commanded.append(view)
            for view in commanded:
                assert view.record is not None
                moved = self._drive(view.record.id) or moved
            if command == "abort" and any(
                not v.ended for v in self.views(record) if v.row.wave == wave and v.record
            ):
                break  # the earlier waves wait until this one has rolled back
        views = self.views(record)
        if all(v.record is None or v.ended for v in views):
            record.phase = end
            if end == "succeeded":
                record.reason = f"every target of {len(record.waves())} wave(s) promoted"
            self._save(record)
            return True
        return moved

    def _commanded(self, rollout: RolloutRecord, command: Literal["promote", "abort"]) -> bool:
        """Has the fleet given this command to the rollout already (read or not yet)?"""
        kind = EventKind(f"command.{command}")
        events = self.store.events(rollout.id)
        since = max((e.seq for e in events if e.kind == EventKind.WAITING), default=0)
        return any(e.kind == kind and e.seq > since for e in events if e.kind in COMMANDS)

    # ------------------------------------------------------------------------------ abort

    def abort(self, fleet_id: str, *, by: str) -> FleetRecord:
        """Ask the fleet's driver to roll back every target already shifted (as rollback_all)."""
        record = self._load(fleet_id)
        if record.done:
            raise UsageError(f"fleet {fleet_id} has ended ({record.phase}): nothing to abort")
        self.store.put_value(ABORTS, fleet_id, {"by": by, "at": self.wall()}, lease=None)
        return record

    # ------------------------------------------------------------------------------ leases

    def _take_lease(self, fleet_id: str) -> None:
        self._lease = self.store.acquire_lease(f"fleet:{fleet_id}", self.holder, LEASE_TTL)

    def _renew_lease(self) -> None:
        if self._lease is not None:
            self._lease = self.store.renew_lease(self._lease, LEASE_TTL)

    def _release_lease(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            with contextlib.suppress(Exception):  # it lapses by itself
                self.store.release_lease(lease)


def _in(views: list[TargetView], wave: int) -> list[TargetView]:
    return [v for v in views if v.row.wave == wave]


@dataclass
class FleetStatus:
    """``mlrollout status FLEET``: the fleet and a row per target."""

    record: FleetRecord
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: The API budgets of the targets' providers (mlrollout.budget.read), one row per bucket.
    api_budget: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fleet": self.record.id,
            "name": self.record.name,
            "phase": self.record.phase,
            "reason": self.record.reason,
            "max_parallel": self.record.max_parallel,
            "on_failure": self.record.on_failure,
            "targets": self.rows,
            "api_budget": self.api_budget,
        }


def fleet_status(store: StateStore, fleet_id: str) -> FleetStatus:
    """The fleet, a row per target, and the API budgets of its targets' providers as the
    runners published them (:func:`mlrollout.budget.read`)."""
    runner = FleetRunner(store)
    record = runner._load(fleet_id)
    rows = [v.row_dict() for v in runner.views(record)]
    providers = {row["provider"] for row in rows}
    spent = [b for b in budget.read(store, now=time.time()) if b["provider"] in providers]
    return FleetStatus(record, rows, spent)


def reconcile_fleets(
    store: StateStore, *, holder: str = "mlrollout", records: Iterable[RolloutRecord] | None = None
) -> list[tuple[str, FleetRecord | Exception]]:
    """One pass of every fleet that has an active target (``reconcile``): each fleet whose lease
    is free is advanced once (a wave started, a release or a rollback moved on); a fleet another
    driver holds is left to it. ``records``: the active rollouts already listed."""
    from mlrollout.engine.runner import plan_of

    noted = _active_fleets(store)
    fleets: list[str] = list(noted)
    listed = store.list_rollouts(active_only=True, limit=1000) if records is None else records
    from_targets: set[str] = set()
    for record in listed:
        try:
            member = plan_of(record).fleet
        except Exception:  # a stored plan that no longer loads is reported by the rollouts' pass
            continue
        if member is not None:
            from_targets.add(member.id)
            if member.id not in fleets:
                fleets.append(member.id)
    out: list[tuple[str, FleetRecord | Exception]] = []
    ended: list[str] = []
    for fleet_id in fleets:
        if fleet_id in noted and find_fleet(store, fleet_id) is None:
            ended.append(fleet_id)  # removed from the store by hand: nothing to drive
            continue
        runner = FleetRunner(store, holder=holder)
        try:
            runner._take_lease(fleet_id)
        except LeaseHeld:
            continue
        try:
            fleet = runner._load(fleet_id)
            was_done = fleet.done
            if not was_done:
                runner.advance(fleet)
                fleet = runner._load(fleet_id)
            if fleet.done:
                ended.append(fleet_id)
                if was_done and fleet_id in noted and fleet_id not in from_targets:
                    continue  # it ended in an earlier pass: not this pass's news
            out.append((fleet_id, fleet))
        except Exception as exc:  # one stuck fleet must not stop the others
            out.append((fleet_id, exc))
        finally:
            runner._release_lease()
    if ended:
        _note_active(store, drop=ended)
    return out
