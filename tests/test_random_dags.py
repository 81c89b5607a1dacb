"""Random DAGs (hypothesis): fan-out, repeated arguments and broadcasting, gradient-checked.

Every value has a shape that broadcasts to ``(batch, N)``: data ``(batch, N)``, params
``(N,)``, ``(1, N)`` and ``()``, reductions ``(batch, 1)``, ``(N,)`` and ``()``. Square
matrices ``(N, N)`` feed ``matmul``. Nodes pick their arguments from every earlier value,
so values fan out to several successors, and ``mul(x, x)``-style repeats happen. Every
value nobody consumes is reduced into the loss, so all of the graph matters.
"""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

import graphgen
from graphgen.frontends import spec as spec_module

N = 3
UNARY = ["tanh", "sigmoid", "sin", "cos", "neg", "softplus", "square", "exp"]
BINARY = ["add", "sub", "mul"]
REDUCE = [
    ("sum", {"axis": -1, "keepdims": True}),
    ("mean", {"axis": 0}),
    ("mean", {}),
    ("sum", {"axis": [0, 1]}),
]


def _rank(shape):
    return len(shape)


@st.composite
def random_specs(draw):
    """A spec dict (as a YAML file would give it) for a random DAG with a scalar loss."""
    inputs = {"x": ["batch", N]}
    params = {}
    vectors = [
        ("x", ("batch", N))
    ]  # (name, shape) of values broadcasting to (batch, N)
    matrices = []
    if draw(st.booleans()):
        inputs["x2"] = ["batch", N]
        vectors.append(("x2", ("batch", N)))
    for name, shape in (("b", [N]), ("c", [1, N]), ("s", [])):
        if draw(st.booleans()):
            params[name] = {"shape": shape, "init": "normal"}
            vectors.append((name, tuple(shape)))
    params["W"] = {"shape": [N, N], "init": "normal"}
    matrices.append("W")

    nodes = {}
    used = set()
    n_nodes = draw(st.integers(min_value=2, max_value=9))
    for k in range(n_nodes):
        name = f"n{k}"
        kind = draw(
            st.sampled_from(
                ["unary", "binary", "binary", "matmul", "reduce", "div", "scale"]
            )
        )
        if kind == "unary":
            op = draw(st.sampled_from(UNARY))
            src, shape = draw(st.sampled_from(vectors))
            if op == "exp":  # keep values moderate: exp only of a bounded value
                nodes[f"{name}_t"] = {"op": "tanh", "args": [src]}
                src = f"{name}_t"
            nodes[name] = {"op": op, "args": [src]}
            used.add(src)
            vectors.append((name, shape))
        elif kind == "binary":
            op = draw(st.sampled_from(BINARY))
            a, sa = draw(st.sampled_from(vectors))
            if draw(st.integers(0, 3)) == 0:
                b, sb = a, sa  # op(x, x): one node feeding both arguments
            else:
                b, sb = draw(st.sampled_from(vectors))
            nodes[name] = {"op": op, "args": [a, b]}
            used.update((a, b))
            out = graphgen.ops.broadcast_shapes(sa, sb)
            vectors.append((name, out))
        elif kind == "matmul":
            candidates = [(n, s) for n, s in vectors if _rank(s) >= 1 and s[-1] == N]
            a, sa = draw(st.sampled_from(candidates))
            if draw(st.booleans()) or len(matrices) == 1:
                m = draw(st.sampled_from(matrices))
            else:
                m = draw(st.sampled_from(matrices[1:]))
            nodes[name] = {"op": "matmul", "args": [a, m]}
            used.update((a, m))
            vectors.append((name, sa))
            if draw(st.booleans()):  # a computed matrix, usable by later matmuls
                mname = f"{name}_m"
                nodes[mname] = {
                    "op": draw(st.sampled_from(["tanh", "sin", "transpose"])),
                    "args": [m],
                }
                used.add(m)
                matrices.append(mname)
        elif (
            kind == "div"
        ):  # a / (sigmoid(d) + 0.5): the denominator stays in (0.5, 1.5)
            a, sa = draw(st.sampled_from(vectors))
            d, sd = draw(st.sampled_from(vectors))
            nodes[f"{name}_s"] = {"op": "sigmoid", "args": [d]}
            nodes[f"{name}_d"] = {"op": "add", "args": [f"{name}_s", 0.5]}
            nodes[name] = {"op": "div", "args": [a, f"{name}_d"]}
            used.update((a, d))
            vectors.append((name, graphgen.ops.broadcast_shapes(sa, sd)))
        elif kind == "scale":  # a constant argument, on either side
            op = draw(st.sampled_from(["mul", "add", "sub"]))
            a, sa = draw(st.sampled_from(vectors))
            c = draw(st.sampled_from([0.5, -2.0, 3.0]))
            nodes[name] = {"op": op, "args": [a, c] if draw(st.booleans()) else [c, a]}
            used.add(a)
            vectors.append((name, sa))
        else:
            op, attrs = draw(st.sampled_from(REDUCE))
            candidates = [(n, s) for n, s in vectors if _rank(s) == 2]
            src, shape = draw(st.sampled_from(candidates))
            nodes[name] = {"op": op, "args": [src], **attrs}
            used.add(src)
            probe = graphgen.ops.defs.reduced_shape(
                shape,
                graphgen.ops.norm_axes(attrs.get("axis"), 2),
                attrs.get("keepdims", False),
            )
            vectors.append((name, probe))

    # every value nobody uses (and every param) reaches the loss
    sinks = [n for n in nodes if n not in used]
    sinks += [p for p in params if p not in used]
    terms = []
    for i, n in enumerate(sinks):
        nodes[f"r{i}"] = {"op": draw(st.sampled_from(["sum", "mean"])), "args": [n]}
        terms.append(f"r{i}")
    nodes["loss"] = (
        {"op": "add_n", "args": terms}
        if len(terms) > 1
        else {"op": "mean", "args": terms}
    )
    wrt = list(params) + (["x"] if draw(st.booleans()) else [])
    return {
        "name": "random_dag",
        "inputs": inputs,
        "params": params,
        "nodes": nodes,
        "loss": "loss",
        "wrt": wrt,
    }


