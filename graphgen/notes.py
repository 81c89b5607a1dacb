"""The chain rule's notation, spelled once for code comments, diagrams and explanations:
∂J/∂x, products and sums of factors, and an op's math template filled with names.
"""

from __future__ import annotations

from . import graph as g
from . import ops


def partial(num, den) -> str:
    """The derivative of ``num`` with respect to ``den``.

    >>> partial("J", "h1")
    '∂J/∂h1'
    """
    return f"∂{num}/∂{den}"


def product(factors) -> str:
    """Factors multiplied: ``∂J/∂z · ∂z/∂h``."""
    return " · ".join(factors)


def sum_over(var, body) -> str:
    """``Σ_k body``."""
    return f"Σ_{var} {body}"


def fill(template, ids, attrs=None, show=str, bar=None) -> str:
    """Fill an op's math/derivative template with display names.

    ``{x}̄`` (an adjoint) becomes ``bar(x)``; ``{x}`` becomes ``show(x)``, and an
    attribute's placeholder its value.

    Examples
    --------
    >>> fill("∂{y}/∂{x} = 1 − {y}²", {"y": "h", "x": "u"})
    '∂h/∂u = 1 − h²'
    >>> fill("{a}̄ = {y}̄ @ {b}ᵀ", {"y": "z", "a": "h", "b": "W"},
    ...      bar=lambda n: partial("J", n))
    '∂J/∂h = ∂J/∂z @ Wᵀ'
    """
    out = template
    if bar is not None:
        for key, nid in ids.items():
            if "{" + key + "}̄" in out:
                out = out.replace("{" + key + "}̄", bar(nid))
    names = {k: show(v) for k, v in ids.items()}
    names.update({k: str(v) for k, v in (attrs or {}).items() if k not in names})
    return ops.format_note(out, names)


def local_templates(G, j, k):
    """The local derivative ∂k/∂j as the op's templates: ``(ids, templates)``, one
    template per argument position at which ``j`` feeds ``k`` (int arguments and ops
    without derivatives have none); ``ids`` maps placeholders to nodes."""
    op = ops.get(G.nodes[k][g.OP])
    if op.variadic:
        ids = {"y": k, op.args[0]: j}
    else:
        ids = {"y": k, **dict(zip(op.args, g.operands(G, k)))}
    if not op.derivs:
        return ids, []
    templates = [
        op.derivs[0 if op.variadic else i].replace("[i]", "")
        for i in G.edges[j, k][g.POS]
        if i not in op.int_args
    ]
    return ids, templates
