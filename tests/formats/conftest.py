"""Shared helpers for the container tests.

``assemble`` writes bundle bytes straight from ``docs/FORMAT.md`` (it does not
use the writer), so tests can hand-craft bundles the writer would refuse, and
the golden test can check that writer and specification agree.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack

from modelvault.digest import digest_bytes
from modelvault.errors import FormatError, IntegrityError
from modelvault.formats.bundle import Bundle, stream_blobs
from modelvault.formats.container import BytesSource, Draft, TensorSectionBuilder

MAGIC = b"\x89MVPK\r\n\x1a"


def align(n: int, a: int = 4096) -> int:
    return (n + a - 1) // a * a


def packb(obj: Any) -> bytes:
    """Canonical msgpack as the specification defines it (sorted keys, minimal forms)."""

    def canon(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: canon(o[k]) for k in sorted(o, key=lambda k: k.encode())}
        if isinstance(o, list | tuple):
            return [canon(x) for x in o]
        return o

    out = msgpack.packb(canon(obj), use_bin_type=True)
    assert isinstance(out, bytes)
    return out


def blob_wire(
    role: str, data: bytes, media_type: str = "application/octet-stream"
) -> dict[str, Any]:
    return {"digest": digest_bytes(data), "media_type": media_type, "role": role, "size": len(data)}


def manifest_wire(blobs: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    """A valid version-1.0 manifest as a plain dict (override any field)."""
    m: dict[str, Any] = {
        "blobs": blobs or [],
        "digest_algorithm": "blake3",
        "format": [1, 0],
        "frameworks": {},
        "metadata": {},
        "payload": {},
        "plugin": {"name": "test", "version": "1"},
        "signature": {},
        "target": {},
        "tensor_aliases": {},
        "tensors": [],
    }
    m.update(fields)
    return m


def assemble(
    manifest: dict[str, Any] | bytes,
    blobs: list[bytes],
    *,
    major: int = 1,
    minor: int = 0,
    flags: int = 0,
    index: dict[str, Any] | bytes | None = None,
    manifest_digest: str | None = None,
    extents: list[list[int]] | None = None,
) -> bytes:
    """Bundle bytes laid out by the specification, from parts the caller chooses.

    From minor 2 a manifest given as a dict is deflated (zlib level 9), the
    preamble flags it (0x2), and the header keeps ``P + P // 256 + 64`` bytes
    for it, P being its msgpack length (docs/FORMAT.md section 15)."""
    mbytes = manifest if isinstance(manifest, bytes) else packb(manifest)
    room = len(mbytes)
    if minor >= 2 and not isinstance(manifest, bytes):
        room = len(mbytes) + len(mbytes) // 256 + 64
        mbytes = zlib.compress(mbytes, 9)
        flags |= 0x2
    mdigest = manifest_digest or digest_bytes(mbytes)

    def layout(data_offset: int) -> list[list[int]]:
        out, pos = [], data_offset
        for b in blobs:
            out.append([pos, len(b)])
            pos = align(pos + len(b))
        return out

    data_offset = align(64 + room)
    while True:  # the layout fixed point
        ext = extents if extents is not None else layout(data_offset)
        if isinstance(index, bytes):
            idx = index
        else:
            idx = packb(index if index is not None else {"blobs": ext, "manifest": mdigest})
        need = align(64 + room + len(idx))
        if need == data_offset:
            break
        data_offset = need
    real = layout(data_offset)
    file_len = real[-1][0] + real[-1][1] if real else data_offset
    body = struct.pack(
        "<8sHHIQQQQI8s",
        MAGIC,
        major,
        minor,
        flags,
        len(mbytes),
        len(idx),
        data_offset,
        file_len,
        zlib.crc32(idx),
        bytes(8),
    )
    out = bytearray(body + struct.pack("<I", zlib.crc32(body)) + mbytes + idx)
    for (off, _size), b in zip(real, blobs):
        out += bytes(off - len(out)) + b
    if not blobs:
        out += bytes(data_offset - len(out))
    return bytes(out)


def fix_preamble_crc(data: bytearray) -> bytearray:
    data[60:64] = struct.pack("<I", zlib.crc32(bytes(data[:60])))
    return data


def small_draft() -> Draft:
    """Two tensors (one aliased), a graph blob and metadata: a typical small container."""
    b = TensorSectionBuilder()
    b.add("weight", "float32", (2, 3), struct.pack("<6f", 1, 2, 3, 4, 5, 6))
    b.add("bias", "int64", (3,), struct.pack("<3q", -1, 0, 1))
    b.alias("tied", "weight")
    d = Draft(
        "test",
        "1",
        frameworks={"python": "3"},
        target={"device": "cpu"},
        signature={"inputs": [{"name": "x", "dtype": "float32", "shape": [None, 3]}]},
        metadata={"author": "tests", "tags": ["a", "b"], "score": 0.5},
    )
    d.add_tensor_section(b)
    d.add_blob("graph", "application/x-test-graph", BytesSource(b"graph bytes\n" * 100))
    d.payload = {"graph": {"blob": 1}}
    return d


def refuse(path: Path, *, verify: bool = True) -> FormatError | IntegrityError:
    """Open (and verify) a broken bundle by path and by stream; return the error.

    Both readers must refuse it with one of modelvault's format or integrity errors.
    """
    errors: list[BaseException] = []
    try:
        b = Bundle.open(path)
        if verify:
            b.verify()
    except (FormatError, IntegrityError) as exc:
        errors.append(exc)
    else:
        raise AssertionError(f"{path} was accepted by Bundle.open/verify")
    try:
        with open(path, "rb") as f:
            for _m, _i, chunks in stream_blobs(f):
                for _ in chunks:
                    pass
    except (FormatError, IntegrityError) as exc:
        errors.append(exc)
    else:
        if verify:
            raise AssertionError(f"{path} was accepted by stream_blobs")
    first = errors[0]
    assert isinstance(first, FormatError | IntegrityError)
    assert str(first)
    return first


def write(path: Path, data: bytes | bytearray) -> Path:
    path.write_bytes(bytes(data))
    return path


def listing(root: Path) -> list[str]:
    """Everything under ``root``, for "nothing was left behind" checks."""
    return sorted(
        os.path.relpath(os.path.join(d, n), root)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
    )


def expect(err: BaseException, kind: type[BaseException], text: str) -> None:
    """``err`` is a ``kind`` whose message contains ``text``."""
    assert isinstance(err, kind), f"expected {kind.__name__}, got {err!r}"
    assert text in str(err), f"{text!r} not in {str(err)!r}"
