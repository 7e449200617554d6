"""``--triton``: a model repository whose config.pbtxt parses against Triton's own schema."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from modelvault import Vault, errors
from modelvault.serving.triton import config_pbtxt, triton_version_of, write_repository

torch = pytest.importorskip("torch")


def model_config_pb2() -> Any:
    """Triton's ModelConfig, from tritonclient's generated module (its grpc package needs grpcio)."""
    spec = importlib.util.find_spec("tritonclient")
    assert spec is not None and spec.submodule_search_locations, "pip install tritonclient"
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    mod_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def parse(text: str) -> Any:
    from google.protobuf import text_format

    pb = model_config_pb2()
    return text_format.Parse(text, pb.ModelConfig()), pb


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    return Vault(registry=f"sqlite:///{tmp_path / 'r.db'}", store=f"file://{tmp_path / 'store'}")


def test_torchscript_repository(vault: Vault, tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()))
    x = torch.randn(2, 8)
    vault.push(module, "ranker", "1.3.2", example_inputs=(x,))
    model_dir = write_repository(vault, "ranker@1.3.2", tmp_path / "repo")
    assert model_dir == tmp_path / "repo" / "ranker"
    assert sorted(p.name for p in model_dir.iterdir()) == ["1003002", "config.pbtxt"]
    cfg, pb = parse((model_dir / "config.pbtxt").read_text())
    assert cfg.name == "ranker" and cfg.platform == "pytorch_libtorch"
    assert cfg.max_batch_size == 0 and cfg.default_model_filename == "model.pt"
    (inp,) = cfg.input
    assert inp.name == "input" and inp.data_type == pb.TYPE_FP32 and list(inp.dims) == [2, 8]
    (out,) = cfg.output
    assert out.name == "OUTPUT__0" and out.data_type == pb.TYPE_FP32 and list(out.dims) == [2, 4]
    assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    served = torch.jit.load(str(model_dir / "1003002" / "model.pt"))
    assert torch.equal(served(x), module(x))
    with pytest.raises(FileExistsError):
        write_repository(vault, "ranker@1.3.2", tmp_path / "repo")
    write_repository(vault, "ranker@1.3.2", tmp_path / "repo", triton_version=7)
    assert (model_dir / "7" / "model.pt").is_file()


def test_dynamic_dims_from_a_real_export_become_minus_one() -> None:
    from torch.export import Dim

    from modelvault.formats.exported_program import _user_signature

    lin = torch.nn.Linear(3, 2)
    ep = torch.export.export(
        lin, (torch.randn(4, 3),), dynamic_shapes=({0: Dim("batch", min=1, max=64)},)
    )
    signature = _user_signature(ep)
    assert isinstance(signature["inputs"][0]["shape"][0], str)  # a symbol, as recorded
    cfg, _ = parse(
        config_pbtxt("lin", signature, platform="pytorch_libtorch", default_file="model.pt")
    )
    assert list(cfg.input[0].dims) == [-1, 3]
    assert list(cfg.output[0].dims) == [-1, 2]


def test_tensorrt_plans_per_compute_capability_parse() -> None:
    signature = {
        "inputs": [{"name": "x", "dtype": "float16", "shape": ["s0", 3, 224, 224]}],
        "outputs": [{"name": "y", "dtype": "float16", "shape": ["s0", 1000]}],
    }
    text = config_pbtxt(
        "resnet",
        signature,
        platform="pytorch_libtorch",
        default_file="model_sm90.pt",
        cc_files={"9.0": "model_sm90.pt", "8.6": "model_sm86.pt"},
        gpu=True,
    )
    cfg, pb = parse(text)
    assert dict(cfg.cc_model_filenames) == {"8.6": "model_sm86.pt", "9.0": "model_sm90.pt"}
    assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert cfg.input[0].data_type == pb.TYPE_FP16


def test_exported_program_alone_is_refused_with_the_reason(vault: Vault, tmp_path: Path) -> None:
    lin = torch.nn.Linear(3, 2)
    vault.push(torch.export.export(lin, (torch.randn(1, 3),)), "ep", "1.0.0")
    with pytest.raises(errors.IncompatibleError, match="torch_aoti") as info:
        write_repository(vault, "ep@1.0.0", tmp_path / "repo")
    assert "TorchScript" in (info.value.hint or "")
    assert not (tmp_path / "repo").exists()


def test_torchscript_without_shapes_is_refused(vault: Vault, tmp_path: Path) -> None:
    vault.push(torch.jit.script(torch.nn.Linear(3, 2)), "noshape", "1.0.0")
    with pytest.raises(errors.IncompatibleError, match="no recorded shape"):
        write_repository(vault, "noshape@1.0.0", tmp_path / "repo")
    assert not (tmp_path / "repo").exists()  # nothing half-written


def test_triton_version_numbers() -> None:
    assert triton_version_of("0.1.0") == 1000
    assert triton_version_of("1.3.2") < triton_version_of("1.10.0") < triton_version_of("2.0.0")
    with pytest.raises(errors.InvalidArgumentError, match="no natural Triton version") as info:
        triton_version_of("1.0.0-rc.1")
    assert info.value.hint == "pass --triton-version N"


def test_cli_pull_triton(
    vault: Vault, tmp_path: Path, mvault: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = torch.jit.script(torch.nn.Linear(3, 2))
    vault.push(module, "cli", "2.0.1", example_inputs=(torch.randn(1, 3),))
    monkeypatch.setenv("MVAULT_REGISTRY", f"sqlite:///{tmp_path / 'r.db'}")
    monkeypatch.setenv("MVAULT_STORE", f"file://{tmp_path / 'store'}")
    r = mvault("pull", "cli@2.0.1", "--triton", str(tmp_path / "repo"))
    assert r.code == 0, r.err
    cfg, _ = parse((tmp_path / "repo" / "cli" / "config.pbtxt").read_text())
    assert cfg.name == "cli"
    assert (tmp_path / "repo" / "cli" / "2000001" / "model.pt").is_file()
