"""``mlrollout providers aws iam-policy`` is the AWS provider's own command (``mlrollout.commands``
entry point ``aws``), mounted by the core without naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def test_the_command_comes_from_the_aws_distribution() -> None:
    from mlrollout_aws import cli

    from mlrollout.plugins import COMMANDS_GROUP, provider_commands, refs

    [ref] = refs(COMMANDS_GROUP)["aws"]
    assert ref.dist == "mlrollout-aws" and ref.value == "mlrollout_aws.cli:app"
    assert provider_commands("aws") is cli.app


def test_state_after_the_command_names_the_state_bucket(capsys: pytest.CaptureFixture[str]) -> None:
    from mlrollout.cli.app import main

    plan = str(REPO / "plans" / "sagemaker-canary.yaml")
    with pytest.raises(SystemExit) as exited:
        main(["providers", "aws", "iam-policy", plan, "--state", "s3://team-rollouts/prod"])
    assert exited.value.code == 0
    policy = json.loads(capsys.readouterr().out)
    objects = next(s for s in policy["Statement"] if s["Sid"] == "StateObjects")
    assert objects["Resource"] == "arn:aws:s3:::team-rollouts/prod/*"
