"""Writes of the registry: models, versions, variants, labels, deletion, events.

Functions here run inside the caller's transaction (a :class:`Session`) and
write the event row of their change in it. They assume validated input (see
:mod:`.checks`); races are decided by unique constraints, which the caller
(:class:`~modelvault.registry.Registry`) turns into retries or answers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ..errors import ConflictError, ModelExistsError, VariantExistsError, VersionExistsError
from . import reads
from .checks import utcnow
from .results import DeleteResult, VariantInfo, VariantInput, VersionInfo
from .schema import Alias, AliasHistory, Blob, Event, Label, Model, Variant, VariantBlob, Version
from .semver import SemVer

__all__ = [
    "add_event",
    "add_variant",
    "add_variant_rows",
    "delete_version",
    "ensure_model",
    "insert_ignore",
    "insert_version",
    "remove_label",
    "set_labels",
]


def insert_ignore(
    session: Session, table: Table, rows: list[dict[str, Any]], keys: list[str]
) -> int:
    """INSERT rows, skipping those whose key already exists.

    Returns how many were inserted; exact for a single row only. ``keys`` name
    the columns PostgreSQL returns to count the rows.
    """
    if not rows:
        return 0
    name = session.get_bind().dialect.name
    # No conflict target: a row may clash on any unique key (models: name and name_key).
    if name == "postgresql":
        stmt: Any = postgresql.insert(table).on_conflict_do_nothing()
        stmt = stmt.returning(*[table.c[k] for k in keys])
    elif name == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing()
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


def ensure_model(session: Session, name: str, description: str | None, user: str) -> bool:
    """Create the model unless it exists; True when this call created it.

    Names are unique ignoring case: when ``Base`` is asked for and ``base``
    exists, :class:`ModelExistsError` says so instead of making a second model
    a reader could not tell apart. Lookups keep the exact name.
    """
    now = utcnow()
    row = {
        "name": name,
        "name_key": name.lower(),
        "description": description,
        "created_at": now,
        "created_by": user,
    }
    created = insert_ignore(session, Model.__table__, [row], ["name"]) > 0  # type: ignore[arg-type]
    if created:
        add_event(session, "model.create", user, model=name, description=description)
        return True
    have = session.scalars(select(Model.name).where(Model.name_key == name.lower())).first()
    if have is not None and have != name:
        raise ModelExistsError(
            f"model {have!r} already exists and names are unique ignoring case; "
            f"use {have!r}, not {name!r}",
            hint=f"push to {have}:VERSION",
        )
    return False


def insert_version(
    session: Session,
    model: Any,
    sv: SemVer,
    variants: Sequence[VariantInput],
    *,
    labels: Mapping[str, str],
    description: str | None,
    user: str,
) -> Version:
    """The version row with its variants and labels; the unique constraint decides a race."""
    now = utcnow()
    row = Version(
        model_id=model.id,
        version=str(sv),
        major=sv.major,
        minor=sv.minor,
        patch=sv.patch,
        prerelease=sv.prerelease_text,
        prerelease_sort=sv.prerelease_key,
        build=sv.build_text,
        is_prerelease=sv.is_prerelease,
        description=description,
        created_at=now,
        created_by=user,
    )
    session.add(row)
    session.flush()  # the unique constraint decides the race here
    for v in variants:
        add_variant_rows(session, row.id, v, user, now)
    if labels:
        session.execute(
            insert(Label),
            [{"version_id": row.id, "key": k, "value": val} for k, val in sorted(labels.items())],
        )
    add_event(
        session,
        "version.register",
        user,
        model=model.name,
        version=str(sv),
        variants=sorted(v.manifest_digest for v in variants),
        labels=dict(labels),
    )
    return row


def add_variant(session: Session, name: str, sv: SemVer, v: VariantInput, user: str) -> VariantInfo:
    """One more variant of an existing version; VariantExistsError when it is already one."""
    model = reads.find_model(session, name)
    row = reads.exact(session, model, sv)
    if session.scalars(
        select(Variant.id).where(
            Variant.version_id == row.id, Variant.manifest_digest == v.manifest_digest
        )
    ).first():
        raise VariantExistsError(f"{name}:{row.version} already has variant {v.manifest_digest}")
    add_variant_rows(session, row.id, v, user, utcnow())
    add_event(
        session,
        "variant.add",
        user,
        model=name,
        version=row.version,
        manifest=v.manifest_digest,
        variant_kind=v.kind,
    )
    info = reads.version_infos(session, model, [row])[0]
    return next(x for x in info.variants if x.manifest_digest == v.manifest_digest)


def set_labels(
    session: Session, name: str, sv: SemVer, labels: Mapping[str, str], user: str
) -> dict[str, str]:
    """Add or overwrite labels on a version; returns all its labels."""
    model = reads.find_model(session, name)
    row = reads.exact(session, model, sv)
    if labels:
        delete_labels(session, row.id, list(labels))
        session.execute(
            insert(Label),
            [{"version_id": row.id, "key": k, "value": v} for k, v in sorted(labels.items())],
        )
        add_event(session, "label.set", user, model=name, version=row.version, labels=dict(labels))
    return {  # noqa: C416  (a Result has .keys(): dict() would read it as a mapping)
        k: v
        for k, v in session.execute(
            select(Label.key, Label.value).where(Label.version_id == row.id)
        )
    }


def remove_label(session: Session, name: str, sv: SemVer, key: str, user: str) -> bool:
    """Remove one label; False when the version did not have it."""
    model = reads.find_model(session, name)
    row = reads.exact(session, model, sv)
    gone = session.execute(delete(Label).where(Label.version_id == row.id, Label.key == key))
    if not gone.rowcount:  # type: ignore[attr-defined]
        return False
    add_event(session, "label.remove", user, model=name, version=row.version, key=key)
    return True


def delete_version(
    session: Session, name: str, sv: SemVer, *, force: bool, user: str
) -> DeleteResult:
    """Delete a version, its variants, labels and blob references (blobs stay for ``gc``)."""
    model = reads.find_model(session, name)
    row = reads.exact(session, model, sv)
    pointing = sorted(session.scalars(select(Alias.name).where(Alias.version_id == row.id)))
    if pointing and not force:
        raise ConflictError(
            f"{name}:{row.version} is pointed at by alias(es) {', '.join(pointing)}; "
            "move them first or delete with force",
            hint="move the alias (mvault alias set) or pass force=True / --force",
        )
    now = utcnow()
    for alias in pointing:
        session.add(
            AliasHistory(
                model_id=model.id,
                alias=alias,
                version=None,
                previous=row.version,
                action="remove",
                at=now,
                by=user,
            )
        )
        add_event(
            session,
            "alias.remove",
            user,
            model=name,
            version=row.version,
            alias=alias,
            reason="version deleted",
        )
    session.execute(delete(Alias).where(Alias.version_id == row.id))
    variants = sorted(
        session.scalars(select(Variant.manifest_digest).where(Variant.version_id == row.id))
    )
    var_ids = select(Variant.id).where(Variant.version_id == row.id).scalar_subquery()
    session.execute(delete(VariantBlob).where(VariantBlob.variant_id.in_(var_ids)))
    session.execute(delete(Variant).where(Variant.version_id == row.id))
    session.execute(delete(Label).where(Label.version_id == row.id))
    session.execute(delete(Version).where(Version.id == row.id))
    add_event(
        session,
        "version.delete",
        user,
        model=name,
        version=row.version,
        variants=variants,
        aliases_removed=pointing,
        forced=force,
    )
    return DeleteResult(name, row.version, variants, pointing)


def delete_model(session: Session, name: str, *, force: bool, user: str) -> list[DeleteResult]:
    """Delete a model with every version (blobs stay for ``gc``); its events stay as history.

    Refused while aliases point into it unless ``force``; then they are removed too,
    each recorded like a version delete's.
    """
    model = reads.find_model(session, name)
    aliases = sorted(session.scalars(select(Alias.name).where(Alias.model_id == model.id)))
    if aliases and not force:
        raise ConflictError(
            f"model {name!r} has alias(es) {', '.join(aliases)}; remove them first or delete with force",
            hint="remove the aliases (mvault alias rm) or pass force=True / --force",
        )
    rows = session.execute(
        select(Version.major, Version.minor, Version.patch, Version.version).where(
            Version.model_id == model.id
        )
    ).all()
    results = [
        delete_version(session, name, SemVer.parse(r.version), force=True, user=user) for r in rows
    ]
    session.execute(delete(AliasHistory).where(AliasHistory.model_id == model.id))
    session.execute(delete(Model).where(Model.id == model.id))
    add_event(
        session,
        "model.delete",
        user,
        model=name,
        versions=[r.version for r in results],
        aliases_removed=aliases,
        forced=force,
    )
    return results


def rename_model(session: Session, old: str, new: str, *, user: str) -> None:
    """Rename a model; its versions, aliases, alias history and events go with it."""
    model = reads.find_model(session, old)
    taken = session.scalars(select(Model.name).where(Model.name_key == new.lower())).first()
    if taken is not None and taken != old:
        raise ModelExistsError(
            f"cannot rename {old!r} to {new!r}: model {taken!r} exists (names are unique ignoring case)",
            hint="choose another name, or delete the other model first",
        )
    session.execute(
        update(Model).where(Model.id == model.id).values(name=new, name_key=new.lower())
    )
    session.execute(update(Event).where(Event.model == old).values(model=new))
    add_event(session, "model.rename", user, model=new, renamed_from=old)


def existing_version(
    session: Session, name: str, sv: SemVer, wanted: set[str]
) -> VersionInfo | None:
    """The version when it already holds every variant in ``wanted``; None when it does not
    exist; VersionExistsError when it exists with other content."""

    model = reads.find_model(session, name)
    row = reads.version_by_semver(session, model, sv)
    if row is None:
        return None
    info = reads.version_infos(session, model, [row])[0]
    have = {v.manifest_digest for v in info.variants}
    if wanted <= have:
        return info
    raise VersionExistsError(
        f"{name}:{info.version} already exists with variant(s) {', '.join(sorted(have))}; "
        f"you registered {', '.join(sorted(wanted))}. Versions are immutable",
        hint="register the new content under a new version",
    )
