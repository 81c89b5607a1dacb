"""Whole-function mode: a generated function compiled as one ``@numba.njit`` function.

The Python-level function checks its arguments (``_unpack``'s fast path is the compiled
function's own typed signature and size checks) and calls one compiled function that
computes everything: the same statements as the Python-level function would have, with
the non-fused ops in their nopython forms (``templates/numba/nopython.j2``, then the
NumPy forms Numba compiles as they are) and the fused groups' kernels called from
compiled code. The result dict is built at the Python level.

It is used when every op of the function has a nopython form (:func:`nopython_ok`),
``parallel`` is off, and (automatic mode) no transcendental that NumPy does faster is
large for the function (:data:`WHOLE_TRANSCENDENTAL_LIMIT`) and no op needs one of the
forms only ``whole=True`` uses (:data:`EXPLICIT`: the small transformers' forms).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ... import dims, ops
from ... import graph as g
from ...codegen import attrs as attrs_mod
from ...codegen import tangents
from ...codegen.comments import docstring_lines, wrap_comment
from ...codegen.layout import (
    INDENT,
    LINE,
    assign,
    bracketed,
    condition,
    condition_check,
    fit,
    literal,
    subscript,
    unpack_line,
    wrap,
)
from ...codegen.layout import value as layout_value
from ...codegen.naming import Code
from ...codegen.program import Function, OpForms, Statement
from ...codegen.render import note_helpers, recording

# Whole-function mode (auto) is off when a function computes one of the transcendentals
# NumPy runs faster on more than this many elements (symbolic sizes count as 1): a
# compiled loop calls libm once per element, ~13-58x slower than NumPy's SIMD loop.
# (whole=True ignores it: GPT-2, 2 layers of width 32, ran its step in 0.23-0.40x the
# Python-level time as one compiled function, with 66 176 pow elements in 332 ops.)
WHOLE_TRANSCENDENTAL_LIMIT = 4096
# templates/numba/helpers/<name>.py.j2: @numba.njit helpers whole-function kernels call,
# each with the helpers it calls (printed in this order)
NB_HELPERS = {
    "matmul": (),
    "flat_matmul": ("matmul",),
    "batched_matmul": ("matmul",),
    "loop_softmax": ("row_exps",),
    "loop_softmax_cross_entropy": ("row_exps",),
    "loop_softmax_xent_grad": ("row_exps",),
    "rows_softmax_cross_entropy": ("loop_softmax_cross_entropy",),
    "rows_softmax_xent_grad": ("loop_softmax_xent_grad",),
    "row_reduce": (),
    "row_exps": ("row_reduce",),
    "row_layer_norm": ("row_reduce",),
    "last_axis_sums": ("row_reduce",),
    "row_sums": (),
    "col_sums": (),
    "take_rows": (),
    "scatter_rows": (),
    "placed": (),
}
# ... and the vecmath helpers (graphgen/backends/numba/vecmath.py) a helper calls where
# the module inlines its transcendentals (the template's ``inline_math``)
NB_VECMATH = {"row_exps": ("nb_exp_row",)}
# What a nopython form predicate returns for a form only ``whole=True`` uses: the small
# transformers' forms (stacked matmuls, softmax of more than a matrix, layer_norm,
# partial sums, embedding rows, unslice, where, array constants). Compiling such a
# function whole made the first call ~5x slower (nanoGPT 21 s -> 116 s), so in automatic
# mode it stays at the Python level.
EXPLICIT = "explicit"


def nb_helpers(used):
    """The :data:`NB_HELPERS` that code calling ``used`` needs, in printing order."""
    need = {h for h in NB_HELPERS if h in used}
    todo = list(need)
    while todo:  # and what those call, in turn
        for d in NB_HELPERS[todo.pop()]:
            if d not in need:
                need.add(d)
                todo.append(d)
    return [h for h in NB_HELPERS if h in need]


class Unsupported(Exception):
    """An op without a nopython form: the function falls back to per-group kernels."""


# op -> whether a node of it, not fused into a group, has a nopython form:
# ``form(attrs, argument shapes, which arguments are integer arrays) -> bool``
NOPYTHON = {}


# op -> ``attrs(forms, n, used) -> dict``: what its nopython macro reads beyond its
# attributes (``used``: the symbolic sizes the code reads)
NOPYTHON_ATTRS = {}


def nopython(*names, attrs=None, explicit=False):
    """Register the decorated predicate as the nopython form of the ops ``names`` (and
    ``attrs``, what their macro reads beyond their attributes). A predicate returns
    True, False or :data:`EXPLICIT`; ``explicit``: every form it accepts is one."""

    def register(form):
        rule = (lambda *a: form(*a) and EXPLICIT) if explicit else form
        for name in names:
            assert name in ops.REGISTRY, name
            NOPYTHON[name] = rule
            if attrs is not None:
                NOPYTHON_ATTRS[name] = attrs
        return form

    return register


@nopython(
    "neg", "add", "sub", "mul", "div", "maximum", "minimum", "add_n",
    "abs", "sqrt", "exp", "log", "tanh", "sin", "cos", "square", "relu", "sign",
)  # fmt: skip
@nopython("transpose", attrs=lambda forms, n, used: _permuted(forms, n))
@nopython("reshape", "slice", "concat", "zeros", "dimsize", "mse")
@nopython("is_nan", explicit=True)
def _floats(at, shapes, ints):
    """Elementwise ops on arrays (not fused: e.g. beside an integer array) and shape
    ops: their NumPy forms, which Numba compiles as they are."""
    return not any(ints)


@nopython(
    "softmax_cross_entropy",
    "softmax_xent_grad",
    attrs=lambda forms, n, used: {"rows": len(_shape(forms, n, 0)) > 2},
)
def _row_loop(at, shapes, ints):
    """templates/numba/helpers/loop_*.py.j2: (..., classes) logits, int labels of the
    leading shape (whole=True: rows_*.py.j2 flatten the leading axes)."""
    ok = (
        len(shapes[0]) >= 2
        and len(shapes[1]) == len(shapes[0]) - 1
        and ints == [False, True]
        and at.get("ignore_index") is None
    )
    return EXPLICIT if ok and len(shapes[0]) > 2 else ok


@nopython("matmul", attrs=lambda forms, n, used: _matmul_attrs(forms, n))
def _matmul(at, shapes, ints):
    """np.dot or _matmul's loops (vectors and matrices); whole=True: flat_matmul.py.j2
    (a stack of matrices times a matrix), batched_matmul.py.j2 (stacks of the same
    batch shape)."""
    a, b = shapes
    if any(ints):
        return False
    if all(1 <= len(s) <= 2 for s in shapes):
        return True
    stacked = len(a) >= 3 and (len(b) == 2 or (len(b) == len(a) and a[:-2] == b[:-2]))
    return EXPLICIT if stacked else False


def _shape(forms, n, i):
    """The shape of operand ``i`` of node ``n``."""
    A = forms.program.A
    return A.nodes[g.operands(A, n)[i]][g.SHAPE]


def _ends(at, shape):
    """``("lead", q)`` or ``("last", q)``: a reduction over the first or last q axes
    (row_sums / col_sums), else None."""
    axes, r = sorted(at["axis"]), len(shape)
    if axes == list(range(len(axes))):
        return "lead", len(axes)
    if axes == list(range(r - len(axes), r)):
        return "last", len(axes)
    return None


def _reduction_attrs(forms, n, used, to_shape=False, one_axis=False):
    """``ends``: None (every axis: the NumPy form), "axis" (np.sum along one axis,
    ``axis``/``keepdims`` as the NumPy form reads them), or "lead"/"last" with ``q``:
    row_sums / col_sums over the first or last q axes (whole=True), reshaped to
    ``shape``, the result's. ``one_axis``: the op has the "axis" form (sum)."""
    A, prog = forms.program.A, forms.program
    a = A.nodes[n]
    shape = _shape(forms, n, 0)
    if to_shape:
        lead, keep = ops.defs.sum_to_shape_axes(shape, tuple(a[g.ATTRS]["shape"]))
        ends = _ends({"axis": lead + keep}, shape)
    elif sorted(a[g.ATTRS]["axis"]) == list(range(len(shape))):
        return {"ends": None}
    elif one_axis and len(a[g.ATTRS]["axis"]) == 1 and prog.whole is not True:
        return {"ends": "axis"}  # no helper to compile
    else:
        ends = _ends(a[g.ATTRS], shape)
    return {"ends": ends[0], "q": ends[1], "shape": prog.shape_code(a[g.SHAPE], used)}


