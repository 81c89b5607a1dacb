"""Bad spec input: a correct result or exactly one clear error line, never a traceback or
a hang.

One regression test per class of the hardening issue (spec side): each reproducer ends
in exit status 2 and one ``graphgen: error: FILE[:LINE]: [node 'x': ]...`` line that
names the file and the node or key at fault, or in a correct result.
"""

from __future__ import annotations

import collections
import io
import json
import random
import time

import networkx as nx
import numpy as np
import pytest
from conftest import run_graphgen

import graphgen
from graphgen import dims
from graphgen import graph as g
from graphgen.codegen import layout
from graphgen.errors import DimensionError


def error_line(cli, *argv):
    """Run the CLI in-process; assert exit 2 and one ``graphgen: error:`` line."""
    status, out, err = cli(*argv)
    assert status == 2, (status, err)
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got:\n{err}"
    assert lines[0].startswith("graphgen: error: "), lines[0]
    return lines[0]


# ---------------------------------------------------- 1. one very long line: linear


def test_add_args_is_add_edge_arg_in_linear_time():
    """``graph.add_args`` records what ``add_edge_arg`` does argument by argument (the
    same ``pos`` tuples, the edges in the order their sources first appear)."""
    rng = random.Random(0)
    for _ in range(200):
        args = [rng.choice("abcd") for _ in range(rng.randint(0, 12))]
        one, many = nx.DiGraph(), nx.DiGraph()
        for i, a in enumerate(args):
            g.add_edge_arg(one, a, "y", i)
        g.add_args(many, "y", args)
        assert list(one.edges(data=True)) == list(many.edges(data=True))


def test_a_spec_of_one_huge_line_loads_in_linear_time(tmp_path):
    """An ``add_n`` of 200,000 arguments on one line: before, each repeat copied the
    positions recorded so far (quadratic: a hang)."""
    n = 200_000
    path = tmp_path / "long.yaml"
    path.write_text(
        "inputs: {x: [3]}\nnodes: {s: {op: add_n, args: ["
        + ", ".join(["x"] * n)
        + ", 1.5]}, J: {op: sum, args: [s]}}\nloss: J\nwrt: [x]\n"
    )
    start = time.perf_counter()
    G = graphgen.load(path)
    assert time.perf_counter() - start < 60
    assert G.edges["x", "s"]["pos"] == tuple(range(n))
    (const,) = [p for p in G.predecessors("s") if p != "x"]
    assert G.edges[const, "s"]["pos"] == (n,)


def test_a_garbage_file_of_one_huge_line(cli, tmp_path):
    rng = random.Random(1)
    path = tmp_path / "garbage.yaml"
    path.write_text("".join(rng.choice("ab:,[]{} x-") for _ in range(1_000_000)))
    line = error_line(cli, "compile", path)
    assert line.startswith(f"graphgen: error: {path}:1: malformed YAML: ")
    assert len(line) < 400


# -------------------------------------------- 2. deep input: bounded, no recursion


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("deep.json", "[" * 100_000 + "]" * 100_000, 1),
        ("deep2.json", '{"nodes":\n' + '{"a":' * 5_000 + "1" + "}" * 5_001, 2),
        ("deep.yaml", "nodes: " + "[" * 100_000 + "]" * 100_000 + "\n", 1),
        ("shallow.yaml", "name: x\nnodes: " + "[" * 500 + "]" * 500 + "\n", 2),
        ("dashes.yaml", "nodes:\n  a:\n    " + "- " * 2_000 + "x\n", 3),
        ("dashes2.yaml", "nodes:\n  a:\n    " + "- " * 200 + "x\n", 3),
    ],
)
def test_deeply_nested_spec_is_refused(cli, tmp_path, name, text, line):
    path = tmp_path / name
    path.write_text(text)
    got = error_line(cli, "compile", path)
    assert got == f"graphgen: error: {path}:{line}: nested more than 64 levels deep"


