"""A CUDA weight stream that needs none of the loading process's interpreter lock.

The in-process ring (:func:`.stream._stream_unordered`) reads and queues every
chunk from Python threads: each ``preadv`` and each driver call gives up the GIL
and must take it back, and while the main thread rebuilds an ExportedProgram's
graph in Python, taking it back waits up to a switch interval (5 ms). So the
graph and the stream could not overlap: run side by side, both slowed.

Here the stream runs outside this interpreter:

* The ring is shared memory (a ``memfd``, ``MAP_SHARED``): a page of flag words
  and :data:`SLOTS` slots of :data:`CHUNK` bytes, pinned and registered with the
  driver (``cuMemHostRegister``), kept for the process.
* A reader process (:mod:`.ring_reader`, standard library only, started once and
  kept) maps the same memory. For each chunk ``j`` it waits until slot
  ``j % SLOTS`` is free, ``preadv``-s the bytes into it and raises the slot's
  ``ready`` word to the chunk's generation ``j // SLOTS + 1``.
* This process queues the whole load on the device before returning, in a few
  milliseconds: for every chunk, ``cuStreamWaitValue32`` on its slot's ready
  word, the copy to its place in the device buffer, ``cuStreamWriteValue32`` of
  the slot's free word; for every blob, its BLAKE3 (:mod:`.cuda_blake3`) behind
  its last copy. The device paces the copies by the reader's words; the
  reader paces its reads by the device's.

While it runs, this process is free: :class:`~.stream.CudaLoad` returns at
once, and ``result()`` waits for the reader's report, then for the device, and
checks every digest before a tensor is handed out, as the in-process ring does.
Short reads come back as byte counts (reported as truncation), failed reads as
the ``OSError`` they raised. A job stopped early (an error here, a failed read)
raises every ready word past any generation, so nothing queued waits for ever;
the load is then discarded. A reader process that dies or answers out of turn
is killed and replaced on the next load; the load it broke is streamed again
in-process. Where any of it is missing (no ``memfd``, no stream memory
operations in the driver, no interpreter to start, ``MVAULT_DETACHED=0``), loads
use the in-process ring.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import json
import mmap
import os
import platform
import select
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import ring_reader as rr

__all__ = ["CHUNK", "SLOTS", "STREAMS", "THREADS", "DetachedJob", "HelperLost", "start", "wanted"]

#: Slots of the shared ring and bytes per slot: 256 MiB pinned, as the in-process ring.
SLOTS = 32
CHUNK = 8 * 1024 * 1024
#: Reader threads in the reader process (reads in flight).
THREADS = 16
#: Copy streams the chunks are spread over (slot ``s`` always on stream ``s % STREAMS``):
#: a chunk that lands late holds up only the copies queued behind it on its stream.
STREAMS = 2

# cuMemHostRegister flags; cuStreamWaitValue32 / cuStreamWriteValue32 flags.
_PORTABLE, _DEVICEMAP = 0x01, 0x02
_WAIT_GEQ = 0x0
_WRITE_DEFAULT = 0x0

_lock = threading.Lock()
_rings: dict[int, _Ring | None] = {}
_reasons: dict[int, str] = {}


class HelperLost(RuntimeError):
    """The reader process died or answered out of turn: the load must be streamed again."""


#: Whether CUDA loads use the reader process unless ``MVAULT_DETACHED`` says otherwise
#: (``1`` on, ``0`` off).
DEFAULT_ON = False


def wanted() -> bool:
    """Whether CUDA loads may use the reader process (``MVAULT_DETACHED``, else :data:`DEFAULT_ON`)."""
    value = os.environ.get("MVAULT_DETACHED")
    if value is None:
        return DEFAULT_ON
    return value != "0"


def unavailable_reason(index: int) -> str | None:
    """Why device ``index`` streams in-process (None when it does not, or was never tried)."""
    return _reasons.get(index)


def _forget_in_child() -> None:
    # A forked child shares the reader's pipes and the registered memory with its parent:
    # it must use neither, and makes its own ring if it loads onto a GPU.
    global _lock
    for ring in _rings.values():
        if ring is None:
            continue
        proc, ring.proc = ring.proc, None  # the parent's reader: never to be killed from here
        for f in (proc.stdin, proc.stdout) if proc is not None else ():
            with contextlib.suppress(OSError, ValueError):
                if f is not None:
                    f.close()  # this process's copy of the pipe; the parent keeps its own
        with contextlib.suppress(OSError):
            if ring.fd >= 0:
                os.close(ring.fd)
        ring.fd = -1
        ring.registered = False  # the registration is the parent's
    _rings.clear()
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def _close_readers() -> None:
    """At exit: end each reader process (end of its input) rather than leave it to the pipe."""
    for ring in list(_rings.values()):
        proc = ring.proc if ring is not None else None
        if proc is None or proc.poll() is not None:
            continue
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()


atexit.register(_close_readers)


class _Ring:
    """The shared pinned ring of one device and its reader process; one job at a time.

    Everything below runs with :attr:`busy` held, save :meth:`close` at exit.
    """

    def __init__(self, k: Any, slots: int = SLOTS, chunk: int = CHUNK) -> None:
        self.k = k
        self.slots = slots
        self.chunk = chunk
        self.size = rr.FLAGS_BYTES + slots * chunk
        self.busy = threading.Lock()
        self.jobs = itertools.count(1)
        self.proc: subprocess.Popen[bytes] | None = None
        #: The reader may still be in an unanswered job: replace it before the next one.
        self.stale = False
        #: Loads in a row whose reader was lost (past :data:`_MAX_LOSSES`, the ring goes).
        self.losses = 0
        self.registered = False
        self.mm: mmap.mmap | None = None
        self.fd = os.memfd_create("modelvault-ring", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.size)
            self.mm = mmap.mmap(
                self.fd, self.size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
            self._anchor: Any = ctypes.c_char.from_buffer(self.mm)  # holds the mapping's address
            self.base = ctypes.addressof(self._anchor)
            k.make_current()
            k.host_register(self.base, self.size, _PORTABLE | _DEVICEMAP)
            self.registered = True
            self.dptr = k.host_device_pointer(self.base)
            self.flags = memoryview(self.mm)[: rr.FLAGS_BYTES].cast("I")
            self._spawn()
        except BaseException:
            self.close()
            raise

    def _spawn(self) -> None:
        script = Path(rr.__file__)
        if not sys.executable or not script.is_file():
            raise OSError("no interpreter or reader script to start a reader process with")
        # Its own session: a Ctrl-C at the terminal interrupts the load, not the reader
        # (which ends at end of input, or when this process is gone).
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(script), str(self.fd), str(self.size),
             str(self.slots), str(self.chunk), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            pass_fds=(self.fd,),
            start_new_session=True,
        )  # fmt: skip
        self.stale = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready_reader(self) -> None:
        """A reader process in no job: the one there, or a new one."""
        if self.stale or not self.alive():
            self.stop_reader()
            self._spawn()

    def stop_reader(self) -> None:
        """Kill the reader and wait for it: after this, nothing but this process writes the words."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def send(self, job: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job).encode() + b"\n")
        self.proc.stdin.flush()

    def receive(self, job_id: int, streams: Sequence[Any]) -> dict[str, Any]:
        """The reader's reply to ``job_id``; meanwhile, every :data:`_LOOK_S`, the copy
        streams are asked for errors (a device that failed frees no slot, so the reader
        would never answer)."""
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        fd = proc.stdout.fileno()
        while not select.select([fd], [], [], _LOOK_S)[0]:
            for copies in streams:
                copies.query()  # raises the device's error, if it has one
        line = proc.stdout.readline()
        if not line:
            raise HelperLost(f"the reader process ended (exit status {proc.poll()})")
        try:
            reply = json.loads(line)
        except ValueError:
            reply = line[:80]
        if not isinstance(reply, dict) or reply.get("job") != job_id:
            raise HelperLost(f"the reader process answered job {reply!r:.80}, not {job_id}")
        return reply

    def slot_address(self, s: int) -> int:
        return self.base + rr.FLAGS_BYTES + s * self.chunk

    def word(self, index: int) -> int:
        """The device address of flag word ``index``."""
        return int(self.dptr) + 4 * index

    def close(self) -> None:
        """Stop the reader, unregister and unmap the ring (a ring given up, or at exit)."""
        self.stop_reader()
        if self.registered:
            self.registered = False
            with contextlib.suppress(Exception):
                self.k.make_current()
                self.k.host_unregister(self.base)
        if self.mm is not None:
            with contextlib.suppress(Exception):
                if hasattr(self, "flags"):
                    self.flags.release()
                del self._anchor
                self.mm.close()
            self.mm = None
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


