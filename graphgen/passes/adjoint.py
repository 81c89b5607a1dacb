"""The adjoint pass: reverse-mode differentiation as a graph transformation.

Walking the forward graph in reverse topological order, the adjoint of each node ``j`` is
the sum over its successors ``k`` of what ``k``'s VJP rule sends back::

    ∂J/∂a_j = Σ_k ∂J/∂a_k · ∂a_k/∂a_j

That sum is built in exactly one place, :func:`_sum_over_successors`, in a fixed order, as
an explicit ``add_n`` node that records which successors it adds. A node feeding one
successor twice (``mul(x, x)``) gets two terms. Everything the VJP rules build is an
ordinary registered op, so the result is a graph of the same vocabulary: it can be
optimized, drawn, compiled and differentiated again.
"""

from __future__ import annotations

import warnings

from .. import graph as g
from .. import ops
from ..errors import GradientError, GraphgenError, GraphgenWarning
from .shapes import prepare


class Builder:
    """Adds backward nodes to a graph; VJP rules call ``b.<op>(*args, **attrs)``.

    Arguments are node ids or Python numbers (which become constants). Each call infers the
    new node's shape with the op's own rule, so a rule that builds something ill-shaped fails
    here, naming the op it was differentiating.
    """

    def __init__(self, G):
        self.G = G
        self.where = None  # the forward node whose VJP is being built, for errors
        self.pass_index = len(G.graph.get("passes") or [])

    def shape(self, n):
        return g.node_dicts(self.G)[n][g.SHAPE]

    def const(self, value):
        n = g.fresh_id(self.G, f"bwd/{float(value)!r}")
        self.G.add_node(
            n,
            **{
                g.KIND: g.CONST,
                g.VALUE: float(value),
                g.SHAPE: (),
                g.DTYPE: self.G.graph["dtype"],
                g.ROLE: g.BACKWARD,
                g.SEQ: g.next_seq(self.G),
                g.PASS: self.pass_index,
            },
        )
        return n

    def node(self, op_name, *args, **attrs):
        op = ops.get(op_name)
        args = [a if isinstance(a, str) else self.const(a) for a in args]
        in_shapes = [self.shape(a) for a in args]
        try:
            full, shape = ops.infer(op, in_shapes, attrs)
        except GraphgenError as e:
            raise GradientError(
                f"the VJP rule of {self.G.nodes[self.where][g.OP]!r} built an ill-shaped "
                f"{op_name}: {e.message}",
                node=self.where,
                source=g.source_of(self.G),
            ) from None
        n = g.fresh_id(self.G, f"bwd/{op_name}")
        self.G.add_node(
            n,
            **{
                g.KIND: g.OPNODE,
                g.OP: op_name,
                g.ATTRS: full,
                g.SHAPE: shape,
                g.DTYPE: self.G.graph["dtype"],
                g.ROLE: g.BACKWARD,
                g.SEQ: g.next_seq(self.G),
                g.PASS: self.pass_index,
            },
        )
        for i, a in enumerate(args):
            g.add_edge_arg(self.G, a, n, i)
        return n

    def __getattr__(self, op_name):
        if op_name in ops.REGISTRY:
            return lambda *args, **attrs: self.node(op_name, *args, **attrs)
        raise AttributeError(op_name)


def relevant_nodes(G, loss, wrt):
    """Nodes on a path from some ``wrt`` node to the loss: the only ones that get adjoints."""
    return g.reach(G, [loss]) & g.reach(G, wrt, backward=False)


