"""Mutated ONNX files: bytes, graph structure, attributes, dtypes, opsets.

Each mutator takes hypothesis's ``draw`` and a corpus model (LeNet or one of ONNX's node
tests) and returns a :class:`~fuzz.case.Case` running ``graphgen compile model.onnx -o
out.py`` (whose module is then checked against graphgen's reference interpreter,
onnxruntime and finite differences), ``graphgen import`` or the Numba backend.
"""

from __future__ import annotations

import random

from hypothesis import strategies as st

from .case import Case

COMMANDS = ["compile"] * 8 + ["import", "import", "mse", "numba"]


def argv_for(command):
    if command == "compile":
        return ["compile", "model.onnx", "-o", "out.py"], "module"
    if command == "import":
        return ["import", "model.onnx", "-o", "spec.yaml"], "spec"
    if command == "mse":
        return (
            [
                "compile",
                "model.onnx",
                "-o",
                "out.py",
                "--loss",
                "mse",
                "--labels",
                "fz_t",
            ],
            "module",
        )
    if command == "numba":
        return ["compile", "model.onnx", "--backend", "numba", "-o", "out.py"], "syntax"
    raise ValueError(command)


def make(kind, draw, model, raw, where=(), note="", params=None, command=None):
    if command is None:
        command = draw(st.sampled_from(COMMANDS), "command")
    if command == "mse" and _outputs(raw) != 1:
        command = "compile"  # --loss needs one output: the error says so, nothing more
    argv, verify = argv_for(command)
    return Case(
        part="onnx",
        kind=kind,
        note=note,
        files={"model.onnx": raw},
        argv=argv,
        where=tuple(str(w) for w in where if w),
        verify=verify,
        params=dict(params or {}),
        origin=model.name,
    )


def _outputs(raw):
    import onnx

    try:
        return len(onnx.load_from_string(raw).graph.output)
    except Exception:  # noqa: BLE001 - not a model: whatever the command, an error
        return 1


def proto(model):
    import onnx

    return onnx.load_from_string(model.data)


def _node(draw, m):
    nodes = m.graph.node
    if not nodes:
        return None
    return nodes[draw(st.integers(0, len(nodes) - 1), "node")]


def _node_where(n):
    return [n.name, n.op_type, *n.input, *n.output] if n is not None else []


def _graph_inputs(m):
    inits = {i.name for i in m.graph.initializer}
    return [i for i in m.graph.input if i.name not in inits]


# ----------------------------------------------------------------------- bytes


def m_bytes(draw, model):
    data = bytearray(model.data)
    rng = random.Random(draw(st.integers(0, 2**32 - 1), "seed"))
    how = draw(
        st.sampled_from(
            [
                "truncate",
                "flip",
                "zero",
                "append",
                "empty",
                "random",
                "insert",
                "dup",
                "text",
            ]
        ),
        "how",
    )
    if how == "truncate":
        data = data[: draw(st.integers(0, max(len(data) - 1, 0)), "at")]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 16), "flips")):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif how == "zero":
        i, k = rng.randrange(len(data)), rng.randrange(1, 64)
        data[i : i + k] = bytes(len(data[i : i + k]))
    elif how == "append":
        data += rng.randbytes(rng.randrange(1, 100))
    elif how == "empty":
        data = bytearray()
    elif how == "random":
        data = bytearray(rng.randbytes(draw(st.integers(1, 4000), "length")))
    elif how == "insert":
        i = rng.randrange(len(data))
        data[i:i] = rng.randbytes(rng.randrange(1, 16))
    elif how == "dup":
        i = rng.randrange(len(data))
        data[i:i] = data[i : i + rng.randrange(1, 200)]
    elif how == "text":
        data = bytearray(b"nodes:\n  a: {op: relu, args: [x]}\n")
    return make(f"bytes.{how}", draw, model, bytes(data), note=how)


# ------------------------------------------------------------------- structure


