"""The forward-mode functions of a generated module: ``jvp`` and ``hvp`` (and the tables
and argument checks they need); ``hessian`` is a loop over ``hvp`` in the template.

The lowered graph carries the tangent systems (:func:`graphgen.passes.forward.forward_mode`):
``graph["jvp"]`` (``tangents``: each float input and param -> its tangent input;
``outputs``: each float output -> the node holding its tangent) and ``graph["hvp"]``
(``vectors``: each ``wrt`` name -> its direction input; ``hvps``: each ``wrt`` name -> the
node holding the tangent of its gradient, None where it is zero). Each function is built
through :meth:`Program.make_function` like ``value_and_grad``, so both backends give it
the same argument checks, memory plan and comments.
"""

from __future__ import annotations

from .. import graph as g
from .layout import INDENT, LINE, assign, bracketed, fit, literal
from .naming import Code

# the functions that take directions (tangents, vectors, vjp's cotangents) beside the
# arrays, through a prologue of their own (put before the backend's, if it has one)
DIRECTED = ("jvp", "hvp", "vjp")


def directions(A, name):
    """The inputs ``name`` takes as directions, in ``_directions``' order: ``jvp``'s
    tangents, ``hvp``'s vectors (None for ``vjp``, whose cotangents arrive otherwise)."""
    key, table = {"jvp": ("jvp", "tangents"), "hvp": ("hvp", "vectors")}.get(
        name, (None, None)
    )
    if key is None:
        return None
    return list(((A.graph.get(key) or {}).get(table) or {}).values())


def direction_inputs(A):
    """The inputs holding ``jvp``'s tangents and ``hvp``'s vectors: arguments of those
    functions, not arrays of the module."""
    return {
        *((A.graph.get("jvp") or {}).get("tangents") or {}).values(),
        *((A.graph.get("hvp") or {}).get("vectors") or {}).values(),
    }


def functions(program):
    """``jvp`` and ``hvp``, those of them the lowered graph has tangent systems for."""
    A = program.A
    out = []
    inputs, params, outputs = program.arrays()
    arrays = inputs + params
    if A.graph.get("jvp"):
        out.append(jvp_function(program, arrays, outputs))
    if A.graph.get("hvp"):
        out.append(hvp_function(program, arrays))
    return out


def tables(program):
    """``TANGENTS``: the arrays ``jvp`` takes a tangent of, with their shapes."""
    A = program.A
    tangents = (A.graph.get("jvp") or {}).get("tangents")
    if not tangents:
        return []
    return [
        (
            Code("TANGENTS"),
            [
                (literal(n), literal(tuple(g.node_dicts(A)[n][g.SHAPE])))
                for n in tangents
            ],
        )
    ]


def _prologue(program, arrays, kind, table, directions, then=None):
    """``_unpack`` the arrays, then take the directions (``tangents`` or ``vectors``)
    through ``_directions``, which checks them against the shapes the arrays fixed;
    ``then``: the backend's prologue (a whole-function kernel's call), after them."""
    A = program.A
    texts = sorted(
        {
            d
            for n in directions.values()
            for d in g.node_dicts(A)[n][g.SHAPE]
            if isinstance(d, str)
        }
    )
    sizes = fit(
        "",
        "{",
        [f"{literal(d)}: {program.dim(d, set())}" for d in texts],
        "}",
        2 * INDENT,
    )
    targets = [program.namer[t] for t in directions.values()]
    args = [literal(kind), Code(kind), table, sizes]
    if len(targets) == 1:
        call = bracketed(f"{targets[0]} = _directions", args, "[0]", INDENT)
    else:
        call = assign(targets, "_directions", args, INDENT)
    pad = " " * INDENT
    after = f"\n{then}" if then else ""
    return Code(f"{pad}{program.unpack(arrays)['call']}\n{pad}{call}{after}")


def jvp_function(program, arrays, outputs):
    """``jvp(tangents, **arrays) -> (outputs, output_tangents)``."""
    A = program.A
    info = A.graph["jvp"]
    float_outputs = [o for o in outputs if o in info["outputs"]]
    roots = list(outputs) + [info["outputs"][o] for o in float_outputs]
    doc = [
        "Jacobian-vector product (forward mode): the outputs and their tangents.",
        "",
        "``tangents`` maps names in TANGENTS to arrays of their shapes (a name left out",
        "has tangent zero); returns ``({name: output}, {name: tangent})`` over OUTPUTS,",
        "each tangent being Σ_x ∂output/∂x · tangents[x] (float outputs only).",
    ]

    def returns(names, used):
        values = [f"{literal(o)}: {program.out_expr(o, names)}" for o in outputs]
        dots = program.gradients(float_outputs, names, used, grads=info["outputs"])
        return _return_tuple([("", values), ("", dots)])

    fn = program.make_function("jvp", roots, doc, returns)
    fn.prologue = _prologue(
        program, arrays, "tangents", Code("TANGENTS"), info["tangents"], fn.prologue
    )
    fn.signature = Code("tangents, **arrays")
    return fn


def hvp_function(program, arrays):
    """``hvp(vectors, **arrays) -> (loss, grads, hvps)``: forward over reverse."""
    A = program.A
    info = A.graph["hvp"]
    wrt = list(A.graph["wrt"])
    roots = [program.loss] + [v for v in program.grads.values() if v is not None]
    roots += [v for v in info["hvps"].values() if v is not None]
    doc = [
        f"Hessian-vector products of the loss {program.loss!r} (forward over reverse).",
        "",
        "``vectors`` maps names in WRT to arrays of their shapes (a name left out is",
        "zero); returns ``(loss, {name: gradient}, {name: H·v})``, where",
        "``(H·v)[w] = Σ_u ∂²loss/∂w∂u · vectors[u]`` (fresh arrays).",
    ]

    def returns(names, used):
        loss = f"float({program.out_expr(program.loss, names)})"
        grads = program.gradients(wrt, names, used)
        hvps = program.gradients(wrt, names, used, grads=info["hvps"])
        return _return_tuple([(loss, None), ("", grads), ("", hvps)])

    fn = program.make_function("hvp", roots, doc, returns)
    fn.prologue = _prologue(
        program, arrays, "vectors", Code("_VECTORS"), info["vectors"], fn.prologue
    )
    fn.signature = Code("vectors, **arrays")
    return fn


def _return_tuple(items):
    """``return a, {k: v}, ...`` on one line if it fits, else one item per line (each
    dict laid out as ruff does). ``items``: (text, None) or ("", dict items)."""

    def text(item, indent):
        head, entries = item
        return head if entries is None else fit("", "{", entries, "}", indent)

    one = "return " + ", ".join(text(i, INDENT) for i in items)
    if "\n" not in one and INDENT + len(one) <= LINE:
        return Code(one)
    pad = " " * (2 * INDENT)
    body = "".join(f"{pad}{text(i, 2 * INDENT)},\n" for i in items)
    return Code(f"return (\n{body}{' ' * INDENT})")
