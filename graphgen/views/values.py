"""The numbers behind diagrams and explanations: a reference interpreter that evaluates
every node of the compiler's graphs with the ops' NumPy ``impl``, and the generated
module's gradients to check those numbers against.
"""

from __future__ import annotations

import os

import networkx as nx
import numpy as np

from .. import dims, ops
from .. import graph as g
from ..errors import DiagramError

__all__ = [
    "Evaluated",
    "ModuleGradients",
    "adjoint_value",
    "evaluate",
    "load_arrays",
    "local_elementwise",
    "norm",
    "term_nodes",
    "term_value",
    "vjp_term",
]


# ------------------------------------------------------------------------ evaluation


def _sizes(A, arrays):
    """Concrete sizes of the symbolic dimensions, read off the given arrays."""
    sizes = {}
    for n, v in arrays.items():
        if n not in A:
            continue
        for d, k in zip(A.nodes[n][g.SHAPE], np.shape(v)):
            if isinstance(d, str) and dims.SYMBOL_RE.match(d):
                sizes.setdefault(d, int(k))
    return sizes


def _concrete_attr(v, sizes):
    def dim(d):
        if isinstance(d, str):
            try:
                return dims.value(d, sizes)
            except (KeyError, ValueError, SyntaxError):
                return d
        return d

    if isinstance(v, str):
        return dim(v)
    if isinstance(v, (list, tuple)) and any(isinstance(d, str) for d in v):
        return type(v)(dim(d) for d in v)
    return v


def evaluate(A, arrays, keep=None, norms=()):
    """Evaluate the nodes of a (forward or lowered) graph with the ops' NumPy ``impl``.

    Parameters
    ----------
    A : networkx.DiGraph
        A prepared graph, or the lowered graph of :func:`graphgen.api.lower`.
    arrays : dict
        An array for every input and param.
    keep : iterable, optional
        Evaluate only what these nodes and ``norms`` need (their ancestors), drop
        every other array after its last use, and return the arrays of these alone.
        Default: every node, every array returned.
    norms : iterable, optional
        Nodes whose Frobenius norm (:func:`norm`) is recorded as they are computed,
        in the result's ``norms`` (with ``keep``).

    Returns
    -------
    Evaluated
        Node id -> ``numpy.ndarray`` (forward values and, in a lowered graph, adjoints);
        its ``shapes`` hold the shape of every node evaluated, ``norms`` the norms asked
        for.

    Examples
    --------
    >>> import graphgen
    >>> from graphgen.check import random_arrays
    >>> from graphgen.api import lower
    >>> A = lower(graphgen.load("examples/tiny.yaml"))
    >>> v = evaluate(A, random_arrays(A))
    >>> v[A.graph["grads"]["W1"]].shape
    (2, 3)
    >>> lean = evaluate(A, random_arrays(A), keep=[], norms=[A.graph["loss"]])
    >>> len(lean), lean.norms[A.graph["loss"]] == norm(v[A.graph["loss"]])
    (0, True)
    """
    sizes = _sizes(A, arrays)
    want_norms = [n for n in dict.fromkeys(norms) if n in A]
    if keep is None:
        live, kept = None, None
    else:
        kept = {n for n in keep if n in A}
        targets = kept | set(want_norms)
        live = set(targets)
        for n in targets:
            live |= nx.ancestors(A, n)
    order = g.schedule(A, live)
    # the step after which no node still to be evaluated reads a value
    last = {}
    if kept is not None:
        for i, n in enumerate(order):
            for p in A.predecessors(n):
                last[p] = i
    free_at = {}
    for p, i in last.items():
        if p not in kept:
            free_at.setdefault(i, []).append(p)
    out = Evaluated()
    record = set(want_norms)
    for i, n in enumerate(order):
        a = A.nodes[n]
        kind = a[g.KIND]
        if kind == g.CONST:
            v = np.asarray(a[g.VALUE], dtype=np.float64)
        elif kind in (g.INPUT, g.PARAM):
            if n not in arrays:
                raise DiagramError(
                    f"no array given for {kind} {n!r}", source=g.source_of(A)
                )
            v = np.asarray(arrays[n])
        else:
            attrs = {k: _concrete_attr(x, sizes) for k, x in a[g.ATTRS].items()}
            args = [out[p] for p in g.operands(A, n)]
            with np.errstate(all="ignore"):
                v = np.asarray(ops.get(a[g.OP]).impl(*args, **attrs))
        out.shapes[n] = np.shape(v)
        if n in record:
            out.norms[n] = norm(v)
        if kept is None or n in kept or n in last:
            out[n] = v
        for p in free_at.pop(i, ()):
            del out[p]
    return out


