"""The Jinja environment every backend renders with, and the checks around it.

Templates are dumb and strict (``StrictUndefined``, ``trim_blocks``, ``lstrip_blocks``);
every value they print passes :func:`_finalize`, which refuses anything but vetted
:class:`~graphgen.codegen.naming.Code` or a number. Each backend looks its templates up
through one ``ChoiceLoader``: ``templates/<backend>/`` first, then the templates it
derives from, so a backend's templates override only what differs.
"""

from __future__ import annotations
import __future__

import contextlib
import contextvars
import dataclasses
import gc
import itertools
import re
import types
from functools import cache
from pathlib import Path

import jinja2
from jinja2 import nodes

from .. import graph as g
from ..errors import CodegenError
from .layout import power_operand
from .naming import Code


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

    def template_of(self, name):
        """The name of the template whose macro ``name`` wins (None: no such macro)."""
        for m in self.modules:
            if isinstance(m, Macros):
                found = m.template_of(name)
                if found is not None:
                    return found
            elif getattr(m, name, None) is not None:
                return m.__name__
        return None


# Where a macro whose arguments are only printed (see printed_form) is rendered with
# these in their places: the pieces around them are its text for those attributes.
_SLOT = re.compile("\x00([0-9]+)\x00")


def slots(count):
    """``count`` placeholders to render a printed form with (see :func:`pieces`)."""
    return [Code(f"\x00{i}\x00") for i in range(count)]


def pieces(text):
    """``text`` rendered with :func:`slots` as (literal, slot index) pairs, the last
    index None: the form's text for any arguments is the literals with each argument
    between them (:func:`fill_pieces`)."""
    parts = _SLOT.split(text)
    return tuple(
        (parts[i], int(parts[i + 1]) if i + 1 < len(parts) else None)
        for i in range(0, len(parts), 2)
    )


def fill_pieces(form, args) -> str:
    """The text of a printed form (:func:`pieces`) with ``args`` in its slots, each
    passing the environment's ``finalize`` guard as a printed value does."""
    out = []
    for text, i in form:
        out.append(text)
        if i is not None:
            out.append(str(_finalize(args[i])))
    return "".join(out)


@cache
def printed_form(env, template, name):
    """Whether macro ``name`` of ``template`` (in ``env``) is a *printed form*: its last
    parameter is ``at`` and every other one is only ever printed whole (``{{ x }}``),
    never tested, filtered, compared or passed on, and it reads no name but its
    parameters, its own loop variables and ``helper``.

    Its text is then a function of ``at`` alone with the arguments pasted where they are
    printed: rendered once per distinct ``at`` with :func:`slots`, it is those pieces
    for any arguments (``tanh(x, at)`` is ``"np.tanh(" x ")"``). A static check of the
    template's syntax tree, so that no argument can change the text but by being
    printed (``pow``'s ``is power_operand`` tests its arguments: not a printed form).
    """
    found = [m for m in _macro_nodes(env, template) if m.name == name]
    if len(found) != 1:
        return False
    (macro,) = found
    params = [a.name for a in macro.args]
    if macro.defaults or not params or params[-1] != "at":
        return False
    printed = set(params[:-1])
    own = {
        n.name for n in macro.find_all(nodes.Name) if n.ctx in ("store", "param")
    } | {"helper", "loop"}

    def ok(node, parent):
        if isinstance(node, _OPAQUE):
            return False
        if isinstance(node, nodes.Name) and node.ctx == "load":
            if node.name not in own:
                return False
            if node.name in printed and not isinstance(parent, nodes.Output):
                return False
        return all(ok(c, node) for c in node.iter_child_nodes())

    return all(ok(c, macro) for c in macro.body)


@cache
def reads_attributes(env, template, name):
    """Whether macro ``name`` of ``template`` reads its ``at`` parameter at all."""
    return any(
        n.name == "at" and n.ctx == "load"
        for m in _macro_nodes(env, template)
        if m.name == name
        for n in m.find_all(nodes.Name)
    )


@cache
def _macro_nodes(env, template):
    """The syntax trees of the macros ``template`` defines (parsed once)."""
    source = env.loader.get_source(env, template)[0]
    return tuple(env.parse(source).find_all(nodes.Macro))


# statements whose text depends on more than the macro's own parameters
_OPAQUE = (
    nodes.Include,
    nodes.Import,
    nodes.FromImport,
    nodes.CallBlock,
    nodes.Macro,
    nodes.ContextReference,
    nodes.DerivedContextReference,
    nodes.EnvironmentAttribute,
    nodes.ExtensionAttribute,
    nodes.ImportedName,
    nodes.InternalName,
)


# The backend each backend's templates derive from (Brian2's ``Templater.derive``): the
# Numba module is the NumPy module plus kernels, so templates/numba/ holds only what
# differs from templates/numpy/.
DERIVES_FROM = {"numba": "numpy"}


