"""Scheduling, naming and Jinja rendering of a compiled graph into a Python module.

Python decides *what* to emit (which nodes each function computes, in which order, under
which names, which single-use temporaries fold into their consumer, which comments explain
them); the templates in ``templates/<backend>/`` decide *how it looks*. Every value a template
prints is a :class:`~graphgen.naming.Code` string or a number, checked by the environment's
``finalize``; spec names only ever reach the output as ``repr()`` literals.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import os
import re
from functools import cache
from pathlib import Path

import jinja2

from . import __version__, dims, layout, ops
from . import graph as g
from .errors import CodegenError
from .naming import Code, Namer, sanitize
from .passes import memory
from .passes.adjoint import adjoint
from .passes.optimize import optimize
from .passes.shapes import prepare

BACKENDS = ("numpy", "numba")
UNPACK_NAME = 24  # longer names get a short alias inside _unpack
LINE = 88
INDENT = 4

# Helpers a module defines when its code calls them (templates/numpy/helpers/<name>.py.j2),
# with the helpers they call. Op families outside defs.py add theirs to ops.HELPERS.
HELPERS = ops.HELPERS

# Comparison masks: floats of the graph dtype, or booleans where a product consumes them.
MASKS = {"step", "ge", "lt", "eq"}

# Ops whose code already reads as their math: no comment above the statement.
SELF_EXPLANATORY = {"add", "sub", "mul", "div", "neg", "matmul", "add_n", "reshape"}


class Macros:
    """Macro lookup over several template modules, the first that defines a name wins."""

    def __init__(self, *modules):
        self.modules = modules

    def __getattr__(self, name):
        for m in self.modules:
            macro = getattr(m, name, None)
            if macro is not None:
                return macro
        return None


def op_macros(env, backend):
    """``templates/<backend>/ops.j2`` and then each ``ops_<family>.j2`` beside it."""
    root = template_dir() / backend
    names = ["ops.j2"] + sorted(p.name for p in root.glob("ops_*.j2"))
    return Macros(*(env.get_template(f"{backend}/{n}").module for n in names))


def constant_key(n, at):
    """The ``_CONSTANTS`` entry of a ``constant`` node: its weights key, or its node id."""
    return at["key"] if at["key"] is not None else str(n)


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
            if A.nodes[n].get(g.OP) == "constant"
            and (A.nodes[n].get(g.ATTRS) or {}).get("key") is not None
        }
    )
    return params, consts


def template_dir() -> Path:
    """``graphgen/templates`` in a wheel, or ``templates/`` at the root of a checkout."""
    here = Path(__file__).resolve().parent
    for cand in (here / "templates", here.parent / "templates"):
        if cand.is_dir():
            return cand
    raise CodegenError("cannot find graphgen's templates directory")


def _finalize(value):
    if isinstance(value, bool) or not isinstance(value, (Code, int, float)):
        raise CodegenError(f"refusing to render an unvetted value {value!r:.60}")
    return value


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        finalize=_finalize,
    )
    env.filters["joincode"] = lambda items, sep: Code(sep.join(items))
    env.tests["power_operand"] = _power_operand
    return env


def _power_operand(expr) -> bool:
    """Whether ruff format hugs ``**`` around ``expr`` (``x**2.0``, ``x**-y``): a name, a
    number, a dotted name, or one of them with a unary minus, plus or invert."""
    try:
        node = ast.parse(expr, mode="eval").body
    except SyntaxError:
        return False
    if _parenthesized(expr):
        return False
    while isinstance(node, ast.UnaryOp) and not isinstance(node.op, ast.Not):
        node = node.operand
    while isinstance(node, ast.Attribute):
        node = node.value
    return isinstance(node, ast.Name) or (
        isinstance(node, ast.Constant)
        and isinstance(node.value, (int, float, complex, bool, type(None)))
    )


# ----------------------------------------------------------------------- literals


def literal(v) -> Code:
    """A Python literal for a number, None, bool, string or (nested) list/tuple."""
    if v is None or isinstance(v, bool):
        return Code(repr(v))
    if isinstance(v, int):
        return Code(repr(v))
    if isinstance(v, float):
        if math.isnan(v):
            return Code("np.nan")
        if v in (float("inf"), float("-inf")):
            return Code("np.inf" if v > 0 else "-np.inf")
        return Code(repr(float(v)))
    if isinstance(v, str):
        if '"' in v and "'" not in v:
            return Code(repr(v))  # single quotes spare the escapes, as ruff prefers
        body = "".join(
            '\\"' if ch == '"' else "'" if ch == "'" else repr(ch)[1:-1] for ch in v
        )
        return Code(f'"{body}"')
    if isinstance(v, (list, tuple)):
        items = [literal(x) for x in v]
        return Code("(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")")
    raise CodegenError(f"no literal for {v!r}")


def fit(prefix, open_, items, close, indent, tuple_=False) -> Code:
    """``prefix + open_ items close`` on one line if it fits, else one item per line.

    This is how ``ruff format`` lays out a bracketed list that is too long.
    """
    items = list(items)
    inner = ", ".join(items) + ("," if tuple_ and len(items) == 1 else "")
    one = f"{prefix}{open_}{inner}{close}"
    if indent + len(one) <= LINE or not items:
        return Code(one)
    pad = " " * (indent + INDENT)
    body = "".join(f"{pad}{_fit_item(item, indent + INDENT)},\n" for item in items)
    return Code(f"{prefix}{open_}\n{body}{' ' * indent}{close}")


def _subscript(head, key, indent) -> Code:
    """``head[key]``, with the key on a line of its own when too long (as ruff does)."""
    one = f"{head}[{key}]"
    if indent + len(one) <= LINE:
        return Code(one)
    return Code(f"{head}[\n{' ' * (indent + INDENT)}{key}\n{' ' * indent}]")


def _fit_item(item, indent):
    """One item of a bracketed list on its own line; a ``key: call(...)`` entry too long
    for it gets the call's arguments on a line of their own, as ruff does."""
    if "\n" in item or indent + len(item) + 1 <= LINE:
        return item
    try:
        node = ast.parse("{" + item + "}", mode="eval").body
    except SyntaxError:
        return item
    if not isinstance(node, ast.Dict) or len(node.keys) != 1:
        return item
    key = ast.get_source_segment("{" + item + "}", node.keys[0])
    value = item[len(key) :].lstrip()
    if not value.startswith(":"):
        return item
    value = value[1:].lstrip()
    return f"{key}: {call_lines(value, indent + len(key) + 2, indent)}"


