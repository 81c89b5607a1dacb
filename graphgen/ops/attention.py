"""The float ops of transformer blocks, with ONNX semantics.

``rms_norm``, ``silu`` and ``swish``, ``rotary_embedding``, ``masked_softmax`` (an
additive mask) and ``masked_softmax_bool`` (a 0/1 keep mask), and fused scaled
dot-product attention: ``attention``, ``masked_attention`` (additive mask) and
``masked_attention_bool`` (keep mask), each causal or not and with grouped-query heads,
plus the internal ``attention_probs*`` ops their backward passes build and
``attention_apply``.

Attention arrays are (batch, heads, T, d): ``q`` is (B, Hq, T, D), ``k`` (B, Hkv, S, D)
and ``v`` (B, Hkv, S, Dv), where Hq is a multiple of Hkv (grouped-query attention: each
key/value head serves Hq/Hkv consecutive query heads, as ONNX Attention and PyTorch's
``repeat_interleave`` do). A mask broadcasts to the scores' shape (B, Hq, T, S);
``causal`` keeps key j for query i where j ≤ i (top-left aligned, as ONNX and PyTorch).

The VJP of attention builds the probabilities P = softmax(Q·Kᵀ·scale + mask)
(``attention_probs``) and reads the forward output O for the softmax's row term:
Σ_j P_ij·(Ȳ·Vᵀ)_ij = Σ_d Ȳ_id·O_id. The attention ops declare ``splits``: in a training
step, :func:`graphgen.passes.optimize.reuse_inner` rewrites the fused op as
``attention_apply(P, v)`` on that very node, so P is computed once, in the forward pass,
and kept for the backward pass: the one (B, Hq, T, S) probability tensor stored, and
nothing computed twice. A module without a loss keeps the fused op.

Every rule is built from registered ops (matmul, transpose, reshape, slice, concat, ...),
so the backward graphs can be differentiated again; every op has a JVP rule.
"""

from __future__ import annotations

import math

import numpy as np

from .. import dims
from ..errors import ShapeError
from .base import (
    HELPERS,
    Op,
    broadcast_shapes,
    norm_axis,
    register,
    same_shape,
    symmetric,
    tangent_terms,
)

HELPERS.update(
    {
        "rms_norm": (),
        "swish": (),
        "rotary_embedding": (),
        "softmax_keep": (),
        "attention_probs": ("softmax_keep",),
        "attention": ("softmax_keep", "attention_probs"),
        "attention_apply": (),
    }
)


