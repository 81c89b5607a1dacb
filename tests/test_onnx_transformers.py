"""Exported transformers compile and match PyTorch (issue 15): logits, loss and every
parameter's gradient of PyTorch's ``nn.TransformerEncoder`` and a nanoGPT-style decoder
(causal mask from a registered buffer, tied input/output embeddings), exported with the
TorchScript exporter (opset 17). tests/transformer_models.py builds them.

The fixtures in tests/fixtures/transformers/ (the .onnx models and PyTorch's outputs and
gradients in .npz files) let this run without PyTorch; the last test exports the models
afresh when PyTorch is installed.

Gradients are per ONNX initializer; the exporter shares one initializer among PyTorch
parameters of equal value (the encoder's two layers start as copies), stores a tied or
transposed weight as a second initializer, and folds a constant lookup (``wpe`` of
``arange(T)``) into an initializer of its rows. So the comparison is per class of
initializers and parameters linked by equal values (up to a transpose, or a leading block
of rows): the initializers' gradients, summed in PyTorch's layout, against the
parameters' gradients, summed.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import transformer_models as tm

import graphgen

onnx = pytest.importorskip("onnx")

LOGITS_RTOL, GRAD_RTOL = 1e-4, 1e-3
GRAD_FLOOR = 1e-6  # times the largest gradient: gradients zero by construction


def compare(path, ref, backend):
    """Compile the model at ``path`` with a cross-entropy loss; check it against the
    PyTorch reference ``ref``. Returns the worst relative gradient error."""
    G = graphgen.load(path, loss="softmax_cross_entropy", labels="labels")
    m = graphgen.compile(G, backend=backend)
    params = m.init_params()
    feeds = {"idx": ref["idx"], "labels": ref["labels"]}
    out = m.forward(**feeds, **params)
    want = ref["logits"]
    err = np.abs(out["logits"] - want).max() / np.abs(want).max()
    assert err <= LOGITS_RTOL, f"logits differ from PyTorch's by {err:.3g} (relative)"
    loss, grads = m.value_and_grad(**feeds, **params)
    assert abs(loss - float(ref["loss"])) <= LOGITS_RTOL * abs(float(ref["loss"]))

    torch_grads = {k[5:]: ref[k] for k in ref if k.startswith("grad/")}
    # classes of initializers (graphgen's params) and PyTorch params of equal value
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    links = {}
    for pname in torch_grads:
        found = [e.split("|") for e in ref[f"link/{pname}"] if e]
        assert found, f"parameter {pname!r} is no initializer of the model"
        for name, how in found:
            assert name in m.PARAMS, f"initializer {name!r} ({pname}) is not a param"
            links[name, pname] = how
            parent[find(("onnx", name))] = find(("torch", pname))
    for name in m.PARAMS:
        assert any(n == name for n, _ in links), f"param {name!r} is no parameter"
    scale = max(np.abs(g).max() for g in torch_grads.values())
    worst = 0.0
    for root in {find(("torch", p)) for p in torch_grads}:
        members = [p for p in torch_grads if find(("torch", p)) == root]
        want = sum(torch_grads[p] for p in members)
        got = np.zeros_like(want, dtype=np.float64)
        names = {n: how for (n, p), how in links.items() if p in members}
        for name, how in names.items():
            gv = np.asarray(grads[name], dtype=np.float64)
            while gv.ndim > want.ndim and gv.shape[0] == 1:  # an unsqueezed lookup
                gv = gv[0]
            if how == "transposed":
                got += gv.T
            elif how == "rows":
                got[: gv.shape[0]] += gv
            else:
                got += gv
        err = np.abs(got - want).max()
        bound = GRAD_RTOL * np.abs(want).max() + GRAD_FLOOR * scale
        assert err <= bound, (
            f"gradient of {members} differs from PyTorch's by {err:.3g}"
        )
        worst = max(worst, err / max(np.abs(want).max(), GRAD_FLOOR * scale))
    return worst


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", tm.NAMES)
def test_exported_transformer_matches_pytorch(name, backend):
    path = os.path.join(tm.HERE, f"{name}.onnx")
    ref = dict(np.load(os.path.join(tm.HERE, f"{name}.npz")))
    compare(path, ref, backend)


@pytest.mark.parametrize("name", tm.NAMES)
def test_exported_transformer_is_one_compiled_numba_function(name):
    # every op has a nopython form: value_and_grad and forward are one @numba.njit
    # function each (test_exported_transformer_matches_pytorch runs them)
    path = os.path.join(tm.HERE, f"{name}.onnx")
    G = graphgen.load(path, loss="softmax_cross_entropy", labels="labels")
    src = graphgen.generate(G, backend="numba")
    assert "def _value_and_grad_kernel(" in src and "def _forward_kernel(" in src
    fwd = graphgen.generate(graphgen.load(path, vjp=False), backend="numba")
    assert "def _forward_kernel(" in fwd


def test_exported_mask_constant_is_an_argument_of_the_numba_kernel(
    tmp_path, monkeypatch
):
    # at T = CONTEXT the exporter folds nanoGPT's causal mask into a constant array:
    # the compiled function takes it as an argument (one tuple, _constants)
    pytest.importorskip("torch", reason="PyTorch exports the model")
    monkeypatch.setattr(tm, "T", tm.CONTEXT)
    path = str(tmp_path / "nanogpt.onnx")
    tm.export("nanogpt", path)
    src = graphgen.generate(graphgen.load(path, vjp=False), backend="numba")
    assert "def _forward_kernel(" in src
    assert "_constants[0]" in src and "numba.typeof(_FORWARD_CONSTANTS)" in src


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", tm.NAMES)
def test_freshly_exported_transformer_matches_pytorch(name, dynamo, tmp_path):
    pytest.importorskip("torch", reason="PyTorch builds and exports the models afresh")
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    path = str(tmp_path / f"{name}.onnx")
    ref = tm.export(name, path, dynamo=dynamo)  # dynamo: weights in a .onnx.data file
    compare(path, ref, "numpy")


@pytest.mark.parametrize("name", tm.HF_NAMES)
def test_transformers_package_model_matches_pytorch(name, tmp_path):
    pytest.importorskip("torch", reason="PyTorch builds and exports the models")
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    pytest.importorskip("transformers", reason="GPT-2 and LLaMA come from transformers")
    path = str(tmp_path / f"{name}.onnx")
    ref = tm.export(name, path, dynamo=True)
    compare(path, ref, "numpy")
