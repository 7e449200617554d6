"""Whole-model operations and label filters, on SQLite, PostgreSQL and MariaDB, through the
API and the real CLI: rm NAME, mv OLD NEW, ls --label (several, ANDed), and 'latest'."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelvault.errors import ConflictError, ModelExistsError, ModelNotFoundError
from modelvault.registry import Registry

from .helpers import variant


def _cli(db_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MVAULT_HOME": str(tmp_path / "home"),
        "MVAULT_REGISTRY": db_url,
        "MVAULT_NO_PROGRESS": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "modelvault.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_delete_a_whole_model(reg: Registry) -> None:
    for i, v in enumerate(("1.0.0", "1.1.0")):
        reg.register_version("m", v, [variant(str(i))])
    reg.set_alias("m", "prod", "1.1.0")
    with pytest.raises(ConflictError, match="alias"):
        reg.delete_model("m")
    assert reg.get_model("m").version_count == 2  # nothing deleted
    gone = reg.delete_model("m", force=True)
    assert sorted(r.version for r in gone) == ["1.0.0", "1.1.0"]
    with pytest.raises(ModelNotFoundError):
        reg.get_model("m")
    assert next(e.kind for e in reg.events("m")) == "model.delete"  # the history stays
    reg.register_version("m", "1.0.0", [variant(str(9))])  # the name can be used again


def test_rename_keeps_history(reg: Registry) -> None:
    reg.register_version("old", "1.0.0", [variant(str(1))])
    reg.set_alias("old", "prod", "1.0.0")
    reg.register_version("other", "1.0.0", [variant(str(2))])
    with pytest.raises(ModelExistsError, match="unique ignoring case"):
        reg.rename_model("old", "OTHER")
    info = reg.rename_model("old", "new")
    assert info.name == "new" and info.aliases == {"prod": "1.0.0"}
    assert reg.resolve("new@prod").version == "1.0.0"
    kinds = [e.kind for e in reg.events("new")]
    assert kinds[0] == "model.rename" and "version.register" in kinds and "alias.set" in kinds
    assert [c.version for c in reg.alias_history("new", "prod")] == ["1.0.0"]
    with pytest.raises(ModelNotFoundError):
        reg.get_model("old")
    reg.rename_model("new", "New")  # a change of case only


def test_several_label_filters_hold_on_one_version(reg: Registry) -> None:
    reg.register_version("a", "1.0.0", [variant(str(1))], labels={"team": "nlp", "stage": "prod"})
    reg.register_version("b", "1.0.0", [variant(str(2))], labels={"team": "nlp"})
    reg.register_version("b", "2.0.0", [variant(str(3))], labels={"stage": "prod"})
    names = lambda *f: [m.name for m in reg.list_models(label=list(f)).items]  # noqa: E731
    assert names("team=nlp") == ["a", "b"]
    assert names("team=nlp", "stage=prod") == ["a"]  # b has both, but not on one version
    assert names("stage") == ["a", "b"]
    versions = [v.version for v in reg.list_versions("b", label=["stage=prod"]).items]
    assert versions == ["2.0.0"]


def test_latest_says_it_skips_prereleases(reg: Registry) -> None:
    reg.register_version("p", "1.0.0-rc.1", [variant(str(1))])
    with pytest.raises(Exception, match="skips pre-releases") as err:
        reg.resolve("p@latest")
    assert "p@1.0.0-rc.1" in str(getattr(err.value, "hint", ""))


@pytest.mark.slow
def test_the_cli_commands(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a\n")
    assert (
        _cli(db_url, tmp_path, "push", "team/enc:1.0.0", "a.txt", "--label", "team=nlp").returncode
        == 0
    )
    assert (
        _cli(db_url, tmp_path, "push", "team/enc:1.1.0", "a.txt", "--label", "team=cv").returncode
        == 0
    )
    r = _cli(
        db_url, tmp_path, "ls", "--label", "team=nlp", "--json"
    )  # failed for every input before
    assert r.returncode == 0, r.stderr
    assert [m["model"] for m in json.loads(r.stdout)] == ["team/enc"]
    r = _cli(db_url, tmp_path, "ls", "team/enc", "--label", "team=cv", "--json")
    assert [v["version"] for v in json.loads(r.stdout)] == ["1.1.0"]
    r = _cli(db_url, tmp_path, "ls", "--label", "team=nlp", "--label", "team=cv", "--json")
    assert json.loads(r.stdout) == []
    r = _cli(db_url, tmp_path, "mv", "team/enc", "team/encoder", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"model": "team/encoder", "renamed_from": "team/enc"}
    r = _cli(db_url, tmp_path, "log", "team/encoder", "--json")
    assert next(e["kind"] for e in json.loads(r.stdout)) == "model.rename"
    r = _cli(db_url, tmp_path, "rm", "team/encoder", "-y", "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(r.stdout)["versions"]) == ["1.0.0", "1.1.0"]
    r = _cli(db_url, tmp_path, "show", "team/encoder")
    assert r.returncode == 3
