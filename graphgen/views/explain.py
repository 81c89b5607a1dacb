"""Chain-rule explanations of one gradient, in the spec's own names.

:func:`explain` reads the same graphs the compiler builds and writes, for one node
``NAME``:

* every path from ``NAME`` to the loss, as a product of local derivatives
  (∂J/∂W1 = ∂J/∂y · ∂y/∂z2 · ... · ∂z1/∂W1), and the sum over the paths;
* the backprop form grouped at the hidden unit (∂J/∂W1 = ∂J/∂h1 · ∂h1/∂z1 · ∂z1/∂W1)
  and what it means for one weight (``w12``);
* for every node on those paths with several successors, the sum over successors
  ∂J/∂h = Σ_k ∂J/∂k · ∂k/∂h with the successors named;
* each local derivative in closed form, from the op's math text;
* with ``values``, the numbers for one set of arrays, checked against the generated
  module's ``value_and_grad`` (to 1e-10).

Formats: ``text`` (Unicode), ``markdown`` (GitHub, ``$...$`` math) and ``latex`` (a
standalone document).
"""

from __future__ import annotations

import re

import networkx as nx
import numpy as np

from .. import graph as g
from .. import ops
from ..errors import ExplainError, GradientError, did_you_mean
from ..notes import fill, local_templates, partial, product, sum_over
from . import forward_mode
from .diagram import gradient_terms, visible
from .values import (
    ModuleGradients,
    adjoint_value,
    evaluate,
    load_arrays,
    local_elementwise,
    norm,
    term_value,
)

__all__ = ["FORMATS", "explain"]

FORMATS = ("text", "markdown", "latex")
MAX_PATHS = 12
TOL = 1e-10


# ----------------------------------------------------------------------------- formats

_TEX_TEXT = {
    "\\": r"\textbackslash{}",
    "{": r"\{",
    "}": r"\}",
    "_": r"\_",
    "^": r"\^{}",
    "~": r"\~{}",
    "$": r"\$",
    "&": r"\&",
    "#": r"\#",
    "%": r"\%",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    '"': r"\textquotedbl{}",
    "|": r"\textbar{}",
}
_TEX_MATH = {
    "∂": r"\partial ",
    "σ": r"\sigma ",
    "·": r"\cdot ",
    "−": "-",
    "²": "^{2}",
    "ᵀ": r"^{\top}",
    "√": r"\sqrt ",
    "Σ": r"\sum ",
    "≥": r"\geq ",
    "≤": r"\leq ",
    "×": r"\times ",
    "{": r"\{",
    "}": r"\}",
    "%": r"\%",
    "#": r"\#",
    "&": r"\&",
    "$": r"\$",
    "~": r"\sim ",
    "\\": r"\backslash ",
    "@": r"\mathbin{@}",
    "̄": "",
    "<": r"\lt ",
    ">": r"\gt ",
}
_FUNCS = {
    "exp",
    "log",
    "tanh",
    "mean",
    "max",
    "min",
    "sign",
    "softmax",
    "onehot",
    "logsumexp",
    "transpose",
    "reshape",
    "broadcast_to",
    "sum_to_shape",
    "concat",
    "sin",
    "cos",
    "zeros",
}


def tex_text(s) -> str:
    """``s`` escaped for LaTeX text mode (control and non-ASCII characters spelled out)."""
    out = []
    for ch in visible(s):
        if ch in _TEX_TEXT:
            out.append(_TEX_TEXT[ch])
        elif ord(ch) > 126:
            out.append(f"[U+{ord(ch):04X}]")
        else:
            out.append(ch)
    return "".join(out)


