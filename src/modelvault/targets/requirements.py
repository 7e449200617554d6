"""Checking a variant's requirements against a machine, and ranking the variants that fit.

The requirements schema (the ``target`` map of every manifest) is drawn in
:mod:`modelvault.targets`. Nothing here probes anything: checks take a
:class:`~modelvault.targets.machine.Machine`, so a test or ``mvault show`` can
describe any machine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .machine import Machine

__all__ = [
    "HW_COMPAT_MIN",
    "KNOWN_KEYS",
    "check",
    "is_tensorrt",
    "parse_device_index",
    "parse_sm",
    "rank",
    "tensorrt_mismatch",
]

KNOWN_KEYS = frozenset(
    {
        "device",
        "compute_capabilities",
        "tensorrt",
        "tensorrt_version_compatible",
        "torch_tensorrt_abi",
        "torch_tensorrt",
        "platform",
        "cuda",
        "kind",
        "built_on",
    }
)
#: Hardware-compatible TensorRT engines run on Ampere (SM 8.0) and newer.
HW_COMPAT_MIN = (8, 0)
_SM_RE = re.compile(r"^(\d{1,2})\.(\d{1,2})$")
_PLATFORM_ALIASES = {"win_x86_64": "windows_x86_64", "win_arm64": "windows_arm64"}


def parse_device_index(device: str | None) -> tuple[str, int | None]:
    """``"cuda:1"`` -> ``("cuda", 1)``; ``"cuda"`` -> ``("cuda", None)``; ``None`` -> ``("cpu", None)``."""
    if device is None:
        return "cpu", None
    kind, _, idx = str(device).partition(":")
    kind = kind.strip().lower()
    if idx:
        if not idx.isdigit():
            from ..errors import InvalidDeviceError

            raise InvalidDeviceError(f"device {device!r} is not 'cpu', 'cuda' or 'cuda:N'")
        return kind, int(idx)
    return kind, None


def parse_sm(text: Any) -> tuple[int, int] | None:
    if not isinstance(text, str):
        return None
    m = _SM_RE.match(text.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


#: Version-compatible engines across a major boundary, as NVIDIA's support matrix lists them.
_VC_CROSS_MAJOR = frozenset({(8, 9), (8, 10), (10, 11)})


def _numbers(v: str) -> tuple[int, ...]:
    out = []
    for part in re.split(r"[.+-]", v.strip()):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def tensorrt_mismatch(built: str, here: str, version_compatible: bool) -> str | None:
    """Why an engine built with TensorRT ``built`` cannot run on TensorRT ``here`` (None when it can).

    TensorRT runs a plan only on the exact version that built it, unless the
    plan was built version-compatible (TensorRT 8.6 and later), which also runs
    on later runtimes of the same major and on the cross-major pairs NVIDIA
    supports (8 -> 9, 8 -> 10, 10 -> 11). ``built`` is compared in every
    component it records (an older manifest recorded only major.minor).

    >>> tensorrt_mismatch("10.3.0", "10.3.0.26", False) is None
    True
    >>> tensorrt_mismatch("10.3.0", "10.4.0", True) is None
    True
    """
    b, h = _numbers(built), _numbers(here)
    if not b or not h:
        return f"TensorRT version {built!r} or {here!r} is not a version number"
    if h[: len(b)] == b:
        return None
    if version_compatible:
        if b < (8, 6):
            return f"built version-compatible with TensorRT {built}, but that needs TensorRT 8.6 or later"
        later = h > b
        if later and (h[0] == b[0] or (b[0], h[0]) in _VC_CROSS_MAJOR):
            return None
        return (
            f"built version-compatible with TensorRT {built}; this machine has TensorRT {here} "
            "(such engines run on the same or a later TensorRT of the same major, or 8 -> 9/10, 10 -> 11)"
        )
    return (
        f"built with TensorRT {built}; this machine has TensorRT {here} (an engine runs only on the "
        "exact TensorRT version that built it, unless compiled with version_compatible=True)"
    )


def is_tensorrt(req: Mapping[str, Any]) -> bool:
    kind = req.get("kind")
    if kind is not None:
        return bool(kind == "tensorrt")
    return "tensorrt" in req or "torch_tensorrt_abi" in req


def check(
    requirements: Mapping[str, Any], machine: Machine, device: str | None = None
) -> list[str]:
    """Reasons the variant with these requirements does not run here; empty when it fits.

    >>> m = Machine("linux_x86_64", True, (GpuDevice(0, "A100", (8, 0)),), tensorrt="10.3.0")
    >>> check({"device": "cuda", "compute_capabilities": ["9.0"], "tensorrt": "10.3"}, m, "cuda:0")
    ['built for compute capability 9.0; cuda:0 (A100) is 8.0']
    """
    reasons: list[str] = []
    unknown = sorted(set(requirements) - KNOWN_KEYS)
    if unknown:
        reasons.append(
            f"requires {', '.join(unknown)}, which this modelvault cannot check; upgrade modelvault"
        )
    kind, index = parse_device_index(device)
    want = requirements.get("device", "any")
    trt = is_tensorrt(requirements)
    needs_cuda = want == "cuda" or trt or "compute_capabilities" in requirements
    if want not in ("any", "cuda"):
        reasons.append(
            f"requires device {want!r}, which this modelvault does not know; upgrade modelvault"
        )
    if needs_cuda:
        if kind != "cuda":
            reasons.append(f"needs a CUDA device; {device or 'cpu'} was asked for")
        elif not machine.cuda_available:
            why = machine.problems.get("cuda") or machine.problems.get("torch")
            reasons.append("needs a CUDA GPU; this machine has none" + (f" ({why})" if why else ""))
    gpu = None
    if kind == "cuda" and machine.cuda_available:
        gpu = machine.gpu(index if index is not None else 0)
        if gpu is None:
            reasons.append(
                f"{device} does not exist here (this machine has {len(machine.devices)} GPU(s))"
            )
    ccs = requirements.get("compute_capabilities")
    if ccs is not None and gpu is not None:
        label = f"cuda:{gpu.index} ({gpu.name})"
        if isinstance(ccs, Mapping):
            low = parse_sm(ccs.get("min"))
            if low is None:
                reasons.append(f"compute_capabilities {dict(ccs)!r} is malformed")
            elif gpu.capability < low:
                reasons.append(
                    f"hardware-compatible engine needs compute capability >= {low[0]}.{low[1]} "
                    f"(Ampere or newer); {label} is {gpu.sm}"
                )
        elif isinstance(ccs, Sequence) and not isinstance(ccs, str):
            allowed = [s for s in (parse_sm(c) for c in ccs) if s is not None]
            if len(allowed) != len(ccs) or not allowed:
                reasons.append(f"compute_capabilities {list(ccs)!r} is malformed")
            elif gpu.capability not in allowed:
                names = ", ".join(f"{a}.{b}" for a, b in allowed)
                reasons.append(f"built for compute capability {names}; {label} is {gpu.sm}")
        else:
            reasons.append(f"compute_capabilities {ccs!r} is malformed")
    need_trt = requirements.get("tensorrt")
    if need_trt is not None:
        if not machine.tensorrt:
            why = machine.problems.get("tensorrt") or "tensorrt is not installed"
            reasons.append(f"needs TensorRT {need_trt}; {why}")
        else:
            why_not = tensorrt_mismatch(
                str(need_trt),
                machine.tensorrt,
                bool(requirements.get("tensorrt_version_compatible")),
            )
            if why_not:
                reasons.append(why_not)
    need_abi = requirements.get("torch_tensorrt_abi")
    if need_abi is not None:
        if machine.torch_tensorrt is None:
            why = machine.problems.get("torch_tensorrt") or "torch_tensorrt is not installed"
            reasons.append(f"needs Torch-TensorRT runtime ABI {need_abi}; {why}")
        elif machine.torch_tensorrt_abi is not None and str(need_abi) != machine.torch_tensorrt_abi:
            reasons.append(
                f"serialized for Torch-TensorRT runtime ABI {need_abi}; this machine's torch_tensorrt "
                f"{machine.torch_tensorrt} has ABI {machine.torch_tensorrt_abi}"
            )
    need_platform = requirements.get("platform")
    if need_platform is not None:
        want_p = _PLATFORM_ALIASES.get(str(need_platform), str(need_platform))
        if want_p != machine.platform:
            reasons.append(f"built for platform {want_p}; this machine is {machine.platform}")
    need_cuda = requirements.get("cuda")
    if need_cuda is not None and kind == "cuda":
        have_cuda = (machine.cuda or "").split(".")[0]
        if not have_cuda:
            reasons.append(f"needs CUDA {need_cuda}; this machine's torch has no CUDA")
        elif have_cuda != str(need_cuda).split(".")[0]:
            reasons.append(
                f"built against CUDA {need_cuda}; this machine's torch uses CUDA {machine.cuda}"
            )
    return reasons


def _score(req: Mapping[str, Any]) -> int:
    if is_tensorrt(req):
        return 3 if not isinstance(req.get("compute_capabilities"), Mapping) else 2
    return 1 if req.get("device") == "cuda" else 0


def rank(
    variants: Sequence[tuple[str, Mapping[str, Any]]], machine: Machine, device: str | None
) -> tuple[list[str], list[tuple[str, str]]]:
    """Order the fitting variants best first; list the others with their reasons.

    ``variants`` are ``(id, requirements)`` pairs. Returns ``(fitting_ids,
    [(id, "; ".join(reasons)), ...])``.
    """
    fitting: list[tuple[int, int, str]] = []
    rejected: list[tuple[str, str]] = []
    for pos, (vid, req) in enumerate(variants):
        reasons = check(req, machine, device)
        if reasons:
            rejected.append((vid, "; ".join(reasons)))
        else:
            fitting.append((-_score(req), pos, vid))
    fitting.sort()
    return [vid for _, _, vid in fitting], rejected