def test_deeply_nested_attribute_names_the_node(cli, tmp_path):
    """Nesting a schema does not look into (an op attribute) is bounded too."""
    value = "[" * 100 + "1" + "]" * 100
    path = tmp_path / "net.json"
    path.write_text(
        '{"inputs": {"x": [3]}, "nodes": {"c": {"op": "constant", "value": '
        + value
        + ', "shape": [3]}}, "outputs": ["c"]}'
    )
    line = error_line(cli, "compile", path)
    assert line.startswith(f"graphgen: error: {path}: node 'c': key value/0/0/0/")
    assert line.endswith(": nested more than 64 levels deep")


SIZE_SPEC = """\
inputs: {{x: [batch, 3]}}
nodes:
  s: {{op: slice, args: [x], stop: '{expr}'}}
  J: {{op: sum, args: [s]}}
loss: J
wrt: [x]
"""


@pytest.mark.parametrize(
    ("expr", "why"),
    [
        ("(" * 5_000 + "batch" + ")" * 5_000, "nested more than 100 levels deep"),
        ("-" * 5_000 + "batch", "nested more than 100 levels deep"),
        (" + ".join(["batch"] * 5_000), "more than 1000 operators"),
        ("(a + b + c + d + e + f + g + h)" + " * (a + b + c + d + e)" * 20, "terms"),
        ("batch/2", "expected '+', '-', '*' or ')', got '/'"),
        ("0x10", "got 'x10'"),
        ("batch # comment", "got '#'"),
    ],
)
def test_dimension_expression_past_the_bounds(cli, tmp_path, expr, why):
    """``dims.poly`` reads a size with an iterative parser of its own, whose bounds
    give an error naming the node (before: RecursionError, or code that does not run)."""
    path = tmp_path / "net.yaml"
    path.write_text(SIZE_SPEC.format(expr=expr))
    line = error_line(cli, "compile", path)
    assert line.startswith(f"graphgen: error: {path}:3: node 's': slice: ")
    assert " is not a dimension expression: " in line
    assert why in line
    assert len(line) < 700


def test_dimension_parser_agrees_with_python_on_what_it_accepts():
    """On sums, differences and products of names and decimal numbers the parser gives
    Python's value; everything else it refuses with a DimensionError (a ValueError)."""
    rng = random.Random(2)
    tokens = ["a", "b", "batch", "3", "0", "12", "+", "-", "*", "(", ")", " "]
    for _ in range(20_000):
        text = "".join(rng.choice(tokens) for _ in range(rng.randint(1, 12)))
        try:
            p = dims.poly(text)
        except DimensionError:
            continue
        env = collections.defaultdict(lambda: 3, a=7, b=-5, batch=11)
        assert dims.value(text, env) == eval(text.strip(), {}, env), text
        assert dims.poly(dims.from_poly(p)) == p
    with dims.recording() as seen:
        dims.poly("n - n + batch")
    assert seen == {"n", "batch"}


def test_layout_follows_deep_code_without_recursion():
    """codegen/layout.py's parser and its ``ast`` uses have a bounded depth: deeper code
    is left on one line as it is, or parenthesized."""
    for expr in (
        "f(" * 3_000 + "x" + ")" * 3_000,
        "-" * 5_000 + "x",
        "not " * 3_000 + "x",
        " + ".join(f"x{i}" for i in range(5_000)),
    ):
        assert layout.value(expr, 8).replace("\n", "").replace(" ", "") != ""
        assert layout.wrap(expr) in (expr, f"({expr})")
        assert layout.power_operand(expr) is False
        layout.call_lines(expr, 8)


def test_add_n_of_5000_arguments_compiles(tmp_path):
    n = 5_000
    names = [f"x{i}" for i in range(n)]
    G = nx.DiGraph(name="wide", outputs=["J"], loss="J", wrt=["x0"])
    for name in names:
        G.add_node(name, kind="input", shape=(2,), dtype="float64")
    G.add_node("s", kind="op", op="add_n", attrs={})
    g.add_args(G, "s", names)
    G.add_node("J", kind="op", op="sum", attrs={})
    G.add_edge("s", "J", pos=(0,))
    model = graphgen.compile(G)
    arrays = {name: np.full(2, 1.0) for name in names}
    loss, grads = model.value_and_grad(**arrays)
    assert loss == 2.0 * n
    assert grads["x0"].tolist() == [1.0, 1.0]


# --------------------------------------------------- 3. files that cannot be read


