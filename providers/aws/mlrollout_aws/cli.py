"""``mlrollout providers aws ...``: the AWS provider's commands, mounted by the core through the
``mlrollout.commands`` entry point ``aws = "mlrollout_aws.cli:app"``. No boto3 here: the
commands work offline, and the core loads this module only when one of them runs."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    help="Tools of the AWS provider (mlrollout-aws).",
)

PlanArg = Annotated[str, typer.Argument(help="The rollout plan (YAML).", metavar="PLAN")]


@app.command("iam-policy")
def iam_policy_command(ctx: typer.Context, plan_file: PlanArg) -> None:
    """Print the least-privilege IAM policy (JSON) that running PLAN needs; with an s3:// --state,
    the state bucket's permissions too. No network."""
    from mlrollout.cli.common import print_json, settings
    from mlrollout.cli.provider_cmds import load_provider_plan
    from mlrollout_aws.iam import iam_policy

    plan = load_provider_plan(plan_file, "sagemaker", "the AWS IAM policy")
    print_json(iam_policy(plan, state=settings(ctx).state))
