"""End to end with a real Torch-TensorRT: compile, push both IRs, load, compare; build on miss; refit.

These run wherever ``import torch_tensorrt`` works and a CUDA GPU is present,
and are reported as skipped elsewhere with the import error as the reason
(``scripts/tensorrt-integration.sh`` runs them and keeps a log). None of them
has run yet: no machine with TensorRT has been available.

The API is Torch-TensorRT 2.13's, read in its sources (``py/torch_tensorrt/_compile.py``
and ``dynamo/_compiler.py`` at v2.13.0): ``torch_tensorrt.compile(module,
ir="dynamo", inputs=[torch_tensorrt.Input(min_shape=, opt_shape=, max_shape=)],
**dynamo settings)``, ``torch_tensorrt.save(module, path, output_format=...,
arg_inputs=..., dynamic_shapes=...)`` (2.13 writes ``.pt2`` engines as
``EngineSerializer`` opaque constants), ``torch_tensorrt.dynamo.compile``
(no ``enabled_precisions``/``use_explicit_typing`` in 2.13: reduced precision
is ``enable_autocast=True, autocast_low_precision_type=torch.float16``) and
``torch_tensorrt.dynamo.refit_module_weights``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

try:
    import torch_tensorrt  # noqa: F401

    _SKIP: str | None = None
except Exception as exc:  # ImportError, or OSError from a missing libnvinfer
    _SKIP = f"torch_tensorrt is not importable: {type(exc).__name__}: {exc}"

if _SKIP is None:
    import torch

    if not torch.cuda.is_available():
        _SKIP = "torch_tensorrt imports but no CUDA GPU is available"

pytestmark = [
    pytest.mark.tensorrt,
    pytest.mark.gpu,
    pytest.mark.skipif(_SKIP is not None, reason=_SKIP or ""),
]

ATOL = 2e-2


def _model() -> Any:
    import torch

    class Small(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x: Any) -> Any:
            y = torch.relu(self.conv(x)).mean(dim=(2, 3))
            return self.fc(y)

    torch.manual_seed(0)
    return Small().eval().cuda()


def _compile(model: Any, **settings: Any) -> tuple[Any, Any]:
    import torch
    import torch_tensorrt

    x = torch.randn(2, 3, 16, 16, device="cuda")
    dyn = torch_tensorrt.Input(
        min_shape=(1, 3, 16, 16),
        opt_shape=(2, 3, 16, 16),
        max_shape=(8, 3, 16, 16),
        dtype=torch.float32,
    )
    trt = torch_tensorrt.compile(model, ir="dynamo", inputs=[dyn], min_block_size=1, **settings)
    return trt, x


@pytest.mark.parametrize("ir", ["exported_program", "torchscript"])
def test_push_load_compare_both_irs(vault: Any, ir: str, tmp_path: Path) -> None:
    import torch
    import torch_tensorrt

    model = _model()
    trt, x = _compile(model)
    expected = model(x)
    path = tmp_path / ("m.pt2" if ir == "exported_program" else "m.ts")
    extra = (
        {"dynamic_shapes": {"x": {0: torch.export.Dim("batch", min=1, max=8)}}}
        if ir == "exported_program"
        else {}
    )
    torch_tensorrt.save(trt, str(path), output_format=ir, arg_inputs=[x], **extra)
    r = vault.push(path, "small", "1.0.0", format="torch_tensorrt")
    assert r.format == "torch_tensorrt"
    shown = vault.show("small:1.0.0")
    req = shown["variants"][0]["requirements"]
    cap = torch.cuda.get_device_capability(0)
    assert req["compute_capabilities"] == [f"{cap[0]}.{cap[1]}"]
    assert req["tensorrt"] == __import__("tensorrt").__version__  # the exact version
    if ir == "exported_program" and torch_tensorrt.__version__.startswith("2.13"):
        engines = vault._source(vault.resolve("small:1.0.0").variants[0]).manifest.payload[
            "engines"
        ]
        assert {e["stored_as"] for e in engines} == {"engine_serializer"}
    loaded = vault.load("small:1.0.0", device="cuda:0")
    torch.testing.assert_close(loaded(x), expected, atol=ATOL, rtol=ATOL)
    x5 = torch.randn(5, 3, 16, 16, device="cuda")  # another batch size inside the dynamic range
    torch.testing.assert_close(loaded(x5), model(x5), atol=ATOL, rtol=ATOL)


def test_live_module_push_passes_inputs_through(vault: Any) -> None:
    import torch

    model = _model()
    trt, x = _compile(model)
    vault.push(trt, "live", "1.0.0", format="torch_tensorrt", arg_inputs=[x])
    loaded = vault.load("live:1.0.0", device="cuda:0")
    torch.testing.assert_close(loaded(x), model(x), atol=ATOL, rtol=ATOL)


def test_hardware_compatible_variant(vault: Any, tmp_path: Path) -> None:
    import torch
    import torch_tensorrt

    if torch.cuda.get_device_capability(0) < (8, 0):
        pytest.skip("hardware-compatible engines need an Ampere or newer GPU")
    model = _model()
    trt, x = _compile(model, hardware_compatible=True)
    path = tmp_path / "hw.pt2"
    torch_tensorrt.save(trt, str(path), output_format="exported_program", arg_inputs=[x])
    vault.push(path, "hw", "1.0.0", format="torch_tensorrt")
    req = vault.show("hw:1.0.0")["variants"][0]["requirements"]
    assert req["compute_capabilities"] == {"min": "8.0"}
    torch.testing.assert_close(
        vault.load("hw:1.0.0", device="cuda:0")(x), model(x), atol=ATOL, rtol=ATOL
    )


def _push_portable(vault: Any, model: Any, x: Any, name: str) -> None:
    import torch

    pytest.importorskip(
        "modelvault.formats.exported_program", reason="the exported_program format is not installed"
    )
    ep = torch.export.export(model, (x,))
    vault.push(ep, name, "1.0.0", format="exported_program")


def test_build_compiles_from_the_recorded_signature(vault: Any) -> None:
    import torch

    from modelvault.formats.registry import get_plugin

    model = _model()
    x = torch.randn(2, 3, 16, 16, device="cuda")
    _push_portable(vault, model, x, "sig")
    view = vault.pipeline.view(vault.resolve("sig:1.0.0"))
    # no inputs given: they come from the portable variant's signature (batch 1..8)
    built = get_plugin("torch_tensorrt").build(
        view, device="cuda:0", settings={"min_block_size": 1}, options={}
    )
    for batch in (1, 3, 8):
        xb = torch.randn(batch, 3, 16, 16, device="cuda")
        torch.testing.assert_close(built.obj(xb), model(xb), atol=ATOL, rtol=ATOL)
    assert "arg_inputs" in built.push_options


def test_a_setting_the_release_ignores_is_refused_before_compiling(vault: Any) -> None:
    import torch
    import torch_tensorrt

    from modelvault.errors import InvalidArgumentError

    if (
        "enabled_precisions"
        in __import__("inspect").signature(torch_tensorrt.dynamo.compile).parameters
    ):
        pytest.skip(f"Torch-TensorRT {torch_tensorrt.__version__} still takes enabled_precisions")
    model = _model()
    x = torch.randn(2, 3, 16, 16, device="cuda")
    _push_portable(vault, model, x, "fp16")
    with pytest.raises(InvalidArgumentError, match="enabled_precisions"):
        vault.load(
            "fp16:1.0.0",
            device="cuda:0",
            build_missing=True,
            compile_settings={"enabled_precisions": {torch.float16}, "min_block_size": 1},
        )
    assert [v["format"] for v in vault.show("fp16:1.0.0")["variants"]] == ["exported_program"]
    # the 2.13 way: autocast to FP16
    built = vault.load(
        "fp16:1.0.0",
        device="cuda:0",
        build_missing=True,
        compile_settings={
            "enable_autocast": True,
            "autocast_low_precision_type": torch.float16,
            "min_block_size": 1,
        },
    )
    torch.testing.assert_close(built(x).float(), model(x), atol=5e-2, rtol=5e-2)


def test_version_compatible_engines_record_it(vault: Any, tmp_path: Path) -> None:
    import torch_tensorrt

    model = _model()
    trt, x = _compile(model, version_compatible=True)
    path = tmp_path / "vc.pt2"
    torch_tensorrt.save(trt, str(path), output_format="exported_program", arg_inputs=[x])
    vault.push(path, "vc", "1.0.0", format="torch_tensorrt")
    req = vault.show("vc:1.0.0")["variants"][0]["requirements"]
    assert req["tensorrt_version_compatible"] is True


def test_load_honours_the_device(vault: Any, tmp_path: Path) -> None:
    import torch
    import torch_tensorrt

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    model = _model()
    trt, x = _compile(model, hardware_compatible=True)
    path = tmp_path / "dev.pt2"
    torch_tensorrt.save(trt, str(path), output_format="exported_program", arg_inputs=[x])
    vault.push(path, "dev", "1.0.0", format="torch_tensorrt")
    loaded = vault.load("dev:1.0.0", device="cuda:1")
    out = loaded(x.to("cuda:1"))
    assert out.device == torch.device("cuda:1")
    from modelvault.errors import NoCompatibleVariantError

    with pytest.raises(NoCompatibleVariantError, match="does not exist here"):
        vault.load("dev:1.0.0", device=f"cuda:{torch.cuda.device_count()}")


def test_build_on_miss_compiles_pushes_and_is_reused(vault: Any) -> None:
    import torch

    model = _model()
    x = torch.randn(2, 3, 16, 16, device="cuda")
    _push_portable(vault, model, x, "bom")
    built = vault.load(
        "bom:1.0.0",
        device="cuda:0",
        build_missing=True,
        compile_settings={"arg_inputs": (x,), "min_block_size": 1},
    )
    torch.testing.assert_close(built(x), model(x), atol=ATOL, rtol=ATOL)
    formats = sorted(v["format"] for v in vault.show("bom:1.0.0")["variants"])
    assert formats == ["exported_program", "torch_tensorrt"]
    # the next load on this kind of machine downloads the built variant instead of compiling
    from modelvault.loader import choose_variant

    choice = choose_variant(vault.resolve("bom:1.0.0").variants, "cuda:0")
    assert choice.variant.format == "torch_tensorrt"
    again = vault.load("bom:1.0.0", device="cuda:0")
    torch.testing.assert_close(again(x), model(x), atol=ATOL, rtol=ATOL)


def test_weight_stripped_variant_is_refit_from_the_portable_one(vault: Any, tmp_path: Path) -> None:
    import torch
    import torch_tensorrt

    from modelvault.formats.registry import get_plugin

    model = _model()
    x = torch.randn(2, 3, 16, 16, device="cuda")
    _push_portable(vault, model, x, "refit")
    ep = torch.export.export(model, (x,))
    trt = torch_tensorrt.dynamo.compile(
        ep, arg_inputs=(x,), min_block_size=1, immutable_weights=False, strip_engine_weights=True
    )
    path = tmp_path / "stripped.pt2"
    torch_tensorrt.save(trt, str(path), output_format="exported_program", arg_inputs=[x])
    vault.push(path, "refit", "1.0.0", format="torch_tensorrt", variant=True)
    info = vault.resolve("refit:1.0.0")
    by_format = {v.format: v for v in info.variants}
    trt_source = vault._source(by_format["torch_tensorrt"])
    assert trt_source.manifest.payload["weights"] == "refit_from_portable"
    portable_source = vault._source(by_format["exported_program"])
    # the stripped program is far smaller than the weights it will be refit with
    assert trt_source.manifest.total_size < portable_source.manifest.total_size
    loaded = get_plugin("torch_tensorrt").load(
        trt_source, device="cuda:0", refit_from=portable_source, arg_inputs=(x,)
    )
    torch.testing.assert_close(loaded(x), model(x), atol=ATOL, rtol=ATOL)
    # the same through the vault: the plugin's sibling need brings the portable variant
    again = vault.load("refit:1.0.0", device="cuda:0", variant="torch_tensorrt", arg_inputs=(x,))
    torch.testing.assert_close(again(x), model(x), atol=ATOL, rtol=ATOL)
