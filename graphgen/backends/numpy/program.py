"""The NumPy backend: one NumPy statement per value, with a memory plan.

What it adds to the shared :class:`~graphgen.codegen.program.Program`: each function's
statements are planned for memory (:mod:`.memory`): a value is dropped (``del``) after its
last read, a ufunc writes into a buffer that dies at that statement (``out=``), and a
fan-out's sum accumulates in place (``+=``); an elementwise chain is split where that lets
it work in place; cheap elementwise forward values the backward pass reads are recomputed
there instead of kept (:func:`.memory.recompute_in_backward`).
"""

from __future__ import annotations

from ... import graph as g
from ... import ops
from ...codegen import layout
from ...codegen.comments import safe_comment, wrap_comment
from ...codegen.layout import INDENT, LINE, unpack_line
from ...codegen.naming import Code
from ...codegen.program import Function, Program, Statement
from ...codegen.schedule import Schedule, open_backward
from . import memory


class NumpyProgram(Program):
    """The NumPy module's program."""

    def __init__(self, A, backend, source_name, optimizer=None):
        super().__init__(
            memory.recompute_in_backward(A), backend, source_name, optimizer
        )

    def function(self, name, roots, doc, returns_fn):
        A = self.A
        s = Schedule(self, roots)
        s.order = memory.place_recomputed(A, s.order)
        shared = self._shared_inside(s.order)
        for n, d in shared.items():  # compute the shared value first
            s.move_before(d, n)
        s.count_uses(extra=shared.values())
        inline = {n for n in s.order if s.foldable(n)}
        keep = s.root_set | {
            n for n in s.need if g.node_dicts(A)[n][g.KIND] != g.OPNODE
        }
        inline -= self._in_place_chains(s, inline, keep)

        plan = {}

        def attempt(inline):
            # memory plan: drop each value after its last read; write ufunc results
            # into buffers that die here; sum fan-outs in place
            program = [(n, s.reads(n, inline)) for n in s.order if n not in inline]
            buffers = dict(
                zip((n for n, _ in program), memory.plan_buffers(A, program, keep))
            )

            def alias(n, names):  # same buffer, same temporary
                if buffers[n] and not self.is_named(buffers[n][1]):
                    return names[buffers[n][1]]
                return None

            names = s.name_temporaries(s.order, inline, alias)
            used, exprs = set(), {}
            for n in s.order:
                exprs[n] = self._expr(s, n, inline, shared, names, exprs, used)
                if n not in inline and buffers[n] and buffers[n][0] == "out":
                    args = [self.value(p, exprs, names) for p in self.operands(n)]
                    exprs[n] = self.render_out(n, args, names[buffers[n][1]])
            plan.update(program=program, buffers=buffers, used=used)
            return s.order, names, exprs

        names, exprs = s.settle(inline, attempt)
        program, buffers = plan["program"], plan["buffers"]
        inlined = {n: s.inlined_children(n, inline) for n, _ in program}
        self.programs[name] = (program, keep, inlined)
        statements = self._statements(program, buffers, keep, names, exprs)
        for (n, _), st in zip(program, statements):
            st.covers = tuple(inlined[n])
            again = [
                self.namer[A.nodes[c][memory.RECOMPUTES]]
                for c in [n, *inlined[n]]
                if memory.RECOMPUTES in A.nodes[c]
            ]
            if again:
                st.comments = st.comments + wrap_comment(
                    f"recomputes {', '.join(sorted(again))} (not kept from the "
                    "forward pass)"
                )
        open_backward(
            A, statements, self.notes.backward_header, skip=set(shared.values())
        )
        return Function(
            Code(name),
            [safe_comment(d) for d in doc],
            statements,
            returns_fn(names, plan["used"]),
            names=names,
        )

    def _expr(self, s, n, inline, shared, names, exprs, used):
        """The expression of op node ``n`` (its temporaries folded in)."""
        A = self.A
        args = [self.value(p, exprs, names) for p in self.operands(n)]
        # a mask multiplied in place of use stays boolean: no float copy
        consumer = s.consumer.get(n)
        as_bool = (
            n in inline
            and g.node_dicts(A)[consumer][g.OP] == "mul"
            and not any(
                ops.get(g.node_dicts(A)[q][g.OP]).mask
                for q in self.operands(consumer)
                if q != n and g.node_dicts(A)[q][g.KIND] == g.OPNODE
            )
        )
        if n in shared:  # the fused op reads the value the backward pass keeps
            d = shared[n]
            self.render_op(n, args, used, as_bool)  # records the sizes it reads
            op, shares = g.node_dicts(A)[n][g.OP], g.node_dicts(A)[d][g.OP]
            macro = getattr(self.forms.macros, f"{op}_from_{shares}")
            return Code(macro(names.get(d) or exprs[d]))
        return self.render_op(n, args, used, as_bool)

    def _statements(self, program, buffers, keep, names, exprs):
        """The statements of a planned function: ``+=`` sums, ``del`` after last reads,
        each value laid out as ruff does, each comment above the temporaries it
        explains."""
        drops = memory.frees(program, keep)
        statements = []
        last_named = {}  # name -> the last statement that assigns or reads it
        for i, (n, _) in enumerate(program):
            last_named[names[n]] = i
        for i, (n, _) in enumerate(program):
            comments = self.notes.comments(n, names)
            blank = bool(comments) and bool(statements)
            st = Statement(names[n], exprs[n], comments, n, blank)
            if buffers[n] and buffers[n][0] == "acc":
                terms = [self.value(p, exprs, names) for p in self.operands(n)]
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
        for (n, _), st in zip(program, statements):
            if buffers[n] and buffers[n][0] == "out":
                self._say_reused(st, names[buffers[n][1]])
        return statements

    def _say_reused(self, st, owner):
        """``a1 = np.add(z1, b1, out=z1)  # a1 reuses z1's buffer``: once, where it is
        reused (a line above when it does not fit at the end)."""
        if owner == st.target:
            return  # one temporary updated in place: the code says it
        note = f"{st.target} reuses {owner}'s buffer"
        one_line = INDENT + len(st.target) + 3 + len(st.expr) + 4 + len(note)
        if "\n" not in st.expr and one_line <= LINE:
            st.note = Code(note)
        else:
            st.comments = st.comments + wrap_comment(note)

    def render_out(self, n, args, out) -> Code:
        """``np.<ufunc>(args..., out=buffer)``: the op writing into a free buffer."""
        op = ops.get(g.node_dicts(self.A)[n][g.OP])
        fn, *spec = op.ufunc
        by_name = dict(zip(op.args, args))
        call_args = [by_name[a] if a in by_name else Code(a) for a in spec]
        text = self.forms.macros.ufunc_out(Code(fn), call_args, out)
        return Code(text.strip())

    def _in_place_chains(self, s, inline, keep):
        """Folded ufuncs to make statements so that they, or their consumer, can work in
        place: an elementwise chain ``1.0 - np.square(h)`` becomes two statements
        sharing one buffer instead of two fresh temporaries."""
        A = self.A
        program = [(n, s.reads(n, inline)) for n in s.order if n not in inline]
        last = memory.last_uses(program, keep)
        at = {n: i for i, (n, _) in enumerate(program)}

        def statement_of(n):
            while n in inline:
                n = s.consumer[n]
            return n

        out = set()
        for n in s.order:
            a = g.node_dicts(A)[n]
            if n not in inline or not memory.big_enough(a[g.SHAPE]):
                continue
            c = g.node_dicts(A)[s.consumer[n]]
            if not memory.has_ufunc(a):
                # a helper's fresh result (softmax, cross-entropy's gradient) scaled by
                # a ufunc: the ufunc writes into it instead of a second array (not a
                # reduction's: it is small next to what it reads)
                if (
                    not ops.get(a[g.OP]).elementwise
                    and any(
                        tuple(A.nodes[p][g.SHAPE]) == tuple(a[g.SHAPE])
                        for p in g.operands(A, n)
                    )
                    and not memory.kept_by_module(a)
                    and memory.has_ufunc(c)
                    and tuple(c[g.SHAPE]) == tuple(a[g.SHAPE])
                    and c[g.DTYPE] == a[g.DTYPE]
                ):
                    out.add(n)
                continue
            if memory.has_ufunc(c) and tuple(c[g.SHAPE]) == tuple(a[g.SHAPE]):
                out.add(n)
                continue
            top = at[statement_of(n)]
            for p in self.operands(n):
                if (
                    p in at
                    and p not in keep
                    and last.get(p) == top
                    and tuple(g.node_dicts(A)[p][g.SHAPE]) == tuple(a[g.SHAPE])
                ):
                    out.add(n)
                    break
        return out

    def _shared_inside(self, order):
        """Op nodes whose internal value the backward pass builds anyway (``Op.shares``):
        ``mse(y, t)`` computes ``y − t``, and its VJP builds ``sub(y, t)``. Map each such
        op node to that node, so the value is computed once and the op reads it."""
        A = self.A
        present = set(order)
        out = {}
        for n in order:
            shares = ops.get(g.node_dicts(A)[n][g.OP]).shares
            if not shares:
                continue
            args = self.operands(n)
            for d in A.successors(args[0]):
                if (
                    d in present
                    and g.node_dicts(A)[d].get(g.OP) == shares
                    and self.operands(d) == args
                ):
                    out[n] = d
                    break
        return out
