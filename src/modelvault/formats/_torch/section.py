"""torch tensors into the tensor section, and tensor-section bytes back into tensors.

Writing hands :class:`TensorSectionBuilder` a byte view of each tensor's own
memory (no copy for a dense CPU tensor). A dense tensor whose strides are a
permutation of row-major ones (a transpose, channels-last) is stored in its
memory order with its own strides, so it comes back with the same strides.
Tensors that are the very same view of the same storage (tied weights) are
stored once and named again as aliases.

Reading puts every tensor over one buffer that holds the whole section, on the
CPU or the GPU, without copying; but each tensor gets a storage of its own (a
slice of the buffer's storage that keeps the buffer alive). torch's savers
(``torch.save``, ``torch.jit.save``, ``torch.export.save``, safetensors) assume a
storage holds one dtype and that a tensor spans what its storage means to hold;
one storage under tensors of several dtypes makes them write wrong bytes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import torch

from ...errors import PayloadMismatchError
from ..container import TensorSectionBuilder
from ..manifest import Manifest, TensorEntry, contiguous_strides
from .dtypes import from_name, to_name

__all__ = ["add_tensors", "dense_order", "owns_storage", "raw_bytes", "views_from_buffer"]

if sys.byteorder != "little":  # the section is little-endian and views are zero-copy
    raise ImportError("modelvault's torch formats need a little-endian machine")


def dense_order(t: torch.Tensor) -> bool:
    """True when ``t``'s elements fill ``numel`` consecutive slots of its storage, each once.

    That is: its strides are row-major strides of some permutation of its
    dimensions (dimensions of size 1 may have any stride).
    """
    dims = sorted((s, n) for n, s in zip(t.shape, t.stride()) if n != 1)
    expect = 1
    for s, n in dims:
        if s != expect:
            return False
        expect *= n
    return True


def owns_storage(t: torch.Tensor) -> bool:
    """True when ``t`` covers its whole storage exactly once (what a freshly made tensor does)."""
    nbytes = t.numel() * t.element_size()
    return (
        t.storage_offset() == 0
        and t.untyped_storage().nbytes() == nbytes
        and (nbytes == 0 or dense_order(t))
    )


def raw_bytes(t: torch.Tensor) -> tuple[Any, tuple[int, ...]]:
    """A uint8 numpy view of a CPU tensor's bytes in memory order, and the strides that read them.

    Dense tensors (any dimension order) are not copied; others are made contiguous.
    """
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.numel() == 0:
        return torch.empty(0, dtype=torch.uint8).numpy(), contiguous_strides(t.shape)
    if not dense_order(t):
        t = t.contiguous()
    # The same elements, read in memory order: one flat run of the storage.
    flat = t.as_strided((t.numel(),), (1,))
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    strides = tuple(t.stride()) if not t.is_contiguous() else contiguous_strides(t.shape)
    return flat.numpy(), strides


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
        dtype = to_name(t.dtype)  # refuses dtypes the section lacks before reading any byte
        data, strides = raw_bytes(t)
        builder.add(name, dtype, tuple(t.shape), data, strides)
    return aliases


def views_from_buffer(
    manifest: Manifest, blob_index: int, buffer: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Each tensor of blob ``blob_index`` as a view into ``buffer`` (the whole blob, uint8)."""
    out: dict[str, torch.Tensor] = {}
    storage = buffer.untyped_storage()
    base = int(buffer.storage_offset())
    for e in manifest.tensors:
        if e.blob == blob_index:
            out[e.name] = _view(storage, base, buffer.device, e)
    return out


def _view(storage: Any, base: int, device: torch.device, e: TensorEntry) -> torch.Tensor:
    dtype = from_name(e.dtype)
    if e.nbytes == 0:
        return torch.empty(e.shape, dtype=dtype, device=device)
    # A storage slice points into the buffer's memory (no copy) and holds a
    # reference to the buffer's storage, so the mapping or device block lives
    # as long as any tensor over it. Offsets are 4 KiB-aligned.
    start = base + e.offset
    piece = storage[start : start + e.nbytes]
    return torch.empty(0, dtype=dtype, device=device).set_(piece, 0, e.shape, e.strides)
