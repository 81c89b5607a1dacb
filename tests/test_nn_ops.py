"""The ops of graphgen/ops/nn.py against PyTorch and ONNX's reference implementations.

Finite differences for every op run in test_ops_gradients.py (cases in op_cases_nn.py);
here: forward values and gradients against ``torch`` (when installed), forward semantics
against ``onnx.reference`` (when installed), the NumPy erf, float32, symbolic batch sizes,
the generated code's formatting and clear shape errors.
"""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest
from conftest import REPO, VENV_BIN, add_weighted_loss, build_graph

import graphgen
from graphgen.check import random_arrays
from graphgen.errors import ShapeError
from graphgen.frontends import spec as spec_module


def op_module(op, shapes, attrs=None, dtype="float64", int_inputs=(), wrt=None):
    """``y = op(in0, in1, ...)``, ``loss = sum(w·y)``, compiled; returns (module, y shape)."""
    spec = {
        f"in{j}": ("input", s, "int64" if j in int_inputs else dtype)
        for j, s in enumerate(shapes)
    }
    G = build_graph(
        spec,
        [("y", op, [f"in{j}" for j in range(len(shapes))], attrs or {})],
        outputs=["y"],
        dtype=dtype,
    )
    y_shape = add_weighted_loss(G, dtype=dtype)
    if wrt is None:
        wrt = [f"in{j}" for j in range(len(shapes)) if j not in int_inputs]
    G.graph.update(loss="loss", outputs=["y", "loss"], wrt=wrt)
    return graphgen.compile(G, dtype=dtype), tuple(y_shape)


def run(op, arrays, attrs=None, dtype="float64", int_inputs=(), seed=0):
    """Forward value and gradients of ``sum(w·op(arrays))`` with a random ``w``."""
    module, y_shape = op_module(
        op, [a.shape for a in arrays], attrs, dtype, int_inputs=int_inputs
    )
    w = np.random.default_rng(seed).standard_normal(y_shape).astype(dtype)
    feed = {f"in{j}": a for j, a in enumerate(arrays)}
    y = module.forward(**feed, w=w)["y"]
    _, grads = module.value_and_grad(**feed, w=w)
    return y, grads, w


def rand(*shape, dtype="float64", seed=0, low=None):
    rng = np.random.default_rng(seed)
    if low is not None:
        return rng.uniform(low, low + 1.5, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------ erf


def erf_helper():
    module, _ = op_module("erf", [(3,)])
    return module._erf


ERF_POINTS = np.concatenate(
    [
        np.linspace(-7.0, 7.0, 20001),
        np.geomspace(1e-300, 6.0, 4000),
        -np.geomspace(1e-300, 6.0, 4000),
        [0.0, -0.0, 0.46875, -0.46875, 4.0, -4.0, 5.9, 26.0, 1e300, np.inf, -np.inf],
    ]
)


def test_erf_matches_math_erf_to_double_precision():
    erf = erf_helper()
    y = erf(ERF_POINTS)
    ref = np.array([math.erf(v) for v in ERF_POINTS])
    assert y.dtype == np.float64
    rel = np.abs(y - ref) / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)
    assert rel.max() <= 2e-15, ERF_POINTS[np.argmax(rel)]
    assert np.all(np.signbit(erf(np.array([-0.0, -1e-300]))))
    assert np.isnan(erf(np.array([np.nan])))[0]
    assert erf(np.asarray(0.5)) == pytest.approx(math.erf(0.5), rel=1e-15)


def test_erf_in_float32_stays_float32_and_is_accurate():
    erf = erf_helper()
    x = ERF_POINTS[np.abs(ERF_POINTS) < 1e30].astype(np.float32)
    y = erf(x)
    assert y.dtype == np.float32
    ref = np.array([math.erf(float(v)) for v in x])
    big = np.abs(ref) > 1e-30
    rel = np.abs(y[big] - ref[big]) / np.abs(ref[big])
    assert rel.max() <= 4 * np.finfo(np.float32).eps


