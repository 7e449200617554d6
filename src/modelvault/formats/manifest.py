"""The manifest: what a container variant is, encoded with msgpack.

From format 1.2 the stored manifest is that msgpack deflated (a zlib stream):
per-tensor blob entries made manifests the largest thing a small change
stores, and they compress about 3.5x.

A manifest's digest is the variant's identity, so its encoding is canonical:
maps are written with sorted keys, every field is always present, and only
plain msgpack types are used (nil, bool, int, float, str, bin, array, map; no
extension types). Decoding is safe on hostile input: hard size limits, no
extension types, no duplicate keys, and a full schema check before anything
else looks at the data; bytes that are not the canonical encoding of what
they hold are refused, so one manifest has exactly one digest.
``docs/FORMAT.md`` is the specification.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from ..digest import DEFAULT_ALGORITHM, digest_bytes, digest_hex_length, parse_digest
from ..errors import FormatError, ManifestError, UnsupportedVersionError

__all__ = [
    "ALIGNMENT",
    "DEFLATED_FROM",
    "DTYPE_SIZES",
    "FORMAT_VERSION",
    "LIMITS",
    "MAX_INDEX",
    "BlobRef",
    "Manifest",
    "TensorEntry",
    "align",
    "contiguous_strides",
    "decode_msgpack",
    "deflate_reserve",
    "encode_msgpack",
    "is_deflated",
]

#: (major, minor) of the container format this code writes. A reader accepts
#: any minor of a major it knows (minor bumps only add optional meaning).
#: 1.1: tensors are content-addressed (one blob per large tensor, packs of small
#: ones), and tensors with identical bytes may name the same byte range.
#: 1.2: the manifest is stored deflated (a zlib stream of its canonical msgpack).
FORMAT_VERSION = (1, 2)
#: The first minor whose manifests are stored deflated; earlier ones are plain msgpack.
DEFLATED_FROM = (1, 2)
#: zlib level of the writer. Readers accept any valid zlib stream (another zlib
#: build may deflate the same bytes differently); what must be canonical is the
#: msgpack inside, and a decoded manifest keeps the very bytes it was read from.
DEFLATE_LEVEL = 9
#: Tensors and bundle blobs start at multiples of this: mmap- and O_DIRECT-friendly.
ALIGNMENT = 4096
#: The largest dimension, stride or element count torch can index (int64).
MAX_INDEX = (1 << 63) - 1


@dataclass(frozen=True)
class _Limits:
    manifest_bytes: int = 32 * 1024 * 1024
    # Every tensor may be a blob of its own, so blobs are bounded like tensors;
    # the manifest's byte limit is what binds first (about 110 000 tensors that
    # each stand alone, at some 280 bytes of manifest apiece).
    blobs: int = 1_000_000
    tensors: int = 1_000_000
    string: int = 1024 * 1024
    depth: int = 32
    ndim: int = 64
    blob_size: int = 1 << 50  # 1 PiB: anything larger is a broken or hostile size


LIMITS = _Limits()

#: Item size of every dtype the tensor section knows, by its torch-style name.
DTYPE_SIZES: dict[str, int] = {
    "bool": 1,
    "uint8": 1,
    "int8": 1,
    "uint16": 2,
    "int16": 2,
    "uint32": 4,
    "int32": 4,
    "uint64": 8,
    "int64": 8,
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
    "complex64": 8,
    "complex128": 16,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
}

_ROLE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_PLUGIN_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


def align(n: int, alignment: int = ALIGNMENT) -> int:
    """Round ``n`` up to a multiple of ``alignment``."""
    return (n + alignment - 1) // alignment * alignment


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Row-major strides, in elements, of a dense tensor of ``shape``."""
    strides = []
    acc = 1
    for dim in reversed(shape):
        strides.append(acc)
        acc *= max(dim, 1)
    return tuple(reversed(strides))


@dataclass(frozen=True)
class BlobRef:
    """One blob of a container: what it is for, its type, size and digest."""

    role: str
    media_type: str
    size: int
    digest: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "media_type": self.media_type,
            "role": self.role,
            "size": self.size,
        }


