"""Whole-function mode: a generated function compiled as one ``@numba.njit`` function.

The Python-level function checks its arguments (``_unpack``'s fast path is the compiled
function's own typed signature and size checks) and calls one compiled function that
computes everything: the same statements as the Python-level function would have, with
the non-fused ops in their nopython forms (``templates/numba/nopython.j2``, then the
NumPy forms Numba compiles as they are) and the fused groups' kernels called from
compiled code. The result dict is built at the Python level.

It is used when every op of the function has a nopython form (:func:`nopython_ok`),
``parallel`` is off, and (automatic mode) no transcendental that NumPy does faster is
large for the function (:data:`WHOLE_TRANSCENDENTAL_LIMIT`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ... import dims, ops
from ... import graph as g
from ...codegen import attrs as attrs_mod
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
    wrap,
)
from ...codegen.layout import value as layout_value
from ...codegen.naming import Code
from ...codegen.program import Function, OpForms, Statement
from ...codegen.render import note_helpers, recording

# Whole-function mode (auto) is off when a function computes the transcendentals NumPy
# runs faster (log, pow, ...) on more elements than this per op node of the function
# (symbolic sizes count as 1): a compiled loop calls libm once per element, ~13-58x
# slower than NumPy's SIMD loop, while the Python level costs microseconds per op.
# GPT-2 (2 layers, width 32, batch 8): 66 176 pow elements in 332 ops; one compiled
# step took 0.23-0.40x the Python-level one (the earlier limit, 4096 elements in any
# one node, kept it at Python level).
WHOLE_TRANSCENDENTAL_LIMIT = 1024
# templates/numba/helpers/<name>.py.j2: @numba.njit helpers whole-function kernels call,
# each with the helpers it calls (printed in this order)
NB_HELPERS = {
    "matmul": (),
    "flat_matmul": ("matmul",),
    "batched_matmul": ("matmul",),
    "loop_softmax_cross_entropy": (),
    "loop_softmax_xent_grad": (),
    "rows_softmax_cross_entropy": ("loop_softmax_cross_entropy",),
    "rows_softmax_xent_grad": ("loop_softmax_xent_grad",),
    "row_softmax": (),
    "row_layer_norm": (),
    "row_sums": (),
    "col_sums": (),
    "take_rows": (),
    "scatter_rows": (),
    "placed": (),
}


def nb_helpers(used):
    """The :data:`NB_HELPERS` that code calling ``used`` needs, in printing order."""
    need = set()
    for h, deps in NB_HELPERS.items():
        if h in used:
            need.update((h, *deps))
    return [h for h in NB_HELPERS if h in need]


class Unsupported(Exception):
    """An op without a nopython form: the function falls back to per-group kernels."""


# op -> whether a node of it, not fused into a group, has a nopython form:
# ``form(attrs, argument shapes, which arguments are integer arrays) -> bool``
NOPYTHON = {}


# op -> ``attrs(forms, n, used) -> dict``: what its nopython macro reads beyond its
# attributes (``used``: the symbolic sizes the code reads)
NOPYTHON_ATTRS = {}


def nopython(*names, attrs=None):
    """Register the decorated predicate as the nopython form of the ops ``names`` (and
    ``attrs``, what their macro reads beyond their attributes)."""

    def register(form):
        for name in names:
            assert name in ops.REGISTRY, name
            NOPYTHON[name] = form
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
@nopython("is_nan")
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
    leading shape (rows_*.py.j2 flatten the leading axes)."""
    return (
        len(shapes[0]) >= 2
        and len(shapes[1]) == len(shapes[0]) - 1
        and ints == [False, True]
        and at.get("ignore_index") is None
    )


@nopython("matmul", attrs=lambda forms, n, used: _matmul_attrs(forms, n))
def _matmul(at, shapes, ints):
    """np.dot or _matmul's loops (vectors and matrices); flat_matmul.py.j2 (a stack of
    matrices times a matrix); batched_matmul.py.j2 (stacks of the same batch shape)."""
    a, b = shapes
    if any(ints):
        return False
    if all(1 <= len(s) <= 2 for s in shapes):
        return True
    return len(a) >= 3 and (len(b) == 2 or (len(b) == len(a) and a[:-2] == b[:-2]))


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


