"""Engines, URLs, schema-version checks, migrations and the retry helper.

A registry URL is a SQLAlchemy URL: ``sqlite:///path``, ``postgresql://...``
(psycopg 3 unless a driver is named), ``mysql://...`` or ``mariadb://...``
(PyMySQL unless a driver is named).

Transactions go through :func:`run_transaction`: serialization failures and
deadlocks (PostgreSQL 40001/40P01, MySQL 1213/1205, concurrent DDL 1412/1684, SQLite "database is
locked") are retried a bounded number of times with jittered backoff, each
time after a full rollback; a dropped connection becomes
:class:`RegistryUnavailableError` and the pool is pre-pinged, so the next
call gets a fresh connection.
"""

from __future__ import annotations

import functools
import importlib
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session

from ..errors import (
    ConfigError,
    MissingDependencyError,
    RegistryAccessError,
    RegistryError,
    RegistryUnavailableError,
    SchemaAheadError,
    SchemaBehindError,
    SchemaDriftError,
)
from . import _sqlite
from ._sqlite import HEAD_REVISION, SQLITE_BUSY_MS
from .drift import schema_drift

__all__ = [
    "connect",
    "current",
    "describe_url",
    "is_retryable",
    "normalize_url",
    "run_transaction",
    "upgrade",
]

T = TypeVar("T")

_DRIVERS = {
    "postgresql": ("postgresql+psycopg", "psycopg", "postgres"),
    "postgres": ("postgresql+psycopg", "psycopg", "postgres"),
    "mysql": ("mysql+pymysql", "pymysql", "mysql"),
    "mariadb": ("mysql+pymysql", "pymysql", "mysql"),
}
_DRIVER_MODULES = {
    "psycopg": ("psycopg", "postgres"),
    "psycopg2": ("psycopg2", "postgres"),
    "pymysql": ("pymysql", "mysql"),
    "mysqldb": ("MySQLdb", "mysql"),
    "mariadbconnector": ("mariadb", "mysql"),
}
MAX_ATTEMPTS = 8
_MIGRATION_LOCK = 7_353_817_101  # arbitrary, fixed: the advisory lock id for upgrades


def normalize_url(url: str) -> URL:
    """Parse a registry URL and pick the default driver for its database."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("the registry URL is empty; set MVAULT_REGISTRY or pass --registry")
    try:
        parsed = make_url(url.strip())
    except ArgumentError:
        raise ConfigError(
            f"registry URL {url!r:.120} is not a database URL; expected sqlite:///path, "
            "postgresql://user@host/db or mysql://user@host/db"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in _DRIVERS and not driver:
        parsed = parsed.set(drivername=_DRIVERS[backend][0])
    elif backend == "postgres":
        parsed = parsed.set(drivername=f"postgresql+{driver}")
    elif backend == "mariadb":
        parsed = parsed.set(drivername=f"mysql+{driver}")
    elif backend not in ("sqlite", "postgresql", "mysql"):
        raise ConfigError(
            f"registry URL {describe_url(parsed)!r}: unsupported database {backend!r}; "
            "use sqlite, postgresql or mysql/mariadb"
        )
    return parsed


def describe_url(url: URL | str) -> str:
    """A URL fit for messages: the password is never shown."""
    parsed = url if isinstance(url, URL) else make_url(url)
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database or ""
        if db.startswith("file:") and parsed.query.get("uri") == "true":
            db = unquote(db[len("file:") :])  # the read-only form of a plain path
        return f"sqlite:///{db}"
    host = parsed.host or "localhost"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.get_backend_name()}://{host}{port}/{parsed.database or ''}"


def _check_driver(url: URL) -> None:
    driver = url.get_driver_name()
    if driver in _DRIVER_MODULES:
        module, extra = _DRIVER_MODULES[driver]
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingDependencyError(
                module, extra, f"a {url.get_backend_name()} registry"
            ) from None


def _sqlite_on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    # The driver's own transaction handling is off (isolation_level=None) so
    # that BEGIN is ours: IMMEDIATE for writers takes the write lock up front
    # and waits on busy_timeout, instead of failing at the first write with
    # "database is locked" when two deferred transactions both upgrade.
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}")
    cur.execute("PRAGMA foreign_keys = ON")
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.close()
    _sqlite_wal(dbapi_conn)


def _sqlite_wal(dbapi_conn: sqlite3.Connection) -> None:
    """Switch to WAL once per file. The switch needs the file to itself and can
    fail with "database is locked" without waiting when several processes open
    a new file at once, so it is retried here until the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_MS / 1000
    while True:
        try:
            mode = dbapi_conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode not in ("wal", "memory"):
                dbapi_conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))


