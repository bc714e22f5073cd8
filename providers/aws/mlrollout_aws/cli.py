"""``mlrollout providers aws ...``: the AWS provider's commands, mounted by the core through the
``mlrollout.commands`` entry point ``aws = "mlrollout_aws.cli:app"``. No boto3 here: the
commands work offline, and the core loads this module only when one of them runs."""

from __future__ import annotations

import typer

from mlrollout.cli.provider_cmds import PlanArg, load_provider_plan, provider_app

app = provider_app("AWS", "mlrollout-aws")


@app.command("iam-policy")
def iam_policy_command(ctx: typer.Context, plan_file: PlanArg) -> None:
    """Print the least-privilege IAM policy (JSON) that running PLAN needs; with an s3:// --state,
    the state bucket's permissions too. No network."""
    from mlrollout.cli.common import print_json, settings
    from mlrollout_aws.iam import iam_policy

    plan = load_provider_plan(plan_file, "sagemaker", "the AWS IAM policy")
    print_json(iam_policy(plan, state=settings(ctx).state))
