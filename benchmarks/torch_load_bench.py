"""Torch formats: modelvault against torch's own save/load and safetensors, in one run.

    python benchmarks/torch_load_bench.py --device cpu --size-gb 0.5
    python benchmarks/torch_load_bench.py --device cuda --size-gb 2

The model is an eight-layer MLP of float32 weights sized to ``--size-gb``.
Each measurement is the median of ``--runs`` runs with the files in the page
cache. Results go to ``benchmarks/results/torch_<device>.json`` and a Markdown
table is printed. Needs torch, safetensors, msgpack, blake3, numpy (psutil is
used for memory sampling when present, /proc/self/status otherwise).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import torch  # noqa: E402

from modelvault.formats.bundle import Bundle, write_bundle  # noqa: E402
from modelvault.formats.exported_program import ExportedProgramPlugin  # noqa: E402
from modelvault.formats.torchscript import TorchScriptPlugin  # noqa: E402


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
    """Samples resident memory in a thread; ``growth`` is peak minus the value at entry."""

    def __enter__(self) -> PeakRSS:
        self.start = _rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


# -- helpers ----------------------------------------------------------------------------
def build(size_gb: float, layers: int = 8) -> tuple[torch.nn.Module, torch.Tensor]:
    width = int((size_gb * 1e9 / (4 * layers)) ** 0.5) // 256 * 256
    torch.manual_seed(0)
    mods: list[torch.nn.Module] = []
    for _ in range(layers):
        lin = torch.nn.Linear(width, width, bias=True)
        mods += [lin, torch.nn.ReLU()]
    model = torch.nn.Sequential(*mods).eval()
    return model, torch.randn(4, width)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def clear(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def warm(path: Path) -> None:
    """Read a file or directory once so it sits in the page cache."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for p in files:
        with p.open("rb", buffering=0) as f:
            while f.read(64 << 20):
                pass


def timed(
    fn: Callable[[], Any],
    device: str,
    runs: int,
    memory: bool = False,
    before: Callable[[], None] | None = None,
) -> dict[str, Any]:
    times: list[float] = []
    growth: list[int] = []
    for _ in range(runs):
        clear(device)
        if before is not None:
            before()
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            out = fn()
            sync(device)
            times.append(time.perf_counter() - t0)
        if memory:
            growth.append(mem.growth)
        del out
    res: dict[str, Any] = {"median_s": statistics.median(times), "runs_s": times}
    if memory:
        res["rss_growth_max_bytes"] = max(growth)
        res["rss_growth_runs_bytes"] = growth
    return res


