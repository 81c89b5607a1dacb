"""Hand-written NumPy backprop for the five benchmark workloads: the baseline of every ratio.

Each function takes the arrays by name (inputs and params, as the generated modules do) and
returns ``(loss, {param: gradient})``. They are written the way a careful person writes
backprop by hand: reuse forward values, no copies, in-place updates where it is natural.
``tests/test_benchmarks_smoke.py`` checks them against the generated gradients.

``FORWARD`` and ``JVP`` (W2, W3, W4) are the floor of ``benchmarks/hvp_bench.py``'s
jvp/forward ratio: the loss, and the loss with its tangent along tangents of every param
(the data held fixed, as the generated ``jvp`` is timed), with the fewest FLOPs and passes
we could write: a matmul whose operands both have tangents costs three GEMMs
(y = x·W, ẏ = ẋ·W + x·Ẇ), one with a fixed left operand two.
"""

from __future__ import annotations

import numpy as np


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def w1_tiny(x, t, W1, b1, W2, b2):
    h1 = _sigmoid(x @ W1 + b1)
    y = _sigmoid(h1 @ W2 + b2)
    d = y - t
    loss = float(np.mean(d * d))
    dz2 = (2.0 / d.size) * d * y * (1.0 - y)
    dz1 = (dz2 @ W2.T) * h1 * (1.0 - h1)
    return loss, {
        "W1": x.T @ dz1,
        "b1": dz1.sum(axis=0),
        "W2": h1.T @ dz2,
        "b2": dz2.sum(axis=0),
    }


def _softmax_xent(logits, labels):
    """Mean cross-entropy and its gradient with respect to the logits."""
    n = logits.shape[0]
    rows = np.arange(n)
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    s = e.sum(axis=1, keepdims=True)
    loss = float(np.mean(m[:, 0] + np.log(s[:, 0]) - logits[rows, labels]))
    e /= s
    e[rows, labels] -= 1.0
    e *= 1.0 / n
    return loss, e


def w2_mlp_small(x, labels, W1, b1, W2, b2):
    a1 = x @ W1
    a1 += b1
    h1 = np.maximum(a1, 0.0)
    logits = h1 @ W2
    logits += b2
    loss, dl = _softmax_xent(logits, labels)
    dh1 = dl @ W2.T
    dh1 *= a1 > 0
    return loss, {
        "W1": x.T @ dh1,
        "b1": dh1.sum(axis=0),
        "W2": h1.T @ dl,
        "b2": dl.sum(axis=0),
    }


def w3_mlp_large(x, labels, W1, b1, W2, b2, W3, b3):
    a1 = x @ W1
    a1 += b1
    h1 = np.maximum(a1, 0.0)
    a2 = h1 @ W2
    a2 += b2
    h2 = np.maximum(a2, 0.0)
    logits = h2 @ W3
    logits += b3
    loss, dl = _softmax_xent(logits, labels)
    dh2 = dl @ W3.T
    dh2 *= a2 > 0
    dh1 = dh2 @ W2.T
    dh1 *= a1 > 0
    return loss, {
        "W1": x.T @ dh1,
        "b1": dh1.sum(axis=0),
        "W2": h1.T @ dh2,
        "b2": dh2.sum(axis=0),
        "W3": h2.T @ dl,
        "b3": dl.sum(axis=0),
    }


LAYERS = 30


def w4_deep_elementwise(x, **p):
    hs = [x]
    h = x
    for i in range(1, LAYERS + 1):
        u = h * p[f"a{i}"]
        u += p[f"b{i}"]
        h = np.tanh(u, out=u)
        hs.append(h)
    loss = float(np.sum(h * h))
    g = 2.0 * h
    grads = {}
    for i in range(LAYERS, 0, -1):
        h = hs[i]
        g *= 1.0 - h * h  # now ∂loss/∂u_i
        grads[f"a{i}"] = np.einsum("ij,ij->j", g, hs[i - 1])
        grads[f"b{i}"] = g.sum(axis=0)
        g *= p[f"a{i}"]  # ∂loss/∂h_{i-1}
    return loss, {k: grads[k] for k in p}


def w5_fanout(x, W):
    h = np.tanh(x @ W)
    loss = 0.0
    gh = np.zeros_like(h)
    for k in range(1, 17):
        c = k / 4
        ch = c * h
        loss += float(np.sin(ch).sum())
        gh += c * np.cos(ch)
    gh *= 1.0 - h * h
    return loss, {"W": x.T @ gh}


