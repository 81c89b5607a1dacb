"""Op attributes as the templates want them: Python decides the forms, once per op.

A template macro receives its op's attributes lowered to code: an axis tuple as a literal,
a shape as a tuple over the module's size names, a slice as its index expression. Most
ops take each attribute as a literal (:func:`lower`'s default); an op whose template wants
another form registers its lowering here with :func:`lowers`, the way PyTensor's Numba
backend registers one form per op.
"""

from __future__ import annotations

import math

import numpy as np

from .. import dims, ops
from .. import graph as g
from .layout import literal
from .naming import Code

LOWERINGS = {}


def lowers(*names):
    """Register the decorated ``f(c, n, at, in_shapes) -> dict`` as the lowering of the
    attributes of the ops ``names``."""

    def register(f):
        for name in names:
            assert name in ops.REGISTRY, name
            LOWERINGS[name] = f
        return f

    return register


class Lowering:
    """What a lowering can ask of the module: its size names and literals."""

    def __init__(self, program, used):
        self.program = program
        self.used = used  # the symbolic sizes the lowered code reads

    def dim(self, d) -> Code:
        return self.program.dim(d, self.used)

    def shape(self, shape) -> Code:
        return self.program.shape_code(shape, self.used)


def lower(program, n, used):
    """The attributes of op node ``n`` as its template wants them."""
    A = program.A
    a = g.node_dicts(A)[n]
    at = a[g.ATTRS]
    in_shapes = [g.node_dicts(A)[p][g.SHAPE] for p in g.operands(A, n)]
    f = LOWERINGS.get(a[g.OP])
    if f is None:
        return {k: literal(v) for k, v in at.items()}
    return f(Lowering(program, used), n, at, in_shapes)


def constant_key(n, at):
    """The ``_CONSTANTS`` entry of a ``constant`` node: its weights key, or its node id."""
    return at["key"] if at["key"] is not None else str(n)


def _axes_literal(axes):
    return literal(axes[0]) if len(axes) == 1 else literal(tuple(axes))


# The Numba module's row loops at the Python level (templates/numba/ops.j2: layer norm,
# softmax, cross-entropy, last-axis sums, an embedding's gradient) for arrays of at
# least this many elements per unit of every symbolic size: each compiles in 0.3-1 s of
# a cold first call (an MLP's 1.1 -> 3.3 s), and below this NumPy's form takes
# microseconds anyway. A lowering says ``row_loop`` where the op gets one.
ROW_LOOP_ELEMENTS = 1 << 16


def _row_loop_pays(shape):
    return math.prod(d for d in shape if isinstance(d, int)) >= ROW_LOOP_ELEMENTS


@lowers("sum", "mean", "max")
def _reduction(c, n, at, in_shapes):
    """``axis`` (None: every axis) and ``keepdims``, and ``row_loop``: the result's
    shape where the reduction is along the last axis alone of a large array of two axes
    or more (the Numba module's ``_last_axis_sums``), else None."""
    axes = list(at["axis"])
    rank = len(in_shapes[0])
    every = axes == list(range(rank))
    last = rank >= 2 and [a % rank for a in axes] == [rank - 1]
    out_shape = c.program.A.nodes[n][g.SHAPE]
    return {
        "axis": None if every else _axes_literal(axes),
        "keepdims": bool(at["keepdims"]),
        "row_loop": (
            c.shape(out_shape) if last and _row_loop_pays(in_shapes[0]) else None
        ),
    }


@lowers("logsumexp")
def _logsumexp(c, n, at, in_shapes):
    axes = list(at["axis"])
    every = axes == list(range(len(in_shapes[0])))
    return {
        "axis": Code("None") if every else _axes_literal(axes),
        "keepdims": bool(at["keepdims"]),
    }


@lowers("softmax")
def _softmax(c, n, at, in_shapes):
    """``axis``, and ``row_loop``: along the last axis of a large array (the Numba
    module's ``_loop_softmax``)."""
    rank = len(in_shapes[0])
    last = rank >= 1 and at["axis"] % rank == rank - 1
    return {
        "axis": literal(at["axis"]),
        "row_loop": last and _row_loop_pays(in_shapes[0]),
    }


