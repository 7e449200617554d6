"""Requirements as people read them (``mvault show``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .requirements import is_tensorrt

__all__ = ["describe_requirements"]


def describe_requirements(req: Mapping[str, Any]) -> str:
    """One line for ``mvault show``: ``TensorRT 10.3, ABI 9, SM 8.6, linux_x86_64, CUDA 12``."""
    parts: list[str] = []
    if is_tensorrt(req):
        later = " or later (version-compatible)" if req.get("tensorrt_version_compatible") else ""
        parts.append(f"TensorRT {req.get('tensorrt', '?')}{later}")
        if "torch_tensorrt_abi" in req:
            parts.append(f"ABI {req['torch_tensorrt_abi']}")
    else:
        parts.append("portable" + (" (CUDA)" if req.get("device") == "cuda" else ""))
    ccs = req.get("compute_capabilities")
    if isinstance(ccs, Mapping):
        parts.append(f"SM >= {ccs.get('min')} (hardware-compatible)")
    elif isinstance(ccs, Sequence) and not isinstance(ccs, str):
        parts.append("SM " + "/".join(str(c) for c in ccs))
    if "platform" in req:
        parts.append(str(req["platform"]))
    if "cuda" in req:
        parts.append(f"CUDA {req['cuda']}")
    return ", ".join(parts)
