"""Builders of Torch-TensorRT programs from the real release code (see ``test_releases.py``
for where each one's bytes come from). Needs only torch and ``releases.py``."""

from __future__ import annotations

import ast
import base64
import hashlib
import pickle
from pathlib import Path
from typing import Any

import torch

from .releases import function_source, release, runtime_h_layout, sources

PLAN = b"ftrt" + hashlib.sha256(b"plan").digest() * 8  # the plan's bytes matter only as bytes
H100_NAME = "NVIDIA H100 80GB HBM3"


def field_name(idx_name: str) -> str:
    name = idx_name.removesuffix("_IDX").lower()
    return {"abi_target": "abi"}.get(name, name)


def metadata(version: str, **settings: Any) -> str:
    """``encode_metadata`` of the release's metadata dict around its ``CompilationSettings``."""
    rel = release(version)
    with rel.active():
        cls = rel.module("torch_tensorrt.dynamo._settings").CompilationSettings
        device = rel.module("torch_tensorrt._Device").Device(gpu_id=0)
        meta: dict[str, Any] = {
            "settings": cls(device=device, **settings),
            "inout_symexprs": None,
            "output_tensors_are_unowned": False,
        }
        if version != "2.13.0":  # 2.13 dropped weight_name_map from the metadata
            meta["weight_name_map"] = None
        return base64.b64encode(pickle.dumps(meta)).decode("utf-8")


def platform_field(version: str, platform: str) -> str:
    """The platform field: 2.13's fixtures take the Python path (no C++ runtime), which writes
    ``str(Platform.X)``, the enum's name (``_enums.py``); 2.11 and 2.12's torchbind engines
    come from the C++ runtime, whose ``Platform.cpp`` writes ``linux_x86_64``/``windows_x86_64``."""
    if version != "2.13.0":
        return platform
    rel = release(version)
    with rel.active():
        enum = rel.module("torch_tensorrt._enums").Platform
        return str({"linux_x86_64": enum.LINUX_X86_64, "windows_x86_64": enum.WIN_X86_64}[platform])


def packed(
    version: str,
    *,
    name: str = "_run_on_acc_0_engine",
    sm: str = "9%0",
    platform: str = "linux_x86_64",
    **settings: Any,
) -> list[Any]:
    """An info list in the release's index order with the raw plan (``_pack_engine_info``)."""
    abi, names = runtime_h_layout(version)
    values = {
        "ABI_TARGET_IDX": abi,
        "NAME_IDX": name,
        "DEVICE_IDX": f"0%{sm}%0%{H100_NAME}",  # serialize_device_info: id, major, minor, type, name
        "ENGINE_IDX": PLAN,
        "INPUT_BINDING_NAMES_IDX": "x",
        "OUTPUT_BINDING_NAMES_IDX": "output0",
        "HW_COMPATIBLE_IDX": str(int(bool(settings.get("hardware_compatible")))),
        "SERIALIZED_METADATA_IDX": metadata(version, **settings),
        "TARGET_PLATFORM_IDX": platform_field(version, platform),
        "REQUIRES_OUTPUT_ALLOCATOR_IDX": "0",
        "RESOURCE_ALLOCATION_STRATEGY_IDX": "0",
        "REQUIRES_NATIVE_MULTIDEVICE_IDX": "0",
    }
    return [values[n] for n in names]


def write_pt2_213(path: Path, infos: list[list[Any]], *, normalize: bool = True) -> Path:
    """A 2.13 ``.pt2``: the release's engines in a real exported graph, saved by torch."""
    rel = release("2.13.0")
    with rel.active():
        engine_mod = rel.module("torch_tensorrt.dynamo.runtime._TRTEngine")
        engines = []
        for info in infos:
            # A TRTEngine without a TensorRT engine behind it: only its serialized state is used.
            eng = engine_mod.TRTEngine.__new__(engine_mod.TRTEngine)
            eng.serialized_info, eng.cudagraph = list(info), None
            eng.output_shapes, eng.output_dtypes = [[1, 2]], [torch.float32]
            engines.append(eng)

        class Compiled(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                for i, e in enumerate(engines):
                    setattr(self, f"_run_on_acc_{i}_engine", e)

            def forward(self, x: Any) -> Any:
                for i in range(len(engines)):
                    engine = getattr(self, f"_run_on_acc_{i}_engine")
                    x = torch.ops.tensorrt.execute_engine([x], engine)[0]
                return x

        ep = torch.export.export(Compiled(), (torch.ones(1, 2),))
        if normalize:
            ns: dict[str, Any] = {"torch": torch}
            exec(
                function_source("2.13.0", "_compile.py", "_normalize_engine_constants_to_python"),
                ns,
            )
            ns["_normalize_engine_constants_to_python"](ep)
            kinds = {type(c).__name__ for c in ep.constants.values()}
            assert kinds == {"EngineSerializer"}
        torch.export.save(ep, str(path))
    return path


def write_windows_pt2(path: Path, info: list[Any]) -> Path:
    """A cross-compiled ``.pt2`` as 2.12's ``inline_trt_modules(..., cross_compile_module=True)``
    (``dynamo/_exporter.py``) makes it: the info list, engine base64, as the string arguments of
    ``tensorrt::no_op_placeholder_for_execute_engine``, whose schema is 2.12's own (its
    definition is executed from ``dynamo/runtime/meta_ops/register_meta_ops.py``); torch 2.13
    traces and saves it."""
    if not hasattr(torch.ops.tensorrt, "no_op_placeholder_for_execute_engine"):
        text = (
            sources("2.12.0") / "torch_tensorrt/dynamo/runtime/meta_ops/register_meta_ops.py"
        ).read_text()
        fn = next(
            n
            for n in ast.parse(text).body
            if isinstance(n, ast.FunctionDef) and n.name == "no_op_placeholder_for_execute_engine"
        )
        lines = text.splitlines()[fn.decorator_list[0].lineno - 1 : fn.end_lineno]
        exec("\n".join(lines), {"torch": torch, "List": list})
        # The release's fake kernel reads shapes from the metadata through TorchTensorRTModule;
        # tracing here needs only one output shaped like the input.
        torch.library.register_fake("tensorrt::no_op_placeholder_for_execute_engine")(
            lambda inputs, *args: [torch.empty_like(inputs[0])]
        )
    args = [base64.b64encode(x).decode("utf-8") if isinstance(x, bytes) else x for x in info]

    class CrossCompiled(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return torch.ops.tensorrt.no_op_placeholder_for_execute_engine([x], *args)[0]

    torch.export.save(torch.export.export(CrossCompiled(), (torch.ones(1, 2),)), str(path))
    return path
