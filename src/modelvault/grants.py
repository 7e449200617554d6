"""Least-privilege database roles: a reader and a publisher (``mvault db grant-*``).

* A **reader** (serving nodes) may resolve, list, show, pull and load: SELECT on
  every registry table, nothing else. Reads never write: every read runs in a
  transaction that inserts no event and takes no write lock.
* A **publisher** (CI, release engineers) may push, add variants, move aliases
  and set labels: SELECT and INSERT everywhere, UPDATE and DELETE only on the
  movable pointers (``aliases``, ``labels``). It cannot delete versions,
  variants or blobs, and cannot change or delete the history (``events``,
  ``alias_history``); ``rm``, ``gc`` and ``db upgrade`` stay with the owner.

The role (or user) must exist; the statements only grant. ``--apply`` runs them
as the registry URL's user, which must own the tables (or hold GRANT OPTION).
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import make_url

from .errors import InvalidArgumentError

__all__ = ["apply_grants", "grant_sql"]


def _tables() -> tuple[str, ...]:
    """Every registry table (from the schema itself, so a new table is never missed),
    and Alembic's, which opening a registry reads."""
    from .registry.schema import Base

    return (*sorted(Base.metadata.tables), "alembic_version")


#: Pointers a publisher moves, and the leases its pushes take, renew and release
#: (so that a concurrent gc leaves the blobs of a push in flight alone).
_MOVABLE = ("aliases", "labels", "blob_leases")
#: Rows a push locks (shared) against a gc deciding deletions: a row lock needs
#: UPDATE on PostgreSQL and MariaDB, though nothing is updated.
_LOCKED = ("registry_locks",)


def _check_role(role: str, dialect: str) -> str:
    import re

    if dialect == "postgresql":
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", role):
            raise InvalidArgumentError(f"role {role!r}: use letters, digits and _ (max 63)")
        return f'"{role}"'
    m = re.fullmatch(r"([A-Za-z0-9_]{1,80})(?:@([A-Za-z0-9_.%:-]{1,255}))?", role)
    if not m:
        raise InvalidArgumentError(f"user {role!r}: use NAME or NAME@HOST (letters, digits, _)")
    return f"'{m.group(1)}'@'{m.group(2) or '%'}'"


def grant_sql(kind: str, role: str, url: str) -> list[str]:
    """The statements that make ``role`` a ``reader`` or ``publisher`` of the registry at ``url``."""
    if kind not in ("reader", "publisher"):
        raise InvalidArgumentError(f"unknown role kind {kind!r}")
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        who = _check_role(role, "postgresql")
        tables = ", ".join(_tables())
        out = [f"GRANT USAGE ON SCHEMA public TO {who}"]
        if kind == "reader":
            return [*out, f"GRANT SELECT ON {tables} TO {who}"]
        return [
            *out,
            f"GRANT SELECT, INSERT ON {tables} TO {who}",
            f"GRANT UPDATE, DELETE ON {', '.join(_MOVABLE)} TO {who}",
            f"GRANT UPDATE ON {', '.join(_LOCKED)} TO {who}",
            f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {who}",
        ]
    if backend in ("mysql", "mariadb"):
        who = _check_role(role, "mysql")
        db = parsed.database
        if not db:
            raise InvalidArgumentError("the registry URL names no database")
        privs = "SELECT" if kind == "reader" else "SELECT, INSERT"
        out = [f"GRANT {privs} ON `{db}`.`{t}` TO {who}" for t in _tables()]
        if kind == "publisher":
            out += [f"GRANT UPDATE, DELETE ON `{db}`.`{t}` TO {who}" for t in _MOVABLE]
            out += [f"GRANT UPDATE ON `{db}`.`{t}` TO {who}" for t in _LOCKED]
        return out
    raise InvalidArgumentError(
        f"grants are for PostgreSQL and MariaDB/MySQL; {backend} has no roles",
        hint="an SQLite registry is as private as its file: use file permissions",
    )


def apply_grants(statements: list[str], url: str) -> None:
    """Run the statements on the registry, in one transaction where the server allows."""
    from .registry.db import connect

    engine = connect(url)
    try:
        with engine.begin() as conn:
            for s in statements:
                conn.execute(text(s))
    finally:
        engine.dispose()
