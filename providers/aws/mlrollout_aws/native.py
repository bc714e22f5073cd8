"""SageMaker's own blue/green deployment, driven from a plan (``strategy.native: true``).

SageMaker moves the traffic (``UpdateEndpoint`` with ``DeploymentConfig``, see
:mod:`mlrollout_aws.deployment`) and rolls back when an alarm of its
``AutoRollbackConfiguration`` is in ALARM (see :mod:`mlrollout_aws.alarms`); mlrollout starts
it, follows it with ``DescribeEndpoint``, judges its own gates meanwhile, and makes SageMaker
roll back by setting its force-rollback alarm to ALARM.

Calls (every one through :func:`mlrollout_aws._aws.call`):

- ``start_native``: ``DescribeEndpoint``; ``DescribeModel``; ``DescribeAlarms`` (prefix: the
  rollout's) and ``PutMetricAlarm`` for each alarm not there yet (tagged);
  ``DescribeEndpointConfig`` (the live config) and ``CreateEndpointConfig`` (the candidate's
  model, instance type and count on the baseline's variant name; the other variants as they
  are); ``UpdateEndpoint`` with ``DeploymentConfig``; ``AddTags`` (the started mark on our config).
- ``native_status``: ``DescribeEndpoint`` (and, only when the endpoint is back on another config
  and its ``LastDeploymentConfig`` does not name our alarms, ``DescribeEndpointConfig`` +
  ``ListTags`` of our config: did our deployment run?).
- ``roll_back_native``: ``native_status``, then ``SetAlarmState`` ALARM on the force alarm.
- ``end_native``: ``DescribeEndpoint``; ``DescribeAlarms`` (prefix) + ``ListTagsForResource``
  per alarm + one ``DeleteAlarms``; the unused configs mlrollout made for the endpoint
  (``ListEndpointConfigs``, ``DescribeEndpointConfig`` + ``ListTags``, ``DeleteEndpointConfig``).

**Idempotence of ``start_native``** (a replay after a crash never starts the deployment twice
and never misses starting it). The config and alarm names derive from the rollout id, so a
replay finds what the first attempt made, and each creation is skipped when it exists. Whether
the deployment has started is read from the endpoint itself, never from the journal:

1. the endpoint's pending deployment (``PendingDeploymentSummary.EndpointConfigName``) is our
   config: it runs (``Updating``, ``RollingBack``);
2. the endpoint's own ``EndpointConfigName`` is our config: it finished with green serving;
3. ``LastDeploymentConfig.AutoRollbackConfiguration`` names our force-rollback alarm (its name
   holds the rollout id, so no other deployment names it): ours ran, and since the endpoint is
   on another config, it rolled back;
4. our config carries the ``mlrollout:native-started`` tag, written right after SageMaker
   accepted the ``UpdateEndpoint`` (a second witness in case (3) is unavailable).

None of these: it never started, and ``start_native`` starts it. ``UpdateEndpoint`` itself
asks (1)-(3) before a retry after a lost response.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mlrollout.adapters import candidate_capacity
from mlrollout.contracts import OWNER_ROLLOUT_KEY, EndpointState, NativeDeployment
from mlrollout.errors import ProviderError, ProviderRefused
from mlrollout.plan.model import Candidate, Plan
from mlrollout_aws import naming
from mlrollout_aws._aws import AwsCallError, call
from mlrollout_aws.alarms import AlarmSpec, alarm_specs
from mlrollout_aws.deployment import deployment_config

if TYPE_CHECKING:
    from mlrollout_aws.sagemaker import SageMakerEndpoint

#: Endpoint states a native deployment cannot recover from by itself.
_BROKEN = frozenset({"Failed", "UpdateRollbackFailed", "OutOfService", "Deleting"})


class NativeBlueGreen:
    """The native methods of :class:`~mlrollout_aws.sagemaker.SageMakerEndpoint`."""

    def __init__(self, endpoint: SageMakerEndpoint, cloudwatch: Any, plan: Plan | None) -> None:
        self.endpoint = endpoint
        self.cloudwatch = cloudwatch
        self.plan = plan

    # ------------------------------------------------------------------------------ plumbing

    def _cw(self, operation: str, **params: Any) -> Any:
        return call(
            self.cloudwatch,
            operation,
            retry=self.endpoint.retry,
            meter=self.endpoint.meter,
            **params,
        )

    def _config_name(self, rollout_id: str) -> str:
        return naming.native_config_name(self.endpoint.name, rollout_id)

    def _alarms(self, rollout_id: str) -> dict[str, dict[str, Any]]:
        """The alarms named with the rollout's prefix (whoever made them), by name."""
        found: dict[str, dict[str, Any]] = {}
        token: str | None = None
        while True:
            page = self._cw(
                "describe_alarms",
                AlarmNamePrefix=naming.alarm_prefix(rollout_id),
                AlarmTypes=["MetricAlarm"],
                **({"NextToken": token} if token else {}),
            )
            found.update({a["AlarmName"]: a for a in page.get("MetricAlarms", [])})
            token = page.get("NextToken")
            if not token:
                return found

    def _ours(self, alarm: Mapping[str, Any], rollout_id: str) -> bool:
        tags = self._cw("list_tags_for_resource", ResourceARN=alarm["AlarmArn"]).get("Tags", [])
        return any(t["Key"] == OWNER_ROLLOUT_KEY and t["Value"] == rollout_id for t in tags)

    def _specs(self, baseline: str, rollout_id: str) -> list[AlarmSpec]:
        if self.plan is None:
            raise ProviderError("a native deployment needs the plan (open the provider with it)")
        return alarm_specs(self.plan, self.endpoint.name, baseline, rollout_id)

    # --------------------------------------------------------------------------------- start

    def start(self, candidate: Candidate, baseline: str, rollout_id: str) -> NativeDeployment:
        ep = self.endpoint
        ours = self._config_name(rollout_id)
        raw = ep._raw()
        if self._started(raw, rollout_id):
            return self._status(raw, rollout_id)
        if raw.get("EndpointStatus") != "InService":
            raw = ep._wait()  # somebody's update in flight: SageMaker takes one at a time
            if self._started(raw, rollout_id):
                return self._status(raw, rollout_id)
        if self._started_mark(rollout_id):  # (4): ran and ended, (1)-(3) unavailable
            return self._status(raw, rollout_id)
        blue = _variant(raw, baseline)
        if blue is None:
            names = ", ".join(v["VariantName"] for v in raw.get("ProductionVariants") or [])
            raise ProviderRefused(
                f"baseline variant {baseline!r} is not on SageMaker endpoint {ep.name!r} "
                f"(it has {names or 'no variants'})"
            )
        assert candidate.model is not None and candidate.instance_type is not None
        ep._check_model(candidate.model)

        specs = self._specs(baseline, rollout_id)
        have = self._alarms(rollout_id)
        for spec in specs:
            if spec.name not in have:
                self._cw("put_metric_alarm", **spec.put_params(rollout_id))
            elif not self._ours(have[spec.name], rollout_id):
                raise ProviderRefused(
                    f"CloudWatch alarm {spec.name!r} exists and is not this rollout's (no "
                    f"{OWNER_ROLLOUT_KEY} = {rollout_id} tag): mlrollout never changes it",
                    hint="rename or delete that alarm, then run the rollout again",
                )

        current = ep._config(str(raw["EndpointConfigName"]))
        self._create_config(current, raw, candidate, baseline, rollout_id)
        assert self.plan is not None
        config = deployment_config(self.plan, [s.name for s in specs])
        try:
            call(
                ep.client,
                "update_endpoint",
                retry=ep.retry,
                meter=ep.meter,
                applied=lambda: self._started(ep._raw(), rollout_id),
                EndpointName=ep.name,
                EndpointConfigName=ours,
                DeploymentConfig=config,
            )
        except ProviderRefused:
            self.end(rollout_id)  # refused before any change: take back what this start made
            raise
        except AwsCallError as exc:
            if exc.code != "ValidationException":
                raise
            self.end(rollout_id)
            raise ProviderRefused(
                f"SageMaker refused the blue/green deployment of {ep.name!r}: {exc}",
                hint="nothing changed on the endpoint; fix the cause (see the message), then "
                "run the rollout again",
            ) from exc
        self._mark_started(ours)
        return self._status(ep._raw(), rollout_id)

    def _create_config(
        self,
        current: Mapping[str, Any],
        raw: Mapping[str, Any],
        candidate: Candidate,
        baseline: str,
        rollout_id: str,
    ) -> None:
        from mlrollout_aws.sagemaker import _CONFIG_KEYS, _carried_variants

        ep = self.endpoint
        name = self._config_name(rollout_id)
        if ep._config_exists(name):
            return
        variants = []
        for variant in _carried_variants(current, raw):
            if variant["VariantName"] == baseline:
                count = variant.get("InitialInstanceCount")
                count = candidate_capacity(candidate, count)
                variant = {
                    "VariantName": baseline,  # SageMaker: the same variant name as before
                    "ModelName": candidate.model,
                    "InstanceType": candidate.instance_type,
                    "InitialInstanceCount": count,
                    "InitialVariantWeight": variant.get("InitialVariantWeight", 1.0),
                }
            variants.append(variant)
        tags = [
            {"Key": naming.TAG_MANAGED, "Value": "true"},
            {"Key": naming.TAG_ENDPOINT, "Value": ep.name},
            {"Key": naming.TAG_NATIVE_ROLLOUT, "Value": rollout_id},
            {"Key": naming.TAG_BASE, "Value": str(current["EndpointConfigName"])},
        ]
        extra = {k: current[k] for k in _CONFIG_KEYS if current.get(k)}
        extra.pop("ShadowProductionVariants", None)  # blue/green deployments have none
        ep._put_config(name, variants, tags, extra)

    def _mark_started(self, config: str) -> None:
        ep = self.endpoint
        try:
            arn = str(ep._config(config)["EndpointConfigArn"])
            call(
                ep.client,
                "add_tags",
                retry=ep.retry,
                meter=ep.meter,
                ResourceArn=arn,
                Tags=[{"Key": naming.TAG_NATIVE_STARTED, "Value": "true"}],
            )
        except AwsCallError:
            pass  # a witness only: LastDeploymentConfig says it too

    def _started(self, raw: Mapping[str, Any], rollout_id: str) -> bool:
        """Did our deployment start? Cases (1)-(3) of the module doc, from DescribeEndpoint."""
        ours = self._config_name(rollout_id)
        pending = (raw.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
        if ours in (raw.get("EndpointConfigName"), pending):
            return True
        return naming.force_alarm_name(rollout_id) in _last_alarms(raw)

    def _started_mark(self, rollout_id: str) -> bool:
        """Case (4): the started tag on our config (two calls; only when (1)-(3) say no)."""
        ep = self.endpoint
        try:
            config = ep._config(self._config_name(rollout_id))
        except AwsCallError:
            return False
        return ep._tags(str(config["EndpointConfigArn"])).get(naming.TAG_NATIVE_STARTED) == "true"

    # -------------------------------------------------------------------------------- status

    def status(self, rollout_id: str) -> NativeDeployment:
        return self._status(self.endpoint._raw(), rollout_id)

    def _status(self, raw: Mapping[str, Any], rollout_id: str) -> NativeDeployment:
        ep = self.endpoint
        ours = self._config_name(rollout_id)
        state = str(raw.get("EndpointStatus", "Unknown"))
        pending = raw.get("PendingDeploymentSummary") or {}
        mine = pending.get("EndpointConfigName") == ours
        blue_count = _total_count(raw.get("ProductionVariants"))
        if state in _BROKEN:
            raise ProviderError(
                f"SageMaker endpoint {ep.name!r} is {state} during the blue/green deployment: "
                f"{raw.get('FailureReason') or 'no reason given'}",
                hint="see the endpoint's events in the SageMaker console; fix it by hand, then "
                "`mlrollout abort` the rollout",
            )
        if state == "RollingBack":
            return NativeDeployment(
                "rolling_back",
                green_percent=_green_percent(pending) if mine else 0.0,
                detail=str(raw.get("FailureReason") or "SageMaker is rolling back to blue"),
                green_instances=_total_count(pending.get("ProductionVariants")) if mine else None,
                blue_instances=blue_count,
            )
        if mine:
            variants = pending.get("ProductionVariants") or []
            words = [_last_status(v) for v in variants]
            baking = any(w.get("Status") == "Baking" for w in words)
            detail = "; ".join(
                f"{v['VariantName']}: {w.get('Status')}"
                + (f" ({w['StatusMessage']})" if w.get("StatusMessage") else "")
                for v, w in zip(variants, words, strict=True)
                if w
            )
            return NativeDeployment(
                "baking" if baking else "deploying",
                green_percent=_green_percent(pending),
                detail=detail or f"SageMaker is {state}",
                green_instances=_total_count(variants),
                blue_instances=blue_count,
            )
        if raw.get("EndpointConfigName") == ours:
            if state == "InService":
                return NativeDeployment(
                    "succeeded",
                    green_percent=100.0,
                    detail="green serves all traffic; blue is terminated",
                    green_instances=blue_count,
                    blue_instances=0,
                )
            return NativeDeployment(  # e.g. SystemUpdating on our config
                "baking", green_percent=100.0, detail=f"SageMaker is {state}"
            )
        ran = naming.force_alarm_name(rollout_id) in _last_alarms(raw)
        if ran and state != "InService":  # ours runs, its summary not (yet) reported
            return NativeDeployment(
                "deploying", detail=f"SageMaker is {state}", blue_instances=blue_count
            )
        # On another config: never started, or ours rolled back (or is about to start: an
        # update by somebody else in flight counts as not started).
        if state == "InService" and (ran or self._started_mark(rollout_id)):
            return NativeDeployment(
                "rolled_back",
                green_percent=0.0,
                detail=str(raw.get("FailureReason") or "SageMaker rolled back to blue"),
                green_instances=0,
                blue_instances=blue_count,
            )
        return NativeDeployment("not_started", blue_instances=blue_count)

    # ------------------------------------------------------------------------------ rollback

    def roll_back(self, rollout_id: str, reason: str) -> NativeDeployment:
        current = self.status(rollout_id)
        if current.status == "succeeded":
            raise ProviderRefused(
                f"too late to roll back on SageMaker endpoint {self.endpoint.name!r}: its "
                "blue/green deployment has finished, green serves all traffic and blue is "
                "terminated",
                hint="roll forward instead: run a rollout whose candidate is the previous "
                "model (the endpoint config it replaced is named in the report)",
            )
        if current.status in ("rolling_back", "rolled_back", "not_started"):
            return current
        name = naming.force_alarm_name(rollout_id)
        self._cw(
            "set_alarm_state",
            AlarmName=name,
            StateValue="ALARM",
            StateReason=(f"mlrollout: {reason}" if reason else "mlrollout: rollback")[:1023],
        )
        return self.status(rollout_id)

    # ----------------------------------------------------------------------------------- end

    def end(self, rollout_id: str) -> EndpointState:
        ep = self.endpoint
        raw = ep._raw()
        pending = (raw.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
        state = raw.get("EndpointStatus")
        ran = naming.force_alarm_name(rollout_id) in _last_alarms(raw)
        if pending == self._config_name(rollout_id) or (ran and state != "InService"):
            raise ProviderError(
                f"the blue/green deployment on SageMaker endpoint {ep.name!r} still runs "
                f"({raw.get('EndpointStatus')}): its alarms stay until it ends",
                hint="wait for it to finish (`mlrollout resume`)",
            )
        mine = [
            name
            for name, alarm in self._alarms(rollout_id).items()
            if self._ours(alarm, rollout_id)  # the prefix alone proves nothing
        ]
        if mine:  # at most 10 (SageMaker's limit); DeleteAlarms takes 100
            call(
                self.cloudwatch,
                "delete_alarms",
                retry=ep.retry,
                meter=ep.meter,
                applied=lambda: not set(mine) & set(self._alarms(rollout_id)),
                AlarmNames=mine,
            )
        ep._delete_unused_configs(in_use=raw.get("EndpointConfigName"))
        return ep._state(raw)


def _variant(raw: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    return next((v for v in raw.get("ProductionVariants") or [] if v["VariantName"] == name), None)


def _last_alarms(raw: Mapping[str, Any]) -> set[str]:
    last = raw.get("LastDeploymentConfig") or {}
    alarms = (last.get("AutoRollbackConfiguration") or {}).get("Alarms") or []
    return {str(a.get("AlarmName")) for a in alarms}


def _last_status(variant: Mapping[str, Any]) -> dict[str, Any]:
    statuses = variant.get("VariantStatus") or []
    return dict(statuses[-1]) if statuses else {}


def _total_count(variants: Any) -> int | None:
    counts = [v.get("CurrentInstanceCount") for v in variants or []]
    known = [int(c) for c in counts if c is not None]
    return sum(known) if known else None


def _green_percent(pending: Mapping[str, Any]) -> float:
    """Green's share of live traffic: the pending (green) variants' current weight against
    their desired weight; without weights, the share of green's capacity taking traffic."""
    variants = pending.get("ProductionVariants") or []
    current = sum(float(v.get("CurrentWeight") or 0.0) for v in variants)
    desired = sum(float(v.get("DesiredWeight") or 0.0) for v in variants)
    if desired > 0:
        return max(0.0, min(100.0, 100.0 * current / desired))
    return 0.0
