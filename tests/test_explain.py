"""Chain-rule explanations: paths, sums over successors, formats and numbers."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import graphgen
from graphgen.errors import ExplainError
from graphgen.frontends.spec import from_dict

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    return graphgen.load(ROOT / "examples" / f"{name}.yaml")


def test_tiny_three_factor_product():
    text = graphgen.explain(load("tiny"), "W1")
    assert "J → y → z2 → h1 → a1 → z1 → W1" in text
    assert "∂J/∂W1 = ∂J/∂y · ∂y/∂z2 · ∂z2/∂h1 · ∂h1/∂a1 · ∂a1/∂z1 · ∂z1/∂W1" in text
    assert "∂J/∂W1 = ∂J/∂h1 · ∂h1/∂z1 · ∂z1/∂W1" in text
    # the element-level factor the tiny spec's comment talks about
    assert "w12 = W1[0, 1]" in text
    assert "∂J/∂w12 = Σ_n ∂J/∂h1[n,1] · ∂h1[n,1]/∂z1[n,1] · ∂z1[n,1]/∂W1[0,1]" in text
    assert "∂z1[n,1]/∂W1[0,1] = x[n,0]" in text
    # closed-form local derivatives from the ops' math
    assert "∂h1/∂a1 = σ(a1)·(1 − σ(a1)) = h1·(1 − h1)" in text
    assert "∂J/∂y = 2·(y − t)/N" in text


def test_fanout_sum_over_successors():
    text = graphgen.explain(load("fanout"), "W1")
    assert "h has 3 successors that send a gradient back (z, s, hh)" in text
    assert (
        "∂J/∂h = Σ_k ∂J/∂k · ∂k/∂h = ∂J/∂z · ∂z/∂h + ∂J/∂s · ∂s/∂h + ∂J/∂hh · ∂hh/∂h"
        in text
    )
    assert "along 3 paths" in text
    assert "The gradient is the sum over the paths" in text


CHECK = re.compile(r"max \|difference\| = (\S+)\s+(✓|✗ MISMATCH)")


@pytest.mark.parametrize(
    "example,wrt",
    [
        ("tiny", "W1"),
        ("tiny", "W1[1,2]"),
        ("fanout", "W1"),
        ("fanout", "b1"),
        ("mlp", "W1"),
        ("tiny", "h1"),
    ],
)
def test_values_agree_with_module(example, wrt):
    text = graphgen.explain(load(example), wrt, values=True)
    checks = CHECK.findall(text)
    assert checks, text
    for diff, verdict in checks:
        assert verdict == "✓" and float(diff) <= 1e-10


def test_values_numbers_for_fanout_sum():
    text = graphgen.explain(load("fanout"), "W1", values=True, seed=4)
    assert "The terms of the sum for h" in text
    assert "the sum over the successors of h vs value_and_grad" in text


def test_values_from_npz(tmp_path):
    import numpy as np

    from graphgen.check import random_arrays

    G = load("tiny")
    arrays = random_arrays(G, seed=7)
    np.savez(tmp_path / "a.npz", **arrays)
    a = graphgen.explain(G, "W1", values=str(tmp_path / "a.npz"))
    b = graphgen.explain(G, "W1", arrays=arrays)
    assert a == b and "the given arrays" in a


def balanced(s):
    depth = 0
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        depth += {"{": 1, "}": -1}.get(c, 0)
        if depth < 0:
            return False
        i += 1
    return depth == 0


def latex_ok(tex):
    assert tex.startswith("\\documentclass") and tex.rstrip().endswith(
        "\\end{document}"
    )
    assert balanced(tex)
    begins = re.findall(r"\\begin\{(\w+\*?)\}", tex)
    ends = re.findall(r"\\end\{(\w+\*?)\}", tex)
    assert sorted(begins) == sorted(ends)
    assert not re.search(r"[^\x00-\x7f]", tex), "non-ASCII in LaTeX"
    body = re.sub(r"\\.", "", tex)  # drop escapes
    for line in body.splitlines():
        # math delimiters pair up on every line
        assert line.count("$") % 2 == 0, line


@pytest.mark.parametrize("example", ["tiny", "fanout"])
def test_latex_structure(example, tmp_path):
    tex = graphgen.explain(load(example), "W1", format="latex", values=True)
    latex_ok(tex)
    assert "\\frac{\\partial \\text{J}}{\\partial \\text{W1}}" in tex
    if shutil.which("pdflatex"):
        (tmp_path / "e.tex").write_text(tex)
        r = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "e.tex"],
            cwd=tmp_path,
            capture_output=True,
            check=False,
        )
        assert r.returncode == 0, r.stdout[-2000:]


HOSTILE = {
    "inputs": {"<b>": ["batch", 2], "t": ["batch", 2]},
    "params": {'a"b': [2, 2], "{}_%$#&~^\\": [2]},
    "nodes": {
        "x\nimport os": {"op": "matmul", "args": ["<b>", 'a"b']},
        "u": {"op": "add", "args": ["x\nimport os", "{}_%$#&~^\\"]},
        "h": {"op": "tanh", "args": ["u"]},
        "J": {"op": "mse", "args": ["h", "t"]},
    },
    "loss": "J",
}


def test_hostile_names_latex_and_markdown():
    G = from_dict(HOSTILE)
    tex = graphgen.explain(G, 'a"b', format="latex", values=True)
    latex_ok(tex)
    assert "\\textquotedbl{}" in tex
    md = graphgen.explain(G, "{}_%$#&~^\\", format="markdown")
    for block in re.findall(r"\$\$\n(.*?)\n\$\$", md, re.DOTALL):
        assert balanced(block)
    assert "<b>" not in md.replace("`<b>`", "")
    text = graphgen.explain(G, 'a"b')
    assert "x\\nimport os" in text


def test_markdown_uses_dollar_math():
    md = graphgen.explain(load("fanout"), "W1", format="markdown", values=True)
    assert md.startswith("## ") and "$$" in md
    assert "\\frac{\\partial \\mathrm{J}}{\\partial \\mathrm{h}}" in md
    assert "| node |" in md


def test_no_path_and_errors():
    G = from_dict(
        {
            "inputs": {"x": [2]},
            "params": {"W": [2], "V": [2]},
            "nodes": {
                "y": {"op": "mul", "args": ["x", "W"]},
                "J": {"op": "sum", "args": ["y"]},
                "k": {"op": "mul", "args": ["x", "V"]},
            },
            "outputs": ["J", "k"],
            "loss": "J",
        }
    )
    assert "does not depend on" in graphgen.explain(G, "V")
    with pytest.raises(ExplainError, match="did you mean 'W'"):
        graphgen.explain(G, "WW")
    with pytest.raises(ExplainError, match="out of range"):
        graphgen.explain(G, "W[5]")
    with pytest.raises(ExplainError, match="unknown format"):
        graphgen.explain(G, "W", format="rst")


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "graphgen", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_explain():
    r = run_cli("explain", "examples/tiny.yaml", "--wrt", "W1", "--values")
    assert r.returncode == 0, r.stderr
    assert "∂J/∂W1 = ∂J/∂h1 · ∂h1/∂z1 · ∂z1/∂W1" in r.stdout
    assert "✗" not in r.stdout and "✓" in r.stdout
    r = run_cli("explain", "examples/fanout.yaml", "--wrt", "W1", "--format", "latex")
    assert r.returncode == 0 and r.stdout.startswith("\\documentclass")
    r = run_cli("explain", "examples/tiny.yaml", "--wrt", "nope")
    assert r.returncode == 2 and r.stderr.startswith("graphgen: error:")


# ------------------------------------------------- lean values: the same numbers


def _full_values(monkeypatch):
    """explain's values section as it was: every array of the lowered graph kept,
    and a module that computes every gradient."""
    from graphgen.views import explain as ex

    real = ex.ModuleGradients

    def everything(c, A, fan, grouped, on_paths):
        return list(A), []

    def every_gradient(*args, wrt=None, **kw):
        return real(*args, **kw)

    monkeypatch.setattr(ex, "_needs", everything)
    monkeypatch.setattr(ex, "ModuleGradients", every_gradient)


def _residual(layers):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from render_bench import residual_spec

    return from_dict(residual_spec(layers), source="<residual>")


@pytest.mark.parametrize(
    "graph,wrt",
    [
        (lambda: load("tiny"), "W1"),
        (lambda: load("tiny"), "h1"),
        (lambda: load("fanout"), "W1"),
        (lambda: load("mlp"), "W1"),
        (lambda: graphgen.load(ROOT / "examples" / "lenet.onnx"), "conv1.weight"),
        (lambda: _residual(6), "W1"),
        (lambda: _residual(6), "W5"),
    ],
    ids=[
        "tiny-W1",
        "tiny-h1",
        "fanout-W1",
        "mlp-W1",
        "lenet-conv1",
        "res6-W1",
        "res6-W5",
    ],
)
def test_lean_values_print_the_same_numbers(graph, wrt, monkeypatch):
    # only what the explanation reads is evaluated and kept, and the module
    # differentiates the node alone: the text is byte for byte the same
    G = graph()
    if wrt not in G:
        pytest.skip(f"no {wrt} in the graph")
    lean = graphgen.explain(G, wrt, values=True)
    _full_values(monkeypatch)
    assert graphgen.explain(G, wrt, values=True) == lean


def test_evaluate_keep_and_norms_match_the_full_evaluation():
    from graphgen.api import lower
    from graphgen.check import random_arrays
    from graphgen.views.values import evaluate, norm

    A = lower(load("fanout"))
    arrays = random_arrays(A, dtype="float64")
    full = evaluate(A, arrays)
    grad = A.graph["grads"]["W1"]
    lean = evaluate(A, arrays, keep=[grad], norms=["h", A.graph["loss"]])
    assert list(lean) == [grad]
    assert (lean[grad] == full[grad]).all()
    assert lean.norms == {n: norm(full[n]) for n in ("h", A.graph["loss"])}
    # nothing the kept and normed nodes do not read was evaluated
    assert A.graph["grads"]["W2"] not in lean.shapes
    assert lean.shapes["h"] == full["h"].shape