class Text:
    """Plain Unicode text, for terminals."""

    name_ = "text"
    vg = "value_and_grad"
    none = "–"

    def code(self, s):
        return s

    def name(self, n, index=None):
        return visible(n) + (f"[{index}]" if index else "")

    def d(self, num, den):
        return partial(num, den)

    def dot(self, parts):
        return product(parts)

    def plus(self, parts):
        return " + ".join(parts)

    def eq(self, *parts):
        return " = ".join(parts)

    def arrow(self, nodes):
        return " → ".join(nodes)

    def sum_over(self, var, body):
        return sum_over(var, body)

    def num(self, x):
        return f"{x:.6g}"

    def template(self, tmpl, ids, attrs, loss):
        return fill(
            tmpl,
            ids,
            attrs,
            show=self.name,
            bar=lambda n: partial(self.name(loss), self.name(n)),
        )

    def m(self, e):
        return e

    def p(self, *parts):
        return "".join(parts)

    def prose_name(self, n):
        return visible(n)

    def heading(self, text, level=1):
        return [text, ("=" if level == 1 else "-") * min(len(text), 78), ""]

    def para(self, text):
        return [text, ""]

    def display(self, e):
        return ["    " + e, ""]

    def bullets(self, items):
        return [f"  - {it}" for it in items] + [""]

    def table(self, head, rows):
        widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]

        def line(r):
            return "  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()

        return (
            [line(head), "  " + "  ".join("-" * w for w in widths)]
            + [line(r) for r in rows]
            + [""]
        )

    def document(self, lines):
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines) + "\n"

    def ok(self, good):
        return "✓" if good else "✗ MISMATCH"


class Latex(Text):
    """A standalone LaTeX document (amsmath); names are escaped text."""

    name_ = "latex"
    vg = r"\texttt{value\_and\_grad}"
    none = "--"

    def code(self, s):
        return r"\texttt{" + tex_text(s) + "}"

    def name(self, n, index=None):
        s = r"\text{" + tex_text(n) + "}"
        return s + (r"_{[" + tex_text(index) + "]}" if index else "")

    def d(self, num, den):
        return r"\frac{\partial " + num + r"}{\partial " + den + "}"

    def dot(self, parts):
        return r" \cdot ".join(parts)

    def arrow(self, nodes):
        return r" \to ".join(nodes)

    def sum_over(self, var, body):
        return r"\sum_{" + var + "} " + body

    def num(self, x):
        m, _, e = f"{x:.6g}".partition("e")
        return m + (r"\times 10^{" + str(int(e)) + "}" if e else "")

    def template(self, tmpl, ids, attrs, loss):
        return tex_template(
            tmpl, ids, attrs, self.name, lambda n: self.d(self.name(loss), self.name(n))
        )

    def m(self, e):
        return f"${e}$"

    def prose_name(self, n):
        return r"\texttt{" + tex_text(n) + "}"

    def p(self, *parts):
        return "".join(parts)

    def heading(self, text, level=1):
        return [("\\section*{" if level == 1 else "\\subsection*{") + text + "}", ""]

    def para(self, text):
        return [text, ""]

    def display(self, e):
        return [r"\begin{equation*}", e, r"\end{equation*}", ""]

    def bullets(self, items):
        return (
            [r"\begin{itemize}"]
            + [r"\item " + it for it in items]
            + [r"\end{itemize}", ""]
        )

    def table(self, head, rows):
        cols = "l" * len(head)
        out = [r"\begin{tabular}{" + cols + "}", " & ".join(head) + r" \\", r"\hline"]
        out += [" & ".join(map(str, r)) + r" \\" for r in rows]
        return out + [r"\end{tabular}", ""]

    def document(self, lines):
        head = [
            r"\documentclass{article}",
            r"\usepackage[T1]{fontenc}",
            r"\usepackage{amsmath}",
            r"\usepackage{amssymb}",
            r"\begin{document}",
            "",
        ]
        return "\n".join(head + lines + [r"\end{document}"]) + "\n"

    def ok(self, good):
        return r"$\checkmark$" if good else r"\textbf{MISMATCH}"


