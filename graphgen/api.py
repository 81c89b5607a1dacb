"""The public Python API: load, compile, check (generate and adjoint live with their passes)."""

from __future__ import annotations

import builtins
import os
import sys
import types

from . import spec
from .check import check
from .codegen import generate

__all__ = ["check", "compile", "load"]


def load(path):
    """Load a spec file (``.yaml``, ``.yml`` or ``.json``) into a ``networkx.DiGraph``.

    The graph is validated and every node's shape is inferred; see :mod:`graphgen.graph`
    for the attribute conventions, which a graph built by hand must follow too.

    Examples
    --------
    >>> import graphgen
    >>> G = graphgen.load("examples/tiny.yaml")
    >>> G.graph["loss"], G.nodes["J"]["shape"]
    ('J', ())
    """
    return spec.load(os.fspath(path))


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
    if backend == "numba":
        return _import_cached(source, G.graph.get("name", "model"))
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


def cache_dir():
    """Where :func:`compile` writes modules that need a file (``$GRAPHGEN_CACHE_DIR``)."""
    d = os.environ.get("GRAPHGEN_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "graphgen"
    )
    os.makedirs(d, exist_ok=True)
    return d


def _import_cached(source, model_name):
    """Import ``source`` from a file named by its hash (written once, never rewritten)."""
    import hashlib
    import importlib.util
    import re

    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_]", "_", str(model_name))[:40]
    name = f"graphgen_{stem}_{digest}"
    path = os.path.join(cache_dir(), name + ".py")
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