def condition(parts, indent=INDENT) -> Code:
    """``a or b or c`` for an ``if``, parenthesized one per line when it is too long."""
    one = " or ".join(parts)
    if indent + len(f"if {one}:") <= LINE:
        return Code(one)
    pad = " " * (indent + INDENT)
    lines = [f"{pad}{parts[0]}"] + [f"{pad}or {p}" for p in parts[1:]]
    return Code("(\n" + "\n".join(lines) + "\n" + " " * indent + ")")


def call_lines(expr, used, indent=INDENT) -> Code:
    """A call ``f(a, b)`` too long for its line (``used``: width taken before it), laid
    out as ``ruff format`` does: the arguments on one line of their own if they fit,
    else one per line."""
    if "\n" in expr or used + len(expr) <= LINE:
        return Code(expr)
    call = ast.parse(expr, mode="eval").body
    if not isinstance(call, ast.Call) or not (call.args or call.keywords):
        return Code(expr)
    args = [ast.get_source_segment(expr, a) for a in (*call.args, *call.keywords)]
    func = ast.get_source_segment(expr, call.func)
    inner = ", ".join(args)
    if indent + INDENT + len(inner) <= LINE:
        return Code(f"{func}(\n{' ' * (indent + INDENT)}{inner}\n{' ' * indent})")
    return fit(func, "(", args, ")", indent)


def unpack_line(prefix, names, suffix, indent) -> Code:
    """``prefix a, b, c suffix``, with the names one per line in parentheses if too long."""
    one = f"{prefix}{', '.join(names)}{suffix}"
    if indent + len(one) <= LINE:
        return Code(one)
    pad = " " * (indent + INDENT)
    body = "".join(f"{pad}{n},\n" for n in names)
    return Code(f"{prefix}(\n{body}{' ' * indent}){suffix}")


def _parenthesized(expr) -> bool:
    """Whether ``expr`` is one parenthesized whole: ``(a > 0)``, not ``(a) * (b)``."""
    if not (expr.startswith("(") and expr.endswith(")")):
        return False
    depth = 0
    for i, ch in enumerate(expr):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and i < len(expr) - 1:
            return False
    return True


def _atomic(expr) -> bool:
    if _parenthesized(expr):
        return True
    node = ast.parse(expr, mode="eval").body
    if isinstance(node, ast.Constant):
        return not (isinstance(node.value, (int, float)) and node.value < 0)
    return isinstance(node, (ast.Name, ast.Call, ast.Attribute, ast.Subscript))


def wrap(expr) -> Code:
    return Code(expr if _atomic(expr) else f"({expr})")


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


@dataclasses.dataclass
class Function:
    name: str
    doc: list
    statements: list
    returns: Code
    prologue: Code | None = None  # replaces the ``_unpack(arrays)`` line when set
    signature: Code = dataclasses.field(default_factory=lambda: Code("**arrays"))


