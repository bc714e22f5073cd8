"""Analysis: the plan's gates judge per-variant windows at each look and return a Verdict.

Never raises on bad data: a failed query is an error measurement (HOLD with the message), missing
or short data is HOLD, and no data never passes. Every verdict carries its reasons and numbers.
The decision rule sits behind :class:`DecisionRule`; the default is :class:`MixtureSPRT`
(always-valid tests, safe under continuous monitoring); v1's :class:`FixedHorizonBonferroni`
stays available (``RULES``). :class:`Monitor` is the public API for feeding your own data; see
``docs/analysis.md`` and :class:`GateSet` for runnable examples.

The modules:

- :mod:`~mlrollout.analysis.gateset`: :class:`GateSet` (the plan's gates judged together at a
  look, the error budget, ``RULES``) and ``judged_stages``;
- :mod:`~mlrollout.analysis.rule`: the seam (:class:`DecisionRule`, :class:`LookContext`) and the
  checks every rule shares (no data, failed queries, ``requests`` gates);
- :mod:`~mlrollout.analysis.sequential`: the default rule, :class:`MixtureSPRT`;
- :mod:`~mlrollout.analysis.fixed_horizon`: v1's rule, :class:`FixedHorizonBonferroni`;
- :mod:`~mlrollout.analysis.measures`: what both rules measure (a gate's parsed criteria, counts,
  estimates, the Wilson interval) and how they word it;
- :mod:`~mlrollout.analysis.dispersion`: robust rate tests (how bursty the per-interval counts
  are: the factor the rate tests discount their evidence by);
- :mod:`~mlrollout.analysis.srm`: the sample-ratio-mismatch check;
- :mod:`~mlrollout.analysis.mixture` and :mod:`~mlrollout.analysis.calibration`: mixture
  likelihood ratios and the calibrated rollback boundaries;
- :mod:`~mlrollout.analysis.monitor`: :class:`Monitor`, the API for your own data;
- :mod:`~mlrollout.analysis.expected`: what ``plan preview`` says each gate takes to decide;
- :mod:`~mlrollout.analysis.verdict`: :class:`Verdict`, :class:`GateVerdict`, :class:`Outcome`.
"""

from mlrollout.analysis.fixed_horizon import FixedHorizonBonferroni
from mlrollout.analysis.gateset import RULES, GateSet
from mlrollout.analysis.monitor import Monitor, histogram, merge
from mlrollout.analysis.rule import DecisionRule, LookContext
from mlrollout.analysis.sequential import MixtureSPRT
from mlrollout.analysis.srm import SRM_ALPHA, srm_verdict
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
