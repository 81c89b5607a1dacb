"""The generated code: deterministic, formatted, safe against hostile names, standalone."""

from __future__ import annotations

import ast
import builtins
import io
import json
import keyword
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tokenize

import numpy as np
import pytest
from conftest import (
    EXAMPLE_SPECS,
    REPO,
    VENV_BIN,
    assert_grad_close,
    build_graph,
    clean_env,
    fd_gradient,
    run_graphgen,
)

import graphgen
from graphgen.check import random_arrays

EXAMPLE_IDS = [p.stem for p in EXAMPLE_SPECS]


def generate(path):
    return graphgen.generate(graphgen.load(path))


@pytest.fixture(scope="module")
def example_sources():
    return {p.stem: generate(p) for p in EXAMPLE_SPECS}


def test_examples_exist():
    assert {"tiny", "fanout", "mlp"} <= set(EXAMPLE_IDS)


# ---------------------------------------------------------------------- determinism


@pytest.mark.parametrize("spec", EXAMPLE_SPECS, ids=EXAMPLE_IDS)
def test_generating_twice_gives_identical_bytes(spec, example_sources):
    assert generate(spec) == example_sources[spec.stem]
    assert (
        graphgen.generate(graphgen.load(spec)).encode()
        == example_sources[spec.stem].encode()
    )


@pytest.mark.parametrize("spec", EXAMPLE_SPECS, ids=EXAMPLE_IDS)
def test_output_is_identical_across_hash_seeds_and_processes(spec, example_sources):
    outputs = {}
    for seed in ("0", "1", "random"):
        proc = run_graphgen("compile", spec, env=clean_env(PYTHONHASHSEED=seed))
        assert proc.returncode == 0, proc.stderr.decode()
        outputs[seed] = proc.stdout
    assert outputs["0"] == outputs["1"] == outputs["random"]
    assert outputs["0"] == example_sources[spec.stem].encode("utf-8")


