"""Masks and selection: the boolean side of exported transformers (issue 15).

graphgen computes in one float dtype, so a boolean tensor is a 0/1 *mask* of that dtype,
as the comparisons ``ge``, ``lt`` and ``eq`` already make. The ops here take and make
such masks (any nonzero entry reads as true):

- ``where(cond, a, b)``: ``a`` where ``cond`` is true, else ``b`` (ONNX ``Where``; an
  additive or ``-inf`` attention mask). Gradients flow to ``a`` and ``b``, none to
  ``cond``;
- ``is_nan(x)``: 1 where ``x`` is NaN (the guard exporters put after a softmax);
- ``logical_not``, ``logical_and``, ``logical_or``, ``logical_xor``: masks of masks;
- ``take(x, indices=..., axis=...)``: ``x`` at constant (N-D, repeated, negative)
  indices, the ONNX ``Gather`` of position ids or token-type zeros; its adjoint
  ``take_add`` adds each slice back where it was read from;
- ``cumsum(x, axis=..., exclusive=..., reverse=...)``: running sums along an axis (ONNX
  ``CumSum``, position ids from an attention mask); its adjoint is the cumsum that runs
  the other way;
- ``int_to_float(x)``: an int64 tensor computed at run time (an ``attention_mask``
  input) as numbers of the float dtype (ONNX ``Cast``); ``int_compare(x, test=...,
  value=...)``: the 0/1 mask of ``x <test> value`` compared exactly in int64 against a
  constant (``Equal(attention_mask, 0)``, ``Cast`` to bool: ``x != 0``). No gradient
  flows into int64 values;
- int64 results (their ``dtype`` rule; exact, no gradient through them):
  ``int_math(a, b, fn=...)``, ``add``/``sub``/``mul``, ``div`` (rounded toward 0, ONNX
  ``Div``), ``floordiv``, ``mod`` (the sign of ``b``, ONNX ``Mod``) and ``fmod`` (the
  sign of ``a``, ``Mod`` with ``fmod=1``); ``int_constant(value=...)``: integers or the
  module's symbolic sizes (ONNX ``Shape`` of dynamic axes); ``range(start, limit,
  delta, size=...)`` and ``constant_of_shape(sizes, shape=..., value=...)`` (int64
  when ``value`` is an integer). A length or shape computed at run time is declared
  by its attribute (an integer or a symbolic size: the graph's shapes need it), and
  the module refuses a run-time value that differs, naming the node;
  ``compare_ints(a, b, test=...)``: the 0/1 mask of two int64 tensors compared;
- ``trilu(x, k=..., upper=...)``: the upper (or lower) triangle of the last two axes
  from diagonal ``k`` on, zeros elsewhere (ONNX ``Trilu``, causal masks); linear, its
  adjoint is itself; int64 stays int64;
- ``gather_elements(data, indices, axis=...)``: ``data`` at run-time int64 indices of the
  same rank (ONNX ``GatherElements``); its adjoint ``scatter_add_elements`` adds each
  entry back where it was read from (repeated indices accumulate);
- ``gather_nd(data, indices, batch_dims=...)``: ``data`` at run-time int64 index
  tuples (ONNX ``GatherND``); its adjoint ``scatter_add_nd`` adds each slice back.

The ONNX comparisons map onto ``eq``, ``lt`` and ``ge`` with their arguments in either
order (``Greater(a, b)`` is ``lt(b, a)``, ``LessOrEqual(a, b)`` is ``ge(b, a)``).
"""

from __future__ import annotations

import numpy as np

from .. import dims
from ..errors import ShapeError
from .base import (
    HELPERS,
    REQUIRED,
    Op,
    broadcast_rule,
    broadcast_shapes,
    int64,
    no_tangent,
    norm_axis,
    register,
    same_op,
    same_shape,
    tangent_terms,
)

