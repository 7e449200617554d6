"""BLAKE3 of bytes already on a CUDA device, computed there.

A GPU load copies the weights through pinned host memory; hashing them on the
host as well would cost every core a pass over the model (the copy from the
page cache and the hash compete for the same cores). Instead each blob is
hashed on the device, over the very bytes its tensors will view, once its last
byte has landed: one thread per 1 KiB chunk, the tree reduced in shared memory
and then per blob (``kernels/blake3.cu``). The result is the standard BLAKE3
digest, compared with the manifest's before any tensor is handed out.

The kernels ship as PTX (built from ``kernels/blake3.cu`` by
``scripts/build_kernels.sh``) and are loaded through the CUDA driver API with
ctypes: no compiler, no extension build, nothing beyond the driver torch
already uses. Where that does not work (no driver library, a driver older than
the PTX, ``MVAULT_GPU_HASH=0``), :func:`kernels` returns None with the reason in
:func:`unavailable_reason` and the loader hashes on the host as before.
"""

from __future__ import annotations

import ctypes
import os
import threading
from importlib import resources
from typing import Any

import torch

__all__ = ["DeviceBlake3", "kernels", "unavailable_reason"]

_CHUNK = 1024
_BLOCK_CHUNKS = 256  # chunks per CUDA block in mv_blake3_chunks (MV_BLOCK_CHUNKS)
_REDUCE_THREADS = 256

_lock = threading.Lock()
_loaded: dict[int, _Kernels | None] = {}
_reason: dict[int, str] = {}


class _Driver:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libcuda.so.1")
        self.lib.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]

    def check(self, rc: int, what: str) -> None:
        if rc:
            msg = ctypes.c_char_p()
            self.lib.cuGetErrorString(rc, ctypes.byref(msg))
            text = msg.value.decode() if msg.value else "unknown error"
            raise RuntimeError(f"{what} failed: CUDA driver error {rc} ({text})")


