"""``explain --mode forward``: forward accumulation (the sum over predecessors) beside
the reverse sum over successors, with numbers checked against the generated module."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import EXAMPLES

import graphgen
from graphgen.check import random_arrays
from graphgen.errors import ExplainError


@pytest.fixture(scope="module")
def fanout():
    return graphgen.load(EXAMPLES / "fanout.yaml")


def test_forward_accumulation_sums_over_predecessors(fanout):
    text = graphgen.explain(fanout, "W1", mode="forward")
    forward, reverse = text.split("Reverse accumulation")
    # y = f(z, s) reads both of h's branches: two terms, one per predecessor
    assert "dy = ∂y/∂z · dz + ∂y/∂s · ds" in forward
    assert "dJ = ∂J/∂e · de + ∂J/∂rw · drw" in forward
    assert "dJ = ⟨∂J/∂W1, dW1⟩" in forward
    # the reverse pass sums over h's three successors, in the order it runs
    assert "∂J/∂h = ∂J/∂z · ∂z/∂h + ∂J/∂s · ∂s/∂h + ∂J/∂hh · ∂hh/∂h" in reverse
    assert "∂J/∂rw = ∂J/∂rw\n" not in reverse
    lines = [ln.strip() for ln in forward.splitlines() if ln.startswith("    d")]
    made = [ln.split(" = ")[0] for ln in lines]
    # every tangent is defined after the tangents it reads (forward order)
    for i, ln in enumerate(lines[:-1]):
        for used in re.findall(r"· (d\w+)", ln.split(" = ", 1)[1]):
            assert used == "dW1" or used in made[:i], (used, ln)


def _central(G, node, v, arrays, eps=1e-6):
    mod = graphgen.compile(G, dtype="float64")

    def loss(w):
        return mod.value_and_grad(**{**arrays, node: w})[0]

    return (loss(arrays[node] + eps * v) - loss(arrays[node] - eps * v)) / (2 * eps)


@pytest.mark.parametrize("fmt", ["text", "markdown", "latex"])
def test_forward_numbers_match_the_module(fanout, fmt):
    text = graphgen.explain(fanout, "W1", format=fmt, values=True, mode="forward")
    assert "MISMATCH" not in text
    assert text.count("✓" if fmt != "latex" else r"\checkmark") == 1


def test_the_loss_tangent_is_the_directional_derivative(fanout):
    text = graphgen.explain(fanout, "W1[1,0]", values=True, mode="forward", seed=3)
    got = float(re.search(r"dJ = (\S+) by forward accumulation", text).group(1))
    arrays = random_arrays(fanout, seed=3, dtype="float64")
    v = np.zeros_like(arrays["W1"])
    v[1, 0] = 1.0
    want = _central(fanout, "W1", v, arrays)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-9)
    assert "one-hot at W1[1,0]" in text


def test_cli_mode_forward(cli):
    status, out, err = cli(
        "explain", EXAMPLES / "tiny.yaml", "--wrt", "W1", "--mode", "forward"
    )
    assert status == 0, err
    assert "Forward accumulation: the sum over predecessors" in out


def test_unknown_mode_is_an_error(fanout):
    with pytest.raises(ExplainError, match="unknown mode 'sideways'"):
        graphgen.explain(fanout, "W1", mode="sideways")