@nopython(
    "sum",
    attrs=lambda forms, n, used: _reduction_attrs(forms, n, used, one_axis=True),
)
def _sum(at, shapes, ints):
    """Over every axis (a 0-d value is a float in nopython code: it has no methods),
    along one axis of a matrix or more (Numba's np.sum takes one integer axis; keepdims
    by np.expand_dims), or (whole=True) over leading or trailing axes (col_sums /
    row_sums, which whole=True also uses for one leading or trailing axis)."""
    return _partial(at, shapes, ints, one_axis=True)


@nopython("mean", attrs=_reduction_attrs)
def _mean(at, shapes, ints):
    """Over every axis, or (whole=True) over leading or trailing axes."""
    return _partial(at, shapes, ints, one_axis=False)


def _partial(at, shapes, ints, one_axis):
    if any(ints) or not shapes[0]:
        return False
    if sorted(at["axis"]) == list(range(len(shapes[0]))):
        return not at["keepdims"]
    if one_axis and len(at["axis"]) == 1:
        return True
    return EXPLICIT if _ends(at, shapes[0]) is not None else False


@nopython("max")
def _full_reduction(at, shapes, ints):
    # a 0-d value is a float in nopython code: it has no methods
    return (
        not any(ints)
        and len(shapes[0]) > 0
        and sorted(at["axis"]) == list(range(len(shapes[0])))
        and not at["keepdims"]
    )


