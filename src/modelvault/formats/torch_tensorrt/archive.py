"""Find the TensorRT engines inside a saved program, without torch.

Both IRs Torch-TensorRT saves are zip archives of pickles:

- TorchScript (``torch.jit.save`` / ``torch_tensorrt.save(..., output_format="torchscript")``):
  ``<root>/data.pkl`` and ``<root>/constants.pkl`` hold the module tree; an
  engine is an object of class ``__torch__.torch.classes.tensorrt.Engine``
  whose state (``def_pickle``'s ``__getstate__``) is its info list.
- ExportedProgram (``torch.export.save`` after ``torch_tensorrt.dynamo._exporter``
  inlined the engines): each ``torch.classes.tensorrt.Engine`` constant is
  ``<root>/data/constants/custom_obj_<n>``, itself a zip written by
  ``torch._C._pickle_save`` with one ``archive/data.pkl`` in the same
  TorchScript pickle dialect.
- ExportedProgram written by Torch-TensorRT 2.13 (``torch_tensorrt.save`` runs
  ``_normalize_engine_constants_to_python``, ``py/torch_tensorrt/_compile.py``):
  each engine constant is an ``EngineSerializer``, an opaque object that torch
  2.13 writes as ``<root>/data/constants/opaque_obj_<n>``, a plain pickle whose
  reduce is ``_reconstruct_trt_engine(info_list)``
  (``py/torch_tensorrt/dynamo/runtime/_TRTEngine.py``). Such a pickle may
  name that function and the Python runtime's ``TRTEngine`` class and no other
  global: anything else is refused by name.
- The Python-only runtime's ``TRTEngine`` pickled as itself (``torch.export.save``
  called directly on a program compiled without the C++ runtime): its state is
  ``(info_list, "TRTEngine")`` (``TRTEngine.__getstate__``).
- A program cross-compiled for Windows (``enable_cross_compile_for_windows``)
  keeps each info list as the string arguments of a
  ``tensorrt.no_op_placeholder_for_execute_engine`` node
  (``py/torch_tensorrt/dynamo/_exporter.py``), in ``<root>/models/<name>.json``.

Everything is read with the inert unpickler (or as JSON); nothing is executed.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ...errors import FormatError, UnknownFormatError
from .engine_info import ENGINE_CLASS_NAMES
from .inert_pickle import Inert, inert_loads

__all__ = ["EngineState", "detect_ir", "find_engine_states"]

_TRT_ENGINE_MODULE = "torch_tensorrt.dynamo.runtime._TRTEngine"
#: ``EngineSerializer.__reduce__`` names this function; its one argument is the info list.
RECONSTRUCT = f"{_TRT_ENGINE_MODULE}._reconstruct_trt_engine"
#: The Python-only runtime's engine class; its pickled state is ``(info_list, "TRTEngine")``.
PY_ENGINE = f"{_TRT_ENGINE_MODULE}.TRTEngine"
#: Every global an ``opaque_obj_<n>`` constant of a Torch-TensorRT program may name: the two
#: above, and what pickle protocols 0 and 1 write for an object with state (inert here too).
OPAQUE_GLOBALS = frozenset(
    {
        RECONSTRUCT,
        PY_ENGINE,
        "copy_reg._reconstructor",
        "copyreg._reconstructor",
        "builtins.object",
        "__builtin__.object",
    }
)
#: The op holding a cross-compiled (Windows) engine's info list as its arguments.
WINDOWS_PLACEHOLDER = "torch.ops.tensorrt.no_op_placeholder_for_execute_engine.default"
_MAX_JSON = 1 << 32  # a graph JSON holding base64 engines can be large, but not this large

IR = Literal["exported_program", "torchscript"]
_MAX_MEMBER = 1 << 36  # 64 GiB: engines are large, but a zip header claiming more is hostile
_MAX_DEPTH = 2


@dataclass(frozen=True)
class EngineState:
    """One engine's info list as found in an archive, and where."""

    member: str
    fields: list[str]
    #: How the release stored it: ``"torchbind"`` (``torch.classes.tensorrt.Engine``),
    #: ``"engine_serializer"``, ``"python_trtengine"`` or ``"windows_placeholder"``.
    form: str = "torchbind"


def detect_ir(path: Path) -> IR:
    """``"exported_program"`` or ``"torchscript"`` for a saved program; :class:`UnknownFormatError` otherwise."""
    if not zipfile.is_zipfile(path):
        raise UnknownFormatError(
            f"{path} is not a zip archive, so neither a .pt2 ExportedProgram nor a TorchScript file"
        )
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if (
        "archive_format" in tails
        or any(t.startswith("models/") for t in tails)
        or "serialized_exported_program.json" in tails
    ):
        return "exported_program"
    if "data.pkl" in tails and any(t.startswith("code/") for t in tails):
        return "torchscript"
    raise UnknownFormatError(
        f"{path} is a zip archive but neither a .pt2 ExportedProgram nor a TorchScript file"
    )


