"""ONNX handlers: convolution, pooling, normalization and softmax."""

from __future__ import annotations

from .. import dims
from .onnx_ops import Unsupported, as_str, axis, handles


def _spatial_attrs(attrs, names):
    out = {}
    for k in names:
        if k in attrs:
            v = attrs[k]
            out[k] = as_str(v) if isinstance(v, bytes) else v
    if "pads" in out:
        out["pads"] = [int(p) for p in out["pads"]]
    for k in ("strides", "dilations", "kernel_shape"):
        if k in out:
            out[k] = [int(p) for p in out[k]]
    return out


@handles(
    "Conv",
    inputs=(2, 3),
    attrs={
        "auto_pad": str,
        "dilations": [int],
        "group": int,
        "kernel_shape": [int],
        "pads": [int],
        "strides": [int],
    },
    dtypes="fff",
)
def op_Conv(imp, node, ins, attrs):
    out = node.output[0]
    at = _spatial_attrs(
        attrs, ("strides", "pads", "dilations", "group", "auto_pad", "kernel_shape")
    )
    if "group" in at:  # ONNX's group is graphgen's groups
        at["groups"] = int(at.pop("group"))
    has_bias = len(ins) > 2 and ins[2]
    y = imp.emit(
        "conv",
        [imp.value(ins[0]), imp.value(ins[1])],
        out if not has_bias else f"{out}/conv",
        **at,
    )
    if has_bias:
        nd = len(imp.shape[y]) - 2
        b = imp.value(ins[2])
        m = imp.shape_of(b)
        b = imp.emit("reshape", [b], f"{out}/bias", shape=[*m, *([1] * nd)])
        y = imp.emit("add", [y, b], out)
    return y


@handles(
    "MaxPool",
    outputs={7: (1, 1), 8: (1, 2)},
    attrs={
        "auto_pad": str,
        "ceil_mode": bool,
        "dilations": [int],
        "kernel_shape": [int],
        "pads": [int],
        "storage_order": bool,
        "strides": [int],
    },
    required=("kernel_shape",),
)
def op_MaxPool(imp, node, ins, attrs):
    if len(node.output) > 1 and imp.used(node.output[1]):
        raise Unsupported("its Indices output is used")
    at = _spatial_attrs(
        attrs,
        ("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad"),
    )
    return imp.emit("max_pool", [imp.value(ins[0])], node.output[0], **at)


@handles(
    "AveragePool",
    attrs={
        "auto_pad": str,
        "ceil_mode": bool,
        "count_include_pad": bool,
        "dilations": [int],
        "kernel_shape": [int],
        "pads": [int],
        "strides": [int],
    },
    required=("kernel_shape",),
)
def op_AveragePool(imp, node, ins, attrs):
    at = _spatial_attrs(
        attrs,
        (
            "kernel_shape",
            "strides",
            "pads",
            "dilations",
            "ceil_mode",
            "count_include_pad",
            "auto_pad",
        ),
    )
    return imp.emit("avg_pool", [imp.value(ins[0])], node.output[0], **at)


def _global(graphgen_op):
    def handler(imp, node, ins, attrs):
        x = imp.value(ins[0])
        axes = list(range(2, len(imp.shape[x])))
        return imp.emit(graphgen_op, [x], node.output[0], axis=axes, keepdims=True)

    return handler


op_GlobalAveragePool = handles("GlobalAveragePool")(_global("mean"))
op_GlobalMaxPool = handles("GlobalMaxPool")(_global("max"))


