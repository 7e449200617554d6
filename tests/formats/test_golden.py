"""Pin the exact bytes of a small bundle, and keep reading the committed copy.

``golden/small.mvpk`` (tensors, a graph blob, metadata) and ``golden/files.mvpk``
(a small tree through the ``files`` plugin) were written by format 1.0. If ``test_writer_is_byte_identical``
fails, the format changed: that must be deliberate (a new minor or major version,
docs/FORMAT.md updated), and the old file must still read. Regenerate a new
golden file only for a new format version, never to make this test pass:

    MVAULT_WRITE_GOLDEN=1 PYTHONPATH=src python -m pytest tests/formats/test_golden.py
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from modelvault.formats.bundle import Bundle, write_bundle
from modelvault.formats.container import tensor_views
from modelvault.formats.files import FilesPlugin
from modelvault.formats.manifest import Manifest

from .conftest import assemble, packb, small_draft

GOLDEN = Path(__file__).parent / "golden" / "small.mvpk"
GOLDEN_DIGEST = "blake3:a8b9d829870365bb5732a11f99d006d10953e42790437cf7c0aa5ae166fa7cc8"


def test_writer_is_byte_identical(tmp_path: Path) -> None:
    out = tmp_path / "small.mvpk"
    write_bundle(small_draft(), out)
    if os.environ.get("MVAULT_WRITE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_bytes(out.read_bytes())
    assert out.read_bytes() == GOLDEN.read_bytes()


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


def test_specification_layout_matches_the_writer() -> None:
    """Bytes assembled from docs/FORMAT.md alone equal the golden file."""
    data = GOLDEN.read_bytes()
    m_len = struct.unpack("<Q", data[16:24])[0]
    manifest = Manifest.decode(data[64 : 64 + m_len])
    b = Bundle.open(GOLDEN)
    blobs = [b.read_blob(i) for i in range(len(manifest.blobs))]
    assert packb(manifest.to_wire()) == data[64 : 64 + m_len]
    assert assemble(manifest.to_wire(), blobs) == data


FILES_GOLDEN = Path(__file__).parent / "golden" / "files.mvpk"


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
        FILES_GOLDEN.write_bytes(out.read_bytes())
    assert out.read_bytes() == FILES_GOLDEN.read_bytes()


def test_committed_files_container_unpacks(tmp_path: Path) -> None:
    b = Bundle.open(FILES_GOLDEN)
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
