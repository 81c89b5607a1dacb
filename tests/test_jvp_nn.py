"""JVP rules of the ops in graphgen/ops/nn.py and graphgen/ops/conv.py, op by op.

Every case of ``op_cases_nn`` and ``op_cases_conv`` builds ``y = op(args...)`` on its own,
adds the nodes the op's JVP rule (and VJP rule) build to that graph through the adjoint
pass's :class:`Builder`, and evaluates them with the ops' NumPy ``impl``
(:func:`graphgen.views.values.evaluate`), in float64:

- per differentiable input, the sum of its arguments' tangent contributions (broadcast to
  ``y``'s shape, as the forward pass does) against central differences of ``impl`` along
  a random direction;
- the dot-product identity ⟨ȳ, J·ẋ⟩ = ⟨Jᵀ·ȳ, ẋ⟩ against the op's VJP rule.

Second order: the Hessian-vector product of ``loss = Σ w·y``, the forward-mode pass
(:func:`graphgen.jvp`) over its adjoint graph, against central differences of the
gradient; this runs the JVP rules of the backward-only ops the VJP rules build.
"""

from __future__ import annotations

import zlib

import numpy as np
import op_cases_attention
import op_cases_conv
import op_cases_nn
import pytest
from conftest import add_weighted_loss, build_graph
from test_ops_gradients import sample

import graphgen
from graphgen import graph as g
from graphgen.ops import REGISTRY, base
from graphgen.passes.adjoint import Builder
from graphgen.views.values import evaluate

FAMILIES = ("graphgen.ops.nn", "graphgen.ops.conv", "graphgen.ops.attention")
CASES = {**op_cases_nn.CASES, **op_cases_conv.CASES, **op_cases_attention.CASES}
FAMILY_OPS = sorted(n for n, op in REGISTRY.items() if op.impl.__module__ in FAMILIES)
EPS = 1e-6


def test_the_case_tables_cover_the_families():
    assert sorted(CASES) == FAMILY_OPS


@pytest.mark.parametrize("op_name", FAMILY_OPS)
def test_every_op_has_a_jvp_rule_or_a_reason(op_name):
    op = REGISTRY[op_name]
    assert op.jvp is not None or op.jvp_reason, (
        f"{op_name} has neither a JVP rule nor a jvp_reason"
    )


def _params():
    for name in FAMILY_OPS:
        for case in CASES[name]:
            yield pytest.param(name, case, id=f"{name}-{case.ident()}")


def _one_op(op, case, arrays):
    """The prepared graph ``y = op(in...)`` with inputs ``dot<j>`` (a tangent per float
    input) and ``ybar`` (a cotangent of y)."""
    arg_inputs = case.arg_inputs()
    int_inputs = {arg_inputs[i] for i in op.int_args}
    floats = [j for j in range(len(case.shapes)) if j not in int_inputs]
    spec = {}
    for j, shape in enumerate(case.shapes):
        spec[f"in{j}"] = ("input", shape, "int64" if j in int_inputs else "float64")
    for j in floats:
        spec[f"dot{j}"] = ("input", case.shapes[j])
    nodes = [("y", op.name, [f"in{k}" for k in arg_inputs], case.attrs)]
    y_shape = graphgen.prepare(build_graph(spec, nodes, outputs=["y"])).nodes["y"][
        g.SHAPE
    ]
    spec["ybar"] = ("input", y_shape)
    H = graphgen.prepare(build_graph(spec, nodes, outputs=["y"]))
    return H, floats


def _context(H, **more):
    a = H.nodes["y"]
    ins = g.operands(H, "y")
    return dict(
        ins=ins,
        out="y",
        attrs=a[g.ATTRS],
        in_shapes=[H.nodes[p][g.SHAPE] for p in ins],
        out_shape=a[g.SHAPE],
        **more,
    )


