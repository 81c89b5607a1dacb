"""The vectorizable exp/tanh/sigmoid/sin/cos of graphgen/backends/numba/vecmath.py.

Accuracy sweeps (ulp error against NumPy over ranges including the extremes, ±inf, NaN,
signed zeros and subnormals) on a standalone module built from the helpers' source, and
agreement of a generated ``transcendentals="inline"`` module with the NumPy backend.
"""

from __future__ import annotations

import importlib.util
import re
import warnings

import numpy as np
import pytest
from conftest import compiled_part

pytest.importorskip("numba")

import graphgen
from graphgen.backends.numba import vecmath as numba_math
from graphgen.check import random_arrays

OPS = ["exp", "tanh", "sigmoid", "sin", "cos"]


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


REF = {
    "exp": np.exp,
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "sin": np.sin,
    "cos": np.cos,
}
# max ulp distance from NumPy's own (≤ 1 ulp) result
MAX_ULP = {"exp": 2, "tanh": 3, "sin": 2, "cos": 2}
RANGES = {
    "exp": [(-1, 1), (-40, 40), (-745.2, 709.9), (-760, -700)],
    "tanh": [(-1e-6, 1e-6), (-1, 1), (0.6, 0.65), (-25, 25)],
    "sin": [(-4, 4), (-100, 100), (-1e5, 1e5), (-8e5, 8e5)],
    "cos": [(-4, 4), (-100, 100), (-1e5, 1e5), (-8e5, 8e5)],
}
SPECIALS = np.array(
    [
        0.0,
        -0.0,
        np.inf,
        -np.inf,
        np.nan,
        5e-324,
        -5e-324,
        1e-310,
        -1e-310,
        2.2250738585072014e-308,
        1e-300,
        1e-20,
        0.625,
        -0.625,
        19.9,
        20.1,
        700.0,
        709.78,
        709.79,
        710.0,
        1e300,
        -708.0,
        -740.0,
        -745.13,
        -745.14,
        -746.0,
        -1e300,
        np.pi / 2,
        np.pi,
        1e5,
        -8e5,
    ]
)


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    src = numba_math.module_source("float64")
    for op in OPS:
        src += f"""

@numba.njit(error_model="numpy")
def k_{op}(x, out):
    for i in range(x.shape[0]):
        out[i] = _nb_{op}(x[i])
"""
    path = tmp_path_factory.mktemp("nbmath") / "nbmath_f64.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("nbmath_f64", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(kernels, op, x):
    out = np.empty_like(x)
    getattr(kernels, "k_" + op)(x, out)
    return out


def _ulps(got, ref):
    """|got - ref| in units of ulp(ref); 0 where both are equal or both NaN."""
    same = (got == ref) | (np.isnan(got) & np.isnan(ref))
    with np.errstate(all="ignore"):
        sp = np.spacing(np.abs(ref))
        sp = np.where(sp == 0, 5e-324, sp)
        e = np.abs(got - ref) / sp
    return np.where(same, 0.0, e)


@pytest.mark.parametrize("op", ["exp", "tanh", "sin", "cos"])
def test_ulp_error_against_numpy(kernels, op):
    rng = np.random.default_rng(7)
    for lo, hi in RANGES[op]:
        x = rng.uniform(lo, hi, 200_000)
        with np.errstate(all="ignore"):
            e = _ulps(_run(kernels, op, x), REF[op](x))
        i = int(np.argmax(e))
        assert e[i] <= MAX_ULP[op], f"{op} on [{lo}, {hi}]: {e[i]} ulp at x={x[i]!r}"


@pytest.mark.parametrize("op", ["exp", "tanh", "sin", "cos"])
def test_specials_match_numpy(kernels, op):
    x = SPECIALS
    with np.errstate(all="ignore"):
        ref = REF[op](x)
    got = _run(kernels, op, x)
    if op in ("sin", "cos"):  # documented range: |x| < 2**19·π/2, and ±inf
        keep = ~np.isfinite(x) | (np.abs(x) < 8e5)
        x, ref, got = x[keep], ref[keep], got[keep]
    e = _ulps(got, ref)
    assert (np.isnan(got) == np.isnan(ref)).all()
    assert (e <= MAX_ULP[op]).all(), list(
        zip(x[e > MAX_ULP[op]], got[e > MAX_ULP[op]], ref[e > MAX_ULP[op]])
    )
    # signs of zeros and infinities
    assert (np.signbit(got[ref == 0]) == np.signbit(ref[ref == 0])).all() or op == "cos"


