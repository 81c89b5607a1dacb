"""The Numba backend: the NumPy module, with fused elementwise groups as ``@numba.njit`` loops.

Python decides what each function computes exactly as for NumPy (the same schedule,
:class:`graphgen.codegen.schedule.Schedule`, the same names and comments);
:func:`.fusion.find_groups` then picks maximal groups of broadcasting elementwise ops
(with the ``sum``/``mean``/``sum_to_shape`` reductions that follow them), and each group
becomes one kernel (:mod:`.kernels`): one loop nest over the group's shape, with the math
of every node in comments. Groups whose kernels are the same but for names and sizes
(the relu of every layer of a CNN) share one kernel, emitted once with generic names, so
Numba compiles it once. A whole function may instead be one compiled function
(:mod:`.whole`).
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
    module (:mod:`.vecmath`, in float64 or float32 as the module; log,
    softplus and pow stay NumPy calls); ``"numpy"`` (the default with ``parallel`` or
    ``fastmath``) leaves exp, log, tanh, sigmoid, softplus, pow (and in float32 sin, cos)
    to NumPy's SIMD loops; ``"numba"`` fuses them all as ``np.tanh(...)`` etc., which Numba
    vectorizes only with SVML (the default with SVML).
``cache``
    ``cache=_CACHE`` on every kernel (default), so a second process that imports the
    same module file loads machine code from ``__pycache__`` instead of compiling;
    ``_CACHE`` is true when the module is imported under its file's name (a kernel
    cached under one module name does not load under another).
``whole``
    Whole-function mode. ``None`` (default): when every op of ``forward`` /
    ``value_and_grad`` (``jvp``, ``hvp``; not ``vjp``) has a nopython form
    (:func:`.whole.nopython_ok`), that function becomes one ``@numba.njit`` function
    taking the arrays positionally and returning its results as a tuple (the same
    statements, matmuls via BLAS or a loop, the softmax cross-entropy as row loops, the
    fused groups' kernels called from compiled code); the Python-level function only
    runs ``_unpack`` (the argument checks; jvp and hvp also ``_directions``) and builds
    the result dict. Not with ``parallel``, nor (``None`` only) when a
    transcendental left to NumPy is large. ``True``: whenever possible; ``False``: never.
"""

from __future__ import annotations

import dataclasses
from functools import cache

import networkx as nx

from ... import dims, ops
from ... import graph as g
from ...codegen import tangents
from ...codegen.comments import safe_comment, wrap_comment
from ...codegen.layout import INDENT, assign, unpack_line
from ...codegen.layout import value as layout_value
from ...codegen.naming import Code
from ...codegen.program import Function, OpForms, Program, Statement
from ...codegen.render import Macros, environment, op_macros, recording
from ...codegen.schedule import Schedule
from ...errors import CodegenError
from ..numpy import memory
from . import fusion, kernels, vecmath, whole

# Elementwise ops whose NumPy loop is SIMD in each dtype (when the Numba backend has no
# SVML, it leaves them to NumPy rather than fuse a scalar libm call per element).
# NumPy's float64 sin and cos are scalar libm loops: fusing them costs nothing.
SIMD_IN_NUMPY = {
    "float64": frozenset(
        name
        for name, op in ops.REGISTRY.items()
        if op.transcendental and name not in ("sin", "cos")
    ),
    "float32": frozenset(
        name for name, op in ops.REGISTRY.items() if op.transcendental
    ),
}


# Numba helpers (templates/numba/helpers/) whose gradient runs the forward helper's loop
# kernel in a mode of its own (one compiled function for both directions: each loop
# nest is ~0.5-1 s of a cold first call), so a module that calls the first also needs
# the second's template.
NB_RUNS_KERNEL_OF = {"max_pool_grad": ("max_pool",), "avg_pool_grad": ("avg_pool",)}


# A fused group over a static vector (at most one axis longer than 1) of at most this
# many elements runs as NumPy statements at Python level: per-channel vectors (batch
# norm's scale and variance arithmetic and their gradients, 64 to 2048 elements) and a
# classifier's (1, 1000) bias add are microseconds of NumPy either way, and each of
# their kernels cost 0.15-0.4 s of a cold first call (ResNet-50: five such kernels;
# docs/numba.md, "Training modules"). Matrices stay fused, however small.
SMALL_VECTOR = 4096


