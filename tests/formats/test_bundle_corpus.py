"""A corpus of broken bundles: each is refused with a specific error, nothing is left on disk."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest

from modelvault.digest import digest_bytes
from modelvault.errors import (
    CorruptError,
    IntegrityError,
    ManifestError,
    TruncatedError,
    UnknownFormatError,
    UnsafePathError,
    UnsupportedDigestError,
    UnsupportedVersionError,
)
from modelvault.formats.bundle import Bundle, write_bundle
from modelvault.formats.files import FilesPlugin

from .conftest import (
    assemble,
    blob_wire,
    expect,
    fix_preamble_crc,
    listing,
    manifest_wire,
    packb,
    refuse,
    small_draft,
    write,
)


@pytest.fixture
def good(tmp_path: Path) -> tuple[bytes, Bundle]:
    path = tmp_path / "good.mvpk"
    write_bundle(small_draft(), path)
    return path.read_bytes(), Bundle.open(path)


def _sections(data: bytes, b: Bundle) -> dict[str, int]:
    m_len, i_len = struct.unpack("<QQ", data[16:32])
    (o0, s0), *_, (o1, s1) = b.extents  # the first and the last blob
    return {
        "empty": 0,
        "in-magic": 5,
        "after-magic": 8,
        "in-preamble": 40,
        "before-crc": 60,
        "after-preamble": 64,
        "mid-manifest": 64 + m_len // 2,
        "after-manifest": 64 + m_len,
        "mid-index": 64 + m_len + i_len // 2,
        "after-index": 64 + m_len + i_len,
        "in-padding": o0 - 1,
        "data-offset": o0,
        "mid-blob0": o0 + s0 // 2,
        "end-blob0": o0 + s0,
        "blob1-start": o1,
        "mid-blob1": o1 + s1 // 2,
        "last-byte": o1 + s1 - 1,
    }


def test_truncation_at_every_boundary(tmp_path: Path, good: tuple[bytes, Bundle]) -> None:
    data, b = good
    for name, cut in _sections(data, b).items():
        err = refuse(write(tmp_path / f"{name}.mvpk", data[:cut]))
        assert isinstance(err, TruncatedError), (name, err)
        assert "truncated" in str(err) or "ends inside" in str(err) or "needs" in str(err), name


def test_trailing_garbage(tmp_path: Path, good: tuple[bytes, Bundle]) -> None:
    data, _ = good
    err = refuse(write(tmp_path / "t.mvpk", data + b"\x00"))
    assert isinstance(err, CorruptError)
    assert "unexpected bytes" in str(err)


PREAMBLE_BITS = {
    "magic": (0, UnknownFormatError, "not a modelvault bundle"),
    "major": (8, UnsupportedVersionError, "not supported"),
    "minor": (10, CorruptError, "checksum"),
    "flags": (12, CorruptError, "checksum"),
    "manifest_len": (16, CorruptError, "checksum"),
    "index_len": (24, CorruptError, "checksum"),
    "data_offset": (32, CorruptError, "checksum"),
    "file_len": (40, CorruptError, "checksum"),
    "index_crc": (48, CorruptError, "checksum"),
    "reserved": (52, CorruptError, "checksum"),
    "crc": (60, CorruptError, "checksum"),
}


@pytest.mark.parametrize("field", PREAMBLE_BITS)
def test_flipped_bit_in_preamble(tmp_path: Path, good: tuple[bytes, Bundle], field: str) -> None:
    data, _ = good
    at, kind, match = PREAMBLE_BITS[field]
    for bit in (0, 7):
        bad = bytearray(data)
        bad[at] ^= 1 << bit
        err = refuse(write(tmp_path / "p.mvpk", bad))
        expect(err, kind, match)


def test_flipped_bits_in_manifest_and_index(tmp_path: Path, good: tuple[bytes, Bundle]) -> None:
    data, _ = good
    m_len, i_len = struct.unpack("<QQ", data[16:32])
    for at in range(64, 64 + m_len, max(1, m_len // 40)):
        bad = bytearray(data)
        bad[at] ^= 0x10
        err = refuse(write(tmp_path / "m.mvpk", bad))
        expect(err, CorruptError, "manifest is damaged")
    for at in range(64 + m_len, 64 + m_len + i_len, 3):
        bad = bytearray(data)
        bad[at] ^= 0x01
        err = refuse(write(tmp_path / "i.mvpk", bad))
        expect(err, CorruptError, "index is damaged")


def test_flipped_bit_in_each_blob_and_padding(tmp_path: Path, good: tuple[bytes, Bundle]) -> None:
    data, b = good
    for i, (off, size) in enumerate(b.extents):
        for at in (off, off + size - 1):
            bad = bytearray(data)
            bad[at] ^= 0x80
            err = refuse(write(tmp_path / "b.mvpk", bad))
            assert isinstance(err, IntegrityError)
            assert f"blob {i}" in str(err)
    bad = bytearray(data)
    bad[b.extents[0][0] - 1] = 1  # padding before blob 0
    err = refuse(write(tmp_path / "pad.mvpk", bad))
    assert isinstance(err, CorruptError)
    assert "padding" in str(err)


@pytest.mark.parametrize(
    ("offset", "value", "kind", "match"),
    [
        (16, 5 << 30, CorruptError, "manifest is 5368709120 bytes; the limit"),
        (24, 3 << 30, CorruptError, "index is 3221225472 bytes; the limit"),
        (16, 0, CorruptError, "manifest is 0 bytes"),
        (32, 8192, CorruptError, "disagree"),
        (40, 10, CorruptError, "disagree"),
        (40, 1 << 40, CorruptError, "blobs end at"),
    ],
    ids=["manifest-gib", "index-gib", "zero", "data-offset", "short-file", "long-file"],
)
def test_lengths_in_preamble(
    tmp_path: Path, good: tuple[bytes, Bundle], offset: int, value: int, kind: type, match: str
) -> None:
    data, _ = good
    bad = bytearray(data)
    bad[offset : offset + 8] = struct.pack("<Q", value)
    err = refuse(write(tmp_path / "l.mvpk", fix_preamble_crc(bad)))
    expect(err, kind, match)


def test_header_length_past_end_of_file(tmp_path: Path, good: tuple[bytes, Bundle]) -> None:
    data, _ = good
    bad = bytearray(data)
    m_len = 10**6
    i_len = struct.unpack("<Q", data[24:32])[0]
    data_offset = (64 + m_len + i_len + 4095) // 4096 * 4096
    bad[16:24] = struct.pack("<Q", m_len)
    bad[32:48] = struct.pack("<QQ", data_offset, data_offset + 100)
    err = refuse(write(tmp_path / "l.mvpk", fix_preamble_crc(bad)))
    expect(err, TruncatedError, "header alone needs")


def test_unknown_major_flags_and_reserved(tmp_path: Path) -> None:
    blob = b"x" * 10
    m = manifest_wire([blob_wire("r", blob)])
    err = refuse(write(tmp_path / "v.mvpk", assemble(m, [blob], major=2)))
    assert isinstance(err, UnsupportedVersionError)
    assert "upgrade" in (err.hint or "")
    err = refuse(write(tmp_path / "f.mvpk", assemble(m, [blob], flags=4)))
    assert isinstance(err, UnsupportedVersionError)
    assert "flags 0x4" in str(err) and "upgrade" in (err.hint or "")
    bad = bytearray(assemble(m, [blob]))
    bad[52] = 1
    err = refuse(write(tmp_path / "r.mvpk", fix_preamble_crc(bad)))
    assert isinstance(err, CorruptError)
    assert "reserved" in str(err)
    m2 = manifest_wire([blob_wire("r", blob)], format=[2, 0])
    err = refuse(write(tmp_path / "m2.mvpk", assemble(m2, [blob])))
    assert isinstance(err, UnsupportedVersionError)
    err = refuse(write(tmp_path / "minor.mvpk", assemble(m, [blob], minor=1)))
    assert isinstance(err, CorruptError)
    assert "preamble says format 1.1" in str(err)


def test_signatures_in_the_index(tmp_path: Path) -> None:
    """Flag 0x1 and the index's ``signatures`` come together, distinct, in digest order."""
    blob = b"x" * 10
    m = manifest_wire([blob_wire("r", blob)])
    md = digest_bytes(packb(m))
    ext = [[4096, 10]]
    a, b = sorted([b'{"a": 1}', b'{"b": 2}'], key=digest_bytes)

    def index(sigs: Any) -> dict[str, Any]:
        return {"blobs": ext, "manifest": md, "signatures": sigs}

    good = write(tmp_path / "ok.mvpk", assemble(m, [blob], flags=1, index=index([a, b])))
    assert [s for _, s in Bundle.open(good).signatures] == [a, b]
    for name, flags, idx, text in [
        ("noflag", 0, index([a]), "preamble flag is not set"),
        ("nosigs", 1, None, "lists none"),
        ("empty", 1, index([]), "lists none"),
        ("order", 1, index([b, a]), "in the order of their digests"),
        ("dup", 1, index([a, a]), "distinct"),
        ("text", 1, index(["not bytes"]), "byte strings"),
    ]:
        err = refuse(write(tmp_path / f"{name}.mvpk", assemble(m, [blob], flags=flags, index=idx)))
        expect(err, CorruptError, text)