def test_sigmoid_is_the_numpy_modules_formula(kernels):
    x = np.random.default_rng(3).uniform(-30, 30, 100_000)
    got, ref = _run(kernels, "sigmoid", x), _sigmoid(x)
    # 1 - tanh near -1 turns an ulp of tanh into ~1e-16 absolute
    np.testing.assert_allclose(got, ref, rtol=1e-14, atol=4e-16)


def test_the_loop_vectorizes(kernels):
    asm = kernels.k_tanh.inspect_asm(kernels.k_tanh.signatures[0])
    assert re.search(r"\b[yz]mm\d", asm), "k_tanh did not vectorize"
    # no libm call left in the loop
    assert not re.search(r"call.*\b(tanh|exp)\b", asm)


SPEC = """
name: inline_math
inputs:
  x: [8, 16]
params:
  a: {shape: [16], init: normal}
  b: {shape: [16], init: normal}
nodes:
  u: {op: mul, args: [x, a]}
  v: {op: add, args: [u, b]}
  h: {op: tanh, args: [v]}
  e: {op: exp, args: [h]}
  s: {op: sigmoid, args: [v]}
  p: {op: sin, args: [v]}
  c: {op: cos, args: [u]}
  t: {op: add_n, args: [e, s, p, c, h]}
  q: {op: square, args: [t]}
  loss: {op: sum, args: [q]}
outputs: [loss, h]
loss: loss
"""


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_generated_inline_module_agrees_with_numpy(tmp_path, dtype):
    path = tmp_path / "inline_math.yaml"
    path.write_text(
        SPEC.replace("name: inline_math", f"name: inline_math\ndtype: {dtype}")
    )
    G = graphgen.load(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", graphgen.GraphgenWarning)
        ref = graphgen.compile(G)
        mod = graphgen.compile(G, backend="numba", transcendentals="inline")
    src = mod.__source__
    imports = {
        line.split()[1]
        for line in src.splitlines()
        if line.startswith(("import ", "from "))
    }
    assert imports == {"numba", "numpy", "os"}  # os: the file name its cache is under
    for op in OPS:  # emitted into the module and called by a kernel
        assert f"def _nb_{op}(" in src and f"_nb_{op}(" in compiled_part(src)
    assert "np.tanh(" not in src
    arrays = random_arrays(G, seed=4)
    (l1, g1), (l2, g2) = ref.value_and_grad(**arrays), mod.value_and_grad(**arrays)
    tol = 1e-10 if dtype == "float64" else 1e-4
    assert abs(l1 - l2) <= tol * max(1.0, abs(l1))
    for k in g1:
        np.testing.assert_allclose(g2[k], g1[k], rtol=tol, atol=tol, err_msg=k)
    f1, f2 = ref.forward(**arrays), mod.forward(**arrays)
    for k in f1:
        np.testing.assert_allclose(f2[k], f1[k], rtol=tol, atol=tol, err_msg=k)


# float32 helpers: max ulp distance from NumPy's float32 result, and from the correctly
# rounded one (the float64 function rounded to float32; NumPy's own float32 functions are
# within 1 ulp of it for tanh, sin and cos, 2 for exp)
MAX_ULP32 = {"exp": 3, "tanh": 4, "sin": 3, "cos": 3}
MAX_ULP32_EXACT = {"exp": 2, "tanh": 3, "sin": 2, "cos": 2}
RANGES32 = {
    "exp": [(-1, 1), (-40, 40), (-104, 88.8), (-110, -80)],
    "tanh": [(-1e-6, 1e-6), (-1, 1), (0.6, 0.65), (-12, 12)],
    "sin": [(-4, 4), (-100, 100), (-1e4, 1e4), (-8e5, 8e5)],
    "cos": [(-4, 4), (-100, 100), (-1e4, 1e4), (-8e5, 8e5)],
}
SPECIALS32 = np.array(
    [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-40, 1.2e-38, 1e-20, 1e-4]
    + [88.7, 88.72, 88.73, 89, -87, -103, -103.9, -104, -110, 9.0, 9.01, 10.1, 20]
    + [3e38, -3e38, np.pi / 2, np.pi, 1e4, -8e5],
    dtype=np.float32,
)


@pytest.fixture(scope="module")
def kernels32(tmp_path_factory):
    src = numba_math.module_source("float32")
    for op in OPS:
        src += f"""

@numba.njit(error_model="numpy")
def k_{op}(x, out):
    for i in range(x.shape[0]):
        out[i] = _nb_{op}(x[i])
"""
    path = tmp_path_factory.mktemp("nbmath32") / "nbmath_f32.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("nbmath_f32", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ulps32(got, ref):
    """|got - ref| in float32 ulps of ref; 0 where equal or both NaN."""
    same = (got == ref) | (np.isnan(got) & np.isnan(ref))
    with np.errstate(all="ignore"):
        sp = np.spacing(np.abs(ref)).astype(np.float64)
        sp = np.where(sp == 0, 1.4e-45, sp)
        e = np.abs(got.astype(np.float64) - ref.astype(np.float64)) / sp
    return np.where(same, 0.0, e)


@pytest.mark.parametrize("op", ["exp", "tanh", "sin", "cos"])
def test_float32_ulp_error_against_numpy(kernels32, op):
    rng = np.random.default_rng(11)
    for lo, hi in RANGES32[op]:
        x = rng.uniform(lo, hi, 200_000).astype(np.float32)
        got = _run(kernels32, op, x)
        assert got.dtype == np.float32
        with np.errstate(all="ignore"):
            ref = REF[op](x)
            exact = REF[op](x.astype(np.float64)).astype(np.float32)
        for what, r, limit in (
            ("NumPy float32", ref, MAX_ULP32[op]),
            ("rounded float64", exact, MAX_ULP32_EXACT[op]),
        ):
            e = _ulps32(got, r)
            i = int(np.argmax(e))
            assert e[i] <= limit, (
                f"{op} on [{lo}, {hi}] vs {what}: {e[i]} ulp at {x[i]!r}"
            )


@pytest.mark.parametrize("op", ["exp", "tanh", "sin", "cos"])
def test_float32_specials_match_numpy(kernels32, op):
    x = SPECIALS32
    with np.errstate(all="ignore"):
        ref = REF[op](x)
    got = _run(kernels32, op, x)
    if op in ("sin", "cos"):  # documented range: |x| < 2**19·π/2, and ±inf
        keep = ~np.isfinite(x) | (np.abs(x) < 8e5)
        x, ref, got = x[keep], ref[keep], got[keep]
    e = _ulps32(got, ref)
    assert (np.isnan(got) == np.isnan(ref)).all()
    bad = e > MAX_ULP32[op]
    assert not bad.any(), list(zip(x[bad], got[bad], ref[bad]))
    assert (np.signbit(got[ref == 0]) == np.signbit(ref[ref == 0])).all() or op == "cos"


def test_float32_sigmoid_and_vectorization(kernels32):
    x = np.random.default_rng(3).uniform(-30, 30, 100_000).astype(np.float32)
    got = _run(kernels32, "sigmoid", x)
    h = np.float32(0.5)
    ref = h * (np.float32(1.0) + np.tanh(h * x))
    # 1 - tanh near -1 turns an ulp of tanh into ~6e-8 absolute
    np.testing.assert_allclose(got, ref, rtol=4e-7, atol=1.2e-7)
    for op in ("tanh", "sin"):  # 8 float32 lanes per ymm, no libm call
        k = getattr(kernels32, "k_" + op)
        asm = k.inspect_asm(k.signatures[0])
        assert re.search(r"\bv\w+ps\s.*ymm", asm), f"k_{op} did not vectorize"
        assert not re.search(r"call.*\b(tanhf?|expf?|sinf?)\b", asm)


def test_helpers_emit_only_what_is_called():
    called = ["_nb_sin"]
    names = [
        re.search(r"def (\w+)\(", h).group(1)
        for h in numba_math.helpers(called, "float64")
    ]
    assert "_nb_sin" in names and "_nb_sincos_kernels" in names and "_nb_f2i" in names
    assert "_nb_tanh" not in names and "_nb_exp" not in names
    names32 = [
        re.search(r"def (\w+)\(", h).group(1)
        for h in numba_math.helpers(called, "float32")
    ]
    assert {"_nb_sin", "_nb_sincos_kernels", "_nb_f2i", "_nb_fma", "_nb_fma1"} <= set(
        names32
    )
    assert "_nb_f2i64" not in names32
    assert numba_math.excluded("numpy", {"exp", "log"}, "float64") == {"exp", "log"}
    assert numba_math.excluded("inline", {"exp", "log"}, "float64") == {"log"}
    assert numba_math.excluded("numba", {"exp", "log"}, "float64") == frozenset()
