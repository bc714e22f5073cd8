"""Parsing and formatting of the plan's units: durations, latencies, percentages, points.

Durations: ``90s``, ``10m``, ``2h``, ``7d`` (a bare number is refused: the unit is the meaning).
Latencies: ``300ms``, ``1.2s``, ``250us``. Percentages: ``25%`` or a bare number ``25``.
Absolute rate differences: ``0.5pp`` (percentage points).
"""

from __future__ import annotations

import math
import re

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_LATENCY_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_DURATION_RE = re.compile(rf"^\s*(-?{_NUMBER})\s*(ms|s|m|h|d)\s*$")
_LATENCY_RE = re.compile(rf"^\s*({_NUMBER})\s*(us|µs|ms|s)\s*$")
_PERCENT_RE = re.compile(rf"^\s*(-?{_NUMBER})\s*%?\s*$")
_POINTS_RE = re.compile(rf"^\s*({_NUMBER})\s*pp\s*$")


def _finite(value: float, text: object) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def parse_duration(value: object, *, allow_zero: bool = False) -> float:
    """Seconds from ``'90s'``, ``'10m'``, ``'2h'``, ``'7d'``; refuses bare numbers and negatives."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(
            f"expected a duration with a unit such as 90s, 10m, 2h or 7d, got {value!r}"
        )
    match = _DURATION_RE.match(value)
    if not match:
        raise ValueError(
            f"expected a duration with a unit such as 90s, 10m, 2h or 7d, got {value!r}"
        )
    seconds = _finite(float(match.group(1)) * _DURATION_UNITS[match.group(2)], value)
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError(f"a duration must be positive, got {value!r}")
    if seconds > 366 * 86400:
        raise ValueError(f"a duration must be at most a year, got {value!r}")
    return seconds


def parse_latency(value: object) -> float:
    """Seconds from ``'300ms'``, ``'1.2s'``, ``'250us'``."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected a latency with a unit such as 300ms or 1.2s, got {value!r}")
    match = _LATENCY_RE.match(value)
    if not match:
        raise ValueError(f"expected a latency with a unit such as 300ms or 1.2s, got {value!r}")
    return _finite(float(match.group(1)) * _LATENCY_UNITS[match.group(2)], value)


def parse_percent(value: object) -> float:
    """A percentage as a number of percent: ``'25%'`` and ``25`` both give ``25.0``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a percentage such as 25% or 25, got {value!r}")
    if isinstance(value, int | float):
        return _finite(float(value), value)
    if isinstance(value, str):
        match = _PERCENT_RE.match(value)
        if match:
            return _finite(float(match.group(1)), value)
    raise ValueError(f"expected a percentage such as 25% or 25, got {value!r}")


def parse_points(value: object) -> float:
    """Percentage points from ``'0.5pp'`` (an absolute difference of two rates)."""
    if isinstance(value, str):
        match = _POINTS_RE.match(value)
        if match:
            return _finite(float(match.group(1)), value)
    raise ValueError(f"expected percentage points such as 0.5pp, got {value!r}")


def format_duration(seconds: float) -> str:
    """``5400`` → ``'1h30m'``; ``0.25`` → ``'250ms'``."""
    if seconds < 1 and seconds > 0:
        return f"{seconds * 1000:.0f}ms"
    total = round(seconds)
    if total == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            amount, total = divmod(total, size)
            parts.append(f"{amount}{unit}")
    return "".join(parts)


def format_latency(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.4g}ms"
    return f"{seconds:.4g}s"


def format_rate(rate: float) -> str:
    """A rate in [0, 1] as percent."""
    return f"{rate * 100:.3g}%"
