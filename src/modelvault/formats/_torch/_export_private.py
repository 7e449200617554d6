"""The one place that touches private torch APIs: torch.export's graph serializer.

``torch.export.save``/``load`` always bundle the weights (pickled, or as zip
entries) with the graph. Storing the graph apart from its weights needs the
serializer underneath them, ``torch._export.serde.serialize``:

* ``serialize(ep, serialize_state_dict=False, ...)`` gives the program's JSON
  alone (older torch lacks the switches: then the weights are swapped for
  meta-device placeholders for the call, so nothing large is pickled);
* ``deserialize(SerializedArtifact(json, state_dict, constants, b""))`` accepts
  ready ``dict``s of tensors instead of pickled bytes, so the weights we hand
  it (meta placeholders here) are used as they are.

and for TorchScript, ``ScriptModule._c.setattr``: the one way to replace a
parameter or buffer of a loaded ScriptModule with another tensor object
(``setattr`` on the Python wrapper refuses to re-bind a parameter).

Everything else the plugins do goes through public API
(``ExportedProgram.state_dict``/``constants``/``graph_signature``, fx node
``args``/``kwargs``/``meta``), save for ``ExportedProgram._example_inputs``:
``exported_program.retarget_graph`` is the graph half of
``torch.export.passes.move_to_device_pass`` and sets the example inputs as that
pass does. Tests in
``tests/formats/torch/test_export_private.py`` pin the behaviour relied on.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch._export.serde import serialize as _serde

from .graph_check import check_graph

__all__ = ["deserialize_graph", "schema_version", "serialize_graph", "set_script_attribute"]


def schema_version() -> str:
    """The export serializer's schema version, ``"major.minor"``."""
    from torch._export.serde.schema import SCHEMA_VERSION

    return f"{SCHEMA_VERSION[0]}.{SCHEMA_VERSION[1]}"


def _meta_like(t: Any) -> Any:
    if isinstance(t, torch.nn.Parameter):
        return torch.nn.Parameter(torch.empty_like(t, device="meta"), t.requires_grad)
    if isinstance(t, torch.Tensor):
        return torch.empty_like(t, device="meta")
    return t


def serialize_graph(ep: torch.export.ExportedProgram) -> bytes:
    """The program's JSON document: graph, signature, ranges, module call graph; no weights."""
    params = inspect.signature(_serde.serialize).parameters
    if "serialize_state_dict" in params and "serialize_example_inputs" in params:
        art = _serde.serialize(
            ep,
            serialize_state_dict=False,
            serialize_constants=False,
            serialize_example_inputs=False,
        )
        return bytes(art.exported_program)
    return _serialize_with_placeholders(ep)


def _serialize_with_placeholders(ep: torch.export.ExportedProgram) -> bytes:
    """For torch without the serializer's switches: weights swapped for meta tensors during the call."""
    saved = (ep._state_dict, ep._constants, ep._example_inputs)
    try:
        ep._state_dict = {k: _meta_like(v) for k, v in saved[0].items()}
        ep._constants = {k: _meta_like(v) for k, v in saved[1].items()}
        ep._example_inputs = None
        art = _serde.serialize(ep)
    finally:
        ep._state_dict, ep._constants, ep._example_inputs = saved
    return bytes(art.exported_program)


def deserialize_graph(
    graph: bytes,
    state_dict: Mapping[str, torch.Tensor],
    constants: Mapping[str, torch.Tensor],
) -> torch.export.ExportedProgram:
    """Rebuild an ExportedProgram from :func:`serialize_graph`'s bytes around given tensors.

    The tensors are used as they are (no copy, no device move). ``graph`` is
    JSON: nothing in it is unpickled, and it is checked by
    :func:`~modelvault.formats._torch.graph_check.check_graph` first, because
    torch's deserializer evaluates parts of it (sympify) and FX executes
    source built from its names.
    """
    check_graph(graph)
    # The dataclass is annotated with bytes, but the deserializer takes ready dicts as well.
    artifact = _serde.SerializedArtifact(graph, dict(state_dict), dict(constants), b"")  # type: ignore[arg-type]
    with _cached_type_hints():
        ep = _serde.deserialize(artifact)
    assert isinstance(ep, torch.export.ExportedProgram)
    return ep


class _CachingTyping:
    """``typing`` as the serializer sees it, with ``get_type_hints`` memoized.

    torch's JSON-to-dataclass step resolves the type hints of a schema class
    for every object it builds (thousands for a large graph); they never change,
    so computing them once per class cuts most of a large program's parse time.
    Everything else is the real ``typing`` module.
    """

    def __init__(self, real: Any) -> None:
        self._real = real
        self._hints: dict[Any, Any] = {}

    def get_type_hints(self, obj: Any, globalns: Any = None, localns: Any = None, **kw: Any) -> Any:
        if localns is not None or kw:
            return self._real.get_type_hints(obj, globalns, localns, **kw)
        key = (obj, id(globalns))
        try:
            return self._hints[key]
        except (KeyError, TypeError):
            pass
        hints = self._real.get_type_hints(obj, globalns)
        with contextlib.suppress(TypeError):  # an unhashable annotation: not cached
            self._hints[key] = hints
        return hints

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


_typing_lock = threading.Lock()
_typing_users = 0
_caching: _CachingTyping | None = None


@contextlib.contextmanager
def _cached_type_hints() -> Iterator[None]:
    """Give the serializer :class:`_CachingTyping` for the duration (it returns what typing would)."""
    global _typing_users, _caching
    real = getattr(_serde, "typing", None)
    if real is None or not hasattr(real, "get_type_hints"):
        yield  # a torch whose serializer does not work this way: nothing to speed up
        return
    with _typing_lock:
        if _typing_users == 0:
            if _caching is None or _caching._real is not real:
                _caching = _CachingTyping(real)
            setattr(_serde, "typing", _caching)  # noqa: B010 - a module global, on purpose
        _typing_users += 1
    try:
        yield
    finally:
        with _typing_lock:
            _typing_users -= 1
            if _typing_users == 0 and _caching is not None:
                setattr(_serde, "typing", _caching._real)  # noqa: B010


def set_script_attribute(module: Any, name: str, value: torch.Tensor) -> None:
    """Bind attribute ``name`` of ScriptModule ``module`` (a parameter or buffer) to ``value``."""
    module._c.setattr(name, value)
