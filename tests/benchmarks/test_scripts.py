"""The benchmark scripts run, and the committed calibration table is what its script measures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlrollout.analysis.calibration import ALPHAS, DELTAS, HORIZONS, STEPS

pytest.importorskip("numpy")  # installed with the dev extra; the core never imports it

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_calibration_table_is_reproduced_by_its_script() -> None:
    out = run("calibrate.py", "--runs", "3000", "--grids", "fail", "--jobs", "2")
    scope: dict[str, object] = {}
    exec(out, scope)  # the script prints Python: DELTAS = {...}
    measured = scope["DELTAS"]
    assert isinstance(measured, dict) and set(measured) == {"fail"}
    committed = DELTAS["fail"]
    assert len(measured["fail"]) == len(STEPS)
    # 3,000 runs against the committed 100,000: the same shape, within simulation noise, on the
    # budgets where 3,000 runs see enough crossings (150 at 5 %)
    for step, (fresh, kept) in enumerate(zip(measured["fail"], committed, strict=True)):
        for a in (ALPHAS.index(0.1), ALPHAS.index(0.05)):
            for k in range(len(HORIZONS) + 1):
                assert abs(fresh[a][k] - kept[a][k]) <= 0.3, (STEPS[step], ALPHAS[a], k)


def test_the_decision_benchmark_runs_and_reports_json(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    out = run("decisions.py", "--runs", "40", "--only", "errors x5", "--json", str(target))
    assert "errors x5" in out and "one look over 10 gates" in out
    data = json.loads(target.read_text())
    ours = next(r for r in data["cells"] if r["method"] == "mixture-sprt")
    assert ours["rollback"] >= 0.9  # a fivefold regression is caught in nearly every run
    assert ours["det_mean"] < 60
    methods = {r["method"] for r in data["cells"]}
    assert {"peeking-z", "oracle-sprt", "oracle-sprt at 5% A/A"} <= methods


def test_the_sandbox_benchmark_runs_the_week_long_rehearsal_on_its_coarse_grid() -> None:
    out = run("sandbox_traffic.py")
    assert "stage windows, 100 rps" in out and "rollout windows, 10k rps" in out
    week = out.rsplit("outcome", 1)[1].split()
    # wall seconds, looks, buckets, outcome: 168 hourly looks on 168 one-hour buckets per variant
    assert week[1:] == ["168", "336", "succeeded"], out


def test_the_decision_benchmark_has_bursty_cells_fed_with_intervals(tmp_path: Path) -> None:
    target = tmp_path / "bursts.json"
    out = run("decisions.py", "--runs", "30", "--only", "errors x2, bursts", "--json", str(target))
    assert "errors x2, bursts k=2" in out and "failed by: errors" in out
    data = json.loads(target.read_text())
    ours = next(r for r in data["cells"] if r["method"] == "mixture-sprt")
    assert ours["rollback"] >= 0.8  # a doubling under bursts is still caught
    assert set(ours["failed_by"]) == {"errors"}


def test_the_decision_benchmark_measures_what_the_robust_parts_cost(tmp_path: Path) -> None:
    """``--ablate`` switches the dispersion factor (or one of its parts) and the restarted tests
    off (issue 14's measurements): on the same seeds, a clean doubling is found sooner without
    them."""
    cell = "errors x2, 30% looks missing"

    def mean(*extra: str) -> float:
        target = tmp_path / f"{'-'.join(extra) or 'as-is'}.json"
        run("decisions.py", "--runs", "60", "--only", cell, "--json", str(target), *extra)
        data = json.loads(target.read_text())
        ours = next(r for r in data["cells"] if r["method"] == "mixture-sprt")
        assert ours["rollback"] == 1.0
        return float(ours["det_mean"])

    robust = mean()
    bare = mean("--ablate", "dispersion,restarts")
    assert bare < robust  # the early guard and the restarts' share of the budget cost time
    # one part of burst protection off: between the two
    assert bare < mean("--ablate", "guard,restarts") < mean("--ablate", "restarts")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "decisions.py"), "--ablate", "bursts"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "unknown part bursts" in done.stderr


def test_a_decision_cell_whose_rule_crashes_fails_instead_of_counting_no_rollback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gate set holds a gate whose rule raises (a rollout must not crash); the benchmark must
    not read those holds as "never rolled back" (an ablation with a stale signature once did)."""
    import importlib.util

    from mlrollout.analysis import sequential

    spec = importlib.util.spec_from_file_location("decisions", ROOT / "benchmarks" / "decisions.py")
    assert spec is not None and spec.loader is not None
    decisions = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "decisions", decisions)  # its dataclasses look it up
    spec.loader.exec_module(decisions)

    def broken(*args: object, **kw: object) -> None:
        raise ValueError("a rule bug")

    monkeypatch.setattr(sequential, "two_sample", broken)
    cell = next(c for c in decisions.cells() if c.name == "errors x2")
    with pytest.raises(RuntimeError, match="errors x2: could not evaluate the gate: ValueError"):
        decisions.run_cell(cell, 3)


def test_the_winner_benchmark_runs_its_a_a_cells() -> None:
    out = run("winner.py", "--runs", "20", "--only", "A/A")
    assert "A/A, rate 1 %" in out and "20 runs per cell" in out


def test_the_capture_benchmark_reads_pairs_and_judges_a_look() -> None:
    out = run("capture.py", "--records", "5000")
    assert "peak RSS MB" in out
    row = out.strip().splitlines()[-1].split()
    assert int(row[0].replace(",", "")) > 4000  # records read in the look


@pytest.mark.slow
def test_the_fleet_benchmark_runs_a_small_fleet_through_three_watchers() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fleet.py"), "--targets", "6", "--waves", "2",
         "--parallel", "3", "--speed", "240", "--timeout", "240"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["fleet_phase"] == "succeeded" and figures["target_phases"] == ["succeeded"]
    assert figures["rollouts_witnessed"] == 6


def test_the_api_budget_benchmark_holds_the_workers_to_the_budget() -> None:
    pytest.importorskip("moto")
    out = run("api_budget.py", "--workers", "4", "--seconds", "2")
    cases = {c["case"]: c for c in json.loads(out.splitlines()[-1])["cases"]}
    for share in ("share 50 %", "share 100 %"):
        assert 0 < cases[share]["calls"] <= cases[share]["allowed"], cases[share]
    # unbudgeted, the same workers go as fast as the server answers: far past the budget
    assert cases["no budget"]["per_second"] > 2 * cases["share 100 %"]["per_second"]
