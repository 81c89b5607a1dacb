"""Every registered op, compiled on its own, against finite differences and its NumPy impl.

``CASES`` is keyed by op name and the main test is parametrized by iterating
``graphgen.ops.REGISTRY``: an op registered without an entry in ``CASES`` shows up as a
failing test case. Ops without a VJP rule must be listed in ``NO_GRADIENT`` with a reason;
their gradients are checked to be exactly zero (and finite differences agree).

Each case builds ``y = op(args...)``, reduces it to ``loss = sum(w * y)`` with a random
``w`` (so every output entry matters), compiles it, and compares ``value_and_grad`` with
central differences (eps 1e-6, tolerance 1e-6 · max(1, |g|)) for every float argument.
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import op_cases_attention
import op_cases_conv
import op_cases_data
import op_cases_logic
import op_cases_nn
import pytest
from conftest import add_weighted_loss, assert_grad_close, build_graph, fd_gradient
from opcase import Case

import graphgen
from graphgen import GraphgenWarning
from graphgen.check import random_arrays
from graphgen.check import sample as sample_domain
from graphgen.ops import REGISTRY

# Ops without a VJP rule: why no gradient flows through them.
NO_GRADIENT = {
    "step": "piecewise constant mask (derivative 0 almost everywhere)",
    "sign": "piecewise constant (derivative 0 almost everywhere)",
    "ge": "comparison mask, piecewise constant",
    "lt": "comparison mask, piecewise constant",
    "eq": "comparison mask, piecewise constant",
    "onehot": "its only argument is int64 labels",
    "kept_mask": "its only argument is int64 labels",
    "count_kept": "its only argument is int64 labels",
    "zeros": "takes no arguments",
    "dimsize": "takes no arguments (a number of elements)",
}

UNARY = [Case(((2, 3),)), Case(((),)), Case(((4,),))]
BINARY = [
    Case(((2, 3), (2, 3))),
    Case(((3, 4), (4,))),
    Case(((3, 1), (1, 4))),
    Case(((), (2, 3))),
    Case(((2, 3), ())),
    Case(((2, 1, 3), (4, 1))),
    Case(((2, 3),), args=(0, 0)),
]


def reductions():
    return [
        Case(((2, 3, 4),)),
        Case(((2, 3, 4),), {"axis": None, "keepdims": True}),
        Case(((2, 3, 4),), {"axis": 1}),
        Case(((2, 3, 4),), {"axis": -1, "keepdims": True}),
        Case(((2, 3, 4),), {"axis": [0, 2]}),
        Case(((2, 3, 4),), {"axis": [-1, 0], "keepdims": True}),
        Case(((5,),), {"axis": 0}),
        Case(((),)),
    ]


def softmaxes():
    return [
        Case(((3, 4),)),
        Case(((3, 4),), {"axis": 0}),
        Case(((3, 4),), {"axis": -1}),
        Case(((2, 3, 4),), {"axis": 1}),
        Case(((5,),), {"axis": 0}),
    ]


CASES = {
    **{
        name: UNARY
        for name in (
            "neg",
            "exp",
            "log",
            "sqrt",
            "square",
            "abs",
            "tanh",
            "sigmoid",
            "relu",
            "softplus",
            "sin",
            "cos",
            "step",
            "sign",
        )
    },
    "leaky_relu": UNARY
    + [
        Case(((2, 3),), {"alpha": 0.2}),
        Case(((4,),), {"alpha": 2}),
    ],
    **{
        name: BINARY
        for name in (
            "add",
            "sub",
            "mul",
            "div",
            "pow",
            "maximum",
            "minimum",
            "ge",
            "lt",
            "eq",
        )
    },
    "add_n": [
        Case(((2, 3),)),
        Case(((2, 3), (3,), (2, 1))),
        Case(((), (2, 3), (1, 3))),
        Case(((2, 3), (3,)), args=(0, 1, 0)),
    ],
    "matmul": [
        Case(((3, 4), (4, 2)), label="2d"),
        Case(((2, 3, 4), (4, 5)), label="batched-3d@2d"),
        Case(((2, 1, 3, 4), (3, 4, 5)), label="batched-broadcast-4d@3d"),
        Case(((1, 3, 4), (2, 4, 2)), label="batched-broadcast-size1"),
        Case(((4,), (4, 3)), label="vector@matrix"),
        Case(((3, 4), (4,)), label="matrix@vector"),
        Case(((4,), (4,)), label="vector@vector"),
        Case(((2, 3, 4), (4,)), label="batched@vector"),
        Case(((4,), (2, 4, 3)), label="vector@batched"),
        Case(((3, 3),), args=(0, 0), label="x@x"),
    ],
    "transpose": [
        Case(((2, 3),)),
        Case(((2, 3, 4),)),
        Case(((2, 3, 4),), {"perm": [1, 0, 2]}),
        Case(((2, 3, 4),), {"perm": [-1, 0, 1]}),
        Case(((2, 3),), {"perm": [0, 1]}),
    ],
    "reshape": [
        Case(((2, 3, 4),), {"shape": [6, -1]}),
        Case(((2, 3, 4),), {"shape": [-1]}),
        Case(((2, 3, 4),), {"shape": [4, 3, 2]}),
        Case(((6,),), {"shape": [2, 1, 3]}),
        Case(((),), {"shape": [1, 1]}),
    ],
    "broadcast_to": [
        Case(((3,),), {"shape": [2, 3]}),
        Case(((3, 1),), {"shape": [3, 4]}),
        Case(((),), {"shape": [2, 2]}),
        Case(((1, 3),), {"shape": [2, 4, 3]}),
    ],
    "sum_to_shape": [
        Case(((2, 3),), {"shape": [3]}),
        Case(((4, 3),), {"shape": [1, 3]}),
        Case(((2, 4, 3),), {"shape": [4, 1]}),
        Case(((2, 3),), {"shape": []}),
        Case(((2, 3),), {"shape": [2, 3]}),
    ],
    "concat": [
        Case(((2, 3), (1, 3), (3, 3)), {"axis": 0}),
        Case(((2, 1), (2, 3), (2, 2)), {"axis": 1}),
        Case(((2, 1), (2, 3), (2, 2)), {"axis": -1}),
        Case(((2, 3),)),
        Case(((2, 3), (1, 3)), {"axis": 0}, args=(0, 1, 0)),
    ],
    "slice": [
        Case(((6,),), {"start": 1, "stop": 5, "step": 2}),
        Case(((5, 4),), {"axis": 1, "start": -3}),
        Case(((5, 4),), {"axis": 0, "start": 1, "stop": -1}),
        Case(((6, 3),), {"step": 3}),
        Case(((5, 4),), {"axis": -1, "start": -1}),
        Case(((7, 2),), {"start": -6, "stop": -1, "step": 2}),
        Case(((5, 4),), {}),
    ],
    "unslice": [
        Case(((3, 4),), {"shape": [5, 4], "axis": 0, "start": 1, "stop": 4, "step": 1}),
        Case(((3, 3),), {"shape": [6, 3], "axis": 0, "start": 0, "stop": 6, "step": 2}),
        Case(((2, 2),), {"shape": [2, 5], "axis": 1, "start": 1, "stop": 5, "step": 3}),
    ],
    "zeros": [Case((), {"shape": [2, 3]})],
    "dimsize": [Case((), {"dims": [2, 3, 4]})],
    "sum": reductions(),
    "mean": reductions(),
    "max": reductions(),
    "logsumexp": reductions(),
    "softmax": softmaxes(),
    "log_softmax": softmaxes(),
    "mse": [
        Case(((3, 4), (3, 4))),
        Case(((3, 4), (4,))),
        Case(((), (2, 3))),
        Case(((3, 4),), args=(0, 0)),
    ],
    "softmax_cross_entropy": [
        Case(((4, 5), (4,))),
        Case(((2, 3, 4), (2, 3))),
        Case(((5,), ())),
        Case(((2, 3, 4), (2, 3)), {"ignore_index": 2}, label="ignore-index"),
        Case(((6, 3), (6,)), {"ignore_index": -1}, labels=(-1, 3), label="ignore-neg"),
    ],
    "sigmoid_cross_entropy": [
        Case(((3, 4), (3, 4))),
        Case(((3, 4), (4,))),
        Case(((2, 3), ())),
    ],
    "softmax_xent_grad": [
        Case(((4, 5), (4,))),
        Case(((2, 3, 4), (2, 3))),
        Case(((2, 3, 4), (2, 3)), {"ignore_index": 0}, label="ignore-index"),
    ],
    "kept_mask": [Case(((2, 3),), {"ignore_index": 1}, labels=(0, 3))],
    "count_kept": [Case(((2, 3),), {"ignore_index": 1}, labels=(0, 3))],
    "onehot": [
        Case(((4,),), {"depth": 5}),
        Case(((2, 3),), {"depth": 3}),
    ],
}

# Op families declared outside graphgen/ops/defs.py keep their cases beside their tests.
for _family in (
    op_cases_attention,
    op_cases_conv,
    op_cases_data,
    op_cases_logic,
    op_cases_nn,
):
    CASES.update(_family.CASES)
    NO_GRADIENT.update(_family.NO_GRADIENT)

DOMAIN_PRIORITY = ("labels", "positive", "unit", "away0", "real")


def _params():
    for name in REGISTRY:  # iterate the registry: a new op without cases fails below
        cases = CASES.get(name)
        if not cases:
            yield pytest.param(name, None, id=f"{name}-MISSING")
            continue
        for case in cases:
            yield pytest.param(name, case, id=f"{name}-{case.ident()}")


def sample(op, case, rng):
    """Arrays ``in0, in1, ...`` for the case's inputs, each sampled per ``op.arg_domain``."""
    arg_inputs = case.arg_inputs()
    arrays = {}
    for j, shape in enumerate(case.shapes):
        domains = {op.arg_domain(i) for i, k in enumerate(arg_inputs) if k == j}
        domain = next(d for d in DOMAIN_PRIORITY if d in domains or d == "real")
        if case.values and j in case.values:
            v = np.asarray(case.values[j], dtype=np.int64)
        elif domain == "labels" or j in case.ints:
            depth = case.attrs["depth"] if "depth" in case.attrs else case.shapes[0][-1]
            low, high = getattr(case, "labels", None) or (0, depth)
            v = rng.integers(low, high, size=shape).astype(np.int64)
        else:
            v = sample_domain(rng, domain, shape)
        arrays[f"in{j}"] = np.asarray(v)
    return arrays


