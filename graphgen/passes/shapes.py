"""Validation and shape inference: ``prepare(G) -> G`` with every op node's shape filled in.

Works the same on a graph loaded from a spec and on one a user built in Python, so every
check that a spec file gets, a hand-built graph gets too.
"""

from __future__ import annotations

import math

import networkx as nx

from .. import dims, ops
from .. import graph as g
from ..errors import (
    GradientError,
    GraphError,
    GraphgenError,
    ShapeError,
    did_you_mean,
)


def _err(cls, G, node, msg):
    return cls(
        msg, node=node, source=g.source_of(G), line=G.graph.get("lines", {}).get(node)
    )


def _check_shape(G, n, shape, static=False):
    if not isinstance(shape, (tuple, list)):
        raise _err(
            GraphError, G, n, f"shape must be a list of dimensions, got {shape!r}"
        )
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (int, str)):
            raise _err(GraphError, G, n, f"dimension {d!r} is not an integer or a name")
        if isinstance(d, int) and d < 0:
            raise _err(GraphError, G, n, f"dimension {d} is negative")
        if isinstance(d, str) and (static or not dims.SYMBOL_RE.match(d)):
            what = (
                "a param's shape must be static integers"
                if static
                else ("symbolic dimensions must be identifier-like names")
            )
            raise _err(GraphError, G, n, f"{what}, got {d!r}")
    return tuple(shape)


INITS = ("zeros", "ones", "normal", "glorot_uniform", "weights")


def _check_init(H, n, a):
    """A param's init: a named scheme, a number (every entry), or ``weights`` (stored)."""
    init = a[g.INIT]
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        if not math.isfinite(init):
            raise _err(GraphError, H, n, f"init must be finite, got {init!r}")
        a[g.INIT] = float(init)
        return
    if init not in INITS:
        raise _err(
            GraphError,
            H,
            n,
            f"unknown init {init!r} (expected a number or one of {', '.join(INITS)})",
        )
    if init == "weights":
        stored = (H.graph.get("weights") or {}).get(n)
        if stored is None:
            raise _err(
                GraphError, H, n, "init is 'weights', but no stored array has its name"
            )
        if tuple(stored.shape) != tuple(a[g.SHAPE]):
            raise _err(
                GraphError,
                H,
                n,
                f"the stored array has shape {list(stored.shape)}, the param "
                f"{list(a[g.SHAPE])}",
            )


def prepare(G):
    """Validate ``G`` and infer the shape of every op node. Returns a new graph.

    Raises a :class:`graphgen.errors.GraphgenError` subclass that names the node and the
    spec file for anything wrong: a cycle, an unknown op, wrong argument counts or dtypes,
    unknown or missing attributes, shapes that do not fit, a non-scalar loss, a ``wrt`` entry
    that is not an input or param.
    """
    if not isinstance(G, nx.DiGraph) or G.is_multigraph():
        raise GraphError("expected a networkx.DiGraph", source=g.source_of(G))
    H = g.copy(G)
    H.graph.setdefault("dtype", "float64")
    H.graph.setdefault("name", "model")
    H.graph.setdefault("lines", {})
    fdtype = H.graph["dtype"]
    if fdtype not in g.FLOAT_DTYPES:
        raise GraphError(
            f"graph dtype must be float64 or float32, got {fdtype!r}",
            source=g.source_of(H),
        )
    if not dims.SYMBOL_RE.match(str(H.graph["name"])):
        raise GraphError(
            f"name must be identifier-like, got {H.graph['name']!r}",
            source=g.source_of(H),
        )

    cycle = None
    if not nx.is_directed_acyclic_graph(H):  # fast; find_cycle only to report one
        cycle = nx.find_cycle(H)
    if cycle:
        path = " -> ".join(repr(u) for u, _ in cycle) + f" -> {cycle[0][0]!r}"
        raise _err(GraphError, H, cycle[0][0], f"the graph has a cycle: {path}")

    nodes = g.node_dicts(H)
    for seq, a in enumerate(nodes.values()):  # graphs built in Python may lack it
        a.setdefault(g.SEQ, seq)
    H.graph["_seq"] = max(
        [H.graph.get("_seq", 0)] + [a[g.SEQ] + 1 for a in nodes.values()]
    )

    for n in g.schedule(H):
        a = nodes[n]
        kind = a.get(g.KIND)
        if kind in (g.INPUT, g.PARAM):
            if H.in_degree(n):
                raise _err(GraphError, H, n, f"an {kind} cannot have arguments")
            a[g.SHAPE] = _check_shape(H, n, a.get(g.SHAPE), static=kind == g.PARAM)
            dtype = a.get(g.DTYPE, fdtype)
            if dtype not in (fdtype, "int64") or (kind == g.PARAM and dtype != fdtype):
                raise _err(
                    GraphError, H, n, f"dtype must be {fdtype} or int64, got {dtype!r}"
                )
            a[g.DTYPE] = dtype
            if kind == g.PARAM:
                a.setdefault(g.INIT, "glorot_uniform")
                _check_init(H, n, a)
        elif kind == g.CONST:
            v = a.get(g.VALUE)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise _err(GraphError, H, n, f"a constant must be a number, got {v!r}")
            a[g.VALUE] = float(v)
            a[g.SHAPE] = ()
            a[g.DTYPE] = fdtype
        elif kind == g.OPNODE:
            _infer_op(H, n, fdtype)
        else:
            raise _err(
                GraphError,
                H,
                n,
                f"kind must be input, param, const or op, got {kind!r}",
            )
        a.setdefault(g.ROLE, g.FORWARD)

    _check_roles(H)
    if H.graph.get("vjp") and H.graph.get("loss") is None:
        H = _add_cotangents(H, fdtype)
    return H


