"""The NumPy forms that differ from the op's plain formula for speed compute the same
values and gradients: the cube written as products, the layer-norm row moments and the
softmax over a short axis."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import add_weighted_loss, build_graph

import graphgen


def _with_const(G, name, value, dtype="float64"):
    G.add_node(name, kind="const", value=value, shape=(), dtype=dtype)
    return G


def _pow_graph(exponent):
    G = build_graph({"x": ("input", (3, 5))}, [], outputs=["y"])
    _with_const(G, "e", exponent)
    G.add_node("y", kind="op", op="pow", attrs={})
    G.add_edge("x", "y", pos=(0,))
    G.add_edge("e", "y", pos=(1,))
    add_weighted_loss(G)
    G.graph.update(loss="loss", outputs=["y", "loss"], wrt=["x"])
    return G


@pytest.mark.parametrize("exponent", [3.0, 3, 2.5, 2.0])
def test_constant_power_matches_np_power_and_its_gradient(exponent):
    G = _pow_graph(exponent)
    src = graphgen.generate(G)
    cube = exponent == 3
    # NumPy's power with exponent 3 calls libm's pow per element; products do not
    assert ("x * x * x" in src) == cube
    assert ("**3" not in src) if cube else ("x**" in src)
    m = graphgen.compile(G)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5)) * 3
    if not cube:
        x = np.abs(x) + 0.1  # a fractional power of a negative base is NaN
    w = rng.standard_normal((3, 5))
    y = m.forward(x=x, w=w)["y"]
    np.testing.assert_allclose(y, np.power(x, float(exponent)), rtol=1e-14, atol=0)
    _, grads = m.value_and_grad(x=x, w=w)
    want = w * exponent * np.power(x, exponent - 1.0)
    np.testing.assert_allclose(grads["x"], want, rtol=1e-14, atol=0)
