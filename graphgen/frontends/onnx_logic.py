"""ONNX handlers: comparisons, boolean logic, ``Where``, ``IsNaN``, ``Expand``,
``CumSum``, ``Trilu``, ``GatherElements`` and ``GatherND`` at run time, and int64
tensors computed at run time cast and compared (issue 15).

A boolean tensor computed at run time is a 0/1 mask of the model's float type
(:mod:`graphgen.ops.logic`); the importer keeps the ids of such nodes in
``imp.is_mask``. A boolean tensor known at compile time (a causal mask the exporter
folded) becomes a constant 0/1 array where a run-time op reads it; ops on known values
only never reach these handlers: they are folded first.
"""

from __future__ import annotations

import numpy as np

from .. import dims, ops
from ..errors import SpecError
from .onnx_ops import Unsupported, axis, handles


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
    ints = [is_int(imp, i) for i in ins[1:]]
    if any(ints):  # a choice between int64 tensors is int64 (where's dtype rule)
        if not all(ints):
            raise Unsupported("Where choosing between int64 and float tensors")
        args = [int_arg(imp, i) for i in ins[1:]]
        return emit_int(imp, "where", [cond, *args], node.output[0])
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

# ONNX comparison -> the int64 test it makes, and that test with its operands swapped
INT_TESTS = {
    "Equal": ("==", "=="),
    "Less": ("<", ">"),
    "Greater": (">", "<"),
    "GreaterOrEqual": (">=", "<="),
    "LessOrEqual": ("<=", ">="),
}

for _onnx_op in COMPARISONS:

    @handles(_onnx_op, inputs=(2, 2), dtypes="*")
    def op_compare(imp, node, ins, attrs):
        runs = [run_time_int(imp, i) for i in ins]
        if any(runs):
            return _compare_ints(imp, node, ins, runs)
        if any(imp.t[i][0] == "const" and imp.const(i).dtype.kind in "iu" for i in ins):
            raise Unsupported("comparing an integer constant with float data")
        op, swap = COMPARISONS[node.op_type]
        args = [
            mask(imp, i, f"input {k}") if is_mask(imp, i) else imp.value(i)
            for k, i in enumerate(ins)
        ]
        if swap:
            args.reverse()
        return _emit_mask(imp, op, args, node.output[0])


def _compare_ints(imp, node, ins, runs):
    """An int64 tensor computed at run time (an ``attention_mask``) compared exactly,
    in int64, with integers known at compile time: a 0/1 mask."""
    if all(runs):  # both int64 at run time: compared exactly, in int64
        test = INT_TESTS[node.op_type][0]
        a, b = (imp.t[i][1] for i in ins)
        return _emit_mask(imp, "compare_ints", [a, b], node.output[0], test=test)
    k = runs.index(True)
    other = imp.const(ins[1 - k])
    if other is None or other.dtype.kind not in "iub":
        raise Unsupported("comparing an int64 tensor with float data")
    test = INT_TESTS[node.op_type][k]  # x on the right: the swapped test
    x = imp.t[ins[k]][1]
    value = other.astype(np.int64)
    return _emit_mask(
        imp,
        "int_compare",
        [x],
        node.output[0],
        test=test,
        value=int(value) if value.ndim == 0 else value.tolist(),
    )


@handles("Expand", inputs=(2, 2), dtypes="*i")
def op_Expand(imp, node, ins, attrs):
    """``Expand(x, shape)``: ``x`` broadcast against ``shape`` (both ways: a 1 in
    ``shape`` keeps ``x``'s size)."""
    target = sizes(imp, ins[1], "shape")  # symbolic: a shape of dynamic axes
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


def run_time_int(imp, name):
    """Whether tensor ``name`` is an int64 value computed at run time."""
    kind, v = imp.t[name]
    return kind == "node" and v in imp.is_int


