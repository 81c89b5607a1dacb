"""Spec ``sizes`` and ``blocks``: expansion, naming, errors, and examples/gpt.yaml
compiled small with its gradients against central differences (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import EXAMPLES, run_graphgen

import graphgen
from graphgen.check import random_arrays
from graphgen.frontends import spec as spec_module

DENSE = """\
sizes: {n: 3}
blocks:
  dense:
    inputs: [x]
    params: {W: [n, n], b: {shape: [n], init: zeros}}
    nodes:
      h: {op: matmul, args: [x, W]}
      a: {op: add, args: [h, b]}
      y: {op: tanh, args: [a]}
    outputs: [y]
inputs: {x: [batch, n]}
nodes:
  layer: {block: dense, args: [x], repeat: 3}
  last: {block: dense, args: [layer]}
  L: {op: sum, args: [last/y]}
loss: L
"""


def _write(tmp_path, text, name="net.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_repeat_chains_copies_with_their_own_params(tmp_path):
    G = graphgen.load(_write(tmp_path, DENSE))
    params = sorted(n for n in G if G.nodes[n]["kind"] == "param")
    assert params == [
        "last/W",
        "last/b",
        "layer0/W",
        "layer0/b",
        "layer1/W",
        "layer1/b",
        "layer2/W",
        "layer2/b",
    ]
    assert G.nodes["layer0/W"]["shape"] == (3, 3)  # the size n, replaced
    assert sorted(G.predecessors("layer1/h")) == ["layer0/y", "layer1/W"]
    assert sorted(G.predecessors("last/h")) == ["last/W", "layer2/y"]
    assert list(G.predecessors("L")) == ["last/y"]
    assert G.graph["blocks"]["layer2/a"] == ("dense", "layer2")
    # the module computes the chain: tanh(tanh(...) W + b)
    m = graphgen.compile(G)
    arrays = random_arrays(G, seed=1, sizes={"batch": 2})
    h = arrays["x"]
    for p in ("layer0", "layer1", "layer2", "last"):
        h = np.tanh(h @ arrays[f"{p}/W"] + arrays[f"{p}/b"])
    loss, grads = m.value_and_grad(**arrays)
    assert loss == pytest.approx(h.sum(), rel=1e-12)
    assert sorted(grads) == sorted(p for p in arrays if "/" in p)


def test_diagram_groups_follow_the_instances(tmp_path):
    from graphgen.views.grouping import blocks

    G = graphgen.load(_write(tmp_path, DENSE))
    found = blocks(G)
    name = {n: b.name for b in found.blocks for n in b.nodes}
    assert name["layer1/h"] == "layer1"
    assert name["last/y"] == "last"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("block: dense, args: [x], repeat: 3", "block: dens, args: [x], repeat: 3"),
            "node 'layer': unknown block 'dens' (did you mean 'dense'?)",
        ),
        (
            ("block: dense, args: [x], repeat: 3", "block: dense, args: [x, x]"),
            (
                "node 'layer': in block 'dense' (instance 'layer'): 2 args for the "
                "block's 1 inputs ['x']"
            ),
        ),
        (
            ("W: [n, n]", "W: [n, 4]"),
            (
                "node 'layer0/a': in block 'dense' (instance 'layer0'): add: arguments do "
                "not broadcast: (batch, 4) vs (3,)"
            ),
        ),
        (
            ("W: [n, n]", "W: [m, n]"),
            (
                "in block 'dense' (instance 'layer0'): param 'layer0/W': its shape "
                "['m', 3] has the size 'm', which is not a number"
            ),
        ),
        (
            ("repeat: 3", "repeat: depth"),
            "repeat must be a positive integer or a name in sizes, got 'depth'",
        ),
        (
            ("outputs: [y]", "outputs: [z]"),
            (
                "in block 'dense': output 'z' is not one of the block's inputs, params or "
                "nodes"
            ),
        ),
    ],
)
def test_errors_name_the_block_and_the_instance(tmp_path, change, message):
    path = _write(tmp_path, DENSE.replace(*change))
    with pytest.raises(graphgen.GraphgenError) as info:
        graphgen.load(path)
    assert message in str(info.value)
    assert str(info.value).startswith(str(path))


def test_an_error_inside_a_block_points_at_the_block_line_from_the_cli(tmp_path):
    path = _write(tmp_path, DENSE.replace("W: [n, n]", "W: [n, 4]"))
    proc = run_graphgen("compile", path)
    err = proc.stderr.decode()
    assert proc.returncode == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    # the line of the block's node a: (line 8), the node named by its instance
    assert f"{path}:8: node 'layer0/a': in block 'dense' (instance 'layer0')" in err


def test_gpt_example_is_short_and_uses_blocks():
    text = (EXAMPLES / "gpt.yaml").read_text()
    assert len(text.splitlines()) < 80
    data = yaml.safe_load(text)
    assert set(data["sizes"]) >= {"layers", "width", "heads", "context"}
    assert data["nodes"]["layer"]["repeat"] == "layers"


def test_gpt_gradients_match_central_differences_float64():
    data = yaml.safe_load((EXAMPLES / "gpt.yaml").read_text())
    data["dtype"] = "float64"
    data["sizes"].update(vocab=7, context=4, layers=2, width=8, heads=2, head=4)
    data["sizes"]["hidden"] = 12
    G = graphgen.prepare(spec_module.from_dict(data, source="gpt.yaml"))
    m = graphgen.compile(G)
    arrays = random_arrays(G, seed=3, sizes={"batch": 2})
    rng = np.random.default_rng(4)
    arrays["tokens"] = rng.integers(0, 7, (2, 4))
    targets = rng.integers(0, 7, (2, 4))
    targets[0, 1] = targets[1, 3] = -1  # ignored tokens
    arrays["targets"] = targets
    loss, grads = m.value_and_grad(**arrays)
    assert np.isfinite(loss)

    def f(a):
        return float(m.forward(**a)["loss"])

    eps = 1e-6
    checked = 0
    for name, g in sorted(grads.items()):
        flat = arrays[name].reshape(-1)
        for i in rng.choice(flat.size, size=min(4, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + eps
            up = f(arrays)
            flat[i] = old - eps
            down = f(arrays)
            flat[i] = old
            numeric = (up - down) / (2 * eps)
            assert abs(g.reshape(-1)[i] - numeric) <= 1e-6 * max(1.0, abs(numeric)), (
                name,
                i,
            )
            checked += 1
    assert checked >= 40
    # the loss is the mean over the tokens not ignored (PyTorch's ignore_index)
    z = m.forward(**arrays)["logits"]
    assert z.shape == (2, 4, 7)
    keep = targets != -1
    lse = np.log(np.exp(z).sum(-1))
    picked = np.take_along_axis(z, np.where(keep, targets, 0)[..., None], -1)[..., 0]
    assert loss == pytest.approx((lse - picked)[keep].mean(), rel=1e-12)
