"""What the sandbox's tests (and the sandbox capture's, in ``tests/core/capture``) share."""

from __future__ import annotations

import json
from typing import Any

from mlrollout.state.base import Lease


class FakeStore:
    """Dict-backed get_value/put_value that keeps JSON copies and records the leases used."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], str] = {}
        self.leases: list[Lease | None] = []

    def get_value(self, namespace: str, key: str) -> dict[str, Any] | None:
        raw = self.values.get((namespace, key))
        return None if raw is None else json.loads(raw)

    def put_value(
        self, namespace: str, key: str, value: dict[str, Any], *, lease: Lease | None
    ) -> None:
        self.leases.append(lease)
        self.values[(namespace, key)] = json.dumps(value)
