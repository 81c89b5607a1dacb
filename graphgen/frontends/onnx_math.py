"""ONNX handlers: elementwise ops, matrix products and reductions."""

from __future__ import annotations

from . import onnx_logic
from .onnx_ops import Unsupported, as_str, handles, node_axes


def _unary(graphgen_op):
    def handler(imp, node, ins, attrs):
        return imp.emit(graphgen_op, [imp.value(ins[0])], node.output[0])

    return handler


op_Relu = handles("Relu")(_unary("relu"))
op_Sigmoid = handles("Sigmoid")(_unary("sigmoid"))
op_Tanh = handles("Tanh")(_unary("tanh"))
op_Exp = handles("Exp")(_unary("exp"))
op_Log = handles("Log")(_unary("log"))
op_Sqrt = handles("Sqrt")(_unary("sqrt"))
op_Abs = handles("Abs")(_unary("abs"))
op_Neg = handles("Neg")(_unary("neg"))
op_Sin = handles("Sin")(_unary("sin"))
op_Cos = handles("Cos")(_unary("cos"))
op_Softplus = handles("Softplus")(_unary("softplus"))
op_Erf = handles("Erf")(_unary("erf"))


@handles("Identity", dtypes="*")
def op_Identity(imp, node, ins, attrs):
    return imp.value(ins[0])


@handles(
    "Dropout",
    inputs={7: (1, 1), 12: (1, 3)},
    outputs=(1, 2),
    attrs={"ratio": float, "seed": int},
    dtypes="ffb",
)
def op_Dropout(imp, node, ins, attrs):
    if len(node.output) > 1 and imp.used(node.output[1]):
        raise Unsupported("its mask output is used (only inference is supported)")
    if len(ins) > 2 and ins[2]:
        training = imp.const(ins[2])
        if training is None or bool(imp.scalar(ins[2], "training_mode")):
            raise Unsupported("training_mode must be a constant false")
    return imp.value(ins[0])


@handles("LeakyRelu", attrs={"alpha": float})
def op_LeakyRelu(imp, node, ins, attrs):
    return imp.emit(
        "leaky_relu",
        [imp.value(ins[0])],
        node.output[0],
        alpha=float(attrs.get("alpha", 0.01)),
    )


@handles("Gelu", attrs={"approximate": str})
def op_Gelu(imp, node, ins, attrs):
    approximate = as_str(attrs.get("approximate", "none"))
    return imp.emit(
        "gelu", [imp.value(ins[0])], node.output[0], approximate=approximate
    )


@handles("Reciprocal")
def op_Reciprocal(imp, node, ins, attrs):
    return imp.emit("div", [1.0, imp.value(ins[0])], node.output[0])


def _binary(graphgen_op):
    def handler(imp, node, ins, attrs):
        if any(onnx_logic.run_time_int(imp, i) for i in ins):  # int64 arithmetic
            return onnx_logic.int_math(imp, node, ins, graphgen_op)
        a, b = imp.value(ins[0]), imp.value(ins[1])
        if isinstance(a, float) and isinstance(b, float):
            raise Unsupported("both arguments are numbers")
        return imp.emit(graphgen_op, [a, b], node.output[0])

    return handler


# on int64 computed at run time: int_math (Div rounds toward 0, as ONNX's does)
op_Add = handles("Add", inputs=(2, 2), dtypes="n")(_binary("add"))
op_Sub = handles("Sub", inputs=(2, 2), dtypes="n")(_binary("sub"))
op_Mul = handles("Mul", inputs=(2, 2), dtypes="n")(_binary("mul"))
op_Div = handles("Div", inputs=(2, 2), dtypes="n")(_binary("div"))
op_Pow = handles("Pow", inputs=(2, 2))(_binary("pow"))


@handles("Sum", inputs=(1, None))
def op_Sum(imp, node, ins, attrs):
    args = [imp.value(i) for i in ins]
    if len(args) == 1:
        return args[0]
    return imp.emit("add_n", args, node.output[0])


@handles("Mean", inputs=(1, None))
def op_Mean(imp, node, ins, attrs):
    args = [imp.value(i) for i in ins]
    if len(args) == 1:
        return args[0]
    total = imp.emit("add_n", args, f"{node.output[0]}/sum")
    return imp.emit("div", [total, float(len(args))], node.output[0])