@nopython(
    "sum_to_shape",
    attrs=lambda forms, n, used: _reduction_attrs(forms, n, used, to_shape=True),
    explicit=True,
)
def _sum_to_shape(at, shapes, ints):
    """Bias gradients: a sum over leading (or trailing) axes (not to a 0-d value)."""
    if any(ints) or not shapes[0] or not at["shape"]:
        return False
    lead, keep = ops.defs.sum_to_shape_axes(shapes[0], tuple(at["shape"]))
    return bool(lead + keep) and _ends({"axis": lead + keep}, shapes[0]) is not None


@nopython("softmax")
def _softmax(at, shapes, ints):
    """loop_softmax.py.j2: along the last axis of a matrix, or (whole=True) of any
    other shape."""
    r = len(shapes[0])
    if any(ints) or r < 1 or at["axis"] not in (r - 1, -1):
        return False
    return True if r == 2 else EXPLICIT


@nopython("layer_norm", explicit=True)
def _layer_norm(at, shapes, ints):
    """row_layer_norm.py.j2: scale and bias of the normalized axes' shape."""
    x, scale, bias = shapes
    return not any(ints) and tuple(scale) == tuple(bias) == tuple(x[at["axis"] :])


@nopython(
    "gather", attrs=lambda forms, n, used: _out_shape(forms, n, used), explicit=True
)
def _gather(at, shapes, ints):  # take_rows.py.j2: embedding lookups
    return at["axis"] == 0 and ints == [False, True] and len(shapes[0]) >= 1


@nopython(
    "scatter_add",
    attrs=lambda forms, n, used: _out_shape(forms, n, used),
    explicit=True,
)
def _scatter_add(at, shapes, ints):  # scatter_rows.py.j2: their gradients
    return at["axis"] == 0 and ints == [False, True]


def _out_shape(forms, n, used):
    return {
        "out_shape": forms.program.shape_code(forms.program.A.nodes[n][g.SHAPE], used)
    }


@nopython(
    "unslice", attrs=lambda forms, n, used: _slices(forms, n, used), explicit=True
)
def _unslice(at, shapes, ints):  # placed.py.j2: zeros with x placed at a slice
    return not any(ints)


def _slices(forms, n, used):
    """The unslice's index as a tuple of slice objects (nopython code has no np.s_)."""
    at, prog = forms.program.A.nodes[n][g.ATTRS], forms.program
    parts = ["slice(None)"] * len(at["shape"])
    stop = (
        "None" if at["stop"] == at["shape"][at["axis"]] else prog.dim(at["stop"], used)
    )
    parts[at["axis"]] = f"slice({prog.dim(at['start'], used)}, {stop}, {at['step']})"
    return {"slices": Code("(" + ", ".join(parts) + ",)")}


