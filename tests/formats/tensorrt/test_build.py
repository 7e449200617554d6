"""Build on miss and refit, up to the point where TensorRT itself is needed.

The real exported_program plugin writes the portable variants here; what
happens after ``import torch_tensorrt`` is covered by ``test_integration.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelvault.errors import InvalidArgumentError, MissingDependencyError, NoCompatibleVariantError
from modelvault.formats.torch_tensorrt import (
    compile_portable,
    inputs_from_signature,
    recorded_compile_settings,
)
from modelvault.loader import choose_variant
from modelvault.targets import GpuDevice, Machine

from .conftest import FW, H100, info_list, rename_engine_class, save_pt2, small_module

torch = pytest.importorskip("torch")


def _dynamic_ep() -> Any:
    batch = torch.export.Dim("batch", min=1, max=8)
    return torch.export.export(
        small_module(), (torch.randn(2, 4),), dynamic_shapes={"x": {0: batch}}
    )


def test_inputs_from_a_real_portable_signature(vault: Any) -> None:
    vault.push(_dynamic_ep(), "m", "1.0.0")
    info = vault.resolve("m:1.0.0")
    src = vault._source(info.variants[0])
    assert src.manifest.plugin == "exported_program"
    specs = inputs_from_signature(src.manifest.signature)
    assert specs == [
        {
            "name": "x",
            "min_shape": [1, 4],
            "opt_shape": [1, 4],
            "max_shape": [8, 4],
            "dtype": "float32",
        }
    ]


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        ({"inputs": [{"name": "n", "type": "int", "value": 3}]}, "input 'n' is not a tensor"),
        (
            {
                "inputs": [{"name": "x", "dtype": "float32", "shape": ["s0", 4]}],
                "dims": {"s0": {"min": 1, "max": None}},
            },
            "dimension 's0' without a finite recorded range",
        ),
        (
            {
                "inputs": [{"name": "x", "dtype": "float32", "shape": ["2*s0"]}],
                "dims": {"s0": {"min": 1, "max": 4}},
            },
            "dimension '2*s0' without a finite recorded range",
        ),
        ({"inputs": []}, "records no inputs"),
    ],
)
def test_inputs_from_signature_says_when_it_cannot(signature: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message.replace("*", r"\*")):
        inputs_from_signature(signature)


def test_portable_and_trt_variants_rank_per_machine(
    vault: Any, torchbind: Any, tmp_path: Path
) -> None:
    vault.push(_dynamic_ep(), "m", "1.0.0")
    raw = save_pt2(torchbind, tmp_path / "raw.pt2", [info_list("9", sm=(9, 0))])
    vault.push(
        rename_engine_class(raw, tmp_path / "trt.pt2"),
        "m",
        "1.0.0",
        format="torch_tensorrt",
        variant=True,
        frameworks=FW,
    )
    variants = vault.resolve("m:1.0.0").variants
    assert choose_variant(variants, "cuda:0", machine=H100).variant.format == "torch_tensorrt"
    a100 = Machine(
        "linux_x86_64",
        True,
        (GpuDevice(0, "A100", (8, 0)),),
        cuda="12.4",
        tensorrt="10.3.0",
        torch_tensorrt="2.13.0",
        torch_tensorrt_abi="9",
    )
    choice = choose_variant(variants, "cuda:0", machine=a100)
    assert choice.variant.format == "exported_program"
    assert [why for _, why in choice.rejected] == [
        "built for compute capability 9.0; cuda:0 (A100) is 8.0"
    ]
    assert choose_variant(variants, "cpu", machine=H100).variant.format == "exported_program"


def test_compile_needs_torch_tensorrt(vault: Any) -> None:
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch_tensorrt is importable here; the integration tests compile for real")
    vault.push(_dynamic_ep(), "m", "1.0.0")
    src = vault._source(vault.resolve("m:1.0.0").variants[0])
    with pytest.raises(
        MissingDependencyError, match="building a TensorRT variant needs torch_tensorrt"
    ):
        compile_portable(src, device="cuda:0", settings={})


def test_compile_refuses_a_non_exported_program_source(vault: Any, tmp_path: Path) -> None:
    d = tmp_path / "files"
    d.mkdir()
    (d / "w.bin").write_bytes(b"w")
    vault.push(d, "f", "1.0.0")
    src = vault._source(vault.resolve("f:1.0.0").variants[0])
    with pytest.raises(
        InvalidArgumentError, match="compiles from an ExportedProgram variant; this one is 'files'"
    ):
        compile_portable(src, device="cuda:0", settings={})


def test_build_on_miss_without_a_portable_program(
    vault: Any, torchbind: Any, tmp_path: Path
) -> None:
    raw = save_pt2(torchbind, tmp_path / "raw.pt2", [info_list("9", sm=(9, 0))])
    vault.push(
        rename_engine_class(raw, tmp_path / "trt.pt2"),
        "t",
        "1.0.0",
        format="torch_tensorrt",
        frameworks=FW,
    )
    with pytest.raises(
        NoCompatibleVariantError, match="has no portable ExportedProgram variant to compile from"
    ) as exc:
        vault.load("t:1.0.0", device="cuda:0", build_missing=True)
    assert "variants: torch_tensorrt" in str(exc.value)


def test_recorded_compile_settings() -> None:
    engines = [
        {
            "settings": {
                "enabled_precisions": ["torch.float16", "torch.float32"],
                "hardware_compatible": True,
                "immutable_weights": False,
                "optimization_level": 3,
                "device": {"gpu_id": 0},
            }
        }
    ]
    before_2_13 = {
        "enabled_precisions",
        "hardware_compatible",
        "immutable_weights",
        "optimization_level",
    }
    out = recorded_compile_settings(engines, before_2_13)
    assert out == {
        "enabled_precisions": {torch.float16, torch.float32},
        "hardware_compatible": True,
        "immutable_weights": False,
        "optimization_level": 3,
    }
    # a release whose compile no longer names a setting (2.13: enabled_precisions) never gets it
    assert "enabled_precisions" not in recorded_compile_settings(
        engines, before_2_13 - {"enabled_precisions"}
    )
    # a precision recorded as a Torch-TensorRT enum is left to the compiler's default, not guessed
    assert "enabled_precisions" not in recorded_compile_settings(
        [{"settings": {"enabled_precisions": ["torch_tensorrt._enums.dtype(2)"]}}], before_2_13
    )
    assert recorded_compile_settings([], before_2_13) == {}


def _trt_program(torchbind: Any, tmp_path: Path, **settings: Any) -> Path:
    from .conftest import metadata_b64, pickled_as_torch_tensorrt

    with pickled_as_torch_tensorrt():
        md = metadata_b64(**settings)
    raw = save_pt2(torchbind, tmp_path / "raw.pt2", [info_list("9", sm=(9, 0), metadata=md)])
    return rename_engine_class(raw, tmp_path / "trt.pt2")


def test_wants_build(vault: Any, torchbind: Any, tmp_path: Path) -> None:
    from modelvault.formats.torch_tensorrt import wants_build

    vault.push(_dynamic_ep(), "m", "1.0.0")
    vault.push(
        _trt_program(torchbind, tmp_path),
        "m",
        "1.0.0",
        format="torch_tensorrt",
        variant=True,
        frameworks=FW,
    )
    by_format = {v.format: v for v in vault.resolve("m:1.0.0").variants}
    portable, trt = by_format["exported_program"], by_format["torch_tensorrt"]
    assert wants_build(portable, "cuda:0") and wants_build(None, "cuda:0")
    assert not wants_build(portable, "cpu")
    assert not wants_build(trt, "cuda:0")
    # the same answer through the format interface, as the vault asks it
    from modelvault.formats.registry import get_plugin
    from modelvault.loader import builder_for

    view = vault.pipeline.view(vault.resolve("m:1.0.0"))
    assert builder_for("cuda:0", portable, view) is get_plugin("torch_tensorrt")
    assert builder_for("cuda:0", trt, view) is None and builder_for("cpu", portable, view) is None


def test_refit_source_is_the_portable_sibling(vault: Any, torchbind: Any, tmp_path: Path) -> None:
    from modelvault.formats.registry import get_plugin
    from modelvault.loader import sibling_options

    plugin = get_plugin("torch_tensorrt")

    def load_options(vault: Any, variants: Any, source: Any) -> dict[str, Any]:
        return sibling_options(
            plugin, source.manifest, vault.pipeline.view(vault.resolve("s:1.0.0"))
        )

    prog = _trt_program(torchbind, tmp_path, immutable_weights=False, strip_engine_weights=True)
    vault.push(prog, "s", "1.0.0", format="torch_tensorrt", frameworks=FW)
    variants = vault.resolve("s:1.0.0").variants
    trt_source = vault._source(variants[0])
    with pytest.raises(
        NoCompatibleVariantError, match="stored without weights and the version has no portable"
    ):
        load_options(vault, variants, trt_source)
    vault.push(_dynamic_ep(), "s", "1.0.0", variant=True)
    variants = vault.resolve("s:1.0.0").variants
    opts = load_options(vault, variants, trt_source)
    assert opts["refit_from"].manifest.plugin == "exported_program"
    portable = next(v for v in variants if v.format == "exported_program")
    assert load_options(vault, variants, vault._source(portable)) == {}


def test_cli_push_variant_and_show(mvault: Any, torchbind: Any, tmp_path: Path) -> None:
    """`mvault push NAME:VERSION trt.ep --variant` detects the format; without TensorRT here it says what to do."""
    portable = tmp_path / "portable"
    portable.mkdir()
    (portable / "w.bin").write_bytes(b"w")
    assert mvault("push", "resnet50:1.3.0", str(portable)).code == 0
    prog = _trt_program(torchbind, tmp_path)
    ep_file = prog.rename(tmp_path / "trt_sm90.ep")
    r = mvault("push", "resnet50:1.3.0", str(ep_file), "--variant")
    if Machine.probe().tensorrt is None:
        assert r.code != 0
        assert "cannot tell which TensorRT version built these engines" in r.err
        assert "Traceback" not in r.err
        shown = mvault("show", "resnet50:1.3.0")
        assert "torch_tensorrt" not in shown.out  # nothing was registered
    else:
        assert r.code == 0, r.err
        shown = mvault("show", "resnet50:1.3.0")
        assert "torch_tensorrt" in shown.out and "compute_capabilities" in shown.out


def test_a_plain_load_knows_no_tensorrt() -> None:
    """Without build_missing, Vault.load asks no plugin to build and imports no TensorRT code."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from modelvault.vault import Vault\n"
        "with Vault() as v:\n"
        "    ep = torch.export.export(torch.nn.Linear(4, 2), (torch.randn(2, 4),))\n"
        "    v.push(ep, 'm', '1.0.0', format='exported_program')\n"
        "    v.load('m:1.0.0', device='cpu')\n"
        "print(sorted(m for m in sys.modules if 'tensorrt' in m))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
