"""``mlrollout providers gcp ...``: the GCP provider's commands, mounted by the core through the
``mlrollout.commands`` entry point ``gcp = "mlrollout_gcp.cli:app"``. No Google library here:
the commands work offline, and the core loads this module only when one of them runs."""

from __future__ import annotations

import typer

from mlrollout.cli.provider_cmds import PlanArg, load_provider_plan, provider_app

app = provider_app("GCP", "mlrollout-gcp")


@app.command("role")
def role_command(ctx: typer.Context, plan_file: PlanArg) -> None:
    """Print the least-privilege custom role (JSON, for `gcloud iam roles create ID --project P
    --file FILE`) that running PLAN needs: Vertex AI and Cloud Monitoring permissions. With a
    gs:// --state, the state store's permissions too. No network."""
    from mlrollout.cli.common import print_json, settings
    from mlrollout_gcp.roles import custom_role

    plan = load_provider_plan(plan_file, "vertex", "the GCP custom role")
    print_json(custom_role(plan, state=settings(ctx).state))
