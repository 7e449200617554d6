"""The load pipeline: resolve, choose, fetch, verify, deserialize.

Every way a version leaves the vault (``load``, ``pull``, ``export``) goes
through :class:`LoadPipeline`:

1. **resolve**: the registry turns a spec (``resnet50@prod``) into a version
   and its variants, each named by the digest of its manifest;
2. **choose**: :mod:`modelvault.targets` ranks the variants against this
   machine (or the one asked for by digest or format);
3. **fetch**: the manifest is read from the store and hashed against the
   digest the registry recorded before it is decoded; every blob is made
   local (the store's own file, or the local cache for a remote store);
4. **verify**: nothing here or in the cache marks a blob trusted. Bytes are
   trusted only while they are hashed, in this process, against the digest the
   manifest names, by the reader that hands them on
   (:func:`modelvault.digest.read_verified_into`, the weight streamer
   :mod:`modelvault.formats._torch.stream`), so a cache or store file changed
   between two loads is caught on the second;
5. **deserialize**: the format plugin rebuilds the object from the verified
   bytes.

A blob that fails verification while it was read from the cache is removed
from the cache and fetched again from the store, once; a second failure, or a
damaged store blob, is an :class:`~modelvault.errors.IntegrityError` naming the
blob's digest and where it was read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .digest import verify_bytes
from .errors import (
    BlobNotFoundError,
    IntegrityError,
    NoCompatibleVariantError,
    OutputExistsError,
    VariantNotFoundError,
)
from .formats.container import BlobLocation
from .formats.manifest import Manifest

if TYPE_CHECKING:
    from .registry import Registry
    from .storage.base import BlobStore
    from .storage.cache import BlobCache

__all__ = [
    "Choice",
    "LoadPipeline",
    "LoadRequest",
    "StoreSource",
    "builder_for",
    "choose_variant",
    "device_kind",
    "read_manifest",
    "sibling_options",
]

#: Manifests are small; refuse to pull anything claiming to be one that is not.
MAX_MANIFEST_FETCH = 64 * 1024 * 1024

T = TypeVar("T")
_log = logging.getLogger("modelvault")


def device_kind(device: str) -> str:
    """``"cuda"`` for ``cuda`` / ``cuda:N``, else the part before the colon."""
    return device.split(":", 1)[0].strip().lower()


@dataclass(frozen=True)
class LoadRequest:
    """What a caller asks the pipeline for.

    ``variant`` picks a variant by manifest digest (or a unique prefix) or by
    format name instead of ranking; ``options`` go to the format plugin.
    """

    spec: str
    device: str = "cpu"
    variant: str | None = None
    build_missing: bool = False
    compile_settings: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Choice:
    """The variant the loader picked, and why the others were passed over."""

    variant: Any
    rejected: list[tuple[str, str]]


def _label(v: Any) -> str:
    return f"{v.format}/{v.kind} {v.manifest_digest[:19]}"


def choose_variant(
    variants: Sequence[Any], device: str, *, want: str | None = None, machine: Any = None
) -> Choice:
    """Pick the best variant of a version for ``device`` on this machine.

    ``want`` selects by manifest digest (or a unique prefix of it) or by
    format name instead of ranking. When nothing fits, the error lists every
    variant with the reason it was rejected.
    """
    if not variants:
        raise VariantNotFoundError("this version has no variants")
    if want:
        picked = [
            v
            for v in variants
            if v.manifest_digest == want or v.manifest_digest.startswith(want) or v.format == want
        ]
        if len(picked) != 1:
            known = ", ".join(_label(v) for v in variants)
            raise VariantNotFoundError(
                f"{'no' if not picked else 'more than one'} variant matches {want!r}; the version has: {known}"
            )
        variants = picked
    from . import targets

    if machine is None:
        machine = targets.Machine.probe(device)
    fitting, rejected = targets.rank(
        [(v.manifest_digest, v.requirements) for v in variants], machine, device
    )
    by_digest = {v.manifest_digest: v for v in variants}
    if not fitting:
        reasons = [(_label(by_digest[d]), why) for d, why in rejected]
        raise NoCompatibleVariantError(
            f"no variant of this version can run on {device} here",
            reasons,
            hint="push a portable variant, or load with build_missing=True to compile one here",
        )
    return Choice(by_digest[fitting[0]], [(_label(by_digest[d]), why) for d, why in rejected])


def sibling_options(plugin: Any, manifest: Manifest, view: Any) -> dict[str, Any]:
    """``plugin.load`` keywords for the sibling variants ``plugin.siblings_needed`` names:
    each the verified source of the version's variant of that format."""
    out: dict[str, Any] = {}
    for need in plugin.siblings_needed(manifest):
        match = [v for v in view.variants if v.format == need.format]
        if not match:
            raise NoCompatibleVariantError(need.why, [])
        out[need.option] = view.source(match[0])
    return out


