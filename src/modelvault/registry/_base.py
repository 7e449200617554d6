"""Shared plumbing of :class:`modelvault.registry.Registry`: engine, transactions, users."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from .. import config
from ..errors import (
    ConflictError,
    RegistryError,
)
from . import _queries as q
from . import db
from .semver import SemVer

__all__ = ["RegistryBase"]

T = TypeVar("T")
_R = TypeVar("_R", bound="RegistryBase")
# A unique-constraint race is re-run this many times before giving up.
_CONFLICT_RETRIES = 5


class RegistryBase:
    """Engine, transactions and the schema check; see :class:`Registry` for the API."""

    def __init__(self, url: str | None = None, *, auto_upgrade: bool | None = None) -> None:
        """Open the registry at ``url`` and check (or upgrade) its schema; see :class:`Registry`."""
        settings = config.settings()
        raw = settings.registry_url if url is None else url
        self.url = db.normalize_url(raw)
        if auto_upgrade is None:
            auto_upgrade = (
                url is None and settings.is_embedded_registry
            ) or db.sqlite_path_missing(self.url)
        self.engine = db.connect(self.url)
        db.check_schema(self.engine, auto_upgrade=auto_upgrade)

    def __repr__(self) -> str:
        return f"Registry({db.describe_url(self.url)!r})"

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing -----------------------------------------------------------

    def _tx(self, fn: Callable[[Session], T], *, write: bool = True) -> T:
        try:
            return db.run_transaction(self.engine, fn, write=write)
        except sa_exc.IntegrityError as exc:
            # Only reached when a caller did not expect a constraint to fail.
            raise ConflictError(
                f"the registry refused the change: {str(exc.orig).splitlines()[0][:300]}"
            ) from exc

    def _write_with_conflicts(
        self, fn: Callable[[Session], T], on_conflict: Callable[[], T | None]
    ) -> T:
        """Run a write; when a unique constraint fails, ask ``on_conflict`` (in a new
        transaction) whether the outcome is already decided, else try again."""
        for _ in range(_CONFLICT_RETRIES):
            try:
                return db.run_transaction(self.engine, fn)
            except sa_exc.IntegrityError:
                decided = on_conflict()
                if decided is not None:
                    return decided
        raise RegistryError(
            "the change kept colliding with concurrent writers; try again",
            hint="this is rare: many clients are changing the same model at once",
        )

    @staticmethod
    def _user(user: str | None) -> str:
        return q.check_user(config.settings().user if user is None else user)

    @staticmethod
    def _exact(s: Session, model: Any, sv: SemVer) -> Any:
        """The version row (a Row with the ``versions`` columns) or VersionNotFoundError."""
        row = q.version_by_semver(s, model, sv)
        if row is None:
            raise q.not_found(s, model, str(sv))
        return row
