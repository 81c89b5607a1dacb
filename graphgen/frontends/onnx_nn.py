"""ONNX handlers: convolution, pooling, normalization, softmax and attention."""

from __future__ import annotations

import numpy as np

from .. import dims
from ..errors import SpecError
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


# ------------------------------------------------------------------ transformers
# The ops of opsets 23-25, RMSNormalization, RotaryEmbedding and Attention, mapped onto
# graphgen's fused ops (graphgen/ops/attention.py) rather than expanded into their
# function bodies. What a node asks beyond those ops (a KV cache, soft-capping, sliding
# windows, the scores as an extra output) is reported as unsupported, with the reason.


@handles(
    "RMSNormalization",
    inputs=(2, 2),
    attrs={"axis": int, "epsilon": float, "stash_type": int},
    dtypes="ff",
)
def op_RMSNormalization(imp, node, ins, attrs):
    # stash_type says in which precision ONNX computes the statistics; graphgen computes
    # in the module's dtype throughout
    return imp.emit(
        "rms_norm",
        [imp.value(ins[0]), imp.value(ins[1])],
        node.output[0],
        axis=int(attrs.get("axis", -1)),
        epsilon=float(attrs.get("epsilon", 1e-5)),
    )


def _caches(imp, node, ins):
    """(cos, sin) as graph arguments of shape (batch, seq, half) or (seq, half): the
    caches as they are, or the rows ``position_ids`` picks."""
    out = node.output[0]
    pos = ins[3] if len(ins) > 3 and ins[3] else None
    result = []
    for name, what in ((ins[1], "cos"), (ins[2], "sin")):
        if pos is None:
            result.append(imp.value(name))
            continue
        cache, ids = imp.const(name), imp.const(pos)
        if cache is not None and ids is not None:  # both known: pick the rows now
            if ids.size and not (0 <= ids.min() and ids.max() < cache.shape[0]):
                raise SpecError(
                    f"position_ids {ids.tolist()} are out of range for a {what} cache "
                    f"of {cache.shape[0]} positions"
                )
            result.append(
                imp.constant(np.asarray(cache[ids], np.float64), f"{out}/{what}")
            )
            continue
        kind, idx = imp.t[pos]
        if kind != "node" or idx not in imp.is_int:
            raise Unsupported(
                "position_ids known at compile time index a cache computed at run time"
            )
        result.append(imp.emit("gather", [imp.value(name), idx], f"{out}/{what}"))
    return result


