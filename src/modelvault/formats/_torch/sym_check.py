"""The symbolic expressions and guards of a torch.export program, checked without evaluating them.

torch's deserializer hands each ``expr_str`` to ``sympy.sympify`` (Python
``eval`` underneath) and pastes each ``guards_code`` string into Python source
it executes. Here both are parsed with :mod:`ast` and accepted only in the
forms torch's own printers write (``sympy.srepr`` for expressions, the shape
guard printer for guards), with literals small enough that evaluating them
costs nothing. Used by :mod:`.graph_check`; no torch needed.
"""

from __future__ import annotations

import ast
import re

from ...errors import FormatError

__all__ = ["UnsafeGraphError", "check_guard", "check_sym_expr", "refuse"]

_MAX_EXPR = 64 * 1024
_MAX_EXPR_DEPTH = 64
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
#: Expressions already accepted (they only depend on their text).
_ACCEPTED: set[str] = set()


class UnsafeGraphError(FormatError):
    """The program's JSON holds something torch would evaluate, import or run."""


def refuse(where: object, what: str) -> UnsafeGraphError:
    """The error for ``what`` found at ``where`` (formatted only now)."""
    return UnsafeGraphError(
        f"the program graph is refused at {where}: {what}",
        hint="the graph holds something torch.export never writes; it is not loaded",
    )


_refuse = refuse

# -- symbolic expressions: the srepr() forms torch writes ---------------------------
#: torch.utils._sympy.functions, as torch's deserializer hands them to sympify,
#: plus the sympy classes srepr() names for arithmetic, relations and logic.
_SYMPY_FUNCTIONS = frozenset(
    {
        "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv",
        "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural",
        "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
        "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
        "Add", "Mul", "Pow", "Max", "Min", "Abs",
        "Equality", "Unequality", "StrictLessThan", "LessThan", "StrictGreaterThan",
        "GreaterThan", "And", "Or", "Not",
    }
)  # fmt: skip
_SYMPY_CONSTANTS = frozenset({"oo", "int_oo", "zoo", "nan", "true", "false"})
_ASSUMPTIONS = frozenset(
    {
        "integer", "positive", "nonnegative", "negative", "nonpositive", "real",
        "finite", "zero", "nonzero", "even", "odd", "rational", "extended_real",
    }
)  # fmt: skip
_SYMBOL_NAME = re.compile(r"[a-z]{1,8}[0-9]{1,12}")
_FLOAT_TEXT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[-+]?[0-9]+)?|[-+]?inf|nan")

# ---------------------------------------------------------------------------
# symbolic expressions


def check_sym_expr(text: object, where: object = "expr_str") -> None:
    """Accept ``text`` only when it is an srepr() expression of the allowed forms."""
    if isinstance(text, str) and text in _ACCEPTED:
        return  # the same expressions recur in every tensor's sizes and strides
    if not isinstance(text, str):
        raise _refuse(where, f"expected an expression string, got {type(text).__name__}")
    if len(text) > _MAX_EXPR:
        raise _refuse(where, f"expression of {len(text)} characters (limit {_MAX_EXPR})")
    depth = 0
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if depth > _MAX_EXPR_DEPTH:
            raise _refuse(where, f"expression nested deeper than {_MAX_EXPR_DEPTH}")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise _refuse(where, f"not an expression: {text!r:.80}") from None
    _sym_node(tree.body, where, text)
    if len(_ACCEPTED) > 100_000:
        _ACCEPTED.clear()
    _ACCEPTED.add(text)


def _int_literal(n: ast.expr, bound: int = 1 << 64) -> bool:
    if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
        n = n.operand
    return isinstance(n, ast.Constant) and type(n.value) is int and n.value <= bound


#: sympy evaluates these on concrete integers as it parses: a literal exponent or
#: shift is kept small so that no expression asks for a number of gigabytes.
_EXPONENTIAL = frozenset({"Pow", "PowByNatural", "FloatPow", "LShift", "RoundDecimal"})
_MAX_EXPONENT = 64


def _small_exponent(n: ast.expr) -> bool:
    if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "Integer":
        return len(n.args) == 1 and _int_literal(n.args[0], _MAX_EXPONENT)
    return not (
        isinstance(n, ast.Call)
        and isinstance(n.func, ast.Name)
        and n.func.id in ("Rational", "Float")
    )