def builder_for(device: str, best: Any | None, view: Any) -> Any | None:
    """The first plugin, in detection order, that would build a variant for ``device``
    (``FormatPlugin.can_build``), or None. Only plugins whose dependencies are importable
    are asked; called only when the caller asked to build on miss."""
    from .formats.registry import available, get_plugin, known_plugins

    for name in known_plugins():
        if available(name):
            plugin = get_plugin(name)
            if plugin.can_build(device, best, view):
                return plugin
    return None


def read_manifest(store: BlobStore, digest: str) -> tuple[Manifest, bytes]:
    """Fetch a manifest by digest from a store, verify it, decode it."""
    info = store.stat(digest)
    if info is None:
        raise BlobNotFoundError(
            digest,
            store.url,
            hint="the registry names a manifest the store lacks; run `mvault verify`",
        )
    if info.size > MAX_MANIFEST_FETCH:
        raise BlobNotFoundError(
            digest, store.url, hint=f"object is {info.size} bytes, too large for a manifest"
        )
    data = store.read_range(digest, 0, info.size)
    verify_bytes(data, digest, where=f"manifest in {store.where(digest)}")
    return Manifest.decode(data), data


class StoreSource:
    """A container whose blobs live in a store; remote ones land in the local cache.

    :meth:`prefetch` brings every blob local in parallel before the plugin
    starts, so deserialization never waits on the network. A location says
    where the bytes are, never that they are good: readers hash what they read.
    Blobs of the store itself (a local directory, whose files are only ever
    replaced by atomic renames) may be mapped; cache files are read into
    private memory, since other processes fill and evict the cache.
    """

    def __init__(
        self,
        manifest: Manifest,
        store: BlobStore,
        *,
        cache: Any = None,
        progress: Any = None,
        stream: bool = False,
        fill_cache: bool = True,
    ) -> None:
        self._manifest = manifest
        self.store = store
        self.cache = cache
        self.progress = progress
        #: Tensor blobs the cache lacks are streamed by the reader (see :meth:`remote`).
        remote_store = bool(manifest.blobs) and store.local_path(manifest.blobs[0].digest) is None
        self.stream = stream and remote_store
        self.fill_cache = fill_cache
        self._located: dict[int, BlobLocation] = {}
        #: Digests of blobs this source handed out from the cache.
        self.from_cache: set[str] = set()

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def locate(self, index: int) -> BlobLocation:
        if index in self._located:
            return self._located[index]
        ref = self._manifest.blobs[index]
        path = self.store.local_path(ref.digest)
        mappable = path is not None
        if path is None:
            if self.cache is None:
                raise BlobNotFoundError(
                    ref.digest, self.store.url, hint="remote stores need a local cache"
                )
            path = self.cache.fetch(self.store, ref.digest, ref.size, progress=self.progress)
            self.from_cache.add(ref.digest)
        elif not Path(path).exists():
            raise BlobNotFoundError(
                ref.digest, self.store.url, hint="run `mvault verify` to find damaged versions"
            )
        loc = BlobLocation(Path(path), 0, ref.size, ref.digest, mappable=mappable)
        self._located[index] = loc
        return loc

    def remote(self, index: int) -> tuple[Any, Any] | None:
        """``(reader, cache fill)`` to stream blob ``index`` from the store, or None to read it locally.

        Only for a streaming source (a GPU load from a remote store) and a blob
        the cache lacks; the fill is None when the cache is skipped or cannot
        take it. The caller hashes every byte, commits the fill only when the
        blob verified and aborts it otherwise, so nothing unverified is cached.
        """
        if not self.stream or index in self._located:
            return None
        ref = self._manifest.blobs[index]
        if self.cache is not None and self.cache.contains(ref.digest):
            return None
        reader = self.store.range_reader(ref.digest, ref.size)
        if reader is None:
            return None
        fill = (
            self.cache.filler(ref.digest, ref.size)
            if self.cache is not None and self.fill_cache
            else None
        )
        return reader, fill

    def prefetch(self, workers: int = 8) -> None:
        """Make every blob local in parallel (a streaming source leaves its tensor blobs to the reader)."""
        skip = {t.blob for t in self._manifest.tensors} if self.stream else set()
        todo = [i for i in range(len(self._manifest.blobs)) if i not in skip]
        if self.store.holds_files or len(todo) <= 1:
            for i in todo:  # nothing to fetch from a local store: a stat each, no thread pool
                self.locate(i)
            return
        with ThreadPoolExecutor(max_workers=min(workers, len(todo))) as pool:
            list(pool.map(self.locate, todo))


