"""Spec files (YAML or JSON) -> validated ``networkx.DiGraph``.

The JSON Schema shipped beside this module (``spec.schema.json``) checks the structure;
this module adds what a schema cannot say (names that exist, no duplicates across sections,
attributes an op knows) and records line numbers so errors can point into the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from importlib import resources

import networkx as nx
import yaml

from .. import dims, ops
from .. import graph as g
from ..errors import DimensionError, GraphgenError, SpecError, did_you_mean

SCHEMA = json.loads(
    resources.files("graphgen.frontends").joinpath("spec.schema.json").read_text()
)
SECTIONS = ("inputs", "params", "nodes")


# Bounds on what a spec file may be: larger or deeper input is refused with an error that
# says so, before anything walks it (a YAML alias may repeat a part of the file, not
# multiply it: "billion laughs").
MAX_BYTES = 1 << 28
MAX_DEPTH = 64
ALIAS_GROWTH = 10


def _reason(e):
    return (e.strerror if isinstance(e, OSError) else None) or str(e)


def read_file(path, what="spec"):
    """The text of the file ``path``: the one way the frontends read a text file.

    Whatever keeps it from being read — missing, a directory, no permission, larger
    than ``MAX_BYTES``, not UTF-8 (a binary file) — raises a :class:`SpecError` naming
    the file (and, for a byte that is not UTF-8, its line). A UTF-8 byte order mark is
    dropped.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except (OSError, ValueError) as e:
        raise SpecError(f"cannot read {what}: {_reason(e)}", source=path) from None
    if len(data) > MAX_BYTES:
        raise SpecError(
            f"cannot read {what}: larger than {MAX_BYTES >> 20} MiB", source=path
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(
            f"cannot read {what}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
            f"{e.start}); a {what} is a UTF-8 text file",
            source=path,
            line=data.count(b"\n", 0, e.start) + 1,
        ) from None
    return text.removeprefix("\ufeff")


# libyaml's parser when PyYAML has it (the same nodes, several times faster); PyYAML's
# own words for a malformed file in either case
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _LineLoader(_BaseLoader):
    """A safe YAML loader that rejects duplicate keys and remembers each key's line."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                raise SpecError(
                    f"duplicate key {key!r} (first defined on line {seen[key]})",
                    line=line,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _key_lines(root):
    """``{(section, name): line}`` for the entries of each section, ``("", key)`` at top."""
    lines = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key_node, value_node in root.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        key = key_node.value
        lines[("", key)] = key_node.start_mark.line + 1
        if key == "blocks" and isinstance(value_node, yaml.MappingNode):
            _block_lines(value_node, lines)
        if key in SECTIONS and isinstance(value_node, yaml.MappingNode):
            for k, _ in value_node.value:
                if not isinstance(k, yaml.ScalarNode):
                    continue
                line = k.start_mark.line + 1
                if (key, k.value) in lines:
                    first = lines[(key, k.value)]
                    raise SpecError(
                        f"defined twice in {key} (first on line {first}); YAML keeps "
                        "only the last, so rename one",
                        node=k.value if key == "nodes" else None,
                        line=line,
                    )
                lines[(key, k.value)] = line
    return lines


def _block_lines(blocks, lines):
    """``("blocks", block)`` and ``("blocks", block, section, name)`` lines: where a
    block and each of its params and nodes are defined."""
    for b, body in blocks.value:
        if not isinstance(b, yaml.ScalarNode):
            continue
        lines[("blocks", b.value)] = b.start_mark.line + 1
        if not isinstance(body, yaml.MappingNode):
            continue
        for k, v in body.value:
            if isinstance(k, yaml.ScalarNode) and isinstance(v, yaml.MappingNode):
                for name, _ in v.value:
                    if isinstance(name, yaml.ScalarNode):
                        line = name.start_mark.line + 1
                        lines[("blocks", b.value, k.value, name.value)] = line


def _check_nodes(root, size):
    """Refuse a YAML tree nested deeper than ``MAX_DEPTH``, or whose aliases make it
    more than ``ALIAS_GROWTH`` times the ``size`` of its text: walked without
    recursion, and never further than that."""
    budget = ALIAS_GROWTH * size + 10_000
    stack = [(root, 0)] if root is not None else []
    while stack:
        node, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise SpecError(
                f"its aliases expand it more than {ALIAS_GROWTH}-fold; write the "
                "repeated parts out",
                line=node.start_mark.line + 1,
            )
        if isinstance(node, yaml.ScalarNode):
            continue
        if depth >= MAX_DEPTH:
            raise SpecError(
                f"nested more than {MAX_DEPTH} levels deep",
                line=node.start_mark.line + 1,
            )
        if isinstance(node, yaml.MappingNode):
            stack.extend((n, depth + 1) for pair in node.value for n in pair)
        else:
            stack.extend((n, depth + 1) for n in node.value)


def _yaml_error(text, error):
    """The SpecError for a YAML file that does not parse, in PyYAML's words."""
    if _BaseLoader is not yaml.SafeLoader and not isinstance(
        error, yaml.constructor.ConstructorError
    ):
        loader = None
        try:
            loader = yaml.SafeLoader(text)
            loader.get_single_node()
        except yaml.YAMLError as e:
            error = e
        except RecursionError:  # nested past what PyYAML's parser can recurse
            mark = getattr(error, "problem_mark", None)
            return SpecError(
                f"nested more than {MAX_DEPTH} levels deep",
                line=mark.line + 1 if mark else None,
            )
        finally:
            if loader is not None:
                loader.dispose()
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        msg = f"malformed YAML: {error.problem or error.context}"
        if mark and mark.column > 1024 and text[mark.index : mark.index + 1] == ":":
            msg += (
                "; a YAML key on one line with its value is at most 1024 characters "
                "(write a longer one as '? KEY', its value on the next line as ': ...')"
            )
        return SpecError(msg, line=mark.line + 1 if mark else None)
    if isinstance(error, yaml.reader.ReaderError):
        return SpecError(
            f"malformed YAML: unacceptable character #x{error.character:04x}: "
            f"{error.reason}",
            line=text.count("\n", 0, error.position) + 1,
        )
    return SpecError("malformed YAML: " + " ".join(str(error).split()))


def _read_yaml(text):
    """``(data, lines)`` of a YAML text: composed once, checked, then constructed."""
    loader = None
    try:
        loader = _LineLoader(text)
        with g.paused_gc():  # a big tree of containers
            root = loader.get_single_node()
            _check_nodes(root, len(text))
            lines = _key_lines(root)  # first: a name defined twice, said in full
            data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as e:
        raise _yaml_error(text, e) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


def _no_duplicate_json_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise SpecError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _read_json(text):
    try:
        with g.paused_gc():  # a big tree of containers
            return json.loads(text, object_pairs_hook=_no_duplicate_json_keys)
    except json.JSONDecodeError as e:
        raise SpecError(f"malformed JSON: {e.msg}", line=e.lineno) from None
    except RecursionError:  # json's parser recurses once per level
        depth, line = 0, None
        for m in re.finditer(r'"(?:[^"\\]|\\.)*"|[][{}]', text):
            depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(m.group(), 0)
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, m.start()) + 1
                break
        raise SpecError(
            f"nested more than {MAX_DEPTH} levels deep", line=line
        ) from None