@pytest.mark.parametrize("spec", EXAMPLE_SPECS, ids=EXAMPLE_IDS)
def test_output_does_not_depend_on_where_the_spec_lives(
    spec, tmp_path, example_sources
):
    copy = tmp_path / "elsewhere" / spec.name
    copy.parent.mkdir()
    shutil.copy(spec, copy)
    proc = run_graphgen("compile", copy, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    text = proc.stdout.decode("utf-8")
    assert text == example_sources[spec.stem]
    assert str(tmp_path) not in text
    assert "/work" not in text and str(REPO) not in text
    assert os.path.expanduser("~") not in text


@pytest.mark.parametrize("name", EXAMPLE_IDS)
def test_output_parses_and_has_no_timestamps(name, example_sources):
    text = example_sources[name]
    ast.parse(text)
    assert not re.search(r"\b(19|20)\d\d-\d\d-\d\d\b", text), "a date in generated code"
    assert not re.search(r"\b\d\d:\d\d(:\d\d)?\b", text), (
        "a time of day in generated code"
    )
    assert graphgen.__version__ in text  # the version is fine: it is part of the input


# ------------------------------------------------------------------------- formatting


def ruff_diff(text):
    proc = subprocess.run(
        [str(VENV_BIN / "ruff"), "format", "--diff", "-"],
        input=text.encode("utf-8"),
        capture_output=True,
        check=False,
        cwd=REPO,  # the project's ruff settings (line length 88)
        timeout=60,
    )
    assert proc.returncode in (0, 1), proc.stderr.decode()
    return proc.stdout.decode("utf-8") + proc.stderr.decode("utf-8") * (
        proc.returncode != 0
    )


@pytest.mark.parametrize("name", EXAMPLE_IDS)
def test_examples_are_ruff_formatted(name, example_sources):
    diff = ruff_diff(example_sources[name])
    if diff.strip():
        pytest.fail(f"ruff format would change the generated {name} module:\n{diff}")


def many_params_graph():
    """Seven params with long names: the return statement must wrap like ruff wraps it."""
    arrays = {"x": ("input", ("batch", 3))}
    nodes, prev = [], "x"
    for i in range(7):
        p = f"layer_{i}_bias_parameter"
        arrays[p] = ("param", (3,))
        nodes.append((f"h{i}", "add", [prev, p], {}))
        nodes.append((f"t{i}", "tanh", [f"h{i}"], {}))
        prev = f"t{i}"
    nodes.append(("J", "mean", [prev], {}))
    return build_graph(arrays, nodes, loss="J", name="many")


def test_module_with_long_lines_is_ruff_formatted():
    diff = ruff_diff(graphgen.generate(many_params_graph()))
    if diff.strip():
        pytest.fail(f"ruff format would change the generated module:\n{diff}")


def test_module_with_hostile_names_is_ruff_formatted():
    diff = ruff_diff(graphgen.generate(hostile_graph()))
    if diff.strip():
        pytest.fail(f"ruff format would change the generated module:\n{diff}")


# ---------------------------------------------------------------------- hostile names

QUOTED = "q\"'\\"
HOSTILE = [
    "x\nimport os",
    "class",
    "print",
    "np",
    "__import__('os')",
    "a b",
    "1abc",
    "名前",
    "h1_bar",
    "_check",
    QUOTED,
]


def hostile_graph():
    """Every name an identifier-minded code generator could trip over."""
    return build_graph(
        {
            "x\nimport os": ("input", ("batch", 3)),
            "np": ("input", ("batch", 2)),
            "class": ("param", (3, 4)),
            "print": ("param", (4,)),
            "__import__('os')": ("param", (4, 2)),
            "名前": ("param", (2,)),
        },
        [
            ("a b", "matmul", ["x\nimport os", "class"], {}),
            ("1abc", "add", ["a b", "print"], {}),
            ("h1", "tanh", ["1abc"], {}),
            ("h1_bar", "sigmoid", ["h1"], {}),  # clashes with the adjoint of h1
            ("_check", "matmul", ["h1_bar", "__import__('os')"], {}),
            ("value_and_grad", "add", ["_check", "名前"], {}),
            (QUOTED, "mse", ["value_and_grad", "np"], {}),
            ("h2", "mul", ["h1", "h1"], {}),
            ("r", "mean", ["h2"], {}),
            ("J\\", "add", [QUOTED, "r"], {}),
        ],
        loss="J\\",
        outputs=["value_and_grad", "J\\", QUOTED, "a b"],
        wrt=["class", "print", "__import__('os')", "名前", "x\nimport os"],
        name="hostile",
    )


@pytest.fixture(scope="module")
def hostile():
    G = hostile_graph()
    return G, graphgen.generate(G), graphgen.compile(G)


def test_hostile_names_compile_run_and_differentiate(hostile):
    G, _, module = hostile
    arrays = random_arrays(G, seed=1)
    out = module.forward(**arrays)
    assert list(out) == ["value_and_grad", "J\\", QUOTED, "a b"]
    loss, grads = module.value_and_grad(**arrays)
    assert list(grads) == ["class", "print", "__import__('os')", "名前", "x\nimport os"]
    assert loss == pytest.approx(float(out["J\\"]), rel=1e-12)
    # the forward outputs are what the names say
    h1 = np.tanh(arrays["x\nimport os"] @ arrays["class"] + arrays["print"])
    vg = 0.5 * (1 + np.tanh(0.5 * h1)) @ arrays["__import__('os')"] + arrays["名前"]
    np.testing.assert_allclose(out["value_and_grad"], vg, rtol=1e-12)
    np.testing.assert_allclose(
        out[QUOTED], np.mean((vg - arrays["np"]) ** 2), rtol=1e-12
    )

    def f(a):
        return module.value_and_grad(**a)[0]

    for name in grads:
        assert_grad_close(grads[name], fd_gradient(f, arrays, name), what=repr(name))


def test_hostile_names_never_reach_code_outside_string_literals(hostile):
    _, source, _ = hostile
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for tok in tokens:
        if tok.type == tokenize.NAME:
            assert tok.string.isascii() and tok.string.isidentifier(), tok
        if tok.type in (tokenize.STRING, tokenize.NL, tokenize.NEWLINE):
            continue
        if sys.version_info >= (3, 12) and tok.type in (
            tokenize.FSTRING_START,
            tokenize.FSTRING_MIDDLE,
            tokenize.FSTRING_END,
        ):
            continue
        for raw in ("import os", "__import__", "名前", "a b", QUOTED, "\\"):
            assert raw not in tok.string, (raw, tok)

    tree = ast.parse(source)
    imports = [
        ast.unparse(n)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Import, ast.ImportFrom))
    ]
    assert imports == ["import numpy as np"]
    calls = {
        n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    assert not calls & {"__import__", "eval", "exec", "compile", "open", "print"}, calls


def test_generated_locals_shadow_no_module_name_or_builtin(hostile, example_sources):
    for source in [hostile[1], *example_sources.values()]:
        tree = ast.parse(source)
        module_names = set()
        for n in tree.body:
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                module_names.add(n.name)
            elif isinstance(n, ast.Assign):
                module_names |= {t.id for t in n.targets if isinstance(t, ast.Name)}
            elif isinstance(n, ast.Import):
                module_names |= {a.asname or a.name for a in n.names}
        forbidden = module_names | set(dir(builtins)) | set(keyword.kwlist)
        for fn in tree.body:
            if not isinstance(fn, ast.FunctionDef) or fn.name not in (
                "forward",
                "value_and_grad",
            ):
                continue
            assigned = {
                t.id
                for n in ast.walk(fn)
                if isinstance(n, (ast.Assign, ast.AugAssign))
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                if isinstance(t, ast.Name)
            }
            assert not assigned & forbidden, (fn.name, assigned & forbidden)


def test_adjoint_name_does_not_clash_with_a_spec_name(hostile):
    _, source, _ = hostile
    tree = ast.parse(source)
    fn = next(
        n
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and n.name == "value_and_grad"
    )
    targets = [
        t.id
        for n in fn.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name)
    ]
    assert len(targets) == len(set(targets)), f"a name is assigned twice: {targets}"


