"""A torch.export program's JSON, checked before torch sees it (no torch needed).

torch's graph deserializer (``torch._export.serde.serialize``) treats parts of
the document as code:

* every SymInt/SymFloat/SymBool ``expr_str`` goes to ``sympy.sympify``, which
  evaluates Python;
* ``guards_code`` strings are pasted into Python source and ``exec``-ed when
  ``ExportedProgram.module()`` builds its guard function; a string placeholder's
  value is pasted there too, between quotes;
* node and placeholder names, ``forward_arg_names`` and the keyword names of the
  input tree spec become identifiers of the Python source FX generates and
  ``exec``-s for every graph module;
* a node ``target`` (and an ``as_operator`` argument) is resolved by ``getattr``
  from ``torch``, ``operator`` or ``math``: any callable reachable there
  (``torch.load``, ``torch.hub.load``...) would be called when the program runs;
* a tree spec context may hold ``{"__enum__": ..., "fqn": "module:Class"}``,
  which ``importlib.import_module``-s the module it names;
* custom objects are pickles by design.

This module walks the whole document and accepts only what torch's own
serializer writes: symbolic expressions in the subset of ``sympy.srepr`` output
that torch emits and guards in the subset of Python that torch's guard printer
emits (both parsed with :mod:`ast`, never evaluated: :mod:`.sym_check`), identifiers where FX needs
identifiers, operator targets from an allow-list, no custom objects, no enums
in tree specs, no control characters. Anything else is refused with the place
where it was found.
"""

from __future__ import annotations

import json
import keyword
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .sym_check import UnsafeGraphError, check_guard, check_sym_expr
from .sym_check import refuse as _refuse

__all__ = [
    "MAX_GRAPH_BYTES",
    "GraphSummary",
    "UnsafeGraphError",
    "check_graph",
    "check_guard",
    "check_sym_expr",
    "check_target",
    "weight_problems",
]

MAX_GRAPH_BYTES = 1 << 31
_MAX_DEPTH = 200  # JSON nesting; torch's documents nest about 15 deep, subgraphs add a few
_MAX_STRING = 1 << 20


# -- the serialized dtype codes (torch._export.serde.schema.ScalarType) ------------
SCALAR_TYPES: dict[int, str] = {
    1: "uint8",
    2: "int8",
    3: "int16",
    4: "int32",
    5: "int64",
    6: "float16",
    7: "float32",
    8: "float64",
    10: "complex64",
    11: "complex128",
    12: "bool",
    13: "bfloat16",
    28: "uint16",
    29: "float8_e4m3fn",
    30: "float8_e5m2",
    31: "float8_e4m3fnuz",
    32: "float8_e5m2fnuz",
    34: "uint32",
    35: "uint64",
}


# -- operator targets torch resolves, restricted to pure computation -----------------
_OP_TARGET = re.compile(r"torch\.ops\.(aten|prims)\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*")
_HIGHER_ORDER = frozenset(
    {
        "cond", "while_loop", "map_impl", "scan", "associative_scan", "invoke_subgraph",
        "wrap_with_set_grad_enabled", "wrap_with_autocast", "auto_functionalized",
        "auto_functionalized_v2", "with_effects",
    }
)  # fmt: skip
# torch.export's _SYM_OPS, written as f"{module}.{name}" by serialize_operator.
_PLAIN_TARGETS = frozenset(
    {f"_operator.{n}" for n in (
        "getitem", "eq", "ne", "le", "ge", "lt", "gt", "neg", "pos", "mul", "add", "sub",
        "floordiv", "mod", "pow", "truediv", "and_", "or_", "lshift", "rshift",
    )}
    | {"math.trunc", "math.ceil", "math.floor", "math.sqrt"}
    | {f"torch.{n}" for n in (
        "sym_not", "sym_int", "sym_float", "sym_ite", "sym_max", "sym_min", "sym_sqrt",
        "_sym_sqrt", "sym_sum",
    )}
    | {"torch._C._set_grad_enabled"}
)  # fmt: skip
_VERIFIERS = frozenset({"", "ATEN", "TRAINING", "EDGE"})

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FQN = re.compile(r"[A-Za-z0-9_]+(?:@[0-9]+)?(?:\.[A-Za-z0-9_]+(?:@[0-9]+)?)*")
_META_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_PLAIN_TEXT = re.compile(r"[A-Za-z0-9_ .,:/+-]*")
_TREESPEC_TYPES = frozenset(
    {
        "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict",
        "collections.defaultdict", "collections.deque", "collections.namedtuple",
        "torch.fx.immutable_collections.immutable_list",
        "torch.fx.immutable_collections.immutable_dict",
    }
)  # fmt: skip
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_NEWLINE_OK = frozenset({"stack_trace"})