def _check_values(data, lines):
    """Refuse nesting deeper than ``MAX_DEPTH`` and text that is not valid Unicode (a
    lone surrogate, ``"\\ud800"`` in JSON, which no file, terminal or diagram can hold):
    the error names the key and, for a node, the node.

    Each value is walked with a link to its parent's (``(parent link, key)``), and its
    path is spelled out only for an error or for text that is not ASCII: building every
    path cost a tuple per value of a big spec.
    """
    stack = [(data, None, 0)]  # (value, link to its path, depth)
    seen = set()  # a YAML alias shares its value: walk it once
    while stack:
        value, link, depth = stack.pop()
        if isinstance(value, str):
            if not value.isascii():
                _check_text(value, _path(link), lines)
            continue
        if not isinstance(value, (dict, list)) or id(value) in seen:
            continue
        seen.add(id(value))
        if depth >= MAX_DEPTH:
            raise _at(_path(link), lines, f"nested more than {MAX_DEPTH} levels deep")
        items = list(value.items() if isinstance(value, dict) else enumerate(value))
        for k, _ in items:
            if isinstance(k, str):
                if not k.isascii():
                    _check_text(k, _path((link, k)), lines, "the name")
            elif isinstance(value, dict):
                raise _at(
                    _path(link),
                    lines,
                    f"the name {_yaml_word(k)} is not text: YAML reads an unquoted "
                    "number, ~, null, true, false or date as such a value; quote it",
                )
        # an ASCII string or a number needs nothing more: the rest is walked in file
        # order, so errors come in the same order as before
        stack.extend(
            (v, (link, k), depth + 1)
            for k, v in reversed(items)
            if not (type(v) is str and v.isascii()) and type(v) not in (int, float)
        )


