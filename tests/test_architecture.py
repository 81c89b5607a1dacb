"""The shape of the house: data flows one way through the package, with no import circle,
and op facts live with the ops.

Layers, lowest first (a module may import its own layer or a lower one)::

    errors, version, dims, graph       the vocabulary
    ops                                one declaration per op
    passes, frontends                  G -> G, and file -> G
    codegen                            what every backend shares
    backends                           numpy/, numba/
    api                                the pipeline
    check, views, distributed          read the graphs and modules api makes
    cli, onnx_backend, the package     the front doors
"""

from __future__ import annotations

import ast
import subprocess
import sys

import networkx as nx
import pytest
from conftest import REPO

from graphgen import ops

PACKAGE = REPO / "graphgen"

LAYERS = [
    ("graphgen.errors", "graphgen.version", "graphgen.dims", "graphgen.graph"),
    ("graphgen.ops", "graphgen.notes"),
    ("graphgen.passes", "graphgen.frontends"),
    ("graphgen.codegen",),
    ("graphgen.backends",),
    ("graphgen.api",),
    ("graphgen.check", "graphgen.views", "graphgen.distributed", "graphgen.training"),
    ("graphgen.cli", "graphgen.onnx_backend", "graphgen.__main__", "graphgen"),
]


def _modules():
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _resolve(module, is_pkg, level, target):
    """The module a relative import ``from <level dots><target> import ...`` names."""
    base = module.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def import_graph():
    """Module -> module edges of every graphgen import, at any depth in the file."""
    G = nx.DiGraph()
    for module, (path, is_pkg) in MODULES.items():
        G.add_node(module)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    src = _resolve(module, is_pkg, node.level, node.module)
                elif (node.module or "").startswith("graphgen"):
                    src = node.module
                else:
                    continue
                for alias in node.names:  # `from . import spec`: a submodule
                    if f"{src}.{alias.name}" in MODULES:
                        targets.append(f"{src}.{alias.name}")
                    else:  # a name defined in src itself
                        targets.append(src)
            elif isinstance(node, ast.Import):
                targets += [a.name for a in node.names if a.name.startswith("graphgen")]
            for t in targets:
                if t in MODULES and t != module:
                    G.add_edge(module, t)
    return G


def _layer(module):
    best = None
    for rank, names in enumerate(LAYERS):
        for name in names:
            inside = module == name or module.startswith(name + ".")
            if inside and (best is None or len(name) > best[1]):
                best = (rank, len(name))
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[0]


def test_no_import_circle():
    G = import_graph()
    # a package's __init__ importing its own modules, and those modules importing names
    # from a sibling, is no circle; an edge to the package's __init__ from inside is
    cycles = list(nx.simple_cycles(G))
    assert not cycles, "import circles:\n" + "\n".join(
        " -> ".join(c + [c[0]]) for c in sorted(cycles)
    )


def test_imports_flow_one_way():
    G = import_graph()
    upward = [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, b in sorted(G.edges)
        if _layer(b) > _layer(a)
    ]
    assert not upward, "imports against the flow:\n" + "\n".join(upward)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports_in_a_fresh_interpreter(module):
    if module == "graphgen.__main__":
        pytest.skip("runs the CLI")
    if module == "graphgen.onnx_backend":
        pytest.importorskip("onnx")
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------- op facts

