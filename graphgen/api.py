"""The pipeline and the public Python API around it.

::

    load (frontends) -> lower: prepare, adjoint, optimize (passes)
         -> generate: a backend's Program renders the module -> compile / write

:func:`report` says what the compiler did. Gradient checking (:mod:`graphgen.check`),
the views and the CLI sit on top of this module; it imports none of them.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import types

from . import dims
from . import graph as g
from .backends.numba.program import NumbaProgram
from .backends.numpy import memory
from .backends.numpy.program import NumpyProgram
from .codegen import optim
from .codegen.program import stored_weights
from .codegen.render import check_module, compile_module, render_text
from .errors import CodegenError, GraphError
from .frontends import onnx as onnx_frontend
from .frontends import shared, spec
from .passes.adjoint import adjoint
from .passes.forward import forward_mode
from .passes.optimize import optimize, reuse_inner
from .passes.shapes import prepare

__all__ = [
    "compile",
    "generate",
    "hessian",
    "load",
    "lower",
    "observing",
    "report",
    "shared_params",
    "write",
]

# backend name -> its Program (each renders templates/<name>/module.py.j2)
BACKENDS = {"numpy": NumpyProgram, "numba": NumbaProgram}


# The observer of the stages of the compiles running in this context (see observing()).
_OBSERVER = contextvars.ContextVar("graphgen_stages", default=None)


@contextlib.contextmanager
def observing(observer):
    """Tell ``observer`` when each stage of a compile begins and ends.

    ``observer.begin(name, size)`` and ``observer.end(name)`` are called around each
    stage: ``load``, ``shapes``, ``adjoint``, ``optimize``, ``codegen``, ``render`` and
    (for :func:`compile`) ``import``; ``size`` is the node count of the graph the stage
    starts from (None for ``load``). The CLI's progress lines and
    ``benchmarks/compile_scale.py`` are observers.
    """
    token = _OBSERVER.set(observer)
    try:
        yield observer
    finally:
        _OBSERVER.reset(token)


class Progress:
    """An observer (:func:`observing`) that shows a compile's stages on ``stream``, one
    line per stage, once the compile has run ``after`` seconds: then the stages done so
    far with their times, and a line as each later stage begins. Silent when
    ``stream`` is not a terminal. Use it as a context manager around the compile.

    ``after`` defaults to ``$GRAPHGEN_PROGRESS_AFTER`` (2 seconds when unset).
    """

    def __init__(self, stream=None, after=None):
        import threading

        self.stream = sys.stderr if stream is None else stream
        if after is None:
            after = float(os.environ.get("GRAPHGEN_PROGRESS_AFTER", "2"))
        self.after = after
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty())
        self.active = False
        self.done = []  # (stage, seconds) of the stages that ended
        self.running = None  # (stage, start, nodes)
        self.lock = threading.Lock()
        self.timer = None
        self.t0 = None

    def __enter__(self):
        import threading
        import time

        self.t0 = time.perf_counter()
        if self.enabled:  # a compile stuck in one stage still says so in time
            self.timer = threading.Timer(self.after, self._activate)
            self.timer.daemon = True
            self.timer.start()
        return self

    def __exit__(self, *exc):
        if self.timer is not None:
            self.timer.cancel()
        with self.lock:
            if self.active and exc[0] is None:
                self._say(f"done in {self._now():.1f} s")

    def _now(self):
        import time

        return time.perf_counter() - self.t0

    def _say(self, text):
        self.stream.write(f"graphgen: {text}\n")
        self.stream.flush()

    def _begun(self):
        name, start, nodes = self.running
        size = "" if nodes is None else f" {nodes:,} nodes,"
        self._say(f"{name}...{size} {start:.1f} s so far")

    def _activate(self):
        with self.lock:
            if self.active or not self.enabled:
                return
            self.active = True
            for name, seconds in self.done:
                self._say(f"{name} {seconds:.1f} s")
            if self.running is not None:
                self._begun()

    def begin(self, name, size=None):
        if self.t0 is None:
            self.__enter__()
        if self.enabled and not self.active and self._now() >= self.after:
            self._activate()
        with self.lock:
            self.running = (name, self._now(), size)
            if self.active:
                self._begun()

    def end(self, name):
        with self.lock:
            self.done.append((name, self._now() - self.running[1]))
            self.running = None


@contextlib.contextmanager
def _stage(name, G=None):
    size = None if G is None else G.number_of_nodes()
    del G  # not held while the stage runs: a stage may drop its graph (render)
    observer = _OBSERVER.get()
    if observer is None:
        yield
        return
    observer.begin(name, size)
    try:
        yield
    finally:
        observer.end(name)


def load(path, **onnx_options):
    """Load a spec file (``.yaml``, ``.yml``, ``.json``) or an ONNX model (``.onnx``)
    into a ``networkx.DiGraph``.

    ``onnx_options`` (ONNX models only): ``loss``, ``labels``, ``freeze``,
    ``trainable``, ``shapes``, ``dtype``; see
    :func:`graphgen.onnx_frontend.to_spec`.

    The graph is validated and every node's shape is inferred; see :mod:`graphgen.graph`
    for the attribute conventions, which a graph built by hand must follow too.

    Examples
    --------
    >>> import graphgen
    >>> G = graphgen.load("examples/tiny.yaml")
    >>> G.graph["loss"], G.nodes["J"]["shape"]
    ('J', ())
    """
    path = os.fspath(path)
    if not path.endswith(".onnx") and onnx_options:
        raise TypeError(f"options {sorted(onnx_options)} apply to ONNX models only")
    with _stage("load"):
        if path.endswith(".onnx"):
            return onnx_frontend.load(path, **onnx_options)
        return spec.load(path)


def compile(G, backend="numpy", *, dtype=None, **options):
    """Generate the module for ``G`` and import it (NumPy: without writing a file).

    The ``numba`` backend's module is written to a cache directory (``$GRAPHGEN_CACHE_DIR``,
    default ``~/.cache/graphgen``) under a name derived from its source's hash, and imported
    from there, so that Numba's ``cache=True`` can keep compiled kernels next to it and a
    second process does not compile again. ``options`` go to the backend
    (numba: ``parallel``, ``fastmath``, ``cache``).

    Returns
    -------
    types.ModuleType
        With ``forward``, ``value_and_grad`` (when the graph has a loss), ``init_params``,
        ``INPUTS``, ``PARAMS`` and ``OUTPUTS``; with ``optimizer=`` (see
        :func:`generate`) also ``init_state``, ``train_step``, ``save_checkpoint`` and
        ``load_checkpoint``.

    Examples
    --------
    >>> import graphgen
    >>> m = graphgen.compile(graphgen.load("examples/tiny.yaml"))
    >>> m.PARAMS["W1"]
    (2, 3)
    """
    source = generate(G, backend=backend, dtype=dtype, **options)
    arrays = stored_arrays(G)
    with _stage("import"):
        return _import(source, G, backend, arrays)


def _import(source, G, backend, arrays):
    if backend == "numba" or arrays:
        return _import_cached(source, G.graph.get("name", "model"), arrays)
    name = f"graphgen_{G.graph.get('name', 'model')}"
    module = types.ModuleType(name)
    module.__dict__["__source__"] = source
    codes = compile_module(source, f"<graphgen {name}>")
    # the module may define functions whose globals must resolve while it runs
    sys.modules.setdefault(name, module)
    try:
        for code in codes:  # its top-level definitions, in order
            exec(code, module.__dict__)  # noqa: S102 - running the code we generated
    finally:
        if sys.modules.get(name) is module:
            del sys.modules[name]
    return module


def hessian(G, backend="numpy", *, dtype=None, **options):
    """The full Hessian of ``G``'s loss: a function ``f(**arrays) -> ndarray``.

    The ``hessian`` of a module compiled with ``hessian=True``: the ``wrt`` arrays are
    flattened in C order and laid end to end in ``wrt`` order, θ =
    ``concatenate([arrays[w].ravel() for w in wrt])``, and entry ``[i, j]`` is
    ∂²loss/∂θ_i∂θ_j. Column ``j`` is one Hessian-vector product (forward over reverse)
    with the ``j``-th unit vector, so this is for small models (at most 10,000 entries in
    θ); use the module's ``hvp`` beyond.

    Examples
    --------
    >>> import graphgen, numpy as np
    >>> G = graphgen.load("examples/tiny.yaml")
    >>> f = graphgen.hessian(G)
    >>> arrays = graphgen.compile(G).init_params(0)
    >>> H = f(x=np.ones((4, 2)), t=np.zeros((4, 1)), **arrays)
    >>> H.shape  # W1 (2, 3), b1 (3,), W2 (3, 1): 6 + 3 + 3 entries
    (12, 12)
    >>> bool(np.allclose(H, H.T))
    True
    """
    return compile(G, backend, dtype=dtype, hessian=True, **options).hessian


def stored_arrays(G):
    """The arrays a module of ``G`` reads from its ``.npz`` (empty when it reads none)."""
    params, consts = stored_weights(G)  # no prepare: compile runs it anyway
    weights = G.graph.get("weights") or {}
    missing = [k for k in params + consts if k not in weights]
    if missing:
        raise GraphError(
            f"no stored array for {', '.join(map(repr, missing))}",
            source=G.graph.get("source"),
        )
    return {k: weights[k] for k in params + consts}


def write(G, path, backend="numpy", *, dtype=None, **options):
    """Write the module of ``G`` to ``path``, and its stored weights beside it.

    A graph whose params or constants are stored arrays (an imported ONNX model) also
    gets ``<path without .py>.npz``, which the module loads from its own directory.
    Returns the paths written.
    """
    import numpy as np

    source = generate(G, backend=backend, dtype=dtype, **options)
    path = os.fspath(path)
    written = [path]
    arrays = stored_arrays(G)
    with open(path, "w", encoding="utf-8") as f:
        f.write(source)
    if arrays:
        npz = os.path.splitext(path)[0] + ".npz"
        fdtype = dtype or G.graph.get("dtype", "float64")
        np.savez(npz, **{k: np.asarray(v, dtype=fdtype) for k, v in arrays.items()})
        written.append(npz)
    return written


def cache_dir():
    """Where :func:`compile` writes modules that need a file (``$GRAPHGEN_CACHE_DIR``)."""
    d = os.environ.get("GRAPHGEN_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "graphgen"
    )
    os.makedirs(d, exist_ok=True)
    return d


def _import_cached(source, model_name, arrays=None):
    """Import ``source`` from a file named by its hash (written once, never rewritten),
    with ``arrays`` stored beside it as the module's ``.npz``."""
    import hashlib
    import importlib.util
    import re

    import numpy as np

    h = hashlib.sha256(source.encode("utf-8"))
    for k in sorted(arrays or {}):
        v = np.ascontiguousarray(arrays[k])
        h.update(f"{k}\0{v.dtype}\0{v.shape}\0".encode())
        h.update(v.data)
    digest = h.hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_]", "_", str(model_name))[:40]
    name = f"graphgen_{stem}_{digest}"
    path = os.path.join(cache_dir(), name + ".py")
    npz = os.path.join(cache_dir(), name + ".npz")
    if arrays and not os.path.exists(npz):
        tmp = f"{npz}.{os.getpid()}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, npz)
    if not os.path.exists(path):  # same bytes, same file: Numba's cache stays valid
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(source)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    module.__dict__["__source__"] = source
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def lower(G, *, dtype=None, jvp=False, hvp=False, hessian=False):
    """Prepare, differentiate and optimize: the graph a backend renders.

    ``jvp``, ``hvp``, ``hessian``: add the tangent systems of the module's ``jvp`` and
    ``hvp`` (``hessian`` is a loop over ``hvp``), optimized with the rest
    (:func:`graphgen.passes.forward.forward_mode`).
    """
    with g.paused_gc():  # the passes' graphs stay alive until lowering is done
        return _lower(G, dtype, jvp, hvp, hessian)


