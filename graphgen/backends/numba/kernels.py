"""Fused groups as ``@numba.njit`` loop nests: one group, one kernel.

A kernel is planned first (:class:`Plan`: which input gives each loop's extent, which
nodes run in which *stage*, which values go through the row buffer or the float64
accumulator) and printed once, at the end, when its name is final (:class:`KernelText`).
Groups whose plans are equal but for node names (the relu of every layer of a CNN) share
one kernel: :func:`plan_key` is the plan with every node replaced by its position, so
sharing is decided on the graph, not on text. A kernel that serves one group is printed
with the group's names and its math in comments; a shared one with generic names and the
groups it serves in its docstring.

Inside the loops over the leading axes, the group's nodes run in stages, each one loop
over the last axis that LLVM vectorizes (:func:`stages`); reductions accumulate per
column of the last axis into one float64 array.
"""

from __future__ import annotations

import dataclasses

from ... import dims, ops
from ... import graph as g
from ...codegen.comments import docstring_lines, wrap_comment
from ...codegen.layout import INDENT, LINE, bracketed, literal, statement, wrap
from ...codegen.layout import value as layout_value
from ...codegen.naming import Code, Namer
from ...codegen.program import Statement
from ...codegen.render import helper
from . import fusion

# A stage of a kernel (one loop over the last axis) touches at most this many arrays
# besides the kernel's own row buffer and accumulator (:func:`stages`).
STAGE_ARRAYS = 4
# ... and calls transcendentals on at most this many distinct arguments: past that, LLVM
# stopped vectorizing W5's stage (16 sin and 16 cos: 1.3 ms a call, 4 per stage 0.25 ms)
STAGE_TRANSCENDENTALS = 4
# float32 kernels' partial sums: rows added in float32 before they go into float64
ACC_BLOCK = 16


def row_calls(prog, grp, exclude):
    """The members of a staged kernel computed by a row call: an op with a row helper in
    the module's inline math (vecmath), of a member (whose row the previous stage leaves
    in the row buffer); ``exclude``: the ops the function leaves to NumPy."""
    A, members = prog.A, set(grp.members)
    if not prog.inline_math:
        return set()
    return {
        n
        for n in grp.members
        if A.nodes[n][g.OP] in prog.row_ops
        and A.nodes[n][g.OP] not in exclude
        and g.operands(A, n)[0] in members
    }


def stages(prog, grp, calls=frozenset()):
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
    A = prog.A
    stage, depth = {}, {}
    # filled: how many nodes the current stage holds
    cur, touched, trans_args, filled = 0, set(), set(), 0
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
        trans = ops.get(A.nodes[n][g.OP]).transcendental
        key = tuple(ins)
        if n in calls:  # computed before its stage's loop, from a row
            if filled:
                cur, touched, trans_args = cur + 1, set(), set()
            stage[n], depth[n], filled = cur, 0, 1
            touched |= arrays
            continue
        if trans and key in by_args:
            stage[n], depth[n] = by_args[key]
            filled += stage[n] == cur
            continue
        d = max((depth[p] for p in ins if p in members and stage[p] == cur), default=0)
        if filled and (
            trans
            and (d >= 1 or len(trans_args) >= STAGE_TRANSCENDENTALS)
            or len(touched | arrays) > STAGE_ARRAYS
        ):
            cur, touched, trans_args, d, filled = cur + 1, set(), set(), 0, 0
        stage[n], depth[n] = cur, d + trans
        filled += 1
        touched |= arrays
        if trans:
            trans_args.add(key)
            by_args[key] = (cur, depth[n])
    for t in grp.tails:
        stage[t] = stage[g.operands(A, t)[0]]
    return stage


@dataclasses.dataclass
class Plan:
    """Every decision about one group's kernel that does not depend on names."""

    grp: object
    chunked: bool  # parallel: the outer loop split into numba.prange chunks
    extents: list  # per axis: ("shape", param, axis) | ("const", d) | ("passed", d)
    calls: set  # members computed by a row call
    stage: dict  # node -> stage
    slot: dict  # node -> its row of the row buffer
    acc_slot: dict  # tail -> its row of the float64 accumulator
    blocked: bool  # float32 partial sums, added into the accumulator in blocks
    axes: dict  # tail -> (reduced axes, kept axes)
    # the last axis's extent read off an input, ("shape", param, axis), where it is
    # written as a constant for the row buffer or accumulator (None: not written so)
    last_read: tuple | None = None

    def reading_last(self):
        """This plan with the last axis's size read off its input, not a constant: for
        a kernel that serves groups of several last-axis sizes."""
        if self.last_read is None:
            return self
        return dataclasses.replace(self, extents=[*self.extents[:-1], self.last_read])