@nopython(
    "where",
    attrs=lambda forms, n, used: {"cast": forms.program.dtype != "float64"},
    explicit=True,
)
def _where(at, shapes, ints):  # np.where, broadcasting as NumPy does
    return not any(ints)


@nopython(
    "constant", attrs=lambda forms, n, used: _constant_slot(forms, n), explicit=True
)
def _constant(at, shapes, ints):
    """A stored or filled constant is an argument of the kernel (``_constants``, a
    tuple); one written as a literal stays np.array(literal), unless it is 0-d."""
    return at.get("value") is None or np.ndim(at["value"]) > 0


def _constant_slot(forms, n):
    at = forms.program.A.nodes[n][g.ATTRS]
    if forms.probing or at.get("value") is not None:
        return {"slot": 0}  # a probe of the template, or a literal
    key = attrs_mod.constant_key(n, at)
    return {"slot": forms.constants.setdefault(key, len(forms.constants))}


def _permuted(forms, n):
    """``axes``: the permutation, for the shape and strides of as_strided."""
    return {"axes": list(forms.program.A.nodes[n][g.ATTRS]["perm"])}


def nopython_ok(prog, n):
    """Whether op node ``n`` (not fused into a group) has a nopython form: 0-d
    elementwise ops as scalar arithmetic, other ops as :data:`NOPYTHON` says."""
    A = prog.A
    a = A.nodes[n]
    op, ins = a[g.OP], g.operands(A, n)
    if any(A.nodes[p][g.KIND] == g.CONST and A.nodes[p][g.SHAPE] for p in ins):
        return False
    shapes = [A.nodes[p][g.SHAPE] for p in ins]
    ints = [A.nodes[p][g.DTYPE] not in g.FLOAT_DTYPES for p in ins]
    scalar = ops.get(op).elementwise and not a[g.SHAPE] and not any(ints)
    if scalar and op in prog.scalar_ops():
        return True
    form = NOPYTHON.get(op)
    ok = form is not None and form(a[g.ATTRS], shapes, ints)
    return prog.whole is True if ok is EXPLICIT else bool(ok)


def _matmul_attrs(forms, n):
    """``form``: "loops" (_matmul: two matrices), "flat" (a stack of matrices times a
    matrix), "batched" (two stacks) or "dot" (a vector: np.dot); notes whether the
    module needs the register tiles."""
    A = forms.program.A
    a, b = (len(A.nodes[p][g.SHAPE]) for p in g.operands(A, n))
    form = (
        "dot"
        if min(a, b) == 1
        else "loops"
        if a == b == 2
        else "flat"
        if b == 2
        else "batched"
    )
    if form != "dot" and matmul_tiles(forms.program, n):
        forms.tiles = True
    return {"form": form}


def matmul_tiles(prog, n):
    """Whether matmul ``n`` (loops form) may be wide enough for the register tiles of
    ``_simd_matmul``: two 512-bit registers wide (matmul.py.j2, ``_matmul``'s rule)."""
    width = prog.A.nodes[n][g.SHAPE][-1]
    tile = {"float64": 16, "float32": 32}[prog.dtype]
    return not isinstance(width, int) or width % tile == 0 or width >= 4 * tile


class NopythonForms(OpForms):
    """How op nodes read inside a whole-function kernel: their nopython forms, 0-d
    elementwise ops as scalar arithmetic. An op without one raises :class:`Unsupported`.
    """

    def __init__(self, program, macros):
        super().__init__(program, macros)
        self.tiles = False  # some matmul may use the register tiles
        self.constants = {}  # the array constants' keys -> slots in ``_constants``
        self.probing = False

    def uses_once(self, op):
        self.probing = True
        try:
            return super().uses_once(op)
        finally:
            self.probing = False

    def attrs(self, n, used):
        out = super().attrs(n, used)
        more = NOPYTHON_ATTRS.get(self.program.A.nodes[n][g.OP])
        if more is not None:
            out.update(more(self, n, used))
        return out

    def render(self, n, args, used, as_bool=False) -> Code:
        prog = self.program
        if not nopython_ok(prog, n):
            raise Unsupported(n)
        a = prog.A.nodes[n]
        if ops.get(a[g.OP]).elementwise and not a[g.SHAPE]:  # a scalar in nopython code
            return Code(prog.render_scalar(n, [wrap(x) for x in args]))
        return super().render(n, args, used, as_bool)

    probe_every = True  # a nopython form may depend on the node's shapes

    def probe(self, n):
        return nopython_ok(self.program, n)


