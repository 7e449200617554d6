"""The single-file bundle (``.mvpk``): a container for hand-off and offline use.

Layout (``docs/FORMAT.md`` is the specification)::

    [0, 64)                 preamble: magic, version, lengths, CRC-32s
    [64, 64+M)              manifest (canonical msgpack)
    [64+M, 64+M+I)          index (msgpack): manifest digest, [offset, size] per blob, ref,
                            signatures (preamble flag 0x1)
    zero padding            up to data_offset, a multiple of 4096
    blob 0, pad, blob 1 ... each blob at the next multiple of 4096

Everything a reader needs comes before the data, so a bundle can be streamed
front to back, and any blob can be fetched by one ranged read. Blob digests are
the same as in a store.

Signatures ride in the index, not the manifest, which they sign
(:mod:`._bundle_index`).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..digest import (
    CHUNK,
    damaged,
    digest_bytes,
    new_hasher,
    parse_digest,
    placeholder_digest,
    read_verified_into,
)
from ..errors import (
    CorruptError,
    InvalidArgumentError,
    ManifestError,
    PayloadMismatchError,
    TruncatedError,
    UnknownFormatError,
    UnsupportedVersionError,
)
from ._bundle_index import (
    FLAG_DEFLATED_MANIFEST,
    FLAG_SIGNATURES,
    KNOWN_FLAGS,
    MAX_SIGNATURES,
    check_ref,
    check_signatures,
    encode_index,
    sorted_signatures,
)
from .container import (
    BlobLocation,
    Draft,
    create_temp,
    finalize,
    make_parents,
    probe_manifest,
    read_blob,
    remove_dirs,
)
from .manifest import (
    DEFLATED_FROM,
    FORMAT_VERSION,
    LIMITS,
    Manifest,
    align,
    decode_msgpack,
    deflate_reserve,
    encode_msgpack,
    is_deflated,
)

__all__ = [
    "FLAG_DEFLATED_MANIFEST",
    "FLAG_SIGNATURES",
    "MAGIC",
    "MAX_SIGNATURES",
    "PREAMBLE_SIZE",
    "Bundle",
    "stream_blobs",
    "write_bundle",
]

MAGIC = b"\x89MVPK\r\n\x1a"  # 8 bytes, PNG-style: high bit, CRLF, DOS EOF
PREAMBLE_SIZE = 64
# magic, major, minor, flags, manifest_len, index_len, data_offset, file_len, index_crc, reserved
_PRE = struct.Struct("<8sHHIQQQQI8s")
assert _PRE.size == 60
assert len(MAGIC) == 8
MAX_INDEX = 16 * 1024 * 1024

Progress = Callable[[int], None]


def _preamble(
    manifest_len: int,
    index_len: int,
    data_offset: int,
    file_len: int,
    index_crc: int,
    minor: int,
    flags: int = 0,
) -> bytes:
    body = _PRE.pack(
        MAGIC,
        FORMAT_VERSION[0],
        minor,  # the manifest's own: a 1.0 container exported again stays 1.0
        flags,
        manifest_len,
        index_len,
        data_offset,
        file_len,
        index_crc,
        bytes(8),
    )
    return body + struct.pack("<I", zlib.crc32(body))


def _layout(data_offset: int, sizes: list[int]) -> list[tuple[int, int]]:
    out = []
    pos = data_offset
    for size in sizes:
        out.append((pos, size))
        pos = align(pos + size)
    return out


def _plan(
    manifest_len: int,
    digest_placeholder: str,
    sizes: list[int],
    ref: Mapping[str, str] | None = None,
    signatures: Sequence[bytes] = (),
) -> tuple[int, list[tuple[int, int]], int]:
    """Fixed point of: data offset -> blob offsets -> index length -> data offset."""
    data_offset = align(PREAMBLE_SIZE + manifest_len)
    for _ in range(8):
        extents = _layout(data_offset, sizes)
        index_len = len(encode_index(digest_placeholder, extents, ref, signatures))
        need = align(PREAMBLE_SIZE + manifest_len + index_len)
        if need == data_offset:
            return data_offset, extents, index_len
        data_offset = need
    raise AssertionError("bundle layout did not converge")  # pragma: no cover


#: Below this a chunk is hashed inline: handing it to the hashing thread costs more.
_INLINE_HASH = 1 << 20


def _write_hashing(
    f: BinaryIO,
    draft_chunks: Iterator[memoryview],
    algorithm: str,
    progress: Progress | None,
    hasher: ThreadPoolExecutor,
) -> tuple[str, int]:
    """Write chunks while hashing them on one other thread (both release the GIL).

    The hash runs single-threaded: the writing thread keeps a core of its own,
    and one core of BLAKE3 outruns a page-cache write. ``hasher`` is one thread
    shared by every blob of the bundle (a model may have thousands).
    """
    h = new_hasher(algorithm, threads=1)
    written = 0
    for chunk in draft_chunks:
        if chunk.nbytes < _INLINE_HASH:
            h.update(chunk)
            f.write(chunk)
        else:
            pending = hasher.submit(h.update, chunk)
            try:
                f.write(chunk)
            finally:
                pending.result()  # the source may reuse the chunk's memory after this
        written += chunk.nbytes
        if progress is not None:
            progress(chunk.nbytes)
    return h.digest_str(), written


def write_bundle(
    draft: Draft,
    path: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    ref: Mapping[str, str] | None = None,
    signatures: Sequence[bytes] = (),
) -> Manifest:
    """Write ``draft`` as one ``.mvpk`` file, atomically, and return its manifest.

    ``ref`` (``{"name": ..., "version": ...}``) records which model version the
    bundle was exported as, in the index: outside the manifest, so the variant's
    identity does not depend on it. ``signatures`` (OMS bundles, as stored) go
    in the index too, in digest order; the writer does not check what they say:
    whoever loads the bundle under a trust policy does.

    One pass over every blob: bytes are hashed while they are written. The file
    appears under ``path`` only when complete and synced; on any error nothing
    is left behind.
    """
    dest = Path(path)
    placeholder = placeholder_digest(draft.digest_algorithm)
    for b in draft.blobs:
        b.digest = None
    # Size the header with placeholder digests (this also validates every field).
    # A deflated manifest's length depends on the digests: the header keeps room
    # for any deflate of it (the msgpack's length does not depend on them).
    probe = probe_manifest(draft)
    deflated = (
        is_deflated(draft.stored_manifest)
        if draft.stored_manifest is not None
        else probe.format_version >= DEFLATED_FROM
    )
    manifest_len = deflate_reserve(probe.plain_size) if deflated else probe.plain_size
    sizes = [b.source.size for b in draft.blobs]
    if ref:
        try:
            ref = check_ref(dict(ref))
        except CorruptError as exc:
            raise InvalidArgumentError(exc.message.replace("bundle index 'ref'", "ref")) from None
    else:
        ref = None
    sigs = sorted_signatures(signatures)
    data_offset, extents, index_len = _plan(manifest_len, placeholder, sizes, ref, sigs)
    file_len = extents[-1][0] + extents[-1][1] if extents else data_offset

    created = make_parents(dest.parent)
    try:
        fd, tmp = create_temp(dest.parent, f".{dest.name}.")
    except BaseException:
        remove_dirs(created)
        raise
    try:
        with os.fdopen(fd, "wb") as f, ThreadPoolExecutor(max_workers=1) as hasher:
            f.write(bytes(data_offset))
            for b, (offset, size) in zip(draft.blobs, extents):
                if f.tell() < offset:
                    f.write(bytes(offset - f.tell()))
                b.digest, written = _write_hashing(
                    f, b.source.chunks(), draft.digest_algorithm, progress, hasher
                )
                if written != size:
                    raise PayloadMismatchError(
                        f"a {b.role} blob produced {written} bytes, but its source announced {size}",
                        hint="the source changed while it was being written; try again",
                    )
            manifest = finalize(draft)
            if len(manifest.blobs) != len(draft.blobs):
                # Two blobs had identical bytes: lay the file out again with each stored once.
                f.close()
                tmp.unlink()
                return _write_deduplicated(draft, dest, progress, ref, sigs)
            manifest_bytes = manifest.encode()
            if deflated and len(manifest_bytes) > manifest_len:
                # only a stored manifest that another writer deflated badly can be
                raise ManifestError(
                    f"the stored manifest is deflated into {len(manifest_bytes)} bytes, more "
                    f"than a bundle keeps for it ({manifest_len}); it cannot be exported as is"
                )
            if not deflated and len(manifest_bytes) != manifest_len:
                raise AssertionError("manifest length changed after hashing")  # pragma: no cover
            index = encode_index(
                digest_bytes(manifest_bytes, manifest.digest_algorithm), extents, ref, sigs
            )
            assert len(index) == index_len
            f.seek(0)
            f.write(
                _preamble(
                    len(manifest_bytes),
                    index_len,
                    data_offset,
                    file_len,
                    zlib.crc32(index),
                    manifest.format_version[1],
                    (FLAG_SIGNATURES if sigs else 0)
                    | (FLAG_DEFLATED_MANIFEST if is_deflated(manifest_bytes) else 0),
                )
            )
            f.write(manifest_bytes)
            f.write(index)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        return manifest
    except BaseException:
        tmp.unlink(missing_ok=True)
        remove_dirs(created)
        raise


def _write_deduplicated(
    draft: Draft,
    dest: Path,
    progress: Progress | None,
    ref: Mapping[str, str] | None,
    signatures: Sequence[bytes],
) -> Manifest:
    seen: set[str | None] = set()
    unique = []
    for b in draft.blobs:
        if b.digest not in seen:
            seen.add(b.digest)
            unique.append(b)
    manifest = finalize(draft)
    # Rewrite with the unique blobs only; remapping is already in the manifest.
    slim = Draft(**{**draft.__dict__, "blobs": unique})
    slim.tensors = list(manifest.tensors)
    slim.payload = dict(manifest.payload)
    return write_bundle(slim, dest, progress=progress, ref=ref, signatures=signatures)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class _Header:
    manifest: Manifest
    manifest_bytes: bytes
    manifest_digest: str
    data_offset: int
    file_len: int
    extents: list[tuple[int, int]]
    header_len: int
    ref: dict[str, str] | None = None
    signatures: tuple[bytes, ...] = ()


def _read_upto(f: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes; fewer only at the end (pipes and raw streams return short reads)."""
    parts = []
    left = n
    while left > 0:
        data = f.read(left)
        if not data:
            break
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = _read_upto(f, n)
    if len(data) != n:
        raise TruncatedError(f"bundle ends inside the {what} ({len(data)} of {n} bytes)")
    return data


