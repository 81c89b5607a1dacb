"""The Numba backend's modules are formatted: ``ruff format`` leaves them unchanged.

Every spec of benchmarks/specs/ and examples/ (and the LeNet ONNX example), in float64
and float32, with whole-function kernels where the backend picks them (``whole=None``)
and without (``whole=False``), and with the ``parallel`` and ``fastmath`` options:
generated only, not compiled. The long cases: W4's kernels with 61 parameters and
returns, W5's 16-way fan-out sum, kernel calls too long for a line, kernels shared under
a new name (lenet), the accumulators' ``acc[k, i] += a * b``.
"""

from __future__ import annotations

import re

import pytest
from conftest import EXAMPLES, REPO, VENV_BIN, build_graph
from test_codegen import hostile_graph, many_params_graph, ruff_diff

import graphgen
from graphgen.codegen import layout

SPECS = sorted((REPO / "benchmarks" / "specs").glob("*.yaml")) + sorted(
    EXAMPLES.glob("*.yaml")
)
OPTIONS = {
    "auto": {},
    "no_whole": {"whole": False},
    "parallel": {"parallel": True},
    "fastmath": {"fastmath": True},
}

pytestmark = pytest.mark.skipif(
    not (VENV_BIN / "ruff").exists(), reason="ruff not installed"
)


def assert_formatted(text, what):
    diff = ruff_diff(text)
    if diff.strip():
        pytest.fail(f"ruff format would change the Numba module of {what}:\n{diff}")


@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("spec", SPECS, ids=[p.stem for p in SPECS])
def test_numba_module_is_ruff_formatted(spec, dtype, options):
    G = graphgen.load(spec)
    text = graphgen.generate(G, backend="numba", dtype=dtype, **OPTIONS[options])
    assert_formatted(text, f"{spec.name} ({dtype}, {options})")


def long_names_graph():
    """40-character names (the longest graphgen makes) on a 4-D fused group: kernel
    lines, outputs, accumulators and DTYPE(...) conversions too long for a line."""
    long = "a_very_long_tensor_name_that_runs_on_and_on_"
    arrays = {
        long + "x": ("input", ("batch", 3, 4, 5)),
        long + "w": ("param", (3, 1, 1)),
        long + "b": ("param", (1, 4, 1)),
    }
    nodes = [
        (long + "m", "mul", [long + "x", long + "w"], {}),
        (long + "a", "add", [long + "m", long + "b"], {}),
        (long + "t", "tanh", [long + "a"], {}),
        (long + "s", "sigmoid", [long + "t"], {}),
        (long + "J", "mean", [long + "s"], {}),
    ]
    return build_graph(arrays, nodes, loss=long + "J", name="long")


