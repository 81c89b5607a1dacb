"""Convolution and pooling ops, with ONNX's attribute layouts.

Arrays are channels-first: ``x`` is ``(N, C, *spatial)`` with one, two or three spatial
axes; ``pads`` is ``[x1_begin, x2_begin, ..., x1_end, x2_end, ...]``. Only the batch size
``N`` may be symbolic. ``normalize`` resolves every default and ``auto_pad`` into explicit
int lists, so the code generator and ``impl`` always see ``strides``, ``pads`` and
``dilations`` spelled out.

In the math, ``o`` is an output position, ``k`` a kernel offset, ``s`` the strides, ``d``
the dilations and ``p`` the begin pads, all per spatial axis: window ``o`` reads the input
at ``o·s + k·d − p``.

The backward pass is built from internal ops that are themselves differentiable:
``conv_grad_input`` (a transposed convolution) and ``conv_grad_weight`` are bilinear, and
their VJPs are ``conv`` and each other again; ``max_pool_grad`` and ``max_pool_select``
(route to / read from each window's argmax) are each other's adjoints; ``avg_pool_grad``
is the adjoint of ``avg_pool``.

Forward mode: each op is linear or bilinear in its float arguments, so its JVP rule is the
op again, applied to the tangent (one argument at a time for ``conv`` and its gradients);
``max_pool``'s tangent is read at each window's argmax (``max_pool_select``), and the
argmax ops pass no tangent from ``x``, which they only route by.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .. import dims
from ..errors import ShapeError
from .base import HELPERS, REQUIRED, Op, register

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")

# The NumPy helpers (templates/numpy/helpers/<name>.py.j2) and the helpers they call.
HELPERS.update(
    {
        "out_size": (),
        "pad_spatial": (),
        "slab": (),
        "windows": (),
        "pool_pad": ("pad_spatial",),
        "pool_count": (),
        "pool_argmax": ("slab",),
        "im2col": ("pad_spatial", "windows"),
        "conv": ("out_size", "im2col", "pad_spatial", "windows"),
        "conv_grad_input": ("slab",),
        "conv_grad_weight": ("im2col", "pad_spatial", "windows"),
        "max_pool": ("out_size", "pool_pad", "pad_spatial", "slab"),
        "max_pool_grad": ("pool_pad", "pad_spatial", "pool_argmax", "slab"),
        "max_pool_select": (
            "out_size",
            "pool_pad",
            "pad_spatial",
            "pool_argmax",
            "slab",
        ),
        "avg_pool": ("out_size", "pool_pad", "pad_spatial", "slab", "pool_count"),
        "avg_pool_grad": ("slab", "pool_count"),
    }
)


# --------------------------------------------------------------------------- geometry


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _int_list(value, n, what, default, minimum):
    """``value`` as a list of ``n`` ints >= ``minimum`` (``default`` repeated if None)."""
    if value is None:
        if default is None:
            raise ShapeError(f"{what} must be a list of {n} integers, got None")
        return [default] * n
    if not isinstance(value, (list, tuple)) or not all(_is_int(v) for v in value):
        raise ShapeError(f"{what} must be a list of {n} integers, got {value!r}")
    if len(value) != n:
        raise ShapeError(
            f"{what} must have {n} entries ({n // 2 if what == 'pads' else n} spatial "
            f"axes{', begins then ends' if what == 'pads' else ''}), got {list(value)}"
        )
    if any(v < minimum for v in value):
        raise ShapeError(f"{what} entries must be >= {minimum}, got {list(value)}")
    return [int(v) for v in value]


def _int_attr(value, what, allowed=None, minimum=None):
    if not _is_int(value):
        raise ShapeError(f"{what} must be an integer, got {value!r}")
    value = int(value)
    if allowed is not None and value not in allowed:
        raise ShapeError(f"{what} must be one of {list(allowed)}, got {value}")
    if minimum is not None and value < minimum:
        raise ShapeError(f"{what} must be >= {minimum}, got {value}")
    return value


def _static(shape, what, first=1):
    """The sizes from axis ``first`` on, which must be ints (only N may be symbolic)."""
    if len(shape) < 3:
        raise ShapeError(
            f"{what} must have rank >= 3 (N, C, spatial...), got {dims.fmt_shape(shape)}"
        )
    if not all(isinstance(d, int) for d in shape[first:]):
        raise ShapeError(
            f"{what} {dims.fmt_shape(shape)}: channel and spatial sizes must be integers "
            "(only the batch size may be symbolic)"
        )
    return list(shape[first:])


def out_size(spatial, kernel, strides, pads, dilations, ceil_mode=0):
    """ONNX's output size per spatial axis (ceil mode: the last window starts inside the
    input or its begin padding); raises ShapeError when the window does not fit."""
    nd, out = len(spatial), []
    for i in range(nd):
        extent = (kernel[i] - 1) * dilations[i] + 1
        padded = spatial[i] + pads[i] + pads[nd + i]
        if extent > padded:
            raise ShapeError(
                f"the kernel (extent {extent}: size {kernel[i]}, dilation "
                f"{dilations[i]}) is larger than the padded input ({padded}: size "
                f"{spatial[i]}, pads {pads[i]} + {pads[nd + i]}) along spatial axis {i}"
            )
        span = padded - extent
        o = (span + (strides[i] - 1 if ceil_mode else 0)) // strides[i] + 1
        if ceil_mode and (o - 1) * strides[i] >= spatial[i] + pads[i]:
            o -= 1
        out.append(o)
    return out


def _geometry(attrs, spatial, kernel, auto=True):
    """strides, pads, dilations as explicit lists; ``auto_pad`` resolved into pads."""
    nd = len(spatial)
    strides = _int_list(attrs.get("strides"), nd, "strides", 1, 1)
    dilations = _int_list(attrs.get("dilations"), nd, "dilations", 1, 1)
    pads = _int_list(attrs.get("pads"), 2 * nd, "pads", 0, 0)
    out = {"strides": strides, "dilations": dilations, "pads": pads}
    if not auto:
        return out
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad not in AUTO_PADS:
        raise ShapeError(f"auto_pad must be one of {list(AUTO_PADS)}, got {auto_pad!r}")
    if auto_pad != "NOTSET":
        if any(pads):
            raise ShapeError(
                f"pads {pads} and auto_pad {auto_pad!r} cannot both be set"
            )
        begin, end = [0] * nd, [0] * nd
        if auto_pad != "VALID":
            for i in range(nd):
                target = -(-spatial[i] // strides[i])  # ceil(size / stride)
                extent = (kernel[i] - 1) * dilations[i] + 1
                need = max(0, (target - 1) * strides[i] + extent - spatial[i])
                small, big = need // 2, need - need // 2
                begin[i], end[i] = (
                    (small, big) if auto_pad == "SAME_UPPER" else (big, small)
                )
        out["pads"] = begin + end
    out["auto_pad"] = "NOTSET"
    return out


def _window_index(k, strides, dilations, out):
    """The strided slab of a padded array that kernel offset ``k`` reads, per window."""
    return (slice(None), slice(None)) + tuple(
        slice(ki * di, ki * di + (oi - 1) * si + 1, si)
        for ki, si, di, oi in zip(k, strides, dilations, out)
    )


def _pad_ref(x, pads, value, extra=None):
    nd = x.ndim - 2
    extra = extra or [0] * nd
    width = [(0, 0), (0, 0)] + [(pads[i], pads[nd + i] + extra[i]) for i in range(nd)]
    return np.pad(x, width, constant_values=value)


def _crop_ref(xp, pads, spatial):
    return xp[
        (slice(None), slice(None))
        + tuple(slice(p, p + s) for p, s in zip(pads, spatial))
    ]


def _geo(attrs, names=("strides", "pads", "dilations", "groups")):
    return {k: attrs[k] for k in names}


# ------------------------------------------------------------------------------- conv


def _check_conv(x, w, groups, what_w="w"):
    """(C, M, kernel) after checking that x (N, C, *S) and w (M, C/groups, *K) fit."""
    spatial = _static(x, "x", 1)
    C, spatial = spatial[0], spatial[1:]
    if len(w) != len(x) or not all(isinstance(d, int) for d in w):
        raise ShapeError(
            f"{what_w} must have shape (M, C/groups, *kernel) with integer sizes and one "
            f"kernel size per spatial axis of x {dims.fmt_shape(x)}, got "
            f"{dims.fmt_shape(w)}"
        )
    M, Cg, kernel = w[0], w[1], list(w[2:])
    if C % groups:
        raise ShapeError(f"groups {groups} does not divide the {C} input channels of x")
    if M % groups:
        raise ShapeError(
            f"groups {groups} does not divide the {M} output channels ({what_w}'s first "
            "axis)"
        )
    if Cg * groups != C:
        raise ShapeError(
            f"channels differ: x has {C} channels, so {what_w} needs C/groups = "
            f"{C // groups} input channels on axis 1 (groups {groups}), got {Cg} "
            f"({what_w} {dims.fmt_shape(w)})"
        )
    return C, M, spatial, kernel


def _norm_conv(in_shapes, attrs):
    x, w = in_shapes
    groups = _int_attr(attrs["groups"], "groups", minimum=1)
    _, _, spatial, kernel = _check_conv(x, w, groups)
    ks = attrs.get("kernel_shape")
    if ks is not None and _int_list(ks, len(kernel), "kernel_shape", 1, 1) != kernel:
        raise ShapeError(f"kernel_shape {list(ks)} differs from w's kernel {kernel}")
    geo = _geometry(attrs, spatial, kernel)
    out_size(spatial, kernel, geo["strides"], geo["pads"], geo["dilations"])
    return {**geo, "groups": groups, "kernel_shape": kernel}


def _conv_shape(in_shapes, attrs):
    x, w = in_shapes
    out = out_size(x[2:], w[2:], attrs["strides"], attrs["pads"], attrs["dilations"])
    return (x[0], w[0], *out)


def _conv_impl(
    x, w, strides, pads, dilations, groups, auto_pad=None, kernel_shape=None
):
    """Reference: y[n, m, o] = Σ_c,k x[n, c, o·s + k·d − p]·w[m, c, k], one kernel
    offset and one groups at a time."""
    out = out_size(x.shape[2:], w.shape[2:], strides, pads, dilations)
    xp = _pad_ref(x, pads, 0.0)
    M, cg = w.shape[0], w.shape[1]
    mg, C = M // groups, x.shape[1]
    n, P = x.shape[0], math.prod(out)
    y = np.zeros((n, M, P), dtype=np.result_type(x, w))
    for k in itertools.product(*(range(K) for K in w.shape[2:])):
        patch = xp[_window_index(k, strides, dilations, out)].reshape(n, C, P)
        for gi in range(groups):
            wk = w[(slice(gi * mg, (gi + 1) * mg), slice(None), *k)]
            # a BLAS product per kernel offset (np.einsum's own loops are 3-13x slower)
            y[:, gi * mg : (gi + 1) * mg] += wk @ patch[:, gi * cg : (gi + 1) * cg]
    return y.reshape(n, M, *out)


def _conv_vjp(b, c):
    x, w = c.ins
    geo = _geo(c.attrs)
    dx = b.conv_grad_input(c.g, w, input_spatial=list(c.in_shapes[0][2:]), **geo)
    dw = b.conv_grad_weight(x, c.g, kernel_shape=list(c.in_shapes[1][2:]), **geo)
    return [dx, dw]


def _conv_jvp(b, c):
    # bilinear: ẏ = conv(ẋ, w) + conv(x, ẇ)
    x, w = c.ins
    dx, dw = c.dots
    geo = _geo(c.attrs)
    return [
        None if dx is None else b.conv(dx, w, **geo),
        None if dw is None else b.conv(x, dw, **geo),
    ]


register(
    Op(
        name="conv",
        args=("x", "w"),
        shape=_conv_shape,
        impl=_conv_impl,
        vjp=_conv_vjp,
        jvp=_conv_jvp,
        math="{y}[n, m, o] = Σ_c,k {x}[n, c, o·s + k·d − p]·{w}[m, c, k] (strides s = "
        "{strides}, pads p = {pads}, dilations d = {dilations}, groups {groups})",
        derivs=(
            (
                "{x}̄ = conv_grad_input({y}̄, {w}): {x}̄[n, c, o·s + k·d − p] += Σ_m "
                "{y}̄[n, m, o]·{w}[m, c, k] (a transposed convolution)"
            ),
            (
                "{w}̄ = conv_grad_weight({x}, {y}̄): {w}̄[m, c, k] = Σ_n,o "
                "{y}̄[n, m, o]·{x}[n, c, o·s + k·d − p]"
            ),
        ),
        attrs={
            "strides": None,
            "pads": None,
            "dilations": None,
            "groups": 1,
            "auto_pad": "NOTSET",
            "kernel_shape": None,
        },
        normalize=_norm_conv,
        domain=("real", "real"),
        category="convolution",
    )
)


# conv_grad_input(g, w) -> x̄ (N, C, *input_spatial): the transposed convolution.


def _norm_conv_grad_input(in_shapes, attrs):
    g, w = in_shapes
    groups = _int_attr(attrs["groups"], "groups", minimum=1)
    if len(g) < 3 or len(w) != len(g):
        raise ShapeError(
            f"g {dims.fmt_shape(g)} and w {dims.fmt_shape(w)} must have the same rank >= 3"
        )
    nd = len(g) - 2
    spatial = _int_list(attrs["input_spatial"], nd, "input_spatial", None, 1)
    x = (g[0], _static(w, "w", 1)[0] * groups, *spatial)
    _, M, _, kernel = _check_conv(x, w, groups)
    geo = _geometry(attrs, spatial, kernel, auto=False)
    out = out_size(spatial, kernel, geo["strides"], geo["pads"], geo["dilations"])
    want = (g[0], M, *out)
    if tuple(g) != want:
        raise ShapeError(
            f"g must have the shape of conv's output {dims.fmt_shape(want)}, got "
            f"{dims.fmt_shape(g)}"
        )
    return {**geo, "groups": groups, "input_spatial": spatial}


def _conv_grad_input_impl(g, w, strides, pads, dilations, groups, input_spatial):
    """Reference: x̄[n, c, o·s + k·d − p] += Σ_m g[n, m, o]·w[m, c, k]."""
    nd = len(input_spatial)
    out = g.shape[2:]
    M, cg = w.shape[0], w.shape[1]
    mg = M // groups
    padded = [input_spatial[i] + pads[i] + pads[nd + i] for i in range(nd)]
    dxp = np.zeros((g.shape[0], cg * groups, *padded), dtype=np.result_type(g, w))
    n = g.shape[0]
    gf = g.reshape(n, M, math.prod(out))
    for k in itertools.product(*(range(K) for K in w.shape[2:])):
        idx = _window_index(k, strides, dilations, out)
        for gi in range(groups):
            wk = w[(slice(gi * mg, (gi + 1) * mg), slice(None), *k)]
            part = (wk.T @ gf[:, gi * mg : (gi + 1) * mg]).reshape(n, cg, *out)
            dxp[(slice(None), slice(gi * cg, (gi + 1) * cg)) + idx[2:]] += part
    return _crop_ref(dxp, pads, input_spatial)


def _conv_grad_input_vjp(b, c):
    g, w = c.ins
    geo = _geo(c.attrs)
    dg = b.conv(c.g, w, **geo)
    dw = b.conv_grad_weight(c.g, g, kernel_shape=list(c.in_shapes[1][2:]), **geo)
    return [dg, dw]


def _conv_grad_input_jvp(b, c):
    g, w = c.ins
    dg, dw = c.dots
    geo = {**_geo(c.attrs), "input_spatial": list(c.attrs["input_spatial"])}
    return [
        None if dg is None else b.conv_grad_input(dg, w, **geo),
        None if dw is None else b.conv_grad_input(g, dw, **geo),
    ]


register(
    Op(
        name="conv_grad_input",
        args=("g", "w"),
        shape=lambda s, a: (s[0][0], s[1][1] * a["groups"], *a["input_spatial"]),
        impl=_conv_grad_input_impl,
        vjp=_conv_grad_input_vjp,
        jvp=_conv_grad_input_jvp,
        math="{y}[n, c, o·s + k·d − p] += Σ_m {g}[n, m, o]·{w}[m, c, k] (transposed "
        "convolution: conv's input gradient; strides s = {strides}, pads p = {pads}, "
        "dilations d = {dilations}, groups {groups})",
        derivs=(
            (
                "{g}̄ = conv({y}̄, {w}) (bilinear: the adjoint of a transposed "
                "convolution is the convolution)"
            ),
            "{w}̄ = conv_grad_weight({y}̄, {g})",
        ),
        attrs={
            "strides": REQUIRED,
            "pads": REQUIRED,
            "dilations": REQUIRED,
            "groups": 1,
            "input_spatial": REQUIRED,
        },
        normalize=_norm_conv_grad_input,
        domain=("real", "real"),
        internal=True,
        category="convolution",
    )
)


# conv_grad_weight(x, g) -> w̄ (M, C/groups, *kernel_shape).


def _norm_conv_grad_weight(in_shapes, attrs):
    x, g = in_shapes
    groups = _int_attr(attrs["groups"], "groups", minimum=1)
    rest = _static(x, "x", 1)
    C, spatial = rest[0], rest[1:]
    kernel = _int_list(attrs["kernel_shape"], len(spatial), "kernel_shape", None, 1)
    if len(g) != len(x) or not isinstance(g[1], int):
        raise ShapeError(
            f"g {dims.fmt_shape(g)} must have x's rank and an integer channel size"
        )
    if C % groups:
        raise ShapeError(f"groups {groups} does not divide the {C} input channels of x")
    _check_conv(x, (g[1], C // groups, *kernel), groups, what_w="the weight")
    geo = _geometry(attrs, spatial, kernel, auto=False)
    out = out_size(spatial, kernel, geo["strides"], geo["pads"], geo["dilations"])
    want = (x[0], g[1], *out)
    if tuple(g) != want:
        raise ShapeError(
            f"g must have the shape of conv's output {dims.fmt_shape(want)}, got "
            f"{dims.fmt_shape(g)}"
        )
    return {**geo, "groups": groups, "kernel_shape": kernel}


def _conv_grad_weight_impl(x, g, strides, pads, dilations, groups, kernel_shape):
    """Reference: w̄[m, c, k] = Σ_n,o g[n, m, o]·x[n, c, o·s + k·d − p]."""
    out = g.shape[2:]
    P = math.prod(out)
    M, C = g.shape[1], x.shape[1]
    mg, cg = M // groups, C // groups
    xp = _pad_ref(x, pads, 0.0)
    dw = np.zeros((M, cg, *kernel_shape), dtype=np.result_type(x, g))
    for k in itertools.product(*(range(K) for K in kernel_shape)):
        patch = xp[_window_index(k, strides, dilations, out)]
        for gi in range(groups):
            gg = g[:, gi * mg : (gi + 1) * mg].reshape(g.shape[0], mg, P)
            xx = patch[:, gi * cg : (gi + 1) * cg].reshape(g.shape[0], cg, P)
            dw[(slice(gi * mg, (gi + 1) * mg), slice(None), *k)] = np.tensordot(
                gg, xx, axes=([0, 2], [0, 2])
            )
    return dw


def _conv_grad_weight_vjp(b, c):
    x, g = c.ins
    geo = _geo(c.attrs)
    dx = b.conv_grad_input(g, c.g, input_spatial=list(c.in_shapes[0][2:]), **geo)
    dg = b.conv(x, c.g, **geo)
    return [dx, dg]


def _conv_grad_weight_jvp(b, c):
    x, g = c.ins
    dx, dg = c.dots
    geo = {**_geo(c.attrs), "kernel_shape": list(c.attrs["kernel_shape"])}
    return [
        None if dx is None else b.conv_grad_weight(dx, g, **geo),
        None if dg is None else b.conv_grad_weight(x, dg, **geo),
    ]


register(
    Op(
        name="conv_grad_weight",
        args=("x", "g"),
        shape=lambda s, a: (s[1][1], s[0][1] // a["groups"], *a["kernel_shape"]),
        impl=_conv_grad_weight_impl,
        vjp=_conv_grad_weight_vjp,
        jvp=_conv_grad_weight_jvp,
        math="{y}[m, c, k] = Σ_n,o {g}[n, m, o]·{x}[n, c, o·s + k·d − p] (conv's weight "
        "gradient; strides s = {strides}, pads p = {pads}, dilations d = {dilations}, "
        "groups {groups})",
        derivs=(
            "{x}̄ = conv_grad_input({g}, {y}̄)",
            "{g}̄ = conv({x}, {y}̄)",
        ),
        attrs={
            "strides": REQUIRED,
            "pads": REQUIRED,
            "dilations": REQUIRED,
            "groups": 1,
            "kernel_shape": REQUIRED,
        },
        normalize=_norm_conv_grad_weight,
        domain=("real", "real"),
        internal=True,
        category="convolution",
    )
)


# ---------------------------------------------------------------------------- pooling


def _norm_pool(in_shapes, attrs, avg=False, internal=False):
    x = in_shapes[0]
    spatial = _static(x, "x", 2)
    nd = len(spatial)
    kernel = _int_list(attrs["kernel_shape"], nd, "kernel_shape", None, 1)
    ceil_mode = _int_attr(attrs["ceil_mode"], "ceil_mode", allowed=(0, 1))
    geo = _geometry(attrs, spatial, kernel, auto=not internal)
    out_size(spatial, kernel, geo["strides"], geo["pads"], geo["dilations"], ceil_mode)
    out = {**geo, "kernel_shape": kernel, "ceil_mode": ceil_mode}
    if avg:
        out["count_include_pad"] = _int_attr(
            attrs["count_include_pad"], "count_include_pad", allowed=(0, 1)
        )
    return out


def _pool_out(x, attrs):
    out = out_size(
        x[2:],
        attrs["kernel_shape"],
        attrs["strides"],
        attrs["pads"],
        attrs["dilations"],
        attrs["ceil_mode"],
    )
    return (x[0], x[1], *out)


def _window_axes(o, spatial, kernel, strides, pads, dilations):
    """Per spatial axis, the input positions of window ``o`` inside x, and the number of
    its positions inside the padded x (never counting past the end pad)."""
    nd = len(spatial)
    inside, padded = [], []
    for i in range(nd):
        pos = [o[i] * strides[i] - pads[i] + k * dilations[i] for k in range(kernel[i])]
        inside.append([p for p in pos if 0 <= p < spatial[i]])
        padded.append(sum(1 for p in pos if p < spatial[i] + pads[nd + i]))
    return inside, padded


def _pool_windows(x, kernel_shape, strides, pads, dilations, ceil_mode):
    """Reference: (output position, input positions per axis, padded count) per window."""
    spatial = x.shape[2:]
    out = out_size(spatial, kernel_shape, strides, pads, dilations, ceil_mode)
    for o in itertools.product(*(range(n) for n in out)):
        inside, padded = _window_axes(
            o, spatial, kernel_shape, strides, pads, dilations
        )
        yield o, inside, padded


def _window_values(x, inside):
    """x's values of one window, (N, C, P) with P its positions in row-major order."""
    v = x[np.ix_(range(x.shape[0]), range(x.shape[1]), *inside)]
    return v.reshape(x.shape[0], x.shape[1], -1)


