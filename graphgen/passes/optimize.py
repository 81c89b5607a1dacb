"""Optimization passes over the combined forward + backward graph.

Each pass is a free function ``G -> G`` that returns a new graph. :func:`optimize` runs
them to a fixed point and records op counts per pass in ``graph["pass_stats"]``.

Nodes the caller can see are never removed: inputs, params, outputs and the loss. Gradient
results may move to an equivalent node; ``graph["grads"]`` follows them.
"""

from __future__ import annotations

import json

import numpy as np

from .. import graph as g
from .. import ops

LABELS = (g.ADJOINT_OF, g.SUMS, g.CONTRIB, g.NOTE)


def _protected(G):
    keep = {n for n, a in g.node_dicts(G).items() if a[g.KIND] in (g.INPUT, g.PARAM)}
    keep |= set(G.graph.get("outputs") or [])
    if G.graph.get("loss") is not None:
        keep.add(G.graph["loss"])
    return keep


def _roots(G):
    roots = set(G.graph.get("outputs") or [])
    if G.graph.get("loss") is not None:
        roots.add(G.graph["loss"])
    roots |= {v for v in (G.graph.get("grads") or {}).values() if v is not None}
    return roots


class _Changes:
    """What one run of a pass changed, for :func:`_settled`: the nodes whose arguments
    it rewired (``touched``), and whether CSE kept a protected node that computes what
    an earlier node computes (``kept_duplicate``)."""

    def __init__(self):
        self.touched = set()
        self.kept_duplicate = False


def _replace(G, old, new, merged, changes=None):
    """Route every use of ``old`` to ``new``, delete ``old`` and note it in ``merged``.

    The tables and labels that name ``old`` follow in one sweep over the graph for the
    whole pass (:func:`_follow_merges`): rewriting them per replacement cost a pass over
    the graph for each of the thousands a large graph has.
    """
    if changes is not None:
        changes.touched.update(G._succ[old])
    for s, e in list(G._succ[old].items()):
        for i in e[g.POS]:
            g.add_edge_arg(G, new, s, i)
    nodes = g.node_dicts(G)
    a_old, a_new = nodes[old], nodes[new]
    if a_new.get(g.ROLE) == g.BACKWARD and g.ADJOINT_OF not in a_new:
        for key in LABELS:
            if key in a_old and key not in a_new:
                a_new[key] = a_old[key]
    G.remove_node(old)
    merged[old] = new


def _follow_merges(G, merged):
    """After a pass's merges ``merged`` (old -> new, possibly chained): the tables that
    name nodes (``grads``, ``adjoints``, each adjoint pass's) and the labels of backward
    nodes (which name the forward nodes they came through) name the survivors."""
    if not merged:
        return

    def final(k):
        while k in merged:
            k = merged[k]
        return k

    for key in ("grads", "adjoints"):
        table = G.graph.get(key)
        if table:
            G.graph[key] = {w: final(v) for w, v in table.items()}
    if G.graph.get("passes"):  # new dicts: the input graph's must not change
        G.graph["passes"] = [
            {**p, "adjoints": {w: final(v) for w, v in p["adjoints"].items()}}
            for p in G.graph["passes"]
        ]
    for a in g.node_dicts(G).values():
        note = a.get(g.NOTE)
        if note and any(v in merged for v in note[1].values()):
            a[g.NOTE] = (note[0], {k: final(v) for k, v in note[1].items()}, note[2])
        if g.SUMS in a and any(k in merged for k in a[g.SUMS]):
            a[g.SUMS] = [final(k) for k in a[g.SUMS]]
        if g.CONTRIB in a and any(k in merged for k in a[g.CONTRIB]):
            a[g.CONTRIB] = tuple(final(k) for k in a[g.CONTRIB])
        # forward mode's labels (passes/forward.py)
        if g.FSUMS in a and any(k in merged for k in a[g.FSUMS]):
            a[g.FSUMS] = [final(k) for k in a[g.FSUMS]]
        if g.FCONTRIB in a and any(k in merged for k in a[g.FCONTRIB]):
            a[g.FCONTRIB] = tuple(final(k) for k in a[g.FCONTRIB])
        if a.get(g.TANGENT_OF) in merged:
            a[g.TANGENT_OF] = final(a[g.TANGENT_OF])


