"""Exact random draws for the analysis tests' simulations (imported by name; see conftest.py)."""

from __future__ import annotations

import math
import random


def binomial(rng: random.Random, n: int, p: float) -> int:
    """Binomial draw by geometric skips (fast for small p)."""
    events, position, log_q = 0, 0, math.log1p(-p)
    while True:
        position += int(math.log(1.0 - rng.random()) / log_q) + 1
        if position > n:
            return events
        events += 1
