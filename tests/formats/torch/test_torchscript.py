from __future__ import annotations

import functools
import io
import zipfile
from pathlib import Path

import pytest
import torch

from modelvault.errors import (
    IntegrityError,
    InvalidArgumentError,
    PayloadMismatchError,
    UnknownFormatError,
)
from modelvault.formats.registry import detect, detect_path
from modelvault.formats.torchscript import TorchScriptPlugin, is_torchscript_archive

from .helpers import corrupt_blob, replace_blob, replace_section, write
from .torch_cases import MLP, Block, ConvBN, MixedDtypes, outputs_equal

plugin = TorchScriptPlugin()


@functools.cache
def _modules() -> list[tuple[str, torch.jit.ScriptModule, tuple[torch.Tensor, ...]]]:
    torch.manual_seed(0)
    mlp = MLP().eval()
    conv = ConvBN().eval()
    mixed = MixedDtypes().eval()
    block = Block().eval()
    x = torch.randn(4, 16)
    img = torch.randn(2, 3, 12, 12)
    tokens = torch.randint(0, 32, (2, 8))
    return [
        ("scripted_mlp", torch.jit.script(mlp), (x,)),
        ("traced_conv_bn", torch.jit.trace(conv, (img,)), (img,)),
        ("scripted_mixed", torch.jit.script(mixed), (torch.randn(2, 8),)),
        ("traced_block", torch.jit.trace(block, (tokens,), check_trace=False), (tokens,)),
    ]


@pytest.mark.parametrize("weights", ["section", "archive"])
@pytest.mark.parametrize(
    "index", range(4), ids=["scripted_mlp", "traced_conv_bn", "scripted_mixed", "traced_block"]
)
def test_round_trip(index: int, weights: str, tmp_path: Path) -> None:
    _name, module, inputs = _modules()[index]
    draft = plugin.pack(module, weights=weights, extra_files={"config.json": '{"a": 1}'})
    source = write(draft, tmp_path)
    assert source.manifest.payload["weights"] == weights
    extra: dict[str, bytes] = {}
    loaded = plugin.load(source, extra_files=extra)
    assert isinstance(loaded, torch.jit.ScriptModule)
    assert outputs_equal(module(*inputs), loaded(*inputs))
    assert extra == {"config.json": b'{"a": 1}'}
    for (n1, p1), (n2, p2) in zip(module.named_parameters(), loaded.named_parameters()):
        assert n1 == n2
        assert torch.equal(p1, p2)
        assert p2.requires_grad == p1.requires_grad


def test_section_keeps_weights_out_of_the_archive(tmp_path: Path) -> None:
    module = torch.jit.script(MLP(width=256).eval())
    m = write(plugin.pack(module), tmp_path).manifest
    (archive,) = [b for b in m.blobs if b.role == "archive"]
    assert archive.size < 64 * 1024 < m.metadata["tensor_bytes"]
    assert m.metadata["parameters"] == sum(p.numel() for p in module.parameters())
    assert m.signature["inputs"] == [{"name": "x", "type": "Tensor"}]


def test_tied_weights_stay_tied(tmp_path: Path) -> None:
    module = torch.jit.script(Block().eval())
    source = write(plugin.pack(module), tmp_path)
    assert source.manifest.tensor_aliases == {"head.weight": "embed.weight"}
    loaded = plugin.load(source)
    assert loaded.head.weight.data_ptr() == loaded.embed.weight.data_ptr()


def test_signature_from_example_inputs(tmp_path: Path) -> None:
    module = torch.jit.script(MLP().eval())
    m = write(plugin.pack(module, example_inputs=(torch.randn(3, 16),)), tmp_path).manifest
    assert m.signature["inputs"] == [{"name": "x", "dtype": "float32", "shape": [3, 16]}]
    assert m.signature["outputs"] == [{"name": "output0", "dtype": "float32", "shape": [3, 16]}]


def test_pack_from_archive_path_and_export_native(tmp_path: Path) -> None:
    module = torch.jit.script(ConvBN().eval())
    path = tmp_path / "model.pt"
    torch.jit.save(module, str(path), _extra_files={"note.txt": "hi"})
    assert plugin.can_pack_path(path)
    assert is_torchscript_archive(path)
    assert isinstance(detect_path(path), TorchScriptPlugin)
    assert isinstance(detect(module), TorchScriptPlugin)
    source = write(plugin.pack(path), tmp_path / "c")
    assert source.manifest.payload["extra_files"] == ["note.txt"]
    out = plugin.export_native(source, tmp_path / f"out{plugin.native_suffix(source)}")
    extra = {"note.txt": ""}
    again = torch.jit.load(str(out), _extra_files=extra)
    img = torch.randn(1, 3, 12, 12)
    assert outputs_equal(module(img), again(img))
    assert extra["note.txt"] == b"hi"


