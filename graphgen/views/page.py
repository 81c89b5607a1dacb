"""An interactive page for learners: one self-contained HTML file that steps through
backpropagation on a model (``graphgen render SPEC -o model.html``).

Everything on the page comes from the compiler's own graphs:

* the picture is the prepared forward graph, laid out by Graphviz's ``dot`` at render
  time and embedded as SVG. A big graph is collapsed into blocks (its ``group``
  attributes or ``/`` name prefixes when they split it, else the stretches of the
  schedule between points where a single value is live, which are the residual blocks of
  a ResNet); one extra layout per block draws the graph with that block opened, so a
  click on a block swaps in that picture;
* the backward steps follow the statements of the generated ``value_and_grad`` (or
  ``vjp``) in order: the adjoint of each forward node as the sum over its successors
  (:func:`graphgen.views.diagram.gradient_terms`, the same order as the adjoint pass),
  each term's local derivative from the op's math text, and the line of code the
  backend's program builds for it (its ``Statement``, not the rendered text);
* the numbers are those of :func:`graphgen.views.values.evaluate` on seeded random
  arrays (``values``), the reference interpreter whose agreement with the generated
  module ``explain --values`` checks.

The page makes no network request: the script and the style sheet
(``templates/page/``) are inlined, the data is a JSON block. The output is deterministic.
"""

from __future__ import annotations

import json
import math
import os

import networkx as nx
import numpy as np

from .. import graph as g
from ..codegen.render import template_dir
from ..errors import DiagramError
from ..notes import partial, product
from .diagram import (
    LOSS_STYLE,
    STYLE,
    esc,
    gradient_terms,
    local_derivatives,
    run_dot,
    visible,
)
from .values import adjoint_value, evaluate, load_arrays, norm, term_value, vjp_term

__all__ = ["blocks", "page_data", "to_html", "write"]

# forward graphs with more nodes than this are collapsed into blocks
COLLAPSE_AT = 60
# about this many blocks at most (structural blocks are merged up to a size)
BLOCKS = 30
# arrays with at most this many entries show every entry; larger ones their norm
ENTRIES = 12


# --------------------------------------------------------------------------- blocks


def _named_groups(H):
    """node -> block from ``group`` attributes or a ``/`` name prefix, when that puts
    most op nodes in blocks of which none holds more than half of them; else None."""
    out = {}
    for n in H:
        a = H.nodes[n]
        name = str(n).strip("/")
        if a.get("group"):
            out[n] = str(a["group"])
        elif "/" in name:
            out[n] = name.split("/", 1)[0]
    opn = [n for n in H if H.nodes[n][g.KIND] == g.OPNODE]
    grouped = [n for n in opn if n in out]
    if not opn or len(grouped) * 2 < len(opn):
        return None
    counts = {}
    for n in grouped:
        counts[out[n]] = counts.get(out[n], 0) + 1
    if len(counts) < 2 or len(counts) > 2 * BLOCKS:
        return None  # one block, or more pictures than a page should carry
    if max(counts.values()) * 2 > len(opn):
        return None
    return out


def _structural_groups(H, order):
    """Op nodes -> block index: the schedule cut where exactly one op value is live
    (a residual block's output, every step of a chain), pieces merged up to a size; a
    graph with no such cuts (wide, densely connected) in runs of three times that size."""
    opn = [n for n in order if H.nodes[n][g.KIND] == g.OPNODE]
    pos = {n: i for i, n in enumerate(opn)}
    live = [0] * (len(opn) + 1)
    for n in opn:
        last = max((pos[k] for k in H.successors(n) if k in pos), default=pos[n])
        if last > pos[n]:
            live[pos[n]] += 1
            live[last] -= 1
    target = max(4, math.ceil(len(opn) / BLOCKS))
    out, block, size, running = {}, 0, 0, 0
    for i, n in enumerate(opn):
        out[n] = block
        size += 1
        running += live[i]
        # a cut where one value is live; in a graph too wide for one, every 3 targets
        if (running <= 1 and size >= target or size >= 3 * target) and i < len(opn) - 1:
            block, size = block + 1, 0
    return out


def _is_param(H, n):
    return H.nodes[n][g.KIND] == g.PARAM


