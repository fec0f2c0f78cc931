"""The subset of expr-lang/expr that Argo Rollouts conditions use, parsed safely (no `eval`).

A small recursive-descent parser builds a tree of tuples; `evaluate()` walks it. Operators,
precedence and typing follow expr: `/` is always float division, comparing a list with a number is
a type error (expr rejects it at compile time; here it is an `ExprError` at run time, which Argo
turns into a measurement Error either way), `[i]` out of range is an error, NaN compares false.
Anything outside the subset raises `UnsupportedExpression` naming the construct.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

Node = tuple  # ("num", 1) | ("name", "result") | ("bin", op, left, right) | ...


class ExprError(Exception):
    """The expression is invalid or failed to evaluate (Argo: the measurement is an Error)."""


class UnsupportedExpression(ExprError):
    """Valid expr-lang, but outside the subset this dry run implements."""


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>\d+\.\d+(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|0[xX][0-9a-fA-F]+|\d+)
    | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<name>[A-Za-z_$][A-Za-z0-9_$]*)
    | (?P<op>\?\?|\?\.|\.\.|==|!=|<=|>=|&&|\|\||\*\*|[-+*/%^<>!?:.,()\[\]{}\#|;=])
    )""",
    re.VERBOSE,
)

# Binary operators by precedence, lowest first (expr's table: or 10, and 15, comparisons 20, ...).
_LEVELS: list[set[str]] = [
    {"or", "||"},
    {"and", "&&"},
    {"==", "!=", "<", ">", "<=", ">=", "in", "not in"},
    {"+", "-"},
    {"*", "/", "%"},
]
_UNSUPPORTED_OPS = {
    "|": "the pipe operator '|'",
    "?.": "optional chaining '?.'",
    "..": "the range operator '..'",
    ";": "statement sequences ';'",
    "=": "assignment '='",
    "matches": "the 'matches' operator",
    "contains": "the 'contains' operator",
    "startsWith": "the 'startsWith' operator",
    "endsWith": "the 'endsWith' operator",
    "let": "'let' bindings",
}
_KEYWORDS = {"true": True, "false": False, "nil": None}


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExprError(f"unexpected character {text[pos:].lstrip()[:1]!r} at {pos} in {text!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    tokens.append(("end", ""))
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    def peek(self, ahead: int = 0) -> tuple[str, str]:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def next(self) -> tuple[str, str]:
        tok = self.peek()
        self.i += 1
        return tok

    def accept(self, value: str) -> bool:
        kind, tok = self.peek()
        if kind in ("op", "name") and tok == value:
            self.i += 1
            return True
        return False

    def expect(self, value: str) -> None:
        if not self.accept(value):
            raise ExprError(f"expected {value!r} but found {self.peek()[1] or 'end'!r} in {self.text!r}")

    def parse(self) -> Node:
        node = self.ternary()
        kind, tok = self.peek()
        if kind != "end":
            self.unsupported(tok)
            raise ExprError(f"unexpected {tok!r} in {self.text!r}")
        return node

    def unsupported(self, tok: str) -> None:
        if tok in _UNSUPPORTED_OPS:
            raise UnsupportedExpression(f"{_UNSUPPORTED_OPS[tok]} is not supported (in {self.text!r})")

    def ternary(self) -> Node:
        cond = self.binary(0)
        if self.accept("?"):
            yes = self.ternary()
            self.expect(":")
            return ("if", cond, yes, self.ternary())
        return cond

    def binary(self, level: int) -> Node:
        if level == len(_LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while True:
            kind, tok = self.peek()
            op = tok
            if tok == "not" and self.peek(1)[1] == "in":
                op = "not in"
            if kind not in ("op", "name") or op not in _LEVELS[level]:
                self.unsupported(tok)
                return left
            self.i += 2 if op == "not in" else 1
            left = ("bin", op, left, self.binary(level + 1))

    def unary(self) -> Node:
        if self.accept("not") or self.accept("!"):
            return ("not", self.unary())
        if self.accept("-"):
            return ("neg", self.unary())
        if self.accept("+"):
            return self.unary()
        return self.power()

    def power(self) -> Node:
        base = self.coalesce()
        if self.accept("**") or self.accept("^"):
            return ("bin", "**", base, self.unary())  # right-associative, like expr
        return base

    def coalesce(self) -> Node:
        left = self.postfix()
        while self.accept("??"):
            left = ("??", left, self.postfix())
        return left

    def postfix(self) -> Node:
        node = self.primary()
        while True:
            if self.accept("["):
                if self.peek()[1] == ":" or self._slice_ahead():
                    raise UnsupportedExpression(f"slices 'a[i:j]' are not supported (in {self.text!r})")
                index = self.ternary()
                self.expect("]")
                node = ("index", node, index)
            elif self.accept("."):
                kind, name = self.next()
                if kind != "name":
                    raise ExprError(f"expected a field name after '.' in {self.text!r}")
                node = ("index", node, ("str", name))
            elif self.peek()[1] == "(":
                raise UnsupportedExpression(f"calling a value or method is not supported (in {self.text!r})")
            else:
                return node

    def _slice_ahead(self) -> bool:
        depth = 0
        for kind, tok in self.tokens[self.i :]:
            if tok in "([{" and kind == "op":
                depth += 1
            elif tok in ")]}" and kind == "op":
                if depth == 0:
                    return False
                depth -= 1
            elif tok == ":" and depth == 0:
                return True
            elif kind == "end":
                return False
        return False

    def primary(self) -> Node:
        kind, tok = self.next()
        if kind == "num":
            if tok.lower().startswith("0x"):
                return ("num", int(tok, 16))
            return ("num", float(tok) if any(c in tok for c in ".eE") else int(tok))
        if kind == "str":
            return ("str", _unquote(tok))
        if kind == "name":
            if tok in _KEYWORDS:
                return ("const", _KEYWORDS[tok])
            self.unsupported(tok)
            if self.accept("("):
                return self.call(tok)
            return ("name", tok)
        if tok == "(":
            node = self.ternary()
            self.expect(")")
            return node
        if tok == "[":
            items: list[Node] = []
            while not self.accept("]"):
                items.append(self.ternary())
                if not self.accept(","):
                    self.expect("]")
                    break
            return ("list", items)
        if tok == "#":
            return ("pointer",)
        if tok == "{":
            raise UnsupportedExpression(f"map literals are not supported (in {self.text!r})")
        self.unsupported(tok)
        raise ExprError(f"unexpected {tok or 'end of expression'!r} in {self.text!r}")

    def call(self, name: str) -> Node:
        args: list[Node] = []
        while not self.accept(")"):
            if name in PREDICATES and len(args) == 1:
                args.append(self.predicate())
            else:
                args.append(self.ternary())
            if not self.accept(","):
                self.expect(")")
                break
        return ("call", name, args)

    def predicate(self) -> Node:
        if self.accept("{"):
            body = self.ternary()
            self.expect("}")
            return ("closure", body)
        return ("closure", self.ternary())


def _unquote(tok: str) -> str:
    body = tok[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


def parse(text: str) -> Node:
    if not text.strip():
        raise ExprError("empty expression")
    return _Parser(text).parse()


# ---------------------------------------------------------------------------------------------
# Evaluation


def _type(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "map"
    return type(v).__name__


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _mismatch(op: str, a: Any, b: Any) -> ExprError:
    return ExprError(f"invalid operation: {op} (mismatched types {_type(a)} and {_type(b)})")


def _compare(op: str, a: Any, b: Any) -> bool:
    if op in ("==", "!="):
        equal = a == b if (_is_num(a) and _is_num(b)) or type(a) is type(b) else False
        return equal if op == "==" else not equal
    if not ((_is_num(a) and _is_num(b)) or (isinstance(a, str) and isinstance(b, str))):
        raise _mismatch(op, a, b)
    return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]


def _arith(op: str, a: Any, b: Any) -> Any:
    if op == "+" and isinstance(a, str) and isinstance(b, str):
        return a + b
    if not (_is_num(a) and _is_num(b)):
        raise _mismatch(op, a, b)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        if b == 0:
            return math.copysign(math.inf, a) * math.copysign(1, b) if a else math.nan
        return a / b
    if op == "%":
        if not (isinstance(a, int) and isinstance(b, int)):
            raise _mismatch(op, a, b)
        if b == 0:
            raise ExprError("integer divide by zero")
        return int(math.fmod(a, b))  # Go's % truncates toward zero
    if op == "**":
        return float(a) ** float(b)
    raise ExprError(f"unknown operator {op}")


def _bool(v: Any, op: str) -> bool:
    if not isinstance(v, bool):
        raise ExprError(f"invalid operation: {op} (non-bool {_type(v)})")
    return v


class _Scope:
    def __init__(self, env: Mapping[str, Any], pointer: Any = None, has_pointer: bool = False):
        self.env = env
        self.pointer = pointer
        self.has_pointer = has_pointer


def _eval(node: Node, scope: _Scope) -> Any:
    kind = node[0]
    if kind in ("num", "str", "const"):
        return node[1]
    if kind == "name":
        if node[1] not in scope.env:
            raise ExprError(f"unknown name {node[1]}")
        return scope.env[node[1]]
    if kind == "pointer":
        if not scope.has_pointer:
            raise ExprError("'#' used outside a predicate")
        return scope.pointer
    if kind == "list":
        return [_eval(n, scope) for n in node[1]]
    if kind == "not":
        return not _bool(_eval(node[1], scope), "!")
    if kind == "neg":
        v = _eval(node[1], scope)
        if not _is_num(v):
            raise ExprError(f"invalid operation: - ({_type(v)})")
        return -v
    if kind == "if":
        return _eval(node[2] if _bool(_eval(node[1], scope), "?:") else node[3], scope)
    if kind == "??":
        left = _eval(node[1], scope)
        return _eval(node[2], scope) if left is None else left
    if kind == "index":
        return _index(_eval(node[1], scope), _eval(node[2], scope))
    if kind == "bin":
        return _binary(node, scope)
    if kind == "call":
        return _call(node[1], node[2], scope)
    if kind == "closure":
        raise ExprError("a predicate is only allowed as a builtin's argument")
    raise ExprError(f"unknown node {kind}")


def _binary(node: Node, scope: _Scope) -> Any:
    _, op, left_node, right_node = node
    if op in ("or", "||"):
        return _bool(_eval(left_node, scope), op) or _bool(_eval(right_node, scope), op)
    if op in ("and", "&&"):
        return _bool(_eval(left_node, scope), op) and _bool(_eval(right_node, scope), op)
    a, b = _eval(left_node, scope), _eval(right_node, scope)
    if op in ("in", "not in"):
        if isinstance(b, list):
            found = any(_compare("==", a, x) for x in b)
        elif isinstance(b, dict | str) and isinstance(a, str):
            found = a in b
        else:
            raise _mismatch(op, a, b)
        return found if op == "in" else not found
    if op in ("==", "!=", "<", ">", "<=", ">="):
        return _compare(op, a, b)
    return _arith(op, a, b)


def _index(container: Any, key: Any) -> Any:
    if isinstance(container, list | str):
        if not isinstance(key, int) or isinstance(key, bool):
            raise ExprError(f"array index must be an integer, not {_type(key)}")
        n = len(container)
        i = key + n if key < 0 else key  # expr allows negative indexes from the end
        if not 0 <= i < n:
            raise ExprError(f"index out of range: {key} (array of length {n})")
        return container[i]
    if isinstance(container, dict):
        return container.get(key)
    raise ExprError(f"cannot fetch {key!r} from {_type(container)}")


def _array(v: Any, fn: str) -> list:
    if not isinstance(v, list):
        raise ExprError(f"{fn}: expected an array, got {_type(v)}")
    return v


def _numbers(v: Any, fn: str) -> list:
    items = _array(v, fn)
    for x in items:
        if not _is_num(x):
            raise ExprError(f"{fn}: expected numbers, got {_type(x)}")
    return items


def _len(v: Any) -> int:
    if isinstance(v, list | str | dict):
        return len(v)
    raise ExprError(f"invalid argument for len (type {_type(v)})")


def _to_int(v: Any) -> int:
    if _is_num(v):
        if isinstance(v, float) and not math.isfinite(v):
            raise ExprError(f"cannot convert {v} to int")
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            raise ExprError(f"invalid operation: int({v!r})") from None
    raise ExprError(f"invalid operation: int({_type(v)})")


def _to_float(v: Any) -> float:
    if _is_num(v):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            raise ExprError(f"invalid operation: float({v!r})") from None
    raise ExprError(f"invalid operation: float({_type(v)})")


def _median(xs: list) -> float:
    s = sorted(xs)
    if not s:
        return 0.0
    mid = len(s) // 2
    return float(s[mid]) if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


# Builtins that take a plain value; the environment may add more (Argo adds asInt, isNaN, ...).
BUILTINS: dict[str, Callable[..., Any]] = {
    "len": _len,
    "abs": lambda x: abs(_numbers([x], "abs")[0]),
    "int": _to_int,
    "float": _to_float,
    "string": lambda x: str(x),
    "ceil": lambda x: float(math.ceil(_numbers([x], "ceil")[0])),
    "floor": lambda x: float(math.floor(_numbers([x], "floor")[0])),
    "round": lambda x: float(math.floor(_numbers([x], "round")[0] + 0.5)),
    "sum": lambda xs: sum(_numbers(xs, "sum")),
    "mean": lambda xs: (sum(_numbers(xs, "mean")) / len(xs)) if xs else 0.0,
    "median": lambda xs: _median(_numbers(xs, "median")),
    "min": lambda *xs: min(_numbers(xs[0] if len(xs) == 1 else list(xs), "min")),
    "max": lambda *xs: max(_numbers(xs[0] if len(xs) == 1 else list(xs), "max")),
    "first": lambda xs: _array(xs, "first")[0] if xs else None,
    "last": lambda xs: _array(xs, "last")[-1] if xs else None,
}
PREDICATES = {"all", "any", "none", "one", "filter", "map", "count", "find"}


def _call(name: str, arg_nodes: list[Node], scope: _Scope) -> Any:
    if name in PREDICATES:
        if len(arg_nodes) != 2:
            raise ExprError(f"{name} expects 2 arguments (array, predicate)")
        items = _array(_eval(arg_nodes[0], scope), name)
        body = arg_nodes[1][1]

        def each(x: Any) -> Any:
            return _eval(body, _Scope(scope.env, x, True))

        if name == "map":
            return [each(x) for x in items]
        hits = [x for x in items if _bool(each(x), name)]
        if name == "all":
            return len(hits) == len(items)
        if name == "any":
            return bool(hits)
        if name == "none":
            return not hits
        if name == "one":
            return len(hits) == 1
        if name == "count":
            return len(hits)
        if name == "find":
            return hits[0] if hits else None
        return hits
    fn = scope.env.get(name) if name in scope.env else BUILTINS.get(name)
    if not callable(fn):
        raise UnsupportedExpression(f"function {name}() is not supported")
    args = [_eval(n, scope) for n in arg_nodes]
    try:
        return fn(*args)
    except ExprError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise ExprError(f"{name}(): {exc}") from None


def called_functions(node: Node) -> set[str]:
    """Names of the functions an expression calls (to refuse unknown ones before running it)."""
    found: set[str] = set()
    stack: list[Any] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple) and item:
            if item[0] == "call":
                found.add(item[1])
            stack.extend(item[1:])
        elif isinstance(item, list):
            stack.extend(item)
    return found


def evaluate(node_or_text: Node | str, env: Mapping[str, Any]) -> Any:
    node = parse(node_or_text) if isinstance(node_or_text, str) else node_or_text
    return _eval(node, _Scope(env))
