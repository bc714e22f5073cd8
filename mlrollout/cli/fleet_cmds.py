"""The commands on fleets (``targets:`` plans): ``run``, ``resume``, ``status``, ``abort`` and
``report`` hand a fleet's id or plan to these (see :mod:`mlrollout.engine.fleet`)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from mlrollout.cli.common import Output, console, print_json

if TYPE_CHECKING:
    from mlrollout.engine.fleet import FleetRecord, TargetView
    from mlrollout.plan.loader import LoadedPlan
    from mlrollout.state.base import StateStore

#: A fleet's end as an exit code: 0 every target promoted, 1 rolled back or stopped after a
#: failure (the finished targets of a stopped fleet keep the candidate).
FLEET_EXIT = {"succeeded": 0, "rolled_back": 1, "stopped": 1}


def render_fleet(data: dict[str, Any], *, stderr: bool = False) -> None:
    """The fleet's part of a preview, after the per-target rollout."""
    out = console(stderr=stderr)
    fleet = data["fleet"]
    waves = fleet["waves"]
    out.print(
        f"fleet: {len(fleet['targets'])} targets in {len(waves)} wave(s), at most "
        f"{fleet['max_parallel']} at a time; each target runs the rollout above and holds with "
        "the candidate at 100 % and its baseline still deployed until every wave has passed"
    )
    for wave in waves:
        names = [
            f"{t['endpoint']} ({t['provider']})"
            + (" with its own sandbox changes" * bool(t["changes"]))
            for t in fleet["targets"]
            if t["wave"] == wave
        ]
        out.print(f"  wave {wave}: {', '.join(names)}")
    then = (
        "every target already shifted is rolled back (latest wave first)"
        if fleet["on_failure"] == "rollback_all"
        else "the targets already going finish and keep the candidate"
    )
    out.print(f"  a target that fails: {then}; no later wave starts")
    out.print(
        f"  decision budget: alpha {fleet['alpha_per_target']} for each target's rollout "
        "(a false rollback of any one target stops the fleet)"
    )


def run_fleet(store: StateStore, loaded: LoadedPlan, output: Output) -> int:
    from mlrollout.engine.fleet import FleetRunner

    runner = FleetRunner(store, on_pass=_progress(output))
    record = runner.create(loaded)
    if output == Output.text:
        sys.stderr.write(f"fleet {record.id} started (state: {store.location})\n")
    return drive_fleet(store, record.id, output, runner)


def drive_fleet(store: StateStore, fleet_id: str, output: Output, runner: Any = None) -> int:
    from mlrollout.engine.fleet import FleetRunner

    runner = runner or FleetRunner(store, on_pass=_progress(output))
    record = runner.drive(fleet_id)
    _summary(store, record, output)
    return FLEET_EXIT.get(record.phase, 3)


def _progress(output: Output) -> Any:
    """A line (or a JSON object) whenever a target's phase changes between passes."""
    seen: dict[int, str] = {}
    phases: dict[str, str] = {}

    def show(record: FleetRecord, views: list[TargetView]) -> None:
        if phases.get(record.id) != record.phase:
            phases[record.id] = record.phase
            _line(output, {"fleet": record.id, "phase": record.phase, "reason": record.reason})
        for view in views:
            row = view.row_dict()
            if seen.get(view.row.index) != row["phase"]:
                seen[view.row.index] = row["phase"]
                _line(output, {"fleet": record.id, **row})

    return show


def _line(output: Output, data: dict[str, Any]) -> None:
    if output == Output.json:
        print_json(data)
        return
    if "target" in data:
        text = f"  wave {data['wave']} {data['endpoint']}: {data['phase']}"
        if data.get("reason") and data["phase"] in ("rolled_back", "aborted"):
            text += f" ({data['reason']})"
    else:
        text = f"fleet {data['fleet']}: {data['phase']}" + (
            f" — {data['reason']}" if data.get("reason") else ""
        )
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except OSError:  # a closed pipe: the fleet goes on
        pass


def _summary(store: StateStore, record: FleetRecord, output: Output) -> None:
    if output == Output.json:
        return
    sys.stderr.write(f"fleet {record.id} {record.phase.replace('_', ' ')}")
    sys.stderr.write(f": {record.reason}\n" if record.reason else "\n")


def fleet_status(store: StateStore, fleet_id: str, output: Output) -> int:
    from mlrollout.engine.fleet import fleet_status as status

    data = status(store, fleet_id).to_dict()
    if output == Output.json:
        print_json(data)
        return 0
    sys.stdout.write(fleet_markdown(data))
    return 0


def fleet_markdown(data: dict[str, Any]) -> str:
    """The fleet as a table of its targets (``status`` and ``report``)."""
    lines = [
        f"# Fleet {data['fleet']}: {data['phase'].replace('_', ' ')}",
        "",
        f"{data['name']} — at most {data['max_parallel']} target(s) at a time, on a failure: "
        f"{data['on_failure'].replace('_', ' ')}."
        + (f" {data['reason']}." if data.get("reason") else ""),
        "",
        "| wave | target | rollout | phase | weights | why |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in data["targets"]:
        weights = ", ".join(f"{k} {v:g}%" for k, v in (row["weights"] or {}).items()) or "-"
        why = (row.get("reason") or "").replace("|", "\\|")
        lines.append(
            f"| {row['wave']} | {row['endpoint']} ({row['provider']}) | {row['rollout'] or '-'} "
            f"| {row['phase']} | {weights} | {why} |"
        )
    if data.get("api_budget"):
        lines += ["", *budget_markdown(data["api_budget"])]
    return "\n".join(lines) + "\n"


def budget_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The API budgets as a table: what each platform allows, the share mlrollout takes, the
    rate it runs at now (lower after throttled answers), and the calls of the last hour."""
    lines = [
        "## API budget (every runner of this state store, the last hour)",
        "",
        "| provider | account/region | service | class | limit /s | share | now /s | calls "
        "| waited | throttled |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for b in rows:
        lines.append(
            f"| {b['provider']} | {b['scope']} | {b['service']} | {b['class']} "
            f"| {b['limit_per_s']:g} | {b['share_percent']:g}% | {b['rate_per_s']:g} "
            f"| {b['calls']} | {b['waited_s']:g} s | {b['throttled']} |"
        )
    return lines


def find(store: StateStore, some_id: str | None) -> FleetRecord | None:
    """The fleet an id names exactly, if it names one."""
    if not some_id:
        return None
    from mlrollout.engine.fleet import find_fleet

    return find_fleet(store, some_id)
