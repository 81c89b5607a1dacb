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

from .. import dims, ops
from .. import graph as g
from ..errors import CodegenError
from ..notes import partial
from ..version import __version__
from . import attrs
from .attrs import constant_key
from .comments import Comments, safe_comment, wrap_comment
from .layout import (
    INDENT,
    LINE,
    condition,
    fit,
    literal,
    subscript,
    unpack_line,
    wrap,
)
from .naming import Code, Namer, node_names
from .render import environment, op_macros, recording
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
        if A.nodes[n].get(g.KIND) == g.PARAM and A.nodes[n].get(g.INIT) == "weights"
    ]
    consts = sorted(
        {
            A.nodes[n][g.ATTRS]["key"]
            for n in A
            if A.nodes[n].get(g.OP) in ops.REGISTRY
            and ops.get(A.nodes[n][g.OP]).kept
            and (A.nodes[n].get(g.ATTRS) or {}).get("key") is not None
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


class OpForms:
    """How op nodes read as code in one dialect: each op a macro of the backend's
    templates (the first of ``macros`` that defines it), given the op's arguments and its
    attributes as :meth:`Program.attrs_code` lowers them."""

    def __init__(self, program, macros):
        self.program = program
        self.macros = macros
        self._once = {}

    def attrs(self, n, used):
        return self.program.attrs_code(n, used)

    def render(self, n, args, used, as_bool=False) -> Code:
        A = self.program.A
        op = A.nodes[n][g.OP]
        macro = getattr(self.macros, op, None)
        if macro is None:
            raise CodegenError(
                f"the {self.program.backend} backend has no template for op {op!r}",
                node=n,
                source=g.source_of(A),
            )
        at = self.attrs(n, used)
        if ops.get(op).mask:
            at["as_bool"] = as_bool
        if ops.get(op).variadic:
            text = macro([wrap(x) for x in args], at)
        else:
            text = macro(*[wrap(x) for x in args], at)
        return Code(text.strip())

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
            if A.nodes[n].get(g.OP) == op and self.probe(n):
                with recording(None):  # a probe: its helpers are not the module's
                    text = self.render(n, probes, set())
                once = once and all(text.count(p) == 1 for p in probes)
                if not self.probe_every:
                    break
        return once


class Program:
    """Everything the templates need for one module, all of it vetted ``Code``."""

    def __init__(self, A, backend, source_name):
        self.A = A
        self.backend = backend
        self.env = environment(backend)
        # the module's schedule, once: A does not change while the program is built
        self.order = g.schedule(A)
        self.namer = node_names(A, self.order)
        self.forms = OpForms(self, op_macros(self.env, "numpy"))
        self.source_name = source_name
        self.loss = A.graph.get("loss")
        self.grads = A.graph.get("grads") or {}
        self.programs = {}
        self.notes = Comments(A, self.namer, self.loss)
        # temporaries' names: t1, t2, ... unless the module has a name like them
        self.temp_stem = temp_stem(self.namer.taken)

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
        a = self.A.nodes[n]
        if a[g.KIND] == g.CONST:
            return literal(a[g.VALUE])
        if a[g.KIND] in (g.INPUT, g.PARAM):
            return self.namer[n]
        return names.get(n) or exprs[n]

    # the module ----------------------------------------------------------------
    def arrays(self):
        """The module's inputs (but cotangents), params and outputs, in order."""
        A = self.A
        nodes = self.order
        cotangents = A.graph.get("cotangents") or {}  # output -> its cotangent input
        inputs = [
            n
            for n in nodes
            if A.nodes[n][g.KIND] == g.INPUT and n not in cotangents.values()
        ]
        params = [n for n in nodes if A.nodes[n][g.KIND] == g.PARAM]
        return inputs, params, list(A.graph["outputs"])

    def out_expr(self, n, names):
        """How value ``n`` reads where a function returns it."""
        a = self.A.nodes[n]
        if a[g.KIND] == g.CONST:
            return Code(f"np.asarray({literal(a[g.VALUE])}, dtype=DTYPE)")
        return self.namer[n] if n in self.namer else names[n]

    def functions(self):
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
        return functions

    def gradients(self, wrt, names, used):
        """The ``name: gradient`` items a function returns, one per name in ``wrt``.

        Every gradient is a fresh array: a view, or an array another gradient already
        is, is handed out as a copy. A gradient that is another value (the optimizer
        found it equal to one already computed) is handed out under its own name, through
        an alias statement that says so (:attr:`aliases`).
        """
        A = self.A
        handed_out, items = set(), []
        for w in wrt:
            v = self.grads.get(w)
            shape = self.shape_code(A.nodes[w][g.SHAPE], used)
            if v is None:
                expr = Code(f"np.zeros({shape}, dtype=DTYPE)")
            elif A.nodes[v][g.KIND] == g.CONST:
                value = literal(A.nodes[v][g.VALUE])
                expr = Code(f"np.full({shape}, {value}, dtype=DTYPE)")
            else:
                a = A.nodes[v]
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

    def make_function(self, name, roots, doc, returns_fn):
        """:meth:`function`, noting the helpers its code calls (``Function.helpers``)."""
        self.aliases = {}  # what gradients() hands out under names of their own
        with recording() as used:
            fn = self.function(name, roots, doc, returns_fn)
        fn.helpers = used
        fn.statements += self.alias_statements(fn.names)
        return fn

    def helpers(self, functions):
        """The helpers (templates/<backend>/helpers/) the functions call, with theirs."""
        called = set().union(*(f.helpers for f in functions))
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
            return literal(tuple(A.nodes[n][g.SHAPE]))

        def table(names):
            return [(literal(n), shape_lit(n)) for n in names]

        cot_table = [(literal(o), shape_lit(c)) for o, c in cotangents.items()]
        return [
            (Code("INPUTS"), table(inputs)),
            (Code("PARAMS"), table(params)),
            (Code("OUTPUTS"), table(outputs)),
            *([(Code("COTANGENTS"), cot_table)] if cotangents else []),
            (
                Code("DTYPES"),
                [(literal(n), literal(A.nodes[n][g.DTYPE])) for n in inputs + params],
            ),
            (
                Code("_INITS"),
                [(literal(n), literal(A.nodes[n][g.INIT])) for n in params],
            ),
        ]

    def constants(self, stored_consts):
        """``_CONSTANTS``: the stored ones, then the filled ones, made once at import."""
        A = self.A
        constants = [
            (literal(k), Code(f"_stored[{literal(k)}]")) for k in stored_consts
        ]
        for n in self.order:
            at = A.nodes[n].get(g.ATTRS) or {}
            if at.get("fill") is not None and ops.get(A.nodes[n][g.OP]).kept:
                fill = (
                    f"np.full({literal(tuple(at['shape']))}, "
                    f"{literal(at['fill'])}, dtype=DTYPE)"
                )
                constants.append((literal(constant_key(n, at)), Code(fill)))
        return constants

    def context(self):
        """Everything the module template prints."""
        A = self.A
        inputs, params, outputs = self.arrays()
        cotangents = A.graph.get("cotangents") or {}
        functions = self.functions()
        stored_params, stored_consts = stored_weights(A)
        return {
            "backend": Code(self.backend),
            "title": Code(literal(A.graph["name"])[1:-1]),
            "version": Code(__version__),
            "source": Code(safe_comment(self.source_name)),
            "dtype": Code(A.graph["dtype"]),
            "unpack": self.unpack(inputs + params),
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
            "fills": any(isinstance(A.nodes[p][g.INIT], float) for p in params),
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
            {s for n in arrays for d in A.nodes[n][g.SHAPE] for s in dims.symbols(d)}
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
            for d in A.nodes[n][g.SHAPE]
            for s in dims.symbols(d)
        }
        idents = [
            c if len(c) <= UNPACK_NAME else local.fresh(f"a{i}")
            for i, c in enumerate(callers)
        ]
        steps, bound = [], set()
        symbols = []
        for n, ident in zip(arrays, idents):
            a = A.nodes[n]
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
        }

    def summary(self):
        A = self.A
        lines = []
        for kind, label in ((g.INPUT, "inputs"), (g.PARAM, "params")):
            ns = [n for n in self.order if A.nodes[n][g.KIND] == kind]
            if ns:
                lines.append(
                    f"{label}: "
                    + ", ".join(
                        f"{self.namer[n]} {dims.fmt_shape(A.nodes[n][g.SHAPE])}"
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
