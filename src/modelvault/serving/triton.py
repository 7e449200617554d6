"""``mvault pull NAME@SPEC --triton DIR``: a Triton model repository.

Triton reads ``DIR/<model>/config.pbtxt`` and ``DIR/<model>/<integer>/``
with the model file in it. What modelvault writes, per variant:

- a TorchScript variant: ``model.pt``, ``platform: "pytorch_libtorch"``;
- Torch-TensorRT variants saved as TorchScript, one per GPU architecture:
  ``model_sm86.pt`` ... and ``cc_model_filenames`` mapping each compute
  capability to its file (Triton picks the file of the GPU it runs on, else
  ``default_model_filename``); a hardware-compatible engine (Ampere and
  newer) stands in for the Ampere-and-newer capabilities no exact engine
  covers.

Inputs and outputs come from the recorded signature: TorchScript names the
inputs as its ``forward`` arguments and the outputs ``OUTPUT__<i>`` (the
PyTorch backend's conventions), dtypes as ``TYPE_*``, dynamic dimensions as
``-1``. ``max_batch_size`` is 0: the batch dimension is part of ``dims``.
A torch.export ExportedProgram is refused: Triton's PyTorch backend serves
TorchScript and AOTInductor packages (``platform: "torch_aoti"``), not
``torch.export.save`` archives. The integer version is
``major*1000000 + minor*1000 + patch``, so Triton's "latest" policy agrees
with semantic-version order; ``triton_version`` overrides it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import IncompatibleError, InvalidArgumentError
from .kserve import export_native

__all__ = ["TRITON_DTYPES", "config_pbtxt", "triton_version_of", "write_repository"]

#: modelvault dtype names -> Triton's DataType enum (model_config.proto).
TRITON_DTYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
}
#: Compute capabilities of Ampere and newer GPUs, for hardware-compatible engines.
AMPERE_PLUS = ("8.0", "8.6", "8.7", "8.9", "9.0", "10.0", "10.3", "11.0", "12.0", "12.1")


def triton_version_of(version: str) -> int:
    """``1.3.2`` -> ``1003002``: an integer whose order is the versions' order."""
    from ..registry import SemVer

    v = SemVer.parse(version)
    if v.prerelease or max(v.major, v.minor, v.patch) >= 1000 or v.major >= 9000:
        raise InvalidArgumentError(
            f"version {version} has no natural Triton version number (pre-release, or a part of 1000 or more)",
            hint="pass --triton-version N",
        )
    return v.major * 1_000_000 + v.minor * 1_000 + v.patch


def _dims(entry: Mapping[str, Any], what: str) -> list[int]:
    shape = entry.get("shape")
    if not isinstance(shape, list):
        raise IncompatibleError(
            f"{what} has no recorded shape (the signature says {entry.get('type', '?')}); "
            "Triton needs dtype and dims of every input and output",
            hint="push the TorchScript module with example_inputs=... so its signature has shapes",
        )
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def _io(entry: Mapping[str, Any], name: str, what: str) -> str:
    dims = ", ".join(str(d) for d in _dims(entry, what))
    dtype = entry.get("dtype")
    if dtype not in TRITON_DTYPES:
        raise IncompatibleError(f"{what} has dtype {dtype!r}, which Triton has no type for")
    return f'  {{\n    name: "{name}"\n    data_type: {TRITON_DTYPES[dtype]}\n    dims: [ {dims} ]\n  }}'


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_pbtxt(
    name: str,
    signature: Mapping[str, Any],
    *,
    platform: str,
    default_file: str,
    cc_files: Mapping[str, str] | None = None,
    gpu: bool = False,
) -> str:
    """The ``config.pbtxt`` text of one model (protobuf text format of ``ModelConfig``)."""
    inputs = list(signature.get("inputs") or [])
    outputs = list(signature.get("outputs") or [])
    if not inputs or not outputs:
        raise IncompatibleError(f"model {name!r} records no input/output signature to serve")
    lines = [
        f"name: {_quote(name)}",
        f"platform: {_quote(platform)}",
        "max_batch_size: 0",
        "input [",
        ",\n".join(
            _io(e, str(e.get("name") or f"INPUT__{i}"), f"input {e.get('name', i)!r}")
            for i, e in enumerate(inputs)
        ),
        "]",
        "output [",
        ",\n".join(_io(e, f"OUTPUT__{i}", f"output {i}") for i, e in enumerate(outputs)),
        "]",
        f"default_model_filename: {_quote(default_file)}",
    ]
    if cc_files:
        lines.append("cc_model_filenames [")
        lines.append(
            ",\n".join(
                f"  {{ key: {_quote(cc)} value: {_quote(f)} }}"
                for cc, f in sorted(cc_files.items(), key=lambda kv: _cc_key(kv[0]))
            )
        )
        lines.append("]")
    lines.append(f"instance_group [ {{ kind: {'KIND_GPU' if gpu else 'KIND_CPU'} }} ]")
    return "\n".join(lines) + "\n"


