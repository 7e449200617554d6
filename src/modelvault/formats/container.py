"""Containers in the making and containers being read.

A format plugin turns an object into a :class:`Draft`: the manifest's fields
plus blob *sources* that produce bytes on demand (a file, a buffer, tensor
sections laid out over tensors' own memory). Nothing is copied until the draft
is written, to a store or to a bundle, in one streaming pass; tensors alone are
hashed when added, because where each is stored depends on its digest
(content addressing, format 1.1), and that hash is the blob's digest.

Reading goes the other way: a :class:`ContainerSource` (a bundle, a store, a
cache) hands the plugin a decoded :class:`Manifest` and, per blob, a local file
location; the helpers here read and verify blobs before anything trusts them.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ..digest import (
    CHUNK,
    DEFAULT_ALGORITHM,
    digest_bytes,
    digest_hex_length,
    hash_chunks,
    new_hasher,
    read_verified_into,
)
from ..errors import BlobNotFoundError, ManifestError, PayloadMismatchError
from ._layout import plan
from .manifest import (
    ALIGNMENT,
    DTYPE_SIZES,
    FORMAT_VERSION,
    LIMITS,
    BlobRef,
    Manifest,
    TensorEntry,
    align,
    contiguous_strides,
)

__all__ = [
    "TENSORS_MEDIA_TYPE",
    "BlobLocation",
    "BlobSource",
    "BytesSource",
    "ContainerSource",
    "DirectorySource",
    "Draft",
    "DraftBlob",
    "FileSource",
    "TensorSectionBuilder",
    "TensorSectionSource",
    "create_temp",
    "finalize",
    "make_parents",
    "probe_manifest",
    "read_blob",
    "remove_dirs",
    "tensor_views",
    "write_directory",
]

TENSORS_MEDIA_TYPE = "application/vnd.modelvault.tensors.v1"
_ZEROS = bytes(ALIGNMENT)


class BlobSource(ABC):
    """Something that yields a blob's bytes, front to back, as often as asked."""

    size: int

    @abstractmethod
    def chunks(self) -> Iterator[memoryview]:
        """Yield the bytes in order; the total must equal ``size``."""

    def local_file(self) -> tuple[Path, int] | None:
        """``(path, offset)`` when the bytes already lie in one local file."""
        return None


class BytesSource(BlobSource):
    """Bytes in memory (anything with the buffer protocol, C-contiguous)."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(data).cast("B")
        self.size = self._view.nbytes

    def chunks(self) -> Iterator[memoryview]:
        for start in range(0, self.size, CHUNK):
            yield self._view[start : start + CHUNK]


class FileSource(BlobSource):
    """A byte range of a local file."""

    def __init__(self, path: str | os.PathLike[str], offset: int = 0, length: int | None = None):
        self.path = Path(path)
        self.offset = offset
        self.size = length if length is not None else self.path.stat().st_size - offset

    def local_file(self) -> tuple[Path, int] | None:
        return self.path, self.offset

    def chunks(self) -> Iterator[memoryview]:
        buf = bytearray(min(CHUNK, max(self.size, 1)))
        view = memoryview(buf)
        with self.path.open("rb", buffering=0) as f:
            f.seek(self.offset)
            left = self.size
            while left > 0:
                n = f.readinto(view[: min(len(buf), left)])
                if not n:
                    raise PayloadMismatchError(
                        f"{self.path} shrank while being read ({self.size - left} of {self.size} bytes)"
                    )
                left -= n
                yield view[:n]


class TensorSectionSource(BlobSource):
    """The tensor section: each tensor's raw bytes at its aligned offset, zero-padded."""

    def __init__(self, parts: Sequence[tuple[int, memoryview]], size: int) -> None:
        self._parts = parts
        self.size = size

    def chunks(self) -> Iterator[memoryview]:
        pos = 0
        for offset, view in self._parts:
            if offset > pos:
                yield memoryview(_ZEROS)[: offset - pos]  # gap < ALIGNMENT: offsets are aligned
                pos = offset
            for start in range(0, view.nbytes, CHUNK):
                piece = view[start : start + CHUNK]
                pos += piece.nbytes
                yield piece
        if self.size > pos:
            yield memoryview(bytes(self.size - pos))


