"""What every test shares: each starts with no API budget buckets (mlrollout.budget keeps them
per process, as a runner does) and the share the environment gives."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mlrollout import budget


@pytest.fixture(autouse=True)
def _fresh_api_budgets() -> Iterator[None]:
    budget.reset()
    yield
    budget.reset()
