"""Fixed cases: each class issue 19 names, built directly (the generated cases may or
may not hit them at a given seed). They run in the short run and open the long one."""

from __future__ import annotations

import io
import json

from . import gen_specs
from .case import Case

TINY_JSON = {
    "inputs": {"x": ["batch", 2]},
    "params": {"W": [2, 3]},
    "nodes": {
        "z": {"op": "matmul", "args": ["x", "W"]},
        "h": {"op": "tanh", "args": ["z"]},
        "J": {"op": "sum", "args": ["h"]},
    },
    "loss": "J",
}


def _spec(kind, files, argv, where=(), verify="module", note=""):
    return Case(
        part="spec",
        kind=kind,
        note=note,
        files=files,
        argv=argv,
        where=tuple(where),
        verify=verify,
        origin="fixed",
    )


def spec_cases(short=False):
    S = gen_specs.scripted
    out = [
        S(gen_specs.m_long_line, "tiny", n=200_000, how="args", command="compile"),
        S(gen_specs.m_deep, "tiny", depth=20_000, fmt="json", command="compile"),
        S(gen_specs.m_dim_expr, "tiny", n=3_000, how="parens", command="compile"),
        S(gen_specs.m_arity, "tiny", n=5_000, op="add_n", command="compile"),
        S(gen_specs.m_garbage, "tiny", how="random", command="compile"),
        S(gen_specs.m_no_outputs, "tiny", command="compile"),
    ]
    if not short:  # half a minute while the optimizer is quadratic: the long run only
        out.append(S(gen_specs.m_chain, "tiny", n=3_000, op="neg", command="compile"))
    # a node named by a lone surrogate (JSON can say it): compile, then render
    d = json.loads(json.dumps(TINY_JSON).replace('"h"', '"\\ud800"'))
    raw = json.dumps(d).encode()
    for command, verify in (("compile", "module"), ("render", "file")):
        argv = (
            ["compile", "spec.json", "-o", "out.py"]
            if command == "compile"
            else ["render", "spec.json", "-o", "out.dot"]
        )
        out.append(
            _spec(
                f"names.surrogate_{command}",
                {"spec.json": raw},
                argv,
                ["\ud800"],
                verify,
            )
        )
    # a weights file that is empty, or cut short
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, W=np.ones((2, 3)))
    npz = buf.getvalue()
    d = json.loads(json.dumps(TINY_JSON))
    d["params"]["W"] = {"shape": [2, 3], "init": "weights"}
    d["weights"] = "w.npz"
    for how, data in (("empty", b""), ("truncated", npz[: len(npz) // 2])):
        out.append(
            _spec(
                f"values.weights_{how}",
                {"spec.json": json.dumps(d).encode(), "w.npz": data},
                ["compile", "spec.json", "-o", "out.py"],
                ["weights", "w.npz"],
            )
        )
    # a slice whose stop names a size no input declares: compile and check
    d = json.loads(json.dumps(TINY_JSON))
    d["nodes"]["s"] = {
        "op": "slice",
        "args": ["h"],
        "axis": 0,
        "start": 0,
        "stop": "zzz",
    }
    d["nodes"]["J"]["args"] = ["s"]
    for command, verify in (("compile", "module"), ("check", "check")):
        argv = (
            ["compile", "spec.json", "-o", "out.py"]
            if command == "compile"
            else ["check", "spec.json"]
        )
        out.append(
            _spec(
                f"values.undeclared_size_{command}",
                {"spec.json": json.dumps(d).encode()},
                argv,
                ["s", "zzz", "stop"],
                verify,
            )
        )
    return out


# ------------------------------------------------------------------------ ONNX


def _model(nodes, inputs, outputs, inits=(), opset=17):
    from onnx import TensorProto, helper

    def vi(name, shape, t=TensorProto.FLOAT):
        return helper.make_tensor_value_info(name, t, shape)

    g = helper.make_graph(
        nodes,
        "g",
        [vi(*i) for i in inputs],
        [vi(*o) for o in outputs],
        initializer=list(inits),
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m.SerializeToString()


def _onnx(kind, model, where, note=""):
    return Case(
        part="onnx",
        kind=kind,
        note=note,
        files={"model.onnx": model},
        argv=["compile", "model.onnx", "-o", "out.py"],
        where=tuple(where),
        verify="module",
        origin="fixed",
    )


def onnx_cases():
    import numpy as np
    from onnx import AttributeProto, helper, numpy_helper

    out = []
    # an Add that names one input (the generic handler reads the second)
    out.append(
        _onnx(
            "structure.missing_input_name",
            _model(
                [helper.make_node("Add", ["x"], ["y"], name="add0")],
                [("x", [2, 3])],
                [("y", [2, 3])],
            ),
            ["add0", "Add", "y"],
        )
    )
    # a MaxPool whose input is the empty name
    out.append(
        _onnx(
            "structure.maxpool_empty_input",
            _model(
                [
                    helper.make_node(
                        "MaxPool", [""], ["y"], name="pool0", kernel_shape=[2, 2]
                    )
                ],
                [("x", [1, 1, 4, 4])],
                [("y", [1, 1, 3, 3])],
            ),
            ["pool0", "MaxPool", "y"],
        )
    )
    # a Concat whose axis is an UNDEFINED attribute
    node = helper.make_node("Concat", ["a", "b"], ["y"], name="cat0")
    u = AttributeProto()
    u.name = "axis"
    u.type = AttributeProto.UNDEFINED
    node.attribute.append(u)
    out.append(
        _onnx(
            "attributes.concat_undefined",
            _model([node], [("a", [2, 3]), ("b", [2, 3])], [("y", [4, 3])]),
            ["cat0", "Concat", "axis", "y"],
        )
    )
    # an initializer of a dtype graphgen does not compute in
    for dt in ("int32", "float16"):
        w = numpy_helper.from_array(np.ones((3, 4), dtype=dt), "W")
        out.append(
            _onnx(
                f"dtypes.initializer_{dt}",
                _model(
                    [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm0")],
                    [("x", [2, 3])],
                    [("y", [2, 4])],
                    [w],
                ),
                ["mm0", "MatMul", "W", "y"],
            )
        )
    # the same tensor listed twice as a graph output: vjp must add both cotangents
    w = numpy_helper.from_array(
        np.linspace(-1, 1, 12).reshape(3, 4).astype(np.float32), "W"
    )
    out.append(
        _onnx(
            "structure.duplicate_output",
            _model(
                [
                    helper.make_node("MatMul", ["x", "W"], ["z"], name="mm0"),
                    helper.make_node("Tanh", ["z"], ["y"], name="t0"),
                ],
                [("x", [2, 3])],
                [("y", [2, 4]), ("y", [2, 4])],
                [w],
            ),
            ["y"],
        )
    )
    return out


# ------------------------------------------------------------------------ calls


def _call(kind, module, fn, target, code=None, expect="same", sizes=None):
    call = {
        "module": module,
        "fn": fn,
        "sizes": sizes or {"batch": 3},
        "seed": 0,
        "target": target,
        "code": code,
        "arrays_code": None,
        "cot_code": None,
        "expect": expect,
        "reference": None,
    }
    return Case(
        part="call",
        kind=kind,
        note=f"{module} {fn} {target}",
        call=call,
        verify="call",
        origin="fixed",
    )


def call_cases(modules):
    from .gen_calls import MUTATIONS, reference_for

    out = []

    def add(kind, module, fn, target, mutation=None, expect=None, sizes=None):
        if module not in modules:
            return
        code, exp = (MUTATIONS[mutation][:2]) if mutation else (None, "values")
        c = _call(kind, module, fn, target, code, expect or exp, sizes)
        c.call["reference"] = reference_for(module, modules)
        out.append(c)

    add(
        "layouts.readonly",
        "tiny/numba/float64",
        "value_and_grad",
        "x",
        "layouts.readonly",
    )
    add(
        "layouts.unaligned",
        "tiny/numba/float64",
        "value_and_grad",
        "W1",
        "layouts.unaligned",
    )
    add("layouts.broadcast", "tiny/numba/float64", "forward", "x", "layouts.broadcast")
    add(
        "sizes.batch=0",
        "mlp/numpy/float64",
        "value_and_grad",
        "batch",
        sizes={"batch": 0},
    )
    add(
        "sizes.batch=0",
        "tiny/numba/float64",
        "value_and_grad",
        "batch",
        sizes={"batch": 0},
    )
    add(
        "subclasses.matrix",
        "tiny/numpy/float64",
        "value_and_grad",
        "x",
        "subclasses.matrix",
    )
    add(
        "subclasses.masked",
        "mlp/numpy/float64",
        "value_and_grad",
        "x",
        "subclasses.masked",
    )
    return out
