"""Clocks. The engine never calls ``time`` directly: it takes a :class:`Clock`.

- :class:`SystemClock` — real time; what cloud rollouts use.
- :class:`VirtualClock` — time that only moves when told; ``sleep`` jumps. Tests and the local
  sandbox with ``speed: max`` use it, so a 30-minute plan runs in well under a second.
- :class:`ScaledClock` — real time sped up by a factor (``speed: 60``); sleeps for real, shorter.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (possibly virtual)."""
        ...

    def sleep(self, seconds: float) -> None: ...

    @property
    def virtual(self) -> bool:
        """True when time does not pass by itself (nobody can wait on it for a human)."""
        ...


class SystemClock:
    virtual = False

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class VirtualClock:
    virtual = True

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._now += seconds

    def advance(self, seconds: float) -> None:
        self.sleep(seconds)

    def set(self, instant: float) -> None:
        self._now = max(self._now, instant)


class ScaledClock:
    """Virtual time that runs ``factor`` times faster than the wall clock, from ``start``."""

    virtual = False

    def __init__(self, factor: float, start: float | None = None) -> None:
        self.factor = factor
        self._wall0 = time.monotonic()
        self._start = time.time() if start is None else start

    def now(self) -> float:
        return self._start + (time.monotonic() - self._wall0) * self.factor

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self.factor)

    def set(self, instant: float) -> None:
        """Jump forward to ``instant`` (never back); time then runs on from there."""
        gap = instant - self.now()
        if gap > 0:
            self._start += gap
