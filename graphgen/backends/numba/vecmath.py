"""Branch-free, loop-vectorizable exp, tanh, sigmoid, sin and cos for Numba kernels.

Without Intel SVML, ``np.tanh(x)`` inside an ``@numba.njit`` loop is one scalar libm call
per element and stops LLVM from vectorizing the loop (docs/numba.md: 7–58× slower than
NumPy's SIMD loops). The functions here are written in plain arithmetic instead — range
reduction, a polynomial, selects instead of branches, and ``2**k`` built from the bits of
a float — so that, inlined into a kernel, the loop can vectorize. They are plain
``@numba.njit`` functions that LLVM inlines (Numba-level ``inline="always"`` would compile
them with the kernel's flags, and ``fastmath`` reassociation folds the rounding trick).

The generated module must import only ``numpy`` and ``numba``, so these are not imported
by it: :func:`helpers` returns their source, for the module's dtype, with only the ones a
module's kernels call (and what they call). The scalar macros in
``templates/numba/scalar.j2`` call them by name (``_nb_tanh(x)``, ...).

They are the default for float64 modules without SVML (``transcendentals="inline"``).

Accuracy (float64, ``tests/test_numba_math.py`` sweeps them against NumPy): exp ≤ 1 ulp,
tanh ≤ 3 ulp (one path for every x: e/(e + 2), e = expm1(2|x|)), sin/cos ≤ 1 ulp for |x| < 2**19·π/2 ≈ 8.2e5 (the Cody–Waite reduction by
π/2 is exact there; beyond, accuracy degrades — 1e10 is off by ~1e-7 — and past
|x| ~ 2**51 the result is garbage: NumPy's libm does a Payne–Hanek reduction, this does
not). ±inf and NaN follow NumPy (exp(inf) = inf, exp(-inf) = 0, tanh(±inf) = ±1,
sin(±inf) = NaN); exp overflows to inf past 709.78 and underflows gradually (subnormals)
to 0 past -745.13.

float32 modules get float32 versions (``SOURCE["float32"]``: float32 arithmetic, 8 lanes
per 256-bit vector, float32 polynomials — Cephes' expf/sinf/cosf — and every constant an
``np.float32``); sin and cos reduce the argument in float32 with exact FMAs (π/2 in
three parts; within 1.7 ulp on every float32 in [0, 8e5]). Accuracy (``tests/test_numba_math.py``): within 1 ulp (exp) /
2 ulp (tanh, sin, cos) of the correctly rounded result, where NumPy's own float32 functions
are within 2 / 1 ulp; ≤ 3 ulp from NumPy's float32 result (tanh ≤ 4).
"""

from __future__ import annotations

from ...codegen.naming import Code

#: helper name -> the helpers it calls
DEPS = {
    "_nb_f2i": (),
    "_nb_i2f": (),
    "_nb_fma": (),
    "_nb_exp": ("_nb_f2i", "_nb_i2f", "_nb_fma"),
    "_nb_tanh": ("_nb_expm1_2",),
    "_nb_expm1_2": ("_nb_f2i", "_nb_i2f", "_nb_fma"),
    "_nb_sigmoid": ("_nb_tanh",),
    "_nb_sin": ("_nb_f2i", "_nb_sincos_kernels"),
    "_nb_cos": ("_nb_f2i", "_nb_sincos_kernels"),
    "_nb_sincos_kernels": (),
    "_nb_exp_row": ("_nb_exp",),
    "_nb_tanh_row": ("_nb_tanh",),
    "_nb_sigmoid_row": ("_nb_sigmoid",),
}

#: the ops a staged kernel applies to a whole row by one call of ``_nb_<op>_row``
ROW_OPS = frozenset(h[len("_nb_") : -len("_row")] for h in DEPS if h.endswith("_row"))

#: op name -> the helper its scalar macro calls
OPS = {
    "exp": "_nb_exp",
    "tanh": "_nb_tanh",
    "sigmoid": "_nb_sigmoid",
    "sin": "_nb_sin",
    "cos": "_nb_cos",
}

_BITCAST = '''
@numba.extending.intrinsic
def {name}(typingctx, x):
    """{doc}"""
    sig = numba.{to}(x)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(signature.return_type))

    return sig, codegen
'''

