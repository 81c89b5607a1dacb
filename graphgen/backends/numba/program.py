"""The Numba backend: the NumPy module, with fused elementwise groups as ``@numba.njit`` loops.

Python decides what each function computes exactly as for NumPy (same naming, same
schedule, same comments); :func:`graphgen.passes.fusion.find_groups` then picks maximal
groups of broadcasting elementwise ops (with the ``sum``/``mean``/``sum_to_shape``
reductions that follow them), and each group becomes one kernel: one loop nest over the
group's shape, with the math of every node in comments. Groups whose kernels are the same
but for names and sizes (the relu of every layer of a CNN) share one kernel, emitted once
with generic names, so Numba compiles it once. Inside the loops over the leading
axes, the group's nodes run in *stages*, each one loop over the last axis that LLVM
vectorizes (:meth:`NumbaProgram._stages`); reductions accumulate per column of the last
axis into one float64 array.
Everything else (matmul, shape ops, the softmax family, losses) stays NumPy code in the
Python-level function: BLAS does matmuls faster than a loop, and NumPy's vectorized
transcendentals beat Numba's scalar ones on machines without Intel SVML (docs/numba.md).

Options (``generate(G, backend="numba", parallel=..., fastmath=..., cache=...)``):

``parallel``
    Split the outer loop of each kernel into ``numba.get_num_threads()`` chunks run with
    ``numba.prange`` (reductions over the outer axis go to per-chunk partial sums).
``fastmath``
    Compile kernels with ``fastmath=True`` (reassociation; results differ in the last bits).
``transcendentals``
    ``"inline"`` (the default without SVML, unless ``parallel`` or ``fastmath``) fuses
    exp, tanh, sigmoid, sin and cos as branch-free vectorizable helpers emitted into the
    module (graphgen/backends/numba_math.py, in float64 or float32 as the module; log,
    softplus and pow stay NumPy calls); ``"numpy"`` (the default with ``parallel`` or
    ``fastmath``) leaves exp, log, tanh, sigmoid, softplus, pow (and in float32 sin, cos)
    to NumPy's SIMD loops; ``"numba"`` fuses them all as ``np.tanh(...)`` etc., which Numba
    vectorizes only with SVML (the default with SVML).
``cache``
    ``cache=True`` on every kernel (default), so a second process that imports the same
    module file loads machine code from ``__pycache__`` instead of compiling.
``whole``
    Whole-function mode. ``None`` (default): when every op of ``forward`` /
    ``value_and_grad`` has a nopython form (:meth:`NumbaProgram.nopython_ok`), that
    function becomes one ``@numba.njit`` function taking the arrays positionally and
    returning its results as a tuple (the same statements, matmuls via BLAS or a loop,
    the softmax cross-entropy as row loops, the fused groups' kernels called from compiled
    code); the Python-level function only runs ``_unpack`` (the argument checks) and
    builds the result dict. Not with ``parallel``, nor (``None`` only) when a
    transcendental left to NumPy is large. ``True``: whenever possible; ``False``: never.
"""

from __future__ import annotations

import dataclasses
import re
from functools import cache

import networkx as nx

from ... import dims, ops
from ... import graph as g
from ...codegen.comments import docstring_lines, safe_comment, wrap_comment
from ...codegen.layout import (
    INDENT,
    LINE,
    assign,
    bracketed,
    condition_check,
    fit,
    literal,
    named,
    statement,
    wrap,
)
from ...codegen.layout import value as _rhs
from ...codegen.naming import Code, Namer
from ...codegen.program import Function, Program, Statement
from ...codegen.render import Macros, environment, op_macros
from ...errors import CodegenError
from . import fusion
from . import vecmath as numba_math

# Elementwise ops whose scalar libm call in a Numba loop is several times slower than
# NumPy's SIMD loop when Numba has no SVML (docs/numba.md has the measurements).
TRANSCENDENTAL = frozenset(
    {"exp", "log", "tanh", "sigmoid", "softplus", "sin", "cos", "pow"}
)
# NumPy's float64 sin and cos are scalar libm loops too: fusing them costs nothing.
SIMD_IN_NUMPY = {"float64": TRANSCENDENTAL - {"sin", "cos"}, "float32": TRANSCENDENTAL}


# Whole-function mode (auto) is off when a function computes one of the transcendentals
# NumPy runs faster (SIMD_IN_NUMPY) on more than this many elements (symbolic sizes count
# as 1): a compiled loop calls libm once per element, ~13-58x slower than NumPy's SIMD loop.
WHOLE_TRANSCENDENTAL_LIMIT = 4096
# Elementwise ops on arrays that stay array expressions in nopython code (not fused: e.g.
# when an operand is an integer array).
NOPYTHON_ARRAY_OPS = frozenset(
    {
        "neg",
        "add",
        "sub",
        "mul",
        "div",
        "maximum",
        "minimum",
        "add_n",
        "abs",
        "sqrt",
        "exp",
        "log",
        "tanh",
        "sin",
        "cos",
        "square",
        "relu",
        "sign",
    }
)
# A stage of a kernel (one loop over the last axis) touches at most this many arrays
# besides the kernel's own row buffer and accumulator (NumbaProgram._stages).
STAGE_ARRAYS = 4
# ... and calls transcendentals on at most this many distinct arguments: past that, LLVM
# stopped vectorizing W5's stage (16 sin and 16 cos: 1.3 ms a call, 4 per stage 0.25 ms)
STAGE_TRANSCENDENTALS = 4
# float32 kernels' partial sums: rows added in float32 before they go into float64
ACC_BLOCK = 16
# In a staged kernel these apply to a whole row by one call of a shared loop
# (numba_math's _nb_<op>_row) instead of being inlined into the stage: W4's 30 inlined
# vectorized tanh loops overflowed the instruction cache (2.1-3.0 ns per element and
# layer, against 1.1 ns for 30 calls of one loop).
ROW_CALLS = frozenset({"tanh", "exp", "sigmoid"})
# templates/numba/helpers/<name>.py.j2: @numba.njit helpers whole-function kernels call.
NB_HELPERS = ("matmul", "loop_softmax_cross_entropy", "loop_softmax_xent_grad")


class _Unsupported(Exception):
    """An op without a nopython form: the function falls back to per-group kernels."""


