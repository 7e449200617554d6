"""BLAKE3 computed on the GPU: the same digests as the reference library, and a load that uses them.

Run on a machine with a GPU: ``pytest -m gpu tests/gpu/test_cuda_blake3.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest

torch = pytest.importorskip("torch")

from modelvault.errors import IntegrityError  # noqa: E402
from modelvault.formats._torch import cuda_blake3, stream  # noqa: E402
from modelvault.formats._torch.stream import load_tensors  # noqa: E402
from modelvault.formats.tensors import TensorsPlugin  # noqa: E402
from tests.formats.torch.helpers import corrupt_blob, write  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device (torch.cuda.is_available() is False)",
    ),
]

KIB = 1024
MIB = 1024 * 1024
# Around every edge of the tree: blocks (64 B), chunks (1 KiB), CUDA blocks (256 KiB), powers of two.
SIZES = [
    1, 63, 64, 65, 1023, 1024, 1025, 2048, 2049, 3077,
    256 * KIB - 1, 256 * KIB, 256 * KIB + 1, 512 * KIB, 512 * KIB + 1, 3 * 256 * KIB + 5,
    MIB, MIB + 17, 5 * MIB + 3, 16 * MIB, 16 * MIB + 7 * KIB + 3, 64 * MIB + 1, 300 * MIB + 4097,
]  # fmt: skip


def _device_digests(blobs: list[bytes]) -> list[str | None]:
    dev = torch.device("cuda:0")
    k = cuda_blake3.kernels(dev)
    assert k is not None, cuda_blake3.unavailable_reason(dev)
    hasher = cuda_blake3.DeviceBlake3(k, dev, [len(b) for b in blobs])
    s = torch.cuda.Stream(dev)
    on_gpu = [torch.frombuffer(bytearray(b), dtype=torch.uint8).to(dev) for b in blobs]
    torch.cuda.synchronize()
    for i, t in enumerate(on_gpu):
        hasher.hash(i, t, s)
    return hasher.digests(s)


def test_kernels_load_on_this_machine() -> None:
    dev = torch.device("cuda:0")
    assert cuda_blake3.kernels(dev) is not None, cuda_blake3.unavailable_reason(dev)


def test_digests_match_the_reference_at_every_edge() -> None:
    rng = torch.Generator().manual_seed(7)
    blobs = [
        bytes(torch.randint(0, 256, (n,), dtype=torch.uint8, generator=rng).numpy()) for n in SIZES
    ]
    got = _device_digests(blobs)
    want = [f"blake3:{blake3.blake3(b).hexdigest()}" for b in blobs]
    bad = [n for n, g, w in zip(SIZES, got, want) if g != w]
    assert not bad, f"sizes whose GPU digest differs: {bad}"


def test_each_input_hashed_alone_and_one_byte_changes_the_digest() -> None:
    data = bytearray(os.urandom(5 * MIB + 123))
    first = _device_digests([bytes(data)])[0]
    for at in (0, 1023, 1024, 256 * KIB, len(data) - 1):
        data[at] ^= 1
        changed = _device_digests([bytes(data)])[0]
        data[at] ^= 1
        assert changed != first, at
        assert (
            changed
            == f"blake3:{blake3.blake3(bytes(data[:at]) + bytes([data[at] ^ 1]) + bytes(data[at + 1 :])).hexdigest()}"
        )


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = cuda_blake3.DeviceBlake3.hash

    def hash_(self, k, data, s):  # type: ignore[no-untyped-def]
        calls.append(k)
        return original(self, k, data, s)

    monkeypatch.setattr(cuda_blake3.DeviceBlake3, "hash", hash_)
    return calls


def test_a_cuda_load_hashes_on_the_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = _counting(monkeypatch)
    torch.manual_seed(3)
    sd = {f"t{i}": torch.randn(20_000 * (i + 1)) for i in range(12)}
    sd["empty"] = torch.empty(0)
    source = write(TensorsPlugin().pack(sd), tmp_path)
    out = load_tensors(source, torch.device("cuda:0"))
    for k, v in sd.items():
        assert torch.equal(out[k].cpu(), v), k
    assert calls, "the load hashed nothing on the device"


def test_host_hashing_when_turned_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(cuda_blake3, "_loaded", {})
    monkeypatch.setenv("MVAULT_GPU_HASH", "0")
    calls = _counting(monkeypatch)
    sd = {"a": torch.randn(300_000), "b": torch.arange(1000)}
    source = write(TensorsPlugin().pack(sd), tmp_path)
    out = load_tensors(source, torch.device("cuda:0"))
    assert torch.equal(out["a"].cpu(), sd["a"]) and torch.equal(out["b"].cpu(), sd["b"])
    assert not calls
    assert cuda_blake3.unavailable_reason(torch.device("cuda:0")) == "MVAULT_GPU_HASH=0"


@pytest.mark.parametrize("reader", ["1", "0"], ids=["reader-process", "in-process"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_damaged_byte_is_refused_by_the_device_hash(
    where: str, reader: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Through the reader process (``_torch/detached.py``) or the in-process ring: refused,
    nothing left on the device, and the next load lands."""
    monkeypatch.setenv("MVAULT_DETACHED", reader)
    dev = torch.device("cuda:0")
    sd = {"a": torch.randn(6 * MIB // 4 + 5), "b": torch.randn(1000)}
    source = write(TensorsPlugin().pack(sd), tmp_path)
    size = source.manifest.blobs[0].size
    corrupt_blob(source, 0, at={"first": 0, "middle": size // 2, "last": size - 1}[where])
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(dev)
    with pytest.raises(IntegrityError, match="damaged"):
        load_tensors(source, dev)
    assert torch.cuda.memory_allocated(dev) == before
    sd2 = {"x": torch.randn(MIB)}
    out = load_tensors(write(TensorsPlugin().pack(sd2), tmp_path / "next"), dev)
    assert torch.equal(out["x"].cpu(), sd2["x"])


def test_ring_settings_with_device_hashing(tmp_path: Path) -> None:
    torch.manual_seed(5)
    sd = {f"t{i}": torch.randn(100_000 + 333 * i) for i in range(20)}
    source = write(TensorsPlugin().pack(sd), tmp_path)
    for chunk, ring in [(4096, 1), (4096 * 7, 3), (stream.CHUNK, 32)]:
        out = load_tensors(source, torch.device("cuda:0"), chunk=chunk, ring=ring)
        for k, v in sd.items():
            assert torch.equal(out[k].cpu(), v), (chunk, ring, k)


@pytest.mark.parametrize("unordered", [True, False], ids=["unordered", "in-order"])
@pytest.mark.parametrize(
    ("chunk", "ring"), [(4096, 1), (4096, 2), (4096 * 5, 3), (64 * KIB, 33), (4096 * 3, 70)]
)
def test_both_ring_orders_land_every_byte(
    unordered: bool, chunk: int, ring: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Many blobs of odd sizes, many chunks each: the same tensors whichever order the reads finish."""
    monkeypatch.setattr(stream, "UNORDERED", unordered)
    torch.manual_seed(11)
    sd = {f"t{i}": torch.randn(7_000 + 4_097 * i) for i in range(12)}
    sd["empty"] = torch.empty(0)
    source = write(TensorsPlugin().pack(sd), tmp_path)
    out = load_tensors(source, torch.device("cuda:0"), chunk=chunk, ring=ring)
    for k, v in sd.items():
        assert torch.equal(out[k].cpu(), v), (k, chunk, ring)


@pytest.mark.parametrize("unordered", [True, False], ids=["unordered", "in-order"])
def test_a_blob_truncated_mid_file_is_refused_and_frees_the_device(
    unordered: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(stream, "UNORDERED", unordered)
    dev = torch.device("cuda:0")
    sd = {"a": torch.randn(3 * MIB), "b": torch.randn(1000)}
    source = write(TensorsPlugin().pack(sd), tmp_path)
    loc = source.locate(0)
    size = source.manifest.blobs[0].size
    os.truncate(loc.path, loc.offset + size // 2 + 5)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(dev)
    with pytest.raises(IntegrityError, match="truncated") as err:
        load_tensors(source, dev, chunk=256 * KIB, ring=8)
    assert source.manifest.blobs[0].digest in str(err.value)
    assert f"{size // 2 + 5} of {size} bytes" in str(err.value)
    assert torch.cuda.memory_allocated(dev) == before


def test_a_read_that_fails_stops_the_other_readers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An error in one reader thread ends the load with that error, nothing left on the device."""
    dev = torch.device("cuda:0")
    sd = {f"t{i}": torch.randn(MIB) for i in range(6)}
    source = write(TensorsPlugin().pack(sd), tmp_path)
    real = stream._read_piece
    calls = []

    def failing(files, k, p, view, start):  # type: ignore[no-untyped-def]
        calls.append(k)
        if len(calls) == 9:
            raise OSError(5, "Input/output error")
        return real(files, k, p, view, start)

    monkeypatch.setattr(stream, "_read_piece", failing)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(dev)
    with pytest.raises(OSError, match="Input/output error"):
        load_tensors(source, dev, chunk=256 * KIB, ring=8)
    assert torch.cuda.memory_allocated(dev) == before
    assert len(calls) < 6 * 16, "the other readers went on after the failure"


def test_an_empty_blob_keeps_the_load_unordered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An empty tensor alone gets an empty blob; the other blobs still stream in any order."""
    used = []
    real = stream._stream_unordered

    def spy(*a, **k):  # type: ignore[no-untyped-def]
        used.append(True)
        return real(*a, **k)

    monkeypatch.setattr(stream, "_stream_unordered", spy)
    sd = {"a": torch.randn(3 * MIB), "e": torch.empty(0)}
    source = write(TensorsPlugin().pack(sd), tmp_path)
    assert 0 in [b.size for b in source.manifest.blobs]
    out = load_tensors(source, torch.device("cuda:0"), chunk=256 * KIB, ring=4)
    assert used == [True]
    assert torch.equal(out["a"].cpu(), sd["a"]) and out["e"].numel() == 0
    assert out["e"].device.type == "cuda"


@pytest.mark.parametrize("way", ["detached", "graph-first", "overlapped"])
def test_an_exported_program_streams_beside_its_graph_only_where_nothing_contends(
    way: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Through the reader process the bytes move before the graph is parsed; in process, by
    default, only once the graph is checked, so a graph refused never streams a byte. Every
    way gives the same module, and a refused graph leaves nothing on the device."""
    from modelvault.formats import exported_program as epmod
    from modelvault.formats._torch import detached

    monkeypatch.setenv("MVAULT_DETACHED", "1" if way == "detached" else "0")
    monkeypatch.setattr(epmod, "OVERLAP_ON_DEVICE", way == "overlapped")
    events: list[str] = []
    real_init, real_ring = stream.CudaLoad.__init__, stream.stream_through_ring
    real_job, real_skeleton = detached.DetachedJob.start, epmod.ExportedProgramPlugin._skeleton

    def init(self, *a, **k):  # type: ignore[no-untyped-def]
        events.append("begin")
        real_init(self, *a, **k)

    def ring(*a, **k):  # type: ignore[no-untyped-def]
        events.append("bytes")
        return real_ring(*a, **k)

    def job(self, *a, **k):  # type: ignore[no-untyped-def]
        events.append("bytes")
        return real_job(self, *a, **k)

    def skeleton(self, *a, **k):  # type: ignore[no-untyped-def]
        events.append("graph")
        return real_skeleton(self, *a, **k)

    monkeypatch.setattr(stream.CudaLoad, "__init__", init)
    monkeypatch.setattr(stream, "stream_through_ring", ring)
    monkeypatch.setattr(detached.DetachedJob, "start", job)
    monkeypatch.setattr(epmod.ExportedProgramPlugin, "_skeleton", skeleton)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    x = torch.randn(4, 64)
    source = write(epmod.ExportedProgramPlugin().pack(torch.export.export(model, (x,))), tmp_path)
    ep = epmod.ExportedProgramPlugin().load(source, device="cuda")
    if way == "overlapped":  # a worker thread streams: either may start first
        assert events[0] == "begin" and sorted(events[1:]) == ["bytes", "graph"]
    else:
        assert events == (
            ["begin", "bytes", "graph"] if way == "detached" else ["begin", "graph", "bytes"]
        )
    out = ep.module()(x.cuda())
    assert torch.allclose(out.cpu(), model(x), atol=1e-5)

    events.clear()

    def refused(self, *a, **k):  # type: ignore[no-untyped-def]
        events.append("graph")
        raise ValueError("a graph refused")

    monkeypatch.setattr(epmod.ExportedProgramPlugin, "_skeleton", refused)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with pytest.raises(ValueError, match="a graph refused"):
        epmod.ExportedProgramPlugin().load(source, device="cuda")
    if way == "graph-first":
        assert events == ["begin", "graph"]
    else:
        assert events[0] == "begin" and "graph" in events
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before
