"""The typed rollout plan (version 1). See PLAN-FORMAT.md for the stable core.

Models only check what a single value can tell; checks that need the whole plan or a provider's
capabilities live in :mod:`mlrollout.plan.checks`. Every model rejects unknown keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from mlrollout.units import parse_duration, parse_latency, parse_percent, parse_points

_DURATION_SCHEMA = {
    "type": "string",
    "pattern": r"^[0-9]+(\.[0-9]+)?(ms|s|m|h|d)$",
    "description": "A duration with a unit: 90s, 10m, 2h, 7d.",
    "examples": ["90s", "10m", "2h"],
}
_LATENCY_SCHEMA = {
    "type": "string",
    "pattern": r"^[0-9]+(\.[0-9]+)?(us|ms|s)$",
    "description": "A latency with a unit: 300ms, 1.2s.",
}
_PERCENT_SCHEMA = {
    "anyOf": [
        {"type": "number", "minimum": 0, "maximum": 100},
        {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?%$"},
    ],
    "description": "A percentage: 25 or 25%.",
}

Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA)]
NonNegDuration = Annotated[
    float,
    BeforeValidator(lambda v: parse_duration(v, allow_zero=True)),
    WithJsonSchema(_DURATION_SCHEMA),
]
Latency = Annotated[float, BeforeValidator(parse_latency), WithJsonSchema(_LATENCY_SCHEMA)]
Percent = Annotated[float, BeforeValidator(parse_percent), WithJsonSchema(_PERCENT_SCHEMA)]


def _rate(value: object) -> float:
    """An error rate as a fraction: ``0.01`` or ``'1%'``."""
    if isinstance(value, str):
        return parse_percent(value) / 100.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a rate such as 0.01 or 1%, got {value!r}")
    return float(value)


Rate = Annotated[
    float,
    BeforeValidator(_rate),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 1},
                {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?%$"},
            ],
            "description": "A rate: a fraction such as 0.01, or a percentage such as 1%.",
        }
    ),
]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------- target

#: Keys every provider accepts in ``target``.
COMMON_TARGET_KEYS = frozenset({"provider", "endpoint", "endpoint_url", "metrics_url"})


class Target(BaseModel):
    """Where the rollout happens. Provider-specific keys are allowed here and checked against the
    provider's own list (:attr:`mlrollout.contracts.ProviderSpec.target_keys`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    provider: str = Field(description="local | sagemaker | vertex | azureml | a plugin's name")
    endpoint: str = Field(min_length=1, max_length=256)
    endpoint_url: str | None = Field(
        default=None, description="Point the control-plane clients at an emulator."
    )
    metrics_url: str | None = Field(default=None, description="Where the metrics live.")

    def setting(self, key: str) -> Any:
        """A provider-specific key (``region``, ``project``...), or None."""
        if key in type(self).model_fields:
            return getattr(self, key)
        return (self.model_extra or {}).get(key)

    def settings(self) -> dict[str, Any]:
        data = self.model_dump(exclude_none=True)
        return data


class FleetTarget(Target):
    """One endpoint of a fleet (``targets:``): a target, the wave it is rolled out in, and, on the
    sandbox, what differs in its simulated world."""

    wave: int = Field(default=1, ge=1, le=1000, description="Waves run in order, from 1.")
    sandbox: dict[str, Any] | None = Field(
        default=None,
        description="provider: local only: changes to the plan's sandbox for this target, "
        "merged into it (e.g. {variants: {v7: {error_rate: 5%}}}).",
    )

    def target(self) -> Target:
        """The plain target (without the fleet's keys)."""
        data = self.model_dump(exclude_none=True, exclude={"wave", "sandbox"})
        return Target.model_validate(data)


class Waves(StrictModel):
    """How a fleet's waves run: at most ``max_parallel`` targets at once; after a target fails,
    ``rollback_all`` rolls back every target already shifted (in reverse wave order) and
    ``stop`` keeps the finished ones; either way no later wave starts."""

    max_parallel: int = Field(default=1, ge=1, le=1000)
    on_failure: Literal["rollback_all", "stop"] = "rollback_all"


class FleetMember(StrictModel):
    """Set by mlrollout on each target's rollout of a fleet (never written by hand): the
    rollout holds with the candidate at 100 % and the baseline still deployed until the fleet
    releases it (``promote``) or rolls it back (``abort``)."""

    id: str = Field(min_length=1, max_length=128)
    index: int = Field(ge=0)


# ------------------------------------------------------------------------------------ candidate


class Candidate(StrictModel):
    name: str = Field(min_length=1, max_length=63, description="Variant/deployment name.")
    model: str | None = Field(default=None, description="The platform's model reference.")
    instance_type: str | None = None
    instance_count: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Instances (replicas) of the candidate; default: the baseline's count.",
    )


# ------------------------------------------------------------------------------------- strategy


class AnalyzeWindow(StrictModel):
    """How long an ``analyze`` step watches. ``fixed`` windows bake for ``max``; adaptive ones
    (``{min, max}``) go on as soon as every gate has passed after ``min``."""

    min: float
    max: float
    adaptive: bool