def _const_value(G, n):
    a = g.node_dicts(G)[n]
    return a[g.VALUE] if a[g.KIND] == g.CONST else None


def fold_constants(G):
    """Evaluate scalar op nodes whose arguments are all constants."""
    return _fold_constants(G.copy())


def _fold_constants(H):
    nodes = g.node_dicts(H)
    if not _may_fold(H, nodes):
        return H  # no schedule to walk
    for n in g.schedule(H):
        a = nodes[n]
        if a[g.KIND] != g.OPNODE or tuple(a[g.SHAPE]) != ():
            continue
        args = g.operands(H, n)
        if any(nodes[p][g.KIND] != g.CONST for p in args):
            continue
        op = ops.get(a[g.OP])
        if not op.can_fold(a[g.ATTRS]):
            continue
        with np.errstate(all="ignore"):
            value = op.impl(
                *[np.float64(nodes[p][g.VALUE]) for p in args], **a[g.ATTRS]
            )
        value = float(np.asarray(value))  # inf and nan too: layout.literal spells them
        for p in dict.fromkeys(args):  # add_n(c, c) is one edge
            H.remove_edge(p, n)
        a[g.KIND] = g.CONST
        a[g.VALUE] = value
        del a[g.OP]
        del a[g.ATTRS]
    return H


def _may_fold(H, nodes):
    """Whether some scalar op node reads only constants and scalar op nodes: one that
    does not cannot become a constant, as folding makes constants only of those."""
    for n, a in nodes.items():
        if (
            a[g.KIND] == g.OPNODE
            and tuple(a[g.SHAPE]) == ()
            and all(
                nodes[p][g.KIND] == g.CONST
                or nodes[p][g.KIND] == g.OPNODE
                and tuple(nodes[p][g.SHAPE]) == ()
                for p in H._pred[n]
            )
        ):
            return True
    return False


class _Site:
    """One op node as the ops' identity rules see it (``Op.identities``)."""

    def __init__(self, G, n):
        a = g.node_dicts(G)[n]
        self.G = G
        self.op, self.attrs, self.shape = a[g.OP], a[g.ATTRS], tuple(a[g.SHAPE])
        self.args = g.operands(G, n)

    def same(self, p):
        return tuple(g.node_dicts(self.G)[p][g.SHAPE]) == self.shape

    def const(self, p):
        return _const_value(self.G, p)

    def op_of(self, p):
        return g.node_dicts(self.G)[p].get(g.OP)

    def args_of(self, p):
        return g.operands(self.G, p)


def _simplify_one(G, n):
    """The node ``n`` can be replaced by, or None: the first of its op's identities
    that holds."""
    a = g.node_dicts(G)[n]
    if a[g.KIND] != g.OPNODE:
        return None
    rules = ops.get(a[g.OP]).identities
    site = _Site(G, n) if rules else None
    for rule in rules:
        new = rule(site)
        if new is not None:
            return new
    return None


def _set_arg(G, n, i, old, new):
    """Make ``new`` argument ``i`` of ``n`` in place of ``old``."""
    e = G._succ[old][n]
    pos = tuple(p for p in e[g.POS] if p != i)
    if pos:
        e[g.POS] = pos
    else:
        G.remove_edge(old, n)
    g.add_edge_arg(G, new, n, i)


def _drop_broadcasts(G, n, changes=None):
    """An elementwise op broadcasts by itself: ``mul(broadcast_to(v), x)`` -> ``mul(v, x)``.

    One sweep over the arguments, each dropping the broadcasts it stands on while the
    result keeps its shape. (Restarting from the first argument after each change, as
    this once did, finds the same ones: an argument refused stays refused when another
    gets a smaller shape, as every argument broadcasts to the result's shape.)
    """
    nodes = g.node_dicts(G)
    a = nodes[n]
    if a[g.KIND] != g.OPNODE or not ops.get(a[g.OP]).elementwise:
        return
    args = g.operands(G, n)
    shapes = [nodes[q][g.SHAPE] for q in args]
    target = tuple(a[g.SHAPE])
    for i in range(len(args)):
        while True:
            p = args[i]
            op = nodes[p].get(g.OP)
            if op is None or not ops.get(op).broadcasts:
                break
            v = g.operands(G, p)[0]
            old, shapes[i] = shapes[i], nodes[v][g.SHAPE]
            if ops.broadcast_shapes(*shapes) != target:
                shapes[i] = old
                break
            _set_arg(G, n, i, p, v)
            args[i] = v
            if changes is not None:
                changes.touched.add(n)


