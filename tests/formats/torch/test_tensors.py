from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

from modelvault.errors import IntegrityError, PayloadMismatchError, UnknownFormatError
from modelvault.formats.registry import detect, detect_path
from modelvault.formats.tensors import TensorsPlugin

from .helpers import corrupt_blob, write

plugin = TensorsPlugin()


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    w = torch.randn(8, 4)
    return {
        "w": w,
        "tied": w,
        "b16": torch.randn(3, 5).to(torch.bfloat16),
        "h": torch.randn(7).half(),
        "i8": torch.randint(-128, 127, (6,), dtype=torch.int8),
        "i64": torch.arange(10),
        "flag": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.empty(0, 3),
        "transposed": torch.randn(4, 6).t(),
        "channels_last": torch.randn(1, 3, 4, 4).to(memory_format=torch.channels_last),
    }


def test_round_trip(tmp_path: Path) -> None:
    sd = _state()
    source = write(plugin.pack(sd), tmp_path)
    loaded = plugin.load(source)
    assert list(loaded) == list(sd)
    for k, v in sd.items():
        assert loaded[k].dtype == v.dtype, k
        assert torch.equal(loaded[k], v), k
    assert source.manifest.tensor_aliases == {"tied": "w"}
    assert loaded["tied"] is loaded["w"]


def test_manifest_fields(tmp_path: Path) -> None:
    m = write(plugin.pack(_state(), metadata={"team": "vision"}), tmp_path).manifest
    assert m.plugin == "tensors"
    assert m.payload["layout"] == 1
    assert m.frameworks["torch"] == torch.__version__
    assert m.target["built_on"] == "cpu"
    assert {"name": "w", "dtype": "float32", "shape": [8, 4]} in m.signature["outputs"]
    assert m.metadata["team"] == "vision"
    assert m.metadata["parameters"] > 0
    assert m.metadata["parameter_bytes"] > 0


def test_safetensors_in_and_out(tmp_path: Path) -> None:
    sd = {k: v.contiguous() for k, v in _state().items() if k != "tied"}
    path = tmp_path / "in.safetensors"
    safetensors.torch.save_file(sd, str(path))
    assert plugin.can_pack_path(path)
    assert isinstance(detect_path(path), TensorsPlugin)
    assert isinstance(detect(sd), TensorsPlugin)
    source = write(plugin.pack(path), tmp_path / "c")
    out = plugin.export_native(source, tmp_path / f"out{plugin.native_suffix(source)}")
    back = safetensors.torch.load_file(str(out))
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert torch.equal(back[k], v), k


def test_export_native_with_tied_tensors(tmp_path: Path) -> None:
    source = write(plugin.pack(_state()), tmp_path)
    out = plugin.export_native(source, tmp_path / "x.safetensors")
    back = safetensors.torch.load_file(str(out))
    assert torch.equal(back["tied"], back["w"])
    again = write(plugin.pack(out), tmp_path / "again")
    # Stored once; which of the two names is the alias follows the file's order.
    assert again.manifest.tensor_aliases in ({"tied": "w"}, {"w": "tied"})


def test_damaged_section(tmp_path: Path) -> None:
    source = write(plugin.pack(_state()), tmp_path)
    corrupt_blob(source, 0, at=3)
    with pytest.raises(IntegrityError, match="damaged"):
        plugin.load(source)


def test_truncated_section(tmp_path: Path) -> None:
    source = write(plugin.pack(_state()), tmp_path)
    path = source.locate(0).path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match="truncated"):
        plugin.load(source)


def test_order_disagreeing_with_tensors(tmp_path: Path) -> None:
    draft = plugin.pack(_state())
    draft.payload["order"] = ["w"]
    with pytest.raises(PayloadMismatchError, match="name list disagrees"):
        plugin.load(write(draft, tmp_path))


def test_pack_refusals(tmp_path: Path) -> None:
    with pytest.raises(
        PayloadMismatchError, match=r"checkpoint\['x'\]\['f'\] is a builtins.object"
    ):
        plugin.pack({"x": {"f": object()}})
    with pytest.raises(PayloadMismatchError, match="no data to store"):
        plugin.pack({"m": torch.empty(3, device="meta")})
    with pytest.raises(PayloadMismatchError, match="cannot be stored"):
        plugin.pack({"c": torch.zeros(2, dtype=torch.complex32)})
    with pytest.raises(UnknownFormatError, match=r"a dict or a \.safetensors path"):
        plugin.pack([torch.ones(1)])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 32)
    assert not plugin.can_pack_path(bad)
    with pytest.raises(UnknownFormatError, match=r"not a \.safetensors file"):
        plugin.pack(bad)
    lying = tmp_path / "lying.safetensors"
    lying.write_bytes((10).to_bytes(8, "little") + b'{"a": 1}  ')
    with pytest.raises(PayloadMismatchError, match=r"not a readable \.safetensors"):
        plugin.pack(lying)
    assert not plugin.can_pack([torch.ones(1)])
