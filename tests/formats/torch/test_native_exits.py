"""What is pushed is what is pulled: native files open in plain torch, exactly.

The oracle is torch itself: ``torch.jit.load``, ``torch.export.load``,
``safetensors`` and ``torch.load`` open what modelvault wrote, and every
tensor's dtype, shape, strides and bytes are compared with the original.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from torch import nn

from modelvault.errors import (
    FormatError,
    IntegrityError,
    InvalidArgumentError,
    PayloadMismatchError,
)
from modelvault.formats.exported_program import ExportedProgramPlugin
from modelvault.formats.registry import detect
from modelvault.formats.tensors import TensorsPlugin
from modelvault.formats.torchscript import TorchScriptPlugin

from .helpers import corrupt_blob, write
from .torch_cases import MLP, ConvBN

ts = TorchScriptPlugin()
tensors_plugin = TensorsPlugin()
ep_plugin = ExportedProgramPlugin()

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*quantiz.*")

_DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint16,
    torch.uint32,
    torch.uint64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.float8_e4m3fnuz,
    torch.float8_e5m2fnuz,
]


def _random(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    # Random bytes, reinterpreted: every bit pattern of every dtype (NaNs included).
    n = int(torch.tensor(shape).prod()) if shape else 1
    raw = torch.randint(
        0, 256, (n * torch.empty((), dtype=dtype).element_size(),), dtype=torch.uint8
    )
    if dtype == torch.bool:
        raw = raw % 2
    return raw.view(dtype).reshape(shape)


class AllDtypes(nn.Module):
    """A buffer of every dtype torch has, 0-d ones, and a transposed one."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        for i, dt in enumerate(_DTYPES):
            self.register_buffer(f"b{i}", _random(dt, (3, 2)))
            self.register_buffer(f"s{i}", _random(dt, ()))
        self.register_buffer("transposed", torch.randn(5, 3).t())
        self.register_buffer(
            "channels_last", torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.lin(x)) + self.transposed.sum()


class SharedStorage(nn.Module):
    """Two buffers over one storage at different offsets, and a strided view."""

    def __init__(self) -> None:
        super().__init__()
        base = torch.arange(32, dtype=torch.float32)
        self.register_buffer("head", base[:8])
        self.register_buffer("tail", base[16:])
        self.register_buffer("every_other", base[::2])
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.head + self.tail[:8]


def _all_tensors(m: Any) -> dict[str, torch.Tensor]:
    out = dict(m.named_parameters(remove_duplicate=False))
    out.update(dict(m.named_buffers(remove_duplicate=False)))
    return out


def _raw(t: torch.Tensor) -> bytes:
    """The bytes a tensor's elements occupy, in storage order (strides honoured)."""
    t = t.detach()
    if t.numel() == 0:
        return b""
    span = t.as_strided((t.numel(),), (1,)) if _dense(t) else t.contiguous().reshape(-1)
    return bytes(span.view(torch.uint8).numpy().tobytes())


def _dense(t: torch.Tensor) -> bool:
    dims = sorted((s, n) for n, s in zip(t.shape, t.stride()) if n != 1)
    want = 1
    for s, n in dims:
        if s != want:
            return False
        want *= n
    return True