def small_vector(grp):
    """Whether ``grp`` is left to NumPy at Python level (:data:`SMALL_VECTOR`)."""
    d = grp.domain
    return (
        all(dims.is_static(x) for x in d)
        and sum(x > 1 for x in d) <= 1
        and dims.prod(d) <= SMALL_VECTOR
    )


def svml_available():
    """Whether Numba vectorizes transcendentals with Intel SVML in this environment."""
    try:
        from numba.core import config

        return bool(config.USING_SVML)
    except ImportError:
        return False


def _env():
    env = environment("numba")
    if "pad" not in env.filters:
        env.filters["pad"] = lambda n: Code(" " * int(n))
    return env


@dataclasses.dataclass
class Entry:
    """One kernel: its name, the plan and names of the first group it serves (printed
    with that group's names when it serves no other), every group it serves and the
    last-axis extents of their plans."""

    name: Code
    plan: kernels.Plan
    names: dict
    served: tuple = ()
    lasts: tuple = ()

    def final_plan(self):
        """The plan to print: with the last axis's size read off an input when the
        groups it serves do not agree on the constant."""
        return self.plan if len(self.lasts) == 1 else self.plan.reading_last()


class Kernels:
    """The module's kernels, one per plan key, in the order their first group came."""

    def __init__(self):
        self.entries = {}  # plan key -> Entry
        self.names = set()  # every kernel name given out

    def snapshot(self):
        return (
            {k: dataclasses.replace(e) for k, e in self.entries.items()},
            set(self.names),
        )

    def restore(self, saved):
        self.entries, self.names = saved[0], saved[1]


