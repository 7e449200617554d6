"""Load tensor blobs onto a device at disk speed, verifying on the way.

CPU: each blob of a local store or a bundle is mapped copy-on-write (``MAP_PRIVATE``),
hashed through the mapping and then viewed as tensors: no copy, and writes to a
tensor never reach the file. Store blobs are replaced only by atomic renames,
so the verified bytes stay the mapped bytes. Any other file (a cache entry,
which other processes fill and evict and which could be truncated under a
mapping), or any load with ``mmap=False``, is read with parallel
``preadv`` calls into one private buffer, each blob hashed in order as its
chunks arrive.

CUDA: one device buffer for all of a container's tensor blobs (format 1.1
stores a blob per large tensor) is allocated after checking free memory; the
files stream through a small ring of pinned host buffers in one pass across
blobs. Reader threads fill ring slots with ``preadv`` (never an mmap: page
faults inside a ``cudaMemcpy`` serialize the copy). Where the device hashes
every blob (BLAKE3, :mod:`.cuda_blake3`), order does not matter: each reader
thread owns two slots and queues its own copies through the driver, and a
blob's hash is queued behind its last chunk (:func:`_stream_unordered`).
Otherwise the loading thread hashes each chunk in order into its blob's hasher
(BLAKE3 releases the GIL and uses every core) and queues an asynchronous copy
on a side stream; an event per slot says when it may be refilled. Host memory
in use is the ring, not the model.

No tensor is handed out before the digest of its whole blob checked out; on
any failure the device memory is dropped before the error propagates.
"""

from __future__ import annotations

import itertools
import mmap as _mmap
import os
import threading
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...digest import damaged, new_hasher, parse_digest
from ...errors import DeviceOutOfMemoryError, IntegrityError, InvalidArgumentError
from ..container import ContainerSource
from ..manifest import Manifest, TensorEntry, align
from .device import check_free_memory, human_bytes
from .section import views_from_buffer

__all__ = [
    "CHUNK",
    "MAX_MAPS",
    "RING",
    "BackgroundLoad",
    "Piece",
    "load_tensors",
    "map_blob",
    "read_blobs_into",
    "release",
    "stream_options",
    "stream_through_ring",
]

#: Bytes per read and per host-to-device copy.
CHUNK = 16 * 1024 * 1024
#: Above this many tensor blobs a CPU load reads into one buffer instead of
#: mapping each blob: every mapping is a kernel map entry, and a process may
#: hold only so many (``vm.max_map_count``, 65 530 by default).
MAX_MAPS = 16_384
#: Ring slots, and reads in flight: 8 x 16 MiB = 128 MiB of host memory.
#: Several reads at once are what it takes to pull the page cache at full speed.
RING = 8
#: The pinned ring of a CUDA load: with the device hashing, the host's cores
#: only copy from the page cache, and 16 reads in flight with 256 MiB pinned
#: come near the best of the ring/chunk sweep on an H200 host
#: (``benchmarks/gpu_load.py --tune``; the best setting moved between runs by
#: a few GB/s). In-order: 16 slots of 16 MiB; unordered (the device hashes every
#: blob): 16 reader threads with two 8 MiB slots each.
RING_CUDA = 16
CHUNK_CUDA = 16 * 1024 * 1024


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


def _repeats(manifest: Manifest) -> list[TensorEntry]:
    """Entries naming the same bytes as an earlier entry (identical tensors, format 1.1).

    Each must still be a tensor of its own, so a load gives it its own memory.
    """
    seen: set[tuple[int, int, int]] = set()
    out = []
    for e in manifest.tensors:
        key = (e.blob, e.offset, e.nbytes)
        if e.nbytes and key in seen:
            out.append(e)
        seen.add(key)
    return out


