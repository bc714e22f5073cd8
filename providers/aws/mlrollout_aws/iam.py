"""The least-privilege IAM policy a plan needs (``mlrollout providers aws iam-policy PLAN``).

No network and no boto3: the account is not known offline, so ARNs use ``*`` for it. SageMaker
ARNs name resources in lower case.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from mlrollout.contracts import OWNER_KEYS, OWNER_ROLLOUT_KEY
from mlrollout.plan.model import QUALITY_METRICS, BlueGreenStrategy, Plan
from mlrollout_aws import naming
from mlrollout_aws.spec import capture_uri, needs_capture


def iam_policy(plan: Plan, state: str | None = None) -> dict[str, Any]:
    """The policy document for running ``plan``; with ``state`` an ``s3://`` URL, its bucket too."""
    region = str(plan.target.setting("region") or "*")
    endpoint = plan.target.endpoint.lower()
    arn = f"arn:aws:sagemaker:{region}:*"
    managed = f"{arn}:endpoint-config/{naming.config_prefix(endpoint)}*"
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ReadEndpoint",
            "Effect": "Allow",
            "Action": [
                "sagemaker:DescribeEndpoint",
                "sagemaker:DescribeEndpointConfig",
                "sagemaker:ListTags",
            ],
            "Resource": [f"{arn}:endpoint/{endpoint}", f"{arn}:endpoint-config/*"],
        },
        {
            "Sid": "ListEndpointConfigs",
            "Effect": "Allow",
            "Action": ["sagemaker:ListEndpointConfigs"],
            "Resource": "*",
        },
        {
            "Sid": "CheckCandidateModel",
            "Effect": "Allow",
            "Action": ["sagemaker:DescribeModel"],
            "Resource": f"{arn}:model/{(plan.candidate.model or '*').lower()}",
        },
        {
            "Sid": "CreateMlrolloutEndpointConfigs",
            "Effect": "Allow",
            "Action": ["sagemaker:CreateEndpointConfig", "sagemaker:AddTags"],
            "Resource": managed,
        },
        {
            # The ownership mark on the endpoint (read with ListTags above): only its own keys.
            "Sid": "MarkEndpointOwner",
            "Effect": "Allow",
            "Action": ["sagemaker:AddTags", "sagemaker:DeleteTags"],
            "Resource": f"{arn}:endpoint/{endpoint}",
            "Condition": {"ForAllValues:StringEquals": {"aws:TagKeys": list(OWNER_KEYS)}},
        },
        {
            "Sid": "ShiftTraffic",
            "Effect": "Allow",
            "Action": ["sagemaker:UpdateEndpoint", "sagemaker:UpdateEndpointWeightsAndCapacities"],
            "Resource": [f"{arn}:endpoint/{endpoint}", f"{arn}:endpoint-config/*"],
        },
        {
            "Sid": "DeleteOnlyMlrolloutEndpointConfigs",
            "Effect": "Allow",
            "Action": ["sagemaker:DeleteEndpointConfig"],
            "Resource": managed,
            "Condition": {"StringEquals": {f"aws:ResourceTag/{naming.TAG_MANAGED}": "true"}},
        },
        {
            "Sid": "ReadMetrics",
            "Effect": "Allow",
            "Action": ["cloudwatch:GetMetricData"],
            "Resource": "*",
        },
    ]
    if isinstance(plan.strategy, BlueGreenStrategy) and plan.strategy.native:
        statements += _native_statements(region)
    if needs_capture(plan):
        statements += _capture_statements(plan)
    statements += _record_statements(plan)
    if state and state.startswith("s3://"):
        parts = urlsplit(state)
        bucket, prefix = parts.netloc, parts.path.strip("/")
        objects = f"arn:aws:s3:::{bucket}/{prefix + '/' if prefix else ''}*"
        statements += [
            {
                "Sid": "StateObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": objects,
            },
            {
                "Sid": "StateListing",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": f"arn:aws:s3:::{bucket}",
                **({"Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}}} if prefix else {}),
            },
        ]
    return {"Version": "2012-10-17", "Statement": statements}


def _capture_statements(plan: Plan) -> list[dict[str, Any]]:
    """Reading the endpoint's DataCapture files (the prediction gates): listing each variant's
    hour folders and getting the files. The location is the plan's ``target.capture_s3_uri``
    when it names one, else the endpoint's own (not known offline: any bucket)."""
    uri = capture_uri(plan)
    endpoint = plan.target.endpoint
    if uri:
        parts = urlsplit(uri)
        bucket, prefix = parts.netloc, parts.path.strip("/")
        folder = f"{prefix + '/' if prefix else ''}{endpoint}/"
    else:
        bucket, folder = "*", "*"
    return [
        {
            "Sid": "ReadDataCapture",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": f"arn:aws:s3:::{bucket}/{folder}*",
        },
        {
            "Sid": "ListDataCapture",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": f"arn:aws:s3:::{bucket}",
            **({"Condition": {"StringLike": {"s3:prefix": [f"{folder}*"]}}} if uri else {}),
        },
    ]


def _record_statements(plan: Plan) -> list[dict[str, Any]]:
    """The S3 objects the rollout writes or reads besides its state: the flag file (``flags``,
    written at each step) and the labels of the quality gates (``feedback`` in ``jsonl`` on S3,
    or Model Monitor's ground truth under ``target.ground_truth_s3_uri``)."""
    out: list[dict[str, Any]] = []
    if plan.flags is not None and plan.flags.file.startswith("s3://"):
        parts = urlsplit(plan.flags.file)
        out.append(
            {
                "Sid": "WriteFlagFile",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": f"arn:aws:s3:::{parts.netloc}/{parts.path.lstrip('/')}",
            }
        )
    labels = plan.feedback.jsonl if plan.feedback is not None else None
    if labels is None and any(g.metric in QUALITY_METRICS for g in plan.analysis.gates):
        truth = plan.target.setting("ground_truth_s3_uri")
        labels = str(truth) if truth else None
    if labels is not None and labels.startswith("s3://"):
        parts = urlsplit(labels)
        prefix = parts.path.strip("/")
        out += [
            {
                "Sid": "ReadLabels",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": f"arn:aws:s3:::{parts.netloc}/{prefix + '/' if prefix else ''}*",
            },
            {
                "Sid": "ListLabels",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": f"arn:aws:s3:::{parts.netloc}",
                **({"Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}}} if prefix else {}),
            },
        ]
    return out


def _native_statements(region: str) -> list[dict[str, Any]]:
    """SageMaker's own blue/green deployment: the rollout's CloudWatch alarms (created, read,
    set to ALARM to force a rollback, deleted), all named ``mlrollout-<rollout id>-...``; the
    tag on the new endpoint config that marks the deployment as started."""
    alarms = f"arn:aws:cloudwatch:{region}:*:alarm:{naming.ALARM_MARK}*"
    return [
        {
            "Sid": "ReadAlarms",
            "Effect": "Allow",
            "Action": ["cloudwatch:DescribeAlarms"],
            "Resource": "*",
        },
        {
            "Sid": "MlrolloutAlarms",
            "Effect": "Allow",
            "Action": [
                "cloudwatch:PutMetricAlarm",
                "cloudwatch:SetAlarmState",
                "cloudwatch:TagResource",
                "cloudwatch:ListTagsForResource",
            ],
            "Resource": alarms,
        },
        {
            "Sid": "DeleteOnlyMlrolloutAlarms",
            "Effect": "Allow",
            "Action": ["cloudwatch:DeleteAlarms"],
            "Resource": alarms,
            "Condition": {"StringLike": {f"aws:ResourceTag/{OWNER_ROLLOUT_KEY}": "*"}},
        },
    ]