def m_structure(draw, model):
    import onnx
    from onnx import helper

    m = proto(model)
    g = m.graph
    how = draw(
        st.sampled_from(
            [
                "missing_input",
                "rename_node_input",
                "empty_node_input",
                "drop_node_input",
                "extra_node_input",
                "dup_output",
                "output_is_input",
                "output_dangling",
                "no_outputs",
                "dup_producer",
                "self_cycle",
                "reverse_nodes",
                "drop_node",
                "drop_node_output",
                "drop_initializer",
                "initializer_as_input",
                "input_shape",
                "no_nodes",
                "node_names",
                "rename_tensor",
                "no_inputs",
                "output_twice_and_input",
            ]
        ),
        "how",
    )
    n = _node(draw, m)
    where = _node_where(n)
    ins = _graph_inputs(m)
    if how == "missing_input" and ins:
        victim = ins[draw(st.integers(0, len(ins) - 1))]
        where.append(victim.name)
        g.input.remove(victim)
    elif how == "rename_node_input" and n is not None and n.input:
        n.input[draw(st.integers(0, len(n.input) - 1))] = "fz_nowhere"
        where.append("fz_nowhere")
    elif how == "empty_node_input" and n is not None and n.input:
        n.input[draw(st.integers(0, len(n.input) - 1))] = ""
    elif how == "drop_node_input" and n is not None and n.input:
        if draw(st.booleans()):
            del n.input[:]
        else:
            del n.input[-1]
    elif how == "extra_node_input" and n is not None:
        names = [i.name for i in g.input] + [o for x in g.node for o in x.output]
        n.input.append(draw(st.sampled_from(names)))
    elif how == "dup_output" and g.output:
        o = g.output[draw(st.integers(0, len(g.output) - 1))]
        g.output.append(onnx.ValueInfoProto.FromString(o.SerializeToString()))
        where.append(o.name)
    elif how == "output_twice_and_input" and g.output and ins:
        vi = onnx.ValueInfoProto.FromString(ins[0].SerializeToString())
        g.output.append(vi)
        g.output.append(onnx.ValueInfoProto.FromString(vi.SerializeToString()))
        where.append(vi.name)
    elif how == "output_is_input" and ins:
        g.output.append(onnx.ValueInfoProto.FromString(ins[0].SerializeToString()))
        where.append(ins[0].name)
    elif how == "output_dangling" and g.output:
        g.output[0].name = "fz_dangling"
        where.append("fz_dangling")
    elif how == "no_outputs":
        del g.output[:]
    elif how == "dup_producer" and n is not None:
        g.node.append(onnx.NodeProto.FromString(n.SerializeToString()))
    elif how == "self_cycle" and n is not None and n.input and n.output:
        n.input[0] = n.output[0]
    elif how == "reverse_nodes":
        nodes = list(g.node)[::-1]
        del g.node[:]
        g.node.extend(nodes)
    elif how == "drop_node" and n is not None:
        g.node.remove(n)
    elif how == "drop_node_output" and n is not None:
        if draw(st.booleans()):
            del n.output[:]
        else:
            n.output[0] = "fz_renamed"
    elif how == "drop_initializer" and g.initializer:
        victim = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
        where.append(victim.name)
        g.initializer.remove(victim)
    elif how == "initializer_as_input" and g.initializer:
        init = g.initializer[0]
        g.input.append(
            helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
        )
        where.append(init.name)
    elif how == "input_shape" and ins:
        vi = ins[draw(st.integers(0, len(ins) - 1))]
        where.append(vi.name)
        t = vi.type.tensor_type
        what = draw(
            st.sampled_from(
                [
                    "zero",
                    "negative",
                    "huge",
                    "param",
                    "clear",
                    "rank+",
                    "rank-",
                    "no_type",
                    "empty_param",
                ]
            )
        )
        dims = t.shape.dim
        if what == "clear":
            t.ClearField("shape")
        elif what == "no_type":
            vi.ClearField("type")
        elif what == "rank+":
            dims.add().dim_value = 1
        elif what == "rank-" and len(dims):
            del dims[-1]
        elif len(dims):
            d = dims[draw(st.integers(0, len(dims) - 1))]
            if what == "zero":
                d.dim_value = 0
            elif what == "negative":
                d.dim_value = -3
            elif what == "huge":
                d.dim_value = 2**40
            elif what == "param":
                d.dim_param = draw(
                    st.sampled_from(["N", "batch size", "class", "", "é", "N+1"])
                )
            elif what == "empty_param":
                d.ClearField("dim_value")
                d.ClearField("dim_param")
    elif how == "no_nodes":
        del g.node[:]
    elif how == "no_inputs":
        del g.input[:]
    elif how == "node_names":
        new = draw(st.sampled_from(["", "dup", "é", "class", "a/b:c", "x" * 1000]))
        for x in g.node:
            x.name = new
    elif how == "rename_tensor":
        pool = [i.name for i in ins] + [o for x in g.node for o in x.output]
        if pool:
            old = draw(st.sampled_from(pool))
            new = draw(
                st.one_of(
                    st.sampled_from(
                        [
                            "",
                            " ",
                            "class",
                            "lambda",
                            "np",
                            "x.y",
                            "1x",
                            "é",
                            "名",
                            "a'b",
                            "a\nb",
                            "DTYPE",
                            "arrays",
                            "x" * 500,
                            "__init__",
                        ]
                    ),
                    st.text(min_size=1, max_size=8),
                ),
                "new",
            )
            _rename_tensor(g, old, new)
            where += [old, new]
    return make(
        f"structure.{how}", draw, model, m.SerializeToString(), where=where, note=how
    )


