"""Comments of generated code: the math of each forward statement, the local derivative of
each backward one, and the sum over successors of each fan-out.

Comment text is made safe here (:func:`safe_comment`: one line, no control characters, no
closing quotes) and wrapped to the line length (:func:`wrap_comment`).
"""

from __future__ import annotations

import re
import textwrap

from .. import graph as g
from .. import ops
from ..notes import fill, partial, product, sum_over
from .layout import INDENT, LINE, literal
from .naming import Code, sanitize

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
# whitespace but the space: without it, every word split at spaces has a non-space
_OTHER_SPACE = re.compile(r"[^\S ]")


def safe_comment(text) -> Code:
    """Text that is safe inside a ``#`` comment or a docstring: one line, no quotes run."""
    text = _CONTROL.sub(" ", str(text)).replace('"""', "'''").replace("\\", "/")
    return Code(text)


def wrap_comment(text, width=LINE - INDENT - 2, indent="  "):
    """A comment as lines that fit the line length (continuations indented by ``indent``;
    ``indent=""`` for a docstring, whose lines ruff aligns)."""
    text = str(safe_comment(text))
    if len(text) <= width - 2 and text[:1] not in " " and text[-1] != " ":
        # one line with no word to cut (most comments): what textwrap would return
        return [Code(text)]
    words = []
    for word in text.split(" "):
        # a token longer than a line (long names inside math) breaks after ) / ( or ·
        while len(word) > width - 2:
            cut = max(word.rfind(c, 0, width - 2) for c in ")/(·")
            if cut <= 0:
                break
            words.append(word[: cut + 1])
            word = word[cut + 1 :]
        words.append(word)
    ordinary = (
        text
        and text[0] != " "
        and text[-1] != " "
        and "  " not in text  # no empty word
        and (_OTHER_SPACE.search(text) is None or all(w.strip() for w in words))
    )
    if not ordinary:  # runs of spaces, whitespace-only words
        lines = textwrap.wrap(
            " ".join(words),
            width=width,
            subsequent_indent=indent,
            break_long_words=False,
            break_on_hyphens=False,
        )
        return [Code(line) for line in lines]
    return [Code(line) for line in _fill(words, width, indent)]


def _fill(words, width, indent):
    """What ``textwrap.wrap`` makes of words joined by single spaces (none of them
    empty or whitespace) without breaking a word: each line takes words while they fit,
    a word too long for any line stands alone. Without textwrap's general machinery, a
    tenth of a big module's codegen (checked against textwrap on random strings:
    tests/test_compile_scale.py)."""
    lines, line, room = [], words[0], width
    for w in words[1:]:
        if len(line) + 1 + len(w) <= room:
            line = f"{line} {w}"
        else:
            lines.append(line)
            line, room = indent + w, width
    lines.append(line)
    return lines


def docstring_lines(text):
    """A kernel's docstring as lines: its continuation lines not indented (ruff aligns
    them with the quotes), each line within the line length with its quotes."""
    lines = wrap_comment(text, width=LINE - INDENT - 3, indent="")
    if len(lines) == 1 and len(lines[0]) > LINE - INDENT - 6:  # both quotes on it
        lines = wrap_comment(text, width=LINE - INDENT - 6, indent="")
    return lines


