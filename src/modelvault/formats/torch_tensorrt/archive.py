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

Everything is read with the inert unpickler; nothing is executed.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ...errors import FormatError, UnknownFormatError
from .engine_info import ENGINE_CLASS_NAMES
from .inert_pickle import Inert, inert_loads

__all__ = ["EngineState", "detect_ir", "find_engine_states"]

IR = Literal["exported_program", "torchscript"]
_MAX_MEMBER = 1 << 36  # 64 GiB: engines are large, but a zip header claiming more is hostile
_MAX_DEPTH = 2


@dataclass(frozen=True)
class EngineState:
    """One engine's info list as found in an archive, and where."""

    member: str
    fields: list[str]


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


def _engines_in_pickle(data: bytes, member: str, class_names: Collection[str]) -> list[EngineState]:
    obj = inert_loads(data, what=member, allow_persistent=True)
    out = []
    for inert in _walk(obj, set()):
        if inert.qualname in class_names:
            state = _unwrap(inert.state)
            if not isinstance(state, (list, tuple)) or not all(
                isinstance(x, (str, bytes)) for x in state
            ):
                raise FormatError(
                    f"{member}: a TensorRT engine object whose state is not a list of strings "
                    f"({type(state).__name__}); the program is corrupted"
                )
            out.append(
                EngineState(
                    member, [x if isinstance(x, str) else x.decode("latin1") for x in state]
                )
            )
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
        if not (is_pkl or is_obj):
            continue
        if info.file_size > _MAX_MEMBER:
            raise FormatError(f"{prefix}{name} claims {info.file_size} bytes; refusing it")
        data = zf.read(info)
        where = f"{prefix}{name}"
        if data[:4] == b"PK\x03\x04":
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
