"""Shared pieces of the CLI: global options, output, the state store, error display."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from mlrollout.state.base import StateStore

DEFAULT_STATE = ".mlrollout"


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
        return self._store  # type: ignore[no-any-return]


def settings(ctx: typer.Context) -> Settings:
    obj = ctx.find_root().obj
    if not isinstance(obj, Settings):
        obj = Settings()
        ctx.find_root().obj = obj
    return obj


def open_store(location: str) -> StateStore:
    """``.mlrollout`` or ``path/to/state.db`` → SQLite; ``SCHEME://...`` → that state plugin."""
    from mlrollout.plugins import state_factory

    if "://" in location:
        scheme = location.split("://", 1)[0]
        factory = state_factory(scheme)
    else:
        factory = state_factory("sqlite")
    store: StateStore = factory(location)
    return store


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
