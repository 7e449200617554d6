"""The detached GPU stream: a reader process fills a shared pinned ring, the device paces it.

Run on a machine with a GPU: ``pytest -m gpu tests/gpu/test_detached.py``. Every load
here is compared with the same load through the in-process ring
(``MVAULT_DETACHED=0``) or with the tensors written. A damaged byte through
either is in ``test_cuda_blake3.py``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from modelvault.errors import DeviceOutOfMemoryError, IntegrityError  # noqa: E402
from modelvault.formats._torch import detached  # noqa: E402
from modelvault.formats._torch.stream import BackgroundLoad, CudaLoad, load_tensors  # noqa: E402
from modelvault.formats.tensors import TensorsPlugin  # noqa: E402
from tests.formats.torch.helpers import write  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device (torch.cuda.is_available() is False)",
    ),
]

MIB = 1024 * 1024
DEV = "cuda:0"


@pytest.fixture(autouse=True)
def _detached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MVAULT_DETACHED", "1")  # whatever the default; tests that compare set "0"


def _same(out: dict, sd: dict) -> None:
    assert set(sd) <= set(out)
    for k, v in sd.items():
        assert out[k].device.type == "cuda", k
        assert torch.equal(out[k].cpu(), v), k


def _ring() -> detached._Ring:
    ring = detached._rings.get(0)
    assert ring is not None, detached.unavailable_reason(0)
    return ring


def _spy_jobs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    started: list[int] = []
    real = detached.DetachedJob.start

    def start(self):  # type: ignore[no-untyped-def]
        started.append(self.id)
        return real(self)

    monkeypatch.setattr(detached.DetachedJob, "start", start)
    return started


@pytest.fixture
def big(tmp_path: Path):
    """Many blobs around the ring's edges: more chunks than slots, odd sizes, empty, aliases."""
    torch.manual_seed(7)
    c = detached.CHUNK // 4  # floats per chunk
    sd = {
        "a": torch.randn(3 * detached.SLOTS * c + 17),  # round the ring three times
        "b": torch.randn(c),  # exactly one chunk
        "c": torch.randn(c + 1),
        "d": torch.randn(5),
        "e": torch.empty(0),
        "h": torch.arange(1000, dtype=torch.float16),
    }
    for i in range(40):  # more blobs than slots
        sd[f"s{i}"] = torch.randn(1000 + 97 * i)
    sd["tied"] = sd["a"]
    return sd, write(TensorsPlugin().pack(sd), tmp_path)


def test_a_load_streams_through_the_reader_process(big, monkeypatch: pytest.MonkeyPatch) -> None:
    sd, source = big
    started = _spy_jobs(monkeypatch)
    out = load_tensors(source, torch.device(DEV))
    assert started, f"not detached: {detached.unavailable_reason(0)}"
    _same(out, sd)
    assert out["tied"].data_ptr() == out["a"].data_ptr()
    assert _ring().alive()
    # again, many times: every job starts its words from zero
    for _ in range(3):
        _same(load_tensors(source, torch.device(DEV)), sd)
    assert len(started) == 4
    monkeypatch.setenv("MVAULT_DETACHED", "0")
    _same(load_tensors(source, torch.device(DEV)), sd)
    assert len(started) == 4


def test_background_load_is_detached_and_its_caller_is_free(big) -> None:
    sd, source = big
    loading = BackgroundLoad(source, torch.device(DEV), background=False)
    assert loading.detached
    # the caller's thread is not needed for the bytes to land
    _same(loading.result(), sd)


