"""Assignments laid out as ``ruff format`` lays them out, without running ruff.

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

import io
import tokenize

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
            return ("unary", op, self.unary())
        if op == "not":
            self.take()
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
