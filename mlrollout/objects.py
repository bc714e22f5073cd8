"""Files in object storage or on disk, by URI: what the flag writer writes and the feedback and
capture readers read (not the state store, which has its own conditional-write protocol in
:mod:`mlrollout.state.objects`).

:func:`open_objects` takes a location — a local path, a ``file://`` URI, or a URI whose scheme an
installed plugin registers in the ``mlrollout.objects`` entry-point group (``s3://bucket/key``
in ``mlrollout-aws``; ``az://account/container/path`` and the blob URL in ``mlrollout-azure``)
— and returns an :class:`ObjectFiles` rooted there. A plugin's factory is
``open(location: str, endpoint_url: str | None) -> ObjectFiles`` (``endpoint_url``: the plan's
``target.endpoint_url``, for emulators; URL options such as ``?endpoint_url=`` work as in the
state URLs). Errors are :class:`~mlrollout.errors.ProviderError` naming the call and the fix;
a missing object reads as ``None``, never an error.

Cheap to import: no SDK.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from mlrollout.errors import ProviderError


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the root the files were opened at ("" for the root object itself)
    size: int
    modified: float  # seconds since the epoch


class ObjectFiles(Protocol):
    """Objects under one root (a prefix, a directory, or one object)."""

    #: The location as given (for messages; never holds a secret: URL options are dropped).
    location: str

    def read(self, key: str = "") -> bytes | None:
        """The object's bytes, or ``None`` when it does not exist."""
        ...

    def write(self, data: bytes, key: str = "", *, content_type: str = "application/json") -> None:
        """Replace the object as a whole (readers never see half of it)."""
        ...

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """The objects under ``prefix`` (all of them, recursively), in key order."""
        ...


class LocalFiles:
    """:class:`ObjectFiles` on the local disk: ``root`` a file or a directory."""

    def __init__(self, root: Path, location: str) -> None:
        self.root = root
        self.location = location

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def read(self, key: str = "") -> bytes | None:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProviderError(
                f"cannot read {path}: {exc.strerror or exc}",
                hint="check the path and its permissions",
            ) from exc

    def write(self, data: bytes, key: str = "", *, content_type: str = "application/json") -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as out:
                    # readable as a file written any other way (mkstemp makes it 0600): the
                    # application's flagd may run as another user
                    os.fchmod(out.fileno(), 0o644)
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)  # atomic: a reader sees the old file or the new one
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise ProviderError(
                f"cannot write {path}: {exc.strerror or exc}",
                hint="check that the directory exists and is writable",
            ) from exc

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        root = self.root
        if root.is_file():
            st = root.stat()
            return [ObjectInfo("", st.st_size, st.st_mtime)] if not prefix else []
        base = root / prefix if prefix else root
        if not base.exists():
            return []
        out = []
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            st = path.stat()
            out.append(ObjectInfo(path.relative_to(root).as_posix(), st.st_size, st.st_mtime))
        return out


def open_objects(location: str, *, endpoint_url: str | None = None) -> ObjectFiles:
    """The objects at ``location`` (see the module's doc)."""
    if "://" not in location:
        return LocalFiles(Path(location).expanduser(), location)
    scheme = urlparse(location).scheme.lower()
    if scheme == "file":
        return LocalFiles(Path(unquote(urlparse(location).path)), location)
    from mlrollout.plugins import object_factory

    files: ObjectFiles = object_factory(scheme)(location, endpoint_url)
    return files
