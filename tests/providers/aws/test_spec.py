"""The ``sagemaker`` spec: loaded through its entry point without boto3, platform limits checked
by ``plan validate`` without network, the example plans valid, the IAM policy command."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlrollout.errors import PlanError
from mlrollout.plan.loader import parse_plan
from mlrollout.plugins import provider_spec

REPO = Path(__file__).resolve().parents[3]

BASE = """\
version: 1
name: t
target: {{provider: sagemaker, endpoint: churn, region: us-east-1}}
candidate: {{name: v2, model: churn-v2, instance_type: ml.m5.large}}
strategy: {strategy}
analysis:
  interval: {interval}
  gates:
{gates}
"""
GATE = "    - {name: errors, metric: error_rate, max: 5%}\n"
CANARY = "{type: canary, steps: [{weight: 10}, {analyze: 10m}, {weight: 100}]}"


def problems(strategy: str = CANARY, interval: str = "60s", gates: str = GATE) -> list[str]:
    text = BASE.format(strategy=strategy, interval=interval, gates=gates.rstrip("\n"))
    try:
        parse_plan(text, "plan.yaml")
    except PlanError as exc:
        return [str(issue) for issue in exc.issues]
    return []


LIGHT = textwrap.dedent(
    """
    import sys
    from mlrollout.cli.app import main
    try:
        main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore", "moto"))
    assert not leaked, leaked
    sys.exit(code)
    """
)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["plan", "validate", "{plan}"],
        ["plan", "preview", "{plan}"],
        ["plan", "preview", "--output", "json", "{plan}"],
        ["providers"],
        ["providers", "aws", "iam-policy", "{plan}"],
    ],
    ids=lambda a: " ".join(a).replace("{plan}", "PLAN"),
)
def test_light_commands_on_a_sagemaker_plan_import_no_boto3(args):
    plan = str(REPO / "plans" / "sagemaker-canary.yaml")
    argv = [a.replace("{plan}", plan) for a in args]
    proc = subprocess.run(
        [sys.executable, "-c", LIGHT, *argv], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["plan", "validate", "{plan}"],
        ["plan", "preview", "{plan}"],
        ["providers", "aws", "iam-policy", "{plan}"],
    ],
    ids=lambda a: " ".join(a).replace("{plan}", "PLAN"),
)
def test_light_commands_on_a_native_plan_import_no_boto3(args):
    plan = str(REPO / "plans" / "sagemaker-native-blue-green.yaml")
    argv = [a.replace("{plan}", plan) for a in args]
    proc = subprocess.run(
        [sys.executable, "-c", LIGHT, *argv], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "name",
    [
        "sagemaker-canary.yaml",
        "sagemaker-linear.yaml",
        "sagemaker-blue-green.yaml",
        "sagemaker-native-blue-green.yaml",
        "sagemaker-ab-test.yaml",
    ],
)
def test_example_plans_are_valid(name):
    loaded = parse_plan((REPO / "plans" / name).read_text(), name)
    assert loaded.plan.target.provider == "sagemaker"


def test_a_valid_plan_has_no_problem():
    assert problems() == []


@pytest.mark.parametrize(
    ("strategy", "fragment"),
    [
        ("{type: canary, steps: [{weight: 60}, {analyze: 10m}, {weight: 100}]}", "at most 50%"),
        ("{type: linear, step: 5, every: 10m}", "linear step is 10-50%"),
        ("{type: linear, step: 60, every: 10m}", "linear step is 10-50%"),
    ],
)
def test_platform_limits_on_traffic_steps(strategy, fragment):
    found = problems(strategy=strategy)
    assert any(fragment in p for p in found), found


def test_a_first_canary_at_50_percent_and_linear_steps_at_the_bounds_are_fine():
    assert problems("{type: canary, steps: [{weight: 50}, {analyze: 10m}, {weight: 100}]}") == []
    assert problems("{type: linear, step: 10, every: 10m}") == []
    assert problems("{type: linear, step: 50, every: 10m}") == []


def test_at_most_ten_alarms():
    gates = "".join(f"    - {{name: g{i}, metric: error_rate, max: 5%}}\n" for i in range(11))
    found = problems(gates=gates)
    assert any("at most 10 alarms" in p for p in found), found


def test_the_interval_must_be_a_cloudwatch_period():
    assert any("CloudWatch periods" in p for p in problems(interval="45s"))
    assert problems(interval="30s") == []
    assert problems(interval="120s") == []


def test_sagemaker_needs_model_instance_type_and_region_and_valid_names():
    text = """\
