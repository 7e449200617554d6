"""Torch formats: modelvault against torch's own save/load and safetensors, in one run.

    python benchmarks/torch_load_bench.py --device cpu --size-gb 0.5 --runs 7
    python benchmarks/torch_load_bench.py --device cuda --size-gb 2 --runs 5
    python benchmarks/torch_load_bench.py --render benchmarks/results/torch_cpu.json

The model is an eight-layer MLP of float32 weights sized to ``--size-gb``,
exported once with ``torch.export.export`` and scripted once with
``torch.jit.script``; every writer and reader starts from those same objects
and files. Equal work, per comparison:

* save: ``torch.export.save`` followed by an fsync of the file and its
  directory, against modelvault's ``pack`` + ``write_bundle`` (which hashes,
  fsyncs and renames); ``torch.export.save`` without the fsync is kept as a
  reference row. Each save starts after ``os.sync()`` (outside the timing),
  so no writer pays for another's writeback.
* load: every reader ends with a callable module whose weights are resident
  on the device: on the CPU one element of every 4 KiB page of every weight
  is read inside the timing (a mapped load otherwise defers its reads); on
  the GPU ``torch.cuda.synchronize()`` is inside the timing. safetensors
  holds weights only, so its peer builds the module on the meta device and
  attaches the loaded tensors (``load_state_dict(assign=True)``); its bare
  ``load_file`` (weights resident, no module) is a reference row.

Files are in the page cache; peers alternate run by run after one unmeasured
round. Results go to ``benchmarks/results/torch_<device>.json`` and the
tables are printed. Needs torch, safetensors, msgpack, blake3, numpy (psutil
for memory sampling when present, /proc/self/status otherwise).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from _machine import Monitor  # noqa: E402
from _runs import Case, interleaved, median, resident, write_report  # noqa: E402
from _tables import render  # noqa: E402

LAYERS = 8


# -- memory -----------------------------------------------------------------------------
def _rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Samples resident memory in a thread between ``start`` and ``stop`` (both untimed)."""

    def __init__(self) -> None:
        self.growth: dict[str, list[int]] = {}

    def start(self) -> None:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def stop(self, name: str) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())
        self.growth.setdefault(name, []).append(self.peak - self.base)


# -- helpers ----------------------------------------------------------------------------
def width_for(size_gb: float) -> int:
    return int((size_gb * 1e9 / (4 * LAYERS)) ** 0.5) // 256 * 256


def mlp(width: int) -> Any:
    import torch

    mods: list[torch.nn.Module] = []
    for _ in range(LAYERS):
        mods += [torch.nn.Linear(width, width, bias=True), torch.nn.ReLU()]
    return torch.nn.Sequential(*mods).eval()


def warm(path: Path) -> None:
    """Read a file once so it sits in the page cache."""
    with path.open("rb", buffering=0) as f:
        while f.read(64 << 20):
            pass


