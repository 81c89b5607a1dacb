"""Gradient-test cases for the ops of graphgen/ops/logic.py (merged into test_ops_gradients).

Mask arguments are sampled as 0/1 arrays holding both values (the ``mask`` domain).
"""

from __future__ import annotations

from opcase import Case

_MASKS = [
    Case(((2, 3), (2, 3))),
    Case(((3, 4), (4,))),
    Case(((3, 1), (1, 4))),
    Case(((), (2, 3))),
]

CASES = {
    "where": [
        Case(((2, 3), (2, 3), (2, 3))),
        Case(((1, 4), (3, 4), ())),  # an additive-mask fill: b a number
        Case(((3, 1), (1, 4), (3, 4))),  # a and b broadcast: their gradients sum
        Case(((4, 4), (2, 1, 4, 4), (4,))),
        Case(((2, 3), (2, 3)), args=(0, 1, 1), label="a-is-b"),
        # int64 branches: an int64 choice, exact, no gradient
        Case(((3, 1), (1, 4), (3, 4)), ints=(1, 2), labels=(-9, 9), label="int64"),
    ],
    "take": [
        Case(((5, 3),), {"indices": [[0, 4], [4, -1]]}),  # N-D, repeated, negative
        Case(((2, 4, 3),), {"indices": [1, 1, 0], "axis": 1}),
        Case(((4, 2),), {"indices": 2, "axis": 0}),  # one index: the axis goes
        Case(((3, 2),), {"indices": [0, 0, 0], "axis": -1}),
    ],
    "take_add": [
        Case(((2, 2, 3),), {"indices": [[0, 4], [4, 1]], "axis": 0, "dim": 5}),
        Case(((2, 3, 3),), {"indices": [1, 1, 0], "axis": 1, "dim": 4}),
    ],
    "cumsum": [
        Case(((4,),), {"axis": 0}),
        Case(((2, 3, 4),), {"axis": 1, "exclusive": True}),
        Case(((3, 4),), {"axis": -1, "reverse": True}),
        Case(((3, 4),), {"axis": 0, "exclusive": True, "reverse": True}),
    ],
    # indices sampled in [-size, size): negative and repeated ones
    "gather_elements": [
        Case(((3, 4), (5, 4)), {"axis": 0}, labels=(-3, 3)),
        Case(((2, 3, 4), (2, 3, 6)), {"axis": -1}, labels=(-4, 4)),
        Case(((3, 5), (2, 3)), {"axis": 1}, labels=(0, 5), label="smaller-indices"),
    ],
    "scatter_add_elements": [
        Case(((5, 4), (5, 4)), {"axis": 0, "shape": [3, 4]}, labels=(-3, 3)),
        Case(((2, 3), (2, 3)), {"axis": 1, "shape": [3, 5]}, labels=(0, 5)),
    ],
    "trilu": [
        Case(((3, 4),)),
        Case(((2, 4, 3),), {"k": -1, "upper": False}),
        Case(((3, 5),), {"k": 2}),
        Case(((4, 4),), {"k": 0, "upper": False}),
    ],
    "int_to_float": [Case(((2, 3),), labels=(-5, 5)), Case(((4,),), labels=(0, 3))],
    "int_compare": [
        Case(((2, 3),), {"test": "==", "value": 0}, labels=(0, 2)),
        Case(((2, 3),), {"test": "!=", "value": [0, 1, 2]}, labels=(0, 3)),
        Case(((3, 1),), {"test": "<", "value": [[1, 2]]}, labels=(0, 3)),
        Case(((4,),), {"test": ">=", "value": -1}, labels=(-2, 1)),
        Case(((4,),), {"test": "<=", "value": 1}, labels=(0, 3)),
        Case(((4,),), {"test": ">", "value": 1}, labels=(0, 3)),
    ],
    # index tuples in [-3, 3): repeated and negative
    "gather_nd": [
        Case(((3, 4), (5, 2)), labels=(-3, 3)),
        Case(((3, 4, 2), (2, 2, 1)), labels=(-3, 3)),
        Case(((2, 3, 4), (2, 5, 1)), {"batch_dims": 1}, labels=(-3, 3)),
    ],
    "scatter_add_nd": [
        Case(((5,), (5, 2)), {"batch_dims": 0, "shape": [3, 4]}, labels=(-3, 3)),
        Case(
            ((2, 5, 4), (2, 5, 1)), {"batch_dims": 1, "shape": [2, 3, 4]}, labels=(0, 3)
        ),
    ],
    "is_nan": [Case(((2, 3),)), Case(((),))],
    "logical_not": [Case(((2, 3),)), Case(((4,),))],
    "logical_and": _MASKS,
    "logical_or": _MASKS,
    "logical_xor": _MASKS,
    # int64 results: checked exactly against impl, and no gradient flows through them
    "int_math": [
        Case(((2, 3), (2, 3)), {"fn": fn}, labels=(-7, 8), label=fn)
        for fn in ("add", "sub", "mul")
    ]
    + [
        # divisors of both signs, none 0; dividends of both signs (ONNX Mod's cases)
        Case(((2, 4), (4,)), {"fn": fn}, values={1: [3, -3, 5, -2]}, labels=(-9, 10))
        for fn in ("div", "floordiv", "mod", "fmod")
    ]
    + [Case(((3, 1), ()), {"fn": "mod"}, values={1: 4}, labels=(-9, 10))],
    "compare_ints": [
        Case(((2, 3), (2, 3)), {"test": t}, labels=(0, 3), label=t)
        for t in ("==", "!=", "<", "<=", ">", ">=")
    ]
    + [Case(((3, 1), (1, 4)), {"test": "<"}, labels=(0, 4))],
    "int_constant": [
        Case((), {"value": [[1, -2, 3], [4, 5, 2**40 + 1]]}),  # beyond float32
        Case((), {"value": 7}),
    ],
    "range": [
        Case(((), (), ()), {"size": 5}, values={0: 0, 1: 5, 2: 1}),
        Case(((), (), ()), {"size": 3}, values={0: 2, 1: 11, 2: 3}),  # ceil(9 / 3)
        Case(((), (), ()), {"size": 4}, values={0: 3, 1: -5, 2: -2}),  # counting down
        Case(((), (), ()), {"size": 0}, values={0: 4, 1: 1, 2: 1}),  # empty
    ],
    "constant_of_shape": [
        Case(((2,),), {"shape": [2, 3], "value": 1.5}, values={0: [2, 3]}),
        Case(((1,),), {"shape": [4], "value": -7}, values={0: [4]}),  # int64
        Case(((0,),), {"shape": [], "value": 2.0}, values={0: []}),  # a scalar
    ],
}
NO_GRADIENT = {
    "int_math": "int64 in, int64 out",
    "compare_ints": "its arguments are int64",
    "range": "int64 in, int64 out",
    "int_constant": "takes no arguments",
    "constant_of_shape": "its only argument is int64 (sizes)",
    "int_to_float": "its only argument is int64",
    "int_compare": "its only argument is int64",
    "is_nan": "a 0/1 mask, piecewise constant",
    "logical_not": "a mask of a mask, piecewise constant",
    "logical_and": "a mask of masks, piecewise constant",
    "logical_or": "a mask of masks, piecewise constant",
    "logical_xor": "a mask of masks, piecewise constant",
}
