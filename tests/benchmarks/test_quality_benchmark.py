"""The quality-gate benchmark runs at a few runs and reports every gate and the detection cells."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numpy")  # installed with the dev extra; the core never imports it

ROOT = Path(__file__).resolve().parents[2]


def test_the_quality_benchmark_runs_its_a_a_and_detection_cells() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--runs", "20",
         "--detect-runs", "5"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "labels 600 s late" in out and "20 runs" in out
    rows = {line.split()[0] for line in out.splitlines() if line[:1].isalpha()}
    assert {"accuracy", "precision", "recall", "f1", "feedback"} <= rows
    fast = next(line for line in out.splitlines() if line.startswith("five gates, 100 vs 900/s"))
    # 6,000 labelled candidate predictions at the first look with labels: caught at once
    assert "rolled back 1.000" in fast and "60 s after the first labels" in fast
