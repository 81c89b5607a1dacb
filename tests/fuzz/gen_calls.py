"""Calls of generated modules with mutated arrays.

A few modules are compiled once per worker (:data:`MODULES`); each case calls one of
them with the plain arrays of a seed (``graphgen.check.random_arrays``) after a mutation
of one array, written as Python code on ``a`` (so the reproducer is the code itself).
What a mutation must give (``expect``):

``same``     the values are unchanged (a layout, a flag, a view, a memmap): the result
             must equal the module's on plain C-contiguous copies; a ``ValueError`` is
             ``wrong`` (a valid array was rejected);
``type``     ``np.matrix``, masked arrays: the same result, or a ``ValueError`` that names
             the array and says what is wrong with it;
``either``   another dtype or a list: a ``ValueError`` naming the array, or the result
             on the values as the module's dtype;
``reject``   a wrong shape, a missing or extra array, an invalid label: a
             ``ValueError`` naming the array; a result is ``wrong``;
``values``   NaN, ±inf, huge or tiny values, sizes 0 and 1: the result must equal the
             other backend's on the same arrays (graphgen's reference interpreter where
             there is no other backend), NaN where NaN; a ``ValueError`` naming the array
             or the size is an ``error``.

Every call must leave the caller's arrays as they were.
"""

from __future__ import annotations

import functools
import os
import re
import tempfile

from hypothesis import strategies as st

from .case import Case, Result
from .corpus import REPO

# name -> (source, load options)
SOURCES = {
    "tiny": ("examples/tiny.yaml", {}),
    "mlp": ("examples/mlp.yaml", {}),
    "fanout": ("examples/fanout.yaml", {}),
    "lenet": (
        "examples/lenet.onnx",
        {"loss": "softmax_cross_entropy", "labels": "digit"},
    ),
    "lenet_vjp": ("examples/lenet.onnx", {}),
}
# module keys: source/backend/dtype
MODULES = (
    "tiny/numpy/float64",
    "tiny/numba/float64",
    "tiny/numpy/float32",
    "mlp/numpy/float64",
    "mlp/numba/float64",
    "fanout/numpy/float64",
    "fanout/numba/float64",
    "lenet/numpy/float32",
    "lenet_vjp/numpy/float32",
)
SHORT_MODULES = (
    "tiny/numpy/float64",
    "tiny/numba/float64",
    "mlp/numpy/float64",
    "lenet_vjp/numpy/float32",
)

