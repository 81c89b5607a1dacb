"""Fusion groups: which elementwise ops a loop-generating backend computes in one loop nest.

A group is a set of broadcasting elementwise op nodes (``Op.elementwise``) that all have the
same shape, the group's *domain*, plus *tails*: ``sum``, ``mean`` and ``sum_to_shape`` nodes
that reduce one member and are accumulated inside the same loop nest. Inputs of a group
broadcast into the domain (size-1 and missing axes index 0).

Groups are grown greedily in schedule order: a node joins the groups of its fusable
predecessors (merging them) when the result stays *schedulable*, i.e. the graph with every
group contracted to one node is still acyclic, and no member reads a tail of its own group
(a tail is only complete after the whole loop). That covers chains, trees, fan-out sums
(``add_n``) and the ``sum_to_shape`` reductions that follow them, in the forward and in the
backward pass alike.

This pass does not change the graph; it returns the partition.
"""

from __future__ import annotations

import dataclasses

from ... import graph as g
from ... import ops
from ..numpy.memory import RECOMPUTES

# The reductions a loop nest accumulates (its tails), each with its rule:
# ``axes(in_shape, attrs) -> (reduced axes, axes kept as size 1)`` and whether the sum
# is divided by the count afterwards.
TAILS = {}


@dataclasses.dataclass(frozen=True)
class Tail:
    axes: object
    mean: bool = False


def tail(*names, mean=False):
    """Register the decorated ``axes(in_shape, attrs)`` as the tail rule of ``names``."""

    def register(axes):
        for name in names:
            assert name in ops.REGISTRY, name
            TAILS[name] = Tail(axes, mean)
        return axes

    return register


@tail("sum")
@tail("mean", mean=True)
def _axis_reduction(in_shape, at):
    axes = set(at["axis"])
    return axes, (axes if at["keepdims"] else set())


@tail("sum_to_shape")
def _sum_to_shape(in_shape, at):  # the sum that undoes broadcasting
    lead, keep = ops.defs.sum_to_shape_axes(tuple(in_shape), tuple(at["shape"]))
    return set(lead) | set(keep), set(keep)


def reduced_axes(A, t, in_shape):
    """Tail ``t``'s reduced axes of ``in_shape`` and the axes it keeps as size 1."""
    return TAILS[A.nodes[t][g.OP]].axes(in_shape, A.nodes[t][g.ATTRS])


@dataclasses.dataclass
class Group:
    """One fused loop nest.

    ``members`` and ``tails`` are in schedule order; ``domain`` is the members' shape;
    ``outputs`` are the nodes whose values leave the loop (members read outside the group
    or returned, and every tail); ``inputs`` the external nodes the members read.
    """

    members: list
    tails: list
    domain: tuple
    outputs: list = dataclasses.field(default_factory=list)
    inputs: list = dataclasses.field(default_factory=list)

    @property
    def nodes(self):
        return self.members + self.tails


def fusable(A, n, exclude=()):
    """An elementwise op of rank >= 1 (scalar arithmetic is cheaper left to NumPy).

    An explicit broadcast (``Op.broadcasts``) counts too: in a loop nest it is just the
    index arithmetic every input gets anyway."""
    a = A.nodes[n]
    op = a.get(g.OP)
    return (
        a[g.KIND] == g.OPNODE
        and op not in exclude
        and (ops.get(op).elementwise or ops.get(op).broadcasts)
        and len(a[g.SHAPE]) >= 1
        and all(A.nodes[p][g.DTYPE] in g.FLOAT_DTYPES for p in g.operands(A, n))
    )


def tail_of(A, n):
    """The member a reduction ``n`` could be accumulated from, or None."""
    a = A.nodes[n]
    if a[g.KIND] != g.OPNODE or a[g.OP] not in TAILS:
        return None
    (p,) = g.operands(A, n)
    # A reduction that keeps an axis other than the last (a per-channel sum over
    # N, H, W) would accumulate into memory element by element inside the loop nest,
    # which does not vectorize; NumPy's pairwise reduction after the loop is faster.
    rank = len(A.nodes[p][g.SHAPE])
    reduced, _ = reduced_axes(A, n, A.nodes[p][g.SHAPE])
    if not set(range(rank)) - reduced <= {rank - 1}:
        return None
    return p


def find_groups(A, nodes, roots, min_size=1, exclude=()):
    """Partition the op nodes in ``nodes`` (a schedule of ``A``) into fusion groups.

    Parameters
    ----------
    A : networkx.DiGraph
        The lowered graph.
    nodes : list
        The op nodes one generated function computes, in schedule order.
    roots : iterable
        Nodes the function returns (always materialized).
    min_size : int
        Groups with fewer member + tail nodes are dropped (left to NumPy).
    exclude : collection of str
        Elementwise ops never to fuse (the Numba backend leaves transcendentals to NumPy's
        SIMD loops unless Numba has SVML).

    Returns
    -------
    list of Group
        In schedule order of their first node.
    """
    grouping = _Grouping(A, nodes, exclude)
    for n in grouping.order:
        grouping.add(n)
    return grouping.groups_of(set(roots), min_size)


