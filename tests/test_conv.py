"""Convolution and pooling: PyTorch and ONNX Runtime as oracles, symbolic batch, errors.

The registry-wide finite-difference test (tests/test_ops_gradients.py with the cases of
tests/op_cases_conv.py) checks every op against its own NumPy reference; here the
generated forward and backward passes are compared with independent implementations.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from conftest import REPO, VENV_BIN, add_weighted_loss, build_graph

import graphgen
from graphgen.errors import GraphError, ShapeError


def conv_model(x_shape, w_shape, op="conv", attrs=None, dtype="float64", name="model"):
    """``y = op(x[, w])``, loss ``sum(y · r)`` (r a random input): ∂loss/∂y = r."""
    arrays = {"x": ("input", x_shape)}
    args = ["x"]
    if w_shape is not None:
        arrays["w"] = ("param", w_shape)
        args.append("w")
    nodes = [("y", op, args, attrs or {})]
    G = build_graph(arrays, nodes, outputs=["y"], dtype=dtype, name=name)
    y_shape = add_weighted_loss(G, weight="r", dtype=dtype)
    G.graph.update(loss="loss", outputs=["y", "loss"], wrt=args)
    return G, y_shape


def run(G, arrays):
    module = graphgen.compile(G)
    y = module.forward(**arrays)["y"]
    _, grads = module.value_and_grad(**arrays)
    return y, grads


# ------------------------------------------------------------------- PyTorch oracle

CONV2D = [
    # (x shape, w shape, attrs, torch kwargs, asymmetric pads for F.pad or None)
    ((2, 3, 9, 9), (4, 3, 3, 3), {}, {}, None),
    ((2, 3, 9, 8), (4, 3, 3, 3), {"pads": [1, 1, 1, 1]}, {"padding": 1}, None),
    ((2, 3, 9, 9), (5, 3, 3, 2), {"strides": [2, 1]}, {"stride": (2, 1)}, None),
    (
        (1, 2, 10, 9),
        (3, 2, 3, 3),
        {"dilations": [2, 3], "pads": [2, 1, 2, 1]},
        {"dilation": (2, 3), "padding": (2, 1)},
        None,
    ),
    (
        (2, 4, 7, 7),
        (6, 2, 3, 3),
        {"groups": 2, "pads": [1, 1, 1, 1]},
        {"groups": 2, "padding": 1},
        None,
    ),
    (
        (2, 4, 8, 8),
        (4, 1, 3, 3),
        {"groups": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]},
        {"groups": 4, "stride": 2, "padding": 1},
        None,
    ),
    ((2, 8, 6, 6), (5, 8, 1, 1), {}, {}, None),
    ((2, 8, 7, 7), (5, 8, 1, 1), {"strides": [2, 2]}, {"stride": 2}, None),
    ((1, 3, 8, 7), (2, 3, 3, 3), {"pads": [0, 1, 2, 0]}, {}, (1, 0, 0, 2)),
    ((2, 3, 8, 8), (4, 3, 2, 2), {"auto_pad": "SAME_UPPER"}, {}, (0, 1, 0, 1)),
    ((2, 3, 8, 8), (4, 3, 2, 2), {"auto_pad": "SAME_LOWER"}, {}, (1, 0, 1, 0)),
]


def _torch_grads(fn, arrays, r):
    torch = pytest.importorskip("torch")
    ts = {k: torch.tensor(v, requires_grad=True) for k, v in arrays.items()}
    y = fn(torch, ts)
    (y * torch.tensor(r)).sum().backward()
    return y.detach().numpy(), {k: t.grad.numpy() for k, t in ts.items()}


@pytest.mark.parametrize("case", CONV2D, ids=lambda c: str(c[2]) or "plain")
def test_conv2d_matches_torch(case):
    x_shape, w_shape, attrs, kw, pad = case
    G, y_shape = conv_model(x_shape, w_shape, attrs=attrs)
    rng = np.random.default_rng(1)
    arrays = {"x": rng.standard_normal(x_shape), "w": rng.standard_normal(w_shape)}
    r = rng.standard_normal(y_shape)

    def fn(torch, t):
        x = t["x"] if pad is None else torch.nn.functional.pad(t["x"], pad)
        return torch.nn.functional.conv2d(x, t["w"], **kw)

    y_ref, g_ref = _torch_grads(fn, arrays, r)
    y, grads = run(G, {**arrays, "r": r})
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    for k in ("x", "w"):
        np.testing.assert_allclose(
            grads[k], g_ref[k], rtol=1e-10, atol=1e-10, err_msg=k
        )


@pytest.mark.parametrize(
    ("attrs", "kw"),
    [
        ({}, {}),
        (
            {"strides": [2], "pads": [2, 2], "dilations": [2]},
            {"stride": 2, "padding": 2, "dilation": 2},
        ),
        ({"groups": 3, "pads": [1, 1]}, {"groups": 3, "padding": 1}),
    ],
)
def test_conv1d_matches_torch(attrs, kw):
    x_shape, w_shape = (3, 6, 11), (9, 6 // attrs.get("groups", 1), 3)
    G, y_shape = conv_model(x_shape, w_shape, attrs=attrs)
    rng = np.random.default_rng(2)
    arrays = {"x": rng.standard_normal(x_shape), "w": rng.standard_normal(w_shape)}
    r = rng.standard_normal(y_shape)
    y_ref, g_ref = _torch_grads(
        lambda torch, t: torch.nn.functional.conv1d(t["x"], t["w"], **kw), arrays, r
    )
    y, grads = run(G, {**arrays, "r": r})
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    for k in ("x", "w"):
        np.testing.assert_allclose(
            grads[k], g_ref[k], rtol=1e-10, atol=1e-10, err_msg=k
        )


POOLS = [
    # (attrs, torch kwargs); ONNX pads are symmetric here (PyTorch pads symmetrically)
    ({"kernel_shape": [2, 2]}, {"kernel_size": 2, "stride": 1}),
    ({"kernel_shape": [3, 3], "strides": [2, 2]}, {"kernel_size": 3, "stride": 2}),
    (
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        {"kernel_size": 3, "stride": 2, "padding": 1},
    ),
    (
        {"kernel_shape": [3, 2], "strides": [2, 2], "ceil_mode": 1},
        {"kernel_size": (3, 2), "stride": 2, "ceil_mode": True},
    ),
    (
        {
            "kernel_shape": [3, 3],
            "strides": [2, 2],
            "pads": [1, 1, 1, 1],
            "ceil_mode": 1,
        },
        {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
    ),
    (
        {
            "kernel_shape": [2, 2],
            "strides": [3, 3],
            "pads": [1, 1, 1, 1],
            "ceil_mode": 1,
        },
        {"kernel_size": 2, "stride": 3, "padding": 1, "ceil_mode": True},
    ),
]


@pytest.mark.parametrize(("attrs", "kw"), POOLS, ids=lambda v: str(v))
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 9, 7)])
def test_max_pool_matches_torch(shape, attrs, kw):
    G, y_shape = conv_model(shape, None, op="max_pool", attrs=attrs)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape)
    r = rng.standard_normal(y_shape)
    y_ref, g_ref = _torch_grads(
        lambda torch, t: torch.nn.functional.max_pool2d(t["x"], **kw), {"x": x}, r
    )
    y, grads = run(G, {"x": x, "r": r})
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=0)
    np.testing.assert_allclose(grads["x"], g_ref["x"], rtol=1e-12, atol=1e-12)


def test_max_pool_dilations_match_torch():
    attrs = {"kernel_shape": [2, 3], "dilations": [2, 2], "pads": [1, 1, 1, 1]}
    kw = {"kernel_size": (2, 3), "dilation": 2, "padding": 1, "stride": 1}
    shape = (2, 2, 8, 9)
    G, y_shape = conv_model(shape, None, op="max_pool", attrs=attrs)
    rng = np.random.default_rng(4)
    x, r = rng.standard_normal(shape), rng.standard_normal(y_shape)
    y_ref, g_ref = _torch_grads(
        lambda torch, t: torch.nn.functional.max_pool2d(t["x"], **kw), {"x": x}, r
    )
    y, grads = run(G, {"x": x, "r": r})
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(grads["x"], g_ref["x"], rtol=1e-12, atol=1e-12)


def test_max_pool_ties_route_to_the_first_maximum_like_torch():
    # after a relu most windows hold several zeros: the gradient goes to one of them
    shape = (2, 3, 8, 8)
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    G, y_shape = conv_model(shape, None, op="max_pool", attrs=attrs)
    rng = np.random.default_rng(5)
    x = np.maximum(rng.standard_normal(shape) - 1.0, 0.0)
    r = rng.standard_normal(y_shape)
    y_ref, g_ref = _torch_grads(
        lambda torch, t: torch.nn.functional.max_pool2d(
            t["x"], kernel_size=3, stride=2, padding=1
        ),
        {"x": x},
        r,
    )
    y, grads = run(G, {"x": x, "r": r})
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(grads["x"], g_ref["x"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize(("attrs", "kw"), POOLS, ids=lambda v: str(v))
def test_avg_pool_matches_torch(attrs, kw, count_include_pad):
    shape = (2, 3, 9, 8)
    attrs = {**attrs, "count_include_pad": count_include_pad}
    kw = {**kw, "count_include_pad": bool(count_include_pad)}
    G, y_shape = conv_model(shape, None, op="avg_pool", attrs=attrs)
    rng = np.random.default_rng(6)
    x, r = rng.standard_normal(shape), rng.standard_normal(y_shape)
    y_ref, g_ref = _torch_grads(
        lambda torch, t: torch.nn.functional.avg_pool2d(t["x"], **kw), {"x": x}, r
    )
    y, grads = run(G, {"x": x, "r": r})
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads["x"], g_ref["x"], rtol=1e-12, atol=1e-12)


def test_float32_stays_float32_and_matches_torch():
    torch = pytest.importorskip("torch")
    shape, w_shape = (2, 3, 10, 10), (4, 3, 3, 3)
    arrays = {"x": ("input", shape), "w": ("param", w_shape)}
    nodes = [
        ("c", "conv", ["x", "w"], {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
        (
            "m",
            "max_pool",
            ["c"],
            {"kernel_shape": [2, 2], "ceil_mode": 1, "strides": [2, 2]},
        ),
        ("a", "avg_pool", ["m"], {"kernel_shape": [2, 2], "pads": [1, 1, 1, 1]}),
        ("loss", "sum", ["a"], {}),
    ]
    G = build_graph(
        arrays,
        nodes,
        loss="loss",
        outputs=["a", "loss"],
        wrt=["x", "w"],
        dtype="float32",
    )
    module = graphgen.compile(G)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    loss, grads = module.value_and_grad(x=x, w=w)
    assert grads["x"].dtype == grads["w"].dtype == np.float32
    assert module.forward(x=x, w=w)["a"].dtype == np.float32
    F = torch.nn.functional
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    c = F.conv2d(tx, tw, stride=2, padding=1)
    m = F.max_pool2d(c, 2, stride=2, ceil_mode=True)
    a = F.avg_pool2d(m, 2, stride=1, padding=1, count_include_pad=False)
    a.sum().backward()
    assert abs(loss - float(a.sum())) <= 1e-4 * abs(loss)
    np.testing.assert_allclose(grads["x"], tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["w"], tw.grad.numpy(), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------- ONNX Runtime oracle


def _ort_run(op_type, x, w=None, **attrs):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))]
    x = x.astype(np.float32)  # ONNX Runtime's CPU Conv and AveragePool are float32
    feeds = {"x": x}
    names = ["x"]
    if w is not None:
        inputs.append(
            helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w.shape))
        )
        feeds["w"] = w = w.astype(np.float32)
        names.append("w")
    node = helper.make_node(op_type, names, ["y"], **attrs)
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", inputs, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    sess = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return sess.run(None, feeds)[0]


ORT_POOLS = [
    {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 0, 1], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "strides": [3, 2], "pads": [2, 1, 1, 2], "ceil_mode": 1},
    {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
    {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"},
    {"kernel_shape": [2, 3], "auto_pad": "VALID", "strides": [1, 2]},
    {"kernel_shape": [2, 2], "dilations": [2, 1], "pads": [1, 1, 0, 1], "ceil_mode": 1},
]


@pytest.mark.parametrize("attrs", ORT_POOLS, ids=str)
@pytest.mark.parametrize("op", ["max_pool", "avg_pool-exclude", "avg_pool-include"])
def test_pools_match_onnxruntime(op, attrs):
    shape = (2, 3, 7, 8)
    x = np.random.default_rng(8).standard_normal(shape)
    name, _, mode = op.partition("-")
    ours = dict(attrs)
    onnx_attrs = dict(attrs)
    if name == "avg_pool":
        ours["count_include_pad"] = onnx_attrs["count_include_pad"] = int(
            mode == "include"
        )
    op_type = "MaxPool" if name == "max_pool" else "AveragePool"
    ref = _ort_run(op_type, x, **onnx_attrs)
    G, _ = conv_model(shape, None, op=name, attrs=ours, dtype="float32")
    y = graphgen.compile(G).forward(
        x=x.astype(np.float32), r=np.zeros(ref.shape, np.float32)
    )
    assert y["y"].shape == ref.shape
    np.testing.assert_allclose(y["y"], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "attrs",
    [
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        {"auto_pad": "SAME_LOWER", "strides": [2, 1]},
        {"auto_pad": "VALID", "strides": [2, 2]},
        {"pads": [0, 1, 2, 0], "groups": 2, "kernel_shape": [3, 2]},
    ],
    ids=str,
)
def test_conv_matches_onnxruntime(attrs):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 4, 9, 8))
    w = rng.standard_normal((6, 4 // attrs.get("groups", 1), 3, 2))
    onnx_attrs = {("group" if k == "groups" else k): v for k, v in attrs.items()}
    ref = _ort_run("Conv", x, w, **onnx_attrs)
    G, _ = conv_model(x.shape, w.shape, attrs=attrs, dtype="float32")
    x, w = x.astype(np.float32), w.astype(np.float32)
    y = graphgen.compile(G).forward(x=x, w=w, r=np.zeros(ref.shape, np.float32))["y"]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------- symbolic batch, errors


def small_cnn(dtype="float64", prefix=""):
    p = prefix
    arrays = {
        "x": ("input", ("batch", 3, 8, 8)),
        f"{p}conv1_weight": ("param", (4, 3, 3, 3)),
        f"{p}conv2_weight": ("param", (4, 4, 1, 1)),
    }
    nodes = [
        (f"{p}conv1_out", "conv", ["x", f"{p}conv1_weight"], {"pads": [1, 1, 1, 1]}),
        (f"{p}relu1_out", "relu", [f"{p}conv1_out"], {}),
        (
            f"{p}pool1_out",
            "max_pool",
            [f"{p}relu1_out"],
            {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        ),
        (f"{p}conv2_out", "conv", [f"{p}pool1_out", f"{p}conv2_weight"], {}),
        (
            f"{p}pool2_out",
            "avg_pool",
            [f"{p}conv2_out"],
            {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
        ),
        ("loss", "mean", [f"{p}pool2_out"], {}),
    ]
    return build_graph(
        arrays, nodes, loss="loss", outputs=[f"{p}pool2_out", "loss"], dtype=dtype
    )


def test_symbolic_batch_compiles_and_runs_per_sample():
    module = graphgen.compile(small_cnn())
    assert module.INPUTS["x"] == ("batch", 3, 8, 8)
    assert module.OUTPUTS["pool2_out"] == ("batch", 4, 2, 2)
    params = module.init_params(0)
    rng = np.random.default_rng(10)
    for batch in (1, 3, 5):
        x = rng.standard_normal((batch, 3, 8, 8))
        y = module.forward(x=x, **params)["pool2_out"]
        assert y.shape == (batch, 4, 2, 2)
        for i in range(batch):  # each image on its own gives the same output
            one = module.forward(x=x[i : i + 1], **params)["pool2_out"]
            np.testing.assert_allclose(y[i : i + 1], one, rtol=1e-12, atol=1e-12)
        loss, grads = module.value_and_grad(x=x, **params)
        assert grads["conv1_weight"].shape == (4, 3, 3, 3)
        assert np.isfinite(loss)


def test_graphgen_check_passes_on_a_cnn():
    report = graphgen.check(small_cnn())
    assert report.ok, report.format()


def _shape_error(x_shape, w_shape, op="conv", attrs=None):
    arrays = {"x": ("input", x_shape)}
    args = ["x"]
    if w_shape is not None:
        arrays["w"] = ("param", w_shape)
        args.append("w")
    G = build_graph(arrays, [("y", op, args, attrs or {})], outputs=["y"])
    with pytest.raises(ShapeError) as info:
        graphgen.prepare(G)
    return str(info.value)


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "attrs", "match"),
    [
        ((2, 3, 8, 8), (4, 2, 3, 3), {}, "x has 3 channels, so w needs C/groups = 3"),
        (
            (2, 4, 8, 8),
            (4, 2, 3, 3),
            {"groups": 3},
            "groups 3 does not divide the 4 input",
        ),
        ((2, 4, 8, 8), (5, 2, 3, 3), {"groups": 2}, "does not divide the 5 output"),
        ((2, 3, 4, 4), (4, 3, 5, 5), {}, "larger than the padded input"),
        (
            (2, 3, 4, 4),
            (4, 3, 3, 3),
            {"dilations": [2, 2]},
            r"extent 5.*padded input \(4",
        ),
        ((2, "c", 8, 8), (4, 3, 3, 3), {}, "only the batch size may be symbolic"),
        ((2, 3, "h", 8), (4, 3, 3, 3), {}, "only the batch size may be symbolic"),
        ((2, 3, 8, 8), (4, 3, 3), {}, "one kernel size per spatial axis"),
        ((2, 3, 8, 8), (4, 3, 3, 3), {"pads": [1, 1]}, "pads must have 4 entries"),
        (
            (2, 3, 8, 8),
            (4, 3, 3, 3),
            {"strides": [0, 1]},
            "strides entries must be >= 1",
        ),
        (
            (2, 3, 8, 8),
            (4, 3, 3, 3),
            {"kernel_shape": [2, 2]},
            "differs from w's kernel",
        ),
        ((2, 3, 8, 8), (4, 3, 3, 3), {"auto_pad": "SAME"}, "auto_pad must be one of"),
        ((2, 3), (4, 3), {}, "rank >= 3"),
    ],
)
def test_conv_shape_errors(x_shape, w_shape, attrs, match):
    import re

    message = _shape_error(x_shape, w_shape, attrs=attrs)
    assert re.search(match, message), message


@pytest.mark.parametrize(
    ("op", "attrs", "match"),
    [
        ("max_pool", {"kernel_shape": [9, 2]}, "larger than the padded input"),
        ("avg_pool", {"kernel_shape": [2]}, "kernel_shape must have 2 entries"),
        (
            "max_pool",
            {"kernel_shape": [2, 2], "ceil_mode": 2},
            "ceil_mode must be one of",
        ),
        (
            "avg_pool",
            {"kernel_shape": [2, 2], "count_include_pad": 3},
            "count_include_pad",
        ),
        (
            "max_pool",
            {"kernel_shape": [2, 2], "pads": [1, 1, 1, 1], "auto_pad": "VALID"},
            "cannot both",
        ),
    ],
)
def test_pool_shape_errors(op, attrs, match):
    assert match in _shape_error(("batch", 3, 8, 8), None, op=op, attrs=attrs)


def test_pools_need_a_kernel_shape():
    G = build_graph(
        {"x": ("input", (1, 1, 4, 4))}, [("y", "max_pool", ["x"], {})], outputs=["y"]
    )
    with pytest.raises(GraphError, match="needs attribute 'kernel_shape'"):
        graphgen.prepare(G)


def test_normalize_spells_out_the_attributes():
    G = build_graph(
        {"x": ("input", ("batch", 3, 7, 7)), "w": ("param", (4, 3, 3, 3))},
        [("y", "conv", ["x", "w"], {"auto_pad": "SAME_LOWER", "strides": [2, 2]})],
        outputs=["y"],
    )
    node = graphgen.prepare(G).nodes["y"]
    assert node["attrs"] == {
        "strides": [2, 2],
        "pads": [1, 1, 1, 1],
        "dilations": [1, 1],
        "groups": 1,
        "auto_pad": "NOTSET",
        "kernel_shape": [3, 3],
    }
    assert node["shape"] == ("batch", 4, 4, 4)


# ------------------------------------------------------------------ generated code


def test_generated_cnn_module_passes_ruff():
    src = graphgen.generate(small_cnn(prefix="resnet_layer1_block0_"), dtype="float32")
    assert "_conv(" in src and "_conv_grad_input(" in src and "_max_pool_grad(" in src
    for cmd in (["format", "--diff", "-"], ["check", "--select", "E,F,W", "-"]):
        proc = subprocess.run(
            [str(VENV_BIN / "ruff"), *cmd],
            input=src.encode(),
            capture_output=True,
            cwd=REPO,
            check=False,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    imports = {
        line.split()[1]
        for line in src.splitlines()
        if line.startswith(("import ", "from "))
    }
    assert imports == {"numpy"}


def test_second_derivative_through_conv():
    # J = Σ (∂L/∂x)² with L = Σ r·conv(x, w): the backward pass of the backward pass
    x_shape, w_shape = (1, 2, 5, 5), (3, 2, 3, 3)
    attrs = {"pads": [1, 0, 1, 1], "strides": [2, 1]}
    G, _ = conv_model(x_shape, w_shape, attrs=attrs)
    A = graphgen.adjoint(G)
    gx = A.graph["grads"]["x"]
    A.add_node("gx2", kind="op", op="square", attrs={})
    A.add_edge(gx, "gx2", pos=(0,))
    A.add_node("J", kind="op", op="sum", attrs={})
    A.add_edge("gx2", "J", pos=(0,))
    A.graph.update(loss="J", outputs=["J"], wrt=["w", "r"])
    module = graphgen.compile(A)
    rng = np.random.default_rng(11)
    arrays = {"x": rng.standard_normal(x_shape), "w": rng.standard_normal(w_shape)}
    arrays["r"] = rng.standard_normal(module.INPUTS["r"])
    _, grads = module.value_and_grad(**arrays)
    from conftest import assert_grad_close, fd_gradient

    def f(a):
        return float(module.forward(**a)["J"])

    for name in ("w", "r"):
        assert_grad_close(grads[name], fd_gradient(f, arrays, name), what=name)
