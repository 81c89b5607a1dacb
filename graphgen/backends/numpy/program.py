"""The NumPy backend: one NumPy statement per value, with a memory plan.

What it adds to the shared :class:`~graphgen.codegen.program.Program`: each function's
statements are planned for memory (:mod:`.memory`): a value is dropped (``del``) after its
last read, a ufunc writes into a buffer that dies at that statement (``out=``), and a
fan-out's sum accumulates in place (``+=``); an elementwise chain is split where that lets
it work in place.
"""

from __future__ import annotations

from ... import graph as g
from ...codegen import layout
from ...codegen.comments import safe_comment
from ...codegen.layout import INDENT, unpack_line
from ...codegen.naming import Code, Namer
from ...codegen.program import MASKS, Function, Program, Statement
from . import memory


class NumpyProgram(Program):
    """The NumPy module's program."""

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
            comments = self.notes.comments(n, names)
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
                st.comments = self.notes.backward_header() + st.comments
                break
        return Function(
            Code(name),
            [safe_comment(d) for d in doc],
            statements,
            returns_fn(names, used),
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
