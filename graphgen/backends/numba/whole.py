"""Whole-function mode: a generated function compiled as one ``@numba.njit`` function.

The Python-level function checks its arguments (``_unpack``'s fast path is the compiled
function's own typed signature and size checks) and calls one compiled function that
computes everything: the same statements as the Python-level function would have, with
the non-fused ops in their nopython forms (``templates/numba/nopython.j2``, then the
NumPy forms Numba compiles as they are) and the fused groups' kernels called from
compiled code. The result dict is built at the Python level.

It is used when every op of the function has a nopython form (:func:`nopython_ok`),
``parallel`` is off, and (automatic mode) no transcendental that NumPy does faster is
large (:data:`WHOLE_TRANSCENDENTAL_LIMIT`).
"""

from __future__ import annotations

import dataclasses

from ... import dims, ops
from ... import graph as g
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
WHOLE_TRANSCENDENTAL_LIMIT = 4096
# templates/numba/helpers/<name>.py.j2: @numba.njit helpers whole-function kernels call.
NB_HELPERS = (
    "matmul",
    "loop_softmax",
    "loop_softmax_cross_entropy",
    "loop_softmax_xent_grad",
)


class Unsupported(Exception):
    """An op without a nopython form: the function falls back to per-group kernels."""


# op -> whether a node of it, not fused into a group, has a nopython form:
# ``form(attrs, argument shapes, which arguments are integer arrays) -> bool``
NOPYTHON = {}


# op -> ``attrs(forms, n) -> dict``: what its nopython macro reads beyond its attributes
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
@nopython("transpose", "reshape", "slice", "concat", "zeros", "dimsize", "mse")
def _floats(at, shapes, ints):
    """Elementwise ops on arrays (not fused: e.g. beside an integer array) and shape
    ops: their NumPy forms, which Numba compiles as they are."""
    return not any(ints)


@nopython("softmax_cross_entropy", "softmax_xent_grad")
def _row_loop(at, shapes, ints):
    """templates/numba/helpers/loop_*.py.j2: (batch, classes) logits, int labels."""
    return (
        len(shapes[0]) == 2
        and len(shapes[1]) == 1
        and ints == [False, True]
        and at.get("ignore_index") is None
    )


@nopython("softmax")
def _rows(at, shapes, ints):
    """templates/numba/helpers/loop_softmax.py.j2: along the last axis of a matrix."""
    return not any(ints) and len(shapes[0]) == 2 and at["axis"] in (1, -1)


@nopython("matmul", attrs=lambda forms, n: _matmul_attrs(forms, n))
def _matmul(at, shapes, ints):  # np.dot or _matmul's loops: vectors and matrices
    return not any(ints) and all(1 <= len(s) <= 2 for s in shapes)


@nopython("mean", "max")
def _full_reduction(at, shapes, ints):
    # a 0-d value is a float in nopython code: it has no methods
    return (
        not any(ints)
        and len(shapes[0]) > 0
        and sorted(at["axis"]) == list(range(len(shapes[0])))
        and not at["keepdims"]
    )


@nopython("sum")
def _sum(at, shapes, ints):
    """A full sum, or one along a single axis of a matrix or more (Numba's np.sum takes
    one integer axis; keepdims by np.expand_dims)."""
    one_axis = len(shapes[0]) >= 2 and len(at["axis"]) == 1
    return _full_reduction(at, shapes, ints) or (not any(ints) and one_axis)


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
    """``loops``: _matmul's loops (two matrices) or np.dot; notes whether the module
    needs the register tiles."""
    A = forms.program.A
    loops = all(len(A.nodes[p][g.SHAPE]) == 2 for p in g.operands(A, n))
    if loops and matmul_tiles(forms.program, n):
        forms.tiles = True
    return {"loops": loops}


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

    def attrs(self, n, used):
        out = super().attrs(n, used)
        more = NOPYTHON_ATTRS.get(self.program.A.nodes[n][g.OP])
        if more is not None:
            out.update(more(self, n))
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
    kernel = WholeKernel(
        name=kname,
        types=fit(f"_{name.upper()}_TYPES = ", "(", types, ")", 0, tuple_=True),
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
        helpers=[h for h in NB_HELPERS if h in used],
    )
    prog.whole_kernels.append(kernel)
    if train:
        return Function(
            inner.name,
            inner.doc,
            [],
            inner.returns,
            _train_prologue(prog, kname, outs, arrays, state),
            names=inner.names,
            updated=True,
        )
    if name in tangents.DIRECTED:
        # after _unpack and _directions (codegen/tangents.py), which check everything
        prologue = _directed_call(prog, kname, name, outs, arrays, directions)
    else:
        prologue = _prologue(prog, name, kname, outs, arrays)
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


def _train_prologue(prog, kname, outs, arrays, state):
    """train_step's body after ``_next_step``: compile at the first call, then run the
    kernel on the arrays ``_unpack`` checked, the state arrays ``_train_arrays``
    checked and the step's scalars."""
    names = prog.train_names()
    helper = f"_{prog.optimizer.kind.helper}_scalars({names['lr']}, {names['t']})"
    args = [prog.namer[n] for n in arrays] + [expr for _, expr, _ in state]
    args.append(f"*{helper}")
    call = (
        assign(outs, f"{kname}", args, INDENT)
        if outs
        else bracketed(f"{kname}", args, "", INDENT)
    )
    when = (
        "after the backward pass (clipping needs every gradient)"
        if prog.optimizer.clip_norm
        else "each right after its gradient is complete"
    )
    comment = wrap_comment(
        f"one compiled function ({kname}) computes "
        + ", ".join(outs or ["nothing"])
        + f" and updates every param, {when}",
        width=LINE - INDENT - 2,
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
    lines += [
        f"if not {kname}.overloads:  # the first call compiles it",
        f"    _compile({kname}, _TRAIN_STEP_TYPES)",
        *(f"# {c}" for c in comment),
        call,
    ]
    return Code("\n".join(" " * INDENT + line for line in lines))


def _indexes(prog):
    """Whether the module has labels or indices to check (``_check_indices``)."""
    inputs, params, _ = prog.arrays()
    return bool(prog.index_checks(inputs + params))


def _directed_call(prog, kname, name, outs, arrays, directions):
    """jvp's or hvp's kernel call, after ``_unpack`` and ``_directions`` have checked
    the arrays (dtypes, shapes, aligned and writeable) and taken the directions:
    ``_taken`` makes the arrays C-contiguous too, as the kernel's types are."""
    idents = [Code(f"_taken({prog.namer[n]})") for n in arrays]
    idents += [prog.namer[n] for n in directions]
    call = (
        assign(outs, f"{kname}", idents, INDENT)
        if outs
        else bracketed(f"{kname}", idents, "", INDENT)
    )
    comment = wrap_comment(
        f"one compiled function ({kname}) computes " + ", ".join(outs),
        width=LINE - INDENT - 2,
    )
    lines = [
        f"if not {kname}.overloads:  # the first call compiles it",
        f"    _compile({kname}, _{name.upper()}_TYPES)",
        *(f"# {c}" for c in comment),
        call,
    ]
    return Code("\n".join(" " * INDENT + line for line in lines))


def _prologue(prog, name, kname, outs, arrays):
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
    call = (
        assign(outs, f"{kname}", idents, 2 * INDENT)
        if outs
        else bracketed(f"{kname}", idents, "", 2 * INDENT)
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