@dataclass
class GraphSummary:
    """What the weights must match: per lifted input, its kind, FQN and expected tensor."""

    #: (kind, fqn, placeholder name, persistent) for parameters, buffers, tensor constants.
    weights: list[tuple[str, str, str, bool]] = field(default_factory=list)
    #: placeholder name -> (dtype name or None, sizes with None for symbolic dims).
    tensor_meta: dict[str, tuple[str | None, list[int | None]]] = field(default_factory=dict)


class _Where:
    """A location in the document, spelled out only when an error names it (walking stays cheap)."""

    __slots__ = ("path",)

    def __init__(self, path: tuple[str, ...]) -> None:
        self.path = path

    def __str__(self) -> str:
        return _where_name(self.path)


def _where_name(path: tuple[str, ...]) -> str:
    out = ""
    for p in path[-8:]:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if _IDENT.fullmatch(p) else f"[{p!r:.40}]")
    return out.lstrip(".") or "<root>"


# ---------------------------------------------------------------------------
# the document


def _parse_json(data: bytes | str, where: object) -> Any:
    def no_constants(name: str) -> Any:
        raise _refuse(where, f"JSON constant {name} is not allowed")

    try:
        return json.loads(data, parse_constant=no_constants)
    except UnsafeGraphError:
        raise
    except (ValueError, RecursionError, MemoryError) as exc:
        raise _refuse(where, f"not valid JSON ({str(exc)[:80]})") from None


def _strings(obj: Any, depth: int = 0) -> Iterator[str]:
    if depth > _MAX_DEPTH:
        raise _refuse("JSON", f"nested deeper than {_MAX_DEPTH}")
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _strings(v, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v, depth + 1)


def _check_treespec(text: object, where: object, kwargs_identifiers: bool) -> None:
    if not isinstance(text, str):
        raise _refuse(where, "a tree spec must be a JSON string")
    doc = _parse_json(text, where)
    if not (isinstance(doc, list) and len(doc) == 2 and doc[0] == 1):
        raise _refuse(where, "a tree spec must be [1, {...}] (pytree protocol 1)")

    def node(spec: Any, depth: int, top: bool) -> None:
        if depth > _MAX_DEPTH or not isinstance(spec, dict):
            raise _refuse(where, "malformed tree spec")
        if set(spec) != {"type", "context", "children_spec"}:
            raise _refuse(where, "a tree spec node has exactly type, context, children_spec")
        typ, ctx, children = spec["type"], spec["context"], spec["children_spec"]
        if typ is not None and typ not in _TREESPEC_TYPES:
            # Other containers (transformers' ModelOutput, a user's dataclass) are looked
            # up by name in torch's pytree registry, filled by code this process imported:
            # an unregistered name fails the lookup, nothing is imported (torch 2.13
            # _json_to_treespec). Only the name's shape is checked here; importing by
            # name is what the ``__enum__`` refusal below prevents.
            _fqn(typ, where)
        if not isinstance(children, list):
            raise _refuse(where, "tree spec children must be a list")
        if ctx is not None:
            if not isinstance(ctx, str):
                raise _refuse(where, "a tree spec context must be a JSON string")
            parsed = _parse_json(ctx, where)
            for s in _strings(parsed):
                if s == "__enum__":
                    raise _refuse(where, "tree spec contexts may not name enum classes (an import)")
                if _CONTROL.search(s) or "\n" in s:
                    raise _refuse(where, "control character in a tree spec context")
            if typ in ("builtins.dict", "collections.OrderedDict"):
                if not isinstance(parsed, list):
                    raise _refuse(where, "a dict's tree spec context must list its keys")
                for k in parsed:
                    if isinstance(k, str) and (kwargs_identifiers and top):
                        _identifier(k, where)
        for i, c in enumerate(children):
            # The top spec is (args, kwargs): kwargs names become parameter names.
            node(c, depth + 1, top=(depth == 0 and i == 1))

    node(doc[1], 0, top=False)