_SEPARATORS = "/_.:-"


def _shared_head(names):
    """The leading ``/``-segment every name has (``gpu_0/`` in ONNX's ResNet-50)."""
    heads = {str(n).split("/", 1)[0] + "/" for n in names if "/" in str(n)}
    if len(heads) == 1 and all("/" in str(n) for n in names):
        return heads.pop()
    return ""


def _common_name(names, shared):
    """What the names of a block's parameters have in common, cut at a separator
    (``res2_0`` for ``gpu_0/res2_0_branch2a_w_0``, ``gpu_0/res2_0_branch1_b_0``, ...),
    or "" when it is too short to say anything."""
    names = [str(n)[len(shared) :] for n in names]
    if len(names) < 2:
        return ""
    head = os.path.commonprefix(names)
    if head not in names:  # cut a partial word: "res2_0_branch" -> "res2_0"
        cut = max(head.rfind(c) for c in _SEPARATORS)
        head = head[:cut] if cut > 0 else ""
    head = head.rstrip(_SEPARATORS)
    return visible(head) if len(head) >= 2 else ""


def blocks(H, order=None):
    """The blocks a big forward graph collapses into: ``{node: block name}`` for the
    nodes inside one (inputs and values shared by several blocks stay outside), or an
    empty dict when the graph is small enough to draw whole."""
    order = order if order is not None else g.schedule(H)
    if len(H) <= COLLAPSE_AT:
        return {}
    named = _named_groups(H)
    if named is None:
        index = _structural_groups(H, order)
        members = {}
        for n in order:
            if n in index:
                members.setdefault(index[n], []).append(n)
        shared = _shared_head([n for n in H if H.nodes[n][g.KIND] == g.PARAM])
        names = {}
        for b, ns in members.items():
            first, last = visible(ns[0]), visible(ns[-1])
            span = f"{first} … {last}" if len(ns) > 1 else first
            params = [
                p for n in ns for p in H.predecessors(n) if p in H and _is_param(H, p)
            ]
            common = _common_name(params, shared)
            names[b] = f"{common}: {span}" if common else span
        named = {n: names[b] for n, b in index.items()}
    out = {}
    for n in order:
        a = H.nodes[n]
        if a[g.KIND] == g.OPNODE:
            if n in named:
                out[n] = named[n]
        elif a[g.KIND] in (g.PARAM, g.CONST):
            owners = {named.get(k) for k in H.successors(n)}
            if len(owners) == 1 and None not in owners:
                out[n] = owners.pop()
    return out


# --------------------------------------------------------------------------- numbers


def _num(v):
    """A number as JSON allows it (non-finite ones as strings)."""
    v = float(v)
    return v if math.isfinite(v) else repr(v)


def _array(v):
    """An array for the page: its shape, norm and (small arrays) every entry."""
    v = np.asarray(v, dtype=np.float64)
    out = {"shape": list(v.shape), "norm": _num(norm(v))}
    if v.size <= ENTRIES:
        out["entries"] = [_num(x) for x in v.reshape(-1)]
    return out


def _vjp_term(H, values, j, k, kbar):
    """The term ``k̄ · ∂k/∂j`` by applying ``k``'s VJP rule to ``kbar`` (for a term the
    optimizer folded away)."""
    total = vjp_term(H, values, j, k, kbar)
    return None if total is None else np.broadcast_to(total, np.shape(values[j]))


