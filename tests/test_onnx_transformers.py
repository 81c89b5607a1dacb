"""Exported transformers compile and match PyTorch (issue 15): logits, loss and every
parameter's gradient of PyTorch's ``nn.TransformerEncoder``, a nanoGPT-style decoder
(causal mask from a registered buffer, tied input/output embeddings), and GPT-2, BERT,
LLaMA and ViT from ``transformers`` configs. tests/transformer_models.py builds them.

The fixtures in tests/fixtures/transformers/ (the .onnx models and PyTorch's outputs and
gradients in .npz files: encoder, nanoGPT, BERT and ViT exported by the TorchScript
exporter, LLaMA by the dynamo exporter) let this run without PyTorch, with both backends;
with PyTorch (and transformers) installed, the other tests export the models afresh with
each exporter that can export them and check them with the NumPy backend.

Gradients are per ONNX initializer; the exporters store a tied or transposed weight as a
second initializer, and fold a constant lookup (``wpe`` of ``arange(T)``, BERT's token
types of zeros, ViT's class token expanded to the batch) into an initializer of its
rows, maybe broadcast. So the comparison is per class of initializers and parameters
linked by equal values (up to a transpose, a leading block of rows, a broadcast): the
initializers' gradients, summed in PyTorch's layout, against the parameters' gradients,
summed. LLaMA's rotary cos/sin tables, folded from the ``inv_freq`` buffer, are frozen.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import transformer_models as tm

import graphgen
from graphgen import api

onnx = pytest.importorskip("onnx")

# relative tolerances of logits and loss, and of gradients, per dtype; in float64 the
# models' own float32 round trips bound the agreement (transformers' eager attention
# runs its softmax, LLaMA its RMSNorm, in float32; graphgen passes a float-to-float
# Cast through)
TOLERANCES = {"float32": (1e-4, 1e-3), "float64": (1e-6, 1e-5)}
GRAD_FLOOR = 1e-6  # times the largest gradient: gradients zero by construction


def compare(path, ref, backend):
    """Compile the model at ``path`` with a cross-entropy loss; check it against the
    PyTorch reference ``ref``. Returns the worst relative gradient error."""
    G = graphgen.load(
        path,
        loss="softmax_cross_entropy",
        labels="labels",
        freeze=tm.from_buffers(path),
    )
    dtype = ref["logits"].dtype.name
    assert G.graph["dtype"] == dtype, "the module's dtype is not the exported one"
    logits_rtol, grad_rtol = TOLERANCES[dtype]
    m = graphgen.compile(G, backend=backend)
    params = m.init_params()
    feeds = {k: v for k, v in ref.items() if k in m.INPUTS}
    out = m.forward(**feeds, **params)
    want = ref["logits"]
    err = np.abs(out["logits"] - want).max() / np.abs(want).max()
    assert err <= logits_rtol, f"logits differ from PyTorch's by {err:.3g} (relative)"
    loss, grads = m.value_and_grad(**feeds, **params)
    assert abs(loss - float(ref["loss"])) <= logits_rtol * abs(float(ref["loss"]))

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
    # graphgen names the initializers holding one parameter (not a broadcast lookup:
    # that holds a value of its own shape), and no others
    together = {n: k for k, grp in enumerate(api.shared_params(G)) for n, _ in grp}
    for pname in torch_grads:
        names = [n for (n, p), how in links.items() if p == pname and how[0] != "b"]
        if len(names) > 1:
            assert {together.get(n, n) for n in names} == {together.get(names[0])}, (
                f"graphgen does not group {names} ({pname})"
            )
    for grp in api.shared_params(G):
        roots = {find(("onnx", n)) for n, _ in grp}
        assert len(roots) == 1, f"graphgen groups {grp}, copies of no one parameter"
    scale = max(np.abs(g).max() for g in torch_grads.values())
    worst = 0.0
    for root in {find(("torch", p)) for p in torch_grads}:
        members = [p for p in torch_grads if find(("torch", p)) == root]
        want = sum(torch_grads[p] for p in members)
        got = np.zeros_like(want, dtype=np.float64)
        names = {n: how for (n, p), how in links.items() if p in members}
        for name, how in names.items():
            got += tm.to_param(grads[name], how, want.shape)
        err = np.abs(got - want).max()
        bound = grad_rtol * np.abs(want).max() + GRAD_FLOOR * scale
        assert err <= bound, (
            f"gradient of {members} differs from PyTorch's by {err:.3g}"
        )
        worst = max(worst, err / max(np.abs(want).max(), GRAD_FLOOR * scale))
    return worst


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", tm.NAMES + tuple(tm.HF_FIXTURES))
def test_exported_transformer_matches_pytorch(name, backend):
    path = os.path.join(tm.HERE, f"{name}.onnx")
    ref = dict(np.load(os.path.join(tm.HERE, f"{name}.npz")))
    compare(path, ref, backend)


@pytest.mark.parametrize("name", tm.NAMES)
def test_exported_transformer_is_one_compiled_numba_function(name):
    # with whole=True every op has a nopython form: value_and_grad and forward are one
    # @numba.njit function each; automatic mode keeps them at the Python level (their
    # first call compiled ~5x longer whole: nanoGPT 21 s -> 116 s)
    path = os.path.join(tm.HERE, f"{name}.onnx")
    G = graphgen.load(path, loss="softmax_cross_entropy", labels="labels")
    src = graphgen.generate(G, backend="numba", whole=True)
    assert "def _value_and_grad_kernel(" in src and "def _forward_kernel(" in src
    default = graphgen.generate(G, backend="numba")
    assert "def _value_and_grad_kernel(" not in default
    fwd = graphgen.load(path, vjp=False)
    assert "def _forward_kernel(" in graphgen.generate(fwd, backend="numba", whole=True)


def test_exported_mask_constant_is_an_argument_of_the_numba_kernel(
    tmp_path, monkeypatch
):
    # at T = CONTEXT the exporter folds nanoGPT's causal mask into a constant array:
    # the compiled function takes it as an argument (one tuple, _constants)
    pytest.importorskip("torch", reason="PyTorch exports the model")
    monkeypatch.setattr(tm, "T", tm.CONTEXT)
    path = str(tmp_path / "nanogpt.onnx")
    tm.export("nanogpt", path)
    G = graphgen.load(path, vjp=False)
    src = graphgen.generate(G, backend="numba", whole=True)
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


@pytest.mark.parametrize(
    ("name", "dynamo"),
    tm.HF_EXPORTS,
    ids=[f"{n}-{'dynamo' if d else 'torchscript'}" for n, d in tm.HF_EXPORTS],
)
def test_transformers_package_model_matches_pytorch(name, dynamo, tmp_path):
    pytest.importorskip("torch", reason="PyTorch builds and exports the models")
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    pytest.importorskip("transformers", reason="these models come from transformers")
    path = str(tmp_path / f"{name}.onnx")
    ref = tm.export(name, path, dynamo=dynamo)
    compare(path, ref, "numpy")


FLOAT64 = (("nanogpt", False), ("bert", False), ("vit", True), ("llama", True))


@pytest.mark.parametrize(
    ("name", "dynamo"),
    FLOAT64,
    ids=[f"{n}-{'dynamo' if d else 'torchscript'}" for n, d in FLOAT64],
)
def test_float64_export_matches_pytorch(name, dynamo, tmp_path):
    pytest.importorskip("torch", reason="PyTorch builds and exports the models")
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    if name in tm.HF_FIXTURES:
        pytest.importorskip(
            "transformers", reason="these models come from transformers"
        )
    path = str(tmp_path / f"{name}.onnx")
    ref = tm.export(name, path, dynamo=dynamo, dtype="float64")
    compare(path, ref, "numpy")
