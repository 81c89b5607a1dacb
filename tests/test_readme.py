"""The README stays true: its op table, its Python example and its generated-code sample."""

import re
import subprocess
import sys

import numpy as np
from conftest import REPO

import graphgen
from graphgen import ops
from graphgen.cli import ops_markdown

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_op_table_is_the_registry():
    table = ops_markdown([op for op in ops.REGISTRY.values() if not op.internal])
    assert table in README, "regenerate it with `graphgen ops --markdown`"


def test_python_graph_example_runs():
    block = README.split("### The graph in Python", 1)[1].split("```python", 1)[1]
    code = block.split("```", 1)[0]
    scope = {}
    exec(code, scope)  # noqa: S102 - the README's own example
    x = np.array([1.0, -2.0, 3.0])
    loss, grads = scope["model"].value_and_grad(x=x)
    assert loss == 14.0
    np.testing.assert_array_equal(grads["x"], 2 * x)


def test_generated_code_sample_is_verbatim():
    block = README.split("exactly as generated.", 1)[1].split("```python\n", 1)[1]
    sample = block.split("    ...\n```", 1)[0]
    source = graphgen.generate(graphgen.load(REPO / "examples" / "tiny.yaml"))
    assert sample in source


def test_cli_table_lists_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "graphgen", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    commands = re.findall(r"^    ([a-z]+) {2,}", out, flags=re.MULTILINE)
    assert {"compile", "check", "ops", "render", "explain"} <= set(commands), out
    for command in commands:
        assert f"`graphgen {command}" in README, command
