"""``mlrollout run|resume|reconcile|promote|abort|status|list|report|providers|demo``."""

from __future__ import annotations

import contextlib
import errno
import signal
import sys
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from mlrollout.cli.common import (
    ApiShareOption,
    Output,
    OutputOption,
    apply_api_share,
    console,
    interactive,
    print_json,
    settings,
    stdout_to_devnull,
)
from mlrollout.cli.provider_cmds import ProviderCommandGroup
from mlrollout.engine.phases import Phase

if TYPE_CHECKING:
    from mlrollout.engine.engine import Engine, Listener, RolloutState
    from mlrollout.engine.runner import RunOutcome, WaitDecision
    from mlrollout.state.base import Event, RolloutRecord, StateStore

IdArg = Annotated[str, typer.Argument(help="Rollout id (a unique prefix is enough).", metavar="ID")]


def register(app: typer.Typer) -> None:
    for command in (run, resume, status, list_, promote, abort, reconcile, report, demo):
        name = command.__name__.rstrip("_")
        app.command(name=name)(command)
    app.add_typer(providers_app, name="providers")


# ------------------------------------------------------------------------------------- driving


class _ClosableStdout:
    """stdout for progress lines, which a reader may close (`run -o json | head -1`): once a
    write finds the pipe gone, it says so once on stderr, points the descriptor at /dev/null (so
    nothing fails at exit either), and drops what follows. The rollout goes on to its end: what
    is shown never decides it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.closed = False

    def write(self, text: str) -> int:
        if not self.closed:
            try:
                self.stream.write(text)
            except OSError as exc:
                self._gone(exc)
        return len(text)

    def flush(self) -> None:
        if not self.closed:
            try:
                self.stream.flush()
            except OSError as exc:
                self._gone(exc)

    def isatty(self) -> bool:
        return self.stream.isatty()

    def _gone(self, exc: OSError) -> None:
        if exc.errno not in (errno.EPIPE, errno.EINVAL):  # BrokenPipeError is EPIPE
            raise exc
        self.closed = True
        stdout_to_devnull()
        with contextlib.suppress(OSError):
            sys.stderr.write(
                "stdout was closed: progress is no longer printed; the rollout goes on\n"
            )


def _plain(out: _ClosableStdout, rollout_id: str, steps: list[Any]) -> Listener:
    """Timestamped lines; on GitHub Actions folded per step, with an annotation on rollback."""
    from mlrollout.report.ci import GitHubReporter, on_github_actions
    from mlrollout.report.console import PlainReporter

    kind = GitHubReporter if on_github_actions() else PlainReporter
    return kind(out, rollout_id, steps)  # type: ignore[arg-type]


class _Display:
    """Chooses how progress is shown: JSON lines, a live terminal view, or plain lines."""

    def __init__(
        self, output: Output, record: RolloutRecord, plan_steps: list[Any], worst: float
    ) -> None:
        from mlrollout.report.console import JsonReporter, LiveReporter

        self.record = record
        self.steps = plan_steps
        self.live: LiveReporter | None = None
        self.current: Listener
        self.out = _ClosableStdout(sys.stdout)
        if output == Output.json:
            self.current = JsonReporter(self.out)  # type: ignore[arg-type]
        elif sys.stdout.isatty():
            self.live = LiveReporter(console(), record.id, record.name, plan_steps, worst)
            self.current = self.live
        else:
            self.current = _plain(self.out, record.id, plan_steps)

    def __call__(self, event: Event, state: RolloutState) -> None:
        self.current(event, state)

    def to_plain(self) -> None:
        """Leave the live view (before a prompt); go on with plain lines."""

        if self.live is not None:
            self.live.close()
            self.live = None
            self.current = _plain(self.out, self.record.id, self.steps)

    def __enter__(self) -> _Display:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        close = getattr(self.current, "close", None)
        if close is not None:
            close()


def _ask(engine: Engine) -> WaitDecision:
    waiting = engine.state.waiting or {}
    reason = waiting.get("reason", "approval")
    prompt = "Promote to the next step? [p]romote / [a]bort / [w]ait"
    if reason != "approval":
        prompt = f"Paused: {reason}\nContinue? [p]romote / [a]bort / [w]ait"
    answer = typer.prompt(prompt, default="w").strip().lower()[:1]
    return {"p": "promote", "a": "abort"}.get(answer, "detach")  # type: ignore[return-value]


class OnInterrupt(StrEnum):
    stop = "stop"
    rollback = "rollback"


OnInterruptOption = typer.Option(
    OnInterrupt.stop,
    "--on-interrupt",
    help="On Ctrl-C or SIGTERM: stop (finish the change in flight, record it, exit 3; "
    "`resume` continues) or rollback (then roll back and exit 1). A second signal stops at once.",
)


def _drive(
    ctx: typer.Context,
    rollout_id: str,
    output: Output,
    detach: bool,
    on_interrupt: OnInterrupt = OnInterrupt.stop,
    adopt: bool = False,
) -> int:
    from mlrollout.engine.runner import Runner, plan_of
    from mlrollout.plan.timeline import expand_steps, timeline

    store = settings(ctx).store()
    record = store.get_rollout(rollout_id)
    plan = plan_of(record)
    worst = sum(r.max_seconds for r in timeline(plan) if r.max_seconds != float("inf"))
    display = _Display(output, record, expand_steps(plan), worst)
    runner = Runner(store, listeners=[display])
    prompt = interactive() and output == Output.text and not detach

    def on_wait(engine: Engine) -> WaitDecision:
        if detach:
            return "detach"
        if prompt:
            display.to_plain()
            return _ask(engine)
        return "detach" if engine.clock.virtual else "wait"

    def request_stop(signum: int, frame: object) -> None:
        if runner.stop_requested:  # the second signal: stop now
            raise KeyboardInterrupt
        runner.stop_requested = True
        sys.stderr.write(
            "\nstopping after the change in flight is recorded (again to stop at once)\n"
        )

    handlers = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with display:
            outcome = runner.drive(record.id, on_wait=on_wait, adopt=adopt)
            if outcome.interrupted and on_interrupt == OnInterrupt.rollback:
                sys.stderr.write(f"interrupted: rolling {record.id} back (--on-interrupt)\n")
                runner.stop_requested = False
                runner.command(record.id, "abort")
                outcome = runner.drive(record.id, on_wait=lambda engine: "detach")
    except KeyboardInterrupt:
        outcome = None
    finally:
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
    from mlrollout.errors import MlrolloutError
    from mlrollout.report.ci import write_step_summary

    with contextlib.suppress(MlrolloutError):  # the summary never changes the outcome
        write_step_summary(store, record.id)
    if outcome is None or (outcome.interrupted and not outcome.phase.terminal):
        sys.stderr.write(
            f"interrupted: rollout {record.id} is recorded; continue it with "
            f"`mlrollout resume {record.id}` or roll it back with `mlrollout abort {record.id}`\n"
        )
        return 3
    _summary(outcome, output)
    return outcome.exit_code


def _summary(outcome: RunOutcome, output: Output) -> None:
    if output == Output.json:
        return
    out = console(stderr=True)
    rid = outcome.rollout_id
    state = outcome.state
    weights = ", ".join(f"{k} {v:g}%" for k, v in state.weights.items())
    if outcome.exit_code == 0 and state.evaluated:
        out.print(f"[green]evaluated[/]: {state.reason}; {weights} ({rid})")
    elif outcome.exit_code == 0 and state.reason:  # nothing to do (already promoted)
        out.print(f"[green]nothing to do[/]: {state.reason} ({rid})")
    elif outcome.exit_code == 0:
        out.print(f"[green]promoted[/]: {state.candidate} serves 100% ({rid})")
    elif outcome.exit_code == 1:
        out.print(f"[red]rolled back[/]: {weights} — {state.reason}")
    else:
        waiting = state.waiting or {}
        out.print(
            f"[yellow]waiting[/] ({waiting.get('reason', 'for a human')}): "
            f"`mlrollout promote {rid}` or `mlrollout abort {rid}`, then `mlrollout resume {rid}`"
        )
    out.print(f"details: `mlrollout status {rid}`, `mlrollout report {rid}`")


def run(
    ctx: typer.Context,
    plan_file: Annotated[str, typer.Argument(help="The rollout plan (YAML).", metavar="PLAN")],
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help="Skip the confirmation (never answers an approve gate)."),
    ] = False,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach", help="Stop (exit 3) at the first wait for a human instead of waiting."
        ),
    ] = False,
    on_interrupt: OnInterrupt = OnInterruptOption,
    output: Output = OutputOption,
    api_share: Annotated[str | None, ApiShareOption] = None,
) -> int:
    """Validate the plan, show the preview, ask once, then drive the rollout to its end.

    Exit codes: 0 promoted, 1 rolled back, 3 waiting for a human, 4 invalid plan, 5 needs a
    human, 6 provider error before any change.
    """
    from mlrollout.engine.runner import Runner
    from mlrollout.errors import UsageError
    from mlrollout.plan.loader import load_plan
    from mlrollout.plan.preview import build_preview

    apply_api_share(api_share)
    loaded = load_plan(plan_file)
    if not yes:
        if not interactive():
            raise UsageError(
                "no terminal to confirm on", hint="pass --yes to run without confirmation"
            )
        from mlrollout.cli.plan_cmds import render_preview

        render_preview(build_preview(loaded))
        if not typer.confirm("Start this rollout?", default=False):
            sys.stderr.write("not started\n")
            return 0
    store = settings(ctx).store()
    if loaded.plan.targets:  # a fleet: one rollout per target, in waves
        from mlrollout.cli.fleet_cmds import run_fleet

        return run_fleet(store, loaded, output)
    record = Runner(store).create(loaded)
    if output == Output.text:
        sys.stderr.write(f"rollout {record.id} started (state: {store.location})\n")
    return _drive(ctx, record.id, output, detach, on_interrupt)


def resume(
    ctx: typer.Context,
    rollout_id: IdArg,
    detach: Annotated[
        bool, typer.Option("--detach", help="Stop (exit 3) at the first wait for a human.")
    ] = False,
    adopt: Annotated[
        bool,
        typer.Option(
            "--adopt",
            help="The endpoint was changed by hand (exit 5, 'changed outside this rollout'): "
            "take its live weights as the rollout's and continue from there.",
        ),
    ] = False,
    on_interrupt: OnInterrupt = OnInterruptOption,
    output: Output = OutputOption,
    api_share: Annotated[str | None, ApiShareOption] = None,
) -> int:
    """Continue a rollout from its journal (after a kill, an exit 3, or `promote`); or a fleet,
    by its id."""
    from mlrollout.cli import fleet_cmds

    apply_api_share(api_share)
    store = settings(ctx).store()
    fleet = fleet_cmds.find(store, rollout_id)
    if fleet is not None:
        if fleet.done:
            sys.stderr.write(f"fleet {fleet.id} already ended: {fleet.phase}\n")
            return fleet_cmds.FLEET_EXIT[fleet.phase]
        return fleet_cmds.drive_fleet(store, fleet.id, output)
    record = store.get_rollout(rollout_id)
    if Phase(record.phase).terminal:
        sys.stderr.write(f"rollout {record.id} already ended: {record.phase}\n")
        return 0 if record.phase == "succeeded" else 1
    return _drive(ctx, record.id, output, detach, on_interrupt, adopt=adopt)


ReasonOption = typer.Option(
    "--reason",
    metavar="TEXT",
    help="Why, recorded with who (MLROLLOUT_ACTOR, GITHUB_ACTOR or your login) in the journal, "
    "the report and the notifications.",
)


def promote(
    ctx: typer.Context,
    rollout_id: IdArg,
    full: Annotated[
        bool,
        typer.Option("--full", help="Skip the remaining steps: straight to 100% and finalize."),
    ] = False,
    reason: Annotated[str | None, ReasonOption] = None,
) -> int:
    """Answer an approve gate (or resume a paused rollout); with --full, promote now."""
    return _command(ctx, rollout_id, "promote", full=full, reason=reason)


def abort(
    ctx: typer.Context, rollout_id: IdArg, reason: Annotated[str | None, ReasonOption] = None
) -> int:
    """Roll back now: traffic to the baseline first, then remove the candidate. A fleet's id:
    every target already shifted is rolled back, and no later wave starts."""
    from mlrollout.cli import fleet_cmds

    store = settings(ctx).store()
    fleet = fleet_cmds.find(store, rollout_id)
    if fleet is not None:
        from mlrollout.engine.fleet import FleetRunner
        from mlrollout.engine.runner import actor

        who = actor() + (f" ({reason})" if reason else "")
        FleetRunner(store).abort(fleet.id, by=who)
        sys.stderr.write(
            f"abort recorded for fleet {fleet.id}; its driver rolls back every target already "
            f"shifted, or continue with `mlrollout resume {fleet.id}`\n"
        )
        return 0
    return _command(ctx, rollout_id, "abort", reason=reason)


def _command(
    ctx: typer.Context, rollout_id: str, kind: str, *, full: bool = False, reason: str | None
) -> int:
    from mlrollout.engine.runner import Runner
    from mlrollout.errors import LeaseHeld, UsageError

    store = settings(ctx).store()
    record = store.get_rollout(rollout_id)
    if Phase(record.phase).terminal:
        raise UsageError(f"rollout {record.id} already ended ({record.phase})")
    runner = Runner(store)
    runner.command(record.id, kind, full=full, reason=reason)  # type: ignore[arg-type]
    if kind == "abort":
        try:
            outcome = runner.drive(record.id, on_wait=lambda engine: "detach")
        except LeaseHeld as exc:
            sys.stderr.write(f"abort recorded; the runner driving it will roll back ({exc})\n")
            return 0
        sys.stderr.write(f"{record.id}: {outcome.phase.value} — {outcome.state.reason}\n")
        return 0
    sys.stderr.write(
        f"{kind}{' --full' if full else ''} recorded for {record.id}; a running `mlrollout run` "
        f"picks it up, or continue with `mlrollout resume {record.id}`\n"
    )
    return 0


def _reconcile_row(
    record: RolloutRecord, result: RunOutcome | Exception
) -> tuple[dict[str, Any], int | None]:
    """One rollout of a pass as shown (text or JSON), with its exit code (None: another runner
    drives it, which is not a failure)."""
    from mlrollout.errors import ExitCode, LeaseHeld, MlrolloutError

    if isinstance(result, LeaseHeld):  # another runner drives it: normal, not a failure
        return {"id": record.id, "phase": record.phase, "driven_by": result.message}, None
    if isinstance(result, Exception):
        message = result.message if isinstance(result, MlrolloutError) else repr(result)
        code = result.exit_code if isinstance(result, MlrolloutError) else ExitCode.BUG
        return {"id": record.id, "error": message, "exit_code": code}, code
    code = result.exit_code
    return {"id": record.id, "phase": result.phase.value, "exit_code": code}, code


def _reconcile_line(row: dict[str, Any]) -> str:
    if "driven_by" in row:
        return f"{row['id']}: {row['phase']}, {row['driven_by']}\n"
    return f"{row['id']}: {row.get('phase') or 'error: ' + row['error']}\n"


def _reconcile_watch(
    ctx: typer.Context, output: Output, workers: int, interval: float, max_passes: int | None
) -> int:
    """`reconcile --watch`: pass after pass with N workers (see :mod:`mlrollout.engine.watch`),
    a heartbeat line per pass, a line per rollout that ended or failed; a first SIGTERM/SIGINT
    finishes the ticks in flight and hands the leases back (exit 0), a second stops at once."""
    import json
    import threading
    import time

    from mlrollout.engine.watch import PassReport, Watcher
    from mlrollout.state.open import open_store

    location = settings(ctx).state
    out = _ClosableStdout(sys.stdout)
    lock = threading.Lock()
    watcher = Watcher(lambda: open_store(location), workers=workers, interval=interval)

    def on_pass(report: PassReport) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(report.at))
        shown = [_reconcile_row(d.record, d.result)[0] | {"by": d.holder} for d in report.done]
        if output == Output.json:
            line = {
                "pass": report.number,
                "at": stamp,
                "active": report.active,
                "driven": report.driven,
                "elsewhere": report.elsewhere,
                "ended": len(report.ended),
                "errors": len(report.errors),
                "worst": report.worst,
                "seconds": round(report.seconds, 3),
                "next_in": round(report.next_in, 3),
                "rollouts": shown,
            }
            if report.error is not None:
                line["error"] = report.error.message
            text = json.dumps(line, separators=(",", ":"), default=str) + "\n"
        else:
            text = (
                f"{stamp} pass {report.number}: {report.active} active, {report.driven} driven, "
                f"{report.elsewhere} driven elsewhere, {len(report.ended)} ended, "
                f"{len(report.errors)} errors in {report.seconds:.2f}s; "
                f"next in {round(report.next_in, 1):g}s\n"
            )
            if report.error is not None:
                text += f"error: {report.error.message} (trying again at the next pass)\n"
            ended = {d.record.id for d in report.ended} | {d.record.id for d in report.errors}
            text += "".join(_reconcile_line(row) for row in shown if row["id"] in ended)
        with lock:
            out.write(text)
            out.flush()

    def request_stop(signum: int, frame: object) -> None:
        if watcher.stop_requested:  # the second signal: stop now
            raise KeyboardInterrupt
        watcher.stop()
        sys.stderr.write(
            "\nstopping: finishing the ticks in flight, handing the leases back "
            "(again to stop at once)\n"
        )

    handlers = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = watcher.run(max_passes=max_passes, on_pass=on_pass)
    except KeyboardInterrupt:
        sys.stderr.write(
            "stopped at once: a tick cut short is finished by the next `reconcile` or `resume`\n"
        )
        return 3
    finally:
        for sig, previous in handlers.items():
            signal.signal(sig, previous)
    if watcher.stop_requested:
        sys.stderr.write(f"stopped after pass {watcher.passes}; leases handed back\n")
    return code


def reconcile(
    ctx: typer.Context,
    output: Output = OutputOption,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Keep going: pass after pass, sleeping until the next work is due (at most "
            "--interval); a heartbeat line per pass. SIGTERM/SIGINT finish the ticks in flight, "
            "hand the leases back and exit 0. Several watchers may share one state store.",
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            metavar="N",
            help="Rollouts driven at once (--watch; default 1), each by one worker through its "
            "endpoint's lease.",
        ),
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option(
            "--interval",
            min=0.01,
            metavar="SECONDS",
            help="Longest sleep between two passes (--watch; default 30): how soon a new rollout "
            "or a command is noticed.",
        ),
    ] = None,
    max_passes: Annotated[
        int | None,
        typer.Option(
            "--max-passes",
            min=1,
            metavar="N",
            help="Stop after N passes (--watch; for tests and CI): exit with the worst outcome "
            "on the way.",
        ),
    ] = None,
    api_share: Annotated[str | None, ApiShareOption] = None,
) -> int:
    """One pass over every active rollout: do the work that is due, then exit (for cron).

    Exit code: the worst real outcome of the pass, from best to worst 0 (nothing ended badly;
    rollouts still going, promoted, or driven by another runner), 3 (a rollout waits for a
    human), 1 (one rolled back), 4 (a stored plan is no longer valid), 6 (a provider error),
    5 (one needs a human), 70 (a bug in mlrollout). With --watch: 0 once stopped by a signal.
    """
    from mlrollout.engine.runner import Runner, worse
    from mlrollout.engine.watch import DEFAULT_INTERVAL
    from mlrollout.errors import MlrolloutError, UsageError

    apply_api_share(api_share)
    if not watch:
        given = [
            name
            for name, value in (
                ("--workers", workers),
                ("--interval", interval),
                ("--max-passes", max_passes),
            )
            if value is not None
        ]
        if given:
            raise UsageError(
                f"{', '.join(given)} only applies to `reconcile --watch`",
                hint=f"add --watch to keep reconciling, or drop {', '.join(given)} for one pass",
            )
    else:
        chosen = DEFAULT_INTERVAL if interval is None else interval
        return _reconcile_watch(ctx, output, workers or 1, chosen, max_passes)
    from mlrollout.engine.fleet import reconcile_fleets

    store = settings(ctx).store()
    results = Runner(store).reconcile()
    rows: list[dict[str, Any]] = []
    worst = 0
    for record, result in results:
        row, code = _reconcile_row(record, result)
        rows.append(row)
        if code is not None:
            worst = worse(worst, code)
    for fleet_id, fleet in reconcile_fleets(store):  # then the fleets their targets belong to
        if isinstance(fleet, Exception):
            message = fleet.message if isinstance(fleet, MlrolloutError) else repr(fleet)
            rows.append({"id": fleet_id, "error": message})
            worst = worse(worst, getattr(fleet, "exit_code", 70))
        else:
            rows.append({"id": fleet_id, "phase": f"fleet {fleet.phase}"})
    if output == Output.json:
        print_json({"rollouts": rows})
    else:
        if not rows:
            sys.stdout.write("no active rollouts\n")
        for row in rows:
            sys.stdout.write(_reconcile_line(row))
    return worst


# --------------------------------------------------------------------------------- reading


def status(
    ctx: typer.Context,
    rollout_id: Annotated[
        str | None, typer.Argument(help="Rollout id; default: the newest.", metavar="[ID]")
    ] = None,
    output: Output = OutputOption,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Follow the rollout until it ends, from any machine that reads its state "
            "store: the live view in a terminal, timestamped lines otherwise, JSON lines with "
            "-o json. Exits with the rollout's exit code (0 promoted, 1 rolled back).",
        ),
    ] = False,
    interval: Annotated[
        float,
        typer.Option(
            "--interval", min=0.05, help="Seconds between reads of the state store (--watch)."
        ),
    ] = 2.0,
    timeout: Annotated[
        str | None,
        typer.Option(
            "--timeout",
            metavar="DURATION",
            help="Stop watching after this long (e.g. 30m): exit 3, the rollout goes on.",
        ),
    ] = None,
) -> int:
    """Where a rollout is: phase, step, weights, each gate's value and verdict.

    With --watch, what `run` shows, from another terminal or a later CI job, until the end."""
    from mlrollout.cli import fleet_cmds
    from mlrollout.engine.engine import RolloutState
    from mlrollout.engine.runner import plan_of
    from mlrollout.plan.timeline import expand_steps
    from mlrollout.report.markdown import render_status, status_summary

    store = settings(ctx).store()
    if fleet_cmds.find(store, rollout_id) is not None:
        assert rollout_id is not None
        return fleet_cmds.fleet_status(store, rollout_id, output)
    record = _record(store, rollout_id)
    if watch:
        return _watch(store, record, output, interval, _timeout(timeout))
    state = RolloutState.from_dict(record.snapshot)
    plan = plan_of(record)
    steps = expand_steps(plan)
    spent = _api_budget(store, plan.target.provider)
    if output == Output.json:
        print_json(status_summary(record, state, steps) | {"api_budget": spent})
    else:
        console().print(render_status(record, state, steps))
        if spent:
            from mlrollout.cli.fleet_cmds import budget_markdown

            console().print("\n".join(["", *budget_markdown(spent)]))
    return 0


def _api_budget(store: StateStore, provider: str) -> list[dict[str, Any]]:
    """What the runners of ``store`` spent of ``provider``'s API budgets in the last hour."""
    import time

    from mlrollout import budget

    return [b for b in budget.read(store, now=time.time()) if b["provider"] == provider]