class _Numbers:
    """Adjoints and terms of the forward graph ``H``, read off the lowered ``A``."""

    def __init__(self, H, A, values, up):
        self.H, self.A, self.values, self.up = H, A, values, up
        self.memo = {}  # (j, k) -> the term k sends back to j
        self.adjoints = {}  # n -> ∂J/∂n
        self.shown = {}

    def adjoint_value(self, n):
        """∂J/∂n as the lowered graph holds it (None where it was folded away)."""
        if n not in self.values:
            return None
        return adjoint_value(self.A, self.values, n, np.shape(self.values[n]))

    def adjoint_array(self, n):
        """:func:`_array` of ∂J/∂n (computed once: big models' norms cost)."""
        if n not in self.shown:
            adj = self.adjoint(n)
            self.shown[n] = None if adj is None else _array(adj)
        return self.shown[n]

    def adjoint(self, n):
        """∂J/∂n: the lowered graph's value, or (where the optimizer folded the adjoint
        into its consumers) the sum of the terms its successors send back."""
        if n not in self.values:
            return None
        if n in self.adjoints:
            return self.adjoints[n]
        out = adjoint_value(self.A, self.values, n, np.shape(self.values[n]))
        loss = self.H.graph["loss"]
        if out is None and n != loss:
            terms = gradient_terms(self.H, n, loss, self.up)
            parts = [self.term(n, k, single=False) for k in dict.fromkeys(terms)]
            if parts and all(p is not None for p in parts):
                out = sum(parts[1:], parts[0])
        self.adjoints[n] = out
        return out

    def term(self, j, k, single):
        key = (j, k)
        if key not in self.memo:
            t = None
            adj = (self.A.graph.get("adjoints") or {}).get(j)
            if single:
                t = self.adjoint_value(j)
            elif adj in self.A and g.SUMS in self.A.nodes[adj]:
                # the fan-out sum's own term, when it is still a node of its own
                t = term_value(self.A, self.values, j, k)
            if t is None:
                kbar = self.adjoint(k)
                if kbar is not None:
                    t = _vjp_term(self.H, self.values, j, k, kbar)
            self.memo[key] = None if t is None else np.asarray(t)
        return self.memo[key]


# ------------------------------------------------------------------- the generated code


def _code_steps(A, source_name):
    """The statements of the generated gradient function: ``(lines, index)``, where
    ``lines[i]`` is statement ``i``'s comment and code lines and ``index`` maps every
    node computed in statement ``i`` (folded temporaries too) to ``i``."""
    from ..backends.numpy.program import NumpyProgram

    program = NumpyProgram(A, "numpy", source_name)
    functions = program.context()["functions"]
    fn = functions[-1]
    _, _, inlined = program.programs.get(str(fn.name), (None, None, {}))
    lines, index = [], {}
    for i, st in enumerate(fn.statements):
        text = [f"# {c}" for c in st.comments]
        if st.expr.endswith(f"out={st.target})"):
            text += str(st.expr).split("\n")
        else:
            code = f"{st.target} = {st.expr}"
            if st.note:
                code += f"  # {st.note}"
            text += code.split("\n")
        text += [f"{st.target} += {t}" for t in st.accumulate]
        lines.append(text)
        index.setdefault(st.node, i)
        for c in inlined.get(st.node, ()):
            index.setdefault(c, i)
    return str(fn.name), lines, index, program.namer


# ---------------------------------------------------------- checked against the module

# lowered graphs up to this many nodes are checked against their generated module
CHECK_AT = 1500
# the relative difference from the generated module above which the page says so
CHECK_TOL = 1e-8


def _module_check(H, A, arrays, vals):
    """The loss and every parameter gradient of the page against the generated
    module's ``value_and_grad`` in float64 (as ``explain --values`` checks them): a
    sentence for the page; a :class:`GraphgenWarning` on a mismatch."""
    import warnings

    from ..errors import GraphgenWarning
    from .values import ModuleGradients

    if len(A) > CHECK_AT:
        return {
            "ok": None,
            "text": f"Not checked against the generated module here ({len(A):,} "
            "nodes): `graphgen check` compares its gradients with finite differences.",
        }
    module = ModuleGradients(H, arrays, vals)
    loss = H.graph["loss"]
    pairs = [(loss, module.loss)] + [
        (w, module.grads[w]) for w in sorted(module.grads, key=str)
    ]
    worst, where = 0.0, None
    for n, theirs in pairs:
        ours = vals[n] if n == loss else adjoint_value(A, vals, n, np.shape(vals[n]))
        if ours is None:
            ours = np.zeros(np.shape(theirs))
        a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
        scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
        d = float(np.max(np.abs(a - b), initial=0.0)) / scale
        if not d <= worst:
            worst, where = d, n
    ok = worst <= CHECK_TOL
    text = (
        f"Checked: the loss and the gradients of {len(pairs) - 1} arrays agree with "
        f"the generated value_and_grad (float64) to {worst:.1e} (relative)."
    )
    if not ok:
        text = (
            f"MISMATCH with the generated value_and_grad at {visible(where)}: "
            f"relative difference {worst:.1e} (tolerance {CHECK_TOL:g})."
        )
        warnings.warn(
            f"{g.source_of(H)}: the page's numbers differ from the generated module "
            f"at {visible(where)!r} by {worst:.1e} (relative)",
            GraphgenWarning,
            stacklevel=3,
        )
    return {"ok": ok, "text": text}


