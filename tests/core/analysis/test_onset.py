"""Late-onset detection: the rate tests restarted at fixed points of a stage (``onset.py``).

Seeded and deterministic (``draws.binomial`` on ``random.Random``); no wall clock.
"""

from __future__ import annotations

import math
import random

from draws import binomial  # tests/core/analysis/draws.py, see conftest.py

from mlrollout.analysis import GateSet, Monitor, Outcome, onset
from mlrollout.analysis.monitor import merge
from mlrollout.contracts import Window
from mlrollout.plan.model import Analysis

ERRORS_25 = {"name": "errors", "metric": "error_rate", "vs_baseline": {"max_increase": "25%"}}
ERRORS_MAX = {"name": "emax", "metric": "error_rate", "max": "2%"}


def analysis(*gates: dict[str, object], alpha: float = 0.05) -> Analysis:
    return Analysis.model_validate({"alpha": alpha, "min_requests": 100, "gates": list(gates)})


def stage(
    seed: int, looks: int, onset_look: int, ratio: float, n_c: int = 100, n_b: int = 900
) -> list[tuple[Window, Window]]:
    """Per-look windows: 1 % errors on both arms, the candidate's ``ratio`` times that from
    ``onset_look`` (0-based) on."""
    rng = random.Random(seed)
    out = []
    for j in range(looks):
        p_c = 0.01 * (ratio if j >= onset_look else 1.0)
        out.append(
            (
                Window(requests=n_c, errors=binomial(rng, n_c, p_c)),
                Window(requests=n_b, errors=binomial(rng, n_b, 0.01)),
            )
        )
    return out


def first_fail(parts: list[tuple[Window, Window]], plan: Analysis, restarted: bool) -> int | None:
    """The look (1-based) of the first rollback, with the stage's intervals (the restarted tests
    on) or on the cumulative windows alone (the whole-stage test only)."""
    looks = len(parts)
    if restarted:
        monitor = Monitor.from_plan(plan, candidate_share=0.1, horizon=looks)
        for j, (c, b) in enumerate(parts, 1):
            if monitor.observe(c, b).outcome is Outcome.FAIL:
                return j
        return None
    gates = GateSet.from_plan(plan)
    cand, base = Window(), Window()
    for j, (c, b) in enumerate(parts, 1):
        cand, base = merge(cand, c), merge(base, b)
        if gates.look(cand, base, look=j, horizon=looks).outcome is Outcome.FAIL:
            return j
    return None


def test_restart_points_are_fixed_in_advance_and_share_one_budget() -> None:
    points = onset.restarts(180, 10_000)
    assert len(points) == onset.RESTARTS
    assert [s for s, _ in points] == sorted({s for s, _ in points})
    assert points[0][0] > 0 and points[-1][0] < 180
    assert math.isclose(sum(w for _, w in points), 1.0)
    assert points[0][1] > points[-1][1]  # later restarts have less time to act: less weight
    # only the points already reached, with the same weights (nothing depends on the data)
    assert onset.restarts(180, points[2][0] + 1) == points[:3]
    assert onset.restarts(180, points[0][0]) == []
    assert onset.restarts(5, 100) == []  # too short a stage
    open_ended = onset.restarts(None, 100_000)
    assert len(open_ended) == onset.OPEN_RESTARTS
    assert sum(w for _, w in open_ended) < 1.0
    assert onset.restarts(0, 100) == onset.restarts(None, 100)


def test_suffix_sums() -> None:
    rows = [(1.0, 10.0), (2.0, 20.0), (3.0, 30.0)]
    assert onset.suffixes(rows, [0, 1, 2]) == [(6.0, 60.0), (5.0, 50.0), (3.0, 30.0)]
    assert onset.suffixes(rows, [2]) == [(3.0, 30.0)]
    assert onset.suffixes(rows, []) == []


