"""Manifest encoding, decoding, schema and limits; tensor section layout; drafts."""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import replace
from typing import Any

import msgpack
import pytest

from modelvault.digest import digest_bytes
from modelvault.errors import ManifestError, UnsupportedDigestError, UnsupportedVersionError
from modelvault.formats import manifest as manifest_mod
from modelvault.formats.container import (
    TENSORS_MEDIA_TYPE,
    BytesSource,
    Draft,
    DraftBlob,
    TensorSectionBuilder,
    finalize,
    tensor_views,
)
from modelvault.formats.manifest import BlobRef, Manifest, TensorEntry, decode_msgpack

from .conftest import blob_wire, manifest_wire, packb, small_draft

D1 = digest_bytes(b"one")
D2 = digest_bytes(b"two")


def sample() -> Manifest:
    d = small_draft()
    d.compute_digests()
    return finalize(d)


def test_encoding_is_deterministic_and_key_order_independent() -> None:
    a = Manifest("p", "1", metadata={"b": 1, "a": {"y": 2, "x": [1, 2]}}, target={"z": 1, "k": 2})
    b = Manifest("p", "1", metadata={"a": {"x": [1, 2], "y": 2}, "b": 1}, target={"k": 2, "z": 1})
    assert a.encode() == b.encode() == a.encode()
    assert a.digest == b.digest
    assert a.digest.startswith("blake3:")


def test_decode_of_encode_is_identity() -> None:
    m = sample()
    back = Manifest.decode(m.encode())
    assert back == m
    assert back.encode() == m.encode()


def test_wire_fields_match_specification() -> None:
    wire = msgpack.unpackb(zlib.decompress(sample().encode()))
    assert list(wire) == sorted(wire)
    assert set(wire) == set(manifest_wire())
    assert wire["format"] == [1, 2]
    assert set(wire["blobs"][0]) == {"digest", "media_type", "role", "size"}
    assert set(wire["tensors"][0]) == {
        "blob",
        "dtype",
        "name",
        "nbytes",
        "offset",
        "shape",
        "strides",
    }


def test_hand_encoded_canonical_manifest_decodes() -> None:
    data = packb(manifest_wire([blob_wire("x", b"one")], metadata={"z": 1, "a": b"\x00"}))
    m = Manifest.decode(data)
    assert m.encode() == data
    assert m.metadata == {"a": b"\x00", "z": 1}