def _path(link):
    """The path ``(key, key, ...)`` a :func:`_check_values` link stands for."""
    keys = []
    while link is not None:
        link, k = link
        keys.append(k)
    return tuple(reversed(keys))


def _check_text(s, path, lines, what=None):
    if s.isascii():
        return
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _at(
            path,
            lines,
            f"{what or _short(s)} is not valid text: it holds the lone surrogate "
            f"\\u{ord(s[e.start]):04x} (names and values must be Unicode characters)",
        ) from None


def _yaml_word(k):
    """How a non-text key reads in YAML (``~`` is None)."""
    if k is None:
        return "~ (null)"
    if isinstance(k, bool):
        return str(k).lower()
    return _short(str(k))


def _short(s, limit=60):
    return repr(s) if len(s) <= limit else repr(s[:limit]) + "..."


def _plain(key):
    return not isinstance(key, str) or (
        key.isprintable() and key.isascii() and len(key) <= 60 and "/" not in key
    )


def _at(path, lines, msg):
    """A SpecError at the key ``path`` of the spec: a node's name when it is in one."""
    node = line = None
    if len(path) >= 2 and path[0] in SECTIONS:
        line = lines.get((path[0], path[1]))
        if path[0] == "nodes":
            node, path = path[1], path[2:]
    elif path:
        line = lines.get(("", path[0]))
    where = "/".join(str(p) if _plain(p) else _short(p) for p in path)
    return SpecError((f"key {where}: " if path else "") + msg, node=node, line=line)


def read(path):
    """Read a spec file into a plain dict and a ``{(section, name): line}`` map."""
    path = os.fspath(path)
    text = read_file(path)
    try:
        if path.endswith(".json"):
            data, lines = _read_json(text), {}
        else:
            data, lines = _read_yaml(text)
    except SpecError as e:
        raise e.located(path) from None
    return data, lines


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _plain_dim(d):
    """An input's dim the schema surely accepts: an integer >= 0 or a name."""
    t = type(d)
    return (t is int and d >= 0) or (t is str and _NAME.fullmatch(d) is not None)


def _plain_size(d):
    """A param's dim the schema surely accepts: an integer >= 0 or a non-empty string."""
    t = type(d)
    return (t is int and d >= 0) or (t is str and d != "")


_PARAM_INITS = frozenset(("zeros", "ones", "normal", "glorot_uniform", "weights"))


def _plain_input(v):
    if type(v) is dict:
        if not v.keys() <= {"shape", "dtype"} or v.get("dtype", "float64") not in (
            "float64",
            "float32",
            "int64",
        ):
            return False
        v = v.get("shape")
    return type(v) is list and all(map(_plain_dim, v))


def _plain_param(v):
    if type(v) is dict:
        if not v.keys() <= {"shape", "init"}:
            return False
        init = v.get("init", "zeros")
        if not (
            type(init) in (int, float) or (type(init) is str and init in _PARAM_INITS)
        ):
            return False
        v = v.get("shape")
    return type(v) is list and all(map(_plain_size, v))


def _plain_arg(a):
    return type(a) in (str, int, float)


def _plain_node(v):
    if type(v) is not dict or "block" in v or type(v.get("op")) is not str:
        return False
    args = v.get("args", ())
    if args != () and (type(args) is not list or not all(map(_plain_arg, args))):
        return False
    return type(v.get("group", "")) is str


_PLAIN = {"inputs": _plain_input, "params": _plain_param, "nodes": _plain_node}


def _schema_subject(data):
    """``data`` with each of its inputs, params and nodes sections cut to its first entry
    when every entry is one the schema surely accepts (a subset of the schema, checked in
    plain Python). Those entries add no error, so jsonschema finds the same errors, with
    the same paths, in far less time; any entry outside the subset keeps its whole
    section for jsonschema to judge and explain."""
    cut = None
    for key, plain in _PLAIN.items():
        section = data.get(key)
        if (
            type(section) is dict
            and len(section) > 1
            and all(map(plain, section.values()))
        ):
            first = next(iter(section))
            cut = cut or dict(data)
            cut[key] = {first: section[first]}
    return cut or data


