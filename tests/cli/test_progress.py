"""Transfers seen on a real terminal: named, with bytes, rate and time left, and a summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.pty_run import run_on_pty

MIB = 384  # the test file's size in MiB


@pytest.fixture
def work(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    # Large enough that the display's 10 Hz refresh draws the transfer several
    # times (a rate and a time left need two samples) on a fast disk too.
    (tmp_path / "big.bin").write_bytes(os.urandom(MIB << 20))
    env = {"MVAULT_HOME": str(tmp_path / "home")}
    for var in ("MVAULT_REGISTRY", "MVAULT_STORE", "MVAULT_NO_PROGRESS", "MVAULT_CACHE_DIR"):
        os.environ.pop(var, None)
    return tmp_path, env


def test_push_and_pull_show_named_progress_and_a_summary(work: tuple[Path, dict[str, str]]) -> None:
    cwd, env = work
    screen = run_on_pty(["push", "big:1.0.0", "big.bin"], cwd=cwd, env=env)
    assert screen.code == 0, screen.text
    text = screen.text
    assert screen.first_output is not None and screen.first_output < 5
    assert "big:1.0.0 hashing" in text
    # The hashing step shows its byte count. How far it got when drawn depends on
    # where the display's refresh fell, so any count of the whole will do.
    assert any("hashing" in ln and f"/{MIB}.0 MiB" in ln for ln in text.splitlines()), text
    assert "big:1.0.0 uploading file" in text
    took = re.search(r"uploaded 1 blobs, [\d.]+ MiB in ([\d.]+) s", text)
    assert took is not None, text
    if float(took.group(1)) >= 0.5:
        # A rate needs two samples of the display's 10 Hz refresh during the
        # upload; a store that took the file in less (a fast disk) shows "?".
        assert re.search(r"[\d.]+ [kMG]?B/s", text), text
    assert "-:--:--" in text or "0:00:" in text  # time left
    assert "/ss" not in text  # redraws leave no stale characters
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    assert any(ln.startswith("pushed big:1.0.0 (files) blake3:") for ln in lines)
    assert any(ln.startswith(f"uploaded 1 blobs, {MIB}.0 MiB in ") for ln in lines)

    screen = run_on_pty(["pull", "big@1.0.0", "-o", "out.bin"], cwd=cwd, env=env)
    assert screen.code == 0, screen.text
    lines = [ln.strip() for ln in screen.text.splitlines() if ln.strip()]
    assert any(ln.startswith("pulled big:1.0.0 (files) blake3:") for ln in lines), screen.text
    assert any(ln.startswith(f"wrote out.bin, {MIB}.0 MiB in ") for ln in lines)
    assert (cwd / "out.bin").read_bytes() == (cwd / "big.bin").read_bytes()


def test_quiet_and_no_terminal_draw_nothing(work: tuple[Path, dict[str, str]]) -> None:
    cwd, env = work
    screen = run_on_pty(["-q", "push", "big:1.0.0", "big.bin"], cwd=cwd, env=env)
    assert screen.code == 0, screen.text
    assert "hashing" not in screen.text and "━" not in screen.text
    assert "pushed big:1.0.0" in screen.text
    proc = subprocess.run(
        [sys.executable, "-m", "modelvault.cli.main", "push", "big:1.0.1", "big.bin"],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # not a terminal: no bar, no escape codes
    assert proc.stdout.startswith("pushed big:1.0.1 (files) blake3:")


def test_pull_refuses_to_overwrite_without_force(work: tuple[Path, dict[str, str]]) -> None:
    cwd, env = work
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "modelvault.cli.main", *a],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    (cwd / "small.txt").write_text("hello\n")
    assert run("push", "s:1.0.0", "small.txt").returncode == 0
    (cwd / "keep.txt").write_text("mine\n")
    proc = run("pull", "s@1.0.0", "-o", "keep.txt")
    assert proc.returncode == 4
    assert proc.stderr.splitlines() == [
        "mvault: error: keep.txt already exists",
        "hint: pass --force to replace it (overwrite=True from Python), or choose another path",
    ]
    assert (cwd / "keep.txt").read_text() == "mine\n"
    proc = run("pull", "s@1.0.0", "-o", "keep.txt", "--force")
    assert proc.returncode == 0, proc.stderr
    assert (cwd / "keep.txt").read_text() == "hello\n"
    proc = run("pull", "s@1.0.0", "-o", "new/dir/s.txt")  # parents are created
    assert proc.returncode == 0, proc.stderr
    assert (cwd / "new/dir/s.txt").read_text() == "hello\n"
    assert sorted(p.name for p in (cwd / "new/dir").iterdir()) == ["s.txt"]  # no temp left