def svml_available():
    """Whether Numba vectorizes transcendentals with Intel SVML in this environment."""
    try:
        from numba.core import config

        return bool(config.USING_SVML)
    except ImportError:
        return False


def _env():
    env = environment()
    if "pad" not in env.filters:
        env.filters["pad"] = lambda n: Code(" " * int(n))
    return env


class NumbaProgram(Program):
    """A :class:`~graphgen.codegen.Program` whose functions call fused loop kernels."""

    def __init__(
        self,
        A,
        backend,
        source_name,
        *,
        parallel=False,
        fastmath=False,
        cache=True,
        fuse=True,
        transcendentals=None,
        whole=None,
    ):
        super().__init__(A, backend, source_name)
        env = _env()
        self.macros = Macros(
            env.get_template("numba/ops.j2").module,
            op_macros(env, "numpy"),
        )
        self.kernel_template = env.get_template("numba/kernel.py.j2")
        self.function_template = env.get_template("numba/function.py.j2")
        self.parallel, self.fastmath, self.cache, self.fuse = (
            parallel,
            fastmath,
            cache,
            fuse,
        )
        if transcendentals is None:
            # the inline helpers vectorize in the staged kernels; parallel kernels keep
            # the element-at-a-time layout (per-chunk partial sums), where they would
            # not, and fastmath (which Numba passes on to the helpers it compiles for a
            # kernel) folds their rounding tricks away
            transcendentals = (
                "numba"
                if svml_available()
                else "numpy"
                if parallel or fastmath
                else "inline"
            )
        if transcendentals not in ("numba", "numpy", "inline"):
            raise CodegenError(
                f"transcendentals must be 'inline', 'numba' or 'numpy', got "
                f"{transcendentals!r}"
            )
        self.dtype = A.graph.get("dtype", "float64")
        self.exclude = numba_math.excluded(
            transcendentals, SIMD_IN_NUMPY[self.dtype], self.dtype
        )
        self.inline_math = transcendentals == "inline"
        self.scalar = env.get_template("numba/scalar.j2").make_module(
            {"inline_math": self.inline_math}
        )
        # generic kernel text -> (name, the first group's text, the groups it serves)
        self.kernels = {}
        self.kernel_names = set()
        # (statement, targets, kernel name, args) of each kernel call, for context()
        self.kernel_calls = []
        self._init_whole(env, whole)

    # ------------------------------------------------------------------ schedule
    def _group_function(self, name, roots, doc, returns_fn):
        """The Python-level function: NumPy statements and calls of fused loop kernels."""
        A = self.A
        need = self.needed(roots)
        order = [n for n in g.schedule(A, need) if A.nodes[n][g.KIND] == g.OPNODE]
        index = {n: i for i, n in enumerate(order)}
        groups = (
            fusion.find_groups(A, order, roots, exclude=self.exclude)
            if self.fuse
            else []
        )
        group_of = {n: grp for grp in groups for n in grp.nodes}

        # units: one per fused group, one per other op node; scheduled as a DAG
        def unit(n):
            return ("g", groups.index(group_of[n])) if n in group_of else ("n", n)

        U = nx.DiGraph()
        first = {}
        for n in order:
            u = unit(n)
            U.add_node(u)
            first[u] = min(first.get(u, index[n]), index[n])
            for p in g.operands(A, n):
                if p in index and unit(p) != u:
                    U.add_edge(unit(p), u)
        units = list(nx.lexicographical_topological_sort(U, key=lambda u: first[u]))

        uses = {n: 0 for n in need}
        consumer = {}
        for n in order:
            for p in g.operands(A, n):
                uses[p] += 1
                consumer[p] = n
        root_set = set(roots)
        inline = {
            n
            for n in order
            if n not in group_of
            and not self.is_named(n)
            and uses[n] == 1
            and n not in root_set
            and consumer[n] not in group_of
            and self._uses_once(A.nodes[consumer[n]][g.OP])
        }
        plain = [n for n in order if n not in group_of]
        while True:
            names, k = {}, 1
            temps = Namer()
            temps.taken = set(self.namer.taken)
            for u in units:
                nodes = [u[1]] if u[0] == "n" else groups[u[1]].outputs
                for n in nodes:
                    if n in inline:
                        continue
                    if self.is_named(n):
                        names[n] = self.namer[n]
                    else:
                        names[n] = temps.fresh(f"t{k}")
                        k += 1
            used, exprs = set(), {}
            for n in plain:
                args = [self.value(p, exprs, names) for p in g.operands(A, n)]
                exprs[n] = self.render_op(n, args, used)
            too_long = self.longest_inlined(plain, inline, names, exprs)
            if not too_long:
                break
            inline.difference_update(too_long)

        statements = []
        backward = False
        for u in units:
            if u[0] == "n":
                n = u[1]
                if n in inline:
                    continue
                comments = self.notes.comments(n, names)
                expr = _rhs(exprs[n], INDENT + len(names[n]) + 3)
                stmts = [Statement(names[n], expr, comments, n, False)]
            else:
                grp = groups[u[1]]
                n = grp.nodes[0]
                stmts = self.kernel_call(grp, names, used)
            if A.nodes[n][g.ROLE] == g.BACKWARD and not backward:
                backward = True
                stmts[0].comments = self.notes.backward_header() + stmts[0].comments
            for s in stmts:
                s.blank_before = bool(s.comments) and bool(statements)
                statements.append(s)
        return Function(
            Code(name),
            [safe_comment(d) for d in doc],
            statements,
            returns_fn(names, used),
        )

    # -------------------------------------------------------------------- kernels
    def _arg_name(self, p, names):
        return self.namer[p] if p in self.namer else names[p]

    def kernel_call(self, grp, names, used):
        """The Python-level statements that run one fused group."""
        kname, args = self.kernel(grp, names, used)
        targets = [names[o] for o in grp.outputs]
        show = self.notes.display(names)
        computed = [show(n) for n in grp.nodes if n in self.namer or n in names]
        text = (
            f"one fused loop over {dims.fmt_shape(grp.domain)} ({kname}) computes "
            + ", ".join(computed)
        )
        # on one line for now: laid out by context(), when the kernel's name is final
        call = Code(f"{kname}({', '.join(args)})")
        stmts = [
            Statement(Code(", ".join(targets)), call, wrap_comment(text), grp.nodes[0])
        ]
        self.kernel_calls.append((stmts[0], targets, kname, args))
        for o in grp.outputs:
            if len(self.A.nodes[o][g.SHAPE]) == 0:  # numba returns Python floats
                expr = _rhs(f"DTYPE({names[o]})", INDENT + len(names[o]) + 3)
                stmts.append(Statement(names[o], expr, [], o))
        return stmts

    def kernel(self, grp, names, used):
        """The kernel of ``grp``, its name and call args: one kernel per distinct body.

        The kernel is rendered twice: as it reads (the group's names, its math in
        comments) and with generic names and no comments, the key. Groups with the same
        key (e.g. the relu of every layer of a CNN) share one kernel, so Numba compiles it
        once; :meth:`context` emits a kernel that serves several groups in its generic form
        under a generic name, with the groups it serves in its docstring.
        """
        text, call_args = self._render_kernel(grp, names, used, False)
        key, _ = self._render_kernel(grp, names, used, True)
        show = self.notes.display(names)
        served = (
            dims.fmt_shape(grp.domain),
            Code("/".join(show(n) for n in grp.outputs)),
        )
        entry = self.kernels.get(key)
        if entry is None:
            entry = (self._kernel_name(grp, names), text, ())
        if served not in entry[2]:
            entry = (entry[0], entry[1], entry[2] + (served,))
        self.kernels[key] = entry
        return entry[0], call_args

    def _render_kernel(self, grp, names, used, generic):
        """The text of ``grp``'s kernel (named KERNEL_NAME) and its call args; ``generic``:
        parameters and locals named a0, t1, ..., no comments (the key for sharing)."""
        A = self.A
        R = len(grp.domain)
        kn = Namer()
        params = list(grp.inputs)
        if generic:
            kn.taken = {"DTYPE", "np", "numba"}
            pnames = {p: kn.fresh(f"a{k}") for k, p in enumerate(params)}
        else:
            kn.taken = set(self.namer.taken) | set(names.values())
            pnames = {p: self._arg_name(p, names) for p in params}
        pcode = [pnames[p] for p in params]
        call_args = [
            Code(f"DTYPE({self._arg_name(p, names)})")
            if len(A.nodes[p][g.SHAPE]) == 0
            else self._arg_name(p, names)
            for p in params
        ]
        idx = [kn.fresh(f"i{k}") for k in range(R)]
        ext = [kn.fresh(f"n{k}") for k in range(R)]
        chunked = self.parallel
        if chunked:
            nt, c = kn.fresh("nt"), kn.fresh("c")

        # the extent of each axis, read off an input that has it; a size the spec fixes
        # is (also) a constant, which LLVM can use (the caller has checked it): see below
        extents = []
        for k, d in enumerate(grp.domain):
            expr = None
            for p in params:
                s = A.nodes[p][g.SHAPE]
                j = k - (R - len(s))
                if 0 <= j < len(s) and s[j] == d:
                    expr = Code(f"{pnames[p]}.shape[{j}]")
                    break
            const = Code(str(d)) if isinstance(d, int) else None
            if expr is None and const is None:  # a size only an attribute names
                pcode.append(ext[k])  # (broadcast_to): pass it
                call_args.append(self.dim(d, used))
                continue
            extents.append((ext[k], const, expr))
        if chunked:  # Numba's thread count, read by the caller (cache=True-safe)
            pcode.append(nt)
            call_args.append(Code("numba.get_num_threads()"))
            extents.append((nt, None, Code(f"min({nt}, max(1, {ext[0]} // 8))")))

        def index_of(shape):
            s = [
                Code("0") if d == 1 else idx[R - len(shape) + j]
                for j, d in enumerate(shape)
            ]
            return Code("[" + ", ".join(s) + "]") if s else Code("")

        def element(p):
            a = A.nodes[p]
            if a[g.KIND] == g.CONST:  # a float32 one in float32 modules, as in NumPy
                value = literal(float(a[g.VALUE]))  # (a bare literal is a float64 in
                if self.dtype == "float32":  # Numba, which widens the arithmetic)
                    return Code(f"np.float32({value})")
                return value
            shape = a[g.SHAPE]
            return Code(pnames[p] + index_of(shape)) if shape else pnames[p]

        # which members get a local, which inline into their single consumer
        in_group = set(grp.nodes)
        count, cons = {}, {}
        for n in grp.nodes:
            for p in g.operands(A, n):
                if p in in_group:
                    count[p] = count.get(p, 0) + 1
                    cons[p] = n
        out_set = set(grp.outputs)
        staged = not chunked
        row_calls = self._row_calls(grp) if staged else set()
        stage = (
            self._stages(grp, pnames, row_calls)
            if staged
            else dict.fromkeys(grp.nodes, 0)
        )
        inline = {
            n
            for n in grp.members
            if n not in out_set
            and (generic or n not in self.namer)
            and count.get(n, 0) == 1
            and stage[cons[n]] == stage[n]
            and (cons[n] in grp.tails or self._scalar_uses_once(A.nodes[cons[n]][g.OP]))
        }
        # members read by a later stage: one row of the kernel's row buffer each
        slot = {}
        for n in grp.nodes:
            for p in g.operands(A, n):
                if p in in_group and stage[p] != stage[n] and p not in slot:
                    slot[p] = len(slot)
            if n in row_calls and n not in slot:
                slot[n] = len(slot)
        rows, accs = kn.fresh("rows"), kn.fresh("acc")
        local = {}
        k = 1
        out_set = set(grp.outputs)
        for n in grp.members:
            if n in inline:
                continue
            if generic:
                local[n] = kn.fresh(f"t{k}")
                k += 1
            elif n in self.namer:
                local[n] = self.namer[n]
            elif n in out_set:
                local[n] = names[n]
            else:
                local[n] = kn.fresh(f"t{k}")
                k += 1
        exprs = {}
        show_names = dict(names)
        show_names.update({n: v for n, v in local.items() if n not in self.namer})

        arrays, scalars, after, body, returns = [], [], [], [], []
        out_array = {}
        for o in grp.outputs:
            if o in grp.tails and generic:
                out_array[o] = kn.fresh(f"r{len(out_array)}")
            elif o in grp.tails:
                out_array[o] = self.namer[o] if o in self.namer else names[o]
            else:
                out_array[o] = kn.fresh(f"{local[o]}_out")

        reduced_outer = {}
        tail_index = {}
        for t in grp.tails:
            op, at = A.nodes[t][g.OP], A.nodes[t][g.ATTRS]
            if op == "sum_to_shape":
                lead, keep = ops.defs.sum_to_shape_axes(grp.domain, tuple(at["shape"]))
                axes, kept = set(lead) | set(keep), set(keep)
            else:
                axes = set(at["axis"])
                kept = axes if at["keepdims"] else set()
            parts = [
                Code("0") if i in kept else idx[i]
                for i in range(R)
                if i not in axes or i in kept
            ]
            tail_index[t] = (axes, parts)
            reduced_outer[t] = chunked and 0 in axes
        # tails that keep no axis but the last (or none): one row of the kernel's float64
        # accumulator each, indexed by the last axis, so that `acc[k, i] += v` vectorizes
        # (a scalar `+=` is a reduction LLVM may not reorder)
        acc_slot = {}
        if staged:
            for t in grp.tails:
                kept_idx = [c for c in tail_index[t][1] if c != "0"]
                if kept_idx in ([], [idx[R - 1]]):
                    acc_slot[t] = len(acc_slot)
        # float32: the loops add into float32 partial sums (8 lanes per vector, where a
        # float64 accumulator halves every vector of the stage), which go into the
        # float64 accumulator every ACC_BLOCK rows: each partial sum adds at most
        # ACC_BLOCK values, about the error of NumPy's pairwise float32 sums
        blocked = bool(acc_slot) and R >= 2 and self.dtype == "float32"
        part, nrow = (kn.fresh("part"), kn.fresh("nrow")) if blocked else (None, None)
        for o in grp.outputs:
            arr = out_array[o]
            if o in acc_slot:
                axes, parts = tail_index[o]
                k = acc_slot[o]
                tail_index[o] = (axes, [Code(str(k)), idx[R - 1]], part or accs)
                shape = self.shape_code_ext(A.nodes[o][g.SHAPE], ext, grp, o)
                if any(c != "0" for c in parts):  # keeps the last axis
                    conv = f"{accs}[{k}].astype(DTYPE)"
                    if len(A.nodes[o][g.SHAPE]) != 1:
                        conv += f".reshape({shape})"
                elif parts:  # keeps no axis, but keepdims
                    conv = f"np.full({shape}, {accs}[{k}].sum(), dtype=DTYPE)"
                else:
                    conv = f"{accs}[{k}].sum()"
                after.append(Code(f"{arr} = {conv}"))
                if A.nodes[o][g.OP] == "mean":
                    count_ = " * ".join(ext[i] for i in sorted(axes)) or "1"
                    after.append(Code(f"{arr} /= {count_}"))
            elif o in grp.tails:
                axes, parts = tail_index[o]
                shape = self.shape_code_ext(A.nodes[o][g.SHAPE], ext, grp, o)
                if reduced_outer[o]:
                    part = kn.fresh(f"{arr}_part")
                    inner = shape[1:-1].rstrip(",")
                    pshape = Code(f"({nt}, {inner})" if inner else f"({nt},)")
                    arrays.append((part, Code("zeros"), pshape))
                    after.append(
                        Code(
                            f"{arr} = {part}.sum(axis=0)"
                            if parts
                            else f"{arr} = {part}.sum()"
                        )
                    )
                    tail_index[o] = (axes, [c] + parts, part)
                elif parts:
                    arrays.append((arr, Code("zeros"), shape))
                    tail_index[o] = (axes, parts, arr)
                else:
                    scalars.append(arr)
                    tail_index[o] = (axes, parts, arr)
                if A.nodes[o][g.OP] == "mean":
                    count_ = " * ".join(ext[i] for i in sorted(axes)) or "1"
                    after.append(Code(f"{arr} /= {count_}"))  # x /= a * b: x / (a * b)
            else:
                shape = Code("(" + ", ".join(ext) + ("," if R == 1 else "") + ")")
                arrays.append((arr, Code("empty"), shape))
            returns.append(arr)

        if slot:
            arrays.insert(
                0, (rows, Code("empty"), Code(f"({len(slot)}, {ext[R - 1]})"))
            )
        if acc_slot:
            acc_shape = Code(f"({len(acc_slot)}, {ext[R - 1]})")
            if blocked:
                arrays.insert(0, (part, Code("zeros"), acc_shape))
                after[:0] = [Code(f"{accs} += {part}")]
            arrays.insert(0, (accs, Code("zeros"), acc_shape))
        here = Code("[" + ", ".join(idx) + "]")
        bodies = [[] for _ in range(max(stage.values(), default=0) + 1)]
        pre = [[] for _ in bodies]  # row calls before a stage's loop
        order = [m for m in grp.members]
        for t in grp.tails:  # a tail right after the member it reads
            order.insert(order.index(g.operands(A, t)[0]) + 1, t)
        depth = INDENT * (1 + R + (1 if chunked else 0))  # the loop bodies' indentation

        def line(head, rhs):  # a statement of a loop body, laid out as ruff does
            return Code(head + _rhs(rhs, depth + len(head), depth))

        for n in order:
            body = bodies[stage[n]]
            args = []
            for p in g.operands(A, n):
                if p in exprs and stage[p] != stage[n]:
                    args.append(Code(f"{rows}[{slot[p]}, {idx[R - 1]}]"))
                elif p in exprs:
                    args.append(wrap(exprs[p]) if p in inline else local[p])
                else:
                    args.append(wrap(element(p)))
            if n in grp.tails:
                axes, parts, arr = tail_index[n]
                target = Code(arr + ("[" + ", ".join(parts) + "]" if parts else ""))
                comments = [] if generic else self.notes.comments(n, show_names)
                body.append(
                    Statement(target, line(f"{target} += ", args[0]), comments, n)
                )
                continue
            comments = [] if generic else self.notes.comments(n, show_names)
            if n in row_calls:  # the whole row, before the stage's loop
                op = A.nodes[n][g.OP]
                src = g.operands(A, n)[0]
                call = f"_nb_{op}_row({rows}[{slot[src]}], {rows}[{slot[n]}])"
                pre[stage[n]].append(Statement(Code(""), Code(call), comments, n))
                # read straight from the row wherever it is used: no loop of its own
                exprs[n] = local[n] = Code(f"{rows}[{slot[n]}, {idx[R - 1]}]")
                if n in out_set:
                    body.append(
                        Statement(
                            out_array[n],
                            line(f"{out_array[n]}{here} = ", local[n]),
                            [],
                            n,
                        )
                    )
                continue
            exprs[n] = self.render_scalar(n, args)
            if n in inline:
                continue
            body.append(
                Statement(local[n], line(f"{local[n]} = ", exprs[n]), comments, n)
            )
            if n in out_set:
                body.append(
                    Statement(
                        out_array[n], line(f"{out_array[n]}{here} = ", local[n]), [], n
                    )
                )
            if n in slot:
                target = Code(f"{rows}[{slot[n]}, {idx[R - 1]}]")
                body.append(Statement(target, line(f"{target} = ", local[n]), [], n))
        for body in bodies:
            for s in body:  # re-wrap the comments for the loop body's indentation
                if s.comments:
                    s.comments = wrap_comment(
                        " ".join(c.strip() for c in s.comments), width=LINE - depth - 2
                    )
            for s in body[1:]:
                s.blank_before = bool(s.comments)
        for calls in pre:
            for s in calls:
                if s.comments:
                    s.comments = wrap_comment(
                        " ".join(c.strip() for c in s.comments) + " (a whole row)",
                        width=LINE - depth + 2,
                    )

        loops = []
        if chunked:
            loops.append(Code(f"for {c} in numba.prange({nt}):"))
            loops.append(
                Code(
                    f"for {idx[0]} in range({c} * {ext[0]} // {nt}, "
                    f"({c} + 1) * {ext[0]} // {nt}):"
                )
            )
        else:
            loops.append(Code(f"for {idx[0]} in range({ext[0]}):"))
        for i in range(1, R):
            loops.append(Code(f"for {idx[i]} in range({ext[i]}):"))
        stages = [{"header": None, "body": bodies[0], "pre": []}]
        if staged:  # the last axis's loop once per stage, inside the other axes' loops
            last = loops.pop()
            stages = [  # a stage with only row calls has no loop
                {"header": last if b else None, "body": b, "pre": c}
                for b, c in zip(bodies, pre)
            ]

        options = ["cache=True"] if self.cache else []
        options.append('error_model="numpy"')
        if self.fastmath:
            options.append("fastmath=True")
        if self.parallel:
            options.append("parallel=True")
        show = self.notes.display(show_names)
        computed = [show(n) for n in grp.nodes if n in self.namer]
        doc = (
            [Code("KERNEL_DOC")]
            if generic
            else docstring_lines(
                f"One loop nest over {dims.fmt_shape(grp.domain)} computing "
                + (", ".join(computed) or "temporaries")
                + "."
            )
        )
        # a fixed size of the last axis is written as a constant where the kernel has a
        # row buffer or an accumulator (with a constant row length LLVM proves their rows
        # do not overlap); other sizes are read off the arrays, so that kernels doing the
        # same on different sizes are one kernel (compiled once)
        extents = [
            (
                e,
                const
                if expr is None
                or const is not None
                and e == ext[R - 1]
                and (slot or acc_slot)
                else expr,
            )
            for e, const, expr in extents
        ]
        ctx = {
            "options": Code(", ".join(options)),
            "name": Code("KERNEL_NAME"),
            "params": pcode,
            "doc": doc,
            "extents": extents,
            "arrays": [
                statement(
                    f"{ident} = np.{init}({shape}, dtype="
                    + ("np.float64)" if ident == accs else "DTYPE)")
                )
                for ident, init, shape in arrays
            ],
            "scalars": scalars,
            "loops": loops,
            "stages": stages,
            "acc": accs,
            "block": (
                {"part": part, "nrow": nrow, "size": ACC_BLOCK} if blocked else None
            ),
            "depth": depth,
            "after": [statement(line) for line in after],
            "returns": bracketed("return ", returns, "", INDENT, parens=False),
        }
        return Code(self.kernel_template.render(**ctx).rstrip("\n")), call_args

    def _row_calls(self, grp):
        """The members of a staged kernel computed by a row call: a ROW_CALLS op of a
        member (whose row the previous stage leaves in the row buffer), inline math."""
        A, members = self.A, set(grp.members)
        if not self.inline_math:
            return set()
        return {
            n
            for n in grp.members
            if A.nodes[n][g.OP] in ROW_CALLS
            and A.nodes[n][g.OP] not in self.exclude
            and g.operands(A, n)[0] in members
        }

    def _stages(self, grp, pnames, row_calls=frozenset()):
        """Split a group's nodes into stages, each one loop over the domain's last axis.

        The loop of one stage is what LLVM vectorizes: a new stage starts before a
        transcendental that reads (through this stage) another one, so that a chain of them
        (W4's 30 ``tanh``) runs one link over a whole row at a time instead of one element
        down the whole chain; and before a node that would make the stage touch more than
        :data:`STAGE_ARRAYS` arrays besides the kernel's own row buffer and accumulator
        (each pair of them costs LLVM a run-time overlap check, and past a few it gives up
        vectorizing). Values a later stage reads go through the row buffer. Returns
        ``{node: stage}``; a tail is in the stage of the member it reads.
        """
        A = self.A
        stage, depth = {}, {}
        # filled: how many nodes the current stage holds
        cur, touched, calls, filled = 0, set(), set(), 0
        # the stage of a transcendental's arguments: sin(p) and cos(p) share one, where
        # LLVM computes their common range reduction once
        by_args = {}
        members = set(grp.members)
        outs = set(grp.outputs)
        for n in grp.members:
            ins = g.operands(A, n)
            arrays = {
                p
                for p in ins
                if p not in members
                and A.nodes[p][g.KIND] != g.CONST
                and A.nodes[p][g.SHAPE]
            }
            if n in outs:
                arrays.add(n)
            trans = A.nodes[n][g.OP] in TRANSCENDENTAL
            key = tuple(ins)
            if n in row_calls:  # computed before its stage's loop, from a row
                if filled:
                    cur, touched, calls = cur + 1, set(), set()
                stage[n], depth[n], filled = cur, 0, 1
                touched |= arrays
                continue
            if trans and key in by_args:
                stage[n], depth[n] = by_args[key]
                filled += stage[n] == cur
                continue
            d = max(
                (depth[p] for p in ins if p in members and stage[p] == cur), default=0
            )
            if filled and (
                trans
                and (d >= 1 or len(calls) >= STAGE_TRANSCENDENTALS)
                or len(touched | arrays) > STAGE_ARRAYS
            ):
                cur, touched, calls, d, filled = cur + 1, set(), set(), 0, 0
            stage[n], depth[n] = cur, d + trans
            filled += 1
            touched |= arrays
            if trans:
                calls.add(key)
                by_args[key] = (cur, depth[n])
        for t in grp.tails:
            stage[t] = stage[g.operands(A, t)[0]]
        return stage

    def shape_code_ext(self, shape, ext, grp, node):
        """A tail's shape in terms of the kernel's extents (its axes are domain axes)."""
        A = self.A
        at = A.nodes[node][g.ATTRS]
        R = len(grp.domain)
        if A.nodes[node][g.OP] == "sum_to_shape":
            lead, keep = ops.defs.sum_to_shape_axes(grp.domain, tuple(at["shape"]))
            dims_ = [Code("1") if i in keep else ext[i] for i in range(len(lead), R)]
        else:
            axes = set(at["axis"])
            dims_ = [
                Code("1") if i in axes else ext[i]
                for i in range(R)
                if i not in axes or at["keepdims"]
            ]
        return Code("(" + ", ".join(dims_) + ("," if len(dims_) == 1 else "") + ")")

    def _kernel_name(self, grp, names):
        show = self.notes.display(names)
        outs = [show(o) for o in grp.outputs]
        base = "_k_" + "_".join(outs[:3])
        if len(outs) > 3:
            base += f"_and_{len(outs) - 3}_more"
        base = base[:60]
        name, k = base, 2
        while name in self.kernel_names or name in self.namer.taken:
            name = f"{base}_{k}"
            k += 1
        self.kernel_names.add(name)
        return Code(name)

    def render_scalar(self, n, args) -> Code:
        op = self.A.nodes[n][g.OP]
        macro = getattr(self.scalar, op, None)
        if macro is None:
            raise CodegenError(
                f"the numba backend cannot fuse op {op!r}",
                node=n,
                source=g.source_of(self.A),
            )
        at = self.attrs_code(n, set())
        if ops.get(op).variadic:
            return Code(macro(list(args), at).strip())
        return Code(macro(*args, at).strip())

    @cache  # noqa: B019 - one Program per generate() call
    def _scalar_uses_once(self, op):
        o = ops.get(op)
        if o.variadic:
            return True
        macro = getattr(self.scalar, op)
        probes = [Code(f"ARG{i}_") for i in range(len(o.args))]
        for n in self.A:
            if self.A.nodes[n].get(g.OP) == op:
                text = macro(*probes, self.attrs_code(n, set()))
                return all(text.count(p) == 1 for p in probes)
        return True

    # ---------------------------------------------------------- whole-function mode
    def _init_whole(self, env, whole):
        """``whole``: None (auto), True or False; see :meth:`function`."""
        if whole not in (None, True, False):
            raise CodegenError(f"whole must be None, True or False, got {whole!r}")
        self.whole = whole
        self._whole = False  # rendering a whole-function kernel right now
        self.nopython_macros = Macros(
            env.get_template("numba/nopython.j2").module, self.macros
        )
        self.whole_kernels = []  # rendered @numba.njit functions, one per function
        self.nb_helpers = []  # helpers of templates/numba/helpers/ they call
        # whether some _matmul product may be wide enough for register tiles: if none
        # is, the module leaves _simd_matmul out and does not compile it (W1: 0.8 s)
        self.matmul_tiles = False
        self._once_whole = {}

    def function(self, name, roots, doc, returns_fn):
        """One generated function: a whole-function kernel if possible, else groups.

        In whole-function mode the Python-level function checks its arguments (``_unpack``)
        and calls one ``@numba.njit`` function that computes everything (the same
        statements, with the non-fused ops in nopython forms and the fused groups' kernels
        called from compiled code), then builds the result dict. Used when every op has a
        nopython form (:meth:`nopython_ok`), ``parallel`` is off, and (auto mode) no
        transcendental that NumPy does faster is large (:data:`WHOLE_TRANSCENDENTAL_LIMIT`).
        """
        if self.whole is not False and self.fuse and not self.parallel:
            fn = self._whole_function(name, roots, doc, returns_fn)
            if fn is not None:
                return fn
        return self._group_function(name, roots, doc, returns_fn)

    def _whole_function(self, name, roots, doc, returns_fn):
        A = self.A
        need = self.needed(roots)
        for n in need:
            a = A.nodes[n]
            if a[g.KIND] in (g.INPUT, g.PARAM) and not a[g.SHAPE]:
                return None  # 0-d arrays are not scalars in nopython code
            if (
                self.whole is None
                and a[g.KIND] == g.OPNODE
                and a[g.OP] in self.exclude
                and dims.prod([d for d in a[g.SHAPE] if isinstance(d, int)])
                > WHOLE_TRANSCENDENTAL_LIMIT
            ):
                return None  # NumPy's SIMD loop beats a scalar libm call per element
        saved = (self.exclude, dict(self.kernels), set(self.kernel_names))
        self._whole, self.exclude = True, frozenset()
        try:
            inner = self._group_function(name, roots, doc, returns_fn)
        except _Unsupported:
            self.kernels, self.kernel_names = saved[1], saved[2]
            return None
        finally:
            self._whole, self.exclude = False, saved[0]
        if self.whole is None and self._one_kernel_call(inner):
            # nothing to save but one dispatch, and compiling the kernel into a caller
            # optimizes its code a second time (W4: 17 s against 7 s; docs/numba.md)
            self.kernels, self.kernel_names = saved[1], saved[2]
            return None

        kname = Code(f"_{name}_kernel")
        while kname in self.namer.taken or kname in self.kernel_names:
            kname = Code(kname + "_")
        self.kernel_names.add(kname)
        # what the Python level reads back: the op nodes among the roots, by name
        outs = []
        for r in roots:
            if A.nodes[r][g.KIND] == g.OPNODE:
                ident = self._root_name(r, inner)
                if ident not in outs:
                    outs.append(ident)
        # 0-d values come back as Python floats: DTYPE them (the loss of value_and_grad
        # is returned as float() anyway)
        scalar_outs = [
            self._root_name(r, inner)
            for r in dict.fromkeys(roots)
            if A.nodes[r][g.KIND] == g.OPNODE
            and not A.nodes[r][g.SHAPE]
            and not (
                name == "value_and_grad"
                and r == self.loss
                and r not in self.grads.values()
            )
        ]
        arrays = [n for n in g.schedule(A) if A.nodes[n][g.KIND] in (g.INPUT, g.PARAM)]
        symbols = []
        for n in arrays:
            for d in A.nodes[n][g.SHAPE]:
                if isinstance(d, str) and d not in symbols:
                    symbols.append(d)
        text = "\n".join(s.expr for s in inner.statements)
        # every array comes in, typed: Numba's dispatcher rejects a wrong dtype, rank or
        # type (TypeError) and the kernel checks the sizes (ValueError), so the Python
        # level skips _unpack on the fast path and asks _check only after a failure
        params = [self.namer[n] for n in arrays]
        checks, bound = [], set()
        for n in arrays:
            ident, shape = self.namer[n], A.nodes[n][g.SHAPE]
            conds = []
            for i, d in enumerate(shape):
                if isinstance(d, str) and d not in bound:
                    bound.add(d)
                    checks.append(
                        Code(f"{self.namer[('dim', d)]} = {ident}.shape[{i}]")
                    )
                else:
                    conds.append(f"{ident}.shape[{i}] != {self.dim(d, set())}")
            if conds:
                checks.append(condition_check(conds, n))
        rest = "\n".join(checks) + "\n" + text
        checks = [
            c
            for c in checks
            if " = " not in c.split("\n")[0]
            or re.search(rf"\b{c.split(' = ')[0]}\b", rest.replace(c, ""))
        ]
        types = [
            f"numba.{'int64' if A.nodes[n][g.DTYPE] == 'int64' else A.graph['dtype']}"
            f"[{', '.join([':'] * (len(A.nodes[n][g.SHAPE]) - 1) + ['::1'])}]"
            for n in arrays
        ]
        types_name = Code(f"_{name.upper()}_TYPES")
        # compiled at the first call of the function (_compile), not at import
        options = ["cache=True"] if self.cache else []
        options.append('error_model="numpy"')
        if self.fastmath:
            options.append("fastmath=True")
        doc_ = [
            Code(line)
            for line in docstring_lines(
                f"Everything {name}() computes, compiled as one function: the arrays in, "
                + ", ".join(outs)
                + " out."
            )
        ]
        self.whole_kernels.append(
            Code(
                self.function_template.render(
                    decorator=bracketed("@numba.njit", options, "", 0),
                    types=fit(f"{types_name} = ", "(", types, ")", 0, tuple_=True),
                    signature=bracketed(f"def {kname}", params, ":", 0),
                    checks=checks,
                    doc=doc_,
                    statements=inner.statements,
                    returns=bracketed("return ", outs, "", INDENT, parens=False)
                    if outs
                    else Code("return ()"),
                ).rstrip("\n")
            )
        )
        for h in NB_HELPERS:
            if re.search(rf"\b_{h}\(", text) and h not in self.nb_helpers:
                self.nb_helpers.append(h)

        args = [f"arrays[{literal(n)}]" for n in arrays]
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
        pad = " " * INDENT
        prologue = Code(
            f"{pad}if arrays.keys() != DTYPES.keys():\n"
            f"{pad}    _fail(arrays)\n"
            f"{pad}if not {kname}.overloads:  # the first call compiles it\n"
            f"{pad}    _compile({kname}, {types_name})\n"
            f"{pad}try:\n"
            + "".join(f"{pad}    # {c}\n" for c in comment)
            + f"{pad}    {call}\n"
            f"{pad}except (TypeError, ValueError):  # a wrong type, rank or size, or strides\n"
            f"{pad}    _check(arrays)  # raises the ValueError naming a wrong array\n"
            f"{pad}    if all(a.flags.c_contiguous for a in arrays.values()):\n"
            f"{pad}        raise\n"
            f"{pad}    # the kernel takes C-contiguous arrays: retry with contiguous copies\n"
            f"{pad}    return {name}(**{{k: np.ascontiguousarray(a) for k, a in "
            "arrays.items()})"
        )
        stmts = []
        for o in scalar_outs:  # numba hands back Python floats
            expr = _rhs(f"DTYPE({o})", INDENT + len(o) + 3)
            stmts.append(Statement(o, expr, [], roots[0]))
        return Function(
            inner.name,
            inner.doc,
            stmts,
            inner.returns,
            prologue,
        )

    def _one_kernel_call(self, fn):
        """Whether ``fn``'s statements are one fused kernel's call (and the DTYPE
        conversions of its 0-d results)."""
        kernels = {name for name, _, _ in self.kernels.values()}
        calls = [s for s in fn.statements if s.expr.split("(", 1)[0] in kernels]
        rest = [s for s in fn.statements if s not in calls]
        return len(calls) == 1 and all(s.expr.startswith("DTYPE(") for s in rest)

    def _root_name(self, r, fn):
        if r in self.namer:
            return self.namer[r]
        for s in fn.statements:
            if s.node == r:
                return s.target
        raise CodegenError(f"internal: no name for root {r!r}")

    def nopython_ok(self, n):
        """Whether op node ``n`` (not fused into a group) has a nopython form."""
        A = self.A
        a = A.nodes[n]
        op, shape = a[g.OP], a[g.SHAPE]
        ins = g.operands(A, n)
        shapes = [A.nodes[p][g.SHAPE] for p in ins]
        for p in ins:
            b = A.nodes[p]
            if b[g.KIND] == g.CONST and b[g.SHAPE]:
                return False
        ints = [A.nodes[p][g.DTYPE] not in g.FLOAT_DTYPES for p in ins]
        if op in ("softmax_cross_entropy", "softmax_xent_grad"):
            return len(shapes[0]) == 2 and len(shapes[1]) == 1 and ints == [False, True]
        if any(ints):
            return False
        if ops.get(op).elementwise:
            return not shape and op in self._scalar_ops() or op in NOPYTHON_ARRAY_OPS
        if op == "matmul":
            return all(1 <= len(s) <= 2 for s in shapes)
        if op in ("sum", "mean", "max"):
            # a 0-d value is a float in nopython code: it has no methods
            return (
                len(shapes[0]) > 0
                and sorted(a[g.ATTRS]["axis"]) == list(range(len(shapes[0])))
                and not a[g.ATTRS]["keepdims"]
            )
        return op in (
            "transpose",
            "reshape",
            "slice",
            "concat",
            "zeros",
            "dimsize",
            "mse",
        )

    @cache  # noqa: B019 - one Program per generate() call
    def _scalar_ops(self):
        return frozenset(
            name for name in ops.REGISTRY if getattr(self.scalar, name, None)
        )

    def render_op(self, n, args, used, as_bool=False) -> Code:
        if not self._whole:
            return super().render_op(n, args, used, as_bool)
        if not self.nopython_ok(n):
            raise _Unsupported(n)
        a = self.A.nodes[n]
        if ops.get(a[g.OP]).elementwise and not a[g.SHAPE]:  # a scalar in nopython code
            return Code(self.render_scalar(n, [wrap(x) for x in args]))
        saved, self.macros = self.macros, self.nopython_macros
        try:
            return super().render_op(n, args, used, as_bool)
        finally:
            self.macros = saved

    def attrs_code(self, n, used):
        out = super().attrs_code(n, used)
        if self._whole and self.A.nodes[n][g.OP] == "matmul":
            out["loops"] = all(
                len(self.A.nodes[p][g.SHAPE]) == 2 for p in g.operands(self.A, n)
            )
            # tiles are two 512-bit registers wide (matmul.py.j2, _matmul's rule)
            width = self.A.nodes[n][g.SHAPE][-1]
            tile = {"float64": 16, "float32": 32}[self.dtype]
            fits = not isinstance(width, int) or width % tile == 0 or width >= 4 * tile
            if out["loops"] and fits:
                self.matmul_tiles = True
        return out

    def _uses_once(self, op):
        if not self._whole:
            return super()._uses_once(op)
        if op not in self._once_whole:
            o = ops.get(op)
            once = True
            if not o.variadic:
                probes = [Code(f"ARG{i}_") for i in range(len(o.args))]
                for n in self.A:
                    if self.A.nodes[n].get(g.OP) == op and self.nopython_ok(n):
                        text = self.render_op(n, probes, set())
                        once = once and all(text.count(p) == 1 for p in probes)
            self._once_whole[op] = once
        return self._once_whole[op]

    # -------------------------------------------------------------------- module
    def context(self):
        ctx = super().context()
        renames, texts = {}, []
        for key, (name, text, served) in self.kernels.items():
            if len(served) == 1:
                texts.append(named(text, name))
                continue
            # one kernel for several groups: generic names, the groups in its docstring
            shared, k = Code("_k_shared"), 2
            while shared in self.kernel_names or shared in self.namer.taken:
                shared, k = Code(f"_k_shared{k}"), k + 1
            self.kernel_names.add(shared)
            renames[name] = shared
            by_domain = {}
            for domain, outs in served:
                by_domain.setdefault(domain, []).append(outs)
            doc = docstring_lines(
                f"One loop nest shared by {len(served)} fused groups: computing "
                + "; ".join(f"{', '.join(o)} over {d}" for d, o in by_domain.items())
                + "."
            )
            texts.append(
                Code(named(key, shared).replace("KERNEL_DOC", "\n    ".join(doc), 1))
            )
        if renames:
            pat = re.compile(r"\b(" + "|".join(map(re.escape, renames)) + r")\b")
            ctx["functions"] = _renamed(ctx["functions"], pat, renames)
            self.whole_kernels = [_renamed(k, pat, renames) for k in self.whole_kernels]
        # the kernel calls laid out for their kernels' final names (a shared kernel's is
        # only known now), at the Python level and in whole-function kernels (where
        # function.py.j2 has put them one line each); every other statement was laid out
        # where it was made
        pad = " " * INDENT
        for st, targets, kname, args in self.kernel_calls:
            kname = renames.get(kname, kname)
            flat = f"{', '.join(targets)} = {kname}({', '.join(args)})"
            laid = assign(targets, kname, args, INDENT)
            target, expr = laid.split(" = ", 1)
            st.target, st.expr = Code(target), Code(expr)
            if laid != flat:
                self.whole_kernels = [
                    Code(k.replace(f"\n{pad}{flat}\n", f"\n{pad}{laid}\n"))
                    for k in self.whole_kernels
                ]
        ctx["kernels"] = (
            [
                Code(
                    self.env.get_template(f"numba/helpers/{h}.py.j2")
                    .render(tiles=self.matmul_tiles)
                    .rstrip("\n")
                )
                for h in NB_HELPERS
                if h in self.nb_helpers
            ]
            + texts
            + self.whole_kernels
        )
        ctx["lazy_compile"] = bool(self.whole_kernels)
        if self.whole_kernels:
            ctx["kernels"].insert(
                0, Code(self.env.get_template("numba/helpers/compile.py.j2").render())
            )
        ctx["kernels"][:0] = numba_math.helpers(ctx["kernels"], self.dtype)
        return ctx


def _renamed(value, pat, renames):
    """``value`` (Code, lists of it, Functions and Statements) with the kernel names
    ``renames`` maps replaced (whole identifiers only)."""
    if isinstance(value, Code):
        return Code(pat.sub(lambda m: renames[m.group(1)], value))
    if isinstance(value, list):
        return [_renamed(v, pat, renames) for v in value]
    if isinstance(value, (Function, Statement)):
        for f in dataclasses.fields(value):
            if f.name != "node":
                setattr(value, f.name, _renamed(getattr(value, f.name), pat, renames))
    return value


def fusable_ops():
    """The ops the backend can put into a loop nest (elementwise ones, and the tails)."""
    return [name for name, op in ops.REGISTRY.items() if op.elementwise] + list(
        fusion.TAIL_OPS
    )
