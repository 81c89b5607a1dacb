"""Attribute conventions of graphgen's NetworkX graphs, and small helpers to read them.

A graphgen graph is a ``networkx.DiGraph``. Each node id is a string (the spec name).

Node attributes (keys are the constants below):

``kind``
    ``"input"`` (fed at call time), ``"param"`` (trainable), ``"const"`` (a number) or
    ``"op"`` (computed).
``op``
    For ``kind == "op"``: the registered op name, e.g. ``"matmul"``.
``attrs``
    For ``kind == "op"``: a dict of the op's attributes (``{"axis": 1}``).
``shape``
    A tuple of dimensions, each an ``int`` or a symbolic name such as ``"batch"``
    (filled in by shape inference for op nodes).
``dtype``
    ``"float64"``, ``"float32"`` or (inputs only) ``"int64"``.
``value``
    For ``kind == "const"``: the number.
``init``
    For ``kind == "param"``: ``"zeros"``, ``"ones"``, ``"normal"`` or ``"glorot_uniform"``.

Edge attribute ``pos``: a tuple of the argument positions at which the source feeds the
target. ``mul(x, x)`` is one edge ``x -> y`` with ``pos == (0, 1)``; argument order is
exact, so ``sub(a, b)`` and ``sub(b, a)`` differ.

Graph attributes (``G.graph``): ``name``, ``dtype``, ``outputs`` (list of node ids),
``loss`` (node id or None), ``wrt`` (list of node ids), ``source`` (the spec file, used in
error messages), ``order`` (the spec's node order, used to break ties deterministically).

The adjoint pass adds nodes with ``role == "backward"`` (forward nodes have
``role == "forward"``) and these extra attributes: ``adjoint_of`` (the forward node whose
adjoint this node is), ``sums`` (for a fan-out ``add_n``: the forward successors whose
contributions it adds), ``contrib`` (for one contribution: ``(successor, input)``), and
``note`` (the local derivative, see :func:`graphgen.ops.format_note`). ``G.graph["grads"]``
maps each ``wrt`` node to the node holding its gradient (None when the loss does not depend
on it).
"""

from __future__ import annotations

import contextlib
import gc
import weakref

KIND = "kind"
OP = "op"
ATTRS = "attrs"
SHAPE = "shape"
DTYPE = "dtype"
VALUE = "value"
INIT = "init"
POS = "pos"
ROLE = "role"
SEQ = "seq"  # creation counter: the deterministic tie-break of every schedule
ADJOINT_OF = "adjoint_of"
SUMS = "sums"
CONTRIB = "contrib"
NOTE = "note"
JOINED = "joined"  # on a sum over successors that optimize.concat_slices made a concat
LINE = "line"
PASS = "pass"  # which adjoint pass made a backward node (0 first, 1 when differentiated again)
# forward mode (passes/forward.py): the node whose tangent this node is, and for a tangent
# add_n, the predecessors (arguments) whose contributions it sums
TANGENT_OF = "tangent_of"
FSUMS = "fsums"
# forward mode: True on every node the forward-mode pass made (its code names are the
# tangents' ``k_dot``, the rest are temporaries), and for one term of a tangent, the node
# ``k`` whose tangent it is part of, the argument ``j`` it flows from and ``j``'s tangent
DOT = "dot"
FCONTRIB = "fcontrib"

INPUT, PARAM, CONST, OPNODE = "input", "param", "const", "op"
FORWARD, BACKWARD = "forward", "backward"
FLOAT_DTYPES = ("float64", "float32")


def operands(G, n):
    """The argument node ids of ``n``, in argument order (a node may appear twice)."""
    pred = G._pred[n]  # {argument: edge attributes}, without networkx's views
    if len(pred) == 1:
        for p, e in pred.items():
            return [p] * len(e[POS])
    if len(pred) == 2:  # most binary ops: two arguments, one position each
        (p, e), (q, f) = pred.items()
        i, j = e[POS], f[POS]
        if len(i) == 1 and len(j) == 1:
            return [p, q] if i[0] < j[0] else [q, p]
    args = [(i, p) for p, e in pred.items() for i in e[POS]]
    args.sort()  # positions are distinct: node ids are never compared
    return [p for _, p in args]


def node_dicts(G):
    """``{node: its attribute dict}``: ``G.nodes[n]`` without the view, whose per-call
    cost adds up on the hot paths of a big graph's compile (millions of reads)."""
    return G._node


def add_edge_arg(G, src, dst, position):
    """Record that ``src`` is argument ``position`` of ``dst``.

    Each call copies the positions ``src`` already has at ``dst``: to give a node many
    arguments at once (a spec's ``add_n`` of thousands), use :func:`add_args`, which
    costs one step per argument however often a name repeats.
    """
    e = G._succ[src].get(dst) if src in G._succ else None
    if e is not None:
        e[POS] = tuple(sorted(e[POS] + (position,)))
    else:
        G.add_edge(src, dst, **{POS: (position,)})


def add_args(G, dst, args, start=0):
    """Record that ``args[i]`` is argument ``start + i`` of ``dst``, for every ``i``.

    The same as :func:`add_edge_arg` for each argument in turn (edges are added in the
    order their sources first appear), in time linear in ``len(args)``.
    """
    positions = {}
    for i, src in enumerate(args, start):
        positions.setdefault(src, []).append(i)
    for src, pos in positions.items():
        e = G._succ[src].get(dst) if src in G._succ else None
        if e is not None:
            e[POS] = tuple(sorted(e[POS] + tuple(pos)))
        else:
            G.add_edge(src, dst, **{POS: tuple(pos)})