class Markdown(Latex):
    """GitHub Markdown with ``$...$`` math."""

    name_ = "markdown"
    vg = "`value_and_grad`"

    def code(self, s):
        return f"`{s}`"

    def name(self, n, index=None):
        s = r"\mathrm{" + md_math_name(n) + "}"
        return s + (r"_{[" + md_math_name(index) + "]}" if index else "")

    def num(self, x):
        return Text.num(self, x)

    def prose_name(self, n):
        s = visible(n).replace("`", "'")
        return f"`{s}`"

    def heading(self, text, level=1):
        return ["#" * (level + 1) + " " + text, ""]

    def display(self, e):
        return ["$$", e, "$$", ""]

    def bullets(self, items):
        return [f"- {it}" for it in items] + [""]

    def table(self, head, rows):
        def cell(c):
            return str(c).replace("|", r"\|")

        out = ["| " + " | ".join(map(cell, head)) + " |", "|" + "---|" * len(head)]
        return out + ["| " + " | ".join(map(cell, r)) + " |" for r in rows] + [""]

    def document(self, lines):
        return Text.document(self, lines)

    def ok(self, good):
        return "✓" if good else "**MISMATCH**"


def md_math_name(s) -> str:
    """A name inside GitHub math: letters kept, everything else spelled safely."""
    out = []
    for ch in visible(s):
        if ch.isascii() and ch.isalnum() or ch in " .,:;'()[]+-=/!?":
            out.append(ch if ch != " " else r"\ ")
        elif ch == "_":
            out.append(r"\_")
        elif ch in _TEX_MATH and ch not in "̄":
            out.append(_TEX_MATH[ch])
        elif ch == "\\":
            out.append(r"\backslash ")
        else:
            out.append(
                rf"\unicode{{x{ord(ch):X}}}"
                if ord(ch) > 126
                else {
                    "*": r"\ast ",
                    "^": r"\hat{}",
                    "|": r"\vert ",
                    '"': "''",
                    "`": "'",
                }.get(ch, "?")
            )
    return "".join(out)


_TOKEN = re.compile(r"\{(\w+)\}(\[i\])?̄|\{(\w+)\}|[A-Za-z_]{2,}|\^\(|.", re.DOTALL)


def tex_template(tmpl, ids, attrs, name, bar):
    """An op's math/derivative template as LaTeX math, names filled in."""
    out = []
    depth = []  # closing text for '^(' groups
    for m in _TOKEN.finditer(tmpl):
        tok = m.group(0)
        if m.group(1):
            out.append(bar(ids[m.group(1)]) if m.group(1) in ids else "")
        elif m.group(3):
            key = m.group(3)
            if key in ids:
                out.append(name(ids[key]))
            elif attrs and key in attrs:
                out.append(r"\text{" + tex_text(attrs[key]) + "}")
            else:
                out.append(r"\{" + tex_text(key) + r"\}")
        elif tok == "^(":
            out.append("^{(")
            depth.append(")}")
        elif tok == ")" and depth:
            out.append(depth.pop())
        elif len(tok) >= 2:
            word = tok.replace("_", r"\_")
            out.append(
                r"\operatorname{" + word + "}"
                if tok in _FUNCS
                else r"\text{ " + word + " }"
            )
        elif tok == "^":
            out.append("^")
        elif tok in _TEX_MATH:
            out.append(_TEX_MATH[tok])
        elif ord(tok) > 126:
            out.append("?")
        else:
            out.append(tok)
    out.extend(reversed(depth))
    return "".join(out)


# ---------------------------------------------------------------------------- analysis


