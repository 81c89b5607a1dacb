"""The Numba module recomputes cheap elementwise forward values in its backward loops
(memory.recompute_in_backward, as the NumPy module does): a tanh-GELU keeps only its
input from the forward pass to the backward pass, not its four intermediates."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import build_graph

import graphgen

pytest.importorskip("numba")


def _gelu_mlp():
    """x @ W1, the tanh form of GELU as an exporter writes it (nine ops), @ W2."""
    G = build_graph(
        {
            "x": ("input", (64, 16)),
            "W1": ("param", (16, 128)),
            "W2": ("param", (128, 4)),
        },
        [
            ("h", "matmul", ["x", "W1"], {}),
            ("h2", "mul", ["h", "h"], {}),
            ("h3", "mul", ["h2", "h"], {}),
            ("c", "mul", ["h3", "c3"], {}),
            ("inner", "add", ["h", "c"], {}),
            ("s", "mul", ["inner", "cs"], {}),
            ("t", "tanh", ["s"], {}),
            ("u", "add", ["t", "one"], {}),
            ("hh", "mul", ["h", "half"], {}),
            ("a", "mul", ["hh", "u"], {}),
            ("y", "matmul", ["a", "W2"], {}),
            ("sq", "square", ["y"], {}),
            ("L", "mean", ["sq"], {}),
        ],
        loss="L",
        outputs=["L"],
        wrt=["W1", "W2"],
    )
    consts = {"c3": 0.044715, "cs": 0.7978845608028654, "one": 1.0, "half": 0.5}
    for k, v in consts.items():
        G.add_node(k, kind="const", value=v, shape=(), dtype="float64")
    return G


def _body(src):
    body = src.split("def value_and_grad", 1)[1].split("\ndef ", 1)[0]
    return [ln.strip() for ln in body.splitlines() if not ln.strip().startswith("#")]


def test_gelu_keeps_only_its_input_for_the_backward_pass():
    G = _gelu_mlp()
    code = _body(graphgen.generate(G, backend="numba", whole=False))
    forward = code[: code.index("y = a @ W2")]
    calls = [ln for ln in forward if re.search(r"= _k_\w+\(", ln)]
    # one forward kernel, one result (the GELU); before, it returned h², 1 + tanh,
    # h/2 and 1 − tanh² as well, all kept until the backward pass read them
    assert calls == ["a = _k_a(h)"], forward
    assert "del a" in code[code.index("y = a @ W2") + 1]
    # the backward kernel recomputes a for W2's gradient beside h's gradient
    assert any(re.match(r"tmp\d+, h_bar = _k_\w+\(h, a_bar\)", ln) for ln in code)


def test_recomputed_values_give_the_numpy_modules_gradients():
    G = _gelu_mlp()
    ref = graphgen.compile(G)
    m = graphgen.compile(G, backend="numba", whole=False)
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((64, 16)), **ref.init_params()}
    loss, grads = m.value_and_grad(**arrays)
    want_loss, want = ref.value_and_grad(**arrays)
    assert loss == pytest.approx(want_loss, rel=1e-13)
    for k in want:
        np.testing.assert_allclose(grads[k], want[k], rtol=1e-12, atol=1e-14)