@dataclass(frozen=True)
class TensorEntry:
    """One tensor in the tensor section: where its bytes are and how to read them.

    ``offset`` is relative to the start of blob ``blob``; ``strides`` are in
    elements; bytes are little-endian.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    blob: int
    offset: int
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_wire(self) -> dict[str, Any]:
        return {
            "blob": self.blob,
            "dtype": self.dtype,
            "name": self.name,
            "nbytes": self.nbytes,
            "offset": self.offset,
            "shape": list(self.shape),
            "strides": list(self.strides),
        }


@dataclass(frozen=True)
class Manifest:
    """A container variant. Build one, then :meth:`encode`; its :attr:`digest` is its identity."""

    plugin: str
    plugin_version: str
    blobs: tuple[BlobRef, ...] = ()
    tensors: tuple[TensorEntry, ...] = ()
    tensor_aliases: Mapping[str, str] = field(default_factory=dict)
    frameworks: Mapping[str, str] = field(default_factory=dict)
    target: Mapping[str, Any] = field(default_factory=dict)
    signature: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    payload: Mapping[str, Any] = field(default_factory=dict)
    format_version: tuple[int, int] = FORMAT_VERSION
    digest_algorithm: str = DEFAULT_ALGORITHM
    #: Top-level fields added by a newer minor version of the format, kept verbatim
    #: so the manifest re-encodes to the very bytes (and digest) it was read from.
    extra: Mapping[str, Any] = field(default_factory=dict)

    # -- encoding -----------------------------------------------------------
    def to_wire(self) -> dict[str, Any]:
        """The manifest as plain msgpack-ready values (before canonical ordering)."""
        return {
            **dict(self.extra),
            "blobs": [b.to_wire() for b in self.blobs],
            "digest_algorithm": self.digest_algorithm,
            "format": list(self.format_version),
            "frameworks": dict(self.frameworks),
            "metadata": dict(self.metadata),
            "payload": dict(self.payload),
            "plugin": {"name": self.plugin, "version": self.plugin_version},
            "signature": dict(self.signature),
            "target": dict(self.target),
            "tensor_aliases": dict(self.tensor_aliases),
            "tensors": [t.to_wire() for t in self.tensors],
        }

    def encode(self) -> bytes:
        """The stored bytes: canonical msgpack, deflated from 1.2. Validates first,
        so a bad manifest is never written. A manifest read by :meth:`decode`
        encodes to the very bytes it was read from (so it keeps its digest)."""
        stored = self.__dict__.get("_stored")
        if stored is not None:
            return stored  # type: ignore[no-any-return]
        data = self._encode_plain()
        if self.format_version >= DEFLATED_FROM:
            data = zlib.compress(data, DEFLATE_LEVEL)
        object.__setattr__(self, "_stored", data)  # frozen: the bytes never change
        return data

    def same_content(self, other: Manifest) -> bool:
        """Whether two manifests say the same thing, however each is stored."""
        return (
            self.format_version == other.format_version
            and self._encode_plain() == other._encode_plain()
        )

    def keeping(self, stored: bytes) -> Manifest:
        """This manifest, encoded as ``stored`` when those bytes hold exactly it
        (a stored manifest written again keeps its bytes and digest); else itself."""
        try:
            old = Manifest.decode(stored)
        except FormatError:
            return self
        return old if old.same_content(self) else self

    @property
    def plain_size(self) -> int:
        """Length of the canonical msgpack before deflating (what limits apply to)."""
        size = self.__dict__.get("_plain_size")
        if size is None:
            size = len(self._encode_plain())
        return int(size)

    def _encode_plain(self) -> bytes:
        _validate(self)
        data = encode_msgpack(self.to_wire())
        _check_size(self, len(data))
        return data

    @property
    def digest(self) -> str:
        """The digest of the encoded manifest: the variant's identity."""
        return digest_bytes(self.encode(), self.digest_algorithm)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Manifest:
        """Parse and validate manifest bytes. Raises a :class:`FormatError` subclass.

        The msgpack must be the canonical encoding of what it holds (what
        :meth:`encode` would write). From 1.2 it may come deflated (what this
        writer stores) or plain; an earlier manifest is never deflated.
        """
        if len(data) > LIMITS.manifest_bytes:
            raise ManifestError(
                f"manifest is {len(data)} bytes; the limit is {LIMITS.manifest_bytes}"
            )
        raw = bytes(data)
        deflated = is_deflated(raw)
        plain = _inflate(raw) if deflated else raw
        obj = decode_msgpack(plain, what="manifest")
        m = _from_wire(obj)
        if deflated and m.format_version < DEFLATED_FROM:
            v = f"{m.format_version[0]}.{m.format_version[1]}"
            raise ManifestError(
                f"a format {v} manifest is deflated; only format 1.2 and later deflate "
                "(a 1.1 reader could not read it)",
                hint="docs/FORMAT.md section 15 says which versions deflate",
            )
        key = digest_bytes(plain)
        if key in _CANONICAL:
            _validate(m)  # the checks _encode_plain makes, less the re-encoding
            _check_size(m, len(plain))
        elif m._encode_plain() != plain:
            raise ManifestError(
                "manifest is not canonically encoded (map keys out of order, a non-minimal "
                "integer or length, or a 32-bit float)",
                hint="rewrite it with a conforming writer; docs/FORMAT.md gives the rules",
            )
        else:
            _remember_canonical(key)
        object.__setattr__(m, "_stored", raw)
        return m

    # -- conveniences --------------------------------------------------------
    def blobs_with_role(self, role: str) -> list[tuple[int, BlobRef]]:
        return [(i, b) for i, b in enumerate(self.blobs) if b.role == role]

    @property
    def total_size(self) -> int:
        return sum(b.size for b in self.blobs)

    def with_metadata(self, **extra: Any) -> Manifest:
        merged = dict(self.metadata)
        merged.update(extra)
        return replace(self, metadata=merged)


