"""Late-onset detection: the rate tests' evidence restarted at fixed points of a stage.

Windows are cumulative from the stage's start, so a regression that begins minutes into a stage
is diluted by the healthy minutes before it. Besides the test on the whole stage, each rate
test (vs the baseline, or against a ``max``/``min``) also runs the same test on the counts
*since* a few restart points fixed in advance (from the per-look increments the look carries,
:attr:`~mlrollout.analysis.rule.LookContext.intervals`), and rolls back when any of them
crosses its own boundary.

The budget: the rollback test's ``alpha`` is split in advance, ``1 - SHARE`` for the test on
the whole stage and ``SHARE`` for the restarts, shared among them by the weights of
:func:`restarts` (summing to 1). Each restarted test is the ordinary always-valid test started
later, with its own calibrated boundary (the stage's looks that remain after its restart), so
by the union bound the chance that any of them rolls back a healthy candidate is at most
``alpha``. The restart points depend only on the stage's planned looks, never on the data.

- A stage of known length (``horizon`` looks): :data:`RESTARTS` points at equal spacing,
  ``k * horizon / (RESTARTS + 1)`` (``k = 1..RESTARTS``), weighted in proportion to the share of
  the stage left after each (a test restarted near the end has little time to act).
- No planned end (an approval wait) or an unknown look: a point every :data:`OPEN_SPACING`
  intervals with weights ``1 / (k (k + 1))`` (later restarts get less: the stage may go on
  for ever).

The whole-stage test spends its ``1 - SHARE`` at one calibrated boundary over the whole stage.
Spending it early instead (a lower boundary before the first restart point, where no restarted
test exists yet, and a higher one after it, the two pieces' crossing probabilities added) was
measured and is slower, not faster: a constant boundary is already crossed within the first
``horizon / (RESTARTS + 1)`` looks in about 40 % of the healthy stages that ever cross it, so a
lower early boundary costs much of the budget, and a doubling's detections straddle the first
restart point, so the runs found after it pay the higher boundary (the decision benchmark's
``errors x2``: 145-149 s instead of 134 s with 30-50 % of the share before the first point).
Calibrated jointly (the two pieces' boundaries chosen together in the Gaussian limit, which
would need a table of its own), the best split measured (80 % of the share over the first 25
looks) gains 3 s on the doubling's mean, and pays for it in its p95 (320 s instead of 290 s)
and in the slower regressions found later in the stage (``errors x1.5``: 410 s instead of 393 s);
see ``docs/analysis.md``, "Where the doubling's 30 s go". The restarts' share cannot be lent
to the early piece either: the restarted tests spend all of it later, and the union bound adds
the two.

The dispersion factor (:mod:`~mlrollout.analysis.dispersion`) of the whole stage discounts the
restarted evidence too. Without intervals (API callers, old journals) there is nothing to restart
from: the whole-stage test keeps the whole budget, exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence

#: The share of a rollback test's budget spent on the restarted tests.
SHARE = 0.25
#: Restart points in a stage of known length.
RESTARTS = 12
#: With no planned end: a restart point every this many intervals ...
OPEN_SPACING = 12
#: ... up to this many.
OPEN_RESTARTS = 40
#: The verdict's name of the method (``plan preview`` prints it).
METHOD = f"restarted at {RESTARTS} points of a stage for late onsets"


def restarts(horizon: int | None, available: int) -> list[tuple[int, float]]:
    """``(start, weight)``: the restarted tests that have begun by now, ``start`` the number of
    intervals each leaves out (it judges ``intervals[start:]``), for a stage of ``horizon`` looks
    (``None`` or 0: no planned end) of which ``available`` intervals are in."""
    out: list[tuple[int, float]] = []
    if horizon is not None and horizon > RESTARTS + 1:
        # weights in proportion to the share of the stage left after each point
        total = sum(1.0 - k / (RESTARTS + 1) for k in range(1, RESTARTS + 1))
        for k in range(1, RESTARTS + 1):
            start = round(k * horizon / (RESTARTS + 1))
            if start >= available:
                break
            out.append((start, (1.0 - k / (RESTARTS + 1)) / total))
        return out
    if horizon is not None and horizon > 0:
        return out  # too short a stage to restart in
    for k in range(1, OPEN_RESTARTS + 1):
        start = k * OPEN_SPACING
        if start >= available:
            break
        out.append((start, 1.0 / (k * (k + 1))))
    return out


def suffixes(rows: Sequence[Sequence[float]], starts: Sequence[int]) -> list[tuple[float, ...]]:
    """The column sums of ``rows[start:]`` for each ``start`` (in increasing order)."""
    if not starts:
        return []
    width = len(rows[0]) if rows else 0
    out: list[tuple[float, ...]] = []
    total = [0.0] * width
    i = len(rows)
    for start in sorted(starts, reverse=True):
        while i > start:
            i -= 1
            row = rows[i]
            for j in range(width):
                total[j] += row[j]
        out.append(tuple(total))
    out.reverse()
    return out
