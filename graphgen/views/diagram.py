"""Diagrams of the graphs the compiler builds: forward, adjoint and gradient flow.

Every picture is drawn from the compiler's own graphs, never from a separate model:

``forward``
    The prepared forward graph (:func:`graphgen.prepare`): each node with its name, op and
    shape, edges labelled with the tensor shape (and the argument name for
    non-commutative ops such as ``sub``, ``div``, ``matmul``).
``adjoint``
    The lowered graph (:func:`graphgen.api.lower`: prepare, adjoint, optimize), with
    backward nodes named like the generated code (``h1_bar``); each fan-out ``add_n``
    is highlighted with the successors it sums, and edges carry the local derivative.
``flow`` (the default)
    The forward graph plus, for every forward edge ``j -> k`` through which the compiler
    sends a gradient back, a reversed edge labelled ``∂k/∂j``. A node with several
    successors shows the sum ``∂J/∂h = ∂J/∂z·∂z/∂h + ...``. Nodes that get no gradient
    are greyed out.

With ``values`` the lowered graph is evaluated node by node with each op's NumPy
``impl`` (:func:`graphgen.views.values.evaluate`), so every forward value and every
adjoint is known; nodes are annotated with norms and gradient edges coloured by magnitude
on a log scale.

The DOT text is deterministic. Node ids are synthetic (``n0``, ``n1``, ...) and every
name reaches the DOT text only inside an HTML-like label, escaped with :func:`html.escape`.
"""

from __future__ import annotations

import html
import itertools
import math
import os
import re
import shutil
import signal
import subprocess
import warnings

import networkx as nx
import numpy as np

from .. import dims, ops
from .. import graph as g
from ..codegen.comments import Comments
from ..codegen.naming import node_names
from ..errors import DiagramError, GraphgenWarning, did_you_mean
from ..notes import fill, local_templates, partial
from .values import adjoint_value, evaluate, load_arrays, norm, term_value

__all__ = ["VIEWS", "DiagramError", "render", "to_dot", "write"]

VIEWS = ("forward", "adjoint", "flow", "tangent")
FORMATS = ("svg", "png", "pdf", "dot")
INSTALL_HINT = (
    "the Graphviz 'dot' program is needed to write {fmt} files but was not found on "
    "PATH; install Graphviz (apt install graphviz, brew install graphviz or conda "
    "install graphviz) or write a .dot file instead"
)

# Gradient magnitude buckets (upper bound of the norm, colour, legend text).
MAGNITUDES = (
    (1e-8, "#6b7280", "< 1e-8 (vanished)"),
    (1e-5, "#2563eb", "1e-8 … 1e-5"),
    (1e-2, "#0891b2", "1e-5 … 1e-2"),
    (1e0, "#16a34a", "1e-2 … 1"),
    (1e2, "#ca8a04", "1 … 1e2"),
    (1e4, "#ea580c", "1e2 … 1e4"),
    (math.inf, "#dc2626", "≥ 1e4 (exploding)"),
)

STYLE = {
    g.INPUT: {
        "shape": "box",
        "style": "rounded,filled",
        "fillcolor": "#dbeafe",
        "color": "#1d4ed8",
    },
    g.PARAM: {
        "shape": "box",
        "style": "filled",
        "fillcolor": "#fef3c7",
        "color": "#b45309",
    },
    g.CONST: {
        "shape": "box",
        "style": "rounded,dashed",
        "color": "#9ca3af",
        "fontsize": "10",
    },
    g.OPNODE: {
        "shape": "box",
        "style": "rounded,filled",
        "fillcolor": "white",
        "color": "#374151",
    },
}
LOSS_STYLE = {"fillcolor": "#fee2e2", "color": "#b91c1c", "penwidth": "2"}
GREY = {"fillcolor": "#f3f4f6", "color": "#d1d5db", "fontcolor": "#9ca3af"}
BACKWARD_STYLE = {"fillcolor": "#ede9fe", "color": "#6d28d9"}
SUM_STYLE = {"fillcolor": "#fef08a", "color": "#a16207", "penwidth": "2"}
GRAD_COLOR = "#7c3aed"
TANGENT_COLOR = "#0e7490"  # forward mode: the tangents d· flowing forward
COPY = "copy"  # key (COPY, j, k): forward value j drawn again beside backward node k
COPY_STYLE = {
    "shape": "box",
    "style": "rounded,dashed",
    "color": "#9ca3af",
    "fontcolor": "#4b5563",
    "fontsize": "9",
    "margin": "0.04,0.02",
    "height": "0.2",
}
BIG = 300  # nodes + edges above which the layout effort is bounded


# --------------------------------------------------------------------------- escaping

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def visible(text) -> str:
    """``text`` with control characters shown as escapes (``"x\\nimport os"``)."""

    def one(m):
        return (
            repr(m.group(0))[1:-1]
            if m.group(0) not in "\u2028\u2029"
            else (f"\\u{ord(m.group(0)):04x}")
        )

    return _CONTROL.sub(one, str(text))


def esc(text) -> str:
    """Text safe inside an HTML-like Graphviz label (and hence inside SVG)."""
    return html.escape(visible(text), quote=False).replace('"', "&quot;")


class Html(str):
    """An HTML-like label body that has been built from escaped parts."""


def _attr_value(v) -> str:
    if isinstance(v, Html):
        return f"<{v}>"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + _CONTROL.sub(" ", s) + '"'


def _attrs(attrs) -> str:
    items = [f"{k}={_attr_value(v)}" for k, v in attrs.items() if v is not None]
    return " [" + " ".join(items) + "]" if items else ""


def math_name(G, n) -> str:
    """How node ``n`` reads inside a formula: a number by its value (never the internal
    id ``0.3#26`` a pass gave it), a name containing "/" in parentheses, so that
    ``∂J/∂(L10/r)`` cannot read as a fraction."""
    a = G.nodes[n] if n in G else {}
    if a.get(g.KIND) == g.CONST and g.VALUE in a:
        return f"{a[g.VALUE]:g}"
    s = visible(n)
    return f"({s})" if "/" in s else s


def _shape_text(shape) -> str:
    return dims.fmt_shape(tuple(shape))


