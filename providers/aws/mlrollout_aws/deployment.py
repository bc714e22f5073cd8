"""SageMaker's ``DeploymentConfig`` for a native blue/green plan (``strategy.native: true``).

No boto3 here: ``plan validate`` checks the numbers against SageMaker's limits, ``plan preview``
shows them, and the adapter sends them with ``UpdateEndpoint``.

From the plan's ``strategy``:

- ``preview`` > 0 → ``CANARY``: ``CanarySize`` = ``preview`` percent of green's capacity,
  ``WaitIntervalInSeconds`` = ``pre_promotion`` (its ``max`` when adaptive);
- ``switch: {step, every}`` → ``LINEAR``: ``LinearStepSize`` = ``step`` percent,
  ``WaitIntervalInSeconds`` = ``every``;
- otherwise ``ALL_AT_ONCE`` with ``WaitIntervalInSeconds`` = ``post_promotion`` (the baking
  period at 100 %);
- ``TerminationWaitInSeconds`` = ``keep_previous`` (blue kept that long after the last bake);
- ``MaximumExecutionTimeoutInSeconds``: the worst case of the whole rollout (green's
  provisioning allowance, every bake, the termination wait, and mlrollout's own judging worst
  case from :func:`mlrollout.plan.timeline.timeline`), clamped to SageMaker's 600-28800 s;
- ``AutoRollbackConfiguration.Alarms``: the rollout's alarms (:mod:`mlrollout_aws.alarms`).
"""

from __future__ import annotations

import math
from typing import Any

from mlrollout.plan.model import BlueGreenStrategy, Plan
from mlrollout_aws import naming


def routing_type(strategy: BlueGreenStrategy) -> str:
    if strategy.preview > 0:
        return "CANARY"
    if not isinstance(strategy.switch, str):
        return "LINEAR"
    return "ALL_AT_ONCE"


def wait_interval(strategy: BlueGreenStrategy) -> float:
    """SageMaker's baking period after each traffic shift, seconds."""
    kind = routing_type(strategy)
    if kind == "CANARY":
        window = strategy.pre_promotion
    elif kind == "LINEAR":
        assert not isinstance(strategy.switch, str)
        return float(strategy.switch.every)
    else:
        window = strategy.post_promotion
    return 0.0 if window is None else float(window.max)


def bakes(strategy: BlueGreenStrategy) -> int:
    """Baking periods in the deployment: one after every shift, the last one included."""
    kind = routing_type(strategy)
    if kind == "CANARY":
        return 2
    if kind == "LINEAR":
        assert not isinstance(strategy.switch, str)
        return math.ceil(100.0 / strategy.switch.step)
    return 1


def sagemaker_seconds(strategy: BlueGreenStrategy) -> float:
    """SageMaker's own worst case: provisioning allowance, every bake, the termination wait."""
    return (
        naming.PROVISION_ALLOWANCE
        + bakes(strategy) * wait_interval(strategy)
        + float(strategy.keep_previous)
    )


def worst_case(plan: Plan) -> float:
    """The longer of SageMaker's worst case and mlrollout's judging worst case (timeline)."""
    from mlrollout.plan.timeline import timeline

    strategy = plan.strategy
    assert isinstance(strategy, BlueGreenStrategy)
    judged = sum(row.max_seconds for row in timeline(plan) if math.isfinite(row.max_seconds))
    return max(sagemaker_seconds(strategy), naming.PROVISION_ALLOWANCE + judged)


def execution_timeout(plan: Plan) -> int:
    low, high = naming.EXECUTION_TIMEOUT_RANGE
    return int(min(max(math.ceil(worst_case(plan)), low), high))


def deployment_config(plan: Plan, alarm_names: list[str]) -> dict[str, Any]:
    strategy = plan.strategy
    assert isinstance(strategy, BlueGreenStrategy)
    kind = routing_type(strategy)
    wait = round(wait_interval(strategy))
    routing: dict[str, Any] = {"Type": kind, "WaitIntervalInSeconds": wait}
    if kind == "CANARY":
        routing["CanarySize"] = {"Type": "CAPACITY_PERCENT", "Value": round(strategy.preview)}
    elif kind == "LINEAR":
        assert not isinstance(strategy.switch, str)
        routing["LinearStepSize"] = {
            "Type": "CAPACITY_PERCENT",
            "Value": round(strategy.switch.step),
        }
    return {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds": round(strategy.keep_previous),
            "MaximumExecutionTimeoutInSeconds": execution_timeout(plan),
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": n} for n in alarm_names]},
    }