def _tensor(name: str, offset: int = 0, nbytes: int = 16, **kw: object) -> dict[str, Any]:
    t = {"blob": 0, "dtype": "float32", "name": name, "nbytes": nbytes, "offset": offset}
    t.update({"shape": [nbytes // 4], "strides": [1]})
    t.update(kw)
    return t


SECTION = bytes(8192 + 16)
BAD_MANIFESTS = {
    "wrong-type": (manifest_wire([blob_wire("t", SECTION)], metadata=[1]), "must be dict"),
    "missing-field": (
        {k: v for k, v in manifest_wire([blob_wire("t", SECTION)]).items() if k != "plugin"},
        "missing field 'plugin'",
    ),
    "duplicate-tensor": (
        manifest_wire([blob_wire("t", SECTION)], tensors=[_tensor("a"), _tensor("a", 4096)]),
        "duplicate tensor name",
    ),
    "overlap": (
        manifest_wire(
            [blob_wire("t", SECTION)], tensors=[_tensor("a", 0, 8192), _tensor("b", 4096)]
        ),
        "overlap",
    ),
    "out-of-range-extent": (
        manifest_wire([blob_wire("t", SECTION)], tensors=[_tensor("a", 8192, 32)]),
        "past the end of blob",
    ),
    "out-of-range-blob": (
        manifest_wire([blob_wire("t", SECTION)], tensors=[_tensor("a", blob=3)]),
        "blob index 3 is out of range",
    ),
    "size-vs-shape": (
        manifest_wire([blob_wire("t", SECTION)], tensors=[_tensor("a", shape=[5])]),
        "disagrees with shape",
    ),
    "size-vs-blob": (
        manifest_wire([{**blob_wire("t", SECTION), "size": len(SECTION) + 1}]),
        "",
    ),
}


@pytest.mark.parametrize("name", BAD_MANIFESTS)
def test_bad_manifests(tmp_path: Path, name: str) -> None:
    wire, match = BAD_MANIFESTS[name]
    err = refuse(write(tmp_path / "m.mvpk", assemble(wire, [SECTION])))
    if name == "size-vs-blob":  # the layout then no longer fits the file
        assert isinstance(err, TruncatedError | CorruptError), err
    else:
        expect(err, ManifestError, match)


def test_bad_index_extents(tmp_path: Path) -> None:
    blobs = [b"a" * 100, b"b" * 100]
    m = manifest_wire([blob_wire("r", blobs[0]), blob_wire("s", blobs[1])])
    good = Bundle.open(write(tmp_path / "g.mvpk", assemble(m, blobs))).extents
    cases = {
        "overlapping": [[good[0][0], 100], [good[0][0] + 50, 100]],
        "out-of-range": [[good[0][0], 100], [1 << 40, 100]],
        "wrong-size": [[good[0][0], 99], list(good[1])],
        "missing": [list(good[0])],
        "not-pairs": [[good[0][0]], list(good[1])],
    }
    for name, ext in cases.items():
        err = refuse(write(tmp_path / f"{name}.mvpk", assemble(m, blobs, extents=ext)))
        expect(err, CorruptError, "index")
    err = refuse(write(tmp_path / "keys.mvpk", assemble(m, blobs, index={"blobs": []})))
    assert isinstance(err, CorruptError)
    assert "must be a map" in str(err)


def test_index_ref_and_canonical_form(tmp_path: Path) -> None:
    blob = b"x" * 10
    m = manifest_wire([blob_wire("r", blob)])
    digest = digest_bytes(packb(m))
    ok = {"name": "resnet", "version": "1.0.0"}
    path = write(
        tmp_path / "ok.mvpk",
        assemble(m, [blob], index={"blobs": [[4096, 10]], "manifest": digest, "ref": ok}),
    )
    assert Bundle.open(path).ref == ok
    for bad in (
        {"name": "x"},
        {"name": "x", "version": 1},
        {**ok, "by": "me"},
        "x",
        {"name": "", "version": "1"},
    ):
        idx = {"blobs": [[4096, 10]], "manifest": digest, "ref": bad}
        err = refuse(write(tmp_path / "ref.mvpk", assemble(m, [blob], index=idx)))
        expect(err, CorruptError, "'ref' must map exactly")
    unsorted = msgpack.packb({"manifest": digest, "blobs": [[4096, 10]]}, use_bin_type=True)
    err = refuse(write(tmp_path / "order.mvpk", assemble(m, [blob], index=unsorted)))
    expect(err, CorruptError, "not canonically encoded")


def test_unknown_digest_algorithms(tmp_path: Path) -> None:
    blob = b"x" * 10
    m = manifest_wire([{**blob_wire("r", blob), "digest": "whirlpool:" + "0" * 64}])
    err = refuse(write(tmp_path / "b.mvpk", assemble(m, [blob])))
    assert isinstance(err, UnsupportedDigestError)
    assert "whirlpool" in str(err)
    m = manifest_wire([blob_wire("r", blob)])
    err = refuse(write(tmp_path / "i.mvpk", assemble(m, [blob], manifest_digest="md5:" + "0" * 32)))
    assert isinstance(err, UnsupportedDigestError)
    assert "md5" in str(err)
    err = refuse(
        write(tmp_path / "s.mvpk", assemble(packb(m), [blob], manifest_digest="sha256:" + "0" * 64))
    )
    assert isinstance(err, CorruptError)
    assert "manifest is damaged" in str(err)


def test_not_a_bundle(tmp_path: Path) -> None:
    for name, data in {"text": b"hello world" * 10, "zip": b"PK\x03\x04" + bytes(100)}.items():
        err = refuse(write(tmp_path / f"{name}.mvpk", data))
        assert isinstance(err, UnknownFormatError), name


# -- files containers that try to escape the target directory ----------------------


def _files_bundle(tmp_path: Path, entries: list[dict[str, Any]], blobs: list[bytes]) -> Path:
    wire = manifest_wire(
        [blob_wire("file", b) for b in blobs],
        plugin={"name": "files", "version": "1"},
        payload={"entries": entries, "root": "dir"},
    )
    return write(tmp_path / "evil.mvpk", assemble(wire, blobs))


def _file(path: str, blob: int = 0) -> dict[str, Any]:
    return {"blob": blob, "executable": False, "path": path, "type": "file"}


ESCAPES = {
    "dotdot": ([_file("../escaped.txt")], "'..' component"),
    "nested-dotdot": ([_file("a/../../escaped.txt")], "'..' component"),
    "absolute": ([_file("/tmp/escaped.txt")], "absolute"),
    "backslash": ([_file("..\\escaped.txt")], "absolute"),
    "empty-component": ([_file("a//b")], "empty"),
    "control-char": ([_file("a\nb")], "control characters"),
    "symlink-absolute": ([{"path": "l", "target": "/etc/passwd", "type": "symlink"}], "absolute"),
    "symlink-up": ([{"path": "l", "target": "../outside", "type": "symlink"}], "outside the tree"),
    "symlink-deep-up": (
        [{"path": "a/l", "target": "../../x", "type": "symlink"}],
        "outside the tree",
    ),
    "symlink-chain": (
        [
            {"path": "d", "type": "dir"},
            {"path": "d/up", "target": "..", "type": "symlink"},
            {"path": "l", "target": "d/up/..", "type": "symlink"},
        ],
        "may only lead",
    ),
    "write-through-symlink": (
        [{"path": "l", "target": "d", "type": "symlink"}, _file("l/x.txt")],
        "lies under symlink",
    ),
    "under-a-file": ([_file("f"), _file("f/x")], "lies under file"),
    "duplicate": ([_file("f"), _file("f")], "duplicate path"),
}


@pytest.mark.parametrize("name", ESCAPES)
def test_files_container_escapes_are_refused(tmp_path: Path, name: str) -> None:
    entries, match = ESCAPES[name]
    path = _files_bundle(tmp_path, entries, [b"pwned"])
    before = listing(tmp_path)
    dest = tmp_path / "out" / "tree"
    with pytest.raises((UnsafePathError, ManifestError), match=match):
        FilesPlugin().export_native(Bundle.open(path), dest)
    assert listing(tmp_path) == before
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_files_container_with_damaged_blob_leaves_nothing(tmp_path: Path) -> None:
    path = _files_bundle(tmp_path, [_file("a/one.txt"), _file("b.txt", 1)], [b"one", b"two"])
    b = Bundle.open(path)
    bad = bytearray(path.read_bytes())
    bad[b.extents[1][0]] ^= 1
    path.write_bytes(bad)
    before = listing(tmp_path)
    with pytest.raises(IntegrityError, match="damaged"):
        FilesPlugin().export_native(Bundle.open(path), tmp_path / "new" / "dest")
    assert listing(tmp_path) == before


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"root": "disk", "entries": []}, "'root'"),
        (
            {"root": "dir", "entries": [{"type": "socket", "path": "s"}]},
            "type file, dir or symlink",
        ),
        ({"root": "dir", "entries": [_file("a", blob=7)]}, "does not exist"),
        ({"root": "dir", "entries": [{**_file("a"), "executable": 1}]}, "boolean 'executable'"),
        ({"root": "file", "entries": [_file("a"), _file("b")]}, "exactly one top-level file"),
    ],
)
def test_files_payload_schema(tmp_path: Path, payload: dict[str, Any], match: str) -> None:
    wire = manifest_wire(
        [blob_wire("file", b"x")], plugin={"name": "files", "version": "1"}, payload=payload
    )
    path = write(tmp_path / "p.mvpk", assemble(wire, [b"x"]))
    with pytest.raises(ManifestError, match=match):
        FilesPlugin().load(Bundle.open(path), dest=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_deflated_manifest_flag_and_room_must_agree(tmp_path: Path) -> None:
    """Format 1.2: the preamble flags a deflated manifest, and the header keeps
    room for it; every way the two disagree is refused, checksums all fixed up."""
    blob = b"x" * 10
    m = manifest_wire([blob_wire("r", blob)], format=[1, 2])
    good = write(tmp_path / "ok.mvpk", assemble(m, [blob], minor=2))
    assert Bundle.open(good).manifest.format_version == (1, 2)
    data = good.read_bytes()
    assert struct.unpack("<I", data[12:16])[0] == 2  # flags

    no_flag = bytearray(data)
    no_flag[12:16] = struct.pack("<I", 0)
    err = refuse(write(tmp_path / "nf.mvpk", fix_preamble_crc(no_flag)))
    assert isinstance(err, CorruptError) and "flag disagrees" in str(err)

    plain = assemble(packb(m), [blob], minor=2, flags=2)  # plain bytes, flag set
    err = refuse(write(tmp_path / "pf.mvpk", plain))
    assert isinstance(err, CorruptError) and "flag disagrees" in str(err)

    # the data moved one page on: lengths still consistent, the room is not
    moved = bytearray(data)
    (offset,) = struct.unpack("<Q", data[32:40])
    moved[32:48] = struct.pack("<QQ", offset + 4096, len(data) + 4096)
    moved[offset:offset] = bytes(4096)
    err = refuse(write(tmp_path / "mv.mvpk", fix_preamble_crc(moved)))
    assert isinstance(err, CorruptError) and "data offset" in str(err) and "disagrees" in str(err)
