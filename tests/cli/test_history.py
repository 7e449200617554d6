"""log, diff, labels after the push, rm on a terminal, and one-line errors with hints that help."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.conftest import Result
from tests.cli.pty_run import run_on_pty

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

RunCLI = Callable[..., Result]


def _weights(tmp_path: Path, name: str, change: str | None = None) -> Path:
    g = torch.Generator().manual_seed(3)
    sd = {
        "big": torch.randn(256, 256, generator=g),  # 256 KiB: a blob of its own
        "small": torch.randn(16, generator=g),
        "steps": torch.arange(4),
    }
    if change == "big":
        sd["big"] = sd["big"] + 1
    elif change == "small":
        sd["small"] = sd["small"] * 2
    elif change == "shape":
        sd["small"] = torch.randn(32, generator=g)
    elif change == "added":
        sd["extra"] = torch.ones(3)
    path = tmp_path / f"{name}.safetensors"
    safetensors_torch.save_file(sd, str(path))
    return path


def test_diff_names_every_tensor_change(mvault: RunCLI, tmp_path: Path) -> None:
    base = _weights(tmp_path, "base")
    assert mvault("push", "w:1.0.0", str(base)).code == 0
    for i, change in enumerate(("big", "small", "shape", "added"), 1):
        assert mvault("push", f"w:1.{i}.0", str(_weights(tmp_path, change, change))).code == 0
    want = {
        "1.1.0": ([], [], [("big", "bytes")]),
        "1.2.0": ([], [], [("small", "bytes")]),
        "1.3.0": ([], [], [("small", "dtype/shape")]),
        "1.4.0": (["extra"], [], []),
    }
    for version, (added, removed, changed) in want.items():
        r = mvault("diff", "w@1.0.0", f"w@{version}", "--json")
        assert r.code == 0, r.err
        t = json.loads(r.out)["tensors"]
        assert t["added"] == added and t["removed"] == removed
        assert [(c["name"], c["change"]) for c in t["changed"]] == changed, version
    same = json.loads(mvault("diff", "w@1.0.0", "w@1.0.0", "--json").out)
    assert same["same_content"] is True and same["tensors"]["changed"] == []
    human = mvault("diff", "w@1.0.0", "w@1.3.0")
    assert "~ tensor small: float32[16] -> float32[32]" in human.out


def test_labels_after_push_and_log(mvault: RunCLI, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a\n")
    assert mvault("push", "m:1.0.0", str(tmp_path / "a.txt")).code == 0
    r = mvault("label", "set", "m:1.0.0", "team=nlp", "stage=beta", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["labels"] == {"stage": "beta", "team": "nlp"}
    r = mvault("label", "rm", "m:1.0.0", "stage", "--json")
    assert json.loads(r.out) == {
        "model": "m",
        "version": "1.0.0",
        "removed": ["stage"],
        "labels": {"team": "nlp"},
    }
    shown = json.loads(mvault("show", "m@1.0.0", "--json").out)
    assert shown["labels"] == {"team": "nlp"}
    r = mvault("label", "set", "m:1.0.0", "broken")
    assert (
        r.code == 2
        and r.err.splitlines()[0] == "mvault: error: label 'broken' must look like key=value"
    )
    assert mvault("alias", "set", "m", "prod", "1.0.0").code == 0
    log = json.loads(mvault("log", "m", "--json").out)
    assert [e["kind"] for e in log][:1] == ["alias.set"]  # newest first
    assert all(e["at"].endswith("Z") for e in log)
    r = mvault("log", "nope")
    assert r.code == 3


def test_rm_asks_on_a_terminal(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a\n")
    env = {"MVAULT_HOME": str(tmp_path / "home")}
    for var in ("MVAULT_REGISTRY", "MVAULT_STORE"):
        os.environ.pop(var, None)
    assert run_on_pty(["push", "m:1.0.0", "a.txt"], cwd=tmp_path, env=env).code == 0
    # Anything but yes keeps the version.
    screen = run_on_pty(["rm", "m:1.0.0"], cwd=tmp_path, env=env, answer=("[y/N]", "n\n"))
    assert "delete m:1.0.0?" in screen.text
    assert screen.code == 1 and "nothing deleted" in screen.text
    screen = run_on_pty(["show", "m:1.0.0"], cwd=tmp_path, env=env)
    assert screen.code == 0
    screen = run_on_pty(["rm", "m:1.0.0"], cwd=tmp_path, env=env, answer=("[y/N]", "y\n"))
    assert screen.code == 0 and "deleted m:1.0.0" in screen.text
    assert run_on_pty(["push", "m:1.0.0", "a.txt"], cwd=tmp_path, env=env).code == 0
    screen = run_on_pty(["rm", "m:1.0.0", "-y"], cwd=tmp_path, env=env)
    assert screen.code == 0 and "deleted m:1.0.0" in screen.text


def test_errors_hint_what_to_do(mvault: RunCLI, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    r = mvault("push", "x:1.0.0", str(tmp_path / "d"), "--format", "tensors")
    assert r.code == 5
    assert r.err.splitlines() == [
        f"mvault: error: {tmp_path / 'd'} is a directory, not a .safetensors file",
        "hint: name the file inside it, or push the directory with --format files",
    ]
    r = mvault("push", "x:1.0.0", str(tmp_path / "missing.bin"))
    assert r.code == 3
    assert "MVAULT_DEBUG" not in r.err
    (tmp_path / "t.txt").write_text("hi\n")
    r = mvault("push", "x:1.0.0", str(tmp_path / "t.txt"), "--format", "exported_program")
    assert r.code == 5 and len(r.err.splitlines()) == 1 and "Traceback" not in r.err
