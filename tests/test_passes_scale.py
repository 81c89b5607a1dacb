"""The fast paths of the graph passes on big graphs (issue 16) give what the plain
algorithms give. No timing here: ``benchmarks/compile_scale.py`` measures them."""

from __future__ import annotations

import random
import sys
from unittest import mock

import networkx as nx
import pytest
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from test_random_dags import random_specs

import graphgen
from graphgen import graph as g
from graphgen.frontends.spec import from_dict
from graphgen.passes import optimize as optimize_module
from graphgen.passes.adjoint import adjoint
from graphgen.passes.shapes import prepare

sys.path.insert(0, str(REPO / "benchmarks"))
import compile_scale


def random_dag(rng, n, climbing):
    """A DAG on ``n`` nodes whose ``seq`` climbs along every edge, or is shuffled (and
    sometimes repeated) so that it does not."""
    G = nx.DiGraph()
    seqs = list(range(n))
    if not climbing:
        rng.shuffle(seqs)
        seqs = [s // rng.choice((1, 2)) for s in seqs]  # some ties
    names = [f"n{i}" for i in range(n)]
    order = names[:]
    rng.shuffle(order)  # G's node order differs from both
    for name in order:
        G.add_node(name, **{g.SEQ: seqs[names.index(name)]})
    for j in range(n):
        for i in rng.sample(range(j), min(j, rng.randrange(4))):
            G.add_edge(names[i], names[j], **{g.POS: (0,)})
    return G


def reference(G, nodes=None):
    """networkx's lexicographic order by (seq, place in G's node order)."""
    H = G if nodes is None else G.subgraph(nodes)
    index = {n: i for i, n in enumerate(G)}
    return list(
        nx.lexicographical_topological_sort(
            H, key=lambda n: (G.nodes[n][g.SEQ], index[n])
        )
    )


@pytest.mark.parametrize("climbing", [True, False])
def test_schedule_is_the_lexicographic_topological_order(climbing):
    rng = random.Random(16)
    for trial in range(200):
        G = random_dag(rng, rng.randrange(1, 40), climbing)
        assert g.schedule(G) == reference(G)
        some = set(rng.sample(list(G), rng.randrange(len(G) + 1)))
        assert g.schedule(G, some) == reference(G, some)


def test_schedule_refuses_a_cycle():
    G = nx.DiGraph()
    for i, n in enumerate("abc"):
        G.add_node(n, **{g.SEQ: i})
    G.add_edges_from([("a", "b"), ("b", "c"), ("c", "a")])
    with pytest.raises(nx.NetworkXUnfeasible):
        g.schedule(G)


# ----------------------------------------------- optimize: the round it does not run


def snapshot(H):
    """Everything a graph holds, in its orders: nodes, successors, predecessors."""
    return (
        list(H._node.items()),
        [(u, list(nbrs.items())) for u, nbrs in H._succ.items()],
        [(v, list(nbrs.items())) for v, nbrs in H._pred.items()],
        dict(H.graph),
    )


def every_round(A):
    """``optimize(A)`` running each round the loop reaches (never skipping one)."""
    with mock.patch.object(optimize_module, "_settled", lambda *args: False):
        return optimize_module.optimize(A)


def lowered(data):
    G = from_dict(data)
    return adjoint(prepare(G), prepared=True)


def generated_specs():
    for shape in compile_scale.SHAPES:
        yield shape, compile_scale.GENERATORS[shape](300)
    data = compile_scale.random_dag(300)
    # the spec's nodes in reverse: their seq no longer climbs along the edges
    yield (
        "random, nodes reversed",
        {**data, "nodes": dict(reversed(data["nodes"].items()))},
    )


@pytest.mark.parametrize(
    "name, data", list(generated_specs()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_optimize_skips_only_rounds_that_change_nothing(name, data):
    A = lowered(data)
    assert snapshot(optimize_module.optimize(A)) == snapshot(every_round(A))


@pytest.mark.parametrize(
    "path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.stem
)
def test_optimize_skips_only_rounds_that_change_nothing_on_the_examples(path):
    A = adjoint(prepare(graphgen.load(str(path))), prepared=True)
    assert snapshot(optimize_module.optimize(A)) == snapshot(every_round(A))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_specs())
def test_optimize_skips_only_rounds_that_change_nothing_on_random_dags(data):
    A = lowered(data)
    assert snapshot(optimize_module.optimize(A)) == snapshot(every_round(A))


def settled(data, simplified=(), merged=(), kept_duplicate=False):
    """``_settled`` on the prepared graph of ``data`` (no pass run), told that the round
    before rewired the arguments of ``simplified`` and ``merged`` nodes."""
    H = prepare(from_dict(data))
    changes = optimize_module._Changes(), optimize_module._Changes()
    changes[0].touched.update(simplified)
    changes[1].touched.update(merged)
    changes[1].kept_duplicate = kept_duplicate
    return optimize_module._settled(H, *changes)


def spec(**nodes):
    nodes["J"] = {"op": "sum", "args": ["y"]}
    return {"inputs": {"x": [3]}, "nodes": nodes, "outputs": ["J"], "loss": "J"}


def test_a_round_is_unsettled_where_the_next_one_would_fold_or_simplify():
    # a scalar op on constants, rewired after folding ran: the next round folds it
    folds = spec(s={"op": "sin", "args": [2.0]}, y={"op": "mul", "args": ["x", "s"]})
    assert not settled(folds, simplified=["s"])
    assert not settled(folds, merged=["s"])
    assert settled(folds, simplified=["y"])
    # x · 1, rewired by CSE: the next round's simplification drops it
    unit = spec(y={"op": "mul", "args": ["x", 1.0]})
    assert not settled(unit, merged=["y"])
    assert settled(unit, simplified=["y"])  # simplification saw it already
    # −(−x), the inner one rewired by CSE: its reader simplifies
    twice = spec(p={"op": "neg", "args": ["x"]}, y={"op": "neg", "args": ["p"]})
    assert not settled(twice, merged=["p"])
    assert settled(twice)
    # CSE kept a protected duplicate: the next schedule may merge into it
    assert not settled(unit, kept_duplicate=True)