def _parse_wrt(H, wrt):
    """``"W1"`` or ``"W1[0,1]"`` -> (node, index tuple or None)."""
    if wrt in H:
        return wrt, None
    m = re.fullmatch(r"(.+)\[\s*(-?\d+(?:\s*,\s*-?\d+)*)\s*\]", str(wrt))
    if m and m.group(1) in H:
        node = m.group(1)
        idx = tuple(int(x) for x in m.group(2).split(","))
        shape = H.nodes[node][g.SHAPE]
        if len(idx) != len(shape) or any(
            isinstance(d, int) and not 0 <= i < d for i, d in zip(idx, shape)
        ):
            raise ExplainError(
                f"--wrt {wrt!r}: index out of range for shape "
                f"{tuple(shape)} (indices are 0-based)",
                source=g.source_of(H),
            )
        return node, idx
    hint = did_you_mean(str(wrt), [str(n) for n in H])
    raise ExplainError(f"--wrt: no node named {wrt!r}{hint}", source=g.source_of(H))


def _paths(H, src, loss):
    count = {loss: 1}
    for n in reversed(g.schedule(H)):
        if n != loss:
            count[n] = sum(count.get(k, 0) for k in H.successors(n))
    total = count.get(src, 0)
    paths = []
    if total:
        for p in nx.all_simple_paths(H, src, loss):
            paths.append(p)
            if len(paths) >= MAX_PATHS:
                break
        paths.sort(key=lambda p: [H.nodes[n][g.SEQ] for n in p])
    return paths, total


def _hidden_unit(H, path):
    """For W -> z -> ... -> u -> ... -> J: (z, u) with u the first nonlinearity after a
    chain of elementwise linear ops (the pre-activation), else None."""
    if len(path) < 3 or H.nodes[path[1]][g.KIND] != g.OPNODE:
        return None
    shape = tuple(H.nodes[path[1]][g.SHAPE])
    for n in path[2:-1]:
        op = ops.get(H.nodes[n][g.OP])
        if tuple(H.nodes[n][g.SHAPE]) != shape:
            return None
        if op.activation:
            return path[1], n
        if not op.linear:
            return None
    return None


# ------------------------------------------------------------------------------ explain


def explain(
    G, wrt, format="text", values=False, *, arrays=None, seed=0, mode="reverse"
):
    """Explain ∂loss/∂``wrt`` with the chain rule, in the spec's names.

    Parameters
    ----------
    G : networkx.DiGraph
        A graphgen graph (:func:`graphgen.load`).
    wrt : str
        Any node (usually a param). ``"W1[0,1]"`` (0-based) explains one element.
    format : {"text", "markdown", "latex"}
    values : bool or str
        Add numbers for one set of arrays (random with ``seed``, or the ``.npz`` file
        given here, or ``arrays``) and check them against the generated module.
    mode : {"reverse", "forward"}
        ``"forward"``: forward accumulation, the sum over predecessors from ``wrt``
        toward the loss, beside the reverse sum over successors
        (:mod:`graphgen.views.forward_mode`).

    Returns
    -------
    str

    Examples
    --------
    >>> import graphgen
    >>> text = graphgen.explain(graphgen.load("examples/tiny.yaml"), "W1")
    >>> "∂J/∂W1 = ∂J/∂h1 · ∂h1/∂z1 · ∂z1/∂W1" in text
    True
    """
    from ..passes.shapes import prepare

    if format not in FORMATS:
        raise ExplainError(f"unknown format {format!r} (known: {', '.join(FORMATS)})")
    if mode not in ("reverse", "forward"):
        raise ExplainError(f"unknown mode {mode!r} (known: reverse, forward)")
    F = {"text": Text, "markdown": Markdown, "latex": Latex}[format]()
    H = prepare(G)
    loss = H.graph.get("loss")
    if loss is None:
        raise GradientError(
            "nothing to explain: the spec has no loss", source=g.source_of(H)
        )
    node, index = _parse_wrt(H, wrt)
    title = F.d(F.name(loss), F.name(node, _index_text(index)))
    out = F.heading(F.p("Chain rule for ", F.m(title)))
    paths, total = _paths(H, node, loss)
    c = _Case(F, H, loss, node, index, paths)
    if not paths:
        return F.document(out + _no_path(c))
    if mode == "forward":
        given = arrays if arrays is not None else values
        out += _paths_section(c, total)
        return F.document(out + forward_mode.sections(c, given or None, seed))
    grouped = _grouped(H, paths)
    fan = _fan(H, paths, loss)
    out += _paths_section(c, total)
    out += _grouped_section(c, grouped)
    out += _sums_section(c, fan)
    out += _local_section(c, fan)
    if values or arrays is not None:
        given = arrays if arrays is not None else values
        out += _values_section(c, fan, grouped, given, seed)
    return F.document(out)