SOURCE = {"float64": {}, "float32": {}}
SOURCE["float64"]["_nb_f2i"] = _BITCAST.format(
    name="_nb_f2i", to="int64", doc="The bits of a float64 as an int64 (no conversion)."
)
SOURCE["float64"]["_nb_i2f"] = _BITCAST.format(
    name="_nb_i2f", to="float64", doc="The float64 whose bits are an int64."
)
SOURCE["float32"]["_nb_f2i"] = _BITCAST.format(
    name="_nb_f2i", to="int32", doc="The bits of a float32 as an int32 (no conversion)."
)
SOURCE["float32"]["_nb_i2f"] = _BITCAST.format(
    name="_nb_i2f", to="float32", doc="The float32 whose bits are an int32."
)

_FMA = '''
@numba.extending.intrinsic
def _nb_fma(typingctx, a, b, c):
    """a·b + c: one rounding where the CPU has FMA (llvm.fmuladd), else two."""
    t = numba.{t}
    sig = t(t, t, t)

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fnty = builder.module.declare_intrinsic("llvm.fma", [ty, ty, ty]).function_type
        fn = builder.module.declare_intrinsic("llvm.fmuladd", [ty], fnty)
        return builder.call(fn, args)

    return sig, codegen
'''
SOURCE["float64"]["_nb_fma"] = _FMA.format(t="float64")
SOURCE["float32"]["_nb_fma"] = _FMA.format(t="float32")

# exp's core, shared by _nb_exp and _nb_expm1_2: x = k·ln2 + r (Cody–Waite), then exp(r)
# ≈ 1 + p(r) (degree 13), with k left in the low bits of t (1.5·2**52 pushes the
# fraction out)
_EXP_CORE = """    t = {x} * 1.4426950408889634 + 6755399441055744.0
    k = _nb_f2i(t) - 0x4338000000000000
    kf = t - 6755399441055744.0
    r = ({x} - kf * 6.93147180369123816490e-01) - kf * 1.90821492927058770002e-10
    p = 1.6059043836821613e-10
    p = _nb_fma(p, r, 2.08767569878680990e-09)
    p = _nb_fma(p, r, 2.50521083854417188e-08)
    p = _nb_fma(p, r, 2.75573192239858907e-07)
    p = _nb_fma(p, r, 2.75573192239858907e-06)
    p = _nb_fma(p, r, 2.48015873015873016e-05)
    p = _nb_fma(p, r, 1.98412698412698413e-04)
    p = _nb_fma(p, r, 1.38888888888888889e-03)
    p = _nb_fma(p, r, 8.33333333333333333e-03)
    p = _nb_fma(p, r, 4.16666666666666667e-02)
    p = _nb_fma(p, r, 1.66666666666666667e-01)
    p = _nb_fma(p, r, 0.5)
    q = _nb_fma(p, r * r, r)
    p = q + 1.0
"""

SOURCE["float64"]["_nb_exp"] = '''
@numba.njit(error_model="numpy")
def _nb_exp(x):
    """exp(x), branch-free: x = k·ln2 + r, |r| ≤ ln2/2 (Cody–Waite), exp(r) by a degree-13
    polynomial, 2**k as two halves built from bits (so subnormal results are right)."""
    x = np.float64(x)
    xc = 709.8 if x > 709.8 else x
    xc = -745.2 if xc < -745.2 else xc
    # k = round(x/ln2) in the low bits of t (1.5·2**52 pushes the fraction out)
{exp_core_xc}    k1 = k >> 1
    y = p * _nb_i2f((k1 + 1023) << 52) * _nb_i2f((k - k1 + 1023) << 52)
    y = np.inf if x > 709.782712893384 else y
    y = 0.0 if x < -745.1332191019412 else y
    return y
'''

SOURCE["float64"]["_nb_expm1_2"] = '''
@numba.njit(error_model="numpy")
def _nb_expm1_2(a):
    """exp(2a) - 1 for 0 ≤ a ≤ 20, accurate near 0 too: with x = 2a = k·ln2 + r,
    exp(x) - 1 = 2**k·q + (2**k - 1), q = exp(r) - 1 = r + r²·p(r) (no cancellation:
    x ≥ 0 keeps k ≥ 0 and 1 + q ≥ 0.7)."""
    x = 2.0 * a
{exp_core_x}    s = _nb_i2f((k + 1023) << 52)
    return _nb_fma(s, q, s - 1.0)
'''

for _name, _x in (("_nb_exp", "xc"), ("_nb_expm1_2", "x")):
    SOURCE["float64"][_name] = SOURCE["float64"][_name].replace(
        "{exp_core_" + _x + "}", _EXP_CORE.format(x=_x)
    )

