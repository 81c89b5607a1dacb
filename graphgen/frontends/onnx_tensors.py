"""ONNX handlers: shapes, reshaping, slicing, constants and casts."""

from __future__ import annotations

import numpy as np

from .. import dims
from ..errors import SpecError
from . import onnx_logic
from .onnx_ops import (
    SPARSE_TENSOR,
    TENSOR,
    Unsupported,
    as_str,
    axis,
    handles,
    node_axes,
)

LARGEST_FOLD = 1 << 24  # entries of an integer tensor made at compile time


@handles(
    "Concat", inputs=(1, None), attrs={"axis": int}, required=("axis",), dtypes="n"
)
def op_Concat(imp, node, ins, attrs):
    if any(onnx_logic.run_time_int(imp, i) for i in ins):  # a shape of dynamic axes
        parts = [onnx_logic.int_values(imp, i) for i in ins]
        if not all(onnx_logic.known(p) and p.ndim == 1 for p in parts):
            raise Unsupported("concatenating int64 tensors computed at run time")
        return onnx_logic.int_result(imp, np.concatenate(parts), node.output[0])
    args = [imp.value(i) for i in ins]
    if len(args) == 1:
        return args[0]
    return imp.emit("concat", args, node.output[0], axis=int(attrs["axis"]))


