"""The NumPy forms that differ from the op's plain formula for speed compute the same
values and gradients: the cube written as products, the layer-norm row moments and the
softmax over a short axis."""

from __future__ import annotations

import os

import numpy as np
import pytest
import transformer_models as tm
from conftest import add_weighted_loss, build_graph

import graphgen
from graphgen import api, ops
from graphgen.views import values


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


def _one_op(op, shapes, attrs, dtype):
    names = [f"in{i}" for i in range(len(shapes))]
    G = build_graph(
        {n: ("input", s) for n, s in zip(names, shapes)},
        [("y", op, names, attrs)],
        outputs=["y"],
        dtype=dtype,
    )
    return G


SOFTMAX = [
    ((8, 4, 8, 8), -1),  # the attention of the small transformers: a short last axis
    ((512, 32), 1),  # the longest row taken on the transposed copy
    ((6, 33), -1),  # one entry longer: the rows' own maxima
    ((3, 200), 1),
    ((5,), 0),
    ((2, 3, 4), 1),  # not the last axis
    ((4, 3), 0),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("shape", "axis"), SOFTMAX)
def test_softmax_matches_the_ops_reference(shape, axis, dtype):
    m = graphgen.compile(_one_op("softmax", [shape], {"axis": axis}, dtype))
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 30).astype(dtype)
    x.reshape(-1)[1] = 800.0  # exp would overflow without the shift
    # masked entries (-inf), never a row's largest
    masked = (rng.random(shape) < 0.3) & (x < x.max(axis=axis, keepdims=True))
    x[masked] = -np.inf
    y = m.forward(in0=x)["y"]
    want = ops.get("softmax").impl(x.astype(np.float64), axis=axis)
    assert y.dtype == np.dtype(dtype) and y.shape == x.shape
    tol = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol)


LAYER_NORM = [((8, 8, 32), 2), ((4, 6), 0), ((2, 3, 4, 5), 1), ((3, 40), 1)]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("shape", "axis"), LAYER_NORM)
def test_layer_norm_matches_the_ops_reference(shape, axis, dtype):
    norm = shape[axis:]
    G = _one_op("layer_norm", [shape, norm, norm], {"axis": axis}, dtype)
    m = graphgen.compile(G)
    rng = np.random.default_rng(2)
    x, s, b = (
        (rng.standard_normal(sh) * 3 + 5).astype(dtype) for sh in (shape, norm, norm)
    )
    y = m.forward(in0=x, in1=s, in2=b)["y"]
    at = graphgen.prepare(G).nodes["y"]["attrs"]
    want = ops.get("layer_norm").impl(*(a.astype(np.float64) for a in (x, s, b)), **at)
    assert y.dtype == np.dtype(dtype) and y.shape == x.shape
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol)


def _against_reference(path):
    """The module's logits, loss and gradients in float64 against the reference
    interpreter (every op's ``impl``, the plain formulas) on the same graph."""
    G = graphgen.load(path, loss="softmax_cross_entropy", labels="labels")
    m = graphgen.compile(G, dtype="float64")
    A = api.lower(G, dtype="float64")
    rng = np.random.default_rng(3)
    arrays = {k: v.astype(np.float64) for k, v in m.init_params().items()}
    (batch, t), vocab = m.INPUTS["idx"], m.OUTPUTS["logits"][-1]
    arrays["idx"] = rng.integers(0, vocab, size=(batch, t))
    arrays["labels"] = rng.integers(0, vocab, size=(batch, t))
    stored = api.stored_arrays(G)
    for n in A:  # the interpreter reads a constant array from the graph
        at = A.nodes[n].get("attrs", {})
        if A.nodes[n].get("op") == "constant" and at.get("key") in stored:
            at["value"] = np.asarray(stored[at["key"]], np.float64).tolist()
    ref = values.evaluate(A, arrays)
    logits = m.forward(**arrays)["logits"]
    want = ref["logits"]
    assert np.abs(logits - want).max() <= 1e-10 * np.abs(want).max()
    loss, grads = m.value_and_grad(**arrays)
    assert abs(loss - float(ref[A.graph["loss"]])) <= 1e-10 * abs(loss)
    for name, node in A.graph["grads"].items():
        want = ref[node]
        err = np.abs(grads[name] - want).max()
        assert err <= 1e-10 * max(np.abs(want).max(), 1e-3), name


@pytest.mark.parametrize("name", tm.NAMES)
def test_transformer_fixture_matches_the_reference_interpreter(name):
    _against_reference(os.path.join(tm.HERE, f"{name}.onnx"))


def test_transformers_gpt2_matches_the_reference_interpreter(tmp_path):
    # the dynamo export of transformers' GPT-2: GELU's cube, softmax over 8 keys
    pytest.importorskip("torch", reason="PyTorch builds and exports the model")
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    pytest.importorskip("transformers", reason="the model comes from transformers")
    path = str(tmp_path / "gpt2.onnx")
    tm.export("gpt2", path, dynamo=True)
    _against_reference(path)


STACK_SPEC = """
name: stack
dtype: float64
inputs:
  x: [batch, 5, 4]
params:
  W: [4, 3]
  V: [3, 4]
nodes:
  xt: {op: transpose, args: [x], perm: [1, 0, 2]}
  y: {op: matmul, args: [xt, W]}
  z: {op: matmul, args: [y, V]}
  loss: {op: sum, args: [z]}
outputs: [z, loss]
loss: loss
wrt: [x, W, V]
"""


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_stack_times_a_matrix_is_one_product_over_all_rows(tmp_path, backend):
    """(..., K) @ (K, N) is written as one (rows, K) @ (K, N) product (NumPy's matmul
    calls BLAS per matrix of a stack, slower at a transformer's shapes): the same
    values and gradients for a symbolic batch (rows -1), and for a transposed stack,
    whose reshape is a copy, not a view."""
    if backend == "numba":
        pytest.importorskip("numba")
    path = tmp_path / "stack.yaml"
    path.write_text(STACK_SPEC)
    G = graphgen.load(path)
    src = graphgen.generate(G, backend=backend)
    assert "xt.reshape((-1, 4)) @ W).reshape((5, batch, 3))" in src
    assert "y.reshape((-1, 3)) @ V).reshape((5, batch, 4))" in src
    m = graphgen.compile(G, backend=backend)
    rng = np.random.default_rng(0)
    for batch in (3, 1, 0):
        x = rng.standard_normal((batch, 5, 4))
        p = m.init_params()
        out = m.forward(x=x, **p)
        want = np.swapaxes(x, 0, 1) @ p["W"] @ p["V"]
        np.testing.assert_allclose(out["z"], want, rtol=1e-13, atol=1e-13)
        _, grads = m.value_and_grad(x=x, **p)
        ones = np.ones((5, batch, 4))
        xt = np.swapaxes(x, 0, 1)
        np.testing.assert_allclose(
            grads["W"], np.einsum("rbk,rbn->kn", xt, ones @ p["V"].T), rtol=1e-13
        )
        np.testing.assert_allclose(
            grads["x"], np.swapaxes(ones @ p["V"].T @ p["W"].T, 0, 1), rtol=1e-13
        )