# mutation -> (code on the array `a`, expect, which arrays it applies to)
# kinds of array: "f" float, "i" int64 labels, "2" two-dimensional, "n" at least 1-D
MUTATIONS = {
    # layouts and flags: the same values
    "layouts.readonly": ("a = a.copy()\na.flags.writeable = False", "same", "fi"),
    "layouts.fortran": ("a = np.asfortranarray(a)", "same", "fi"),
    "layouts.noncontiguous": (
        "b = np.empty(a.shape + (2,), a.dtype)\nb[..., 0] = a\na = b[..., 0]",
        "same",
        "fi",
    ),
    "layouts.negative_strides": ("a = np.flip(np.flip(a).copy())", "same", "fi"),
    "layouts.unaligned": (
        (
            "buf = np.zeros(a.nbytes + 1, np.uint8)\n"
            "b = buf[1:].view(a.dtype).reshape(a.shape)\nb[...] = a\na = b"
        ),
        "same",
        "fi",
    ),
    "layouts.unaligned_readonly": (
        (
            "buf = np.zeros(a.nbytes + 1, np.uint8)\n"
            "b = buf[1:].view(a.dtype).reshape(a.shape)\nb[...] = a\na = b\n"
            "a.flags.writeable = False"
        ),
        "same",
        "fi",
    ),
    "layouts.broadcast": ("a = np.broadcast_to(a[:1], a.shape)", "same", "fn"),
    "layouts.frombuffer": (
        "a = np.frombuffer(a.tobytes(), a.dtype).reshape(a.shape)",
        "same",
        "fi",
    ),
    "layouts.view_of_bigger": (
        "b = np.zeros((a.shape[0] + 2,) + a.shape[1:], a.dtype)\nb[1:-1] = a\na = b[1:-1]",
        "same",
        "fin",
    ),
    "layouts.transposed_view": ("a = np.ascontiguousarray(a.T).T", "same", "fi"),
    "layouts.mmap_readonly": (
        "np.save('fz.npy', a)\na = np.load('fz.npy', mmap_mode='r')",
        "same",
        "fi",
    ),
    "layouts.memmap": (
        (
            "m = np.memmap('fz.bin', dtype=a.dtype, mode='w+', shape=a.shape)\n"
            "m[...] = a\na = m"
        ),
        "same",
        "fi",
    ),
    "layouts.subclass": (
        "class Sub(np.ndarray):\n    pass\na = a.view(Sub)",
        "type",
        "fi",
    ),
    "layouts.big_endian": ("a = a.astype(a.dtype.newbyteorder('>'))", "either", "fi"),
    # subclasses
    "subclasses.matrix": ("a = np.matrix(a)", "type", "f2"),
    "subclasses.masked": ("a = np.ma.masked_array(a)", "type", "fi"),
    "subclasses.masked_entry": (
        "a = np.ma.masked_array(a)\na[(0,) * a.ndim] = np.ma.masked",
        "type",
        "fn",
    ),
    # dtypes
    "dtypes.float32": ("a = a.astype(np.float32)", "either", "f"),
    "dtypes.float64": ("a = a.astype(np.float64)", "either", "fi"),
    "dtypes.float16": ("a = a.astype(np.float16)", "either", "f"),
    "dtypes.int64": ("a = a.astype(np.int64)", "either", "f"),
    "dtypes.int32": ("a = a.astype(np.int32)", "either", "fi"),
    "dtypes.uint8": ("a = a.astype(np.uint8)", "either", "i"),
    "dtypes.bool": ("a = a.astype(bool)", "either", "fi"),
    "dtypes.complex": ("a = a.astype(np.complex128)", "reject", "f"),
    "dtypes.object": ("a = a.astype(object)", "either", "fi"),
    "dtypes.str": ("a = a.astype(str)", "reject", "fi"),
    "dtypes.list": ("a = a.tolist()", "either", "fi"),
    "dtypes.none": ("a = None", "reject", "fi"),
    "dtypes.scalar": ("a = 1.0", "reject", "fin"),
    # shapes
    "shapes.extra_axis": ("a = a[None]", "reject", "fi"),
    "shapes.drop_axis": ("a = a[..., 0]", "reject", "fin"),
    "shapes.grow_last_axis": (
        "a = np.concatenate([a, a[..., :1]], axis=-1)",
        "reject",
        "fin",
    ),
    "shapes.empty_last_axis": ("a = a[..., :0]", "reject", "fin"),
    # values
    "values.nan": ("a = a.copy()\na.flat[0] = np.nan", "values", "f"),
    "values.inf": ("a = a.copy()\na.flat[-1] = np.inf", "values", "f"),
    "values.neg_inf": ("a = a.copy()\na.flat[0] = -np.inf", "values", "f"),
    "values.all_nan": ("a = np.full_like(a, np.nan)", "values", "f"),
    "values.huge": ("a = a * 1e300", "values", "f"),
    "values.tiny": ("a = a * 1e-310", "values", "f"),
    "values.zeros": ("a = np.zeros_like(a)", "values", "f"),
    "values.negative_zero": ("a = np.full_like(a, -0.0)", "values", "f"),
    "values.label_too_big": ("a = a.copy()\na.flat[0] = 1000", "reject", "i"),
    "values.label_negative": ("a = a.copy()\na.flat[0] = -1", "reject", "i"),
}
ARITY = {
    "arity.missing": ("del arrays[target]", "reject"),
    "arity.extra": ("arrays['fz_extra'] = arrays[target]", "reject"),
    "arity.misspelled": ("arrays[target + '_'] = arrays.pop(target)", "reject"),
    "arity.none": ("arrays = {}", "reject"),
    "arity.twice_case": ("arrays[target.upper() + 'X'] = arrays[target]", "reject"),
}
COTANGENTS = {
    "cotangents.missing": ("cotangents.clear()", "reject"),
    "cotangents.extra": ("cotangents['fz_extra'] = np.zeros(3)", "reject"),
    "cotangents.wrong_shape": (
        "cotangents[target] = cotangents[target][..., :1]",
        "reject",
    ),
    "cotangents.float64": (
        "cotangents[target] = cotangents[target].astype(np.float64)",
        "either",
    ),
    "cotangents.readonly": (
        (
            "cotangents[target] = cotangents[target].copy()\n"
            "cotangents[target].flags.writeable = False"
        ),
        "same",
    ),
    "cotangents.fortran": (
        "cotangents[target] = np.asfortranarray(cotangents[target])",
        "same",
    ),
    "cotangents.list": ("cotangents[target] = cotangents[target].tolist()", "either"),
    "cotangents.nan": (
        "cotangents[target] = cotangents[target].copy()\ncotangents[target].flat[0] = np.nan",
        "values",
    ),
    "cotangents.not_a_dict": ("cotangents = list(cotangents.values())", "reject"),
}


