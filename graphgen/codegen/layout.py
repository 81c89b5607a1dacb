"""All layout of generated code: statements laid out as ``ruff format`` lays them out,
without running ruff.

graphgen follows one ruff minor version (the test extra pins it: ``ruff==0.17.*``), so
that the bytes of a module never depend on the formatter installed beside it; moving the
pin is a deliberate change, checked by the formatting tests.

Generated code must be formatted: ``ruff format`` (line length 88) leaves it unchanged.
Most statements fit on one line as graphgen writes them; :func:`value` lays out the
value of one that does not, ``t = <value>`` or ``t += <value>``, the way ruff does for
the expressions graphgen generates (names, literals, calls, subscripts, attributes,
tuples and lists, unary and binary operators, conditional expressions):

* ruff drops parentheses around the whole value;
* a value that "ends in brackets" (a call, ``a * f(x)``, ``a * (b + c)``, ``(a + b) *
  c[i]``; see :func:`_can_omit`) is split inside its brackets, if its first line then
  fits; otherwise the value goes in parentheses of its own, on one line or split at its
  loosest operators;
* which brackets split is the rule of ruff's printer (Prettier's): left to right, a
  group stays on one line when it fits with the text that follows it up to the next
  place a line may break.

An expression it does not parse (a comprehension, a slice, ``**``, a lambda) is left as
it is, and the target is never split (ruff splits a subscript target, ``x[\n i\n] =
-y``, when the value is a bracketless unary expression too long for the line).
"""

from __future__ import annotations

import ast
import contextlib
import io
import keyword
import math
import re
import tokenize

from ..errors import CodegenError
from .naming import Code

LINE = 88
INDENT = 4

# binary operators by precedence, loosest first
_BINARY = {
    # ruff splits a mixed `and`/`or` chain at every boolean operator
    "or": 1,
    "and": 1,
    **dict.fromkeys(("<", ">", "==", ">=", "<=", "!=", "in", "is"), 4),
    "|": 5,
    "^": 6,
    "&": 7,
    "<<": 8,
    ">>": 8,
    "+": 9,
    "-": 9,
    **dict.fromkeys(("*", "/", "//", "%", "@"), 10),
}
_KEYWORDS = frozenset(
    {"if", "else", "and", "or", "not", "in", "is", "lambda", "for", "yield", "await"}
)
# the doc of the printer: str (text), list (concatenation), ("group", doc),
# ("indent", doc), ("line", text when flat), ("ifbreak", text broken, text flat)
_SOFT, _SPACE = ("line", ""), ("line", " ")


# levels of brackets and unary operators the layout follows; deeper code (no statement
# graphgen writes) stays on one line as it is
_NESTING = 50


class _Unknown(Exception):
    """An expression the layout does not handle: it stays on one line."""


