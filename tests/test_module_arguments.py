"""Arrays handed to a generated module: any array NumPy gives, the same results, and the
caller's arrays left as they were.

Every module takes what NumPy hands out: read-only arrays (``np.broadcast_to``,
``np.load(..., mmap_mode="r")``), unaligned ones (a buffer at an odd offset), strided,
reversed and Fortran-ordered ones, and subclasses (``np.memmap``; ``np.matrix`` as its
data). The NumPy module computes on them as they are; the Numba module copies what its
compiled code does not take (a read-only or unaligned array; for a whole-function kernel,
one that is not C-contiguous). A masked array is refused by name: the module would
ignore its mask. No module writes into an argument: the NumPy module's memory plan
(``backends/numpy/memory.py``) writes ``out=`` and ``+=`` only into its own temporaries.

A symbolic size of 0 (an empty batch) is computed, not refused, and both backends agree:
per-example outputs are empty, a mean over nothing is nan (as ``np.mean`` and PyTorch
give), and a gradient is a sum over no examples, zero for a param. The NumPy module may
say so with NumPy's RuntimeWarning ("Mean of empty slice").
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from conftest import EXAMPLES

import graphgen
from graphgen.check import random_arrays, symbol_sizes

SPECS = ["tiny.yaml", "fanout.yaml", "mlp.yaml", "lenet.onnx"]
MODES = {
    "numpy": ("numpy", {}),
    "numba": ("numba", {}),  # whole-function kernels where the function allows
    "numba-split": ("numba", {"whole": False}),  # one kernel per fused group
}


@pytest.fixture(scope="module", autouse=True)
def _cache_dir(tmp_path_factory):
    old = os.environ.get("GRAPHGEN_CACHE_DIR")
    os.environ["GRAPHGEN_CACHE_DIR"] = str(tmp_path_factory.mktemp("graphgen-cache"))
    yield
    if old is None:
        os.environ.pop("GRAPHGEN_CACHE_DIR", None)
    else:
        os.environ["GRAPHGEN_CACHE_DIR"] = old


_GRAPHS, _MODULES = {}, {}


def graph(spec):
    if spec not in _GRAPHS:
        _GRAPHS[spec] = graphgen.load(EXAMPLES / spec)
    return _GRAPHS[spec]


def module(spec, mode):
    backend, options = MODES[mode]
    if backend == "numba":
        pytest.importorskip("numba")
    if (spec, mode) not in _MODULES:
        _MODULES[spec, mode] = graphgen.compile(graph(spec), backend, **options)
    return _MODULES[spec, mode]


def arguments(spec, sizes=None):
    """``(arrays, cotangents)`` for the spec's module: cotangents for a vjp module (an
    ONNX model without a loss), else None."""
    G = graph(spec)
    arrays = {k: np.array(v) for k, v in random_arrays(G, sizes=sizes).items()}
    cotangents = G.graph.get("cotangents")
    if not cotangents:
        return arrays, None
    return arrays, {o: arrays.pop(c) for o, c in cotangents.items()}


def run(mod, arrays, cotangents):
    """Everything the module computes from ``arrays``, by name: forward's outputs, then
    the loss and gradients (value_and_grad) or the gradients (vjp)."""
    out = {f"forward {k}": v for k, v in mod.forward(**arrays).items()}
    if cotangents is None:
        out["loss"], grads = mod.value_and_grad(**arrays)
    else:
        grads = mod.vjp(cotangents, **arrays)
    out.update({f"grad {k}": v for k, v in grads.items()})
    return out


def assert_same(got, want, exact=True):
    """Equal results: bit for bit, or (``exact=False``) up to the rounding of another
    order of adding (its dtype's)."""
    assert got.keys() == want.keys()
    for k in want:
        g, w = np.asarray(got[k]), np.asarray(want[k])
        assert g.shape == w.shape and g.dtype == w.dtype, (k, g.shape, w.shape)
        if exact:
            assert np.array_equal(g, w, equal_nan=True), k
        else:
            tol = 1e-12 if w.dtype == np.float64 else 1e-5
            scale = float(np.max(np.abs(w), initial=1.0))
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol * scale, err_msg=k)


# ------------------------------------------------------------------ layouts
# Each makes an array with ``a``'s values in one layout: (the array, the memory it lives
# in, whose bytes must be the same after the call).


def ordinary(a, tmp, name):
    b = a.copy()
    return b, b


def read_only(a, tmp, name):
    b = a.copy()
    b.flags.writeable = False
    return b, b


def broadcast(a, tmp, name):  # np.broadcast_to: a read-only view
    b = a.copy()
    return np.broadcast_to(b, b.shape), b