def _schema_error(data, source, lines):
    import jsonschema

    validator = jsonschema.Draft202012Validator(SCHEMA)
    subject = _schema_subject(data)
    errors = sorted(
        validator.iter_errors(subject), key=lambda e: list(map(str, e.path))
    )
    if not errors:
        return None
    err = jsonschema.exceptions.best_match(errors)
    path = list(err.absolute_path)  # err may be inside a oneOf: its .path is relative
    node = None
    line = None
    where = ""
    if len(path) >= 2 and path[0] in SECTIONS:
        node = str(path[1])
        line = lines.get((path[0], node))
        if path[0] != "nodes":
            where = f"{path[0][:-1]} {node!r}: "
            node = None
        rest = path[2:]
    else:
        rest = path
        if path:
            line = lines.get(("", path[0]))
    if rest:
        where += "key " + "/".join(map(str, rest)) + ": "
    msg = err.message
    if err.validator in ("oneOf", "anyOf"):  # say what each alternative accepts
        wanted = []
        for alt in err.validator_value:
            if "enum" in alt:
                wanted.append("one of " + ", ".join(map(str, alt["enum"])))
            elif "type" in alt:
                wanted.append(f"a {alt['type']}")
        if wanted and len(wanted) == len(err.validator_value):
            msg = f"{err.instance!r} is not valid: expected {' or '.join(wanted)}"
    if err.validator == "additionalProperties" and not path:
        known = ", ".join(SCHEMA["properties"])
        msg = f"{msg} (known keys: {known})"
    return SpecError(where + msg, node=node, source=source, line=line)


def from_dict(data, source="<spec>", lines=None, weights=None):
    """Build the graph of a spec given as a dict (the parsed YAML/JSON).

    ``weights`` maps names to the arrays of params with ``init: weights`` and of
    ``constant`` nodes with a ``key``; by default they are read from the file the spec's
    ``weights`` entry names (relative to the spec file).
    """
    lines = lines or {}
    if not isinstance(data, dict):
        raise SpecError(
            "a spec must be a mapping with at least a 'nodes' key", source=source
        )
    try:
        _check_values(data, lines)
    except SpecError as e:
        raise e.located(source) from None
    err = _schema_error(data, source, lines)
    if err is not None:
        raise err
    origin = {}
    if "blocks" in data or "sizes" in data:
        data, lines, origin = expand(data, source, lines)
    G = _new_graph(data, source, lines, weights)
    if origin:
        G.graph["blocks"] = origin
    with in_blocks(origin):
        _add_inputs_and_params(G, data, lines)
        _add_nodes(G, data["nodes"], lines)
        known = list(G.nodes)
        _add_args(G, data["nodes"], lines, known)
        _add_outputs(G, data, lines, known)
    return G


# ------------------------------------------------------------------ sizes and blocks


@contextlib.contextmanager
def in_blocks(origin):
    """An error about a node or param a block instance made says which block and
    instance: ``node 'layer1/attn': in block 'decoder' (instance 'layer1'): ...``."""
    try:
        yield
    except GraphgenError as e:
        where = origin.get(e.node)
        if where is None:
            where = next(
                (origin[k] for k in origin if k and repr(k) in e.message), None
            )
        if where is not None and "in block " not in e.message:
            e.message = f"in block {where[0]!r} (instance {where[1]!r}): {e.message}"
            e.args = (e.message,)
        raise


def _sized(value, sizes):
    """``value`` with every size named in ``sizes`` replaced by its value: a string
    that is a dimension expression over them becomes an int (or a smaller expression);
    lists are walked; anything else is returned as it is."""
    if isinstance(value, list):
        return [_sized(v, sizes) for v in value]
    if not isinstance(value, str) or not sizes:
        return value
    try:
        p = dims.poly(value)
    except (DimensionError, TypeError):
        return value
    if not any(s in sizes for mono in p for s in mono):
        return value
    out = {}
    for mono, c in p.items():
        rest = []
        for sym in mono:
            if sym in sizes:
                c *= sizes[sym]
            else:
                rest.append(sym)
        out[tuple(rest)] = out.get(tuple(rest), 0) + c
    return dims.from_poly({m: c for m, c in out.items() if c})