@lowers("softmax_cross_entropy", "softmax_xent_grad")
def _softmax_cross_entropy(c, n, at, in_shapes):
    """Its attributes, and ``row_loop``: large (..., classes) logits with int labels of
    the leading shape and no ignored label (the Numba module's row loops)."""
    logits, labels = in_shapes
    nodes = c.program.A.nodes
    ints = [nodes[p][g.DTYPE] not in g.FLOAT_DTYPES for p in g.operands(c.program.A, n)]
    lowered = {k: literal(v) for k, v in at.items()}
    lowered["row_loop"] = (
        len(logits) >= 2
        and len(labels) == len(logits) - 1
        and ints == [False, True]
        and at.get("ignore_index") is None
        and _row_loop_pays(logits)
    )
    return lowered


@lowers("layer_norm")
def _layer_norm(c, n, at, in_shapes):
    """Its attributes, and ``row_loop``: a large x whose scale and bias span the
    normalized axes, as the Numba module's ``_row_layer_norm`` reads them."""
    x, scale, bias = in_shapes
    lowered = {k: literal(v) for k, v in at.items()}
    lowered["row_loop"] = tuple(scale) == tuple(bias) == tuple(
        x[at["axis"] :]
    ) and _row_loop_pays(x)
    return lowered


@lowers("reshape", "broadcast_to", "zeros")
def _shape(c, n, at, in_shapes):
    return {"shape": c.shape(at["shape"])}


@lowers("matmul")
def _matmul(c, n, at, in_shapes):
    """A stack of matrices times a matrix, ``(..., K) @ (K, N)``, as one product over
    all the stack's rows, ``(a.reshape((-1, K)) @ b).reshape((..., N))``: NumPy's matmul
    calls BLAS once per matrix of a stack, and at a transformer's shapes (8 sequences
    of 128 tokens times a 384×1536 weight, OpenBLAS, 2 threads) those calls took
    1.1–1.6× the time of the one (1024, 384) @ (384, 1536) product (benchmarks/
    transformer_bench.py's GEMMs). The reshape is a view of a contiguous stack."""
    a, b = in_shapes
    if len(a) < 3 or len(b) != 2:
        return {}
    lead = a[:-1]
    # a symbolic size among the leading axes: -1, NumPy counts the rows
    rows = math.prod(lead) if all(isinstance(d, int) for d in lead) else -1
    return {
        "rows": Code(f"({rows}, {c.dim(a[-1])})"),
        "shape": c.shape((*lead, b[-1])),
    }


@lowers("sum_to_shape")
def _sum_to_shape(c, n, at, in_shapes):
    lead, keep = ops.defs.sum_to_shape_axes(in_shapes[0], tuple(at["shape"]))
    return {
        "axes": _axes_literal(tuple(lead + keep)),
        "form": "lead" if not keep else ("keep" if not lead else "both"),
        "shape": c.shape(at["shape"]),
    }


def _index(c, nd, full, at):
    """``[:, s:e:k]``: the slice of ``at`` over an array of rank ``nd``."""
    parts = [":"] * nd
    start, stop, step = at["start"], at["stop"], at["step"]
    s = "" if start == 0 else c.dim(start)
    e = "" if stop == full else c.dim(stop)
    parts[at["axis"]] = f"{s}:{e}" + ("" if step == 1 else f":{step}")
    while len(parts) > 1 and parts[-1] == ":":
        parts.pop()
    return Code("[" + ", ".join(parts) + "]")


@lowers("slice")
def _slice(c, n, at, in_shapes):
    full = in_shapes[0][at["axis"]]
    return {"index": _index(c, len(in_shapes[0]), full, at)}


@lowers("unslice")
def _unslice(c, n, at, in_shapes):
    full = at["shape"][at["axis"]]
    return {
        "index": _index(c, len(at["shape"]), full, at),
        "shape": c.shape(at["shape"]),
    }


@lowers("transpose")
def _transpose(c, n, at, in_shapes):
    rank = len(in_shapes[0])
    return {
        "T": list(at["perm"]) == list(range(rank))[::-1] and rank == 2,
        "perm": literal(tuple(at["perm"])),
    }