def op_graph(op, case, arrays, dtype="float64"):
    """``y = op(...)``, ``loss = sum(w * y)``; wrt every float input.

    An op whose result is int64 (its ``dtype`` rule) has no gradient: the loss reads
    ``int_to_float(y)``, the graph is differentiated with respect to ``w`` alone, and
    the returned wrt (the op's inputs to differentiate) is empty."""
    arg_inputs = case.arg_inputs()
    int_inputs = {arg_inputs[i] for i in op.int_args} | set(case.ints)
    spec = {}
    for j, shape in enumerate(case.shapes):
        spec[f"in{j}"] = ("input", shape, "int64" if j in int_inputs else dtype)
    # a mask argument of a differentiable op (where's condition) gets no gradient
    masks = {k for i, k in enumerate(arg_inputs) if op.arg_domain(i) == "mask"} - {
        k for i, k in enumerate(arg_inputs) if op.arg_domain(i) != "mask"
    }
    skip = int_inputs | (masks if op.vjp is not None else set())
    wrt = [f"in{j}" for j in range(len(case.shapes)) if j not in skip]
    G = build_graph(
        spec,
        [("y", op.name, [f"in{k}" for k in arg_inputs], case.attrs)],
        outputs=["y"],
        dtype=dtype,
    )
    if graphgen.prepare(G).nodes["y"]["dtype"] == "int64":
        G.add_node("y_float", kind="op", op="int_to_float", attrs={})
        G.add_edge("y", "y_float", pos=(0,))
        y_shape = add_weighted_loss(G, out="y_float", dtype=dtype)
        G.graph.update(loss="loss", outputs=["y", "loss"], wrt=["w"])
        return G, y_shape, []
    y_shape = add_weighted_loss(G, dtype=dtype)
    G.graph.update(loss="loss", outputs=["y", "loss"], wrt=wrt)
    return G, y_shape, wrt