def _window_positions(inside):
    return list(itertools.product(*inside))


def _max_pool_impl(x, kernel_shape, strides, pads, dilations, ceil_mode, auto_pad=None):
    """Reference: the max over each window's positions inside x (padding is −∞)."""
    geo = (kernel_shape, strides, pads, dilations, ceil_mode)
    out_shape = _pool_out(x.shape, dict(zip(_POOL_GEO, geo)))
    y = np.full(out_shape, -np.inf, dtype=x.dtype)
    for o, inside, _ in _pool_windows(x, *geo):
        v = _window_values(x, inside)
        if v.shape[-1]:
            y[(slice(None), slice(None), *o)] = v.max(axis=-1)
    return y


def _argmax_scatter(x, kernel_shape, strides, pads, dilations, ceil_mode, fn):
    """Call ``fn(o, index of each (n, c)'s first max in x)`` for every window."""
    for o, inside, _ in _pool_windows(
        x, kernel_shape, strides, pads, dilations, ceil_mode
    ):
        v = _window_values(x, inside)
        if not v.shape[-1]:
            continue
        first = v.argmax(axis=-1)  # ties: the first maximum, as PyTorch and ORT
        where = np.asarray(_window_positions(inside))[first]  # (N, C, nd)
        n, c = np.indices(first.shape)
        fn(o, (n, c, *np.moveaxis(where, -1, 0)))


