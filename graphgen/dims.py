"""Symbolic dimensions.

A dimension is an ``int`` or a ``str``. A string is a polynomial over the symbolic sizes the
spec declares (``"batch"``, ``"6*batch"``, ``"batch + 3"``), written in one canonical form so
that two equal sizes are equal strings. Rules produce such sizes when they must: reshape with
``-1`` multiplies, concat adds, slicing subtracts. The canonical form is a valid Python
expression over the symbols, so the code generator can render it once the symbols are bound.
"""

from __future__ import annotations

import ast
import re

SYMBOL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# A polynomial: {monomial: coefficient}, a monomial being a sorted tuple of symbols.
Poly = dict


def poly(d) -> Poly:
    """The polynomial of a dimension."""
    if isinstance(d, bool):
        raise TypeError(f"not a dimension: {d!r}")
    if isinstance(d, int):
        return {(): d} if d else {}
    if isinstance(d, str):
        return _parse(ast.parse(d, mode="eval").body)
    raise TypeError(f"not a dimension: {d!r}")


def _parse(e) -> Poly:
    if isinstance(e, ast.Constant) and type(e.value) is int:
        return {(): e.value} if e.value else {}
    if isinstance(e, ast.Name):
        return {(e.id,): 1}
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub):
        return {m: -c for m, c in _parse(e.operand).items()}
    if isinstance(e, ast.BinOp):
        a, b = _parse(e.left), _parse(e.right)
        if isinstance(e.op, ast.Add):
            return _padd(a, b)
        if isinstance(e.op, ast.Sub):
            return _padd(a, {m: -c for m, c in b.items()})
        if isinstance(e.op, ast.Mult):
            return _pmul(a, b)
    raise ValueError(f"not a dimension expression: {ast.unparse(e)!r}")


def _padd(a: Poly, b: Poly) -> Poly:
    out = dict(a)
    for m, c in b.items():
        out[m] = out.get(m, 0) + c
        if out[m] == 0:
            del out[m]
    return out


def _pmul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            out = _padd(out, {tuple(sorted(ma + mb)): ca * cb})
    return out


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
