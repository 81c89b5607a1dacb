"""Big graphs (issue 16): the fast paths of the passes and of codegen compute the right
gradients, and a long compile shows its stages on a terminal only.

No timing here: ``benchmarks/compile_scale.py`` measures how compile time grows.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import numpy as np
import pytest
from conftest import EXAMPLES, REPO

import graphgen
from graphgen.check import random_arrays
from graphgen.frontends.spec import from_dict

sys.path.insert(0, str(REPO / "benchmarks"))
import compile_scale

# The issue asks for 20,000 nodes; on the shared 2-core CI machine that compile takes
# minutes, so the default is a size within the test budget. GRAPHGEN_SCALE_NODES=20000
# runs the full size (it passes; see the README's compile-time section).
NODES = int(os.environ.get("GRAPHGEN_SCALE_NODES", "1500"))


def central_difference(f, arrays, name, index, eps=1e-6):
    hi = {k: v.copy() for k, v in arrays.items()}
    lo = {k: v.copy() for k, v in arrays.items()}
    hi[name][index] += eps
    lo[name][index] -= eps
    return (f(hi) - f(lo)) / (2 * eps)


@pytest.mark.parametrize("shape", ["random", "fanout"])
def test_gradients_of_a_big_generated_spec_match_central_differences(shape):
    data = compile_scale.GENERATORS[shape](NODES)
    assert compile_scale.spec_nodes(data) >= NODES - 10
    # x feeds every branch (fanout) or the start of the DAG (random): its gradient is
    # the widest sum over successors
    data["wrt"] = ["x", *data["params"]]
    G = from_dict(data, source=f"<{shape}>")
    module = graphgen.compile(G)
    arrays = random_arrays(G, seed=1, sizes={"batch": 3})
    rng = np.random.default_rng(2)
    for name, size in module.PARAMS.items():
        arrays[name] = rng.uniform(0.5, 1.5, size)
    loss, grads = module.value_and_grad(**arrays)
    assert np.isfinite(loss)

    def f(a):
        return module.value_and_grad(**a)[0]

    # the input, and the params met first, in the middle and last
    names = list(module.PARAMS)
    picks = [("x", (1, 2)), ("x", (0, 0))] + [
        (names[i], (i % compile_scale.WIDTH,))
        for i in (0, len(names) // 2, len(names) - 1)
    ]
    eps = 1e-6
    # the difference quotient's rounding error: the loss sums thousands of terms, each
    # of its two evaluations is off by a few ulps of |loss|, divided by 2 eps
    rounding = 8 * np.finfo(float).eps * abs(loss) / eps
    for name, index in picks:
        want = central_difference(f, arrays, name, index, eps)
        got = grads[name][index]
        tol = 1e-6 * max(1.0, abs(want)) + rounding
        assert abs(got - want) <= tol, (name, index, got, want)


def run_in_terminal(args, env):
    """Run ``python -m graphgen ARGS`` with stdin/stdout/stderr on a pseudo-terminal;
    returns everything it printed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stderr is the terminal
        os.environ.update(env)
        os.execv(sys.executable, [sys.executable, "-m", "graphgen", *args])
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the terminal closes when the child exits
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out.decode()
    return out.decode()


# a compile "longer than" 0 s: every stage shows
FAST = {"GRAPHGEN_PROGRESS_AFTER": "0", "PYTHONPATH": str(REPO)}
STAGES = ("load", "shapes", "adjoint", "optimize", "codegen", "render")


def test_a_long_compile_shows_each_stage_on_a_terminal(tmp_path):
    out = run_in_terminal(
        ["compile", str(REPO / "examples" / "tiny.yaml"), "-o", str(tmp_path / "m.py")],
        FAST,
    )
    shown = [ln for ln in out.splitlines() if ln.startswith("graphgen: ")]
    assert [ln.split()[1].rstrip(".") for ln in shown[:-1]] == list(STAGES), out
    assert shown[-1].startswith("graphgen: done in "), out