def _drops_a_broadcast(G, n):
    """Whether :func:`_drop_broadcasts` would change ``n``: its first step for some
    argument holds (a refused step ends that argument's sweep, the shapes unchanged)."""
    nodes = g.node_dicts(G)
    a = nodes[n]
    if a[g.KIND] != g.OPNODE or not ops.get(a[g.OP]).elementwise:
        return False
    args = g.operands(G, n)
    shapes = [nodes[q][g.SHAPE] for q in args]
    target = tuple(a[g.SHAPE])
    for i, p in enumerate(args):
        op = nodes[p].get(g.OP)
        if op is None or not ops.get(op).broadcasts:
            continue
        v = g.operands(G, p)[0]
        if ops.broadcast_shapes(*shapes[:i], nodes[v][g.SHAPE], *shapes[i + 1 :]) == (
            target
        ):
            return True
    return False


def simplify(G):
    """Algebraic identities, each declared on its op (``Op.identities``: x·1, 1·x, x+0,
    x−0, x/1, −(−x), one-term add_n, no-op reshapes, ...), and explicit broadcasts that an
    elementwise consumer would do anyway (``Op.broadcasts``)."""
    return _simplify(G.copy())


def _simplify(H, changes=None):
    keep = _protected(H)
    merged = {}
    for n in g.schedule(H):
        if n not in H:
            continue
        _drop_broadcasts(H, n, changes)
        if n in keep:
            continue
        new = _simplify_one(H, n)
        if new is not None:
            _replace(H, n, new, merged, changes)
    _follow_merges(H, merged)
    return H


def _key(G, n):
    nodes = g.node_dicts(G)
    a = nodes[n]
    if a[g.KIND] == g.CONST:
        return ("const", a[g.VALUE], a[g.DTYPE])
    if a[g.KIND] != g.OPNODE:
        return None
    args = g.operands(G, n)
    if ops.get(a[g.OP]).commutative:
        args = sorted(args, key=lambda p: nodes[p][g.SEQ])
    attrs = a[g.ATTRS]  # most ops have none: json.dumps({}) is "{}"
    text = json.dumps(attrs, sort_keys=True, default=str) if attrs else "{}"
    return (a[g.OP], text, tuple(args))


def cse(G):
    """Common-subexpression elimination: merge nodes computing the same op on the same args."""
    return _cse(G.copy())


def _cse(H, changes=None):
    keep = _protected(H)
    seen, merged = {}, {}
    for n in g.schedule(H):
        key = _key(H, n)
        if key is None:
            continue
        if key in seen and n not in keep:
            _replace(H, n, seen[key], merged, changes)
        elif key in seen:
            if changes is not None:
                changes.kept_duplicate = True
        else:
            seen[key] = n
    _follow_merges(H, merged)
    return H


def dce(G):
    """Dead-code elimination: drop nodes that no output, loss or gradient needs."""
    return _dce(G.copy())


def _dce(H):
    live = set(_protected(H)) | g.reach(H, list(_roots(H)))
    H.remove_nodes_from([n for n in list(H) if n not in live])
    if H.graph.get("adjoints"):
        H.graph["adjoints"] = {j: v for j, v in H.graph["adjoints"].items() if v in H}
    H.graph["passes"] = [
        {**p, "adjoints": {j: v for j, v in p["adjoints"].items() if v in H}}
        for p in H.graph.get("passes") or []
    ]
    return H


# (name, the pass, the same pass working on a graph it may change)
PASSES = (
    ("constant folding", fold_constants, _fold_constants),
    ("algebraic simplification", simplify, _simplify),
    ("common subexpressions", cse, _cse),
    ("dead code", dce, _dce),
)


