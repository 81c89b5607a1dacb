"""Run one case in this process and classify what happened (the worker's side).

The CLI runs in-process through ``graphgen.cli.main`` with ``GRAPHGEN_DEBUG=1`` (set by
the pool), so a bug surfaces as the exception itself, with its traceback. stdout is a
strict UTF-8 stream and stderr a ``backslashreplace`` one, as a terminal's are.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import itertools
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .case import Case, Result

REPO = Path(__file__).resolve().parents[2]
MAX_ELEMENTS = 2_000_000  # larger arrays are not allocated to check a module
_counter = itertools.count()


class Hang(BaseException):
    """The soft time limit of a case ran out (a BaseException: no handler eats it)."""


@contextlib.contextmanager
def time_limit(seconds):
    if not seconds:
        yield
        return

    def fire(signum, frame):
        raise Hang(f"over {seconds:g} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------- tracebacks


def _short(filename):
    f = str(filename)
    for prefix, short in ((str(REPO) + os.sep, ""), ("site-packages" + os.sep, "")):
        i = f.find(prefix)
        if i >= 0:
            return f[i + len(prefix) :]
    return os.path.basename(f) if f.startswith(("/tmp", tempfile.gettempdir())) else f


def _ours(frame):
    f = frame.filename
    return (
        f"{os.sep}graphgen{os.sep}" in f
        or f.startswith("<graphgen")
        or "graphgen_" in os.path.basename(f)
        or os.path.basename(f) == "out.py"
    )


def last_frames(exc, n=6):
    """The exception and the last ``n`` frames, one line each."""
    te = traceback.TracebackException.from_exception(exc, limit=None)
    frames = list(te.stack)[-n:]
    lines = [f"  {_short(f.filename)}:{f.lineno} in {f.name}: {f.line}" for f in frames]
    msg = "".join(te.format_exception_only()).strip()
    if len(msg) > 400:
        msg = msg[:400] + "…"
    return "\n".join(lines + [msg])


def where_raised(exc):
    """``file:function`` of the deepest graphgen (or generated-module) frame."""
    te = traceback.TracebackException.from_exception(exc, limit=None)
    stack = list(te.stack)
    mine = [f for f in stack if _ours(f)] or stack
    if not mine:
        return "?"
    f = mine[-1]
    return f"{_short(f.filename)}:{f.name}"


def crash_of(exc, what=""):
    sig = f"crash: {type(exc).__name__} in {where_raised(exc)}"
    detail = f"{what}{type(exc).__name__}: {str(exc)[:300]}"
    return Result("crash", detail, sig, last_frames(exc))


def hang_of(exc, what=""):
    sig = f"hang in {where_raised(exc)}"
    return Result("hang", f"{what}{exc}", sig, last_frames(exc))


# ----------------------------------------------------------------------- the CLI


class Captured:
    status = None
    exc = None
    out = ""
    err = ""
    graphs = ()


def run_cli(argv, seconds):
    """``graphgen ARGV`` in-process; the graphs ``graphgen.api.load`` returned too."""
    from graphgen import api, cli

    got = Captured()
    graphs = []
    real_load = api.load

    def load(path, **kw):
        G = real_load(path, **kw)
        graphs.append(G)
        return G

    out_b, err_b = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_b, encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(
        err_b, encoding="utf-8", errors="backslashreplace", write_through=True
    )
    saved = sys.stdout, sys.stderr
    api.load = load
    sys.stdout, sys.stderr = out, err
    try:
        with time_limit(seconds):
            got.status = cli.main(list(argv))
    except SystemExit as e:
        got.status = e.code
    except BaseException as e:  # noqa: BLE001 - Hang, and every bug
        got.exc = e
    finally:
        with contextlib.suppress(Exception):
            out.flush()
            err.flush()
        sys.stdout, sys.stderr = saved
        api.load = real_load
    got.out = out_b.getvalue().decode("utf-8", "replace")
    got.err = err_b.getvalue().decode("utf-8", "replace")
    got.graphs = graphs
    return got


GENERIC_PLACES = re.compile(
    r"node '|node \"|\bkey\b|\bline \d|\binput '|\bparam '|\boutput '|\battribute '"
    r"|\binitializer '|\btensor '|\bargument \d|\b(outputs|loss|wrt|weights|vjp|nodes"
    r"|inputs|params|name|dtype|opset|opset_import)\b\s*[:'\[]"
)


def located(line, file, where):
    """Does the error line name a place (line, node, key) besides the file?"""
    rest = line.split(file, 1)[-1]
    if re.match(r"^:\d+:", rest) or GENERIC_PLACES.search(rest):
        return True
    for w in where:
        w = str(w)
        for form in (repr(w), f"'{w}'", f'"{w}"'):
            if form[:60].encode("utf-8", "backslashreplace").decode() in rest:
                return True
        if re.fullmatch(r"\w+", w) and re.search(
            rf"(?<![\w']){re.escape(w)}(?![\w'])", rest
        ):
            return True
    return False


def check_error_report(case, got):
    """``None`` if ``got`` is a well-formed error report, else the Result saying why."""
    err = got.err
    lines = err.splitlines()
    errors = [ln for ln in lines if ln.startswith("graphgen: error: ")]
    stray = [
        ln
        for ln in lines
        if ln.strip()
        and not ln.startswith(("graphgen: error: ", "graphgen: warning: "))
        and not ln.startswith((" ", "\t"))
    ]
    if "Traceback (most recent call last)" in err:
        return Result(
            "crash", "a traceback on stderr", "crash: traceback on stderr", err
        )
    if len(errors) != 1:
        return Result(
            "crash",
            f"{len(errors)} error lines on stderr",
            f"crash: {len(errors)} error lines",
            err[-2000:],
        )
    if stray:
        return Result(
            "crash",
            f"stray stderr lines: {stray[0][:120]!r}",
            "crash: stray stderr beside the error line",
            err[-2000:],
        )
    line = errors[0]
    file = case.input
    if file not in line:
        return Result(
            "crash",
            f"the error names no file: {line[:200]!r}",
            "crash: error line names no file",
            line,
        )
    if case.where and not located(line, file, case.where):
        return Result(
            "crash",
            f"the error names no node, key or line: {line[:300]!r}",
            f"crash: error line names no node or key ({case.part} {case.kind})",
            line,
        )
    return None


def run_cli_case(case, seconds, phase):
    """Write the case's files into a fresh directory, run it there, classify."""
    work = Path(tempfile.mkdtemp(prefix="case-", dir=os.environ.get("FUZZ_WORKDIR")))
    old = os.getcwd()
    try:
        for i, (name, data) in enumerate(case.files.items()):
            if i == 0 and case.params.get("directory"):
                (work / name).mkdir()
            elif not (i == 0 and case.params.get("absent")):
                (work / name).write_bytes(data)
        os.chdir(work)
        phase("cli")
        got = run_cli(case.argv, seconds)
        if isinstance(got.exc, Hang):
            return hang_of(got.exc, f"graphgen {case.argv[0]}: ")
        if got.exc is not None:
            return crash_of(got.exc)
        if got.status == 2:
            bad = check_error_report(case, got)
            if bad:
                return bad
            return Result("error", got.err.strip().splitlines()[0][:300], "error")
        if got.status == 0 or (got.status == 1 and case.verify == "check"):
            phase("verify")
            try:
                with time_limit(seconds):
                    return verify_cli(case, got, work, phase)
            except Hang as e:
                return hang_of(e, "checking the result: ")
        return Result(
            "crash",
            f"exit status {got.status}: {got.err.strip()[:300]}",
            f"crash: exit status {got.status}",
            got.err[-2000:],
        )
    finally:
        os.chdir(old)
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------ verification


