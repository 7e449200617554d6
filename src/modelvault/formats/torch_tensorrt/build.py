"""Build on miss: compile a TensorRT variant here and push it back for the next machine.

``Vault.load(spec, device="cuda:0", build_missing=True)`` calls
:func:`build_variant_for` when no variant of the version fits this machine.
It compiles the version's portable ExportedProgram with the given compile
settings (or those a TensorRT variant of the version recorded), pushes the
result as a new ``torch_tensorrt`` variant of the same version, and returns
the compiled module, already on the GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import NoCompatibleVariantError
from ...targets import parse_device_index
from .plugin import compile_portable

__all__ = ["build_variant_for", "load_options", "recorded_compile_settings", "wants_build"]

#: Recorded settings that are ``torch_tensorrt.dynamo.compile`` keyword arguments.
_COMPILE_KWARGS = (
    "enabled_precisions",
    "hardware_compatible",
    "version_compatible",
    "immutable_weights",
    "strip_engine_weights",
    "use_explicit_typing",
    "optimization_level",
    "workspace_size",
    "truncate_double",
)


def recorded_compile_settings(engines: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Compile keyword arguments from a TensorRT variant's engine summaries.

    Precisions recorded as ``"torch.float16"`` become torch dtypes; anything
    recorded in another form (a Torch-TensorRT enum) is left out, so the
    compile uses its default for it rather than a guess.
    """
    if not engines:
        return {}
    settings = dict(engines[0].get("settings") or {})
    out: dict[str, Any] = {}
    for key in _COMPILE_KWARGS:
        if key not in settings:
            continue
        value = settings[key]
        if key == "enabled_precisions":
            import torch

            dtypes = [
                getattr(torch, v.split(".", 1)[1], None)
                for v in value
                if isinstance(v, str) and v.startswith("torch.")
            ]
            if dtypes and all(d is not None for d in dtypes):
                out[key] = set(dtypes)
            continue
        if isinstance(value, (bool, int, float)) or value is None:
            out[key] = value
    return out


def build_variant_for(
    vault: Any, spec: str, *, device: str, settings: dict[str, Any], options: dict[str, Any]
) -> Any:
    """Compile, push back as a variant, and return the module (see the module docstring)."""
    info = vault.resolve(spec)
    variants = list(getattr(info, "variants", []))
    portable = [v for v in variants if v.format == "exported_program"]
    if not portable:
        have = ", ".join(sorted({v.format for v in variants})) or "none"
        raise NoCompatibleVariantError(
            f"nothing fits here and {spec} has no portable ExportedProgram variant to compile from "
            f"(variants: {have})",
            [],
            hint="push the model as an ExportedProgram (.pt2) too, then load with build_missing=True",
        )
    source = vault._source(portable[0])
    compile_settings = dict(settings)
    if not any(k in compile_settings for k in _COMPILE_KWARGS):
        from ...loader import read_manifest

        for v in variants:
            if v.format == "torch_tensorrt":
                manifest, _ = read_manifest(vault.store, v.manifest_digest)
                compile_settings = {
                    **recorded_compile_settings(list(manifest.payload.get("engines", []))),
                    **compile_settings,
                }
                break
    module, arg_inputs, kwarg_inputs = compile_portable(
        source, device=device, settings=compile_settings
    )
    name = getattr(info, "name", None) or getattr(getattr(info, "model", None), "name", None)
    version = getattr(info, "version", None)
    if not (name and version):
        raise NoCompatibleVariantError(
            f"compiled a TensorRT module for {spec} but cannot tell its model name and version to push it back",
            [],
        )
    push_opts: dict[str, Any] = {"arg_inputs": arg_inputs}
    if kwarg_inputs:
        push_opts["kwarg_inputs"] = kwarg_inputs
    push_opts.update({k: v for k, v in options.items() if k in ("frameworks", "ir")})
    vault.push(module, str(name), str(version), format="torch_tensorrt", variant=True, **push_opts)
    return module


def wants_build(variant: Any, device: str, build_missing: bool) -> bool:
    """Whether ``Vault.load`` should compile instead of loading ``variant``, the best fit.

    True when ``build_missing`` is set, ``device`` is a CUDA device and the best
    fitting variant is not a TensorRT one (a portable variant always fits, so
    "nothing fits" alone would never trigger a build).
    """
    return (
        bool(build_missing)
        and parse_device_index(device)[0] == "cuda"
        and getattr(variant, "kind", "") != "tensorrt"
    )


def load_options(vault: Any, variants: list[Any], source: Any) -> dict[str, Any]:
    """Extra ``plugin.load`` options a chosen TensorRT variant needs.

    Weight-stripped engines are refit from the version's portable
    ExportedProgram variant: returns ``{"refit_from": <its source>}`` then,
    ``{}`` otherwise (and for any other plugin).
    """
    manifest = source.manifest
    if (
        manifest.plugin != "torch_tensorrt"
        or manifest.payload.get("weights") != "refit_from_portable"
    ):
        return {}
    portable = [v for v in variants if v.format == "exported_program"]
    if not portable:
        raise NoCompatibleVariantError(
            "this TensorRT variant's engines were stored without weights and the version has no "
            "portable ExportedProgram variant to take them from",
            [],
            hint="push the model's ExportedProgram to the same version",
        )
    return {"refit_from": vault._source(portable[0])}
