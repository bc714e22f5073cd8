"""CloudWatch alarms for SageMaker's own blue/green deployment, generated from a plan's gates.

No boto3 here: ``plan validate`` counts the alarms a plan needs, ``plan preview`` names them, and
the adapter (:mod:`mlrollout_aws.native`) puts them with ``PutMetricAlarm``.

One alarm per absolute bound (``max`` or ``min``) of a deciding gate, on the metrics of the
baseline's variant name (SageMaker publishes one variant's metrics for both fleets), with the
metric names and dimensions the metrics source reads (:mod:`mlrollout_aws.naming`):

- ``error_rate`` → metric math ``errors / requests`` on ``Invocation5XXErrors`` and
  ``Invocations`` (``Sum`` per minute);
- ``latency_p50/p90/p99`` → ``ModelLatency`` with the extended statistic ``p50/p90/p99``, the
  bound in microseconds;
- ``custom`` with a ``query`` → that metric (its ``stat``, else ``Average``: the ``Sum /
  SampleCount`` the metrics source computes), ``AWS/SageMaker`` latencies in microseconds.

``requests`` gates and ``dry_run`` gates make no alarm (mlrollout still judges the first).

Each alarm fires when 2 of the last 3 one-minute periods breach (missing data is not breaching):
one bad minute does not roll back, two do. Beside them, one **force-rollback** alarm watches a
metric nobody publishes, with missing data ``ignore``d, so it stays in whatever state
mlrollout sets with ``SetAlarmState``: ALARM makes SageMaker roll back at once.

Names: ``mlrollout-<rollout id>-g<gate index>-<gate>-<max|min>`` and
``mlrollout-<rollout id>-force-rollback``; every alarm is tagged ``mlrollout-rollout = <rollout
id>``. The rollout is deleted alarm by alarm only when both name and tag say it is its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlrollout.contracts import OWNER_ROLLOUT_KEY
from mlrollout.plan.model import LATENCY_METRICS, Gate, Plan
from mlrollout_aws import naming

PERIOD = 60  # SageMaker publishes per minute
EVALUATION_PERIODS = 3
DATAPOINTS_TO_ALARM = 2
FORCE_NAMESPACE = "mlrollout"
FORCE_METRIC = "ForceRollback"


@dataclass(frozen=True)
class AlarmSpec:
    name: str
    gate: str | None  # None: the force-rollback alarm
    params: dict[str, Any]  # PutMetricAlarm's arguments

    def put_params(self, rollout_id: str) -> dict[str, Any]:
        return {
            "AlarmName": self.name,
            **self.params,
            "Tags": [{"Key": OWNER_ROLLOUT_KEY, "Value": rollout_id}],
        }


def alarmed_bounds(plan: Plan) -> list[tuple[int, Gate, str]]:
    """``(index, gate, "max"|"min")`` for every bound that gets an alarm."""
    out = []
    for i, gate in enumerate(plan.analysis.gates):
        if gate.dry_run or gate.metric == "requests":
            continue
        if gate.metric == "custom" and not gate.query:
            continue
        for bound in ("max", "min"):
            if getattr(gate, bound) is not None:
                out.append((i, gate, bound))
    return out


def alarm_count(plan: Plan) -> int:
    """Alarms a native deployment of ``plan`` watches: the gates' plus the force-rollback one."""
    return len(alarmed_bounds(plan)) + 1


