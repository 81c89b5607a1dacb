"""The forward-mode pass: Jacobian-vector products as a graph transformation.

Walking the graph in topological order, the tangent of each node ``k`` is the sum over its
arguments (its predecessors) ``j`` of what ``k``'s JVP rule makes of ``j``'s tangent::

    ȧ_k = Σ_j ∂a_k/∂a_j · ȧ_j

the dual of the adjoint's sum over successors. That sum is built in exactly one place,
:func:`_sum_over_predecessors`, in argument order, as an explicit ``add_n`` that records
which predecessors it adds (``fsums``); one term is used as it is. A node taking one
argument twice (``mul(x, x)``) gets two terms. A contribution smaller than the node (an
argument that broadcasts) is broadcast to its shape with one ``broadcast_to``, the dual of
the adjoint's ``sum_to_shape``.

Tangent nodes are ordinary forward nodes (``role == "forward"``) of registered ops, with
``tangent_of`` naming the node whose tangent they hold; the final tangent of node ``k`` is
called ``k_dot`` where the name is free. So the result can be optimized, compiled, drawn
and differentiated again.
"""

from __future__ import annotations

import networkx as nx

from .. import graph as g
from .. import ops
from ..errors import GradientError, GraphError, GraphgenError
from .adjoint import Builder
from .shapes import prepare

# the node a forward-mode node was made for: tangents are scheduled right after it
# (:func:`_interleave`), a second pass's after the first's
_ANCHOR = "_anchor"


class TangentBuilder(Builder):
    """Adds tangent nodes to a graph; JVP rules call ``b.<op>(*args, **attrs)``.

    Like the adjoint's :class:`~graphgen.passes.adjoint.Builder`, but the nodes it makes
    are forward nodes, named after the node whose tangent is being built
    (``h_dot/mul``), and the nodes made for the current node are remembered in ``made``.
    """

    def __init__(self, G):
        super().__init__(G)
        self.stem = "jvp"
        self.made = set()

    def _add(self, base, attrs):
        n = g.fresh_id(self.G, base)
        self.G.add_node(
            n,
            **{
                **attrs,
                g.DTYPE: self.G.graph["dtype"],
                g.ROLE: g.FORWARD,
                g.SEQ: g.next_seq(self.G),
                g.DOT: True,
                _ANCHOR: self.where,
            },
        )
        self.made.add(n)
        return n

    def const(self, value):
        return self._add(
            f"{self.stem}/{float(value)!r}",
            {g.KIND: g.CONST, g.VALUE: float(value), g.SHAPE: ()},
        )

    def node(self, op_name, *args, **attrs):
        op = ops.get(op_name)
        args = [a if isinstance(a, str) else self.const(a) for a in args]
        in_shapes = [self.shape(a) for a in args]
        try:
            full, shape = ops.infer(op, in_shapes, attrs)
        except GraphgenError as e:
            raise GradientError(
                f"the JVP rule of {self.G.nodes[self.where][g.OP]!r} built an ill-shaped "
                f"{op_name}: {e.message}",
                node=self.where,
                source=g.source_of(self.G),
            ) from None
        n = self._add(
            f"{self.stem}/{op_name}",
            {g.KIND: g.OPNODE, g.OP: op_name, g.ATTRS: full, g.SHAPE: shape},
        )
        for i, a in enumerate(args):
            g.add_edge_arg(self.G, a, n, i)
        return n