def import_file(path):
    name = f"fuzzmod_{os.getpid()}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def output_path(argv):
    for i, a in enumerate(argv):
        if a in ("-o", "--output"):
            return argv[i + 1]
    return None


def verify_cli(case, got, work, phase=lambda name: None):
    out = output_path(case.argv)
    G = got.graphs[-1] if got.graphs else None
    if case.verify == "file":
        p = work / out
        if not p.exists() or p.stat().st_size == 0:
            return Result("wrong", f"exit 0 but {out} is missing or empty")
        return Result("ok")
    if case.verify == "none":
        return Result("ok")
    if case.verify == "syntax":
        try:
            ast.parse((work / out).read_text(encoding="utf-8"))
        except SyntaxError as e:
            return Result("wrong", f"the module does not parse: {e}", "wrong: syntax")
        return Result("ok")
    if case.verify == "spec":
        import graphgen
        from graphgen.errors import GraphgenError

        try:
            graphgen.load(str(work / out))
        except GraphgenError as e:
            return Result(
                "wrong",
                f"graphgen import wrote a spec graphgen rejects: {e}"[:300],
                "wrong: imported spec does not load",
            )
        except Exception as e:  # noqa: BLE001
            return crash_of(e, "loading the imported spec: ")
        return Result("ok")
    if G is None:
        return Result("crash", "exit 0 but no graph was loaded", "crash: no graph")
    model = case.files[case.input] if case.part == "onnx" else None
    if case.verify == "check":
        if got.status == 0:
            return Result("ok")
        return check_graph(G, None, model=None, fd_only=True)
    try:
        mod = import_file(str(work / out))
    except Exception as e:  # noqa: BLE001
        return crash_of(e, "importing the written module: ")
    if case.verify == "numba":
        return check_numba(G, mod)
    return check_graph(G, mod, model=model, phase=phase)


