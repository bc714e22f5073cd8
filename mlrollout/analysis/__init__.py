"""Analysis: the plan's gates judge per-variant windows at each look and return a Verdict.

Never raises on bad data: a failed query is an error measurement (HOLD with the message), missing
or short data is HOLD, and no data never passes. Every verdict carries its reasons and numbers.
The decision rule sits behind :class:`DecisionRule`; the default is :class:`MixtureSPRT`
(always-valid tests, safe under continuous monitoring); v1's :class:`FixedHorizonBonferroni`
stays available (``RULES``). :class:`Monitor` is the public API for feeding your own data; see
``docs/analysis.md`` and :class:`GateSet` for runnable examples.
"""

from mlrollout.analysis.engine import RULES, GateSet
from mlrollout.analysis.gates import DecisionRule, FixedHorizonBonferroni, LookContext
from mlrollout.analysis.monitor import Monitor, histogram, merge
from mlrollout.analysis.sequential import SRM_ALPHA, MixtureSPRT, srm_verdict
from mlrollout.analysis.verdict import GateVerdict, Outcome, Verdict

__all__ = [
    "RULES",
    "SRM_ALPHA",
    "DecisionRule",
    "FixedHorizonBonferroni",
    "GateSet",
    "GateVerdict",
    "LookContext",
    "MixtureSPRT",
    "Monitor",
    "Outcome",
    "Verdict",
    "histogram",
    "merge",
    "srm_verdict",
]
