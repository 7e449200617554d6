"""The reader process of the detached GPU stream (``_torch/ring_reader.py``), without a GPU.

The real process is started as a load starts it (``python -I -S ring_reader.py``,
the ring a ``memfd`` passed to it). A thread of the test takes the device's
part exactly as the queued stream operations do: for each chunk in order, wait
until its slot's ready word reaches the chunk's generation, copy the slot out,
write the slot's free word. The bytes that come out must be the files' bytes.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from modelvault.formats._torch import ring_reader as rr

SLOTS = 8
CHUNK = 64 * 1024
TIMEOUT = 30.0


class Ring:
    """A shared ring and its reader process, with a stand-in for the device's side."""

    def __init__(self, slots: int = SLOTS, chunk: int = CHUNK) -> None:
        self.slots, self.chunk = slots, chunk
        self.size = rr.FLAGS_BYTES + slots * chunk
        self.fd = os.memfd_create("test-ring", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.size)
        self.mm = mmap.mmap(self.fd, self.size, flags=mmap.MAP_SHARED)
        self.flags = memoryview(self.mm)[: rr.FLAGS_BYTES].cast("I")
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", rr.__file__, str(self.fd), str(self.size),
             str(slots), str(chunk), str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(self.fd,),
        )  # fmt: skip
        self.jobs = 0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        self.flags.release()
        self.mm.close()
        os.close(self.fd)

    def send(
        self, pieces: list[tuple[str, int, int]], chunk: int | None = None, **extra: object
    ) -> int:
        self.jobs += 1
        job = {"job": self.jobs, "pieces": pieces, "chunk": chunk or self.chunk, "threads": 4}
        job.update(extra)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job).encode() + b"\n")
        self.proc.stdin.flush()
        return self.jobs

    def reply(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the reader process ended without answering"
        return json.loads(line)

    def device(self, sizes: list[int], chunk: int | None = None, stop_after: int | None = None):
        """The device's queued work, on a thread: returns (thread, output buffers, state).

        As a load does, the words go back to zero before the device's work is queued
        and the job is sent.
        """
        self.flags[:] = memoryview(bytes(rr.FLAGS_BYTES)).cast("I")
        chunk = chunk or self.chunk
        plan = rr.plan(sizes, chunk)
        out = [bytearray(n) for n in sizes]
        state = {"released": False, "copied": 0}

        def run() -> None:
            deadline = time.monotonic() + TIMEOUT
            for j, (piece, start, n) in enumerate(plan):
                if stop_after is not None and j >= stop_after:
                    return
                s, gen = j % self.slots, j // self.slots + 1
                while ((self.flags[rr.READY + s] - gen) & 0xFFFFFFFF) >= 0x80000000:
                    assert time.monotonic() < deadline, f"chunk {j} never became ready"
                    time.sleep(1e-4)
                if self.flags[rr.READY + s] == rr.RELEASE:
                    state["released"] = True
                at = rr.FLAGS_BYTES + s * self.chunk
                out[piece][start : start + n] = self.mm[at : at + n]
                state["copied"] += 1
                self.flags[rr.FREE + s] = gen

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t, out, state


@pytest.fixture
def ring():
    r = Ring()
    yield r
    r.close()


def _file(tmp_path: Path, name: str, size: int, seed: int = 0) -> tuple[Path, bytes]:
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    data = bytes((b + seed) % 256 for b in data[:4096]) + data[4096:]
    p = tmp_path / name
    p.write_bytes(data)
    return p, data


def test_plan_covers_every_byte_once_without_spanning_pieces():
    sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK]
    plan = rr.plan(sizes, CHUNK)
    for k, size in enumerate(sizes):
        reads = [(s, n) for p, s, n in plan if p == k]
        assert sum(n for _s, n in reads) == size
        assert all(0 < n <= CHUNK for _s, n in reads)
        assert [s for s, _n in reads] == list(range(0, size, CHUNK))
    assert [p for p, _s, _n in plan] == sorted(p for p, _s, _n in plan)


def test_the_bytes_through_the_ring_are_the_files(ring, tmp_path):
    a, da = _file(tmp_path, "a", 5 * CHUNK + 123)
    b, _db = _file(tmp_path, "b", 0)
    c, dc = _file(tmp_path, "c", 40 * CHUNK + 7, seed=3)  # five times round the ring
    # A blob inside a bigger file (a bundle): only its range is read.
    whole, dw = _file(tmp_path, "bundle", 9000, seed=5)
    pieces = [(str(a), 0, len(da)), (str(b), 0, 0), (str(c), 0, len(dc)), (str(whole), 4096, 4000)]
    sizes = [n for _p, _o, n in pieces]
    t, out, state = ring.device(sizes)
    job = ring.send(pieces)
    reply = ring.reply()
    t.join(TIMEOUT)
    assert reply == {"job": job, "got": sizes, "error": None}
    assert bytes(out[0]) == da and bytes(out[1]) == b"" and bytes(out[2]) == dc
    assert bytes(out[3]) == dw[4096:8096]
    assert not state["released"]
    # The process stays for the next job, whose words start again from zero.
    t, out, _state = ring.device([len(da)])
    job = ring.send([(str(a), 0, len(da))])
    assert ring.reply() == {"job": job, "got": [len(da)], "error": None}
    t.join(TIMEOUT)
    assert bytes(out[0]) == da


def test_a_short_file_is_counted_not_padded(ring, tmp_path):
    a, da = _file(tmp_path, "a", 3 * CHUNK)
    claimed = 4 * CHUNK + 10  # the manifest says more than the file holds
    t, _out, _state = ring.device([claimed])
    job = ring.send([(str(a), 0, claimed)])
    reply = ring.reply()
    t.join(TIMEOUT)
    assert reply["job"] == job and reply["error"] is None
    assert reply["got"] == [len(da)]