@dataclasses.dataclass
class WholeKernel:
    """A whole-function kernel, printed when the kernels' names are final."""

    name: Code
    types: Code
    decorator: Code
    signature: Code
    checks: list
    doc: list
    statements: list
    returns: Code
    helpers: list  # the templates/numba/helpers it calls


def too_costly(prog, need):
    """Why ``need`` cannot (or, automatically, should not) be one compiled function."""
    A = prog.A
    for n in need:
        a = A.nodes[n]
        if a[g.KIND] in (g.INPUT, g.PARAM) and not a[g.SHAPE]:
            return True  # 0-d arrays are not scalars in nopython code
        if (
            prog.whole is None
            and a[g.KIND] == g.OPNODE
            and a[g.OP] in prog.exclude
            and dims.prod([d for d in a[g.SHAPE] if isinstance(d, int)])
            > WHOLE_TRANSCENDENTAL_LIMIT
        ):
            return True  # NumPy's SIMD loop beats a scalar libm call per element
    return False


def whole_function(prog, name, roots, doc, returns_fn, train=False):
    """``name`` as a whole-function kernel and the Python-level function that calls it,
    or None when it cannot or should not be one. ``train``: it is ``train_step``, whose
    kernel also takes the optimizer's state and runs each param's update
    (:func:`_train`)."""
    A = prog.A
    if too_costly(prog, g.reach(A, roots)):
        return None
    saved = prog.kernels.snapshot()
    forms = NopythonForms(prog, prog.nopython_macros)
    with recording(merge=False) as used:
        try:
            inner = prog.group_function(
                name, roots, doc, returns_fn, forms=forms, exclude=frozenset()
            )
        except Unsupported:
            prog.kernels.restore(saved)
            return None
    if prog.whole is None and _one_kernel_call(inner):
        # nothing to save but one dispatch, and compiling the kernel into a caller
        # optimizes its code a second time (W4: 17 s against 7 s)
        prog.kernels.restore(saved)
        return None
    note_helpers(used)
    prog.matmul_tiles = prog.matmul_tiles or forms.tiles

    kname = Code(f"_{name}_kernel")
    while kname in prog.namer.taken or kname in prog.kernels.names:
        kname = Code(kname + "_")
    prog.kernels.names.add(kname)
    # what the Python level reads back: the op nodes among the roots, by name
    outs = []
    for r in roots:
        if A.nodes[r][g.KIND] == g.OPNODE:
            ident = _root_name(prog, r, inner)
            if ident not in outs:
                outs.append(ident)
    taken = set().union(*prog.arrays()[:2])  # not jvp's tangents nor hvp's vectors
    arrays = [
        n for n in prog.order if A.nodes[n][g.KIND] in (g.INPUT, g.PARAM) and n in taken
    ]
    # jvp's tangents or hvp's vectors, after the arrays
    directions = tangents.directions(A, name) or []
    args = arrays + directions
    params = [prog.namer[n] for n in args]
    types = [_array_type(prog, n) for n in args]
    what = "the arrays in"
    if train:
        outs = (
            outs[:1]
            if prog.loss in A and A.nodes[prog.loss][g.KIND] == g.OPNODE
            else []
        )
        state, scalars = _train(prog, inner, arrays)
        params += [ident for ident, _, _ in state] + scalars
        types += [t for _, _, t in state] + [f"numba.{prog.dtype}"] * len(scalars)
        what = "the arrays, the optimizer's state and the step's scalars in"
    consts = None
    if forms.constants:  # the array constants, one tuple argument, last
        consts = Code(f"_{name.upper()}_CONSTANTS")
        params.append(Code("_constants"))
    kernel = WholeKernel(
        name=kname,
        types=_types(name, types, consts, list(forms.constants)),
        decorator=bracketed("@numba.njit", _options(prog), "", 0),
        signature=bracketed(f"def {kname}", params, ":", 0),
        checks=_checks(prog, args, inner.sizes),
        doc=[
            Code(line)
            for line in docstring_lines(
                f"Everything {name}() computes, compiled as one function: {what}, "
                + ", ".join(outs)
                + " out"
                + (
                    "."
                    if not train
                    else "; every update after the backward pass (clipping needs "
                    "every gradient)."
                    if prog.optimizer.clip_norm
                    else "; each param's update runs right after its gradient is "
                    "complete."
                )
            )
        ],
        statements=inner.statements,
        returns=bracketed("return ", outs, "", INDENT, parens=False)
        if outs
        else Code("return ()"),
        helpers=nb_helpers(used),
    )
    prog.whole_kernels.append(kernel)
    if train:
        return Function(
            inner.name,
            inner.doc,
            [],
            inner.returns,
            _train_prologue(prog, kname, outs, arrays, state, consts),
            names=inner.names,
            updated=True,
        )
    if name in tangents.DIRECTED:
        # after _unpack and _directions (codegen/tangents.py), which check everything
        prologue = _directed_call(prog, kname, name, outs, arrays, directions, consts)
    else:
        prologue = _prologue(prog, name, kname, outs, arrays, consts)
    return Function(
        inner.name,
        inner.doc,
        _scalar_results(prog, name, roots, inner),
        inner.returns,
        prologue,
        names=inner.names,
        unpacks=name in tangents.DIRECTED,
    )