# -------------------------------------------------------------------- standalone module


def test_generated_module_needs_only_numpy(tmp_path):
    G = graphgen.load(REPO / "examples" / "fanout.yaml")
    (tmp_path / "fanout_net.py").write_text(graphgen.generate(G), encoding="utf-8")
    arrays = random_arrays(G, seed=5)
    np.savez(tmp_path / "arrays.npz", **arrays)
    script = textwrap.dedent(f"""
        import json, sys
        for blocked in ("graphgen", "networkx", "jinja2", "yaml", "jsonschema"):
            sys.modules[blocked] = None  # importing any of them now raises ImportError
        sys.path.insert(0, {str(tmp_path)!r})
        import numpy as np
        import fanout_net
        arrays = dict(np.load({str(tmp_path / "arrays.npz")!r}))
        loss, grads = fanout_net.value_and_grad(**arrays)
        out = fanout_net.forward(**arrays)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in
                        ("graphgen", "networkx", "jinja2", "yaml", "jsonschema")
                        and sys.modules[m] is not None)
        print(json.dumps({{"loss": loss, "grads": {{k: v.tolist() for k, v in grads.items()}},
                          "J": float(out["J"]), "loaded": loaded}}))
    """)
    proc = subprocess.run(
        [sys.executable, "-I", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        check=False,
        env=clean_env(),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    assert result["loaded"] == []
    loss, grads = graphgen.compile(G).value_and_grad(**arrays)
    assert result["loss"] == loss == result["J"]
    for k, v in grads.items():
        np.testing.assert_array_equal(np.array(result["grads"][k]), v)


# ----------------------------------------------------------------------------- dtypes


def test_float32_module_computes_in_float32():
    G = graphgen.load(REPO / "examples" / "tiny.yaml")
    module = graphgen.compile(G, dtype="float32")
    assert module.DTYPE is np.float32
    params = module.init_params(0)
    assert all(p.dtype == np.float32 for p in params.values())
    rng = np.random.default_rng(0)
    arrays = {
        "x": rng.standard_normal((4, 2)).astype(np.float32),
        "t": rng.uniform(size=(4, 1)).astype(np.float32),
        **params,
    }
    out = module.forward(**arrays)
    for k, v in out.items():
        assert np.asarray(v).dtype == np.float32, (k, np.asarray(v).dtype)
    loss, grads = module.value_and_grad(**arrays)
    assert np.isfinite(loss)
    for k, v in grads.items():
        assert v.dtype == np.float32, (k, v.dtype)
        assert v.shape == module.PARAMS[k]
    # float32 agrees with float64 on the same data
    m64 = graphgen.compile(G)
    loss64, grads64 = m64.value_and_grad(
        **{k: v.astype(np.float64) for k, v in arrays.items()}
    )
    assert loss == pytest.approx(loss64, rel=1e-5)
    for k in grads:
        np.testing.assert_allclose(grads[k], grads64[k], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="float32"):
        module.value_and_grad(**{k: v.astype(np.float64) for k, v in arrays.items()})


# ------------------------------------------------------------------- gradient outputs


def test_params_with_identical_gradients_get_distinct_arrays():
    G = graphgen.load(REPO / "examples" / "fanout.yaml")
    module = graphgen.compile(G)
    arrays = random_arrays(G, seed=0)
    _, grads = module.value_and_grad(**arrays)
    np.testing.assert_array_equal(grads["W2"], grads["V"])  # y = h @ W2 + h @ V
    assert grads["W2"] is not grads["V"]
    assert not np.shares_memory(grads["W2"], grads["V"])
    before = grads["V"].copy()
    grads["W2"] += 1.0
    np.testing.assert_array_equal(grads["V"], before)


def test_gradients_are_writable_arrays_not_views_of_each_other():
    for spec in EXAMPLE_SPECS:
        G = graphgen.load(spec)
        _, grads = graphgen.compile(G).value_and_grad(**random_arrays(G, seed=0))
        names = list(grads)
        for i, a in enumerate(names):
            assert isinstance(grads[a], np.ndarray) and grads[a].flags.writeable, (
                spec,
                a,
            )
            for b in names[i + 1 :]:
                assert not np.shares_memory(grads[a], grads[b]), (spec, a, b)


@pytest.mark.parametrize(
    "uses_batch", [True, False], ids=["batch-used", "batch-unused"]
)
def test_gradient_of_an_input_the_loss_ignores_is_zeros_of_its_symbolic_shape(
    uses_batch,
):
    arrays = {
        "x": ("input", ("batch", 3)),
        "u": ("input", ("batch", 2)),
        "b": ("param", (3,)),
    }
    if uses_batch:  # the loss's own code needs the size of batch
        nodes = [("h", "add", ["x", "b"], {}), ("J", "mean", ["h"], {})]
    else:  # only the zero gradient of u mentions batch
        nodes = [("h", "mul", ["b", "b"], {}), ("J", "sum", ["h"], {})]
    G = build_graph(arrays, nodes, loss="J", wrt=["b", "u"])
    with pytest.warns(graphgen.GraphgenWarning, match="'u'"):
        module = graphgen.compile(G)
    data = random_arrays(G, seed=0, sizes={"batch": 4})
    _, grads = module.value_and_grad(**data)
    np.testing.assert_array_equal(grads["u"], np.zeros((4, 2)))
    expected_b = np.full(3, 4 / 12) if uses_batch else 2 * data["b"]
    np.testing.assert_allclose(grads["b"], expected_b, rtol=1e-12)


# --------------------------------------------------------------------------- comments


def test_fanout_sum_is_commented_with_its_successors(example_sources):
    lines = example_sources["fanout"].splitlines()
    starts = [
        i
        for i, line in enumerate(lines)
        if line.strip().startswith("#") and "successors k of h: z, s, hh" in line
    ]
    assert len(starts) == 1, "no comment naming h's successors z, s, hh"
    i = starts[0] + 1
    while lines[i].strip().startswith("#"):
        i += 1
    code = []
    while (
        i < len(lines)
        and lines[i].strip()
        and not lines[i].strip().startswith(("#", "del "))
    ):
        code.append(lines[i].strip())
        i += 1
    assert code[0].startswith("h_bar ="), code
    terms = set(re.findall(r"\bh_bar_via_\w+", " ".join(code)))
    assert terms == {"h_bar_via_z", "h_bar_via_s", "h_bar_via_hh"}, code


TEMP_LINE = re.compile(r"^(t\d+ = .*|np\.\w+\(.*, out=t\d+\)|del [\w, ]+)$")
# a buffer note among the temporaries of a statement (or between them and it)
REUSE_LINE = re.compile(r"^# \w+ reuses \w+'s buffer$")


@pytest.mark.parametrize("name", EXAMPLE_IDS)
def test_every_backward_statement_has_a_math_comment(name, example_sources):
    source = example_sources[name]
    lines = source.splitlines()
    fn = next(
        n
        for n in ast.parse(source).body
        if isinstance(n, ast.FunctionDef) and n.name == "value_and_grad"
    )
    previous = None
    checked = 0
    for stmt in fn.body:
        if isinstance(stmt, ast.Assign) and any(
            isinstance(t, ast.Name) and "_bar" in t.id for t in stmt.targets
        ):
            i = stmt.lineno - 2
            # the comment may head the group of temporaries built for this statement
            while i >= 0 and (
                TEMP_LINE.match(lines[i].strip()) or REUSE_LINE.match(lines[i].strip())
            ):
                i -= 1
            comment = []
            while i >= 0 and lines[i].strip().startswith("#"):
                comment.append(lines[i])
                i -= 1
            assert comment, (
                f"{name}: no comment above line {stmt.lineno}: {lines[stmt.lineno - 1]}"
            )
            assert "∂" in "\n".join(comment), (
                f"{name}: no ∂ in the comment of line {stmt.lineno}"
            )
            checked += 1
        elif isinstance(stmt, ast.AugAssign):  # in-place accumulation continues a sum
            assert isinstance(previous, (ast.Assign, ast.AugAssign)), ast.unparse(stmt)
            prev_target = (
                previous.targets[0]
                if isinstance(previous, ast.Assign)
                else previous.target
            )
            assert ast.unparse(prev_target) == ast.unparse(stmt.target)
        previous = stmt
    assert checked >= 2


def ruff_lint(text, stem, ignore=()):
    """``ruff check --select E,F,W`` of generated code: its complaints ('' when clean)."""
    proc = subprocess.run(
        [str(VENV_BIN / "ruff"), "check", "--select", "E,F,W"]
        + (["--ignore", ",".join(ignore)] if ignore else [])
        + ["--output-format", "concise", "--stdin-filename", f"{stem}.py", "-"],
        input=text.encode("utf-8"),
        capture_output=True,
        check=False,
        cwd=REPO,
        timeout=60,
    )
    return "" if proc.returncode == 0 else proc.stdout.decode() + proc.stderr.decode()


BENCH_SPECS = sorted((REPO / "benchmarks" / "specs").glob("*.yaml"))


@pytest.mark.parametrize("spec", BENCH_SPECS, ids=lambda p: p.stem)
def test_benchmark_modules_are_formatted_and_lint_clean(spec):
    # wide graphs: 60 params (w4), a 16-way fan-out sum (w5), long del lists
    text = graphgen.generate(graphgen.load(spec))
    diff = ruff_diff(text)
    assert not diff.strip(), f"ruff format would change {spec.name}:\n{diff[:3000]}"
    problems = ruff_lint(text, spec.stem)
    assert not problems, problems
