"""The examples in graphgen's docstrings run, and say what they print."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
from conftest import REPO

import graphgen


def _modules():
    out = []
    for info in pkgutil.walk_packages(graphgen.__path__, "graphgen."):
        if info.name.endswith("__main__") or info.name == "graphgen.onnx_backend":
            continue  # runs the CLI / needs onnx: neither has examples
        out.append(info.name)
    return ["graphgen", *sorted(out)]


def _with_examples():
    found = []
    finder = doctest.DocTestFinder()
    for name in _modules():
        module = importlib.import_module(name)
        if any(t.examples for t in finder.find(module, name)):
            found.append(name)
    return found


MODULES = _with_examples()


def test_the_package_has_doctests():
    assert len(MODULES) >= 3, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, monkeypatch):
    monkeypatch.chdir(REPO)  # the examples read examples/*.yaml
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} failing example(s) in {name}"