def _as_bytes_view(data: Any) -> memoryview:
    try:
        view = memoryview(data)
    except TypeError:
        raise ManifestError(
            f"tensor data must expose the buffer protocol, got {type(data).__name__}"
        ) from None
    if not view.c_contiguous:
        raise ManifestError("tensor data must be C-contiguous")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


class TensorSectionBuilder:
    """Collect tensors, then lay them out as tensor-section blobs.

    ``data`` is anything exposing the buffer protocol with the tensor's raw
    little-endian bytes in row-major order (a numpy array, ``bytes``, a
    ``memoryview`` of a CPU torch tensor's storage). No bytes are copied here.

    :meth:`layout` is what writers use (format 1.1: content-addressed blobs, see
    :mod:`modelvault.formats._layout`); :meth:`build` is the 1.0 layout, every
    tensor in one blob, kept for tests of readers of older containers.

        >>> b = TensorSectionBuilder()
        >>> b.add("w", "float32", (2, 2), bytes(16))
        >>> blobs, entries = b.layout()
        >>> entries[0].blob, entries[0].offset, blobs[0][0].size
        (0, 0, 16)
    """

    def __init__(self) -> None:
        self._items: list[tuple[str, str, tuple[int, ...], tuple[int, ...], memoryview]] = []
        self._names: set[str] = set()
        self.aliases: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._items)

    def add(
        self,
        name: str,
        dtype: str,
        shape: Sequence[int],
        data: Any,
        strides: Sequence[int] | None = None,
    ) -> None:
        """Add one tensor. Checks everything before any byte is written."""
        if name in self._names or name in self.aliases:
            raise ManifestError(f"tensor {name!r} added twice")
        if dtype not in DTYPE_SIZES:
            raise ManifestError(
                f"tensor {name!r}: dtype {dtype!r} is not supported by the tensor section"
            )
        shape_t = tuple(int(d) for d in shape)
        view = _as_bytes_view(data)
        expected = math.prod(shape_t) * DTYPE_SIZES[dtype]
        if view.nbytes != expected:
            raise ManifestError(
                f"tensor {name!r}: {view.nbytes} bytes given, shape {list(shape_t)} of {dtype} needs {expected}"
            )
        strides_t = tuple(strides) if strides is not None else contiguous_strides(shape_t)
        self._items.append((name, dtype, shape_t, strides_t, view))
        self._names.add(name)

    def alias(self, name: str, target: str) -> None:
        """Record ``name`` as another name of tensor ``target`` (tied weights)."""
        if name in self._names or name in self.aliases:
            raise ManifestError(f"tensor {name!r} added twice")
        self.aliases[name] = target

    def layout(
        self, algorithm: str = DEFAULT_ALGORITHM
    ) -> tuple[list[tuple[TensorSectionSource, str]], list[TensorEntry]]:
        """Content-addressed blobs: ``[(source, digest), ...]`` and one entry per tensor.

        Each entry's ``blob`` indexes the returned list. Every tensor is hashed
        once here; blob digests come out of the same pass (a blob holding one
        tensor has that tensor's digest), so writing hashes nothing twice.
        """
        index_of: dict[str, int] = {}
        contents: list[tuple[str, int]] = []
        views: list[memoryview] = []
        content_of: list[int] = []
        for _name, _dtype, _shape, _strides, view in self._items:
            d = digest_bytes(view, algorithm)
            if d not in index_of:
                index_of[d] = len(contents)
                contents.append((d, view.nbytes))
                views.append(view)
            content_of.append(index_of[d])
        planned, where = plan(contents)
        blobs: list[tuple[TensorSectionSource, str]] = []
        for p in planned:
            source = TensorSectionSource([(off, views[i]) for off, i in p.members], p.size)
            if (
                len(p.members) == 1
                and p.members[0][0] == 0
                and p.size == contents[p.members[0][1]][1]
            ):
                digest = contents[p.members[0][1]][0]
            else:
                digest = hash_chunks(source.chunks(), algorithm)
            blobs.append((source, digest))
        entries = []
        for (name, dtype, shape, strides, view), c in zip(self._items, content_of):
            blob, offset = where[c]
            entries.append(TensorEntry(name, dtype, shape, strides, blob, offset, view.nbytes))
        return blobs, entries

    def build(self, blob_index: int) -> tuple[TensorSectionSource, list[TensorEntry]]:
        """The 1.0 layout: every tensor in one blob, in insertion order."""
        entries: list[TensorEntry] = []
        parts: list[tuple[int, memoryview]] = []
        pos = 0
        for name, dtype, shape, strides, view in self._items:
            pos = align(pos)
            entries.append(TensorEntry(name, dtype, shape, strides, blob_index, pos, view.nbytes))
            parts.append((pos, view))
            pos += view.nbytes
        return TensorSectionSource(parts, pos), entries


