"""Shared pieces of the CLI tests: call ``mlrollout.cli.app.main`` in-process and capture what it
prints and the exit code it raises."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import mlrollout

REPO = Path(mlrollout.__file__).resolve().parents[1]
PLANS = REPO / "plans"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def both(self) -> str:
        return self.out + self.err


Cli = Callable[..., Result]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """``cli("plan", "validate", path)`` → Result(code, stdout, stderr), in-process."""
    from mlrollout.cli.app import main

    def run(*args: str | os.PathLike[str]) -> Result:
        capsys.readouterr()  # drop whatever an earlier call left
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        else:  # pragma: no cover - main always raises SystemExit
            pytest.fail("mlrollout.cli.app.main returned instead of raising SystemExit")
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def state(tmp_path: Path) -> str:
    """A fresh state directory for this test (never the checkout's ``.mlrollout``)."""
    return str(tmp_path / "state")


@pytest.fixture
def plans() -> Path:
    """The example plans of the checkout."""
    return PLANS


@pytest.fixture
def proc() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``proc(*args, cwd=..., env=..., timeout=...)``: ``python -m mlrollout ARGS``."""
    return run_module


def run_module(
    *args: str | os.PathLike[str],
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``python -m mlrollout ARGS`` in a subprocess (no TTY on any stream)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("MLROLLOUT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "mlrollout", *map(str, args)],
        cwd=cwd,
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