def _cc_key(cc: str) -> tuple[int, int]:
    a, _, b = cc.partition(".")
    return int(a), int(b or 0)


def _servable(variant: Any, manifest: Any) -> str | None:
    """Why a variant cannot be a Triton PyTorch-backend file, or None when it can."""
    if manifest.plugin == "torchscript":
        return None
    if manifest.plugin == "torch_tensorrt" and manifest.payload.get("ir") == "torchscript":
        return None
    if manifest.plugin in ("exported_program", "torch_tensorrt"):
        return (
            "a torch.export program; Triton's PyTorch backend serves TorchScript "
            "(pytorch_libtorch) and AOTInductor packages (torch_aoti), not torch.export archives"
        )
    return f"format {manifest.plugin!r} is not a model Triton's PyTorch backend runs"


def write_repository(
    vault: Any,
    spec: str,
    root: Path,
    *,
    model_name: str | None = None,
    triton_version: int | None = None,
    progress: Any = None,
) -> Path:
    """Write ``root/<model>/<version>/`` and ``root/<model>/config.pbtxt``; returns the model dir."""
    from ..loader import read_manifest

    info = vault.resolve(spec)
    name = model_name or info.model.replace("/", "_")
    number = triton_version if triton_version is not None else triton_version_of(info.version)
    if number < 1:
        raise InvalidArgumentError(f"Triton versions are positive integers, got {number}")
    portable: list[tuple[Any, Any]] = []
    engines: list[tuple[Any, Any, list[str], bool]] = []
    refused: list[str] = []
    for v in info.variants:
        m, _ = read_manifest(vault.store, v.manifest_digest)
        why = _servable(v, m)
        if why:
            refused.append(f"{v.format} {v.manifest_digest[:19]}: {why}")
            continue
        ccs = dict(m.target).get("compute_capabilities")
        if m.plugin == "torchscript" and ccs is None:
            portable.append((v, m))
        elif isinstance(ccs, list):
            engines.append((v, m, [str(c) for c in ccs], True))
        elif isinstance(ccs, Mapping) and "min" in ccs:
            low = _cc_key(str(ccs["min"]))
            engines.append((v, m, [c for c in AMPERE_PLUS if _cc_key(c) >= low], False))
    if not portable and not engines:
        raise IncompatibleError(
            f"no variant of {info.model}:{info.version} can be served by Triton ({'; '.join(refused)})",
            hint="push a TorchScript variant (torch.jit.script/trace) of this version",
        )
    # Plan every file and the config first: a refusal writes nothing.
    files: list[tuple[Any, str]] = []
    cc_files: dict[str, str] = {}
    if portable:
        files.append((portable[0][0], "model"))
    # Exact engines first so they win over a hardware-compatible one for their SM.
    for v, _m, ccs, exact in sorted(engines, key=lambda e: not e[3]):
        stem = (
            "model_sm" + "_".join(c.replace(".", "") for c in ccs) if exact else "model_ampere_plus"
        )
        files.append((v, stem))
        for cc in ccs:
            cc_files.setdefault(cc, f"{stem}.pt")
    text = config_pbtxt(
        name,
        (portable[0][1] if portable else engines[0][1]).signature,
        platform="pytorch_libtorch",
        default_file=f"{files[0][1]}.pt",
        cc_files=cc_files,
        gpu=bool(engines),
    )
    model_dir = Path(root) / name
    final = model_dir / str(number)
    if final.exists():
        raise FileExistsError(f"{final} already exists; pass --triton-version or remove it")
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{number}-", dir=model_dir))
    try:
        for v, stem in files:
            out = export_native(vault, spec, staging, stem, variant=v.manifest_digest, device="cpu")
            _rename(out, f"{stem}.pt")  # Triton's PyTorch backend looks for .pt
        os.replace(staging, final)
        tmp = model_dir / ".config.pbtxt.tmp"
        tmp.write_text(text)
        os.replace(tmp, model_dir / "config.pbtxt")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_dir


def _rename(path: Path, name: str) -> str:
    if path.name != name:
        os.replace(path, path.with_name(name))
    return name