def _analyze(value: object) -> AnalyzeWindow:
    if isinstance(value, AnalyzeWindow):
        return value
    if isinstance(value, dict):
        unknown = set(value) - {"min", "max"}
        if unknown:
            raise ValueError(
                f"unknown key {sorted(unknown)[0]!r} in analyze: use {{min: 5m, max: 30m}}"
            )
        if "min" not in value or "max" not in value:
            raise ValueError("an adaptive analyze needs both min and max, e.g. {min: 5m, max: 30m}")
        low, high = parse_duration(value["min"]), parse_duration(value["max"])
        if low > high:
            raise ValueError(f"analyze min ({value['min']}) is longer than max ({value['max']})")
        return AnalyzeWindow(min=low, max=high, adaptive=True)
    seconds = parse_duration(value)
    return AnalyzeWindow(min=seconds, max=seconds, adaptive=False)


class Approve(StrictModel):
    timeout: Duration | None = Field(
        default=None, description="How long to wait for `mlrollout promote`; none = forever."
    )
    on_timeout: Literal["rollback", "continue"] = "rollback"


def _approve(value: object) -> object:
    if value is True or value is None:
        return {}
    return value


_STEP_EXAMPLES = {
    "weight": "'- weight: 10'",
    "analyze": "'- analyze: 10m'",
    "pause": "'- pause: 5m'",
}


class Step(StrictModel):
    """One canary step: exactly one of ``weight``, ``analyze``, ``pause``, ``approve``."""

    weight: Percent | None = Field(default=None, description="Candidate share of traffic, %.")
    analyze: Annotated[
        AnalyzeWindow | None,
        BeforeValidator(lambda v: None if v is None else _analyze(v)),
        WithJsonSchema(
            {
                "anyOf": [
                    _DURATION_SCHEMA,
                    {
                        "type": "object",
                        "properties": {"min": _DURATION_SCHEMA, "max": _DURATION_SCHEMA},
                        "required": ["min", "max"],
                        "additionalProperties": False,
                    },
                ]
            }
        ),
    ] = None
    pause: Duration | None = Field(default=None, description="Wait without judging.")
    approve: Annotated[Approve | None, BeforeValidator(_approve)] = None

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(
                "a step is a mapping with one key: weight, analyze, pause or approve "
                f"(e.g. '- weight: 5'), got {data!r}"
            )
        kinds = [k for k in ("weight", "analyze", "pause", "approve") if k in data]
        for kind in kinds:
            if data[kind] is None and kind != "approve":
                raise ValueError(f"'{kind}' needs a value, e.g. " + _STEP_EXAMPLES[kind])
        if len(kinds) > 1:
            raise ValueError(
                f"a step has exactly one of weight, analyze, pause, approve; this one has "
                f"{' and '.join(kinds)}: split it into {len(kinds)} steps"
            )
        if not kinds and not (set(data) - {"weight", "analyze", "pause", "approve"}):
            raise ValueError("an empty step: give one of weight, analyze, pause, approve")
        return data

    @field_validator("weight")
    @classmethod
    def _weight_range(cls, value: float | None) -> float | None:
        if value is not None and not 0 <= value <= 100:
            raise ValueError(f"a weight is a percentage from 0 to 100, got {value:g}")
        return value

    @property
    def kind(self) -> str:
        for name in ("weight", "analyze", "pause", "approve"):
            if getattr(self, name) is not None:
                return name
        raise AssertionError("validated step without a kind")


class CanaryStrategy(StrictModel):
    type: Literal["canary"]
    steps: list[Step] = Field(min_length=1)


def _step_percent(value: float, what: str) -> float:
    """A step of traffic (percent) a strategy moves at a time: above 0, at most 100."""
    if not 0 < value <= 100:
        raise ValueError(f"{what} is a percentage above 0 and at most 100, got {value:g}")
    return value


class LinearStrategy(StrictModel):
    type: Literal["linear"]
    step: Percent = Field(description="Percent added to the candidate at each increment.")
    every: Duration = Field(description="Analysis time between increments.")

    @field_validator("step")
    @classmethod
    def _step_range(cls, value: float) -> float:
        return _step_percent(value, "a linear step")


class SwitchSteps(StrictModel):
    """A stepped switch from blue to green: ``step`` percent more every ``every``, judged."""

    step: Percent = Field(description="Percent of live traffic moved to green at each step.")
    every: Duration = Field(description="Judging time between steps.")

    @field_validator("step")
    @classmethod
    def _step_range(cls, value: float) -> float:
        return _step_percent(value, "a switch step")


_WINDOW_SCHEMA = {
    "anyOf": [
        _DURATION_SCHEMA,
        {
            "type": "object",
            "properties": {"min": _DURATION_SCHEMA, "max": _DURATION_SCHEMA},
            "required": ["min", "max"],
            "additionalProperties": False,
        },
    ]
}
#: A judging window: ``10m`` (fixed) or ``{min, max}`` (adaptive), as an ``analyze`` step.
JudgingWindow = Annotated[
    AnalyzeWindow | None,
    BeforeValidator(lambda v: None if v is None else _analyze(v)),
    WithJsonSchema(_WINDOW_SCHEMA),
]


