"""torch tensors into the tensor section, and tensor-section bytes back into tensors.

Writing hands :class:`TensorSectionBuilder` a byte view of each tensor's own
memory (no copy for a contiguous CPU tensor). Tensors that are the very same
view of the same storage (tied weights) are stored once and named again as
aliases. Reading makes every tensor a view into one buffer that holds the whole
section, on the CPU or the GPU.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import torch

from ...errors import PayloadMismatchError
from ..container import TensorSectionBuilder
from ..manifest import Manifest, TensorEntry
from .dtypes import from_name, to_name

__all__ = ["add_tensors", "views_from_buffer"]

if sys.byteorder != "little":  # the section is little-endian and views are zero-copy
    raise ImportError("modelvault's torch formats need a little-endian machine")


def _raw_bytes(t: torch.Tensor) -> Any:
    """A C-contiguous uint8 numpy view of a CPU tensor's bytes (copying only when needed)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if not t.is_contiguous():
        t = t.contiguous()
    flat = t.reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)
    return flat.numpy()


def _identity(t: torch.Tensor) -> tuple[Any, ...] | None:
    """Two tensors with the same identity are the same bytes seen the same way."""
    if t.device.type == "meta":
        return None
    return (
        t.device.type,
        t.untyped_storage().data_ptr(),
        t.storage_offset(),
        tuple(t.shape),
        tuple(t.stride()),
        t.dtype,
    )


def add_tensors(
    builder: TensorSectionBuilder, tensors: Iterable[tuple[str, torch.Tensor]]
) -> dict[str, str]:
    """Add each named tensor to ``builder``; returns ``{alias: target}`` for tied tensors.

    Meta and other data-less tensors are refused, naming the tensor.
    """
    first: dict[tuple[Any, ...], str] = {}
    aliases: dict[str, str] = {}
    for name, t in tensors:
        if not isinstance(t, torch.Tensor):
            raise PayloadMismatchError(f"{name!r} is a {type(t).__name__}, not a tensor")
        if t.device.type == "meta" or t.layout != torch.strided:
            raise PayloadMismatchError(
                f"tensor {name!r} has no data to store (device {t.device}, layout {t.layout})",
                hint="materialise it (e.g. .to('cpu'), .to_dense()) before pushing",
            )
        key = _identity(t)
        if key is not None and key in first and t.numel() > 0:
            builder.alias(name, first[key])
            aliases[name] = first[key]
            continue
        if key is not None:
            first.setdefault(key, name)
        builder.add(name, to_name(t.dtype), tuple(t.shape), _raw_bytes(t))
    return aliases


def views_from_buffer(
    manifest: Manifest, blob_index: int, buffer: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Each tensor of blob ``blob_index`` as a view into ``buffer`` (the whole blob, uint8)."""
    out: dict[str, torch.Tensor] = {}
    for e in manifest.tensors:
        if e.blob == blob_index:
            out[e.name] = _view(buffer, e)
    return out


def _view(buffer: torch.Tensor, e: TensorEntry) -> torch.Tensor:
    dtype = from_name(e.dtype)
    piece = buffer[e.offset : e.offset + e.nbytes]
    if e.nbytes == 0:
        return torch.empty(e.shape, dtype=dtype, device=buffer.device)
    # Offsets are 4 KiB-aligned, so the reinterpreting view is always legal.
    return piece.view(dtype).as_strided(e.shape, e.strides)