HELPERS.update(
    {
        "cumsum": (),
        "gather_elements": (),
        "scatter_add_elements": (),
        "nd_at": (),
        "gather_nd": ("nd_at",),
        "scatter_add_nd": ("nd_at",),
        "int_div": (),
        "range": (),
        "constant_of_shape": (),
    }
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
        elementwise=True,
        # a choice between int64 tensors is int64 (ONNX Where of int64 branches)
        dtype=lambda d, a: "int64" if d[1:] == ("int64", "int64") else None,
        int_like=(1, 2),
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


# ----------------------------------------------------- gathers at constant indices


def _norm_take(in_shapes, attrs):
    x = in_shapes[0]
    if not x:
        raise ShapeError("take needs an argument of rank >= 1, got a scalar")
    axis = norm_axis(attrs["axis"], len(x))
    size = x[axis]
    if not isinstance(size, int):
        raise ShapeError(f"take's axis {axis} has the symbolic size {size!r}")
    try:
        idx = np.asarray(attrs["indices"])
    except ValueError:
        idx = np.asarray([], dtype=object)
    if idx.dtype.kind not in "iu" and not (idx.dtype.kind == "f" and idx.size == 0):
        raise ShapeError(
            f"attribute indices must be (nested lists of) integers, got {attrs['indices']!r}"
        )
    idx = idx.astype(np.int64)
    if idx.size and not (-size <= idx.min() and idx.max() < size):
        raise ShapeError(
            f"indices {idx.tolist()} are out of range for an axis of size {size}"
        )
    out = {"axis": axis, "indices": (idx % max(size, 1)).tolist()}
    if "dim" in attrs:
        out["dim"] = size
    return out


def _take_shape(in_shapes, attrs):
    x, axis = in_shapes[0], attrs["axis"]
    return tuple(x[:axis]) + np.shape(attrs["indices"]) + tuple(x[axis + 1 :])


def _take_add_impl(g, indices, axis, dim):
    idx = np.asarray(indices, dtype=np.int64)
    n = idx.ndim
    out = np.zeros(g.shape[:axis] + (dim,) + g.shape[axis + n :], g.dtype)
    rows = g.reshape(g.shape[:axis] + (idx.size,) + g.shape[axis + n :])
    np.add.at(np.moveaxis(out, axis, 0), idx.reshape(-1), np.moveaxis(rows, axis, 0))
    return out


def _norm_take_add(in_shapes, attrs):
    g, axis = in_shapes[0], attrs["axis"]
    idx = np.asarray(attrs["indices"], dtype=np.int64)
    dim = attrs["dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
        raise ShapeError(f"attribute dim must be a size, got {dim!r}")
    if idx.size and not (-dim <= idx.min() and idx.max() < dim):
        raise ShapeError(f"indices {idx.tolist()} are out of range for {dim} entries")
    if (
        len(g) < idx.ndim
        or not isinstance(axis, int)
        or not 0 <= axis <= len(g) - idx.ndim
    ):
        raise ShapeError(f"axis {axis!r} does not fit g of rank {len(g)}")
    return {"indices": (idx % max(dim, 1)).tolist()}


def _take_add_shape(in_shapes, attrs):
    g, axis = in_shapes[0], attrs["axis"]
    n = np.ndim(attrs["indices"])
    return tuple(g[:axis]) + (attrs["dim"],) + tuple(g[axis + n :])


register(
    Op(
        name="take",
        args=("x",),
        shape=_take_shape,
        impl=lambda x, indices, axis: np.take(
            x, np.asarray(indices, np.int64), axis=axis
        ),
        vjp=lambda b, c: [
            b.take_add(
                c.g,
                indices=c.attrs["indices"],
                axis=c.attrs["axis"],
                dim=c.in_shapes[0][c.attrs["axis"]],
            )
        ],
        jvp=same_op("take"),  # linear
        math="{y}[…, j, …] = {x}[…, {indices}[j], …] (j at axis {axis}; constant "
        "indices)",
        derivs=(
            (
                "{x}̄ = take_add({y}̄): each slice of {y}̄ added where it was read from "
                "(repeated indices accumulate)"
            ),
        ),
        attrs={"indices": REQUIRED, "axis": 0},
        normalize=_norm_take,
        category="indexing",
    )
)

register(
    Op(
        name="take_add",
        args=("g",),
        shape=_take_add_shape,
        impl=_take_add_impl,
        vjp=lambda b, c: [
            b.take(c.g, indices=c.attrs["indices"], axis=c.attrs["axis"])
        ],
        jvp=same_op("take_add"),  # linear
        math="{y} = zeros with {dim} entries along axis {axis}, {g}'s slices added at "
        "{indices} (the adjoint of take)",
        derivs=("{g}̄ = take({y}̄, {indices}) along axis {axis}",),
        attrs={"indices": REQUIRED, "axis": REQUIRED, "dim": REQUIRED},
        normalize=_norm_take_add,
        internal=True,
        category="indexing",
    )
)


# ------------------------------------------------------------------- running sums


def _norm_cumsum(in_shapes, attrs):
    x = in_shapes[0]
    if not x:
        raise ShapeError("cumsum needs an argument of rank >= 1, got a scalar")
    out = {"axis": norm_axis(attrs["axis"], len(x))}
    for flag in ("exclusive", "reverse"):
        if not isinstance(attrs[flag], bool):
            raise ShapeError(
                f"attribute {flag} must be true or false, got {attrs[flag]!r}"
            )
    return out


def _cumsum_impl(x, axis, exclusive, reverse):
    x = np.asarray(x)
    if reverse:
        x = np.flip(x, axis)
    y = np.cumsum(x, axis=axis)
    if exclusive:  # shifted by one: y[0] = 0, y[i] = x[0] + ... + x[i-1]
        y = np.concatenate(
            [np.zeros_like(np.take(y, [0], axis=axis)), np.delete(y, -1, axis=axis)],
            axis=axis,
        )
    return np.flip(y, axis) if reverse else y


register(
    Op(
        name="cumsum",
        args=("x",),
        shape=same_shape,
        impl=_cumsum_impl,
        # y_i = Σ_{j≤i} x_j, so x̄_j = Σ_{i≥j} ȳ_i: the same sum run the other way
        vjp=lambda b, c: [
            b.cumsum(
                c.g,
                axis=c.attrs["axis"],
                exclusive=c.attrs["exclusive"],
                reverse=not c.attrs["reverse"],
            )
        ],
        jvp=same_op("cumsum"),  # linear
        math="{y}[…, i, …] = Σ {x}[…, j, …] over j ≤ i along axis {axis}",
        math_when=tuple(
            (
                lambda a, e=e, r=r: (a.get("exclusive"), a.get("reverse")) == (e, r),
                "{y}[…, i, …] = Σ {x}[…, j, …] over " + j + " along axis {axis}",
            )
            for e, r, j in [
                (True, False, "j < i"),
                (False, True, "j ≥ i (from the end)"),
                (True, True, "j > i (from the end)"),
            ]
        ),
        derivs=("{x}̄ = cumsum({y}̄) along axis {axis}, run the other way",),
        attrs={"axis": REQUIRED, "exclusive": False, "reverse": False},
        normalize=_norm_cumsum,
        category="reduction",
    )
)


# --------------------------------------------------------- int64 at run time

_INT_REASON = "its only argument is int64"

register(
    Op(
        name="int_to_float",
        args=("x",),
        shape=same_shape,
        impl=lambda x: np.asarray(x).astype(np.float64),
        vjp=None,
        jvp_reason=_INT_REASON,
        math="{y} = {x} as numbers of the float dtype",
        derivs=("none (int64)",),
        int_args=(0,),
        domain=("labels",),
        category="unary",
        folds=False,
    )
)

# test -> the NumPy function that computes it (the template writes the operator)
INT_TESTS = {
    "==": np.equal,
    "!=": np.not_equal,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}


def _norm_int_compare(in_shapes, attrs):
    test = attrs["test"]
    if test not in INT_TESTS:
        raise ShapeError(
            f"attribute test must be one of {list(INT_TESTS)}, got {test!r}"
        )
    try:
        value = np.asarray(attrs["value"])
    except ValueError:
        value = np.asarray([], dtype=object)
    if value.dtype.kind not in "iu":
        raise ShapeError(
            f"attribute value must be (nested lists of) integers, got {attrs['value']!r}"
        )
    if broadcast_shapes(tuple(in_shapes[0]), value.shape) is None:
        raise ShapeError(
            f"value of shape {list(value.shape)} does not broadcast against x "
            f"{dims.fmt_shape(in_shapes[0])}"
        )
    return {"value": value.tolist()}


register(
    Op(
        name="int_compare",
        args=("x",),
        shape=lambda s, a: broadcast_shapes(tuple(s[0]), np.shape(a["value"])),
        impl=lambda x, test, value: _mask(
            INT_TESTS[test](np.asarray(x), np.asarray(value, np.int64)), np.float64
        ),
        vjp=None,
        jvp=no_tangent,
        jvp_reason=_MASK_REASON + "; its argument is int64",
        math="{y} = 1 where {x} {test} {value}, else 0 (compared in int64)",
        derivs=("none (int64)",),
        attrs={"test": REQUIRED, "value": REQUIRED},
        normalize=_norm_int_compare,
        int_args=(0,),
        domain=("labels",),
        category="binary",
        mask=True,
        folds=False,
    )
)


def _int_entries(value):
    """``value`` (nested lists of integers and symbolic sizes) as an object array."""
    try:
        arr = np.asarray(value, dtype=object)
    except ValueError:
        raise ShapeError(f"attribute value must be a (nested) list, got {value!r}")
    for v in arr.reshape(-1):
        _size_or_int(v)
    return arr


def _size_or_int(v):
    if isinstance(v, str):
        try:
            dims.poly(v)
            return v
        except (ValueError, TypeError):
            pass
    elif isinstance(v, int) and not isinstance(v, bool):
        return v
    raise ShapeError(
        f"attribute value's entries must be integers or symbolic sizes, got {v!r}"
    )


def _int_constant_impl(value):
    arr = np.asarray(value, dtype=object)
    if any(isinstance(v, str) for v in arr.reshape(-1)):
        raise ValueError(f"int_constant {value!r}: its symbolic sizes are not bound")
    return arr.astype(np.int64)


register(
    Op(
        name="int_constant",
        args=(),
        shape=lambda s, a: np.shape(_int_entries(a["value"])),
        impl=_int_constant_impl,
        vjp=None,
        jvp_reason="takes no arguments",
        math="{y} = {value} (int64)",
        attrs={"value": REQUIRED},
        normalize=lambda s, a: {"value": _int_entries(a["value"]).tolist()},
        category="shape",
        folds=False,
        dtype=int64,
    )
)


# ------------------------------------------------- int64 arithmetic at run time


def _int_div(a, b):
    """``a / b`` rounded toward zero (C, and ONNX ``Div`` on integers)."""
    q = np.floor_divide(a, b)
    return q + ((q < 0) & (q * b != a))


# fn -> (the NumPy function, how the math text writes it); division by 0 gives 0 (with
# NumPy's RuntimeWarning), as NumPy's integer division does
INT_MATH = {
    "add": (np.add, "{a} + {b}"),
    "sub": (np.subtract, "{a} − {b}"),
    "mul": (np.multiply, "{a} · {b}"),
    "div": (_int_div, "{a} / {b} rounded toward 0"),
    "floordiv": (np.floor_divide, "⌊{a} / {b}⌋"),
    "mod": (np.mod, "{a} mod {b}, with the sign of {b}"),
    "fmod": (np.fmod, "{a} mod {b}, with the sign of {a}"),
}


def _norm_int_math(in_shapes, attrs):
    if attrs["fn"] not in INT_MATH:
        raise ShapeError(
            f"attribute fn must be one of {list(INT_MATH)}, got {attrs['fn']!r}"
        )
    return {}


register(
    Op(
        name="int_math",
        args=("a", "b"),
        shape=broadcast_rule,
        impl=lambda a, b, fn: INT_MATH[fn][0](
            np.asarray(a, np.int64), np.asarray(b, np.int64)
        ),
        vjp=None,
        jvp_reason="int64 in, int64 out",
        math="{y} = {a} {fn} {b} in int64",
        math_when=tuple(
            (lambda a, fn=fn: a.get("fn") == fn, "{y} = " + text + " (int64)")
            for fn, (_, text) in INT_MATH.items()
        ),
        derivs=("none (int64)", "none (int64)"),
        attrs={"fn": REQUIRED},
        normalize=_norm_int_math,
        int_args=(0, 1),
        domain=("labels", "labels"),
        category="binary",
        folds=False,
        dtype=int64,
    )
)


def _norm_compare_ints(in_shapes, attrs):
    if attrs["test"] not in INT_TESTS:
        raise ShapeError(
            f"attribute test must be one of {list(INT_TESTS)}, got {attrs['test']!r}"
        )
    return {}


register(
    Op(
        name="compare_ints",
        args=("a", "b"),
        shape=broadcast_rule,
        impl=lambda a, b, test: _mask(
            INT_TESTS[test](np.asarray(a), np.asarray(b)), np.float64
        ),
        vjp=None,
        jvp=no_tangent,
        jvp_reason=_MASK_REASON + "; its arguments are int64",
        math="{y} = 1 where {a} {test} {b}, else 0 (compared in int64)",
        derivs=("none (int64)", "none (int64)"),
        attrs={"test": REQUIRED},
        normalize=_norm_compare_ints,
        int_args=(0, 1),
        domain=("labels", "labels"),
        category="binary",
        mask=True,
        folds=False,
    )
)


def _size(d, what):
    """A size attribute: an integer >= 0 or a symbolic size (a dimension expression)."""
    if isinstance(d, str):
        try:
            dims.poly(d)
            return d
        except (ValueError, TypeError):
            pass
    elif isinstance(d, int) and not isinstance(d, bool) and d >= 0:
        return d
    raise ShapeError(f"{what} must be a size or a symbolic size, got {d!r}")


def _norm_range(in_shapes, attrs):
    for name, s in zip(("start", "limit", "delta"), in_shapes):
        if tuple(s) != ():
            raise ShapeError(f"{name} must be a scalar, got {dims.fmt_shape(s)}")
    return {"size": _size(attrs["size"], "attribute size")}


def _range_impl(start, limit, delta, size):
    if int(delta) == 0:
        raise ValueError("range: delta is 0")
    y = np.arange(int(start), int(limit), int(delta), dtype=np.int64)
    if isinstance(size, int) and y.size != size:
        raise ValueError(f"range: {y.size} entries, not the {size} of attribute size")
    return y


register(
    Op(
        name="range",
        args=("start", "limit", "delta"),
        # its length is a run-time value: the graph takes it from attribute size (what
        # the importer proved, or the spec says), and the module checks it
        shape=lambda s, a: (a["size"],),
        impl=_range_impl,
        vjp=None,
        jvp_reason="int64 in, int64 out",
        math="{y} = {start}, {start} + {delta}, … short of {limit} ({size} entries, "
        "int64)",
        derivs=("none (int64)",) * 3,
        attrs={"size": REQUIRED},
        normalize=_norm_range,
        int_args=(0, 1, 2),
        domain=("labels",) * 3,
        category="shape",
        folds=False,
        dtype=int64,
    )
)


def _norm_constant_of_shape(in_shapes, attrs):
    shape, value = attrs["shape"], attrs["value"]
    if not isinstance(shape, (list, tuple)):
        raise ShapeError(f"attribute shape must be a list of sizes, got {shape!r}")
    shape = [_size(d, "attribute shape's entry") for d in shape]
    if tuple(in_shapes[0]) != (len(shape),):
        raise ShapeError(
            f"sizes {dims.fmt_shape(in_shapes[0])} must hold one entry per axis of "
            f"shape {shape}, as a 1-D tensor"
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ShapeError(f"attribute value must be a number, got {value!r}")
    return {"shape": shape}


def _constant_of_shape_impl(sizes, shape, value):
    sizes = tuple(int(s) for s in np.asarray(sizes))
    if all(isinstance(d, int) for d in shape) and sizes != tuple(shape):
        raise ValueError(f"constant_of_shape: sizes {list(sizes)}, not {shape}")
    return np.full(sizes, value, dtype=np.int64 if isinstance(value, int) else None)


register(
    Op(
        name="constant_of_shape",
        args=("sizes",),
        # the sizes are run-time values: the graph takes the shape from attribute
        # shape, and the module checks them against it
        shape=lambda s, a: tuple(a["shape"]),
        impl=_constant_of_shape_impl,
        vjp=None,
        jvp_reason="its only argument is int64",
        math="{y} = {value} in every entry, of shape {sizes} (compiled for {shape})",
        derivs=("none (int64)",),
        attrs={"shape": REQUIRED, "value": 0.0},
        normalize=_norm_constant_of_shape,
        int_args=(0,),
        domain=("labels",),
        category="shape",
        folds=False,
        # an integer value makes int64 (ONNX ConstantOfShape of an int64 tensor)
        dtype=lambda in_dtypes, a: "int64" if isinstance(a["value"], int) else None,
    )
)


# --------------------------------------------------------------------- triangles


def _norm_trilu(in_shapes, attrs):
    if len(in_shapes[0]) < 2:
        raise ShapeError(
            f"trilu needs an argument of rank >= 2, got {dims.fmt_shape(in_shapes[0])}"
        )
    k, upper = attrs["k"], attrs["upper"]
    if isinstance(k, bool) or not isinstance(k, int):
        raise ShapeError(f"attribute k must be an integer, got {k!r}")
    if not isinstance(upper, bool):
        raise ShapeError(f"attribute upper must be true or false, got {upper!r}")
    return {}


register(
    Op(
        name="trilu",
        args=("x",),
        shape=same_shape,
        impl=lambda x, k, upper: np.triu(x, k) if upper else np.tril(x, k),
        # linear and its own adjoint: y = M ⊙ x for a fixed 0/1 triangle M
        vjp=lambda b, c: [b.trilu(c.g, **c.attrs)],
        jvp=same_op("trilu"),
        math="{y}[…, i, j] = {x}[…, i, j] where j − i ≥ {k}, else 0 (upper)",
        math_when=(
            (
                lambda a: a.get("upper") is False,
                "{y}[…, i, j] = {x}[…, i, j] where j − i ≤ {k}, else 0 (lower)",
            ),
        ),
        derivs=("{x}̄ = {y}̄ on the same triangle, 0 elsewhere",),
        attrs={"k": 0, "upper": True},
        normalize=_norm_trilu,
        category="shape",
        keeps_int=True,
    )
)


# ------------------------------------------------- gathers at run-time indices


def _elements_at(indices, axis):
    """The index tuple that reads entry ``[i0, ..., indices[i], ...]`` of an array for
    each position ``i`` of ``indices``."""
    at = list(np.indices(np.shape(indices), sparse=True))
    at[axis] = np.asarray(indices)
    return tuple(at)


def _norm_gather_elements(in_shapes, attrs):
    data, idx = in_shapes
    if not data:
        raise ShapeError("gather_elements needs data of rank >= 1, got a scalar")
    if len(idx) != len(data):
        raise ShapeError(
            f"indices {dims.fmt_shape(idx)} must have the rank of data "
            f"{dims.fmt_shape(data)}"
        )
    axis = norm_axis(attrs["axis"], len(data))
    for i, (d, k) in enumerate(zip(data, idx)):
        if i == axis or d == k:
            continue
        if not (isinstance(d, int) and isinstance(k, int) and k <= d):
            raise ShapeError(
                f"indices {dims.fmt_shape(idx)} are larger than data "
                f"{dims.fmt_shape(data)} in axis {i}"
            )
    return {"axis": axis}


register(
    Op(
        name="gather_elements",
        args=("data", "indices"),
        shape=lambda s, a: tuple(s[1]),
        impl=lambda data, indices, axis: np.asarray(data)[_elements_at(indices, axis)],
        vjp=lambda b, c: [
            b.scatter_add_elements(
                c.g, c.ins[1], axis=c.attrs["axis"], shape=list(c.in_shapes[0])
            ),
            None,
        ],
        jvp=lambda b, c: [
            None
            if c.dots[0] is None
            else b.gather_elements(c.dots[0], c.ins[1], axis=c.attrs["axis"]),
            None,
        ],
        math="{y}[i] = {data}[i with its entry at axis {axis} replaced by "
        "{indices}[i]] (negative indices count from the end)",
        derivs=(
            (
                "{data}̄ = scatter_add_elements({y}̄, {indices}): each entry of {y}̄ "
                "added where it was read from (repeated indices accumulate)"
            ),
            "none",
        ),
        attrs={"axis": 0},
        normalize=_norm_gather_elements,
        int_args=(1,),
        domain=("real", "labels"),
        indices=lambda s, a: (1, s[0][a["axis"]], True),
        category="indexing",
    )
)


def _norm_scatter_add_elements(in_shapes, attrs):
    g, idx = in_shapes
    shape = attrs["shape"]
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, str)
        or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
        for d in shape
    ):
        raise ShapeError(f"attribute shape must be a list of sizes, got {shape!r}")
    if tuple(g) != tuple(idx):
        raise ShapeError(
            f"g {dims.fmt_shape(g)} must have the indices' shape {dims.fmt_shape(idx)}"
        )
    _norm_gather_elements([tuple(shape), idx], {"axis": attrs["axis"]})
    return {"axis": norm_axis(attrs["axis"], len(shape)), "shape": list(shape)}


def _scatter_add_elements_impl(g, indices, axis, shape):
    out = np.zeros(shape, dtype=np.asarray(g).dtype)
    np.add.at(out, _elements_at(indices, axis), g)
    return out


register(
    Op(
        name="scatter_add_elements",
        args=("g", "indices"),
        shape=lambda s, a: tuple(a["shape"]),
        impl=_scatter_add_elements_impl,
        vjp=lambda b, c: [
            b.gather_elements(c.g, c.ins[1], axis=c.attrs["axis"]),
            None,
        ],
        jvp=lambda b, c: [
            None
            if c.dots[0] is None
            else b.scatter_add_elements(c.dots[0], c.ins[1], **c.attrs),
            None,
        ],
        math="{y} = zeros of shape {shape}, each {g}[i] added at i with its entry at "
        "axis {axis} replaced by {indices}[i] (the adjoint of gather_elements)",
        derivs=("{g}̄ = gather_elements({y}̄, {indices}) along axis {axis}", "none"),
        attrs={"axis": REQUIRED, "shape": REQUIRED},
        normalize=_norm_scatter_add_elements,
        int_args=(1,),
        domain=("real", "labels"),
        indices=lambda s, a: (1, a["shape"][a["axis"]], True),
        internal=True,
        category="indexing",
    )
)


# ------------------------------------------------------ gathers at index tuples


def _nd_at(indices, batch_dims, batch):
    """The index tuple that reads ``data[b..., indices[b..., j..., :]]`` from ``data``
    reshaped to ``(batch,) + data.shape[batch_dims:]``."""
    idx = np.asarray(indices)
    idx = idx.reshape((batch,) + idx.shape[batch_dims:])
    lead = np.arange(batch).reshape((batch,) + (1,) * (idx.ndim - 2))
    return (lead, *np.moveaxis(idx, -1, 0))


def _gather_nd_impl(data, indices, batch_dims):
    data = np.asarray(data)
    batch = int(np.prod(data.shape[:batch_dims], dtype=np.int64))
    k = np.shape(indices)[-1]
    flat = data.reshape((batch,) + data.shape[batch_dims:])
    out = flat[_nd_at(indices, batch_dims, batch)]
    return out.reshape(np.shape(indices)[:-1] + data.shape[batch_dims + k :])


def _norm_gather_nd(in_shapes, attrs):
    data, idx = in_shapes
    b = attrs["batch_dims"]
    if isinstance(b, bool) or not isinstance(b, int) or b < 0:
        raise ShapeError(f"attribute batch_dims must be a count >= 0, got {b!r}")
    if len(idx) < b + 1 or len(data) < b + 1:
        raise ShapeError(
            f"indices {dims.fmt_shape(idx)} and data {dims.fmt_shape(data)} need more "
            f"than batch_dims={b} axes"
        )
    k = idx[-1]
    if not isinstance(k, int) or not 1 <= k <= len(data) - b:
        raise ShapeError(
            f"the last axis of indices {dims.fmt_shape(idx)} must be a size from 1 to "
            f"{len(data) - b} (data {dims.fmt_shape(data)}, batch_dims={b})"
        )
    if tuple(idx[:b]) != tuple(data[:b]):
        raise ShapeError(
            f"indices {dims.fmt_shape(idx)} and data {dims.fmt_shape(data)} differ in "
            f"their first batch_dims={b} axes"
        )
    return {}


def _gather_nd_indices(in_shapes, attrs):
    """Entry j of each index tuple indexes data's axis batch_dims + j (wrapping)."""
    data, idx = in_shapes
    b = attrs["batch_dims"]
    if not isinstance(idx[-1], int):  # a tuple of symbolic length: not checked
        return 1, (), True
    return 1, tuple(data[b : b + idx[-1]]), True


def _gather_nd_shape(in_shapes, attrs):
    data, idx = in_shapes
    return tuple(idx[:-1]) + tuple(data[attrs["batch_dims"] + idx[-1] :])


register(
    Op(
        name="gather_nd",
        args=("data", "indices"),
        shape=_gather_nd_shape,
        impl=_gather_nd_impl,
        vjp=lambda b, c: [
            b.scatter_add_nd(
                c.g,
                c.ins[1],
                batch_dims=c.attrs["batch_dims"],
                shape=list(c.in_shapes[0]),
            ),
            None,
        ],
        jvp=lambda b, c: [
            None if c.dots[0] is None else b.gather_nd(c.dots[0], c.ins[1], **c.attrs),
            None,
        ],
        math="{y}[b, j] = {data}[b, {indices}[b, j, 0], …, {indices}[b, j, k−1]] (b: "
        "the first {batch_dims} axes; negative indices count from the end)",
        derivs=(
            (
                "{data}̄ = scatter_add_nd({y}̄, {indices}): each slice of {y}̄ added "
                "where it was read from (repeated indices accumulate)"
            ),
            "none",
        ),
        attrs={"batch_dims": 0},
        normalize=_norm_gather_nd,
        int_args=(1,),
        domain=("real", "labels"),
        indices=_gather_nd_indices,
        category="indexing",
    )
)


def _norm_scatter_add_nd(in_shapes, attrs):
    g, idx = in_shapes
    shape = attrs["shape"]
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, str)
        or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
        for d in shape
    ):
        raise ShapeError(f"attribute shape must be a list of sizes, got {shape!r}")
    _norm_gather_nd([tuple(shape), idx], attrs)
    want = _gather_nd_shape([tuple(shape), idx], attrs)
    if tuple(g) != want:
        raise ShapeError(f"g {dims.fmt_shape(g)} must be {dims.fmt_shape(want)}")
    return {"shape": list(shape)}