class LoadPipeline:
    """Resolve, choose, fetch, verify and deserialize, over one registry and one store.

    ``cache`` is called for the local cache the first time a remote blob is
    needed (a local store never opens one); ``push`` is how a variant built on
    a miss is pushed back (the vault's own push).
    """

    def __init__(
        self,
        registry: Registry,
        store: BlobStore,
        cache: Callable[[], BlobCache],
        push: Callable[..., Any] | None = None,
    ) -> None:
        self.registry = registry
        self.store = store
        self._cache = cache
        self.push = push
        # Which version each variant resolved through here belongs to: the trust
        # check needs the name and version a signature must name. Keyed by id()
        # with the variant kept alive, so an id is never reused while stored.
        self._owners: dict[int, tuple[Any, Any]] = {}

    # -- the stages -----------------------------------------------------------
    def resolve(self, spec: str) -> Any:
        info = self.registry.resolve(spec)
        if len(self._owners) > 256:
            self._owners.clear()
        for v in info.variants:
            self._owners[id(v)] = (v, info)
        return info

    def choose(self, info: Any, device: str, want: str | None = None) -> Choice:
        return choose_variant(info.variants, device, want=want)

    def open(
        self,
        variant: Any,
        progress: Any = None,
        *,
        info: Any = None,
        enforce: bool = True,
        stream: bool = False,
        fill_cache: bool = True,
    ) -> StoreSource:
        """The variant's container: manifest verified and decoded, every blob made local.

        With a trust policy in force (``MVAULT_TRUST``), the variant's signatures are
        checked right after its manifest, before any blob is fetched or handed on.
        With ``stream`` (a GPU load), tensor blobs of a remote store that the cache
        lacks are left remote: the reader streams them into its staging buffers,
        verifies them and fills the cache in the same pass (unless ``fill_cache``
        is off).
        """
        manifest, _ = read_manifest(self.store, variant.manifest_digest)
        if enforce:
            self.check_trust(variant, manifest, info)
        cache = self._cache() if self.store.local_path(variant.manifest_digest) is None else None
        source = StoreSource(
            manifest,
            self.store,
            cache=cache,
            progress=progress,
            stream=stream,
            fill_cache=fill_cache,
        )
        source.prefetch()
        return source

    def check_trust(self, variant: Any, manifest: Manifest, info: Any = None) -> None:
        """Refuse ``variant`` unless the trust policy (if any) accepts one of its signatures."""
        from .signing import check_trust, current_policy, variant_signatures

        policy = current_policy()
        if policy is None:
            return
        if info is None:
            owner = self._owners.get(id(variant))
            if owner is None or owner[0] is not variant:
                from .errors import UntrustedError

                raise UntrustedError(
                    f"variant {variant.manifest_digest[:19]} was not resolved through this "
                    "pipeline; the trust policy cannot tell which version it must be signed as"
                )
            info = owner[1]
        check_trust(policy, info, variant, manifest, variant_signatures(self.store, variant))

    def deserialize(
        self,
        variant: Any,
        use: Callable[[StoreSource], T],
        *,
        progress: Any = None,
        info: Any = None,
        stream: bool = False,
        fill_cache: bool = True,
    ) -> T:
        """``use(source)`` on the variant's container; a damaged cache entry is fetched again once.

        ``use`` is where bytes are read (and hashed as they are read). When it
        fails on a blob that came from the cache, that entry is removed and the
        container is opened afresh, so the blob comes from the store again.
        """
        how = {"info": info, "stream": stream, "fill_cache": fill_cache}
        source = self.open(variant, progress, **how)
        try:
            return use(source)
        except IntegrityError as exc:
            bad = exc.expected if exc.expected in source.from_cache else None
            if bad is None or source.cache is None:
                raise
            _log.warning(
                "cache entry %s (blob %s) failed verification (%s); fetching it again from %s",
                exc.where or source.cache.path_for(bad),
                bad,
                exc.actual,
                self.store.url,
            )
            source.cache.discard(bad)
            with contextlib.suppress(AttributeError):
                exc.__traceback__ = None  # drop frames that hold half-loaded buffers
        source = self.open(variant, progress, **how)
        return use(source)

    # -- what callers ask for -------------------------------------------------
    def view(self, info: Any) -> Any:
        """What a format plugin may see of a version (:class:`~modelvault.formats.base.VersionView`)."""
        from .formats.base import VersionView

        return VersionView(
            info.model,
            info.version,
            info.variants,
            lambda v: read_manifest(self.store, v.manifest_digest)[0],
            self.open,
        )

    def load(self, request: LoadRequest) -> Any:
        """The model of ``request.spec`` on ``request.device``.

        With ``build_missing``, the first format plugin whose ``can_build`` says so
        builds a variant here (e.g. a TensorRT engine for this GPU), and it is pushed
        back as a variant of the same version for the next machine of this kind.
        The pipeline knows no format by name: siblings and builds are plugin hooks.
        """
        from .formats.registry import get_plugin

        info = self.resolve(request.spec)
        miss: NoCompatibleVariantError | None = None
        best: Any = None
        try:
            best = self.choose(info, request.device, request.variant).variant
        except NoCompatibleVariantError as exc:
            if not request.build_missing:
                raise
            miss = exc
        view = self.view(info)
        if request.build_missing and request.variant is None:
            builder = builder_for(request.device, best, view)
            if builder is not None:
                if self.push is None:
                    raise NoCompatibleVariantError(
                        "a variant would be built here, but this pipeline cannot push it back", []
                    )
                built = builder.build(
                    view,
                    device=request.device,
                    settings=dict(request.compile_settings),
                    options=dict(request.options),
                )
                self.push(
                    built.obj,
                    info.model,
                    info.version,
                    format=builder.name,
                    variant=True,
                    **built.push_options,
                )
                return built.obj
        if miss is not None:
            raise miss

        options = dict(request.options)
        # A GPU load from a remote store streams its weights (see open); options
        # stream=False / fill_cache=False turn that, or the cache fill, off.
        stream = bool(options.pop("stream", True)) and device_kind(request.device) == "cuda"
        fill_cache = bool(options.pop("fill_cache", True))

        def use(source: StoreSource) -> Any:
            plugin = get_plugin(source.manifest.plugin)
            extra = sibling_options(plugin, source.manifest, view)  # e.g. refit weights
            return plugin.load(source, device=request.device, **{**extra, **options})

        return self.deserialize(best, use, info=info, stream=stream, fill_cache=fill_cache)

    def pull(
        self,
        spec: str,
        dest: Path,
        *,
        variant: str | None = None,
        device: str = "cpu",
        progress: Any = None,
        overwrite: bool = False,
    ) -> Path:
        """Write the chosen variant's native form to ``dest`` (a file, or into a directory).

        The output is written under a temporary name beside ``dest`` and moved
        into place whole, so a failed or interrupted pull leaves nothing behind
        and readers never see half a file. An existing ``dest`` is refused
        unless ``overwrite``; missing parent directories are created.
        """
        from .formats.container import make_parents, remove_dirs
        from .formats.registry import get_plugin

        info = self.resolve(spec)
        choice = self.choose(info, device, variant)
        manifest, _ = read_manifest(self.store, choice.variant.manifest_digest)
        plugin = get_plugin(manifest.plugin)
        suffix = plugin.native_suffix(StoreSource(manifest, self.store))
        target = dest
        if target.is_dir() and suffix:
            safe = spec.replace("/", "_").replace("@", "-").replace(":", "-")
            target = target / f"{safe}{suffix}"
        if (target.exists() or target.is_symlink()) and not overwrite:
            raise OutputExistsError(target)
        created = make_parents(target.parent)
        staging = target.with_name(f".{target.name}.mvault-{os.getpid()}-{id(self):x}.part")

        def use(source: StoreSource) -> Path:
            _remove(staging)
            plugin.export_native(source, staging)
            return staging

        try:
            self.deserialize(choice.variant, use, progress=progress, info=info)
            _move_into_place(staging, target)
        except BaseException:
            _remove(staging)
            remove_dirs(created)
            raise
        return target


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _move_into_place(staging: Path, target: Path) -> None:
    """``staging`` becomes ``target``; an existing ``target`` (file or tree) is replaced whole."""
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(f".{target.name}.mvault-old-{os.getpid()}")
        os.replace(target, old)
        try:
            os.replace(staging, target)
        except BaseException:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(staging, target)