class Program:
    """Everything the templates need for one module, all of it vetted ``Code``."""

    def __init__(self, A, backend, source_name):
        self.A = A
        self.backend = backend
        self.env = environment()
        self.macros = op_macros(self.env, "numpy")
        self.namer = Namer()
        self.source_name = source_name
        self.loss = A.graph.get("loss")
        self.grads = A.graph.get("grads") or {}
        self.programs = {}
        self._once = {}
        self._name_nodes()

    # names ------------------------------------------------------------------
    def _name_nodes(self):
        A, nm = self.A, self.namer
        order = g.schedule(A)
        for n in order:
            if A.nodes[n][g.KIND] in (g.INPUT, g.PARAM):
                nm.name(n)
        for n in order:
            if A.nodes[n][g.KIND] == g.OPNODE and A.nodes[n][g.ROLE] == g.FORWARD:
                nm.name(n)
        symbols = sorted(
            {s for n in A for d in A.nodes[n][g.SHAPE] for s in dims.symbols(d)}
        )
        for s in symbols:
            nm.name(("dim", s), s)
        for n in order:
            a = A.nodes[n]
            if a[g.ROLE] != g.BACKWARD or a[g.KIND] != g.OPNODE:
                continue
            if g.ADJOINT_OF in a:
                nm.name(n, f"{nm.names.get(a[g.ADJOINT_OF], a[g.ADJOINT_OF])}_bar")
            elif g.CONTRIB in a:
                k, j = a[g.CONTRIB]
                nm.name(n, f"{nm.names.get(j, j)}_bar_via_{nm.names.get(k, k)}")

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
        """The op's attributes as the templates want them (Python decides the forms)."""
        a = self.A.nodes[n]
        op, at = a[g.OP], a[g.ATTRS]
        ins = g.operands(self.A, n)
        in_shapes = [self.A.nodes[p][g.SHAPE] for p in ins]
        out = {}
        if op in ("sum", "mean", "max", "logsumexp"):
            axes = list(at["axis"])
            every = axes == list(range(len(in_shapes[0])))
            out["axis"] = (
                None
                if every and op != "logsumexp"
                else (literal(axes[0]) if len(axes) == 1 else literal(tuple(axes)))
            )
            if every and op == "logsumexp":
                out["axis"] = Code("None")
            out["keepdims"] = bool(at["keepdims"])
        elif op in ("reshape", "broadcast_to", "zeros"):
            out["shape"] = self.shape_code(at["shape"], used)
        elif op == "sum_to_shape":
            lead, keep = ops.defs.sum_to_shape_axes(in_shapes[0], tuple(at["shape"]))
            axes = tuple(lead + keep)
            out["axes"] = literal(axes[0]) if len(axes) == 1 else literal(axes)
            out["form"] = "lead" if not keep else ("keep" if not lead else "both")
            out["shape"] = self.shape_code(at["shape"], used)
        elif op in ("slice", "unslice"):
            nd = len(at["shape"]) if op == "unslice" else len(in_shapes[0])
            parts = [":"] * nd
            start, stop, step = at["start"], at["stop"], at["step"]
            full = (
                in_shapes[0][at["axis"]] if op == "slice" else at["shape"][at["axis"]]
            )
            s = "" if start == 0 else self.dim(start, used)
            e = "" if stop == full else self.dim(stop, used)
            parts[at["axis"]] = f"{s}:{e}" + ("" if step == 1 else f":{step}")
            while len(parts) > 1 and parts[-1] == ":":
                parts.pop()
            out["index"] = Code("[" + ", ".join(parts) + "]")
            if op == "unslice":
                out["shape"] = self.shape_code(at["shape"], used)
        elif op == "transpose":
            out["T"] = (
                list(at["perm"]) == list(range(len(in_shapes[0])))[::-1]
                and len(in_shapes[0]) == 2
            )
            out["perm"] = literal(tuple(at["perm"]))
        elif op == "dimsize":
            size = dims.prod(at["dims"])
            out["value"] = (
                literal(float(size))
                if isinstance(size, int)
                else Code(f"float({self.dim(size, used)})")
            )
        elif op == "onehot":
            out["depth"] = self.dim(at["depth"], used)
        elif op == "scatter_add":  # graphgen/ops/nn.py: dim may be a symbolic size
            out = {"axis": literal(at["axis"]), "dim": self.dim(at["dim"], used)}
        elif op == "constant":
            if at["value"] is not None:
                out["value"] = literal(at["value"])
            else:  # one of the module's _CONSTANTS, made once at import
                out["key"] = literal(constant_key(n, at))
        else:
            out = {k: literal(v) for k, v in at.items()}
        return out

    def render_op(self, n, args, used, as_bool=False) -> Code:
        op = self.A.nodes[n][g.OP]
        macro = getattr(self.macros, op, None)
        if macro is None:
            raise CodegenError(
                f"the {self.backend} backend has no template for op {op!r}",
                node=n,
                source=g.source_of(self.A),
            )
        at = self.attrs_code(n, used)
        if op in MASKS:
            at["as_bool"] = as_bool
        if ops.get(op).variadic:
            text = macro([wrap(x) for x in args], at)
        else:
            text = macro(*[wrap(x) for x in args], at)
        return Code(text.strip())

    def _uses_once(self, op):
        """Whether the op's template mentions each argument once (so it may be inlined)."""
        if op not in self._once:
            self._once[op] = self._mentions_each_argument_once(op)
        return self._once[op]

    def _mentions_each_argument_once(self, op):
        o = ops.get(op)
        if o.variadic:
            return True
        probes = [Code(f"ARG{i}_") for i in range(len(o.args))]
        # attributes do not change how often arguments appear; use a representative node
        for n in self.A:
            if self.A.nodes[n].get(g.OP) == op:
                text = self.render_op(n, probes, set())
                return all(text.count(p) == 1 for p in probes)
        return True

    # functions ----------------------------------------------------------------
    def needed(self, roots):
        """The roots and everything they are computed from."""
        return g.reach(self.A, roots)

    def function(self, name, roots, doc, returns_fn):
        A = self.A
        need = self.needed(roots)
        order = [n for n in g.schedule(A, need) if A.nodes[n][g.KIND] == g.OPNODE]
        shared = self._shared_inside(order)
        for n, d in shared.items():  # compute the shared value first
            order.remove(d)
            order.insert(order.index(n), d)
        uses = {n: 0 for n in need}
        for n in order:
            for p in g.operands(A, n):
                uses[p] += 1
        for d in shared.values():
            uses[d] += 1
        root_set = set(roots)
        inline = {
            n
            for n in order
            if not self.is_named(n) and uses[n] == 1 and n not in root_set
        }
        consumer = {}
        for n in order:
            for p in g.operands(A, n):
                if p in inline:
                    consumer[p] = n
        inline = {p for p in inline if self._uses_once(A.nodes[consumer[p]][g.OP])}

        keep = root_set | {n for n in need if A.nodes[n][g.KIND] != g.OPNODE}
        inline -= self._in_place_chains(order, inline, keep)

        while True:
            # memory plan: drop each value after its last read; write ufunc results
            # into buffers that die here; sum fan-outs in place
            program = [(n, self._reads(n, inline)) for n in order if n not in inline]
            buffers = dict(
                zip((n for n, _ in program), memory.plan_buffers(A, program, keep))
            )
            names, k = {}, 1
            temps = Namer()
            temps.taken = set(self.namer.taken)
            for n in order:
                if n in inline:
                    continue
                if self.is_named(n):
                    names[n] = self.namer[n]
                elif buffers[n] and not self.is_named(buffers[n][1]):
                    names[n] = names[buffers[n][1]]  # same buffer, same temporary
                else:
                    names[n] = temps.fresh(f"t{k}")
                    k += 1
            used, exprs = set(), {}
            for n in order:
                args = [self.value(p, exprs, names) for p in g.operands(A, n)]
                # a mask multiplied in place of use stays boolean: no float copy
                as_bool = (
                    n in inline
                    and A.nodes[consumer[n]][g.OP] == "mul"
                    and not any(
                        A.nodes[q].get(g.OP) in MASKS
                        for q in g.operands(A, consumer[n])
                        if q != n
                    )
                )
                exprs[n] = self.render_op(n, args, used, as_bool)
                if n in shared:  # the fused op reads the value the backward pass keeps
                    d = shared[n]
                    exprs[n] = Code(
                        self.macros.mse_of_difference(names.get(d) or exprs[d])
                    )
                if n not in inline and buffers[n] and buffers[n][0] == "out":
                    exprs[n] = self.render_out(n, args, names[buffers[n][1]])
            too_long = self.longest_inlined(order, inline, names, exprs)
            if not too_long:
                break
            inline.difference_update(too_long)

        drops = memory.frees(program, keep)
        inlined = {n: self._inlined_children(n, inline) for n, _ in program}
        self.programs[name] = (program, keep, inlined)

        statements = []
        last_named = {}  # name -> the last statement that assigns or reads it
        for i, (n, _) in enumerate(program):
            last_named[names[n]] = i
        for i, (n, _) in enumerate(program):
            comments = self.comments(n, names)
            blank = bool(comments) and bool(statements)
            st = Statement(names[n], exprs[n], comments, n, blank)
            if buffers[n] and buffers[n][0] == "acc":
                terms = [self.value(p, exprs, names) for p in g.operands(A, n)]
                st.expr, st.accumulate = terms[0], terms[1:]
            # a name still in use (shared by a value written into the same buffer) stays
            dels = [
                names[v]
                for v in drops[i]
                if names[v] != names[n] and last_named[names[v]] <= i
            ]
            st.dels = unpack_line("del ", dels, "", INDENT) if dels else None
            if not st.accumulate and not st.expr.endswith(f"out={st.target})"):
                st.expr = layout.value(st.expr, INDENT + len(st.target) + 3)
            statements.append(st)
        # a comment explains the temporaries computed for its statement, so it goes first
        run = []
        for st in statements:
            if not self.is_named(st.node) and not st.comments:
                run.append(st)
                continue
            if run and st.comments:
                run[0].comments, st.comments = st.comments, []
                run[0].blank_before, st.blank_before = st.blank_before, False
            run = []
        for st in statements:
            if (
                A.nodes[st.node][g.ROLE] == g.BACKWARD
                and st.node not in shared.values()
            ):
                st.blank_before = True
                st.comments = self.backward_header() + st.comments
                break
        return Function(
            Code(name), [_comment(d) for d in doc], statements, returns_fn(names, used)
        )

    def backward_header(self):
        """The comment that opens the backward pass: what ``v_bar`` means."""
        return _wrap_comment(
            f"Backward pass, from the loss back: v_bar = ∂{self.namer[self.loss]}/∂v, "
            "the sum over v's successors k of k_bar · ∂k/∂v."
        )

    def render_out(self, n, args, out) -> Code:
        """``np.<ufunc>(args..., out=buffer)``: the op writing into a free buffer."""
        op = self.A.nodes[n][g.OP]
        args = list(args)
        if op == "relu":
            args = args + [Code("0.0")]
        elif op == "softplus":
            args = [Code("0.0")] + args
        text = self.macros.ufunc_out(Code(memory.UFUNCS[op]), args, out)
        return Code(text.strip())

    def _in_place_chains(self, order, inline, keep):
        """Inlined ufuncs to materialize so that they, or their consumer, can work in
        place: an elementwise chain ``1.0 - np.square(h)`` becomes two statements
        sharing one buffer instead of two fresh temporaries."""
        A = self.A
        program = [(n, self._reads(n, inline)) for n in order if n not in inline]
        last = memory.last_uses(program, keep)
        at = {n: i for i, (n, _) in enumerate(program)}
        consumer = {p: n for n in order for p in g.operands(A, n) if p in inline}

        def statement_of(n):
            while n in inline:
                n = consumer[n]
            return n

        out = set()
        for n in order:
            a = A.nodes[n]
            if (
                n not in inline
                or a[g.OP] not in memory.UFUNCS
                or not memory.big_enough(a[g.SHAPE])
            ):
                continue
            c = A.nodes[consumer[n]]
            if c[g.OP] in memory.UFUNCS and tuple(c[g.SHAPE]) == tuple(a[g.SHAPE]):
                out.add(n)
                continue
            top = at[statement_of(n)]
            for p in g.operands(A, n):
                if (
                    p in at
                    and p not in keep
                    and last.get(p) == top
                    and tuple(A.nodes[p][g.SHAPE]) == tuple(a[g.SHAPE])
                ):
                    out.add(n)
                    break
        return out

    def _shared_inside(self, order):
        """Fused ops whose internal value the backward pass builds anyway: ``mse(y, t)``
        computes ``y − t``, and its VJP builds ``sub(y, t)``. Map each such op node to
        that node, so the difference is computed once and the loss reads it."""
        A = self.A
        present = set(order)
        out = {}
        for n in order:
            if A.nodes[n][g.OP] != "mse":
                continue
            a, b = g.operands(A, n)
            for d in A.successors(a):
                if (
                    d in present
                    and A.nodes[d].get(g.OP) == "sub"
                    and g.operands(A, d) == [a, b]
                ):
                    out[n] = d
                    break
        return out

    def longest_inlined(self, order, inline, names, exprs):
        """In each statement longer than a line, its longest inlined temporary (the one
        to materialize next); empty when every statement fits.

        Statements inline disjoint sets of temporaries, so fixing all of them in one
        round gives the code one statement at a time would, in far fewer rounds.
        """
        out = []
        for n in order:
            if n in inline or INDENT + len(names[n]) + 3 + len(exprs[n]) <= LINE:
                continue
            kids = self._inlined_children(n, inline)
            if kids:
                out.append(max(kids, key=lambda p: len(exprs[p])))
        return out

    def _reads(self, n, inline):
        """The materialized values statement ``n`` reads, through inlined temporaries."""
        out = []
        for p in g.operands(self.A, n):
            if p in inline:
                out.extend(q for q in self._reads(p, inline) if q not in out)
            elif self.A.nodes[p][g.KIND] == g.OPNODE and p not in out:
                out.append(p)
        return out

    def _inlined_children(self, n, inline):
        out = []
        stack = [p for p in g.operands(self.A, n) if p in inline]
        while stack:
            p = stack.pop()
            out.append(p)
            stack.extend(q for q in g.operands(self.A, p) if q in inline)
        return out

    def value(self, n, exprs, names) -> Code:
        a = self.A.nodes[n]
        if a[g.KIND] == g.CONST:
            return literal(a[g.VALUE])
        if a[g.KIND] in (g.INPUT, g.PARAM):
            return self.namer[n]
        return names.get(n) or exprs[n]

    # comments -----------------------------------------------------------------
    def display(self, names):
        def show(n):
            if n in self.namer:
                return self.namer[n]
            if n not in names and n not in self.A and not str(n).startswith("bwd/"):
                return sanitize(n)  # a spec node the optimizer removed (a first loss)
            return names.get(n, "…")

        return show

    def pass_of(self, n):
        """(loss, adjoint map) of the adjoint pass that made node ``n``."""
        passes = self.A.graph.get("passes") or []
        p = self.A.nodes[n].get(g.PASS) if n in self.A else None
        if p is not None and p < len(passes):
            return passes[p]["loss"], passes[p]["adjoints"]
        return self.loss, self.A.graph.get("adjoints") or {}

    def bar_name(self, n, names, of=None):
        """How the adjoint of forward node ``n`` reads in code (``1`` for the loss's seed);
        ``of``: the node whose comment this is (a twice-differentiated graph has one
        adjoint of ``n`` per pass)."""
        loss, adjoints = self.pass_of(of) if of is not None else (self.loss, None)
        if adjoints is None:
            adjoints = self.A.graph.get("adjoints") or {}
        v = adjoints.get(n)
        if v is None or v not in self.A:  # folded into its consumers: say what it is
            loss = self.display(names)(loss)
            return f"∂{loss}/∂{self.display(names)(n)}"
        if self.A.nodes[v][g.KIND] == g.CONST:
            return literal(self.A.nodes[v][g.VALUE])
        return self.display(names)(v)

    def note(self, template, ids, attrs, names, term=None, of=None):
        """Fill a math template; ``term`` = (node, name) names that node's adjoint term."""
        show = self.display(names)
        filled = template
        for key, nid in ids.items():
            if "{" + key + "}̄" in filled:
                bar = (
                    term[1]
                    if term and nid == term[0]
                    else self.bar_name(nid, names, of)
                )
                filled = filled.replace("{" + key + "}̄", bar)
        return ops.format_note(
            filled, {**{k: show(v) for k, v in ids.items()}, **attrs}
        )

    def math_of(self, n, names):
        """The forward math of op node ``n`` with code names: ``z2 = h1 @ W2``."""
        A = self.A
        op = ops.get(A.nodes[n][g.OP])
        ins = g.operands(A, n)
        text = op.math
        if op.variadic:
            text = text.replace(
                "{" + op.args[0] + "}",
                "(" + ", ".join(self.display(names)(p) for p in ins) + ")",
            )
            ids = {"y": n}
        else:
            ids = {"y": n, **dict(zip(op.args, ins))}
        return self.note(text, ids, A.nodes[n][g.ATTRS], names)

    def comments(self, n, names):
        A, a = self.A, self.A.nodes[n]
        show = self.display(names)
        if a[g.ROLE] == g.FORWARD:
            if a[g.OP] in SELF_EXPLANATORY:
                return []
            return _wrap_comment(self.math_of(n, names))
        pass_loss = self.pass_of(n)[0]
        loss = show(pass_loss) if pass_loss is not None else "J"
        target = names.get(n, show(n))
        if g.SUMS in a:
            j = a[g.ADJOINT_OF]
            succ = ", ".join(show(k) for k in a[g.SUMS])
            text = (
                f"{target} = ∂{loss}/∂{show(j)} = Σ_k ∂{loss}/∂k · ∂k/∂{show(j)}, summed "
                f"over the successors k of {show(j)}: {succ}"
            )
            return _wrap_comment(text)
        if g.ADJOINT_OF in a:
            j = a[g.ADJOINT_OF]
            head = f"{target} = ∂{loss}/∂{show(j)}"
        elif g.CONTRIB in a:
            k, j = a[g.CONTRIB]
            head = f"{target} = the term of ∂{loss}/∂{show(j)} that flows through {show(k)}"
        else:
            return []
        note = a.get(g.NOTE)
        if not note or not note[0] or note[1].get("y") in (None, j):
            return _wrap_comment(head)
        template, ids, attrs = note
        k = ids["y"]
        deriv = self.note(template, ids, attrs, names, term=(j, target), of=n)
        if deriv.startswith("∂") and " = " in deriv:
            rhs = deriv.split(" = ", 1)[1]
            if k == pass_loss or self.bar_name(k, names, n) == "1.0":
                text = f"{head} = {rhs}"
            else:
                text = (
                    f"{head} = {self.bar_name(k, names, n)} · ∂{show(k)}/∂{show(j)}, where "
                    f"∂{show(k)}/∂{show(j)} = {rhs}"
                )
        elif k in A:
            text = f"{head}; through {self.math_of(k, names)}: {deriv}"
        else:  # the successor was optimized away (a graph differentiated twice)
            text = f"{head}: {deriv}"
        if a[g.OP] == "sum_to_shape":
            text += " (summed over the axes broadcasting stretched)"
        return _wrap_comment(text)

    # the module ----------------------------------------------------------------
    def context(self):
        A = self.A
        nodes = [n for n in g.schedule(A)]
        cotangents = A.graph.get("cotangents") or {}  # output -> its cotangent input
        inputs = [
            n
            for n in nodes
            if A.nodes[n][g.KIND] == g.INPUT and n not in cotangents.values()
        ]
        params = [n for n in nodes if A.nodes[n][g.KIND] == g.PARAM]
        outputs = list(A.graph["outputs"])

        def shape_lit(n):
            return literal(tuple(A.nodes[n][g.SHAPE]))

        def out_expr(n, names):
            a = A.nodes[n]
            if a[g.KIND] == g.CONST:
                return Code(f"np.asarray({literal(a[g.VALUE])}, dtype=DTYPE)")
            return self.namer[n] if n in self.namer else names[n]

        functions = [
            self.function(
                "forward",
                outputs,
                ["The forward pass: every output, by name."],
                lambda names, used: fit(
                    "return ",
                    "{",
                    [f"{literal(o)}: {out_expr(o, names)}" for o in outputs],
                    "}",
                    INDENT,
                ),
            )
        ]
        if self.loss is not None:
            wrt = list(A.graph["wrt"])
            roots = [self.loss] + [v for v in self.grads.values() if v is not None]

            handed_out = set()

            def grad_expr(w, names, used):
                v = self.grads.get(w)
                shape = self.shape_code(A.nodes[w][g.SHAPE], used)
                if v is None:
                    return Code(f"np.zeros({shape}, dtype=DTYPE)")
                a = A.nodes[v]
                if a[g.KIND] == g.CONST:
                    return Code(f"np.full({shape}, {literal(a[g.VALUE])}, dtype=DTYPE)")
                name = self.namer[v] if v in self.namer else names[v]
                if (
                    v in handed_out
                    or a[g.KIND] != g.OPNODE
                    or a[g.OP] in ("broadcast_to", "transpose", "reshape", "slice")
                ):
                    # a view, or an array another gradient already is: hand out a copy
                    return Code(f"np.array({name})")
                handed_out.add(v)
                return name

            if cotangents:
                functions.append(self.vjp_function(wrt, grad_expr, inputs + params))
        if self.loss is not None and not cotangents:
            functions.append(
                self.function(
                    "value_and_grad",
                    roots,
                    [
                        (
                            f"The loss {self.loss!r} and its gradient with respect to "
                            "each name in WRT."
                        ),
                        "",
                        "Returns ``(loss, {name: gradient})``; gradients are fresh arrays.",
                    ],
                    lambda names, used: fit(
                        f"return float({out_expr(self.loss, names)}), ",
                        "{",
                        [f"{literal(w)}: {grad_expr(w, names, used)}" for w in wrt],
                        "}",
                        INDENT,
                    ),
                )
            )
        body = "\n".join(s.expr for f in functions for s in f.statements)
        body += "\n".join(f.returns for f in functions)
        helpers = []
        for h, deps in HELPERS.items():
            if re.search(rf"\b_{h}\(", body):
                for dep in (*deps, h):
                    if dep not in helpers:
                        helpers.append(dep)
        helpers = [h for h in HELPERS if h in helpers]

        def table(names):
            return [(literal(n), shape_lit(n)) for n in names]

        cot_table = [(literal(o), shape_lit(c)) for o, c in cotangents.items()]

        stored_params, stored_consts = stored_weights(A)
        constants = [
            (literal(k), Code(f"_stored[{literal(k)}]")) for k in stored_consts
        ]
        for n in nodes:
            at = A.nodes[n].get(g.ATTRS) or {}
            if A.nodes[n].get(g.OP) == "constant" and at["fill"] is not None:
                constants.append(
                    (
                        literal(constant_key(n, at)),
                        Code(
                            f"np.full({literal(tuple(at['shape']))}, "
                            f"{literal(at['fill'])}, dtype=DTYPE)"
                        ),
                    )
                )

        return {
            "backend": Code(self.backend),
            "title": Code(literal(A.graph["name"])[1:-1]),
            "version": Code(__version__),
            "source": Code(_comment(self.source_name)),
            "dtype": Code(A.graph["dtype"]),
            "unpack": self.unpack(inputs + params),
            "tables": [
                (Code("INPUTS"), table(inputs)),
                (Code("PARAMS"), table(params)),
                (Code("OUTPUTS"), table(outputs)),
                *([(Code("COTANGENTS"), cot_table)] if cotangents else []),
                (
                    Code("DTYPES"),
                    [
                        (literal(n), literal(A.nodes[n][g.DTYPE]))
                        for n in inputs + params
                    ],
                ),
                (
                    Code("_INITS"),
                    [(literal(n), literal(A.nodes[n][g.INIT])) for n in params],
                ),
            ],
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
            "helpers": [Code(h) for h in helpers],
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
            "constants": constants,
            "summary": [
                Code(part)
                for line in self.summary()
                for part in _wrap_comment(line, width=LINE)
            ],
        }

    def vjp_function(self, wrt, grad_expr, arrays):
        """``vjp(cotangents, **arrays)``: the gradient of Σ_k <cotangents[k], output k>.

        The graph's loss is that sum (the frontend built it over cotangent inputs); here
        the cotangents arrive as a dict keyed by output name, checked against the output
        shapes the arrays fixed.
        """
        A = self.A
        cotangents = A.graph["cotangents"]
        roots = [v for v in self.grads.values() if v is not None]
        fn = self.function(
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
                [f"{literal(w)}: {grad_expr(w, names, used)}" for w in wrt],
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

        Any failure falls back to ``_check``, which finds the first wrong array and raises
        the ValueError that names it and its expected shape.
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
                f"not isinstance({ident}, np.ndarray)",
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
                _subscript(f"{ident} = arrays", literal(n), INDENT)
                for n, ident in zip(arrays, idents)
            ],
            "steps": steps,
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
            ns = [n for n in g.schedule(A) if A.nodes[n][g.KIND] == kind]
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