@dataclass
class DraftBlob:
    role: str
    media_type: str
    source: BlobSource
    digest: str | None = None  # filled in while the draft is written


@dataclass
class Draft:
    """A container ready to be written: manifest fields plus blob sources."""

    plugin: str
    plugin_version: str
    frameworks: dict[str, str] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)
    signature: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)
    blobs: list[DraftBlob] = field(default_factory=list)
    tensors: list[TensorEntry] = field(default_factory=list)
    tensor_aliases: dict[str, str] = field(default_factory=dict)
    digest_algorithm: str = DEFAULT_ALGORITHM
    #: A new container is written in the current format; a stored one written
    #: again (export) keeps its own version, and so its manifest digest.
    format_version: tuple[int, int] = FORMAT_VERSION
    #: The stored bytes of the manifest this draft re-writes (export): when the
    #: finished manifest says the same, it is written as those very bytes, never
    #: deflated again (another zlib build may have deflated it otherwise).
    stored_manifest: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_manifest(cls, m: Manifest) -> Draft:
        """A draft with every field of a stored manifest and no blobs yet (re-export:
        add the blobs in manifest order and the result has the manifest's digest)."""
        return cls(
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
            m.format_version,
            m.encode(),
        )

    def add_blob(self, role: str, media_type: str, source: BlobSource) -> int:
        """Append a blob; returns its index in the manifest's blob list."""
        self.blobs.append(DraftBlob(role, media_type, source))
        return len(self.blobs) - 1

    def add_tensor_section(
        self, builder: TensorSectionBuilder, role: str = "tensors"
    ) -> int | None:
        """Add ``builder``'s tensors as content-addressed tensor-section blobs.

        Large tensors become blobs of their own, small ones loose blobs or packs
        (:mod:`modelvault.formats._layout`), so a tensor's bytes are stored once
        whatever container, order or name holds them. Returns the index of the
        first blob added; None when the builder holds no tensors.
        """
        self.tensor_aliases.update(builder.aliases)
        if not len(builder):
            return None
        first = len(self.blobs)
        blobs, entries = builder.layout(self.digest_algorithm)
        for source, digest in blobs:
            self.blobs.append(DraftBlob(role, TENSORS_MEDIA_TYPE, source, digest))
        self.tensors.extend(replace(e, blob=e.blob + first) for e in entries)
        return first

    @property
    def total_size(self) -> int:
        return sum(b.source.size for b in self.blobs)

    def compute_digests(self, advance: Callable[[int], None] | None = None) -> None:
        """Hash every blob that has no digest yet (one read pass per blob).

        ``advance(n)`` is called after each chunk, for a progress display.
        """
        prefix = self.digest_algorithm + ":"
        for b in self.blobs:
            # A digest of another algorithm (set before digest_algorithm changed) is redone.
            if b.digest is None or not b.digest.startswith(prefix):
                h = new_hasher(self.digest_algorithm)
                for chunk in b.source.chunks():
                    h.update(chunk)
                    if advance is not None:
                        advance(chunk.nbytes)
                b.digest = h.digest_str()