def search_path(backend):
    """``backend``'s template directories, most derived first (``numba``, ``numpy``)."""
    path = [backend]
    while path[-1] in DERIVES_FROM:
        path.append(DERIVES_FROM[path[-1]])
    return path


def op_macros(env, backend):
    """The op macros of ``backend``: ``ops.j2`` and then each ``ops_<family>.j2`` of
    ``templates/<backend>/``, then of each directory it derives from (see
    :func:`search_path`); the first module that defines a macro wins, so a backend
    overrides single macros where template files override whole files."""
    modules = []
    for name in search_path(backend):
        root = template_dir() / name
        files = ["ops.j2"] if (root / "ops.j2").is_file() else []
        files += sorted(p.name for p in root.glob("ops_*.j2"))
        modules += [env.get_template(f"{name}/{f}").module for f in files]
    return Macros(*modules)


def template_dir() -> Path:
    """``graphgen/templates`` in a wheel, or ``templates/`` at the root of a checkout."""
    package = Path(__file__).resolve().parents[1]
    for cand in (package / "templates", package.parent / "templates"):
        if cand.is_dir():
            return cand
    raise CodegenError("cannot find graphgen's templates directory")


def _finalize(value):
    if isinstance(value, bool) or not isinstance(value, (Code, int, float)):
        raise CodegenError(f"refusing to render an unvetted value {value!r:.60}")
    return value


def environment(backend="numpy") -> jinja2.Environment:
    """The environment ``backend``'s templates render in (one per backend).

    A name such as ``"helpers/conv.py.j2"`` is looked up in ``templates/<backend>/``,
    then in each directory the backend derives from (:func:`search_path`): the first
    file found wins. A name with its directory (``"numpy/module.py.j2"``) is that file,
    for a template that extends or includes the one it overrides.
    """
    return _environment(backend)


@cache
def _environment(backend) -> jinja2.Environment:
    root = template_dir()
    loaders = [
        jinja2.FileSystemLoader(str(root / name)) for name in search_path(backend)
    ]
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([*loaders, jinja2.FileSystemLoader(str(root))]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        finalize=_finalize,
    )
    env.filters["joincode"] = lambda items, sep: Code(sep.join(items))
    # another macro's text, as a macro that falls back on it writes it: already vetted
    # (every value in it passed _finalize when that macro rendered it)
    env.filters["macro_text"] = lambda text: Code(str(text))
    env.tests["power_operand"] = power_operand
    env.globals["helper"] = helper
    return env


# The helpers the code rendered in the innermost open recording() calls: templates name a
# module helper through helper("sigmoid") -> _sigmoid, so that which helpers a module
# defines is known from what was rendered, never searched for in the text.
_RECORDING = contextvars.ContextVar("graphgen_helpers", default=None)


def helper(name) -> Code:
    """The name of the module helper ``name`` (``_name``), noted as used."""
    used = _RECORDING.get()
    if used is not None:
        used.add(name)
    return Code(f"_{name}")


def note_helpers(names):
    """Note ``names`` as used, as if the code that calls them had been rendered here."""
    used = _RECORDING.get()
    if used is not None:
        used.update(names)


@contextlib.contextmanager
def recording(merge=True):
    """Collect the helpers the code rendered inside calls into a set (yielded). With
    ``merge``, an enclosing recording gets them too when the block ends without an
    exception; ``recording(None)`` records nothing (a probe of a template)."""
    outer = _RECORDING.get()
    used = set()
    token = _RECORDING.set(None if merge is None else used)
    try:
        yield used
    finally:
        _RECORDING.reset(token)
    if merge and outer is not None:
        outer |= used


# dataclass fields of the program that templates never print
BOOKKEEPING = frozenset(
    {"node", "call", "sizes", "helpers", "names", "unpacks", "covers"}
)


# the types vet() passes as they are (exact types: a subclass of str is not Code)
_VETTED = frozenset({Code, type(None), bool, int, float})


@cache
def _printed_fields(cls):
    """The fields of dataclass ``cls`` that templates print; None for any other type
    (and for a dataclass that is also a str, dict, list or tuple, vetted as such)."""
    if not dataclasses.is_dataclass(cls) or issubclass(cls, (str, dict, list, tuple)):
        return None
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in BOOKKEEPING)


def vet(value, path="context"):
    """Every string handed to a template must be vetted Code."""
    _vet(value, path)