class _Grouping:
    """Groups grown greedily in schedule order (see the module docstring)."""

    def __init__(self, A, nodes, exclude):
        self.A = A
        self.exclude = exclude
        self.order = list(nodes)
        self.index = {n: i for i, n in enumerate(self.order)}
        self.inside = set(self.order)
        self.gid = {}  # node -> group id
        self.groups = {}  # group id -> list of nodes
        self.is_tail = set()
        self.next_id = 0

    def unit(self, n):
        return ("g", self.gid[n]) if n in self.gid else ("n", n)

    def members_of(self, u):
        return self.groups[u[1]] if u[0] == "g" else [u[1]]

    def succ_units(self, u):
        out = set()
        for m in self.members_of(u):
            for s in self.A.successors(m):
                if s in self.inside:
                    out.add(self.unit(s))
        return out

    def acyclic_with(self, merged, limit):
        """Would contracting ``merged`` (a set of nodes) into one unit keep a DAG?"""
        A, index = self.A, self.index
        for m in merged:
            if any(p in self.is_tail and p in merged for p in A.predecessors(m)):
                return False  # a member would read a tail before the loop completes it
        start = set()
        for m in merged:
            for s in A.successors(m):
                if s in self.inside and s not in merged and index[s] <= limit:
                    start.add(self.unit(s))
        seen = set(start)
        stack = list(start)
        while stack:
            u = stack.pop()
            for m in self.members_of(u):
                if m in merged:
                    return False
            for v in self.succ_units(u):
                if v in seen:
                    continue
                if all(index[m] > limit for m in self.members_of(v)):
                    continue
                seen.add(v)
                stack.append(v)
        return True

    def candidates(self, n, tail_src):
        """The groups ``n`` could join, or None when it joins none and starts none."""
        A, gid = self.A, self.gid
        a = A.nodes[n]
        candidates = []
        if fusable(A, n, self.exclude):
            for p in g.operands(A, n):
                if (
                    p in gid
                    and p not in self.is_tail
                    and A.nodes[p][g.SHAPE] == a[g.SHAPE]
                ):
                    k = gid[p]
                    if k not in candidates:
                        candidates.append(k)
            # never read a tail of the group being joined
            tails_read = {gid[p] for p in g.operands(A, n) if p in self.is_tail}
            if RECOMPUTES in a:
                # a forward value recomputed for the backward pass is computed in a
                # backward loop: in the forward one it would be an output again, kept
                # until the backward reads it (what recomputing it avoids)
                tails_read |= {k for k in candidates if self.has_forward(k)}
            return [k for k in candidates if k not in tails_read]
        if tail_src is not None and tail_src in gid and tail_src not in self.is_tail:
            return [gid[tail_src]]
        return None

    def has_forward(self, k):
        """Whether group ``k`` computes a forward value."""
        nodes = self.A.nodes
        return any(
            nodes[m].get(g.ROLE, g.FORWARD) == g.FORWARD and RECOMPUTES not in nodes[m]
            for m in self.groups[k]
        )

    def add(self, n):
        """Put node ``n`` into a group: join (and merge) its predecessors' groups where
        the result stays schedulable, else start a group of its own."""
        tail_src = tail_of(self.A, n)
        candidates = self.candidates(n, tail_src)
        if candidates is None:
            return
        joined = None
        if candidates:
            options = [candidates] + (
                [[k] for k in candidates] if len(candidates) > 1 else []
            )
            for opt in options:
                merged = {n}
                for k in opt:
                    merged.update(self.groups[k])
                if self.acyclic_with(merged, self.index[n]):
                    joined = opt
                    break
        fusable_ = fusable(self.A, n, self.exclude)
        if joined is None:
            if tail_src is not None and not fusable_:
                return  # a reduction of something unfused stays NumPy
            self.groups[self.next_id] = [n]
            self.gid[n] = self.next_id
            self.next_id += 1
            return
        keep = joined[0]
        for k in joined[1:]:
            for m in self.groups.pop(k):
                self.gid[m] = keep
                self.groups[keep].append(m)
        self.groups[keep].append(n)
        self.gid[n] = keep
        if tail_src is not None and not fusable_:
            self.is_tail.add(n)

    def groups_of(self, roots, min_size):
        """The groups, each with its outputs and inputs, in schedule order."""
        A, index = self.A, self.index
        out = []
        for ns in self.groups.values():
            ns = sorted(ns, key=index.get)
            if len(ns) < min_size or all(ops.get(A.nodes[n][g.OP]).view for n in ns):
                continue  # a lone broadcast stays a NumPy view
            members = [n for n in ns if n not in self.is_tail]
            tails = [n for n in ns if n in self.is_tail]
            members_set = set(ns)
            outputs = [
                n
                for n in ns
                if n in self.is_tail
                or n in roots
                or any(
                    s in self.inside and s not in members_set for s in A.successors(n)
                )
            ]
            inputs = []
            for n in ns:
                for p in g.operands(A, n):
                    if (
                        p not in members_set
                        and p not in inputs
                        and A.nodes[p][g.KIND] != g.CONST
                    ):
                        inputs.append(p)
            domain = tuple(A.nodes[members[0]][g.SHAPE])
            out.append(Group(members, tails, domain, outputs, inputs))
        out.sort(key=lambda grp: index[grp.members[0]])
        return out
