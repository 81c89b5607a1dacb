"""Mutated specs: structure, types, values, names, encodings, sizes.

Each mutator takes hypothesis's ``draw`` and an example spec and returns a
:class:`~fuzz.case.Case`: the spec's bytes, the command to run on it (mostly
``compile -o out.py``, whose module is then checked; also ``check``, ``render``,
``explain``, the Numba backend and ``--dtype float32``) and the names an error about it
should mention.
"""

from __future__ import annotations

import copy
import functools
import json
import random

import yaml
from hypothesis import strategies as st

from . import corpus
from .case import Case

# ------------------------------------------------------------------ the commands

COMMANDS = ["compile"] * 12 + ["check"] * 2 + ["render", "explain", "numba", "float32"]


SLOW_TO_CHECK = {"w3_mlp_large", "w4_deep_elementwise", "w5_fanout"}


def argv_for(command, fname, data):
    if command == "compile":
        return ["compile", fname, "-o", "out.py"], "module"
    if command == "float32":
        return ["compile", fname, "--dtype", "float32", "-o", "out.py"], "module"
    if command == "numba":
        return ["compile", fname, "--backend", "numba", "-o", "out.py"], "syntax"
    if command == "check":
        return ["check", fname], "check"
    if command == "render":
        return ["render", fname, "-o", "out.dot"], "file"
    if command == "explain":
        return ["explain", fname, "--wrt", _a_wrt(data)], "none"
    raise ValueError(command)


def _a_wrt(data):
    if isinstance(data, dict):
        wrt = data.get("wrt")
        if isinstance(wrt, list) and wrt and isinstance(wrt[0], str):
            return wrt[0]
        for sec in ("params", "inputs"):
            v = data.get(sec)
            if isinstance(v, dict) and v:
                return str(next(iter(v)))
    return "W1"


def dump(data, fmt, ascii_only=False, fast=False):
    if fmt == "json" or fast:  # JSON is YAML too, and much quicker to write
        indent = None if fast else 1
        try:
            text = json.dumps(data, ensure_ascii=ascii_only, indent=indent)
            return text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: escaped
            return json.dumps(data, ensure_ascii=True, indent=indent).encode("utf-8")
    text = yaml.safe_dump(
        data,
        sort_keys=False,
        allow_unicode=not ascii_only,
        width=1 << 16,
        default_flow_style=None,
    )
    return text.encode("utf-8", "surrogatepass")


def make(
    kind,
    draw,
    spec,
    data=None,
    raw=None,
    fmt="yaml",
    where=(),
    note="",
    command=None,
    params=None,
    ext=None,
    fast=False,
):
    """A case: ``data`` dumped as ``fmt`` (or the bytes ``raw``), and a command."""
    if command is None:
        command = draw(st.sampled_from(COMMANDS), "command")
    if command in ("check", "render", "explain") and (
        spec.name in SLOW_TO_CHECK or kind.startswith("sizes.")
    ):
        # their work grows with the graph and the arrays (finite differences entry by
        # entry, a drawing): on big inputs a long run is not a hang
        command = "compile"
    fname = "spec." + (ext or fmt)
    if raw is None:
        raw = dump(data, fmt, fast=fast or kind.startswith("sizes."))
    argv, verify = argv_for(command, fname, data)
    return Case(
        part="spec",
        kind=kind,
        note=note,
        files={fname: raw},
        argv=argv,
        where=tuple(str(w) for w in where),
        verify=verify,
        params=dict(params or {}),
        origin=spec.name,
    )


# ------------------------------------------------------------------- the graph


@functools.cache
def shapes(name):
    """Node -> shape of an example spec (graphgen loads the unmutated files only)."""
    import graphgen

    G = graphgen.load(str(next(p for p in corpus.SPEC_FILES if p.stem == name)))
    return {n: G.nodes[n]["shape"] for n in G}


def names(data):
    out = []
    for sec in ("inputs", "params", "nodes"):
        out += [(sec, k) for k in (data.get(sec) or {})]
    return out


def rename(data, old, new):
    """``data`` with every mention of the name ``old`` replaced by ``new``."""
    d = copy.deepcopy(data)
    for sec in ("inputs", "params", "nodes"):
        if isinstance(d.get(sec), dict):
            d[sec] = {(new if k == old else k): v for k, v in d[sec].items()}
    for v in (d.get("nodes") or {}).values():
        if isinstance(v, dict) and isinstance(v.get("args"), list):
            v["args"] = [new if a == old else a for a in v["args"]]
    for key in ("outputs", "wrt"):
        if isinstance(d.get(key), list):
            d[key] = [new if a == old else a for a in d[key]]
    if d.get("loss") == old:
        d["loss"] = new
    return d


def rename_symbol(data, old, new):
    d = copy.deepcopy(data)

    def walk(v):
        if isinstance(v, list):
            return [new if x == old else walk(x) for x in v]
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        return v

    for sec in ("inputs", "params"):
        if isinstance(d.get(sec), dict):
            d[sec] = walk(d[sec])
    return d


def symbols(data):
    out = []
    for v in (data.get("inputs") or {}).values():
        shape = v if isinstance(v, list) else v.get("shape", [])
        out += [s for s in shape if isinstance(s, str) and s not in out]
    return out


