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

__version__ = "0.1.0"

from .api import check, compile, load  # noqa: E402
from .codegen import generate  # noqa: E402
from .diagram import render, to_dot  # noqa: E402
from .explain import explain  # noqa: E402
from .errors import (  # noqa: E402
    CodegenError,
    GradientError,
    GraphError,
    GraphgenError,
    GraphgenWarning,
    ShapeError,
    SpecError,
)
from .passes.adjoint import adjoint  # noqa: E402
from .passes.optimize import optimize  # noqa: E402
from .passes.shapes import prepare  # noqa: E402

__all__ = [
    "load",
    "prepare",
    "adjoint",
    "optimize",
    "generate",
    "compile",
    "check",
    "render",
    "to_dot",
    "explain",
    "GraphgenError",
    "SpecError",
    "GraphError",
    "ShapeError",
    "GradientError",
    "CodegenError",
    "GraphgenWarning",
]
