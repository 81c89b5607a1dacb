"""The Jinja environment every backend renders with, and the checks around it.

Templates are dumb and strict (``StrictUndefined``, ``trim_blocks``, ``lstrip_blocks``);
every value they print passes :func:`_finalize`, which refuses anything but vetted
:class:`~graphgen.codegen.naming.Code` or a number. Each backend looks its templates up
through one ``ChoiceLoader``: ``templates/<backend>/`` first, then the templates it
derives from, so a backend's templates override only what differs.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from functools import cache
from pathlib import Path

import jinja2

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


def op_macros(env, backend):
    """``templates/<backend>/ops.j2`` and then each ``ops_<family>.j2`` beside it."""
    root = template_dir() / backend
    names = ["ops.j2"] + sorted(p.name for p in root.glob("ops_*.j2"))
    return Macros(*(env.get_template(f"{backend}/{n}").module for n in names))


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
    env.tests["power_operand"] = power_operand
    return env


# dataclass fields of the program that templates never print
BOOKKEEPING = frozenset({"node", "call", "sizes"})


def vet(value, path="context"):
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
            vet(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            vet(v, f"{path}[{i}]")
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            if f.name not in BOOKKEEPING:
                vet(getattr(value, f.name), f"{path}.{f.name}")
    else:
        raise CodegenError(f"internal: cannot render {type(value).__name__} at {path}")


def _blank_lines(m):
    return "\n\n\n"


def render_module(env, template, ctx) -> str:
    """Render a module template with a vetted context; the result must parse."""
    vet(ctx)
    text = env.get_template(template).render(**ctx)
    text = re.sub(r"\n{3,}(?=[^\n]*\S)", _blank_lines, text)
    try:
        ast.parse(text)
    except SyntaxError as e:  # a bug in graphgen, never in the user's spec
        raise CodegenError(f"internal: generated code does not parse: {e}") from None
    return text
