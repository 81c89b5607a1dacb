"""ONNX models -> graphgen specs: the same NetworkX DAG a YAML spec gives.

An ONNX graph is SSA: every tensor has one producer. The importer walks the nodes in
order and keeps, per tensor name, either a graph node (an op, input or param of the spec
it builds) or a value known at compile time (an int64 shape, a Constant, anything
computed only from those, which ONNX's reference evaluator folds). So ``Shape``,
``Gather`` on shapes, ``Concat`` of shapes and the like never reach the generated code.

What becomes what:

- graph inputs that are not initializers -> inputs (``dim_param`` sizes stay symbolic);
- float initializers -> params with ``init: weights`` (the values are stored beside the
  generated module in an ``.npz``), or constants with ``freeze``;
- a float ``ConstantOfShape`` of a constant shape -> a param filled with its value: the
  light models that ship with ``onnx`` store their weights that way;
- each supported ONNX op -> one or a few graphgen ops (``docs/onnx.md`` has the table).

The handler of each ONNX op is registered in :mod:`.onnx_ops`, by family: elementwise
ops, matrix products and reductions (:mod:`.onnx_math`), convolution, pooling and
normalization (:mod:`.onnx_nn`), shapes, slicing and constants (:mod:`.onnx_tensors`).

Every unsupported op or attribute in the model is reported at once, with counts, in one
:class:`~graphgen.errors.SpecError`: never a partial module.
"""

from __future__ import annotations

import collections
import os

import numpy as np

from .. import graph as g
from .. import ops
from ..errors import GraphgenError, ShapeError, SpecError
from . import onnx_math, onnx_nn, onnx_tensors  # noqa: F401 - they fill HANDLERS
from .onnx_ops import HANDLERS, NO_FOLD, Unsupported

MIN_OPSET = 7
SMALL_CONSTANT = 64  # entries; larger constants live in the weights file


def _onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - the test extra installs it
        raise GraphgenError(
            "reading ONNX models needs the onnx package: pip install 'graphgen[onnx]'"
        ) from None
    return onnx


def _attrs(node):
    onnx = _onnx()
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if a.type == onnx.AttributeProto.FLOAT:
            v = _shortest(v)
        elif a.type == onnx.AttributeProto.FLOATS:
            v = [_shortest(x) for x in v]
        out[a.name] = v
    return out


def _shortest(v):
    """A float32 attribute as the shortest decimal that is that float32: 1e-05, not
    1.0000000656873453e-05 (the value a float32 computation sees is the same)."""
    return float(str(np.float32(v)))


