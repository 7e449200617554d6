"""The reader process of a detached GPU weight stream (see :mod:`.detached`).

Standard library only: it runs as ``python -I -S ring_reader.py FD SIZE SLOTS CHUNK PARENT``,
with FD a ``memfd`` shared with the loading process, whose pid is PARENT. That memory is a page of
flag words followed by ``SLOTS`` slots of ``CHUNK`` bytes, pinned by the loading
process and registered with the CUDA driver, which has already queued, for
every chunk ``j`` of a job: wait until ``ready[j % SLOTS] >= j // SLOTS + 1``,
copy the slot to the device, write ``free[j % SLOTS] = j // SLOTS + 1``. This
process fills the slots: reader threads take chunks in file order, wait for
their slot's previous copy (its ``free`` word), ``preadv`` the bytes into it and
raise its ``ready`` word. No interpreter lock of the loading process is needed
for any of it, so a graph rebuilt there in Python runs beside the stream.

One job per line of JSON on stdin::

    {"job": 7, "pieces": [[path, offset, size], ...], "chunk": CHUNK, "threads": 16}

and one line of JSON on stdout when every read is done (or the job stopped)::

    {"job": 7, "got": [bytes read per piece], "error": null | [errno, message, path]}

A job stops early when the loading process writes its number into the cancel
word, or when a read fails; every ``ready`` word is then raised past any
generation, so no copy queued on the device waits for ever (the bytes copied
are garbage and the loading process discards the load). The process ends at end of
input, or when the loading process is gone (this process's parent is no longer PARENT).
"""

from __future__ import annotations

import json
import mmap
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

#: Bytes of flag words at the start of the shared memory, before slot 0.
FLAGS_BYTES = 65536
#: Most slots a ring may have (the words of each table below).
MAX_SLOTS = 4096
#: Word offsets: ``ready[s]`` (this process), ``free[s]`` (the device), the cancel word.
READY = 0
FREE = MAX_SLOTS
CANCEL = 2 * MAX_SLOTS
#: How long a reader sleeps between looks at a slot the device still copies from.
POLL_S = 2e-5
#: A ``ready`` value past every generation (the device compares cyclically, in 32 bits):
#: written to every slot when a job stops early, so no queued copy waits for ever.
RELEASE = 0x3FFFFFFF


def plan(sizes: Sequence[int], chunk: int) -> list[tuple[int, int, int]]:
    """``(piece, start, length)`` of every read: pieces in order, no read spans two."""
    out = []
    for k, size in enumerate(sizes):
        for start in range(0, size, chunk):
            out.append((k, start, min(chunk, size - start)))
    return out


def release(flags: memoryview, slots: int) -> None:
    """Raise every ``ready`` word past any generation: the device's queued copies all run."""
    for s in range(slots):
        flags[READY + s] = RELEASE


class _Job:
    def __init__(
        self,
        spec: dict[str, Any],
        mm: mmap.mmap,
        flags: memoryview,
        slots: int,
        chunk: int,
        parent: int,
    ) -> None:
        self.id = int(spec["job"])
        self.pieces = [(str(p), int(o), int(n)) for p, o, n in spec["pieces"]]
        self.chunk = int(spec["chunk"])
        if not 0 < self.chunk <= chunk:
            raise ValueError(f"chunk {self.chunk} does not fit a slot of {chunk} bytes")
        self.plan = plan([n for _p, _o, n in self.pieces], self.chunk)
        self.threads = max(1, min(int(spec.get("threads", 16)), len(self.plan) or 1))
        self.mm = mm
        self.view = memoryview(mm)
        self.flags = flags
        self.slots = slots
        self.slot_bytes = chunk
        self.got = [0] * len(self.pieces)
        self.left = [0] * len(self.pieces)
        for k, _s, _n in self.plan:
            self.left[k] += 1
        self.fds: dict[int, int] = {}
        self.lock = threading.Lock()
        self.next = 0
        self.stop = False
        self.error: list[Any] | None = None
        self.parent = parent

    def cancelled(self) -> bool:
        return self.stop or self.flags[CANCEL] == self.id

    def fd(self, k: int) -> int:
        with self.lock:
            if k not in self.fds:
                self.fds[k] = os.open(self.pieces[k][0], os.O_RDONLY | os.O_CLOEXEC)
            return self.fds[k]

    def done(self, k: int) -> None:
        with self.lock:
            self.left[k] -= 1
            fd = self.fds.pop(k, None) if self.left[k] == 0 else None
        if fd is not None:
            os.close(fd)

    def wait_free(self, s: int, gen: int) -> bool:
        """Wait until the device has copied slot ``s``'s generation ``gen``; False if stopped."""
        looks = 0
        while self.flags[FREE + s] < gen:
            if self.cancelled():
                return False
            looks += 1
            if looks % 4096 == 0 and os.getppid() != self.parent:
                self.stop = True  # the loading process is gone: nobody copies
                return False
            time.sleep(POLL_S)
        return True

    def read(self, j: int) -> None:
        k, start, want = self.plan[j]
        s = j % self.slots
        gen = j // self.slots + 1
        if not self.wait_free(s, gen - 1):
            return
        _path, offset, _size = self.pieces[k]
        at = FLAGS_BYTES + s * self.slot_bytes
        view = self.view[at : at + want]
        fd = self.fd(k)
        got = 0
        while got < want:
            n = os.preadv(fd, [view[got:]], offset + start + got)
            if n <= 0:
                break
            got += n
        view.release()
        with self.lock:
            self.got[k] += got
        self.done(k)
        self.flags[READY + s] = gen

    def work(self) -> None:
        try:
            while True:
                with self.lock:
                    j = self.next
                    self.next += 1
                if j >= len(self.plan) or self.cancelled():
                    return
                self.read(j)
        except OSError as exc:
            with self.lock:
                if self.error is None:
                    self.error = [exc.errno or 0, exc.strerror or str(exc), exc.filename]
            self.stop = True
        except BaseException as exc:  # anything else stops the job with its text
            with self.lock:
                if self.error is None:
                    self.error = [0, f"{type(exc).__name__}: {exc}", None]
            self.stop = True

    def run(self) -> dict[str, Any]:
        threads = [threading.Thread(target=self.work, daemon=True) for _ in range(self.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        if self.cancelled() or self.next < len(self.plan):
            # Stopped early: let every copy the device still waits for go (its bytes
            # are not used: the loading process discards the load).
            release(self.flags, self.slots)
        self.view.release()
        return {"job": self.id, "got": self.got, "error": self.error}


def main(argv: Sequence[str]) -> int:
    fd, size, slots, chunk, parent = (int(a) for a in argv[1:6])
    if not 0 < slots <= MAX_SLOTS or chunk <= 0 or size < FLAGS_BYTES + slots * chunk:
        print(f"bad ring: {slots} slots of {chunk} bytes in {size}", file=sys.stderr)
        return 2
    if os.getppid() != parent:
        return 3  # the loading process is already gone
    mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    os.close(fd)
    flags = memoryview(mm)[:FLAGS_BYTES].cast("I")
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            reply = _Job(json.loads(line), mm, flags, slots, chunk, parent).run()
        except Exception as exc:  # a job this process could not even start
            spec_id = -1
            try:
                spec_id = int(json.loads(line).get("job", -1))
            except Exception:
                pass
            release(flags, slots)
            reply = {"job": spec_id, "got": [], "error": [0, f"{type(exc).__name__}: {exc}", None]}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