class _Parser:
    """A parse tree of one line of Python expression, parentheses kept.

    Nodes: ("leaf", text), ("attr", node, name), ("call", node, items),
    ("sub", node, text), ("paren", node), ("tuple", items, open, close),
    ("unary", op, node), ("chain", precedence, operands, operators), ("if", a, c, b),
    and in argument lists ("kw", name, node), ("star", "*" or "**", node).
    """

    def __init__(self, expr):
        skip = (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)
        self.depth = 0  # brackets and unary operators open around the current token
        self.src = expr
        self.toks = [
            t
            for t in tokenize.generate_tokens(io.StringIO(expr).readline)
            if t.type not in skip
        ]
        self.i = 0

    def peek(self, k=0):
        i = self.i + k
        return self.toks[i].string if i < len(self.toks) else None

    def take(self, want=None):
        if self.i >= len(self.toks):
            raise _Unknown
        t = self.toks[self.i]
        if want is not None and t.string != want:
            raise _Unknown
        self.i += 1
        return t

    def parse(self):
        node = self.expr()
        if self.i != len(self.toks):
            raise _Unknown
        return node

    def expr(self):
        with self.nested():
            return self._expr()

    @contextlib.contextmanager
    def nested(self):
        """One more level of nesting: past ``_NESTING`` the expression is one the
        layout leaves alone (the parser and the printer recurse once per level)."""
        self.depth += 1
        if self.depth > _NESTING:
            raise _Unknown
        try:
            yield
        finally:
            self.depth -= 1

    def _expr(self):
        a = self.binary(1)
        if self.peek() != "if":
            return a
        self.take()
        c = self.binary(1)
        self.take("else")
        return ("if", a, c, self.expr())

    def binary(self, lowest):
        left = self.unary()
        while True:
            op = self.peek()
            prec = _BINARY.get(op)
            if prec is None or prec < lowest:
                if op in ("not", "**"):
                    raise _Unknown  # `not in`, powers (ruff hugs simple operands)
                return left
            self.take()
            if self.peek() == "not":
                raise _Unknown  # `is not`
            right = self.binary(prec + 1)
            if left[0] == "chain" and left[1] == prec:
                left = ("chain", prec, left[2] + [right], left[3] + [op])
            else:
                left = ("chain", prec, [left, right], [op])

    def unary(self):
        op = self.peek()
        if op in ("-", "+", "~"):
            self.take()
            with self.nested():
                return ("unary", op, self.unary())
        if op == "not":
            self.take()
            with self.nested():
                return ("unary", "not ", self.binary(4))
        return self.postfix()

    def postfix(self):
        node = self.atom()
        while True:
            s = self.peek()
            if s == "(":
                self.take()
                items, _ = self.items(")")
                node = ("call", node, items)
            elif s == "[":
                self.take()
                node = ("sub", node, self.opaque("]"))
            elif s == ".":
                self.take()
                name = self.take()
                if name.type != tokenize.NAME:
                    raise _Unknown
                node = ("attr", node, name.string)
            else:
                return node

    def atom(self):
        t = self.take()
        if t.type == tokenize.NAME and t.string not in _KEYWORDS:
            return ("leaf", t.string)
        if t.type == tokenize.NUMBER or t.string == "...":
            return ("leaf", t.string)
        if t.type == tokenize.STRING:
            start = t.start[1]
            while self.i < len(self.toks) and self.toks[self.i].type == tokenize.STRING:
                t = self.take()
            return ("leaf", self.src[start : t.end[1]])
        if t.string in ("(", "["):
            close = ")" if t.string == "(" else "]"
            items, trailing = self.items(close)
            if t.string == "(" and len(items) == 1 and not trailing:
                if items[0][0] in ("kw", "star"):
                    raise _Unknown
                return ("paren", items[0])
            if trailing and len(items) != 1 or t.string == "[" and trailing:
                raise _Unknown  # a magic trailing comma
            return ("tuple", items, t.string, close)
        raise _Unknown

    def items(self, close):
        """Comma-separated items up to ``close`` (consumed), and whether a comma ends
        them."""
        items, trailing = [], False
        while self.peek() != close:
            if self.peek() in ("*", "**"):
                star = self.take().string
                items.append(("star", star, self.expr()))
            elif (
                self.i + 1 < len(self.toks)
                and self.toks[self.i].type == tokenize.NAME
                and self.peek(1) == "="
            ):
                name = self.take().string
                self.take()
                items.append(("kw", name, self.expr()))
            else:
                items.append(self.expr())
            trailing = False
            if self.peek() == ",":
                self.take()
                trailing = True
            elif self.peek() != close:
                raise _Unknown  # a comprehension, a slice, ...
        self.take(close)
        return items, trailing

    def opaque(self, close):
        """The text up to the ``close`` that matches (consumed): a subscript's key."""
        depth, start = 0, self.i
        while True:
            s = self.take().string
            if s in ("(", "[", "{"):
                depth += 1
            elif s in (")", "]", "}"):
                if depth == 0:
                    break
                depth -= 1
        if self.i - 1 == start:
            raise _Unknown
        return self.src[self.toks[start].start[1] : self.toks[self.i - 2].end[1]]


