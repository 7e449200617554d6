"""Interleaved runs and the results file, shared by every benchmark script.

Peers run in alternation, round after round, and the order is reversed every
other round (A B, B A, A B ...), so drift on a shared machine (a job starting,
the page cache filling, a disk's writeback) reaches both sides of a
comparison alike. Each results file carries the schema version, the command
that wrote it and the machine record, so a table rendered from it says what
it is; files older than the current schema are refused by the renderers.

Standard library only at import time (torch is imported inside
:func:`resident`), so the renderers and the MLflow side can use it.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# 2: equal work on both sides, interleaved peers, machine load recorded.
SCHEMA = 2


@dataclass
class Case:
    """One timed operation: ``run`` is timed; ``before`` and ``after`` are not.

    ``after`` receives what ``run`` returned (to check it, or to let it go
    before the next case starts).
    """

    name: str
    run: Callable[[], Any]
    before: Callable[[], Any] | None = None
    after: Callable[[Any], Any] | None = None


def run_round(cases: Sequence[Case], rnd: int) -> dict[str, float]:
    """One round: every case once, in order on even rounds and reversed on odd ones."""
    times: dict[str, float] = {}
    for case in list(cases) if rnd % 2 == 0 else list(reversed(cases)):
        gc.collect()
        if case.before is not None:
            case.before()
        t0 = time.perf_counter()
        out = case.run()
        elapsed = time.perf_counter() - t0
        if case.after is not None:
            case.after(out)
        del out
        times[case.name] = elapsed
    return times


def same_disk_state(directory: Path, size: int) -> Callable[[], None]:
    """A ``before`` for a timed durable write of up to ``size`` bytes into
    ``directory``: every such write starts from the same state of the filesystem.

    It writes ``size`` bytes (random, 16 MiB at a time) into a file of
    ``directory``, fsyncs it, deletes it and syncs, so as many blocks as the
    write will need were freed moments ago. The 2-core dev machine's disk writes
    into blocks freed moments ago several times faster than into fresh ones
    (``benchmarks/disk_state.py``, ``results/disk_state.json``), so without this
    the case that ran right after another case's files were deleted got the
    fast disk, and a case always in the middle of a round never did.
    """
    block = os.urandom(16 << 20)

    def prepare() -> None:
        ballast = directory / ".ballast"
        with open(ballast, "wb") as dst:
            left = size
            while left > 0:
                left -= dst.write(block[: min(left, len(block))])
            dst.flush()
            os.fsync(dst.fileno())
        ballast.unlink()
        os.sync()

    return prepare


def interleaved(cases: Sequence[Case], runs: int, warmup: int = 0) -> dict[str, list[float]]:
    """Seconds per case, ``runs`` rounds after ``warmup`` unmeasured ones, order alternating."""
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    for rnd in range(warmup + runs):
        got = run_round(cases, rnd)
        if rnd >= warmup:
            for name, t in got.items():
                times[name].append(t)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def paired_ratio(peer: Sequence[float], ours: Sequence[float]) -> float:
    """Median over rounds of peer/ours, each round's two runs taken side by side."""
    return float(statistics.median(p / o for p, o in zip(peer, ours, strict=True)))


def resident(obj: Any) -> Any:
    """Read one element of every 4 KiB page of every CPU tensor of a module or a dict.

    A mapped load hands out tensors whose pages are read on first use; a load
    that reads into memory has paid for them already. Touching every page of
    every peer's result (inside the timing) makes both end in the same state:
    weights resident and ready to compute. GPU tensors are complete once the
    device is synchronized and are left alone.
    """
    import torch

    tensors = list(obj.values()) if isinstance(obj, dict) else [*obj.parameters(), *obj.buffers()]
    with torch.no_grad():
        for t in tensors:
            if t.device.type != "cpu" or t.numel() == 0:
                continue
            flat = t.detach().reshape(-1)
            step = max(4096 // flat.element_size(), 1)
            flat[::step].sum().item()
    return obj


def write_report(path: Path, benchmark: str, report: dict[str, Any], machine: Any) -> None:
    """Write ``report`` with the schema, the benchmark's name, its command and the machine."""
    doc = {
        "schema": SCHEMA,
        "benchmark": benchmark,
        "command": " ".join(["python", *sys.argv]),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        **report,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def load_report(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(Path(path).read_text())
    return doc


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root``: the durability modelvault's writers give."""
    import os

    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
