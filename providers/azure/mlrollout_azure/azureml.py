"""An Azure ML managed online endpoint, driven through ``azure.ai.ml.MLClient``.

Variants are the endpoint's deployments; weights are its ``traffic`` (whole percents summing to
100), shadow is its ``mirror_traffic`` (one deployment, at most 50 %). Every mutation first reads
the endpoint and does nothing when it already is as asked (a resumed tick never applies a change
twice), then begins the long-running operation and waits for it on the rollout's clock, with a
timeout, and confirms the result with a GET (the operation's poller may stop on a transient error;
the resource is the truth). A mutation whose answer is lost (a 503 or a dropped connection after
the service took it) is not simply sent again: before each retry ``applied()`` reads the endpoint
or deployment (waiting out an update still running) and, when the change is in effect, the call
ends there and the wait confirms it.

Calls per action (ARM requests; ``*`` = repeated while the operation runs):

- ``describe``: GET endpoint + GET deployments (the SDK's ``online_endpoints.get``), GET
  deployments; the first time also GET workspace and GET the candidate's model version.
- ``prepare``: GET baseline deployment, (SDK: GET endpoint, GET deployments, GET workspace), PUT
  deployment, GET operation*, GET deployment; then ``describe``.
- ``set_traffic`` / ``set_shadow``: GET endpoint (+ deployments), (SDK: GET workspace) PUT endpoint,
  GET operation*, GET endpoint; then ``describe``.
- ``finalize``: DELETE deployment, GET operation*, GET deployment (404); then ``describe``.
- a retry of a write (after a transient error): first GET endpoint (+ deployments) or GET
  deployment, to ask whether the lost attempt applied; then the write again only if it did not.
- ``read_owner``: GET endpoint (the mark is three of its ``tags``; one request, through the ARM
  client ``MLClient.online_endpoints`` itself uses, without the SDK's deployments listing).
- ``write_owner``: GET endpoint, then — unless the tags already are as asked — PATCH endpoint
  ``{"tags": ...}`` (ARM's ``OnlineEndpoints_Update``: tags and identity only, so it cannot touch
  ``traffic`` or ``mirror_traffic``; the SDK's ``begin_create_or_update`` would PUT the whole
  endpoint as it was read, undoing a traffic change made since), GET operation*, GET endpoint.
  PATCH replaces the tags whole: the write carries every other tag as it was read.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from mlrollout.adapters import (
    candidate_capacity,
    check_finalize,
    check_weights,
    wait_until,
    whole_percents,
)
from mlrollout.budget import Meter
from mlrollout.clock import Clock
from mlrollout.contracts import (
    OWNER_KEYS,
    Capabilities,
    EndpointState,
    OwnerMark,
    ProviderContext,
    VariantState,
)
from mlrollout.errors import ProviderError
from mlrollout.plan.model import Candidate
from mlrollout.retry import RetryPolicy
from mlrollout.units import format_duration
from mlrollout_azure import _azure
from mlrollout_azure.spec import CAPABILITIES, MAX_MIRROR_PERCENT, MODEL_REF

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # marshmallow deprecation noise from azure-ai-ml's schemas
    from azure.ai.ml import MLClient
    from azure.ai.ml.entities import ManagedOnlineDeployment, OnlineDeployment, OnlineEndpoint
    from azure.core.exceptions import ResourceNotFoundError

#: How long a deployment may take to provision (Azure ML typically takes 5-15 minutes).
LRO_TIMEOUT = 45 * 60.0
#: How often the wait looks at a long-running operation, in clock seconds.
POLL_EVERY = 10.0
#: Real seconds to let the SDK's poller thread catch up per look when the clock is virtual.
VIRTUAL_GRACE = 0.05
_MODEL_ID = re.compile(r"/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)$")
_DONE = {"succeeded", "failed", "canceled"}
_BUSY = ("creating", "updating")
T = TypeVar("T")


@dataclass(frozen=True)
class AzureTarget:
    subscription_id: str
    resource_group: str
    workspace: str
    endpoint: str
    endpoint_url: str | None = None

    @property
    def workspace_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{self.workspace}"
        )

    @property
    def endpoint_id(self) -> str:
        return f"{self.workspace_id}/onlineEndpoints/{self.endpoint}"

    @property
    def where(self) -> str:
        return f"workspace {self.workspace!r} (resource group {self.resource_group!r})"


class AzureMLEndpoint:
    """The :class:`~mlrollout.contracts.EndpointAdapter` for one managed online endpoint."""

    capabilities: Capabilities = CAPABILITIES

    def __init__(
        self,
        client: MLClient,
        target: AzureTarget,
        clock: Clock,
        *,
        candidate: Candidate | None = None,
        retry: RetryPolicy | None = None,
        lro_timeout: float = LRO_TIMEOUT,
        poll_every: float = POLL_EVERY,
        mirrors: bool = False,
        meter: Meter | None = None,
    ) -> None:
        self.client = client
        #: the plan judges the candidate on mirror_traffic (shadow, blue-green with preview 0)
        self.mirrors = mirrors
        self.target = target
        self.clock = clock
        self.candidate = candidate
        self.retry = retry or _azure.retry_policy(clock)
        #: The API budget of the subscription (None: calls are not budgeted).
        self.meter = meter
        self.lro_timeout = lro_timeout
        self.poll_every = poll_every
        self.location: str | None = None
        self._checked = False

    @classmethod
    def from_context(cls, context: ProviderContext, credential: Any) -> AzureMLEndpoint:
        target = target_of(context)
        _azure.quiet_sdk_loggers()
        client = _azure.ml_client(target, credential)
        from mlrollout.capture.checks import mirrors

        return cls(
            client,
            target,
            context.clock,
            candidate=context.plan.candidate,
            mirrors=mirrors(context.plan),
            meter=_azure.budget_meter(context.clock, target.subscription_id),
        )

    # ------------------------------------------------------------------------------ calls

    def _call(
        self,
        fn: Callable[[], Any],
        action: str,
        what: str,
        permission: str,
        *,
        applied: Callable[[], bool] | None = None,
    ) -> Any:
        """``fn()`` through :func:`_azure.call`; a mutation passes ``applied`` (then the result
        is None when a retry found the change already in effect)."""
        return _azure.call(
            self.retry,
            fn,
            action=action,
            what=what,
            permission=permission,
            applied=applied,
            meter=self.meter,
        )

    def _endpoint(self) -> OnlineEndpoint:
        t = self.target
        endpoint: OnlineEndpoint = self._call(
            lambda: self.client.online_endpoints.get(t.endpoint),
            f"read online endpoint {t.endpoint!r}",
            f"online endpoint {t.endpoint!r} in {t.where}",
            "read",
        )
        return endpoint

    def _deployments(self) -> list[OnlineDeployment]:
        t = self.target
        deployments: list[OnlineDeployment] = self._call(
            lambda: list(self.client.online_deployments.list(t.endpoint)),
            f"list the deployments of {t.endpoint!r}",
            f"online endpoint {t.endpoint!r} in {t.where}",
            "read",
        )
        return deployments

    def _deployment(self, name: str) -> OnlineDeployment | None:
        t = self.target

        def get() -> OnlineDeployment | None:
            try:
                found: OnlineDeployment = self.client.online_deployments.get(name, t.endpoint)
                return found
            except ResourceNotFoundError:
                return None

        found: OnlineDeployment | None = self._call(
            get, f"read deployment {name!r}", f"deployment {name!r}", "read"
        )
        return found

    def _settled_endpoint(self) -> OnlineEndpoint:
        """The endpoint once no update runs on it (the one whose answer was lost may still be
        running), waiting on the clock for at most the operation timeout."""
        last: list[OnlineEndpoint] = []

        def settled() -> OnlineEndpoint | None:
            last[:] = [self._endpoint()]
            return None if _status(last[0].provisioning_state) in _BUSY else last[0]

        return self._poll(settled, lambda: last[0], self.lro_timeout)

    # ----------------------------------------------------------------------------- checks

    def _preflight(self) -> None:
        """Once: the workspace, the endpoint and the candidate's model exist and are readable,
        so that a wrong name or a missing permission stops before any change (exit 6)."""
        t = self.target
        workspace = self._call(
            lambda: self.client.workspaces.get(t.workspace),
            f"read workspace {t.workspace!r}",
            f"workspace {t.workspace!r} in resource group {t.resource_group!r} "
            f"(subscription {t.subscription_id})",
            "read",
        )
        self.location = str(workspace.location or "") or None
        candidate = self.candidate
        if self.mirrors and candidate is not None:
            self._check_mirror_free(candidate.name)
        if candidate is not None and candidate.model:
            match = MODEL_REF.match(candidate.model)
            if match is not None:
                name, version = match["name"], match["version"]
                self._call(
                    lambda: self.client.models.get(name, version=version),
                    f"read model {name}:{version}",
                    f"model {name!r} version {version!r} in {t.where}",
                    "model",
                )

    # ---------------------------------------------------------------------------- adapter

    def describe(self) -> EndpointState:
        if not self._checked:
            self._preflight()
        state = self._state()
        self._checked = True
        return state

    def _state(self) -> EndpointState:
        endpoint = self._endpoint()
        deployments = self._deployments()
        traffic = {k: int(v) for k, v in (endpoint.traffic or {}).items()}
        mirror = {k: int(v) for k, v in (endpoint.mirror_traffic or {}).items()}
        variants = tuple(
            VariantState(
                name=str(d.name),
                weight=float(traffic.get(str(d.name), 0)),
                status=_status(d.provisioning_state),
                model=_model_ref(d.model),
                instance_type=d.instance_type,
                instance_count=d.instance_count,
                shadow_percent=float(mirror.get(str(d.name), 0)),
            )
            for d in sorted(deployments, key=lambda d: (-traffic.get(str(d.name), 0), d.name))
        )
        return EndpointState(
            name=self.target.endpoint,
            status=_status(endpoint.provisioning_state),
            variants=variants,
        )

    def prepare(self, candidate: Candidate, baseline: str) -> EndpointState:
        t = self.target
        existing = self._deployment(candidate.name)
        if existing is not None and _status(existing.provisioning_state) == "ready":
            return self.describe()
        if existing is not None and _status(existing.provisioning_state) in (
            "creating",
            "updating",
        ):
            self._await_deployment(candidate.name, None)  # a resumed rollout: finish waiting
            return self.describe()
        base = self._deployment(baseline)
        if base is None:
            raise ProviderError(
                f"the baseline deployment {baseline!r} is not on online endpoint {t.endpoint!r}"
            )
        if not candidate.model:
            raise ProviderError("the candidate needs a model (candidate.model)")
        model = candidate.model
        if MODEL_REF.match(model) and not model.startswith("azureml:"):
            model = "azureml:" + model
        deployment = ManagedOnlineDeployment(
            name=candidate.name,
            endpoint_name=t.endpoint,
            model=model,
            instance_type=candidate.instance_type or base.instance_type,
            instance_count=candidate_capacity(candidate, base.instance_count),
            environment=base.environment,
            code_configuration=base.code_configuration,
            environment_variables=dict(base.environment_variables or {}) or None,
            request_settings=base.request_settings,
            liveness_probe=base.liveness_probe,
            readiness_probe=base.readiness_probe,
            app_insights_enabled=bool(getattr(base, "app_insights_enabled", False)),
        )
        # The baseline's data collector too: a shadow judged on predictions needs the
        # candidate's records (the SDK's serializer consumes it: a fresh one per attempt).
        collector = getattr(base, "data_collector", None)

        def create() -> Any:
            deployment.data_collector = _collector_like(collector)
            return self.client.online_deployments.begin_create_or_update(deployment)

        def applied() -> bool:  # before a retry: did the lost attempt create it after all?
            found = self._deployment(candidate.name)
            if found is None:
                return False
            return existing is None or _status(found.provisioning_state) in (*_BUSY, "ready")

        with _azure.quiet():
            poller = self._call(
                create,
                f"create deployment {candidate.name!r} on {t.endpoint!r}",
                f"online endpoint {t.endpoint!r} or model {candidate.model!r} in {t.where}",
                "deploy",
                applied=applied,
            )
            self._await_deployment(candidate.name, poller)
        return self.describe()

    def _check_mirror_free(self, candidate: str) -> None:
        """Before anything changes: a plan that mirrors to the candidate cannot run while the
        endpoint mirrors to another deployment (Azure ML mirrors to one)."""
        others = {
            k: v for k, v in _nonzero(self._endpoint().mirror_traffic).items() if k != candidate
        }
        if others:
            raise _mirror_taken(candidate, self.target.endpoint, others)

    def set_traffic(self, weights: Mapping[str, float]) -> EndpointState:
        endpoint = self._endpoint()
        deployed = [*(endpoint.traffic or {})]
        deployed += [name for name in endpoint.mirror_traffic or {} if name not in deployed]
        check_weights(
            weights,
            deployed,
            where=f"online endpoint {self.target.endpoint!r}",
            kind="deployment",
        )
        target = whole_percents(weights)
        if _nonzero(endpoint.traffic) == {k: v for k, v in target.items() if v}:
            return self.describe()
        endpoint.traffic = dict(target)
        self._update_endpoint(endpoint, f"set the traffic of {self.target.endpoint!r}")
        return self.describe()

    def set_shadow(self, variant: str | None, percent: float) -> EndpointState:
        if not (math.isfinite(percent) and 0 <= percent <= MAX_MIRROR_PERCENT):
            raise ProviderError(
                f"Azure ML mirrors at most {MAX_MIRROR_PERCENT:g}% of live traffic, not "
                f"{percent:g}%"
            )
        endpoint = self._endpoint()
        current = _nonzero(endpoint.mirror_traffic)
        # The rollout's own mirror is the one it changes; a mirror to another deployment is
        # someone else's shadow test: stopping ours keeps it, starting ours refuses to take it
        # over (Azure ML mirrors to one deployment).
        ours = variant if variant is not None else getattr(self.candidate, "name", None)
        others = {k: v for k, v in current.items() if k != ours} if ours is not None else {}
        share = round(percent) if variant is not None else 0
        wanted = {**others, **({variant: share} if variant is not None and share > 0 else {})}
        if current == wanted:
            return self.describe()
        if variant is not None and endpoint.traffic.get(variant):
            raise ProviderError(
                f"cannot mirror traffic to {variant!r}: it takes live traffic (Azure ML mirrors "
                "only to a deployment at 0 %)"
            )
        if share > 0 and others:
            raise _mirror_taken(variant or "", self.target.endpoint, others)
        endpoint.mirror_traffic = {**{k: 0 for k in current}, **wanted}
        self._update_endpoint(endpoint, f"set the mirror traffic of {self.target.endpoint!r}")
        return self.describe()

    def finalize(self, keep: str, retire: str) -> EndpointState:
        t = self.target
        state = self.describe()
        if not check_finalize(
            keep,
            retire,
            state.weights(),
            where=f"online endpoint {t.endpoint!r}",
            shadow={v.name: v.shadow_percent for v in state.variants},
            kind="deployment",
        ):
            return state  # already retired

        def applied() -> bool:  # before a retry: did the lost attempt delete it after all?
            found = self._deployment(retire)
            return found is None or _status(found.provisioning_state) == "deleting"

        with _azure.quiet():
            poller = self._call(
                lambda: self.client.online_deployments.begin_delete(retire, t.endpoint),
                f"delete deployment {retire!r} of {t.endpoint!r}",
                f"deployment {retire!r} in {t.where}",
                "delete",
                applied=applied,
            )
            self._wait(poller, f"deleting deployment {retire!r}", lambda: self._deleted(retire))
        return self.describe()

    def wait_until_stable(self, timeout: float) -> EndpointState:
        last: list[EndpointState] = []

        def stable() -> EndpointState | None:
            last[:] = [self.describe()]
            busy = [v.name for v in last[0].variants if v.status not in ("ready", "failed")]
            return last[0] if last[0].status == "ready" and not busy else None

        def timed_out() -> EndpointState:
            state = last[0]
            busy = [v.name for v in state.variants if v.status not in ("ready", "failed")]
            raise ProviderError(
                f"online endpoint {self.target.endpoint!r} is still {state.status} "
                f"({', '.join(busy) or 'no deployment'} busy) after {format_duration(timeout)}"
            )

        return self._poll(stable, timed_out, timeout)

    # --------------------------------------------------------------------------- ownership

    def read_owner(self) -> OwnerMark | None:
        return OwnerMark.from_tags(_tags_of(self._arm_endpoint()))

    def write_owner(self, mark: OwnerMark | None) -> None:
        t = self.target
        tags = _tags_of(self._arm_endpoint())
        wanted = {k: v for k, v in tags.items() if k not in OWNER_KEYS}
        if mark is not None:
            wanted.update(mark.to_tags())
        if wanted == tags:
            return
        ours = _owner_tags(wanted)
        operations = self._arm_operations()
        action = (
            f"mark the owner on online endpoint {t.endpoint!r}"
            if mark is not None
            else f"remove the owner mark from online endpoint {t.endpoint!r}"
        )
        with _azure.quiet():
            poller = self._call(
                lambda: operations.begin_update(
                    resource_group_name=t.resource_group,
                    workspace_name=t.workspace,
                    endpoint_name=t.endpoint,
                    body={"tags": wanted},
                    polling=False,  # no poller thread: the GETs of ``check`` confirm it
                ),
                action,
                f"online endpoint {t.endpoint!r} in {t.where}",
                "write",
                # before a retry: did the lost attempt write the mark after all?
                applied=lambda: _owner_tags(self._settled_endpoint().tags or {}) == ours,
            )

            sent = self.clock.now()

            def check() -> str | None:
                live = self._arm_endpoint()
                status = _status(live.properties.provisioning_state)
                if status not in ("ready", "failed", "canceled"):
                    return None
                if _owner_tags(_tags_of(live)) == ours:
                    return "ok"
                if status == "ready" and self.clock.now() - sent < 3 * self.poll_every:
                    return None  # accepted, not begun yet (there is no poller to ask)
                return f"the endpoint is {status} with tags {_tags_of(live)}"

            self._wait(poller, action, check)

    def _arm_operations(self) -> Any:
        """The ARM operations on online endpoints that ``MLClient.online_endpoints`` calls itself
        (azure-ai-ml's generated client, on MLClient's pipeline: same credential, cloud and
        retry settings). MLClient has no public PATCH of an endpoint."""
        operations = getattr(self.client.online_endpoints, "_online_operation", None)
        if operations is None or not hasattr(operations, "begin_update"):
            raise ProviderError(
                "this azure-ai-ml has no ARM client for online endpoints to write the ownership "
                "mark (tags) with",
                hint="install the azure-ai-ml version mlrollout-azure is tested with "
                "(pip install -U 'mlrollout[azure]')",
            )
        return operations

    def _arm_endpoint(self) -> Any:
        """The endpoint as ARM returns it, in one GET (for its tags and provisioning state)."""
        t = self.target
        operations = self._arm_operations()
        return self._call(
            lambda: operations.get(
                resource_group_name=t.resource_group,
                workspace_name=t.workspace,
                endpoint_name=t.endpoint,
            ),
            f"read online endpoint {t.endpoint!r}",
            f"online endpoint {t.endpoint!r} in {t.where}",
            "read",
        )

    # -------------------------------------------------------------------------- operations

    def _update_endpoint(self, endpoint: OnlineEndpoint, action: str) -> None:
        t = self.target
        want_traffic = _nonzero(endpoint.traffic)
        want_mirror = _nonzero(endpoint.mirror_traffic)

        def in_effect(live: OnlineEndpoint) -> bool:
            return (_nonzero(live.traffic), _nonzero(live.mirror_traffic)) == (
                want_traffic,
                want_mirror,
            )

        with _azure.quiet():
            poller = self._call(
                lambda: self.client.online_endpoints.begin_create_or_update(endpoint),
                action,
                f"online endpoint {t.endpoint!r} in {t.where}",
                "write",
                # before a retry: did the lost attempt update it after all?
                applied=lambda: in_effect(self._settled_endpoint()),
            )

            def check() -> str | None:
                live = self._endpoint()
                status = _status(live.provisioning_state)
                if status not in ("ready", "failed"):
                    return None
                if in_effect(live):
                    return "ok"
                if status == "ready" and poller is not None and not poller.done():
                    return None  # the update has not begun yet
                traffic, mirror = _nonzero(live.traffic), _nonzero(live.mirror_traffic)
                return f"the endpoint is {status} with traffic {traffic}, mirror {mirror}"

            self._wait(poller, action, check)

    def _await_deployment(self, name: str, poller: Any) -> None:
        def check() -> str | None:
            deployment = self._deployment(name)
            if deployment is None:
                return f"deployment {name!r} disappeared"
            status = _status(deployment.provisioning_state)
            if status == "ready":
                return "ok"
            if status in ("failed", "canceled"):
                return f"deployment {name!r} provisioning ended {status.capitalize()}"
            return None

        self._wait(poller, f"provisioning deployment {name!r}", check)

    def _wait(self, poller: Any, what: str, check: Callable[[], str | None]) -> None:
        """Wait for a long-running operation on the rollout's clock, with a timeout, reading the
        resource with ``check`` (a GET: ``None`` still busy, ``"ok"`` done, else the failure).

        The SDK's poller polls the operation on its own thread (every 5 s of real time for a
        deployment); it is only asked for the operation's error message. The resource decides:
        a poller that gave up on a 429/503 changes nothing, and a virtual clock needs no real
        waiting."""

        def finished() -> bool | None:
            outcome = check()
            if outcome == "ok":
                return True
            if outcome is None:
                return None
            error = _poller_error(poller, VIRTUAL_GRACE if self._virtual else self.poll_every)
            reason = f": {error}" if error else ""
            raise ProviderError(
                f"{what} on online endpoint {self.target.endpoint!r} failed{reason} ({outcome})",
                hint="see `az ml online-deployment get-logs`; `mlrollout resume` retries, "
                "`mlrollout abort` rolls back",
            )

        def timed_out() -> bool:
            raise ProviderError(
                f"{what} on online endpoint {self.target.endpoint!r} did not finish within "
                f"{format_duration(self.lro_timeout)}",
                hint="`mlrollout resume` waits again; the operation goes on in Azure",
            )

        self._poll(finished, timed_out, self.lro_timeout)

    def _poll(self, poll: Callable[[], T | None], on_timeout: Callable[[], T], timeout: float) -> T:
        """:func:`~mlrollout.adapters.wait_until` every ``poll_every`` clock seconds."""
        return wait_until(
            poll, self.clock, timeout=timeout, every=self.poll_every, on_timeout=on_timeout
        )

    @property
    def _virtual(self) -> bool:
        return bool(getattr(self.clock, "virtual", False))

    def _deleted(self, name: str) -> str | None:
        deployment = self._deployment(name)
        if deployment is None:
            return "ok"
        status = _status(deployment.provisioning_state)
        if status == "failed":
            return f"deployment {name!r} is Failed and was not deleted"
        return None


# ------------------------------------------------------------------------------------ helpers


def target_of(context: ProviderContext) -> AzureTarget:
    target = context.plan.target
    missing = [
        k for k in ("subscription_id", "resource_group", "workspace") if not target.setting(k)
    ]
    if missing:
        raise ProviderError(f"provider 'azureml' needs target.{', target.'.join(missing)}")
    return AzureTarget(
        subscription_id=str(target.setting("subscription_id")),
        resource_group=str(target.setting("resource_group")),
        workspace=str(target.setting("workspace")),
        endpoint=target.endpoint,
        endpoint_url=target.endpoint_url,
    )


def _collector_like(collector: Any) -> Any:
    """A data collector configured as ``collector`` (the baseline's), for the candidate: the same
    collections, sampling, rolling rate and request logging, but not the baseline's data assets:
    the SDK registers the candidate's own (``{endpoint}-{deployment}-{collection}``, at the
    default path ``modelDataCollector/{endpoint}/{deployment}/{collection}``)."""
    if collector is None or not getattr(collector, "collections", None):
        return None
    from azure.ai.ml.entities import DataCollector, DeploymentCollection

    collections = {
        str(name): DeploymentCollection(
            enabled=getattr(c, "enabled", None), client_id=getattr(c, "client_id", None)
        )
        for name, c in collector.collections.items()
    }
    return DataCollector(
        collections,
        rolling_rate=getattr(collector, "rolling_rate", None),
        sampling_rate=getattr(collector, "sampling_rate", None),
        request_logging=copy.deepcopy(getattr(collector, "request_logging", None)),
    )


def _mirror_taken(variant: str, endpoint: str, others: Mapping[str, int]) -> ProviderError:
    mirrored = ", ".join(f"{k!r} ({v} %)" for k, v in sorted(others.items()))
    return ProviderError(
        f"cannot mirror traffic to {variant!r}: online endpoint {endpoint!r} already mirrors "
        f"to {mirrored}, and Azure ML mirrors to one deployment only",
        hint="end the other shadow test first (set its mirror_traffic to 0), then run again",
    )


def _nonzero(split: Mapping[str, Any] | None) -> dict[str, int]:
    """A traffic or mirror split without its zero entries (Azure drops them)."""
    return {k: int(v) for k, v in (split or {}).items() if v}


def _tags_of(endpoint: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (getattr(endpoint, "tags", None) or {}).items()}


def _owner_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """The ownership mark's tags among ``tags``."""
    return {k: str(v) for k, v in tags.items() if k in OWNER_KEYS}


def _status(state: Any) -> str:
    text = str(getattr(state, "value", state) or "unknown").lower()
    return "ready" if text == "succeeded" else text


def _model_ref(model: Any) -> str | None:
    if model is None:
        return None
    text = str(getattr(model, "id", None) or model)
    match = _MODEL_ID.search(text)
    return f"{match['name']}:{match['version']}" if match else text


def _poller_error(poller: Any, grace: float) -> str | None:
    """The operation's error message, if its poller has it within ``grace`` real seconds."""
    if poller is None:
        return None
    try:
        poller.wait(grace)
    except Exception as exc:
        return _azure.describe_error(exc)
    return None
