"""Run ``mvault`` as a user who can read a home but not write it.

``chmod`` alone does not stop root, so when the tests run as root the command
runs as ``nobody`` (``setpriv``, else ``runuser``); the directories it needs
(the home, the interpreter, the source tree) are readable by everyone.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

NOBODY = 65534
AS_ROOT = os.geteuid() == 0


def _drop() -> list[str]:
    if not AS_ROOT:
        return []
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if shutil.which("runuser"):
        return ["runuser", "-u", "nobody", "--"]
    raise RuntimeError("running as root without setpriv or runuser: cannot drop privileges")


def shared_dir(prefix: str) -> Path:
    """A fresh directory another user can read (pytest's own tmp_path is private to its user)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root


def mvault(
    args: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    *,
    as_reader: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``mvault ARGS`` in a fresh process; ``as_reader`` runs it as the unprivileged user."""
    full = {**os.environ, "MVAULT_NO_PROGRESS": "1", "MVAULT_USER": "tester", **env}
    command = [sys.executable, "-m", "modelvault.cli.main", *args]
    return subprocess.run(
        [*(_drop() if as_reader else []), *command],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def make_read_only(path: Path) -> None:
    """Take write permission away from ``path`` and everything under it."""
    for p in [*sorted(path.rglob("*"), reverse=True), path]:
        mode = p.lstat().st_mode
        if not stat.S_ISLNK(mode):
            p.chmod(stat.S_IMODE(mode) & ~0o222)


def make_writable(path: Path) -> None:
    """Give the owner write permission back (before removing the tree)."""
    for p in [path, *path.rglob("*")]:
        mode = p.lstat().st_mode
        if not stat.S_ISLNK(mode):
            p.chmod(stat.S_IMODE(mode) | 0o200)


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``path`` (files with size and mtime): equal snapshots, nothing written."""
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        if p.is_file()
        else (-1, 0)
        for p in path.rglob("*")
    }