def _timeout(text: str | None) -> float | None:
    from mlrollout.errors import UsageError
    from mlrollout.units import parse_duration

    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--timeout: {exc}") from None


def _watch(
    store: StateStore,
    record: RolloutRecord,
    output: Output,
    interval: float,
    timeout: float | None,
) -> int:
    """Replay the rollout's journal so far, then follow it (one read of the journal and one of
    the record per ``interval``) until its phase is terminal; the runner's exit code then, 3
    on ``timeout`` or Ctrl-C (the rollout itself goes on: watching never changes it)."""
    import time

    from mlrollout.engine.engine import RolloutState
    from mlrollout.engine.runner import RunOutcome, plan_of
    from mlrollout.plan.timeline import expand_steps, timeline

    plan = plan_of(record)
    worst = sum(r.max_seconds for r in timeline(plan) if r.max_seconds != float("inf"))
    display = _Display(output, record, expand_steps(plan), worst)
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = 0
    try:
        with display:
            while True:
                events = store.events(record.id, after=seen)
                record = store.get_rollout(record.id)
                state = RolloutState.from_dict(record.snapshot)
                for event in events:
                    display(event, state)
                    seen = event.seq
                phase = Phase(record.phase)
                if phase.terminal:
                    outcome = RunOutcome(record.id, phase, state)
                    _summary(outcome, output)
                    return outcome.exit_code
                if deadline is not None and time.monotonic() >= deadline:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    sys.stderr.write(
        f"stopped watching {record.id} ({record.phase}); it goes on: "
        f"`mlrollout status {record.id} --watch` follows it again\n"
    )
    return 3