def _too_big(G):
    from graphgen import dims
    from graphgen import graph as g
    from graphgen.check import symbol_sizes

    sizes = symbol_sizes(G)
    total = 0
    for n in G:
        a = G.nodes[n]
        if a.get(g.KIND) in (g.INPUT, g.PARAM, g.OPNODE):
            try:
                shape = dims.concrete(a.get(g.SHAPE, ()), sizes)
            except Exception:  # noqa: BLE001 - odd sizes: do not try
                return True
            k = 1
            for d in shape:
                k *= int(d)
            if k < 0:
                return True
            total += k
    return total > MAX_ELEMENTS


def _copy(arrays):
    import numpy as np

    return {k: np.array(v) for k, v in arrays.items()}


def compare(got, want, rtol, what, dtype="float64", lenient=False):
    """``None`` if ``got`` matches ``want`` (NaN where NaN, ±inf where ±inf, the finite
    entries within ``rtol`` of the array's scale), else what differs."""
    import numpy as np

    if isinstance(got, np.ndarray) and type(got) is not np.ndarray:
        return f"{what}: a {type(got).__name__}, not an ndarray"
    try:
        a = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError) as e:
        return f"{what}: not an array of numbers ({e})"
    b = np.asarray(want, dtype=np.float64)
    if a.shape != b.shape:
        return f"{what}: shape {a.shape}, expected {b.shape}"
    if lenient:  # only where both are finite
        keep = np.isfinite(a) & np.isfinite(b)
        a, b = a[keep], b[keep]
    elif dtype == "float32":  # float32 overflows where float64 does not: skip those
        keep = np.isfinite(b) & (np.abs(b) < 1e37)
        a, b = a[keep], b[keep]
    na, nb = np.isnan(a), np.isnan(b)
    if (na != nb).any():
        i = np.flatnonzero(na != nb)[0]
        return f"{what}: entry {i} is {a.flat[i]!r}, expected {b.flat[i]!r}"
    ia, ib = np.isinf(a), np.isinf(b)
    if (ia != ib).any() or (a[ia] != b[ib]).any():
        i = np.flatnonzero((ia != ib) | (ia & (a != b)))[0]
        return f"{what}: entry {i} is {a.flat[i]!r}, expected {b.flat[i]!r}"
    fin = np.isfinite(b)
    if not fin.any():
        return None
    scale = float(np.max(np.abs(b[fin])))
    err = np.abs(a[fin] - b[fin])
    bound = rtol * (np.abs(b[fin]) + scale) + 1e-300
    if (err > bound).any():
        i = int(np.argmax(err - bound))
        return (
            f"{what}: {int((err > bound).sum())} of {err.size} entries differ; worst "
            f"{a[fin][i]!r} vs {b[fin][i]!r} (scale {scale:.3g})"
        )
    return None


