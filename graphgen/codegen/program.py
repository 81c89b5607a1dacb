"""The program of one generated module: its names, statements and tables.

:class:`Program` is what every backend shares: it names every value once (one
:class:`~graphgen.codegen.naming.Namer`), lowers op attributes to code, builds the tables
(``INPUTS``, ``PARAMS``, ...), the argument checks (``_unpack``) and the ``vjp`` wrapper,
and the template context. A backend subclass says how one function's statements are made
(:meth:`Program.function`). Python decides *what* to emit; the templates in
``templates/<backend>/`` decide *how it looks*. Every value a template prints is a
:class:`~graphgen.codegen.naming.Code` string or a number, checked by the environment's
``finalize``; spec names only ever reach the output as ``repr()`` literals.
"""

from __future__ import annotations

import dataclasses
import weakref

from .. import dims, ops
from .. import graph as g
from ..errors import CodegenError
from ..notes import partial
from ..version import __version__
from . import attrs, optim, tangents
from .attrs import constant_key
from .comments import Comments, safe_comment, wrap_comment
from .layout import (
    INDENT,
    LINE,
    bracketed,
    condition,
    fit,
    literal,
    subscript,
    unpack_line,
    wrap,
)
from .naming import Code, Namer, node_names
from .render import (
    environment,
    fill_pieces,
    note_helpers,
    op_macros,
    pieces,
    printed_form,
    reads_attributes,
    recording,
    slots,
)
from .schedule import temp_stem

UNPACK_NAME = 24  # longer names get a short alias inside _unpack

# Helpers a module defines when its code calls them (templates/numpy/helpers/<name>.py.j2),
# with the helpers they call. Op families outside defs.py add theirs to ops.HELPERS.
HELPERS = ops.HELPERS


def stored_weights(A):
    """Names of the arrays a module reads from its ``.npz``: params, then constants.

    Reads only what a spec sets, so it works on a graph before ``prepare`` too."""
    params = [
        n
        for n in A
        if g.node_dicts(A)[n].get(g.KIND) == g.PARAM
        and g.node_dicts(A)[n].get(g.INIT) == "weights"
    ]
    consts = sorted(
        {
            g.node_dicts(A)[n][g.ATTRS]["key"]
            for n in A
            if g.node_dicts(A)[n].get(g.OP) in ops.REGISTRY
            and ops.get(g.node_dicts(A)[n][g.OP]).kept
            and (g.node_dicts(A)[n].get(g.ATTRS) or {}).get("key") is not None
        }
    )
    return params, consts


# ----------------------------------------------------------------------- literals


# ---------------------------------------------------------------------- the program


@dataclasses.dataclass
class Statement:
    target: Code
    expr: Code
    comments: list
    node: str
    blank_before: bool = False
    accumulate: list = dataclasses.field(default_factory=list)  # v += term, in place
    dels: list = dataclasses.field(default_factory=list)  # dropped after their last use
    # a kernel call, laid out once its kernel's name is final: (key, targets, args)
    call: tuple | None = None
    note: Code | None = None  # a comment at the end of the line
    covers: tuple = ()  # the other nodes it computes (folded temporaries, a kernel's)


@dataclasses.dataclass
class Function:
    name: str
    doc: list
    statements: list
    returns: Code
    prologue: Code | None = None  # replaces the ``_unpack(arrays)`` line when set
    signature: Code = dataclasses.field(default_factory=lambda: Code("**arrays"))
    sizes: set = dataclasses.field(default_factory=set)  # symbolic sizes it reads
    helpers: set = dataclasses.field(default_factory=set)  # the helpers it calls
    names: dict = dataclasses.field(default_factory=dict)  # node -> its name in code
    unpacks: bool = True  # calls _unpack (a whole-function kernel checks for itself)
    # train_step: its statements or prologue run the optimizer updates already
    updated: bool = False


