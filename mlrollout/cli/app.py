"""The ``mlrollout`` command line. Heavy modules (rich, pydantic models, providers) load inside
the commands that need them, so ``--help`` stays fast and never imports a cloud SDK."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from mlrollout.cli import impact_cmds, plan_cmds, rollout_cmds
from mlrollout.cli.common import (
    DEBUG_HELP,
    DEFAULT_STATE,
    STATE_HELP,
    Settings,
    accept_global_options_after_commands,
    publish_api_budgets,
    stdout_to_devnull,
)

app = typer.Typer(
    name="mlrollout",
    help=(
        "Staged, statistically gated, resumable rollouts for ML model endpoints "
        "(SageMaker, Vertex AI, Azure ML, and a local sandbox).\n\n"
        "Start with `mlrollout demo`, then `mlrollout plan preview plans/local-canary-good.yaml`."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rendering it through rich.markdown doubles --help's time
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(plan_cmds.app, name="plan")
rollout_cmds.register(app)
impact_cmds.register(app)
accept_global_options_after_commands(app)  # `mlrollout run PLAN --state X` as well


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"mlrollout {version('mlrollout')}")
        except PackageNotFoundError:
            typer.echo("mlrollout (not installed)")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    state: Annotated[
        str,
        typer.Option(
            "--state",
            envvar="MLROLLOUT_STATE",
            help=f"{STATE_HELP} Also accepted after the command.",
        ),
    ] = DEFAULT_STATE,
    debug: Annotated[bool, typer.Option("--debug", help=DEBUG_HELP)] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    ctx.obj = Settings(state=state, debug=debug)


def _quiet_sdk_loggers(debug: bool) -> None:
    """The cloud SDKs log through Python's logging, which prints WARNING and up to stderr when
    nothing is configured: azure-identity alone writes ~15 lines about its credential chain before
    mlrollout's one-line error. mlrollout reports errors itself, so their loggers (and their HTTP
    stacks') print nothing unless ``--debug``, which lets their warnings through."""
    import logging

    level = logging.WARNING if debug else logging.CRITICAL + 1
    for name in ("azure", "msal", "botocore", "boto3", "s3transfer", "urllib3", "google", "grpc"):
        logging.getLogger(name).setLevel(level)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, map errors to one clear line and the documented exit codes."""
    from mlrollout.errors import ExitCode, MlrolloutError, PlanError

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or bool(os.environ.get("MLROLLOUT_DEBUG"))
    _quiet_sdk_loggers(debug)
    try:
        result = app(args=args, prog_name="mlrollout", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except PlanError as exc:
        for issue in exc.issues:
            sys.stderr.write(f"{issue}\n")
        count = len(exc.issues)
        sys.stderr.write(f"{count} problem{'s' if count != 1 else ''} found\n")
        code = exc.exit_code
    except MlrolloutError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"error: {exc.message}\n")
        if exc.hint:
            sys.stderr.write(f"hint: {exc.hint}\n")
        code = exc.exit_code
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        sys.stderr.write("aborted\n")
        code = ExitCode.USAGE
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        code = ExitCode.WAITING
    except Exception as exc:
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # a usage error from the parser
            exc.show()
            raise SystemExit(ExitCode.USAGE) from None
        if debug:
            raise
        sys.stderr.write(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "hint: this is a bug in mlrollout; run again with --debug for the traceback "
            "and report it\n"
        )
        code = ExitCode.BUG
    publish_api_budgets()
    try:
        sys.stdout.flush()
    except OSError:  # the reader of stdout has gone: nothing left to say there
        stdout_to_devnull()
    raise SystemExit(code)