# ------------------------------------------------------------------------ the data


def _show(n):
    """A name in a formula: bracketed when it holds a '/' (``∂J/∂[layer1/W]``)."""
    s = visible(n)
    return f"[{s}]" if "/" in s else s


# a parameter's hover lists its paths to the loss when it has at most this many
PATHS = 4


def _paths(H, n, loss, towards, limit):
    """The first ``limit`` paths from ``n`` to the loss, in the order ``explain`` lists
    them (successors by creation order)."""
    out, stack = [], [[n]]
    while stack and len(out) < limit:
        path = stack.pop()
        if path[-1] == loss:
            out.append(path)
            continue
        for k in reversed(towards.get(path[-1], ())):
            stack.append(path + [k])
    return out


def _path_product(H, n, loss, towards, count):
    """∂J/∂n as ``explain`` writes it: the product of the local derivatives along each
    path to the loss (``towards``: each node's successors on such paths), and their sum,
    for at most :data:`PATHS` paths; else the first path and the number of paths."""
    total = count.get(n, 0)
    paths = _paths(H, n, loss, towards, PATHS if total <= PATHS else 1)
    if not paths:
        return None
    lhs = partial(_show(loss), _show(n))
    products = [
        product(
            [partial(_show(p[t + 1]), _show(p[t])) for t in reversed(range(len(p) - 1))]
        )
        for p in paths
    ]
    return {
        "paths": str(total),
        "list": [
            {
                "route": " → ".join(_show(x) for x in reversed(p)),
                "product": f"{lhs}{f'  (path {i})' if total > 1 else ''} = {prod}",
            }
            for i, (p, prod) in enumerate(zip(paths, products), 1)
        ],
        "sum": f"{lhs} = " + " + ".join(f"({x})" for x in products)
        if 1 < total <= PATHS
        else None,
    }


