"""Every op graphgen knows, each declared once: shape rule, NumPy semantics, VJP rule,
JVP rule, math.

VJP rules read like the math: ``g`` is the output's adjoint (ȳ), ``y`` the op's own
forward value (reused, never recomputed), ``x``/``a``/``b`` its arguments. The result is
ordered like the arguments.

JVP rules (forward mode) return, per argument, ``∂y/∂arg · d`` with ``d`` that argument's
tangent (:func:`~graphgen.ops.base.tangent_terms` skips arguments without one). Where the
rule needs nothing new it says which: an elementwise unary op's Jacobian is diagonal, so
its JVP is its VJP applied to the tangent (:func:`~graphgen.ops.base.symmetric`); a linear
op's JVP is the op itself applied to the tangent (:func:`~graphgen.ops.base.same_op`).
"""

from __future__ import annotations

import numpy as np

from .. import dims
from ..errors import ShapeError
from .base import (
    REQUIRED,
    Op,
    broadcast_rule,
    broadcast_shapes,
    involution,
    lone_argument,
    no_tangent,
    norm_axes,
    norm_axis,
    reduced_shape,
    register,
    same_op,
    same_shape,
    same_shape_no_op,
    scalar_shape,
    symmetric,
    tangent_terms,
    unit,
)


def _sigmoid(x):
    # tanh form: no overflow warnings for large |x| in float32 or float64
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _logsumexp(x, axis=None, keepdims=False):
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    out = m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


def _softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


# ------------------------------------------------------------------ unary elementwise


def unary(name, impl, vjp, math, deriv, domain="real", attrs=None, **facts):
    # elementwise: the Jacobian is diagonal, so the JVP is the VJP applied to the tangent
    facts.setdefault("jvp", symmetric(vjp))
    return register(
        Op(
            name=name,
            args=("x",),
            shape=same_shape,
            impl=impl,
            vjp=vjp,
            math=math,
            derivs=(deriv,),
            attrs=attrs or {},
            domain=(domain,),
            elementwise=True,
            category="unary",
            **facts,
        )
    )


unary(
    "neg",
    np.negative,
    lambda b, c: [b.neg(c.g)],
    "{y} = −{x}",
    "∂{y}/∂{x} = −1",
    linear=True,
    ufunc=("np.negative", "x"),
    reads_as_code=True,
    identities=(involution,),
)
unary(
    "exp",
    np.exp,
    lambda b, c: [b.mul(c.g, c.out)],
    "{y} = exp({x})",
    "∂{y}/∂{x} = exp({x}) = {y}",
    activation=True,
    transcendental=True,
    ufunc=("np.exp", "x"),
)
unary(
    "log",
    np.log,
    lambda b, c: [b.div(c.g, c.ins[0])],
    "{y} = log({x})",
    "∂{y}/∂{x} = 1/{x}",
    domain="positive",
    activation=True,
    transcendental=True,
    ufunc=("np.log", "x"),
)
unary(
    "sqrt",
    np.sqrt,
    lambda b, c: [b.div(c.g, b.mul(2.0, c.out))],
    "{y} = √{x}",
    "∂{y}/∂{x} = 1/(2√{x}) = 1/(2·{y})",
    domain="positive",
    activation=True,
    ufunc=("np.sqrt", "x"),
)
unary(
    "square",
    np.square,
    lambda b, c: [b.mul(c.g, b.mul(2.0, c.ins[0]))],
    "{y} = {x}²",
    "∂{y}/∂{x} = 2·{x}",
    activation=True,
    ufunc=("np.square", "x"),
)
unary(
    "abs",
    np.abs,
    lambda b, c: [b.mul(c.g, b.sign(c.ins[0]))],
    "{y} = |{x}|",
    "∂{y}/∂{x} = sign({x})",
    domain="away0",
    activation=True,
    ufunc=("np.absolute", "x"),
)
unary(
    "tanh",
    np.tanh,
    lambda b, c: [b.mul(c.g, b.sub(1.0, b.square(c.out)))],
    "{y} = tanh({x})",
    "∂{y}/∂{x} = 1 − tanh²({x}) = 1 − {y}²",
    activation=True,
    transcendental=True,
    ufunc=("np.tanh", "x"),
)
unary(
    "sigmoid",
    _sigmoid,
    lambda b, c: [b.mul(c.g, b.mul(c.out, b.sub(1.0, c.out)))],
    "{y} = σ({x}) = 1/(1 + exp(−{x}))",
    "∂{y}/∂{x} = σ({x})·(1 − σ({x})) = {y}·(1 − {y})",
    activation=True,
    transcendental=True,
)
unary(
    "relu",
    lambda x: np.maximum(x, 0.0),
    lambda b, c: [b.mul(c.g, b.step(c.ins[0]))],
    "{y} = max({x}, 0)",
    "∂{y}/∂{x} = 1 if {x} > 0 else 0",
    domain="away0",
    activation=True,
    ufunc=("np.maximum", "x", "0.0"),
)


def _leaky_relu_vjp(b, c):
    alpha = c.attrs["alpha"]
    # slope = alpha + (1 − alpha)·step(x): 1 where x > 0, alpha elsewhere
    slope = b.add(b.mul(b.step(c.ins[0]), 1.0 - alpha), alpha)
    return [b.mul(c.g, slope)]


