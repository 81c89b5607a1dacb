"""The ``graphgen`` command line: --version, ops, check, compile, the console script."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import subprocess

import numpy as np
import pytest
from conftest import EXAMPLE_SPECS, EXAMPLES, VENV_BIN, clean_env, run_graphgen

import graphgen
from graphgen.check import random_arrays
from graphgen.ops import REGISTRY


def test_version(cli):
    with pytest.raises(SystemExit) as info:
        cli("--version")
    assert info.value.code == 0
    proc = run_graphgen("--version")
    assert proc.returncode == 0
    assert proc.stdout.decode().strip() == f"graphgen {graphgen.__version__}"


def test_no_command_prints_help_and_fails(cli):
    status, out, _ = cli()
    assert status == 2
    assert "compile" in out and "check" in out and "ops" in out


def plain_math(op):
    """The op's math with every ``{placeholder}`` read as its own name."""
    return re.sub(r"\{(\w+)\}", r"\1", op.math)


def test_ops_lists_every_public_op_with_its_math(cli):
    status, out, _ = cli("ops")
    assert status == 0
    lines = out.splitlines()
    rows = {ln.split()[0]: ln for ln in lines if ln.startswith("  ") and ln[2] != " "}
    public = [name for name, op in REGISTRY.items() if not op.internal]
    assert set(rows) == set(public), (
        f"missing: {sorted(set(public) - set(rows))}, extra: {sorted(set(rows) - set(public))}"
    )
    for name in public:
        assert plain_math(REGISTRY[name]) in rows[name], (name, rows[name])
        assert "{" not in rows[name], rows[name]
    # under each op: how its JVP is obtained (and its VJP, where it has local derivatives)
    for i, ln in enumerate(lines):
        if ln.startswith("  ") and ln[2] != " ":
            below = [x.strip() for x in lines[i + 1 : i + 3]]
            jvp = next(x for x in below if x.startswith("JVP: "))
            assert jvp == f"JVP: {REGISTRY[ln.split()[0]].jvp_text}"
    assert f"JVP: {REGISTRY['transpose'].jvp_text}" == (
        "JVP: linear: the op itself on the tangent"
    )


def test_ops_all_also_lists_internal_ops(cli):
    status, out, _ = cli("ops", "--all")
    assert status == 0
    rows = {
        ln.split()[0] for ln in out.splitlines() if ln.startswith("  ") and ln[2] != " "
    }
    assert rows == set(REGISTRY)


@pytest.mark.parametrize("spec", EXAMPLE_SPECS, ids=[p.stem for p in EXAMPLE_SPECS])
def test_check_examples_pass_with_a_row_per_param(cli, spec):
    status, out, err = cli("check", spec)
    assert status == 0, out + err
    G = graphgen.load(spec)
    for w in G.graph["wrt"]:
        row = [line for line in out.splitlines() if line.split()[:1] == [w]]
        assert len(row) == 1, f"no table row for {w}:\n{out}"
        assert row[0].rstrip().endswith("ok"), row[0]
        assert str(tuple(G.nodes[w]["shape"])) in row[0]
    assert "all gradients match" in out


def test_check_fails_with_status_1_on_a_wrong_vjp(cli, monkeypatch):
    tanh = REGISTRY["tanh"]

    def scaled(b, c):  # a wrong rule: 1.5 times the right cotangent
        (ct,) = tanh.vjp(b, c)
        return [b.mul(ct, 1.5)]

    monkeypatch.setitem(REGISTRY, "tanh", dataclasses.replace(tanh, vjp=scaled))
    status, out, _ = cli("check", EXAMPLES / "fanout.yaml")
    assert status == 1, out
    verdicts = {
        line.split()[0]: line.split()[-1]
        for line in out.splitlines()
        if line.split()[:1] in (["W1"], ["b1"], ["W2"], ["V"])
    }
    # only gradients that flow back through h = tanh(u) are wrong
    assert verdicts == {"W1": "FAIL", "b1": "FAIL", "W2": "ok", "V": "ok"}, out
    assert "FAILED" in out


def test_check_passes_again_after_the_vjp_is_restored(cli):
    assert REGISTRY["tanh"].vjp is not None
    status, _, _ = cli("check", EXAMPLES / "fanout.yaml")
    assert status == 0


def test_compile_writes_the_module_to_a_file(cli, tmp_path):
    out_file = tmp_path / "tiny_net.py"
    status, out, err = cli("compile", EXAMPLES / "tiny.yaml", "-o", out_file)
    assert status == 0
    assert out == ""
    assert str(out_file) in err
    text = out_file.read_text(encoding="utf-8")
    assert text == graphgen.generate(graphgen.load(EXAMPLES / "tiny.yaml"))
    spec = importlib.util.spec_from_file_location("tiny_net", out_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    G = graphgen.load(EXAMPLES / "tiny.yaml")
    loss, grads = module.value_and_grad(**random_arrays(G, seed=0))
    assert np.isfinite(loss) and sorted(grads) == ["W1", "W2", "b1"]


def test_compile_to_stdout_with_dtype_override(cli):
    status, out, _ = cli("compile", EXAMPLES / "tiny.yaml", "--dtype", "float32")
    assert status == 0
    assert "DTYPE = np.float32" in out


LAYER_NORM = """
name: norm
inputs:
  x: [4, 8]
params:
  gain: {shape: [8], init: ones}
  shift: {shape: [8], init: zeros}
nodes:
  h: {op: layer_norm, args: [x, gain, shift], axis: 1}
  s: {op: square, args: [h]}
  loss: {op: mean, args: [s]}
outputs: [loss]
loss: loss
"""


def test_compile_whole_makes_a_transformer_op_one_compiled_function(cli, tmp_path):
    # layer_norm's nopython form is one of the transformers' (whole=True only)
    spec = tmp_path / "norm.yaml"
    spec.write_text(LAYER_NORM, encoding="utf-8")
    status, out, _ = cli("compile", spec, "--backend", "numba")
    assert status == 0 and "def _value_and_grad_kernel(" not in out
    status, out, _ = cli("compile", spec, "--backend", "numba", "--whole")
    assert status == 0 and "def _value_and_grad_kernel(" in out
    assert "_row_layer_norm(" in out
    status, _, err = cli("compile", spec, "--whole")
    assert status != 0 and "--whole need --backend numba" in err


def test_console_script_entry_point(tmp_path):
    exe = VENV_BIN / "graphgen"
    assert exe.is_file(), f"console script missing: {exe}"
    proc = subprocess.run(
        [str(exe), "--version"],
        capture_output=True,
        check=False,
        env=clean_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0
    assert proc.stdout.decode().strip() == f"graphgen {graphgen.__version__}"
    out_file = tmp_path / "fanout_net.py"
    proc = subprocess.run(
        [str(exe), "compile", str(EXAMPLES / "fanout.yaml"), "-o", str(out_file)],
        capture_output=True,
        check=False,
        env=clean_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert out_file.read_text(encoding="utf-8") == graphgen.generate(
        graphgen.load(EXAMPLES / "fanout.yaml")
    )
    proc = subprocess.run(
        [str(exe), "check", str(EXAMPLES / "tiny.yaml")],
        capture_output=True,
        check=False,
        env=clean_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert "all gradients match" in proc.stdout.decode()
