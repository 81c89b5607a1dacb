"""graphgen: NetworkX dataflow graphs -> standalone, readable NumPy gradient code.

The pipeline, one module per stage::

    spec file -> spec.load -> passes.shapes.prepare -> passes.adjoint.adjoint
              -> passes.optimize.optimize -> codegen.generate -> Python module

Examples
--------
>>> import graphgen, numpy as np
>>> G = graphgen.load("examples/tiny.yaml")
>>> model = graphgen.compile(G)
>>> p = model.init_params(0)
>>> x, t = np.ones((4, 2)), np.zeros((4, 1))
>>> loss, grads = model.value_and_grad(x=x, t=t, **p)
>>> sorted(grads)
['W1', 'W2', 'b1']
"""

from .api import compile, generate, hessian, load, write
from .check import check
from .errors import (
    CodegenError,
    GradientError,
    GraphError,
    GraphgenError,
    GraphgenWarning,
    ShapeError,
    SpecError,
)
from .passes.adjoint import adjoint
from .passes.forward import jvp
from .passes.optimize import optimize
from .passes.shapes import prepare
from .version import __version__  # noqa: F401
from .views.diagram import render, to_dot
from .views.explain import explain
from .views.page import write as write_page

__all__ = [
    "CodegenError",
    "GradientError",
    "GraphError",
    "GraphgenError",
    "GraphgenWarning",
    "ShapeError",
    "SpecError",
    "adjoint",
    "check",
    "compile",
    "explain",
    "generate",
    "hessian",
    "jvp",
    "load",
    "optimize",
    "prepare",
    "render",
    "to_dot",
    "write",
    "write_page",
]
