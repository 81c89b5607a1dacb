"""The ONNX frontend: models built with onnx.helper, compiled, and checked against ONNX's
reference evaluator and against finite differences."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_grad_close, fd_gradient

import graphgen
from graphgen import SpecError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh
from onnx.reference import ReferenceEvaluator

from graphgen.frontends import onnx as onnx_frontend


def mlp_model(elem=TensorProto.DOUBLE, opset=13, names=None):
    """x (N, 4) -> Gemm -> Relu -> Gemm(transB) -> Softmax; weights as initializers."""
    names = names or {}
    dt = np.float64 if elem == TensorProto.DOUBLE else np.float32
    rng = np.random.default_rng(0)
    W1 = names.get("W1", "W1")
    b1 = names.get("b1", "b1")
    W2 = names.get("W2", "W2")
    h = names.get("h1", "h1")
    nodes = [
        oh.make_node("Gemm", ["x", W1, b1], ["z1"], name=names.get("node", "")),
        oh.make_node("Relu", ["z1"], [h], name=names.get("node", "")),
        oh.make_node("Gemm", [h, W2], ["z2"], transB=1, alpha=0.5),
        oh.make_node("Softmax", ["z2"], ["p"], axis=-1),
    ]
    graph = oh.make_graph(
        nodes,
        "mlp",
        [oh.make_tensor_value_info("x", elem, ["N", 4])],
        [oh.make_tensor_value_info("p", elem, ["N", 3])],
        initializer=[
            nh.from_array(rng.standard_normal((4, 8)).astype(dt), W1),
            nh.from_array(rng.standard_normal(8).astype(dt), b1),
            nh.from_array(rng.standard_normal((3, 8)).astype(dt), W2),
        ],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def save(model, tmp_path, name="model.onnx"):
    path = tmp_path / name
    onnx.save(model, path)
    return path


def test_forward_matches_onnx_reference_and_params_are_the_weights(tmp_path):
    model = mlp_model()
    path = save(model, tmp_path)
    m = graphgen.compile(graphgen.load(path))
    params = m.init_params()
    for init in model.graph.initializer:
        np.testing.assert_array_equal(params[init.name], nh.to_array(init))
    x = np.random.default_rng(1).standard_normal((5, 4))
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = m.forward(x=x, **params)["p"]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert m.INPUTS == {"x": ("N", 4)}  # the dim_param stays symbolic
    assert "vjp" in dir(m) and "value_and_grad" not in dir(m)


def test_weights_are_stored_beside_the_module_not_inlined(tmp_path):
    model = mlp_model()
    path = save(model, tmp_path)
    out = tmp_path / "out" / "mlp.py"
    out.parent.mkdir()
    written = graphgen.write(graphgen.load(path), out)
    assert written == [str(out), str(out.with_suffix(".npz"))]
    source = out.read_text()
    assert "init_params" in source and len(source) < 20_000
    with np.load(out.with_suffix(".npz")) as f:
        assert sorted(f.files) == ["W1", "W2", "b1"]
    # the module finds its weights from wherever it is imported, without graphgen
    code = (
        "import sys, numpy as np; sys.modules['graphgen'] = None; import mlp; "
        "p = mlp.init_params(); print(sorted(p), p['W1'].shape)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=out.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip() == "['W1', 'W2', 'b1'] (4, 8)"


def test_vjp_matches_finite_differences_in_float64(tmp_path):
    m = graphgen.compile(graphgen.load(save(mlp_model(), tmp_path)))
    rng = np.random.default_rng(2)
    arrays = {"x": rng.standard_normal((3, 4)), **m.init_params()}
    cot = rng.standard_normal((3, 3))
    grads = m.vjp({"p": cot}, **arrays)
    assert sorted(grads) == ["W1", "W2", "b1", "x"]

    def f(a):
        return float(np.sum(m.forward(**a)["p"] * cot))

    for name, g in grads.items():
        assert_grad_close(g, fd_gradient(f, arrays, name), what=f"vjp wrt {name}")
    with pytest.raises(
        ValueError, match=r"cotangents\['p'\]: expected a float64 array"
    ):
        m.vjp({"p": cot[:2]}, **arrays)
    with pytest.raises(ValueError, match="expected a dict with keys"):
        m.vjp({"q": cot}, **arrays)


def test_loss_and_labels_give_value_and_grad_on_the_logits(tmp_path):
    path = save(mlp_model(), tmp_path)
    G = graphgen.load(path, loss="softmax_cross_entropy", labels="y")
    # the model's Softmax is not applied twice: the loss reads its logits
    assert G.nodes["loss"]["op"] == "softmax_cross_entropy"
    assert [p for p in G.predecessors("loss") if p != "y"] == ["z2"]
    m = graphgen.compile(G)
    rng = np.random.default_rng(3)
    arrays = {"x": rng.standard_normal((4, 4)), "y": np.array([0, 2, 1, 2])}
    arrays.update(m.init_params())
    loss, grads = m.value_and_grad(**arrays)
    p = m.forward(**arrays)["p"]
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(4), arrays["y"]])))

    def f(a):
        return float(m.forward(**a)["loss"])

    for name in ("W1", "b1", "W2"):
        assert_grad_close(grads[name], fd_gradient(f, arrays, name), what=name)

    G = graphgen.load(path, loss="mse", labels="target")
    assert G.nodes["target"]["shape"] == ("N", 3)
    with pytest.raises(SpecError, match="--loss needs --labels"):
        graphgen.load(path, loss="mse")
    with pytest.raises(SpecError, match="already a name in the model"):
        graphgen.load(path, loss="mse", labels="W1")


def test_freeze_makes_initializers_constants(tmp_path):
    model = mlp_model()
    G = graphgen.load(save(model, tmp_path), freeze=["W1", "b1"])
    m = graphgen.compile(G)
    assert sorted(m.PARAMS) == ["W2"]
    x = np.random.default_rng(4).standard_normal((2, 4))
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(m.forward(x=x, **m.init_params())["p"], want, rtol=1e-12)
    assert sorted(m.vjp({"p": np.ones((2, 3))}, x=x, **m.init_params())) == ["W2", "x"]
    with pytest.raises(SpecError, match="names no initializer"):
        graphgen.load(save(model, tmp_path), freeze=["nope"])


def test_awkward_onnx_names_are_handled_by_the_namer(tmp_path):
    names = {
        "W1": "gpu_0/fc1 w:0",
        "b1": "class",
        "W2": "1x",
        "h1": "lambda",
        "node": "dup",  # the same node name twice, and empty ones elsewhere
    }
    model = mlp_model(names=names)
    m = graphgen.compile(graphgen.load(save(model, tmp_path)))
    assert sorted(m.PARAMS) == sorted(["gpu_0/fc1 w:0", "class", "1x"])
    x = np.random.default_rng(5).standard_normal((2, 4))
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(m.forward(x=x, **m.init_params())["p"], want, rtol=1e-12)


def test_every_unsupported_op_is_reported_at_once_with_counts(tmp_path):
    nodes = [
        oh.make_node("Hardmax", ["x"], ["a"]),
        oh.make_node("Hardmax", ["a"], ["b"]),
        oh.make_node("Relu", ["x"], ["r"]),
        oh.make_node("Det", ["r"], ["c"]),
        oh.make_node("Add", ["b", "c"], ["y"]),
        oh.make_node("Pad", ["x"], ["dead"], mode="reflect", pads=[0, 1, 0, 1]),
    ]
    graph = oh.make_graph(
        nodes,
        "bad",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [3, 3])],
    )
    path = save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)]), tmp_path)
    with pytest.raises(SpecError) as e:
        graphgen.load(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "Hardmax ×1" not in msg and "Hardmax ×2: no graphgen op for it" in msg
    assert "Det ×1: no graphgen op for it" in msg
    assert "Pad" not in msg  # a dead node does not matter
    # and the CLI writes nothing
    out = tmp_path / "bad.py"
    proc = subprocess.run(
        [sys.executable, "-m", "graphgen.cli", "compile", str(path), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Hardmax ×2" in proc.stderr and not out.exists()


def test_opset_range_is_checked(tmp_path):
    with pytest.raises(SpecError, match="opset 6 is not supported"):
        graphgen.load(save(mlp_model(opset=6), tmp_path))
    newest = onnx.defs.onnx_opset_version()
    m = graphgen.compile(graphgen.load(save(mlp_model(opset=newest), tmp_path)))
    assert m.OUTPUTS == {"p": ("N", 3)}


def test_opset_7_softmax_coerces_to_2d(tmp_path):
    node = oh.make_node("Softmax", ["x"], ["y"], axis=1)
    graph = oh.make_graph(
        [node],
        "sm",
        [oh.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 3, 4])],
        [oh.make_tensor_value_info("y", TensorProto.DOUBLE, [2, 3, 4])],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 7)])
    m = graphgen.compile(graphgen.load(save(model, tmp_path)))
    x = np.random.default_rng(6).standard_normal((2, 3, 4))
    # the spec (and onnxruntime) coerce to (2, 12); onnx.reference uses axis 1 alone
    e = np.exp(x.reshape(2, 12))
    want = (e / e.sum(axis=1, keepdims=True)).reshape(2, 3, 4)
    np.testing.assert_allclose(m.forward(x=x)["y"], want, rtol=1e-12)


def test_shape_computations_fold_at_compile_time(tmp_path):
    # Flatten written the way exporters write it: Shape -> Gather -> Unsqueeze -> Concat
    i64 = TensorProto.INT64
    nodes = [
        oh.make_node("Shape", ["x"], ["s"]),
        oh.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        oh.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        oh.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        oh.make_node("Reshape", ["x", "shape"], ["y"]),
    ]
    graph = oh.make_graph(
        nodes,
        "flat",
        [oh.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 3, 4])],
        [oh.make_tensor_value_info("y", TensorProto.DOUBLE, [2, 12])],
        initializer=[
            oh.make_tensor("zero", i64, [], [0]),
            oh.make_tensor("zero1", i64, [1], [0]),
            oh.make_tensor("minus1", i64, [1], [-1]),
        ],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    G = graphgen.load(save(model, tmp_path), vjp=False)
    assert [G.nodes[n]["op"] for n in G if G.nodes[n]["kind"] == "op"] == ["reshape"]
    m = graphgen.compile(G)
    x = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(m.forward(x=x)["y"], x.reshape(2, 12))


def test_import_writes_a_spec_that_loads_to_the_same_graph(tmp_path):
    path = save(mlp_model(), tmp_path)
    out = tmp_path / "spec" / "mlp.yaml"
    out.parent.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "graphgen.cli",
            "import",
            str(path),
            "-o",
            str(out),
            "--loss",
            "mse",
            "--labels",
            "t",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "weights: mlp.npz" in text and "z1/AB: {op: matmul, args: [x, W1]}" in text
    a = graphgen.load(path, loss="mse", labels="t")
    b = graphgen.load(out)

    def summary(G):
        nodes = {
            n: {k: v for k, v in d.items() if k not in ("seq",)}
            for n, d in G.nodes(data=True)
        }
        edges = {(u, v): d["pos"] for u, v, d in G.edges(data=True)}
        keep = ("outputs", "loss", "wrt", "dtype")
        return nodes, edges, {k: G.graph.get(k) for k in keep}

    assert summary(a) == summary(b)
    for k, v in a.graph["weights"].items():
        np.testing.assert_array_equal(b.graph["weights"][k], v)


def test_to_spec_reports_bad_inputs_clearly(tmp_path):
    graph = oh.make_graph(
        [oh.make_node("Relu", ["x"], ["y"])],
        "strings",
        [oh.make_tensor_value_info("x", TensorProto.STRING, [2])],
        [oh.make_tensor_value_info("y", TensorProto.STRING, [2])],
    )
    path = save(oh.make_model(graph), tmp_path)
    with pytest.raises(SpecError, match="input 'x' has element type STRING"):
        onnx_frontend.to_spec(path)
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(SpecError, match="cannot read ONNX model"):
        graphgen.load(bad)


def test_check_and_explain_work_on_a_vjp_module(tmp_path):
    path = save(mlp_model(), tmp_path)
    report = graphgen.check(graphgen.load(path))
    assert report.ok and sorted(r.name for r in report.rows) == ["W1", "W2", "b1", "x"]
    text = graphgen.explain(graphgen.load(path), "b1", values=True)
    assert "✓" in text and "✗" not in text


def test_lenet_example_is_current_compiles_and_checks(tmp_path):
    from conftest import REPO

    sys.path.insert(0, str(REPO / "examples"))
    try:
        import make_lenet_onnx
    finally:
        sys.path.pop(0)
    path = REPO / "examples" / "lenet.onnx"
    assert path.read_bytes() == make_lenet_onnx.lenet().SerializeToString()
    out = tmp_path / "lenet.py"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "graphgen.cli",
            "compile",
            str(path),
            "-o",
            str(out),
            "--loss",
            "softmax_cross_entropy",
            "--labels",
            "digit",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    G = graphgen.load(path, loss="softmax_cross_entropy", labels="digit")
    assert graphgen.check(G).ok
    m = graphgen.compile(G)
    x = np.random.default_rng(7).random((3, 1, 28, 28), dtype=np.float32)
    want = ReferenceEvaluator(make_lenet_onnx.lenet()).run(None, {"image": x})[0]
    got = m.forward(image=x, digit=np.array([1, 2, 3]), **m.init_params())["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_0d_initializer_stays_0d_in_the_generated_module(tmp_path, backend):
    # _load_weights used np.ascontiguousarray, which turns a 0-d array into shape (1,),
    # and forward then refused it ("expected shape (), got (1,)")
    graph = oh.make_graph(
        [oh.make_node("Mul", ["x", "s"], ["y"])],
        "scale",
        [oh.make_tensor_value_info("x", TensorProto.DOUBLE, [3])],
        [oh.make_tensor_value_info("y", TensorProto.DOUBLE, [3])],
        initializer=[nh.from_array(np.array(2.5), "s")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    path = save(model, tmp_path)
    m = graphgen.compile(graphgen.load(path, trainable=["s"]), backend=backend)
    params = m.init_params()
    assert params["s"].shape == ()
    np.testing.assert_array_equal(m.forward(x=np.ones(3), **params)["y"], [2.5] * 3)


def test_a_dead_int64_reshape_of_the_ids_is_dropped_before_validation(tmp_path):
    # exporters leave such nodes behind; graphgen rejected it ("argument 0 (x) of
    # reshape must be float32") though no output needs it
    graph = oh.make_graph(
        [
            oh.make_node("Reshape", ["ids", "shape"], ["flat"]),
            oh.make_node("Gather", ["E", "ids"], ["y"]),
            oh.make_node("MatMul", ["flat_f", "unused_W"], ["dead"]),
            oh.make_node("Relu", ["flat_f"], ["dead_too"]),
        ],
        "dead",
        [
            oh.make_tensor_value_info("ids", TensorProto.INT64, [2, 3]),
            oh.make_tensor_value_info("flat_f", TensorProto.DOUBLE, [2, 4]),
        ],
        [oh.make_tensor_value_info("y", TensorProto.DOUBLE, [2, 3, 4])],
        initializer=[
            nh.from_array(np.array([-1], np.int64), "shape"),
            nh.from_array(np.arange(20.0).reshape(5, 4), "E"),
            nh.from_array(np.ones((4, 4)), "unused_W"),
        ],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    info = {}
    spec, weights = onnx_frontend.to_spec(model, info=info)
    assert sorted(spec["params"]) == ["E"] and sorted(weights) == ["E"]
    assert info["initializers"]["unused_W"][0] == "constant"
    assert "dead" not in spec["nodes"] and "dead_too" not in spec["nodes"]
    m = graphgen.compile(graphgen.load(save(model, tmp_path)))
    ids = np.array([[0, 1, 4], [2, 2, 3]])
    y = m.forward(ids=ids, flat_f=np.zeros((2, 4)), **m.init_params())["y"]
    np.testing.assert_array_equal(y, np.arange(20.0).reshape(5, 4)[ids])


@pytest.mark.parametrize(
    ("indices", "backend"),
    [
        (np.array([[0, 2], [2, 4]]), "numpy"),
        (np.array([3, 0, 3, -1]), "numba"),
        (np.zeros((2, 3), np.int64), "numpy"),
    ],
    ids=["2-D", "scattered-numba", "zeros"],
)
def test_gather_at_constant_indices_matches_onnx_and_finite_differences(
    indices, backend
):
    # position ids, token-type zeros: N-D, repeated and scattered constant indices
    graph = oh.make_graph(
        [
            oh.make_node("Gather", ["E", "idx"], ["rows"], axis=0),
            oh.make_node("Mul", ["rows", "x"], ["y"]),
        ],
        "take",
        [oh.make_tensor_value_info("x", TensorProto.DOUBLE, [3])],
        [oh.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
        initializer=[
            nh.from_array(np.random.default_rng(0).standard_normal((5, 3)), "E"),
            nh.from_array(indices.astype(np.int64), "idx"),
        ],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    m = graphgen.compile(onnx_frontend.load(model), backend=backend)
    params = m.init_params()
    x = np.array([1.0, -2.0, 0.5])
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(m.forward(x=x, **params)["y"], want, rtol=1e-12)
    w = np.random.default_rng(1).standard_normal(want.shape)
    grads = m.vjp({"y": w}, x=x, **params)

    def f(arrays):
        return float(np.sum(w * np.take(arrays["E"], indices, axis=0) * x))

    assert_grad_close(grads["E"], fd_gradient(f, {"E": params["E"]}, "E"))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_int64_ids_through_reshape_and_unsqueeze_feed_a_gather(backend, tmp_path):
    # exporters flatten the ids before the embedding lookup: int64 stays int64 through
    # Reshape, Squeeze, Unsqueeze and Flatten, and no gradient is asked of it
    graph = oh.make_graph(
        [
            oh.make_node("Reshape", ["ids", "flat_shape"], ["flat"]),
            oh.make_node("Unsqueeze", ["flat", "axes"], ["col"]),
            oh.make_node("Flatten", ["col"], ["col2"], axis=1),
            oh.make_node("Squeeze", ["col2", "axes"], ["back"]),
            oh.make_node("Gather", ["E", "back"], ["y"]),
        ],
        "ids",
        [oh.make_tensor_value_info("ids", TensorProto.INT64, [2, 3])],
        [oh.make_tensor_value_info("y", TensorProto.DOUBLE, [6, 4])],
        initializer=[
            nh.from_array(np.array([-1], np.int64), "flat_shape"),
            nh.from_array(np.array([1], np.int64), "axes"),
            nh.from_array(np.random.default_rng(2).standard_normal((5, 4)), "E"),
        ],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    G = graphgen.load(save(model, tmp_path), dtype="float64")
    m = graphgen.compile(G, backend=backend)
    params = m.init_params()
    ids = np.array([[0, 4, 4], [1, 0, 2]])
    want = ReferenceEvaluator(model).run(None, {"ids": ids})[0]
    np.testing.assert_allclose(m.forward(ids=ids, **params)["y"], want, rtol=1e-12)
    w = np.random.default_rng(3).standard_normal((6, 4))
    grads = m.vjp({"y": w}, ids=ids, **params)
    assert sorted(grads) == ["E"]
    want_grad = np.zeros((5, 4))
    np.add.at(want_grad, ids.reshape(-1), w)
    np.testing.assert_allclose(grads["E"], want_grad, rtol=1e-12)


def _dynamic_ids_model():
    """ids (batch, seq) int64 -> E[ids] + P[arange(seq)]: the position ids come from a
    Shape -> Gather -> Range chain on the symbolic sequence length."""
    graph = oh.make_graph(
        [
            oh.make_node("Shape", ["ids"], ["shape"]),
            oh.make_node("Gather", ["shape", "one"], ["seq"], axis=0),
            oh.make_node("Range", ["zero", "seq", "one"], ["pos"]),
            oh.make_node("Gather", ["P", "pos"], ["pe"]),
            oh.make_node("Gather", ["E", "ids"], ["te"]),
            oh.make_node("Add", ["te", "pe"], ["y"]),
        ],
        "dyn",
        [oh.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [oh.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
        initializer=[
            nh.from_array(np.array(0, np.int64), "zero"),
            nh.from_array(np.array(1, np.int64), "one"),
            nh.from_array(np.random.default_rng(5).standard_normal((7, 2)), "E"),
            nh.from_array(np.random.default_rng(6).standard_normal((4, 2)), "P"),
        ],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


def test_shape_option_folds_arithmetic_on_symbolic_sizes(tmp_path, cli):
    path = save(_dynamic_ids_model(), tmp_path)
    # without --shape, the chain runs on the symbolic sizes (graphgen.ops.logic):
    # one module for every batch and sequence length
    dynamic = graphgen.compile(graphgen.load(path, dtype="float64"))
    for ids in (np.array([[0, 6, 2], [3, 3, 1]]), np.array([[5, 1, 0, 4]])):
        want = ReferenceEvaluator(_dynamic_ids_model()).run(None, {"ids": ids})[0]
        got = dynamic.forward(ids=ids, **dynamic.init_params())["y"]
        np.testing.assert_allclose(got, want)
    G = graphgen.load(path, shapes={"ids": [2, 3]}, dtype="float64")
    m = graphgen.compile(G)
    ids = np.array([[0, 6, 2], [3, 3, 1]])
    want = ReferenceEvaluator(_dynamic_ids_model()).run(None, {"ids": ids})[0]
    np.testing.assert_allclose(m.forward(ids=ids, **m.init_params())["y"], want)
    status, _, err = cli("compile", path, "-o", tmp_path / "m.py", "--shape", "ids=2x3")
    assert status == 0, err
    status, _, err = cli(
        "compile", path, "-o", tmp_path / "m.py", "--shape", "ids=2x3x1"
    )
    assert status == 2 and "does not fit the input's declared shape" in err
    status, _, err = cli("compile", path, "-o", tmp_path / "m.py", "--shape", "nope=2")
    assert status == 2 and "not inputs of the model" in err


def test_constants_the_dynamo_exporter_folded_from_no_parameter_are_not_params():
    # the dynamo exporter's optimizer lifts an additive mask into an initializer and
    # records what it was folded from; a transposed weight names its parameter
    graph = oh.make_graph(
        [
            oh.make_node("MatMul", ["x", "val_1"], ["h"]),
            oh.make_node("Add", ["h", "val_2"], ["y"]),
        ],
        "lifted",
        [oh.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 2])],
        [oh.make_tensor_value_info("y", TensorProto.DOUBLE, [2, 2])],
        initializer=[
            nh.from_array(np.eye(2), "val_1"),
            nh.from_array(np.array([[0.0, -3.4e38], [0.0, 0.0]]), "val_2"),
        ],
    )
    key = "pkg.onnxscript.optimizer.folded_from"
    for name, sources in (
        ("val_1", "['fc.weight', 't']"),
        ("val_2", "['arange', 'le']"),
    ):
        vi = oh.make_tensor_value_info(name, TensorProto.DOUBLE, [2, 2])
        vi.metadata_props.add(key=key, value=sources)
        graph.value_info.append(vi)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])
    info = {}
    spec, _ = onnx_frontend.to_spec(model, info=info)
    assert sorted(spec["params"]) == ["val_1"]
    assert info["initializers"]["val_2"] == (
        "constant",
        "folded by the exporter from no parameter",
    )
    spec, _ = onnx_frontend.to_spec(model, trainable=["val_2"])
    assert sorted(spec["params"]) == ["val_1", "val_2"]


def test_a_model_with_only_int_inputs_takes_its_outputs_float_type(tmp_path):
    # a float64 language model reads token ids: its float type is its logits'
    table = np.random.default_rng(0).standard_normal((5, 3))
    graph = oh.make_graph(
        [oh.make_node("Gather", ["E", "ids"], ["y"])],
        "lookup",
        [oh.make_tensor_value_info("ids", TensorProto.INT64, [2])],
        [oh.make_tensor_value_info("y", TensorProto.DOUBLE, [2, 3])],
        initializer=[nh.from_array(table, "E")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    G = graphgen.load(save(model, tmp_path))
    assert G.graph["dtype"] == "float64"
    m = graphgen.compile(G)
    y = m.forward(ids=np.array([4, 1]), **m.init_params())["y"]
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, table[[4, 1]])