class Evaluated(dict):
    """What :func:`evaluate` returns: node -> array, with ``shapes`` (every node
    evaluated) and ``norms`` (those asked for)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.shapes = {}
        self.norms = {}


def load_arrays(G, values=True, seed=0):
    """The arrays a ``values`` option asks for: random, a dict, or an ``.npz`` file."""
    from ..check import random_arrays

    arrays = random_arrays(G, seed=seed, dtype="float64")
    if isinstance(values, (str, os.PathLike)):
        try:
            with np.load(os.fspath(values)) as f:
                given = {k: f[k] for k in f.files}
        except (OSError, ValueError) as e:
            raise DiagramError(
                f"cannot read arrays from {os.fspath(values)!r}: {e}"
            ) from None
    elif isinstance(values, dict):
        given = dict(values)
    else:
        given = {}
    unknown = sorted(set(given) - set(arrays))
    if unknown:
        raise DiagramError(
            f"arrays for unknown inputs/params: {', '.join(map(repr, unknown))} "
            f"(expected some of {', '.join(map(repr, arrays))})",
            source=g.source_of(G),
        )
    arrays.update(given)
    return arrays


def norm(v) -> float:
    """The Frobenius norm of an array, as a float."""
    return float(np.linalg.norm(np.asarray(v, dtype=np.float64).reshape(-1)))


def adjoint_value(A, values, j, shape=None):
    """The value of ∂J/∂j in the lowered graph ``A`` (None when not computed)."""
    v = (A.graph.get("adjoints") or {}).get(j)
    if v is None or v not in values:
        return None
    out = values[v]
    if shape is not None and np.shape(out) != tuple(shape):
        out = np.broadcast_to(out, shape)
    return out


def term_nodes(A, values, j, k):
    """The nodes whose sum is the term ∂J/∂k · ∂k/∂j (None when not computed)."""
    adj = (A.graph.get("adjoints") or {}).get(j)
    if adj is None or adj not in values:
        return None
    a = A.nodes[adj]
    if g.SUMS in a and k in a[g.SUMS]:
        terms = g.operands(A, adj)
        if len(terms) == len(a[g.SUMS]):
            return [t for t, s in zip(terms, a[g.SUMS]) if s == k]
    if g.SUMS in a:
        return None
    return [adj]


def term_value(A, values, j, k):
    """The term ∂J/∂k · ∂k/∂j that flows from successor ``k`` back to ``j``."""
    nodes = term_nodes(A, values, j, k)
    if nodes is None:
        return None
    parts = [values[t] for t in nodes]
    return sum(parts[1:], parts[0])


def local_elementwise(H, values, j, k):
    """∂k/∂j elementwise (for an elementwise op), by applying k's VJP rule to ones."""
    total = vjp_term(H, values, j, k, np.ones_like(values[k], dtype=np.float64))
    return np.broadcast_to(total, np.shape(values[k]))


def vjp_term(H, values, j, k, kbar):
    """What ``k``'s VJP rule sends back to its argument ``j`` for the adjoint ``kbar``
    of ``k`` (summed over the positions where ``j`` feeds ``k``; None where it sends
    nothing), evaluated on a scratch graph of ``k`` alone."""
    from ..passes.adjoint import Builder

    S = nx.DiGraph()
    S.graph.update(dtype="float64", name="scratch", source=g.source_of(H))
    ins = g.operands(H, k)
    for p in list(dict.fromkeys(ins)) + [k, "__g"]:
        src = k if p == "__g" else p
        S.add_node(
            p,
            **{
                g.KIND: g.INPUT,
                g.SHAPE: H.nodes[src][g.SHAPE],
                g.DTYPE: "float64",
                g.ROLE: g.FORWARD,
                g.SEQ: g.next_seq(S),
            },
        )
    a = H.nodes[k]
    S.nodes[k][g.OP] = a[g.OP]
    b = Builder(S)
    b.where = k
    ctx = ops.VJPContext(
        ins=ins,
        out=k,
        g="__g",
        attrs=a[g.ATTRS],
        in_shapes=[H.nodes[p][g.SHAPE] for p in ins],
        out_shape=a[g.SHAPE],
    )
    cts = ops.get(a[g.OP]).vjp(b, ctx)
    arrays = {p: values[p] for p in set(ins) | {k}}
    arrays["__g"] = np.asarray(kbar, dtype=np.float64)
    vals = evaluate(S, arrays)
    parts = [
        vals[ct] if ct in vals else arrays[ct]
        for i, ct in enumerate(cts)
        if ins[i] == j and ct is not None
    ]
    return sum(parts[1:], parts[0]) if parts else None