@pytest.mark.parametrize(
    "raw",
    [
        # keys out of order
        msgpack.packb({"tensors": [], **manifest_wire()}, use_bin_type=True),
        # a 32-bit float where canonical form is 64-bit
        packb(manifest_wire()).replace(
            b"\xa8metadata\x80", b"\xa8metadata\x81\xa1f\xca\x3f\x80\x00\x00"
        ),
        # a non-minimal integer (uint16 for 1)
        packb(manifest_wire()).replace(b"\x92\x01\x00", b"\x92\xcd\x00\x01\x00"),
    ],
    ids=["key-order", "float32", "wide-int"],
)
def test_non_canonical_bytes_are_refused(raw: bytes) -> None:
    with pytest.raises(ManifestError, match="canonical"):
        Manifest.decode(raw)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not valid msgpack"),
        (b"\xc1", "not valid msgpack"),
        (packb(manifest_wire()) + b"\x00", "trailing bytes"),
        (packb([1, 2]), "must be a map"),
        (b"\x81\xa1a\xd4\x01\x00", "extension type|max_ext_len"),
        (b"\x82\xa1a\x01\xa1a\x02", "duplicate key"),
        (b"\x81\x01\x02", "not valid msgpack|keys must be strings"),
        (b"\xdd\xff\xff\xff\xff", "not valid msgpack"),
    ],
    ids=[
        "empty",
        "reserved-byte",
        "trailing",
        "not-map",
        "ext",
        "dup-key",
        "int-key",
        "huge-array",
    ],
)
def test_malformed_msgpack_is_refused(data: bytes, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        Manifest.decode(data)


def _mutate(path: list[Any], value: Any) -> dict[str, Any]:
    w = manifest_wire(
        [blob_wire("tensors", bytes(8192))],
        tensors=[
            {
                "blob": 0,
                "dtype": "float32",
                "name": "w",
                "nbytes": 16,
                "offset": 0,
                "shape": [2, 2],
                "strides": [2, 1],
            }
        ],
    )
    target: Any = w
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return w


BAD_FIELDS = [
    (["plugin"], "files", "manifest.plugin must be dict"),
    (["plugin", "name"], 3, "manifest.plugin.name must be str"),
    (["plugin", "name"], "Bad Name", "plugin name"),
    (["plugin", "version"], "", "plugin version"),
    (["plugin", "extra"], 1, "manifest.plugin has unknown fields"),
    (["blobs"], {}, "manifest.blobs must be list"),
    (["blobs", 0], "x", r"blobs\[0\] must be a map"),
    (["blobs", 0, "size"], "12", r"blobs\[0\].size must be int"),
    (["blobs", 0, "size"], True, "must be an integer, got a boolean"),
    (["blobs", 0, "size"], -1, "out of range"),
    (["blobs", 0, "role"], "Tensors!", "role"),
    (["blobs", 0, "media_type"], "", "media_type"),
    (["blobs", 0, "digest"], "blake3:XYZ", "malformed digest"),
    (["blobs", 0, "digest"], "blake3:abcd", "hex digits"),
    (["blobs", 0, "digest"], "sha256:" + "0" * 64, "digest_algorithm is blake3"),
    (["blobs", 0, "colour"], "red", r"blobs\[0\] has unknown fields"),
    (["blobs", 0, "digest"], KeyError, "missing field 'digest'"),
    (["tensors", 0, "shape"], [2, "2"], "list of integers"),
    (["tensors", 0, "shape"], [2, 3], "nbytes 16 disagrees"),
    (["tensors", 0, "nbytes"], 20, "nbytes 20 disagrees"),
    (["tensors", 0, "dtype"], "float13", "unknown dtype"),
    (["tensors", 0, "strides"], [1], "same length"),
    (["tensors", 0, "strides"], [3, 1], "reach past"),
    (["tensors", 0, "strides"], [-2, 1], "negative"),
    (["tensors", 0, "blob"], 1, "out of range"),
    (["tensors", 0, "offset"], 8, "multiple of 4096"),
    (["tensors", 0, "offset"], 8192, "past the end of blob"),
    (["tensors", 0, "name"], "", "name must be"),
    (["tensors", 0, "name"], KeyError, "missing field 'name'"),
    (["tensors", 0, "quant"], 1, r"tensors\[0\] has unknown fields"),
    (["tensor_aliases"], {"v": "nope"}, "unknown tensor"),
    (["tensor_aliases"], {"w": "w"}, "also a tensor name"),
    (["tensor_aliases"], {"v": 1}, "map strings to strings"),
    (["frameworks"], {"torch": 2}, "map strings to strings"),
    (["format"], [1], r"\[major, minor\]"),
    (["format"], [1, -1], r"\[major, minor\]"),
    (["format"], "1.0", "must be list"),
    (["digest_algorithm"], "md5", "not supported"),
    (["metadata"], [], "manifest.metadata must be dict"),
    (["target"], KeyError, "missing field 'target'"),
    (["surprise"], 1, "unknown fields: surprise"),
]


@pytest.mark.parametrize(
    ("path", "value", "match"), BAD_FIELDS, ids=[str(b[:2]) for b in BAD_FIELDS]
)
def test_schema_violations_are_refused(path: list[Any], value: Any, match: str) -> None:
    Manifest.decode(packb(_mutate(["metadata"], {})))  # the unmutated base is valid
    with pytest.raises((ManifestError, UnsupportedDigestError), match=match):
        Manifest.decode(packb(_mutate(path, value)))


def test_overlapping_tensors_and_duplicate_names_are_refused() -> None:
    t = {"blob": 0, "dtype": "uint8", "nbytes": 8, "offset": 0, "shape": [8], "strides": [1]}
    blobs = [blob_wire("tensors", bytes(8192))]
    with pytest.raises(ManifestError, match="overlap"):
        Manifest.decode(
            packb(manifest_wire(blobs, tensors=[{**t, "name": "a"}, {**t, "name": "b"}]))
        )
    with pytest.raises(ManifestError, match="duplicate tensor name"):
        Manifest.decode(
            packb(
                manifest_wire(
                    blobs, tensors=[{**t, "name": "a"}, {**t, "name": "a", "offset": 4096}]
                )
            )
        )
    with pytest.raises(ManifestError, match="repeats digest"):
        Manifest.decode(packb(manifest_wire(blobs * 2)))


def test_unknown_major_is_refused_and_newer_minor_fields_are_kept() -> None:
    with pytest.raises(UnsupportedVersionError, match=r"container format 2\.0 is not supported"):
        Manifest.decode(packb(manifest_wire(format=[2, 0])))
    newer = packb(manifest_wire(format=[1, 7], shiny={"new": True}))
    m = Manifest.decode(newer)
    assert m.extra == {"shiny": {"new": True}}
    assert m.encode() == newer
    with pytest.raises(ManifestError, match="unknown fields: shiny"):
        Manifest.decode(packb(manifest_wire(format=[1, 0], shiny=1)))


def test_unknown_digest_algorithm_is_refused() -> None:
    bad = manifest_wire([{**blob_wire("x", b"1"), "digest": "md5:" + "0" * 32}])
    with pytest.raises(UnsupportedDigestError, match="'md5' is not supported"):
        Manifest.decode(packb(bad))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metadata": {"x": math.nan}}, "NaN"),
        ({"metadata": {"x": 2**64}}, "64 bits"),
        ({"metadata": {1: "x"}}, "keys must be strings"),
        ({"metadata": {"x": object()}}, "cannot hold a value of type object"),
        ({"metadata": {"x": "\ud800"}}, "not valid Unicode"),
        ({"plugin": "UPPER"}, "plugin name"),
        ({"blobs": (BlobRef("r", "m", 1, D1), BlobRef("r", "m", 1, D1))}, "repeats digest"),
    ],
)
def test_encode_refuses_what_it_could_not_read_back(kwargs: dict[str, Any], match: str) -> None:
    fields: dict[str, Any] = {"plugin": "p", "plugin_version": "1", **kwargs}
    with pytest.raises(ManifestError, match=match):
        Manifest(**fields).encode()