def _rename_tensor(g, old, new):
    for coll in (g.input, g.output, g.value_info):
        for vi in coll:
            if vi.name == old:
                vi.name = new
    for init in g.initializer:
        if init.name == old:
            init.name = new
    for x in g.node:
        for i, name in enumerate(x.input):
            if name == old:
                x.input[i] = new
        for i, name in enumerate(x.output):
            if name == old:
                x.output[i] = new


# ------------------------------------------------------------------ attributes


def m_attribute(draw, model):
    from onnx import AttributeProto, helper

    m = proto(model)
    n = _node(draw, m)
    if n is None:
        return m_structure(draw, model)
    where = _node_where(n)
    how = draw(
        st.sampled_from(
            [
                "delete",
                "retype",
                "value",
                "duplicate",
                "unknown",
                "undefined",
                "empty_list",
            ]
        ),
        "how",
    )
    attrs = list(n.attribute)
    a = attrs[draw(st.integers(0, len(attrs) - 1))] if attrs else None
    if a is not None:
        where.append(a.name)
    if how == "delete" and a is not None:
        n.attribute.remove(a)
    elif how == "retype" and a is not None:
        new_type = draw(
            st.sampled_from(
                ["int", "float", "ints", "floats", "string", "tensor", "strings"]
            ),
            "type",
        )
        value = {
            "int": 3,
            "float": 0.5,
            "ints": [1, 2],
            "floats": [0.5],
            "string": "same",
            "tensor": helper.make_tensor("t", 1, [1], [1.0]),
            "strings": ["a"],
        }[new_type]
        n.attribute.remove(a)
        n.attribute.append(helper.make_attribute(a.name, value))
    elif how == "value" and a is not None:
        if a.type == AttributeProto.INT:
            a.i = draw(st.sampled_from([0, -1, -100, 2**62, 99, 1]), "value")
        elif a.type == AttributeProto.FLOAT:
            a.f = draw(
                st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 1e30]), "value"
            )
        elif a.type == AttributeProto.INTS:
            v = draw(
                st.sampled_from([[], [0], [-1], [0, 0], [2**40], [1] * 9, [-5, 5, 7]]),
                "value",
            )
            del a.ints[:]
            a.ints.extend(v)
        elif a.type == AttributeProto.FLOATS:
            del a.floats[:]
            a.floats.extend(draw(st.sampled_from([[], [float("nan")], [1.0] * 7])))
        elif a.type == AttributeProto.STRING:
            a.s = draw(
                st.sampled_from([b"", b"SAME_UPPER", b"VALID", b"bogus", b"\xff\xfe"]),
                "value",
            )
    elif how == "duplicate" and a is not None:
        n.attribute.append(type(a).FromString(a.SerializeToString()))
    elif how == "unknown":
        n.attribute.append(helper.make_attribute("fz_unknown", 1))
        where.append("fz_unknown")
    elif how == "undefined":
        name = (
            a.name
            if a is not None
            else draw(
                st.sampled_from(
                    ["axis", "axes", "perm", "kernel_shape", "pads", "alpha", "to"]
                )
            )
        )
        if a is not None:
            n.attribute.remove(a)
        u = AttributeProto()
        u.name = name
        u.type = AttributeProto.UNDEFINED
        n.attribute.append(u)
        where.append(name)
    elif how == "empty_list" and a is not None:
        a.ClearField("ints")
        a.ClearField("floats")
        a.type = AttributeProto.INTS
    return make(
        f"attributes.{how}", draw, model, m.SerializeToString(), where=where, note=how
    )


# ---------------------------------------------------------------------- dtypes

ELEM_TYPES = [
    0,
    1,
    2,
    3,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    16,
    17,
    999,
]  # 1 float, 7 int64, 11 double


