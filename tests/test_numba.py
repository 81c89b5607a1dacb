"""The Numba backend: same API and same numbers as the NumPy backend, fused kernels, caching.

Numba compiles slowly on a small machine, so the modules are built once per test module:
every op case of ``test_ops_gradients.CASES`` goes into one combined graph (one NumPy and
one Numba module), and the tests check their slice of its results.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import warnings
import zlib

import networkx as nx
import numpy as np
import pytest

numba = pytest.importorskip("numba")

from conftest import EXAMPLE_SPECS, REPO, compiled_part
from conftest import python_level as conftest_python_level
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
    H.graph.update(
        name="every_op",
        dtype="float64",
        loss="loss",
        outputs=outputs + ["loss"],
        wrt=wrt,
    )
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
        print(
            f"\nevery-op numba module: compile + first call {time.perf_counter() - t0:.1f}s"
        )
    return {"vg": (ref.value_and_grad(**arrays), out), "module": mod}


def _close(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, f"{what}: shape {a.shape} vs {b.shape}"
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} vs {b.dtype}"
    np.testing.assert_allclose(b, a, rtol=TOL, atol=TOL, err_msg=what)


def _grads_agree(ref, mod, arrays):
    """The NumPy module ``ref`` and the Numba module ``mod`` give the same loss and
    gradients for ``arrays``, to TOL."""
    (l1, g1), (l2, g2) = ref.value_and_grad(**arrays), mod.value_and_grad(**arrays)
    assert abs(l1 - l2) <= TOL * max(1.0, abs(l1))
    for k in g1:
        _close(g1[k], g2[k], f"gradient {k}")


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
    # the generated module imports numpy and numba only (and the standard library's os,
    # for the file name its kernels are cached under)
    imports = {
        line.split()[1]
        for line in src.splitlines()
        if line.startswith(("import ", "from "))
    }
    assert imports == {"numba", "numpy", "os"}


@pytest.fixture(scope="module")
def examples():
    out = {}
    for path in EXAMPLE_SPECS:
        G = graphgen.load(path)  # in float64, where the backends agree to TOL
        out[path.stem] = (
            G,
            graphgen.compile(G, dtype="float64"),
            graphgen.compile(G, backend="numba", dtype="float64"),
        )
    return out


def test_examples_agree_and_keep_the_api(examples):
    for name, (G, ref, mod) in examples.items():
        for attr in ("INPUTS", "PARAMS", "OUTPUTS", "DTYPES", "LOSS", "WRT"):
            assert getattr(mod, attr) == getattr(ref, attr), (name, attr)
        p_ref, p_nb = ref.init_params(3), mod.init_params(3)
        for k in p_ref:
            np.testing.assert_array_equal(p_ref[k], p_nb[k])
        arrays = random_arrays(G, seed=5, sizes={"batch": 7}, dtype="float64")
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
    # whole=False: these tests are about the per-group kernels (whole-function mode below)
    return (
        G,
        graphgen.compile(G),
        graphgen.compile(G, backend="numba", transcendentals="numba", whole=False),
    )


def test_transcendentals_default_without_svml(deep):
    """Without SVML, tanh/sigmoid are fused as the inline helpers in both dtypes (in
    staged kernels, as row calls); parallel and fastmath modules leave them to NumPy."""
    from graphgen.backends.numba.program import svml_available

    if svml_available():
        pytest.skip("with SVML every transcendental is fused as np.*")
    for dtype in ("float64", "float32"):
        src = graphgen.generate(deep[0], backend="numba", whole=False, dtype=dtype)
        python_level = conftest_python_level(src)
        assert "np.tanh(" not in python_level and "_nb_tanh(" in src
        assert ("_nb_i2f(np.int32(" in src) == (dtype == "float32")  # float32 helpers
    for options in ({"parallel": True}, {"fastmath": True}):
        src = graphgen.generate(deep[0], backend="numba", whole=False, **options)
        python_level = conftest_python_level(src)
        assert "np.tanh(" in python_level and "_nb_tanh(" not in src, options
        assert "@numba.njit(" in src  # the arithmetic around them is still fused


CHAIN = """
name: chain
inputs:
  x: [rows, 16]
params:
  a1: {shape: [16], init: normal}
  b1: {shape: [16], init: normal}
  a2: {shape: [16], init: normal}
  b2: {shape: [16], init: normal}
  a3: {shape: [16], init: normal}
  b3: {shape: [16], init: normal}
nodes:
  m1: {op: mul, args: [x, a1]}
  u1: {op: add, args: [m1, b1]}
  h1: {op: tanh, args: [u1]}
  m2: {op: mul, args: [h1, a2]}
  u2: {op: add, args: [m2, b2]}
  h2: {op: tanh, args: [u2]}
  m3: {op: mul, args: [h2, a3]}
  u3: {op: add, args: [m3, b3]}
  h3: {op: sin, args: [u3]}
  q: {op: square, args: [h3]}
  s: {op: sum, args: [q], axis: [0, 1], keepdims: true}
  e: {op: exp, args: [h2]}
  m: {op: mean, args: [e]}
  t: {op: sum, args: [s]}
  loss: {op: add, args: [t, m]}
