"""Write examples/lenet.onnx: a LeNet-5-style CNN for 28×28 digits, as an exporter would.

    python examples/make_lenet_onnx.py

The model is what `graphgen compile examples/lenet.onnx` reads in the README. Its weights
are random (seeded): the point is the format, not the accuracy. The batch size is the
symbolic ``N``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def lenet(seed=0):
    rng = np.random.default_rng(seed)

    def he(*shape):
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    weights = {
        "conv1.weight": he(6, 1, 5, 5),
        "conv1.bias": np.zeros(6, np.float32),
        "conv2.weight": he(16, 6, 5, 5),
        "conv2.bias": np.zeros(16, np.float32),
        "fc1.weight": he(120, 400),
        "fc1.bias": np.zeros(120, np.float32),
        "fc2.weight": he(84, 120),
        "fc2.bias": np.zeros(84, np.float32),
        "fc3.weight": he(10, 84),
        "fc3.bias": np.zeros(10, np.float32),
    }
    nodes = [
        helper.make_node(
            "Conv",
            ["image", "conv1.weight", "conv1.bias"],
            ["/conv1/Conv"],
            pads=[2] * 4,
        ),
        helper.make_node("Relu", ["/conv1/Conv"], ["/relu1/Relu"]),
        helper.make_node(
            "MaxPool",
            ["/relu1/Relu"],
            ["/pool1/MaxPool"],
            kernel_shape=[2, 2],
            strides=[2, 2],
        ),
        helper.make_node(
            "Conv", ["/pool1/MaxPool", "conv2.weight", "conv2.bias"], ["/conv2/Conv"]
        ),
        helper.make_node("Relu", ["/conv2/Conv"], ["/relu2/Relu"]),
        helper.make_node(
            "MaxPool",
            ["/relu2/Relu"],
            ["/pool2/MaxPool"],
            kernel_shape=[2, 2],
            strides=[2, 2],
        ),
        helper.make_node("Flatten", ["/pool2/MaxPool"], ["/Flatten"], axis=1),
        helper.make_node(
            "Gemm", ["/Flatten", "fc1.weight", "fc1.bias"], ["/fc1/Gemm"], transB=1
        ),
        helper.make_node("Relu", ["/fc1/Gemm"], ["/relu3/Relu"]),
        helper.make_node(
            "Gemm", ["/relu3/Relu", "fc2.weight", "fc2.bias"], ["/fc2/Gemm"], transB=1
        ),
        helper.make_node("Relu", ["/fc2/Gemm"], ["/relu4/Relu"]),
        helper.make_node(
            "Gemm", ["/relu4/Relu", "fc3.weight", "fc3.bias"], ["logits"], transB=1
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "lenet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "lenet.onnx"
    onnx.save(lenet(), out)
    print(f"wrote {out}")