def alarm_specs(plan: Plan, endpoint: str, variant: str, rollout_id: str) -> list[AlarmSpec]:
    """Every alarm of the rollout, the force-rollback one last."""
    specs = []
    for index, gate, bound in alarmed_bounds(plan):
        name = naming.gate_alarm_name(rollout_id, index, gate.name, bound)
        raw = gate.max if bound == "max" else gate.min
        assert raw is not None
        params = _gate_params(gate, float(gate.parse_bound(raw)), endpoint, variant)
        params.update(
            ComparisonOperator="GreaterThanThreshold" if bound == "max" else "LessThanThreshold",
            EvaluationPeriods=EVALUATION_PERIODS,
            DatapointsToAlarm=DATAPOINTS_TO_ALARM,
            TreatMissingData="notBreaching",
            ActionsEnabled=False,
            AlarmDescription=(
                f"mlrollout rollout {rollout_id}: gate {gate.name!r} {bound} {raw} on "
                f"{endpoint}/{variant}; SageMaker rolls its blue/green deployment back on ALARM"
            )[:1024],
        )
        specs.append(AlarmSpec(name, gate.name, params))
    specs.append(
        AlarmSpec(
            naming.force_alarm_name(rollout_id),
            None,
            {
                "Namespace": FORCE_NAMESPACE,
                "MetricName": FORCE_METRIC,
                "Dimensions": [{"Name": "RolloutId", "Value": rollout_id}],
                "Statistic": "Maximum",
                "Period": PERIOD,
                "EvaluationPeriods": 1,
                "Threshold": 0.0,
                "ComparisonOperator": "GreaterThanThreshold",
                "TreatMissingData": "ignore",  # stays as SetAlarmState leaves it
                "ActionsEnabled": False,
                "AlarmDescription": (
                    f"mlrollout rollout {rollout_id}: set to ALARM by mlrollout (a failed gate "
                    f"or `mlrollout abort`) to make SageMaker roll back on {endpoint}"
                ),
            },
        )
    )
    return specs


def _gate_params(gate: Gate, bound: float, endpoint: str, variant: str) -> dict[str, Any]:
    dims = naming.variant_dimensions(endpoint, variant)
    if gate.metric == "error_rate":
        return {
            "Threshold": bound,
            "Metrics": [
                metric_stat(
                    "errors",
                    naming.NAMESPACE,
                    naming.METRIC_ERRORS,
                    dims,
                    "Sum",
                    PERIOD,
                    returned=False,
                ),
                metric_stat(
                    "requests",
                    naming.NAMESPACE,
                    naming.METRIC_REQUESTS,
                    dims,
                    "Sum",
                    PERIOD,
                    returned=False,
                ),
                {
                    "Id": "rate",
                    "Expression": "errors / requests",
                    "Label": f"{gate.name}: error rate",
                    "ReturnData": True,
                },
            ],
        }
    if gate.metric in LATENCY_METRICS:
        return {
            "Namespace": naming.NAMESPACE,
            "MetricName": naming.METRIC_LATENCY,
            "Dimensions": dims,
            "ExtendedStatistic": f"p{LATENCY_METRICS[gate.metric] * 100:g}",
            "Period": PERIOD,
            "Threshold": bound / naming.MICROSECONDS,
        }
    assert gate.query is not None  # custom (alarmed_bounds keeps only those with a query)
    spec = gate.query
    stat = str(spec.get("stat") or "Average")
    params: dict[str, Any] = {
        "Namespace": str(spec["namespace"]),
        "MetricName": str(spec["metric"]),
        "Dimensions": naming.custom_dimensions(spec, endpoint, variant),
        "Period": PERIOD,
        "Threshold": bound / naming.custom_scale(spec),
    }
    if stat.startswith("p"):
        params["ExtendedStatistic"] = stat
    else:
        params["Statistic"] = stat
    return params


def metric_stat(
    qid: str,
    namespace: str,
    metric: str,
    dims: list[dict[str, str]],
    stat: str,
    period: int,
    *,
    returned: bool = True,
) -> dict[str, Any]:
    """One ``MetricDataQuery`` of a statistic (GetMetricData's, and a metric-math alarm's, whose
    inputs are not ``returned``)."""
    return {
        "Id": qid,
        "MetricStat": {
            "Metric": {"Namespace": namespace, "MetricName": metric, "Dimensions": dims},
            "Period": period,
            "Stat": stat,
        },
        "ReturnData": returned,
    }
