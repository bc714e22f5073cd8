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

Cheap to import: no SDK, no numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

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

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.paired if self.paired else None


class CaptureSource(Protocol):
    """Reads and pairs the captured predictions of two variants over a window."""

    def read(self, query: CaptureQuery) -> PredictionSummary: ...
