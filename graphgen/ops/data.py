"""Tensor constants: arrays a graph holds rather than receives.

``constant`` takes no arguments. Its value is one of

- ``value``: a small nested list, written into the generated code as a literal;
- ``fill``: a number, every entry of an array of ``shape`` (ONNX ``ConstantOfShape``);
- ``key``: the name of an array in the graph's weights table (``G.graph["weights"]``),
  stored beside the generated module in an ``.npz`` file and loaded once at import.

Frozen ONNX initializers (``--freeze``) and ONNX ``Constant`` nodes become ``constant``
nodes. No gradient flows into a constant, and no tangent out of one.
"""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import REQUIRED, Op, register


def _norm_constant(in_shapes, attrs):
    shape = attrs["shape"]
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ShapeError(f"attribute shape must be a list of sizes, got {shape!r}")
    given = [k for k in ("value", "fill", "key") if attrs.get(k) is not None]
    if len(given) != 1:
        raise ShapeError(
            "a constant takes exactly one of value, fill or key, got "
            + (", ".join(given) or "none")
        )
    out = {"shape": list(shape), "value": None, "fill": None, "key": None}
    if attrs.get("value") is not None:
        value = np.asarray(attrs["value"], dtype=np.float64)
        if value.size != int(np.prod(shape, dtype=np.int64)):
            raise ShapeError(
                f"value has {value.size} entries, shape {list(shape)} needs "
                f"{int(np.prod(shape, dtype=np.int64))}"
            )
        out["value"] = value.reshape(shape).tolist()
    elif attrs.get("fill") is not None:
        fill = attrs["fill"]
        if isinstance(fill, bool) or not isinstance(fill, (int, float)):
            raise ShapeError(f"attribute fill must be a number, got {fill!r}")
        out["fill"] = float(fill)
    else:
        if not isinstance(attrs["key"], str):
            raise ShapeError(f"attribute key must be a string, got {attrs['key']!r}")
        out["key"] = attrs["key"]
    return out


def _constant_impl(shape, value=None, fill=None, key=None):
    if value is not None:
        return np.asarray(value, dtype=np.float64).reshape(shape)
    if fill is not None:
        return np.full(shape, fill, dtype=np.float64)
    raise ValueError(f"constant {key!r} lives in the weights file, not in the graph")


register(
    Op(
        name="constant",
        args=(),
        shape=lambda s, a: tuple(a["shape"]),
        impl=_constant_impl,
        vjp=None,
        jvp_reason="takes no arguments",
        math="{y} = a constant array of shape {shape}",
        attrs={"shape": REQUIRED, "value": None, "fill": None, "key": None},
        normalize=_norm_constant,
        category="shape",
        folds=False,
        kept=True,
    )
)
