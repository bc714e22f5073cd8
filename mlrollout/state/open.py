"""Open a state store by where it is: a directory, a SQLite file, or a backend URL."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlrollout.state.base import StateStore


def open_store(location: str | os.PathLike[str]) -> StateStore:
    """``.mlrollout`` or ``path/to/state.db`` → SQLite; ``SCHEME://...`` → that state plugin
    (``s3://bucket/prefix`` with ``mlrollout-aws`` installed, a third party's scheme).

    Raises :class:`~mlrollout.errors.ProviderUnavailable` for a scheme no installed plugin
    registers and :class:`~mlrollout.errors.StateUnavailable` when the store cannot be opened."""
    from mlrollout.plugins import state_factory

    location = os.fspath(location)
    if "://" in location:
        scheme = location.split("://", 1)[0]
        factory = state_factory(scheme)
    else:
        factory = state_factory("sqlite")
    store: StateStore = factory(location)
    return store
