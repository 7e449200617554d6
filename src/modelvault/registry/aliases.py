"""Aliases: movable names (``prod``) pointing at one version, with their history.

Functions here run inside the caller's transaction and record every set,
move and removal both in ``alias_history`` and in the events log.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from . import answers, reads
from .checks import utcnow
from .results import AliasChange, AliasInfo
from .schema import Alias, AliasHistory, Version
from .semver import SemVer
from .writes import add_event

__all__ = ["alias_history", "point_alias", "remove_alias", "set_alias"]


def point_alias(s: Session, model: Any, alias: str, row: Any, who: str) -> AliasInfo:
    """Point ``alias`` of ``model`` at the version ``row``: a set, a move, or nothing to do."""
    now = utcnow()
    current = s.scalars(
        select(Alias).where(Alias.model_id == model.id, Alias.name == alias).with_for_update()
    ).one_or_none()
    previous: str | None = None
    if current is None:
        s.add(
            Alias(model_id=model.id, name=alias, version_id=row.id, updated_at=now, updated_by=who)
        )
        action = "set"
    elif current.version_id == row.id:
        return AliasInfo(model.name, alias, row.version, current.updated_at, current.updated_by)
    else:
        previous = s.scalars(select(Version.version).where(Version.id == current.version_id)).one()
        s.execute(
            update(Alias)
            .where(Alias.id == current.id)
            .values(version_id=row.id, updated_at=now, updated_by=who)
        )
        action = "move"
    s.add(
        AliasHistory(
            model_id=model.id,
            alias=alias,
            version=row.version,
            previous=previous,
            action=action,
            at=now,
            by=who,
        )
    )
    add_event(
        s,
        f"alias.{action}",
        who,
        model=model.name,
        version=row.version,
        alias=alias,
        previous=previous,
    )
    s.flush()
    return AliasInfo(model.name, alias, row.version, now, who)


def set_alias(s: Session, name: str, alias: str, sv: SemVer, who: str) -> AliasInfo:
    """Point ``alias`` at the exact version ``sv`` of model ``name``."""
    model = reads.find_model(s, name)
    return point_alias(s, model, alias, reads.exact(s, model, sv), who)


def remove_alias(s: Session, name: str, alias: str, who: str) -> AliasInfo:
    """Remove an alias; returns where it pointed."""
    model = reads.find_model(s, name)
    found = s.execute(
        select(Alias, Version.version)
        .join(Version, Version.id == Alias.version_id)
        .where(Alias.model_id == model.id, Alias.name == alias)
    ).one_or_none()
    if found is None:
        known = sorted(s.scalars(select(Alias.name).where(Alias.model_id == model.id)))
        raise answers.alias_not_found(name, alias, known)
    row, version_text = found
    s.execute(delete(Alias).where(Alias.id == row.id))
    now = utcnow()
    s.add(
        AliasHistory(
            model_id=model.id,
            alias=alias,
            version=None,
            previous=version_text,
            action="remove",
            at=now,
            by=who,
        )
    )
    add_event(s, "alias.remove", who, model=name, version=version_text, alias=alias)
    return AliasInfo(name, alias, version_text, now, who)


def alias_history(s: Session, name: str, alias: str) -> list[AliasChange]:
    """Every set, move and removal of an alias, oldest first."""
    model = reads.find_model(s, name)
    rows = s.scalars(
        select(AliasHistory)
        .where(AliasHistory.model_id == model.id, AliasHistory.alias == alias)
        .order_by(AliasHistory.id)
    )
    return [AliasChange(r.alias, r.action, r.version, r.previous, r.at, r.by) for r in rows]
