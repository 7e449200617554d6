"""Load tensor sections onto a device at disk speed, verifying on the way.

CPU: by default the section's file is mapped copy-on-write (``MAP_PRIVATE``),
hashed through the mapping and then viewed as tensors: no copy,
and writes to a tensor never reach the file. Containers are immutable files
replaced only by atomic renames, so the verified bytes stay the mapped bytes.
With ``mmap=False`` the section is instead read with parallel ``preadv`` calls
into private memory, hashed in order as chunks arrive.

CUDA: one device buffer for the section is allocated after checking free
memory; the file streams through a small ring of pinned host buffers. Reader
threads fill ring slots with ``preadv`` (never an mmap: page faults inside a
``cudaMemcpy`` serialize the copy), the main thread hashes each chunk in order
(BLAKE3 releases the GIL and uses every core) and queues an asynchronous copy on
a side stream; an event per slot says when it may be refilled. Host memory in
use is the ring, not the model.

No tensor is handed out before the digest of its whole blob checked out; on
any failure the device memory is dropped before the error propagates.
"""

from __future__ import annotations

import mmap as _mmap
import os
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from ...errors import DeviceOutOfMemoryError, IntegrityError, InvalidArgumentError
from ..container import ContainerSource
from ...digest import damaged, new_hasher, parse_digest
from .device import check_free_memory, human_bytes
from .section import views_from_buffer

__all__ = [
    "CHUNK",
    "RING",
    "BackgroundLoad",
    "load_tensors",
    "map_blob",
    "read_blob_into",
    "release",
    "stream_options",
]

#: Bytes per read and per host-to-device copy.
CHUNK = 16 * 1024 * 1024
#: Pinned ring slots, and reads in flight: 8 x 16 MiB = 128 MiB of host memory.
#: Several reads at once are what it takes to pull the page cache at full speed.
RING = 8