@handles(
    "Split",
    inputs={7: (1, 1), 13: (1, 2)},
    outputs=(1, None),
    attrs={"axis": int, "num_outputs": int, "split": [int]},
    dtypes="fi",
)
def op_Split(imp, node, ins, attrs):
    x = imp.value(ins[0])
    shape = imp.shape[x]
    at = axis(attrs.get("axis", 0), len(shape))
    size = shape[at]
    if not isinstance(size, int):
        raise Unsupported("splitting a symbolic axis")
    outs = [o for o in node.output]
    if imp.opset >= 13 and len(ins) > 1 and ins[1]:
        split = imp.ints(ins[1], "split")
    elif "split" in attrs:
        split = [int(s) for s in attrs["split"]]
    else:
        if imp.opset >= 18 and "num_outputs" not in attrs:
            raise SpecError("from opset 18 on, Split needs input split or num_outputs")
        n = int(attrs.get("num_outputs", len(outs)))
        if n != len(outs):
            raise SpecError(f"num_outputs is {n}, but the node has {len(outs)} outputs")
        if imp.opset < 18 and size % n:  # uneven splits came with num_outputs
            raise SpecError(f"an axis of size {size} does not split evenly {n} ways")
        step = -(-size // n)
        split = [min(step, size - k * step) for k in range(n)]
    if sum(split) != size or len(split) != len(outs) or min(split) < 0:
        raise Unsupported(f"split {split} does not fit size {size}")
    results, start = [], 0
    for name, s in zip(outs, split):
        results.append(
            imp.emit("slice", [x], name or None, axis=at, start=start, stop=start + s)
            if name
            else None
        )
        start += s
    return results


def _reshape_to(imp, x, shape, out):
    nid = imp.emit("reshape", [x], out, shape=list(shape))
    for kind in (imp.is_int, imp.is_mask):  # int64 indices stay int64, masks masks
        if x in kind:
            kind.add(nid)
    values = imp.int_values.get(x)
    if values is not None and len(shape) <= 1:  # the same entries, tracked
        imp.int_values[nid] = values.reshape(imp.shape[nid])
    return nid


@handles("Reshape", inputs=(2, 2), attrs={"allowzero": bool}, dtypes="*i")
def op_Reshape(imp, node, ins, attrs):
    x = imp.value(ins[0])
    target = onnx_logic.sizes(imp, ins[1], "shape")  # symbolic: a shape of dynamic axes
    have = imp.shape[x]
    allowzero = attrs.get("allowzero", 0)
    shape = []
    for i, s in enumerate(target):
        if s == 0 and not allowzero:
            if i >= len(have):
                raise SpecError(
                    f"shape {target} copies size {i} (a 0) of a tensor of rank "
                    f"{len(have)}"
                )
            shape.append(have[i])
        else:
            shape.append(s)
    return _reshape_to(imp, x, shape, node.output[0])


@handles("Flatten", attrs={"axis": int}, dtypes="*")
def op_Flatten(imp, node, ins, attrs):
    x = imp.value(ins[0])
    shape = imp.shape[x]
    at = int(attrs.get("axis", 1))
    if not -len(shape) <= at <= len(shape):  # axis = rank is allowed
        raise SpecError(f"axis {at} is out of range for a tensor of rank {len(shape)}")
    at = at + len(shape) if at < 0 else at
    return _reshape_to(
        imp, x, [dims.prod(shape[:at]), dims.prod(shape[at:])], node.output[0]
    )


@handles("Transpose", attrs={"perm": [int]})
def op_Transpose(imp, node, ins, attrs):
    x = imp.value(ins[0])
    perm = attrs.get("perm")
    at = {"perm": [int(p) for p in perm]} if perm is not None else {}
    return imp.emit("transpose", [x], node.output[0], **at)


@handles("Squeeze", inputs={7: (1, 1), 13: (1, 2)}, attrs={"axes": [int]}, dtypes="*i")
def op_Squeeze(imp, node, ins, attrs):
    x = imp.value(ins[0])
    shape = imp.shape[x]
    axes = node_axes(imp, ins, attrs, 13)
    if axes is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    axes = {axis(a, len(shape), "axes entry") for a in axes}
    if any(shape[a] != 1 for a in axes):
        raise Unsupported(f"squeezing an axis of size other than 1 ({shape})")
    return _reshape_to(
        imp, x, [d for i, d in enumerate(shape) if i not in axes], node.output[0]
    )


@handles(
    "Unsqueeze",
    inputs={7: (1, 1), 13: (2, 2)},
    attrs={"axes": [int]},
    required={"axes": range(7, 13)},
    dtypes="*i",
)
def op_Unsqueeze(imp, node, ins, attrs):
    x = imp.value(ins[0])
    shape = list(imp.shape[x])
    axes = node_axes(imp, ins, attrs, 13)
    if axes is None:
        raise Unsupported("Unsqueeze without axes")
    nd = len(shape) + len(axes)
    axes = sorted(axis(a, nd, "axes entry") for a in axes)
    if len(set(axes)) != len(axes):
        raise SpecError(f"axes {axes} repeat an axis")
    for a in axes:
        shape.insert(a, 1)
    return _reshape_to(imp, x, shape, node.output[0])


@handles(
    "Pad",
    inputs={7: (1, 1), 11: (2, 3), 18: (2, 4)},
    attrs={"mode": str, "pads": [int], "value": float},
    required={"pads": range(7, 11)},
    dtypes="fifi",
)
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
        pads = imp.ints(ins[1], "pads")
        value = (
            float(imp.scalar(ins[2], "constant_value"))
            if len(ins) > 2 and ins[2]
            else 0.0
        )
        if len(ins) > 3 and ins[3]:
            axes = [axis(a, nd, "axes entry") for a in imp.ints(ins[3], "axes")]
            k = len(axes)
            if len(pads) != 2 * k or len(set(axes)) != k:
                raise SpecError(
                    f"pads {pads} do not fit axes {axes}: two pads per axis, "
                    "each axis once"
                )
            full = [0] * (2 * nd)
            for j, a in enumerate(axes):
                full[a], full[a + nd] = pads[j], pads[j + k]
            pads = full
    return imp.emit("pad", [x], node.output[0], pads=pads, value=value)


@handles(
    "Constant",
    fold=False,
    inputs=(0, 0),
    attrs={
        "sparse_value": SPARSE_TENSOR,
        "value": TENSOR,
        "value_float": float,
        "value_floats": [float],
        "value_int": int,
        "value_ints": [int],
        "value_string": str,
        "value_strings": [str],
    },
    required={"value": range(7, 11)},
)
def op_Constant(imp, node, ins, attrs):
    if len(attrs) != 1:
        raise SpecError(
            f"a Constant has exactly one value attribute, this one has {sorted(attrs)}"
        )
    if "value" in attrs:
        v = imp.array(attrs["value"], "its attribute 'value'")
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


@handles("ConstantOfShape", fold=False, attrs={"value": TENSOR}, dtypes="i")
def op_ConstantOfShape(imp, node, ins, attrs):
    v = attrs.get("value")
    value = (
        imp.array(v, "its attribute 'value'").reshape(-1)
        if v is not None
        else np.zeros(1, np.float32)
    )
    if value.size != 1:
        raise SpecError(f"its attribute 'value' must hold one value, not {value.size}")
    out = node.output[0]
    if onnx_logic.run_time_int(imp, ins[0]):  # sizes computed at run time
        return _constant_of_run_time_shape(imp, ins[0], value, out)
    shape = imp.ints(ins[0], "its shape")
    if any(s < 0 for s in shape):
        raise SpecError(f"shape {shape} has a negative size")
    if value.dtype.kind != "f":
        if int(np.prod(shape, dtype=np.float64)) > LARGEST_FOLD:
            raise Unsupported(
                f"an integer tensor of shape {shape} is too large to fold"
            )
        imp.t[out] = ("const", np.full(shape, value[0], dtype=value.dtype))
        return None
    if imp.frozen(out):
        why = ("constant", "--freeze")
    elif imp.forced(out):
        why = ("param", "--trainable")
    elif out not in imp.fills_reached:
        why = ("constant", "no gradient reaches it")
    else:
        why = ("param", "a gradient reaches it (a ConstantOfShape fill)")
    imp.why[out] = why
    if why[0] == "constant":
        return imp.emit("constant", [], out, shape=shape, fill=float(value[0]))
    imp.add_param(out, shape, float(value[0]))
    return out


def _constant_of_run_time_shape(imp, name, value, out):
    """``ConstantOfShape`` of sizes computed at run time (a shape of dynamic axes):
    their values must be known at compile time (the module checks them)."""
    shape = onnx_logic.sizes(imp, name, "its shape")
    if any(isinstance(d, int) and d < 0 for d in shape):
        raise SpecError(f"shape {shape} has a negative size")
    kind = value.dtype.kind
    fill = bool(value[0]) * 1.0 if kind == "b" else value[0].item()
    if kind in "iu":
        fill = int(fill)
    nid = imp.emit("constant_of_shape", [imp.t[name][1]], out, shape=shape, value=fill)
    if kind in "iu":
        imp.is_int.add(nid)
    if kind == "b":
        imp.is_mask.add(nid)
    return nid


@handles("Shape", fold=False, attrs={"end": int, "start": int}, dtypes="*")
def op_Shape(imp, node, ins, attrs):
    shape = imp.dims_of(ins[0])
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    part = shape[start : int(end) if end is not None else None]
    if not all(isinstance(d, int) for d in part):  # dynamic axes: read at run time
        values = np.array(list(part), dtype=object)
        return onnx_logic.int_result(imp, values, node.output[0])
    imp.t[node.output[0]] = ("const", np.asarray(part, dtype=np.int64))


@handles("Gather", inputs=(2, 2), attrs={"axis": int}, dtypes="ni")
def op_Gather(imp, node, ins, attrs):
    at = int(attrs.get("axis", 0))
    data = imp.value(ins[0])
    kind, idx = imp.t[ins[1]]
    if data in imp.is_int:  # entries of a shape of dynamic axes, a sequence length
        entries = onnx_logic.int_values(imp, ins[0])
        if kind == "node" or entries is None or entries.ndim != 1:
            raise Unsupported("gathering from an int64 tensor computed at run time")
        size = len(entries)
        idx = np.asarray(idx)
        if idx.size and not (-size <= idx.min() and idx.max() < size):
            raise SpecError(f"indices {idx.tolist()} are out of range for {size}")
        picked = np.array(entries[idx % max(size, 1)], dtype=object)
        if onnx_logic.known(picked):
            return onnx_logic.int_result(imp, picked, node.output[0])
        raise Unsupported("gathering from an int64 tensor computed at run time")
    if kind == "node":
        if idx not in imp.is_int:
            raise Unsupported("indices must be int64")
        return imp.emit("gather", [data, idx], node.output[0], axis=at)
    idx = np.asarray(idx)
    shape = imp.shape[data]
    at = axis(at, len(shape))
    size = shape[at]
    if isinstance(size, int):
        if idx.size and not (-size <= idx.min() and idx.max() < size):
            raise SpecError(
                f"indices {idx.tolist()} are out of range for axis {at} of size {size}"
            )
        idx = idx % max(size, 1)
    elif idx.size and idx.min() < 0:
        raise Unsupported("negative indices into a symbolic axis")
    if idx.ndim == 0:
        i = int(idx)
        s = imp.emit(
            "slice",
            [data],
            f"{node.output[0]}/slice",
            axis=at,
            start=i,
            stop=i + 1,
        )
        return _reshape_to(
            imp, s, [d for k, d in enumerate(shape) if k != at], node.output[0]
        )
    flat = idx.reshape(-1)
    if flat.size and np.all(np.diff(flat) == 1) and idx.ndim == 1:
        return imp.emit(
            "slice",
            [data],
            node.output[0],
            axis=at,
            start=int(flat[0]),
            stop=int(flat[-1]) + 1,
        )
    if not isinstance(size, int):
        raise Unsupported("constant indices other than a range into a symbolic axis")
    # N-D, repeated or scattered (position ids, token-type zeros): a take
    return imp.emit("take", [data], node.output[0], indices=idx.tolist(), axis=at)


@handles(
    "Slice",
    inputs={7: (1, 1), 10: (3, 5)},
    attrs={"axes": [int], "ends": [int], "starts": [int]},
    required={"ends": range(7, 10), "starts": range(7, 10)},
    dtypes="niiii",
)
def op_Slice(imp, node, ins, attrs):
    x = imp.value(ins[0])
    shape = imp.shape[x]
    if imp.opset < 10:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes = list(attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = imp.ints(ins[1], "starts")
        ends = imp.ints(ins[2], "ends")
        axes = (
            imp.ints(ins[3], "axes")
            if len(ins) > 3 and ins[3]
            else list(range(len(starts)))
        )
        steps = (
            imp.ints(ins[4], "steps") if len(ins) > 4 and ins[4] else [1] * len(starts)
        )
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise SpecError(
            f"starts {starts}, ends {ends}, axes {axes} and steps {steps} "
            "differ in length"
        )
    axes = [axis(a, len(shape), "axes entry") for a in axes]
    if len(set(axes)) != len(axes):
        raise SpecError(f"axes {axes} repeat an axis")
    if x in imp.is_int:  # entries of a shape of dynamic axes
        entries = onnx_logic.int_values(imp, ins[0])
        if not onnx_logic.known(entries) or entries.ndim != 1 or len(axes) != 1:
            raise Unsupported("slicing an int64 tensor computed at run time")
        if steps[0] < 1:
            raise Unsupported("negative steps")
        part = entries[slice(starts[0], ends[0], steps[0])]
        return onnx_logic.int_result(imp, part, node.output[0])
    out = x
    todo = list(zip(axes, starts, ends, steps))
    for k, (at, start, end, step) in enumerate(todo):
        if step == 0:
            raise SpecError("a step of 0")
        if step < 1:
            raise Unsupported("negative steps")
        size = shape[at]
        if isinstance(size, int):
            start, end, step = slice(start, end, step).indices(size)
            if start == 0 and end >= size and step == 1:
                continue  # the whole axis
        name = node.output[0] if k == len(todo) - 1 else f"{node.output[0]}/{k}"
        out = imp.emit("slice", [out], name, axis=at, start=start, stop=end, step=step)
    return out


@handles("Size", fold=False, dtypes="*")
def op_Size(imp, node, ins, attrs):
    shape = imp.dims_of(ins[0])
    if not all(isinstance(d, int) for d in shape):  # dynamic axes: read at run time
        values = np.array(dims.prod(shape), dtype=object)
        return onnx_logic.int_result(imp, values, node.output[0])
    imp.t[node.output[0]] = ("const", np.asarray(int(np.prod(shape)), np.int64))


@handles(
    "CastLike",
    inputs=(2, 2),
    attrs={"round_mode": str, "saturate": bool},
    dtypes="*",
)
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


@handles(
    "Cast",
    attrs={"round_mode": str, "saturate": bool, "to": int},
    required=("to",),
    dtypes="*",
)
def op_Cast(imp, node, ins, attrs):
    _, v = imp.t[ins[0]]
    to = attrs.get("to")
    floats = (
        imp.onnx.TensorProto.FLOAT,
        imp.onnx.TensorProto.DOUBLE,
        imp.onnx.TensorProto.FLOAT16,
    )
    if v in imp.is_int:  # an int64 computed at run time (an attention_mask input)
        if to == imp.onnx.TensorProto.BOOL:  # x ≠ 0, compared in int64
            nid = imp.emit("int_compare", [v], node.output[0], test="!=", value=0)
            imp.is_mask.add(nid)
            return nid
        if to in floats:
            return imp.emit("int_to_float", [v], node.output[0])
        if to == imp.onnx.TensorProto.INT64:
            return v
        raise Unsupported("casts of run-time int64 tensors to integer types but int64")
    if to == imp.onnx.TensorProto.BOOL:  # x ≠ 0, as a 0/1 mask
        if v in imp.is_mask:
            return v
        nid = imp.emit("logical_not", [v], f"{node.output[0]}/is0")
        nid = imp.emit("logical_not", [nid], node.output[0])
        imp.is_mask.add(nid)
        return nid
    if to not in floats:
        raise Unsupported("casts of run-time tensors to integer types")
    if v in imp.is_mask:  # a 0/1 mask read as numbers: the same values
        return imp.emit("reshape", [v], node.output[0], shape=list(imp.shape[v]))
    return v  # float to float