def test_erf_raises_no_floating_point_warnings():
    erf = erf_helper()
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        erf(np.array([0.0, 1e-310, 3.0, 30.0, 1e308, np.inf, -np.inf]))
        erf(np.array([1e-40, 10.0, 3e38], dtype=np.float32))


# ---------------------------------------------------------------------- torch


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    torch.set_default_dtype(torch.float64)
    return torch


def tgrad(torch, fn, arrays, w, grad_of=None):
    """Forward value and gradients of ``sum(w·fn(*tensors))`` in torch."""
    ts = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    y = fn(*ts)
    (y * torch.tensor(w)).sum().backward()
    which = range(len(ts)) if grad_of is None else grad_of
    return y.detach().numpy(), {
        f"in{j}": (None if ts[j].grad is None else ts[j].grad.numpy()) for j in which
    }


TOL = {
    "float64": {"rtol": 1e-10, "atol": 1e-10},
    "float32": {"rtol": 2e-4, "atol": 2e-4},
}


def close(ours, theirs, dtype):
    assert np.asarray(ours).dtype == np.dtype(dtype)
    np.testing.assert_allclose(ours, theirs, **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (3, 4, 5, 6)])
def test_batch_norm_train_matches_torch(torch, dtype, shape):
    F = torch.nn.functional
    c = shape[1]
    arrays = [
        rand(*shape, dtype=dtype) * 2 + 0.5,
        rand(c, dtype=dtype, seed=1),
        rand(c, dtype=dtype, seed=2),
    ]
    y, grads, w = run("batch_norm_train", arrays, {"epsilon": 1e-3}, dtype=dtype)
    ty, tg = tgrad(
        torch,
        lambda x, s, b: F.batch_norm(x, None, None, s, b, training=True, eps=1e-3),
        arrays,
        w,
    )
    close(y, ty, dtype)
    for k in tg:
        close(grads[k], tg[k], dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 4, 5)])