def _parse_preamble(pre: bytes) -> tuple[int, int, int, int, int, int, int]:
    if len(pre) < PREAMBLE_SIZE:
        if MAGIC.startswith(pre[:8]) or pre[:8] == MAGIC:
            raise TruncatedError(
                f"bundle ends inside the preamble ({len(pre)} of {PREAMBLE_SIZE} bytes)"
            )
        raise UnknownFormatError("not a modelvault bundle (too short, wrong magic)")
    if pre[:8] != MAGIC:
        raise UnknownFormatError(
            "not a modelvault bundle (wrong magic bytes)", hint="is this a .mvpk file?"
        )
    (crc,) = struct.unpack("<I", pre[60:64])
    crc_ok = zlib.crc32(pre[:60]) == crc
    _, major, minor, flags, m_len, i_len, data_offset, file_len, index_crc, reserved = _PRE.unpack(
        pre[:60]
    )
    # The major version is checked before the checksum: a later major may lay the
    # rest of the preamble out differently, and deserves "unsupported", not "damaged".
    if major != FORMAT_VERSION[0]:
        raise UnsupportedVersionError(
            f"bundle format {major}.{minor} is not supported; this modelvault reads {FORMAT_VERSION[0]}.x"
            + ("" if crc_ok else " (and the preamble checksum does not match: it may be damaged)"),
            hint="upgrade modelvault to read it" if major > FORMAT_VERSION[0] and crc_ok else None,
        )
    if not crc_ok:
        raise CorruptError("bundle preamble is damaged (checksum mismatch)")
    if flags & ~KNOWN_FLAGS:
        raise UnsupportedVersionError(
            f"bundle preamble sets flags {flags & ~KNOWN_FLAGS:#x}, which this modelvault does not know",
            hint="upgrade modelvault to read it",
        )
    if reserved != bytes(8):
        raise CorruptError("bundle preamble's reserved bytes are not zero")
    if not 0 < m_len <= LIMITS.manifest_bytes:
        raise CorruptError(
            f"bundle says its manifest is {m_len} bytes; the limit is {LIMITS.manifest_bytes}"
        )
    if not 0 < i_len <= MAX_INDEX:
        raise CorruptError(f"bundle says its index is {i_len} bytes; the limit is {MAX_INDEX}")
    # A deflated manifest has room kept after it (checked once it is inflated).
    header = align(PREAMBLE_SIZE + m_len + i_len)
    if (data_offset < header if flags & FLAG_DEFLATED_MANIFEST else data_offset != header) or (
        file_len < data_offset
    ):
        raise CorruptError(
            f"bundle preamble's lengths and offsets disagree (data offset {data_offset}, "
            f"file length {file_len}, header {PREAMBLE_SIZE + m_len + i_len} bytes)"
        )
    return minor, flags, m_len, i_len, data_offset, file_len, index_crc


