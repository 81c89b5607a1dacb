"""The nine real architectures that ship with ``onnx`` (backend/test/data/light/).

Each compiles with both backends and matches ONNX's stored reference output at ONNX's
tolerances (rtol 1e-3, atol 1e-7) on the input ONNX's runner feeds it. Their gradients are
checked along random directions against central differences in float64.
"""

from __future__ import annotations

import os
import unicodedata

import numpy as np
import pytest

import graphgen

onnx = pytest.importorskip("onnx")
from onnx.backend.test.runner import Runner

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
MODELS = [
    "bvlc_alexnet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "resnet50",
    "shufflenet",
    "squeezenet",
    "vgg19",
    "zfnet512",
]


def model_path(name):
    return os.path.join(LIGHT, f"light_{name}.onnx")


def feeds_for(model, name):
    """The inputs ONNX's backend runner feeds a light model (not its weights)."""
    inits = {i.name for i in model.graph.initializer}
    return {
        x.name: Runner.generate_dummy_data(x, seed=0, name=name, random=False)
        for x in model.graph.input
        if x.name not in inits
    }


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", MODELS)
def test_light_model_matches_the_reference_output(name, backend):
    if backend == "numba":
        pytest.importorskip("numba")
    path = model_path(name)
    model = onnx.load(path)
    module = graphgen.compile(graphgen.load(path, vjp=False), backend=backend)
    out = module.forward(**feeds_for(model, name), **module.init_params())
    ref = onnx.numpy_helper.to_array(
        onnx.load_tensor(os.path.join(LIGHT, f"light_{name}_output_0.pb"))
    )
    got = out[model.graph.output[0].name]
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-7)


def random_weights(module, rng):
    """Weights that keep activations O(1): He-scaled kernels, positive vectors."""
    out = {}
    for name, shape in module.PARAMS.items():
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            out[name] = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        else:
            out[name] = rng.uniform(0.5, 1.5, shape)
    return out


@pytest.mark.parametrize("name", ["squeezenet", "resnet50"])
def test_model_gradients_along_random_directions(name):
    path = model_path(name)
    model = onnx.load(path)
    module = graphgen.compile(graphgen.load(path), dtype="float64")
    rng = np.random.default_rng(0)
    arrays = {k: v.astype(np.float64) for k, v in feeds_for(model, name).items()}
    for k, v in arrays.items():
        if v.ndim == 1:  # batch-norm statistics and biases fed as inputs
            arrays[k] = rng.uniform(0.5, 1.5, v.shape)
    arrays.update(random_weights(module, rng))
    out_name = model.graph.output[0].name
    y = module.forward(**arrays)[out_name]
    cot = rng.standard_normal(y.shape)
    grads = module.vjp({out_name: cot}, **arrays)
    assert sorted(grads) == sorted(module.WRT)

    def f(a):
        return float(np.sum(module.forward(**a)[out_name] * cot))

    for trial in range(2):
        direction = {k: rng.standard_normal(arrays[k].shape) for k in grads}
        analytic = sum(float(np.sum(grads[k] * direction[k])) for k in grads)
        # ReLU and max-pool kinks inside [θ − εd, θ + εd] bias central differences by
        # O(ε); a small ε keeps that well under the tolerance (float64 round-off is
        # ~1e-13 of f here)
        eps = 1e-7
        plus = {k: v + eps * direction.get(k, 0.0) for k, v in arrays.items()}
        minus = {k: v - eps * direction.get(k, 0.0) for k, v in arrays.items()}
        numeric = (f(plus) - f(minus)) / (2 * eps)
        assert abs(analytic - numeric) <= 1e-4 * max(1.0, abs(numeric)), (
            trial,
            analytic,
            numeric,
        )


@pytest.mark.parametrize("name", ["inception_v2", "resnet50"])
def test_imported_model_code_is_formatted_and_lint_clean(name):
    # long ONNX tensor names ("inception_3a/double3x3_reduce/bn/sc_b_0") in every
    # layout: _unpack's checks, wrapped calls, the gradient dict, comments
    from test_codegen import ruff_diff, ruff_lint

    G = graphgen.load(model_path(name), loss="softmax_cross_entropy", labels="y")
    text = graphgen.generate(G)
    diff = ruff_diff(text)
    assert not diff.strip(), diff[:3000]
    # a 45-character key naming a 45-character gradient cannot fit in 88 columns
    problems = ruff_lint(text, name, ignore=["E501"])
    assert not problems, problems[:3000]

    def width(line):  # combining marks (the bar of x̄) take no column
        return sum(not unicodedata.combining(c) for c in line)

    long_lines = [line for line in text.splitlines() if width(line) > 88]
    assert all(line.strip().startswith('"') for line in long_lines), long_lines[:5]