def _doc(n, parens):
    """The printer's doc of node ``n``; ``parens``: inside brackets, where the
    operators of a chain may break the line."""
    k = n[0]
    if k == "leaf":
        return n[1]
    if k == "attr":
        return [_doc(n[1], parens), "." + n[2]]
    if k == "call":
        return [_doc(n[1], parens), _brackets("(", n[2], ")", False, call=True)]
    if k == "sub":
        return [
            _doc(n[1], parens),
            ("group", ["[", ("indent", [_SOFT, n[2]]), _SOFT, "]"]),
        ]
    if k == "paren":
        return ("group", ["(", ("indent", [_SOFT, _doc(n[1], True)]), _SOFT, ")"])
    if k == "tuple":
        return _brackets(n[2], n[1], n[3], n[2] == "(" and len(n[1]) == 1)
    if k == "unary":
        return [n[1], _doc(n[2], parens)]
    if k == "kw":
        return [n[1] + "=", _doc(n[2], True)]
    if k == "star":
        return [n[1], _doc(n[2], True)]
    sep = _SPACE if parens else " "
    if k == "chain":
        parts = [_doc(n[2][0], parens)]
        for op, operand in zip(n[3], n[2][1:]):
            parts += [sep, op + " ", _doc(operand, parens)]
        return ("group", parts)
    # a conditional expression
    a, c, b = (_doc(x, parens) for x in n[1:])
    return ("group", [a, sep, "if ", c, sep, "else ", b])


def _brackets(open_, items, close, one_tuple, call=False):
    """A bracketed list: a call's arguments stay on one line of their own if they fit
    there (a group of their own), a tuple's or list's items go one per line."""
    if not items:
        return open_ + close
    inner = []
    for i, item in enumerate(items):
        if i:
            inner += [",", _SPACE]
        inner.append(_doc(item, True))
    inner.append("," if one_tuple else ("ifbreak", ",", ""))
    if call:
        inner = ("group", inner)
    return ("group", [open_, ("indent", [_SOFT, inner]), _SOFT, close])


def _render(doc, indent, column, broken=True):
    """``doc`` printed from ``column`` with continuation lines at ``indent``."""
    out, pos = [], column
    stack = [(indent, broken, doc)]
    while stack:
        ind, brk, d = stack.pop()
        if isinstance(d, str):
            out.append(d)
            pos += len(d)
        elif isinstance(d, list):
            stack.extend((ind, brk, x) for x in reversed(d))
        elif d[0] == "indent":
            stack.append((ind + INDENT, brk, d[1]))
        elif d[0] == "group":
            flat = not brk or _fits([(ind, False, d[1])], stack, LINE - pos)
            stack.append((ind, not flat, d[1]))
        elif d[0] == "line":
            text = "\n" + " " * ind if brk else d[1]
            out.append(text)
            pos = ind if brk else pos + len(text)
        else:  # ifbreak
            out.append(d[1] if brk else d[2])
            pos += len(out[-1])
    return "".join(out)


def _fits(cmds, rest, width):
    """Whether ``cmds`` and what follows them up to the next line break (in ``rest``,
    the printer's stack) fit in ``width`` columns."""
    cmds, k = list(cmds), len(rest)
    while width >= 0:
        if not cmds:
            if k == 0:
                return True
            k -= 1
            cmds.append(rest[k])
            continue
        ind, brk, d = cmds.pop()
        if isinstance(d, str):
            width -= len(d)
        elif isinstance(d, list):
            cmds.extend((ind, brk, x) for x in reversed(d))
        elif d[0] in ("indent", "group"):
            cmds.append((ind, brk, d[1]))
        elif d[0] == "line":
            if brk:
                return True
            width -= len(d[1])
        else:
            width -= len(d[1] if brk else d[2])
    return False


def _bracketed_nodes(n):
    """Whether ``n`` has brackets anywhere (something ruff could split)."""
    if n[0] in ("call", "sub", "paren", "tuple"):
        return True
    if n[0] == "chain":
        return any(_bracketed_nodes(x) for x in n[2])
    if n[0] in ("attr", "unary"):
        return _bracketed_nodes(n[1] if n[0] == "attr" else n[2])
    if n[0] == "if":
        return any(_bracketed_nodes(x) for x in n[1:])
    return False