# ------------------------------------------------------------------ the parent


@functools.cache
def signature(key):
    """``{array: (shape, dtype)}``, the loss and the outputs of a module's graph."""
    import graphgen

    name = key.split("/")[0]
    path, opts = SOURCES[name]
    G = graphgen.load(str(REPO / path), **opts)
    cots = set((G.graph.get("cotangents") or {}).values())
    arrays = {
        n: (tuple(G.nodes[n]["shape"]), G.nodes[n]["dtype"])
        for n in G
        if G.nodes[n]["kind"] in ("input", "param") and n not in cots
    }
    return arrays, G.graph.get("loss"), bool(cots), tuple(G.graph["outputs"])


def _applies(kinds, shape, dtype):
    ok_kind = ("f" in kinds and dtype.startswith("float")) or (
        "i" in kinds and dtype == "int64"
    )
    if not ok_kind:
        return False
    if "2" in kinds and len(shape) != 2:
        return False
    return not ("n" in kinds and len(shape) == 0)


def _symbols(key):
    arrays, *_ = signature(key)
    return sorted({d for s, _ in arrays.values() for d in s if isinstance(d, str)})


@st.composite
def call_cases(draw, modules=MODULES, family=None):
    key = draw(st.sampled_from(modules), "module")
    arrays, _, is_vjp, outputs = signature(key)
    fam = family or draw(
        st.sampled_from(
            ["layouts"] * 4
            + [
                "subclasses",
                "dtypes",
                "dtypes",
                "shapes",
                "values",
                "values",
                "sizes",
                "arity",
            ]
            + (["cotangents"] if is_vjp else [])
        ),
        "family",
    )
    fn = (
        draw(
            st.sampled_from(
                ["vjp", "vjp", "forward"]
                if is_vjp
                else ["value_and_grad"] * 2 + ["forward"]
            ),
            "fn",
        )
        if fam != "cotangents"
        else "vjp"
    )
    syms = _symbols(key)
    sizes = {s: draw(st.sampled_from([2, 3, 5]), "size") for s in syms}
    seed = draw(st.integers(0, 3), "seed")
    call = {
        "module": key,
        "fn": fn,
        "sizes": sizes,
        "seed": seed,
        "target": None,
        "code": None,
        "arrays_code": None,
        "cot_code": None,
        "reference": reference_for(key, modules),
    }
    dtype = key.split("/")[2]
    if fam == "sizes":
        sym = draw(st.sampled_from(syms or ["-"]), "symbol")
        if sym == "-":
            fam = "layouts"
        else:
            n = draw(st.sampled_from([0, 1, 1, 64]), "n")
            call["sizes"] = {**sizes, sym: n}
            call["target"] = sym
            call["expect"] = "values" if dtype == "float64" or n else "values32"
            kind = f"sizes.{sym}={n}"
            return _case(kind, call)
    if fam == "arity":
        mut = draw(st.sampled_from(sorted(ARITY)), "mutation")
        call["target"] = draw(st.sampled_from(sorted(arrays)), "target")
        call["arrays_code"], call["expect"] = ARITY[mut]
        return _case(mut, call)
    if fam == "cotangents":
        mut = draw(st.sampled_from(sorted(COTANGENTS)), "mutation")
        call["target"] = draw(st.sampled_from(outputs), "target")
        call["cot_code"], call["expect"] = COTANGENTS[mut]
        if call["expect"] == "values" and dtype != "float64":
            call["expect"] = "values32"
        return _case(mut, call)
    names = [m for m in MUTATIONS if m.startswith(fam + ".")]
    mut = draw(st.sampled_from(names), "mutation")
    code, expect, kinds = MUTATIONS[mut]
    targets = sorted(
        n for n, (shape, dt) in arrays.items() if _applies(kinds, shape, dt)
    )
    if not targets:
        mut = "layouts.readonly"
        code, expect, kinds = MUTATIONS[mut]
        targets = sorted(arrays)
    call["target"] = draw(st.sampled_from(targets), "target")
    if expect == "values" and dtype != "float64":
        expect = "values32"
    call["code"], call["expect"] = code, expect
    return _case(mut, call)