def expand(data, source="<spec>", lines=None):
    """A spec without ``sizes`` and ``blocks``: sizes replaced by their values, each
    block instance by copies of the block's params and nodes.

    Returns ``(data, lines, origin)``: the expanded spec, the line map with entries for
    the made names (the lines of their definitions in the block), and ``origin``, made
    name -> ``(block, instance)``.

    >>> spec = {
    ...     "sizes": {"n": 3},
    ...     "blocks": {"dense": {"inputs": ["x"], "params": {"W": ["n", "n"]},
    ...         "nodes": {"h": {"op": "matmul", "args": ["x", "W"]},
    ...                   "y": {"op": "tanh", "args": ["h"]}},
    ...         "outputs": ["y"]}},
    ...     "inputs": {"x": ["batch", "n"]},
    ...     "nodes": {"layer": {"block": "dense", "args": ["x"], "repeat": 2},
    ...               "L": {"op": "sum", "args": ["layer"]}},
    ...     "loss": "L",
    ... }
    >>> out, _, origin = expand(spec)
    >>> sorted(out["params"]), out["nodes"]["L"]["args"]
    (['layer0/W', 'layer1/W'], ['layer1/y'])
    >>> out["nodes"]["layer1/h"]["args"], origin["layer1/h"]
    (['layer0/y', 'layer1/W'], ('dense', 'layer1'))
    """
    lines = dict(lines or {})
    sizes = dict(data.get("sizes") or {})
    blocks = data.get("blocks") or {}
    out = {k: v for k, v in data.items() if k not in ("sizes", "blocks")}

    def fail(msg, block=None, instance=None, node=None, key=None):
        if block is not None:
            msg = (
                f"in block {block!r}"
                + (f" (instance {instance!r})" if instance else "")
                + f": {msg}"
            )
        line = lines.get(key) if key else None
        return SpecError(msg, node=node, source=source, line=line)

    def shape_of(v):
        return _sized(v if isinstance(v, list) else v["shape"], sizes)

    def resized(v):
        if isinstance(v, list):
            return shape_of(v)
        return {**v, "shape": shape_of(v)}

    if "inputs" in data:
        out["inputs"] = {k: resized(v) for k, v in data["inputs"].items()}
    params = {k: resized(v) for k, v in (data.get("params") or {}).items()}
    nodes, origin, alias = {}, {}, {}
    for name, spec in data["nodes"].items():
        if "block" not in spec:
            nodes[name] = {k: _sized(v, sizes) for k, v in spec.items()}
            continue
        bname = spec["block"]
        where = ("nodes", name)
        if bname not in blocks:
            hint = did_you_mean(bname, list(blocks))
            known = ", ".join(blocks) or "none"
            raise fail(
                f"unknown block {bname!r}{hint} (blocks: {known})", node=name, key=where
            )
        block = blocks[bname]
        inputs, outputs = list(block.get("inputs") or []), list(block["outputs"])
        args = list(spec.get("args") or [])
        if len(args) != len(inputs):
            raise fail(
                f"{len(args)} args for the block's {len(inputs)} inputs {inputs}",
                bname,
                name,
                node=name,
                key=where,
            )
        local = set(inputs) | set(block.get("params") or {}) | set(block["nodes"])
        for o in outputs:
            if o not in local:
                raise fail(
                    f"output {o!r} is not one of the block's inputs, params or nodes"
                    + did_you_mean(o, sorted(local)),
                    bname,
                    key=("blocks", bname),
                )
        repeat = _sized(spec.get("repeat", 1), sizes)
        if not isinstance(repeat, int) or repeat < 1:
            raise fail(
                f"repeat must be a positive integer or a name in sizes, got "
                f"{spec.get('repeat')!r}",
                bname,
                name,
                node=name,
                key=where,
            )
        if "repeat" in spec and len(outputs) != len(inputs):
            raise fail(
                f"repeat chains copies, each one's outputs the next one's inputs: the "
                f"block needs as many outputs as inputs, it has {len(outputs)} outputs "
                f"{outputs} and {len(inputs)} inputs {inputs}",
                bname,
                name,
                node=name,
                key=where,
            )
        current = args
        for i in range(repeat):
            prefix = f"{name}{i}" if "repeat" in spec else name
            bound = dict(zip(inputs, current))
            for p in block.get("params") or {}:
                bound[p] = f"{prefix}/{p}"
            for n in block["nodes"]:
                bound[n] = f"{prefix}/{n}"
            for p, v in (block.get("params") or {}).items():
                pid = bound[p]
                if pid in params:
                    raise fail(f"param {pid!r} is defined twice", bname, prefix)
                params[pid] = resized(v)
                origin[pid] = (bname, prefix)
                line = lines.get(("blocks", bname, "params", p))
                if line is not None:
                    lines[("params", pid)] = line
            for n, nspec in block["nodes"].items():
                nid = bound[n]
                if nid in nodes or nid in data["nodes"]:
                    raise fail(
                        f"node {nid!r} is defined twice", bname, prefix, node=nid
                    )
                made = {k: _sized(v, sizes) for k, v in nspec.items() if k != "args"}
                if "args" in nspec:
                    made["args"] = [
                        bound.get(a, a) if isinstance(a, str) else a
                        for a in nspec["args"]
                    ]
                if "group" in spec and "group" not in made:
                    made["group"] = spec["group"]
                nodes[nid] = made
                origin[nid] = (bname, prefix)
                line = lines.get(("blocks", bname, "nodes", n))
                if line is not None:
                    lines[("nodes", nid)] = line
            current = [bound[o] for o in outputs]
        if len(outputs) == 1:
            alias[name] = current[0]
        for o, nid in zip(outputs, current):
            alias[f"{name}/{o}"] = nid

    def resolve(a):
        seen = 0
        while isinstance(a, str) and a in alias and seen < 1000:
            a, seen = alias[a], seen + 1
        return a

    for spec in nodes.values():
        if "args" in spec:
            spec["args"] = [resolve(a) for a in spec["args"]]
    out["nodes"] = nodes
    if params or "params" in data:
        out["params"] = params
    for key in ("outputs", "wrt"):
        if key in data:
            out[key] = [resolve(a) for a in data[key]]
    if "loss" in data:
        out["loss"] = resolve(data["loss"])
    return out, lines, origin