class Importer:
    """One ONNX model -> (spec dict, weights dict); the handler of each ONNX op is in
    :data:`~graphgen.frontends.onnx_ops.HANDLERS`."""

    def __init__(self, model, source, freeze=(), constants=None):
        onnx = _onnx()
        self.onnx = onnx
        self.model = model
        self.source = source
        self.freeze = set(freeze)
        self.graph = model.graph
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None
        )
        newest = onnx.defs.onnx_opset_version()
        if self.opset is None or not MIN_OPSET <= self.opset <= newest:
            raise SpecError(
                f"opset {self.opset} is not supported (expected {MIN_OPSET} to {newest})",
                source=source,
            )
        self.known = dict(constants or {})  # graph inputs whose values are given
        self.inputs = {}
        self.params = {}
        self.nodes = {}
        self.weights = {}
        self.shape = {}  # graph node id -> shape
        self.is_int = set()  # graph node ids holding int64
        self.t = {}  # tensor name -> ("node", id) | ("const", ndarray)
        self.used_ids = set()  # node ids of the spec, and names reserved for it
        self.fresh_ids = g.FreshNames(self.used_ids, sep="_")
        self.fresh_keys = g.FreshNames(self.weights, sep="_")  # keys of stored arrays
        self.softmax_of = {}  # node id of a softmax over the last axis -> its logits id
        self.unsupported = collections.defaultdict(collections.Counter)
        self.failed = {}  # tensor name -> (op_type, reason) of the node that failed
        self.consumed = {i for n in self.graph.node for i in n.input} | {
            o.name for o in self.graph.output
        }

    # ------------------------------------------------------------------ helpers
    def fresh(self, base):
        name = self.fresh_ids(base or "t")
        self.used_ids.add(name)
        return name

    def emit(self, op_name, args, out=None, **attrs):
        """Add ``out = op(args, **attrs)`` to the spec; return its id (shape inferred now)."""
        op = ops.get(op_name)
        in_shapes = [self.shape_of(a) for a in args]
        try:
            _, shape = ops.infer(op, in_shapes, attrs)
        except ops.MissingAttribute as e:
            raise Unsupported(f"{op_name} needs attribute {e.attr!r}") from None
        except ShapeError as e:
            raise Unsupported(f"shapes do not fit {op_name}: {e}") from None
        nid = self.fresh(out)
        spec = {"op": op_name}
        if args:
            spec["args"] = list(args)
        spec.update(attrs)
        self.nodes[nid] = spec
        self.shape[nid] = shape
        return nid

    def shape_of(self, a):
        if isinstance(a, (int, float)):
            return ()
        return self.shape[a]

    def used(self, name):
        """Whether tensor ``name`` is read by a node or is a graph output."""
        return bool(name) and name in self.consumed

    def const(self, name):
        kind, v = self.t[name]
        return v if kind == "const" else None

    def need_const(self, name, what):
        v = self.const(name)
        if v is None:
            raise Unsupported(f"{what} must be known at compile time")
        return v

    def value(self, name):
        """A graph argument for tensor ``name``: a node id, or a number for a 0-d float."""
        kind, v = self.t[name]
        if kind == "node":
            return v
        if v.dtype.kind not in "fc" and v.dtype != np.bool_:
            raise Unsupported(
                "an integer tensor known at compile time is used as data; "
                "only shapes and indices may be integer"
            )
        arr = np.asarray(v, dtype=np.float64)
        if arr.ndim == 0:
            return float(arr)
        return self.constant(arr, name)

    def constant(self, arr, name):
        shape = list(arr.shape)
        if arr.size <= SMALL_CONSTANT:
            return self.emit("constant", [], name, shape=shape, value=arr.tolist())
        key = self.fresh_keys(name)
        self.weights[key] = arr
        return self.emit("constant", [], name, shape=shape, key=key)

    def rank(self, name):
        kind, v = self.t[name]
        return len(self.shape[v]) if kind == "node" else np.ndim(v)

    def dims_of(self, name):
        kind, v = self.t[name]
        return self.shape[v] if kind == "node" else tuple(np.shape(v))

    def set(self, name, nid):
        self.t[name] = ("node", nid)

    # ------------------------------------------------------------------- import
    def run(self):
        onnx = self.onnx
        inits = {t.name: t for t in self.graph.initializer}
        for name, t in inits.items():
            arr = onnx.numpy_helper.to_array(t)
            if arr.dtype.kind == "f" and name not in self.freeze:
                self.add_param(name, arr.shape, "weights")
                self.weights[name] = arr
            elif arr.dtype.kind == "f":
                self.used_ids.add(name)
                self.set(name, self.constant(arr.astype(np.float64), name))
            else:
                self.t[name] = ("const", arr)
        fills = {
            o
            for n in self.graph.node
            if n.op_type == "ConstantOfShape"
            for o in n.output
        }
        not_weights = self.freeze - set(inits) - fills
        if not_weights:
            raise SpecError(
                f"--freeze names {sorted(not_weights)}, which are not initializers",
                source=self.source,
            )
        for inp in self.graph.input:
            if inp.name in inits:
                continue
            if inp.name in self.known:
                self.t[inp.name] = ("const", np.asarray(self.known[inp.name]))
                continue
            self.add_input(inp)
        for node in self.graph.node:
            if any(i in self.failed for i in node.input):
                # downstream of a failure: reported only if its op is unknown too
                unknown = node.op_type not in HANDLERS
                for o in node.output:
                    self.failed[o] = (
                        (node.op_type, "no graphgen op for it") if unknown else None
                    )
                continue
            try:
                self.import_node(node)
            except Unsupported as e:
                for o in node.output:
                    self.failed[o] = (node.op_type, str(e))
        self._report_needed_failures()
        outputs = []
        for o in self.graph.output:
            if o.name not in self.t:
                continue  # its producer is reported as unsupported
            outputs.append(self.output(o.name))
        if self.unsupported:
            lines = []
            total = 0
            for op_type in sorted(self.unsupported):
                for why, count in sorted(self.unsupported[op_type].items()):
                    total += count
                    lines.append(f"  {op_type} ×{count}: {why}")
            raise SpecError(
                f"the model uses {total} node(s) graphgen cannot import:\n"
                + "\n".join(lines),
                source=self.source,
            )
        return outputs

    def _report_needed_failures(self):
        """Count the failed nodes the graph's outputs depend on (dead ones do not matter)."""
        producer = {o: n for n in self.graph.node for o in n.output if o}
        seen, counted = set(), set()
        stack = [o.name for o in self.graph.output]
        while stack:
            t = stack.pop()
            node = producer.get(t)
            if t in seen or node is None:
                continue
            seen.add(t)
            why = self.failed.get(node.output[0])
            if why is not None and id(node) not in counted:
                counted.add(id(node))
                self.unsupported[why[0]][why[1]] += 1
            stack.extend(i for i in node.input if i)

    def add_param(self, name, shape, init):
        self.used_ids.add(name)
        self.params[name] = {"shape": [int(d) for d in shape], "init": init}
        self.shape[name] = tuple(int(d) for d in shape)
        self.set(name, name)

    def add_input(self, inp):
        tt = inp.type.tensor_type
        elem = tt.elem_type
        if elem == self.onnx.TensorProto.INT64 or elem == self.onnx.TensorProto.INT32:
            dtype = "int64"
        elif elem in (
            self.onnx.TensorProto.FLOAT,
            self.onnx.TensorProto.DOUBLE,
            self.onnx.TensorProto.FLOAT16,
        ):
            dtype = None
        else:
            raise SpecError(
                f"input {inp.name!r} has element type "
                f"{self.onnx.TensorProto.DataType.Name(elem)}; expected a float or int64",
                source=self.source,
            )
        if not tt.HasField("shape"):
            raise SpecError(
                f"input {inp.name!r} has no shape; graphgen needs static ranks",
                source=self.source,
            )
        shape = []
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            elif d.dim_param and d.dim_param.isidentifier():
                shape.append(d.dim_param)
            else:
                shape.append("batch" if i == 0 else f"{_ident(inp.name)}_d{i}")
        self.used_ids.add(inp.name)
        self.inputs[inp.name] = (
            {"shape": shape, "dtype": dtype} if dtype else {"shape": shape}
        )
        self.shape[inp.name] = tuple(shape)
        if dtype == "int64":
            self.is_int.add(inp.name)
        self.set(inp.name, inp.name)

    def output(self, name):
        kind, v = self.t[name]
        if kind == "const":
            v = self.value(name)
            if isinstance(v, float):
                v = self.constant(np.asarray(v), name)
        if v != name or v in self.inputs or v in self.params:
            # an alias (Identity, Dropout) or an input: a named view of the value
            v = self.emit("reshape", [v], name, shape=list(self.shape[v]))
        return v

    def import_node(self, node):
        for i in node.input:
            if i and i not in self.t:
                raise Unsupported(f"input {i!r} is not produced by a supported node")
        if node.domain not in ("", "ai.onnx"):
            raise Unsupported(f"domain {node.domain!r} is not supported")
        handler = HANDLERS.get(node.op_type)
        if handler is None:
            raise Unsupported("no graphgen op for it")
        ins = list(node.input)
        while ins and not ins[-1]:
            ins.pop()
        consts = [i for i in ins if i]
        if (
            consts
            and all(self.const(i) is not None for i in consts)
            and node.op_type not in NO_FOLD
        ):
            return self.fold(node)
        attrs = _attrs(node)
        result = handler(self, node, ins, attrs)
        outs = result if isinstance(result, list) else [result]
        for name, nid in zip(node.output, outs):
            if name and nid is not None:
                self.set(name, nid)

    def fold(self, node):
        """Evaluate a node whose inputs are all known, with ONNX's reference evaluator."""
        from onnx.reference import ReferenceEvaluator

        onnx = self.onnx
        feeds = {i: self.const(i) for i in node.input if i}
        graph = onnx.helper.make_graph(
            [node],
            "fold",
            [
                onnx.helper.make_tensor_value_info(
                    i, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape
                )
                for i, v in feeds.items()
            ],
            [onnx.helper.make_empty_tensor_value_info(o) for o in node.output if o],
        )
        m = onnx.helper.make_model(graph, opset_imports=self.model.opset_import)
        try:
            values = ReferenceEvaluator(m).run(None, feeds)
        except Exception as e:  # noqa: BLE001 - any failure: this node cannot fold
            raise Unsupported(f"cannot evaluate it at compile time ({e})") from None
        for name, v in zip([o for o in node.output if o], values):
            self.t[name] = ("const", np.asarray(v))


