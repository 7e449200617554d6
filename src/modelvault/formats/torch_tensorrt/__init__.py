"""The ``torch_tensorrt`` format plugin and its torch-free helpers.

``engine_info`` parses the serialized info list of a TensorRT engine (every
Torch-TensorRT ABI from 2.2 on), ``archive`` finds engines inside saved
programs, ``requirements`` turns engines into a variant's requirements, and
``plugin`` packs and loads programs, and ``build`` is the plugin's side of
the format interface's version hooks (refit from a sibling variant, build on
miss). Only the load, build and refit paths import torch or torch_tensorrt,
and only when called.
"""

from __future__ import annotations

from .build import (
    REFIT_NEED,
    build_on_miss,
    build_variant,
    check_compile_settings,
    compile_parameters,
    compile_portable,
    inputs_from_signature,
    recorded_compile_settings,
    refit,
    wants_build,
)
from .engine_info import ABI_LAYOUTS, EngineInfo, parse_engine_info
from .plugin import (
    TorchTensorRTPlugin,
    device_problems,
    import_runtime,
    inspect_program,
)
from .requirements import requirements_from_engines, validate_requirements

__all__ = [
    "ABI_LAYOUTS",
    "REFIT_NEED",
    "EngineInfo",
    "TorchTensorRTPlugin",
    "build_on_miss",
    "build_variant",
    "check_compile_settings",
    "compile_parameters",
    "compile_portable",
    "device_problems",
    "import_runtime",
    "inputs_from_signature",
    "inspect_program",
    "parse_engine_info",
    "recorded_compile_settings",
    "refit",
    "requirements_from_engines",
    "validate_requirements",
    "wants_build",
]