version: 1
name: t
target: {provider: sagemaker, endpoint: churn_scoring}
candidate: {name: v_2}
strategy: {type: canary, steps: [{weight: 10}, {analyze: 10m}, {weight: 100}]}
"""
    with pytest.raises(PlanError) as info:
        parse_plan(text, "plan.yaml")
    text_issues = "\n".join(str(i) for i in info.value.issues)
    for fragment in (
        "needs target.region",
        "candidate's model",
        "instance_type",
        "not an endpoint name",
        "not a variant name",
    ):
        assert fragment in text_issues


def test_custom_queries_are_checked():
    gates = (
        "    - name: c\n      metric: custom\n      direction: decrease\n      min: 1\n"
        "      query: {namespace: App, stat: Median, color: red}\n"
    )
    found = "\n".join(problems(gates=gates))
    assert "needs metric" in found
    assert "not a CloudWatch statistic" in found
    assert "unknown key 'color'" in found


def test_describe_calls_name_the_sagemaker_and_cloudwatch_calls():
    plan = parse_plan((REPO / "plans" / "sagemaker-canary.yaml").read_text(), "p").plan
    calls = provider_spec("sagemaker").describe_calls(plan)
    assert calls["set_traffic"][0] == "SageMaker.UpdateEndpointWeightsAndCapacities"
    assert len(calls["metrics"]) == 1 and "GetMetricData" in calls["metrics"][0]
    assert [c.split()[0] for c in calls["owner"]] == [
        "SageMaker.ListTags",
        "SageMaker.AddTags",
        "SageMaker.DeleteTags",
    ]


def test_iam_policy_command(tmp_path, capsys):
    from mlrollout.cli.app import main

    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "--state",
                "s3://team-rollouts/prod",
                "providers",
                "aws",
                "iam-policy",
                str(REPO / "plans" / "sagemaker-canary.yaml"),
            ]
        )
    assert exit_.value.code == 0
    policy = json.loads(capsys.readouterr().out)
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert {
        "sagemaker:UpdateEndpoint",
        "sagemaker:UpdateEndpointWeightsAndCapacities",
        "sagemaker:CreateEndpointConfig",
        "sagemaker:DeleteEndpointConfig",
        "cloudwatch:GetMetricData",
        "s3:PutObject",
        "s3:ListBucket",
    } <= actions
    assert not any(a.endswith(":*") or a == "*" for a in actions)
    delete = next(s for s in policy["Statement"] if "sagemaker:DeleteEndpointConfig" in s["Action"])
    assert delete["Resource"].endswith(":endpoint-config/churn-scoring-mlr-*")
    assert delete["Condition"] == {"StringEquals": {"aws:ResourceTag/mlrollout:managed": "true"}}
    # The ownership mark: tag writes on the endpoint itself, only with mlrollout's own keys.
    owner = next(s for s in policy["Statement"] if s["Sid"] == "MarkEndpointOwner")
    assert owner["Action"] == ["sagemaker:AddTags", "sagemaker:DeleteTags"]
    assert owner["Resource"] == "arn:aws:sagemaker:us-east-1:*:endpoint/churn-scoring"
    assert owner["Condition"] == {
        "ForAllValues:StringEquals": {
            "aws:TagKeys": ["mlrollout-rollout", "mlrollout-holder", "mlrollout-expires"]
        }
    }
    read = next(s for s in policy["Statement"] if s["Sid"] == "ReadEndpoint")
    assert "sagemaker:ListTags" in read["Action"]
    assert "arn:aws:sagemaker:us-east-1:*:endpoint/churn-scoring" in read["Resource"]
    objects = next(s for s in policy["Statement"] if "s3:PutObject" in s["Action"])
    assert objects["Resource"] == "arn:aws:s3:::team-rollouts/prod/*"


def test_iam_policy_refuses_another_provider(capsys):
    from mlrollout.cli.app import main

    with pytest.raises(SystemExit) as exit_:
        main(["providers", "aws", "iam-policy", str(REPO / "plans" / "local-linear.yaml")])
    assert exit_.value.code == 2
    assert "not sagemaker" in capsys.readouterr().err


# ------------------------------------------------------ native blue/green (SageMaker's own)

NATIVE = "{type: blue_green, native: true, %s}"
CANARY_NATIVE = NATIVE % "preview: 10, pre_promotion: 5m, keep_previous: 10m"


def test_a_native_canary_linear_and_all_at_once_are_valid():
    assert problems(CANARY_NATIVE) == []
    assert problems(NATIVE % "switch: {step: 10, every: 3m}, keep_previous: 1h") == []
    assert problems(NATIVE % "switch: {step: 50, every: 3m}") == []
    assert problems(NATIVE % "post_promotion: 10m, keep_previous: 30m") == []
    assert problems(NATIVE % "preview: 50, pre_promotion: 1h") == []


@pytest.mark.parametrize(
    ("strategy", "path", "fragment"),
    [
        ("preview: 60, pre_promotion: 5m", "strategy.preview", "at most 50%"),
        ("preview: 12.5, pre_promotion: 5m", "strategy.preview", "whole percent"),
        ("switch: {step: 5, every: 3m}", "strategy.switch.step", "10-50%"),
        ("switch: {step: 60, every: 3m}", "strategy.switch.step", "10-50%"),
        (
            "preview: 10, pre_promotion: 5m, switch: {step: 20, every: 3m}",
            "strategy.switch",
            "not both",
        ),
        ("preview: 10", "strategy.pre_promotion", "needs pre_promotion"),
        ("preview: 10, pre_promotion: 2h", "strategy.pre_promotion", "at most 3600s"),
        ("switch: {step: 20, every: 2h}", "strategy.switch.every", "at most 3600s"),
        ("post_promotion: 90m", "strategy.post_promotion", "at most 3600s"),
        ("post_promotion: 5m, keep_previous: 2h", "strategy.keep_previous", "at most 3600s"),
        (
            "preview: 10, pre_promotion: 5m, post_promotion: 20m",
            "strategy.post_promotion",
            "same WaitIntervalInSeconds",
        ),
        (
            "switch: {step: 10, every: 1h}, keep_previous: 1h",
            "strategy",
            "MaximumExecutionTimeoutInSeconds",
        ),
    ],
)
def test_native_limits_name_the_key(strategy, path, fragment):
    found = problems(NATIVE % strategy)
    assert any(f"{path}:" in p and fragment in p for p in found), found


def test_native_refuses_vs_baseline_gates_and_says_why():
    gates = GATE + "    - {name: p99, metric: latency_p99, vs_baseline: {max_increase: 10%}}\n"
    found = problems(CANARY_NATIVE, gates=gates)
    [problem] = [p for p in found if "analysis.gates[1].vs_baseline:" in p]
    assert "one variant's metrics for both fleets" in problem
    assert problems(CANARY, gates=gates) == []  # fine when mlrollout drives


def test_native_needs_at_most_ten_alarms_with_mlrollouts_own():
    def gates(n: int) -> str:
        return "".join(f"    - {{name: g{i}, metric: error_rate, max: 5%}}\n" for i in range(n))

    assert problems(CANARY_NATIVE, gates=gates(9)) == []  # 9 + the force-rollback alarm
    found = problems(CANARY_NATIVE, gates=gates(10))
    assert any("analysis.gates:" in p and "at most 10" in p for p in found), found
    # dry-run and requests gates make no alarm
    extra = (
        "    - {name: n, metric: requests, min: 10}\n"
        "    - {name: d, metric: error_rate, max: 1%, dry_run: true}\n"
    )
    assert problems(CANARY_NATIVE, gates=gates(9) + extra) == []


def test_native_describe_calls_and_the_deployment_config():
    from mlrollout_aws.deployment import deployment_config

    plan = parse_plan((REPO / "plans" / "sagemaker-native-blue-green.yaml").read_text(), "p").plan
    calls = provider_spec("sagemaker").describe_calls(plan)
    assert any("UpdateEndpoint with DeploymentConfig (CANARY" in c for c in calls["start_native"])
    assert "SetAlarmState" in calls["roll_back_native"][0]
    assert any("DeleteAlarms" in c for c in calls["end_native"])
    config = deployment_config(plan, ["a", "b"])
    assert config["BlueGreenUpdatePolicy"] == {
        "TrafficRoutingConfiguration": {
            "Type": "CANARY",
            "WaitIntervalInSeconds": 600,
            "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10},
        },
        "TerminationWaitInSeconds": 1800,
        "MaximumExecutionTimeoutInSeconds": 4800,  # 30m to provision + 2 bakes + keep_previous
    }
    assert config["AutoRollbackConfiguration"] == {
        "Alarms": [{"AlarmName": "a"}, {"AlarmName": "b"}]
    }


def test_native_iam_policy_adds_the_alarm_actions_on_mlrollouts_alarms_only(capsys):
    from mlrollout.cli.app import main

    plan = str(REPO / "plans" / "sagemaker-native-blue-green.yaml")
    with pytest.raises(SystemExit) as exit_:
        main(["providers", "aws", "iam-policy", plan])
    assert exit_.value.code == 0
    policy = json.loads(capsys.readouterr().out)
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert set(by_sid["MlrolloutAlarms"]["Action"]) == {
        "cloudwatch:PutMetricAlarm",
        "cloudwatch:SetAlarmState",
        "cloudwatch:TagResource",
        "cloudwatch:ListTagsForResource",
    }
    assert (
        by_sid["MlrolloutAlarms"]["Resource"] == "arn:aws:cloudwatch:us-east-1:*:alarm:mlrollout-*"
    )
    delete = by_sid["DeleteOnlyMlrolloutAlarms"]
    assert delete["Action"] == ["cloudwatch:DeleteAlarms"]
    assert delete["Condition"] == {"StringLike": {"aws:ResourceTag/mlrollout-rollout": "*"}}
    assert by_sid["ReadAlarms"]["Action"] == ["cloudwatch:DescribeAlarms"]
    # a plan that is not native asks for no alarm action
    main_plan = str(REPO / "plans" / "sagemaker-blue-green.yaml")
    with pytest.raises(SystemExit):
        main(["providers", "aws", "iam-policy", main_plan])
    other = json.loads(capsys.readouterr().out)
    assert not any("Alarm" in a for s in other["Statement"] for a in s["Action"])


def test_the_preview_of_a_native_plan_shows_each_phases_calls():
    from mlrollout.plan.preview import build_preview

    loaded = parse_plan((REPO / "plans" / "sagemaker-native-blue-green.yaml").read_text(), "p.yaml")
    preview = build_preview(loaded)
    [step] = preview["steps"]
    assert step["kind"] == "native" and step["gates"]
    assert any("PendingDeploymentSummary" in c for c in step["api_calls"])
    assert any("GetMetricData" in c for c in step["api_calls"])
    before = " ".join(preview["before"]["api_calls"])
    assert "UpdateEndpoint with DeploymentConfig" in before and "PutMetricAlarm" in before
    assert preview["before"]["api_calls"].count("SageMaker.DescribeEndpoint") == 1
    assert "SetAlarmState" in " ".join(preview["rollback"]["api_calls"])
    assert "platform rolls back" in preview["rollback"]["how"]
    assert "DeleteAlarms" in " ".join(preview["promotion"]["api_calls"])
    assert preview["promotion"]["step"].startswith("promote: the platform has retired blue")