def _identifier(v: object, where: object) -> str:
    if not (isinstance(v, str) and _IDENT.fullmatch(v) and not keyword.iskeyword(v)):
        raise _refuse(where, f"{v!r:.80} is not a Python identifier")
    return v


def _fqn(v: object, where: object, empty_ok: bool = False) -> str:
    if not isinstance(v, str) or not (_FQN.fullmatch(v) or (empty_ok and v == "")):
        raise _refuse(where, f"{v!r:.80} is not a dotted module path")
    return v


def check_target(v: object, where: object) -> str:
    """An operator target torch resolves to a pure computation, else refused."""
    if not isinstance(v, str):
        raise _refuse(where, "an operator target must be a string")
    if _OP_TARGET.fullmatch(v) or v in _PLAIN_TARGETS:
        return v
    prefix = "torch.ops.higher_order."
    if v.startswith(prefix) and v[len(prefix) :] in _HIGHER_ORDER:
        return v
    raise _refuse(where, f"operator {v!r:.80} is not one modelvault loads")


_ARG_NAME_KEYS = frozenset({"name", "as_name"})
_NAMED_MAPS = frozenset({"tensor_values", "sym_int_values", "sym_float_values", "sym_bool_values"})
_FQN_KEYS = frozenset(
    {"parameter_name", "buffer_name", "tensor_constant_name", "parameter", "buffer"}
)
_REFUSED_KEYS = {
    "as_custom_obj": "custom objects are pickled code",
    "custom_obj": "custom objects are pickled code",
    "class_fqn": "custom objects are pickled code",
    "as_custom_objs": "custom objects are pickled code",
}


# Control characters can reach a decoded string only as raw non-ASCII characters
# or as JSON escapes; a document with neither needs no per-string search.
_RAW_CONTROL = re.compile(
    r"[\x7f-\x9f\u2028\u2029]|\\u(?:00[01][0-9a-fA-F]|007[fF]|00[89][0-9a-fA-F]|202[89])|\\[bfr]"
)