def _add_cotangents(H, fdtype):
    """A graph with ``vjp`` and no loss: the loss becomes Σ_k sum(output_k · cotangent_k).

    Each output gets a cotangent input of its shape (``G.graph["cotangents"]``); every
    param and float input is differentiated. The NumPy and Numba modules then offer
    ``vjp(cotangents, **arrays)`` instead of ``value_and_grad``.
    """
    outputs = [o for o in H.graph["outputs"] if H.nodes[o][g.DTYPE] == fdtype]
    if not outputs:
        raise _err(GraphError, H, None, "vjp needs at least one float output")
    wrt = [
        n
        for n in H
        if H.nodes[n][g.KIND] == g.PARAM
        or H.nodes[n][g.KIND] == g.INPUT
        and H.nodes[n][g.DTYPE] == fdtype
    ]
    cotangents, terms = {}, []
    for o in outputs:
        c = g.fresh_id(H, f"{o}_cotangent")
        H.add_node(
            c,
            kind=g.INPUT,
            shape=tuple(H.nodes[o][g.SHAPE]),
            dtype=fdtype,
            **{g.SEQ: g.next_seq(H)},
        )
        cotangents[o] = c
        p = g.fresh_id(H, f"{o}_dot_cotangent")
        H.add_node(p, kind=g.OPNODE, op="mul", attrs={}, **{g.SEQ: g.next_seq(H)})
        g.add_edge_arg(H, o, p, 0)
        g.add_edge_arg(H, c, p, 1)
        s = g.fresh_id(H, f"{o}_vjp_sum")
        H.add_node(s, kind=g.OPNODE, op="sum", attrs={}, **{g.SEQ: g.next_seq(H)})
        g.add_edge_arg(H, p, s, 0)
        terms.append(s)
    loss = terms[0]
    if len(terms) > 1:
        loss = g.fresh_id(H, "vjp_total")
        H.add_node(loss, kind=g.OPNODE, op="add_n", attrs={}, **{g.SEQ: g.next_seq(H)})
        for i, t in enumerate(terms):
            g.add_edge_arg(H, t, loss, i)
    H.graph.update(loss=loss, wrt=wrt, cotangents=cotangents)
    return prepare(H)


