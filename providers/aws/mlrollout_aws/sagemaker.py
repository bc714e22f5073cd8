"""The SageMaker endpoint adapter: one real-time endpoint, its production variants and weights.

How each contract method maps to SageMaker (every call through :func:`mlrollout_aws._aws.call`):

- ``describe``: ``DescribeEndpoint``. Weights are SageMaker's relative floats, reported as percent
  of the production weights' sum; status ``InService`` is ``ready``, anything else is the word.
- ``prepare``: ``DescribeModel`` (the model must exist), ``DescribeEndpointConfig`` (the live
  config), ``CreateEndpointConfig`` (the live variants at their current weights and counts, plus
  the candidate at weight 0; named and tagged as mlrollout's, see :mod:`mlrollout_aws.naming`),
  ``UpdateEndpoint`` (``RetainAllVariantProperties``), then ``DescribeEndpoint`` on the injected
  clock until ``InService``.
- ``set_traffic``: ``UpdateEndpointWeightsAndCapacities`` with every variant's current instance
  count (so counts are preserved), then wait for ``InService``.
- ``finalize``: a config without the retired variant (the pre-rollout config itself when it holds
  exactly the variants left, so a rollback leaves no mlrollout config behind), ``UpdateEndpoint``,
  wait, then delete the endpoint configs mlrollout created for this endpoint and no longer uses
  (name *and* tag must say so: nothing else is ever deleted).
- ``read_owner``: ``ListTags`` on the endpoint's ARN (the ARN comes from ``DescribeEndpoint``, which
  every other method calls anyway; fetched once per adapter when it is not known yet).
- ``start_native`` / ``native_status`` / ``roll_back_native`` / ``end_native``: SageMaker's own
  blue/green deployment (``strategy.native: true``), in :mod:`mlrollout_aws.native`.
- ``write_owner``: ``AddTags`` with the mark's three tags (AddTags overwrites the values of keys
  that exist; other tags are left alone), or ``DeleteTags`` of the three keys for ``None``. Tags
  are no part of the endpoint's config: neither changes traffic nor redeploys anything.

Every mutation first looks whether it is already in effect (after a crash or a lost response) and
then does nothing: a retried ``UpdateEndpoint`` or weight change is never applied twice.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from mlrollout.adapters import (
    WEIGHT_TOLERANCE,
    candidate_capacity,
    check_finalize,
    check_weights,
    wait_until,
)
from mlrollout.budget import Meter
from mlrollout.clock import Clock
from mlrollout.contracts import (
    OWNER_KEYS,
    EndpointState,
    NativeDeployment,
    OwnerMark,
    ProviderContext,
    VariantState,
)
from mlrollout.errors import ProviderError
from mlrollout.plan.model import Candidate, Plan
from mlrollout.retry import RetryPolicy
from mlrollout_aws import naming
from mlrollout_aws._aws import AwsCallError, budget_meter, call, make_client
from mlrollout_aws.native import NativeBlueGreen
from mlrollout_aws.spec import CAPABILITIES, capture_on, capture_uri, needs_capture

#: Endpoint states an update ends in when it did not work.
FAILED_STATES = frozenset({"Failed", "UpdateRollbackFailed", "OutOfService", "Deleting"})
#: Keys of an endpoint config that a new config carries over unchanged.
_CONFIG_KEYS = (
    "DataCaptureConfig",
    "KmsKeyId",
    "AsyncInferenceConfig",
    "ExplainerConfig",
    "ShadowProductionVariants",
    "ExecutionRoleArn",
    "VpcConfig",
    "EnableNetworkIsolation",
)
#: Keys of a production variant that a new config carries over unchanged.
_VARIANT_KEYS = (
    "VariantName",
    "ModelName",
    "InstanceType",
    "AcceleratorType",
    "ServerlessConfig",
    "VolumeSizeInGB",
    "ModelDataDownloadTimeoutInSeconds",
    "ContainerStartupHealthCheckTimeoutInSeconds",
    "EnableSSMAccess",
    "InferenceAmiVersion",
    "RoutingConfig",
)
_TAG_UNSAFE = re.compile(r"[^\w .:/=+\-@]")
POLL_SECONDS = 15.0
UPDATE_TIMEOUT = 3600.0


class SageMakerEndpoint:
    capabilities = CAPABILITIES

    def __init__(
        self,
        name: str,
        client: Any,
        clock: Clock,
        *,
        region: str = "",
        retry: RetryPolicy | None = None,
        poll: float = POLL_SECONDS,
        update_timeout: float = UPDATE_TIMEOUT,
        plan: Plan | None = None,
        cloudwatch: Any = None,
        meter: Meter | None = None,
    ) -> None:
        self.name = name
        self.client = client
        self.clock = clock
        self.region = region
        self.retry = retry or RetryPolicy(sleep=clock.sleep)
        #: The API budget of the account and region (None: calls are not budgeted).
        self.meter = meter
        self.poll = poll
        self.update_timeout = update_timeout
        self._models: set[str] = set()  # models known to exist
        self._arn: str | None = None  # the endpoint's ARN, once known
        #: Endpoint config name -> variant -> instance type (a config never changes, and
        #: DescribeEndpoint does not name the type: it is read once per config).
        self._types: dict[str, dict[str, str]] = {}
        self.plan = plan
        self._cloudwatch = cloudwatch
        self._cloudwatch_factory: Callable[[], Any] | None = None
        self._native: NativeBlueGreen | None = None

    @classmethod
    def from_context(cls, context: ProviderContext) -> SageMakerEndpoint:
        target = context.plan.target
        region = str(target.setting("region") or "")
        client = make_client(
            "sagemaker",
            region=region or None,
            profile=target.setting("profile"),
            endpoint_url=target.endpoint_url,
        )
        endpoint = cls(
            target.endpoint,
            client,
            context.clock,
            region=region,
            plan=context.plan,
            meter=budget_meter(context.clock, region=region, profile=target.setting("profile")),
        )
        endpoint._cloudwatch_factory = lambda: make_client(
            "cloudwatch",
            region=region or None,
            profile=target.setting("profile"),
            endpoint_url=target.metrics_url or target.endpoint_url,
        )
        return endpoint

    def preflight(self, candidate: Candidate) -> None:
        """Before any change: the endpoint exists, and the candidate's model unless the candidate
        is already deployed (a ``ProviderError``, exit 6, names what is missing)."""
        raw = self._raw()
        if _variant(raw, candidate.name) is None and candidate.model:
            self._check_model(candidate.model)
        plan = self.plan
        if (
            plan is not None
            and plan.strategy.type == "shadow"
            and needs_capture(plan)
            and not capture_on(raw.get("DataCaptureConfig"))
            and not capture_uri(plan)
            and not (raw.get("DataCaptureConfig") or {}).get("DestinationS3Uri")
        ):
            raise ProviderError(
                f"the prediction gates read SageMaker DataCapture, which is off on endpoint "
                f"{self.name!r}, and the plan names no place for it",
                hint="set target.capture_s3_uri: s3://BUCKET/PREFIX (mlrollout turns capture "
                "on for the shadow and off again after)",
            )

    # ------------------------------------------------------------------------------ plumbing

    def _call(self, operation: str, **params: Any) -> Any:
        return call(self.client, operation, retry=self.retry, meter=self.meter, **params)

    def _raw(self) -> dict[str, Any]:
        try:
            raw = dict(self._call("describe_endpoint", EndpointName=self.name))
        except AwsCallError as exc:
            if exc.code == "ValidationException" and "could not find" in str(exc).lower():
                raise ProviderError(
                    f"SageMaker endpoint {self.name!r} does not exist"
                    f"{' in ' + self.region if self.region else ''}",
                    hint="check target.endpoint and target.region (mlrollout never creates "
                    "the endpoint: it rolls out onto an existing one)",
                ) from exc
            raise
        if raw.get("EndpointArn"):
            self._arn = str(raw["EndpointArn"])
        return raw

    def _endpoint_arn(self) -> str:
        if self._arn is None:
            self._raw()  # DescribeEndpoint sets it
        if self._arn is None:
            raise ProviderError(f"SageMaker did not report the ARN of endpoint {self.name!r}")
        return self._arn

    def _config(self, name: str) -> dict[str, Any]:
        config = dict(self._call("describe_endpoint_config", EndpointConfigName=name))
        self._types[name] = {
            str(v["VariantName"]): str(v["InstanceType"])
            for v in config.get("ProductionVariants") or []
            if v.get("InstanceType")
        }
        return config

    def _known_types(self, raw: Mapping[str, Any]) -> None:
        """Learn the instance types of the live config (one DescribeEndpointConfig per config
        name; a config that cannot be read leaves them unknown)."""
        name = raw.get("EndpointConfigName")
        if name and name not in self._types:
            try:
                self._config(str(name))
            except AwsCallError:
                self._types[str(name)] = {}

    def _config_gone(self, name: str) -> bool:
        return not self._config_exists(name)

    def _config_exists(self, name: str) -> bool:
        try:
            self._config(name)
        except AwsCallError:
            return False
        return True

    def _tags(self, arn: str) -> dict[str, str]:
        tags: dict[str, str] = {}
        token: str | None = None
        while True:
            page = self._call(
                "list_tags", ResourceArn=arn, **({"NextToken": token} if token else {})
            )
            tags.update({t["Key"]: t["Value"] for t in page.get("Tags", [])})
            token = page.get("NextToken")
            if not token:
                return tags

    def _state(self, raw: Mapping[str, Any]) -> EndpointState:
        production = list(raw.get("ProductionVariants") or [])
        types = self._types.get(str(raw.get("EndpointConfigName")), {})
        weights = [_weight(v) for v in production]
        total = sum(weights)
        variants = [
            VariantState(
                name=v["VariantName"],
                weight=(100.0 * w / total) if total > 0 else 0.0,
                status=_variant_status(v),
                instance_type=(
                    v.get("CurrentInstanceType")
                    or v.get("InstanceType")
                    or types.get(str(v["VariantName"]))
                ),
                instance_count=_count(v),
            )
            for v, w in zip(production, weights, strict=True)
        ]
        for shadow in raw.get("ShadowProductionVariants") or []:
            share = 100.0 * _weight(shadow) / total if total > 0 else 0.0
            variants.append(
                VariantState(
                    name=shadow["VariantName"],
                    weight=0.0,
                    status=_variant_status(shadow),
                    instance_count=_count(shadow),
                    shadow_percent=min(100.0, share),
                )
            )
        status = str(raw.get("EndpointStatus", "Unknown"))
        return EndpointState(
            name=self.name,
            status="ready" if status == "InService" else status,
            variants=tuple(variants),
        )

    # ------------------------------------------------------------------------------ adapter

    def describe(self) -> EndpointState:
        raw = self._raw()
        self._known_types(raw)
        return self._state(raw)

    def wait_until_stable(self, timeout: float) -> EndpointState:
        return self._state(self._wait(timeout))

    def _wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Describe until ``InService`` on the injected clock; a failed state raises."""
        limit = self.update_timeout if timeout is None else timeout

        def in_service() -> dict[str, Any] | None:
            raw = self._raw()
            status = raw.get("EndpointStatus")
            if status in FAILED_STATES:
                reason = raw.get("FailureReason") or "no reason given"
                raise ProviderError(
                    f"SageMaker endpoint {self.name!r} is {status}: {reason}",
                    hint="see the endpoint's events in the SageMaker console; fix the cause, "
                    "then `mlrollout resume` (or `mlrollout abort`)",
                )
            last[:] = [raw]
            return raw if status == "InService" else None

        def timed_out() -> dict[str, Any]:
            raise ProviderError(
                f"SageMaker endpoint {self.name!r} is still {last[0].get('EndpointStatus')} "
                f"after {limit:g}s",
                hint="wait for the update to finish, then `mlrollout resume`",
            )

        last: list[dict[str, Any]] = []
        return wait_until(
            in_service, self.clock, timeout=limit, every=self.poll, on_timeout=timed_out
        )

    def prepare(self, candidate: Candidate, baseline: str) -> EndpointState:
        raw = self._raw()
        if raw.get("EndpointStatus") != "InService":
            raw = self._wait()  # an update in flight (perhaps ours, from a crashed tick)
        if _variant(raw, candidate.name) is not None:
            return self._state(raw)
        if _variant(raw, baseline) is None:
            raise ProviderError(
                f"baseline variant {baseline!r} is not on SageMaker endpoint {self.name!r} "
                f"(it has {', '.join(_names(raw)) or 'no variants'})"
            )
        assert candidate.model is not None and candidate.instance_type is not None
        self._check_model(candidate.model)
        current_name = str(raw["EndpointConfigName"])
        current = self._config(current_name)
        variants = _carried_variants(current, raw)
        if len(variants) >= naming.MAX_VARIANTS:
            raise ProviderError(
                f"SageMaker endpoint {self.name!r} already has {len(variants)} variants "
                f"(at most {naming.MAX_VARIANTS})",
                hint="remove unused variants first",
            )
        blue_count = _count(_variant(raw, baseline) or {})
        variants.append(
            {
                "VariantName": candidate.name,
                "ModelName": candidate.model,
                "InstanceType": candidate.instance_type,
                "InitialInstanceCount": candidate_capacity(candidate, blue_count),
                "InitialVariantWeight": 0.0,
            }
        )
        target = self._create_config(current, variants, base=self._base_of(current))
        self._update(target)
        raw = self._finish_update(target)
        return self._state(raw)

    def set_traffic(self, weights: Mapping[str, float]) -> EndpointState:
        raw = self._raw()
        check_weights(weights, _names(raw), where=f"SageMaker endpoint {self.name!r}")
        if self._weights_are(raw, weights):
            return self._state(raw)
        if raw.get("EndpointStatus") != "InService":
            raw = self._wait()
        desired = [
            {
                "VariantName": name,
                "DesiredWeight": round(percent / 100.0, 6),
                **({"DesiredInstanceCount": c} if (c := _count(v)) is not None else {}),
            }
            for name, percent in weights.items()
            for v in (_variant(raw, name) or {},)
        ]
        call(
            self.client,
            "update_endpoint_weights_and_capacities",
            retry=self.retry,
            meter=self.meter,
            applied=lambda: self._weights_are(self._raw(), weights),
            EndpointName=self.name,
            DesiredWeightsAndCapacities=desired,
        )
        raw = self._wait()
        if not self._weights_are(raw, weights):
            raise ProviderError(
                f"SageMaker endpoint {self.name!r} did not take the weights {dict(weights)}: "
                f"it has {self._state(raw).weights()}"
            )
        return self._state(raw)

    def set_shadow(self, variant: str | None, percent: float) -> EndpointState:
        """``variant`` as the endpoint's shadow variant sampling ``percent`` of the production
        variant's requests (a config with it in ``ShadowProductionVariants``); ``None`` (or 0)
        makes the shadow a production variant at weight 0 again. Idempotent: a shadow already
        so (or none, for ``None``) changes nothing."""
        raw = self._raw()
        if raw.get("EndpointStatus") != "InService":
            raw = self._wait()  # an update in flight (perhaps ours, from a crashed tick)
        if variant is None or percent <= 0:
            if not raw.get("ShadowProductionVariants"):
                return self._state(raw)
            return self._state(self._end_shadow(raw))
        if not (math.isfinite(percent) and 0 < percent <= naming.MAX_SHADOW_PERCENT):
            raise ProviderError(
                f"a SageMaker shadow samples above 0 and at most "
                f"{naming.MAX_SHADOW_PERCENT:g}% of the requests, not {percent:g}%"
            )
        if self._shadow_is(raw, variant, percent):
            return self._state(raw)
        return self._state(self._start_shadow(raw, variant, percent))

    def _shadow_is(self, raw: Mapping[str, Any], variant: str, percent: float) -> bool:
        shadows = [v for v in self._state(raw).variants if v.shadow_percent > 0]
        return (
            len(shadows) == 1
            and shadows[0].name == variant
            and _variant(raw, variant) is None
            and abs(shadows[0].shadow_percent - percent) <= WEIGHT_TOLERANCE
        )

    def _start_shadow(self, raw: Mapping[str, Any], variant: str, percent: float) -> dict[str, Any]:
        current = self._config(str(raw["EndpointConfigName"]))
        tags = self._config_tags(current)
        production = _carried_variants(current, raw)
        shadows = _carried_shadows(current, raw)
        spec = next((v for v in production + shadows if v["VariantName"] == variant), None)
        if spec is None:
            raise ProviderError(
                f"cannot shadow {variant!r}: not deployed on SageMaker endpoint {self.name!r} "
                f"(it has {', '.join(_names(raw)) or 'no variants'})"
            )
        others = [v for v in production if v["VariantName"] != variant]
        if len(others) != 1:
            raise ProviderError(
                f"SageMaker runs a shadow variant beside exactly one production variant; "
                f"endpoint {self.name!r} would have {len(others)} "
                f"({', '.join(v['VariantName'] for v in others) or 'none'})",
                hint="retire the other production variants first",
            )
        primary = others[0]
        weight = float(primary.get("InitialVariantWeight") or 0.0) or 1.0
        primary["InitialVariantWeight"] = weight
        shadow = {**spec, "InitialVariantWeight": round(weight * percent / 100.0, 6)}
        overrides: dict[str, Any] = {"ShadowProductionVariants": [shadow]}
        added = tags.get(naming.TAG_CAPTURE_ADDED) == "true"
        if needs_capture(self.plan) and not capture_on(current.get("DataCaptureConfig")):
            overrides["DataCaptureConfig"] = self._capture_config(current)
            added = True
        target = self._create_config(
            current,
            [primary],
            base=self._base_from(current, tags),
            overrides=overrides,
            extra_tags={naming.TAG_CAPTURE_ADDED: "true"} if added else None,
        )
        self._update(target)
        return self._finish_update(target)

    def _end_shadow(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        current = self._config(str(raw["EndpointConfigName"]))
        tags = self._config_tags(current)
        variants = _carried_variants(current, raw)
        for shadow in _carried_shadows(current, raw):
            variants.append({**shadow, "InitialVariantWeight": 0.0})
        overrides: dict[str, Any] = {"ShadowProductionVariants": None}
        if tags.get(naming.TAG_CAPTURE_ADDED) == "true":
            overrides["DataCaptureConfig"] = None  # back to the capture it had: none
        target = self._create_config(
            current, variants, base=self._base_from(current, tags), overrides=overrides
        )
        self._update(target)
        return self._finish_update(target)

    def _capture_config(self, current: Mapping[str, Any]) -> dict[str, Any]:
        """DataCapture on, both directions, every request, to the plan's
        ``target.capture_s3_uri`` (or where the disabled config pointed)."""
        was = dict(current.get("DataCaptureConfig") or {})
        uri = capture_uri(self.plan) or was.get("DestinationS3Uri")
        if not uri:
            raise ProviderError(
                f"the prediction gates read SageMaker DataCapture, which is off on endpoint "
                f"{self.name!r}, and the plan names no place for it",
                hint="set target.capture_s3_uri: s3://BUCKET/PREFIX (mlrollout turns capture "
                "on for the shadow and off again after)",
            )
        config: dict[str, Any] = {
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": str(uri),
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {
                "CsvContentTypes": ["text/csv"],
                "JsonContentTypes": ["application/json"],
            },
        }
        if was.get("KmsKeyId"):
            config["KmsKeyId"] = was["KmsKeyId"]
        return config

    def finalize(self, keep: str, retire: str) -> EndpointState:
        raw = self._raw()
        if raw.get("EndpointStatus") != "InService":
            raw = self._wait()
        current_name = str(raw["EndpointConfigName"])
        if check_finalize(
            keep, retire, self._state(raw).weights(), where=f"SageMaker endpoint {self.name!r}"
        ):
            current = self._config(current_name)
            base = self._base_of(current)
            variants = [v for v in _carried_variants(current, raw) if v["VariantName"] != retire]
            overrides: dict[str, Any] = {}
            if any(v["VariantName"] == retire for v in _carried_shadows(current, raw)):
                overrides["ShadowProductionVariants"] = None
            target = None
            if base is not None:
                target = self._fitting_base(base, variants)
            if target is None:
                target = self._create_config(current, variants, base=base, overrides=overrides)
            self._update(target)
            raw = self._finish_update(target)
            current_name = target
        self._delete_unused_configs(in_use=current_name)
        return self._state(raw)

    # ---------------------------------------------------------------------------- ownership

    def read_owner(self) -> OwnerMark | None:
        return OwnerMark.from_tags(self._tags(self._endpoint_arn()))

    def write_owner(self, mark: OwnerMark | None) -> None:
        arn = self._endpoint_arn()
        if mark is None:
            call(
                self.client,
                "delete_tags",
                retry=self.retry,
                meter=self.meter,
                applied=lambda: not any(k in self._tags(arn) for k in OWNER_KEYS),
                ResourceArn=arn,
                TagKeys=list(OWNER_KEYS),
            )
            return
        wanted = {k: _tag_value(v) for k, v in mark.to_tags().items()}

        def applied() -> bool:  # before a retry: did the lost attempt write it after all?
            tags = self._tags(arn)
            return all(tags.get(k) == v for k, v in wanted.items())

        call(
            self.client,
            "add_tags",
            retry=self.retry,
            meter=self.meter,
            applied=applied,
            ResourceArn=arn,
            Tags=[{"Key": k, "Value": v} for k, v in wanted.items()],
        )

    # ------------------------------------------------------- native blue/green (native.py)

    def _natives(self) -> NativeBlueGreen:
        if self._native is None:
            if self._cloudwatch is None:
                factory = self._cloudwatch_factory
                self._cloudwatch = (
                    factory()
                    if factory is not None
                    else make_client("cloudwatch", region=self.region or None)
                )
            self._native = NativeBlueGreen(self, self._cloudwatch, self.plan)
        return self._native

    def start_native(
        self, candidate: Candidate, baseline: str, rollout_id: str
    ) -> NativeDeployment:
        return self._natives().start(candidate, baseline, rollout_id)

    def native_status(self, rollout_id: str) -> NativeDeployment:
        return self._natives().status(rollout_id)

    def roll_back_native(self, rollout_id: str, reason: str) -> NativeDeployment:
        return self._natives().roll_back(rollout_id, reason)

    def end_native(self, rollout_id: str) -> EndpointState:
        return self._natives().end(rollout_id)

    # ------------------------------------------------------------------------------ helpers

    def _check_model(self, model: str) -> None:
        if model in self._models:
            return
        try:
            self._call("describe_model", ModelName=model)
        except AwsCallError as exc:
            if exc.code == "ValidationException":
                raise ProviderError(
                    f"SageMaker model {model!r} does not exist"
                    f"{' in ' + self.region if self.region else ''}",
                    hint="create the model first (CreateModel), or fix candidate.model",
                ) from exc
            raise
        self._models.add(model)

    def _base_of(self, config: Mapping[str, Any]) -> str | None:
        """The config the endpoint had before mlrollout touched it (None if unknown)."""
        return self._base_from(config, self._config_tags(config))

    def _config_tags(self, config: Mapping[str, Any]) -> dict[str, str]:
        """The tags of a config mlrollout made ({} for another's: never read)."""
        if not naming.is_managed_name(self.name, str(config["EndpointConfigName"])):
            return {}
        return self._tags(str(config["EndpointConfigArn"]))

    def _base_from(self, config: Mapping[str, Any], tags: Mapping[str, str]) -> str | None:
        name = str(config["EndpointConfigName"])
        if not naming.is_managed_name(self.name, name):
            return name
        return tags.get(naming.TAG_BASE)

    def _fitting_base(self, base: str, variants: list[dict[str, Any]]) -> str | None:
        """``base`` if it holds exactly ``variants`` (same names, models, instance types)."""
        try:
            config = self._config(base)
        except AwsCallError:
            return None  # deleted meanwhile: a new config will do
        have = {_identity(v) for v in config.get("ProductionVariants", [])}
        return base if have == {_identity(v) for v in variants} else None

    def _create_config(
        self,
        current: Mapping[str, Any],
        variants: list[dict[str, Any]],
        *,
        base: str | None,
        overrides: Mapping[str, Any] | None = None,
        extra_tags: Mapping[str, str] | None = None,
    ) -> str:
        """A config like ``current`` with ``variants`` (``overrides``: config keys set anew,
        ``None`` to drop one), named by its variants and shadows, tagged as mlrollout's."""
        extra = {k: current[k] for k in _CONFIG_KEYS if current.get(k)}
        for key, value in (overrides or {}).items():
            if value is None:
                extra.pop(key, None)
            else:
                extra[key] = value
        name = naming.config_name(self.name, variants, extra.get("ShadowProductionVariants") or ())
        tags = [
            {"Key": naming.TAG_MANAGED, "Value": "true"},
            {"Key": naming.TAG_ENDPOINT, "Value": self.name},
        ]
        if base:
            tags.append({"Key": naming.TAG_BASE, "Value": base})
        tags += [{"Key": k, "Value": v} for k, v in (extra_tags or {}).items()]
        self._put_config(name, variants, tags, extra)
        return name

    def _put_config(
        self,
        name: str,
        variants: list[dict[str, Any]],
        tags: list[dict[str, str]],
        extra: Mapping[str, Any],
    ) -> None:
        """CreateEndpointConfig ``name``, once: a config of that name already there is this one
        (a managed config's name is the digest of what it holds)."""
        try:
            call(
                self.client,
                "create_endpoint_config",
                retry=self.retry,
                meter=self.meter,
                # Asked before each retry: a lost response may hide a config that was made.
                applied=lambda: self._config_exists(name),
                EndpointConfigName=name,
                ProductionVariants=variants,
                Tags=tags,
                **extra,
            )
        except AwsCallError as exc:
            # The same name holds the same variants (it is their digest): made by an earlier,
            # interrupted attempt. Anything else is a real failure.
            if not (exc.code == "ValidationException" and "already exist" in str(exc).lower()):
                raise

    def _update(self, config: str) -> None:
        def applied() -> bool:
            raw = self._raw()
            pending = (raw.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
            return config in (raw.get("EndpointConfigName"), pending)

        call(
            self.client,
            "update_endpoint",
            retry=self.retry,
            meter=self.meter,
            applied=applied,
            EndpointName=self.name,
            EndpointConfigName=config,
            RetainAllVariantProperties=True,
        )

    def _finish_update(self, config: str) -> dict[str, Any]:
        try:
            raw = self._wait()
        except ProviderError:
            # The wait gave up (a failed state, a timeout, retries run out): the config is left
            # alone while the endpoint uses it or an update to it still runs.
            raw = self._raw()
            pending = (raw.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
            if config not in (raw.get("EndpointConfigName"), pending):
                self._delete_unused_configs(in_use=raw.get("EndpointConfigName"), only=config)
            raise
        if raw.get("EndpointConfigName") != config:
            reason = raw.get("FailureReason") or "SageMaker rolled the update back"
            self._delete_unused_configs(in_use=raw.get("EndpointConfigName"), only=config)
            raise ProviderError(
                f"UpdateEndpoint of {self.name!r} to config {config!r} failed: {reason}",
                hint="nothing changed on the endpoint; fix the cause, then `mlrollout resume`",
            )
        return raw

    def _delete_unused_configs(self, *, in_use: Any, only: str | None = None) -> list[str]:
        """Delete endpoint configs mlrollout created for this endpoint (by name and tag) that the
        endpoint no longer uses; ``only`` restricts it to that one config."""
        names: list[str] = []
        if only is not None:
            names = [only]
        else:
            token: str | None = None
            while True:
                page = self._call(
                    "list_endpoint_configs",
                    NameContains=naming.config_prefix(self.name),
                    MaxResults=100,
                    **({"NextToken": token} if token else {}),
                )
                names += [c["EndpointConfigName"] for c in page.get("EndpointConfigs", [])]
                token = page.get("NextToken")
                if not token:
                    break
        deleted = []
        for name in names:
            if name == in_use or not naming.is_managed_name(self.name, name):
                continue
            try:
                config = self._config(name)
                tags = self._tags(str(config["EndpointConfigArn"]))
            except AwsCallError:
                continue  # already gone
            if tags.get(naming.TAG_MANAGED) != "true" or tags.get(naming.TAG_ENDPOINT) != self.name:
                continue  # looks like ours but is not tagged so: never touch it
            try:
                call(
                    self.client,
                    "delete_endpoint_config",
                    retry=self.retry,
                    meter=self.meter,
                    applied=functools.partial(self._config_gone, name),
                    EndpointConfigName=name,
                )
            except AwsCallError as exc:
                if "could not find" not in str(exc).lower():
                    raise
            deleted.append(name)
        return deleted

    def _weights_are(self, raw: Mapping[str, Any], weights: Mapping[str, float]) -> bool:
        live = self._state(raw).weights()
        return all(abs(live.get(n, 0.0) - w) <= WEIGHT_TOLERANCE for n, w in weights.items())


def _tag_value(value: str) -> str:
    """``value`` as a SageMaker tag value: at most 256 letters, digits, spaces and ``_.:/=+-@``
    (a holder named after an unusual user or host name must not fail the write)."""
    return _TAG_UNSAFE.sub("_", value)[:256]


def _weight(variant: Mapping[str, Any]) -> float:
    for key in ("CurrentWeight", "DesiredWeight"):
        if variant.get(key) is not None:
            return float(variant[key])
    return 0.0


def _count(variant: Mapping[str, Any]) -> int | None:
    for key in ("CurrentInstanceCount", "DesiredInstanceCount"):
        if variant.get(key) is not None:
            return int(variant[key])
    return None


def _variant_status(variant: Mapping[str, Any]) -> str:
    statuses = variant.get("VariantStatus") or []
    if not statuses:
        return "ready"
    status = str(statuses[-1].get("Status", "ready"))
    return "ready" if status == "ActivatingTraffic" else status


def _names(raw: Mapping[str, Any]) -> list[str]:
    return [v["VariantName"] for v in raw.get("ProductionVariants") or []]


def _variant(raw: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    return next((v for v in raw.get("ProductionVariants") or [] if v["VariantName"] == name), None)


def _identity(variant: Mapping[str, Any]) -> tuple[str, str, str]:
    return (
        str(variant.get("VariantName")),
        str(variant.get("ModelName")),
        str(variant.get("InstanceType") or variant.get("ServerlessConfig")),
    )


def _carried_shadows(config: Mapping[str, Any], raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The config's shadow variants, at their configured sampling weight and live counts."""
    live = {v["VariantName"]: v for v in raw.get("ShadowProductionVariants") or []}
    return [
        _carried(
            spec,
            float(spec.get("InitialVariantWeight", 0.0)),
            _count(live.get(spec["VariantName"], {})),
        )
        for spec in config.get("ShadowProductionVariants") or []
    ]


def _carried_variants(config: Mapping[str, Any], raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The live config's production variants at their live weights and instance counts."""
    out = []
    for spec in config.get("ProductionVariants", []):
        live = _variant(raw, spec["VariantName"]) or {}
        weight = _weight(live) if live else spec.get("InitialVariantWeight", 0.0)
        out.append(_carried(spec, weight, _count(live) if live else None))
    return out


def _carried(spec: Mapping[str, Any], weight: object, count: object) -> dict[str, Any]:
    """A config's variant ``spec`` as a variant of a new config: at ``weight``, with ``count``
    instances (the live count; None: the configured one), no count for a serverless one."""
    variant = {k: spec[k] for k in _VARIANT_KEYS if spec.get(k) is not None}
    variant["InitialVariantWeight"] = weight
    if count is None:
        count = spec.get("InitialInstanceCount")
    if count is not None and "ServerlessConfig" not in variant:
        variant["InitialInstanceCount"] = count
    return variant
