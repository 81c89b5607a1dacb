"""Every user error gets one clear line: ``graphgen: error: FILE:LINE: node 'a1': ...``.

The CLI turns each :class:`graphgen.GraphgenError` into exactly one stderr line and exit
status 2 (no traceback); warnings are ``graphgen: warning: ...`` lines with status 0. The
generated modules check their arguments and name the array and the shape they expected.
"""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest
from conftest import EXAMPLES, build_graph, run_graphgen

import graphgen
from graphgen import GraphError


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def line_of(path, needle):
    """The 1-based line of the first line of ``path`` containing ``needle``."""
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in {path}")


def one_error_line(cli, path):
    """Compile ``path`` through the CLI; return its single error line."""
    status, out, err = cli("compile", path)
    assert status == 2, (status, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def node_error(cli, path, node="a1"):
    """The message after ``graphgen: error: FILE:LINE: node 'a1': `` (asserting that prefix)."""
    line = one_error_line(cli, path)
    prefix = f"graphgen: error: {path}:{line_of(path, f'  {node}:')}: node {node!r}: "
    assert line.startswith(prefix), f"{line!r} does not start with {prefix!r}"
    return line[len(prefix) :]


# ------------------------------------------------------------------------ spec errors


def test_unknown_op_suggests_the_closest_name(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        nodes:
          a1: {op: sigmod, args: [x]}
          J: {op: sum, args: [a1]}
        loss: J
    """,
    )
    msg = node_error(cli, path)
    assert "unknown op 'sigmod'" in msg
    assert "did you mean 'sigmoid'?" in msg


def test_missing_argument_names_the_op_and_its_arity(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        nodes:
          a1: {op: add, args: [x]}
          J: {op: sum, args: [a1]}
        loss: J
    """,
    )
    msg = node_error(cli, path)
    assert "'add'" in msg and "2 argument" in msg and "got 1" in msg


def test_extra_argument_names_the_op_and_its_arity(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        nodes:
          a1: {op: add, args: [x, x, x]}
          J: {op: sum, args: [a1]}
        loss: J
    """,
    )
    msg = node_error(cli, path)
    assert "'add'" in msg and "2 argument" in msg and "got 3" in msg


def test_argument_naming_a_missing_node(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        params:
          W: [3, 2]
        nodes:
          a1: {op: matmul, args: [x, Wt]}
          J: {op: sum, args: [a1]}
        loss: J
    """,
    )
    msg = node_error(cli, path)
    assert "argument 1" in msg and "'Wt'" in msg
    assert "did you mean 'W'?" in msg


def test_cycle_prints_the_cycle_path(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        nodes:
          a1: {op: add, args: [x, a2]}
          a2: {op: tanh, args: [a1]}
          J: {op: sum, args: [a2]}
        loss: J
    """,
    )
    msg = node_error(cli, path)
    assert "cycle" in msg
    assert "'a1' -> 'a2' -> 'a1'" in msg


def test_name_defined_as_input_and_node(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
          a1: [batch, 3]
        nodes:
          a1: {op: tanh, args: [x]}
          J: {op: sum, args: [a1]}
        loss: J
    """,
    )
    line = one_error_line(cli, path)
    prefix = f"graphgen: error: {path}:{line_of(path, '  a1: {op')}: node 'a1': "
    assert line.startswith(prefix), line
    assert "defined twice" in line and "input" in line


def test_duplicate_yaml_key_names_both_lines(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        nodes:
          a1: {op: tanh, args: [x]}
          a1: {op: sin, args: [x]}
          J: {op: sum, args: [a1]}
        loss: J
    """,
    )
    line = one_error_line(cli, path)
    assert line.startswith(f"graphgen: error: {path}:5: node 'a1': "), line
    assert "defined twice in nodes (first on line 4)" in line
    assert "line 4" in line


def test_shape_mismatch_names_node_op_and_both_shapes(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        params:
          b: [4]
        nodes:
          a1: {op: add, args: [x, b]}
          J: {op: sum, args: [a1]}
        loss: J
    """,
    )
    msg = node_error(cli, path)
    assert msg.startswith("add: ")
    assert "(batch, 3)" in msg and "(4,)" in msg
    assert "'x'" in msg and "'b'" in msg


def test_matmul_inner_dimension_mismatch(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        params:
          W: [4, 2]
        nodes:
          a1: {op: matmul, args: [x, W]}
          J: {op: sum, args: [a1]}
        loss: J
    """,
    )
    msg = node_error(cli, path)
    assert msg.startswith("matmul: ")
    assert "(batch, 3)" in msg and "(4, 2)" in msg


def test_loss_must_be_a_scalar(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        nodes:
          a1: {op: tanh, args: [x]}
        loss: a1
    """,
    )
    msg = node_error(cli, path)
    assert "scalar" in msg and "(batch, 3)" in msg
    assert "sum or mean" in msg


def test_wrt_naming_an_op_node(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        nodes:
          a1: {op: tanh, args: [x]}
          J: {op: sum, args: [a1]}
        loss: J
        wrt: [a1]
    """,
    )
    line = one_error_line(cli, path)
    assert line.startswith(f"graphgen: error: {path}"), line
    assert "wrt: 'a1' is not an input or param" in line


def test_wrt_naming_nothing_suggests_a_name(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        nodes:
          a1: {op: tanh, args: [x]}
          J: {op: sum, args: [a1]}
        loss: J
        wrt: [xx]
    """,
    )
    line = one_error_line(cli, path)
    assert line.startswith(f"graphgen: error: {path}:{line_of(path, 'wrt:')}: "), line
    assert "'xx' is not an input or param" in line and "did you mean 'x'?" in line


def test_param_the_loss_ignores_is_a_warning_not_an_error(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        params:
          W: [3, 3]
          P: [3]
        nodes:
          a1: {op: matmul, args: [x, W]}
          J: {op: sum, args: [a1]}
        loss: J
    """,
    )
    status, out, err = cli("compile", path)
    assert status == 0
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"graphgen: warning: {path}: "), lines[0]
    assert "param 'P'" in lines[0] and "does not depend on it" in lines[0]
    assert "def value_and_grad" in out


def test_malformed_yaml_reports_the_line(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        nodes:
          a1: {op: tanh, args: [x}
          J: {op: sum, args: [a1]}
        loss: J
    """,
    )
    line = one_error_line(cli, path)
    assert line.startswith(f"graphgen: error: {path}:4: malformed YAML: "), line


def test_malformed_yaml_indentation_reports_the_line(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        nodes:
          a1: {op: tanh, args: [x]}
           J: {op: sum, args: [a1]}
        loss: J
    """,
    )
    line = one_error_line(cli, path)
    assert line.startswith(f"graphgen: error: {path}:5: malformed YAML: "), line


def test_malformed_json_reports_the_line(cli, tmp_path):
    path = write(
        tmp_path,
        "net.json",
        """
        {
          "inputs": {"x": ["batch", 3]},
          "nodes": {
            "a1": {"op": "tanh", "args": ["x"]},
            "J": {"op": "sum", "args": ["a1"]},
          },
          "loss": "J"
        }
    """,
    )
    line = one_error_line(cli, path)
    assert line.startswith(f"graphgen: error: {path}:6: malformed JSON: "), line


def test_unknown_attribute_lists_the_known_ones(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        nodes:
          a1: {op: sum, args: [x], axes: 1}
          J: {op: sum, args: [a1]}
        loss: J
    """,
    )
    msg = node_error(cli, path)
    assert "unknown attribute 'axes'" in msg
    assert "axis" in msg and "keepdims" in msg


def test_missing_required_attribute(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        nodes:
          a1: {op: reshape, args: [x]}
          J: {op: sum, args: [a1]}
        loss: J
    """,
    )
    msg = node_error(cli, path)
    assert "reshape" in msg and "'shape'" in msg


def test_float_labels_where_int64_is_expected(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
          labels: [batch]
        nodes:
          a1: {op: softmax_cross_entropy, args: [x, labels]}
        loss: a1
    """,
    )
    msg = node_error(cli, path)
    assert "labels" in msg and "int64" in msg and "float64" in msg


def test_schema_violation_in_a_param(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        params:
          W: {shape: [3, 3], init: bogus}
        nodes:
          a1: {op: matmul, args: [x, W]}
          J: {op: sum, args: [a1]}
        loss: J
    """,
    )
    line = one_error_line(cli, path)
    assert line.startswith(
        f"graphgen: error: {path}:{line_of(path, '  W:')}: param 'W': "
    ), line
    assert "'bogus'" in line and "glorot_uniform" in line


def test_schema_violation_in_a_node(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        nodes:
          a1: {args: [x]}
          J: {op: sum, args: [a1]}
        loss: J
    """,
    )
    msg = node_error(cli, path)
    assert "'op'" in msg and "required" in msg


def test_schema_violation_unknown_top_level_key(cli, tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        nodes:
          a1: {op: tanh, args: [x]}
          J: {op: sum, args: [a1]}
        loss: J
        optimizer: sgd
    """,
    )
    line = one_error_line(cli, path)
    assert line.startswith(f"graphgen: error: {path}"), line
    assert "'optimizer'" in line and "known keys" in line


def test_error_through_a_real_subprocess(tmp_path):
    path = write(
        tmp_path,
        "net.yaml",
        """
        inputs:
          x: [batch, 3]
        nodes:
          a1: {op: sigmod, args: [x]}
          J: {op: sum, args: [a1]}
        loss: J
    """,
    )
    proc = run_graphgen("compile", path.name, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == b""
    err = proc.stderr.decode()
    expected = (
        "graphgen: error: net.yaml:4: node 'a1': unknown op 'sigmod' (did you mean "
        "'sigmoid'?); `graphgen ops` lists them"
    )
    assert err.splitlines() == [expected]


# ----------------------------------------------------------------- graphs in Python


def test_graph_without_pos_edge_attribute_is_a_clear_graph_error():
    G = build_graph(
        {"x": ("input", (2, 3))},
        [("a1", "tanh", ["x"], {}), ("J", "sum", ["a1"], {})],
        loss="J",
    )
    del G.edges["x", "a1"]["pos"]
    with pytest.raises(GraphError) as info:
        graphgen.prepare(G)
    assert info.value.node == "a1"
    assert "'pos'" in str(info.value) and "'x'" in str(info.value)
    assert str(info.value).startswith("<graph>: node 'a1': ")


# ---------------------------------------------------- generated modules check arguments


@pytest.fixture(scope="module")
def tiny():
    return graphgen.compile(graphgen.load(EXAMPLES / "tiny.yaml"))


def good_arrays(module):
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((4, 2)),
        "t": rng.uniform(size=(4, 1)),
        **module.init_params(0),
    }


def bad_arrays(module, how):
    a = good_arrays(module)
    if how == "missing":
        del a["x"]
    elif how == "extra":
        a["z"] = np.zeros(3)
    elif how == "wrong shape":
        a["x"] = np.zeros((4, 3))
    elif how == "wrong rank":
        a["x"] = np.zeros(4)
    elif how == "inconsistent symbolic dims":
        a["t"] = np.zeros((5, 1))
    elif how == "wrong dtype":
        a["x"] = a["x"].astype(np.float32)
    elif how == "list":
        a["x"] = a["x"].tolist()
    return a


# (how, the array named, what the message must contain)
ARGUMENT_ERRORS = [
    ("missing", "x", ["('batch', 2)"]),
    ("extra", "z", []),
    ("wrong shape", "x", ["('batch', 2)", "(4, 3)"]),
    ("wrong rank", "x", ["('batch', 2)", "(4,)"]),
    ("inconsistent symbolic dims", "t", ["('batch', 1)", "'batch': 4", "(5, 1)"]),
    ("wrong dtype", "x", ["('batch', 2)", "float64", "float32"]),
    ("list", "x", ["('batch', 2)", "list"]),
]


@pytest.mark.parametrize("function", ["forward", "value_and_grad"])
@pytest.mark.parametrize(
    ("how", "name", "needles"), ARGUMENT_ERRORS, ids=[c[0] for c in ARGUMENT_ERRORS]
)
def test_generated_module_rejects_bad_arguments(tiny, function, how, name, needles):
    getattr(tiny, function)(**good_arrays(tiny))  # the good arrays pass
    with pytest.raises(ValueError) as info:
        getattr(tiny, function)(**bad_arrays(tiny, how))
    msg = str(info.value)
    assert re.search(rf"'{name}'", msg), f"{msg!r} does not name {name!r}"
    for needle in needles:
        assert needle in msg, f"{msg!r} lacks {needle!r}"