def plan(prog, grp, exclude):
    """The :class:`Plan` of ``grp``'s kernel (``exclude``: the ops the function it is
    called from leaves to NumPy)."""
    A = prog.A
    R = len(grp.domain)
    chunked = prog.parallel
    staged = not chunked
    calls = row_calls(prog, grp, exclude) if staged else set()
    stage = stages(prog, grp, calls) if staged else dict.fromkeys(grp.nodes, 0)
    in_group = set(grp.nodes)
    # members read by a later stage: one row of the kernel's row buffer each
    slot = {}
    for n in grp.nodes:
        for p in g.operands(A, n):
            if p in in_group and stage[p] != stage[n] and p not in slot:
                slot[p] = len(slot)
        if n in calls and n not in slot:
            slot[n] = len(slot)
    axes = {t: fusion.reduced_axes(A, t, grp.domain) for t in grp.tails}
    # tails that keep no axis but the last (or none): one row of the kernel's float64
    # accumulator each, indexed by the last axis, so that `acc[k, i] += v` vectorizes
    # (a scalar `+=` is a reduction LLVM may not reorder)
    acc_slot = {}
    if staged:
        for t in grp.tails:
            left = [i for i in range(R) if i not in axes[t][0]]
            if left in ([], [R - 1]):
                acc_slot[t] = len(acc_slot)
    # float32: the loops add into float32 partial sums (8 lanes per vector, where a
    # float64 accumulator halves every vector of the stage), which go into the float64
    # accumulator every ACC_BLOCK rows: each partial sum adds at most ACC_BLOCK values,
    # about the error of NumPy's pairwise float32 sums
    blocked = bool(acc_slot) and R >= 2 and prog.dtype == "float32"
    # the extent of each axis, read off an input that has it; a size the spec fixes is
    # written as a constant where the kernel has a row buffer or an accumulator (with a
    # constant row length LLVM proves their rows do not overlap); other sizes are read
    # off the arrays, so that kernels doing the same on different sizes are one kernel
    # (and a kernel several groups of different last-axis sizes share reads that one
    # too: :meth:`Plan.reading_last`)
    extents, last_read = [], None
    for k, d in enumerate(grp.domain):
        src = None
        for i, p in enumerate(grp.inputs):
            s = A.nodes[p][g.SHAPE]
            j = k - (R - len(s))
            if 0 <= j < len(s) and s[j] == d:
                src = ("shape", i, j)
                break
        if src is None and not isinstance(d, int):  # a size only an attribute names
            extents.append(("passed", d))  # (broadcast_to): pass it
        elif src is None:
            extents.append(("const", d))
        elif isinstance(d, int) and k == R - 1 and (slot or acc_slot):
            extents.append(("const", d))
            last_read = src
        else:
            extents.append(src)
    return Plan(
        grp, chunked, extents, calls, stage, slot, acc_slot, blocked, axes, last_read
    )


def plan_key(prog, p):
    """``p`` with every node replaced by its position: equal keys, one kernel. The
    last axis's size is left out where the plan writes it as a constant only for the
    row buffer's sake (:attr:`Plan.last_read`): ResNet's and DenseNet's blocks repeat
    at several widths, and one kernel compiles once (~0.3 s) where each width cost a
    copy of its own."""
    A = prog.A
    grp = p.grp
    ref = {q: ("in", i) for i, q in enumerate(grp.inputs)}
    ref.update({n: ("node", i) for i, n in enumerate(grp.nodes)})

    def operand(q):
        a = A.nodes[q]
        return ref[q] if q in ref else ("const", repr(float(a[g.VALUE])))

    extents = p.reading_last().extents
    inputs = tuple(
        (len(A.nodes[q][g.SHAPE]), tuple(d == 1 for d in A.nodes[q][g.SHAPE]))
        for q in grp.inputs
    )

    def attrs(n):  # shapes show in a kernel as its extents, never as attributes
        if n in p.axes:
            reduced, kept = p.axes[n]
            return (tuple(sorted(reduced)), tuple(sorted(kept)))
        at = prog.attrs_code(n, set())
        return repr(sorted((k, v) for k, v in at.items() if k != "shape"))

    nodes = tuple(
        (
            A.nodes[n][g.OP],
            attrs(n),
            tuple(operand(q) for q in g.operands(A, n)),
            len(A.nodes[n][g.SHAPE]),
        )
        for n in grp.nodes
    )
    return (
        len(grp.domain),
        len(grp.members),
        tuple(p.stage[n] for n in grp.nodes),
        tuple(i for i, n in enumerate(grp.nodes) if n in p.calls),
        inputs,
        nodes,
        tuple(ref[o] for o in grp.outputs),
        tuple(e if e[0] != "passed" else ("passed",) for e in extents),
    )


