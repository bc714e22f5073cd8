"""The sandbox's feedback source: simulated labels and ratings of each variant's traffic, late.

The traffic model already draws, per bucket and variant, a confusion matrix of the responses
(a variant's ``accuracy``) and their ratings (its ``feedback``), see
:mod:`mlrollout.sandbox.traffic`; this source only says which of them have *arrived*. The labels
and ratings of a bucket arrive together, ``sandbox.label_delay`` after the bucket ends. A look
at ``end`` over ``[start, end)`` holds the buckets the metrics would hold (whole buckets whose
start lies in the window and that have ended by the clock's ``now``; the same weight history,
users and mirror, through :meth:`TrafficModel.records`), and of those:

- the buckets that ended by ``end - label_delay`` are judged: their confusion matrix and
  ratings are the counts;
- the others' responses are ``waiting`` (labels) and ``feedback_waiting`` (ratings).

The metrics delay does not apply: labels come through their own pipeline. Mirrored copies are
labelled (ground truth does not care who saw the answer) but never rated (nobody saw it: a
variant that only answers mirrored copies has no ratings, ``feedback`` ``None``). A
variant that simulates neither ``accuracy`` nor ``feedback`` gives an error measurement that
says which key to add (the gates hold); one that simulates only one of them has no counts for
the other (no data: the gate holds). Everything is counts: the cost of a look is the cost of the
metrics' windows, whatever the rps.
"""

from __future__ import annotations

from mlrollout.feedback import FeedbackQuery, QualityCounts
from mlrollout.sandbox.endpoint import LocalMetrics, _mirror_history
from mlrollout.sandbox.traffic import Confusion, History, Records


def _confusion(confusion: Confusion | None) -> dict[tuple[str, str], int]:
    """The sandbox's two-class matrix as ``(label, prediction) -> count`` (``"1"`` positive)."""
    if confusion is None:
        return {}
    cells = {
        ("1", "1"): confusion.tp,
        ("0", "1"): confusion.fp,
        ("0", "0"): confusion.tn,
        ("1", "0"): confusion.fn,
    }
    return {cell: n for cell, n in cells.items() if n}


class SandboxFeedback:
    """A :class:`~mlrollout.feedback.FeedbackSource` over a :class:`LocalMetrics`' traffic."""

    def __init__(self, metrics: LocalMetrics) -> None:
        self.metrics = metrics

    def read(self, query: FeedbackQuery) -> dict[str, QualityCounts]:
        endpoint = self.metrics.endpoint
        sandbox = endpoint.sandbox
        record = endpoint.record()
        if record is None:
            return {v: QualityCounts() for v in query.variants}
        started = float(record.get("started", record["origin"]))
        model = self.metrics.model(started)
        history: History = [(float(at), ws) for at, ws in record["history"]]
        mirror = _mirror_history(record, started)
        order: list[str] = record["order"]
        seen = set(record["variants"]).union(*(ws for _, ws in history), *(ms for _, ms in mirror))
        # Predictions made by the look: the buckets that have ended by now (and by the query's
        # end); of those, labelled: the buckets that ended label_delay before the end.
        end = model.boundary_before(min(query.end, endpoint.clock.now()))
        arrived = min(end, model.boundary_before(query.end - sandbox.label_delay))
        out: dict[str, QualityCounts] = {}
        for v in query.variants:
            behaviour = sandbox.variants.get(v)
            if behaviour is None:
                out[v] = QualityCounts(error=f"{v!r} is not a sandbox variant")
                continue
            if behaviour.accuracy is None and behaviour.feedback is None:
                out[v] = QualityCounts(
                    error=f"sandbox variant {v!r} simulates no labels or ratings: give it an "
                    "accuracy (such as accuracy: 0.9) or a feedback rate (feedback: 0.6)"
                )
                continue
            if v not in seen or not model.buckets(query.start, end):
                out[v] = QualityCounts()
                continue
            total = model.records(v, query.start, end, history, order, mirror)
            judged = (
                model.records(v, query.start, arrived, history, order, mirror)
                if model.buckets(query.start, arrived)
                else Records()
            )
            assert total is not None and judged is not None
            out[v] = _counts(total, judged)
        return out


def _counts(total: Records, judged: Records) -> QualityCounts:
    """The counts of a window whose ``judged`` prefix has its labels and ratings in."""
    labelled = judged.confusion.labelled if judged.confusion is not None else 0
    predicted = total.confusion.labelled if total.confusion is not None else 0
    counts = QualityCounts(confusion=_confusion(judged.confusion), waiting=predicted - labelled)
    if total.feedback is not None and total.live:  # a mirror alone is rated by nobody
        rated = judged.feedback or (0, 0)
        counts.feedback = rated
        counts.feedback_waiting = total.feedback[1] - rated[1]
    return counts
