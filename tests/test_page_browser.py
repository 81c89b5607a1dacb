"""The learner page (``graphgen render SPEC -o model.html``) in a real browser.

Headless Debian Chromium, driven through the DevTools protocol (tests/browser.py):
every number the backward steps of tiny show is checked against generated modules to
1e-10 (adjoints by cutting the node loose as an input, each successor's term by feeding
that one edge from an input of its own); the pages make no network request; a collapsed
block opens on a click. ``GRAPHGEN_UPDATE_SCREENSHOT=1`` also writes the README's
screenshot, docs/img/page-fanout.png.
"""

from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest
from conftest import EXAMPLES, REPO
from page_specs import residual_spec

import graphgen
import graphgen.cli
from graphgen import graph as g
from graphgen.check import random_arrays
from graphgen.frontends.spec import from_dict
from graphgen.views import page

pytest.importorskip("websocket", reason="the browser tests need websocket-client")
if not os.path.exists("/usr/bin/chromium"):
    pytest.skip(
        "/usr/bin/chromium is absent: install Debian's chromium package "
        "(apt-get install chromium; `make venv` does it as root) to run the page tests",
        allow_module_level=True,
    )

from browser import Browser


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    yield b
    b.close()


def assert_offline(browser, path):
    """The page asked for its own file and nothing else, and threw no error."""
    url = "file://" + os.path.abspath(path)
    assert [u for u in browser.requests() if u != url] == []
    assert browser.errors() == []


# ---------------------------------------------------------------- oracles: the module


def _feed(H, arrays):
    return {
        n: arrays[n]
        for n in H
        if H.nodes[n][g.KIND] in (g.INPUT, g.PARAM) and n in arrays
    }


def forward_values(H, arrays):
    """Every op node's value, from a generated module that outputs them all."""
    F = H.copy()
    F.graph["outputs"] = [n for n in H if H.nodes[n][g.KIND] == g.OPNODE]
    F.graph["loss"] = None
    F.graph.pop("wrt", None)
    out = graphgen.compile(F, dtype="float64").forward(**_feed(F, arrays))
    return {**arrays, **out}


def module_gradient(H, arrays, values, edge=None, node=None):
    """∂J/∂node with ``node`` cut loose as an input; or, for ``edge = (j, k)``, the
    term ∂J/∂k · ∂k/∂j: the gradient of a fresh input that feeds k in j's place."""
    C = H.copy()
    if node is not None:
        C.remove_edges_from(list(C.in_edges(node)))
        a = C.nodes[node]
        for key in (g.OP, g.ATTRS):
            a.pop(key, None)
        a[g.KIND] = g.INPUT
        new, value = node, values[node]
    else:
        j, k = edge
        new = "__edge_input"
        C.add_node(new, **{**H.nodes[j], g.KIND: g.INPUT})
        for key in (g.OP, g.ATTRS, g.INIT):
            C.nodes[new].pop(key, None)
        C.add_edge(new, k, **C.edges[j, k])
        C.remove_edge(j, k)
        value = values[j]
    C.nodes[new][g.DTYPE] = "float64"
    C.graph["wrt"] = [new]
    module = graphgen.compile(C, dtype="float64")
    feed = {**_feed(C, arrays), new: np.asarray(value, dtype=np.float64)}
    return module.value_and_grad(**feed)[1][new]


def check_shown(shown, expected, what):
    """``shown``: (data-v, text, is-norm) of each number an array shows."""
    expected = np.asarray(expected, dtype=np.float64)
    if shown and shown[0][2]:
        want = [float(np.linalg.norm(expected.reshape(-1)))]
    else:
        want = list(expected.reshape(-1))
    assert len(shown) == len(want), what
    for (v, text, _), w in zip(shown, want):
        v = float(v)
        assert abs(v - w) <= 1e-10 * max(1.0, abs(w)), (what, v, w)
        # the text is the full number rounded to 6 significant digits
        assert math.isclose(float(text), v, rel_tol=1e-5, abs_tol=1e-300), (what, text)


STEP_STATE = (
    """(() => {
  const s = document.getElementById("step");
  const nums = (root, role) => [...root.querySelectorAll(
      '.arr[data-role="' + role + '"] .num')].map(
      (e) => [e.dataset.v, e.textContent, e.classList.contains("norm")]);
  const code = s.querySelector("pre.code");
  const sum = s.querySelector(".formula.sum");
  return {
    node: s.dataset.node,
    name: DATA_NAME(s.dataset.node),
    counter: document.getElementById("counter").textContent,
    total: nums(s, "total"),
    formula: sum ? sum.textContent : null,
    code: code ? code.textContent : null,
    terms: [...s.querySelectorAll("tr.term")].map((tr) => ({
      succ: DATA_NAME(tr.dataset.succ),
      local: tr.querySelector(".local").textContent,
      succ_value: nums(tr, "succ"),
      term: nums(tr, "term"),
    })),
  };
})()""".replace(
        "DATA_NAME",
        "JSON.parse(document.getElementById('data').textContent).nodes[",
    )
    .replace("(s.dataset.node)", "s.dataset.node].name")
    .replace("(tr.dataset.succ)", "tr.dataset.succ].name")
)