# ---------------------------------------------------------------------------
# msgpack, canonical and safe


def _canonical(obj: Any, depth: int = 0) -> Any:
    if depth > LIMITS.depth:
        raise ManifestError(f"manifest nests deeper than {LIMITS.depth} levels")
    if obj is None or isinstance(obj, (bool, int, str, bytes)):
        if isinstance(obj, int) and not isinstance(obj, bool) and not -(2**63) <= obj < 2**64:
            raise ManifestError(f"integer {obj} does not fit in 64 bits")
        return obj
    if isinstance(obj, float):
        if math.isnan(obj):
            raise ManifestError("NaN is not allowed in a manifest (it breaks canonical encoding)")
        return obj
    if isinstance(obj, Mapping):
        out = {}
        for k in sorted(obj, key=lambda key: (str(type(key)), key)):
            if not isinstance(k, str):
                raise ManifestError(f"manifest map keys must be strings, got {type(k).__name__}")
            out[k] = _canonical(obj[k], depth + 1)
        return out
    if isinstance(obj, (list, tuple)):
        return [_canonical(v, depth + 1) for v in obj]
    raise ManifestError(f"a manifest cannot hold a value of type {type(obj).__name__}")


def encode_msgpack(obj: Any) -> bytes:
    """Canonical msgpack: sorted keys, plain types only."""
    try:
        out = msgpack.packb(_canonical(obj), use_bin_type=True, strict_types=False)
    except UnicodeEncodeError as exc:
        raise ManifestError(f"a manifest string is not valid Unicode: {exc}") from None
    assert isinstance(out, bytes)
    return out


def deflate_reserve(plain_size: int) -> int:
    """Room a bundle keeps for a deflated manifest whose msgpack is ``plain_size``
    bytes: above any deflate stream's worst case (zlib's bound is about
    ``n + n/3000 + 13``), so the header is laid out before the digests are known."""
    return plain_size + (plain_size >> 8) + 64