def _max_pool_grad_impl(g, x, kernel_shape, strides, pads, dilations, ceil_mode):
    dx = np.zeros(x.shape, dtype=np.result_type(g, x))

    def route(o, index):
        np.add.at(dx, index, g[(slice(None), slice(None), *o)])

    _argmax_scatter(x, kernel_shape, strides, pads, dilations, ceil_mode, route)
    return dx


def _max_pool_select_impl(h, x, kernel_shape, strides, pads, dilations, ceil_mode):
    geo = dict(zip(_POOL_GEO, (kernel_shape, strides, pads, dilations, ceil_mode)))
    y = np.zeros(_pool_out(x.shape, geo), dtype=np.result_type(h, x))

    def pick(o, index):
        y[(slice(None), slice(None), *o)] = h[index]

    _argmax_scatter(x, kernel_shape, strides, pads, dilations, ceil_mode, pick)
    return y


_POOL_GEO = ("kernel_shape", "strides", "pads", "dilations", "ceil_mode")


def _max_pool_vjp(b, c):
    return [b.max_pool_grad(c.g, c.ins[0], **_geo(c.attrs, _POOL_GEO))]


def _max_pool_jvp(b, c):
    # the tangent read at each window's (first) maximum
    (dx,) = c.dots
    if dx is None:
        return [None]
    return [b.max_pool_select(dx, c.ins[0], **_geo(c.attrs, _POOL_GEO))]