def test_unreadable_files_get_one_line_naming_them(cli, tmp_path):
    binary = tmp_path / "model.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: x\n# café\nnodes: {}\n".encode("latin-1"))
    cases = [
        (binary, f"{binary}:2: cannot read spec: not UTF-8 text (byte 0x80 at offset"),
        (latin, f"{latin}:2: cannot read spec: not UTF-8 text (byte 0xe9 at offset"),
        (tmp_path, f"{tmp_path}: cannot read spec: Is a directory"),
        (
            tmp_path / "nope.yaml",
            f"{tmp_path / 'nope.yaml'}: cannot read spec: No such",
        ),
    ]
    for path, want in cases:
        for command in ("compile", "check", "render", "explain"):
            extra = {"render": ["-o", tmp_path / "x.dot"], "explain": ["--wrt", "W"]}
            line = error_line(cli, command, path, *extra.get(command, []))
            assert line.startswith(f"graphgen: error: {want}"), line


@pytest.mark.parametrize(
    ("name", "text", "want"),
    [
        (
            "nul.yaml",
            "nodes:\n  a: {op: sum}\x00\n",
            ":2: malformed YAML: unacceptable",
        ),
        ("nul.json", '{"nodes":\n {"a": \x00}}', ":2: malformed JSON: "),
        ("tag.yaml", "nodes: !!python/object {}\n", ":1: malformed YAML: could not"),
        ("key.yaml", "? [a]\n: 1\nnodes: {}\n", ":1: malformed YAML: found unhashable"),
    ],
)
def test_text_that_is_not_a_spec(cli, tmp_path, name, text, want):
    path = tmp_path / name
    path.write_text(text)
    assert error_line(cli, "compile", path).startswith(f"graphgen: error: {path}{want}")


def test_binary_file_through_a_real_process(tmp_path):
    path = tmp_path / "model.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    proc = run_graphgen("compile", path.name, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.decode().splitlines() == [
        (
            "graphgen: error: model.json:1: cannot read spec: not UTF-8 text (byte "
            "0x89 at offset 0); a spec is a UTF-8 text file"
        )
    ]


def test_a_byte_order_mark_is_read_as_utf8(tmp_path):
    path = tmp_path / "tiny.json"
    spec = {"inputs": {"x": [2]}, "nodes": {"J": {"op": "sum", "args": ["x"]}}}
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({**spec, "loss": "J"}).encode())
    assert graphgen.load(path).graph["loss"] == "J"


# ----------------------------------------------- 4. names that are not valid text


def test_lone_surrogate_in_a_name_is_refused_at_load(cli, tmp_path):
    path = tmp_path / "net.json"
    path.write_text(
        '{"inputs": {"x": [3]}, "nodes": {"\\ud800": {"op": "sum", "args": ["x"]}}, '
        '"loss": "\\ud800", "wrt": ["x"]}'
    )
    for command, extra in [("compile", []), ("render", ["-o", tmp_path / "n.svg"])]:
        line = error_line(cli, command, path, *extra)
        assert line == (
            f"graphgen: error: {path}: node '\\ud800': the name is not valid text: it "
            "holds the lone surrogate \\ud800 (names and values must be Unicode "
            "characters)"
        )
    path.write_text(
        '{"inputs": {"x": [3]}, "nodes": {"s": {"op": "sum", "args": ["x\\udfff"]}}, '
        '"loss": "s"}'
    )
    line = error_line(cli, "compile", path)
    assert line.startswith(f"graphgen: error: {path}: node 's': key args/0: ")


# ------------------------------------------------- 5. weights files that are damaged

WEIGHTS_SPEC = """\
weights: {name}
inputs: {{x: [3]}}
params: {{W: {{shape: [3], init: weights}}}}
nodes:
  m: {{op: mul, args: [x, W]}}
  J: {{op: sum, args: [m]}}
loss: J
"""


