"""The op registry: one op, one declaration.

Each :class:`Op` holds everything graphgen knows about an op in one place: its arguments and
attributes with defaults, the shape rule, a NumPy reference implementation (used for
constant folding and as a test oracle), the VJP rule, and the math it computes. The code a
backend emits for an op is a macro of the same name in ``templates/<backend>/ops.j2``.

A VJP rule receives a builder ``b`` and a :class:`VJPContext` and returns one cotangent node
per argument (or None where no gradient flows). It builds ordinary registered ops through
``b`` (``b.mul(g, y)``, ``b.const(2.0)``), so the backward pass is just more graph.
Broadcasting is undone centrally by the adjoint pass, which appends one ``sum_to_shape``
node wherever a contribution is larger than its argument.

A JVP rule (forward mode) receives the builder and a :class:`JVPContext` and returns one
tangent contribution per argument, ``∂y/∂arg · arg``'s tangent (None where no tangent
flows in); the forward-mode pass broadcasts a smaller contribution to the output's shape
with one ``broadcast_to`` and sums them. ``jvp_reason`` says why an op has no rule.

:mod:`graphgen.ops.base` holds :class:`Op`, the registry and the helpers; the op families
import from it, and this package re-exports it and imports the families.
"""

from __future__ import annotations

from .base import (
    HELPERS,
    REGISTRY,
    REQUIRED,
    JVPContext,
    MissingAttribute,
    Op,
    VJPContext,
    broadcast_rule,
    broadcast_shapes,
    format_note,
    get,
    infer,
    no_tangent,
    norm_axes,
    norm_axis,
    plain,
    reduced_shape,
    register,
    same_op,
    same_shape,
    scalar_shape,
    symmetric,
    tangent_terms,
)

# Importing the op families registers their ops: defs (the core), conv (convolution and
# pooling), data (tensor constants), logic (masks and where), nn (normalization,
# embedding and other network ops), attention (the float ops of transformer blocks).
# isort: off
from . import defs  # the core first: the others build on it
from . import attention, conv, data, logic, nn

# isort: on

__all__ = [
    "HELPERS",
    "REGISTRY",
    "REQUIRED",
    "JVPContext",
    "MissingAttribute",
    "Op",
    "VJPContext",
    "attention",
    "broadcast_rule",
    "broadcast_shapes",
    "conv",
    "data",
    "defs",
    "format_note",
    "get",
    "infer",
    "logic",
    "nn",
    "no_tangent",
    "norm_axes",
    "norm_axis",
    "plain",
    "reduced_shape",
    "register",
    "same_op",
    "same_shape",
    "scalar_shape",
    "symmetric",
    "tangent_terms",
]
