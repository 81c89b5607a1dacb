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
