"""Shared helpers for graphgen's tests: hand-built graphs, finite differences, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
EXAMPLE_SPECS = sorted(EXAMPLES.glob("*.yaml"))
VENV_BIN = Path(sys.executable).parent


def build_graph(
    arrays, nodes, *, loss=None, outputs=None, wrt=None, dtype="float64", name="model"
):
    """A graphgen graph built by hand, following :mod:`graphgen.graph`.

    Parameters
    ----------
    arrays : dict
        ``name -> (kind, shape)`` or ``name -> (kind, shape, dtype)``; kind is
        ``"input"`` or ``"param"``.
    nodes : list
        ``(name, op, args, attrs)``; ``args`` are node names (a name may repeat).
    """
    G = nx.DiGraph()
    for n, spec in arrays.items():
        kind, shape = spec[0], tuple(spec[1])
        a = {"kind": kind, "shape": shape, "dtype": spec[2] if len(spec) > 2 else dtype}
        if kind == "param":
            a["init"] = "normal"
        G.add_node(n, **a)
    for n, op, args, attrs in nodes:
        G.add_node(n, kind="op", op=op, attrs=dict(attrs))
        for i, p in enumerate(args):
            if G.has_edge(p, n):
                G.edges[p, n]["pos"] = G.edges[p, n]["pos"] + (i,)
            else:
                G.add_edge(p, n, pos=(i,))
    G.graph.update(
        name=name,
        dtype=dtype,
        loss=loss,
        outputs=list(outputs if outputs is not None else [loss]),
    )
    if wrt is not None:
        G.graph["wrt"] = list(wrt)
    return G


def fd_gradient(f, arrays, name, eps=1e-6):
    """Central finite differences of the scalar ``f(arrays)`` with respect to one array."""
    x = arrays[name]
    out = np.zeros(x.shape, dtype=np.float64)
    flat, gflat = x.reshape(-1), out.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f(arrays)
        flat[i] = old - eps
        down = f(arrays)
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return out


def assert_grad_close(analytic, numeric, rtol=1e-6, what="gradient"):
    """``|analytic − numeric| <= rtol · max(1, |analytic|)`` entrywise."""
    analytic = np.asarray(analytic, dtype=np.float64)
    assert analytic.shape == numeric.shape, (
        f"{what}: shape {analytic.shape} != {numeric.shape}"
    )
    err = np.abs(analytic - numeric)
    bound = rtol * np.maximum(1.0, np.abs(analytic))
    bad = err > bound
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {bad.size} entries differ from finite differences; "
        f"worst at {np.unravel_index(np.argmax(err - bound), err.shape)}: "
        f"analytic {analytic.reshape(-1)[np.argmax(err - bound)]!r}, "
        f"numeric {numeric.reshape(-1)[np.argmax(err - bound)]!r}\n"
        f"analytic =\n{analytic}\nnumeric =\n{numeric}"
    )


def clean_env(**extra):
    """A subprocess environment that does not leak PYTHONPATH and friends."""
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "GRAPHGEN_DEBUG"):
        env.pop(var, None)
    env.update(extra)
    return env


def run_graphgen(*args, cwd=None, env=None, timeout=120):
    """``python -m graphgen ARGS`` in a subprocess; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "graphgen", *map(str, args)],
        cwd=cwd or REPO,
        env=env or clean_env(),
        capture_output=True,
        check=False,
        timeout=timeout,
    )


@pytest.fixture
def cli(capsys):
    """Run ``graphgen.cli.main(argv)`` in-process: returns ``(status, stdout, stderr)``."""
    from graphgen.cli import main

    def run(*argv):
        status = main([str(a) for a in argv])
        out = capsys.readouterr()
        return status, out.out, out.err

    return run


def add_weighted_loss(G, out="y", weight="w", dtype=None):
    """Give ``G`` the loss ``sum(weight · out)`` with ``weight`` a new input of ``out``'s
    shape (a random weight makes every entry of ``out`` matter); returns that shape."""
    import graphgen

    dtype = dtype or G.graph.get("dtype", "float64")
    shape = graphgen.prepare(G).nodes[out]["shape"]
    G.add_node(weight, kind="input", shape=shape, dtype=dtype)
    G.add_node("weighted", kind="op", op="mul", attrs={})
    G.add_edge(out, "weighted", pos=(0,))
    G.add_edge(weight, "weighted", pos=(1,))
    G.add_node("loss", kind="op", op="sum", attrs={})
    G.add_edge("weighted", "loss", pos=(0,))
    return shape


def python_level(src):
    """The Python-level functions of a generated module (forward ... its last one)."""
    return src.split("\ndef forward(", 1)[1].split("\ndef init_params(", 1)[0]


def compiled_part(src):
    """What a generated module defines after its argument checks: helpers, kernels."""
    return src.split("\ndef _fail(", 1)[1]