def _new_graph(data, source, lines, weights):
    """The empty graph of a spec: its name, dtype, source and weights."""
    G = nx.DiGraph()
    stem = (
        os.path.splitext(os.path.basename(source))[0] if source != "<spec>" else "model"
    )
    G.graph.update(
        name=data.get("name", stem),
        dtype=data.get("dtype", "float64"),
        source=source,
        lines={},
    )
    if weights is None and data.get("weights"):
        weights = _read_weights(data["weights"], source, lines)
    if weights:
        G.graph["weights"] = dict(weights)
    return G


def _define(G, lines, section, name, **attrs):
    """Add node ``name`` of ``section`` (a name is defined once across the sections)."""
    line = lines.get((section, name))
    if name in G:
        first = G.nodes[name][g.KIND]
        raise SpecError(
            f"name defined twice (already an {first})"
            if first == "input"
            else f"name defined twice (already a {first})",
            node=name,
            source=G.graph["source"],
            line=line,
        )
    G.add_node(name, **attrs, **{g.SEQ: g.next_seq(G)})
    if line is not None:
        G.graph["lines"][name] = line


def _check_shape(G, lines, section, name, shape):
    """Refuse a size that is no dimension expression, naming the input or param."""
    for d in shape:
        if isinstance(d, str):
            try:
                dims.poly(d)
            except DimensionError as e:
                raise SpecError(
                    f"{section[:-1]} {name!r}: {e}",
                    source=G.graph["source"],
                    line=lines.get((section, name)),
                ) from None


def _add_inputs_and_params(G, data, lines):
    fdtype = G.graph["dtype"]
    for name, v in (data.get("inputs") or {}).items():
        shape, dtype = (
            (v, fdtype) if isinstance(v, list) else (v["shape"], v.get("dtype", fdtype))
        )
        if dtype != "int64":
            dtype = fdtype
        _check_shape(G, lines, "inputs", name, shape)
        _define(G, lines, "inputs", name, kind=g.INPUT, shape=tuple(shape), dtype=dtype)
    for name, v in (data.get("params") or {}).items():
        shape, init = (
            (v, "glorot_uniform")
            if isinstance(v, list)
            else (
                v["shape"],
                v.get("init", "glorot_uniform"),
            )
        )
        _check_shape(G, lines, "params", name, shape)
        unknown = [d for d in shape if isinstance(d, str)]
        if unknown:
            raise SpecError(
                f"param {name!r}: its shape {list(shape)} has the size {unknown[0]!r}, "
                "which is not a number; a param's shape is static: write the number, "
                f"or give it in sizes ('sizes: {{{unknown[0]}: ...}}')",
                source=G.graph["source"],
                line=lines.get(("params", name)),
            )
        _define(
            G,
            lines,
            "params",
            name,
            kind=g.PARAM,
            shape=tuple(shape),
            dtype=fdtype,
            init=init,
        )


