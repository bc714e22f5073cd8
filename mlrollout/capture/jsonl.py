"""``capture: {source: {jsonl: PATH-or-URI}}``: JSON lines the application writes, one a
response, ``{"inference_id": ..., "variant": ..., "output": ..., "time": ...}``.

- ``output`` is the prediction itself, or a response body the plan's ``capture.output``
  JSONPath reads (a JSON value, a JSON string, or a captured body ``{data, encoding}`` with
  ``encoding`` ``BASE64``/``JSON``/``CSV``); ``event_id`` pairs a record that has no
  ``inference_id``; ``time`` is seconds since the epoch or an ISO 8601 instant (records before
  the window's start are skipped, those after its end wait for a later look; a record without
  a time counts in every window).
- PATH is a file, a directory (every ``*.jsonl`` below it, in name order) or a ``file://`` URI.
- A line that does not parse, lacks its output or whose output is not at the path is counted as
  unparsed (under its variant when that can be read, else under ``unknown``), never fatal.

The source keeps a **cursor**: the byte offset of each file it has read, the pairing so far and
the records that were ahead of the window. The next look of the same stage (same start,
variants, path, tolerance, bins) reads only the bytes appended since (a partial last line waits
for its newline); anything else (a new stage, a file that shrank) starts again from the top.
The summary is the same as a fresh read's (:attr:`JsonlCapture.bytes_read` counts the work),
with one caveat: a record stamped after a look's end is fed at the next look, before the new
lines, where a fresh read feeds it in its place in the file. Counts do not depend on that order,
except when an id comes twice from one variant (which of the two pairs) and for which
disagreements are kept as examples.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path as FsPath
from urllib.parse import unquote, urlparse

from mlrollout.capture import CaptureQuery, PredictionSummary
from mlrollout.capture.cursor import MAX_AHEAD, Ahead, Cursor, resume
from mlrollout.capture.jsonpath import MISSING, Path, PathError, compile_path
from mlrollout.capture.pairing import Pairing, Unparsable, read_output

_CHUNK = 1 << 20
_DECODER = json.JSONDecoder()


def local_path(location: str) -> FsPath:
    """A jsonl location as a local path: a path or a ``file://`` URI; raises ``ValueError`` for
    another scheme."""
    if "://" in location:
        parsed = urlparse(location)
        if parsed.scheme != "file":
            raise ValueError(
                f"the jsonl capture source reads local paths and file:// URIs, not "
                f"{parsed.scheme}:// (copy the records locally, or use the provider's own "
                "capture: source: default)"
            )
        return FsPath(unquote(parsed.path))
    return FsPath(location).expanduser()


def parse_time(value: object) -> float | None:
    """Seconds since the epoch from a number or an ISO 8601 string (``None``: no time;
    raises ``ValueError`` for one that does not parse)."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    raise ValueError(f"a time is a number or an ISO 8601 string, not {value!r}")


class JsonlCapture:
    """A :class:`~mlrollout.capture.CaptureSource` over JSON-lines files (see the module)."""

    def __init__(self, location: str, *, cursor: bool = True) -> None:
        self.location = location
        self.use_cursor = cursor
        self.bytes_read = 0  # over this source's life: what the cursor saves shows here
        self.lines_read = 0
        self._cursor: Cursor | None = None

    def files(self) -> list[FsPath]:
        root = local_path(self.location)
        if root.is_dir():
            return sorted(p for p in root.rglob("*.jsonl") if p.is_file())
        return [root] if root.exists() else []

    def read(self, query: CaptureQuery) -> PredictionSummary:
        try:
            path = compile_path(query.output)
            files = self.files()
        except (ValueError, OSError) as exc:
            return PredictionSummary(error=str(exc))
        last = self._cursor if self.use_cursor else None
        if last is not None and any(
            not p.exists() or p.stat().st_size < last.offsets.get(str(p), 0) for p in files
        ):
            last = None  # a file was rotated or truncated: start again
        cursor = resume(last, query, self.location)
        pairing = cursor.pairing
        start, end = query.start, query.end
        try:
            for file in files:
                name = str(file)
                cursor.offsets[name] = self.read_file(
                    file, cursor.offsets.get(name, 0), pairing, path, start, end, cursor.ahead
                )
        except OSError as exc:
            self._cursor = None
            return PredictionSummary(error=f"could not read {self.location}: {exc}")
        self._cursor = cursor if self.use_cursor else None
        return pairing.summary()

    def read_file(
        self,
        file: FsPath,
        offset: int,
        pairing: Pairing,
        path: Path,
        start: float,
        end: float,
        ahead: list[Ahead],
    ) -> int:
        """Feed ``file``'s complete lines from ``offset``; returns the offset after the last
        complete line."""
        root = path.is_root
        base, cand = pairing.names
        add_at, add_unparsed = pairing.add_at, pairing.add_unparsed
        decode = _DECODER.raw_decode
        with open(file, "rb") as handle:
            handle.seek(offset)
            tail = b""
            while True:
                chunk = handle.read(_CHUNK)
                if not chunk:
                    break
                self.bytes_read += len(chunk)
                data = tail + chunk
                cut = data.rfind(b"\n")
                if cut < 0:
                    tail = data
                    continue
                tail = data[cut + 1 :]
                lines = data[:cut].decode("utf-8", errors="replace").split("\n")
                self.lines_read += len(lines)
                for line in lines:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        rec, stop = decode(line)
                    except ValueError:
                        add_unparsed(None)
                        continue
                    if stop != len(line):  # something after the record: not one JSON value
                        add_unparsed(None)
                        continue
                    if not isinstance(rec, dict):
                        add_unparsed(None)
                        continue
                    variant = rec.get("variant")
                    if variant == base:
                        i = 0
                    elif variant == cand:
                        i = 1
                    else:
                        if not isinstance(variant, str):
                            add_unparsed(None)
                        continue  # another variant's record
                    t = rec.get("time")
                    if t is not None:
                        if not isinstance(t, int | float):
                            try:
                                t = parse_time(t)
                            except (ValueError, TypeError):
                                add_unparsed(variant)
                                continue
                        assert t is not None
                        if t < start:
                            continue
                    raw = rec.get("output", MISSING)
                    if raw is MISSING:
                        output: object = MISSING
                    elif root and not isinstance(raw, dict):
                        output = raw
                    else:
                        try:
                            output = read_output(raw, path)
                        except Unparsable:
                            output = MISSING
                    iid = rec.get("inference_id")
                    eid = rec.get("event_id")
                    iid = None if iid is None else str(iid)
                    eid = None if eid is None else str(eid)
                    if t is not None and t > end and len(ahead) < MAX_AHEAD:
                        ahead.append((t, i, output, iid, eid))
                        continue
                    add_at(i, output, iid, eid)
            return handle.tell() - len(tail)


def open_jsonl(location: str) -> JsonlCapture:
    """The source for ``capture: {source: {jsonl: location}}``."""
    return JsonlCapture(location)


__all__ = ["JsonlCapture", "PathError", "local_path", "open_jsonl", "parse_time"]
