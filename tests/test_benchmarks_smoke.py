"""The hand-written NumPy backprop of every benchmark workload matches graphgen's gradients.

Correctness only (no timing): ``benchmarks/run.py`` divides every time by the hand-written
one, so it has to compute the same thing.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import REPO

import graphgen
from graphgen.check import random_arrays

sys.path.insert(0, str(REPO / "benchmarks"))
import handwritten

SIZES = {"w3_mlp_large": {"batch": 8}}  # the real batch of 512 is not needed here


@pytest.mark.parametrize("workload", list(handwritten.WORKLOADS))
def test_handwritten_matches_generated_gradients(workload):
    G = graphgen.load(REPO / "benchmarks" / "specs" / f"{workload}.yaml")
    sizes = SIZES.get(workload, handwritten.SIZES[workload])
    module = graphgen.compile(G)
    arrays = random_arrays(G, seed=0, sizes=sizes)
    arrays.update(module.init_params(0))
    loss, grads = module.value_and_grad(**arrays)
    h_loss, h_grads = handwritten.value_and_grad(
        workload, {k: v.copy() for k, v in arrays.items()}
    )
    assert abs(h_loss - loss) <= 1e-10 * max(1.0, abs(loss))
    assert sorted(h_grads) == sorted(grads)
    for k in grads:
        np.testing.assert_allclose(
            h_grads[k], grads[k], rtol=1e-9, atol=1e-12, err_msg=k
        )


@pytest.mark.parametrize("workload", list(handwritten.JVP))
def test_handwritten_jvp_matches_generated(workload):
    """The floor of hvp_bench's jvp/forward computes what the generated jvp does."""
    G = graphgen.load(REPO / "benchmarks" / "specs" / f"{workload}.yaml")
    sizes = SIZES.get(workload, handwritten.SIZES[workload])
    module = graphgen.compile(G, jvp=list(graphgen.compile(G).PARAMS))
    arrays = random_arrays(G, seed=0, sizes=sizes)
    arrays.update(module.init_params(0))
    rng = np.random.default_rng(1)
    tangents = {k: rng.standard_normal(arrays[k].shape) for k in module.TANGENTS}
    outs, dots = module.jvp(tangents, **arrays)
    loss = handwritten.FORWARD[workload](**{k: v.copy() for k, v in arrays.items()})
    h_loss, h_dot = handwritten.JVP[workload](
        tangents, **{k: v.copy() for k, v in arrays.items()}
    )
    for got in (loss, h_loss):
        assert abs(got - outs["loss"]) <= 1e-10 * max(1.0, abs(outs["loss"]))
    assert abs(h_dot - dots["loss"]) <= 1e-9 * max(1.0, abs(dots["loss"]))
