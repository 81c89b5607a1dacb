"""ONNX handlers: comparisons, boolean logic, ``Where``, ``IsNaN`` and ``Expand`` at run
time (issue 15).

A boolean tensor computed at run time is a 0/1 mask of the model's float type
(:mod:`graphgen.ops.logic`); the importer keeps the ids of such nodes in
``imp.is_mask``. A boolean tensor known at compile time (a causal mask the exporter
folded) becomes a constant 0/1 array where a run-time op reads it; ops on known values
only never reach these handlers: they are folded first.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ..errors import SpecError
from .onnx_ops import Unsupported, handles


def mask(imp, name, what):
    """The graph argument for boolean tensor ``name``: a mask node id, or a 0/1
    constant (a number when 0-d)."""
    kind, v = imp.t[name]
    if kind == "const":
        arr = np.asarray(v)
        if arr.dtype.kind not in "bfiu":
            raise SpecError(f"{what} ({name!r}) is a {arr.dtype} tensor, not a bool")
        arr = (arr != 0).astype(np.float64)
        return float(arr) if arr.ndim == 0 else imp.constant(arr, name)
    if v not in imp.is_mask:
        words = "int64" if v in imp.is_int else "float"
        raise SpecError(f"{what} ({name!r}) is {words}; it must be a bool tensor")
    return v


def is_mask(imp, name):
    """Whether tensor ``name`` holds booleans (a run-time mask or a known bool)."""
    kind, v = imp.t[name]
    if kind == "const":
        return np.asarray(v).dtype.kind == "b"
    return v in imp.is_mask


def _emit_mask(imp, op, args, out, **attrs):
    nid = imp.emit(op, args, out, **attrs)
    imp.is_mask.add(nid)
    return nid


@handles("Where", inputs=(3, 3), dtypes="*")
def op_Where(imp, node, ins, attrs):
    cond = mask(imp, ins[0], "Where's condition")
    if is_mask(imp, ins[1]) and is_mask(imp, ins[2]):  # a choice between masks
        a, b = mask(imp, ins[1], "input 1"), mask(imp, ins[2], "input 2")
        return _emit_mask(imp, "where", [cond, a, b], node.output[0])
    return imp.emit(
        "where", [cond, imp.value(ins[1]), imp.value(ins[2])], node.output[0]
    )


@handles("IsNaN", dtypes="f")
def op_IsNaN(imp, node, ins, attrs):
    return _emit_mask(imp, "is_nan", [imp.value(ins[0])], node.output[0])


@handles("Not", dtypes="*")
def op_Not(imp, node, ins, attrs):
    x = mask(imp, ins[0], "Not's input")
    return _emit_mask(imp, "logical_not", [x], node.output[0])


for _onnx_op, _op in (
    ("And", "logical_and"),
    ("Or", "logical_or"),
    ("Xor", "logical_xor"),
):

    @handles(_onnx_op, inputs=(2, 2), dtypes="*")
    def op_logic(imp, node, ins, attrs, _op=_op):
        a = mask(imp, ins[0], f"{node.op_type}'s input 0")
        b = mask(imp, ins[1], f"{node.op_type}'s input 1")
        return _emit_mask(imp, _op, [a, b], node.output[0])


# ONNX comparison -> (graphgen mask op, whether its arguments swap)
COMPARISONS = {
    "Equal": ("eq", False),
    "Less": ("lt", False),
    "Greater": ("lt", True),
    "GreaterOrEqual": ("ge", False),
    "LessOrEqual": ("ge", True),
}

for _onnx_op in COMPARISONS:

    @handles(_onnx_op, inputs=(2, 2), dtypes="*")
    def op_compare(imp, node, ins, attrs):
        op, swap = COMPARISONS[node.op_type]
        if any(imp.t[i][0] == "node" and imp.t[i][1] in imp.is_int for i in ins) or any(
            imp.t[i][0] == "const" and imp.const(i).dtype.kind in "iu" for i in ins
        ):
            raise Unsupported("comparing integer tensors at run time")
        args = [
            mask(imp, i, f"input {k}") if is_mask(imp, i) else imp.value(i)
            for k, i in enumerate(ins)
        ]
        if swap:
            args.reverse()
        return _emit_mask(imp, op, args, node.output[0])


@handles("Expand", inputs=(2, 2), dtypes="*i")
def op_Expand(imp, node, ins, attrs):
    """``Expand(x, shape)``: ``x`` broadcast against ``shape`` (both ways: a 1 in
    ``shape`` keeps ``x``'s size)."""
    target = imp.ints(ins[1], "shape")
    was_mask = is_mask(imp, ins[0])
    x = mask(imp, ins[0], "input 0") if was_mask else imp.value(ins[0])
    have = imp.shape_of(x)
    shape = ops.broadcast_shapes(tuple(have), tuple(target))
    if shape is None:
        raise SpecError(f"a tensor of shape {list(have)} does not expand to {target}")
    if isinstance(x, float):  # a number: a constant fill of the shape
        x = imp.emit("constant", [], node.output[0], shape=list(shape), fill=x)
    elif tuple(shape) != tuple(have):
        x = imp.emit("broadcast_to", [x], node.output[0], shape=list(shape))
    if was_mask:
        imp.is_mask.add(x)
    return x