def reference_for(key, modules):
    """The module of the other backend, when the run compiles it."""
    name, backend, dtype = key.split("/")
    other = f"{name}/{'numba' if backend == 'numpy' else 'numpy'}/{dtype}"
    return other if other in modules else None


def _case(kind, call):
    return Case(
        part="call",
        kind=kind,
        note=f"{call['module']} {call['fn']} {call['target']}",
        call=call,
        verify="call",
        origin=call["module"],
    )


# ------------------------------------------------------------------ the worker

_MODULES = {}


def _module_cache():
    """Call modules are the examples' own: they may use (and fill) the persistent
    cache, so that Numba compiles them once per machine, not once per run."""
    return os.environ.get("FUZZ_MODULE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "graphgen"
    )


def get_module(key, phase):
    if key not in _MODULES:
        import graphgen

        phase(f"setup {key}")
        name, backend, dtype = key.split("/")
        path, opts = SOURCES[name]
        G = graphgen.load(str(REPO / path), **opts)
        old = os.environ.get("GRAPHGEN_CACHE_DIR")
        os.environ["GRAPHGEN_CACHE_DIR"] = _module_cache()
        try:
            mod = graphgen.compile(G, backend=backend, dtype=dtype)
            arrays, cots = plain_arrays(G, mod, {}, 0)
            for fn in ("forward", "value_and_grad", "vjp"):  # compile the kernels now
                if hasattr(mod, fn):
                    _call(mod, fn, arrays, cots)
        finally:
            if old is None:
                os.environ.pop("GRAPHGEN_CACHE_DIR", None)
            else:
                os.environ["GRAPHGEN_CACHE_DIR"] = old
        _MODULES[key] = (G, mod)
    return _MODULES[key]


def plain_arrays(G, mod, sizes, seed):
    import numpy as np

    from graphgen.check import random_arrays

    dtype = np.dtype(mod.DTYPE).name
    arrays = random_arrays(G, seed=seed, sizes=sizes, dtype=dtype)
    cot = G.graph.get("cotangents") or {}
    cots = {o: arrays.pop(c) for o, c in cot.items() if c in arrays}
    return arrays, cots


def _call(mod, fn, arrays, cots):
    if fn == "vjp":
        return mod.vjp(cots, **arrays)
    return getattr(mod, fn)(**arrays)