def _infer_op(H, n, fdtype):
    nodes = g.node_dicts(H)
    a = nodes[n]
    name = a.get(g.OP)
    if name not in ops.REGISTRY:
        hint = did_you_mean(str(name), list(ops.REGISTRY))
        raise _err(GraphError, H, n, f"unknown op {name!r}{hint}")
    op = ops.REGISTRY[name]
    pred = H._pred[n]  # {argument: edge attributes}, without networkx's views
    for p, e in pred.items():
        pos = e.get(g.POS)
        if not isinstance(pos, tuple) or not pos:
            raise _err(
                GraphError,
                H,
                n,
                f"edge from {p!r} needs a 'pos' attribute: a tuple of argument positions",
            )
    args = g.operands(H, n)
    positions = sorted(i for e in pred.values() for i in e[g.POS])
    if positions != list(range(len(positions))):
        raise _err(
            GraphError, H, n, f"argument positions {positions} have gaps or repeats"
        )
    if not op.arity_ok(len(args)):
        want = "at least 1" if op.variadic else str(len(op.args))
        names = f" ({', '.join(op.args)})" if op.args and not op.variadic else ""
        raise _err(
            GraphError,
            H,
            n,
            f"op {name!r} takes {want} argument(s){names}, got {len(args)}",
        )
    # a reshape of int64 indices is int64 indices (ids flattened for a gather)
    out_dtype = fdtype
    if op.keeps_int and args and nodes[args[0]][g.DTYPE] == "int64":
        out_dtype = "int64"
    if op.dtype is not None:  # an op that makes int64 says when, from its arguments
        given = dict(a.get(g.ATTRS) or {})
        defaults = {k: v for k, v in op.attrs.items() if v is not ops.REQUIRED}
        in_dtypes = tuple(nodes[p][g.DTYPE] for p in args)
        out_dtype = op.dtype(in_dtypes, {**defaults, **given}) or fdtype
    follows = {0} if op.keeps_int else set(op.int_like)  # int64 when the result is
    for i, p in enumerate(args):
        dtype = nodes[p][g.DTYPE]
        want = (
            "int64"
            if i in op.int_args or (i in follows and out_dtype == "int64")
            else fdtype
        )
        if dtype != want:
            raise _err(
                GraphError,
                H,
                n,
                f"argument {i} ({op.arg_name(i)}) of {name} must be {want}, "
                f"but {p!r} is {dtype}",
            )
    in_shapes = [nodes[p][g.SHAPE] for p in args]
    try:
        attrs, shape = ops.infer(op, in_shapes, dict(a.get(g.ATTRS) or {}))
    except GraphError as e:  # an attribute unknown to the op, or a required one missing
        raise _err(GraphError, H, n, e.message) from None
    except GraphgenError as e:
        shapes = ", ".join(
            f"{p!r} {dims.fmt_shape(s)}" for p, s in zip(args, in_shapes)
        )
        msg = f"{name}: {e.message}" + (f" [arguments: {shapes}]" if shapes else "")
        raise _err(ShapeError, H, n, msg) from None
    a[g.ATTRS] = attrs
    a[g.SHAPE] = shape
    a[g.DTYPE] = out_dtype


def _check_roles(H):
    src = g.source_of(H)
    outputs = list(H.graph.get("outputs") or [])
    loss = H.graph.get("loss")
    if not outputs and loss is not None:
        outputs = [loss]
    H.graph["outputs"] = outputs
    for o in outputs:
        if o not in H:
            raise GraphError(f"output {o!r} is not a node", source=src)
    if loss is not None:
        if loss not in H:
            raise GradientError(f"loss {loss!r} is not a node", source=src)
        shape = H.nodes[loss][g.SHAPE]
        if tuple(shape) != ():
            raise _err(
                GradientError,
                H,
                loss,
                f"the loss must be a scalar, but its shape is {dims.fmt_shape(shape)}; "
                "reduce it with sum or mean",
            )
    wrt = H.graph.get("wrt")
    if wrt is None:
        wrt = [n for n in H if H.nodes[n][g.KIND] == g.PARAM]
    wrt = list(wrt)
    for w in wrt:
        if w not in H or H.nodes[w][g.KIND] not in (g.INPUT, g.PARAM):
            raise GradientError(f"wrt: {w!r} is not an input or param", source=src)
        if H.nodes[w][g.DTYPE] == "int64":
            raise _err(GradientError, H, w, "wrt: cannot differentiate an int64 input")
    if len(set(wrt)) != len(wrt):
        raise GradientError("wrt lists a name twice", source=src)
    H.graph["wrt"] = wrt
    H.graph["loss"] = loss