def _train(prog, inner, arrays):
    """Place each param's update in train_step's kernel (``inner``'s statements), right
    after its gradient is complete: a call of the optimizer's compiled loop
    (``templates/numba/optim/``), which reads and writes p, g and the state arrays once.
    Returns the state arrays the kernel takes, ``(name in the kernel, the Python-level
    expression, type)`` each in STATE_KEYS order, and its scalar arguments."""
    opt, nm = prog.optimizer, prog.namer
    kind = opt.kind
    updated = [w for w in prog.wrt if prog.grads.get(w) is not None]
    of = {n: t for n, t in zip(arrays, [_array_type(prog, n) for n in arrays])}
    state_n = prog.train_names()["state"]
    state = [
        (
            nm.name(("slot", s, w), f"{s}_{nm[w]}"),
            subscript(state_n, literal(f"{s}.{w}"), 2 * INDENT),
            of[w],
        )
        for s in kind.slots
        for w in updated
    ]
    slot_of = {
        (s, w): state[i * len(updated) + j][0]
        for i, s in enumerate(kind.slots)
        for j, w in enumerate(updated)
    }
    lr_n = prog.train_names()["lr"]  # the kernel's lr: the step's, in DTYPE
    scalars = [
        lr_n if s == "lr" else nm.name(("train", "scalar", s), s) for s in kind.scalars
    ]

    clip_n = prog.train_names()["clip"]

    def update(w, expr):
        args = [
            f"{nm[w]}.reshape(-1)",
            f"np.ascontiguousarray({expr}).reshape(-1)",
            *(f"{slot_of[s, w]}.reshape(-1)" for s in kind.slots),
            *scalars,
            f"DTYPE({clip_n})" if clip_n else "DTYPE(1.0)",  # the clipping factor
        ]
        return bracketed(f"_{kind.helper}_loop", args, "", INDENT)

    def clip(grads):  # _clip_coef's arithmetic, in compiled code
        norms = [f"_grad_norm({e})" for e in grads]
        return bracketed(f"{clip_n} = _clip_factor", norms, "", INDENT)

    inner.statements = prog.place_updates(inner, update, free=False, clip=clip)
    return state, scalars


def _array_type(prog, n):
    """Array ``n``'s type in a kernel signature: C-contiguous, of its dtype and rank."""
    a = prog.A.nodes[n]
    dtype = "int64" if a[g.DTYPE] == "int64" else prog.A.graph["dtype"]
    if not a[g.SHAPE]:  # a 0-d array: ``float32[::1]`` would be 1-d
        return f'numba.types.Array(numba.{dtype}, 0, "C")'
    return f"numba.{dtype}[{', '.join([':'] * (len(a[g.SHAPE]) - 1) + ['::1'])}]"


def _one_kernel_call(fn):
    """Whether ``fn``'s statements are one fused kernel's call (and the DTYPE
    conversions of its 0-d results)."""
    calls = [s for s in fn.statements if s.call is not None]
    rest = [s for s in fn.statements if s.call is None]
    return len(calls) == 1 and all(s.expr.startswith("DTYPE(") for s in rest)