#: Seconds between looks at the copy streams while the reader's reply is awaited.
_LOOK_S = 0.5
#: Loads in a row that lose their reader before a device gives the reader process up.
_MAX_LOSSES = 3


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _ring(device: torch.device, k: Any) -> _Ring | None:
    index = _index(device)
    with _lock:
        if index in _rings:
            return _rings[index]
        if platform.machine().lower() not in ("x86_64", "amd64"):
            # The reader raises a slot's ready word right after its read: on x86 stores
            # stay in order, so the bytes are visible first; elsewhere they may not be.
            ring = None
            _reasons[index] = (
                f"the reader process needs an x86-64 host (this is {platform.machine()})"
            )
        else:
            try:
                ring = _Ring(k)
            except (OSError, RuntimeError, AttributeError, ValueError) as exc:
                _reasons[index] = f"{type(exc).__name__}: {exc}"[:300]
                ring = None
        _rings[index] = ring
        return ring


def _give_up(index: int, ring: _Ring, why: str) -> None:
    """This device streams in-process from now on (the ring's lock is held by the caller)."""
    with _lock:
        if _rings.get(index) is ring:
            _rings[index] = None
        _reasons[index] = why[:300]
    ring.close()


class DetachedJob:
    """One load's stream through the shared ring: queued by :func:`start`, ended by :meth:`finish`."""

    def __init__(
        self,
        ring: _Ring,
        pieces: Sequence[Any],
        dest: torch.Tensor,
        hashing: Any,
        hash_stream: Any,
    ) -> None:
        self.ring = ring
        self.pieces = pieces
        self.dest = dest
        self.hashing = hashing
        self.hash_stream = hash_stream
        self.id = next(ring.jobs)
        self.events: list[Any] = []
        self.streams: list[Any] = []
        self.sent = False
        self.answered = False
        self.done = False

    def start(self) -> None:
        ring, k = self.ring, self.ring.k
        device = self.dest.device
        chunk = ring.chunk
        plan = rr.plan([p.size for p in self.pieces], chunk)
        ring.flags[:] = memoryview(bytes(rr.FLAGS_BYTES)).cast("I")  # every word back to 0
        job = {
            "job": self.id,
            "pieces": [[str(p.path), p.offset, p.size] for p in self.pieces],
            "chunk": chunk,
            "threads": THREADS,
        }
        ring.send(job)
        self.sent = True
        # From here the reader fills slots; the device must see every chunk queued, or
        # the reader waits for a free word no copy will write (an error stops it).
        current = torch.cuda.current_stream(device)
        n_streams = max(1, min(STREAMS, ring.slots))
        for _ in range(n_streams):
            copies = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
            copies.wait_stream(current)  # ``dest`` may be memory the current stream just freed
            self.streams.append(copies)
        handles = [int(c.cuda_stream) for c in self.streams]
        base = int(self.dest.data_ptr())
        k.make_current()
        last_on: list[dict[int, int]] = [{} for _ in self.pieces]
        for j, (piece, _start, _n) in enumerate(plan):
            last_on[piece][(j % ring.slots) % n_streams] = j
        marks: dict[int, list[int]] = {}  # chunk -> pieces whose last chunk on its stream it is
        for piece, ends in enumerate(last_on):
            for j in ends.values():
                marks.setdefault(j, []).append(piece)
        waits: list[list[Any]] = [[] for _ in self.pieces]
        wait_value, write_value, copy = k.wait_value32, k.write_value32, k.copy_to_device
        hash_handle = int(self.hash_stream.cuda_stream)
        for j, (piece, start, n) in enumerate(plan):
            s = j % ring.slots
            gen = j // ring.slots + 1
            stream = handles[s % n_streams]
            wait_value(stream, ring.word(rr.READY + s), gen, _WAIT_GEQ)
            copy(base + self.pieces[piece].dest + start, ring.slot_address(s), n, stream)
            write_value(stream, ring.word(rr.FREE + s), gen, _WRITE_DEFAULT)
            for q in marks.get(j, ()):
                ev = k.event()
                self.events.append(ev)
                k.record(ev, stream)
                waits[q].append(ev)
                if len(waits[q]) == len(last_on[q]):
                    p = self.pieces[q]
                    for e in waits[q]:
                        k.stream_wait(hash_handle, e)
                    self.hashing.hash(q, self.dest[p.dest : p.dest + p.size], self.hash_stream)

    def cancel(self) -> None:
        """Ask the reader to stop (it answers once its reads in flight are done)."""
        self.ring.flags[rr.CANCEL] = self.id

    def _abandon(self) -> None:
        """Stop the reader for good, then release every queued wait and let the device drain.

        Only once the reader is dead is the release final: a reader thread mid-read
        would otherwise lower a ready word again after it.
        """
        ring = self.ring
        self.cancel()
        ring.stop_reader()
        ring.stale = True
        rr.release(ring.flags, ring.slots)
        for copies in self.streams:
            copies.synchronize()

    def finish(self) -> None:
        """Wait for the reader and the device; set each piece's ``got``, ``short`` and ``digest``.

        Raises the reader's ``OSError``, the device's error, or :class:`HelperLost`
        (the caller streams again).
        """
        ring = self.ring
        try:
            if not self.sent:
                self._abandon()
                raise HelperLost("the job never reached the reader process")
            try:
                reply = ring.receive(self.id, self.streams)
                self.answered = True
            except BaseException as exc:
                if isinstance(exc, HelperLost):
                    ring.losses += 1
                self._abandon()
                raise
            for copies in self.streams:
                copies.synchronize()
            error = reply.get("error")
            got = reply.get("got") or []
            for i, p in enumerate(self.pieces):
                p.got = int(got[i]) if i < len(got) else 0
                p.short = p.got < p.size
            if error:
                errno_, message, filename = [*list(error), None, None, None][:3]
                if errno_:
                    raise OSError(int(errno_), str(message), filename)
                ring.losses += 1
                raise HelperLost(f"the reader process failed: {str(message)[:300]}")
            self.hash_stream.synchronize()
            for p, digest in zip(self.pieces, self.hashing.digests(self.hash_stream)):
                if p.on_device and p.got == p.size:
                    p.digest = digest
            current = torch.cuda.current_stream(self.dest.device)
            for copies in self.streams:
                current.wait_stream(copies)
            ring.losses = 0  # a load the reader served ends a run of losses
        finally:
            self.close()

    def close(self) -> None:
        """Let go of the ring (never raises: a reader left mid-job is replaced at the next start)."""
        if self.done:
            return
        self.done = True
        try:
            if not self.answered:
                self.ring.stale = True
            with contextlib.suppress(Exception):
                if self.hash_stream is not None:
                    self.hash_stream.synchronize()
            for ev in self.events:
                with contextlib.suppress(Exception):
                    self.ring.k.destroy(ev)
            self.events.clear()
        finally:
            self.ring.busy.release()