RTOL = {"float64": 1e-7, "float32": 2e-3}


def _split_cotangents(G, arrays):
    cot = G.graph.get("cotangents") or {}
    arrays = dict(arrays)
    cots = {o: arrays.pop(c) for o, c in cot.items() if c in arrays}
    return arrays, cots


STEPS = (1e-3, 1e-4, 1e-5, 1e-6)
MIN_ALONE = 3  # arrays checked on their own at least, besides all of them at once
FD_SECONDS = 1.0  # and more of them while this lasts


def fd_check(G, m64, seed=0, tries=2):
    """Gradients of the float64 module against central differences: along a random
    direction in all differentiated arrays at once, and in a few of them one by one.

    Each direction's difference quotient is taken at several steps; the step whose
    quotient changes least towards the next smaller one is used, and its change bounds
    the quotient's own error. Wrong only if a second draw of arrays and directions
    disagrees too.
    """
    import numpy as np

    from graphgen.check import random_arrays

    detail = None
    for t in range(tries):
        arrays, cots = _split_cotangents(
            G, random_arrays(G, seed=seed + t, dtype="float64")
        )
        rng = np.random.default_rng(seed + 100 + t)
        if cots:
            grads = m64.vjp(_copy(cots), **_copy(arrays))

            def f(a, cots=cots):
                out = m64.forward(**a)
                val = sum(float(np.sum(out[o] * c)) for o, c in cots.items())
                scale = sum(float(np.sum(np.abs(out[o] * c))) for o, c in cots.items())
                return val, scale

        elif G.graph.get("loss") is not None:
            _, grads = m64.value_and_grad(**_copy(arrays))

            def f(a):
                v = m64.value_and_grad(**a)[0]
                return float(v), abs(float(v))

        else:
            return None
        keys = [
            k
            for k in grads
            if k in arrays
            and np.asarray(arrays[k]).dtype.kind == "f"
            and grads[k] is not None
        ]
        if not keys:
            return None
        g = {k: np.asarray(grads[k], dtype=np.float64) for k in keys}
        if not all(np.isfinite(v).all() for v in g.values()):
            return "unchecked"
        f0, scale = f(_copy(arrays))
        if not np.isfinite(f0):
            return "unchecked"
        alone = sorted(keys, key=lambda k: rng.random())
        directions = [keys] + ([[k] for k in alone] if len(keys) > 1 else [])
        detail = None
        start = time.perf_counter()
        for n, subset in enumerate(directions):
            if n > MIN_ALONE and time.perf_counter() - start > FD_SECONDS:
                break
            d = {k: rng.standard_normal(np.shape(arrays[k])) for k in subset}
            # a unit step: the arrays move little, so few kinks (relu, max) are crossed
            norm = np.sqrt(sum(float(np.sum(v**2)) for v in d.values())) or 1.0
            d = {k: v / norm for k, v in d.items()}
            bad = _one_direction(f, arrays, g, d, scale)
            if bad:
                which = "all arrays" if len(subset) > 1 else repr(subset[0])
                detail = f"along a random direction in {which}: {bad}"
                break
        if detail is None:
            return None
    return detail