def test_depth_string_and_size_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(ManifestError, match="deeper than 32"):
        Manifest("p", "1", metadata={"d": deep}).encode()
    with pytest.raises(ManifestError, match=r"deeper than 32|not valid msgpack"):
        Manifest.decode(packb(manifest_wire(metadata={"d": deep})))
    big = packb(manifest_wire(metadata={"s": "x" * (manifest_mod.LIMITS.string + 1)}))
    with pytest.raises(ManifestError, match="not valid msgpack"):
        Manifest.decode(big)
    monkeypatch.setattr(
        manifest_mod, "LIMITS", manifest_mod._Limits(manifest_bytes=4096, blobs=2, tensors=100)
    )
    with pytest.raises(ManifestError, match="the limit is 4096"):
        Manifest("p", "1", metadata={"s": "x" * 5000}).encode()
    with pytest.raises(ManifestError, match="the limit is 4096"):
        Manifest.decode(bytes(5000))
    blobs = [blob_wire("r", bytes([i])) for i in range(3)]
    with pytest.raises(ManifestError, match="lists 3 blobs; the limit is 2"):
        Manifest.decode(packb(manifest_wire(blobs)))
    with pytest.raises(ManifestError, match="not valid msgpack"):
        decode_msgpack(packb(list(range(101))), what="x")


# -- tensor section -------------------------------------------------------------


def test_one_section_layout_alignment_padding_and_aliases() -> None:
    """The 1.0 layout (every tensor in one blob), which older containers hold."""
    b = TensorSectionBuilder()
    b.add("a", "uint8", (3,), b"abc")
    b.add("b", "float16", (2, 2), bytes(range(8)))
    b.add("empty", "float32", (0, 4), b"")
    b.add("c", "int32", (), struct.pack("<i", 7))
    b.alias("a2", "a")
    src, tensors = b.build(0)
    d = Draft("p", "1", tensors=tensors, tensor_aliases=dict(b.aliases))
    d.add_blob("tensors", TENSORS_MEDIA_TYPE, src)
    data = b"".join(bytes(c) for c in src.chunks())
    assert len(data) == src.size
    entries = {t.name: t for t in d.tensors}
    assert [entries[n].offset for n in ("a", "b", "empty", "c")] == [0, 4096, 8192, 8192]
    assert all(t.offset % 4096 == 0 for t in d.tensors)
    assert data[3:4096] == bytes(4093)  # padding is zeros
    assert data[4104:8192] == bytes(8192 - 4104)
    assert entries["b"].strides == (2, 1)
    assert entries["c"].shape == ()
    assert entries["c"].strides == ()
    d.compute_digests()
    m = finalize(d)
    assert m.tensor_aliases == {"a2": "a"}
    views = tensor_views(m, 0, memoryview(data))
    assert bytes(views["a"]) == b"abc"
    assert bytes(views["b"]) == bytes(range(8))
    assert struct.unpack("<i", views["c"])[0] == 7
    assert bytes(views["empty"]) == b""
    assert Manifest.decode(m.encode()) == m
    old = replace(m, format_version=(1, 0))
    assert Manifest.decode(old.encode()) == old