# ------------------------------------------------------------------------ evaluation


def magnitude_color(x):
    """The legend colour of a gradient norm."""
    for bound, color, _ in MAGNITUDES:
        if x < bound:
            return color
    return MAGNITUDES[-1][1]


def _fmt(x) -> str:
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 or x == 0 else f"{x:.2e}"


# ------------------------------------------------------------------------ the drawing


class _Drawing:
    """Nodes, edges and clusters of one diagram, emitted as deterministic DOT text."""

    def __init__(self, name):
        self.name = name
        self.nodes = {}  # key -> (label Html, attrs)
        self.edges = []  # (src key, dst key, attrs)
        self.group = {}  # key -> group name
        self.legend = []
        self.same_rank = []  # lists of keys drawn side by side
        self.columns = []  # keys of a chain of blocks, wrapped into columns

    def node(self, key, label, **attrs):
        self.nodes[key] = (label, attrs)

    def edge(self, src, dst, **attrs):
        self.edges.append((src, dst, attrs))

    def lines(self, ids, graph_attrs):
        out = [
            "\tgraph" + _attrs(graph_attrs) + "\n",
            "\tnode" + _attrs({"fontname": "Helvetica", "fontsize": "11"}) + "\n",
            "\tedge" + _attrs({"fontname": "Helvetica", "fontsize": "9"}) + "\n",
        ]
        groups = {}
        for key in self.nodes:
            groups.setdefault(self.group.get(key), []).append(key)
        for gi, (grp, keys) in enumerate(
            sorted(groups.items(), key=lambda kv: (kv[0] is not None, kv[0] or ""))
        ):
            indent = "\t"
            if grp is not None:
                out.append(f"\tsubgraph cluster_{gi} {{\n")
                out.append(
                    "\t\tgraph"
                    + _attrs(
                        {
                            "label": Html(f"<B>{esc(grp)}</B>"),
                            "style": "rounded,dashed",
                            "color": "#9ca3af",
                        }
                    )
                    + "\n"
                )
                indent = "\t\t"
            for key in keys:
                label, attrs = self.nodes[key]
                out.append(
                    f"{indent}{ids[key]}" + _attrs({"label": label, **attrs}) + "\n"
                )
            if grp is not None:
                out.append("\t}\n")
        for keys in self.same_rank:
            out.append("\t{rank=same; " + "; ".join(ids[k] for k in keys) + "}\n")
        column = self._column_of()
        for src, dst, attrs in self.edges:
            if column.get(src, -1) != column.get(dst, -1):
                # an edge from one column of blocks to the next may slant, so that the
                # columns stay aligned instead of each starting where the last ended
                attrs = {**attrs, "weight": "0"}
            out.append(f"\t{ids[src]} -> {ids[dst]}" + _attrs(attrs) + "\n")
        out += self._wrap(ids)
        if self.legend:
            rows = "".join(
                f'<TR><TD BGCOLOR="{c}" WIDTH="18"> </TD><TD ALIGN="LEFT">{esc(t)}</TD></TR>'
                for c, t in self.legend
            )
            out.append(
                "\tsubgraph cluster_legend {\n\t\tgraph"
                + _attrs(
                    {
                        "label": "‖∂J/∂·‖ of the term an edge carries",
                        "color": "#d1d5db",
                        "fontsize": "10",
                    }
                )
                + "\n"
            )
            out.append(
                "\t\tlegend"
                + _attrs(
                    {
                        "shape": "plaintext",
                        "label": Html(
                            f'<TABLE BORDER="0" CELLSPACING="2">{rows}</TABLE>'
                        ),
                    }
                )
                + "\n\t}\n"
            )
        return out

    def _per_column(self):
        chain = self.columns
        if len(chain) < 12:
            return 0
        # a column of blocks is about twice as tall per block as a column is wide
        return max(3, math.ceil(math.sqrt(len(chain) / 2)))

    def _column_of(self):
        """Key -> column, for the blocks (and their backward boxes) of a long chain."""
        per = self._per_column()
        if not per:
            return {}
        column = {k: i // per for i, k in enumerate(self.columns)}
        for keys in self.same_rank:
            for k in keys:
                if keys[0] in column:
                    column.setdefault(k, column[keys[0]])
        return column

    def _wrap(self, ids):
        """Invisible edges that stack a long chain of blocks into columns, so that the
        drawing of 50 blocks is about as wide as it is tall instead of 50 boxes long."""
        chain = self.columns
        per = self._per_column()
        if not per:
            return []
        out = []
        for start in range(0, len(chain), per):
            col = chain[start : start + per]
            out.append("\t{rank=same; " + "; ".join(ids[k] for k in col) + "}\n")
            for a, b in itertools.pairwise(col):
                out.append(f"\t{ids[a]} -> {ids[b]} [style=invis]\n")
        return out


def _label(title, *rows, bar_rows=(), title_color=None):
    """An HTML-like table label: a bold title, small grey rows and highlighted rows."""
    cells = []
    font = f' COLOR="{title_color}"' if title_color else ""
    cells.append(f"<TR><TD><FONT{font}><B>{title}</B></FONT></TD></TR>")
    for r in rows:
        if r:
            cells.append(f'<TR><TD><FONT POINT-SIZE="9">{r}</FONT></TD></TR>')
    for r in bar_rows:
        cells.append(
            f'<TR><TD BGCOLOR="#fef9c3"><FONT POINT-SIZE="9">{r}</FONT></TD></TR>'
        )
    return Html(
        '<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">'
        + "".join(cells)
        + "</TABLE>"
    )


def _kind_text(G, n):
    a = G.nodes[n]
    kind = a[g.KIND]
    if kind == g.OPNODE:
        return a[g.OP]
    if kind == g.CONST:
        return "const"
    return kind


def _node_style(G, n):
    a = G.nodes[n]
    style = dict(STYLE[a[g.KIND]])
    if n in (G.graph.get("outputs") or []):
        style["peripheries"] = "2"
    if n == G.graph.get("loss"):
        style.update(LOSS_STYLE)
    return style


def _arg_label(G, src, dst):
    """``"a"``, ``"b"``, ``"a, b"``: argument names, shown for non-commutative ops."""
    a = G.nodes[dst]
    if a[g.KIND] != g.OPNODE:
        return ""
    op = ops.get(a[g.OP])
    if op.commutative or (not op.variadic and len(op.args) < 2):
        return ""
    return ", ".join(op.arg_name(i) for i in G.edges[src, dst][g.POS])


def local_derivatives(G, j, k, show=str, loss="J"):
    """The derivative text of every argument position at which ``j`` feeds ``k``."""
    ids, templates = local_templates(G, j, k)
    return [
        fill(
            tmpl,
            ids,
            G.nodes[k][g.ATTRS],
            show=show,
            bar=lambda n: partial(show(loss), show(n)),
        )
        for tmpl in templates
        if tmpl not in ("none", "0")
    ]


def gradient_terms(G, j, loss, up=None):
    """The successors of ``j`` that send a gradient back to it (one per argument slot).

    ``up`` (optional) is the set of nodes the loss depends on, with the loss itself.
    """
    if up is None:
        up = nx.ancestors(G, loss) | {loss}
    terms = []
    for k in sorted(G.successors(j), key=lambda s: G.nodes[s][g.SEQ]):
        if k not in up or G.nodes[k][g.KIND] != g.OPNODE:
            continue
        op = ops.get(G.nodes[k][g.OP])
        if op.vjp is None:
            continue
        for i in G.edges[j, k][g.POS]:
            if i not in op.int_args:
                terms.append(k)
    return terms


# -------------------------------------------------------------------------- the views


def _forward_graph(G):
    from ..passes.shapes import prepare

    return prepare(G)


def _lowered(G):
    from ..api import lower

    H = _forward_graph(G)
    if H.graph.get("loss") is None:
        raise DiagramError(
            "the adjoint view needs a loss: set 'loss' in the spec",
            source=g.source_of(H),
        )
    return lower(H)


def _draw_forward(H, flow, values=None, A=None, tangents=None):
    """The forward and flow views (``flow``: add the reversed gradient edges), and the
    tangent view (``tangents``: each node's tangent value, or {} without values)."""
    from ..passes.adjoint import relevant_nodes

    D = _Drawing(H.graph.get("name", "model"))
    loss = H.graph.get("loss")
    active = set()
    if flow and loss is not None:
        active = relevant_nodes(H, loss, H.graph.get("wrt") or [])
    seeded = set()
    if tangents is not None:
        seeded = _tangent_nodes(H)

    def show(n):
        return math_name(H, n)

    J = show(loss) if loss is not None else "J"
    up = nx.ancestors(H, loss) | {loss} if loss is not None else set()
    for n in g.schedule(H):
        a = H.nodes[n]
        style = _node_style(H, n)
        rows = []
        if a[g.KIND] == g.CONST:
            rows.append(esc(f"const {a[g.VALUE]:g}"))
            title = esc(f"{a[g.VALUE]:g}")
            rows = []
        else:
            title = esc(n)
            rows.append(esc(f"{_kind_text(H, n)} {_shape_text(a[g.SHAPE])}"))
        sums = []
        if flow and loss is not None:
            if n not in active:
                style.update(GREY)
            elif n != loss:
                terms = gradient_terms(H, n, loss, up)
                if len(terms) > 1:
                    rhs = " + ".join(
                        partial(J, show(k)) + "·" + partial(show(k), show(n))
                        for k in terms
                    )
                    sums.append(esc(f"Σ  {partial(J, show(n))} = {rhs}"))
                    style.update(penwidth="2", color="#a16207")
        if tangents is not None:
            if n not in seeded:
                style.update(GREY)
            else:
                preds = _tangent_preds(H, n, seeded)
                if len(preds) > 1:
                    rhs = " + ".join(
                        f"{partial(show(n), show(j))}·d{show(j)}" for j in preds
                    )
                    sums.append(esc(f"Σ  d{show(n)} = {rhs}"))
                    style.update(penwidth="2", color=TANGENT_COLOR)
                if tangents.get(n) is not None:
                    rows.append(esc(f"‖d{show(n)}‖ = {_fmt(norm(tangents[n]))}"))
        if values is not None and n in values:
            rows.append(esc(f"‖{show(n)}‖ = {_fmt(norm(values[n]))}"))
            adj = adjoint_value(A, values, n) if A is not None else None
            if adj is not None and n in active:
                rows.append(esc(f"‖{partial(J, show(n))}‖ = {_fmt(norm(adj))}"))
        D.node(
            n,
            _label(
                title,
                *rows,
                bar_rows=sums,
                title_color=GREY["fontcolor"] if style.get("fontcolor") else None,
            ),
            **style,
        )
    for j, k in sorted(
        H.edges, key=lambda e: (H.nodes[e[0]][g.SEQ], H.nodes[e[1]][g.SEQ])
    ):
        arg = _arg_label(H, j, k)
        text = _shape_text(H.nodes[j][g.SHAPE])
        label = esc(f"{arg}: {text}" if arg else text)
        grey = flow and loss is not None and not (j in active and k in active)
        if tangents is not None:
            grey = j not in seeded or k not in _tangent_succs(H, j, seeded)
        if tangents is not None and not grey:
            derivs = [
                d
                for d in local_derivatives(H, j, k, show=show, loss=loss or "J")
                if d.startswith(partial(show(k), show(j)))  # ∂k/∂j itself, not a VJP
            ]
            tl = [f"d{show(k)} += {partial(show(k), show(j))}·d{show(j)}", *derivs]
            D.edge(
                j,
                k,
                label=Html("<BR/>".join([label, *(esc(t) for t in tl)])),
                color=TANGENT_COLOR,
                fontcolor=TANGENT_COLOR,
                penwidth="2",
            )
            continue
        D.edge(
            j,
            k,
            label=Html(label),
            color="#d1d5db" if grey else "#4b5563",
            fontcolor="#9ca3af" if grey else "#374151",
        )
    if not flow or loss is None:
        return D
    for j, k in sorted(
        H.edges, key=lambda e: (H.nodes[e[0]][g.SEQ], H.nodes[e[1]][g.SEQ])
    ):
        if j not in active or k not in active or H.nodes[k][g.KIND] != g.OPNODE:
            continue
        derivs = local_derivatives(H, j, k, show=show, loss=loss)
        if not derivs:
            continue
        attrs = {
            "dir": "back",
            "style": "dashed",
            "color": GRAD_COLOR,
            "fontcolor": GRAD_COLOR,
            "arrowtail": "normal",
        }
        if values is not None:
            t = term_value(A, values, j, k)
            attrs["color"] = attrs["fontcolor"] = "#9ca3af"
            if t is not None:
                m = norm(t)
                attrs["color"] = attrs["fontcolor"] = magnitude_color(m)
                attrs["penwidth"] = "2"
                derivs = derivs + [f"‖term‖ = {_fmt(m)}"]
            else:
                derivs = derivs + ["(term not materialized: the optimizer folded it)"]
        D.edge(j, k, label=Html("<BR/>".join(esc(d) for d in derivs)), **attrs)
    if values is not None:
        D.legend = [(c, t) for _, c, t in MAGNITUDES]
    return D


def _tangent_nodes(H):
    """The nodes a tangent reaches in the tangent view: those that depend on a ``wrt``
    array (seeded with d·) and that an output or the loss depends on."""
    fdtype = H.graph["dtype"]
    wrt = [w for w in H.graph.get("wrt") or [] if H.nodes[w][g.DTYPE] == fdtype]
    ends = list(H.graph.get("outputs") or [])
    if H.graph.get("loss") is not None:
        ends.append(H.graph["loss"])
    return g.reach(H, wrt, backward=False) & g.reach(H, ends)


def _tangent_succs(H, j, seeded):
    """The successors ``j``'s tangent flows to (differentiable argument slots only)."""
    out = []
    for k in H.successors(j):
        if k not in seeded or H.nodes[k][g.KIND] != g.OPNODE:
            continue
        op = ops.get(H.nodes[k][g.OP])
        if any(i not in op.int_args for i in H.edges[j, k][g.POS]):
            out.append(k)
    return out


def _tangent_preds(H, k, seeded):
    """The arguments of ``k`` whose tangents its tangent sums, in argument order."""
    return [
        j for j in dict.fromkeys(g.operands(H, k)) if k in _tangent_succs(H, j, seeded)
    ]


def tangent_values(H, values, seed=0):
    """Each node's tangent for a random direction of every ``wrt`` array (seeded),
    through :func:`graphgen.jvp`'s graph and the reference interpreter."""
    from ..passes.forward import jvp
    from .forward_mode import node_tangents

    fdtype = H.graph["dtype"]
    wrt = [w for w in H.graph.get("wrt") or [] if H.nodes[w][g.DTYPE] == fdtype]
    rng = np.random.default_rng(seed + 1)
    seeds = {w: g.fresh_id(H, f"{w}_tangent") for w in wrt}
    T = jvp(H, seeds, outputs=[o for o in _ends(H) if H.nodes[o][g.DTYPE] == fdtype])
    feed = {seeds[w]: rng.standard_normal(np.shape(values[w])) for w in wrt}
    tvals = evaluate(T, {**{n: values[n] for n in values if n in T}, **feed})
    out = node_tangents(T, tvals, [n for n in g.schedule(H) if n in _tangent_nodes(H)])
    for w in wrt:
        out[w] = feed[seeds[w]]
    return out


def _ends(H):
    ends = list(H.graph.get("outputs") or [])
    loss = H.graph.get("loss")
    return ends + ([loss] if loss is not None and loss not in ends else [])


def _draw_adjoint(A, values=None, copies=False):
    """The adjoint view. With ``copies``, a forward value that a backward node reads is
    drawn as a small copy beside that node instead of an edge reaching back across the
    whole drawing: those long edges are what makes Graphviz's layout of a deep model's
    adjoint graph take minutes."""
    namer = node_names(A)
    comments = Comments(A, namer, A.graph.get("loss"))
    nm = namer.names
    loss = A.graph.get("loss")

    def called(n):
        return nm.get(n) or math_name(A, n)

    J = called(loss)
    D = _Drawing(A.graph.get("name", "model"))
    adjoints = A.graph.get("adjoints") or {}
    bar_of = {}
    for j, v in adjoints.items():
        bar_of.setdefault(v, j)

    def code(n):
        return nm.get(n)

    for n in g.schedule(A):
        a = A.nodes[n]
        style = _node_style(A, n)
        rows, sums = [], []
        name = code(n)
        if a[g.KIND] == g.CONST:
            title = esc(f"{a[g.VALUE]:g}")
            if n in bar_of:
                rows.append(esc("= " + partial(J, called(bar_of[n]))))
        elif a[g.ROLE] == g.FORWARD:
            title = esc(name or n)
            if name and name != n:
                rows.append(esc(f"spec name: {visible(n)}"))
            rows.append(esc(f"{_kind_text(A, n)} {_shape_text(a[g.SHAPE])}"))
            if a[g.KIND] == g.OPNODE:
                style.update(fillcolor="#f9fafb")
        else:
            style.update(BACKWARD_STYLE)
            title = esc(name) if name else esc(a[g.OP])
            what = (
                f"{a[g.OP]} {_shape_text(a[g.SHAPE])}"
                if name
                else _shape_text(a[g.SHAPE])
            )
            if g.SUMS in a:
                j = a[g.ADJOINT_OF]
                succ = ", ".join(called(k) for k in a[g.SUMS])
                sums.append(esc(f"Σ over the successors of {called(j)}: {succ}"))
                style.update(SUM_STYLE)
            elif g.ADJOINT_OF in a:
                of = a[g.ADJOINT_OF]
                rows.append(esc("= " + partial(J, called(of))))
            elif g.CONTRIB in a:
                k, j = a[g.CONTRIB]
                term = partial(J, called(j))
                rows.append(esc(f"term of {term} via {called(k)}"))
            if not name:
                style.update(fontsize="9", fillcolor="#f5f3ff")
            rows.append(esc(what))
        if values is not None and n in values:
            rows.append(esc(f"‖·‖ = {_fmt(norm(values[n]))}"))
        D.node(n, _label(title, *rows, bar_rows=sums), **style)

    def note_text(n):
        a = A.nodes[n]
        note = a.get(g.NOTE)
        if not note or not note[0] or g.SUMS in a:
            return None, None
        template, ids, attrs = note
        k = ids.get("y")
        if k is None or k == a.get(g.ADJOINT_OF):
            return None, None
        target = code(n)
        term = None
        if target and g.CONTRIB in a:
            term = (a[g.CONTRIB][1], target)
        return comments.note(template, ids, attrs, {}, term=term), adjoints.get(k)

    for j, k in sorted(
        A.edges, key=lambda e: (A.nodes[e[0]][g.SEQ], A.nodes[e[1]][g.SEQ])
    ):
        ak = A.nodes[k]
        attrs = {}
        label = _arg_label(A, j, k)
        if ak[g.ROLE] == g.BACKWARD:
            attrs["color"] = "#6d28d9"
            if g.SUMS in ak:
                terms = g.operands(A, k)
                via = [s for t, s in zip(terms, ak[g.SUMS]) if t == j]
                if len(terms) == len(ak[g.SUMS]) and via:
                    label = "via " + ", ".join(called(s) for s in via)
                attrs.update(color=SUM_STYLE["color"], penwidth="2")
            else:
                text, upstream = note_text(k)
                if text and upstream == j:
                    label = text
                    attrs["fontcolor"] = "#6d28d9"
            if values is not None and j in values and A.nodes[j][g.ROLE] == g.BACKWARD:
                m = norm(values[j])
                attrs["color"] = magnitude_color(m)
                label = (label + "\n" if label else "") + f"‖·‖ = {_fmt(m)}"
        else:
            attrs["color"] = "#9ca3af"
        if label:
            attrs["label"] = Html("<BR/>".join(esc(x) for x in label.split("\n")))
        if copies and ak[g.ROLE] == g.BACKWARD and A.nodes[j][g.ROLE] != g.BACKWARD:
            # the forward value again, small, right beside the node that reads it
            D.node(
                (COPY, j, k),
                Html(esc(called(j))),
                **COPY_STYLE,
            )
            D.edge((COPY, j, k), k, **attrs)
            continue
        D.edge(j, k, **attrs)
    if values is not None:
        D.legend = [(c, t) for _, c, t in MAGNITUDES]
    return D


def _draw_adjoint_lean(A, copies):
    """The adjoint view with short labels (a name or ``∂J/∂x``, and a shape) and no
    derivative notes on the edges: for a drawing that is collapsed by block anyway, or
    too big to read node by node. Building the full labels of DenseNet-121's 4,700
    nodes costs seconds."""
    D = _Drawing(A.graph.get("name", "model"))
    for n in g.schedule(A):
        a = A.nodes[n]
        style = _node_style(A, n)
        if a[g.KIND] == g.CONST:
            title = f"{a[g.VALUE]:g}"
        elif a[g.ROLE] == g.BACKWARD:
            style.update(BACKWARD_STYLE)
            of = a.get(g.ADJOINT_OF)
            title = partial("J", math_name(A, of)) if of in A else a[g.OP]
            if g.SUMS in a:
                style.update(SUM_STYLE)
        else:
            title = math_name(A, n)
        D.node(n, _label(esc(title), esc(_shape_text(a[g.SHAPE]))), **style)
    for j, k in sorted(
        A.edges, key=lambda e: (A.nodes[e[0]][g.SEQ], A.nodes[e[1]][g.SEQ])
    ):
        ak = A.nodes[k]
        if ak[g.ROLE] != g.BACKWARD:
            D.edge(j, k, color="#9ca3af")
            continue
        attrs = {"color": "#6d28d9"}
        if g.SUMS in ak:
            attrs.update(color=SUM_STYLE["color"], penwidth="2")
        if copies and A.nodes[j][g.ROLE] != g.BACKWARD:
            D.node((COPY, j, k), Html(esc(math_name(A, j))), **COPY_STYLE)
            D.edge((COPY, j, k), k, **attrs)
        else:
            D.edge(j, k, **attrs)
    return D


# --------------------------------------------------------------------- large graphs

# Sizes are nodes + edges of the drawing. Measured with Graphviz 2.43 on a loaded
# 2-core machine (benchmarks/render_bench.py, README): forward and flow views lay out in
# about a second up to ~1,000 and the adjoint view with copies up to ~1,500; drawn
# collapsed, every model measured stays under a few seconds.
AUTO_COLLAPSE = 1200  # a drawing above this is collapsed by block unless full=True
COPIES_AT = 150  # adjoint views above this draw reused forward values as copies
TIMEOUT = 20.0  # seconds dot may take by default (0 or None: no limit)
MATH_ROWS = 4  # formulas shown in a collapsed block
NOTEBOOK_LIMIT = 4000  # nodes + edges a notebook display lays out at all
MAX_RANKS = 80  # a drawing deeper than this is collapsed (its aspect ratio otherwise)


def _base(key):
    """The graph node a drawing key stands for (a copy stands for the node reading it)."""
    return key[2] if isinstance(key, tuple) and key and key[0] == COPY else key


def _focus(G, D, focus, depth):
    if focus not in G:
        hint = did_you_mean(str(focus), [str(n) for n in G])
        raise DiagramError(
            f"--focus: no node named {focus!r}{hint}", source=g.source_of(G)
        )
    seeds = {focus}
    adj = (G.graph.get("adjoints") or {}).get(focus)
    if adj is not None:
        seeds.add(adj)
    U = G.to_undirected(as_view=True)
    keep = set()
    for s in seeds:
        keep |= set(nx.single_source_shortest_path_length(U, s, cutoff=depth))
    D.nodes = {k: v for k, v in D.nodes.items() if _base(k) in keep}
    D.edges = [e for e in D.edges if e[0] in D.nodes and e[1] in D.nodes]
    label, attrs = D.nodes[focus]
    D.nodes[focus] = (label, {**attrs, "penwidth": "3", "color": "#0f766e"})


def _op_summary(G, nodes):
    counts = {}
    for n in nodes:
        counts[_kind_text(G, n)] = counts.get(_kind_text(G, n), 0) + 1
    parts = [f"{k}×{v}" if v > 1 else k for k, v in sorted(counts.items())]
    return ", ".join(parts[:5] + (["…"] if len(parts) > 5 else []))


def _block_maths(G, nodes, back):
    """A few formulas of a block: what its forward ops compute, or which gradients its
    backward part produces."""
    if back:
        outs = [
            partial("J", math_name(G, G.nodes[n][g.ADJOINT_OF]))
            for n in nodes
            if G.nodes[n].get(g.ADJOINT_OF) in G
        ]
        if not outs:
            return []
        shown = ", ".join(outs[:MATH_ROWS]) + (" …" if len(outs) > MATH_ROWS else "")
        return ["computes " + shown]
    rows = []
    opnodes = [n for n in nodes if G.nodes[n][g.KIND] == g.OPNODE]
    for n in opnodes[:MATH_ROWS]:
        op = ops.get(G.nodes[n][g.OP])
        if op.variadic:
            ids = {"y": n, op.args[0]: "(…)"}
            text = op.math.replace("{" + op.args[0] + "}", "(…)")
            rows.append(fill(text, {"y": n}, G.nodes[n][g.ATTRS], show=_shower(G)))
            del ids
        else:
            ids = {"y": n, **dict(zip(op.args, g.operands(G, n)))}
            rows.append(fill(op.math, ids, G.nodes[n][g.ATTRS], show=_shower(G)))
    if len(opnodes) > MATH_ROWS:
        rows.append(f"… {len(opnodes) - MATH_ROWS} more ops")
    return rows


def _shower(G):
    return lambda n: math_name(G, n)


def _carried(G, n):
    """What an edge from node ``n`` carries, for the edges between blocks: a forward
    value by name, a backward one as the gradient it is (never an internal id)."""
    a = G.nodes[n]
    if a.get(g.ROLE) != g.BACKWARD:
        return math_name(G, n)
    if a.get(g.ADJOINT_OF) in G:
        return partial("J", math_name(G, a[g.ADJOINT_OF]))
    if g.CONTRIB in a:
        k, j = a[g.CONTRIB]
        return f"{partial('J', math_name(G, j))} via {math_name(G, k)}"
    return f"a backward {_kind_text(G, n)}"


def _collapse(G, D, mode, found):
    """``D`` drawn by block: ``"clusters"`` boxes every node of a block, ``"groups"``
    draws one box per block (two in the adjoint view: forward and backward part)."""
    where = found.block_of()
    part = {}
    for key in D.nodes:
        n = _base(key)
        if n in where:
            part[key] = (where[n], G.nodes[n].get(g.ROLE) == g.BACKWARD)
    if mode == "clusters":
        D.group = {
            key: found.blocks[i].name + (" (backward)" if back else "")
            for key, (i, back) in part.items()
        }
        return D
    C = _Drawing(D.name)
    C.legend = D.legend

    def number(key):
        # a number feeds many blocks (the 1 of 1 − h²): its value is in the formulas,
        # and edges from it to every block would be the long edges collapsing removes
        return not isinstance(key, tuple) and G.nodes[key][g.KIND] == g.CONST

    for key, (label, attrs) in D.nodes.items():
        if key not in part and not number(key):
            C.node(key, label, **attrs)
    boxes = {}
    for key, where_ in part.items():
        boxes.setdefault(where_, []).append(key)
    for (i, back), keys in sorted(boxes.items()):
        b = found.blocks[i]
        members = [k for k in keys if not isinstance(k, tuple)]
        rows = [esc(f"{len(members)} nodes: {_op_summary(G, members)}")]
        if b.repeats > 1 and not back:
            rows.append(esc(f"one of {b.repeats} blocks with these ops"))
        rows += [esc(r) for r in _block_maths(G, members, back)]
        style = {
            "shape": "box3d",
            "style": "filled",
            "fillcolor": "#ede9fe" if back else "#e0f2fe",
            "color": "#6d28d9" if back else "#0369a1",
        }
        C.node(
            ("block", i, back),
            _label(esc(b.name + (" · backward" if back else "")), *rows),
            **style,
        )
    both = {i for i, back in boxes if back} & {i for i, back in boxes if not back}
    C.same_rank = [[("block", i, False), ("block", i, True)] for i in sorted(both)]
    C.columns = [("block", i, False) for i in range(len(found.blocks))]
    C.columns = [k for k in C.columns if k in C.nodes]
    key_of = {k: ("block", *part[k]) if k in part else k for k in D.nodes}
    merged = {}
    for src, dst, attrs in D.edges:
        s, d = key_of[src], key_of[dst]
        if s == d or number(src):
            continue
        slot = merged.setdefault((s, d), {"fwd": [], "grad": [], "what": []})
        slot["grad" if attrs.get("dir") == "back" else "fwd"].append(attrs)
        slot["what"].append(_base(src) if not isinstance(src, tuple) else src[1])
    for (s, d), slot in merged.items():
        fwd, grad = slot["fwd"], slot["grad"]
        attrs = dict((fwd or grad)[0])
        attrs.pop("label", None)
        names = list(dict.fromkeys(_carried(G, n) for n in slot["what"]))
        what = ", ".join(names[:2]) + (" …" if len(names) > 2 else "")
        text = []
        if fwd:
            text.append(what)
        if grad:
            # one line for both directions: forward colour, then the gradient's
            colors = [a.get("color", GRAD_COLOR) for a in grad]
            rank = [m[1] for m in MAGNITUDES]
            gcol = max(colors, key=lambda c: rank.index(c) if c in rank else -1)
            attrs.update(
                dir="both",
                arrowtail="normal",
                style="solid",
                color=f"{fwd[0]['color']}:{gcol}" if fwd else gcol,
            )
            text.append(
                ", ".join(partial("J", x) for x in names[:2])
                + (" …" if len(names) > 2 else "")
            )
        attrs["label"] = Html("<BR/>".join(esc(t) for t in text))
        C.edge(s, d, **attrs)
    return C


def _say(message):
    warnings.warn(message, GraphgenWarning, stacklevel=4)


# -------------------------------------------------------------------------- public API


def _build(
    G,
    view="flow",
    *,
    values=None,
    seed=0,
    collapse=None,
    focus=None,
    depth=2,
    full=False,
):
    if view not in VIEWS:
        raise DiagramError(f"unknown view {view!r} (known: {', '.join(VIEWS)})")
    H = _forward_graph(G)
    vals, A = None, None
    if values is not None and values is not False:
        if H.graph.get("loss") is None:
            raise DiagramError(
                "values need a loss to differentiate: set 'loss' in the spec",
                source=g.source_of(H),
            )
        A = _lowered(H)
        vals = evaluate(A, load_arrays(H, values, seed))
    if view == "adjoint":
        A = A if A is not None else _lowered(H)
        size = A.number_of_nodes() + A.number_of_edges()
        copies = size > COPIES_AT
        lean = (
            size > AUTO_COLLAPSE
            and vals is None
            and focus is None
            and collapse in (None, "auto", True, "groups")
            and not (full and collapse in (None, "auto"))
        )
        if lean:
            D, base = _draw_adjoint_lean(A, copies), A
        else:
            D, base = _draw_adjoint(A, vals, copies=copies), A
        if focus is not None and focus not in A:
            byname = {v: k for k, v in node_names(A).names.items()}
            focus = byname.get(focus, focus)
    elif view == "tangent":
        tangents = {}
        if values is not None and values is not False:
            forward_vals = evaluate(H, load_arrays(H, values, seed))
            tangents = tangent_values(H, forward_vals, seed)
        D, base = _draw_forward(H, False, vals, A, tangents=tangents), H
    else:
        D, base = _draw_forward(H, view == "flow", vals, A), H
    if focus is not None:
        _focus(base, D, focus, depth)
    size = len(D.nodes) + len(D.edges)
    what = f"the {view} view has {len(D.nodes):,} nodes and {len(D.edges):,} edges"
    mode = None
    if collapse in (True, "groups", "clusters"):
        mode = "clusters" if collapse == "clusters" else "groups"
    elif collapse in (None, "auto") and not full:
        if size > AUTO_COLLAPSE:
            mode = "auto"
        elif size > BIG:
            # a long chain drawn in full is metres wide (a 50-layer flow view: 51:1)
            drawn = [k for k in D.nodes if not isinstance(k, tuple)]
            deep = nx.dag_longest_path_length(base.subgraph(drawn)) + 1
            if deep > MAX_RANKS:
                mode = "auto"
                what += f" in a chain {deep} nodes long"
    if full and size > AUTO_COLLAPSE:
        _say(
            f"{what}: drawing every one (--full); Graphviz may need long for it, "
            "and the time budget still applies"
        )
    if mode is not None:
        from .grouping import blocks

        found = blocks(base, [k for k in D.nodes if not isinstance(k, tuple)])
        if not found:
            _say(f"{what}: {found.note}; drawing every node")
        else:
            D = _collapse(
                base, D, "clusters" if mode == "clusters" else "groups", found
            )
            if mode == "auto":
                _say(
                    f"{what}: drawn collapsed into {len(found.blocks)} blocks (found "
                    f"by {found.how}); --full draws every node, --focus NODE one "
                    "neighbourhood"
                )
    return D, base


def _graph_attrs(D, view):
    title = {
        "forward": "forward graph",
        "adjoint": "adjoint graph (as compiled)",
        "flow": "gradient flow: dashed edges carry ∂J/∂· back",
        "tangent": "forward mode: edges carry each tangent d· forward",
    }[view]
    attrs = {
        "rankdir": "LR",
        "fontname": "Helvetica",
        "fontsize": "12",
        "newrank": "true",
        "label": Html(esc(f"{D.name}: {title}")),
        "labelloc": "t",
        "nodesep": "0.3",
    }
    if len(D.nodes) + len(D.edges) > BIG:
        # bound the layout's network-simplex and crossing-minimization work, and draw
        # edges straight: routing splines around hundreds of long edges is what takes
        # Graphviz minutes (the 20-layer residual adjoint view: 25 s -> 0.4 s)
        attrs.update(
            nslimit="0.5",
            nslimit1="0.5",
            mclimit="0.05",
            searchsize="5",
            splines="line",
        )
    return attrs


class Diagram:
    """Mixin of the drawing :func:`render` returns: a ``graphviz.Digraph`` whose
    notebook display runs ``dot`` with a time budget and shows a message instead of
    waiting when the drawing is too big."""

    timeout = TIMEOUT
    size = 0
    what = "the drawing"

    def _repr_mimebundle_(self, include=None, exclude=None, **_):
        if self.size > NOTEBOOK_LIMIT:
            return {
                "text/plain": f"graphgen: {self.what} is too big to lay out for a "
                "notebook; draw it collapsed (collapse=True), a neighbourhood "
                "(focus=NODE), or write it to a file with graphgen.views.diagram.write"
            }
        try:
            svg = run_dot(self.source, "svg", timeout=self.timeout, what=self.what)
        except DiagramError as e:
            return {"text/plain": f"graphgen: {e}"}
        return {"image/svg+xml": svg.decode("utf-8")}

    def _repr_svg_(self):
        return self._repr_mimebundle_().get("image/svg+xml")


def _digraph(D, view, timeout=TIMEOUT):
    import graphviz

    class Drawing(Diagram, graphviz.Digraph):
        pass

    keys = list(D.nodes)
    ids = {k: f"n{i}" for i, k in enumerate(keys)}
    name = re.sub(r"[^A-Za-z0-9_]", "_", f"{D.name}_{view}") or "graph"
    dot = Drawing(name=name if name[0].isalpha() else f"g_{name}")
    dot.body.extend(D.lines(ids, _graph_attrs(D, view)))
    dot.timeout = timeout
    dot.size = len(D.nodes) + len(D.edges)
    dot.what = f"the {view} view ({len(D.nodes):,} nodes, {len(D.edges):,} edges)"
    return dot


def render(
    G,
    view="flow",
    *,
    values=None,
    seed=0,
    collapse=None,
    focus=None,
    depth=2,
    full=False,
    timeout=TIMEOUT,
):
    """Draw a graphgen graph as a ``graphviz.Digraph`` (displays inline in Jupyter).

    Parameters
    ----------
    G : networkx.DiGraph
        A graphgen graph (:func:`graphgen.load`).
    view : {"flow", "forward", "adjoint", "tangent"}
        What to draw (see :mod:`graphgen.views.diagram`); ``"tangent"``: forward mode,
        each node's tangent the sum over its arguments of ∂node/∂arg · d arg, seeded at
        the ``wrt`` arrays (with values: a random direction, and each tangent's norm).
    values : bool, dict, str or None
        Annotate with values and gradient norms: True for random arrays
        (:func:`graphgen.check.random_arrays` with ``seed``), a dict of arrays, or the
        path of an ``.npz`` file (missing arrays are random).
    collapse : None, bool or {"groups", "clusters"}
        Draw by block (:func:`graphgen.views.grouping.blocks`: ``group`` attributes,
        name prefixes such as ``layer3/...``, layer numbers such as ``m7``, else the
        graph's repeated structure): ``"groups"`` (or True) draws one box per block,
        ``"clusters"`` every node inside a box per block. None (the default) collapses
        a drawing too big for Graphviz to lay out quickly, with a warning saying so.
    focus : str, optional
        Draw only the nodes within ``depth`` hops of this node.
    full : bool
        Never collapse automatically, and draw the adjoint view's edges from forward
        values to the backward nodes that read them in full (a warning says when
        that is big).
    timeout : float
        Seconds ``dot`` may take when the drawing is displayed in a notebook.

    Returns
    -------
    graphviz.Digraph

    Examples
    --------
    >>> import graphgen
    >>> d = graphgen.render(graphgen.load("examples/tiny.yaml"), view="flow")
    >>> "∂J/∂h1" in d.source
    True
    """
    D, _ = _build(
        G,
        view,
        values=values,
        seed=seed,
        collapse=collapse,
        focus=focus,
        depth=depth,
        full=full,
    )
    return _digraph(D, view, timeout)


def to_dot(G, view="flow", **kwargs):
    """The DOT text of :func:`render` (deterministic: same graph, same bytes).

    Examples
    --------
    >>> import graphgen
    >>> text = graphgen.to_dot(graphgen.load("examples/tiny.yaml"), view="forward")
    >>> text.startswith("digraph tiny_forward {")
    True
    """
    return render(G, view, **kwargs).source


def write(G, path, view="flow", fmt=None, *, timeout=TIMEOUT, progress=None, **kwargs):
    """Write a diagram to ``path``; the format comes from the extension (or ``fmt``).

    ``.dot`` needs nothing else; ``.svg``, ``.png`` and ``.pdf`` need the Graphviz
    ``dot`` program (:class:`DiagramError` with install instructions otherwise), which
    may run ``timeout`` seconds (0 or None: no limit). ``progress`` (a function of one
    string) is told when a big layout starts, so that nobody waits in silence.

    Examples
    --------
    >>> import graphgen, tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "tiny.dot")
    >>> write(graphgen.load("examples/tiny.yaml"), out)
    >>> open(out).read().startswith("digraph")
    True
    """
    path = os.fspath(path)
    fmt = (fmt or os.path.splitext(path)[1].lstrip(".")).lower()
    if fmt not in FORMATS:
        raise DiagramError(
            f"cannot tell the format of {path!r}: use one of "
            + ", ".join("." + f for f in FORMATS)
        )
    drawing = render(G, view, timeout=timeout, **kwargs)
    if fmt == "dot":
        data = drawing.source.encode("utf-8")
    else:
        if progress is not None and drawing.size > BIG:
            limit = f"at most {timeout:g} s" if timeout else "no time limit"
            progress(
                f"laying out {drawing.what} with Graphviz's dot ({limit}; Ctrl-C stops)"
            )
        data = run_dot(drawing.source, fmt, timeout=timeout, what=drawing.what)
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise DiagramError(f"cannot write {path!r}: {e.strerror}") from None


WHAT_TO_DO = (
    "draw less: --collapse (one box per block), --focus NODE --depth 2 (one "
    "neighbourhood), or write a .dot file and lay it out yourself; or allow more time "
    "with --timeout SECONDS (0: no limit)"
)


def run_dot(text, fmt, timeout=TIMEOUT, what="the drawing"):
    """Lay out DOT ``text`` with the ``dot`` program; returns the output bytes.

    ``dot`` gets ``timeout`` seconds (0 or None: no limit); past them, or when
    interrupted (Ctrl-C, or an exception such as the CLI's SIGTERM handler raises), it
    is killed and waited for, so no ``dot`` outlives the call. Its warnings are passed
    on as :class:`~graphgen.errors.GraphgenWarning`.
    """
    exe = shutil.which("dot")
    if exe is None:
        raise DiagramError(INSTALL_HINT.format(fmt=fmt.upper()))
    proc = subprocess.Popen(
        [exe, f"-T{fmt}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(text.encode("utf-8"), timeout=timeout or None)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise DiagramError(
            f"Graphviz's dot did not finish laying out {what} within {timeout:g} s and "
            f"was stopped; {WHAT_TO_DO}"
        ) from None
    except BaseException:
        _stop(proc)
        raise
    lines = [x.strip() for x in err.decode("utf-8", "replace").splitlines()]
    lines = list(dict.fromkeys(x for x in lines if x))
    if proc.returncode == -signal.SIGINT:
        # Ctrl-C in a terminal reaches dot too, and it may die before Python sees it
        raise KeyboardInterrupt
    if proc.returncode != 0:
        why = (
            f"was killed by signal {-proc.returncode}"
            if proc.returncode < 0
            else f"failed: {lines[0] if lines else 'exit ' + str(proc.returncode)}"
        )
        raise DiagramError(f"Graphviz's dot {why} laying out {what}; {WHAT_TO_DO}")
    for line in lines[:5]:
        _say(f"dot: {line}")
    if len(lines) > 5:
        _say(f"dot: … and {len(lines) - 5} more warnings")
    return out


def _stop(proc):
    """Kill ``dot`` and reap it (no orphan, no zombie), even when a second signal
    arrives meanwhile."""
    try:
        if proc.poll() is None:
            proc.kill()
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