def _number(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ShapeError(f"attribute {what} must be a number, got {value!r}")
    return float(value)


def _flag(value, what):
    if not isinstance(value, bool):
        raise ShapeError(f"attribute {what} must be true or false, got {value!r}")
    return value


# ---------------------------------------------------------------------- rms_norm


def _norm_rms(in_shapes, attrs):
    x, scale = in_shapes
    if not x:
        raise ShapeError("rms_norm needs x of rank >= 1, got a scalar")
    axis = norm_axis(attrs["axis"], len(x))
    inner = tuple(x[axis:])
    if len(scale) > len(inner) or broadcast_shapes(scale, inner) != inner:
        raise ShapeError(
            f"scale {dims.fmt_shape(scale)} must broadcast to the normalized dims "
            f"{dims.fmt_shape(inner)} of x {dims.fmt_shape(x)} (axes {axis}..)"
        )
    eps = _number(attrs["epsilon"], "epsilon")
    if not eps >= 0:
        raise ShapeError(f"attribute epsilon must be >= 0, got {eps!r}")
    return {"axis": axis, "epsilon": eps}


def _rms_impl(x, scale, axis, epsilon):
    axes = tuple(range(axis, x.ndim))
    return x / np.sqrt(np.square(x).mean(axis=axes, keepdims=True) + epsilon) * scale


def _rms_parts(b, c):
    """(axes, 1/rms, x̂ = x/rms) of an rms_norm node."""
    x = c.ins[0]
    axes = list(range(c.attrs["axis"], len(c.in_shapes[0])))
    ms = b.mean(b.square(x), axis=axes, keepdims=True)  # mean(x²)
    inv = b.pow(b.add(ms, c.attrs["epsilon"]), -0.5)  # 1/√(mean(x²) + ε)
    return axes, inv, b.mul(x, inv)


def _rms_vjp(b, c):
    scale = c.ins[1]
    axes, inv, xhat = _rms_parts(b, c)
    gh = b.mul(c.g, scale)  # x̂̄ = ȳ·γ
    # x̄ = (x̂̄ − x̂·mean(x̂̄·x̂))/rms over the normalized axes
    proj = b.mul(xhat, b.mean(b.mul(gh, xhat), axis=axes, keepdims=True))
    return [b.mul(b.sub(gh, proj), inv), b.mul(c.g, xhat)]


def _rms_jvp(b, c):
    scale = c.ins[1]
    dx, dscale = c.dots
    axes, inv, xhat = _rms_parts(b, c)
    out = [None, None]
    if dx is not None:  # ẏ = γ·(ẋ − x̂·mean(x̂·ẋ))/rms
        proj = b.mul(xhat, b.mean(b.mul(xhat, dx), axis=axes, keepdims=True))
        out[0] = b.mul(b.mul(b.sub(dx, proj), inv), scale)
    if dscale is not None:
        out[1] = b.mul(xhat, dscale)
    return out


register(
    Op(
        name="rms_norm",
        args=("x", "scale"),
        shape=same_shape,
        impl=_rms_impl,
        vjp=_rms_vjp,
        jvp=_rms_jvp,
        math="{y} = {scale}·{x}/√(mean({x}²) + ε), the mean over axes {axis}.. (each "
        "row), ε = {epsilon} (RMSNorm, ONNX RMSNormalization)",
        derivs=(
            (
                "{x}̄ = (x̂̄ − x̂·mean(x̂̄·x̂))/√(mean({x}²) + ε), x̂ = {x}/√(mean({x}²) + ε), "
                "x̂̄ = {y}̄·{scale}"
            ),
            "{scale}̄ = Σ {y}̄·x̂ over the broadcast axes",
        ),
        attrs={"axis": -1, "epsilon": 1e-5},
        normalize=_norm_rms,
        category="normalization",
    )
)


# ------------------------------------------------------------------- silu, swish


def _swish_impl(x, alpha=1.0):
    return x * (0.5 * (1.0 + np.tanh(0.5 * alpha * x)))


def _swish_vjp(b, c):
    x, alpha = c.ins[0], c.attrs.get("alpha", 1.0)
    s = b.sigmoid(x if alpha == 1.0 else b.mul(x, alpha))  # σ(αx)
    # ∂y/∂x = σ(αx)·(1 + αx·(1 − σ(αx)))
    ax = x if alpha == 1.0 else b.mul(x, alpha)
    return [b.mul(c.g, b.mul(s, b.add(b.mul(ax, b.sub(1.0, s)), 1.0)))]


def _norm_alpha(in_shapes, attrs):
    return {"alpha": _number(attrs["alpha"], "alpha")}


register(
    Op(
        name="silu",
        args=("x",),
        shape=same_shape,
        impl=_swish_impl,
        vjp=_swish_vjp,
        jvp=symmetric(_swish_vjp),  # elementwise: diagonal Jacobian
        math="{y} = {x}·σ({x}) (SiLU)",
        derivs=("∂{y}/∂{x} = σ({x})·(1 + {x}·(1 − σ({x})))",),
        category="unary",
        activation=True,
        transcendental=True,
    )
)
register(
    Op(
        name="swish",
        args=("x",),
        shape=same_shape,
        impl=_swish_impl,
        vjp=_swish_vjp,
        jvp=symmetric(_swish_vjp),
        math="{y} = {x}·σ({alpha}·{x}) (Swish; SiLU when {alpha} = 1)",
        derivs=("∂{y}/∂{x} = σ(α{x})·(1 + α{x}·(1 − σ(α{x})))",),
        attrs={"alpha": 1.0},
        normalize=_norm_alpha,
        category="unary",
        activation=True,
        transcendental=True,
    )
)


# ------------------------------------------------------------- rotary embedding


def _norm_rotary(in_shapes, attrs):
    x, cos, sin = in_shapes
    if not x or not isinstance(x[-1], int) or x[-1] % 2:
        raise ShapeError(
            f"rotary_embedding needs x whose last axis has an even, known size, got "
            f"{dims.fmt_shape(x)}"
        )
    half = tuple(x[:-1]) + (x[-1] // 2,)
    for name, s in (("cos", cos), ("sin", sin)):
        if len(s) > len(half) or broadcast_shapes(s, half) != half:
            raise ShapeError(
                f"{name} {dims.fmt_shape(s)} must broadcast to {dims.fmt_shape(half)}, "
                f"x {dims.fmt_shape(x)} with its last axis halved"
            )
    return {"interleaved": _flag(attrs["interleaved"], "interleaved")}


def _rotary_impl(x, cos, sin, interleaved):
    h = x.shape[-1] // 2
    x1, x2 = (x[..., 0::2], x[..., 1::2]) if interleaved else (x[..., :h], x[..., h:])
    out = np.empty(np.broadcast_shapes(x.shape, cos.shape[:-1] + (2 * h,)), x.dtype)
    a, c = (
        (out[..., 0::2], out[..., 1::2])
        if interleaved
        else (out[..., :h], out[..., h:])
    )
    a[...] = x1 * cos - x2 * sin
    c[...] = x2 * cos + x1 * sin
    return out


def _halves(b, x, shape, interleaved):
    """(x₁, x₂): the two halves rotary_embedding pairs up, as slices of ``x``."""
    d = shape[-1]
    axis = len(shape) - 1
    if interleaved:
        return (
            b.slice(x, axis=axis, start=0, stop=d, step=2),
            b.slice(x, axis=axis, start=1, stop=d, step=2),
        )
    h = d // 2
    return (
        b.slice(x, axis=axis, start=0, stop=h, step=1),
        b.slice(x, axis=axis, start=h, stop=d, step=1),
    )


def _join(b, first, second, shape, interleaved):
    """The inverse of :func:`_halves`: an array of ``shape`` from its two halves."""
    axis = len(shape) - 1
    if not interleaved:
        return b.concat(first, second, axis=axis)
    half = list(shape[:-1]) + [shape[-1] // 2, 1]
    pairs = b.concat(
        b.reshape(first, shape=half), b.reshape(second, shape=half), axis=axis + 1
    )
    return b.reshape(pairs, shape=list(shape))


def _rotary_vjp(b, c):
    x, cos, sin = c.ins
    inter = c.attrs["interleaved"]
    g1, g2 = _halves(b, c.g, c.out_shape, inter)
    x1, x2 = _halves(b, x, c.in_shapes[0], inter)
    return [
        # a rotation's transpose rotates the other way: sin → −sin
        b.rotary_embedding(c.g, cos, b.neg(sin), interleaved=inter),
        b.add(b.mul(g1, x1), b.mul(g2, x2)),
        b.sub(b.mul(g2, x1), b.mul(g1, x2)),
    ]


def _rotary_jvp(b, c):
    x, cos, sin = c.ins
    inter = c.attrs["interleaved"]
    shape = c.out_shape
    x1, x2 = _halves(b, x, c.in_shapes[0], inter)
    return tangent_terms(
        c,
        lambda d: b.rotary_embedding(d, cos, sin, interleaved=inter),
        lambda d: _join(b, b.mul(x1, d), b.mul(x2, d), shape, inter),
        lambda d: _join(b, b.neg(b.mul(x2, d)), b.mul(x1, d), shape, inter),
    )


register(
    Op(
        name="rotary_embedding",
        args=("x", "cos", "sin"),
        shape=lambda s, a: broadcast_shapes(
            s[0], tuple(broadcast_shapes(s[1], s[2])[:-1]) + (s[0][-1],)
        ),
        impl=_rotary_impl,
        vjp=_rotary_vjp,
        jvp=_rotary_jvp,
        math="{y} = ({x}₁·{cos} − {x}₂·{sin}, {x}₂·{cos} + {x}₁·{sin}): each pair "
        "({x}₁, {x}₂) of the last axis rotated by the angle whose cosine and sine are "
        "given; the pairs are the two halves of the axis, or neighbours when "
        "{interleaved} (ONNX RotaryEmbedding)",
        derivs=(
            "{x}̄ = the rotation of {y}̄ by the opposite angle (−{sin})",
            "{cos}̄ = {y}̄₁·{x}₁ + {y}̄₂·{x}₂",
            "{sin}̄ = {y}̄₂·{x}₁ − {y}̄₁·{x}₂",
        ),
        attrs={"interleaved": False},
        normalize=_norm_rotary,
        category="attention",
    )
)


# ------------------------------------------------------------------ masked softmax


def _softmax_keep(x, keep, axis=-1):
    """softmax(x) along ``axis`` over the entries where ``keep`` (None: all); a row
    with nothing kept (or all −∞) gives zeros, not nan."""
    if keep is not None:
        x = np.where(keep, x, -np.inf)
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - np.where(np.isfinite(m), m, 0.0))
    s = np.sum(e, axis=axis, keepdims=True)
    return e / np.where(s == 0.0, 1.0, s)


def _softmax_backward(b, y, g, axis):
    """y·(g − Σ g·y) along ``axis``: softmax's VJP (and, its Jacobian being symmetric,
    its JVP); entries the mask removed have y = 0 and stay 0."""
    return b.mul(y, b.sub(g, b.sum(b.mul(g, y), axis=[axis], keepdims=True)))


def _norm_masked_softmax(in_shapes, attrs):
    x, mask = in_shapes
    if not x:
        raise ShapeError("masked softmax needs x of rank >= 1, got a scalar")
    if len(mask) > len(x) or broadcast_shapes(x, mask) != tuple(x):
        raise ShapeError(
            f"the mask {dims.fmt_shape(mask)} must broadcast to x {dims.fmt_shape(x)}"
        )
    return {"axis": norm_axis(attrs["axis"], len(x))}


def _masked_softmax_vjp(b, c):
    dx = _softmax_backward(b, c.out, c.g, c.attrs["axis"])
    return [dx, dx]  # the mask is added to x: the same gradient, summed to its shape


def _masked_softmax_bool_vjp(b, c):
    return [_softmax_backward(b, c.out, c.g, c.attrs["axis"]), None]


register(
    Op(
        name="masked_softmax",
        args=("x", "mask"),
        shape=same_shape,
        impl=lambda x, mask, axis: _softmax_keep(x + mask, None, axis),
        vjp=_masked_softmax_vjp,
        jvp=lambda b, c: tangent_terms(
            c, lambda d: _softmax_backward(b, c.out, d, c.attrs["axis"])
        ),
        math="{y} = softmax({x} + {mask}) along axis {axis} (an additive mask: −∞ "
        "removes an entry)",
        derivs=(
            "{x}̄ = {y}·({y}̄ − Σ {y}̄·{y})",
            "{mask}̄ = {y}·({y}̄ − Σ {y}̄·{y}), summed to the mask's shape",
        ),
        attrs={"axis": -1},
        normalize=_norm_masked_softmax,
        category="softmax",
    )
)
register(
    Op(
        name="masked_softmax_bool",
        args=("x", "keep"),
        shape=same_shape,
        impl=lambda x, keep, axis: _softmax_keep(x, keep != 0, axis),
        vjp=_masked_softmax_bool_vjp,
        jvp=lambda b, c: [
            None
            if c.dots[0] is None
            else _softmax_backward(b, c.out, c.dots[0], c.attrs["axis"]),
            None,
        ],
        math="{y} = softmax of {x} along axis {axis} over the entries where {keep} ≠ 0; "
        "0 elsewhere, and 0 on a row with nothing kept",
        derivs=("{x}̄ = {y}·({y}̄ − Σ {y}̄·{y})", "none"),
        attrs={"axis": -1},
        normalize=_norm_masked_softmax,
        int_args=(1,),
        domain=("real", "labels"),
        category="softmax",
    )
)


# ---------------------------------------------------------------------- attention


def _norm_attention(in_shapes, attrs, has_v=True):
    q, k = in_shapes[0], in_shapes[1]
    for name, s in (("q", q), ("k", k)):
        if len(s) != 4:
            raise ShapeError(
                f"attention needs {name} of shape (batch, heads, T, d), got "
                f"{dims.fmt_shape(s)}"
            )
    hq, hkv = q[1], k[1]
    if not (isinstance(hq, int) and isinstance(hkv, int)) or hq % hkv:
        raise ShapeError(
            f"q's heads ({hq}) must be a known multiple of k's ({hkv}): q "
            f"{dims.fmt_shape(q)}, k {dims.fmt_shape(k)}"
        )
    if q[0] != k[0] or q[3] != k[3]:
        raise ShapeError(
            f"q and k must agree on batch and depth: q {dims.fmt_shape(q)}, k "
            f"{dims.fmt_shape(k)}"
        )
    if has_v:
        v = in_shapes[2]
        if len(v) != 4 or tuple(v[:3]) != tuple(k[:3]):
            raise ShapeError(
                f"v must have k's batch, heads and length, (batch, heads, S, dv): k "
                f"{dims.fmt_shape(k)}, v {dims.fmt_shape(v)}"
            )
    scale = attrs["scale"]
    if scale is None:
        if not isinstance(q[3], int):
            raise ShapeError(f"scale must be given for a symbolic depth {q[3]!r}")
        scale = 1.0 / math.sqrt(q[3])
    return {
        "scale": _number(scale, "scale"),
        "causal": _flag(attrs["causal"], "causal"),
    }


def _scores_shape(in_shapes):
    q, k = in_shapes[0], in_shapes[1]
    return (q[0], q[1], q[2], k[2])


def _check_mask(mask, scores):
    if len(mask) > 4 or broadcast_shapes(mask, scores) != tuple(scores):
        raise ShapeError(
            f"the mask {dims.fmt_shape(mask)} must broadcast to the scores "
            f"{dims.fmt_shape(scores)} (batch, heads, T, S)"
        )


def _attention_shape(kind):
    def rule(in_shapes, attrs):
        q, v = in_shapes[0], in_shapes[2]
        if kind:
            _check_mask(in_shapes[3], _scores_shape(in_shapes))
        return (q[0], q[1], q[2], v[3])

    return rule


def _probs_shape(kind):
    def rule(in_shapes, attrs):
        scores = _scores_shape(in_shapes)
        if kind:
            _check_mask(in_shapes[2], scores)
        return scores

    return rule


def _attention_probs_impl(q, k, mask, kind, scale, causal):
    """P = softmax(Q·Kᵀ·scale + mask), the mask additive (kind "add") or a keep mask
    ("bool"), and causal: key j ≤ query i."""
    kk = np.repeat(k, q.shape[1] // k.shape[1], axis=1)
    s = (q @ np.swapaxes(kk, -1, -2)) * scale
    keep = None
    if kind == "add":
        s = s + mask
    elif kind == "bool":
        keep = mask != 0
    if causal:
        tri = np.tril(np.ones(s.shape[-2:], dtype=bool))
        keep = tri if keep is None else keep & tri
    return _softmax_keep(s, keep)


def _attention_impl(q, k, v, mask, kind, scale, causal):
    p = _attention_probs_impl(q, k, mask, kind, scale, causal)
    return p @ np.repeat(v, q.shape[1] // v.shape[1], axis=1)


# The grouped products. q-shaped arrays are (B, Hq, T, ·), k-shaped ones (B, Hkv, S, ·)
# and P-shaped ones (B, Hq, T, S); with G = Hq/Hkv query heads per key head, a q-shaped
# array is viewed as (B, Hkv, G, T, ·) and a k-shaped one as (B, Hkv, 1, S, ·), so
# that matmul broadcasts the key head over its G query heads.


def _groups(b, c):
    q, k = c.in_shapes[0], c.in_shapes[1]
    return q[1] // k[1]


def _as_groups(b, x, groups, kv):
    """View a q- or P-shaped (``kv`` False) or k-shaped array in grouped form."""
    if groups == 1:
        return x
    s = list(b.shape(x))
    if kv:
        return b.reshape(x, shape=[s[0], s[1], 1, s[2], s[3]])
    return b.reshape(x, shape=[s[0], s[1] // groups, groups, s[2], s[3]])


def _ungroup(b, x, groups):
    if groups == 1:
        return x
    s = list(b.shape(x))
    return b.reshape(x, shape=[s[0], s[1] * s[2], s[3], s[4]])


def _swap(b, x):
    n = len(b.shape(x))
    return b.transpose(x, perm=list(range(n - 2)) + [n - 1, n - 2])


def _q_kt(b, a, kx, groups):
    """a·kxᵀ per head: a q-shaped (B, Hq, T, d), kx k-shaped (B, Hkv, S, d) -> P-shaped."""
    ga, gk = _as_groups(b, a, groups, False), _as_groups(b, kx, groups, True)
    return _ungroup(b, b.matmul(ga, _swap(b, gk)), groups)


def _p_v(b, p, vx, groups):
    """p·vx per head: p P-shaped, vx k-shaped (B, Hkv, S, d) -> q-shaped (B, Hq, T, d)."""
    gp, gv = _as_groups(b, p, groups, False), _as_groups(b, vx, groups, True)
    return _ungroup(b, b.matmul(gp, gv), groups)


def _pt_a(b, p, a, groups):
    """pᵀ·a per key head, summed over its G query heads: p P-shaped, a q-shaped ->
    k-shaped (B, Hkv, S, d)."""
    gp, ga = _as_groups(b, p, groups, False), _as_groups(b, a, groups, False)
    prod = b.matmul(_swap(b, gp), ga)
    return prod if groups == 1 else b.sum(prod, axis=[2])


def _probs_of(b, c, kind):
    """The node P = attention_probs(q, k[, mask]) with the node's attributes."""
    q, k = c.ins[0], c.ins[1]
    name = {None: "attention_probs", "add": "attention_probs_masked"}.get(
        kind, "attention_probs_bool"
    )
    extra = [c.ins[-1]] if kind else []
    return getattr(b, name)(q, k, *extra, **c.attrs)


def _probs_tangent(b, p, sdot):
    """Ṗ = P·(Ṡ − Σ Ṡ·P) along the key axis, for a score tangent Ṡ."""
    return _softmax_backward(b, p, sdot, 3)


def _attention_vjp(kind):
    def vjp(b, c):
        q, k, v = c.ins[:3]
        groups, scale = _groups(b, c), c.attrs["scale"]
        p = _probs_of(b, c, kind)
        dv = _pt_a(b, p, c.g, groups)  # V̄ = Pᵀ·Ȳ
        dp = _q_kt(b, c.g, v, groups)  # P̄ = Ȳ·Vᵀ
        # S̄ = P·(P̄ − Σ_j P̄·P), and Σ_j P̄_ij·P_ij = Σ_d Ȳ_id·O_id: the output, not P
        delta = b.sum(b.mul(c.g, c.out), axis=[3], keepdims=True)
        ds = b.mul(p, b.sub(dp, delta))
        dq = b.mul(_p_v(b, ds, k, groups), scale)  # Q̄ = scale·S̄·K
        dk = b.mul(_pt_a(b, ds, q, groups), scale)  # K̄ = scale·S̄ᵀ·Q
        out = [dq, dk, dv]
        if kind:
            out.append(ds if kind == "add" else None)
        return out

    return vjp


def _attention_jvp(kind):
    def jvp(b, c):
        q, k, v = c.ins[:3]
        groups, scale = _groups(b, c), c.attrs["scale"]
        p = _probs_of(b, c, kind)

        def through_p(sdot):  # Ṗ·V
            return _p_v(b, _probs_tangent(b, p, sdot), v, groups)

        terms = [
            lambda d: through_p(b.mul(_q_kt(b, d, k, groups), scale)),
            lambda d: through_p(b.mul(_q_kt(b, q, d, groups), scale)),
            lambda d: _p_v(b, p, d, groups),
        ]
        if kind == "add":
            terms.append(through_p)
        elif kind == "bool":
            terms.append(lambda d: None)
        return tangent_terms(c, *terms)

    return jvp


def _probs_vjp(kind):
    def vjp(b, c):
        q, k = c.ins[:2]
        groups, scale = _groups(b, c), c.attrs["scale"]
        ds = _softmax_backward(b, c.out, c.g, 3)  # S̄
        out = [
            b.mul(_p_v(b, ds, k, groups), scale),
            b.mul(_pt_a(b, ds, q, groups), scale),
        ]
        if kind:
            out.append(ds if kind == "add" else None)
        return out

    return vjp


def _probs_jvp(kind):
    def jvp(b, c):
        q, k = c.ins[:2]
        groups, scale = _groups(b, c), c.attrs["scale"]
        terms = [
            lambda d: _probs_tangent(b, c.out, b.mul(_q_kt(b, d, k, groups), scale)),
            lambda d: _probs_tangent(b, c.out, b.mul(_q_kt(b, q, d, groups), scale)),
        ]
        if kind == "add":
            terms.append(lambda d: _probs_tangent(b, c.out, d))
        elif kind == "bool":
            terms.append(lambda d: None)
        return tangent_terms(c, *terms)

    return jvp


_MASKS = {
    None: ("", (), "", ()),
    "add": ("_masked", ("mask",), " + {mask}", ("{mask}̄ = S̄, summed to its shape",)),
    "bool": (
        "_bool",
        ("keep",),
        ", −∞ where {keep} = 0",
        ("none",),
    ),
}
_CAUSAL = "; causal: −∞ above the diagonal (key j > query i)"


def _register_attention(kind):
    suffix, mask_args, mask_math, mask_derivs = _MASKS[kind]
    mask_facts = {"int_args": (3,), "domain": ("real",) * 3 + ("labels",)}
    if kind != "bool":
        mask_facts = {}
    name = {None: "attention", "add": "masked_attention"}.get(
        kind, "masked_attention_bool"
    )
    register(
        Op(
            name=name,
            args=("q", "k", "v", *mask_args),
            shape=_attention_shape(kind),
            impl=lambda q, k, v, *m, scale, causal: _attention_impl(
                q, k, v, m[0] if m else None, kind, scale, causal
            ),
            vjp=_attention_vjp(kind),
            jvp=_attention_jvp(kind),
            math="{y} = softmax(S)·{v} per head, S = {q}·{k}ᵀ·{scale}" + mask_math,
            math_when=(
                (
                    lambda a: a["causal"],
                    "{y} = softmax(S)·{v} per head, S = {q}·{k}ᵀ·{scale}"
                    + mask_math
                    + _CAUSAL,
                ),
            ),
            derivs=(
                (
                    "{q}̄ = {scale}·S̄·{k}, S̄ = P·(P̄ − Σ_d {y}̄·{y}), P̄ = {y}̄·{v}ᵀ, "
                    "P = softmax(S)"
                ),
                "{k}̄ = {scale}·S̄ᵀ·{q}, summed over the query heads of each key head",
                (
                    "{v}̄ = Pᵀ·{y}̄, summed over the query heads of each key head (a "
                    "key/value head serves consecutive query heads when {q} has more)"
                ),
                *mask_derivs,
            ),
            attrs={"scale": None, "causal": False},
            normalize=_norm_attention,
            category="attention",
            # the training step computes P once, keeps it, and applies it to v
            splits=(
                "attention_probs" + suffix,
                "attention_apply",
                (0, 1, 3) if kind else (0, 1),
                (2,),
            ),
            **mask_facts,
        )
    )
    probs_facts = {"int_args": (2,), "domain": ("real", "real", "labels")}
    if kind != "bool":
        probs_facts = {}
    register(
        Op(
            name="attention_probs" + suffix,
            args=("q", "k", *mask_args),
            shape=_probs_shape(kind),
            impl=lambda q, k, *m, scale, causal: _attention_probs_impl(
                q, k, m[0] if m else None, kind, scale, causal
            ),
            vjp=_probs_vjp(kind),
            jvp=_probs_jvp(kind),
            math="{y} = softmax({q}·{k}ᵀ·{scale}" + mask_math + ")",
            math_when=(
                (
                    lambda a: a["causal"],
                    "{y} = softmax({q}·{k}ᵀ·{scale}" + mask_math + ")" + _CAUSAL,
                ),
            ),
            derivs=(
                "{q}̄ = {scale}·S̄·{k}, S̄ = {y}·({y}̄ − Σ {y}̄·{y})",
                "{k}̄ = {scale}·S̄ᵀ·{q}, summed over the query heads of each key head",
                *mask_derivs,
            ),
            attrs={"scale": None, "causal": False},
            normalize=lambda s, a: _norm_attention(s, a, has_v=False),
            internal=True,
            category="attention",
            **probs_facts,
        )
    )


for _kind in (None, "add", "bool"):
    _register_attention(_kind)


def _apply_shape(in_shapes, attrs):
    p, v = in_shapes
    if len(p) != 4 or len(v) != 4 or p[0] != v[0] or p[3] != v[2]:
        raise ShapeError(
            f"attention_apply needs p (batch, Hq, T, S) and v (batch, Hkv, S, dv), got "
            f"{dims.fmt_shape(p)} and {dims.fmt_shape(v)}"
        )
    if not (isinstance(p[1], int) and isinstance(v[1], int)) or p[1] % v[1]:
        raise ShapeError(f"p's heads ({p[1]}) must be a known multiple of v's ({v[1]})")
    return (p[0], p[1], p[2], v[3])


def _apply_impl(p, v):
    return p @ np.repeat(v, p.shape[1] // v.shape[1], axis=1)


def _apply_groups(c):
    return c.in_shapes[0][1] // c.in_shapes[1][1]


register(
    Op(
        name="attention_apply",
        args=("p", "v"),
        shape=_apply_shape,
        impl=_apply_impl,
        vjp=lambda b, c: [
            _q_kt(b, c.g, c.ins[1], _apply_groups(c)),  # p̄ = ȳ·vᵀ
            _pt_a(b, c.ins[0], c.g, _apply_groups(c)),  # v̄ = pᵀ·ȳ
        ],
        jvp=lambda b, c: tangent_terms(
            c,
            lambda d: _p_v(b, d, c.ins[1], _apply_groups(c)),
            lambda d: _p_v(b, c.ins[0], d, _apply_groups(c)),
        ),
        math="{y} = {p}·{v} per head: the attention probabilities {p} applied to the "
        "values (a value head serves consecutive query heads when {p} has more)",
        derivs=(
            "{p}̄ = {y}̄·{v}ᵀ",
            "{v}̄ = {p}ᵀ·{y}̄, summed over the query heads of each value head",
        ),
        internal=True,
        category="attention",
    )
)
