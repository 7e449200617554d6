"""A live ``nn.Module`` made into something that can be stored, as MLflow's ``log_model`` does.

An ``nn.Module`` is Python code plus weights; only a traced or exported graph
can be stored without pickling that code. By default the module goes through
``torch.export.export`` (the ``exported_program`` format); with
``format="torchscript"`` through ``torch.jit.script`` or ``torch.jit.trace``.
Both need to see the module run, so they need example inputs (scripting does
not, which is why it is tried first for TorchScript).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ...errors import InvalidArgumentError, PayloadMismatchError

__all__ = ["example_args", "to_exported_program", "to_script"]

_HOW = (
    "pass example_inputs=(x,) with a tuple of the forward's positional arguments "
    "(a dict for keyword arguments), and dynamic_shapes=... for dimensions that vary"
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def example_args(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` from ``example_inputs``: a tuple of arguments, a dict of keyword
    arguments, or one argument."""
    if isinstance(example_inputs, tuple):
        return example_inputs, {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    return (example_inputs,), {}


def to_exported_program(
    module: torch.nn.Module,
    example_inputs: Any,
    dynamic_shapes: Any = None,
    *,
    strict: bool = False,
) -> torch.export.ExportedProgram:
    """``torch.export.export(module, args, kwargs, dynamic_shapes=...)``, errors in one line."""
    name = type(module).__name__
    if example_inputs is None:
        raise InvalidArgumentError(
            f"pushing the {name} exports it with torch.export.export, which needs example inputs: "
            + _HOW,
            hint="or push format='torchscript' to script it, or push module.state_dict()",
        )
    args, kwargs = example_args(example_inputs)
    try:
        return torch.export.export(
            module, args, kwargs or None, dynamic_shapes=dynamic_shapes, strict=strict
        )
    except Exception as exc:
        raise PayloadMismatchError(
            f"torch.export.export could not export the {name}: {type(exc).__name__}: {_first_line(exc)}",
            hint="check example_inputs and dynamic_shapes, or push format='torchscript'",
        ) from exc


def to_script(module: torch.nn.Module, example_inputs: Any, method: str = "auto") -> Any:
    """A ScriptModule: ``torch.jit.script`` (``"script"``), ``torch.jit.trace`` (``"trace"``),
    or ``"auto"``: scripted when scripting works, else traced with the example inputs."""
    if method not in ("auto", "script", "trace"):
        raise InvalidArgumentError(f"method must be 'auto', 'script' or 'trace', not {method!r}")
    name = type(module).__name__
    script_error: Exception | None = None
    if method in ("auto", "script"):
        try:
            return torch.jit.script(module)
        except Exception as exc:
            if method == "script":
                raise PayloadMismatchError(
                    f"torch.jit.script could not script the {name}: {type(exc).__name__}: {_first_line(exc)}",
                    hint="push with method='trace' and example_inputs=..., or as an ExportedProgram",
                ) from exc
            script_error = exc
    if example_inputs is None:
        why = (
            f"torch.jit.script failed ({_first_line(script_error)}), and tracing"
            if script_error is not None
            else "tracing"
        )
        raise InvalidArgumentError(
            f"pushing the {name} as TorchScript: {why} needs example inputs: {_HOW}"
        )
    args, kwargs = example_args(example_inputs)
    try:
        # strict=False: outputs may be dicts and lists (Hugging Face models return dicts).
        if kwargs:
            return torch.jit.trace(module, example_kwarg_inputs=kwargs, strict=False)  # type: ignore[no-untyped-call]
        return torch.jit.trace(module, args, strict=False)  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise PayloadMismatchError(
            f"torch.jit.trace could not trace the {name}: {type(exc).__name__}: {_first_line(exc)}",
            hint="check example_inputs, or push it as an ExportedProgram",
        ) from exc