# max_pool_grad and max_pool_select are linear in their first argument; the argmax they
# route through is piecewise constant in x, so x contributes nothing (None).


def _max_pool_grad_jvp(b, c):
    (dg, _) = c.dots
    if dg is None:
        return [None, None]
    return [b.max_pool_grad(dg, c.ins[1], **_geo(c.attrs, _POOL_GEO)), None]


def _max_pool_select_jvp(b, c):
    (dh, _) = c.dots
    if dh is None:
        return [None, None]
    return [b.max_pool_select(dh, c.ins[1], **_geo(c.attrs, _POOL_GEO)), None]


def _zeros_like(b, shape):
    return b.zeros(shape=list(shape))


POOL_MATH = (
    "kernel {kernel_shape}, strides s = {strides}, pads p = {pads}, dilations d = "
    "{dilations}, ceil_mode {ceil_mode}"
)

register(
    Op(
        name="max_pool",
        args=("x",),
        shape=lambda s, a: _pool_out(s[0], a),
        impl=_max_pool_impl,
        vjp=_max_pool_vjp,
        jvp=_max_pool_jvp,
        math="{y}[n, c, o] = max_k {x}[n, c, o·s + k·d − p], padding −∞ ("
        + POOL_MATH
        + ")",
        derivs=(
            (
                "{x}̄ = max_pool_grad({y}̄, {x}): {y}̄[n, c, o] goes to its window's "
                "first maximum"
            ),
        ),
        attrs={
            "kernel_shape": REQUIRED,
            "strides": None,
            "pads": None,
            "dilations": None,
            "ceil_mode": 0,
            "auto_pad": "NOTSET",
        },
        normalize=_norm_pool,
        domain=("real",),
        category="pooling",
    )
)


