"""The embedded SQLite registry read and written with the standard library alone.

``mvault ls``, ``show``, ``alias`` and a push of a plain file are over in
milliseconds of work, but importing SQLAlchemy (core, ORM and the schema
declared on it) costs more than half a second on a small machine. For the
registry most users have, a SQLite file at the head schema revision,
:class:`LiteRegistry` runs the calls those commands make (resolve, listings,
aliases, labels, the push's leases and registration) as plain SQL over
:mod:`sqlite3`, and hands every other call to a :class:`~.api.Registry` it
opens on first use.

It is an accelerator, never a second source of truth:

* it only opens a file that exists, whose ``alembic_version`` is the head
  revision and whose tables have every column :mod:`.schema` declares
  (:data:`._sqlite.TABLE_COLUMNS`, checked against the ORM by the tests);
  anything else (a missing, new, behind, ahead or drifted database, a URL
  it does not parse with certainty, a journal that is not WAL) answers None
  and the caller opens the full registry, which upgrades or refuses with
  its usual errors;
* every statement writes the rows, values and event details the SQLAlchemy
  path writes (``tests/registry/test_lite.py`` runs both on one file and
  compares results and raw rows);
* an SQLite error other than a decided unique-constraint race (a lock held
  past the busy timeout, an I/O error) rolls the transaction back and runs
  the same call on the full registry, which retries and explains it as it
  always has.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from .. import config
from ..errors import (
    ConflictError,
    InvalidSpecError,
    ModelExistsError,
    RegistryError,
    VariantExistsError,
    VersionExistsError,
    VersionNotFoundError,
)
from . import _sqlite, answers, checks
from .results import AliasInfo, BlobRef, ModelInfo, Page, VariantInfo, VariantInput, VersionInfo
from .semver import RELEASE_KEY, SemVer
from .specs import (
    AliasSpec,
    DigestSpec,
    ExactSpec,
    LatestSpec,
    RangeSpec,
    Spec,
    parse_ref,
    parse_spec,
    validate_name,
)

if TYPE_CHECKING:
    from .api import Registry

__all__ = ["LiteRegistry"]

T = TypeVar("T")
Conn = sqlite3.Connection
Row = sqlite3.Row

_CONFLICT_RETRIES = 5  # as the full registry's
_RANGE_BATCH = 64
_CHUNK = 500
_LOCK_NAME = "blobs"
_UTC = dt.timezone.utc
_DESC = "major DESC, minor DESC, patch DESC, prerelease_sort DESC"
_VCOLS = (
    "id, model_id, version, major, minor, patch, prerelease, prerelease_sort, build, "
    "is_prerelease, description, created_at, created_by"
)


class _Unsure(Exception):
    """An SQLite error the full registry should see: the call is re-run there."""


#: Tests set this: an SQLite error in the lite path then fails the call instead of
#: being answered by the full registry, so a fallback cannot hide a lite bug.
STRICT = False


# --- values as SQLAlchemy stores them on SQLite ---------------------------------------


def _ts(value: dt.datetime) -> str:
    """A time as the schema's UTCDateTime stores it on SQLite: naive UTC, microseconds."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)
    v = value.astimezone(_UTC)
    # SQLAlchemy's SQLite DATETIME format: a four-digit year even before 1000 (%Y is not)
    return (
        f"{v.year:04d}-{v.month:02d}-{v.day:02d} "
        f"{v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond:06d}"
    )


def _dt(raw: Any) -> dt.datetime:
    value = raw if isinstance(raw, dt.datetime) else dt.datetime.fromisoformat(str(raw))
    return value.replace(tzinfo=_UTC) if value.tzinfo is None else value.astimezone(_UTC)


def _json(value: Any) -> str:
    """JSONText's encoding: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _from_json(raw: str | None) -> Any:
    """JSONText's decoding: NULL stays None."""
    return None if raw is None else json.loads(raw)


def _like_prefix(prefix: str) -> str:
    """``startswith(prefix, autoescape=True)``: the prefix with ``/``, ``%`` and ``_`` escaped."""
    return prefix.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _chunks(items: Iterable[str]) -> list[list[str]]:
    ordered = sorted(set(items))
    return [ordered[i : i + _CHUNK] for i in range(0, len(ordered), _CHUNK)]


# --- opening ------------------------------------------------------------------------


def _plain_sqlite_path(url: str) -> Path | None:
    """The file of ``sqlite:///path`` when the URL is that and nothing more; else None."""
    if not url.startswith("sqlite:///"):
        return None
    db = url[len("sqlite:///") :]
    if not db or db == ":memory:" or db.startswith(("file:", "~")) or any(c in db for c in "?%#"):
        return None  # ("~": SQLAlchemy's engine does not expand it, so leave it to that path)
    return Path(db).expanduser().absolute()