def _record(store: StateStore, rollout_id: str | None) -> RolloutRecord:
    from mlrollout.errors import UsageError

    if rollout_id:
        return store.get_rollout(rollout_id)
    newest = store.list_rollouts(limit=1)
    if not newest:
        raise UsageError(f"no rollouts in {store.location}", hint="start one with `mlrollout run`")
    return newest[0]


def list_(
    ctx: typer.Context,
    active: Annotated[bool, typer.Option("--active", help="Only rollouts still going.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 20,
    output: Output = OutputOption,
) -> None:
    """The rollouts in the state store, newest first; a fleet's targets name their fleet, and
    the fleets they belong to follow (`mlrollout status FLEET` shows one as a table)."""
    from datetime import UTC, datetime

    from mlrollout.engine.fleet import find_fleet
    from mlrollout.engine.runner import plan_of

    store = settings(ctx).store()
    records = store.list_rollouts(active_only=active, limit=limit)

    def fleet_of(record: RolloutRecord) -> str | None:
        try:
            member = plan_of(record).fleet
        except Exception:  # a stored plan that no longer loads: `status ID` says why
            return None
        return None if member is None else member.id

    rows = [
        {
            "id": r.id,
            "name": r.name,
            "endpoint": r.endpoint_key,
            "phase": r.phase,
            "created": datetime.fromtimestamp(r.created_at, UTC).strftime("%Y-%m-%d %H:%M"),
            "reason": r.snapshot.get("reason"),
            "fleet": fleet_of(r),
        }
        for r in records
    ]
    fleets = []
    for fleet_id in dict.fromkeys(row["fleet"] for row in rows if row["fleet"]):
        fleet = find_fleet(store, str(fleet_id))
        if fleet is not None:
            fleets.append({"id": fleet.id, "phase": fleet.phase, "targets": len(fleet.targets)})
    if output == Output.json:
        print_json(rows)  # a target's row names its fleet (`status FLEET -o json`: the fleet)
        return
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for column in ("id", "phase", "endpoint", "created", "reason"):
        table.add_column(column)
    for row in rows:  # a target's id is its fleet's id and its index: no column of its own
        table.add_row(
            row["id"], row["phase"], row["endpoint"], row["created"], (row["reason"] or "")[:60]
        )
    if rows:
        console().print(table)
    else:
        sys.stdout.write("no rollouts yet: try `mlrollout demo`\n")
    if fleets:
        sys.stdout.write(
            "\nfleets: "
            + "; ".join(f"{f['id']} ({f['phase']}, {f['targets']} targets)" for f in fleets)
            + "\n"
        )


class ReportFormat(StrEnum):
    md = "md"
    markdown = "markdown"  # the same Markdown, by its full name
    html = "html"
    junit = "junit"
    json = "json"


REPORT_FORMAT_HELP = (
    "md or markdown (fit for a pull-request comment or a CI job summary), html (one "
    "self-contained page with charts, nothing fetched), junit (JUnit XML: a test case per gate "
    "and per executed step) or json (the journal)."
)


def report(
    ctx: typer.Context,
    rollout_id: IdArg,
    output: Annotated[
        ReportFormat,
        typer.Option("--output", "-o", help=REPORT_FORMAT_HELP, show_default=True),
    ] = ReportFormat.md,
    file: Annotated[
        str | None,
        typer.Option(
            "--file",
            help="Write the report to this file (UTF-8) instead of stdout: a CI artifact.",
            metavar="PATH",
        ),
    ] = None,
) -> None:
    """What happened and why: outcome, timeline, gate verdicts, what to do next.

    Formats: md/markdown, html (weights over time and each gate's evidence and interval over
    the looks, as inline SVG), junit (for CI test reports), json (the journal).
    """
    import json

    from mlrollout.cli import fleet_cmds
    from mlrollout.engine.runner import plan_of
    from mlrollout.plan.timeline import expand_steps

    store = settings(ctx).store()
    if fleet_cmds.find(store, rollout_id) is not None:
        from mlrollout.engine.fleet import fleet_status as status_of

        data = status_of(store, rollout_id).to_dict()
        text = (
            json.dumps(data, indent=2) + "\n"
            if output == ReportFormat.json
            else fleet_cmds.fleet_markdown(data)
        )
        _write_report(text, file, f"report of fleet {rollout_id}")
        return
    record = store.get_rollout(rollout_id)
    events = store.events(record.id)
    if output == ReportFormat.json:
        journal = {
            "rollout": record.id,
            "phase": record.phase,
            "events": [{"seq": e.seq, "at": e.at, "kind": e.kind, "data": e.data} for e in events],
        }
        text = json.dumps(journal, indent=2, default=str) + "\n"
    else:
        plan = plan_of(record)
        steps = expand_steps(plan)
        if output == ReportFormat.html:
            from mlrollout.report.html import html_report

            text = html_report(record, events, steps, strategy=plan.strategy.type)
        elif output == ReportFormat.junit:
            from mlrollout.report.junit import junit_report

            text = junit_report(record, events, steps)
        else:
            from mlrollout.report.markdown import markdown_report

            text = markdown_report(record, events, steps)
    _write_report(text, file, f"{output.value} report of {record.id}")


def _write_report(text: str, file: str | None, what: str = "the report") -> None:
    """``report``'s text to stdout, or to ``--file``."""
    if file is None:
        sys.stdout.write(text)
        return
    from mlrollout.errors import UsageError

    try:
        with open(file, "w", encoding="utf-8") as stream:
            stream.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write the report to {file}: {exc.strerror or exc}") from exc
    sys.stderr.write(f"{what} written to {file}\n")


providers_app = typer.Typer(
    cls=ProviderCommandGroup,  # + `providers NAME ...` of each mlrollout.commands plugin
    rich_markup_mode=None,
    no_args_is_help=False,
)


@providers_app.callback(invoke_without_command=True)
def providers(ctx: typer.Context, output: Output = OutputOption) -> None:
    """The installed providers, state backends, metrics sources and provider commands, and what
    each can do. `mlrollout providers NAME --help`: the commands a provider adds."""
    if ctx.invoked_subcommand is not None:
        return
    from mlrollout.cli.provider_cmds import command_rows
    from mlrollout.contracts import runnable_strategies
    from mlrollout.errors import MlrolloutError
    from mlrollout.plugins import ENDPOINTS_GROUP, METRICS_GROUP, STATE_GROUP, provider_spec, refs

    rows: list[dict[str, Any]] = []
    for name, found in sorted(refs(ENDPOINTS_GROUP).items()):
        row: dict[str, Any] = {
            "kind": "endpoint",
            "name": name,
            "from": ", ".join(r.dist for r in found),
        }
        try:
            spec = provider_spec(name)
            row["strategies"] = sorted(runnable_strategies(spec))  # what a rollout can use now
            row["capabilities"] = {k: v for k, v in vars(spec.capabilities).items()}
        except MlrolloutError as exc:
            row["error"] = exc.message
        rows.append(row)
    for kind, group in (("state", STATE_GROUP), ("metrics", METRICS_GROUP)):
        for name, found in sorted(refs(group).items()):
            rows.append({"kind": kind, "name": name, "from": ", ".join(r.dist for r in found)})
    rows += command_rows()
    if output == Output.json:
        print_json(rows)
        return
    for row in rows:
        extra = row.get("error") or ", ".join(row.get("strategies", []))
        if row["kind"] == "commands":
            extra = f"mlrollout providers {row['name']} --help"
        sys.stdout.write(f"{row['kind']:9} {row['name']:10} {row['from']:20} {extra}\n")


def demo(
    ctx: typer.Context,
    output: Output = OutputOption,
) -> int:
    """Two sandbox rollouts in a few seconds: a bad candidate rolled back, a good one promoted."""
    from mlrollout.cli.demo import run_demo

    return run_demo(settings(ctx), output)
