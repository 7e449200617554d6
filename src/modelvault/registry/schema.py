"""The registry schema: SQLAlchemy 2 typed ORM models.

Changes to this file need a new Alembic revision in ``modelvault/migrations``;
a test compares the two on every supported database.

Portability notes, each the reason for a choice below:

* Every table is created with ``utf8mb4_bin`` on MySQL/MariaDB: the default
  collation there is case-insensitive. String equality is then exact on every
  database, and the one case-insensitive rule (model names are unique ignoring
  case) is a column of its own, ``models.name_key``, the name lower-cased in
  Python: no collation decides it, so the three databases agree.
* JSON goes into TEXT through :class:`JSONText` (MariaDB's JSON is LONGTEXT
  with a CHECK, which reflects differently on each server).
* Timestamps are stored as UTC; MySQL gets microsecond precision.
* Version identity is ``(model_id, major, minor, patch, prerelease_sort)``:
  the sort key is a hex encoding of the pre-release, so uniqueness does not
  depend on a collation, and build metadata is not part of it.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = [
    "Alias",
    "AliasHistory",
    "Base",
    "Blob",
    "BlobDeletion",
    "BlobLease",
    "Event",
    "JSONText",
    "Label",
    "Model",
    "RegistryLock",
    "UTCDateTime",
    "Variant",
    "VariantBlob",
    "Version",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
#: Table options for MySQL/MariaDB (see the module docstring).
MYSQL_TABLE_ARGS = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}

NAME_LEN = 128
DIGEST_LEN = 200


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every database (naive columns read back as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        value = value.astimezone(dt.timezone.utc)
        # MySQL and SQLite columns are naive: store UTC wall time.
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


class JSONText(TypeDecorator[Any]):
    """A JSON value stored as TEXT, serialized with sorted keys."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else json.loads(value)


def _name_key(context: Any) -> str:
    """The default of ``models.name_key``: the name lower-cased."""
    return str(context.get_current_parameters()["name"]).lower()


class Base(DeclarativeBase):
    """Declarative base with the constraint naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Model(Base):
    """A named model; versions hang off it."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name"), UniqueConstraint("name_key"), MYSQL_TABLE_ARGS)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    #: ``name.lower()`` (names are ASCII): ``base``, ``Base`` and ``BASE`` are one model.
    name_key: Mapped[str] = mapped_column(String(NAME_LEN), default=_name_key)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    created_by: Mapped[str] = mapped_column(String(NAME_LEN))


class Version(Base):
    """One immutable semantic version of a model."""

    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("model_id", "major", "minor", "patch", "prerelease_sort"),
        Index(None, "model_id", "created_at"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(200))
    major: Mapped[int] = mapped_column(BigInteger)
    minor: Mapped[int] = mapped_column(BigInteger)
    patch: Mapped[int] = mapped_column(BigInteger)
    prerelease: Mapped[str] = mapped_column(String(80))
    prerelease_sort: Mapped[str] = mapped_column(String(DIGEST_LEN))
    build: Mapped[str] = mapped_column(String(80))
    is_prerelease: Mapped[bool] = mapped_column(Boolean)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(NAME_LEN))


class Variant(Base):
    """One manifest of a version: a portable export, a TensorRT engine, ..."""

    __tablename__ = "variants"
    __table_args__ = (UniqueConstraint("version_id", "manifest_digest"), MYSQL_TABLE_ARGS)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    manifest_digest: Mapped[str] = mapped_column(String(DIGEST_LEN), index=True)
    format: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64))
    requirements: Mapped[Any] = mapped_column(JSONText())
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(NAME_LEN))


class Blob(Base):
    """A content-addressed blob some variant refers to (or once did)."""

    __tablename__ = "blobs"
    __table_args__ = (MYSQL_TABLE_ARGS,)

    digest: Mapped[str] = mapped_column(String(DIGEST_LEN), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(NAME_LEN))
    first_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class VariantBlob(Base):
    """A reference from a variant to a blob, with the blob's role (``manifest``, ``weights``...)."""

    __tablename__ = "variant_blobs"
    __table_args__ = (MYSQL_TABLE_ARGS,)

    variant_id: Mapped[int] = mapped_column(
        ForeignKey("variants.id", ondelete="CASCADE"), primary_key=True
    )
    blob_digest: Mapped[str] = mapped_column(
        ForeignKey("blobs.digest"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(64), primary_key=True)


class Alias(Base):
    """A movable name (``prod``) pointing at one version of a model."""

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("model_id", "name"), MYSQL_TABLE_ARGS)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"), index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_by: Mapped[str] = mapped_column(String(NAME_LEN))


class AliasHistory(Base):
    """Every set, move and removal of an alias; survives the version it pointed at."""

    __tablename__ = "alias_history"
    __table_args__ = (Index(None, "model_id", "alias", "id"), MYSQL_TABLE_ARGS)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(64))
    version: Mapped[str | None] = mapped_column(String(200))
    previous: Mapped[str | None] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(16))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    by: Mapped[str] = mapped_column(String(NAME_LEN))


class Label(Base):
    """A key/value label on a version; searchable by key and by key=value."""

    __tablename__ = "labels"
    __table_args__ = (Index(None, "key", "value"), MYSQL_TABLE_ARGS)

    version_id: Mapped[int] = mapped_column(
        ForeignKey("versions.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Event(Base):
    """One change to the registry: who, when, what. Names are copied, not referenced."""

    __tablename__ = "events"
    __table_args__ = (Index(None, "model", "id"), MYSQL_TABLE_ARGS)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    user: Mapped[str] = mapped_column(String(NAME_LEN))
    kind: Mapped[str] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(NAME_LEN))
    version: Mapped[str | None] = mapped_column(String(200))
    alias: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[Any] = mapped_column(JSONText())


class BlobLease(Base):
    """A push in flight holds each blob it will reference; ``gc`` does not delete a held blob.

    Written before the push looks in the store, removed in the transaction that
    registers the version (or when the push fails); a crashed push's lease
    expires. No foreign key: the blob may have no ``blobs`` row yet.
    """

    __tablename__ = "blob_leases"
    __table_args__ = (Index(None, "blob_digest", "expires_at"), MYSQL_TABLE_ARGS)

    lease_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    blob_digest: Mapped[str] = mapped_column(String(DIGEST_LEN), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class BlobDeletion(Base):
    """``gc`` has decided to delete this blob from the store and may be doing so now.

    A push that meets one waits until it is gone (or past ``deadline``, when
    the ``gc`` that wrote it has stopped deleting) before it trusts the store.
    """

    __tablename__ = "blob_deletions"
    __table_args__ = (MYSQL_TABLE_ARGS,)

    blob_digest: Mapped[str] = mapped_column(String(DIGEST_LEN), primary_key=True)
    gc_id: Mapped[str] = mapped_column(String(64), index=True)
    decided_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    deadline: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class RegistryLock(Base):
    """Rows locked to order writers that must not interleave.

    ``gc`` locks the ``blobs`` row exclusively while it decides deletions;
    pushes lock it shared while they take or hand over leases.
    """

    __tablename__ = "registry_locks"
    __table_args__ = (MYSQL_TABLE_ARGS,)

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
