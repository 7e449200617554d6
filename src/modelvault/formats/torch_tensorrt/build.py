"""Build on miss and refit weights: the plugin side of the format interface's version hooks.

``Vault.load(spec, device="cuda:0", build_missing=True)`` asks each plugin
:meth:`~modelvault.formats.base.FormatPlugin.can_build`; this plugin says yes
on a CUDA device when the best fitting variant is not a TensorRT one. Its
:meth:`~modelvault.formats.base.FormatPlugin.build` compiles the version's
portable ExportedProgram with the given compile settings (or those a
TensorRT variant of the version recorded) and returns the compiled module
with the options that push it back; the caller pushes and returns it.
Nothing here knows the vault: a :class:`~modelvault.formats.base.VersionView`
is all it sees.

Compile settings are checked against the installed release's
``torch_tensorrt.dynamo.compile`` signature before anything compiles:
Torch-TensorRT 2.13 removed ``enabled_precisions`` and ``use_explicit_typing``
(pytorch/TensorRT #4195) and takes unknown keywords into ``**kwargs``, which it
ignores, so an FP16 request would silently build FP32. A setting the
release does not name is refused.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ...errors import InvalidArgumentError, NoCompatibleVariantError
from ...targets import parse_device_index
from ..base import Built, SiblingNeed, VersionView

__all__ = [
    "REFIT_NEED",
    "build_on_miss",
    "check_compile_settings",
    "compile_parameters",
    "recorded_compile_settings",
    "wants_build",
]

#: A weight-stripped variant's load needs the version's portable program (its weights).
REFIT_NEED = SiblingNeed(
    option="refit_from",
    format="exported_program",
    why=(
        "this TensorRT variant's engines were stored without weights and the version has no "
        "portable ExportedProgram variant to take them from; push the model's ExportedProgram "
        "to the same version"
    ),
)
#: Keywords ``dynamo.compile`` reads from ``**kwargs`` in 2.11-2.13 (deprecated spellings);
#: refused too, with the name that replaces them.
_RENAMED = {
    "make_refittable": "immutable_weights (inverted)",
    "refit": "immutable_weights (inverted)",
    "truncate_long_and_double": "truncate_double",
}
_REMOVED_IN_2_13 = {
    "enabled_precisions": (
        "cast the model to the precision wanted before export (strong typing), or pass "
        "enable_autocast=True, autocast_low_precision_type=torch.float16"
    ),
    "use_explicit_typing": "strong typing is the only mode; drop the setting",
}
#: Settings recorded in engine metadata that are not compile keywords (or are given by build).
_NOT_RECORDED = frozenset({"device", "arg_inputs", "kwarg_inputs", "inputs", "exported_program"})


def _kwargs_read(compile_fn: Callable[..., Any], kwargs_name: str) -> set[str]:
    """Keys the function's own source reads from its ``**kwargs``: ``kwargs["k"]``,
    ``kwargs.get("k")``, ``"k" in kwargs`` / ``in kwargs.keys()`` (2.13 reads ``debug`` and
    ``enable_cross_compile_for_windows`` so, besides deprecated spellings)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(compile_fn)))
    except (OSError, TypeError, SyntaxError):
        return set()

    def is_kwargs(node: ast.AST) -> bool:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            node = node.func.value  # kwargs.keys()
        return isinstance(node, ast.Name) and node.id == kwargs_name

    keys: set[str] = set()
    for node in ast.walk(tree):
        key: ast.AST | None = None
        if isinstance(node, ast.Subscript) and is_kwargs(node.value):
            key = node.slice
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "pop")
            and is_kwargs(node.func.value)
            and node.args
        ):
            key = node.args[0]
        elif (
            isinstance(node, ast.Compare)
            and any(isinstance(o, ast.In) for o in node.ops)
            and is_kwargs(node.comparators[0])
        ):
            key = node.left
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            keys.add(key.value)
    return keys


def compile_parameters(compile_fn: Callable[..., Any]) -> frozenset[str]:
    """The settings ``compile_fn`` takes: the keyword parameters it names, plus the keys its
    source reads from ``**kwargs`` (anything else given would fall into ``**kwargs`` unread)."""
    params = list(inspect.signature(compile_fn).parameters.values())
    named = {
        p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL, p.POSITIONAL_ONLY)
    }
    var_kw = next((p.name for p in params if p.kind == p.VAR_KEYWORD), None)
    if var_kw is not None:
        named |= _kwargs_read(compile_fn, var_kw) - set(_RENAMED)
    return frozenset(named)


