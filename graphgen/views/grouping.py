"""Blocks of a big graph, for drawings that collapse them (one box or cluster per block).

:func:`blocks` splits a graph's nodes into balanced blocks, trying in order:

1. the ``group`` attribute of the spec's nodes;
2. name prefixes: the first ``/``-separated part of the names (``layer3/z``), after
   dropping a leading part that nearly every name shares (``gpu_0/``), and the layer
   token at the start of a name (``res4_4_branch2c_w_0`` -> ``res4_4``);
3. layer numbers at the end of names (``m7``, ``a7``, ``W7``, ``r7`` -> layer 7);
4. structural repetition: the schedule cut at its bottlenecks (a node every later node
   depends on only through it: the output of a residual block, of an inception module),
   merged into blocks of similar size; blocks with the same sequence of ops are counted
   as repeats.

A proposal counts only when it is balanced: at least :data:`MIN_BLOCKS` blocks, none
holding more than half the nodes, covering at least half of them, and blocks of more
than one node on average (a prefix that swallows everything, or one name per block, is
no grouping). Nodes a proposal leaves out (an op named ``r174``, a parameter without a
prefix) join the block of the nodes they are computed from or feed.

Backward nodes of a lowered graph go with the forward node whose backward step made them
(:func:`anchors`), so the adjoint view collapses into the same blocks as the forward one.

The result is a plain :class:`Grouping`; the diagram and the HTML page both draw from it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from .. import graph as g

__all__ = ["Block", "Grouping", "anchors", "blocks"]

MIN_BLOCKS = 3
MAX_BLOCKS = 64  # more blocks than this are merged, consecutive ones together


@dataclass(frozen=True)
class Block:
    """One block: a display name, its members in schedule order, and how many blocks
    (``repeats``) have the same sequence of ops (``signature``)."""

    name: str
    nodes: tuple
    signature: tuple = ()
    repeats: int = 1


@dataclass
class Grouping:
    """Blocks of a graph; ``how`` says what found them, ``note`` why none were found."""

    blocks: list = field(default_factory=list)
    how: str = ""
    note: str = ""

    def block_of(self):
        """Node -> index of its block (nodes in no block are absent)."""
        return {n: i for i, b in enumerate(self.blocks) for n in b.nodes}

    def __bool__(self):
        return bool(self.blocks)


_LEAD = re.compile(r"[A-Za-z]+_?\d+[A-Za-z]?(?:_\d+[A-Za-z]?)*(?=[_/.\-]|$)")
_TRAILING = re.compile(r"\D(\d+)$")
# one letter and a number (``r174``, ``m7``): an id an importer numbered, or a layer
# number (which :func:`_keys_layer` reads), not a block's name
_NUMBERED = re.compile(r"[A-Za-z]\d+")


def anchors(G, order=None):
    """Node -> the forward node it belongs with.

    A forward node is its own anchor. A backward node goes with the node whose
    backward step computed it: the op ``k`` of a term ``∂J/∂k·∂k/∂j``, the node ``j``
    of an adjoint ``∂J/∂j``; the helper nodes of a step (a transpose, ``1 − h²``) go
    with the backward node they feed. Numbers go with the node they feed.
    """
    order = g.schedule(G) if order is None else order
    anchor = {}
    pending = []
    for n in order:
        a = G.nodes[n]
        if a.get(g.ROLE) != g.BACKWARD:
            if a.get(g.KIND) != g.CONST or a.get(g.ROLE) == g.FORWARD:
                anchor[n] = n
            else:
                pending.append(n)
        elif g.CONTRIB in a and a[g.CONTRIB][0] in G:
            anchor[n] = a[g.CONTRIB][0]
        elif a.get(g.ADJOINT_OF) in G:
            anchor[n] = a[g.ADJOINT_OF]
        else:
            pending.append(n)
    # helpers take the anchor of the first backward node they feed (reverse order, so
    # a chain of helpers resolves in one sweep), else of what they are computed from
    for n in reversed(pending):
        for s in G.successors(n):
            if s in anchor:
                anchor[n] = anchor[s]
                break
    for n in pending:
        if n not in anchor:
            for p in g.operands(G, n) if G.nodes[n].get(g.KIND) == g.OPNODE else ():
                if p in anchor:
                    anchor[n] = anchor[p]
                    break
    return anchor


def _keys_group(G, nodes):
    return {n: str(G.nodes[n]["group"]) for n in nodes if G.nodes[n].get("group")}


def _common_lead(names):
    """The leading ``/``-parts that more than half the names share (``gpu_0/``)."""
    lead = ""
    while True:
        firsts = Counter(
            s[len(lead) :].split("/", 1)[0]
            for s in names
            if s.startswith(lead) and "/" in s[len(lead) :]
        )
        if not firsts:
            return lead
        part, count = firsts.most_common(1)[0]
        if count * 2 <= len(names):
            return lead
        lead += part + "/"


def _keys_prefix(G, nodes):
    names = {n: str(n) for n in nodes}
    lead = _common_lead(list(names.values()))
    keys = {}
    for n, s in names.items():
        s = s.removeprefix(lead)
        key = None
        if "/" in s.strip("/"):
            key = s.strip("/").split("/", 1)[0]
        else:
            m = _LEAD.match(s)
            if m:
                key = m.group(0)
        if key and not _NUMBERED.fullmatch(key):
            keys[n] = key
    return keys


def _keys_layer(G, nodes):
    keys = {}
    for n in nodes:
        m = _TRAILING.search(str(n))
        if m:
            keys[n] = f"layer {int(m.group(1))}"
    return keys


def _spread(G, nodes, keys, order):
    """Give the nodes without a key the key of the parameters and ops they are
    computed from (parameters first: they carry a layer's name), else of what they
    feed; returns a new dict."""
    keys = dict(keys)
    order = [n for n in order if n in nodes]
    for n in order:
        if n in keys or G.nodes[n].get(g.KIND) != g.OPNODE:
            continue
        preds = [p for p in g.operands(G, n) if p in keys]
        params = [p for p in preds if G.nodes[p].get(g.KIND) == g.PARAM]
        pick = params or preds
        if pick:
            keys[n] = keys[pick[-1]]
    for n in reversed(order):
        if n in keys:
            continue
        owners = [keys[s] for s in G.successors(n) if s in keys]
        if owners and G.nodes[n].get(g.KIND) != g.INPUT:
            keys[n] = owners[0]
    return keys


def _balanced(keys, total):
    if not keys:
        return False
    sizes = Counter(keys.values())
    covered = sum(sizes.values())
    return (
        len(sizes) >= MIN_BLOCKS
        and max(sizes.values()) * 2 <= total
        and covered * 2 >= total
        and covered >= 2 * len(sizes)
    )


def _bottlenecks(G, order):
    """The op nodes of ``order`` that no edge jumps over: everything after such a node
    depends on what came before only through it."""
    pos = {n: i for i, n in enumerate(order)}
    reach = -1  # the furthest position an edge from an earlier node reaches
    cuts = []
    for i, n in enumerate(order):
        if reach <= i and i > 0:
            cuts.append(i - 1)
        for s in G.successors(n):
            if s in pos:
                reach = max(reach, pos[s])
    return cuts


def _structure(G, nodes, order):
    """Blocks of op nodes between bottlenecks of the schedule, merged to similar size."""
    ops_order = [
        n
        for n in order
        if n in nodes
        and G.nodes[n].get(g.KIND) == g.OPNODE
        and G.nodes[n].get(g.ROLE, g.FORWARD) != g.BACKWARD
    ]
    if len(ops_order) < 2 * MIN_BLOCKS:
        return {}
    cuts = _bottlenecks(G, ops_order)
    segments, start = [], 0
    for c in cuts + [len(ops_order) - 1]:
        if c >= start:
            segments.append(ops_order[start : c + 1])
            start = c + 1
    # merge segments smaller than a target size into the next one
    target = max(3, len(ops_order) // MAX_BLOCKS)
    merged, cur = [], []
    for seg in segments:
        cur = cur + seg
        if len(cur) >= target:
            merged.append(cur)
            cur = []
    if cur:
        if merged:
            merged[-1] = merged[-1] + cur
        else:
            merged.append(cur)
    keys = {}
    for i, seg in enumerate(merged):
        for n in seg:
            keys[n] = i
    return keys


def _name_of(G, members, key):
    """A structural block's name: the name prefix most of its members share."""
    leads = Counter(_keys_prefix(G, members).values())
    if leads:
        return leads.most_common(1)[0][0]
    return f"block {key + 1}"


def _merge_runs(G, keys, order):
    """Merge consecutive blocks (by first appearance) so at most MAX_BLOCKS remain."""
    first = list(dict.fromkeys(keys[n] for n in order if n in keys))
    if len(first) <= MAX_BLOCKS:
        return keys, {k: str(k) for k in first}
    per = -(-len(first) // MAX_BLOCKS)
    run = {k: i // per for i, k in enumerate(first)}
    names = {}
    for i in range(0, len(first), per):
        chunk = first[i : i + per]
        names[i // per] = f"{chunk[0]} … {chunk[-1]}" if len(chunk) > 1 else chunk[0]
    return {n: run[k] for n, k in keys.items()}, names


def blocks(G, nodes=None):
    """Balanced blocks of ``G``'s nodes (all of them, or ``nodes``); see the module
    docstring for how they are found. Backward nodes go with their :func:`anchors`.

    Examples
    --------
    >>> from graphgen.frontends.spec import from_dict
    >>> from graphgen.views.grouping import blocks
    >>> spec = {"inputs": {"x": [2]}, "nodes": {}, "loss": "J"}
    >>> prev = "x"
    >>> for i in range(1, 5):
    ...     spec["nodes"][f"h{i}"] = {"op": "tanh", "args": [prev]}
    ...     spec["nodes"][f"r{i}"] = {"op": "add", "args": [f"h{i}", prev]}
    ...     prev = f"r{i}"
    >>> spec["nodes"]["J"] = {"op": "sum", "args": [prev]}
    >>> found = blocks(from_dict(spec))
    >>> found.how, [b.name for b in found.blocks]
    ('layer numbers', ['layer 1', 'layer 2', 'layer 3', 'layer 4'])
    """
    wanted = None if nodes is None else set(nodes)
    nodes = [n for n in G if wanted is None or n in wanted]
    schedule = g.schedule(G)
    anchor = anchors(G, schedule)
    forward = [n for n in nodes if anchor.get(n, n) == n]
    fset = set(forward)
    order = [n for n in schedule if n in fset]
    keys, how, structural = {}, "", False
    for how, find in (
        ("the 'group' attribute", _keys_group),
        ("name prefixes", _keys_prefix),
        ("layer numbers", _keys_layer),
    ):
        found = find(G, forward)
        # groups the spec declares are taken as they are; guesses must be balanced
        if found and find is _keys_group or _balanced(found, len(forward)):
            keys = _spread(G, fset, found, order)
            break
    else:
        found = _structure(G, fset, order)
        keys = _spread(G, fset, found, order) if found else {}
        how, structural = "the structure of the graph, cut at its bottlenecks", True
        if not _balanced(keys, len(forward)):
            return Grouping(
                note="no blocks found: no 'group' attributes, no name prefix or layer "
                "number splits the graph into balanced parts, and it has too few "
                "bottlenecks to cut it at"
            )
    keys, run_names = _merge_runs(G, keys, order)
    members = {}
    for n in nodes:
        k = keys.get(anchor.get(n, n))
        if k is not None:
            members.setdefault(k, []).append(n)
    sched = {n: i for i, n in enumerate(schedule)}

    def first_op(k):
        ops_at = [sched[n] for n in members[k] if G.nodes[n].get(g.KIND) == g.OPNODE]
        return min(ops_at or [sched[n] for n in members[k]])

    out = []
    # blocks in the order their computation starts; a lone node is no block
    declared = how == "the 'group' attribute"
    firsts = sorted(
        (k for k in members if declared or len(members[k]) > 1), key=first_op
    )
    for k in firsts:
        ns = tuple(sorted(members[k], key=sched.__getitem__))
        sig = tuple(
            G.nodes[n][g.OP]
            for n in ns
            if G.nodes[n].get(g.KIND) == g.OPNODE
            and G.nodes[n].get(g.ROLE, g.FORWARD) != g.BACKWARD
        )
        name = run_names.get(k, str(k))
        if structural:
            name = _name_of(G, [n for n in ns if n in fset], k)
        out.append(Block(name, ns, sig))
    counts = Counter(b.signature for b in out)
    out = [
        Block(b.name, b.nodes, b.signature, counts[b.signature] if b.signature else 1)
        for b in out
    ]
    # two blocks may end up with the same display name (structural names): number them
    seen = Counter(b.name for b in out)
    if any(c > 1 for c in seen.values()):
        idx = Counter()
        fixed = []
        for b in out:
            if seen[b.name] > 1:
                idx[b.name] += 1
                b = Block(f"{b.name} ({idx[b.name]})", b.nodes, b.signature, b.repeats)
            fixed.append(b)
        out = fixed
    return Grouping(out, how)