def call_args(prog, p, names, used):
    """The arguments a call of ``p``'s kernel passes: the group's inputs (0-d ones as
    DTYPE scalars), the sizes only an attribute names, Numba's thread count."""
    A = prog.A
    args = [
        Code(f"DTYPE({prog.arg_name(q, names)})")
        if len(A.nodes[q][g.SHAPE]) == 0
        else prog.arg_name(q, names)
        for q in p.grp.inputs
    ]
    args += [prog.dim(e[1], used) for e in p.extents if e[0] == "passed"]
    if p.chunked:  # Numba's thread count, read by the caller (cache=True-safe)
        args.append(Code("numba.get_num_threads()"))
    return args


class KernelText:
    """The text of one planned kernel.

    ``names``: the code names of the group's function (None: generic names a0, t1, ...
    and no comments, for a kernel several groups share). ``doc``: its docstring's lines.
    """

    def __init__(self, prog, p, names, name, doc):
        self.prog, self.p, self.grp, self.A = prog, p, p.grp, prog.A
        self.generic = names is None
        self.names = names or {}
        self.name, self.doc = name, doc
        self.R = len(self.grp.domain)
        self.kn = Namer()
        self._name_parameters()
        self._choose_locals()
        self._outputs()
        self._bodies()

    # names ------------------------------------------------------------------------
    def _name_parameters(self):
        prog, p, kn, R = self.prog, self.p, self.kn, self.R
        if self.generic:
            kn.taken = {"DTYPE", "np", "numba"}
            self.pnames = {q: kn.fresh(f"a{k}") for k, q in enumerate(self.grp.inputs)}
        else:
            kn.taken = set(prog.namer.taken) | set(self.names.values())
            self.pnames = {q: prog.arg_name(q, self.names) for q in self.grp.inputs}
        self.pcode = [self.pnames[q] for q in self.grp.inputs]
        self.idx = [kn.fresh(f"i{k}") for k in range(R)]
        self.ext = [kn.fresh(f"n{k}") for k in range(R)]
        if p.chunked:
            self.nt, self.c = kn.fresh("nt"), kn.fresh("c")
        self.extents = []
        for k, e in enumerate(p.extents):
            if e[0] == "passed":
                self.pcode.append(self.ext[k])
            elif e[0] == "const":
                self.extents.append((self.ext[k], Code(str(e[1]))))
            else:
                param = self.pnames[self.grp.inputs[e[1]]]
                self.extents.append((self.ext[k], Code(f"{param}.shape[{e[2]}]")))
        if p.chunked:
            self.pcode.append(self.nt)
            self.extents.append(
                (self.nt, Code(f"min({self.nt}, max(1, {self.ext[0]} // 8))"))
            )

    def _choose_locals(self):
        """Which members get a local, which fold into their single consumer."""
        prog, A, grp, p, kn = self.prog, self.A, self.grp, self.p, self.kn
        in_group = set(grp.nodes)
        count, cons = {}, {}
        for n in grp.nodes:
            for q in g.operands(A, n):
                if q in in_group:
                    count[q] = count.get(q, 0) + 1
                    cons[q] = n
        self.out_set = set(grp.outputs)
        self.inline = {
            n
            for n in grp.members
            if n not in self.out_set
            and (self.generic or n not in prog.namer)
            and count.get(n, 0) == 1
            and p.stage[cons[n]] == p.stage[n]
            and (cons[n] in grp.tails or prog.scalar_uses_once(A.nodes[cons[n]][g.OP]))
        }
        self.rows, self.accs = kn.fresh("rows"), kn.fresh("acc")
        self.local = {}
        k = 1
        for n in grp.members:
            if n in self.inline:
                continue
            if self.generic:
                self.local[n] = kn.fresh(f"t{k}")
                k += 1
            elif n in prog.namer:
                self.local[n] = prog.namer[n]
            elif n in self.out_set:
                self.local[n] = self.names[n]
            else:
                self.local[n] = kn.fresh(f"{prog.temp_stem}{k}")
                k += 1
        self.show_names = dict(self.names)
        self.show_names.update(
            {n: v for n, v in self.local.items() if n not in prog.namer}
        )

    # the arrays a kernel makes and returns ------------------------------------------
    def _outputs(self):
        prog, grp, p, kn, R = self.prog, self.grp, self.p, self.kn, self.R
        ext, idx = self.ext, self.idx
        self.arrays, self.scalars, self.after, self.returns = [], [], [], []
        self.out_array = {}
        for o in grp.outputs:
            if o in grp.tails and self.generic:
                self.out_array[o] = kn.fresh(f"r{len(self.out_array)}")
            elif o in grp.tails:
                self.out_array[o] = prog.arg_name(o, self.names)
            else:
                self.out_array[o] = kn.fresh(f"{self.local[o]}_out")
        self.tail_index = {}
        for t in grp.tails:
            axes, kept = p.axes[t]
            parts = [
                Code("0") if i in kept else idx[i]
                for i in range(R)
                if i not in axes or i in kept
            ]
            self.tail_index[t] = (axes, parts)
        self.part, self.nrow = (
            (kn.fresh("part"), kn.fresh("nrow")) if p.blocked else (None, None)
        )
        for o in grp.outputs:
            arr = self.out_array[o]
            if o in p.acc_slot:
                self._accumulated(o, arr)
            elif o in grp.tails:
                self._reduced(o, arr)
            else:
                shape = Code("(" + ", ".join(ext) + ("," if R == 1 else "") + ")")
                self.arrays.append((arr, Code("empty"), shape))
            self.returns.append(arr)
        if p.slot:
            self.arrays.insert(
                0, (self.rows, Code("empty"), Code(f"({len(p.slot)}, {ext[R - 1]})"))
            )
        if p.acc_slot:
            acc_shape = Code(f"({len(p.acc_slot)}, {ext[R - 1]})")
            if p.blocked:
                self.arrays.insert(0, (self.part, Code("zeros"), acc_shape))
                self.after[:0] = [Code(f"{self.accs} += {self.part}")]
            self.arrays.insert(0, (self.accs, Code("zeros"), acc_shape))

    def _accumulated(self, o, arr):
        """A tail summed into its row of the accumulator, converted after the loops."""
        A, R, k = self.A, self.R, self.p.acc_slot[o]
        axes, parts = self.tail_index[o]
        self.tail_index[o] = (
            axes,
            [Code(str(k)), self.idx[R - 1]],
            self.part or self.accs,
        )
        shape = self.tail_shape(o)
        accs = self.accs
        if any(c != "0" for c in parts):  # keeps the last axis
            conv = f"{accs}[{k}].astype(DTYPE)"
            if len(A.nodes[o][g.SHAPE]) != 1:
                conv += f".reshape({shape})"
        elif parts:  # keeps no axis, but keepdims
            conv = f"np.full({shape}, {accs}[{k}].sum(), dtype=DTYPE)"
        else:
            conv = f"{accs}[{k}].sum()"
        self.after.append(Code(f"{arr} = {conv}"))
        self._mean(o, arr, axes)

    def _reduced(self, o, arr):
        """A tail summed into an array (or a scalar) of its own shape."""
        axes, parts = self.tail_index[o]
        shape = self.tail_shape(o)
        if self.p.chunked and 0 in axes:  # per-chunk partial sums
            part = self.kn.fresh(f"{arr}_part")
            inner = shape[1:-1].rstrip(",")
            pshape = Code(f"({self.nt}, {inner})" if inner else f"({self.nt},)")
            self.arrays.append((part, Code("zeros"), pshape))
            self.after.append(
                Code(
                    f"{arr} = {part}.sum(axis=0)" if parts else f"{arr} = {part}.sum()"
                )
            )
            self.tail_index[o] = (axes, [self.c] + parts, part)
        elif parts:
            self.arrays.append((arr, Code("zeros"), shape))
            self.tail_index[o] = (axes, parts, arr)
        else:
            self.scalars.append(arr)
            self.tail_index[o] = (axes, parts, arr)
        self._mean(o, arr, axes)

    def _mean(self, o, arr, axes):
        if fusion.TAILS[self.A.nodes[o][g.OP]].mean:
            count = " * ".join(self.ext[i] for i in sorted(axes)) or "1"
            self.after.append(Code(f"{arr} /= {count}"))  # x /= a * b: x / (a * b)

    def tail_shape(self, node):
        """A tail's shape in terms of the kernel's extents (its axes are domain axes)."""
        R, ext = self.R, self.ext
        reduced, kept = self.p.axes[node]
        dims_ = [
            Code("1") if i in kept else ext[i]
            for i in range(R)
            if i not in reduced or i in kept
        ]
        return Code("(" + ", ".join(dims_) + ("," if len(dims_) == 1 else "") + ")")

    # the loop bodies ------------------------------------------------------------------
    def _element(self, q):
        a = self.A.nodes[q]
        if a[g.KIND] == g.CONST:  # a float32 one in float32 modules, as in NumPy
            value = literal(float(a[g.VALUE]))  # (a bare literal is a float64 in
            if self.prog.dtype == "float32":  # Numba, which widens the arithmetic)
                return Code(f"np.float32({value})")
            return value
        shape = a[g.SHAPE]
        if not shape:
            return self.pnames[q]
        s = [
            Code("0") if d == 1 else self.idx[self.R - len(shape) + j]
            for j, d in enumerate(shape)
        ]
        return Code(self.pnames[q] + "[" + ", ".join(s) + "]")

    def _line(self, head, rhs):  # a statement of a loop body, laid out as ruff does
        return Code(head + layout_value(rhs, self.depth + len(head), self.depth))

    def _comments(self, n):
        return [] if self.generic else self.prog.notes.comments(n, self.show_names)

    def _bodies(self):
        A, grp, p, R = self.A, self.grp, self.p, self.R
        self.depth = INDENT * (1 + R + (1 if p.chunked else 0))
        self.here = Code("[" + ", ".join(self.idx) + "]")
        self.stage_bodies = [[] for _ in range(max(p.stage.values(), default=0) + 1)]
        self.pre = [[] for _ in self.stage_bodies]  # row calls before a stage's loop
        order = list(grp.members)
        for t in grp.tails:  # a tail right after the member it reads
            order.insert(order.index(g.operands(A, t)[0]) + 1, t)
        self.exprs = {}
        for n in order:
            self._statement(n)
        for body in self.stage_bodies:
            for s in body:  # wrap the comments for the loop body's indentation
                if s.comments:
                    s.comments = wrap_comment(
                        " ".join(c.strip() for c in s.comments),
                        width=LINE - self.depth - 2,
                    )
            for s in body[1:]:
                s.blank_before = bool(s.comments)
        for calls in self.pre:
            for s in calls:
                if s.comments:
                    s.comments = wrap_comment(
                        " ".join(c.strip() for c in s.comments) + " (a whole row)",
                        width=LINE - self.depth + 2,
                    )

    def _args(self, n):
        A, p, R = self.A, self.p, self.R
        args = []
        for q in g.operands(A, n):
            if q in self.exprs and p.stage[q] != p.stage[n]:
                args.append(Code(f"{self.rows}[{p.slot[q]}, {self.idx[R - 1]}]"))
            elif q in self.exprs:
                args.append(wrap(self.exprs[q]) if q in self.inline else self.local[q])
            else:
                args.append(wrap(self._element(q)))
        return args

    def _statement(self, n):
        A, p, R = self.A, self.p, self.R
        body = self.stage_bodies[p.stage[n]]
        args = self._args(n)
        if n in self.grp.tails:
            _, parts, arr = self.tail_index[n]
            target = Code(arr + ("[" + ", ".join(parts) + "]" if parts else ""))
            line = self._line(f"{target} += ", args[0])
            body.append(Statement(target, line, self._comments(n), n))
            return
        comments = self._comments(n)
        if n in p.calls:  # the whole row, before the stage's loop
            op = A.nodes[n][g.OP]
            src = g.operands(A, n)[0]
            row = helper(f"nb_{op}_row")
            call = f"{row}({self.rows}[{p.slot[src]}], {self.rows}[{p.slot[n]}])"
            self.pre[p.stage[n]].append(Statement(Code(""), Code(call), comments, n))
            # read straight from the row wherever it is used: no loop of its own
            self.exprs[n] = self.local[n] = Code(
                f"{self.rows}[{p.slot[n]}, {self.idx[R - 1]}]"
            )
            if n in self.out_set:
                out = self.out_array[n]
                line = self._line(f"{out}{self.here} = ", self.local[n])
                body.append(Statement(out, line, [], n))
            return
        self.exprs[n] = self.prog.render_scalar(n, args)
        if n in self.inline:
            return
        local = self.local[n]
        body.append(
            Statement(local, self._line(f"{local} = ", self.exprs[n]), comments, n)
        )
        if n in self.out_set:
            out = self.out_array[n]
            body.append(
                Statement(out, self._line(f"{out}{self.here} = ", local), [], n)
            )
        if n in p.slot:
            target = Code(f"{self.rows}[{p.slot[n]}, {self.idx[R - 1]}]")
            body.append(Statement(target, self._line(f"{target} = ", local), [], n))

    # the kernel -------------------------------------------------------------------
    def _loops(self):
        p, R, idx, ext = self.p, self.R, self.idx, self.ext
        loops = []
        if p.chunked:
            loops.append(Code(f"for {self.c} in numba.prange({self.nt}):"))
            loops.append(
                Code(
                    f"for {idx[0]} in range({self.c} * {ext[0]} // {self.nt}, "
                    f"({self.c} + 1) * {ext[0]} // {self.nt}):"
                )
            )
        else:
            loops.append(Code(f"for {idx[0]} in range({ext[0]}):"))
        for i in range(1, R):
            loops.append(Code(f"for {idx[i]} in range({ext[i]}):"))
        stages_ = [{"header": None, "body": self.stage_bodies[0], "pre": []}]
        if not p.chunked:  # the last axis's loop once per stage, inside the others
            last = loops.pop()
            stages_ = [  # a stage with only row calls has no loop
                {"header": last if b else None, "body": b, "pre": c}
                for b, c in zip(self.stage_bodies, self.pre)
            ]
        return loops, stages_

    def render(self, template) -> Code:
        prog, p = self.prog, self.p
        loops, stages_ = self._loops()
        options = ["cache=_CACHE"] if prog.cache else []
        options.append('error_model="numpy"')
        if prog.fastmath:
            options.append("fastmath=True")
        if prog.parallel:
            options.append("parallel=True")
        ctx = {
            "options": Code(", ".join(options)),
            "signature": bracketed(f"def {self.name}", self.pcode, ":", 0),
            "doc": self.doc,
            "extents": self.extents,
            "arrays": [
                statement(
                    f"{ident} = np.{init}({shape}, dtype="
                    + ("np.float64)" if ident == self.accs else "DTYPE)")
                )
                for ident, init, shape in self.arrays
            ],
            "scalars": self.scalars,
            "loops": loops,
            "stages": stages_,
            "acc": self.accs,
            "block": (
                {"part": self.part, "nrow": self.nrow, "size": ACC_BLOCK}
                if p.blocked
                else None
            ),
            "depth": self.depth,
            "after": [statement(line) for line in self.after],
            "returns": bracketed("return ", self.returns, "", INDENT, parens=False),
        }
        return Code(template.render(**ctx).rstrip("\n"))

    def computed(self):
        """What the kernel computes, as its docstring lists it: its named values and
        every output it returns."""
        show = self.prog.notes.display(self.show_names)
        outs = set(self.grp.outputs)
        return [show(n) for n in self.grp.nodes if n in self.prog.namer or n in outs]


def own_doc(prog, text_):
    """The docstring of a kernel that serves one group."""
    return docstring_lines(
        f"One loop nest over {dims.fmt_shape(text_.grp.domain)} computing "
        + (", ".join(text_.computed()) or "temporaries")
        + "."
    )


def shared_doc(served):
    """The docstring of a kernel shared by several groups: what it computes where."""
    by_domain = {}
    for domain, outs in served:
        by_domain.setdefault(domain, []).append(outs)
    return docstring_lines(
        f"One loop nest shared by {len(served)} fused groups: computing "
        + "; ".join(f"{', '.join(o)} over {d}" for d, o in by_domain.items())
        + "."
    )
