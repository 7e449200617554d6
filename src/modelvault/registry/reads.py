"""Reads of the registry: lookups, resolution, listings, filters and cursors.

The hot path is prebuilt Core statements returning rows instead of ORM objects.

``resolve`` runs on every model load, so its statements are built once at
import (only bind values change per call, and SQLAlchemy's compiled cache
hits every time) and return plain rows: no ORM identity map, no per-call
expression building. A resolve is four round trips: the model, the version,
its variants with their blobs, its labels with the aliases pointing at it.

Functions here accept a model or version as either a Row or an ORM object:
they only read attributes (``id``, ``name``, ``version``...).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, bindparam, func, literal, select, tuple_, union_all
from sqlalchemy.orm import Session

from ..errors import (
    InvalidSpecError,
    VersionNotFoundError,
)
from . import answers, checks
from .checks import check_prefix
from .results import BlobRef, EventInfo, ModelInfo, Page, VariantInfo, VersionInfo
from .schema import Alias, Blob, Event, Label, Model, Variant, VariantBlob, Version
from .semver import RELEASE_KEY, SemVer
from .specs import AliasSpec, DigestSpec, ExactSpec, LatestSpec, RangeSpec, Spec, validate_name

__all__ = [
    "DESC_ORDER",
    "events",
    "exact",
    "find_model",
    "highest_versions",
    "list_models",
    "list_versions",
    "model_infos",
    "not_found",
    "resolve_row",
    "version_by_semver",
    "version_infos",
]

#: A model or version: a Row from the statements below, or an ORM object.
Record = Any

# Range candidates are fetched in slices of this many rows, highest first.
_RANGE_BATCH = 64
DESC_ORDER = (
    Version.major.desc(),
    Version.minor.desc(),
    Version.patch.desc(),
    Version.prerelease_sort.desc(),
)
_SORT = tuple_(Version.major, Version.minor, Version.patch, Version.prerelease_sort)
_CORE = tuple_(Version.major, Version.minor, Version.patch)
_MID: Any = bindparam("mid")

_FIND_MODEL = select(*Model.__table__.c).where(Model.name == bindparam("name"))
_VERSIONS = select(*Version.__table__.c)
_BY_SEMVER = _VERSIONS.where(
    Version.model_id == _MID,
    Version.major == bindparam("major"),
    Version.minor == bindparam("minor"),
    Version.patch == bindparam("patch"),
    Version.prerelease_sort == bindparam("pre"),
)
_LATEST = (
    _VERSIONS.where(Version.model_id == _MID, Version.prerelease_sort == RELEASE_KEY)
    .order_by(*DESC_ORDER)
    .limit(1)
)
_BY_ALIAS = _VERSIONS.join(Alias, Alias.version_id == Version.id).where(
    Alias.model_id == _MID, Alias.name == bindparam("alias")
)
_BY_DIGEST = (
    _VERSIONS.join(Variant, Variant.version_id == Version.id)
    .where(Version.model_id == _MID, Variant.manifest_digest == bindparam("digest"))
    .limit(1)
)
_IN_RANGE = _VERSIONS.where(
    Version.model_id == _MID,
    Version.major.between(bindparam("lo0"), bindparam("hi0")),
    tuple_(bindparam("lo0"), bindparam("lo1"), bindparam("lo2")) <= _CORE,
    tuple_(bindparam("hi0"), bindparam("hi1"), bindparam("hi2")) >= _CORE,
)
_RANGE = {
    True: _IN_RANGE.order_by(*DESC_ORDER).limit(_RANGE_BATCH),
    False: _IN_RANGE.where(Version.prerelease_sort == RELEASE_KEY)
    .order_by(*DESC_ORDER)
    .limit(_RANGE_BATCH),
}
_AFTER = tuple_(bindparam("a0"), bindparam("a1"), bindparam("a2"), bindparam("a3")) > _SORT
_RANGE_AFTER = {
    True: _IN_RANGE.where(_AFTER).order_by(*DESC_ORDER).limit(_RANGE_BATCH),
    False: _IN_RANGE.where(_AFTER, Version.prerelease_sort == RELEASE_KEY)
    .order_by(*DESC_ORDER)
    .limit(_RANGE_BATCH),
}
_HIGHEST = (
    select(Version.version)
    .where(Version.model_id == _MID)
    .order_by(*DESC_ORDER)
    .limit(bindparam("n"))
)
_ALIAS_NAMES = select(Alias.name).where(Alias.model_id == _MID).order_by(Alias.name)
_VARIANTS = (
    select(
        *Variant.__table__.c,
        VariantBlob.role,
        Blob.digest,
        Blob.size.label("blob_size"),
        Blob.media_type,
    )
    .select_from(Variant)
    .outerjoin(VariantBlob, VariantBlob.variant_id == Variant.id)
    .outerjoin(Blob, Blob.digest == VariantBlob.blob_digest)
    .where(Variant.version_id.in_(bindparam("ids", expanding=True)))
    .order_by(Variant.id, VariantBlob.role, Blob.digest)
)
_TAGS = union_all(
    select(Label.version_id, literal("label").label("what"), Label.key, Label.value).where(
        Label.version_id.in_(bindparam("ids", expanding=True))
    ),
    select(Alias.version_id, literal("alias").label("what"), Alias.name, literal("")).where(
        Alias.version_id.in_(bindparam("ids2", expanding=True))
    ),
)


def find_model(session: Session, name: str) -> Record:
    """The model row, or ModelNotFoundError suggesting close names."""
    conn = session.connection()
    model = conn.execute(_FIND_MODEL, {"name": name}).first()
    if model is not None:
        return model
    other = session.scalars(select(Model.name).where(Model.name_key == name.lower())).first()
    like: list[str] = []
    if other is None:
        like = list(
            session.scalars(
                select(Model.name)
                .where(Model.name.startswith(name[:1], autoescape=True))
                .limit(500)
            )
        )
    raise answers.model_not_found(name, other, like)


def highest_versions(session: Session, model: Record, n: int = 5) -> list[str]:
    return list(session.connection().execute(_HIGHEST, {"mid": model.id, "n": n}).scalars())


def version_by_semver(session: Session, model: Record, v: SemVer) -> Record | None:
    params = {
        "mid": model.id,
        "major": v.major,
        "minor": v.minor,
        "patch": v.patch,
        "pre": v.prerelease_key,
    }
    return session.connection().execute(_BY_SEMVER, params).first()


def exact(session: Session, model: Record, sv: SemVer) -> Record:
    """The version row with exactly this semver (build metadata ignored), or VersionNotFoundError."""
    row = version_by_semver(session, model, sv)
    if row is None:
        raise not_found(session, model, str(sv))
    return row


def not_found(session: Session, model: Record, spec: str) -> VersionNotFoundError:
    return answers.version_not_found(model.name, spec, highest_versions(session, model))


def resolve_row(session: Session, model: Record, spec: Spec) -> Record:
    """Find the version a spec names: bounded, indexed SQL first, the exact test in Python."""
    conn = session.connection()
    if isinstance(spec, ExactSpec):
        row = version_by_semver(session, model, spec.version)
    elif isinstance(spec, LatestSpec):
        row = conn.execute(_LATEST, {"mid": model.id}).first()
    elif isinstance(spec, AliasSpec):
        row = conn.execute(_BY_ALIAS, {"mid": model.id, "alias": spec.alias}).first()
        if row is None:
            known = list(conn.execute(_ALIAS_NAMES, {"mid": model.id}).scalars())
            raise answers.alias_not_found(model.name, spec.alias, known)
    elif isinstance(spec, DigestSpec):
        row = conn.execute(_BY_DIGEST, {"mid": model.id, "digest": spec.digest}).first()
    elif isinstance(spec, RangeSpec):
        row = _resolve_range(session, model, spec)
    else:  # pragma: no cover - Spec is a closed union
        raise InvalidSpecError(f"unknown spec {spec!r}")
    if row is None:
        raise not_found(session, model, str(spec))
    return row


def _resolve_range(session: Session, model: Record, spec: RangeSpec) -> Record | None:
    lo, hi = spec.core_bounds()
    if lo > hi:
        return None
    conn = session.connection()
    params: dict[str, Any] = {
        "mid": model.id,
        "lo0": lo[0],
        "lo1": lo[1],
        "lo2": lo[2],
        "hi0": hi[0],
        "hi1": hi[1],
        "hi2": hi[2],
    }
    pre = spec.allows_prerelease
    stmt = _RANGE[pre]
    while True:
        rows = conn.execute(stmt, params).all()
        for row in rows:
            if spec.matches(SemVer.parse(row.version)):
                return row
        if len(rows) < _RANGE_BATCH:
            return None
        last = rows[-1]
        params.update(a0=last.major, a1=last.minor, a2=last.patch, a3=last.prerelease_sort)
        stmt = _RANGE_AFTER[pre]


def version_infos(session: Session, model: Record, rows: Sequence[Record]) -> list[VersionInfo]:
    """Variants with their blobs, labels and aliases for many versions, in two queries."""
    if not rows:
        return []
    conn = session.connection()
    ids = [r.id for r in rows]
    variants: dict[int, list[Any]] = defaultdict(list)
    blobs: dict[int, list[BlobRef]] = defaultdict(list)
    seen: set[int] = set()
    for r in conn.execute(_VARIANTS, {"ids": ids}):
        if r.id not in seen:
            seen.add(r.id)
            variants[r.version_id].append(r)
        if r.digest is not None:
            blobs[r.id].append(BlobRef(r.digest, r.blob_size, r.role, r.media_type))
    labels: dict[int, dict[str, str]] = defaultdict(dict)
    aliases: dict[int, list[str]] = defaultdict(list)
    for vid, what, key, value in conn.execute(_TAGS, {"ids": ids, "ids2": ids}):
        if what == "label":
            labels[vid][key] = value
        else:
            aliases[vid].append(key)
    return [
        VersionInfo(
            model=model.name,
            version=r.version,
            major=r.major,
            minor=r.minor,
            patch=r.patch,
            prerelease=r.prerelease,
            build=r.build,
            created_at=r.created_at,
            created_by=r.created_by,
            description=r.description,
            labels=dict(sorted(labels[r.id].items())),
            aliases=sorted(aliases[r.id]),
            variants=[
                VariantInfo(
                    manifest_digest=v.manifest_digest,
                    format=v.format,
                    kind=v.kind,
                    requirements=v.requirements,
                    size=v.size,
                    created_at=v.created_at,
                    created_by=v.created_by,
                    blobs=blobs[v.id],
                )
                for v in variants[r.id]
            ],
        )
        for r in rows
    ]


# --- listings ------------------------------------------------------------------


def label_exists(owner_id: Any, key: str, value: str | None) -> Any:
    """EXISTS(label on the version ``owner_id``) for a label filter."""
    cond = and_(Label.version_id == owner_id, Label.key == key)
    if value is not None:
        cond = and_(cond, Label.value == value)
    return select(Label.version_id).where(cond).exists()


def model_name_filter(prefix: str | None) -> Any:
    checked = check_prefix(prefix)
    if checked is None:
        return None
    return Model.name.startswith(checked, autoescape=True)


def alias_filter(alias: str | None) -> Any:
    if alias is None:
        return None
    validate_name("alias", alias)
    return select(Alias.id).where(Alias.model_id == Model.id, Alias.name == alias).exists()


def models_label_filter(label: str | Sequence[str] | None) -> Any:
    """Models with a version carrying every label filter given (``key`` or ``key=value``)."""
    wanted = checks.label_filters(label)
    if not wanted:
        return None
    return (
        select(Version.id)
        .where(Version.model_id == Model.id, *[label_exists(Version.id, k, v) for k, v in wanted])
        .exists()
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


def model_infos(session: Session, models: Sequence[Model]) -> list[ModelInfo]:
    """Models with their version counts, highest releases and aliases."""
    counts, latest, aliases = model_summaries(session, models)
    return [
        ModelInfo(
            name=m.name,
            description=m.description,
            created_at=m.created_at,
            created_by=m.created_by,
            version_count=counts.get(m.id, 0),
            latest=latest.get(m.id),
            aliases=aliases.get(m.id, {}),
        )
        for m in models
    ]


def list_models(session: Session, filters: list[Any], limit: int) -> Page[ModelInfo]:
    """One keyset page of models by name; ``filters`` are WHERE clauses on ``models``."""
    rows = list(
        session.scalars(select(Model).where(*filters).order_by(Model.name).limit(limit + 1))
    )
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = checks.encode_cursor("models", [rows[-1].name]) if more else None
    return Page(model_infos(session, rows) if rows else [], nxt)


_SORT_COLS = (Version.major, Version.minor, Version.patch, Version.prerelease_sort)


def list_versions(
    session: Session,
    name: str,
    *,
    label: Sequence[tuple[str, str | None]],
    since: dt.datetime | None,
    include_prerelease: bool,
    limit: int,
    after: list[Any] | None,
    descending: bool,
) -> Page[VersionInfo]:
    """One keyset page of a model's versions in semver order (``after``: a decoded cursor)."""
    model = find_model(session, name)
    query = select(*Version.__table__.c).where(Version.model_id == model.id)
    if not include_prerelease:
        query = query.where(Version.is_prerelease.is_(False))
    if since is not None:
        query = query.where(Version.created_at >= since)
    for key, value in label:
        query = query.where(label_exists(Version.id, key, value))
    if after is not None:
        query = query.where(tuple_(*after) > _SORT if descending else tuple_(*after) < _SORT)
    order = [c.desc() for c in _SORT_COLS] if descending else list(_SORT_COLS)
    rows = list(session.connection().execute(query.order_by(*order).limit(limit + 1)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if rows else None
    nxt = (
        checks.encode_cursor("versions", [last.major, last.minor, last.patch, last.prerelease_sort])
        if more and last is not None
        else None
    )
    return Page(version_infos(session, model, rows), nxt)


def events(session: Session, name: str | None, limit: int) -> list[EventInfo]:
    """The newest events first, for one model or for the whole registry."""
    query = select(Event).order_by(Event.id.desc()).limit(limit)
    if name is not None:
        query = query.where(Event.model == name)
    return [
        EventInfo(e.id, e.at, e.user, e.kind, e.model, e.version, e.alias, dict(e.details or {}))
        for e in session.scalars(query)
    ]
