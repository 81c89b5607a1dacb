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
import math
import os
import re
import shutil
import subprocess

import networkx as nx

from .. import dims, ops
from .. import graph as g
from ..codegen.comments import Comments
from ..codegen.naming import node_names
from ..errors import DiagramError, did_you_mean
from ..notes import fill, local_templates, partial
from .values import adjoint_value, evaluate, load_arrays, norm, term_value

__all__ = ["VIEWS", "DiagramError", "render", "to_dot", "write"]

VIEWS = ("forward", "adjoint", "flow")
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
        for src, dst, attrs in self.edges:
            out.append(f"\t{ids[src]} -> {ids[dst]}" + _attrs(attrs) + "\n")
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


def _draw_forward(H, flow, values=None, A=None):
    """The forward and flow views (``flow``: add the reversed gradient edges)."""
    from ..passes.adjoint import relevant_nodes

    D = _Drawing(H.graph.get("name", "model"))
    loss = H.graph.get("loss")
    active = set()
    if flow and loss is not None:
        active = relevant_nodes(H, loss, H.graph.get("wrt") or [])
    show = visible
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


def _draw_adjoint(A, values=None):
    namer = node_names(A)
    comments = Comments(A, namer, A.graph.get("loss"))
    nm = namer.names
    loss = A.graph.get("loss")
    J = nm.get(loss, visible(loss))
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
                rows.append(
                    esc("= " + partial(J, nm.get(bar_of[n], visible(bar_of[n]))))
                )
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
                succ = ", ".join(nm.get(k, visible(k)) for k in a[g.SUMS])
                sums.append(
                    esc(f"Σ over the successors of {nm.get(j, visible(j))}: {succ}")
                )
                style.update(SUM_STYLE)
            elif g.ADJOINT_OF in a:
                of = a[g.ADJOINT_OF]
                rows.append(esc("= " + partial(J, nm.get(of, of))))
            elif g.CONTRIB in a:
                k, j = a[g.CONTRIB]
                term = partial(J, nm.get(j, j))
                rows.append(esc(f"term of {term} via {nm.get(k, k)}"))
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
                    label = "via " + ", ".join(nm.get(s, visible(s)) for s in via)
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
        D.edge(j, k, **attrs)
    if values is not None:
        D.legend = [(c, t) for _, c, t in MAGNITUDES]
    return D


# --------------------------------------------------------------------- large graphs


def group_of(G, n):
    """The cluster of node ``n``: its ``group`` attribute, else its name's first
    ``/``-separated part (``"layer3/z" -> "layer3"``), else None."""
    a = G.nodes[n]
    if a.get("group"):
        return str(a["group"])
    if a.get(g.ROLE) == g.BACKWARD:
        j = a.get(g.ADJOINT_OF) or (a.get(g.CONTRIB) or (None, None))[1]
        return group_of(G, j) if j is not None and j in G else None
    name = str(n)
    if "/" in name.strip("/"):
        return name.strip("/").split("/", 1)[0]
    if a.get(g.KIND) == g.CONST:
        # a number belongs with the node it feeds
        owners = {group_of(G, s) for s in G.successors(n)}
        if len(owners) == 1:
            return owners.pop()
    return None


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
    D.nodes = {k: v for k, v in D.nodes.items() if k in keep}
    D.edges = [e for e in D.edges if e[0] in keep and e[1] in keep]
    label, attrs = D.nodes[focus]
    D.nodes[focus] = (label, {**attrs, "penwidth": "3", "color": "#0f766e"})


def _collapse(G, D, mode):
    groups = {n: group_of(G, n) for n in D.nodes}
    if mode == "clusters":
        D.group = {n: grp for n, grp in groups.items() if grp is not None}
        return D
    members = {}
    for n in D.nodes:
        if groups[n] is not None:
            members.setdefault(groups[n], []).append(n)
    if not members:
        return D
    C = _Drawing(D.name)
    C.legend = D.legend
    big = len(D.nodes) + len(D.edges) > BIG
    key_of = {}
    for n, (label, attrs) in D.nodes.items():
        grp = groups[n]
        if grp is None:
            C.node(n, label, **attrs)
            key_of[n] = n
        else:
            key_of[n] = ("group", grp)
    for grp, ns in members.items():
        counts = {}
        for n in ns:
            counts[_kind_text(G, n)] = counts.get(_kind_text(G, n), 0) + 1
        summary = ", ".join(
            f"{k}×{v}" if v > 1 else k for k, v in sorted(counts.items())
        )
        C.node(
            ("group", grp),
            _label(esc(grp + "/"), esc(f"{len(ns)} nodes"), esc(summary)),
            shape="box3d",
            style="filled",
            fillcolor="#e0f2fe",
            color="#0369a1",
        )
    merged = {}
    for src, dst, attrs in D.edges:
        s, d = key_of[src], key_of[dst]
        if s == d:
            continue
        slot = merged.setdefault((s, d), {"fwd": [], "grad": []})
        slot["grad" if attrs.get("dir") == "back" else "fwd"].append(attrs)
    for (s, d), slot in merged.items():
        fwd, grad = slot["fwd"], slot["grad"]
        if len(fwd) + len(grad) == 1 and not big:
            C.edge(s, d, **(fwd or grad)[0])
            continue
        attrs = dict((fwd or grad)[0])
        attrs.pop("label", None)
        parts = []
        if fwd:
            parts.append(f"{len(fwd)} edge" + ("s" if len(fwd) > 1 else ""))
        if grad:
            # one line drawn for both directions: forward colour, gradient colour
            colors = [a.get("color", GRAD_COLOR) for a in grad]
            gcol = max(
                colors,
                key=lambda c: (
                    [m[1] for m in MAGNITUDES].index(c)
                    if c in [m[1] for m in MAGNITUDES]
                    else -1
                ),
            )
            attrs.update(
                dir="both",
                arrowtail="normal",
                style="solid",
                color=f"{fwd[0]['color']}:{gcol}" if fwd else gcol,
            )
            parts.append(f"{len(grad)} gradient" + ("s" if len(grad) > 1 else ""))
        if not big or len(fwd) + len(grad) > 2:
            attrs["label"] = Html(esc(", ".join(parts)))
        C.edge(s, d, **attrs)
    return C