loss: loss
outputs: [loss]
"""


def test_staged_kernels_vectorize_and_agree(tmp_path):
    """A chain of transcendentals becomes stages (one loop over the last axis each, values
    crossing stages in the row buffer), reductions accumulate per column, extents that
    the spec fixes are constants; the stage loops vectorize; results agree to 1e-10."""
    import re

    path = tmp_path / "chain.yaml"
    path.write_text(CHAIN)
    G = graphgen.load(path)
    ref = graphgen.compile(G)
    for whole in (True, False):
        mod = graphgen.compile(G, backend="numba", whole=whole)
        src = mod.__source__
        kernels = compiled_part(src)
        assert "n1 = 16" in kernels
        assert re.search(r"rows\w*\[\d+, i1\] = ", kernels)
        assert re.search(r"acc\[\d+, i1\] \+= ", kernels)
        assert kernels.count("for i1 in range(n1):") > kernels.count("for i0 in")
        for rows in (1, 5, 37):
            arrays = random_arrays(G, seed=rows, sizes={"rows": rows})
            _grads_agree(ref, mod, arrays)
    asm = "".join(
        "".join(f.inspect_asm().values())
        for n, f in vars(mod).items()
        if n.startswith("_k_") and f.signatures
    )
    assert re.search(r"\b[yz]mm\d", asm), "no stage loop vectorized"


def test_a_chain_fuses_forward_and_backward_into_few_kernels(deep):
    G, ref, mod = deep
    src = mod.__source__
    body = src.split("def value_and_grad")[1]
    kernels = body.count("= _k_")
    assert 1 <= kernels <= 3, src
    assert "for i0 in range(n0):" in src and "for i1 in range(n1):" in src
    # sum_to_shape of the broadcast params is a loop accumulation, not np.sum
    assert "np.sum" not in compiled_part(src)
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

    from graphgen.frontends import spec as spec_module

    @settings(
        max_examples=6,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # shrinking recompiles: too slow
        suppress_health_check=list(HealthCheck),
    )
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
        [
            sys.executable,
            "-m",
            "graphgen",
            "compile",
            str(REPO / "examples" / "tiny.yaml"),
            "--backend",
            "numba",
            "--parallel",
            "--fastmath",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
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


def _run_python(code, env):
    """Run ``code`` in a fresh interpreter with ``env``; the finished process."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def test_cache_makes_the_second_process_fast(tmp_path, deep):
    G = deep[0]
    src = graphgen.generate(G, backend="numba")
    (tmp_path / "deep_nb.py").write_text(src)
    code = CACHE_PROBE.format(dir=str(tmp_path), mod="deep_nb")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    times = []
    for _ in range(2):
        r = _run_python(code, env)
        assert r.returncode == 0, r.stderr
        times.append(float(r.stdout.strip().splitlines()[-1]))
    print(f"\nfirst process {times[0]:.2f}s, second process (cached) {times[1]:.2f}s")
    assert list((tmp_path / "__pycache__").glob("deep_nb.*.nbi"))
    assert times[1] < times[0]


# --------------------------------------------------------------- whole-function mode

XENT = """
name: xent_mlp
inputs:
  x: [batch, 6]
  labels: {shape: [batch], dtype: int64}
params:
  W1: {shape: [6, 5], init: glorot_uniform}
  b1: {shape: [5], init: normal}
  W2: {shape: [5, 4], init: glorot_uniform}
  b2: {shape: [4], init: normal}
nodes:
  z1: {op: matmul, args: [x, W1]}
  a1: {op: add, args: [z1, b1]}
  h1: {op: relu, args: [a1]}
  z2: {op: matmul, args: [h1, W2]}
  logits: {op: add, args: [z2, b2]}
  loss: {op: softmax_cross_entropy, args: [logits, labels]}
outputs: [logits, loss]
loss: loss
"""

# logsumexp has no nopython form yet: the function falls back to per-group kernels
FALLBACK = """
name: fallback
inputs:
  x: [batch, 4]
params:
  W: {shape: [4, 3], init: glorot_uniform}
  b: {shape: [3], init: normal}
nodes:
  z: {op: matmul, args: [x, W]}
  a: {op: add, args: [z, b]}
  h: {op: tanh, args: [a]}
  s: {op: logsumexp, args: [h], axis: 1}
  loss: {op: mean, args: [s]}
outputs: [loss]
loss: loss
"""


def _load_yaml(tmp_path_factory, text, name):
    path = tmp_path_factory.mktemp(name) / f"{name}.yaml"
    path.write_text(text)
    return graphgen.load(path)


@pytest.fixture(scope="module")
def xent(tmp_path_factory):
    G = _load_yaml(tmp_path_factory, XENT, "xent_mlp")
    return G, graphgen.compile(G), graphgen.compile(G, backend="numba")


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    # z1 is 64 wide: a multiple of the register tiles' width in both dtypes
    text = XENT.replace("name: xent_mlp", "name: wide_mlp")
    text = text.replace("[6, 5]", "[6, 64]").replace("[5]", "[64]")
    text = text.replace("[5, 4]", "[64, 4]")
    return _load_yaml(tmp_path_factory, text, "wide_mlp")


def _python_level(src, fn):
    return src.split(f"\ndef {fn}(**arrays):")[1].split("\ndef ")[0]


