"""What ``inspect`` calls intact and ``import`` registers can be pulled and loaded.

Each bundle below is assembled from ``docs/FORMAT.md`` with every CRC and
digest right: only its payload's meaning is broken. ``inspect`` reports it as
not intact (exit 5), ``import`` refuses it and registers nothing, and a
registry row pointing at the same manifest is refused at pull and load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelvault.digest import digest_bytes
from modelvault.errors import ManifestError
from modelvault.formats.files import FilesPlugin
from modelvault.formats.manifest import Manifest
from tests.cli.conftest import mvault  # noqa: F401  (fixture)
from tests.formats.conftest import manifest_wire
from tests.formats.hostile import bundle_from, draft_parts, every_way_refused

DATA = b"weights\n" * 64


def files_wire(entries: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    blob = {
        "digest": digest_bytes(DATA),
        "media_type": "application/octet-stream",
        "role": "file",
        "size": len(DATA),
    }
    return manifest_wire(
        [blob],
        plugin=fields.pop("plugin", {"name": "files", "version": FilesPlugin.version}),
        payload={"entries": entries, "root": "dir"},
        **fields,
    )


def file_entry(path: str, blob: Any = 0) -> dict[str, Any]:
    return {"blob": blob, "executable": False, "path": path, "type": "file"}


CASES: dict[str, tuple[list[dict[str, Any]], str]] = {
    "dot-dot": ([file_entry("../../x")], "has an empty, '.' or '..' component"),
    "inner dot-dot": ([file_entry("a/../../x")], "has an empty, '.' or '..' component"),
    "absolute": ([file_entry("/etc/cron.d/x")], "is absolute"),
    "windows absolute": ([file_entry("C:/x")], "is absolute"),
    "escaping symlink": (
        [{"path": "link", "target": "../../etc", "type": "symlink"}],
        "points outside the tree",
    ),
    "absolute symlink": (
        [{"path": "link", "target": "/etc/passwd", "type": "symlink"}],
        "has an absolute target",
    ),
    "file under symlink": (
        [{"path": "d", "target": ".", "type": "symlink"}, file_entry("d/x")],
        "lies under symlink",
    ),
    "NUL in name": ([file_entry("a\x00b")], "control characters"),
    "newline in name": ([file_entry("a\nb")], "control characters"),
    "ESC in name": ([file_entry("a\x1b[2Jb")], "control characters"),
    "blob 5": ([file_entry("x", 5)], "payload.entries[0].blob is 5; the container has blobs 0..0"),
    "blob -1": (
        [file_entry("x", -1)],
        "payload.entries[0].blob is -1; the container has blobs 0..0",
    ),
    "blob true": ([file_entry("x", True)], "payload.entries[0].blob is True"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_files_payload_refused_everywhere(case: str, tmp_path: Path) -> None:
    entries, message = CASES[case]
    wire = files_wire(entries)
    manifest = Manifest.decode(_encode(wire))
    bundle = bundle_from(wire, [DATA], tmp_path / "bad.mvpk")
    errors = every_way_refused(bundle, manifest, [DATA], tmp_path, None)
    assert message in str(errors[0]), errors[0]
    assert list(tmp_path.parent.glob("x")) == [] and not Path("/etc/cron.d/x").exists()


@pytest.mark.parametrize("plugin", ["evil", "os.system"])
def test_unknown_plugin_refused(plugin: str, tmp_path: Path) -> None:
    wire = files_wire([file_entry("x")], plugin={"name": plugin, "version": "1"})
    manifest = Manifest.decode(_encode(wire))
    bundle = bundle_from(wire, [DATA], tmp_path / "bad.mvpk")
    errors = every_way_refused(bundle, manifest, [DATA], tmp_path, None)
    assert f"format plugin {plugin!r} is not installed here" in str(errors[0])


def test_tensors_naming_missing_entries(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from modelvault.formats.tensors import TensorsPlugin

    draft = TensorsPlugin().pack({"a": torch.ones(3), "b": torch.zeros(2)})
    draft.payload["order"] = ["a", "b", "ghost"]
    manifest, blobs = draft_parts(draft)
    bundle = bundle_from(manifest, blobs, tmp_path / "bad.mvpk")
    errors = every_way_refused(bundle, manifest, blobs, tmp_path, None)
    assert "missing tensor(s) 'ghost'" in str(errors[0])


def test_torchscript_archive_that_is_not_an_archive(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from modelvault.formats.torchscript import TorchScriptPlugin

    module = torch.jit.trace(torch.nn.Linear(2, 2), torch.randn(1, 2))
    draft = TorchScriptPlugin().pack(module)
    index = draft.payload["archive"]["blob"]
    from modelvault.formats.container import BytesSource, DraftBlob

    old = draft.blobs[index]
    draft.blobs[index] = DraftBlob(old.role, old.media_type, BytesSource(b"not a zip at all"))
    manifest, blobs = draft_parts(draft)
    bundle = bundle_from(manifest, blobs, tmp_path / "bad.mvpk")
    errors = every_way_refused(bundle, manifest, blobs, tmp_path, None)
    assert "the torchscript archive blob is not a zip archive" in str(errors[0])


def test_inspect_and_import_through_the_cli(mvault, tmp_path: Path) -> None:  # noqa: F811
    bundle = bundle_from(files_wire([file_entry("../../x")]), [DATA], tmp_path / "bad.mvpk")
    r = mvault("inspect", str(bundle))
    assert r.code == 5
    assert "NOT intact" in r.out and "'..' component" in r.out
    r = mvault("inspect", str(bundle), "--json")
    info = json.loads(r.out)
    assert r.code == 5 and info["verified"] is True and info["valid"] is False
    r = mvault("import", str(bundle), "m:1.0.0")
    assert r.code == 5 and "'..' component" in r.err
    assert json.loads(mvault("ls", "--json").out) == []


def test_inspect_escapes_control_characters(mvault, tmp_path: Path) -> None:  # noqa: F811
    wire = files_wire(
        [file_entry("ok")],
        metadata={"note\x1b[31m": "\x1b[2Jcleared\x07", "line": "a\nb\u2028c"},
        frameworks={"torch": "2\x1b]0;title\x07"},
    )
    bundle = bundle_from(wire, [DATA], tmp_path / "ok.mvpk")
    r = mvault("inspect", str(bundle))
    assert r.code == 0, r.err
    assert "\x1b" not in r.out and "\x07" not in r.out and "\u2028" not in r.out
    assert "\\x1b[2Jcleared\\x07" in r.out and "a\\nb\\u2028c" in r.out
    assert "intact: every blob verified, payload valid" in r.out


@pytest.mark.parametrize(
    ("shape", "strides"),
    [([1 << 63, 0], [0, 1]), ([0, (1 << 64) - 1], [1, 1]), ([0, 2], [1 << 63, 1])],
)
def test_dimensions_past_int64_are_refused(shape: list[int], strides: list[int]) -> None:
    tensors = [
        {
            "blob": 0,
            "dtype": "float32",
            "name": "t",
            "nbytes": 0,
            "offset": 0,
            "shape": shape,
            "strides": strides,
        }
    ]
    blob = {"digest": digest_bytes(b""), "media_type": "x/y", "role": "tensors", "size": 0}
    with pytest.raises(ManifestError, match=r"exceeds 2\*\*63 - 1"):
        Manifest.decode(_encode(manifest_wire([blob], tensors=tensors)))


def _encode(wire: dict[str, Any]) -> bytes:
    from tests.formats.conftest import packb

    return packb(wire)


def test_valid_bundle_is_intact(tmp_path: Path) -> None:
    """The refusals above are about meaning: the same container with sane entries is accepted."""
    from modelvault.formats.bundle import Bundle
    from modelvault.formats.validation import validate_container

    bundle = bundle_from(files_wire([file_entry("x")]), [DATA], tmp_path / "ok.mvpk")
    b = Bundle.open(bundle)
    b.verify()
    validate_container(b)
