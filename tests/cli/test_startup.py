"""What the everyday commands import: nothing heavy for work that does not need it.

Each command runs in a fresh interpreter under ``python -X importtime``; the
test reads which modules were imported (not how long they took, which depends
on the machine) and refuses torch, numpy, boto3 and the rest where the command
has no use for them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from modelvault.cli import main
from tests.cli.importtime import run_importtime

#: Never needed by listing, showing, aliasing, or pushing a plain file.
HEAVY = ("torch", "numpy", "safetensors", "boto3", "botocore", "torch_tensorrt", "tensorrt")
#: Parts of the standard library that cost tens of milliseconds to import
#: (importlib.metadata pulls in the email package) and that only doctor, or a
#: plugin lookup in an environment where a distribution declares plugins, uses.
STDLIB_SLOW = ("importlib.metadata", "email", "platform")
#: --help needs no database either.
DATABASE = ("sqlalchemy", "alembic", "psycopg", "pymysql", "sqlite3")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("startup")
    (root / "notes.txt").write_text("three\n")
    (root / "weights.bin").write_bytes(os.urandom(4096))
    home = root / "home"
    _, proc = run_importtime(["push", "base:1.0.0", "notes.txt"], home, root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return home, root


@pytest.mark.parametrize(
    "args",
    [
        ["ls"],
        ["ls", "base"],
        ["show", "base@1.0.0"],
        ["alias", "set", "base", "prod", "1.0.0"],
        ["push", "other:1.0.0", "weights.bin"],
        ["push", "other:1.0.1", "notes.txt", "--alias", "staging"],
    ],
    ids=lambda a: " ".join(a),
)
def test_everyday_commands_import_nothing_heavy(args: list[str], home: tuple[Path, Path]) -> None:
    mods, proc = run_importtime(args, *home)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "modelvault" in mods
    heavy = sorted(m for m in HEAVY if m in mods)
    assert heavy == [], f"`mvault {' '.join(args)}` imported {heavy}"
    oci = sorted(
        m for m in mods if m.startswith("modelvault.oci.") and m != "modelvault.oci.reference"
    )
    assert oci == [], f"`mvault {' '.join(args)}` loaded the OCI client: {oci}"
    # The embedded registry at the head revision is read and written through
    # registry/lite.py: SQLAlchemy's import alone costs more than the 150 ms goal.
    orm = sorted(m for m in ("sqlalchemy", "alembic") if m in mods)
    assert orm == [], f"`mvault {' '.join(args)}` imported {orm}"
    # A plain file's push asks the installed plugins whether one of them packs it,
    # but where no distribution declares one (here: none does) it finds that out
    # without importlib.metadata (modelvault._entry_points); nothing reads package metadata.
    slow = sorted(m for m in STDLIB_SLOW if m in mods)
    assert slow == [], f"`mvault {' '.join(args)}` imported {slow}"


def test_help_imports_no_database_driver(home: tuple[Path, Path]) -> None:
    for args in (["--help"], ["push", "--help"], ["ls", "--help"]):
        mods, proc = run_importtime(args, *home)
        assert proc.returncode == 0, proc.stderr[-2000:]
        found = sorted(m for m in HEAVY + DATABASE + STDLIB_SLOW if m in mods)
        assert found == [], f"`mvault {' '.join(args)}` imported {found}"


def test_a_torch_archive_name_does_not_fall_back_to_bytes(home: tuple[Path, Path]) -> None:
    """Random bytes named .pt2 are refused, not published as a plain file (exit 5)."""
    _, root = home
    (root / "model.pt2").write_bytes(os.urandom(2048))
    (root / "model.safetensors").write_bytes(os.urandom(2048))
    for name in ("model.pt2", "model.safetensors"):
        _, proc = run_importtime(["push", "bad:1.0.0", name], *home)
        assert proc.returncode == 5, proc.stderr[-2000:]
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mvault:")]
        assert len(lines) == 1 and "truncated or corrupt" in lines[0], proc.stderr[-2000:]
    _, proc = run_importtime(["push", "bad:1.0.0", "model.pt2", "--format", "files"], *home)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("args", [["ls"], ["ls", "base"], ["show", "base@1.0.0"]], ids=" ".join)
def test_reading_an_up_to_date_registry_does_not_import_alembic(
    args: list[str], home: tuple[Path, Path]
) -> None:
    # The schema check compares alembic_version with the known head in one SELECT.
    mods, proc = run_importtime(args, *home)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "alembic" not in mods, f"`mvault {' '.join(args)}` imported alembic"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def _named(defaults: dict[str, object]) -> dict[str, object]:
    """Defaults with functions by name (a wrapped handler is a new function each build)."""
    return {k: getattr(v, "__qualname__", v) for k, v in defaults.items()}


def test_a_command_builds_the_same_parser_alone_as_among_all() -> None:
    """main.COMMANDS names, for each command, every module that defines it or adds to it."""
    full = _subparsers(main.build_parser())
    assert sorted(full) == sorted(main.COMMANDS)
    for command in full:
        for argv in ([command], ["--registry", "sqlite:///x.db", "-q", command, "--json"]):
            alone = _subparsers(main.build_parser(argv))
            assert command in alone, argv
            assert alone[command].format_help() == full[command].format_help(), argv
            assert _named(alone[command]._defaults) == _named(full[command]._defaults), argv


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], None),
        (["--help"], None),
        (["--registry", "ls", "show"], "show"),  # "ls" is --registry's value
        (["--store", "file:///s", "push", "a:1.0.0", "f"], "push"),
        (["-q", "ls"], "ls"),
        (["--", "ls"], None),
        (["lss"], "lss"),
    ],
)
def test_the_command_word_skips_global_options(argv: list[str], expected: str | None) -> None:
    assert main.command_of(argv) == expected


def test_an_unknown_command_still_lists_every_command(home: tuple[Path, Path]) -> None:
    _, proc = run_importtime(["lss"], *home)
    assert proc.returncode == 2
    assert "invalid choice: 'lss'" in proc.stderr and "quickstart" in proc.stderr
