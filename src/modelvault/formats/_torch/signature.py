"""What every torch plugin records: signature, framework versions, target, sizes."""

from __future__ import annotations

import platform
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ..container import Draft
from .dtypes import to_name

__all__ = ["built_on", "describe_value", "dim", "fill_common", "frameworks"]


def dim(d: Any) -> int | str:
    """A dimension: an int when static, its symbol's text (``"s0"``, ``"2*s1"``) when dynamic."""
    if isinstance(d, int):
        return d
    # int() of a SymInt would give its example value; its text is the symbol.
    text = str(d)
    return int(text) if text.lstrip("-").isdigit() else text


def describe_value(name: str, v: Any) -> dict[str, Any]:
    """One signature entry: ``{"name", "dtype", "shape"}`` (tensor) or ``{"name", "type"}``."""
    if isinstance(v, torch.Tensor):
        try:
            dtype = to_name(v.dtype)
        except Exception:
            dtype = str(v.dtype).removeprefix("torch.")
        return {"name": name, "dtype": dtype, "shape": [dim(d) for d in v.shape]}
    if v is None:
        return {"name": name, "type": "None"}
    if isinstance(v, (int, float, bool, str)):
        return {"name": name, "type": type(v).__name__, "value": v}
    return {"name": name, "type": type(v).__name__}


def frameworks() -> dict[str, str]:
    """torch's version and, where it has one, the CUDA version it was built with."""
    out = {"torch": str(torch.__version__), "python": platform.python_version()}
    if torch.version.cuda:
        out["cuda"] = str(torch.version.cuda)
    return out


def built_on(devices: Iterable[torch.device]) -> str:
    """``"cpu"`` or ``"cuda:<major>.<minor>"`` (compute capability) of the first CUDA device seen."""
    for d in devices:
        if d.type == "cuda":
            major, minor = torch.cuda.get_device_capability(d)
            return f"cuda:{major}.{minor}"
    return "cpu"


def fill_common(
    draft: Draft,
    *,
    parameters: Mapping[str, torch.Tensor],
    stored: Mapping[str, torch.Tensor],
    signature: Mapping[str, Any],
    device_kind: str = "any",
) -> None:
    """Fill ``frameworks``, ``target``, ``signature`` and the size metadata of ``draft``.

    ``parameters`` are the trainable weights (counted once per storage view);
    ``stored`` is every tensor written to the tensor section (for the byte total).
    """
    seen: set[tuple[Any, ...]] = set()
    count = 0
    nbytes = 0
    for t in parameters.values():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.numel() and key in seen:
            continue
        seen.add(key)
        count += t.numel()
        nbytes += t.numel() * t.element_size()
    total = sum(t.numel() * t.element_size() for t in _unique(stored.values()))
    draft.frameworks.update(frameworks())
    draft.target.update(
        {"device": device_kind, "built_on": built_on(t.device for t in stored.values())}
    )
    draft.signature.update(signature)
    draft.metadata.update({"parameters": count, "parameter_bytes": nbytes, "tensor_bytes": total})


def _unique(ts: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    seen: set[tuple[Any, ...]] = set()
    for t in ts:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out.append(t)
    return out