def _lower(G, dtype, jvp, hvp, hessian):
    H = G  # prepare copies it
    if dtype is not None:
        if dtype not in g.FLOAT_DTYPES:
            raise CodegenError(
                f"dtype must be float64 or float32, got {dtype!r}",
                source=g.source_of(G),
            )
        H = _with_dtype(H, dtype)
    with _stage("shapes", H):
        H = prepare(H)
    if H.graph.get("loss") is not None:
        with _stage("adjoint", H):
            H = adjoint(H, prepared=True, copy=False)  # prepared just above: ours
    with _stage("optimize", H):
        H = optimize(H, copy=False)
    if not (jvp or hvp or hessian):
        return reuse_inner(H, copy=False)  # H is this function's own
    with _stage("forward mode", H):
        H = forward_mode(H, jvp=jvp, hvp=hvp or hessian)
        # the tangents are roots: optimized like outputs, never removed or moved
        outputs = H.graph["outputs"]
        systems = (
            (H.graph.get("jvp") or {}).get("outputs", {}),
            (H.graph.get("hvp") or {}).get("hvps", {}),
        )
        roots = [v for s in systems for v in s.values() if v is not None]
        H.graph["outputs"] = list(dict.fromkeys(outputs + roots))
        H = optimize(H, copy=False)
        H.graph["outputs"] = outputs
        H.graph["hessian"] = bool(hessian)
    return reuse_inner(H, copy=False)


