"""``mlrollout providers azure ...``: the GCP provider's commands, mounted by the core through the
``mlrollout.commands`` entry point ``azure = "mlrollout_azure.cli:app"``. No azure library here:
the commands work offline, and the core loads this module only when one of them runs."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    help="Tools of the Azure provider (mlrollout-azure).",
)

PlanArg = Annotated[str, typer.Argument(help="The rollout plan (YAML).", metavar="PLAN")]


@app.command("role")
def role_command(plan_file: PlanArg) -> None:
    """Print the least-privilege custom role definition (JSON, for `az role definition create
    --role-definition FILE`) that running PLAN needs: Azure ML and Azure Monitor actions,
    assignable at the plan's workspace. No network."""
    from mlrollout.cli.common import print_json
    from mlrollout.cli.provider_cmds import load_provider_plan
    from mlrollout_azure.roles import role_definition

    plan = load_provider_plan(plan_file, "azureml", "the Azure role definition")
    print_json(role_definition(plan))
