"""From the engines of one program to the requirements of its variant.

The schema is documented in :mod:`modelvault.targets`. Contradictions are
refused here, at push, so nothing unloadable is ever registered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ...errors import EngineInfoError, InvalidArgumentError
from ...targets import HW_COMPAT_MIN
from .engine_info import EngineInfo, normalize_platform

__all__ = ["requirements_from_engines", "validate_requirements"]

_VERSION_RE = re.compile(r"^\d+(\.\d+)*([.+-].*)?$")


def _major_minor(version: str, what: str) -> str:
    if not _VERSION_RE.match(version.strip()):
        raise InvalidArgumentError(
            f"{what} version {version!r} is not a version number like 10.3.0"
        )
    parts = re.split(r"[.+-]", version.strip())
    return ".".join(parts[:2]) if len(parts) >= 2 else parts[0]


def requirements_from_engines(
    engines: Sequence[EngineInfo],
    *,
    tensorrt: str | None,
    torch_tensorrt: str | None = None,
    cuda: str | None = None,
    platform: str | None = None,
) -> dict[str, Any]:
    """The ``target`` map of a TensorRT variant holding ``engines``.

    ``tensorrt``, ``torch_tensorrt`` and ``cuda`` describe the environment that
    built the engines (the engine info does not record them); ``platform`` is
    used only for ABIs older than "6", whose engines do not record theirs.
    Raises :class:`EngineInfoError` when the engines contradict each other or
    themselves, :class:`InvalidArgumentError` when a needed fact is missing.
    """
    if not engines:
        raise EngineInfoError("the program holds no TensorRT engine")
    abis = sorted({e.abi for e in engines})
    if len(abis) > 1:
        raise EngineInfoError(
            f"the program mixes engines of Torch-TensorRT ABIs {', '.join(abis)}; recompile it"
        )
    for e in engines:
        if e.device_type != "gpu":
            raise EngineInfoError(
                f"engine {e.name!r} targets a DLA core; modelvault registers GPU engines only"
            )
        if e.hw_compatible and e.compute_capability < HW_COMPAT_MIN:
            raise EngineInfoError(
                f"engine {e.name!r} claims to be hardware-compatible but was built on compute capability "
                f"{e.sm} ({e.device_name}); TensorRT hardware compatibility needs Ampere (8.0) or newer. "
                "Rebuild it on an Ampere or newer GPU, or without hardware_compatible=True"
            )
    exact = sorted({e.sm for e in engines if not e.hw_compatible}, key=_sm_key)
    if len(exact) > 1:
        raise EngineInfoError(
            f"the program's engines were built for different GPUs (compute capabilities {', '.join(exact)}); "
            "a variant runs on one GPU architecture: compile one program per architecture"
        )
    # TensorRT's hardware compatibility level (kAMPERE_PLUS) runs on every Ampere or newer
    # GPU, whichever of them built the engine.
    ccs: Any = exact or {"min": f"{HW_COMPAT_MIN[0]}.{HW_COMPAT_MIN[1]}"}
    platforms = sorted({e.target_platform for e in engines if e.target_platform is not None})
    if len(platforms) > 1:
        raise EngineInfoError(
            f"the program's engines target different platforms: {', '.join(platforms)}"
        )
    plat = platforms[0] if platforms else (normalize_platform(platform) if platform else None)
    if plat == "unknown":
        raise EngineInfoError(
            "the engines record platform 'unknown'; Torch-TensorRT could not tell where they were built. "
            "Rebuild on a supported platform"
        )
    if not tensorrt:
        raise InvalidArgumentError(
            "cannot tell which TensorRT version built these engines (the program does not record it and "
            "tensorrt is not importable here)",
            hint="push from the environment that built the engines (with tensorrt importable), or pass "
            "frameworks={'tensorrt': '10.3.0', 'torch_tensorrt': '2.5.0', 'cuda': '12.4'}",
        )
    _major_minor(tensorrt, "TensorRT")  # validates the form
    req: dict[str, Any] = {
        "kind": "tensorrt",
        "device": "cuda",
        "compute_capabilities": ccs,
        # The full version: a plan runs only on the exact TensorRT that built it ...
        "tensorrt": tensorrt.strip(),
        "torch_tensorrt_abi": abis[0],
    }
    # ... unless built version-compatible, which the compile settings in the metadata record.
    if all(e.settings.get("version_compatible") is True for e in engines):
        req["tensorrt_version_compatible"] = True
    if torch_tensorrt:
        req["torch_tensorrt"] = _major_minor(torch_tensorrt, "Torch-TensorRT")
    if plat:
        req["platform"] = plat
    if cuda:
        req["cuda"] = _major_minor(cuda, "CUDA").split(".")[0]
    validate_requirements(req)
    return req


def _sm_key(sm: str) -> tuple[int, int]:
    a, _, b = sm.partition(".")
    return int(a), int(b or 0)


def validate_requirements(req: Mapping[str, Any]) -> None:
    """Refuse a requirements map that contradicts itself (raises :class:`EngineInfoError`)."""
    ccs = req.get("compute_capabilities")
    if isinstance(ccs, Mapping):
        low = ccs.get("min")
        if not isinstance(low, str) or _sm_key(low) < HW_COMPAT_MIN:
            raise EngineInfoError(
                f"hardware-compatible requirement min={low!r} is below 8.0: TensorRT hardware "
                "compatibility covers Ampere (8.0) and newer only"
            )
    if req.get("kind") == "tensorrt" and req.get("device") != "cuda":
        raise EngineInfoError("a TensorRT variant must require device 'cuda'")
