"""The public Python API: load, compile, check (generate and adjoint live with their passes)."""

from __future__ import annotations

import builtins
import os
import sys
import types

from . import spec
from .check import check
from .codegen import generate

__all__ = ["check", "compile", "load", "write"]


def load(path, **onnx_options):
    """Load a spec file (``.yaml``, ``.yml``, ``.json``) or an ONNX model (``.onnx``)
    into a ``networkx.DiGraph``.

    ``onnx_options`` (ONNX models only): ``loss``, ``labels``, ``freeze``, ``dtype``; see
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
    if path.endswith(".onnx"):
        from . import onnx_frontend

        return onnx_frontend.load(path, **onnx_options)
    if onnx_options:
        raise TypeError(f"options {sorted(onnx_options)} apply to ONNX models only")
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
        ``INPUTS``, ``PARAMS`` and ``OUTPUTS``.

    Examples
    --------
    >>> import graphgen
    >>> m = graphgen.compile(graphgen.load("examples/tiny.yaml"))
    >>> m.PARAMS["W1"]
    (2, 3)
    """
    source = generate(G, backend=backend, dtype=dtype, **options)
    arrays = stored_arrays(G)
    if backend == "numba" or arrays:
        return _import_cached(source, G.graph.get("name", "model"), arrays)
    name = f"graphgen_{G.graph.get('name', 'model')}"
    module = types.ModuleType(name)
    module.__dict__["__source__"] = source
    code = builtins.compile(source, f"<graphgen {name}>", "exec")
    # the module may define functions whose globals must resolve while it runs
    sys.modules.setdefault(name, module)
    try:
        exec(code, module.__dict__)  # noqa: S102 - running the code we just generated
    finally:
        if sys.modules.get(name) is module:
            del sys.modules[name]
    return module


def stored_arrays(G):
    """The arrays a module of ``G`` reads from its ``.npz`` (empty when it reads none)."""
    from .codegen import stored_weights

    params, consts = stored_weights(G)  # no prepare: compile runs it anyway
    weights = G.graph.get("weights") or {}
    missing = [k for k in params + consts if k not in weights]
    if missing:
        from .errors import GraphError

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
