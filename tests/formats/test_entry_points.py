"""Third-party format plugins declared through entry points, and the cheap scan
(``modelvault._entry_points.may_declare``) that lets a push skip
``importlib.metadata`` where no distribution declares one.

The oracle is the standard library: for every layout tried, the scan may answer
True where ``importlib.metadata`` finds nothing (the caller then asks it), but
never False where it finds an entry point.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelvault._entry_points import may_declare
from tests.cli.importtime import run_importtime

GROUP = "modelvault.formats"

PLUGIN_SRC = """\
from modelvault.formats.files import FilesPlugin


class NotesPlugin(FilesPlugin):
    name = "notes"
    version = "1.0"
    description = "plain notes, a third-party test plugin"

    def can_pack_path(self, path):
        return path.suffix == ".notes"
"""


def _stdlib_finds(path: list[str], group: str = GROUP) -> bool:
    return any(len(d.entry_points.select(group=group)) > 0 for d in md.distributions(path=path))


def _dist(
    root: Path, name: str, entry_points: str | bytes | None, suffix: str = ".dist-info"
) -> Path:
    d = root / f"{name}-1.0{suffix}"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    if entry_points is not None:
        data = entry_points.encode() if isinstance(entry_points, str) else entry_points
        (d / "entry_points.txt").write_bytes(data)
    return d


def test_this_environment_agrees_with_the_standard_library() -> None:
    found = len(md.entry_points(group=GROUP)) > 0
    assert may_declare(GROUP) or not found
    # Groups that the installed tools do declare are seen.
    assert may_declare("console_scripts")
    assert may_declare("pytest11")


@pytest.mark.parametrize(
    ("text", "stdlib", "ours"),
    [
        ("[modelvault.formats]\nnotes = notes_plugin:NotesPlugin\n", True, True),
        ("[console_scripts]\nx = y:z\n\n[modelvault.formats]\n", False, False),  # empty section
        ("[modelvault.formats]\n# notes = notes_plugin:NotesPlugin\n   # indented\n", False, False),
        ("  [modelvault.formats]  \n  notes = a:b\n", True, True),
        ("[modelvault.formats.extra]\nnotes = a:b\n", False, False),
        ("[modelvault.stores]\nmodelvault.formats = a:b\n", False, False),
        (
            "[console_scripts]\nmodelvault.formats = a:b\n[modelvault.formats]\nn = a:b\n",
            True,
            True,
        ),
        # Where the scan reads more loosely than the standard library, it says True
        # and the caller asks the standard library: never the other way round.
        ("[ modelvault.formats ]\nnotes = a:b\n", False, True),
        ("[[modelvault.formats]]\nnotes = a:b\n", True, True),
        ("\ufeff[modelvault.formats]\nnotes = a:b\n", False, False),
    ],
)
def test_entry_point_files_are_read_as_the_standard_library_reads_them(
    tmp_path: Path, text: str, stdlib: bool, ours: bool
) -> None:
    _dist(tmp_path, "thirdparty", text)
    assert _stdlib_finds([str(tmp_path)]) == stdlib
    assert may_declare(GROUP, [str(tmp_path)]) == ours


def test_a_line_the_standard_library_cannot_parse_is_left_to_it(tmp_path: Path) -> None:
    # ';' is no comment to importlib.metadata: the line is an entry without '=', on
    # which it raises. The scan answers True, so the caller meets the same error.
    _dist(tmp_path, "semi", "[modelvault.formats]\n; not a comment\n")
    with pytest.raises(TypeError):
        _stdlib_finds([str(tmp_path)])
    assert may_declare(GROUP, [str(tmp_path)])


def test_layouts_the_scan_cannot_read_are_answered_true(tmp_path: Path) -> None:
    # An egg-info directory counts like a dist-info one, in any case of its suffix.
    _dist(tmp_path / "a", "eggy", "[modelvault.formats]\nn = a:b\n", suffix=".egg-info")
    _dist(tmp_path / "b", "Upper", "[modelvault.formats]\nn = a:b\n", suffix=".DIST-INFO")
    for sub in ("a", "b"):
        assert _stdlib_finds([str(tmp_path / sub)])
        assert may_declare(GROUP, [str(tmp_path / sub)])
    # A zip on the path: importlib.metadata looks inside it, the scan does not.
    zpath = tmp_path / "plugins.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr(
            "zipped-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: zipped\nVersion: 1.0\n"
        )
        z.writestr("zipped-1.0.dist-info/entry_points.txt", "[modelvault.formats]\nn = a:b\n")
    assert _stdlib_finds([str(zpath)])
    assert may_declare(GROUP, [str(zpath)])
    # An unpacked egg directory, an unreadable entry_points.txt, bytes that are not UTF-8.
    egg = tmp_path / "thing-1.0.egg"
    egg.mkdir()
    assert may_declare(GROUP, [str(egg)])
    bad = _dist(tmp_path / "c", "binary", b"[modelvault.formats]\nn = \xff\xfe\n")
    assert may_declare(GROUP, [str(tmp_path / "c")])
    if os.geteuid() != 0:  # root reads through any mode
        (bad / "entry_points.txt").chmod(0)
        assert may_declare(GROUP, [str(tmp_path / "c")])
    # Missing and empty entries, an egg-info that is a file: nothing is declared.
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old-1.0.egg-info").write_text("Metadata-Version: 1.0\nName: old\n")
    assert not may_declare(GROUP, [str(tmp_path / "nowhere"), str(tmp_path / "d")])


def test_a_distribution_finder_on_the_meta_path_sends_the_caller_to_the_standard_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Finder:
        def find_spec(self, *a: object) -> None:
            return None

        def find_distributions(self, *a: object) -> list[object]:
            return []

    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    assert may_declare(GROUP)


_LINE = st.sampled_from(
    [
        "[modelvault.formats]",
        "[ modelvault.formats ]",
        "[modelvault.stores]",
        "[console_scripts]",
        "notes = notes_plugin:NotesPlugin",
        "modelvault.formats = x:y",
        "# a comment",
        "; a comment",
        "",
        "   ",
        "[modelvault.formats] # trailing",
        "[broken",
    ]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(_LINE, max_size=8))
def test_random_entry_point_files_never_hide_an_entry_point(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str]
) -> None:
    root = tmp_path_factory.mktemp("ep")
    _dist(root, "random", "\n".join(lines) + "\n")
    try:
        stdlib = _stdlib_finds([str(root)])
    except (TypeError, ValueError):
        return  # a file the standard library cannot parse at all: it declares nothing it can load
    assert may_declare(GROUP, [str(root)]) or not stdlib


@pytest.mark.slow
def test_a_plugin_installed_by_pip_packs_its_files_and_a_plain_push_skips_package_metadata(
    tmp_path: Path,
) -> None:
    """A real distribution, built and installed by pip, declares a format plugin:
    a push of its kind of file goes to it (so the scan sent the lookup on to
    importlib.metadata), and the same push without it never imports importlib.metadata."""
    src = tmp_path / "src"
    (src / "notes_plugin").mkdir(parents=True)
    (src / "notes_plugin" / "__init__.py").write_text(PLUGIN_SRC)
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "notes-plugin"\nversion = "1.0"\n\n'
        '[project.entry-points."modelvault.formats"]\nnotes = "notes_plugin:NotesPlugin"\n\n'
        '[tool.setuptools]\npackages = ["notes_plugin"]\n'
    )
    site = tmp_path / "site"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    assert may_declare(GROUP, [str(site)])

    work = tmp_path / "work"
    work.mkdir()
    (work / "todo.notes").write_text("buy milk\n")
    home = tmp_path / "home"

    _, first = run_importtime(["push", "first:1.0.0", "todo.notes"], home, work)  # creates the home
    assert first.returncode == 0, first.stderr[-2000:]
    mods, plain = run_importtime(["push", "todo:1.0.0", "todo.notes"], home, work)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "(files)" in plain.stdout
    assert "importlib.metadata" not in mods

    _, with_plugin = run_importtime(["push", "todo:1.0.1", "todo.notes"], home, work, site)
    assert with_plugin.returncode == 0, with_plugin.stderr[-2000:]
    assert "(notes)" in with_plugin.stdout
    _, shown = run_importtime(["show", "todo@1.0.1", "--json"], home, work, site)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert '"notes"' in shown.stdout


def test_path_like_and_bytes_entries_on_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sys.path may hold pathlib paths (the standard library reads them) or bytes (it raises)."""
    _dist(tmp_path, "pathy", "[modelvault.formats]\nn = a:b\n")
    assert _stdlib_finds([tmp_path])  # type: ignore[list-item]
    assert may_declare(GROUP, [tmp_path])  # type: ignore[list-item]
    assert may_declare(GROUP, [os.fsencode(tmp_path)])  # type: ignore[list-item]
    monkeypatch.setattr(sys, "path", [tmp_path, *sys.path])
    assert may_declare(GROUP)


def test_a_plugin_on_a_pathlib_entry_is_found_by_the_plugin_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelvault.formats import registry

    # The import system skips entries that are not str; importlib.metadata reads them.
    code, meta = tmp_path / "code", tmp_path / "meta"
    code.mkdir()
    (code / "notes_plugin.py").write_text(PLUGIN_SRC)
    _dist(meta, "notes_plugin", "[modelvault.formats]\nnotes = notes_plugin:NotesPlugin\n")
    monkeypatch.setattr(sys, "path", [meta, str(code), *sys.path])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "_extra", {})
    monkeypatch.setattr(registry, "_instances", {})
    try:
        assert "notes" in registry.known_plugins()
        assert registry.get_plugin("notes").name == "notes"
    finally:
        sys.modules.pop("notes_plugin", None)