@pytest.mark.parametrize("options", list(OPTIONS) + ["whole"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("graph", ["long_names", "hostile", "many_params"])
def test_numba_module_with_long_names_is_ruff_formatted(graph, dtype, options):
    G = {
        "long_names": long_names_graph,
        "hostile": hostile_graph,
        "many_params": many_params_graph,
    }[graph]()
    kw = {"whole": True} if options == "whole" else OPTIONS[options]
    text = graphgen.generate(G, backend="numba", dtype=dtype, **kw)
    assert_formatted(text, f"{graph} ({dtype}, {options})")


@pytest.mark.parametrize("whole", [None, False])
@pytest.mark.parametrize("loss", [None, "softmax_cross_entropy"])
def test_numba_module_of_an_onnx_model_is_ruff_formatted(loss, whole):
    pytest.importorskip("onnx")
    kw = {"loss": loss, "labels": "y"} if loss else {"vjp": False}
    G = graphgen.load(EXAMPLES / "lenet.onnx", **kw)
    assert_formatted(
        graphgen.generate(G, backend="numba", whole=whole), f"lenet.onnx ({loss})"
    )


@pytest.mark.parametrize("name", ["inception_v2", "resnet50"])
def test_numba_module_of_a_light_onnx_model_is_ruff_formatted(name):
    # long ONNX tensor names in kernels: parameters, accumulators, outputs, returns
    from test_onnx_models import model_path

    G = graphgen.load(model_path(name), loss="softmax_cross_entropy", labels="y")
    assert_formatted(graphgen.generate(G, backend="numba"), name)


# statements (their indentation: the depth) whose values are too long for a line, each
# the way graphgen writes it on one line: layout.value must lay them out as ruff does
LONG = [
    "    h = aaaaaaaaaaaaaaaaaaaaaa + bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb + cc[1, iiiiiii] + dd",
    "    hhhhhhhhhhhhhhhhhhhhhhhhhhhhhh = aaaaaaaaaaaaaaaaaaaaaa * bbbbbbbbbbbbbbbbbbbbb * cc",
    "    hhhhhhhhhhhhhhhhhhhhhhhhhhhhhh = aaaaaaaaaaaaaaaaaaaaaa + cccccccccccccccccccc[1, ii]",
    "    hhhhhhhhhhhhhhhhhhhhhhhhhhhhhh = aaaaaaaaaaaaaaaaaaaa + np.maximum(bbbbbbbbbbbbbbb, cc)",
    "    hhhhhhhhhhhhhhhhhhhhhhhh = aaaaaaaaaaaaaaaaaaaaaa + (cccccccccccccccccccc * iiiiiiiiii)",
    "    hhhhhhhhhhhhhhhhhh = aaaaaaaaaaaaaaaaaa[i0, i1] * (bbbbbbbbbbbbbbbbbbbbbbb - cc) + (d + e)",
    "    xxxxxxxxxxxxxxxxxxxxxxxxxxxxx = f(aaaaaaaaaaaaaaaaaaaaaaaaa) * bbbbbbbbbbbbbbbbbbbbbbbbb",
    "    xxxxxxxxxxxxxxxxxxxxxxxxxxxxx = aaaaaaaaaaaaaaaaaaaaaaaaaa if bbbbbbbbbbbbbbbbb > 0 else c",
    "    xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx = -np.maximum(aaaaaaaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbb)",
    "    xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx = bbbbbbbbbbbbbbbbbbbb[1, iiiiiiiiii]",
    "    xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx = yyyyyyyyyyyyyyyyyyyyyyyyyy",
    "    xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx = (aaaaaaaaaaaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbbbbbbbb)",
    "    xxxxxxxxxxxxxxxxx = np.zeros((aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbb, *cccccccccc), dtype=DTYPE)",
    "    conv2_Conv_bias_bar = conv2_Conv_bar.sum(axis=(0, 2, 3), keepdims=True).reshape((16, 1))",
    "            acc[2, i1] += aaaaaaaaaaaaaaaaaaaaaaaaaaaaa * bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb[i0, i1]",
    "            acc[2, i1] += (u30_bar * rows[57, i1])",
    "                    r5 = (r6[0, i1, i2, i3] * t13[0, i1, i2, i3]) - ((r5[0, i1, i2, i3] * t14[0, i1]) * 3e-05)",
    "                        t1 = ((a0[0, i1, i2, i3] * a1[0, i1, i2, i3]) - ((a2[0, i1, i2] * a3[0, i1]) * 3e-05)) * a4[0, i1]",
    "                    t2_2 = (r2[0, i1, i2, i3] * t69[0, i1, i2, i3]) * np.float32(3.0000000000000004e-05)",
    "    r = 8.33e-03 + z * (-1.98412698298579493134e-04 + z * (2.75573137070700676789e-06 + z * (-2.50507602534068634195e-08 + z * 1.58969099521155010221e-10)))",
]


def test_layout_of_long_values_is_ruffs():
    lines = []
    for k, statement in enumerate(LONG):
        depth = len(statement) - len(statement.lstrip())
        head, op, value = re.match(r"(.*?)( \+?= )(.*)", statement.strip()).groups()
        head += op
        laid = layout.value(value, depth + len(head), depth)
        lines.append(f"def f{k}():")
        lines += [" " * d + "for i in x:" for d in range(4, depth, 4)]
        lines += [" " * depth + head + laid, "", ""]
    assert_formatted("\n".join(lines).rstrip("\n") + "\n", "the long statements")