_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def _comment(text) -> Code:
    """Text that is safe inside a ``#`` comment or a docstring: one line, no quotes run."""
    text = _CONTROL.sub(" ", str(text)).replace('"""', "'''").replace("\\", "/")
    return Code(text)


def _wrap_comment(text, width=LINE - INDENT - 2, indent="  "):
    """A comment as lines that fit the line length (continuations indented by ``indent``;
    ``indent=""`` for a docstring, whose lines ruff aligns)."""
    import textwrap

    words = []
    for word in str(_comment(text)).split(" "):
        # a token longer than a line (long names inside math) breaks after ) / ( or ·
        while len(word) > width - 2:
            cut = max(word.rfind(c, 0, width - 2) for c in ")/(·")
            if cut <= 0:
                break
            words.append(word[: cut + 1])
            word = word[cut + 1 :]
        words.append(word)
    lines = textwrap.wrap(
        " ".join(words),
        width=width,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )
    return [Code(line) for line in lines]


def _vet(value, path="context"):
    """Every string handed to a template must be vetted Code."""
    if (
        isinstance(value, Code)
        or value is None
        or isinstance(value, (bool, int, float))
    ):
        return
    if isinstance(value, str):
        raise CodegenError(f"internal: unvetted string at {path}: {value!r:.60}")
    if isinstance(value, dict):
        for k, v in value.items():
            _vet(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _vet(v, f"{path}[{i}]")
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            if f.name != "node":
                _vet(getattr(value, f.name), f"{path}.{f.name}")
    else:
        raise CodegenError(f"internal: cannot render {type(value).__name__} at {path}")


def lower(G, *, dtype=None):
    """Prepare, differentiate and optimize: the graph a backend renders."""
    H = G.copy()
    if dtype is not None:
        if dtype not in g.FLOAT_DTYPES:
            raise CodegenError(
                f"dtype must be float64 or float32, got {dtype!r}",
                source=g.source_of(G),
            )
        H = _with_dtype(H, dtype)
    H = prepare(H)
    if H.graph.get("loss") is not None:
        H = adjoint(H)
    return optimize(H)


def generate(G, backend="numpy", *, dtype=None, source_name=None, **options):
    """Render the standalone Python module for ``G``.

    Parameters
    ----------
    G : networkx.DiGraph
        A graphgen graph (:func:`graphgen.load` or built by hand).
    backend : {"numpy", "numba"}
        The code generator to use.
    dtype : {"float64", "float32"}, optional
        Override the spec's dtype.
    source_name : str, optional
        The name shown in the module docstring (default: the spec file's base name).

    Returns
    -------
    str
        Python source that imports only NumPy. It is deterministic: the same graph gives
        the same bytes.

    Examples
    --------
    >>> import graphgen
    >>> src = graphgen.generate(graphgen.load("examples/tiny.yaml"))
    >>> "def value_and_grad(**arrays):" in src
    True
    """
    if backend not in BACKENDS:
        raise CodegenError(
            f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})",
            source=g.source_of(G),
        )
    A = lower(G, dtype=dtype)
    if source_name is None:
        source_name = os.path.basename(g.source_of(A))
    if (
        backend == "numba"
    ):  # options: parallel, fastmath, cache (graphgen.backends.numba)
        from .backends.numba import NumbaProgram

        program = NumbaProgram(A, backend, source_name, **options)
    elif options:
        raise CodegenError(f"the {backend} backend takes no options {sorted(options)}")
    else:
        program = Program(A, backend, source_name)
    ctx = program.context()
    _vet(ctx)
    text = environment().get_template(f"{backend}/module.py.j2").render(**ctx)
    text = re.sub(r"\n{3,}(?=[^\n]*\S)", _blank_lines, text)
    try:
        ast.parse(text)
    except SyntaxError as e:  # a bug in graphgen, never in the user's spec
        raise CodegenError(f"internal: generated code does not parse: {e}") from None
    return text


