"""Run ``mvault`` in a fresh interpreter under ``python -X importtime`` and read which
modules it imported (not how long they took, which depends on the machine)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_importtime(
    args: list[str], home: Path, cwd: Path, extra_path: Path | None = None
) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """``mvault ARGS`` against the home ``home``, run in ``cwd`` (``extra_path`` first on
    PYTHONPATH): the top-level modules it imported, plus ``importlib.*`` and
    ``modelvault.oci.*`` by full name, and the finished process."""
    env = {**os.environ, "MVAULT_HOME": str(home), "MVAULT_NO_PROGRESS": "1"}
    for var in ("MVAULT_REGISTRY", "MVAULT_STORE", "MVAULT_CACHE_DIR"):
        env.pop(var, None)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "modelvault.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )
    mods = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                mods.add(name.split(".", 1)[0])
                if name.startswith(("importlib.", "modelvault.oci.")):
                    mods.add(name)  # the standard library's slow corners, by full name
    return mods, proc
