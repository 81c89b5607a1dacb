"""The schedule of one generated function, shared by every backend.

Which op nodes a function computes and in which order (the lexicographic topological
order of what its roots need), how often each value is read and by whom, which values
are single-use temporaries that fold into their one consumer's expression, and the names
of the temporaries that stay statements (``t1``, ``t2``, ...). A statement that would be
longer than a line gets its longest folded temporary back as a statement of its own, until
every statement fits (:meth:`Schedule.settle`).

A backend decides the rest: what a statement is (a NumPy call, a fused loop's call), how
values share buffers, and what may fold (:meth:`Schedule.foldable` takes its veto).
"""

from __future__ import annotations

import re

from .. import graph as g
from .layout import INDENT, LINE
from .naming import Namer

# the stems of temporaries' names, t1, t2, ...: the first that no name of the module
# could be confused with (beside an input ``t``, temporaries are tmp1, tmp2, ...)
TEMP_STEMS = ("t", "tmp", "temp", "u")


def temp_stem(taken):
    """The first of :data:`TEMP_STEMS` no name in ``taken`` reads like (``t``, ``t1``)."""
    for stem in TEMP_STEMS:
        pattern = re.compile(rf"{stem}[0-9]*")
        if not any(pattern.fullmatch(name) for name in taken):
            return stem
    return TEMP_STEMS[-1] + "_"


class Schedule:
    """One function's op nodes in order, with their reads and their consumers.

    Parameters
    ----------
    program : graphgen.codegen.program.Program
        The module's program (its graph, namer and op templates).
    roots : list
        The values the function returns.
    """

    def __init__(self, program, roots):
        A = program.A
        self.program = program
        self.A = A
        self.roots = list(roots)
        self.root_set = set(roots)
        self.need = g.reach(A, roots)
        # the module's schedule restricted to what the roots need: the same list as
        # g.schedule(A, need), since need holds every predecessor of its nodes (a node
        # outside it never delays one inside), without sorting again per function
        need, nodes = self.need, g.node_dicts(A)
        self.order = [
            n for n in program.order if n in need and nodes[n][g.KIND] == g.OPNODE
        ]
        self.uses = {}
        self.consumer = {}

    def move_before(self, value, node):
        """Compute ``value`` right before ``node`` (which reads it from inside)."""
        self.order.remove(value)
        self.order.insert(self.order.index(node), value)

    def count_uses(self, extra=()):
        """How often each needed value is read (``extra``: reads no edge shows), and the
        last op node that reads it."""
        args = self.program.args
        uses = self.uses = dict.fromkeys(self.need, 0)
        consumer = self.consumer = {}
        for n in self.order:
            for p in args[n]:
                uses[p] += 1
                consumer[p] = n
        for d in extra:
            self.uses[d] += 1

    def foldable(self, n, veto=None, forms=None):
        """Whether op node ``n`` is a temporary that may fold into its consumer: unnamed,
        read once, not returned, its consumer's template (in ``forms``, default the
        program's) mentions each argument once, and the backend's ``veto(n)`` does not
        object."""
        if self.program.is_named(n) or self.uses[n] != 1 or n in self.root_set:
            return False
        if veto is not None and veto(n):
            return False
        forms = forms or self.program.forms
        return forms.uses_once(g.node_dicts(self.A)[self.consumer[n]][g.OP])

    def reads(self, n, inline):
        """The values statement ``n`` reads, through the temporaries folded into it
        (each once, in the order a depth-first walk of the arguments meets them)."""
        args = self.program.args
        out = []
        for p in args[n]:
            if p in inline:
                return self._reads_through(n, inline)
            if p in args and p not in out:
                out.append(p)
        return out

    def _reads_through(self, n, inline):
        out, seen = [], set()
        args = self.program.args

        def visit(m):
            for p in args[m]:
                if p in inline:
                    visit(p)
                elif p not in seen and p in args:
                    seen.add(p)
                    out.append(p)

        visit(n)
        return out

    def inlined_children(self, n, inline):
        """The temporaries folded into statement ``n``'s expression."""
        out = []
        args = self.program.args
        stack = [p for p in args[n] if p in inline]
        while stack:
            p = stack.pop()
            out.append(p)
            stack.extend(q for q in args[p] if q in inline)
        return out

    def longest_inlined(self, nodes, inline, names, exprs):
        """In each statement longer than a line, its longest folded temporary (the one to
        make a statement next); empty when every statement fits.

        Statements fold disjoint sets of temporaries, so fixing all of them in one round
        gives the code one statement at a time would, in far fewer rounds.
        """
        out = []
        for n in nodes:
            if n in inline or INDENT + len(names[n]) + 3 + len(exprs[n]) <= LINE:
                continue
            kids = self.inlined_children(n, inline)
            if kids:
                out.append(max(kids, key=lambda p: len(exprs[p])))
        return out

    def name_temporaries(self, nodes, inline, alias=None):
        """Names of the statements among ``nodes``: a named value keeps its name, a
        temporary that ``alias(n, names)`` maps to an earlier one's buffer shares its
        name, every other temporary gets the next ``t<k>``."""
        program = self.program
        names, k = {}, 1
        temps = Namer()
        temps.taken = set(program.namer.taken)
        for n in nodes:
            if n in inline:
                continue
            if program.is_named(n):
                names[n] = program.namer[n]
                continue
            shared = alias(n, names) if alias is not None else None
            if shared is not None:
                names[n] = shared
            else:
                names[n] = temps.fresh(f"{program.temp_stem}{k}")
                k += 1
        return names

    def settle(self, inline, attempt):
        """Run ``attempt(inline) -> (nodes, names, exprs)`` until no statement is longer
        than a line, taking the longest folded temporary out of each one that is."""
        while True:
            nodes, names, exprs = attempt(inline)
            too_long = self.longest_inlined(nodes, inline, names, exprs)
            if not too_long:
                return names, exprs
            inline.difference_update(too_long)


def open_backward(A, statements, header, skip=()):
    """Put the backward pass's opening comment (``header()``) above its first
    statement."""
    for st in statements:
        if g.node_dicts(A)[st.node][g.ROLE] == g.BACKWARD and st.node not in skip:
            st.blank_before = True
            st.comments = header() + st.comments
            return
