"""Memory planning over a scheduled program: liveness, frees, in-place accumulation.

A *program* here is the list of materialized nodes of one generated function, in order,
each with the values its statement reads (its operands, looking through temporaries that
were inlined into it). From that:

- :func:`last_uses` finds where each value is read for the last time, so the generated
  code can drop it (``del``) right there. Forward values the backward pass needs therefore
  live exactly as long as it needs them, and nothing else survives the forward pass.
- :func:`accumulates_in_place` decides whether a fan-out sum ``add_n(t1, t2, ...)`` can
  accumulate into its first term's buffer (``v_bar = t1; v_bar += t2; ...``) instead of
  allocating a fresh array.
- :func:`recompute_in_backward` copies cheap elementwise forward values into the backward
  pass (recomputed from values it keeps anyway, right before their first backward read)
  instead of keeping them alive between the passes, and :func:`place_recomputed` puts
  each copy in the schedule where it is first read.
- :func:`peak_bytes` replays the program with concrete sizes to predict its peak memory.
"""

from __future__ import annotations

import math

import numpy as np

from ... import dims, ops
from ... import graph as g


def is_view(a) -> bool:
    """Whether node attributes ``a`` are an op whose NumPy result may share memory with
    its argument (or be read-only): ``reshape``, ``transpose``, ..."""
    return a.get(g.KIND) == g.OPNODE and ops.get(a[g.OP]).view


def has_ufunc(a) -> bool:
    """Whether one NumPy ufunc computes the op, so that it can write into a buffer."""
    return a.get(g.KIND) == g.OPNODE and bool(ops.get(a[g.OP]).ufunc)


def kept_by_module(a) -> bool:
    """Whether the op's result is an array the module keeps (a view, or one of its
    constants): never a buffer to write into."""
    return is_view(a) or ops.get(a[g.OP]).kept


def last_uses(program, keep):
    """``{value: index of the statement that reads it last}`` for values not in ``keep``."""
    last = {}
    for i, (node, reads) in enumerate(program):
        for v in reads:
            last[v] = i
    produced = {node for node, _ in program}
    return {v: i for v, i in last.items() if v in produced and v not in keep}


def frees(program, keep):
    """Per statement, the values to drop after it (in program order)."""
    last = last_uses(program, keep)
    out = [[] for _ in program]
    order = {node: i for i, (node, _) in enumerate(program)}
    for v, i in sorted(last.items(), key=lambda vi: order[vi[0]]):
        out[i].append(v)
    # a value nobody reads (should not survive DCE, but be safe) dies where it is made
    read = {v for _, reads in program for v in reads}
    for i, (node, _) in enumerate(program):
        if node not in read and node not in keep:
            out[i].append(node)
    return out


# Writing into an existing buffer saves an allocation but costs a keyword argument and,
# for a chain, a statement: worth it only for arrays with at least this many elements
# per unit of every symbolic size (tiny per-row arrays are dominated by call overhead).
MIN_INPLACE_ELEMENTS = 64


def big_enough(shape):
    """Whether in-place work pays for arrays of ``shape`` (symbolic sizes count as 1)."""
    # math.prod, not np.prod: the same number without an array per call
    return math.prod(d for d in shape if isinstance(d, int)) >= MIN_INPLACE_ELEMENTS


# A forward value the backward pass reads is recomputed there, rather than kept, when it
# is at most this many elementwise ufunc calls away from values kept anyway (GELU's tanh
# form is 9: x², x³, ·c, +x, ·√(2/π), tanh, 1+, ·x, ·½). Values further down a long
# chain of elementwise ops (tanh(tanh(...))) are all kept, as before: recomputing them
# would add up to a second forward pass of the chain, traded for memory the issue that
# asked for this (a transformer's GELU) did not need.
RECOMPUTE_DEPTH = 10

# on a copy made by :func:`recompute_in_backward`: the forward value it recomputes
RECOMPUTES = "recomputes"