class NumbaProgram(Program):
    """A :class:`~graphgen.codegen.program.Program` whose functions call fused loop
    kernels, or are one compiled function each."""

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
        optimizer=None,
    ):
        # cheap elementwise forward values the backward reads are recomputed there (as
        # in the NumPy module): a fused backward kernel recomputes them in its loop
        super().__init__(
            memory.recompute_in_backward(A, early=True), backend, source_name, optimizer
        )
        env = _env()
        self.forms = OpForms(
            self,
            op_macros(env, "numba"),
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
        self.exclude = vecmath.excluded(
            transcendentals, SIMD_IN_NUMPY[self.dtype], self.dtype
        )
        self.inline_math = transcendentals == "inline"
        self.row_ops = vecmath.ROW_OPS
        self.scalar = env.get_template("numba/scalar.j2").make_module(
            {"inline_math": self.inline_math}
        )
        self.kernels = Kernels()
        if whole not in (None, True, False):
            raise CodegenError(f"whole must be None, True or False, got {whole!r}")
        self.whole = whole
        self.nopython_macros = Macros(
            env.get_template("numba/nopython.j2").module, self.forms.macros
        )
        self.whole_kernels = []  # whole.WholeKernel, one per compiled function
        # whether some _matmul product may be wide enough for register tiles: if none
        # is, the module leaves _simd_matmul out and does not compile it (W1: 0.8 s)
        self.matmul_tiles = False

    # ---------------------------------------------------------------- functions
    def function(self, name, roots, doc, returns_fn):
        """One generated function: a whole-function kernel if possible (:mod:`.whole`),
        else NumPy statements and calls of fused loop kernels."""
        # vjp takes its cotangents through a prologue of its own (jvp's and hvp's
        # checks go before the kernel's call)
        vjp = name in tangents.DIRECTED and tangents.directions(self.A, name) is None
        if self.whole is not False and self.fuse and not self.parallel and not vjp:
            fn = whole.whole_function(self, name, roots, doc, returns_fn)
            if fn is not None:
                return fn
        return self.group_function(name, roots, doc, returns_fn)

    def step_function(self, name, roots, doc, returns_fn):
        """``train_step`` as one compiled function, like ``value_and_grad``, with each
        param's update (the optimizer's compiled loop, ``templates/numba/optim/``)
        inside it right after its gradient is complete, or with global-norm clipping
        after ``_clip_factor`` (:func:`.whole.whole_function`); else its statements at
        Python level with the updates among them (``Program.place_updates``)."""
        if self.whole is not False and self.fuse and not self.parallel:
            fn = whole.whole_function(self, name, roots, doc, returns_fn, train=True)
            if fn is not None:
                return fn
        return self.group_function(name, roots, doc, returns_fn)

    def group_function(self, name, roots, doc, returns_fn, forms=None, exclude=None):
        """The function as statements (in ``forms``: the Python level's, or a whole
        function's nopython forms) and calls of fused groups' kernels; ``exclude``: the
        elementwise ops it leaves to NumPy."""
        A = self.A
        forms = forms or self.forms
        exclude = self.exclude if exclude is None else exclude
        s = Schedule(self, roots)
        s.order = memory.place_recomputed(A, s.order)
        # compiled code frees each array after its last use itself, and refuses `del`
        python_level = forms is self.forms
        groups = (
            fusion.find_groups(A, s.order, roots, exclude=exclude) if self.fuse else []
        )
        if python_level:  # at Python level, small vectors stay NumPy code
            groups = [grp for grp in groups if not small_vector(grp)]
        if python_level and not self.parallel:
            # a lone arithmetic op stays NumPy code: a kernel of its own runs no faster
            # than NumPy's ufunc and costs a compilation (the GPT-2-small decoder's
            # bias adds, attention scale and loss scale: 5 of its 17 kernels)
            groups = [grp for grp in groups if not _lone_arithmetic(A, grp)]
        group_of = {n: grp for grp in groups for n in grp.nodes}
        units = _units(A, s.order, groups, group_of)
        s.count_uses()
        inline = {
            n
            for n in s.order
            if n not in group_of
            and s.foldable(n, veto=lambda n: s.consumer[n] in group_of, forms=forms)
        }
        plain = [n for n in s.order if n not in group_of]
        statements_of = []

        def attempt(inline):
            nodes = [
                n
                for u in units
                for n in ([u[1]] if u[0] == "n" else groups[u[1]].outputs)
            ]
            names = s.name_temporaries(nodes, inline)
            used, exprs = set(), {}
            for n in plain:
                args = [self.value(p, exprs, names) for p in g.operands(A, n)]
                exprs[n] = forms.render(n, args, used)
            statements_of[:] = [used]
            return plain, names, exprs

        names, exprs = s.settle(inline, attempt)
        used = statements_of[0]
        drops = self._drops(s, units, groups, inline) if python_level else None
        statements = []
        backward = False
        for i, u in enumerate(units):
            if u[0] == "n":
                n = u[1]
                if n in inline:
                    continue
                comments = self.notes.comments(n, names)
                expr = layout_value(exprs[n], INDENT + len(names[n]) + 3)
                stmts = [Statement(names[n], expr, comments, n, False)]
                stmts[0].covers = tuple(s.inlined_children(n, inline))
            else:
                grp = groups[u[1]]
                n = grp.nodes[0]
                stmts = self.kernel_call(grp, names, used, exclude)
                for st in stmts:
                    st.covers = tuple(grp.nodes)
            if A.nodes[n][g.ROLE] == g.BACKWARD and not backward:
                backward = True
                stmts[0].comments = self.notes.backward_header() + stmts[0].comments
            if drops and drops[i]:
                dels = [names[v] for v in drops[i]]
                stmts[-1].dels = unpack_line("del ", dels, "", INDENT)
            for st in stmts:
                commented = bool(st.comments) or st.call is not None
                st.blank_before = commented and bool(statements)
                statements.append(st)
        sizes = set(used)  # the sizes the statements read (not the return's)
        return Function(
            Code(name),
            [safe_comment(d) for d in doc],
            statements,
            returns_fn(names, used),
            sizes=sizes,
            names=names,
        )

    def _drops(self, s, units, groups, inline):
        """Per unit, the values to drop (``del``) after it: each value the function
        makes, after the last statement or kernel call that reads it (the NumPy module's
        plan, :func:`..numpy.memory.frees`). Without them every temporary of a training
        step, forward and backward, stayed alive until it returned."""
        A = self.A
        program = []  # (value, reads): a group's outputs, the first with its reads
        ends = []  # per unit, the index of its last entry in program
        for u in units:
            if u[0] == "n":
                if u[1] not in inline:
                    program.append((u[1], s.reads(u[1], inline)))
            else:
                grp = groups[u[1]]
                inside = set(grp.nodes)
                reads = []
                for n in grp.nodes:
                    for p in g.operands(A, n):
                        if p in inside:
                            continue
                        if p in inline:
                            new = s.reads(p, inline)
                        elif A.nodes[p][g.KIND] == g.OPNODE:
                            new = [p]
                        else:
                            new = []
                        reads.extend(q for q in new if q not in reads)
                program.append((grp.outputs[0], reads))
                program.extend((o, []) for o in grp.outputs[1:])
            ends.append(len(program) - 1)
        frees = memory.frees(program, s.root_set)
        out, start = [], 0
        for end in ends:
            out.append([v for i in range(start, end + 1) for v in frees[i]])
            start = end + 1
        return out

    # -------------------------------------------------------------------- kernels
    def arg_name(self, p, names):
        return self.namer[p] if p in self.namer else names[p]

    def kernel_call(self, grp, names, used, exclude):
        """The statements that run one fused group: its kernel's call (laid out when
        the kernel's name is final) and the DTYPE of each 0-d result."""
        p = kernels.plan(self, grp, exclude)
        key = kernels.plan_key(self, p)
        entry = self.kernels.entries.get(key)
        if entry is None:
            entry = Entry(self._kernel_name(grp, names), p, names)
            self.kernels.entries[key] = entry
        show = self.notes.display(names)
        served = (
            dims.fmt_shape(grp.domain),
            Code("/".join(show(n) for n in grp.outputs)),
        )
        if served not in entry.served:
            entry.served += (served,)
        if p.extents[-1:] and p.extents[-1] not in entry.lasts:
            entry.lasts += (p.extents[-1],)
        targets = [names[o] for o in grp.outputs]
        computed = [show(n) for n in grp.nodes if n in self.namer or n in names]
        args = kernels.call_args(self, p, names, used)
        # its comment names the kernel: made when the kernel's name is final
        st = Statement(Code(", ".join(targets)), Code(""), [], grp.nodes[0])
        st.call = (key, targets, args, dims.fmt_shape(grp.domain), computed)
        stmts = [st]
        for o in grp.outputs:
            if len(self.A.nodes[o][g.SHAPE]) == 0:  # numba returns Python floats
                expr = layout_value(f"DTYPE({names[o]})", INDENT + len(names[o]) + 3)
                stmts.append(Statement(names[o], expr, [], o))
        return stmts

    def _kernel_name(self, grp, names):
        show = self.notes.display(names)
        outs = [show(o) for o in grp.outputs]
        base = "_k_" + "_".join(outs[:3])
        if len(outs) > 3:
            base += f"_and_{len(outs) - 3}_more"
        base = base[:60]
        name, k = base, 2
        while name in self.kernels.names or name in self.namer.taken:
            name = f"{base}_{k}"
            k += 1
        self.kernels.names.add(name)
        return Code(name)

    def render_scalar(self, n, args) -> Code:
        """Op node ``n`` as scalar arithmetic inside a loop (templates/numba/scalar.j2)."""
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
    def scalar_uses_once(self, op):
        o = ops.get(op)
        if o.variadic:
            return True
        macro = getattr(self.scalar, op)
        probes = [Code(f"ARG{i}_") for i in range(len(o.args))]
        for n in self.A:
            if self.A.nodes[n].get(g.OP) == op:
                with recording(None):  # a probe: its helpers are not the module's
                    text = macro(*probes, self.attrs_code(n, set()))
                return all(text.count(p) == 1 for p in probes)
        return True

    @cache  # noqa: B019 - one Program per generate() call
    def scalar_ops(self):
        return frozenset(
            name for name in ops.REGISTRY if getattr(self.scalar, name, None)
        )

    # -------------------------------------------------------------------- module
    def helper_closure(self, called):
        """The NumPy program's closure, with the helpers whose loop kernel another
        runs (:data:`NB_RUNS_KERNEL_OF`)."""
        runs = {d for h in called for d in NB_RUNS_KERNEL_OF.get(str(h), ())}
        return super().helper_closure(set(called) | runs)

    def context(self):
        ctx = super().context()
        final = self._final_names()
        for fn in ctx["functions"]:
            _lay_out_calls(fn.statements, final)
        for k in self.whole_kernels:
            _lay_out_calls(k.statements, final)
        texts = []
        with recording() as used:
            for key, entry in self.kernels.entries.items():
                if len(entry.served) == 1:
                    kt = kernels.KernelText(
                        self, entry.final_plan(), entry.names, entry.name, None
                    )
                    kt.doc = kernels.own_doc(self, kt)
                else:  # one kernel for several groups: generic names, what it serves
                    doc = kernels.shared_doc(entry.served)
                    plan = entry.final_plan()
                    kt = kernels.KernelText(self, plan, None, final[key], doc)
                texts.append(kt.render(self.kernel_template))
        used = used.union(*(f.helpers for f in ctx["functions"]))
        helpers = whole.nb_helpers(used)
        if self.inline_math:  # the row helpers' exps as vecmath's vectorized rows
            used = used.union(*(whole.NB_VECMATH.get(h, ()) for h in helpers))
        ctx["kernels"] = (
            [
                Code(
                    self.env.get_template(f"numba/helpers/{h}.py.j2")
                    .render(tiles=self.matmul_tiles, inline_math=self.inline_math)
                    .rstrip("\n")
                )
                for h in helpers
            ]
            + texts
            + [self._whole_text(k) for k in self.whole_kernels]
        )
        ctx["lazy_compile"] = bool(self.whole_kernels)
        ctx["cache"] = self.cache
        if self.whole_kernels:
            ctx["kernels"].insert(
                0,
                Code(
                    self.env.get_template("numba/helpers/compile.py.j2")
                    .render()
                    .rstrip("\n")
                ),
            )
        ctx["kernels"][:0] = vecmath.helpers(
            [f"_{h}" for h in used if h.startswith("nb_")], self.dtype
        )
        return ctx

    def _final_names(self):
        """Each kernel's name: a kernel several groups share gets a generic one."""
        final = {}
        for key, entry in self.kernels.entries.items():
            if len(entry.served) == 1:
                final[key] = entry.name
                continue
            shared, k = Code("_k_shared"), 2
            while shared in self.kernels.names or shared in self.namer.taken:
                shared, k = Code(f"_k_shared{k}"), k + 1
            self.kernels.names.add(shared)
            final[key] = shared
        return final

    def _whole_text(self, k):
        return Code(
            self.function_template.render(
                decorator=k.decorator,
                types=k.types,
                signature=k.signature,
                checks=k.checks,
                doc=k.doc,
                statements=k.statements,
                returns=k.returns,
            ).rstrip("\n")
        )


def _lay_out_calls(statements, final):
    """Each kernel call laid out as ruff does, for its kernel's final name."""
    for st in statements:
        if st.call is None:
            continue
        key, targets, args, domain, computed = st.call
        st.comments = st.comments + wrap_comment(
            f"one fused loop over {domain} ({final[key]}) computes "
            + ", ".join(computed)
        )
        laid = assign(targets, final[key], args, INDENT)
        target, expr = laid.split(" = ", 1)
        st.target, st.expr = Code(target), Code(expr)


def _lone_arithmetic(A, grp):
    """Whether fused group ``grp`` is one op and no transcendental."""
    return (
        len(grp.nodes) == 1 and not ops.get(A.nodes[grp.nodes[0]][g.OP]).transcendental
    )


def _units(A, order, groups, group_of):
    """The function's units in order: one per fused group, one per other op node,
    scheduled as a DAG (each in the place of its first node)."""
    index = {n: i for i, n in enumerate(order)}

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
    return list(nx.lexicographical_topological_sort(U, key=lambda u: first[u]))