@pytest.mark.parametrize(("op_name", "case"), list(_params()))
def test_jvp_matches_finite_differences_and_the_vjp(op_name, case):
    op = REGISTRY[op_name]
    if op.jvp is None:
        pytest.skip(f"{op_name}: {op.jvp_reason}")
    rng = np.random.default_rng(zlib.crc32(f"jvp-{op_name}-{case.ident()}".encode()))
    arrays = sample(op, case, rng)
    H, floats = _one_op(op, case, arrays)
    y_shape = tuple(H.nodes["y"][g.SHAPE])
    for j in floats:
        arrays[f"dot{j}"] = rng.standard_normal(case.shapes[j])
    arrays["ybar"] = rng.standard_normal(y_shape)

    arg_inputs = case.arg_inputs()
    dots = [f"dot{k}" if k in floats else None for k in arg_inputs]
    b = Builder(H)
    b.where = "y"
    contribs = op.jvp(b, base.JVPContext(**_context(H, dots=dots)))
    cotangents = op.vjp(b, base.VJPContext(**_context(H, g="ybar")))
    assert len(contribs) == len(arg_inputs)
    values = evaluate(H, arrays)

    attrs = H.nodes["y"][g.ATTRS]

    def f(j, step):
        moved = {**arrays, f"in{j}": arrays[f"in{j}"] + step * arrays[f"dot{j}"]}
        return np.asarray(op.impl(*[moved[f"in{k}"] for k in arg_inputs], **attrs))

    for i, c in enumerate(contribs):
        if dots[i] is None:
            assert c is None, f"{op_name}: a tangent for int argument {i}"
        elif c is not None:
            shape = tuple(H.nodes[c][g.SHAPE])
            assert base.broadcast_shapes(shape, y_shape) == y_shape, (
                f"{op_name}: contribution {i} of shape {shape} does not broadcast to "
                f"{y_shape}"
            )
    sum_to_shape = REGISTRY["sum_to_shape"].impl
    for j in floats:
        at = [i for i, k in enumerate(arg_inputs) if k == j]
        jv = np.zeros(y_shape)
        for i in at:
            if contribs[i] is not None:
                jv = jv + np.broadcast_to(values[contribs[i]], y_shape)
        numeric = (f(j, EPS) - f(j, -EPS)) / (2 * EPS)
        err = np.abs(jv - numeric)
        bound = 1e-6 * np.maximum(1.0, np.abs(jv))
        assert not (err > bound).any(), (
            f"{op_name}: J·ẋ along in{j} differs from central differences by up to "
            f"{err.max():.3g}\nanalytic =\n{jv}\nnumeric =\n{numeric}"
        )

        # ⟨ȳ, J·ẋ⟩ = ⟨Jᵀ·ȳ, ẋ⟩
        forward = float(np.sum(arrays["ybar"] * jv))
        reverse = 0.0
        for i in at:
            if cotangents[i] is not None:
                ct = sum_to_shape(values[cotangents[i]], shape=list(case.shapes[j]))
                reverse += float(np.sum(ct * arrays[f"dot{j}"]))
        scale = max(1.0, float(np.sum(np.abs(arrays["ybar"] * jv))))
        assert abs(forward - reverse) <= 1e-10 * scale, (
            f"{op_name}: ⟨ȳ, J·ẋ⟩ = {forward!r} but ⟨Jᵀ·ȳ, ẋ⟩ = {reverse!r} (in{j})"
        )


@pytest.mark.parametrize(("op_name", "case"), list(_params()))
def test_hvp_through_the_adjoint_matches_finite_differences_of_the_gradient(
    op_name, case
):
    op = REGISTRY[op_name]
    rng = np.random.default_rng(zlib.crc32(f"hvp-{op_name}-{case.ident()}".encode()))
    arrays = sample(op, case, rng)
    arg_inputs = case.arg_inputs()
    int_inputs = {arg_inputs[i] for i in op.int_args}
    spec = {
        f"in{j}": ("input", shape, "int64" if j in int_inputs else "float64")
        for j, shape in enumerate(case.shapes)
    }
    wrt = [f"in{j}" for j in range(len(case.shapes)) if j not in int_inputs]
    nodes = [("y", op.name, [f"in{k}" for k in arg_inputs], case.attrs)]
    G = build_graph(spec, nodes, outputs=["y"])
    arrays["w"] = rng.standard_normal(add_weighted_loss(G))
    G.graph.update(loss="loss", outputs=["y", "loss"], wrt=wrt)
    A = graphgen.adjoint(G)
    grads = A.graph["grads"]
    T = graphgen.jvp(
        A, {n: f"{n}_v" for n in wrt}, outputs=["y", *(grads[n] for n in wrt)]
    )
    for n in wrt:
        arrays[f"{n}_v"] = rng.standard_normal(arrays[n].shape)
    values = evaluate(T, arrays)

    def at(step):
        moved = {**arrays}
        for n in wrt:
            moved[n] = arrays[n] + step * arrays[f"{n}_v"]
        return evaluate(A, moved)

    up, down = at(EPS), at(-EPS)
    for o in ["y", *(grads[n] for n in wrt)]:
        analytic = values[T.graph["tangents"][o]]
        numeric = (up[o] - down[o]) / (2 * EPS)
        assert analytic.shape == numeric.shape
        err = np.abs(analytic - numeric)
        bound = 1e-6 * np.maximum(1.0, np.abs(analytic))
        what = "J·v" if o == "y" else "H·v"
        assert not (err > bound).any(), (
            f"{op_name}: {what} ({o}) differs from central differences by up to "
            f"{err.max():.3g}\nanalytic =\n{analytic}\nnumeric =\n{numeric}"
        )
