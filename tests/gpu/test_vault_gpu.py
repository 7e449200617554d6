"""The vault end to end onto a CUDA device: push on the host, load onto the GPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (runs on the GPU machine)"
    ),
]


@pytest.fixture
def vault():
    from modelvault.vault import Vault

    v = Vault()
    yield v
    v.close()


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(256, 512),
        torch.nn.GELU(),
        torch.nn.LayerNorm(512),
        torch.nn.Linear(512, 16),
    ).eval()


def test_exported_program_push_then_load_on_cuda(vault):
    model = _mlp()
    x = torch.randn(8, 256)
    vault.push(torch.export.export(model, (x,)), "gpu/mlp", "1.0.0", aliases=["prod"])
    loaded = vault.load("gpu/mlp@prod", device="cuda:0")
    out = loaded.module()(x.cuda())
    assert out.device.type == "cuda"
    for name, t in loaded.state_dict.items():
        assert t.device.type == "cuda", name
    torch.testing.assert_close(out.cpu(), model(x), rtol=1e-4, atol=1e-5)


def test_state_dict_push_then_load_on_cuda(vault):
    sd = {
        "w": torch.randn(64, 64),
        "b": torch.randn(64).half(),
        "i": torch.arange(10, dtype=torch.int8),
    }
    vault.push(sd, "gpu/sd", "1.0.0")
    loaded = vault.load("gpu/sd@1.0.0", device="cuda")
    assert set(loaded) == set(sd)
    for k, v in sd.items():
        assert loaded[k].device.type == "cuda"
        assert torch.equal(loaded[k].cpu(), v)


def test_torchscript_push_then_load_on_cuda(vault):
    model = _mlp()
    x = torch.randn(4, 256)
    scripted = torch.jit.trace(model, (x,))
    vault.push(scripted, "gpu/ts", "1.0.0")
    loaded = vault.load("gpu/ts@1.0.0", device="cuda:0")
    torch.testing.assert_close(loaded(x.cuda()).cpu(), model(x), rtol=1e-4, atol=1e-5)


def test_missing_cuda_index_is_a_clear_error(vault):
    from modelvault.errors import ModelVaultError

    vault.push({"w": torch.ones(4)}, "gpu/idx", "1.0.0")
    with pytest.raises(ModelVaultError, match="cuda:99"):
        vault.load("gpu/idx@1.0.0", device="cuda:99")