def _can_omit(n):
    """Whether ruff splits ``n``'s own brackets rather than parenthesize it (its
    ``can_omit_optional_parentheses``): something bracketed, and a call or subscript
    (a chain of attributes and calls), or an operator chain with one loosest operator
    whose first operand is parenthesized or whose last ends in non-empty brackets of
    its own (a call's, a parenthesized expression's)."""
    if n[0] == "if" or not _bracketed_nodes(n):
        return False
    if n[0] != "chain":
        return True
    if len(n[3]) > 1:
        return False
    first, last = n, n
    while first[0] == "chain":
        first = first[2][0]
    while last[0] == "chain":
        last = last[2][-1]
    # (ruff does not count a parenthesized subscript, `(x[i])`, as parenthesized here)
    return (
        first[0] == "paren"
        and first[1][0] != "sub"
        or last[0] == "paren"
        and last[1][0] != "sub"
        or last[0] == "call"
        and bool(last[2])
        or last[0] == "tuple"
        and bool(last[1])
    )


def value(expr, used, indent=INDENT) -> Code:
    """The value ``expr`` of an assignment at ``indent`` whose target and operator take
    ``used`` columns (``indent + len("t = ")``), laid out as ruff does."""
    return Code(_value(expr, used, indent))


def _value(expr, used, indent):
    if "\n" in expr:
        return expr
    if used + len(expr) <= LINE and not expr.startswith("("):
        # fits, and no parentheses around the whole to drop: what the parse below
        # gives back (expr as ruff writes it, or expr left alone), without the parse
        return expr
    try:
        tree = _Parser(expr).parse()
    except (_Unknown, tokenize.TokenError, IndentationError):
        return expr
    if _render(_doc(tree, False), 0, 0, broken=False) != expr:
        return expr  # not written as ruff writes it on one line: leave it alone
    while tree[0] == "paren":  # ruff drops the parentheses around a whole value
        tree = tree[1]
    flat = _render(_doc(tree, False), 0, 0, broken=False)
    if used + len(flat) <= LINE:
        return flat
    if _can_omit(tree):
        out = _render(_doc(tree, False), indent, used)
        if used + len(out.split("\n", 1)[0]) <= LINE:
            return out
    if (
        not _bracketed_nodes(tree)
        and tree[0] not in ("chain", "if")
        and indent + INDENT + len(flat) > LINE
    ):
        return flat  # a name too long for any line: as it is
    pad = " " * (indent + INDENT)
    inner = _render(_doc(tree, True), indent + INDENT, indent + INDENT)
    return f"(\n{pad}{inner}\n{' ' * indent})"


def _parse(expr):
    """The ``ast`` of the expression ``expr``, or None where Python's parser gives up:
    a syntax error, or nesting deeper than it recurses."""
    try:
        return ast.parse(expr, mode="eval").body
    except (SyntaxError, RecursionError, MemoryError):
        return None


def power_operand(expr) -> bool:
    """Whether ruff format hugs ``**`` around ``expr`` (``x**2.0``, ``x**-y``): a name, a
    number, a dotted name, or one of them with a unary minus, plus or invert."""
    if _NAME.match(expr) or _UNSIGNED.match(expr):
        return True  # a name or a number, without a parse
    node = _parse(expr)
    if node is None or _parenthesized(expr):
        return False
    while isinstance(node, ast.UnaryOp) and not isinstance(node.op, ast.Not):
        node = node.operand
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) or (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (int, float, complex, bool, type(None)))
    )


def literal(v) -> Code:
    """A Python literal for a number, None, bool, string or (nested) list/tuple."""
    if v is None or isinstance(v, bool):
        return Code(repr(v))
    if isinstance(v, int):
        return Code(repr(v))
    if isinstance(v, float):
        if math.isnan(v):
            return Code("np.nan")
        if v in (float("inf"), float("-inf")):
            return Code("np.inf" if v > 0 else "-np.inf")
        return Code(repr(float(v)))
    if isinstance(v, str):
        if '"' in v and "'" not in v:
            return Code(repr(v))  # single quotes spare the escapes, as ruff prefers
        body = "".join(
            '\\"' if ch == '"' else "'" if ch == "'" else repr(ch)[1:-1] for ch in v
        )
        return Code(f'"{body}"')
    if isinstance(v, (list, tuple)):
        items = [literal(x) for x in v]
        return Code("(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")")
    raise CodegenError(f"no literal for {v!r}")


