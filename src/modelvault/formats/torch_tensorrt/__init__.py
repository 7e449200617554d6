"""The ``torch_tensorrt`` format plugin and its torch-free helpers.

``engine_info`` parses the serialized info list of a TensorRT engine (every
Torch-TensorRT ABI from 2.2 on), ``archive`` finds engines inside saved
programs, ``requirements`` turns engines into a variant's requirements, and
``plugin`` packs and loads programs. Only ``plugin``'s load, build and refit
paths import torch or torch_tensorrt, and only when called.
"""

from __future__ import annotations

from .build import build_variant_for, recorded_compile_settings
from .engine_info import ABI_LAYOUTS, EngineInfo, parse_engine_info
from .plugin import TorchTensorRTPlugin, build_variant, import_runtime, inspect_program, refit
from .requirements import requirements_from_engines, validate_requirements

__all__ = [
    "ABI_LAYOUTS",
    "EngineInfo",
    "TorchTensorRTPlugin",
    "build_variant",
    "build_variant_for",
    "import_runtime",
    "inspect_program",
    "parse_engine_info",
    "recorded_compile_settings",
    "refit",
    "requirements_from_engines",
    "validate_requirements",
]