def generate(
    G,
    backend="numpy",
    *,
    dtype=None,
    source_name=None,
    optimizer=None,
    jvp=False,
    hvp=False,
    hessian=False,
    **options,
):
    """Render the standalone Python module for ``G``.

    Parameters
    ----------
    G : networkx.DiGraph
        A graphgen graph (:func:`graphgen.load` or built by hand).
    backend : {"numpy", "numba"}
        The code generator to use.
    dtype : {"float64", "float32"}, optional
        Override the spec's dtype.
    source_name : str, optional
        The name shown in the module docstring (default: the spec file's base name).
    jvp, hvp, hessian : bool
        Add ``jvp(tangents, **arrays)`` (forward mode), ``hvp(vectors, **arrays)``
        (Hessian-vector products, forward over reverse) and ``hessian(**arrays)`` (the
        full Hessian, for small models; implies ``hvp``) to the module. ``jvp`` may
        instead be a list of names: the inputs and params ``jvp`` takes tangents of
        (default: every float one).
    optimizer : str or graphgen.codegen.optim.Optimizer, optional
        ``"sgd"``, ``"momentum"``, ``"adam"`` or ``"adamw"`` (PyTorch's defaults), or
        a configured :func:`graphgen.codegen.optim.optimizer`: the module also gets
        ``init_state``, ``train_step``, ``save_checkpoint`` and ``load_checkpoint``.

    Returns
    -------
    str
        Python source that imports only NumPy. It is deterministic: the same graph gives
        the same bytes.

    Examples
    --------
    >>> import graphgen
    >>> src = graphgen.generate(graphgen.load("examples/tiny.yaml"))
    >>> "def value_and_grad(**arrays):" in src
    True
    """
    if backend not in BACKENDS:
        raise CodegenError(
            f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})",
            source=g.source_of(G),
        )
    A = lower(G, dtype=dtype, jvp=jvp, hvp=hvp, hessian=hessian)
    if source_name is None:
        source_name = os.path.basename(g.source_of(A))
    if backend == "numpy" and options:
        raise CodegenError(f"the {backend} backend takes no options {sorted(options)}")
    if optimizer is not None:
        if A.graph.get("loss") is None or A.graph.get("cotangents"):
            raise CodegenError(
                "an optimizer needs a spec with a scalar loss (train_step minimizes it)",
                source=g.source_of(G),
            )
        options["optimizer"] = optim.optimizer(optimizer)
    # numba options: parallel, fastmath, cache, whole, transcendentals
    with _stage("codegen", A):
        program = BACKENDS[backend](A, backend, source_name, **options)
        context = program.context()
    with _stage("render", A):
        text = render_text(program.env, f"{backend}/module.py.j2", context)
        # CPython's compile of a big module needs more memory than the graph and the
        # statements: they go first, so that its peak does not stack on theirs
        del program, context, A
        return check_module(text)