def _one_direction(f, arrays, g, d, scale):
    import numpy as np

    ana = sum(float(np.sum(g[k] * d[k])) for k in d)
    terms = np.sqrt(sum(float(np.sum((g[k] * d[k]) ** 2)) for k in d))
    nums = []
    for h in STEPS:
        up = {k: np.array(v) for k, v in arrays.items()}
        down = {k: np.array(v) for k, v in arrays.items()}
        for k in d:
            up[k] = np.array(up[k] + h * d[k], dtype=up[k].dtype)
            down[k] = np.array(down[k] - h * d[k], dtype=down[k].dtype)
        nums.append((f(up)[0] - f(down)[0]) / (2 * h))
    if not all(np.isfinite(nums)):
        return None  # the function is not finite near here: nothing to compare
    if ana != 0 and all(x == 0 for x in nums):
        # float64 cannot see the change (a huge constant absorbs it: -1e308 + x); the
        # derivative of the exact function is another matter: nothing to compare
        return None
    i = min(range(len(nums) - 1), key=lambda i: abs(nums[i] - nums[i + 1]))
    num, spread = nums[i + 1], abs(nums[i] - nums[i + 1])
    tol = 3 * spread + 1e-6 * (abs(ana) + terms) + 1e-13 * (scale + 1.0) / STEPS[i + 1]
    if abs(num - ana) <= tol:
        return None
    return (
        f"analytic {ana!r}, central differences {num!r} (step {STEPS[i + 1]:g}; "
        f"quotients {', '.join(f'{x:.10g}' for x in nums)})"
    )


def check_graph(G, mod, model=None, fd_only=False, seed=0, phase=lambda name: None):
    """Forward against the reference interpreter (and onnxruntime), gradients against
    finite differences (on a float64 module)."""
    import numpy as np

    import graphgen
    from graphgen.check import random_arrays
    from graphgen.views.values import evaluate

    if _too_big(G):
        return Result("ok", "not checked: arrays too large", unchecked=True)
    arrays64 = random_arrays(G, seed=seed, dtype="float64")
    notes = []
    if not fd_only:
        dtype = np.dtype(mod.DTYPE).name
        fwd_in, _ = _split_cotangents(G, arrays64)
        fwd_in = {k: v for k, v in fwd_in.items() if k in mod.DTYPES}
        given = {
            k: np.array(v, dtype=dtype if np.asarray(v).dtype.kind == "f" else v.dtype)
            for k, v in fwd_in.items()
        }
        before = _copy(given)
        try:
            out = mod.forward(**given)
        except Exception as e:  # noqa: BLE001
            return crash_of(e, "forward() on valid arrays: ")
        for k, v in given.items():
            if not np.array_equal(v, before[k], equal_nan=True):
                return Result("wrong", f"forward() wrote into the array {k!r}")
        try:
            ref = evaluate(
                G,
                {
                    k: np.asarray(v, np.float64) if v.dtype.kind == "f" else v
                    for k, v in given.items()
                }
                | {k: v for k, v in arrays64.items() if k not in given},
            )
        except Exception as e:  # noqa: BLE001 - the interpreter is not under test here
            ref = None
            notes.append(f"reference interpreter failed: {type(e).__name__}")
        if ref is not None:
            for k in mod.OUTPUTS:
                if k not in ref or k not in out:
                    continue
                bad = compare(out[k], ref[k], RTOL[dtype], f"output {k!r}", dtype)
                if bad:
                    return Result(
                        "wrong",
                        f"forward() disagrees with the reference interpreter: {bad}",
                        "wrong: forward vs reference interpreter",
                    )
    if mod is not None and np.dtype(mod.DTYPE) == np.float64:
        m64 = mod
    else:
        try:
            m64 = graphgen.compile(G, dtype="float64")
        except Exception as e:  # noqa: BLE001
            return crash_of(e, "compiling the float64 module: ")
    try:
        bad = fd_check(G, m64, seed=seed)
    except Exception as e:  # noqa: BLE001
        return crash_of(e, "gradients on valid arrays: ")
    if bad and bad != "unchecked":
        return Result(
            "wrong",
            f"gradients disagree with finite differences: {bad}",
            "wrong: gradient vs finite differences",
        )
    if model is not None and not fd_only:
        phase("onnxruntime")  # a reference that may itself crash on a mutated model
        worse = compare_onnxruntime(model, given, out, dtype)
        phase("verify")
        if worse:
            return Result(
                "wrong",
                f"forward() disagrees with onnxruntime: {worse}",
                "wrong: forward vs onnxruntime",
            )
    if bad == "unchecked":
        return Result("ok", "gradients not checked: not finite", unchecked=True)
    return Result("ok", "; ".join(notes))


_ORT = {}