def test_a_truncated_blob_is_refused_with_its_byte_count(tmp_path: Path) -> None:
    dev = torch.device(DEV)
    sd = {"a": torch.randn(5 * detached.CHUNK // 4), "b": torch.randn(1000)}
    source = write(TensorsPlugin().pack(sd), tmp_path)
    loc = source.locate(0)
    size = source.manifest.blobs[0].size
    os.truncate(loc.path, loc.offset + size // 2 + 5)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(dev)
    with pytest.raises(IntegrityError, match="truncated") as err:
        load_tensors(source, dev)
    assert f"{size // 2 + 5} of {size} bytes" in str(err.value)
    assert torch.cuda.memory_allocated(dev) == before


def test_a_blob_file_gone_raises_what_the_in_process_ring_raises(
    tmp_path: Path, monkeypatch
) -> None:
    dev = torch.device(DEV)
    sd = {"a": torch.randn(MIB), "b": torch.randn(3 * MIB)}
    source = write(TensorsPlugin().pack(sd), tmp_path)
    errors = []
    for flag in ("1", "0"):
        monkeypatch.setenv("MVAULT_DETACHED", flag)
        loading = CudaLoad(source, dev)  # the files are found ...
        os.replace(source.locate(1).path, tmp_path / "away")  # ... and one goes before it is read
        try:
            with pytest.raises(OSError) as err:
                loading.result()
        finally:
            os.replace(tmp_path / "away", source.locate(1).path)
        errors.append((type(err.value), err.value.errno))
    assert errors[0] == errors[1]
    _same(load_tensors(source, dev), sd)


def test_a_reader_killed_mid_load_costs_a_second_pass_not_the_load(big) -> None:
    sd, source = big
    load_tensors(source, torch.device(DEV))  # the ring and its reader exist
    ring = _ring()
    old = ring.proc
    loading = CudaLoad(source, torch.device(DEV))
    assert loading.job is not None
    old.kill()
    _same(loading.result(), sd)  # streamed again in process
    assert ring.proc is not old and ring.alive()
    _same(load_tensors(source, torch.device(DEV)), sd)


def test_a_reader_gone_between_loads_is_replaced(big, monkeypatch: pytest.MonkeyPatch) -> None:
    sd, source = big
    load_tensors(source, torch.device(DEV))
    ring = _ring()
    ring.proc.kill()
    ring.proc.wait()
    started = _spy_jobs(monkeypatch)
    _same(load_tensors(source, torch.device(DEV)), sd)
    assert started and ring.alive()


def test_discard_stops_the_stream_and_frees_the_device(big) -> None:
    sd, source = big
    dev = torch.device(DEV)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(dev)
    for _ in range(3):
        loading = BackgroundLoad(source, dev, background=False)
        assert loading.detached
        loading.discard()
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated(dev) == before
    _same(load_tensors(source, dev), sd)  # and the ring serves the next load


def test_two_loads_at_once_both_land(big) -> None:
    """One holds the ring; the other streams in process meanwhile."""
    sd, source = big
    first = CudaLoad(source, torch.device(DEV))
    results: list[dict] = []
    t = threading.Thread(target=lambda: results.append(load_tensors(source, torch.device(DEV))))
    t.start()
    t.join(120)
    assert first.job is not None
    _same(first.result(), sd)
    _same(results[0], sd)


def test_out_of_memory_is_refused_before_anything_is_read(tmp_path: Path, monkeypatch) -> None:
    dev = torch.device(DEV)
    sd = {"a": torch.randn(MIB)}
    source = write(TensorsPlugin().pack(sd), tmp_path)
    started = _spy_jobs(monkeypatch)
    torch.cuda.empty_cache()  # nothing held in reserve: the driver's free memory is what counts
    allocated = torch.cuda.memory_allocated(dev)
    # The driver reports 1 KiB free: the load needs 4 MiB.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (1024, 80 * 1024**3))
    with pytest.raises(DeviceOutOfMemoryError, match="the weights need"):
        load_tensors(source, dev)
    assert not started
    assert torch.cuda.memory_allocated(dev) == allocated


def test_an_exported_program_and_torchscript_through_the_reader(
    tmp_path: Path, monkeypatch
) -> None:
    from modelvault.formats.exported_program import ExportedProgramPlugin
    from modelvault.formats.torchscript import TorchScriptPlugin

    started = _spy_jobs(monkeypatch)
    torch.manual_seed(2)
    model = torch.nn.Sequential(
        torch.nn.Linear(512, 1024),
        torch.nn.GELU(),
        torch.nn.LayerNorm(1024),
        torch.nn.Linear(1024, 16),
    ).eval()
    x = torch.randn(3, 512)
    want = model(x)
    ep_src = write(ExportedProgramPlugin().pack(torch.export.export(model, (x,))), tmp_path / "ep")
    ts_src = write(TorchScriptPlugin().pack(torch.jit.script(model)), tmp_path / "ts")
    ep = ExportedProgramPlugin().load(ep_src, device="cuda")
    ts = TorchScriptPlugin().load(ts_src, device="cuda")
    assert len(started) == 2
    assert torch.allclose(ep.module()(x.cuda()).cpu(), want, atol=1e-5)
    assert torch.allclose(ts(x.cuda()).cpu(), want, atol=1e-5)