def _chain(graphgen_op):
    """A variadic ONNX op as a chain of a binary graphgen op: max(a, b, c)."""

    def handler(imp, node, ins, attrs):
        args = [imp.value(i) for i in ins]
        out = args[0]
        for k, a in enumerate(args[1:], 1):
            name = node.output[0] if k == len(args) - 1 else f"{node.output[0]}/{k}"
            out = imp.emit(graphgen_op, [out, a], name)
        return out

    return handler


op_Max = handles("Max", inputs=(1, None))(_chain("maximum"))
op_Min = handles("Min", inputs=(1, None))(_chain("minimum"))


@handles(
    "Clip",
    inputs={7: (1, 1), 11: (1, 3)},
    attrs={"min": float, "max": float},
    dtypes="fff",
)
def op_Clip(imp, node, ins, attrs):
    lo, hi = attrs.get("min"), attrs.get("max")
    if imp.opset >= 11:
        lo = float(imp.scalar(ins[1], "min")) if len(ins) > 1 and ins[1] else None
        hi = float(imp.scalar(ins[2], "max")) if len(ins) > 2 and ins[2] else None
    return imp.emit("clip", [imp.value(ins[0])], node.output[0], min=lo, max=hi)


@handles("MatMul", inputs=(2, 2))
def op_MatMul(imp, node, ins, attrs):
    return imp.emit("matmul", [imp.value(ins[0]), imp.value(ins[1])], node.output[0])


@handles(
    "Gemm",
    inputs={7: (3, 3), 11: (2, 3)},
    attrs={"alpha": float, "beta": float, "transA": bool, "transB": bool},
)
def op_Gemm(imp, node, ins, attrs):
    out = node.output[0]
    a, b = imp.value(ins[0]), imp.value(ins[1])
    if imp.rank(ins[0]) != 2 or imp.rank(ins[1]) != 2:
        raise Unsupported("A and B must be matrices")
    if attrs.get("transA", 0):
        a = imp.emit("transpose", [a], f"{out}/A_T")
    if attrs.get("transB", 0):
        b = imp.emit("transpose", [b], f"{out}/B_T")
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    has_c = len(ins) > 2 and ins[2] and beta != 0.0
    y = imp.emit("matmul", [a, b], out if alpha == 1.0 and not has_c else f"{out}/AB")
    if alpha != 1.0:
        y = imp.emit("mul", [y, alpha], out if not has_c else f"{out}/alpha_AB")
    if has_c:
        c = imp.value(ins[2])
        if beta != 1.0:
            c = imp.emit("mul", [c, beta], f"{out}/beta_C")
        y = imp.emit("add", [y, c], out)
    return y


def _reduce_signature(since):
    """What ReduceX takes: ``axes`` an attribute before opset ``since``, an input from it."""
    return {
        "inputs": {7: (1, 1), since: (1, 2)},
        "attrs": {"axes": [int], "keepdims": bool, "noop_with_empty_axes": bool},
        "dtypes": "fi",
    }


def _reduce(graphgen_op, since):
    def handler(imp, node, ins, attrs):
        x = imp.value(ins[0])
        axes = node_axes(imp, ins, attrs, since)
        keepdims = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return x
            axes = None
        return imp.emit(graphgen_op, [x], node.output[0], axis=axes, keepdims=keepdims)

    return handler


op_ReduceMean = handles("ReduceMean", **_reduce_signature(18))(_reduce("mean", 18))
op_ReduceLogSumExp = handles("ReduceLogSumExp", **_reduce_signature(18))(
    _reduce("logsumexp", 18)
)


@handles("ReduceSumSquare", **_reduce_signature(18))
def op_ReduceSumSquare(imp, node, ins, attrs):
    x = imp.value(ins[0])
    sq = imp.emit("square", [x], f"{node.output[0]}/square")
    axes = node_axes(imp, ins, attrs, 18)
    keepdims = bool(attrs.get("keepdims", 1))
    if not axes and attrs.get("noop_with_empty_axes", 0):
        return sq
    return imp.emit("sum", [sq], node.output[0], axis=axes or None, keepdims=keepdims)


op_ReduceSum = handles("ReduceSum", **_reduce_signature(13))(_reduce("sum", 13))
op_ReduceMax = handles("ReduceMax", **_reduce_signature(18))(_reduce("max", 18))
