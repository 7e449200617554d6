"""The SQLite file behind a registry URL: where it is, whether this process may
write it, and how to open it for reading only.

A read-only home (an ``MVAULT_HOME`` shared from another account, a read-only
mount) still serves lookups: the file is opened with ``mode=ro``, so SQLite
never tries to create it, migrate it or switch its journal. A WAL database
needs a ``-shm`` file beside it; where the directory cannot be written and no
write-ahead log is in flight (no ``-wal`` file: nobody is writing it now), the
file is opened ``immutable``, which needs no ``-shm``. With a ``-wal`` file
present it is opened ``mode=ro`` only, so the committed transactions in the
log are read too.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import URL

from .. import config
from ..errors import RegistryNotFoundError, RegistryReadOnlyError

__all__ = [
    "missing",
    "read_only",
    "read_only_url",
    "sqlite_file",
    "why_not_writable",
]

_READ_HINT = (
    "read commands (ls, show, pull, log, diff, verify) still work here; to change the "
    "registry, run as a user who can write it, or point MVAULT_HOME (or MVAULT_REGISTRY) "
    "at a directory you can write"
)


def sqlite_file(url: URL) -> Path | None:
    """The file a SQLite URL names; None for other databases, ``:memory:`` and ``file:`` URIs."""
    if url.get_backend_name() != "sqlite":
        return None
    db = url.database or ""
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db).expanduser().absolute()


def why_not_writable(path: Path) -> str | None:
    """None when this process could write (or create) the SQLite file ``path``; else why not.

    SQLite writes its journal (``-wal``, ``-shm`` or ``-journal``) beside the
    file, so the directory must be writable too.
    """
    if path.exists():
        if path.is_dir():
            return None  # not a database at all: the open says so
        if not os.access(path, os.W_OK):
            return f"{path} is not writable"
        if not os.access(path.parent, os.W_OK | os.X_OK):
            return f"its directory {path.parent} is not writable (SQLite keeps its journal there)"
        return None
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def _embedded(path: Path) -> bool:
    s = config.settings()
    return s.is_embedded_registry and path == (s.home / "registry.db").expanduser().absolute()


def read_only(path: Path | None, why: str, where: str = "") -> RegistryReadOnlyError:
    """The error for a change to a registry this process cannot write (``where``: its URL,
    for a registry that is not a SQLite file)."""
    if path is not None and _embedded(path):
        home = config.settings().home
        message = f"the home {home} is read-only ({why}); nothing was written"
    elif path is not None:
        message = f"registry {path} is read-only ({why}); nothing was written"
    else:
        message = f"registry {where or 'database'} is read-only ({why}); nothing was written"
    return RegistryReadOnlyError(message, hint=_READ_HINT)


def missing(path: Path) -> RegistryNotFoundError:
    """The error for a read of a SQLite registry file that does not exist."""
    check = "MVAULT_HOME" if _embedded(path) else "MVAULT_REGISTRY (or --registry)"
    return RegistryNotFoundError(
        f"no registry at {path} (nothing pushed yet, or a mistyped path)",
        hint=f"push a model first (that creates it), or check {check}",
    )


def read_only_url(url: URL, path: Path) -> URL:
    """``url`` as a ``file:`` URI SQLite opens read-only (``immutable`` where it must)."""
    query = {"mode": "ro", "uri": "true"}
    wal = path.with_name(path.name + "-wal")
    if not os.access(path.parent, os.W_OK | os.X_OK) and not wal.exists():
        query["immutable"] = "1"
    return url.set(database=f"file:{quote(str(path))}", query=query)


def is_read_only_uri(url: URL) -> bool:
    """True for a URL :func:`read_only_url` made (or a user's ``file:...?mode=ro``)."""
    return url.query.get("mode") == "ro" or url.query.get("immutable") == "1"