class BlueGreenStrategy(StrictModel):
    """Green is provisioned at full capacity beside blue, judged (on ``preview`` percent of live
    traffic), switched to (``all_at_once`` or in steps), judged again at 100 % against blue's
    window before the switch, and blue stays provisioned ``keep_previous`` for an instant
    switch back."""

    type: Literal["blue_green"]
    preview: Percent = Field(
        default=0.0, description="Percent of live traffic green serves before the switch."
    )
    pre_promotion: JudgingWindow = Field(default=None, description="Judging before the switch.")
    switch: Annotated[
        Annotated[Literal["all_at_once"], Tag("AllAtOnce")]
        | Annotated[SwitchSteps, Tag("SwitchSteps")],
        Discriminator(
            lambda v: "SwitchSteps" if isinstance(v, dict | SwitchSteps) else "AllAtOnce"
        ),
    ] = Field(default="all_at_once", description="all_at_once, or {step, every}.")
    post_promotion: JudgingWindow = Field(default=None, description="Judging at 100 % after it.")
    keep_previous: NonNegDuration = Field(
        default=0.0, description="How long blue stays provisioned after post_promotion."
    )
    native: bool = Field(
        default=False, description="sagemaker: delegate the switch to its blue/green deployment."
    )

    @field_validator("preview")
    @classmethod
    def _preview_range(cls, value: float) -> float:
        if not 0 <= value < 100:
            raise ValueError(f"preview is at least 0 and below 100 percent, got {value:g}")
        return value


ShadowWindow = Annotated[AnalyzeWindow, BeforeValidator(_analyze), WithJsonSchema(_WINDOW_SCHEMA)]


class ShadowStrategy(StrictModel):
    """A copy of ``percent`` of live requests goes to the candidate, whose answers are dropped:
    it serves no one while the gates compare it with the baseline for ``duration``; then
    ``promote`` (on with ``steps``), ``rollback`` (an evaluation: the shadow is removed either
    way) or ``stop`` (keep mirroring, wait for ``mlrollout promote`` or ``abort``)."""

    type: Literal["shadow"]
    percent: Percent = Field(default=100.0, description="Share of live requests mirrored.")
    duration: ShadowWindow = Field(description="How long the comparison runs; or {min, max}.")
    then: Literal["promote", "rollback", "stop"] = Field(
        default="stop", description="What follows the comparison: promote, rollback or stop."
    )
    steps: list[Step] | None = Field(
        default=None,
        description="Canary steps after a passing shadow (promote); default straight to 100 %.",
    )

    @field_validator("percent")
    @classmethod
    def _percent_range(cls, value: float) -> float:
        if not 0 < value <= 100:
            raise ValueError(f"shadow percent is above 0 and at most 100, got {value:g}")
        return value


class ABTestStrategy(StrictModel):
    """The candidate takes ``split`` percent of live traffic until the winner test on the
    ``metric`` gate decides (or ``max_duration`` passes: no winner); every other gate is a
    guardrail, judged as in a canary."""

    type: Literal["ab_test"]
    split: Percent = Field(default=50.0, description="The candidate's share of live traffic.")
    metric: str = Field(
        min_length=1, description="The gate (by name) whose result picks the winner."
    )
    min_effect: Percent = Field(
        default=1.0, description="The smallest relative lift worth shipping, e.g. 1%."
    )
    max_duration: Duration = Field(description="Undecided by then: no winner.")
    then: Literal["promote_winner", "stop"] = Field(
        default="stop", description="promote_winner, or stop and wait for a human."
    )

    @field_validator("min_effect")
    @classmethod
    def _effect_range(cls, value: float) -> float:
        if not 0 < value <= 100:
            raise ValueError(f"min_effect is a lift above 0 and at most 100%, not {value:g}%")
        return value

    @field_validator("split")
    @classmethod
    def _split_range(cls, value: float) -> float:
        if not 0 < value < 100:
            raise ValueError(f"an A/B split is above 0 and below 100, got {value:g}")
        return value


Strategy = Annotated[
    CanaryStrategy | LinearStrategy | BlueGreenStrategy | ShadowStrategy | ABTestStrategy,
    Field(discriminator="type"),
]
STRATEGY_TYPES = ("canary", "linear", "blue_green", "shadow", "ab_test")

# ------------------------------------------------------------------------------------- analysis

GateMetric = Literal[
    "error_rate",
    "latency_p50",
    "latency_p90",
    "latency_p99",
    "requests",
    "custom",
    "agreement",
    "prediction_drift",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "feedback",
]
#: The prediction gates (:mod:`mlrollout.analysis.prediction`): each with the one bound it takes.
PREDICTION_METRICS = {"agreement": "min", "prediction_drift": "max"}
#: The quality gates (:mod:`mlrollout.analysis.quality`): shares of labelled predictions (or of
#: rated responses, ``feedback``), worse when they decrease; they need labels (``min_labels``).
QUALITY_METRICS = ("accuracy", "precision", "recall", "f1", "feedback")
#: The quality gates judged on labels (``feedback`` is judged on ratings).
LABEL_METRICS = ("accuracy", "precision", "recall", "f1")
LATENCY_METRICS = {"latency_p50": 0.50, "latency_p90": 0.90, "latency_p99": 0.99}


class Comparison(StrictModel):
    """``vs_baseline``: how much worse than the baseline the candidate may be."""

    max_increase: str | float | None = Field(
        default=None, description="Relative (25%) or absolute (0.5pp, 20ms) margin."
    )
    max_decrease: str | float | None = Field(default=None)

    @model_validator(mode="after")
    def _one(self) -> Comparison:
        if (self.max_increase is None) == (self.max_decrease is None):
            raise ValueError("vs_baseline needs exactly one of max_increase or max_decrease")
        return self

    @property
    def raw(self) -> str | float:
        value = self.max_increase if self.max_increase is not None else self.max_decrease
        assert value is not None
        return value