def fsync_file_and_dir(path: Path) -> None:
    for target in (path, path.parent):
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- the benchmark ----------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--size-gb", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    ap.add_argument(
        "--tmp", type=Path, default=None, help="scratch directory (default: system temp)"
    )
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--render", type=Path, help="print the tables of a results file and exit")
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return

    import safetensors.torch
    import torch
    from torch.export.passes import move_to_device_pass

    from modelvault.formats.bundle import Bundle, write_bundle
    from modelvault.formats.exported_program import ExportedProgramPlugin
    from modelvault.formats.torchscript import TorchScriptPlugin

    device = "cuda:0" if args.device == "cuda" else "cpu"
    if device != "cpu":
        if not torch.cuda.is_available():
            sys.exit("--device cuda needs a CUDA device")
        torch.empty(1, device=device)  # CUDA context up before any memory baseline

    def sync() -> None:
        if device != "cpu":
            torch.cuda.synchronize()

    def clear() -> None:
        gc.collect()
        if device != "cpu":
            torch.cuda.empty_cache()

    scratch = Path(tempfile.mkdtemp(prefix="mvbench-", dir=args.tmp))
    ep_plugin, ts_plugin = ExportedProgramPlugin(), TorchScriptPlugin()
    mem = PeakRSS()
    monitor = Monitor()
    try:
        with monitor:
            width = width_for(args.size_gb)
            torch.manual_seed(0)
            model = mlp(width)
            x = torch.randn(4, width)
            size = sum(p.numel() * p.element_size() for p in model.parameters())
            ep = torch.export.export(model, (x,))
            ts = torch.jit.script(model)
            with torch.no_grad():
                expected = model(x)
            pt2, st, tsp = scratch / "m.pt2", scratch / "m.safetensors", scratch / "m.ts"
            mv_ep, mv_ts = scratch / "ep.mvpk", scratch / "ts.mvpk"

            def fresh(path: Path) -> None:
                # A new file for every writer: replacing one first frees its
                # blocks, which on a filesystem mounted with `discard` costs seconds.
                path.unlink(missing_ok=True)
                os.sync()

            def torch_save() -> None:
                torch.export.save(ep, str(pt2))

            def torch_save_durable() -> None:
                torch.export.save(ep, str(pt2))
                fsync_file_and_dir(pt2)

            save = interleaved(
                [
                    Case("save_torch_export", torch_save, before=lambda: fresh(pt2)),
                    Case("save_torch_export_fsync", torch_save_durable, before=lambda: fresh(pt2)),
                    Case(
                        "save_modelvault_ep",
                        lambda: write_bundle(ep_plugin.pack(ep), mv_ep),
                        before=lambda: fresh(mv_ep),
                    ),
                ],
                args.runs,
                args.warmup,
            )
            torch.export.save(ep, str(pt2))
            safetensors.torch.save_file(
                {k: v.contiguous() for k, v in model.state_dict().items()}, str(st)
            )
            torch.jit.save(ts, str(tsp))
            write_bundle(ts_plugin.pack(ts), mv_ts)
            for path in (pt2, st, tsp, mv_ep, mv_ts):
                warm(path)

            def torch_ep() -> Any:
                loaded = torch.export.load(str(pt2))
                if device != "cpu":
                    loaded = move_to_device_pass(loaded, device)
                return resident(loaded.module())

            def mv_ep_load(**options: Any) -> Any:
                program = ep_plugin.load(Bundle.open(mv_ep), device=device, **options)
                return resident(program.module())

            def st_weights() -> Any:
                return resident(safetensors.torch.load_file(str(st), device=device))

            def st_module() -> Any:
                # What a safetensors user writes: the model's own code builds the
                # module (on the meta device: no memory, no init), the file fills it.
                with torch.device("meta"):
                    module = mlp(width)
                module.load_state_dict(
                    safetensors.torch.load_file(str(st), device=device), assign=True
                )
                return resident(module)

            def timed_load(fn: Any) -> Any:
                def run() -> Any:
                    out = fn()
                    sync()
                    return out

                return run

            def case(name: str, fn: Any) -> Case:
                def before() -> None:
                    clear()
                    mem.start()

                return Case(name, timed_load(fn), before=before, after=lambda _o: mem.stop(name))

            loads = [
                case("load_torch_export", torch_ep),
                case("load_modelvault_ep", mv_ep_load),
                case("load_safetensors_module", st_module),
                case("load_safetensors_weights", st_weights),
                case(
                    "load_torch_jit",
                    lambda: resident(torch.jit.load(str(tsp), map_location=device)),
                ),
                case(
                    "load_modelvault_ts",
                    lambda: resident(ts_plugin.load(Bundle.open(mv_ts), device=device)),
                ),
            ]
            if device == "cpu":
                # The same load into private memory instead of a copy-on-write file mapping.
                loads.insert(
                    2, case("load_modelvault_ep_private_copy", lambda: mv_ep_load(mmap=False))
                )
            load = interleaved(loads, args.runs, args.warmup)
            # Correctness of what was measured: exact on the CPU; on the GPU against
            # the same program moved there by torch itself (CPU and GPU kernels differ).
            xd = x.to(device)
            with torch.no_grad():
                reference = torch_ep()(xd).cpu() if device != "cpu" else expected
                got_ep = mv_ep_load()(xd).cpu()
                got_ts = ts_plugin.load(Bundle.open(mv_ts), device=device)(xd).cpu()
                got_st = st_module()(xd).cpu()
            assert torch.equal(got_ep, reference), "modelvault ExportedProgram output differs"
            assert torch.allclose(got_ts, reference, rtol=1e-4, atol=1e-4), "TorchScript differs"
            assert torch.allclose(got_st, reference, rtol=1e-4, atol=1e-4), "safetensors differs"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    growth = {k: v[args.warmup :] for k, v in mem.growth.items()}
    machine = monitor.record()
    machine["extra"] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if device != "cpu" else "cpu",
    }
    report = {
        "device": device,
        "model_bytes": size,
        "model": f"{LAYERS} x Linear {width}x{width} + ReLU, float32",
        "runs": args.runs,
        "warmup": args.warmup,
        "seconds": {**save, **load},
        "rss_growth_bytes": growth,
        "medians_s": {k: median(v) for k, v in {**save, **load}.items()},
    }
    out = args.out or HERE / "results" / f"torch_{args.device}.json"
    write_report(out, f"torch_{args.device}", report, machine)
    print(render(json.loads(out.read_text())))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