def finalize(draft: Draft) -> Manifest:
    """The manifest of a draft whose blob digests are all known.

    Blobs with identical bytes are listed once: later references are remapped
    to the first, so the manifest never repeats a digest.
    """
    blobs: list[BlobRef] = []
    index_of: dict[str, int] = {}
    remap: dict[int, int] = {}
    for i, b in enumerate(draft.blobs):
        if b.digest is None:
            raise ValueError("finalize() needs every blob's digest; call compute_digests() first")
        if b.digest in index_of:
            remap[i] = index_of[b.digest]
            continue
        index_of[b.digest] = remap[i] = len(blobs)
        blobs.append(BlobRef(b.role, b.media_type, b.source.size, b.digest))
    tensors = tuple(
        TensorEntry(t.name, t.dtype, t.shape, t.strides, remap[t.blob], t.offset, t.nbytes)
        for t in draft.tensors
    )
    payload = _remap_payload(draft.payload, remap)
    m = Manifest(
        plugin=draft.plugin,
        plugin_version=draft.plugin_version,
        blobs=tuple(blobs),
        tensors=tensors,
        tensor_aliases=dict(draft.tensor_aliases),
        frameworks=dict(draft.frameworks),
        target=dict(draft.target),
        signature=dict(draft.signature),
        metadata=dict(draft.metadata),
        payload=payload,
        format_version=draft.format_version,
        digest_algorithm=draft.digest_algorithm,
    )
    if draft.stored_manifest is not None:
        m = m.keeping(draft.stored_manifest)
    return m


def _remap_payload(payload: Mapping[str, Any], remap: Mapping[int, int]) -> dict[str, Any]:
    """Plugins name blobs in their payload by index under keys called ``blob``."""

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {
                k: (remap[x] if k == "blob" and isinstance(x, int) and x in remap else walk(x))
                for k, x in v.items()
            }
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    out = walk(dict(payload))
    assert isinstance(out, dict)
    return out


# ---------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class BlobLocation:
    """Where one blob's bytes lie on local disk: ``size`` bytes of ``path`` from ``offset``.

    A location grants no trust: whoever reads the bytes hashes them against
    ``digest`` as they are read (a cache or a store may have been tampered with
    since the bytes were written).

    ``mappable`` is True when the file is one that is only ever replaced whole,
    by an atomic rename (a local store's blob), so a memory mapping of it keeps
    the bytes that were hashed (a bundle, written the same way, is mappable too);
    cache files, which other processes fill and evict and could cut under a
    mapping, are read into private memory instead.
    """

    path: Path
    offset: int
    size: int
    digest: str
    mappable: bool = False


class ContainerSource(Protocol):
    """A readable container: a decoded manifest and local locations of its blobs."""

    @property
    def manifest(self) -> Manifest: ...

    def locate(self, index: int) -> BlobLocation:
        """Make blob ``index`` available locally (fetching it if needed) and say where."""
        ...


def read_blob(source: ContainerSource, index: int, *, max_size: int = 1 << 34) -> bytes:
    """Read blob ``index`` into memory, verified against its digest."""
    ref = source.manifest.blobs[index]
    if ref.size > max_size:
        raise ManifestError(
            f"blob {index} is {ref.size} bytes; refusing to read more than {max_size} into memory"
        )
    loc = source.locate(index)
    buf = bytearray(ref.size)
    view = memoryview(buf)
    pos = 0

    def take(chunk: memoryview) -> None:
        nonlocal pos
        view[pos : pos + chunk.nbytes] = chunk
        pos += chunk.nbytes

    with loc.path.open("rb", buffering=0) as f:
        f.seek(loc.offset)
        read_verified_into(f, ref.size, ref.digest, take, where=str(loc.path))
    return bytes(buf)


def tensor_views(manifest: Manifest, blob_index: int, data: memoryview) -> dict[str, memoryview]:
    """Byte views of each tensor of one tensor-section blob, by name (no copies)."""
    out = {}
    for t in manifest.tensors:
        if t.blob == blob_index:
            out[t.name] = data[t.offset : t.offset + t.nbytes]
    return out


