"""Lets the flag tests import their shared plans (``flag_plans``) by name; the ``flagd`` fixture
skips a test without the flagd evaluator (fails it under ``MLROLLOUT_REQUIRE_PEERS=1``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from mlrollout.testing.peers import missing_peer

# Appended, not inserted: other test folders import modules of their own by name too.
sys.path.append(str(Path(__file__).parent))


def _has_flagd() -> bool:
    try:
        return importlib.util.find_spec("openfeature.contrib.tools.flagd.core") is not None
    except ImportError:  # not even the openfeature package
        return False


@pytest.fixture
def flagd() -> None:
    if not _has_flagd():
        missing_peer(
            "needs the flagd evaluator openfeature-flagd-core: pip install 'mlrollout[flagd]'"
        )
