"""Shared pieces of the plugin tests: a directory on ``sys.path`` where a test installs plugins
the way a distribution does (a ``NAME-1.0.dist-info`` with ``entry_points.txt``), and the CLI
called in-process."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlrollout import plugins

#: A sandbox rollout judged by one absolute error-rate gate, whose metrics ``analysis.source``
#: names (``{source}``): the sandbox simulates a healthy candidate.
SOURCE_PLAN = """\
version: 1
name: p
target: {{provider: local, endpoint: churn}}
candidate: {{name: v2}}
strategy:
  type: canary
  steps: [{{weight: 20}}, {{analyze: 5m}}, {{weight: 100}}]
analysis:
  source: {source}
  interval: 60s
  min_requests: 100
  gates:
    - {{name: errors, metric: error_rate, max: 2%}}
sandbox:
  seed: 3
  variants:
    v1: {{error_rate: 0.001}}
    v2: {{error_rate: 0.001}}
"""


def write_dist(site: Path, name: str, entry_points: str) -> None:
    """Install the distribution ``name`` declaring ``entry_points`` (the text of its
    entry_points.txt) in ``site``. A wheel's dist-info names it with ``_`` for ``-``:
    importlib.metadata reads the name up to the first ``-``, so ``mlrollout-x-1.0.dist-info``
    would pass for the core's own distribution and hide its entry points."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


class PluginSite:
    def __init__(self, root: Path) -> None:
        self.root = root

    def module(self, dotted: str, source: str) -> None:
        """Write the module ``dotted`` (``pkg.mod`` makes the package too)."""
        *packages, name = dotted.split(".")
        folder = self.root
        for package in packages:
            folder = folder / package
            folder.mkdir(exist_ok=True)
            (folder / "__init__.py").touch()
        (folder / f"{name}.py").write_text(source)

    def dist(self, name: str, entry_points: str) -> None:
        write_dist(self.root, name, entry_points)


@pytest.fixture
def plugin_site(tmp_path: Path) -> Iterator[PluginSite]:
    root = tmp_path / "site"
    root.mkdir()
    sys.path.insert(0, str(root))
    plugins._refs.cache_clear()
    yield PluginSite(root)
    sys.path.remove(str(root))
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(root)):
            del sys.modules[name]
    plugins._refs.cache_clear()


Cli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """``cli("providers", "kube", "--help")`` -> (exit code, stdout, stderr), in-process."""
    from mlrollout.cli.app import main

    def run(*args: str | Path) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main([str(a) for a in args])
        code = exited.value.code
        out, err = capsys.readouterr()
        return (code if isinstance(code, int) else 0), out, err

    return run
