"""optimize.concat_slices: a gradient summed over the slices of a split, each placed in
zeros, becomes their concatenation, with the same gradients; sums whose slices leave a
gap or overlap stay sums."""

from __future__ import annotations

import pytest
from conftest import assert_grad_close, build_graph, fd_gradient

import graphgen
from graphgen import api
from graphgen import graph as g
from graphgen.check import random_arrays


def _split_graph(bounds):
    """x (3, 9) sliced along axis 1 at ``bounds``; each slice goes through its own op,
    and the loss sums them all (weighted by w)."""
    nodes, terms = [], []
    for i, (start, stop) in enumerate(bounds):
        nodes.append(
            (f"s{i}", "slice", ["x"], {"axis": 1, "start": start, "stop": stop})
        )
        op = ("tanh", "square", "sin")[i % 3]
        nodes.append((f"f{i}", op, [f"s{i}"], {}))
        nodes.append((f"r{i}", "sum", [f"f{i}"], {}))
        terms.append(f"r{i}")
    nodes.append(("L", "add_n", terms, {}))
    return build_graph(
        {"x": ("input", (3, 9))}, nodes, loss="L", outputs=["L"], wrt=["x"]
    )


def _ops(A):
    return sorted(a[g.OP] for a in g.node_dicts(A).values() if a.get(g.OP))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize(
    ("bounds", "joined"),
    [
        ([(0, 2), (2, 5), (5, 9)], True),  # q, k, v
        ([(5, 9), (0, 2), (2, 5)], True),  # the successors in another order
        ([(0, 4), (4, 9)], True),
        ([(0, 2), (5, 9)], False),  # a gap: the zeros between stay
        ([(0, 5), (3, 9)], False),  # overlapping slices add up
        ([(0, 9), (0, 9)], False),
    ],
)
def test_sum_of_unslices_is_a_concat_with_the_same_gradient(backend, bounds, joined):
    if backend == "numba":
        pytest.importorskip("numba")
    G = _split_graph(bounds)
    A = api.lower(G)
    assert ("unslice" in _ops(A)) != joined
    assert ("concat" in _ops(A)) == joined
    (x_bar,) = [A.graph["grads"]["x"]]
    assert A.nodes[x_bar][g.OP] == ("concat" if joined else "add_n")
    src = graphgen.generate(G, backend=backend)
    assert ("the sum is their concatenation" in src) == joined
    m = graphgen.compile(G, backend=backend)
    arrays = random_arrays(G, seed=1)
    _, grads = m.value_and_grad(**arrays)

    def loss(a):
        return float(m.forward(**a)["L"])

    assert_grad_close(grads["x"], fd_gradient(loss, arrays, "x"), what="x")


def test_the_sum_keeps_its_successors_in_the_order_of_its_terms():
    """The diagram reads the sum's edges against its successors (``SUMS``): after the
    rewrite, term i of the concat is still the gradient through SUMS[i]."""
    A = api.lower(_split_graph([(5, 9), (0, 2), (2, 5)]))
    x_bar = A.graph["grads"]["x"]
    sums = A.nodes[x_bar][g.SUMS]
    assert sums == ["s1", "s2", "s0"]
    assert [A.nodes[t][g.ADJOINT_OF] for t in g.operands(A, x_bar)] == sums


@pytest.mark.parametrize("bounds", [[(0, 2), (2, 5), (5, 9)], [(0, 2), (5, 9)]])
def test_whole_numba_function_computes_both_forms(bounds):
    """In one compiled function: the concatenate, and (a gap) each slice placed in
    zeros (_placed) and summed."""
    pytest.importorskip("numba")
    G = _split_graph(bounds)
    src = graphgen.generate(G, backend="numba", whole=True)
    kernel = src.split("\ndef _value_and_grad_kernel(")[1].split("\ndef ")[0]
    joined = len(bounds) == 3
    assert ("np.concatenate(" in kernel) == joined
    assert ("_placed(" in kernel) != joined
    m = graphgen.compile(G, backend="numba", whole=True)
    arrays = random_arrays(G, seed=2)
    _, grads = m.value_and_grad(**arrays)
    _, want = graphgen.compile(G).value_and_grad(**arrays)
    assert_grad_close(grads["x"], want["x"], rtol=1e-12, what="x")