def _norm_max_pool_grad(in_shapes, attrs, select=False):
    small, x = in_shapes  # (g, x) or, for select, (h, x) with h shaped like x
    out = _norm_pool([x], attrs, internal=True)
    want = tuple(x) if select else _pool_out(x, out)
    what = "x" if select else "max_pool's output"
    if tuple(small) != want:
        raise ShapeError(
            f"{'h' if select else 'g'} must have the shape of {what} "
            f"{dims.fmt_shape(want)}, got {dims.fmt_shape(small)}"
        )
    return out


_INTERNAL_POOL_ATTRS = {
    "kernel_shape": REQUIRED,
    "strides": REQUIRED,
    "pads": REQUIRED,
    "dilations": REQUIRED,
    "ceil_mode": 0,
}

register(
    Op(
        name="max_pool_grad",
        args=("g", "x"),
        shape=lambda s, a: tuple(s[1]),
        impl=_max_pool_grad_impl,
        vjp=lambda b, c: [
            b.max_pool_select(c.g, c.ins[1], **_geo(c.attrs, _POOL_GEO)),
            _zeros_like(b, c.in_shapes[1]),
        ],
        jvp=_max_pool_grad_jvp,
        math="{y}[n, c, argmax of window o of {x}] += {g}[n, c, o] (max_pool's input "
        "gradient: each window's gradient goes to its first maximum; "
        + POOL_MATH
        + ")",
        derivs=(
            "{g}̄ = max_pool_select({y}̄, {x}): {y}̄ read at each window's argmax",
            "∂{y}/∂{x} = 0 (the argmax is piecewise constant)",
        ),
        attrs=dict(_INTERNAL_POOL_ATTRS),
        normalize=_norm_max_pool_grad,
        domain=("real", "real"),
        internal=True,
        category="pooling",
    )
)
register(
    Op(
        name="max_pool_select",
        args=("h", "x"),
        shape=lambda s, a: _pool_out(s[1], a),
        impl=_max_pool_select_impl,
        vjp=lambda b, c: [
            b.max_pool_grad(c.g, c.ins[1], **_geo(c.attrs, _POOL_GEO)),
            _zeros_like(b, c.in_shapes[1]),
        ],
        jvp=_max_pool_select_jvp,
        math="{y}[n, c, o] = {h}[n, c, argmax of window o of {x}] (the adjoint of "
        "max_pool_grad; " + POOL_MATH + ")",
        derivs=(
            "{h}̄ = max_pool_grad({y}̄, {x})",
            "∂{y}/∂{x} = 0 (the argmax is piecewise constant)",
        ),
        attrs=dict(_INTERNAL_POOL_ATTRS),
        normalize=lambda s, a: _norm_max_pool_grad(s, a, select=True),
        domain=("real", "real"),
        internal=True,
        category="pooling",
    )
)