# ---------------------------------------------------------------- the generated module


def _feed(H, arrays):
    return {
        n: arrays[n]
        for n in H
        if H.nodes[n][g.KIND] in (g.INPUT, g.PARAM) and n in arrays
    }


def _module(H):
    from ..api import compile as compile_module

    if H.graph.get("cotangents"):  # a vjp graph: its loss over cotangent inputs
        H = H.copy()
        del H.graph["cotangents"]
        H.graph.pop("vjp", None)
    return compile_module(H, dtype="float64")


def _cut(H, n):
    """``H`` with node ``n`` turned into an input (its inputs cut), differentiated
    with respect to ``n`` alone: its gradient is the reverse-mode adjoint of ``n``."""
    C = H.copy()
    C.remove_edges_from(list(C.in_edges(n)))
    a = C.nodes[n]
    for key in (g.OP, g.ATTRS, "group"):
        a.pop(key, None)
    a[g.KIND] = g.INPUT
    a[g.DTYPE] = "float64"
    C.graph["wrt"] = [n]
    return C


def _probed(H, nodes):
    """``H`` with a zero input ``probe`` added to each of ``nodes``: every consumer of
    ``n`` reads ``n + probe`` instead, so the module's gradient with respect to the probe
    is the reverse-mode adjoint ∂J/∂n, for all of ``nodes`` from one module and one
    call. Returns the graph and ``{n: probe}``."""
    from ..passes.adjoint import Builder

    P = H.copy()
    P.graph["wrt"] = list(P.graph.get("wrt") or [])
    b = Builder(P)
    probes = {}
    for n in nodes:
        outs = list(P.out_edges(n, data=True))
        probe = g.fresh_id(P, f"probe/{n}")
        P.add_node(
            probe,
            **{
                g.KIND: g.INPUT,
                g.SHAPE: P.nodes[n][g.SHAPE],
                g.DTYPE: "float64",
                g.ROLE: g.FORWARD,
                g.SEQ: g.next_seq(P),
            },
        )
        b.where = n
        s = b.add(n, probe)
        P.nodes[s][g.ROLE] = g.FORWARD
        P.nodes[s].pop(g.PASS, None)
        for _, k, data in outs:
            P.remove_edge(n, k)
            P.add_edge(s, k, **data)
        P.graph["wrt"].append(probe)
        probes[n] = probe
    return P, probes


class ModuleGradients:
    """∂J/∂n from a generated module: ``n`` itself, or the adjoint of an inner node
    (:meth:`prefetch` gets many at once; one at a time, ``n`` is cut loose as an
    input)."""

    def __init__(self, H, arrays, vals, inner=(), shapes=None, wrt=None):
        """``inner``: nodes whose adjoints will be asked for, all computed by the one
        module compiled here (with a zero probe added to each, see :func:`_probed`).
        ``shapes``: the shapes of values, where ``vals`` need not hold them. ``wrt``:
        the only inputs and params whose gradients will be asked for (default: all of
        ``H``'s), so that the module computes no other."""
        self.H, self.arrays, self.vals = H, arrays, vals
        self.cut = {}
        if wrt is not None:
            own = H.graph.get("wrt") or []
            wrt = [w for w in own if w in set(wrt)]
            if wrt != own:
                H = H.copy()
                H.graph["wrt"] = wrt
        todo = [
            n
            for n in dict.fromkeys(inner)
            if n in H
            and n != H.graph.get("loss")
            and H.nodes[n][g.KIND] == g.OPNODE
            and n not in (H.graph.get("wrt") or [])
        ]
        P, probes = _probed(H, todo) if todo else (H, {})
        if not P.graph.get("wrt"):  # nothing to differentiate: take every gradient
            P = P.copy()
            P.graph["wrt"] = list(self.H.graph.get("wrt") or [])
        feed = _feed(H, arrays)
        for n, probe in probes.items():
            shape = (shapes or {}).get(n)
            shape = np.shape(vals[n]) if shape is None else shape
            feed[probe] = np.zeros(shape, dtype=np.float64)
        self.loss, grads = _module(P).value_and_grad(**feed)
        for n, probe in probes.items():
            self.cut[n] = grads.pop(probe)
        self.grads = grads

    def __call__(self, n):
        if n in self.grads:
            return self.grads[n]
        if n not in self.cut:
            C = _cut(self.H, n)
            feed = {
                **_feed(C, self.arrays),
                n: np.array(self.vals[n], dtype=np.float64),
            }
            self.cut[n] = _module(C).value_and_grad(**feed)[1][n]
        return self.cut[n]