def m_dtype(draw, model):
    import numpy as np
    from onnx import numpy_helper

    m = proto(model)
    g = m.graph
    how = draw(
        st.sampled_from(
            ["input", "output", "initializer", "raw_truncated", "dims", "cast_to"]
        ),
        "how",
    )
    where = []
    ins = _graph_inputs(m)
    et = draw(st.sampled_from(ELEM_TYPES), "elem_type")
    if how == "input" and ins:
        vi = ins[draw(st.integers(0, len(ins) - 1))]
        vi.type.tensor_type.elem_type = et
        where.append(vi.name)
    elif how == "output" and g.output:
        g.output[0].type.tensor_type.elem_type = et
        where.append(g.output[0].name)
    elif how in ("initializer", "raw_truncated", "dims") and g.initializer:
        init = g.initializer[draw(st.integers(0, len(g.initializer) - 1))]
        where.append(init.name)
        if how == "initializer":
            arr = numpy_helper.to_array(init)
            target = draw(
                st.sampled_from(
                    [
                        "float64",
                        "int32",
                        "int8",
                        "float16",
                        "bool",
                        "uint8",
                        "int64",
                        "complex64",
                    ]
                )
            )
            try:
                new = numpy_helper.from_array(arr.astype(target), init.name)
            except Exception:  # noqa: BLE001 - a dtype onnx cannot store
                new = numpy_helper.from_array(arr.astype(np.float64), init.name)
            init.CopyFrom(new)
        elif how == "raw_truncated":
            arr = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
            init.raw_data = init.raw_data[: len(init.raw_data) // 2]
        else:
            del init.dims[:]
            init.dims.extend(draw(st.sampled_from([[], [0], [-1], [3, 3], [2**40]])))
    elif how == "cast_to":
        from onnx import helper

        if ins:
            x = ins[0].name
            g.node.insert(0, helper.make_node("Cast", [x], ["fz_cast"], to=et))
            for node in g.node[1:]:
                for i, name in enumerate(node.input):
                    if name == x:
                        node.input[i] = "fz_cast"
            where += ["fz_cast", "Cast"]
    return make(
        f"dtypes.{how}",
        draw,
        model,
        m.SerializeToString(),
        where=where,
        note=f"{how} {et}",
    )


# ---------------------------------------------------------------------- opsets


def m_opset(draw, model):
    import onnx

    m = proto(model)
    how = draw(
        st.sampled_from(
            [
                "version",
                "remove",
                "duplicate",
                "node_domain",
                "ir_version",
                "model_domain",
            ]
        ),
        "how",
    )
    newest = onnx.defs.onnx_opset_version()
    where = ["opset", "opset_import", "ir_version", "domain"]
    if how == "version":
        v = draw(
            st.sampled_from([0, 1, 6, 7, 9, 11, 12, 13, newest, newest + 1, 10**6, -1]),
            "version",
        )
        for o in m.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = v
    elif how == "remove":
        del m.opset_import[:]
    elif how == "duplicate":
        o = m.opset_import.add()
        o.domain = ""
        o.version = draw(st.sampled_from([7, 13, newest]))
    elif how == "node_domain":
        n = _node(draw, m)
        if n is not None:
            n.domain = draw(
                st.sampled_from(["com.microsoft", "ai.onnx.ml", "bogus", "ai.onnx"])
            )
            where += _node_where(n)
    elif how == "ir_version":
        m.ir_version = draw(st.sampled_from([0, 1, 3, 100]))
    elif how == "model_domain":
        o = m.opset_import.add()
        o.domain = "bogus.domain"
        o.version = 1
    return make(
        f"opsets.{how}", draw, model, m.SerializeToString(), where=where, note=how
    )


def m_plain(draw, model):
    """The unmutated model: the baseline every mutation is measured against."""
    return make("plain", draw, model, model.data, note="unmutated")


FAMILIES = {
    "bytes": [m_bytes],
    "structure": [m_structure],
    "attributes": [m_attribute],
    "dtypes": [m_dtype],
    "opsets": [m_opset],
    "plain": [m_plain],
}
WEIGHTS = (
    ["bytes"] * 4
    + ["structure"] * 6
    + ["attributes"] * 5
    + ["dtypes"] * 3
    + ["opsets"] * 2
    + ["plain"]
)


@st.composite
def onnx_cases(draw, models, family=None):
    fam = family or draw(st.sampled_from(WEIGHTS), "family")
    mutator = draw(st.sampled_from(FAMILIES[fam]))
    # LeNet is slow to import and check: it is one model in twenty
    if draw(st.integers(0, 19), "lenet") == 0:
        model = models[0]
    else:
        model = draw(st.sampled_from(models[1:]), "model")
    return mutator(draw, model)