def _npz(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "not a readable .npz archive: No data left in file"),
        (_npz(W=np.ones(3))[:100], "not a readable .npz archive: File is not a zip"),
        (_npz(W=np.ones(3))[:-30], "not a readable .npz archive: "),
        (b"\x93NUMPY" + b"\x00" * 20, "not a readable .npz archive: "),
        (_npz(W=np.array(["a", "b", "c"])), "its array 'W' holds <U1, not numbers"),
        (None, "Is a directory"),
    ],
)
def test_damaged_weights_file_is_named(cli, tmp_path, content, why):
    weights = tmp_path / "w.npz"
    if content is None:
        weights.mkdir()
    else:
        weights.write_bytes(content)
    path = tmp_path / "net.yaml"
    path.write_text(WEIGHTS_SPEC.format(name="w.npz"))
    line = error_line(cli, "compile", path)
    assert line.startswith(f"graphgen: error: {path}:1: weights: cannot read 'w.npz' (")
    assert why in line
    assert line.endswith("); expected an .npz file beside the spec")


def test_damaged_weights_never_escape_as_another_exception(tmp_path):
    good = _npz(W=np.arange(3.0))
    rng = random.Random(3)
    path = tmp_path / "net.yaml"
    path.write_text(WEIGHTS_SPEC.format(name="w.npz"))
    for _ in range(150):
        blob = bytearray(good[: rng.randint(0, len(good))])
        if blob and rng.random() < 0.5:
            blob[rng.randrange(len(blob))] ^= 0xFF
        (tmp_path / "w.npz").write_bytes(bytes(blob))
        try:
            graphgen.load(path)
        except graphgen.GraphgenError as e:
            assert "weights: cannot read 'w.npz'" in str(e)


# --------------------------------------------- 6. sizes no input declares

SLICE_SPEC = """\
inputs: {{x: [batch, 3]}}
nodes:
  s: {{op: slice, args: [x], axis: 0, start: {start}, stop: {stop}}}
  J: {{op: sum, args: [s]}}
loss: J
wrt: [x]
"""


@pytest.mark.parametrize(
    ("start", "stop", "key"),
    [(0, "n", "stop"), ("n", "n + 1", "start"), (0, "'batch - n*n'", "stop")],
)
def test_undeclared_size_in_an_attribute_is_refused_at_load(
    cli, tmp_path, start, stop, key
):
    """Before: compile wrote a module that reads an unbound ``n``; check died with
    NameError."""
    path = tmp_path / "net.yaml"
    path.write_text(SLICE_SPEC.format(start=start, stop=stop))
    want = (
        f"graphgen: error: {path}:3: node 's': attribute {key!r} names the size 'n', "
        "which no input's shape declares (declared sizes: batch); the module learns "
        "every size from an input array"
    )
    for command in ("compile", "check"):
        assert error_line(cli, command, path) == want


