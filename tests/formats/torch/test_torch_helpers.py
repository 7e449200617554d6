from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modelvault.errors import (
    DeviceOutOfMemoryError,
    DeviceUnavailableError,
    InvalidDeviceError,
    PayloadMismatchError,
)
from modelvault.formats._torch import dtypes
from modelvault.formats._torch.device import check_free_memory, human_bytes, resolve_device
from modelvault.formats._torch.stream import load_tensors
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
    corrupt_blob(source, 0, at=4096 * 3 + 1)
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


@pytest.mark.parametrize(("chunk", "ring"), [(4096, 1), (4096, 3), (3 * 4096, 2), (1 << 20, 8)])
def test_ring_bookkeeping(chunk: int, ring: int, tmp_path: Path) -> None:
    """The staging ring used for GPU loads, driven with a CPU destination."""
    import os

    from modelvault.digest import digest_bytes, new_hasher
    from modelvault.formats._torch.stream import stream_through_ring

    data = os.urandom(5 * 4096 + 123)
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 10 + data)
    dest = torch.empty(len(data), dtype=torch.uint8)
    h = new_hasher()
    fd = os.open(path, os.O_RDONLY)
    try:
        got = stream_through_ring(fd, 10, len(data), dest, h, chunk, ring)
        assert got == len(data)
        assert bytes(dest.numpy()) == data
        assert h.digest_str() == digest_bytes(data)
        short = torch.empty(len(data) + 50, dtype=torch.uint8)
        assert stream_through_ring(fd, 10, len(data) + 50, short, None, chunk, ring) == len(data)
    finally:
        os.close(fd)
