"""The learner page without a browser: determinism, hostile names, blocks, errors.

The browser tests (tests/test_page_browser.py) check what the page shows.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
from conftest import EXAMPLES
from page_specs import residual_spec
from test_diagram import hostile_graph

import graphgen
from graphgen.frontends.spec import from_dict
from graphgen.views import page

pytestmark = pytest.mark.skipif(
    shutil.which("dot") is None, reason="Graphviz 'dot' is not installed"
)


def page_json(text):
    m = re.search(
        r'<script type="application/json" id="data">(.*?)</script>', text, re.DOTALL
    )
    return json.loads(m.group(1))


def test_the_page_is_deterministic_and_self_contained():
    G = graphgen.load(EXAMPLES / "tiny.yaml")
    a, b = page.to_html(G), page.to_html(G)
    assert a == b
    # one data block and one script, both inline; a policy that forbids fetching
    assert len(re.findall(r"<script\b", a)) == 2
    assert "default-src 'none'" in a
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=", a)
    data = page_json(a)
    first = data["steps"][0]["node"]
    assert data["nodes"][first]["name"] == "J"
    assert data["check"]["ok"] is True and data["check"]["text"].startswith("Checked")


def test_hostile_names_stay_text():
    text = page.to_html(hostile_graph())
    assert len(re.findall(r"<script\b", text)) == 2
    names = {n["name"] for n in page_json(text)["nodes"].values()}
    assert {"<b>", 'a"b', "x\\nimport os", "</text><script>alert(1)</script>"} <= names


def test_blocks_of_a_residual_spec_end_at_the_residual_adds():
    G = graphgen.prepare(from_dict(residual_spec(), source="residual50.yaml"))
    block_of = page.blocks(G)
    names = list(dict.fromkeys(block_of.values()))
    assert 10 <= len(names) <= page.BLOCKS
    # a block is a run of whole layers: it ends where one value is live, at r<i>
    for name in names:
        last = name.split(" … ")[-1]
        assert last == "J" or re.fullmatch(r"r\d+", last), name
    # a layer's weight sits in the block of the matmul that reads it
    assert block_of["W7"] == block_of["m7"]
    assert "x" not in block_of


def test_blocks_follow_name_prefixes_when_they_split_the_graph():
    spec = residual_spec(20, prefix=True)
    G = graphgen.prepare(from_dict(spec, source="big.yaml"))
    block_of = page.blocks(G)
    assert block_of["layer3/m"] == "layer3" and block_of["layer3/W"] == "layer3"
    assert len(set(block_of.values())) == 20


def test_small_graphs_are_not_collapsed():
    assert page.blocks(graphgen.prepare(graphgen.load(EXAMPLES / "fanout.yaml"))) == {}


def test_a_spec_without_a_loss_is_one_error_line(tmp_path, cli):
    spec = tmp_path / "noloss.yaml"
    spec.write_text(
        "name: noloss\ninputs: {x: [2]}\nnodes: {y: {op: tanh, args: [x]}}\n"
        "outputs: [y]\n"
    )
    status, _, err = cli("render", str(spec), "-o", str(tmp_path / "p.html"))
    assert status == 2
    assert err.startswith("graphgen: error: ") and len(err.strip().splitlines()) == 1
    assert "needs a loss" in err and "noloss.yaml" in err


def test_a_graph_with_no_single_live_value_is_cut_into_runs():
    # 30 parallel chains of 3 ops, all summed at the end: more than one value is live
    # everywhere between the input and the sum
    nodes, ends = {}, []
    for i in range(30):
        nodes[f"p{i}"] = {"op": "tanh", "args": ["x"]}
        nodes[f"q{i}"] = {"op": "mul", "args": [f"p{i}", 2.0]}
        nodes[f"s{i}"] = {"op": "sum", "args": [f"q{i}"]}
        ends.append(f"s{i}")
    nodes["J"] = {"op": "add_n", "args": ends}
    spec = {"name": "wide", "inputs": {"x": [3]}, "nodes": nodes, "loss": "J"}
    G = graphgen.prepare(from_dict(spec, source="wide.yaml"))
    block_of = page.blocks(G)
    sizes = {}
    for n, b in block_of.items():
        if G.nodes[n]["kind"] == "op":
            sizes[b] = sizes.get(b, 0) + 1
    assert len(sizes) >= 3
    assert max(sizes.values()) <= 3 * max(4, -(-91 // page.BLOCKS))


def test_numbers_that_disagree_with_the_module_are_flagged(monkeypatch):
    evaluate = page.evaluate

    def off(A, arrays):  # the interpreter a little off on W1's gradient
        values = evaluate(A, arrays)
        n = A.graph["grads"]["W1"]
        values[n] = values[n] + 1e-3
        return values

    monkeypatch.setattr(page, "evaluate", off)
    with pytest.warns(graphgen.GraphgenWarning, match="W1"):
        text = page.to_html(graphgen.load(EXAMPLES / "tiny.yaml"))
    check = page_json(text)["check"]
    assert check["ok"] is False and check["text"].startswith("MISMATCH")


def test_structural_blocks_are_named_after_their_parameters():
    # names as ONNX's ResNet-50 has them: ops r0, r1, ...; params gpu_0/res2_0_...
    nodes, params, h = {}, {}, "x"
    for i in range(20):
        w, b = f"gpu_0/res{i}_branch2a_w_0", f"gpu_0/res{i}_branch2a_b_0"
        params[w] = [3, 3]
        params[b] = [3]
        nodes[f"r{4 * i}"] = {"op": "matmul", "args": [h, w]}
        nodes[f"r{4 * i + 1}"] = {"op": "add", "args": [f"r{4 * i}", b]}
        nodes[f"r{4 * i + 2}"] = {"op": "tanh", "args": [f"r{4 * i + 1}"]}
        nodes[f"r{4 * i + 3}"] = {"op": "add", "args": [f"r{4 * i + 2}", h]}
        h = f"r{4 * i + 3}"
    nodes["J"] = {"op": "sum", "args": [h]}
    spec = {"name": "r", "inputs": {"x": [2, 3]}, "params": params, "nodes": nodes}
    G = graphgen.prepare(from_dict({**spec, "loss": "J"}, source="r.yaml"))
    names = set(page.blocks(G).values())
    assert "res7_branch2a: r28 … r31" in names