def _read_header(f: BinaryIO, actual_size: int | None) -> _Header:
    pre = _read_upto(f, PREAMBLE_SIZE)
    minor, flags, m_len, i_len, data_offset, file_len, index_crc = _parse_preamble(pre)
    if actual_size is not None and actual_size < PREAMBLE_SIZE + m_len + i_len:
        raise TruncatedError(
            f"bundle is {actual_size} bytes but its header alone needs {PREAMBLE_SIZE + m_len + i_len}"
        )
    manifest_bytes = _read_exact(f, m_len, "manifest")
    index_bytes = _read_exact(f, i_len, "index")
    if zlib.crc32(index_bytes) != index_crc:
        raise CorruptError("bundle index is damaged (checksum mismatch)")
    index = decode_msgpack(index_bytes, what="bundle index")
    if not isinstance(index, dict) or not {"blobs", "manifest"} <= set(index) <= {
        "blobs",
        "manifest",
        "ref",
        "signatures",
    }:
        raise CorruptError(
            "bundle index must be a map with 'blobs', 'manifest' and optionally 'ref', 'signatures'"
        )
    ref = check_ref(index.get("ref"))
    signatures = check_signatures(index.get("signatures"), flags)
    if encode_msgpack(index) != index_bytes:
        raise CorruptError("bundle index is not canonically encoded msgpack")
    expected_digest = index["manifest"]
    algo, _ = parse_digest(expected_digest)
    actual_digest = digest_bytes(manifest_bytes, algo)
    if actual_digest != expected_digest:
        raise CorruptError(
            f"bundle manifest is damaged: it hashes to {actual_digest}, the index says {expected_digest}"
        )
    if bool(flags & FLAG_DEFLATED_MANIFEST) != is_deflated(manifest_bytes):
        raise CorruptError(
            "bundle preamble's deflated-manifest flag disagrees with its manifest bytes"
        )
    manifest = Manifest.decode(manifest_bytes)
    if flags & FLAG_DEFLATED_MANIFEST:
        if m_len > deflate_reserve(manifest.plain_size):
            raise CorruptError(
                f"bundle manifest is deflated into {m_len} bytes, more than the "
                f"{deflate_reserve(manifest.plain_size)} a {manifest.plain_size}-byte manifest may take"
            )
        data_at = align(PREAMBLE_SIZE + deflate_reserve(manifest.plain_size) + i_len)
        if data_offset != data_at:
            raise CorruptError(
                f"bundle preamble's data offset {data_offset} disagrees with its header: a "
                f"{manifest.plain_size}-byte manifest (deflated to {m_len}) and a {i_len}-byte "
                f"index put the data at {data_at}"
            )
    if manifest.format_version[1] != minor:
        raise CorruptError(
            f"bundle preamble says format 1.{minor}, its manifest {manifest.format_version[0]}.{manifest.format_version[1]}"
        )
    if algo != manifest.digest_algorithm:
        raise CorruptError(
            f"bundle index names the manifest by {algo}; the manifest's digest_algorithm is {manifest.digest_algorithm}"
        )
    raw = index["blobs"]
    if not isinstance(raw, list) or len(raw) != len(manifest.blobs):
        raise CorruptError(
            f"bundle index lists {len(raw) if isinstance(raw, list) else '?'} blobs, the manifest {len(manifest.blobs)}"
        )
    extents: list[tuple[int, int]] = []
    for i, item in enumerate(raw):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        ):
            raise CorruptError(f"bundle index entry {i} must be [offset, size]")
        extents.append((item[0], item[1]))
    expected = _layout(data_offset, [b.size for b in manifest.blobs])
    for i, (got, want) in enumerate(zip(extents, expected)):
        if got != want:
            raise CorruptError(
                f"bundle index entry {i} is {list(got)}; blob {i} must lie at {list(want)} "
                "(overlapping, out-of-range or misplaced extent)"
            )
    end = expected[-1][0] + expected[-1][1] if expected else data_offset
    if end != file_len:
        raise CorruptError(
            f"bundle preamble says the file is {file_len} bytes, its blobs end at {end}"
        )
    if actual_size is not None and actual_size != file_len:
        if actual_size < file_len:
            raise TruncatedError(f"bundle is truncated: {actual_size} of {file_len} bytes")
        raise CorruptError(f"bundle has {actual_size - file_len} unexpected bytes after its end")
    return _Header(
        manifest,
        manifest_bytes,
        expected_digest,
        data_offset,
        file_len,
        extents,
        PREAMBLE_SIZE + m_len + i_len,
        ref,
        signatures,
    )