def _plain(v):
    import numpy as np

    if isinstance(v, (list, tuple, np.ndarray)):
        return np.array(np.asarray(v), order="C")
    return v


def _snapshot(d):
    import numpy as np

    out = {}
    for k, v in d.items():
        try:
            out[k] = (np.array(np.asarray(v), copy=True), v)
        except Exception:  # noqa: BLE001
            out[k] = (None, v)
    return out


def _changed(snap):
    import numpy as np

    for k, (copy, v) in snap.items():
        if copy is None:
            continue
        try:
            now = np.asarray(v)
            if now.shape != copy.shape or not np.array_equal(
                now, copy, equal_nan=now.dtype.kind in "fc"
            ):
                return k
        except Exception:  # noqa: BLE001, S112 - not comparable: nothing to say
            continue
    return None


def names_array(msg, names):
    for n in names:
        if n is None:
            continue
        if repr(n) in msg or re.search(rf"(?<![\w]){re.escape(str(n))}(?![\w])", msg):
            return True
    return False


TYPE_WORDS = re.compile(
    r"matrix|masked|MaskedArray|subclass|Sub\b|ndarray", re.IGNORECASE
)


def run_call(case, seconds, phase):
    import numpy as np

    from .execute import Hang, compare_results, crash_of, hang_of, time_limit

    c = case.call
    G, mod = get_module(c["module"], phase)
    phase("call")
    dtype = np.dtype(mod.DTYPE).name
    arrays, cots = plain_arrays(G, mod, c["sizes"], c["seed"])
    target = c["target"]
    names = [target]
    work = tempfile.mkdtemp(prefix="call-", dir=os.environ.get("FUZZ_WORKDIR"))
    old = os.getcwd()
    os.chdir(work)
    try:
        env = {"np": np, "arrays": arrays, "cotangents": cots, "target": target}
        if c["code"]:
            env["a"] = arrays[target]
            exec(c["code"], env)  # noqa: S102 - the mutation, as the reproducer shows it
            arrays[target] = env["a"]
        if c["arrays_code"]:
            exec(c["arrays_code"], env)  # noqa: S102
            arrays = env["arrays"]
            names += [target + "_", "fz_extra", target.upper() + "X"]
        if c["cot_code"]:
            exec(c["cot_code"], env)  # noqa: S102
            cots = env["cotangents"]
            names += ["fz_extra", "cotangents"]
        if target in c["sizes"]:  # a size: any array with it may be named
            names += [n for n in G if target in map(str, G.nodes[n].get("shape", ()))]
        snap = _snapshot(arrays if isinstance(arrays, dict) else {})
        csnap = _snapshot(cots if isinstance(cots, dict) else {})
        try:
            with time_limit(seconds), np.errstate(all="ignore"):
                got = _call(mod, c["fn"], arrays, cots)
        except Hang as e:
            return hang_of(e, "the call: ")
        except ValueError as e:
            msg = str(e)
            expect = c["expect"]
            if not names_array(msg, names):
                return Result(
                    "crash",
                    f"ValueError that names no array: {msg[:300]}",
                    "crash: ValueError names no array",
                    msg,
                )
            if expect == "same":
                return Result(
                    "wrong",
                    f"rejected an array with valid values: {msg[:300]}",
                    f"wrong: rejects a valid array ({case.kind}, {c['module'].split('/')[1]})",
                    msg,
                )
            if expect == "type" and not TYPE_WORDS.search(msg):
                return Result(
                    "crash",
                    f"the ValueError does not say what is wrong: {msg[:300]}",
                    f"crash: unclear ValueError ({case.kind})",
                    msg,
                )
            return Result("error", msg[:300], "error")
        except Exception as e:  # noqa: BLE001
            r = crash_of(e)
            r.signature += f" ({case.kind}, {c['module'].split('/')[1]})"
            return r
        bad = _changed(snap) or _changed(csnap)
        if bad:
            return Result(
                "wrong",
                f"the call wrote into the caller's array {bad!r}",
                "wrong: writes into a caller's array",
            )
        expect = c["expect"]
        if expect == "reject":
            return Result(
                "wrong",
                "accepted an invalid argument and returned a result",
                f"wrong: accepts an invalid argument ({case.kind})",
            )
        # the reference
        plain = {k: _plain(v) for k, v in arrays.items()}
        pcots = (
            {k: _plain(v) for k, v in cots.items()} if isinstance(cots, dict) else cots
        )
        if expect in ("either",):
            plain = {
                k: np.asarray(v).astype(mod.DTYPES[k]) if k in mod.DTYPES else v
                for k, v in plain.items()
            }
            if isinstance(pcots, dict):
                pcots = {k: np.asarray(v).astype(dtype) for k, v in pcots.items()}
        if expect in ("values", "values32"):
            try:
                want, where = reference_values(c, G, mod, plain, pcots, phase)
            except Exception as e:  # noqa: BLE001 - no reference: nothing to compare
                want, where = None, f"the reference failed ({type(e).__name__}: {e})"
            phase("call")
        else:
            try:
                want, where = (
                    _call(mod, c["fn"], plain, pcots),
                    "the same module on plain arrays",
                )
            except Exception as e:  # noqa: BLE001
                return crash_of(e, "the plain call: ")
        if want is None:
            return Result("ok", f"not checked: {where}", unchecked=True)
        rtol = {"float64": 1e-9, "float32": 1e-5}[dtype]
        if expect in ("either",) or where != "the same module on plain arrays":
            rtol = {"float64": 1e-7, "float32": 2e-3}[dtype]
        # the interpreter's formulas differ from the module's where values are not
        # finite (inf·0 in one, a mask in the other): there, only finite entries count
        lenient = where == "the reference interpreter" and expect.startswith("values")
        bad = compare_results(got, want, rtol, dtype, lenient)
        if bad:
            return Result(
                "wrong",
                f"disagrees with {where}: {bad}"[:400],
                f"wrong: {case.kind} ({c['module'].split('/')[1]}) vs {where}",
            )
        return Result("ok")
    finally:
        os.chdir(old)
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def reference_values(c, G, mod, plain, pcots, phase):
    """The result to compare a ``values`` call with: the other backend's, else the
    reference interpreter's."""
    import numpy as np

    other = c.get("reference")
    if other:
        _, omod = get_module(other, phase)
        try:
            with np.errstate(all="ignore"):
                return _call(
                    omod, c["fn"], plain, pcots
                ), f"the {other.split('/')[1]} backend"
        except Exception:  # noqa: BLE001, S110 - the other backend fails too
            pass
    return interpret(G, c["fn"], plain, pcots), "the reference interpreter"


def interpret(G, fn, arrays, cots):
    """forward / value_and_grad / vjp by graphgen's reference interpreter (float64)."""
    import numpy as np

    from graphgen.api import lower
    from graphgen.views.values import evaluate

    A = lower(G, dtype="float64")
    given = {
        k: np.asarray(v, np.float64)
        if np.asarray(v).dtype.kind == "f"
        else np.asarray(v)
        for k, v in arrays.items()
    }
    for o, c in (G.graph.get("cotangents") or {}).items():
        given[c] = np.asarray(cots[o], np.float64)
    with np.errstate(all="ignore"):
        vals = evaluate(A, given)
    outs = {o: vals[o] for o in G.graph["outputs"]}
    if fn == "forward":
        return outs

    def grad(w):
        n = A.graph["grads"].get(w)
        return vals[n] if n is not None else np.zeros(np.shape(given[w]))

    grads = {
        w: np.broadcast_to(grad(w), np.shape(given[w]))
        for w in A.graph["wrt"]
        if w in A.graph["grads"] or w in given
    }
    if fn == "vjp":
        return grads
    return float(vals[G.graph["loss"]]), grads