class _Case:
    """What every section reads: the format, the graph, ∂``loss``/∂``node`` and its
    paths to the loss."""

    def __init__(self, F, H, loss, node, index, paths):
        self.F, self.H, self.loss, self.node, self.index = F, H, loss, node, index
        self.paths = paths
        self.N, self.L = F.name, F.name(loss)

    def factor(self, j, k):
        """∂k/∂j."""
        return self.F.d(self.N(k), self.N(j))

    def chain(self, seg):
        """The product of the local derivatives along ``seg``, from its end back."""
        return self.F.dot(
            [self.factor(seg[t], seg[t + 1]) for t in reversed(range(len(seg) - 1))]
        )


def _grouped(H, paths):
    """The (pre-activation, unit) pairs the paths pass through, in path order."""
    grouped = []
    for p in paths:
        hu = _hidden_unit(H, p)
        if hu and hu not in grouped:
            grouped.append(hu)
    return grouped


def _fan(H, paths, loss):
    """(node, successors) for each node on the paths that has several successors."""
    on_paths = []
    for p in paths:
        for n in p[:-1]:
            if n not in on_paths:
                on_paths.append(n)
    fan = [(n, gradient_terms(H, n, loss)) for n in on_paths]
    return [(n, t) for n, t in fan if len(t) > 1]


def _weight_name(i, j):
    return f"w{i + 1}{j + 1}" if i < 9 and j < 9 else f"w_{i + 1},{j + 1}"


def _no_path(c):
    F, N, L = c.F, c.N, c.L
    return F.para(
        F.p(
            "The loss ",
            F.prose_name(c.loss),
            " does not depend on ",
            F.prose_name(c.node),
            ": no path leads from it to the loss, so ",
            F.m(F.eq(F.d(L, N(c.node)), "0")),
            ".",
        )
    )


def _paths_section(c, total):
    """1. Every path to the loss, as a product, and their sum."""
    F, N, L, node, paths = c.F, c.N, c.L, c.node, c.paths
    out = F.heading("Every path to the loss", 2)
    many = "one path" if total == 1 else f"{total} paths"
    out += F.para(
        F.p(
            F.prose_name(c.loss),
            " depends on ",
            F.prose_name(node),
            " along ",
            many,
            ". Along a path, the chain rule multiplies the local "
            "derivative of every step, from the loss back:",
        )
    )
    products = []
    for i, p in enumerate(paths, 1):
        prod = c.chain(p)
        products.append(prod)
        label = f"path {i}: " if total > 1 else ""
        out += F.para(F.p(label, F.m(F.arrow([N(n) for n in reversed(p)]))))
        out += F.display(
            F.eq(
                F.d(L, N(node))
                + (f"|_{{{i}}}" if total > 1 and F.name_ != "text" else ""),
                prod,
            )
            if total > 1 and F.name_ != "text"
            else F.eq(F.d(L, N(node)) + (f"  (path {i})" if total > 1 else ""), prod)
        )
    if total > 1:
        shown = "" if total <= len(paths) else f" (the first {len(paths)} shown)"
        out += F.para(F.p("The gradient is the sum over the paths", shown, ":"))
        out += F.display(
            F.eq(
                F.d(L, N(node)),
                F.plus(
                    [f"({p})" for p in products]
                    + (
                        [r"\dots" if F.name_ != "text" else "…"]
                        if total > len(paths)
                        else []
                    )
                ),
            )
        )
    return out


