"""``mlrollout plan validate|preview|schema``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mlrollout.cli.common import Output, OutputOption, console, print_json

app = typer.Typer(
    help="Check and preview rollout plans (no credentials, no network unless `preview --live`).",
    no_args_is_help=True,
)


@app.command()
def validate(
    files: Annotated[list[str], typer.Argument(help="Plan files to check.", metavar="FILE...")],
    output: Output = OutputOption,
) -> int:
    """Check plans: YAML, keys, units, steps, gates, provider limits. Exit 4 on any error.

    Every problem is listed as FILE:LINE:COLUMN: KEY.PATH: message.
    """
    from mlrollout.errors import ExitCode, PlanError
    from mlrollout.plan.loader import load_plan

    results = []
    failed = False
    for name in files:
        try:
            loaded = load_plan(name)
            results.append(
                {"file": name, "valid": True, "warnings": [str(w) for w in loaded.warnings]}
            )
            if output == Output.text:
                for warning in loaded.warnings:
                    sys.stderr.write(f"{warning}\n")
                plan = loaded.plan
                where = (
                    f"a fleet of {len(plan.targets)} targets in "
                    f"{len({t.wave for t in plan.targets})} wave(s)"
                    if plan.targets
                    else plan.target.provider
                )
                sys.stdout.write(f"{name}: valid ({plan.strategy.type} on {where})\n")
        except PlanError as exc:
            failed = True
            results.append(
                {
                    "file": name,
                    "valid": False,
                    "errors": [
                        {"line": i.line, "column": i.column, "path": i.path, "message": i.message}
                        for i in exc.issues
                    ],
                }
            )
            if output == Output.text:
                for issue in exc.issues:
                    sys.stderr.write(f"{issue}\n")
    if output == Output.json:
        print_json({"valid": not failed, "files": results})
    elif failed:
        bad = sum(1 for r in results if not r["valid"])
        sys.stderr.write(f"{bad} of {len(files)} plan{'s' if len(files) != 1 else ''} invalid\n")
    return ExitCode.INVALID_PLAN if failed else ExitCode.OK


@app.command()
def schema() -> None:
    """Print the plan's JSON Schema (for editor completion: yaml-language-server)."""
    from mlrollout.plan.model import Plan

    data = Plan.model_json_schema()
    data["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    data["title"] = "mlrollout plan (version 1)"
    print_json(data)


@app.command()
def preview(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="The plan file.", metavar="FILE")],
    live: Annotated[
        bool,
        typer.Option(
            "--live/--offline",
            help="--live: also read the live endpoint once (a describe: no change, no lease, no "
            "ownership mark) with the provider's credentials and show what `run` would change; "
            "for `provider: local`, the sandbox endpoint in the --state store. --offline (the "
            "default): never contact the provider.",
        ),
    ] = False,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            show_default=False,
            help="With --live: the state store of the sandbox endpoint (provider: local), read "
            "only. [default: the global --state]",
        ),
    ] = None,
    backtest: Annotated[
        str | None,
        typer.Option(
            "--backtest",
            metavar="FILE",
            help="Cite a backtest of this plan: the JSON `plan backtest PLAN -o json` wrote.",
        ),
    ] = None,
    output: Output = OutputOption,
) -> None:
    """Show what `run` would do: the timeline (weights, shortest and worst-case time), the gates
    and the API calls. Needs no credentials and no network; changes nothing. With --live, also
    the endpoint now, after the first change and at the end (blue-green: the overlap in
    instance-hours); when it cannot be read, one line says why and the offline preview follows."""
    from mlrollout.plan.loader import load_plan
    from mlrollout.plan.preview import build_preview

    loaded = load_plan(file)
    data = build_preview(loaded)
    if backtest is not None:
        data["backtest"] = _cited_backtest(backtest, loaded.text)
    if not live:
        if output == Output.json:
            print_json(data)
            return
        render_preview(data)
        return
    from mlrollout.cli.common import settings

    live_data, error = read_live_preview(loaded, state or settings(ctx).state)
    data["live"] = live_data
    data["live_error"] = error
    if output == Output.json:
        print_json(data)
        return
    if error is not None:
        hint = f" (hint: {error['hint']})" if error.get("hint") else ""
        sys.stderr.write(
            f"live: could not read {data['provider']} endpoint {data['endpoint']!r}: "
            f"{error['message']}{hint}; showing the offline preview\n"
        )
    render_preview(data)
    if live_data is not None:
        render_live(live_data)


