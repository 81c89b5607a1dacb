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


def test_gemm_floor_lists_every_matrix_product_of_the_step(tmp_path):
    """transformer_bench's GEMM floor times what the generated step multiplies: one
    entry per ``@`` of the NumPy module's value_and_grad, and 2·M·K·N flops each."""
    import shutil

    import transformer_bench

    shutil.copy(REPO / "tests" / "fixtures" / "transformers" / "nanogpt.onnx", tmp_path)
    gemms = transformer_bench.gemm_list(str(tmp_path), "nanogpt")
    assert (tmp_path / "gemms.json").exists()
    G = graphgen.load(
        tmp_path / "nanogpt.onnx", loss="softmax_cross_entropy", labels="labels"
    )
    source = graphgen.generate(G)
    body = source.split("def value_and_grad(", 1)[1].split("\ndef ", 1)[0]
    code = [line.split("#", 1)[0] for line in body.splitlines()]
    assert len(gemms) == sum(line.count(" @ ") for line in code) > 0
    pair = [
        {"args": [{"shape": [5, 2, 3], "perm": None}, {"shape": [3, 4], "perm": None}]}
    ]
    assert transformer_bench._flops(pair) == 2 * 5 * 2 * 3 * 4
