"""The public Python API: load, compile, check (generate and adjoint live with their passes)."""

from __future__ import annotations

import builtins
import os
import sys
import types

from . import spec
from .check import check
from .codegen import generate

__all__ = ["load", "compile", "check"]


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


def compile(G, backend="numpy", *, dtype=None):  # noqa: A001 - the API name the issue asks for
    """Generate the module for ``G`` and import it without writing a file.

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
    source = generate(G, backend=backend, dtype=dtype)
    name = f"graphgen_{G.graph.get('name', 'model')}"
    module = types.ModuleType(name)
    module.__dict__["__source__"] = source
    code = builtins.compile(source, f"<graphgen {name}>", "exec")
    # the module may define functions whose globals must resolve while it runs
    sys.modules.setdefault(name, module)
    try:
        exec(code, module.__dict__)
    finally:
        if sys.modules.get(name) is module:
            del sys.modules[name]
    return module