def _vet(value, path):
    # ``path`` is spelled only for an error: (parent, ".", key) or (parent, "[", i)
    # triples, since the context of a big module has hundreds of thousands of values
    t = type(value)
    if t in _VETTED:
        return
    if t is list or t is tuple:  # the common containers first: statements, comments
        for i, v in enumerate(value):
            if type(v) not in _VETTED:
                _vet(v, (path, "[", i))
        return
    fields = _printed_fields(t)
    if fields is not None:  # a statement, a function: each printed field
        for name in fields:
            v = getattr(value, name)
            tv = type(v)
            if tv in _VETTED:
                continue
            if tv is list:  # most often a list of Code (comments), checked here
                for x in v:
                    if type(x) not in _VETTED:
                        break
                else:
                    continue
            _vet(v, (path, ".", name))
        return
    if (
        isinstance(value, Code)
        or value is None
        or isinstance(value, (bool, int, float))
    ):
        return
    if isinstance(value, str):
        raise CodegenError(
            f"internal: unvetted string at {_spell(path)}: {value!r:.60}"
        )
    if isinstance(value, dict):
        for k, v in value.items():
            if type(v) not in _VETTED:
                _vet(v, (path, ".", k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if type(v) not in _VETTED:
                _vet(v, (path, "[", i))
    else:
        raise CodegenError(
            f"internal: cannot render {type(value).__name__} at {_spell(path)}"
        )


def _spell(path):
    parts = []
    while isinstance(path, tuple):
        path, sep, key = path
        parts.append(f"{sep}{key}]" if sep == "[" else f"{sep}{key}")
    return path + "".join(reversed(parts))


# The flags every generated module is compiled with (the syntax check and the import).
COMPILE_FLAGS = __future__.annotations.compiler_flag

# The last module rendered and its code objects: the syntax check's compile is the one
# the import runs, rather than a second compile of the same text (on a 10,000-node graph,
# over a second). One slot, so at most one module's code is kept.
_last_compiled = (None, None)

# Where a top-level definition starts: ruff's two blank lines before it.
_TOP = re.compile(r"\n\n\n(?=def |class |@)")


def _compile(text, filename):
    """The code objects of ``text``: one per top-level definition (and one for what comes
    before the first), to be run in order in the module's namespace.

    CPython's parser holds the syntax tree of what it compiles: cut at the definitions,
    it holds one function's at a time, not the module's (on a 10,000-node graph, half
    the compile's peak memory). Each piece is padded with the newlines before it, so
    line numbers are the module's. A cut that falls inside a string leaves a piece that
    does not parse: then the module is compiled whole.
    """
    starts = [0] + [m.end() for m in _TOP.finditer(text)] + [len(text)]
    codes, line = [], 0
    try:
        for a, b in itertools.pairwise(starts):
            piece = text[a:b]
            codes.append(
                compile(
                    "\n" * line + piece,
                    filename,
                    "exec",
                    COMPILE_FLAGS,
                    dont_inherit=True,
                )
            )
            line += piece.count("\n")
    except SyntaxError:
        return (compile(text, filename, "exec", COMPILE_FLAGS, dont_inherit=True),)
    return tuple(codes)


def render_text(env, template, ctx) -> str:
    """A module template rendered with a vetted context, not checked yet (see
    :func:`check_module`)."""
    with g.paused_gc():
        vet(ctx)
        return env.get_template(template).render(**ctx)


# A module longer than this (characters; about 3,000 spec nodes) has the garbage of the
# compile collected before CPython compiles it; below, a full collection in a big
# process (a notebook with torch loaded) costs more than the memory it frees.
COLLECT_ABOVE = 1_000_000


def check_module(text) -> str:
    """``text`` if it parses (a bug in graphgen if not). Its code objects are kept for
    :func:`compile_module`."""
    global _last_compiled
    _last_compiled = (None, None)
    if len(text) > COLLECT_ABOVE:
        # what the compiler made before and is no longer alive, but held in reference
        # cycles (a networkx graph whose views it cached: the lowered graph, the
        # passes' copies), goes before CPython's compile of a big module, the peak of
        # its memory, rather than whenever the next collection comes (codegen pauses
        # the collector: graph.paused_gc)
        gc.collect()
    try:
        # compiled, not ast.parse'd: the same syntax check without building a Python
        # object per syntax node (on a 100,000-node graph, gigabytes and most of render)
        codes = _compile(text, "<graphgen>")
    except SyntaxError as e:  # a bug in graphgen, never in the user's spec
        raise CodegenError(f"internal: generated code does not parse: {e}") from None
    _last_compiled = (text, codes)
    return text


def _named(code, filename):
    consts = tuple(
        _named(c, filename) if isinstance(c, types.CodeType) else c
        for c in code.co_consts
    )
    return code.replace(co_filename=filename, co_consts=consts)


def compile_module(text, filename):
    """The code objects of a generated module's ``text``, to run in order in its
    namespace: the ones :func:`check_module` compiled when ``text`` is the module it
    checked last, else a fresh compile."""
    global _last_compiled
    last, codes = _last_compiled
    if last is not text and last != text:
        return _compile(text, filename)
    _last_compiled = (None, None)
    return tuple(_named(code, filename) for code in codes)