def test_progress_is_silent_under_quiet_and_off_a_terminal(tmp_path):
    spec = str(REPO / "examples" / "tiny.yaml")
    out = run_in_terminal(["compile", spec, "-q", "-o", str(tmp_path / "m.py")], FAST)
    assert "graphgen: " not in out, out
    piped = subprocess.run(
        [
            sys.executable,
            "-m",
            "graphgen",
            "compile",
            spec,
            "-o",
            str(tmp_path / "n.py"),
        ],
        env={**os.environ, **FAST},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "graphgen: " not in piped.stderr, piped.stderr


def test_a_short_compile_shows_nothing_on_a_terminal(tmp_path):
    out = run_in_terminal(
        ["compile", str(REPO / "examples" / "tiny.yaml"), "-o", str(tmp_path / "m.py")],
        {"GRAPHGEN_PROGRESS_AFTER": "600", "PYTHONPATH": str(REPO)},
    )
    assert "graphgen: " not in out, out


def test_a_module_compiles_one_definition_at_a_time_with_its_line_numbers():
    from graphgen.codegen import render

    module = graphgen.compile(graphgen.load(REPO / "examples" / "mlp.yaml"))
    text = module.__source__
    codes = render._compile(text, "m.py")
    assert len(codes) == text.count("\n\n\ndef ") + 1
    lines = text.splitlines()
    for name in ("forward", "value_and_grad", "init_params"):
        first = getattr(module, name).__code__.co_firstlineno
        assert lines[first - 1].startswith(f"def {name}("), name
    # a cut inside a string would not parse: the text is compiled whole
    tricky = '"""doc\n\n\ndef f():\n"""\nX = 1\n\n\ndef g():\n    return X\n'
    (code,) = render._compile(tricky, "t.py")
    space = {}
    exec(code, space)  # noqa: S102 - a module text of the test's own
    assert space["__doc__"] == "doc\n\n\ndef f():\n" and space["g"]() == 1


def test_the_program_and_its_graph_are_freed_before_the_module_compiles(monkeypatch):
    """CPython's compile of a big module needs more memory than anything before it;
    what codegen built must be gone by then (no reference cycle to wait for)."""
    import gc
    import weakref

    from graphgen.api import BACKENDS
    from graphgen.codegen import render

    alive = []
    compile_ = render._compile

    def spy(text, filename):
        alive.extend(p for p in programs if p() is not None)
        return compile_(text, filename)

    programs = []
    init = BACKENDS["numpy"].__init__

    def remember(self, *args, **kwargs):
        init(self, *args, **kwargs)
        programs.append(weakref.ref(self))

    monkeypatch.setattr(render, "_compile", spy)
    monkeypatch.setattr(BACKENDS["numpy"], "__init__", remember)
    gc.disable()  # only reference counting frees what is not alive
    try:
        graphgen.generate(graphgen.load(REPO / "examples" / "mlp.yaml"))
    finally:
        gc.enable()
    assert programs and not alive


def _wrap_by_textwrap(text, width, indent):
    """codegen.comments.wrap_comment as it was: every long comment through textwrap."""
    import textwrap

    from graphgen.codegen.comments import safe_comment

    text = str(safe_comment(text))
    words = []
    for word in text.split(" "):
        while len(word) > width - 2:
            cut = max(word.rfind(c, 0, width - 2) for c in ")/(·")
            if cut <= 0:
                break
            words.append(word[: cut + 1])
            word = word[cut + 1 :]
        words.append(word)
    return textwrap.wrap(
        " ".join(words),
        width=width,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )


def test_comments_wrap_as_textwrap_does():
    import random

    from graphgen.codegen.comments import wrap_comment

    rng = random.Random(0)
    # words of every length (some longer than a line, some cut at ")"), unicode spaces
    # that textwrap keeps inside words but drops alone, runs of spaces, tabs
    alphabet = "ab)(·/x_ " + " " * 6 + "\u3000\xa0\t-"
    for i in range(20_000):
        n = rng.choice((5, 30, 80, 150, 300))
        text = "".join(rng.choice(alphabet) for _ in range(n))
        if i % 3 == 0:  # mostly ordinary words
            text = " ".join(
                "".join(rng.choice("abc)") for _ in range(rng.choice((1, 3, 9, 90))))
                for _ in range(rng.randrange(1, 40))
            )
        width = rng.choice((20, 40, 84))
        indent = rng.choice(("", "  "))
        got = wrap_comment(text, width=width, indent=indent)
        if len(text) <= width - 2 and text[:1] != " " and text[-1:] != " ":
            continue  # the one-line path, unchanged
        assert got == _wrap_by_textwrap(text, width, indent), (text, width, indent)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_printed_forms_give_the_text_and_helpers_of_their_macros(backend):
    """An op macro that only prints its arguments is rendered once per attributes with
    placeholders, then pasted (codegen/render.printed_form): for every op node of the
    examples and a random DAG, that text and the helpers it notes are the macro's own,
    for plain names and for expressions the layout parenthesizes."""
    from graphgen import api, ops
    from graphgen import graph as g
    from graphgen.codegen.layout import wrap
    from graphgen.codegen.naming import Code
    from graphgen.codegen.render import recording

    graphs = [
        graphgen.load(EXAMPLES / f"{name}.yaml")
        for name in ("mlp", "digits_cnn", "gpt", "fanout")
    ]
    graphs.append(from_dict(compile_scale.random_dag(300)))
    printed = set()
    for G in graphs:
        A = api.lower(G)
        program = api.BACKENDS[backend](A, backend, "test")
        forms = program.forms
        A = program.A  # the NumPy program's own graph holds its recomputed nodes too
        for n in program.order:
            a = g.node_dicts(A)[n]
            if a[g.KIND] != g.OPNODE or ops.get(a[g.OP]).variadic:
                continue
            macro, is_printed, _ = forms.macro(a[g.OP], n)
            if not is_printed:
                continue
            printed.add(a[g.OP])
            count = len(program.operands(n))
            for args in (
                [Code(f"v{i}") for i in range(count)],
                [Code(f"a{i} + b * c") for i in range(count)],
            ):
                for as_bool in (False, True):
                    with recording(merge=False) as fast_helpers:
                        fast = forms.render(n, args, set(), as_bool)
                    with recording(merge=False) as slow_helpers:
                        at = program.attrs_code(n, set())
                        if ops.get(a[g.OP]).mask:
                            at["as_bool"] = as_bool
                        slow = macro(*[wrap(x) for x in args], at).strip()
                    assert fast == slow, (backend, n, a[g.OP])
                    assert fast_helpers == slow_helpers, (backend, n, a[g.OP])
    # the common forms are pasted; pow tests its arguments, so it is not
    assert {"add", "mul", "tanh", "sigmoid", "matmul"} <= printed
    from graphgen.codegen.render import environment, printed_form

    assert not printed_form(environment("numpy"), "numpy/ops.j2", "pow")
    assert printed_form(environment("numpy"), "numpy/ops.j2", "sum")
