"""``mlrollout providers NAME ...``: command groups that providers add through the
``mlrollout.commands`` entry point group (``aws = "mlrollout_aws.cli:app"``).

The core names no provider's commands and imports none of them for ``mlrollout --help``: the
``providers`` group lists the registered names from the distributions' metadata and loads a
plugin's group (a ``typer.Typer``) only when it runs or its help is shown.
Its commands take the global options after their names, as the core's do (``--debug``, and
``--state`` for a command named in :data:`~mlrollout.cli.common.STORE_COMMANDS`); they reach the
settings with :func:`mlrollout.cli.common.settings`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from mlrollout.plan.model import Plan


def load_provider_group(name: str) -> TyperGroup:
    """The command group of the plugin registered as ``name`` in ``mlrollout.commands``."""
    from mlrollout.plugins import provider_commands

    found: typer.Typer = provider_commands(name)
    if not getattr(found, "_mlrollout_options_added", False):  # once per plugin object
        from mlrollout.cli.common import accept_global_options_after_commands

        accept_global_options_after_commands(found)
        found._mlrollout_options_added = True  # type: ignore[attr-defined]
    group = typer.main.get_group(found)  # a group even with one command
    group.name = name
    return group


class ProviderCommandGroup(TyperGroup):
    """The ``providers`` group: its own commands, plus one sub-group per ``mlrollout.commands``
    plugin, loaded on demand. One of our clouds whose distribution is not installed is named
    with the command that installs it (exit 6), an unknown name is a usage error (exit 2)."""

    def list_commands(self, ctx: Any) -> list[str]:
        from mlrollout.plugins import COMMANDS_GROUP, names

        return sorted(set(self.commands) | set(names(COMMANDS_GROUP)))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        from mlrollout.errors import ProviderUnavailable
        from mlrollout.plugins import COMMANDS_GROUP, KNOWN_PROVIDERS, install_command, names

        if cmd_name in names(COMMANDS_GROUP):
            command = load_provider_group(cmd_name)
            self.commands[cmd_name] = command
            return command
        if cmd_name in set(KNOWN_PROVIDERS.values()):
            raise ProviderUnavailable(
                f"the {cmd_name} provider (mlrollout-{cmd_name}) is not installed",
                hint=f"install it: {install_command(cmd_name)}",
            )
        return None

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """As click's, but a plugin that does not load is shown as such, not a crash."""
        from mlrollout.errors import MlrolloutError

        rows: list[tuple[str, str]] = []
        for name in self.list_commands(ctx):
            try:
                command = self.get_command(ctx, name)
            except MlrolloutError as exc:
                rows.append((name, f"(unavailable: {exc.message})"))
                continue
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def command_rows() -> list[dict[str, Any]]:
    """``mlrollout providers``'s rows for the registered command groups (nothing is imported)."""
    from mlrollout.plugins import COMMANDS_GROUP, refs

    return [
        {"kind": "commands", "name": name, "from": ", ".join(r.dist for r in found)}
        for name, found in sorted(refs(COMMANDS_GROUP).items())
    ]


#: The PLAN argument of a provider's command.
PlanArg = Annotated[str, typer.Argument(help="The rollout plan (YAML).", metavar="PLAN")]


def provider_app(cloud: str, distribution: str) -> typer.Typer:
    """The command group a provider's ``mlrollout.commands`` entry point names."""
    return typer.Typer(
        rich_markup_mode=None,
        no_args_is_help=True,
        help=f"Tools of the {cloud} provider ({distribution}).",
    )


def load_provider_plan(plan_file: str, provider: str, what: str) -> Plan:
    """The plan in ``plan_file`` (validated), for a provider command that only applies to
    ``provider``'s plans (``what`` names what it prints): another provider's is a usage error."""
    from mlrollout.errors import UsageError
    from mlrollout.plan.loader import load_plan

    plan = load_plan(plan_file).plan
    if plan.target.provider != provider:
        raise UsageError(
            f"{plan_file} targets provider {plan.target.provider!r}, not {provider}",
            hint=f"{what} only applies to {provider} plans",
        )
    return plan