def report(G, backend="numpy", *, dtype=None, sizes=None, optimizer=None, **forward):
    """What the compiler did, for ``graphgen compile --report``.

    Per pass, the op count before and after; the forward values saved for the backward
    pass with their sizes; and the planned peak bytes of intermediates of each generated
    function, with symbolic sizes set from ``sizes`` (default 32 each). With an
    ``optimizer``: the peak of ``train_step`` against ``value_and_grad`` followed by a
    separate update, and why the step runs in two phases when it does. Stored params
    that hold one value (:func:`shared_params`) are named last.
    """
    forward_only = prepare(G if dtype is None else _with_dtype(G, dtype))
    A = lower(G, dtype=dtype, **forward)  # forward: jvp, hvp, hessian
    opt = None if optimizer is None else optim.optimizer(optimizer)
    program = NumpyProgram(A, backend, os.path.basename(g.source_of(A)), opt)
    program.context()
    A = program.A  # with the values the backward pass recomputes instead of keeping
    symbols = sorted(
        {s for n in A for d in A.nodes[n][g.SHAPE] for s in dims.symbols(d)}
    )
    sizes = {s: 32 for s in symbols} | dict(sizes or {})
    lines = [
        f"graphgen report for {program.source_name} ({A.graph['dtype']}, "
        + (", ".join(f"{k}={v}" for k, v in sizes.items()) or "no symbolic sizes")
        + ")",
        "",
        f"forward graph: {sum(1 for n in forward_only if forward_only.nodes[n][g.KIND] == g.OPNODE)} ops",
        f"{'pass':<28} {'ops before':>10} {'ops after':>10}",
    ]
    for name, before, after in A.graph.get("pass_stats", []):
        lines.append(f"{name:<28} {before:>10} {after:>10}")
    saved = memory.saved_for_backward(A)
    lines += ["", f"saved for the backward pass ({len(saved)} arrays):"]
    total = 0
    for n in saved:
        nb = memory.nbytes(A, n, sizes)
        total += nb
        shape = dims.concrete(A.nodes[n][g.SHAPE], sizes)
        name = program.namer.names.get(n, "(a tangent temporary)")
        lines.append(f"  {name:<24} {shape!s:<16} {nb:>12,d} bytes")
    lines.append(f"  {'total':<24} {'':<16} {total:>12,d} bytes")
    again = [  # the copies the backward pass reads (not those only other copies read)
        n
        for n in program.order
        if memory.RECOMPUTES in A.nodes[n]
        and any(memory.RECOMPUTES not in A.nodes[r] for r in A.successors(n))
    ]
    if again:
        lines += ["", f"recomputed in the backward pass instead ({len(again)} arrays):"]
        for n in again:
            v = A.nodes[n][memory.RECOMPUTES]
            shape = dims.concrete(A.nodes[n][g.SHAPE], sizes)
            nb = memory.nbytes(A, n, sizes)
            lines.append(f"  {program.namer[v]:<24} {shape!s:<16} {nb:>12,d} bytes")
    lines.append("")
    for fname, (prog, keep, inlined) in program.programs.items():
        if fname == "train_step":  # value_and_grad's plan with updates: below
            continue
        peak = memory.peak_bytes(A, prog, keep, sizes, inlined)
        lines.append(f"planned peak of intermediates in {fname}(): {peak:,d} bytes")
    if opt is not None and "value_and_grad" in program.programs:
        lines += ["", _train_report(A, program, opt, sizes)]
    copies = shared_params(G)
    if copies:
        lines += ["", *shared.describe(copies)]
    return "\n".join(lines)