def _root_name(prog, r, fn):
    if r in prog.namer:
        return prog.namer[r]
    for s in fn.statements:
        if s.node == r:
            return s.target
    raise AssertionError(f"internal: no name for root {r!r}")


def _types(name, types, consts, keys):
    """``_<NAME>_TYPES``: the argument types the kernel compiles for at its first call
    (and ``consts``, the tuple of the array constants it takes, ``keys``)."""
    if consts is None:
        return fit(f"_{name.upper()}_TYPES = ", "(", types, ")", 0, tuple_=True)
    entries = [subscript("_CONSTANTS", literal(k), INDENT) for k in keys]
    return Code(
        fit(f"{consts} = ", "(", entries, ")", 0, tuple_=True)
        + "\n"
        + fit(
            f"_{name.upper()}_TYPES = ",
            "(",
            [*types, f"numba.typeof({consts})"],
            ")",
            0,
            tuple_=True,
        )
    )


def _options(prog):
    options = ["cache=_CACHE"] if prog.cache else []
    options.append('error_model="numpy"')
    if prog.fastmath:
        options.append("fastmath=True")
    return options


def _checks(prog, arrays, used):
    """The kernel's own size checks: each symbolic size bound from the first array that
    has it (where something reads it), every other size compared."""
    A = prog.A
    checks, bound, read = [], set(), set(used)
    binds = []
    for n in arrays:
        ident, shape = prog.namer[n], A.nodes[n][g.SHAPE]
        conds = []
        for i, d in enumerate(shape):
            if isinstance(d, str) and d not in bound:
                bound.add(d)
                binds.append((len(checks), d))
                checks.append(Code(f"{prog.namer[('dim', d)]} = {ident}.shape[{i}]"))
            else:
                read.update(dims.symbols(d))
                conds.append(f"{ident}.shape[{i}] != {prog.dim(d, set())}")
        if conds:
            checks.append(condition_check(conds, n))
    unread = {i for i, d in binds if d not in read}
    return [c for i, c in enumerate(checks) if i not in unread]


def _scalar_results(prog, name, roots, inner):
    """``t = DTYPE(t)`` for each 0-d result: numba hands back Python floats (the loss of
    value_and_grad is returned as float() anyway)."""
    A = prog.A
    stmts = []
    for r in dict.fromkeys(roots):
        if (
            A.nodes[r][g.KIND] != g.OPNODE
            or A.nodes[r][g.SHAPE]
            or name == "value_and_grad"
            and r == prog.loss
            and r not in prog.grads.values()
        ):
            continue
        o = _root_name(prog, r, inner)
        expr = layout_value(f"DTYPE({o})", INDENT + len(o) + 3)
        stmts.append(Statement(o, expr, [], roots[0]))
    return stmts


def _kernel_call(kname, types, outs, args, text, depth):
    """The Python level's call of whole-function kernel ``kname``: the lines that
    compile it for ``types`` at the first call, the comment saying ``text`` and the
    call on ``args`` assigning ``outs``, the last two laid out ``depth`` levels deep."""
    indent = depth * INDENT
    call = (
        assign(outs, f"{kname}", args, indent)
        if outs
        else bracketed(f"{kname}", args, "", indent)
    )
    compile_ = [
        f"if not {kname}.overloads:  # the first call compiles it",
        f"    _compile({kname}, {types})",
    ]
    comment = [f"# {c}" for c in wrap_comment(text, width=LINE - indent - 2)]
    return compile_, comment, call