def fit(prefix, open_, items, close, indent, tuple_=False) -> Code:
    """``prefix + open_ items close`` on one line if it fits, else one item per line.

    This is how ``ruff format`` lays out a bracketed list that is too long.
    """
    items = list(items)
    inner = ", ".join(items) + ("," if tuple_ and len(items) == 1 else "")
    one = f"{prefix}{open_}{inner}{close}"
    if indent + len(one) <= LINE or not items:
        return Code(one)
    pad = " " * (indent + INDENT)
    body = "".join(f"{pad}{_fit_item(item, indent + INDENT)},\n" for item in items)
    return Code(f"{prefix}{open_}\n{body}{' ' * indent}{close}")


def subscript(head, key, indent) -> Code:
    """``head[key]``, with the key on a line of its own when too long (as ruff does)."""
    one = f"{head}[{key}]"
    if indent + len(one) <= LINE:
        return Code(one)
    return Code(f"{head}[\n{' ' * (indent + INDENT)}{key}\n{' ' * indent}]")


def _fit_item(item, indent):
    """One item of a bracketed list on its own line; a ``key: call(...)`` entry too long
    for it gets the call's arguments on a line of their own, as ruff does."""
    if "\n" in item or indent + len(item) + 1 <= LINE:
        return item
    node = _parse("{" + item + "}")
    if not isinstance(node, ast.Dict) or len(node.keys) != 1:
        return item
    key = ast.get_source_segment("{" + item + "}", node.keys[0])
    value = item[len(key) :].lstrip()
    if not value.startswith(":"):
        return item
    value = value[1:].lstrip()
    return f"{key}: {call_lines(value, indent + len(key) + 2, indent)}"


def condition(parts, indent=INDENT) -> Code:
    """``a or b or c`` for an ``if``, parenthesized one per line when it is too long."""
    one = " or ".join(parts)
    if indent + len(f"if {one}:") <= LINE:
        return Code(one)
    pad = " " * (indent + INDENT)
    lines = [f"{pad}{parts[0]}"] + [f"{pad}or {p}" for p in parts[1:]]
    return Code("(\n" + "\n".join(lines) + "\n" + " " * indent + ")")


def call_lines(expr, used, indent=INDENT) -> Code:
    """A call ``f(a, b)`` too long for its line (``used``: width taken before it), laid
    out as ``ruff format`` does: the arguments on one line of their own if they fit,
    else one per line."""
    if "\n" in expr or used + len(expr) <= LINE:
        return Code(expr)
    call = _parse(expr)
    if not isinstance(call, ast.Call) or not (call.args or call.keywords):
        return Code(expr)
    args = [ast.get_source_segment(expr, a) for a in (*call.args, *call.keywords)]
    func = ast.get_source_segment(expr, call.func)
    inner = ", ".join(args)
    if indent + INDENT + len(inner) <= LINE:
        return Code(f"{func}(\n{' ' * (indent + INDENT)}{inner}\n{' ' * indent})")
    return fit(func, "(", args, ")", indent)


def unpack_line(prefix, names, suffix, indent) -> Code:
    """``prefix a, b, c suffix``, with the names one per line in parentheses if too long."""
    one = f"{prefix}{', '.join(names)}{suffix}"
    if indent + len(one) <= LINE:
        return Code(one)
    pad = " " * (indent + INDENT)
    body = "".join(f"{pad}{n},\n" for n in names)
    return Code(f"{prefix}(\n{body}{' ' * indent}){suffix}")


def _parenthesized(expr) -> bool:
    """Whether ``expr`` is one parenthesized whole: ``(a > 0)``, not ``(a) * (b)``."""
    if not (expr.startswith("(") and expr.endswith(")")):
        return False
    depth = 0
    for i, ch in enumerate(expr):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and i < len(expr) - 1:
            return False
    return True


# what most arguments are: a name, or a non-negative number; they need no parse
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_UNSIGNED = re.compile(r"[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?\Z")


