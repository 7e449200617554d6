"""The :class:`Registry`: models, versions, variants, aliases, labels, events.

Every public method runs in one database transaction (see
:func:`modelvault.registry.db.run_transaction`) and writes its event row in
that same transaction. Versions are immutable; identity is the semantic
version without build metadata. Concurrent writers are kept apart by unique
constraints, not by reading first: the loser of a race sees the constraint
fail, rolls back and re-reads to decide between "identical, nothing to do"
and :class:`VersionExistsError`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TypeVar

from sqlalchemy import insert, select, tuple_
from sqlalchemy.orm import Session

from ..errors import (
    InvalidArgumentError,
    ModelExistsError,
    VariantExistsError,
    VersionExistsError,
)
from . import _queries as q
from ._maintenance import MaintenanceOps
from .results import (
    ModelInfo,
    Page,
    VariantInfo,
    VariantInput,
    VersionInfo,
)
from .schema import Label, Model, Variant, Version
from .semver import SemVer
from .specs import LatestSpec, Spec, parse_ref, parse_spec, validate_name

__all__ = ["Registry"]

T = TypeVar("T")
# A unique-constraint race is re-run this many times before giving up.
_CONFLICT_RETRIES = 5


class Registry(MaintenanceOps):
    """The SQL catalogue of models.

    >>> reg = Registry("sqlite:///registry.db")                       # doctest: +SKIP
    >>> info, created = reg.register_version("resnet50", "1.3.0", [variant])  # doctest: +SKIP
    >>> reg.resolve("resnet50@^1.2").version                          # doctest: +SKIP
    '1.3.0'

    ``url`` None means ``MVAULT_REGISTRY`` (default: the embedded SQLite file).
    ``auto_upgrade`` None means: upgrade the embedded default and any SQLite
    file that does not exist yet; refuse any other database that is behind
    with :class:`SchemaBehindError` ("run: mvault db upgrade").
    """

    # --- models -------------------------------------------------------------

    def _ensure_model(self, name: str, description: str | None, user: str) -> bool:
        """Create the model unless it exists; True when this call created it."""

        def work(s: Session) -> bool:
            now = q.utcnow()
            row = {"name": name, "description": description, "created_at": now, "created_by": user}
            created = q.insert_ignore(s, Model.__table__, [row], ["name"]) > 0  # type: ignore[arg-type]
            if created:
                q.add_event(s, "model.create", user, model=name, description=description)
            return created

        return self._tx(work)

    def create_model(
        self,
        name: str,
        *,
        description: str | None = None,
        exist_ok: bool = True,
        user: str | None = None,
    ) -> ModelInfo:
        """Create a model; with ``exist_ok=False`` an existing one raises ModelExistsError."""
        validate_name("model", name)
        description = q.check_description(description)
        who = self._user(user)
        if not self._ensure_model(name, description, who) and not exist_ok:
            raise ModelExistsError(f"model {name!r} already exists")
        return self.get_model(name)

    def get_model(self, name: str) -> ModelInfo:
        """One model with its version count, highest release and aliases."""
        validate_name("model", name)

        def work(s: Session) -> ModelInfo:
            return self._model_infos(s, [q.find_model(s, name)])[0]

        return self._tx(work, write=False)

    @staticmethod
    def _model_infos(s: Session, models: Sequence[Model]) -> list[ModelInfo]:
        counts, latest, aliases = q.model_summaries(s, models)
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

    # --- versions -----------------------------------------------------------

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
    ) -> tuple[VersionInfo, bool]:
        """Register a version with its variants, blobs, labels and aliases in one transaction.

        Returns ``(info, created)``. Registering content that is already there
        (every variant you pass is already a variant of this version) is a
        no-op returning ``created=False``; different content under an existing
        version raises :class:`VersionExistsError`. The model is created if needed.
        """
        validate_name("model", name)
        sv = SemVer.parse(version)
        if isinstance(variants, (str, bytes)) or not isinstance(variants, Sequence) or not variants:
            raise InvalidArgumentError(
                "register_version needs at least one variant (a sequence of VariantInput)"
            )
        checked = [q.check_variant(v) for v in variants]
        digests = [v.manifest_digest for v in checked]
        if len(set(digests)) != len(digests):
            raise InvalidArgumentError(
                "the same manifest digest is listed twice among the variants"
            )
        if isinstance(aliases, str):
            raise InvalidArgumentError("aliases must be a sequence of alias names, not one string")
        alias_names = [validate_name("alias", a) for a in aliases]
        label_map = q.check_labels(labels or {})
        description = q.check_description(description)
        who = self._user(user)
        wanted = set(digests)
        self._ensure_model(name, None, who)

        def existing() -> tuple[VersionInfo, bool] | None:
            def read(s: Session) -> tuple[VersionInfo, bool] | None:
                model = q.find_model(s, name)
                row = q.version_by_semver(s, model, sv)
                if row is None:
                    return None
                info = q.version_infos(s, model, [row])[0]
                have = {v.manifest_digest for v in info.variants}
                if wanted <= have:
                    return info, False
                raise VersionExistsError(
                    f"{name}:{info.version} already exists with variant(s) {', '.join(sorted(have))}; "
                    f"you registered {', '.join(sorted(wanted))}. Versions are immutable",
                    hint="register the new content under a new version",
                )

            return self._tx(read, write=False)

        def write(s: Session) -> tuple[VersionInfo, bool]:
            model = q.find_model(s, name)
            now = q.utcnow()
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
                created_by=who,
            )
            s.add(row)
            s.flush()  # the unique constraint decides the race here
            for v in checked:
                q.add_variant_rows(s, row.id, v, who, now)
            if label_map:
                s.execute(
                    insert(Label),
                    [
                        {"version_id": row.id, "key": k, "value": val}
                        for k, val in sorted(label_map.items())
                    ],
                )
            q.add_event(
                s,
                "version.register",
                who,
                model=name,
                version=str(sv),
                variants=sorted(wanted),
                labels=label_map,
            )
            for alias in alias_names:
                self._point_alias(s, model, alias, row, who)
            return q.version_infos(s, model, [row])[0], True

        found = existing()
        if found is not None:
            return found
        return self._write_with_conflicts(write, existing)

    def add_variant(
        self, name: str, version: str, variant: VariantInput, *, user: str | None = None
    ) -> VariantInfo:
        """Add one variant (a manifest) to an existing version."""
        validate_name("model", name)
        sv = SemVer.parse(version)
        v = q.check_variant(variant)
        who = self._user(user)

        def write(s: Session) -> VariantInfo:
            model = q.find_model(s, name)
            row = self._exact(s, model, sv)
            if s.scalars(
                select(Variant.id).where(
                    Variant.version_id == row.id, Variant.manifest_digest == v.manifest_digest
                )
            ).first():
                raise VariantExistsError(
                    f"{name}:{row.version} already has variant {v.manifest_digest}"
                )
            q.add_variant_rows(s, row.id, v, who, q.utcnow())
            q.add_event(
                s,
                "variant.add",
                who,
                model=name,
                version=row.version,
                manifest=v.manifest_digest,
                variant_kind=v.kind,
            )
            info = q.version_infos(s, model, [row])[0]
            return next(x for x in info.variants if x.manifest_digest == v.manifest_digest)

        def conflict() -> VariantInfo | None:
            raise VariantExistsError(f"{name}:{sv} already has variant {v.manifest_digest}")

        return self._write_with_conflicts(write, conflict)

    def get_version(self, name: str, version: str) -> VersionInfo:
        """Exactly this version (build metadata ignored)."""
        validate_name("model", name)
        sv = SemVer.parse(version)

        def read(s: Session) -> VersionInfo:
            model = q.find_model(s, name)
            return q.version_infos(s, model, [self._exact(s, model, sv)])[0]

        return self._tx(read, write=False)

    def resolve(self, ref_or_name: str, spec: str | Spec | None = None) -> VersionInfo:
        """Resolve ``"name@spec"`` (or a name and a separate spec) to one version.

        No spec means ``latest``. Raises ModelNotFoundError, VersionNotFoundError
        or AliasNotFoundError with what does exist.
        """
        if spec is None:
            name, parsed = parse_ref(ref_or_name)
        else:
            name = validate_name("model", ref_or_name)
            parsed = parse_spec(spec) if isinstance(spec, str) else spec
        want: Spec = parsed if parsed is not None else LatestSpec()

        def read(s: Session) -> VersionInfo:
            model = q.find_model(s, name)
            return q.version_infos(s, model, [q.resolve_row(s, model, want)])[0]

        return self._tx(read, write=False)

    # --- listing --------------------------------------------------------------

    def list_models(
        self,
        prefix: str | None = None,
        label: str | None = None,
        alias: str | None = None,
        since: dt.datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[ModelInfo]:
        """Models by name; filter by name prefix, a version label (``key`` or
        ``key=value``), an alias name, or creation time; keyset-paged."""
        filters = [
            f
            for f in (
                q.model_name_filter(prefix),
                q.models_label_filter(label),
                q.alias_filter(alias),
            )
            if f is not None
        ]
        when = q.check_since(since)
        if when is not None:
            filters.append(Model.created_at >= when)
        limit = q.check_limit(limit)
        if cursor is not None:
            filters.append(Model.name > q.decode_cursor("models", cursor, [str])[0])

        def read(s: Session) -> Page[ModelInfo]:
            rows = list(
                s.scalars(select(Model).where(*filters).order_by(Model.name).limit(limit + 1))
            )
            more = len(rows) > limit
            rows = rows[:limit]
            nxt = q.encode_cursor("models", [rows[-1].name]) if more else None
            return Page(self._model_infos(s, rows) if rows else [], nxt)

        return self._tx(read, write=False)

    def list_versions(
        self,
        name: str,
        *,
        label: str | None = None,
        since: dt.datetime | None = None,
        include_prerelease: bool = True,
        limit: int = 50,
        cursor: str | None = None,
        descending: bool = True,
    ) -> Page[VersionInfo]:
        """A model's versions in semver order (highest first by default), keyset-paged:
        the cost of a page does not grow with the number of versions."""
        validate_name("model", name)
        limit = q.check_limit(limit)
        when = q.check_since(since)
        key = q.check_label_filter(label) if label is not None else None
        sort = tuple_(Version.major, Version.minor, Version.patch, Version.prerelease_sort)
        after = (
            q.decode_cursor("versions", cursor, [int, int, int, str])
            if cursor is not None
            else None
        )
        cols = [Version.major, Version.minor, Version.patch, Version.prerelease_sort]

        def read(s: Session) -> Page[VersionInfo]:
            model = q.find_model(s, name)
            query = select(*Version.__table__.c).where(Version.model_id == model.id)
            if not include_prerelease:
                query = query.where(Version.is_prerelease.is_(False))
            if when is not None:
                query = query.where(Version.created_at >= when)
            if key is not None:
                query = query.where(q.label_exists(Version.id, *key))
            if after is not None:
                query = query.where(sort < tuple_(*after) if descending else sort > tuple_(*after))
            order = [c.desc() for c in cols] if descending else cols
            rows = list(s.connection().execute(query.order_by(*order).limit(limit + 1)).all())
            more = len(rows) > limit
            rows = rows[:limit]
            last = rows[-1] if rows else None
            nxt = (
                q.encode_cursor(
                    "versions", [last.major, last.minor, last.patch, last.prerelease_sort]
                )
                if more and last is not None
                else None
            )
            return Page(q.version_infos(s, model, rows), nxt)

        return self._tx(read, write=False)