class _Walker:
    def __init__(self, scan_controls: bool = True) -> None:
        self.summary = GraphSummary()
        self.scan = scan_controls

    def walk(self, obj: Any, path: tuple[str, ...]) -> None:
        if len(path) > _MAX_DEPTH:
            raise _refuse(_where_name(path), f"nested deeper than {_MAX_DEPTH}")
        if isinstance(obj, str):
            self.text(obj, path)
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                self.walk(v, (*path, str(i)))
        elif isinstance(obj, dict):
            for k, v in obj.items():
                p = (*path, k)
                self.key(k, v, obj, p)
        elif obj is None or isinstance(obj, (bool, int, float)):
            pass
        else:  # pragma: no cover - json.loads yields nothing else
            raise _refuse(_where_name(path), f"unexpected {type(obj).__name__}")

    def text(self, s: str, path: tuple[str, ...]) -> None:
        if len(s) > _MAX_STRING:
            raise _refuse(_where_name(path), f"string of {len(s)} characters")
        if (self.scan and _CONTROL.search(s)) or ("\n" in s and not (set(path[-2:]) & _NEWLINE_OK)):
            raise _refuse(_where_name(path), f"control character in {s!r:.60}")

    def key(self, k: str, v: Any, parent: dict[str, Any], path: tuple[str, ...]) -> None:
        where = _Where(path)
        self.text(k, path)
        if k in _REFUSED_KEYS:
            raise _refuse(where, _REFUSED_KEYS[k])
        if k == "custom_obj_values":
            if v:
                raise _refuse(where, "custom objects are pickled code")
            return
        if k == "expr_str":
            check_sym_expr(v, where)
            return
        if k == "target" and "inputs" in parent and "outputs" in parent:
            check_target(v, where)
            return
        if k == "as_operator":
            check_target(v, where)
            return
        if k in _ARG_NAME_KEYS and isinstance(v, str):
            _identifier(v, where)
            return
        if k in _NAMED_MAPS:
            if not isinstance(v, dict):
                raise _refuse(where, "expected a map of names")
            for name in v:
                _identifier(name, _Where((*path, name)))
            self.walk(v, path)
            return
        if k == "forward_arg_names":
            if v is not None:
                if not isinstance(v, list):
                    raise _refuse(where, "expected a list of names")
                for i, name in enumerate(v):
                    _identifier(name, _Where((*path, str(i))))
            return
        if k in _FQN_KEYS and isinstance(v, str):
            _fqn(v, where)
            return
        if k == "fqn":
            _fqn(v, where, empty_ok=True)
            return
        if k in ("in_spec", "out_spec"):
            _check_treespec(v, where, kwargs_identifiers=(k == "in_spec"))
            return
        if k == "guards_code":
            if not isinstance(v, list):
                raise _refuse(where, "guards_code must be a list")
            for i, g in enumerate(v):
                check_guard(g, _Where((*path, str(i))))
            return
        if k == "verifiers":
            if not isinstance(v, list) or not all(x in _VERIFIERS for x in v):
                raise _refuse(where, f"unknown verifier in {v!r:.80}")
            return
        if k == "metadata" and isinstance(v, dict):
            self.metadata(v, path)
            return
        if k == "range_constraints" and isinstance(v, dict):
            for name, r in v.items():
                self.text(name, (*path, name))
                if not (
                    isinstance(r, dict)
                    and set(r) <= {"min_val", "max_val"}
                    and all(x is None or type(x) is int for x in r.values())
                ):
                    raise _refuse(
                        f"{where}[{name!r:.40}]", "a range is {min_val, max_val} integers"
                    )
            return
        if k == "inputs" and "nodes" in parent and isinstance(v, list):
            # Graph inputs: a string placeholder's value is pasted between quotes
            # into the guard function's source.
            for i, a in enumerate(v):
                if isinstance(a, dict) and "as_string" in a:
                    s = a["as_string"]
                    if not isinstance(s, str) or not _PLAIN_TEXT.fullmatch(s):
                        raise _refuse(f"{where}[{i}]", "string input with quotes or escapes")
        if k == "input_specs" and isinstance(v, list):
            self.input_specs(v, path)
        self.walk(v, path)

    def metadata(self, meta: dict[str, Any], path: tuple[str, ...]) -> None:
        for mk, mv in meta.items():
            p = (*path, mk)
            where = _Where(p)
            self.text(mk, p)
            if not isinstance(mv, str):
                raise _refuse(where, "node metadata values are strings")
            self.text(mv, p)
            if mk == "source_fn_stack":
                for item in mv.split(";"):
                    _, _, target = item.partition(",")
                    if not (_META_PATH.fullmatch(target) and "__" not in target):
                        raise _refuse(where, f"source function {target!r:.80} is not a plain path")
            elif mk in ("custom", "from_node"):
                for s in _strings(_parse_json(mv, where)):
                    self.text(s, p)

    def input_specs(self, specs: list[Any], path: tuple[str, ...]) -> None:
        kinds = {"parameter": "parameter_name", "buffer": "buffer_name"}
        kinds["tensor_constant"] = "tensor_constant_name"
        for i, spec in enumerate(specs):
            where = _Where((*path, str(i)))
            if not (isinstance(spec, dict) and len(spec) == 1):
                raise _refuse(where, "an input spec is a one-key map")
            ((kind, body),) = spec.items()
            if kind in kinds:
                if not isinstance(body, dict) or not isinstance(body.get("arg"), dict):
                    raise _refuse(where, f"malformed {kind} spec")
                self.summary.weights.append(
                    (
                        kind,
                        _fqn(body.get(kinds[kind]), where),
                        _identifier(body["arg"].get("name"), where),
                        bool(body.get("persistent", True)),
                    )
                )
            elif kind == "constant_input":
                # Its value becomes placeholder metadata, pasted between quotes into guards.
                value = body.get("value") if isinstance(body, dict) else None
                text = value.get("as_string") if isinstance(value, dict) else None
                if text is not None and not (isinstance(text, str) and _PLAIN_TEXT.fullmatch(text)):
                    raise _refuse(where, "string constant input with quotes or escapes")
            elif kind not in ("user_input", "token"):
                raise _refuse(where, f"input kind {kind!r:.40} is not supported")


