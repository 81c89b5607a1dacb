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

import numpy as np

from .. import graph as g

# Ops whose NumPy result may share memory with an argument (or be read-only).
VIEW_OPS = {"broadcast_to", "reshape", "transpose", "slice"}


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


def accumulates_in_place(G, node, index, program, keep):
    """Whether ``add_n`` at ``program[index]`` may add into its first term's buffer."""
    a = G.nodes[node]
    if a.get(g.OP) != "add_n":
        return False
    args = g.operands(G, node)
    first = args[0]
    f = G.nodes[first]
    if f[g.KIND] != g.OPNODE or f[g.OP] in VIEW_OPS or first in keep:
        return False
    if args.count(first) != 1 and args != [first, first]:
        # add_n(t, u, t) and add_n(t, t, t): t would be read after it was overwritten
        return False
    if tuple(f[g.SHAPE]) != tuple(a[g.SHAPE]) or tuple(a[g.SHAPE]) == ():
        return False
    materialized = {n for n, _ in program}
    if first not in materialized:
        return False
    last = last_uses(program, keep)
    # a view of t (reshape, transpose, ...) shares t's buffer: it must not be read later
    for v in _views_of(G, first):
        if v in keep or (v in materialized and last.get(v, -1) > index):
            return False
    return last.get(first) == index


def _views_of(G, node):
    """Nodes whose value may share memory with ``node``'s (chains of view ops)."""
    out, stack = set(), [node]
    while stack:
        for s in G.successors(stack.pop()):
            if G.nodes[s].get(g.OP) in VIEW_OPS and s not in out:
                out.add(s)
                stack.append(s)
    return out


def nbytes(G, n, sizes):
    from ..check import concrete

    a = G.nodes[n]
    shape = concrete(a[g.SHAPE], sizes)
    itemsize = np.dtype(a[g.DTYPE]).itemsize
    return int(np.prod(shape, dtype=np.int64)) * itemsize


def peak_bytes(G, program, keep, sizes, inlined=()):
    """Predicted peak bytes of intermediates while the program runs.

    Arrays the caller passes in are not counted. Views cost nothing. A statement holds its
    inlined temporaries only while it runs.
    """
    drop = frees(program, keep)
    live, peak = 0, 0
    for i, (node, reads) in enumerate(program):
        a = G.nodes[node]
        own = 0 if a[g.OP] in VIEW_OPS else nbytes(G, node, sizes)
        transient = sum(nbytes(G, t, sizes) for t in inlined.get(node, ()))
        peak = max(peak, live + own + transient)
        live += own
        for v in drop[i]:
            if G.nodes[v].get(g.OP) not in VIEW_OPS:
                live -= nbytes(G, v, sizes)
    return peak


def saved_for_backward(G):
    """Forward values that backward nodes read: what the forward pass must keep."""
    saved = set()
    for n in G:
        if G.nodes[n].get(g.ROLE) != g.BACKWARD:
            continue
        for p in G.predecessors(n):
            if G.nodes[p].get(g.ROLE, g.FORWARD) == g.FORWARD and G.nodes[p][g.KIND] in (
                g.OPNODE,
                g.INPUT,
                g.PARAM,
            ):
                saved.add(p)
    return [n for n in g.schedule(G) if n in saved]
