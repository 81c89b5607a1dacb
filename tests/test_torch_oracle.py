"""The transformer ops against PyTorch (float64), values and gradients: fused
attention (causal, grouped-query, additive and boolean masks) against
``scaled_dot_product_attention``, ``rms_norm``, ``silu``, the sequence cross-entropy
with ``ignore_index`` against ``F.cross_entropy``, and ``rotary_embedding`` against the
``rotate_half`` form of Hugging Face's LLaMA."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_graph

import graphgen

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _graphgen(op, shapes, attrs, arrays, int_inputs=()):
    """loss = Σ w·op(in0, in1, ...); (output, loss, grads) from the generated module."""
    spec = {
        f"in{i}": ("input", s, "int64" if i in int_inputs else "float64")
        for i, s in enumerate(shapes)
    }
    nodes = [("y", op, [f"in{i}" for i in range(len(shapes))], attrs)]
    y_shape = graphgen.prepare(build_graph(spec, nodes, outputs=["y"])).nodes["y"][
        "shape"
    ]
    spec["w"] = ("input", y_shape)
    nodes += [("wy", "mul", ["y", "w"], {}), ("L", "sum", ["wy"], {})]
    wrt = [f"in{i}" for i in range(len(shapes)) if i not in int_inputs]
    G = build_graph(spec, nodes, loss="L", outputs=["y", "L"], wrt=wrt)
    m = graphgen.compile(G)
    loss, grads = m.value_and_grad(**arrays)
    return m.forward(**arrays)["y"], loss, grads


def _torch(f, arrays, names):
    ts = {k: torch.tensor(v, requires_grad=k in names) for k, v in arrays.items()}
    y = f(ts)
    (y * ts["w"]).sum().backward()
    return y.detach().numpy(), {k: ts[k].grad.numpy() for k in names}


def _close(a, b, what):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=what)


@pytest.mark.parametrize("mask", [None, "add", "bool"])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_scaled_dot_product_attention(mask, causal):
    rng = np.random.default_rng(0)
    B, HQ, HKV, T, S, D, DV = 2, 4, 2, 3, 3, 5, 4
    shapes = [(B, HQ, T, D), (B, HKV, S, D), (B, HKV, S, DV)]
    arrays = {f"in{i}": rng.standard_normal(s) for i, s in enumerate(shapes)}
    op, ints = "attention", ()
    if mask == "add":
        op = "masked_attention"
        shapes.append((T, S))
        arrays["in3"] = rng.standard_normal((T, S))
    elif mask == "bool":
        op, ints = "masked_attention_bool", (3,)
        shapes.append((B, 1, T, S))
        keep = rng.random((B, 1, T, S)) < 0.7
        keep[..., 0] = True
        arrays["in3"] = keep.astype(np.int64)
    arrays["w"] = rng.standard_normal((B, HQ, T, DV))
    y, _, grads = _graphgen(op, shapes, {"causal": causal}, arrays, ints)

    def f(t):
        m = None
        if mask == "add":
            m = t["in3"]
        elif mask == "bool":
            m = t["in3"] != 0
        return F.scaled_dot_product_attention(
            t["in0"], t["in1"], t["in2"], attn_mask=m, is_causal=causal, enable_gqa=True
        )

    if causal and mask is not None:  # PyTorch takes one or the other: fold causal in
        tri = np.tril(np.ones((T, S), dtype=bool))
        if mask == "add":
            arrays_t = {**arrays, "in3": np.where(tri, arrays["in3"], -np.inf)}
        else:
            arrays_t = {**arrays, "in3": arrays["in3"] * tri}

        def g(t):
            m = t["in3"] if mask == "add" else t["in3"] != 0
            return F.scaled_dot_product_attention(
                t["in0"], t["in1"], t["in2"], attn_mask=m, enable_gqa=True
            )

        want, tgrads = _torch(g, arrays_t, list(grads))
    else:
        want, tgrads = _torch(f, arrays, list(grads))
    _close(y, want, "output")
    for k, v in tgrads.items():  # the mask's too (0 where causal removes an entry)
        _close(grads[k], v, f"d/d{k}")


def test_rms_norm_and_silu_match_pytorch():
    rng = np.random.default_rng(1)
    arrays = {
        "in0": rng.standard_normal((2, 3, 6)),
        "in1": rng.standard_normal(6),
        "w": rng.standard_normal((2, 3, 6)),
    }
    y, _, grads = _graphgen("rms_norm", [(2, 3, 6), (6,)], {"epsilon": 1e-3}, arrays)
    want, tg = _torch(
        lambda t: F.rms_norm(t["in0"], (6,), t["in1"], eps=1e-3), arrays, ["in0", "in1"]
    )
    _close(y, want, "rms_norm")
    for k in tg:
        _close(grads[k], tg[k], f"rms_norm d/d{k}")
    arrays = {"in0": rng.standard_normal((3, 4)) * 4, "w": rng.standard_normal((3, 4))}
    y, _, grads = _graphgen("silu", [(3, 4)], {}, arrays)
    want, tg = _torch(lambda t: F.silu(t["in0"]), arrays, ["in0"])
    _close(y, want, "silu")
    _close(grads["in0"], tg["in0"], "silu d/dx")


def test_sequence_cross_entropy_with_ignore_index_matches_pytorch():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((2, 5, 7)) * 3
    labels = rng.integers(0, 7, (2, 5))
    labels[0, [1, 3]] = -100
    spec = {"z": ("input", (2, 5, 7)), "t": ("input", (2, 5), "int64")}
    G = build_graph(
        spec,
        [("L", "softmax_cross_entropy", ["z", "t"], {"ignore_index": -100})],
        loss="L",
        wrt=["z"],
    )
    loss, grads = graphgen.compile(G).value_and_grad(z=logits, t=labels)
    z = torch.tensor(logits, requires_grad=True)
    want = F.cross_entropy(z.reshape(-1, 7), torch.tensor(labels).reshape(-1))
    want.backward()
    assert loss == pytest.approx(want.item(), rel=1e-12)
    _close(grads["z"], z.grad.numpy(), "d loss/d logits")


def test_rotary_embedding_matches_the_rotate_half_form():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5, 8))  # (batch, heads, T, head)
    theta = rng.uniform(0, 6, (5, 4))
    arrays = {"in0": x, "in1": np.cos(theta), "in2": np.sin(theta)}
    arrays["w"] = rng.standard_normal(x.shape)
    y, _, grads = _graphgen("rotary_embedding", [x.shape, (5, 4), (5, 4)], {}, arrays)

    def rotate_half(t):
        h = t.shape[-1] // 2
        return torch.cat((-t[..., h:], t[..., :h]), dim=-1)

    def f(t):  # LLaMA: the caches repeated over both halves
        cos = torch.cat((t["in1"], t["in1"]), dim=-1)
        sin = torch.cat((t["in2"], t["in2"]), dim=-1)
        return t["in0"] * cos + rotate_half(t["in0"]) * sin

    want, tg = _torch(f, arrays, ["in0", "in1", "in2"])
    _close(y, want, "rotary")
    for k in tg:
        _close(grads[k], tg[k], f"rotary d/d{k}")
