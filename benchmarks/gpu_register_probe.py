"""Can the copy engine read the page cache directly? A probe for the warm GPU load.

    python benchmarks/gpu_register_probe.py --size-gb 2 --out results/gpu_register_probe.json

The warm CUDA load today copies every byte twice on the host's side: the page
cache into a pinned ring (``preadv``, the CPU's work), then the ring to the
device (the copy engine's). This probe measures, in one run on one file:

- ``pinned-h2d``: the copy engine alone, from one pinned buffer;
- ``pread-16t``: 16 threads ``preadv``-ing the file into pinned buffers;
- ``ring``: modelvault's pinned ring (``stream_through_ring``, device hashing);
- ``register``: windows of the file mapped read-only (``MAP_SHARED``),
  registered with the driver (``cuMemHostRegister``, read-only), copied by the
  copy engine straight from the page cache's pages, unregistered and unmapped,
  by T threads in parallel; then the device BLAKE3 over the result, checked
  against the host's digest of the file.

Registration pins pages that are already in memory: no CPU copy at all. The
question is what pinning and unpinning cost per GB against ``preadv``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402
from _machine import static_info  # noqa: E402

CU_MEMHOSTREGISTER_READ_ONLY = 0x08
CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED = 113

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
]  # fmt: skip
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
MAP_POPULATE = 0x8000
MADV_WILLNEED = 3

cu = ctypes.CDLL("libcuda.so.1")
cu.cuMemHostRegister_v2.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
cu.cuMemHostUnregister.argtypes = [ctypes.c_void_p]
cu.cuMemcpyHtoDAsync_v2.argtypes = [
    ctypes.c_uint64,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_void_p,
]
cu.cuStreamSynchronize.argtypes = [ctypes.c_void_p]
cu.cuCtxSetCurrent.argtypes = [ctypes.c_void_p]


def check(rc: int, what: str) -> None:
    if rc:
        raise RuntimeError(f"{what}: CUDA driver error {rc}")


def make_file(path: Path, size: int) -> None:
    block = torch.randint(0, 256, (64 << 20,), dtype=torch.uint8).numpy().tobytes()
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
    with open(path, "rb") as f:  # into the page cache
        while f.read(64 << 20):
            pass


def timed(fn: Any, runs: int) -> list[float]:
    fn()  # unmeasured
    out = []
    for _ in range(runs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def pinned_h2d(dest: torch.Tensor, chunk: int = 256 << 20) -> None:
    src = pinned_h2d.src  # type: ignore[attr-defined]
    size = dest.numel()
    for off in range(0, size, chunk):
        n = min(chunk, size - off)
        dest[off : off + n].copy_(src[:n], non_blocking=True)


def pread16(path: Path, threads: int = 16, chunk: int = 16 << 20) -> None:
    size = path.stat().st_size
    bufs = pread16.bufs  # type: ignore[attr-defined]
    fd = os.open(path, os.O_RDONLY)

    def work(t: int) -> None:
        view = memoryview(bufs[t].numpy())
        for off in range(t * chunk, size, threads * chunk):
            os.preadv(fd, [view[: min(chunk, size - off)]], off)

    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(work, range(threads)))
    os.close(fd)


def ring(path: Path, dest: torch.Tensor) -> str:
    from modelvault.digest import new_hasher
    from modelvault.formats._torch.stream import Piece, stream_through_ring

    size = path.stat().st_size
    p = Piece(path, 0, size, 0, new_hasher("blake3"), where=str(path))
    stream_through_ring([p], dest, 16 << 20, 16)
    return str(p.digest if p.on_device else p.hasher.digest_str())


class Register:
    """T threads, each: map a window, register it read-only, copy, sync, unregister, unmap."""

    def __init__(self, device: torch.device, threads: int, window: int, populate: bool) -> None:
        self.threads = threads
        self.window = window
        self.populate = populate
        self.streams = [torch.cuda.Stream(device) for _ in range(threads)]
        torch.empty(1, device=device)
        ctx = ctypes.c_void_p()
        check(cu.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
        self.ctx = ctx
        self.pool = ThreadPoolExecutor(threads)
        self.phase = {"map": 0.0, "register": 0.0, "copy": 0.0, "unregister": 0.0}
        self.lock = threading.Lock()

    def __call__(self, path: Path, dest: torch.Tensor) -> None:
        size = path.stat().st_size
        fd = os.open(path, os.O_RDONLY)
        base = dest.data_ptr()
        windows = list(range(0, size, self.window))
        nxt = iter(range(len(windows)))
        take = threading.Lock()

        def worker(t: int) -> None:
            check(cu.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")
            s = ctypes.c_void_p(self.streams[t].cuda_stream)
            ph = dict.fromkeys(self.phase, 0.0)
            while True:
                with take:
                    j = next(nxt, None)
                if j is None:
                    break
                off = windows[j]
                n = min(self.window, size - off)
                a = time.perf_counter()
                flags = 0x01 | (MAP_POPULATE if self.populate else 0)  # MAP_SHARED
                addr = libc.mmap(None, n, mmap.PROT_READ, flags, fd, off)
                if addr in (None, ctypes.c_void_p(-1).value):
                    raise OSError(ctypes.get_errno(), "mmap")
                b = time.perf_counter()
                check(cu.cuMemHostRegister_v2(addr, n, CU_MEMHOSTREGISTER_READ_ONLY), "register")
                c = time.perf_counter()
                check(cu.cuMemcpyHtoDAsync_v2(base + off, addr, n, s), "copy")
                check(cu.cuStreamSynchronize(s), "sync")
                d = time.perf_counter()
                check(cu.cuMemHostUnregister(addr), "unregister")
                libc.munmap(addr, n)
                e = time.perf_counter()
                ph["map"] += b - a
                ph["register"] += c - b
                ph["copy"] += d - c
                ph["unregister"] += e - d
            with self.lock:
                for k, v in ph.items():
                    self.phase[k] += v

        try:
            list(self.pool.map(worker, range(self.threads)))
        finally:
            os.close(fd)


def device_digest(dest: torch.Tensor) -> str:
    from modelvault.formats._torch import cuda_blake3

    k = cuda_blake3.kernels(dest.device)
    assert k is not None, cuda_blake3.unavailable_reason(dest.device)
    h = cuda_blake3.DeviceBlake3(k, dest.device, [dest.numel()])
    s = torch.cuda.Stream(dest.device)
    s.wait_stream(torch.cuda.current_stream(dest.device))
    h.hash(0, dest, s)
    return str(h.digests(s)[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gb", type=float, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from modelvault.digest import digest_file

    device = torch.device("cuda", 0)
    size = int(args.size_gb * 1e9) // 4096 * 4096
    torch.empty(1, device=device)  # initializes the driver and the primary context
    ro = ctypes.c_int()
    dev = ctypes.c_int()
    check(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    check(
        cu.cuDeviceGetAttribute(
            ctypes.byref(ro), CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED, dev
        ),
        "attr",
    )
    report: dict[str, Any] = {
        "machine": static_info(),
        "gpu": torch.cuda.get_device_name(0),
        "read_only_host_register_supported": ro.value,
        "size": size,
        "rows": [],
    }
    print("read-only host register supported:", ro.value, flush=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        path = Path(tmp) / "blob"
        make_file(path, size)
        want = digest_file(path, "blake3")
        dest = torch.empty(size, dtype=torch.uint8, device=device)
        pinned_h2d.src = torch.empty(256 << 20, dtype=torch.uint8, pin_memory=True)  # type: ignore[attr-defined]
        pread16.bufs = [
            torch.empty(16 << 20, dtype=torch.uint8, pin_memory=True) for _ in range(16)
        ]  # type: ignore[attr-defined]

        def row(name: str, secs: list[float], **extra: Any) -> None:
            med = statistics.median(secs)
            r = {"case": name, "seconds": med, "GBps": size / med / 1e9, "runs": secs, **extra}
            report["rows"].append(r)
            print(
                f"{name:34s} {med * 1e3:8.1f} ms {size / med / 1e9:6.1f} GB/s {extra}", flush=True
            )

        row("pinned-h2d", timed(lambda: pinned_h2d(dest), args.runs))
        row("pread-16t", timed(lambda: pread16(path), args.runs))
        got: list[str] = []
        row("ring 16x16MiB (device hash)", timed(lambda: got.append(ring(path, dest)), args.runs),
            digest_ok=got[-1] == want)  # fmt: skip
        for threads in (4, 8, 16, 32):
            for window in (16 << 20, 64 << 20):
                for populate in (False, True):
                    try:
                        reg = Register(device, threads, window, populate)
                        dest.zero_()
                        secs = timed(lambda reg=reg: reg(path, dest), args.runs)
                        ok = device_digest(dest) == want
                        t0 = time.perf_counter()
                        device_digest(dest)
                        hash_s = time.perf_counter() - t0
                        phases = {k: round(v / (args.runs + 1), 4) for k, v in reg.phase.items()}
                        row(
                            f"register t={threads} w={window >> 20}MiB pop={int(populate)}",
                            secs, digest_ok=ok, device_hash_s=round(hash_s, 4),
                            thread_seconds=phases,
                        )  # fmt: skip
                        reg.pool.shutdown()
                    except Exception as exc:  # report and go on: this is a probe
                        print(
                            f"register t={threads} w={window >> 20} pop={populate}: {exc}",
                            flush=True,
                        )
                        report["rows"].append({"case": f"register t={threads}", "error": str(exc)})
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
