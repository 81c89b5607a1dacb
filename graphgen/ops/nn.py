"""Normalization, embedding and other network ops, with ONNX semantics.

``batch_norm`` (inference), ``batch_norm_train``, ``layer_norm``, ``lrn``, ``pad``,
``gather``, ``erf``, ``gelu`` and ``clip``, and the internal ops their VJP rules build:
per-channel reductions (``channel_var``, ``channel_dot``), the fused batch-norm input
gradient (``batch_norm_dx``), the channel window sum of LRN, ``scatter_add`` (the adjoint
of ``gather``) and ``gelu_grad``.

Every op has a JVP rule (forward mode), the internal ones too, so that the adjoint graph
can be differentiated forward again (Hessian-vector products). The normalizations' rules
are derived from their math; ``batch_norm_train``'s input tangent reuses
``batch_norm_dx``, since its Jacobian in ``x`` is symmetric per channel.

"Per channel" means over every axis but axis 1: ``x`` is (N, C, d1, ...), and a
per-channel vector of shape (C,) broadcasts against it as (C, 1, ..., 1).
"""

from __future__ import annotations

import math

import numpy as np

from .. import dims
from ..errors import ShapeError
from .base import (
    HELPERS,
    REQUIRED,
    Op,
    broadcast_shapes,
    norm_axis,
    register,
    same_shape,
)

# Generated-module helpers (templates/numpy/helpers/<name>.py.j2) and those they call.
# Each entry lists every helper it needs, directly or not.
_CHANNEL = ("channel_blocks",)
HELPERS.update(
    {
        "channel_blocks": (),
        "channel_sum": (),
        "channel_var": _CHANNEL,
        "channel_dot": _CHANNEL,
        "channel_affine": (),
        "batch_norm": ("channel_affine",),
        "batch_norm_train": (*_CHANNEL, "channel_sum", "channel_var", "channel_affine"),
        "batch_norm_dx": _CHANNEL,
        "layer_norm": (),
        "channel_window_sum": (),
        "lrn": ("channel_window_sum",),
        "pad": (),
        "scatter_add": (),
        "erf_exp": (),
        "erf": ("erf_exp",),
        "gelu": ("erf_exp", "erf"),
        "gelu_grad": ("erf_exp", "erf"),
    }
)