# avg_pool


def _avg_pool_impl(
    x,
    kernel_shape,
    strides,
    pads,
    dilations,
    ceil_mode,
    count_include_pad,
    auto_pad=None,
):
    """Reference: the mean over each window (see the op's math for the divisor)."""
    geo = (kernel_shape, strides, pads, dilations, ceil_mode)
    y = np.zeros(_pool_out(x.shape, dict(zip(_POOL_GEO, geo))), dtype=x.dtype)
    for o, inside, padded in _pool_windows(x, *geo):
        v = _window_values(x, inside)
        count = np.prod(padded) if count_include_pad else v.shape[-1]
        y[(slice(None), slice(None), *o)] = v.sum(axis=-1) / count
    return y


def _avg_pool_grad_impl(
    g,
    kernel_shape,
    strides,
    pads,
    dilations,
    ceil_mode,
    count_include_pad,
    input_spatial,
):
    """Reference: x̄[n, c, i] += g[n, c, o]/count(o) for each position i of window o."""
    geo = (kernel_shape, strides, pads, dilations, ceil_mode)
    dx = np.zeros((*g.shape[:2], *input_spatial), dtype=g.dtype)
    for o, inside, padded in _pool_windows(dx, *geo):
        count = np.prod(padded) if count_include_pad else len(_window_positions(inside))
        share = g[(slice(None), slice(None), *o)] / count
        for pos in _window_positions(inside):
            dx[(slice(None), slice(None), *pos)] += share
    return dx