def jvp(G, tangents, *, outputs=None):
    """Build the tangent graph: ``G`` plus the nodes computing each output's tangent.

    Parameters
    ----------
    G : networkx.DiGraph
        A graphgen graph (from :func:`graphgen.load` or built by hand). Not modified.
    tangents : dict or list
        Input/param name -> the name of a new input holding its tangent (same shape and
        dtype); a list of names means ``{name: name + "_dot"}``. Inputs and params not
        named have no tangent (they are held fixed).
    outputs : list, optional
        The outputs whose tangents are wanted (default: every float output of ``G``).

    Returns
    -------
    networkx.DiGraph
        A new graph. Its outputs are ``G``'s followed by ``<out>_dot`` for each output in
        ``outputs`` (zeros where the output does not depend on any tangent);
        ``graph["tangents"]`` maps each such output to its tangent node and
        ``graph["tangent_inputs"]`` each input or param to its tangent input. Compiled,
        its ``forward`` returns the outputs and their tangents.

    Examples
    --------
    >>> import graphgen
    >>> T = graphgen.jvp(graphgen.load("examples/tiny.yaml"), ["W1"], outputs=["y"])
    >>> T.graph["tangents"], T.graph["outputs"]
    ({'y': 'y_dot'}, ['y', 'J', 'y_dot'])
    """
    H = prepare(G)
    src = g.source_of(H)
    fdtype = H.graph["dtype"]
    if isinstance(tangents, (list, tuple)):
        tangents = {n: f"{n}_dot" for n in tangents}
    tangents = dict(tangents)
    if outputs is None:
        outputs = [o for o in H.graph["outputs"] if H.nodes[o][g.DTYPE] == fdtype]
    outputs = list(outputs)
    for o in outputs:
        if o not in H:
            raise GraphError(f"output {o!r} is not a node", source=src)
        if H.nodes[o][g.DTYPE] != fdtype:
            raise GradientError(
                f"output {o!r} is {H.nodes[o][g.DTYPE]}: it has no tangent", source=src
            )

    dot = _add_tangent_inputs(H, tangents)
    active = g.reach(H, list(dot), backward=False) & g.reach(H, outputs)
    b = TangentBuilder(H)
    for n in g.schedule(H):
        if n not in active or n in dot or H.nodes[n][g.KIND] != g.OPNODE:
            continue
        b.stem, b.made = f"{n}_dot", set()
        terms = _send_forward(H, b, n, dot)
        t = _sum_over_predecessors(H, b, n, terms)
        if t is not None:
            dot[n] = t

    H.graph["tangents"] = {o: _output_tangent(H, b, o, dot.get(o)) for o in outputs}
    H.graph["tangent_inputs"] = dict(tangents)
    _interleave(H)
    H.graph["outputs"] = list(H.graph["outputs"]) + [
        t for t in H.graph["tangents"].values() if t not in H.graph["outputs"]
    ]
    return H


def _interleave(H):
    """Number the nodes so that each node's tangent comes right after it: every
    schedule (creation order breaks ties) then computes a value and its tangent
    together, as forward mode does, and neither outlives the other for long."""

    def key(n):
        a = H.nodes[n]
        anchor = a.get(_ANCHOR)
        if anchor is None or anchor not in H:
            return (a[g.SEQ], 0, a[g.SEQ])
        return (H.nodes[anchor][g.SEQ], 1, a[g.SEQ])

    order = sorted(H, key=key)
    for i, n in enumerate(order):
        H.nodes[n][g.SEQ] = i
    H.graph["_seq"] = len(order)


def _add_tangent_inputs(H, tangents):
    """A new input per tangent, shaped like its input or param; ``{primal: tangent}``."""
    src = g.source_of(H)
    fdtype = H.graph["dtype"]
    dot = {}
    for n, t in tangents.items():
        if n not in H or H.nodes[n][g.KIND] not in (g.INPUT, g.PARAM):
            raise GradientError(f"tangents: {n!r} is not an input or param", source=src)
        if H.nodes[n][g.DTYPE] != fdtype:
            raise GradientError(
                f"tangents: {n!r} is {H.nodes[n][g.DTYPE]}: it has no tangent",
                node=n,
                source=src,
            )
        if not isinstance(t, str) or t in H or t in dot.values():
            raise GraphError(
                f"tangents: the tangent of {n!r} needs a new name, got {t!r}",
                source=src,
            )
        H.add_node(
            t,
            **{
                g.KIND: g.INPUT,
                g.SHAPE: tuple(H.nodes[n][g.SHAPE]),
                g.DTYPE: fdtype,
                g.ROLE: g.FORWARD,
                g.SEQ: g.next_seq(H),
                g.TANGENT_OF: n,
                g.DOT: True,
                _ANCHOR: n,
            },
        )
        dot[n] = t
    return dot