class Margin(StrictModel):
    """A parsed ``vs_baseline`` margin: ``relative`` as a fraction (0.25 = +25 %), ``absolute`` in
    the metric's own unit (a rate difference for error_rate, seconds for latency)."""

    kind: Literal["relative", "absolute"]
    amount: float


class Gate(StrictModel):
    name: str = Field(min_length=1, max_length=64)
    metric: GateMetric
    max: str | float | None = Field(default=None, description="Absolute upper bound.")
    min: str | float | None = Field(default=None, description="Absolute lower bound.")
    vs_baseline: Comparison | None = None
    query: dict[str, Any] | None = Field(
        default=None, description="Provider-native query for a custom metric."
    )
    direction: Literal["increase", "decrease"] | None = Field(
        default=None, description="Which way is worse (custom metrics); default increase."
    )
    dry_run: bool = Field(default=False, description="Record the verdict, never decide on it.")
    tolerance: float | None = Field(
        default=None,
        ge=0,
        description="agreement: numeric outputs within this (absolute) agree; default 0.",
    )
    positive: str | None = Field(
        default=None,
        min_length=1,
        description="precision, recall, f1: the positive class (omitted: macro average over "
        "the classes).",
    )
    min_labels: int | None = Field(
        default=None,
        ge=0,
        le=10**9,
        description="Quality gates: labelled predictions (or ratings) per variant before the "
        "gate may pass; default analysis.min_requests.",
    )

    @field_validator("positive", mode="before")
    @classmethod
    def _class_name(cls, value: object) -> object:
        # Labels are compared as strings: `positive: 1` means the class "1".
        if isinstance(value, bool):
            return str(value).lower()
        return str(value) if isinstance(value, int | float) else value

    @model_validator(mode="after")
    def _quality_keys(self) -> Gate:
        if self.positive is not None and self.metric not in ("precision", "recall", "f1"):
            raise ValueError("positive only applies to metric: precision, recall or f1")
        if self.min_labels is not None and self.metric not in QUALITY_METRICS:
            raise ValueError(
                f"min_labels only applies to the quality gates ({', '.join(QUALITY_METRICS)})"
            )
        if self.metric in QUALITY_METRICS:
            if self.direction == "increase":
                raise ValueError(
                    f"{self.metric} is worse when it decreases: drop direction, or use a "
                    "custom gate"
                )
            if self.vs_baseline is not None and self.vs_baseline.max_increase is not None:
                raise ValueError(
                    f"{self.metric} is worse when it decreases: use "
                    "vs_baseline: {max_decrease: 2pp} (or a relative 5%)"
                )
            if self.max is not None:
                raise ValueError(f"{self.metric} takes a lower bound (min: 90%), not max")
        return self

    @model_validator(mode="after")
    def _prediction_bounds(self) -> Gate:
        bound = PREDICTION_METRICS.get(self.metric)
        if self.tolerance is not None and self.metric != "agreement":
            raise ValueError("tolerance only applies to metric: agreement")
        if bound is None:
            return self
        what = (
            "the share of paired requests whose outputs agree"
            if self.metric == "agreement"
            else "the PSI of the candidate's outputs against the baseline's"
        )
        example = "min: 97%" if self.metric == "agreement" else "max: 0.2"
        if self.vs_baseline is not None:
            raise ValueError(
                f"{self.metric} already compares the candidate with the baseline ({what}): "
                f"give an absolute bound ({example}) instead of vs_baseline"
            )
        other = "max" if bound == "min" else "min"
        if getattr(self, other) is not None:
            raise ValueError(f"{self.metric} takes {bound} ({example}), not {other}")
        return self

    @property
    def worse_when(self) -> Literal["increase", "decrease"]:
        if self.direction is not None:
            return self.direction
        if self.metric in QUALITY_METRICS:
            return "decrease"
        if self.vs_baseline is not None and self.vs_baseline.max_decrease is not None:
            return "decrease"
        return "increase"

    # Parsed bounds, in the metric's unit (rate fraction, seconds, count, raw value).
    def parse_bound(self, raw: str | float) -> float:
        return parse_metric_value(self.metric, raw)

    @property
    def max_value(self) -> float | None:
        return None if self.max is None else self.parse_bound(self.max)

    @property
    def min_value(self) -> float | None:
        return None if self.min is None else self.parse_bound(self.min)

    @property
    def margin(self) -> Margin | None:
        if self.vs_baseline is None:
            return None
        return parse_margin(self.metric, self.vs_baseline.raw)


def parse_metric_value(metric: str, raw: str | float) -> float:
    """A gate bound in the metric's unit: error_rate → fraction, latency → seconds."""
    if metric == "error_rate":
        return _rate(raw)
    if metric in LATENCY_METRICS:
        return parse_latency(raw)
    if metric == "agreement" or metric in QUALITY_METRICS:
        share = _rate(raw)
        if not 0 <= share <= 1:
            raise ValueError(f"{metric} is a share from 0% to 100%, got {raw!r}")
        return share
    if metric == "custom" and isinstance(raw, str) and raw.strip().endswith("%"):
        return _rate(raw)  # a custom rate (conversions per request) as a percentage
    if metric == "prediction_drift" and isinstance(raw, int | float) and raw < 0:
        raise ValueError(f"a PSI is not negative, got {raw!r}")
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"expected a number, got {raw!r}")
    return float(raw)


