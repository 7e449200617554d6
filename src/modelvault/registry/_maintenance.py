"""Aliases, labels, deletion, the events log and blob references (part of ``Registry``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TypeVar

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from ..errors import (
    AliasNotFoundError,
    ConflictError,
)
from . import _queries as q
from ._base import RegistryBase
from .results import (
    AliasChange,
    AliasInfo,
    DeleteResult,
    EventInfo,
)
from .schema import Alias, AliasHistory, Blob, Event, Label, Model, Variant, VariantBlob, Version
from .semver import SemVer
from .specs import validate_label, validate_name

__all__ = ["MaintenanceOps"]

T = TypeVar("T")
# A unique-constraint race is re-run this many times before giving up.
_CONFLICT_RETRIES = 5


class MaintenanceOps(RegistryBase):
    """Aliases, labels, deletion, events and blob references."""

    # --- aliases --------------------------------------------------------------

    @staticmethod
    def _point_alias(s: Session, model: Model, alias: str, row: Version, who: str) -> AliasInfo:
        now = q.utcnow()
        current = s.scalars(
            select(Alias).where(Alias.model_id == model.id, Alias.name == alias).with_for_update()
        ).one_or_none()
        previous: str | None = None
        if current is None:
            s.add(
                Alias(
                    model_id=model.id, name=alias, version_id=row.id, updated_at=now, updated_by=who
                )
            )
            action = "set"
        elif current.version_id == row.id:
            return AliasInfo(model.name, alias, row.version, current.updated_at, current.updated_by)
        else:
            previous = s.scalars(
                select(Version.version).where(Version.id == current.version_id)
            ).one()
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
        q.add_event(
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

    def set_alias(
        self, name: str, alias: str, version: str, *, user: str | None = None
    ) -> AliasInfo:
        """Point ``alias`` at ``version``; moving an alias is setting it again (history kept)."""
        validate_name("model", name)
        validate_name("alias", alias)
        sv = SemVer.parse(version)
        who = self._user(user)

        def write(s: Session) -> AliasInfo:
            model = q.find_model(s, name)
            return self._point_alias(s, model, alias, self._exact(s, model, sv), who)

        # A concurrent first "set" of the same alias fails the unique constraint: retry as a move.
        return self._write_with_conflicts(write, lambda: None)

    def remove_alias(self, name: str, alias: str, *, user: str | None = None) -> AliasInfo:
        """Remove an alias; returns where it pointed."""
        validate_name("model", name)
        validate_name("alias", alias)
        who = self._user(user)

        def write(s: Session) -> AliasInfo:
            model = q.find_model(s, name)
            found = s.execute(
                select(Alias, Version.version)
                .join(Version, Version.id == Alias.version_id)
                .where(Alias.model_id == model.id, Alias.name == alias)
            ).one_or_none()
            if found is None:
                known = sorted(s.scalars(select(Alias.name).where(Alias.model_id == model.id)))
                have = f"its aliases: {', '.join(known)}" if known else "it has no aliases"
                raise AliasNotFoundError(f"model {name!r} has no alias {alias!r}; {have}")
            row, version_text = found
            s.execute(delete(Alias).where(Alias.id == row.id))
            now = q.utcnow()
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
            q.add_event(s, "alias.remove", who, model=name, version=version_text, alias=alias)
            return AliasInfo(name, alias, version_text, now, who)

        return self._tx(write)

    def alias_history(self, name: str, alias: str) -> list[AliasChange]:
        """Every set, move and removal of an alias, oldest first."""
        validate_name("model", name)
        validate_name("alias", alias)

        def read(s: Session) -> list[AliasChange]:
            model = q.find_model(s, name)
            rows = s.scalars(
                select(AliasHistory)
                .where(AliasHistory.model_id == model.id, AliasHistory.alias == alias)
                .order_by(AliasHistory.id)
            )
            return [AliasChange(r.alias, r.action, r.version, r.previous, r.at, r.by) for r in rows]

        return self._tx(read, write=False)

    # --- labels ---------------------------------------------------------------

    def set_labels(
        self, name: str, version: str, labels: Mapping[str, str], *, user: str | None = None
    ) -> dict[str, str]:
        """Add or overwrite labels on a version; returns all its labels."""
        validate_name("model", name)
        sv = SemVer.parse(version)
        label_map = q.check_labels(labels)
        who = self._user(user)

        def write(s: Session) -> dict[str, str]:
            model = q.find_model(s, name)
            row = self._exact(s, model, sv)
            if label_map:
                q.delete_labels(s, row.id, list(label_map))
                s.execute(
                    insert(Label),
                    [
                        {"version_id": row.id, "key": k, "value": v}
                        for k, v in sorted(label_map.items())
                    ],
                )
                q.add_event(s, "label.set", who, model=name, version=row.version, labels=label_map)
            return {  # noqa: C416  (a Result has .keys(): dict() would read it as a mapping)
                k: v
                for k, v in s.execute(
                    select(Label.key, Label.value).where(Label.version_id == row.id)
                )
            }

        return self._write_with_conflicts(write, lambda: None)

    def remove_label(self, name: str, version: str, key: str, *, user: str | None = None) -> bool:
        """Remove one label; False when the version did not have it."""
        validate_name("model", name)
        sv = SemVer.parse(version)
        validate_label(key, "")
        who = self._user(user)

        def write(s: Session) -> bool:
            model = q.find_model(s, name)
            row = self._exact(s, model, sv)
            gone = s.execute(delete(Label).where(Label.version_id == row.id, Label.key == key))
            if not gone.rowcount:  # type: ignore[attr-defined]
                return False
            q.add_event(s, "label.remove", who, model=name, version=row.version, key=key)
            return True

        return self._tx(write)

    # --- deletion ----------------------------------------------------------------

    def delete_version(
        self, name: str, version: str, *, force: bool = False, user: str | None = None
    ) -> DeleteResult:
        """Delete a version, its variants, labels and blob references (blobs stay for ``gc``).

        A version that aliases point at is refused unless ``force=True``; then
        those aliases are removed too, each recorded in the alias history and
        the events log, and listed in the result.
        """
        validate_name("model", name)
        sv = SemVer.parse(version)
        who = self._user(user)

        def write(s: Session) -> DeleteResult:
            model = q.find_model(s, name)
            row = self._exact(s, model, sv)
            pointing = sorted(s.scalars(select(Alias.name).where(Alias.version_id == row.id)))
            if pointing and not force:
                raise ConflictError(
                    f"{name}:{row.version} is pointed at by alias(es) {', '.join(pointing)}; "
                    "move them first or delete with force",
                    hint="move the alias (mvault alias set) or pass force=True / --force",
                )
            now = q.utcnow()
            for alias in pointing:
                s.add(
                    AliasHistory(
                        model_id=model.id,
                        alias=alias,
                        version=None,
                        previous=row.version,
                        action="remove",
                        at=now,
                        by=who,
                    )
                )
                q.add_event(
                    s,
                    "alias.remove",
                    who,
                    model=name,
                    version=row.version,
                    alias=alias,
                    reason="version deleted",
                )
            s.execute(delete(Alias).where(Alias.version_id == row.id))
            variants = sorted(
                s.scalars(select(Variant.manifest_digest).where(Variant.version_id == row.id))
            )
            var_ids = select(Variant.id).where(Variant.version_id == row.id).scalar_subquery()
            s.execute(delete(VariantBlob).where(VariantBlob.variant_id.in_(var_ids)))
            s.execute(delete(Variant).where(Variant.version_id == row.id))
            s.execute(delete(Label).where(Label.version_id == row.id))
            s.execute(delete(Version).where(Version.id == row.id))
            q.add_event(
                s,
                "version.delete",
                who,
                model=name,
                version=row.version,
                variants=variants,
                aliases_removed=pointing,
                forced=force,
            )
            return DeleteResult(name, row.version, variants, pointing)

        # An alias set concurrently on this version fails the foreign key: look again.
        return self._write_with_conflicts(write, lambda: None)

    # --- events and blobs -------------------------------------------------------------

    def events(self, name: str | None = None, limit: int = 100) -> list[EventInfo]:
        """The newest events first, for one model or for the whole registry."""
        if name is not None:
            validate_name("model", name)
        limit = q.check_limit(limit)

        def read(s: Session) -> list[EventInfo]:
            query = select(Event).order_by(Event.id.desc()).limit(limit)
            if name is not None:
                query = query.where(Event.model == name)
            return [
                EventInfo(
                    e.id, e.at, e.user, e.kind, e.model, e.version, e.alias, dict(e.details or {})
                )
                for e in s.scalars(query)
            ]

        return self._tx(read, write=False)

    def referenced_digests(self) -> set[str]:
        """Every blob digest some variant refers to (manifests included): ``gc`` keeps these."""
        return self._tx(
            lambda s: set(s.scalars(select(VariantBlob.blob_digest).distinct())), write=False
        )

    def blob_digests(self, *, seen_before: dt.datetime | None = None) -> set[str]:
        """Every blob the registry has recorded (optionally only those first seen before a time)."""
        query = select(Blob.digest)
        when = q.check_since(seen_before)
        if when is not None:
            query = query.where(Blob.first_seen < when)
        return self._tx(lambda s: set(s.scalars(query)), write=False)

    def forget_blobs(
        self, digests: Sequence[str] | set[str], *, user: str | None = None
    ) -> set[str]:
        """Drop blob rows that no variant refers to; returns the digests forgotten.

        A digest still referenced (a push may have raced ``gc``) is kept.
        """
        wanted = sorted({q.check_digest(d, "blob digest") for d in digests})
        who = self._user(user)

        def write(s: Session) -> set[str]:
            gone: set[str] = set()
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                still = set(
                    s.scalars(
                        select(VariantBlob.blob_digest).where(VariantBlob.blob_digest.in_(chunk))
                    )
                )
                drop = [d for d in chunk if d not in still]
                if drop:
                    s.execute(delete(Blob).where(Blob.digest.in_(drop)))
                    gone.update(drop)
            if gone:
                q.add_event(s, "blob.forget", who, count=len(gone))
            return gone

        # A push that referenced a blob meanwhile fails the foreign key: look again.
        return self._write_with_conflicts(write, lambda: None)
