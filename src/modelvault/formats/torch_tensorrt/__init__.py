"""The ``torch_tensorrt`` format plugin and its torch-free helpers.

``engine_info`` parses the serialized info list of a TensorRT engine (every
Torch-TensorRT ABI from 2.2 on), ``archive`` finds engines inside saved
programs, ``requirements`` turns engines into a variant's requirements, and
``plugin`` packs and loads programs. Only ``plugin``'s load, build and refit
paths import torch or torch_tensorrt, and only when called.
"""

from __future__ import annotations

from .build import build_variant_for, load_options, recorded_compile_settings, wants_build
from .engine_info import ABI_LAYOUTS, EngineInfo, parse_engine_info
from .plugin import (
    TorchTensorRTPlugin,
    build_variant,
    compile_portable,
    import_runtime,
    inputs_from_signature,
    inspect_program,
    refit,
)
from .requirements import requirements_from_engines, validate_requirements

__all__ = [
    "ABI_LAYOUTS",
    "EngineInfo",
    "TorchTensorRTPlugin",
    "build_variant",
    "build_variant_for",
    "compile_portable",
    "import_runtime",
    "inputs_from_signature",
    "inspect_program",
    "load_options",
    "parse_engine_info",
    "recorded_compile_settings",
    "refit",
    "requirements_from_engines",
    "validate_requirements",
    "wants_build",
]
