"""Forward mode: :func:`graphgen.jvp` and the JVP rules of the ops in defs.py and data.py.

- Op by op (the cases of test_ops_gradients): ``y = op(args...)`` with ``loss = Σ w·y``
  goes through :func:`graphgen.jvp`, compiled with the NumPy backend. Per differentiable
  input (the others' tangents zero) and for all of them at once, ``y_dot`` is checked
  against central differences of the op's ``impl`` along a random direction, in float64,
  and against the dot-product identity ⟨w, J·ẋ⟩ = ⟨Jᵀ·w, ẋ⟩ with the same module's
  ``value_and_grad`` (the VJP).
- The pass itself: the input graph is left alone, the sum over predecessors is one
  ``add_n`` recording its predecessors, one term is used as it is, a smaller contribution
  gets one ``broadcast_to``, tangent inputs and outputs are named as documented, errors.
- examples/tiny.yaml, fanout.yaml, mlp.yaml and hypothesis random DAGs (with fan-out,
  repeated arguments and broadcasting): every tangent against central differences of the
  compiled ``forward``, and the loss's tangent against the gradient.

The ops of nn.py and conv.py are checked in test_jvp_nn.py.
"""

from __future__ import annotations

import dataclasses
import warnings
import zlib

import numpy as np
import op_cases_attention
import op_cases_conv
import op_cases_nn
import pytest
import test_ops_gradients as tog
import test_random_dags as trd
import yaml
from conftest import EXAMPLES, build_graph
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

import graphgen
from graphgen import GradientError, GraphError, GraphgenWarning
from graphgen import graph as g
from graphgen.check import random_arrays
from graphgen.frontends import spec as spec_module
from graphgen.ops import REGISTRY

EPS = 1e-6
# the ops declared in defs.py and data.py: nn.py's and conv.py's have their own tables
CORE_OPS = sorted(
    set(REGISTRY)
    - set(op_cases_nn.CASES)
    - set(op_cases_conv.CASES)
    - set(op_cases_attention.CASES)
)


def assert_close(analytic, numeric, what, rtol=1e-6):
    """``|analytic − numeric| <= rtol · max(1, |analytic|)`` entrywise."""
    analytic, numeric = np.asarray(analytic), np.asarray(numeric)
    assert analytic.shape == numeric.shape, (
        f"{what}: shape {analytic.shape} != {numeric.shape}"
    )
    err = np.abs(analytic - numeric)
    bound = rtol * np.maximum(1.0, np.abs(analytic))
    assert not (err > bound).any(), (
        f"{what}: differs from central differences by up to {err.max():.3g}\n"
        f"analytic =\n{analytic}\nnumeric =\n{numeric}"
    )


# ------------------------------------------------------------------- the op table


@pytest.mark.parametrize("op_name", CORE_OPS)
def test_every_core_op_has_a_jvp_rule_or_a_reason(op_name):
    op = REGISTRY[op_name]
    assert op.jvp is not None or op.jvp_reason, (
        f"{op_name} has neither a JVP rule nor a jvp_reason"
    )
    if op.jvp is None:
        # only ops no tangent can reach: no arguments, or int64 ones only
        assert not op.args or set(op.int_args) == set(range(len(op.args))), op_name


@pytest.mark.parametrize("op_name", [n for n in CORE_OPS if REGISTRY[n].mask])
def test_a_mask_sends_no_tangent_and_says_why(op_name):
    op = REGISTRY[op_name]
    assert op.jvp is not None and "0" in op.jvp_reason
    c = graphgen.ops.JVPContext(
        ins=["a", "b"][: len(op.args)],
        out="y",
        dots=["a_dot", "b_dot"][: len(op.args)],
        attrs={},
        in_shapes=[(2,)] * len(op.args),
        out_shape=(2,),
    )
    assert op.jvp(None, c) == [None] * len(op.args)


def _op_params():
    for name in CORE_OPS:
        if REGISTRY[name].jvp is None:
            continue
        for case in tog.CASES[name]:
            if case.ints:  # int64 arguments where floats may be: an int64 result
                continue  # has no tangent (test_ops_gradients checks its values)
            yield pytest.param(name, case, id=f"{name}-{case.ident()}")


