"""Diagrams and explanations of big graphs (issue 16): blocks, the time budget on dot,
Ctrl-C and SIGTERM, labels, and the grouped chain rule on residual nets."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import yaml
from conftest import REPO, clean_env

import graphgen
import graphgen.cli
from graphgen import graph as g
from graphgen.api import lower
from graphgen.errors import DiagramError, GraphgenWarning
from graphgen.frontends.spec import from_dict
from graphgen.passes.shapes import prepare
from graphgen.views import diagram
from graphgen.views.explain import Text, _Checks
from graphgen.views.grouping import blocks
from graphgen.views.values import ModuleGradients, load_arrays

sys.path.insert(0, str(REPO / "benchmarks"))
from render_bench import residual_spec

needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None, reason="Graphviz 'dot' is not installed"
)


def residual(layers, **kw):
    return from_dict(residual_spec(layers, **kw), source="<residual>")


# ------------------------------------------------------------------------- grouping


def test_blocks_by_layer_number():
    found = blocks(prepare(residual(12)))
    assert found.how == "layer numbers"
    assert [b.name for b in found.blocks] == [f"layer {i}" for i in range(1, 13)]
    assert set(found.blocks[6].nodes) == {"m7", "a7", "h7", "r7", "W7", "b7"}
    assert found.blocks[0].repeats == 11  # the same ops (the last one also has J)


def test_blocks_by_prefix_under_a_common_lead():
    # "gpu_0/" is shared by every name: it is dropped, not taken as one huge block
    found = blocks(prepare(residual(8, prefix="gpu_0/layer{i}/")))
    assert found.how == "name prefixes"
    assert [b.name for b in found.blocks] == [f"layer{i}" for i in range(1, 9)]
    assert max(len(b.nodes) for b in found.blocks) == 7  # the last block holds J


def test_blocks_of_the_adjoint_graph_hold_their_backward_nodes():
    A = lower(prepare(residual(6)))
    found = blocks(A)
    of = found.block_of()
    names = [b.name for b in found.blocks]
    for n in A:
        a = A.nodes[n]
        if a.get(g.ROLE) == g.BACKWARD and a.get(g.ADJOINT_OF) in ("a4", "W4"):
            assert names[of[n]] == "layer 4"


def test_no_blocks_says_so():
    found = blocks(prepare(graphgen.load(REPO / "examples" / "tiny.yaml")))
    assert not found and "no blocks found" in found.note


def test_structure_finds_blocks_without_names():
    # the same residual net with meaningless names: cut at its bottlenecks
    data = residual_spec(12)
    text = yaml.safe_dump(data)
    names = sorted([*data["nodes"], *data["params"]], key=lambda s: (-len(s), s))
    for i, old in enumerate(names):
        text = re.sub(rf"\b{re.escape(old)}\b", f"q{(i * 7919) % 1000}x", text)
    G = from_dict(yaml.safe_load(text))
    found = blocks(prepare(G))
    assert found.how.startswith("the structure")
    assert len(found.blocks) >= 3


# -------------------------------------------------------------------------- drawing


@needs_dot
def test_residual50_adjoint_view_within_budget(tmp_path):
    out = tmp_path / "adjoint.svg"
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always", GraphgenWarning)
        diagram.write(residual(50), out, view="adjoint", timeout=60)
    assert out.read_text().startswith("<?xml")
    assert any("collapsed into 50 blocks" in str(w.message) for w in said)


def test_collapsed_view_keeps_the_maths():
    text = graphgen.to_dot(residual(30), view="flow", collapse=True)
    assert "h7 = tanh(a7)" in text and "m7 = r6 @ W7" in text
    assert "∂J/∂r6" in text  # the gradient edge between blocks names what it carries


@needs_dot
def test_time_budget_message():
    text = graphgen.to_dot(residual(50), view="adjoint", full=True)
    t0 = time.monotonic()
    with pytest.raises(DiagramError, match=r"within 0\.2 s.*--collapse.*--timeout"):
        diagram.run_dot(text, "svg", timeout=0.2)
    assert time.monotonic() - t0 < 10


@needs_dot
def test_dot_warnings_are_passed_on():
    with pytest.warns(GraphgenWarning, match="dot: .*unknown shape"):
        diagram.run_dot('digraph { a [shape="nosuchshape"] }', "svg")


def test_labels_have_no_fraction_and_no_internal_ids():
    data = residual_spec(4, prefix="L{i}/")
    data["nodes"]["s"] = {"op": "mul", "args": ["L4/r4", 0.3]}
    data["nodes"]["s2"] = {"op": "mul", "args": ["s", 0.3]}
    data["nodes"]["J"] = {"op": "mse", "args": ["s2", "t"]}
    G = from_dict(data)
    for view in diagram.VIEWS:
        for collapse in (None, True):
            text = graphgen.to_dot(G, view=view, collapse=collapse)
            assert not re.search(r"∂(?!\()[^\s·=<>∂(]*/[^\s·=<>∂]", text), view
            assert not re.search(r"\w#\d", text), view
    assert "∂J/∂(L4/r4)" in graphgen.to_dot(G, view="flow")


@needs_dot
def test_notebook_display_checks_size_first():
    small = graphgen.render(graphgen.load(REPO / "examples" / "tiny.yaml"))
    assert "image/svg+xml" in small._repr_mimebundle_()
    big = graphgen.render(residual(50), view="adjoint", full=True, timeout=0.2)
    shown = big._repr_mimebundle_()
    assert "image/svg+xml" not in shown
    assert shown["text/plain"].startswith("graphgen: Graphviz's dot did not finish")
    big.size = diagram.NOTEBOOK_LIMIT + 1  # far too big: no dot at all
    assert "too big to lay out" in big._repr_mimebundle_()["text/plain"]


@needs_dot
@pytest.mark.parametrize(
    "sig,status,group",
    [
        (signal.SIGINT, 130, False),  # graphgen alone
        (signal.SIGINT, 130, True),  # Ctrl-C in a terminal: graphgen and dot
        (signal.SIGTERM, 143, False),
    ],
)
def test_interrupt_stops_dot_cleanly(tmp_path, sig, status, group):
    spec = tmp_path / "res.yaml"
    spec.write_text(yaml.safe_dump(residual_spec(50)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "graphgen", "render", str(spec), "-o"]
        + [str(tmp_path / "a.svg"), "--view", "adjoint", "--full", "--timeout", "0"],
        stderr=subprocess.PIPE,
        env=clean_env(PYTHONPATH=str(REPO)),
        cwd=REPO,
        start_new_session=group,
    )
    child = None
    deadline = time.monotonic() + 60
    while child is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                child = int(f.read().split()[0])
        except (OSError, IndexError, ValueError):
            pass
    assert child is not None, "dot never started"
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    err = proc.communicate(timeout=30)[1].decode()
    assert proc.returncode == status
    assert "graphgen: stopped" in err and "Traceback" not in err
    assert not os.path.exists(f"/proc/{child}"), "dot outlived graphgen"


# ------------------------------------------------------------------------- explain


def test_explain_grouped_sum_on_a_residual_net():
    G = residual(6)
    text = graphgen.explain(G, "W1", values=True)
    assert "along 32 paths" in text
    assert "∂J/∂W1 = ∂J/∂h1 · ∂h1/∂m1 · ∂m1/∂W1" in text
    # ∂J/∂h1 is the sum over its 32 paths, never the product along one of them
    assert "is the sum over the 32 paths from h1 to the loss" in " ".join(text.split())
    assert not re.search(r"∂J/∂h1 = ∂J/∂r6 ·", text)
    m = re.search(r"Σ_n … = (\S+) vs value_and_grad's W1\[0, 1\]", text)
    H = prepare(G)
    arrays = load_arrays(H, True, 0)
    _, grads = graphgen.compile(G).value_and_grad(**arrays)
    assert float(m.group(1)) == pytest.approx(grads["W1"][0, 1], rel=1e-5)
    assert "MISMATCH" not in text and text.mismatches == 0


def test_explain_counts_paths_it_cannot_print():
    t0 = time.monotonic()
    text = graphgen.explain(residual(50), "W1")
    assert time.monotonic() - t0 < 20
    assert "along 5.6×10^14 paths" in text
    assert "(the first 12 shown)" in text
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "more factors" in text  # 200-factor products are abbreviated


def test_explain_values_w5_fanout_with_folded_node():
    # p4 = h·1.0 is removed by the optimizer; its value comes from the forward graph
    G = graphgen.load(REPO / "benchmarks" / "specs" / "w5_fanout.yaml")
    text = graphgen.explain(G, "W", values=True)
    assert "p4" in text and text.mismatches == 0


def test_relative_tolerance_and_mismatch_exit(monkeypatch, capsys):
    checks = _Checks(Text())
    big = np.array([1e111, -3e110])
    assert checks("huge", big, big * (1 + 1e-13))
    assert not checks("wrong", big, big * 1.001)
    assert checks.bad == 1
    real = ModuleGradients.__call__
    monkeypatch.setattr(
        ModuleGradients, "__call__", lambda self, n: real(self, n) * 1.01 + 1.0
    )
    status = graphgen.cli.main(
        ["explain", str(REPO / "examples" / "tiny.yaml"), "--wrt", "W1", "--values"]
    )
    assert status == 1
    assert "disagree with the generated value_and_grad" in capsys.readouterr().err


def test_top_paths_score_is_the_contribution_for_scalars():
    G = from_dict(
        {
            "params": {"w": [1]},
            "nodes": {
                "a": {"op": "mul", "args": ["w", 2.0]},
                "b": {"op": "mul", "args": ["w", -3.0]},
                "s": {"op": "add", "args": ["a", "b"]},
                "J": {"op": "sum", "args": ["s"]},
            },
            "loss": "J",
        }
    )
    text = graphgen.explain(G, "w", values=True)
    # ∂J/∂w = 2 − 3: the path through b contributes |−3|, the one through a 2
    assert re.search(r"1\s+3\s+J → s → b → w", text), text
    assert re.search(r"2\s+2\s+J → s → a → w", text), text