def count_ops(G):
    return sum(1 for a in g.node_dicts(G).values() if a[g.KIND] == g.OPNODE)


def optimize(G, max_rounds=10, *, copy=True):
    """Run every pass to a fixed point. Returns a new graph with ``graph["pass_stats"]``.

    ``pass_stats`` is a list of ``(pass name, op count before its first run, op count
    after removing everything it removed over all rounds)``, in pass order.

    A round that changes nothing ends the loop. When what a round changed shows that
    the next round would change nothing (:func:`_settled`), that round is not run: the
    same graph, in about half the time on a big graph, where the rounds after the
    first almost never find anything. ``copy=False`` works on ``G`` itself (for a
    caller that owns it, ``api.lower``).
    """
    H = g.copy(G) if copy else G  # one copy: the passes then work on it in place
    before = {}
    removed = {name: 0 for name, *_ in PASSES}
    ops_now = count_ops(H)
    for _ in range(max_rounds):
        size = (H.number_of_nodes(), H.number_of_edges())
        changes = {}
        for name, _, in_place in PASSES:
            before.setdefault(name, ops_now)
            if in_place in (_simplify, _cse):
                changes[name] = _Changes()
                H = in_place(H, changes[name])
            else:
                H = in_place(H)
            n1 = count_ops(H)
            removed[name] += ops_now - n1
            ops_now = n1
        if (H.number_of_nodes(), H.number_of_edges()) == size:
            break
        if _settled(
            H, changes["algebraic simplification"], changes["common subexpressions"]
        ):
            break  # the next round would change nothing, so it would end the loop
    H.graph["pass_stats"] = [
        (name, before[name], before[name] - removed[name]) for name, *_ in PASSES
    ]
    # once, at the fixed point: no other pass rewrites a concat back into a sum
    H.graph["pass_stats"].append(("slices joined", ops_now, ops_now - concat_slices(H)))
    return H


def concat_slices(H):
    """A sum over successors whose terms are the slices of a split, each placed in
    zeros (``unslice``), side by side along one axis and covering it, is their
    concatenation: ``add_n(unslice(q̄), unslice(k̄), unslice(v̄))`` ->
    ``concat(q̄, k̄, v̄)``: one pass writing the result instead of three arrays of
    zeros and a sum of three (a transformer's q/k/v split, in every layer's backward
    pass). The sum node stays (its labels, its comment); its terms' unslices go.
    Rewrites ``H`` in place; returns the number of ops removed."""
    nodes = g.node_dicts(H)
    keep = _protected(H)
    removed = 0
    sums = [n for n, a in nodes.items() if a.get(g.OP) and ops.get(a[g.OP]).sums]
    for n in sums:
        a = nodes[n]
        terms = g.operands(H, n)
        pieces, join = [], None
        for i, p in enumerate(terms):
            b = nodes[p]
            joins = ops.get(b[g.OP]).joins if b.get(g.OP) else ""
            if not joins or join not in (None, joins):
                break
            join = joins
            if p in keep or len(H._succ[p]) != 1:
                break
            at = b[g.ATTRS]
            if at["step"] != 1 or H._succ[p][n][g.POS] != (i,):
                break
            pieces.append((at["start"], at["stop"], i, p))
        else:
            first = nodes[terms[0]][g.ATTRS]
            axis, shape = first["axis"], list(first["shape"])
            same = all(
                nodes[p][g.ATTRS]["axis"] == axis
                and list(nodes[p][g.ATTRS]["shape"]) == shape
                for _, _, _, p in pieces
            )
            ints = all(isinstance(x, int) for s, e, _, _ in pieces for x in (s, e))
            if not same or not ints:
                continue
            pieces.sort(key=lambda t: t[0])
            ends = [0] + [stop for _, stop, _, _ in pieces]
            if [start for start, *_ in pieces] != ends[:-1] or ends[-1] != shape[axis]:
                continue  # gaps or overlaps: the sum stays
            parts = [g.operands(H, p)[0] for _, _, _, p in pieces]
            H.remove_nodes_from([p for _, _, _, p in pieces])
            g.add_args(H, n, parts)
            a[g.OP], a[g.ATTRS], a[g.JOINED] = join, {"axis": axis}, True
            if g.SUMS in a and len(a[g.SUMS]) == len(pieces):
                a[g.SUMS] = [a[g.SUMS][i] for _, _, i, _ in pieces]
            removed += len(pieces)
    return removed