def parse_margin(metric: str, raw: str | float) -> Margin:
    if isinstance(raw, str) and raw.strip().endswith("pp"):
        if metric != "error_rate" and metric != "custom" and metric not in QUALITY_METRICS:
            raise ValueError(f"percentage points (pp) only apply to rates, not {metric}")
        return Margin(kind="absolute", amount=parse_points(raw) / 100.0)
    if metric in LATENCY_METRICS and isinstance(raw, str) and not raw.strip().endswith("%"):
        return Margin(kind="absolute", amount=parse_latency(raw))
    amount = parse_percent(raw)
    if amount < 0:
        raise ValueError(f"a margin is not negative, got {raw!r}")
    return Margin(kind="relative", amount=amount / 100.0)


def _metrics_source(value: object) -> object:
    """``default`` or ``{NAME: {settings}}`` with one name: a ``mlrollout.metrics`` plugin's,
    whose own ``check_config`` checks the settings (see :mod:`mlrollout.plan.checks`)."""
    if value is None or value == "default":
        return "default"
    if isinstance(value, str):
        raise ValueError(
            f"a metrics source is `default` or {{NAME: {{settings}}}}, not {value!r} "
            f"(e.g. source: {{{value}: {{...}}}})"
        )
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(
            "a metrics source is `default` or one name with its settings, such as "
            "{prometheus: {url: http://prometheus:9090}}"
        )
    [(name, config)] = value.items()
    if not isinstance(name, str) or not name:
        raise ValueError(f"a metrics source's name is a string, not {name!r}")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ValueError(f"the settings of metrics source {name!r} are a mapping, not {config!r}")
    return {name: config}


MetricsSourceName = Annotated[
    Literal["default"] | dict[str, dict[str, Any]],
    BeforeValidator(_metrics_source),
    WithJsonSchema(
        {
            "anyOf": [
                {"const": "default"},
                {
                    "type": "object",
                    "minProperties": 1,
                    "maxProperties": 1,
                    "additionalProperties": {"type": ["object", "null"]},
                },
            ],
            "description": "default (the provider's own metrics) or {NAME: {settings}}: a "
            "metrics source plugin (mlrollout.metrics), e.g. {prometheus: {url: ...}}.",
        }
    ),
]


class Analysis(StrictModel):
    source: MetricsSourceName = "default"
    interval: Duration = Field(default=60.0, description="One look per interval.")
    delay: NonNegDuration = Field(default=0.0, description="Ingestion lag after a traffic change.")
    min_requests: int = Field(default=100, ge=0, le=10**9)
    no_data: Literal["hold", "rollback"] = "hold"
    max_hold: Duration = 1800.0
    on_inconclusive: Literal["rollback", "continue", "pause"] = "rollback"
    alpha: float = Field(default=0.05, gt=0, le=0.5)
    gates: list[Gate] = Field(default_factory=list)


def _jsonl_check(what: str, where: str, default: str, records: str) -> Callable[[object], object]:
    """The check of a ``default | {jsonl: PATH-or-URI}`` source key: ``what`` names it in
    errors, ``where`` says what a jsonl location may be, ``default`` what the provider's own is,
    ``records`` what a line holds."""

    def check(value: object) -> object:
        if value is None or value == "default":
            return "default"
        if isinstance(value, dict) and set(value) == {"jsonl"}:
            found = value["jsonl"]
            if not isinstance(found, str) or not found.strip():
                raise ValueError(f"jsonl names {where}, not {found!r}")
            return {"jsonl": found}
        raise ValueError(
            f"a {what} source is `default` (the provider's own: {default}) or "
            f"{{jsonl: PATH-or-URI}} ({records}), not {value!r}"
        )

    return check


def _jsonl_schema(description: str) -> WithJsonSchema:
    return WithJsonSchema(
        {
            "anyOf": [
                {"const": "default"},
                {
                    "type": "object",
                    "properties": {"jsonl": {"type": "string", "minLength": 1}},
                    "required": ["jsonl"],
                    "additionalProperties": False,
                },
            ],
            "description": description,
        }
    )


CaptureSourceName = Annotated[
    Literal["default"] | dict[Literal["jsonl"], str],
    BeforeValidator(
        _jsonl_check(
            "capture",
            "a file, a directory of *.jsonl files or a file:// URI",
            "SageMaker DataCapture, Azure ML's data collector, the sandbox's",
            "records {inference_id, variant, output, time} the application writes",
        )
    ),
    _jsonl_schema(
        "default (the provider's own capture) or {jsonl: PATH-or-URI}: JSON lines "
        "{inference_id, variant, output, time}; a directory means every *.jsonl in it."
    ),
]


class Capture(StrictModel):
    """Where the request/response records of each variant come from, for the prediction gates
    (``agreement``, ``prediction_drift``), and where the prediction is in a response."""

    source: CaptureSourceName = "default"
    output: str = Field(
        default="$",
        min_length=1,
        description="A JSONPath to the prediction in a response body: $, $.predictions[0], "
        "$['label'] (the subset $ .key [n] ['key']).",
    )

    @property
    def jsonl(self) -> str | None:
        """The ``{jsonl: ...}`` location, or None for ``default``."""
        return self.source.get("jsonl") if isinstance(self.source, dict) else None