_AVG_GEO = _POOL_GEO + ("count_include_pad",)


def _avg_pool_vjp(b, c):
    return [
        b.avg_pool_grad(
            c.g, input_spatial=list(c.in_shapes[0][2:]), **_geo(c.attrs, _AVG_GEO)
        )
    ]


def _avg_pool_jvp(b, c):
    (dx,) = c.dots
    return [None if dx is None else b.avg_pool(dx, **_geo(c.attrs, _AVG_GEO))]


def _avg_pool_grad_jvp(b, c):
    (dg,) = c.dots
    if dg is None:
        return [None]
    geo = {**_geo(c.attrs, _AVG_GEO), "input_spatial": list(c.attrs["input_spatial"])}
    return [b.avg_pool_grad(dg, **geo)]


AVG_DIVISOR = (
    "count(o) = its positions inside {x} (inside the padded {x} if count_include_pad "
    "= 1; it is {count_include_pad})"
)

register(
    Op(
        name="avg_pool",
        args=("x",),
        shape=lambda s, a: _pool_out(s[0], a),
        impl=_avg_pool_impl,
        vjp=_avg_pool_vjp,
        jvp=_avg_pool_jvp,
        math="{y}[n, c, o] = Σ_k {x}[n, c, o·s + k·d − p] / count(o), zero padding, "
        + AVG_DIVISOR
        + " ("
        + POOL_MATH
        + ")",
        derivs=(
            "{x}̄ = avg_pool_grad({y}̄): {x}̄[n, c, o·s + k·d − p] += {y}̄[n, c, o]/count(o)",
        ),
        attrs={
            "kernel_shape": REQUIRED,
            "strides": None,
            "pads": None,
            "dilations": None,
            "ceil_mode": 0,
            "count_include_pad": 0,
            "auto_pad": "NOTSET",
        },
        normalize=lambda s, a: _norm_pool(s, a, avg=True),
        domain=("real",),
        category="pooling",
    )
)


