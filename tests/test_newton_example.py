"""examples/newton.py (issue 17): Newton-CG with the generated ``hvp`` beats gradient
descent in iterations and finds SciPy trust-ncg's minimum to 1e-8."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import EXAMPLES

pytest.importorskip("scipy")


def _newton():
    spec = importlib.util.spec_from_file_location("newton", EXAMPLES / "newton.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_newton_cg_with_generated_hvp(name):
    r = _newton().run(name)
    assert r["grad_norm"] <= 1e-10
    # gradient descent reached the same loss, in many more iterations
    assert r["gd_loss"] <= r["loss"] + 1e-8
    assert r["newton_iterations"] * 10 < r["gd_iterations"]
    # the same minimum as scipy's trust-ncg (given the module's gradient and hvp)
    assert abs(r["loss"] - r["scipy_loss"]) <= 1e-8
    assert r["max_param_diff"] <= 1e-8
