"""Gradient-test cases for the ops of graphgen/ops/conv.py (merged into test_ops_gradients).

Every case runs through the registry-wide test: the generated forward against the op's
NumPy reference ``impl``, and ``value_and_grad`` against central finite differences in
float64. Shapes are small (finite differences cost two forward passes per entry) but
cover 1-D, 2-D and 3-D, strides, asymmetric pads, dilations, groups (depthwise too),
every ``auto_pad``, ``ceil_mode`` and ``count_include_pad``, and non-square kernels.
"""

from __future__ import annotations

from opcase import Case


def geo(strides, pads, dilations=None, **more):
    nd = len(strides)
    return {
        "strides": strides,
        "pads": pads,
        "dilations": dilations or [1] * nd,
        **more,
    }


CASES = {
    "conv": [
        Case(((2, 3, 7), (4, 3, 3)), label="1d"),
        Case(
            ((2, 2, 9), (3, 2, 3)),
            {"strides": [2], "pads": [1, 2], "dilations": [2]},
            label="1d-stride-pads-dilation",
        ),
        Case(((2, 3, 5, 5), (4, 3, 3, 3)), {"pads": [1, 1, 1, 1]}, label="2d-pad1"),
        Case(
            ((1, 3, 6, 5), (2, 3, 2, 3)),
            {"strides": [2, 1], "pads": [0, 1, 2, 0]},
            label="2d-nonsquare-kernel-strides-asymmetric-pads",
        ),
        Case(
            ((1, 2, 7, 6), (3, 2, 3, 2)),
            {"dilations": [2, 1], "strides": [1, 2], "pads": [1, 0, 1, 1]},
            label="2d-dilations",
        ),
        Case(((1, 4, 5, 5), (6, 2, 3, 3)), {"groups": 2}, label="2d-group2"),
        Case(
            ((2, 3, 5, 5), (3, 1, 3, 3)),
            {"groups": 3, "pads": [1, 1, 1, 1], "strides": [2, 2]},
            label="2d-depthwise",
        ),
        Case(((1, 3, 4, 4), (6, 1, 2, 2)), {"groups": 3}, label="2d-depthwise-x2"),
        Case(
            ((1, 2, 5, 6), (3, 2, 3, 3)),
            {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
            label="2d-same-upper-stride2",
        ),
        Case(
            ((1, 2, 4, 4), (2, 2, 2, 2)),
            {"auto_pad": "SAME_LOWER"},
            label="2d-same-lower-even-kernel",
        ),
        Case(
            ((1, 2, 7, 6), (2, 2, 3, 3)),
            {"auto_pad": "VALID", "strides": [2, 2], "kernel_shape": [3, 3]},
            label="2d-valid-kernel_shape",
        ),
        Case(((2, 4, 3, 3), (5, 4, 1, 1)), label="2d-1x1"),
        Case(((1, 4, 5, 5), (3, 4, 1, 1)), {"strides": [2, 2]}, label="2d-1x1-stride2"),
        Case(
            ((1, 2, 3, 4, 3), (2, 2, 2, 2, 2)),
            {"pads": [1, 0, 1, 0, 1, 0]},
            label="3d",
        ),
    ],
    "conv_grad_input": [
        Case(
            ((2, 4, 3, 3), (4, 3, 3, 3)),
            {**geo([2, 2], [1, 1, 1, 1]), "input_spatial": [5, 5]},
            label="2d-stride2-pad1",
        ),
        Case(
            ((1, 4, 3, 3), (4, 2, 3, 3)),
            {**geo([2, 2], [1, 1, 1, 1]), "input_spatial": [6, 6]},
            label="2d-uncovered-edge",
        ),
        Case(
            ((1, 6, 3, 3), (6, 2, 3, 3)),
            {**geo([1, 1], [0, 0, 0, 0]), "groups": 2, "input_spatial": [5, 5]},
            label="2d-group2",
        ),
        Case(
            ((2, 4, 4), (4, 3, 3)),
            {**geo([1], [1, 0], [2]), "input_spatial": [7]},
            label="1d-dilation",
        ),
        Case(
            ((1, 3, 3, 3), (3, 2, 1, 1)),
            {**geo([2, 2], [0, 0, 0, 0]), "input_spatial": [5, 5]},
            label="2d-1x1-stride2",
        ),
        Case(
            ((1, 3, 2, 2), (3, 2, 1, 1)),
            {**geo([1, 1], [0, 0, 0, 0]), "input_spatial": [2, 2]},
            label="2d-1x1",
        ),
    ],
    "conv_grad_weight": [
        Case(
            ((2, 3, 5, 5), (2, 4, 3, 3)),
            {**geo([2, 2], [1, 1, 1, 1]), "kernel_shape": [3, 3]},
            label="2d-stride2-pad1",
        ),
        Case(
            ((1, 4, 5, 5), (1, 6, 3, 3)),
            {**geo([1, 1], [0, 0, 0, 0]), "groups": 2, "kernel_shape": [3, 3]},
            label="2d-group2",
        ),
        Case(
            ((1, 3, 4, 4), (1, 3, 4, 4)),
            {**geo([1, 1], [1, 1, 1, 1]), "groups": 3, "kernel_shape": [3, 3]},
            label="2d-depthwise",
        ),
        Case(
            ((2, 3, 7), (2, 4, 4)),
            {**geo([1], [1, 0], [2]), "kernel_shape": [3]},
            label="1d-dilation",
        ),
        Case(
            ((1, 2, 5, 5), (1, 3, 3, 3)),
            {**geo([2, 2], [0, 0, 0, 0]), "kernel_shape": [1, 1]},
            label="2d-1x1-stride2",
        ),
    ],
    "max_pool": [
        Case(((2, 3, 5, 5),), {"kernel_shape": [2, 2]}, label="2d"),
        Case(
            ((1, 2, 5, 5),),
            {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
            label="2d-k3-s2-pad1",
        ),
        Case(
            ((1, 2, 6, 6),),
            {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
            label="2d-ceil",
        ),
        Case(
            ((1, 2, 5, 5),),
            {
                "kernel_shape": [2, 2],
                "strides": [2, 2],
                "pads": [1, 1, 1, 1],
                "ceil_mode": 1,
            },
            label="2d-ceil-last-window-in-pad-dropped",
        ),
        Case(
            ((1, 2, 6, 7),),
            {"kernel_shape": [2, 2], "dilations": [2, 3]},
            label="2d-dilations",
        ),
        Case(((2, 3, 7),), {"kernel_shape": [3], "strides": [2]}, label="1d"),
        Case(
            ((1, 2, 5, 6),),
            {"kernel_shape": [2, 3], "pads": [0, 1, 1, 0]},
            label="2d-nonsquare-asymmetric-pads",
        ),
        Case(
            ((1, 2, 5, 5),),
            {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
            label="2d-same-upper",
        ),
        Case(
            ((1, 1, 4, 4),),
            {"kernel_shape": [2, 2], "auto_pad": "SAME_LOWER"},
            label="2d-same-lower",
        ),
        Case(
            ((1, 2, 5, 5),),
            {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "VALID"},
            label="2d-valid",
        ),
        Case(((1, 1, 3, 4, 4),), {"kernel_shape": [2, 2, 2]}, label="3d"),
    ],
    "max_pool_grad": [
        Case(
            ((1, 2, 3, 3), (1, 2, 5, 5)),
            {"kernel_shape": [3, 3], **geo([2, 2], [1, 1, 1, 1])},
            label="2d-k3-s2-pad1",
        ),
        Case(
            ((1, 2, 3, 3), (1, 2, 6, 6)),
            {"kernel_shape": [3, 3], **geo([2, 2], [0, 0, 0, 0]), "ceil_mode": 1},
            label="2d-ceil",
        ),
        Case(
            ((2, 2, 3), (2, 2, 7)),
            {"kernel_shape": [2], **geo([2], [0, 0])},
            label="1d",
        ),
    ],
    "max_pool_select": [
        Case(
            ((1, 2, 5, 5), (1, 2, 5, 5)),
            {"kernel_shape": [3, 3], **geo([2, 2], [1, 1, 1, 1])},
            label="2d-k3-s2-pad1",
        ),
        Case(
            ((1, 2, 6, 6), (1, 2, 6, 6)),
            {"kernel_shape": [3, 3], **geo([2, 2], [0, 0, 0, 0]), "ceil_mode": 1},
            label="2d-ceil",
        ),
        Case(
            ((1, 2, 5, 5),),
            {"kernel_shape": [2, 2], **geo([1, 1], [0, 0, 0, 0], [2, 1])},
            args=(0, 0),
            label="2d-select-x-from-x-is-max_pool",
        ),
    ],
    "avg_pool": [
        Case(((2, 3, 5, 5),), {"kernel_shape": [2, 2]}, label="2d"),
        Case(
            ((1, 2, 5, 5),),
            {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
            label="2d-pad-exclude",
        ),
        Case(
            ((1, 2, 5, 5),),
            {
                "kernel_shape": [3, 3],
                "strides": [2, 2],
                "pads": [1, 1, 1, 1],
                "count_include_pad": 1,
            },
            label="2d-pad-include",
        ),
        Case(
            ((1, 2, 6, 7),),
            {
                "kernel_shape": [3, 2],
                "strides": [2, 2],
                "pads": [1, 0, 1, 1],
                "ceil_mode": 1,
            },
            label="2d-ceil-exclude",
        ),
        Case(
            ((1, 2, 6, 7),),
            {
                "kernel_shape": [3, 2],
                "strides": [2, 2],
                "pads": [1, 0, 1, 1],
                "ceil_mode": 1,
                "count_include_pad": 1,
            },
            label="2d-ceil-include",
        ),
        Case(((2, 3, 7),), {"kernel_shape": [3], "strides": [2]}, label="1d"),
        Case(
            ((1, 2, 5, 5),),
            {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
            label="2d-same-upper",
        ),
        Case(
            ((1, 1, 4, 4),),
            {"kernel_shape": [2, 2], "auto_pad": "SAME_LOWER", "count_include_pad": 1},
            label="2d-same-lower-include",
        ),
        Case(
            ((1, 2, 6, 6),),
            {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 1, 0, 0]},
            label="2d-dilations",
        ),
        Case(((1, 1, 3, 4, 4),), {"kernel_shape": [2, 2, 2]}, label="3d"),
    ],
    "avg_pool_grad": [
        Case(
            ((1, 2, 3, 3),),
            {
                "kernel_shape": [3, 3],
                **geo([2, 2], [1, 1, 1, 1]),
                "input_spatial": [5, 5],
            },
            label="2d-exclude-pad",
        ),
        Case(
            ((1, 2, 3, 3),),
            {
                "kernel_shape": [3, 3],
                **geo([2, 2], [1, 1, 1, 1]),
                "count_include_pad": 1,
                "input_spatial": [5, 5],
            },
            label="2d-include-pad",
        ),
        Case(
            ((1, 2, 4, 4),),
            {
                "kernel_shape": [3, 2],
                **geo([2, 2], [1, 0, 1, 1]),
                "ceil_mode": 1,
                "count_include_pad": 1,
                "input_spatial": [6, 7],
            },
            label="2d-ceil-include",
        ),
        Case(
            ((2, 3, 3),),
            {"kernel_shape": [3], **geo([2], [0, 0]), "input_spatial": [7]},
            label="1d",
        ),
    ],
}

# Every conv and pooling op has a VJP (linear or bilinear internal ops included).
NO_GRADIENT: dict = {}
