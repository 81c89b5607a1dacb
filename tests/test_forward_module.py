"""The generated module's forward-mode functions (issue 17): ``jvp``, ``hvp``, ``hessian``.

Each against central differences in float64 (``jvp`` of ``forward``'s outputs, ``hvp``
and ``hessian`` of ``value_and_grad``'s gradient) on the example specs, in both
backends (Numba on the two smallest: its compile time); their argument checks; the CLI
(``compile --jvp/--hvp/--hessian``, ``check --order 2``); deterministic output.
"""

from __future__ import annotations

import ast

import numpy as np
import pytest
from conftest import EXAMPLES

import graphgen
from graphgen.check import check_second_order, random_arrays

EPS = 1e-6

CASES = [
    ("tiny.yaml", "numpy"),
    ("fanout.yaml", "numpy"),
    ("mlp.yaml", "numpy"),
    ("tiny.yaml", "numba"),
]
_MODULES = {}


def _module(spec, backend, **flags):
    """One module per spec and backend with every function (Numba compiles once)."""
    G = graphgen.load(EXAMPLES / spec)
    key = (spec, backend)
    if key not in _MODULES:
        _MODULES[key] = graphgen.compile(
            G, backend, dtype="float64", jvp=True, hvp=True, hessian=spec != "mlp.yaml"
        )
    return G, _MODULES[key]


def _moved(arrays, direction, step):
    return {
        k: v + step * direction[k] if k in direction else v for k, v in arrays.items()
    }


def _close(analytic, numeric, tol=1e-6):
    analytic, numeric = np.asarray(analytic), np.asarray(numeric)
    scale = np.maximum(1.0, np.maximum(np.abs(analytic), np.abs(numeric)))
    return float(np.max(np.abs(analytic - numeric) / scale, initial=0.0)) <= tol


@pytest.mark.parametrize(("spec", "backend"), CASES)
def test_jvp_and_hvp_match_central_differences(spec, backend):
    G, m = _module(spec, backend)
    arrays = random_arrays(G, seed=3, dtype="float64")
    rng = np.random.default_rng(4)
    # jvp: every output's tangent against the difference of forward along the tangents
    tangents = {n: rng.standard_normal(arrays[n].shape) for n in m.TANGENTS}
    outputs, dots = m.jvp(tangents, **arrays)
    forward = m.forward(**arrays)
    up = m.forward(**_moved(arrays, tangents, EPS))
    down = m.forward(**_moved(arrays, tangents, -EPS))
    assert list(dots) == [o for o in m.OUTPUTS]
    for o in m.OUTPUTS:
        np.testing.assert_allclose(outputs[o], forward[o], rtol=1e-12, atol=1e-12)
        assert _close(dots[o], (up[o] - down[o]) / (2 * EPS)), o
    # hvp: loss and gradients as value_and_grad's, H·v against the gradient's difference
    vectors = {w: rng.standard_normal(arrays[w].shape) for w in m.WRT}
    loss, grads, hvps = m.hvp(vectors, **arrays)
    loss0, grads0 = m.value_and_grad(**arrays)
    assert loss == pytest.approx(loss0, rel=1e-12)
    gu = m.value_and_grad(**_moved(arrays, vectors, EPS))[1]
    gd = m.value_and_grad(**_moved(arrays, vectors, -EPS))[1]
    for w in m.WRT:
        np.testing.assert_allclose(grads[w], grads0[w], rtol=1e-10, atol=1e-12)
        assert hvps[w].shape == arrays[w].shape
        assert _close(hvps[w], (gu[w] - gd[w]) / (2 * EPS)), w


@pytest.mark.parametrize(
    ("spec", "backend"), [("fanout.yaml", "numpy"), ("tiny.yaml", "numba")]
)
def test_hessian_matches_differences_of_the_gradient(spec, backend):
    G, m = _module(spec, backend)
    arrays = random_arrays(G, seed=5, dtype="float64")
    H = m.hessian(**arrays)
    sizes = [arrays[w].size for w in m.WRT]
    assert H.shape == (sum(sizes), sum(sizes))
    # column j: the difference of the gradient along the j-th entry of θ (WRT order, C order)
    offsets = np.cumsum([0] + sizes)
    for j in range(H.shape[1]):
        k = int(np.searchsorted(offsets, j, side="right")) - 1
        w, i = m.WRT[k], j - offsets[k]
        e = np.zeros(arrays[w].size)
        e[i] = 1.0
        e = {w: e.reshape(arrays[w].shape)}
        gu = m.value_and_grad(**_moved(arrays, e, EPS))[1]
        gd = m.value_and_grad(**_moved(arrays, e, -EPS))[1]
        col = np.concatenate([((gu[u] - gd[u]) / (2 * EPS)).ravel() for u in m.WRT])
        assert _close(H[:, j], col), (w, i)
    np.testing.assert_allclose(H, H.T, atol=1e-10)


