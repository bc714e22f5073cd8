"""The JSONPath subset ``capture.output`` uses: ``$``, ``.key``, ``[n]``, ``['key']`` /
``["key"]``, chained (``$.predictions[0].label``, ``$['scores'][-1]``).

No filters, wildcards or recursive descent: a capture path names one value. :func:`compile_path`
parses once (a :class:`PathError` says where it stopped: ``column`` from 1); :meth:`Path.find`
walks a decoded JSON value and returns :data:`MISSING` when the path is not there (a record whose
output is then counted as unparsed, never an error). Pure Python, no dependency.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

#: What :meth:`Path.find` returns when the value has nothing at the path.
MISSING: object = type("Missing", (), {"__repr__": lambda self: "MISSING"})()

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-$@")


class PathError(ValueError):
    """A JSONPath that does not parse; ``column`` (from 1) is where the problem is."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"{message} (at column {column})")
        self.column = column


@dataclass(frozen=True)
class Path:
    """A compiled path: its steps, each a key (``str``) or an index (``int``)."""

    text: str
    steps: tuple[str | int, ...]

    @property
    def is_root(self) -> bool:
        return not self.steps

    def find(self, value: object) -> object:
        """The value at this path in ``value`` (decoded JSON), or :data:`MISSING`."""
        for step in self.steps:
            if isinstance(step, str):
                if not isinstance(value, dict) or step not in value:
                    return MISSING
                value = value[step]
            else:
                if not isinstance(value, list) or not -len(value) <= step < len(value):
                    return MISSING
                value = value[step]
        return value


@functools.lru_cache(maxsize=64)
def compile_path(text: str) -> Path:
    """Parse ``text``; raises :class:`PathError` with the column of the problem."""
    s = text.strip()
    offset = len(text) - len(text.lstrip())
    if not s.startswith("$"):
        raise PathError(f"a JSONPath starts with $ (such as $.predictions[0]), not {text!r}", 1)
    steps: list[str | int] = []
    i, n = 1, len(s)
    while i < n:
        c = s[i]
        if c == ".":
            j = i + 1
            while j < n and s[j] in _PLAIN:
                j += 1
            if j == i + 1:
                what = "the end" if j >= n else repr(s[j])
                raise PathError(f"a key name after '.', not {what}", offset + i + 2)
            steps.append(s[i + 1 : j])
            i = j
        elif c == "[":
            close = s.find("]", i)
            if close < 0:
                raise PathError("'[' without its ']'", offset + i + 1)
            inner = s[i + 1 : close].strip()
            if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
                steps.append(inner[1:-1])
            else:
                try:
                    steps.append(int(inner))
                except ValueError:
                    raise PathError(
                        f"[{inner}] is neither an index ([0]) nor a quoted key (['name']); "
                        "filters and wildcards are not supported",
                        offset + i + 2,
                    ) from None
            i = close + 1
        else:
            raise PathError(f"expected '.' or '[' after a step, got {c!r}", offset + i + 1)
    return Path(text, tuple(steps))