def _send_forward(H, b, k, dot):
    """Apply ``k``'s JVP rule: one term ``(argument, position, node, note, argument's
    tangent)`` per argument
    position whose contribution is not None, broadcast to ``k``'s shape."""
    a = H.nodes[k]
    op = ops.get(a[g.OP])
    ins = g.operands(H, k)
    dots = [dot.get(p) for p in ins]
    if all(d is None for d in dots):
        return []
    if op.jvp is None:
        reason = f" ({op.jvp_reason})" if op.jvp_reason else ""
        raise GradientError(
            f"op {op.name!r} has no JVP rule{reason}, but a tangent flows into it",
            node=k,
            source=g.source_of(H),
        )
    ctx = ops.JVPContext(
        ins=ins,
        out=k,
        dots=dots,
        attrs=a[g.ATTRS],
        in_shapes=[H.nodes[p][g.SHAPE] for p in ins],
        out_shape=a[g.SHAPE],
    )
    b.where = k
    contributions = op.jvp(b, ctx)
    if len(contributions) != len(ins):
        raise GradientError(
            f"the JVP rule of {op.name!r} returned {len(contributions)} tangents for "
            f"{len(ins)} arguments",
            node=k,
            source=g.source_of(H),
        )
    terms = []
    for i, (p, ct) in enumerate(zip(ins, contributions)):
        if ct is None:
            continue
        if dots[i] is None:
            raise GradientError(
                f"the JVP rule of {op.name!r} returned a tangent for argument {i} "
                f"({op.arg_name(i)}), which has none",
                node=k,
                source=g.source_of(H),
            )
        if tuple(H.nodes[ct][g.SHAPE]) != tuple(a[g.SHAPE]):
            # the one place a smaller contribution is broadcast
            ct = b.broadcast_to(ct, shape=list(a[g.SHAPE]))
        ids = {"y": k}
        ids.update({op.args[0]: p} if op.variadic else dict(zip(op.args, ins)))
        deriv = op.derivs[0 if op.variadic else i] if op.derivs else ""
        terms.append((p, i, ct, (deriv, ids, dict(a[g.ATTRS])), dots[i]))
    return terms


def _sum_over_predecessors(H, b, k, terms):
    """ȧ_k = Σ_j ∂a_k/∂a_j · ȧ_j: one term per (predecessor, argument position).

    Terms arrive in argument order and are summed in that order; one term is used as it
    is. The node holding the tangent is labelled ``tangent_of = k`` and, where this pass
    made it for ``k``, renamed ``k_dot`` (if free).
    """
    if not terms:
        return None
    for p, _, ct, note, p_dot in terms:
        # a contribution may be another node's tangent (add passes ȧ through): label
        # only the nodes made for this term
        if ct in b.made and g.TANGENT_OF not in H.nodes[ct]:
            H.nodes[ct][g.NOTE] = note
            H.nodes[ct][g.FCONTRIB] = (k, p, p_dot)
    if len(terms) == 1:
        ct = terms[0][2]
        if ct not in b.made or g.TANGENT_OF in H.nodes[ct]:
            return ct  # another node's tangent, shared
        H.nodes[ct][g.TANGENT_OF] = k
        return _rename(H, ct, f"{k}_dot")
    total = b.add_n(*[ct for _, _, ct, _, _ in terms])
    H.nodes[total].update(
        {
            g.TANGENT_OF: k,
            g.FSUMS: [p for p, _, _, _, _ in terms],
            g.NOTE: ("Σ over predecessors", {}, {}),
        }
    )
    return _rename(H, total, f"{k}_dot")


def _rename(H, n, base):
    """``n`` renamed to a fresh id from ``base``; returns the new id."""
    new = g.fresh_id(H, base)
    nx.relabel_nodes(H, {n: new}, copy=False)
    return new


