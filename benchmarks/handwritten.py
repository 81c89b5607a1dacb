"""Hand-written NumPy backprop for the five benchmark workloads: the baseline of every ratio.

Each function takes the arrays by name (inputs and params, as the generated modules do) and
returns ``(loss, {param: gradient})``. They are written the way a careful person writes
backprop by hand: reuse forward values, no copies, in-place updates where it is natural.
``tests/test_benchmarks_smoke.py`` checks them against the generated gradients.
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