class Comments:
    """The comments of one module's statements, from the graph's own records: the forward
    math of an op node, and for a backward node the local derivative (``NOTE``) or the
    successors it sums (``SUMS``)."""

    def __init__(self, A, namer, loss):
        self.A = A
        self.namer = namer
        self.loss = loss
        self._nodes = g.node_dicts(A)
        self._shown = (None, None)  # the names display() was last asked for, its show

    def display(self, names):
        """``show(n)``: how node ``n`` reads in comments, given the function's names
        (the same function for the same ``names``, which a statement asks for often)."""
        if self._shown[0] is names:
            return self._shown[1]
        named = self.namer.names  # read directly: hundreds of thousands of calls
        nodes = self._nodes

        def show(n):
            v = named.get(n)
            if v is not None:
                return v
            if n not in names and n not in nodes and not str(n).startswith("bwd/"):
                return sanitize(n)  # a spec node the optimizer removed (a first loss)
            return names.get(n, "…")

        self._shown = (names, show)
        return show

    def pass_of(self, n):
        """(loss, adjoint map) of the adjoint pass that made node ``n``."""
        passes = self.A.graph.get("passes") or []
        a = self._nodes.get(n)
        p = a.get(g.PASS) if a is not None else None
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
        if v is None or v not in self._nodes:  # folded into its consumers: say so
            loss = self.display(names)(loss)
            return partial(loss, self.display(names)(n))
        if g.node_dicts(self.A)[v][g.KIND] == g.CONST:
            return literal(g.node_dicts(self.A)[v][g.VALUE])
        return self.display(names)(v)

    def note(self, template, ids, attrs, names, term=None, of=None):
        """Fill a math template; ``term`` = (node, name) names that node's adjoint term."""

        def bar(nid):
            return term[1] if term and nid == term[0] else self.bar_name(nid, names, of)

        return fill(template, ids, attrs, show=self.display(names), bar=bar)

    def math_of(self, n, names):
        """The forward math of op node ``n`` with code names: ``z2 = h1 @ W2``."""
        A = self.A
        op = ops.get(g.node_dicts(A)[n][g.OP])
        ins = g.operands(A, n)
        text = op.math_for(g.node_dicts(A)[n][g.ATTRS])
        if op.variadic:
            text = text.replace(
                "{" + op.args[0] + "}",
                "(" + ", ".join(self.display(names)(p) for p in ins) + ")",
            )
            ids = {"y": n}
        else:
            ids = {"y": n, **dict(zip(op.args, ins))}
        return self.note(text, ids, g.node_dicts(A)[n][g.ATTRS], names)

    def comments(self, n, names):
        A, a = self.A, g.node_dicts(self.A)[n]
        show = self.display(names)
        if a.get(g.DOT):
            return self.tangent_comments(n, names)
        if a[g.ROLE] == g.FORWARD:
            if ops.get(a[g.OP]).reads_as_code:  # no comment needed
                return []
            return wrap_comment(self.math_of(n, names))
        pass_loss = self.pass_of(n)[0]
        loss = show(pass_loss) if pass_loss is not None else "J"
        target = names.get(n, show(n))
        if g.SUMS in a:
            j = a[g.ADJOINT_OF]
            succ = ", ".join(show(k) for k in a[g.SUMS])
            each = sum_over("k", product([partial(loss, "k"), partial("k", show(j))]))
            text = (
                f"{target} = {partial(loss, show(j))} = {each}, summed "
                f"over the successors k of {show(j)}: {succ}"
            )
            if a.get(g.JOINED):  # optimize.concat_slices
                text += (
                    "; each term is zero outside its slice, so the sum is their "
                    "concatenation"
                )
            return wrap_comment(text)
        if g.ADJOINT_OF in a:
            j = a[g.ADJOINT_OF]
            head = f"{target} = {partial(loss, show(j))}"
        elif g.CONTRIB in a:
            k, j = a[g.CONTRIB]
            term = partial(loss, show(j))
            head = f"{target} = the term of {term} that flows through {show(k)}"
        else:
            return []
        note = a.get(g.NOTE)
        if not note or not note[0] or note[1].get("y") in (None, j):
            return wrap_comment(head)
        template, ids, attrs = note
        k = ids["y"]
        deriv = self.note(template, ids, attrs, names, term=(j, target), of=n)
        if deriv.startswith("∂") and " = " in deriv:
            rhs = deriv.split(" = ", 1)[1]
            if k == pass_loss or self.bar_name(k, names, n) == "1.0":
                text = f"{head} = {rhs}"
            else:
                local = partial(show(k), show(j))
                chain = product([self.bar_name(k, names, n), local])
                text = f"{head} = {chain}, where {local} = {rhs}"
        elif k in A:
            text = f"{head}; through {self.math_of(k, names)}: {deriv}"
        else:  # the successor was optimized away (a graph differentiated twice)
            text = f"{head}: {deriv}"
        if a[g.OP] == "sum_to_shape":
            text += " (summed over the axes broadcasting stretched)"
        return wrap_comment(text)

    def tangent_comments(self, n, names):
        """A forward-mode node's comment: the sum over the arguments ``j`` of ``k`` for a
        tangent ``k_dot`` with several terms (``FSUMS``); for one term, the local
        derivative ``∂k/∂j`` it applies to ``j_dot`` (``FCONTRIB``, ``NOTE``)."""
        A, a = self.A, g.node_dicts(self.A)[n]
        show = self.display(names)
        target = names.get(n, show(n))
        if g.FSUMS in a:
            k = a[g.TANGENT_OF]
            args = ", ".join(show(j) for j in a[g.FSUMS])
            each = sum_over("j", product([partial(show(k), "j"), "j_dot"]))
            return wrap_comment(
                f"{target} = {each}, summed over the arguments j of {show(k)}: {args}"
            )
        if g.FCONTRIB not in a:
            return []
        k, j, j_dot = a[g.FCONTRIB]
        local = partial(show(k), show(j))
        j_dot = names.get(j_dot) or self.namer.names.get(j_dot)
        j_dot = j_dot or f"(the tangent of {show(j)})"  # folded into this statement
        head = f"{target} = {product([local, j_dot])}"
        if g.TANGENT_OF not in a:
            head = f"{target} = the term of {show(k)}_dot through {show(j)}: " + (
                product([local, j_dot])
            )
        template, ids, attrs = a.get(g.NOTE) or ("", {}, {})
        # a local derivative ∂y/∂x = ..., not a VJP's formula (x̄ = ȳ @ Wᵀ)
        chain = template.startswith("∂") and "̄" not in template
        deriv = self.note(template, ids, attrs, names) if chain else ""
        if " = " in deriv:
            text = f"{head}, where {local} = {deriv.split(' = ', 1)[1]}"
        elif k in A and g.node_dicts(A)[k].get(g.KIND) == g.OPNODE:
            text = f"{head}, through {self.math_of(k, names)}"
        else:
            text = head
        return wrap_comment(text)

    def value_text(self, n, names):
        """The formula of backward node ``n``'s value (``hᵀ @ y_bar``), where the local
        derivative it applies says it; else None."""
        a = g.node_dicts(self.A)[n]
        note = a.get(g.NOTE)
        if g.ADJOINT_OF in a:
            j = a[g.ADJOINT_OF]
        elif g.CONTRIB in a:
            j = a[g.CONTRIB][1]
        else:
            return None
        if not note or not note[0] or note[1].get("y") in (None, j):
            return None
        template, ids, attrs = note
        target = names.get(n, self.display(names)(n))
        deriv = self.note(template, ids, attrs, names, term=(j, target), of=n)
        if " = " not in deriv:
            return None
        rhs = deriv.split(" = ", 1)[1]
        if deriv.startswith("∂") and ids["y"] != self.pass_of(n)[0]:
            return None  # a local derivative, not the value
        return rhs

    def backward_header(self):
        """The comment that opens the backward pass: what ``v_bar`` means."""
        v_bar = partial(self.namer[self.loss], "v")
        return wrap_comment(
            f"Backward pass, from the loss back: v_bar = {v_bar}, "
            "the sum over v's successors k of k_bar · ∂k/∂v."
        )