def load_tensors(
    source: ContainerSource,
    device: torch.device,
    *,
    chunk: int | None = None,
    ring: int | None = None,
    mmap: bool = True,
) -> dict[str, torch.Tensor]:
    """Every tensor of the container (aliases included) on ``device``, verified.

    On the CPU, ``mmap=True`` maps each blob copy-on-write instead of copying it
    (up to :data:`MAX_MAPS` blobs).
    Otherwise every tensor blob lands in one buffer (one allocation; on CUDA one
    pass through the pinned ring across all blobs), each blob hashed on the way.

    Raises :class:`DeviceOutOfMemoryError` before allocating when the weights
    do not fit, :class:`IntegrityError` when bytes do not match their digest.
    """
    if device.type == "cuda":
        # chunk/ring as given: only a load that asks for no ring may use the reader process.
        return CudaLoad(source, device, chunk=chunk, ring=ring, background=False).result()
    if ring is None:
        ring = RING
    if chunk is None:
        chunk = CHUNK
    manifest = source.manifest
    blobs = _tensor_blobs(source)
    repeats = _repeats(manifest)
    out: dict[str, torch.Tensor] = {}
    buf: torch.Tensor | None = None
    try:
        mapped = (
            device.type == "cpu"
            and mmap
            and len(blobs) <= MAX_MAPS
            and all(source.locate(i).mappable for i in blobs)
        )
        if mapped:
            for i in blobs:
                if manifest.blobs[i].size:
                    buf = map_blob(source, i)
                else:
                    buf = _allocate(device, 0)
                    read_blobs_into(source, [i], buf, chunk=chunk, ring=ring)
                out.update(views_from_buffer(manifest, i, buf))
        else:
            placed, total = _place(manifest, blobs)
            check_free_memory(device, total + sum(e.nbytes for e in repeats), what="the weights")
            buf = _allocate(device, total)
            read_blobs_into(source, blobs, buf, chunk=chunk, ring=ring)
            for i in blobs:
                at = placed[i]
                piece = buf[at : at + manifest.blobs[i].size]
                out.update(views_from_buffer(manifest, i, piece))
        for e in repeats:  # the same bytes as another tensor, but not the same tensor
            out[e.name] = out[e.name].clone()
    except BaseException as exc:
        out.clear()
        buf = None
        release(exc, device)
        raise
    for alias, target in manifest.tensor_aliases.items():
        out[alias] = out[target]
    return out


def _place(manifest: Manifest, blobs: Sequence[int]) -> tuple[dict[int, int], int]:
    """Where each blob starts in the one buffer (4096-aligned, as its tensors are), and its size."""
    placed: dict[int, int] = {}
    pos = 0
    for i in blobs:
        pos = align(pos)
        placed[i] = pos
        pos += manifest.blobs[i].size
    return placed, pos


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
    """A load of every tensor begun now, so it overlaps rebuilding the graph.

    On the CPU, :func:`load_tensors` runs on a worker thread (reading and
    hashing release the GIL) while the caller parses and checks the program.
    Onto a GPU it is a :class:`CudaLoad`: where the reader process streams
    the blobs (:mod:`.detached`) the bytes are moving when this returns and no
    thread of this process works for them; otherwise the in-process ring runs on
    a worker thread, or, with ``background=False``, inside :meth:`result`
    (its threads and a graph rebuilt beside them would contend for the GIL).
    Call :meth:`result` for the tensors, or :meth:`discard` on the error path:
    it waits for the load and drops whatever it loaded, so nothing stays on the
    device.
    """

    def __init__(
        self,
        source: ContainerSource,
        device: torch.device,
        *,
        background: bool = True,
        **options: Any,
    ) -> None:
        self._device = device
        self._cuda: CudaLoad | None = None
        self._pool: ThreadPoolExecutor | None = None
        if device.type == "cuda":
            self._cuda = CudaLoad(
                source,
                device,
                chunk=options.get("chunk"),
                ring=options.get("ring"),
                background=background,
            )
            return
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mvault-load")
        self._future = self._pool.submit(load_tensors, source, device, **options)

    @property
    def detached(self) -> bool:
        """Whether the weights stream through the reader process (nothing here holds them up)."""
        return self._cuda is not None and self._cuda.job is not None

    def result(self) -> dict[str, torch.Tensor]:
        if self._cuda is not None:
            return self._cuda.result()
        assert self._pool is not None
        try:
            return self._future.result()
        finally:
            self._pool.shutdown(wait=True)

    def discard(self) -> None:
        if self._cuda is not None:
            self._cuda.discard()
            return
        assert self._pool is not None
        try:
            self._future.result()
        except BaseException as exc:  # the caller is already raising the error that matters
            traceback.clear_frames(exc.__traceback__)
        finally:
            self._pool.shutdown(wait=True)
            del self._future  # it holds the tensors (or the error) until dropped