SOURCE["float64"]["_nb_tanh"] = '''
@numba.njit(error_model="numpy")
def _nb_tanh(x):
    """tanh(x), branch-free: e/(e + 2), e = exp(2|x|) - 1 (|x| clamped at 20, where tanh
    is 1.0), the sign copied back. One path for every x (no rational for small |x|: e is
    accurate there), so vectorized loops do half the work."""
    x = np.float64(x)
    a = abs(x)
    a = 20.0 if a > 20.0 else a
    e = _nb_expm1_2(a)
    return np.copysign(e / (e + 2.0), x)
'''

SOURCE["float64"]["_nb_sigmoid"] = '''
@numba.njit(error_model="numpy")
def _nb_sigmoid(x):
    """σ(x) = 0.5·(1 + tanh(x/2)), the NumPy module's formula."""
    return 0.5 * (1.0 + _nb_tanh(0.5 * np.float64(x)))
'''

SOURCE["float64"]["_nb_sincos_kernels"] = '''
@numba.njit(error_model="numpy")
def _nb_sincos_kernels(x, y):
    """sin(x + y) and cos(x + y) for |x| ≤ π/4, |y| ≤ ulp(x)/2 (fdlibm's kernels)."""
    z = x * x
    v = z * x
    w = z * z
    r = 8.33333333332248946124e-03 + z * (
        -1.98412698298579493134e-04
        + z
        * (
            2.75573137070700676789e-06
            + z * (-2.50507602534068634195e-08 + z * 1.58969099521155010221e-10)
        )
    )
    s = x - ((z * (0.5 * y - v * r) - y) - v * -1.66666666666666324348e-01)
    r = z * (
        4.16666666666666019037e-02
        + z * (-1.38888888888741095749e-03 + z * 2.48015872894767294178e-05)
    ) + w * w * (
        -2.75573143513906633035e-07
        + z * (2.08757232129817482790e-09 + z * -1.13596475577881948265e-11)
    )
    hz = 0.5 * z
    w = 1.0 - hz
    c = w + (((1.0 - w) - hz) + (z * r - x * y))
    return s, c
'''

_REDUCE64 = """
    x = np.float64(x)
    # n = round(x·2/π); r = x - n·π/2 as hi + lo, π/2 in three 33-bit parts (n·part is
    # exact for |n| < 2**20) and a tail; two-sums keep what the subtractions round off
    t = x * 6.36619772367581382433e-01 + 6755399441055744.0
    n = _nb_f2i(t)
    nf = t - 6755399441055744.0
    r1 = x - nf * 1.57079632673412561417e00
    b = nf * 6.07710050630396597660e-11
    r2 = r1 - b
    e2 = (r1 - r2) - b
    b = nf * 2.02226624871116645580e-21
    hi = r2 - b
    e3 = ((r2 - hi) - b) + e2 - nf * 8.47842766036889956997e-32
    r = hi + e3
    lo = e3 - (r - hi)
    s, c = _nb_sincos_kernels(r, lo)
"""

SOURCE["float64"]["_nb_sin"] = f'''
@numba.njit(error_model="numpy")
def _nb_sin(x):
    """sin(x), branch-free: Cody–Waite reduction by π/2, quadrant picked by selects."""{_REDUCE64}\
    y = c if n & 1 else s
    y = -y if n & 2 else y
    return x if abs(x) < 1e-9 else y  # sin(x) rounds to x there; keeps sin(-0.0) = -0.0
'''

SOURCE["float64"]["_nb_cos"] = f'''
@numba.njit(error_model="numpy")
def _nb_cos(x):
    """cos(x), branch-free: Cody–Waite reduction by π/2, quadrant picked by selects."""{_REDUCE64}\
    y = s if n & 1 else c
    return -y if (n + 1) & 2 else y
'''


# float32: the same algorithms in float32 arithmetic (8 lanes per 256-bit vector), with
# float32 polynomials. Every constant is an np.float32(...) (LLVM folds the conversion): a
# bare literal is a float64 in Numba and would turn the arithmetic into float64.
_EXP_CORE32 = """    t = {x} * np.float32(1.44269504) + np.float32(12582912.0)
    k = _nb_f2i(t) - 0x4B400000
    kf = t - np.float32(12582912.0)
    r = ({x} - kf * np.float32(0.693359375)) - kf * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = _nb_fma(p, r, np.float32(1.3981999507e-3))
    p = _nb_fma(p, r, np.float32(8.3334519073e-3))
    p = _nb_fma(p, r, np.float32(4.1665795894e-2))
    p = _nb_fma(p, r, np.float32(1.6666665459e-1))
    p = _nb_fma(p, r, np.float32(5.0000001201e-1))
    q = _nb_fma(p, r * r, r)
"""

