"""The ONNX op table: ONNX op type -> the handler that imports a node of it.

A handler ``f(imp, node, ins, attrs)`` gets the :class:`~graphgen.frontends.onnx.Importer`,
the ONNX node, the names of its inputs (trailing empty ones dropped) and its attributes.
It adds graphgen ops through ``imp.emit`` and returns the node id of its output (a list,
one entry per output, None where it sets none), or records a value known at compile time
in ``imp.t``. It raises :class:`Unsupported` to say why the node cannot be imported.

The handlers register with :func:`handles`, one module per family: ``onnx_math``
(elementwise ops, matrix products, reductions), ``onnx_nn`` (convolution, pooling,
normalization, softmax) and ``onnx_tensors`` (shapes, slicing, constants, casts).
"""

from __future__ import annotations

HANDLERS = {}  # ONNX op type -> handler
NO_FOLD = (
    set()
)  # ops whose handlers deal with known inputs themselves (weights, not shapes)


class Unsupported(Exception):
    """This node cannot be imported; the message says why (collected, then reported)."""


def handles(*op_types, fold=True):
    """Register the decorated handler for the ONNX ops ``op_types``. ``fold=False``: a
    node of them is imported by the handler even when all its inputs are known."""

    def register(f):
        for op_type in op_types:
            assert op_type not in HANDLERS, op_type
            HANDLERS[op_type] = f
            if not fold:
                NO_FOLD.add(op_type)
        return f

    return register


def as_str(v):
    """A string attribute (ONNX gives bytes) as ``str``."""
    return v.decode() if isinstance(v, bytes) else v


def node_axes(imp, ins, attrs, since):
    """A node's ``axes``: its second input from opset ``since`` on (known at compile
    time), its attribute before; None when it has none."""
    if imp.opset >= since:
        if len(ins) > 1 and ins[1]:
            return [int(a) for a in imp.need_const(ins[1], "axes")]
        return None
    return [int(a) for a in attrs["axes"]] if "axes" in attrs else None
