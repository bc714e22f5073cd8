"""Capture: what each variant *predicted*, request by request, for the prediction gates.

A :class:`CaptureSource` reads the request/response records of the baseline and the candidate
for a time window (SageMaker's DataCapture files, Azure ML's data collector, a JSON-lines file
the application writes, the sandbox's simulated outputs), pairs them by request (inference id,
falling back to the platform's event id), and returns a :class:`PredictionSummary`: counts and
bins, never the records, so that a look over a million records stays small. Records that do not
parse are counted and reported, never fatal.

The engine asks once per look, for the cumulative window of the stage, with the drift bins it
fixed from the baseline's first window (kept in the rollout's state, so a runner resuming after
a crash uses the same bins); the summary goes to the analysis on the candidate's
:class:`~mlrollout.contracts.Window` (``predictions``). A source may keep a cursor between
looks (read only the objects that are new since the last look); it must give the same summary
without it (a new process has none).

The modules: :mod:`~mlrollout.capture.pairing` (the one pairing and counting core every source
feeds parsed records to: :class:`~mlrollout.capture.pairing.Pairing`, body decoding, bins),
:mod:`~mlrollout.capture.cursor` (the one cursor between looks every source keeps),
:mod:`~mlrollout.capture.jsonpath` (the ``capture.output`` subset), :mod:`~mlrollout.capture.jsonl`
(``{jsonl: PATH}``), :mod:`~mlrollout.capture.checks` (``check_prediction_gates``); the sandbox's
source is :mod:`mlrollout.sandbox.capture`. :func:`capture_source` picks a plan's source and
:func:`capture_query` builds a look's query.

Cheap to import: no SDK, no numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from mlrollout.contracts import ProviderContext
    from mlrollout.plan.model import Plan

#: At most this many disagreeing pairs are kept, as examples for the report.
MAX_EXAMPLES = 20


@dataclass(frozen=True)
class Bins:
    """How ``prediction_drift`` buckets outputs: numeric outputs by ``edges`` (interior cut
    points, ascending: ``len(edges) + 1`` bins), categorical ones by ``categories`` (plus one
    last bin for any other value)."""

    kind: Literal["numeric", "categorical"]
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return len(self.edges) + 1 if self.kind == "numeric" else len(self.categories) + 1

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "edges": list(self.edges), "categories": list(self.categories)}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Bins:
        kind = data.get("kind")
        if kind not in ("numeric", "categorical"):
            raise ValueError(f"unknown bins kind {kind!r}")
        edges = data.get("edges") or []
        categories = data.get("categories") or []
        assert isinstance(edges, list) and isinstance(categories, list)
        return cls(
            kind,
            tuple(float(e) for e in edges),
            tuple(str(c) for c in categories),
        )


@dataclass(frozen=True)
class Disagreement:
    """One paired request whose outputs differ (for the report)."""

    inference_id: str
    baseline: object
    candidate: object


@dataclass(frozen=True)
class CaptureQuery:
    start: float  # instants, seconds since the epoch
    end: float
    baseline: str  # variant names
    candidate: str
    output: str  # JSONPath of the prediction in a response body (``$.predictions[0]``)
    tolerance: float = 0.0  # numeric outputs agree when within this (absolute)
    bins: Bins | None = None  # None: fix them from this window's baseline outputs


@dataclass
class PredictionSummary:
    """The paired records of a window, as counts."""

    paired: int = 0  # requests answered by both variants, both outputs parsed
    agreed: int = 0  # of ``paired``, those whose outputs match (within ``tolerance``)
    #: Per variant: records seen, records that did not parse (broken JSON, no output at the
    #: JSONPath, an undecodable body), parsed records without a partner (yet).
    records: dict[str, int] = field(default_factory=dict)
    unparsed: dict[str, int] = field(default_factory=dict)
    unpaired: dict[str, int] = field(default_factory=dict)
    bins: Bins | None = None  # the bins ``counts`` uses (the query's, or fixed now)
    #: Per variant: outputs per bin, over every parsed record of the window.
    counts: dict[str, list[int]] = field(default_factory=dict)
    examples: list[Disagreement] = field(default_factory=list)  # at most MAX_EXAMPLES
    error: str | None = None  # the source could not be read: an error measurement, not a crash
    #: The variant names the dicts above are keyed by (the query's; ``None``: not said, and
    #: then the baseline's entry comes first).
    baseline: str | None = None
    candidate: str | None = None

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.paired if self.paired else None


#: Characters of an output a journalled example keeps (outputs can be large).
EXAMPLE_CHARS = 200


def capture_record(summary: PredictionSummary) -> dict[str, object]:
    """What a look journals of its capture: the counts, and the disagreeing examples with their
    outputs cut to :data:`EXAMPLE_CHARS` characters."""

    def cut(value: object) -> object:
        if isinstance(value, int | float | bool) or value is None:
            return value
        text = value if isinstance(value, str) else repr(value)
        return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"

    return {
        "paired": summary.paired,
        "agreed": summary.agreed,
        "records": dict(summary.records),
        "unparsed": dict(summary.unparsed),
        "unpaired": dict(summary.unpaired),
        "examples": [
            {
                "inference_id": e.inference_id,
                "baseline": cut(e.baseline),
                "candidate": cut(e.candidate),
            }
            for e in summary.examples[:MAX_EXAMPLES]
        ],
        "error": summary.error,
    }


class CaptureSource(Protocol):
    """Reads and pairs the captured predictions of two variants over a window."""

    def read(self, query: CaptureQuery) -> PredictionSummary: ...


def capture_source(plan: Plan, context: ProviderContext) -> CaptureSource | None:
    """The capture source of ``plan``'s rollout, for the engine's runner: ``{jsonl: PATH}`` →
    :class:`~mlrollout.capture.jsonl.JsonlCapture`; ``default`` → the provider's own (its spec's
    optional ``open_capture(context)``; see :class:`~mlrollout.contracts.ProviderSpec`), or
    ``None`` when it has none; ``None`` too when the plan has neither a ``capture`` section nor
    a prediction gate (nothing reads it)."""
    from mlrollout.plan.model import PREDICTION_METRICS

    capture = plan.capture
    if capture is None and not any(g.metric in PREDICTION_METRICS for g in plan.analysis.gates):
        return None
    if capture is not None and capture.jsonl is not None:
        from mlrollout.capture.jsonl import JsonlCapture

        return JsonlCapture(capture.jsonl)
    from mlrollout.plugins import provider_spec

    opener = getattr(provider_spec(plan.target.provider), "open_capture", None)
    if not callable(opener):
        return None
    source: CaptureSource = opener(context)
    return source


def capture_query(
    plan: Plan, start: float, end: float, baseline: str, candidate: str, bins: Bins | None
) -> CaptureQuery:
    """The query of one look: the plan's ``capture.output`` (default ``$``) and the first
    ``agreement`` gate's ``tolerance`` (default 0)."""
    output = plan.capture.output if plan.capture is not None else "$"
    tolerance = next(
        (g.tolerance or 0.0 for g in plan.analysis.gates if g.metric == "agreement"), 0.0
    )
    return CaptureQuery(start, end, baseline, candidate, output, tolerance, bins)