FeedbackSourceName = Annotated[
    Literal["default"] | dict[Literal["jsonl"], str],
    BeforeValidator(
        _jsonl_check(
            "feedback",
            "a file, a directory of *.jsonl files, an s3:// prefix or an Azure blob URL",
            "SageMaker Model Monitor's ground truth, the sandbox's simulated labels",
            "lines {inference_id, label} or {inference_id, value}",
        )
    ),
    _jsonl_schema(
        "default (the provider's own labels) or {jsonl: PATH-or-URI}: JSON lines "
        "{inference_id, label} or {inference_id, value}, joined to the captured predictions by "
        "inference id."
    ),
]


class Feedback(StrictModel):
    """Where labels and user feedback come from, for the quality gates (``accuracy``,
    ``precision``, ``recall``, ``f1``, ``feedback``)."""

    source: FeedbackSourceName = "default"

    @property
    def jsonl(self) -> str | None:
        """The ``{jsonl: ...}`` location, or None for ``default``."""
        return self.source.get("jsonl") if isinstance(self.source, dict) else None


# ------------------------------------------------------------------------- segments and flags

AttributeMatch = dict[str, str | list[str]]


class Segment(StrictModel):
    """Who may be given the candidate: the users whose attributes match (each key equal to the
    value, or to one of the listed values). ``weight``: the candidate's share inside the
    segment whatever the step says (omitted: the strategy's steps)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    match: AttributeMatch = Field(
        description="Attributes of the evaluation context: {user_type: employee} or "
        "{region: [eu-west-1, eu-central-1]}."
    )
    weight: Percent | None = Field(
        default=None, description="The candidate's share inside this segment, percent."
    )

    @field_validator("match", mode="before")
    @classmethod
    def _strings(cls, value: object) -> object:
        if not isinstance(value, dict) or not value:
            raise ValueError(
                "match names at least one attribute: {user_type: employee} or "
                "{region: [eu-west-1, eu-central-1]}"
            )
        out: dict[str, object] = {}
        for key, wanted in value.items():
            if isinstance(wanted, list):
                if not wanted:
                    raise ValueError(f"match {key!r} lists no values")
                out[str(key)] = [_scalar(key, v) for v in wanted]
            else:
                out[str(key)] = _scalar(key, wanted)
        return out

    @field_validator("weight")
    @classmethod
    def _weight(cls, value: float | None) -> float | None:
        if value is not None and not 0 <= value <= 100:
            raise ValueError(f"a segment's weight is a percentage from 0 to 100, got {value:g}")
        return value


def _scalar(key: object, value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | int | float):
        return str(value)
    raise ValueError(f"match {key!r} is a value or a list of values, not {value!r}")


class Flags(StrictModel):
    """An OpenFeature flagd flag definition, written in lockstep with each step: the live split
    is left to the flag (the application evaluates it per request)."""

    provider: Literal["flagd"] = Field(description="The flag format; flagd is the only one.")
    key: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="The flag's key; its variants are the plan's variant names.",
    )
    file: str = Field(
        min_length=1,
        description="Where the flag definition is written: a local path or an s3:// object, "
        "where the application's flagd reads it.",
    )


class Mlflow(StrictModel):
    """Each rollout an MLflow run (the optional extra ``mlrollout[mlflow]``)."""

    tracking_uri: str | None = Field(
        default=None,
        min_length=1,
        description="The tracking server; omitted: the MLFLOW_TRACKING_URI environment variable.",
    )
    experiment: str = Field(
        default="mlrollout", min_length=1, description="The MLflow experiment of the runs."
    )


class RollbackPolicy(StrictModel):
    automatic: bool = True
    cleanup: bool = True


#: ``notify[].on`` names (see :data:`mlrollout.engine.events.NOTIFY_FILTERS`).
NotifyOn = Literal[
    "started",
    "traffic",
    "failed",
    "inconclusive",
    "waiting",
    "approved",
    "rollback",
    "promoted",
    "aborted",
    "adopted",
]
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Notification(StrictModel):
    """A webhook: its URL (``webhook``, or from the environment with ``url_env``: a Slack or
    Teams URL is a secret), the body's ``format``, a bearer token from ``token_env``, and which
    events it gets (``on``; default every change and decision). Or a Prometheus Pushgateway
    (``pushgateway``: its URL) that gets the rollout's state after every look and change."""

    webhook: str | None = Field(
        default=None, pattern=r"^https?://", description="POSTed an event per change."
    )
    url_env: str | None = Field(
        default=None, pattern=_ENV_NAME, description="The URL from this environment variable."
    )
    pushgateway: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="A Prometheus Pushgateway's URL: the rollout's state as metrics, pushed "
        "after every look and change.",
    )
    format: Literal["json", "slack", "teams"] = Field(
        default="json", description="json (mlrollout's), slack (text + blocks), teams (a card)."
    )
    token_env: str | None = Field(
        default=None, pattern=_ENV_NAME, description="A bearer token from this variable."
    )
    on: list[NotifyOn] | None = Field(
        default=None, min_length=1, description="Only these events (default: all of them)."
    )

    @model_validator(mode="after")
    def _one_url(self) -> Notification:
        if sum(url is not None for url in (self.webhook, self.url_env, self.pushgateway)) != 1:
            raise ValueError(
                "a notification has exactly one of webhook (the URL), url_env (the name of "
                "the environment variable that holds it) or pushgateway (a Prometheus "
                "Pushgateway's URL)"
            )
        if self.pushgateway is not None:
            given = [key for key in ("format", "on") if key in self.model_fields_set]
            if given:
                raise ValueError(
                    f"{' and '.join(given)} do{'es' if len(given) == 1 else ''} not apply to a "
                    "pushgateway: it gets the rollout's state as Prometheus metrics after every "
                    f"look and change; remove {' and '.join(given)}"
                )
        return self


