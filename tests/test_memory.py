"""Memory planning: liveness frees, in-place fan-out sums, the --report numbers.

Peak memory is measured with tracemalloc (NumPy reports its buffers to it), which counts
bytes, not time, so it is stable enough for a unit test.
"""

import tracemalloc

import numpy as np
import pytest

import graphgen
from graphgen import graph as g
from graphgen.api import lower, report
from graphgen.backends.numpy import memory
from graphgen.backends.numpy.program import NumpyProgram as Program

LAYERS = 100
N = 128


def chain_spec(layers=LAYERS):
    """h_{i+1} = tanh(h_i * a_i + b_i); J = sum(h_L²)."""
    nodes = {}
    h = "x"
    for i in range(layers):
        nodes[f"m{i}"] = {"op": "mul", "args": [h, f"a{i}"]}
        nodes[f"z{i}"] = {"op": "add", "args": [f"m{i}", f"b{i}"]}
        nodes[f"h{i}"] = {"op": "tanh", "args": [f"z{i}"]}
        h = f"h{i}"
    nodes["sq"] = {"op": "square", "args": [h]}
    nodes["J"] = {"op": "sum", "args": ["sq"]}
    params = {f"a{i}": [N] for i in range(layers)} | {
        f"b{i}": [N] for i in range(layers)
    }
    return {
        "name": "chain",
        "inputs": {"x": [N, N]},
        "params": params,
        "nodes": nodes,
        "loss": "J",
    }


def handwritten(x, p, layers=LAYERS):
    """Backprop for the chain as one would write it by hand in NumPy."""
    hs = [x]
    for i in range(layers):
        hs.append(np.tanh(hs[-1] * p[f"a{i}"] + p[f"b{i}"]))
    loss = float(np.sum(hs[-1] ** 2))
    grads = {}
    g_h = 2.0 * hs[-1]
    for i in reversed(range(layers)):
        g_z = g_h * (1.0 - hs[i + 1] ** 2)
        grads[f"b{i}"] = g_z.sum(axis=0)
        grads[f"a{i}"] = (g_z * hs[i]).sum(axis=0)
        g_h = g_z * p[f"a{i}"]
    return loss, grads


def peak(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = fn()
    top = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, top - base


@pytest.fixture(scope="module")
def chain():
    from graphgen.frontends.spec import from_dict
    from graphgen.passes.shapes import prepare

    G = prepare(from_dict(chain_spec()))
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((N, N)) * 0.5}
    for i in range(LAYERS):
        arrays[f"a{i}"] = rng.uniform(0.5, 1.5, N)
        arrays[f"b{i}"] = rng.standard_normal(N) * 0.1
    return G, graphgen.compile(G), arrays


def test_chain_gradients_match_handwritten(chain):
    _G, model, arrays = chain
    loss, grads = model.value_and_grad(**arrays)
    ref_loss, ref = handwritten(arrays["x"], arrays)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for k in ref:
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-10, atol=1e-12)


def test_chain_peak_memory_within_1_2x_of_handwritten(chain):
    _G, model, arrays = chain
    model.value_and_grad(**arrays)  # warm up
    _, generated = peak(lambda: model.value_and_grad(**arrays))
    _, hand = peak(lambda: handwritten(arrays["x"], arrays))
    print(
        f"peak: generated {generated:,d} B, hand-written {hand:,d} B, "
        f"ratio {generated / hand:.3f}"
    )
    assert generated <= 1.2 * hand


def test_forward_keeps_only_what_backward_needs(chain):
    G, model, _arrays = chain
    A = lower(G)
    saved = set(memory.saved_for_backward(A))
    # tanh's VJP reuses its output and mul's VJP its inputs; the add results z_i are
    # never needed again, so they must not be saved
    assert all(f"h{i}" in saved for i in range(LAYERS))
    assert not any(f"z{i}" in saved for i in range(LAYERS))
    src = model.__source__
    assert "del z0" in src or "del m0, z0" in src or "\n    del" in src


def test_fanout_sum_accumulates_in_place():
    src = graphgen.generate(graphgen.load("examples/fanout.yaml"))
    assert (
        "    h_bar = h_bar_via_z\n    h_bar += h_bar_via_s\n    h_bar += h_bar_via_hh\n"
        in src
    )