def test_every_registered_op_has_cases_or_is_exempt():
    missing = sorted(set(REGISTRY) - set(CASES))
    assert not missing, (
        f"ops without gradient test cases (add them to CASES): {missing}"
    )
    stale = sorted((set(CASES) | set(NO_GRADIENT)) - set(REGISTRY))
    assert not stale, f"test tables name ops that are not registered: {stale}"


def test_no_gradient_table_matches_ops_without_vjp():
    no_vjp = {name for name, op in REGISTRY.items() if op.vjp is None}
    assert no_vjp == set(NO_GRADIENT), (
        f"ops without a VJP rule but no reason in NO_GRADIENT: {sorted(no_vjp - set(NO_GRADIENT))}; "
        f"listed but differentiable: {sorted(set(NO_GRADIENT) - no_vjp)}"
    )


@pytest.mark.parametrize(("op_name", "case"), list(_params()))
def test_op_matches_impl_and_finite_differences(op_name, case):
    assert case is not None, (
        f"op {op_name!r} is registered but has no test case: add it to CASES in "
        f"{__file__}"
    )
    op = REGISTRY[op_name]
    rng = np.random.default_rng(zlib.crc32(f"{op_name}-{case.ident()}".encode()))
    arrays = sample(op, case, rng)
    G, y_shape, wrt = op_graph(op, case, arrays)
    arrays["w"] = rng.standard_normal(y_shape)

    int_out = graphgen.prepare(G).nodes["y"]["dtype"] == "int64"
    if op.vjp is None and wrt:
        with pytest.warns(GraphgenWarning, match="does not depend on it") as record:
            module = graphgen.compile(G)
        warned = " ".join(str(w.message) for w in record)
        for n in wrt:
            assert repr(n) in warned
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", GraphgenWarning)
            module = graphgen.compile(G)

    # forward == the op's NumPy reference, on the attributes shape inference settled on
    attrs = graphgen.prepare(G).nodes["y"]["attrs"]
    inputs = [arrays[f"in{k}"] for k in case.arg_inputs()]
    expected = np.asarray(op.impl(*inputs, **attrs))
    out = module.forward(**arrays)
    y = np.asarray(out["y"])
    assert y.shape == expected.shape == tuple(y_shape)
    if int_out:  # exact, in int64
        assert y.dtype == expected.dtype == np.int64
        np.testing.assert_array_equal(y, expected)
    else:
        assert y.dtype == np.float64
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    loss_ref = float(np.sum(arrays["w"] * expected))
    assert abs(float(out["loss"]) - loss_ref) <= 1e-12 * max(1.0, abs(loss_ref))

    # value_and_grad against central finite differences of the loss
    loss, grads = module.value_and_grad(**arrays)
    assert isinstance(loss, float)
    assert abs(loss - float(out["loss"])) <= 1e-12 * max(1.0, abs(loss))
    assert sorted(grads) == sorted(wrt + (["w"] if int_out else []))

    def f(a):
        return float(module.forward(**a)["loss"])

    for n in grads:
        grad = np.asarray(grads[n])
        assert grad.shape == arrays[n].shape, n
        assert grad.dtype == np.float64, n
        if int_out:  # the adjoint stops at int64: d loss/d w is y, nothing else
            np.testing.assert_array_equal(grad, expected.astype(np.float64))
            continue  # exact; central differences would lose large int64 values
        if op.vjp is None:
            assert np.all(grad == 0), (
                f"{op_name} has no VJP, but d loss/d {n} is {grad}"
            )
        numeric = fd_gradient(f, arrays, n)
        assert_grad_close(grad, numeric, what=f"d loss/d {n} through {op_name}")