def test_graphgen_hessian_is_the_module_function():
    G = graphgen.load(EXAMPLES / "tiny.yaml")
    arrays = random_arrays(G, seed=2, dtype="float64")
    H = graphgen.hessian(G, dtype="float64")(**arrays)
    np.testing.assert_array_equal(H, _module("tiny.yaml", "numpy")[1].hessian(**arrays))
    with pytest.raises(ValueError, match="'W1'"):
        graphgen.hessian(G)(**{**arrays, "W1": np.ones((3, 2))})


def test_hvp_keys_like_wrt_and_missing_directions_are_zero():
    G, m = _module("tiny.yaml", "numpy")
    arrays = random_arrays(G, seed=0, dtype="float64")
    v = np.ones(arrays["W1"].shape)
    _, _, only = m.hvp({"W1": v}, **arrays)
    zeros = {w: np.zeros(arrays[w].shape) for w in m.WRT}
    _, _, full = m.hvp({**zeros, "W1": v}, **arrays)
    assert list(only) == list(m.WRT)
    for w in m.WRT:
        np.testing.assert_array_equal(only[w], full[w])
    # tangents are arguments, not arrays of the module
    assert "x_dot" not in m.INPUTS and "W1_dot" not in m.DTYPES
    assert set(m.TANGENTS) == {"x", "t", "W1", "b1", "W2"}
    _, dots = m.jvp({}, **arrays)
    assert all(not np.any(d) for d in dots.values())


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_directions_are_checked_like_arrays(backend):
    G, m = _module("tiny.yaml", backend)
    arrays = random_arrays(G, seed=0, dtype="float64")
    with pytest.raises(ValueError, match=r"tangents\['W1'\]: expected a float64 array"):
        m.jvp({"W1": np.ones((3, 2))}, **arrays)
    with pytest.raises(ValueError, match=r"tangents\['x'\].*shape \(2, 2\)"):
        m.jvp({"x": np.ones((5, 2))}, **arrays)  # batch is 2: fixed by the arrays
    with pytest.raises(ValueError, match=r"vectors: expected a dict with keys among"):
        m.hvp({"Wl": np.ones((2, 3))}, **arrays)
    with pytest.raises(ValueError, match=r"vectors\['b1'\]: expected a float64"):
        m.hvp({"b1": np.ones(3, dtype=np.float32)}, **arrays)
    with pytest.raises(ValueError, match="'W2'"):
        m.hvp({}, **{k: v for k, v in arrays.items() if k != "W2"})


def test_numba_jvp_and_hvp_are_whole_function_kernels():
    """Numba compiles jvp and hvp as one function each, as it does value_and_grad,
    after the Python level has checked the arrays and directions; they agree with
    NumPy's, also for an array the kernel's types do not take as it is."""
    G = graphgen.load(EXAMPLES / "mlp.yaml")
    ref = graphgen.compile(G, "numpy", jvp=["W1", "b2"], hvp=True)
    m = graphgen.compile(G, "numba", jvp=["W1", "b2"], hvp=True)
    for fn in ("jvp", "hvp"):
        assert f"= _{fn}_kernel(" in m.__source__
    arrays = random_arrays(G, seed=0, sizes={"batch": 5}, dtype="float64")
    rng = np.random.default_rng(1)
    tangents = {"W1": rng.standard_normal(arrays["W1"].shape)}  # b2's is zero
    vectors = {w: rng.standard_normal(arrays[w].shape) for w in m.WRT}
    strided = {**arrays, "x": np.asfortranarray(arrays["x"])}
    for given in (arrays, strided):
        (outs, dots), (want, want_dots) = (
            m.jvp(tangents, **given),
            ref.jvp(tangents, **arrays),
        )
        for k in want:
            np.testing.assert_allclose(outs[k], want[k], rtol=1e-12, atol=1e-12)
        for k in want_dots:
            np.testing.assert_allclose(dots[k], want_dots[k], rtol=1e-10, atol=1e-12)
        got, want = m.hvp(vectors, **given), ref.hvp(vectors, **arrays)
        assert abs(got[0] - want[0]) <= 1e-12
        for i in (1, 2):
            assert list(got[i]) == list(m.WRT)
            for w in m.WRT:
                np.testing.assert_allclose(got[i][w], want[i][w], rtol=1e-9, atol=1e-12)