def test_declared_sizes_in_attributes_still_compile(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text(SLICE_SPEC.format(start=1, stop="batch - 1"))
    G = graphgen.load(path)
    assert G.nodes["s"]["shape"] == ("batch - 2", 3)


# --------------------------------------------- 7. nothing to compute: say which keys


def test_spec_without_outputs_or_loss_names_the_keys(cli, tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text("inputs: {x: [3]}\nnodes: {m: {op: sum, args: [x]}}\nvjp: true\n")
    assert error_line(cli, "compile", path) == (
        f"graphgen: error: {path}: no key 'outputs' and no key 'loss': the module "
        "would compute nothing; add 'outputs: [NODE, ...]' (the nodes forward() "
        "returns) or 'loss: NODE' (the scalar node to differentiate)"
    )
    path.write_text("inputs: {x: [3]}\nnodes: {m: {op: sum, args: [x]}}\noutputs: []\n")
    line = error_line(cli, "compile", path)
    assert line.startswith(f"graphgen: error: {path}:3: key outputs: an empty list, ")


# ----------------------------------------------------- 8. pathological sizes


def test_a_name_of_a_megabyte_compiles(cli, tmp_path):
    name = "a" * (1 << 20)
    path = tmp_path / "net.json"
    spec = {
        "inputs": {"x": [3]},
        "nodes": {
            name: {"op": "sigmoid", "args": ["x"]},
            "J": {"op": "sum", "args": [name]},
        },
        "loss": "J",
    }
    path.write_text(json.dumps(spec))
    status, _, err = cli("compile", path, "-o", tmp_path / "net.py")
    assert status == 0, err
    model = graphgen.compile(graphgen.load(path))
    loss, _ = model.value_and_grad(x=np.zeros(3))
    assert loss == 1.5


def test_a_name_of_a_megabyte_in_an_error_is_shortened(cli, tmp_path):
    name = "a" * (1 << 20)
    path = tmp_path / "net.json"
    spec = {"inputs": {"x": [3]}, "nodes": {"J": {"op": "sum", "args": [name]}}}
    path.write_text(json.dumps({**spec, "loss": "J"}))
    line = error_line(cli, "compile", path)
    assert line.startswith(f"graphgen: error: {path}: node 'J': argument 0 names 'aaa")
    assert "...[1048379 characters]..." in line
    assert line.endswith("', which is not an input, param or node")
    assert len(line) < 500


def test_a_long_yaml_key_says_what_limits_it(cli, tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text("nodes:\n  " + "a" * 2000 + ": {op: sum, args: [x]}\n")
    line = error_line(cli, "compile", path)
    assert line.startswith(f"graphgen: error: {path}:2: malformed YAML: ")
    assert "at most 1024 characters" in line


def test_yaml_aliases_cannot_multiply_the_spec(cli, tmp_path):
    """ "Billion laughs": nine levels of nine aliases would be 387 million values."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    path = tmp_path / "lol.yaml"
    path.write_text("\n".join(lines) + "\nnodes: {}\n")
    start = time.perf_counter()
    line = error_line(cli, "compile", path)
    assert time.perf_counter() - start < 30
    assert line.startswith(f"graphgen: error: {path}:")
    assert "aliases expand it more than 10-fold" in line


def test_many_nodes_load_in_time_proportional_to_their_number(tmp_path):
    """Reading, validating and shape inference stay linear: 40,000 nodes take about
    four times as long as 10,000 (bounded loosely: machines are noisy)."""

    def load_time(n):
        lines = ["inputs: {x: [batch, 3]}", "nodes:"]
        prev = "x"
        for i in range(n):
            lines.append(
                f"  h{i}: {{op: {'sigmoid' if i % 2 else 'tanh'}, args: [{prev}]}}"
            )
            prev = f"h{i}"
        lines += [f"  J: {{op: sum, args: [{prev}]}}", "loss: J", "wrt: [x]"]
        path = tmp_path / f"big{n}.yaml"
        path.write_text("\n".join(lines) + "\n")
        start = time.perf_counter()
        G = graphgen.load(path)
        assert len(G) == n + 2
        return time.perf_counter() - start

    small = min(load_time(10_000) for _ in range(2))
    big = load_time(40_000)
    assert big < 12 * small + 1.0, (small, big)


# ------------------------------------------- 6. YAML values that are no name or number


@pytest.mark.parametrize(
    "key, word",
    [("~", "~ (null)"), ("null", "~ (null)"), ("7", "'7'"), ("true", "true")],
)
def test_a_node_name_yaml_reads_as_no_text_is_refused(cli, tmp_path, key, word):
    """An unquoted ``~``, number or boolean as a node name: before, ``~`` crashed in
    networkx ('None cannot be a node') and ``7`` failed later, at its first use."""
    path = tmp_path / "net.yaml"
    path.write_text(
        "inputs: {x: [3]}\nnodes:\n"
        f"  {key}: {{op: neg, args: [x]}}\n"
        "  J: {op: sum, args: [x]}\nloss: J\n"
    )
    line = error_line(cli, "compile", path)
    assert line == (
        f"graphgen: error: {path}:2: key nodes: the name {word} is not text: YAML reads "
        "an unquoted number, ~, null, true, false or date as such a value; quote it"
    )


def test_a_number_argument_too_large_for_a_float_is_refused(cli, tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text(
        "inputs: {x: [3]}\nnodes:\n"
        f"  m: {{op: mul, args: [x, 1{'0' * 400}]}}\n"
        "  J: {op: sum, args: [m]}\nloss: J\n"
    )
    line = error_line(cli, "compile", path)
    assert line == (
        f"graphgen: error: {path}:3: node 'm': argument 1 is a number too large for a "
        "float (401 digits; the largest float64 is about 1.8e308)"
    )


@pytest.mark.parametrize("section", ["inputs", "params"])
def test_a_size_named_by_a_keyword_names_the_file_and_the_array(cli, tmp_path, section):
    """Before, the error line named neither the file nor the input."""
    path = tmp_path / "net.yaml"
    path.write_text(
        "inputs:\n  z: [class, 3]\nnodes:\n  J: {op: sum, args: [z]}\nloss: J\n"
    )
    line = error_line(cli, "compile", path)
    assert line == (
        f"graphgen: error: {path}:2: input 'z': 'class' is not a dimension "
        "expression: 'class' is a Python keyword, not a size"
    )


@pytest.mark.parametrize(
    "op, number, value",
    [("sum", "-.inf", -np.inf), ("sum", ".inf", np.inf), ("log", "-1.0", np.nan)],
)
def test_ops_on_a_non_finite_constant_fold(tmp_path, op, number, value):
    """``sum(-inf)``: constant folding skipped a result that is not finite, and the code
    called ``(-np.inf).sum()`` (AttributeError at run time)."""
    path = tmp_path / "net.yaml"
    path.write_text(
        "inputs: {x: [batch, 2]}\nnodes:\n"
        f"  c: {{op: {op}, args: [{number}]}}\n"
        "  m: {op: mul, args: [x, c]}\n  J: {op: sum, args: [m]}\nloss: J\nwrt: [x]\n"
    )
    mod = graphgen.compile(graphgen.load(path))
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    with np.errstate(all="ignore"):
        loss, grads = mod.value_and_grad(x=x)
        np.testing.assert_array_equal(loss, (x * value).sum())
        np.testing.assert_array_equal(grads["x"], np.full_like(x, value))


@pytest.mark.parametrize(
    "node, says",
    [
        ("{op: softmax, args: [x]}", "softmax: a softmax along axis 1 of (batch, 0)"),
        ("{op: log_softmax, args: [x]}", "log_softmax: a softmax along axis 1"),
        ("{op: logsumexp, args: [x], axis: 1}", "the logsumexp along axis 1"),
        ("{op: max, args: [x]}", "max: the max along axis 1 of (batch, 0) is over"),
    ],
)
def test_a_maximum_over_an_axis_of_size_0_is_refused(cli, tmp_path, node, says):
    """It compiled, and NumPy raised 'zero-size array to reduction operation maximum'
    from inside the module at run time."""
    path = tmp_path / "net.yaml"
    path.write_text(
        f"inputs: {{x: [batch, 0]}}\nnodes:\n  p: {node}\n  J: {{op: sum, args: [p]}}\n"
        "loss: J\nwrt: [x]\n"
    )
    line = error_line(cli, "compile", path)
    assert line.startswith(f"graphgen: error: {path}:3: node 'p': "), line
    assert says in line and "(that axis has size 0)" in line, line


def test_a_sum_over_an_axis_of_size_0_is_zero(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text(
        "inputs: {x: [batch, 0]}\nnodes:\n  p: {op: exp, args: [x]}\n"
        "  J: {op: sum, args: [p]}\nloss: J\nwrt: [x]\n"
    )
    loss, grads = graphgen.compile(graphgen.load(path)).value_and_grad(
        x=np.ones((2, 0))
    )
    assert loss == 0.0 and grads["x"].shape == (2, 0)


@pytest.mark.parametrize(
    "outputs, wrt, line, says",
    [("[y, y]", "[W]", 5, "outputs: 'y'"), ("[y]", "[W, W]", 6, "wrt: 'W'")],
)
def test_a_name_listed_twice_in_outputs_or_wrt_is_refused(
    cli, tmp_path, outputs, wrt, line, says
):
    """``outputs: [y, y]`` built a vjp whose two cotangents of y were added up wrongly."""
    path = tmp_path / "net.yaml"
    path.write_text(
        "inputs: {x: [2]}\nparams: {W: [2]}\nnodes:\n  y: {op: mul, args: [x, W]}\n"
        f"outputs: {outputs}\nwrt: {wrt}\nvjp: true\n"
    )
    got = error_line(cli, "compile", path)
    assert got == f"graphgen: error: {path}:{line}: {says} is listed twice"