@lowers("pow")
def _pow(c, n, at, in_shapes):
    # NumPy's power calls libm per element for exponents other than 2, 0.5, ±1 and 0
    # (about 60 ns an element for a negative base): the constant 3 is written as products
    A = c.program.A
    e = A.nodes[g.operands(A, n)[1]]
    return {"cube": e[g.KIND] == g.CONST and e[g.VALUE] == 3}


@lowers("dimsize")
def _dimsize(c, n, at, in_shapes):
    size = dims.prod(at["dims"])
    if isinstance(size, int):
        return {"value": literal(float(size))}
    return {"value": Code(f"float({c.dim(size)})")}


@lowers("onehot")
def _onehot(c, n, at, in_shapes):
    return {"depth": c.dim(at["depth"])}


@lowers("scatter_add")
def _scatter_add(c, n, at, in_shapes):
    """``dim`` may be a symbolic size; ``row_loop``: the result's shape where whole
    rows of a large gradient are added (axis 0: the Numba module's ``_scatter_rows``),
    else None."""
    out_shape = c.program.A.nodes[n][g.SHAPE]
    rows = at["axis"] == 0 and _row_loop_pays(in_shapes[0])
    return {
        "axis": literal(at["axis"]),
        "dim": c.dim(at["dim"]),
        "row_loop": c.shape(out_shape) if rows else None,
    }


@lowers("scatter_add_elements")
def _scatter_add_elements(c, n, at, in_shapes):  # the shape may hold symbolic sizes
    return {"axis": literal(at["axis"]), "shape": c.shape(at["shape"])}


@lowers("scatter_add_nd")
def _scatter_add_nd(c, n, at, in_shapes):  # the shape may hold symbolic sizes
    return {"batch_dims": literal(at["batch_dims"]), "shape": c.shape(at["shape"])}


@lowers("cumsum")
def _cumsum(c, n, at, in_shapes):
    return {k: literal(at[k]) for k in ("axis", "exclusive", "reverse")}


@lowers("trilu")
def _trilu(c, n, at, in_shapes):
    return {"fn": Code("np.triu" if at["upper"] else "np.tril"), "k": literal(at["k"])}


@lowers("int_compare")
def _int_compare(c, n, at, in_shapes):  # test is one of ops.logic.INT_TESTS
    value = at["value"]
    return {
        "test": Code(at["test"]),
        "value": literal(value)
        if np.ndim(value) == 0
        else Code(f"np.array({literal(value)})"),
    }


# int_math's fn -> the Python operator that computes it on int64 arrays (div and fmod
# are calls: Python has no operator for them)
_INT_OPERATORS = {"add": "+", "sub": "-", "mul": "*", "floordiv": "//", "mod": "%"}


@lowers("int_math")
def _int_math(c, n, at, in_shapes):  # fn is one of ops.logic.INT_MATH
    return {"fn": at["fn"], "operator": Code(_INT_OPERATORS.get(at["fn"], ""))}


@lowers("compare_ints")
def _compare_ints(c, n, at, in_shapes):  # test is one of ops.logic.INT_TESTS
    return {"test": Code(at["test"])}


@lowers("int_constant")
def _int_constant(c, n, at, in_shapes):  # entries may be the module's symbolic sizes
    def code(v):
        if isinstance(v, list):
            inner = ", ".join(code(x) for x in v)
            return "[" + inner + "]"
        return str(c.dim(v))

    return {"value": Code(code(at["value"]))}


@lowers("range")
def _range(c, n, at, in_shapes):  # the node's name: the module's error names it
    return {"size": c.dim(at["size"]), "node": literal(str(n))}


@lowers("constant_of_shape")
def _constant_of_shape(c, n, at, in_shapes):
    value = at["value"]
    return {
        "shape": c.shape(at["shape"]),
        "value": literal(value),
        "dtype": Code("np.int64" if isinstance(value, int) else "DTYPE"),
        "node": literal(str(n)),
    }


@lowers("constant")
def _constant(c, n, at, in_shapes):
    if at["value"] is not None:
        return {"value": literal(at["value"])}
    return {"key": literal(constant_key(n, at))}  # one of the module's _CONSTANTS