@handles(
    "RotaryEmbedding",
    inputs=(3, 4),
    attrs={"interleaved": bool, "num_heads": int, "rotary_embedding_dim": int},
    dtypes="fffi",
)
def op_RotaryEmbedding(imp, node, ins, attrs):
    out = node.output[0]
    x = imp.value(ins[0])
    shape = list(imp.shape[x])
    inter = bool(attrs.get("interleaved", 0))
    if len(shape) == 3:  # (batch, seq, hidden): split the heads, (batch, seq, H, d)
        heads = int(attrs.get("num_heads", 0))
        if heads <= 0 or not isinstance(shape[2], int) or shape[2] % heads:
            raise SpecError(
                f"a 3-D input (batch, seq, hidden) needs num_heads dividing hidden "
                f"{shape[2]}, got num_heads={heads}"
            )
        head = shape[2] // heads
        xs = imp.emit("reshape", [x], f"{out}/heads", shape=shape[:2] + [heads, head])
        seq_axis = 1
    elif len(shape) == 4:  # (batch, H, seq, d)
        xs, head, seq_axis = x, shape[3], 2
    else:
        raise SpecError(f"X must have rank 3 or 4, got shape {shape}")
    if not isinstance(head, int):
        raise Unsupported("a symbolic head size")
    rot = int(attrs.get("rotary_embedding_dim", 0)) or head
    if rot % 2 or rot > head:
        raise SpecError(
            f"rotary_embedding_dim {rot} must be even and at most the head size {head}"
        )
    cos, sin = _caches(imp, node, ins)
    # the caches are (batch, seq, rot/2) (or (seq, rot/2)): put a head axis beside seq
    lay = []
    for c, what in ((cos, "cos"), (sin, "sin")):
        cs = list(imp.shape_of(c))
        if cs and cs[-1] != rot // 2:
            raise SpecError(
                f"the {what} cache's last axis must be rotary_embedding_dim/2 = "
                f"{rot // 2}, got shape {cs}"
            )
        if len(cs) == 3:
            new = cs[:2] + [1, rot // 2] if seq_axis == 1 else [cs[0], 1] + cs[1:]
            c = imp.emit("reshape", [c], f"{out}/{what}_b", shape=new)
        elif len(cs) == 2 and seq_axis == 1:
            c = imp.emit("reshape", [c], f"{out}/{what}_b", shape=[cs[0], 1, rot // 2])
        lay.append(c)
    part = xs
    if rot < head:
        part = imp.emit(
            "slice", [xs], f"{out}/rotated", axis=3, start=0, stop=rot, step=1
        )
    y = imp.emit(
        "rotary_embedding",
        [part, *lay],
        out if rot == head and len(shape) == 4 else f"{out}/rope",
        interleaved=inter,
    )
    if rot < head:
        rest = imp.emit(
            "slice", [xs], f"{out}/kept", axis=3, start=rot, stop=head, step=1
        )
        y = imp.emit(
            "concat", [y, rest], out if len(shape) == 4 else f"{out}/joined", axis=3
        )
    if len(shape) == 3:
        y = imp.emit("reshape", [y], out, shape=shape)
    return y


def _heads(imp, name, heads, what, out):
    """A 4-D (batch, H, seq, d) argument for Q, K or V; a 3-D (batch, seq, H·d) one
    is split into ``heads`` heads."""
    x = imp.value(name)
    shape = list(imp.shape[x])
    if len(shape) == 4:
        return x, False
    if len(shape) != 3:
        raise SpecError(f"{what} must have rank 3 or 4, got shape {shape}")
    if heads <= 0 or not isinstance(shape[2], int) or shape[2] % heads:
        raise SpecError(
            f"a 3-D {what} (batch, seq, hidden) needs its number of heads dividing "
            f"hidden {shape[2]} (q_num_heads, kv_num_heads), got {heads}"
        )
    x = imp.emit(
        "reshape",
        [x],
        f"{out}/{what}_heads",
        shape=shape[:2] + [heads, shape[2] // heads],
    )
    return imp.emit("transpose", [x], f"{out}/{what}_bhsd", perm=[0, 2, 1, 3]), True


@handles(
    "Attention",
    inputs={23: (3, 6), 24: (3, 7)},
    outputs=(1, 4),
    attrs={
        "is_causal": bool,
        "kv_num_heads": int,
        "q_num_heads": int,
        "qk_matmul_output_mode": int,
        "scale": float,
        "softcap": float,
        "softmax_precision": int,
        "left_window_size": int,
        "right_window_size": int,
    },
    dtypes="fff*fff",
)
def op_Attention(imp, node, ins, attrs):
    out = node.output[0]
    if any(len(ins) > i and ins[i] for i in (4, 5, 6)):
        raise Unsupported("a KV cache (past_key, past_value, nonpad_kv_seqlen)")
    if any(imp.used(o) for o in node.output[1:]):
        raise Unsupported("its present_key, present_value or qk_matmul_output output")
    if float(attrs.get("softcap", 0.0)) != 0.0:
        raise Unsupported("softcap")
    if any(
        int(attrs.get(k, -1)) != -1 for k in ("left_window_size", "right_window_size")
    ):
        raise Unsupported("a sliding window")
    q, three = _heads(imp, ins[0], int(attrs.get("q_num_heads", 0)), "Q", out)
    k, _ = _heads(imp, ins[1], int(attrs.get("kv_num_heads", 0)), "K", out)
    v, _ = _heads(imp, ins[2], int(attrs.get("kv_num_heads", 0)), "V", out)
    at = {"causal": bool(attrs.get("is_causal", 0))}
    if "scale" in attrs:
        at["scale"] = float(attrs["scale"])
    name = out if not three else f"{out}/bhsd"
    mask = ins[3] if len(ins) > 3 and ins[3] else None
    if mask is None:
        y = imp.emit("attention", [q, k, v], name, **at)
    else:
        known = imp.const(mask)
        kind, m = imp.t[mask]
        if known is not None and known.dtype == np.bool_:
            # a boolean mask known now: the additive one, −∞ where it is False
            add = np.where(known, 0.0, -np.inf)
            y = imp.emit(
                "masked_attention",
                [q, k, v, imp.constant(add, f"{out}/mask")],
                name,
                **at,
            )
        elif kind == "node" and m in imp.is_int:
            y = imp.emit("masked_attention_bool", [q, k, v, m], name, **at)
        else:
            y = imp.emit("masked_attention", [q, k, v, imp.value(mask)], name, **at)
    if three:  # back to (batch, seq, Hq·dv)
        b, h, t, d = imp.shape[y]
        y = imp.emit("transpose", [y], f"{out}/bshd", perm=[0, 2, 1, 3])
        y = imp.emit("reshape", [y], out, shape=[b, t, h * d])
    return y