def _reduction_attrs(forms, n, used, to_shape=False):
    """``ends``/``q``: which axes a partial reduction sums; ``shape``: its result's."""
    A = forms.program.A
    a = A.nodes[n]
    shape = _shape(forms, n, 0)
    if to_shape:
        lead, keep = ops.defs.sum_to_shape_axes(shape, tuple(a[g.ATTRS]["shape"]))
        ends = _ends({"axis": lead + keep}, shape)
    elif sorted(a[g.ATTRS]["axis"]) == list(range(len(shape))):
        return {"ends": None}  # every axis: the NumPy form
    else:
        ends = _ends(a[g.ATTRS], shape)
    return {
        "ends": ends[0],
        "q": ends[1],
        "shape": forms.program.shape_code(a[g.SHAPE], used),
    }


@nopython("sum", "mean", attrs=_reduction_attrs)
def _sum(at, shapes, ints):
    """Over every axis (a 0-d value is a float in nopython code: it has no methods), or
    over leading or trailing axes (col_sums / row_sums)."""
    if any(ints) or not shapes[0]:
        return False
    if sorted(at["axis"]) == list(range(len(shapes[0]))):
        return not at["keepdims"]
    return _ends(at, shapes[0]) is not None


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
)
def _sum_to_shape(at, shapes, ints):
    """Bias gradients: a sum over leading (or trailing) axes (not to a 0-d value)."""
    if any(ints) or not shapes[0] or not at["shape"]:
        return False
    lead, keep = ops.defs.sum_to_shape_axes(shapes[0], tuple(at["shape"]))
    return bool(lead + keep) and _ends({"axis": lead + keep}, shapes[0]) is not None


@nopython("softmax")
def _softmax(at, shapes, ints):  # row_softmax.py.j2: along the last axis
    return not any(ints) and len(shapes[0]) >= 1 and at["axis"] == len(shapes[0]) - 1


@nopython("layer_norm")
def _layer_norm(at, shapes, ints):
    """row_layer_norm.py.j2: scale and bias of the normalized axes' shape."""
    x, scale, bias = shapes
    return not any(ints) and tuple(scale) == tuple(bias) == tuple(x[at["axis"] :])


@nopython("gather", attrs=lambda forms, n, used: _out_shape(forms, n, used))
def _gather(at, shapes, ints):  # take_rows.py.j2: embedding lookups
    return at["axis"] == 0 and ints == [False, True] and len(shapes[0]) >= 1


@nopython("scatter_add", attrs=lambda forms, n, used: _out_shape(forms, n, used))
def _scatter_add(at, shapes, ints):  # scatter_rows.py.j2: their gradients
    return at["axis"] == 0 and ints == [False, True]


def _out_shape(forms, n, used):
    return {
        "out_shape": forms.program.shape_code(forms.program.A.nodes[n][g.SHAPE], used)
    }


@nopython("unslice", attrs=lambda forms, n, used: _slices(forms, n, used))
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
    "where", attrs=lambda forms, n, used: {"cast": forms.program.dtype != "float64"}
)
def _where(at, shapes, ints):  # np.where, broadcasting as NumPy does
    return not any(ints)


@nopython("constant", attrs=lambda forms, n, used: _constant_slot(forms, n))
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
    return form is not None and form(a[g.ATTRS], shapes, ints)


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
    libm, nodes = 0, 0  # elements of the transcendentals NumPy does faster; op nodes
    for n in need:
        a = A.nodes[n]
        if a[g.KIND] in (g.INPUT, g.PARAM) and not a[g.SHAPE]:
            return True  # 0-d arrays are not scalars in nopython code
        if a[g.KIND] == g.OPNODE:
            nodes += 1
            if a[g.OP] in prog.exclude:
                libm += dims.prod([d for d in a[g.SHAPE] if isinstance(d, int)])
    # NumPy's SIMD loops beat a scalar libm call per element
    return prog.whole is None and libm > WHOLE_TRANSCENDENTAL_LIMIT * nodes