def recompute_in_backward(G, early=False):
    """``G -> G``: each forward value that the backward pass reads and that a few
    elementwise ufuncs compute from values kept anyway gets a copy in the backward
    pass (role backward, attribute :data:`RECOMPUTES`), read by the backward nodes
    instead of the forward value, which then dies in the forward pass.

    PyTorch's GELU keeps its input and recomputes its tanh in the backward; an exported
    model's GELU is nine ops whose intermediates (x², tanh, 1 + tanh, the result) would
    otherwise all live from the forward pass to the backward pass. A copy computes the
    same ops on the same values, so results are unchanged bit for bit. Values smaller
    than :data:`MIN_INPLACE_ELEMENTS` per unit of the symbolic sizes are kept (there
    the extra calls cost more than the memory is worth).

    ``early=True`` (the Numba backend): an elementwise backward node computed from
    forward values alone counts as a forward one, as Numba's fused forward loops compute
    it (relu's mask ``a > 0`` beside ``max(a, 0)``): its operands are then not kept
    for it, and a value computed from them is not recomputed (that would keep them).
    """
    nodes = g.node_dicts(G)
    order = g.schedule(G)
    loss = G.graph.get("loss")
    soon = set()  # backward nodes computed in the forward pass (early=True)

    def forward_op(n):
        a = nodes[n]
        return a[g.KIND] == g.OPNODE and (
            a.get(g.ROLE, g.FORWARD) == g.FORWARD or n in soon
        )

    if early:
        for n in order:
            a = nodes[n]
            if (
                a[g.KIND] == g.OPNODE
                and a.get(g.ROLE) == g.BACKWARD
                and ops.get(a[g.OP]).elementwise
                and all(
                    forward_op(p) or nodes[p][g.KIND] != g.OPNODE for p in G._pred[n]
                )
            ):
                soon.add(n)
    readers = {}  # forward value -> the backward nodes that read it
    for n in order:
        a = nodes[n]
        if a[g.KIND] != g.OPNODE or a.get(g.ROLE) != g.BACKWARD or n in soon:
            continue
        for p in G._pred[n]:
            if forward_op(p) and not nodes[p].get(g.DOT):
                readers.setdefault(p, []).append(n)
    if not readers:
        return G
    # ufunc calls from values kept anyway (0: kept, or not an op); None: not available
    # in the backward pass without keeping something it does not keep now; inf: too
    # far down an elementwise chain (kept when the backward reads it, and never a
    # start for recomputing what follows)
    depth = {}
    for n in order:
        if not forward_op(n):
            continue
        a = nodes[n]
        o = ops.get(a[g.OP])
        d = None
        if (
            o.elementwise
            and o.ufunc
            and not kept_by_module(a)
            and not a.get(g.DOT)
            and n != loss
            and a[g.DTYPE] in g.FLOAT_DTYPES
            and big_enough(a[g.SHAPE])
        ):
            ds = [depth.get(p) if forward_op(p) else 0 for p in G._pred[n]]
            if all(x is not None for x in ds):
                d = 1 + max(ds, default=0)
        if d is not None and d > RECOMPUTE_DEPTH:
            depth[n] = math.inf
            continue
        depth[n] = 0 if d is None and n in readers else d
    copied = {}

    def copy_of(v):
        # a value kept anyway is read as it is; the others are recomputed
        if not forward_op(v) or depth[v] == 0:
            return v
        if v not in copied:
            H.add_node(
                (RECOMPUTES, v),
                **{
                    **nodes[v],
                    # v's own place in the schedule's tie-break: the nodes around
                    # keep their order (place_recomputed then moves the copy)
                    g.ROLE: g.BACKWARD,
                    RECOMPUTES: v,
                },
            )
            copied[v] = (RECOMPUTES, v)
            for p, e in G._pred[v].items():
                H.add_edge(copy_of(p), copied[v], **e)
        return copied[v]

    H = None
    for v in (v for v in order if v in readers):
        if not depth.get(v) or depth[v] > RECOMPUTE_DEPTH:
            continue  # kept
        if H is None:
            H = G.copy()
        c = copy_of(v)
        for r in readers[v]:
            e = H.edges[v, r]
            H.remove_edge(v, r)
            H.add_edge(c, r, **e)
    return G if H is None else H


