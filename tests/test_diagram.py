"""Diagrams: golden DOT text, real SVG rendering, hostile names, values, large graphs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

import graphgen
from graphgen.frontends.spec import from_dict
from graphgen.views import diagram

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "dot"
EXAMPLES = ["tiny", "fanout", "mlp"]
HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="Graphviz 'dot' is not installed")

HOSTILE = ["<b>", 'a"b', "x\nimport os", "{}"]


def load(name):
    return graphgen.load(ROOT / "examples" / f"{name}.yaml")


def hostile_graph():
    x, w, h, y = HOSTILE
    return from_dict(
        {
            "name": "hostile",
            "inputs": {x: ["batch", 2], "t": ["batch", 2]},
            "params": {w: [2, 2]},
            "nodes": {
                h: {"op": "matmul", "args": [x, w]},
                y: {"op": "tanh", "args": [h]},
                "</text><script>alert(1)</script>": {"op": "sub", "args": [y, "t"]},
                "J": {"op": "mean", "args": ["</text><script>alert(1)</script>"]},
            },
            "loss": "J",
        }
    )


@pytest.mark.parametrize("example", EXAMPLES)
@pytest.mark.parametrize("view", diagram.VIEWS)
def test_golden_dot(example, view):
    text = graphgen.to_dot(load(example), view=view)
    path = GOLDEN / f"{example}_{view}.dot"
    if os.environ.get("GRAPHGEN_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing golden {path}; run with GRAPHGEN_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8")


def test_dot_is_deterministic():
    G = load("fanout")
    assert graphgen.to_dot(G) == graphgen.to_dot(load("fanout"))
    assert graphgen.to_dot(G, view="adjoint") == graphgen.to_dot(G, view="adjoint")


def test_render_returns_digraph():
    import graphviz

    d = graphgen.render(load("tiny"))
    assert isinstance(d, graphviz.Digraph)
    assert d.source == graphgen.to_dot(load("tiny"))


def svg_text(svg_bytes):
    root = ET.fromstring(svg_bytes)
    return root, "\n".join(t for el in root.iter() for t in (el.text, el.tail) if t)


@needs_dot
@pytest.mark.parametrize("example", EXAMPLES)
@pytest.mark.parametrize("view", diagram.VIEWS)
def test_svg_well_formed_with_every_name(example, view):
    G = load(example)
    svg = diagram.run_dot(graphgen.to_dot(G, view=view), "svg")
    _root, text = svg_text(svg)
    for n in G:
        if G.nodes[n]["kind"] != "const":
            assert n in text, n
    if view == "adjoint":
        assert "W1_bar" in text


def test_forward_view_contents():
    text = graphgen.to_dot(load("tiny"), view="forward")
    for piece in [
        "z1",
        "matmul",
        "(batch, 3)",
        "param (2, 3)",
        "a: (batch, 2)",
        "b: (2, 3)",
        "pred: (batch, 1)",
        "target: (batch, 1)",
    ]:
        assert piece in text, piece
    assert "peripheries" in text  # outputs
    assert "#fee2e2" in text  # the loss


def test_flow_view_gradient_edges_and_sums():
    text = graphgen.to_dot(load("fanout"), view="flow")
    assert "∂h/∂u = 1 − tanh²(u) = 1 − h²" in text
    assert "∂J/∂h = ∂J/∂z @ W2ᵀ" in text
    assert "Σ  ∂J/∂h = ∂J/∂z·∂z/∂h + ∂J/∂s·∂s/∂h + ∂J/∂hh·∂hh/∂h" in text
    assert 'dir="back"' in text
    tiny = graphgen.to_dot(load("tiny"), view="flow")
    assert "∂h1/∂a1 = σ(a1)·(1 − σ(a1)) = h1·(1 − h1)" in tiny
    # x and t get no gradient: greyed out
    assert tiny.count(diagram.GREY["fillcolor"]) == 2


def test_adjoint_view_names_like_code():
    text = graphgen.to_dot(load("fanout"), view="adjoint")
    src = graphgen.generate(load("fanout"))
    for name in [
        "h_bar",
        "h_bar_via_z",
        "h_bar_via_s",
        "h_bar_via_hh",
        "u_bar",
        "W1_bar",
    ]:
        assert name in text and name in src
    assert "Σ over the successors of h: z, s, hh" in text
    assert "via z" in text and "via hh" in text
    assert "h_bar_via_z = y_bar @ W2ᵀ" in text


@needs_dot
def test_hostile_names_do_not_break_or_inject():
    G = hostile_graph()
    for view in diagram.VIEWS:
        text = graphgen.to_dot(G, view=view)
        assert "&lt;b&gt;" in text and "<script>" not in text
        svg = diagram.run_dot(text, "svg")
        root, body = svg_text(svg)
        tags = {el.tag.split("}")[-1] for el in root.iter()}
        assert not tags & {"b", "script"}
        for n in ["<b>", 'a"b', "x\\nimport os", "{}", "<script>alert(1)</script>"]:
            assert n in body, (view, n)


def test_hostile_names_without_dot():
    text = graphgen.to_dot(hostile_graph(), view="flow")
    assert "&lt;b&gt;" in text and "a&quot;b" in text and "x\\nimport os" in text


def test_values_annotations_and_legend(tmp_path):
    G = load("fanout")
    text = graphgen.to_dot(G, view="flow", values=True)
    assert "‖∂J/∂h‖ = " in text and "‖term‖ = " in text
    assert "(exploding)" in text and "(vanished)" in text
    from graphgen.check import random_arrays

    arrays = random_arrays(G, seed=3)
    np.savez(tmp_path / "a.npz", **arrays)
    a = graphgen.to_dot(G, view="flow", values=str(tmp_path / "a.npz"))
    b = graphgen.to_dot(G, view="flow", values=arrays)
    assert a == b and a != text


def test_interpreter_matches_module():
    from graphgen.api import lower
    from graphgen.check import random_arrays
    from graphgen.views.values import evaluate

    for ex in EXAMPLES:
        G = load(ex)
        arrays = random_arrays(G, seed=1)
        A = lower(G)
        vals = evaluate(A, arrays)
        loss, grads = graphgen.compile(G).value_and_grad(**arrays)
        assert abs(float(vals[A.graph["loss"]]) - loss) <= 1e-10
        for w, v in A.graph["grads"].items():
            np.testing.assert_allclose(
                np.broadcast_to(vals[v], grads[w].shape), grads[w], rtol=0, atol=1e-10
            )


def big_graph(layers=10, width=4):
    data = {"name": "big", "inputs": {"x": ["batch", width]}, "params": {}, "nodes": {}}
    prev = "x"
    for i in range(layers):
        data["params"][f"layer{i}/W"] = [width, width]
        data["nodes"][f"layer{i}/z"] = {"op": "matmul", "args": [prev, f"layer{i}/W"]}
        data["nodes"][f"layer{i}/h"] = {"op": "tanh", "args": [f"layer{i}/z"]}
        prev = f"layer{i}/h"
    data["nodes"]["J"] = {"op": "mean", "args": [prev]}
    data["loss"] = "J"
    return from_dict(data)


def test_collapse_groups_and_clusters():
    G = big_graph()
    text = graphgen.to_dot(G, collapse=True)
    assert "layer3/" in text and "3 nodes" in text
    assert text.count("box3d") == 10
    clusters = graphgen.to_dot(G, collapse="clusters")
    assert clusters.count("subgraph cluster_") == 10
    grouped = from_dict(
        {
            "inputs": {"x": [2]},
            "nodes": {
                "a": {"op": "tanh", "args": ["x"], "group": "enc"},
                "b": {"op": "tanh", "args": ["a"], "group": "enc"},
                "J": {"op": "sum", "args": ["b"]},
            },
            "loss": "J",
            "wrt": ["x"],
        }
    )
    assert "<B>enc</B>" in graphgen.to_dot(grouped, collapse=True)


def test_focus():
    G = big_graph()
    text = graphgen.to_dot(G, view="forward", focus="layer5/z", depth=1)
    assert "layer5/W" in text and "layer4/h" in text and "layer5/h" in text
    assert "layer7/z" not in text
    adj = graphgen.to_dot(load("tiny"), view="adjoint", focus="h1_bar", depth=1)
    assert "h1_bar" in adj and "W1_bar" not in adj
    with pytest.raises(diagram.DiagramError, match="did you mean 'layer5/z'"):
        graphgen.to_dot(G, focus="layer5/zz")


def test_write_dot_and_formats(tmp_path, monkeypatch):
    G = load("tiny")
    diagram.write(G, tmp_path / "t.dot", view="forward")
    assert (tmp_path / "t.dot").read_text().startswith("digraph tiny_forward {")
    with pytest.raises(diagram.DiagramError, match="cannot tell the format"):
        diagram.write(G, tmp_path / "t.gif")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(diagram.DiagramError, match="install Graphviz"):
        diagram.write(G, tmp_path / "t.svg")
    diagram.write(G, tmp_path / "t2.dot")  # still fine without dot


def test_unknown_view():
    with pytest.raises(diagram.DiagramError, match="unknown view"):
        graphgen.to_dot(load("tiny"), view="sideways")


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "graphgen", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


@needs_dot
def test_cli_render(tmp_path):
    for view in diagram.VIEWS:
        out = tmp_path / f"t_{view}.svg"
        r = run_cli("render", "examples/fanout.yaml", "-o", str(out), "--view", view)
        assert r.returncode == 0, r.stderr
        ET.fromstring(out.read_bytes())
    r = run_cli(
        "render", "examples/tiny.yaml", "-o", str(tmp_path / "v.png"), "--values"
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "v.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_render_without_dot(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}
    r = run_cli("render", "examples/tiny.yaml", "-o", str(tmp_path / "t.svg"), env=env)
    assert r.returncode == 2
    assert r.stderr.startswith("graphgen: error: ") and "install Graphviz" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("render", "examples/tiny.yaml", "-o", str(tmp_path / "t.dot"), env=env)
    assert r.returncode == 0, r.stderr


def test_cli_render_bad_focus(tmp_path):
    r = run_cli(
        "render", "examples/tiny.yaml", "-o", str(tmp_path / "t.dot"), "--focus", "nope"
    )
    assert r.returncode == 2 and "no node named 'nope'" in r.stderr


def test_digraph_is_dag_sanity():
    assert nx.is_directed_acyclic_graph(load("mlp"))