def next_seq(G):
    """A fresh creation counter value for ``G``."""
    seq = G.graph.get("_seq", 0)
    G.graph["_seq"] = seq + 1
    return seq


class FreshNames:
    """Fresh names: ``base`` if ``taken`` lacks it, else ``base<sep>k`` for the smallest
    ``k >= 2`` that ``taken`` lacks. ``taken`` is anything that answers ``in`` (a graph, a
    set, a dict) and is read at each call; the caller adds the name it uses.

    Per base, a counter remembers where the last search ended, so a run of names costs
    O(1) each instead of a scan from 2 every time. The names are those of that scan as
    long as ``taken`` only grows: a name removed from it is not handed out again.
    """

    def __init__(self, taken, sep="#"):
        self.taken = taken
        self.sep = sep
        self.counters = {}

    def __call__(self, base):
        return _fresh(self.taken, base, self.counters, self.sep)


def _fresh(taken, base, counters, sep):
    if base not in taken:
        return base
    k = counters.get(base, 2)
    while f"{base}{sep}{k}" in taken:
        k += 1
    counters[base] = k  # not k + 1: the caller may not use the name
    return f"{base}{sep}{k}"


# graph -> {base: counter} for fresh_id. Kept beside the graph, not in G.graph: a copy
# starts afresh (G.copy() would share the dict, and a pass that removes nodes from a
# copy would leave gaps that a stale counter skips). The weak keys let graphs go.
_COUNTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fresh_id(G, base):
    """A node id starting with ``base`` that ``G`` does not use yet: ``base``, else
    ``base#2``, ``base#3``, ... (the first free one). O(1) per call on average for the
    nodes a pass adds to ``G``; see :class:`FreshNames`."""
    counters = _COUNTERS.get(G)
    if counters is None:
        counters = _COUNTERS[G] = {}
    return _fresh(G, base, counters, "#")


def schedule(G, nodes=None):
    """Nodes in a deterministic topological order (creation order breaks ties).

    The lexicographic topological order by ``seq`` (``networkx.
    lexicographical_topological_sort`` with that key gives the same list), of ``nodes``
    alone when given (the order of the subgraph they induce).

    When every edge goes from a smaller ``seq`` to a larger one (a spec whose nodes read
    earlier names, and every node a pass adds after its arguments), that order is the
    nodes sorted by ``seq``: one sort and one look at each edge. Otherwise one heap over
    the adjacency dicts: O((n + e) log n), without building a subgraph view, whose
    filtered adjacency costs a scan per step.
    """
    pred, attrs = G._pred, G._node
    if nodes is None:
        seq = {n: a[SEQ] for n, a in attrs.items()}
    else:
        members = nodes if isinstance(nodes, (set, frozenset, dict)) else set(nodes)
        seq = {n: a[SEQ] for n, a in attrs.items() if n in members}  # G's node order
    for v, s in seq.items():
        for u in pred[v]:
            t = seq.get(u)
            if t is not None and t >= s:
                return _heap_schedule(G, seq)
    # sorted() is stable: equal seqs keep G's node order, the heap's tie-break
    return sorted(seq, key=seq.__getitem__)


def _heap_schedule(G, seq):
    """:func:`schedule` of the nodes of ``seq`` ({node: seq}, in G's node order)."""
    import heapq

    pred, succ = G._pred, G._succ
    indegree = {n: sum(1 for p in pred[n] if p in seq) for n in seq}
    index = {n: i for i, n in enumerate(seq)}  # networkx's tie-break
    heap = [(seq[n], index[n], n) for n, d in indegree.items() if d == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        n = heapq.heappop(heap)[2]
        order.append(n)
        for s in succ[n]:
            if s in indegree:
                indegree[s] -= 1
                if indegree[s] == 0:
                    heapq.heappush(heap, (seq[s], index[s], s))
    if len(order) != len(indegree):
        import networkx as nx

        raise nx.NetworkXUnfeasible("the graph has a cycle")
    return order


def copy(G):
    """``G.copy()``: the same graph, each attribute dict copied one level as networkx
    copies them, and every dict in the same order (nodes, successors, predecessors),
    built straight into the adjacency dicts without networkx's per-node and per-edge
    bookkeeping (a third of a pass's time on a big graph)."""
    H = G.__class__()
    H.graph.update(G.graph)
    H._node.update((n, d.copy()) for n, d in G._node.items())
    succ, pred = H._succ, H._pred
    for n in G._node:
        succ[n] = {}
        pred[n] = {}
    for u, nbrs in G._succ.items():  # networkx adds the edges in this order
        su = succ[u]
        for v, d in nbrs.items():
            su[v] = pred[v][u] = d.copy()
    return H


def source_of(G):
    return G.graph.get("source") or "<graph>"


def reach(G, starts, backward=True):
    """``starts`` and every node they are computed from (``backward``) or feed into.

    One traversal for all starts: asking networkx for each start's ancestors separately
    costs a pass over the graph per start (thousands, for a big model's gradients).
    """
    step = G._pred if backward else G._succ  # the adjacency dicts, without views
    seen = set(starts)
    stack = list(seen)
    while stack:
        for p in step[stack.pop()]:
            if p not in seen:
                seen.add(p)
                stack.append(p)
    return seen


@contextlib.contextmanager
def paused_gc():
    """No cyclic garbage collection while the compiler builds big structures that all
    stay alive until it is done (a spec's parsed tree, the lowered graph, a module's
    statements): the collector would walk them again and again, a sixth of a
    100,000-node compile. What the compiler makes goes by reference counting; the few
    cycles (networkx's cached views, recursive closures) wait for the next collection
    (``codegen.render.check_module`` runs one before compiling a big module)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