def _add_nodes(G, nodes, lines):
    """One op node per entry of ``nodes`` (their arguments come after: any order)."""
    for name, spec in nodes.items():
        op_name = spec["op"]
        if op_name not in ops.REGISTRY:
            hint = did_you_mean(op_name, list(ops.REGISTRY))
            raise SpecError(
                f"unknown op {op_name!r}{hint}; `graphgen ops` lists them",
                node=name,
                source=G.graph["source"],
                line=lines.get(("nodes", name)),
            )
        attrs = {k: v for k, v in spec.items() if k not in ("op", "args", "group")}
        extra = {"group": spec["group"]} if "group" in spec else {}
        _define(
            G,
            lines,
            "nodes",
            name,
            kind=g.OPNODE,
            op=op_name,
            attrs=attrs,
            dtype=G.graph["dtype"],
            **extra,
        )


def _fits_float(n):
    try:
        float(n)
    except OverflowError:
        return False
    return True


def _add_args(G, nodes, lines, known):
    """The edges of each node's arguments; a number becomes a constant node."""
    source, fdtype = G.graph["source"], G.graph["dtype"]
    for name, spec in nodes.items():
        sources = []
        for pos, arg in enumerate(spec.get("args", [])):
            if isinstance(arg, bool):
                raise SpecError(
                    f"argument {pos} is a boolean; use a number or a node name",
                    node=name,
                    source=source,
                    line=lines.get(("nodes", name)),
                )
            if isinstance(arg, int) and not _fits_float(arg):
                raise SpecError(
                    f"argument {pos} is a number too large for a float "
                    f"({len(str(abs(arg)))} digits; the largest float64 is about 1.8e308)",
                    node=name,
                    source=source,
                    line=lines.get(("nodes", name)),
                )
            if isinstance(arg, (int, float)):
                cid = g.fresh_id(G, repr(float(arg)))
                G.add_node(
                    cid,
                    kind=g.CONST,
                    value=float(arg),
                    shape=(),
                    dtype=fdtype,
                    **{g.SEQ: g.next_seq(G)},
                )
                sources.append(cid)
                continue
            if arg not in G or G.nodes[arg][g.KIND] == g.CONST:
                hint = did_you_mean(arg, known)
                raise SpecError(
                    f"argument {pos} names {arg!r}, which is not an input, param or node{hint}",
                    node=name,
                    source=source,
                    line=lines.get(("nodes", name)),
                )
            sources.append(arg)
        g.add_args(G, name, sources)


def _add_outputs(G, data, lines, known):
    """The graph's outputs, loss and wrt (and vjp), each name checked."""

    def check_names(key, names, what):
        seen = set()
        for n in names:
            if n in seen:  # a second cotangent or gradient of one node: ambiguous
                raise SpecError(
                    f"{key}: {n!r} is listed twice",
                    source=G.graph["source"],
                    line=lines.get(("", key)),
                )
            seen.add(n)
            if n not in G or G.nodes[n][g.KIND] == g.CONST:
                hint = did_you_mean(n, known)
                raise SpecError(
                    f"{key}: {n!r} is not {what}{hint}",
                    source=G.graph["source"],
                    line=lines.get(("", key)),
                )

    loss = data.get("loss")
    if loss is not None:
        check_names("loss", [loss], "a node")
    outputs = list(data.get("outputs") or ([loss] if loss is not None else []))
    if not outputs:
        what = (
            "key outputs: an empty list, and no key 'loss'"
            if "outputs" in data
            else "no key 'outputs' and no key 'loss'"
        )
        raise SpecError(
            f"{what}: the module would compute nothing; add 'outputs: [NODE, ...]' "
            "(the nodes forward() returns) or 'loss: NODE' (the scalar node to "
            "differentiate)",
            source=G.graph["source"],
            line=lines.get(("", "outputs")),
        )
    check_names("outputs", outputs, "a node")
    if "wrt" in data:
        wrt = list(data["wrt"])
        check_names("wrt", wrt, "an input or param")
    else:
        wrt = [n for n in G if G.nodes[n][g.KIND] == g.PARAM]
    G.graph.update(outputs=outputs, loss=loss, wrt=wrt)
    if data.get("vjp") and loss is None:
        G.graph["vjp"] = True


