"""Symbolic dimensions.

A dimension is an ``int`` or a ``str``. A string is a polynomial over the symbolic sizes the
spec declares (``"batch"``, ``"6*batch"``, ``"batch + 3"``), written in one canonical form so
that two equal sizes are equal strings. Rules produce such sizes when they must: reshape with
``-1`` multiplies, concat adds, slicing subtracts. The canonical form is a valid Python
expression over the symbols, so the code generator can render it once the symbols are bound.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import keyword
import re

from .errors import DimensionError

SYMBOL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# A polynomial: {monomial: coefficient}, a monomial being a sorted tuple of symbols.
Poly = dict

# Bounds on a dimension expression a user writes (``"batch * (seq + 1)"``). Its text
# reaches generated code as it is, so it is read with the parser below (not Python's,
# which recurses once per nesting level and accepts comments, hex and ``1_000``), and
# bounded: nesting depth and operators (what Python's compiler can take in generated
# code), and terms, degree and coefficient size (what expanding it may cost).
MAX_NESTING = 100
MAX_OPERATORS = 1000
MAX_TERMS = 10_000
MAX_DEGREE = 256
MAX_DIGITS = 300
_TOO_BIG = 10**MAX_DIGITS

_TOKEN = re.compile(r"[ \t]*(?:([0-9]+)|([A-Za-z_][A-Za-z0-9_]*)|(.))", re.DOTALL)

# the symbols mentioned by every expression parsed inside dims.recording()
_RECORDING: contextvars.ContextVar = contextvars.ContextVar(
    "dims_recording", default=None
)


def poly(d) -> Poly:
    """The polynomial of a dimension.

    A string is a polynomial over symbols: non-negative decimal integers, identifier
    names (not Python keywords), ``+``, ``-``, ``*``, unary ``-`` and parentheses.
    Anything else raises :class:`DimensionError` (a ``ValueError``).
    """
    if isinstance(d, bool):
        raise TypeError(f"not a dimension: {d!r}")
    if isinstance(d, int):
        return {(): d} if d else {}
    if isinstance(d, str):
        text = str(d)
        # the sizes of a graph repeat: parse each once (short ones: no megabyte keys)
        terms, names = (_parse_cached if len(text) <= 200 else _parse_text)(text)
        seen = _RECORDING.get()
        if seen is not None:
            seen.update(names)
        return dict(terms)
    raise TypeError(f"not a dimension: {d!r}")


@contextlib.contextmanager
def recording():
    """Collect, into the set it yields, every symbol the dimension expressions parsed
    inside the block mention (a symbol that cancels out, ``n - n``, too: its text still
    names it)."""
    seen = set()
    token = _RECORDING.set(seen)
    try:
        yield seen
    finally:
        _RECORDING.reset(token)
        outer = _RECORDING.get()
        if outer is not None:
            outer |= seen


def _short(text, limit=60):
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _parse_text(text):
    """``(terms, names)``: the polynomial of ``text`` as a tuple of items, and the
    symbols it mentions. Iterative (operator precedence over two stacks), so the
    nesting a user writes costs no recursion."""

    def fail(why):
        raise DimensionError(f"{_short(text)} is not a dimension expression: {why}")

    operands = []
    operators = []  # "+", "-", "*" (binary), "u-" (unary minus), "("
    nesting = 0  # the "u-" and "(" on the stack
    binary = 0  # binary operators read
    names = set()

    def apply():
        nonlocal nesting
        op = operators.pop()
        if op == "u-":
            nesting -= 1
            operands[-1] = {m: -c for m, c in operands[-1].items()}
            return
        b, a = operands.pop(), operands.pop()
        if op == "*" and len(a) * len(b) > MAX_TERMS:
            fail(f"a product of more than {MAX_TERMS} terms")
        out = _pmul(a, b) if op == "*" else _padd(a, b, -1 if op == "-" else 1)
        if len(out) > MAX_TERMS:
            fail(f"more than {MAX_TERMS} terms")
        if any(len(m) > MAX_DEGREE for m in out):
            fail(f"a term of more than {MAX_DEGREE} factors")
        if any(abs(c) >= _TOO_BIG for c in out.values()):
            fail(f"a coefficient of more than {MAX_DIGITS} digits")
        operands.append(out)

    expect_operand = True
    for number, name, other in _TOKEN.findall(text):
        if other in ("", " ", "\t") and not (number or name):
            continue  # blanks at the end
        if expect_operand:
            if number:
                if len(number) > MAX_DIGITS:
                    fail(f"a number of more than {MAX_DIGITS} digits")
                if number[0] == "0" and number != "0":
                    fail(f"{number!r}: a number cannot start with 0")
                operands.append({(): int(number)} if number != "0" else {})
                expect_operand = False
            elif name:
                if keyword.iskeyword(name):
                    fail(f"{name!r} is a Python keyword, not a size")
                names.add(name)
                operands.append({(name,): 1})
                expect_operand = False
            elif other in ("-", "("):
                nesting += 1
                if nesting > MAX_NESTING:
                    fail(f"nested more than {MAX_NESTING} levels deep")
                operators.append("u-" if other == "-" else "(")
            else:
                fail("expected a number, a symbol, '-' or '('" + _got(other))
        elif other in ("+", "-", "*"):
            binary += 1
            if binary > MAX_OPERATORS:
                fail(f"more than {MAX_OPERATORS} operators")
            tight = 2 if other == "*" else 1  # left-associative: apply what binds as
            while operators and operators[-1] != "(":  # tightly or tighter first
                top = operators[-1]
                if top != "u-" and (2 if top == "*" else 1) < tight:
                    break
                apply()
            operators.append(other)
            expect_operand = True
        elif other == ")":
            while operators and operators[-1] != "(":
                apply()
            if not operators:
                fail("')' without '('")
            operators.pop()
            nesting -= 1
        else:
            fail("expected '+', '-', '*' or ')'" + _got(number or name or other))
    if expect_operand:
        fail("it ends in an operator" if text.strip(" \t") else "it is empty")
    while operators:
        if operators[-1] == "(":
            fail("'(' without ')'")
        apply()
    return tuple(operands[0].items()), frozenset(names)


_parse_cached = functools.lru_cache(maxsize=4096)(_parse_text)


def _got(token):
    return f", got {token!r}"


def _padd(a: Poly, b: Poly, sign=1) -> Poly:
    out = dict(a)
    for m, c in b.items():
        out[m] = out.get(m, 0) + sign * c
        if out[m] == 0:
            del out[m]
    return out


def _pmul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            m = tuple(sorted(ma + mb))
            out[m] = out.get(m, 0) + ca * cb
    return {m: c for m, c in out.items() if c}


def from_poly(p: Poly):
    """The canonical dimension of a polynomial: an int when it has no symbols."""
    if not p:
        return 0
    if list(p) == [()]:
        return p[()]
    terms = sorted(p.items(), key=lambda mc: (-len(mc[0]), mc[0]))
    out = ""
    for m, c in terms:
        body = "*".join(m)
        mag = abs(c)
        term = body if not m else (body if mag == 1 else f"{mag}*{body}")
        if not m:
            term = str(mag)
        if not out:
            out = f"-{term}" if c < 0 else term
        else:
            out += f" - {term}" if c < 0 else f" + {term}"
    return out


def add(a, b):
    return from_poly(_padd(poly(a), poly(b)))


def sub(a, b):
    return from_poly(_padd(poly(a), {m: -c for m, c in poly(b).items()}))


def mul(a, b):
    return from_poly(_pmul(poly(a), poly(b)))


def prod(dims):
    out = 1
    for d in dims:
        out = mul(out, d)
    return out


def exact_div(a, b):
    """``a / b`` when ``b`` is a single term dividing every term of ``a``, else None."""
    pb = poly(b)
    if len(pb) != 1:
        return None
    ((mb, cb),) = pb.items()
    out: Poly = {}
    for m, c in poly(a).items():
        rest = list(m)
        for s in mb:
            if s not in rest:
                return None
            rest.remove(s)
        if c % cb:
            return None
        out[tuple(rest)] = c // cb
    return from_poly(out)


def is_static(d) -> bool:
    return isinstance(d, int)


def symbols(d) -> list:
    """The symbols a dimension mentions, sorted."""
    if isinstance(d, int):
        return []
    return sorted({s for m in poly(d) for s in m})


def render(d, name_of) -> str:
    """Python source for a dimension, with each symbol replaced by ``name_of(symbol)``."""
    if isinstance(d, int):
        return str(d)
    text = re.sub(r"[A-Za-z_][A-Za-z0-9_]*", lambda m: name_of(m.group(0)), d)
    return text.replace("*", " * ")


def fmt_shape(shape) -> str:
    """A shape as users write it: ``(batch, 3)``."""
    if len(shape) == 1:
        return f"({shape[0]},)"
    return "(" + ", ".join(str(d) for d in shape) + ")"


def value(d, sizes) -> int:
    """The integer ``d`` is once its symbols have the sizes ``sizes`` (``KeyError`` names a
    symbol ``sizes`` lacks)."""
    total = 0
    for monomial, c in poly(d).items():
        for s in monomial:
            c *= sizes[s]
        total += c
    return total


def concrete(shape, sizes) -> tuple:
    """A shape with every symbolic size set from ``sizes``."""
    return tuple(d if isinstance(d, int) else value(d, sizes) for d in shape)
