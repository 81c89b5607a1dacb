"""``explain --mode forward``: forward accumulation of ∂loss/∂wrt beside the reverse sum.

Reverse mode (the adjoint pass) starts at the loss and gives each node the sum over its
*successors*; forward mode starts at ``wrt`` and gives each node the sum over its
*arguments* (its predecessors) of the local derivative times the argument's tangent::

    forward:  d a_k = Σ_j ∂a_k/∂a_j · d a_j        (from wrt toward the loss)
    reverse:  ∂J/∂a_j = Σ_k ∂J/∂a_k · ∂a_k/∂a_j    (from the loss toward wrt)

Both multiply the same local derivatives along every path. With numbers (``--values``),
the tangents come from :func:`graphgen.jvp`'s graph run by the reference interpreter,
seeded with a random direction ``d wrt`` (a one-hot one for an element ``W[i,j]``), and
``d J`` is checked against the generated module's gradient: ``d J = ⟨∂J/∂wrt, d wrt⟩``.
"""

from __future__ import annotations

import numpy as np

from .. import graph as g
from .values import ModuleGradients, evaluate, load_arrays, norm

TOL = 1e-10  # relative, as a float64 module computes it


def sections(c, given=None, seed=0):
    """The forward-mode sections of an explanation (``c`` is explain's ``_Case``)."""
    order = {n: i for i, n in enumerate(g.schedule(c.H))}
    on_paths = sorted({n for p in c.paths for n in p}, key=order.__getitem__)
    out = _forward_section(c, on_paths)
    out += _reverse_section(c, on_paths)
    if given is not None and given is not False:
        out += _values_section(c, on_paths, given, seed)
    return out


def _diff(c, n):
    """The tangent (differential) of ``n``: ``d n``."""
    F = c.F
    return F.p("d", c.N(n)) if F.name_ == "text" else r"\mathrm{d}" + c.N(n)


def _inner(c):
    """⟨∂J/∂wrt, d wrt⟩."""
    F = c.F
    left, right = ("⟨", "⟩") if F.name_ == "text" else (r"\langle ", r"\rangle")
    return left + F.d(c.L, c.N(c.node)) + ", " + _diff(c, c.node) + right


def _preds(c, k, on_paths):
    return [j for j in dict.fromkeys(g.operands(c.H, k)) if j in on_paths]


def _succs(c, j, on_paths):
    return [k for k in c.H.successors(j) if k in on_paths]


def _forward_section(c, on_paths):
    F, node = c.F, c.node
    out = F.heading("Forward accumulation: the sum over predecessors", 2)
    out += F.para(
        F.p(
            "Forward mode gives ",
            F.prose_name(node),
            " a tangent ",
            F.m(_diff(c, node)),
            " (a small change of it) and carries it toward the loss in the order the "
            "forward pass runs. Each node's tangent is the sum over its arguments (its "
            "predecessors) of the local derivative times the argument's tangent, the "
            "dual of the adjoint's sum over successors:",
        )
    )
    for k in on_paths[1:]:
        terms = [F.dot([c.factor(j, k), _diff(c, j)]) for j in _preds(c, k, on_paths)]
        out += F.display(F.eq(_diff(c, k), F.plus(terms)))
    out += F.para(
        F.p(
            "Seeded with ",
            F.m(_diff(c, node)),
            " (for an array, one direction at a time: 1 at one element and 0 elsewhere "
            "gives that element's derivative), the loss's tangent is the derivative "
            "along it, the number the reverse pass gives too:",
        )
    )
    out += F.display(F.eq(_diff(c, c.loss), _inner(c)))
    return out


def _reverse_section(c, on_paths):
    F, N, L = c.F, c.N, c.L
    out = F.heading("Reverse accumulation: the sum over successors", 2)
    out += F.para(
        F.p(
            "The adjoint pass computes the same derivative from the loss back, in "
            "reverse order; each node's gradient is the sum over its successors:",
        )
    )
    for j in reversed(on_paths[:-1]):
        succs = _succs(c, j, on_paths)
        if succs == [c.loss]:
            continue  # ∂J/∂j is a local derivative of the loss itself
        terms = [  # ∂J/∂J = 1: a successor that is the loss has one factor
            c.factor(j, k) if k == c.loss else F.dot([F.d(L, N(k)), c.factor(j, k)])
            for k in succs
        ]
        out += F.display(F.eq(F.d(L, N(j)), F.plus(terms)))
    out += F.para(
        F.p(
            "Both multiply the same local derivatives along every path. One forward "
            "pass gives the derivative of every output along one input direction (a "
            "Jacobian-vector product, the generated jvp); one reverse pass gives the "
            "derivative of one output with respect to every input (a vector-Jacobian "
            "product, the generated ",
            F.vg,
            ").",
        )
    )
    return out


def _direction(c, vals, seed):
    """The seed tangent of ``wrt``: one-hot at an element, else a random direction."""
    shape = np.shape(vals[c.node])
    if c.index is not None:
        v = np.zeros(shape)
        v[tuple(c.index)] = 1.0
        return v
    return np.random.default_rng(seed + 1).standard_normal(shape)


def _tangents(T, vals, on_paths):
    """Each on-path node's tangent value: the node labelled ``tangent_of`` it, else (a
    tangent passed through unchanged, as ``add`` passes one) its argument's."""
    by_node = {}
    for t in T:
        k = T.nodes[t].get(g.TANGENT_OF)
        if k is not None and t in vals:
            by_node.setdefault(k, vals[t])
    out = {}
    for k in on_paths:
        if k in by_node:
            out[k] = by_node[k]
        else:
            passed = [j for j in g.operands(T, k) if j in out]
            out[k] = out[passed[0]] if passed else None
    return out


def _values_section(c, on_paths, given, seed):
    from ..passes.forward import jvp

    F, N, H, node = c.F, c.N, c.H, c.node
    arrays = load_arrays(H, True if given is True else given, seed)
    vals = evaluate(H, arrays)
    v = _direction(c, vals, seed)
    tname = g.fresh_id(H, f"{node}_tangent")
    T = jvp(H, {node: tname}, outputs=[c.loss])
    tvals = evaluate(T, {**arrays, tname: v})
    tangent = _tangents(T, tvals, [node] + on_paths[1:])
    tangent[node] = v
    out = F.heading("Numbers (forward mode)", 2)
    what = (
        F.p("one-hot at ", F.m(N(node, c.index and ",".join(map(str, c.index)))))
        if c.index is not None
        else F.p(f"a random direction (seed {seed + 1})")
    )
    out += F.para(F.p("The tangent of ", F.prose_name(node), " is ", what, ":"))
    rows = [
        [
            F.m(_diff(c, k)),
            F.num(norm(tangent[k])) if tangent[k] is not None else F.none,
        ]
        for k in on_paths
    ]
    out += F.table(["tangent", "norm"], rows)
    module = ModuleGradients(H, arrays, vals)
    ours = float(np.asarray(tangent[c.loss]))
    theirs = float(np.vdot(module(node), v))
    diff = abs(ours - theirs) / max(1.0, abs(theirs))
    out += F.para(
        F.p(
            F.m(F.eq(_diff(c, c.loss), F.num(ours))),
            " by forward accumulation; ",
            F.m(_inner(c)),
            " from the generated ",
            F.vg,
            f" = {F.num(theirs)}: relative difference {diff:.1e} ",
            F.ok(diff <= TOL),
        )
    )
    c.mismatch = getattr(c, "mismatch", False) or diff > TOL
    return out