@handles(
    "CumSum", inputs=(2, 2), attrs={"exclusive": bool, "reverse": bool}, dtypes="*i"
)
def op_CumSum(imp, node, ins, attrs):
    """``CumSum(x, axis)``: running sums of float data along an axis known at compile
    time."""
    if run_time_int(imp, ins[0]) or is_mask(imp, ins[0]):
        raise Unsupported("running sums of integer or bool tensors at run time")
    x = imp.value(ins[0])
    rank = len(imp.shape_of(x))
    if rank == 0:
        raise SpecError("CumSum's input must have rank >= 1, not a scalar")
    at = axis(imp.scalar(ins[1], "CumSum's axis"), rank, "CumSum's axis")
    return imp.emit(
        "cumsum",
        [x],
        node.output[0],
        axis=at,
        exclusive=bool(attrs.get("exclusive", 0)),
        reverse=bool(attrs.get("reverse", 0)),
    )


@handles("GatherElements", inputs=(2, 2), attrs={"axis": int}, dtypes="fi")
def op_GatherElements(imp, node, ins, attrs):
    """``GatherElements(data, indices)``: ``data`` at run-time int64 indices of its rank
    (a gradient flows to ``data``: scatter-add, repeated indices accumulate)."""
    if not run_time_int(imp, ins[1]):
        raise Unsupported("indices known at compile time while the data is not")
    data = imp.value(ins[0])
    rank = len(imp.shape_of(data))
    at = axis(attrs.get("axis", 0), rank, "GatherElements' axis")
    return imp.emit(
        "gather_elements", [data, imp.t[ins[1]][1]], node.output[0], axis=at
    )


@handles("Trilu", inputs=(1, 2), attrs={"upper": bool}, dtypes="*i")
def op_Trilu(imp, node, ins, attrs):
    """``Trilu(x, k)``: the upper (lower) triangle of the last two axes from diagonal
    ``k`` (known at compile time) on. Float data, int64 and masks keep their kind."""
    k = int(imp.scalar(ins[1], "Trilu's k")) if len(ins) > 1 else 0
    upper = bool(attrs.get("upper", 1))
    was_mask, was_int = is_mask(imp, ins[0]), run_time_int(imp, ins[0])
    if was_mask:
        x = mask(imp, ins[0], "Trilu's input")
    elif was_int:
        x = imp.t[ins[0]][1]
    else:
        x = imp.value(ins[0])
    if len(imp.shape_of(x)) < 2:
        raise SpecError(f"Trilu's input must have rank >= 2, not {imp.shape_of(x)}")
    nid = imp.emit("trilu", [x], node.output[0], k=k, upper=upper)
    if was_mask:
        imp.is_mask.add(nid)
    if was_int:
        imp.is_int.add(nid)
    return nid


@handles("GatherND", inputs=(2, 2), attrs={"batch_dims": int}, dtypes="fi")
def op_GatherND(imp, node, ins, attrs):
    """``GatherND(data, indices)``: ``data`` at run-time int64 index tuples (a gradient
    flows to ``data``: scatter-add, repeated indices accumulate)."""
    if not run_time_int(imp, ins[1]):
        raise Unsupported("indices known at compile time while the data is not")
    data = imp.value(ins[0])
    return imp.emit(
        "gather_nd",
        [data, imp.t[ins[1]][1]],
        node.output[0],
        batch_dims=int(attrs.get("batch_dims", 0)),
    )


# ------------------------------------------------ int64 arithmetic at run time
# A run-time int64 tensor of rank <= 1 (a sequence length, a shape of dynamic axes)
# has its entries tracked as sizes (``imp.int_values``): integers, the module's symbolic
# sizes, or a made-up symbol per entry known only at run time. Sizes computed from them
# are known where those cancel (``Range(n, n + 8)`` has 8 entries); entries free of
# made-up symbols are written as an ``int_constant`` the module computes from its sizes.

