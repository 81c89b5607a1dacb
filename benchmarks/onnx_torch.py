"""Run an ONNX CNN in PyTorch eager mode, for the ResNet-50 comparison.

onnx2torch would do this, but it imports torchvision, which has no CPU wheel here; the
nine light models use only a handful of ops, so a direct interpreter over
``torch.nn.functional`` is short. Weights are leaf tensors with ``requires_grad``, so
``loss.backward()`` is PyTorch's eager autograd on the same graph graphgen compiles.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads(attrs, nd):
    pads = list(attrs.get("pads", [0] * (2 * nd)))
    return pads[:nd], pads[nd:]


def interpreter(model, weights):
    """``f(inputs: dict of tensors) -> dict of output tensors`` and the weight tensors."""
    import torch
    import torch.nn.functional as F

    consts = {
        i.name: numpy_helper.to_array(i)
        for i in model.graph.initializer
        if i.name not in weights
    }
    for k, v in list(consts.items()):
        if v.dtype.kind == "f":
            consts[k] = torch.tensor(v)
    params = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}

    def run(inputs):
        env = dict(params)
        env.update(inputs)
        for node in model.graph.node:
            a = _attrs(node)
            ins = [env.get(i) if i in env else consts.get(i) for i in node.input]
            op = node.op_type
            if op == "Conv":
                x, w = ins[0], ins[1]
                nd = w.dim() - 2
                begin, end = _pads(a, nd)
                if begin != end:
                    x = F.pad(
                        x, [p for pair in zip(begin[::-1], end[::-1]) for p in pair]
                    )
                    begin = [0] * nd
                y = F.conv2d(
                    x,
                    w,
                    ins[2] if len(ins) > 2 else None,
                    stride=a.get("strides", 1),
                    padding=begin,
                    dilation=a.get("dilations", 1),
                    groups=a.get("group", 1),
                )
            elif op == "BatchNormalization":
                y = F.batch_norm(
                    ins[0],
                    ins[3],
                    ins[4],
                    ins[1],
                    ins[2],
                    False,
                    0.0,
                    a.get("epsilon", 1e-5),
                )
            elif op == "Relu":
                y = F.relu(ins[0])
            elif op == "MaxPool":
                begin, _ = _pads(a, 2)
                y = F.max_pool2d(
                    ins[0],
                    a["kernel_shape"],
                    a.get("strides", 1),
                    begin,
                    ceil_mode=bool(a.get("ceil_mode", 0)),
                )
            elif op == "AveragePool":
                begin, _ = _pads(a, 2)
                y = F.avg_pool2d(
                    ins[0],
                    a["kernel_shape"],
                    a.get("strides", 1),
                    begin,
                    count_include_pad=bool(a.get("count_include_pad", 0)),
                )
            elif op == "Sum":
                y = ins[0]
                for t in ins[1:]:
                    y = y + t
            elif op == "Reshape":
                y = ins[0].reshape([int(d) for d in ins[1]])
            elif op == "Gemm":
                w = ins[1].t() if a.get("transB", 0) else ins[1]
                y = ins[0] @ w + ins[2]
            elif op == "Softmax":
                y = F.softmax(ins[0], dim=a.get("axis", 1))
            else:
                raise NotImplementedError(op)
            env[node.output[0]] = y
        return {o.name: env[o.name] for o in model.graph.output}

    return run, params


def training_model(model, batch, rng, dtype=np.float32):
    """A light model made ready to train: ``(model, frozen)``.

    Every weight (the light models' ConstantOfShape fills and the float graph inputs
    other than the image) becomes an initializer with random values (He-scaled kernels,
    batch-norm scales and variances in [0.5, 1.5]); the final Softmax is dropped so the
    loss reads logits; the batch is ``batch``. ``frozen`` names the batch-norm running
    statistics, which are constants for training in both PyTorch and graphgen.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    frozen = set()
    for node in g.node:
        if node.op_type == "BatchNormalization":
            frozen.update(node.input[3:5])
    weights = {}
    keep = []
    for node in g.node:
        if node.op_type == "ConstantOfShape":
            weights[node.output[0]] = tuple(int(d) for d in inits[node.input[0]])
        else:
            keep.append(node)
    image = g.input[0].name
    for inp in g.input:
        if inp.name != image and inp.name not in inits:
            dims = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)
            weights[inp.name] = dims
    if keep and keep[-1].op_type == "Softmax":
        logits = keep[-1].input[0]
        keep = keep[:-1]
        g.output[0].name = logits
        del g.output[0].type.tensor_type.shape.dim[:]
    del g.node[:]
    g.node.extend(keep)
    new_inits = []
    for name, arr in inits.items():
        if arr.dtype.kind == "i" and arr.ndim == 1 and arr.size == 2 and arr[0] == 1:
            arr = np.array([-1, arr[1]], dtype=arr.dtype)  # a Reshape to (1, features)
        if name not in weights and not any(
            name == n.input[0]
            for n in model.graph.node
            if n.op_type == "ConstantOfShape"
        ):
            new_inits.append(numpy_helper.from_array(arr, name))
    for name, shape in weights.items():
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            v = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        elif name in frozen or "_s_" in name or "scale" in name:
            v = rng.uniform(0.5, 1.5, shape)
        else:
            v = 0.1 * rng.standard_normal(shape)
        if name in frozen and "_rm_" in name:
            v = 0.1 * rng.standard_normal(shape)
        new_inits.append(numpy_helper.from_array(v.astype(dtype), name))
    used = {i for n in g.node for i in n.input}
    new_inits = [i for i in new_inits if i.name in used]  # dead inputs go
    del g.initializer[:]
    g.initializer.extend(new_inits)
    names = {i.name for i in new_inits}
    kept_inputs = [i for i in g.input if i.name == image]
    del g.input[:]
    g.input.extend(kept_inputs)
    g.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    return m, sorted(frozen & names)