def whole_function(prog, name, roots, doc, returns_fn):
    """``name`` as a whole-function kernel and the Python-level function that calls it,
    or None when it cannot or should not be one."""
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
    params = [prog.namer[n] for n in arrays]
    consts = None
    if forms.constants:  # the array constants, one tuple argument
        consts = Code(f"_{name.upper()}_CONSTANTS")
        params.append(Code("_constants"))
    kernel = WholeKernel(
        name=kname,
        types=_types(prog, name, arrays, consts, list(forms.constants)),
        decorator=bracketed("@numba.njit", _options(prog), "", 0),
        signature=bracketed(f"def {kname}", params, ":", 0),
        checks=_checks(prog, arrays, inner.sizes),
        doc=[
            Code(line)
            for line in docstring_lines(
                f"Everything {name}() computes, compiled as one function: the arrays "
                "in, " + ", ".join(outs) + " out."
            )
        ],
        statements=inner.statements,
        returns=bracketed("return ", outs, "", INDENT, parens=False)
        if outs
        else Code("return ()"),
        helpers=nb_helpers(used),
    )
    prog.whole_kernels.append(kernel)
    return Function(
        inner.name,
        inner.doc,
        _scalar_results(prog, name, roots, inner),
        inner.returns,
        _prologue(prog, name, kname, outs, arrays, consts),
        names=inner.names,
        unpacks=False,
    )


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


def _types(prog, name, arrays, consts, keys):
    """``_<NAME>_TYPES``: the argument types the kernel compiles for at its first call
    (and ``consts``, the tuple of the array constants it takes, ``keys``)."""
    A = prog.A
    types = [
        f"numba.{'int64' if A.nodes[n][g.DTYPE] == 'int64' else A.graph['dtype']}"
        f"[{', '.join([':'] * (len(A.nodes[n][g.SHAPE]) - 1) + ['::1'])}]"
        for n in arrays
    ]
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
    options = ["cache=True"] if prog.cache else []
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


def _indexes(prog):
    """Whether the module has labels or indices to check (``_check_indices``)."""
    inputs, params, _ = prog.arrays()
    return bool(prog.index_checks(inputs + params))


def _prologue(prog, name, kname, outs, arrays, consts):
    """The Python-level function's body before its return: take the arrays, copy those
    the kernel's types do not take as they are, compile at the first call, run the
    kernel, and explain what it rejects.

    The kernel's types (:func:`_types`) are C-contiguous writeable arrays. Numba's
    dispatcher turns down a read-only or strided array itself, but it would read an
    unaligned one as if it were aligned, and a masked array or other subclass as its
    data; so two cheap tests per array (the class, and ``carray``: C-contiguous,
    aligned, writeable) send the others through ``_fail``, which checks them and
    returns copies. The kernel's own TypeError (a dtype or rank) or ValueError (a size)
    is explained by ``_check``.
    """
    idents = [prog.namer[n] for n in arrays]
    args = idents if consts is None else [*idents, consts]
    call = (
        assign(outs, f"{kname}", args, 2 * INDENT)
        if outs
        else bracketed(f"{kname}", args, "", 2 * INDENT)
    )
    comment = wrap_comment(
        f"one compiled function ({kname}) computes "
        + ", ".join(outs)
        + (" (the forward and backward pass)" if name == "value_and_grad" else ""),
        width=LINE - 2 * INDENT - 2,
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
        f"if not {kname}.overloads:  # the first call compiles it",
        f"    _compile({kname}, _{name.upper()}_TYPES)",
        "try:",
        *(f"    # {c}" for c in comment),
        f"    {call}",
        "except (TypeError, ValueError):  # a wrong dtype, rank or size",
        "    _check(arrays)  # raises the ValueError naming a wrong array",
        "    raise",
    ]
    return Code("\n".join(" " * INDENT + line for line in lines))