class CudaLoad:
    """Every tensor of a container onto a CUDA device: begun in ``__init__``, ended by :meth:`result`.

    ``__init__`` checks free memory (:class:`DeviceOutOfMemoryError` before
    anything is allocated), allocates the one device buffer and works out where
    each blob comes from. Where every blob is a local file the device hashes
    (BLAKE3) and no ring was asked for (``chunk``/``ring``), the stream is
    handed to the reader process (:func:`.detached.start`) and ``__init__``
    returns with the bytes moving. Otherwise the in-process ring
    (:func:`stream_through_ring`) runs on a worker thread (``background``) or
    in :meth:`result`. A reader process lost mid-load costs a second pass, in
    process. :meth:`result` checks every blob's digest before a tensor is made.
    """

    def __init__(
        self,
        source: ContainerSource,
        device: torch.device,
        *,
        chunk: int | None = None,
        ring: int | None = None,
        background: bool = False,
    ) -> None:
        from . import detached

        self.source = source
        self.device = device
        self.job: Any = None
        self._chunk = CHUNK_CUDA if chunk is None else chunk
        self._ring = RING_CUDA if ring is None else ring
        self._pool: ThreadPoolExecutor | None = None
        self._future: Future[None] | None = None
        manifest = source.manifest
        self.blobs = _tensor_blobs(source)
        self.repeats = _repeats(manifest)
        self.placed, total = _place(manifest, self.blobs)
        check_free_memory(device, total + sum(e.nbytes for e in self.repeats), what="the weights")
        self.pieces: list[Piece] = []
        self.buf: torch.Tensor | None = _allocate(device, total)
        try:
            self.pieces = _pieces(source, self.blobs, self.placed)
            if chunk is None and ring is None and detached.wanted() and UNORDERED:
                local = all(p.reader is None for p in self.pieces)
                hashing = _device_hashing(self.pieces, device) if local else None
                if hashing is not None and all(p.on_device or not p.size for p in self.pieces):
                    hash_stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
                    self.job = detached.start(self.pieces, self.buf, hashing, hash_stream)
            if self.job is None and background:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mvault-load")
                self._future = self._pool.submit(self._stream)
        except BaseException as exc:
            self._drop(exc)
            raise

    def _stream(self) -> None:
        """The in-process ring over every piece (again, after a lost reader process)."""
        assert self.buf is not None
        for p in self.pieces:
            p.got, p.short, p.digest, p.on_device = 0, False, None, False
        stream_through_ring(self.pieces, self.buf, self._chunk, self._ring)

    def _finish(self, *, stream: bool = True) -> None:
        """Wait for the load begun; with ``stream`` (not on the way to a discard), stream
        the bytes here where nothing streams them yet, or where the reader was lost."""
        from . import detached

        if self.job is not None:
            job, self.job = self.job, None
            try:
                job.finish()
                return
            except detached.HelperLost:
                if not stream:
                    return
                # streamed again below, in this process
        if self._future is not None:
            future, self._future = self._future, None
            try:
                future.result()
            finally:
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
            return
        if stream:
            self._stream()

    def result(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        try:
            self._finish()
            _check_pieces(self.source, self.blobs, self.pieces)
            manifest = self.source.manifest
            buf = self.buf
            assert buf is not None
            for i in self.blobs:
                at = self.placed[i]
                out.update(views_from_buffer(manifest, i, buf[at : at + manifest.blobs[i].size]))
            for e in self.repeats:  # the same bytes as another tensor, but not the same tensor
                out[e.name] = out[e.name].clone()
        except BaseException as exc:
            out.clear()
            self._drop(exc)
            raise
        _commit_fills(self.pieces)
        self.buf = None
        for alias, target in self.source.manifest.tensor_aliases.items():
            out[alias] = out[target]
        return out

    def discard(self) -> None:
        """Stop the load, wait for whatever still writes into the buffer, and free it."""
        if self.job is not None:
            self.job.cancel()
        try:
            self._finish(stream=False)
        except BaseException as exc:  # the caller is already raising the error that matters
            traceback.clear_frames(exc.__traceback__)
        finally:
            self._drop(None)

    def _drop(self, exc: BaseException | None) -> None:
        if self.job is not None:  # an error before finish(): stop the reader and the device
            job, self.job = self.job, None
            job.cancel()
            try:
                job.finish()
            except BaseException as err:
                traceback.clear_frames(err.__traceback__)
        if self._future is not None:
            future, self._future = self._future, None
            wait([future])
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        _abort_fills(self.pieces)
        self.buf = None
        if exc is not None:
            release(exc, self.device)
        else:
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


def _read_piece(files: _Files, k: int, p: Piece, view: memoryview, start: int) -> int:
    """Read ``len(view)`` bytes of piece ``k`` from ``start`` (a file, or a remote reader)."""
    if p.reader is None:
        return _read_exact(files.fd(k), view, p.offset + start)
    n = 0
    while n < len(view):
        got = int(p.reader.read_into(view[n:], start + n))
        if got <= 0:
            break
        n += got
    if p.sink is not None and n:
        p.sink.write_at(view[:n], start)
    return n


def _read_exact(fd: int, view: memoryview, offset: int) -> int:
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            break
        got += n
    return got


@dataclass
class Piece:
    """``size`` bytes at ``offset`` of the file ``path``, bound for ``dest`` in the buffer.

    ``hasher`` (or None) is fed the bytes in order; ``got`` says how many were read.
    """

    path: Path
    offset: int
    size: int
    dest: int
    hasher: Any = None
    got: int = 0
    short: bool = False
    #: Set when the device hashed the piece (see :mod:`.cuda_blake3`): its BLAKE3 digest.
    digest: str | None = None
    on_device: bool = False
    #: A remote blob: ``reader.read_into(view, offset)`` replaces reading ``path``,
    #: and ``sink`` (a cache fill, or None) gets a copy of every byte read.
    reader: Any = None
    sink: Any = None
    where: str = ""


def read_blobs_into(
    source: ContainerSource,
    indexes: Sequence[int],
    dest: torch.Tensor,
    *,
    chunk: int = CHUNK,
    ring: int = RING,
) -> None:
    """Read blobs ``indexes`` one after another (4096-aligned) into the uint8 tensor ``dest``.

    CPU or CUDA; one pass over all of them, each blob verified against its digest.
    """
    placed, _total = _place(source.manifest, indexes)
    pieces: list[Piece] = []
    try:
        pieces = _pieces(source, indexes, placed)
        if dest.device.type == "cuda":
            stream_through_ring(pieces, dest, chunk, ring)
        else:
            _stream_cpu(pieces, dest, chunk, ring)
        _check_pieces(source, indexes, pieces)
    except BaseException:
        _abort_fills(pieces)
        raise
    _commit_fills(pieces)


def _pieces(
    source: ContainerSource, indexes: Sequence[int], placed: Mapping[int, int]
) -> list[Piece]:
    """A :class:`Piece` per blob: where its bytes are (a file, or a remote reader) and go."""
    pieces: list[Piece] = []
    remote = getattr(source, "remote", None)  # a store source may stream remote blobs
    try:
        for i in indexes:
            ref = source.manifest.blobs[i]
            algo, _ = parse_digest(ref.digest)
            streamed = remote(i) if remote is not None else None
            if streamed is not None:
                reader, sink = streamed
                where = source.store.where(ref.digest)  # type: ignore[attr-defined]
                piece = Piece(
                    Path(),
                    0,
                    ref.size,
                    placed[i],
                    new_hasher(algo),
                    reader=reader,
                    sink=sink,
                    where=where,
                )
            else:
                loc = source.locate(i)
                piece = Piece(
                    Path(loc.path),
                    loc.offset,
                    ref.size,
                    placed[i],
                    new_hasher(algo),
                    where=str(loc.path),
                )
            pieces.append(piece)
    except BaseException:
        _abort_fills(pieces)
        raise
    return pieces


def _check_pieces(source: ContainerSource, indexes: Sequence[int], pieces: Sequence[Piece]) -> None:
    """Every piece read whole and matching its digest, or :class:`IntegrityError`."""
    for i, p in zip(indexes, pieces):
        ref = source.manifest.blobs[i]
        if p.got != ref.size:
            raise _integrity(ref, p.where, str(p.got), truncated=True)
        actual = p.digest if p.on_device else p.hasher.digest_str()
        if actual != ref.digest:
            raise _integrity(ref, p.where, str(actual), truncated=False)


def _abort_fills(pieces: Sequence[Piece]) -> None:
    for p in pieces:
        if p.sink is not None:
            p.sink.abort()  # nothing unverified reaches the cache


def _commit_fills(pieces: Sequence[Piece]) -> None:
    for p in pieces:
        if p.sink is not None:
            p.sink.commit_later()  # verified: made durable and visible off the load's path


def _chunks(pieces: Sequence[Piece], chunk: int) -> list[tuple[int, int, int]]:
    """``(piece, start, length)`` of every read: no read spans two blobs (the reader
    process's plan, :func:`.ring_reader.plan`, so both rings read alike)."""
    from .ring_reader import plan

    return plan([p.size for p in pieces], chunk)


class _Files:
    """File descriptors opened on a piece's first read, closed after its last.

    A model may have thousands of blobs; only those the reads in flight touch
    are open at once.
    """

    def __init__(self, pieces: Sequence[Piece]) -> None:
        self._pieces = pieces
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def fd(self, k: int) -> int:
        with self._lock:
            if k not in self._fds:
                self._fds[k] = os.open(self._pieces[k].path, os.O_RDONLY)
            return self._fds[k]

    def done(self, k: int) -> None:
        with self._lock:
            fd = self._fds.pop(k, None)
        if fd is not None:
            os.close(fd)

    def close_all(self) -> None:
        for k in list(self._fds):
            self.done(k)


def _consume(p: Piece, view: memoryview, want: int, n: int) -> None:
    """Account for (and hash) one read of ``n`` of the ``want`` bytes asked."""
    if p.short:
        return  # the file ended early: the caller reports it as truncated
    if p.hasher is not None and not p.on_device:
        p.hasher.update(view[:n])
    p.got += n
    p.short = n < want


def _pipeline(
    n_chunks: int,
    ring: int,
    read: Callable[[int], int],
    consume: Callable[[int, int], None],
) -> int:
    """Run ``read(j)`` for up to ``ring`` chunks ahead on a thread pool and
    ``consume(j, n)`` in order on this thread. Returns the bytes read."""
    total = 0
    pool, own = _readers(ring)
    pending: deque[Future[int]] = deque()
    try:
        for j in range(min(ring, n_chunks)):
            pending.append(pool.submit(read, j))
        for j in range(n_chunks):
            n = pending.popleft().result()
            consume(j, n)
            total += n
            if j + ring < n_chunks:
                pending.append(pool.submit(read, j + ring))
    finally:
        for f in pending:
            f.cancel()
        # Reads already running write into the caller's buffers and use its file
        # descriptors: none may outlive this call.
        wait([f for f in pending if not f.cancelled()])
        if own:
            pool.shutdown(wait=True)
    return total


#: Reader threads kept for the process's loads (a load reads with up to ``ring``
#: of them): starting 16 threads per load cost about a millisecond of every
#: warm GPU load. A larger ``ring`` gets a pool of its own for that call.
_POOL_SIZE = 32
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _forget_pool_in_child() -> None:
    # A fork copies neither the pool's threads nor a lock another thread held.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def _readers(n: int) -> tuple[ThreadPoolExecutor, bool]:
    """A pool for ``n`` reader threads, and whether it is the caller's own to shut down:
    the process's pool, or a new one where ``n`` is more than it holds."""
    if n > _POOL_SIZE:
        return ThreadPoolExecutor(n, thread_name_prefix="mvault-read"), True
    return _reader_pool(), False


def _reader_pool() -> ThreadPoolExecutor:
    """The process's reader pool (a forked child makes its own, see above)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_POOL_SIZE, thread_name_prefix="mvault-read")
        return _pool


def _stream_cpu(pieces: Sequence[Piece], dest: torch.Tensor, chunk: int, ring: int) -> None:
    """Read straight into a CPU ``dest`` with ``ring`` reads in flight, hashing in order."""
    total = max((p.dest + p.size for p in pieces), default=0)
    view = memoryview(dest.numpy()) if total else memoryview(b"")  # type: ignore[arg-type]
    plan = _chunks(pieces, chunk)
    files = _Files(pieces)

    def read(j: int) -> int:
        k, start, want = plan[j]
        p = pieces[k]
        at = p.dest + start
        return _read_piece(files, k, p, view[at : at + want], start)

    def consume(j: int, n: int) -> None:
        k, start, want = plan[j]
        p = pieces[k]
        _consume(p, view[p.dest + start :], want, n)
        if start + want == p.size:
            files.done(k)

    try:
        _pipeline(len(plan), ring, read, consume)
    finally:
        files.close_all()


def stream_through_ring(pieces: Sequence[Piece], dest: torch.Tensor, chunk: int, ring: int) -> None:
    """Read every piece into ``dest`` through ``ring`` staging slots, in one pass.

    For a CUDA ``dest`` the slots are pinned and copies are asynchronous on a
    side stream, an event per slot guarding its reuse; for a CPU ``dest`` (used
    to test the ring's bookkeeping) copies are plain. A read never spans two
    pieces, so each piece's hasher sees its bytes in order; ``Piece.got`` says
    how many bytes of each were read.
    """
    device = dest.device
    cuda = device.type == "cuda"
    hashing = _device_hashing(pieces, device) if cuda else None
    hash_stream = torch.cuda.Stream(device) if hashing is not None else None  # type: ignore[no-untyped-call]
    largest = max((p.size for p in pieces), default=0)
    # An empty blob has nothing to read; the host's hasher gives its digest.
    unordered = hashing is not None and UNORDERED and all(p.on_device or not p.size for p in pieces)
    if unordered:
        # ``ring`` reader threads, each with two slots of half a chunk: the same pinned
        # memory as the in-order ring, a read in flight on every thread.
        chunk = max(4096, chunk // 2 // 4096 * 4096)
    chunk = min(chunk, max(largest, 1))
    plan = _chunks(pieces, chunk)
    ring = max(1, min(ring, len(plan)))
    n_slots = 2 * ring if unordered else ring
    slots = [torch.empty(chunk, dtype=torch.uint8, pin_memory=cuda) for _ in range(n_slots)]
    slot_views = [memoryview(s.numpy()) for s in slots]  # type: ignore[arg-type]
    events: list[Any] = [None] * ring
    stream = torch.cuda.Stream(device) if cuda else None  # type: ignore[no-untyped-call]
    if stream is not None:
        # ``dest`` was allocated on the current stream, whose earlier kernels may still use
        # the memory the caching allocator just handed out again: copies start after them.
        stream.wait_stream(torch.cuda.current_stream(device))
    files = _Files(pieces)

    def read(j: int) -> int:
        k = j % ring
        ev = events[k]
        if ev is not None:
            ev.synchronize()  # the slot's previous copy must be done before it is overwritten
        piece, start, want = plan[j]
        p = pieces[piece]
        return _read_piece(files, piece, p, slot_views[k][:want], start)

    def consume(j: int, n: int) -> None:
        k = j % ring
        piece, start, want = plan[j]
        p = pieces[piece]
        _consume(p, slot_views[k], want, n)
        last = start + want == p.size
        if last:
            files.done(piece)
        if not n:
            return
        at = p.dest + start
        if stream is None:
            dest[at : at + n].copy_(slots[k][:n])
            return
        with torch.cuda.stream(stream):
            dest[at : at + n].copy_(slots[k][:n], non_blocking=True)
            ev = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ev.record(stream)
        events[k] = ev
        if (
            last
            and p.on_device
            and hashing is not None
            and hash_stream is not None
            and p.got == p.size
        ):
            # Every copy of the piece is queued before this event: hash it where it landed.
            hash_stream.wait_event(ev)
            hashing.hash(piece, dest[p.dest : p.dest + p.size], hash_stream)

    try:
        if unordered:
            _stream_unordered(
                pieces, dest, plan, files, slots, slot_views, stream, hashing, hash_stream
            )
        else:
            _pipeline(len(plan), ring, read, consume)
    finally:
        files.close_all()
        if stream is not None:
            stream.synchronize()
        if hash_stream is not None:
            hash_stream.synchronize()
    if hashing is not None and hash_stream is not None:
        for p, digest in zip(pieces, hashing.digests(hash_stream)):
            p.digest = digest
    if stream is not None:
        # Later work on the default stream must see the copied bytes.
        torch.cuda.current_stream(device).wait_stream(stream)


#: A CUDA load whose every piece the device hashes reads and copies its chunks in
#: whatever order the reads finish (:func:`_stream_unordered`); False keeps the
#: in-order ring (``benchmarks/gpu_load.py --tune`` compares the two).
UNORDERED = True


def _stream_unordered(
    pieces: Sequence[Piece],
    dest: torch.Tensor,
    plan: Sequence[tuple[int, int, int]],
    files: _Files,
    slots: Sequence[torch.Tensor],
    views: Sequence[memoryview],
    stream: Any,
    hashing: Any,
    hash_stream: Any,
) -> None:
    """The ring for pieces the device hashes: no thread waits for another's chunk.

    Nothing needs the bytes in order when the device hashes each piece once it
    has landed, so every reader thread owns two of the pinned slots and, for
    each chunk it takes (in file order, from a shared counter), waits for its
    slot's previous copy, reads into it and queues the copy itself, through the
    driver (ctypes: the GIL is released for every call, so a main thread
    rebuilding a graph does not hold the copies up). The thread that lands a
    piece's last chunk records an event after it on the copy stream (every
    other chunk of the piece was queued there before its count went down) and
    queues the piece's hash behind that event. A read that fails stops the
    others; the caller synchronizes the copy stream before the slots go.
    """
    k = hashing.kernels
    copy_stream = int(stream.cuda_stream)
    hash_handle = int(hash_stream.cuda_stream)
    base = int(dest.data_ptr())
    ptrs = [int(s.data_ptr()) for s in slots]
    per = 2
    workers = len(slots) // per
    # A pool thread drops its task (and so this closure) only after the future says it is
    # done: the threads reach the buffer and the hasher through ``held``, emptied on the
    # way out, so a failed load frees the device as it returns.
    held: list[Any] = [dest, hashing]
    left = [0] * len(pieces)
    for piece, _start, _want in plan:
        left[piece] += 1
    lock = threading.Lock()
    counter = itertools.count()
    stop = threading.Event()
    errors: list[BaseException] = []

    def work(w: int) -> None:
        # Every event is made by the thread that uses it, with the device's context
        # current there: the calling thread's current device may be another one.
        mine: list[Any] = []
        try:
            k.make_current()
            events = [k.event() for _ in range(per)]
            mine += events
            used = [False] * per
            turn = 0
            while not stop.is_set():
                j = next(counter)
                if j >= len(plan):
                    return
                slot, ev = w * per + turn, events[turn]
                if used[turn]:
                    k.wait(ev)  # the slot's previous copy must be done before it is overwritten
                piece, start, want = plan[j]
                p = pieces[piece]
                n = _read_piece(files, piece, p, views[slot][:want], start)
                if n:
                    k.copy_to_device(base + p.dest + start, ptrs[slot], n, copy_stream)
                    k.record(ev, copy_stream)
                    used[turn] = True
                turn = (turn + 1) % per
                with lock:
                    p.got += n
                    p.short = p.short or n < want
                    left[piece] -= 1
                    last = left[piece] == 0
                    if last and not p.short and p.got == p.size:
                        mark = k.event()
                        mine.append(mark)
                        k.record(mark, copy_stream)
                        k.stream_wait(hash_handle, mark)
                        buf, hasher = held
                        hasher.hash(piece, buf[p.dest : p.dest + p.size], hash_stream)
                        del buf, hasher
                if last:
                    files.done(piece)
        except BaseException as exc:
            errors.append(exc)
            stop.set()
        finally:
            # Destroying an event whose work is queued is allowed: the driver releases it
            # once the work is done.
            for ev in mine:
                k.destroy(ev)

    pool, own = _readers(workers)
    futures: list[Future[None]] = []
    try:
        for w in range(workers):
            futures.append(pool.submit(work, w))
        wait(futures)
    finally:
        # Also when this thread itself was interrupted: no worker may still read into a
        # slot or through a descriptor once this returns.
        stop.set()
        wait(futures)
        if own:
            pool.shutdown(wait=True)
        stream.synchronize()  # no copy may still read a slot
        held.clear()
    if errors:
        raise errors[0]


def _device_hashing(pieces: Sequence[Piece], device: torch.device) -> Any:
    """A :class:`~.cuda_blake3.DeviceBlake3` for the BLAKE3 pieces (marked ``on_device``), or None.

    None when the kernels cannot run here; every piece is then hashed on the host.
    """
    from . import cuda_blake3

    k = cuda_blake3.kernels(device)
    if k is None:
        return None
    for p in pieces:
        # An empty piece has no copy to wait for; the host hashes it (nothing to read).
        p.on_device = (
            p.size > 0 and p.hasher is not None and getattr(p.hasher, "algorithm", None) == "blake3"
        )
    if not any(p.on_device for p in pieces):
        return None
    return cuda_blake3.DeviceBlake3(k, device, [p.size for p in pieces])