# -------------------------------------------------------------------------------------- sandbox


def _unit_rate(value: float | None, what: str = "a rate") -> float | None:
    if value is not None and not 0 <= value <= 1:
        raise ValueError(f"{what} is between 0 and 1 (or 0% and 100%), got {value:g}")
    return value


#: Names a sandbox custom gate may read besides the variants' ``custom`` metrics:
#: ``query: {metric: feedback}`` (share of positive ratings) and ``{metric: accuracy}``.
SANDBOX_BUILTIN_METRICS = ("accuracy", "feedback")


class SandboxVariant(StrictModel):
    """How one simulated variant behaves. ``accuracy``: each response's prediction matches the
    request's true label with this probability (omitted: no labels are simulated); ``feedback``:
    the chance a response is rated positive (omitted: no feedback); ``custom``: per-request rates
    of business events (a conversion is counted on a request with this probability)."""

    error_rate: Rate = 0.0
    error_bursts: float | None = Field(
        default=None,
        gt=0,
        le=1_000_000,
        description="Errors come in bursts: per 10 s they are negative-binomial with this "
        "shape (1 = strongly bursty, 10 = mildly); omitted, requests fail independently.",
    )
    latency_p50: Latency = 0.05
    latency_p99: Latency = 0.2
    accuracy: Rate | None = None
    feedback: Rate | None = None
    custom: dict[str, Rate] = Field(default_factory=dict)
    output_shift: Rate = Field(
        default=0.0,
        description="Simulated capture (with accuracy): this share of the variant's answers "
        'come out as class "1" whatever its model says: its outputs drift.',
    )

    @field_validator("error_rate")
    @classmethod
    def _rate_range(cls, value: float) -> float:
        _unit_rate(value, "an error rate")
        return value

    @field_validator("accuracy", "feedback", "output_shift")
    @classmethod
    def _share_range(cls, value: float | None) -> float | None:
        return _unit_rate(value, "a probability")

    @field_validator("custom")
    @classmethod
    def _custom_range(cls, value: dict[str, float]) -> dict[str, float]:
        for name, rate in value.items():
            _unit_rate(rate, f"custom rate {name!r}")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> SandboxVariant:
        if self.latency_p99 < self.latency_p50:
            raise ValueError("latency_p99 is below latency_p50")
        return self


#: The variant keys an event may change.
SANDBOX_VARIANT_KEYS = (
    "error_rate",
    "error_bursts",
    "latency_p50",
    "latency_p99",
    "accuracy",
    "feedback",
    "custom",
    "output_shift",
)


class RpsProfile(StrictModel):
    """A smooth daily cycle of traffic: ``base`` requests per second on average over a day,
    ``daily_swing`` times more at the peak than at the trough (1 = flat), the peak ``peak_at``
    after the rollout starts (default 6h: it starts at the average, rising)."""

    base: float = Field(gt=0, le=1_000_000, description="Daily average, requests per second.")
    daily_swing: float = Field(
        default=1.0, ge=1, le=1000, description="Peak over trough (3 = x3 between night and peak)."
    )
    peak_at: NonNegDuration = Field(
        default=21600.0, description="When, after the rollout starts, traffic peaks (< 1d)."
    )

    @field_validator("peak_at")
    @classmethod
    def _within_a_day(cls, value: float) -> float:
        if value >= 86400:
            raise ValueError("peak_at is a time of the day after the start: less than 1d")
        return value


def _rps_kind(value: object) -> str:
    return "RpsProfile" if isinstance(value, dict | RpsProfile) else "Number"


def _rps_number(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"rps is requests per second (a number) or a daily profile {{base, daily_swing}}, "
            f"got {value!r}"
        )
    return value


Rps = Annotated[
    Annotated[
        Annotated[float, BeforeValidator(_rps_number), Field(ge=0, le=1_000_000)], Tag("Number")
    ]
    | Annotated[RpsProfile, Tag("RpsProfile")],
    Discriminator(_rps_kind),
]


def _event_time(value: object) -> float:
    """``at``: a duration since the rollout started; a negative one (``-5m``) is allowed here and
    flagged by ``plan validate`` (it is in effect from the start)."""
    if isinstance(value, str) and value.strip().startswith("-"):
        return -parse_duration(value.strip()[1:], allow_zero=True)
    return parse_duration(value, allow_zero=True)