STEPPED = {
    "tiny": ["J", "y", "z2", "h1", "a1", "z1", "W1", "b1", "W2"],
    "fanout": [
        "J",
        "rw",
        "r",
        "e",
        "y",
        "s",
        "z",
        "V",
        "W2",
        "hh",
        "h",
        "u",
        "a",
        "b1",
        "W1",
    ],
}


@pytest.mark.parametrize("example", sorted(STEPPED))
def test_stepping_through_shows_the_generated_modules_numbers(
    browser, tmp_path, example
):
    spec = EXAMPLES / f"{example}.yaml"
    out = tmp_path / f"{example}.html"
    assert graphgen.cli.main(["render", str(spec), "-o", str(out)]) == 0
    browser.load(out)
    assert_offline(browser, out)

    G = graphgen.load(spec)
    H = graphgen.prepare(G)
    arrays = random_arrays(H, seed=0, dtype="float64")
    values = forward_values(H, arrays)
    _, grads = graphgen.compile(G, dtype="float64").value_and_grad(**_feed(H, arrays))
    source = graphgen.generate(G).splitlines()
    body = [line.strip() for line in source]

    seen, last_line = [], -1
    n_steps = int(
        browser.js(
            "JSON.parse(document.getElementById('data').textContent).steps.length"
        )
    )
    for i in range(n_steps):
        state = browser.js(STEP_STATE)
        assert state["counter"] == f"step {i + 1} / {n_steps}"
        n = state["name"]
        seen.append(n)
        want = grads[n] if n in grads else module_gradient(H, arrays, values, node=n)
        check_shown(state["total"], want, f"∂J/∂{n}")
        if n == "J":
            assert state["terms"] == []
        else:
            succs = [t["succ"] for t in state["terms"]]
            assert sorted(succs) == sorted(set(H.successors(n)))
            assert state["formula"] == f"∂J/∂{n} = " + " + ".join(
                f"∂J/∂{k}·∂{k}/∂{n}" for k in succs
            )
            for t in state["terms"]:
                k = t["succ"]
                assert t["local"]  # the op's derivative text
                kbar = module_gradient(H, arrays, values, node=k) if k != "J" else 1.0
                check_shown(t["succ_value"], kbar, f"∂J/∂{k}")
                term = module_gradient(H, arrays, values, edge=(n, k))
                check_shown(t["term"], term, f"term {k} -> {n}")
        if state["code"]:
            # the shown lines are the generated module's, in its order
            lines = [ln.strip() for ln in state["code"].splitlines()]
            at = body.index(lines[-1])
            assert body[at - len(lines) + 1 : at + 1] == lines
            assert at >= last_line
            last_line = at
        browser.key("ArrowRight", keycode=39)
    assert sorted(seen) == sorted(STEPPED[example])
    assert seen[0] == "J"
    browser.key("ArrowLeft", keycode=37)
    assert browser.js(STEP_STATE)["name"] == seen[-2]
    assert_offline(browser, out)