class Bundle:
    """An opened ``.mvpk`` file: its validated header, and its blobs by range.

    Opening checks the preamble, manifest and index; blobs are verified when read
    (:meth:`verify` checks them all).

        >>> b = Bundle.open("model.mvpk")            # doctest: +SKIP
        >>> b.manifest.plugin, b.verify()            # doctest: +SKIP
    """

    def __init__(self, path: Path, header: _Header) -> None:
        self.path = path
        self._h = header

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Bundle:
        p = Path(path)
        with p.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            return cls(p, _read_header(f, size))

    @property
    def manifest(self) -> Manifest:
        return self._h.manifest

    @property
    def manifest_bytes(self) -> bytes:
        return self._h.manifest_bytes

    @property
    def ref(self) -> dict[str, str] | None:
        """The model name and version the bundle was exported as, if it says."""
        return dict(self._h.ref) if self._h.ref else None

    @property
    def signatures(self) -> list[tuple[str, bytes]]:
        """The signatures it carries, as ``(digest, bytes)``: what they say is checked by
        whoever trusts them (:func:`modelvault.signing.check_trust`), never here."""
        return [(digest_bytes(s), s) for s in self._h.signatures]

    @property
    def digest(self) -> str:
        """The manifest digest: the variant's identity."""
        return self._h.manifest_digest

    @property
    def extents(self) -> list[tuple[int, int]]:
        return list(self._h.extents)

    def locate(self, index: int) -> BlobLocation:
        ref = self.manifest.blobs[index]
        offset, size = self._h.extents[index]
        # A bundle is written whole under a temporary name and renamed into place, like a
        # store blob: a mapping of it keeps the bytes that were hashed.
        return BlobLocation(self.path, offset, size, ref.digest, mappable=True)

    def read_blob(self, index: int) -> bytes:
        return read_blob(self, index)

    def verify(self, progress: Progress | None = None) -> None:
        """Hash every blob; raise :class:`IntegrityError` naming the first bad one.

        The zero padding between the parts is checked too (:class:`CorruptError`),
        so a bundle that verifies has no byte left unchecked.
        """
        with self.path.open("rb", buffering=0) as f:
            pos = self._h.header_len
            for i, ref in enumerate(self.manifest.blobs):
                offset, size = self._h.extents[i]
                f.seek(pos)
                _check_padding(f, offset - pos, f"before blob {i}")
                pos = offset + size
                read_verified_into(
                    f,
                    size,
                    ref.digest,
                    (lambda c: progress(c.nbytes)) if progress else None,
                    where=f"{self.path} blob {i} ({ref.role})",
                )
            if not self.manifest.blobs:
                f.seek(pos)
                _check_padding(f, self._h.data_offset - pos, "after the index")


