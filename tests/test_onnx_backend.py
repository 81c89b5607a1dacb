"""ONNX's own conformance suite, run against graphgen (``graphgen.onnx_backend``).

``onnx.backend.test.BackendTest`` turns each of ONNX's node tests (one op, its inputs and
the expected outputs, stored inside the ``onnx`` package) into a unittest case. We include
the tests of every ONNX op graphgen imports and exclude, with a reason each, the cases
that use what graphgen does not do: integer or float16 arithmetic, training-only outputs,
string inputs, and so on. ``python -m pytest tests/test_onnx_backend.py -q`` prints the
counts; the README reports them.
"""

from __future__ import annotations

import os
import re

import pytest

backend_tests = pytest.importorskip("onnx.backend.test")

import graphgen.onnx_backend

# ONNX op -> the prefix of its node tests (test_<prefix>_..._cpu)
SUPPORTED = {
    "Abs": "abs",
    "Add": "add",
    "And": "and",
    "AveragePool": "averagepool",
    "BatchNormalization": "batchnorm",
    "Clip": "clip",
    "Concat": "concat",
    "Constant": "constant",
    "ConstantOfShape": "constantofshape",
    "Conv": "conv",
    "Cos": "cos",
    "CumSum": "cumsum",
    "Div": "div",
    "Dropout": "dropout",
    "Equal": "equal",
    "Erf": "erf",
    "Exp": "exp",
    "Expand": "expand",
    "Flatten": "flatten",
    "Gather": "gather",
    "GatherElements": "gather_elements",
    "GatherND": "gathernd",
    "Gelu": "gelu",
    "Gemm": "gemm",
    "GlobalAveragePool": "globalaveragepool",
    "GlobalMaxPool": "globalmaxpool",
    "Greater": "greater",
    "Identity": "identity",
    "IsNaN": "isnan",
    "LayerNormalization": "layer_normalization",
    "LeakyRelu": "leakyrelu",
    "Less": "less",
    "Log": "log",
    "LogSoftmax": "logsoftmax",
    "LRN": "lrn",
    "MatMul": "matmul",
    "Max": "max",
    "MaxPool": "maxpool",
    "Mod": "mod",
    "Mean": "mean",
    "Min": "min",
    "Mul": "mul",
    "Neg": "neg",
    "Not": "not",
    "Or": "or",
    "Pad": "constant_pad",
    "Pow": "pow",
    "Range": "range",
    "Reciprocal": "reciprocal",
    "ReduceLogSumExp": "reduce_log_sum_exp",
    "ReduceMax": "reduce_max",
    "ReduceMean": "reduce_mean",
    "ReduceSum": "reduce_sum",
    "ReduceSumSquare": "reduce_sum_square",
    "Relu": "relu",
    "Reshape": "reshape",
    "Shape": "shape",
    "Sigmoid": "sigmoid",
    "Sin": "sin",
    "Size": "size",
    "Slice": "slice",
    "Softmax": "softmax",
    "Softplus": "softplus",
    "Split": "split",
    "Sqrt": "sqrt",
    "Squeeze": "squeeze",
    "Sub": "sub",
    "Sum": "sum",
    "Tanh": "tanh",
    "Transpose": "transpose",
    "Trilu": "tri[lu]",
    "Unsqueeze": "unsqueeze",
    "Where": "where",
    "Xor": "xor",
}

# Test-name patterns left out, and why. Every pattern must match at least one test.
EXCLUDED = {
    r"_(u?int(8|16)|uint(32|64))_": "8- and 16-bit and unsigned integers: graphgen "
    "reads int64 (and int32 as int64)",
    r"_(float16|bfloat16|fp16)": "float16/bfloat16: graphgen modules are float32 "
    "or float64",
    r"^test_slice_neg_steps": "Slice with negative steps (graphgen's slice steps "
    "forward)",
    r"^test_dropout_default_mask|^test_training_dropout": "Dropout in training mode "
    "or with its mask output: only inference is supported",
    r"^test_reduce_[a-z_]+_empty_set": "reductions over an empty axis (zero-size "
    "arrays)",
    r"^test_split_(zero_size|to_sequence)": "zero-size splits and sequences",
    r"^test_(log_)?softmax_(lastdim|functional_dim3|dim3)": "opset 6 models: graphgen "
    "supports opsets 7 and newer",
    r"^test_identity_(opt|sequence)": "optional and sequence types",
    r"_bool_inputs": "boolean tensors",
    r"^test_maxpool_.*(indices|uint8)|^test_maxpool_with_argmax": "MaxPool's "
    "Indices output",
    r"_string": "string tensors",
    r"^test_not_\dd": "opset 1 models: graphgen supports opsets 7 and newer",
    r"^test_(cumsum|gathernd|max|min)_.*int(32|64)|^test_pow_types_.*int": "integer "
    "data of CumSum, GatherND, Max, Min and Pow at run time (int64 at run time: Add, "
    "Sub, Mul, Div, Mod, comparisons, Range, ConstantOfShape, shapes, casts, labels "
    "and indices)",
    r"^test_mod_.*float": "Mod of float tensors (graphgen's Mod is integer)",
    r"^test_range_.*_expanded": "Range expanded into a Loop (control flow)",
}

backend_test = backend_tests.BackendTest(graphgen.onnx_backend, __name__)
for prefix in sorted(set(SUPPORTED.values())):
    backend_test.include(rf"^test_{prefix}(_.*)?_cpu$")
for pattern in EXCLUDED:
    backend_test.exclude(pattern)
if not os.environ.get("GRAPHGEN_ONNX_ALL"):
    # the real-model data (light/, pytorch-*) has its own test module
    backend_test.exclude(r"^test_(bvlc_alexnet|densenet121|inception_v[12]|resnet50)")
    backend_test.exclude(r"^test_(shufflenet|squeezenet|vgg19|zfnet512)")

globals().update(backend_test.enable_report().test_cases)


def test_every_exclusion_names_real_tests():
    loader = backend_tests.loader
    kinds = ["node", *sorted(os.listdir(loader.DATA_DIR))]
    names = [
        t.name
        for kind in kinds
        if kind == "node" or os.path.isdir(os.path.join(loader.DATA_DIR, kind))
        for t in loader.load_model_tests(kind=kind)
    ]
    for pattern in EXCLUDED:
        assert any(re.search(pattern, n) for n in names), pattern