def place_recomputed(G, order):
    """``order`` with each copy of :func:`recompute_in_backward`, and each backward node
    computed from such copies and forward values alone (``1 − tanh²`` of a recomputed
    tanh), moved right before the first node that reads it: otherwise the schedule,
    which runs a node as soon as its arguments are ready, would recompute every layer's
    values at the start of the backward pass and keep them all."""
    nodes = g.node_dicts(G)
    at = {n: i for i, n in enumerate(order)}
    late = set()  # the copies and what is computed from them and forward values alone
    for n in order:
        a = nodes[n]
        if RECOMPUTES in a:
            late.add(n)
        elif a.get(g.ROLE) == g.BACKWARD:
            args = [p for p in G._pred[n] if nodes[p][g.KIND] == g.OPNODE]
            if any(p in late for p in args) and all(
                p in late or nodes[p].get(g.ROLE, g.FORWARD) == g.FORWARD for p in args
            ):
                late.add(n)
    if not late:
        return order
    placed, out = set(), []

    def place(n):
        for p in sorted((p for p in G._pred[n] if p in late), key=at.get):
            if p not in placed:
                place(p)
        placed.add(n)
        out.append(n)

    for n in order:
        if n in placed:
            continue
        if n in late and any(r in at for r in G._succ[n]):
            continue  # placed before its first reader
        place(n)
    return out


def plan_buffers(G, program, keep):
    """Per statement: ``("acc", t)``, ``("out", p)`` or None.

    ``("acc", t)``: a fan-out ``add_n`` that adds into its first term ``t``'s buffer.
    ``("out", p)``: a ufunc that writes its result into operand ``p``'s buffer.
    A buffer is reused only at the last read of every value sharing it: the value itself,
    views of it (reshape, transpose, ...) and values earlier written into it.
    """
    last = last_uses(program, keep)
    index = {n: i for i, (n, _) in enumerate(program)}
    # value -> the value whose buffer it lives in (at the end of its chain of owners:
    # an owner's base is final when a value takes its buffer, so one lookup, not a walk
    # along a chain that grows with every statement of a long add chain)
    base_of = {}

    def base(n):
        return base_of.get(n, n)

    # per buffer, over the values living in it: the last statement that reads one of
    # them, and whether one is kept (updated as values join: no scan of them per read)
    last_read, kept = {}, set()

    nodes = g.node_dicts(G)

    def free_at(p, i):
        a = nodes[p]
        if a[g.KIND] != g.OPNODE or kept_by_module(a) or p not in index:
            return False
        b = base(p)
        if b not in last_read:  # a buffer of one value so far: b itself
            return b not in keep and last.get(b, -1) <= i
        return b not in kept and last_read[b] <= i

    def join(b, v):
        if b not in last_read:  # the buffer's first value is b itself
            last_read[b] = last.get(b, -1)
            if b in keep:
                kept.add(b)
        last_read[b] = max(last_read[b], last.get(v, -1))
        if v in keep:
            kept.add(b)

    plan = []
    for i, (n, _) in enumerate(program):
        a = nodes[n]
        choice = None
        args = g.operands(G, n)
        shape = tuple(a[g.SHAPE])
        if shape != ():
            fits = [
                p for p in args if tuple(nodes[p][g.SHAPE]) == shape and free_at(p, i)
            ]
            if (
                ops.get(a[g.OP]).sums
                and fits
                and args[0] == fits[0]
                and (args.count(args[0]) == 1 or args == [args[0], args[0]])
            ):
                choice = (
                    "acc",
                    args[0],
                )  # add_n(t, u, t) would read t after writing it
            elif has_ufunc(a) and fits and big_enough(shape):
                # prefer a temporary's buffer: the code then reads as one value updated
                fits.sort(key=lambda p: nodes[p].get(g.ROLE) != g.BACKWARD)
                choice = ("out", fits[0])
        if choice is not None:
            base_of[n] = base(choice[1])
        elif is_view(a) and args:
            base_of[n] = base(args[0])
        join(base(n), n)
        plan.append(choice)
    return plan