UNKNOWN = "_run_time_value_"  # the made-up symbols' prefix
LARGEST_TRACKED = 1024  # entries of a tensor whose values are tracked


def int_values(imp, name):
    """The entries of integer tensor ``name`` as an object array of sizes (its shape),
    or None when not tracked (rank > 1, a symbolic length, too large, float)."""
    kind, v = imp.t[name]
    if kind == "const":
        arr = np.asarray(v)
        if arr.dtype.kind not in "iu" or arr.ndim > 1 or arr.size > LARGEST_TRACKED:
            return None
        return np.array([int(x) for x in arr.reshape(-1)], dtype=object).reshape(
            arr.shape
        )
    if v in imp.int_values:
        return imp.int_values[v]
    shape = imp.shape[v]
    if (
        v not in imp.is_int
        or len(shape) > 1
        or not all(isinstance(d, int) for d in shape)
    ):
        return None
    if int(np.prod(shape)) > LARGEST_TRACKED:
        return None
    made = [f"{UNKNOWN}{imp.unknowns + k}" for k in range(int(np.prod(shape)))]
    imp.unknowns += len(made)
    imp.int_values[v] = np.array(made, dtype=object).reshape(shape)
    return imp.int_values[v]


def known(values):
    """Whether tracked entries are all known at compile time (sizes, no run-time one)."""
    return values is not None and not any(
        s.startswith(UNKNOWN) for d in values.reshape(-1) for s in dims.symbols(d)
    )


def known_size(d, what):
    """Size ``d`` if it is known at compile time; else Unsupported saying so."""
    if any(s.startswith(UNKNOWN) for s in dims.symbols(d)):
        raise Unsupported(
            f"{what} depends on int64 values known only at run time; graphgen needs "
            "it known at compile time"
        )
    return d


def sizes(imp, name, what):
    """A 1-D integer tensor as a list of sizes: known at compile time, or computed at
    run time from sizes the module knows (a shape of dynamic axes)."""
    if imp.t[name][0] == "const":
        return imp.ints(name, what)
    entries = int_values(imp, name)
    if entries is None or entries.ndim != 1:
        raise Unsupported(f"{what} must be known at compile time")
    return [known_size(d, what) for d in entries]


def emit_int(imp, op, args, out, values=None, **attrs):
    """Emit an op that makes int64; record its tracked entries."""
    nid = imp.emit(op, args, out, **attrs)
    imp.is_int.add(nid)
    if values is not None:
        imp.int_values[nid] = values
    return nid


def int_result(imp, values, out):
    """An int64 tensor whose entries are known at compile time: an ``int_constant``
    (its symbolic sizes read at run time)."""
    return emit_int(imp, "int_constant", [], out, values, value=values.tolist())


def int_arg(imp, name):
    """The graph argument for integer tensor ``name``: its run-time node, or an
    ``int_constant`` of its known value."""
    kind, v = imp.t[name]
    if kind == "node":
        return v
    arr = np.asarray(v)
    if arr.size > LARGEST_TRACKED:
        raise Unsupported(f"an integer constant of {arr.size} entries used at run time")
    return emit_int(
        imp, "int_constant", [], name, int_values(imp, name), value=arr.tolist()
    )


def is_int(imp, name):
    """Whether tensor ``name`` is an integer (run-time int64 or a known integer)."""
    kind, v = imp.t[name]
    if kind == "const":
        return np.asarray(v).dtype.kind in "iu"
    return v in imp.is_int


# fn -> how sizes compute it (division only of integers)
_SIZE_MATH = {"add": dims.add, "sub": dims.sub, "mul": dims.mul}


