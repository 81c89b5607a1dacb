"""Golden files: generated modules of the examples, byte for byte.

NumPy modules of tiny, fanout and mlp (``tests/golden/<name>.py``), and Numba modules of
tiny, fanout, mlp and the LeNet ONNX model under each option set (default, ``whole=False``,
``parallel``, ``fastmath``) in both dtypes (``tests/golden/numba/<name>_<variant>_<dtype>.py``).

A change to the code generator that changes its output shows up here as a diff to review.
When the change is intended, regenerate with::

    GRAPHGEN_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py

and commit the updated golden files together with the change.
"""

from __future__ import annotations

import difflib
import os

import pytest
from conftest import EXAMPLES, REPO

import graphgen

GOLDEN = REPO / "tests" / "golden"
NAMES = ["tiny", "fanout", "mlp"]
UPDATE = os.environ.get("GRAPHGEN_UPDATE_GOLDEN") == "1"

NUMBA_MODELS = {
    "tiny": "tiny.yaml",
    "fanout": "fanout.yaml",
    "mlp": "mlp.yaml",
    "lenet": "lenet.onnx",
}
# The default option set pins transcendentals to what it is without SVML, so that the
# goldens do not depend on whether this environment's Numba has Intel's SVML.
NUMBA_VARIANTS = {
    "default": {"transcendentals": "inline"},
    "split": {"transcendentals": "inline", "whole": False},
    "parallel": {"parallel": True},
    "fastmath": {"fastmath": True},
}


def _compare(text, golden, label):
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(text.encode("utf-8"))
    assert golden.is_file(), (
        f"missing golden file {golden}; create it with GRAPHGEN_UPDATE_GOLDEN=1"
    )
    expected = golden.read_bytes().decode("utf-8")
    if text != expected:
        rel = golden.relative_to(REPO)
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=str(rel),
                tofile="generated",
            )
        )
        pytest.fail(
            f"generated module for {label} differs from {rel} "
            f"(set GRAPHGEN_UPDATE_GOLDEN=1 to accept):\n{diff}"
        )
    assert text.encode("utf-8") == golden.read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_generated_module_matches_golden_file(name):
    spec = EXAMPLES / f"{name}.yaml"
    text = graphgen.generate(graphgen.load(spec), backend="numpy")
    _compare(text, GOLDEN / f"{name}.py", f"examples/{name}.yaml")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("variant", list(NUMBA_VARIANTS))
@pytest.mark.parametrize("name", list(NUMBA_MODELS))
def test_numba_module_matches_golden_file(name, variant, dtype):
    if name == "lenet":
        pytest.importorskip("onnx")
    G = graphgen.load(EXAMPLES / NUMBA_MODELS[name])
    text = graphgen.generate(G, backend="numba", dtype=dtype, **NUMBA_VARIANTS[variant])
    _compare(
        text,
        GOLDEN / "numba" / f"{name}_{variant}_{dtype}.py",
        f"examples/{NUMBA_MODELS[name]} (numba, {variant}, {dtype})",
    )


# forward mode (issue 17): the module of tiny with --hvp (jvp's statements are hvp's
# forward half), in both backends
@pytest.mark.parametrize(
    "backend, options",
    [("numpy", {}), ("numba", {"transcendentals": "inline"})],
)
def test_hvp_module_matches_golden_file(backend, options):
    G = graphgen.load(EXAMPLES / "tiny.yaml")
    text = graphgen.generate(G, backend=backend, hvp=True, **options)
    _compare(text, GOLDEN / "forward" / f"tiny_hvp_{backend}.py", "tiny.yaml --hvp")