class _Kernels:
    """The two kernels, loaded into one device's primary context."""

    def __init__(self, device: torch.device) -> None:
        self.drv = _Driver()
        lib = self.drv.lib
        ptx = resources.files(__package__).joinpath("kernels/blake3.ptx").read_bytes() + b"\0"
        with torch.cuda.device(device):
            torch.cuda.init()  # type: ignore[no-untyped-call]
            torch.empty(1, device=device)  # makes the primary context current on this thread
            ctx = ctypes.c_void_p()
            self.drv.check(lib.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
            if not ctx.value:
                dev = ctypes.c_int()
                self.drv.check(lib.cuDeviceGet(ctypes.byref(dev), device.index or 0), "cuDeviceGet")
                self.drv.check(
                    lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain"
                )
                self.drv.check(lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
            self.ctx = ctx
            self.module = ctypes.c_void_p()
            self.drv.check(
                lib.cuModuleLoadData(ctypes.byref(self.module), ctypes.c_char_p(ptx)),
                "cuModuleLoadData",
            )
            self.chunks = self._function(b"mv_blake3_chunks")
            self.reduce = self._function(b"mv_blake3_reduce")

    def _function(self, name: bytes) -> ctypes.c_void_p:
        fn = ctypes.c_void_p()
        self.drv.check(
            self.drv.lib.cuModuleGetFunction(ctypes.byref(fn), self.module, name),
            "cuModuleGetFunction",
        )
        return fn

    # -- the copy side of a load: asynchronous copies and events, without the GIL -----------
    # ctypes releases the GIL for every call below, so reader threads that copy their
    # own chunks do not queue behind a main thread rebuilding a graph.
    def make_current(self) -> None:
        """Make the device's primary context current on the calling thread."""
        self.drv.check(self.drv.lib.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")

    def event(self) -> ctypes.c_void_p:
        ev = ctypes.c_void_p()
        # CU_EVENT_DISABLE_TIMING: these events only order work.
        self.drv.check(
            self.drv.lib.cuEventCreate(ctypes.byref(ev), ctypes.c_uint(2)), "cuEventCreate"
        )
        return ev

    def destroy(self, ev: ctypes.c_void_p) -> None:
        self.drv.lib.cuEventDestroy_v2(ev)

    def record(self, ev: ctypes.c_void_p, stream: int) -> None:
        self.drv.check(self.drv.lib.cuEventRecord(ev, ctypes.c_void_p(stream)), "cuEventRecord")

    def wait(self, ev: ctypes.c_void_p) -> None:
        self.drv.check(self.drv.lib.cuEventSynchronize(ev), "cuEventSynchronize")

    def stream_wait(self, stream: int, ev: ctypes.c_void_p) -> None:
        self.drv.check(
            self.drv.lib.cuStreamWaitEvent(ctypes.c_void_p(stream), ev, ctypes.c_uint(0)),
            "cuStreamWaitEvent",
        )

    def copy_to_device(self, dst: int, src: int, n: int, stream: int) -> None:
        """Queue a copy of ``n`` bytes of pinned host memory at ``src`` to device address ``dst``."""
        self.drv.check(
            self.drv.lib.cuMemcpyHtoDAsync_v2(
                ctypes.c_uint64(dst),
                ctypes.c_void_p(src),
                ctypes.c_size_t(n),
                ctypes.c_void_p(stream),
            ),
            "cuMemcpyHtoDAsync",
        )

    # -- the detached stream (see .detached): shared pinned memory and stream memory ops ----
    def host_register(self, ptr: int, size: int, flags: int) -> None:
        """Pin and register ``size`` bytes of host memory at ``ptr`` with the driver."""
        self.drv.check(
            self.drv.lib.cuMemHostRegister_v2(
                ctypes.c_void_p(ptr), ctypes.c_size_t(size), ctypes.c_uint(flags)
            ),
            "cuMemHostRegister",
        )

    def host_unregister(self, ptr: int) -> None:
        self.drv.check(
            self.drv.lib.cuMemHostUnregister(ctypes.c_void_p(ptr)), "cuMemHostUnregister"
        )

    def host_device_pointer(self, ptr: int) -> int:
        """The device address of registered host memory at ``ptr``."""
        out = ctypes.c_uint64()
        self.drv.check(
            self.drv.lib.cuMemHostGetDevicePointer_v2(
                ctypes.byref(out), ctypes.c_void_p(ptr), ctypes.c_uint(0)
            ),
            "cuMemHostGetDevicePointer",
        )
        return int(out.value)

    def wait_value32(self, stream: int, addr: int, value: int, flags: int) -> None:
        """Queue on ``stream`` a wait until the 32-bit word at device address ``addr`` reaches ``value``."""
        self._value32("cuStreamWaitValue32", stream, addr, value, flags)

    def write_value32(self, stream: int, addr: int, value: int, flags: int) -> None:
        """Queue on ``stream`` a write of ``value`` to the 32-bit word at device address ``addr``."""
        self._value32("cuStreamWriteValue32", stream, addr, value, flags)

    def _value32(self, name: str, stream: int, addr: int, value: int, flags: int) -> None:
        fn = getattr(self.drv.lib, name + "_v2")
        self.drv.check(
            fn(
                ctypes.c_void_p(stream),
                ctypes.c_uint64(addr),
                ctypes.c_uint32(value),
                ctypes.c_uint(flags),
            ),
            name,
        )

    def launch(self, fn: ctypes.c_void_p, grid: int, block: int, stream: Any, *args: Any) -> None:
        params = (ctypes.c_void_p * len(args))(
            *[ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) for a in args]
        )
        lib = self.drv.lib
        # The context must be current on the launching thread (a load may run on a worker).
        self.drv.check(lib.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")
        rc = lib.cuLaunchKernel(
            fn,
            ctypes.c_uint(grid), ctypes.c_uint(1), ctypes.c_uint(1),
            ctypes.c_uint(block), ctypes.c_uint(1), ctypes.c_uint(1),
            ctypes.c_uint(0), ctypes.c_void_p(stream.cuda_stream), params, None,
        )  # fmt: skip
        self.drv.check(rc, "cuLaunchKernel")


def kernels(device: torch.device) -> _Kernels | None:
    """The hashing kernels for ``device``, or None where the host must hash (see module doc)."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    with _lock:
        if index in _loaded:
            return _loaded[index]
        if os.environ.get("MVAULT_GPU_HASH", "1") == "0":
            _reason[index] = "MVAULT_GPU_HASH=0"
            return None  # not cached: the variable may change between loads
        try:
            k: _Kernels | None = _Kernels(torch.device("cuda", index))
        except (OSError, RuntimeError, AttributeError) as exc:
            k = None
            _reason[index] = str(exc)
        _loaded[index] = k
        return k


def unavailable_reason(device: torch.device) -> str | None:
    """Why :func:`kernels` returned None for ``device`` (None if it did not)."""
    index = device.index if device.index is not None else 0
    return _reason.get(index)


def _blocks(size: int) -> int:
    chunks = max(1, -(-size // _CHUNK))
    return -(-chunks // _BLOCK_CHUNKS)


class DeviceBlake3:
    """BLAKE3 digests of ``len(sizes)`` byte ranges of device memory.

    :meth:`hash` queues input ``k`` (a contiguous uint8 CUDA tensor of
    ``sizes[k]`` bytes) on ``stream``; :meth:`digests` reduces every input's
    tree on the same stream and returns ``"blake3:<hex>"`` per input (None for
    an input never queued). Working memory: 32 bytes per 256 KiB of input, twice.
    """

    def __init__(self, k: _Kernels, device: torch.device, sizes: list[int]) -> None:
        #: The loaded kernels and their driver calls (a load's copies and events use them too).
        self.kernels = k
        self._sizes = sizes
        self._first: list[int] = []
        pos = 0
        for size in sizes:
            self._first.append(pos)
            pos += _blocks(size)
        self._nodes = torch.empty(max(pos, 1) * 8, dtype=torch.int32, device=device)
        self._scratch = torch.empty_like(self._nodes)
        self._queued = [False] * len(sizes)
        self._device = device

    def hash(self, k: int, data: torch.Tensor, stream: Any) -> None:
        size = self._sizes[k]
        if data.numel() != size or data.dtype != torch.uint8 or not data.is_contiguous():
            raise ValueError(
                f"input {k}: expected {size} contiguous bytes, got {tuple(data.shape)} {data.dtype}"
            )
        n = _blocks(size)
        nodes = self._nodes.data_ptr() + self._first[k] * 32
        self.kernels.launch(
            self.kernels.chunks, n, _BLOCK_CHUNKS, stream,
            ctypes.c_uint64(data.data_ptr()), ctypes.c_uint64(size), ctypes.c_uint64(nodes),
            ctypes.c_int(1 if n == 1 else 0),
        )  # fmt: skip
        self._queued[k] = True

    def digests(self, stream: Any) -> list[str | None]:
        multi = [k for k, size in enumerate(self._sizes) if self._queued[k] and _blocks(size) > 1]
        roots: dict[int, torch.Tensor] = {}
        with torch.cuda.stream(stream):
            if multi:
                table = torch.tensor(
                    [[self._first[k] for k in multi], [_blocks(self._sizes[k]) for k in multi]],
                    dtype=torch.int64,
                ).to(self._device, non_blocking=False)
                out = torch.empty(len(multi) * 8, dtype=torch.int32, device=self._device)
                self.kernels.launch(
                    self.kernels.reduce, len(multi), _REDUCE_THREADS, stream,
                    ctypes.c_uint64(self._nodes.data_ptr()), ctypes.c_uint64(self._scratch.data_ptr()),
                    ctypes.c_uint64(table[0].data_ptr()), ctypes.c_uint64(table[1].data_ptr()),
                    ctypes.c_uint64(out.data_ptr()),
                )  # fmt: skip
                for j, k in enumerate(multi):
                    roots[k] = out[8 * j : 8 * j + 8]
            singles = [
                k for k, size in enumerate(self._sizes) if self._queued[k] and _blocks(size) == 1
            ]
            for k in singles:
                at = self._first[k] * 8
                roots[k] = self._nodes[at : at + 8]
            order = sorted(roots)
            host = torch.stack([roots[k] for k in order]).cpu() if order else None
        stream.synchronize()
        result: list[str | None] = [None] * len(self._sizes)
        if host is not None:
            raw = bytes(host.view(torch.uint8).flatten().tolist())
            for j, k in enumerate(order):
                result[k] = "blake3:" + raw[32 * j : 32 * j + 32].hex()
        return result