# -------------------------------------------------------------------------- public API


def _build(G, view="flow", *, values=None, seed=0, collapse=False, focus=None, depth=2):
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
        D, base = _draw_adjoint(A, vals), A
        if focus is not None and focus not in A:
            byname = {v: k for k, v in node_names(A).names.items()}
            focus = byname.get(focus, focus)
    else:
        D, base = _draw_forward(H, view == "flow", vals, A), H
    if focus is not None:
        _focus(base, D, focus, depth)
    if collapse:
        D = _collapse(base, D, "clusters" if collapse == "clusters" else "groups")
    return D, base


def _digraph(D, view):
    import graphviz

    keys = list(D.nodes)
    ids = {k: f"n{i}" for i, k in enumerate(keys)}
    name = re.sub(r"[^A-Za-z0-9_]", "_", f"{D.name}_{view}") or "graph"
    dot = graphviz.Digraph(name=name if name[0].isalpha() else f"g_{name}")
    title = {
        "forward": "forward graph",
        "adjoint": "adjoint graph (as compiled)",
        "flow": "gradient flow: dashed edges carry ∂J/∂· back",
    }[view]
    graph_attrs = {
        "rankdir": "LR",
        "fontname": "Helvetica",
        "fontsize": "12",
        "newrank": "true",
        "label": Html(esc(f"{D.name}: {title}")),
        "labelloc": "t",
        "nodesep": "0.3",
    }
    if len(D.nodes) + len(D.edges) > BIG:
        # bound the layout's network-simplex and crossing-minimization work
        graph_attrs.update(
            nslimit="0.5", nslimit1="0.5", mclimit="0.05", searchsize="5"
        )
    dot.body.extend(D.lines(ids, graph_attrs))
    return dot


def render(G, view="flow", *, values=None, seed=0, collapse=False, focus=None, depth=2):
    """Draw a graphgen graph as a ``graphviz.Digraph`` (displays inline in Jupyter).

    Parameters
    ----------
    G : networkx.DiGraph
        A graphgen graph (:func:`graphgen.load`).
    view : {"flow", "forward", "adjoint"}
        What to draw (see :mod:`graphgen.views.diagram`).
    values : bool, dict, str or None
        Annotate with values and gradient norms: True for random arrays
        (:func:`graphgen.check.random_arrays` with ``seed``), a dict of arrays, or the
        path of an ``.npz`` file (missing arrays are random).
    collapse : bool or {"groups", "clusters"}
        Group nodes by their ``group`` attribute or name prefix (``layer3/...``):
        ``"groups"`` (or True) draws one box per group, ``"clusters"`` draws every node
        inside a box per group.
    focus : str, optional
        Draw only the nodes within ``depth`` hops of this node.

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
        G, view, values=values, seed=seed, collapse=collapse, focus=focus, depth=depth
    )
    return _digraph(D, view)


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


def write(G, path, view="flow", fmt=None, **kwargs):
    """Write a diagram to ``path``; the format comes from the extension (or ``fmt``).

    ``.dot`` needs nothing else; ``.svg``, ``.png`` and ``.pdf`` need the Graphviz
    ``dot`` program (:class:`DiagramError` with install instructions otherwise).

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
    text = to_dot(G, view, **kwargs)
    if fmt == "dot":
        data = text.encode("utf-8")
    else:
        data = run_dot(text, fmt)
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise DiagramError(f"cannot write {path!r}: {e.strerror}") from None


def run_dot(text, fmt):
    """Lay out DOT ``text`` with the ``dot`` program; returns the output bytes."""
    exe = shutil.which("dot")
    if exe is None:
        raise DiagramError(INSTALL_HINT.format(fmt=fmt.upper()))
    proc = subprocess.run(
        [exe, f"-T{fmt}"], input=text.encode("utf-8"), capture_output=True, check=False
    )
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DiagramError(
            f"dot failed: {err[0] if err else 'exit ' + str(proc.returncode)}"
        )
    return proc.stdout