def test_in_place_sum_never_overwrites_a_term_read_later():
    # add_n(t, u, t) must not add into t's buffer: t is read again after the first add
    import networkx as nx

    G = nx.DiGraph(name="m", loss="J", wrt=["x"])
    G.add_node("x", kind="input", shape=(3,), dtype="float64")
    G.add_node("t", kind="op", op="sin", attrs={})
    G.add_node("u", kind="op", op="cos", attrs={})
    G.add_node("s", kind="op", op="add_n", attrs={})
    G.add_node("J", kind="op", op="sum", attrs={})
    G.add_edge("x", "t", pos=(0,))
    G.add_edge("x", "u", pos=(0,))
    G.add_edge("t", "s", pos=(0, 2))
    G.add_edge("u", "s", pos=(1,))
    G.add_edge("s", "J", pos=(0,))
    model = graphgen.compile(G)
    x = np.array([0.1, 0.7, -1.3])
    assert model.forward(x=x)["J"] == pytest.approx(np.sum(2 * np.sin(x) + np.cos(x)))
    assert graphgen.check(G).ok


def test_report_lists_passes_saved_arrays_and_peak():
    text = report(graphgen.load("examples/mlp.yaml"), sizes={"batch": 512})
    for needle in (
        "constant folding",
        "common subexpressions",
        "dead code",
        "saved for the backward pass",
        "a1 ",
        "(512, 128)",
        # h1 = relu(a1) is recomputed from a1, which the backward pass keeps anyway
        "recomputed in the backward pass instead (1 arrays):\n  h1 ",
        "planned peak of intermediates in value_and_grad()",
    ):
        assert needle in text


def test_planned_peak_tracks_measured_peak(chain):
    G, model, arrays = chain
    A = lower(G)
    prog = Program(A, "numpy", "chain")
    prog.context()
    A = prog.A  # the graph with the backward pass's recomputed values
    program, keep, inlined = prog.programs["value_and_grad"]
    planned = memory.peak_bytes(A, program, keep, {}, inlined)
    model.value_and_grad(**arrays)
    _, measured = peak(lambda: model.value_and_grad(**arrays))
    print(f"planned {planned:,d} B, measured {measured:,d} B")
    assert 0.7 * measured <= planned <= 1.3 * measured
    assert g.schedule(A)  # the graph stays schedulable after planning


def _graph(nodes, inputs, loss, wrt):
    import networkx as nx

    G = nx.DiGraph(name="m", loss=loss, wrt=wrt, outputs=[loss])
    for name, shape in inputs.items():
        G.add_node(name, kind="input", shape=shape, dtype="float64")
    for name, (op, args, attrs) in nodes.items():
        G.add_node(name, kind="op", op=op, attrs=attrs)
        for i, a in enumerate(args):
            if G.has_edge(a, name):
                G.edges[a, name]["pos"] += (i,)
            else:
                G.add_edge(a, name, pos=(i,))
    return G


def test_out_buffer_is_not_reused_while_a_view_of_it_is_read_later():
    # m = sin(x); v = reshape(m) (a view); n = tanh(m) is m's last direct read, but v is
    # read afterwards: tanh must not write into m's buffer
    G = _graph(
        {
            "m": ("sin", ["x"], {}),
            "v": ("reshape", ["m"], {"shape": [6]}),
            "n": ("tanh", ["m"], {}),
            "w": ("reshape", ["n"], {"shape": [6]}),
            "p": ("mul", ["v", "w"], {}),
            "J": ("sum", ["p"], {}),
        },
        {"x": (2, 3)},
        "J",
        ["x"],
    )
    model = graphgen.compile(G)
    x = np.linspace(-1, 1, 6).reshape(2, 3)
    want = np.sum(np.sin(x) * np.tanh(np.sin(x)))
    assert model.forward(x=x)["J"] == pytest.approx(want, rel=1e-14)
    assert graphgen.check(G).ok


def test_ufuncs_write_into_dying_buffers():
    spec = "examples/mlp.yaml"
    src = graphgen.generate(graphgen.load(spec))
    assert "a1 = np.add(z1, b1, out=z1)" in src
    assert "logits = z2 + b2" in src  # (batch, 10): too small to pay
    assert graphgen.check(graphgen.load(spec), max_elements=8).ok


def test_tiny_rows_skip_in_place_work():
    # (batch, 3) arrays: an out= keyword costs more than the allocation it saves
    src = graphgen.generate(graphgen.load("examples/fanout.yaml"))
    assert "out=" not in src
    assert "u = a + b1" in src


def test_out_buffers_keep_peak_memory_at_most_handwritten(chain):
    _G, model, _arrays = chain
    assert "out=" in model.__source__


def test_backward_recomputes_nothing_the_forward_computed():
    # mse computes y − t inside; its VJP needs y − t too: computed once, read twice
    src = graphgen.generate(graphgen.load("examples/tiny.yaml"))
    body = src.split("def value_and_grad", 1)[1].split("\ndef ", 1)[0]
    code = [line for line in body.splitlines() if not line.strip().startswith("#")]
    assert sum(line.count("y - t") for line in code) == 1, body
    assert "J = np.square(tmp1).mean()" in body  # tmp: beside an input t
    # and sigmoid's gradient reuses its output instead of calling _sigmoid again
    assert body.count("_sigmoid(") == 2
