"""Why durable-write benchmarks prepare the disk: a write + fsync into fresh blocks
against the same write into blocks freed moments ago, on the work directory's disk.

    python benchmarks/disk_state.py --size-mib 1024 --runs 3 --out benchmarks/results/disk_state.json

The source is ``--size-mib`` of random bytes in memory (``/dev/shm``), copied with
16 MiB writes and one fsync, as a pull writes its file. "fresh": a new file while
no file was deleted since the last sync. "freed": a new file right after a file of
the same size was deleted and the deletion synced. A thin-provisioned virtual
disk gives the second a head start, which ``_runs.same_disk_state`` gives every
timed durable write alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import Monitor
from _runs import median, write_report


def durable_copy(src: Path, dst: Path) -> float:
    t0 = time.perf_counter()
    with open(src, "rb") as f, open(dst, "wb") as g:
        while block := f.read(16 << 20):
            g.write(block)
        g.flush()
        os.fsync(g.fileno())
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    size = args.size_mib << 20
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mvault-disk-"))
    src = Path(tempfile.mkdtemp(dir="/dev/shm")) / "src"
    with open(src, "wb") as f:
        for _ in range(0, size, 16 << 20):
            f.write(os.urandom(16 << 20))
    seconds: dict[str, list[float]] = {"fresh": [], "freed": []}
    keep: list[Path] = []
    monitor = Monitor()
    with monitor:
        for run in range(args.runs):
            os.sync()
            path = work / f"fresh{run}"
            seconds["fresh"].append(durable_copy(src, path))
            keep.append(path)
            for p in keep:  # free what the fresh write took
                p.unlink()
            keep.clear()
            os.sync()
            path = work / f"freed{run}"
            seconds["freed"].append(durable_copy(src, path))
            keep.append(path)
            print(
                f"run {run}: fresh {seconds['fresh'][-1]:.2f} s, freed {seconds['freed'][-1]:.2f} s",
                flush=True,
            )
    for p in keep:
        p.unlink()
    src.unlink()
    med = {k: median(v) for k, v in seconds.items()}
    report = {
        "size_bytes": size,
        "seconds": seconds,
        "median_seconds": med,
        "median_MBps": {k: size / v / 1e6 for k, v in med.items()},
        "fresh_vs_freed": med["fresh"] / med["freed"],
    }
    print(
        f"fresh {med['fresh']:.2f} s, freed {med['freed']:.2f} s: {report['fresh_vs_freed']:.2f}x"
    )
    if args.out:
        write_report(Path(args.out), "disk_state", report, monitor.record())


if __name__ == "__main__":
    main()