@handles(
    "BatchNormalization",
    inputs=(5, 5),
    outputs={7: (1, 5), 14: (1, 3)},
    attrs={"epsilon": float, "momentum": float, "spatial": bool, "training_mode": bool},
    dtypes="fffff",
)
def op_BatchNormalization(imp, node, ins, attrs):
    out = node.output[0]
    eps = float(attrs.get("epsilon", 1e-5))
    if attrs.get("spatial", 1) != 1:
        raise Unsupported("spatial=0")
    training = bool(attrs.get("training_mode", 0)) if imp.opset >= 14 else False
    extra = [o for o in node.output[1:] if imp.used(o)]
    if not training:
        if extra:
            raise Unsupported("it has extra outputs in inference mode")
        return imp.emit("batch_norm", [imp.value(i) for i in ins[:5]], out, epsilon=eps)
    x = imp.value(ins[0])
    y = imp.emit(
        "batch_norm_train",
        [x, imp.value(ins[1]), imp.value(ins[2])],
        out,
        epsilon=eps,
    )
    if any(imp.used(o) for o in node.output[3:]):
        raise Unsupported("saved mean/var outputs")
    results = [y]
    if extra:
        momentum = float(attrs.get("momentum", 0.9))
        axes = [a for a in range(len(imp.shape[x])) if a != 1]
        mean = imp.emit("mean", [x], f"{out}/batch_mean", axis=axes)
        c = len(imp.shape[x]) - 2
        centred = imp.emit(
            "sub",
            [
                x,
                imp.emit("reshape", [mean], f"{out}/mean_b", shape=[-1] + [1] * c),
            ],
            f"{out}/centred",
        )
        var = imp.emit(
            "mean",
            [imp.emit("square", [centred], f"{out}/centred2")],
            f"{out}/batch_var",
            axis=axes,
        )
        for stat_in, batch, name in (
            (ins[3], mean, node.output[1]),
            (ins[4], var, node.output[2] if len(node.output) > 2 else ""),
        ):
            if not imp.used(name):
                results.append(None)
                continue
            old = imp.emit("mul", [imp.value(stat_in), momentum], f"{name}/old")
            new = imp.emit("mul", [batch, 1.0 - momentum], f"{name}/new")
            results.append(imp.emit("add", [old, new], name))
    return results


@handles(
    "LayerNormalization",
    inputs=(2, 3),
    outputs=(1, 3),
    attrs={"axis": int, "epsilon": float, "stash_type": int},
    dtypes="fff",
)
def op_LayerNormalization(imp, node, ins, attrs):
    x = imp.value(ins[0])
    bias = imp.value(ins[2]) if len(ins) > 2 and ins[2] else 0.0
    at = int(attrs.get("axis", -1))
    eps = float(attrs.get("epsilon", 1e-5))
    y = imp.emit(
        "layer_norm",
        [x, imp.value(ins[1]), bias],
        node.output[0],
        axis=at,
        epsilon=eps,
    )
    results = [y]
    extra = [o if imp.used(o) else "" for o in node.output[1:]]
    if any(extra):  # Mean and InvStdDev over the normalized axes, kept as size 1
        nd = len(imp.shape[x])
        axes = list(range(axis(at, nd), nd))
        out = node.output[0]
        mean = imp.emit(
            "mean", [x], extra[0] or f"{out}/mean", axis=axes, keepdims=True
        )
        centred = imp.emit("sub", [x, mean], f"{out}/centred")
        var = imp.emit(
            "mean",
            [imp.emit("square", [centred], f"{out}/centred2")],
            f"{out}/var",
            axis=axes,
            keepdims=True,
        )
        std = imp.emit(
            "sqrt", [imp.emit("add", [var, eps], f"{out}/var_eps")], f"{out}/std"
        )
        results.append(mean if extra[0] else None)
        if len(extra) > 1 and extra[1]:
            results.append(imp.emit("div", [1.0, std], extra[1]))
    return results


@handles(
    "LRN",
    attrs={"alpha": float, "beta": float, "bias": float, "size": int},
    required=("size",),
)
def op_LRN(imp, node, ins, attrs):
    return imp.emit(
        "lrn",
        [imp.value(ins[0])],
        node.output[0],
        size=int(attrs["size"]),
        alpha=float(attrs.get("alpha", 1e-4)),
        beta=float(attrs.get("beta", 0.75)),
        bias=float(attrs.get("bias", 1.0)),
    )


def _softmax(graphgen_op, probabilities=False):
    """``probabilities``: the op's output is a softmax, whose logits
    ``--loss softmax_cross_entropy`` takes instead."""

    def handler(imp, node, ins, attrs):
        out = node.output[0]
        x = imp.value(ins[0])
        shape = imp.shape[x]
        nd = len(shape)
        at = axis(attrs.get("axis", 1 if imp.opset < 13 else -1), nd)
        if imp.opset >= 13 or at == nd - 1:
            y = imp.emit(graphgen_op, [x], out, axis=at)
        else:  # opsets < 13: softmax of the input coerced to 2-D at axis
            flat = imp.emit(
                "reshape",
                [x],
                f"{out}/2d",
                shape=[dims.prod(shape[:at]), dims.prod(shape[at:])],
            )
            s = imp.emit(graphgen_op, [flat], f"{out}/softmax2d", axis=1)
            y = imp.emit("reshape", [s], out, shape=list(shape))
        if probabilities and nd == 2 and at == nd - 1:
            imp.softmax_of[y] = x
        return y

    return handler


op_Softmax = handles("Softmax", attrs={"axis": int})(
    _softmax("softmax", probabilities=True)
)
op_LogSoftmax = handles("LogSoftmax", attrs={"axis": int})(_softmax("log_softmax"))
