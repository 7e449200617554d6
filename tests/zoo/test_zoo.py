"""Real architectures through every format they support, checked against plain torch.

For each model and format: push (a live module: exported, scripted or
traced on the way in), load and compare outputs exactly; pull the native file,
open it with plain torch and compare every tensor's dtype, shape and bytes;
re-save what ``load`` returned with torch's own saver and load that again.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from modelvault import Vault

from .models import CASES, Case

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)


def _params(cases: list[Case]) -> list[Any]:
    return [pytest.param(c, id=c.name, marks=(pytest.mark.slow,) if c.slow else ()) for c in cases]


@pytest.fixture
def vault(tmp_path: Path) -> Any:
    v = Vault(
        registry=f"sqlite:///{tmp_path / 'registry.db'}", store=f"file://{tmp_path / 'store'}"
    )
    yield v
    v.close()


def _model(case: Case) -> torch.nn.Module:
    torch.manual_seed(0)
    model = case.build().eval()
    _randomise_buffers(model)
    return model


def _randomise_buffers(model: torch.nn.Module) -> None:
    # Fresh BatchNorm statistics are all 0 and 1: give them values a wrong byte would change.
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                b.copy_(torch.rand_like(b) + 0.5)
            elif name.endswith("num_batches_tracked"):
                b.fill_(12345)


def _call(fn: Any, inputs: Any) -> Any:
    return fn(**inputs) if isinstance(inputs, dict) else fn(*inputs)


def _leaves(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _leaves(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _leaves(v)]
    return []


def assert_outputs_equal(a: Any, b: Any) -> None:
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(x, y), float((x.float() - y.float()).abs().max())


def _bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def assert_tensors_equal(
    want: dict[str, torch.Tensor], got: dict[str, torch.Tensor], strides: bool = True
) -> None:
    assert set(got) == set(want)
    for k, a in want.items():
        b = got[k]
        assert (b.dtype, tuple(b.shape)) == (a.dtype, tuple(a.shape)), k
        if strides:
            assert b.stride() == a.stride(), k
        assert _bytes(b) == _bytes(a), k


def _module_tensors(m: Any) -> dict[str, torch.Tensor]:
    out = dict(m.named_parameters(remove_duplicate=False))
    out.update(dict(m.named_buffers(remove_duplicate=False)))
    return out


def _program_tensors(ep: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
    out = {f"sd/{k}": v for k, v in ep.state_dict.items()}
    out.update({f"c/{k}": v for k, v in ep.constants.items() if isinstance(v, torch.Tensor)})
    return out


@pytest.mark.parametrize("case", _params(CASES))
def test_exported_program(case: Case, vault: Any, tmp_path: Path) -> None:
    model = _model(case)
    inputs = case.inputs()
    dims = case.dynamic_shapes() if case.dynamic_shapes else None
    vault.push(model, case.name, "1.0.0", example_inputs=inputs, dynamic_shapes=dims)
    loaded = vault.load(f"{case.name}@1.0.0")
    assert isinstance(loaded, torch.export.ExportedProgram)
    with torch.no_grad():
        expected = _call(model, inputs)
        assert_outputs_equal(expected, _call(loaded.module(), inputs))
        if case.other_inputs is not None:
            other = case.other_inputs()
            assert_outputs_equal(_call(model, other), _call(loaded.module(), other))
    pulled = vault.pull(f"{case.name}@1.0.0", tmp_path / "native.pt2")
    native = torch.export.load(str(pulled))
    assert_tensors_equal(_program_tensors(loaded), _program_tensors(native))
    with torch.no_grad():
        assert_outputs_equal(expected, _call(native.module(), inputs))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "No complete tensor found in the group!"
        torch.export.save(loaded, str(tmp_path / "resaved.pt2"))
    resaved = torch.export.load(str(tmp_path / "resaved.pt2"))
    assert_tensors_equal(_program_tensors(loaded), _program_tensors(resaved))
    with torch.no_grad():
        assert_outputs_equal(expected, _call(resaved.module(), inputs))


@pytest.mark.parametrize("case", _params([c for c in CASES if c.torchscript]))
def test_torchscript(case: Case, vault: Any, tmp_path: Path) -> None:
    model = _model(case)
    inputs = case.inputs()
    vault.push(
        model,
        case.name,
        "1.0.0",
        format="torchscript",
        method=case.torchscript,
        example_inputs=inputs,
    )
    loaded = vault.load(f"{case.name}@1.0.0")
    assert isinstance(loaded, torch.jit.ScriptModule)
    with torch.no_grad():
        expected = _call(model, inputs)
        assert_outputs_equal(expected, _call(loaded, inputs))
    assert_tensors_equal(_module_tensors(model), _module_tensors(loaded))
    pulled = vault.pull(f"{case.name}@1.0.0", tmp_path / "native.pt")
    native = torch.jit.load(str(pulled))
    assert_tensors_equal(_module_tensors(model), _module_tensors(native))
    with torch.no_grad():
        assert_outputs_equal(expected, _call(native, inputs))
    buf = io.BytesIO()
    torch.jit.save(loaded, buf)
    buf.seek(0)
    resaved = torch.jit.load(buf)
    assert_tensors_equal(_module_tensors(model), _module_tensors(resaved))
    with torch.no_grad():
        assert_outputs_equal(expected, _call(resaved, inputs))
    # The same module as a file: pushed from disk, pulled back byte for byte.
    path = tmp_path / "from-disk.pt"
    torch.jit.save(native, str(path))
    vault.push(path, f"{case.name}-file", "1.0.0")
    back = vault.pull(f"{case.name}-file@1.0.0", tmp_path / "back.pt")
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest()


@pytest.mark.parametrize("case", _params(CASES))
def test_state_dict(case: Case, vault: Any, tmp_path: Path) -> None:
    model = _model(case)
    sd = model.state_dict()
    vault.push(sd, f"{case.name}-sd", "1.0.0")
    loaded = vault.load(f"{case.name}-sd@1.0.0")
    assert list(loaded) == list(sd)
    assert_tensors_equal(dict(sd), loaded)
    # The weights load back into the architecture and give the same outputs.
    fresh = case.build().eval()
    fresh.load_state_dict(loaded)
    inputs = case.inputs()
    with torch.no_grad():
        assert_outputs_equal(_call(model, inputs), _call(fresh, inputs))
    pulled = vault.pull(f"{case.name}-sd@1.0.0", tmp_path / "native.safetensors")
    assert_tensors_equal(dict(sd), safetensors.torch.load_file(str(pulled)), strides=False)
    # Re-saved with plain safetensors (one name per memory, as it demands) and torch.save.
    unique = _one_name_per_memory(loaded)
    safetensors.torch.save_file(unique, str(tmp_path / "resaved.safetensors"))
    assert_tensors_equal(unique, safetensors.torch.load_file(str(tmp_path / "resaved.safetensors")))
    torch.save(loaded, tmp_path / "resaved.pt")
    assert_tensors_equal(dict(sd), torch.load(tmp_path / "resaved.pt", weights_only=True))
    # A .safetensors file pushed from disk comes back byte for byte.
    path = tmp_path / "from-disk.safetensors"
    safetensors.torch.save_file(unique, str(path), metadata={"arch": case.name})
    vault.push(path, f"{case.name}-st", "1.0.0")
    back = vault.pull(f"{case.name}-st@1.0.0", tmp_path / "back.safetensors")
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest()


def _one_name_per_memory(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    seen: set[int] = set()
    out = {}
    for k, v in sd.items():
        if v.data_ptr() in seen and v.numel():
            continue
        seen.add(v.data_ptr())
        out[k] = v
    return out