@pytest.mark.filterwarnings("ignore::graphgen.GraphgenWarning")  # masks: no gradient
@pytest.mark.parametrize(("op_name", "case"), list(_op_params()))
def test_op_jvp_matches_finite_differences_and_the_vjp(op_name, case):
    op = REGISTRY[op_name]
    rng = np.random.default_rng(zlib.crc32(f"jvp-{op_name}-{case.ident()}".encode()))
    arrays = tog.sample(op, case, rng)
    G, y_shape, wrt = tog.op_graph(op, case, arrays)
    arrays["w"] = rng.standard_normal(y_shape)
    T = graphgen.jvp(G, wrt, outputs=["y"])
    assert T.graph["tangents"] == {"y": "y_dot"}
    module = graphgen.compile(T)

    v = {n: rng.standard_normal(arrays[n].shape) for n in wrt}
    zeros = {f"{n}_dot": np.zeros(arrays[n].shape) for n in wrt}
    attrs = T.nodes["y"]["attrs"]
    arg_inputs = case.arg_inputs()

    def y_at(step, along):
        moved = {**arrays, **{n: arrays[n] + step * v[n] for n in along}}
        return np.asarray(op.impl(*[moved[f"in{k}"] for k in arg_inputs], **attrs))

    # value_and_grad of the same module: Jᵀ·w for every input at once
    _, grads = module.value_and_grad(**arrays, **zeros)
    for along in [[n] for n in wrt] + ([wrt] if len(wrt) > 1 else []):
        dots = {**zeros, **{f"{n}_dot": v[n] for n in along}}
        out = module.forward(**arrays, **dots)
        np.testing.assert_allclose(out["y"], y_at(0.0, []), rtol=1e-12, atol=1e-12)
        jv = np.asarray(out["y_dot"])
        assert jv.dtype == np.float64 and jv.shape == tuple(y_shape)
        numeric = (y_at(EPS, along) - y_at(-EPS, along)) / (2 * EPS)
        assert_close(jv, numeric, f"J·ẋ of {op_name} along {along}")

        # ⟨w, J·ẋ⟩ = ⟨Jᵀ·w, ẋ⟩
        forward = float(np.sum(arrays["w"] * jv))
        reverse = sum(float(np.sum(grads[n] * v[n])) for n in along)
        scale = max(1.0, float(np.sum(np.abs(arrays["w"] * jv))))
        assert abs(forward - reverse) <= 1e-10 * scale, (
            f"{op_name} along {along}: ⟨w, J·ẋ⟩ = {forward!r}, ⟨Jᵀ·w, ẋ⟩ = {reverse!r}"
        )


# ------------------------------------------------------------------------ the pass


def _graph():
    """x feeds mul twice (fan-in of two terms from one predecessor) and sin once; b
    broadcasts into an add."""
    return build_graph(
        {"x": ("input", (3, 4)), "b": ("param", (4,)), "k": ("input", (3,), "int64")},
        [
            ("sq", "mul", ["x", "x"], {}),
            ("s", "sin", ["x"], {}),
            ("u", "add", ["sq", "b"], {}),
            ("r", "add", ["s", "s"], {}),
            ("L", "sum", ["u"], {}),
        ],
        loss="L",
        outputs=["u", "s", "L"],
    )


def _snapshot(G):
    return (
        dict(G.graph),
        {n: dict(a) for n, a in G.nodes(data=True)},
        {(u, v): dict(a) for u, v, a in G.edges(data=True)},
    )


def test_the_input_graph_is_left_alone():
    G = _graph()
    before = _snapshot(G)
    graphgen.jvp(G, ["x", "b"])
    assert _snapshot(G) == before


def test_the_sum_over_predecessors_records_its_terms():
    T = graphgen.jvp(_graph(), ["x", "b"], outputs=["u", "s", "r", "L"])
    tangents = T.graph["tangents"]
    assert tangents == {"u": "u_dot", "s": "s_dot", "r": "r_dot", "L": "L_dot"}
    assert T.graph["outputs"] == ["u", "s", "L", "u_dot", "s_dot", "r_dot", "L_dot"]
    # mul(x, x): two terms from one predecessor, summed by an add_n that says so
    sq_dot = next(n for n in T if T.nodes[n].get(g.TANGENT_OF) == "sq")
    assert sq_dot == "sq_dot"
    assert T.nodes[sq_dot]["op"] == "add_n" and T.nodes[sq_dot][g.FSUMS] == ["x", "x"]
    # add(sq, b): b's tangent (4,) is broadcast once to (3, 4)
    assert T.nodes["u_dot"][g.FSUMS] == ["sq", "b"]
    (bb,) = [
        p for p in g.operands(T, "u_dot") if T.nodes[p].get("op") == "broadcast_to"
    ]
    assert g.operands(T, bb) == ["b_dot"] and T.nodes[bb]["shape"] == (3, 4)
    # sin(x): one term, used as it is
    assert T.nodes["s_dot"]["op"] == "mul" and g.FSUMS not in T.nodes["s_dot"]
    # add(s, s): both terms are s's tangent itself
    assert g.operands(T, "r_dot") == ["s_dot", "s_dot"]
    for n in T:
        a = T.nodes[n]
        assert a["role"] == g.FORWARD
        if n.endswith("_dot"):
            assert a[g.TANGENT_OF] == n[: -len("_dot")]