def check_compile_settings(
    settings: Mapping[str, Any], accepted: Iterable[str], release: str
) -> None:
    """Refuse a setting the installed ``dynamo.compile`` would ignore (:class:`InvalidArgumentError`)."""
    named = frozenset(accepted)
    for key in sorted(settings):
        if key in named:
            continue
        if key in _REMOVED_IN_2_13:
            raise InvalidArgumentError(
                f"compile setting {key!r} is not a parameter of torch_tensorrt.dynamo.compile in "
                f"Torch-TensorRT {release} (removed in 2.13, which would ignore it): "
                f"{_REMOVED_IN_2_13[key]}"
            )
        if key in _RENAMED:
            raise InvalidArgumentError(
                f"compile setting {key!r} is a deprecated spelling in Torch-TensorRT {release}; "
                f"use {_RENAMED[key]}"
            )
        raise InvalidArgumentError(
            f"compile setting {key!r} is not a parameter of torch_tensorrt.dynamo.compile in "
            f"Torch-TensorRT {release}, which would ignore it"
        )


def _dtype(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("torch."):
        import torch

        return getattr(torch, value.split(".", 1)[1], None)
    return None


def recorded_compile_settings(
    engines: Sequence[Mapping[str, Any]], accepted: Iterable[str]
) -> dict[str, Any]:
    """Compile keyword arguments from a TensorRT variant's engine summaries, as the installed
    release accepts them: a setting it no longer names (``enabled_precisions`` on 2.13) is
    left out, and so is any value recorded in a form that is not plain data, so the compile
    uses its default rather than a guess."""
    if not engines:
        return {}
    named = frozenset(accepted)
    out: dict[str, Any] = {}
    for key, value in dict(engines[0].get("settings") or {}).items():
        if key not in named or key in _NOT_RECORDED:
            continue
        if key == "enabled_precisions":
            dtypes = [_dtype(v) for v in value] if isinstance(value, list) else []
            if dtypes and all(d is not None for d in dtypes):
                out[key] = set(dtypes)
            continue
        if isinstance(value, (bool, int, float)) or value is None:
            out[key] = value
    return out


def wants_build(best: Any | None, device: str) -> bool:
    """On a CUDA device, build when nothing fits or the best fit is not a TensorRT variant
    (a portable variant always fits, so "nothing fits" alone would never build)."""
    if parse_device_index(device)[0] != "cuda":
        return False
    return best is None or getattr(best, "kind", "") != "tensorrt"


def build_on_miss(
    view: VersionView, *, device: str, settings: Mapping[str, Any], options: Mapping[str, Any]
) -> Built:
    """Compile the version's portable ExportedProgram on ``device`` (see the module docstring)."""
    from .plugin import compile_portable, import_runtime

    portable = [v for v in view.variants if v.format == "exported_program"]
    if not portable:
        have = ", ".join(sorted({v.format for v in view.variants})) or "none"
        raise NoCompatibleVariantError(
            f"nothing fits here and {view.name}:{view.version} has no portable ExportedProgram "
            f"variant to compile from (variants: {have})",
            [],
            hint="push the model as an ExportedProgram (.pt2) too, then load with build_missing=True",
        )
    tt = import_runtime("building a TensorRT variant")
    accepted = compile_parameters(tt.dynamo.compile)
    release = str(getattr(tt, "__version__", "?"))
    given = dict(settings)
    check_compile_settings(
        {k: v for k, v in given.items() if k not in ("arg_inputs", "kwarg_inputs")},
        accepted,
        release,
    )
    compile_settings = given
    if not any(k not in ("arg_inputs", "kwarg_inputs") for k in given):
        for v in view.variants:
            if v.format == "torch_tensorrt":
                engines = list(view.manifest(v).payload.get("engines", []))
                compile_settings = {**recorded_compile_settings(engines, accepted), **given}
                break
    module, arg_inputs, kwarg_inputs = compile_portable(
        view.source(portable[0]), device=device, settings=compile_settings
    )
    push: dict[str, Any] = {"arg_inputs": arg_inputs}
    if kwarg_inputs:
        push["kwarg_inputs"] = kwarg_inputs
    push.update({k: v for k, v in options.items() if k in ("frameworks", "ir")})
    return Built(module, push)
