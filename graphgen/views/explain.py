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
import textwrap

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
    term_nodes,
    term_value,
)

__all__ = ["FORMATS", "explain"]

FORMATS = ("text", "markdown", "latex")
MAX_PATHS = 12
MAX_FACTORS = 10  # a longer product shows its first and last factors around a count
MAX_LOCAL = 40  # local derivatives listed at most
WIDTH = 100  # text lines are wrapped at this many characters
RTOL = 1e-9  # our numbers against the module's: relative to the largest magnitude
ATOL = 1e-12


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


def wrap(line, indent):
    """``line`` broken before `` + ``, `` · `` or `` → `` into lines of at most
    :data:`WIDTH` characters (where it can be), continued with ``indent``."""
    if len(line) <= WIDTH:
        return [line]
    parts = re.split(r"(?= \+ | · | → | = )", line)
    out, cur = [], ""
    for part in parts:
        if cur and len(cur) + len(part) > WIDTH:
            out.append(cur.rstrip())
            cur = indent + part.lstrip()
        else:
            cur += part
    out.append(cur.rstrip())
    return out


def prose(line, indent):
    """``line`` wrapped at spaces into lines of at most :data:`WIDTH` characters."""
    return textwrap.wrap(
        line,
        WIDTH,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [line]


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
        # a "/" in a name would read as a fraction: ∂J/∂(L10/r), not ∂J/∂L10/r
        s = visible(n)
        return (f"({s})" if "/" in s else s) + (f"[{index}]" if index else "")

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

    def display(self, e):
        return [*wrap("    " + e, "        "), ""]

    def para(self, text):
        return [*prose(text, ""), ""]

    def bullets(self, items):
        out = []
        for it in items:
            out += prose(f"  - {it}", "    ")
        return [*out, ""]

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
    """The first :data:`MAX_PATHS` paths from ``src`` to ``loss`` and their count,
    counted (exact integers, one sweep), never enumerated: ``(paths, total,
    to_loss, from_src)`` where ``to_loss[n]`` counts the paths from ``n`` to the loss
    and ``from_src[n]`` those from ``src`` to ``n``."""
    order = g.schedule(H)
    to_loss = {loss: 1}
    for n in reversed(order):
        if n != loss:
            to_loss[n] = sum(to_loss.get(k, 0) for k in H.successors(n))
    from_src = {src: 1}
    for n in order:
        if n != src:
            from_src[n] = sum(from_src.get(p, 0) for p in H.predecessors(n))
    total = to_loss.get(src, 0)
    paths = []

    def succ(n):
        return sorted(
            (k for k in H.successors(n) if to_loss.get(k, 0)),
            key=lambda k: H.nodes[k][g.SEQ],
        )

    # depth first through nodes that reach the loss only: no dead end is explored
    stack = [(src, [src])] if total else []
    while stack and len(paths) < MAX_PATHS:
        n, p = stack.pop()
        if n == loss:
            paths.append(p)
            continue
        for k in reversed(succ(n)):
            stack.append((k, [*p, k]))
    paths.sort(key=lambda p: [H.nodes[n][g.SEQ] for n in p])
    return paths, total, to_loss, from_src


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
    paths, total, to_loss, from_node = _paths(H, node, loss)
    c = _Case(F, H, loss, node, index, paths)
    c.total, c.to_loss, c.from_node = total, to_loss, from_node
    if not paths:
        return Explanation(F.document(out + _no_path(c)))
    if mode == "forward":
        given = arrays if arrays is not None else values
        out += _paths_section(c, total)
        section, mismatches = forward_mode.sections(c, given or None, seed)
        result = Explanation(F.document(out + section))
        result.mismatches = mismatches
        return result
    grouped = _grouped(H, paths)
    fan = _fan(H, paths, loss)
    out += _paths_section(c, total)
    out += _grouped_section(c, grouped)
    out += _sums_section(c, fan)
    out += _local_section(c, fan)
    mismatches = 0
    if values or arrays is not None:
        given = arrays if arrays is not None else values
        section, mismatches = _values_section(c, fan, grouped, given, seed)
        out += section
    result = Explanation(F.document(out))
    result.mismatches = mismatches
    return result


class Explanation(str):
    """The text of an explanation; ``mismatches`` counts the numbers that disagree
    with the generated module (the CLI exits 1 when there are any)."""

    mismatches = 0


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
        """The product of the local derivatives along ``seg``, from its end back (a
        long one shows its first and last factors around the count left out)."""
        factors = [
            self.factor(seg[t], seg[t + 1]) for t in reversed(range(len(seg) - 1))
        ]
        if len(factors) > MAX_FACTORS:
            keep = MAX_FACTORS // 2
            gap = len(factors) - 2 * keep
            more = (
                f"… ({gap} more factors) …"
                if self.F.name_ == "text"
                else r"\dots_{" + str(gap) + r"\ 	ext{more}}"
            )
            factors = [*factors[:keep], more, *factors[-keep:]]
        return self.F.dot(factors)

    def arrow(self, p):
        """The path as an arrow from the loss back (a long one abbreviated)."""
        names = [self.N(n) for n in reversed(p)]
        if len(names) > MAX_FACTORS + 1:
            keep = MAX_FACTORS // 2
            gap = len(names) - 2 * keep
            more = f"… ({gap} more) …" if self.F.name_ == "text" else r"\dots"
            names = [*names[:keep], more, *names[-keep:]]
        return self.F.arrow(names)

    def through(self, u):
        """The number of paths from the node explained to the loss that pass u."""
        return self.from_node.get(u, 0) * self.to_loss.get(u, 0)


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
    up = nx.ancestors(H, loss) | {loss}
    fan = [(n, gradient_terms(H, n, loss, up)) for n in on_paths]
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
    many = "one path" if total == 1 else f"{_count(total)} paths"
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
        out += F.para(F.p(label, F.m(c.arrow(p))))
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
    """2. The product grouped at each hidden unit, and for one weight.

    ``∂J/∂u`` is the adjoint of the unit: the sum over every path from ``u`` to the
    loss (one product only when there is one path). When every path from the node
    passes one unit, ``∂J/∂node`` is the three-factor product; when the paths pass
    several units, it is the sum of their three-factor products.
    """
    F, N, L, node = c.F, c.N, c.L, c.node
    out = []
    covered = sum(c.through(u) for _, u in grouped)
    for z, u in grouped:
        out += F.heading(F.p("Grouped at the hidden unit ", F.m(N(u))), 2)
        three = F.dot([F.d(L, N(u)), F.d(N(u), N(z)), F.d(N(z), N(node))])
        whole = c.through(u) == c.total
        if whole:
            out += F.para(
                "Backpropagation computes the same product in three factors: the "
                "error arriving at the unit, the unit's slope, and what the weight "
                "contributes to its input:"
            )
            out += F.display(F.eq(F.d(L, N(node)), three))
        else:
            out += F.para(
                F.p(
                    f"{_count(c.through(u))} of the {_count(c.total)} paths pass ",
                    F.prose_name(u),
                    "; their part of the gradient, in three factors:",
                )
            )
            out += F.display(F.eq(F.d(L, N(node)) + "|_" + N(u), three))
        pu = next(p for p in c.paths if u in p)
        seg_mid = pu[pu.index(z) : pu.index(u) + 1]
        n_up = c.to_loss.get(u, 0)
        if n_up > 1:
            parts = [
                F.p(
                    F.m(F.d(L, N(u))),
                    f" is the sum over the {_count(n_up)} paths from ",
                    F.prose_name(u),
                    " to the loss, not the product along one of them; backprop "
                    "computes it once, as the sum over the successors of each node "
                    "(below): the error backpropagated to ",
                    F.prose_name(u),
                )
            ]
        else:
            parts = [
                F.p(
                    F.m(F.eq(F.d(L, N(u)), c.chain(pu[pu.index(u) :]))),
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
        if whole:
            out += _one_weight(c, z, u)
    if len(grouped) > 1 and covered == c.total:
        out += F.heading("Summed over the hidden units", 2)
        out += F.para(
            "Every path passes exactly one of these units, so the gradient is the "
            "sum of their three-factor products:"
        )
        out += F.display(
            F.eq(
                F.d(L, N(node)),
                F.plus(
                    [
                        F.dot([F.d(L, N(u)), F.d(N(u), N(z)), F.d(N(z), N(node))])
                        for z, u in grouped
                    ]
                ),
            )
        )
    return out


def _count(n):
    """A path count people can read: 12, 4,096, 8.2×10^59."""
    return f"{n:,}" if n < 10**9 else f"{float(n):.2g}".replace("e+", "×10^")


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
    edges = {}
    for p in c.paths:
        for t in range(len(p) - 1):
            edges.setdefault((p[t], p[t + 1]))
    for n, terms in fan:
        for k in terms:
            edges.setdefault((n, k))
    pos = {n: i for i, n in enumerate(g.schedule(H))}
    edges = sorted(edges, key=lambda e: (-pos[e[1]], pos[e[0]]))
    left_out = max(0, len(edges) - MAX_LOCAL)
    if left_out:  # the steps nearest the loss and nearest the node explained
        edges = edges[: MAX_LOCAL // 2] + edges[-(MAX_LOCAL // 2) :]
    out = F.heading("Local derivatives (from each op's math)", 2)
    items = []
    for j, k in edges:
        ids, templates = local_templates(H, j, k)
        if not templates:
            continue
        attrs = H.nodes[k][g.ATTRS]
        op = ops.get(H.nodes[k][g.OP])
        text = op.math_for(attrs)
        math = F.template(
            text.replace("{xs}", "(…)") if op.variadic else text, ids, attrs, loss
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
    if left_out:
        out += F.para(
            f"(The first {MAX_LOCAL // 2} are the steps nearest the loss, the last "
            f"{MAX_LOCAL // 2} those nearest {visible(c.node)}; {left_out} steps in "
            "between are left out.)"
        )
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
    # only what the numbers below read, each array dropped after its last use
    keep, norms = _needs(c, A, fan, grouped, on_paths)
    vals = _Values(evaluate(A, arrays, keep=keep, norms=norms), H, arrays, A)
    # one module gives every adjoint checked below: the node's, the sums', the units'
    module = ModuleGradients(
        H,
        arrays,
        vals,
        inner=[n for n, _ in fan] + [u for _, u in grouped],
        shapes=vals.shapes,
        wrt=[c.node],
    )
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
    if c.total > 1:
        out += _top_paths(c, A, vals)
    checks = _Checks(F)
    ours = adjoint_value(A, vals, c.node, vals.shape(c.node))
    if ours is not None:
        checks(
            F.p(F.m(F.d(L, N(c.node))), " from the chain rule vs ", F.vg),
            ours,
            module(c.node),
        )
    for n, terms in fan:
        out += _sum_terms(c, A, vals, n, terms, checks, module)
    for z, u in grouped:
        if c.through(u) == c.total:
            out += _weight_factors(c, A, vals, z, u, checks, module)
    out += F.heading(
        F.p(
            "Checks against the generated ",
            F.vg,
            f" (relative tolerance {RTOL:g} of the largest magnitude)",
        ),
        2,
    )
    out += F.bullets(checks.lines)
    if checks.bad:
        out += F.para(
            f"{checks.bad} of {len(checks.lines)} checks disagree: the chain rule as "
            "explained here and the generated module compute different gradients."
        )
    return out, checks.bad


TOP_PATHS = 3


def _top_paths(c, A, vals):
    """The paths that carry the most gradient, found without listing the paths.

    Each step ``j -> k`` passes on the fraction ``‖∂J/∂k · ∂k/∂j‖ / ‖∂J/∂k‖`` of the
    gradient arriving at ``k`` (its gain); a path's score is the product of its gains:
    its contribution's size when the values are scalars, and for arrays only a way to
    rank the paths (norms do not multiply along a path, so it is no size). The best :data:`TOP_PATHS` come from one sweep from the loss back, each
    node keeping the best few paths from it to the loss.
    """
    F, H, loss = c.F, c.H, c.loss
    norms = {}

    def adj_norm(n):
        if n not in norms:
            norms[n] = _adjoint_norm(A, vals, n)
        return norms[n]

    live = nx.descendants(H, c.node) | {c.node}
    best = {loss: [(1.0, (loss,))]}
    for n in reversed(g.schedule(H, live)):
        if n == loss or not c.to_loss.get(n):
            continue
        cands = []
        succ = [k for k in H.successors(n) if k in best]
        for k in succ:
            t = _term_norm(A, vals, n, k)
            # one successor: the term is the whole adjoint (the optimizer may have
            # shared it with the successor's, so that no term node of its own is left)
            t = t if t is not None else adj_norm(n) if len(succ) == 1 else None
            below = 1.0 if k == loss else adj_norm(k)
            if t is None or not below:
                continue
            gain = t / below
            cands += [(gain * sc, (n, *p)) for sc, p in best[k]]
        cands.sort(key=lambda x: -x[0])
        best[n] = cands[:TOP_PATHS]
    top = best.get(c.node) or []
    if not top:
        return []
    out = F.para(
        F.p(
            f"The {len(top)} of the {_count(c.total)} paths that carry the most "
            "gradient (score: the product along the path of each step's ",
            F.m("‖∂J/∂k · ∂k/∂j‖ / ‖∂J/∂k‖" if F.name_ == "text" else r"\text{gain}"),
            ": for scalars the size of the path's contribution; for arrays only a "
            "ranking, not a size, since norms do not multiply along a path):",
        )
    )
    rows = [
        [str(i), F.num(sc), F.m(c.arrow(list(p)))] for i, (sc, p) in enumerate(top, 1)
    ]
    return out + F.table(["rank", "score", "path"], rows)


def _needs(c, A, fan, grouped, on_paths):
    """What :func:`_values_section` reads of the lowered graph ``A``'s values:
    ``(keep, norms)``, the nodes it reads as arrays and those it reads only as norms
    (most of them: a big model's activations need not all be held at once)."""
    H = c.H
    adjoints = A.graph.get("adjoints") or {}
    keep, norms = [c.node, adjoints.get(c.node)], []
    for n in on_paths:  # the table of norms
        a = adjoints.get(n)
        norms += [n, a]
        if a in A and tuple(A.nodes[a][g.SHAPE]) != tuple(H.nodes[n][g.SHAPE]):
            keep.append(a)  # broadcast to the node's shape before its norm
    if c.total > 1:  # the paths that carry the most gradient
        live = nx.descendants(H, c.node) | {c.node}
        for n in g.schedule(H, live):
            if n == c.loss or not c.to_loss.get(n):
                continue
            norms.append(adjoints.get(n))
            for k in H.successors(n):
                parts = term_nodes(A, A, n, k) or []
                (norms if len(parts) == 1 else keep).extend(parts)
    for n, terms in fan:  # the terms of each sum, added up and checked
        for k in terms:
            keep += term_nodes(A, A, n, k) or []
    for z, u in grouped:  # one weight's three factors
        if c.through(u) != c.total or _element_case(H, c.node, z, c.index) is None:
            continue
        pu = next(p for p in c.paths if u in p)
        keep += [adjoints.get(u), *g.operands(H, z)]
        for m in pu[pu.index(z) : pu.index(u) + 1]:
            keep += [m, *g.operands(H, m)]
    return (
        [n for n in dict.fromkeys(keep) if n is not None],
        [n for n in dict.fromkeys(norms) if n is not None],
    )


def _adjoint_norm(A, vals, j, shape=None):
    """``norm(adjoint_value(A, vals, j, shape))``, or None."""
    v = (A.graph.get("adjoints") or {}).get(j)
    if v is None or v not in vals:
        return None
    return vals.norm(v, shape)


def _term_norm(A, vals, j, k):
    """``norm(term_value(A, vals, j, k))``, or None."""
    parts = term_nodes(A, vals, j, k)
    if parts is None:
        return None
    return vals.norm(parts[0]) if len(parts) == 1 else norm(term_value(A, vals, j, k))


class _Values(dict):
    """The lowered graph's values, and on demand those of forward nodes the
    optimizer removed from it (``p4 = h·1.0``), computed from the forward graph.

    ``vals`` may hold some of ``A``'s arrays only (:func:`evaluate` with ``keep``): a
    node of ``A`` it dropped is evaluated again when asked for, and :meth:`norm` and
    :meth:`shape` answer from what the evaluation recorded."""

    def __init__(self, vals, H, arrays, A=None):
        super().__init__(vals)
        self.H, self.arrays, self.A = H, arrays, A
        self.shapes = getattr(vals, "shapes", {})
        self.norms = getattr(vals, "norms", {})

    def __contains__(self, n):
        return dict.__contains__(self, n) or (self.A is not None and n in self.A)

    def __missing__(self, n):
        if self.A is not None and n in self.A:
            got = evaluate(self.A, self.arrays, keep=[n])
            self[n] = got[n]
            return got[n]
        if n not in self.H:
            raise KeyError(n)
        keep = nx.ancestors(self.H, n) | {n}
        sub = self.H.subgraph(keep).copy()
        got = evaluate(sub, {k: v for k, v in self.arrays.items() if k in keep})
        for k, v in got.items():
            if k not in self:  # the lowered graph's own values come first
                self[k] = v
        return got[n]

    def shape(self, n):
        """The shape of ``n``'s value."""
        return self.shapes[n] if n in self.shapes else np.shape(self[n])

    def norm(self, n, shape=None):
        """``norm`` of ``n``'s value (broadcast to ``shape``)."""
        if n in self.norms and (shape is None or self.shapes[n] == tuple(shape)):
            return self.norms[n]
        v = self[n]
        if shape is not None and np.shape(v) != tuple(shape):
            v = np.broadcast_to(v, shape)
        return norm(v)


class _Checks:
    """Our numbers against the generated module's, one line each."""

    def __init__(self, F):
        self.F = F
        self.lines = []
        self.bad = 0

    def __call__(self, label, ours, theirs):
        """Agreement up to :data:`RTOL` of the larger array's largest magnitude: the
        two sum the same terms in different orders, so they differ by rounding, which
        grows with the size of the numbers (gradients near 1e111 in DenseNet-121)."""
        ours = np.asarray(ours, dtype=np.float64)
        theirs = np.asarray(theirs, dtype=np.float64)
        if not np.size(ours):
            diff, scale = 0.0, 0.0
        else:
            diff = float(np.max(np.abs(ours - theirs)))
            scale = float(max(np.max(np.abs(ours)), np.max(np.abs(theirs))))
        rel = diff / scale if scale else diff
        good = bool(diff <= ATOL + RTOL * scale) or (
            np.array_equal(ours, theirs, equal_nan=True)
        )
        self.bad += not good
        self.lines.append(
            self.F.p(
                label,
                f": max |difference| = {diff:.1e} ",
                self.F.ok(good),
                f" (relative {rel:.1e})",
            )
        )
        return good


def _norms_table(c, A, vals, on_paths):
    F, N = c.F, c.N
    rows = []
    for n in list(reversed(on_paths)):
        adj = _adjoint_norm(A, vals, n, vals.shape(n))
        rows.append(
            [
                F.m(N(n)),
                F.num(vals.norm(n)),
                F.num(adj) if adj is not None else F.none,
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
    delta = adjoint_value(A, vals, u, vals.shape(u))
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
