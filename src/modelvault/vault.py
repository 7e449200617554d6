"""The ``Vault``: a registry and a store, used together.

    >>> from modelvault import Vault
    >>> vault = Vault()                                          # the default: MVAULT_HOME
    >>> vault.push("model.pt2", "resnet50", "1.3.0", aliases=["staging"])   # doctest: +SKIP
    >>> model = vault.load("resnet50@staging", device="cuda:0")  # doctest: +SKIP

Pushing writes blobs first (each content-addressed, skipped when present),
then registers the version in one transaction: a crash in between leaves at
worst orphan blobs, which ``gc`` removes after a grace period. A push holds a
lease on its blobs from before it looks in the store until the registration
(``maintenance.PushLease``), so ``gc`` never deletes a blob a push reuses.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConflictError, InvalidArgumentError, UnknownFormatError
from .formats.container import Draft, finalize
from .formats.registry import detect, get_plugin
from .loader import Choice, StoreSource, choose_variant, read_manifest
from .maintenance import PushLease

if TYPE_CHECKING:
    from .formats.manifest import Manifest
    from .registry import Registry
    from .storage.base import BlobStore

__all__ = [
    "PushResult",
    "Vault",
    "default_vault",
    "module_list",
    "module_load",
    "module_pull",
    "module_push",
    "module_resolve",
    "module_show",
]

MANIFEST_MEDIA_TYPE = "application/vnd.modelvault.manifest.v1+msgpack"


@dataclass
class PushResult:
    """What a push did."""

    name: str
    version: str
    digest: str
    format: str
    created: bool
    variant_added: bool = False
    bytes_uploaded: int = 0
    blobs_uploaded: int = 0
    blobs_skipped: int = 0
    aliases: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # applied, even to an unchanged version


def _split_ref(name: str, version: str | None) -> tuple[str, str]:
    if version is None:
        if ":" not in name:
            raise InvalidArgumentError(
                f"{name!r} names no version; use NAME:VERSION, e.g. resnet50:1.0.0"
            )
        name, _, version = name.rpartition(":")
    return name, version


class Vault:
    """A registry and a blob store, plus the local cache for remote stores.

    ``registry`` and ``store`` take objects or URLs; None means the configured
    default (``MVAULT_REGISTRY`` / ``MVAULT_STORE``, else SQLite and a local
    directory under ``MVAULT_HOME``).
    """

    def __init__(
        self,
        registry: Registry | str | None = None,
        store: BlobStore | str | None = None,
        *,
        cache: Any = None,
    ) -> None:
        self._registry_arg = registry
        self._store_arg = store
        self._registry: Registry | None = None
        self._store: BlobStore | None = None
        self._cache = cache

    # -- parts, opened lazily ------------------------------------------------
    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from .registry import Registry

            arg = self._registry_arg
            self._registry = arg if isinstance(arg, Registry) else Registry(arg)
        return self._registry

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            from .config import settings
            from .storage import open_store

            arg = self._store_arg
            if arg is None:
                arg = settings().store_url
            self._store = open_store(arg) if isinstance(arg, str) else arg
        return self._store

    @property
    def cache(self) -> Any:
        if self._cache is None:
            from .config import settings
            from .storage.cache import BlobCache

            s = settings()
            self._cache = BlobCache(s.cache_dir, s.cache_size)
        return self._cache

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._registry is not None:
            self._registry.close()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- push ----------------------------------------------------------------
    def pack(self, obj: Any, *, format: str | None = None, **options: Any) -> Draft:
        """Turn an object or a path into a draft container, detecting its format."""
        plugin = get_plugin(format) if format else detect(obj)
        if isinstance(obj, str):
            obj = Path(obj)
        return plugin.pack(obj, **options)

    def push(
        self,
        obj: Any,
        name: str,
        version: str | None = None,
        *,
        format: str | None = None,
        aliases: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        description: str | None = None,
        variant: bool = False,
        progress: Any = None,
        **options: Any,
    ) -> PushResult:
        """Push a live object, a file or a ``.mvpk`` bundle as ``name`` ``version``.

        ``name`` may be ``"name:version"``. With ``variant=True`` the container is
        added as another variant of an existing version. Identical content pushed
        again is a no-op; different content under an existing version raises
        :class:`~modelvault.errors.VersionExistsError`.
        """
        from .registry import SemVer, validate_name

        name, version = _split_ref(name, version)
        validate_name("model", name)
        version = str(SemVer.parse(version))
        alias_list = list(aliases)
        for a in alias_list:
            validate_name("alias", a)
        if isinstance(obj, (str, Path)) and Path(obj).suffix == ".mvpk" and format is None:
            return self._push_bundle(
                Path(obj), name, version, alias_list, labels, description, variant, progress
            )
        draft = self.pack(obj, format=format, **options)
        if metadata:
            draft.metadata.update(dict(metadata))
        for key, value in dict(options.get("frameworks") or {}).items():
            draft.frameworks.setdefault(str(key), str(value))
        with PushLease(self.registry, self.store) as lease:  # gc leaves these blobs alone
            manifest, uploaded, n_up, n_skip = self._upload_draft(draft, progress, lease)
            return self._register(
                manifest,
                name,
                version,
                alias_list,
                labels,
                description,
                variant,
                uploaded,
                n_up,
                n_skip,
                lease,
            )

    def _upload_draft(
        self, draft: Draft, progress: Any, lease: PushLease
    ) -> tuple[Manifest, int, int, int]:
        store = self.store
        uploaded = n_up = n_skip = 0
        draft.compute_digests()
        manifest = finalize(draft)  # validates everything before the first byte is stored
        lease.protect([b.digest for b in draft.blobs if b.digest] + [manifest.digest])
        seen: set[str] = set()
        for b in draft.blobs:
            assert b.digest is not None
            if b.digest in seen:
                continue
            seen.add(b.digest)
            if lease.present(b.digest):
                n_skip += 1
                continue
            local = b.source.local_file()
            if local is not None:
                wrote = store.put_file(
                    b.digest, local[0], offset=local[1], length=b.source.size, progress=progress
                )
            else:
                wrote = store.put_stream(
                    b.digest, b.source.chunks(), b.source.size, progress=progress
                )
            if wrote:
                uploaded += b.source.size
                n_up += 1
            else:
                n_skip += 1
        if not lease.present(manifest.digest):
            store.put_bytes(manifest.digest, manifest.encode())
        return manifest, uploaded, n_up, n_skip

    def _variant_input(self, manifest: Manifest) -> Any:
        from .registry import VariantInput

        plugin_kind = "portable"
        try:
            plugin_kind = get_plugin(manifest.plugin).kind
        except Exception:
            plugin_kind = str(manifest.target.get("kind", "portable"))
        blobs = [(b.digest, b.size, b.role, b.media_type) for b in manifest.blobs]
        encoded = manifest.encode()
        blobs.append((manifest.digest, len(encoded), "manifest", MANIFEST_MEDIA_TYPE))
        requirements = dict(manifest.target)
        return VariantInput(
            manifest_digest=manifest.digest,
            format=manifest.plugin,
            kind=plugin_kind,
            requirements=requirements,
            size=manifest.total_size + len(encoded),
            blobs=blobs,
        )

    def _register(
        self,
        manifest: Manifest,
        name: str,
        version: str,
        aliases: list[str],
        labels: Mapping[str, str] | None,
        description: str | None,
        variant: bool,
        uploaded: int,
        n_up: int,
        n_skip: int,
        lease: PushLease,
    ) -> PushResult:
        vin = self._variant_input(manifest)
        reg = self.registry
        lease.keep_alive()
        if variant:
            reg.add_variant(name, version, vin, lease=lease.id)
            created = False
            if labels:
                reg.set_labels(name, version, dict(labels))
        else:
            info, created = reg.register_version(
                name,
                version,
                [vin],
                aliases=aliases,
                labels=dict(labels or {}),
                description=description,
                lease=lease.id,
            )
            version = info.version
        if created or variant:
            lease.handed_over()  # the registration deleted it in its transaction
        if not created:  # a new version got its aliases in the same transaction
            for a in aliases:
                reg.set_alias(name, a, version)
        return PushResult(
            name,
            version,
            manifest.digest,
            manifest.plugin,
            created=created,
            variant_added=variant,
            bytes_uploaded=uploaded,
            blobs_uploaded=n_up,
            blobs_skipped=n_skip,
            aliases=aliases,
            labels=dict(labels or {}),
        )

    def _push_bundle(
        self,
        path: Path,
        name: str,
        version: str,
        aliases: list[str],
        labels: Mapping[str, str] | None,
        description: str | None,
        variant: bool,
        progress: Any,
    ) -> PushResult:
        from .formats.bundle import Bundle

        bundle = Bundle.open(path)
        bundle.verify()  # every byte checked before anything is stored
        manifest = bundle.manifest
        store = self.store
        uploaded = n_up = n_skip = 0
        with PushLease(self.registry, store) as lease:  # gc leaves these blobs alone
            lease.protect([ref.digest for ref in manifest.blobs] + [manifest.digest])
            for i, ref in enumerate(manifest.blobs):
                if lease.present(ref.digest):
                    n_skip += 1
                    continue
                loc = bundle.locate(i)
                if store.put_file(
                    ref.digest, loc.path, offset=loc.offset, length=loc.size, progress=progress
                ):
                    uploaded += ref.size
                    n_up += 1
            if not lease.present(manifest.digest):
                store.put_bytes(manifest.digest, bundle.manifest_bytes)
            return self._register(
                manifest,
                name,
                version,
                aliases,
                labels,
                description,
                variant,
                uploaded,
                n_up,
                n_skip,
                lease,
            )

    # -- lookups -----------------------------------------------------------------
    def resolve(self, spec: str) -> Any:
        """The version a spec names: ``name``, ``name@^1.2``, ``name@prod``, ``name:1.2.3``."""
        return self.registry.resolve(spec)

    def show(self, spec: str) -> dict[str, Any]:
        """A version with its variants, aliases, labels and each variant's manifest summary."""
        info = self.resolve(spec)
        out = _asdict(info)
        for v in out.get("variants", []):
            try:
                manifest, _ = read_manifest(self.store, v["manifest_digest"])
                v["manifest"] = {
                    "plugin": manifest.plugin,
                    "plugin_version": manifest.plugin_version,
                    "frameworks": dict(manifest.frameworks),
                    "signature": dict(manifest.signature),
                    "metadata": dict(manifest.metadata),
                    "blobs": len(manifest.blobs),
                    "tensors": len(manifest.tensors),
                }
            except Exception as exc:  # show what the registry knows even if the store is down
                v["manifest_error"] = str(exc)
        return out

    def list(self, name: str | None = None, **filters: Any) -> builtins.list[Any]:
        """Models (no name) or one model's versions, newest first."""
        if name is None:
            return builtins.list(self.registry.list_models(**filters).items)
        return builtins.list(self.registry.list_versions(name, **filters).items)

    # -- pull and load ------------------------------------------------------------
    def _source(self, variant: Any, progress: Any = None) -> StoreSource:
        manifest, _ = read_manifest(self.store, variant.manifest_digest)
        cache = self.cache if self.store.local_path(variant.manifest_digest) is None else None
        source = StoreSource(manifest, self.store, cache=cache, progress=progress)
        source.prefetch()
        return source

    def choose(
        self, spec: str, device: str = "cpu", *, variant: str | None = None
    ) -> tuple[Any, Choice]:
        info = self.resolve(spec)
        return info, choose_variant(info.variants, device, want=variant)

    def load(
        self,
        spec: str,
        *,
        device: str = "cpu",
        variant: str | None = None,
        build_missing: bool = False,
        compile_settings: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Load a model version onto ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``)."""
        from .errors import NoCompatibleVariantError
        from .formats.torch_tensorrt.build import load_options, wants_build

        try:
            info, choice = self.choose(spec, device, variant=variant)
        except NoCompatibleVariantError:
            if not build_missing:
                raise
            return self._build_missing(spec, device, compile_settings, options)
        # A portable variant always fits; with build_missing on a GPU, a TensorRT
        # variant is compiled here instead (and pushed back for the next machine).
        if variant is None and wants_build(choice.variant, device, build_missing):
            return self._build_missing(spec, device, compile_settings, options)
        source = self._source(choice.variant)
        plugin = get_plugin(source.manifest.plugin)
        extra = load_options(self, list(info.variants), source)  # refit source for stripped engines
        return plugin.load(source, device=device, **{**extra, **options})

    def _build_missing(
        self, spec: str, device: str, settings: Mapping[str, Any] | None, options: Mapping[str, Any]
    ) -> Any:
        from .formats.torch_tensorrt import build_variant_for

        return build_variant_for(
            self, spec, device=device, settings=dict(settings or {}), options=dict(options)
        )

    def pull(
        self,
        spec: str,
        dest: str | Path,
        *,
        variant: str | None = None,
        device: str = "cpu",
        progress: Any = None,
    ) -> Path:
        """Write the version's native form (``.pt2``, TorchScript, ``.safetensors``, files) to ``dest``."""
        _, choice = self.choose(spec, device, variant=variant)
        source = self._source(choice.variant, progress)
        plugin = get_plugin(source.manifest.plugin)
        dest = Path(dest)
        if dest.is_dir() and plugin.native_suffix(source):
            dest = (
                dest
                / f"{spec.replace('/', '_').replace('@', '-').replace(':', '-')}{plugin.native_suffix(source)}"
            )
        return plugin.export_native(source, dest)

    # -- bundles --------------------------------------------------------------------
    def export_bundle(
        self, spec: str, path: str | Path, *, variant: str | None = None, device: str = "cpu"
    ) -> Manifest:
        """Write one variant of a version as a self-contained ``.mvpk``."""
        from .formats.bundle import Bundle, write_bundle
        from .formats.container import DraftBlob, FileSource

        info, choice = (
            self.choose(spec, device, variant=variant) if variant else self._any_variant(spec)
        )
        source = self._source(choice.variant)
        m = source.manifest
        draft = Draft(
            m.plugin,
            m.plugin_version,
            dict(m.frameworks),
            dict(m.target),
            dict(m.signature),
            dict(m.metadata),
            dict(m.payload),
            [],
            list(m.tensors),
            dict(m.tensor_aliases),
            m.digest_algorithm,
        )
        for i, ref in enumerate(m.blobs):
            loc = source.locate(i)
            draft.blobs.append(
                DraftBlob(ref.role, ref.media_type, FileSource(loc.path, loc.offset, loc.size))
            )
        written = write_bundle(draft, path, ref={"name": info.model, "version": info.version})
        if written.digest != m.digest:
            Path(path).unlink(missing_ok=True)
            raise ConflictError(
                "the exported bundle's manifest differs from the stored one; the store is damaged"
            )
        Bundle.open(path)
        return written

    def _any_variant(self, spec: str) -> tuple[Any, Choice]:
        info = self.resolve(spec)
        try:
            return info, choose_variant(info.variants, "cpu")
        except Exception:
            return info, Choice(info.variants[0], [])

    def import_bundle(
        self, path: str | Path, name: str | None = None, version: str | None = None, **kw: Any
    ) -> PushResult:
        """Register a ``.mvpk`` bundle; name and version default to the ones it was exported as."""
        from .formats.bundle import Bundle

        if name is None or version is None:
            ref = Bundle.open(path).ref or {}
            name = name or ref.get("name")
            version = version or ref.get("version")
            if not name or not version:
                raise UnknownFormatError(
                    f"{path} does not say which model version it is",
                    hint="pass NAME:VERSION to import it",
                )
        return self.push(Path(path), name, version, **kw)

    # -- maintenance ----------------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: str) -> Any:
        return self.registry.set_alias(name, alias, version)

    def remove_alias(self, name: str, alias: str) -> Any:
        return self.registry.remove_alias(name, alias)

    def delete(self, name: str, version: str, *, force: bool = False) -> Any:
        """Delete a version from the registry; its blobs go at the next ``gc``."""
        return self.registry.delete_version(name, version, force=force)

    def verify(self, spec: str | None = None, *, progress: Any = None) -> dict[str, Any]:
        """Re-hash the blobs of one version (or of every variant) in the store.

        Returns ``{"checked": n, "bytes": b, "missing": [...], "damaged": [...]}``.
        """
        from .maintenance import verify

        return verify(self, spec, progress=progress)

    def gc(self, *, grace_seconds: int | None = None, dry_run: bool = False) -> dict[str, Any]:
        """Delete store blobs no variant references, once older than the grace period."""
        from .maintenance import gc

        return gc(self, grace_seconds=grace_seconds, dry_run=dry_run)


def _asdict(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    return dict(obj)


_default: Vault | None = None
_default_key: tuple[str, str] | None = None


def default_vault() -> Vault:
    """The vault of the current settings (``MVAULT_*``), created on first use."""
    global _default, _default_key
    from .config import settings

    s = settings()
    key = (s.registry_url, s.store_url)
    if _default is None or _default_key != key:
        _default, _default_key = Vault(), key
    return _default


def module_push(obj: Any, name: str, version: str | None = None, **kw: Any) -> PushResult:
    """``modelvault.push(obj, "name", "1.0.0")`` on the default vault."""
    return default_vault().push(obj, name, version, **kw)


def module_load(spec: str, **kw: Any) -> Any:
    """``modelvault.load("name@prod", device="cuda:0")`` on the default vault."""
    return default_vault().load(spec, **kw)


def module_pull(spec: str, dest: str | Path, **kw: Any) -> Path:
    return default_vault().pull(spec, dest, **kw)


def module_resolve(spec: str) -> Any:
    return default_vault().resolve(spec)


def module_show(spec: str) -> dict[str, Any]:
    return default_vault().show(spec)


def module_list(name: str | None = None, **kw: Any) -> builtins.list[Any]:
    return default_vault().list(name, **kw)