def report(G, backend="numpy", *, dtype=None, sizes=None):
    """What the compiler did, for ``graphgen compile --report``.

    Per pass, the op count before and after; the forward values saved for the backward
    pass with their sizes; and the planned peak bytes of intermediates of each generated
    function, with symbolic sizes set from ``sizes`` (default 32 each).
    """
    from .check import concrete

    forward_only = prepare(G if dtype is None else _with_dtype(G, dtype))
    A = lower(G, dtype=dtype)
    program = Program(A, backend, os.path.basename(g.source_of(A)))
    program.context()
    symbols = sorted(
        {s for n in A for d in A.nodes[n][g.SHAPE] for s in dims.symbols(d)}
    )
    sizes = {s: 32 for s in symbols} | dict(sizes or {})
    lines = [
        f"graphgen report for {program.source_name} ({A.graph['dtype']}, "
        + (", ".join(f"{k}={v}" for k, v in sizes.items()) or "no symbolic sizes")
        + ")",
        "",
        f"forward graph: {sum(1 for n in forward_only if forward_only.nodes[n][g.KIND] == g.OPNODE)} ops",
        f"{'pass':<28} {'ops before':>10} {'ops after':>10}",
    ]
    for name, before, after in A.graph.get("pass_stats", []):
        lines.append(f"{name:<28} {before:>10} {after:>10}")
    saved = memory.saved_for_backward(A)
    lines += ["", f"saved for the backward pass ({len(saved)} arrays):"]
    total = 0
    for n in saved:
        nb = memory.nbytes(A, n, sizes)
        total += nb
        shape = concrete(A.nodes[n][g.SHAPE], sizes)
        lines.append(f"  {program.namer[n]:<24} {shape!s:<16} {nb:>12,d} bytes")
    lines.append(f"  {'total':<24} {'':<16} {total:>12,d} bytes")
    lines.append("")
    for fname, (prog, keep, inlined) in program.programs.items():
        peak = memory.peak_bytes(A, prog, keep, sizes, inlined)
        lines.append(f"planned peak of intermediates in {fname}(): {peak:,d} bytes")
    return "\n".join(lines)


def _with_dtype(G, dtype):
    H = G.copy()
    old = H.graph.get("dtype", "float64")
    H.graph["dtype"] = dtype
    for n in H:
        if H.nodes[n].get(g.DTYPE, old) == old:
            H.nodes[n][g.DTYPE] = dtype
    return H


def _blank_lines(m):
    return "\n\n\n"