def resident(module: Any) -> Any:
    """Touch one element per 4 KiB page of every CPU weight, so lazily mapped bytes count too."""
    if not isinstance(module, dict) and next(iter(module.parameters())).device.type != "cpu":
        return module  # on the GPU the copy is complete once the device is synchronized
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            flat = t.detach().reshape(-1)
            step = max(4096 // flat.element_size(), 1)
            flat[::step].sum().item()
    return module


def open_bundle(path: Path) -> Bundle:
    return Bundle.open(path)


# -- the benchmark ----------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--size-gb", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--tmp", type=Path, default=None, help="scratch directory (default: system temp)"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = "cuda:0" if args.device == "cuda" else "cpu"
    if device != "cpu":
        if not torch.cuda.is_available():
            sys.exit("--device cuda needs a CUDA device")
        torch.empty(1, device=device)  # CUDA context up before any memory baseline
    import safetensors.torch
    from torch.export.passes import move_to_device_pass

    scratch = Path(tempfile.mkdtemp(prefix="mvbench-", dir=args.tmp))
    ep_plugin, ts_plugin = ExportedProgramPlugin(), TorchScriptPlugin()
    results: dict[str, Any] = {}
    try:
        model, x = build(args.size_gb)
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        ep = torch.export.export(model, (x,))
        ts = torch.jit.script(model)
        expected = model(x)
        pt2, st, tsp = scratch / "m.pt2", scratch / "m.safetensors", scratch / "m.ts"
        mv_ep, mv_ts = scratch / "ep.mvpk", scratch / "ts.mvpk"

        def fresh(p: Path) -> Path:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            return p

        # -- save (ExportedProgram) --
        # Each save starts with no dirty pages left behind by the one before
        # (os.sync outside the timing), so no writer pays for another's writeback.
        results["save_torch_export"] = timed(
            lambda: torch.export.save(ep, str(fresh(pt2))), "cpu", args.runs, before=os.sync
        )

        def torch_save_durable() -> None:
            # The same durability as modelvault's writer, which fsyncs before it returns.
            torch.export.save(ep, str(fresh(pt2)))
            fd = os.open(pt2, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        results["save_torch_export_fsync"] = timed(
            torch_save_durable, "cpu", args.runs, before=os.sync
        )
        results["save_modelvault_ep"] = timed(
            lambda: write_bundle(ep_plugin.pack(ep), fresh(mv_ep)), "cpu", args.runs, before=os.sync
        )
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        safetensors.torch.save_file(sd, str(st))
        torch.jit.save(ts, str(tsp))
        write_bundle(ts_plugin.pack(ts), fresh(mv_ts))
        for p in (pt2, st, tsp, mv_ep, mv_ts):
            warm(p)

        # -- load (ExportedProgram) --
        def torch_ep() -> Any:
            loaded = torch.export.load(str(pt2))
            if device != "cpu":
                loaded = move_to_device_pass(loaded, device)
            return resident(loaded.module())

        def mv_ep_load() -> Any:
            return resident(ep_plugin.load(open_bundle(mv_ep), device=device).module())

        mem = device != "cpu"
        results["load_torch_export"] = timed(torch_ep, device, args.runs, memory=mem)
        results["load_modelvault_ep"] = timed(mv_ep_load, device, args.runs, memory=True)
        if device == "cpu":
            # The same load into private memory instead of a copy-on-write file mapping.
            results["load_modelvault_ep_private_copy"] = timed(
                lambda: resident(
                    ep_plugin.load(open_bundle(mv_ep), device=device, mmap=False).module()
                ),
                device,
                args.runs,
                memory=True,
            )
        results["load_safetensors"] = timed(
            lambda: safetensors.torch.load_file(str(st), device=device),
            device,
            args.runs,
            memory=mem,
        )
        # -- TorchScript --
        results["load_torch_jit"] = timed(
            lambda: resident(torch.jit.load(str(tsp), map_location=device)),
            device,
            args.runs,
            memory=mem,
        )
        results["load_modelvault_ts"] = timed(
            lambda: resident(ts_plugin.load(open_bundle(mv_ts), device=device)),
            device,
            args.runs,
            memory=True,
        )
        # Correctness of what was measured: exact on the CPU; on the GPU against
        # the same program moved there by torch itself (CPU and GPU kernels differ).
        xd = x.to(device)
        with torch.no_grad():
            reference = torch_ep()(xd).cpu() if device != "cpu" else expected.detach()
            got_ep = mv_ep_load()(xd).cpu()
            got_ts = ts_plugin.load(open_bundle(mv_ts), device=device)(xd).cpu()
        assert torch.equal(got_ep, reference), "modelvault ExportedProgram output differs"
        assert torch.allclose(got_ts, reference, rtol=1e-4, atol=1e-4), "TorchScript output differs"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    def med(k: str) -> float:
        return float(results[k]["median_s"])

    ratios = {
        "ep_save_speedup_vs_torch_export_save": med("save_torch_export")
        / med("save_modelvault_ep"),
        "ep_save_speedup_vs_torch_export_save_with_fsync": med("save_torch_export_fsync")
        / med("save_modelvault_ep"),
        "ep_load_speedup_vs_torch_export_load": med("load_torch_export")
        / med("load_modelvault_ep"),
        "ep_load_vs_safetensors (>=1 means no slower)": med("load_safetensors")
        / med("load_modelvault_ep"),
        "ts_load_speedup_vs_torch_jit_load": med("load_torch_jit") / med("load_modelvault_ts"),
        "ep_load_rss_growth_fraction_of_model": results["load_modelvault_ep"][
            "rss_growth_max_bytes"
        ]
        / size,
    }
    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if device != "cpu" else "cpu",
    }
    doc = {
        "device": device,
        "model_bytes": size,
        "runs": args.runs,
        "machine": machine,
        "results": results,
        "ratios": ratios,
    }
    out = args.out or HERE / "results" / f"torch_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")

    print(
        f"\n{size / 1e9:.2f} GB eight-layer MLP onto {device} ({machine['device']}, torch {torch.__version__}); "
        f"median of {args.runs} runs\n"
    )
    print("| operation | median s | host RSS growth |")
    print("| --- | ---: | ---: |")
    for k, v in results.items():
        g = v.get("rss_growth_max_bytes")
        print(f"| {k} | {v['median_s']:.3f} | {'' if g is None else f'{g / 1e6:.0f} MB'} |")
    print("\n| ratio | value |")
    print("| --- | ---: |")
    for k, r in ratios.items():
        print(f"| {k} | {r:.2f} |")
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