def _output_tangent(H, b, o, t):
    """The node an output's tangent is returned from: ``<o>_dot`` (zeros if ``o`` does
    not depend on any tangent; a one-term ``add_n`` where ``t`` is another node's)."""
    b.stem, b.made, b.where = f"{o}_dot", set(), o
    if t is None:
        t = b.zeros(shape=list(H.nodes[o][g.SHAPE]))
    elif H.nodes[t].get(g.TANGENT_OF) == o:
        return t
    else:
        t = b.add_n(t)
    H.nodes[t][g.TANGENT_OF] = o
    return _rename(H, t, f"{o}_dot")


def forward_mode(A, *, jvp=False, hvp=False):
    """The tangent systems of a generated module's ``jvp`` and ``hvp``, added to ``A``.

    ``A`` is a lowered graph (prepared, differentiated when it has a loss). With
    ``jvp``, every float input and param (not a ``vjp`` module's cotangents; or the
    names in ``jvp`` when it is a list) gets a tangent input ``<name>_dot`` and every
    float output its tangent;
    ``graph["jvp"] = {"tangents": {name: tangent input}, "outputs": {output: tangent}}``.
    With ``hvp`` (forward over reverse), each ``wrt`` name gets a direction input and
    each gradient its tangent along those directions, the Hessian-vector product;
    ``graph["hvp"] = {"vectors": {name: input}, "hvps": {name: node or None}}``.
    ``graph["outputs"]`` is unchanged.

    Examples
    --------
    >>> import graphgen
    >>> from graphgen.passes.forward import forward_mode
    >>> A = graphgen.adjoint(graphgen.load("examples/tiny.yaml"))
    >>> H = forward_mode(A, hvp=True)
    >>> H.graph["hvp"]["vectors"]
    {'W1': 'W1_dot', 'b1': 'b1_dot', 'W2': 'W2_dot'}
    """
    H = prepare(A)
    src = g.source_of(H)
    outputs = list(H.graph["outputs"])
    cotangents = set((H.graph.get("cotangents") or {}).values())
    fdtype = H.graph["dtype"]
    if hvp and (H.graph.get("loss") is None or cotangents):
        what = "a vjp module (a model without a loss)" if cotangents else "no loss"
        raise GradientError(
            f"hvp and hessian need a loss to differentiate twice; this graph has "
            f"{what}",
            source=src,
        )
    if jvp:
        names = [
            n
            for n in g.schedule(H)
            if H.nodes[n][g.KIND] in (g.INPUT, g.PARAM)
            and H.nodes[n][g.DTYPE] == fdtype
            and n not in cotangents
            and g.TANGENT_OF not in H.nodes[n]
        ]
        if not isinstance(jvp, bool):  # the names to take tangents of, in this order
            unknown = [n for n in jvp if n not in names]
            if unknown:
                raise GradientError(
                    f"jvp: {', '.join(map(repr, unknown))} is not a float input or "
                    f"param (expected some of {', '.join(map(repr, names))})",
                    source=src,
                )
            names = list(dict.fromkeys(jvp))
        H = _system(H, names, outputs)
        H.graph["jvp"] = {
            "tangents": H.graph["tangent_inputs"],
            "outputs": H.graph["tangents"],
        }
    if hvp:
        grads = H.graph.get("grads") or {}
        wrt = list(H.graph["wrt"])
        roots = [grads[w] for w in wrt if grads.get(w) is not None]
        H = _system(H, wrt, list(dict.fromkeys(roots)))
        H.graph["hvp"] = {
            "vectors": H.graph["tangent_inputs"],
            "hvps": {
                w: H.graph["tangents"][grads[w]] if grads.get(w) is not None else None
                for w in wrt
            },
        }
    H.graph["outputs"] = outputs
    for key in ("tangents", "tangent_inputs"):
        H.graph.pop(key, None)
    return H


def _system(H, names, outputs):
    """One application of :func:`jvp`: a fresh ``<name>_dot`` input per name."""
    tangents = {}
    for n in names:
        t = g.fresh_id(H, f"{n}_dot")
        while t in tangents.values():
            t = g.fresh_id(H, f"{t}_")
        tangents[n] = t
    T = jvp(H, tangents, outputs=outputs)
    return T
