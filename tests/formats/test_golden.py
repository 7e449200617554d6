"""Pin the exact bytes of small bundles, and keep reading every committed copy.

``golden/small.mvpk`` (tensors in one section, a graph blob, metadata) and
``golden/files.mvpk`` (a small tree through the ``files`` plugin) were written
by format 1.0; ``golden/layout-1.1.mvpk`` and ``golden/files-1.1.mvpk`` by 1.1
(tensors content-addressed: a blob per large tensor, loose small ones, a range
shared by identical tensors); ``golden/layout-1.2.mvpk`` and
``golden/files-1.2.mvpk`` by 1.2 (the same containers, manifest deflated). If a ``..._is_byte_identical`` test fails, the
format changed: that must be deliberate (a new minor or major version,
docs/FORMAT.md updated), and the old files must still read. Regenerate a new
golden file only for a new format version, never to make this test pass:

    MVAULT_WRITE_GOLDEN=1 PYTHONPATH=src python -m pytest tests/formats/test_golden.py
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest

from modelvault.digest import digest_bytes
from modelvault.formats.bundle import Bundle, write_bundle
from modelvault.formats.container import BytesSource, Draft, TensorSectionBuilder, tensor_views
from modelvault.formats.files import FilesPlugin
from modelvault.formats.manifest import Manifest

from .conftest import assemble, packb, small_draft

GOLDEN = Path(__file__).parent / "golden" / "small.mvpk"
GOLDEN_DIGEST = "blake3:a8b9d829870365bb5732a11f99d006d10953e42790437cf7c0aa5ae166fa7cc8"
LAYOUT_GOLDEN_1_1 = Path(__file__).parent / "golden" / "layout-1.1.mvpk"
LAYOUT_DIGEST_1_1 = "blake3:c523cebcc4d1ba3bd974ae7fb7783245654f190fe37efc2367c579dc69d84311"
LAYOUT_GOLDEN = Path(__file__).parent / "golden" / "layout-1.2.mvpk"
LAYOUT_DIGEST = "blake3:77369f5a61ed484aba5f4594cfb050a7882b1df265dbfa7a495090a91b40ebe4"
#: 64 KiB of a fixed pattern: large enough to stand alone.
BIG = bytes(range(256)) * 256


def layout_draft() -> Draft:
    """``small_draft`` plus what 1.1 lays out differently: a tensor large enough to
    stand alone, a second tensor with the same bytes as another (one shared range)
    and an empty tensor."""
    b = TensorSectionBuilder()
    b.add("weight", "float32", (2, 3), struct.pack("<6f", 1, 2, 3, 4, 5, 6))
    b.add("bias", "int64", (3,), struct.pack("<3q", -1, 0, 1))
    b.add("big", "uint8", (256, 256), BIG)
    b.add("weight_copy", "int32", (6,), struct.pack("<6f", 1, 2, 3, 4, 5, 6))
    b.add("empty", "float16", (0, 2), b"")
    b.alias("tied", "weight")
    d = small_draft()
    d.blobs = [blob for blob in d.blobs if blob.role == "graph"]
    d.tensors, d.tensor_aliases = [], {}
    d.payload = {"graph": {"blob": 0}}
    d.add_tensor_section(b)
    return d


def test_writer_is_byte_identical(tmp_path: Path) -> None:
    out = tmp_path / "layout.mvpk"
    write_bundle(layout_draft(), out)
    if os.environ.get("MVAULT_WRITE_GOLDEN") == "1":
        LAYOUT_GOLDEN.write_bytes(out.read_bytes())
    assert out.read_bytes() == LAYOUT_GOLDEN.read_bytes()


@pytest.mark.parametrize(
    ("golden", "version", "digest"),
    [
        (LAYOUT_GOLDEN_1_1, (1, 1), LAYOUT_DIGEST_1_1),
        (LAYOUT_GOLDEN, (1, 2), LAYOUT_DIGEST),
    ],
    ids=["1.1", "1.2"],
)
def test_committed_layout_golden_reads(golden: Path, version: tuple[int, int], digest: str) -> None:
    b = Bundle.open(golden)
    b.verify()
    m = b.manifest
    assert b.digest == m.digest == digest
    assert m.format_version == version
    assert [(r.role, r.size) for r in m.blobs] == [
        ("graph", 1200),
        ("tensors", 24),
        ("tensors", 24),
        ("tensors", 65536),
        ("tensors", 0),
    ]
    t = {e.name: e for e in m.tensors}
    assert (t["weight"].blob, t["weight"].offset) == (t["weight_copy"].blob, 0)  # one range
    assert m.blobs[t["big"].blob].digest == digest_bytes(BIG)  # the blob IS the tensor
    views = {}
    for i in {e.blob for e in m.tensors}:
        views.update(tensor_views(m, i, memoryview(b.read_blob(i))))
    assert struct.unpack("<6f", views["weight"]) == (1, 2, 3, 4, 5, 6)
    assert views["weight_copy"] == views["weight"]
    assert struct.unpack("<3q", views["bias"]) == (-1, 0, 1)
    assert bytes(views["big"]) == BIG
    assert bytes(views["empty"]) == b""
    assert m.tensor_aliases == {"tied": "weight"}


def test_committed_golden_file_reads() -> None:
    b = Bundle.open(GOLDEN)
    b.verify()
    m = b.manifest
    assert b.digest == m.digest == GOLDEN_DIGEST
    assert m.format_version == (1, 0)
    assert (m.plugin, m.plugin_version) == ("test", "1")
    assert m.metadata == {"author": "tests", "tags": ["a", "b"], "score": 0.5}
    assert m.tensor_aliases == {"tied": "weight"}
    views = tensor_views(m, 0, memoryview(b.read_blob(0)))
    assert struct.unpack("<6f", views["weight"]) == (1, 2, 3, 4, 5, 6)
    assert struct.unpack("<3q", views["bias"]) == (-1, 0, 1)
    assert b.read_blob(1) == b"graph bytes\n" * 100


@pytest.mark.parametrize(
    "golden", [GOLDEN, LAYOUT_GOLDEN_1_1, LAYOUT_GOLDEN], ids=["1.0", "1.1", "1.2"]
)
def test_specification_layout_matches_the_writer(golden: Path) -> None:
    """Bytes assembled from docs/FORMAT.md alone equal the golden file."""
    data = golden.read_bytes()
    m_len = struct.unpack("<Q", data[16:24])[0]
    manifest = Manifest.decode(data[64 : 64 + m_len])
    b = Bundle.open(golden)
    blobs = [b.read_blob(i) for i in range(len(manifest.blobs))]
    minor = manifest.format_version[1]
    stored = data[64 : 64 + m_len]
    assert packb(manifest.to_wire()) == (zlib.decompress(stored) if minor >= 2 else stored)
    assert assemble(manifest.to_wire(), blobs, minor=minor) == data


def test_a_1_0_container_written_again_is_the_same_file(tmp_path: Path) -> None:
    """Export rebuilds a stored container from its manifest: a 1.0 one stays 1.0,
    preamble included, so it keeps its digest (and here its very bytes)."""
    b = Bundle.open(GOLDEN)
    m = b.manifest
    d = Draft.from_manifest(m)
    for i, ref in enumerate(m.blobs):
        d.add_blob(ref.role, ref.media_type, BytesSource(b.read_blob(i)))
    out = tmp_path / "again.mvpk"
    assert write_bundle(d, out).digest == GOLDEN_DIGEST
    assert out.read_bytes() == GOLDEN.read_bytes()


FILES_GOLDEN = Path(__file__).parent / "golden" / "files.mvpk"
FILES_GOLDEN_1_1 = Path(__file__).parent / "golden" / "files-1.1.mvpk"
FILES_GOLDEN_1_2 = Path(__file__).parent / "golden" / "files-1.2.mvpk"


def _files_tree(root: Path) -> Path:
    (root / "a").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a" / "x.txt").write_bytes(b"hello\n")
    (root / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "a" / "x.txt").chmod(0o644)
    (root / "same.txt").write_bytes(b"hello\n")
    (root / "same.txt").chmod(0o644)
    os.symlink("a/x.txt", root / "link")
    return root


def test_files_container_is_byte_identical(tmp_path: Path) -> None:
    out = tmp_path / "files.mvpk"
    write_bundle(FilesPlugin().pack(_files_tree(tmp_path / "tree")), out)
    if os.environ.get("MVAULT_WRITE_GOLDEN") == "1":
        FILES_GOLDEN_1_2.write_bytes(out.read_bytes())
    assert out.read_bytes() == FILES_GOLDEN_1_2.read_bytes()


@pytest.mark.parametrize(
    "golden", [FILES_GOLDEN, FILES_GOLDEN_1_1, FILES_GOLDEN_1_2], ids=["1.0", "1.1", "1.2"]
)
def test_committed_files_container_unpacks(golden: Path, tmp_path: Path) -> None:
    b = Bundle.open(golden)
    b.verify()
    assert (b.manifest.plugin, b.manifest.plugin_version) == ("files", "1")
    out = FilesPlugin().load(b, dest=tmp_path / "out")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "a",
        "a/x.txt",
        "empty",
        "link",
        "run.sh",
        "same.txt",
    ]
    assert (out / "a" / "x.txt").read_bytes() == (out / "same.txt").read_bytes() == b"hello\n"
    assert os.readlink(out / "link") == "a/x.txt"
    assert (out / "run.sh").stat().st_mode & 0o777 == 0o755
    assert len(b.manifest.blobs) == 2


@pytest.mark.parametrize("form", ["deflated-at-level-1", "plain-msgpack"])
def test_a_1_2_manifest_another_writer_encoded_is_exported_as_its_own_bytes(
    tmp_path: Path, form: str
) -> None:
    """A 1.2 manifest deflated by another zlib build or level, or stored plain (both
    valid), written again (an export) keeps its very bytes and digest: never
    deflated again (docs/FORMAT.md section 15, rule 3)."""
    b = Bundle.open(LAYOUT_GOLDEN)
    plain = packb(b.manifest.to_wire())
    stored = zlib.compress(plain, 1) if form.startswith("deflated") else plain
    assert stored != b.manifest.encode()
    m = Manifest.decode(stored)
    d = Draft.from_manifest(m)
    for i, ref in enumerate(m.blobs):
        d.add_blob(ref.role, ref.media_type, BytesSource(b.read_blob(i)))
    out = tmp_path / "again.mvpk"
    written = write_bundle(d, out)
    assert written.digest == digest_bytes(stored) == m.digest
    again = Bundle.open(out)
    again.verify()
    assert again.manifest.encode() == stored and again.digest == m.digest
