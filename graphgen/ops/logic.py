"""Masks and selection: the boolean side of exported transformers (issue 15).

graphgen computes in one float dtype, so a boolean tensor is a 0/1 *mask* of that dtype,
as the comparisons ``ge``, ``lt`` and ``eq`` already make. The ops here take and make
such masks (any nonzero entry reads as true):

- ``where(cond, a, b)``: ``a`` where ``cond`` is true, else ``b`` (ONNX ``Where``; an
  additive or ``-inf`` attention mask). Gradients flow to ``a`` and ``b``, none to
  ``cond``;
- ``is_nan(x)``: 1 where ``x`` is NaN (the guard exporters put after a softmax);
- ``logical_not``, ``logical_and``, ``logical_or``, ``logical_xor``: masks of masks.

The ONNX comparisons map onto ``eq``, ``lt`` and ``ge`` with their arguments in either
order (``Greater(a, b)`` is ``lt(b, a)``, ``LessOrEqual(a, b)`` is ``ge(b, a)``).
"""

from __future__ import annotations

import numpy as np

from .base import (
    Op,
    broadcast_rule,
    no_tangent,
    register,
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