def _check_padding(f: BinaryIO, n: int, where: str) -> None:
    data = _read_exact(f, n, f"padding {where}")
    if data.count(0) != n:
        raise CorruptError(f"bundle padding {where} is not zero")


def stream_blobs(f: BinaryIO) -> Iterator[tuple[Manifest, int, Iterator[bytes]]]:
    """Read a bundle front to back from a non-seekable stream.

    Yields ``(manifest, index, chunks)`` per blob. A blob's chunks are verified
    as a whole: the last iteration raises :class:`IntegrityError` when the bytes
    do not match, so a consumer writes to a temporary place and publishes only
    after the blob ended. A blob the consumer does not read to the end is read
    (and verified) before the next one; after the last blob the stream must end.
    """
    header = _read_header(f, None)
    pos = header.header_len
    previous: Iterator[bytes] | None = None
    for i, ref in enumerate(header.manifest.blobs):
        if previous is not None:
            for _ in previous:  # the consumer skipped the rest: keep the stream in step
                pass
        offset, size = header.extents[i]
        _check_padding(f, offset - pos, f"before blob {i}")
        pos = offset

        def chunks(ref_size: int = size, digest: str = ref.digest, i: int = i) -> Iterator[bytes]:
            h = new_hasher(parse_digest(digest)[0])
            left = ref_size
            while left:
                data = f.read(min(CHUNK, left))
                if not data:
                    raise TruncatedError(
                        f"bundle ends inside blob {i} ({ref_size - left} of {ref_size} bytes)"
                    )
                h.update(data)
                left -= len(data)
                yield data
            if h.digest_str() != digest:
                raise damaged(digest, h.digest_str(), f"bundle blob {i}")

        previous = chunks()
        yield header.manifest, i, previous
        pos += size
    if previous is not None:
        for _ in previous:
            pass
    else:
        _check_padding(f, header.data_offset - pos, "after the index")
    if f.read(1):
        raise CorruptError("bundle has unexpected bytes after its end")