def compare_onnxruntime(model, given, out, dtype):
    """What differs between the module's outputs and onnxruntime's (None: agree, or
    onnxruntime cannot run the model)."""
    import numpy as np

    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 4
        import onnx

        proto = onnx.load_from_string(model)
        if any(not name for n in proto.graph.node for name in n.input):
            return None  # onnxruntime has crashed on empty input names
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        types = {
            "tensor(float)": np.float32,
            "tensor(double)": np.float64,
            "tensor(int64)": np.int64,
            "tensor(int32)": np.int32,
        }
        feed = {}
        for i in sess.get_inputs():
            if i.name not in given or i.type not in types:
                return None
            feed[i.name] = np.asarray(given[i.name]).astype(types[i.type])
        names = [o.name for o in sess.get_outputs()]
        res = sess.run(None, feed)
    except Exception:  # noqa: BLE001 - onnxruntime rejects the model: no comparison
        return None
    rtol = 2e-3 if dtype == "float32" else 1e-5
    for name, r in zip(names, res):
        if name in out and np.asarray(r).dtype.kind == "f":
            bad = compare(out[name], r, rtol, f"output {name!r}", "float32")
            if bad:
                return bad
    return None


def check_numba(G, mod):
    """A Numba module against the NumPy module of the same graph, on the same arrays."""
    import numpy as np

    import graphgen
    from graphgen.check import random_arrays

    if _too_big(G):
        return Result("ok", "not checked: arrays too large", unchecked=True)
    ref_mod = graphgen.compile(G, dtype=np.dtype(mod.DTYPE).name)
    arrays, cots = _split_cotangents(
        G, random_arrays(G, dtype=np.dtype(mod.DTYPE).name)
    )
    arrays = {k: v for k, v in arrays.items() if k in mod.DTYPES}
    results = []
    for m in (mod, ref_mod):
        try:
            r = {"forward": m.forward(**_copy(arrays))}
            if hasattr(m, "value_and_grad"):
                loss, grads = m.value_and_grad(**_copy(arrays))
                r |= {"loss": loss, "grads": grads}
            elif hasattr(m, "vjp") and cots:
                r |= {"grads": m.vjp(_copy(cots), **_copy(arrays))}
        except Exception as e:  # noqa: BLE001
            return crash_of(
                e, f"{'numba' if m is mod else 'numpy'} module on valid arrays: "
            )
        results.append(r)
    bad = compare_results(results[0], results[1], RTOL[np.dtype(mod.DTYPE).name])
    if bad:
        return Result(
            "wrong",
            f"numba module disagrees with numpy module: {bad}",
            "wrong: numba vs numpy",
        )
    return Result("ok")


def compare_results(got, want, rtol, dtype="float64", lenient=False):
    """Compare nested results (dicts, tuples, arrays, floats) entrywise."""
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return f"keys {sorted(got) if isinstance(got, dict) else type(got).__name__} != {sorted(want)}"
        for k in want:
            bad = compare_results(got[k], want[k], rtol, dtype, lenient)
            if bad:
                return f"{k!r}: {bad}"
        return None
    if isinstance(want, tuple):
        if not isinstance(got, tuple) or len(got) != len(want):
            return f"{type(got).__name__} of {len(got) if hasattr(got, '__len__') else '?'} != tuple of {len(want)}"
        for i, (a, b) in enumerate(zip(got, want)):
            bad = compare_results(a, b, rtol, dtype, lenient)
            if bad:
                return f"[{i}]: {bad}"
        return None
    return compare(got, want, rtol, "value", dtype, lenient)


# ----------------------------------------------------------------------- execute


def execute(case: Case, seconds: float, phase=lambda name: None) -> Result:
    t = time.perf_counter()
    try:
        if case.part == "call":
            from .gen_calls import run_call

            r = run_call(case, seconds, phase)
        else:
            r = run_cli_case(case, seconds, phase)
    except Hang as e:
        r = hang_of(e)
    except Exception as e:  # noqa: BLE001 - a bug in the harness is still reported
        r = crash_of(e, "harness: ")
        r.signature = "crash (harness): " + r.signature
    r.seconds = time.perf_counter() - t
    return r