def test_tangent_inputs_are_named_and_shaped_like_their_inputs():
    T = graphgen.jvp(_graph(), {"x": "v"}, outputs=["u"])
    assert T.nodes["v"]["kind"] == "input" and T.nodes["v"]["shape"] == (3, 4)
    assert T.nodes["v"][g.TANGENT_OF] == "x"
    assert T.graph["tangent_inputs"] == {"x": "v"}
    T = graphgen.jvp(_graph(), ["b"], outputs=["u"])
    assert T.nodes["b_dot"]["shape"] == (4,) and T.nodes["b_dot"]["dtype"] == "float64"


def test_an_output_without_a_tangent_gets_zeros_and_a_shared_one_an_alias():
    G = _graph()
    G.graph["outputs"] = ["s", "u", "x"]
    T = graphgen.jvp(G, ["b"])
    assert T.nodes["s_dot"]["op"] == "zeros"
    # u = sq + b with only b moving: u's tangent is broadcast_to(b_dot)
    assert T.nodes["u_dot"]["op"] == "broadcast_to"
    assert T.graph["tangents"]["x"] == "x_dot" and T.nodes["x_dot"]["op"] == "zeros"
    T = graphgen.jvp(G, ["x"], outputs=["x"])
    assert T.graph["tangents"] == {"x": "x_dot"} and T.nodes["x_dot"]["kind"] == "input"
    # an output whose tangent is another node's: a one-term add_n under its own name
    G = build_graph(
        {"x": ("input", (2,))},
        [("y", "add", ["x", "x"], {}), ("z", "add_n", ["y"], {})],
        outputs=["y", "z"],
    )
    T = graphgen.jvp(G, ["x"])
    assert g.operands(T, "z_dot") == ["y_dot"] and T.nodes["z_dot"]["op"] == "add_n"
    out = graphgen.compile(T).forward(x=np.ones(2), x_dot=np.array([1.0, -2.0]))
    np.testing.assert_array_equal(out["z_dot"], [2.0, -4.0])


@pytest.mark.parametrize(
    ("tangents", "outputs", "error", "match"),
    [
        ({"k": "k_dot"}, None, GradientError, "int64"),
        ({"nope": "v"}, None, GradientError, "not an input or param"),
        ({"sq": "v"}, None, GradientError, "not an input or param"),
        ({"x": "b"}, None, GraphError, "needs a new name"),
        ({"x": "v", "b": "v"}, None, GraphError, "needs a new name"),
        (["x"], ["nope"], GraphError, "not a node"),
        (["x"], ["k"], GradientError, "int64"),
    ],
)
def test_bad_arguments_are_refused(tangents, outputs, error, match):
    with pytest.raises(error, match=match):
        graphgen.jvp(_graph(), tangents, outputs=outputs)


def test_an_op_without_a_rule_names_its_reason(monkeypatch):
    sin = REGISTRY["sin"]
    monkeypatch.setitem(
        REGISTRY, "sin", dataclasses.replace(sin, jvp=None, jvp_reason="for a test")
    )
    with pytest.raises(GradientError, match=r"'sin' has no JVP rule \(for a test\)"):
        graphgen.jvp(_graph(), ["x"])
    graphgen.jvp(_graph(), ["b"])  # no tangent reaches sin: fine


def test_a_rule_returning_the_wrong_number_of_tangents_is_refused(monkeypatch):
    sin = REGISTRY["sin"]
    monkeypatch.setitem(
        REGISTRY, "sin", dataclasses.replace(sin, jvp=lambda b, c: [None, None])
    )
    with pytest.raises(GradientError, match="returned 2 tangents for 1 arguments"):
        graphgen.jvp(_graph(), ["x"])


def test_an_ill_shaped_contribution_names_the_jvp_rule(monkeypatch):
    sin = REGISTRY["sin"]
    monkeypatch.setitem(
        REGISTRY,
        "sin",
        dataclasses.replace(sin, jvp=lambda b, c: [b.reshape(c.dots[0], shape=[12])]),
    )
    with pytest.raises(
        GradientError, match="the JVP rule of 'sin' built an ill-shaped"
    ):
        graphgen.jvp(_graph(), ["x"])


