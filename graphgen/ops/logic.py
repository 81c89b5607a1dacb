"""Masks and selection: the boolean side of exported transformers (issue 15).

graphgen computes in one float dtype, so a boolean tensor is a 0/1 *mask* of that dtype,
as the comparisons ``ge``, ``lt`` and ``eq`` already make. The ops here take and make
such masks (any nonzero entry reads as true):

- ``where(cond, a, b)``: ``a`` where ``cond`` is true, else ``b`` (ONNX ``Where``; an
  additive or ``-inf`` attention mask). Gradients flow to ``a`` and ``b``, none to
  ``cond``;
- ``is_nan(x)``: 1 where ``x`` is NaN (the guard exporters put after a softmax);
- ``logical_not``, ``logical_and``, ``logical_or``, ``logical_xor``: masks of masks;
- ``take(x, indices=..., axis=...)``: ``x`` at constant (N-D, repeated, negative)
  indices, the ONNX ``Gather`` of position ids or token-type zeros; its adjoint
  ``take_add`` adds each slice back where it was read from.

The ONNX comparisons map onto ``eq``, ``lt`` and ``ge`` with their arguments in either
order (``Greater(a, b)`` is ``lt(b, a)``, ``LessOrEqual(a, b)`` is ``ge(b, a)``).
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import (
    REQUIRED,
    Op,
    broadcast_rule,
    no_tangent,
    norm_axis,
    register,
    same_op,
    same_shape,
    tangent_terms,
)

_MASK_REASON = "a 0/1 mask: its derivative is 0 wherever it is defined"


def _mask(v, like):
    """A boolean array as a 0/1 array of ``like``'s float type."""
    return np.asarray(v).astype(np.result_type(like, np.float32))


def _where_vjp(b, c):
    cond = c.ins[0]
    # b.where is the builder's own field (the node whose rule runs): name the op
    return [None, b.node("where", cond, c.g, 0.0), b.node("where", cond, 0.0, c.g)]


def _where_jvp(b, c):
    cond = c.ins[0]
    return tangent_terms(
        c,
        lambda d: None,  # the condition is a mask: no tangent flows through it
        lambda d: b.node("where", cond, d, 0.0),
        lambda d: b.node("where", cond, 0.0, d),
    )


register(
    Op(
        name="where",
        args=("cond", "a", "b"),
        shape=broadcast_rule,
        impl=lambda cond, a, b: np.where(
            np.asarray(cond) != 0, a, np.asarray(b, dtype=np.result_type(a, b))
        ),
        vjp=_where_vjp,
        jvp=_where_jvp,
        math="{y} = {a} where {cond} ≠ 0, else {b}",
        derivs=(
            "none (a mask)",
            "{a}̄ = {y}̄ where {cond} ≠ 0, else 0",
            "{b}̄ = {y}̄ where {cond} = 0, else 0",
        ),
        domain=("mask", "real", "real"),
        category="binary",
    )
)

register(
    Op(
        name="is_nan",
        args=("x",),
        shape=same_shape,
        impl=lambda x: _mask(np.isnan(x), x),
        vjp=None,
        jvp=no_tangent,
        jvp_reason=_MASK_REASON,
        math="{y} = 1 if {x} is NaN else 0",
        derivs=("0",),
        category="unary",
        mask=True,
    )
)

register(
    Op(
        name="logical_not",
        args=("x",),
        shape=same_shape,
        impl=lambda x: _mask(np.asarray(x) == 0, x),
        vjp=None,
        jvp=no_tangent,
        jvp_reason=_MASK_REASON,
        math="{y} = 1 if {x} = 0 else 0",
        derivs=("0",),
        domain=("mask",),
        category="unary",
        mask=True,
    )
)

for _name, _fn, _math in [
    ("logical_and", np.logical_and, "and"),
    ("logical_or", np.logical_or, "or"),
    ("logical_xor", np.logical_xor, "xor"),
]:
    register(
        Op(
            name=_name,
            args=("a", "b"),
            shape=broadcast_rule,
            impl=lambda a, b, _fn=_fn: _mask(
                _fn(np.asarray(a) != 0, np.asarray(b) != 0), np.result_type(a, b)
            ),
            vjp=None,
            jvp=no_tangent,
            jvp_reason=_MASK_REASON,
            math="{y} = 1 if ({a} ≠ 0) " + _math + " ({b} ≠ 0) else 0",
            derivs=("0", "0"),
            domain=("mask", "mask"),
            category="binary",
            mask=True,
            commutative=True,
        )
    )


