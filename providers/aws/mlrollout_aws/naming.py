"""Names, tags and limits shared by the spec, the adapter and the IAM policy (no boto3 here).

Endpoint configs that mlrollout creates are recognisable two ways, and both must hold before it
deletes one: the name is ``<endpoint>-mlr-<10 hex digits>`` (a digest of the variants it holds, so
the same desired endpoint always gets the same config name: creating it again is a no-op) and it
carries the tag ``mlrollout:managed = true`` plus ``mlrollout:endpoint = <endpoint>``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

#: SageMaker's pattern for endpoint, endpoint config and variant names.
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
CONFIG_MARK = "-mlr-"
TAG_MANAGED = "mlrollout:managed"
TAG_ENDPOINT = "mlrollout:endpoint"
TAG_BASE = "mlrollout:base-config"  # the config the endpoint had before the rollout
#: On a shadow config where mlrollout turned DataCapture on (it was off): the config that ends
#: the shadow goes back to the capture the endpoint had (none).
TAG_CAPTURE_ADDED = "mlrollout:capture-added"

#: Platform limits (SageMaker deployment guardrails and quotas).
MAX_CANARY_PERCENT = 50.0
LINEAR_STEP_RANGE = (10.0, 50.0)
MAX_ALARMS = 10
MAX_VARIANTS = 10
#: Shadow variants: one production variant and one shadow per config; the shadow's sampling
#: share is its InitialVariantWeight relative to the production variant's (at most 100 %).
MAX_SHADOW_PERCENT = 100.0
#: GetMetricData periods: 1, 5, 10, 30 s (high resolution) or a multiple of 60 s.
HIGH_RES_PERIODS = (1, 5, 10, 30)
NAMESPACE = "AWS/SageMaker"


def config_prefix(endpoint: str) -> str:
    return endpoint[:40] + CONFIG_MARK


_IDENTITY_KEYS = ("VariantName", "ModelName", "InstanceType", "ServerlessConfig")


def config_name(
    endpoint: str,
    variants: Sequence[Mapping[str, Any]],
    shadows: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The deterministic name of the config holding exactly ``variants`` (and ``shadows``: the
    shadow variants, with their sampling weight, which UpdateEndpointWeightsAndCapacities does
    not change; a config without shadows keeps the name it always had)."""
    production = sorted(
        ({k: v[k] for k in _IDENTITY_KEYS if k in v} for v in variants),
        key=lambda v: str(v["VariantName"]),
    )
    if shadows:
        shadow = sorted(
            (
                {
                    **{k: v[k] for k in _IDENTITY_KEYS if k in v},
                    "InitialVariantWeight": round(float(v.get("InitialVariantWeight", 0.0)), 6),
                }
                for v in shadows
            ),
            key=lambda v: str(v["VariantName"]),
        )
        canonical = json.dumps({"production": production, "shadow": shadow}, sort_keys=True)
    else:
        canonical = json.dumps(production, sort_keys=True)
    digest = hashlib.blake2b(canonical.encode(), digest_size=5).hexdigest()
    return config_prefix(endpoint) + digest


def is_managed_name(endpoint: str, name: str) -> bool:
    prefix = config_prefix(endpoint)
    return (
        name.startswith(prefix) and re.fullmatch(r"[0-9a-f]{10}", name[len(prefix) :]) is not None
    )


def valid_period(seconds: float) -> bool:
    s = round(seconds)
    return abs(seconds - s) < 1e-9 and (s in HIGH_RES_PERIODS or (s >= 60 and s % 60 == 0))


# ----------------------------------------------------------------- CloudWatch metric names

#: SageMaker's per-variant metrics (namespace ``AWS/SageMaker``, dimensions ``EndpointName`` +
#: ``VariantName``): what the metrics source reads and what the native alarms watch.
METRIC_REQUESTS = "Invocations"
METRIC_ERRORS = "Invocation5XXErrors"
METRIC_LATENCY = "ModelLatency"  # microseconds
MICROSECONDS = 1e-6


def variant_dimensions(endpoint: str, variant: str) -> list[dict[str, str]]:
    return [
        {"Name": "EndpointName", "Value": endpoint},
        {"Name": "VariantName", "Value": variant},
    ]


def custom_dimensions(spec: Mapping[str, Any], endpoint: str, variant: str) -> list[dict[str, str]]:
    """A custom gate's dimensions: its own (``{endpoint}``/``{variant}`` filled in), or the
    variant's when it has none and reads ``AWS/SageMaker``."""
    dims = spec.get("dimensions")
    if dims is None:
        return variant_dimensions(endpoint, variant) if spec.get("namespace") == NAMESPACE else []
    return [
        {
            "Name": str(k),
            "Value": str(v).replace("{endpoint}", endpoint).replace("{variant}", variant),
        }
        for k, v in dims.items()
    ]


def custom_scale(spec: Mapping[str, Any]) -> float:
    """Seconds per unit of a custom gate's metric (``AWS/SageMaker`` latencies are µs)."""
    metric = str(spec.get("metric", ""))
    if spec.get("namespace") == NAMESPACE and metric.endswith("Latency"):
        return MICROSECONDS
    return 1.0


# ------------------------------------------------------------- native blue/green (alarms)

#: SageMaker's limits for its own blue/green deployments (``DeploymentConfig``).
WAIT_RANGE = (0, 3600)  # WaitIntervalInSeconds, TerminationWaitInSeconds
EXECUTION_TIMEOUT_RANGE = (600, 28800)  # MaximumExecutionTimeoutInSeconds
#: Time allowed for SageMaker to provision green before any traffic moves (in the timeout).
PROVISION_ALLOWANCE = 1800
ALARM_MARK = "mlrollout-"
FORCE_ALARM = "force-rollback"
TAG_NATIVE_ROLLOUT = "mlrollout:native-rollout"  # on the native endpoint config
TAG_NATIVE_STARTED = "mlrollout:native-started"  # set once UpdateEndpoint was accepted
_ALARM_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def alarm_prefix(rollout_id: str) -> str:
    """Every alarm of one rollout starts with this (``DescribeAlarms AlarmNamePrefix``)."""
    return f"{ALARM_MARK}{rollout_id}-"


def gate_alarm_name(rollout_id: str, index: int, gate: str, bound: str) -> str:
    return f"{alarm_prefix(rollout_id)}g{index}-{_ALARM_UNSAFE.sub('_', gate)[:64]}-{bound}"


def force_alarm_name(rollout_id: str) -> str:
    """The alarm mlrollout sets to ALARM (``SetAlarmState``) to make SageMaker roll back."""
    return alarm_prefix(rollout_id) + FORCE_ALARM


def native_config_name(endpoint: str, rollout_id: str) -> str:
    """The endpoint config of a rollout's native deployment: derived from the rollout id, so a
    runner resuming after a crash finds the one the first made (and a managed name, so the
    self-driven clean-up recognises it too)."""
    digest = hashlib.blake2b(f"native:{rollout_id}".encode(), digest_size=5).hexdigest()
    return config_prefix(endpoint) + digest
