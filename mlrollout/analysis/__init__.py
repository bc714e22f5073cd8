"""Analysis: the plan's gates judge per-variant windows at each look and return a Verdict.

Never raises on bad data: a failed query is an error measurement (HOLD with the message), missing
or short data is HOLD, and no data never passes. Every verdict carries its reasons and numbers.
The decision rule sits behind :class:`DecisionRule`; v1 is :class:`FixedHorizonBonferroni`.
See :class:`GateSet` for a runnable example.
"""

from mlrollout.analysis.engine import GateSet
from mlrollout.analysis.gates import DecisionRule, FixedHorizonBonferroni, LookContext
from mlrollout.analysis.verdict import GateVerdict, Outcome, Verdict

__all__ = [
    "DecisionRule",
    "FixedHorizonBonferroni",
    "GateSet",
    "GateVerdict",
    "LookContext",
    "Outcome",
    "Verdict",
]
