"""What the mutators start from: the example specs and ONNX models.

Specs: ``examples/*.yaml`` and ``benchmarks/specs/*.yaml``. ONNX models:
``examples/lenet.onnx`` and ONNX's node-test models, read from
``onnx/backend/test/data/node/*/model.onnx`` when the installed package ships them, else
built by importing its node-test case modules (newer ``onnx`` wheels make them in
memory), for the ops graphgen imports plus a few it does not.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import re
import warnings
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SPEC_FILES = sorted((REPO / "examples").glob("*.yaml")) + sorted(
    (REPO / "benchmarks" / "specs").glob("*.yaml")
)
LENET = REPO / "examples" / "lenet.onnx"

# ONNX ops whose node tests are mutated: the ops graphgen imports, and a few it does not
NODE_OPS = frozenset(
    [
        "Abs",
        "Add",
        "AveragePool",
        "BatchNormalization",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "Cos",
        "Div",
        "Dropout",
        "Erf",
        "Exp",
        "Flatten",
        "Gather",
        "Gelu",
        "Gemm",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Identity",
        "LayerNormalization",
        "LeakyRelu",
        "Log",
        "LogSoftmax",
        "LRN",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "Min",
        "Mul",
        "Neg",
        "Pad",
        "Pow",
        "Reciprocal",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceSum",
        "ReduceSumSquare",
        "Relu",
        "Reshape",
        "Shape",
        "Sigmoid",
        "Sin",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tanh",
        "Transpose",
        "Unsqueeze",
        "Hardmax",
        "Elu",
        "Tile",
        "Where",
    ]
)
# the short run's: quick to build (no pooling reference loops), still every family
SHORT_NODE_OPS = frozenset(
    [
        "Add",
        "Concat",
        "Conv",
        "Gemm",
        "Gather",
        "Relu",
        "Reshape",
        "Slice",
        "Softmax",
        "BatchNormalization",
        "Pad",
        "Transpose",
        "Sum",
        "ReduceSum",
        "Split",
        "Squeeze",
        "Clip",
        "Hardmax",
    ]
)
MODULE_OF = {
    "BatchNormalization": "batch_normalization",
    "ReduceLogSumExp": "reduce_log_sum_exp",
}
# node tests graphgen is not meant to run (see tests/test_onnx_backend.py's EXCLUDED):
# mutating them finds nothing about graphgen's own code
SKIP = re.compile(
    r"_(u?int(8|16|32)|float16|bfloat16|fp16|string|bool)|_expanded|_sequence|_optional"
    r"|_opset6|_empty_set|zero_size|_float8|_e4m3|_e5m2|int4|float4"
)


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str  # the file's stem
    text: str
    data: dict


@dataclasses.dataclass(frozen=True)
class Model:
    name: str  # node test name, or "lenet"
    data: bytes  # the serialized ModelProto


@functools.cache
def specs():
    out = []
    for p in SPEC_FILES:
        text = p.read_text(encoding="utf-8")
        out.append(Spec(p.stem, text, yaml.safe_load(text)))
    return tuple(out)


@functools.cache
def models(short=False):
    """LeNet and the node-test models (a smaller set for the short run)."""
    out = [Model("lenet", LENET.read_bytes())]
    out += node_models(SHORT_NODE_OPS if short else NODE_OPS)
    return tuple(out)


def node_models(op_types):
    """The single-node test models of ``op_types``, sorted by test name."""
    import onnx

    found = {}  # test name -> (model bytes, the inputs of its first data set)
    data_dir = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"
    if data_dir.is_dir():
        from onnx import numpy_helper

        for path in sorted(data_dir.glob("*/model.onnx")):
            inputs = []
            for pb in sorted(path.parent.glob("test_data_set_0/input_*.pb")):
                try:
                    inputs.append(numpy_helper.to_array(onnx.load_tensor(str(pb))))
                except Exception:  # noqa: BLE001 - not a plain tensor
                    inputs.append(None)
            found[path.parent.name] = (path.read_bytes(), inputs)
    else:
        import onnx.backend.test.case.node as node_cases

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for op in sorted(op_types):
                name = MODULE_OF.get(op, op.lower())
                try:
                    importlib.import_module(f"onnx.backend.test.case.node.{name}")
                except Exception:  # noqa: BLE001, S112 - a module this onnx lacks
                    continue
        for c in node_cases._NodeTestCases:
            if c.model is not None and c.name not in found:
                inputs = list(c.data_sets[0][0]) if c.data_sets else []
                found[c.name] = (c.model.SerializeToString(), inputs)
    out = []
    for name, (data, inputs) in sorted(found.items()):
        if SKIP.search(name):
            continue
        try:
            model = onnx.load_from_string(data)
        except Exception:  # noqa: BLE001, S112 - a test model this onnx cannot read
            continue
        nodes = model.graph.node
        if len(nodes) == 1 and nodes[0].op_type in op_types:
            out.append(Model(name, _int_inputs_as_initializers(model, inputs)))
    return out


def _int_inputs_as_initializers(model, inputs):
    """Node tests pass shapes, axes and indices as graph inputs; a model graphgen can
    compile has them as initializers (what exporters write). Their test values become
    the initializers."""
    import numpy as np
    from onnx import numpy_helper

    graph_inputs = list(model.graph.input)
    for vi, value in zip(graph_inputs, inputs):
        if isinstance(value, np.ndarray) and value.dtype == np.int64:
            model.graph.initializer.append(numpy_helper.from_array(value, vi.name))
            model.graph.input.remove(vi)
    return model.SerializeToString()


def yaml_text(data):
    """A spec dict as YAML (flow style per entry, like the examples)."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


def env_flag(name):
    return os.environ.get(name, "") not in ("", "0")
