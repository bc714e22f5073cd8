"""The pairing and counting core every capture source shares.

A source parses its records (its own layout: JSON lines, SageMaker DataCapture, Azure ML's data
collector) and feeds each one to a :class:`Pairing`: the variant, the parsed output (or
:meth:`Pairing.add_unparsed` for a record that did not parse), the inference id and the
platform's event id. The pairing keeps **counts, never records**:

- per variant: records, unparsed, unpaired;
- the pairs: how many, how many agree (numbers within ``tolerance``, lists of numbers element by
  element, anything else by equality), the first :data:`~mlrollout.capture.MAX_EXAMPLES`
  disagreements;
- per variant, outputs per drift bin (:class:`~mlrollout.capture.Bins`).

Memory is bounded whatever the number of records: a record waits for its partner in a table of
the ids not paired yet, which holds at most :data:`MAX_PENDING` entries (the oldest is given up
as unpaired when it is full: partners further apart than that in the stream are not paired);
before the drift bins are fixed, outputs wait in a buffer of at most :data:`BUFFER_CAP`.

Bins (when the query brings none): fixed from the first :data:`BIN_BASIS` parsed baseline
outputs of the window (or all of them, if fewer, when the summary is taken). All numbers:
numeric bins at the baseline's deciles (deduplicated); otherwise categorical: the categories
seen (at most :data:`MAX_CATEGORIES`, the most frequent) plus one for any other value.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from typing import TypeGuard

from mlrollout.capture import MAX_EXAMPLES, Bins, Disagreement, PredictionSummary
from mlrollout.capture.jsonpath import MISSING, Path

#: Ids waiting for their partner, at most (about 250 bytes each).
MAX_PENDING = 100_000
#: Baseline outputs the drift bins are fixed from.
BIN_BASIS = 1_000
#: Outputs held while the bins are not fixed yet, at most.
BUFFER_CAP = 100_000
#: Categories a categorical output keeps bins for (the most frequent of the basis).
MAX_CATEGORIES = 50
#: The key ``unparsed`` counts a record under when its variant cannot be told (broken JSON).
UNKNOWN = "unknown"


class Unparsable(ValueError):
    """A response body that cannot be decoded."""


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def agree(a: object, b: object, tolerance: float) -> bool:
    """Do two outputs agree: numbers within ``tolerance``, equal-length lists of numbers element
    by element, anything else by equality."""
    if type(a) is type(b) and a == b:  # the common case, first
        return True
    if is_number(a) and is_number(b):
        return abs(a - b) <= tolerance
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return all(agree(x, y, tolerance) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):  # True is a class here, not 1
        return type(a) is type(b) and a == b
    return a == b


def category(value: object) -> str:
    """How a categorical bin names a value."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _csv_value(text: str) -> object:
    rows = [row for row in csv.reader(io.StringIO(text.strip())) if row]
    if not rows:
        raise Unparsable("an empty CSV body")
    cells: list[object] = []
    for cell in rows[0]:
        cell = cell.strip()
        try:
            cells.append(float(cell))
        except ValueError:
            cells.append(cell)
    return cells[0] if len(cells) == 1 else cells


def decode_body(
    data: object, encoding: str | None = None, content_type: str | None = None
) -> object:
    """A captured response body as a JSON value: ``encoding`` ``BASE64`` (decoded first),
    ``JSON`` or ``CSV`` (SageMaker DataCapture's names; ``None``: JSON, else CSV); the content
    type (``text/csv``, ``application/json``) picks the format of decoded bytes. Raises
    :class:`Unparsable`."""
    kind = (encoding or "").upper()
    if not isinstance(data, str):
        if kind in ("", "JSON"):
            return data  # already a JSON value
        raise Unparsable(f"a {kind} body is a string, not {type(data).__name__}")
    text = data
    if kind == "BASE64":
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise Unparsable(f"a BASE64 body that does not decode: {exc}") from None
        kind = "CSV" if content_type and "csv" in content_type.lower() else ""
    if kind == "CSV":
        return _csv_value(text)
    try:
        return json.loads(text)
    except ValueError:
        if kind == "JSON":
            raise Unparsable("a JSON body that does not parse") from None
        return _csv_value(text)


