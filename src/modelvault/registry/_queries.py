"""Queries and input checks shared by :class:`modelvault.registry.api.Registry`."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, and_, delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..errors import (
    InvalidArgumentError,
)
from .results import VariantInput
from .schema import Alias, Blob, Event, Label, Model, Variant, VariantBlob, Version
from .semver import RELEASE_KEY
from .specs import (
    validate_label,
    validate_name,
)

_DIGEST_RE = re.compile(r"^[a-z][a-z0-9_+.-]{0,31}:[0-9a-f]{32,128}$")
_WORD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+/-]{0,63}$")
_MEDIA_RE = re.compile(r"^[\x21-\x7e]{1,128}$")
MAX_DESCRIPTION = 10_000
MAX_REQUIREMENTS = 64 * 1024
MAX_BLOBS = 100_000
MAX_PAGE = 1000
# Range candidates are fetched in slices of this many rows, highest first.
_RANGE_BATCH = 64


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# --- input checks ------------------------------------------------------------


def check_digest(value: object, what: str) -> str:
    if not isinstance(value, str) or not _DIGEST_RE.fullmatch(value):
        raise InvalidArgumentError(
            f"{what} {value!r:.100} is not a digest; expected '<algorithm>:<lowercase hex>'"
        )
    return value


def check_word(value: object, what: str) -> str:
    if not isinstance(value, str) or not _WORD_RE.fullmatch(value):
        raise InvalidArgumentError(
            f"{what} {value!r:.100} must be 1-64 letters, digits or '._+/-', starting with a letter or digit"
        )
    return value


def check_size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise InvalidArgumentError(f"{what} {value!r:.60} must be a whole number of bytes >= 0")
    return value


def check_description(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise InvalidArgumentError(
            f"description must be a string of at most {MAX_DESCRIPTION} characters"
        )
    if "\x00" in value:
        raise InvalidArgumentError("description contains a NUL character")
    return value


def check_user(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 128 or not value.isprintable():
        raise InvalidArgumentError(f"user {value!r:.60} must be 1-128 printable characters")
    return value


def check_limit(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PAGE:
        raise InvalidArgumentError(
            f"limit {value!r:.40} must be a whole number from 1 to {MAX_PAGE}"
        )
    return value


def check_since(value: object) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        raise InvalidArgumentError(f"since must be a datetime, got {type(value).__name__}")
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def check_labels(labels: object) -> dict[str, str]:
    if not isinstance(labels, Mapping):
        raise InvalidArgumentError(
            f"labels must be a mapping of str to str, got {type(labels).__name__}"
        )
    if len(labels) > 256:
        raise InvalidArgumentError("at most 256 labels per version")
    return dict(validate_label(k, v) for k, v in labels.items())


def check_label_filter(label: object) -> tuple[str, str | None]:
    """``"key"`` (has the label) or ``"key=value"``."""
    if not isinstance(label, str):
        raise InvalidArgumentError(f"label filter must be 'key' or 'key=value', got {label!r:.60}")
    key, sep, value = label.partition("=")
    validate_label(key, value)
    return key, (value if sep else None)


def check_variant(v: object) -> VariantInput:
    """Validate one variant completely, before anything is written."""
    if not isinstance(v, VariantInput):
        raise InvalidArgumentError(f"a variant must be a VariantInput, got {type(v).__name__}")
    check_digest(v.manifest_digest, "manifest digest")
    check_word(v.format, "variant format")
    check_word(v.kind, "variant kind")
    check_size(v.size, "variant size")
    if not isinstance(v.requirements, dict):
        raise InvalidArgumentError("variant requirements must be a dict")
    try:
        encoded = json.dumps(v.requirements, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(
            f"variant requirements are not JSON-serializable: {exc}"
        ) from None
    if len(encoded) > MAX_REQUIREMENTS:
        raise InvalidArgumentError(f"variant requirements exceed {MAX_REQUIREMENTS} bytes as JSON")
    if not isinstance(v.blobs, (list, tuple)) or len(v.blobs) > MAX_BLOBS:
        raise InvalidArgumentError(f"variant blobs must be a list of at most {MAX_BLOBS} tuples")
    has_manifest = False
    for b in v.blobs:
        if not isinstance(b, (list, tuple)) or len(b) != 4:
            raise InvalidArgumentError(
                f"a variant blob must be (digest, size, role, media_type), got {b!r:.100}"
            )
        digest, size, role, media = b
        check_digest(digest, "blob digest")
        check_size(size, "blob size")
        check_word(role, "blob role")
        if not isinstance(media, str) or not _MEDIA_RE.fullmatch(media):
            raise InvalidArgumentError(
                f"blob media type {media!r:.100} must be 1-128 printable ASCII characters"
            )
        has_manifest |= digest == v.manifest_digest and role == "manifest"
    if not has_manifest:
        raise InvalidArgumentError(
            f"variant {v.manifest_digest}: its blobs must include the manifest itself with role "
            "'manifest', or garbage collection could remove it"
        )
    return v


# --- writes ------------------------------------------------------------------


def insert_ignore(
    session: Session, table: Table, rows: list[dict[str, Any]], keys: list[str]
) -> int:
    """INSERT rows, skipping those whose key already exists.

    Returns how many were inserted; exact for a single row only.
    """
    if not rows:
        return 0
    name = session.get_bind().dialect.name
    if name == "postgresql":
        stmt: Any = postgresql.insert(table).on_conflict_do_nothing(index_elements=keys)
        stmt = stmt.returning(*[table.c[k] for k in keys])
    elif name == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=keys)
    else:
        stmt = insert(table).prefix_with("IGNORE")
    # One row goes through execute(), not executemany(): only then is rowcount reliable.
    result = session.connection().execute(stmt, rows[0] if len(rows) == 1 else rows)
    if result.returns_rows:  # PostgreSQL: rowcount is -1 here; count the RETURNING rows
        return len(result.fetchall())
    return max(int(result.rowcount or 0), 0)


def add_variant_rows(
    session: Session, version_id: int, v: VariantInput, user: str, now: dt.datetime
) -> None:
    """Blobs (shared, inserted once), the variant and its blob references."""
    blobs: dict[str, tuple[int, str]] = {}
    for digest, size, _role, media in v.blobs:
        blobs.setdefault(digest, (size, media))
    # Sorted, so concurrent writers lock shared blob keys in the same order (no deadlock).
    rows = [
        {"digest": d, "size": s, "media_type": m, "first_seen": now}
        for d, (s, m) in sorted(blobs.items())
    ]
    insert_ignore(session, Blob.__table__, rows, ["digest"])  # type: ignore[arg-type]
    variant = Variant(
        version_id=version_id,
        manifest_digest=v.manifest_digest,
        format=v.format,
        kind=v.kind,
        requirements=v.requirements,
        size=v.size,
        created_at=now,
        created_by=user,
    )
    session.add(variant)
    session.flush()
    refs = sorted({(d, role) for d, _s, role, _m in v.blobs})
    session.execute(
        insert(VariantBlob),
        [{"variant_id": variant.id, "blob_digest": d, "role": r} for d, r in refs],
    )


def add_event(
    session: Session,
    kind: str,
    user: str,
    *,
    model: str | None = None,
    version: str | None = None,
    alias: str | None = None,
    **details: Any,
) -> None:
    session.add(
        Event(
            at=utcnow(),
            user=user,
            kind=kind,
            model=model,
            version=version,
            alias=alias,
            details=details,
        )
    )


def delete_labels(session: Session, version_id: int, keys: Sequence[str]) -> None:
    session.execute(delete(Label).where(Label.version_id == version_id, Label.key.in_(keys)))


# --- reads (the hot path lives in _reads) --------------------------------------

from ._reads import (  # noqa: E402
    DESC_ORDER,
    find_model,
    highest_versions,
    not_found,
    resolve_row,
    version_by_semver,
    version_infos,
)

__all__ = [
    "DESC_ORDER",
    "find_model",
    "highest_versions",
    "not_found",
    "resolve_row",
    "version_by_semver",
    "version_infos",
]


def label_exists(owner_id: Any, key: str, value: str | None) -> Any:
    """EXISTS(label on the version ``owner_id``) for a label filter."""
    cond = and_(Label.version_id == owner_id, Label.key == key)
    if value is not None:
        cond = and_(cond, Label.value == value)
    return select(Label.version_id).where(cond).exists()


# --- cursors -------------------------------------------------------------------


def encode_cursor(kind: str, values: list[Any]) -> str:
    raw = json.dumps([kind, *values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: object, types: Sequence[type]) -> list[Any]:
    """Decode an opaque cursor from :func:`encode_cursor`; anything else is refused."""
    bad = InvalidArgumentError(f"cursor {cursor!r:.60} is not a cursor this listing returned")
    if not isinstance(cursor, str) or len(cursor) > 1024:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        raise bad from None
    if not isinstance(data, list) or len(data) != len(types) + 1 or data[0] != kind:
        raise bad
    values = data[1:]
    for val, typ in zip(values, types):
        if not isinstance(val, typ) or isinstance(val, bool):
            raise bad
        if isinstance(val, int) and not 0 <= val < 2**63:
            raise bad
        if isinstance(val, str) and len(val) > 256:
            raise bad
    return values


def model_name_filter(prefix: str | None) -> Any:
    if prefix is None:
        return None
    if not isinstance(prefix, str) or len(prefix) > 128 or not prefix.isprintable():
        raise InvalidArgumentError(
            f"name prefix {prefix!r:.60} must be at most 128 printable characters"
        )
    return Model.name.startswith(prefix, autoescape=True)


def alias_filter(alias: str | None) -> Any:
    if alias is None:
        return None
    validate_name("alias", alias)
    return select(Alias.id).where(Alias.model_id == Model.id, Alias.name == alias).exists()


def models_label_filter(label: str | None) -> Any:
    if label is None:
        return None
    key, value = check_label_filter(label)
    cond = and_(Label.version_id == Version.id, Version.model_id == Model.id, Label.key == key)
    if value is not None:
        cond = and_(cond, Label.value == value)
    return (
        select(Label.version_id).join(Version, Version.id == Label.version_id).where(cond).exists()
    )


def model_summaries(
    session: Session, models: Sequence[Model]
) -> tuple[dict[int, int], dict[int, str], dict[int, dict[str, str]]]:
    """Version counts, highest releases and aliases for a page of models."""
    ids = [m.id for m in models]
    counts: dict[int, int] = {  # noqa: C416  (dict() would read the Result as a mapping)
        mid: n
        for mid, n in session.execute(
            select(Version.model_id, func.count())
            .where(Version.model_id.in_(ids))
            .group_by(Version.model_id)
        )
    }
    latest: dict[int, str] = {}
    for mid in ids:
        top = session.scalars(
            select(Version.version)
            .where(Version.model_id == mid, Version.prerelease_sort == RELEASE_KEY)
            .order_by(*DESC_ORDER)
            .limit(1)
        ).first()
        if top is not None:
            latest[mid] = top
    aliases: dict[int, dict[str, str]] = defaultdict(dict)
    for mid, alias, version in session.execute(
        select(Alias.model_id, Alias.name, Version.version)
        .join(Version, Version.id == Alias.version_id)
        .where(Alias.model_id.in_(ids))
        .order_by(Alias.name)
    ):
        aliases[mid][alias] = version
    return counts, latest, aliases
