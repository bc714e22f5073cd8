"""A capture source's cursor between looks: the pairing of the last look, what of the capture it
has read, and the records stamped after the last look's end that it held back for the next one.

Every source that keeps a cursor (the JSON-lines files, SageMaker's DataCapture, Azure ML's data
collector) starts a look with :func:`resume`: the cursor goes on only for the same query (same
place, window start, variants, output, tolerance and bins), else the look starts from nothing;
then the records held back that this look's end reaches are fed, in their order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlrollout.capture import CaptureQuery
from mlrollout.capture.pairing import Pairing

#: Records stamped after the window's end held for the next look, at most (beyond: counted now,
#: so that a clock far ahead cannot fill the memory).
MAX_AHEAD = 100_000

#: One record stamped after the window's end: (time, variant index, output, id, event id).
Ahead = tuple[float, int, object, str | None, str | None]


@dataclass
class Cursor:
    """Where a source's last look ended. ``key`` tells the query it is for; a source uses what
    of ``offsets`` (bytes read per file or blob), ``read`` (objects read whole) and ``closed``
    (folders that get no more records) fits how its capture is written."""

    key: tuple[object, ...]
    pairing: Pairing
    ahead: list[Ahead] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    read: set[str] = field(default_factory=set)
    closed: set[str] = field(default_factory=set)


def resume(cursor: Cursor | None, query: CaptureQuery, *where: object) -> Cursor:
    """The cursor of a look for ``query`` at ``where`` (what the source reads from): ``cursor``
    (the last look's, or None) if it was for the same query there, else a new one with an empty
    pairing; the records it held back that ``query.end`` reaches are fed to its pairing."""
    key = (*where, query.start, query.baseline, query.candidate, query.output, query.tolerance)
    if cursor is not None and (cursor.key != key or cursor.pairing.bins != query.bins):
        cursor = None
    if cursor is None:
        pairing = Pairing(query.baseline, query.candidate, query.tolerance, query.bins)
        cursor = Cursor(key, pairing)
    catch_up(cursor, query.end)
    return cursor


def catch_up(cursor: Cursor, end: float) -> None:
    """Feed ``cursor``'s pairing the records it held back that a look ending at ``end``
    reaches (a source continuing a cursor of its caller's does this first)."""
    still: list[Ahead] = []
    for item in cursor.ahead:
        if item[0] > end:
            still.append(item)
        else:
            cursor.pairing.add_at(item[1], item[2], item[3], item[4])
    cursor.ahead = still


__all__ = ["MAX_AHEAD", "Ahead", "Cursor", "catch_up", "resume"]