def read_output(value: object, path: Path) -> object:
    """The prediction in a record's output: ``value`` itself, a captured body
    (``{data, encoding, observedContentType}``, decoded) or a JSON string (parsed when the path
    goes into it), then ``path`` applied. :data:`MISSING` when it is not there; raises
    :class:`Unparsable` for a body that does not decode."""
    if isinstance(value, dict) and "data" in value and "encoding" in value:
        content = value.get("observedContentType") or value.get("mode")
        value = decode_body(
            value["data"], str(value["encoding"]), content if isinstance(content, str) else None
        )
    elif isinstance(value, str) and not path.is_root:
        try:
            value = json.loads(value)
        except ValueError:
            raise Unparsable("a response body that is not JSON") from None
    return path.find(value)


def fix_bins(outputs: Iterable[object]) -> Bins | None:
    """Drift bins from baseline outputs (``None`` when there are none): all numbers → the
    deciles (deduplicated), otherwise the categories (the most frequent :data:`MAX_CATEGORIES`)
    plus "other"."""
    values = list(outputs)
    if not values:
        return None
    if all(is_number(v) for v in values):
        ordered = sorted(float(v) for v in values if is_number(v))
        n = len(ordered)
        edges: list[float] = []
        for tenth in range(1, 10):
            edge = ordered[max(0, math.ceil(tenth * n / 10) - 1)]
            if not edges or edge > edges[-1]:
                edges.append(edge)
        if edges and edges[-1] >= ordered[-1] and len(edges) > 1:
            edges.pop()  # no bin above the largest value: it would always be empty
        return Bins("numeric", edges=tuple(edges))
    seen = Counter(category(v) for v in values)
    top = sorted(name for name, _ in seen.most_common(MAX_CATEGORIES))
    return Bins("categorical", categories=tuple(top))


class Binner:
    """Which bin of ``bins`` an output falls in (``None``: a non-number under numeric bins)."""

    def __init__(self, bins: Bins) -> None:
        self.bins = bins
        self._index = {name: i for i, name in enumerate(bins.categories)}
        self._other = len(bins.categories)

    def __call__(self, value: object) -> int | None:
        if self.bins.kind == "numeric":
            kind = type(value)
            if kind is float or kind is int:  # the common case, first
                return bisect_left(self.bins.edges, value)  # type: ignore[call-overload,no-any-return]
            if not is_number(value):
                return None
            return bisect_left(self.bins.edges, value)
        if type(value) is str:
            return self._index.get(value, self._other)
        return self._index.get(category(value), self._other)