def test_the_tangent_graph_can_be_differentiated_again():
    """∂/∂b of the loss's tangent along x: Σ_ij 2·x_ij·ẋ_ij does not depend on b, while
    along b it is 3·Σ ḃ, whose gradient w.r.t. x is zero; check d/dx of Σ 2x·ẋ = 2ẋ."""
    T = graphgen.jvp(_graph(), ["x"], outputs=["L"])
    T.graph.update(loss="L_dot", wrt=["x"])
    module = graphgen.compile(T)
    rng = np.random.default_rng(0)
    arrays = {
        "x": rng.standard_normal((3, 4)),
        "b": rng.standard_normal(4),
        "k": np.zeros(3, dtype=np.int64),
        "x_dot": rng.standard_normal((3, 4)),
    }
    value, grads = module.value_and_grad(**arrays)
    assert value == pytest.approx(float(np.sum(2 * arrays["x"] * arrays["x_dot"])))
    np.testing.assert_allclose(grads["x"], 2 * arrays["x_dot"], rtol=1e-12)


# ------------------------------------------------------------ whole models, compiled


def _check_model(G, tangent_names, seed, sizes=None):
    """Every float output's tangent (and the loss's against the gradient) of the
    compiled JVP module, against central differences of the compiled forward."""
    base = graphgen.compile(G)
    T = graphgen.jvp(G, tangent_names)
    module = graphgen.compile(T)
    arrays = random_arrays(G, seed=seed, sizes=sizes)
    rng = np.random.default_rng(seed + 1)
    v = {n: np.asarray(rng.standard_normal(arrays[n].shape)) for n in tangent_names}
    dots = {f"{n}_dot": v[n] for n in tangent_names}
    out = module.forward(**arrays, **dots)

    def at(step):
        moved = {n: np.asarray(arrays[n] + step * v[n]) for n in v}
        return base.forward(**{**arrays, **moved})

    up, down, here = at(EPS), at(-EPS), base.forward(**arrays)
    for o, t in T.graph["tangents"].items():
        np.testing.assert_allclose(out[o], here[o], rtol=1e-12, atol=1e-12)
        numeric = (np.asarray(up[o]) - np.asarray(down[o])) / (2 * EPS)
        assert_close(out[t], numeric, f"tangent of {o}")
    loss = G.graph.get("loss")
    if loss is not None and loss in T.graph["tangents"]:
        _, grads = base.value_and_grad(**arrays)
        reverse = sum(float(np.sum(grads[n] * v[n])) for n in grads if n in v)
        moving = set(v) - set(grads)  # inputs the gradient does not cover
        if not moving:
            forward = float(out[T.graph["tangents"][loss]])
            assert abs(forward - reverse) <= 1e-9 * max(1.0, abs(forward)), (
                f"tangent of the loss {forward!r} != Σ ⟨gradient, ẋ⟩ {reverse!r}"
            )
    return T


@pytest.mark.parametrize("name", ["tiny", "fanout", "mlp"])
def test_example_tangents_match_finite_differences(name):
    G = graphgen.load(EXAMPLES / f"{name}.yaml")
    P = graphgen.prepare(G)
    params = [n for n in P if P.nodes[n]["kind"] == "param"]
    floats = [
        n
        for n in P
        if P.nodes[n]["kind"] == "input" and P.nodes[n]["dtype"] == "float64"
    ]
    # the params alone (the loss's tangent is then ⟨gradient, ẋ⟩), then everything
    _check_model(G, params, seed=1, sizes={"batch": 3})
    T = _check_model(G, params + floats, seed=2, sizes={"batch": 3})
    assert set(T.graph["tangents"]) == set(P.graph["outputs"])
    assert T.graph["outputs"][-len(T.graph["tangents"]) :] == [
        f"{o}_dot" for o in T.graph["tangents"]
    ]


@pytest.mark.filterwarnings("ignore::graphgen.GraphgenWarning")  # x may be unused
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(trd.random_specs(), st.integers(0, 2**16))
@example(trd.REGRESSIONS[0], 0)
@example(trd.REGRESSIONS[1], 0)
@example(trd.REGRESSIONS[2], 0)
def test_random_dag_tangents_match_finite_differences(spec, seed):
    """Every node's tangent, moving every param and float input at once, and the
    loss's against the gradient when only the ``wrt`` arrays move."""
    note("spec:\n" + yaml.safe_dump(spec, sort_keys=False))
    G = spec_module.from_dict(spec, source="random_dag.yaml")
    P = graphgen.prepare(G)
    G.graph["outputs"] = [n for n in P if P.nodes[n]["kind"] == "op"]
    moving = [n for n in P if P.nodes[n]["kind"] in ("input", "param")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GraphgenWarning)
        _check_model(G, moving, seed)
        _check_model(G, list(P.graph["wrt"]), seed + 7)
