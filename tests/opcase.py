"""``Case``: one way to call an op in the registry-wide gradient test.

It lives in its own module so that test_ops_gradients.py and the op families' case tables
(op_cases_<family>.py, which that module imports) share one definition.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Case:
    """One way to call an op.

    ``shapes`` has one shape per distinct input array; ``args`` says which input each
    argument position uses (default: input i for argument i), so ``args=(0, 0)`` is
    ``op(x, x)``.
    """

    shapes: tuple
    attrs: dict = dataclasses.field(default_factory=dict)
    args: tuple | None = None
    label: str = ""
    labels: tuple | None = None  # (low, high) for int64 arguments (default [0, depth))
    values: dict | None = None  # input index -> its int64 value, fixed (range's ends)
    ints: tuple = ()  # inputs given as int64 where the op takes either (where's branches)

    def arg_inputs(self):
        return self.args if self.args is not None else tuple(range(len(self.shapes)))

    def ident(self):
        if self.label:
            return self.label
        shapes = "_".join("x".join(map(str, s)) or "scalar" for s in self.shapes)
        attrs = ",".join(f"{k}={v}" for k, v in self.attrs.items())
        shared = f"args{list(self.args)}" if self.args is not None else ""
        return "-".join(p for p in (shapes, attrs, shared) if p)
