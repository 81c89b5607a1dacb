"""Gradient-test cases for the ops of graphgen/ops/nn.py (merged into test_ops_gradients).

``labels=(low, high)`` in a ``Case`` makes the harness sample int64
arguments in ``[low, high)``, negative indices included, instead of ``[0, depth)``.
"""

from __future__ import annotations

from opcase import Case


def _per_channel(x, n, **attrs):
    c = x[1]
    return Case((x,) + ((c,),) * n, attrs)


UNARY = [Case(((2, 3),)), Case(((),)), Case(((4,),))]

CASES = {
    "batch_norm": [
        _per_channel((2, 3, 4), 4),
        _per_channel((4, 3), 4),
        _per_channel((2, 3, 2, 2), 4, epsilon=0.1),
    ],
    "batch_norm_train": [
        _per_channel((4, 3), 2),
        _per_channel((2, 3, 4), 2),
        _per_channel((2, 3, 2, 2), 2, epsilon=1e-3),
        Case(((2, 3, 4), (3,)), args=(0, 1, 1), label="scale-is-bias"),
    ],
    "channel_var": [_per_channel((2, 3, 4), 1), _per_channel((4, 3), 1)],
    "channel_dot": [
        Case(((2, 3, 4), (2, 3, 4), (3,))),
        Case(((4, 3), (4, 3), (3,))),
        Case(((2, 3, 2), (3,)), args=(0, 0, 1), label="g-is-x"),
    ],
    "batch_norm_dx": [
        Case(((2, 3, 4), (2, 3, 4), (3,), (3,), (3,), (3,))),
        Case(((4, 3), (4, 3), (3,), (3,), (3,), (3,))),
    ],
    "layer_norm": [
        Case(((2, 3, 4), (4,), (4,))),
        Case(((2, 3, 4), (3, 4), (4,)), {"axis": 1}),
        Case(((2, 3, 4), (1, 4), ()), {"axis": 0, "epsilon": 0.01}),
        Case(((3, 4), (3, 4), (1,)), {"axis": -2}),
        Case(((5,), (5,), ())),
    ],
    "lrn": [
        Case(((2, 5, 3),), {"size": 3, "alpha": 1.0}),
        Case(((1, 6, 2, 2),), {"size": 4, "alpha": 0.5, "beta": 0.6, "bias": 2.0}),
        Case(((2, 3),), {"size": 5, "alpha": 0.8}),
        Case(((2, 4, 2),), {"size": 1, "alpha": 2.0}),
        Case(((1, 3, 2),), {"size": 2}),
    ],
    "channel_window_sum": [
        Case(((2, 5, 3),), {"before": 1, "after": 2}),
        Case(((2, 3),), {"before": 3, "after": 0}),
        Case(((1, 4, 2),), {"before": 0, "after": 0}),
    ],
    "pad": [
        Case(((2, 3),), {"pads": [1, 0, 2, 1]}),
        Case(((2, 3, 4),), {"pads": [0, -1, 1, 1, 2, -2], "value": 1.5}),
        Case(((3,),), {"pads": [-1, -1]}),
        Case(((3, 2),), {"pads": [-2, 1, 3, 0]}),
        Case(((),), {"pads": []}),
    ],
    "gather": [
        Case(((5, 3), (4,)), labels=(-5, 5)),
        Case(((2, 5, 3), (2, 2)), {"axis": 1}, labels=(-5, 5)),
        Case(((4,), ()), labels=(0, 4)),
        Case(((3, 4), (2, 3)), {"axis": -1}, labels=(-4, 4)),
        Case(((3, 2), (8,)), labels=(0, 3), label="repeated-rows"),
    ],
    "scatter_add": [
        Case(((4, 3), (4,)), {"axis": 0, "dim": 5}, labels=(-5, 5)),
        Case(((2, 2, 2, 3), (2, 2)), {"axis": 1, "dim": 5}, labels=(-5, 5)),
        Case(((6,), (6,)), {"axis": 0, "dim": 2}, labels=(0, 2)),
        Case(((2, 3), (3,)), {"axis": -1, "dim": 4}, labels=(0, 4)),
    ],
    "erf": UNARY + [Case(((40,),), label="wide")],
    "erf_grad": UNARY,
    "gelu": UNARY
    + [
        Case(((2, 3),), {"approximate": "tanh"}),
        Case(((5,),), {"approximate": "none"}),
    ],
    "gelu_grad": UNARY
    + [Case(((2, 3),), {"approximate": "tanh"}), Case(((),), {"approximate": "tanh"})],
    "clip": [
        Case(((3, 4),), {"min": -0.5, "max": 0.5}),
        Case(((3, 4),), {"min": 0.1}),
        Case(((3, 4),), {"max": -0.2}),
        Case(((2, 3),)),
        Case(((2, 3),), {"min": 1, "max": -1}, label="min-above-max"),
        Case(((),), {"min": -1.0, "max": 1.0}),
    ],
}

NO_GRADIENT: dict = {}
