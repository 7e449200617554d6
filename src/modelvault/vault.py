"""The ``Vault``: a registry and a store, used together.

    >>> from modelvault import Vault
    >>> vault = Vault()                                          # the default: MVAULT_HOME
    >>> vault.push("model.pt2", "resnet50", "1.3.0", aliases=["staging"])   # doctest: +SKIP
    >>> model = vault.load("resnet50@staging", device="cuda:0")  # doctest: +SKIP

The vault is a thin facade: pushing is :mod:`modelvault.push` (pack, upload,
register), loading and pulling are :mod:`modelvault.loader` (resolve, choose,
fetch, verify, deserialize), maintenance is :mod:`modelvault.maintenance`. A push
holds a lease on its blobs from before it looks in the store until the
registration (``maintenance.PushLease``), so ``gc`` never deletes a blob a push reuses.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .errors import ConflictError, InvalidArgumentError, UnknownFormatError

if TYPE_CHECKING:
    from .formats.container import Draft
    from .formats.manifest import Manifest
    from .loader import Choice, LoadPipeline, StoreSource
    from .push import PushResult
    from .registry import Registry
    from .storage.base import BlobStore

# The formats, the load pipeline and the push are imported by the methods that use
# them: `mvault ls`, `show` and `alias` start without them (tests/cli/test_startup.py).

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

    ``read_only=True`` opens the registry for lookups only (``Registry(read_only=True)``):
    nothing is created or migrated, and a missing SQLite file is an error
    rather than a new empty registry.
    """

    def __init__(
        self,
        registry: Registry | str | None = None,
        store: BlobStore | str | None = None,
        *,
        cache: Any = None,
        read_only: bool = False,
    ) -> None:
        self.read_only = read_only
        self._registry_arg = registry
        self._store_arg = store
        self._registry: Registry | None = None
        self._store: BlobStore | None = None
        self._cache = cache
        self._pipeline: LoadPipeline | None = None

    # -- parts, opened lazily ------------------------------------------------
    @property
    def registry(self) -> Registry:
        if self._registry is None:
            arg = self._registry_arg
            if arg is not None and not isinstance(arg, str):
                self._registry = arg
            else:
                # The embedded SQLite file at the head schema: the everyday calls run on
                # the standard library's sqlite3 (registry/lite.py), the rest on a full
                # Registry it opens when asked.
                from .registry.lite import LiteRegistry

                lite = LiteRegistry.open(arg, read_only=self.read_only)
                if lite is not None:
                    self._registry = cast("Registry", lite)
                else:
                    from .registry import Registry

                    self._registry = Registry(arg, read_only=self.read_only)
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
        from .formats.registry import detect, get_plugin

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
        from .maintenance import PushLease
        from .push import (
            PushRequest,
            attach_signatures,
            phase,
            register,
            upload_bundle,
            upload_draft,
        )
        from .registry import SemVer, validate_name

        name, version = _split_ref(name, version)
        validate_name("model", name)
        alias_list = tuple(aliases)
        for a in alias_list:
            validate_name("alias", a)
        request = PushRequest(
            name,
            str(SemVer.parse(version)),
            alias_list,
            dict(labels or {}),
            description,
            variant,
        )
        if isinstance(obj, (str, Path)) and Path(obj).suffix == ".mvpk" and format is None:
            from .formats.bundle import Bundle
            from .formats.validation import validate_container

            bundle = Bundle.open(Path(obj))
            phase(progress, "verifying", bundle.manifest.total_size)
            # every byte checked before anything is stored
            bundle.verify(
                getattr(progress, "advance", None) if hasattr(progress, "phase") else None
            )
            validate_container(bundle)  # and its meaning: nothing is registered that cannot load
            from .signing import check_bundle, current_policy

            policy = current_policy()
            if policy is not None:  # signatures it carries must pass before anything is stored
                check_bundle(policy, request.name, request.version, bundle)
            with PushLease(self.registry, self.store) as lease:  # gc leaves these blobs alone
                upload = upload_bundle(self.store, bundle, lease, progress)
                result = register(self.registry, upload, request, lease, progress)
            return attach_signatures(self.registry, self.store, result, upload)
        if isinstance(obj, (str, Path)):
            phase(progress, f"reading {Path(obj).name}")
        draft = self.pack(obj, format=format, **options)
        if metadata:
            draft.metadata.update(dict(metadata))
        for key, value in dict(options.get("frameworks") or {}).items():
            draft.frameworks.setdefault(str(key), str(value))
        with PushLease(self.registry, self.store) as lease:  # gc leaves these blobs alone
            upload = upload_draft(self.store, draft, lease, progress)
            return register(self.registry, upload, request, lease, progress)

    # -- lookups -----------------------------------------------------------------
    def resolve(self, spec: str) -> Any:
        """The version a spec names: ``name``, ``name@^1.2``, ``name@prod``, ``name:1.2.3``."""
        return self.registry.resolve(spec)

    def show(self, spec: str) -> dict[str, Any]:
        """A version with its variants, aliases, labels and each variant's manifest summary."""
        from .loader import read_manifest

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

    # -- pull and load: the load pipeline ----------------------------------------
    @property
    def pipeline(self) -> LoadPipeline:
        """The load pipeline over this vault's registry, store and cache."""
        if self._pipeline is None:
            from .loader import LoadPipeline

            self._pipeline = LoadPipeline(
                self.registry, self.store, lambda: self.cache, push=self.push
            )
        return self._pipeline

    def _source(self, variant: Any, progress: Any = None) -> StoreSource:
        return self.pipeline.open(variant, progress)

    def choose(
        self, spec: str, device: str = "cpu", *, variant: str | None = None
    ) -> tuple[Any, Choice]:
        """The version a spec names and the variant the loader would pick for ``device``."""
        from .loader import choose_variant

        info = self.pipeline.resolve(spec)  # the pipeline remembers it for the trust check
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
        """Load a model version onto ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

        Every byte handed to the format plugin is hashed in this process against
        the digest the registry recorded (see :mod:`modelvault.loader`).
        """
        from .loader import LoadRequest

        return self.pipeline.load(
            LoadRequest(spec, device, variant, build_missing, dict(compile_settings or {}), options)
        )

    def pull(
        self,
        spec: str,
        dest: str | Path,
        *,
        variant: str | None = None,
        device: str = "cpu",
        progress: Any = None,
        overwrite: bool = False,
    ) -> Path:
        """Write the version's native form (``.pt2``, TorchScript, ``.safetensors``, files) to ``dest``.

        An existing ``dest`` is refused unless ``overwrite=True``; the output
        appears whole or not at all.
        """
        return self.pipeline.pull(
            spec, Path(dest), variant=variant, device=device, progress=progress, overwrite=overwrite
        )

    # -- bundles --------------------------------------------------------------------
    def export_bundle(
        self,
        spec: str,
        path: str | Path,
        *,
        variant: str | None = None,
        device: str = "cpu",
        signatures: bool = True,
    ) -> Manifest:
        """Write one variant of a version as a self-contained ``.mvpk``.

        The variant's signatures go with it (``signatures=False`` leaves them out,
        for readers older than signed bundles: ``docs/FORMAT.md``).
        """
        from .formats.bundle import Bundle, write_bundle
        from .formats.container import Draft, DraftBlob, FileSource
        from .signing import variant_signatures

        info, choice = (
            self.choose(spec, device, variant=variant) if variant else self._any_variant(spec)
        )

        def write(source: StoreSource) -> Manifest:
            m = source.manifest
            draft = Draft.from_manifest(m)
            for i, ref in enumerate(m.blobs):
                loc = source.locate(i)
                draft.blobs.append(
                    DraftBlob(ref.role, ref.media_type, FileSource(loc.path, loc.offset, loc.size))
                )
            # The writer hashes every blob as it copies it; a damaged source shows
            # up as a manifest digest other than the stored one.
            # Every stored signature, each hashed against its digest; what they say is
            # for the importer's policy to judge.
            sigs = (
                [d for _, d in variant_signatures(self.store, choice.variant)] if signatures else []
            )
            written = write_bundle(
                draft, path, ref={"name": info.model, "version": info.version}, signatures=sigs
            )
            if written.digest != m.digest:
                Path(path).unlink(missing_ok=True)
                raise ConflictError(
                    "the exported bundle's manifest differs from the stored one; the store is damaged",
                    hint="run `mvault verify` to find the damaged blob",
                )
            Bundle.open(path)
            return written

        return self.pipeline.deserialize(choice.variant, write, info=info)

    def _any_variant(self, spec: str) -> tuple[Any, Choice]:
        from .loader import Choice, choose_variant

        info = self.pipeline.resolve(spec)
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

    # -- OCI registries ---------------------------------------------------------------
    def push_oci(self, spec: str, ref: str, **kw: Any) -> Any:
        """Push a version to an OCI registry as a ModelPack artifact (:mod:`modelvault.oci`).

        ``ref`` is ``oci://registry/repository[:tag]``; the tag defaults to the version.
        """
        from .oci import push_version

        return push_version(self, spec, ref, **kw)

    def pull_oci(
        self, ref: str, name: str | None = None, version: str | None = None, **kw: Any
    ) -> Any:
        """Register the model artifact at ``ref`` as a version of this vault (:mod:`modelvault.oci`)."""
        from .oci import pull_version

        return pull_version(self, ref, name=name, version=version, **kw)

    # -- maintenance ----------------------------------------------------------------
    def set_alias(self, name: str, alias: str, version: str) -> Any:
        return self.registry.set_alias(name, alias, version)

    def remove_alias(self, name: str, alias: str) -> Any:
        return self.registry.remove_alias(name, alias)

    def delete(self, name: str, version: str, *, force: bool = False) -> Any:
        """Delete a version from the registry; its blobs go at the next ``gc``."""
        return self.registry.delete_version(name, version, force=force)

    def delete_model(self, name: str, *, force: bool = False) -> Any:
        """Delete a model and all its versions; blobs go at the next ``gc``, events stay."""
        return self.registry.delete_model(name, force=force)

    def rename(self, old: str, new: str) -> Any:
        """Rename a model; its versions, aliases and history follow."""
        return self.registry.rename_model(old, new)

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


def __getattr__(name: str) -> Any:
    if name == "PushResult":  # a public name of this module, imported when asked for
        from .push import PushResult

        return PushResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