def _check_alpha(in_shapes, attrs):
    alpha = attrs["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ShapeError(f"attribute alpha must be a number, got {alpha!r}")
    return {"alpha": float(alpha)}


register(
    Op(
        name="leaky_relu",
        args=("x",),
        shape=same_shape,
        impl=lambda x, alpha: np.where(x > 0, x, alpha * x),
        vjp=_leaky_relu_vjp,
        jvp=symmetric(_leaky_relu_vjp),  # elementwise: diagonal Jacobian
        math="{y} = {x} if {x} > 0 else {alpha}·{x}",
        derivs=("∂{y}/∂{x} = 1 if {x} > 0 else {alpha}",),
        attrs={"alpha": 0.01},
        normalize=_check_alpha,
        domain=("away0",),
        elementwise=True,
        category="unary",
        activation=True,
    )
)
unary(
    "softplus",
    lambda x: np.logaddexp(0.0, x),
    lambda b, c: [b.mul(c.g, b.sigmoid(c.ins[0]))],
    "{y} = log(1 + exp({x}))",
    "∂{y}/∂{x} = σ({x})",
    activation=True,
    transcendental=True,
    ufunc=("np.logaddexp", "0.0", "x"),
)
unary(
    "sin",
    np.sin,
    lambda b, c: [b.mul(c.g, b.cos(c.ins[0]))],
    "{y} = sin({x})",
    "∂{y}/∂{x} = cos({x})",
    activation=True,
    transcendental=True,
    ufunc=("np.sin", "x"),
)
unary(
    "cos",
    np.cos,
    lambda b, c: [b.mul(c.g, b.neg(b.sin(c.ins[0])))],
    "{y} = cos({x})",
    "∂{y}/∂{x} = −sin({x})",
    activation=True,
    transcendental=True,
    ufunc=("np.cos", "x"),
)

# Masks: non-differentiable ops the VJP rules use. They produce floats of the graph dtype.
for _name, _impl, _math, _mask in [
    ("step", lambda x: (x > 0).astype(x.dtype), "{y} = 1 if {x} > 0 else 0", True),
    ("sign", np.sign, "{y} = sign({x})", False),
]:
    register(
        Op(
            name=_name,
            args=("x",),
            shape=same_shape,
            impl=_impl,
            vjp=None,
            jvp=no_tangent,
            jvp_reason="piecewise constant: its derivative is 0 wherever it is defined",
            math=_math,
            derivs=("∂{y}/∂{x} = 0 (almost everywhere)",),
            domain=("away0",),
            elementwise=True,
            internal=True,
            category="unary",
            mask=_mask,
        )
    )


# ----------------------------------------------------------------- binary elementwise


def binary(
    name, impl, vjp, math, derivs, domain=("real", "real"), internal=False, **facts
):
    # each argument's contribution may keep the argument's (smaller) shape: the
    # forward-mode pass broadcasts it
    return register(
        Op(
            name=name,
            args=("a", "b"),
            shape=broadcast_rule,
            impl=impl,
            vjp=vjp,
            math=math,
            derivs=derivs,
            domain=domain,
            elementwise=True,
            internal=internal,
            category="binary",
            **facts,
        )
    )


binary(
    "add",
    np.add,
    lambda b, c: [c.g, c.g],
    "{y} = {a} + {b}",
    ("∂{y}/∂{a} = 1", "∂{y}/∂{b} = 1"),
    jvp=lambda b, c: tangent_terms(c, lambda d: d, lambda d: d),  # linear: ȧ + ḃ
    commutative=True,
    linear=True,
    ufunc=("np.add", "a", "b"),
    reads_as_code=True,
    identities=(unit(0.0, at=1), unit(0.0, at=0)),
)
binary(
    "sub",
    np.subtract,
    lambda b, c: [c.g, b.neg(c.g)],
    "{y} = {a} − {b}",
    ("∂{y}/∂{a} = 1", "∂{y}/∂{b} = −1"),
    jvp=lambda b, c: tangent_terms(c, lambda d: d, b.neg),  # linear: ȧ − ḃ
    linear=True,
    ufunc=("np.subtract", "a", "b"),
    reads_as_code=True,
    identities=(unit(0.0, at=1),),
)
binary(
    "mul",
    np.multiply,
    lambda b, c: [b.mul(c.g, c.ins[1]), b.mul(c.g, c.ins[0])],
    "{y} = {a}·{b}",
    ("∂{y}/∂{a} = {b}", "∂{y}/∂{b} = {a}"),
    jvp=lambda b, c: tangent_terms(
        c, lambda d: b.mul(d, c.ins[1]), lambda d: b.mul(c.ins[0], d)
    ),
    commutative=True,
    ufunc=("np.multiply", "a", "b"),
    reads_as_code=True,
    identities=(unit(1.0, at=1), unit(1.0, at=0)),
)
binary(
    "div",
    np.divide,
    lambda b, c: [b.div(c.g, c.ins[1]), b.neg(b.div(b.mul(c.g, c.out), c.ins[1]))],
    "{y} = {a}/{b}",
    ("∂{y}/∂{a} = 1/{b}", "∂{y}/∂{b} = −{a}/{b}² = −{y}/{b}"),
    jvp=lambda b, c: tangent_terms(
        c,
        lambda d: b.div(d, c.ins[1]),
        lambda d: b.neg(b.div(b.mul(d, c.out), c.ins[1])),
    ),
    domain=("real", "away0"),
    ufunc=("np.divide", "a", "b"),
    reads_as_code=True,
    identities=(unit(1.0, at=1),),
)


def _pow_jvp(b, c):
    a, e = c.ins
    return tangent_terms(
        c,
        lambda d: b.mul(d, b.mul(e, b.pow(a, b.sub(e, 1.0)))),
        lambda d: b.mul(d, b.mul(c.out, b.log(a))),
    )


def _pow_vjp(b, c):
    a, e = c.ins
    da = b.mul(c.g, b.mul(e, b.pow(a, b.sub(e, 1.0))))
    de = b.mul(c.g, b.mul(c.out, b.log(a)))
    return [da, de]


binary(
    "pow",
    np.power,
    _pow_vjp,
    "{y} = {a}^{b}",
    ("∂{y}/∂{a} = {b}·{a}^({b} − 1)", "∂{y}/∂{b} = {a}^{b}·log({a}) = {y}·log({a})"),
    jvp=_pow_jvp,
    domain=("positive", "real"),
    transcendental=True,
    ufunc=("np.power", "a", "b"),
)
binary(
    "maximum",
    np.maximum,
    lambda b, c: [
        b.mul(c.g, b.ge(c.ins[0], c.ins[1])),
        b.mul(c.g, b.lt(c.ins[0], c.ins[1])),
    ],
    "{y} = max({a}, {b})",
    ("∂{y}/∂{a} = 1 if {a} ≥ {b} else 0", "∂{y}/∂{b} = 1 if {a} < {b} else 0"),
    jvp=lambda b, c: tangent_terms(
        c,
        lambda d: b.mul(d, b.ge(c.ins[0], c.ins[1])),
        lambda d: b.mul(d, b.lt(c.ins[0], c.ins[1])),
    ),
    commutative=True,
    ufunc=("np.maximum", "a", "b"),
)
binary(
    "minimum",
    np.minimum,
    lambda b, c: [
        b.mul(c.g, b.ge(c.ins[1], c.ins[0])),
        b.mul(c.g, b.lt(c.ins[1], c.ins[0])),
    ],
    "{y} = min({a}, {b})",
    ("∂{y}/∂{a} = 1 if {a} ≤ {b} else 0", "∂{y}/∂{b} = 1 if {a} > {b} else 0"),
    jvp=lambda b, c: tangent_terms(
        c,
        lambda d: b.mul(d, b.ge(c.ins[1], c.ins[0])),
        lambda d: b.mul(d, b.lt(c.ins[1], c.ins[0])),
    ),
    commutative=True,
    ufunc=("np.minimum", "a", "b"),
)
for _name, _impl, _math in [
    ("ge", lambda a, b: np.greater_equal(a, b).astype(np.result_type(a, b)), "≥"),
    ("lt", lambda a, b: np.less(a, b).astype(np.result_type(a, b)), "<"),
    ("eq", lambda a, b: np.equal(a, b).astype(np.result_type(a, b)), "="),
]:
    binary(
        _name,
        _impl,
        None,
        "{y} = 1 if {a} " + _math + " {b} else 0",
        ("0", "0"),
        jvp=no_tangent,
        jvp_reason="a comparison mask: its derivative is 0 wherever it is defined",
        internal=True,
        mask=True,
        commutative=_name == "eq",
    )


register(
    Op(
        name="add_n",
        args=("xs",),
        shape=broadcast_rule,
        impl=lambda *xs: sum(xs[1:], xs[0]),
        vjp=lambda b, c: [c.g] * len(c.ins),
        jvp=lambda b, c: tangent_terms(c, lambda d: d),  # linear: Σ_i ẋs[i]
        math="{y} = Σ_i {xs}[i]",
        derivs=("∂{y}/∂{xs}[i] = 1",),
        variadic=True,
        elementwise=True,
        category="binary",
        commutative=True,
        linear=True,
        reads_as_code=True,
        identities=(lone_argument,),
        sums=True,
    )
)


# -------------------------------------------------------------------------- matmul


def _matmul_shape(in_shapes, attrs):
    a, b = in_shapes
    if not a or not b:
        raise ShapeError("matmul arguments must have rank >= 1 (got a scalar)")
    A = a if len(a) >= 2 else (1,) + tuple(a)
    B = b if len(b) >= 2 else tuple(b) + (1,)
    if A[-1] != B[-2]:
        raise ShapeError(
            f"inner dimensions differ: {dims.fmt_shape(a)} @ {dims.fmt_shape(b)} "
            f"({A[-1]} vs {B[-2]})"
        )
    batch = broadcast_rule([A[:-2], B[:-2]], {})
    out = tuple(batch) + (A[-2], B[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def _swap_last(b, x, ndim):
    perm = list(range(ndim - 2)) + [ndim - 1, ndim - 2]
    return b.transpose(x, perm=perm)


def _matmul_vjp(b, c):
    a, w = c.ins
    sa, sw = c.in_shapes
    if len(sa) == 1 and len(sw) == 1:  # inner product: y = Σ a·w
        return [b.mul(c.g, w), b.mul(c.g, a)]
    # NumPy promotes 1-D arguments to matrices; do the same, then undo it.
    A = a if len(sa) >= 2 else b.reshape(a, shape=[1, sa[0]])
    W = w if len(sw) >= 2 else b.reshape(w, shape=[sw[0], 1])
    SA = sa if len(sa) >= 2 else (1, sa[0])
    SW = sw if len(sw) >= 2 else (sw[0], 1)
    batch = broadcast_rule([SA[:-2], SW[:-2]], {})
    gshape = tuple(batch) + (SA[-2], SW[-1])
    G = c.g if tuple(c.out_shape) == gshape else b.reshape(c.g, shape=list(gshape))
    dA = b.matmul(G, _swap_last(b, W, len(SW)))
    if len(sw) == 2 and len(sa) > 2:
        # a matrix applied to every row of a batch (a linear layer on (B, T, K)): one
        # (K, B·T) @ (B·T, N) product, not B products of (K, N) summed afterwards (a
        # B-times-bigger temporary: 48 MB for GPT-2-small's output projection)
        rows = b.reshape(A, shape=[-1, SA[-1]])
        dW = b.matmul(_swap_last(b, rows, 2), b.reshape(G, shape=[-1, SW[-1]]))
    else:
        dW = b.matmul(_swap_last(b, A, len(SA)), G)
    if tuple(b.shape(dA)) != tuple(SA):
        dA = b.sum_to_shape(dA, shape=list(SA))
    if tuple(b.shape(dW)) != tuple(SW):
        dW = b.sum_to_shape(dW, shape=list(SW))
    if len(sa) == 1:
        dA = b.reshape(dA, shape=list(sa))
    if len(sw) == 1:
        dW = b.reshape(dW, shape=list(sw))
    return [dA, dW]


register(
    Op(
        name="matmul",
        args=("a", "b"),
        shape=_matmul_shape,
        impl=np.matmul,
        vjp=_matmul_vjp,
        # bilinear: ȧ @ b + a @ ḃ (NumPy's matmul promotes 1-D and broadcasts batches
        # the same way for the tangent as for the argument)
        jvp=lambda b, c: tangent_terms(
            c, lambda d: b.matmul(d, c.ins[1]), lambda d: b.matmul(c.ins[0], d)
        ),
        math="{y} = {a} @ {b}",
        derivs=("{a}̄ = {y}̄ @ {b}ᵀ", "{b}̄ = {a}ᵀ @ {y}̄"),
        category="linear algebra",
        reads_as_code=True,
    )
)


# -------------------------------------------------------------------- shape ops


def _norm_transpose(in_shapes, attrs):
    nd = len(in_shapes[0])
    perm = attrs.get("perm")
    if perm is None:
        return {"perm": list(range(nd))[::-1]}
    if not isinstance(perm, (list, tuple)) or sorted(
        norm_axis(p, nd, "perm entry") for p in perm
    ) != list(range(nd)):
        raise ShapeError(f"perm {perm!r} is not a permutation of the {nd} axes")
    return {"perm": [norm_axis(p, nd) for p in perm]}


def _identity_perm(site):
    """``transpose(x, perm) -> x`` when ``perm`` leaves every axis where it is."""
    perm = site.attrs["perm"]
    return site.args[0] if list(perm) == sorted(perm) else None


register(
    Op(
        name="transpose",
        args=("x",),
        shape=lambda s, a: tuple(s[0][p] for p in a["perm"]),
        impl=lambda x, perm: np.transpose(x, perm),
        vjp=lambda b, c: [
            b.transpose(c.g, perm=[int(i) for i in np.argsort(c.attrs["perm"])])
        ],
        jvp=same_op("transpose"),  # linear
        math="{y} = transpose({x}, {perm})",
        derivs=("{x}̄ = transpose({y}̄, inverse of {perm})",),
        attrs={"perm": None},
        normalize=_norm_transpose,
        category="shape",
        view=True,
        identities=(_identity_perm,),
    )
)


def _check_dim_list(value, what, allow_minus1=False):
    if not isinstance(value, (list, tuple)):
        raise ShapeError(f"{what} must be a list of dimensions, got {value!r}")
    for d in value:
        ok = (
            isinstance(d, int)
            and not isinstance(d, bool)
            and (d >= 0 or allow_minus1 and d == -1)
        )
        if isinstance(d, str):
            try:
                dims.poly(d)
                ok = True
            except (ValueError, SyntaxError):
                ok = False
        if not ok:
            raise ShapeError(f"{what} entry {d!r} is not a size, symbolic size or -1")
    return list(value)


def _norm_reshape(in_shapes, attrs):
    shape = _check_dim_list(attrs["shape"], "shape", allow_minus1=True)
    if sum(1 for d in shape if d == -1) > 1:
        raise ShapeError(f"shape {shape} has more than one -1")
    total = dims.prod(in_shapes[0])
    if -1 in shape:
        known = dims.prod(d for d in shape if d != -1)
        rest = dims.exact_div(total, known) if known != 0 else None
        if rest is None:
            raise ShapeError(
                f"cannot reshape {dims.fmt_shape(in_shapes[0])} to {shape}: "
                f"{total} elements do not divide by {known}"
            )
        shape = [rest if d == -1 else d for d in shape]
    if dims.prod(shape) != total:
        raise ShapeError(
            f"cannot reshape {dims.fmt_shape(in_shapes[0])} ({total} elements) to "
            f"{dims.fmt_shape(shape)} ({dims.prod(shape)} elements)"
        )
    return {"shape": shape}


register(
    Op(
        name="reshape",
        args=("x",),
        shape=lambda s, a: tuple(a["shape"]),
        impl=lambda x, shape: np.reshape(x, shape),
        vjp=lambda b, c: [b.reshape(c.g, shape=list(c.in_shapes[0]))],
        jvp=same_op("reshape"),  # linear
        math="{y} = reshape({x}, {shape})",
        derivs=("{x}̄ = reshape({y}̄, shape of {x})",),
        attrs={"shape": REQUIRED},
        normalize=_norm_reshape,
        category="shape",
        view=True,
        reads_as_code=True,
        keeps_int=True,
        identities=(same_shape_no_op,),
    )
)


def _norm_broadcast_to(in_shapes, attrs):
    shape = _check_dim_list(attrs["shape"], "shape")
    out = tuple(shape)
    if len(in_shapes[0]) > len(out) or broadcast_shapes(in_shapes[0], out) != out:
        raise ShapeError(
            f"cannot broadcast {dims.fmt_shape(in_shapes[0])} to {dims.fmt_shape(out)}"
        )
    return {"shape": shape}


register(
    Op(
        name="broadcast_to",
        args=("x",),
        shape=lambda s, a: tuple(a["shape"]),
        impl=lambda x, shape: np.broadcast_to(x, shape),
        vjp=lambda b, c: [b.sum_to_shape(c.g, shape=list(c.in_shapes[0]))],
        jvp=same_op("broadcast_to"),  # linear
        math="{y} = broadcast_to({x}, {shape})",
        derivs=("{x}̄ = sum_to_shape({y}̄, shape of {x})",),
        attrs={"shape": REQUIRED},
        normalize=_norm_broadcast_to,
        category="shape",
        view=True,
        broadcasts=True,
        identities=(same_shape_no_op,),
    )
)


def sum_to_shape_axes(src, dst):
    """The axes ``sum_to_shape`` reduces: leading extra axes, then stretched size-1 axes."""
    lead = len(src) - len(dst)
    keep = tuple(lead + i for i, d in enumerate(dst) if d == 1 and src[lead + i] != 1)
    return tuple(range(lead)), keep


def _sum_to_shape_impl(x, shape):
    lead, keep = sum_to_shape_axes(x.shape, tuple(shape))
    out = np.sum(x, axis=lead + keep, keepdims=True) if lead + keep else x
    return np.reshape(out, shape)


def _norm_sum_to_shape(in_shapes, attrs):
    shape = tuple(_check_dim_list(attrs["shape"], "shape"))
    if len(shape) > len(in_shapes[0]) or broadcast_shapes(shape, in_shapes[0]) != tuple(
        in_shapes[0]
    ):
        raise ShapeError(
            f"cannot sum {dims.fmt_shape(in_shapes[0])} down to {dims.fmt_shape(shape)}"
        )
    return {"shape": list(shape)}


register(
    Op(
        name="sum_to_shape",
        args=("x",),
        shape=lambda s, a: tuple(a["shape"]),
        impl=_sum_to_shape_impl,
        vjp=lambda b, c: [b.broadcast_to(c.g, shape=list(c.in_shapes[0]))],
        jvp=same_op("sum_to_shape"),  # linear
        math="{y} = {x} summed over its broadcast axes down to {shape}",
        derivs=("{x}̄ = broadcast_to({y}̄, shape of {x})",),
        attrs={"shape": REQUIRED},
        normalize=_norm_sum_to_shape,
        internal=True,
        category="shape",
        identities=(same_shape_no_op,),
    )
)


def _norm_concat(in_shapes, attrs):
    nd = len(in_shapes[0])
    if nd == 0:
        raise ShapeError("cannot concatenate scalars")
    axis = norm_axis(attrs["axis"], nd)
    for s in in_shapes[1:]:
        if len(s) != nd or any(
            d0 != d for i, (d0, d) in enumerate(zip(in_shapes[0], s)) if i != axis
        ):
            raise ShapeError(
                f"arguments must agree except on axis {axis}: "
                + " vs ".join(dims.fmt_shape(x) for x in in_shapes)
            )
    return {"axis": axis}


def _concat_shape(in_shapes, attrs):
    axis = attrs["axis"]
    out = list(in_shapes[0])
    out[axis] = 0
    for s in in_shapes:
        out[axis] = dims.add(out[axis], s[axis])
    return tuple(out)


def _concat_vjp(b, c):
    axis = c.attrs["axis"]
    outs, start = [], 0
    for s in c.in_shapes:
        stop = dims.add(start, s[axis])
        outs.append(b.slice(c.g, axis=axis, start=start, stop=stop, step=1))
        start = stop
    return outs


def _concat_jvp(b, c):
    # linear: each argument's tangent placed where the argument sits, zeros elsewhere
    axis = c.attrs["axis"]
    terms, start = [], 0
    for s in c.in_shapes:
        stop = dims.add(start, s[axis])
        terms.append(
            lambda d, start=start, stop=stop: b.unslice(
                d, shape=list(c.out_shape), axis=axis, start=start, stop=stop, step=1
            )
        )
        start = stop
    return tangent_terms(c, *terms)


register(
    Op(
        name="concat",
        args=("xs",),
        shape=_concat_shape,
        impl=lambda *xs, axis: np.concatenate(xs, axis=axis),
        vjp=_concat_vjp,
        jvp=_concat_jvp,
        math="{y} = concat({xs}, axis={axis})",
        derivs=("{xs}[i]̄ = the slice of {y}̄ where {xs}[i] sits",),
        attrs={"axis": 0},
        normalize=_norm_concat,
        variadic=True,
        category="shape",
    )
)


def _bound(v, what):
    if v is None or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    if isinstance(v, str):
        dims.poly(v)
        return v
    raise ShapeError(f"{what} must be an integer, got {v!r}")


def _norm_slice(in_shapes, attrs):
    shape = in_shapes[0]
    axis = norm_axis(attrs["axis"], len(shape))
    start = _bound(attrs["start"], "start")
    stop = _bound(attrs["stop"], "stop")
    step = attrs["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise ShapeError(f"step must be a positive integer, got {step!r}")
    n = shape[axis]
    if (
        isinstance(n, int)
        and isinstance(start, int)
        and (stop is None or isinstance(stop, int))
    ):
        start, stop, step = slice(start, stop, step).indices(n)
        return {"axis": axis, "start": start, "stop": stop, "step": step}
    # symbolic: only forward bounds that need no clamping
    if start is None:
        start = 0
    if stop is None:
        stop = n
    for v, what in ((start, "start"), (stop, "stop")):
        if isinstance(v, int) and v < 0:
            raise ShapeError(f"negative {what} {v} on symbolic axis of size {n!r}")
    return {"axis": axis, "start": start, "stop": stop, "step": step}


def _slice_shape(in_shapes, attrs):
    out = list(in_shapes[0])
    start, stop, step = attrs["start"], attrs["stop"], attrs["step"]
    size = dims.sub(stop, start)
    if isinstance(size, int):
        size = max(0, -(-size // step))
    elif step != 1:
        raise ShapeError(
            f"a step of {step} over a symbolic extent {size!r} is not supported"
        )
    out[attrs["axis"]] = size
    return tuple(out)


def _slice_impl(x, axis, start, stop, step):
    idx = [slice(None)] * x.ndim
    idx[axis] = slice(start, stop, step)
    return x[tuple(idx)]


register(
    Op(
        name="slice",
        args=("x",),
        shape=_slice_shape,
        impl=_slice_impl,
        vjp=lambda b, c: [b.unslice(c.g, shape=list(c.in_shapes[0]), **c.attrs)],
        jvp=same_op("slice"),  # linear
        math="{y} = {x}[{start}:{stop}:{step} along axis {axis}]",
        derivs=("{x}̄ = zeros with {y}̄ placed at the slice",),
        attrs={"axis": 0, "start": None, "stop": None, "step": 1},
        normalize=_norm_slice,
        category="shape",
        view=True,
    )
)


def _unslice_impl(x, shape, axis, start, stop, step):
    out = np.zeros(shape, dtype=x.dtype)
    idx = [slice(None)] * len(shape)
    idx[axis] = slice(start, stop, step)
    out[tuple(idx)] = x
    return out


register(
    Op(
        name="unslice",
        args=("x",),
        shape=lambda s, a: tuple(a["shape"]),
        impl=_unslice_impl,
        vjp=lambda b, c: [
            b.slice(c.g, **{k: c.attrs[k] for k in ("axis", "start", "stop", "step")})
        ],
        jvp=same_op("unslice"),  # linear
        math="{y} = zeros of shape {shape} with {x} placed at [{start}:{stop}:{step}] "
        "along axis {axis}",
        derivs=("{x}̄ = {y}̄[{start}:{stop}:{step} along axis {axis}]",),
        attrs={
            "shape": REQUIRED,
            "axis": REQUIRED,
            "start": REQUIRED,
            "stop": REQUIRED,
            "step": REQUIRED,
        },
        internal=True,
        category="shape",
        joins="concat",
    )
)


register(
    Op(
        name="zeros",
        args=(),
        shape=lambda s, a: tuple(a["shape"]),
        impl=lambda shape: np.zeros(shape),
        vjp=None,
        jvp_reason="takes no arguments",
        math="{y} = zeros of shape {shape}",
        attrs={"shape": REQUIRED},
        normalize=lambda s, a: {"shape": _check_dim_list(a["shape"], "shape")},
        internal=True,
        category="shape",
        folds=False,
    )
)


def _dimsize_impl(**attrs):
    # called as impl(dims=[...]) like every op; the parameter cannot be named after the
    # `dims` module this function uses
    return np.float64(dims.prod(attrs["dims"]))


register(
    Op(
        name="dimsize",
        args=(),
        shape=scalar_shape,
        impl=_dimsize_impl,
        vjp=None,
        jvp_reason="takes no arguments (a number of elements)",
        math="{y} = {dims} (a number of elements)",
        attrs={"dims": REQUIRED},
        normalize=lambda s, a: {"dims": _check_dim_list(a["dims"], "dims")},
        internal=True,
        category="shape",
        folds=lambda a: all(isinstance(d, int) for d in a["dims"]),  # sizes known
    )
)


# ---------------------------------------------------------------------- reductions


def _norm_reduce(in_shapes, attrs):
    keepdims = attrs["keepdims"]
    if not isinstance(keepdims, bool):
        raise ShapeError(f"keepdims must be true or false, got {keepdims!r}")
    axes = norm_axes(attrs["axis"], len(in_shapes[0]))
    return {"axis": list(axes), "keepdims": keepdims}


def _reduce_shape(in_shapes, attrs):
    return reduced_shape(in_shapes[0], attrs["axis"], attrs["keepdims"])


def _kept(b, c, v):
    """``v`` (shaped like the reduction's output) with the reduced axes kept as size 1."""
    if c.attrs["keepdims"] or tuple(b.shape(v)) == ():
        return v  # a scalar broadcasts as it is
    kshape = reduced_shape(c.in_shapes[0], c.attrs["axis"], True)
    return b.reshape(v, shape=list(kshape))


def _sum_vjp(b, c):
    return [b.broadcast_to(_kept(b, c, c.g), shape=list(c.in_shapes[0]))]


def _mean_vjp(b, c):
    n = b.dimsize(dims=[c.in_shapes[0][i] for i in c.attrs["axis"]])
    return [b.broadcast_to(b.div(_kept(b, c, c.g), n), shape=list(c.in_shapes[0]))]


def _max_vjp(b, c):
    x = c.ins[0]
    hit = b.eq(x, _kept(b, c, c.out))  # 1 where x attains the max
    count = b.sum(hit, axis=c.attrs["axis"], keepdims=True)
    return [b.mul(hit, b.div(_kept(b, c, c.g), count))]  # ties share the gradient


def _lse_vjp(b, c):
    x = c.ins[0]
    return [b.mul(_kept(b, c, c.g), b.exp(b.sub(x, _kept(b, c, c.out))))]


def _max_jvp(b, c):
    # the tangent where x attains the max (ties share it, as in the VJP)
    x, axis, keepdims = c.ins[0], c.attrs["axis"], c.attrs["keepdims"]
    hit = b.eq(x, _kept(b, c, c.out))
    count = b.sum(hit, axis=axis, keepdims=keepdims)
    return tangent_terms(
        c, lambda d: b.div(b.sum(b.mul(hit, d), axis=axis, keepdims=keepdims), count)
    )


def _lse_jvp(b, c):
    # Σ softmax(x)·ẋ over the reduced axes
    x, axis, keepdims = c.ins[0], c.attrs["axis"], c.attrs["keepdims"]
    p = b.exp(b.sub(x, _kept(b, c, c.out)))
    return tangent_terms(c, lambda d: b.sum(b.mul(p, d), axis=axis, keepdims=keepdims))


def reduction(name, impl, vjp, math, deriv, jvp, empty_ok=True):
    """A reduction op; ``empty_ok=False``: one that takes a maximum (``max``,
    ``logsumexp``) has no value over an axis of size 0."""

    def normalize(in_shapes, attrs):
        attrs = _norm_reduce(in_shapes, attrs)
        if not empty_ok:
            _not_empty(in_shapes[0], attrs["axis"], f"the {name}")
        return attrs

    return register(
        Op(
            name=name,
            args=("x",),
            shape=_reduce_shape,
            impl=lambda x, axis, keepdims: impl(x, axis=tuple(axis), keepdims=keepdims),
            vjp=vjp,
            jvp=jvp,
            math=math,
            derivs=(deriv,),
            attrs={"axis": None, "keepdims": False},
            normalize=normalize,
            category="reduction",
        )
    )


reduction(
    "sum",
    np.sum,
    _sum_vjp,
    "{y} = Σ {x} over axes {axis}",
    "∂{y}/∂{x} = 1",
    same_op("sum"),  # linear
)
reduction(
    "mean",
    np.mean,
    _mean_vjp,
    "{y} = mean of {x} over axes {axis}",
    "∂{y}/∂{x} = 1/N (N elements averaged)",
    same_op("mean"),  # linear
)
reduction(
    "max",
    np.max,
    _max_vjp,
    "{y} = max of {x} over axes {axis}",
    "∂{y}/∂{x} = 1/k at the k positions attaining the max, 0 elsewhere",
    _max_jvp,
    empty_ok=False,
)
reduction(
    "logsumexp",
    _logsumexp,
    _lse_vjp,
    "{y} = log Σ exp({x}) over axes {axis}",
    "∂{y}/∂{x} = exp({x} − {y}) (the softmax)",
    _lse_jvp,
    empty_ok=False,
)


# ------------------------------------------------------------------ softmax family


def _norm_axis1(in_shapes, attrs):
    if not in_shapes[0]:
        raise ShapeError("needs an argument of rank >= 1, got a scalar")
    axis = norm_axis(attrs["axis"], len(in_shapes[0]))
    _not_empty(in_shapes[0], [axis], "a softmax")
    return {"axis": axis}


def _not_empty(shape, axes, what):
    """Refuse a reduction by maximum over an axis of size 0: no value to take the
    maximum of (NumPy raises deep inside the module)."""
    for a in axes:
        if shape[a] == 0:
            raise ShapeError(
                f"{what} along axis {a} of {dims.fmt_shape(shape)} is over no values "
                "(that axis has size 0)"
            )


def _softmax_vjp(b, c):
    y, g = c.out, c.g
    inner = b.sum(b.mul(g, y), axis=[c.attrs["axis"]], keepdims=True)
    return [b.mul(y, b.sub(g, inner))]


def _log_softmax_vjp(b, c):
    y, g = c.out, c.g
    total = b.sum(g, axis=[c.attrs["axis"]], keepdims=True)
    return [b.sub(g, b.mul(b.exp(y), total))]


def _log_softmax_jvp(b, c):
    # ẋ − Σ softmax(x)·ẋ along the axis
    p = b.exp(c.out)
    return tangent_terms(
        c, lambda d: b.sub(d, b.sum(b.mul(p, d), axis=[c.attrs["axis"]], keepdims=True))
    )


register(
    Op(
        name="softmax",
        args=("x",),
        shape=same_shape,
        impl=lambda x, axis: _softmax(x, axis),
        vjp=_softmax_vjp,
        jvp=symmetric(_softmax_vjp),  # the Jacobian diag(y) − y·yᵀ is symmetric
        math="{y} = exp({x}) / Σ exp({x}) along axis {axis}",
        derivs=("{x}̄ = {y}·({y}̄ − Σ {y}̄·{y})",),
        attrs={"axis": -1},
        normalize=_norm_axis1,
        category="softmax",
    )
)
register(
    Op(
        name="log_softmax",
        args=("x",),
        shape=same_shape,
        impl=lambda x, axis: x - _logsumexp(x, axis=axis, keepdims=True),
        vjp=_log_softmax_vjp,
        jvp=_log_softmax_jvp,
        math="{y} = {x} − log Σ exp({x}) along axis {axis}",
        derivs=("{x}̄ = {y}̄ − exp({y})·Σ {y}̄",),
        attrs={"axis": -1},
        normalize=_norm_axis1,
        category="softmax",
    )
)


# -------------------------------------------------------------------------- losses


def _mse_vjp(b, c):
    pred, target = c.ins
    shape = broadcast_rule(c.in_shapes, {})
    scale = b.div(b.mul(2.0, c.g), b.dimsize(dims=list(shape)))
    dy = b.mul(b.sub(pred, target), scale)
    return [dy, b.neg(dy)]


def _mse_jvp(b, c):
    # 2/N · Σ (pred − target)·(ṗred − ṫarget), one term per argument
    if all(d is None for d in c.dots):
        return [None, None]
    pred, target = c.ins
    n = b.dimsize(dims=list(broadcast_rule(c.in_shapes, {})))
    scale = b.div(b.mul(2.0, b.sub(pred, target)), n)
    return tangent_terms(
        c, lambda d: b.sum(b.mul(scale, d)), lambda d: b.neg(b.sum(b.mul(scale, d)))
    )


register(
    Op(
        name="mse",
        args=("pred", "target"),
        shape=lambda s, a: (broadcast_rule(s, a), ())[1],
        impl=lambda pred, target: np.mean(np.square(pred - target)),
        vjp=_mse_vjp,
        jvp=_mse_jvp,
        math="{y} = mean(({pred} − {target})²)",
        derivs=(
            "∂{y}/∂{pred} = 2·({pred} − {target})/N",
            "∂{y}/∂{target} = −2·({pred} − {target})/N",
        ),
        category="loss",
        shares="sub",
    )
)


def _sce_shape(in_shapes, attrs):
    logits, labels = in_shapes
    if len(logits) < 1 or tuple(labels) != tuple(logits[:-1]):
        raise ShapeError(
            f"labels must have the logits' shape without the class axis: logits "
            f"{dims.fmt_shape(logits)}, labels {dims.fmt_shape(labels)} "
            f"(expected {dims.fmt_shape(tuple(logits[:-1]))})"
        )
    _not_empty(logits, [len(logits) - 1], "a softmax over the classes")
    return ()


def _norm_ignore_index(in_shapes, attrs):
    ii = attrs["ignore_index"]
    if ii is not None and (isinstance(ii, bool) or not isinstance(ii, int)):
        raise ShapeError(
            f"attribute ignore_index must be an integer or null, got {ii!r}"
        )
    return {"ignore_index": ii}


def _sce_impl(logits, labels, ignore_index=None):
    lse = _logsumexp(logits, axis=-1)
    if ignore_index is None:
        picked = np.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
        return np.mean(lse - picked)
    keep = labels != ignore_index
    safe = np.where(keep, labels, 0)
    picked = np.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
    # PyTorch's definition: the mean over the tokens whose label is not ignored
    return np.sum(np.where(keep, lse - picked, 0.0)) / np.sum(keep)


def _sce_count(b, c):
    """N, the number of rows the mean divides by: every row, or the labels kept."""
    labels, ii = c.ins[1], c.attrs["ignore_index"]
    if ii is None:
        return b.dimsize(dims=list(c.in_shapes[0][:-1]))
    return b.count_kept(labels, ignore_index=ii)


def _sce_vjp(b, c):
    logits, labels = c.ins
    scale = b.div(c.g, _sce_count(b, c))
    grad = b.softmax_xent_grad(logits, labels, **c.attrs)
    return [b.mul(grad, scale), None]


def _sce_jvp(b, c):
    # Σ (softmax(logits) − onehot(labels))·l̇ogits / N; the int labels have no tangent
    logits, labels = c.ins
    n = _sce_count(b, c)
    grad = b.softmax_xent_grad(logits, labels, **c.attrs)
    return tangent_terms(
        c,
        lambda d: b.div(b.sum(b.mul(grad, d)), n),
        lambda d: None,
    )


def _class_labels(in_shapes, attrs):
    """The labels (argument 1) pick one of the logits' classes (their last axis)."""
    return 1, in_shapes[0][-1], False


register(
    Op(
        name="softmax_cross_entropy",
        args=("logits", "labels"),
        shape=_sce_shape,
        impl=_sce_impl,
        vjp=_sce_vjp,
        jvp=_sce_jvp,
        math="{y} = mean over the batch of (logsumexp({logits}) − {logits}[{labels}])",
        math_when=(
            (
                lambda a: a.get("ignore_index") is not None,
                (
                    "{y} = mean of (logsumexp({logits}) − {logits}[{labels}]) over the "
                    "rows whose label is not {ignore_index} (N of them; PyTorch's "
                    "ignore_index)"
                ),
            ),
        ),
        derivs=("∂{y}/∂{logits} = (softmax({logits}) − onehot({labels}))/N", "none"),
        attrs={"ignore_index": None},
        normalize=_norm_ignore_index,
        int_args=(1,),
        domain=("real", "labels"),
        indices=_class_labels,
        skips=lambda a: a.get("ignore_index"),
        category="loss",
    )
)


def _bce_impl(x, t):
    return np.mean(np.maximum(x, 0.0) - x * t + np.log1p(np.exp(-np.abs(x))))


def _bce_vjp(b, c):
    x, t = c.ins
    shape = broadcast_rule(c.in_shapes, {})
    scale = b.div(c.g, b.dimsize(dims=list(shape)))
    return [b.mul(b.sub(b.sigmoid(x), t), scale), b.mul(b.neg(x), scale)]


def _bce_jvp(b, c):
    # Σ (σ(logits) − targets)·l̇ogits / N + Σ (−logits)·ṫargets / N
    x, t = c.ins
    n = b.dimsize(dims=list(broadcast_rule(c.in_shapes, {})))
    return tangent_terms(
        c,
        lambda d: b.div(b.sum(b.mul(b.sub(b.sigmoid(x), t), d)), n),
        lambda d: b.div(b.sum(b.mul(b.neg(x), d)), n),
    )


register(
    Op(
        name="sigmoid_cross_entropy",
        args=("logits", "targets"),
        shape=lambda s, a: (broadcast_rule(s, a), ())[1],
        impl=_bce_impl,
        vjp=_bce_vjp,
        jvp=_bce_jvp,
        math="{y} = mean(max({logits}, 0) − {logits}·{targets} + log(1 + exp(−|{logits}|)))",
        derivs=(
            "∂{y}/∂{logits} = (σ({logits}) − {targets})/N",
            "∂{y}/∂{targets} = −{logits}/N",
        ),
        domain=("real", "unit"),
        category="loss",
    )
)


def _xent_grad_impl(logits, labels, ignore_index=None):
    hot = labels[..., None] == np.arange(logits.shape[-1])
    if ignore_index is None:
        return _softmax(logits, -1) - hot
    return (_softmax(logits, -1) - hot) * (labels != ignore_index)[..., None]


def _xent_grad_vjp(b, c):
    # y = softmax(x) − onehot: only the softmax depends on x
    x = c.ins[0]
    p = b.softmax(x, axis=len(c.in_shapes[0]) - 1)
    g = _xent_kept(b, c, c.g)
    inner = b.sum(b.mul(g, p), axis=[len(c.in_shapes[0]) - 1], keepdims=True)
    return [b.mul(p, b.sub(g, inner)), None]


def _xent_kept(b, c, v):
    """``v`` with the rows of ignored labels zeroed (as it is, without ignore_index)."""
    ii = c.attrs["ignore_index"]
    if ii is None:
        return v
    shape = list(c.in_shapes[1]) + [1]
    keep = b.reshape(b.kept_mask(c.ins[1], ignore_index=ii), shape=shape)
    return b.mul(v, keep)


def _xent_grad_jvp(b, c):
    # softmax's JVP: p·(ẋ − Σ ẋ·p) along the class axis; the labels have no tangent
    x, axis = c.ins[0], len(c.in_shapes[0]) - 1
    p = b.softmax(x, axis=axis)
    return tangent_terms(
        c,
        lambda d: _xent_kept(
            b, c, b.mul(p, b.sub(d, b.sum(b.mul(d, p), axis=[axis], keepdims=True)))
        ),
        lambda d: None,
    )


register(
    Op(
        name="softmax_xent_grad",
        args=("logits", "labels"),
        shape=lambda s, a: (_sce_shape(s, a), tuple(s[0]))[1],
        impl=_xent_grad_impl,
        vjp=_xent_grad_vjp,
        jvp=_xent_grad_jvp,
        math="{y} = softmax({logits}) − onehot({labels}) (cross-entropy's gradient per row)",
        math_when=(
            (
                lambda a: a.get("ignore_index") is not None,
                (
                    "{y} = softmax({logits}) − onehot({labels}) on the rows whose label "
                    "is not {ignore_index}, 0 on the others (cross-entropy's gradient)"
                ),
            ),
        ),
        derivs=("{logits}̄ = softmax({logits})·({y}̄ − Σ {y}̄·softmax({logits}))", "none"),
        attrs={"ignore_index": None},
        normalize=_norm_ignore_index,
        int_args=(1,),
        domain=("real", "labels"),
        indices=_class_labels,
        skips=lambda a: a.get("ignore_index"),
        internal=True,
        category="loss",
    )
)


def _onehot_impl(labels, depth):
    return (labels[..., None] == np.arange(depth)).astype(np.float64)


register(
    Op(
        name="onehot",
        args=("labels",),
        shape=lambda s, a: tuple(s[0]) + (a["depth"],),
        impl=_onehot_impl,
        vjp=None,
        jvp_reason="its only argument is int64 labels",
        math="{y} = 1 where the class index equals {labels}, else 0",
        attrs={"depth": REQUIRED},
        int_args=(0,),
        domain=("labels",),
        indices=lambda s, a: (0, a["depth"], False),
        internal=True,
        category="loss",
        folds=False,
    )
)


# The labels a sequence loss keeps (ignore_index): int64 in, floats of the graph dtype out.


def _norm_ignore_required(in_shapes, attrs):
    ii = attrs["ignore_index"]
    if isinstance(ii, bool) or not isinstance(ii, int):
        raise ShapeError(f"attribute ignore_index must be an integer, got {ii!r}")
    return {"ignore_index": ii}


register(
    Op(
        name="kept_mask",
        args=("labels",),
        shape=lambda s, a: tuple(s[0]),
        impl=lambda labels, ignore_index: (labels != ignore_index).astype(np.float64),
        vjp=None,
        jvp_reason="its only argument is int64 labels",
        math="{y} = 1 where {labels} ≠ {ignore_index}, else 0",
        attrs={"ignore_index": REQUIRED},
        normalize=_norm_ignore_required,
        int_args=(0,),
        domain=("labels",),
        internal=True,
        category="loss",
        folds=False,
    )
)
register(
    Op(
        name="count_kept",
        args=("labels",),
        shape=scalar_shape,
        impl=lambda labels, ignore_index: np.float64(np.sum(labels != ignore_index)),
        vjp=None,
        jvp_reason="its only argument is int64 labels",
        math="{y} = the number of {labels} ≠ {ignore_index}",
        attrs={"ignore_index": REQUIRED},
        normalize=_norm_ignore_required,
        int_args=(0,),
        domain=("labels",),
        internal=True,
        category="loss",
        folds=False,
    )
)
