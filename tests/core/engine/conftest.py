"""Lets the engine tests import their shared helpers (``sandbox_run``) by name."""

from __future__ import annotations

import sys
from pathlib import Path

# Appended, not inserted: the provider tests import modules of their own by name too.
sys.path.append(str(Path(__file__).parent))
