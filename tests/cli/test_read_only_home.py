"""A read-only ``MVAULT_HOME``, and a SQLite registry that is not there, through the real CLI.

Read commands work on a home the user cannot write (the registry opened
read-only, nothing created, no lock file); commands that write stop with one
line saying the home is read-only, exit 6. A read command on a missing SQLite
file exits 3 with one line and leaves no file behind; only a command that
writes creates the registry.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .as_reader import make_read_only, make_writable, mvault, shared_dir, snapshot

NOTES = "the first version\n"


def _env(home: Path) -> dict[str, str]:
    return {
        "MVAULT_HOME": str(home),
        "MVAULT_REGISTRY": "",
        "MVAULT_STORE": "",
        "MVAULT_CACHE_DIR": "",
    }


def _ok(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 0, r.stderr[-2000:]


def _one_error(stderr: str) -> str:
    """The error line; there is exactly one, then at most a hint, and never a traceback."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    errors = [line for line in lines if line.startswith("mvault: error: ")]
    assert len(errors) == 1, stderr
    assert all(line.startswith(("mvault: error: ", "hint: ")) for line in lines), stderr
    return errors[0].removeprefix("mvault: error: ")


@pytest.fixture(scope="module")
def ro_home() -> Iterator[Path]:
    """A home with two versions, an alias and a bundle, then made read-only."""
    root = shared_dir("mvault-ro-")
    home = root / "home"
    (root / "notes.txt").write_text(NOTES)
    (root / "more.txt").write_text("the second version\n")
    env = _env(home)
    for args in (
        ["push", "m:1.0.0", "notes.txt", "--label", "team=nlp"],
        ["push", "m:1.1.0", "more.txt"],
        ["alias", "set", "m", "prod", "1.0.0"],
        ["export", "m@prod", "m.mvpk"],
    ):
        _ok(mvault(args, env, root))
    out = root / "out"
    out.mkdir()
    out.chmod(0o777)  # where the reader may write what it pulls
    make_read_only(home)
    try:
        yield root
    finally:
        make_writable(root)
        shutil.rmtree(root, ignore_errors=True)


READS = {
    "ls": (["ls", "--json"], lambda out: [m["model"] for m in json.loads(out)] == ["m"]),
    "ls NAME": (
        ["ls", "m", "--json"],
        lambda out: [v["version"] for v in json.loads(out)] == ["1.1.0", "1.0.0"],
    ),
    "ls --label": (
        ["ls", "m", "--label", "team=nlp", "--json"],
        lambda out: [v["version"] for v in json.loads(out)] == ["1.0.0"],
    ),
    "show": (["show", "m@prod", "--json"], lambda out: json.loads(out)["version"] == "1.0.0"),
    "log": (
        ["log", "m", "--json"],
        lambda out: json.loads(out)[0]["kind"].startswith("alias."),
    ),
    "diff": (
        ["diff", "m:1.0.0", "m:1.1.0", "--json"],
        lambda out: json.loads(out)["labels"] == {"team": {"from": "nlp", "to": None}},
    ),
    "verify": (["verify", "--json"], lambda out: json.loads(out)["checked"] == 4),
    "verify NAME": (["verify", "m@prod", "--json"], lambda out: json.loads(out)["damaged"] == []),
    "cache ls": (["cache", "ls", "--json"], lambda out: json.loads(out)["count"] == 0),
    "db current": (
        ["db", "current", "--json"],
        lambda out: json.loads(out)["status"] == "up to date",
    ),
    "gc --dry-run": (["gc", "--dry-run", "--json"], lambda out: json.loads(out)["removed"] == []),
}


@pytest.mark.parametrize("command", sorted(READS))
def test_read_commands_work_on_a_read_only_home(ro_home: Path, command: str) -> None:
    args, check = READS[command]
    home = ro_home / "home"
    before = snapshot(home)
    r = mvault(args, _env(home), ro_home, as_reader=True)
    assert r.returncode == 0, r.stderr
    assert check(r.stdout), r.stdout
    assert r.stderr == ""
    assert snapshot(home) == before  # nothing created: no journal, no lock file, no cache


