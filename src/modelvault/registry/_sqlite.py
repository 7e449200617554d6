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
from typing import TYPE_CHECKING
from urllib.parse import quote

from .. import config
from ..errors import RegistryNotFoundError, RegistryReadOnlyError

if TYPE_CHECKING:  # this module is also the lite registry's: no SQLAlchemy at import
    from sqlalchemy.engine import URL

__all__ = [
    "DRIFT_QUERY",
    "HEAD_REVISION",
    "SQLITE_BUSY_MS",
    "TABLE_COLUMNS",
    "missing",
    "read_only",
    "read_only_url",
    "sqlite_file",
    "why_not_writable",
]

#: The newest schema revision this modelvault knows (``migrations/versions``).
HEAD_REVISION = "0002"
#: How long a connection waits for another writer's lock.
SQLITE_BUSY_MS = 30_000
#: Every table of :mod:`.schema` at :data:`HEAD_REVISION` with its columns, for the lite
#: registry's schema check (the tests hold it equal to the ORM's tables).
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "models": ("id", "name", "name_key", "description", "created_at", "created_by"),
    "versions": (
        "id",
        "model_id",
        "version",
        "major",
        "minor",
        "patch",
        "prerelease",
        "prerelease_sort",
        "build",
        "is_prerelease",
        "description",
        "created_at",
        "created_by",
    ),
    "variants": (
        "id",
        "version_id",
        "manifest_digest",
        "format",
        "kind",
        "requirements",
        "size",
        "created_at",
        "created_by",
    ),
    "blobs": ("digest", "size", "media_type", "first_seen"),
    "variant_blobs": ("variant_id", "blob_digest", "role"),
    "aliases": ("id", "model_id", "name", "version_id", "updated_at", "updated_by"),
    "alias_history": ("id", "model_id", "alias", "version", "previous", "action", "at", "by"),
    "labels": ("version_id", "key", "value"),
    "events": ("id", "at", "user", "kind", "model", "version", "alias", "details"),
    "blob_leases": ("lease_id", "blob_digest", "expires_at"),
    "blob_deletions": ("blob_digest", "gc_id", "decided_at", "deadline"),
    "registry_locks": ("name",),
}
#: Tables, columns, and whether an insert that does not name a column fails, in one query.
DRIFT_QUERY = (
    'SELECT m.name, p.name, p."notnull" AND p.dflt_value IS NULL AND NOT p.pk '
    "FROM sqlite_master AS m JOIN pragma_table_info(m.name) AS p WHERE m.type = 'table'"
)

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