def read_live_preview(
    loaded: object, state: str
) -> tuple[dict[str, object] | None, dict[str, object] | None]:
    """(the live object, None), or (None, {message, hint}) when the endpoint cannot be read."""
    from mlrollout.errors import MlrolloutError
    from mlrollout.plan.live import live_preview, read_live
    from mlrollout.plan.loader import LoadedPlan

    assert isinstance(loaded, LoadedPlan)
    try:
        endpoint, note = read_live(loaded.plan, state)
    except MlrolloutError as exc:
        return None, {"message": exc.message, "hint": exc.hint, "error": type(exc).__name__}
    return live_preview(loaded, endpoint, note), None


def _variant_text(row: dict[str, object]) -> list[str]:
    count = row.get("instance_count")
    return [
        str(row["name"]),
        f"{row['weight']:g}%",
        str(row.get("model") or "—"),
        str(row.get("instance_type") or "—"),
        "—" if count is None else str(count),
        f"{row.get('shadow_percent') or 0:g}%",
    ]


def render_live(live: dict[str, object], *, stderr: bool = False) -> None:
    """The live part of ``plan preview --live``: each variant now, after the first change and at
    the end, blue-green's overlap, and any reason `run` would stop at the start."""
    from rich.table import Table

    out = console(stderr=stderr)
    out.print(f"[bold]live endpoint {live['endpoint']}[/] ({live['status']}), read once:")
    note = live.get("note")
    if note:
        out.print(f"  {note}")
    baseline = live.get("baseline")
    if baseline:
        out.print(f"  baseline: {baseline} (what the candidate is compared against)")
    stages = live["stages"]
    assert isinstance(stages, list)
    table = Table(show_edge=False, pad_edge=False)
    for column in ("stage", "variant", "weight", "model", "instance type", "instances", "mirror"):
        table.add_column(column)
    for stage in stages:
        for i, row in enumerate(stage["variants"]):
            label = f"{stage['stage']}: {stage['change']}" if i == 0 else ""
            table.add_row(label, *_variant_text(row))
        if not stage["variants"]:
            table.add_row(f"{stage['stage']}: {stage['change']}", "(no variants)")
    out.print(table)
    problem = live.get("problem")
    if isinstance(problem, dict):
        out.print(f"[red]`run` would stop here[/]: {problem['message']}")
        if problem.get("hint"):
            out.print(f"  hint: {problem['hint']}")
    overlap = live.get("overlap")
    if isinstance(overlap, dict):
        fleets = " + ".join(
            f"{f['name']} {f['instance_count']}×{f['instance_type'] or 'unknown type'}"
            for f in overlap["fleets"]
        )
        out.print(
            f"blue-green overlap: {fleets} = {overlap['instances']} instances for "
            f"{overlap['min']} to {overlap['max']} (worst case)"
        )
        for kind, hours in overlap["instance_hours"].items():
            worst = "unbounded" if hours["max"] is None else f"{hours['max']:.2f}"
            out.print(f"  {kind}: {hours['min']:.2f} to {worst} instance-hours")