def _train_prologue(prog, kname, outs, arrays, state, consts):
    """train_step's body after ``_next_step``: compile at the first call, then run the
    kernel on the arrays ``_unpack`` checked, the state arrays ``_train_arrays``
    checked and the step's scalars."""
    names = prog.train_names()
    helper = f"_{prog.optimizer.kind.helper}_scalars({names['lr']}, {names['t']})"
    args = [prog.namer[n] for n in arrays] + [expr for _, expr, _ in state]
    args.append(f"*{helper}")
    if consts is not None:
        args.append(consts)
    when = (
        "after the backward pass (clipping needs every gradient)"
        if prog.optimizer.clip_norm
        else "each right after its gradient is complete"
    )
    compile_, comment, call = _kernel_call(
        kname,
        "_TRAIN_STEP_TYPES",
        outs,
        args,
        f"one compiled function ({kname}) computes "
        + ", ".join(outs or ["nothing"])
        + f" and updates every param, {when}",
        1,
    )
    lines = []
    inputs = [prog.namer[n] for n in arrays if prog.A.nodes[n][g.KIND] == g.INPUT]
    if inputs:  # the params are C-contiguous (_train_arrays checked), inputs may not be
        outer = prog.unpack(arrays)["outer"]
        merged = f" = _unpack(_fail({{**arrays, **{names['params']}}}))"
        lines += [
            f"if {condition([f'not {i}.flags.carray' for i in inputs])}:",
            "    # the kernel's types are C-contiguous arrays: copies of the others",
            "    " + unpack_line("", outer, merged, 2 * INDENT),
        ]
    lines += [*compile_, *comment, call]
    return Code("\n".join(" " * INDENT + line for line in lines))


def _indexes(prog):
    """Whether the module has labels or indices to check (``_check_indices``)."""
    inputs, params, _ = prog.arrays()
    return bool(prog.index_checks(inputs + params))


def _directed_call(prog, kname, name, outs, arrays, directions, consts):
    """jvp's or hvp's kernel call, after ``_unpack`` and ``_directions`` have checked
    the arrays (dtypes, shapes, aligned and writeable) and taken the directions:
    ``_taken`` makes the arrays C-contiguous too, as the kernel's types are."""
    idents = [Code(f"_taken({prog.namer[n]})") for n in arrays]
    idents += [prog.namer[n] for n in directions]
    if consts is not None:
        idents.append(consts)
    compile_, comment, call = _kernel_call(
        kname,
        f"_{name.upper()}_TYPES",
        outs,
        idents,
        f"one compiled function ({kname}) computes " + ", ".join(outs),
        1,
    )
    lines = [
        *compile_,
        *comment,
        call,
    ]
    return Code("\n".join(" " * INDENT + line for line in lines))


def _prologue(prog, name, kname, outs, arrays, consts):
    """The Python-level function's body before its return: take the arrays, copy those
    the kernel's types do not take as they are, compile at the first call, run the
    kernel, and explain what it rejects.

    The kernel's types (:func:`_array_type`) are C-contiguous writeable arrays. Numba's
    dispatcher turns down a read-only or strided array itself, but it would read an
    unaligned one as if it were aligned, and a masked array or other subclass as its
    data; so two cheap tests per array (the class, and ``carray``: C-contiguous,
    aligned, writeable) send the others through ``_fail``, which checks them and
    returns copies. The kernel's own TypeError (a dtype or rank) or ValueError (a size)
    is explained by ``_check``.
    """
    idents = [prog.namer[n] for n in arrays]
    args = idents if consts is None else [*idents, consts]
    compile_, comment, call = _kernel_call(
        kname,
        f"_{name.upper()}_TYPES",
        outs,
        args,
        f"one compiled function ({kname}) computes "
        + ", ".join(outs)
        + (" (the forward and backward pass)" if name == "value_and_grad" else ""),
        2,
    )
    tests = [
        test
        for i in idents
        for test in (f"{i}.__class__ is not _NDARRAY", f"not {i}.flags.carray")
    ]
    lines = [
        "if arrays.keys() != DTYPES.keys():",
        "    _fail(arrays)",
        *(
            subscript(f"{i} = arrays", literal(n), INDENT)
            for n, i in zip(arrays, idents)
        ),
        *(
            [
                f"if {condition(tests)}:",
                "    # not the kernel's types (C-contiguous, aligned, writeable ndarrays)",
                f"    return {name}(**_fail(arrays))  # copies, or the ValueError",
            ]
            if tests
            else []
        ),
        *(["_check_indices(arrays)"] if _indexes(prog) else []),
        *compile_,
        "try:",
        *(f"    {c}" for c in comment),
        f"    {call}",
        "except (TypeError, ValueError):  # a wrong dtype, rank or size",
        "    _check(arrays)  # raises the ValueError naming a wrong array",
        "    raise",
    ]
    return Code("\n".join(" " * INDENT + line for line in lines))