def memmap(a, tmp, name):  # np.load(..., mmap_mode="r"): a read-only np.memmap
    path = tmp / f"{name.replace('/', '_')}.npy"
    np.save(path, a)
    m = np.load(path, mmap_mode="r")
    return m, m


def unaligned(a, tmp, name):  # a byte buffer offset by 1
    buf = np.zeros(a.nbytes + 1, np.uint8)
    u = buf[1:].view(a.dtype).reshape(a.shape)
    u[...] = a
    return u, buf


def strided(a, tmp, name):  # every other element of the last axis
    if a.ndim == 0:
        return ordinary(a, tmp, name)
    base = np.full((*a.shape[:-1], 2 * a.shape[-1]), -1, dtype=a.dtype)
    base[..., ::2] = a
    return base[..., ::2], base


def reversed_(a, tmp, name):  # negative strides along every axis
    flip = (slice(None, None, -1),) * a.ndim
    base = a[flip].copy()
    return base[flip], base


def fortran(a, tmp, name):
    f = np.asfortranarray(a.copy())
    return f, f


LAYOUTS = {
    "ordinary": ordinary,
    "read-only": read_only,
    "broadcast_to": broadcast,
    "mmap": memmap,
    "unaligned": unaligned,
    "strided": strided,
    "negative strides": reversed_,
    "fortran": fortran,
}


def _flags_hold(layout, a):
    """The made array really is what the layout says (when it has elements to be)."""
    if a.size < 2 or a.ndim == 0:
        return True
    return {
        "ordinary": a.flags.c_contiguous and a.flags.writeable,
        "read-only": not a.flags.writeable,
        "broadcast_to": not a.flags.writeable,
        "mmap": isinstance(a, np.memmap) and not a.flags.writeable,
        "unaligned": not a.flags.aligned,
        "strided": not a.flags.c_contiguous and not a.flags.f_contiguous,
        "negative strides": any(s < 0 for s in a.strides) or a.shape[0] == 1,
        "fortran": a.flags.f_contiguous or a.ndim == 1,
    }[layout]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("spec", SPECS)
def test_every_layout_gives_the_same_results_and_leaves_the_arrays_alone(
    spec, mode, layout, tmp_path
):
    mod = module(spec, mode)
    arrays, cotangents = arguments(spec)
    want = run(
        mod,
        {k: v.copy() for k, v in arrays.items()},
        cotangents and {k: v.copy() for k, v in cotangents.items()},
    )
    make = LAYOUTS[layout]
    made = {k: make(v, tmp_path, k) for k, v in arrays.items()}
    made_cot = cotangents and {
        k: make(v, tmp_path, f"cotangent {k}") for k, v in cotangents.items()
    }
    everything = {**made, **{f"cotangent {k}": m for k, m in (made_cot or {}).items()}}
    for k, (a, _) in everything.items():
        assert _flags_hold(layout, a), (layout, k, a.flags)
    before = {k: owner.tobytes() for k, (_, owner) in everything.items()}
    got = run(
        mod,
        {k: a for k, (a, _) in made.items()},
        made_cot and {k: a for k, (a, _) in made_cot.items()},
    )
    # NumPy may take another path (another BLAS call, a buffered loop) for another
    # layout, which adds in another order; the Numba module copies an unaligned array
    exact = layout in ("ordinary", "read-only", "broadcast_to", "mmap") or (
        layout == "unaligned" and mode != "numpy"
    )
    assert_same(got, want, exact)
    for k, (_, owner) in everything.items():
        assert owner.tobytes() == before[k], f"{mode} wrote into the caller's {k!r}"


@pytest.mark.parametrize("spec", SPECS)
def test_an_empty_batch_gives_a_nan_loss_and_zero_gradients_in_every_backend(spec):
    G = graph(spec)
    sizes = dict.fromkeys(symbol_sizes(G), 0)
    assert sizes, "the example has a symbolic batch size"
    results = {}
    for mode in MODES:
        arrays, cotangents = arguments(spec, sizes)
        with warnings.catch_warnings():
            # NumPy's own word on a mean over nothing: "Mean of empty slice"
            warnings.simplefilter("ignore", RuntimeWarning)
            results[mode] = run(module(spec, mode), arrays, cotangents)
    want = results["numpy"]
    for mode, got in results.items():
        assert_same(got, want)
    params = set(graph(spec).graph.get("wrt") or ())
    for k, v in want.items():
        v = np.asarray(v)
        if k == "loss" or (k.startswith("forward") and v.shape == ()):
            assert np.isnan(v), (k, v)  # the mean of nothing
        elif k.startswith("forward"):
            assert v.size == 0, (k, v.shape)  # one row per example: none
        else:
            assert k.removeprefix("grad ") in params or params == set()
            assert not np.any(v), k  # a sum over no examples


