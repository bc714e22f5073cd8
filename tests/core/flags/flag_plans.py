"""Plans with segments and flags, and the users they are judged on, for the flag tests."""

from __future__ import annotations

import copy
from typing import Any

from mlrollout.plan.model import Plan, SandboxUsers
from mlrollout.sandbox.users import UserBase

ATTRIBUTES = {
    "region": ["eu-west-1", "eu-central-1", "us-east-1", "ap-south-1"],
    "user_type": ["employee", "customer"],
}

PLAN: dict[str, Any] = {
    "version": 1,
    "name": "churn v7 by segment",
    "target": {"provider": "local", "endpoint": "churn"},
    "candidate": {"name": "v7"},
    "strategy": {
        "type": "canary",
        "steps": [{"weight": 5}, {"analyze": "10m"}, {"weight": 50}, {"analyze": "10m"}],
    },
    "segments": [
        {"name": "staff", "match": {"user_type": "employee"}, "weight": 100},
        {"name": "eu", "match": {"region": ["eu-west-1", "eu-central-1"]}},
    ],
    "flags": {"provider": "flagd", "key": "churn-model", "file": "flags/churn.json"},
    "sandbox": {
        "seed": 7,
        "variants": {"v6": {"error_rate": 0.01}, "v7": {"error_rate": 0.01}},
        "users": {"count": 4000, "attributes": ATTRIBUTES},
    },
}


def plan(**changes: Any) -> Plan:
    data = copy.deepcopy(PLAN)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return Plan.model_validate(data)


def users(count: int = 4000, seed: int = 7) -> UserBase:
    return UserBase(SandboxUsers(count=count, attributes=ATTRIBUTES), seed)