def test_whole_function_mode_compiles_each_function_as_one_kernel(xent):
    mod = xent[2]
    src = mod.__source__
    for fn in ("forward", "value_and_grad"):
        assert f"def _{fn}_kernel(" in src
        body = _python_level(src, fn)
        # the typed kernel checks types and sizes; _check only explains a failure
        assert f"= _{fn}_kernel(" in body and "_fail(arrays)" in body
        assert "_unpack(arrays)" not in body
        assert "_k_" not in body and "@" not in body  # nothing else at the Python level
    # the softmax cross-entropy and its gradient are loops too
    assert "_loop_softmax_cross_entropy(logits, labels)" in src
    assert "_loop_softmax_xent_grad(logits, labels)" in src
    assert "_softmax_xent_grad(logits, labels)" not in src.replace("_loop_softmax", "")


@pytest.mark.parametrize("batch", [1, 9])
def test_whole_function_mode_agrees_with_numpy(xent, batch):
    G, ref, mod = xent
    arrays = random_arrays(G, seed=batch, sizes={"batch": batch})
    f_ref, f_nb = ref.forward(**arrays), mod.forward(**arrays)
    assert list(f_ref) == list(f_nb)
    for k in f_ref:
        _close(f_ref[k], f_nb[k], f"forward {k}")
    (l1, g1), (l2, g2) = ref.value_and_grad(**arrays), mod.value_and_grad(**arrays)
    assert isinstance(l2, float) and abs(l1 - l2) <= TOL * max(1.0, abs(l1))
    assert list(g1) == list(g2)
    for k in g1:
        _close(g1[k], g2[k], f"gradient {k}")
    # fresh arrays, as from the NumPy module
    assert not any(np.shares_memory(g2[k], v) for k in g2 for v in arrays.values())


def test_whole_function_mode_gradients_pass_finite_differences(xent):
    G, _, mod = xent
    report = graphgen.check(G, module=mod)
    assert report.ok, report.format()


def test_whole_function_mode_keeps_the_argument_checks(xent):
    G, ref, mod = xent
    arrays = random_arrays(G, seed=0)
    for bad in (
        {k: v for k, v in arrays.items() if k != "labels"},
        {**arrays, "labels": arrays["labels"].astype(np.float64)},
        {**arrays, "x": arrays["x"][:, :2]},
        {**arrays, "W1": arrays["W1"].astype(np.float32)},
        {**arrays, "b2": list(arrays["b2"])},
    ):
        with pytest.raises(ValueError) as e_ref:
            ref.value_and_grad(**bad)
        with pytest.raises(ValueError) as e_nb:
            mod.value_and_grad(**bad)
        assert str(e_ref.value) == str(e_nb.value)