SOURCE["float32"]["_nb_exp"] = '''
@numba.njit(error_model="numpy")
def _nb_exp(x):
    """exp(x) in float32, branch-free: x = k·ln2 + r (Cody–Waite, ln2 in two parts),
    exp(r) = 1 + r + r²·p(r) (degree 5), 2**k as two halves built from bits."""
    x = np.float32(x)
    xc = np.float32(88.8) if x > np.float32(88.8) else x
    xc = np.float32(-104.0) if xc < np.float32(-104.0) else xc
{core}    p = q + np.float32(1.0)
    k1 = k >> 1
    y = (
        p
        * _nb_i2f(np.int32((k1 + 127) << 23))
        * _nb_i2f(np.int32((k - k1 + 127) << 23))
    )
    y = np.float32(np.inf) if x > np.float32(88.72283) else y
    y = np.float32(0.0) if x < np.float32(-103.97208) else y
    return y
'''.replace("{core}", _EXP_CORE32.format(x="xc"))

SOURCE["float32"]["_nb_expm1_2"] = '''
@numba.njit(error_model="numpy")
def _nb_expm1_2(a):
    """exp(2a) - 1 in float32 for 0 ≤ a ≤ 10: 2**k·q + (2**k - 1), q = exp(r) - 1."""
    x = np.float32(2.0) * a
{core}    s = _nb_i2f(np.int32((k + 127) << 23))
    return _nb_fma(s, q, s - np.float32(1.0))
'''.replace("{core}", _EXP_CORE32.format(x="x"))

SOURCE["float32"]["_nb_tanh"] = '''
@numba.njit(error_model="numpy")
def _nb_tanh(x):
    """tanh(x) in float32: e/(e + 2), e = exp(2|x|) - 1 (|x| clamped at 10, where tanh
    is 1.0 in float32), the sign copied back."""
    x = np.float32(x)
    a = abs(x)
    a = np.float32(10.0) if a > np.float32(10.0) else a
    e = _nb_expm1_2(a)
    return np.copysign(e / (e + np.float32(2.0)), x)
'''

SOURCE["float32"]["_nb_sigmoid"] = '''
@numba.njit(error_model="numpy")
def _nb_sigmoid(x):
    """σ(x) = 0.5·(1 + tanh(x/2)), the NumPy module's formula, in float32."""
    h = np.float32(0.5)
    return h * (np.float32(1.0) + _nb_tanh(h * np.float32(x)))
'''

SOURCE["float32"]["_nb_sincos_kernels"] = '''
@numba.njit(error_model="numpy")
def _nb_sincos_kernels(x):
    """sin(x) and cos(x) in float32 for |x| ≤ π/4 (Cephes' sinf/cosf polynomials)."""
    z = x * x
    s = _nb_fma(np.float32(-1.9515295891e-4), z, np.float32(8.3321608736e-3))
    s = _nb_fma(s, z, np.float32(-1.6666654611e-1))
    s = _nb_fma(s * z, x, x)
    c = _nb_fma(np.float32(2.443315711809948e-5), z, np.float32(-1.388731625493765e-3))
    c = _nb_fma(c, z, np.float32(4.166664568298827e-2))
    c = _nb_fma(c * z, z, np.float32(1.0) - np.float32(0.5) * z)
    return s, c
'''

_FMA_EXACT = '''
@numba.extending.intrinsic
def _nb_fma1(typingctx, a, b, c):
    """a·b + c with one rounding (llvm.fma: the FMA instruction, or libm's fmaf on a CPU
    without one, slow but still exact)."""
    t = numba.float32
    sig = t(t, t, t)

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.fma", [args[0].type])
        return builder.call(fn, args)

    return sig, codegen
'''
SOURCE["float32"]["_nb_fma1"] = _FMA_EXACT