def _grouped_section(c, grouped):
    """2. The product grouped at each hidden unit, and for one weight."""
    F, N, L, H, node = c.F, c.N, c.L, c.H, c.node
    out = []
    for z, u in grouped:
        out += F.heading(F.p("Grouped at the hidden unit ", F.m(N(u))), 2)
        three = F.eq(
            F.d(L, N(node)), F.dot([F.d(L, N(u)), F.d(N(u), N(z)), F.d(N(z), N(node))])
        )
        out += F.para(
            "Backpropagation computes the same product in three factors: the "
            "error arriving at the unit, the unit's slope, and what the weight "
            "contributes to its input:"
        )
        out += F.display(three)
        pu = next(p for p in c.paths if u in p)
        seg_up = pu[pu.index(u) :]
        seg_mid = pu[pu.index(z) : pu.index(u) + 1]
        if len(gradient_terms(H, u, c.loss)) > 1:
            parts = [
                F.p(
                    F.m(F.d(L, N(u))),
                    " is the sum over the successors of ",
                    F.prose_name(u),
                    " (below): the error backpropagated to it",
                )
            ]
        else:
            parts = [
                F.p(
                    F.m(F.eq(F.d(L, N(u)), c.chain(seg_up))),
                    " (the error backpropagated to ",
                    F.prose_name(u),
                    ")",
                )
            ]
        if len(seg_mid) > 2:
            parts.append(
                F.p(
                    F.m(F.eq(F.d(N(u), N(z)), c.chain(seg_mid))),
                    " (elementwise steps between the pre-activation and the unit)",
                )
            )
        out += F.bullets(parts)
        out += _one_weight(c, z, u)
    return out


def _one_weight(c, z, u):
    """The element-level product for one weight of ``z = a @ node``."""
    F, N, L, H, node = c.F, c.N, c.L, c.H, c.node
    elem = _element_case(H, node, z, c.index)
    if elem is None:
        return []
    i, j = elem
    a_in = g.operands(H, z)[0]
    w = _weight_name(i, j)
    out = F.para(
        F.p(
            "For one weight: ",
            F.m(N(w)),
            " = ",
            F.prose_name(node),
            f"[{i}, {j}] (0-based) only reaches column {j} of ",
            F.prose_name(z),
            ", so summing over the rows n of the batch:",
        )
    )
    nj, ij = f"n,{j}", f"{i},{j}"
    out += F.display(
        F.eq(
            F.d(L, N(w)),
            F.sum_over(
                "n",
                F.dot(
                    [
                        F.d(L, N(u, nj)),
                        F.d(N(u, nj), N(z, nj)),
                        F.d(N(z, nj), N(node, ij)),
                    ]
                ),
            ),
        )
    )
    out += F.para(
        F.p(
            "with ",
            F.m(F.eq(F.d(N(z, nj), N(node, ij)), N(a_in, f"n,{i}"))),
            f" (since {visible(z)} = {visible(a_in)} @ {visible(node)})."
            if F.name_ == "text"
            else ".",
        )
    )
    return out


def _sums_section(c, fan):
    """3. The sum over successors of each node on the paths that fans out."""
    F, N, L = c.F, c.N, c.L
    if not fan:
        return []
    out = F.heading("Sums over successors", 2)
    out += F.para(
        F.p(
            "A node that feeds several successors gets a gradient from each "
            "of "
            "them; the compiler adds them in one ",
            F.code("add_n"),
            " node:",
        )
    )
    for n, terms in fan:
        succ = ", ".join(F.prose_name(k) for k in dict.fromkeys(terms))
        out += F.para(
            F.p(
                F.prose_name(n),
                f" has {len(terms)} successors that send a gradient back (",
                succ,
                "):",
            )
        )
        out += F.display(
            F.eq(
                F.d(L, N(n)),
                F.sum_over("k", F.dot([F.d(L, "k"), F.d("k", N(n))])),
                F.plus([F.dot([F.d(L, N(k)), F.d(N(k), N(n))]) for k in terms]),
            )
        )
    return out