def _number(value, what, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ShapeError(f"attribute {what} must be a number, got {value!r}")
    return float(value)


def _positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ShapeError(f"attribute {what} must be a positive integer, got {value!r}")
    return value


# ------------------------------------------------------------------ per-channel helpers


def channel_axes(ndim):
    """The axes a per-channel statistic reduces: every axis but 1."""
    return [0] + list(range(2, ndim))


def _per_channel(v, ndim):
    """A (C,) vector shaped to broadcast along axis 1 of a rank-``ndim`` array."""
    return np.reshape(v, (-1,) + (1,) * (ndim - 2))


def _bcast(b, v, shape):
    """Builder version of :func:`_per_channel`: (C,) -> (C, 1, ..., 1) when needed."""
    if len(shape) <= 2:
        return v
    return b.reshape(v, shape=[shape[1]] + [1] * (len(shape) - 2))


def _count(b, shape):
    """M, the number of entries each per-channel statistic averages."""
    return b.dimsize(dims=[shape[i] for i in channel_axes(len(shape))])


def _channel_sum(b, v, shape):
    return b.sum(v, axis=channel_axes(len(shape)))


def _check_channels(in_shapes, names, what):
    x = in_shapes[0]
    if len(x) < 2:
        raise ShapeError(
            f"{what} needs x of rank >= 2, (N, C, ...), got {dims.fmt_shape(x)}"
        )
    for name, s in zip(names, in_shapes[1:]):
        if tuple(s) != (x[1],):
            raise ShapeError(
                f"{name} must have shape ({x[1]},), one entry per channel of x "
                f"{dims.fmt_shape(x)}, got {dims.fmt_shape(s)}"
            )
    return tuple(x)


def _on_tangent(apply):
    """The JVP rule of an op whose other arguments (if any) are int labels: ``apply(b, c,
    ẋ)`` builds the first argument's contribution from its tangent ``ẋ``."""

    def jvp(b, c):
        dot = c.dots[0]
        return [None if dot is None else apply(b, c, dot)] + [None] * (len(c.ins) - 1)

    return jvp


def _norm_epsilon(in_shapes, attrs):
    eps = _number(attrs["epsilon"], "epsilon")
    if not eps >= 0:
        raise ShapeError(f"attribute epsilon must be >= 0, got {eps!r}")
    return {"epsilon": eps}


# ------------------------------------------------------------------- batch norm


def _batch_norm_impl(x, scale, bias, mean, var, epsilon):
    nd = x.ndim
    k = scale / np.sqrt(var + epsilon)
    return (x - _per_channel(mean, nd)) * _per_channel(k, nd) + _per_channel(bias, nd)


def _batch_norm_vjp(b, c):
    x, scale, _, mean, var = c.ins
    shape = c.in_shapes[0]
    g = c.g
    inv = b.pow(b.add(var, c.attrs["epsilon"]), -0.5)  # 1/√(var + ε)
    k = b.mul(scale, inv)  # ∂y/∂x = γ/√(var + ε), per channel
    sum_g = _channel_sum(b, g, shape)  # Σ ȳ
    dot = b.channel_dot(g, x, mean)  # Σ ȳ·(x − mean)
    dx = b.mul(g, _bcast(b, k, shape))
    dscale = b.mul(dot, inv)
    dmean = b.neg(b.mul(k, sum_g))
    dvar = b.mul(b.mul(dscale, k), b.mul(inv, -0.5))
    return [dx, dscale, sum_g, dmean, dvar]


def _batch_norm_jvp(b, c):
    x, scale, _, mean, var = c.ins
    dx, dscale, dbias, dmean, dvar = c.dots
    shape = c.in_shapes[0]
    inv = b.pow(b.add(var, c.attrs["epsilon"]), -0.5)  # 1/√(var + ε)
    k = b.mul(scale, inv)
    d = b.sub(x, _bcast(b, mean, shape)) if dscale or dvar else None  # x − mean
    return [
        None if dx is None else b.mul(dx, _bcast(b, k, shape)),
        None if dscale is None else b.mul(d, _bcast(b, b.mul(inv, dscale), shape)),
        None if dbias is None else _bcast(b, dbias, shape),
        None if dmean is None else _bcast(b, b.neg(b.mul(k, dmean)), shape),
        # ∂y/∂var = −½·γ·(var + ε)^(−3/2)·(x − mean)
        None
        if dvar is None
        else b.mul(
            d, _bcast(b, b.mul(b.mul(k, b.square(inv)), b.mul(dvar, -0.5)), shape)
        ),
    ]


register(
    Op(
        name="batch_norm",
        args=("x", "scale", "bias", "mean", "var"),
        shape=lambda s, a: _check_channels(
            s, ("scale", "bias", "mean", "var"), "batch_norm"
        ),
        impl=_batch_norm_impl,
        vjp=_batch_norm_vjp,
        jvp=_batch_norm_jvp,
        math="{y} = {scale}·({x} − {mean})/√({var} + ε) + {bias}, per channel (axis 1), "
        "ε = {epsilon}",
        derivs=(
            "∂{y}/∂{x} = {scale}/√({var} + ε)",
            "{scale}̄ = Σ {y}̄·({x} − {mean})/√({var} + ε) over every axis but 1",
            "{bias}̄ = Σ {y}̄ over every axis but 1",
            "{mean}̄ = −{scale}/√({var} + ε)·Σ {y}̄",
            "{var}̄ = −½·{scale}·({var} + ε)^(−3/2)·Σ {y}̄·({x} − {mean})",
        ),
        attrs={"epsilon": 1e-5},
        normalize=_norm_epsilon,
        domain=("real", "real", "real", "real", "positive"),
        category="normalization",
    )
)


def _batch_norm_train_impl(x, scale, bias, epsilon):
    axes = tuple(channel_axes(x.ndim))
    mean = x.mean(axis=axes)
    var = np.square(x - _per_channel(mean, x.ndim)).mean(axis=axes)
    return _batch_norm_impl(x, scale, bias, mean, var, epsilon)


def _batch_norm_train_vjp(b, c):
    x, scale, _ = c.ins
    shape = c.in_shapes[0]
    g = c.g
    n = _count(b, shape)
    mean = b.mean(x, axis=channel_axes(len(shape)))  # the batch statistics, again
    var = b.channel_var(x, mean)
    inv = b.pow(b.add(var, c.attrs["epsilon"]), -0.5)  # 1/σ
    sum_g = _channel_sum(b, g, shape)  # Σ ȳ = bias_bar
    dscale = b.mul(b.channel_dot(g, x, mean), inv)  # Σ ȳ·x̂
    k = b.mul(scale, inv)  # γ/σ
    # x̄ = γ/σ·(ȳ − Σȳ/M − x̂·Σȳx̂/M) = k·ȳ + slope·(x − mean) + shift
    slope = b.neg(b.div(b.mul(k, b.mul(inv, dscale)), n))
    shift = b.neg(b.div(b.mul(k, sum_g), n))
    dx = b.batch_norm_dx(g, x, mean, k, slope, shift)
    return [dx, dscale, sum_g]


def _batch_norm_train_jvp(b, c):
    x, scale, _ = c.ins
    dx, dscale, dbias = c.dots
    shape = c.in_shapes[0]
    mean = b.mean(x, axis=channel_axes(len(shape)))
    var = b.channel_var(x, mean)
    inv = b.pow(b.add(var, c.attrs["epsilon"]), -0.5)  # 1/σ
    out = [None, None, None if dbias is None else _bcast(b, dbias, shape)]
    if dx is not None:
        # ∂y/∂x is symmetric per channel, γ/σ·(I − 11ᵀ/M − x̂x̂ᵀ/M): the VJP's form with ẋ
        # for ȳ, k·ẋ + slope·(x − mean) + shift
        n = _count(b, shape)
        k = b.mul(scale, inv)
        proj = b.mul(b.channel_dot(dx, x, mean), inv)  # Σ ẋ·x̂
        slope = b.neg(b.div(b.mul(k, b.mul(inv, proj)), n))
        shift = b.neg(b.div(b.mul(k, _channel_sum(b, dx, shape)), n))
        out[0] = b.batch_norm_dx(dx, x, mean, k, slope, shift)
    if dscale is not None:  # x̂·γ̇
        out[1] = b.mul(
            b.sub(x, _bcast(b, mean, shape)), _bcast(b, b.mul(inv, dscale), shape)
        )
    return out


register(
    Op(
        name="batch_norm_train",
        args=("x", "scale", "bias"),
        shape=lambda s, a: _check_channels(s, ("scale", "bias"), "batch_norm_train"),
        impl=_batch_norm_train_impl,
        vjp=_batch_norm_train_vjp,
        jvp=_batch_norm_train_jvp,
        math="{y} = {scale}·x̂ + {bias}, x̂ = ({x} − μ)/√(σ² + ε), with μ, σ² the mean and "
        "(population) variance of {x} over every axis but 1, ε = {epsilon}",
        derivs=(
            (
                "{x}̄ = {scale}/√(σ² + ε)·({y}̄ − mean({y}̄) − x̂·mean({y}̄·x̂)), means over "
                "every axis but 1 (the gradient flows through μ and σ² too)"
            ),
            "{scale}̄ = Σ {y}̄·x̂ over every axis but 1",
            "{bias}̄ = Σ {y}̄ over every axis but 1",
        ),
        attrs={"epsilon": 1e-5},
        normalize=_norm_epsilon,
        category="normalization",
    )
)


# Internal per-channel reductions and the fused input gradient of batch_norm_train.


def _channel_var_impl(x, mean):
    d = x - _per_channel(mean, x.ndim)
    return np.square(d).mean(axis=tuple(channel_axes(x.ndim)))


def _channel_var_vjp(b, c):
    x, mean = c.ins
    shape = c.in_shapes[0]
    d = b.sub(x, _bcast(b, mean, shape))
    h2 = b.div(b.mul(c.g, 2.0), _count(b, shape))  # 2·v̄/M
    return [
        b.mul(d, _bcast(b, h2, shape)),
        b.neg(b.mul(h2, _channel_sum(b, d, shape))),
    ]


def _channel_var_jvp(b, c):
    x, mean = c.ins
    dx, dmean = c.dots
    shape = c.in_shapes[0]
    two_over_m = b.div(2.0, _count(b, shape))
    return [
        None if dx is None else b.mul(b.channel_dot(dx, x, mean), two_over_m),
        None
        if dmean is None
        else b.neg(
            b.mul(
                b.mul(dmean, two_over_m),
                _channel_sum(b, b.sub(x, _bcast(b, mean, shape)), shape),
            )
        ),
    ]


register(
    Op(
        name="channel_var",
        args=("x", "mean"),
        shape=lambda s, a: _check_channels(s, ("mean",), "channel_var")[1:2],
        impl=_channel_var_impl,
        vjp=_channel_var_vjp,
        jvp=_channel_var_jvp,
        math="{y} = mean of ({x} − {mean})² over every axis but 1 (per channel)",
        derivs=(
            "∂{y}/∂{x} = 2·({x} − {mean})/M",
            "∂{y}/∂{mean} = −2·Σ({x} − {mean})/M",
        ),
        internal=True,
        category="normalization",
    )
)


def _channel_dot_impl(g, x, mean):
    d = x - _per_channel(mean, x.ndim)
    return (g * d).sum(axis=tuple(channel_axes(x.ndim)))


def _channel_dot_shape(in_shapes, attrs):
    g, x, mean = in_shapes
    if tuple(g) != tuple(x):
        raise ShapeError(
            f"g and x must have the same shape, got {dims.fmt_shape(g)} and "
            f"{dims.fmt_shape(x)}"
        )
    return _check_channels([x, mean], ("mean",), "channel_dot")[1:2]


def _channel_dot_vjp(b, c):
    g, x, mean = c.ins
    shape = c.in_shapes[0]
    h = _bcast(b, c.g, shape)
    return [
        b.mul(b.sub(x, _bcast(b, mean, shape)), h),
        b.mul(g, h),
        b.neg(b.mul(c.g, _channel_sum(b, g, shape))),
    ]


def _channel_dot_jvp(b, c):
    g, x, mean = c.ins
    dg, dx, dmean = c.dots
    shape = c.in_shapes[0]
    return [
        None if dg is None else b.channel_dot(dg, x, mean),
        None if dx is None else _channel_sum(b, b.mul(g, dx), shape),
        None if dmean is None else b.neg(b.mul(dmean, _channel_sum(b, g, shape))),
    ]


register(
    Op(
        name="channel_dot",
        args=("g", "x", "mean"),
        shape=_channel_dot_shape,
        impl=_channel_dot_impl,
        vjp=_channel_dot_vjp,
        jvp=_channel_dot_jvp,
        math="{y} = Σ {g}·({x} − {mean}) over every axis but 1 (per channel)",
        derivs=(
            "∂{y}/∂{g} = {x} − {mean}",
            "∂{y}/∂{x} = {g}",
            "∂{y}/∂{mean} = −Σ {g}",
        ),
        internal=True,
        category="normalization",
    )
)


def _batch_norm_dx_impl(g, x, mean, k, slope, shift):
    nd = x.ndim
    return (
        g * _per_channel(k, nd)
        + (x - _per_channel(mean, nd)) * _per_channel(slope, nd)
        + _per_channel(shift, nd)
    )


def _batch_norm_dx_shape(in_shapes, attrs):
    g, x = in_shapes[:2]
    if tuple(g) != tuple(x):
        raise ShapeError(
            f"g and x must have the same shape, got {dims.fmt_shape(g)} and "
            f"{dims.fmt_shape(x)}"
        )
    return _check_channels(
        in_shapes[1:], ("mean", "k", "slope", "shift"), "batch_norm_dx"
    )


def _batch_norm_dx_vjp(b, c):
    g, x, mean, k, slope, _ = c.ins
    shape = c.in_shapes[0]
    h = c.g
    return [
        b.mul(h, _bcast(b, k, shape)),
        b.mul(h, _bcast(b, slope, shape)),
        b.neg(b.mul(slope, _channel_sum(b, h, shape))),
        _channel_sum(b, b.mul(h, g), shape),
        b.channel_dot(h, x, mean),
        _channel_sum(b, h, shape),
    ]


def _batch_norm_dx_jvp(b, c):
    g, x, mean, k, slope, _ = c.ins
    dg, dx, dmean, dk, dslope, dshift = c.dots
    shape = c.in_shapes[0]
    return [
        None if dg is None else b.mul(dg, _bcast(b, k, shape)),
        None if dx is None else b.mul(dx, _bcast(b, slope, shape)),
        None if dmean is None else _bcast(b, b.neg(b.mul(slope, dmean)), shape),
        None if dk is None else b.mul(g, _bcast(b, dk, shape)),
        None
        if dslope is None
        else b.mul(b.sub(x, _bcast(b, mean, shape)), _bcast(b, dslope, shape)),
        None if dshift is None else _bcast(b, dshift, shape),
    ]


register(
    Op(
        name="batch_norm_dx",
        args=("g", "x", "mean", "k", "slope", "shift"),
        shape=_batch_norm_dx_shape,
        impl=_batch_norm_dx_impl,
        vjp=_batch_norm_dx_vjp,
        jvp=_batch_norm_dx_jvp,
        math="{y} = {k}·{g} + {slope}·({x} − {mean}) + {shift}, per channel "
        "(batch_norm_train's input gradient in one pass)",
        derivs=(
            "∂{y}/∂{g} = {k}",
            "∂{y}/∂{x} = {slope}",
            "{mean}̄ = −{slope}·Σ {y}̄",
            "{k}̄ = Σ {y}̄·{g}",
            "{slope}̄ = Σ {y}̄·({x} − {mean})",
            "{shift}̄ = Σ {y}̄",
        ),
        internal=True,
        category="normalization",
    )
)


# ------------------------------------------------------------------- layer norm


def _norm_layer_norm(in_shapes, attrs):
    x, scale, bias = in_shapes
    if not x:
        raise ShapeError("layer_norm needs x of rank >= 1, got a scalar")
    axis = norm_axis(attrs["axis"], len(x))
    inner = tuple(x[axis:])
    for name, s in (("scale", scale), ("bias", bias)):
        if len(s) > len(inner) or broadcast_shapes(s, inner) != inner:
            raise ShapeError(
                f"{name} {dims.fmt_shape(s)} must broadcast to the normalized dims "
                f"{dims.fmt_shape(inner)} of x {dims.fmt_shape(x)} (axes {axis}..)"
            )
    return {"axis": axis, **_norm_epsilon(in_shapes, attrs)}


def _layer_norm_impl(x, scale, bias, axis, epsilon):
    axes = tuple(range(axis, x.ndim))
    d = x - x.mean(axis=axes, keepdims=True)
    var = np.square(d).mean(axis=axes, keepdims=True)
    return d / np.sqrt(var + epsilon) * scale + bias


def _layer_norm_vjp(b, c):
    x, scale, _ = c.ins
    nd = len(c.in_shapes[0])
    axes = list(range(c.attrs["axis"], nd))
    g = c.g
    d = b.sub(x, b.mean(x, axis=axes, keepdims=True))  # x − μ
    var = b.mean(b.square(d), axis=axes, keepdims=True)
    inv = b.pow(b.add(var, c.attrs["epsilon"]), -0.5)  # 1/σ
    xhat = b.mul(d, inv)
    gh = b.mul(g, scale)  # x̂̄ = ȳ·γ
    # x̄ = (x̂̄ − mean(x̂̄) − x̂·mean(x̂̄·x̂))/σ over the normalized axes
    centered = b.sub(gh, b.mean(gh, axis=axes, keepdims=True))
    proj = b.mul(xhat, b.mean(b.mul(gh, xhat), axis=axes, keepdims=True))
    dx = b.mul(b.sub(centered, proj), inv)
    return [dx, b.mul(g, xhat), g]  # the adjoint pass sums γ̄ and β̄ down to their shapes


def _layer_norm_jvp(b, c):
    x, scale, _ = c.ins
    dx, dscale, dbias = c.dots
    nd = len(c.in_shapes[0])
    axes = list(range(c.attrs["axis"], nd))
    d = b.sub(x, b.mean(x, axis=axes, keepdims=True))  # x − μ
    var = b.mean(b.square(d), axis=axes, keepdims=True)
    inv = b.pow(b.add(var, c.attrs["epsilon"]), -0.5)  # 1/σ
    xhat = b.mul(d, inv)
    out = [None, None, dbias]  # the pass broadcasts β̇ (and γ̇·x̂ has x's shape)
    if dx is not None:
        # x̂̇ = (ẋ − mean(ẋ) − x̂·mean(x̂·ẋ))/σ over the normalized axes; ẏ = γ·x̂̇
        centered = b.sub(dx, b.mean(dx, axis=axes, keepdims=True))
        proj = b.mul(xhat, b.mean(b.mul(xhat, dx), axis=axes, keepdims=True))
        out[0] = b.mul(b.mul(b.sub(centered, proj), inv), scale)
    if dscale is not None:
        out[1] = b.mul(xhat, dscale)
    return out


register(
    Op(
        name="layer_norm",
        args=("x", "scale", "bias"),
        shape=same_shape,
        impl=_layer_norm_impl,
        vjp=_layer_norm_vjp,
        jvp=_layer_norm_jvp,
        math="{y} = {scale}·x̂ + {bias}, x̂ = ({x} − μ)/√(σ² + ε), with μ, σ² the mean and "
        "variance of {x} over axes {axis}.. (each row), ε = {epsilon}",
        derivs=(
            (
                "{x}̄ = (x̂̄ − mean(x̂̄) − x̂·mean(x̂̄·x̂))/√(σ² + ε), x̂̄ = {y}̄·{scale}, means "
                "over the normalized axes"
            ),
            "{scale}̄ = Σ {y}̄·x̂ over the broadcast axes",
            "{bias}̄ = Σ {y}̄ over the broadcast axes",
        ),
        attrs={"axis": -1, "epsilon": 1e-5},
        normalize=_norm_layer_norm,
        category="normalization",
    )
)


# -------------------------------------------------------------------------- LRN


def _lrn_window(size):
    """Channels before and after each channel in an LRN window of ``size``."""
    before = (size - 1) // 2
    return before, size - 1 - before


def _window_sum_impl(x, before, after):
    out = x.copy()
    n = x.shape[1]
    for k in range(1, min(before, n - 1) + 1):
        out[:, k:] += x[:, : n - k]
    for k in range(1, min(after, n - 1) + 1):
        out[:, : n - k] += x[:, k:]
    return out


def _norm_window(in_shapes, attrs):
    if len(in_shapes[0]) < 2:
        raise ShapeError(
            f"needs x of rank >= 2, (N, C, ...), got {dims.fmt_shape(in_shapes[0])}"
        )
    out = {}
    for k in ("before", "after"):
        v = attrs[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ShapeError(f"attribute {k} must be an integer >= 0, got {v!r}")
        out[k] = v
    return out


_window_sum_jvp = _on_tangent(
    lambda b, c, dx: b.channel_window_sum(
        dx, before=c.attrs["before"], after=c.attrs["after"]
    )
)

register(
    Op(
        name="channel_window_sum",
        args=("x",),
        shape=same_shape,
        impl=_window_sum_impl,
        vjp=lambda b, c: [
            b.channel_window_sum(c.g, before=c.attrs["after"], after=c.attrs["before"])
        ],
        jvp=_window_sum_jvp,
        math="{y}[:, c] = Σ {x}[:, c'] for c − {before} ≤ c' ≤ c + {after} "
        "(channels past either end count as 0)",
        derivs=(
            (
                "{x}̄ = the same window sum of {y}̄ with before and after swapped (the "
                "transpose)"
            ),
        ),
        attrs={"before": REQUIRED, "after": REQUIRED},
        normalize=_norm_window,
        internal=True,
        category="normalization",
    )
)


def _norm_lrn(in_shapes, attrs):
    if len(in_shapes[0]) < 2:
        raise ShapeError(
            f"lrn needs x of rank >= 2, (N, C, ...), got {dims.fmt_shape(in_shapes[0])}"
        )
    return {
        "size": _positive_int(attrs["size"], "size"),
        "alpha": _number(attrs["alpha"], "alpha"),
        "beta": _number(attrs["beta"], "beta"),
        "bias": _number(attrs["bias"], "bias"),
    }


def _lrn_impl(x, size, alpha, beta, bias):
    before, after = _lrn_window(size)
    d = bias + alpha / size * _window_sum_impl(np.square(x), before, after)
    return x / d**beta


def _lrn_vjp(b, c):
    x = c.ins[0]
    at = c.attrs
    before, after = _lrn_window(at["size"])
    a = at["alpha"] / at["size"]
    # d = bias + α/size·Σ_window x²; y = x·d^(−β)
    d = b.add(
        b.mul(b.channel_window_sum(b.square(x), before=before, after=after), a),
        at["bias"],
    )
    direct = b.mul(c.g, b.pow(d, -at["beta"]))
    # through d: −2αβ/size·x·(window sum, transposed, of ȳ·y/d)
    back = b.channel_window_sum(b.div(b.mul(c.g, c.out), d), before=after, after=before)
    return [b.sub(direct, b.mul(b.mul(x, back), 2.0 * a * at["beta"]))]


def _lrn_jvp(b, c):
    (x,) = c.ins
    (dx,) = c.dots
    if dx is None:
        return [None]
    at = c.attrs
    before, after = _lrn_window(at["size"])
    a = at["alpha"] / at["size"]
    d = b.add(
        b.mul(b.channel_window_sum(b.square(x), before=before, after=after), a),
        at["bias"],
    )
    # ẏ = ẋ·d^(−β) − β·y/d·ḋ, ḋ = 2α/size·Σ_window x·ẋ
    direct = b.mul(dx, b.pow(d, -at["beta"]))
    window = b.channel_window_sum(b.mul(x, dx), before=before, after=after)
    through = b.mul(b.mul(b.div(c.out, d), window), 2.0 * a * at["beta"])
    return [b.sub(direct, through)]


register(
    Op(
        name="lrn",
        args=("x",),
        shape=same_shape,
        impl=_lrn_impl,
        vjp=_lrn_vjp,
        jvp=_lrn_jvp,
        math="{y} = {x}/({bias} + {alpha}/{size}·Σ {x}²)^{beta}, the sum over a window of "
        "{size} channels (axis 1) around each channel: ⌊({size}−1)/2⌋ before, "
        "⌈({size}−1)/2⌉ after (ONNX LRN)",
        derivs=(
            (
                "{x}̄ = {y}̄·d^(−{beta}) − 2·{alpha}·{beta}/{size}·{x}·Σ_windows ({y}̄·{y}/d), "
                "d = {bias} + {alpha}/{size}·Σ {x}²"
            ),
        ),
        attrs={"size": REQUIRED, "alpha": 1e-4, "beta": 0.75, "bias": 1.0},
        normalize=_norm_lrn,
        category="normalization",
    )
)


# -------------------------------------------------------------------------- pad


def _norm_pad(in_shapes, attrs):
    nd = len(in_shapes[0])
    pads = attrs["pads"]
    if (
        not isinstance(pads, (list, tuple))
        or len(pads) != 2 * nd
        or any(isinstance(p, bool) or not isinstance(p, int) for p in pads)
    ):
        raise ShapeError(
            f"pads must be {2 * nd} integers [b1, ..., b{nd}, e1, ..., e{nd}] for x of "
            f"rank {nd}, got {pads!r}"
        )
    return {"pads": list(pads), "value": _number(attrs["value"], "value")}


def _pad_shape(in_shapes, attrs):
    x, pads = in_shapes[0], attrs["pads"]
    nd = len(x)
    out = []
    for i, d in enumerate(x):
        n = dims.add(d, pads[i] + pads[nd + i])
        if isinstance(n, int) and n < 0:
            raise ShapeError(
                f"pads {pads} crop axis {i} of x {dims.fmt_shape(x)} below zero size"
            )
        out.append(n)
    return tuple(out)


def _pad_impl(x, pads, value):
    nd = x.ndim
    shape = tuple(n + pads[i] + pads[nd + i] for i, n in enumerate(x.shape))
    out = np.full(shape, value, dtype=x.dtype)
    src, dst = [], []
    for i, n in enumerate(x.shape):
        lo, hi = max(0, -pads[i]), n - max(0, -pads[nd + i])
        size = max(0, hi - lo)
        src.append(slice(lo, lo + size))
        dst.append(slice(max(0, pads[i]), max(0, pads[i]) + size))
    out[tuple(dst)] = x[tuple(src)]
    return out


# pad is affine in x: its tangent is the tangent padded with zeros
_pad_jvp = _on_tangent(
    lambda b, c, dx: b.pad(dx, pads=list(c.attrs["pads"]), value=0.0)
)

register(
    Op(
        name="pad",
        args=("x",),
        shape=_pad_shape,
        impl=_pad_impl,
        vjp=lambda b, c: [b.pad(c.g, pads=[-p for p in c.attrs["pads"]], value=0.0)],
        jvp=_pad_jvp,
        math="{y} = {x} with {pads} entries added before (first half) and after (second "
        "half) each axis, filled with {value}; negative entries crop",
        derivs=("{x}̄ = {y}̄ with the padding cropped off (and the cropped parts zero)",),
        attrs={"pads": REQUIRED, "value": 0.0},
        normalize=_norm_pad,
        category="shape",
    )
)


# ----------------------------------------------------------------- gather/scatter


def _norm_gather(in_shapes, attrs):
    data = in_shapes[0]
    if not data:
        raise ShapeError("gather needs data of rank >= 1, got a scalar")
    return {"axis": norm_axis(attrs["axis"], len(data))}


def _gather_shape(in_shapes, attrs):
    data, idx = in_shapes
    axis = attrs["axis"]
    return tuple(data[:axis]) + tuple(idx) + tuple(data[axis + 1 :])


_gather_jvp = _on_tangent(lambda b, c, dx: b.gather(dx, c.ins[1], axis=c.attrs["axis"]))

register(
    Op(
        name="gather",
        args=("data", "indices"),
        shape=_gather_shape,
        impl=lambda data, indices, axis: np.take(data, indices, axis=axis),
        vjp=lambda b, c: [
            b.scatter_add(
                c.g, c.ins[1], axis=c.attrs["axis"], dim=c.in_shapes[0][c.attrs["axis"]]
            ),
            None,
        ],
        jvp=_gather_jvp,
        math="{y} = {data} indexed by {indices} along axis {axis} (negative indices count "
        "from the end): an embedding lookup",
        derivs=(
            (
                "{data}̄ = scatter_add({y}̄, {indices}): each row of {y}̄ added to the row of "
                "{data} it was read from"
            ),
            "none",
        ),
        attrs={"axis": 0},
        normalize=_norm_gather,
        int_args=(1,),
        domain=("real", "labels"),
        indices=lambda s, a: (1, s[0][a["axis"]], True),
        category="indexing",
    )
)


def _norm_scatter(in_shapes, attrs):
    g, idx = in_shapes
    dim = attrs["dim"]
    if isinstance(dim, bool) or not isinstance(dim, (int, str)):
        raise ShapeError(f"attribute dim must be a size, got {dim!r}")
    if isinstance(dim, str):
        dims.poly(dim)
    nd = len(g) - len(idx) + 1
    if nd < 1:
        raise ShapeError(
            f"g {dims.fmt_shape(g)} has fewer axes than indices {dims.fmt_shape(idx)}"
        )
    axis = norm_axis(attrs["axis"], nd)
    if tuple(g[axis : axis + len(idx)]) != tuple(idx):
        raise ShapeError(
            f"g {dims.fmt_shape(g)} must hold the indices' shape {dims.fmt_shape(idx)} "
            f"at axis {axis}"
        )
    return {"axis": axis, "dim": dim}


def _scatter_shape(in_shapes, attrs):
    g, idx = in_shapes
    axis = attrs["axis"]
    return tuple(g[:axis]) + (attrs["dim"],) + tuple(g[axis + len(idx) :])


def _scatter_add_impl(g, indices, axis, dim):
    out = np.zeros(g.shape[:axis] + (dim,) + g.shape[axis + indices.ndim :], g.dtype)
    moved = np.moveaxis(out, axis, 0)
    src = np.moveaxis(
        g.reshape(g.shape[:axis] + (indices.size,) + g.shape[axis + indices.ndim :]),
        axis,
        0,
    )
    np.add.at(moved, indices.reshape(-1), src)
    return out


_scatter_add_jvp = _on_tangent(
    lambda b, c, dx: b.scatter_add(
        dx, c.ins[1], axis=c.attrs["axis"], dim=c.attrs["dim"]
    )
)

register(
    Op(
        name="scatter_add",
        args=("g", "indices"),
        shape=_scatter_shape,
        impl=_scatter_add_impl,
        vjp=lambda b, c: [b.gather(c.g, c.ins[1], axis=c.attrs["axis"]), None],
        jvp=_scatter_add_jvp,
        math="{y} = zeros with {dim} entries along axis {axis}, and {g}[…, j, …] added "
        "at {indices}[j] (the adjoint of gather)",
        derivs=("{g}̄ = gather({y}̄, {indices}) along axis {axis}", "none"),
        attrs={"axis": REQUIRED, "dim": REQUIRED},
        normalize=_norm_scatter,
        int_args=(1,),
        domain=("real", "labels"),
        indices=lambda s, a: (1, a["dim"], True),
        internal=True,
        category="indexing",
    )
)


# ---------------------------------------------------------------- erf, gelu, clip

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


def _erf_impl(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(
        np.result_type(x, np.float32)
    )


def _erf_grad_impl(x):
    return _TWO_OVER_SQRT_PI * np.exp(-np.square(x))


_erf_jvp = _on_tangent(lambda b, c, dx: b.mul(dx, b.erf_grad(c.ins[0])))
# ∂/∂x 2/√π·exp(−x²) = −2x·y
_erf_grad_jvp = _on_tangent(
    lambda b, c, dx: b.mul(dx, b.mul(c.out, b.mul(c.ins[0], -2.0)))
)

register(
    Op(
        name="erf",
        args=("x",),
        shape=same_shape,
        impl=_erf_impl,
        vjp=lambda b, c: [b.mul(c.g, b.erf_grad(c.ins[0]))],
        jvp=_erf_jvp,
        math="{y} = erf({x}) = 2/√π ∫₀^{x} exp(−t²) dt",
        derivs=("∂{y}/∂{x} = 2/√π·exp(−{x}²) (erf_grad)",),
        category="unary",
    )
)
register(
    Op(
        name="erf_grad",
        args=("x",),
        shape=same_shape,
        impl=_erf_grad_impl,
        vjp=lambda b, c: [b.mul(c.g, b.mul(c.out, b.mul(c.ins[0], -2.0)))],
        jvp=_erf_grad_jvp,
        math="{y} = ∂erf({x})/∂{x} = 2/√π·exp(−{x}²)",
        derivs=("∂{y}/∂{x} = −2·{x}·2/√π·exp(−{x}²) = −2·{x}·{y}",),
        internal=True,
        category="unary",
    )
)


def _norm_gelu(in_shapes, attrs):
    approximate = attrs["approximate"]
    if approximate not in ("none", "tanh"):
        raise ShapeError(
            f"attribute approximate must be 'none' or 'tanh', got {approximate!r}"
        )
    return {"approximate": approximate}


def _gelu_impl(x, approximate):
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x**3)))
    return 0.5 * x * (1.0 + _erf_impl(x / math.sqrt(2.0)))


