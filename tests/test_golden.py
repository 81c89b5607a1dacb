"""Golden files: the generated NumPy modules of the examples, byte for byte.

A change to the code generator that changes its output shows up here as a diff to review.
When the change is intended, regenerate with::

    GRAPHGEN_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py

and commit the updated ``tests/golden/*.py`` together with the change.
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


@pytest.mark.parametrize("name", NAMES)
def test_generated_module_matches_golden_file(name):
    spec = EXAMPLES / f"{name}.yaml"
    text = graphgen.generate(graphgen.load(spec), backend="numpy")
    golden = GOLDEN / f"{name}.py"
    if UPDATE:
        golden.write_bytes(text.encode("utf-8"))
    assert golden.is_file(), (
        f"missing golden file {golden}; create it with GRAPHGEN_UPDATE_GOLDEN=1"
    )
    expected = golden.read_bytes().decode("utf-8")
    if text != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=f"tests/golden/{name}.py",
                tofile="generated",
            )
        )
        pytest.fail(
            f"generated module for examples/{name}.yaml differs from its golden file "
            f"(set GRAPHGEN_UPDATE_GOLDEN=1 to accept):\n{diff}"
        )
    assert text.encode("utf-8") == golden.read_bytes()