def _local_section(c, fan):
    """4. Each local derivative on the paths and sums, in closed form."""
    F, H, loss = c.F, c.H, c.loss
    edges = []
    for p in c.paths:
        for t in range(len(p) - 1):
            if (p[t], p[t + 1]) not in edges:
                edges.append((p[t], p[t + 1]))
    for n, terms in fan:
        for k in terms:
            if (n, k) not in edges:
                edges.append((n, k))
    edges.sort(key=lambda e: (-H.nodes[e[1]][g.SEQ], H.nodes[e[0]][g.SEQ]))
    out = F.heading("Local derivatives (from each op's math)", 2)
    items = []
    for j, k in edges:
        ids, templates = local_templates(H, j, k)
        if not templates:
            continue
        attrs = H.nodes[k][g.ATTRS]
        op = ops.get(H.nodes[k][g.OP])
        math = F.template(
            op.math.replace("{xs}", "(…)") if op.variadic else op.math, ids, attrs, loss
        )
        ds = [F.m(F.template(tmpl, ids, attrs, loss)) for tmpl in templates]
        note = ""
        if "̄" in op.derivs[0]:
            note = F.p(
                " (a vector-Jacobian product: ",
                F.m(c.factor(j, k)),
                " is applied as this product)",
            )
        items.append(
            F.p(F.m(c.factor(j, k)), ": through ", F.m(math), ": ", ", ".join(ds), note)
        )
    out += F.bullets(items)
    return out


def _index_text(index):
    return ",".join(map(str, index)) if index else None


def _element_case(H, node, z, index):
    """(i, j) when ``z = a @ node`` with a 2-D ``node``: the element-level product."""
    a = H.nodes[z]
    if (
        a.get(g.OP) != "matmul"
        or g.operands(H, z)[1] != node
        or g.operands(H, z)[0] == node
    ):
        return None
    shape = H.nodes[node][g.SHAPE]
    if len(shape) != 2 or len(H.nodes[z][g.SHAPE]) != 2:
        return None
    if index is not None:
        return index
    cols = shape[1] if isinstance(shape[1], int) else 2
    return (0, 1) if cols > 1 else (0, 0)


def _values_section(c, fan, grouped, given, seed):
    """5. The numbers for one set of arrays, checked against the generated module."""
    from ..api import lower

    F, N, L, H = c.F, c.N, c.L, c.H
    arrays = load_arrays(H, True if given is True or given is None else given, seed)
    on_paths = list(dict.fromkeys(n for p in c.paths for n in p[:-1]))
    A = lower(H)
    vals = evaluate(A, arrays)
    module = ModuleGradients(H, arrays, vals)
    out = F.heading(
        "Numbers (one random set of arrays)"
        if not isinstance(given, (str, dict))
        else "Numbers (the given arrays)",
        2,
    )
    out += F.para(
        F.p(
            "The loss ",
            F.m(F.eq(L, F.num(float(module.loss)))),
            f"; seed {seed}. Norms are Frobenius norms over the whole array.",
        )
    )
    out += _norms_table(c, A, vals, on_paths)
    checks = _Checks(F)
    ours = adjoint_value(A, vals, c.node, np.shape(vals[c.node]))
    if ours is not None:
        checks(
            F.p(F.m(F.d(L, N(c.node))), " from the chain rule vs ", F.vg),
            ours,
            module(c.node),
        )
    for n, terms in fan:
        out += _sum_terms(c, A, vals, n, terms, checks, module)
    for z, u in grouped:
        out += _weight_factors(c, A, vals, z, u, checks, module)
    out += F.heading(
        F.p("Checks against the generated ", F.vg, " (tolerance 1e-10)"), 2
    )
    out += F.bullets(checks.lines)
    return out