def _sym_node(n: ast.expr, where: object, text: str) -> None:
    bad = _refuse(where, f"expression {text!r:.80} is not one torch writes")
    if isinstance(n, ast.Name):
        if n.id not in _SYMPY_CONSTANTS:
            raise bad
        return
    if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
        if isinstance(n.operand, ast.Name) and n.operand.id in _SYMPY_CONSTANTS:
            return
        raise bad
    if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Name)):
        raise bad
    fn, args, kws = n.func.id, n.args, n.keywords
    if fn == "Symbol":
        ok = (
            len(args) == 1
            and isinstance(args[0], ast.Constant)
            and isinstance(args[0].value, str)
            and _SYMBOL_NAME.fullmatch(args[0].value) is not None
            and all(
                k.arg in _ASSUMPTIONS
                and isinstance(k.value, ast.Constant)
                and isinstance(k.value.value, bool)
                for k in kws
            )
        )
    elif fn == "Integer":
        ok = len(args) == 1 and not kws and _int_literal(args[0])
    elif fn == "Rational":
        ok = len(args) == 2 and not kws and all(_int_literal(a) for a in args)
    elif fn == "Float":
        ok = (
            len(args) == 1
            and isinstance(args[0], ast.Constant)
            and isinstance(args[0].value, str)
            and _FLOAT_TEXT.fullmatch(args[0].value) is not None
            and len(args[0].value) <= 64
            and all(
                k.arg == "precision"
                and isinstance(k.value, ast.Constant)
                and type(k.value.value) is int
                and 0 < k.value.value <= 1024
                for k in kws
            )
        )
    elif fn in _SYMPY_FUNCTIONS:
        ok = not kws and len(args) <= 64
        if fn in _EXPONENTIAL:
            ok = ok and len(args) == 2 and _small_exponent(args[1])
        if ok:
            for a in args:
                _sym_node(a, where, text)
    else:
        ok = False
    if not ok:
        raise bad


# ---------------------------------------------------------------------------
# guards: the Python that torch's ShapeGuardPythonPrinter writes

_GUARD_CALLS = frozenset({"max", "min", "abs", "int", "float", "round"})
_GUARD_MATH = frozenset({"floor", "ceil", "trunc", "sqrt", "isnan", "inf"})
_GUARD_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod, ast.Div, ast.Pow)
_CMPOPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def check_guard(text: object, where: object = "guards_code") -> None:
    """Accept a guard only when it is a comparison over input sizes of the allowed forms."""
    if not isinstance(text, str) or len(text) > _MAX_EXPR or _CONTROL.search(text) or "\n" in text:
        raise _refuse(where, "a guard must be one line of at most 64 KiB")
    if text.count("(") > _MAX_EXPR_DEPTH * 4:
        raise _refuse(where, "guard nested too deep")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise _refuse(where, f"not an expression: {text!r:.80}") from None
    _guard_node(tree.body, where, text)


def _guard_node(n: ast.expr, where: object, text: str) -> None:
    def sub(x: ast.expr) -> None:
        _guard_node(x, where, text)

    if isinstance(n, ast.BoolOp):
        for v in n.values:
            sub(v)
    elif isinstance(n, ast.Compare):
        if not all(isinstance(o, _CMPOPS) for o in n.ops):
            raise _refuse(where, f"guard {text!r:.80} uses an unknown comparison")
        sub(n.left)
        for c in n.comparators:
            sub(c)
    elif isinstance(n, ast.BinOp) and isinstance(n.op, _BINOPS):
        if isinstance(n.op, ast.Pow) and not _int_literal(n.right, _MAX_EXPONENT):
            raise _refuse(
                where, f"guard {text!r:.80} raises to a power that is not a small integer"
            )
        sub(n.left)
        sub(n.right)
    elif isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd, ast.Not)):
        sub(n.operand)
    elif isinstance(n, ast.Constant) and type(n.value) in (int, float, bool):
        if type(n.value) is int and abs(n.value) > 1 << 64:
            raise _refuse(where, f"guard {text!r:.80} holds an integer past 64 bits")
    elif isinstance(n, ast.Call) and not n.keywords and len(n.args) <= 8:
        f = n.func
        if (isinstance(f, ast.Name) and f.id in _GUARD_CALLS) or (
            isinstance(f, ast.Attribute)
            and isinstance(f.value, ast.Name)
            and f.value.id == "math"
            and f.attr in _GUARD_MATH
        ):
            for a in n.args:
                sub(a)
        elif isinstance(f, ast.Attribute) and f.attr in _GUARD_METHODS and not n.args:
            _guard_source(f.value, where, text)
        else:
            raise _refuse(where, f"guard {text!r:.80} calls something torch never writes")
    elif isinstance(n, ast.Subscript):
        _guard_source(n, where, text)
    elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name):
        if not (n.value.id == "math" and n.attr == "inf"):
            raise _refuse(where, f"guard {text!r:.80} reads an attribute torch never writes")
    elif isinstance(n, ast.Name) and n.id == "inf":
        pass
    else:
        raise _refuse(where, f"guard {text!r:.80} is not one torch writes")


def _guard_source(n: ast.expr, where: object, text: str) -> None:
    """``L['x']``, ``L['x'][0]``, ``L['x'].size()[1]``: inputs addressed by identifiers and ints."""
    while True:
        if isinstance(n, ast.Subscript):
            k = n.slice
            if isinstance(k, ast.Constant) and (
                type(k.value) is int or (isinstance(k.value, str) and _IDENT.fullmatch(k.value))
            ):
                if isinstance(n.value, ast.Name):
                    if n.value.id != "L":
                        break
                    return
                n = n.value
                continue
            break
        if (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr in _GUARD_METHODS
            and not n.args
            and not n.keywords
        ):
            n = n.func.value
            continue
        if isinstance(n, ast.Attribute) and _IDENT.fullmatch(n.attr) and not n.attr.startswith("_"):
            n = n.value
            continue
        break
    raise _refuse(where, f"guard {text!r:.80} reads something other than the inputs")