def test_batch_norm_inference_matches_torch(torch, dtype, shape):
    F = torch.nn.functional
    c = shape[1]
    arrays = [
        rand(*shape, dtype=dtype),
        rand(c, dtype=dtype, seed=1),
        rand(c, dtype=dtype, seed=2),
        rand(c, dtype=dtype, seed=3),
        rand(c, dtype=dtype, seed=4, low=0.5),
    ]
    y, grads, w = run("batch_norm", arrays, dtype=dtype)

    # torch keeps running statistics as buffers: differentiate them as plain tensors
    def bn(x, s, b, m, v):
        sh = (1, -1) + (1,) * (x.dim() - 2)
        return (x - m.reshape(sh)) / torch.sqrt(v.reshape(sh) + 1e-5) * s.reshape(
            sh
        ) + b.reshape(sh)

    ty, tg = tgrad(torch, bn, arrays, w)
    close(y, ty, dtype)
    ty2 = F.batch_norm(
        *[torch.tensor(a) for a in (arrays[0], arrays[3], arrays[4], arrays[1])],
        torch.tensor(arrays[2]),
        training=False,
    )
    close(y, ty2.numpy(), dtype)
    for k in tg:
        close(grads[k], tg[k], dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    ("shape", "axis", "pshape"),
    [((3, 4, 5), -1, (5,)), ((2, 3, 4), 1, (3, 4)), ((6, 8), 1, (8,))],
)
def test_layer_norm_matches_torch(torch, dtype, shape, axis, pshape):
    F = torch.nn.functional
    arrays = [
        rand(*shape, dtype=dtype) * 3 + 1,
        rand(*pshape, dtype=dtype, seed=1),
        rand(*pshape, dtype=dtype, seed=2),
    ]
    y, grads, w = run("layer_norm", arrays, {"axis": axis}, dtype=dtype)
    ty, tg = tgrad(
        torch, lambda x, s, b: F.layer_norm(x, pshape, s, b, eps=1e-5), arrays, w
    )
    close(y, ty, dtype)
    for k in tg:
        close(grads[k], tg[k], dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn_matches_torch_for_odd_sizes(torch, dtype, size):
    # torch's window is (size//2 before, (size−1)//2 after): ONNX's for odd sizes only
    F = torch.nn.functional
    arrays = [rand(2, 7, 3, 4, dtype=dtype)]
    attrs = {"size": size, "alpha": 0.5, "beta": 0.75, "bias": 1.5}
    y, grads, w = run("lrn", arrays, attrs, dtype=dtype)
    ty, tg = tgrad(
        torch,
        lambda x: F.local_response_norm(x, size, alpha=0.5, beta=0.75, k=1.5),
        arrays,
        w,
    )
    close(y, ty, dtype)
    close(grads["in0"], tg["in0"], dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    "pads",
    [[1, 2, 0, 3], [0, -1, 2, 1], [-1, 0, 0, -2], [2, 0, -1, 1]],
)
def test_pad_matches_torch(torch, dtype, pads):
    F = torch.nn.functional
    arrays = [rand(4, 5, dtype=dtype)]
    y, grads, w = run("pad", arrays, {"pads": pads, "value": 0.5}, dtype=dtype)
    # torch lists (last axis begin, end, previous axis begin, end, ...)
    tp = [pads[1], pads[3], pads[0], pads[2]]
    ty, tg = tgrad(torch, lambda x: F.pad(x, tp, value=0.5), arrays, w)
    close(y, ty, dtype)
    close(grads["in0"], tg["in0"], dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gather_is_an_embedding_lookup_like_torch(torch, dtype):
    F = torch.nn.functional
    table = rand(11, 6, dtype=dtype)
    ids = np.random.default_rng(3).integers(0, 11, size=(4, 9))
    ids[0, :3] = 2  # repeated rows accumulate their gradients
    y, grads, w = run("gather", [table, ids], dtype=dtype, int_inputs=(1,))
    ty, tg = tgrad(torch, lambda t, i: F.embedding(i, t), [table, ids], w, grad_of=[0])
    close(y, ty, dtype)
    close(grads["in0"], tg["in0"], dtype)


def test_gather_negative_indices_and_other_axes(torch):
    data = rand(3, 5, 4)
    ids = np.array([[-1, 0], [4, -5]])
    y, grads, w = run("gather", [data, ids], {"axis": 1}, int_inputs=(1,))
    ty, tg = tgrad(torch, lambda d, i: d[:, i % 5], [data, ids], w, grad_of=[0])
    close(y, ty, "float64")
    close(grads["in0"], tg["in0"], "float64")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_torch(torch, dtype, approximate):
    F = torch.nn.functional
    x = np.concatenate([rand(50, dtype=dtype) * 3, [0.0, -8.0, 8.0]]).astype(dtype)
    y, grads, w = run("gelu", [x], {"approximate": approximate}, dtype=dtype)
    ty, tg = tgrad(torch, lambda t: F.gelu(t, approximate=approximate), [x], w)
    close(y, ty, dtype)
    close(grads["in0"], tg["in0"], dtype)


def test_erf_gradient_matches_torch(torch):
    x = rand(40) * 2
    y, grads, w = run("erf", [x])
    ty, tg = tgrad(torch, torch.erf, [x], w)
    close(y, ty, "float64")
    close(grads["in0"], tg["in0"], "float64")


@pytest.mark.parametrize(
    ("lo", "hi"), [(-0.5, 0.5), (None, 0.3), (-0.2, None), (None, None), (1.0, -1.0)]
)
def test_clip_matches_torch(torch, lo, hi):
    x = np.concatenate([rand(30), [-0.5, 0.5, 0.3, -0.2]])
    y, grads, w = run("clip", [x], {"min": lo, "max": hi})
    if lo is None and hi is None:
        ty, tg = tgrad(torch, lambda t: t * 1.0, [x], w)
    else:
        ty, tg = tgrad(torch, lambda t: torch.clamp(t, lo, hi), [x], w)
    close(y, ty, "float64")
    close(grads["in0"], tg["in0"], "float64")


# ----------------------------------------------------------------------- ONNX


def onnx_run(op_type, inputs, **attrs):
    """One ONNX node run by onnx.reference.ReferenceEvaluator."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    names = [f"i{j}" for j in range(len(inputs))]
    types = {
        np.dtype("float64"): TensorProto.DOUBLE,
        np.dtype("float32"): TensorProto.FLOAT,
        np.dtype("int64"): TensorProto.INT64,
    }
    node = helper.make_node(op_type, names, ["out"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info(n, types[a.dtype], a.shape)
            for n, a in zip(names, inputs)
        ],
        [helper.make_tensor_value_info("out", types[inputs[0].dtype], None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert onnx is not None
    return ReferenceEvaluator(model).run(None, dict(zip(names, inputs)))[0]


def forward(op, arrays, attrs=None, int_inputs=()):
    module, y_shape = op_module(
        op, [a.shape for a in arrays], attrs, int_inputs=int_inputs
    )
    feed = {f"in{j}": a for j, a in enumerate(arrays)}
    return module.forward(**feed, w=np.ones(y_shape))["y"]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6])
def test_lrn_matches_onnx_reference_including_even_sizes(size):
    # float32-exact attributes (ONNX stores them as float32); N == C because the
    # reference loops its channel window over range(N)
    x = rand(6, 6, 2, 3)
    attrs = {"alpha": 0.25, "beta": 0.625, "bias": 2.0}
    ours = forward("lrn", [x], {"size": size, **attrs})
    ref = onnx_run("LRN", [x], size=size, **attrs)
    # the reference rounds alpha/size to float32: the window is what this checks
    np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_batch_norm_matches_onnx_reference():
    x = rand(2, 3, 4, 5)
    s, b, m = rand(3, seed=1), rand(3, seed=2), rand(3, seed=3)
    v = rand(3, seed=4, low=0.5)
    eps = 2.0**-10  # exact in float32, as ONNX stores it
    ours = forward("batch_norm", [x, s, b, m, v], {"epsilon": eps})
    ref = onnx_run("BatchNormalization", [x, s, b, m, v], epsilon=eps)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("axis", "pshape"), [(-1, (5,)), (1, (4, 5)), (0, (3, 4, 5))])
def test_layer_norm_matches_onnx_reference(axis, pshape):
    x = rand(3, 4, 5) * 2 + 1
    s, b = rand(*pshape, seed=1), rand(*pshape, seed=2)
    eps = 2.0**-13  # exact in float32, as ONNX stores it
    ours = forward("layer_norm", [x, s, b], {"axis": axis, "epsilon": eps})
    ref = onnx_run("LayerNormalization", [x, s, b], axis=axis, epsilon=eps)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pads", [[1, 0, 2, 0, 1, 3], [0, 0, 0, 2, 1, 0]])
def test_pad_matches_onnx_reference(pads):
    # the reference rejects negative pads (cropping is checked against torch above)
    x = rand(2, 3, 4)
    ours = forward("pad", [x], {"pads": pads, "value": -2.0})
    ref = onnx_run(
        "Pad", [x, np.array(pads, dtype=np.int64), np.array(-2.0)], mode="constant"
    )
    np.testing.assert_allclose(ours, ref, rtol=0, atol=0)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_matches_onnx_reference(axis):
    data = rand(4, 5, 6)
    n = data.shape[axis]
    ids = np.array([[0, -1, n - 1], [-n, 1, 1]], dtype=np.int64)
    ours = forward("gather", [data, ids], {"axis": axis}, int_inputs=(1,))
    ref = onnx_run("Gather", [data, ids], axis=axis)
    np.testing.assert_array_equal(ours, ref)


def test_erf_and_clip_match_onnx_reference():
    x = rand(200) * 3
    # the reference computes erf in float32 (math.erf checks full precision above)
    np.testing.assert_allclose(forward("erf", [x]), onnx_run("Erf", [x]), rtol=1e-7)
    ref = onnx_run("Clip", [x, np.array(-0.5), np.array(0.7)])
    np.testing.assert_array_equal(forward("clip", [x], {"min": -0.5, "max": 0.7}), ref)


# ---------------------------------------------------------- symbolic batch, float32

SYMBOLIC = {
    "inputs": {
        "img": ["batch", 3, 4, 4],
        "tok": {"shape": ["batch", 5], "dtype": "int64"},
        "seq": ["batch", 7],
    },
    "params": {
        "gamma": {"shape": [3], "init": "ones"},
        "beta": {"shape": [3], "init": "zeros"},
        "rm": {"shape": [3], "init": "zeros"},
        "rv": {"shape": [3], "init": "ones"},
        "E": {"shape": [9, 4], "init": "normal"},
        "ls": {"shape": [4], "init": "ones"},
        "lb": {"shape": [4], "init": "zeros"},
    },
    "nodes": {
        "bn": {"op": "batch_norm_train", "args": ["img", "gamma", "beta"]},
        "bi": {"op": "batch_norm", "args": ["bn", "gamma", "beta", "rm", "rv"]},
        "lr": {"op": "lrn", "args": ["bi"], "size": 2, "alpha": 0.5},
        "pd": {"op": "pad", "args": ["lr"], "pads": [0, 0, 1, -1, 0, 1, 0, 1]},
        "e": {"op": "gather", "args": ["E", "tok"]},
        "ln": {"op": "layer_norm", "args": ["e", "ls", "lb"]},
        "ge": {"op": "gelu", "args": ["ln"], "approximate": "tanh"},
        "row": {"op": "gather", "args": ["seq", "tok"], "axis": 1},
        "rg": {"op": "gather", "args": ["seq", "tok"], "axis": 0},
        "cl": {"op": "clip", "args": ["pd"], "min": -1.0, "max": 1.5},
        "er": {"op": "erf", "args": ["ge"]},
        "l1": {"op": "mean", "args": ["cl"]},
        "l2": {"op": "mean", "args": ["er"]},
        "r2": {"op": "square", "args": ["row"]},
        "l3": {"op": "mean", "args": ["r2"]},
        "q2": {"op": "square", "args": ["rg"]},
        "l4": {"op": "mean", "args": ["q2"]},
        "J": {"op": "add_n", "args": ["l1", "l2", "l3", "l4"]},
    },
    "loss": "J",
    "wrt": ["img", "seq", "gamma", "beta", "rm", "rv", "E", "ls", "lb"],
}


@pytest.mark.parametrize("batch", [1, 3])
def test_symbolic_batch_compiles_and_checks(batch):
    G = graphgen.prepare(spec_module.from_dict(SYMBOLIC, source="nn.yaml"))
    assert G.nodes["pd"]["shape"] == ("batch", 4, 5, 4)
    assert G.nodes["rg"]["shape"] == ("batch", 5, 7)
    module = graphgen.compile(G)
    arrays = random_arrays(G, seed=batch, sizes={"batch": batch})
    # indices valid for both the table (9 rows) and the batch axis of seq
    arrays["tok"] = np.random.default_rng(0).integers(-batch, batch, size=(batch, 5))
    report = graphgen.check(G, arrays=arrays, module=module)
    assert report.ok, report.format()


def test_float32_stays_float32():
    G = spec_module.from_dict(dict(SYMBOLIC, dtype="float32"), source="nn32.yaml")
    module = graphgen.compile(G)
    arrays = random_arrays(G, seed=0, sizes={"batch": 2})
    arrays["tok"] = np.zeros((2, 5), dtype=np.int64)
    loss, grads = module.value_and_grad(**arrays)
    assert np.isfinite(loss)
    for name, g in grads.items():
        assert g.dtype == np.float32, name
        assert np.all(np.isfinite(g)), name


def test_generated_module_is_ruff_clean(tmp_path):
    G = spec_module.from_dict(SYMBOLIC, source="nn.yaml")
    path = tmp_path / "nn_module.py"
    path.write_text(graphgen.generate(G), encoding="utf-8")
    fmt = subprocess.run(
        [str(VENV_BIN / "ruff"), "format", "--diff", str(path)],
        capture_output=True,
        cwd=REPO,
        check=False,
    )
    diff = fmt.stdout.decode()
    # a trailing blank line comes from the module template, not from these ops
    changed = [
        line
        for line in diff.splitlines()
        if line[:1] in "+-" and line[:3] not in ("+++", "---") and line.strip("+- ")
    ]
    assert not changed, diff
    lint = subprocess.run(
        [
            str(VENV_BIN / "ruff"),
            "check",
            "--no-cache",
            "--ignore",
            "RUF059",
            str(path),
        ],
        capture_output=True,
        cwd=REPO,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout.decode()


# ---------------------------------------------------------------------- errors


def shape_error(op, shapes, attrs=None, int_inputs=()):
    spec = {
        f"in{j}": ("input", s, "int64" if j in int_inputs else "float64")
        for j, s in enumerate(shapes)
    }
    G = build_graph(
        spec,
        [("y", op, [f"in{j}" for j in range(len(shapes))], attrs or {})],
        outputs=["y"],
    )
    with pytest.raises(ShapeError) as info:
        graphgen.prepare(G)
    return str(info.value)


def test_shape_errors_are_clear():
    msg = shape_error("batch_norm", [(2, 3, 4), (4,), (3,), (3,), (3,)])
    assert "scale must have shape (3,)" in msg and "(4,)" in msg
    msg = shape_error("batch_norm_train", [(5,), (5,), (5,)])
    assert "rank >= 2" in msg
    msg = shape_error("layer_norm", [(2, 3, 4), (3,), (4,)])
    assert "scale (3,) must broadcast to the normalized dims (4,)" in msg
    msg = shape_error("layer_norm", [(2, 3), (3,), (3,)], {"axis": 2})
    assert "axis 2 is out of range for rank 2" in msg
    msg = shape_error("pad", [(2, 3)], {"pads": [1, 2]})
    assert "pads must be 4 integers" in msg
    msg = shape_error("pad", [(2, 3)], {"pads": [0, -2, 0, -2]})
    assert "crop axis 1" in msg
    msg = shape_error("gather", [(4, 5), (3,)], {"axis": 2}, int_inputs=(1,))
    assert "axis 2 is out of range" in msg
    msg = shape_error("lrn", [(4,)], {"size": 3})
    assert "rank >= 2" in msg
    msg = shape_error("lrn", [(2, 4)], {"size": 0})
    assert "size must be a positive integer" in msg
    msg = shape_error("gelu", [(3,)], {"approximate": "fast"})
    assert "'none' or 'tanh'" in msg
    msg = shape_error("clip", [(3,)], {"min": "low"})
    assert "min must be a number" in msg
    msg = shape_error(
        "batch_norm", [("batch", 3), (3,), (3,), (3,), (3,)], {"epsilon": -1}
    )
    assert "epsilon must be >= 0" in msg


def test_lrn_size_is_required():
    G = build_graph({"x": ("input", (2, 3))}, [("y", "lrn", ["x"], {})], outputs=["y"])
    with pytest.raises(graphgen.errors.GraphgenError, match="size"):
        graphgen.prepare(G)