def _norm_avg_pool_grad(in_shapes, attrs):
    g = in_shapes[0]
    if len(g) < 3:
        raise ShapeError(f"g must have rank >= 3, got {dims.fmt_shape(g)}")
    spatial = _int_list(attrs["input_spatial"], len(g) - 2, "input_spatial", None, 1)
    x = (*g[:2], *spatial)
    out = _norm_pool([x], attrs, avg=True, internal=True)
    want = _pool_out(x, out)
    if tuple(g) != want:
        raise ShapeError(
            f"g must have the shape of avg_pool's output {dims.fmt_shape(want)}, got "
            f"{dims.fmt_shape(g)}"
        )
    return {**out, "input_spatial": spatial}


register(
    Op(
        name="avg_pool_grad",
        args=("g",),
        shape=lambda s, a: (*s[0][:2], *a["input_spatial"]),
        impl=_avg_pool_grad_impl,
        vjp=lambda b, c: [b.avg_pool(c.g, **_geo(c.attrs, _AVG_GEO))],
        jvp=_avg_pool_grad_jvp,
        math="{y}[n, c, o·s + k·d − p] += {g}[n, c, o]/count(o) (avg_pool's input "
        "gradient; " + POOL_MATH + ")",
        derivs=("{g}̄ = avg_pool({y}̄) (linear: its adjoint is avg_pool again)",),
        attrs={
            **_INTERNAL_POOL_ATTRS,
            "count_include_pad": 0,
            "input_spatial": REQUIRED,
        },
        normalize=_norm_avg_pool_grad,
        domain=("real",),
        internal=True,
        category="pooling",
    )
)
