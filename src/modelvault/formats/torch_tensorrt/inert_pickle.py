"""Read pickles without running any of their code.

Torch-TensorRT stores two things as pickles: the engine's compile metadata
(base64 of a pickled dict holding a ``CompilationSettings`` dataclass) and,
inside TorchScript and ``.pt2`` archives, the engine objects themselves
(TorchScript's pickle dialect). modelvault must read both at push time, on
untrusted files, without importing torch_tensorrt.

:class:`InertUnpickler` resolves every global to an inert stand-in class made
here (:class:`Inert`), so a ``REDUCE``/``NEWOBJ``/``BUILD`` only records its
arguments and state: no constructor, ``__setstate__`` or function of any
other module ever runs. Only a few builtin containers are real. The result is
plain containers plus :class:`Inert` records, which :func:`to_plain` turns
into manifest-safe values.
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Callable
from typing import Any, ClassVar

from ...errors import FormatError

__all__ = ["Inert", "InertUnpickler", "PersistentRef", "inert_loads", "to_plain"]

#: Globals that are safe to resolve to the real thing: they only build containers and cannot
#: be asked for a huge allocation by a small argument (unlike ``bytearray(10**12)``).
_REAL: dict[tuple[str, str], Callable[..., Any]] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "tuple"): tuple,
    ("collections", "OrderedDict"): dict,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
}
_MAX_GLOBALS = 4096


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Protocol 2 writes bytes as _codecs.encode(str, "latin1"); allow exactly that.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class Inert:
    """A stand-in for an object of a class the pickle named: records, never runs.

    ``qualname`` is ``"module.name"`` of the global; ``args`` what it was
    called with (``REDUCE``/``NEWOBJ``); ``state`` what ``BUILD`` gave it.
    """

    qualname: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        self = object.__new__(cls)
        self.__dict__["_mv_args"] = args
        self.__dict__["_mv_kwargs"] = kwargs
        self.__dict__["_mv_state"] = None
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_mv_state"] = state

    @property
    def args(self) -> tuple[Any, ...]:
        return self.__dict__["_mv_args"]  # type: ignore[no-any-return]

    @property
    def state(self) -> Any:
        return self.__dict__["_mv_state"]

    def __repr__(self) -> str:
        return f"<inert {self.qualname}>"


class PersistentRef:
    """A persistent id (a tensor's storage in TorchScript pickles), kept as data."""

    def __init__(self, pid: Any) -> None:
        self.pid = pid


class InertUnpickler(pickle.Unpickler):
    """An unpickler whose globals are all inert stand-ins (see module docstring)."""

    def __init__(
        self,
        data: bytes,
        *,
        allow_persistent: bool = False,
        only_globals: frozenset[str] | None = None,
    ) -> None:
        super().__init__(io.BytesIO(data))
        self._classes: dict[tuple[str, str], type[Inert]] = {}
        self._allow_persistent = allow_persistent
        self._only = only_globals

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if self._only is not None and f"{module}.{name}" not in self._only:
            # Refused by name alone: nothing is looked up, not even a stand-in is made.
            raise pickle.UnpicklingError(
                f"it names the global {module[:80]}.{name[:80]}, which may not appear here"
            )
        if key in _REAL:
            return _REAL[key]
        if key == ("_codecs", "encode"):
            return _latin1_encode
        cls = self._classes.get(key)
        if cls is None:
            if len(self._classes) >= _MAX_GLOBALS:
                raise pickle.UnpicklingError(f"pickle names more than {_MAX_GLOBALS} globals")
            cls = type(
                name if name.isidentifier() else "Global",
                (Inert,),
                {"qualname": f"{module}.{name}"},
            )
            self._classes[key] = cls
        return cls

    def persistent_load(self, pid: Any) -> Any:
        if not self._allow_persistent:
            raise pickle.UnpicklingError("persistent ids are not allowed here")
        return PersistentRef(pid)


def inert_loads(
    data: bytes,
    *,
    what: str,
    allow_persistent: bool = False,
    only_globals: frozenset[str] | None = None,
) -> Any:
    """Unpickle ``data`` inertly. Raises :class:`FormatError` naming ``what`` on bad input.

    ``only_globals`` (``"module.name"`` strings), when given, is the complete
    list of globals the pickle may name; any other is refused by its name.
    """
    try:
        return InertUnpickler(
            data, allow_persistent=allow_persistent, only_globals=only_globals
        ).load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        MemoryError,
        RecursionError,
        UnicodeDecodeError,
    ) as exc:
        raise FormatError(f"{what} is not a readable pickle: {type(exc).__name__}: {exc}") from None


def _key(v: Any) -> str:
    return repr(v)


def to_plain(value: Any, *, depth: int = 0, max_depth: int = 24) -> Any:
    """Turn an inert-unpickled value into manifest-safe data.

    Containers stay containers (sets become sorted lists, tuples lists, keys
    strings); an :class:`Inert` becomes its state's fields plus ``"__class__"``
    when it was built with state, ``"module.name(arg, ...)"`` when it was a
    call with simple arguments (an enum member), or ``"module.name"`` for a
    bare global (``torch.float16``).
    """
    if depth > max_depth:
        return "<too deep>"
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value) if len(value) <= 256 else f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {
            str(to_plain(k, depth=depth + 1)) if not isinstance(k, str) else k: to_plain(
                v, depth=depth + 1
            )
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [to_plain(v, depth=depth + 1) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((to_plain(v, depth=depth + 1) for v in value), key=_key)
    if isinstance(value, type) and issubclass(value, Inert):
        return value.qualname
    if isinstance(value, Inert):
        state = value.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]  # (dict state, slot state)
        if isinstance(state, dict):
            out = {"__class__": value.qualname}
            for k, v in state.items():
                if isinstance(k, str) and not k.startswith("__"):
                    out[k] = to_plain(v, depth=depth + 1)
            return out
        args = [to_plain(a, depth=depth + 1) for a in value.args]
        if all(isinstance(a, (int, float, str, bool)) or a is None for a in args):
            return f"{value.qualname}({', '.join(repr(a) for a in args)})"
        return {"__class__": value.qualname, "args": args}
    if isinstance(value, PersistentRef):
        return "<persistent>"
    return f"<{type(value).__name__}>"
