"""Device strings: parse, check that the device exists, check it has room.

Accepted: ``"cpu"``, ``"cuda"`` (the current CUDA device), ``"cuda:N"``, or a
``torch.device`` of those kinds. Everything is checked before the first byte
is allocated, so a refused load leaves nothing behind.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ...errors import DeviceOutOfMemoryError, DeviceUnavailableError, InvalidDeviceError

__all__ = ["check_free_memory", "human_bytes", "resolve_device"]

_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d{1,4}))?$")


def human_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # unreachable


def resolve_device(device: Any) -> torch.device:
    """Parse and validate ``device``; a CUDA device comes back with its index set.

    Raises :class:`InvalidDeviceError` for a string that names no kind of
    device modelvault loads onto, and :class:`DeviceUnavailableError` for a
    CUDA device this machine does not have.
    """
    if isinstance(device, torch.device):
        text = str(device)
    elif isinstance(device, str):
        text = device.strip()
    else:
        raise InvalidDeviceError(
            f"device must be a string like 'cpu' or 'cuda:0', got {type(device).__name__}"
        )
    m = _DEVICE_RE.match(text)
    if not m:
        raise InvalidDeviceError(
            f"device {text!r:.60} is not one modelvault can load onto",
            hint="use 'cpu', 'cuda' or 'cuda:N'",
        )
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        if index is not None and index != "0":
            raise InvalidDeviceError(f"device {text!r} does not exist; the CPU device is 'cpu'")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device {text!r} was requested but this machine has no usable CUDA device "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'})",
            hint="load with device='cpu', or run on a machine with a GPU and a CUDA build of torch",
        )
    count = torch.cuda.device_count()
    idx = torch.cuda.current_device() if index is None else int(index)
    if idx >= count:
        raise DeviceUnavailableError(
            f"device {text!r} does not exist: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})",
            hint="pick an index below the device count",
        )
    return torch.device("cuda", idx)


def check_free_memory(device: torch.device, needed: int, *, what: str = "the model") -> None:
    """Raise :class:`DeviceOutOfMemoryError` unless ``device`` has ``needed`` bytes free.

    Uses ``torch.cuda.mem_get_info`` (the driver's view, which counts other
    processes too) plus what torch's caching allocator holds in reserve.
    """
    if device.type != "cuda" or needed <= 0:
        return
    free, total = torch.cuda.mem_get_info(device)
    reusable = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    available = free + max(reusable, 0)
    if needed > available:
        raise DeviceOutOfMemoryError(
            f"{what} needs {human_bytes(needed)} ({needed} bytes) on {device} but only "
            f"{human_bytes(available)} ({available} bytes) of {human_bytes(total)} is free",
            hint="free GPU memory (other models, other processes) or load onto another device",
        )
