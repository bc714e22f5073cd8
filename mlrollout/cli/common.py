"""Shared pieces of the CLI: global options, output, the state store, error display."""

from __future__ import annotations

import functools
import inspect
import os
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mlrollout.state.open import open_store

if TYPE_CHECKING:
    from rich.console import Console

    from mlrollout.state.base import StateStore

DEFAULT_STATE = ".mlrollout"
STATE_HELP = "Where rollouts are recorded: a directory (SQLite inside) or a backend URL."
DEBUG_HELP = "Show tracebacks on errors."

#: Commands that open the state store (or name it): they take ``--state`` after their name too.
STORE_COMMANDS = frozenset(
    {"run", "resume", "status", "list", "promote", "abort", "reconcile", "report", "demo"}
    | {"impact"}
    | {"iam-policy"}  # `providers aws iam-policy`: the state bucket's permissions
)


API_SHARE_HELP = (
    "The part of each platform API limit (SageMaker, CloudWatch, Vertex AI, Resource Manager...) "
    "this process may use, in percent: the rest stays for the account's other users. "
    "[env var: MLROLLOUT_API_SHARE; default: 50]"
)
#: ``--api-share`` (in ``Annotated[str | None, ApiShareOption] = None``).
ApiShareOption = typer.Option(
    "--api-share", metavar="PERCENT", show_default=False, help=API_SHARE_HELP
)


def apply_api_share(value: str | None) -> None:
    """``--api-share`` given: every API budget of the process uses that share
    (:mod:`mlrollout.budget`); a value that is not a percent in 1..100 is a usage error."""
    if value is not None:
        from mlrollout import budget

        budget.configure(share=budget.parse_share(value, where="--api-share"))


class Output(StrEnum):
    text = "text"
    json = "json"


OutputOption = typer.Option(
    Output.text, "--output", "-o", help="text for people, json for machines.", show_default=True
)


@dataclass
class Settings:
    state: str = DEFAULT_STATE
    debug: bool = False
    _store: Any = None

    def store(self) -> StateStore:
        if self._store is None:
            self._store = open_store(self.state)
            OPENED.append(self._store)
        return self._store  # type: ignore[no-any-return]


#: The state stores this command opened: at its end the process's API budget figures go to them
#: (:func:`publish_api_budgets`).
OPENED: list[Any] = []


def publish_api_budgets() -> None:
    """What this process's API budgets did, to every store it opened (``status FLEET`` shows
    it); never an error of the command's."""
    import time

    from mlrollout import budget

    for store in OPENED:
        budget.publish_quietly(store, now=time.time(), force=True)
    OPENED.clear()


def settings(ctx: typer.Context) -> Settings:
    obj = ctx.find_root().obj
    if not isinstance(obj, Settings):
        obj = Settings()
        ctx.find_root().obj = obj
    return obj


# ---------------------------------------------------- global options after the command's name


def _state_after(ctx: typer.Context, value: str | None) -> str | None:
    if value is not None:  # given after the command: it wins over the root's (and the env's)
        found = settings(ctx)
        found.state = value
        found._store = None
    return value


def _debug_after(ctx: typer.Context, value: bool) -> bool:
    if value:  # main() has seen it in argv already; the settings say so too
        settings(ctx).debug = True
    return value


_TRAILING = {
    "trailing_state": inspect.Parameter(
        "trailing_state",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            str | None,
            typer.Option(
                "--state",
                callback=_state_after,
                show_default=False,
                help=f"{STATE_HELP} [env var: MLROLLOUT_STATE; default: {DEFAULT_STATE}]",
            ),
        ],
    ),
    "trailing_debug": inspect.Parameter(
        "trailing_debug",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[bool, typer.Option("--debug", callback=_debug_after, help=DEBUG_HELP)],
    ),
}


def _with_trailing_options(callback: Callable[..., Any], *, store: bool) -> Callable[..., Any]:
    """``callback`` with ``--debug`` (and, for a command of the store, ``--state``) added to the
    parameters typer reads from its signature; the wrapper drops them before calling it."""
    extra = [_TRAILING["trailing_debug"]]
    if store:
        extra.insert(0, _TRAILING["trailing_state"])
    hints = typing.get_type_hints(callback, include_extras=True)
    signature = inspect.signature(callback)
    assert not set(signature.parameters) & set(_TRAILING), callback
    params = [
        p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()
    ]

    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for name in _TRAILING:
            kwargs.pop(name, None)
        return callback(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*params, *extra])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**hints, **{p.name: p.annotation for p in extra}}
    return wrapper


def accept_global_options_after_commands(app: typer.Typer) -> None:
    """Let users type the root's options where they type them: ``mlrollout run PLAN --state X``,
    ``mlrollout status --state X``, ``mlrollout plan validate F --debug``. ``--state`` (on the
    commands of :data:`STORE_COMMANDS`) given after the command overrides the root's and
    ``MLROLLOUT_STATE``. Walks every command and sub-group of ``app`` (a group's own callback,
    such as ``providers``, takes ``--debug``); call it once, after they are all registered."""
    for command in app.registered_commands:
        assert command.callback is not None
        name = command.name or command.callback.__name__.lower().replace("_", "-")
        command.callback = _with_trailing_options(command.callback, store=name in STORE_COMMANDS)
    for group in app.registered_groups:
        sub = group.typer_instance
        if sub is None:
            continue
        if sub.registered_callback is not None and sub.registered_callback.callback is not None:
            sub.registered_callback.callback = _with_trailing_options(
                sub.registered_callback.callback, store=False
            )
        accept_global_options_after_commands(sub)


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Off a terminal (CI logs, pipes) rich would wrap at 80 columns: give lines room instead.
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty() and not os.environ.get("CI")


def print_json(data: Any) -> None:
    import json

    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def stdout_to_devnull() -> None:
    """Point stdout's descriptor at /dev/null (its reader has gone), so that later writes and
    Python's own flush at exit cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