def page_data(G, values=True, seed=0, source_name=None, check=True):
    """Everything the page shows, as plain data.

    Returns ``(data, H, ids, block_of, bid, edges)``: ``data`` (JSON-ready) holds the
    nodes (by synthetic id ``n0``, ``n1``, ... in schedule order), the blocks, and the
    backward steps in the generated code's order; ``H`` is the prepared forward graph,
    ``ids`` its node -> id map, ``block_of`` node -> block name, ``bid`` block name ->
    id, and ``edges`` every forward edge ``(j, k, norm of the term it carries back)``.
    """
    from ..api import lower
    from ..passes.adjoint import relevant_nodes
    from ..passes.shapes import prepare

    H = prepare(G)
    loss = H.graph.get("loss")
    if loss is None:
        raise DiagramError(
            "the page steps through backprop and needs a loss: set 'loss' in the spec "
            "(ONNX models: --loss)",
            source=g.source_of(H),
        )
    A = lower(H)
    arrays = load_arrays(H, values, seed)
    vals = evaluate(A, arrays)
    order = g.schedule(H)
    ids = {n: f"n{i}" for i, n in enumerate(order)}
    block_of = blocks(H, order)
    # blocks in the order of their first op (params come early in the schedule)
    first = [n for n in order if n in block_of and H.nodes[n][g.KIND] == g.OPNODE]
    names = list(dict.fromkeys(block_of[n] for n in first + order if n in block_of))
    bid = {b: f"b{i}" for i, b in enumerate(names)}
    active = relevant_nodes(H, loss, H.graph.get("wrt") or [])
    up = nx.ancestors(H, loss) | {loss}
    count = {loss: 1}
    for n in reversed(order):
        if n != loss:
            count[n] = sum(count.get(k, 0) for k in H.successors(n))
    num = _Numbers(H, A, vals, up)
    towards = {}  # each node's successors on paths to the loss, by creation order
    for n in order:
        succ = [k for k in H.successors(n) if k in up]
        if succ:
            towards[n] = sorted(succ, key=lambda k: H.nodes[k][g.SEQ])
    source_name = source_name or os.path.basename(g.source_of(H))
    fname, code, index, namer = _code_steps(A, source_name)
    adjoints = A.graph.get("adjoints") or {}
    grads = A.graph.get("grads") or {}

    def code_name(n):
        return str(namer[n]) if n in namer else visible(n)

    nodes = {}
    for n in order:
        a = H.nodes[n]
        entry = {
            "name": visible(n),
            "kind": a[g.KIND],
            "op": a.get(g.OP) or "",
            "shape": "×".join(str(d) for d in a[g.SHAPE]) or "scalar",
            "block": bid.get(block_of.get(n)),
            "value": _array(vals[n]) if n in vals else None,
        }
        if n in active:
            adj = num.adjoint_array(n)
            if adj is not None:
                entry["grad"] = adj
        if a[g.KIND] == g.PARAM:
            entry["path"] = _path_product(H, n, loss, towards, count)
        nodes[ids[n]] = entry

    # edges: forward edges with the norm of the gradient term each carries back
    edges = []
    for j, k in sorted(
        H.edges, key=lambda e: (H.nodes[e[0]][g.SEQ], H.nodes[e[1]][g.SEQ])
    ):
        term = None
        if j in active and k in active and H.nodes[k][g.KIND] == g.OPNODE:
            terms = gradient_terms(H, j, loss, up)
            if k in terms and len(terms) == 1 and num.adjoint_array(j) is not None:
                term = num.adjoint_array(j)["norm"]
            elif k in terms:
                t = num.term(j, k, single=len(terms) == 1)
                term = None if t is None else _num(norm(t))
        edges.append((j, k, term))

    # the backward steps, in the order the generated code computes the adjoints; an
    # adjoint the optimizer folded into its consumers' line comes just before them
    def statement(n):
        v = adjoints.get(n)
        if v is None:
            return None
        return index.get(v, -1) if v in A and A.nodes[v][g.KIND] == g.OPNODE else -1

    at = {}
    for n in reversed(order):
        kind = H.nodes[n][g.KIND]
        if n not in active or kind == g.CONST or (kind == g.INPUT and n not in grads):
            continue
        if num.adjoint(n) is not None:
            at[n] = statement(n)
    for n in order:  # folded: where the first line that reads it is
        if n in at and at[n] is None:
            later = [at[p] for p in H.predecessors(n) if at.get(p) is not None]
            at[n] = min(later, default=len(code))
    steps = sorted((at[n], -H.nodes[n][g.SEQ], n) for n in at)
    L = _show(loss)
    step_data = []
    for i, _, n in steps:
        terms = gradient_terms(H, n, loss, up) if n != loss else []
        single = len(terms) == 1
        rows = []
        for k in dict.fromkeys(terms):
            t = num.adjoint_array(n) if single else num.term(n, k, single)
            if t is not None and not single:
                t = _array(t)
            rows.append(
                {
                    "succ": ids[k],
                    "succ_bar": partial(L, _show(k)),
                    "succ_value": num.adjoint_array(k),
                    "local": local_derivatives(H, n, k, show=_show, loss=loss),
                    "factor": partial(_show(k), _show(n)),
                    "value": t,
                }
            )
        v = adjoints.get(n)
        if v is None:
            note = "folded into the line that uses it"
        elif statement(n) is not None and statement(n) < 0:
            note = "a constant of the generated code"
        else:
            note = None
        step_data.append(
            {
                "node": ids[n],
                "bar": partial(L, _show(n)),
                "code_name": code_name(v)
                if v in A and A.nodes[v][g.KIND] == g.OPNODE and v in namer
                else code_name(n) + "_bar",
                "value": num.adjoint_array(n),
                "terms": rows,
                "code": code[i] if 0 <= i < len(code) and v is not None else [],
                "note": note,
                "seed": n == loss,
            }
        )
    data = {
        "name": visible(H.graph.get("name", "model")),
        "source": visible(source_name),
        "loss": ids[loss],
        "loss_value": _num(np.asarray(vals[loss]).reshape(-1)[0])
        if np.size(vals[loss]) == 1
        else None,
        "seed": seed,
        "function": fname,
        "nodes": nodes,
        "blocks": {bid[b]: visible(b) for b in names},
        "steps": step_data,
        "check": _module_check(H, A, arrays, vals)
        if check
        else {"ok": None, "text": "Not checked against the generated module."},
    }
    return data, H, ids, block_of, bid, edges