class OpForms:
    """How op nodes read as code in one dialect: each op a macro of the backend's
    templates (the first of ``macros`` that defines it), given the op's arguments and its
    attributes as :meth:`Program.attrs_code` lowers them.

    A macro that only prints its arguments (:func:`~.render.printed_form`: ``tanh``,
    ``add``, ``matmul``, ...) is rendered once per op and distinct attributes, with
    placeholders for the arguments, and each node's text is those pieces with its
    arguments pasted in (the same text: a Jinja macro call per statement was a fifth of
    a big module's codegen)."""

    def __init__(self, program, macros):
        # weak: no cycle, so the program and its graph go as soon as the module is
        # rendered (before CPython's compile of it, the peak of a compile's memory)
        self.program = weakref.proxy(program)
        self.macros = macros
        self._once = {}
        # op -> (its macro, whether it is a printed form, whether its text ignores the
        # attributes when the node has none)
        self._macro = {}
        self._pieces = {}  # (op, lowered attributes) -> (pieces, helpers it calls)

    def attrs(self, n, used):
        return self.program.attrs_code(n, used)

    def macro(self, op, n):
        """``op``'s macro, whether it is a printed form (:func:`.render.printed_form`),
        and whether the attributes need not be lowered for a node that has none: the
        macro does not read ``at``, and their lowering is the default one (no
        ``@lowers``, no dialect's own :meth:`attrs`), which makes nothing of nothing."""
        found = self._macro.get(op)
        if found is None:
            macro = getattr(self.macros, op, None)
            if macro is None:
                raise CodegenError(
                    f"the {self.program.backend} backend has no template for op {op!r}",
                    node=n,
                    source=g.source_of(self.program.A),
                )
            env, template = self.program.env, self.macros.template_of(op)
            printed = not ops.get(op).variadic and printed_form(env, template, op)
            bare = (
                printed
                and not reads_attributes(env, template, op)
                and op not in attrs.LOWERINGS
                and type(self).attrs is OpForms.attrs
                and self.program.attrs_code.__func__ is Program.attrs_code
            )
            found = self._macro[op] = (macro, printed, bare)
        return found

    def render(self, n, args, used, as_bool=False) -> Code:
        a = g.node_dicts(self.program.A)[n]
        op = a[g.OP]
        macro, printed, bare = self.macro(op, n)
        if bare and not a[g.ATTRS]:  # what lowering would give: no attributes
            form = self._printed(op, macro, len(args), {})
            return Code(fill_pieces(form, [wrap(x) for x in args]).strip())
        at = self.attrs(n, used)
        o = ops.get(op)
        if o.mask:
            at["as_bool"] = as_bool
        if o.variadic:
            text = macro([wrap(x) for x in args], at)
        elif printed:
            form = self._printed(op, macro, len(args), at)
            text = fill_pieces(form, [wrap(x) for x in args])
        else:
            text = macro(*[wrap(x) for x in args], at)
        return Code(text.strip())

    def _printed(self, op, macro, count, at):
        """The pieces of printed form ``op`` for attributes ``at`` (rendered the first
        time), with the helpers its text calls noted as used. Unhashable attributes
        are rendered each time."""
        key = (op, count, tuple((k, v.__class__, v) for k, v in at.items()))
        try:
            found = self._pieces.get(key)
        except TypeError:  # a list among the attributes: no key
            key, found = None, None
        if found is None:
            with recording(merge=False) as helpers:
                text = macro(*slots(count), at)
            found = (pieces(text), tuple(sorted(helpers)))
            if key is not None:
                self._pieces[key] = found
        if found[1]:
            note_helpers(found[1])
        return found[0]

    def uses_once(self, op):
        """Whether the op's template mentions each argument once (so that a temporary
        folds into it without being computed twice)."""
        if op not in self._once:
            self._once[op] = self._mentions_each_argument_once(op)
        return self._once[op]

    def probe(self, n):
        """Whether node ``n`` may stand for its op when probing the template."""
        return True

    # every node of the op is probed (True), or the first stands for all: attributes do
    # not change how often an argument appears in a NumPy form
    probe_every = False

    def _mentions_each_argument_once(self, op):
        o = ops.get(op)
        if o.variadic:
            return True
        probes = [Code(f"ARG{i}_") for i in range(len(o.args))]
        A = self.program.A
        once = True
        for n in A:
            if g.node_dicts(A)[n].get(g.OP) == op and self.probe(n):
                with recording(None):  # a probe: its helpers are not the module's
                    text = self.render(n, probes, set())
                once = once and all(text.count(p) == 1 for p in probes)
                if not self.probe_every:
                    break
        return once