def _gelu_grad_impl(x, approximate):
    if approximate == "tanh":
        t = np.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x**3))
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_C * x**2)
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
    return 0.5 * (1.0 + _erf_impl(x / math.sqrt(2.0))) + x * _INV_SQRT_2PI * np.exp(
        -0.5 * x * x
    )


_gelu_jvp = _on_tangent(
    lambda b, c, dx: b.mul(
        dx, b.gelu_grad(c.ins[0], approximate=c.attrs["approximate"])
    )
)

register(
    Op(
        name="gelu",
        args=("x",),
        shape=same_shape,
        impl=_gelu_impl,
        vjp=lambda b, c: [
            b.mul(c.g, b.gelu_grad(c.ins[0], approximate=c.attrs["approximate"]))
        ],
        jvp=_gelu_jvp,
        math="{y} = {x}·Φ({x}) = ½·{x}·(1 + erf({x}/√2)); with approximate='tanh', "
        "½·{x}·(1 + tanh(√(2/π)·({x} + 0.044715·{x}³)))",
        derivs=("∂{y}/∂{x} = Φ({x}) + {x}·φ({x}) (gelu_grad)",),
        attrs={"approximate": "none"},
        normalize=_norm_gelu,
        category="unary",
    )
)


def _gelu_second(b, x, approximate):
    """gelu''(x), built from registered ops."""
    if approximate == "tanh":
        # f' = ½(1 + t) + ½x(1 − t²)u', t = tanh(u), u = √(2/π)(x + 0.044715x³)
        # f'' = (1 − t²)·(u' + ½x·(u'' − 2t·u'²))
        x2 = b.square(x)
        u = b.mul(b.add(x, b.mul(b.mul(x2, x), _GELU_C)), _SQRT_2_OVER_PI)
        t = b.tanh(u)
        du = b.mul(b.add(b.mul(x2, 3.0 * _GELU_C), 1.0), _SQRT_2_OVER_PI)
        ddu = b.mul(x, 6.0 * _GELU_C * _SQRT_2_OVER_PI)
        inner = b.sub(ddu, b.mul(b.mul(t, 2.0), b.square(du)))
        second = b.mul(b.sub(1.0, b.square(t)), b.add(du, b.mul(b.mul(x, 0.5), inner)))
    else:
        # f'' = φ(x)·(2 − x²), φ(x) = exp(−x²/2)/√(2π)
        x2 = b.square(x)
        phi = b.mul(b.exp(b.mul(x2, -0.5)), _INV_SQRT_2PI)
        second = b.mul(phi, b.sub(2.0, x2))
    return second