def start(
    pieces: Sequence[Any], dest: torch.Tensor, hashing: Any, hash_stream: Any
) -> DetachedJob | None:
    """Queue ``pieces`` (local files, every one hashed on the device) into ``dest``.

    None where the reader process cannot be used (see the module doc), or while
    another load of this process holds the device's ring.
    """
    if not wanted() or hashing is None:
        return None
    index = _index(dest.device)
    ring = _ring(dest.device, hashing.kernels)
    if ring is None or not ring.busy.acquire(blocking=False):
        return None
    if _rings.get(index) is not ring:  # given up by another load meanwhile
        ring.busy.release()
        return None
    if ring.losses >= _MAX_LOSSES:
        _give_up(index, ring, f"the reader process was lost by {ring.losses} loads in a row")
        ring.busy.release()
        return None
    try:
        ring.ready_reader()
    except OSError as exc:
        _give_up(index, ring, f"the reader process could not be started: {exc}")
        ring.busy.release()
        return None
    job = DetachedJob(ring, pieces, dest, hashing, hash_stream)
    try:
        job.start()
    except BaseException as exc:
        try:
            job._abandon()
        finally:
            job.close()
        if isinstance(exc, RuntimeError):
            # The driver refused a call (no stream memory operations, say): this device
            # streams in-process from now on.
            with ring.busy:
                _give_up(index, ring, f"{type(exc).__name__}: {exc}")
            return None
        if isinstance(exc, OSError):  # the reader was gone before it got the job
            ring.losses += 1
            return None
        raise
    return job
