"""`--help`, `plan validate` and `plan preview` import no cloud SDK and no scientific stack
(DESIGN.md, "Performance rules").

Each command runs in a fresh interpreter under ``-X importtime``; the imported modules are read
from its stderr. Stub packages with the forbidden names are put first on ``PYTHONPATH`` so that
an import of one of them shows up (and succeeds) even where the real SDK is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
FORBIDDEN = ("boto3", "botocore", "google.cloud", "azure", "numpy", "scipy", "pandas")

COMMANDS = {
    "help": (["--help"], 0),
    "plan-help": (["plan", "--help"], 0),
    "validate": (["plan", "validate", "plans/local-canary-bad.yaml"], 0),
    "validate-all": (
        ["plan", "validate", *sorted(str(p.relative_to(REPO)) for p in REPO.glob("plans/*.yaml"))],
        0,
    ),
    "preview": (["plan", "preview", "plans/local-canary-bad.yaml"], 0),
    "preview-json": (["plan", "preview", "-o", "json", "plans/local-canary-good.yaml"], 0),
}


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stubs")
    for name in ("boto3", "botocore", "numpy", "scipy", "pandas"):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text("")
    # namespace packages, as the real SDKs ship them: they merge with any installed portions
    (root / "google" / "cloud").mkdir(parents=True)
    (root / "google" / "cloud" / "_mlrollout_stub.py").write_text("")
    (root / "azure").mkdir()
    (root / "azure" / "_mlrollout_stub.py").write_text("")
    return root


def imported_modules(stderr: str) -> list[str]:
    """Module names from ``-X importtime`` output: ``import time: self | cumulative | name``."""
    names = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.append(name)
    return names


def forbidden_in(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def test_the_parser_sees_forbidden_imports(stubs):
    """The check itself works: a process that imports a stub is caught."""
    env = {**os.environ, "PYTHONPATH": str(stubs)}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import numpy, google.cloud, azure"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    # (google.cloud may already be set up at start-up by a namespace .pth file when the GCP
    # provider is installed, and then importtime does not list it again)
    assert {"azure", "numpy"} <= set(forbidden_in(imported_modules(proc.stderr)))


@pytest.mark.parametrize("command", list(COMMANDS), ids=list(COMMANDS))
def test_light_commands_import_no_heavy_module(stubs, command):
    args, code = COMMANDS[command]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(stubs), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    env.pop("MLROLLOUT_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mlrollout", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == code, proc.stderr[-2000:]
    modules = imported_modules(proc.stderr)
    assert "mlrollout" in modules  # the parse worked
    assert forbidden_in(modules) == []