def assert_same_tensors(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert set(want) == set(got)
    for k, a in want.items():
        b = got[k]
        assert b.dtype == a.dtype, k
        assert tuple(b.shape) == tuple(a.shape), k
        assert tuple(b.stride()) == tuple(a.stride()), k
        assert _raw(b) == _raw(a), k


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- TorchScript -------------------------------------------------------------


def test_torchscript_every_dtype_live_module_pull_loads_in_torch(tmp_path: Path) -> None:
    module = torch.jit.script(AllDtypes().eval())
    source = write(ts.pack(module), tmp_path / "c")
    assert source.manifest.payload["weights"] == "section"
    out = ts.export_native(source, tmp_path / "out.pt")
    again = torch.jit.load(str(out))
    assert_same_tensors(_all_tensors(module), _all_tensors(again))
    assert again.bn.num_batches_tracked.dtype == torch.int64
    x = torch.randn(2, 4)
    assert torch.equal(module(x), again(x))


def test_torchscript_file_is_pulled_back_byte_identical_without_torch(tmp_path: Path) -> None:
    for name, module in (("dtypes", AllDtypes()), ("wide", MLP(width=256))):
        path = tmp_path / f"{name}.pt"
        torch.jit.save(torch.jit.script(module.eval()), str(path), _extra_files={"cfg": "1"})
        source = write(ts.pack(path), tmp_path / f"c-{name}")
        payload = source.manifest.payload
        assert payload["weights"] == "section"
        out = tmp_path / f"pulled-{name}.pt"
        _export_in_fresh_interpreter(tmp_path / f"c-{name}", out)
        assert _sha(out) == _sha(path)
    # The weights live once, in the section; the skeleton holds only the rest of the zip.
    skeleton = source.manifest.blobs[payload["native"]["skeleton"]].size
    assert skeleton < 64 * 1024 < 3 * 256 * 256 * 4 < path.stat().st_size


def _export_in_fresh_interpreter(container: Path, dest: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from modelvault.formats.container import DirectorySource\n"
        "from modelvault.formats.registry import get_plugin\n"
        f"s = DirectorySource.open({str(container)!r})\n"
        f"get_plugin(s.manifest.plugin).export_native(s, Path({str(dest)!r}))\n"
        "assert 'torch' not in sys.modules, 'the pull imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_torchscript_shared_storage_keeps_the_archive_and_pulls_exactly(tmp_path: Path) -> None:
    module = torch.jit.script(SharedStorage().eval())
    source = write(ts.pack(module), tmp_path / "c")
    payload = source.manifest.payload
    assert payload["weights"] == "archive"
    assert "storage" in payload["weights_reason"]
    again = torch.jit.load(str(ts.export_native(source, tmp_path / "out.pt")))
    assert_same_tensors(_all_tensors(module), _all_tensors(again))
    # Still one storage underneath, as torch wrote it.
    assert again.head.untyped_storage().data_ptr() == again.tail.untyped_storage().data_ptr()
    path = tmp_path / "shared.pt"
    torch.jit.save(module, str(path))
    out = ts.export_native(write(ts.pack(path), tmp_path / "c2"), tmp_path / "back.pt")
    assert _sha(out) == _sha(path)


def test_torchscript_quantized_module(tmp_path: Path) -> None:
    if "fbgemm" not in torch.backends.quantized.supported_engines and (
        "qnnpack" not in torch.backends.quantized.supported_engines
    ):
        pytest.skip("this torch build has no quantized engine")
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    q = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    module = torch.jit.script(q)
    source = write(ts.pack(module), tmp_path / "c")
    out = ts.export_native(source, tmp_path / "q.pt")
    again = torch.jit.load(str(out))
    x = torch.randn(3, 8)
    assert torch.equal(module(x), again(x))
    assert torch.equal(module(x), ts.load(source)(x))


def test_loaded_torchscript_resaves_with_plain_torch(tmp_path: Path) -> None:
    module = torch.jit.script(AllDtypes().eval())
    loaded = ts.load(write(ts.pack(module), tmp_path / "c"))
    buf = io.BytesIO()
    torch.jit.save(loaded, buf)
    buf.seek(0)
    again = torch.jit.load(buf)
    assert_same_tensors(_all_tensors(module), _all_tensors(again))


def test_loaded_tensors_own_their_storage_and_stay_zero_copy(tmp_path: Path) -> None:
    sd = {"a": torch.randn(64), "b": torch.arange(10), "c": torch.tensor(True)}
    source = write(tensors_plugin.pack(sd), tmp_path / "c")
    loaded = tensors_plugin.load(source)  # the CPU default maps the section copy-on-write
    for e in source.manifest.tensors:
        t = loaded[e.name]
        assert t.untyped_storage().nbytes() == e.nbytes
        assert t.storage_offset() == 0
    # Zero-copy: every tensor's bytes lie in a file mapping of its own blob, at its offset.
    maps = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                maps.append((lo, hi, int(parts[2], 16), parts[5]))
    for e in source.manifest.tensors:
        path = str(source.locate(e.blob).path)
        ptr = loaded[e.name].data_ptr()
        hit = [(lo, off) for lo, hi, off, name in maps if name == path and lo <= ptr < hi]
        assert hit, f"{e.name} is not in a mapping of {path}"
        lo, off = hit[0]
        assert ptr - lo + off == e.offset
    # safetensors and torch.save accept them as they are.
    safetensors.torch.save_file(loaded, str(tmp_path / "re.safetensors"))
    back = safetensors.torch.load_file(str(tmp_path / "re.safetensors"))
    assert_same_tensors(sd, back)
    torch.save(loaded, tmp_path / "re.pt")
    assert_same_tensors(sd, torch.load(tmp_path / "re.pt"))


# -- ExportedProgram ownership -----------------------------------------------


def test_loaded_program_resaves_with_torch_export_save(tmp_path: Path) -> None:
    model = ConvBN().eval()
    x = torch.randn(2, 3, 12, 12)
    ep = torch.export.export(model, (x,))
    loaded = ep_plugin.load(write(ep_plugin.pack(ep), tmp_path / "c"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "No complete tensor found in the group!"
        torch.export.save(loaded, str(tmp_path / "re.pt2"))
    again = torch.export.load(str(tmp_path / "re.pt2"))
    assert torch.equal(again.module()(x), model(x))
    assert_same_tensors(dict(ep.state_dict), dict(again.state_dict))


# -- state dicts and checkpoints --------------------------------------------


def test_safetensors_file_pulled_back_byte_identical_without_torch(tmp_path: Path) -> None:
    sd = {f"t{i}": _random(dt, (3, 2)) for i, dt in enumerate(_DTYPES) if dt.itemsize <= 8}
    sd["scalar"] = torch.tensor(1.5)
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file(sd, str(path), metadata={"who": "test"})
    write(tensors_plugin.pack(path), tmp_path / "c")
    out = tmp_path / "pulled.safetensors"
    _export_in_fresh_interpreter(tmp_path / "c", out)
    assert _sha(out) == _sha(path)


def test_state_dict_with_qint8_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    q = torch.quantize_per_tensor(torch.randn(4, 4), 0.05, 2, torch.qint8)
    qc = torch.quantize_per_channel(
        torch.randn(3, 4),
        torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64),
        torch.tensor([0, 1, -1]),
        0,
        torch.qint8,
    )
    sd = {"w": torch.randn(4), "q": q, "qc": qc}
    loaded = tensors_plugin.load(write(tensors_plugin.pack(sd), tmp_path / "c"))
    for k in sd:
        assert loaded[k].dtype == sd[k].dtype
    assert torch.equal(loaded["q"].int_repr(), q.int_repr())
    assert loaded["q"].q_scale() == q.q_scale() and loaded["q"].q_zero_point() == 2
    assert torch.equal(loaded["qc"].int_repr(), qc.int_repr())
    assert torch.equal(loaded["qc"].q_per_channel_scales(), qc.q_per_channel_scales())
    assert loaded["qc"].q_per_channel_axis() == 0


def test_checkpoint_nested_three_deep_round_trips_and_pulls_as_torch_save(tmp_path: Path) -> None:
    w = torch.randn(3, 3)
    ckpt = {
        "model": {"encoder": {"layer": {"weight": w, "bias": torch.zeros(3)}}, "tied": w},
        "optimizer": {
            "state": {0: {"exp_avg": torch.ones(3)}},
            "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99)}],
        },
        "step": 3,
        "name": "run-7",
        "best": None,
        "empty": {},
    }
    assert isinstance(detect(ckpt), TensorsPlugin)
    source = write(tensors_plugin.pack(ckpt), tmp_path / "c")
    back = tensors_plugin.load(source)
    assert (
        back["step"] == 3
        and back["name"] == "run-7"
        and back["best"] is None
        and back["empty"] == {}
    )
    assert back["optimizer"]["param_groups"] == [{"lr": 0.1, "betas": (0.9, 0.99)}]
    assert list(back["optimizer"]["state"]) == [0]
    assert torch.equal(back["model"]["encoder"]["layer"]["weight"], w)
    assert back["model"]["tied"] is back["model"]["encoder"]["layer"]["weight"]
    assert tensors_plugin.native_suffix(source) == ".pt"
    out = tensors_plugin.export_native(source, tmp_path / "ckpt.pt")
    again = torch.load(out, weights_only=True)
    assert again["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert torch.equal(again["model"]["encoder"]["layer"]["weight"], w)


def test_empty_dict_is_a_container_with_no_tensors(tmp_path: Path) -> None:
    source = write(tensors_plugin.pack({}), tmp_path / "c")
    assert tensors_plugin.load(source) == {}


@pytest.mark.parametrize(
    ("ckpt", "match"),
    [
        ({"a": {"b": {"c": object()}}}, r"checkpoint\['a'\]\['b'\]\['c'\] is a builtins.object"),
        ({"a": {1.5: torch.ones(1)}}, r"checkpoint\['a'\] has a key 1.5 of type float"),
        (
            {"a.b": torch.ones(1), "a": {"b": torch.ones(1)}},
            r"would both be stored as tensor 'a.b'",
        ),
        ({"n": 1 << 70}, r"checkpoint\['n'\] is an int too large"),
    ],
)
def test_checkpoint_refusals_name_the_key(ckpt: dict[str, Any], match: str) -> None:
    with pytest.raises(PayloadMismatchError, match=match):
        tensors_plugin.pack(ckpt)


# -- live modules ------------------------------------------------------------


def test_live_module_is_exported_by_default(tmp_path: Path) -> None:
    model = MLP().eval()
    x = torch.randn(4, 16)
    plugin = detect(model)
    assert isinstance(plugin, ExportedProgramPlugin)
    batch = torch.export.Dim("batch", min=1, max=64)
    source = write(
        plugin.pack(model, example_inputs=(x,), dynamic_shapes=({0: batch},)), tmp_path / "c"
    )
    loaded = plugin.load(source)
    assert torch.equal(loaded.module()(x), model(x))
    y = torch.randn(9, 16)
    assert torch.equal(loaded.module()(y), model(y))


def test_live_module_without_example_inputs_says_what_to_pass() -> None:
    with pytest.raises(
        InvalidArgumentError, match=r"needs example inputs: pass example_inputs=\(x,\)"
    ):
        ep_plugin.pack(MLP())


def test_live_module_as_torchscript(tmp_path: Path) -> None:
    model = ConvBN().eval()
    img = torch.randn(1, 3, 12, 12)
    scripted = write(ts.pack(model), tmp_path / "s")
    assert scripted.manifest.payload["kind"] == "scripted"
    traced = write(ts.pack(model, method="trace", example_inputs=(img,)), tmp_path / "t")
    assert traced.manifest.payload["kind"] == "traced"
    for source in (scripted, traced):
        assert torch.equal(ts.load(source)(img), model(img))
    with pytest.raises(InvalidArgumentError, match="tracing needs example inputs"):
        ts.pack(model, method="trace")


# -- damaged recipes -----------------------------------------------------------


def _pushed_safetensors(tmp_path: Path) -> Any:
    return write(tensors_plugin.pack(_write_safetensors(tmp_path)), tmp_path / "c")


def test_damaged_skeleton_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    source = _pushed_safetensors(tmp_path)
    corrupt_blob(source, source.manifest.payload["native"]["skeleton"], at=10)
    out = tmp_path / "out" / "w.safetensors"
    with pytest.raises(IntegrityError, match="damaged"):
        tensors_plugin.export_native(source, out)
    assert not out.parent.exists()


def test_damaged_weights_are_refused(tmp_path: Path) -> None:
    source = _pushed_safetensors(tmp_path)
    corrupt_blob(source, source.manifest.tensors[0].blob, at=0)
    with pytest.raises(IntegrityError, match="damaged"):
        tensors_plugin.export_native(source, tmp_path / "out.safetensors")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda r: r.update(size=r["size"] + 1), "does not add up"),
        (lambda r: r["pieces"].append("nope"), "names tensor 'nope', which is not stored"),
        (lambda r: r.update(sha256="0" * 64), "sha256 is"),
        (lambda r: r.update(skeleton=99), "recipe is malformed"),
    ],
)
def test_inconsistent_recipe_is_refused(change: Any, match: str, tmp_path: Path) -> None:
    draft = tensors_plugin.pack(_write_safetensors(tmp_path))
    change(draft.payload["native"])
    source = write(draft, tmp_path / "c")
    with pytest.raises(FormatError, match=match):
        tensors_plugin.export_native(source, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def _write_safetensors(tmp_path: Path) -> Path:
    path = tmp_path / "w.safetensors"
    safetensors.torch.save_file({"a": torch.randn(64), "b": torch.arange(5)}, str(path))
    return path
