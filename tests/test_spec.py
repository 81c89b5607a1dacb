"""Spec files -> graphs: YAML and JSON agree, attributes follow graphgen.graph, defaults."""

from __future__ import annotations

import json
import textwrap

import networkx as nx
import numpy as np
import pytest
import yaml
from conftest import EXAMPLES

import graphgen
from graphgen.check import random_arrays


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def graph_summary(G, skip=("source", "lines")):
    """Everything about a graph except where it came from."""
    return (
        {n: dict(G.nodes[n]) for n in G},
        {e: dict(G.edges[e]) for e in G.edges},
        {k: v for k, v in G.graph.items() if k not in skip},
        list(G.nodes),
    )


def test_json_spec_loads_to_the_same_graph_as_yaml(tmp_path):
    data = yaml.safe_load((EXAMPLES / "tiny.yaml").read_text(encoding="utf-8"))
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    from_yaml = graphgen.load(EXAMPLES / "tiny.yaml")
    from_json = graphgen.load(path)
    assert graph_summary(from_json) == graph_summary(from_yaml)
    assert from_json.graph["source"] == str(path)
    assert graphgen.generate(from_json, source_name="tiny.yaml") == graphgen.generate(
        from_yaml, source_name="tiny.yaml"
    )


def test_yml_extension_is_yaml(tmp_path):
    path = tmp_path / "tiny.yml"
    path.write_text(
        (EXAMPLES / "tiny.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    assert graph_summary(graphgen.load(path)) == graph_summary(
        graphgen.load(EXAMPLES / "tiny.yaml")
    )


def test_loaded_graph_follows_the_attribute_conventions():
    G = graphgen.load(EXAMPLES / "tiny.yaml")
    assert isinstance(G, nx.DiGraph)
    assert G.graph["name"] == "tiny" and G.graph["dtype"] == "float64"
    assert G.graph["loss"] == "J" and G.graph["outputs"] == ["y", "J"]
    assert G.graph["wrt"] == ["W1", "b1", "W2"]
    expected = {
        "x": ("input", ("batch", 2)),
        "t": ("input", ("batch", 1)),
        "W1": ("param", (2, 3)),
        "b1": ("param", (3,)),
        "W2": ("param", (3, 1)),
        "z1": ("op", ("batch", 3)),
        "a1": ("op", ("batch", 3)),
        "h1": ("op", ("batch", 3)),
        "z2": ("op", ("batch", 1)),
        "y": ("op", ("batch", 1)),
        "J": ("op", ()),
    }
    for n, (kind, shape) in expected.items():
        assert G.nodes[n]["kind"] == kind, n
        assert G.nodes[n]["shape"] == shape, n
        assert G.nodes[n]["dtype"] == "float64", n
    assert {n: G.nodes[n]["op"] for n in G if G.nodes[n]["kind"] == "op"} == {
        "z1": "matmul",
        "a1": "add",
        "h1": "sigmoid",
        "z2": "matmul",
        "y": "sigmoid",
        "J": "mse",
    }
    assert all(G.nodes[n]["attrs"] == {} for n in ("z1", "a1", "h1", "J"))
    assert G.nodes["W1"]["init"] == "glorot_uniform"
    assert G.nodes["b1"]["init"] == "zeros"
    assert G.nodes["W2"]["init"] == "glorot_uniform"  # a bare shape: the default init
    assert G.edges["x", "z1"]["pos"] == (0,) and G.edges["W1", "z1"]["pos"] == (1,)
    assert G.edges["y", "J"]["pos"] == (0,) and G.edges["t", "J"]["pos"] == (1,)
    assert G.number_of_edges() == 10


def test_repeated_argument_is_one_edge_with_both_positions(tmp_path):
    path = write(
        tmp_path,
        "sq.yaml",
        """
        inputs:
          x: [3]
          y: [3]
        nodes:
          sq: {op: mul, args: [x, x]}
          d1: {op: sub, args: [x, y]}
          d2: {op: sub, args: [y, x]}
          r: {op: mul, args: [sq, 0.5]}
          s: {op: add_n, args: [d1, d2, r, d1]}
          J: {op: sum, args: [s]}
        loss: J
        wrt: [x]
    """,
    )
    G = graphgen.load(path)
    assert G.number_of_edges("x", "sq") == 1
    assert G.edges["x", "sq"]["pos"] == (0, 1)
    assert G.edges["x", "d1"]["pos"] == (0,) and G.edges["y", "d1"]["pos"] == (1,)
    assert G.edges["x", "d2"]["pos"] == (1,) and G.edges["y", "d2"]["pos"] == (0,)
    assert G.edges["d1", "s"]["pos"] == (0, 3)
    consts = [n for n in G if G.nodes[n]["kind"] == "const"]
    assert len(consts) == 1 and G.nodes[consts[0]]["value"] == 0.5
    assert G.edges[consts[0], "r"]["pos"] == (1,)
    # and the arithmetic follows argument order
    module = graphgen.compile(G)
    x, y = np.array([1.0, 2.0, 3.0]), np.array([0.5, -1.0, 4.0])
    loss, grads = module.value_and_grad(x=x, y=y)
    assert loss == pytest.approx(np.sum(2 * (x - y) + (y - x) + 0.5 * x * x))
    np.testing.assert_allclose(grads["x"], 2 - 1 + x)


def build_tiny_by_hand():
    G = nx.DiGraph()
    G.add_node("x", kind="input", shape=("batch", 2), dtype="float64")
    G.add_node("t", kind="input", shape=("batch", 1), dtype="float64")
    G.add_node("W1", kind="param", shape=(2, 3), dtype="float64", init="glorot_uniform")
    G.add_node("b1", kind="param", shape=(3,), dtype="float64", init="zeros")
    G.add_node("W2", kind="param", shape=(3, 1), dtype="float64")
    for name, op, args in [
        ("z1", "matmul", ["x", "W1"]),
        ("a1", "add", ["z1", "b1"]),
        ("h1", "sigmoid", ["a1"]),
        ("z2", "matmul", ["h1", "W2"]),
        ("y", "sigmoid", ["z2"]),
        ("J", "mse", ["y", "t"]),
    ]:
        G.add_node(name, kind="op", op=op, attrs={})
        for i, a in enumerate(args):
            G.add_edge(a, name, pos=(i,))
    G.graph.update(name="tiny", outputs=["y", "J"], loss="J", wrt=["W1", "b1", "W2"])
    return G


def test_graph_built_by_hand_compiles_like_the_spec():
    hand = build_tiny_by_hand()
    spec = graphgen.load(EXAMPLES / "tiny.yaml")
    assert graphgen.generate(hand, source_name="tiny.yaml") == graphgen.generate(
        spec, source_name="tiny.yaml"
    )
    prepared = graphgen.prepare(hand)
    for n in spec:
        for key in ("kind", "shape", "dtype", "op", "attrs", "init"):
            assert prepared.nodes[n].get(key) == spec.nodes[n].get(key), (n, key)
    assert graphgen.check(hand).ok


# --------------------------------------------------------------------------- defaults


def test_defaults_wrt_all_params_and_outputs_the_loss(tmp_path):
    path = write(
        tmp_path,
        "d.yaml",
        """
        inputs:
          x: [batch, 3]
        params:
          W: [3, 2]
          c: {shape: [2], init: ones}
          b: [2]
        nodes:
          h: {op: matmul, args: [x, W]}
          k: {op: add, args: [h, c]}
          m: {op: mul, args: [k, b]}
          J: {op: mean, args: [m]}
        loss: J
    """,
    )
    G = graphgen.load(path)
    assert G.graph["wrt"] == ["W", "c", "b"]
    assert G.graph["outputs"] == ["J"]
    assert G.graph["name"] == "d"  # the file's stem
    module = graphgen.compile(G)
    assert list(module.OUTPUTS) == ["J"] and module.OUTPUTS["J"] == ()
    assert list(module.PARAMS) == ["W", "c", "b"]
    _, grads = module.value_and_grad(**random_arrays(G, seed=0))
    assert list(grads) == ["W", "c", "b"]


def test_op_attribute_defaults(tmp_path):
    path = write(
        tmp_path,
        "d.yaml",
        """
        inputs:
          x: [2, 3, 4]
          v: [5, 4]
        nodes:
          lr: {op: leaky_relu, args: [x]}
          tr: {op: transpose, args: [x]}
          sl: {op: slice, args: [v]}
          s: {op: sum, args: [x]}
          m: {op: mean, args: [x]}
          mx: {op: max, args: [x]}
          lse: {op: logsumexp, args: [x]}
          sm: {op: softmax, args: [x]}
          cc: {op: concat, args: [v, v]}
        outputs: [lr, tr, sl, s, m, mx, lse, sm, cc]
    """,
    )
    G = graphgen.load(path)
    attrs = {n: G.nodes[n]["attrs"] for n in G if G.nodes[n]["kind"] == "op"}
    assert attrs["lr"] == {"alpha": 0.01}
    assert attrs["tr"] == {"perm": [2, 1, 0]} and G.nodes["tr"]["shape"] == (4, 3, 2)
    assert attrs["sl"] == {"axis": 0, "start": 0, "stop": 5, "step": 1}
    assert G.nodes["sl"]["shape"] == (5, 4)
    for n in ("s", "m", "mx", "lse"):
        assert attrs[n] == {"axis": [0, 1, 2], "keepdims": False}, n
        assert G.nodes[n]["shape"] == ()
    assert attrs["sm"] == {"axis": 2}
    assert attrs["cc"] == {"axis": 0} and G.nodes["cc"]["shape"] == (10, 4)
    assert G.graph["loss"] is None and G.graph["wrt"] == []

    module = graphgen.compile(G)
    assert not hasattr(module, "value_and_grad")  # no loss, nothing to differentiate
    rng = np.random.default_rng(0)
    x, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4))
    out = module.forward(x=x, v=v)
    np.testing.assert_allclose(out["lr"], np.where(x > 0, x, 0.01 * x))
    np.testing.assert_allclose(out["tr"], x.T)
    np.testing.assert_allclose(out["sl"], v)
    np.testing.assert_allclose(out["s"], x.sum())
    np.testing.assert_allclose(out["m"], x.mean())
    np.testing.assert_allclose(out["mx"], x.max())
    np.testing.assert_allclose(out["lse"], np.log(np.exp(x).sum()))
    np.testing.assert_allclose(out["sm"], np.exp(x) / np.exp(x).sum(-1, keepdims=True))
    np.testing.assert_allclose(out["cc"], np.concatenate([v, v]))