# -- bad input -----------------------------------------------------------------


def _tensors(module: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    out = dict(module.named_parameters(remove_duplicate=False))
    out.update(dict(module.named_buffers(remove_duplicate=False)))
    return out


def test_blob_that_is_not_torchscript(tmp_path: Path) -> None:
    module = torch.jit.script(MLP().eval())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/readme.txt", "hello")
    draft = replace_blob(plugin.pack(module), "archive", buf.getvalue())
    with pytest.raises(PayloadMismatchError, match="is not a TorchScript archive"):
        plugin.load(write(draft, tmp_path))


def test_blob_that_looks_like_torchscript_but_is_not(tmp_path: Path) -> None:
    module = torch.jit.script(MLP().eval())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", b"garbage")
        z.writestr("archive/constants.pkl", b"garbage")
    draft = replace_blob(plugin.pack(module, weights="archive"), "archive", buf.getvalue())
    with pytest.raises(PayloadMismatchError, match="could not be loaded as TorchScript"):
        plugin.load(write(draft, tmp_path))


def test_damaged_archive_is_never_loaded(tmp_path: Path) -> None:
    source = write(plugin.pack(torch.jit.script(MLP().eval()), weights="archive"), tmp_path)
    corrupt_blob(source, source.manifest.payload["archive"]["blob"], at=40)
    with pytest.raises(IntegrityError, match="damaged"):
        plugin.load(source)


def test_missing_and_extra_tensors_are_named(tmp_path: Path) -> None:
    module = torch.jit.script(MLP().eval())
    tensors = _tensors(module)
    tensors.pop("layers.0.0.bias")
    tensors["stowaway"] = torch.ones(1)
    source = write(replace_section(plugin.pack(module), tensors.items()), tmp_path)
    with pytest.raises(
        PayloadMismatchError,
        match=r"missing tensor.*layers\.0\.0\.bias.*unexpected tensor.*stowaway",
    ):
        plugin.load(source)


def test_wrong_shape_and_dtype_are_named(tmp_path: Path) -> None:
    module = torch.jit.script(MLP().eval())
    tensors = _tensors(module)
    tensors["layers.0.0.bias"] = torch.zeros(5)
    tensors["layers.1.0.weight"] = tensors["layers.1.0.weight"].double()
    source = write(replace_section(plugin.pack(module), tensors.items()), tmp_path)
    with pytest.raises(
        PayloadMismatchError,
        match=r"layers\.0\.0\.bias.*float32\[16\].*float32\[5\].*layers\.1\.0\.weight.*float32\[16, 16\].*float64",
    ):
        plugin.load(source)


def test_pack_refusals(tmp_path: Path) -> None:
    with pytest.raises(UnknownFormatError, match=r"ScriptModule, an nn\.Module"):
        plugin.pack([MLP()])
    with pytest.raises(InvalidArgumentError, match="weights"):
        plugin.pack(torch.jit.script(MLP()), weights="pickle")
    not_ts = tmp_path / "x.pt"
    torch.save({"a": torch.ones(1)}, str(not_ts))  # a zip, but a pickle archive
    assert not plugin.can_pack_path(not_ts)
    with pytest.raises(UnknownFormatError, match="not a TorchScript archive"):
        plugin.pack(not_ts)


def test_falls_back_to_the_archive_when_the_section_cannot_hold_a_weight(tmp_path: Path) -> None:
    class Complex32(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("z", torch.zeros(3, dtype=torch.complex32))
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) + self.z.real.float()

    module = torch.jit.script(Complex32().eval())
    source = write(plugin.pack(module), tmp_path)
    payload = source.manifest.payload
    assert payload["weights"] == "archive"
    assert "complex32" in payload["weights_reason"]
    assert not source.manifest.tensors
    x = torch.randn(2, 3)
    assert outputs_equal(module(x), plugin.load(source)(x))
    # The original module kept its own tensors.
    assert module.z.dtype == torch.complex32


@pytest.mark.parametrize("path", ["__class__", "forward", "layers.__dict__", "layers.0.0..weight"])
def test_payload_paths_must_name_submodule_tensors(path: str, tmp_path: Path) -> None:
    module = torch.jit.script(MLP().eval())
    draft = plugin.pack(module)
    tensors = _tensors(module)
    tensors[path] = torch.ones(1)
    draft.payload["tensors"][path] = {"parameter": False, "requires_grad": False}
    source = write(replace_section(draft, tensors.items()), tmp_path)
    with pytest.raises(PayloadMismatchError, match="weights disagree with the module"):
        plugin.load(source)
