"""The Numba module's row loops at the Python level (templates/numba/ops.j2): layer norm,
softmax, the softmax cross-entropy and its gradient, last-axis sums and means, an
embedding's gradient; and ``where`` fused into loop kernels (docs/numba.md, "Row loops
at the Python level"). They replace NumPy forms only for arrays of at least
``attrs.ROW_LOOP_ELEMENTS`` elements, so the spec here is that large."""

import re

import numpy as np
import pytest
import yaml

import graphgen
from graphgen.codegen import attrs
from graphgen.frontends.spec import from_dict

pytest.importorskip("numba")

# (8, 128, 128) activations, (8, 128, 256) logits: every row-loop op over 2**17 or more
SPEC = """
name: rows
dtype: {dtype}
inputs:
  tokens: {{shape: [8, 128], dtype: int64}}
  labels: {{shape: [8, 128], dtype: int64}}
  mask: {{shape: [128, 128]}}
params:
  embed: {{shape: [256, 128], init: normal}}
  scale: {{shape: [128], init: ones}}
  bias: {{shape: [128], init: zeros}}
  wq: [128, 128]
  wk: [128, 128]
  unembed: [128, 256]
nodes:
  x: {{op: gather, args: [embed, tokens]}}
  n: {{op: layer_norm, args: [x, scale, bias]}}
  q: {{op: matmul, args: [n, wq]}}
  k: {{op: matmul, args: [n, wk]}}
  kt: {{op: transpose, args: [k], perm: [0, 2, 1]}}
  s: {{op: matmul, args: [q, kt]}}
  s2: {{op: mul, args: [s, 0.125]}}
  masked: {{op: where, args: [mask, -1000000000.0, s2]}}
  p: {{op: softmax, args: [masked]}}
  h: {{op: matmul, args: [p, n]}}
  c: {{op: mean, args: [h], axis: [2], keepdims: true}}
  hc: {{op: sub, args: [h, c]}}
  logits: {{op: matmul, args: [hc, unembed]}}
  loss: {{op: softmax_cross_entropy, args: [logits, labels]}}
outputs: [loss]
loss: loss
"""

ROW_LOOPS = (
    "_row_layer_norm(",
    "_loop_softmax(",
    "_rows_softmax_cross_entropy(",
    "_rows_softmax_xent_grad(",
    "_last_axis_sums(",
    "_scatter_rows(",
)


def python_level(src):
    """The module's generated functions, without its helpers and kernels."""
    return src[src.index("\ndef forward(") : src.index("\n@numba.njit")]


def arrays(mod, seed=0):
    rng = np.random.default_rng(seed)
    out = mod.init_params()
    out["tokens"] = rng.integers(0, 256, (8, 128))
    out["labels"] = rng.integers(0, 256, (8, 128))
    out["mask"] = np.triu(np.ones((128, 128)), 1).astype(mod.DTYPES["mask"])
    return out


@pytest.fixture(scope="module", params=["float64", "float32"])
def modules(request):
    G = from_dict(yaml.safe_load(SPEC.format(dtype=request.param)))
    return (
        request.param,
        graphgen.compile(G, backend="numba", whole=False),
        graphgen.compile(G, backend="numpy"),
    )


def test_large_rows_run_compiled_loops(modules):
    _, nb, _ = modules
    code = python_level(nb.__source__)
    for call in ROW_LOOPS:
        assert call in code, call
    # the scale and the causal mask are one fused loop, their backward another
    assert "np.where(" not in code
    assert re.search(r"if \w+\[\w+, \w+\] != 0\s+else", nb.__source__)


def test_row_loops_match_the_numpy_module(modules):
    dtype, nb, ref = modules
    a = arrays(ref)
    (l1, g1), (l2, g2) = ref.value_and_grad(**a), nb.value_and_grad(**a)
    assert type(l2) is type(l1)  # the loss keeps the module's dtype
    rtol, atol = (1e-10, 1e-12) if dtype == "float64" else (2e-4, 1e-6)
    assert abs(float(l1) - float(l2)) <= rtol * abs(float(l1))
    assert g1.keys() == g2.keys()
    for k in g1:
        assert g2[k].dtype == g1[k].dtype
        np.testing.assert_allclose(g2[k], g1[k], rtol=rtol, atol=atol, err_msg=k)


def test_small_arrays_keep_the_numpy_forms():
    """Under ROW_LOOP_ELEMENTS a row loop's compilation would cost more than it saves:
    an MLP's loss and its gradient stay NumPy code."""
    G = graphgen.load("examples/mlp.yaml")
    code = python_level(graphgen.generate(G, backend="numba", whole=False))
    assert "_softmax_cross_entropy(logits, labels)" in code
    assert not any(call in code for call in ROW_LOOPS)
    assert attrs.ROW_LOOP_ELEMENTS == 1 << 16


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 255, 256, 257, 1000, 4097])
def test_row_max_folds_any_length(modules, n):
    dtype, nb, _ = modules
    rng = np.random.default_rng(n)
    half = np.empty(n, dtype)
    for where in (0, n // 2, n - 1):
        r = rng.standard_normal(n).astype(dtype)
        r[where] = 50.0
        assert nb._row_max(r, half) == 50.0
        r[rng.random(n) < 0.3] = -np.inf
        assert nb._row_max(r, half) == r.max()


def test_softmax_rows_edge_cases(modules):
    dtype, nb, _ = modules
    x = np.random.default_rng(1).standard_normal((5, 300)).astype(dtype)
    x[1, :] = -np.inf  # every entry masked: NaN, as NumPy's form gives
    x[2, 1:] = -np.inf  # one left: probability 1
    x[3, :] = 80.0  # large and equal: uniform, no overflow
    with np.errstate(invalid="ignore"):
        got = nb._loop_softmax(x)
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        want = e / e.sum(axis=-1, keepdims=True)
    tol = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(got, want, rtol=tol * 10, atol=tol)
    assert np.isnan(got[1]).all() and got[2, 0] == 1.0


def test_cross_entropy_rows_wrap_negative_labels_and_refuse_others(modules):
    dtype, nb, _ = modules
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((3, 4, 300)).astype(dtype)
    labels = np.array([[0, 299, -1, -300]] * 3)
    loss = nb._rows_softmax_cross_entropy(logits, labels)
    rows = logits.reshape(-1, 300).astype(np.float64)
    lab = labels.reshape(-1) % 300
    lse = np.log(np.exp(rows - rows.max(1, keepdims=True)).sum(1)) + rows.max(1)
    want = (lse - rows[np.arange(12), lab]).mean()
    assert abs(loss - want) <= (1e-12 if dtype == "float64" else 1e-5) * abs(want)
    grad = nb._rows_softmax_xent_grad(logits, labels).reshape(12, 300)
    p = np.exp(rows - lse[:, None])
    p[np.arange(12), lab] -= 1.0
    np.testing.assert_allclose(grad, p, atol=1e-12 if dtype == "float64" else 1e-6)
    with pytest.raises(IndexError):
        nb._rows_softmax_cross_entropy(logits, np.full((3, 4), 300))
