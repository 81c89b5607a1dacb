"""graphgen as an ONNX backend, so ONNX's own conformance tests can judge it.

``onnx.backend.test.BackendTest(graphgen.onnx_backend, __name__)`` runs ONNX's node and
model tests through :func:`prepare`: the model is imported (:mod:`graphgen.frontends.onnx`),
compiled to a NumPy module (or a Numba one: ``GRAPHGEN_ONNX_BACKEND=numba``), and
``run`` calls its ``forward`` with the stored weights. tests/test_onnx_backend.py lists
which tests run and why the others are excluded.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from . import api
from .errors import SpecError
from .frontends import onnx as onnx_frontend
from .frontends import spec


def _compile(model, constants=None):
    data, weights = onnx_frontend.to_spec(model, constants=constants, vjp=False)
    G = spec.from_dict(data, source=f"<onnx {model.graph.name}>", weights=weights)
    module = api.compile(G, backend=os.environ.get("GRAPHGEN_ONNX_BACKEND", "numpy"))
    return module, list(data["outputs"])


class GraphgenRep(BackendRep):
    """A compiled model: ``run(inputs)`` returns its outputs in the model's order.

    A model whose shapes depend on the values of int64 inputs (``Reshape``'s shape fed
    as an input, as ONNX's node tests do) is compiled at the first ``run``, with those
    inputs as constants, and again whenever their values change.
    """

    def __init__(self, model, compiled):
        self.model = model
        inits = {t.name for t in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in inits]
        self.compiled = compiled
        self.specialized = {}

    def _module(self, feeds):
        if self.compiled is not None:
            return self.compiled
        # the int64 scalars first (a Trilu's k: the int64 data stays an input); then
        # every int64 input; then also the scalars (a Pad's constant_value, say)
        arrays = {k: np.asarray(v) for k, v in feeds.items()}
        ints = {k: v for k, v in arrays.items() if v.dtype.kind in "iu"}
        int_scalars = {k: v for k, v in ints.items() if v.ndim == 0}
        scalars = {k: v for k, v in arrays.items() if v.size == 1}
        tries = [ints, {**ints, **scalars}]
        if int_scalars and len(int_scalars) < len(ints):
            tries.insert(0, int_scalars)
        for constants in tries:
            key = tuple((k, v.shape, v.tobytes()) for k, v in sorted(constants.items()))
            if key not in self.specialized:
                try:
                    self.specialized[key] = _compile(self.model, constants=constants)
                except SpecError as e:
                    if "known at compile time" not in str(e) or constants is tries[-1]:
                        raise
                    continue
            return self.specialized[key]
        raise AssertionError("unreachable")

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if not isinstance(inputs, (list, tuple)):
                inputs = [inputs]
            feeds = dict(zip(self.input_names, inputs))
        module, outputs = self._module(feeds)
        arrays = {}
        for name, value in feeds.items():
            if name not in module.DTYPES:
                continue  # a compile-time constant of this specialization
            a = np.ascontiguousarray(value, dtype=module.DTYPES[name])
            want = module.INPUTS[name]
            if a.ndim != len(want) and a.size == np.prod(
                [d for d in want if isinstance(d, int)]
            ):
                a = a.reshape([d for d in want if isinstance(d, int)])  # () vs (1,)
            arrays[name] = a
        out = module.forward(**arrays, **module.init_params())
        declared = {
            o.name: o.type.tensor_type.elem_type for o in self.model.graph.output
        }
        return tuple(
            _as_declared(np.asarray(out[n]), declared.get(name))
            for n, name in zip(outputs, dict.fromkeys(declared))
        )


def _as_declared(value, elem_type):
    """A module's output as the element type the model declares: a bool output is a
    0/1 mask in the module (graphgen computes in one float dtype), an integer one is
    int64 (an int32 shape, a Mod of int16 inputs)."""
    if elem_type == onnx.TensorProto.BOOL:
        return value != 0
    if value.dtype == np.int64 and elem_type:
        want = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
        if want.kind in "iu":
            return value.astype(want)
    return value


class GraphgenBackend(Backend):
    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        super().prepare(model, device, **kwargs)
        try:
            compiled = _compile(model)
        except SpecError as e:
            if "known at compile time" not in str(e):
                raise
            compiled = None  # shapes from int64 inputs: compile at the first run
        return GraphgenRep(model, compiled)

    @classmethod
    def run_model(cls, model, inputs, device="CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device):
        return device in ("CPU", "cpu")


prepare = GraphgenBackend.prepare
run_model = GraphgenBackend.run_model
supports_device = GraphgenBackend.supports_device
is_compatible = GraphgenBackend.is_compatible
run_node = GraphgenBackend.run_node