# ------------------------------------------------------------------------ the pictures


def _dot_attrs(attrs):
    parts = []
    for k, v in attrs.items():
        if isinstance(v, _HtmlLabel):
            parts.append(f"{k}=<{v}>")
        else:
            s = str(v).replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{k}="{s}"')
    return " [" + " ".join(parts) + "]"


class _HtmlLabel(str):
    pass


def _node_label(title, sub):
    return _HtmlLabel(
        '<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">'
        f"<TR><TD><B>{title}</B></TD></TR>"
        f'<TR><TD><FONT POINT-SIZE="9">{sub}</FONT></TD></TR></TABLE>'
    )


def _dot(H, ids, block_of, bid, edges, opened, data):
    """DOT text of the forward graph with every block collapsed but ``opened``."""
    lines = [
        "digraph page {",
        (
            '\tgraph [rankdir="LR" fontname="Helvetica" nodesep="0.25" ranksep="0.35"'
            ' bgcolor="transparent"]'
        ),
        '\tnode [fontname="Helvetica" fontsize="11"]',
        '\tedge [fontname="Helvetica" fontsize="9" arrowsize="0.7"]',
    ]
    key = {}
    inside = []
    members = {}
    for n in ids:
        b = block_of.get(n)
        if b is not None and bid[b] != opened:
            key[n] = bid[b]
            members.setdefault(bid[b], []).append(n)
        else:
            key[n] = ids[n]
            if b is not None:
                inside.append(n)
    small = len(set(key.values())) <= 40
    loss = H.graph.get("loss")
    for n in ids:
        if key[n] != ids[n] or n in inside:
            continue
        lines.append(f"\t{ids[n]}" + _dot_attrs(_node_attrs(H, n, ids, loss)))
    if inside:
        lines.append("\tsubgraph cluster_open {")
        lines.append(
            '\t\tgraph [style="rounded,filled" fillcolor="#f0f9ff" color="#0369a1"'
            f' id="{opened}" class="open"]'
        )
        lines.append(
            "\t\tlabel=<<B>"
            + esc(data["blocks"][opened])
            + '</B> <FONT POINT-SIZE="9">(click to close)</FONT>>'
        )
        for n in inside:
            lines.append(f"\t\t{ids[n]}" + _dot_attrs(_node_attrs(H, n, ids, loss)))
        lines.append("\t}")
    for b, ns in members.items():
        counts = {}
        for n in ns:
            a = H.nodes[n]
            if a[g.KIND] == g.OPNODE:
                counts[a[g.OP]] = counts.get(a[g.OP], 0) + 1
        summary = ", ".join(
            f"{k}×{v}" if v > 1 else k for k, v in sorted(counts.items())
        )
        label = _node_label(esc(data["blocks"][b]), esc(f"{len(ns)} nodes: {summary}"))
        lines.append(
            f"\t{b}"
            + _dot_attrs(
                {
                    "id": b,
                    "class": "block",
                    "label": label,
                    "shape": "box3d",
                    "style": "filled",
                    "fillcolor": "#e0f2fe",
                    "color": "#0369a1",
                    "tooltip": "click to open",
                }
            )
        )
    merged = {}
    for i, (j, k, term) in enumerate(edges):
        s, d = key[j], key[k]
        if s == d:
            continue
        slot = merged.setdefault((s, d), [])
        slot.append((i, j, term))
    for (s, d), items in merged.items():
        eid = "e" + "_".join(str(i) for i, _, _ in items[:1]) + f"_{s}_{d}"
        terms = [t for _, _, t in items if isinstance(t, float)]
        attrs = {"id": eid, "color": "#4b5563"}
        if terms:
            attrs["class"] = f"m{_bucket(max(terms))}"
        if small and len(items) == 1:
            j = items[0][1]
            attrs["label"] = "×".join(str(x) for x in H.nodes[j][g.SHAPE]) or "scalar"
        elif len(items) > 1:
            attrs["label"] = f"{len(items)} edges"
        lines.append(f"\t{s} -> {d}" + _dot_attrs(attrs))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _node_attrs(H, n, ids, loss):
    a = H.nodes[n]
    style = dict(STYLE[a[g.KIND]])
    if n == loss:
        style.update(LOSS_STYLE)
    if a[g.KIND] == g.CONST:
        title, sub = esc(f"{a[g.VALUE]:g}"), "const"
    else:
        kind = a[g.OP] if a[g.KIND] == g.OPNODE else a[g.KIND]
        shape = "×".join(str(d) for d in a[g.SHAPE]) or "scalar"
        title, sub = esc(n), esc(f"{kind} {shape}")
    return {
        "id": ids[n],
        "class": f"gg {a[g.KIND]}",
        "label": _node_label(title, sub),
        "tooltip": " ",
        **style,
    }