def _entries(fn, a, b):
    """The entries of ``a fn b`` from tracked entries, or None."""
    if a is None or b is None:
        return None
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        return None
    if fn in _SIZE_MATH:
        out = np.frompyfunc(_SIZE_MATH[fn], 2, 1)(a, b)  # a 0-d result: its entry
        return np.array(out, dtype=object)
    if all(isinstance(x, int) for x in [*a.reshape(-1), *b.reshape(-1)]):
        if any(x == 0 for x in b.reshape(-1)):
            return None  # the module's division by 0 says what it does
        out = ops.logic.INT_MATH[fn][0](a.astype(np.int64), b.astype(np.int64))
        return np.array([int(x) for x in out.reshape(-1)], dtype=object).reshape(
            out.shape
        )
    return None


def int_math(imp, node, ins, fn):
    """``a fn b`` of integer tensors, one of them computed at run time: known entries
    fold into an ``int_constant``, others run as ``int_math``."""
    if not all(is_int(imp, i) for i in ins):
        raise Unsupported("arithmetic between an int64 tensor and float data")
    values = _entries(fn, *(int_values(imp, i) for i in ins))
    if known(values):
        return int_result(imp, values, node.output[0])
    args = [int_arg(imp, i) for i in ins]
    return emit_int(imp, "int_math", args, node.output[0], values, fn=fn)


@handles("Mod", inputs=(2, 2), attrs={"fmod": bool}, dtypes="n")
def op_Mod(imp, node, ins, attrs):
    """``Mod(a, b)`` of integers: the sign of ``b`` (``fmod=0``, Python's ``%``) or of
    ``a`` (``fmod=1``, C's ``fmod``)."""
    if not any(run_time_int(imp, i) for i in ins):
        raise Unsupported("Mod of float tensors at run time")
    return int_math(imp, node, ins, "fmod" if attrs.get("fmod", 0) else "mod")


def _scalar_entry(values, what):
    if values is None or values.size != 1:
        raise Unsupported(f"{what} is not a tracked int64 scalar")
    return values.reshape(-1)[0]


# stash_type (opset 27) matters only for float16 and bfloat16 ranges
@handles("Range", inputs=(3, 3), attrs={"stash_type": int}, dtypes="*")
def op_Range(imp, node, ins, attrs):
    """``Range(start, limit, delta)`` of int64 scalars computed at run time: its length
    must be known at compile time (a delta known then, and ends whose difference is:
    ``Range(n, n + 8)``, ``Range(0, seq)`` of a dynamic axis ``seq``); the module
    checks it."""
    if not all(is_int(imp, i) for i in ins):
        raise Unsupported(
            "a Range of floats computed at run time (its length would be known only "
            "then); graphgen needs it known at compile time"
        )
    for name, i in zip(("start", "limit", "delta"), ins):
        if len(imp.dims_of(i)) != 0:
            raise SpecError(f"Range's {name} must be a scalar, not {imp.dims_of(i)}")
    start, limit, delta = (
        _scalar_entry(int_values(imp, i), w)
        for i, w in zip(ins, ("start", "limit", "delta"))
    )
    delta = known_size(delta, "its delta")
    if not isinstance(delta, int):
        raise Unsupported("a delta that is a symbolic size")
    if delta == 0:
        raise SpecError("Range's delta is 0")
    diff = dims.sub(limit, start)
    if isinstance(diff, int):
        size = max(0, -(-diff // delta))  # ceil(diff / delta), at least 0
    else:
        # limit − start symbolic: delta must divide it (a negative length fails the
        # module's check)
        size = dims.exact_div(diff, delta) if delta > 0 else None
        if size is None:
            raise Unsupported(
                f"its length ({diff}) / {delta} is not a size; graphgen needs it "
                "known at compile time"
            )
    size = known_size(size, "its length")
    values = None
    if isinstance(size, int) and size <= LARGEST_TRACKED:
        values = np.array(
            [dims.add(start, k * delta) for k in range(size)], dtype=object
        )
        if known(values):
            return int_result(imp, values, node.output[0])
    args = [int_arg(imp, i) for i in ins]
    return emit_int(imp, "range", args, node.output[0], values, size=size)