def test_fanout_hover_colour_and_screenshot(browser, tmp_path):
    spec = EXAMPLES / "fanout.yaml"
    out = tmp_path / "fanout.html"
    G = graphgen.load(spec)
    page.write(G, out)
    browser.load(out)
    H = graphgen.prepare(G)
    arrays = random_arrays(H, seed=0, dtype="float64")
    _, grads = graphgen.compile(G, dtype="float64").value_and_grad(**_feed(H, arrays))

    # hover the parameter W1: its chain-rule path product and its gradient norm
    wid = browser.js(
        "Object.entries(JSON.parse(document.getElementById('data').textContent)"
        ".nodes).find(([k, v]) => v.name === 'W1')[0]"
    )
    x, y = browser.center(f'g[id="{wid}"]')
    browser.mouse("mouseMoved", x, y)
    tip = browser.js(
        """(() => { const t = document.getElementById("tooltip");
        return {hidden: t.hidden, node: t.dataset.node,
          paths: [...t.querySelectorAll(".path")].map((e) => e.textContent),
          sum: t.querySelector(".path-sum").textContent,
          norm: t.querySelector(".grad-norm").dataset.v}; })()"""
    )
    assert not tip["hidden"] and tip["node"] == wid
    # the three paths and their sum, as explain writes them
    text = " ".join(graphgen.explain(G, "W1").split())  # explain wraps long lines
    for line in tip["paths"] + [tip["sum"]]:
        assert " ".join(line.split()) in text
    assert len(tip["paths"]) == 3 and tip["sum"].count(") + (") == 2
    assert abs(float(tip["norm"]) - np.linalg.norm(grads["W1"])) <= 1e-10

    # the fan-out step of h: three terms
    browser.key("End", keycode=35)
    for _ in range(20):
        if browser.js(STEP_STATE)["name"] == "h":
            break
        browser.key("ArrowLeft", keycode=37)
    state = browser.js(STEP_STATE)
    assert [t["succ"] for t in state["terms"]] == ["z", "s", "hh"]

    # the gradient-magnitude colours and their legend
    plain = browser.js(
        "getComputedStyle(document.querySelector('g.edge[class*=\" m\"] path')).stroke"
    )
    browser.click(*browser.center("#gradcolor"))
    coloured = browser.js(
        "[...document.querySelectorAll('g.edge[class*=\" m\"] path')]"
        ".map((p) => getComputedStyle(p).stroke)"
    )
    assert browser.js("document.getElementById('legend').hidden") is False
    assert plain not in coloured and len(set(coloured)) >= 2
    browser.mouse("mouseMoved", 5, 5)
    shot = tmp_path / "page-fanout.png"
    browser.screenshot(shot)
    assert shot.stat().st_size > 10_000
    if os.environ.get("GRAPHGEN_UPDATE_SCREENSHOT"):
        shutil.copy(shot, REPO / "docs" / "img" / "page-fanout.png")
    assert_offline(browser, out)


def test_a_50_layer_residual_spec_collapses_and_opens_on_a_click(browser, tmp_path):
    G = from_dict(residual_spec(), source="residual50.yaml")
    out = tmp_path / "residual50.html"
    page.write(G, out)
    browser.load(out)
    assert_offline(browser, out)
    # the first step is the loss: its block is open; "whole graph" closes it
    browser.click(*browser.center("#top"))
    assert browser.js("document.body.dataset.view") == "top"
    blocks = browser.js("[...document.querySelectorAll('g.node.block')].map(g => g.id)")
    assert 10 <= len(blocks) <= 40
    assert browser.js("document.querySelectorAll('g.node.gg.op').length") == 0
    target = blocks[len(blocks) // 2]
    browser.click(*browser.center(f'g[id="{target}"]'))
    assert browser.js("document.body.dataset.view") == target
    inside = browser.js(
        f"""(() => {{ const d = JSON.parse(document.getElementById('data').textContent);
        return [...document.querySelectorAll('g.node.gg')]
          .filter(g => d.nodes[g.id].block === {target!r}).length; }})()"""
    )
    assert inside >= 4
    # a click on the open block's title closes it
    browser.click(*browser.center("g.cluster.open > text"))
    assert browser.js("document.body.dataset.view") == "top"
    # stepping to a node of another block opens that block
    browser.key("End", keycode=35)
    state = browser.js(STEP_STATE)
    block = browser.js(
        "JSON.parse(document.getElementById('data').textContent)"
        f".nodes[{state['node']!r}].block"
    )
    if block is not None:
        assert browser.js("document.body.dataset.view") == block
    assert browser.js(f"!!document.querySelector('g[id=\"{state['node']}\"].current')")


def test_resnet50_page(browser, tmp_path):
    onnx = pytest.importorskip("onnx")
    path = os.path.join(
        os.path.dirname(onnx.__file__),
        "backend",
        "test",
        "data",
        "light",
        "light_resnet50.onnx",
    )
    if not os.path.exists(path):
        pytest.skip("onnx ships no light_resnet50.onnx")
    out = tmp_path / "resnet50.html"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", graphgen.GraphgenWarning)
        # its gradients against the generated module: tests/test_onnx_models.py
        page.write(graphgen.load(path), out, check=False)
    browser.load(out)
    assert_offline(browser, out)
    assert browser.js("document.querySelectorAll('g.node.block').length") >= 10
    browser.key("ArrowRight", keycode=39)
    assert browser.js(STEP_STATE)["counter"].startswith("step 2 / ")


def test_hostile_names_are_shown_as_text(browser, tmp_path):
    from test_diagram import hostile_graph

    out = tmp_path / "hostile.html"
    page.write(hostile_graph(), out)
    browser.load(out)
    assert_offline(browser, out)
    assert browser.js("document.scripts.length") == 2
    drawn = browser.js(
        "[...document.querySelectorAll('#picture text')].map(t => t.textContent)"
    )
    assert "<b>" in drawn and 'a"b' in drawn
    browser.key("ArrowRight", keycode=39)
    step = browser.js("document.getElementById('step').textContent")
    assert "<script>alert(1)</script>" in step
    assert browser.js("document.scripts.length") == 2
    assert not any(
        e.get("method") == "Page.javascriptDialogOpening" for e in browser.events
    )