# a dotted name right before a bracket: ``np.tanh(``, ``x[``
_HEAD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*(?=[(\[])")
_BRACKETS = re.compile(r"[()\[\]{}]")
_CLOSE = {"(": ")", "[": "]", "{": "}"}


def _called(expr) -> bool:
    """Whether ``expr`` (an expression that parses) is a dotted name called or
    subscripted once, its first bracket closing at its end (``np.tanh(x + y)``,
    ``h[:, 1]``): a call or subscript, without a parse. False when unsure (a keyword,
    a string that may hold brackets, brackets that do not match)."""
    m = _HEAD.match(expr)
    if m is None or "'" in expr or '"' in expr:
        return False
    if any(keyword.iskeyword(part) for part in m.group().split(".")):
        return False  # `not(x)` is no call
    stack = []
    for b in _BRACKETS.finditer(expr, m.end()):
        c = b.group()
        if c in "([{":
            stack.append(_CLOSE[c])
        elif not stack or stack.pop() != c:
            return False  # mismatched: no expression (the parse says so)
        elif not stack:
            return b.end() == len(expr) and expr[m.end() : b.end()] != "[]"
    return False


def _atomic(expr) -> bool:
    if expr.isidentifier():  # a name (a keyword such as None parses as one too)
        return True
    if _NAME.match(expr) or _UNSIGNED.match(expr):
        return True  # what the parse below says of them, without parsing
    if _called(expr):
        return True  # what the parse says of a call or subscript
    if _parenthesized(expr):
        return True
    node = _parse(expr)
    if node is None:  # too deep for Python's parser: parentheses are always right
        return False
    if isinstance(node, ast.Constant):
        return not (isinstance(node.value, (int, float)) and node.value < 0)
    return isinstance(node, (ast.Name, ast.Call, ast.Attribute, ast.Subscript))


def wrap(expr) -> Code:
    return Code(expr if _atomic(expr) else f"({expr})")


def condition_check(conds, name):
    """``if a or b: raise ValueError(...)`` inside a kernel, laid out like ruff format."""
    message = literal(f"the shape of {name!r}")
    return Code(
        f"if {condition(conds)}:\n{' ' * 2 * INDENT}raise ValueError({message})"
    )


def bracketed(prefix, items, suffix, indent, parens=True):
    """``prefix(a, b)suffix`` laid out as ``ruff format`` does when it is too long: the
    items on one indented line if they fit, else one per line with a trailing comma.
    ``parens=False``: a bare tuple (``return a, b``), which ruff splits one per line."""
    open_, close = ("(", ")") if parens else ("", "")
    one = f"{prefix}{open_}{', '.join(items)}{close}{suffix}"
    if indent + len(one) <= LINE or not items:
        return Code(one)
    pad = " " * (indent + INDENT)
    inner = ", ".join(items)
    if indent + INDENT + len(inner) <= LINE and (parens or len(items) == 1):
        return Code(f"{prefix}(\n{pad}{inner}\n{' ' * indent}){suffix}")
    body = "".join(f"{pad}{item},\n" for item in items)
    return Code(f"{prefix}(\n{body}{' ' * indent}){suffix}")


def assign(targets, fname, args, indent):
    """``a, b = f(x, y)``, formatted as ``ruff format`` does: the call's arguments split
    if ``a, b = f(`` fits, else the call in parentheses if ``a, b = (`` does, else the
    targets one per line."""
    lhs = ", ".join(targets)
    if indent + len(lhs) + 3 + len(fname) + 1 <= LINE:
        return bracketed(f"{lhs} = {fname}", args, "", indent)
    if indent + len(lhs) + 4 <= LINE or len(targets) == 1:
        call = bracketed(fname, args, "", indent + INDENT)
        return Code(f"{lhs} = (\n{' ' * (indent + INDENT)}{call}\n{' ' * indent})")
    pad = " " * (indent + INDENT)
    body = "".join(f"{pad}{t},\n" for t in targets)
    call = bracketed(f") = {fname}", args, "", indent)
    return Code(f"(\n{body}{' ' * indent}{call}")


def statement(text, indent=INDENT):
    """One of our one-line statements ``t = value`` (``+=``, ``/=``) at ``indent``, its
    value laid out as ruff does."""
    target, op, rhs = re.fullmatch(r"(\S+) ([+/]?=) (.*)", text).groups()
    head = f"{target} {op} "
    return Code(head + value(rhs, indent + len(head), indent))
