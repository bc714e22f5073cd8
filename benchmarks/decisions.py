"""Decision quality of the analysis engine: a seeded simulation (prints a table and JSON).

Each cell simulates ``--runs`` canary stages (default 2,000) with a look every 10 s on cumulative
windows, exactly as the engine looks: per 10 s, requests ~ Poisson(rps x 10), each routed to the
candidate with the configured (or, for the SRM cell, another) share, errors ~ Binomial, latencies
counted into the sandbox's 80 log-spaced buckets (a multinomial of a lognormal). Our rule is the
real :class:`mlrollout.analysis.GateSet` (default rule :class:`MixtureSPRT`) fed ``Window`` objects;
the comparators are computed on the same data:

- ``peeking-z``: a one-sided two-proportion z-test at 5 % re-checked at every look (rates), or a
  Mann-Whitney z-test at every look (latency);
- ``argo``: "candidate error rate over the last 60 s > 1.5 x the baseline's" at every look (what an
  Argo Rollouts / Flagger threshold analysis does), and ``argo-safe``: the same rule with the
  threshold loosened (a multiple of the baseline's rate, calibrated on a separate A/A simulation
  of the cell) until its false-rollback rate is at most 5 %;
- ``fixed-horizon``: one test at the end of the stage (two-proportion z for rates, Mann-Whitney
  for latency, Kayenta-style), at 5 %;
- ``oracle-sprt``: Wald's SPRT told the true effect (no real test can be), at Ville's boundary,
  and ``oracle-sprt at 5% A/A``: the same with its boundary lowered until it rolls back exactly
  5 % of this cell's healthy canaries (the frontier: what any test with that false-rollback rate
  could at best do, at these looks).

Columns: ``rollback`` (share of runs with any FAIL in the stage, with the exact Clopper-Pearson
upper 95 % bound), ``det mean/med/p95`` (detection times of the runs that failed, seconds from the
regression's start), ``pass`` (share of runs that ever PASSED) and ``pass med`` (median time to the
first PASS), ``bound`` (the information lower bound on the mean detection time: Wald's
``((1-b) ln((1-b)/a) + b ln(b/(1-a))) / I`` with a = b = 5 % and ``I`` the per-second
Kullback-Leibler information between the candidate's per-request outcome distribution and the
closest "no difference" null, the two arms' mixture), and ``ratio`` = mean detection / bound.

Late onsets (``errors x2 from minute 10`` / ``17``): detection times count from the onset, beside
``errors x2`` (from the stage's start). The historical cell judges a candidate serving all the
traffic after a switch at a random time of day against the baseline's window of the same length
just before it (as ``Engine._historical_look`` does: no split, no intervals), under a daily
traffic cycle with a x3 swing and no true effect.

Run: ``python benchmarks/decisions.py [--runs N] [--only SUBSTRING] [--json PATH]``
(``make bench``; ``--ablate dispersion,guard,split,carry,restarts``, ``--restart-share S`` and
``--restart-points N`` measure what each robust part costs). Needs numpy
(``pip install -e ".[bench]"``); the core never imports it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import Any

try:
    import numpy as np
except ImportError:  # pragma: no cover - a hint instead of a traceback
    sys.exit('the benchmark needs numpy: pip install -e ".[bench]"')

from mlrollout.analysis import GateSet, Outcome
from mlrollout.analysis.dispersion import HISTORY
from mlrollout.contracts import LatencyHistogram, Window
from mlrollout.plan.model import Analysis
from mlrollout.sandbox.traffic import LATENCY_BOUNDS

LOOK = 10.0  # seconds between looks
ALPHA = 0.05
BOUNDS = np.array(LATENCY_BOUNDS)
ERRORS_25 = {"name": "errors", "metric": "error_rate", "vs_baseline": {"max_increase": "25%"}}
P50_5 = {"name": "p50", "metric": "latency_p50", "vs_baseline": {"max_increase": "5%"}}
P99_10 = {"name": "p99", "metric": "latency_p99", "vs_baseline": {"max_increase": "10%"}}
MEDIAN = 0.040  # baseline median latency, seconds


@dataclass(frozen=True)
class Cell:
    name: str
    group: str
    p0: float = 0.01
    rps: float = 100.0
    share: float = 0.10
    ratio: float = 1.0  # candidate error rate = p0 x ratio (after ``start``)
    p_candidate: float | None = None  # or an absolute candidate error rate
    start: float = 0.0  # the regression starts this long into the stage
    incident: tuple[float, float, float] | None = None  # (start, duration, x errors) both arms
    missing: float = 0.0  # share of looks whose query returns nothing
    silent: bool = False  # the candidate reports nothing at all
    observed_share: float | None = None  # the share routing really gives the candidate (SRM)
    latency: str | None = None  # None | "median" | "p99" | "ar"
    sigma: float = 0.5
    shift: float = 1.0  # candidate latency multiplier (median), or of the tail beyond p95 ("p99")
    tail_from: float = 0.95  # "p99": the quantile beyond which the candidate's tail is stretched
    drift: float = 0.0  # "ar": sd of each arm's own AR(1) latency drift (log scale)
    bursts: float | None = None  # negative-binomial shape k of each arm's errors per interval
    # a historical baseline under a daily traffic cycle (max / min requests per second): the
    # candidate serves everything after a switch at a random time of day and is judged, as the
    # engine's historical look does, against the baseline's window of the same length just
    # before the switch (no split, no intervals)
    historical: float | None = None
    gates: tuple[dict[str, Any], ...] = (ERRORS_25,)
    duration: float = 1800.0
    stages: tuple[tuple[float, float], ...] = ()  # (share, seconds): a whole rollout
    # seconds of the baseline serving everything before the (first) stage: its intervals are
    # the baseline's history (as the previous stages' are in a whole rollout)
    history: float = 0.0
    comparators: bool = True
    expect: str = "pass"  # "pass" (A/A: a FAIL is false), "fail" (a regression), "hold"

    @property
    def rule_stages(self) -> int:
        return max(1, len(self.stages))


def cells() -> list[Cell]:
    out = [
        Cell(f"A/A p0={p0:g} rps={rps:g}", "A/A", p0=p0, rps=rps)
        for p0 in (0.001, 0.01, 0.05)
        for rps in (10.0, 100.0, 1000.0)
    ]
    out += [
        Cell("A/A incident both arms 5x 60s", "A/A", incident=(300.0, 60.0, 5.0)),
        Cell("A/A latency autocorrelated", "A/A", latency="ar", gates=(P50_5, P99_10)),
        Cell(
            "extra: latency, per-arm drift sd 2%",
            "stress",
            latency="ar",
            drift=0.02,
            gates=(P50_5, P99_10),
        ),
        Cell("A/A 30% looks missing", "data", missing=0.3),
        Cell(
            "A/A whole rollout 4 stages x 3 gates",
            "A/A",
            latency="median",
            gates=(ERRORS_25, P50_5, P99_10),
            stages=((0.05, 600.0), (0.10, 600.0), (0.25, 600.0), (0.50, 600.0)),
            comparators=False,
        ),
        Cell(
            "healthy, max_increase 100%",
            "pass",
            gates=({**ERRORS_25, "vs_baseline": {"max_increase": "100%"}},),
            comparators=False,
        ),
    ]
    out += [
        Cell(f"errors x{r:g}", "regression", ratio=r, expect="pass" if r < 1.25 else "fail")
        for r in (1.1, 1.5, 2.0, 5.0)
    ]
    out += [
        Cell("hard failure (50% errors)", "regression", p_candidate=0.5, expect="fail"),
        Cell("latency median +10% sigma 0.5", "latency", latency="median", sigma=0.5,
             shift=1.1, gates=(P50_5,), expect="fail"),
        Cell("latency median +10% sigma 1.0", "latency", latency="median", sigma=1.0,
             shift=1.1, gates=(P50_5,), expect="fail"),
        Cell("latency p99-only +30%", "latency", latency="p99", shift=1.3, gates=(P99_10,),
             expect="fail"),
        Cell("latency p99-only +30%, tail on 2%", "latency", latency="p99", shift=1.3,
             tail_from=0.98, gates=(P99_10,), expect="fail"),
        Cell("errors x2 from minute 10", "data", ratio=2.0, start=600.0, expect="fail"),
        Cell("errors x2 from minute 17", "data", ratio=2.0, start=1020.0, expect="fail"),
        Cell("errors x2, 30% looks missing", "data", ratio=2.0, missing=0.3, expect="fail"),
        Cell("candidate reports nothing", "data", silent=True, expect="hold", comparators=False),
        Cell("SRM: configured 10%, observed 8%", "srm", observed_share=0.08, expect="hold",
             comparators=False),
    ]  # fmt: skip
    out += [
        Cell(
            f"A/A bursts k={k:g} rps={rps:g} whole rollout",
            "bursts",
            rps=rps,
            bursts=k,
            latency="median",
            gates=(ERRORS_25, P50_5, P99_10),
            stages=((0.05, 600.0), (0.10, 600.0), (0.25, 600.0), (0.50, 600.0)),
            comparators=False,
        )
        for rps in (100.0, 1000.0)
        for k in (1.0, 2.0, 10.0)
    ]
    out.append(Cell("errors x2, bursts k=2", "bursts", ratio=2.0, bursts=2.0, expect="fail"))
    # "+history": the baseline's 10 minutes alone before the stage (its history, as a later stage
    # of a rollout has the earlier ones') tell whether its counts are bursty from the first look.
    hist = 600.0
    out += [
        Cell("A/A p0=0.01 rps=100 +history", "history", history=hist),
        Cell("errors x2 +history", "history", ratio=2.0, history=hist, expect="fail"),
        Cell("errors x5 +history", "history", ratio=5.0, history=hist, expect="fail"),
        Cell("hard failure +history", "history", p_candidate=0.5,
             history=hist, expect="fail"),
        Cell("errors x2 from minute 10 +history", "history", ratio=2.0, start=600.0,
             history=hist, expect="fail"),
        Cell("errors x2, bursts k=2 +history", "history", ratio=2.0, bursts=2.0,
             history=hist, expect="fail"),
    ]  # fmt: skip
    out += [
        Cell(f"A/A bursts k={k:g} rps={rps:g} +history", "history", rps=rps,
             bursts=k, history=hist, comparators=False)
        for rps in (100.0, 1000.0)
        for k in (1.0, 2.0, 10.0)
    ]  # fmt: skip
    out.append(
        Cell(
            "A/A historical baseline, daily cycle x3",
            "historical",
            historical=3.0,
            share=1.0,
            latency="median",
            gates=(ERRORS_25, P50_5, P99_10),
            comparators=False,
        )
    )
    return out


# ------------------------------------------------------------------------------ latency model


def _norm_cdf(x: np.ndarray) -> np.ndarray:
    from math import erf

    return np.vectorize(lambda v: 0.5 * (1 + erf(v / math.sqrt(2))))(x)


def bin_probs(
    sigma: float, median: float, tail_shift: float = 1.0, q_tail: float = 0.95
) -> np.ndarray:
    """Per-bucket probabilities of a lognormal (and of one whose tail beyond ``q_tail`` is
    stretched by ``tail_shift``: p99 up by that factor, the median unchanged)."""
    edges = np.concatenate([[0.0], BOUNDS, [np.inf]])
    mu = math.log(median)

    def cdf(x: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            z = (np.log(np.maximum(x, 1e-300)) - mu) / sigma
        return np.where(x <= 0, 0.0, _norm_cdf(np.clip(z, -40, 40)))

    if tail_shift == 1.0:
        p = np.diff(cdf(edges))
    else:
        z_tail = statistics.NormalDist().inv_cdf(q_tail)
        cut = math.exp(mu + sigma * z_tail)
        low = np.diff(cdf(np.minimum(edges, cut)))
        high = np.diff(cdf(np.maximum(edges / tail_shift, cut)))
        p = low + high
    p = np.maximum(p, 0)
    return p / p.sum()


# ---------------------------------------------------------------------------------- simulate


@dataclass
class Stage:
    """Per-look increments of one stage for all runs: arrays of shape (runs, looks[, bins])."""

    share: float
    looks: int
    n_c: np.ndarray
    n_b: np.ndarray
    x_c: np.ndarray
    x_b: np.ndarray
    h_c: np.ndarray | None = None
    h_b: np.ndarray | None = None
    present: np.ndarray = field(default_factory=lambda: np.ones(0, bool))


def simulate(
    cell: Cell, runs: int, rng: np.random.Generator, share: float, seconds: float
) -> Stage:
    if cell.historical is not None:
        return simulate_historical(cell, runs, rng, seconds)
    looks = int(seconds // LOOK)
    t = (np.arange(looks) * LOOK)[None, :]
    total = rng.poisson(cell.rps * LOOK, size=(runs, looks))
    routed = cell.observed_share if cell.observed_share is not None else share
    n_c = rng.binomial(total, routed)
    n_b = total - n_c
    p_c = np.full((1, looks), cell.p0)
    after = t >= cell.start
    if cell.p_candidate is not None:
        p_c = np.where(after, cell.p_candidate, cell.p0)
    else:
        p_c = np.where(after, cell.p0 * cell.ratio, cell.p0)
    p_b = np.full((1, looks), cell.p0)
    if cell.incident is not None:
        s, d, k = cell.incident
        hit = (t >= s) & (t < s + d)
        p_c, p_b = (
            np.where(hit, np.minimum(1, p_c * k), p_c),
            np.where(hit, np.minimum(1, p_b * k), p_b),
        )
    if cell.bursts is None:
        x_c = rng.binomial(n_c, np.broadcast_to(np.minimum(p_c, 1), n_c.shape))
        x_b = rng.binomial(n_b, np.broadcast_to(p_b, n_b.shape))
    else:  # each arm's own bursts: Poisson(Gamma(k, mu/k)), mean mu, variance mu + mu^2/k
        x_c = bursty(rng, n_c, np.minimum(p_c, 1), cell.bursts)
        x_b = bursty(rng, n_b, p_b, cell.bursts)
    stage = Stage(share, looks, n_c, n_b, x_c, x_b)
    if cell.latency is not None:
        stage.h_c, stage.h_b = latency_counts(cell, rng, n_c, n_b)
    present = rng.random((runs, looks)) >= cell.missing
    stage.present = present
    return stage


def simulate_historical(cell: Cell, runs: int, rng: np.random.Generator, seconds: float) -> Stage:
    """The candidate's intervals after a switch at a random time of day (all the traffic) and the
    baseline's going back from it (so that their cumulative sums are the windows of the same
    length before the switch), under ``rps (1 + a sin(2 pi t / day))`` with ``(1 + a) / (1 - a)``
    the cycle's swing; per-request error rates and latencies do not depend on the load."""
    assert cell.historical is not None
    looks = int(seconds // LOOK)
    swing = cell.historical
    a = (swing - 1) / (swing + 1)
    switch = rng.uniform(0, 86400.0, size=(runs, 1))
    mid = (np.arange(looks) + 0.5) * LOOK
    after = cell.rps * (1 + a * np.sin(2 * math.pi * (switch + mid[None, :]) / 86400.0))
    before = cell.rps * (1 + a * np.sin(2 * math.pi * (switch - mid[None, :]) / 86400.0))
    n_c = rng.poisson(after * LOOK)
    n_b = rng.poisson(before * LOOK)
    x_c = rng.binomial(n_c, cell.p0 * cell.ratio)
    x_b = rng.binomial(n_b, cell.p0)
    stage = Stage(1.0, looks, n_c, n_b, x_c, x_b)
    if cell.latency is not None:
        stage.h_c, stage.h_b = latency_counts(cell, rng, n_c, n_b)
    stage.present = np.ones((runs, looks), bool)
    return stage


def bursty(rng: np.random.Generator, n: np.ndarray, p: np.ndarray, k: float) -> np.ndarray:
    """Negative-binomial counts per interval (mean ``n p``, shape ``k``), capped at ``n``."""
    mu = np.broadcast_to(n * p, n.shape).astype(float)
    rate = rng.gamma(k, np.maximum(mu, 1e-300) / k)
    return np.minimum(rng.poisson(np.where(mu > 0, rate, 0.0)), n)


def latency_counts(
    cell: Cell, rng: np.random.Generator, n_c: np.ndarray, n_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    runs, looks = n_c.shape
    bins = len(LATENCY_BOUNDS) + 1
    h_c = np.zeros((runs, looks, bins), np.int64)
    h_b = np.zeros((runs, looks, bins), np.int64)
    if cell.latency == "ar":
        # A load factor shared by both arms (AR(1), 10 s steps, rho 0.9, sd 0.2 in log latency):
        # the looks are far from independent. ``drift`` adds each arm's own AR(1) on top.
        grid = np.exp(np.linspace(-0.6, 0.6, 25))
        tables = np.stack([bin_probs(cell.sigma, MEDIAN * g) for g in grid])
        shared = ar1(rng, runs, looks, 0.9, 0.2)
        for n, h in ((n_c, h_c), (n_b, h_b)):
            own = ar1(rng, runs, looks, 0.9, cell.drift)
            level = np.clip(np.rint((shared + own + 0.6) / 1.2 * 24), 0, 24).astype(int)
            for j in range(looks):
                h[:, j] = rng.multinomial(n[:, j], tables[level[:, j]])
        return h_c, h_b
    base = bin_probs(cell.sigma, MEDIAN)
    if cell.latency == "median":
        cand = bin_probs(cell.sigma, MEDIAN * cell.shift)
    else:
        cand = bin_probs(cell.sigma, MEDIAN, tail_shift=cell.shift, q_tail=cell.tail_from)
    for j in range(looks):
        h_c[:, j] = rng.multinomial(n_c[:, j], cand)
        h_b[:, j] = rng.multinomial(n_b[:, j], base)
    return h_c, h_b


def ar1(rng: np.random.Generator, runs: int, looks: int, rho: float, sd: float) -> np.ndarray:
    out = np.zeros((runs, looks))
    out[:, 0] = rng.normal(0, sd, runs)
    for j in range(1, looks):
        out[:, j] = rho * out[:, j - 1] + rng.normal(0, sd * math.sqrt(1 - rho * rho), runs)
    return out


# ------------------------------------------------------------------------------------ our rule


@dataclass
class RunResult:
    failed_at: float | None = None
    passed_at: float | None = None
    held_srm_at: float | None = None
    passes_without_data: int = 0
    failed_by: tuple[str, ...] = ()  # the gates that failed at the rollback


def run_ours(cell: Cell, stages: list[Stage], before: Stage | None = None) -> list[RunResult]:
    analysis = Analysis.model_validate(
        {"alpha": ALPHA, "min_requests": 100, "gates": list(cell.gates)}
    )
    gs = GateSet.from_plan(analysis, stages=cell.rule_stages)
    runs = stages[0].n_c.shape[0]
    results = [RunResult() for _ in range(runs)]
    for r in range(runs):
        res = results[r]
        offset = 0.0
        # The baseline's intervals before each stage, as the engine keeps them: the traffic
        # before the rollout (``cell.history``), then each earlier stage's.
        history: list[Window] = []
        if before is not None:
            history = [
                Window(requests=n, errors=x)
                for n, x in zip(before.n_b[r].tolist(), before.x_b[r].tolist(), strict=True)
            ][-HISTORY:]
        for st in stages:
            cn = np.cumsum(st.n_c[r]).tolist()
            bn = np.cumsum(st.n_b[r]).tolist()
            cx = np.cumsum(st.x_c[r]).tolist()
            bx = np.cumsum(st.x_b[r]).tolist()
            ch = np.cumsum(st.h_c[r], axis=0).tolist() if st.h_c is not None else None
            bh = np.cumsum(st.h_b[r], axis=0).tolist() if st.h_b is not None else None
            present = st.present[r].tolist()
            # The per-look increments the engine passes (a missed look's data arrives with the
            # next look that answers): requests and errors only.
            inc_n_c, inc_n_b = st.n_c[r].tolist(), st.n_b[r].tolist()
            inc_x_c, inc_x_b = st.x_c[r].tolist(), st.x_b[r].tolist()
            intervals: list[tuple[Window, Window]] = []
            last = 0  # the increments up to here are in ``intervals``
            for j in range(st.looks):
                now = offset + (j + 1) * LOOK
                if not present[j]:
                    cand: Window | None = None
                    base: Window | None = None
                else:
                    cand = Window(
                        requests=cn[j], errors=cx[j],
                        latency=LatencyHistogram(LATENCY_BOUNDS, ch[j]) if ch else None,
                    )  # fmt: skip
                    base = Window(
                        requests=bn[j], errors=bx[j],
                        latency=LatencyHistogram(LATENCY_BOUNDS, bh[j]) if bh else None,
                    )  # fmt: skip
                if cell.silent:
                    cand = None
                if cand is not None and base is not None:
                    part = slice(last, j + 1)
                    intervals.append(
                        (
                            Window(requests=sum(inc_n_c[part]), errors=sum(inc_x_c[part])),
                            Window(requests=sum(inc_n_b[part]), errors=sum(inc_x_b[part])),
                        )
                    )
                    last = j + 1
                verdict = gs.look(
                    cand,
                    base,
                    candidate_share=None if cell.historical else st.share,
                    look=j + 1,
                    horizon=st.looks,
                    intervals=() if cell.historical else intervals,
                    baseline_history=history,
                )
                # the benchmark's windows never fail, so an error here is the rule's own: a
                # cell must not quietly count a crashing rule as "never rolled back"
                broken = next((g.error for g in verdict.gates if g.error), None)
                if broken:
                    raise RuntimeError(f"{cell.name}: {broken}")
                outcome = verdict.outcome
                if outcome is Outcome.PASS and (cand is None or not cand.requests):
                    res.passes_without_data += 1
                if res.held_srm_at is None and any(
                    g.gate == "sample-ratio" and g.outcome is Outcome.HOLD for g in verdict.gates
                ):
                    res.held_srm_at = now
                if outcome is Outcome.PASS and res.passed_at is None:
                    res.passed_at = now
                if outcome is Outcome.FAIL:
                    res.failed_at = now
                    res.failed_by = tuple(
                        g.gate for g in verdict.gates if g.outcome is Outcome.FAIL
                    )
                    break
                if cell.expect == "hold" and res.held_srm_at is not None:
                    break
            if res.failed_at is not None:
                break
            history = (history + [base for _, base in intervals])[-HISTORY:]
            offset += st.looks * LOOK
    return results


# ------------------------------------------------------------------------------- comparators


def z_two_prop(xc: np.ndarray, nc: np.ndarray, xb: np.ndarray, nb: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        pool = (xc + xb) / (nc + nb)
        se = np.sqrt(pool * (1 - pool) * (1 / nc + 1 / nb))
        z = (xc / nc - xb / nb) / se
    return np.where((nc >= 100) & (nb >= 100) & (se > 0), z, 0.0)


def mw_z(hc: np.ndarray, hb: np.ndarray) -> np.ndarray:
    """Mann-Whitney z (candidate slower > 0) from cumulative histograms (..., bins)."""
    nc, nb = hc.sum(-1), hb.sum(-1)
    below = np.cumsum(hb, -1) - hb
    u = (hc * (below + hb / 2)).sum(-1)
    n = nc + nb
    t = hc + hb
    ties = (t**3 - t).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        var = nc * nb / 12.0 * ((n + 1) - ties / (n * (n - 1)))
        z = (u - nc * nb / 2) / np.sqrt(var)
    return np.where((nc >= 100) & (nb >= 100) & (var > 0), z, 0.0)


def first_true(mask: np.ndarray) -> np.ndarray:
    """Per run, the 1-based look index of the first True (0 = never)."""
    any_ = mask.any(1)
    return np.where(any_, mask.argmax(1) + 1, 0)


def comparators(cell: Cell, st: Stage, calibration: Stage | None) -> dict[str, np.ndarray]:
    """Per method, the look (1-based) at which each run is rolled back (0 = never)."""
    z95 = 1.6448536269514722
    out: dict[str, np.ndarray] = {}
    if cell.latency is None:
        cn, bn = np.cumsum(st.n_c, 1), np.cumsum(st.n_b, 1)
        cx, bx = np.cumsum(st.x_c, 1), np.cumsum(st.x_b, 1)
        z = z_two_prop(cx, cn, bx, bn)
        out["peeking-z"] = first_true((z > z95) & st.present)
        end = z[:, -1] > z95
        out["fixed-horizon"] = np.where(end, st.looks, 0)
        out["argo"] = first_true(argo_rate(st) > 1.5 * cell.p0)
        p1 = cell.p_candidate if cell.p_candidate is not None else cell.p0 * cell.ratio
        if p1 != cell.p0 and not cell.start:
            # Wald's SPRT told the true effect (not realizable: a reference), same looks.
            t0 = cell.share
            t1 = cell.share * p1 / (cell.share * p1 + (1 - cell.share) * cell.p0)

            def oracle(x_c: np.ndarray, x_b: np.ndarray) -> np.ndarray:
                return x_c * math.log(t1 / t0) + x_b * math.log((1 - t1) / (1 - t0))

            llr = oracle(cx, bx)
            out["oracle-sprt"] = first_true((llr >= math.log(1 / ALPHA)) & st.present)
            if calibration is not None:
                # The same test with its boundary lowered until it rolls back 5 % of healthy
                # canaries of this cell (the A/A calibration run): the best a test of this
                # false-rollback rate could do, even told the effect (a frontier, not a method).
                aa = oracle(np.cumsum(calibration.x_c, 1), np.cumsum(calibration.x_b, 1))
                edge = float(np.quantile(aa.max(1), 1 - ALPHA))
                out["oracle-sprt at 5% A/A"] = first_true((llr >= edge) & st.present)
        if calibration is not None:
            k = calibrate_argo(cell, calibration)
            out[f"argo-safe (x{k:.2g})"] = first_true(argo_rate(st) > k * cell.p0)
    else:
        hc, hb = np.cumsum(st.h_c, 1), np.cumsum(st.h_b, 1)
        z = mw_z(hc, hb)
        out["peeking-z"] = first_true((z > z95) & st.present)
        out["fixed-horizon"] = np.where(z[:, -1] > z95, st.looks, 0)
    return out


def argo_rate(st: Stage) -> np.ndarray:
    """The candidate's error rate over the last 60 s at each look (NaN before 60 s of data)."""
    k = int(60 // LOOK)
    cx, cn = np.cumsum(st.x_c, 1), np.cumsum(st.n_c, 1)
    pad = np.zeros((cx.shape[0], k), cx.dtype)
    wx = cx - np.concatenate([pad, cx[:, :-k]], 1)
    wn = cn - np.concatenate([pad, cn[:, :-k]], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(wn > 0, wx / wn, 0.0)
    rate[:, : k - 1] = 0.0
    return rate


def calibrate_argo(cell: Cell, aa: Stage) -> float:
    """The smallest threshold multiple of p0 whose A/A false-rollback rate is at most 5 %."""
    peak = argo_rate(aa).max(1) / cell.p0
    return float(np.quantile(peak, 0.95)) * 1.0001


# ------------------------------------------------------------------------------------ bounds


WALD = 0.95 * math.log(0.95 / 0.05) + 0.05 * math.log(0.05 / 0.95)


def info_per_second(cell: Cell) -> float | None:
    """KL information per second between the candidate's per-request outcome distribution and
    the closest no-difference null (the arms' mixture), with the configured split."""
    w = cell.share
    p1 = cell.p_candidate if cell.p_candidate is not None else cell.p0 * cell.ratio
    if cell.latency in ("median", "p99"):
        pc = bin_probs(cell.sigma, MEDIAN * (cell.shift if cell.latency == "median" else 1.0),
                       tail_shift=cell.shift if cell.latency == "p99" else 1.0,
                       q_tail=cell.tail_from)  # fmt: skip
        pb = bin_probs(cell.sigma, MEDIAN)
        if cell.latency == "median":  # the continuous bound (the buckets lose a little)
            return cell.rps * w * (1 - w) * (math.log(cell.shift) / cell.sigma) ** 2 / 2
    else:
        if p1 == cell.p0:
            return None
        pc, pb = np.array([p1, 1 - p1]), np.array([cell.p0, 1 - cell.p0])
    m = w * pc + (1 - w) * pb
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_c = np.where(pc > 0, pc * np.log(pc / m), 0).sum()
        kl_b = np.where(pb > 0, pb * np.log(pb / m), 0).sum()
    return float(cell.rps * (w * kl_c + (1 - w) * kl_b))


# ------------------------------------------------------------------------------------- stats


def clopper_pearson_upper(k: int, n: int, conf: float = 0.95) -> float:
    """Exact one-sided upper bound of a binomial proportion (bisection on the binomial CDF)."""
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    target = 1 - conf
    for _ in range(60):
        mid = (lo + hi) / 2
        if binom_cdf(k, n, mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def binom_cdf(k: int, n: int, p: float) -> float:
    logp, log1p = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k + 1):
        total += math.exp(
            math.lgamma(n + 1)
            - math.lgamma(i + 1)
            - math.lgamma(n - i + 1)
            + i * logp
            + (n - i) * log1p
        )
    return total


def summarize(
    cell: Cell, method: str, fails: list[float | None], passes: list[float | None], runs: int
) -> dict[str, Any]:
    det = sorted(t - cell.start for t in fails if t is not None and t > cell.start)
    early = sum(1 for t in fails if t is not None and t <= cell.start)
    k = len(det) + early
    row: dict[str, Any] = {
        "cell": cell.name,
        "group": cell.group,
        "method": method,
        "runs": runs,
        "rollback": k / runs,
        "rollback_upper95": clopper_pearson_upper(k, runs),
        "rollback_before_regression": early / runs if cell.start else None,
        "det_mean": statistics.fmean(det) if det else None,
        "det_median": statistics.median(det) if det else None,
        "det_p95": det[min(len(det) - 1, math.ceil(0.95 * len(det)) - 1)] if det else None,
    }
    pt = sorted(t for t in passes if t is not None)
    row["pass"] = len(pt) / runs if passes else None
    row["pass_median"] = statistics.median(pt) if pt else None
    info = info_per_second(cell) if cell.expect == "fail" else None
    row["bound"] = WALD / info if info else None
    row["ratio"] = row["det_mean"] / row["bound"] if row["bound"] and row["det_mean"] else None
    return row


# --------------------------------------------------------------------------------------- run


def run_cell(cell: Cell, runs: int) -> tuple[list[dict[str, Any]], float]:
    started = time.perf_counter()
    seed = zlib.crc32(cell.name.encode())
    rng = np.random.default_rng(seed)
    plan = cell.stages or ((cell.share, cell.duration),)
    stages = [simulate(cell, runs, rng, share, seconds) for share, seconds in plan]
    before = None
    if cell.history:  # the baseline alone, healthy, from its own stream (the others unchanged)
        calm = replace(cell, ratio=1.0, p_candidate=None, start=0.0, incident=None, latency=None,
                       missing=0.0, observed_share=None)  # fmt: skip
        before = simulate(calm, runs, np.random.default_rng(seed + 2), 0.0, cell.history)
    results = run_ours(cell, stages, before)
    rows = [
        summarize(
            cell,
            "mixture-sprt",
            [r.failed_at for r in results],
            [r.passed_at for r in results],
            runs,
        )
    ]
    rows[0]["passes_without_data"] = sum(r.passes_without_data for r in results)
    by: dict[str, int] = {}
    for r in results:
        for name in r.failed_by:
            by[name] = by.get(name, 0) + 1
    rows[0]["failed_by"] = {name: k / runs for name, k in sorted(by.items())}
    if cell.expect == "hold":
        held = sorted(r.held_srm_at for r in results if r.held_srm_at is not None)
        rows[0]["srm_flagged"] = len(held) / runs
        rows[0]["srm_median"] = statistics.median(held) if held else None
        rows[0]["srm_p95"] = (
            held[min(len(held) - 1, math.ceil(0.95 * len(held)) - 1)] if held else None
        )
    else:
        rows[0]["srm_false_flag"] = sum(r.held_srm_at is not None for r in results) / runs
    if cell.comparators and not cell.stages:
        calibration = None
        if cell.latency is None and not cell.incident:
            aa = replace(cell, ratio=1.0, p_candidate=None, start=0.0, missing=0.0)
            calibration = simulate(
                aa, runs, np.random.default_rng(seed + 1), cell.share, cell.duration
            )
        for method, look in comparators(cell, stages[0], calibration).items():
            fails = [float(j) * LOOK if j else None for j in look.tolist()]
            rows.append(summarize(cell, method, fails, [], runs))
    return rows, time.perf_counter() - started


def look_cost(repeats: int = 2000) -> dict[str, float]:
    """In-process cost of one look over 10 gates (4 rates, 3 latency vs baseline, 3 bounds)."""
    rng = np.random.default_rng(1)
    gates = [
        {**ERRORS_25, "name": f"errors{i}"} for i in range(2)
    ] + [
        {"name": "thumbs", "metric": "custom", "query": {"m": "t"},
         "vs_baseline": {"max_decrease": "5%"}},
        {"name": "emax", "metric": "error_rate", "max": "2%"},
        P50_5, P99_10, {**P99_10, "name": "p90", "metric": "latency_p90"},
        {"name": "p99max", "metric": "latency_p99", "max": "300ms"},
        {"name": "p50max", "metric": "latency_p50", "max": "100ms"},
        {"name": "reqs", "metric": "requests", "min": 100},
    ]  # fmt: skip
    gs = GateSet.from_plan(Analysis.model_validate({"gates": gates}), stages=4)
    from mlrollout.contracts import CustomValue

    def window(n: int, p: float) -> Window:
        hist = rng.multinomial(n, bin_probs(0.5, MEDIAN)).tolist()
        return Window(requests=n, errors=int(rng.binomial(n, p)),
                      latency=LatencyHistogram(LATENCY_BOUNDS, hist),
                      custom={"thumbs": CustomValue(int(n * 0.6), n)})  # fmt: skip

    cand, base = window(3000, 0.01), window(27000, 0.01)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        gs.look(cand, base, candidate_share=0.1, look=30, horizon=180)  # as the engine does
        times.append(time.perf_counter() - t)
    times.sort()
    return {
        "median_ms": times[len(times) // 2] * 1e3,
        "p95_ms": times[int(0.95 * len(times))] * 1e3,
    }


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'cell':<38}{'method':<24}{'rollback':>9}{'up95':>7}{'det mean':>9}{'med':>6}"
        f"{'p95':>6}{'pass':>6}{'pass med':>9}{'bound':>7}{'ratio':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['cell'][:37]:<38}{r['method'][:23]:<24}{fmt(r['rollback'], '.2%'):>9}"
            f"{fmt(r['rollback_upper95'], '.1%'):>7}{fmt(r['det_mean'], '.0f'):>9}"
            f"{fmt(r['det_median'], '.0f'):>6}{fmt(r['det_p95'], '.0f'):>6}"
            f"{fmt(r['pass'], '.0%'):>6}{fmt(r['pass_median'], '.0f'):>9}"
            f"{fmt(r['bound'], '.1f'):>7}{fmt(r['ratio'], '.2f'):>6}"
        )
        notes = []
        if r.get("rollback_before_regression") is not None:
            notes.append(
                f"rolled back before the regression began: {r['rollback_before_regression']:.2%}"
            )
        if r["method"] == "mixture-sprt":
            if "srm_flagged" in r:
                notes.append(
                    f"SRM flagged in {r['srm_flagged']:.1%} of runs, median "
                    f"{fmt(r['srm_median'], '.0f')}s, p95 {fmt(r['srm_p95'], '.0f')}s"
                )
            if r.get("srm_false_flag"):
                notes.append(f"SRM false flag {r['srm_false_flag']:.2%}")
            if len(r.get("failed_by") or {}) > 1 or r["group"] == "bursts":
                parts = ", ".join(f"{k} {v:.2%}" for k, v in r["failed_by"].items())
                notes.append(f"failed by: {parts or 'none'}")
            if r["group"] == "data" or r.get("passes_without_data"):
                notes.append(f"passes without data: {r.get('passes_without_data', 0)}")
        if notes:
            print(f"{'':<40}({'; '.join(notes)})")


#: What ``ablate`` sets a part's threshold to (finite: times a zero noise it must stay zero).
OUT_OF_REACH = 1e9
#: The parts ``--ablate`` knows.
PARTS = ("dispersion", "guard", "split", "carry", "restarts")


def ablate(parts: tuple[str, ...], share: float | None, points: int | None = None) -> None:
    """Switch parts of the robust rate tests off (what each costs; see ``docs/analysis.md``):
    ``dispersion`` (the factor is 1: its three parts off), or one part alone: ``guard`` (the
    early guard), ``split`` (the split's own estimate), ``carry`` (the baseline's bursts carried
    over to the split; one arm's own estimate too); ``restarts`` (the whole-stage test keeps the
    whole budget); ``share`` is the restarted tests' share of it instead of ``onset.SHARE``,
    ``points`` their number in a stage instead of ``onset.RESTARTS``. For measurement only: the
    engine always runs every part as it is."""
    from mlrollout.analysis import dispersion, onset, sequential

    if "dispersion" in parts:  # the factor is the largest of its three parts' terms
        parts = (*parts, "guard", "split", "carry")
    # a part is off when its threshold is out of reach (its term is then exactly 1)
    if "guard" in parts:
        dispersion.GUARD_SHAPE = OUT_OF_REACH  # type: ignore[misc]
    if "split" in parts:
        dispersion.SPLIT_NOISE_SD = OUT_OF_REACH  # type: ignore[misc]
    if "carry" in parts:
        dispersion.NOISE_SD = OUT_OF_REACH  # type: ignore[misc]
    if "restarts" in parts:
        sequential._fail_share = lambda ev, *args, **kw: ev  # type: ignore[assignment]
        sequential._restarted = lambda *args, **kw: None  # type: ignore[assignment]
    if share is not None:
        onset.SHARE = share  # type: ignore[misc]
    if points is not None:
        onset.RESTARTS = points  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs per cell (default 2000)")
    parser.add_argument("--only", default="", help="only the cells whose name contains this")
    parser.add_argument("--skip", default="", help="leave out the cells whose name contains this")
    parser.add_argument("--json", default="", help="also write the JSON here")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--ablate",
        default="",
        help="switch parts of the robust rate tests off, comma-separated: dispersion (all of "
        "burst protection), or its parts guard, split, carry; restarts (to measure what each "
        "costs)",
    )
    parser.add_argument(
        "--restart-share",
        type=float,
        default=None,
        help="the restarted tests' share of a rollback test's budget (default 0.25)",
    )
    parser.add_argument(
        "--restart-points",
        type=int,
        default=None,
        help="how many restart points a stage has (default 12)",
    )
    args = parser.parse_args(argv)
    parts = tuple(p.strip() for p in args.ablate.split(",") if p.strip())
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--ablate: unknown part {', '.join(unknown)} ({', '.join(PARTS)})")
    if args.restart_share is not None and not 0 < args.restart_share < 1:
        parser.error("--restart-share is between 0 and 1")
    if args.restart_points is not None and args.restart_points < 1:
        parser.error("--restart-points is at least 1")
    knobs = (parts, args.restart_share, args.restart_points)
    chosen = [
        c
        for c in cells()
        if args.only.lower() in c.name.lower()
        and not (args.skip and args.skip.lower() in c.name.lower())
    ]
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    # The slowest cells (whole rollouts) first, so that the pool ends together; each cell's rows
    # go to stderr as soon as it is done (a long run stopped early keeps what it measured).
    order = sorted(chosen, key=lambda c: (-len(c.stages), c.expect != "fail"))
    done: dict[str, list[dict[str, Any]]] = {}
    ablate(*knobs)
    with ProcessPoolExecutor(
        max_workers=max(1, args.jobs), initializer=ablate, initargs=knobs
    ) as pool:
        futures = {pool.submit(run_cell, c, args.runs): c for c in order}
        for future in as_completed(futures):
            cell = futures[future]
            cell_rows, seconds = future.result()
            done[cell.name] = cell_rows
            timings[cell.name] = seconds
            print(f"  {cell.name}: {seconds:.1f}s", file=sys.stderr, flush=True)
            print(json.dumps(cell_rows), file=sys.stderr, flush=True)
    rows = [row for c in chosen for row in done[c.name]]
    cost = look_cost()
    elapsed = time.perf_counter() - started
    print(f"\n{args.runs} runs per cell, a look every {LOOK:g}s, alpha {ALPHA:g}; {elapsed:.0f}s")
    if parts or args.restart_share is not None or args.restart_points is not None:
        print(
            f"ablated: {', '.join(parts) or 'nothing'}; restart share {args.restart_share}, "
            f"points {args.restart_points} (None: as the engine has it)"
        )
    print_table(rows)
    print(
        f"\none look over 10 gates: median {cost['median_ms']:.3f} ms, p95 {cost['p95_ms']:.3f} ms"
    )
    out = {
        "runs": args.runs,
        "ablate": list(parts),
        "restart_share": args.restart_share,
        "restart_points": args.restart_points,
        "seconds": elapsed,
        "look_cost": cost,
        "cells": rows,
        "cell_seconds": timings,
    }
    text = json.dumps(out, indent=1)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text)
    print("\nJSON:")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
