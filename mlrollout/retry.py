"""The backoff providers share for throttling, 5xx and connection errors.

Exponential backoff with full jitter: the wait before retry ``n`` is drawn uniformly from
``[0, min(cap, base * 2**(n-1))]``. ``sleep`` is injectable (providers pass the rollout's clock,
so tests never wait on the wall clock). The core has no retry loop of its own and no dependency on
a retry library: :meth:`RetryPolicy.wait` fits tenacity's ``wait=`` hook (it reads only
``attempt_number``), which is how the provider distributions use it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class Attempt(Protocol):
    @property
    def attempt_number(self) -> int: ...


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    base: float = 0.5
    cap: float = 20.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt_number: int) -> float:
        """Seconds to wait after the ``attempt_number``-th failed attempt."""
        return self.rng.uniform(0, min(self.cap, self.base * 2 ** (attempt_number - 1)))

    def wait(self, state: Attempt) -> float:
        return self.delay(state.attempt_number)
