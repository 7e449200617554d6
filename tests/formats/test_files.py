"""The files format: trees and single files come back byte-identical."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelvault.errors import PayloadMismatchError, UnsafePathError
from modelvault.formats.bundle import Bundle, write_bundle
from modelvault.formats.container import DirectorySource, write_directory
from modelvault.formats.files import FilesPlugin, check_link_target, check_relative_path
from modelvault.formats.registry import detect_path, get_plugin

from .conftest import listing


def snapshot(root: Path) -> dict[str, tuple[str, object, bool]]:
    """Every entry under ``root``: kind, content or link target, executable bit."""
    out: dict[str, tuple[str, object, bool]] = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(d) / n
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p), False)
            elif p.is_dir():
                out[rel] = ("dir", None, False)
            else:
                out[rel] = ("file", p.read_bytes(), bool(p.stat().st_mode & stat.S_IXUSR))
    return out


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty-dir" / "nested-empty").mkdir(parents=True)
    (root / "a" / "b" / "c" / "deep.bin").write_bytes(os.urandom(70_000))
    (root / "empty.txt").write_bytes(b"")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "ünïcödé ✓.txt").write_text("名前\n")
    (root / "same1").write_bytes(b"same contents")
    (root / "same2").write_bytes(b"same contents")
    os.link(root / "run.sh", root / "a" / "hardlink.sh")
    os.symlink("a/b/c/deep.bin", root / "link-to-file")
    os.symlink("b", root / "a" / "link-to-dir")
    os.symlink("../../run.sh", root / "a" / "b" / "up-link")
    os.symlink("missing", root / "dangling")
    return root


@pytest.mark.parametrize("via", ["bundle", "directory"])
def test_tree_round_trip(tmp_path: Path, tree: Path, via: str) -> None:
    plugin = FilesPlugin()
    draft = plugin.pack(tree)
    source: Bundle | DirectorySource
    if via == "bundle":
        write_bundle(draft, tmp_path / "t.mvpk")
        source = Bundle.open(tmp_path / "t.mvpk")
    else:
        source = write_directory(draft, tmp_path / "dir")
    m = source.manifest
    # hard links and identical files share one blob
    assert len(m.blobs) == 5  # empty, run.sh (+ its hard link), unicode, same1=same2, deep
    out = plugin.export_native(source, tmp_path / "out" / "tree")
    assert snapshot(out) == snapshot(tree)
    assert (out / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (out / "empty.txt").stat().st_mode & 0o777 == 0o644
    assert not [p for p in os.listdir(tmp_path / "out") if p.startswith(".")]


def test_single_file_round_trip(tmp_path: Path) -> None:
    f = tmp_path / "model.bin"
    f.write_bytes(os.urandom(10_000))
    f.chmod(0o700)
    plugin = get_plugin("files")
    assert isinstance(plugin, FilesPlugin)
    m = write_bundle(plugin.pack(f), tmp_path / "f.mvpk")
    assert m.payload == {
        "entries": [{"blob": 0, "executable": True, "path": "model.bin", "type": "file"}],
        "root": "file",
    }
    out = plugin.load(Bundle.open(tmp_path / "f.mvpk"), dest=tmp_path / "copy.bin")
    assert out.read_bytes() == f.read_bytes()
    assert out.stat().st_mode & 0o111
    fresh = plugin.load(Bundle.open(tmp_path / "f.mvpk"))
    assert fresh.read_bytes() == f.read_bytes()


def test_empty_tree(tmp_path: Path) -> None:
    (tmp_path / "e").mkdir()
    plugin = FilesPlugin()
    write_bundle(plugin.pack(tmp_path / "e"), tmp_path / "e.mvpk")
    out = plugin.export_native(Bundle.open(tmp_path / "e.mvpk"), tmp_path / "o")
    assert out.is_dir()
    assert not list(out.iterdir())


def test_refuses_to_overwrite(tmp_path: Path, tree: Path) -> None:
    plugin = FilesPlugin()
    write_bundle(plugin.pack(tree), tmp_path / "t.mvpk")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        plugin.export_native(Bundle.open(tmp_path / "t.mvpk"), tmp_path / "taken")
    assert (tmp_path / "taken" / "keep").read_text() == "mine"
    os.symlink("nowhere", tmp_path / "link")
    with pytest.raises(FileExistsError):
        plugin.export_native(Bundle.open(tmp_path / "t.mvpk"), tmp_path / "link")


@pytest.mark.parametrize(
    "target",
    ["/etc", "../../outside", "../outside", "sub/../../x"],
    ids=["abs", "up2", "up1", "mixed"],
)
def test_pack_refuses_symlinks_pointing_outside(tmp_path: Path, target: str) -> None:
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    os.symlink(target, root / "sub" / "bad" if target == "../../outside" else root / "bad")
    with pytest.raises(UnsafePathError, match=r"outside|absolute|may only lead") as info:
        FilesPlugin().pack(root)
    assert "follow_symlinks" in (info.value.hint or "")


def test_pack_follow_symlinks_copies_targets(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("data")
    root = tmp_path / "src"
    root.mkdir()
    os.symlink(outside, root / "l")
    plugin = FilesPlugin()
    write_bundle(plugin.pack(root, follow_symlinks=True), tmp_path / "t.mvpk")
    out = plugin.export_native(Bundle.open(tmp_path / "t.mvpk"), tmp_path / "o")
    assert not (out / "l").is_symlink()
    assert (out / "l").read_text() == "data"


def test_pack_refuses_special_files_and_missing_paths(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    os.mkfifo(root / "fifo")
    with pytest.raises(PayloadMismatchError, match="not a regular file"):
        FilesPlugin().pack(root)
    with pytest.raises(FileNotFoundError):
        FilesPlugin().pack(tmp_path / "nope")
    (tmp_path / "bad\\name").mkdir()
    with pytest.raises(UnsafePathError):
        FilesPlugin().pack(tmp_path)


def test_root_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("x")
    os.symlink("real", tmp_path / "link")
    with pytest.raises(PayloadMismatchError, match="is a symlink") as info:
        FilesPlugin().pack(tmp_path / "link")
    assert "follow_symlinks" in (info.value.hint or "")
    draft = FilesPlugin().pack(tmp_path / "link", follow_symlinks=True)
    assert draft.payload["entries"][0]["path"] == "link"


def test_detection(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    assert detect_path(tmp_path / "x").name in {
        "files",
        "tensors",
        "torchscript",
        "exported_program",
    }
    assert FilesPlugin().can_pack(tmp_path / "x")
    assert not FilesPlugin().can_pack(tmp_path / "y")


def test_path_rules() -> None:
    assert check_relative_path("a/b c/ü.txt") == "a/b c/ü.txt"
    for bad in ["", "/a", "a/../b", "./a", "a/", "a\\b", "C:x", "a\x00b", 3]:
        with pytest.raises(UnsafePathError):
            check_relative_path(bad)
    assert check_link_target("a/b/l", "../../x") == "../../x"
    assert check_link_target("l", "./x//y") == "./x//y"
    assert check_link_target("a/l", "..") == ".."
    for path, target in [("l", ".."), ("a/l", "../.."), ("l", "x/../y"), ("l", "/x"), ("l", "")]:
        with pytest.raises(UnsafePathError):
            check_link_target(path, target)


def test_unpack_failure_removes_created_parents(tmp_path: Path, tree: Path) -> None:
    plugin = FilesPlugin()
    write_bundle(plugin.pack(tree), tmp_path / "t.mvpk")
    b = Bundle.open(tmp_path / "t.mvpk")
    data = bytearray((tmp_path / "t.mvpk").read_bytes())
    data[b.extents[-1][0]] ^= 1
    (tmp_path / "t.mvpk").write_bytes(data)
    before = listing(tmp_path)
    with pytest.raises(Exception, match="damaged"):
        plugin.export_native(Bundle.open(tmp_path / "t.mvpk"), tmp_path / "x" / "y" / "z")
    assert listing(tmp_path) == before


NAME = st.text(alphabet=st.sampled_from("abcXYZ019 -_.é✓名"), min_size=1, max_size=8).filter(
    lambda n: n not in (".", "..")
)
TREE = st.recursive(
    st.tuples(st.binary(max_size=3000), st.booleans()),
    lambda inner: st.dictionaries(NAME, inner, max_size=4),
    max_leaves=12,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(NAME, TREE, max_size=5))
def test_random_trees_round_trip(tmp_path: Path, spec: dict[str, Any]) -> None:
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    root = base / "src"
    root.mkdir()

    def build(d: Path, node: dict[str, Any]) -> None:
        for name, child in node.items():
            if isinstance(child, dict):
                (d / name).mkdir()
                build(d / name, child)
            else:
                data, exe = child
                (d / name).write_bytes(data)
                (d / name).chmod(0o755 if exe else 0o644)

    build(root, spec)
    plugin = FilesPlugin()
    write_bundle(plugin.pack(root), base / "t.mvpk")
    out = plugin.export_native(Bundle.open(base / "t.mvpk"), base / "out")
    assert snapshot(out) == snapshot(root)
