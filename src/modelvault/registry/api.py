"""The :class:`Registry`: models, versions, variants, aliases, labels, events, blob leases.

One class, and plain-function modules it delegates to, each taking a session:

* :mod:`.checks`: input validation, before anything is written;
* :mod:`.reads`: lookups, resolution (the hot path), listings, cursors;
* :mod:`.writes`: models, versions, variants, labels, deletion, events;
* :mod:`.aliases`: aliases and their history;
* :mod:`.blobs`: blob references, push leases and gc's deletion decisions;
* :mod:`.db`: engines, transactions and retries, schema checks, migrations.

A public method validates its arguments, then runs one database transaction
(:func:`.db.run_transaction`) that writes its event row in that same
transaction. Versions are immutable; identity is the semantic version without
build metadata. Concurrent writers are kept apart by unique constraints, not
by reading first: the loser of a race sees the constraint fail, rolls back and
re-reads to decide between "identical, nothing to do" and
:class:`VersionExistsError`.

Model names are unique ignoring case and looked up exactly: with ``base``
registered, pushing ``Base`` is refused with a line naming ``base`` (two
models a reader cannot tell apart are worse than a retyped name), and
``resolve("Base")`` says "did you mean 'base'?".
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from .. import config
from ..errors import (
    ConfigError,
    ConflictError,
    ModelExistsError,
    RegistryError,
    VariantExistsError,
)
from . import _sqlite, blobs, checks, db, reads, signatures, writes
from . import aliases as al
from .results import (
    AliasChange,
    AliasInfo,
    DeleteResult,
    EventInfo,
    ModelInfo,
    Page,
    VariantInfo,
    VariantInput,
    VersionInfo,
)
from .schema import Model
from .semver import SemVer
from .specs import LatestSpec, Spec, parse_ref, parse_spec, validate_label, validate_name

__all__ = ["Registry"]

T = TypeVar("T")
# A unique-constraint race is re-run this many times before giving up.
_CONFLICT_RETRIES = 5


class Registry:
    """The SQL catalogue of models.

    >>> reg = Registry("sqlite:///registry.db")                       # doctest: +SKIP
    >>> info, created = reg.register_version("resnet50", "1.3.0", [variant])  # doctest: +SKIP
    >>> reg.resolve("resnet50@^1.2").version                          # doctest: +SKIP
    '1.3.0'

    ``url`` None means ``MVAULT_REGISTRY`` (default: the embedded SQLite file).
    ``auto_upgrade`` None means: upgrade the embedded default and any SQLite
    file that does not exist yet; refuse any other database that is behind
    with :class:`SchemaBehindError` ("run: mvault db upgrade"). A database
    whose tables differ from what its revision says raises
    :class:`SchemaDriftError` naming the difference.

    ``read_only=True`` is for lookups (``mvault ls``, ``show``, ``pull``...):
    the registry is never created or migrated, a SQLite file is opened
    read-only, a missing one raises :class:`RegistryNotFoundError` (a mistyped
    path is not silently made an empty registry), and any change raises
    :class:`RegistryReadOnlyError`. Without it, a SQLite file this process
    cannot write (a read-only home) is still opened for reading, and the first
    change raises :class:`RegistryReadOnlyError` saying why.
    """

    def __init__(
        self, url: str | None = None, *, auto_upgrade: bool | None = None, read_only: bool = False
    ) -> None:
        settings = config.settings()
        raw = settings.registry_url if url is None else url
        self.url = db.normalize_url(raw)
        self._path = _sqlite.sqlite_file(self.url)
        #: Why changes are refused (None: this registry takes them).
        self.read_only_reason: str | None = "opened read-only" if read_only else None
        engine_url = self.url
        if self._path is not None:
            if self._path.is_dir():
                raise ConfigError(
                    f"registry path {self._path} is a directory; name the SQLite file in it, "
                    f"e.g. sqlite:///{self._path / 'registry.db'}"
                )
            exists = self._path.exists()
            if read_only and not exists:
                raise _sqlite.missing(self._path)
            if not read_only:
                self.read_only_reason = _sqlite.why_not_writable(self._path)
                if self.read_only_reason is not None and not exists:
                    raise _sqlite.read_only(
                        self._path, self.read_only_reason, db.describe_url(self.url)
                    )
            if self.read_only_reason is not None:
                engine_url = _sqlite.read_only_url(self.url, self._path)
        if self.read_only_reason is not None:
            auto_upgrade = False
        elif auto_upgrade is None:
            auto_upgrade = (
                url is None and settings.is_embedded_registry
            ) or db.sqlite_path_missing(self.url)
        self.engine = db.connect(engine_url)
        db.check_schema(self.engine, auto_upgrade=auto_upgrade)

    @property
    def read_only(self) -> bool:
        """True when changes are refused (see ``read_only_reason``)."""
        return self.read_only_reason is not None

    def check_writable(self) -> None:
        """Raise :class:`RegistryReadOnlyError` unless this registry takes changes.

        Commands that write call it before their first byte of work, so a push
        to a read-only home fails before it reads its source.
        """
        if self.read_only_reason is not None:
            raise _sqlite.read_only(self._path, self.read_only_reason, db.describe_url(self.url))

    def __repr__(self) -> str:
        return f"Registry({db.describe_url(self.url)!r})"

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transactions -------------------------------------------------------------

    def _tx(self, fn: Callable[[Session], T], *, write: bool = True) -> T:
        if write:
            self.check_writable()
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
        self.check_writable()
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
        return checks.check_user(config.settings().user if user is None else user)

    # --- models -------------------------------------------------------------

    def create_model(
        self,
        name: str,
        *,
        description: str | None = None,
        exist_ok: bool = True,
        user: str | None = None,
    ) -> ModelInfo:
        """Create a model; with ``exist_ok=False`` an existing one raises ModelExistsError.

        A name that differs only in case from an existing model's is refused
        (ModelExistsError naming the existing one), whatever ``exist_ok`` says.
        """
        validate_name("model", name)
        description = checks.check_description(description)
        who = self._user(user)
        if not self._tx(lambda s: writes.ensure_model(s, name, description, who)) and not exist_ok:
            raise ModelExistsError(f"model {name!r} already exists")
        return self.get_model(name)

    def get_model(self, name: str) -> ModelInfo:
        """One model with its version count, highest release and aliases."""
        validate_name("model", name)
        return self._tx(lambda s: reads.model_infos(s, [reads.find_model(s, name)])[0], write=False)

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
        lease: str | None = None,
    ) -> tuple[VersionInfo, bool]:
        """Register a version with its variants, blobs, labels and aliases in one transaction.

        Returns ``(info, created)``. Registering content that is already there
        (every variant you pass is already a variant of this version) registers
        nothing and returns ``created=False``, but ``labels`` are still applied
        (added or overwritten, recorded as a ``label.set`` event): a re-push
        with new labels means them. Different content under an existing version
        raises :class:`VersionExistsError`. The model is created if needed.

        ``lease`` (from :meth:`take_lease`) hands a push's hold on its blobs
        over to the new references in the same transaction; a lease that has
        lapsed raises :class:`~modelvault.errors.LeaseLapsedError` and registers nothing.
        """
        sv, checked, alias_names, label_map, description = checks.check_registration(
            name, version, variants, aliases, labels, description
        )
        who = self._user(user)
        wanted = {v.manifest_digest for v in checked}
        blob_digests = {b[0] for v in checked for b in v.blobs}
        self._tx(lambda s: writes.ensure_model(s, name, None, who))

        def existing() -> tuple[VersionInfo, bool] | None:
            info = self._tx(lambda s: writes.existing_version(s, name, sv, wanted), write=False)
            if info is None:
                return None
            if any(info.labels.get(k) != v for k, v in label_map.items()):
                self._tx(lambda s: writes.set_labels(s, name, sv, label_map, who))
                info = self.get_version(name, info.version)
            return info, False

        def write(s: Session) -> tuple[VersionInfo, bool]:
            blobs.guard(s, exclusive=False)  # gc is not deciding while references appear
            model = reads.find_model(s, name)
            row = writes.insert_version(
                s, model, sv, checked, labels=label_map, description=description, user=who
            )
            if lease is not None:
                blobs.hand_over(s, lease, blob_digests)
            for alias in alias_names:
                al.point_alias(s, model, alias, row, who)
            return reads.version_infos(s, model, [row])[0], True

        found = existing()
        if found is not None:
            return found
        return self._write_with_conflicts(write, existing)

    def add_variant(
        self,
        name: str,
        version: str,
        variant: VariantInput,
        *,
        user: str | None = None,
        lease: str | None = None,
    ) -> VariantInfo:
        """Add one variant (a manifest) to an existing version; ``lease`` as in
        :meth:`register_version`."""
        validate_name("model", name)
        sv = SemVer.parse(version)
        v = checks.check_variant(variant)
        who = self._user(user)

        def write(s: Session) -> VariantInfo:
            blobs.guard(s, exclusive=False)
            info = writes.add_variant(s, name, sv, v, who)
            if lease is not None:
                blobs.hand_over(s, lease, {b[0] for b in v.blobs})
            return info

        def conflict() -> VariantInfo | None:
            raise VariantExistsError(f"{name}:{sv} already has variant {v.manifest_digest}")

        return self._write_with_conflicts(write, conflict)

    def get_version(self, name: str, version: str) -> VersionInfo:
        """Exactly this version (build metadata ignored)."""
        validate_name("model", name)
        sv = SemVer.parse(version)

        def read(s: Session) -> VersionInfo:
            model = reads.find_model(s, name)
            return reads.version_infos(s, model, [reads.exact(s, model, sv)])[0]

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
            model = reads.find_model(s, name)
            return reads.version_infos(s, model, [reads.resolve_row(s, model, want)])[0]

        return self._tx(read, write=False)

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
        # An alias set concurrently on this version fails the foreign key: look again.
        return self._write_with_conflicts(
            lambda s: writes.delete_version(s, name, sv, force=force, user=who), lambda: None
        )

    def delete_model(
        self, name: str, *, force: bool = False, user: str | None = None
    ) -> list[DeleteResult]:
        """Delete a model with all its versions (refused while aliases exist, unless ``force``).

        Blobs stay for ``gc``; the model's events stay in the log.
        """
        validate_name("model", name)
        who = self._user(user)
        return self._write_with_conflicts(
            lambda s: writes.delete_model(s, name, force=force, user=who), lambda: None
        )

    def rename_model(self, old: str, new: str, *, user: str | None = None) -> ModelInfo:
        """Rename a model; versions, aliases, their history and the events log follow it."""
        validate_name("model", old)
        validate_name("model", new)
        who = self._user(user)
        self._tx(lambda s: writes.rename_model(s, old, new, user=who))
        return self.get_model(new)

    def attach_signature(
        self,
        name: str,
        version: str,
        manifest_digest: str,
        bundle_digest: str,
        size: int,
        signer: str,
        *,
        user: str | None = None,
    ) -> bool:
        """Record a stored signature bundle (a blob of role ``signature``) against one variant."""
        validate_name("model", name)
        sv = SemVer.parse(version)
        who = self._user(user)
        return self._tx(
            lambda s: signatures.attach_signature(
                s, name, sv, manifest_digest, bundle_digest, size, signer, who
            )
        )

    # --- listing --------------------------------------------------------------

    def list_models(
        self,
        prefix: str | None = None,
        label: str | Sequence[str] | None = None,
        alias: str | None = None,
        since: dt.datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[ModelInfo]:
        """Models by name; filter by name prefix, version labels (``key`` or
        ``key=value``, several ANDed on one version), an alias name, or creation
        time; keyset-paged."""
        filters = [
            f
            for f in (
                reads.model_name_filter(prefix),
                reads.models_label_filter(label),
                reads.alias_filter(alias),
            )
            if f is not None
        ]
        when = checks.check_since(since)
        if when is not None:
            filters.append(Model.created_at >= when)
        limit = checks.check_limit(limit)
        if cursor is not None:
            filters.append(Model.name > checks.decode_cursor("models", cursor, [str])[0])
        return self._tx(lambda s: reads.list_models(s, filters, limit), write=False)

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
        """A model's versions in semver order (highest first by default), keyset-paged:
        the cost of a page does not grow with the number of versions."""
        validate_name("model", name)
        limit = checks.check_limit(limit)
        when = checks.check_since(since)
        key = checks.label_filters(label)
        after = (
            checks.decode_cursor("versions", cursor, [int, int, int, str])
            if cursor is not None
            else None
        )
        return self._tx(
            lambda s: reads.list_versions(
                s,
                name,
                label=key,
                since=when,
                include_prerelease=include_prerelease,
                limit=limit,
                after=after,
                descending=descending,
            ),
            write=False,
        )

    # --- aliases --------------------------------------------------------------

    def set_alias(
        self, name: str, alias: str, version: str, *, user: str | None = None
    ) -> AliasInfo:
        """Point ``alias`` at ``version``; moving an alias is setting it again (history kept)."""
        validate_name("model", name)
        validate_name("alias", alias)
        sv = SemVer.parse(version)
        who = self._user(user)
        # A concurrent first "set" of the same alias fails the unique constraint: retry as a move.
        return self._write_with_conflicts(
            lambda s: al.set_alias(s, name, alias, sv, who), lambda: None
        )

    def remove_alias(self, name: str, alias: str, *, user: str | None = None) -> AliasInfo:
        """Remove an alias; returns where it pointed."""
        validate_name("model", name)
        validate_name("alias", alias)
        who = self._user(user)
        return self._tx(lambda s: al.remove_alias(s, name, alias, who))

    def alias_history(self, name: str, alias: str) -> list[AliasChange]:
        """Every set, move and removal of an alias, oldest first."""
        validate_name("model", name)
        validate_name("alias", alias)
        return self._tx(lambda s: al.alias_history(s, name, alias), write=False)

    # --- labels ---------------------------------------------------------------

    def set_labels(
        self, name: str, version: str, labels: Mapping[str, str], *, user: str | None = None
    ) -> dict[str, str]:
        """Add or overwrite labels on a version; returns all its labels."""
        validate_name("model", name)
        sv = SemVer.parse(version)
        label_map = checks.check_labels(labels)
        who = self._user(user)
        return self._write_with_conflicts(
            lambda s: writes.set_labels(s, name, sv, label_map, who), lambda: None
        )

    def remove_label(self, name: str, version: str, key: str, *, user: str | None = None) -> bool:
        """Remove one label; False when the version did not have it."""
        validate_name("model", name)
        sv = SemVer.parse(version)
        validate_label(key, "")
        who = self._user(user)
        return self._tx(lambda s: writes.remove_label(s, name, sv, key, who))

    # --- events ------------------------------------------------------------------

    def events(self, name: str | None = None, limit: int = 100) -> list[EventInfo]:
        """The newest events first, for one model or for the whole registry."""
        if name is not None:
            validate_name("model", name)
        limit = checks.check_limit(limit)
        return self._tx(lambda s: reads.events(s, name, limit), write=False)

    # --- blobs, leases and gc (the protocol: modelvault.maintenance) ------------------

    def referenced_digests(self) -> set[str]:
        """Every blob digest some variant refers to (manifests included): ``gc`` keeps these."""
        return self._tx(blobs.referenced_digests, write=False)

    def blob_digests(self, *, seen_before: dt.datetime | None = None) -> set[str]:
        """Every blob the registry has recorded (optionally only those first seen before a time)."""
        when = checks.check_since(seen_before)
        return self._tx(lambda s: blobs.blob_digests(s, when), write=False)

    def forget_blobs(
        self, digests: Sequence[str] | set[str], *, user: str | None = None
    ) -> set[str]:
        """Drop blob rows that no variant refers to; returns the digests forgotten.

        A digest still referenced (a push may have raced ``gc``) is kept.
        """
        wanted = sorted({checks.check_digest(d, "blob digest") for d in digests})
        who = self._user(user)
        # A push that referenced a blob meanwhile fails the foreign key: look again.
        return self._write_with_conflicts(
            lambda s: blobs.forget_blobs(s, wanted, who), lambda: None
        )

    def take_lease(
        self, digests: Sequence[str] | set[str], *, ttl_seconds: float
    ) -> tuple[str, dict[str, dt.datetime]]:
        """Hold blobs for a push: ``(lease_id, {digest: deadline})``, the second part
        naming the digests a ``gc`` had already decided to delete (wait for those)."""
        wanted = sorted({checks.check_digest(d, "blob digest") for d in digests})
        lease_id = secrets.token_hex(16)
        ttl = checks.check_seconds(ttl_seconds)
        doomed = self._tx(lambda s: blobs.take(s, lease_id, wanted, ttl))
        return lease_id, doomed

    def renew_lease(self, lease_id: str, *, ttl_seconds: float) -> bool:
        """Extend a lease to now + ``ttl_seconds``; False when it had lapsed already."""
        ttl = checks.check_seconds(ttl_seconds)
        return self._tx(lambda s: blobs.renew(s, lease_id, ttl))

    def release_lease(self, lease_id: str) -> None:
        """Drop a lease (the push failed, or registered nothing)."""
        self._tx(lambda s: blobs.release(s, lease_id))

    def pending_deletions(self, digests: Sequence[str] | set[str]) -> dict[str, dt.datetime]:
        """Which of ``digests`` a ``gc`` has decided to delete and not finished, with deadlines."""
        return self._tx(lambda s: blobs.pending_deletions(s, digests), write=False)

    def clear_stale_deletion(self, digest: str) -> bool:
        """Drop a deletion decision whose deadline passed; True when the digest is free."""
        return self._tx(lambda s: blobs.clear_stale(s, digest))

    def leased_digests(self) -> set[str]:
        """Every digest an unexpired push lease holds."""
        return self._tx(blobs.leased_digests, write=False)

    def decide_deletions(
        self, candidates: Sequence[str] | set[str], *, window_seconds: float
    ) -> tuple[str, list[str], dt.datetime]:
        """Decide, in one transaction, which candidates a new ``gc`` run deletes:
        ``(gc_id, digests, deadline)``; see :func:`.blobs.decide_deletions`."""
        wanted = sorted({checks.check_digest(d, "blob digest") for d in candidates})
        gc_id = secrets.token_hex(16)
        window = checks.check_seconds(window_seconds)
        decided, deadline = self._tx(lambda s: blobs.decide_deletions(s, gc_id, wanted, window))
        return gc_id, decided, deadline

    def finish_deletions(
        self, gc_id: str, deleted: Sequence[str] | set[str], *, user: str | None = None
    ) -> set[str]:
        """Close a ``gc`` run: drop its decisions and the rows of the blobs it deleted."""
        who = self._user(user)
        gone = sorted(deleted)
        return self._write_with_conflicts(
            lambda s: blobs.finish_deletions(s, gc_id, gone, who), lambda: None
        )

    def sweep_deletions(self) -> int:
        """Drop the decisions of ``gc`` runs past their deadline; returns how many."""
        return self._tx(blobs.sweep)