def test_tensor_section_refuses_bad_tensors() -> None:
    b = TensorSectionBuilder()
    with pytest.raises(ManifestError, match="needs 16"):
        b.add("x", "float32", (2, 2), bytes(15))
    with pytest.raises(ManifestError, match="not supported"):
        b.add("x", "float7", (1,), bytes(1))
    with pytest.raises(ManifestError, match="C-contiguous"):
        b.add("x", "uint8", (2,), memoryview(b"abcd")[::2])
    with pytest.raises(ManifestError, match="buffer protocol"):
        b.add("x", "uint8", (2,), [1, 2])
    b.add("x", "uint8", (1,), b"x")
    with pytest.raises(ManifestError, match="added twice"):
        b.add("x", "uint8", (1,), b"x")
    with pytest.raises(ManifestError, match="added twice"):
        b.alias("x", "x")
    b.alias("y", "missing")
    d = Draft("p", "1")
    d.add_tensor_section(b)
    d.compute_digests()
    with pytest.raises(ManifestError, match="unknown tensor 'missing'"):
        finalize(d).encode()


def test_finalize_merges_identical_blobs_and_remaps_payload() -> None:
    d = Draft("p", "1")
    d.add_blob("a", "x/y", BytesSource(b"same"))
    d.add_blob("b", "x/y", BytesSource(b"other"))
    d.add_blob("c", "x/y", BytesSource(b"same"))
    d.payload = {"files": [{"blob": 0}, {"blob": 1}, {"blob": 2, "nested": {"blob": 2}}], "n": 2}
    d.compute_digests()
    m = finalize(d)
    assert [b.role for b in m.blobs] == ["a", "b"]
    assert m.payload == {
        "files": [{"blob": 0}, {"blob": 1}, {"blob": 0, "nested": {"blob": 0}}],
        "n": 2,
    }
    with pytest.raises(ValueError, match="compute_digests"):
        finalize(Draft("p", "1", blobs=[DraftBlob("a", "x/y", BytesSource(b""))]))


def test_tensor_entries_remapped_when_sections_are_identical() -> None:
    d = Draft("p", "1")
    for _ in range(2):
        b = TensorSectionBuilder()
        b.add(f"t{len(d.tensors)}", "uint8", (2,), b"hi")
        d.add_tensor_section(b)
    d.compute_digests()
    m = finalize(d)
    assert len(m.blobs) == 1
    assert [(t.blob, t.offset) for t in m.tensors] == [(0, 0), (0, 0)]
    assert Manifest.decode(m.encode()) == m  # 1.1: two tensors may name the same bytes
    with pytest.raises(ManifestError, match="overlap"):
        replace(m, format_version=(1, 0)).encode()  # 1.0 readers refuse it: so must 1.0


def test_manifest_conveniences() -> None:
    m = sample()
    assert m.total_size == sum(b.size for b in m.blobs)
    assert [i for i, _ in m.blobs_with_role("graph")] == [len(m.blobs) - 1]
    assert m.with_metadata(x=1).metadata["x"] == 1
    assert TensorEntry("t", "uint8", (2, 3), (3, 1), 0, 0, 6).numel == 6


# -- deflated manifests (format 1.2) -------------------------------------------


def _wire12(**fields: Any) -> dict[str, Any]:
    return manifest_wire(format=[1, 2], **fields)


def test_a_1_2_manifest_is_stored_deflated_and_read_back_with_its_bytes() -> None:
    m = sample()
    stored = m.encode()
    assert manifest_mod.is_deflated(stored) and not manifest_mod.is_deflated(packb(m.to_wire()))
    assert zlib.decompress(stored) == packb(m.to_wire())
    assert m.plain_size == len(packb(m.to_wire())) > len(stored)
    back = Manifest.decode(stored)
    assert back == m and back.encode() == stored and back.digest == m.digest