def _ident(name):
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return out if out and not out[0].isdigit() else f"t_{out}"


def to_spec(
    model,
    *,
    source="<onnx>",
    loss=None,
    labels=None,
    freeze=(),
    dtype=None,
    constants=None,
    vjp=True,
):
    """An ONNX model (path, bytes or ``ModelProto``) -> ``(spec dict, weights dict)``.

    ``vjp``: without a loss, the module gets ``vjp(cotangents, **arrays)``.
    ``constants``: values for graph inputs that are to be compile-time constants (shape
    or axes inputs, as ONNX's node tests feed them); those inputs leave the signature.

    ``loss``: ``"softmax_cross_entropy"`` or ``"mse"`` appends a loss node on the model's
    (single) output, with ``labels`` naming the new input holding the targets. A model
    output made by a Softmax over the last axis is replaced by its logits for
    ``softmax_cross_entropy``: the loss applies the softmax itself.
    """
    onnx = _onnx()
    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        try:
            model = onnx.load(source)
        except Exception as e:  # noqa: BLE001 - protobuf raises many kinds
            raise SpecError(f"cannot read ONNX model: {e}", source=source) from None
    elif isinstance(model, bytes):
        model = onnx.load_from_string(model)
    imp = Importer(model, source, freeze=freeze, constants=constants)
    outputs = imp.run()
    first_type = next(
        (
            i.type.tensor_type.elem_type
            for i in model.graph.input
            if i.name in imp.inputs and i.name not in imp.is_int
        ),
        None,
    )
    fdtype = dtype or (
        "float64" if first_type == onnx.TensorProto.DOUBLE else "float32"
    )
    name = _ident(model.graph.name or os.path.splitext(os.path.basename(source))[0])
    spec = {"name": name, "dtype": fdtype}
    if imp.inputs:
        spec["inputs"] = imp.inputs
    if imp.params:
        spec["params"] = imp.params
    spec["nodes"] = imp.nodes
    spec["outputs"] = outputs
    if loss is not None:
        if len(outputs) != 1:
            raise SpecError(
                f"--loss needs a model with one output, this one has {len(outputs)}",
                source=source,
            )
        if not labels:
            raise SpecError("--loss needs --labels NAME for the targets", source=source)
        if labels in imp.used_ids:
            raise SpecError(
                f"--labels {labels!r} is already a name in the model", source=source
            )
        out = outputs[0]
        shape = list(imp.shape[out])
        if loss == "softmax_cross_entropy":
            logits = imp.softmax_of.get(out, out)
            spec["inputs"] = {
                **spec.get("inputs", {}),
                labels: {"shape": list(imp.shape[logits])[:-1], "dtype": "int64"},
            }
            args = [logits, labels]
        elif loss == "mse":
            spec["inputs"] = {**spec.get("inputs", {}), labels: {"shape": shape}}
            args = [out, labels]
        else:
            raise SpecError(
                f"unknown loss {loss!r} (expected softmax_cross_entropy or mse)",
                source=source,
            )
        loss_id = imp.fresh("loss")
        spec["nodes"][loss_id] = {"op": loss, "args": args}
        spec["outputs"] = outputs + [loss_id]
        spec["loss"] = loss_id
    if loss is None and vjp:
        spec["vjp"] = True
    if imp.weights:
        spec["weights"] = os.path.splitext(os.path.basename(source))[0] + ".npz"
    return spec, imp.weights


def load(model, **options):
    """An ONNX model -> the validated, shape-inferred ``networkx.DiGraph``."""
    from ..passes.shapes import prepare
    from . import spec as specmod

    data, weights = to_spec(model, **options)
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else "<onnx>"
    G = specmod.from_dict(data, source=source, weights=weights)
    return prepare(G)
