"""Where a warm GPU load spends its time: phases of one load, the GIL's switch interval,
and whether an ExportedProgram's graph is rebuilt beside its weight stream.

    python benchmarks/gpu_phases.py --size-gb 2 --runs 5 --out /tmp/phases.json   # on the GPU machine

A diagnostic, not a comparison with peers: the same models as
``benchmarks/gpu_load.py`` (one size), pushed as an ExportedProgram, a
TorchScript module and a state dict into one local store, read from the page
cache. For each setting (ring order, ``sys.setswitchinterval`` value in
``--intervals``, and ``--overlap``: the weights streamed by the reader process
beside the graph, as the library does (``detached``), or in-process with the
ExportedProgram's graph rebuilt before the stream (``graph-first``, the library
without a reader process), beside it or after it), every round running every
setting in turn, it times the three loads
(``.module()`` inside the ExportedProgram's timing, as there), interleaved, and splits each load into phases by wrapping the pipeline's
stages with timers: resolve, open (manifest + trust), the weight stream
(``load_tensors``; ``start``, the load begun and queued, and ``stream wait``,
the wait for it, where an ExportedProgram or TorchScript streams beside its graph), the graph
(``_skeleton``: parse and check), attach (``_attach``: weights in place, the
device pass), and ``.module()``. Then one load of each under cProfile (the
main thread only) prints the top of its profile.

The switch interval matters because an ExportedProgram's graph is rebuilt in
Python on the main thread while the weights stream on others: every stream
thread that needs the GIL waits up to one interval for it.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from _machine import Monitor  # noqa: E402
from gpu_load import _free, build, warm  # noqa: E402

PHASES: dict[str, list[float]] = defaultdict(list)


def _timed(owner: Any, attr: str, phase: str) -> None:
    fn = getattr(owner, attr)

    def wrapper(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            PHASES[phase].append(time.perf_counter() - t0)

    setattr(owner, attr, wrapper)


def instrument() -> None:
    from modelvault import loader
    from modelvault.formats import exported_program as epmod
    from modelvault.formats._torch import stream

    _timed(loader.LoadPipeline, "resolve", "resolve")
    _timed(loader.LoadPipeline, "open", "open")
    _timed(stream, "load_tensors", "weights")
    _timed(stream, "stream_through_ring", "ring")
    _timed(stream.CudaLoad, "__init__", "start")
    _timed(stream.CudaLoad, "_finish", "stream wait")
    _timed(epmod.ExportedProgramPlugin, "_skeleton", "graph")
    _timed(epmod, "_attach", "attach")


def _weights_first(cls: Any) -> Any:
    """The weight stream waited for as soon as it starts: nothing runs beside it."""

    class WeightsFirst(cls):  # type: ignore[misc,valid-type]
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            self._done = super().result()

        def result(self) -> Any:
            return self._done

    return WeightsFirst


@contextmanager
def switch_interval(seconds: float) -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--intervals", default="0.005,0.001,0.0002")
    ap.add_argument(
        "--orders", default="unordered,in-order", help="the CUDA ring's orders to compare"
    )
    ap.add_argument(
        "--overlap",
        default="detached,graph-first",
        help="detached,graph-first,overlapped,weights-first: the weights streamed by the reader "
        "process beside the graph (the library's way); or in-process, an ExportedProgram's graph "
        "rebuilt before the stream (the library's way without a reader process), beside it or after it",
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    from modelvault import Vault
    from modelvault.storage.local import LocalStore

    instrument()
    root = Path(tempfile.mkdtemp(prefix="gpu-phases-"))
    model, sd, x = build(args.size_gb)
    total = sum(t.numel() * t.element_size() for t in sd.values())
    vault = Vault(registry=f"sqlite:///{root / 'registry.db'}", store=LocalStore(root / "store"))
    vault.push(torch.export.export(model, (x,)), "ep:1.0.0")
    vault.push(torch.jit.script(model), "ts:1.0.0")
    vault.push(sd, "sd:1.0.0")
    del model, sd
    gc.collect()
    warm(root / "store")

    def ep() -> Any:
        out = vault.load("ep:1.0.0", device="cuda")
        t0 = time.perf_counter()
        mod = out.module()
        PHASES["module()"].append(time.perf_counter() - t0)
        return mod

    loads: dict[str, Callable[[], Any]] = {
        "ExportedProgram": ep,
        "TorchScript": lambda: vault.load("ts:1.0.0", device="cuda"),
        "tensors": lambda: vault.load("sd:1.0.0", device="cuda"),
    }
    report: dict[str, Any] = {"size_gb": args.size_gb, "bytes": total, "intervals": {}}
    monitor = Monitor()
    with monitor:
        from modelvault.formats import exported_program as epmod
        from modelvault.formats._torch import stream

        background = epmod.BackgroundLoad
        # (the reader process used, overlap onto the device, the BackgroundLoad used)
        ways = {
            "detached": (True, False, background),  # the library's default
            "graph-first": (False, False, background),  # the default without a reader process
            "overlapped": (False, True, background),
            "weights-first": (False, True, _weights_first(background)),
        }
        combos = [
            (o, float(v), w)
            for o in args.orders.split(",")
            for v in args.intervals.split(",")
            for w in args.overlap.split(",")
        ]
        per_combo: dict[tuple[str, float, str], dict[str, Any]] = {c: {} for c in combos}
        # Every round runs every setting, in an order reversed each round, so that a
        # drift of the host over the run touches all settings alike.
        for rnd in range(args.runs + 1):
            settings = combos if rnd % 2 == 0 else list(reversed(combos))
            for combo in settings:
                ring_order, interval, way = combo
                stream.UNORDERED = ring_order == "unordered"
                use_reader, epmod.OVERLAP_ON_DEVICE, epmod.BackgroundLoad = ways[way]  # type: ignore[misc]
                os.environ["MVAULT_DETACHED"] = "1" if use_reader else "0"
                per = per_combo[combo]
                with switch_interval(interval):
                    order = list(loads) if rnd % 2 == 0 else list(reversed(loads))
                    if way not in ("graph-first", "detached"):
                        order = ["ExportedProgram"]  # the others have no graph to move
                    for name in order:
                        PHASES.clear()
                        gc.collect()
                        t0 = time.perf_counter()
                        out = loads[name]()
                        torch.cuda.synchronize()
                        elapsed = time.perf_counter() - t0
                        del out
                        _free(None)
                        if rnd == 0:
                            continue  # warm-up
                        row = per.setdefault(name, {"seconds": [], "phases": defaultdict(list)})
                        row["seconds"].append(elapsed)
                        for phase, ts in PHASES.items():
                            row["phases"][phase].append(sum(ts))
        epmod.OVERLAP_ON_DEVICE, epmod.BackgroundLoad = False, background  # type: ignore[misc]
        os.environ.pop("MVAULT_DETACHED", None)
        for combo in combos:
            ring_order, interval, way = combo
            per = per_combo[combo]
            for name, row in per.items():
                med = statistics.median(row["seconds"])
                phases = {
                    p: round(statistics.median(ts) * 1e3, 2) for p, ts in row["phases"].items()
                }
                row["median_s"] = med
                row["GBps"] = total / med / 1e9
                row["phase_ms"] = phases
                print(
                    f"{ring_order:9s} interval {interval * 1e3:.2f} ms {way:13s} {name:16s} "
                    f"{med * 1e3:7.1f} ms {row['GBps']:5.1f} GB/s  phases(ms) {phases}",
                    flush=True,
                )
                row["phases"] = dict(row["phases"])
            report["intervals"][f"{ring_order} {interval} {way}"] = per
        stream.UNORDERED = True
        for name, fn in loads.items():
            fn()
            torch.cuda.synchronize()
            prof = cProfile.Profile()
            prof.enable()
            out = fn()
            torch.cuda.synchronize()
            prof.disable()
            del out
            _free(None)
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(18)
            print(f"--- cProfile (main thread, by own time): {name}\n{s.getvalue()}", flush=True)
    report["machine"] = monitor.record()
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
