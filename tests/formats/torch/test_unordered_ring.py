"""The unordered CUDA ring's bookkeeping, on the host: every byte lands, each blob is
hashed once after its last chunk, errors stop every reader and nothing is left behind.

The GPU tests (``tests/gpu/test_cuda_blake3.py``) run the real thing on a device.
Here the driver calls are played by the host (``HostDriver``: a copy is a
``memmove`` into a CPU buffer, events only count), so CI, which has no GPU,
still runs the threads, the counters and the error paths of ``_stream_unordered``.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Any

import blake3
import pytest

torch = pytest.importorskip("torch")

from modelvault.formats._torch import stream  # noqa: E402
from modelvault.formats._torch.stream import Piece, _chunks, _Files  # noqa: E402


class HostDriver:
    """The calls ``_stream_unordered`` makes on ``_Kernels``, done on the host."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: set[int] = set()
        self.made = 0
        self.current: set[int] = set()  # threads that made the context current

    def make_current(self) -> None:
        self.current.add(threading.get_ident())

    def event(self) -> int:
        assert threading.get_ident() in self.current, "an event made without the context"
        with self.lock:
            self.made += 1
            self.live.add(self.made)
            return self.made

    def destroy(self, ev: int) -> None:
        with self.lock:
            self.live.remove(ev)

    def record(self, ev: int, stream: int) -> None:
        assert ev in self.live

    def wait(self, ev: int) -> None:
        assert ev in self.live

    def stream_wait(self, stream: int, ev: int) -> None:
        assert ev in self.live

    def copy_to_device(self, dst: int, src: int, n: int, stream: int) -> None:
        assert threading.get_ident() in self.current
        ctypes.memmove(dst, src, n)


class HostHashing:
    def __init__(self) -> None:
        self.kernels = HostDriver()
        self.digests: dict[int, str] = {}
        self.calls: list[int] = []

    def hash(self, k: int, data: Any, stream: Any) -> None:
        self.calls.append(k)
        self.digests[k] = "blake3:" + blake3.blake3(data.numpy().tobytes()).hexdigest()


class Stream:
    cuda_stream = 0
    synced = 0

    def synchronize(self) -> None:
        self.synced += 1


def _setup(tmp_path: Path, sizes: list[int], chunk: int, ring: int) -> dict[str, Any]:
    pieces, blobs, pos = [], [], 0
    for i, size in enumerate(sizes):
        data = os.urandom(size)
        path = tmp_path / f"b{i}"
        path.write_bytes(b"x" * 7 + data)  # the blob starts at an offset in its file
        pieces.append(Piece(path, 7, size, pos, None, where=str(path), on_device=size > 0))
        blobs.append(data)
        pos = -(-(pos + size) // 4096) * 4096
    dest = torch.zeros(max(pos, 1), dtype=torch.uint8)
    plan = _chunks(pieces, chunk)
    slots = [torch.empty(chunk, dtype=torch.uint8) for _ in range(2 * ring)]
    views = [memoryview(s.numpy()) for s in slots]
    return {
        "pieces": pieces,
        "blobs": blobs,
        "dest": dest,
        "plan": plan,
        "files": _Files(pieces),
        "slots": slots,
        "views": views,
        "stream": Stream(),
        "hashing": HostHashing(),
        "hash_stream": Stream(),
    }


def _run(s: dict[str, Any]) -> None:
    try:
        stream._stream_unordered(
            s["pieces"], s["dest"], s["plan"], s["files"], s["slots"], s["views"],
            s["stream"], s["hashing"], s["hash_stream"],
        )  # fmt: skip
    finally:
        s["files"].close_all()


@pytest.mark.parametrize(("chunk", "ring"), [(4096, 1), (4096, 3), (3 * 4096, 8), (65536, 40)])
def test_every_byte_lands_and_each_blob_is_hashed_once_after_its_last_chunk(
    chunk: int, ring: int, tmp_path: Path
) -> None:
    sizes = [1, 4095, 4096, 4097, 70_001, 0, 3 * 65536 + 5, 12_288]
    s = _setup(tmp_path, sizes, chunk, ring)
    _run(s)
    h = s["hashing"]
    for k, (p, data) in enumerate(zip(s["pieces"], s["blobs"])):
        assert p.got == p.size and not p.short
        assert bytes(s["dest"][p.dest : p.dest + p.size].numpy()) == data, k
        if p.size:
            assert h.digests[k] == "blake3:" + blake3.blake3(data).hexdigest()
    assert sorted(h.calls) == [k for k, size in enumerate(sizes) if size], "one hash per blob"
    assert h.kernels.live == set(), "every event destroyed"
    assert s["stream"].synced == 1


def test_a_truncated_blob_is_not_hashed_and_counts_short(tmp_path: Path) -> None:
    s = _setup(tmp_path, [50_000, 20_000], 4096, 4)
    os.truncate(s["pieces"][0].path, 7 + 30_001)
    _run(s)
    p0, p1 = s["pieces"]
    assert p0.short and p0.got == 30_001
    assert p1.got == p1.size and not p1.short
    assert s["hashing"].calls == [1], "a blob read short is never hashed"
    assert s["hashing"].kernels.live == set()


def test_a_failing_read_stops_every_reader_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = _setup(tmp_path, [200_000] * 4, 4096, 4)
    real = stream._read_piece
    calls = []

    def failing(files: Any, k: int, p: Any, view: Any, start: int) -> int:
        calls.append(k)
        if len(calls) == 10:
            raise OSError(5, "Input/output error")
        return int(real(files, k, p, view, start))

    monkeypatch.setattr(stream, "_read_piece", failing)
    with pytest.raises(OSError, match="Input/output error"):
        _run(s)
    assert len(calls) < 20, "the other readers went on"
    assert s["hashing"].kernels.live == set()
    assert s["stream"].synced == 1


def test_a_driver_error_on_a_reader_thread_fails_the_load(tmp_path: Path) -> None:
    s = _setup(tmp_path, [100_000] * 3, 4096, 3)
    drv = s["hashing"].kernels

    def broken(*a: Any) -> None:
        raise RuntimeError("cuMemcpyHtoDAsync failed: CUDA driver error 1 (invalid argument)")

    drv.copy_to_device = broken
    with pytest.raises(RuntimeError, match="cuMemcpyHtoDAsync failed"):
        _run(s)
    assert drv.live == set()
    assert s["hashing"].calls == []