def _sqlite_on_connect_read_only(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    # No journal switch and no synchronous setting: a read-only file keeps its own.
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_MS}")
    cur.execute("PRAGMA query_only = ON")
    cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    write = conn.get_execution_options().get("mv_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def connect(url: str | URL) -> Engine:
    """Create an engine for a registry URL (no connection is made yet)."""
    parsed = normalize_url(url) if isinstance(url, str) else url
    _check_driver(parsed)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        db = parsed.database or ""
        if db and db != ":memory:" and not db.startswith("file:"):
            Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"isolation_level": None, "timeout": SQLITE_BUSY_MS / 1000}
    elif backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 10}
        kwargs["isolation_level"] = "READ COMMITTED"
    elif backend == "mysql":
        kwargs["connect_args"] = {"connect_timeout": 10, "charset": "utf8mb4"}
        # READ COMMITTED avoids most gap-lock deadlocks between concurrent pushes.
        kwargs["isolation_level"] = "READ COMMITTED"
    engine = create_engine(parsed, **kwargs)
    if backend == "sqlite":
        read_only = _sqlite.is_read_only_uri(parsed)
        event.listen(
            engine, "connect", _sqlite_on_connect_read_only if read_only else _sqlite_on_connect
        )
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlstate(exc: DBAPIError) -> str:
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if state:
        return str(state)
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return str(args[0])
    return ""


# MySQL/MariaDB 1412 and 1684: a table read while another connection's DDL (a
# concurrent first-open upgrade) changes it. MySQL DDL is not transactional, so
# the retry must outwait the whole migration, not just a lock hand-over.
_DDL_CONFLICTS = ("1412", "1684")


def backoff(attempt: int, exc: BaseException | None = None) -> None:
    """Sleep before retry ``attempt``: full jitter, exponential, capped.

    Contenders that collided spread out instead of colliding again.
    """
    cap = min(1.0, 0.01 * 2**attempt)
    if isinstance(exc, DBAPIError) and _sqlstate(exc) in _DDL_CONFLICTS:
        cap = max(cap, 0.75)
    time.sleep(random.uniform(0, cap))


def is_retryable(exc: BaseException) -> bool:
    """True for serialization failures, deadlocks and lock timeouts: try again from scratch."""
    if not isinstance(exc, DBAPIError) or exc.connection_invalidated:
        return False
    code = _sqlstate(exc)
    if code in ("40001", "40P01", "1213", "1205") or code in _DDL_CONFLICTS:
        return True
    msg = str(exc.orig).lower()
    return "database is locked" in msg or "database table is locked" in msg


def unavailable(url: URL, exc: BaseException) -> RegistryUnavailableError:
    """The error for a database that cannot be reached or dropped the connection."""
    detail = str(getattr(exc, "orig", exc)).strip().splitlines()
    why = detail[0][:200] if detail else type(exc).__name__
    pw = url.password
    if pw:
        why = why.replace(str(pw), "***")
    if url.get_backend_name() == "sqlite":
        hint = (
            "check that the path names a SQLite file and that you may read it "
            "(and write it, to push); nothing was written"
        )
    else:
        hint = "check that the database server is running and reachable; nothing was written"
    return RegistryUnavailableError(
        f"registry {describe_url(url)} is unavailable: {why}", hint=hint
    )


def translate(url: URL, exc: DBAPIError) -> RegistryError:
    """Turn a SQLAlchemy error that escaped the operation into our tree."""
    # PostgreSQL 42501 insufficient_privilege; MySQL/MariaDB 1142/1143 command/column denied.
    # PyMySQL reports these with SQLSTATE 42000 (any syntax or access error): use the errno.
    args = getattr(exc.orig, "args", ())
    errno = str(args[0]) if args and isinstance(args[0], int) else ""
    if _sqlstate(exc) == "42501" or errno in ("1142", "1143"):
        why = str(exc.orig).strip().splitlines()[0][:200]
        return RegistryAccessError(
            f"registry {describe_url(url)} refused: {why}",
            hint="this database user may not make that change; nothing was written to the registry",
        )
    if exc.connection_invalidated or isinstance(exc, OperationalError):
        return unavailable(url, exc)
    why = str(exc.orig).splitlines()[0][:300]
    if url.get_backend_name() == "sqlite" and "not a database" in why:
        return RegistryError(
            f"registry {describe_url(url)} is not a SQLite database ({why})",
            hint="check MVAULT_REGISTRY (or --registry): it names a file that is not a registry",
        )
    return RegistryError(f"registry {describe_url(url)}: {why}")


