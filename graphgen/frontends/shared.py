"""Stored weights that hold one value (issue 15): the copies an exporter makes of one
PyTorch parameter.

The TorchScript exporter stores a tied or transposed weight as a second initializer
(``Transpose(W)`` folded into ``onnx::MatMul_N``); the dynamo exporter folds a constant
lookup (``wpe(arange(T))``) into an initializer of the first ``T`` rows. graphgen trains
each initializer on its own, so to map a trained module back, the user needs to know
which ones are copies of one parameter: :func:`groups` finds them by value.

Candidates are bucketed by their first row (and, for a matrix, its first column, the
first row of its transpose), so whole arrays are compared only within a bucket: the
cost is linear in the bytes of the weights plus the comparisons of arrays that start
alike, and a ResNet's hundreds of weights cost one pass over them.
"""

from __future__ import annotations

import numpy as np


def _core(a):
    """``a`` without its leading axes of length 1 (an unsqueezed lookup), or None when
    it cannot tell one parameter from another: not float, one number, or one value
    throughout (a fresh bias of zeros, a LayerNorm scale of ones)."""
    a = np.asarray(a)
    if a.dtype.kind != "f" or a.size <= 1:
        return None
    while a.ndim > 1 and a.shape[0] == 1:
        a = a[0]
    if a.min() == a.max():
        return None
    return a


def _views(a):
    """``(view, transposed)``: the array and, for a matrix, its transpose."""
    return [(a, False)] + ([(a.T, True)] if a.ndim == 2 else [])


def _key(view):
    """What a view and every leading block of its rows share: the dtype, the shape
    of a row, and the first row's bytes (a vector is one row)."""
    row = view if view.ndim == 1 else view[0]
    return view.dtype.str, row.shape, row.tobytes()


def _holds(small, view):
    """How ``view`` holds ``small``: its number of leading rows, or None."""
    if small.ndim == view.ndim - 1:  # one row, its axis of length 1 dropped
        same = small.shape == view.shape[1:] and np.array_equal(small, view[0])
        return 1 if same else None
    if small.ndim != view.ndim:
        return None
    n = small.shape[0]
    if small.shape[1:] != view.shape[1:] or n > view.shape[0]:
        return None
    if small.ndim == 1 and n != view.shape[0]:
        return None  # a vector is one row: no leading block of it
    return n if np.array_equal(small, view[:n]) else None


def relation(a, b):
    """How array ``a`` holds array ``b``'s value, as text: ``"same"``,
    ``"transposed"``, ``"first N rows"`` (``"first row"``), ``"first N rows of the
    transpose"``; None
    when it does not (or either holds no telling value, see :func:`groups`).

    >>> w = np.arange(6.0).reshape(3, 2)
    >>> relation(w, w.T.copy()), relation(w, w[:2].copy())
    ('transposed', 'first 2 rows')
    """
    ca, cb = _core(a), _core(b)
    if ca is None or cb is None:
        return None
    for view, transposed in _views(ca):
        n = _holds(cb, view)
        if n is None:
            continue
        if n == view.shape[0]:
            return "transposed" if transposed else "same"
        rows = f"first {n} rows" if n > 1 else "first row"
        return rows + " of the transpose" * transposed
    return None


def groups(arrays):
    """The names of ``arrays`` (a dict) that hold one value, in groups.

    Two arrays are linked when they are equal, equal transposed, or one is a leading
    block of rows of the other (or of its transpose), after dropping leading axes of
    length 1. Arrays of one value throughout are left out: a fresh zero bias equals
    every other one without being the same parameter. Returns a list of groups in
    the order of ``arrays``; each group lists ``(name, how)`` pairs, first the largest
    array (``how`` is ``""``), then every other member with how the first holds it
    (:func:`relation`).

    >>> w = np.arange(6.0).reshape(3, 2)
    >>> groups({"W": w, "b": np.zeros(2), "Wt": w.T.copy(), "rows": w[None, :2]})
    [[('W', ''), ('Wt', 'transposed'), ('rows', 'first 2 rows')]]
    """
    names = list(arrays)
    core = {}
    buckets = {}
    for name in names:
        c = _core(arrays[name])
        if c is None:
            continue
        core[name] = c
        for view, _ in _views(c):
            buckets.setdefault(_key(view), []).append((name, view))
    parent = {}

    def find(x):
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for name, c in core.items():
        for other, view in buckets.get(_key(c), ()):
            if other != name and find(other) != find(name) and _holds(c, view):
                parent[find(name)] = find(other)
    members = {}
    for name in core:
        members.setdefault(find(name), []).append(name)
    out = []
    order = {n: i for i, n in enumerate(names)}
    for group in members.values():
        if len(group) < 2:
            continue
        group.sort(key=lambda n: (-core[n].size, order[n]))
        rows = [(group[0], "")]
        for k, name in enumerate(group[1:], 1):
            # the largest member holds it, or else (a block of a transpose's rows)
            # the first one that does
            for holder in group[:k]:
                how = relation(arrays[holder], arrays[name])
                if how:
                    break
            if holder != group[0] and how:
                how = f"{how} of {holder}"
            rows.append((name, how or "linked through others of the group"))
        out.append(rows)
    out.sort(key=lambda rows: order[rows[0][0]])
    return out


def describe(found):
    """Lines for ``graphgen import`` and ``--report``: one per group of
    :func:`groups`, the largest member first."""
    if not found:
        return []
    head = (
        f"initializers holding one value ({len(found)} group(s): one PyTorch "
        "parameter stored more than once; docs/onnx.md maps them back):"
    )
    lines = [head]
    for rows in found:
        lines.append(
            "  " + ", ".join(f"{name} ({how})" if how else name for name, how in rows)
        )
    return lines
