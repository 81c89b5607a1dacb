"""The Numba backend: same API and same numbers as the NumPy backend, fused kernels, caching.

Numba compiles slowly on a small machine, so the modules are built once per test module:
every op case of ``test_ops_gradients.CASES`` goes into one combined graph (one NumPy and
one Numba module), and the tests check their slice of its results.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
import zlib

import networkx as nx
import numpy as np
import pytest

numba = pytest.importorskip("numba")

from conftest import EXAMPLE_SPECS, REPO
from test_ops_gradients import CASES, op_graph, sample

import graphgen
from graphgen.check import random_arrays
from graphgen.ops import REGISTRY

TOL = 1e-10


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    old = os.environ.get("GRAPHGEN_CACHE_DIR")
    os.environ["GRAPHGEN_CACHE_DIR"] = str(tmp_path_factory.mktemp("graphgen-cache"))
    yield
    if old is None:
        os.environ.pop("GRAPHGEN_CACHE_DIR", None)
    else:
        os.environ["GRAPHGEN_CACHE_DIR"] = old


# Ops whose every case goes in (broadcasting variety, reduction tails); others: two cases.
EVERY_CASE = {"mul", "div", "add_n", "sum", "mean", "sum_to_shape", "broadcast_to"}


def _ident(op_name, k):
    return f"{op_name}_{k}"


def combined_graph():
    """Every op case as ``y = op(...)`` with loss term ``sum(w·y)``, all in one graph."""
    parts, arrays, terms, outputs, wrt = [], {}, [], [], []
    for op_name, cases in CASES.items():
        op = REGISTRY[op_name]
        for k, case in enumerate(cases):
            if k >= 2 and op_name not in EVERY_CASE:
                continue
            rng = np.random.default_rng(zlib.crc32(f"numba-{op_name}-{k}".encode()))
            a = sample(op, case, rng)
            G, y_shape, w = op_graph(op, case, a)
            a["w"] = rng.standard_normal(y_shape)
            pre = _ident(op_name, k) + "_"
            parts.append(nx.relabel_nodes(G, {n: pre + n for n in G}))
            arrays.update({pre + n: v for n, v in a.items()})
            terms.append(pre + "loss")
            outputs.append(pre + "y")
            wrt += [pre + n for n in w] + [pre + "w"]  # ∂loss/∂w = y: checks forward
    H = nx.compose_all(parts)
    H.add_node("loss", kind="op", op="add_n", attrs={})
    for i, t in enumerate(terms):
        H.add_edge(t, "loss", pos=(i,))
    H.graph.update(name="every_op", dtype="float64", loss="loss", outputs=outputs + ["loss"],
                   wrt=wrt)
    return H, arrays


@pytest.fixture(scope="module")
def every_op():
    G, arrays = combined_graph()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", graphgen.GraphgenWarning)
        ref = graphgen.compile(G)
        t0 = time.perf_counter()
        # transcendentals fused too (by default they stay NumPy without SVML): every
        # scalar macro of templates/numba/scalar.j2 is exercised
        mod = graphgen.compile(G, backend="numba", transcendentals="numba")
        # value_and_grad only (forward() would compile as many kernels again): the
        # gradient of each case's weights w is its forward value y
        out = mod.value_and_grad(**arrays)
        print(f"\nevery-op numba module: compile + first call {time.perf_counter() - t0:.1f}s")
    return {"vg": (ref.value_and_grad(**arrays), out), "module": mod}


def _close(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"{what}: shape {a.shape} vs {b.shape}"
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} vs {b.dtype}"
    np.testing.assert_allclose(b, a, rtol=TOL, atol=TOL, err_msg=what)


@pytest.mark.parametrize("op_name", list(REGISTRY))
def test_numba_agrees_with_numpy_on_every_op(every_op, op_name):
    assert op_name in CASES, f"no cases for op {op_name!r}"
    (l_ref, g_ref), (l_nb, g_nb) = every_op["vg"]
    for k in range(len(CASES[op_name])):
        pre = _ident(op_name, k) + "_"
        if pre + "w" not in g_ref:
            continue
        for name in g_ref:
            if name.startswith(pre):
                _close(g_ref[name], g_nb[name], f"gradient {name}")
    assert abs(l_ref - l_nb) <= TOL * max(1.0, abs(l_ref))
    assert isinstance(l_nb, float)


def test_every_op_module_fuses_elementwise_ops(every_op):
    src = every_op["module"].__source__
    assert src.count("@numba.njit(") >= 20
    assert "import numba" in src
    # the generated module imports numpy and numba only
    imports = {line.split()[1] for line in src.splitlines()
               if line.startswith(("import ", "from "))}
    assert imports == {"numba", "numpy"}


@pytest.fixture(scope="module")
def examples():
    out = {}
    for path in EXAMPLE_SPECS:
        G = graphgen.load(path)
        out[path.stem] = (G, graphgen.compile(G), graphgen.compile(G, backend="numba"))
    return out


def test_examples_agree_and_keep_the_api(examples):
    for name, (G, ref, mod) in examples.items():
        for attr in ("INPUTS", "PARAMS", "OUTPUTS", "DTYPES", "LOSS", "WRT"):
            assert getattr(mod, attr) == getattr(ref, attr), (name, attr)
        p_ref, p_nb = ref.init_params(3), mod.init_params(3)
        for k in p_ref:
            np.testing.assert_array_equal(p_ref[k], p_nb[k])
        arrays = random_arrays(G, seed=5, sizes={"batch": 7})
        f_ref, f_nb = ref.forward(**arrays), mod.forward(**arrays)
        assert list(f_ref) == list(f_nb)
        for k in f_ref:
            _close(f_ref[k], f_nb[k], f"{name} forward {k}")
        (l1, g1), (l2, g2) = ref.value_and_grad(**arrays), mod.value_and_grad(**arrays)
        assert abs(l1 - l2) <= TOL * max(1.0, abs(l1))
        assert list(g1) == list(g2)
        for k in g1:
            _close(g1[k], g2[k], f"{name} gradient {k}")


def test_argument_checks_are_the_numpy_ones(examples):
    G, ref, mod = examples["tiny"]
    arrays = random_arrays(G, seed=0)
    for bad in (
        {k: v for k, v in arrays.items() if k != "x"},
        {**arrays, "x": arrays["x"].astype(np.float32)},
        {**arrays, "x": arrays["x"][:, :1]},
        {**arrays, "extra": arrays["x"]},
    ):
        with pytest.raises(ValueError) as e_ref:
            ref.value_and_grad(**bad)
        with pytest.raises(ValueError) as e_nb:
            mod.value_and_grad(**bad)
        assert str(e_ref.value) == str(e_nb.value)


def test_fused_kernel_gradients_pass_finite_differences(examples):
    G, _, mod = examples["fanout"]
    assert "def _k_" in mod.__source__
    report = graphgen.check(G, module=mod)
    assert report.ok, report.format()


DEEP = """
name: deep
inputs:
  x: [batch, 5]