def _schema_is_head(conn: Conn) -> bool:
    try:
        rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:
        return False
    if len(rows) != 1 or rows[0][0] != _sqlite.HEAD_REVISION:
        return False
    live: dict[str, dict[str, bool]] = {}
    for table, column, required in conn.execute(_sqlite.DRIFT_QUERY):
        live.setdefault(str(table), {})[str(column)] = bool(required)
    for table, columns in _sqlite.TABLE_COLUMNS.items():
        have = live.get(table)
        if have is None or any(c not in have for c in columns):
            return False
        if any(req and name not in columns for name, req in have.items()):
            return False
    return True


def _connect(path: Path, read_only: bool) -> Conn | None:
    busy = _sqlite.SQLITE_BUSY_MS
    if read_only:
        query = "mode=ro"
        wal = path.with_name(path.name + "-wal")
        if not os.access(path.parent, os.W_OK | os.X_OK) and not wal.exists():
            query += "&immutable=1"
        target, uri = f"file:{quote(str(path))}?{query}", True
    else:
        target, uri = str(path), False
    conn = sqlite3.connect(
        target, uri=uri, isolation_level=None, timeout=busy / 1000, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {busy}")
        if read_only:
            conn.execute("PRAGMA query_only = ON")
        else:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.close()  # the full registry switches it, with its retries
                return None
        conn.row_factory = sqlite3.Row
        if not _schema_is_head(conn):
            conn.close()
            return None
    except BaseException:
        conn.close()
        raise
    return conn


def _or_full(method: Callable[..., T]) -> Callable[..., T]:
    """Run ``method``; on an SQLite error the full registry must explain, run it there."""

    @functools.wraps(method)
    def call(self: LiteRegistry, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except _Unsure as exc:
            if STRICT:
                raise RegistryError(f"lite registry: {exc}") from exc.__cause__
            full = getattr(self.full, method.__name__)
            return full(*args, **kwargs)  # type: ignore[no-any-return]

    return call


class LiteRegistry:
    """The registry's hot calls on the embedded SQLite file, without SQLAlchemy.

    Open it with :meth:`open`, which answers None where the full
    :class:`~.api.Registry` must be used. Any method it does not define is the
    full registry's (opened on first use, on the same file): its results,
    errors and rows are the full registry's.
    """

    def __init__(self, url: str | None, path: Path, conn: Conn, reason: str | None) -> None:
        self._url_arg = url
        self._path = path
        self._conn: Conn | None = conn
        self._lock = threading.RLock()
        self._full: Registry | None = None
        #: Why changes are refused (None: this registry takes them), as the full one's.
        self.read_only_reason = reason
        self._opened_read_only = reason == "opened read-only"

    @classmethod
    def open(cls, url: str | None = None, *, read_only: bool = False) -> LiteRegistry | None:
        """The lite registry for ``url`` (None: ``MVAULT_REGISTRY``), or None when the full
        registry must open it (not a plain SQLite file, missing, not at the head schema...)."""
        raw = config.settings().registry_url if url is None else url
        if not isinstance(raw, str):
            return None
        path = _plain_sqlite_path(raw.strip())
        if path is None or not path.is_file():
            return None
        reason = "opened read-only" if read_only else _sqlite.why_not_writable(path)
        try:
            conn = _connect(path, reason is not None)
        except sqlite3.Error:
            return None
        if conn is None:
            return None
        return cls(url, path, conn, reason)

    # --- the rest is the full registry's ------------------------------------------------

    @property
    def full(self) -> Registry:
        """The SQLAlchemy registry on the same file, for every call not made here."""
        if self._full is None:
            from .api import Registry

            # The file this registry opened (a relative URL, or MVAULT_REGISTRY, could
            # name another by now); it was at the head revision, so nothing to upgrade.
            self._full = Registry(
                f"sqlite:///{self._path}", read_only=self._opened_read_only, auto_upgrade=False
            )
        return self._full

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.full, name)

    def __repr__(self) -> str:
        return f"Registry('sqlite:///{self._path}')"

    @property
    def read_only(self) -> bool:
        return self.read_only_reason is not None

    def check_writable(self) -> None:
        if self.read_only_reason is not None:
            raise _sqlite.read_only(self._path, self.read_only_reason)

    def close(self) -> None:
        """Close the connection; a later call is the full registry's (which reconnects)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        if self._full is not None:
            self._full.close()

    def __enter__(self) -> LiteRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transactions -------------------------------------------------------------------

    def _run(self, fn: Callable[[Conn], T], *, write: bool) -> T:
        """One transaction (BEGIN IMMEDIATE for a writer, as the full registry's)."""
        if write:
            self.check_writable()
        with self._lock:
            conn = self._conn
            if conn is None:
                raise _Unsure("the lite connection is closed")
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                out = fn(conn)
                conn.execute("COMMIT")
                return out
            except BaseException as exc:
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    self._drop()
                    raise _Unsure(str(exc)) from exc
                if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
                    # From here on every call is the full registry's: it retries, waits
                    # and explains, and this connection may be in any state.
                    self._drop()
                    raise _Unsure(str(exc)) from exc
                raise

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover - closing a broken connection
                pass

    def _tx(self, fn: Callable[[Conn], T], *, write: bool = False) -> T:
        try:
            return self._run(fn, write=write)
        except sqlite3.IntegrityError as exc:
            # Only reached when a caller did not expect a constraint to fail.
            raise ConflictError(
                f"the registry refused the change: {str(exc).splitlines()[0][:300]}"
            ) from exc

    def _write_with_conflicts(
        self, fn: Callable[[Conn], T], on_conflict: Callable[[], T | None]
    ) -> T:
        """A write; when a unique constraint fails, ``on_conflict`` (in a new transaction)
        says whether the outcome is decided, else it is tried again."""
        self.check_writable()
        for _ in range(_CONFLICT_RETRIES):
            try:
                return self._run(fn, write=True)
            except sqlite3.IntegrityError:
                decided = on_conflict()
                if decided is not None:
                    return decided
        raise RegistryError(
            "the change kept colliding with concurrent writers; try again",
            hint="this is rare: many clients are changing the same model at once",
        )

    @staticmethod
    def _user(user: str | None) -> str:
        return checks.check_user(config.settings().user if user is None else user)

    # --- reads ---------------------------------------------------------------------------

    @_or_full
    def get_model(self, name: str) -> ModelInfo:
        validate_name("model", name)
        return self._tx(lambda c: _model_infos(c, [_find_model(c, name)])[0])

    @_or_full
    def get_version(self, name: str, version: str) -> VersionInfo:
        validate_name("model", name)
        sv = SemVer.parse(version)

        def read(c: Conn) -> VersionInfo:
            model = _find_model(c, name)
            return _version_infos(c, model, [_exact(c, model, sv)])[0]

        return self._tx(read)

    @_or_full
    def resolve(self, ref_or_name: str, spec: str | Spec | None = None) -> VersionInfo:
        if spec is None:
            name, parsed = parse_ref(ref_or_name)
        else:
            name = validate_name("model", ref_or_name)
            parsed = parse_spec(spec) if isinstance(spec, str) else spec
        want: Spec = parsed if parsed is not None else LatestSpec()

        def read(c: Conn) -> VersionInfo:
            model = _find_model(c, name)
            return _version_infos(c, model, [_resolve_row(c, model, want)])[0]

        return self._tx(read)

    @_or_full
    def list_models(
        self,
        prefix: str | None = None,
        label: str | Sequence[str] | None = None,
        alias: str | None = None,
        since: dt.datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[ModelInfo]:
        where: list[str] = []
        params: list[Any] = []
        checked = checks.check_prefix(prefix)
        if checked is not None:
            where.append("m.name LIKE ? ESCAPE '/'")
            params.append(_like_prefix(checked))
        wanted = checks.label_filters(label)
        if wanted:
            sql, extra = _labels_exist("v.id", wanted)
            where.append(f"EXISTS (SELECT v.id FROM versions AS v WHERE v.model_id = m.id{sql})")
            params += extra
        if alias is not None:
            validate_name("alias", alias)
            where.append(
                "EXISTS (SELECT a.id FROM aliases AS a WHERE a.model_id = m.id AND a.name = ?)"
            )
            params.append(alias)
        when = checks.check_since(since)
        if when is not None:
            where.append("m.created_at >= ?")
            params.append(_ts(when))
        limit = checks.check_limit(limit)
        if cursor is not None:
            where.append("m.name > ?")
            params.append(checks.decode_cursor("models", cursor, [str])[0])
        sql = "SELECT * FROM models AS m"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY m.name LIMIT ?"

        def read(c: Conn) -> Page[ModelInfo]:
            rows = c.execute(sql, [*params, limit + 1]).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            nxt = checks.encode_cursor("models", [rows[-1]["name"]]) if more else None
            return Page(_model_infos(c, rows) if rows else [], nxt)

        return self._tx(read)

    @_or_full
    def list_versions(
        self,
        name: str,
        *,
        label: str | Sequence[str] | None = None,
        since: dt.datetime | None = None,
        include_prerelease: bool = True,
        limit: int = 50,
        cursor: str | None = None,
        descending: bool = True,
    ) -> Page[VersionInfo]:
        validate_name("model", name)
        limit = checks.check_limit(limit)
        when = checks.check_since(since)
        wanted = checks.label_filters(label)
        after = (
            checks.decode_cursor("versions", cursor, [int, int, int, str])
            if cursor is not None
            else None
        )

        def read(c: Conn) -> Page[VersionInfo]:
            model = _find_model(c, name)
            sql = f"SELECT {_VCOLS} FROM versions WHERE model_id = ?"
            params: list[Any] = [model["id"]]
            if not include_prerelease:
                sql += " AND is_prerelease = 0"
            if when is not None:
                sql += " AND created_at >= ?"
                params.append(_ts(when))
            extra_sql, extra = _labels_exist("versions.id", wanted)
            sql += extra_sql
            params += extra
            if after is not None:
                op = ">" if descending else "<"
                sql += f" AND (?, ?, ?, ?) {op} (major, minor, patch, prerelease_sort)"
                params += after
            order = _DESC if descending else "major, minor, patch, prerelease_sort"
            rows = c.execute(f"{sql} ORDER BY {order} LIMIT ?", [*params, limit + 1]).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            last = rows[-1] if rows else None
            nxt = (
                checks.encode_cursor(
                    "versions",
                    [last["major"], last["minor"], last["patch"], last["prerelease_sort"]],
                )
                if more and last is not None
                else None
            )
            return Page(_version_infos(c, model, rows), nxt)

        return self._tx(read)

    # --- aliases and labels --------------------------------------------------------------

    @_or_full
    def set_alias(
        self, name: str, alias: str, version: str, *, user: str | None = None
    ) -> AliasInfo:
        validate_name("model", name)
        validate_name("alias", alias)
        sv = SemVer.parse(version)
        who = self._user(user)

        def write(c: Conn) -> AliasInfo:
            model = _find_model(c, name)
            return _point_alias(c, model, alias, _exact(c, model, sv), who)

        return self._write_with_conflicts(write, lambda: None)

    @_or_full
    def remove_alias(self, name: str, alias: str, *, user: str | None = None) -> AliasInfo:
        validate_name("model", name)
        validate_name("alias", alias)
        who = self._user(user)
        return self._tx(lambda c: _remove_alias(c, name, alias, who), write=True)

    @_or_full
    def set_labels(
        self, name: str, version: str, labels: Mapping[str, str], *, user: str | None = None
    ) -> dict[str, str]:
        validate_name("model", name)
        sv = SemVer.parse(version)
        label_map = checks.check_labels(labels)
        who = self._user(user)
        return self._write_with_conflicts(
            lambda c: _set_labels(c, name, sv, label_map, who), lambda: None
        )

    # --- a push: leases, registration ----------------------------------------------------

    @_or_full
    def take_lease(
        self, digests: Sequence[str] | set[str], *, ttl_seconds: float
    ) -> tuple[str, dict[str, dt.datetime]]:
        wanted = sorted({checks.check_digest(d, "blob digest") for d in digests})
        lease_id = os.urandom(16).hex()  # as secrets.token_hex(16)
        ttl = checks.check_seconds(ttl_seconds)

        def write(c: Conn) -> dict[str, dt.datetime]:
            _guard(c)
            expires = _ts(_db_now(c) + ttl)
            rows = [(lease_id, d, expires) for d in wanted]
            c.executemany(
                "INSERT INTO blob_leases (lease_id, blob_digest, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                rows,
            )
            return _pending(c, wanted)

        return lease_id, self._tx(write, write=True)

    @_or_full
    def renew_lease(self, lease_id: str, *, ttl_seconds: float) -> bool:
        ttl = checks.check_seconds(ttl_seconds)

        def write(c: Conn) -> bool:
            _guard(c)
            now = _db_now(c)
            total, alive = c.execute(
                "SELECT count(*), coalesce(sum(expires_at > ?), 0) FROM blob_leases "
                "WHERE lease_id = ?",
                (_ts(now), lease_id),
            ).fetchone()
            if total == 0 or alive < total:
                return False
            c.execute(
                "UPDATE blob_leases SET expires_at = ? WHERE lease_id = ?",
                (_ts(now + ttl), lease_id),
            )
            return True

        return self._tx(write, write=True)

    @_or_full
    def release_lease(self, lease_id: str) -> None:
        self._tx(
            lambda c: c.execute("DELETE FROM blob_leases WHERE lease_id = ?", (lease_id,)),
            write=True,
        )

    @_or_full
    def pending_deletions(self, digests: Sequence[str] | set[str]) -> dict[str, dt.datetime]:
        return self._tx(lambda c: _pending(c, digests))

    @_or_full
    def clear_stale_deletion(self, digest: str) -> bool:
        def write(c: Conn) -> bool:
            c.execute(
                "DELETE FROM blob_deletions WHERE blob_digest = ? AND deadline < ?",
                (digest, _ts(_db_now(c))),
            )
            return not _pending(c, [digest])

        return self._tx(write, write=True)

    @_or_full
    def register_version(
        self,
        name: str,
        version: str,
        variants: Sequence[VariantInput],
        *,
        aliases: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        description: str | None = None,
        user: str | None = None,
        lease: str | None = None,
    ) -> tuple[VersionInfo, bool]:
        sv, checked, alias_names, label_map, description = checks.check_registration(
            name, version, variants, aliases, labels, description
        )
        who = self._user(user)
        wanted = {v.manifest_digest for v in checked}
        blob_digests = {b[0] for v in checked for b in v.blobs}
        self._tx(lambda c: _ensure_model(c, name, None, who), write=True)

        def existing() -> tuple[VersionInfo, bool] | None:
            info = self._tx(lambda c: _existing_version(c, name, sv, wanted))
            if info is None:
                return None
            if any(info.labels.get(k) != v for k, v in label_map.items()):
                self._tx(lambda c: _set_labels(c, name, sv, label_map, who), write=True)
                info = self.get_version(name, info.version)
            return info, False

        def write(c: Conn) -> tuple[VersionInfo, bool]:
            _guard(c)
            model = _find_model(c, name)
            row = _insert_version(c, model, sv, checked, label_map, description, who)
            if lease is not None:
                _hand_over(c, lease, blob_digests)
            for alias in alias_names:
                _point_alias(c, model, alias, row, who)
            return _version_infos(c, model, [row])[0], True

        found = existing()
        if found is not None:
            return found
        return self._write_with_conflicts(write, existing)

    @_or_full
    def add_variant(
        self,
        name: str,
        version: str,
        variant: VariantInput,
        *,
        user: str | None = None,
        lease: str | None = None,
    ) -> VariantInfo:
        validate_name("model", name)
        sv = SemVer.parse(version)
        v = checks.check_variant(variant)
        who = self._user(user)

        def write(c: Conn) -> VariantInfo:
            _guard(c)
            info = _add_variant(c, name, sv, v, who)
            if lease is not None:
                _hand_over(c, lease, {b[0] for b in v.blobs})
            return info

        def conflict() -> VariantInfo | None:
            raise VariantExistsError(f"{name}:{sv} already has variant {v.manifest_digest}")

        return self._write_with_conflicts(write, conflict)


# --- reads (as :mod:`.reads`) -----------------------------------------------------------


def _find_model(c: Conn, name: str) -> Row:
    model: Row | None = c.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
    if model is not None:
        return model
    other = c.execute("SELECT name FROM models WHERE name_key = ?", (name.lower(),)).fetchone()
    if other is not None:
        raise answers.model_not_found(name, other[0], [])
    like = c.execute(
        "SELECT name FROM models WHERE name LIKE ? ESCAPE '/' LIMIT 500", (_like_prefix(name[:1]),)
    )
    raise answers.model_not_found(name, None, [r[0] for r in like])


def _by_semver(c: Conn, model: Row, v: SemVer) -> Row | None:
    row: Row | None = c.execute(
        f"SELECT {_VCOLS} FROM versions WHERE model_id = ? AND major = ? AND minor = ? "
        "AND patch = ? AND prerelease_sort = ?",
        (model["id"], v.major, v.minor, v.patch, v.prerelease_key),
    ).fetchone()
    return row


def _exact(c: Conn, model: Row, sv: SemVer) -> Row:
    row = _by_semver(c, model, sv)
    if row is None:
        raise _not_found(c, model, str(sv))
    return row


def _not_found(c: Conn, model: Row, spec: str) -> VersionNotFoundError:
    have = [
        r[0]
        for r in c.execute(
            f"SELECT version FROM versions WHERE model_id = ? ORDER BY {_DESC} LIMIT 5",
            (model["id"],),
        )
    ]
    return answers.version_not_found(model["name"], spec, have)


def _resolve_row(c: Conn, model: Row, spec: Spec) -> Row:
    mid = model["id"]
    row: Row | None
    if isinstance(spec, ExactSpec):
        row = _by_semver(c, model, spec.version)
    elif isinstance(spec, LatestSpec):
        row = c.execute(
            f"SELECT {_VCOLS} FROM versions WHERE model_id = ? AND prerelease_sort = ? "
            f"ORDER BY {_DESC} LIMIT 1",
            (mid, RELEASE_KEY),
        ).fetchone()
    elif isinstance(spec, AliasSpec):
        row = c.execute(
            f"SELECT {', '.join('v.' + x for x in _VCOLS.split(', '))} FROM versions AS v "
            "JOIN aliases AS a ON a.version_id = v.id WHERE a.model_id = ? AND a.name = ?",
            (mid, spec.alias),
        ).fetchone()
        if row is None:
            known = [
                r[0]
                for r in c.execute(
                    "SELECT name FROM aliases WHERE model_id = ? ORDER BY name", (mid,)
                )
            ]
            raise answers.alias_not_found(model["name"], spec.alias, known)
    elif isinstance(spec, DigestSpec):
        row = c.execute(
            f"SELECT {', '.join('v.' + x for x in _VCOLS.split(', '))} FROM versions AS v "
            "JOIN variants AS x ON x.version_id = v.id "
            "WHERE v.model_id = ? AND x.manifest_digest = ? LIMIT 1",
            (mid, spec.digest),
        ).fetchone()
    elif isinstance(spec, RangeSpec):
        row = _resolve_range(c, model, spec)
    else:  # pragma: no cover - Spec is a closed union
        raise InvalidSpecError(f"unknown spec {spec!r}")
    if row is None:
        raise _not_found(c, model, str(spec))
    return row


def _resolve_range(c: Conn, model: Row, spec: RangeSpec) -> Row | None:
    lo, hi = spec.core_bounds()
    if lo > hi:
        return None
    sql = (
        f"SELECT {_VCOLS} FROM versions WHERE model_id = ? AND major BETWEEN ? AND ? "
        "AND (?, ?, ?) <= (major, minor, patch) AND (?, ?, ?) >= (major, minor, patch)"
    )
    base: list[Any] = [model["id"], lo[0], hi[0], *lo, *hi]
    if not spec.allows_prerelease:
        sql += " AND prerelease_sort = ?"
        base.append(RELEASE_KEY)
    after: list[Any] = []
    while True:
        more = " AND (?, ?, ?, ?) > (major, minor, patch, prerelease_sort)" if after else ""
        rows = c.execute(
            f"{sql}{more} ORDER BY {_DESC} LIMIT {_RANGE_BATCH}", [*base, *after]
        ).fetchall()
        for row in rows:
            if spec.matches(SemVer.parse(row["version"])):
                return row  # type: ignore[no-any-return]
        if len(rows) < _RANGE_BATCH:
            return None
        last = rows[-1]
        after = [last["major"], last["minor"], last["patch"], last["prerelease_sort"]]


def _version_infos(c: Conn, model: Row, rows: Sequence[Row]) -> list[VersionInfo]:
    if not rows:
        return []
    ids = [r["id"] for r in rows]
    variants: dict[int, list[Row]] = defaultdict(list)
    blobs: dict[int, list[BlobRef]] = defaultdict(list)
    seen: set[int] = set()
    for r in c.execute(
        "SELECT x.*, vb.role, b.digest, b.size AS blob_size, b.media_type FROM variants AS x "
        "LEFT OUTER JOIN variant_blobs AS vb ON vb.variant_id = x.id "
        "LEFT OUTER JOIN blobs AS b ON b.digest = vb.blob_digest "
        f"WHERE x.version_id IN ({_marks(len(ids))}) ORDER BY x.id, vb.role, b.digest",
        ids,
    ):
        if r["id"] not in seen:
            seen.add(r["id"])
            variants[r["version_id"]].append(r)
        if r["digest"] is not None:
            blobs[r["id"]].append(BlobRef(r["digest"], r["blob_size"], r["role"], r["media_type"]))
    labels: dict[int, dict[str, str]] = defaultdict(dict)
    aliases: dict[int, list[str]] = defaultdict(list)
    for vid, what, key, value in c.execute(
        f"SELECT version_id, 'label', key, value FROM labels WHERE version_id IN "
        f"({_marks(len(ids))}) UNION ALL SELECT version_id, 'alias', name, '' FROM aliases "
        f"WHERE version_id IN ({_marks(len(ids))})",
        [*ids, *ids],
    ):
        if what == "label":
            labels[vid][key] = value
        else:
            aliases[vid].append(key)
    return [
        VersionInfo(
            model=model["name"],
            version=r["version"],
            major=r["major"],
            minor=r["minor"],
            patch=r["patch"],
            prerelease=r["prerelease"],
            build=r["build"],
            created_at=_dt(r["created_at"]),
            created_by=r["created_by"],
            description=r["description"],
            labels=dict(sorted(labels[r["id"]].items())),
            aliases=sorted(aliases[r["id"]]),
            variants=[
                VariantInfo(
                    manifest_digest=v["manifest_digest"],
                    format=v["format"],
                    kind=v["kind"],
                    requirements=_from_json(v["requirements"]),
                    size=v["size"],
                    created_at=_dt(v["created_at"]),
                    created_by=v["created_by"],
                    blobs=blobs[v["id"]],
                )
                for v in variants[r["id"]]
            ],
        )
        for r in rows
    ]


def _labels_exist(owner: str, wanted: list[tuple[str, str | None]]) -> tuple[str, list[Any]]:
    """`` AND EXISTS(label ...)`` for each filter, on the version ``owner`` names."""
    sql = ""
    params: list[Any] = []
    for key, value in wanted:
        sql += f" AND EXISTS (SELECT l.version_id FROM labels AS l WHERE l.version_id = {owner} AND l.key = ?"
        params.append(key)
        if value is not None:
            sql += " AND l.value = ?"
            params.append(value)
        sql += ")"
    return sql, params


def _model_infos(c: Conn, models: Sequence[Row]) -> list[ModelInfo]:
    ids = [m["id"] for m in models]
    marks = _marks(len(ids))
    counts = dict(
        c.execute(
            f"SELECT model_id, count(*) FROM versions WHERE model_id IN ({marks}) "
            "GROUP BY model_id",
            ids,
        ).fetchall()
    )
    latest: dict[int, str] = {}
    for mid in ids:
        top = c.execute(
            "SELECT version FROM versions WHERE model_id = ? AND prerelease_sort = ? "
            f"ORDER BY {_DESC} LIMIT 1",
            (mid, RELEASE_KEY),
        ).fetchone()
        if top is not None:
            latest[mid] = top[0]
    aliases: dict[int, dict[str, str]] = defaultdict(dict)
    for mid, alias, version in c.execute(
        "SELECT a.model_id, a.name, v.version FROM aliases AS a "
        f"JOIN versions AS v ON v.id = a.version_id WHERE a.model_id IN ({marks}) "
        "ORDER BY a.name",
        ids,
    ):
        aliases[mid][alias] = version
    return [
        ModelInfo(
            name=m["name"],
            description=m["description"],
            created_at=_dt(m["created_at"]),
            created_by=m["created_by"],
            version_count=counts.get(m["id"], 0),
            latest=latest.get(m["id"]),
            aliases=aliases.get(m["id"], {}),
        )
        for m in models
    ]


# --- writes (as :mod:`.writes`, :mod:`.aliases` and :mod:`.blobs`) ------------------------


def _event(
    c: Conn,
    kind: str,
    user: str,
    *,
    model: str | None = None,
    version: str | None = None,
    alias: str | None = None,
    **details: Any,
) -> None:
    c.execute(
        'INSERT INTO events (at, "user", kind, model, version, alias, details) '
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (_ts(checks.utcnow()), user, kind, model, version, alias, _json(details)),
    )


def _ensure_model(c: Conn, name: str, description: str | None, user: str) -> bool:
    cur = c.execute(
        "INSERT INTO models (name, name_key, description, created_at, created_by) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (name, name.lower(), description, _ts(checks.utcnow()), user),
    )
    if cur.rowcount > 0:
        _event(c, "model.create", user, model=name, description=description)
        return True
    have = c.execute("SELECT name FROM models WHERE name_key = ?", (name.lower(),)).fetchone()
    if have is not None and have[0] != name:
        raise ModelExistsError(
            f"model {have[0]!r} already exists and names are unique ignoring case; "
            f"use {have[0]!r}, not {name!r}",
            hint=f"push to {have[0]}:VERSION",
        )
    return False


def _add_variant_rows(
    c: Conn, version_id: int, v: VariantInput, user: str, now: dt.datetime
) -> None:
    blobs: dict[str, tuple[int, str]] = {}
    for digest, size, _role, media in v.blobs:
        blobs.setdefault(digest, (size, media))
    when = _ts(now)
    c.executemany(
        "INSERT INTO blobs (digest, size, media_type, first_seen) VALUES (?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING",
        [(d, s, m, when) for d, (s, m) in sorted(blobs.items())],
    )
    cur = c.execute(
        "INSERT INTO variants (version_id, manifest_digest, format, kind, requirements, size, "
        "created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            version_id,
            v.manifest_digest,
            v.format,
            v.kind,
            None if v.requirements is None else _json(v.requirements),
            v.size,
            when,
            user,
        ),
    )
    refs = sorted({(d, role) for d, _s, role, _m in v.blobs})
    c.executemany(
        "INSERT INTO variant_blobs (variant_id, blob_digest, role) VALUES (?, ?, ?)",
        [(cur.lastrowid, d, r) for d, r in refs],
    )


def _insert_version(
    c: Conn,
    model: Row,
    sv: SemVer,
    variants: Sequence[VariantInput],
    labels: Mapping[str, str],
    description: str | None,
    user: str,
) -> Row:
    now = checks.utcnow()
    cur = c.execute(
        "INSERT INTO versions (model_id, version, major, minor, patch, prerelease, "
        "prerelease_sort, build, is_prerelease, description, created_at, created_by) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            model["id"],
            str(sv),
            sv.major,
            sv.minor,
            sv.patch,
            sv.prerelease_text,
            sv.prerelease_key,
            sv.build_text,
            int(sv.is_prerelease),
            description,
            _ts(now),
            user,
        ),
    )
    vid = cur.lastrowid
    for v in variants:
        _add_variant_rows(c, vid, v, user, now)  # type: ignore[arg-type]
    if labels:
        c.executemany(
            "INSERT INTO labels (version_id, key, value) VALUES (?, ?, ?)",
            [(vid, k, val) for k, val in sorted(labels.items())],
        )
    _event(
        c,
        "version.register",
        user,
        model=model["name"],
        version=str(sv),
        variants=sorted(v.manifest_digest for v in variants),
        labels=dict(labels),
    )
    row: Row = c.execute(f"SELECT {_VCOLS} FROM versions WHERE id = ?", (vid,)).fetchone()
    return row


def _existing_version(c: Conn, name: str, sv: SemVer, wanted: set[str]) -> VersionInfo | None:
    model = _find_model(c, name)
    row = _by_semver(c, model, sv)
    if row is None:
        return None
    info = _version_infos(c, model, [row])[0]
    have = {v.manifest_digest for v in info.variants}
    if wanted <= have:
        return info
    raise VersionExistsError(
        f"{name}:{info.version} already exists with variant(s) {', '.join(sorted(have))}; "
        f"you registered {', '.join(sorted(wanted))}. Versions are immutable",
        hint="register the new content under a new version",
    )


def _add_variant(c: Conn, name: str, sv: SemVer, v: VariantInput, user: str) -> VariantInfo:
    model = _find_model(c, name)
    row = _exact(c, model, sv)
    if c.execute(
        "SELECT id FROM variants WHERE version_id = ? AND manifest_digest = ?",
        (row["id"], v.manifest_digest),
    ).fetchone():
        raise VariantExistsError(f"{name}:{row['version']} already has variant {v.manifest_digest}")
    _add_variant_rows(c, row["id"], v, user, checks.utcnow())
    _event(
        c,
        "variant.add",
        user,
        model=name,
        version=row["version"],
        manifest=v.manifest_digest,
        variant_kind=v.kind,
    )
    info = _version_infos(c, model, [row])[0]
    return next(x for x in info.variants if x.manifest_digest == v.manifest_digest)


def _set_labels(
    c: Conn, name: str, sv: SemVer, labels: Mapping[str, str], user: str
) -> dict[str, str]:
    model = _find_model(c, name)
    row = _exact(c, model, sv)
    if labels:
        keys = list(labels)
        c.execute(
            f"DELETE FROM labels WHERE version_id = ? AND key IN ({_marks(len(keys))})",
            [row["id"], *keys],
        )
        c.executemany(
            "INSERT INTO labels (version_id, key, value) VALUES (?, ?, ?)",
            [(row["id"], k, v) for k, v in sorted(labels.items())],
        )
        _event(c, "label.set", user, model=name, version=row["version"], labels=dict(labels))
    return dict(c.execute("SELECT key, value FROM labels WHERE version_id = ?", (row["id"],)))


def _point_alias(c: Conn, model: Row, alias: str, row: Row, who: str) -> AliasInfo:
    now = checks.utcnow()
    current = c.execute(
        "SELECT * FROM aliases WHERE model_id = ? AND name = ?", (model["id"], alias)
    ).fetchone()
    previous: str | None = None
    if current is None:
        c.execute(
            "INSERT INTO aliases (model_id, name, version_id, updated_at, updated_by) "
            "VALUES (?, ?, ?, ?, ?)",
            (model["id"], alias, row["id"], _ts(now), who),
        )
        action = "set"
    elif current["version_id"] == row["id"]:
        return AliasInfo(
            model["name"], alias, row["version"], _dt(current["updated_at"]), current["updated_by"]
        )
    else:
        previous = c.execute(
            "SELECT version FROM versions WHERE id = ?", (current["version_id"],)
        ).fetchone()[0]
        c.execute(
            "UPDATE aliases SET version_id = ?, updated_at = ?, updated_by = ? WHERE id = ?",
            (row["id"], _ts(now), who, current["id"]),
        )
        action = "move"
    c.execute(
        "INSERT INTO alias_history (model_id, alias, version, previous, action, at, by) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (model["id"], alias, row["version"], previous, action, _ts(now), who),
    )
    _event(
        c,
        f"alias.{action}",
        who,
        model=model["name"],
        version=row["version"],
        alias=alias,
        previous=previous,
    )
    return AliasInfo(model["name"], alias, row["version"], now, who)


def _remove_alias(c: Conn, name: str, alias: str, who: str) -> AliasInfo:
    model = _find_model(c, name)
    found = c.execute(
        "SELECT a.id, v.version FROM aliases AS a JOIN versions AS v ON v.id = a.version_id "
        "WHERE a.model_id = ? AND a.name = ?",
        (model["id"], alias),
    ).fetchone()
    if found is None:
        known = [
            r[0]
            for r in c.execute(
                "SELECT name FROM aliases WHERE model_id = ? ORDER BY name", (model["id"],)
            )
        ]
        raise answers.alias_not_found(name, alias, known)
    alias_id, version_text = found
    c.execute("DELETE FROM aliases WHERE id = ?", (alias_id,))
    now = checks.utcnow()
    c.execute(
        "INSERT INTO alias_history (model_id, alias, version, previous, action, at, by) "
        "VALUES (?, ?, NULL, ?, 'remove', ?, ?)",
        (model["id"], alias, version_text, _ts(now), who),
    )
    _event(c, "alias.remove", who, model=name, version=version_text, alias=alias)
    return AliasInfo(name, alias, version_text, now, who)


def _db_now(c: Conn) -> dt.datetime:
    raw = c.execute("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')").fetchone()[0]
    return dt.datetime.fromisoformat(str(raw)).replace(tzinfo=_UTC)


def _guard(c: Conn) -> None:
    """The ``blobs`` lock row must exist (SQLite's one write lock does the locking)."""
    if c.execute("SELECT name FROM registry_locks WHERE name = ?", (_LOCK_NAME,)).fetchone():
        return
    c.execute("INSERT INTO registry_locks (name) VALUES (?) ON CONFLICT DO NOTHING", (_LOCK_NAME,))


def _pending(c: Conn, digests: Iterable[str]) -> dict[str, dt.datetime]:
    found: dict[str, dt.datetime] = {}
    for chunk in _chunks(digests):
        for digest, deadline in c.execute(
            "SELECT blob_digest, deadline FROM blob_deletions "
            f"WHERE blob_digest IN ({_marks(len(chunk))})",
            chunk,
        ):
            found[digest] = _dt(deadline)
    return found


def _hand_over(c: Conn, lease_id: str, digests: Iterable[str]) -> None:
    now = _ts(_db_now(c))
    wanted = set(digests)
    alive: set[str] = set()
    for chunk in _chunks(wanted):
        alive.update(
            r[0]
            for r in c.execute(
                "SELECT blob_digest FROM blob_leases WHERE lease_id = ? AND "
                f"blob_digest IN ({_marks(len(chunk))}) AND expires_at > ?",
                [lease_id, *chunk, now],
            )
        )
    lapsed = sorted(wanted - alive)
    if lapsed:
        raise answers.lease_lapsed(lapsed)
    c.execute("DELETE FROM blob_leases WHERE lease_id = ?", (lease_id,))
