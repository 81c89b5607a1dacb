"""Spec files (YAML or JSON) -> validated ``networkx.DiGraph``.

The JSON Schema shipped beside this module (``spec.schema.json``) checks the structure;
this module adds what a schema cannot say (names that exist, no duplicates across sections,
attributes an op knows) and records line numbers so errors can point into the file.
"""

from __future__ import annotations

import json
import os
from importlib import resources

import networkx as nx
import yaml

from .. import graph as g
from .. import ops
from ..errors import SpecError, did_you_mean

SCHEMA = json.loads(
    resources.files("graphgen.frontends").joinpath("spec.schema.json").read_text()
)
SECTIONS = ("inputs", "params", "nodes")


class _LineLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects duplicate keys and remembers each key's line."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str) and key in seen:
                raise SpecError(
                    f"duplicate key {key!r} (first defined on line {seen[key]})",
                    line=line,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _key_lines(text):
    """``{(section, name): line}`` for the entries of each section, ``("", key)`` at top."""
    lines = {}
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key_node, value_node in root.value:
        key = key_node.value
        lines[("", key)] = key_node.start_mark.line + 1
        if key in SECTIONS and isinstance(value_node, yaml.MappingNode):
            for k, _ in value_node.value:
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


def _no_duplicate_json_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise SpecError(f"duplicate key {k!r}")
        out[k] = v
    return out


def read(path):
    """Read a spec file into a plain dict and a ``{(section, name): line}`` map."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise SpecError(f"cannot read spec: {e.strerror}", source=path) from None
    lines = {}
    if path.endswith(".json"):
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicate_json_keys)
        except json.JSONDecodeError as e:
            raise SpecError(
                f"malformed JSON: {e.msg}", source=path, line=e.lineno
            ) from None
        except SpecError as e:
            raise e.located(path) from None
    else:
        loader = _LineLoader(text)
        try:
            data = loader.get_single_data()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            msg = f"malformed YAML: {e.problem or e.context}"
            raise SpecError(
                msg, source=path, line=mark.line + 1 if mark else None
            ) from None
        except yaml.YAMLError as e:
            raise SpecError(f"malformed YAML: {e}", source=path) from None
        except SpecError as e:
            try:  # a name defined twice in a section: say which node
                _key_lines(text)
            except SpecError as better:
                raise better.located(path) from None
            raise e.located(path) from None
        finally:
            loader.dispose()
        try:
            lines = _key_lines(text)
        except SpecError as e:
            raise e.located(path) from None
    return data, lines


def _schema_error(data, source, lines):
    import jsonschema

    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.path)))
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
    err = _schema_error(data, source, lines)
    if err is not None:
        raise err
    G = _new_graph(data, source, lines, weights)
    _add_inputs_and_params(G, data, lines)
    _add_nodes(G, data["nodes"], lines)
    known = list(G.nodes)
    _add_args(G, data["nodes"], lines, known)
    _add_outputs(G, data, lines, known)
    return G


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


def _add_inputs_and_params(G, data, lines):
    fdtype = G.graph["dtype"]
    for name, v in (data.get("inputs") or {}).items():
        shape, dtype = (
            (v, fdtype) if isinstance(v, list) else (v["shape"], v.get("dtype", fdtype))
        )
        if dtype != "int64":
            dtype = fdtype
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


def _add_args(G, nodes, lines, known):
    """The edges of each node's arguments; a number becomes a constant node."""
    source, fdtype = G.graph["source"], G.graph["dtype"]
    for name, spec in nodes.items():
        for pos, arg in enumerate(spec.get("args", [])):
            if isinstance(arg, bool):
                raise SpecError(
                    f"argument {pos} is a boolean; use a number or a node name",
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
                g.add_edge_arg(G, cid, name, pos)
                continue
            if arg not in G or G.nodes[arg][g.KIND] == g.CONST:
                hint = did_you_mean(arg, known)
                raise SpecError(
                    f"argument {pos} names {arg!r}, which is not an input, param or node{hint}",
                    node=name,
                    source=source,
                    line=lines.get(("nodes", name)),
                )
            g.add_edge_arg(G, arg, name, pos)


def _add_outputs(G, data, lines, known):
    """The graph's outputs, loss and wrt (and vjp), each name checked."""

    def check_names(key, names, what):
        for n in names:
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
        raise SpecError(
            "give 'outputs' or 'loss': the module would compute nothing",
            source=G.graph["source"],
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

    path = os.path.join(os.path.dirname(os.path.abspath(source)), name)
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise SpecError(
            f"weights: cannot read {name!r} ({e}); expected an .npz file beside the spec",
            source=source,
            line=lines.get(("", "weights")),
        ) from None


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
    return prepare(G)
