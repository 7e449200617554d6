from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modelvault.digest import digest_bytes, new_hasher
from modelvault.errors import (
    DeviceOutOfMemoryError,
    DeviceUnavailableError,
    InvalidDeviceError,
    PayloadMismatchError,
)
from modelvault.formats._torch import dtypes
from modelvault.formats._torch.device import check_free_memory, human_bytes, resolve_device
from modelvault.formats._torch.stream import Piece, _stream_cpu, load_tensors, stream_through_ring
from modelvault.formats.manifest import DTYPE_SIZES
from modelvault.formats.tensors import TensorsPlugin

from .helpers import write

SRC = Path(__file__).resolve().parents[3] / "src"


def test_import_modelvault_does_not_import_torch() -> None:
    code = (
        "import sys, modelvault, modelvault.formats.registry, modelvault.formats.container;"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": path})


def test_dtype_names_round_trip() -> None:
    for name in DTYPE_SIZES:
        if hasattr(torch, name):
            dt = dtypes.from_name(name)
            assert dtypes.to_name(dt) == name
            assert dtypes.itemsize(dt) == torch.empty(0, dtype=dt).element_size()
    with pytest.raises(PayloadMismatchError, match="complex32"):
        dtypes.to_name(torch.complex32)
    with pytest.raises(PayloadMismatchError, match="not available"):
        dtypes.from_name("float99")


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(" cpu ") == torch.device("cpu")
    for bad in ("gpu", "cuda:", "CUDA", "cuda:0:1", "mps", "cpu:3"):
        with pytest.raises(InvalidDeviceError, match="device"):
            resolve_device(bad)
    with pytest.raises(InvalidDeviceError, match="string"):
        resolve_device(0)
    if not torch.cuda.is_available():
        for want in ("cuda", "cuda:0", "cuda:7"):
            with pytest.raises(DeviceUnavailableError, match="no usable CUDA device"):
                resolve_device(want)


def test_check_free_memory_is_a_no_op_on_cpu() -> None:
    check_free_memory(torch.device("cpu"), 1 << 60)
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(12) == "12 B"
    assert issubclass(DeviceOutOfMemoryError, MemoryError)


@pytest.mark.parametrize(("chunk", "ring"), [(4096, 1), (4096 * 3, 2), (1 << 20, 4)])
def test_streamed_loading_with_small_chunks(chunk: int, ring: int, tmp_path: Path) -> None:
    torch.manual_seed(1)
    sd = {f"t{i}": torch.randn(100 + 37 * i) for i in range(20)}
    source = write(TensorsPlugin().pack(sd), tmp_path)
    out = load_tensors(source, torch.device("cpu"), chunk=chunk, ring=ring)
    for k, v in sd.items():
        assert torch.equal(out[k], v)


@pytest.mark.parametrize("mmap", [True, False])
def test_both_cpu_paths_verify(mmap: bool, tmp_path: Path) -> None:
    from modelvault.errors import IntegrityError

    from .helpers import corrupt_blob

    sd = {"a": torch.randn(3000), "b": torch.arange(7)}
    source = write(TensorsPlugin().pack(sd), tmp_path)
    out = load_tensors(source, torch.device("cpu"), mmap=mmap)
    assert torch.equal(out["a"], sd["a"])
    out["a"].add_(1)  # writes stay private: the file keeps its bytes
    again = load_tensors(source, torch.device("cpu"), mmap=mmap)
    assert torch.equal(again["a"], sd["a"])
    corrupt_blob(source, 0, at=4096 * 2 + 1)
    with pytest.raises(IntegrityError, match="damaged"):
        load_tensors(source, torch.device("cpu"), mmap=mmap)
    path = source.locate(0).path
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(IntegrityError, match="truncated"):
        load_tensors(source, torch.device("cpu"), mmap=mmap)


def test_tuning_options_pass_through_and_are_checked(tmp_path: Path) -> None:
    from modelvault.errors import InvalidArgumentError

    sd = {f"t{i}": torch.randn(5000) for i in range(5)}
    source = write(TensorsPlugin().pack(sd), tmp_path)
    out = TensorsPlugin().load(source, mmap=False, chunk=8192, ring=3)
    assert all(torch.equal(out[k], v) for k, v in sd.items())
    for bad in ({"chunk": 0}, {"chunk": 5000}, {"ring": -1}, {"ring": True}, {"chunk": "1"}):
        with pytest.raises(InvalidArgumentError, match=r"chunk|ring"):
            TensorsPlugin().load(source, **bad)


def _pieces(tmp_path: Path, sizes: list[int]) -> tuple[list[bytes], list[Piece], int]:
    """One file per size, each blob behind a few bytes of junk, placed 4096-aligned."""
    datas, pieces, pos = [], [], 0
    for k, size in enumerate(sizes):
        data = os.urandom(size)
        path = tmp_path / f"blob{k}"
        path.write_bytes(b"x" * (k + 3) + data)
        pos = -(-pos // 4096) * 4096
        pieces.append(Piece(path, k + 3, size, pos, new_hasher()))
        datas.append(data)
        pos += size
    return datas, pieces, pos


@pytest.mark.parametrize("path", ["ring", "direct"])
@pytest.mark.parametrize(("chunk", "ring"), [(4096, 1), (4096, 3), (3 * 4096, 2), (1 << 20, 8)])
def test_multi_blob_bookkeeping(path: str, chunk: int, ring: int, tmp_path: Path) -> None:
    """Many blobs into one buffer: the GPU ring driven with a CPU destination, and
    the CPU path. Each blob lands at its offset, is hashed alone, gaps stay untouched."""
    sizes = [5 * 4096 + 123, 0, 7, 4096, 3 * 4096 + 1, 1, 2 * 4096]
    datas, pieces, total = _pieces(tmp_path, sizes)
    dest = torch.full((total,), 0xAB, dtype=torch.uint8)
    (stream_through_ring if path == "ring" else _stream_cpu)(pieces, dest, chunk, ring)
    got = bytes(dest.numpy())
    covered = bytearray(b"\x01" * total)
    for data, p in zip(datas, pieces):
        assert got[p.dest : p.dest + p.size] == data
        assert p.got == p.size and not p.short
        assert p.hasher.digest_str() == digest_bytes(data)
        covered[p.dest : p.dest + p.size] = bytes(p.size)
    assert all(g == 0xAB for g, c in zip(got, covered) if c)  # nothing written between blobs


@pytest.mark.parametrize("path", ["ring", "direct"])
def test_multi_blob_short_file(path: str, tmp_path: Path) -> None:
    """A file shorter than its blob: that piece reports what it got; the others are whole."""
    datas, pieces, total = _pieces(tmp_path, [9000, 20000, 300])
    pieces[1].path.write_bytes(pieces[1].path.read_bytes()[:5000])
    dest = torch.zeros(total, dtype=torch.uint8)
    (stream_through_ring if path == "ring" else _stream_cpu)(pieces, dest, 4096, 3)
    assert pieces[1].short and pieces[1].got == 5000 - pieces[1].offset
    for k in (0, 2):
        assert pieces[k].got == pieces[k].size
        assert pieces[k].hasher.digest_str() == digest_bytes(datas[k])


class _FdCounter:
    """A hasher that records how many files this process has open as it is fed."""

    def __init__(self, seen: list[int]) -> None:
        self.seen = seen

    def update(self, data: memoryview) -> None:
        self.seen.append(len(os.listdir("/proc/self/fd")))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_thousands_of_blobs_keep_few_files_open(tmp_path: Path) -> None:
    sizes = [100 + k for k in range(600)]
    datas, pieces, total = _pieces(tmp_path, sizes)
    seen: list[int] = []
    for p in pieces:
        p.hasher = _FdCounter(seen)
    before = len(os.listdir("/proc/self/fd"))
    dest = torch.zeros(total, dtype=torch.uint8)
    _stream_cpu(pieces, dest, 4096, 4)
    assert max(seen) - before <= 4 + 1  # the reads in flight, not the 600 blobs
    assert len(os.listdir("/proc/self/fd")) == before
    assert all(bytes(dest[p.dest : p.dest + p.size].numpy()) == d for d, p in zip(datas, pieces))
