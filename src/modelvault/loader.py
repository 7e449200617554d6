"""Resolve a spec, choose the variant that runs here, fetch, verify, deserialize.

The loader ranks a version's variants against this machine (device kind, GPU
compute capability, platform, and for TensorRT variants the TensorRT version
and runtime ABI) through :mod:`modelvault.targets`, fetches the chosen
variant's blobs into local storage in parallel, and hands a verified
:class:`~modelvault.formats.container.ContainerSource` to the format plugin.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BlobNotFoundError, NoCompatibleVariantError, VariantNotFoundError
from .formats.container import BlobLocation
from .digest import verify_bytes
from .formats.manifest import Manifest

if TYPE_CHECKING:
    from .storage.base import BlobStore

__all__ = [
    "Choice",
    "StoreSource",
    "builder_for",
    "choose_variant",
    "device_kind",
    "read_manifest",
    "sibling_options",
]

#: Manifests are small; refuse to pull anything claiming to be one that is not.
MAX_MANIFEST_FETCH = 64 * 1024 * 1024


def device_kind(device: str) -> str:
    """``"cuda"`` for ``cuda`` / ``cuda:N``, else the part before the colon."""
    return device.split(":", 1)[0].strip().lower()


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
    verify_bytes(data, digest, where=f"manifest in {store.url}")
    return Manifest.decode(data), data


class StoreSource:
    """A container whose blobs live in a store; remote ones land in the local cache.

    :meth:`prefetch` brings every blob local in parallel before the plugin
    starts, so deserialization never waits on the network.
    """

    def __init__(
        self, manifest: Manifest, store: BlobStore, *, cache: Any = None, progress: Any = None
    ) -> None:
        self._manifest = manifest
        self.store = store
        self.cache = cache
        self.progress = progress
        self._located: dict[int, BlobLocation] = {}

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def locate(self, index: int) -> BlobLocation:
        if index in self._located:
            return self._located[index]
        ref = self._manifest.blobs[index]
        path = self.store.local_path(ref.digest)
        if path is None:
            if self.cache is None:
                raise BlobNotFoundError(
                    ref.digest, self.store.url, hint="remote stores need a local cache"
                )
            path = self.cache.fetch(self.store, ref.digest, ref.size, progress=self.progress)
        elif not Path(path).exists():
            raise BlobNotFoundError(
                ref.digest, self.store.url, hint="run `mvault verify` to find damaged versions"
            )
        loc = BlobLocation(Path(path), 0, ref.size, ref.digest)
        self._located[index] = loc
        return loc

    def prefetch(self, workers: int = 8) -> None:
        n = len(self._manifest.blobs)
        if n <= 1:
            for i in range(n):
                self.locate(i)
            return
        with ThreadPoolExecutor(max_workers=min(workers, n)) as pool:
            list(pool.map(self.locate, range(n)))
