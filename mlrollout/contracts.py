"""The contracts a provider plugs into. The core defines them; it never imports a cloud SDK.

A provider distribution exposes a :class:`ProviderSpec` through the ``mlrollout.endpoints`` entry
point group. The spec is cheap to import (no SDK): ``plan validate`` and ``plan preview`` use only
its declarations. ``open()`` is where the SDK is imported and the live clients are built.
A metrics source that is not the provider's (``analysis.source: {NAME: {...}}``) is a
:class:`MetricsSourceSpec` in the ``mlrollout.metrics`` group. docs/plugins.md shows every
extension point with a worked example.

Units everywhere: weights and percents are percentages (0-100), times are seconds (floats since the
epoch for instants), latencies are seconds, rates are fractions (0-1).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from mlrollout.capture import PredictionSummary
    from mlrollout.clock import Clock
    from mlrollout.feedback import QualityCounts
    from mlrollout.plan.model import Candidate, Gate, Plan
    from mlrollout.state.base import Lease, StateStore


# ------------------------------------------------------------------------------------ endpoint


@dataclass(frozen=True)
class Capabilities:
    """What an endpoint platform can do; ``plan validate`` checks strategies against these."""

    weights: bool = True
    shadow: bool = False
    native_blue_green: bool = False
    segment_routing: bool = False
    #: The largest share of live traffic the platform mirrors to a variant, percent (Azure ML:
    #: 50); what a blue-green ``preview: 0`` judges green on before the switch.
    max_mirror_percent: float = 100.0


@dataclass(frozen=True)
class VariantState:
    """One variant / deployed model / deployment of an endpoint, as the platform reports it."""

    name: str
    weight: float  # percent of live traffic
    status: str = "ready"
    model: str | None = None
    instance_type: str | None = None
    instance_count: int | None = None
    shadow_percent: float = 0.0  # percent of traffic mirrored to it (never served)


@dataclass(frozen=True)
class EndpointState:
    name: str
    status: str  # "ready" when it can take changes; the platform's word otherwise
    variants: tuple[VariantState, ...]

    def weights(self) -> dict[str, float]:
        return {v.name: v.weight for v in self.variants}

    def variant(self, name: str) -> VariantState | None:
        return next((v for v in self.variants if v.name == name), None)

    def serving_all(self) -> str | None:
        """The variant that takes all live traffic, if one does."""
        for v in self.variants:
            if v.weight >= 100.0 - 1e-9:
                return v.name
        return None


#: A native deployment's state: not yet started; the platform provisioning or moving traffic;
#: baking (all traffic moved, alarms watched, old fleet still up); rolling back; done with the
#: new fleet serving (``succeeded``) or with the old one serving again (``rolled_back``).
NativeStatus = Literal[
    "not_started", "deploying", "baking", "rolling_back", "succeeded", "rolled_back"
]


@dataclass(frozen=True)
class NativeDeployment:
    """What the platform reports about its own blue/green deployment."""

    status: NativeStatus
    green_percent: float = 0.0  # share of live traffic on the new fleet, percent
    detail: str = ""  # the platform's words (a status message, the alarm that fired)
    green_instances: int | None = None
    blue_instances: int | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "rolled_back")


#: Tag (label) keys of the ownership mark a runner writes on the endpoint itself.
OWNER_ROLLOUT_KEY = "mlrollout-rollout"
OWNER_HOLDER_KEY = "mlrollout-holder"
OWNER_EXPIRES_KEY = "mlrollout-expires"
OWNER_KEYS = (OWNER_ROLLOUT_KEY, OWNER_HOLDER_KEY, OWNER_EXPIRES_KEY)


@dataclass(frozen=True)
class OwnerMark:
    """Who drives an endpoint, written on the endpoint itself (SageMaker tags, Vertex labels,
    Azure tags, the sandbox's record) so that two runners with two different state stores never
    both drive it. ``expires_at`` is the driving runner's lease expiry (wall clock): a mark past
    it belongs to a runner that stopped, and may be taken over."""

    rollout_id: str
    holder: str
    expires_at: float

    def live(self, now: float) -> bool:
        return self.expires_at > now

    def to_tags(self, *, label_safe: bool = False) -> dict[str, str]:
        """The mark as string tags. ``label_safe``: only lowercase letters, digits, ``-`` and
        ``_``, at most 63 characters each (Vertex AI / GCP labels)."""
        tags = {
            OWNER_ROLLOUT_KEY: self.rollout_id,
            OWNER_HOLDER_KEY: self.holder,
            OWNER_EXPIRES_KEY: str(int(self.expires_at)),
        }
        if label_safe:
            tags = {k: _label_value(v) for k, v in tags.items()}
        return tags

    @classmethod
    def from_tags(cls, tags: Mapping[str, str] | None) -> OwnerMark | None:
        """The mark in ``tags`` (other tags are ignored); None if there is none or it is
        unreadable (a half-written mark counts as none: its expiry is unknown)."""
        if not tags or OWNER_ROLLOUT_KEY not in tags:
            return None
        try:
            expires = float(tags.get(OWNER_EXPIRES_KEY, ""))
        except ValueError:
            return None
        return cls(tags[OWNER_ROLLOUT_KEY], tags.get(OWNER_HOLDER_KEY, "unknown"), expires)


def _label_value(value: str) -> str:
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in value)
    return cleaned.lower()[:63]


class EndpointAdapter(Protocol):
    """Drives one live endpoint. Every mutation is idempotent: applying the same change twice
    leaves the endpoint as applying it once does, so a tick after a crash may simply redo it.

    The contract holds what the core calls, nothing more: waiting until a change has settled is
    each mutation's own job (with :func:`mlrollout.adapters.wait_until`), and mirroring
    (``set_shadow``) joins the contract with the strategy that drives it, behind the
    ``shadow`` capability."""

    capabilities: Capabilities

    def describe(self) -> EndpointState: ...

    def prepare(self, candidate: Candidate, baseline: str) -> EndpointState:
        """Create the candidate beside the baseline at 0 % traffic (no-op if it exists)."""
        ...

    def set_traffic(self, weights: Mapping[str, float]) -> EndpointState: ...

    def finalize(self, keep: str, retire: str) -> EndpointState:
        """Remove ``retire`` (which must take no traffic) and leave ``keep`` serving."""
        ...

    # Ownership (optional for third-party adapters: without it only the state store's lease
    # keeps two runners apart, which fails when they use two different stores).
    def read_owner(self) -> OwnerMark | None:
        """The ownership mark on the endpoint, if any (one read call)."""
        ...

    def write_owner(self, mark: OwnerMark | None) -> None:
        """Write the mark (replacing any), or remove it with None; idempotent, touches nothing
        else on the endpoint (no traffic change, no redeploy)."""
        ...

    # Optional, behind ``capabilities.native_blue_green`` (SageMaker's own blue/green
    # deployment, ``strategy.native: true``): the platform moves the traffic and rolls back on
    # its alarms; the engine starts it, follows it, judges its gates and forces a rollback.
    # Every call is idempotent and takes the rollout's id (alarm and config names derive from
    # it, so a runner resuming after a crash finds what the first one made):
    #
    #   start_native(candidate: Candidate, baseline: str, rollout_id: str) -> NativeDeployment
    #       Create what the deployment needs (alarms from the plan's absolute gates, the new
    #       endpoint config with the candidate's model on the baseline's variant name) and start
    #       it. Never starts it twice: a replay after the deployment ran (even one that rolled
    #       back) reports its status instead.
    #   native_status(rollout_id: str) -> NativeDeployment
    #   roll_back_native(rollout_id: str, reason: str) -> NativeDeployment
    #       Make the platform roll back (SageMaker: ``SetAlarmState`` ALARM on our alarm).
    #   end_native(rollout_id: str) -> EndpointState
    #       Remove what start_native made that is no longer in use (our alarms, the unused
    #       endpoint config), after a success or a finished rollback; touches nothing else.
    #
    # Optional, outside the protocol: ``facts(until: float) -> list[dict]`` — what changed in the
    # endpoint's world by the instant ``until`` (the sandbox's events), oldest first, the same
    # list on every call. Each is a JSON mapping with ``at`` (an instant), ``source`` and
    # ``text``; the engine journals each one once, as a ``fact`` event the report shows.


# ------------------------------------------------------------------------------------- metrics


@dataclass
class LatencyHistogram:
    """Latency counts in buckets: ``counts[i]`` requests took at most ``bounds[i]`` seconds and
    more than ``bounds[i-1]``; ``counts[-1]`` (one more than bounds) counts the overflow."""

    bounds: tuple[float, ...]
    counts: list[int]

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError("a histogram has one more count than bounds (the overflow)")

    @property
    def total(self) -> int:
        return sum(self.counts)

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        if other.bounds != self.bounds:
            raise ValueError("cannot merge histograms with different bounds")
        return LatencyHistogram(
            self.bounds, [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        )

    def value_at_rank(self, rank: float) -> float:
        """The latency of the request of (fractional, 0-based) ``rank``, interpolated linearly
        inside its bucket. Overflow returns the last bound."""
        total = self.total
        if total == 0:
            return math.nan
        rank = min(max(rank, 0.0), total - 1e-9)
        cumulative = 0
        for i, count in enumerate(self.counts):
            if count and rank < cumulative + count:
                if i >= len(self.bounds):
                    return self.bounds[-1]
                low = self.bounds[i - 1] if i > 0 else 0.0
                high = self.bounds[i]
                return low + (high - low) * (rank - cumulative + 0.5) / count
            cumulative += count
        return self.bounds[-1]

    def quantile(self, q: float) -> float:
        return self.value_at_rank(q * self.total)

    def count_above(self, seconds: float) -> int:
        """Requests that certainly took longer than ``seconds`` (whole buckets above it)."""
        index = bisect.bisect_left(self.bounds, seconds)
        return sum(self.counts[index + 1 :])


@dataclass
class CustomValue:
    """A custom metric over a window: ``total`` summed and ``count`` observations (so a ratio
    metric such as thumbs-up rate is ``total / count``)."""

    total: float
    count: float

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan


@dataclass
class Window:
    """Everything measured for one variant over one time window, in the normalized vocabulary.
    ``None`` means the source returned nothing (no data), never zero."""

    requests: int | None = None
    errors: int | None = None
    latency: LatencyHistogram | None = None
    latency_percentiles: dict[float, float] = field(default_factory=dict)  # q -> seconds
    custom: dict[str, CustomValue] = field(default_factory=dict)  # by gate name
    error: str | None = None  # the query failed: an error measurement, not a crash
    #: The candidate's and the baseline's paired predictions (on the candidate's window only;
    #: see :mod:`mlrollout.capture`), for the prediction gates.
    predictions: PredictionSummary | None = None
    #: This variant's predictions joined with the labels and ratings that arrived for them (see
    #: :mod:`mlrollout.feedback`), for the quality gates.
    quality: QualityCounts | None = None

    @property
    def error_rate(self) -> float | None:
        if self.requests is None or self.errors is None or self.requests == 0:
            return None
        return self.errors / self.requests


@dataclass(frozen=True)
class MetricsQuery:
    start: float
    end: float
    variants: tuple[str, ...]
    gates: tuple[Gate, ...]
    step: float  # the plan's analysis interval, seconds


class MetricsSource(Protocol):
    """Reads per-variant windows. One call per look covers every gate and every variant."""

    def query(self, query: MetricsQuery) -> dict[str, Window]: ...


# ------------------------------------------------------------------------------------ provider


@dataclass
class ProviderContext:
    """What the core hands a provider when opening it."""

    plan: Plan
    clock: Clock
    store: StateStore
    #: The runner's current endpoint lease (changes on renewal); writes to ``store`` pass it.
    lease: Callable[[], Lease | None] = lambda: None
    debug: bool = False


@dataclass(frozen=True)
class PlanProblem:
    """A problem a provider finds in a plan without any network call."""

    path: tuple[str | int, ...]
    message: str


@runtime_checkable
class ProviderSpec(Protocol):
    """What a provider declares. Importing it must not import its SDK."""

    name: str
    #: Provider-specific ``target`` keys (beyond provider, endpoint, endpoint_url, metrics_url).
    target_keys: frozenset[str]
    required_keys: frozenset[str]
    capabilities: Capabilities
    #: Strategies the platform supports through this provider (the engine may not run all of
    #: them yet: :func:`runnable_strategies` is what a rollout on it can use now).
    strategies: frozenset[str]
    #: The pip requirement that installs it, for hints.
    install_hint: str

    def check_plan(self, plan: Plan) -> list[PlanProblem]:
        """Platform limits, without network (SageMaker canary ≤ 50 %, ...)."""
        ...

    def describe_calls(self, plan: Plan) -> dict[str, list[str]]:
        """For ``plan preview``: the API calls each action makes, by action name (``describe``,
        ``prepare``, ``set_traffic``, ``finalize``, ``metrics``, ``owner``; ``set_shadow`` where
        the platform mirrors; ``start_native``, ``native_status``, ``roll_back_native`` and
        ``end_native`` where it runs its own blue/green deployment)."""
        ...

    def open(self, context: ProviderContext) -> tuple[EndpointAdapter, MetricsSource]: ...

    # Optional (not part of the protocol, so a spec without them still is one; the core looks
    # them up with getattr and uses the defaults below when they are missing):
    #
    #   def lease_key(self, plan: Plan) -> str
    #       The key of the lease (and of "one active rollout per endpoint") for the plan's
    #       endpoint. Default: :func:`default_lease_key`. Keep it stable across releases:
    #       rollouts recorded under the old key would no longer keep a new one off the endpoint.
    #
    #   def clock(self, plan: Plan, resume_at: float | None, idle_since: float | None,
    #             wall: float) -> Clock
    #       The clock a rollout of the plan runs on (``resume_at``: the journal's last instant
    #       when resuming; ``idle_since``: the wall time of its last event; ``wall``: now).
    #       Default: :class:`~mlrollout.clock.SystemClock`. The sandbox runs virtual or sped-up
    #       time here.
    #
    #   def open_capture(self, context: ProviderContext) -> CaptureSource
    #       The provider's own capture of each variant's predictions (SageMaker DataCapture,
    #       Azure ML's data collector, the sandbox's simulated outputs), for the prediction
    #       gates with ``capture.source: default``; see :mod:`mlrollout.capture`. Without it,
    #       such a plan needs ``capture: {source: {jsonl: PATH}}`` (``plan validate`` says so).
    #       :func:`mlrollout.capture.capture_source` picks the plan's source.
    #
    #   def open_feedback(self, context: ProviderContext) -> FeedbackSource
    #       The provider's own labels and ratings of each variant's predictions (SageMaker
    #       Model Monitor's ground truth joined with DataCapture, the sandbox's simulated
    #       labels), for the quality gates with ``feedback.source: default``; see
    #       :mod:`mlrollout.feedback`. :func:`mlrollout.feedback.feedback_source` picks it.


def default_lease_key(plan: Plan) -> str:
    """The lease key of a provider that declares no ``lease_key``: :func:`endpoint_key` of the
    plan's target (``sagemaker:us-east-1/churn``)."""
    return endpoint_key(plan.target.provider, plan.target.settings(), plan.target.endpoint)


# ------------------------------------------------------------------------------ metrics source


@runtime_checkable
class MetricsSourceSpec(Protocol):
    """A metrics source apart from the endpoint's provider, registered in the
    ``mlrollout.metrics`` entry point group under ``name``: a plan selects it with
    ``analysis.source: {NAME: CONFIG}`` and its windows then decide every gate. Importing it
    must not import its client library (``plan validate`` loads it). An optional
    ``install_hint`` attribute (a pip requirement) shows in hints."""

    name: str

    def check_config(self, config: Mapping[str, Any]) -> list[PlanProblem]:
        """Problems of ``config`` (the mapping under ``analysis.source.NAME``), without network.
        Paths are inside ``config`` (``("url",)``); the core puts ``analysis.source.NAME`` before
        them."""
        ...

    def open(self, config: Mapping[str, Any], context: ProviderContext) -> MetricsSource:
        """The live source for a rollout (imports its client library, builds its client)."""
        ...


#: Strategies the engine executes today. The plan format has more (shadow, ab_test): they parse
#: and validate, and a provider may declare them, but ``plan validate`` refuses them.
ENGINE_STRATEGIES = frozenset({"canary", "linear", "blue_green", "shadow", "ab_test"})


def runnable_strategies(spec: ProviderSpec) -> frozenset[str]:
    """The strategies a rollout on ``spec``'s platform can use now: those it declares that the
    engine runs. ``mlrollout providers`` lists these; ``plan validate`` refuses any other."""
    return frozenset(spec.strategies) & ENGINE_STRATEGIES


def endpoint_key(provider: str, settings: Mapping[str, Any], endpoint: str) -> str:
    """A stable key naming one live endpoint, for leases: ``sagemaker:us-east-1/churn``."""
    scope = "/".join(
        str(settings[k])
        for k in ("region", "project", "location", "subscription_id", "resource_group", "workspace")
        if settings.get(k)
    )
    return f"{provider}:{scope + '/' if scope else ''}{endpoint}"
