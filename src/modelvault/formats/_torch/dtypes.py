"""torch dtypes and the tensor section's dtype names (``manifest.DTYPE_SIZES``)."""

from __future__ import annotations

import torch

from ...errors import PayloadMismatchError
from ..manifest import DTYPE_SIZES

__all__ = ["from_name", "itemsize", "to_name"]

_BY_NAME: dict[str, torch.dtype] = {}
for _name in DTYPE_SIZES:
    # Some names (the float8 variants, the wider unsigned ints) only exist in
    # newer torch builds; a dtype the running torch lacks simply cannot occur.
    _dt = getattr(torch, _name, None)
    if isinstance(_dt, torch.dtype):
        _BY_NAME[_name] = _dt
_BY_DTYPE: dict[torch.dtype, str] = {dt: name for name, dt in _BY_NAME.items()}


def to_name(dtype: torch.dtype) -> str:
    """The tensor-section name of ``dtype``; :class:`PayloadMismatchError` if it has none."""
    try:
        return _BY_DTYPE[dtype]
    except KeyError:
        raise PayloadMismatchError(
            f"tensors of dtype {dtype} cannot be stored in the tensor section",
            hint=f"convert them to one of: {', '.join(sorted(_BY_NAME))}",
        ) from None


def from_name(name: str) -> torch.dtype:
    """The torch dtype of a tensor-section dtype name."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise PayloadMismatchError(
            f"dtype {name!r} is not available in torch {torch.__version__}",
            hint="load it with a newer torch",
        ) from None


def itemsize(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return DTYPE_SIZES[to_name(dtype)]
