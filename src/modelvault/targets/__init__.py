"""Which variant runs on this machine: the requirements schema, the machine, the ranking.

Three modules: :mod:`.machine` probes this machine (GPUs, CUDA, TensorRT),
:mod:`.requirements` checks a variant's requirements against a machine and
ranks the variants that fit, :mod:`.render` turns requirements into the line
``mvault show`` prints.

Importing this module imports nothing heavy; :meth:`Machine.probe` imports
torch, tensorrt and torch_tensorrt only when they are installed.

Requirements schema
-------------------
Every variant's manifest carries a ``target`` map (its requirements). Keys,
all optional except ``device``:

| key | value | meaning |
| --- | --- | --- |
| ``device`` | ``"any"`` or ``"cuda"`` | runs on any device / needs a CUDA GPU |
| ``compute_capabilities`` | ``["8.6"]`` or ``{"min": "8.0"}`` | exact SM list (a TensorRT engine built for one GPU architecture), or a lower bound (hardware-compatible engines: Ampere and newer) |
| ``tensorrt`` | ``"10.3.0.26"`` | TensorRT version that built the engines; must match exactly, in every component recorded (older manifests record major.minor) |
| ``tensorrt_version_compatible`` | ``true`` | engines built ``version_compatible=True``: they also run on later TensorRT (same major, or 8 -> 9/10, 10 -> 11) |
| ``torch_tensorrt_abi`` | ``"9"`` | Torch-TensorRT runtime ABI of the serialized engines; must match |
| ``torch_tensorrt`` | ``"2.13"`` | Torch-TensorRT release that wrote it (informational) |
| ``platform`` | ``"linux_x86_64"`` | ``linux_x86_64``, ``linux_aarch64``, ``windows_x86_64``, ``windows_arm64`` |
| ``cuda`` | ``"12"`` | CUDA major version the engines were built against; must match |
| ``kind`` | ``"tensorrt"`` or ``"portable"`` | how the loader ranks it (default: ``"tensorrt"`` when ``tensorrt`` is set) |
| ``built_on`` | ``"cpu"``, ``"cuda:9.0"`` | the device the artifact was built on (informational) |

A key this modelvault does not know makes the variant not fit (with the
reason "upgrade modelvault"), so an old reader never loads a variant whose
constraints it cannot check.

Ranking: an exact-SM TensorRT variant beats a hardware-compatible TensorRT
variant, which beats a portable CUDA variant, which beats a portable
any-device variant. Ties keep the caller's order.
"""

from __future__ import annotations

from .machine import GpuDevice, Machine, current_platform
from .render import describe_requirements
from .requirements import (
    HW_COMPAT_MIN,
    KNOWN_KEYS,
    check,
    parse_device_index,
    rank,
    tensorrt_mismatch,
)

__all__ = [
    "HW_COMPAT_MIN",
    "KNOWN_KEYS",
    "GpuDevice",
    "Machine",
    "check",
    "current_platform",
    "describe_requirements",
    "parse_device_index",
    "rank",
    "tensorrt_mismatch",
]