def test_a_missing_file_stops_the_job_and_releases_every_slot(ring, tmp_path):
    a, da = _file(tmp_path, "a", 20 * CHUNK)
    pieces = [(str(a), 0, len(da)), (str(tmp_path / "gone"), 0, 5 * CHUNK)]
    t, _out, state = ring.device([n for _p, _o, n in pieces])
    job = ring.send(pieces)
    reply = ring.reply()
    t.join(TIMEOUT)
    assert not t.is_alive(), "a copy queued on the device would wait for ever"
    assert reply["job"] == job
    code, message, filename = reply["error"]
    assert code == errno.ENOENT and filename == str(tmp_path / "gone") and message
    assert all(ring.flags[rr.READY + s] == rr.RELEASE for s in range(SLOTS))
    assert state["released"]


def test_cancel_stops_a_job_the_device_is_slow_to_take(ring, tmp_path):
    a, da = _file(tmp_path, "a", 40 * CHUNK)
    # The device takes three chunks and stalls (a load whose graph failed): the
    # reader waits for free slots until the loading process cancels.
    t, _out, _state = ring.device([len(da)], stop_after=3)
    job = ring.send([(str(a), 0, len(da))])
    t.join(TIMEOUT)
    time.sleep(0.05)
    assert ring.proc.poll() is None
    ring.flags[rr.CANCEL] = job
    reply = ring.reply()
    assert reply["job"] == job and reply["error"] is None
    assert reply["got"][0] < len(da)
    assert all(ring.flags[rr.READY + s] == rr.RELEASE for s in range(SLOTS))


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        b'{"job": 3}\n',
        b'{"job": 4, "pieces": [["x", 0, 1]], "chunk": 999999999}\n',  # bigger than a slot
        b'{"job": 5, "pieces": [["x", 0]], "chunk": 4096}\n',
        b'{"job": 6, "pieces": "nope", "chunk": 4096}\n',
        b"[1, 2, 3]\n",
    ],
)
def test_a_job_it_cannot_start_is_answered_and_releases(ring, tmp_path, line):
    assert ring.proc.stdin is not None
    ring.proc.stdin.write(line)
    ring.proc.stdin.flush()
    reply = ring.reply()
    assert reply["error"] and reply["got"] == []
    assert all(ring.flags[rr.READY + s] == rr.RELEASE for s in range(SLOTS))
    # and the process still serves the next job
    a, da = _file(tmp_path, "a", 2 * CHUNK)
    t, out, _state = ring.device([len(da)])
    job = ring.send([(str(a), 0, len(da))])
    assert ring.reply() == {"job": job, "got": [len(da)], "error": None}
    t.join(TIMEOUT)
    assert bytes(out[0]) == da


@pytest.mark.parametrize(
    "argv",
    [
        ["1"],
        ["x", "1", "1", "1", "1"],
        [None, "100", "8", str(CHUNK), "PARENT"],  # too small for its slots
        [None, None, "0", str(CHUNK), "PARENT"],  # no slots
        [None, None, "8", "0", "PARENT"],  # empty slots
        [None, None, "8", str(CHUNK), "1"],  # a parent that is not its parent
    ],
)
def test_a_bad_ring_is_refused_at_start(argv):
    fd = os.memfd_create("bad-ring", os.MFD_CLOEXEC)
    try:
        size = rr.FLAGS_BYTES + SLOTS * CHUNK
        os.ftruncate(fd, size)
        args = [
            str(fd) if a is None and i == 0 else str(size) if a is None else a
            for i, a in enumerate(argv)
        ]
        args = [str(os.getpid()) if a == "PARENT" else a for a in args]
        proc = subprocess.run(
            [sys.executable, "-I", "-S", rr.__file__, *args],
            input=b"", capture_output=True, pass_fds=(fd,), timeout=TIMEOUT,
        )  # fmt: skip
        assert proc.returncode != 0
    finally:
        os.close(fd)


def test_end_of_input_ends_the_process(ring):
    assert ring.proc.stdin is not None
    ring.proc.stdin.close()
    assert ring.proc.wait(TIMEOUT) == 0


def test_the_reader_leaves_when_the_loading_process_is_gone(tmp_path):
    """A loading process killed mid-load: its reader must not wait for the device for ever."""
    a, da = _file(tmp_path, "a", 40 * CHUNK)
    parent = f"""
import json, mmap, os, subprocess, sys
fd = os.memfd_create("r", os.MFD_CLOEXEC)
size = {rr.FLAGS_BYTES + SLOTS * CHUNK}
os.ftruncate(fd, size)
p = subprocess.Popen([sys.executable, "-I", "-S", {rr.__file__!r}, str(fd), str(size), "{SLOTS}", "{CHUNK}",
                      str(os.getpid())], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, pass_fds=(fd,))
job = {{"job": 1, "pieces": [[{str(a)!r}, 0, {len(da)}]], "chunk": {CHUNK}, "threads": 2}}
p.stdin.write(json.dumps(job).encode() + b"\\n"); p.stdin.flush()
print(p.pid, flush=True)
os.kill(os.getpid(), 9)  # mid-job: no device will ever free a slot
"""
    proc = subprocess.run([sys.executable, "-c", parent], capture_output=True, timeout=TIMEOUT)
    pid = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # a zombie reparented to us would still answer kill(0): look at its state
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    pytest.fail("the reader process outlived its loading process by 20 s")