class DirectorySource:
    """A container whose blobs are files named by digest in one directory.

    The simplest :class:`ContainerSource`; :func:`write_directory` makes one,
    :meth:`open` reads one back (``manifest.msgpack`` next to the blobs).
    """

    MANIFEST_NAME = "manifest.msgpack"

    def __init__(self, manifest: Manifest, directory: Path) -> None:
        self._manifest = manifest
        self.directory = Path(directory)

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> DirectorySource:
        """Read and validate ``directory/manifest.msgpack`` (blobs are verified when read)."""
        path = Path(directory) / cls.MANIFEST_NAME
        with path.open("rb") as f:
            data = f.read(LIMITS.manifest_bytes + 1)
        return cls(Manifest.decode(data), Path(directory))

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @staticmethod
    def blob_name(digest: str) -> str:
        return digest.replace(":", "-")

    def locate(self, index: int) -> BlobLocation:
        ref = self._manifest.blobs[index]
        path = self.directory / self.blob_name(ref.digest)
        if not path.is_file():
            raise BlobNotFoundError(ref.digest, str(self.directory))
        # write_directory puts every blob in place by an atomic rename, like a local store.
        return BlobLocation(path, 0, ref.size, ref.digest, mappable=True)


def probe_manifest(draft: Draft) -> Manifest:
    """The manifest ``draft`` will have, with distinct placeholder digests.

    Validates every field before any byte is written; digests of one algorithm
    all have the same length, so it also encodes to the final manifest's length.
    """
    hex_len = digest_hex_length(draft.digest_algorithm)
    probe = Draft(
        **{
            **draft.__dict__,
            "stored_manifest": None,  # placeholder digests never match the stored bytes
            "blobs": [
                # distinct placeholders, so finalize() does not merge them
                DraftBlob(
                    b.role, b.media_type, b.source, f"{draft.digest_algorithm}:{i:0{hex_len}x}"
                )
                for i, b in enumerate(draft.blobs)
            ],
        }
    )
    manifest = finalize(probe)
    manifest.encode()
    return manifest


def write_directory(draft: Draft, directory: str | os.PathLike[str]) -> DirectorySource:
    """Write a draft's blobs (hashing them on the way) and its manifest into ``directory``.

    The manifest is validated first; each blob and the manifest are written to a
    temporary name, synced and renamed, so a failure leaves no partial file.
    """
    probe_manifest(draft)
    out = Path(directory)
    created = make_parents(out)
    written: list[Path] = []
    tmp: Path | None = None
    try:
        for b in draft.blobs:
            h = new_hasher(draft.digest_algorithm)
            fd, tmp = create_temp(out, ".tmp-")
            size = 0
            with os.fdopen(fd, "wb") as f:
                for chunk in b.source.chunks():
                    h.update(chunk)
                    f.write(chunk)
                    size += chunk.nbytes
                f.flush()
                os.fsync(f.fileno())
            if size != b.source.size:
                raise PayloadMismatchError(
                    f"a {b.role} blob produced {size} bytes, but its source announced {b.source.size}",
                    hint="the source changed while it was being written; try again",
                )
            b.digest = h.digest_str()
            final = out / DirectorySource.blob_name(b.digest)
            existed = final.exists()
            os.replace(tmp, final)
            tmp = None
            if not existed:
                written.append(final)
        manifest = finalize(draft)
        fd, tmp = create_temp(out, ".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(manifest.encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out / DirectorySource.MANIFEST_NAME)
        return DirectorySource(manifest, out)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        for p in written:
            p.unlink(missing_ok=True)
        remove_dirs(created)
        raise


def create_temp(directory: Path, prefix: str) -> tuple[int, Path]:
    """A new, uniquely named file in ``directory``, open for writing.

    Unlike ``tempfile.mkstemp`` (mode 0600) it gets the mode any new file gets
    (0666 less the umask), so the file keeps it after the rename into place.
    """
    for _ in range(100):
        path = Path(directory) / f"{prefix}{os.urandom(8).hex()}.tmp"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {directory}")  # pragma: no cover


def make_parents(directory: Path) -> list[Path]:
    """``mkdir -p directory``; returns the directories it created, deepest last."""
    missing: list[Path] = []
    d = Path(directory)
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
    return list(reversed(missing))


def remove_dirs(created: list[Path]) -> None:
    """Undo :func:`make_parents` after a failure (only directories left empty)."""
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            return
