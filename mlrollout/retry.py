"""The backoff providers share for throttling, 5xx and connection errors.

Exponential backoff with full jitter: the wait before retry ``n`` is drawn uniformly from
``[0, min(cap, base * 2**(n-1))]``. ``sleep`` is injectable (providers pass the rollout's clock,
so tests never wait on the wall clock). :meth:`RetryPolicy.call` is the one retry loop the AWS,
GCP and Azure providers share (through :func:`mlrollout.adapters.call_mapped`);
:meth:`RetryPolicy.wait` also fits tenacity's ``wait=`` hook (it reads only ``attempt_number``).
The core depends on no retry library.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

T = TypeVar("T")


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

    def call(
        self,
        fn: Callable[[], T],
        *,
        retryable: Callable[[BaseException], bool],
        failed: Callable[[BaseException, int], BaseException],
        applied: Callable[[], bool] | None = None,
    ) -> T | None:
        """``fn()``, retried while it raises an error ``retryable`` accepts, up to ``attempts``
        tries with :meth:`delay` between them. For a mutation, ``applied()`` is asked before each
        retry; True (the change is already in effect) ends the call with None, unsent. An error
        that ends the call is raised as ``failed(error, attempts_made)``, chained to it (return
        the error itself to raise it as it is)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                if attempt > 1 and applied is not None and applied():
                    return None
                return fn()
            except Exception as exc:
                if attempt < self.attempts and retryable(exc):
                    self.sleep(self.delay(attempt))
                    continue
                mapped = failed(exc, attempt)
                if mapped is exc:
                    raise
                raise mapped from exc