def _gelu_grad_vjp(b, c):
    return [b.mul(c.g, _gelu_second(b, c.ins[0], c.attrs["approximate"]))]


def _gelu_grad_jvp(b, c):
    (dx,) = c.dots
    if dx is None:
        return [None]
    return [b.mul(dx, _gelu_second(b, c.ins[0], c.attrs["approximate"]))]


register(
    Op(
        name="gelu_grad",
        args=("x",),
        shape=same_shape,
        impl=_gelu_grad_impl,
        vjp=_gelu_grad_vjp,
        jvp=_gelu_grad_jvp,
        math="{y} = ∂gelu({x})/∂{x} = Φ({x}) + {x}·φ({x}) (approximate={approximate})",
        derivs=("∂{y}/∂{x} = φ({x})·(2 − {x}²) (the tanh form has its own)",),
        attrs={"approximate": "none"},
        normalize=_norm_gelu,
        internal=True,
        category="unary",
    )
)


def _norm_clip(in_shapes, attrs):
    return {
        "min": _number(attrs["min"], "min", allow_none=True),
        "max": _number(attrs["max"], "max", allow_none=True),
    }


def _clip_impl(x, min, max):
    if min is None and max is None:
        return np.array(x, copy=True)
    return np.clip(x, min, max)


def _clip_mask(b, x, attrs):
    """1 where clip passes x through, None when it has no bounds."""
    lo, hi = attrs["min"], attrs["max"]
    mask = None
    if lo is not None:
        mask = b.ge(x, lo)  # 1 where min ≤ x
    if hi is not None:
        upper = b.ge(hi, x)  # 1 where x ≤ max
        mask = upper if mask is None else b.mul(mask, upper)
    return mask


def _clip_vjp(b, c):
    mask = _clip_mask(b, c.ins[0], c.attrs)
    return [c.g if mask is None else b.mul(c.g, mask)]


def _clip_jvp(b, c):
    (dx,) = c.dots
    if dx is None:
        return [None]
    mask = _clip_mask(b, c.ins[0], c.attrs)
    return [dx if mask is None else b.mul(dx, mask)]


register(
    Op(
        name="clip",
        args=("x",),
        shape=same_shape,
        impl=_clip_impl,
        vjp=_clip_vjp,
        jvp=_clip_jvp,
        math="{y} = min(max({x}, {min}), {max}) (a None bound is absent)",
        derivs=("∂{y}/∂{x} = 1 if {min} ≤ {x} ≤ {max} else 0",),
        attrs={"min": None, "max": None},
        normalize=_norm_clip,
        domain=("away0",),
        category="unary",
    )
)