def test_a_late_doubling_is_found_sooner_than_by_the_whole_stage_test() -> None:
    plan = analysis(ERRORS_25)
    late, whole = [], []
    for seed in range(10):
        parts = stage(seed, 180, 60, 2.0)
        a, b = first_fail(parts, plan, True), first_fail(parts, plan, False)
        late.append((a or 181) - 60)
        whole.append((b or 181) - 60)
    # looks after the onset; the cumulative windows dilute the regression with 60 healthy looks
    assert sum(late) / len(late) < 0.85 * sum(whole) / len(whole)


def test_the_restarted_tests_keep_the_budget_on_healthy_stages() -> None:
    # a large alpha so that a small simulation can see a broken budget (without the split, the
    # restarts' crossings would come on top of the whole-stage test's alpha)
    alpha = 0.3
    plan = analysis(ERRORS_25, alpha=alpha)
    runs, failed = 120, 0
    for seed in range(runs):
        parts = stage(1000 + seed, 60, 0, 1.0, n_c=300, n_b=700)
        failed += first_fail(parts, plan, True) is not None
    sd = math.sqrt(alpha * (1 - alpha) / runs)
    assert failed / runs <= alpha + 2.5 * sd


def test_the_verdict_says_when_a_late_onset_rolled_back() -> None:
    plan = analysis(ERRORS_25, ERRORS_MAX)
    parts = stage(7, 180, 90, 5.0)
    monitor = Monitor.from_plan(plan, candidate_share=0.1, horizon=180)
    verdict = None
    for c, b in parts:
        verdict = monitor.observe(c, b)
        if verdict.outcome is Outcome.FAIL:
            break
    assert verdict is not None and verdict.outcome is Outcome.FAIL
    gates = {g.gate: g for g in verdict.gates}
    errors = gates["errors"]
    assert errors.outcome is Outcome.FAIL
    assert "a late onset: over the last" in errors.reason and "restarted test" in errors.reason
    numbers = errors.numbers
    evidence, boundary = numbers["evidence_onset"], numbers["boundary_onset"]
    assert evidence is not None and boundary is not None and evidence >= boundary
    assert numbers["evidence_fail"] == evidence  # the deciding test's evidence
    # the whole-stage test alone has not crossed yet on these cumulative windows
    cand, base = Window(), Window()
    for c, b in parts[: monitor.looks]:
        cand, base = merge(cand, c), merge(base, b)
    plain = GateSet.from_plan(plan).look(cand, base, look=monitor.looks, horizon=180)
    assert {g.gate: g for g in plain.gates}["errors"].outcome is not Outcome.FAIL


def test_an_absolute_bound_restarts_too() -> None:
    plan = analysis(ERRORS_MAX)
    rng = random.Random(3)
    monitor = Monitor.from_plan(plan, candidate_share=0.1, horizon=180)
    verdict = None
    for j in range(180):
        p = 0.01 if j < 100 else 0.04
        c = Window(requests=200, errors=binomial(rng, 200, p))
        verdict = monitor.observe(c, Window(requests=1800, errors=binomial(rng, 1800, 0.01)))
        if verdict.outcome is Outcome.FAIL:
            break
    assert verdict is not None and verdict.outcome is Outcome.FAIL
    gate = verdict.gates[0]
    assert "evidence_onset" in gate.numbers
    assert monitor.looks - 100 < 60


def test_without_intervals_there_is_nothing_to_restart() -> None:
    plan = analysis(ERRORS_25)
    parts = stage(11, 30, 0, 1.0)
    cand, base = Window(), Window()
    for c, b in parts:
        cand, base = merge(cand, c), merge(base, b)
    gate = GateSet.from_plan(plan).look(cand, base, look=30, horizon=180).gates[0]
    assert "evidence_onset" not in gate.numbers
    assert gate.numbers["boundary_lowered"] is not None
    with_parts = GateSet.from_plan(plan).look(cand, base, look=30, horizon=180, intervals=parts)
    assert "evidence_onset" in with_parts.gates[0].numbers
    # the whole-stage test gives up a share of its budget to the restarts: a higher boundary
    assert with_parts.gates[0].numbers["boundary"] > gate.numbers["boundary"]  # type: ignore[operator]