# ----------------------------------------------------- gathers at constant indices


def _norm_take(in_shapes, attrs):
    x = in_shapes[0]
    if not x:
        raise ShapeError("take needs an argument of rank >= 1, got a scalar")
    axis = norm_axis(attrs["axis"], len(x))
    size = x[axis]
    if not isinstance(size, int):
        raise ShapeError(f"take's axis {axis} has the symbolic size {size!r}")
    try:
        idx = np.asarray(attrs["indices"])
    except ValueError:
        idx = np.asarray([], dtype=object)
    if idx.dtype.kind not in "iu" and not (idx.dtype.kind == "f" and idx.size == 0):
        raise ShapeError(
            f"attribute indices must be (nested lists of) integers, got {attrs['indices']!r}"
        )
    idx = idx.astype(np.int64)
    if idx.size and not (-size <= idx.min() and idx.max() < size):
        raise ShapeError(
            f"indices {idx.tolist()} are out of range for an axis of size {size}"
        )
    out = {"axis": axis, "indices": (idx % max(size, 1)).tolist()}
    if "dim" in attrs:
        out["dim"] = size
    return out


def _take_shape(in_shapes, attrs):
    x, axis = in_shapes[0], attrs["axis"]
    return tuple(x[:axis]) + np.shape(attrs["indices"]) + tuple(x[axis + 1 :])


def _take_add_impl(g, indices, axis, dim):
    idx = np.asarray(indices, dtype=np.int64)
    n = idx.ndim
    out = np.zeros(g.shape[:axis] + (dim,) + g.shape[axis + n :], g.dtype)
    rows = g.reshape(g.shape[:axis] + (idx.size,) + g.shape[axis + n :])
    np.add.at(np.moveaxis(out, axis, 0), idx.reshape(-1), np.moveaxis(rows, axis, 0))
    return out


def _norm_take_add(in_shapes, attrs):
    g, axis = in_shapes[0], attrs["axis"]
    idx = np.asarray(attrs["indices"], dtype=np.int64)
    dim = attrs["dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
        raise ShapeError(f"attribute dim must be a size, got {dim!r}")
    if idx.size and not (-dim <= idx.min() and idx.max() < dim):
        raise ShapeError(f"indices {idx.tolist()} are out of range for {dim} entries")
    if (
        len(g) < idx.ndim
        or not isinstance(axis, int)
        or not 0 <= axis <= len(g) - idx.ndim
    ):
        raise ShapeError(f"axis {axis!r} does not fit g of rank {len(g)}")
    return {"indices": (idx % max(dim, 1)).tolist()}


def _take_add_shape(in_shapes, attrs):
    g, axis = in_shapes[0], attrs["axis"]
    n = np.ndim(attrs["indices"])
    return tuple(g[:axis]) + (attrs["dim"],) + tuple(g[axis + n :])


register(
    Op(
        name="take",
        args=("x",),
        shape=_take_shape,
        impl=lambda x, indices, axis: np.take(
            x, np.asarray(indices, np.int64), axis=axis
        ),
        vjp=lambda b, c: [
            b.take_add(
                c.g,
                indices=c.attrs["indices"],
                axis=c.attrs["axis"],
                dim=c.in_shapes[0][c.attrs["axis"]],
            )
        ],
        jvp=same_op("take"),  # linear
        math="{y}[…, j, …] = {x}[…, {indices}[j], …] (j at axis {axis}; constant "
        "indices)",
        derivs=(
            (
                "{x}̄ = take_add({y}̄): each slice of {y}̄ added where it was read from "
                "(repeated indices accumulate)"
            ),
        ),
        attrs={"indices": REQUIRED, "axis": 0},
        normalize=_norm_take,
        category="indexing",
    )
)

register(
    Op(
        name="take_add",
        args=("g",),
        shape=_take_add_shape,
        impl=_take_add_impl,
        vjp=lambda b, c: [
            b.take(c.g, indices=c.attrs["indices"], axis=c.attrs["axis"])
        ],
        jvp=same_op("take_add"),  # linear
        math="{y} = zeros with {dim} entries along axis {axis}, {g}'s slices added at "
        "{indices} (the adjoint of take)",
        derivs=("{g}̄ = take({y}̄, {indices}) along axis {axis}",),
        attrs={"indices": REQUIRED, "axis": REQUIRED, "dim": REQUIRED},
        normalize=_norm_take_add,
        internal=True,
        category="indexing",
    )
)
