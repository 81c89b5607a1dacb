"""ONNX's transformer ops (opset 23+): RMSNormalization, RotaryEmbedding and Attention,
imported onto graphgen's fused ops, against ONNX's reference evaluator (forward) and
central differences (gradients), and the fused attention's gradients against the same
computation written with basic ops (1e-10, float64)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_grad_close, build_graph, fd_gradient

import graphgen

onnx = pytest.importorskip("onnx")
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh
from onnx.reference import ReferenceEvaluator

D = TensorProto.DOUBLE
OPSET = 24


def _model(nodes, inputs, outputs, inits=()):
    graph = oh.make_graph(
        nodes,
        "m",
        [oh.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [oh.make_tensor_value_info(n, D, None) for n in outputs],
        initializer=list(inits),
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)])


def _check(model, feeds, tmp_path, grads=True):
    """Forward against the reference evaluator; the vjp against central differences."""
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    want = ReferenceEvaluator(model).run(None, feeds)[0]
    m = graphgen.compile(graphgen.load(path))
    arrays = {**feeds, **m.init_params()}
    out_name = model.graph.output[0].name
    got = m.forward(**arrays)[out_name]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    if not grads:
        return m
    cot = np.random.default_rng(9).standard_normal(got.shape)
    g = m.vjp({out_name: cot}, **arrays)

    def f(a):
        return float(np.sum(m.forward(**a)[out_name] * cot))

    for name, value in g.items():
        assert_grad_close(value, fd_gradient(f, arrays, name), what=f"d/d{name}")
    return m


def test_rms_normalization(tmp_path):
    rng = np.random.default_rng(0)
    model = _model(
        [
            oh.make_node(
                "RMSNormalization", ["x", "g"], ["y"], epsilon=0.0078125, axis=-1
            )
        ],
        [("x", D, [2, 3, 4])],
        ["y"],
        [nh.from_array(rng.standard_normal(4), "g")],
    )
    _check(model, {"x": rng.standard_normal((2, 3, 4))}, tmp_path)


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding_4d_with_caches_as_inputs(tmp_path, interleaved):
    rng = np.random.default_rng(1)
    model = _model(
        [
            oh.make_node(
                "RotaryEmbedding", ["x", "c", "s"], ["y"], interleaved=interleaved
            )
        ],
        [("x", D, [2, 3, 5, 4]), ("c", D, [2, 5, 2]), ("s", D, [2, 5, 2])],
        ["y"],
    )
    theta = rng.uniform(0, 6, (2, 5, 2))
    feeds = {
        "x": rng.standard_normal((2, 3, 5, 4)),
        "c": np.cos(theta),
        "s": np.sin(theta),
    }
    _check(model, feeds, tmp_path)


def test_rotary_embedding_3d_partial_with_position_ids(tmp_path):
    rng = np.random.default_rng(2)
    theta = rng.uniform(0, 6, (7, 2))
    model = _model(
        [
            oh.make_node(
                "RotaryEmbedding",
                ["x", "c", "s", "pos"],
                ["y"],
                num_heads=2,
                rotary_embedding_dim=4,
            )
        ],
        [("x", D, [2, 3, 12]), ("pos", TensorProto.INT64, [2, 3])],
        ["y"],
        [nh.from_array(np.cos(theta), "c"), nh.from_array(np.sin(theta), "s")],
    )
    feeds = {
        "x": rng.standard_normal((2, 3, 12)),
        "pos": np.array([[0, 1, 2], [4, 5, 6]]),
    }
    _check(model, feeds, tmp_path)


def test_attention_grouped_query_causal(tmp_path):
    rng = np.random.default_rng(3)
    model = _model(
        [oh.make_node("Attention", ["q", "k", "v"], ["y"], is_causal=1)],
        [("q", D, [2, 4, 3, 5]), ("k", D, [2, 2, 3, 5]), ("v", D, [2, 2, 3, 3])],
        ["y"],
    )
    feeds = {
        "q": rng.standard_normal((2, 4, 3, 5)),
        "k": rng.standard_normal((2, 2, 3, 5)),
        "v": rng.standard_normal((2, 2, 3, 3)),
    }
    _check(model, feeds, tmp_path)


def test_attention_3d_with_float_mask_and_scale(tmp_path):
    rng = np.random.default_rng(4)
    model = _model(
        [
            oh.make_node(
                "Attention",
                ["q", "k", "v", "mask"],
                ["y"],
                q_num_heads=2,
                kv_num_heads=1,
                # ONNX applies √scale, rounded to float32, to Q and K each: 0.25
                # keeps that exact (0.5 would differ by 4e-8 from 0.5 itself)
                scale=0.25,
            )
        ],
        [
            ("q", D, [2, 3, 8]),
            ("k", D, [2, 4, 4]),
            ("v", D, [2, 4, 4]),
            ("mask", D, [3, 4]),
        ],
        ["y"],
    )
    feeds = {
        "q": rng.standard_normal((2, 3, 8)),
        "k": rng.standard_normal((2, 4, 4)),
        "v": rng.standard_normal((2, 4, 4)),
        "mask": rng.standard_normal((3, 4)),
    }
    _check(model, feeds, tmp_path)


def test_attention_with_a_constant_boolean_mask(tmp_path):
    rng = np.random.default_rng(5)
    keep = rng.random((3, 3)) < 0.6
    keep[:, 0] = True
    model = _model(
        [oh.make_node("Attention", ["q", "k", "v", "keep"], ["y"])],
        [("q", D, [1, 2, 3, 4]), ("k", D, [1, 2, 3, 4]), ("v", D, [1, 2, 3, 4])],
        ["y"],
        [nh.from_array(keep, "keep")],
    )
    feeds = {n: rng.standard_normal((1, 2, 3, 4)) for n in ("q", "k", "v")}
    _check(model, feeds, tmp_path)


def test_attention_kv_cache_is_reported_unsupported(tmp_path):
    model = _model(
        [oh.make_node("Attention", ["q", "k", "v", "", "pk", "pv"], ["y"])],
        [
            ("q", D, [1, 2, 3, 4]),
            ("k", D, [1, 2, 3, 4]),
            ("v", D, [1, 2, 3, 4]),
            ("pk", D, [1, 2, 2, 4]),
            ("pv", D, [1, 2, 2, 4]),
        ],
        ["y"],
    )
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(graphgen.GraphgenError, match="KV cache"):
        graphgen.load(path)


# ------------------------------------------- fused attention against basic ops


def test_fused_attention_gradients_match_basic_ops_to_1e10():
    """q (1, 4, 3, 5) with k, v of 2 heads (grouped) and an additive causal-like mask;
    the basic version repeats each key head for its query heads by a reshape of the
    concatenation along a new group axis."""
    rng = np.random.default_rng(6)
    B, HQ, HKV, T, S, DK, DV = 1, 4, 2, 3, 4, 5, 3
    scale = 0.37
    spec = {
        "q": ("param", (B, HQ, T, DK)),
        "k": ("param", (B, HKV, S, DK)),
        "v": ("param", (B, HKV, S, DV)),
        "mask": ("param", (T, S)),
        "w": ("input", (B, HQ, T, DV)),
    }
    fused = [
        ("o", "masked_attention", ["q", "k", "v", "mask"], {"scale": scale}),
        ("wo", "mul", ["o", "w"], {}),
        ("L", "sum", ["wo"], {}),
    ]
    # basic: repeat each key head for its 2 query heads: (B, HKV, 1, S, d) -> concat
    # along axis 2 -> (B, HKV, 2, S, d) -> (B, HQ, S, d)
    basic = []
    for name, d in (("k", DK), ("v", DV)):
        basic += [
            (f"{name}5", "reshape", [name], {"shape": [B, HKV, 1, S, d]}),
            (f"{name}g", "concat", [f"{name}5", f"{name}5"], {"axis": 2}),
            (f"{name}r", "reshape", [f"{name}g"], {"shape": [B, HQ, S, d]}),
        ]
    basic += [
        ("kt", "transpose", ["kr"], {"perm": [0, 1, 3, 2]}),
        ("s0", "matmul", ["q", "kt"], {}),
        ("s1", "mul", ["s0", scale], {}),
        ("s", "add", ["s1", "mask"], {}),
        ("p", "softmax", ["s"], {"axis": -1}),
        ("o", "matmul", ["p", "vr"], {}),
        ("wo", "mul", ["o", "w"], {}),
        ("L", "sum", ["wo"], {}),
    ]
    arrays = {n: rng.standard_normal(s[1]) for n, s in spec.items()}
    arrays["mask"] = np.where(np.tri(T, S) > 0, 0.0, -5.0) + 0.1 * arrays["mask"]
    results = []
    for nodes in (fused, basic):
        G = build_graph(spec, _consts(nodes), loss="L", wrt=["q", "k", "v", "mask"])
        m = graphgen.compile(G)
        results.append(m.value_and_grad(**arrays))
    (l1, g1), (l2, g2) = results
    assert abs(l1 - l2) <= 1e-12 * max(1.0, abs(l2))
    for n in ("q", "k", "v", "mask"):
        np.testing.assert_allclose(g1[n], g2[n], rtol=1e-10, atol=1e-12, err_msg=n)
    assert np.abs(g1["k"]).max() > 1e-3  # the comparison is not of zeros


def _consts(nodes):
    """Nodes with Python-number arguments replaced by constant nodes."""
    out = []
    for n, op, args, attrs in nodes:
        fixed = []
        for i, a in enumerate(args):
            if isinstance(a, float):
                c = f"{n}_c{i}"
                out.append((c, "constant", [], {"shape": [], "value": a}))
                a = c
            fixed.append(a)
        out.append((n, op, fixed, attrs))
    return out


def test_loss_on_3d_logits_takes_2d_labels(tmp_path):
    """--loss softmax_cross_entropy on a (batch, T, vocab) output: labels (batch, T),
    the mean over every token."""
    rng = np.random.default_rng(7)
    model = _model(
        [oh.make_node("MatMul", ["x", "W"], ["logits"])],
        [("x", D, [2, 3, 4])],
        ["logits"],
        [nh.from_array(rng.standard_normal((4, 5)), "W")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    G = graphgen.load(path, loss="softmax_cross_entropy", labels="y")
    assert G.nodes["y"]["shape"] == (2, 3)
    m = graphgen.compile(G)
    arrays = {"x": rng.standard_normal((2, 3, 4)), "y": rng.integers(0, 5, (2, 3))}
    arrays.update(m.init_params())
    loss, grads = m.value_and_grad(**arrays)
    z = arrays["x"] @ arrays["W"]
    lse = np.log(np.exp(z).sum(-1))
    picked = np.take_along_axis(z, arrays["y"][..., None], -1)[..., 0]
    assert loss == pytest.approx((lse - picked).mean(), rel=1e-12)

    def f(a):
        return float(m.forward(**a)["loss"])

    assert_grad_close(grads["W"], fd_gradient(f, arrays, "W"), what="dloss/dW")


def test_a_training_step_computes_the_probabilities_once():
    """The fused op's VJP builds P = attention_probs(q, k); the training step computes
    it once, in the forward pass, applies it to v and keeps it for the backward pass
    (reuse_inner): one softmax and one Q·Kᵀ per attention, not two."""
    spec = {
        "q": ("param", (1, 2, 3, 4)),
        "k": ("param", (1, 2, 3, 4)),
        "v": ("param", (1, 2, 3, 4)),
        "w": ("input", (1, 2, 3, 4)),
    }
    nodes = [
        ("a", "attention", ["q", "k", "v"], {"causal": True}),
        ("wa", "mul", ["a", "w"], {}),
        ("L", "sum", ["wa"], {}),
    ]
    source = graphgen.generate(build_graph(spec, nodes, loss="L"))
    step = source.split("def value_and_grad", 1)[1].split("\ndef ", 1)[0]
    assert step.count("_attention_probs(") == 1
    assert "_attention(" not in step
    assert "a_probs = _attention_probs(" in step  # named after the op that reads it
    assert "a = _attention_apply(a_probs, v)" in step