def render_preview(data: dict[str, object], *, stderr: bool = False) -> None:
    from rich.table import Table

    from mlrollout.plan.preview import api_calls

    out = console(stderr=stderr)
    out.print(
        f"[bold]{data['name']}[/]  {data['strategy']} on {data['provider']} endpoint "
        f"[bold]{data['endpoint']}[/]: baseline {data['baseline']} → candidate "
        f"[bold]{data['candidate']}[/]"
    )
    table = Table(show_edge=False, pad_edge=False)
    for column in ("#", "step", "candidate", "min", "worst case", "gates"):
        table.add_column(column)
    steps = data["steps"]
    assert isinstance(steps, list)
    for step in steps:
        table.add_row(
            str(step["index"] + 1),
            step["step"],
            f"{step['candidate_weight']:g}%",
            step["min"],
            step["max"],
            ", ".join(step["gates"]),
        )
    promotion = data["promotion"]
    assert isinstance(promotion, dict)
    ending = str(promotion["step"])
    table.add_row("", ending, "0%" if ending.startswith("end:") else "100%", "", "", "")
    out.print(table)
    out.print(f"total: at least {data['min']}, at most {data['max']}")
    gates = data["gates"]
    assert isinstance(gates, list)
    if gates:
        out.print("gates:")
        for gate in gates:
            out.print(f"  {gate['name']}: {gate['rule']}")
    else:
        out.print("gates: none (analyze steps only bake)")
    analysis = data["analysis"]
    assert isinstance(analysis, dict)
    out.print(
        f"analysis: a look every {analysis['interval']} after a {analysis['delay']} delay, "
        f"at least {analysis['min_requests']} requests per variant, no data → "
        f"{analysis['no_data']} (up to {analysis['max_hold']}, then {analysis['on_inconclusive']})"
        f", alpha {analysis['alpha']}"
    )
    cited = data.get("backtest")
    if isinstance(cited, dict):
        out.print(f"backtest: {cited['text']}")
    fleet = data.get("fleet")
    if isinstance(fleet, dict):
        from mlrollout.cli.fleet_cmds import render_fleet

        render_fleet(data, stderr=stderr)
    flags = data.get("flags")
    if isinstance(flags, dict):
        out.print(
            f"flags: the split is written to {flags['file']} (flag {flags['key']!r}, "
            f"{flags['provider']}); the application routes each user by it, sticky per user"
        )
        for segment in flags["segments"]:
            out.print(f"  segment {segment['name']} ({segment['match']}): {segment['candidate']}")
        if flags["segments"]:
            out.print(f"  everyone else: {flags['others']}")
    rollback = data["rollback"]
    assert isinstance(rollback, dict)
    auto = "automatic" if rollback["automatic"] else "manual (a failing gate pauses)"
    out.print(f"rollback: {auto}; {rollback['how']}")
    by_provider = data.get("api_calls_by_provider")
    if isinstance(by_provider, dict):  # a mixed fleet: each platform's calls
        for provider, calls in by_provider.items():
            _print_calls(out, f"API calls `run` would make (for each {provider} target):", calls)
    else:
        _print_calls(out, "API calls `run` would make:", api_calls(data))
    world = data.get("world")
    if isinstance(world, dict):
        users = world["users"]
        people = (
            ""
            if users is None
            else f"; {users['count']:,} users"
            + "".join(f", {k}: {'/'.join(v)}" for k, v in users["attributes"].items())
        )
        out.print(f"sandbox world: {world['rps']}, metrics {world['metrics_delay']} late{people}")
        for change in world["changes"]:
            out.print(f"  {change['at']:>14}  {change['text']}")
    warnings = data["warnings"]
    assert isinstance(warnings, list)
    for warning in warnings:
        out.print(f"[yellow]{warning}[/]")


def _print_calls(out: Any, title: str, calls: dict[str, Any]) -> None:
    """One platform's API calls (:func:`mlrollout.plan.preview.api_calls`), by when."""
    out.print(title)
    out.print(f"  before:        {', '.join(calls['before'])}")
    if calls["ownership"]:
        out.print(f"  ownership:     {', '.join(calls['ownership'])}")
    labels = {"weight": "each weight", "analyze": "each look", "native": "each look"}
    for kind, made in calls["steps"].items():
        out.print(f"  {labels.get(kind, kind) + ':':14} {', '.join(made)}")
    out.print(f"  promotion:     {', '.join(calls['promotion'])}")
    out.print(f"  rollback:      {', '.join(calls['rollback'])}")