class SandboxEvent(StrictModel):
    """What changes in the simulated world while the rollout runs: from ``at`` (time since the
    rollout started) on, for ``for`` if given, else for good. A change to a variant's behaviour
    names the ``variant``; ``rps`` and ``metrics_delay`` change the whole endpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    at: Annotated[float, BeforeValidator(_event_time), WithJsonSchema(_DURATION_SCHEMA)]
    for_: Duration | None = Field(default=None, alias="for", description="How long it lasts.")
    variant: str | None = Field(default=None, description="Whose behaviour changes.")
    error_rate: Rate | None = None
    error_bursts: float | None = Field(default=None, gt=0, le=1_000_000)
    latency_p50: Latency | None = None
    latency_p99: Latency | None = None
    accuracy: Rate | None = None
    feedback: Rate | None = None
    custom: dict[str, Rate] | None = None
    output_shift: Rate | None = None
    rps: Rps | None = None
    metrics_delay: NonNegDuration | None = Field(
        default=None, description="How far the metrics pipeline lags from then on."
    )

    @field_validator("error_rate", "accuracy", "feedback", "output_shift")
    @classmethod
    def _rates(cls, value: float | None) -> float | None:
        return _unit_rate(value)

    @field_validator("custom")
    @classmethod
    def _custom_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for name, rate in (value or {}).items():
            _unit_rate(rate, f"custom rate {name!r}")
        return value

    @model_validator(mode="after")
    def _changes_something(self) -> SandboxEvent:
        changed = self.variant_changes()
        if changed and self.variant is None:
            keys = ", ".join(changed)
            raise ValueError(
                f"an event that changes {keys} names the variant it changes (variant: NAME)"
            )
        if self.variant is not None and not changed:
            raise ValueError(
                f"the event names variant {self.variant!r} but changes none of its keys "
                f"({', '.join(SANDBOX_VARIANT_KEYS)})"
            )
        if not changed and self.rps is None and self.metrics_delay is None:
            raise ValueError(
                "an event changes something: a variant's keys (with variant: NAME), rps or "
                "metrics_delay, e.g. {at: 12m, variant: v7, error_rate: 5%}"
            )
        return self

    def variant_changes(self) -> dict[str, Any]:
        """The variant keys this event sets (``custom`` as the mapping it gives)."""
        return {k: getattr(self, k) for k in SANDBOX_VARIANT_KEYS if getattr(self, k) is not None}

    @property
    def until(self) -> float:
        """When it stops applying (``inf`` for good)."""
        return self.at + self.for_ if self.for_ is not None else float("inf")


class SandboxUsers(StrictModel):
    """Simulated users: every request comes from one of ``count`` users, each with one value of
    every attribute, so that segments and feature flags can be rehearsed."""

    count: int = Field(ge=1, le=100_000_000, description="How many distinct users send requests.")
    attributes: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Attribute name to its possible values, shared evenly among the users.",
    )

    @field_validator("attributes")
    @classmethod
    def _values(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, values in value.items():
            if not values:
                raise ValueError(f"attribute {name!r} lists no values")
            if len(set(values)) != len(values):
                raise ValueError(f"attribute {name!r} lists a value twice")
        return value


class Sandbox(StrictModel):
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    rps: Rps = Field(
        default=100.0, description="Requests per second across variants, or {base, daily_swing}."
    )
    speed: Literal["max"] | Annotated[float, Field(gt=0, le=1_000_000)] = "max"
    metrics_delay: NonNegDuration = Field(
        default=0.0, description="A window's metrics appear this long after it ends."
    )
    variants: dict[str, SandboxVariant] = Field(
        description="Simulated variants; the first one serves 100 % at the start."
    )
    events: list[SandboxEvent] = Field(
        default_factory=list, description="What changes while the rollout runs."
    )
    users: SandboxUsers | None = None
    label_delay: NonNegDuration = Field(
        default=0.0,
        description="Labels and feedback arrive this long after the prediction they judge.",
    )

    @field_validator("variants")
    @classmethod
    def _some(cls, value: dict[str, SandboxVariant]) -> dict[str, SandboxVariant]:
        if not value:
            raise ValueError("the sandbox names no variants: list the baseline and the candidate")
        return value


# ----------------------------------------------------------------------------------------- plan


def _target_or_targets(schema: dict[str, Any]) -> None:
    """In the JSON Schema: a plan names its endpoint in ``target`` or, a fleet, ``targets``
    (the loader stands the first target in for ``target``)."""
    schema["required"] = [k for k in schema.get("required", []) if k != "target"]
    schema["oneOf"] = [
        {"required": ["target"], "not": {"required": ["targets"]}},
        {"required": ["targets"], "not": {"required": ["target"]}},
    ]


class Plan(StrictModel):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_target_or_targets)

    #: The mapping the plan was validated from (set by the loader): a fleet's target plans are
    #: built from it (:mod:`mlrollout.plan.fleet`), as units and defaults were written.
    _source: dict[str, Any] | None = PrivateAttr(default=None)

    version: Literal[1] = Field(description="The plan format's version; only 1 exists.")
    name: str = Field(min_length=1, max_length=128, description="Free text, shown in reports.")
    target: Target
    baseline: str = Field(default="auto", min_length=1)
    candidate: Candidate
    strategy: Strategy
    analysis: Analysis = Field(default_factory=Analysis)
    rollback: RollbackPolicy = Field(default_factory=RollbackPolicy)
    notify: list[Notification] = Field(default_factory=list)
    capture: Capture | None = Field(
        default=None, description="Request/response records, for the prediction gates."
    )
    feedback: Feedback | None = Field(
        default=None, description="Labels and user feedback, for the quality gates."
    )
    segments: list[Segment] = Field(
        default_factory=list,
        description="Who may be given the candidate (needs flags); without it, everyone.",
    )
    flags: Flags | None = Field(
        default=None, description="A flagd flag definition written in lockstep with each step."
    )
    mlflow: Mlflow | None = Field(default=None, description="Each rollout an MLflow run.")
    targets: list[FleetTarget] = Field(
        default_factory=list,
        description="Instead of target: the same candidate to many endpoints, in waves.",
    )
    waves: Waves | None = Field(default=None, description="How a fleet's waves run.")
    fleet: FleetMember | None = Field(
        default=None, description="Set by mlrollout on the rollouts of a fleet's targets."
    )
    sandbox: Sandbox | None = None
