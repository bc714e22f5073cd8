"""SageMaker Model Monitor's ground truth as a feedback source: labels in S3 joined, by id, to each
variant's DataCapture records.

Model Monitor reads ground truth that the team uploads under an S3 prefix of its choosing, in
hourly folders ``s3://BUCKET/PREFIX/yyyy/mm/dd/hh/*.jsonl`` (the hour the labels were uploaded,
UTC), one record a line::

    {"groundTruthData": {"data": "1", "encoding": "CSV"},
     "eventMetadata": {"eventId": "..."}, "eventVersion": "0"}

``eventMetadata.eventId`` is the captured request's ``inferenceId`` when the caller gave one, else
its ``eventId``: a prediction finds its label by inference id, then by event id. The lines are
parsed by :mod:`mlrollout.feedback.join` (which also takes ``{inference_id, label}`` /
``{inference_id, value}`` lines in the same files). A line that does not parse is counted as
broken and reported, never fatal. Labels have no arrival time of their own: a label counts once
its file is in S3 (a line's optional ``time`` says otherwise).

Where the labels are: ``feedback: {source: {jsonl: s3://BUCKET/PREFIX/}}`` (the core's
:class:`~mlrollout.feedback.jsonl.JsonlFeedback` reads them through the ``s3`` objects plugin,
:mod:`mlrollout_aws.objects`, and asks this source for the predictions), or, with
``feedback: default``, the target's ``ground_truth_s3_uri`` (read here, with the same
:class:`~mlrollout_aws.objects.S3Files`).

The predictions: each variant's DataCapture records, read by
:class:`~mlrollout_aws.capture.DataCaptureSource` itself (its hour folders of the window, its
files read once, its parsing: the body decoded and the plan's ``capture.output`` JSONPath
applied) on a cursor whose pairing is a :class:`~mlrollout.feedback.join.PredictionIndex`, so
each variant keeps its own records. That cursor (the capture files already read, the hours
closed, the records stamped after the last look's end) goes on from look to look of a stage;
the labels' reader reads only new or changed objects, and none in an hour folder that ended
before the window's start. One look: a ``ListObjectsV2`` per variant and hour of the window still
open, one per 1,000 ground-truth objects under the prefix, a ``GetObject`` per new file.
"""

from __future__ import annotations

from typing import Any

from mlrollout.capture import CaptureQuery
from mlrollout.capture.cursor import Cursor
from mlrollout.capture.jsonpath import compile_path
from mlrollout.contracts import ProviderContext
from mlrollout.errors import ProviderError
from mlrollout.feedback import FeedbackQuery, QualityCounts
from mlrollout.feedback.join import LabelReader, PredictionIndex, failed, look, pairs
from mlrollout.retry import RetryPolicy
from mlrollout_aws._aws import make_client
from mlrollout_aws.capture import DataCaptureSource, split_uri
from mlrollout_aws.objects import S3Files

#: The target key naming where Model Monitor's ground truth lives, for ``feedback: default``.
GROUND_TRUTH_KEY = "ground_truth_s3_uri"


class DataCapturePredictions:
    """Each variant's DataCapture records of a window, by id (see the module)."""

    def __init__(self, capture: DataCaptureSource, *, cursor: bool = True) -> None:
        self.capture = capture
        self.use_cursor = cursor
        self._key: tuple[object, ...] | None = None
        self._cursors: list[Cursor] = []

    def predictions(self, query: FeedbackQuery) -> PredictionIndex:
        compile_path(query.output)  # raises PathError
        source = self.capture
        bucket, prefix = source.destination()  # raises ProviderError
        groups = pairs(query.variants)
        key = (bucket, prefix, query.start, query.variants, query.output)
        if not self.use_cursor or key != self._key:
            self._key = key
            self._cursors = []
            self._cursors = [Cursor((key, names), PredictionIndex(names)) for names in groups]
        index = PredictionIndex(query.variants)
        for g, names in enumerate(groups):
            # The capture source's own look (its listing, its files read once, its parsing),
            # on a cursor whose records go to this index instead of a pairing.
            cursor = self._cursors[g]
            error = source.read_into(cursor, self._capture_query(query, names))
            if error is not None:
                self._key = None  # a look that failed half-way: the next one starts again
                raise ProviderError(error)
            assert isinstance(cursor.pairing, PredictionIndex)
            index.merge(cursor.pairing)
        return index

    @staticmethod
    def _capture_query(query: FeedbackQuery, names: tuple[str, ...]) -> CaptureQuery:
        return CaptureQuery(query.start, query.end, names[0], names[-1], query.output)


class GroundTruthFeedback:
    """A :class:`~mlrollout.feedback.FeedbackSource`: Model Monitor's ground truth under
    ``labels_uri`` joined to the endpoint's DataCapture (see the module)."""

    def __init__(
        self,
        predictions: DataCapturePredictions,
        s3: Any,
        labels_uri: str | None,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._predictions = predictions
        self.s3 = s3
        self.retry = retry or RetryPolicy()
        self.labels_uri = labels_uri
        self._labels: LabelReader | None = None

    @classmethod
    def from_context(cls, context: ProviderContext) -> GroundTruthFeedback:
        target = context.plan.target
        region = str(target.setting("region") or "") or None
        profile = target.setting("profile")
        s3 = make_client("s3", region=region, profile=profile, endpoint_url=target.endpoint_url)
        retry = RetryPolicy(sleep=context.clock.sleep)
        uri = target.setting(GROUND_TRUTH_KEY)
        return cls(
            DataCapturePredictions(DataCaptureSource.from_context(context)),
            s3,
            str(uri) if uri else None,
            retry=retry,
        )

    def objects(self, location: str) -> S3Files:
        """The S3 files at ``location`` with this source's client and retry policy."""
        bucket, prefix = split_uri(location)
        root = f"{prefix}/" if prefix and location.endswith("/") else prefix
        return S3Files(bucket, root, client=self.s3, retry=self.retry)

    def predictions(self, query: FeedbackQuery) -> PredictionIndex:
        """Each variant's DataCapture records of the window, by id."""
        return self._predictions.predictions(query)

    def read(self, query: FeedbackQuery) -> dict[str, QualityCounts]:
        uri = self.labels_uri
        if uri is None:
            return failed(
                query,
                "no ground truth location: set feedback.source: {jsonl: s3://BUCKET/PREFIX/} "
                "to where the Model Monitor ground truth is uploaded",
            )
        return look(query, lambda: self._label_reader(uri), self.predictions)

    def _label_reader(self, uri: str) -> LabelReader:
        if self._labels is None:
            self._labels = LabelReader(self.objects(uri))
        return self._labels