class _Checks:
    """Our numbers against the generated module's, one line each."""

    def __init__(self, F):
        self.F = F
        self.lines = []

    def __call__(self, label, ours, theirs):
        diff = (
            float(np.max(np.abs(np.asarray(ours) - np.asarray(theirs))))
            if np.size(ours)
            else 0.0
        )
        good = diff <= TOL
        self.lines.append(
            self.F.p(label, f": max |difference| = {diff:.1e} ", self.F.ok(good))
        )
        return good


def _norms_table(c, A, vals, on_paths):
    F, N = c.F, c.N
    rows = []
    for n in list(reversed(on_paths)):
        adj = adjoint_value(A, vals, n, np.shape(vals[n]))
        rows.append(
            [
                F.m(N(n)),
                F.num(norm(vals[n])),
                F.num(norm(adj)) if adj is not None else F.none,
            ]
        )
    return F.table(
        [
            "node",
            "‖value‖" if F.name_ == "text" else "norm of value",
            "‖∂J/∂node‖" if F.name_ == "text" else "norm of gradient",
        ],
        rows,
    )


def _sum_terms(c, A, vals, n, terms, check, module):
    """The terms of the sum over the successors of ``n``, and their sum checked."""
    F, N, L = c.F, c.N, c.L
    parts = [term_value(A, vals, n, k) for k in dict.fromkeys(terms)]
    if any(t is None for t in parts):
        return []
    term_rows = [
        [F.m(F.dot([F.d(L, N(k)), F.d(N(k), N(n))])), F.num(norm(t))]
        for k, t in zip(dict.fromkeys(terms), parts)
    ]
    out = F.para(F.p("The terms of the sum for ", F.prose_name(n), ":"))
    out += F.table(["term", "norm"], term_rows)
    check(
        F.p("the sum over the successors of ", F.prose_name(n), " vs ", F.vg),
        sum(parts[1:], parts[0]),
        module(n),
    )
    return out


def _weight_factors(c, A, vals, z, u, check, module):
    """The three factors of one weight's gradient row by row, and their sum checked."""
    F, N, L, H, node = c.F, c.N, c.L, c.H, c.node
    elem = _element_case(H, node, z, c.index)
    if elem is None:
        return []
    i, j = elem
    pu = next(p for p in c.paths if u in p)
    mid = pu[pu.index(z) : pu.index(u) + 1]
    slope = np.ones_like(vals[z], dtype=np.float64)
    for t in range(len(mid) - 1):
        slope = slope * local_elementwise(H, vals, mid[t], mid[t + 1])
    delta = adjoint_value(A, vals, u, np.shape(vals[u]))
    if delta is None:
        return []
    check(
        F.p(
            F.m(F.d(L, N(u))),
            " vs ",
            F.vg,
            " with ",
            F.prose_name(u),
            " fed as an input",
        ),
        delta,
        module(u),
    )
    x = vals[g.operands(H, z)[0]]
    per = delta[:, j] * slope[:, j] * x[:, i]
    rows = [
        [
            str(r),
            F.num(delta[r, j]),
            F.num(slope[r, j]),
            F.num(x[r, i]),
            F.num(per[r]),
        ]
        for r in range(min(len(per), 8))
    ]
    out = F.para(
        F.p("The three factors for ", F.m(N(_weight_name(i, j))), " row by row:")
    )
    out += F.table(
        [
            "n",
            partial("J", visible(u)) if F.name_ == "text" else "dJ/du",
            "slope",
            visible(g.operands(H, z)[0]) if F.name_ == "text" else "input",
            "product",
        ],
        rows,
    )
    check(
        F.p(
            F.m(
                F.eq(
                    F.sum_over("n", "…" if F.name_ == "text" else r"\dots"),
                    F.num(float(per.sum())),
                )
            ),
            f" vs value_and_grad's {visible(node)}[{i}, {j}]"
            if F.name_ == "text"
            else F.p(" vs ", F.vg, "'s ", F.prose_name(f"{node}[{i}, {j}]")),
        ),
        per.sum(),
        module(node)[i, j],
    )
    return out
