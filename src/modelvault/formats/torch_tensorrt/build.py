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
import shutil
import tempfile
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...errors import InvalidArgumentError, NoCompatibleVariantError
from ...targets import parse_device_index
from ..base import Built, SiblingNeed, VersionView
from ..container import ContainerSource
from .plugin import import_runtime

__all__ = [
    "REFIT_NEED",
    "build_on_miss",
    "build_variant",
    "check_compile_settings",
    "compile_parameters",
    "compile_portable",
    "inputs_from_signature",
    "recorded_compile_settings",
    "refit",
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


# -- compiling and refitting -----------------------------------------------------------


def _portable_program(portable: ContainerSource, device: str) -> Any:
    """The version's portable ExportedProgram, weights on ``device``."""
    import torch

    from ..registry import get_plugin

    plugin = get_plugin(portable.manifest.plugin)
    obj = plugin.load(portable, device=device)
    if isinstance(obj, torch.export.ExportedProgram):
        return obj
    tmp = tempfile.mkdtemp(prefix="mvault-trt-")
    try:
        path = plugin.export_native(portable, Path(tmp) / "portable.pt2")
        return torch.export.load(str(path))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def inputs_from_signature(signature: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Compile inputs (``min_shape``/``opt_shape``/``max_shape``/``dtype``) from a portable
    program's recorded signature; a dynamic dimension spans its recorded range, with
    ``opt`` at the range's low end.

    Raises :class:`InvalidArgumentError` when the signature cannot say (a non-tensor
    input, an unbounded or derived dimension): pass ``arg_inputs`` then.
    """
    dims = signature.get("dims") or {}
    out: list[dict[str, Any]] = []
    for entry in signature.get("inputs") or []:
        name = entry.get("name", "?")
        if "shape" not in entry or "dtype" not in entry:
            raise InvalidArgumentError(
                f"input {name!r} is not a tensor; pass compile_settings={{'arg_inputs': (...)}}"
            )
        lo: list[int] = []
        hi: list[int] = []
        for d in entry["shape"]:
            if isinstance(d, int):
                lo.append(d)
                hi.append(d)
                continue
            rng = dims.get(str(d))
            if not isinstance(rng, Mapping) or rng.get("max") is None:
                raise InvalidArgumentError(
                    f"input {name!r} has dimension {d!r} without a finite recorded range; "
                    "pass compile_settings={'arg_inputs': (torch_tensorrt.Input(...), ...)}"
                )
            lo.append(max(int(rng.get("min") or 1), 1))
            hi.append(int(rng["max"]))
        out.append(
            {
                "name": name,
                "min_shape": lo,
                "opt_shape": list(lo),
                "max_shape": hi,
                "dtype": entry["dtype"],
            }
        )
    if not out:
        raise InvalidArgumentError(
            "the portable program records no inputs; pass compile_settings={'arg_inputs': (...)}"
        )
    return out


def build_variant(
    portable_source: ContainerSource, *, device: str, settings: Mapping[str, Any]
) -> Any:
    """Compile a TensorRT module from the version's portable ExportedProgram, on ``device``.

    ``settings`` are ``torch_tensorrt.dynamo.compile`` keyword arguments
    (``enabled_precisions``, ``hardware_compatible``, ``immutable_weights``,
    ``strip_engine_weights``, ...) plus ``arg_inputs``/``kwarg_inputs``; when
    no inputs are given the program's own ``example_inputs`` are used.
    Returns the compiled ``torch.fx.GraphModule``; the vault pushes it back
    with :meth:`TorchTensorRTPlugin.pack` as a new variant.
    """
    return compile_portable(portable_source, device=device, settings=settings)[0]


def compile_portable(
    portable_source: ContainerSource, *, device: str, settings: Mapping[str, Any]
) -> tuple[Any, tuple[Any, ...], dict[str, Any] | None]:
    """:func:`build_variant`, also returning the inputs it compiled for (a push needs them)."""
    if portable_source.manifest.plugin != "exported_program":
        raise InvalidArgumentError(
            "build on miss compiles from an ExportedProgram variant; "
            f"this one is {portable_source.manifest.plugin!r}"
        )
    tt = import_runtime("building a TensorRT variant")
    import torch

    ep = _portable_program(portable_source, device)
    opts = dict(settings)
    arg_inputs = opts.pop("arg_inputs", None)
    kwarg_inputs = opts.pop("kwarg_inputs", None)
    if arg_inputs is None:
        specs = inputs_from_signature(portable_source.manifest.signature)
        arg_inputs = tuple(
            tt.Input(
                min_shape=s["min_shape"],
                opt_shape=s["opt_shape"],
                max_shape=s["max_shape"],
                dtype=getattr(torch, s["dtype"]),
            )
            for s in specs
        )
    else:
        arg_inputs = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in arg_inputs)
    module = tt.dynamo.compile(
        ep, arg_inputs=arg_inputs, kwarg_inputs=kwarg_inputs, device=torch.device(device), **opts
    )
    return module, arg_inputs, kwarg_inputs


def refit(
    program: Any,
    portable_source: ContainerSource,
    *,
    device: str = "cuda:0",
    arg_inputs: Any = None,
    kwarg_inputs: Any = None,
) -> Any:
    """Put the portable variant's weights into weight-stripped engines (``refit_module_weights``)."""
    tt = import_runtime("refitting TensorRT engines")
    ep = _portable_program(portable_source, device)
    return tt.dynamo.refit_module_weights(
        program, ep, arg_inputs=arg_inputs, kwarg_inputs=kwarg_inputs, in_place=False
    )