def _cited_backtest(path: str, plan_text: str) -> dict[str, object]:
    """A saved backtest, summed up for the preview (and whether it is of this very plan)."""
    import hashlib
    import json

    from mlrollout.errors import UsageError
    from mlrollout.units import format_duration

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        rate, runs = data["false_rollback_rate"], int(data["rollouts"])
        low, high = data.get("false_rollback_interval95") or (None, None)
        span = float(data["to"]) - float(data["from"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"--backtest {path}: not a backtest's JSON ({type(exc).__name__}: {exc})",
            hint="write one with `mlrollout plan backtest PLAN -o json > FILE`",
        ) from None
    same = data.get("plan_sha256") == hashlib.sha256(plan_text.encode()).hexdigest()
    if rate is None:
        text = f"no simulated rollout fitted in the {format_duration(span)} of history"
    else:
        bounds = f" (95%: {low:.2%}–{high:.2%})" if low is not None else ""
        text = (
            f"{rate:.2%} of {runs} simulated rollouts on {format_duration(span)} of "
            f"{data.get('variant')}'s own history would have rolled back{bounds}"
        )
    if not same:
        text += "; it was run on another version of this plan"
    return {"file": path, "rate": rate, "rollouts": runs, "same_plan": same, "text": text}


@app.command()
def backtest(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="The plan file.", metavar="FILE")],
    start: Annotated[
        str,
        typer.Option(
            "--from",
            help="Where the history starts: an ISO date/time (UTC unless it says), now-14d "
            "(or -14d). The sandbox's world starts here.",
        ),
    ] = "now-14d",
    end: Annotated[str, typer.Option("--to", help="Where the history ends (as --from).")] = "now",
    variant: Annotated[
        str | None,
        typer.Option(
            "--variant",
            help="The variant whose history is replayed. [default: the plan's baseline; the "
            "sandbox's first variant]",
            show_default=False,
        ),
    ] = None,
    shift: Annotated[
        str,
        typer.Option(
            "--shift",
            help="The candidate arm is the window this much later (1d: the same hour of the "
            "day); 0s splits each window in two.",
        ),
    ] = "1d",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the arms' random split.")] = 0,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            show_default=False,
            help="The state store a provider may read (never written). [default: the global "
            "--state]",
        ),
    ] = None,
    output: Output = OutputOption,
) -> None:
    """Would these gates have rolled back a healthy release? Replays the plan's gates on the
    baseline's own history (two arms of the same model, in the plan's proportions, at its
    interval) and reports how many simulated rollouts would have rolled back, held or passed,
    and why: the plan's false-rollback rate on this endpoint's traffic. Read-only."""
    import time

    from mlrollout.cli.common import settings
    from mlrollout.errors import UsageError
    from mlrollout.history import history_source, parse_instant, read_history
    from mlrollout.plan import backtest as replay
    from mlrollout.plan.loader import load_plan
    from mlrollout.units import parse_duration

    plan = load_plan(file).plan
    replay.check_plan(plan)
    now = time.time()
    t1, t2 = parse_instant(start, now), parse_instant(end, now)
    try:
        shift_seconds = parse_duration(shift, allow_zero=True)
    except ValueError as exc:
        raise UsageError(f"--shift: {exc}") from None
    if t2 <= t1:
        raise UsageError(f"--to ({end}) is not after --from ({start})")
    name = variant or (plan.baseline if plan.baseline != "auto" else None)
    if name is None and plan.sandbox is not None:
        name = next(iter(plan.sandbox.variants))
    if name is None:
        raise UsageError(
            "the plan's baseline is auto: name the variant whose history to replay",
            hint="--variant NAME (the one serving the endpoint)",
        )
    source = history_source(plan, origin=t1, state=state or settings(ctx).state)
    gates = [g for g in plan.analysis.gates if g.name in replay.judged(plan)]
    history = read_history(
        source, start=t1, end=t2, step=plan.analysis.interval, variants=(name,), gates=gates
    )
    result = replay.run(plan, history, variant=name, shift=shift_seconds, seed=seed)
    if output == Output.json:
        import hashlib

        data = result.to_dict()
        # `plan preview --backtest FILE` cites it, and says when the plan has changed since
        text = Path(file).read_bytes()
        data["plan_sha256"] = hashlib.sha256(text).hexdigest()
        print_json(data)
        return
    sys.stdout.write(replay.render(result))