def shared_params(G):
    """The params of ``G`` stored as arrays (an imported model's initializers) that hold
    one value: equal, equal transposed, or a leading block of another's rows. Exporters
    store one PyTorch parameter this way more than once (a tied or transposed weight, a
    folded lookup of its first rows); see :func:`graphgen.frontends.shared.groups` for
    the groups' form and docs/onnx.md for mapping trained weights back.
    """
    weights = G.graph.get("weights") or {}
    return shared.groups(
        {
            n: weights[n]
            for n in G
            if G.nodes[n][g.KIND] == g.PARAM
            and G.nodes[n].get(g.INIT) == "weights"
            and n in weights
        }
    )


def _train_report(A, program, opt, sizes):
    """train_step's planned peak against value_and_grad plus a separate update."""
    prog, keep, inlined = program.programs["value_and_grad"]
    temps = optim.temporaries(opt)
    plan = program.update_plan
    fused = memory.peak_with_updates(A, prog, keep, sizes, inlined, plan, temps)
    grads = [u for ups in plan.values() for u in ups]
    separate = memory.peak_separate_update(A, prog, keep, sizes, inlined, grads, temps)
    ratio = fused / separate if separate else 1.0
    head = f"train_step ({opt.name}): planned peak {fused:,d} bytes; "
    lines = [
        head + f"value_and_grad + a separate update: {separate:,d} bytes ({ratio:.2f}x)"
    ]
    why = optim.two_phase_reason(opt)
    if why:
        lines.append(f"train_step runs in two phases: {why}")
    else:
        lines.append(
            "each update runs right after the last read of its gradient and param, "
            "so the gradient's buffer dies there"
        )
    return "\n".join(lines)


def _with_dtype(G, dtype):
    H = G.copy()
    old = H.graph.get("dtype", "float64")
    H.graph["dtype"] = dtype
    for n in H:
        if H.nodes[n].get(g.DTYPE, old) == old:
            H.nodes[n][g.DTYPE] = dtype
    return H
