"""One namer owns every identifier in generated code.

Spec names can be anything (``"x\\nimport os"``, ``"class"``, ``"h1/relu"``). The namer maps
each to a safe, unique Python identifier: ASCII letters, digits and underscores, not a
keyword, builtin or a name the generated module uses itself, never starting with an
underscore (those are the module's helpers). Original names reach generated code only as
``repr()`` string literals.
"""

from __future__ import annotations

import builtins
import keyword
import re
import unicodedata

from .. import dims
from .. import graph as g

# Names the generated modules define or import at module level or inside functions.
MODULE_NAMES = {
    "np",
    "numba",
    "math",
    "DTYPE",
    "INPUTS",
    "PARAMS",
    "OUTPUTS",
    "DTYPES",
    "LOSS",
    "WRT",
    "forward",
    "value_and_grad",
    "init_params",
    "vjp",
    "jvp",
    "hvp",
    "hessian",
    "tangents",
    "vectors",
    "TANGENTS",
    "arrays",
    "grads",
    "dims",
    "rng",
}
RESERVED = (
    set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins)) | MODULE_NAMES
)

IDENT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# Longer identifiers keep their start and end (scope and role): an imported model's
# tensor names run to 70 characters, and a statement must still fit a line.
MAX_IDENT = 40
HEAD = 15


class Code(str):
    """A string the code generator vouches for: an identifier, literal or expression."""


# a name sanitize leaves as it is (but for a reserved word): ASCII words joined by
# single underscores, starting with a letter
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*\Z")


def sanitize(name) -> str:
    """A best-effort identifier for ``name`` (not yet unique)."""
    if name.__class__ is str and len(name) <= MAX_IDENT and _PLAIN.match(name):
        return name + "_" if name in RESERVED else name  # what the steps below give
    s = (
        unicodedata.normalize("NFKD", str(name))
        .encode("ascii", "ignore")
        .decode("ascii")
    )
    s = re.sub(r"[^A-Za-z0-9_]+", "_", s).strip("_")
    s = re.sub(r"_+", "_", s)
    if not s:
        s = "node"
    if len(s) > MAX_IDENT:
        s = s[:HEAD].rstrip("_") + "_" + s[-(MAX_IDENT - HEAD - 1) :].lstrip("_")
    if s[0].isdigit():
        s = "v" + s
    if s in RESERVED:
        s += "_"
    return s


class Namer:
    """Assigns unique identifiers; the same key always gets the same name."""

    def __init__(self):
        self.names = {}
        self.taken = set()

    @property
    def taken(self):
        """The identifiers handed out (or otherwise in use); a caller may replace it."""
        return self._taken

    @taken.setter
    def taken(self, names):
        self._taken = names
        # per base, the k where the last search for a free ``base_k`` stopped: every
        # ``base_j`` below it is taken, since ``taken`` only grows until replaced here
        self._next = {}

    def fresh(self, base) -> Code:
        base = sanitize(base)
        name, k = base, self._next.get(base, 2)
        if name in self._taken or name in RESERVED:
            name = f"{base}_{k}"
            while name in self._taken or name in RESERVED:
                k += 1
                name = f"{base}_{k}"
            self._next[base] = k + 1
        self._taken.add(name)
        assert IDENT_RE.match(name), name
        return Code(name)

    def name(self, key, base=None) -> Code:
        if key not in self.names:
            self.names[key] = self.fresh(key if base is None else base)
        return self.names[key]

    def __getitem__(self, key) -> Code:
        return self.names[key]

    def __contains__(self, key):
        return key in self.names


def node_names(A, order=None) -> Namer:
    """The code name of every input, param, symbolic size (key ``("dim", s)``) and op node
    of a lowered graph that gets one: inputs and params first, then forward values, then
    each adjoint ``v_bar`` and each term ``v_bar_via_k``, then each tangent ``v_dot`` (of
    a named value; forward mode's other nodes are temporaries), in schedule order
    (``order``: ``graph.schedule(A)``, when the caller has it)."""
    nm = Namer()
    order = g.schedule(A) if order is None else order
    nodes = g.node_dicts(A)
    for n in order:
        if nodes[n][g.KIND] in (g.INPUT, g.PARAM):
            nm.name(n)
    for n in order:
        a = nodes[n]
        if a[g.KIND] == g.OPNODE and a[g.ROLE] == g.FORWARD and not a.get(g.DOT):
            nm.name(n)
    symbols, seen = set(), set()
    for a in nodes.values():
        for d in a[g.SHAPE]:
            if d not in seen:  # each distinct size parsed once
                seen.add(d)
                symbols.update(dims.symbols(d))
    symbols = sorted(symbols)
    for s in symbols:
        nm.name(("dim", s), s)
    for n in order:
        a = nodes[n]
        if a[g.ROLE] != g.BACKWARD or a[g.KIND] != g.OPNODE:
            continue
        if g.ADJOINT_OF in a:
            nm.name(n, f"{nm.names.get(a[g.ADJOINT_OF], a[g.ADJOINT_OF])}_bar")
        elif g.CONTRIB in a:
            k, j = a[g.CONTRIB]
            nm.name(n, f"{nm.names.get(j, j)}_bar_via_{nm.names.get(k, k)}")
    for n in order:
        a = nodes[n]
        if a[g.KIND] == g.OPNODE and a.get(g.DOT) and a.get(g.TANGENT_OF) in nm.names:
            nm.name(n, f"{nm.names[a[g.TANGENT_OF]]}_dot")
    return nm
