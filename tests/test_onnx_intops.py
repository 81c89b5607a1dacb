"""ONNX ops on integer indices and running sums at run time (issue 15): ``CumSum`` and
``GatherElements`` imported from models built with onnx.helper, their forward against
ONNX's reference evaluator and their vjp against central differences (float64), with
both backends."""

from __future__ import annotations

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


def _model(nodes, inputs, inits=(), opset=17):
    graph = oh.make_graph(
        nodes,
        "m",
        [oh.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [oh.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
        initializer=[nh.from_array(np.asarray(v), k) for k, v in inits],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def _check(model, arrays, backend, wrt):
    """Forward equals the reference evaluator; vjp wrt ``wrt`` equals central
    differences of <w, y>."""
    m = graphgen.compile(onnx_frontend.load(model, dtype="float64"), backend=backend)
    want = ReferenceEvaluator(model).run(None, arrays)[0]
    arrays = {**arrays, **m.init_params()}
    got = m.forward(**arrays)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    w = np.random.default_rng(5).standard_normal(want.shape)
    grads = m.vjp({"y": w}, **arrays)
    assert sorted(grads) == sorted(wrt)

    def f(a):
        return float(np.sum(w * m.forward(**a)["y"]))

    for name in wrt:
        assert_grad_close(grads[name], fd_gradient(f, arrays, name), what=name)
    return m


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize(
    ("axis", "exclusive", "reverse"),
    [(1, 0, 0), (-1, 1, 0), (0, 0, 1), (0, 1, 1)],
)
def test_cumsum_matches_onnx_and_finite_differences(backend, axis, exclusive, reverse):
    model = _model(
        [
            oh.make_node(
                "CumSum", ["x", "axis"], ["c"], exclusive=exclusive, reverse=reverse
            ),
            oh.make_node("Mul", ["c", "c"], ["y"]),  # nonlinear after: ȳ varies
        ],
        [("x", TensorProto.DOUBLE, [3, 4])],
        [("axis", np.array(axis, np.int64))],
    )
    x = np.random.default_rng(0).standard_normal((3, 4))
    _check(model, {"x": x}, backend, ["x"])


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_gather_elements_at_run_time_indices_adds_repeated_gradients(backend):
    model = _model(
        [
            oh.make_node("GatherElements", ["x", "idx"], ["g"], axis=1),
            oh.make_node("Mul", ["g", "g"], ["y"]),
        ],
        [("x", TensorProto.DOUBLE, [2, 4]), ("idx", TensorProto.INT64, [2, 5])],
    )
    rng = np.random.default_rng(1)
    idx = np.array([[0, 0, 3, -1, 2], [1, 1, 1, -4, 0]])  # repeated and negative
    m = _check(model, {"x": rng.standard_normal((2, 4)), "idx": idx}, backend, ["x"])
    with pytest.raises(ValueError, match="idx"):  # out of range: refused, not read
        m.forward(x=np.zeros((2, 4)), idx=np.full((2, 5), 4))


def test_gather_elements_with_smaller_indices_reads_the_leading_part():
    # PyTorch's gather (and onnxruntime) let indices be smaller than the data outside
    # the axis: the leading part is read (ONNX's reference evaluator refuses it)
    model = _model(
        [oh.make_node("GatherElements", ["x", "idx"], ["y"], axis=0)],
        [("x", TensorProto.DOUBLE, [3, 4]), ("idx", TensorProto.INT64, [2, 2])],
    )
    x = np.random.default_rng(2).standard_normal((3, 4))
    idx = np.array([[2, 0], [2, 2]])
    m = graphgen.compile(onnx_frontend.load(model, dtype="float64"))
    y = m.forward(x=x, idx=idx)["y"]
    np.testing.assert_array_equal(y, np.take_along_axis(x[:, :2], idx, axis=0))
    w = np.array([[1.0, 2.0], [3.0, 4.0]])
    want = np.zeros((3, 4))
    want[2, 0], want[0, 1], want[2, 1] = 1.0 + 3.0, 2.0, 4.0
    np.testing.assert_array_equal(m.vjp({"y": w}, x=x, idx=idx)["x"], want)


def test_cumsum_of_run_time_integers_and_constant_gather_elements_indices_are_named():
    ints = _model(
        [
            oh.make_node("CumSum", ["ids", "axis"], ["c"]),
            oh.make_node("Cast", ["c"], ["y"], to=TensorProto.DOUBLE),
        ],
        [("ids", TensorProto.INT64, [2, 3])],
        [("axis", np.array(1, np.int64))],
    )
    with pytest.raises(SpecError, match="CumSum: running sums of integer"):
        onnx_frontend.load(ints)
    const = _model(
        [oh.make_node("GatherElements", ["x", "idx"], ["y"])],
        [("x", TensorProto.DOUBLE, [2, 2])],
        [("idx", np.array([[0, 1], [1, 0]], np.int64))],
    )
    with pytest.raises(SpecError, match="GatherElements: indices known at compile"):
        onnx_frontend.load(const)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize(("k", "upper"), [(0, 1), (-1, 0), (2, 1)])
def test_trilu_matches_onnx_and_finite_differences(backend, k, upper):
    model = _model(
        [
            oh.make_node("Trilu", ["x", "k"], ["t"], upper=upper),
            oh.make_node("Mul", ["t", "t"], ["y"]),
        ],
        [("x", TensorProto.DOUBLE, [2, 3, 4])],
        [("k", np.array(k, np.int64))],
    )
    x = np.random.default_rng(3).standard_normal((2, 3, 4))
    _check(model, {"x": x}, backend, ["x"])


def test_trilu_of_run_time_int64_stays_int64_and_of_a_mask_stays_a_mask():
    model = _model(
        [
            oh.make_node("Trilu", ["ids"], ["t"], upper=0),
            oh.make_node("Gather", ["E", "t"], ["rows"]),
            oh.make_node("Greater", ["x", "zero"], ["pos"]),
            oh.make_node("Trilu", ["pos"], ["tri"]),
            oh.make_node("Where", ["tri", "x", "neg"], ["w"]),
            oh.make_node("ReduceSum", ["rows"], ["s"], keepdims=0),
            oh.make_node("Mul", ["w", "s"], ["y"]),
        ],
        [("ids", TensorProto.INT64, [3, 3]), ("x", TensorProto.DOUBLE, [3, 3])],
        [
            ("E", np.arange(8.0).reshape(4, 2)),
            ("zero", np.array(0.0)),
            ("neg", np.array(-2.0)),
        ],
    )
    arrays = {
        "ids": np.array([[1, 2, 3], [3, 0, 1], [2, 2, 2]]),
        "x": np.random.default_rng(4).standard_normal((3, 3)),
    }
    m = _check(model, arrays, "numpy", ["x", "E"])
    assert np.dtype(m.DTYPES["ids"]) == np.int64


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_int64_attention_mask_compared_and_cast_at_run_time(backend):
    # the attention_mask idioms of exported transformers: Cast to float (an additive
    # mask), Cast to bool, Equal with 0, a comparison with the constant first
    model = _model(
        [
            oh.make_node("Cast", ["am"], ["amf"], to=TensorProto.DOUBLE),
            oh.make_node("Sub", ["one", "amf"], ["inv"]),
            oh.make_node("Mul", ["inv", "big"], ["add"]),
            oh.make_node("Add", ["x", "add"], ["s"]),
            oh.make_node("Cast", ["am"], ["amb"], to=TensorProto.BOOL),
            oh.make_node("Equal", ["am", "zero"], ["pad"]),
            oh.make_node("Greater", ["two", "am"], ["small"]),  # am < 2
            oh.make_node("And", ["amb", "small"], ["keep"]),
            oh.make_node("Where", ["pad", "fill", "s"], ["w"]),
            oh.make_node("Where", ["keep", "w", "fill"], ["v"]),
            oh.make_node("Mul", ["v", "v"], ["y"]),
        ],
        [("x", TensorProto.DOUBLE, [2, 4]), ("am", TensorProto.INT64, [2, 4])],
        [
            ("one", np.array(1.0)),
            ("big", np.array(-3.0)),
            ("zero", np.array(0, np.int64)),
            ("two", np.array([[2]], np.int64)),
            ("fill", np.array(-5.0)),
        ],
    )
    am = np.array([[1, 1, 0, 2], [0, 1, 1, 1]])
    x = np.random.default_rng(6).standard_normal((2, 4))
    m = _check(model, {"x": x, "am": am}, backend, ["x"])
    assert np.dtype(m.DTYPES["am"]) == np.int64


def test_int64_comparisons_are_exact_beyond_float32():
    # 2**24 + 1 is not a float32: compared in int64, it still differs from 2**24
    model = _model(
        [
            oh.make_node("Equal", ["ids", "c"], ["e"]),
            oh.make_node("Where", ["e", "x", "zero"], ["y"]),
        ],
        [("x", TensorProto.FLOAT, [3]), ("ids", TensorProto.INT64, [3])],
        [("c", np.array(2**24, np.int64)), ("zero", np.array(0.0, np.float32))],
    )
    m = graphgen.compile(onnx_frontend.load(model))
    ids = np.array([2**24, 2**24 + 1, 0])
    y = m.forward(x=np.ones(3, np.float32), ids=ids)["y"]
    np.testing.assert_array_equal(y, [1.0, 0.0, 0.0])


def test_casts_of_run_time_int64_to_other_integer_types_are_named():
    cast = _model(
        [
            oh.make_node("Cast", ["a"], ["a8"], to=TensorProto.INT8),
            oh.make_node("Cast", ["a8"], ["y"], to=TensorProto.DOUBLE),
        ],
        [("a", TensorProto.INT64, [2])],
    )
    with pytest.raises(SpecError, match="Cast: casts of run-time int64 tensors"):
        onnx_frontend.load(cast)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize(
    ("batch_dims", "idx"),
    [
        (0, np.array([[0, 1], [2, -1], [0, 1]])),  # repeated and negative tuples
        (1, np.array([[[1], [1], [0]], [[2], [-3], [0]]])),  # per batch row
    ],
)
def test_gather_nd_at_run_time_indices_matches_onnx_and_finite_differences(
    backend, batch_dims, idx
):
    model = _model(
        [
            oh.make_node("GatherND", ["x", "idx"], ["g"], batch_dims=batch_dims),
            oh.make_node("Mul", ["g", "g"], ["y"]),
        ],
        [
            ("x", TensorProto.DOUBLE, [2, 3, 2] if batch_dims else [3, 2, 2]),
            ("idx", TensorProto.INT64, list(idx.shape)),
        ],
    )
    x = np.random.default_rng(7).standard_normal((2, 3, 2) if batch_dims else (3, 2, 2))
    _check(model, {"x": x, "idx": idx}, backend, ["x"])


def _sequence_mask_model():
    """x (B, S) with dynamic axes, lengths (B,) and past (a scalar) int64: a mask built
    at run time from Shape, Range, Sub, Div, Mod and comparisons of two run-time int64
    tensors, a ConstantOfShape fill of x's run-time shape, then a softmax."""
    nodes = [
        oh.make_node("Shape", ["x"], ["sh"]),
        oh.make_node("Gather", ["sh", "one"], ["S"]),
        oh.make_node("Add", ["past", "S"], ["end"]),
        oh.make_node("Range", ["past", "end", "one"], ["pos"]),  # S entries
        oh.make_node("Sub", ["pos", "past"], ["rel"]),
        oh.make_node("Unsqueeze", ["lengths", "ax1"], ["len2"]),
        oh.make_node("Less", ["rel", "len2"], ["keep"]),  # two run-time int64
        oh.make_node("Sub", ["rel", "two"], ["shifted"]),  # negative entries too
        oh.make_node("Div", ["shifted", "three"], ["block"]),  # rounds toward 0
        oh.make_node("Mod", ["block", "two"], ["parity"], fmod=1),
        oh.make_node("Mod", ["shifted", "three"], ["phase"]),  # the sign of 3
        oh.make_node("Equal", ["parity", "zero"], ["even"]),
        oh.make_node("Div", ["S", "two"], ["half"]),
        oh.make_node("GreaterOrEqual", ["phase", "half"], ["late"]),
        oh.make_node("Or", ["even", "late"], ["pick"]),
        oh.make_node("And", ["keep", "pick"], ["mask"]),
        oh.make_node(
            "ConstantOfShape", ["sh"], ["fill"], value=nh.from_array(np.array([-30.0]))
        ),
        oh.make_node("Where", ["mask", "x", "fill"], ["z"]),
        oh.make_node("Softmax", ["z"], ["p"], axis=-1),
        oh.make_node("Mul", ["p", "x"], ["y"]),
    ]
    inits = [
        ("zero", np.array(0, np.int64)),
        ("one", np.array(1, np.int64)),
        ("two", np.array(2, np.int64)),
        ("three", np.array(3, np.int64)),
        ("ax1", np.array([1], np.int64)),
    ]
    inputs = [
        ("x", TensorProto.DOUBLE, ["B", "S"]),
        ("lengths", TensorProto.INT64, ["B"]),
        ("past", TensorProto.INT64, []),
    ]
    return _model(nodes, inputs, inits)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_sequence_mask_built_at_run_time_matches_onnxruntime(backend):
    ort = pytest.importorskip("onnxruntime")
    model = _sequence_mask_model()
    session = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    # one module for every batch and sequence length (the axes stay symbolic)
    m = graphgen.compile(onnx_frontend.load(model, dtype="float64"), backend=backend)
    rng = np.random.default_rng(8)
    for shape, lengths, past in [
        ((2, 7), [7, 3], 5),
        ((3, 4), [0, 4, 2], 0),
        ((1, 9), [6], -4),
    ]:
        arrays = {
            "x": rng.standard_normal(shape),
            "lengths": np.array(lengths, np.int64),
            "past": np.array(past, np.int64),
        }
        want = session.run(None, arrays)[0]
        np.testing.assert_allclose(m.forward(**arrays)["y"], want, rtol=1e-12)
        w = rng.standard_normal(shape)
        grads = m.vjp({"y": w}, **arrays)
        assert sorted(grads) == ["x"]  # no gradient into int64

        def f(a, w=w):
            return float(np.sum(w * m.forward(**a)["y"]))

        assert_grad_close(grads["x"], fd_gradient(f, arrays, "x"), what="x")


def test_int64_run_time_values_that_fix_a_size_are_one_clear_error():
    # a Range whose length is an input's value: known only at run time
    ranged = _model(
        [
            oh.make_node("Range", ["zero", "n", "one"], ["pos"]),
            oh.make_node("Cast", ["pos"], ["y"], to=TensorProto.DOUBLE),
        ],
        [("n", TensorProto.INT64, [])],
        [("zero", np.array(0, np.int64)), ("one", np.array(1, np.int64))],
    )
    with pytest.raises(
        SpecError, match=r"node 'pos'.*Range: its length depends on int64"
    ):
        onnx_frontend.load(ranged)
    filled = _model(
        [
            oh.make_node("ConstantOfShape", ["dims"], ["y"]),
        ],
        [("dims", TensorProto.INT64, [2])],
    )
    with pytest.raises(SpecError, match="ConstantOfShape: its shape depends on int64"):
        onnx_frontend.load(filled)
    floats = _model(
        [oh.make_node("Mod", ["x", "x"], ["y"], fmod=1)],
        [("x", TensorProto.DOUBLE, [2])],
    )
    with pytest.raises(SpecError, match="Mod: Mod of float tensors"):
        onnx_frontend.load(floats)
    mixed = _model(
        [
            oh.make_node("Cast", ["x"], ["xf"], to=TensorProto.DOUBLE),
            oh.make_node("Add", ["n", "xf"], ["y"]),
        ],
        [("x", TensorProto.DOUBLE, [2]), ("n", TensorProto.INT64, [2])],
    )
    with pytest.raises(SpecError, match="Add: arithmetic between an int64 tensor and"):
        onnx_frontend.load(mixed)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_range_shorter_than_compiled_for_is_refused_by_the_module(backend):
    # Range(0, S - 2): S - 2 entries, unless S < 2 (then none): the module names it
    model = _model(
        [
            oh.make_node("Shape", ["x"], ["sh"]),
            oh.make_node("Gather", ["sh", "zero"], ["S"]),
            oh.make_node("Sub", ["S", "two"], ["end"]),
            oh.make_node("Range", ["zero", "end", "one"], ["pos"]),
            oh.make_node("Cast", ["pos"], ["posf"], to=TensorProto.DOUBLE),
            oh.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            oh.make_node("Mul", ["posf", "s"], ["t"]),
            oh.make_node("ReduceSum", ["t"], ["y"], keepdims=0),
        ],
        [("x", TensorProto.DOUBLE, ["S"])],
        [
            ("zero", np.array(0, np.int64)),
            ("one", np.array(1, np.int64)),
            ("two", np.array(2, np.int64)),
        ],
    )
    m = graphgen.compile(onnx_frontend.load(model, dtype="float64"), backend=backend)
    assert m.forward(x=np.ones(5))["y"] == (0 + 1 + 2) * 5.0
    with pytest.raises(ValueError, match="range 'pos'.*compiled for -1"):
        m.forward(x=np.ones(1))


def test_reshape_and_expand_to_shapes_of_dynamic_axes_keep_them_dynamic():
    # Reshape(x, Concat(Shape(x)[:1], [-1])) and Expand(b, Shape(x)): the shapes are
    # int64 tensors read off the module's sizes, so one module serves every batch
    ort = pytest.importorskip("onnxruntime")
    model = _model(
        [
            oh.make_node("Shape", ["x"], ["sh"]),
            oh.make_node("Slice", ["sh", "zero1", "one1"], ["lead"]),
            oh.make_node("Concat", ["lead", "minus1"], ["flat"], axis=0),
            oh.make_node("Reshape", ["x", "flat"], ["f"]),
            oh.make_node("Mul", ["S", "two"], ["width"]),  # S * 2 at run time
            oh.make_node("Equal", ["width", "four"], ["is4"]),
            oh.make_node("Expand", ["b", "sh"], ["bb"]),
            oh.make_node("Add", ["x", "bb"], ["xb"]),
            oh.make_node("Reshape", ["xb", "flat"], ["g"]),
            oh.make_node("Where", ["is4", "f", "g"], ["y"]),
        ],
        [("x", TensorProto.DOUBLE, ["B", "S"])],
        [
            ("zero1", np.array([0], np.int64)),
            ("one1", np.array([1], np.int64)),
            ("minus1", np.array([-1], np.int64)),
            ("two", np.array(2, np.int64)),
            ("four", np.array(4, np.int64)),
            ("b", np.array([0.5])),
        ],
    )
    model.graph.node.insert(1, oh.make_node("Gather", ["sh", "one"], ["S"]))
    model.graph.initializer.append(nh.from_array(np.array(1, np.int64), "one"))
    session = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    m = graphgen.compile(onnx_frontend.load(model, dtype="float64", freeze=["b"]))
    for shape in [(2, 2), (3, 5)]:
        x = np.random.default_rng(9).standard_normal(shape)
        want = session.run(None, {"x": x})[0]
        np.testing.assert_array_equal(m.forward(x=x)["y"], want)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_where_choosing_int64_ids_at_run_time_stays_int64(backend):
    # padded positions read row 0 of the embedding: Where(am == 0, 0, ids)
    model = _model(
        [
            oh.make_node("Equal", ["am", "zero"], ["pad"]),
            oh.make_node("Where", ["pad", "zero", "ids"], ["safe"]),
            oh.make_node("Gather", ["E", "safe"], ["e"]),
            oh.make_node("Mul", ["e", "e"], ["y"]),
        ],
        [("ids", TensorProto.INT64, [2, 3]), ("am", TensorProto.INT64, [2, 3])],
        [("zero", np.array(0, np.int64)), ("E", np.arange(10.0).reshape(5, 2))],
    )
    arrays = {
        "ids": np.array([[4, 2, 3], [1, 1, 4]]),
        "am": np.array([[1, 1, 0], [1, 0, 0]]),
    }
    _check(model, arrays, backend, ["E"])