# the legend of gradient magnitudes, one colour per decade (log scale): bucket 0 is
# < 1e-8 (vanished), bucket k is [1e(k-9), 1e(k-8)), the last ≥ 1e4 (exploding)
COLORS = [
    "#6b7280",
    "#1e3a8a",
    "#1d4ed8",
    "#2563eb",
    "#0284c7",
    "#0891b2",
    "#0d9488",
    "#16a34a",
    "#65a30d",
    "#ca8a04",
    "#ea580c",
    "#dc2626",
    "#b91c1c",
    "#7f1d1d",
]
LEGEND = [
    (
        i,
        c,
        "< 1e-8"
        if i == 0
        else "≥ 1e4"
        if i == len(COLORS) - 1
        else f"1e{i - 9} … 1e{i - 8}",
    )
    for i, c in enumerate(COLORS)
]


def _bucket(x):
    """The legend bucket of a gradient norm."""
    if not x > 0:
        return 0
    k = math.floor(math.log10(x))
    return min(max(k + 9, 0), len(COLORS) - 1)


def _svg(dot_text):
    svg = run_dot(dot_text, "svg").decode("utf-8")
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else svg


# ------------------------------------------------------------------------ the page


def _asset(name):
    with open(template_dir() / "page" / name, encoding="utf-8") as f:
        return f.read()


def _script_safe(text):
    """Script text inside a ``<script>`` element: no ``</`` and no ``<!--`` to end it."""
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def _json_safe(text):
    """JSON inside a ``<script>`` element: no ``<``, ``>`` or ``&`` at all (JSON's
    ``\\u003c`` escapes read as the same strings)."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def to_html(G, values=True, seed=0, source_name=None, check=True):
    """The page as a string (see the module's docstring).

    ``check``: compare the page's loss and parameter gradients with the generated
    module's ``value_and_grad`` in float64 and say the result on the page (graphs of up
    to ``CHECK_AT`` lowered nodes).
    """
    import jinja2

    data, H, ids, block_of, bid, edges = page_data(
        G, values, seed, source_name, check=check
    )
    views = {"top": _svg(_dot(H, ids, block_of, bid, edges, None, data))}
    for b in data["blocks"]:
        views[b] = _svg(_dot(H, ids, block_of, bid, edges, b, data))
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir() / "page")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    data_json = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return env.get_template("page.html.j2").render(
        title=f"{data['name']}: backprop step by step",
        data=_markup(_json_safe(data_json)),
        views=[(k, _markup(v)) for k, v in views.items()],
        style=_markup(_asset("page.css")),
        script=_markup(_script_safe(_asset("page.js"))),
        legend=LEGEND,
    )


def _markup(text):
    from markupsafe import Markup

    return Markup(text)


def write(G, path, values=True, seed=0, check=True):
    """Write the page of ``G`` to ``path`` (``.html``); see :func:`to_html`.

    ``graphgen.write_page(G, "model.html")`` from the package; ``values``: True for
    seeded random arrays, a dict of arrays or an ``.npz`` path (missing ones random).
    """
    path = os.fspath(path)
    text = to_html(G, values=values, seed=seed, check=check)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise DiagramError(f"cannot write {path!r}: {e.strerror}") from None