def test_another_deflater_s_stream_is_read_and_keeps_its_own_digest() -> None:
    """Another zlib build (zlib-ng, another level) deflates the same msgpack to
    other bytes: a reader accepts it, and the manifest keeps the digest of the
    bytes it was read from, not of what this writer would have produced."""
    m = sample()
    plain = packb(m.to_wire())
    other = zlib.compress(plain, 1)
    assert other != m.encode()
    back = Manifest.decode(other)
    assert back == m
    assert back.encode() == other and back.digest == digest_bytes(other) != m.digest


def test_a_1_2_manifest_may_come_plain() -> None:
    plain = packb(_wire12())
    m = Manifest.decode(plain)
    assert m.format_version == (1, 2) and m.encode() == plain


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: zlib.compress(p)[:-7], "truncated"),
        (lambda p: zlib.compress(p) + b"\x00", "1 bytes after its zlib stream"),
        (lambda p: zlib.compress(p)[:2] + b"\xff" * 40, "not a valid zlib stream"),
        (lambda p: zlib.compress(p)[:-4] + b"\x00\x00\x00\x00", "not a valid zlib stream"),
        (lambda p: zlib.compress(p + b"\x00"), "trailing bytes after its msgpack"),
        (lambda p: zlib.compress(b"\x78"), "manifest must be a map"),
    ],
    ids=["truncated", "trailing-bytes", "garbage", "bad-adler32", "trailing-msgpack", "not-a-map"],
)
def test_broken_deflated_manifests_are_refused(make: Any, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        Manifest.decode(make(packb(_wire12())))


def test_a_deflate_bomb_is_refused_without_inflating_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A few KiB that inflate to far past the limit: refused once the limit is
    reached, never inflated in full (the output is capped, not checked after)."""
    monkeypatch.setattr(
        manifest_mod, "LIMITS", replace(manifest_mod.LIMITS, manifest_bytes=1 << 20)
    )
    # a valid map header, then a 64 MiB string of zeros: deflates to about 64 KiB
    big = b"\x81\xa1x\xdb" + struct.pack(">I", 64 << 20) + bytes(64 << 20)
    bomb = zlib.compress(big, 9)
    assert len(bomb) < 1 << 20
    with pytest.raises(ManifestError, match="inflates past 1048576 bytes"):
        Manifest.decode(bomb)


def test_deflated_manifests_before_1_2_are_refused() -> None:
    """A 1.1 reader cannot inflate: a deflated 1.0 or 1.1 manifest would be one it
    calls damaged, so no writer may produce one and no reader accepts one."""
    for minor in (0, 1):
        with pytest.raises(ManifestError, match=rf"format 1\.{minor} manifest is deflated"):
            Manifest.decode(zlib.compress(packb(manifest_wire(format=[1, minor]))))


def test_deflated_but_not_canonical_inside_is_refused() -> None:
    """Checksums consistent, meaning the same, encoding not canonical: refused."""
    wire = _wire12(metadata={"b": 1, "a": 2})
    unsorted = msgpack.packb(wire, use_bin_type=True)  # keys in insertion order
    assert unsorted != packb(wire)
    with pytest.raises(ManifestError, match="not canonically encoded"):
        Manifest.decode(zlib.compress(unsorted))


def test_a_hostile_manifest_is_refused_the_same_deflated_or_plain() -> None:
    """The schema check runs on what is inside: deflating changes nothing."""
    bad = _wire12(
        tensors=[
            {
                "blob": 0,
                "dtype": "float32",
                "name": "w",
                "nbytes": 4,
                "offset": 0,
                "shape": [1],
                "strides": [1],
            }
        ]
    )
    for data in (packb(bad), zlib.compress(packb(bad))):
        with pytest.raises(ManifestError, match="blob index 0 is out of range"):
            Manifest.decode(data)


def test_the_deflated_manifest_s_first_byte_never_reads_as_msgpack_map() -> None:
    for cinfo in range(8):
        cmf = cinfo << 4 | 8
        for flg in range(256):
            data = bytes([cmf, flg])
            if manifest_mod.is_deflated(data):
                assert data[0] < 0x80  # a msgpack positive fixint, never a map