params:
  a1: {shape: [5], init: normal}
  b1: {shape: [5], init: normal}
  a2: {shape: [5], init: normal}
  b2: {shape: [1, 5], init: normal}
nodes:
  m1: {op: mul, args: [x, a1]}
  u1: {op: add, args: [m1, b1]}
  h1: {op: tanh, args: [u1]}
  m2: {op: mul, args: [h1, a2]}
  u2: {op: add, args: [m2, b2]}
  h2: {op: sigmoid, args: [u2]}
  s: {op: square, args: [h2]}
  r: {op: sum, args: [s], axis: 1, keepdims: true}
  q: {op: mul, args: [r, h1]}
  loss: {op: mean, args: [q]}
loss: loss
outputs: [loss]
"""


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    path = tmp_path_factory.mktemp("deep") / "deep.yaml"
    path.write_text(DEEP)
    G = graphgen.load(path)
    return G, graphgen.compile(G), graphgen.compile(G, backend="numba",
                                                    transcendentals="numba")


def test_transcendentals_stay_numpy_by_default_without_svml(deep):
    from graphgen.backends.numba import svml_available

    src = graphgen.generate(deep[0], backend="numba")
    python_level = src.split("def _check")[1]
    assert ("np.tanh(" in python_level) != svml_available()
    assert "@numba.njit(" in src  # the arithmetic around them is still fused


def test_a_chain_fuses_forward_and_backward_into_few_kernels(deep):
    G, ref, mod = deep
    src = mod.__source__
    body = src.split("def value_and_grad")[1]
    kernels = body.count("= _k_")
    assert 1 <= kernels <= 3, src
    assert "for i0 in range(n0):" in src and "for i1 in range(n1):" in src
    # sum_to_shape of the broadcast params is a loop accumulation, not np.sum
    assert "np.sum" not in src.split("def _check")[0]
    arrays = random_arrays(G, seed=2, sizes={"batch": 6})
    (l1, g1), (l2, g2) = ref.value_and_grad(**arrays), mod.value_and_grad(**arrays)
    assert abs(l1 - l2) <= TOL
    for k in g1:
        _close(g1[k], g2[k], k)
    assert graphgen.check(G, module=mod).ok


def test_float32_module(deep):
    G = deep[0]
    ref = graphgen.compile(G, dtype="float32")
    mod = graphgen.compile(G, backend="numba", dtype="float32")
    arrays = random_arrays(G, seed=1, dtype="float32")
    (l1, g1), (l2, g2) = ref.value_and_grad(**arrays), mod.value_and_grad(**arrays)
    assert abs(l1 - l2) <= 1e-5 * max(1.0, abs(l1))
    for k in g1:
        assert g2[k].dtype == np.float32
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options", [{"parallel": True}, {"fastmath": True}])
def test_parallel_and_fastmath_options(deep, options):
    G, ref, _ = deep
    mod = graphgen.compile(G, backend="numba", **options)
    src = mod.__source__
    assert ("parallel=True" in src) == bool(options.get("parallel"))
    assert ("fastmath=True" in src) == bool(options.get("fastmath"))
    arrays = random_arrays(G, seed=4, sizes={"batch": 37})
    (l1, g1), (l2, g2) = ref.value_and_grad(**arrays), mod.value_and_grad(**arrays)
    assert abs(l1 - l2) <= 1e-9 * max(1.0, abs(l1))
    for k in g1:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-9, atol=1e-9)


def test_random_dags_agree():
    from hypothesis import HealthCheck, Phase, given, reject, settings
    from hypothesis import strategies as st
    from test_random_dags import random_specs

    from graphgen import spec as spec_module

    @settings(max_examples=6, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate],  # shrinking recompiles: too slow
              suppress_health_check=list(HealthCheck))
    @given(random_specs(), st.integers(0, 2**16))
    def run(spec, seed):
        G = spec_module.from_dict(spec, source="random_dag.yaml")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", graphgen.GraphgenWarning)
            ref = graphgen.compile(G)
            mod = graphgen.compile(G, backend="numba")
        arrays = random_arrays(G, seed=seed)
        try:
            l1, g1 = ref.value_and_grad(**arrays)
        except NameError:  # NumPy backend: zero gradient of a symbolic shape (reported)
            reject()
        l2, g2 = mod.value_and_grad(**arrays)
        assert abs(l1 - l2) <= TOL * max(1.0, abs(l1))
        for k in g1:
            _close(g1[k], g2[k], k)

    run()


def test_cli_compile_numba(tmp_path):
    out = tmp_path / "tiny_nb.py"
    r = subprocess.run(
        [sys.executable, "-m", "graphgen", "compile", str(REPO / "examples" / "tiny.yaml"),
         "--backend", "numba", "--parallel", "--fastmath", "-o", str(out)],
        capture_output=True, text=True, cwd=REPO, check=False,
    )
    assert r.returncode == 0, r.stderr
    src = out.read_text()
    assert "parallel=True" in src and "fastmath=True" in src


CACHE_PROBE = """
import sys, time
t0 = time.perf_counter()
sys.path.insert(0, {dir!r})
import numpy as np
import {mod} as m
rng = np.random.default_rng(0)
p = m.init_params(0)
x = rng.standard_normal((4, 5)); 
m.value_and_grad(x=x, **p)
print(time.perf_counter() - t0)
"""


def test_cache_makes_the_second_process_fast(tmp_path, deep):
    G = deep[0]
    src = graphgen.generate(G, backend="numba")
    (tmp_path / "deep_nb.py").write_text(src)
    code = CACHE_PROBE.format(dir=str(tmp_path), mod="deep_nb")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    times = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, check=False)
        assert r.returncode == 0, r.stderr
        times.append(float(r.stdout.strip().splitlines()[-1]))
    print(f"\nfirst process {times[0]:.2f}s, second process (cached) {times[1]:.2f}s")
    assert list((tmp_path / "__pycache__").glob("deep_nb.*.nbi"))
    assert times[1] < times[0]