def _settled(H, simplified, merged):
    """Whether one more round of :data:`PASSES` would leave ``H`` as it is, given what
    the round just run changed (``simplified``, ``merged``: :class:`_Changes` of its
    simplification and CSE).

    Each pass visits the nodes in topological order, and what it does at a node
    depends on the node, its arguments and their arguments, which are all final by
    then; so a pass leaves nothing for a second run of itself, except where a later
    pass of the round rewired arguments:

    - folding: only a node whose arguments were rewired after folding ran (by
      simplification or CSE) can have become foldable;
    - simplification: only a node CSE rewired, or one reading such a node (identities
      and dropped broadcasts look at arguments' arguments);
    - CSE: left nothing unless it kept a protected duplicate (the schedule of the next
      round may then put the protected node first, and merge the other into it);
    - dead code: a graph with no dead node has none after a round that changes nothing.
    """
    if merged.kept_duplicate:
        return False
    nodes = g.node_dicts(H)
    for n in simplified.touched | merged.touched:
        a = nodes.get(n)
        if a is not None and a[g.KIND] == g.OPNODE and tuple(a[g.SHAPE]) == ():
            args = g.operands(H, n)
            if all(nodes[p][g.KIND] == g.CONST for p in args) and ops.get(
                a[g.OP]
            ).can_fold(a[g.ATTRS]):
                return False
    readers = set(merged.touched)
    for n in merged.touched:
        if n in nodes:
            readers.update(H._succ[n])
    keep = _protected(H) if readers else set()
    for n in readers:
        if n not in nodes:
            continue
        if _drops_a_broadcast(H, n):
            return False
        if n not in keep and _simplify_one(H, n) is not None:
            return False
    return True


def reuse_inner(G, copy=True):
    """Ops that compute an inner value their VJP builds as well (``Op.splits``: fused
    attention computes the probabilities P that its backward pass needs) are rewritten
    as the outer op on the node the VJP built: P is computed once, in the forward pass,
    and kept for the backward pass, instead of computed inside the fused op, dropped,
    and computed again. That node becomes part of the forward pass.

    ``copy=False`` rewrites ``G`` itself (for a caller that owns it).
    """
    H = g.copy(G) if copy else G
    merged = {}
    # the ops to rewrite, in the order of their ids (most graphs have none)
    splits = [
        n
        for n, a in g.node_dicts(H).items()
        if a[g.KIND] == g.OPNODE and ops.get(a[g.OP]).splits
    ]
    for n in sorted(splits, key=str):
        a = H.nodes.get(n)
        if a is None or a[g.KIND] != g.OPNODE or not ops.get(a[g.OP]).splits:
            continue
        inner, outer, inner_args, outer_args = ops.get(a[g.OP]).splits
        args = g.operands(H, n)
        want = [args[i] for i in inner_args]
        for d in sorted(H.successors(want[0]), key=str):
            b = H.nodes[d]
            if (
                b.get(g.OP) == inner
                and g.operands(H, d) == want
                and b.get(g.ATTRS) == a.get(g.ATTRS)
            ):
                # the kept value is named after the op that now reads it: att/probs
                kept = g.fresh_id(H, f"{n}/{inner.split('_')[-1]}")
                attrs = {k: v for k, v in b.items() if k not in LABELS}
                H.add_node(kept, **{**attrs, g.ROLE: a.get(g.ROLE, g.FORWARD)})
                g.add_args(H, kept, want)
                _replace(H, d, kept, merged)
                H.remove_edges_from([(p, n) for p in set(args)])
                g.add_args(H, n, [kept] + [args[j] for j in outer_args])
                a[g.OP], a[g.ATTRS] = outer, {}
                break
    _follow_merges(H, merged)
    return H
