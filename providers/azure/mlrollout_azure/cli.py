"""``mlrollout providers azure ...``: the Azure provider's commands, mounted by the core through the
``mlrollout.commands`` entry point ``azure = "mlrollout_azure.cli:app"``. No azure library here:
the commands work offline, and the core loads this module only when one of them runs."""

from __future__ import annotations

import typer

from mlrollout.cli.provider_cmds import PlanArg, load_provider_plan, provider_app

app = provider_app("Azure", "mlrollout-azure")


@app.command("role")
def role_command(ctx: typer.Context, plan_file: PlanArg) -> None:
    """Print the least-privilege custom role definition (JSON, for `az role definition create
    --role-definition FILE`) that running PLAN needs: Azure ML and Azure Monitor actions,
    assignable at the plan's workspace; with an az:// --state, the state store's too. No
    network."""
    from mlrollout.cli.common import print_json, settings
    from mlrollout_azure.roles import role_definition

    plan = load_provider_plan(plan_file, "azureml", "the Azure role definition")
    print_json(role_definition(plan, state=settings(ctx).state))
