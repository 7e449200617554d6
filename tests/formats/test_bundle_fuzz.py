"""Property-based fuzzing of the bundle and manifest parsers.

Whatever the bytes, the readers either accept them or raise one of
modelvault's FormatError/IntegrityError subclasses: never KeyError,
TypeError, struct.error, MemoryError or the like.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelvault.errors import FormatError, IntegrityError
from modelvault.formats.bundle import Bundle, stream_blobs, write_bundle
from modelvault.formats.container import DirectorySource
from modelvault.formats.files import _parse_payload
from modelvault.formats.manifest import BlobRef, Manifest

from .conftest import assemble, blob_wire, manifest_wire, packb, small_draft

SETTINGS = settings(
    max_examples=int(os.environ.get("MVAULT_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _good() -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "g.mvpk"
        write_bundle(small_draft(), p)
        return p.read_bytes()


GOOD = _good()
M_LEN, I_LEN = struct.unpack("<QQ", GOOD[16:32])


def _read_all(data: bytes, tmp: Path) -> None:
    """Both readers, to the last byte; only modelvault's errors may escape."""
    try:
        for _m, _i, chunks in stream_blobs(io.BytesIO(data)):
            for _ in chunks:
                pass
    except (FormatError, IntegrityError) as exc:
        assert str(exc)  # noqa: PT017 (any of these errors is fine; each must say something)
    path = tmp / "f.mvpk"
    path.write_bytes(data)
    try:
        b = Bundle.open(path)
        b.verify()
        for i in range(len(b.manifest.blobs)):
            b.read_blob(i)
    except (FormatError, IntegrityError) as exc:
        assert str(exc)  # noqa: PT017 (any of these errors is fine; each must say something)


def _fix_checksums(data: bytearray) -> bytes:
    """Recompute the index CRC, the manifest digest and the preamble CRC when the
    lengths still make sense, so mutations reach the deeper checks."""
    if len(data) < 64 + M_LEN + I_LEN:
        return bytes(data)
    data[48:52] = struct.pack("<I", zlib.crc32(bytes(data[64 + M_LEN : 64 + M_LEN + I_LEN])))
    data[60:64] = struct.pack("<I", zlib.crc32(bytes(data[:60])))
    return bytes(data)


@SETTINGS
@given(st.binary(max_size=6000))
def test_random_bytes(tmp_path: Path, data: bytes) -> None:
    _read_all(data, tmp_path)


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_after_a_valid_preamble(tmp_path: Path, tail: bytes) -> None:
    _read_all(GOOD[:64] + tail, tmp_path)


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(GOOD) - 1), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, len(GOOD) - 1), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, len(GOOD)), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, len(GOOD)), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, len(GOOD) - 1), st.just(0)),
)


@SETTINGS
@given(st.lists(MUTATION, min_size=1, max_size=4), st.booleans())
def test_mutations_of_a_valid_bundle(tmp_path: Path, muts: list[Any], fix: bool) -> None:
    data = bytearray(GOOD)
    for kind, at, value in muts:
        at = min(at, max(len(data) - 1, 0))
        if kind == "flip" and data:
            data[at] ^= 1 << value
        elif kind == "set" and data:
            data[at] = value
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data.insert(at, value)
        elif kind == "delete" and data:
            del data[at]
    _read_all(_fix_checksums(data) if fix else bytes(data), tmp_path)


PLAIN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELD_VALUES = {
    "blobs": st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "digest": st.sampled_from([blob_wire("r", b"x")["digest"], "md5:00", "blake3:"])
                | PLAIN,
                "media_type": st.text(max_size=5) | PLAIN,
                "role": st.sampled_from(["file", "tensors", "X"]) | PLAIN,
                "size": st.integers(-5, 2**64 - 1) | PLAIN,
            },
        )
        | PLAIN,
        max_size=3,
    ),
    "tensors": st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "blob": st.integers(-1, 3) | PLAIN,
                "dtype": st.sampled_from(["float32", "uint8", "bogus"]) | PLAIN,
                "name": st.text(max_size=5) | PLAIN,
                "nbytes": st.integers(-1, 2**64 - 1) | PLAIN,
                "offset": st.sampled_from([0, 4096, 3, -4096, 2**63]) | PLAIN,
                "shape": st.lists(st.integers(-2, 2**40), max_size=4) | PLAIN,
                "strides": st.lists(st.integers(-2, 2**40), max_size=4) | PLAIN,
            },
        )
        | PLAIN,
        max_size=3,
    ),
    "format": st.sampled_from([[1, 0], [1, 1], [2, 0], [0, 0], [1]]) | PLAIN,
    "digest_algorithm": st.sampled_from(["blake3", "sha256", "md5"]) | PLAIN,
    "plugin": st.fixed_dictionaries(
        {}, optional={"name": st.sampled_from(["files", "BAD"]) | PLAIN, "version": PLAIN}
    )
    | PLAIN,
}


@SETTINGS
@given(
    st.fixed_dictionaries(
        {},
        optional={
            **FIELD_VALUES,
            **dict.fromkeys(
                ("frameworks", "metadata", "payload", "signature", "target", "tensor_aliases"),
                PLAIN,
            ),
            "unknown": PLAIN,
        },
    ),
    st.booleans(),
)
def test_random_manifests(tmp_path: Path, fields: dict[str, Any], keep_base: bool) -> None:
    wire = {**manifest_wire(), **fields} if keep_base else fields
    try:
        raw = packb(wire)
    except (ValueError, OverflowError, TypeError):
        return  # not representable as msgpack at all
    try:
        Manifest.decode(raw)
    except (FormatError, IntegrityError) as exc:
        assert str(exc)  # noqa: PT017 (any of these errors is fine; each must say something)
    _read_all(assemble(raw, [b"x"]), tmp_path)


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65])
def test_tiny_inputs(tmp_path: Path, size: int) -> None:
    _read_all(GOOD[:size], tmp_path)


ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["file", "dir", "symlink"]) | PLAIN,
        "path": st.sampled_from(["a", "a/b", "../x", "/abs", "a//b", "ü"])
        | st.text(max_size=6)
        | PLAIN,
        "blob": st.integers(-1, 2) | PLAIN,
        "executable": st.booleans() | PLAIN,
        "target": st.sampled_from(["a", "..", "../..", "b/../..", "/etc"]) | st.text(max_size=6),
    },
)


@SETTINGS
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "root": st.sampled_from(["file", "dir"]) | PLAIN,
            "entries": st.lists(ENTRY | PLAIN, max_size=5) | PLAIN,
        },
    )
)
def test_random_files_payloads(tmp_path: Path, payload: dict[str, Any]) -> None:
    """The files payload parser refuses with UnsafePathError or ManifestError only."""
    m = Manifest("files", "1", blobs=(BlobRef("file", "x/y", 1, blob_wire("f", b"x")["digest"]),))
    m = Manifest(**{**m.__dict__, "payload": payload})
    source = DirectorySource(m, tmp_path)
    try:
        _parse_payload(source)
    except FormatError as exc:
        assert str(exc)  # noqa: PT017 (any of these errors is fine; each must say something)