def test_whole_function_mode_float32(xent):
    G = xent[0]
    ref = graphgen.compile(G, dtype="float32")
    mod = graphgen.compile(G, backend="numba", dtype="float32")
    assert "def _value_and_grad_kernel(" in mod.__source__
    arrays = random_arrays(G, seed=3, dtype="float32")
    (l1, g1), (l2, g2) = ref.value_and_grad(**arrays), mod.value_and_grad(**arrays)
    assert abs(l1 - l2) <= 1e-5 * max(1.0, abs(l1))
    for k in g1:
        assert g2[k].dtype == np.float32
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-4, atol=1e-5)
    f1, f2 = ref.forward(**arrays), mod.forward(**arrays)
    for k in f1:
        assert np.asarray(f2[k]).dtype == np.float32
        np.testing.assert_allclose(f2[k], f1[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_whole_function_matmul_calls_numpys_blas(xent, dtype):
    # NumPy's wheels bundle OpenBLAS; the kernels call it by name, not Numba's np.dot
    mod = graphgen.compile(xent[0], backend="numba", dtype=dtype)
    bundled = os.path.dirname(np.__file__) + ".libs"
    if os.path.isdir(bundled) and any("openblas64_" in f for f in os.listdir(bundled)):
        assert mod._numpy_blas() is True
        assert "scipy_cblas_sgemm64_" in mod.__source__
    rng = np.random.default_rng(0)
    t = np.dtype(dtype)
    a = rng.standard_normal((40, 70)).astype(t)
    b = rng.standard_normal((70, 30)).astype(t)
    tol = 1e-12 if dtype == "float64" else 1e-4
    # C, F (a transposed C array) and strided operands; empty products are zeros
    for x, y in [
        (a, b),
        (np.asfortranarray(a), b),
        (a, np.asfortranarray(b)),
        (np.ascontiguousarray(a.T).T, np.ascontiguousarray(b.T).T),
        (a[:, ::2], b[::2]),
        (a[::3, :], b[:, 1::2]),
    ]:
        got = mod._gemm(x, y)
        assert got.dtype == t and got.flags.c_contiguous
        np.testing.assert_allclose(got, x @ y, rtol=tol, atol=tol)
    assert np.array_equal(mod._gemm(a[:, :0], b[:0]), np.zeros((40, 30), t))
    assert mod._gemm(a[:0], b).shape == (0, 30)


# (n, k, m) of products that take each path of _matmul on an AVX-512 host: the loop
# (n·k·m ≤ 4096), register tiles (whole tiles; ragged rows and columns covered by
# overlapping tiles; b = Wᵀ copied), BLAS (a narrow ragged width, a short ragged column
# of rows, over 2**24 multiply-adds)
SIMD_SHAPES = [
    (64, 100, 64),
    (67, 30, 96),
    (70, 50, 136),
    (32, 784, 128),
    (8, 20, 32),
    (200, 3, 32),
]
BLAS_SHAPES = [(32, 128, 10), (33, 100, 64), (16, 20, 20), (256, 1024, 128)]
TINY_SHAPES = [(4, 5, 6), (1, 1, 1)]


def _operands(rng, n, k, m, t):
    a = rng.standard_normal((n, k)).astype(t)
    b = rng.standard_normal((k, m)).astype(t)
    # C, F (a transposed C array, as x.T), a strided view, b = Wᵀ and strided columns
    yield a, b
    yield np.asfortranarray(a), b
    yield np.ascontiguousarray(np.repeat(a, 2, axis=1))[:, ::2], b
    yield a, np.asfortranarray(b)
    yield a, np.ascontiguousarray(np.repeat(b, 2, axis=1))[:, ::2]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matmul_paths_agree_with_numpy(wide, dtype):
    mod = graphgen.compile(wide, backend="numba", dtype=dtype)
    rng = np.random.default_rng(1)
    t = np.dtype(dtype)
    tol = 1e-12 if dtype == "float64" else 2e-5
    for n, k, m in SIMD_SHAPES + BLAS_SHAPES + TINY_SHAPES:
        for a, b in _operands(rng, n, k, m, t):
            want = a.astype(np.float64) @ b.astype(np.float64)
            scale = max(1.0, float(np.abs(want).max()))
            # _simd_matmul hands products whose width is not a multiple to BLAS
            for f in (mod._matmul, mod._simd_matmul):
                got = f(a, b)
                assert got.dtype == t and got.flags.c_contiguous and got.shape == (n, m)
                np.testing.assert_allclose(got, want, rtol=0, atol=tol * scale * k)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matmul_runs_mid_sized_products_in_register_tiles(wide, dtype):
    mod = graphgen.compile(wide, backend="numba", dtype=dtype)
    if not mod._LANES:
        assert mod._simd_matmul is mod._gemm  # no AVX-512 here: BLAS
        pytest.skip("this host's compiled code has no AVX-512")
    assert mod._LANES == 64 // np.dtype(dtype).itemsize
    rng = np.random.default_rng(2)
    t = np.dtype(dtype)
    differs = False
    for n, k, m in SIMD_SHAPES + BLAS_SHAPES:
        a = rng.standard_normal((n, k)).astype(t)
        b = rng.standard_normal((k, m)).astype(t)
        tiles, blas = mod._simd_matmul(a, b), mod._gemm(a, b)
        want = tiles if (n, k, m) in SIMD_SHAPES else blas
        # the same bits as the path the rule picks
        assert np.array_equal(mod._matmul(a, b), want), (n, k, m)
        differs |= not np.array_equal(tiles, blas)
    assert differs  # the two paths round differently, so the check above can fail


def test_register_tiles_only_where_a_product_may_use_them(xent, wide):
    # xent's products are 5 and 4 wide: no _simd_matmul to compile at import
    src = graphgen.generate(xent[0], backend="numba")
    assert "def _matmul(" in src and "_simd_matmul(" not in src
    for dtype in ("float64", "float32"):
        src = graphgen.generate(wide, backend="numba", dtype=dtype)
        assert "def _simd_matmul(" in src and "return _simd_matmul(a, b)" in src


def test_register_tiles_agree_with_numpy_end_to_end(wide):
    # batch 64: x @ W1 (64×6 @ 6×64) and logits_bar @ W2ᵀ (b copied) take the tiles
    # on an AVX-512 host, xᵀ @ a1_bar (6 rows) BLAS; gradients match the NumPy module
    # and central differences
    ref, mod = graphgen.compile(wide), graphgen.compile(wide, backend="numba")
    arrays = random_arrays(wide, seed=5, sizes={"batch": 64})
    _grads_agree(ref, mod, arrays)
    report = graphgen.check(wide, module=mod, arrays=arrays)
    assert report.ok, report.format()


def test_matmul_without_avx512_is_blas(wide, tmp_path):
    # NUMBA_CPU_NAME picks a target other than this host (a cache shared between
    # machines): no 512-bit registers assumed, and the module still computes
    path = tmp_path / "wide_mlp.py"
    path.write_text(graphgen.generate(wide, backend="numba"))
    code = (
        "import sys, numpy as np\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import wide_mlp as m\n"
        "assert m._LANES == 0 and m._simd_matmul is m._gemm\n"
        "a, b = np.ones((32, 64)), np.ones((64, 32))\n"
        "assert (m._matmul(a, b) == 64).all()\n"
        "print('ok')\n"
    )
    env = dict(os.environ, NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path))
    r = _run_python(code, env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_whole_function_mode_falls_back_when_an_op_has_no_nopython_form(
    tmp_path_factory,
):
    G = _load_yaml(tmp_path_factory, FALLBACK, "fallback")
    src = graphgen.generate(G, backend="numba")
    assert "_kernel(" not in src  # logsumexp: per-group kernels, NumPy in between
    assert "_logsumexp(" in _python_level(src, "value_and_grad")
    ref, mod = graphgen.compile(G), graphgen.compile(G, backend="numba")
    arrays = random_arrays(G, seed=4, sizes={"batch": 5})
    _grads_agree(ref, mod, arrays)


def test_whole_option(xent):
    G = xent[0]
    assert "_kernel(" not in graphgen.generate(G, backend="numba", whole=False)
    # parallel kernels stay called from Python
    assert "_kernel(" not in graphgen.generate(G, backend="numba", parallel=True)
    with pytest.raises(graphgen.GraphgenError):
        graphgen.generate(G, backend="numba", whole="yes")


def test_whole_function_module_is_ruff_formatted(xent):
    from conftest import VENV_BIN

    ruff = VENV_BIN / "ruff"
    if not ruff.exists():
        pytest.skip("ruff not installed")
    for G in (xent[0], graphgen.load(REPO / "examples" / "tiny.yaml")):
        r = subprocess.run(
            [str(ruff), "format", "--diff", "-"],
            input=graphgen.generate(G, backend="numba"),
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        assert r.returncode == 0, r.stdout + r.stderr


def test_whole_function_mode_takes_strided_arrays(xent):
    # the typed kernel wants C-contiguous arrays; others go through contiguous copies
    G, ref, mod = xent
    arrays = random_arrays(G, seed=3, sizes={"batch": 5})
    strided = {
        k: np.asfortranarray(v) if v.ndim == 2 else v[::-1][::-1]
        for k, v in arrays.items()
    }
    strided["x"] = np.ascontiguousarray(np.repeat(arrays["x"], 2, axis=1))[:, ::2]
    assert not strided["x"].flags.c_contiguous
    (l1, g1), (l2, g2) = ref.value_and_grad(**arrays), mod.value_and_grad(**strided)
    assert abs(l1 - l2) <= TOL * max(1.0, abs(l1))
    for k in g1:
        _close(g1[k], g2[k], f"grad {k}")


def test_whole_function_mode_rejects_a_wrong_dtype_by_name(xent):
    G, _, mod = xent
    arrays = random_arrays(G, seed=4, sizes={"batch": 3})
    arrays["W1"] = arrays["W1"].astype(np.float32)
    with pytest.raises(ValueError, match="'W1'"):
        mod.value_and_grad(**arrays)


def test_whole_function_kernels_compile_at_their_first_call(tmp_path_factory):
    # a fresh module: nothing compiled at import; value_and_grad compiles its kernel
    # alone, for exactly the declared types, even when its first call is wrong
    G = _load_yaml(tmp_path_factory, XENT, "xent_lazy")
    mod = graphgen.compile(G, backend="numba")
    assert not mod._forward_kernel.overloads
    assert not mod._value_and_grad_kernel.overloads
    arrays = random_arrays(G, seed=5, sizes={"batch": 3})
    bad = {**arrays, "W1": arrays["W1"].astype(np.float32)}
    with pytest.raises(ValueError, match="'W1'"):
        mod.value_and_grad(**bad)
    [sig] = mod._value_and_grad_kernel.signatures
    assert all(
        t.dtype == numba.from_dtype(a.dtype) for t, a in zip(sig, arrays.values())
    )
    assert not mod._forward_kernel.overloads  # a training loop never compiles forward
    ref = graphgen.compile(G)
    _grads_agree(ref, mod, arrays)
    assert len(mod._value_and_grad_kernel.signatures) == 1


def test_whole_function_first_calls_from_two_threads(tmp_path_factory):
    import threading

    G = _load_yaml(tmp_path_factory, XENT, "xent_threads")
    mod = graphgen.compile(G, backend="numba")
    arrays = random_arrays(G, seed=6, sizes={"batch": 4})
    want = graphgen.compile(G).value_and_grad(**arrays)[0]
    results, errors = [], []

    def first_call():
        try:
            results.append(mod.value_and_grad(**arrays)[0])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=first_call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 2
    assert all(abs(r - want) <= TOL * max(1.0, abs(want)) for r in results)
    assert len(mod._value_and_grad_kernel.signatures) == 1


ONE_KERNEL = """
name: one_kernel
inputs:
  x: [batch, 6]
params:
  a1: {shape: [6], init: normal}
  b1: {shape: [6], init: normal}
  a2: {shape: [6], init: normal}
nodes:
  m1: {op: mul, args: [x, a1]}
  u1: {op: add, args: [m1, b1]}
  h1: {op: tanh, args: [u1]}
  m2: {op: mul, args: [h1, a2]}
  h2: {op: sigmoid, args: [m2]}
  s: {op: square, args: [h2]}
  loss: {op: sum, args: [s]}
loss: loss
outputs: [loss]
"""


def test_one_kernel_function_stays_python_level(tmp_path_factory):
    # a function that is one fused kernel's call gains nothing from a compiled caller,
    # which would optimize the kernel's code a second time; whole=True still makes one
    G = _load_yaml(tmp_path_factory, ONE_KERNEL, "one_kernel")
    src = graphgen.generate(G, backend="numba")
    assert src.count("one fused loop over") == 2  # forward, value_and_grad
    assert "_kernel(" not in src
    assert "_compile(" not in src and "import threading" not in src
    forced = graphgen.generate(G, backend="numba", whole=True)
    assert "def _value_and_grad_kernel(" in forced and "def _forward_kernel(" in forced
    ref, mod = graphgen.compile(G), graphgen.compile(G, backend="numba")
    arrays = random_arrays(G, seed=2, sizes={"batch": 3})
    _grads_agree(ref, mod, arrays)


# The ops of small transformers (issue 15): an embedding lookup (negative and repeated
# ids: its gradient adds rows up), layer norm, a stack of matrices times a matrix, slices
# (gradients: unslice), batched matmuls of strided views, a mask, a last-axis softmax,
# a sequence cross-entropy; their gradients add partial sums (bias, softmax, layer norm).
SEQ = """
name: seq_ops
inputs:
  ids: {shape: [batch, 5], dtype: int64}
  labels: {shape: [batch, 5], dtype: int64}
  mask: [5, 5]
params:
  E: {shape: [7, 8], init: normal}
  gain: {shape: [8], init: normal}
  shift: {shape: [8], init: normal}
  W: {shape: [8, 12], init: glorot_uniform}
  c: {shape: [12], init: normal}
  V: {shape: [4, 7], init: glorot_uniform}
nodes:
  x: {op: gather, args: [E, ids]}
  h: {op: layer_norm, args: [x, gain, shift], axis: 2}
  z: {op: matmul, args: [h, W]}
  qkv: {op: add, args: [z, c]}
  q: {op: slice, args: [qkv], axis: 2, start: 0, stop: 4}
  k: {op: slice, args: [qkv], axis: 2, start: 4, stop: 8}
  v: {op: slice, args: [qkv], axis: 2, start: 8, stop: 12}
  kt: {op: transpose, args: [k], perm: [0, 2, 1]}
  s: {op: matmul, args: [q, kt]}
  sm: {op: where, args: [mask, s, -30.0]}
  p: {op: softmax, args: [sm], axis: 2}
  o: {op: matmul, args: [p, v]}
  logits: {op: matmul, args: [o, V]}
  loss: {op: softmax_cross_entropy, args: [logits, labels]}
outputs: [logits, loss]
loss: loss
"""


def test_whole_function_mode_takes_the_ops_of_small_transformers(tmp_path_factory):
    # whole=True: these forms cost the first call ~5x in compile time; automatic mode
    # keeps such a function at the Python level
    G = _load_yaml(tmp_path_factory, SEQ, "seq_ops")
    default = graphgen.generate(G, backend="numba")
    assert "_kernel(" not in default.replace("_k_", "")
    src = graphgen.generate(G, backend="numba", whole=True)
    assert "def _value_and_grad_kernel(" in src and "def _forward_kernel(" in src
    kernel = src.split("\ndef _value_and_grad_kernel(")[1].split("\ndef ")[0]
    for h in ("take_rows", "scatter_rows", "row_layer_norm", "flat_matmul"):
        assert f"_{h}(" in kernel
    # the q/k/v split's gradient: one concatenate (optimize.concat_slices; the unslice
    # form, _placed, is tested in test_concat_slices.py)
    assert "np.concatenate(" in kernel
    for h in ("batched_matmul", "loop_softmax", "row_sums", "col_sums"):
        assert f"_{h}(" in kernel
    ref, mod = graphgen.compile(G), graphgen.compile(G, backend="numba", whole=True)
    rng = np.random.default_rng(0)
    arrays = {
        "ids": rng.integers(-7, 7, size=(3, 5)),  # negative ids count from the end
        "labels": rng.integers(0, 7, size=(3, 5)),
        "mask": (rng.random((5, 5)) < 0.7).astype(np.float64),
        **ref.init_params(1),
    }
    _grads_agree(ref, mod, arrays)


BIG_LOG = """
name: big_log
inputs:
  x: [256, 64]
params:
  a: {shape: [64], init: normal}
nodes:
  u: {op: mul, args: [x, a]}
  s: {op: square, args: [u]}
  t: {op: add, args: [s, 1.0]}
  l: {op: log, args: [t]}
  loss: {op: mean, args: [l]}
outputs: [loss]
loss: loss
"""


def test_whole_function_mode_leaves_big_libm_work_to_numpy(tmp_path_factory):
    # 16384 elements of log (NumPy's SIMD loop) in a function of a few ops: the Python
    # level; forced, one compiled function
    G = _load_yaml(tmp_path_factory, BIG_LOG, "big_log")
    assert "np.log(" in graphgen.generate(G, backend="numba")
    assert "def _forward_kernel(" not in graphgen.generate(G, backend="numba")
    forced = graphgen.generate(G, backend="numba", whole=True)
    assert "def _forward_kernel(" in forced


def test_whole_function_mode_reduction_of_a_0d_value():
    # mean over no axes of a 0-d value: a float in nopython code has no .mean()
    import networkx as nx

    G = nx.DiGraph(name="zero_d", loss="J", wrt=["b"], outputs=["J"])
    G.add_node("x", kind="input", shape=("batch", 3), dtype="float64")
    G.add_node("b", kind="param", shape=(3,), dtype="float64")
    G.add_node("s", kind="op", op="sum", attrs={})
    G.add_edge("b", "s", pos=(0,))
    G.add_node("m", kind="op", op="mean", attrs={})
    G.add_edge("s", "m", pos=(0,))
    G.add_node("p", kind="op", op="mul", attrs={})
    G.add_edge("x", "p", pos=(0,))
    G.add_edge("m", "p", pos=(1,))
    G.add_node("J", kind="op", op="sum", attrs={})
    G.add_edge("p", "J", pos=(0,))
    ref, mod = graphgen.compile(G), graphgen.compile(G, backend="numba")
    arrays = random_arrays(G, seed=1)
    (l1, g1), (l2, g2) = ref.value_and_grad(**arrays), mod.value_and_grad(**arrays)
    assert abs(l1 - l2) <= TOL * max(1.0, abs(l1))
    _close(g1["b"], g2["b"], "grad b")


def test_whole_function_kernels_take_an_unread_0d_array():
    # a 0-d array the function does not read (ONNX Dropout's ratio at inference) is
    # still an argument of the kernel: ``Array(float64, 0, "C")`` in its signature,
    # not ``float64[::1]`` (1-d: every call was a TypeError)
    import networkx as nx

    G = nx.DiGraph(name="zero_d_args", loss="J", wrt=["b", "W"], outputs=["J", "y"])
    G.add_node("x", kind="input", shape=("batch", 3), dtype="float64")
    G.add_node("k", kind="input", shape=(), dtype="float64")
    G.add_node("b", kind="param", shape=(3,), dtype="float64")
    G.add_node("W", kind="param", shape=(3, 3), dtype="float64")
    for n, op, args in [
        ("m", "matmul", ["x", "W"]),  # not one fused kernel
        ("y", "add", ["m", "b"]),
        ("t", "tanh", ["y"]),
        ("J", "sum", ["t"]),
    ]:
        G.add_node(n, kind="op", op=op, attrs={})
        for i, a in enumerate(args):
            G.add_edge(a, n, pos=(i,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # k: "the loss does not depend on it"
        ref = graphgen.compile(G)
        mod = graphgen.compile(G, backend="numba")
    assert 'numba.types.Array(numba.float64, 0, "C")' in mod.__source__
    arrays = random_arrays(G, seed=2)
    assert arrays["k"].shape == ()
    _grads_agree(ref, mod, arrays)
    _close(ref.forward(**arrays)["y"], mod.forward(**arrays)["y"], "y")


SHARED = """
name: shared
inputs:
  x: [4, 8]
  y: [batch, 8]
params:
  a: {shape: [8], init: normal}
  b: {shape: [8], init: normal}
nodes:
  u: {op: mul, args: [x, a]}
  r: {op: relu, args: [u]}
  v: {op: mul, args: [y, b]}
  s: {op: relu, args: [v]}
  p: {op: sum, args: [r]}
  q: {op: sum, args: [s]}
  loss: {op: add, args: [p, q]}
loss: loss
outputs: [loss, r, s]
"""


def test_identical_kernels_are_emitted_once(tmp_path):
    """Groups whose kernels differ only in names and sizes share one generically named
    kernel (compiled once by Numba), whose docstring lists the groups it serves."""
    import re

    path = tmp_path / "shared.yaml"
    path.write_text(SHARED)
    G = graphgen.load(path)
    ref = graphgen.compile(G)
    for whole in (True, False):
        mod = graphgen.compile(G, backend="numba", whole=whole)
        src = mod.__source__
        kernels = compiled_part(src)
        names = re.findall(r"^def (_k_\w+)\(", kernels, re.MULTILINE)
        assert len(names) == len(set(names))
        shared = [n for n in names if n.startswith("_k_shared")]
        assert shared, src
        doc = " ".join(kernels.split(f"def {shared[0]}(")[1].split('"""')[1].split())
        assert "shared by 2 fused groups" in doc
        assert re.search(r"\br\b.* over \(4, 8\); .*\bs\b.* over \(batch, 8\)", doc)
        assert src.count(f"{shared[0]}(") >= 3  # defined once, called for both
        for batch in (1, 5):
            arrays = random_arrays(G, seed=batch, sizes={"batch": batch})
            _grads_agree(ref, mod, arrays)
            f1, f2 = ref.forward(**arrays), mod.forward(**arrays)
            for k in f1:
                _close(f1[k], f2[k], k)


def test_kernels_share_across_row_buffer_widths(tmp_path):
    """A kernel with an accumulator writes its last-axis size as a constant; groups that
    differ only in that size (ResNet's blocks at widths 56, 28, 14, 7) still share one
    kernel, which then reads the size off its input. Groups of one width keep it."""
    import re

    for widths, const in (((8, 16), False), ((8, 8), True)):
        text = SHARED.replace("y: [batch, 8]", f"y: [3, {widths[1]}]")
        text = text.replace("b: {shape: [8]", f"b: {{shape: [{widths[1]}]")
        path = tmp_path / f"widths_{widths[1]}.yaml"
        path.write_text(text)
        G = graphgen.load(path)
        ref = graphgen.compile(G)
        for whole in (True, False):
            mod = graphgen.compile(G, backend="numba", whole=whole)
            kernels = compiled_part(mod.__source__)
            names = re.findall(r"^def (_k_\w+)\(", kernels, re.MULTILINE)
            assert names and all(n.startswith("_k_shared") for n in names), kernels
            for n in names:
                body = kernels.split(f"def {n}(")[1].split("\n\n\n")[0]
                assert "shared by 2 fused groups" in body
                assert "acc = np.zeros" in body
                assert bool(re.search(r"n1 = 8\n", body)) == const, body
                assert ("n1 = a0.shape[1]" in body) != const, body
            arrays = random_arrays(G, seed=2)
            _grads_agree(ref, mod, arrays)


FANOUT = """
name: fanout
inputs:
  x: [rows, 24]
nodes:
"""
for _k in range(1, 9):
    FANOUT += (
        f"  p{_k}: {{op: mul, args: [x, {_k / 4}]}}\n"
        f"  s{_k}: {{op: sin, args: [p{_k}]}}\n"
        f"  r{_k}: {{op: sum, args: [s{_k}], axis: [0, 1]}}\n"
    )
_terms = ", ".join(f"r{k}" for k in range(1, 9))
FANOUT += f"  loss: {{op: add_n, args: [{_terms}]}}\n"
FANOUT += "loss: loss\noutputs: [loss]\nwrt: [x]\n"


def test_float32_fanout_kernels_stage_and_sum_in_blocks(tmp_path_factory):
    """Eight sin (and their cos) of one input: at most STAGE_TRANSCENDENTALS arguments
    per stage, sin(p) and cos(p) in the same stage; float32 partial sums go into float64
    ones every ACC_BLOCK rows, so a sum over many rows stays as accurate as NumPy's."""
    from graphgen.backends.numba.kernels import ACC_BLOCK, STAGE_TRANSCENDENTALS

    G = _load_yaml(tmp_path_factory, FANOUT, "fanout")
    src = graphgen.generate(G, backend="numba", dtype="float32", whole=False)
    kernel = src.split("def _k_")[-1].split("\ndef ")[0]
    stages = kernel.split("for i1 in range(n1):")[1:]
    assert len(stages) >= 8 // STAGE_TRANSCENDENTALS
    for body in stages:
        sins = set(re.findall(r"_nb_sin\((\w+)\)", body))
        assert len(sins) <= STAGE_TRANSCENDENTALS
        assert sins == set(re.findall(r"_nb_cos\((\w+)\)", body))
    assert f"if nrow == {ACC_BLOCK}:" in kernel and "acc += part" in kernel
    ref = graphgen.compile(G, dtype="float64")
    mod = graphgen.compile(G, backend="numba", dtype="float32")
    x = np.random.default_rng(0).uniform(-3, 3, (1000, 24))
    (l64, g64), (l32, g32) = (
        ref.value_and_grad(x=x),
        mod.value_and_grad(x=x.astype(np.float32)),
    )
    assert abs(l32 - l64) <= 2e-6 * np.abs(np.sin(x)).sum() * 8
    np.testing.assert_allclose(g32["x"], g64["x"], rtol=1e-5, atol=1e-5)


ROW_CHAIN = """
name: row_chain
inputs:
  x: [rows, 40]
params:
  a1: {shape: [40], init: normal}
  a2: {shape: [40], init: normal}
  a3: {shape: [40], init: normal}
nodes:
  u1: {op: mul, args: [x, a1]}
  h1: {op: tanh, args: [u1]}
  u2: {op: mul, args: [h1, a2]}
  h2: {op: sigmoid, args: [u2]}
  u3: {op: mul, args: [h2, a3]}
  h3: {op: exp, args: [u3]}
  h4: {op: tanh, args: [h3]}
  loss: {op: sum, args: [h4], axis: [0, 1]}
loss: loss
outputs: [loss]
wrt: [x, a1, a2, a3]
"""


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_staged_tanh_exp_sigmoid_are_row_calls(tmp_path_factory, dtype):
    """In a staged kernel tanh, exp and sigmoid of an earlier stage's row run as one call
    of a shared row loop (ROW_CALLS) each, not as a copy of the loop per stage."""
    G = _load_yaml(tmp_path_factory, ROW_CHAIN, "row_chain")
    src = graphgen.generate(
        G, backend="numba", dtype=dtype, whole=False, transcendentals="inline"
    )
    forward = src.split("def _k_")[1].split("\ndef ")[0]
    calls = re.findall(r"_nb_(\w+)_row\(\w+\[\d+\], \w+\[\d+\]\)", forward)
    assert calls == ["tanh", "sigmoid", "exp", "tanh"], forward
    assert "(a whole row)" in forward
    ref = graphgen.compile(G, dtype="float64")
    mod = graphgen.compile(G, backend="numba", dtype=dtype, transcendentals="inline")
    rng = np.random.default_rng(1)
    arrays = {"x": rng.uniform(-1, 1, (37, 40))}
    arrays.update({f"a{k}": rng.uniform(-0.5, 0.5, 40) for k in (1, 2, 3)})
    (l1, g1) = ref.value_and_grad(**arrays)
    (l2, g2) = mod.value_and_grad(**{k: v.astype(dtype) for k, v in arrays.items()})
    tol = 1e-10 if dtype == "float64" else 2e-5
    assert abs(l1 - l2) <= tol * abs(l1)
    for k in g1:
        np.testing.assert_allclose(g2[k], g1[k], rtol=tol, atol=tol)