class Pairing:
    """Counts of one window's paired predictions, fed record by record (see the module notes).
    Reusable by every source: give it parsed records, take :meth:`summary` at the end (and
    keep feeding it for the next look, if the source keeps a cursor)."""

    def __init__(
        self,
        baseline: str,
        candidate: str,
        tolerance: float = 0.0,
        bins: Bins | None = None,
        *,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.names = (baseline, candidate)
        self.tolerance = tolerance
        self.max_pending = max(1, max_pending)
        self.records = [0, 0]
        self.unparsed = [0, 0]
        self.unknown = 0  # unparsed records whose variant cannot be told
        self.given_up = [0, 0]  # unpaired for good: no id, a duplicate id, evicted
        self.waiting = [0, 0]  # in ``pending`` now
        self.paired = 0
        self.agreed = 0
        self.examples: list[Disagreement] = []
        self.pending: dict[str, tuple[int, object]] = {}
        self.bins: Bins | None = None
        self.counts: list[list[int]] = [[], []]
        self._binner: Binner | None = None
        self._basis: list[object] = []
        self._buffer: list[tuple[int, object]] = []
        if bins is not None:
            self._set_bins(bins)

    # ---------------------------------------------------------------------------- feeding

    def index(self, variant: str) -> int | None:
        """0 for the baseline, 1 for the candidate, ``None`` for another variant."""
        if variant == self.names[0]:
            return 0
        if variant == self.names[1]:
            return 1
        return None

    def add_unparsed(self, variant: str | None = None) -> None:
        """A record that did not parse (``variant``: whose, if it can be told)."""
        i = None if variant is None else self.index(variant)
        if i is None:
            if variant is None:
                self.unknown += 1
            return
        self.records[i] += 1
        self.unparsed[i] += 1

    def add(
        self,
        variant: str,
        output: object,
        inference_id: str | None = None,
        event_id: str | None = None,
    ) -> None:
        """A parsed record of ``variant`` (records of other variants are ignored)."""
        i = self.index(variant)
        if i is not None:
            self.add_at(i, output, inference_id, event_id)

    def add_at(
        self, i: int, output: object, inference_id: str | None, event_id: str | None
    ) -> None:
        """:meth:`add` by variant index (0 baseline, 1 candidate): the sources' fast path."""
        self.records[i] += 1
        if output is MISSING:
            self.unparsed[i] += 1
            return
        binner = self._binner
        if binner is not None:
            b = binner(output)
            if b is not None:
                self.counts[i][b] += 1
        else:
            self._hold(i, output)
        if inference_id:
            key = "i:" + inference_id
        elif event_id:
            key = "e:" + event_id
        else:
            self.given_up[i] += 1
            return
        pending = self.pending
        other = pending.get(key)
        if other is None:
            if len(pending) >= self.max_pending:
                oldest = next(iter(pending))
                j = pending.pop(oldest)[0]
                self.waiting[j] -= 1
                self.given_up[j] += 1
            pending[key] = (i, output)
            self.waiting[i] += 1
            return
        j, partner = other
        if j == i:  # the same variant twice with one id: the second is unpaired
            self.given_up[i] += 1
            return
        del pending[key]
        self.waiting[j] -= 1
        self.paired += 1
        base, cand = (partner, output) if i == 1 else (output, partner)
        if agree(base, cand, self.tolerance):
            self.agreed += 1
        elif len(self.examples) < MAX_EXAMPLES:
            self.examples.append(Disagreement(key[2:], base, cand))

    # ------------------------------------------------------------------------------ bins

    def _set_bins(self, bins: Bins) -> None:
        self.bins = bins
        self._binner = Binner(bins)
        self.counts = [[0] * bins.size, [0] * bins.size]

    def _hold(self, i: int, output: object) -> None:
        if i == 0 and len(self._basis) < BIN_BASIS:
            self._basis.append(output)
        if len(self._basis) >= BIN_BASIS or (len(self._buffer) >= BUFFER_CAP and self._basis):
            self._buffer.append((i, output))
            self._fix()
        elif len(self._buffer) < BUFFER_CAP:
            self._buffer.append((i, output))
        # else: no baseline output among the first BUFFER_CAP outputs: not binned

    def _fix(self) -> None:
        bins = fix_bins(self._basis)
        if bins is None:
            return
        self._set_bins(bins)
        binner = self._binner
        assert binner is not None
        for i, output in self._buffer:
            b = binner(output)
            if b is not None:
                self.counts[i][b] += 1
        self._basis, self._buffer = [], []

    # ---------------------------------------------------------------------------- summary

    def summary(self) -> PredictionSummary:
        """The counts so far (fixes the bins from the baseline outputs seen, if not yet)."""
        if self._binner is None and self._basis:
            self._fix()
        base, cand = self.names
        unparsed = {base: self.unparsed[0], cand: self.unparsed[1]}
        if self.unknown:
            unparsed[UNKNOWN] = self.unknown
        return PredictionSummary(
            paired=self.paired,
            agreed=self.agreed,
            records={base: self.records[0], cand: self.records[1]},
            unparsed=unparsed,
            unpaired={
                base: self.given_up[0] + self.waiting[0],
                cand: self.given_up[1] + self.waiting[1],
            },
            bins=self.bins,
            counts={base: list(self.counts[0]), cand: list(self.counts[1])}
            if self.bins is not None
            else {},
            examples=list(self.examples),
            baseline=base,
            candidate=cand,
        )