def _xent_loss(logits, labels):
    """Mean cross-entropy, no gradient."""
    rows = np.arange(logits.shape[0])
    m = logits.max(axis=1, keepdims=True)
    s = np.exp(logits - m).sum(axis=1)
    return float(np.mean(m[:, 0] + np.log(s) - logits[rows, labels]))


def _mlp_forward(x, labels, layers):
    h = x
    for i, (W, b) in enumerate(layers):
        a = h @ W
        a += b
        h = a if i == len(layers) - 1 else np.maximum(a, 0.0, out=a)
    return _xent_loss(h, labels)


def _mlp_jvp(x, labels, layers, dots):
    """x fixed; ``dots``: (Ẇ, ḃ) per layer. Loss and its tangent Σ ∂loss/∂logits · ℓ̇."""
    h, hd = x, None
    for i, ((W, b), (Wd, bd)) in enumerate(zip(layers, dots)):
        a = h @ W
        a += b
        ad = h @ Wd  # ȧ = ḣ·W + h·Ẇ + ḃ (ḣ = 0 for the data)
        if hd is not None:
            ad += hd @ W
        ad += bd
        if i < len(layers) - 1:
            ad *= a > 0
            a = np.maximum(a, 0.0, out=a)
        h, hd = a, ad
    loss, g = _softmax_xent(h, labels)  # g = ∂loss/∂logits
    return loss, float(np.vdot(g, hd))


def w2_mlp_small_forward(x, labels, W1, b1, W2, b2):
    return _mlp_forward(x, labels, [(W1, b1), (W2, b2)])


def w2_mlp_small_jvp(tangents, x, labels, W1, b1, W2, b2):
    t = tangents
    dots = [(t["W1"], t["b1"]), (t["W2"], t["b2"])]
    return _mlp_jvp(x, labels, [(W1, b1), (W2, b2)], dots)


def w3_mlp_large_forward(x, labels, W1, b1, W2, b2, W3, b3):
    return _mlp_forward(x, labels, [(W1, b1), (W2, b2), (W3, b3)])


def w3_mlp_large_jvp(tangents, x, labels, W1, b1, W2, b2, W3, b3):
    t = tangents
    dots = [(t["W1"], t["b1"]), (t["W2"], t["b2"]), (t["W3"], t["b3"])]
    return _mlp_jvp(x, labels, [(W1, b1), (W2, b2), (W3, b3)], dots)


def w4_deep_elementwise_forward(x, **p):
    h = x * p["a1"]
    for i in range(1, LAYERS + 1):
        if i > 1:
            h *= p[f"a{i}"]
        h += p[f"b{i}"]
        np.tanh(h, out=h)
    return float(np.vdot(h, h))


def w4_deep_elementwise_jvp(tangents, x, **p):
    """One value buffer, one tangent buffer, one scratch: seven passes per layer for
    u̇ = ḣ·a + h·ȧ + ḃ and ḣ' = u̇·(1 − h'²), beside the forward's three."""
    h = x * p["a1"]
    d = x * tangents["a1"]
    tmp = np.empty_like(h)
    for i in range(1, LAYERS + 1):
        a, ad, bd = p[f"a{i}"], tangents[f"a{i}"], tangents[f"b{i}"]
        if i > 1:
            d *= a
            np.multiply(h, ad, out=tmp)
            d += tmp
            h *= a
        d += bd
        h += p[f"b{i}"]
        np.tanh(h, out=h)
        np.multiply(h, h, out=tmp)
        np.subtract(1.0, tmp, out=tmp)
        d *= tmp
    return float(np.vdot(h, h)), 2.0 * float(np.vdot(h, d))


FORWARD = {
    "w2_mlp_small": w2_mlp_small_forward,
    "w3_mlp_large": w3_mlp_large_forward,
    "w4_deep_elementwise": w4_deep_elementwise_forward,
}
JVP = {
    "w2_mlp_small": w2_mlp_small_jvp,
    "w3_mlp_large": w3_mlp_large_jvp,
    "w4_deep_elementwise": w4_deep_elementwise_jvp,
}

WORKLOADS = {
    "w1_tiny": w1_tiny,
    "w2_mlp_small": w2_mlp_small,
    "w3_mlp_large": w3_mlp_large,
    "w4_deep_elementwise": w4_deep_elementwise,
    "w5_fanout": w5_fanout,
}

# Symbolic sizes of the specs.
SIZES = {
    "w1_tiny": {"batch": 1},
    "w2_mlp_small": {"batch": 32},
    "w3_mlp_large": {"batch": 512},
    "w4_deep_elementwise": {},
    "w5_fanout": {},
}


def value_and_grad(workload, arrays):
    """``(loss, grads)`` of the hand-written backprop for ``workload``."""
    return WORKLOADS[workload](**arrays)
