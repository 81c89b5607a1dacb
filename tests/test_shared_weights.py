"""Initializers that hold one value (issue 15): equal, equal transposed, or a leading
block of another's rows. ``graphgen import``, ``compile --report`` and
``graphgen.api.report`` name the groups, so a trained module's weights map back to the
one PyTorch parameter an exporter stored more than once."""

from __future__ import annotations

import numpy as np
import pytest

import graphgen
from graphgen import api
from graphgen.frontends import shared


def weights():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((4, 3)).astype(np.float32)
    E = rng.standard_normal((6, 4)).astype(np.float32)
    v = rng.standard_normal(3).astype(np.float32)
    return {
        "W": W,
        "b1": np.zeros(3, np.float32),  # fresh biases: equal, yet two parameters
        "b2": np.zeros(3, np.float32),
        "ln1": np.ones(3, np.float32),
        "ln2": np.ones(3, np.float32),
        "E": E,
        "Wt": np.ascontiguousarray(W.T),  # a TorchScript MatMul_N
        "pos": E[None, :2].copy(),  # a folded lookup of the first rows, unsqueezed
        "W64": W.astype(np.float64),  # another dtype: another value
        "ids": np.arange(12).reshape(4, 3),  # not float
        "v": v,
        "v_copy": v.copy(),
        "v_head": v[:2].copy(),  # a vector is one row: no leading block of it
        "Et_rows": np.ascontiguousarray(E.T[:3]),  # rows of E's transpose
        "row": E[None, :1].copy(),  # a lookup of one row: a vector once squeezed
    }


def test_groups_name_equal_transposed_and_leading_rows():
    assert shared.groups(weights()) == [
        [("W", ""), ("Wt", "transposed")],
        [
            ("E", ""),
            ("Et_rows", "first 3 rows of the transpose"),
            ("pos", "first 2 rows"),
            ("row", "first row"),
        ],
        [("v", ""), ("v_copy", "same")],
    ]


def test_groups_leave_out_arrays_of_one_value_throughout():
    w = weights()
    found = {name for group in shared.groups(w) for name, _ in group}
    assert not found & {"b1", "b2", "ln1", "ln2", "ids", "W64", "v_head"}


def test_groups_are_deterministic_whatever_the_dict_order():
    w = weights()
    rev = dict(reversed(list(w.items())))
    want = {frozenset(n for n, _ in group) for group in shared.groups(w)}
    assert {frozenset(n for n, _ in group) for group in shared.groups(rev)} == want
    assert shared.groups(w) == shared.groups(dict(w))


def test_whole_arrays_are_compared_only_within_candidates(monkeypatch):
    # 400 distinct weights start differently: no array is compared with another, so
    # a ResNet's hundreds of weights cost one pass over them
    rng = np.random.default_rng(1)
    arrays = {f"w{i}": rng.standard_normal((8, 5, 3, 3)) for i in range(200)}
    arrays |= {f"b{i}": rng.standard_normal(8) for i in range(200)}
    calls = []
    holds = shared._holds
    monkeypatch.setattr(shared, "_holds", lambda a, b: calls.append(1) or holds(a, b))
    assert shared.groups(arrays) == []
    assert calls == []
    arrays["copy"] = arrays["w7"].copy()
    assert shared.groups(arrays) == [[("w7", ""), ("copy", "same")]]


onnx = pytest.importorskip("onnx")
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh


def tied_model(tmp_path):
    """x (2, 4) @ W, plus W's first two rows, then @ Wt (W transposed): the copies a
    tied, transposed and folded-lookup weight leave in an export."""
    w = weights()
    nodes = [
        oh.make_node("MatMul", ["x", "W"], ["h"]),
        oh.make_node("Add", ["h", "b1"], ["h1"]),
        oh.make_node("Add", ["h1", "rows"], ["h2"]),
        oh.make_node("Add", ["h2", "b2"], ["h3"]),
        oh.make_node("MatMul", ["h3", "Wt"], ["y"]),
    ]
    inits = {"W": w["W"], "b1": w["b1"], "rows": w["W"][:2], "b2": w["b2"]}
    inits["Wt"] = w["Wt"]
    graph = oh.make_graph(
        nodes,
        "tied",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        initializer=[
            nh.from_array(np.ascontiguousarray(v), k) for k, v in inits.items()
        ],
    )
    path = tmp_path / "tied.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


LINE = "  W, Wt (transposed), rows (first 2 rows)"


def test_import_and_report_name_the_copies(tmp_path, cli):
    path = tied_model(tmp_path)
    status, _, err = cli("import", path, "-o", tmp_path / "tied.yaml")
    assert status == 0, err
    assert "initializers holding one value (1 group(s)" in err
    assert LINE in err.splitlines()
    G = graphgen.load(path, loss="mse", labels="t")
    assert api.shared_params(G) == [
        [("W", ""), ("Wt", "transposed"), ("rows", "first 2 rows")]
    ]
    assert LINE in api.report(G).splitlines()
    status, _, err = cli("compile", path, "-o", tmp_path / "tied.py", "--report")
    assert status == 0, err
    assert LINE in err.splitlines()
    # the imported spec keeps its weights beside it: its report names them too
    assert LINE in api.report(graphgen.load(tmp_path / "tied.yaml")).splitlines()


def test_report_of_a_model_without_copies_says_nothing_of_them():
    assert "holding one value" not in api.report(graphgen.load("examples/mlp.yaml"))