# Comparisons of an op's name to a string literal that stay outside ops/, each with the
# reason it is not an op fact.
ALLOWED = {
    ("graphgen/cli.py", "mse"): (
        "the choices of --loss: a loss option is named after the op that computes it"
    ),
    ("graphgen/cli.py", "softmax_cross_entropy"): (
        "the choices of --loss: a loss option is named after the op that computes it"
    ),
    ("graphgen/frontends/onnx.py", "mse"): (
        "to_spec's loss option: a loss option is named after the op that computes it"
    ),
    ("graphgen/frontends/onnx.py", "softmax_cross_entropy"): (
        "to_spec's loss option: a loss option is named after the op that computes it"
    ),
    ("graphgen/backends/numba/program.py", "sin"): (
        "NumPy's float64 sin and cos are scalar libm loops: a fact about NumPy's loops "
        "(which the Numba backend fuses rather than leaves to NumPy), not about the ops"
    ),
    ("graphgen/backends/numba/program.py", "cos"): (
        "NumPy's float64 sin and cos are scalar libm loops: a fact about NumPy's loops "
        "(which the Numba backend fuses rather than leaves to NumPy), not about the ops"
    ),
    ("graphgen/backends/numba/program.py", "pad"): (
        "not the op: the Jinja filter 'pad' (indentation) the kernel template uses"
    ),
    ("graphgen/codegen/layout.py", "sub"): (
        "not the op: the layout parser's node kind 'sub' (a subscript)"
    ),
    ("graphgen/backends/numpy/program.py", "mul"): (
        "a mask folded into a product stays boolean: NumPy's multiply reads a bool "
        "array as 0/1, a property of mul's NumPy form"
    ),
    ("graphgen/codegen/comments.py", "sum_to_shape"): (
        "the comment of the backward sum that undoes broadcasting says which axes it sums"
    ),
    ("graphgen/frontends/onnx_tensors.py", "constant"): (
        "ONNX Pad's mode 'constant' (a padding mode, not graphgen's constant op)"
    ),
    ("graphgen/views/explain.py", "matmul"): (
        "the one-weight walkthrough (W[i, j] reaches only column j of z) reads a matrix "
        "product, z = a @ W"
    ),
    ("graphgen/views/explain.py", "broadcast_to"): (
        "a function name in the ops' math text, set upright in LaTeX (typesetting)"
    ),
    ("graphgen/views/explain.py", "concat"): (
        "a function name in the ops' math text, set upright in LaTeX (typesetting)"
    ),
    ("graphgen/views/explain.py", "cos"): (
        "a function name in the ops' math text, set upright in LaTeX (typesetting)"
    ),
    ("graphgen/views/explain.py", "exp"): (
        "a function name in the ops' math text, set upright in LaTeX (typesetting)"
    ),
    ("graphgen/views/explain.py", "log"): (
        "a function name in the ops' math text, set upright in LaTeX (typesetting)"
    ),
    ("graphgen/views/explain.py", "logsumexp"): (
        "a function name in the ops' math text, set upright in LaTeX (typesetting)"
    ),
    ("graphgen/views/explain.py", "max"): (
        "a function name in the ops' math text, set upright in LaTeX (typesetting)"
    ),
    ("graphgen/views/explain.py", "mean"): (
        "a function name in the ops' math text, set upright in LaTeX (typesetting)"
    ),
    ("graphgen/views/explain.py", "onehot"): (
        "a function name in the ops' math text, set upright in LaTeX (typesetting)"
    ),
    ("graphgen/views/explain.py", "reshape"): (
        "a function name in the ops' math text, set upright in LaTeX (typesetting)"
    ),
    ("graphgen/views/explain.py", "sign"): (
        "a function name in the ops' math text, set upright in LaTeX (typesetting)"
    ),
    ("graphgen/views/explain.py", "sin"): (
        "a function name in the ops' math text, set upright in LaTeX (typesetting)"
    ),
    ("graphgen/views/explain.py", "softmax"): (
        "a function name in the ops' math text, set upright in LaTeX (typesetting)"
    ),
    ("graphgen/views/explain.py", "sum_to_shape"): (
        "a function name in the ops' math text, set upright in LaTeX (typesetting)"
    ),
    ("graphgen/views/explain.py", "tanh"): (
        "a function name in the ops' math text, set upright in LaTeX (typesetting)"
    ),
    ("graphgen/views/explain.py", "transpose"): (
        "a function name in the ops' math text, set upright in LaTeX (typesetting)"
    ),
    ("graphgen/views/explain.py", "zeros"): (
        "a function name in the ops' math text, set upright in LaTeX (typesetting)"
    ),
}


def _op_literals():
    """(file, op name) of each comparison of an op name with a string literal outside
    ops/, and of each literal collection of op names (a name set is an op fact)."""
    names = set(ops.REGISTRY)
    found = set()
    for module, (path, _) in MODULES.items():
        if module == "graphgen.ops" or module.startswith("graphgen.ops."):
            continue
        rel = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    if isinstance(side, ast.Constant) and side.value in names:
                        found.add((rel, side.value))
                    if isinstance(side, (ast.Tuple, ast.List, ast.Set)):
                        for e in side.elts:
                            if isinstance(e, ast.Constant) and e.value in names:
                                found.add((rel, e.value))
            if isinstance(node, (ast.Set, ast.Tuple, ast.List)):
                strs = [e.value for e in node.elts if isinstance(e, ast.Constant)]
                hits = [s for s in strs if s in names]
                if len(hits) >= 2 and len(strs) == len(node.elts):
                    found.update((rel, s) for s in hits)
    return found


def test_no_op_name_literals_outside_ops():
    found = _op_literals()
    new = sorted(found - set(ALLOWED))
    assert not new, (
        "op names compared to string literals outside graphgen/ops (declare the fact "
        "on the Op, or allow-list it with a reason):\n"
        + "\n".join(f"  {f}: {op!r}" for f, op in new)
    )
    stale = sorted(set(ALLOWED) - found)
    assert not stale, f"allow-list entries no longer needed: {stale}"