def nbytes(G, n, sizes):
    a = G.nodes[n]
    shape = dims.concrete(a[g.SHAPE], sizes)
    itemsize = np.dtype(a[g.DTYPE]).itemsize
    return int(np.prod(shape, dtype=np.int64)) * itemsize


def peak_bytes(G, program, keep, sizes, inlined=()):
    """Predicted peak bytes of intermediates while the program runs.

    Arrays the caller passes in are not counted. Views cost nothing. A statement holds its
    inlined temporaries only while it runs.
    """
    return peak_with_updates(G, program, keep, sizes, inlined or {}, {}, 0)


def saved_for_backward(G):
    """Forward values that backward nodes read: what the forward pass must keep."""
    saved = set()
    for n in G:
        if G.nodes[n].get(g.ROLE) != g.BACKWARD:
            continue
        for p in G.predecessors(n):
            if G.nodes[p].get(g.ROLE, g.FORWARD) == g.FORWARD and G.nodes[p][
                g.KIND
            ] in (
                g.OPNODE,
                g.INPUT,
                g.PARAM,
            ):
                saved.add(p)
    return [n for n in g.schedule(G) if n in saved]


def peak_with_updates(G, program, keep, sizes, inlined, updates, temps):
    """Predicted peak bytes of ``train_step`` (of the program alone, :func:`peak_bytes`,
    without ``updates``): the program of ``value_and_grad`` with
    each param's update run right after statement ``i`` (``updates``: ``{i: [(param,
    gradient node)]}``, ``-1``: before the first), holding ``temps`` param-sized
    temporaries while it runs (the NumPy helper's), and then dropping its gradient."""
    drop = frees(program, keep)
    produced = {n for n, _ in program}
    left = {}  # gradient -> updates still to read it
    for ups in updates.values():
        for _, v in ups:
            left[v] = left.get(v, 0) + 1
    live, peak = 0, 0

    def run_updates(i):
        nonlocal live, peak
        for w, v in updates.get(i, ()):
            peak = max(peak, live + temps * nbytes(G, w, sizes))
            left[v] -= 1
            if left[v] == 0 and v in produced and not is_view(G.nodes[v]):
                live -= nbytes(G, v, sizes)

    run_updates(-1)
    for i, (node, _) in enumerate(program):
        a = G.nodes[node]
        own = 0 if is_view(a) else nbytes(G, node, sizes)
        transient = sum(nbytes(G, t, sizes) for t in inlined.get(node, ()))
        peak = max(peak, live + own + transient)
        live += own
        for v in drop[i]:
            if not is_view(G.nodes[v]):
                live -= nbytes(G, v, sizes)
        run_updates(i)
    return peak


def peak_separate_update(G, program, keep, sizes, inlined, grads, temps):
    """Predicted peak bytes of ``value_and_grad`` followed by a separate update of
    each param (``grads``: ``[(param, gradient node)]``): every gradient is alive when
    the first update runs."""
    produced = {n for n, _ in program}
    held = sum(
        nbytes(G, v, sizes)
        for v in {v for _, v in grads}
        if v in produced and not is_view(G.nodes[v])
    )
    biggest = max((nbytes(G, w, sizes) for w, _ in grads), default=0)
    return max(peak_bytes(G, program, keep, sizes, inlined), held + temps * biggest)