def run_transaction(
    engine: Engine,
    fn: Callable[[Session], T],
    *,
    write: bool = True,
    attempts: int = MAX_ATTEMPTS,
) -> T:
    """Run ``fn(session)`` in one transaction, retrying serialization failures.

    ``fn`` must be safe to run again: it sees a fresh session every attempt.
    Errors of our own tree raised by ``fn`` roll back and propagate unchanged.
    """
    opts = {"mv_write": True} if write else {}
    for attempt in range(1, attempts + 1):
        try:
            with Session(engine, expire_on_commit=False) as session:
                session.connection(execution_options=opts)
                result = fn(session)
                session.commit()
                return result
        except IntegrityError:
            raise  # the caller decides: a lost race, or a real conflict
        except DBAPIError as exc:
            if attempt < attempts and is_retryable(exc):
                backoff(attempt, exc)
                continue
            raise translate(engine.url, exc) from exc
    raise AssertionError("unreachable")  # pragma: no cover


# --- schema versions -------------------------------------------------------


def _alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option(
        "script_location", str(Path(__file__).resolve().parent.parent / "migrations")
    )
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def _script() -> Any:
    # Parsing the revision files costs milliseconds; they do not change while we run.
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config())


#: The newest migration's revision, known without importing Alembic: opening an
#: up-to-date registry (every read command) then costs one SELECT, not Alembic's
#: import and its revision scripts. ``tests/registry/test_migrations.py`` checks
#: it against Alembic's own head, so a new migration cannot leave it behind.


def head_revision() -> str:
    """The newest revision this modelvault knows."""
    head = _script().get_current_head()
    assert head is not None
    return str(head)


def _version_table_revision(conn: Connection) -> str | None:
    """``alembic_version``'s one row read with a plain SELECT, or None when there is none.

    Any surprise (no table, several rows) answers None, and the caller asks
    Alembic, which knows every case.
    """
    from sqlalchemy import text

    try:
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).fetchall()
    except DBAPIError:
        if conn.in_transaction():
            conn.rollback()  # PostgreSQL refuses everything after a failed statement
        return None
    return str(rows[0][0]) if len(rows) == 1 else None


