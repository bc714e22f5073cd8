"""What the gates concluded at one look: an :class:`Outcome` per gate, with its reason and numbers.

Outcomes are ordered worst-of: ``PASS < CONTINUE < HOLD < FAIL``. ``PASS`` is evidence that no
regression beyond the gate's bound exists; ``CONTINUE`` means enough data but no conclusion yet;
``HOLD`` means the data is short, missing or the query failed (no data never passes); ``FAIL`` is
evidence of a regression. A failed query is an *error measurement*: ``HOLD`` with
:attr:`GateVerdict.error` set, never a crash and never a pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from functools import total_ordering
from typing import Any

_ORDER = ("pass", "continue", "hold", "fail")


@total_ordering
class Outcome(Enum):
    PASS = "pass"
    CONTINUE = "continue"
    HOLD = "hold"
    FAIL = "fail"

    @property
    def severity(self) -> int:
        return _ORDER.index(self.value)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Outcome):
            return NotImplemented
        return self.severity < other.severity

    @classmethod
    def worst(cls, outcomes: Iterable[Outcome]) -> Outcome:
        """The worst of ``outcomes``; ``PASS`` when there are none."""
        return max(outcomes, default=cls.PASS)


Numbers = dict[str, float | None]


def _clean(numbers: Mapping[str, float | None]) -> Numbers:
    """JSON-safe numbers: a non-finite value (an absent bound) becomes ``None``."""
    return {k: (v if v is None or math.isfinite(v) else None) for k, v in numbers.items()}


@dataclass
class GateVerdict:
    """One gate at one look.

    ``numbers`` (in the metric's unit: rate fraction, seconds, count; ``None`` = no such bound):
    ``candidate``/``baseline`` values, ``estimate`` (the candidate value for an absolute bound;
    the relative change or the difference against the baseline for ``vs_baseline``), ``lower``
    and ``upper`` (the candidate's confidence bounds), ``threshold`` (the limit the candidate is
    held to), ``candidate_requests``/``baseline_requests`` (samples per variant), and
    ``needed_requests`` when the data is short (the quality gates: ``needed_labels``, labelled
    predictions or ratings). z-tests add ``statistic`` and ``critical``.
    """

    gate: str
    metric: str
    outcome: Outcome
    reason: str
    numbers: Numbers = field(default_factory=dict)
    dry_run: bool = False
    error: str | None = None  # set when the measurement failed (the query's own message)

    def __post_init__(self) -> None:
        self.numbers = _clean(self.numbers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "metric": self.metric,
            "outcome": self.outcome.value,
            "dry_run": self.dry_run,
            "reason": self.reason,
            "numbers": dict(self.numbers),
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateVerdict:
        return cls(
            gate=str(data["gate"]),
            metric=str(data["metric"]),
            outcome=Outcome(data["outcome"]),
            reason=str(data["reason"]),
            numbers=dict(data.get("numbers", {})),
            dry_run=bool(data.get("dry_run", False)),
            error=data.get("error"),
        )


@dataclass
class Verdict:
    """All gates at one look. :attr:`outcome` is the worst over the gates that decide (dry-run
    gates are recorded, never counted); ``PASS`` when no gate decides."""

    gates: list[GateVerdict] = field(default_factory=list)
    alpha_per_look: float | None = None

    @property
    def outcome(self) -> Outcome:
        return Outcome.worst(g.outcome for g in self.gates if not g.dry_run)

    @property
    def deciding(self) -> list[GateVerdict]:
        """The non-dry-run gates whose outcome is the overall one (why the look ended so)."""
        outcome = self.outcome
        return [g for g in self.gates if not g.dry_run and g.outcome is outcome]

    @property
    def reasons(self) -> list[str]:
        """One line per gate, ``name: reason`` (``name (dry run): reason`` for dry runs)."""
        return [f"{g.gate}{' (dry run)' if g.dry_run else ''}: {g.reason}" for g in self.gates]

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "alpha_per_look": self.alpha_per_look,
            "gates": [g.to_dict() for g in self.gates],
            "reasons": self.reasons,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        """The inverse of :meth:`to_dict` (``outcome`` and ``reasons`` are derived again)."""
        alpha = data.get("alpha_per_look")
        return cls(
            gates=[GateVerdict.from_dict(g) for g in data.get("gates", [])],
            alpha_per_look=None if alpha is None else float(alpha),
        )