def test_inputs_listed_in_wrt_get_gradients(tmp_path):
    path = write(
        tmp_path,
        "w.yaml",
        """
        inputs:
          x: [batch, 3]
          t: [batch, 2]
        params:
          W: [3, 2]
        nodes:
          h: {op: matmul, args: [x, W]}
          y: {op: tanh, args: [h]}
          J: {op: mse, args: [y, t]}
        loss: J
        wrt: [x, t, W]
    """,
    )
    G = graphgen.load(path)
    assert G.graph["wrt"] == ["x", "t", "W"]
    module = graphgen.compile(G)
    arrays = random_arrays(G, seed=2, sizes={"batch": 5})
    _, grads = module.value_and_grad(**arrays)
    assert list(grads) == ["x", "t", "W"]
    assert grads["x"].shape == (5, 3) and grads["t"].shape == (5, 2)
    y = np.tanh(arrays["x"] @ arrays["W"])
    np.testing.assert_allclose(grads["t"], -2 * (y - arrays["t"]) / y.size, rtol=1e-12)
    report = graphgen.check(G, seed=2)
    assert report.ok, report.format()
    assert [r.name for r in report.rows] == ["x", "t", "W"]


def test_int64_inputs_cannot_be_in_wrt(tmp_path):
    path = write(
        tmp_path,
        "w.yaml",
        """
        inputs:
          x: [batch, 3]
          labels: {shape: [batch], dtype: int64}
        nodes:
          J: {op: softmax_cross_entropy, args: [x, labels]}
        loss: J
        wrt: [x, labels]
    """,
    )
    with pytest.raises(graphgen.GradientError, match="int64"):
        graphgen.load(path)


