"""What this machine offers a variant: platform, GPUs, CUDA, TensorRT, Torch-TensorRT.

Importing this module imports nothing heavy; :meth:`Machine.probe` imports
torch, tensorrt and torch_tensorrt only when they are installed, once per
process (``refresh=True`` probes again).
"""

from __future__ import annotations

import importlib
import importlib.util
import platform as _platform
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GpuDevice", "Machine", "current_platform"]


@dataclass(frozen=True)
class GpuDevice:
    """One CUDA device: its index, name and compute capability."""

    index: int
    name: str
    capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"{self.capability[0]}.{self.capability[1]}"


@dataclass(frozen=True)
class Machine:
    """What this (or a described) machine offers to a variant.

    ``problems`` maps a package name to why it is not usable (``"torch_tensorrt":
    "No module named 'tensorrt'"``), for messages.
    """

    platform: str
    cuda_available: bool = False
    devices: tuple[GpuDevice, ...] = ()
    cuda: str | None = None
    tensorrt: str | None = None
    torch_tensorrt: str | None = None
    torch_tensorrt_abi: str | None = None
    torch: str | None = None
    problems: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def probe(cls, device: str | None = None, *, refresh: bool = False) -> Machine:
        """Describe this machine (cached; ``refresh=True`` probes again).

        ``device`` is accepted for symmetry with :func:`rank`; the probe
        always lists every visible GPU.
        """
        global _cached
        with _lock:
            if _cached is None or refresh:
                _cached = _probe()
            return _cached

    def gpu(self, index: int) -> GpuDevice | None:
        for d in self.devices:
            if d.index == index:
                return d
        return None


_cached: Machine | None = None
_lock = threading.Lock()


def current_platform() -> str:
    """``linux_x86_64``-style tag of the running interpreter's platform."""
    system = _platform.system().lower()
    arch = _platform.machine().lower()
    arch = {
        "amd64": "x86_64",
        "x64": "x86_64",
        "arm64": "aarch64" if system == "linux" else "arm64",
    }.get(arch, arch)
    if system == "windows":
        system = "windows"
        arch = "arm64" if arch in ("aarch64", "arm64") else arch
    return f"{system}_{arch}"


def _version(mod: Any) -> str | None:
    v = getattr(mod, "__version__", None)
    return str(v) if v is not None else None


def _probe() -> Machine:
    problems: dict[str, str] = {}
    info: dict[str, Any] = {"platform": current_platform()}
    torch = _try_import("torch", problems)
    if torch is not None:
        info["torch"] = _version(torch)
        try:
            info["cuda"] = torch.version.cuda
            if torch.cuda.is_available():
                info["cuda_available"] = True
                info["devices"] = tuple(
                    GpuDevice(
                        i, torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i))
                    )
                    for i in range(torch.cuda.device_count())
                )
        except Exception as exc:  # a broken driver must not break listing; say why instead
            problems["cuda"] = f"{type(exc).__name__}: {exc}"
    trt = _try_import("tensorrt", problems)
    if trt is not None:
        info["tensorrt"] = _version(trt)
    tt = _try_import("torch_tensorrt", problems)
    if tt is not None:
        info["torch_tensorrt"] = _version(tt)
        info["torch_tensorrt_abi"] = _runtime_abi(tt)
    return Machine(**info, problems=problems)


def _try_import(name: str, problems: dict[str, str]) -> Any:
    try:
        if importlib.util.find_spec(name) is None:
            problems[name] = f"{name} is not installed"
            return None
    except (ImportError, ValueError) as exc:
        problems[name] = f"{type(exc).__name__}: {exc}"
        return None
    try:
        return importlib.import_module(name)
    except (
        Exception
    ) as exc:  # ImportError, OSError (missing .so), RuntimeError from a broken install
        problems[name] = f"{name} is not importable: {type(exc).__name__}: {exc}"
        return None


def _runtime_abi(tt: Any) -> str | None:
    try:
        import torch

        return str(torch.ops.tensorrt.ABI_VERSION())
    except Exception:  # the C++ runtime is optional; fall back to the Python layout module
        pass
    for mod_name in (
        "torch_tensorrt.dynamo.runtime._serialized_engine_layout",
        "torch_tensorrt.dynamo.runtime._TorchTensorRTModule",
    ):
        try:
            v = getattr(importlib.import_module(mod_name), "ABI_VERSION", None)
        except Exception:
            continue
        if v is not None:
            return str(v)
    return None
