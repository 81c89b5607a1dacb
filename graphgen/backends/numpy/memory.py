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
