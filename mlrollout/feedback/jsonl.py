"""``feedback: {source: {jsonl: PATH-or-URI}}``: labels and ratings as JSON lines (the formats:
:mod:`mlrollout.feedback.join`), joined to each variant's captured predictions.

Where the lines are: a local file or directory, ``file://``, or any URI an installed
``mlrollout.objects`` plugin opens (``s3://bucket/prefix/`` with ``mlrollout-aws``;
``az://account/container/prefix`` and ``https://ACCOUNT.blob.core.windows.net/...`` with
``mlrollout-azure``), through :func:`mlrollout.objects.open_objects` with the plan's
``target.endpoint_url`` (for emulators).

Where the predictions are: the plan's capture. With ``capture: {source: {jsonl: PATH}}`` they
are the lines of :mod:`mlrollout.capture.jsonl`, read by its own parser, each variant's records
by id; with the provider's capture (``source: default``) they come from the provider's feedback
source (its spec's ``open_feedback(context)``), when it offers them (``predictions(query)``:
SageMaker's DataCapture), else the look is an error measurement naming the fix. A variant's
predictions are those of live traffic and of mirrored copies it answered: whatever its capture
holds.

The predictions' reader keeps a cursor for the looks of one stage (the same start, variants and
output): it reads only the bytes appended since the last look; the labels' reader reads only the
objects that changed. A look from a new process gives the same counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from mlrollout.capture.cursor import Ahead
from mlrollout.capture.jsonl import JsonlCapture
from mlrollout.capture.jsonpath import compile_path
from mlrollout.errors import ProviderError
from mlrollout.feedback import FeedbackQuery, QualityCounts
from mlrollout.feedback.join import LabelReader, PredictionIndex, look, pairs
from mlrollout.objects import ObjectFiles, open_objects

if TYPE_CHECKING:
    from mlrollout.contracts import ProviderContext
    from mlrollout.plan.model import Plan


class PredictionReader(Protocol):
    """Each variant's captured predictions of a window, by id."""

    def predictions(self, query: FeedbackQuery) -> PredictionIndex: ...


class JsonlPredictions:
    """Each variant's predictions from ``capture: {source: {jsonl: PATH}}`` files, parsed by
    :class:`~mlrollout.capture.jsonl.JsonlCapture` (the capture's one JSON-lines parser)."""

    def __init__(self, location: str, *, cursor: bool = True) -> None:
        self.capture = JsonlCapture(location)
        self.use_cursor = cursor
        # (start, variants, output) -> (offsets per file and pair, index so far, held back)
        self._key: tuple[object, ...] | None = None
        self._offsets: dict[tuple[str, int], int] = {}
        self._index: PredictionIndex | None = None
        self._ahead: list[list[Ahead]] = []

    @property
    def bytes_read(self) -> int:
        return self.capture.bytes_read

    def predictions(self, query: FeedbackQuery) -> PredictionIndex:
        path = compile_path(query.output)  # raises PathError (a ValueError)
        files = self.capture.files()
        groups = pairs(query.variants)
        key = (query.start, query.variants, query.output)
        if (
            not self.use_cursor
            or self._key != key
            or self._index is None
            or any(
                f.stat().st_size < self._offsets.get((str(f), g), 0)
                for f in files
                for g in range(len(groups))
            )
        ):
            self._key, self._offsets = key, {}
            self._index = PredictionIndex(query.variants)
            self._ahead = [[] for _ in groups]
        index = self._index
        for g, names in enumerate(groups):
            part = PredictionIndex(names)
            still: list[Ahead] = []
            for item in self._ahead[g]:  # records stamped after the last look's end
                if item[0] > query.end:
                    still.append(item)
                else:
                    part.add_at(item[1], item[2], item[3], item[4])
            ahead: list[Ahead] = []
            for file in files:
                name = (str(file), g)
                self._offsets[name] = self.capture.read_file(
                    file, self._offsets.get(name, 0), part, path, query.start, query.end, ahead
                )
            self._ahead[g] = still + ahead  # each part at most MAX_AHEAD
            index.merge(part)
        if not self.use_cursor:
            self._index = None
        return index


class JsonlFeedback:
    """A :class:`~mlrollout.feedback.FeedbackSource` for ``{jsonl: PATH-or-URI}`` (see the
    module)."""

    def __init__(self, plan: Plan, context: ProviderContext | None = None) -> None:
        feedback = plan.feedback
        assert feedback is not None and feedback.jsonl is not None
        self.location = feedback.jsonl
        self.endpoint_url = plan.target.endpoint_url
        self.plan = plan
        self.context = context
        self._labels: LabelReader | None = None
        self._predictions: PredictionReader | None = None
        self._provider: tuple[object] | None = None  # the provider's feedback source, once

    # ---------------------------------------------------------------------------- opening

    def _reader(self) -> PredictionReader:
        if self._predictions is None:
            capture = self.plan.capture
            if capture is not None and capture.jsonl is not None:
                self._predictions = JsonlPredictions(capture.jsonl)
            else:
                self._predictions = self._provider_predictions()
        return self._predictions

    def _provider_source(self) -> object:
        if self._provider is None:
            from mlrollout.plugins import provider_spec

            opener = getattr(provider_spec(self.plan.target.provider), "open_feedback", None)
            found = opener(self.context) if callable(opener) and self.context is not None else None
            self._provider = (found,)
        return self._provider[0]

    def _provider_predictions(self) -> PredictionReader:
        source = self._provider_source()
        if source is None or not callable(getattr(source, "predictions", None)):
            raise ProviderError(
                f"provider {self.plan.target.provider!r} reads no captured predictions to join "
                f"the labels of {self.location} to",
                hint="add capture: {source: {jsonl: PATH}} with the application's prediction "
                "records ({inference_id, variant, output, time})",
            )
        reader: PredictionReader = source  # type: ignore[assignment]
        return reader

    def _files(self) -> ObjectFiles:
        return open_objects(self.location, endpoint_url=self.endpoint_url)

    # ---------------------------------------------------------------------------- reading

    def read(self, query: FeedbackQuery) -> dict[str, QualityCounts]:
        return look(query, self._label_reader, lambda q: self._reader().predictions(q))

    def _label_reader(self) -> LabelReader:
        if self._labels is None:
            self._labels = LabelReader(self._files())
        return self._labels


__all__ = ["JsonlFeedback", "JsonlPredictions", "PredictionReader"]