def _tensor_meta(graph: dict[str, Any]) -> dict[str, tuple[str | None, list[int | None]]]:
    out: dict[str, tuple[str | None, list[int | None]]] = {}
    values = graph.get("tensor_values")
    if not isinstance(values, dict):
        return out
    for name, meta in values.items():
        if not isinstance(meta, dict):
            continue
        dtype = meta.get("dtype")
        sizes: list[int | None] = []
        for k, s in enumerate(meta.get("sizes") or []):
            v = s.get("as_int") if isinstance(s, dict) else None
            if type(v) is int and v < 0:
                # No tensor has a negative dimension; torch would fail on it far from here.
                raise _refuse(f"graph.tensor_values[{name!r:.60}].sizes[{k}]", f"negative size {v}")
            sizes.append(v if type(v) is int else None)
        out[name] = (SCALAR_TYPES.get(dtype) if type(dtype) is int else None, sizes)
    return out


def check_graph(data: bytes | bytearray | memoryview) -> GraphSummary:
    """Check a program's JSON document; returns what its weights must match.

    Raises :class:`UnsafeGraphError` (a :class:`~modelvault.errors.FormatError`)
    naming where the document holds anything torch would evaluate, import or run.
    """
    if len(data) > MAX_GRAPH_BYTES:
        raise _refuse("<root>", f"document of {len(data)} bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse("<root>", "not UTF-8") from None
    doc = _parse_json(text, "<root>")
    if not isinstance(doc, dict) or not isinstance(doc.get("graph_module"), dict):
        raise _refuse("<root>", "not a torch.export program (no graph_module)")
    gm = doc["graph_module"]
    if not isinstance(gm.get("graph"), dict) or not isinstance(gm.get("signature"), dict):
        raise _refuse("graph_module", "no graph or signature")
    walker = _Walker(scan_controls=_RAW_CONTROL.search(text) is not None)
    walker.walk(doc, ())
    walker.summary.tensor_meta = _tensor_meta(gm["graph"])
    return walker.summary


def weight_problems(
    summary: GraphSummary,
    stored: Callable[[str, str], tuple[str, list[int]] | None],
    payload_names: set[str],
) -> list[str]:
    """How the stored weights disagree with what the graph's lifted inputs expect.

    ``stored(kind, fqn)`` gives (dtype, shape) of the stored tensor or None;
    ``payload_names`` are the section names the payload lists.
    """
    problems: list[str] = []
    used: set[str] = set()
    for kind, fqn, arg, persistent in summary.weights:
        in_sd = kind == "parameter" or (kind == "buffer" and persistent)
        section = ("state_dict/" if in_sd else "constants/") + fqn
        have = stored("state_dict" if in_sd else "constants", fqn)
        if have is None:
            problems.append(f"missing tensor {fqn!r:.80}")
            continue
        used.add(section)
        want = summary.tensor_meta.get(arg)
        if want is None:
            continue
        dtype, sizes = want
        if (dtype is not None and dtype != have[0]) or (
            len(sizes) != len(have[1])
            or any(w is not None and w != h for w, h in zip(sizes, have[1]))
        ):
            shown = [("?" if s is None else s) for s in sizes]
            problems.append(
                f"tensor {fqn!r:.80}: the graph expects {dtype}{shown}, "
                f"the weights hold {have[0]}{list(have[1])}"
            )
    extra = sorted(payload_names - used)
    if extra:
        problems.append(
            "unexpected tensor(s) " + ", ".join(repr(e.split("/", 1)[1])[:80] for e in extra[:5])
        )
    return problems
