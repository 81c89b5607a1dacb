"""Malformed ONNX models: each gets one clear error line naming the file and the node
(exit 2, no traceback), or a correct module. The bad models are built with onnx.helper;
each class of defect the importer once crashed on, or compiled wrongly, has a case."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO

import graphgen

onnx = pytest.importorskip("onnx")
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from graphgen.frontends import onnx as onnx_frontend
from graphgen.frontends.onnx_ops import HANDLERS, SIGNATURES

F32, F64, I64 = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64


def model(nodes, inputs, outputs, inits=(), opset=13):
    """A model of ``nodes``; inputs and outputs as ``(name, elem type, shape)``."""
    graph = oh.make_graph(
        nodes,
        "bad",
        [oh.make_tensor_value_info(*i) for i in inputs],
        [oh.make_tensor_value_info(*o) for o in outputs],
        initializer=list(inits),
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def x_to_y(nodes, inits=(), opset=13, shape=(2, 3), elem=F32):
    return model(nodes, [("x", elem, list(shape))], [("y", elem, None)], inits, opset)


def one_error(cli, path, tmp_path, *fragments):
    """``graphgen compile path`` fails with exit 2 and one error line that names the
    file and each of ``fragments``, writing nothing; returns that line."""
    out = tmp_path / "out.py"
    status, _, stderr = cli("compile", path, "-o", out)
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert status == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("graphgen: error: "), stderr
    assert f"graphgen: error: {path}: " in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in stderr and not out.exists()
    return lines[0]


def save(m, tmp_path, name="bad.onnx"):
    path = tmp_path / name
    path.write_bytes(m.SerializeToString())
    return path


# ------------------------------------------------------------- node signatures


@pytest.mark.parametrize(
    ("node", "says"),
    [
        (
            oh.make_node("Relu", [], ["y"]),
            "Relu takes 1 input in opset 13; this node has 0",
        ),
        (
            oh.make_node("Add", ["x"], ["y"]),
            "Add takes 2 inputs in opset 13; this node has 1",
        ),
        (
            oh.make_node("Relu", ["x", "x"], ["y"]),
            "Relu takes 1 input in opset 13; this node has 2",
        ),
        (oh.make_node("Relu", ["x"], ["y", "w"]), "Relu takes 1 output"),
        (oh.make_node("MaxPool", [""], ["y"], kernel_shape=[1, 1]), "takes 1 input"),
        (oh.make_node("Gemm", ["x", "", "x"], ["y"]), "Gemm's input 1 is empty"),
        (oh.make_node("Sum", ["x", "", "x"], ["y"]), "Sum's input 1 is empty"),
        (oh.make_node("Min", ["x", "x", ""], ["y"]), "Min's input 2 is empty"),
    ],
)
def test_a_node_with_the_wrong_inputs_or_outputs_is_named(cli, tmp_path, node, says):
    node.name = "the_node"
    m = x_to_y([node, oh.make_node("Identity", ["x"], ["z"])])
    m.graph.output.append(oh.make_tensor_value_info("z", F32, None))
    one_error(cli, save(m, tmp_path), tmp_path, "node 'the_node': ", says)


def test_maxpool_with_an_empty_input_names_the_node_by_its_output(cli, tmp_path):
    node = oh.make_node("MaxPool", [""], ["y"], kernel_shape=[2, 2])
    path = save(x_to_y([node], shape=(1, 1, 4, 4)), tmp_path)
    one_error(cli, path, tmp_path, "node 'y': MaxPool takes 1 input")


def _undefined(node, name):
    a = node.attribute.add()
    a.name = name  # no type, no value
    return node


@pytest.mark.parametrize(
    ("node", "says"),
    [
        (
            oh.make_node("Concat", ["x", "x"], ["y"]),
            "Concat needs attribute 'axis' (an int)",
        ),
        (
            _undefined(oh.make_node("Concat", ["x", "x"], ["y"]), "axis"),
            "Concat's attribute 'axis' must be an int (INT), not UNDEFINED",
        ),
        (
            oh.make_node("Concat", ["x", "x"], ["y"], axis="0"),
            "Concat's attribute 'axis' must be an int (INT), not STRING",
        ),
        (
            oh.make_node("Concat", ["x", "x"], ["y"], axis=0, axes=[0]),
            "Concat has no attribute 'axes' in opset 13 (it takes: axis)",
        ),
        (
            oh.make_node("ReduceSum", ["x"], ["y"], keepdims=2),
            "ReduceSum's attribute 'keepdims' must be 0 or 1, not 2",
        ),
        (
            oh.make_node("Clip", ["x"], ["y"], min=0.0),  # an attribute before opset 11
            "Clip has no attribute 'min' in opset 13",
        ),
        (
            oh.make_node("LeakyRelu", ["x"], ["y"], alpha=1),
            "LeakyRelu's attribute 'alpha' must be a float (FLOAT), not INT",
        ),
        (oh.make_node("LRN", ["x"], ["y"]), "LRN needs attribute 'size' (an int)"),
        (oh.make_node("Gelu", ["x"], ["y"]), "Gelu is not an op of ONNX opset 13"),
        (
            oh.make_node("Gelu", ["x"], ["y"], approximate=b"\xff"),
            "attribute 'approximate' is not UTF-8 text",
        ),
    ],
)
def test_a_missing_unknown_or_ill_typed_attribute_is_named(cli, tmp_path, node, says):
    opset = 20 if node.op_type == "Gelu" and node.attribute else 13
    path = save(x_to_y([node], opset=opset, shape=(1, 2, 3, 3)), tmp_path)
    one_error(cli, path, tmp_path, "node 'y': ", says)


def test_an_attribute_given_twice_is_an_error(cli, tmp_path):
    node = oh.make_node("Concat", ["x", "x"], ["y"], axis=0)
    node.attribute.append(oh.make_attribute("axis", 1))
    one_error(cli, save(x_to_y([node]), tmp_path), tmp_path, "'axis' is given twice")


@pytest.mark.parametrize(
    ("nodes", "inputs", "inits", "says"),
    [
        (
            [oh.make_node("Relu", ["i"], ["y"])],
            [("i", I64, [2])],
            [],
            "Relu's input 0 ('i') is int64; it must be a float tensor",
        ),
        (
            [oh.make_node("Reshape", ["x", "s"], ["y"])],
            [("x", F32, [2, 3])],
            [nh.from_array(np.array([3.0, 2.0], np.float32), "s")],
            "Reshape's input 1 ('s') is float32; it must be an integer tensor",
        ),
        (
            [oh.make_node("Add", ["x", "b"], ["y"])],
            [("x", F32, [2, 3])],
            [nh.from_array(np.ones(3, bool), "b")],
            "Add's input 1 ('b') is bool; it must be a float or integer tensor",
        ),
        (  # folded: ONNX's schema says which types Exp takes
            [oh.make_node("Exp", ["b"], ["e"]), oh.make_node("Add", ["x", "e"], ["y"])],
            [("x", F32, [2, 3])],
            [nh.from_array(np.ones(3, bool), "b")],
            "Exp's input 0 ('b') is a bool tensor, which Exp does not take",
        ),
        (
            [oh.make_node("Reshape", ["x", "s"], ["y"])],
            [("x", F32, [2, 3])],
            [nh.from_array(np.array([[3, 2]], np.int64), "s")],
            "shape must be a 1-D tensor, not of shape [1, 2]",
        ),
    ],
)
def test_an_input_of_the_wrong_dtype_or_rank_is_named(
    cli, tmp_path, nodes, inputs, inits, says
):
    path = save(model(nodes, inputs, [("y", F32, None)], inits), tmp_path)
    where = nodes[0].output[0] if "folded" in says or "Exp" in says else "y"
    one_error(cli, path, tmp_path, f"node '{where}': ", says)


def test_a_single_unsupported_node_is_one_line_naming_it(cli, tmp_path):
    nodes = [oh.make_node("Relu", ["x"], ["r"]), oh.make_node("Det", ["r"], ["y"])]
    path = save(x_to_y(nodes, shape=(3, 3)), tmp_path)
    one_error(cli, path, tmp_path, "node 'y': Det: no graphgen op for it")


# ------------------------------------------------------------- initializers


def _short_raw():
    """A float tensor of shape [3] whose raw data holds 2 floats."""
    t = oh.make_tensor("w", F32, [3], [1.0, 2.0, 3.0])
    del t.float_data[:]
    t.raw_data = b"\x00" * 8
    return t


def _negative_dims():
    t = oh.make_tensor("w", F32, [0], [])
    t.dims[0] = -1
    return t


@pytest.mark.parametrize(
    ("tensor", "says"),
    [
        (nh.from_array(np.ones(3, np.complex64), "w"), "has element type COMPLEX64"),
        (
            oh.make_tensor("w", TensorProto.STRING, [1], [b"a"]),
            "has element type STRING",
        ),
        (
            oh.make_tensor("w", TensorProto.BFLOAT16, [3], [1, 2, 3]),
            "has element type BFLOAT16",
        ),
        (
            _short_raw(),
            "initializer 'w' cannot be read",
        ),
        (_negative_dims(), "negative size"),
    ],
)
def test_an_initializer_graphgen_cannot_read_is_named(cli, tmp_path, tensor, says):
    path = save(x_to_y([oh.make_node("Add", ["x", "w"], ["y"])], [tensor]), tmp_path)
    one_error(cli, path, tmp_path, "initializer 'w'", says)


# ------------------------------------------------------------- graph structure


@pytest.mark.parametrize(
    ("nodes", "outputs", "says"),
    [
        (
            [oh.make_node("Relu", ["nope"], ["y"])],
            ["y"],
            (
                "node 'y': Relu's input 'nope' is not a graph input, an initializer or "
                "a node's output"
            ),
        ),
        (
            [oh.make_node("Relu", ["z"], ["y"]), oh.make_node("Relu", ["x"], ["z"])],
            ["y"],
            "node 'y': Relu's input 'z' is made by a later node",
        ),
        (
            [oh.make_node("Relu", ["x"], ["x"])],
            ["x"],
            "node 'x': Relu's output 'x' is already a graph input",
        ),
        (
            [oh.make_node("Relu", ["x"], ["y"]), oh.make_node("Neg", ["x"], ["y"])],
            ["y"],
            "Neg's output 'y' is already the output of node 'y'",
        ),
        (
            [oh.make_node("Relu", ["x"], ["z"])],
            ["y"],
            "graph output 'y' is not a graph input, an initializer or a node's output",
        ),
        ([oh.make_node("Relu", ["x"], ["z"])], [], "the graph lists no outputs"),
    ],
)
def test_a_tensor_read_before_made_or_made_twice_is_named(
    cli, tmp_path, nodes, outputs, says
):
    m = model(nodes, [("x", F32, [2])], [(o, F32, None) for o in outputs])
    one_error(cli, save(m, tmp_path), tmp_path, says)


def test_a_dead_malformed_node_does_not_matter(tmp_path):
    nodes = [
        oh.make_node("Relu", ["x"], ["y"]),
        oh.make_node("Concat", ["x", "x"], ["dead"]),  # no axis, but nothing reads it
    ]
    m = graphgen.compile(graphgen.load(save(x_to_y(nodes), tmp_path)))
    assert list(m.OUTPUTS) == ["y"]


# ------------------------------------------------------------- files


def _lenet_bytes():
    return (REPO / "examples" / "lenet.onnx").read_bytes()


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p.write_bytes(b""), "cannot read ONNX model: the file is empty"),
        (
            lambda p: p.write_bytes(b"\x00\xff garbage \x12"),
            "cannot read ONNX model: it is not an ONNX protobuf",
        ),
        (
            lambda p: p.write_bytes(_lenet_bytes()[:1000]),
            "cannot read ONNX model: it is not an ONNX protobuf",
        ),
        (lambda p: p.mkdir(), "cannot read ONNX model: it is a directory"),
        (lambda p: None, "cannot read ONNX model: No such file or directory"),
        (
            lambda p: p.write_bytes(b"\x08\x07"),  # ir_version 7 and nothing else
            "cannot read ONNX model: it parses, but has no graph",
        ),
        (
            lambda p: p.write_bytes(
                _lenet_bytes().replace(b"lenet", b"len\xc0t", 1)  # the graph's name
            ),
            "is not UTF-8 text",
        ),
    ],
)
def test_a_file_that_is_no_onnx_model_is_one_error_naming_it(cli, tmp_path, make, says):
    assert b"lenet" in _lenet_bytes()
    path = tmp_path / "model.onnx"
    make(path)
    one_error(cli, path, tmp_path, says)


def test_bytes_that_are_no_model_raise_a_spec_error():
    with pytest.raises(graphgen.SpecError, match="not an ONNX protobuf"):
        onnx_frontend.to_spec(b"\xff\xff\xff")


# ------------------------------------------------------------- correct modules


def _fd_vjp_check(m, arrays, rng):
    """vjp(cotangents) · direction == the central difference of Σ_k <c_k, out_k>."""
    cot = {k: rng.standard_normal(s) for k, s in m.OUTPUTS.items()}
    grads = m.vjp(cot, **arrays)

    def f(a):
        out = m.forward(**a)
        return sum(float(np.sum(cot[k] * out[k])) for k in cot)

    eps = 1e-6
    direction = {k: rng.standard_normal(np.shape(v)) for k, v in arrays.items()}
    up = f({k: arrays[k] + eps * direction[k] for k in arrays})
    down = f({k: arrays[k] - eps * direction[k] for k in arrays})
    numeric = (up - down) / (2 * eps)
    analytic = sum(float(np.sum(grads[k] * direction[k])) for k in grads)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9)


def test_a_tensor_listed_twice_as_output_is_one_output_with_one_cotangent(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [
        oh.make_node("MatMul", ["x", "W"], ["h"]),
        oh.make_node("Tanh", ["h"], ["y"]),
        oh.make_node("Sigmoid", ["h"], ["z"]),
    ]
    m = model(
        nodes,
        [("x", F64, [2, 3])],
        [("y", F64, [2, 3]), ("z", F64, [2, 3]), ("y", F64, [2, 3])],
        [nh.from_array(rng.standard_normal((3, 3)), "W")],
    )
    mod = graphgen.compile(graphgen.load(save(m, tmp_path)))
    assert list(mod.OUTPUTS) == ["y", "z"]
    arrays = {"x": rng.standard_normal((2, 3)), **mod.init_params()}
    _fd_vjp_check(mod, arrays, rng)


def test_a_graph_input_that_is_also_an_output_keeps_its_name(tmp_path):
    rng = np.random.default_rng(1)
    m = model(
        [oh.make_node("Tanh", ["x"], ["y"])],
        [("x", F64, [4])],
        [("y", F64, [4]), ("x", F64, [4])],
    )
    mod = graphgen.compile(graphgen.load(save(m, tmp_path)))
    assert list(mod.OUTPUTS) == ["y", "x"]
    x = rng.standard_normal(4)
    np.testing.assert_array_equal(mod.forward(x=x)["x"], x)
    _fd_vjp_check(mod, {"x": x}, rng)


def test_a_size_name_that_cannot_be_a_symbol_is_replaced(tmp_path):
    m = model(
        [oh.make_node("Relu", ["x"], ["y"])],
        [("x", F32, ["class", "ñ", "N"])],
        [("y", F32, None)],
    )
    mod = graphgen.compile(graphgen.load(save(m, tmp_path)))
    assert mod.INPUTS == {"x": ("batch", "x_d1", "N")}


def test_gather_with_negative_constant_indices_counts_from_the_end(tmp_path):
    idx = nh.from_array(np.array([-2, -1], np.int64), "idx")
    nodes = [oh.make_node("Gather", ["x", "idx"], ["y"], axis=1)]
    mod = graphgen.compile(
        graphgen.load(save(x_to_y(nodes, [idx], elem=F64), tmp_path))
    )
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(mod.forward(x=x)["y"], x[:, [-2, -1]])


def test_constant_indices_out_of_range_are_an_error(cli, tmp_path):
    idx = nh.from_array(np.array(3, np.int64), "idx")
    nodes = [oh.make_node("Gather", ["x", "idx"], ["y"], axis=1)]
    path = save(x_to_y(nodes, [idx]), tmp_path)
    one_error(cli, path, tmp_path, "node 'y': indices 3 are out of range")


def test_a_scalar_passed_through_dropout_stays_a_number(tmp_path):
    c = nh.from_array(np.array(2.5, np.float64))
    nodes = [
        oh.make_node("Constant", [], ["c"], value=c),
        oh.make_node("Dropout", ["c", "r"], ["d"]),  # not folded: r is an input
        oh.make_node("Mul", ["x", "d"], ["y"]),
    ]
    outputs = [("y", F64, None), ("d", F64, None)]
    m = model(nodes, [("x", F64, [3]), ("r", F64, [])], outputs)
    mod = graphgen.compile(graphgen.load(save(m, tmp_path)))
    out = mod.forward(x=np.arange(3.0), r=np.array(0.0))
    np.testing.assert_array_equal(out["y"], 2.5 * np.arange(3.0))
    assert out["d"] == 2.5


def test_split_with_a_huge_num_outputs_is_an_error_not_a_hang(cli, tmp_path):
    node = oh.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=10**12)
    m = model(
        [node], [("x", F32, [2, 4])], [("a", F32, None), ("b", F32, None)], opset=18
    )
    one_error(cli, save(m, tmp_path), tmp_path, "num_outputs is 1000000000000")


def test_split_before_opset_18_splits_evenly_or_fails(cli, tmp_path):
    node = oh.make_node("Split", ["x"], ["a", "b", "c"], axis=1)
    outputs = [(o, F32, None) for o in "abc"]
    m = model([node], [("x", F32, [2, 4])], outputs, opset=13)
    one_error(cli, save(m, tmp_path), tmp_path, "node 'a': ", "does not split evenly")


def test_a_model_importing_the_default_domain_twice_is_an_error(cli, tmp_path):
    """Two ``ai.onnx`` opsets (Softmax is another op at 11 and 13): graphgen took the
    first, onnx.checker refuses the model; now it is an error naming both."""
    m = x_to_y([oh.make_node("Softmax", ["x"], ["y"])])
    m.opset_import.append(oh.make_opsetid("ai.onnx", 11))
    one_error(
        cli,
        save(m, tmp_path),
        tmp_path,
        "opset_import names the default domain (ai.onnx) 2 times (opsets 13, 11)",
    )


# ------------------------------------------------------------- the declarations


def _schemas(op):
    """(opset, ONNX schema) for each opset graphgen reads in which ``op`` exists."""
    newest = onnx.defs.onnx_opset_version()
    for v in range(7, newest + 1):
        try:
            yield v, onnx.defs.get_schema(op, v, "")
        except onnx.defs.SchemaError:
            continue


@pytest.mark.parametrize("op", sorted(HANDLERS))
def test_each_handler_declares_what_onnx_defines(op):
    """A valid model never trips the signature check: for every opset, the declared
    input and output counts, attributes, their types and the required ones are ONNX's."""
    sig = SIGNATURES[op]
    names = onnx.AttributeProto.AttributeType.Name
    declared_somewhere = set()
    for v, schema in _schemas(op):
        unbounded = 2**31 - 1
        for what, (lo, hi), (slo, shi) in (
            ("inputs", sig.inputs_for(v), (schema.min_input, schema.max_input)),
            ("outputs", sig.outputs_for(v), (schema.min_output, schema.max_output)),
        ):
            assert (lo, hi) == (slo, None if shi == unbounded else shi), (op, v, what)
        for name, attr in schema.attributes.items():
            assert sig.attribute_type(name) is not None, (op, v, name)
            assert sig.attribute_type(name)[0] == names(attr.type), (op, v, name)
            declared_somewhere.add(name)
        required = {n for n, a in schema.attributes.items() if a.required}
        assert set(sig.required_for(v)) == required, (op, v)
    assert declared_somewhere == set(sig.attrs), op