def test_pull_from_a_read_only_home_to_a_writable_path(ro_home: Path) -> None:
    home = ro_home / "home"
    before = snapshot(home)
    dest = ro_home / "out" / "notes.txt"
    r = mvault(["pull", "m@prod", "-o", str(dest), "--json"], _env(home), ro_home, as_reader=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["version"] == "1.0.0"
    assert dest.read_text() == NOTES
    assert snapshot(home) == before
    dest.unlink()


WRITES = {
    "push": ["push", "m:2.0.0", "notes.txt"],
    "import": ["import", "m.mvpk", "m:3.0.0"],
    "alias set": ["alias", "set", "m", "prod", "1.1.0"],
    "alias rm": ["alias", "rm", "m", "prod"],
    "label set": ["label", "set", "m:1.0.0", "stage=qa"],
    "label rm": ["label", "rm", "m:1.0.0", "team"],
    "rm": ["rm", "-y", "m:1.1.0"],
    "rm NAME": ["rm", "-y", "--force", "m"],
    "mv": ["mv", "m", "n"],
    "gc": ["gc"],
    "db upgrade": ["db", "upgrade"],
    "quickstart": ["quickstart", "--json"],
}


@pytest.mark.parametrize("command", sorted(WRITES))
def test_writing_commands_on_a_read_only_home_say_so(ro_home: Path, command: str) -> None:
    home = ro_home / "home"
    before = snapshot(home)
    r = mvault(WRITES[command], _env(home), ro_home, as_reader=True)
    assert r.returncode == 6, r.stderr  # access denied (docs/CLI.md)
    line = _one_error(r.stderr)
    assert line.startswith(f"the home {home} is read-only ("), line
    assert line.endswith("; nothing was written"), line
    assert "hint: read commands (ls, show, pull, log, diff, verify) still work here" in r.stderr
    assert "point MVAULT_HOME" in r.stderr
    assert snapshot(home) == before


@pytest.fixture
def fresh() -> Iterator[Path]:
    root = shared_dir("mvault-missing-")
    (root / "notes.txt").write_text(NOTES)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


MISSING = {
    "ls": ["ls"],
    "ls NAME": ["ls", "m"],
    "show": ["show", "m@prod"],
    "pull": ["pull", "m", "-o", "out.txt"],
    "log": ["log", "m"],
    "diff": ["diff", "m:1.0.0", "m:1.1.0"],
    "verify": ["verify"],
    "export": ["export", "m", "m.mvpk"],
    "db current": ["db", "current"],
}


@pytest.mark.parametrize("command", sorted(MISSING))
def test_read_commands_never_create_a_registry(fresh: Path, command: str) -> None:
    home = fresh / "home"
    r = mvault(MISSING[command], _env(home), fresh)
    assert r.returncode == 3, r.stderr  # not found (docs/CLI.md)
    db = home / "registry.db"
    assert _one_error(r.stderr) == (f"no registry at {db} (nothing pushed yet, or a mistyped path)")
    assert "hint: push a model first (that creates it), or check MVAULT_HOME" in r.stderr
    assert not db.exists()
    assert not (fresh / "out.txt").exists() and not (fresh / "m.mvpk").exists()


def test_a_mistyped_registry_path_is_an_error_not_a_new_registry(fresh: Path) -> None:
    good, typo = fresh / "registry.db", fresh / "registy.db"
    env = {"MVAULT_HOME": str(fresh / "home"), "MVAULT_REGISTRY": f"sqlite:///{good}"}
    _ok(mvault(["push", "m:1.0.0", "notes.txt"], env, fresh))
    assert good.exists()  # the write created it
    r = mvault(["--registry", f"sqlite:///{typo}", "ls"], env, fresh)
    assert r.returncode == 3, r.stderr
    assert _one_error(r.stderr) == f"no registry at {typo} (nothing pushed yet, or a mistyped path)"
    assert "check MVAULT_REGISTRY (or --registry)" in r.stderr
    assert not typo.exists()
    r = mvault(["--registry", f"sqlite:///{fresh}", "ls"], env, fresh)  # a directory
    assert r.returncode == 2, r.stderr
    assert _one_error(r.stderr).startswith(f"registry path {fresh} is a directory;")
    r = mvault(["--registry", f"sqlite:///{fresh / 'notes.txt'}", "ls"], env, fresh)
    assert r.returncode == 1, r.stderr
    assert "is not a SQLite database" in _one_error(r.stderr)
    assert (fresh / "notes.txt").read_text() == NOTES


def test_doctor_reports_a_missing_registry_without_creating_it(fresh: Path) -> None:
    home = fresh / "home"
    r = mvault(["doctor", "--json"], _env(home), fresh)
    assert r.returncode == 0, r.stderr  # before the first push, nothing is wrong
    reg = json.loads(r.stdout)["registry"]
    assert reg["status"] == "missing" and reg["ok"] is True
    assert reg["path"] == str(home / "registry.db")
    assert "nothing pushed yet, or a mistyped path" in reg["error"]
    r = mvault(["doctor"], _env(home), fresh)
    assert f"missing: no registry at {home / 'registry.db'}" in r.stdout
    assert not (home / "registry.db").exists()


def test_doctor_on_a_read_only_home(ro_home: Path) -> None:
    home = ro_home / "home"
    r = mvault(["doctor", "--json"], _env(home), ro_home, as_reader=True)
    assert r.returncode == 6  # pushes would fail: the store takes no writes
    report = json.loads(r.stdout)
    assert report["registry"]["ok"] is True and report["registry"]["status"] == "up to date"
    assert report["store"]["checks"]["list"] == "ok"
    assert report["store"]["checks"]["write"] != "ok"


def test_a_write_creates_the_registry(fresh: Path) -> None:
    home = fresh / "home"
    _ok(mvault(["push", "m:1.0.0", "notes.txt"], _env(home), fresh))
    assert (home / "registry.db").exists()
    r = mvault(["ls", "--json"], _env(home), fresh)
    assert r.returncode == 0 and json.loads(r.stdout)[0]["model"] == "m"