def _spec(inputs, params, nodes, wrt):
    return {
        "name": "random_dag",
        "inputs": inputs,
        "params": params,
        "nodes": nodes,
        "loss": "loss",
        "wrt": wrt,
    }


# Graphs these random tests once found bugs with, kept as explicit examples.
REGRESSIONS = [
    # add_n(c, c) of one constant: constant folding removed the edge twice
    _spec({}, {"s": []}, {"loss": {"op": "add", "args": ["s", "s"]}}, ["s"]),
    # x feeds one successor twice and another once: v_bar = t; v_bar += t; v_bar += t
    # accumulated into t itself (4t instead of 3t)
    _spec(
        {"x": [2, 3]},
        {},
        {
            "n1": {"op": "add", "args": ["x", "x"]},
            "n3": {"op": "add", "args": ["x", "n1"]},
            "n5": {"op": "neg", "args": ["n3"]},
            "loss": {"op": "sum", "args": ["n5"]},
        },
        ["x"],
    ),
    # in-place accumulation into n_bar while reshape(n_bar), a view of it, was still live
    _spec(
        {"x": [2, 3], "x2": [6]},
        {},
        {
            "q": {"op": "sin", "args": ["x2"]},
            "p": {"op": "reshape", "args": ["x"], "shape": [6]},
            "n": {"op": "add", "args": ["p", "q"]},
            "sq": {"op": "square", "args": ["n"]},
            "s1": {"op": "sum", "args": ["sq"]},
            "sq2": {"op": "square", "args": ["q"]},
            "s2": {"op": "sum", "args": ["sq2"]},
            "xx": {"op": "square", "args": ["x"]},
            "s3": {"op": "sum", "args": ["xx"]},
            "l1": {"op": "add", "args": ["s1", "s2"]},
            "loss": {"op": "add", "args": ["l1", "s3"]},
        },
        ["x", "x2"],
    ),
    # two identical forward nodes merged by CSE: comments named the deleted one
    _spec(
        {"x": ["batch", 3]},
        {"W": {"shape": [3, 3], "init": "normal"}},
        {
            "n0": {"op": "matmul", "args": ["x", "W"]},
            "n1": {"op": "matmul", "args": ["x", "W"]},
            "m": {"op": "mul", "args": ["n0", "n1"]},
            "loss": {"op": "sum", "args": ["m"]},
        },
        ["W"],
    ),
    # the zero gradient of an unused input was the only code mentioning `batch`
    _spec(
        {"x": ["batch", 3]},
        {"b": [3]},
        {"loss": {"op": "sum", "args": ["b"]}},
        ["b", "x"],
    ),
]


@pytest.mark.filterwarnings("ignore::graphgen.GraphgenWarning")  # x may be unused
@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(random_specs(), st.integers(0, 2**16))
@example(REGRESSIONS[0], 0)
@example(REGRESSIONS[1], 0)
@example(REGRESSIONS[2], 0)
@example(REGRESSIONS[3], 0)
@example(REGRESSIONS[4], 0)
def test_random_dag_gradients_match_finite_differences(spec, seed):
    note("spec:\n" + yaml.safe_dump(spec, sort_keys=False))
    note(f"random_arrays seed: {seed}")
    G = graphgen.prepare(spec_module.from_dict(spec, source="random_dag.yaml"))
    assert G.nodes["loss"]["shape"] == ()
    report = graphgen.check(G, seed=seed, tol=1e-6)
    note(report.format())
    assert report.ok, report.format()
    assert {r.name for r in report.rows} == set(spec["wrt"])