def paths(v, prefix=()):
    """Every path into a nested dict/list."""
    yield prefix
    if isinstance(v, dict):
        for k, x in v.items():
            yield from paths(x, (*prefix, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from paths(x, (*prefix, i))


def get(v, path):
    for p in path:
        v = v[p]
    return v


def put(v, path, value):
    if not path:
        return value
    v = copy.deepcopy(v)
    get(v, path[:-1])[path[-1]] = value
    return v


def place(path):
    """The names an error about ``path`` may mention: the entry and the key."""
    out = [str(p) for p in path[:3] if not isinstance(p, int)]
    return out


# ------------------------------------------------------------------ structure


def m_drop_key(draw, spec):
    d = copy.deepcopy(spec.data)
    key = draw(st.sampled_from(sorted(d)), "key")
    del d[key]
    return make("structure.drop_key", draw, spec, d, where=[key], note=f"without {key}")


def m_drop_entry(draw, spec):
    d = copy.deepcopy(spec.data)
    sec, name = draw(st.sampled_from(names(d)), "entry")
    del d[sec][name]
    return make(
        "structure.drop_entry",
        draw,
        spec,
        d,
        where=[name, sec],
        note=f"{sec}/{name} removed",
    )


def m_no_outputs(draw, spec):
    d = copy.deepcopy(spec.data)
    for k in ("outputs", "loss", "vjp"):
        d.pop(k, None)
    if draw(st.booleans()):
        d.pop("wrt", None)
    return make("structure.no_outputs", draw, spec, d, where=["outputs", "loss"])


def m_args(draw, spec):
    d = copy.deepcopy(spec.data)
    node = draw(st.sampled_from(sorted(d["nodes"])), "node")
    args = list(d["nodes"][node].get("args", []))
    how = draw(
        st.sampled_from(
            ["drop", "add", "self", "cycle", "empty", "missing", "dup", "unknown"]
        ),
        "how",
    )
    everything = [n for _, n in names(d)]
    if how == "drop" and args:
        del args[draw(st.integers(0, len(args) - 1))]
    elif how == "add":
        args.append(draw(st.sampled_from(everything)))
    elif how == "self":
        args.append(node)
    elif how == "cycle":
        later = list(d["nodes"])[list(d["nodes"]).index(node) :]
        args[:1] = [draw(st.sampled_from(later))]
    elif how == "empty":
        args = []
    elif how == "dup":
        args = args + args
    elif how == "unknown":
        args.append("no_such_node")
    if how == "missing":
        d["nodes"][node].pop("args", None)
    else:
        d["nodes"][node]["args"] = args
    return make(
        "structure.args", draw, spec, d, where=[node], note=f"args {how} at {node}"
    )


# a fixed list (not the registry: a new op must not change the drawn cases)
OPS = [
    "abs",
    "add",
    "add_n",
    "avg_pool",
    "avg_pool_grad",
    "batch_norm",
    "batch_norm_dx",
    "batch_norm_train",
    "broadcast_to",
    "channel_dot",
    "channel_var",
    "channel_window_sum",
    "clip",
    "concat",
    "constant",
    "conv",
    "conv_grad_input",
    "conv_grad_weight",
    "cos",
    "dimsize",
    "div",
    "eq",
    "erf",
    "erf_grad",
    "exp",
    "gather",
    "ge",
    "gelu",
    "gelu_grad",
    "layer_norm",
    "leaky_relu",
    "log",
    "log_softmax",
    "logsumexp",
    "lrn",
    "lt",
    "matmul",
    "max",
    "max_pool",
    "max_pool_grad",
    "max_pool_select",
    "maximum",
    "mean",
    "minimum",
    "mse",
    "mul",
    "neg",
    "onehot",
    "pad",
    "pow",
    "relu",
    "reshape",
    "scatter_add",
    "sigmoid",
    "sigmoid_cross_entropy",
    "sign",
    "sin",
    "slice",
    "softmax",
    "softmax_cross_entropy",
    "softmax_xent_grad",
    "softplus",
    "sqrt",
    "square",
    "step",
    "sub",
    "sum",
    "sum_to_shape",
    "tanh",
    "transpose",
    "unslice",
    "zeros",
    "sigmod",
    "Relu",
] + ["", "relu "]


def m_change_op(draw, spec):
    d = copy.deepcopy(spec.data)
    node = draw(st.sampled_from(sorted(d["nodes"])), "node")
    op = draw(st.sampled_from(OPS), "op")
    d["nodes"][node]["op"] = op
    return make(
        "structure.change_op", draw, spec, d, where=[node], note=f"{node}: op {op}"
    )


def m_outputs(draw, spec):
    d = copy.deepcopy(spec.data)
    every = [n for _, n in names(d)]
    how = draw(
        st.sampled_from(
            [
                "dup",
                "input",
                "param",
                "nonscalar_loss",
                "loss_input",
                "wrt_node",
                "wrt_dup",
                "wrt_empty",
                "wrt_int",
                "outputs_empty",
                "vjp",
                "vjp_with_loss",
            ]
        ),
        "how",
    )
    outs = list(d.get("outputs") or [d.get("loss")])
    if how == "dup":
        d["outputs"] = outs + outs
    elif how in ("input", "param"):
        sec = "inputs" if how == "input" else "params"
        d["outputs"] = [*outs, draw(st.sampled_from(sorted(d[sec])))]
    elif how == "nonscalar_loss":
        d["loss"] = draw(st.sampled_from(sorted(d["nodes"])))
    elif how == "loss_input":
        d["loss"] = draw(st.sampled_from(sorted(d["inputs"])))
    elif how == "wrt_node":
        d["wrt"] = [*d.get("wrt", []), draw(st.sampled_from(sorted(d["nodes"])))]
    elif how == "wrt_dup":
        w = d.get("wrt") or sorted(d["params"])
        d["wrt"] = w + w
    elif how == "wrt_empty":
        d["wrt"] = []
    elif how == "wrt_int":
        d["wrt"] = [*(d.get("wrt") or []), *sorted(d["inputs"])]
    elif how == "outputs_empty":
        d["outputs"] = []
    elif how == "vjp":
        d.pop("loss", None)
        d["outputs"] = [o for o in outs if o in every] or sorted(d["nodes"])[:1]
        d["vjp"] = True
    elif how == "vjp_with_loss":
        d["vjp"] = True
    return make(
        "structure.outputs", draw, spec, d, where=["outputs", "loss", "wrt"], note=how
    )


def m_sections(draw, spec):
    d = copy.deepcopy(spec.data)
    how = draw(
        st.sampled_from(
            [
                "dup_name",
                "unknown_key",
                "unknown_attr",
                "empty_nodes",
                "empty_inputs",
                "group",
                "top_list",
                "top_scalar",
                "top_null",
            ]
        ),
        "how",
    )
    where = []
    if how == "dup_name":
        node = draw(st.sampled_from(sorted(d["nodes"])))
        d.setdefault("params", {})[node] = [2]
        where = [node]
    elif how == "unknown_key":
        d["nodez"] = {}
        where = ["nodez"]
    elif how == "unknown_attr":
        node = draw(st.sampled_from(sorted(d["nodes"])))
        d["nodes"][node][
            draw(st.sampled_from(["axis", "axes", "keepdims", "alpha", "foo"]))
        ] = 1
        where = [node]
    elif how == "empty_nodes":
        d["nodes"] = {}
        where = ["nodes"]
    elif how == "empty_inputs":
        d["inputs"] = {}
        where = sorted(spec.data.get("inputs", {}))
    elif how == "group":
        node = draw(st.sampled_from(sorted(d["nodes"])))
        d["nodes"][node]["group"] = draw(st.sampled_from(["a/b", "", "layer 1", "é"]))
        where = [node]
    elif how == "top_list":
        d = [d]
    elif how == "top_scalar":
        d = draw(st.sampled_from([0, "nodes", 1.5, True]))
    elif how == "top_null":
        d = None
    return make("structure.sections", draw, spec, d, where=where, note=how)


# ---------------------------------------------------------------------- types

ODD_VALUES = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2.5,
    -0.0,
    1e308,
    float("nan"),
    float("inf"),
    10**30,
    2**63,
    "",
    "x",
    "batch",
    "1",
    "0x10",
    [],
    [1],
    [[1, 2]],
    ["x"],
    {},
    {"a": 1},
    {"op": "relu"},
    [None],
    "nan",
]


def m_type(draw, spec):
    """One value anywhere in the spec replaced by a value of another type."""
    d = spec.data
    all_paths = [p for p in paths(d) if p]
    path = draw(st.sampled_from(all_paths), "path")
    value = draw(st.sampled_from(ODD_VALUES), "value")
    fmt = draw(st.sampled_from(["yaml", "json"]))
    return make(
        "types.replace",
        draw,
        spec,
        put(d, path, value),
        fmt=fmt,
        where=place(path),
        note=f"{'/'.join(map(str, path))} = {value!r}",
    )


def m_key_type(draw, spec):
    """A section entry whose name is not a string (YAML allows it)."""
    d = copy.deepcopy(spec.data)
    sec, name = draw(st.sampled_from(names(d)))
    key = draw(st.sampled_from([1, 2.5, True, None, (1, 2)]), "key")
    d[sec] = {(key if k == name else k): v for k, v in d[sec].items()}
    text = (
        yaml.safe_dump(d, sort_keys=False, width=1 << 16)
        if not isinstance(key, tuple)
        else None
    )
    if text is None:
        text = dump(
            d | {sec: {k: v for k, v in d[sec].items() if k != key}}, "yaml"
        ).decode()
        text = text.replace(f"{sec}:\n", f"{sec}:\n  ? [1, 2]\n  : [3]\n", 1)
    return make(
        "types.key",
        draw,
        spec,
        raw=text.encode(),
        data=d,
        where=[sec, name],
        note=f"{sec} key {key!r}",
    )


# --------------------------------------------------------------------- values

DIMS = [0, 1, 2, 3, 7, 10**6, 2**31, 2**63 - 1, 2**64, 10**30, -1, "batch", "n", "zzz"]


def m_dims(draw, spec):
    """A dimension of an input or param changed."""
    d = copy.deepcopy(spec.data)
    sec, name = draw(st.sampled_from([x for x in names(d) if x[0] != "nodes"]))
    v = d[sec][name]
    shape = v if isinstance(v, list) else v["shape"]
    if not shape:
        shape.append(1)
    i = draw(st.integers(0, len(shape) - 1))
    how = draw(st.sampled_from(["value", "drop", "add"]), "how")
    if how == "value":
        shape[i] = draw(st.sampled_from(DIMS), "value")
    elif how == "drop":
        del shape[i]
    else:
        shape.insert(i, draw(st.sampled_from([1, 2, "batch"])))
    return make(
        "values.dims", draw, spec, d, where=[name], note=f"{name} shape {shape}"
    )


CONSTANTS = [
    0,
    -0.0,
    1,
    -1,
    0.5,
    1e-308,
    5e-324,
    1e308,
    -1e308,
    2**53 + 1,
    10**400,
    float("nan"),
    float("inf"),
    float("-inf"),
]


def m_constant(draw, spec):
    """A number in a node's args (a constant): zero, huge, tiny, NaN, inf, ..."""
    d = copy.deepcopy(spec.data)
    node = draw(st.sampled_from(sorted(d["nodes"])))
    args = d["nodes"][node].setdefault("args", [])
    value = draw(st.sampled_from(CONSTANTS), "value")
    if args and draw(st.booleans()):
        args[draw(st.integers(0, len(args) - 1))] = value
    else:
        args.append(value)
    fmt = "json" if isinstance(value, int) and value > 2**64 else "yaml"
    if fmt == "yaml" and isinstance(value, int) and value > 2**64:
        value = float(value)
    return make(
        "values.constant",
        draw,
        spec,
        d,
        fmt=fmt,
        where=[node],
        note=f"{node} arg {value!r}",
    )


def m_init(draw, spec):
    d = copy.deepcopy(spec.data)
    if not d.get("params"):
        return m_dims(draw, spec)
    name = draw(st.sampled_from(sorted(d["params"])))
    v = d["params"][name]
    shape = v if isinstance(v, list) else v["shape"]
    init = draw(
        st.sampled_from(
            [
                "zeros",
                "ones",
                "normal",
                "weights",
                "glorot_uniform",
                "uniform",
                0,
                1e308,
                float("nan"),
                float("-inf"),
                -0.0,
            ]
        ),
        "init",
    )
    d["params"][name] = {"shape": shape, "init": init}
    if init == "weights" and draw(st.booleans()):
        d["weights"] = draw(
            st.sampled_from(["missing.npz", "", ".", "spec.yaml", "/dev/null"]),
            "weights",
        )
    return make(
        "values.init",
        draw,
        spec,
        d,
        where=[name, "weights"],
        note=f"{name} init {init!r}",
    )


def m_dtype(draw, spec):
    d = copy.deepcopy(spec.data)
    value = draw(
        st.sampled_from(
            [
                "float32",
                "float64",
                "float16",
                "int64",
                "Float64",
                "float64 ",
                "double",
                "f8",
            ]
        ),
        "value",
    )
    where = ["dtype"]
    if draw(st.booleans()) and d.get("inputs"):
        name = draw(st.sampled_from(sorted(d["inputs"])))
        v = d["inputs"][name]
        d["inputs"][name] = {
            "shape": v if isinstance(v, list) else v["shape"],
            "dtype": value,
        }
        where = [name]
    else:
        d["dtype"] = value
    return make("values.dtype", draw, spec, d, where=where, note=f"dtype {value}")


def _axis(draw, rank, wild=True):
    if wild and draw(st.integers(0, 7)) == 0:
        return draw(
            st.sampled_from([rank, -rank - 1, 99, 2**63, "1", 1.0, True, [0, 0]])
        )
    return draw(st.integers(-rank, rank - 1)) if rank else 0


def _graft(draw, shape):
    """An op (name, attrs, extra args) that may take an array of ``shape``."""
    rank = len(shape)
    op = draw(
        st.sampled_from(
            [
                "sum",
                "mean",
                "max",
                "logsumexp",
                "softmax",
                "log_softmax",
                "transpose",
                "slice",
                "reshape",
                "concat",
                "pad",
                "clip",
                "leaky_relu",
                "gelu",
                "broadcast_to",
                "exp",
                "log",
                "sqrt",
                "tanh",
                "sigmoid",
                "abs",
                "relu",
                "square",
                "sin",
                "erf",
                "softplus",
                "mul",
                "div",
                "pow",
                "maximum",
                "sub",
            ]
        ),
        "op",
    )
    attrs, extra = {}, []
    if op in ("sum", "mean", "max", "logsumexp"):
        if draw(st.booleans()):
            attrs["axis"] = (
                _axis(draw, rank)
                if draw(st.booleans())
                else draw(st.lists(st.integers(-rank, max(rank - 1, 0)), max_size=3))
            )
        if draw(st.booleans()):
            attrs["keepdims"] = draw(st.sampled_from([True, False, 0, 1, "yes"]))
    elif op in ("softmax", "log_softmax"):
        attrs["axis"] = _axis(draw, rank)
    elif op == "transpose":
        perm = draw(st.permutations(list(range(rank))))
        if draw(st.integers(0, 5)) == 0:
            perm = draw(st.sampled_from([[0], [0, 0], [1, 0, 2], [-1, 0], []]))
        attrs["perm"] = perm
    elif op == "slice":
        attrs["axis"] = _axis(draw, rank)
        bound = st.one_of(
            st.none(),
            st.integers(-5, 5),
            st.sampled_from(["batch", "batch - 1", "zzz", "2*batch", 2**40]),
        )
        attrs["start"], attrs["stop"] = draw(bound), draw(bound)
        attrs["step"] = draw(st.sampled_from([1, 1, 2, 3, 0, -1]))
    elif op == "reshape":
        attrs["shape"] = draw(
            st.sampled_from(
                [[-1], [-1, 1], [1, -1], [-1, -1], [0], ["batch", -1], [5, 7], []]
            )
        )
    elif op == "concat":
        extra = ["SELF"]
        attrs["axis"] = _axis(draw, rank)
    elif op == "pad":
        attrs["pads"] = draw(
            st.lists(st.integers(-2, 3), min_size=2 * rank, max_size=2 * rank)
        )
        if draw(st.integers(0, 5)) == 0:
            attrs["pads"] = draw(st.sampled_from([[1], [], [1, 2, 3]]))
        attrs["value"] = draw(st.sampled_from([0.0, 1.5, -1e308, float("nan")]))
    elif op == "clip":
        lo = draw(st.sampled_from([None, -1.0, 0.0, 0.5, float("-inf")]))
        hi = draw(st.sampled_from([None, 1.0, 0.0, -1.0, float("inf")]))
        attrs.update({k: v for k, v in (("min", lo), ("max", hi)) if v is not None})
    elif op == "leaky_relu":
        attrs["alpha"] = draw(st.sampled_from([0.0, 0.2, -1.0, 1e308, float("nan")]))
    elif op == "gelu":
        attrs["approximate"] = draw(st.sampled_from(["none", "tanh", "erf", 1]))
    elif op == "broadcast_to":
        attrs["shape"] = draw(
            st.sampled_from([[2, *shape], list(shape), [3], [*shape, 2]])
        )
    elif op in ("mul", "div", "pow", "maximum", "sub"):
        extra = [draw(st.sampled_from(["SELF", 2.0, 0.0, -1.0, 0.5]))]
    return op, attrs, extra


def m_graft(draw, spec):
    """A new node with attributes on an existing array, summed into the loss: the
    graph stays valid unless the attributes are not, and its module is checked."""
    d = copy.deepcopy(spec.data)
    shp = shapes(spec.name)
    candidates = [
        n
        for n in sorted(shp)
        if n in d.get("nodes", {})
        or n in d.get("inputs", {})
        or n in d.get("params", {})
    ]
    target = draw(st.sampled_from(candidates), "target")
    shape = [s for s in shp[target]]
    op, attrs, extra = _graft(draw, shape)
    args = [target] + [target if a == "SELF" else a for a in extra]
    d["nodes"]["fz_new"] = {"op": op, "args": args, **attrs}
    d["nodes"]["fz_sum"] = {"op": "sum", "args": ["fz_new"]}
    if d.get("loss"):
        d["nodes"]["fz_loss"] = {"op": "add", "args": [d["loss"], "fz_sum"]}
        d["loss"] = "fz_loss"
        d["outputs"] = [*(d.get("outputs") or []), "fz_new", "fz_loss"]
        if draw(st.booleans()):
            d["wrt"] = sorted(
                {
                    *(d.get("wrt") or d.get("params", {})),
                    *[
                        n
                        for n in d.get("inputs", {})
                        if isinstance(d["inputs"][n], list)
                    ],
                }
            )
    else:
        d["outputs"] = [*(d.get("outputs") or []), "fz_new"]
    return make(
        "values.graft",
        draw,
        spec,
        d,
        where=["fz_new", "fz_sum", "fz_loss", target],
        note=f"fz_new = {op}({', '.join(map(str, args))}, {attrs})",
        command=draw(
            st.sampled_from(["compile"] * 6 + ["check", "float32", "numba"]), "command"
        ),
    )


# ---------------------------------------------------------------------- names

NAMES = [
    "class",
    "lambda",
    "def",
    "None",
    "True",
    "import",
    "yield",
    "await",
    "match",
    "_",
    "__init__",
    "__class__",
    "__builtins__",
    "__name__",
    "np",
    "numpy",
    "numba",
    "DTYPE",
    "_FLOAT",
    "INPUTS",
    "PARAMS",
    "OUTPUTS",
    "DTYPES",
    "LOSS",
    "WRT",
    "forward",
    "value_and_grad",
    "vjp",
    "init_params",
    "_check",
    "_unpack",
    "_fail",
    "_sigmoid",
    "arrays",
    "cotangents",
    "sizes",
    "rng",
    "float",
    "int",
    "sum",
    "len",
    "tmp1",
    "x_bar",
    "J_bar",
    "h_bar_via_z",
    "batch",
    "N",
    "a#2",
    "1x",
    "9",
    "1.5",
    "nan",
    "-1",
    "a b",
    " x",
    "x ",
    "a-b",
    "a.b",
    "a/b",
    "a:b",
    "a'b",
    'a"b',
    "a\\b",
    "a\nb",
    "a\tb",
    "{{x}}",
    "{% if x %}",
    "%s",
    "$x",
    "é",
    "名前",
    "𝔘𝔫𝔦",
    "🙂",
    "a\u0301",
    "\u202eabc",
    "\u200b",
    "ﬁ",
    "Ω",
    "x\x00y",
    "",
    " ",
    "\x7f",
    "…",
    "x" * 300,
    "W1",
    "x\r",
    "yes",
    "null",
]
SYMBOL_NAMES = [
    "class",
    "None",
    "True",
    "lambda",
    "x",
    "W1",
    "np",
    "_",
    "é",
    "sum",
    "int",
    "forward",
    "arrays",
    "DTYPE",
    "sizes",
    "batch2",
    "b" * 200,
    "if",
]


def m_rename(draw, spec):
    """An input, param or node renamed everywhere (the spec stays valid)."""
    sec, old = draw(st.sampled_from(names(spec.data)), "old")
    fmt = draw(st.sampled_from(["yaml", "json"]), "fmt")
    new = draw(
        st.one_of(
            st.sampled_from(NAMES),
            st.text(min_size=1, max_size=12),
            st.sampled_from(["\ud800", "a\udfffb", "\udc80x"]),
        ),
        "new",
    )
    if any(0xD800 <= ord(c) <= 0xDFFF for c in new):
        fmt = "json"  # only JSON can say a lone surrogate
    d = rename(spec.data, old, new)
    return make(
        "names.rename",
        draw,
        spec,
        d,
        fmt=fmt,
        where=[new, old],
        note=f"{sec} {old!r} -> {new!r}",
    )


def m_rename_symbol(draw, spec):
    syms = symbols(spec.data)
    if not syms:
        return m_rename(draw, spec)
    old = draw(st.sampled_from(syms))
    new = draw(
        st.one_of(st.sampled_from(SYMBOL_NAMES), st.text(min_size=1, max_size=6))
    )
    d = rename_symbol(spec.data, old, new)
    return make(
        "names.symbol", draw, spec, d, where=[new, old], note=f"size {old!r} -> {new!r}"
    )


def m_model_name(draw, spec):
    d = copy.deepcopy(spec.data)
    d["name"] = draw(st.one_of(st.sampled_from(NAMES), st.text(max_size=10)))
    return make(
        "names.model", draw, spec, d, where=["name"], note=f"name {d['name']!r}"
    )


# ------------------------------------------------------------------ encodings


def m_encoding(draw, spec):
    """The same spec (or a valid one with a non-ASCII name) in another encoding, or cut."""
    text = spec.text
    if draw(st.booleans(), "rename"):
        node = draw(st.sampled_from(sorted(spec.data["nodes"])))
        text = dump(rename(spec.data, node, "größe_é"), "yaml").decode("utf-8")
    how = draw(
        st.sampled_from(
            [
                "utf-16",
                "utf-16-le",
                "utf-32",
                "utf-8-sig",
                "latin-1",
                "cp1252",
                "truncate",
                "crlf",
                "cr",
                "tabs",
                "nul",
                "bom-json",
                "utf-16-json",
            ]
        ),
        "how",
    )
    fmt, where = "yaml", ()
    if how == "truncate":
        raw = text.encode("utf-8")
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif how == "crlf":
        raw = text.replace("\n", "\r\n").encode()
    elif how == "cr":
        raw = text.replace("\n", "\r").encode()
    elif how == "tabs":
        raw = text.replace("  ", "\t").encode()
    elif how == "nul":
        raw = text.encode()
        i = draw(st.integers(0, len(raw)))
        raw = raw[:i] + b"\x00" + raw[i:]
    elif how in ("bom-json", "utf-16-json"):
        fmt = "json"
        js = json.dumps(spec.data, ensure_ascii=False)
        raw = ("\ufeff" + js).encode() if how == "bom-json" else js.encode("utf-16")
    else:
        try:
            raw = text.encode(how)
        except UnicodeEncodeError:
            raw = text.encode(how, "replace")
    return make(
        f"encodings.{how}", draw, spec, raw=raw, data=spec.data, fmt=fmt, where=where
    )


def m_garbage(draw, spec):
    """Random bytes, or the spec with random bytes in it."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    how = draw(
        st.sampled_from(["random", "splice", "empty", "space", "comment", "printable"]),
        "how",
    )
    if how == "random":
        raw = rng.randbytes(draw(st.integers(1, 2000)))
    elif how == "splice":
        raw = bytearray(spec.text.encode())
        for _ in range(draw(st.integers(1, 8))):
            i = rng.randrange(len(raw))
            raw[i : i + rng.randrange(1, 4)] = bytes(
                rng.randrange(256) for _ in range(rng.randrange(0, 4))
            )
        raw = bytes(raw)
    elif how == "empty":
        raw = b""
    elif how == "space":
        raw = b" \n\t\n"
    elif how == "comment":
        raw = b"# nothing here\n"
    else:
        alphabet = "abc :,-[]{}'\"#&*!|>%@`\n"
        raw = "".join(
            rng.choice(alphabet) for _ in range(draw(st.integers(1, 500)))
        ).encode()
    fmt = draw(st.sampled_from(["yaml", "json"]))
    return make(
        f"encodings.garbage_{how}", draw, spec, raw=raw, data=spec.data, fmt=fmt
    )


YAML_QUIRKS = {
    "bool_key": ("nodes:\n", "nodes:\n  on: {op: relu, args: [x]}\n"),
    "null_key": ("nodes:\n", "nodes:\n  ~: {op: relu, args: [x]}\n"),
    "int_key": ("nodes:\n", "nodes:\n  1: {op: relu, args: [x]}\n"),
    "python_tag": ("nodes:\n", "nodes:\n  q: !!python/object:os.system {op: relu}\n"),
    "binary_tag": ("nodes:\n", "nodes:\n  q: {op: !!binary aGVsbG8=, args: [x]}\n"),
    "timestamp": ("nodes:\n", "nodes:\n  q: {op: relu, args: [2001-12-14]}\n"),
    "set": ("nodes:\n", "nodes:\n  q: !!set {a, b}\n"),
    "merge": ("nodes:\n", "base: &b {op: relu}\nnodes:\n  q: {<<: *b, args: [x]}\n"),
    "two_docs": ("", "---\nname: a\n---\n"),
    "doc_end": ("", "...\n"),
    "octal_dim": ("inputs:\n", "inputs:\n  q: [0o17, 0x10]\n"),
    "sexagesimal": ("inputs:\n", "inputs:\n  q: [1:20]\n"),
    "float_dim": ("inputs:\n", "inputs:\n  q: [2.0, 1e3]\n"),
    "alias_loop": ("nodes:\n", "nodes:\n  q: &a {op: relu, args: [*a]}\n"),
    "huge_int": ("nodes:\n", "nodes:\n  q: {op: mul, args: [x, 1" + "0" * 400 + "]}\n"),
    "dup_key": ("nodes:\n", "nodes:\n  q: {op: relu, op: tanh, args: [x]}\n"),
}


def m_yaml_quirk(draw, spec):
    name = draw(st.sampled_from(sorted(YAML_QUIRKS)), "how")
    old, new = YAML_QUIRKS[name]
    text = spec.text
    if old:
        text = text.replace(old, new, 1) if old in text else text + new
    else:
        text = new + text
    return make(
        f"encodings.yaml_{name}",
        draw,
        spec,
        raw=text.encode(),
        data=spec.data,
        where=["q", "nodes", "inputs"],
    )


JSON_QUIRKS = [
    "nan",
    "infinity",
    "dup_key",
    "trailing_comma",
    "comment",
    "big_number",
    "single_quotes",
    "surrogate_key",
    "escaped_nul",
]


def m_json_quirk(draw, spec):
    how = draw(st.sampled_from(JSON_QUIRKS), "how")
    js = json.dumps(spec.data, indent=1)
    node = min(spec.data["nodes"])
    where = [node, "nodes"]
    if how == "nan":
        js = js.replace("{", '{"q": NaN, ', 1)
    elif how == "infinity":
        js = js.replace(
            '"nodes": {', '"nodes": {"q": {"op": "mul", "args": ["x", Infinity]}, ', 1
        )
    elif how == "dup_key":
        js = js.replace('"nodes": {', f'"nodes": {{"{node}": {{"op": "relu"}}, ', 1)
    elif how == "trailing_comma":
        js = js[: js.rfind("}")].rstrip() + ",}"
    elif how == "comment":
        js = "// spec\n" + js
    elif how == "big_number":
        js = js.replace(
            '"nodes": {', '"nodes": {"q": {"op": "mul", "args": ["x", 1e999]}, ', 1
        )
    elif how == "single_quotes":
        js = js.replace('"', "'")
    elif how == "surrogate_key":
        js = js.replace(
            '"nodes": {', '"nodes": {"\\udfff": {"op": "relu", "args": ["x"]}, ', 1
        )
    elif how == "escaped_nul":
        js = js.replace(
            '"nodes": {', '"nodes": {"a\\u0000b": {"op": "relu", "args": ["x"]}, ', 1
        )
    return make(
        f"encodings.json_{how}",
        draw,
        spec,
        raw=js.encode(),
        data=spec.data,
        fmt="json",
        where=where + ["q"],
    )


def m_file(draw, spec):
    """The input is not a plain readable file."""
    how = draw(
        st.sampled_from(
            [
                "missing",
                "directory",
                "suffix_txt",
                "no_suffix",
                "yaml_as_json",
                "json_as_yaml",
            ]
        ),
        "how",
    )
    raw = spec.text.encode()
    if how == "missing":
        c = make("encodings.file_missing", draw, spec, raw=raw, data=spec.data)
        c.argv[1] = "nope.yaml"
        c.files = {"nope.yaml": b""}  # the name the error must give
        c.params["absent"] = True  # but no such file
        return c
    if how == "directory":
        c = make("encodings.file_directory", draw, spec, raw=raw, data=spec.data)
        c.params["directory"] = True  # the input is a directory
        return c
    ext = {
        "suffix_txt": "txt",
        "no_suffix": "",
        "yaml_as_json": "json",
        "json_as_yaml": "yaml",
    }[how]
    if how == "json_as_yaml":
        raw = json.dumps(spec.data).encode()
    c = make(f"encodings.file_{how}", draw, spec, raw=raw, data=spec.data, ext=ext)
    if ext == "":
        c.files = {"spec": raw}
        c.argv[1] = "spec"
    return c


# ---------------------------------------------------------------------- sizes


def m_deep(draw, spec):
    """Deeply nested JSON or YAML in a value."""
    depth = draw(st.sampled_from([50, 1_000, 20_000, 200_000]), "depth")
    where = ["q", "nodes"]
    fmt = draw(st.sampled_from(["json", "yaml_flow", "yaml_block"]), "fmt")
    if fmt == "json":
        js = json.dumps(spec.data)
        raw = js.replace(
            '"nodes": {',
            '"nodes": {"q": {"op": "relu", "args": '
            + "[" * depth
            + "]" * depth
            + "}, ",
            1,
        ).encode()
        return make(
            "sizes.deep",
            draw,
            spec,
            raw=raw,
            data=spec.data,
            fmt="json",
            where=where,
            params={"depth": depth, "fmt": fmt},
        )
    if fmt == "yaml_flow":
        text = spec.text.replace(
            "nodes:\n",
            "nodes:\n  q: {op: relu, args: " + "[" * depth + "]" * depth + "}\n",
            1,
        )
    else:
        depth = min(depth, 5_000)
        block = "".join("  " * (i + 2) + "- \n" for i in range(depth))
        text = spec.text.replace(
            "nodes:\n", "nodes:\n  q:\n    op: relu\n    args:\n" + block, 1
        )
    return make(
        "sizes.deep",
        draw,
        spec,
        raw=text.encode(),
        data=spec.data,
        where=where,
        params={"depth": depth, "fmt": fmt},
    )


def _a_float(spec):
    """A float node or input of the spec, and its shape."""
    shp = shapes(spec.name)
    for n in list(spec.data["nodes"]) + list(spec.data.get("inputs", {})):
        v = spec.data.get("inputs", {}).get(n)
        if isinstance(v, dict) and v.get("dtype") == "int64":
            continue
        if shp.get(n) and n != spec.data.get("loss"):
            return n, shp[n]
    return next(iter(spec.data["inputs"])), ()


def m_dim_expr(draw, spec):
    """A deeply nested symbolic size expression (in a reshape or slice attribute)."""
    n = draw(st.sampled_from([10, 200, 3_000, 30_000]), "n")
    how = draw(st.sampled_from(["parens", "sum", "product", "unary"]), "how")
    sym = (symbols(spec.data) or ["batch"])[0]
    expr = {
        "parens": "(" * n + sym + ")" * n,
        "sum": "+".join([sym] * n),
        "product": "*".join(["1"] * n + [sym]),
        "unary": "-" * (2 * (n // 2)) + sym,
    }[how]
    d = copy.deepcopy(spec.data)
    target, _ = _a_float(spec)
    d["nodes"]["q"] = {
        "op": "slice",
        "args": [target],
        "axis": 0,
        "start": 0,
        "stop": expr,
    }
    d["nodes"]["qs"] = {"op": "sum", "args": ["q"]}
    d["outputs"] = [*(d.get("outputs") or [d.get("loss")]), "qs"]
    d["outputs"] = [o for o in d["outputs"] if o]
    return make(
        "sizes.dim_expr",
        draw,
        spec,
        d,
        where=["q"],
        note=f"{how} of {n}",
        params={"n": n, "how": how},
    )


def m_arity(draw, spec):
    """``add_n`` (or concat, maximum chains) of very many arguments."""
    n = draw(st.sampled_from([100, 5_000, 50_000]), "n")
    target, _ = _a_float(spec)
    op = draw(st.sampled_from(["add_n", "concat"]), "op")
    d = copy.deepcopy(spec.data)
    d["nodes"]["q"] = {"op": op, "args": [target] * n}
    if op == "concat":
        d["nodes"]["q"]["axis"] = 0
    d["nodes"]["qs"] = {"op": "sum", "args": ["q"]}
    d["outputs"] = [o for o in [*(d.get("outputs") or [d.get("loss")]), "qs"] if o]
    return make(
        "sizes.arity",
        draw,
        spec,
        d,
        where=["q"],
        note=f"{op} of {n}",
        params={"n": n, "op": op},
        command=draw(
            st.sampled_from(["compile", "compile", "check", "render"]), "command"
        ),
    )


def m_chain(draw, spec):
    """A chain of very many nodes."""
    # 3,000 nodes compile in a few seconds when each pass is linear (tanh: 1 ms a
    # node); a quadratic pass takes half a minute
    n = draw(st.sampled_from([300, 3_000]), "n")
    target, _ = _a_float(spec)
    d = copy.deepcopy(spec.data)
    prev = target
    op = draw(st.sampled_from(["tanh", "neg", "add"]), "op")
    for i in range(n):
        d["nodes"][f"c{i}"] = {"op": op, "args": [prev] if op != "add" else [prev, 1.0]}
        prev = f"c{i}"
    d["nodes"]["qs"] = {"op": "sum", "args": [prev]}
    d["outputs"] = [o for o in [*(d.get("outputs") or [d.get("loss")]), "qs"] if o]
    return make(
        "sizes.chain",
        draw,
        spec,
        d,
        where=["qs"],
        note=f"{n} × {op}",
        params={"n": n},
        command=draw(
            st.sampled_from(["compile", "compile", "check", "render", "explain"]),
            "command",
        ),
    )


def m_many(draw, spec):
    """Very many inputs or params or outputs."""
    n = draw(st.sampled_from([200, 5_000]), "n")
    d = copy.deepcopy(spec.data)
    how = draw(st.sampled_from(["params", "outputs", "wrt"]), "how")
    if how == "params":
        for i in range(n):
            d.setdefault("params", {})[f"p{i}"] = [1]
    elif how == "outputs":
        d["outputs"] = [*(d.get("outputs") or [d.get("loss")])] * n
    else:
        d["wrt"] = [*(d.get("wrt") or sorted(d.get("params", {})))] * n
    return make(
        "sizes.many", draw, spec, d, where=[how], note=f"{n} {how}", params={"n": n}
    )


def m_long_line(draw, spec):
    """One very long line: the spec in one line of JSON flow, padded; or garbage."""
    n = draw(st.sampled_from([10_000, 1_000_000, 2_000_000]), "n")
    how = draw(st.sampled_from(["flow", "garbage", "args", "letters"]), "how")
    rng = random.Random(n)
    if how == "flow":
        d = copy.deepcopy(spec.data)
        d["name"] = "n" * n
        raw = json.dumps(d).encode()
        return make(
            "sizes.long_line",
            draw,
            spec,
            raw=raw,
            data=d,
            ext="yaml",
            where=["name"],
            params={"n": n, "how": how},
        )
    if how == "args":
        target, _ = _a_float(spec)
        k = max(1, n // (len(target) + 2))
        line = "  q: {op: add_n, args: [" + ", ".join([target] * k) + "]}\n"
        raw = spec.text.replace("nodes:\n", "nodes:\n" + line, 1).encode()
        return make(
            "sizes.long_line",
            draw,
            spec,
            raw=raw,
            data=spec.data,
            where=["q"],
            params={"n": n, "how": how},
        )
    alphabet = b"abcdefgh ,:[]{}-" if how == "garbage" else b"abcdefghij"
    raw = rng.randbytes(n).translate(
        bytes(alphabet[i % len(alphabet)] for i in range(256))
    )
    return make(
        "sizes.long_line",
        draw,
        spec,
        raw=raw,
        data=spec.data,
        params={"n": n, "how": how},
    )


def m_long_name(draw, spec):
    n = draw(st.sampled_from([1_000, 100_000, 1_000_000]), "n")
    sec, old = draw(st.sampled_from(names(spec.data)), "old")
    new = draw(st.sampled_from(["a", "é", "_"]), "char") * n
    d = rename(spec.data, old, new)
    return make(
        "sizes.long_name",
        draw,
        spec,
        d,
        where=[new],
        note=f"{sec} {old} named {n} chars",
        params={"n": n},
    )


def m_billion_laughs(draw, spec):
    levels = draw(st.sampled_from([3, 9, 20]), "levels")
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    text = "\n".join(lines) + f"\nnodes:\n  q: {{op: add_n, args: *a{levels - 1}}}\n"
    return make(
        "sizes.billion_laughs",
        draw,
        spec,
        raw=text.encode(),
        data={},
        where=["q", "a0"],
        params={"levels": levels},
    )


def m_big_dims(draw, spec):
    """Static sizes that make arrays of terabytes."""
    d = copy.deepcopy(spec.data)
    sec, name = draw(st.sampled_from([x for x in names(d) if x[0] != "nodes"]))
    v = d[sec][name]
    shape = v if isinstance(v, list) else v["shape"]
    big = draw(st.sampled_from([10**6, 10**9, 2**40]), "n")
    shape[:] = [big if isinstance(s, int) else s for s in shape] or [big]
    return make(
        "sizes.big_dims",
        draw,
        spec,
        d,
        where=[name],
        note=f"{name} {shape}",
        command=draw(
            st.sampled_from(
                ["compile", "compile", "check", "render", "explain", "numba"]
            ),
            "command",
        ),
    )


# ------------------------------------------------------------------ the families

FAMILIES = {
    "structure": [
        m_drop_key,
        m_drop_entry,
        m_no_outputs,
        m_args,
        m_change_op,
        m_outputs,
        m_sections,
    ],
    "types": [m_type, m_type, m_key_type],
    "values": [m_dims, m_constant, m_init, m_dtype, m_graft, m_graft, m_graft],
    "names": [m_rename, m_rename, m_rename_symbol, m_model_name],
    "encodings": [m_encoding, m_garbage, m_yaml_quirk, m_json_quirk, m_file],
    "sizes": [
        m_deep,
        m_dim_expr,
        m_arity,
        m_chain,
        m_many,
        m_long_line,
        m_long_name,
        m_billion_laughs,
        m_big_dims,
    ],
}


@st.composite
def spec_cases(draw, family=None):
    fam = family or draw(st.sampled_from(sorted(FAMILIES)))
    mutator = draw(st.sampled_from(FAMILIES[fam]))
    spec = draw(st.sampled_from(corpus.specs()))
    return mutator(draw, spec)


class Forced:
    """A ``draw`` that answers some labelled draws with given values (fixed cases)."""

    def __init__(self, draw, force):
        self.draw = draw
        self.force = force

    def __call__(self, strategy, label=None):
        if label in self.force:
            return self.force[label]
        return self.draw(strategy)


def first(strategy):
    """The simplest example of ``strategy`` (hypothesis's first, shrunk, choice)."""
    from hypothesis import Phase, find, settings

    return find(
        strategy,
        lambda _: True,
        settings=settings(database=None, max_examples=1, phases=[Phase.generate]),
    )


def scripted(mutator, spec_name, **force):
    """The case ``mutator`` makes from the example ``spec_name`` with the labelled draws
    in ``force`` fixed and every other draw at its simplest."""
    spec = next(s for s in corpus.specs() if s.name == spec_name)

    @st.composite
    def one(draw):
        return mutator(Forced(draw, force), spec)

    return first(one())
