"""A Vertex AI online prediction endpoint as an :class:`~mlrollout.contracts.EndpointAdapter`.

Variants are the endpoint's deployed models, named by their display name (the plan's
``candidate.name``); the split is the endpoint's ``trafficSplit`` (deployed-model id → integer
percent, summing to 100). Calls, all through ``aiplatform_v1.EndpointServiceClient`` on the REST
transport (the gRPC default hangs against emulators and needs more plumbing behind proxies):

- describe: ``GetEndpoint`` (``ListEndpoints`` once when the plan names the endpoint by its display
  name; ``GetModel`` once, before any change, to check the candidate's model exists);
- prepare: ``ListOperations`` (an operation still running on the endpoint — a lost response, a
  crashed runner's deployment — is waited for, never repeated), then ``DeployModel`` with a
  ``trafficSplit`` that keeps the current split (100 % on the baseline) and gives ``"0"`` — the
  model being deployed — 0 %, then ``GetOperation`` polls on the injected clock until the
  long-running operation is done or ``deploy_timeout`` passes;
- set_traffic: ``UpdateEndpoint`` with update mask ``traffic_split`` (integer percents summing to
  100, rounded by largest remainder);
- finalize: ``ListOperations`` as for prepare, ``UndeployModel`` of the retired model with the
  final split, then ``GetOperation``;
- read_owner: ``GetEndpoint`` (the mark is three of the endpoint's ``labels``);
- write_owner: ``GetEndpoint``, then — unless the labels already are as asked — ``UpdateEndpoint``
  with update mask ``labels`` and the endpoint's labels with ours set (``OwnerMark.to_tags(
  label_safe=True)``: lowercase, at most 63 characters) or removed (``None``). The mask makes the
  service change the labels and nothing else (no traffic change, no redeploy); the map is replaced
  whole, so the write carries every other label as it was read.

Every mutation is idempotent: it is skipped when the endpoint already shows it, and a retried call
first checks whether the earlier attempt took effect.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.api_core.client_options import ClientOptions
from google.cloud import aiplatform_v1
from google.protobuf import field_mask_pb2

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
from mlrollout_gcp._gcp import (
    GcpCallError,
    budget_meter,
    call,
    credentials_for,
    map_error,
)
from mlrollout_gcp.spec import CAPABILITIES

_RESOURCE = re.compile(r"^projects/[^/]+/locations/[^/]+/endpoints/[^/]+$")
_MODEL_RESOURCE = re.compile(r"^projects/[^/]+/locations/[^/]+/models/[^/]+$")
CALL_TIMEOUT = 60.0  # seconds per HTTP request
DEPLOY_TIMEOUT = 3600.0  # a deployment can take tens of minutes (machines start, images pull)
POLL_FIRST, POLL_MAX = 5.0, 30.0


@dataclass(frozen=True)
class DeployedModel:
    id: str
    name: str  # display name (the variant's name); the id when it has none
    model: str
    machine_type: str | None
    replicas: int | None  # minReplicaCount: the capacity always running
    max_replicas: int | None = None  # maxReplicaCount (autoscaling's ceiling)


def _owner_labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k in OWNER_KEYS}


class VertexEndpoint:
    """One Vertex AI endpoint, named by id, resource name or display name."""

    capabilities: Capabilities = CAPABILITIES

    def __init__(
        self,
        endpoint: str,
        client: Any,
        clock: Clock,
        *,
        project: str,
        location: str,
        model_client: Any = None,
        candidate: Candidate | None = None,
        retry: RetryPolicy | None = None,
        deploy_timeout: float = DEPLOY_TIMEOUT,
        meter: Meter | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.client = client
        self.model_client = model_client
        self.clock = clock
        self.project = project
        self.location = location
        self.candidate = candidate
        self.retry = retry or RetryPolicy(sleep=clock.sleep)
        #: The API budget of the project and region (None: calls are not budgeted).
        self.meter = meter
        self.deploy_timeout = deploy_timeout
        self._resource: str | None = None
        self._model_checked = False
        #: Display name → deployed model id, for every deployed model seen (the metrics source
        #: reads it; ids never change, and a retired model keeps its metrics).
        self.ids: dict[str, str] = {}

    @classmethod
    def from_context(cls, context: ProviderContext) -> VertexEndpoint:
        target = context.plan.target
        location = str(target.setting("location") or "")
        project = str(target.setting("project") or "")
        url = target.endpoint_url
        credentials = credentials_for(url, what="Vertex AI")
        options = ClientOptions(api_endpoint=url or f"{location}-aiplatform.googleapis.com")
        try:
            client = aiplatform_v1.EndpointServiceClient(
                transport="rest", client_options=options, credentials=credentials
            )
            models = aiplatform_v1.ModelServiceClient(
                transport="rest", client_options=options, credentials=credentials
            )
        except Exception as exc:
            mapped = map_error("get_endpoint", exc)
            if mapped is exc:
                raise
            raise mapped from exc
        return cls(
            target.endpoint,
            client,
            context.clock,
            project=project,
            location=location,
            model_client=models,
            candidate=context.plan.candidate,
            meter=budget_meter(context.clock, project=project, location=location),
        )

    # ------------------------------------------------------------------------------ plumbing

    def _call(self, operation: str, *, applied: Any = None, **params: Any) -> Any:
        method = getattr(self.client, operation)
        return call(
            method,
            operation,
            retry=self.retry,
            meter=self.meter,
            applied=applied,
            timeout=CALL_TIMEOUT,
            **params,
        )

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def resource(self) -> str:
        """The endpoint's resource name (a display name is resolved once)."""
        if self._resource is not None:
            return self._resource
        name = self.endpoint
        if _RESOURCE.match(name):
            self._resource = name
        elif name.isdigit():
            self._resource = f"{self.parent}/endpoints/{name}"
        else:
            escaped = name.replace("\\", "\\\\").replace('"', '\\"')
            found: list[str] = []
            token = ""
            while True:  # one call per page (the pager's own iteration would not be retried)
                page = self._call(
                    "list_endpoints",
                    request={
                        "parent": self.parent,
                        "filter": f'display_name="{escaped}"',
                        "page_token": token,
                    },
                )
                found += [e.name for e in page.endpoints]
                token = page.next_page_token
                if not token:
                    break
            if not found:
                raise ProviderError(
                    f"Vertex AI endpoint {name!r} does not exist in {self.parent}",
                    hint="check target.endpoint (an endpoint id or display name), target.project "
                    "and target.location; mlrollout rolls out onto an existing endpoint",
                )
            if len(found) > 1:
                raise ProviderError(
                    f"{len(found)} Vertex AI endpoints are named {name!r} in {self.parent}: "
                    f"{', '.join(found)}",
                    hint="set target.endpoint to the endpoint's numeric id",
                )
            self._resource = found[0]
        return self._resource

    @property
    def endpoint_id(self) -> str:
        return self.resource().rsplit("/", 1)[-1]

    def model_resource(self, model: str) -> str:
        if _MODEL_RESOURCE.match(model):
            return model
        return f"{self.parent}/models/{model}"

    # ------------------------------------------------------------------------------- reading

    def _get(self) -> Any:
        try:
            return self._call("get_endpoint", name=self.resource())
        except GcpCallError as exc:
            if exc.code == 404:
                raise ProviderError(
                    f"Vertex AI endpoint {self.endpoint!r} does not exist ({self.resource()})",
                    hint="check target.endpoint, target.project and target.location",
                ) from exc
            raise

    def deployed(self, raw: Any) -> tuple[list[DeployedModel], dict[str, int]]:
        models: list[DeployedModel] = []
        for dm in raw.deployed_models:
            resources = dm.dedicated_resources
            machine = resources.machine_spec.machine_type if resources else ""
            replicas = resources.min_replica_count if resources else 0
            ceiling = resources.max_replica_count if resources else 0
            models.append(
                DeployedModel(
                    id=str(dm.id),
                    name=str(dm.display_name or dm.id),
                    model=str(dm.model),
                    machine_type=machine or None,
                    replicas=int(replicas) or None,
                    max_replicas=int(ceiling) or None,
                )
            )
        names = [m.name for m in models]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ProviderError(
                f"Vertex AI endpoint {self.endpoint!r} has several deployed models named "
                f"{', '.join(map(repr, twice))}: mlrollout names variants by display name",
                hint="give each deployed model its own display name",
            )
        for m in models:
            self.ids[m.name] = m.id
        split = {str(k): int(v) for k, v in raw.traffic_split.items()}
        return models, split

    def _state(self, raw: Any) -> EndpointState:
        models, split = self.deployed(raw)
        variants = tuple(
            VariantState(
                name=m.name,
                weight=float(split.get(m.id, 0)),
                model=m.model,
                instance_type=m.machine_type,
                instance_count=m.replicas,
            )
            for m in models
        )
        return EndpointState(name=self.endpoint, status="ready", variants=variants)

    def describe(self) -> EndpointState:
        state = self._state(self._get())
        candidate = self.candidate
        if (
            not self._model_checked
            and candidate is not None
            and candidate.model
            and state.variant(candidate.name) is None
        ):
            self.check_model(candidate.model)
        return state

    def check_model(self, model: str) -> None:
        """Fail before any change when the candidate's model does not exist (or is hidden)."""
        if self.model_client is None:
            return
        name = self.model_resource(model)
        try:
            call(
                self.model_client.get_model,
                "get_model",
                retry=self.retry,
                meter=self.meter,
                name=name,
                timeout=CALL_TIMEOUT,
            )
        except GcpCallError as exc:
            if exc.code == 404:
                raise ProviderError(
                    f"the candidate's model {model!r} does not exist ({name})",
                    hint="check candidate.model (upload the model to the Vertex AI Model "
                    "Registry first); the identity needs aiplatform.models.get",
                ) from exc
            raise
        self._model_checked = True

    # ------------------------------------------------------------------------------ mutating

    def prepare(self, candidate: Candidate, baseline: str) -> EndpointState:
        raw = self._get()
        state = self._state(raw)
        if state.variant(candidate.name) is not None:
            return state
        blue = state.variant(baseline)
        if blue is None:
            raise ProviderError(
                f"baseline {baseline!r} is not deployed on Vertex AI endpoint "
                f"{self.endpoint!r} (deployed: {', '.join(state.weights()) or 'nothing'})"
            )
        # Green at full capacity: what the plan leaves out is the baseline's.
        machine = candidate.instance_type or blue.instance_type
        replicas = candidate_capacity(candidate, blue.instance_count)
        if not candidate.model or not machine:
            raise ProviderError(
                "Vertex AI needs candidate.model and a machine type (candidate.instance_type, "
                f"or the baseline's: {baseline!r} reports none) to deploy",
                hint="run `mlrollout plan validate` for details",
            )
        if self._await_running():  # a deployment in flight (a lost response, a crashed runner)
            raw = self._get()
            state = self._state(raw)
            if state.variant(candidate.name) is not None:
                return state
        _, split = self.deployed(raw)
        traffic = {k: v for k, v in split.items() if v > 0}
        traffic["0"] = 0  # the model being deployed
        deployed_model = aiplatform_v1.DeployedModel(
            model=self.model_resource(candidate.model),
            display_name=candidate.name,
            dedicated_resources=aiplatform_v1.DedicatedResources(
                machine_spec=aiplatform_v1.MachineSpec(machine_type=machine),
                min_replica_count=replicas,
                max_replica_count=replicas,
            ),
        )

        def applied() -> bool:  # before a retry: did the lost attempt deploy it after all?
            self._await_running()
            return self._state(self._get()).variant(candidate.name) is not None

        operation = self._call(
            "deploy_model",
            applied=applied,
            endpoint=self.resource(),
            deployed_model=deployed_model,
            traffic_split=traffic,
        )
        if operation is not None:
            self._wait(operation, "deploy_model", f"deploying {candidate.name!r}")
        return self.describe()

    def set_traffic(self, weights: Mapping[str, float]) -> EndpointState:
        raw = self._get()
        state = self._state(raw)
        check_weights(weights, list(state.weights()), where=f"Vertex AI endpoint {self.endpoint!r}")
        full = {v.name: float(weights.get(v.name, 0.0)) for v in state.variants}
        percents = whole_percents(full)
        target = {self.ids[name]: p for name, p in percents.items() if p > 0}
        _, current = self.deployed(raw)
        if {k: v for k, v in current.items() if v > 0} == target:
            return state

        def applied() -> bool:
            _, now = self.deployed(self._get())
            return {k: v for k, v in now.items() if v > 0} == target

        updated = self._call(
            "update_endpoint",
            applied=applied,
            endpoint=aiplatform_v1.Endpoint(name=self.resource(), traffic_split=target),
            update_mask=field_mask_pb2.FieldMask(paths=["traffic_split"]),
        )
        return self._state(updated) if updated is not None else self.describe()

    def set_shadow(self, variant: str | None, percent: float) -> EndpointState:
        if variant is None or percent <= 0:
            return self.describe()  # nothing mirrors, so nothing to stop
        raise ProviderError(
            "Vertex AI endpoints cannot mirror (shadow) traffic",
            hint="run a canary at a low weight instead",
        )

    def finalize(self, keep: str, retire: str) -> EndpointState:
        raw = self._get()
        state = self._state(raw)
        where = f"Vertex AI endpoint {self.endpoint!r}"
        if not check_finalize(keep, retire, state.weights(), where=where, kind="deployed model"):
            return state  # already undeployed
        if self._await_running():
            raw = self._get()
            state = self._state(raw)
            if state.variant(retire) is None:
                return state
        retire_id = self.ids[retire]
        _, split = self.deployed(raw)
        final = {k: v for k, v in split.items() if v > 0 and k != retire_id}

        def applied() -> bool:
            self._await_running()
            return self._state(self._get()).variant(retire) is None

        operation = self._call(
            "undeploy_model",
            applied=applied,
            endpoint=self.resource(),
            deployed_model_id=retire_id,
            traffic_split=final,
        )
        if operation is not None:
            self._wait(operation, "undeploy_model", f"undeploying {retire!r}")
        return self.describe()

    def wait_until_stable(self, timeout: float) -> EndpointState:
        return self.describe()  # every change is waited for when it is made

    # ----------------------------------------------------------------------------- ownership

    def read_owner(self) -> OwnerMark | None:
        return OwnerMark.from_tags(dict(self._get().labels))

    def write_owner(self, mark: OwnerMark | None) -> None:
        labels = dict(self._get().labels)
        wanted = {k: v for k, v in labels.items() if k not in OWNER_KEYS}
        if mark is not None:
            wanted.update(mark.to_tags(label_safe=True))
        if wanted == labels:
            return
        ours = _owner_labels(wanted)

        def applied() -> bool:  # before a retry: did the lost attempt write them after all?
            return _owner_labels(dict(self._get().labels)) == ours

        self._call(
            "update_endpoint",
            applied=applied,
            endpoint=aiplatform_v1.Endpoint(name=self.resource(), labels=wanted),
            update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
        )

    # ----------------------------------------------------------------------------- operations

    def _await_running(self) -> int:
        """Wait for this endpoint's operations that are still running — a deployment whose
        response was lost, or one a crashed runner started — so that nothing is deployed or
        undeployed twice. Returns how many there were."""
        response = self._call("list_operations", request={"name": self.resource()})
        running = [op.name for op in response.operations if not op.done]
        for name in running:

            def done(name: str = name) -> bool | None:
                return True if self._call("get_operation", request={"name": name}).done else None

            def still_running(name: str = name) -> bool:
                raise ProviderError(
                    f"operation {name} on Vertex AI endpoint {self.endpoint!r} is still "
                    f"running after {self.deploy_timeout:g}s",
                    hint="wait for it to finish (see the Cloud console), then `mlrollout resume`",
                )

            self._poll(done, still_running)
        return len(running)

    def _wait(self, operation: Any, kind: str, what: str) -> None:
        """Poll a long-running operation on the injected clock until done or timed out."""
        name = operation.operation.name

        def done() -> bool | None:
            return (
                True
                if call(
                    operation.done,
                    "get_operation",
                    retry=self.retry,
                    meter=self.meter,
                )
                else None
            )

        def timed_out() -> bool:
            raise ProviderError(
                f"{what} on Vertex AI endpoint {self.endpoint!r} did not finish within "
                f"{self.deploy_timeout:g}s (operation {name})",
                hint="see the operation in the Cloud console; `mlrollout resume` carries on "
                "once it is done",
            )

        self._poll(done, timed_out)
        try:
            operation.result(timeout=0)
        except Exception as exc:
            mapped = map_error(kind, exc)
            if not isinstance(mapped, ProviderError):
                raise
            raise ProviderError(
                f"{what} on Vertex AI endpoint {self.endpoint!r} failed (operation {name}): "
                f"{mapped.message}",
                hint=mapped.hint,
            ) from exc

    def _poll(self, done: Callable[[], bool | None], timed_out: Callable[[], bool]) -> None:
        """Poll an operation on the injected clock: every 5 s, then 1.5 times longer each time
        up to 30 s, until ``done()`` or ``deploy_timeout``."""
        wait_until(
            done,
            self.clock,
            timeout=self.deploy_timeout,
            every=POLL_FIRST,
            backoff=1.5,
            cap=POLL_MAX,
            on_timeout=timed_out,
        )