class Program:
    """Everything the templates need for one module, all of it vetted ``Code``."""

    def __init__(self, A, backend, source_name, optimizer=None):
        with g.paused_gc():
            self.A = A
            # train_step and init_state (codegen/optim.py) when set: an
            # optim.Optimizer
            self.optimizer = optimizer
            self.backend = backend
            self.env = environment(backend)
            # the module's schedule, once: A does not change while the program is
            # built
            self.order = g.schedule(A)
            nodes = g.node_dicts(A)
            # every op node's arguments (graph.operands), read once: a big module's
            # codegen asks hundreds of thousands of times. Shared lists: callers do
            # not modify them.
            self.args = {
                n: g.operands(A, n) for n in self.order if nodes[n][g.KIND] == g.OPNODE
            }
            self._leaves = {}  # input, param or constant node -> how it reads (value)
            self.namer = node_names(A, self.order)
            self.forms = OpForms(self, op_macros(self.env, "numpy"))
            self.source_name = source_name
            self.loss = A.graph.get("loss")
            self.grads = A.graph.get("grads") or {}
            self.programs = {}
            self.notes = Comments(A, self.namer, self.loss)
            # temporaries' names: t1, t2, ... unless the module has a name like them
            self.temp_stem = temp_stem(self.namer.taken)

    def operands(self, n):
        """``graph.operands(A, n)``: :attr:`args` for an op node (a shared list, not to
        be modified)."""
        args = self.args.get(n)
        return g.operands(self.A, n) if args is None else args

    # names ------------------------------------------------------------------
    def is_named(self, n):
        return n in self.namer

    def dim(self, d, used) -> Code:
        for s in dims.symbols(d):
            used.add(s)
        return Code(dims.render(d, lambda s: self.namer[("dim", s)]))

    def shape_code(self, shape, used) -> Code:
        items = [self.dim(d, used) for d in shape]
        return Code("(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")")

    # expressions --------------------------------------------------------------
    def attrs_code(self, n, used):
        """The op's attributes as the templates want them (:mod:`.attrs`)."""
        return attrs.lower(self, n, used)

    def render_op(self, n, args, used, as_bool=False) -> Code:
        return self.forms.render(n, args, used, as_bool)

    def uses_once(self, op):
        return self.forms.uses_once(op)

    def value(self, n, exprs, names) -> Code:
        """How value ``n`` reads in an expression: a statement's name, a folded
        temporary's expression, an input's or param's name, a constant's literal."""
        code = names.get(n) or exprs.get(n)  # op nodes only: never an input or const
        if code:
            return code
        code = self._leaves.get(n)
        if code is None:
            a = g.node_dicts(self.A)[n]
            if a[g.KIND] == g.CONST:
                code = literal(a[g.VALUE])
            elif a[g.KIND] in (g.INPUT, g.PARAM):
                code = self.namer[n]
            else:
                return exprs[n]  # not computed yet: a KeyError, as ever
            self._leaves[n] = code
        return code

    # the module ----------------------------------------------------------------
    def arrays(self):
        """The module's inputs (but cotangents and tangents), params and outputs, in
        order."""
        A = self.A
        nodes = self.order
        cotangents = A.graph.get("cotangents") or {}  # output -> its cotangent input
        directions = tangents.direction_inputs(A)  # jvp's tangents, hvp's vectors
        inputs = [
            n
            for n in nodes
            if g.node_dicts(A)[n][g.KIND] == g.INPUT
            and n not in cotangents.values()
            and n not in directions
        ]
        params = [n for n in nodes if g.node_dicts(A)[n][g.KIND] == g.PARAM]
        return inputs, params, list(A.graph["outputs"])

    def index_checks(self, arrays):
        """The ``_in_range`` calls of ``_check_indices``: one per int64 array and axis
        it indexes (``Op.indices``: class labels, gather indices), its bound read off
        the arrays' shapes (a symbolic size from the first array that has it)."""
        A = self.A
        where = {}  # symbol -> how _check_indices reads it
        for n in arrays:
            for i, d in enumerate(g.node_dicts(A)[n][g.SHAPE]):
                if isinstance(d, str) and dims.symbols(d) == [d]:
                    where.setdefault(d, f"arrays[{literal(n)}].shape[{i}]")
        calls = {}
        order = {m: i for i, m in enumerate(self.order)}  # g.schedule(A), computed once
        for n in arrays:
            if g.node_dicts(A)[n][g.DTYPE] != "int64":
                continue
            for s in sorted(A.successors(n), key=order.__getitem__):
                a = g.node_dicts(A)[s]
                op = ops.get(a[g.OP]) if a[g.KIND] == g.OPNODE else None
                if op is None or op.indices is None:
                    continue
                shapes = [g.node_dicts(A)[p][g.SHAPE] for p in g.operands(A, s)]
                arg, size, wraps = op.indices(shapes, a[g.ATTRS])
                if arg not in A.edges[n, s][g.POS]:
                    continue
                # a tuple of sizes: entry j of each index (its last axis) indexes an
                # axis of size size[j] (gather_nd's index tuples)
                parts = (
                    list(enumerate(size)) if isinstance(size, tuple) else [(None, size)]
                )
                for part, sz in parts:
                    self._index_call(calls, where, n, s, op, a, part, sz, wraps)
        return list(calls.values())

    def _index_call(self, calls, where, n, s, op, a, part, size, wraps):
        if any(sym not in where for sym in dims.symbols(size)):
            raise CodegenError(
                f"the indices {n!r} index an axis of size {size!r}, which no "
                "input's shape declares",
                node=s,
            )
        hi = dims.render(size, where.__getitem__)
        lo = f"-{wrap(hi)}" if wraps else "0"
        what = ("indices" if wraps else "class labels") + f" of {op.name} node {s!r}"
        skip = op.skips(a[g.ATTRS]) if op.skips is not None else None
        key = (n, part, lo, hi, skip)
        if key in calls:
            return
        if part is not None:
            what += f" (entry {part} of each index)"
            fname, extra = "_in_range_at", [str(part)]
        elif skip is not None:
            fname, extra = "_in_range_or", [literal(skip)]
        else:
            fname, extra = "_in_range", []
        calls[key] = bracketed(
            fname, ["arrays", literal(n), lo, hi, literal(what), *extra], "", INDENT
        )

    def out_expr(self, n, names):
        """How value ``n`` reads where a function returns it."""
        a = g.node_dicts(self.A)[n]
        if a[g.KIND] == g.CONST:
            return Code(f"np.asarray({literal(a[g.VALUE])}, dtype=DTYPE)")
        return self.namer[n] if n in self.namer else names[n]

    def functions(self):
        """``forward``, ``value_and_grad`` (or ``vjp``) when the graph has a loss, then
        the forward-mode functions ``jvp`` and ``hvp`` where asked for (:mod:`.tangents`)."""
        return self.reverse_functions() + tangents.functions(self)

    def reverse_functions(self):
        """``forward``, then ``value_and_grad`` (or ``vjp``) when the graph has a loss."""
        A = self.A
        inputs, params, outputs = self.arrays()
        functions = [
            self.make_function(
                "forward",
                outputs,
                ["The forward pass: every output, by name."],
                lambda names, used: fit(
                    "return ",
                    "{",
                    [f"{literal(o)}: {self.out_expr(o, names)}" for o in outputs],
                    "}",
                    INDENT,
                ),
            )
        ]
        if self.loss is None:
            return functions
        wrt = list(A.graph["wrt"])
        if A.graph.get("cotangents"):
            functions.append(self.vjp_function(wrt, inputs + params))
            return functions
        roots = [self.loss] + [v for v in self.grads.values() if v is not None]
        doc = [
            f"The loss {self.loss!r} and its gradient with respect to each name in WRT.",
            "",
            "Returns ``(loss, {name: gradient})``; gradients are fresh arrays.",
        ]
        functions.append(
            self.make_function(
                "value_and_grad",
                roots,
                doc,
                lambda names, used: fit(
                    f"return float({self.out_expr(self.loss, names)}), ",
                    "{",
                    self.gradients(wrt, names, used),
                    "}",
                    INDENT,
                ),
            )
        )
        if self.optimizer is not None:
            functions.append(self.train_step_function(wrt, inputs + params))
        return functions

    def gradients(self, wrt, names, used, grads=None):
        """The ``name: gradient`` items a function returns, one per name in ``wrt``
        (``grads``: another map of name -> node, such as the HVPs; default the
        gradients).

        Every gradient is a fresh array: a view, or an array another gradient already
        is, is handed out as a copy. A gradient that is another value (the optimizer
        found it equal to one already computed) is handed out under its own name, through
        an alias statement that says so (:attr:`aliases`).
        """
        A = self.A
        grads = self.grads if grads is None else grads
        handed_out, items = set(), []
        for w in wrt:
            v = grads.get(w)
            shape = self.shape_code(g.node_dicts(A)[w][g.SHAPE], used)
            if v is None:
                expr = Code(f"np.zeros({shape}, dtype=DTYPE)")
            elif g.node_dicts(A)[v][g.KIND] == g.CONST:
                value = literal(g.node_dicts(A)[v][g.VALUE])
                expr = Code(f"np.full({shape}, {value}, dtype=DTYPE)")
            else:
                a = g.node_dicts(A)[v]
                expr = self.namer[v] if v in self.namer else names[v]
                if a[g.KIND] == g.OPNODE and a.get(g.ADJOINT_OF, w) != w:
                    alias = self.namer.name(("alias", w), f"{self.namer[w]}_bar")
                    self.aliases[w] = (alias, expr, v)
                    expr = alias
                if v in handed_out or a[g.KIND] != g.OPNODE or ops.get(a[g.OP]).view:
                    expr = Code(f"np.array({expr})")
                handed_out.add(v)
            items.append(f"{literal(w)}: {expr}")
        return items

    def alias_statements(self, names):
        """``W2_bar = V_bar``: a gradient that is another value gets its own name."""
        out = []
        loss = self.notes.display(names)(self.loss)
        for w, (alias, value, v) in self.aliases.items():
            formula = self.notes.value_text(v, names)
            why = f" (both are {formula})" if formula else ""
            grad = partial(loss, self.namer[w])
            comments = wrap_comment(f"{alias} = {grad} = {value}: the same value{why}")
            out.append(Statement(alias, value, comments, v, blank_before=True))
        return out

    def make_function(self, name, roots, doc, returns_fn, build=None):
        """:meth:`function` (or ``build``), noting the helpers its code calls
        (``Function.helpers``)."""
        self.aliases = {}  # what gradients() hands out under names of their own
        with recording() as used:
            fn = (build or self.function)(name, roots, doc, returns_fn)
        fn.helpers = used
        fn.statements += self.alias_statements(fn.names)
        return fn

    def helpers(self, functions):
        """The helpers (templates/<backend>/helpers/) the functions call, with theirs."""
        return self.helper_closure(set().union(*(f.helpers for f in functions)))

    def helper_closure(self, called):
        """The helpers ``called`` and the ones they call, in printing order."""
        helpers = set()
        for h, deps in HELPERS.items():
            if h in called:
                helpers.update((*deps, h))
        return [Code(h) for h in HELPERS if h in helpers]

    def tables(self, inputs, params, outputs):
        """``INPUTS``, ``PARAMS``, ``OUTPUTS`` (``COTANGENTS``), ``DTYPES``, ``_INITS``."""
        A = self.A
        cotangents = A.graph.get("cotangents") or {}

        def shape_lit(n):
            return literal(tuple(g.node_dicts(A)[n][g.SHAPE]))

        def table(names):
            return [(literal(n), shape_lit(n)) for n in names]

        cot_table = [(literal(o), shape_lit(c)) for o, c in cotangents.items()]
        return [
            (Code("INPUTS"), table(inputs)),
            (Code("PARAMS"), table(params)),
            (Code("OUTPUTS"), table(outputs)),
            *([(Code("COTANGENTS"), cot_table)] if cotangents else []),
            *tangents.tables(self),
            (
                Code("DTYPES"),
                [
                    (literal(n), literal(g.node_dicts(A)[n][g.DTYPE]))
                    for n in inputs + params
                ],
            ),
            (
                Code("_INITS"),
                [(literal(n), literal(g.node_dicts(A)[n][g.INIT])) for n in params],
            ),
        ]

    def constants(self, stored_consts):
        """``_CONSTANTS``: the stored ones, then the filled ones, made once at import."""
        A = self.A
        constants = [
            (literal(k), Code(f"_stored[{literal(k)}]")) for k in stored_consts
        ]
        for n in self.order:
            at = g.node_dicts(A)[n].get(g.ATTRS) or {}
            if at.get("fill") is not None and ops.get(g.node_dicts(A)[n][g.OP]).kept:
                fill = (
                    f"np.full({literal(tuple(at['shape']))}, "
                    f"{literal(at['fill'])}, dtype=DTYPE)"
                )
                constants.append((literal(constant_key(n, at)), Code(fill)))
        return constants

    def context(self):
        """Everything the module template prints."""
        with g.paused_gc():
            return self._context()

    def _context(self):
        A = self.A
        inputs, params, outputs = self.arrays()
        cotangents = A.graph.get("cotangents") or {}
        functions = self.functions()
        stored_params, stored_consts = stored_weights(A)
        checks = self.index_checks(inputs + params)
        return {
            "backend": Code(self.backend),
            "title": Code(literal(A.graph["name"])[1:-1]),
            "version": Code(__version__),
            "source": Code(safe_comment(self.source_name)),
            "dtype": Code(A.graph["dtype"]),
            "unpack": self.unpack(inputs + params),
            "index_checks": checks,
            "index_skips": any(str(c).startswith("_in_range_or(") for c in checks),
            "index_parts": any(str(c).startswith("_in_range_at(") for c in checks),
            "tables": self.tables(inputs, params, outputs),
            "loss": literal(None if cotangents else self.loss),
            "wrt": fit(
                "WRT = ",
                "(",
                [literal(w) for w in A.graph.get("wrt") or ()] if self.loss else [],
                ")",
                0,
                tuple_=True,
            ),
            "functions": functions,
            "unpack_used": any(f.unpacks for f in functions),
            "helpers": self.helpers(functions),
            "stored": bool(stored_params or stored_consts),
            "cotangents": bool(cotangents),
            "directions": bool(A.graph.get("jvp") or A.graph.get("hvp")),
            "hessian": bool(A.graph.get("hessian")),
            "hvp": bool(A.graph.get("hvp")),
            "fills": any(isinstance(g.node_dicts(A)[p][g.INIT], float) for p in params),
            "stored_consts": stored_consts
            and fit(
                "_stored = _load_weights(",
                "(",
                [literal(k) for k in stored_consts],
                "))",
                0,
                tuple_=True,
            ),
            "constants": self.constants(stored_consts),
            "training": self.training_context(params),
            "summary": [
                Code(part)
                for line in self.summary()
                for part in wrap_comment(line, width=LINE)
            ],
        }

    def vjp_function(self, wrt, arrays):
        """``vjp(cotangents, **arrays)``: the gradient of Σ_k <cotangents[k], output k>.

        The graph's loss is that sum (the frontend built it over cotangent inputs); here
        the cotangents arrive as a dict keyed by output name, checked against the output
        shapes the arrays fixed.
        """
        A = self.A
        cotangents = A.graph["cotangents"]
        roots = [v for v in self.grads.values() if v is not None]
        fn = self.make_function(
            "vjp",
            roots,
            [
                "Vector-Jacobian product: the gradient of Σ_k <cotangents[k], output k>.",
                "",
                "``cotangents`` maps each name in OUTPUTS to an array of its shape; returns",
                "``{name: gradient}`` for each name in WRT (fresh arrays).",
            ],
            lambda names, used: fit(
                "return ",
                "{",
                self.gradients(wrt, names, used),
                "}",
                INDENT,
            ),
        )
        symbols = sorted(
            {
                s
                for n in arrays
                for d in g.node_dicts(A)[n][g.SHAPE]
                for s in dims.symbols(d)
            }
        )
        sizes = fit(
            "",
            "{",
            [f"{literal(s)}: {self.namer[('dim', s)]}" for s in symbols],
            "}",
            0,
        )
        cot_names = [self.namer[c] for c in cotangents.values()]
        call = f"_cotangents(cotangents, {sizes})"
        cot_line = (
            f"{cot_names[0]} = {call}[0]"
            if len(cot_names) == 1
            else unpack_line("", cot_names, f" = {call}", INDENT)
        )
        pad = " " * INDENT
        fn.prologue = Code(f"{pad}{self.unpack(arrays)['call']}\n{pad}{cot_line}")
        fn.signature = Code("cotangents, **arrays")
        return fn

    def unpack(self, arrays):
        """The fast argument check: straight-line code, one line per array.

        Each array must be a plain ``np.ndarray`` of its dtype and shape. Anything else
        takes the slow path, ``_fail``: ``_check`` finds the first wrong array and raises
        the ValueError that names it and its expected shape; arrays it accepts that the
        code does not take as they are (a subclass such as ``np.memmap``; for compiled
        code, a read-only or unaligned array: ``flags``, printed where the backend's
        template wants it) come back as ``_taken`` makes them, and ``_unpack`` runs
        again on those.
        """
        A = self.A
        callers = [self.namer[n] for n in arrays]
        # inside _unpack a long name (an ONNX tensor's, say) gets a short local alias, so
        # that every check stays one line
        local = Namer()
        local.taken = set(callers) | {
            self.namer[("dim", s)]
            for n in arrays
            for d in g.node_dicts(A)[n][g.SHAPE]
            for s in dims.symbols(d)
        }
        idents = [
            c if len(c) <= UNPACK_NAME else local.fresh(f"a{i}")
            for i, c in enumerate(callers)
        ]
        steps, bound = [], set()
        symbols = []
        for n, ident in zip(arrays, idents):
            a = g.node_dicts(A)[n]
            dtype = Code("_INT64" if a[g.DTYPE] == "int64" else "_FLOAT")
            shape = a[g.SHAPE]
            fresh = [
                (i, d)
                for i, d in enumerate(shape)
                if isinstance(d, str) and d not in bound
            ]
            parts = [
                f"{ident}.__class__ is not _NDARRAY",  # a subclass: the slow path
                f"{ident}.dtype != {dtype}",
            ]
            if fresh:  # bind the sizes this array fixes, once its rank is known
                steps.append(
                    {"condition": condition(parts + [f"{ident}.ndim != {len(shape)}"])}
                )
                for i, d in fresh:
                    bound.add(d)
                    symbols.append(d)
                    steps.append(
                        {
                            "bind": self.namer[("dim", d)],
                            "source": Code(f"{ident}.shape[{i}]"),
                        }
                    )
                parts = []
            parts.append(f"{ident}.shape != {self.shape_code(shape, set())}")
            steps.append({"condition": condition(parts)})
        dim_names = [self.namer[("dim", d)] for d in symbols]
        names = idents + dim_names
        outer = callers + dim_names
        return {
            "arrays": [
                subscript(f"{ident} = arrays", literal(n), INDENT)
                for n, ident in zip(arrays, idents)
            ],
            "steps": steps,
            # after every check passed: whether any array is read-only or unaligned
            "flags": condition([f"not {ident}.flags.behaved" for ident in idents]),
            "returns": unpack_line("return ", names, "", INDENT)
            if names
            else Code("return ()"),
            "call": unpack_line("", outer, " = _unpack(arrays)", INDENT)
            if outer
            else Code("_unpack(arrays)"),
            "outer": outer,
        }

    def summary(self):
        A = self.A
        lines = []
        directions = tangents.direction_inputs(A)
        for kind, label in ((g.INPUT, "inputs"), (g.PARAM, "params")):
            ns = [
                n
                for n in self.order
                if g.node_dicts(A)[n][g.KIND] == kind and n not in directions
            ]
            if ns:
                lines.append(
                    f"{label}: "
                    + ", ".join(
                        f"{self.namer[n]} {dims.fmt_shape(g.node_dicts(A)[n][g.SHAPE])}"
                        for n in ns
                    )
                )
        lines.append(
            "outputs: "
            + ", ".join(
                self.namer[o] if o in self.namer else literal(o)
                for o in A.graph["outputs"]
            )
        )
        if self.loss is not None:
            lines.append(f"loss: {self.namer.names.get(self.loss, 'const')}")
        return lines

    # ------------------------------------------------------------------- training
    def step_function(self, name, roots, doc, returns_fn):
        """How ``train_step``'s statements are made: :meth:`function`'s, with the
        updates placed after them by :meth:`train_step_function`; a backend may place
        them itself (the Numba backend's compiled ``train_step``: ``Function.updated``)."""
        return self.function(name, roots, doc, returns_fn)

    def train_names(self):
        """The names train_step's code uses of its own: ``params``, ``state``, the
        step ``t``, the learning rate ``lr`` and (with clipping) ``clip``."""
        nm = self.namer
        return {
            "params": nm.name(("train", "params"), "params"),
            "state": nm.name(("train", "state"), "state"),
            "t": nm.name(("train", "t"), "step"),
            "lr": nm.name(("train", "lr"), "lr"),
            "clip": nm.name(("train", "clip"), "clip")
            if self.optimizer.clip_norm
            else None,
        }

    def train_step_function(self, wrt, arrays):
        """``train_step(params, state, **arrays)``: ``value_and_grad``'s statements with
        each param's optimizer update (:mod:`.optim`) right after the last statement that
        reads its gradient or the param itself (through views), so the gradient's buffer
        dies there; with global-norm clipping, every update after the backward pass.

        The backend's :meth:`step_function` may place the updates itself (a compiled
        function that holds them: ``Function.updated``); else they are module helper
        calls at Python level (:meth:`helper_update`)."""
        opt = self.optimizer
        names = self.train_names()
        self.wrt = wrt
        roots = [self.loss] + [v for v in self.grads.values() if v is not None]
        kind = opt.kind
        fn = self.make_function(
            "train_step",
            roots,
            [
                f"One {opt.name} step ({kind.torch}'s formulas): the loss at ``params``.",
                "",
                "Updates ``params`` and ``state`` (from ``init_state``) in place; each",
                "param's update runs as soon as its gradient is complete"
                + (" (in the backward pass)." if opt.clip_norm is None else ","),
                *(
                    []
                    if opt.clip_norm is None
                    else ["here after all (global-norm clipping needs them all)."]
                ),
            ],
            lambda names_, used: Code(
                f"return float({self.out_expr(self.loss, names_)})"
            ),
            build=self.step_function,
        )
        outer = self.unpack(arrays)["outer"]
        call = f" = _unpack(_train_arrays({names['params']}, {names['state']}, arrays))"
        pad = " " * INDENT
        start = (
            f"{pad}{unpack_line('', outer, call, INDENT)}\n"
            f"{pad}# this step's number (1, 2, ...) and learning rate ({opt.schedule})\n"
            f"{pad}{names['t']}, {names['lr']} = _next_step({names['state']})"
        )
        if fn.updated:  # the backend placed the updates: its prologue runs them
            fn.prologue = Code(f"{start}\n{fn.prologue}")
        else:
            fn.statements = self.place_updates(fn, self.helper_update)
            fn.prologue = Code(start)
        fn.signature = Code(f"{names['params']}, {names['state']}, **arrays")
        return fn

    def helper_update(self, w, expr):
        """The Python-level update of param ``w`` from its gradient ``expr``: the
        module helper (``_adam(W1, W1_bar, state["exp_avg.W1"], ..., lr, step, 1.0)``)."""
        opt, nm, names = self.optimizer, self.namer, self.train_names()
        slots = [
            subscript(names["state"], literal(f"{s}.{w}"), INDENT)
            for s in opt.kind.slots
        ]
        return optim.update_call(
            opt,
            nm[w],
            expr,
            slots,
            names["clip"] or Code("1.0"),
            Code(f"_{opt.kind.helper}"),
            names["lr"],
            names["t"],
        )

    def place_updates(self, fn, update, free=True, clip=None):
        """``fn``'s statements with each param's update (``update(w, gradient
        expression) -> Code``) right after the last statement that reads its gradient
        or the param (through views), and (``free``) ``del`` of the gradient after it:
        compiled code frees an array after its last use itself (and Numba refuses
        ``del``). With clipping, every update follows the statement ``clip(gradient
        expressions) -> Code`` (default the helper ``_clip_coef``) makes ``clip`` by."""
        A, opt, nm = self.A, self.optimizer, self.namer
        clip_n = self.train_names()["clip"]
        statements = fn.statements
        covered = [{st.node, *st.covers} for st in statements]

        def readers(n):  # op nodes that read n, through views of it
            out, stack = set(), [n]
            while stack:
                for s in A.successors(stack.pop()):
                    if g.node_dicts(A)[s][g.KIND] == g.OPNODE and s not in out:
                        out.add(s)
                        if ops.get(g.node_dicts(A)[s][g.OP]).view:
                            stack.append(s)
            return out

        def last_statement(nodes):
            return max(
                (i for i, c in enumerate(covered) if c & nodes),
                default=-1,
            )

        updates = []  # (position, w, gradient expression, gradient node)
        for w in self.wrt:
            v = self.grads.get(w)
            if v is None:  # PyTorch skips a param whose .grad is None
                continue
            a = g.node_dicts(A)[v]
            if a[g.KIND] == g.CONST:
                shape = self.shape_code(g.node_dicts(A)[w][g.SHAPE], set())
                expr = Code(f"np.full({shape}, {literal(a[g.VALUE])}, dtype=DTYPE)")
            else:
                expr = nm[v] if v in nm else fn.names[v]
            pos = last_statement({v, *readers(v), *readers(w)})
            if opt.clip_norm is not None:
                pos = len(statements) - 1
            updates.append((pos, w, expr, v))
        updates.sort(key=lambda u: u[0])  # stable: WRT order among equal positions
        # where each update runs, for --report's peak memory: {statement: [(w, v)]}
        self.update_plan = {}
        for pos, w, _, v in updates:
            self.update_plan.setdefault(pos, []).append((w, v))
        last_of = {}
        for k, (_, _, _, v) in enumerate(updates):
            last_of[v] = k
        out, k = [], 0
        header = [c for line in optim.header(opt) for c in wrap_comment(line)]
        loss = self.notes.display(fn.names)(self.loss)
        for i in range(-1, len(statements)):
            if i >= 0:
                out.append(statements[i])
            if clip_n and k == 0 and updates and updates[0][0] == i:
                grads = [u[2] for u in updates]
                why = optim.two_phase_reason(opt)
                st = Statement(
                    Code(""),  # the call is the whole statement: clip = _clip_coef(...)
                    clip(grads)
                    if clip
                    else bracketed(f"{clip_n} = _clip_coef", grads, "", INDENT),
                    header + wrap_comment(f"Two phases: {why}."),
                    updates[k][3],
                    blank_before=True,
                )
                header = []
                out.append(st)
            while k < len(updates) and updates[k][0] == i:
                _, w, expr, v = updates[k]
                grad = partial(loss, nm[w])
                note = f"{nm[w]} ← {opt.name} step from {grad} = {expr}" + (
                    "" if clip_n else ": neither is read below"
                )
                st = Statement(
                    Code(""),
                    update(w, expr),
                    header + wrap_comment(note),
                    v,
                    blank_before=True,
                )
                header = []
                # the gradient's buffer dies here (after the last update reading it)
                local = g.node_dicts(A)[v][g.KIND] == g.OPNODE and expr == fn.names.get(
                    v
                )
                if free and local and last_of[v] == k:
                    st.dels = Code(f"del {expr}")
                out.append(st)
                k += 1
        return out

    def training_context(self, params):
        """What ``templates/<backend>/training.py.j2`` prints (None: no optimizer)."""
        opt = self.optimizer
        if opt is None or self.loss is None or self.A.graph.get("cotangents"):
            return None
        kind = opt.kind
        return {
            "name": Code(opt.name),
            "torch": Code(kind.torch),
            "helper": Code(kind.helper),
            "table": opt.table(),
            "slots": fit(
                "SLOTS = ", "(", [literal(s) for s in kind.slots], ")", 0, tuple_=True
            ),
            "math": [
                c for line in optim.header(opt) for c in wrap_comment(line, LINE - 2)
            ],
            "lr": literal(opt.lr),
            "momentum": literal(opt.momentum),
            "beta1": literal(opt.betas[0]),
            "beta2": literal(opt.betas[1]),
            "eps": literal(opt.eps),
            "weight_decay": literal(opt.weight_decay),
            "decay": opt.weight_decay != 0.0,
            "decoupled": kind.decoupled,
            "buffer": "momentum_buffer" in kind.slots,
            "clip_norm": literal(opt.clip_norm),
            "clip_eps": literal(optim.CLIP_EPS),
            "steps": literal(opt.steps),
            "warmup": literal(opt.warmup),
            "schedule": [Code(line) for line in optim.SCHEDULES[opt.schedule][0]],
            "schedule_math": Code(optim.SCHEDULES[opt.schedule][1]),
        }