def _scatter_add_nd_impl(g, indices, batch_dims, shape):
    g = np.asarray(g)
    batch = int(np.prod(shape[:batch_dims], dtype=np.int64))
    out = np.zeros((batch,) + tuple(shape[batch_dims:]), dtype=g.dtype)
    rows = g.reshape((batch,) + g.shape[batch_dims:])
    np.add.at(out, _nd_at(indices, batch_dims, batch), rows)
    return out.reshape(shape)


register(
    Op(
        name="scatter_add_nd",
        args=("g", "indices"),
        shape=lambda s, a: tuple(a["shape"]),
        impl=_scatter_add_nd_impl,
        vjp=lambda b, c: [
            b.gather_nd(c.g, c.ins[1], batch_dims=c.attrs["batch_dims"]),
            None,
        ],
        jvp=lambda b, c: [
            None
            if c.dots[0] is None
            else b.scatter_add_nd(c.dots[0], c.ins[1], **c.attrs),
            None,
        ],
        math="{y} = zeros of shape {shape}, each slice {g}[b, j] added at "
        "[b, {indices}[b, j, :]] (the adjoint of gather_nd)",
        derivs=("{g}̄ = gather_nd({y}̄, {indices})", "none"),
        attrs={"batch_dims": REQUIRED, "shape": REQUIRED},
        normalize=_norm_scatter_add_nd,
        int_args=(1,),
        domain=("real", "labels"),
        internal=True,
        category="indexing",
    )
)