def stream_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The loader's tuning options among a plugin's ``load(**options)``: mmap, chunk, ring."""
    out: dict[str, Any] = {"mmap": bool(options.get("mmap", True))}
    for key in ("chunk", "ring"):
        if key in options:
            value = options[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgumentError(f"{key} must be a positive integer, got {value!r:.40}")
            out[key] = value
    if "chunk" in out and out["chunk"] % 4096:
        raise InvalidArgumentError(f"chunk must be a multiple of 4096 bytes, got {out['chunk']}")
    return out


def _tensor_blobs(source: ContainerSource) -> list[int]:
    return sorted({t.blob for t in source.manifest.tensors})


def load_tensors(
    source: ContainerSource,
    device: torch.device,
    *,
    chunk: int = CHUNK,
    ring: int = RING,
    mmap: bool = True,
) -> dict[str, torch.Tensor]:
    """Every tensor of the container (aliases included) on ``device``, verified.

    On the CPU, ``mmap=True`` maps the section copy-on-write instead of copying it.

    Raises :class:`DeviceOutOfMemoryError` before allocating when the sections
    do not fit, :class:`IntegrityError` when bytes do not match their digest.
    """
    blobs = _tensor_blobs(source)
    sizes = {i: source.manifest.blobs[i].size for i in blobs}
    check_free_memory(device, sum(sizes.values()), what="the weights")
    out: dict[str, torch.Tensor] = {}
    buffers: list[torch.Tensor] = []
    buf: torch.Tensor | None = None
    try:
        for i in blobs:
            if device.type == "cpu" and mmap and sizes[i] > 0:
                buf = map_blob(source, i)
            else:
                buf = _allocate(device, sizes[i])
                read_blob_into(source, i, buf, chunk=chunk, ring=ring)
            buffers.append(buf)
            out.update(views_from_buffer(source.manifest, i, buf))
    except BaseException as exc:
        out.clear()
        buffers.clear()
        buf = None
        release(exc, device)
        raise
    for alias, target in source.manifest.tensor_aliases.items():
        out[alias] = out[target]
    return out


def release(exc: BaseException, device: torch.device) -> None:
    """Let go of what a failed load allocated.

    A traceback keeps every frame's locals alive, device buffers included, for
    as long as the caller holds the exception; clearing the finished frames
    frees them now. Frames still running are left alone (callers drop their
    own references).
    """
    traceback.clear_frames(exc.__traceback__)
    if device.type == "cuda":
        torch.cuda.empty_cache()


class BackgroundLoad:
    """:func:`load_tensors` on a worker thread, so it overlaps rebuilding the graph.

    Reading, hashing and copying release the GIL; the caller meanwhile parses
    and checks the program. Call :meth:`result` for the tensors, or
    :meth:`discard` on the error path: it waits for the worker and drops
    whatever it loaded, so nothing stays on the device.
    """

    def __init__(self, source: ContainerSource, device: torch.device, **options: Any) -> None:
        self._device = device
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mvault-load")
        self._future = self._pool.submit(load_tensors, source, device, **options)

    def result(self) -> dict[str, torch.Tensor]:
        try:
            return self._future.result()
        finally:
            self._pool.shutdown(wait=True)

    def discard(self) -> None:
        try:
            self._future.result()
        except BaseException as exc:  # the caller is already raising the error that matters
            traceback.clear_frames(exc.__traceback__)
        finally:
            self._pool.shutdown(wait=True)
            del self._future  # it holds the tensors (or the error) until dropped
            if self._device.type == "cuda":
                torch.cuda.empty_cache()


def _allocate(device: torch.device, size: int) -> torch.Tensor:
    try:
        return torch.empty(size, dtype=torch.uint8, device=device)
    except torch.cuda.OutOfMemoryError as exc:
        free, _total = torch.cuda.mem_get_info(device)
        raise DeviceOutOfMemoryError(
            f"the weights need {human_bytes(size)} ({size} bytes) on {device} but only "
            f"{human_bytes(free)} ({free} bytes) is free",
            hint="free GPU memory or load onto another device",
        ) from exc


def _integrity(ref: Any, where: str, actual: str, truncated: bool) -> IntegrityError:
    if truncated:
        return IntegrityError(
            f"blob {ref.digest} is truncated: {actual} of {ref.size} bytes in {where}",
            expected=ref.digest,
            actual=f"{actual} bytes",
            where=where,
        )
    return damaged(ref.digest, actual, where)


def map_blob(source: ContainerSource, index: int) -> torch.Tensor:
    """Blob ``index`` as a uint8 CPU tensor over a verified copy-on-write file mapping."""
    ref = source.manifest.blobs[index]
    loc = source.locate(index)
    where = str(loc.path)
    algo, _ = parse_digest(ref.digest)
    start = loc.offset - loc.offset % _mmap.ALLOCATIONGRANULARITY
    delta = loc.offset - start
    with open(loc.path, "rb") as f:
        have = os.fstat(f.fileno()).st_size - loc.offset
        if have < ref.size:
            raise _integrity(ref, where, str(max(have, 0)), truncated=True)
        # No MAP_POPULATE: on a writable private mapping it would copy every page.
        mm = _mmap.mmap(
            f.fileno(),
            delta + ref.size,
            flags=_mmap.MAP_PRIVATE,
            prot=_mmap.PROT_READ | _mmap.PROT_WRITE,
            offset=start,
        )
    hasher = new_hasher(algo)
    with memoryview(mm) as view:
        hasher.update(view[delta : delta + ref.size])
    actual = hasher.digest_str()
    if actual != ref.digest:
        mm.close()
        raise _integrity(ref, where, actual, truncated=False)
    # The tensor keeps the mapping alive; it is unmapped when the last view goes.
    return torch.frombuffer(mm, dtype=torch.uint8, offset=delta, count=ref.size)


def _read_exact(fd: int, view: memoryview, offset: int) -> int:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            break
        got += n
    return got


def read_blob_into(
    source: ContainerSource, index: int, dest: torch.Tensor, *, chunk: int = CHUNK, ring: int = RING
) -> None:
    """Read blob ``index`` into the uint8 tensor ``dest`` (CPU or CUDA), verifying its digest."""
    ref = source.manifest.blobs[index]
    loc = source.locate(index)
    where = str(loc.path)
    algo, _ = parse_digest(ref.digest)
    hasher = new_hasher(algo)
    fd = os.open(loc.path, os.O_RDONLY)
    try:
        if dest.device.type == "cuda":
            got = _stream_cuda(fd, loc.offset, ref.size, dest, hasher, chunk, ring)
        else:
            got = _stream_cpu(fd, loc.offset, ref.size, dest, hasher, chunk, ring)
    finally:
        os.close(fd)
    if got != ref.size:
        raise _integrity(ref, where, str(got), truncated=True)
    if hasher is not None:
        actual = hasher.digest_str()
        if actual != ref.digest:
            raise _integrity(ref, where, actual, truncated=False)


def _pipeline(
    n_chunks: int,
    ring: int,
    read: Callable[[int], int],
    consume: Callable[[int, int], None],
) -> int:
    """Run ``read(j)`` for up to ``ring`` chunks ahead on a thread pool and
    ``consume(j, n)`` in order on this thread. Returns the bytes read."""
    total = 0
    with ThreadPoolExecutor(max_workers=max(1, ring), thread_name_prefix="mvault-read") as pool:
        pending: deque[Future[int]] = deque()
        for j in range(min(ring, n_chunks)):
            pending.append(pool.submit(read, j))
        try:
            for j in range(n_chunks):
                n = pending.popleft().result()
                consume(j, n)
                total += n
                if j + ring < n_chunks:
                    pending.append(pool.submit(read, j + ring))
        finally:
            for f in pending:
                f.cancel()
    return total


def _stream_cpu(
    fd: int, offset: int, size: int, dest: torch.Tensor, hasher: Any, chunk: int, ring: int
) -> int:
    view = memoryview(dest.numpy()) if size else memoryview(b"")  # type: ignore[arg-type]
    n_chunks = -(-size // chunk)
    short = [False]

    def read(j: int) -> int:
        start = j * chunk
        return _read_exact(fd, view[start : min(start + chunk, size)], offset + start)

    def consume(j: int, n: int) -> None:
        start = j * chunk
        if short[0]:
            return
        if hasher is not None:
            hasher.update(view[start : start + n])
        if n < min(chunk, size - start):
            short[0] = True  # the file ends early: stop hashing; the caller reports it

    got = _pipeline(n_chunks, ring, read, consume)
    return got


def _stream_cuda(
    fd: int, offset: int, size: int, dest: torch.Tensor, hasher: Any, chunk: int, ring: int
) -> int:
    return stream_through_ring(fd, offset, size, dest, hasher, chunk, ring)


def stream_through_ring(
    fd: int, offset: int, size: int, dest: torch.Tensor, hasher: Any, chunk: int, ring: int
) -> int:
    """Read ``size`` bytes at ``offset`` of ``fd`` into ``dest`` through ``ring`` staging slots.

    For a CUDA ``dest`` the slots are pinned and copies are asynchronous on a
    side stream, an event per slot guarding its reuse; for a CPU ``dest`` (used
    to test the ring's bookkeeping) copies are plain. Returns the bytes read.
    """
    device = dest.device
    cuda = device.type == "cuda"
    chunk = min(chunk, max(size, 1))
    slots = [torch.empty(chunk, dtype=torch.uint8, pin_memory=cuda) for _ in range(ring)]
    slot_views = [memoryview(s.numpy()) for s in slots]  # type: ignore[arg-type]
    events: list[Any] = [None] * ring
    stream = torch.cuda.Stream(device) if cuda else None  # type: ignore[no-untyped-call]
    n_chunks = -(-size // chunk)

    def read(j: int) -> int:
        k = j % ring
        ev = events[k]
        if ev is not None:
            ev.synchronize()  # the slot's previous copy must be done before it is overwritten
        start = j * chunk
        want = min(chunk, size - start)
        return _read_exact(fd, slot_views[k][:want], offset + start)

    def consume(j: int, n: int) -> None:
        k = j % ring
        if hasher is not None:
            hasher.update(slot_views[k][:n])
        start = j * chunk
        if stream is None:
            dest[start : start + n].copy_(slots[k][:n])
            return
        with torch.cuda.stream(stream):
            dest[start : start + n].copy_(slots[k][:n], non_blocking=True)
            ev = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ev.record(stream)
        events[k] = ev

    try:
        got = _pipeline(n_chunks, ring, read, consume)
    finally:
        if stream is not None:
            stream.synchronize()
    if stream is not None:
        # Later work on the default stream must see the copied bytes.
        torch.cuda.current_stream(device).wait_stream(stream)
    return got