@pytest.mark.parametrize("mode", MODES)
def test_a_matrix_is_taken_as_its_data_and_a_masked_array_is_refused_by_name(mode):
    mod = module("tiny.yaml", mode)
    arrays, _ = arguments("tiny.yaml")
    want = run(mod, arrays, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # np.matrix's
        matrices = {
            **arrays,
            "x": np.matrix(arrays["x"]),
            "W1": np.matrix(arrays["W1"]),
        }
        one_d = {**arrays, "b1": np.matrix(arrays["b1"])}
    assert_same(run(mod, matrices, None), want, exact=mode != "numpy")
    for function in (mod.forward, mod.value_and_grad):
        with pytest.raises(
            ValueError,
            match=r"'b1': expected shape \(3,\), got \(1, 3\) "
            r"\(an np\.matrix is always 2-D\)",
        ):
            function(**one_d)
        masked = {**arrays, "t": np.ma.masked_less(arrays["t"], 0.5)}
        with pytest.raises(ValueError, match=r"'t': a masked array, whose mask"):
            function(**masked)


@pytest.mark.parametrize("mode", MODES)
def test_a_masked_cotangent_is_refused_by_name(mode):
    mod = module("lenet.onnx", mode)
    arrays, cotangents = arguments("lenet.onnx")
    masked = {k: np.ma.masked_invalid(v) for k, v in cotangents.items()}
    with pytest.raises(ValueError, match=r"cotangents\['logits'\]: .* a masked array"):
        mod.vjp(masked, **arrays)


def test_a_module_of_another_dtype_says_which_it_wants():
    # a big-endian float64 is another dtype: named, not taken silently
    mod = module("tiny.yaml", "numpy")
    arrays, _ = arguments("tiny.yaml")
    with pytest.raises(ValueError, match=r"'x': expected a float64 array .* got >f8"):
        mod.forward(**{**arrays, "x": arrays["x"].astype(">f8")})


# The memory plan writes ufunc results into dying temporaries (out=) and sums fan-outs
# in place (+=). Every argument here is a tempting buffer: x and the views V.T and
# reshape(U) are read for the last time by a ufunc of their shape, a and b are the
# terms of W's gradient sum, and the arrays are big enough for in-place work.
TRAPS = """
name: traps
inputs:
  x: [16, 8]
  a: [16, 8]
  b: [16, 8]
params:
  W: [16, 8]
  V: [8, 16]
  U: [128]
  P: [16, 8]
nodes:
  e: {op: exp, args: [x]}
  Vt: {op: transpose, args: [V]}
  f: {op: tanh, args: [Vt]}
  Ur: {op: reshape, args: [U], shape: [16, 8]}
  s: {op: sin, args: [Ur]}
  p1: {op: mul, args: [a, W]}
  p2: {op: mul, args: [b, W]}
  sq: {op: square, args: [P]}
  q: {op: add_n, args: [e, f, s, p1, p2, sq]}
  J: {op: sum, args: [q]}
outputs: [q, J]
loss: J
wrt: [W, V, U, P]
"""


def test_the_memory_plan_writes_into_no_argument(tmp_path):
    path = tmp_path / "traps.yaml"
    path.write_text(TRAPS)
    G = graphgen.load(path)
    mod = graphgen.compile(G)
    src = mod.__source__
    assert ", out=" in src and " += " in src, "the plan should work in place here"
    arrays = random_arrays(G, seed=1)
    want = run(mod, {k: v.copy() for k, v in arrays.items()}, None)
    # NumPy refuses any write into a read-only array or a view of one, so a call on
    # read-only arguments proves that no out= and no += reached them
    frozen = {k: read_only(v, tmp_path, k)[0] for k, v in arrays.items()}
    assert_same(run(mod, frozen, None), want)
    # and the ordinary arrays of an ordinary call keep their bytes
    plain = {k: v.copy() for k, v in arrays.items()}
    before = {k: v.tobytes() for k, v in plain.items()}
    run(mod, plain, None)
    assert {k: v.tobytes() for k, v in plain.items()} == before


GATHER_SPEC = """\
inputs:
  table: [rows, 3]
  ids: {shape: [batch], dtype: int64}
params:
  E: [5, 3]
nodes:
  picked: {op: gather, args: [table, ids]}
  looked: {op: gather, args: [E, ids]}
  both: {op: add, args: [picked, looked]}
  J: {op: sum, args: [both]}
loss: J
wrt: [table, E]
"""


@pytest.mark.parametrize("mode", MODES)
def test_labels_out_of_range_are_refused_by_name(mode):
    """A label ≥ the number of classes raised a raw IndexError from inside the module
    (NumPy) or the kernel (Numba); a negative one was read as a class counted from the
    end: a silently wrong loss."""
    mod = module("mlp.yaml", mode)
    arrays, _ = arguments("mlp.yaml", sizes={"batch": 4})
    want = run(mod, arrays, None)
    for bad in (10, -1, 2**40):
        labels = arrays["labels"].copy()
        labels[2] = bad
        for function in (mod.forward, mod.value_and_grad):
            with pytest.raises(
                ValueError,
                match=rf"^'labels': expected class labels of softmax_cross_entropy "
                rf"node 'loss' in \[0, 10\), got {bad}$",
            ):
                function(**{**arrays, "labels": labels})
    assert_same(run(mod, arrays, None), want, exact=True)
    # labels of another dtype are named as such, not compared with the classes (the
    # whole-function Numba module checks the range before its kernel checks dtypes)
    for labels in (arrays["labels"].astype(str), arrays["labels"].astype(np.float64)):
        with pytest.raises(ValueError, match=r"^'labels': expected a int64 array"):
            mod.forward(**{**arrays, "labels": labels})


@pytest.mark.parametrize("mode", MODES)
def test_gather_indices_wrap_but_stay_in_range(mode, tmp_path):
    """Gather indices count from the end when negative (NumPy's, ONNX's rule), within
    the axis they index, whose size may be symbolic (read off another array)."""
    backend, options = MODES[mode]
    if backend == "numba":
        pytest.importorskip("numba")
    path = tmp_path / "gather.yaml"
    path.write_text(GATHER_SPEC)
    mod = graphgen.compile(graphgen.load(path), backend, **options)
    rng = np.random.default_rng(0)
    table, E = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    ids = np.array([0, 3, -4, 2])
    loss, grads = mod.value_and_grad(table=table, ids=ids, E=E)
    assert np.isclose(loss, table[ids].sum() + E[ids].sum())
    want = np.zeros_like(table)
    np.add.at(want, ids, 1.0)
    np.testing.assert_allclose(grads["table"], want)
    for bad, bound in ((4, 4), (-5, 4)):
        with pytest.raises(
            ValueError,
            match=rf"^'ids': expected indices of gather node 'picked' in "
            rf"\[-{bound}, {bound}\), got {bad}$",
        ):
            mod.value_and_grad(table=table, ids=np.array([0, bad, 1, 2]), E=E)
    with pytest.raises(
        ValueError,
        match=r"^'ids': expected indices of gather node 'looked' in \[-5, 5\), got 5$",
    ):  # in range of table (6 rows), not of E (5)
        mod.value_and_grad(table=np.ones((6, 3)), ids=np.array([0, 5, 1, 2]), E=E)


GATHER_ND_SPEC = """\
inputs:
  data: [rows, 3]
  idx: {shape: [batch, 2], dtype: int64}
nodes:
  g: {op: gather_nd, args: [data, idx]}
  J: {op: sum, args: [g]}
loss: J
wrt: [data]
"""


@pytest.mark.parametrize("mode", MODES)
def test_gather_nd_index_tuples_are_checked_entry_by_entry(mode, tmp_path):
    """Entry j of each index tuple indexes its own axis (rows, then 3); NumPy raised an
    IndexError from inside the module, Numba would read out of bounds."""
    backend, options = MODES[mode]
    if backend == "numba":
        pytest.importorskip("numba")
    path = tmp_path / "gnd.yaml"
    path.write_text(GATHER_ND_SPEC)
    mod = graphgen.compile(graphgen.load(path), backend, **options)
    data = np.arange(12.0).reshape(4, 3)
    loss, grads = mod.value_and_grad(data=data, idx=np.array([[0, 2], [3, -1]]))
    assert loss == data[0, 2] + data[3, -1]
    want = np.zeros_like(data)
    want[0, 2] = want[3, -1] = 1.0
    np.testing.assert_array_equal(grads["data"], want)
    for bad, entry, bound in (([0, 3], 1, 3), ([4, 0], 0, 4), ([-5, 0], 0, 4)):
        with pytest.raises(
            ValueError,
            match=rf"^'idx': expected indices of gather_nd node 'g' \(entry {entry} of "
            rf"each index\) in \[-{bound}, {bound}\), got {bad[entry]}$",
        ):
            mod.value_and_grad(data=data, idx=np.array([[1, 1], bad]))
