"""Gradient-test cases for the ops of graphgen/ops/attention.py (merged into
test_ops_gradients and test_jvp_nn).

Attention shapes are (batch, heads, T, d); ``q`` with more heads than ``k`` and ``v`` is
grouped-query attention. A keep mask (``*_bool``) is int64 0/1, sampled by the harness
from ``labels=(0, 2)``.
"""

from __future__ import annotations

from opcase import Case

UNARY = [Case(((2, 3),)), Case(((),)), Case(((4,),))]


def _attention(name, masked):
    q, kv = (1, 2, 3, 4), (1, 2, 5, 4)
    gq, gkv, gv = (2, 4, 3, 2), (2, 2, 3, 2), (2, 2, 3, 3)
    if name.startswith("attention_probs"):
        base = [((q, kv), {}), ((gq, gkv), {"causal": True, "scale": 0.7})]
    else:
        base = [
            ((q, kv, (1, 2, 5, 3)), {}),
            ((gq, gkv, gv), {"causal": True}),
            ((gq, gkv, gv), {"scale": 0.3}),
        ]
    out = []
    for shapes, attrs in base:
        t, s = shapes[0][2], shapes[1][2]
        if masked == "add":
            for mask in ((t, s), (shapes[0][0], 1, t, s)):
                out.append(Case(shapes + (mask,), attrs))
        elif masked == "bool":
            out.append(Case(shapes + ((t, s),), attrs, labels=(0, 2)))
        else:
            out.append(Case(shapes, attrs))
    return out


CASES = {
    "rms_norm": [
        Case(((2, 3, 4), (4,))),
        Case(((2, 3, 4), (3, 4)), {"axis": 1}),
        Case(((3, 4), (1,)), {"epsilon": 0.1}),
        Case(((5,), ())),
        Case(((2, 4),), {"axis": 0}, args=(0, 0), label="x-is-scale"),
    ],
    "silu": UNARY,
    "swish": UNARY + [Case(((2, 3),), {"alpha": 1.702})],
    "rotary_embedding": [
        Case(((2, 3, 4), (3, 2), (3, 2))),
        Case(((2, 3, 4), (3, 2), (3, 2)), {"interleaved": True}),
        Case(((1, 2, 3, 6), (1, 1, 3, 3), (3, 3)), {"interleaved": True}),
        Case(((2, 2, 4), (2, 2)), args=(0, 1, 1), label="cos-is-sin"),
    ],
    "masked_softmax": [
        Case(((3, 4), (3, 4))),
        Case(((2, 3, 4), (3, 4)), {"axis": -1}),
        Case(((2, 3, 4), (1, 4)), {"axis": 1}),
    ],
    "masked_softmax_bool": [
        Case(((3, 4), (3, 4)), labels=(0, 2)),
        Case(((2, 3, 4), (1, 4)), {"axis": 1}, labels=(0, 2)),
    ],
    "attention": _attention("attention", None),
    "masked_attention": _attention("masked_attention", "add"),
    "masked_attention_bool": _attention("masked_attention_bool", "bool"),
    "attention_probs": _attention("attention_probs", None),
    "attention_probs_masked": _attention("attention_probs_masked", "add"),
    "attention_probs_bool": _attention("attention_probs_bool", "bool"),
}

NO_GRADIENT: dict = {}

CASES["attention_apply"] = [
    Case(((1, 2, 3, 4), (1, 2, 4, 5))),
    Case(((2, 4, 3, 2), (2, 2, 2, 3)), label="grouped"),
]
