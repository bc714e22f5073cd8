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

#: Platform limits (SageMaker deployment guardrails and quotas).
MAX_CANARY_PERCENT = 50.0
LINEAR_STEP_RANGE = (10.0, 50.0)
MAX_ALARMS = 10
MAX_VARIANTS = 10
#: GetMetricData periods: 1, 5, 10, 30 s (high resolution) or a multiple of 60 s.
HIGH_RES_PERIODS = (1, 5, 10, 30)
NAMESPACE = "AWS/SageMaker"


def config_prefix(endpoint: str) -> str:
    return endpoint[:40] + CONFIG_MARK


def config_name(endpoint: str, variants: Sequence[Mapping[str, Any]]) -> str:
    """The deterministic name of the config holding exactly ``variants``."""
    canonical = json.dumps(
        sorted(
            (
                {
                    k: v[k]
                    for k in ("VariantName", "ModelName", "InstanceType", "ServerlessConfig")
                    if k in v
                }
                for v in variants
            ),
            key=lambda v: str(v["VariantName"]),
        ),
        sort_keys=True,
    )
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