def _walk(value: Any, seen: set[int], depth: int = 0) -> Iterator[Inert]:
    if depth > 200 or id(value) in seen:
        return
    if isinstance(value, (dict, list, tuple, set, frozenset, Inert)):
        seen.add(id(value))
    if isinstance(value, Inert):
        yield value
        yield from _walk(value.args, seen, depth + 1)
        yield from _walk(value.state, seen, depth + 1)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _walk(v, seen, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from _walk(v, seen, depth + 1)


def _unwrap(state: Any) -> Any:
    # TorchScript's pickler wraps typed lists as torch.jit._pickle.restore_type_tag(list, "List[str]").
    if isinstance(state, Inert) and state.qualname.startswith("torch.jit._pickle.") and state.args:
        return state.args[0]
    return state


def _string_list(state: Any, member: str, what: str) -> list[str]:
    if not isinstance(state, (list, tuple)) or not all(isinstance(x, (str, bytes)) for x in state):
        raise FormatError(
            f"{member}: {what} whose state is not a list of strings "
            f"({type(state).__name__}); the program is corrupted"
        )
    return [x if isinstance(x, str) else x.decode("latin1") for x in state]


def _engine_of(inert: Inert, member: str, class_names: Collection[str]) -> EngineState | None:
    if inert.qualname in class_names:
        fields = _string_list(_unwrap(inert.state), member, "a TensorRT engine object")
        return EngineState(member, fields, "torchbind")
    if inert.qualname == RECONSTRUCT:
        args = inert.args
        if len(args) != 1:
            raise FormatError(
                f"{member}: _reconstruct_trt_engine is called with {len(args)} arguments, not the "
                "one info list EngineSerializer writes; the program is corrupted"
            )
        return EngineState(
            member, _string_list(args[0], member, "an EngineSerializer"), "engine_serializer"
        )
    made_by_reconstructor = (
        inert.qualname.endswith("._reconstructor")
        and bool(inert.args)
        and getattr(inert.args[0], "qualname", None) == PY_ENGINE
    )
    if inert.qualname == PY_ENGINE or made_by_reconstructor:
        state = inert.state
        if not (isinstance(state, tuple) and len(state) == 2 and state[1] == "TRTEngine"):
            raise FormatError(
                f"{member}: a Python-runtime TRTEngine whose state is not (info list, 'TRTEngine'); "
                "the program is corrupted"
            )
        return EngineState(
            member, _string_list(state[0], member, "a TRTEngine"), "python_trtengine"
        )
    return None


def _engines_in_pickle(
    data: bytes, member: str, class_names: Collection[str], *, opaque: bool = False
) -> list[EngineState]:
    if opaque:
        obj = inert_loads(data, what=member, only_globals=OPAQUE_GLOBALS)
    else:
        obj = inert_loads(data, what=member, allow_persistent=True)
    out = []
    for inert in _walk(obj, set()):
        found = _engine_of(inert, member, class_names)
        if found is not None:
            out.append(found)
    if opaque and not out:
        raise FormatError(
            f"{member}: an opaque constant that is not a TensorRT engine (no EngineSerializer in it)"
        )
    return out


def _placeholder_args(node: Any, where: str) -> list[str]:
    fields: list[str] = []
    for i, entry in enumerate(node.get("inputs") or []):
        if i == 0:
            continue  # the input tensors
        arg = entry.get("arg") if isinstance(entry, dict) else None
        if not isinstance(arg, dict) or "as_string" not in arg:
            kind = next(iter(arg), "?") if isinstance(arg, dict) else type(arg).__name__
            raise FormatError(
                f"{where}: argument {i} of a no_op_placeholder_for_execute_engine node is {kind}, "
                "not a string; only engines cross-compiled for Windows (info list as strings) are read"
            )
        value = arg["as_string"]
        if not isinstance(value, str):
            raise FormatError(f"{where}: a placeholder argument is not a string")
        fields.append(value)
    return fields


def _engines_in_graph_json(data: bytes, where: str) -> list[EngineState]:
    if WINDOWS_PLACEHOLDER.encode() not in data:
        return []  # the common case: no cross-compiled engine, no JSON parse of a large graph
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"{where} is not valid JSON: {exc}") from None
    out = []
    stack: list[Any] = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("target") == WINDOWS_PLACEHOLDER and "inputs" in item:
                out.append(
                    EngineState(where, _placeholder_args(item, where), "windows_placeholder")
                )
                continue
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return out


def _scan_zip(
    zf: zipfile.ZipFile, prefix: str, depth: int, class_names: Collection[str]
) -> list[EngineState]:
    found: list[EngineState] = []
    for info in zf.infolist():
        if info.is_dir():
            continue
        name = info.filename
        base = name.rsplit("/", 1)[-1]
        is_pkl = name.endswith(".pkl")
        is_obj = base.startswith("custom_obj_")
        is_opaque = base.startswith("opaque_obj_")
        is_graph = "/models/" in f"/{name}" and name.endswith(".json")
        if not (is_pkl or is_obj or is_opaque or is_graph):
            continue
        if info.file_size > (_MAX_JSON if is_graph else _MAX_MEMBER):
            raise FormatError(f"{prefix}{name} claims {info.file_size} bytes; refusing it")
        data = zf.read(info)
        where = f"{prefix}{name}"
        if is_graph:
            found.extend(_engines_in_graph_json(data, where))
        elif is_opaque:  # any pickle protocol: torch.export.save takes pickle_protocol
            found.extend(_engines_in_pickle(data, where, class_names, opaque=True))
        elif data[:4] == b"PK\x03\x04":
            if depth >= _MAX_DEPTH:
                raise FormatError(f"{where}: archives nest deeper than {_MAX_DEPTH} levels")
            with zipfile.ZipFile(io.BytesIO(data)) as inner:
                found.extend(_scan_zip(inner, where + "!", depth + 1, class_names))
        elif data[:1] == b"\x80":
            found.extend(_engines_in_pickle(data, where, class_names))
        elif is_pkl:
            raise FormatError(f"{where} is not a pickle")
    return found


def find_engine_states(
    path: Path, *, class_names: Collection[str] = ENGINE_CLASS_NAMES
) -> list[EngineState]:
    """Every engine info list in the saved program at ``path``, in archive order.

    ``class_names`` are the pickled class names of engine objects (tests pass
    torch's own torchbind test class, whose state has the same shape).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            return _scan_zip(zf, "", 0, class_names)
    except zipfile.BadZipFile as exc:
        raise FormatError(f"{path} is a damaged zip archive: {exc}") from None
