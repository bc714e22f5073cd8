"""Feedback: what each variant's predictions were *worth*, for the quality gates.

A :class:`FeedbackSource` reads, for a time window, each variant's predictions joined with the
labels (ground truth) and user feedback that have arrived for them, by inference id (falling
back to the platform's event id), and returns one :class:`QualityCounts` per variant: a
confusion matrix of counts, the ratings, and how many predictions are still waiting for a label
— never the records, so a look over a million predictions stays small. Labels arrive late: a
look judges only the predictions whose labels are in, and says how many are waiting. Records
that do not parse are counted and reported, never fatal.

The engine asks once per look, for the cumulative window of the stage (predictions made in
``[start, end)``, labels that arrived by ``end``); the counts go to the analysis on each
variant's :class:`~mlrollout.contracts.Window` (``quality``), where the quality gates
(:mod:`mlrollout.analysis.quality`) read them.

Sources: ``{jsonl: PATH-or-URI}`` (lines ``{inference_id, label}`` or ``{inference_id, value}``
joined with the plan's capture), the provider's own (its spec's optional
``open_feedback(context)``: SageMaker Model Monitor's ground truth, the sandbox's simulated
labels). :func:`feedback_source` picks a plan's source; :func:`feedback_query` builds a look's
query.

Cheap to import: no SDK, no numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mlrollout.contracts import ProviderContext
    from mlrollout.plan.model import Plan


@dataclass
class QualityCounts:
    """One variant's labelled predictions and rated responses over a window."""

    #: ``(label, prediction) -> count`` over the predictions whose label has arrived; labels and
    #: predictions as strings (``"1"``, ``"cat"``).
    confusion: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Predictions of the window whose label has not arrived (yet).
    waiting: int = 0
    #: ``(positive, rated)``: ratings of the window's responses that have arrived (``None``: the
    #: source has no feedback for this variant).
    feedback: tuple[int, int] | None = None
    #: Responses of the window not rated (yet), when the source knows.
    feedback_waiting: int = 0
    #: Records that did not parse (broken JSON, no id, no label): counted, never fatal.
    broken: int = 0
    #: Labels or ratings whose inference id matched no prediction of the window.
    unmatched: int = 0
    #: The source could not be read: an error measurement (the gates hold), not a crash.
    error: str | None = None

    @property
    def labelled(self) -> int:
        return sum(self.confusion.values())

    @property
    def correct(self) -> int:
        return sum(n for (label, prediction), n in self.confusion.items() if label == prediction)

    def to_dict(self) -> dict[str, object]:
        """For the journal (a look's entry) and the report."""
        out: dict[str, object] = {
            "labelled": self.labelled,
            "correct": self.correct,
            "waiting": self.waiting,
            "confusion": [[label, pred, n] for (label, pred), n in sorted(self.confusion.items())],
        }
        if self.feedback is not None:
            out["feedback"] = list(self.feedback)
            out["feedback_waiting"] = self.feedback_waiting
        if self.broken:
            out["broken"] = self.broken
        if self.unmatched:
            out["unmatched"] = self.unmatched
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class FeedbackQuery:
    start: float  # predictions made in [start, end), instants in seconds since the epoch
    end: float  # labels and ratings that arrived by ``end``
    variants: tuple[str, ...]
    #: The capture's JSONPath to the prediction in a response body (``$.predictions[0]``).
    output: str = "$"


class FeedbackSource(Protocol):
    """Reads each variant's predictions joined with their labels and ratings over a window."""

    def read(self, query: FeedbackQuery) -> dict[str, QualityCounts]: ...


def feedback_source(plan: Plan, context: ProviderContext) -> FeedbackSource | None:
    """The feedback source of ``plan``'s rollout, for the engine's runner: ``{jsonl: ...}`` →
    :class:`~mlrollout.feedback.jsonl.JsonlFeedback` (joined with the plan's capture);
    ``default`` → the provider's own (its spec's optional ``open_feedback(context)``), or
    ``None`` when it has none; ``None`` too when the plan has no quality gate (nothing reads
    it)."""
    from mlrollout.plan.model import QUALITY_METRICS

    if not any(g.metric in QUALITY_METRICS for g in plan.analysis.gates):
        return None
    feedback = plan.feedback
    if feedback is not None and feedback.jsonl is not None:
        from mlrollout.feedback.jsonl import JsonlFeedback

        return JsonlFeedback(plan, context)
    from mlrollout.plugins import provider_spec

    opener = getattr(provider_spec(plan.target.provider), "open_feedback", None)
    if not callable(opener):
        return None
    source: FeedbackSource = opener(context)
    return source


def feedback_query(
    plan: Plan, start: float, end: float, variants: tuple[str, ...]
) -> FeedbackQuery:
    """The query of one look: the plan's ``capture.output`` (default ``$``)."""
    output = plan.capture.output if plan.capture is not None else "$"
    return FeedbackQuery(start, end, variants, output)