def _revision_of(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    rev = MigrationContext.configure(conn).get_current_revision()
    return None if rev is None else str(rev)


def _status(rev: str | None, conn: Connection) -> str:
    if rev == HEAD_REVISION:
        return "up to date"
    script = _script()
    head = script.get_current_head()
    if rev is None:
        return "empty" if not inspect(conn).has_table("models") else "behind"
    if rev == head:
        return "up to date"
    known = {r.revision for r in script.walk_revisions()}
    return "behind" if rev in known else "ahead"


def check_schema(engine: Engine, *, auto_upgrade: bool) -> None:
    """Refuse a database whose schema is ahead; upgrade or refuse one that is behind."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with engine.connect() as conn, _status_lock(conn):
                rev = _version_table_revision(conn)
                if rev != HEAD_REVISION:
                    rev = _revision_of(conn)
                status = _status(rev, conn)
                drift = schema_drift(conn) if status == "up to date" else []
            break
        except DBAPIError as exc:
            # Several processes opening a new SQLite file at once meet its locks here.
            if attempt < MAX_ATTEMPTS and is_retryable(exc):
                backoff(attempt, exc)
                continue
            raise translate(engine.url, exc) from exc
    if status == "up to date":
        if drift:
            raise _drift_error(engine.url, rev, drift)
        return
    if status == "ahead":
        raise SchemaAheadError(
            f"the database was upgraded by a newer modelvault (revision {rev}); upgrade modelvault",
            hint="run: pip install --upgrade modelvault",
        )
    if auto_upgrade:
        _upgrade_engine(engine)
        return
    what = (
        "has no registry tables yet"
        if status == "empty"
        else f"is at revision {rev}, behind {head_revision()}"
    )
    raise SchemaBehindError(
        f"registry {describe_url(engine.url)} {what}; run: mvault db upgrade",
        hint="run: mvault db upgrade",
    )


def _drift_error(url: URL, rev: str | None, drift: list[str]) -> SchemaDriftError:
    return SchemaDriftError(
        f"registry {describe_url(url)} does not match its schema revision {rev}: "
        f"{'; '.join(drift)}",
        hint="the database was changed outside modelvault: restore what is missing "
        "(from a backup); mvault db current lists the differences",
    )


@contextmanager
def _session_migration_lock(conn: Connection) -> Iterator[None]:
    """MySQL/MariaDB: the migration lock, held outside any transaction of ``conn``."""
    if conn.dialect.name not in ("mysql", "mariadb"):
        yield
        return
    with _migration_lock(conn):
        conn.commit()  # end the transaction the lock statement began
        try:
            yield
        finally:
            conn.rollback()  # whatever the block left open, so RELEASE_LOCK runs on its own
    conn.commit()


@contextmanager
def _migration_lock(conn: Connection, *, session_held: bool = False) -> Iterator[None]:
    """Serialize concurrent upgraders (several processes opening a fresh database).

    ``session_held``: the caller already holds the MySQL/MariaDB session lock.
    """
    backend = conn.dialect.name
    if session_held and backend in ("mysql", "mariadb"):
        yield
        return
    if backend == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
        yield
    elif backend in ("mysql", "mariadb"):
        conn.execute(text("SELECT GET_LOCK('modelvault_migrate', 120)"))
        try:
            yield
        finally:
            conn.execute(text("SELECT RELEASE_LOCK('modelvault_migrate')"))
    else:
        yield  # SQLite: BEGIN IMMEDIATE already holds the write lock


@contextmanager
def _status_lock(conn: Connection) -> Iterator[None]:
    """On MySQL/MariaDB, read the schema status under the migration lock.

    Their DDL is not transactional: without the lock a reader can meet tables
    an upgrader in another process is still creating (error 1684).
    """
    if conn.dialect.name in ("mysql", "mariadb"):
        with _migration_lock(conn):
            yield
    else:
        yield


def _upgrade_engine(engine: Engine) -> str:
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return _upgrade_once(engine)
        except RegistryError as exc:
            cause = exc.__cause__
            if attempt < MAX_ATTEMPTS and cause is not None and is_retryable(cause):
                backoff(attempt, cause)
                continue
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def _upgrade_once(engine: Engine) -> str:
    from alembic import command

    try:
        # On MySQL/MariaDB the lock is a session lock and DDL commits as it goes:
        # take it before the transaction and release it only after the commit, or
        # the next upgrader reads the revision before the last stamp is visible.
        with (
            engine.connect().execution_options(mv_write=True) as conn,
            _session_migration_lock(conn),
            conn.begin(),
            _migration_lock(conn, session_held=True),
        ):
            rev = _revision_of(conn)
            if _status(rev, conn) == "ahead":
                raise SchemaAheadError(
                    f"the database was upgraded by a newer modelvault (revision {rev}); upgrade modelvault",
                    hint="run: pip install --upgrade modelvault",
                )
            command.upgrade(_alembic_config(conn), "head")
            new = _revision_of(conn)
    except DBAPIError as exc:
        raise translate(engine.url, exc) from exc
    return new or ""


def upgrade(url: str) -> str:
    """Bring the registry at ``url`` to the newest schema; return the new revision.

    A SQLite file this process cannot write raises
    :class:`~modelvault.errors.RegistryReadOnlyError` before anything is opened.
    """
    path = _sqlite.sqlite_file(normalize_url(url))
    why = None if path is None else _sqlite.why_not_writable(path)
    if why is not None:
        raise _sqlite.read_only(path, why)
    engine = connect(url)
    try:
        return _upgrade_engine(engine)
    finally:
        engine.dispose()


def current(url: str) -> dict[str, Any]:
    """The schema state: ``{"url", "current", "head", "status", "drift"}``.

    ``status`` is ``"up to date"``, ``"behind"``, ``"ahead"``, ``"empty"`` or
    ``"drifted"`` (at the head revision, but tables or columns differ: ``drift``
    lists how). It only reads: a SQLite file is opened read-only, and a missing
    one raises :class:`~modelvault.errors.RegistryNotFoundError` (it is not created).
    """
    parsed = normalize_url(url)
    path = _sqlite.sqlite_file(parsed)
    if path is not None:
        if not path.exists():
            raise _sqlite.missing(path)
        parsed = _sqlite.read_only_url(parsed, path)
    engine = connect(parsed)
    drift: list[str] = []
    try:
        with engine.connect() as conn:
            rev = _revision_of(conn)
            status = _status(rev, conn)
            if status == "up to date":
                drift = schema_drift(conn)
                status = "drifted" if drift else status
    except DBAPIError as exc:
        raise translate(engine.url, exc) from exc
    finally:
        engine.dispose()
    return {
        "url": describe_url(engine.url),
        "current": rev,
        "head": head_revision(),
        "status": status,
        "drift": drift,
    }


def sqlite_path_missing(url: URL) -> bool:
    """True for a SQLite file URL whose file does not exist yet."""
    if url.get_backend_name() != "sqlite":
        return False
    db = url.database or ""
    if not db or db == ":memory:" or db.startswith("file:"):
        return True
    return not os.path.exists(os.path.expanduser(db))