def is_deflated(data: bytes | bytearray | memoryview) -> bool:
    """True when ``data`` starts with a zlib header (RFC 1950: deflate, no preset
    dictionary, a valid check). A plain manifest starts with a msgpack map
    (0x80-0x8f, 0xde, 0xdf); every zlib first byte (0x08-0x78) is a msgpack
    positive integer, which no manifest is, so the two never overlap."""
    if len(data) < 2:
        return False
    cmf, flg = data[0], data[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and not flg & 0x20 and (cmf * 256 + flg) % 31 == 0


def _inflate(data: bytes) -> bytes:
    """Inflate a stored manifest, refusing a stream that is damaged, truncated,
    followed by other bytes, or that would inflate past the manifest limit."""
    d = zlib.decompressobj()
    limit = LIMITS.manifest_bytes
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ManifestError(f"manifest is not a valid zlib stream: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise ManifestError(
            f"manifest inflates past {limit} bytes, the limit (it is {len(data)} bytes deflated)"
        )
    if not d.eof:
        raise ManifestError("manifest's zlib stream is truncated")
    if d.unused_data:
        raise ManifestError(f"manifest has {len(d.unused_data)} bytes after its zlib stream")
    return out


def _no_ext(code: int, data: bytes) -> Any:
    raise ManifestError(f"msgpack extension type {code} is not allowed")


def _pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for k, v in pairs:
        if not isinstance(k, str):
            raise ManifestError(f"map keys must be strings, got {type(k).__name__}")
        if k in out:
            raise ManifestError(f"duplicate key {k!r:.60}")
        out[k] = v
    return out


def decode_msgpack(data: bytes | bytearray | memoryview, *, what: str) -> Any:
    """Decode untrusted msgpack: one object, no trailing bytes, no extension types."""
    n = len(data)
    try:
        return msgpack.unpackb(
            bytes(data),
            raw=False,
            use_list=True,
            strict_map_key=True,
            object_pairs_hook=_pairs,
            ext_hook=_no_ext,
            timestamp=0,
            max_str_len=min(n, LIMITS.string),
            max_bin_len=min(n, LIMITS.string),
            max_array_len=min(n, LIMITS.tensors),
            max_map_len=min(n, LIMITS.tensors),
            max_ext_len=0,
        )
    except ManifestError:
        raise
    except msgpack.ExtraData:
        raise ManifestError(f"{what} has trailing bytes after its msgpack object") from None
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise ManifestError(f"{what} is not valid msgpack: {exc}") from None


# ---------------------------------------------------------------------------
# schema


def _req(obj: Mapping[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise ManifestError(f"{where} is missing field {key!r}")
    v = obj[key]
    if isinstance(v, bool) and typ is int:
        raise ManifestError(f"{where}.{key} must be an integer, got a boolean")
    if not isinstance(v, typ):
        names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise ManifestError(f"{where}.{key} must be {names}, got {type(v).__name__}")
    return v


def _plain(v: Any, where: str, depth: int = 0) -> Any:
    if depth > LIMITS.depth:
        raise ManifestError(f"{where} nests deeper than {LIMITS.depth} levels")
    if v is None or isinstance(v, (bool, int, float, str, bytes)):
        return v
    if isinstance(v, list):
        return [_plain(x, where, depth + 1) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x, where, depth + 1) for k, x in v.items()}
    raise ManifestError(f"{where} holds a value of type {type(v).__name__}")


def _closed(obj: Mapping[str, Any], keys: frozenset[str], where: str) -> None:
    unknown = set(obj) - keys
    if unknown:
        raise ManifestError(f"{where} has unknown fields: {', '.join(sorted(unknown))[:200]}")


_BLOB_KEYS = frozenset({"digest", "media_type", "role", "size"})
_TENSOR_KEYS = frozenset({"blob", "dtype", "name", "nbytes", "offset", "shape", "strides"})
_PLUGIN_KEYS = frozenset({"name", "version"})


def _str_map(v: Any, where: str) -> dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise ManifestError(f"{where} must map strings to strings")
    return dict(v)


_TOP = {
    "blobs",
    "digest_algorithm",
    "format",
    "frameworks",
    "metadata",
    "payload",
    "plugin",
    "signature",
    "target",
    "tensor_aliases",
    "tensors",
}


#: BLAKE3 digests of plain manifest bytes this process found canonical (encode
#: gives back the very bytes). Canonical form is a property of the bytes alone,
#: so a manifest read again (every load reads its variant's manifest) skips the
#: re-encoding; validation and the size limit still run on every decode.
_CANONICAL: dict[str, None] = {}
_CANONICAL_MAX = 1024
_CANONICAL_LOCK = threading.Lock()


def _remember_canonical(key: str) -> None:
    with _CANONICAL_LOCK:  # decodes run on many threads; eviction iterates the dict
        if len(_CANONICAL) >= _CANONICAL_MAX:
            _CANONICAL.pop(next(iter(_CANONICAL)), None)
        _CANONICAL[key] = None


def _check_size(m: Manifest, size: int) -> None:
    """Refuse ``size`` plain bytes of ``m`` over the limit; record the size otherwise."""
    if size > LIMITS.manifest_bytes:
        raise ManifestError(
            f"manifest is {size} bytes; the limit is {LIMITS.manifest_bytes}",
            hint="keep large data in blobs, not in metadata or payload",
        )
    object.__setattr__(m, "_plain_size", size)


def _from_wire(obj: Any) -> Manifest:
    if not isinstance(obj, dict):
        raise ManifestError(f"manifest must be a map, got {type(obj).__name__}")
    fmt = _req(obj, "format", list, "manifest")
    if len(fmt) != 2 or not all(
        isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 65536 for x in fmt
    ):
        raise ManifestError("manifest.format must be [major, minor], two integers 0..65535")
    if fmt[0] != FORMAT_VERSION[0]:
        raise UnsupportedVersionError(
            f"container format {fmt[0]}.{fmt[1]} is not supported; this modelvault reads {FORMAT_VERSION[0]}.x",
            hint="upgrade modelvault to read it" if fmt[0] > FORMAT_VERSION[0] else None,
        )
    unknown = set(obj) - _TOP
    if unknown and fmt[1] <= FORMAT_VERSION[1]:
        raise ManifestError(f"manifest has unknown fields: {', '.join(sorted(unknown))[:200]}")
    extra = {k: _plain(obj[k], f"manifest.{k}") for k in sorted(unknown)}
    plugin = _req(obj, "plugin", dict, "manifest")
    _closed(plugin, _PLUGIN_KEYS, "manifest.plugin")
    blobs_raw = _req(obj, "blobs", list, "manifest")
    if len(blobs_raw) > LIMITS.blobs:
        raise ManifestError(f"manifest lists {len(blobs_raw)} blobs; the limit is {LIMITS.blobs}")
    blobs = []
    for i, b in enumerate(blobs_raw):
        w = f"blobs[{i}]"
        if not isinstance(b, dict):
            raise ManifestError(f"{w} must be a map")
        _closed(b, _BLOB_KEYS, w)
        blobs.append(
            BlobRef(
                role=_req(b, "role", str, w),
                media_type=_req(b, "media_type", str, w),
                size=_req(b, "size", int, w),
                digest=_req(b, "digest", str, w),
            )
        )
    tensors_raw = _req(obj, "tensors", list, "manifest")
    if len(tensors_raw) > LIMITS.tensors:
        raise ManifestError(
            f"manifest lists {len(tensors_raw)} tensors; the limit is {LIMITS.tensors}"
        )
    tensors = []
    for i, t in enumerate(tensors_raw):
        w = f"tensors[{i}]"
        if not isinstance(t, dict):
            raise ManifestError(f"{w} must be a map")
        _closed(t, _TENSOR_KEYS, w)
        shape = _req(t, "shape", list, w)
        strides = _req(t, "strides", list, w)
        for name, seq in (("shape", shape), ("strides", strides)):
            if not all(isinstance(x, int) and not isinstance(x, bool) for x in seq):
                raise ManifestError(f"{w}.{name} must be a list of integers")
        tensors.append(
            TensorEntry(
                name=_req(t, "name", str, w),
                dtype=_req(t, "dtype", str, w),
                shape=tuple(shape),
                strides=tuple(strides),
                blob=_req(t, "blob", int, w),
                offset=_req(t, "offset", int, w),
                nbytes=_req(t, "nbytes", int, w),
            )
        )
    return Manifest(
        plugin=_req(plugin, "name", str, "manifest.plugin"),
        plugin_version=_req(plugin, "version", str, "manifest.plugin"),
        blobs=tuple(blobs),
        tensors=tuple(tensors),
        tensor_aliases=_str_map(
            _req(obj, "tensor_aliases", dict, "manifest"), "manifest.tensor_aliases"
        ),
        frameworks=_str_map(_req(obj, "frameworks", dict, "manifest"), "manifest.frameworks"),
        target=_plain(_req(obj, "target", dict, "manifest"), "manifest.target"),
        signature=_plain(_req(obj, "signature", dict, "manifest"), "manifest.signature"),
        metadata=_plain(_req(obj, "metadata", dict, "manifest"), "manifest.metadata"),
        payload=_plain(_req(obj, "payload", dict, "manifest"), "manifest.payload"),
        format_version=(fmt[0], fmt[1]),
        digest_algorithm=_req(obj, "digest_algorithm", str, "manifest"),
        extra=extra,
    )


def _span_elements(shape: Sequence[int], strides: Sequence[int]) -> int:
    """Elements from the first to one past the last element a strided view touches."""
    if any(d == 0 for d in shape):
        return 0
    return 1 + sum((d - 1) * s for d, s in zip(shape, strides))


def _validate(m: Manifest) -> None:
    major, minor = m.format_version
    if major != FORMAT_VERSION[0]:
        raise UnsupportedVersionError(
            f"container format {major}.{minor} is not supported; this modelvault writes {FORMAT_VERSION[0]}.x"
        )
    if set(m.extra) & _TOP:
        raise ManifestError(f"extra fields {sorted(set(m.extra) & _TOP)} shadow standard fields")
    if m.extra and minor <= FORMAT_VERSION[1]:
        raise ManifestError(
            f"manifest has unknown fields: {', '.join(sorted(m.extra))[:200]}",
            hint="only a newer minor version of the format may add fields",
        )
    if not isinstance(m.plugin, str) or not _PLUGIN_RE.match(m.plugin):
        raise ManifestError(
            f"plugin name {m.plugin!r:.80} is not valid (lowercase letters, digits, '_.-'; at most 64)"
        )
    if not (0 < len(m.plugin_version) <= 64) or not m.plugin_version.isprintable():
        raise ManifestError(
            f"plugin version must be 1-64 printable characters, got {m.plugin_version!r:.80}"
        )
    digest_hex_length(m.digest_algorithm)
    seen_digests: set[str] = set()
    for i, b in enumerate(m.blobs):
        if not _ROLE_RE.match(b.role):
            raise ManifestError(f"blobs[{i}].role {b.role!r:.80} is not valid")
        if not (0 < len(b.media_type) <= 255) or not b.media_type.isprintable():
            raise ManifestError(f"blobs[{i}].media_type must be 1-255 printable characters")
        if not 0 <= b.size <= LIMITS.blob_size:
            raise ManifestError(f"blobs[{i}].size {b.size} is out of range")
        algo, _ = parse_digest(b.digest)
        if algo != m.digest_algorithm:
            raise ManifestError(
                f"blobs[{i}].digest uses {algo}; this manifest's digest_algorithm is {m.digest_algorithm}"
            )
        if b.digest in seen_digests:
            raise ManifestError(f"blobs[{i}] repeats digest {b.digest}; list each blob once")
        seen_digests.add(b.digest)
    names: set[str] = set()
    extents: dict[int, list[tuple[int, int, str]]] = {}
    for i, t in enumerate(m.tensors):
        w = f"tensors[{i}] ({t.name!r:.60})"
        if not t.name or len(t.name) > 1024 or not t.name.isprintable():
            raise ManifestError(f"tensors[{i}].name must be 1-1024 printable characters")
        if t.name in names:
            raise ManifestError(f"{w}: duplicate tensor name")
        names.add(t.name)
        if t.dtype not in DTYPE_SIZES:
            raise ManifestError(f"{w}: unknown dtype {t.dtype!r:.40}")
        if len(t.shape) > LIMITS.ndim or len(t.strides) != len(t.shape):
            raise ManifestError(
                f"{w}: shape and strides must have the same length (at most {LIMITS.ndim})"
            )
        if any(d < 0 for d in t.shape) or any(s < 0 for s in t.strides):
            raise ManifestError(f"{w}: negative dimension or stride")
        # torch indexes with int64: a dimension, stride or element count past it
        # is refused here rather than by a TypeError or C++ error at load.
        if any(d > MAX_INDEX for d in t.shape) or any(s > MAX_INDEX for s in t.strides):
            raise ManifestError(f"{w}: a dimension or stride exceeds 2**63 - 1")
        if t.numel > MAX_INDEX or _span_elements(t.shape, t.strides) * 16 > MAX_INDEX:
            raise ManifestError(
                f"{w}: shape {list(t.shape)[:8]} with strides {list(t.strides)[:8]} spans more elements than torch can index"
            )
        if not 0 <= t.blob < len(m.blobs):
            raise ManifestError(
                f"{w}: blob index {t.blob} is out of range (container has {len(m.blobs)} blobs)"
            )
        item = DTYPE_SIZES[t.dtype]
        numel = t.numel
        if numel * item != t.nbytes:
            raise ManifestError(
                f"{w}: nbytes {t.nbytes} disagrees with shape {list(t.shape)} x {item}-byte {t.dtype} = {numel * item}"
            )
        if _span_elements(t.shape, t.strides) > numel:
            raise ManifestError(
                f"{w}: strides {list(t.strides)} reach past the tensor's {numel} elements"
            )
        if t.offset < 0 or t.offset % ALIGNMENT or t.offset > LIMITS.blob_size:
            raise ManifestError(
                f"{w}: offset {t.offset} is not a non-negative multiple of {ALIGNMENT}"
            )
        blob = m.blobs[t.blob]
        if t.offset + t.nbytes > blob.size:
            raise ManifestError(
                f"{w}: bytes {t.offset}..{t.offset + t.nbytes} lie past the end of blob {t.blob} ({blob.size} bytes)"
            )
        if t.nbytes:  # an empty range overlaps nothing
            extents.setdefault(t.blob, []).append((t.offset, t.offset + t.nbytes, t.name))
    for blob_index, spans in extents.items():
        spans.sort()
        # From 1.1, tensors with identical bytes may name the very same range (each
        # is still its own tensor); any other overlap is refused. Sorted by start, a
        # range overlapping another overlaps its neighbour, or equals it.
        for (s0, e0, n0), (s1, e1, n1) in itertools.pairwise(spans):
            if s1 < e0 and ((s0, e0) != (s1, e1) or minor < 1):
                raise ManifestError(
                    f"tensors {n0!r:.60} and {n1!r:.60} overlap in blob {blob_index} ({s0}..{e0} and {s1}..)"
                )
    for alias, target in m.tensor_aliases.items():
        if not alias or len(alias) > 1024 or not alias.isprintable():
            raise ManifestError(f"tensor alias {alias!r:.60} must be 1-1024 printable characters")
        if alias in names:
            raise ManifestError(f"tensor alias {alias!r:.60} is also a tensor name")
        if target not in names:
            raise ManifestError(
                f"tensor alias {alias!r:.60} points at unknown tensor {target!r:.60}"
            )
