"""Tensor-level content addressing through real pushes: versions, formats, old containers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from modelvault import Vault
from modelvault.formats._torch.stream import load_tensors
from modelvault.formats.container import DirectorySource
from modelvault.formats.tensors import TensorsPlugin

from .helpers import replace_section, write


class Net(torch.nn.Module):
    """Convolutions with BatchNorm (buffers, an int64 counter), a head, and a
    non-persistent buffer that an ExportedProgram keeps and a state dict drops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 64, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(64)
        self.conv2 = torch.nn.Conv2d(64, 64, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(64)
        self.fc = torch.nn.Linear(64, 300)
        self.register_buffer("scale", torch.full((300,), 0.5), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3))) * self.scale


def _net() -> Net:
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():  # as trained: no two norms alike
                t.copy_(torch.rand_like(t) + (0.5 if "running_var" in name else 0.0))
    return net


def _vault(tmp_path: Path) -> Vault:
    return Vault(registry=f"sqlite:///{tmp_path}/reg.db", store=str(tmp_path / "store"))


def _tensor_blobs(vault: Vault, digest: str) -> set[str]:
    from modelvault.loader import read_manifest

    m, _ = read_manifest(vault.store, digest)
    return {m.blobs[e.blob].digest for e in m.tensors}


def _stored_tensor_bytes(vault: Vault, digests: list[str]) -> int:
    from modelvault.loader import read_manifest

    seen: dict[str, int] = {}
    for d in digests:
        m, _ = read_manifest(vault.store, d)
        for e in m.tensors:
            ref = m.blobs[e.blob]
            seen[ref.digest] = ref.size
    return sum(seen.values())


def test_one_model_in_three_formats_stores_its_weights_once(tmp_path: Path) -> None:
    net = _net()
    x = torch.randn(1, 3, 8, 8)
    weights = sum(t.nbytes for t in net.state_dict().values())
    vault = _vault(tmp_path)
    pushed = [
        vault.push(torch.export.export(net, (x,)), "net:1.0.0"),
        vault.push(torch.jit.trace(net, x), "net:1.0.0", variant=True),
        vault.push(dict(net.state_dict()), "net:1.0.0", format="tensors", variant=True),
    ]
    # The ExportedProgram names tensors differently, orders parameters first and
    # keeps the non-persistent buffer; the other two find every tensor blob there.
    ep, ts, sd = (_tensor_blobs(vault, p.digest) for p in pushed)
    assert ts == ep and sd < ep
    assert pushed[2].bytes_uploaded == 0  # a state dict is nothing but tensors
    stored = _stored_tensor_bytes(vault, [p.digest for p in pushed])
    assert weights <= stored < 1.05 * (weights + net.scale.nbytes)
    out = vault.load("net@1.0.0", variant="tensors")
    assert all(torch.equal(out[k], v) for k, v in net.state_dict().items())


def test_a_version_with_one_tensor_changed_uploads_that_tensor(tmp_path: Path) -> None:
    torch.manual_seed(1)
    sd = {f"layer{i}.weight": torch.randn(256, 256) for i in range(10)}
    sd |= {f"layer{i}.bias": torch.randn(256) for i in range(10)}
    sd |= {f"norm{i}": torch.randn(256) for i in range(80)}  # enough small ones to pack
    vault = _vault(tmp_path)
    first = vault.push(sd, "m:1.0.0")
    v2 = dict(sd, **{"layer3.weight": torch.randn(256, 256)})
    second = vault.push(v2, "m:1.1.0")
    assert second.bytes_uploaded == sd["layer3.weight"].nbytes
    assert second.blobs_uploaded == 1
    assert second.blobs_skipped == first.blobs_uploaded - 1
    again = vault.load("m@1.1.0")
    assert all(torch.equal(again[k], v) for k, v in v2.items())


@pytest.mark.parametrize("mmap", [True, False])
def test_identical_tensors_load_as_separate_tensors(mmap: bool, tmp_path: Path) -> None:
    zeros = {"a.bias": torch.zeros(4096), "b.bias": torch.zeros(4096), "w": torch.ones(30000)}
    source = write(TensorsPlugin().pack(zeros), tmp_path)
    entries = {e.name: e for e in source.manifest.tensors}
    assert (entries["a.bias"].blob, entries["a.bias"].offset) == (entries["b.bias"].blob, 0)
    out = load_tensors(source, torch.device("cpu"), mmap=mmap)
    out["a.bias"].add_(1)  # stored once, but two tensors: one changes alone
    assert torch.equal(out["b.bias"], torch.zeros(4096))
    assert out["a.bias"].untyped_storage().data_ptr() != out["b.bias"].untyped_storage().data_ptr()


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize(("chunk", "ring"), [(4096, 1), (1 << 20, 8)])
def test_a_1_0_container_still_loads(mmap: bool, chunk: int, ring: int, tmp_path: Path) -> None:
    """Every tensor in one section blob, as format 1.0 wrote it."""
    torch.manual_seed(2)
    sd = {f"t{i}": torch.randn(50 + 300 * i) for i in range(12)} | {"i": torch.arange(5)}
    draft = replace_section(TensorsPlugin().pack(sd), sd.items())
    draft.blobs = draft.blobs[:1]  # the one section; the 1.1 blobs it replaced are gone
    new = write(draft, tmp_path)
    old = DirectorySource(replace(new.manifest, format_version=(1, 0)), tmp_path)
    assert len(old.manifest.blobs) == 1 and old.manifest.format_version == (1, 0)
    out = load_tensors(old, torch.device("cpu"), mmap=mmap, chunk=chunk, ring=ring)
    assert all(torch.equal(out[k], v) for k, v in sd.items())
    assert list(TensorsPlugin().load(old, mmap=mmap)) == list(sd)


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs /proc")
def test_past_max_maps_a_cpu_load_reads_instead_of_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelvault.formats._torch import stream

    torch.manual_seed(3)
    sd = {f"w{i}": torch.randn(20000) for i in range(4)}
    source = write(TensorsPlugin().pack(sd), tmp_path)

    def mapped() -> int:
        return Path("/proc/self/maps").read_text().count(str(tmp_path))

    out = load_tensors(source, torch.device("cpu"), mmap=True)
    assert mapped() == len(source.manifest.blobs) == 4  # one mapping per blob
    del out
    monkeypatch.setattr(stream, "MAX_MAPS", 3)
    out = load_tensors(source, torch.device("cpu"), mmap=True)
    assert mapped() == 0
    assert all(torch.equal(out[k], v) for k, v in sd.items())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_many_blobs_stream_into_one_cuda_buffer(tmp_path: Path) -> None:
    torch.manual_seed(4)
    sd = {f"w{i}": torch.randn(40000 + i) for i in range(6)}  # blobs of their own
    sd |= {f"n{i}": torch.randn(100 + i) for i in range(150)}  # packs
    sd |= {"z0": torch.zeros(5000), "z1": torch.zeros(5000)}  # one range, two tensors
    source = write(TensorsPlugin().pack(sd), tmp_path)
    assert 10 < len(source.manifest.blobs) < 60
    out = load_tensors(source, torch.device("cuda:0"), chunk=64 * 1024, ring=3)
    assert all(torch.equal(out[k].cpu(), v) for k, v in sd.items())
    out["z0"].add_(1)
    assert torch.equal(out["z1"].cpu(), sd["z1"])
