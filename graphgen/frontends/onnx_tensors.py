"""ONNX handlers: shapes, reshaping, slicing, constants and casts."""

from __future__ import annotations

import numpy as np

from .. import dims
from .onnx_ops import Unsupported, as_str, handles, node_axes


@handles("Concat")
def op_Concat(imp, node, ins, attrs):
    args = [imp.value(i) for i in ins]
    if len(args) == 1:
        return args[0]
    return imp.emit("concat", args, node.output[0], axis=int(attrs["axis"]))


@handles("Split")
def op_Split(imp, node, ins, attrs):
    x = imp.value(ins[0])
    shape = imp.shape[x]
    axis = int(attrs.get("axis", 0))
    axis = axis + len(shape) if axis < 0 else axis
    size = shape[axis]
    if not isinstance(size, int):
        raise Unsupported("splitting a symbolic axis")
    outs = [o for o in node.output]
    if imp.opset >= 13 and len(ins) > 1 and ins[1]:
        split = [int(s) for s in imp.need_const(ins[1], "split")]
    elif "split" in attrs:
        split = [int(s) for s in attrs["split"]]
    else:
        n = int(attrs.get("num_outputs", len(outs)))
        step = -(-size // n)
        split = [min(step, size - k * step) for k in range(n)]
    if sum(split) != size or len(split) != len(outs):
        raise Unsupported(f"split {split} does not fit size {size}")
    results, start = [], 0
    for name, s in zip(outs, split):
        results.append(
            imp.emit("slice", [x], name or None, axis=axis, start=start, stop=start + s)
            if name
            else None
        )
        start += s
    return results


def _reshape_to(imp, x, shape, out):
    return imp.emit("reshape", [x], out, shape=list(shape))


@handles("Reshape")
def op_Reshape(imp, node, ins, attrs):
    x = imp.value(ins[0])
    target = (
        list(attrs["shape"])
        if imp.opset < 5
        else [int(s) for s in imp.need_const(ins[1], "shape")]
    )
    have = imp.shape[x]
    allowzero = attrs.get("allowzero", 0)
    shape = []
    for i, s in enumerate(target):
        if s == 0 and not allowzero:
            shape.append(have[i])
        else:
            shape.append(int(s))
    return _reshape_to(imp, x, shape, node.output[0])


@handles("Flatten")
def op_Flatten(imp, node, ins, attrs):
    x = imp.value(ins[0])
    shape = imp.shape[x]
    axis = int(attrs.get("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    return _reshape_to(
        imp, x, [dims.prod(shape[:axis]), dims.prod(shape[axis:])], node.output[0]
    )


@handles("Transpose")
def op_Transpose(imp, node, ins, attrs):
    x = imp.value(ins[0])
    perm = attrs.get("perm")
    at = {"perm": [int(p) for p in perm]} if perm is not None else {}
    return imp.emit("transpose", [x], node.output[0], **at)


@handles("Squeeze")
def op_Squeeze(imp, node, ins, attrs):
    x = imp.value(ins[0])
    shape = imp.shape[x]
    axes = node_axes(imp, ins, attrs, 13)
    if axes is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    axes = {a + len(shape) if a < 0 else a for a in axes}
    if any(shape[a] != 1 for a in axes):
        raise Unsupported(f"squeezing an axis of size other than 1 ({shape})")
    return _reshape_to(
        imp, x, [d for i, d in enumerate(shape) if i not in axes], node.output[0]
    )


@handles("Unsqueeze")
def op_Unsqueeze(imp, node, ins, attrs):
    x = imp.value(ins[0])
    shape = list(imp.shape[x])
    axes = node_axes(imp, ins, attrs, 13)
    if axes is None:
        raise Unsupported("Unsqueeze without axes")
    nd = len(shape) + len(axes)
    axes = sorted(a + nd if a < 0 else a for a in axes)
    for a in axes:
        shape.insert(a, 1)
    return _reshape_to(imp, x, shape, node.output[0])


@handles("Pad")
def op_Pad(imp, node, ins, attrs):
    mode = as_str(attrs.get("mode", "constant"))
    if mode != "constant":
        raise Unsupported(f"mode {mode!r} (only 'constant')")
    x = imp.value(ins[0])
    nd = len(imp.shape[x])
    if imp.opset < 11:
        pads = [int(p) for p in attrs["pads"]]
        value = float(attrs.get("value", 0.0))
    else:
        pads = [int(p) for p in imp.need_const(ins[1], "pads")]
        value = (
            float(imp.need_const(ins[2], "constant_value"))
            if len(ins) > 2 and ins[2]
            else 0.0
        )
        if len(ins) > 3 and ins[3]:
            axes = [int(a) % nd for a in imp.need_const(ins[3], "axes")]
            full = [0] * (2 * nd)
            k = len(axes)
            for j, a in enumerate(axes):
                full[a], full[a + nd] = pads[j], pads[j + k]
            pads = full
    return imp.emit("pad", [x], node.output[0], pads=pads, value=value)


@handles("Constant", fold=False)
def op_Constant(imp, node, ins, attrs):
    onnx = imp.onnx
    if "value" in attrs:
        v = onnx.numpy_helper.to_array(attrs["value"])
    elif "value_float" in attrs:
        v = np.asarray(attrs["value_float"], dtype=np.float32)
    elif "value_floats" in attrs:
        v = np.asarray(attrs["value_floats"], dtype=np.float32)
    elif "value_int" in attrs:
        v = np.asarray(attrs["value_int"], dtype=np.int64)
    elif "value_ints" in attrs:
        v = np.asarray(attrs["value_ints"], dtype=np.int64)
    else:
        raise Unsupported(f"attribute {sorted(attrs)} (sparse or string constants)")
    imp.t[node.output[0]] = ("const", v)


@handles("ConstantOfShape", fold=False)
def op_ConstantOfShape(imp, node, ins, attrs):
    shape = [int(s) for s in imp.need_const(ins[0], "its shape")]
    v = attrs.get("value")
    value = (
        imp.onnx.numpy_helper.to_array(v).reshape(-1)
        if v is not None
        else np.zeros(1, np.float32)
    )
    out = node.output[0]
    if value.dtype.kind != "f":
        imp.t[out] = ("const", np.full(shape, value[0], dtype=value.dtype))
        return None
    if out in imp.freeze:
        return imp.emit("constant", [], out, shape=shape, fill=float(value[0]))
    imp.add_param(out, shape, float(value[0]))
    return out


@handles("Shape", fold=False)
def op_Shape(imp, node, ins, attrs):
    shape = imp.dims_of(ins[0])
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    part = shape[start : int(end) if end is not None else None]
    if not all(isinstance(d, int) for d in part):
        raise Unsupported("the shape has symbolic sizes (known only at run time)")
    imp.t[node.output[0]] = ("const", np.asarray(part, dtype=np.int64))


@handles("Gather")
def op_Gather(imp, node, ins, attrs):
    axis = int(attrs.get("axis", 0))
    data = imp.value(ins[0])
    kind, idx = imp.t[ins[1]]
    if kind == "node":
        if idx not in imp.is_int:
            raise Unsupported("indices must be int64")
        return imp.emit("gather", [data, idx], node.output[0], axis=axis)
    idx = np.asarray(idx)
    shape = imp.shape[data]
    axis = axis + len(shape) if axis < 0 else axis
    size = shape[axis]
    if idx.ndim == 0:
        i = int(idx) % size if isinstance(size, int) else int(idx)
        s = imp.emit(
            "slice",
            [data],
            f"{node.output[0]}/slice",
            axis=axis,
            start=i,
            stop=i + 1,
        )
        return _reshape_to(
            imp, s, [d for k, d in enumerate(shape) if k != axis], node.output[0]
        )
    flat = idx.reshape(-1)
    if flat.size and np.all(np.diff(flat) == 1) and idx.ndim == 1:
        return imp.emit(
            "slice",
            [data],
            node.output[0],
            axis=axis,
            start=int(flat[0]),
            stop=int(flat[-1]) + 1,
        )
    raise Unsupported("constant indices that are not a contiguous range")


@handles("Slice")
def op_Slice(imp, node, ins, attrs):
    x = imp.value(ins[0])
    shape = imp.shape[x]
    if imp.opset < 10:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes = list(attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = [int(v) for v in imp.need_const(ins[1], "starts")]
        ends = [int(v) for v in imp.need_const(ins[2], "ends")]
        axes = (
            [int(v) for v in imp.need_const(ins[3], "axes")]
            if len(ins) > 3 and ins[3]
            else list(range(len(starts)))
        )
        steps = (
            [int(v) for v in imp.need_const(ins[4], "steps")]
            if len(ins) > 4 and ins[4]
            else [1] * len(starts)
        )
    out = x
    todo = list(zip(axes, starts, ends, steps))
    for k, (axis, start, end, step) in enumerate(todo):
        axis %= len(shape)
        if step < 1:
            raise Unsupported("negative steps")
        size = shape[axis]
        if isinstance(size, int):
            start, end, step = slice(start, end, step).indices(size)
            if start == 0 and end >= size and step == 1:
                continue  # the whole axis
        name = node.output[0] if k == len(todo) - 1 else f"{node.output[0]}/{k}"
        out = imp.emit(
            "slice", [out], name, axis=axis, start=start, stop=end, step=step
        )
    return out


@handles("Size", fold=False)
def op_Size(imp, node, ins, attrs):
    shape = imp.dims_of(ins[0])
    if not all(isinstance(d, int) for d in shape):
        raise Unsupported("the size is symbolic (known only at run time)")
    imp.t[node.output[0]] = ("const", np.asarray(int(np.prod(shape)), np.int64))


@handles("CastLike")
def op_CastLike(imp, node, ins, attrs):
    kind, target = imp.t[ins[1]]
    is_float = (
        target not in imp.is_int
        if kind == "node"
        else np.asarray(target).dtype.kind == "f"
    )
    if not is_float or imp.t[ins[0]][0] == "node" and imp.t[ins[0]][1] in imp.is_int:
        raise Unsupported("casts other than float to float")
    return imp.value(ins[0])


@handles("Cast")
def op_Cast(imp, node, ins, attrs):
    _, v = imp.t[ins[0]]
    to = attrs.get("to")
    floats = (
        imp.onnx.TensorProto.FLOAT,
        imp.onnx.TensorProto.DOUBLE,
        imp.onnx.TensorProto.FLOAT16,
    )
    if v in imp.is_int or to not in floats:
        raise Unsupported("casts other than float to float")
    return v
