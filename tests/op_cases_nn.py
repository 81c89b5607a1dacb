"""Gradient-test cases for the ops of graphgen/ops/nn.py (merged into test_ops_gradients)."""

from __future__ import annotations

CASES: dict = {}
NO_GRADIENT: dict = {}
