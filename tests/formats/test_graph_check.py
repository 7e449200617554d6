"""The program-graph checker's grammar, one rule at a time (no torch needed).

The accepted forms are the ones in real ``torch.export`` output
(``data/program.json`` and the expressions below, printed by torch 2.13's
serializer); each refused form is one that torch's deserializer would
evaluate, import, or paste into generated Python.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelvault.errors import FormatError
from modelvault.formats._torch.graph_check import (
    UnsafeGraphError,
    check_graph,
    check_guard,
    check_sym_expr,
    check_target,
)

PROGRAM = json.loads((Path(__file__).parent / "data" / "program.json").read_text())
S = "Symbol('s77', positive=True, integer=True)"

# Printed by torch.export's serializer for real programs (conv nets, dynamic batches, slicing).
TORCH_EXPRESSIONS = [
    S,
    f"Add({S}, Integer(1))",
    f"Mul(Integer(2), {S})",
    f"Add(Mul(Integer(2), {S}), Integer(2))",
    f"Mul(Integer(6), Max(Integer(1), Add({S}, Integer(-2))))",
    f"FloorDiv({S}, Integer(2))",
    f"Equality({S}, Integer(2))",
    f"StrictLessThan({S}, Integer(3))",
    f"Unequality(Add({S}, Integer(-2)), Integer(1))",
    f"Pow({S}, Integer(2))",
    f"PowByNatural({S}, {S})",
    f"Pow({S}, Integer(-1))",
    "Rational(1, 2)",
    "Float('1.5', precision=53)",
    "int_oo",
    "-int_oo",
    "oo",
    "true",
    "Symbol('u0', integer=True)",
]

REFUSED_EXPRESSIONS = [
    "__import__('os').system('id > F') or s0",
    "__import__('os').system('id')",
    f"{S}.subs({{}})",
    f"Add({S}, Integer(1)).func",
    "Symbol('os', integer=True)",  # not a torch symbol name
    "Symbol('s0', integer=__import__('os'))",
    "Symbol('s0', evaluate=True)",
    "Integer('1')",
    "Float('1e5; import os')",
    "Function('f')(Symbol('s0'))",
    "lambda: 1",
    "[Integer(1)][0]",
    "Integer(1) + Integer(2)",
    "Add(*[Integer(1)])",
    "exec('1')",
    "eval",
    "s0",
    "Add(" * 100 + "Integer(1)" + ")" * 100,
    "",
    "Integer(1",
    # sympy evaluates concrete arithmetic while it parses: no giant numbers
    "Pow(Integer(10), Integer(1000000000000))",
    "LShift(Integer(1), Integer(10000000000))",
    "Float('1.5', precision=1000000000)",
    "Integer(" + "9" * 30 + ")",
    f"Pow({S}, Rational(1, 100000000000))",
]


@pytest.mark.parametrize("text", TORCH_EXPRESSIONS)
def test_torch_expressions_are_accepted(text: str) -> None:
    check_sym_expr(text)


@pytest.mark.parametrize("text", REFUSED_EXPRESSIONS)
def test_other_expressions_are_refused(text: str) -> None:
    with pytest.raises(UnsafeGraphError, match="refused at expr_str"):
        check_sym_expr(text)


@pytest.mark.parametrize(
    "text",
    [
        "L['y'].size()[0] == (2 + L['x'].size()[0])",
        "L['x'].size()[2] >= 3",
        "((-2) + L['x'].size()[2]) != 1",
        "L['x'].stride()[0] == 8 and L['x'].storage_offset() == 0",
        "math.floor(L['n'] / 2) <= max(L['m'], 3)",
        "L['x'] == math.inf",
    ],
)
def test_torch_guards_are_accepted(text: str) -> None:
    check_guard(text)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('id') == 0",
        "L['x'].size()[0] == open('/etc/passwd')",
        "L['x'].__class__ == 1",
        "L['x\"'].size()[0] == 1",  # a quote would end the message string torch wraps it in
        "G['x'] == 1",
        "L['x'].size()[0] == 1\nimport os",
        "(lambda: 1)() == 1",
        "L['x'].size()[0] == 'a'",
        "L['x'].size()[0] == 2 ** 10 ** 10",
        "L['x'].size()[0] == 2 ** 100000",
    ],
)
def test_other_guards_are_refused(text: str) -> None:
    with pytest.raises(UnsafeGraphError):
        check_guard(text)


@pytest.mark.parametrize(
    "target",
    [
        "torch.ops.aten.linear.default",
        "torch.ops.aten.sym_size.int",
        "torch.ops.prims.convert_element_type.default",
        "torch.ops.higher_order.cond",
        "_operator.getitem",
        "_operator.add",
        "math.trunc",
        "torch.sym_max",
    ],
)
def test_torch_targets_are_accepted(target: str) -> None:
    check_target(target, "target")


@pytest.mark.parametrize(
    "target",
    [
        "torch.os.system",
        "torch.load",
        "torch.hub.load",
        "torch.ops.load_library",
        "torch.ops.aten.linear.default.__call__",
        "torch.ops.myns.op.default",
        "torch.ops.higher_order.triton_kernel_wrapper_functional",
        "_operator.attrgetter",
        "builtins.eval",
        "#custom:op",
        "os.system",
    ],
)
def test_other_targets_are_refused(target: str) -> None:
    with pytest.raises(UnsafeGraphError, match="is not one modelvault loads"):
        check_target(target, "target")


def edited(change: Any) -> bytes:
    doc = json.loads(json.dumps(PROGRAM))
    change(doc)
    return json.dumps(doc).encode()


def node(doc: dict[str, Any], i: int = 0) -> dict[str, Any]:
    n: dict[str, Any] = doc["graph_module"]["graph"]["nodes"][i]
    return n


CASES: dict[str, tuple[Any, str]] = {
    "node name": (lambda d: node(d).update(name="a = 1; b"), "is not a Python identifier"),
    "keyword name": (lambda d: node(d).update(name="lambda"), "is not a Python identifier"),
    "tensor value key": (
        lambda d: d["graph_module"]["graph"]["tensor_values"].update({"x; y": {}}),
        "is not a Python identifier",
    ),
    "forward arg": (
        lambda d: d["graph_module"]["module_call_graph"][0]["signature"].update(
            forward_arg_names=["x", "y=1"]
        ),
        "forward_arg_names[1]",
    ),
    "target": (lambda d: node(d).update(target="torch.load"), "operator 'torch.load'"),
    "stack trace CR": (
        lambda d: node(d)["metadata"].update(stack_trace="a\rb"),
        "control character",
    ),
    "newline outside stack trace": (
        lambda d: node(d)["metadata"].update(torch_fn="a\nb"),
        "control character",
    ),
    "source fn": (
        lambda d: node(d)["metadata"].update(source_fn_stack="a,torch.__builtins__"),
        "is not a plain path",
    ),
    "custom objects": (
        lambda d: d["graph_module"]["graph"].update(custom_obj_values={"o": {}}),
        "custom objects are pickled code",
    ),
    "verifier": (lambda d: d.update(verifiers=["os"]), "unknown verifier"),
    "range": (lambda d: d["range_constraints"].update({"s0": {"min_val": "0"}}), "a range is"),
    "parameter path": (
        lambda d: d["graph_module"]["signature"]["input_specs"][0]["parameter"].update(
            parameter_name="l.weight')"
        ),
        "is not a dotted module path",
    ),
    "string input": (
        lambda d: d["graph_module"]["graph"]["inputs"].append({"as_string": "a' + x + '"}),
        "string input with quotes",
    ),
    "in_spec enum": (
        lambda d: d["graph_module"]["module_call_graph"][0]["signature"].update(
            in_spec=json.dumps(
                [
                    1,
                    {
                        "type": "builtins.tuple",
                        "context": json.dumps({"__enum__": 1}),
                        "children_spec": [],
                    },
                ]
            )
        ),
        "enum",
    ),
    "in_spec type": (
        lambda d: d["graph_module"]["module_call_graph"][0]["signature"].update(
            in_spec=json.dumps(
                [1, {"type": "os.system('id')", "context": None, "children_spec": []}]
            )
        ),
        "is not a dotted module path",
    ),
    "kwargs name": (
        lambda d: d["graph_module"]["module_call_graph"][0]["signature"].update(
            in_spec=json.dumps(
                [
                    1,
                    {
                        "type": "builtins.tuple",
                        "context": "null",
                        "children_spec": [
                            {"type": "builtins.tuple", "context": "null", "children_spec": []},
                            {
                                "type": "builtins.dict",
                                "context": json.dumps(["a=1"]),
                                "children_spec": [],
                            },
                        ],
                    },
                ]
            )
        ),
        "is not a Python identifier",
    ),
    "constant input": (
        lambda d: d["graph_module"]["signature"]["input_specs"].append(
            {"constant_input": {"name": "c", "value": {"as_string": "'); import os; ('"}}}
        ),
        "string constant input with quotes",
    ),
    "NaN": (lambda d: d.update(x=float("nan")), "JSON constant NaN"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_document_rules(case: str) -> None:
    change, message = CASES[case]
    with pytest.raises(UnsafeGraphError) as info:
        check_graph(edited(change))
    assert message in str(info.value)
    assert isinstance(info.value, FormatError)


def test_deep_and_large_documents_are_refused_cleanly() -> None:
    deep = b'{"graph_module": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(UnsafeGraphError):
        check_graph(deep)
    with pytest.raises(UnsafeGraphError, match="not UTF-8"):
        check_graph(b"\xff\xfe")


def test_an_unregistered_container_type_is_looked_up_never_imported() -> None:
    """A tree spec may name any container type; torch only looks it up in its registry."""
    torch = pytest.importorskip("torch")
    from modelvault.formats._torch import _export_private as private

    ep = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),))
    doc = json.loads(private.serialize_graph(ep))
    sig = doc["graph_module"]["module_call_graph"][0]["signature"]
    spec = json.loads(sig["out_spec"])
    spec[1] = {"type": "evil_module_nobody_registered.Boom", "context": "[]", "children_spec": []}
    sig["out_spec"] = json.dumps(spec)
    check_graph(json.dumps(doc).encode())  # the name is well formed
    sd = dict(ep.state_dict)
    with pytest.raises(Exception, match="not registered"):
        private.deserialize_graph(json.dumps(doc).encode(), sd, {})
    assert "evil_module_nobody_registered" not in __import__("sys").modules
