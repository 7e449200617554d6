"""``mvault push oci://...``, ``mvault pull oci://...``, ``mvault import oci://...``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .registry import RunningRegistry


def test_push_pull_import_through_the_cli(
    registry: RunningRegistry,
    mvault: Any,
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert mvault("push", "demo:1.0.0", str(model_dir)).code == 0
    r = mvault("push", registry.url("team/demo:stable"), "demo@1.0.0", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["reference"].endswith("team/demo:stable")
    # A second vault: pull registers the version under the name the artifact carries.
    monkeypatch.setenv("MVAULT_HOME", str(tmp_path / "home-b"))
    r = mvault("pull", registry.url("team/demo:stable"), "--alias", "prod")
    assert r.code == 0, r.err
    assert "imported demo:1.0.0" in r.out
    assert mvault("show", "demo@prod").code == 0
    # import names another version explicitly.
    r = mvault("import", registry.url("team/demo:stable"), "copy:2.0.0", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["version"] == "2.0.0"
    out = tmp_path / "out"
    assert mvault("pull", "copy@2.0.0", "-o", str(out)).code == 0
    assert (out / "config.json").read_text() == (model_dir / "config.json").read_text()


def test_cli_errors_are_one_line(registry: RunningRegistry, mvault: Any) -> None:
    r = mvault("pull", f"oci://{registry.host}/team/demo:bad!tag")
    assert r.code == 2 and r.err.startswith("mvault: error: ") and "tag" in r.err
    r = mvault("pull", registry.url("team/absent:1"))
    assert r.code == 3 and "404" in r.err.splitlines()[0]
    r = mvault("pull", "demo@1.0.0")
    assert r.code == 2 and "-o PATH" in r.err
