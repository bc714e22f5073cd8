"""The sandbox's capture source: simulated predictions of the mirrored requests, as counts.

A mirrored (shadow) candidate answers a copy of live requests the baseline also answers, so
every mirrored request is a pair. For each traffic bucket ``k`` of the window (the buckets the
metrics publish, see :mod:`mlrollout.sandbox.traffic`):

- the candidate's mirrored requests ``n`` are the metrics' own (``Records.mirrored`` of that
  bucket, from the same :class:`~mlrollout.sandbox.endpoint.LocalMetrics`), less its errors on
  them; the baseline fails on its share of those (its ``error_rate``), and a request only one
  of them answered is an unpaired record of that variant;
- each pair has a true label, ``"1"`` or ``"0"`` with share 0.5 (as the ``accuracy`` model of
  the live traffic), and each variant's prediction matches it with that variant's ``accuracy``
  (independently); then a variant's ``output_shift`` turns that share of its answers into
  ``"1"``, whatever its model said (an output distribution that drifts). So the two agree with
  probability ``a_b a_c + (1 - a_b)(1 - a_c)`` with no shift (two classes);
- all drawn as counts (binomials over the four cells per label) from a random stream seeded by
  ``(sandbox.seed, candidate, baseline, k)``: the same window gives the same summary in every
  process; a bucket is drawn once and kept, so a look costs what its new buckets cost.

Outputs are categorical (``"0"``, ``"1"``): bins are ``("0", "1")`` plus other unless the query
brings its own. A variant without ``accuracy`` simulates no predictions: the summary says so
(an error measurement: the gates hold). Only mirrored requests are simulated.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from mlrollout.capture import (
    MAX_EXAMPLES,
    Bins,
    CaptureQuery,
    Disagreement,
    PredictionSummary,
)
from mlrollout.capture.pairing import Binner
from mlrollout.sandbox.endpoint import LocalMetrics, _mirror_history
from mlrollout.sandbox.traffic import History, _binomial, _seed

#: The classes the sandbox predicts, and the bins it fixes.
CLASSES = ("0", "1")
SANDBOX_BINS = Bins("categorical", categories=CLASSES)


@dataclass
class _Bucket:
    """One bucket's simulated capture: pairs by (baseline, candidate) prediction, and the
    outputs of requests only one variant answered."""

    k: int
    cells: dict[tuple[str, str], int] = field(default_factory=dict)
    lone: list[dict[str, int]] = field(default_factory=lambda: [{}, {}])  # baseline, candidate


def _p_one(accuracy: float, shift: float, label: str) -> float:
    right = accuracy if label == "1" else 1.0 - accuracy
    return shift + (1.0 - shift) * right


class SandboxCapture:
    """A :class:`~mlrollout.capture.CaptureSource` over the sandbox's mirrored traffic."""

    def __init__(self, metrics: LocalMetrics) -> None:
        self.metrics = metrics
        self._origin: float | None = None
        self._buckets: dict[tuple[str, str, int], _Bucket | None] = {}
        self.drawn = 0  # buckets simulated (not served from the cache)

    def read(self, query: CaptureQuery) -> PredictionSummary:
        endpoint = self.metrics.endpoint
        sandbox = endpoint.sandbox
        for name in (query.baseline, query.candidate):
            variant = sandbox.variants.get(name)
            if variant is None:
                return PredictionSummary(error=f"{name!r} is not a sandbox variant")
            if variant.accuracy is None:
                return PredictionSummary(
                    error=f"sandbox variant {name!r} simulates no predictions: give it an "
                    "accuracy (such as accuracy: 0.9)"
                )
        record = endpoint.record()
        if record is None:
            return self._summary(query, [])
        started = float(record.get("started", record["origin"]))
        model = self.metrics.model(started)
        if self._origin != started:
            self._origin, self._buckets = started, {}
        history: History = [(float(at), ws) for at, ws in record["history"]]
        mirror = _mirror_history(record, started)
        order: list[str] = record["order"]
        edge = started + model.world.visible_until(endpoint.clock.now() - started)
        end = min(query.end, model.boundary_before(edge))
        buckets: list[_Bucket] = []
        if mirror:
            for k in model.buckets(query.start, end):
                key = (query.baseline, query.candidate, k)
                if key not in self._buckets:
                    self._buckets[key] = self._draw(query, k, history, order, mirror)
                drawn = self._buckets[key]
                if drawn is not None:
                    buckets.append(drawn)
        return self._summary(query, buckets)

    def _draw(
        self, query: CaptureQuery, k: int, history: History, order: list[str], mirror: History
    ) -> _Bucket | None:
        model = self.metrics.model(self._origin or 0.0)
        lo, hi = model.bucket_start(k), model.bucket_start(k + 1)
        records = model.records(query.candidate, lo, hi, history, order, mirror)
        if records is None or not records.mirrored:
            return None
        self.drawn += 1
        t = k * model.bucket
        base = model.world.behaviour(query.baseline, t)
        cand = model.world.behaviour(query.candidate, t)
        assert base.accuracy is not None and cand.accuracy is not None
        rng = random.Random(
            _seed(model.sandbox.seed, f"capture\x1f{query.baseline}\x1f{query.candidate}", k)
        )
        n = records.mirrored
        # The candidate's errors on its mirrored copies (its live errors, if any, pro rata).
        errors = round(records.errors * n / records.requests) if records.requests else 0
        cand_ok = max(0, n - errors)
        both = _binomial(rng, cand_ok, 1.0 - base.error_rate)
        base_only = _binomial(rng, n - cand_ok, 1.0 - base.error_rate)
        out = _Bucket(k)
        ones = _binomial(rng, both, 0.5)
        for label, m in (("1", ones), ("0", both - ones)):
            pb = _p_one(base.accuracy, base.output_shift, label)
            pc = _p_one(cand.accuracy, cand.output_shift, label)
            b1 = _binomial(rng, m, pb)
            for b_pred, mb in (("1", b1), ("0", m - b1)):
                c1 = _binomial(rng, mb, pc)
                for c_pred, count in (("1", c1), ("0", mb - c1)):
                    if count:
                        cell = (b_pred, c_pred)
                        out.cells[cell] = out.cells.get(cell, 0) + count
        # Requests one variant answered alone: their outputs count in the bins, unpaired.
        for i, (behaviour, lone) in enumerate(((base, base_only), (cand, cand_ok - both))):
            assert behaviour.accuracy is not None
            p = 0.5 * (
                _p_one(behaviour.accuracy, behaviour.output_shift, "1")
                + _p_one(behaviour.accuracy, behaviour.output_shift, "0")
            )
            one = _binomial(rng, lone, p)
            out.lone[i] = {c: v for c, v in (("1", one), ("0", lone - one)) if v}
        return out

    def _summary(self, query: CaptureQuery, buckets: list[_Bucket]) -> PredictionSummary:
        bins = query.bins if query.bins is not None else SANDBOX_BINS
        binner = Binner(bins)
        counts = [[0] * bins.size, [0] * bins.size]
        records, unpaired = [0, 0], [0, 0]
        paired = agreed = 0
        examples: list[Disagreement] = []
        for bucket in buckets:
            for (b, c), count in bucket.cells.items():
                paired += count
                records[0] += count
                records[1] += count
                for i, value in ((0, b), (1, c)):
                    slot = binner(value)
                    if slot is not None:
                        counts[i][slot] += count
                if b == c:
                    agreed += count
                else:
                    for r in range(min(count, MAX_EXAMPLES - len(examples))):
                        examples.append(Disagreement(f"sandbox-{bucket.k}-{b}{c}-{r}", b, c))
            for i in (0, 1):
                for value, count in bucket.lone[i].items():
                    records[i] += count
                    unpaired[i] += count
                    slot = binner(value)
                    if slot is not None:
                        counts[i][slot] += count
        base, cand = query.baseline, query.candidate
        return PredictionSummary(
            paired=paired,
            agreed=agreed,
            records={base: records[0], cand: records[1]},
            unparsed={base: 0, cand: 0},
            unpaired={base: unpaired[0], cand: unpaired[1]},
            bins=bins,
            counts={base: counts[0], cand: counts[1]},
            examples=examples,
            baseline=base,
            candidate=cand,
        )
