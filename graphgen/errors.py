"""One error family for everything a user can get wrong.

Every error carries the spec file and, where there is one, the node, so the CLI can print
``graphgen: error: FILE: node 'a1': ...`` and exit 2 without a traceback.
"""

from __future__ import annotations

import difflib


class GraphgenError(Exception):
    """Base of every error graphgen reports to a user.

    Parameters
    ----------
    message : str
        What went wrong and what was expected.
    node : str, optional
        The spec name of the node at fault.
    source : str, optional
        The spec file (or ``"<graph>"`` for a graph built in Python).
    line : int, optional
        1-based line in the spec file, when known.
    """

    def __init__(self, message, *, node=None, source=None, line=None):
        super().__init__(message)
        self.message = message
        self.node = node
        self.source = source
        self.line = line

    def located(self, source=None, node=None):
        """Fill in the file and node if they are not known yet; return self."""
        if self.source is None:
            self.source = source
        if self.node is None:
            self.node = node
        return self

    def __str__(self):
        parts = []
        if self.source is not None:
            where = str(self.source)
            if self.line is not None:
                where += f":{self.line}"
            parts.append(where)
        if self.node is not None:
            parts.append(f"node {self.node!r}")
        parts.append(self.message)
        return ": ".join(parts)


class SpecError(GraphgenError):
    """The spec file is malformed or names things that do not exist."""


class GraphError(GraphgenError):
    """The graph is not a DAG, or a node does not fit its op."""


class ShapeError(GraphgenError):
    """Shapes of a node's arguments do not fit its op."""


class DimensionError(ShapeError, ValueError):
    """A string that is not a dimension expression (``"batch/2"``, ``"0x10"``, nested or
    grown past the bounds of :mod:`graphgen.dims`). Also a ``ValueError``: what a caller
    that only asks "is this a size?" catches."""


class GradientError(GraphgenError):
    """The loss, ``wrt`` list or a VJP rule does not allow differentiation."""


class CodegenError(GraphgenError):
    """A graph cannot be rendered for the requested backend."""


class DiagramError(GraphgenError):
    """A diagram cannot be drawn or written (bad view, unknown node, no Graphviz)."""


class ExplainError(GraphgenError):
    """The requested gradient cannot be explained (unknown node, no loss)."""


class GraphgenWarning(UserWarning):
    """Something is suspicious but a module can still be generated."""


def did_you_mean(word, choices) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to ``word``, or ``""``.

    >>> did_you_mean("sigmod", ["sigmoid", "tanh"])
    " (did you mean 'sigmoid'?)"
    """
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
