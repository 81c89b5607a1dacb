"""A generated Numba module imported under a name other than its file's (a package
path, a spec of its own) works: Numba's on-disk cache is keyed by the file, and a kernel
cached under one module name fails to load under another (ModuleNotFoundError from
inside Numba), so the module caches its kernels only under its file's name."""

from __future__ import annotations

import subprocess
import sys

import pytest

import graphgen

pytest.importorskip("numba")

RUN = """
import importlib.util, sys
import numpy as np
name, path = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location(name, path)
m = importlib.util.module_from_spec(spec)
sys.modules[name] = m
spec.loader.exec_module(m)
x = np.random.default_rng(0).standard_normal((4, 784))
loss, _ = m.value_and_grad(x=x, labels=np.array([1, 2, 3, 4]), **m.init_params())
print(name, m._CACHE, repr(loss))
"""


def test_module_imported_under_other_names_loads(tmp_path):
    path = tmp_path / "model.py"
    graphgen.write(
        graphgen.load("examples/mlp.yaml"), path, backend="numba", whole=False
    )
    script = tmp_path / "run.py"
    script.write_text(RUN)
    outputs = []
    for name in ("model", "other", "pkg.model", "model"):
        done = subprocess.run(
            [sys.executable, str(script), name, str(path)],
            capture_output=True,
            check=False,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout.split())
    # cached only under the file's name; every import computes the same loss
    assert [o[1] for o in outputs] == ["True", "False", "False", "True"]
    assert len({o[2] for o in outputs}) == 1
    assert any(p.suffix == ".nbi" for p in (tmp_path / "__pycache__").iterdir())


def test_cache_false_compiles_in_each_process():
    src = graphgen.generate(
        graphgen.load("examples/mlp.yaml"), backend="numba", cache=False
    )
    assert "_CACHE = False" in src
    assert "cache=True" not in src.split('"""', 2)[2]  # only the docstring's mention
    assert "kernels are cached" not in src