def _read_weights(name, source, lines):
    import numpy as np

    def fail(why):
        return SpecError(
            f"weights: cannot read {name!r} ({why}); expected an .npz file beside the "
            "spec",
            source=source,
            line=lines.get(("", "weights")),
        )

    path = os.path.join(os.path.dirname(os.path.abspath(source)), name)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; here only opening fails
    except (OSError, ValueError) as e:
        raise fail(_reason(e)) from None
    with f:
        try:
            stored = np.load(f)
            if not isinstance(stored, np.lib.npyio.NpzFile):
                raise fail("one array, not an .npz archive of named arrays")
            with stored:
                arrays = {k: stored[k] for k in stored.files}
        except SpecError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged file: numpy and zipfile
            # say so through many kinds (EOFError, BadZipFile, zlib.error, ValueError)
            why = " ".join(str(e).split())[:200] or type(e).__name__
            raise fail(f"not a readable .npz archive: {why}") from None
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise fail(f"its array {k!r} holds {a.dtype}, not numbers")
    return arrays


def load(path):
    """Load a YAML or JSON spec file into a validated ``networkx.DiGraph``.

    Examples
    --------
    >>> import graphgen
    >>> G = graphgen.load("examples/tiny.yaml")
    >>> G.nodes["h1"]["op"], G.nodes["h1"]["shape"]
    ('sigmoid', ('batch', 3))
    """
    from ..passes.shapes import prepare

    data, lines = read(path)
    G = from_dict(data, source=os.fspath(path), lines=lines)
    with in_blocks(G.graph.get("blocks") or {}):
        with dims.recording() as mentioned:  # every size shape inference parsed
            H = prepare(G)
        check_sizes(G, H, mentioned)
    return H


def check_sizes(G, H, mentioned):
    """Refuse a symbolic size that no input declares: the module learns each size from
    the shape of an input array, so a size only an attribute names (a slice's ``stop:
    n``) would be a name the generated code never binds.

    ``G`` is the graph before shape inference (its attributes as written), ``H`` after
    it, and ``mentioned`` the symbols inference parsed (:func:`graphgen.dims.recording`).
    """
    declared = {
        s
        for n in H
        if H.nodes[n][g.KIND] == g.INPUT
        for d in H.nodes[n][g.SHAPE]
        for s in dims.symbols(d)
    }
    unknown = mentioned - declared
    if not unknown:
        return
    have = ", ".join(sorted(declared)) or "none"
    for n in g.schedule(H):  # the first node whose inference parses an unknown size
        a = G.nodes[n]
        if a[g.KIND] != g.OPNODE or not _names_any(list(a[g.ATTRS].values()), unknown):
            continue
        in_shapes = [H.nodes[p][g.SHAPE] for p in g.operands(H, n)]
        with dims.recording() as seen:
            ops.infer(ops.REGISTRY[a[g.OP]], in_shapes, dict(a[g.ATTRS]))
        bad = sorted(seen & unknown)
        if bad:
            key = next(k for k, v in a[g.ATTRS].items() if _names_any(v, {bad[0]}))
            raise SpecError(
                f"attribute {key!r} names the size {bad[0]!r}, which no input's shape "
                f"declares (declared sizes: {have}); the module learns every size from "
                "an input array",
                node=n,
                source=g.source_of(H),
                line=H.graph.get("lines", {}).get(n),
            )
    raise SpecError(  # not reached for a spec: its sizes come from attributes
        f"sizes {', '.join(map(repr, sorted(unknown)))} are not declared by any input "
        f"(declared sizes: {have})",
        source=g.source_of(H),
    )


def _names_any(value, symbols):
    """Whether an attribute value (a string, or lists of them) names one of
    ``symbols`` as a word."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if symbols.intersection(_WORD.findall(v)):
                return True
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return False


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
