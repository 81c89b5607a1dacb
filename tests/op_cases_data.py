"""Gradient-test cases for the ops of graphgen/ops/data.py (merged into test_ops_gradients)."""

from __future__ import annotations

from opcase import Case

CASES = {
    "constant": [
        Case((), {"shape": [2, 3], "value": [[1.0, -2.0, 3.5], [0.0, 4.0, -1.0]]}),
        Case((), {"shape": [4], "fill": 0.25}),
        Case((), {"shape": [], "value": 2.0}),
    ],
}
NO_GRADIENT = {"constant": "takes no arguments"}