# x = n·π/2 + r in float32 (Cody–Waite, π/2 in three float32 parts, each product
# subtracted with one rounding): r0 = x − n·P1 is exact (P1 has x's ulp or a finer one,
# and r0 is small), then −n·P2 and −n·P3 round once each. Checked on every float32 in
# [0, 8e5] (tests/test_numba_math.py sweeps, and docs/numba.md): sin and cos within
# 1.7 ulp of the exact value. All float32 arithmetic, so a loop runs 8 lanes per
# 256-bit vector; n (≤ 2**22 in magnitude) stays in the low bits of t.
_REDUCE32 = """
    x = np.float32(x)
    t = _nb_fma(x, np.float32(0.636619772), np.float32(12582912.0))
    n = _nb_f2i(t)
    nf = t - np.float32(12582912.0)
    r = _nb_fma1(nf, np.float32(-1.5707963705062866), x)
    r = _nb_fma1(nf, np.float32(4.371139000186241e-8), r)
    r = _nb_fma1(nf, np.float32(1.7151245100059164e-15), r)
    s, c = _nb_sincos_kernels(r)
"""

SOURCE["float32"]["_nb_sin"] = f'''
@numba.njit(error_model="numpy")
def _nb_sin(x):
    """sin(x) in float32: reduction by π/2 and polynomials in float32."""{_REDUCE32}\
    y = c if n & 1 else s
    y = -y if n & 2 else y
    return x if abs(x) < np.float32(1e-4) else y  # sin(x) rounds to x; sin(-0.0) = -0.0
'''

SOURCE["float32"]["_nb_cos"] = f'''
@numba.njit(error_model="numpy")
def _nb_cos(x):
    """cos(x) in float32: reduction by π/2 and polynomials in float32."""{_REDUCE32}\
    y = s if n & 1 else c
    return -y if (n + 1) & 2 else y
'''


# out[i] = f(x[i]) over one row of a staged kernel's row buffer: one loop that every stage
# calls (kernels.row_calls), instead of one inlined copy per stage
_ROW = '''
@numba.njit(error_model="numpy")
def _nb_{op}_row(x, out):
    """out[i] = {op}(x[i]) over a row, one shared loop the kernels' stages call."""
    for i in range(x.shape[0]):
        out[i] = _nb_{op}(x[i])
'''
for _dtype in ("float64", "float32"):
    for _op in ROW_OPS:  # (SOURCE's order does not reach a module)
        SOURCE[_dtype][f"_nb_{_op}_row"] = _ROW.format(op=_op)

#: float32: sin and cos reduce with exact FMAs
DEPS32 = {}
for _name, _deps in DEPS.items():
    DEPS32[_name] = _deps
    if _name == "_nb_fma":
        DEPS32["_nb_fma1"] = ()
DEPS32["_nb_sin"] = DEPS32["_nb_cos"] = (
    "_nb_f2i",
    "_nb_fma",
    "_nb_fma1",
    "_nb_sincos_kernels",
)
DEPS32["_nb_sincos_kernels"] = ("_nb_fma",)


def _closure(names, dtype="float64"):
    deps = DEPS32 if dtype == "float32" else DEPS
    out, todo = [], list(names)
    while todo:
        n = todo.pop()
        if n in out:
            continue
        out.append(n)
        todo.extend(deps[n])
    order = list(deps)
    return sorted(out, key=order.index)


def available(dtype):
    """The ops with an inline implementation for ``dtype``."""
    src = SOURCE["float32" if dtype == "float32" else "float64"]
    return frozenset(
        op for op, h in OPS.items() if all(n in src for n in _closure([h], dtype))
    )


def excluded(policy, simd_in_numpy, dtype):
    """The ops a kernel must not fuse under the ``transcendentals`` policy: ``"numpy"``
    all of ``simd_in_numpy``, ``"inline"`` those of them without an inline version here,
    ``"numba"`` none."""
    if policy == "numpy":
        return frozenset(simd_in_numpy)
    if policy == "inline":
        return frozenset(simd_in_numpy) - available(dtype)
    return frozenset()


def helpers(called, dtype):
    """Source of the helpers ``called`` (``_nb_tanh``, ...) with their dependencies, for a
    module of ``dtype``, in definition order."""
    dtype = "float32" if dtype == "float32" else "float64"
    names = _closure([n for n in called if n in DEPS32], dtype)
    return [Code(SOURCE[dtype][n].strip("\n")) for n in names]


def module_source(dtype="float64", names=None):
    """A standalone module defining the helpers (for tests and measurements)."""
    names = _closure(names or [n for n in SOURCE[dtype]], dtype)
    src = SOURCE[dtype]
    return (
        "import numba\nimport numba.extending\nimport numpy as np\n\n\n"
        + "\n\n".join(src[n].strip("\n") for n in names)
        + "\n"
    )
