"""How long the everyday commands take to start, and what their start-up is made of.

    python benchmarks/startup.py --runs 7 --out benchmarks/results/startup.json

Each command runs in a fresh interpreter (``python -m modelvault.cli.main``)
against the embedded default (SQLite and a local store) in a scratch home
holding one model; the commands alternate round by round after one unmeasured
round, and the median wall time of each is reported. One more run of each under
``python -X importtime`` splits its imports: the cumulative import time of the
top-level modules that cost the most, so the table says where the time goes.
The goal (issue: "start in under 150 ms on this machine") is shown beside it.
There is no peer: this is the project's own start-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import Monitor  # noqa: E402
from _runs import write_report  # noqa: E402

COMMANDS = [
    ["--help"],
    ["ls"],
    ["ls", "base"],
    ["show", "base@1.0.0"],
    ["alias", "set", "base", "prod", "1.0.0"],
    ["push", "other:1.0.{n}", "notes.txt"],
]
GOAL_S = 0.150


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "MVAULT_HOME": str(home), "MVAULT_NO_PROGRESS": "1"}
    for var in ("MVAULT_REGISTRY", "MVAULT_STORE", "MVAULT_CACHE_DIR", "PYTHONDONTWRITEBYTECODE"):
        env.pop(var, None)
    return env


def _run(args: list[str], home: Path, cwd: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, *flags, "-m", "modelvault.cli.main", *args],
        capture_output=True,
        text=True,
        env=_env(home),
        cwd=cwd,
        timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"mvault {' '.join(args)} failed: {proc.stderr[-1000:]}")
    return proc


def _imports(stderr: str, top: int = 4) -> list[tuple[str, float]]:
    """The costliest top-level imports: (module, cumulative seconds)."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cum, name = line.split("|")
        if name.startswith(" ") and not name.startswith("  ") and cum.strip().isdigit():
            rows.append((name.strip(), int(cum) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "startup.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mvault-startup-"))
    home = work / "home"
    (work / "notes.txt").write_text("three\n")
    _run(["push", "base:1.0.0", "notes.txt"], home, work)
    times: dict[str, list[float]] = {" ".join(c): [] for c in COMMANDS}
    n = 0
    monitor = Monitor()
    with monitor:
        for rnd in range(args.runs + 1):
            order = COMMANDS if rnd % 2 == 0 else list(reversed(COMMANDS))
            for cmd in order:
                n += 1
                argv = [a.format(n=n) for a in cmd]
                t0 = time.perf_counter()
                _run(argv, home, work)
                elapsed = time.perf_counter() - t0
                if rnd:
                    times[" ".join(cmd)].append(elapsed)
        rows: list[dict[str, Any]] = []
        for cmd in COMMANDS:
            n += 1
            proc = _run([a.format(n=n) for a in cmd], home, work, "-X", "importtime")
            key = " ".join(cmd)
            med = statistics.median(times[key])
            rows.append(
                {
                    "command": "mvault " + key.replace("{n}", "N"),
                    "seconds": med,
                    "runs": times[key],
                    "imports": _imports(proc.stderr),
                    "goal_s": GOAL_S,
                    "met": med < GOAL_S,
                }
            )
            print(f"{rows[-1]['command']:40s} {med * 1e3:6.0f} ms  {rows[-1]['imports']}")
        bare = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            bare.append(time.perf_counter() - t0)
    write_report(
        args.out,
        "startup",
        {"rows": rows, "bare_python_s": statistics.median(bare)},
        monitor.record(),
    )
    print(f"bare python: {statistics.median(bare) * 1e3:.0f} ms; wrote {args.out}")


if __name__ == "__main__":
    main()