def adjoint(G, loss=None, wrt=None, *, prepared=False, copy=True):
    """Build the adjoint graph: the forward graph plus the nodes computing every gradient.

    Parameters
    ----------
    G : networkx.DiGraph
        A graphgen graph (from :func:`graphgen.load` or built by hand).
    loss, wrt : optional
        Override ``G.graph["loss"]`` and ``G.graph["wrt"]``.
    prepared : bool
        ``G`` is a graph :func:`~graphgen.passes.shapes.prepare` returned, unchanged
        since: copied rather than validated and inferred again (``api.lower``).
    copy : bool
        With ``prepared``: ``False`` builds the backward pass into ``G`` itself (for a
        caller that owns it, ``api.lower``) instead of into a copy.

    Returns
    -------
    networkx.DiGraph
        A new graph. Backward nodes have ``role == "backward"``; ``graph["grads"]`` maps each
        ``wrt`` node to the node holding ∂loss/∂wrt (None if the loss does not depend on it).

    Examples
    --------
    >>> import graphgen
    >>> A = graphgen.adjoint(graphgen.load("examples/fanout.yaml"))
    >>> sorted(A.nodes[A.graph["grads"]["W1"]]["role"] for _ in [0])
    ['backward']
    """
    H = G  # prepare copies it; the overrides go on a copy of their own
    if loss is not None or wrt is not None:
        H = g.copy(G)
    if loss is not None:
        H.graph["loss"] = loss
    if wrt is not None:
        H.graph["wrt"] = list(wrt)
    if not prepared:
        H = prepare(H)
    elif H is G and copy:
        H = g.copy(H)
    loss, wrt = H.graph["loss"], H.graph["wrt"]
    src = g.source_of(H)
    if loss is None:
        raise GradientError(
            "no loss to differentiate: set 'loss' in the spec", source=src
        )

    nodes = g.node_dicts(H)
    forward_order = g.schedule(H)
    active = relevant_nodes(H, loss, wrt)
    b = Builder(H)

    bar = {}  # forward node -> node holding its adjoint
    terms = {n: [] for n in active}  # forward node -> [(successor, position, node)]

    seed = b.const(1.0)
    nodes[seed].update({g.ADJOINT_OF: loss, g.NOTE: ("∂{y}/∂{y} = 1", {"y": loss}, {})})
    bar[loss] = seed

    for n in reversed(forward_order):
        if n not in active:
            continue
        if n != loss:
            adj = _sum_over_successors(H, b, n, terms[n])
            if adj is None:
                continue
            bar[n] = adj
        if nodes[n][g.KIND] != g.OPNODE:
            continue
        _send_back(H, b, n, bar[n], active, terms)

    grads = {}
    for w in wrt:
        grads[w] = bar.get(w)
        if grads[w] is None:
            warnings.warn(
                GraphgenWarning(
                    f"{src}: {nodes[w][g.KIND]} {w!r}: the loss {loss!r} does not depend on "
                    "it; its gradient is zero"
                ),
                stacklevel=2,
            )
    H.graph["grads"] = grads
    H.graph["adjoints"] = bar
    # every pass keeps its own map: a graph differentiated twice has two adjoints per node
    H.graph["passes"] = [
        *(H.graph.get("passes") or []),
        {"loss": loss, "adjoints": bar},
    ]
    return H


def _send_back(H, b, k, k_bar, active, terms):
    """Apply ``k``'s VJP rule and file one contribution per (argument, position)."""
    nodes = g.node_dicts(H)
    a = nodes[k]
    op = ops.get(a[g.OP])
    ins = g.operands(H, k)
    if not any(p in active for p in ins):
        return
    if op.vjp is None:
        return
    ctx = ops.VJPContext(
        ins=ins,
        out=k,
        g=k_bar,
        attrs=a[g.ATTRS],
        in_shapes=[nodes[p][g.SHAPE] for p in ins],
        out_shape=a[g.SHAPE],
    )
    b.where = k
    cotangents = op.vjp(b, ctx)
    if len(cotangents) != len(ins):
        raise GradientError(
            f"the VJP rule of {op.name!r} returned {len(cotangents)} cotangents for "
            f"{len(ins)} arguments",
            node=k,
            source=g.source_of(H),
        )
    for i, (p, ct) in enumerate(zip(ins, cotangents)):
        if ct is None or p not in active:
            continue
        if tuple(nodes[ct][g.SHAPE]) != tuple(nodes[p][g.SHAPE]):
            # the one place broadcasting is undone
            ct = b.sum_to_shape(ct, shape=list(nodes[p][g.SHAPE]))
        ids = {"y": k}
        ids.update({op.args[0]: p} if op.variadic else dict(zip(op.args, ins)))
        deriv = op.derivs[0 if op.variadic else i] if op.derivs else ""
        terms[p].append((k, i, ct, (deriv, ids, dict(a[g.ATTRS]))))


def _sum_over_successors(H, b, j, contribs):
    """∂J/∂a_j = Σ_k ∂J/∂a_k · ∂a_k/∂a_j: one term per (successor, argument position).

    Terms arrive in a fixed order (reverse schedule of the successors, then position) and
    are summed in the forward order of the successors, so the code reads like the math.
    """
    nodes = g.node_dicts(H)
    if not contribs:
        return None
    contribs = sorted(contribs, key=lambda t: (nodes[t[0]][g.SEQ], t[1]))
    for k, i, ct, note in contribs:
        # a contribution node may be shared (add's VJP passes ȳ through unchanged): only
        # label nodes this pass created for this term
        if (
            nodes[ct].get(g.ROLE) == g.BACKWARD
            and g.CONTRIB not in nodes[ct]
            and (g.ADJOINT_OF not in nodes[ct])
        ):
            nodes[ct][g.CONTRIB] = (k, j)
            nodes[ct][g.NOTE] = note
    if len(contribs) == 1:
        k, _, ct, note = contribs[0]
        if g.ADJOINT_OF not in nodes[ct]:
            nodes[ct][g.ADJOINT_OF] = j
            nodes[ct].pop(g.CONTRIB, None)
            nodes[ct][g.NOTE] = note
        return ct
    total = b.add_n(*[ct for _, _, ct, _ in contribs])
    nodes[total].update(
        {
            g.ADJOINT_OF: j,
            g.SUMS: [k for k, _, _, _ in contribs],
            g.NOTE: ("Σ over successors", {}, {}),
        }
    )
    return total