def test_generated_module_reads_as_forward_mode():
    G = graphgen.load(EXAMPLES / "tiny.yaml")
    text = graphgen.generate(G, hvp=True)
    assert text == graphgen.generate(graphgen.load(EXAMPLES / "tiny.yaml"), hvp=True)
    ast.parse(text)
    assert "def hvp(vectors, **arrays):" in text
    assert "def jvp(" not in text and "def hessian(" not in text
    # tangents are v_dot, each with its local derivative; no builder names leak out
    assert "# h1_dot = ∂h1/∂a1 · a1_dot, where ∂h1/∂a1 = σ(a1)·(1 − σ(a1))" in text
    assert "    W1_bar_dot = " in text
    assert "_dot_mul" not in text and "_dot_sub" not in text
    # without the flags the module is what it was
    plain = graphgen.generate(G)
    assert "_directions" not in plain and "TANGENTS" not in plain


def test_vjp_module_gets_jvp_but_not_hvp(cli, tmp_path):
    lenet = EXAMPLES / "lenet.onnx"
    G = graphgen.load(lenet)
    m = graphgen.compile(G, jvp=True)
    assert hasattr(m, "vjp") and hasattr(m, "jvp") and "image" in m.TANGENTS
    assert check_second_order(G).ok
    status, _, err = cli("compile", lenet, "--hvp", "-o", tmp_path / "m.py")
    assert status == 2
    assert "graphgen: error:" in err and "hvp and hessian need a loss" in err
    assert "Traceback" not in err


def test_cli_compile_flags_and_check_order_2(cli):
    spec = EXAMPLES / "fanout.yaml"
    status, out, err = cli("compile", spec, "--jvp", "--hessian")
    assert status == 0, err
    for line in ("def jvp(tangents, **arrays):", "def hvp(vectors, **arrays):"):
        assert line in out
    assert "def hessian(**arrays):" in out
    status, out, err = cli("check", spec, "--order", "2")
    assert status == 0, out + err
    assert "HVPs (forward over reverse)" in out and "JVPs" in out
    assert "all JVPs and HVPs match" in out


def test_check_order_2_fails_on_a_wrong_hvp():
    G = graphgen.load(EXAMPLES / "tiny.yaml")
    report = check_second_order(G)
    assert report.ok
    rows = {r.name for r in report.hvp_rows}
    assert rows == {"W1", "b1", "W2"}
    # a wrong tolerance of 0 cannot pass central differences: the check can fail
    assert not check_second_order(G, tol=0.0).ok


def test_numba_vjp_module_of_a_small_spec(tmp_path):
    """A vjp module whose vjp could be one compiled function: it takes its cotangents
    through its own prologue, so it stays a Python-level function (it called an
    undefined _unpack when compiled whole)."""
    spec = tmp_path / "v.yaml"
    spec.write_text(
        "name: v\ninputs:\n  x: [batch, 3]\nparams:\n  W: [3, 2]\nnodes:\n"
        "  z: {op: matmul, args: [x, W]}\n  y: {op: tanh, args: [z]}\n"
        "outputs: [y]\nvjp: true\n"
    )
    G = graphgen.load(spec)
    m = graphgen.compile(G, "numba", jvp=True)
    rng = np.random.default_rng(0)
    x, W, c = rng.standard_normal((4, 3)), rng.standard_normal((3, 2)), np.ones((4, 2))
    grads = m.vjp({"y": c}, x=x, W=W)
    np.testing.assert_allclose(grads["W"], x.T @ (c * (1 - np.tanh(x @ W) ** 2)))
    _, dots = m.jvp({"W": np.ones((3, 2))}, x=x, W=W)
    np.testing.assert_allclose(
        dots["y"], (1 - np.tanh(x @ W) ** 2) * (x @ np.ones((3, 2)))
    )


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize(
    "flags",
    [{"jvp": True}, {"hvp": True}, {"jvp": True, "hessian": True}],
    ids=["jvp", "hvp", "jvp-hessian"],
)
def test_forward_mode_modules_are_ruff_formatted(backend, flags):
    from test_codegen import ruff_diff

    for spec in ("fanout.yaml", "mlp.yaml"):
        text = graphgen.generate(graphgen.load(EXAMPLES / spec), backend, **flags)
        assert not ruff_diff(text), f"{spec} {flags}: {ruff_diff(text)}"
