"""Specs the page tests share."""

from __future__ import annotations


def residual_spec(layers=50, width=4, prefix=False):
    """A residual MLP: per layer m = h @ W, a = m + b, t = tanh(a), r = t + h.

    Names are ``m7``, ``W7``, ... or, with ``prefix``, ``layer7/m``, ``layer7/W``, ...
    """

    def name(kind, i):
        return f"layer{i}/{kind}" if prefix else f"{kind}{i}"

    d = {
        "name": "residual50",
        "inputs": {"x": ["batch", width], "t": ["batch", width]},
        "params": {},
        "nodes": {},
    }
    h = "x"
    for i in range(layers):
        W, b, m, a, t, r = (name(k, i) for k in ("W", "b", "m", "a", "t", "r"))
        d["params"][W] = [width, width]
        d["params"][b] = {"shape": [width], "init": "zeros"}
        d["nodes"][m] = {"op": "matmul", "args": [h, W]}
        d["nodes"][a] = {"op": "add", "args": [m, b]}
        d["nodes"][t] = {"op": "tanh", "args": [a]}
        d["nodes"][r] = {"op": "add", "args": [t, h]}
        h = r
    d["nodes"]["J"] = {"op": "mse", "args": [h, "t"]}
    d["outputs"] = ["J"]
    d["loss"] = "J"
    return d