# ------------------------------------------------------------------------ init_params

INIT_SPEC = """
    dtype: {dtype}
    inputs:
      x: [batch, 40]
    params:
      Wz: {{shape: [40, 30], init: zeros}}
      Wo: {{shape: [40, 30], init: ones}}
      Wn: {{shape: [40, 30], init: normal}}
      Wg: {{shape: [40, 30], init: glorot_uniform}}
      Wd: [40, 30]
      bv: {{shape: [30], init: normal}}
      s: {{shape: [], init: ones}}
    nodes:
      a: {{op: matmul, args: [x, Wz]}}
      b: {{op: matmul, args: [x, Wo]}}
      c: {{op: matmul, args: [x, Wn]}}
      d: {{op: matmul, args: [x, Wg]}}
      e: {{op: matmul, args: [x, Wd]}}
      f: {{op: add_n, args: [a, b, c, d, e, bv]}}
      g: {{op: mul, args: [f, s]}}
      J: {{op: mean, args: [g]}}
    loss: J
"""


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_init_params_are_deterministic_with_right_shapes_and_dtypes(tmp_path, dtype):
    path = write(tmp_path, "init.yaml", INIT_SPEC.format(dtype=dtype))
    G = graphgen.load(path)
    assert G.nodes["Wd"]["init"] == "glorot_uniform"
    module = graphgen.compile(G)
    p0, again, p1 = module.init_params(0), module.init_params(0), module.init_params(1)
    assert list(p0) == ["Wz", "Wo", "Wn", "Wg", "Wd", "bv", "s"]
    for name, value in p0.items():
        assert isinstance(value, np.ndarray)
        assert value.shape == tuple(G.nodes[name]["shape"]), name
        assert value.dtype == np.dtype(dtype), name
        np.testing.assert_array_equal(value, again[name])
    assert np.all(p0["Wz"] == 0) and np.all(p0["Wo"] == 1) and p0["s"] == 1
    for name in ("Wn", "Wg", "Wd", "bv"):
        assert not np.array_equal(p0[name], p1[name]), f"{name}: seed has no effect"
    assert not np.array_equal(
        p0["Wg"], p0["Wd"]
    )  # one random stream, not one per param
    limit = np.sqrt(6.0 / (40 + 30))
    for name in ("Wg", "Wd"):
        assert np.all(np.abs(p0[name]) <= limit), name
        assert np.abs(p0[name]).max() > 0.9 * limit, name  # uses the whole range
    assert 0.9 < np.std(p0["Wn"]) < 1.1 and abs(np.mean(p0["Wn"])) < 0.1
    # the parameters drive the module as they are
    x = np.ones((2, 40), dtype=dtype)
    loss, grads = module.value_and_grad(x=x, **p0)
    assert np.isfinite(loss) and set(grads) == set(p0)


def test_init_params_does_not_depend_on_global_numpy_state():
    module = graphgen.compile(graphgen.load(EXAMPLES / "fanout.yaml"))
    np.random.seed(1)
    a = module.init_params(3)
    np.random.seed(2)
    np.random.standard_normal(10)
    b = module.init_params(3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