# ------------------------------------------------------------ float32 extreme logits

LOGITS = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3]])


def _stable_case(name):
    """(nodes, extra arrays) computing y from logits ``x`` (2, 3) of magnitude 1e4."""
    if name == "softmax_cross_entropy":
        return [("y", name, ["x", "labels"], {})], {"labels": np.array([1, 0])}
    if name == "sigmoid_cross_entropy":
        return [("y", name, ["x", "t"], {})], {
            "t": np.array([[0.3, 0.9, 0.5], [0.1, 0.2, 1.0]])
        }
    if name == "logsumexp":
        return [("y", name, ["x"], {"axis": -1})], {}
    if name == "log_softmax":
        return [("y", name, ["x"], {"axis": -1})], {}
    return [("y", name, ["x"], {})], {}


@pytest.mark.parametrize(
    "op_name",
    [
        "softmax_cross_entropy",
        "sigmoid_cross_entropy",
        "sigmoid",
        "softplus",
        "logsumexp",
        "log_softmax",
    ],
)
def test_float32_extreme_logits_give_finite_values_and_gradients(op_name):
    nodes, extra = _stable_case(op_name)
    results = {}
    for dtype in ("float32", "float64"):
        spec = {"x": ("input", (2, 3), dtype)}
        if "labels" in extra:
            spec["labels"] = ("input", (2,), "int64")
        if "t" in extra:
            spec["t"] = ("input", (2, 3), dtype)
        G = build_graph(spec, nodes, outputs=["y"], dtype=dtype)
        y_shape = add_weighted_loss(G, dtype=dtype)
        G.graph.update(loss="loss", outputs=["y", "loss"], wrt=["x"])
        module = graphgen.compile(G, dtype=dtype)
        arrays = {
            "x": LOGITS.astype(dtype),
            "w": np.linspace(0.5, 1.5, int(np.prod(y_shape)))
            .reshape(y_shape)
            .astype(dtype),
        }
        for k, v in extra.items():
            arrays[k] = v if v.dtype.kind == "i" else v.astype(dtype)
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            out = module.forward(**arrays)
            loss, grads = module.value_and_grad(**arrays)
        y = np.asarray(out["y"])
        assert y.dtype == np.dtype(dtype)
        assert np.all(np.isfinite(y)), f"{op_name} {dtype}: forward {y}"
        assert np.isfinite(loss), f"{op_name} {dtype}: loss {loss}"
        assert grads["x"].dtype == np.dtype(dtype)
        assert np.all(np.isfinite(grads["x"])), (
            f"{op_name} {dtype}: gradient {grads['x']}"
        )
        results[dtype] = (y, grads["x"])
    # float32 agrees with float64 to float32 precision
    np.testing.assert_allclose(
        results["float32"][0], results["float64"][0], rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(
        results["float32"][1], results["float64"][1], rtol=1e-5, atol=1e-6
    )


# --------------------------------------------------------------------- second order


def _second_order_graphs():
    """(id, arrays spec, nodes, first-order wrt, gradient to differentiate, second wrt)."""
    yield (
        "tanh-matmul",
        {"x": ("input", (3, 4)), "W": ("param", (4, 2)), "w": ("input", (3, 2))},
        [
            ("h", "matmul", ["x", "W"], {}),
            ("t", "tanh", ["h"], {}),
            ("wt", "mul", ["t", "w"], {}),
            ("L", "sum", ["wt"], {}),
        ],
        "W",
        "x",
    )
    yield (
        "softmax-cross-entropy",
        {
            "x": ("input", (3, 4)),
            "W": ("param", (4, 5)),
            "labels": ("input", (3,), "int64"),
        },
        [
            ("z", "matmul", ["x", "W"], {}),
            ("L", "softmax_cross_entropy", ["z", "labels"], {}),
        ],
        "x",
        "x",
    )
    yield (
        "pow-log-sqrt-div-broadcast",
        {"x": ("input", (2, 3)), "b": ("param", (3,)), "w": ("input", (2, 3))},
        [
            ("p", "pow", ["x", "b"], {}),
            ("l", "log", ["x"], {}),
            ("s", "sqrt", ["x"], {}),
            ("q", "div", ["l", "s"], {}),
            ("e", "mul", ["p", "q"], {}),
            ("sg", "sigmoid", ["e"], {}),
            ("m", "mul", ["sg", "w"], {}),
            ("L", "mean", ["m"], {}),
        ],
        "b",
        "x",
    )
    yield (
        "mse-logsumexp-log_softmax-fanout",
        {"x": ("input", (3, 4)), "t": ("input", (3, 4))},
        [
            ("ls", "log_softmax", ["x"], {"axis": 0}),
            ("lse", "logsumexp", ["x"], {"axis": 1}),
            ("sq", "mul", ["x", "x"], {}),
            ("a", "add", ["ls", "sq"], {}),
            ("e", "mse", ["a", "t"], {}),
            ("r", "sum", ["lse"], {}),
            ("L", "add", ["e", "r"], {}),
        ],
        "x",
        "x",
    )
    yield (
        "max-reduction-softmax-concat-slice",
        {"x": ("input", (3, 4)), "y": ("input", (2, 4)), "w": ("input", (3,))},
        [
            ("c", "concat", ["x", "y"], {"axis": 0}),
            ("sl", "slice", ["c"], {"start": 1}),
            ("sm", "softmax", ["sl"], {"axis": -1}),
            ("mx", "max", ["sm"], {"axis": 0}),
            ("q", "square", ["mx"], {}),
            ("ww", "matmul", ["sl", "q"], {}),
            ("L2", "slice", ["ww"], {"stop": 3}),
            ("L3", "mul", ["L2", "w"], {}),
            ("L", "sum", ["L3"], {}),
        ],
        "y",
        "x",
    )


@pytest.mark.parametrize(
    ("arrays_spec", "nodes", "first", "second"),
    [pytest.param(*rest, id=ident) for ident, *rest in _second_order_graphs()],
)
def test_second_order_gradient_matches_finite_differences_of_the_gradient(
    arrays_spec, nodes, first, second
):
    rng = np.random.default_rng(7)
    G = build_graph(arrays_spec, nodes, loss="L", wrt=sorted({first, second}))
    data = random_arrays(G, seed=3)
    first_module = graphgen.compile(G)

    A = graphgen.adjoint(G)
    g_node = A.graph["grads"][first]
    assert g_node is not None
    shape = A.nodes[first]["shape"]
    A.add_node("v", kind="input", shape=shape, dtype="float64")
    A.add_node("gv", kind="op", op="mul", attrs={})
    A.add_edge(g_node, "gv", pos=(0,))
    A.add_edge("v", "gv", pos=(1,))
    A.add_node("S", kind="op", op="sum", attrs={})
    A.add_edge("gv", "S", pos=(0,))
    A.graph.update(loss="S", outputs=["S"], wrt=[second])
    A2 = graphgen.adjoint(A)
    assert A2.graph["grads"][second] is not None
    second_module = graphgen.compile(A)

    data["v"] = rng.standard_normal(shape)
    first_args = {k: v for k, v in data.items() if k != "v"}

    def s_of(a):
        _, grads = first_module.value_and_grad(
            **{k: v for k, v in a.items() if k != "v"}
        )
        return float(np.sum(grads[first] * a["v"]))

    value, grads2 = second_module.value_and_grad(**data)
    assert abs(value - s_of(data)) <= 1e-12 * max(1.0, abs(value))
    assert first_args  # the first-order module sees the same arrays
    numeric = fd_gradient(s_of, data, second)
    assert_grad_close(
        grads2[second], numeric, what=f"d/d{second} of sum(v · dL/d{first})"
    )


# -------------------------------------------------------------- symbolic sizes


SYMBOLIC_SPEC = {
    "inputs": {
        "x": ["batch", 4],
        "y": ["batch", 2],
        "labels": {"shape": ["batch"], "dtype": "int64"},
    },
    "params": {"W": [4, 3], "b": [1, 6]},
    "nodes": {
        "c": {"op": "concat", "args": ["x", "y"], "axis": 1},
        "c0": {"op": "concat", "args": ["x", "x"], "axis": 0},
        "s0": {"op": "slice", "args": ["c0"], "start": 1, "stop": "batch + 1"},
        "s1": {"op": "slice", "args": ["c"], "axis": 1, "start": 1, "step": 2},
        "r": {"op": "reshape", "args": ["c"], "shape": [-1]},
        "r2": {"op": "reshape", "args": ["r"], "shape": ["batch", 3, 2]},
        "t": {"op": "transpose", "args": ["r2"], "perm": [0, 2, 1]},
        "bt": {"op": "broadcast_to", "args": ["b"], "shape": ["batch", 6]},
        "m": {"op": "mul", "args": ["bt", "c"]},
        "sm": {"op": "sum", "args": ["t"], "axis": 0},
        "h": {"op": "matmul", "args": ["s0", "W"]},
        "l1": {"op": "softmax_cross_entropy", "args": ["h", "labels"]},
        "mx": {"op": "max", "args": ["s1"], "axis": 1},
        "lm": {"op": "mean", "args": ["mx"]},
        "ls": {"op": "logsumexp", "args": ["sm"]},
        "lmm": {"op": "mean", "args": ["m"]},
        "J": {"op": "add_n", "args": ["l1", "lm", "ls", "lmm"]},
    },
    "loss": "J",
    "wrt": ["x", "y", "W", "b"],
}


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_shape_ops_with_symbolic_sizes(batch):
    from graphgen.frontends import spec as spec_module

    G = graphgen.prepare(spec_module.from_dict(SYMBOLIC_SPEC, source="symbolic.yaml"))
    assert G.nodes["s0"]["shape"] == ("batch", 4)
    assert G.nodes["r"]["shape"] == ("6*batch",)
    module = graphgen.compile(G)
    arrays = random_arrays(G, seed=batch, sizes={"batch": batch})
    x, y, labels = arrays["x"], arrays["y"], arrays["labels"]
    c = np.concatenate([x, y], axis=1)
    h = np.concatenate([x, x])[1 : batch + 1] @ arrays["W"]
    lse = np.log(np.exp(h).sum(-1))
    expected = (
        np.mean(lse - h[np.arange(batch), labels])
        + np.mean(c[:, 1::2].max(axis=1))
        + np.log(np.exp(c.reshape(batch, 3, 2).transpose(0, 2, 1).sum(0)).sum())
        + np.mean(arrays["b"] * c)
    )
    loss, _ = module.value_and_grad(**arrays)
    assert loss == pytest.approx(expected, rel=1e-12)
    report = graphgen.check(G, arrays=arrays, module=module)
    assert report.ok, report.format()
